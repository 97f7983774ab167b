/*
 * raytrace.c: a Whitted-style ray tracer (shadows, mirror reflections, 2x2 supersampling) of
 * a procedurally generated field of spheres over a checkered floor, the C analogue of
 * examples/raytrace.rs and of SPLASH-2 Raytrace (paper Table II: a car scene, 38.9 MB).
 *
 * Usage: raytrace [SIZE [STEPS]]
 *   SIZE  = image width and height in pixels (default 1024). Memory ~ 24*SIZE^2 bytes (an RGB
 *           double framebuffer; the scene is a few KiB).
 *   STEPS = frames, the camera orbiting between them (default 2). Time ~ STEPS * SIZE^2.
 *
 * Memory pattern: each frame overwrites the framebuffer once, one row after another.
 *
 * Measured on the 2-core development machine (cc -O2, GCC 12) with /usr/bin/time: CPU (user)
 * time, wall time, max RSS. Other sessions shared the machine, so wall times are inflated.
 *  command                    CPU      wall     max RSS
 *  raytrace 1024 1            1.2 s    1.2 s    26 MiB
 *  raytrace 1024 2 (default)  2.3 s    3.0 s    26 MiB
 *  raytrace 2048 2            10.0 s   10.3 s   98 MiB
 *  raytrace 2048 7            35 s     43 s     98 MiB
 *  raytrace 2048 14           68 s     117 s    98 MiB
 *
 * Output: a header line, the mean brightness of the last frame, then `digest <hex>` over every
 * frame's framebuffer.
 */
#include "workload.h"

#include <math.h>

#define SPHERES 40
#define MAX_DEPTH 4
#define EPS 1e-6
#define PI 3.14159265358979323846

typedef struct {
    double x, y, z;
} v3;

static v3 vadd(v3 a, v3 b) { return (v3){a.x + b.x, a.y + b.y, a.z + b.z}; }
static v3 vsub(v3 a, v3 b) { return (v3){a.x - b.x, a.y - b.y, a.z - b.z}; }
static v3 vscale(v3 a, double s) { return (v3){a.x * s, a.y * s, a.z * s}; }
static v3 vmul(v3 a, v3 b) { return (v3){a.x * b.x, a.y * b.y, a.z * b.z}; }
static double vdot(v3 a, v3 b) { return a.x * b.x + a.y * b.y + a.z * b.z; }
static v3 vcross(v3 a, v3 b)
{
    return (v3){a.y * b.z - a.z * b.y, a.z * b.x - a.x * b.z, a.x * b.y - a.y * b.x};
}
static v3 vnorm(v3 a) { return vscale(a, 1.0 / sqrt(vdot(a, a))); }

struct sphere {
    v3 centre, colour;
    double radius, mirror;
};

struct light {
    v3 pos, colour;
};

struct hit {
    double t, mirror;
    v3 point, normal, colour;
};

static struct sphere spheres[SPHERES];
static const struct light lights[2] = {
    {{-10.0, 14.0, -6.0}, {0.8, 0.75, 0.7}},
    {{12.0, 9.0, 10.0}, {0.35, 0.4, 0.5}},
};

static void generate(rng_t *rng)
{
    for (int i = 0; i < SPHERES; i++) {
        struct sphere *s = &spheres[i];
        s->radius = rng_range(rng, 0.3, 1.2);
        s->centre.x = rng_range(rng, -8.0, 8.0);
        s->centre.y = s->radius;
        s->centre.z = rng_range(rng, -8.0, 8.0);
        s->colour.x = rng_range(rng, 0.2, 0.95);
        s->colour.y = rng_range(rng, 0.2, 0.95);
        s->colour.z = rng_range(rng, 0.2, 0.95);
        s->mirror = rng_f64(rng) < 0.3 ? rng_range(rng, 0.4, 0.9) : 0.0;
    }
}

/* The nearest intersection with t in (EPS, limit); returns 0 if none. */
static int intersect(v3 origin, v3 dir, double limit, struct hit *h)
{
    double best_t = limit;
    int best = -1;
    for (int i = 0; i < SPHERES; i++) {
        v3 oc = vsub(origin, spheres[i].centre);
        double b = vdot(oc, dir);
        double c = vdot(oc, oc) - spheres[i].radius * spheres[i].radius;
        double disc = b * b - c;
        if (disc <= 0.0)
            continue;
        double root = sqrt(disc);
        double t = -b - root > EPS ? -b - root : -b + root;
        if (t > EPS && t < best_t) {
            best_t = t;
            best = i;
        }
    }
    double floor_t = dir.y < 0.0 ? -origin.y / dir.y : INFINITY;
    if (floor_t > EPS && floor_t < best_t) {
        h->t = floor_t;
        h->point = vadd(origin, vscale(dir, floor_t));
        h->normal = (v3){0.0, 1.0, 0.0};
        long long check = (long long)(floor(h->point.x) + floor(h->point.z));
        h->colour = (check % 2 == 0) ? (v3){0.85, 0.85, 0.8} : (v3){0.15, 0.15, 0.2};
        h->mirror = 0.25;
        return 1;
    }
    if (best < 0)
        return 0;
    const struct sphere *s = &spheres[best];
    h->t = best_t;
    h->point = vadd(origin, vscale(dir, best_t));
    h->normal = vscale(vsub(h->point, s->centre), 1.0 / s->radius);
    h->colour = s->colour;
    h->mirror = s->mirror;
    return 1;
}

