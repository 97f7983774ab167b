/*
 * ocean.c: a wind-driven ocean basin whose elliptic solve is done by multigrid, the C analogue
 * of examples/ocean.rs and of SPLASH-2 Ocean (paper Table II: 258x258 grids, 29.0 MB).
 *
 * Barotropic vorticity equation on the unit square (Stommel's single gyre):
 *   zeta_t + u.grad(zeta) + beta v = curl(tau) - r zeta + nu lap(zeta),  lap(psi) = zeta,
 *   u = -psi_y, v = psi_x, psi = zeta = 0 on the walls.
 * Each step solves for psi with two multigrid V-cycles (red-black Gauss-Seidel, full-weighting
 * restriction, bilinear prolongation) warm-started from the previous psi, then advances zeta
 * explicitly with upwind advection.
 *
 * Usage: ocean [SIZE [STEPS]]
 *   SIZE  = grid cells per side n, a power of two (default 1024); grids have (n+1)^2 points.
 *           Memory ~ 72*(n+1)^2 bytes (seven fine grids plus the coarse levels).
 *   STEPS = time steps (default 100). Time ~ STEPS * n^2.
 *
 * Memory pattern: the forcing is written once; every step rewrites psi, zeta, u, v and the
 * multigrid scratch grids in row order.
 *
 * Measured on the 2-core development machine (cc -O2, GCC 12) with /usr/bin/time: CPU (user)
 * time, wall time, max RSS. Other sessions shared the machine, so wall times are inflated.
 *  command                   CPU      wall     max RSS
 *  ocean 1024 40             0.9 s    1.8 s    74 MiB
 *  ocean 1024 100 (default)  2.0 s    2.3 s    74 MiB
 *  ocean 1024 400            7.9 s    10.9 s   74 MiB
 *  ocean 1024 1200           24 s     27 s     74 MiB
 *  ocean 2048 450            51 s     52 s     290 MiB
 *
 * Output: a header line, the kinetic energy and psi range, then `digest <hex>` over psi, zeta.
 */
#include "workload.h"

#include <math.h>

#define BETA 10.0
#define FRICTION 1.0
#define WIND 1.0
#define V_CYCLES 2
#define SWEEPS 2
#define PI 3.14159265358979323846
#define MAX_LEVELS 24

/* One multigrid level of (m+1)^2 points: unknown u, right-hand side f, residual r. */
struct level {
    size_t m;
    double *u, *f, *r;
};

static void smooth(size_t m, double *u, const double *f, int sweeps)
{
    size_t w = m + 1;
    double h2 = 1.0 / ((double)m * (double)m);
    for (int s = 0; s < sweeps; s++)
        for (size_t colour = 0; colour < 2; colour++)
            for (size_t i = 1; i < m; i++)
                for (size_t j = 1 + (i + colour + 1) % 2; j < m; j += 2) {
                    size_t k = i * w + j;
                    u[k] = 0.25 * (u[k - 1] + u[k + 1] + u[k - w] + u[k + w] - h2 * f[k]);
                }
}

static void residual(size_t m, const double *u, const double *f, double *r)
{
    size_t w = m + 1;
    double inv_h2 = (double)m * (double)m;
    for (size_t i = 1; i < m; i++)
        for (size_t j = 1; j < m; j++) {
            size_t k = i * w + j;
            r[k] = f[k] - (u[k - 1] + u[k + 1] + u[k - w] + u[k + w] - 4.0 * u[k]) * inv_h2;
        }
}

static void restrict_fw(size_t m, const double *fine, double *coarse)
{
    size_t w = m + 1, mc = m / 2, wc = mc + 1;
    for (size_t ic = 1; ic < mc; ic++)
        for (size_t jc = 1; jc < mc; jc++) {
            size_t k = 2 * ic * w + 2 * jc;
            double edges = fine[k - 1] + fine[k + 1] + fine[k - w] + fine[k + w];
            double corners = fine[k - w - 1] + fine[k - w + 1] + fine[k + w - 1] + fine[k + w + 1];
            coarse[ic * wc + jc] = (4.0 * fine[k] + 2.0 * edges + corners) / 16.0;
        }
}

static void prolong_add(size_t m, const double *coarse, double *fine)
{
    size_t w = m + 1, wc = m / 2 + 1;
    for (size_t i = 1; i < m; i++) {
        size_t i0 = i / 2, i1 = (i + 1) / 2;
        for (size_t j = 1; j < m; j++) {
            size_t j0 = j / 2, j1 = (j + 1) / 2;
            fine[i * w + j] += 0.25 * (coarse[i0 * wc + j0] + coarse[i0 * wc + j1] +
                                       coarse[i1 * wc + j0] + coarse[i1 * wc + j1]);
        }
    }
}

