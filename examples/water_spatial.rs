//! An O(n) molecular-dynamics run of flexible three-site water molecules: our small analogue of
//! SPLASH-2 Water-Spatial (paper Table II: 9261 molecules, 10.1 MB).
//!
//! The molecules and their forces are those of `water` (our Water-Nsquared): an oxygen and two
//! hydrogens with partial charges on harmonic springs, softened Coulomb between all nine site
//! pairs of two molecules and Lennard-Jones between their oxygens. What differs is the algorithm,
//! as between the two SPLASH-2 programs: the periodic box is divided into a grid of cells at
//! least a cut-off radius wide, the molecules are binned into cells every step, and each
//! molecule interacts only with those in its own and the 26 neighbouring cells within the
//! cut-off, so a step costs O(n). The motion is integrated as SPLASH-2 Water does, with a
//! sixth-order Gear predictor-corrector: every site carries its position and five scaled time
//! derivatives, which is most of the memory (as in SPLASH-2, whose molecule records hold seven
//! orders of derivatives), plus a weak velocity-rescaling thermostat.
//!
//! Usage: `water_spatial [SIZE [STEPS]]`
//! - SIZE = number of molecules n (default 40000). Memory ≈ 520·n bytes: 6 derivative orders ×
//!   3 sites × 3 coordinates × 8 bytes (432 bytes), the forces (72) and the cell lists (8).
//! - STEPS = time steps (default 28). Time ≈ STEPS · n.
//!
//! Memory pattern: every step rewrites every molecule's derivatives and forces and rebuilds
//! the cell lists: all pages dirty in every interval, as in `ocean`.
//!
//! Measured on the 2-core development machine, release build (the dev profile, opt-level 1,
//! takes up to 1.7× as long), with `/usr/bin/time`: CPU (user) time, wall time, max RSS.
//! Other sessions shared the machine meanwhile, so the wall times are inflated.
//!
//! | command                            | CPU    | wall   | max RSS |
//! | ---------------------------------- | ------ | ------ | ------- |
//! | `water_spatial 1000 400`           | 0.8 s  | 0.8 s  | 3 MiB   |
//! | `water_spatial 8000 230`           | 4.1 s  | 4.1 s  | 6 MiB   |
//! | `water_spatial 24000 10`           | 0.5 s  | 0.5 s  | 14 MiB  |
//! | `water_spatial 40000 28` (default) | 2.5 s  | 2.7 s  | 22 MiB  |
//!
//! Output: one header line, the final temperature, then `digest <hex>` over the final state.

use ckpt_suite::workload::{Args, Digest, Progress, Rng, Spec, print_digest, say};

const SPEC: Spec = Spec {
    size_help: "SIZE: number of molecules n; memory about 520*n bytes",
    steps_help: "STEPS: time steps (time about STEPS * n)",
    default_size: 40000,
    default_steps: 28,
    min_size: 2,
    max_size: 1 << 24,
};

// Reduced units as in `water`: lattice spacing 1, oxygen mass 16, hydrogen mass 1.
const MASS: [f64; 3] = [16.0, 1.0, 1.0];
const CHARGE: [f64; 3] = [-0.82, 0.41, 0.41];
const BOND: f64 = 0.33;
const K_BOND: f64 = 500.0;
const K_HH: f64 = 200.0;
const HALF_ANGLE: f64 = 0.911_934; // 104.5° / 2 in radians
const LJ_SIGMA: f64 = 0.9;
const LJ_EPS: f64 = 0.5;
const SOFTENING2: f64 = 0.01;
/// Interactions reach this far between oxygens (SPLASH-2 Water-Spatial's cut-off radius).
const CUTOFF: f64 = 2.5;
const DT: f64 = 0.002;
const TEMPERATURE: f64 = 0.5;
const THERMOSTAT_TAU: f64 = 0.1;
/// Orders kept per site: the position and its first five scaled derivatives.
const ORDERS: usize = 6;
/// Gear's corrector coefficients for a second-order equation with six values (Allen and
/// Tildesley, Appendix E).
const GEAR: [f64; ORDERS] = [
    3.0 / 16.0,
    251.0 / 360.0,
    1.0,
    11.0 / 18.0,
    1.0 / 6.0,
    1.0 / 60.0,
];

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

