//! A wind-driven ocean basin on a 2-D grid, its elliptic solve done by multigrid: our small
//! analogue of SPLASH-2 Ocean (paper Table II: 258×258 grids, 29.0 MB).
//!
//! The model is the barotropic vorticity equation on the unit square,
//! `ζ_t + u·∇ζ + β v = curl τ − r ζ + ν ∇²ζ` with `∇²ψ = ζ`, `u = −ψ_y`, `v = ψ_x` and ψ = ζ = 0
//! on the walls (Stommel's single gyre, with a western boundary current). Each time step solves
//! the Poisson equation for ψ with two multigrid V-cycles (red–black Gauss–Seidel smoothing,
//! full-weighting restriction, bilinear prolongation), warm-started from the previous ψ, then
//! advances ζ explicitly with upwind advection.
//!
//! Usage: `ocean [SIZE [STEPS]]`
//! - SIZE = grid cells per side n, a power of two (default 1024); the grids have (n+1)² points.
//!   Memory ≈ 72·(n+1)² bytes: seven fine `f64` grids (ψ, ζ, ζ-next, u, v, wind forcing,
//!   residual) plus the coarse multigrid levels (about two more thirds of a grid).
//! - STEPS = time steps (default 100). Time ≈ STEPS · n².
//!
//! Memory pattern: the wind forcing is written once; every step rewrites ψ, ζ, u, v and the
//! multigrid scratch grids, i.e. nearly all pages, in row order.
//!
//! Measured on the 2-core development machine, release build (the dev profile, opt-level 1,
//! takes up to 1.7× as long), with `/usr/bin/time`: CPU (user) time, wall time, max RSS.
//! Other sessions shared the machine meanwhile, so the wall times are inflated.
//!
//! | command                    | CPU    | wall   | max RSS |
//! | -------------------------- | ------ | ------ | ------- |
//! | `ocean 1024 40`            | 1.1 s  | 1.8 s  | 75 MiB  |
//! | `ocean 1024 100` (default) | 2.5 s  | 3.1 s  | 75 MiB  |
//! | `ocean 1024 400`           | 10.8 s | 13.6 s | 74 MiB  |
//! | `ocean 1024 1200`          | 30 s   | 34 s   | 74 MiB  |
//! | `ocean 2048 450`           | 62 s   | 97 s   | 291 MiB |
//!
//! Output: one header line, the final kinetic energy and circulation extremes, then
//! `digest <hex>` over ψ and ζ.

use ckpt_suite::workload::{Args, Digest, Progress, Spec, print_digest, say};

const SPEC: Spec = Spec {
    size_help: "SIZE: grid cells per side n, a power of two; memory about 72*(n+1)^2 bytes",
    steps_help: "STEPS: time steps (time about STEPS * n^2)",
    default_size: 1024,
    default_steps: 100,
    min_size: 4,
    max_size: 1 << 14,
};

const BETA: f64 = 10.0;
const FRICTION: f64 = 1.0;
const WIND: f64 = 1.0;
const V_CYCLES: usize = 2;
const SMOOTHING_SWEEPS: usize = 2;

/// One square grid of (m+1)² points, row-major; row i is y = i·h, column j is x = j·h.
#[derive(Clone)]
struct Grid {
    m: usize,
    v: Vec<f64>,
}

impl Grid {
    fn new(m: usize) -> Grid {
        Grid {
            m,
            v: vec![0.0; (m + 1) * (m + 1)],
        }
    }

    fn at(&self, i: usize, j: usize) -> f64 {
        self.v[i * (self.m + 1) + j]
    }
}

/// One multigrid level: the unknown `u` and right-hand side `f` of `∇²u = f`, and a residual.
struct Level {
    u: Grid,
    f: Grid,
    r: Grid,
}

