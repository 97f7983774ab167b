//! A ray-casting volume renderer: our small analogue of SPLASH-2 Volrend (paper Table II: a CT
//! head, 27.3 MB).
//!
//! As Volrend does, it classifies a 3-D volume of densities once (Levoy's method: an opacity per
//! voxel from a transfer function on density, weighted by the gradient's magnitude, and a
//! normal per voxel from the gradient), then renders frames from a viewpoint rotating around
//! the volume: one parallel ray per pixel, trilinearly interpolated opacity, diffuse shading
//! from the nearest voxel's normal, front-to-back compositing with early ray termination. The
//! volume is a procedural head phantom: skin, skull, brain, and random blobs of denser tissue.
//!
//! Usage: `volrend [SIZE [STEPS]]`
//! - SIZE = voxels per side n (default 192). Memory ≈ 5·n³ bytes: 16-bit densities, 8-bit
//!   opacities and 16-bit (octahedral) normals; the image (n² `f32`) is small beside them.
//! - STEPS = frames rendered, the viewpoint moving between them (default 32). Time ≈ STEPS·n³.
//!
//! Memory pattern: the volume and its opacity and normal maps are written once, at the start,
//! and only read afterwards; each frame overwrites the n² image, row by row. An interval
//! dirties the image and little else: the paper's Volrend had 27.3 MB checkpoints of which an
//! incremental one held 0.2 MB.
//!
//! Measured on the 2-core development machine, release build (the dev profile, opt-level 1,
//! takes up to 1.7× as long), with `/usr/bin/time`: CPU (user) time, wall time, max RSS.
//! Other sessions shared the machine meanwhile, so the wall times are inflated.
//!
//! | command                    | CPU    | wall   | max RSS |
//! | -------------------------- | ------ | ------ | ------- |
//! | `volrend 96 200`           | 2.0 s  | 2.0 s  | 8 MiB   |
//! | `volrend 136 200`          | 5.5 s  | 5.5 s  | 17 MiB  |
//! | `volrend 192 32` (default) | 2.7 s  | 2.9 s  | 43 MiB  |
//! | `volrend 192 50`           | 3.9 s  | 3.9 s  | 43 MiB  |
//!
//! (The peak RSS includes the phantom's temporary `f32` volume, freed before the first frame.)
//!
//! Output: one header line, the mean brightness of the last frame, then `digest <hex>` over
//! every frame's image and the classified volume.

use ckpt_suite::workload::{Args, Digest, Progress, Rng, Spec, print_digest, say};

const SPEC: Spec = Spec {
    size_help: "SIZE: voxels per side n; memory about 5*n^3 bytes",
    steps_help: "STEPS: frames rendered, the viewpoint moving between them (time about STEPS * n^3)",
    default_size: 192,
    default_steps: 32,
    min_size: 8,
    max_size: 2048,
};

/// Densities are 12-bit, as a CT scanner's.
const MAX_DENSITY: f32 = 4095.0;
const BLOBS: usize = 24;
/// Rays stop once this opaque (Volrend's early ray termination).
const OPAQUE: f32 = 0.95;
const AMBIENT: f32 = 0.12;
/// The camera's elevation above the volume's equator, radians.
const ELEVATION: f64 = 0.35;

type V3 = [f64; 3];

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

/// A unit vector as two bytes (octahedral mapping): 64 KiB of directions, plenty for shading.
fn encode_normal(x: f32, y: f32, z: f32) -> [u8; 2] {
    let l1 = x.abs() + y.abs() + z.abs();
    if l1 == 0.0 {
        return [128, 128];
    }
    let (mut u, mut v) = (x / l1, y / l1);
    if z < 0.0 {
        (u, v) = ((1.0 - v.abs()) * u.signum(), (1.0 - u.abs()) * v.signum());
    }
    let q = |t: f32| ((t * 0.5 + 0.5) * 255.0).round() as u8;
    [q(u), q(v)]
}

fn decode_normal(e: [u8; 2]) -> [f32; 3] {
    let u = f32::from(e[0]) / 255.0 * 2.0 - 1.0;
    let v = f32::from(e[1]) / 255.0 * 2.0 - 1.0;
    let z = 1.0 - u.abs() - v.abs();
    let (x, y) = if z < 0.0 {
        ((1.0 - v.abs()) * u.signum(), (1.0 - u.abs()) * v.signum())
    } else {
        (u, v)
    };
    let len = (x * x + y * y + z * z).sqrt();
    [x / len, y / len, z / len]
}

/// The classified volume: what every frame reads, written once.
struct Volume {
    n: usize,
    density: Vec<u16>,
    opacity: Vec<u8>,
    normal: Vec<[u8; 2]>,
}

