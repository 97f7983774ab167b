//! A Whitted-style ray tracer (shadows, mirror reflections, 2×2 supersampling) rendering a
//! procedurally generated field of spheres over a checkered floor: our small analogue of SPLASH-2
//! Raytrace (paper Table II: a car scene, 38.9 MB).
//!
//! Usage: `raytrace [SIZE [STEPS]]`
//! - SIZE = image width and height in pixels (default 1024). Memory ≈ 24·SIZE² bytes: an RGB
//!   `f64` framebuffer (the scene itself is a few KiB).
//! - STEPS = frames, the camera orbiting the scene between them (default 2). Time ≈ STEPS·SIZE².
//!
//! Memory pattern: the scene is written once; each frame overwrites the framebuffer exactly
//! once, one row after another, so an interval dirties a band of rows.
//!
//! Measured on the 2-core development machine, release build (the dev profile, opt-level 1,
//! takes up to 1.7× as long), with `/usr/bin/time`: CPU (user) time, wall time, max RSS.
//! Other sessions shared the machine meanwhile, so the wall times are inflated.
//!
//! | command                     | CPU    | wall   | max RSS |
//! | --------------------------- | ------ | ------ | ------- |
//! | `raytrace 1024 1`           | 1.1 s  | 2.4 s  | 26 MiB  |
//! | `raytrace 1024 2` (default) | 2.1 s  | 2.2 s  | 26 MiB  |
//! | `raytrace 2048 2`           | 8.6 s  | 14.8 s | 98 MiB  |
//! | `raytrace 2048 7`           | 30 s   | 43 s   | 98 MiB  |
//! | `raytrace 2048 14`          | 59 s   | 88 s   | 98 MiB  |
//!
//! Output: one header line, the mean brightness of the last frame, then `digest <hex>` over
//! every frame's framebuffer.

use ckpt_suite::workload::{Args, Digest, Progress, Rng, Spec, print_digest, say};

const SPEC: Spec = Spec {
    size_help: "SIZE: image width and height in pixels; memory about 24*SIZE^2 bytes",
    steps_help: "STEPS: frames rendered, the camera moving between them (time about STEPS * SIZE^2)",
    default_size: 1024,
    default_steps: 2,
    min_size: 1,
    max_size: 1 << 15,
};

const SPHERES: usize = 40;
const MAX_DEPTH: u32 = 4;
const EPS: f64 = 1e-6;

type V3 = [f64; 3];

fn add(a: V3, b: V3) -> V3 {
    [a[0] + b[0], a[1] + b[1], a[2] + b[2]]
}
fn sub(a: V3, b: V3) -> V3 {
    [a[0] - b[0], a[1] - b[1], a[2] - b[2]]
}
fn scale(a: V3, s: f64) -> V3 {
    [a[0] * s, a[1] * s, a[2] * s]
}
fn mul(a: V3, b: V3) -> V3 {
    [a[0] * b[0], a[1] * b[1], a[2] * b[2]]
}
fn dot(a: V3, b: V3) -> f64 {
    a[0] * b[0] + a[1] * b[1] + a[2] * b[2]
}
fn cross(a: V3, b: V3) -> V3 {
    [
        a[1] * b[2] - a[2] * b[1],
        a[2] * b[0] - a[0] * b[2],
        a[0] * b[1] - a[1] * b[0],
    ]
}
fn normalize(a: V3) -> V3 {
    scale(a, 1.0 / dot(a, a).sqrt())
}

struct Sphere {
    centre: V3,
    radius: f64,
    colour: V3,
    mirror: f64,
}

struct Light {
    pos: V3,
    colour: V3,
}

struct Scene {
    spheres: Vec<Sphere>,
    lights: Vec<Light>,
}

/// What a ray hit: distance, surface point, normal, diffuse colour, reflectivity.
struct Hit {
    t: f64,
    point: V3,
    normal: V3,
    colour: V3,
    mirror: f64,
}

impl Scene {
    fn generate(rng: &mut Rng) -> Scene {
        let spheres = (0..SPHERES)
            .map(|_| {
                let radius = rng.range_f64(0.3, 1.2);
                Sphere {
                    centre: [rng.range_f64(-8.0, 8.0), radius, rng.range_f64(-8.0, 8.0)],
                    radius,
                    colour: [0; 3].map(|_| rng.range_f64(0.2, 0.95)),
                    mirror: if rng.next_f64() < 0.3 {
                        rng.range_f64(0.4, 0.9)
                    } else {
                        0.0
                    },
                }
            })
            .collect();
        let lights = vec![
            Light {
                pos: [-10.0, 14.0, -6.0],
                colour: [0.8, 0.75, 0.7],
            },
            Light {
                pos: [12.0, 9.0, 10.0],
                colour: [0.35, 0.4, 0.5],
            },
        ];
        Scene { spheres, lights }
    }

