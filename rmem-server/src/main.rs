//! Remote-memory server daemon (placeholder until issue #5 lands).

fn main() {
    eprintln!("rmem-server: not built yet (issue #5)");
    std::process::exit(2);
}
