/*
 * water.c: an O(n^2) molecular-dynamics run of flexible three-site water molecules, the C
 * analogue of examples/water.rs and of SPLASH-2 Water-Nsquared (paper Table II: 9261
 * molecules, 10.2 MB).
 *
 * Each molecule is an oxygen and two hydrogens with partial charges held by harmonic springs.
 * Every pair of molecules whose oxygens are within half the periodic box interacts through
 * all nine site pairs (softened Coulomb) plus an oxygen-oxygen Lennard-Jones term. Velocity
 * Verlet with a weak velocity-rescaling thermostat; every step appends a frame (positions and
 * velocities of all sites) to an in-memory trajectory.
 *
 * Usage: water [SIZE [STEPS]]
 *   SIZE  = number of molecules n (default 1536). State ~ 216*n bytes.
 *   STEPS = time steps (default 100). The trajectory takes 144*n bytes per step, so memory
 *           ~ 216*n + 144*n*STEPS bytes. Time ~ STEPS * n^2.
 *
 * Memory pattern: each step rewrites positions, velocities and forces and writes one new
 * trajectory frame into a buffer allocated (untouched) at the start.
 *
 * Measured on the 2-core development machine (cc -O2, GCC 12) with /usr/bin/time: CPU (user)
 * time, wall time, max RSS. Other sessions shared the machine, so wall times are inflated.
 *  command                   CPU      wall     max RSS
 *  water 1024 100            1.8 s    2.1 s    16 MiB
 *  water 1536 100 (default)  3.8 s    4.7 s    23 MiB
 *  water 3072 100            15.3 s   16.9 s   44 MiB
 *  water 4096 180            47 s     59 s     104 MiB
 *  water 6144 150            92 s     136 s    129 MiB
 *
 * Output: a header line, the final temperature, then `digest <hex>` over the final state and
 * the whole trajectory.
 */
#include "workload.h"

#include <math.h>

static const double MASS[3] = {16.0, 1.0, 1.0};
static const double CHARGE[3] = {-0.82, 0.41, 0.41};
#define BOND 0.33
#define K_BOND 500.0
#define K_HH 200.0
#define HALF_ANGLE 0.911934 /* 104.5 degrees / 2 */
#define LJ_SIGMA 0.9
#define LJ_EPS 0.5
#define SOFTENING2 0.01
#define DT 0.002
#define TEMPERATURE 0.5
#define THERMOSTAT_TAU 0.1

/* Site s of molecule m is at index 3*m + s; each array holds 3 doubles per site. */
struct water {
    size_t n;
    double side;
    double *pos, *vel, *force;
};

static void random_unit(rng_t *rng, double out[3])
{
    for (;;) {
        double v[3], r2 = 0.0;
        for (int c = 0; c < 3; c++) {
            v[c] = rng_range(rng, -1.0, 1.0);
            r2 += v[c] * v[c];
        }
        if (r2 > 1e-6 && r2 <= 1.0) {
            double r = sqrt(r2);
            for (int c = 0; c < 3; c++)
                out[c] = v[c] / r;
            return;
        }
    }
}

static void init(struct water *w, rng_t *rng)
{
    size_t per_side = 1;
    while (per_side * per_side * per_side < w->n)
        per_side++;
    w->side = (double)per_side;
    double s = sin(HALF_ANGLE), c = cos(HALF_ANGLE);
    for (size_t m = 0; m < w->n; m++) {
        double o[3] = {(double)(m % per_side) + 0.5, (double)((m / per_side) % per_side) + 0.5,
                       (double)(m / (per_side * per_side)) + 0.5};
        double axis[3], perp[3];
        random_unit(rng, axis);
        random_unit(rng, perp);
        double along = perp[0] * axis[0] + perp[1] * axis[1] + perp[2] * axis[2];
        double norm = 0.0;
        for (int k = 0; k < 3; k++) {
            perp[k] -= along * axis[k];
            norm += perp[k] * perp[k];
        }
        norm = sqrt(norm);
        if (norm < 1e-9)
            norm = 1e-9;
        double *p = w->pos + 9 * m;
        for (int k = 0; k < 3; k++) {
            perp[k] /= norm;
            p[k] = o[k];
            p[3 + k] = o[k] + BOND * c * axis[k] + BOND * s * perp[k];
            p[6 + k] = o[k] + BOND * c * axis[k] - BOND * s * perp[k];
        }
        for (int site = 0; site < 3; site++) {
            double sd = sqrt(TEMPERATURE / MASS[site]);
            for (int k = 0; k < 3; k++)
                w->vel[9 * m + 3 * site + k] = sd * rng_range(rng, -1.7, 1.7);
        }
    }
}

static void spring(double *pos, double *force, size_t ia, size_t ib, double k, double r0)
{
    double d[3], r2 = 0.0;
    for (int c = 0; c < 3; c++) {
        d[c] = pos[3 * ia + c] - pos[3 * ib + c];
        r2 += d[c] * d[c];
    }
    double r = sqrt(r2);
    if (r < 1e-12)
        r = 1e-12;
    double f = -k * (r - r0) / r;
    for (int c = 0; c < 3; c++) {
        force[3 * ia + c] += f * d[c];
        force[3 * ib + c] -= f * d[c];
    }
}