/// Red–black Gauss–Seidel sweeps on `∇²u = f` with zero boundary values.
fn smooth(u: &mut Grid, f: &Grid, sweeps: usize) {
    let m = u.m;
    let w = m + 1;
    let h2 = 1.0 / (m * m) as f64;
    for _ in 0..sweeps {
        for colour in 0..2 {
            for i in 1..m {
                let first = 1 + (i + colour + 1) % 2;
                for j in (first..m).step_by(2) {
                    let k = i * w + j;
                    let nb = u.v[k - 1] + u.v[k + 1] + u.v[k - w] + u.v[k + w];
                    u.v[k] = 0.25 * (nb - h2 * f.v[k]);
                }
            }
        }
    }
}

/// `r = f − ∇²u` at the interior points.
fn residual(u: &Grid, f: &Grid, r: &mut Grid) {
    let m = u.m;
    let w = m + 1;
    let inv_h2 = (m * m) as f64;
    for i in 1..m {
        for j in 1..m {
            let k = i * w + j;
            let lap = (u.v[k - 1] + u.v[k + 1] + u.v[k - w] + u.v[k + w] - 4.0 * u.v[k]) * inv_h2;
            r.v[k] = f.v[k] - lap;
        }
    }
}

/// Full-weighting restriction of a fine residual to the next coarser right-hand side.
fn restrict(fine: &Grid, coarse: &mut Grid) {
    let mc = coarse.m;
    for ic in 1..mc {
        for jc in 1..mc {
            let (i, j) = (2 * ic, 2 * jc);
            let centre = fine.at(i, j);
            let edges =
                fine.at(i - 1, j) + fine.at(i + 1, j) + fine.at(i, j - 1) + fine.at(i, j + 1);
            let corners = fine.at(i - 1, j - 1)
                + fine.at(i - 1, j + 1)
                + fine.at(i + 1, j - 1)
                + fine.at(i + 1, j + 1);
            coarse.v[ic * (mc + 1) + jc] = (4.0 * centre + 2.0 * edges + corners) / 16.0;
        }
    }
}

/// Adds the bilinear interpolation of a coarse correction to the fine unknown.
fn prolong_add(coarse: &Grid, fine: &mut Grid) {
    let m = fine.m;
    for i in 1..m {
        let (i0, i1) = (i / 2, i.div_ceil(2));
        for j in 1..m {
            let (j0, j1) = (j / 2, j.div_ceil(2));
            let e = coarse.at(i0, j0) + coarse.at(i0, j1) + coarse.at(i1, j0) + coarse.at(i1, j1);
            fine.v[i * (m + 1) + j] += 0.25 * e;
        }
    }
}

/// One V-cycle on the hierarchy; `levels[0]` holds the problem, coarser levels are scratch.
fn v_cycle(levels: &mut [Level]) {
    let depth = levels.len();
    for l in 0..depth - 1 {
        let (fine, coarse) = levels.split_at_mut(l + 1);
        let lv = &mut fine[l];
        smooth(&mut lv.u, &lv.f, SMOOTHING_SWEEPS);
        residual(&lv.u, &lv.f, &mut lv.r);
        restrict(&lv.r, &mut coarse[0].f);
        coarse[0].u.v.fill(0.0);
    }
    // The coarsest grid has a single interior point: one sweep solves it exactly.
    let last = &mut levels[depth - 1];
    smooth(&mut last.u, &last.f, 1);
    for l in (0..depth - 1).rev() {
        let (fine, coarse) = levels.split_at_mut(l + 1);
        prolong_add(&coarse[0].u, &mut fine[l].u);
        smooth(&mut fine[l].u, &fine[l].f, SMOOTHING_SWEEPS);
    }
}

struct Ocean {
    n: usize,
    dt: f64,
    nu: f64,
    levels: Vec<Level>,
    zeta: Grid,
    zeta_next: Grid,
    u: Grid,
    v: Grid,
    wind_curl: Grid,
}

