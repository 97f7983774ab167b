//! Smallest checkpointed program: a long deterministic loop over a heap array.
fn main() {
    ckpt_suite::checkpointing_from_env();
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(4_000_000);
    let steps: usize = std::env::args()
        .nth(2)
        .and_then(|s| s.parse().ok())
        .unwrap_or(200);
    let mut v: Vec<u64> = (0..n as u64).collect();
    for step in 0..steps {
        for (i, x) in v.iter_mut().enumerate() {
            *x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(i as u64 ^ step as u64);
        }
        if step % 50 == 0 {
            println!("step {step}");
        }
    }
    let d = v.iter().fold(0xcbf29ce484222325u64, |h, &x| {
        (h ^ x).wrapping_mul(0x100000001b3)
    });
    println!("digest {d:016x}");
}