static void v_cycle(struct level *lv, int depth)
{
    for (int l = 0; l < depth - 1; l++) {
        smooth(lv[l].m, lv[l].u, lv[l].f, SWEEPS);
        residual(lv[l].m, lv[l].u, lv[l].f, lv[l].r);
        restrict_fw(lv[l].m, lv[l].r, lv[l + 1].f);
        memset(lv[l + 1].u, 0, (lv[l + 1].m + 1) * (lv[l + 1].m + 1) * sizeof(double));
    }
    /* The coarsest grid has one interior point: one sweep solves it. */
    smooth(lv[depth - 1].m, lv[depth - 1].u, lv[depth - 1].f, 1);
    for (int l = depth - 2; l >= 0; l--) {
        prolong_add(lv[l].m, lv[l + 1].u, lv[l].u);
        smooth(lv[l].m, lv[l].u, lv[l].f, SWEEPS);
    }
}

int main(int argc, char **argv)
{
    static const struct spec spec = {
        "SIZE: grid cells per side n, a power of two; memory about 72*(n+1)^2 bytes",
        "STEPS: time steps (time about STEPS * n^2)",
        1024, 100, 4, 1 << 14,
    };
    size_t n, steps;
    parse_args(&spec, argc, argv, &n, &steps);
    if ((n & (n - 1)) != 0) {
        fprintf(stderr, "ocean: SIZE must be a power of two (got %zu)\n", n);
        return 2;
    }
    size_t w = n + 1, pts = w * w;

    struct level lv[MAX_LEVELS];
    int depth = 0;
    size_t total = 5 * pts;
    for (size_t m = n; m >= 2; m /= 2, depth++) {
        size_t p = (m + 1) * (m + 1);
        lv[depth].m = m;
        lv[depth].u = xcalloc(p, sizeof(double));
        lv[depth].f = xcalloc(p, sizeof(double));
        lv[depth].r = xcalloc(p, sizeof(double));
        total += 3 * p;
    }
    double *zeta = xcalloc(pts, sizeof(double)), *zeta_next = xcalloc(pts, sizeof(double));
    double *u = xcalloc(pts, sizeof(double)), *v = xcalloc(pts, sizeof(double));
    double *wind = xcalloc(pts, sizeof(double));
    printf("ocean: n=%zu steps=%zu grids=%.1f MiB\n", n, steps, mib(8 * total));
    fflush(stdout);

    double h = 1.0 / (double)n, inv_h = (double)n, inv_2h = 0.5 * (double)n;
    double inv_h2 = (double)n * (double)n;
    double dt = 0.25 * h, nu = 0.5 * h; /* CFL ~0.25; a Munk layer a few cells wide */
    for (size_t i = 0; i <= n; i++)
        for (size_t j = 0; j <= n; j++)
            wind[i * w + j] = -WIND * sin(PI * (double)i * h);

    double *psi = lv[0].u;
    for (size_t step = 0; step < steps; step++) {
        memcpy(lv[0].f, zeta, pts * sizeof(double));
        for (int c = 0; c < V_CYCLES; c++)
            v_cycle(lv, depth);
        for (size_t i = 1; i < n; i++)
            for (size_t j = 1; j < n; j++) {
                size_t k = i * w + j;
                u[k] = -(psi[k + w] - psi[k - w]) * inv_2h;
                v[k] = (psi[k + 1] - psi[k - 1]) * inv_2h;
            }
        for (size_t i = 1; i < n; i++)
            for (size_t j = 1; j < n; j++) {
                size_t k = i * w + j;
                const double *z = zeta;
                double zx = (u[k] > 0.0 ? z[k] - z[k - 1] : z[k + 1] - z[k]) * inv_h;
                double zy = (v[k] > 0.0 ? z[k] - z[k - w] : z[k + w] - z[k]) * inv_h;
                double lap = (z[k - 1] + z[k + 1] + z[k - w] + z[k + w] - 4.0 * z[k]) * inv_h2;
                double tendency = -(u[k] * zx + v[k] * zy) - BETA * v[k] + wind[k] -
                                  FRICTION * z[k] + nu * lap;
                zeta_next[k] = z[k] + dt * tendency;
            }
        double *t = zeta;
        zeta = zeta_next;
        zeta_next = t;
    }

    double energy = 0.0, lo = psi[0], hi = psi[0];
    for (size_t k = 0; k < pts; k++) {
        energy += u[k] * u[k] + v[k] * v[k];
        lo = psi[k] < lo ? psi[k] : lo;
        hi = psi[k] > hi ? psi[k] : hi;
    }
    energy *= 0.5 / ((double)n * (double)n);
    printf("ocean: kinetic energy %.6e, psi in [%.6e, %.6e]\n", energy, lo, hi);
    digest_t d = digest_new();
    digest_f64s(&d, psi, pts);
    digest_f64s(&d, zeta, pts);
    print_digest(&d);

    for (int l = 0; l < depth; l++) {
        free(lv[l].u);
        free(lv[l].f);
        free(lv[l].r);
    }
    free(zeta);
    free(zeta_next);
    free(u);
    free(v);
    free(wind);
    return 0;
}
