//! A forked child writes a generation through the pool it inherited (the ckpt "forked" policy):
//! the write path must work without any thread but the forking one. Its own test binary, since
//! it forks.

mod common;

use common::*;

mod forking {
    //! # Safety
    //! `fork` is called from a test whose process has other threads (the harness). The child
    //! only uses the pool (memory allocation, which glibc makes fork-safe, and blocking sockets)
    //! and leaves with `_exit`, never returning into the harness.
    #![allow(unsafe_code)]

    /// Runs `f` in a forked child; returns the child's exit code.
    pub fn in_child(f: impl FnOnce() -> i32) -> i32 {
        // SAFETY: see the module note: the child runs only `f` and `_exit`s.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork failed");
        if pid == 0 {
            let code = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or(101);
            // SAFETY: `_exit` ends the child without running the parent's atexit handlers or
            // unwinding into the test harness.
            unsafe { libc::_exit(code) };
        }
        let mut status = 0;
        // SAFETY: `pid` is our child; `status` is a valid out-pointer.
        let r = unsafe { libc::waitpid(pid, &mut status, 0) };
        assert_eq!(r, pid, "waitpid");
        if libc::WIFEXITED(status) {
            libc::WEXITSTATUS(status)
        } else {
            -1
        }
    }
}

#[test]
fn forked_child_writes_a_generation_on_the_inherited_pool() {
    let srv = servers(3, "32M");
    let mut pool = connect(&srv, "parity", true);
    let g1 = page_runs(70, 10);
    write_gen(&mut pool, 1, &g1, b"parent").unwrap();
    let g2 = page_runs(71, 30);
    let code = forking::in_child(|| match write_gen(&mut pool, 2, &g2, b"child") {
        Ok(_) => 0,
        Err(e) => {
            eprintln!("child: {e}");
            1
        }
    });
    assert_eq!(code, 0, "the child's write failed");
    // The parent resumes using the same pool (it had nothing in flight when it forked).
    assert_eq!(pool.latest_committed().map(|i| i.generation), Some(2));
    check_gen(&mut pool, 2, &g2, b"child").unwrap();
    pool.free_generation(1).unwrap();
    // And a fresh process (a restart) sees it too.
    let mut other = connect(&srv, "parity", true);
    check_gen(&mut other, 2, &g2, b"child").unwrap();
}