static v3 trace(v3 origin, v3 dir, int depth)
{
    struct hit h, shadow;
    if (!intersect(origin, dir, INFINITY, &h)) {
        double up = 0.5 * (dir.y + 1.0);
        return vadd(vscale((v3){1.0, 1.0, 1.0}, 1.0 - up), vscale((v3){0.4, 0.6, 1.0}, up));
    }
    v3 colour = vscale(h.colour, 0.08);
    for (int i = 0; i < 2; i++) {
        v3 to_light = vsub(lights[i].pos, h.point);
        double dist = sqrt(vdot(to_light, to_light));
        v3 l = vscale(to_light, 1.0 / dist);
        double diffuse = vdot(h.normal, l);
        if (diffuse <= 0.0 || intersect(h.point, l, dist, &shadow))
            continue;
        v3 half = vnorm(vsub(l, dir));
        double spec = vdot(h.normal, half);
        spec = spec > 0.0 ? pow(spec, 32.0) : 0.0;
        colour = vadd(colour, vmul(lights[i].colour,
                                   vadd(vscale(h.colour, diffuse), (v3){spec, spec, spec})));
    }
    if (h.mirror > 0.0 && depth < MAX_DEPTH) {
        v3 r = vsub(dir, vscale(h.normal, 2.0 * vdot(dir, h.normal)));
        v3 reflected = trace(h.point, r, depth + 1);
        colour = vadd(vscale(colour, 1.0 - h.mirror), vscale(reflected, h.mirror));
    }
    return colour;
}

static void render(double *fb, size_t size, double angle)
{
    v3 eye = {18.0 * cos(angle), 7.0, 18.0 * sin(angle)};
    v3 forward = vnorm(vsub((v3){0.0, 0.5, 0.0}, eye));
    v3 right = vnorm(vcross(forward, (v3){0.0, 1.0, 0.0}));
    v3 up = vcross(right, forward);
    double half_width = tan(0.5 * 50.0 * PI / 180.0);
    double pixel = 2.0 * half_width / (double)size;
    static const double sub[4][2] = {{0.25, 0.25}, {0.75, 0.25}, {0.25, 0.75}, {0.75, 0.75}};
    for (size_t y = 0; y < size; y++) {
        double *row = fb + 3 * size * y;
        for (size_t x = 0; x < size; x++) {
            v3 sum = {0.0, 0.0, 0.0};
            for (int s = 0; s < 4; s++) {
                double px = -half_width + ((double)x + sub[s][0]) * pixel;
                double py = half_width - ((double)y + sub[s][1]) * pixel;
                v3 dir = vnorm(vadd(forward, vadd(vscale(right, px), vscale(up, py))));
                sum = vadd(sum, trace(eye, dir, 0));
            }
            row[3 * x] = 0.25 * sum.x;
            row[3 * x + 1] = 0.25 * sum.y;
            row[3 * x + 2] = 0.25 * sum.z;
        }
    }
}

int main(int argc, char **argv)
{
    static const struct spec spec = {
        "SIZE: image width and height in pixels; memory about 24*SIZE^2 bytes",
        "STEPS: frames rendered, the camera moving between them (time about STEPS * SIZE^2)",
        1024, 2, 1, 1 << 15,
    };
    size_t size, steps;
    parse_args(&spec, argc, argv, &size, &steps);
    printf("raytrace: %zux%zu frames=%zu framebuffer=%.1f MiB\n", size, size, steps,
           mib(24 * size * size));
    fflush(stdout);

    rng_t rng = rng_new(0x106);
    generate(&rng);
    double *fb = xcalloc(3 * size * size, sizeof(double));
    digest_t d = digest_new();
    for (size_t frame = 0; frame < steps; frame++) {
        render(fb, size, 0.6 + 2.0 * PI * (double)frame / (double)steps);
        digest_f64s(&d, fb, 3 * size * size);
    }
    double mean = 0.0;
    for (size_t i = 0; i < 3 * size * size; i++)
        mean += fb[i];
    printf("raytrace: mean brightness of the last frame %.6f\n", mean / (double)(3 * size * size));
    print_digest(&d);
    free(fb);
    return 0;
}