impl Volume {
    fn at(&self, x: usize, y: usize, z: usize) -> usize {
        (z * self.n + y) * self.n + x
    }

    /// A head phantom: skin, a skull, brain, and blobs of denser or lighter tissue inside.
    fn phantom(n: usize, rng: &mut Rng) -> Vec<u16> {
        let half = n as f32 / 2.0;
        let mut d = vec![0f32; n * n * n];
        for z in 0..n {
            for y in 0..n {
                for x in 0..n {
                    let u = (x as f32 + 0.5 - half) / half;
                    let v = (y as f32 + 0.5 - half) / half;
                    let w = (z as f32 + 0.5 - half) / half;
                    let r = ((u / 0.80).powi(2) + (v / 0.92).powi(2) + (w / 0.72).powi(2)).sqrt();
                    d[(z * n + y) * n + x] = if r < 0.84 {
                        1050.0
                    } else if r < 0.92 {
                        2900.0
                    } else if r < 0.98 {
                        700.0
                    } else {
                        0.0
                    };
                }
            }
        }
        for _ in 0..BLOBS {
            let c = [0; 3].map(|_| rng.range_f64(-0.45, 0.45) as f32);
            let sigma = rng.range_f64(0.04, 0.14) as f32;
            let amp = rng.range_f64(-500.0, 1400.0) as f32;
            let reach = 3.0 * sigma;
            let span = |c: f32| {
                let lo = ((c - reach) * half + half).floor().max(0.0) as usize;
                let hi = (((c + reach) * half + half).ceil() as usize).min(n);
                lo..hi
            };
            for z in span(c[2]) {
                for y in span(c[1]) {
                    for x in span(c[0]) {
                        let p = [x, y, z].map(|i| (i as f32 + 0.5 - half) / half);
                        let r2 = (0..3).map(|k| (p[k] - c[k]).powi(2)).sum::<f32>();
                        d[(z * n + y) * n + x] += amp * (-r2 / (2.0 * sigma * sigma)).exp();
                    }
                }
            }
        }
        // A new vector, not an in-place collect: that would keep the f32 buffer's 4 bytes per
        // voxel, written, behind 2-byte densities.
        let mut density = Vec::with_capacity(d.len());
        density.extend(d.iter().map(|v| v.clamp(0.0, MAX_DENSITY).round() as u16));
        density
    }

    /// Levoy's classification: opacity from density (soft tissue faint, bone nearly opaque),
    /// scaled by the gradient's magnitude so that surfaces show; the normal is the gradient's
    /// direction.
    fn classify(n: usize, density: Vec<u16>) -> Volume {
        let mut opacity = vec![0u8; n * n * n];
        let mut normal = vec![[128u8, 128]; n * n * n];
        let at = |x: usize, y: usize, z: usize| f32::from(density[(z * n + y) * n + x]);
        for z in 1..n - 1 {
            for y in 1..n - 1 {
                for x in 1..n - 1 {
                    let g = [
                        at(x + 1, y, z) - at(x - 1, y, z),
                        at(x, y + 1, z) - at(x, y - 1, z),
                        at(x, y, z + 1) - at(x, y, z - 1),
                    ];
                    let mag = (g[0] * g[0] + g[1] * g[1] + g[2] * g[2]).sqrt();
                    let dens = at(x, y, z);
                    let base = if dens < 400.0 {
                        0.0
                    } else if dens < 1500.0 {
                        0.004 + 0.03 * (dens - 400.0) / 1100.0
                    } else {
                        0.06 + 0.5 * ((dens - 1500.0) / 1500.0).min(1.0)
                    };
                    let surface = (mag / 1500.0).min(1.0);
                    let alpha = base * (0.1 + 0.9 * surface);
                    let i = (z * n + y) * n + x;
                    opacity[i] = (alpha * 255.0).round() as u8;
                    if mag > 0.0 {
                        // The normal points out of the denser material.
                        normal[i] = encode_normal(-g[0] / mag, -g[1] / mag, -g[2] / mag);
                    }
                }
            }
        }
        Volume {
            n,
            density,
            opacity,
            normal,
        }
    }

    /// Opacity at a point inside the volume, trilinearly interpolated, in [0, 1].
    fn opacity_at(&self, p: [f32; 3]) -> f32 {
        let (x, y, z) = (p[0] as usize, p[1] as usize, p[2] as usize);
        let (fx, fy, fz) = (p[0] - x as f32, p[1] - y as f32, p[2] - z as f32);
        let (n, o) = (self.n, &self.opacity);
        let i = self.at(x, y, z);
        let c = |k: usize| f32::from(o[k]);
        let x0 = c(i) + fx * (c(i + 1) - c(i));
        let x1 = c(i + n) + fx * (c(i + n + 1) - c(i + n));
        let x2 = c(i + n * n) + fx * (c(i + n * n + 1) - c(i + n * n));
        let x3 = c(i + n * n + n) + fx * (c(i + n * n + n + 1) - c(i + n * n + n));
        let y0 = x0 + fy * (x1 - x0);
        let y1 = x2 + fy * (x3 - x2);
        (y0 + fz * (y1 - y0)) / 255.0
    }
}

