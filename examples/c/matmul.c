/*
 * matmul.c: dense matrix multiply, C += A*B, the C analogue of examples/matmul.rs and of the
 * paper's matrix-multiplication program (Table II: two 2048x2048 matrices, 50.8 MB).
 *
 * Usage: matmul [SIZE [STEPS]]
 *   SIZE  = matrix order n (default 1280). Memory ~ 24*n^2 bytes (A, B and C, row-major).
 *   STEPS = passes C += A*B (default 8). Time ~ STEPS * n^3.
 *
 * Memory pattern: A and B are written once; each pass then writes C one row at a time.
 *
 * Measured on the 2-core development machine (cc -O2, GCC 12) with /usr/bin/time: CPU (user)
 * time, wall time, max RSS. Other sessions shared the machine, so wall times are inflated.
 *  command                  CPU      wall     max RSS
 *  matmul 1280 3            1.7 s    1.7 s    39 MiB
 *  matmul 1280 8 (default)  4.6 s    4.7 s    39 MiB
 *  matmul 2048 4            12.8 s   12.9 s   97 MiB
 *  matmul 2048 13           42 s     47 s     97 MiB
 *  matmul 2048 25           79 s     80 s     97 MiB
 *
 * Output: a header line, then `digest <hex>` over the bits of C.
 */
#include "workload.h"

int main(int argc, char **argv)
{
    static const struct spec spec = {
        "SIZE: matrix order n; memory about 24*n^2 bytes (A, B, C)",
        "STEPS: number of passes C += A*B (time about STEPS * n^3)",
        1280, 8, 1, 1 << 15,
    };
    size_t n, steps;
    parse_args(&spec, argc, argv, &n, &steps);
    printf("matmul: n=%zu steps=%zu matrices=%.1f MiB\n", n, steps, mib(24 * n * n));
    fflush(stdout);

    double *a = xcalloc(n * n, sizeof *a);
    double *b = xcalloc(n * n, sizeof *b);
    double *c = xcalloc(n * n, sizeof *c);
    rng_t rng = rng_new(0x102);
    for (size_t i = 0; i < n * n; i++)
        a[i] = rng_range(&rng, -1.0, 1.0);
    for (size_t i = 0; i < n * n; i++)
        b[i] = rng_range(&rng, -1.0, 1.0);

    for (size_t step = 0; step < steps; step++) {
        /* i-k-j order: the inner loop runs along contiguous rows of B and C. */
        for (size_t i = 0; i < n; i++) {
            double *restrict crow = c + i * n;
            for (size_t k = 0; k < n; k++) {
                double aik = a[i * n + k];
                const double *restrict brow = b + k * n;
                for (size_t j = 0; j < n; j++)
                    crow[j] += aik * brow[j];
            }
        }
    }
    digest_t d = digest_new();
    digest_f64s(&d, c, n * n);
    print_digest(&d);
    free(c);
    free(b);
    free(a);
    return 0;
}
