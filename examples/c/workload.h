/*
 * workload.h: helpers shared by the C example workloads (argument parsing, a deterministic
 * generator, a bit-exact digest), the C counterpart of src/workload.rs.
 *
 * The examples are plain C programs with no checkpointing calls: the tests run them under
 * LD_PRELOAD of libckpt.so, kill and restart them, and compare the final `digest` line with an
 * uninterrupted run. So everything here is deterministic: no clock, no threads, and every
 * allocation is zero-filled (calloc) so no result depends on uninitialised memory.
 */
#ifndef CKPT_EXAMPLES_WORKLOAD_H
#define CKPT_EXAMPLES_WORKLOAD_H

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* SplitMix64 (Steele, Lea, Flood 2014): the whole state is one 64-bit word. */
typedef struct {
    uint64_t state;
} rng_t;

static inline rng_t rng_new(uint64_t seed)
{
    rng_t r = {seed};
    return r;
}

static inline uint64_t rng_next(rng_t *r)
{
    uint64_t z = (r->state += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

/* Uniform in [0, 1) with 53 random bits. */
static inline double rng_f64(rng_t *r)
{
    return (double)(rng_next(r) >> 11) * (1.0 / 9007199254740992.0);
}

/* Uniform in [lo, hi). */
static inline double rng_range(rng_t *r, double lo, double hi)
{
    return lo + (hi - lo) * rng_f64(r);
}

/* GCC and Clang have 128-bit integers on 64-bit targets; __extension__ keeps -Wpedantic quiet. */
__extension__ typedef unsigned __int128 u128_t;

/* Uniform in [0, n) for n > 0 (multiply-shift). */
static inline uint64_t rng_below(rng_t *r, uint64_t n)
{
    return (uint64_t)(((u128_t)rng_next(r) * n) >> 64);
}

/* 64-bit FNV-1a over little-endian bytes. */
typedef struct {
    uint64_t hash;
} digest_t;

static inline digest_t digest_new(void)
{
    digest_t d = {0xcbf29ce484222325ULL};
    return d;
}

static inline void digest_u64(digest_t *d, uint64_t v)
{
    uint64_t h = d->hash;
    for (int i = 0; i < 8; i++) {
        h ^= (v >> (8 * i)) & 0xff;
        h *= 0x100000001b3ULL;
    }
    d->hash = h;
}

static inline void digest_u32(digest_t *d, uint32_t v)
{
    uint64_t h = d->hash;
    for (int i = 0; i < 4; i++) {
        h ^= (v >> (8 * i)) & 0xff;
        h *= 0x100000001b3ULL;
    }
    d->hash = h;
}

/* The exact bit pattern of a double, so 0.0 and -0.0 differ. */
static inline void digest_f64(digest_t *d, double v)
{
    uint64_t bits;
    memcpy(&bits, &v, sizeof bits);
    digest_u64(d, bits);
}

static inline void digest_f64s(digest_t *d, const double *v, size_t n)
{
    for (size_t i = 0; i < n; i++)
        digest_f64(d, v[i]);
}

static inline void digest_u32s(digest_t *d, const uint32_t *v, size_t n)
{
    for (size_t i = 0; i < n; i++)
        digest_u32(d, v[i]);
}

/* The last line of every example. */
static inline void print_digest(const digest_t *d)
{
    printf("digest %016llx\n", (unsigned long long)d->hash);
    fflush(stdout);
}

/* What an example accepts: `<prog> [SIZE [STEPS]]`. */
struct spec {
    const char *size_help;
    const char *steps_help;
    size_t default_size, default_steps, min_size, max_size;
};

static inline void usage_exit(const char *prog, const struct spec *s, const char *why, int status)
{
    FILE *f = status == 0 ? stdout : stderr;
    if (why)
        fprintf(f, "%s: %s\n", prog, why);
    fprintf(f,
            "usage: %s [SIZE [STEPS]]\n  %s\n  %s\n  defaults: SIZE=%zu STEPS=%zu; "
            "SIZE must be in %zu..=%zu\n",
            prog, s->size_help, s->steps_help, s->default_size, s->default_steps, s->min_size,
            s->max_size);
    exit(status);
}

static inline size_t parse_number(const char *prog, const struct spec *s, const char *arg)
{
    char *end = NULL;
    errno = 0;
    unsigned long long v = strtoull(arg, &end, 10);
    if (arg[0] < '0' || arg[0] > '9' || *end != '\0' || errno != 0)
        usage_exit(prog, s, "arguments must be non-negative integers", 2);
    return (size_t)v;
}

static inline void parse_args(const struct spec *s, int argc, char **argv, size_t *size,
                              size_t *steps)
{
    const char *prog = argc > 0 ? argv[0] : "workload";
    for (int i = 1; i < argc; i++)
        if (strcmp(argv[i], "-h") == 0 || strcmp(argv[i], "--help") == 0)
            usage_exit(prog, s, NULL, 0);
    if (argc > 3)
        usage_exit(prog, s, "too many arguments", 2);
    *size = argc > 1 ? parse_number(prog, s, argv[1]) : s->default_size;
    *steps = argc > 2 ? parse_number(prog, s, argv[2]) : s->default_steps;
    if (*size < s->min_size || *size > s->max_size)
        usage_exit(prog, s, "SIZE is out of range", 2);
    if (*steps == 0)
        usage_exit(prog, s, "STEPS must be at least 1", 2);
}

/* Zero-filled allocation of n elements of `size` bytes, or exit with a message. */
static inline void *xcalloc(size_t n, size_t size)
{
    void *p = calloc(n, size);
    if (p == NULL) {
        fprintf(stderr, "out of memory allocating %zu x %zu bytes\n", n, size);
        exit(1);
    }
    return p;
}

static inline double mib(size_t bytes)
{
    return (double)bytes / (1024.0 * 1024.0);
}

#endif
