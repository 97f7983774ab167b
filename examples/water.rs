//! An O(n²) molecular-dynamics run of flexible three-site water molecules: our small analogue of
//! SPLASH-2 Water-Nsquared (paper Table II: 9261 molecules, 10.2 MB).
//!
//! Each molecule is an oxygen and two hydrogens with partial charges, held together by harmonic
//! springs. Every pair of molecules whose oxygens are closer than half the periodic box (the
//! SPLASH cut-off) interacts through all nine site pairs (softened Coulomb) plus an oxygen–oxygen
//! Lennard-Jones term, so the force loop is O(n²). Velocity Verlet with a weak velocity-rescaling
//! thermostat integrates the motion; every step appends a frame (positions and velocities of
//! every site) to an in-memory trajectory, as an MD code recording its run would.
//!
//! Usage: `water [SIZE [STEPS]]`
//! - SIZE = number of molecules n (default 1536). State ≈ 216·n bytes.
//! - STEPS = time steps (default 100). The trajectory takes 144·n bytes per step, so memory ≈
//!   216·n + 144·n·STEPS bytes. Time ≈ STEPS · n².
//!
//! Memory pattern: each step rewrites the small state (positions, velocities, forces) and
//! appends one new frame to a trajectory whose capacity is reserved, untouched, at the start:
//! pages go from never-touched to written once and are never written again.
//!
//! Measured on the 2-core development machine, release build (the dev profile, opt-level 1,
//! takes up to 1.7× as long), with `/usr/bin/time`: CPU (user) time, wall time, max RSS.
//! Other sessions shared the machine meanwhile, so the wall times are inflated.
//!
//! | command                    | CPU    | wall   | max RSS |
//! | -------------------------- | ------ | ------ | ------- |
//! | `water 1024 100`           | 1.1 s  | 1.6 s  | 16 MiB  |
//! | `water 1536 100` (default) | 2.3 s  | 2.5 s  | 23 MiB  |
//! | `water 3072 100`           | 8.9 s  | 11.7 s | 45 MiB  |
//! | `water 4096 180`           | 28 s   | 39 s   | 104 MiB |
//! | `water 6144 150`           | 54 s   | 65 s   | 130 MiB |
//!
//! Output: one header line, the final temperature, then `digest <hex>` over the final state and
//! the whole trajectory.

use ckpt_suite::workload::{Args, Digest, Progress, Rng, Spec, print_digest, say};

const SPEC: Spec = Spec {
    size_help: "SIZE: number of molecules n; memory about 216*n + 144*n*STEPS bytes",
    steps_help: "STEPS: time steps (time about STEPS * n^2)",
    default_size: 1536,
    default_steps: 100,
    min_size: 2,
    max_size: 1 << 22,
};

// Reduced units: lattice spacing 1, oxygen mass 16, hydrogen mass 1.
const MASS: [f64; 3] = [16.0, 1.0, 1.0];
const CHARGE: [f64; 3] = [-0.82, 0.41, 0.41];
const BOND: f64 = 0.33;
const K_BOND: f64 = 500.0;
const K_HH: f64 = 200.0;
const HALF_ANGLE: f64 = 0.911_934; // 104.5° / 2 in radians
const LJ_SIGMA: f64 = 0.9;
const LJ_EPS: f64 = 0.5;
const SOFTENING2: f64 = 0.01;
const DT: f64 = 0.002;
const TEMPERATURE: f64 = 0.5;
const THERMOSTAT_TAU: f64 = 0.1;

type V3 = [f64; 3];

fn sub(a: V3, b: V3) -> V3 {
    [a[0] - b[0], a[1] - b[1], a[2] - b[2]]
}

fn dot(a: V3, b: V3) -> f64 {
    a[0] * b[0] + a[1] * b[1] + a[2] * b[2]
}

fn add_scaled(acc: &mut V3, s: f64, v: V3) {
    acc[0] += s * v[0];
    acc[1] += s * v[1];
    acc[2] += s * v[2];
}

