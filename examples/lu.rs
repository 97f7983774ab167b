//! LU decomposition with partial pivoting of a dense random matrix: our small analogue of the
//! SPLASH-2 LU kernel (paper Table II: a 1280×1280 matrix, 25.7 MB).
//!
//! Usage: `lu [SIZE [STEPS]]`
//! - SIZE = matrix order n (default 2048). Memory ≈ 8·n² bytes (one row-major `f64` matrix).
//! - STEPS = how many matrices are factored one after another, each from its own seed
//!   (default 2). Time ≈ STEPS · n³ (2/3·n³ flops per factorization).
//!
//! Memory pattern: elimination step k writes only the trailing (n−k)×(n−k) block (and swaps two
//! rows), so the set of pages written per interval shrinks as the factorization proceeds.
//!
//! Measured on the 2-core development machine, release build (the dev profile, opt-level 1,
//! takes up to 1.7× as long), with `/usr/bin/time`: CPU (user) time, wall time, max RSS.
//! Other sessions shared the machine meanwhile, so the wall times are inflated.
//!
//! | command               | CPU    | wall   | max RSS |
//! | --------------------- | ------ | ------ | ------- |
//! | `lu 2048 1`           | 1.2 s  | 1.2 s  | 34 MiB  |
//! | `lu 2048 2` (default) | 2.7 s  | 3.9 s  | 34 MiB  |
//! | `lu 3072 2`           | 11.6 s | 15.8 s | 74 MiB  |
//! | `lu 4096 2`           | 26 s   | 27 s   | 130 MiB |
//! | `lu 4096 5`           | 63 s   | 68 s   | 130 MiB |
//!
//! Output: one header line, then `digest <hex>` over the bits of every factor and pivot.

use ckpt_suite::workload::{Args, Digest, Progress, Rng, Spec, print_digest, say};

const SPEC: Spec = Spec {
    size_help: "SIZE: matrix order n; memory about 8*n^2 bytes",
    steps_help: "STEPS: number of matrices factored in turn (time about STEPS * n^3)",
    default_size: 2048,
    default_steps: 2,
    min_size: 2,
    max_size: 1 << 16,
};

/// Factors `a` (n×n, row-major) in place into L (unit lower, below the diagonal) and U, with
/// the row interchanges in `piv`, the same layout as LAPACK's `dgetrf`.
fn factor(a: &mut [f64], n: usize, piv: &mut [u32], progress: &mut Progress, done: &mut usize) {
    for k in 0..n {
        // Pivot: the first row with the largest magnitude in column k (ties go to the first,
        // so the choice is deterministic).
        let mut p = k;
        let mut best = a[k * n + k].abs();
        for i in k + 1..n {
            let v = a[i * n + k].abs();
            if v > best {
                best = v;
                p = i;
            }
        }
        piv[k] = p as u32;
        if p != k {
            let (upper, lower) = a.split_at_mut(p * n);
            upper[k * n..(k + 1) * n].swap_with_slice(&mut lower[..n]);
        }
        let pivot = a[k * n + k];
        if pivot != 0.0 {
            let (top, rest) = a.split_at_mut((k + 1) * n);
            let urow = &top[k * n + k + 1..];
            for row in rest.chunks_exact_mut(n) {
                let l = row[k] / pivot;
                row[k] = l;
                for (x, &u) in row[k + 1..].iter_mut().zip(urow) {
                    *x -= l * u;
                }
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
        "lu: n={n} steps={steps} matrix={:.1} MiB",
        (8 * n * n) as f64 / (1 << 20) as f64
    ));

    let mut a = vec![0.0f64; n * n];
    let mut piv = vec![0u32; n];
    let mut digest = Digest::new();
    let mut progress = Progress::new("lu", n * steps);
    let mut done = 0;
    for step in 0..steps {
        let mut rng = Rng::new(0x1 ^ ((step as u64) << 32));
        for x in a.iter_mut() {
            *x = rng.range_f64(-1.0, 1.0);
        }
        factor(&mut a, n, &mut piv, &mut progress, &mut done);
        digest.f64s(&a);
        digest.u32s(&piv);
    }
    print_digest(digest.finish());
}
