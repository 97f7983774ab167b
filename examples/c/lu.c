/*
 * lu.c: LU decomposition with partial pivoting of a dense random matrix, the C analogue of
 * examples/lu.rs and of SPLASH-2 LU (paper Table II: 1280x1280, 25.7 MB).
 *
 * Usage: lu [SIZE [STEPS]]
 *   SIZE  = matrix order n (default 2048). Memory ~ 8*n^2 bytes (one row-major double matrix).
 *   STEPS = matrices factored one after another, each from its own seed (default 2).
 *           Time ~ STEPS * n^3.
 *
 * Memory pattern: elimination step k writes only the trailing (n-k)x(n-k) block (and swaps
 * two rows), so the pages written per interval shrink as the factorization proceeds.
 *
 * Measured on the 2-core development machine (cc -O2, GCC 12) with /usr/bin/time: CPU (user)
 * time, wall time, max RSS. Other sessions shared the machine, so wall times are inflated.
 *  command              CPU      wall     max RSS
 *  lu 2048 1            1.7 s    2.2 s    33 MiB
 *  lu 2048 2 (default)  3.6 s    3.6 s    33 MiB
 *  lu 3072 2            14.9 s   16.5 s   73 MiB
 *  lu 4096 2            35 s     38 s     129 MiB
 *  lu 4096 5            95 s     97 s     129 MiB
 *
 * Output: a header line, then `digest <hex>` over the bits of the factors and pivots.
 */
#include "workload.h"

#include <math.h>

static void factor(double *a, size_t n, uint32_t *piv)
{
    for (size_t k = 0; k < n; k++) {
        /* Pivot: the first row with the largest magnitude in column k. */
        size_t p = k;
        double best = fabs(a[k * n + k]);
        for (size_t i = k + 1; i < n; i++) {
            double v = fabs(a[i * n + k]);
            if (v > best) {
                best = v;
                p = i;
            }
        }
        piv[k] = (uint32_t)p;
        if (p != k) {
            double *rk = a + k * n, *rp = a + p * n;
            for (size_t j = 0; j < n; j++) {
                double t = rk[j];
                rk[j] = rp[j];
                rp[j] = t;
            }
        }
        double pivot = a[k * n + k];
        if (pivot == 0.0)
            continue;
        /* Rows i > k never overlap row k: restrict lets the compiler vectorize the update. */
        const double *restrict urow = a + k * n;
        for (size_t i = k + 1; i < n; i++) {
            double *restrict row = a + i * n;
            double l = row[k] / pivot;
            row[k] = l;
            for (size_t j = k + 1; j < n; j++)
                row[j] -= l * urow[j];
        }
    }
}

int main(int argc, char **argv)
{
    static const struct spec spec = {
        "SIZE: matrix order n; memory about 8*n^2 bytes",
        "STEPS: number of matrices factored in turn (time about STEPS * n^3)",
        2048, 2, 2, 1 << 16,
    };
    size_t n, steps;
    parse_args(&spec, argc, argv, &n, &steps);
    printf("lu: n=%zu steps=%zu matrix=%.1f MiB\n", n, steps, mib(8 * n * n));
    fflush(stdout);

    double *a = xcalloc(n * n, sizeof *a);
    uint32_t *piv = xcalloc(n, sizeof *piv);
    digest_t d = digest_new();
    for (size_t step = 0; step < steps; step++) {
        rng_t rng = rng_new(0x101 ^ ((uint64_t)step << 32));
        for (size_t i = 0; i < n * n; i++)
            a[i] = rng_range(&rng, -1.0, 1.0);
        factor(a, n, piv);
        digest_f64s(&d, a, n * n);
        digest_u32s(&d, piv, n);
    }
    print_digest(&d);
    free(piv);
    free(a);
    return 0;
}
