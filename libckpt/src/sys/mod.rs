//! Platform code: raw system calls, the register trampoline, /proc parsing, signals, restore.
//!
//! Everything that knows it runs on Linux x86_64 lives below this module, so a port to another
//! architecture edits `arch_*` and `syscall` only.

#[cfg(not(all(target_os = "linux", target_arch = "x86_64")))]
compile_error!("ckpt supports Linux on x86_64 only for now");

pub mod arch;
pub mod dirty;
pub mod exec;
pub mod glibc;
pub mod interpose;
pub mod maps;
pub mod mem;
pub mod process;
pub mod restore;
pub mod signals;
pub mod syscall;