/// Renders one frame into `image` (n × n, row-major): parallel rays from a viewpoint at
/// `angle` around the vertical axis, the light coming from the viewer.
fn render(vol: &Volume, image: &mut [f32], angle: f64) {
    let n = vol.n;
    let (se, ce) = ELEVATION.sin_cos();
    let (sa, ca) = angle.sin_cos();
    // Towards the viewer; the rays go the other way.
    let view: V3 = [ce * sa, se, ce * ca];
    let right = {
        let r = cross([0.0, 1.0, 0.0], view);
        let l = dot(r, r).sqrt();
        r.map(|c| c / l)
    };
    let up = cross(view, right);
    let dir = view.map(|c| -c as f32);
    let light = view.map(|c| c as f32);
    let centre = (n - 1) as f64 / 2.0;
    let hi = (n - 1) as f32 - 1e-3;
    for (row, line) in image.chunks_exact_mut(n).enumerate() {
        for (col, out) in line.iter_mut().enumerate() {
            // The ray starts on a plane in front of the volume, through pixel (row, col).
            let (px, py) = (col as f64 - centre, centre - row as f64);
            let o: [f32; 3] = [0, 1, 2]
                .map(|k| (centre + px * right[k] + py * up[k] + 1.8 * centre * view[k]) as f32);
            // Clip to the box [0, n-1]³ (slab method).
            let (mut t0, mut t1) = (0f32, f32::INFINITY);
            for k in 0..3 {
                if dir[k].abs() < 1e-9 {
                    if o[k] < 0.0 || o[k] > hi {
                        t1 = -1.0;
                    }
                    continue;
                }
                let (a, b) = ((0.0 - o[k]) / dir[k], (hi - o[k]) / dir[k]);
                t0 = t0.max(a.min(b));
                t1 = t1.min(a.max(b));
            }
            let (mut colour, mut alpha) = (0f32, 0f32);
            let mut t = t0.ceil();
            while t <= t1 && alpha < OPAQUE {
                let p = [0, 1, 2].map(|k| (o[k] + t * dir[k]).clamp(0.0, hi));
                let a = vol.opacity_at(p);
                if a > 0.0 {
                    let nn = decode_normal(
                        vol.normal[vol.at(
                            p[0].round() as usize,
                            p[1].round() as usize,
                            p[2].round() as usize,
                        )],
                    );
                    let diffuse = (nn[0] * light[0] + nn[1] * light[1] + nn[2] * light[2]).max(0.0);
                    let shade = AMBIENT + (1.0 - AMBIENT) * diffuse;
                    colour += (1.0 - alpha) * a * shade;
                    alpha += (1.0 - alpha) * a;
                }
                t += 1.0;
            }
            *out = colour;
        }
    }
}

fn main() {
    ckpt_suite::checkpointing_from_env();
    let Args { size: n, steps } = Args::parse(&SPEC);
    say(&format!(
        "volrend: {n}^3 voxels frames={steps} volume={:.1} MiB image={:.2} MiB",
        (5 * n * n * n) as f64 / (1 << 20) as f64,
        (4 * n * n) as f64 / (1 << 20) as f64
    ));

    let density = Volume::phantom(n, &mut Rng::new(0x7));
    let vol = Volume::classify(n, density);
    let mut image = vec![0f32; n * n];
    let mut digest = Digest::new();
    let mut progress = Progress::new("volrend", steps);
    for frame in 0..steps {
        let angle = 0.4 + std::f64::consts::TAU * frame as f64 / steps as f64;
        render(&vol, &mut image, angle);
        image.iter().for_each(|v| digest.u32(v.to_bits()));
        progress.at(frame + 1);
    }
    let mean = image.iter().map(|&v| f64::from(v)).sum::<f64>() / image.len() as f64;
    say(&format!(
        "volrend: mean brightness of the last frame {mean:.6}"
    ));
    // The volume too: a restore must bring back the maps written before the first checkpoint.
    vol.density
        .iter()
        .for_each(|&d| digest.bytes(&d.to_le_bytes()));
    digest.bytes(&vol.opacity);
    vol.normal.iter().for_each(|e| digest.bytes(e));
    print_digest(digest.finish());
}
