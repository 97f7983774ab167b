//! Test probe for the process-level tests: small scenarios that exercise one restore hazard each.
//!
//! `probe refuse` — every unrestorable resource is refused by name and the program keeps going.
//! `probe files PATH N` — writes N numbered lines to PATH, checkpointing every 10 lines.
//! `probe exclude MARKER` — an excluded page reads as zeros after a restore.
//! `probe hold SECS` — holds the store for SECS seconds.
//! `probe spin SECS` — a busy loop with a digest, for timer-driven checkpoints.
//!
//! # Safety
//!
//! The scenarios create raw kernel objects (pipes, shared file mappings, io_uring instances)
//! through libc to show the checkpointer refusing them; each is created, checked and released
//! within one function, and every unsafe block says which invariant it relies on.
#![allow(unsafe_code)]

use std::io::Write;
use std::process::exit;
use std::time::{Duration, Instant};

fn expect_refused(what: &str, needle: &str) {
    match ckpt::checkpoint_now() {
        Err(ckpt::Error::Refused(msg)) if msg.contains(needle) => println!("refused {what}: {msg}"),
        other => {
            println!("NOT refused {what}: {other:?}");
            exit(1);
        }
    }
}

fn refuse() {
    let mut fds = [0i32; 2];
    // SAFETY: pipe writes two descriptors into the array.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    expect_refused("pipe", "pipe");
    // SAFETY: closing the two descriptors we just created.
    unsafe {
        libc::close(fds[0]);
        libc::close(fds[1]);
    }

    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    expect_refused("socket", "socket");
    drop(listener);

    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let t = std::thread::spawn(move || rx.recv().ok());
    expect_refused("thread", "second thread");
    tx.send(()).ok();
    t.join().ok();
    // A joined thread is gone, but let the kernel reap it before the next checkpoint.
    std::thread::sleep(Duration::from_millis(50));

    let path = std::env::temp_dir().join(format!("ckpt-probe-shared-{}", std::process::id()));
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .expect("temp file");
    f.set_len(4096).expect("size temp file");
    use std::os::fd::AsRawFd;
    // SAFETY: a fresh shared mapping of a file we own; unmapped below before the file is closed.
    let p = unsafe {
        libc::mmap(
            core::ptr::null_mut(),
            4096,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            f.as_raw_fd(),
            0,
        )
    };
    assert_ne!(p, libc::MAP_FAILED);
    expect_refused("shared writable file mapping", "shared writable mapping");
    // SAFETY: unmapping the mapping created above; nothing refers to it.
    unsafe { libc::munmap(p, 4096) };
    drop(f);
    let _ = std::fs::remove_file(&path);

    let mut params = [0u8; 120];
    // SAFETY: io_uring_setup reads and fills a 120-byte io_uring_params structure.
    let ring = unsafe { libc::syscall(libc::SYS_io_uring_setup, 4, params.as_mut_ptr()) };
    if ring >= 0 {
        expect_refused("io_uring", "io_uring");
        // SAFETY: closing the ring descriptor we created.
        unsafe { libc::close(ring as i32) };
    } else {
        println!("skipped io_uring: io_uring_setup is not available here");
    }

    ckpt::checkpoint_now().expect("checkpoint after releasing everything");
    println!("checkpointed after releasing everything");
}

fn files(path: &str, n: usize) {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .expect("open output");
    let mut i = 0;
    while i < n {
        writeln!(f, "line {i}").expect("write");
        i += 1;
        if i % 10 == 0 {
            ckpt::checkpoint_now().expect("checkpoint");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    println!("digest {n:016x}");
}

fn exclude(marker: &str) {
    // SAFETY: a fresh private anonymous mapping of three pages, owned by this function.
    let p = unsafe {
        libc::mmap(
            core::ptr::null_mut(),
            3 * 4096,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    } as *mut u8;
    assert_ne!(p as *mut libc::c_void, libc::MAP_FAILED);
    // SAFETY: the three pages are mapped read-write and owned here.
    let pages = unsafe { core::slice::from_raw_parts_mut(p, 3 * 4096) };
    pages.fill(0xab);
    ckpt::exclude(pages[4096..].as_ptr(), 4096).expect("exclude");
    ckpt::checkpoint_now().expect("checkpoint");
    if std::path::Path::new(marker).exists() {
        let sums: Vec<u64> = pages
            .chunks(4096)
            .map(|c| c.iter().map(|&b| b as u64).sum())
            .collect();
        println!("page sums {sums:?}");
    } else {
        println!("checkpointed");
        std::io::stdout().flush().ok();
        // SAFETY: ends the process as a crash would, leaving the checkpoint behind.
        unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
    }
}

fn spin(secs: f64) {
    let end = Instant::now() + Duration::from_secs_f64(secs);
    let mut v: Vec<u64> = (0..1 << 20).collect();
    let mut rounds = 0u64;
    while Instant::now() < end {
        for (i, x) in v.iter_mut().enumerate() {
            *x = x.wrapping_mul(6364136223846793005).wrapping_add(i as u64);
        }
        rounds += 1;
    }
    println!("spun {rounds} rounds");
}

fn main() {
    ckpt_suite::checkpointing_from_env();
    let args: Vec<String> = std::env::args().collect();
    let arg = |i: usize| args.get(i).map(String::as_str).unwrap_or("");
    match arg(1) {
        "refuse" => refuse(),
        "files" => files(arg(2), arg(3).parse().unwrap_or(100)),
        "exclude" => exclude(arg(2)),
        "hold" => std::thread::sleep(Duration::from_secs_f64(arg(2).parse().unwrap_or(2.0))),
        "spin" => spin(arg(2).parse().unwrap_or(1.0)),
        other => {
            eprintln!(
                "usage: probe refuse|files PATH N|exclude MARKER|hold SECS|spin SECS (got {other:?})"
            );
            exit(2);
        }
    }
}