/// The simulation state: site arrays of length 3n, molecule m owning sites 3m..3m+3.
struct Water {
    n: usize,
    side: f64,
    pos: Vec<V3>,
    vel: Vec<V3>,
    force: Vec<V3>,
}

impl Water {
    /// Molecules on a simple cubic lattice with random orientations and thermal velocities.
    fn new(n: usize, rng: &mut Rng) -> Water {
        let per_side = (1..).find(|k| k * k * k >= n).unwrap_or(1);
        let side = per_side as f64;
        let mut pos = Vec::with_capacity(3 * n);
        let mut vel = Vec::with_capacity(3 * n);
        for m in 0..n {
            let o = [
                (m % per_side) as f64 + 0.5,
                ((m / per_side) % per_side) as f64 + 0.5,
                (m / (per_side * per_side)) as f64 + 0.5,
            ];
            // Two unit vectors at the H–O–H angle, in a random orientation.
            let axis = random_unit(rng);
            let mut perp = random_unit(rng);
            let along = dot(perp, axis);
            add_scaled(&mut perp, -along, axis);
            let norm = dot(perp, perp).sqrt().max(1e-9);
            perp = perp.map(|x| x / norm);
            let (s, c) = HALF_ANGLE.sin_cos();
            let mut h1 = o;
            add_scaled(&mut h1, BOND * c, axis);
            add_scaled(&mut h1, BOND * s, perp);
            let mut h2 = o;
            add_scaled(&mut h2, BOND * c, axis);
            add_scaled(&mut h2, -BOND * s, perp);
            pos.extend([o, h1, h2]);
            for mass in MASS {
                let sd = (TEMPERATURE / mass).sqrt();
                vel.push([0; 3].map(|_| sd * rng.range_f64(-1.7, 1.7)));
            }
        }
        Water {
            n,
            side,
            pos,
            vel,
            force: vec![[0.0; 3]; 3 * n],
        }
    }

    fn compute_forces(&mut self) {
        let (pos, force) = (&self.pos, &mut self.force);
        force.iter_mut().for_each(|f| *f = [0.0; 3]);
        let rh = BOND * 2.0 * HALF_ANGLE.sin();
        // Intramolecular springs: O–H1, O–H2, H1–H2.
        for m in 0..self.n {
            for (a, b, k, r0) in [(0, 1, K_BOND, BOND), (0, 2, K_BOND, BOND), (1, 2, K_HH, rh)] {
                let (ia, ib) = (3 * m + a, 3 * m + b);
                let d = sub(pos[ia], pos[ib]);
                let r = dot(d, d).sqrt().max(1e-12);
                let f = -k * (r - r0) / r;
                add_scaled(&mut force[ia], f, d);
                add_scaled(&mut force[ib], -f, d);
            }
        }
        // Intermolecular: all pairs of molecules within half the box (minimum image).
        let (side, half) = (self.side, 0.5 * self.side);
        let cutoff2 = half * half;
        let lj_s2 = LJ_SIGMA * LJ_SIGMA;
        for i in 0..self.n {
            let sites_i = [pos[3 * i], pos[3 * i + 1], pos[3 * i + 2]];
            let mut fi = [[0.0; 3]; 3];
            for j in i + 1..self.n {
                // Oxygens lie inside the box (see `wrap`), so one correction per axis gives the
                // nearest periodic image of molecule j.
                let mut shift = [0.0; 3];
                let mut doo = [0.0; 3];
                for c in 0..3 {
                    let d = sites_i[0][c] - pos[3 * j][c];
                    shift[c] = if d > half {
                        -side
                    } else if d < -half {
                        side
                    } else {
                        0.0
                    };
                    doo[c] = d + shift[c];
                }
                let r2 = dot(doo, doo);
                if r2 >= cutoff2 {
                    continue;
                }
                // Lennard-Jones between the oxygens, with r² floored so a close encounter in a
                // hot start cannot produce an infinite force.
                let r2c = r2.max(0.5 * lj_s2);
                let s2 = lj_s2 / r2c;
                let s6 = s2 * s2 * s2;
                let flj = 24.0 * LJ_EPS * s6 * (2.0 * s6 - 1.0) / r2c;
                add_scaled(&mut fi[0], flj, doo);
                add_scaled(&mut force[3 * j], -flj, doo);
                // Softened Coulomb between all nine site pairs.
                for (a, (site, fa)) in sites_i.iter().zip(fi.iter_mut()).enumerate() {
                    let pa = [site[0] + shift[0], site[1] + shift[1], site[2] + shift[2]];
                    for b in 0..3 {
                        let d = sub(pa, pos[3 * j + b]);
                        let q = dot(d, d) + SOFTENING2;
                        let inv = 1.0 / q.sqrt();
                        let f = CHARGE[a] * CHARGE[b] * inv * inv * inv;
                        add_scaled(fa, f, d);
                        add_scaled(&mut force[3 * j + b], -f, d);
                    }
                }
            }
            for (a, f) in fi.into_iter().enumerate() {
                add_scaled(&mut force[3 * i + a], 1.0, f);
            }
        }
    }

