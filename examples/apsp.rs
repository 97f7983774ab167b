//! All-pairs shortest paths by Floyd–Warshall on a random weighted digraph: our small analogue
//! of the paper's All-Pairs program (Table II: 2048×2048, 25.7 MB).
//!
//! Usage: `apsp [SIZE [STEPS]]`
//! - SIZE = number of vertices n (default 1792). Memory ≈ 8·n² bytes: an n×n `u32` distance
//!   matrix and an n×n `u32` predecessor matrix (for path reconstruction).
//! - STEPS = how many graphs are solved one after another, each from its own seed
//!   (default 1). Time ≈ STEPS · n³.
//!
//! Memory pattern: every one of the n outer iterations rewrites both whole matrices
//! (`d[i][j] = min(d[i][j], d[i][k] + d[k][j])` is stored unconditionally), so every page is
//! dirty in every interval: the worst case for incremental checkpointing.
//!
//! Measured on the 2-core development machine, release build (the dev profile, opt-level 1,
//! takes up to 1.7× as long), with `/usr/bin/time`: CPU (user) time, wall time, max RSS.
//! Other sessions shared the machine meanwhile, so the wall times are inflated.
//!
//! | command               | CPU    | wall   | max RSS |
//! | --------------------- | ------ | ------ | ------- |
//! | `apsp 1280`           | 0.9 s  | 0.9 s  | 14 MiB  |
//! | `apsp 1792` (default) | 2.4 s  | 2.5 s  | 26 MiB  |
//! | `apsp 2816`           | 9.0 s  | 11.1 s | 62 MiB  |
//! | `apsp 3584`           | 19 s   | 25 s   | 100 MiB |
//! | `apsp 4096`           | 36 s   | 48 s   | 130 MiB |
//! | `apsp 4608`           | 42 s   | 60 s   | 164 MiB |
//!
//! Output: one header line, the number of reachable pairs and the sum of their distances, then
//! `digest <hex>` over both matrices.

use ckpt_suite::workload::{Args, Digest, Progress, Rng, Spec, print_digest, say};

const SPEC: Spec = Spec {
    size_help: "SIZE: number of vertices n; memory about 8*n^2 bytes",
    steps_help: "STEPS: number of graphs solved in turn (time about STEPS * n^3)",
    default_size: 1792,
    default_steps: 1,
    min_size: 2,
    max_size: 1 << 16,
};

/// "No path": small enough that `INF + INF` does not overflow a `u32`.
const INF: u32 = 0x3fff_ffff;
/// Predecessor of an unreachable vertex.
const NONE: u32 = u32::MAX;

/// A sparse random digraph (about 8 out-edges per vertex, weights 1..=1000), so that shortest
/// paths have many hops and the relaxation keeps changing entries for most of the run.
fn generate(dist: &mut [u32], pred: &mut [u32], n: usize, seed: u64) {
    let mut rng = Rng::new(seed);
    let threshold = (8 * (u64::MAX / n as u64)).min(u64::MAX / 2);
    for i in 0..n {
        for j in 0..n {
            let edge = rng.next_u64() < threshold;
            let w = 1 + rng.below(1000) as u32;
            let (d, p) = if i == j {
                (0, i as u32)
            } else if edge {
                (w, i as u32)
            } else {
                (INF, NONE)
            };
            dist[i * n + j] = d;
            pred[i * n + j] = p;
        }
    }
}

fn floyd_warshall(
    dist: &mut [u32],
    pred: &mut [u32],
    n: usize,
    progress: &mut Progress,
    done: &mut usize,
) {
    let mut krow_d = vec![0u32; n];
    let mut krow_p = vec![0u32; n];
    for k in 0..n {
        // Row k does not change during iteration k (d[k][k] == 0), so a copy of it can be read
        // while every other row is updated in place.
        krow_d.copy_from_slice(&dist[k * n..(k + 1) * n]);
        krow_p.copy_from_slice(&pred[k * n..(k + 1) * n]);
        for (drow, prow) in dist.chunks_exact_mut(n).zip(pred.chunks_exact_mut(n)) {
            let dik = drow[k];
            for (((d, p), &dkj), &pkj) in drow
                .iter_mut()
                .zip(prow.iter_mut())
                .zip(&krow_d)
                .zip(&krow_p)
            {
                let via = dik + dkj;
                let better = via < *d;
                *d = if better { via } else { *d };
                *p = if better { pkj } else { *p };
            }
        }
        *done += 1;
        progress.at(*done);
    }
}

fn main() {
    ckpt_suite::checkpointing_from_env();
    let Args { size: n, steps } = Args::parse(&SPEC);
    say(&format!(
        "apsp: n={n} steps={steps} matrices={:.1} MiB",
        (8 * n * n) as f64 / (1 << 20) as f64
    ));

    let mut dist = vec![0u32; n * n];
    let mut pred = vec![0u32; n * n];
    let mut digest = Digest::new();
    let mut progress = Progress::new("apsp", n * steps);
    let mut done = 0;
    let (mut reachable, mut total) = (0u64, 0u64);
    for step in 0..steps {
        generate(&mut dist, &mut pred, n, 0x3 ^ ((step as u64) << 32));
        floyd_warshall(&mut dist, &mut pred, n, &mut progress, &mut done);
        for &d in dist.iter().filter(|&&d| d < INF) {
            reachable += 1;
            total += u64::from(d);
        }
        digest.u32s(&dist);
        digest.u32s(&pred);
    }
    say(&format!(
        "apsp: reachable pairs {reachable}, distance sum {total}"
    ));
    print_digest(digest.finish());
}
