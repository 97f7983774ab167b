//! Dense matrix multiply, C += A·B: our small analogue of the paper's matrix-multiplication
//! program (Table II: two 2048×2048 matrices, 50.8 MB).
//!
//! Usage: `matmul [SIZE [STEPS]]`
//! - SIZE = matrix order n (default 1280). Memory ≈ 24·n² bytes (A, B and C, row-major `f64`).
//! - STEPS = how many times A·B is added into C (default 8). Time ≈ STEPS · n³.
//!
//! Memory pattern: A and B are written once, at the start; afterwards each pass writes C one
//! row at a time (row i is finished before row i+1 is touched), so an interval dirties a band
//! of C only.
//!
//! Measured on the 2-core development machine, release build (the dev profile, opt-level 1,
//! takes up to 1.7× as long), with `/usr/bin/time`: CPU (user) time, wall time, max RSS.
//! Other sessions shared the machine meanwhile, so the wall times are inflated.
//!
//! | command                   | CPU    | wall   | max RSS |
//! | ------------------------- | ------ | ------ | ------- |
//! | `matmul 1280 3`           | 1.0 s  | 1.0 s  | 39 MiB  |
//! | `matmul 1280 8` (default) | 2.6 s  | 2.7 s  | 39 MiB  |
//! | `matmul 2048 4`           | 10.1 s | 10.9 s | 98 MiB  |
//! | `matmul 2048 13`          | 33 s   | 38 s   | 98 MiB  |
//! | `matmul 2048 25`          | 68 s   | 86 s   | 98 MiB  |
//!
//! Output: one header line, then `digest <hex>` over the bits of C.

use ckpt_suite::workload::{Args, Digest, Progress, Rng, Spec, print_digest, say};

const SPEC: Spec = Spec {
    size_help: "SIZE: matrix order n; memory about 24*n^2 bytes (A, B, C)",
    steps_help: "STEPS: number of passes C += A*B (time about STEPS * n^3)",
    default_size: 1280,
    default_steps: 8,
    min_size: 1,
    max_size: 1 << 15,
};

fn main() {
    ckpt_suite::checkpointing_from_env();
    let Args { size: n, steps } = Args::parse(&SPEC);
    say(&format!(
        "matmul: n={n} steps={steps} matrices={:.1} MiB",
        (24 * n * n) as f64 / (1 << 20) as f64
    ));

    let mut rng = Rng::new(0x2);
    let a: Vec<f64> = (0..n * n).map(|_| rng.range_f64(-1.0, 1.0)).collect();
    let b: Vec<f64> = (0..n * n).map(|_| rng.range_f64(-1.0, 1.0)).collect();
    let mut c = vec![0.0f64; n * n];

    let mut progress = Progress::new("matmul", n * steps);
    for step in 0..steps {
        // i-k-j order: the inner loop runs along a row of B and a row of C, both contiguous.
        for (i, crow) in c.chunks_exact_mut(n).enumerate() {
            let arow = &a[i * n..(i + 1) * n];
            for (&aik, brow) in arow.iter().zip(b.chunks_exact(n)) {
                for (x, &bkj) in crow.iter_mut().zip(brow) {
                    *x += aik * bkj;
                }
            }
            progress.at(step * n + i + 1);
        }
    }
    let mut digest = Digest::new();
    digest.f64s(&c);
    print_digest(digest.finish());
}