    /// Moves every molecule whose oxygen left the periodic box back in by whole box lengths.
    fn wrap(&mut self) {
        let side = self.side;
        for m in self.pos.chunks_exact_mut(3) {
            for c in 0..3 {
                let shift = -side * (m[0][c] / side).floor();
                if shift != 0.0 {
                    m.iter_mut().for_each(|p| p[c] += shift);
                }
            }
        }
    }

    fn half_kick(&mut self) {
        for (s, (v, f)) in self.vel.iter_mut().zip(&self.force).enumerate() {
            add_scaled(v, 0.5 * DT / MASS[s % 3], *f);
        }
    }

    fn temperature(&self) -> f64 {
        let twice_ke: f64 = (self.vel.iter().enumerate())
            .map(|(s, v)| MASS[s % 3] * dot(*v, *v))
            .sum();
        twice_ke / (3.0 * self.vel.len() as f64)
    }

    /// One velocity-Verlet step followed by a gentle (Berendsen) rescale towards TEMPERATURE.
    fn step(&mut self) {
        self.half_kick();
        for (p, v) in self.pos.iter_mut().zip(&self.vel) {
            add_scaled(p, DT, *v);
        }
        self.wrap();
        self.compute_forces();
        self.half_kick();
        let t = self.temperature();
        let lambda = (1.0 + DT / THERMOSTAT_TAU * (TEMPERATURE / t - 1.0)).sqrt();
        self.vel.iter_mut().for_each(|v| *v = v.map(|x| x * lambda));
    }
}

fn random_unit(rng: &mut Rng) -> V3 {
    loop {
        let v = [0; 3].map(|_| rng.range_f64(-1.0, 1.0));
        let r2 = dot(v, v);
        if r2 > 1e-6 && r2 <= 1.0 {
            let r = r2.sqrt();
            return v.map(|x| x / r);
        }
    }
}

fn main() {
    ckpt_suite::checkpointing_from_env();
    let Args { size: n, steps } = Args::parse(&SPEC);
    let frame = 6 * 3 * n; // f64s per frame: positions and velocities of 3n sites
    say(&format!(
        "water: molecules={n} steps={steps} trajectory={:.1} MiB",
        (8 * frame * steps) as f64 / (1 << 20) as f64
    ));

    let mut rng = Rng::new(0x4);
    let mut w = Water::new(n, &mut rng);
    w.compute_forces();
    // Reserved up front and filled one frame per step: never reallocated.
    let mut trajectory: Vec<f64> = Vec::with_capacity(frame * steps);
    let mut progress = Progress::new("water", steps);
    for step in 0..steps {
        w.step();
        trajectory.extend(w.pos.iter().flatten());
        trajectory.extend(w.vel.iter().flatten());
        progress.at(step + 1);
    }
    say(&format!("water: final temperature {:.6}", w.temperature()));

    let mut digest = Digest::new();
    for field in [&w.pos, &w.vel, &w.force] {
        field.iter().for_each(|v| digest.f64s(v));
    }
    digest.f64s(&trajectory);
    print_digest(digest.finish());
}