/// The simulation state. `x[k][s]` is the k-th scaled derivative of site s's position,
/// dt^k/k! · d^k r/dt^k (so `x[0]` is the position, `x[1]` the velocity times dt); molecule m
/// owns sites 3m..3m+3.
struct Water {
    n: usize,
    side: f64,
    cutoff: f64,
    x: Vec<Vec<V3>>,
    force: Vec<V3>,
    /// Cells per side of the grid.
    cells: usize,
    /// Molecules of cell c: `cell_mol[cell_start[c]..cell_start[c + 1]]`, in index order.
    cell_start: Vec<u32>,
    cell_mol: Vec<u32>,
    /// The distinct neighbours of each cell, itself included (fewer than 27 on a small grid).
    neighbours: Vec<Vec<u32>>,
}

impl Water {
    /// Molecules on a simple cubic lattice with random orientations and thermal velocities.
    fn new(n: usize, rng: &mut Rng) -> Water {
        let per_side = (1..).find(|k| k * k * k >= n).unwrap_or(1);
        let side = per_side as f64;
        // Minimum image needs the cut-off within half the box.
        let cutoff = CUTOFF.min(0.5 * side);
        let cells = ((side / cutoff).floor() as usize).max(1);
        let mut pos = Vec::with_capacity(3 * n);
        let mut vel = Vec::with_capacity(3 * n);
        for m in 0..n {
            let o = [
                (m % per_side) as f64 + 0.5,
                ((m / per_side) % per_side) as f64 + 0.5,
                (m / (per_side * per_side)) as f64 + 0.5,
            ];
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
                vel.push([0; 3].map(|_| DT * sd * rng.range_f64(-1.7, 1.7)));
            }
        }
        let mut x = vec![pos, vel];
        x.extend((2..ORDERS).map(|_| vec![[0.0; 3]; 3 * n]));
        let ncell = cells * cells * cells;
        let neighbours = (0..ncell)
            .map(|c| {
                let (cx, cy, cz) = (c % cells, (c / cells) % cells, c / (cells * cells));
                let wrap = |i: usize, d: usize| (i + cells + d - 1) % cells;
                let mut v: Vec<u32> = (0..27)
                    .map(|k| {
                        let (dx, dy, dz) = (k % 3, (k / 3) % 3, k / 9);
                        ((wrap(cz, dz) * cells + wrap(cy, dy)) * cells + wrap(cx, dx)) as u32
                    })
                    .collect();
                v.sort_unstable();
                v.dedup();
                v
            })
            .collect();
        let mut w = Water {
            n,
            side,
            cutoff,
            x,
            force: vec![[0.0; 3]; 3 * n],
            cells,
            cell_start: vec![0; ncell + 1],
            cell_mol: vec![0; n],
            neighbours,
        };
        w.compute_forces();
        // The second derivative from the initial forces: x2 = dt²/2 · F/m.
        for (s, (a, f)) in w.x[2].iter_mut().zip(&w.force).enumerate() {
            *a = f.map(|c| 0.5 * DT * DT * c / MASS[s % 3]);
        }
        w
    }

    fn cell_of(&self, p: V3) -> usize {
        let k = |c: f64| ((c / self.side * self.cells as f64) as usize).min(self.cells - 1);
        (k(p[2]) * self.cells + k(p[1])) * self.cells + k(p[0])
    }

    /// Bins the molecules by their oxygen (a counting sort: molecules stay in index order
    /// within a cell).
    fn bin(&mut self) {
        let cells: Vec<usize> = (0..self.n)
            .map(|m| self.cell_of(self.x[0][3 * m]))
            .collect();
        self.cell_start.iter_mut().for_each(|c| *c = 0);
        for &c in &cells {
            self.cell_start[c + 1] += 1;
        }
        for c in 0..self.cell_start.len() - 1 {
            self.cell_start[c + 1] += self.cell_start[c];
        }
        let mut next: Vec<u32> = self.cell_start[..self.cell_start.len() - 1].to_vec();
        for (m, &c) in cells.iter().enumerate() {
            self.cell_mol[next[c] as usize] = m as u32;
            next[c] += 1;
        }
    }

    fn compute_forces(&mut self) {
        self.bin();
        let (pos, force) = (&self.x[0], &mut self.force);
        force.iter_mut().for_each(|f| *f = [0.0; 3]);
        let rh = BOND * 2.0 * HALF_ANGLE.sin();
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
        // Intermolecular: each pair i < j once, found from i's cell and its neighbours.
        let (side, half) = (self.side, 0.5 * self.side);
        let cutoff2 = self.cutoff * self.cutoff;
        let lj_s2 = LJ_SIGMA * LJ_SIGMA;
        let ncell = self.cells.pow(3);
        for c in 0..ncell {
            for &i in &self.cell_mol[self.cell_start[c] as usize..self.cell_start[c + 1] as usize] {
                let i = i as usize;
                let sites_i = [pos[3 * i], pos[3 * i + 1], pos[3 * i + 2]];
                let mut fi = [[0.0; 3]; 3];
                for &nc in &self.neighbours[c] {
                    let nc = nc as usize;
                    let range = self.cell_start[nc] as usize..self.cell_start[nc + 1] as usize;
                    for &j in &self.cell_mol[range] {
                        let j = j as usize;
                        if j <= i {
                            continue;
                        }
                        let mut shift = [0.0; 3];
                        let mut doo = [0.0; 3];
                        for k in 0..3 {
                            let d = sites_i[0][k] - pos[3 * j][k];
                            shift[k] = if d > half {
                                -side
                            } else if d < -half {
                                side
                            } else {
                                0.0
                            };
                            doo[k] = d + shift[k];
                        }
                        let r2 = dot(doo, doo);
                        if r2 >= cutoff2 {
                            continue;
                        }
                        let r2c = r2.max(0.5 * lj_s2);
                        let s2 = lj_s2 / r2c;
                        let s6 = s2 * s2 * s2;
                        let flj = 24.0 * LJ_EPS * s6 * (2.0 * s6 - 1.0) / r2c;
                        add_scaled(&mut fi[0], flj, doo);
                        add_scaled(&mut force[3 * j], -flj, doo);
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
                }
                for (a, f) in fi.into_iter().enumerate() {
                    add_scaled(&mut force[3 * i + a], 1.0, f);
                }
            }
        }
    }

    /// Moves every molecule whose oxygen left the periodic box back in by whole box lengths.
    fn wrap(&mut self) {
        let side = self.side;
        for m in self.x[0].chunks_exact_mut(3) {
            for c in 0..3 {
                let shift = -side * (m[0][c] / side).floor();
                if shift != 0.0 {
                    m.iter_mut().for_each(|p| p[c] += shift);
                }
            }
        }
    }

    fn temperature(&self) -> f64 {
        let twice_ke: f64 = (self.x[1].iter().enumerate())
            .map(|(s, v)| MASS[s % 3] * dot(*v, *v))
            .sum();
        twice_ke / (DT * DT * 3.0 * self.x[1].len() as f64)
    }

    /// One Gear step: predict every order by the Taylor series (Pascal's triangle), compute the
    /// forces at the predicted positions, correct every order by the difference between the
    /// predicted and the actual acceleration; then a gentle (Berendsen) rescale towards
    /// TEMPERATURE.
    fn step(&mut self) {
        for k in 0..ORDERS - 1 {
            for j in (k + 1..ORDERS).rev() {
                // x_k += C(j, k) x_j, all j > k, using the not yet updated higher orders.
                let c = binomial(j, k);
                let (lo, hi) = self.x.split_at_mut(j);
                for (a, b) in lo[k].iter_mut().zip(&hi[0]) {
                    add_scaled(a, c, *b);
                }
            }
        }
        self.wrap();
        self.compute_forces();
        for s in 0..3 * self.n {
            let acc = self.force[s].map(|f| 0.5 * DT * DT * f / MASS[s % 3]);
            let delta = sub(acc, self.x[2][s]);
            for (k, g) in GEAR.iter().enumerate() {
                add_scaled(&mut self.x[k][s], *g, delta);
            }
        }
        let t = self.temperature();
        let lambda = (1.0 + DT / THERMOSTAT_TAU * (TEMPERATURE / t - 1.0)).sqrt();
        self.x[1]
            .iter_mut()
            .for_each(|v| *v = v.map(|x| x * lambda));
    }
}

fn binomial(n: usize, k: usize) -> f64 {
    (0..k).fold(1.0, |acc, i| acc * (n - i) as f64 / (i + 1) as f64)
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
    let mut w = Water::new(n, &mut Rng::new(0x8));
    say(&format!(
        "water_spatial: molecules={n} steps={steps} cells={}^3 state={:.1} MiB",
        w.cells,
        ((ORDERS + 1) * 72 * n + 8 * n) as f64 / (1 << 20) as f64
    ));
    let mut progress = Progress::new("water_spatial", steps);
    for step in 0..steps {
        w.step();
        progress.at(step + 1);
    }
    say(&format!(
        "water_spatial: final temperature {:.6}",
        w.temperature()
    ));

    let mut digest = Digest::new();
    for order in &w.x {
        order.iter().for_each(|v| digest.f64s(v));
    }
    w.force.iter().for_each(|v| digest.f64s(v));
    digest.u32s(&w.cell_mol);
    print_digest(digest.finish());
}