    /// The nearest intersection along `origin + t·dir` with `t` in `(EPS, limit)`.
    fn intersect(&self, origin: V3, dir: V3, limit: f64) -> Option<Hit> {
        let mut best_t = limit;
        let mut best: Option<usize> = None;
        for (i, s) in self.spheres.iter().enumerate() {
            let oc = sub(origin, s.centre);
            let b = dot(oc, dir);
            let c = dot(oc, oc) - s.radius * s.radius;
            let disc = b * b - c;
            if disc <= 0.0 {
                continue;
            }
            let root = disc.sqrt();
            let t = if -b - root > EPS {
                -b - root
            } else {
                -b + root
            };
            if t > EPS && t < best_t {
                best_t = t;
                best = Some(i);
            }
        }
        // The floor, the plane y = 0, seen from above.
        let floor_t = if dir[1] < 0.0 {
            -origin[1] / dir[1]
        } else {
            f64::INFINITY
        };
        if floor_t > EPS && floor_t < best_t {
            let point = add(origin, scale(dir, floor_t));
            let check = ((point[0].floor() + point[2].floor()) as i64).rem_euclid(2) == 0;
            let colour = if check {
                [0.85, 0.85, 0.8]
            } else {
                [0.15, 0.15, 0.2]
            };
            return Some(Hit {
                t: floor_t,
                point,
                normal: [0.0, 1.0, 0.0],
                colour,
                mirror: 0.25,
            });
        }
        best.map(|i| {
            let s = &self.spheres[i];
            let point = add(origin, scale(dir, best_t));
            Hit {
                t: best_t,
                point,
                normal: scale(sub(point, s.centre), 1.0 / s.radius),
                colour: s.colour,
                mirror: s.mirror,
            }
        })
    }

    /// Radiance along a ray: ambient + diffuse + specular from each unshadowed light, plus the
    /// reflected ray for mirror surfaces.
    fn trace(&self, origin: V3, dir: V3, depth: u32) -> V3 {
        let Some(hit) = self.intersect(origin, dir, f64::INFINITY) else {
            let up = 0.5 * (dir[1] + 1.0);
            return add(scale([1.0, 1.0, 1.0], 1.0 - up), scale([0.4, 0.6, 1.0], up));
        };
        debug_assert!(hit.t > 0.0);
        let mut colour = scale(hit.colour, 0.08);
        for light in &self.lights {
            let to_light = sub(light.pos, hit.point);
            let dist = dot(to_light, to_light).sqrt();
            let l = scale(to_light, 1.0 / dist);
            let diffuse = dot(hit.normal, l);
            if diffuse <= 0.0 || self.intersect(hit.point, l, dist).is_some() {
                continue;
            }
            let half = normalize(sub(l, dir));
            let specular = dot(hit.normal, half).max(0.0).powi(32);
            colour = add(
                colour,
                mul(light.colour, add(scale(hit.colour, diffuse), [specular; 3])),
            );
        }
        if hit.mirror > 0.0 && depth < MAX_DEPTH {
            let r = sub(dir, scale(hit.normal, 2.0 * dot(dir, hit.normal)));
            let reflected = self.trace(hit.point, r, depth + 1);
            colour = add(
                scale(colour, 1.0 - hit.mirror),
                scale(reflected, hit.mirror),
            );
        }
        colour
    }
}

/// Renders one frame into `fb` (row-major RGB), row by row.
fn render(
    scene: &Scene,
    fb: &mut [V3],
    size: usize,
    angle: f64,
    progress: &mut Progress,
    done: &mut usize,
) {
    let eye = [18.0 * angle.cos(), 7.0, 18.0 * angle.sin()];
    let forward = normalize(sub([0.0, 0.5, 0.0], eye));
    let right = normalize(cross(forward, [0.0, 1.0, 0.0]));
    let up = cross(right, forward);
    let half_width = (0.5f64 * 50f64.to_radians()).tan();
    let pixel = 2.0 * half_width / size as f64;
    for (y, row) in fb.chunks_exact_mut(size).enumerate() {
        for (x, out) in row.iter_mut().enumerate() {
            let mut sum = [0.0; 3];
            for (sx, sy) in [(0.25, 0.25), (0.75, 0.25), (0.25, 0.75), (0.75, 0.75)] {
                let px = -half_width + (x as f64 + sx) * pixel;
                let py = half_width - (y as f64 + sy) * pixel;
                let dir = normalize(add(forward, add(scale(right, px), scale(up, py))));
                sum = add(sum, scene.trace(eye, dir, 0));
            }
            *out = scale(sum, 0.25);
        }
        *done += 1;
        progress.at(*done);
    }
}

fn main() {
    ckpt_suite::checkpointing_from_env();
    let Args { size, steps } = Args::parse(&SPEC);
    say(&format!(
        "raytrace: {size}x{size} frames={steps} framebuffer={:.1} MiB",
        (24 * size * size) as f64 / (1 << 20) as f64
    ));

    let scene = Scene::generate(&mut Rng::new(0x6));
    let mut fb = vec![[0.0f64; 3]; size * size];
    let mut digest = Digest::new();
    let mut progress = Progress::new("raytrace", size * steps);
    let mut done = 0;
    for frame in 0..steps {
        let angle = 0.6 + std::f64::consts::TAU * frame as f64 / steps as f64;
        render(&scene, &mut fb, size, angle, &mut progress, &mut done);
        fb.iter().for_each(|p| digest.f64s(p));
    }
    let mean = fb.iter().map(|p| p[0] + p[1] + p[2]).sum::<f64>() / (3 * fb.len()) as f64;
    say(&format!(
        "raytrace: mean brightness of the last frame {mean:.6}"
    ));
    print_digest(digest.finish());
}
