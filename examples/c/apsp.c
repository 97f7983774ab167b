/*
 * apsp.c: all-pairs shortest paths by Floyd-Warshall on a random weighted digraph, the C
 * analogue of examples/apsp.rs and of the paper's All-Pairs program (Table II: 2048x2048).
 *
 * Usage: apsp [SIZE [STEPS]]
 *   SIZE  = number of vertices n (default 1792). Memory ~ 8*n^2 bytes: n x n uint32 distance
 *           and predecessor matrices.
 *   STEPS = graphs solved one after another, each from its own seed (default 1).
 *           Time ~ STEPS * n^3.
 *
 * Memory pattern: each of the n outer iterations stores to every entry of both matrices, so
 * every page is dirty in every interval.
 *
 * Measured on the 2-core development machine (cc -O2, GCC 12) with /usr/bin/time: CPU (user)
 * time, wall time, max RSS. Other sessions shared the machine, so wall times are inflated.
 *  command                CPU      wall     max RSS
 *  apsp 1280              1.3 s    1.3 s    14 MiB
 *  apsp 1792 1 (default)  3.7 s    4.1 s    26 MiB
 *  apsp 2816              13.9 s   14.8 s   62 MiB
 *  apsp 3584              29 s     30 s     99 MiB
 *  apsp 4608              61 s     62 s     163 MiB
 *
 * Output: a header line, the reachable pairs and their distance sum, then `digest <hex>` over
 * both matrices.
 */
#include "workload.h"

#define INF 0x3fffffffu /* INF + INF still fits in a uint32_t */
#define NONE 0xffffffffu

/* About 8 out-edges per vertex, weights 1..=1000, so shortest paths have many hops. */
static void generate(uint32_t *dist, uint32_t *pred, size_t n, uint64_t seed)
{
    rng_t rng = rng_new(seed);
    uint64_t threshold = 8 * (UINT64_MAX / n);
    if (threshold > UINT64_MAX / 2)
        threshold = UINT64_MAX / 2;
    for (size_t i = 0; i < n; i++) {
        for (size_t j = 0; j < n; j++) {
            int edge = rng_next(&rng) < threshold;
            uint32_t w = 1 + (uint32_t)rng_below(&rng, 1000);
            if (i == j) {
                dist[i * n + j] = 0;
                pred[i * n + j] = (uint32_t)i;
            } else if (edge) {
                dist[i * n + j] = w;
                pred[i * n + j] = (uint32_t)i;
            } else {
                dist[i * n + j] = INF;
                pred[i * n + j] = NONE;
            }
        }
    }
}

static void floyd_warshall(uint32_t *dist, uint32_t *pred, size_t n)
{
    for (size_t k = 0; k < n; k++) {
        /* Row k does not change in iteration k (dist[k][k] == 0) and is skipped below, so it
         * never overlaps the row being updated: restrict lets the compiler vectorize. */
        const uint32_t *restrict dk = dist + k * n, *restrict pk = pred + k * n;
        for (size_t i = 0; i < n; i++) {
            if (i == k)
                continue;
            uint32_t *restrict di = dist + i * n, *restrict pi = pred + i * n;
            uint32_t dik = di[k];
            for (size_t j = 0; j < n; j++) {
                uint32_t via = dik + dk[j];
                int better = via < di[j];
                di[j] = better ? via : di[j];
                pi[j] = better ? pk[j] : pi[j];
            }
        }
    }
}

int main(int argc, char **argv)
{
    static const struct spec spec = {
        "SIZE: number of vertices n; memory about 8*n^2 bytes",
        "STEPS: number of graphs solved in turn (time about STEPS * n^3)",
        1792, 1, 2, 1 << 16,
    };
    size_t n, steps;
    parse_args(&spec, argc, argv, &n, &steps);
    printf("apsp: n=%zu steps=%zu matrices=%.1f MiB\n", n, steps, mib(8 * n * n));
    fflush(stdout);

    uint32_t *dist = xcalloc(n * n, sizeof *dist);
    uint32_t *pred = xcalloc(n * n, sizeof *pred);
    digest_t d = digest_new();
    unsigned long long reachable = 0, total = 0;
    for (size_t step = 0; step < steps; step++) {
        generate(dist, pred, n, 0x103 ^ ((uint64_t)step << 32));
        floyd_warshall(dist, pred, n);
        for (size_t i = 0; i < n * n; i++) {
            if (dist[i] < INF) {
                reachable++;
                total += dist[i];
            }
        }
        digest_u32s(&d, dist, n * n);
        digest_u32s(&d, pred, n * n);
    }
    printf("apsp: reachable pairs %llu, distance sum %llu\n", reachable, total);
    print_digest(&d);
    free(pred);
    free(dist);
    return 0;
}