impl Ocean {
    fn new(n: usize) -> Ocean {
        let mut levels = Vec::new();
        let mut m = n;
        while m >= 2 {
            levels.push(Level {
                u: Grid::new(m),
                f: Grid::new(m),
                r: Grid::new(m),
            });
            m /= 2;
        }
        let h = 1.0 / n as f64;
        let mut wind_curl = Grid::new(n);
        for i in 0..=n {
            let y = i as f64 * h;
            let row = -WIND * (std::f64::consts::PI * y).sin();
            wind_curl.v[i * (n + 1)..(i + 1) * (n + 1)].fill(row);
        }
        Ocean {
            n,
            // CFL ≈ 0.25 for velocities of order one; viscosity scaled to the grid (a Munk layer
            // a few cells wide) keeps the explicit diffusion term stable too.
            dt: 0.25 * h,
            nu: 0.5 * h,
            levels,
            zeta: Grid::new(n),
            zeta_next: Grid::new(n),
            u: Grid::new(n),
            v: Grid::new(n),
            wind_curl,
        }
    }

    fn psi(&self) -> &Grid {
        &self.levels[0].u
    }

    fn step(&mut self) {
        let n = self.n;
        let w = n + 1;
        let inv_2h = 0.5 * n as f64;
        let inv_h = n as f64;
        let inv_h2 = (n * n) as f64;

        // ∇²ψ = ζ, warm-started from the previous ψ.
        self.levels[0].f.v.copy_from_slice(&self.zeta.v);
        for _ in 0..V_CYCLES {
            v_cycle(&mut self.levels);
        }

        let psi = &self.levels[0].u.v;
        for i in 1..n {
            for j in 1..n {
                let k = i * w + j;
                self.u.v[k] = -(psi[k + w] - psi[k - w]) * inv_2h;
                self.v.v[k] = (psi[k + 1] - psi[k - 1]) * inv_2h;
            }
        }

        let (z, zn) = (&self.zeta.v, &mut self.zeta_next.v);
        for i in 1..n {
            for j in 1..n {
                let k = i * w + j;
                let (u, v) = (self.u.v[k], self.v.v[k]);
                let zx = if u > 0.0 {
                    z[k] - z[k - 1]
                } else {
                    z[k + 1] - z[k]
                } * inv_h;
                let zy = if v > 0.0 {
                    z[k] - z[k - w]
                } else {
                    z[k + w] - z[k]
                } * inv_h;
                let lap = (z[k - 1] + z[k + 1] + z[k - w] + z[k + w] - 4.0 * z[k]) * inv_h2;
                let tendency = -(u * zx + v * zy) - BETA * v + self.wind_curl.v[k]
                    - FRICTION * z[k]
                    + self.nu * lap;
                zn[k] = z[k] + self.dt * tendency;
            }
        }
        std::mem::swap(&mut self.zeta, &mut self.zeta_next);
    }
}

fn main() {
    ckpt_suite::checkpointing_from_env();
    let Args { size: n, steps } = Args::parse(&SPEC);
    if !n.is_power_of_two() {
        eprintln!("ocean: SIZE must be a power of two (got {n})");
        std::process::exit(2);
    }
    let mut ocean = Ocean::new(n);
    let grids: usize =
        ocean.levels.iter().map(|l| 3 * l.u.v.len()).sum::<usize>() + 5 * ocean.zeta.v.len();
    say(&format!(
        "ocean: n={n} steps={steps} grids={:.1} MiB",
        (8 * grids) as f64 / (1 << 20) as f64
    ));

    let mut progress = Progress::new("ocean", steps);
    for step in 0..steps {
        ocean.step();
        progress.at(step + 1);
    }

    let energy: f64 = ocean
        .u
        .v
        .iter()
        .zip(&ocean.v.v)
        .map(|(u, v)| u * u + v * v)
        .sum::<f64>()
        * 0.5
        / (n * n) as f64;
    let (lo, hi) = ocean
        .psi()
        .v
        .iter()
        .fold((f64::MAX, f64::MIN), |(lo, hi), &p| (lo.min(p), hi.max(p)));
    say(&format!(
        "ocean: kinetic energy {energy:.6e}, psi in [{lo:.6e}, {hi:.6e}]"
    ));
    let mut digest = Digest::new();
    digest.f64s(&ocean.psi().v);
    digest.f64s(&ocean.zeta.v);
    print_digest(digest.finish());
}