static void compute_forces(struct water *w)
{
    size_t n = w->n;
    double *pos = w->pos, *force = w->force;
    memset(force, 0, 9 * n * sizeof(double));
    double rh = BOND * 2.0 * sin(HALF_ANGLE);
    for (size_t m = 0; m < n; m++) {
        spring(pos, force, 3 * m, 3 * m + 1, K_BOND, BOND);
        spring(pos, force, 3 * m, 3 * m + 2, K_BOND, BOND);
        spring(pos, force, 3 * m + 1, 3 * m + 2, K_HH, rh);
    }
    double side = w->side, half = 0.5 * side, cutoff2 = half * half;
    double lj_s2 = LJ_SIGMA * LJ_SIGMA;
    for (size_t i = 0; i < n; i++) {
        const double *pi = pos + 9 * i;
        double fi[9] = {0};
        for (size_t j = i + 1; j < n; j++) {
            const double *pj = pos + 9 * j;
            double shift[3], doo[3], r2 = 0.0;
            for (int c = 0; c < 3; c++) {
                double d = pi[c] - pj[c];
                shift[c] = d > half ? -side : (d < -half ? side : 0.0);
                doo[c] = d + shift[c];
                r2 += doo[c] * doo[c];
            }
            if (r2 >= cutoff2)
                continue;
            double r2c = r2 > 0.5 * lj_s2 ? r2 : 0.5 * lj_s2;
            double s2 = lj_s2 / r2c, s6 = s2 * s2 * s2;
            double flj = 24.0 * LJ_EPS * s6 * (2.0 * s6 - 1.0) / r2c;
            for (int c = 0; c < 3; c++) {
                fi[c] += flj * doo[c];
                force[9 * j + c] -= flj * doo[c];
            }
            for (int a = 0; a < 3; a++) {
                double pa[3] = {pi[3 * a] + shift[0], pi[3 * a + 1] + shift[1],
                                pi[3 * a + 2] + shift[2]};
                for (int b = 0; b < 3; b++) {
                    double d[3], q = SOFTENING2;
                    for (int c = 0; c < 3; c++) {
                        d[c] = pa[c] - pj[3 * b + c];
                        q += d[c] * d[c];
                    }
                    double inv = 1.0 / sqrt(q);
                    double f = CHARGE[a] * CHARGE[b] * inv * inv * inv;
                    for (int c = 0; c < 3; c++) {
                        fi[3 * a + c] += f * d[c];
                        force[9 * j + 3 * b + c] -= f * d[c];
                    }
                }
            }
        }
        for (int k = 0; k < 9; k++)
            force[9 * i + k] += fi[k];
    }
}

static void half_kick(struct water *w)
{
    for (size_t s = 0; s < 3 * w->n; s++)
        for (int c = 0; c < 3; c++)
            w->vel[3 * s + c] += 0.5 * DT / MASS[s % 3] * w->force[3 * s + c];
}

static double temperature(const struct water *w)
{
    double twice_ke = 0.0;
    for (size_t s = 0; s < 3 * w->n; s++) {
        const double *v = w->vel + 3 * s;
        twice_ke += MASS[s % 3] * (v[0] * v[0] + v[1] * v[1] + v[2] * v[2]);
    }
    return twice_ke / (9.0 * (double)w->n);
}

static void step(struct water *w)
{
    half_kick(w);
    for (size_t k = 0; k < 9 * w->n; k++)
        w->pos[k] += DT * w->vel[k];
    /* Keep every oxygen inside the box, moving the whole molecule. */
    for (size_t m = 0; m < w->n; m++)
        for (int c = 0; c < 3; c++) {
            double shift = -w->side * floor(w->pos[9 * m + c] / w->side);
            if (shift != 0.0)
                for (int s = 0; s < 3; s++)
                    w->pos[9 * m + 3 * s + c] += shift;
        }
    compute_forces(w);
    half_kick(w);
    double t = temperature(w);
    double lambda = sqrt(1.0 + DT / THERMOSTAT_TAU * (TEMPERATURE / t - 1.0));
    for (size_t k = 0; k < 9 * w->n; k++)
        w->vel[k] *= lambda;
}

int main(int argc, char **argv)
{
    static const struct spec spec = {
        "SIZE: number of molecules n; memory about 216*n + 144*n*STEPS bytes",
        "STEPS: time steps (time about STEPS * n^2)",
        1536, 100, 2, 1 << 22,
    };
    size_t n, steps;
    parse_args(&spec, argc, argv, &n, &steps);
    size_t frame = 18 * n; /* doubles per frame: positions and velocities of 3n sites */
    printf("water: molecules=%zu steps=%zu trajectory=%.1f MiB\n", n, steps,
           mib(8 * frame * steps));
    fflush(stdout);

    struct water w = {n, 0.0, xcalloc(9 * n, sizeof(double)), xcalloc(9 * n, sizeof(double)),
                      xcalloc(9 * n, sizeof(double))};
    double *trajectory = xcalloc(frame * steps, sizeof(double));
    rng_t rng = rng_new(0x104);
    init(&w, &rng);
    compute_forces(&w);
    for (size_t s = 0; s < steps; s++) {
        step(&w);
        memcpy(trajectory + s * frame, w.pos, 9 * n * sizeof(double));
        memcpy(trajectory + s * frame + 9 * n, w.vel, 9 * n * sizeof(double));
    }
    printf("water: final temperature %.6f\n", temperature(&w));

    digest_t d = digest_new();
    digest_f64s(&d, w.pos, 9 * n);
    digest_f64s(&d, w.vel, 9 * n);
    digest_f64s(&d, w.force, 9 * n);
    digest_f64s(&d, trajectory, frame * steps);
    print_digest(&d);
    free(trajectory);
    free(w.pos);
    free(w.vel);
    free(w.force);
    return 0;
}
