//! Test probe for the process-level tests: small scenarios that exercise one restore hazard each.
//!
//! `probe refuse` — every unrestorable resource is refused by name and the program keeps going.
//! `probe files PATH N` — writes N numbered lines to PATH, checkpointing every 10 lines.
//! `probe exclude MARKER` — an excluded page reads as zeros after a restore.
//! `probe hold SECS` — holds the store for SECS seconds.
//! `probe spin SECS` — a busy loop with a digest, for timer-driven checkpoints.
//! `probe early-files PATH N` — like `files`, with the file opened before checkpointing starts.
//! `probe dlopen MARKER` — a library loaded with dlopen still works after a restore.
//! `probe altstack MARKER` — a checkpoint taken inside a handler on the alternate signal stack.
//! `probe panic` — a checkpoint, then a panic: the checkpoints must stay.
//! `probe rseq MARKER` — glibc's rseq area is registered again after a restore.
//! `probe protnone MARKER` — data in memory mapped PROT_NONE survives a restore.
//! `probe kernel-read MARKER` — between two checkpoints `read(2)` fills tracked memory (pages
//! written before, pages never touched, and a heap buffer; through libc's `read` and through
//! std's `File::read`): the kernel, not the program, writes them, and the restored process must
//! see the data.
//! `probe untouched` — a 64 MiB mapping of which only a few MiB are ever written, checkpointed
//! three times (written parts grow in between); for each committed image it prints the page
//! data saved from the mapping, what was written, and the mapping's resident size, so a test can
//! check that no policy or tracker saves (or makes resident) pages never written.
//! `probe exit-while-writing MIB MARKER` — MIB MiB of written memory, one checkpoint, then a
//! normal exit as soon as MARKER exists: under a background policy a test creates it while the
//! writer is still writing (the exit kills the writer), and the finished program must leave
//! nothing in its store.
//!
//! The scenarios with a MARKER checkpoint, then kill themselves; run again after the marker
//! file was created, they are the restored process and report what they find.
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
    files_to(
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .expect("open output"),
        n,
    )
}

fn files_to(mut f: std::fs::File, n: usize) {
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
    crash_unless_restored(marker);
    let sums: Vec<u64> = pages
        .chunks(4096)
        .map(|c| c.iter().map(|&b| b as u64).sum())
        .collect();
    println!("page sums {sums:?}");
}

/// After `checkpoint_now`: in the first run (no marker yet) die as a crash would; in the
/// restored run return so the scenario can report.
fn crash_unless_restored(marker: &str) {
    if !std::path::Path::new(marker).exists() {
        println!("checkpointed");
        std::io::stdout().flush().ok();
        // SAFETY: ends the process as a crash would, leaving the checkpoint behind.
        unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
    }
}

fn dlopen(marker: &str) {
    // zlib is not linked into this program: it is mapped (text, data, relocated RELRO) only now.
    // SAFETY: dlopen/dlsym with NUL-terminated names; crc32 has the C signature declared here.
    let crc32: extern "C" fn(u64, *const u8, u32) -> u64 = unsafe {
        let h = libc::dlopen(c"libz.so.1".as_ptr(), libc::RTLD_NOW);
        if h.is_null() {
            println!("skipped dlopen: libz.so.1 is not installed");
            return;
        }
        let f = libc::dlsym(h, c"crc32".as_ptr());
        assert!(!f.is_null());
        core::mem::transmute::<*mut libc::c_void, extern "C" fn(u64, *const u8, u32) -> u64>(f)
    };
    let data = b"checkpoint";
    let before = crc32(0, data.as_ptr(), data.len() as u32);
    ckpt::checkpoint_now().expect("checkpoint");
    crash_unless_restored(marker);
    let after = crc32(0, data.as_ptr(), data.len() as u32);
    println!("zlib crc32 before {before:08x} after {after:08x}");
}

static ALT_RESULT: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(-1);

extern "C" fn checkpoint_in_handler(_: i32) {
    let ok = ckpt::checkpoint_now().is_ok();
    ALT_RESULT.store(ok as i32, std::sync::atomic::Ordering::SeqCst);
}

fn altstack(marker: &str) {
    let stack = vec![0u8; 256 << 10].leak();
    let ss = libc::stack_t {
        ss_sp: stack.as_mut_ptr() as *mut libc::c_void,
        ss_flags: 0,
        ss_size: stack.len(),
    };
    // SAFETY: the alternate stack is leaked memory that lives for the whole process; the handler
    // is an extern "C" function installed with SA_ONSTACK.
    unsafe {
        assert_eq!(libc::sigaltstack(&ss, core::ptr::null_mut()), 0);
        let mut act: libc::sigaction = core::mem::zeroed();
        act.sa_sigaction = checkpoint_in_handler as *const () as usize;
        act.sa_flags = libc::SA_ONSTACK;
        assert_eq!(
            libc::sigaction(libc::SIGUSR1, &act, core::ptr::null_mut()),
            0
        );
        libc::raise(libc::SIGUSR1);
    }
    assert_eq!(
        ALT_RESULT.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "checkpoint in the handler failed"
    );
    crash_unless_restored(marker);
    println!("restored from a checkpoint taken on the alternate stack");
}

fn rseq(marker: &str) {
    ckpt::checkpoint_now().expect("checkpoint");
    crash_unless_restored(marker);
    // Registering glibc's area again must fail with EBUSY if it is still (again) registered.
    // SAFETY: dlsym lookups of glibc's exported rseq variables; the rseq call with a pointer into
    // this thread's descriptor only asks the kernel to compare it with the registration.
    unsafe {
        let off = libc::dlsym(libc::RTLD_DEFAULT, c"__rseq_offset".as_ptr()) as *const isize;
        let size = libc::dlsym(libc::RTLD_DEFAULT, c"__rseq_size".as_ptr()) as *const u32;
        if off.is_null() || size.is_null() || *size == 0 {
            println!("skipped rseq: glibc does not register it here");
            return;
        }
        let area = (libc::pthread_self() as usize).wrapping_add_signed(*off);
        let r = libc::syscall(libc::SYS_rseq, area, (*size).max(32), 0, 0x5305_3053u32);
        let errno = *libc::__errno_location();
        let state = if r == -1 && errno == libc::EBUSY {
            "registered"
        } else {
            "NOT registered"
        };
        println!("rseq registration check: ret {r} errno {errno} ({state})");
    }
}

fn protnone(marker: &str) {
    // SAFETY: a fresh private anonymous page, owned here.
    let p = unsafe {
        let p = libc::mmap(
            core::ptr::null_mut(),
            4096,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        );
        assert_ne!(p, libc::MAP_FAILED);
        *(p as *mut u64) = 42;
        assert_eq!(libc::mprotect(p, 4096, libc::PROT_NONE), 0);
        p
    };
    ckpt::checkpoint_now().expect("checkpoint");
    crash_unless_restored(marker);
    // SAFETY: the page is ours; made readable again to look at it.
    let v = unsafe {
        assert_eq!(libc::mprotect(p, 4096, libc::PROT_READ), 0);
        *(p as *const u64)
    };
    println!("value in PROT_NONE page: {v}");
}

/// The byte at offset `i` of the file `kernel-read` reads: differs from page to page and from
/// anything the buffers held before.
fn kernel_read_byte(i: usize) -> u8 {
    (i as u8).wrapping_mul(31) ^ ((i / 4096) as u8).wrapping_add(0x5a)
}

/// Reads the whole of `path` into `buf` with plain `read(2)` calls, as an unmodified program
/// would: the C library's `read`, or std's `File::read` (which calls it) when `std_io`. The
/// errno of a failed call (EFAULT if the kernel could not write the buffer).
fn read_into(path: &str, buf: &mut [u8], std_io: bool) -> Result<(), i32> {
    use std::io::Read;
    use std::os::fd::AsRawFd;
    let mut f = std::fs::File::open(path).map_err(|e| e.raw_os_error().unwrap_or(0))?;
    let mut done = 0;
    while done < buf.len() {
        let n = if std_io {
            f.read(&mut buf[done..])
                .map_err(|e| e.raw_os_error().unwrap_or(0))?
        } else {
            // SAFETY: the destination is the unread tail of `buf`, valid for writes of its
            // length.
            let n = unsafe {
                libc::read(
                    f.as_raw_fd(),
                    buf[done..].as_mut_ptr().cast(),
                    buf.len() - done,
                )
            };
            if n < 0 {
                // SAFETY: reading this thread's errno right after the failed call.
                return Err(unsafe { *libc::__errno_location() });
            }
            n as usize
        };
        if n == 0 {
            return Err(0);
        }
        done += n;
    }
    Ok(())
}

fn kernel_read(marker: &str) {
    const PAGES: usize = 16;
    let len = PAGES * 4096;
    let data = format!("{marker}.data");
    // SAFETY: a fresh private anonymous mapping, owned by this function for the process's life.
    let p = unsafe {
        libc::mmap(
            core::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    assert_ne!(p, libc::MAP_FAILED);
    // SAFETY: the mapping is `len` bytes, read-write, and only reached through this slice.
    let mapped = unsafe { core::slice::from_raw_parts_mut(p.cast::<u8>(), len) };
    // The first half is written (populated) before the checkpoint, the second never touched.
    mapped[..len / 2].fill(0x11);
    let mut heap = vec![0x22u8; len];
    ckpt::checkpoint_now().expect("first checkpoint");
    if !std::path::Path::new(marker).exists() {
        let bytes: Vec<u8> = (0..len).map(kernel_read_byte).collect();
        std::fs::write(&data, bytes).expect("write the data file");
        for (what, buf, std_io) in [
            ("mapped", &mut mapped[..], false),
            ("heap", &mut heap[..], true),
        ] {
            if let Err(errno) = read_into(&data, buf, std_io) {
                println!("read(2) into the {what} buffer failed: errno {errno}");
                exit(1);
            }
        }
        println!("read(2) filled both buffers");
    }
    ckpt::checkpoint_now().expect("second checkpoint");
    crash_unless_restored(marker);
    for (what, buf) in [("mapped", &mapped[..]), ("heap", &heap[..])] {
        let bad: Vec<usize> = (0..PAGES)
            .filter(|&pg| (pg * 4096..(pg + 1) * 4096).any(|i| buf[i] != kernel_read_byte(i)))
            .collect();
        if bad.is_empty() {
            println!("{what} buffer holds the data read");
        } else {
            println!("{what} buffer differs from the data read in pages {bad:?}");
        }
    }
}

fn exit_while_writing(mib: usize, marker: &str) {
    let mut v = vec![0u64; mib << 17];
    for (i, x) in v.iter_mut().enumerate() {
        *x = (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
    ckpt::checkpoint_now().expect("checkpoint");
    println!("checkpoint taken over {mib} MiB");
    while !std::path::Path::new(marker).exists() {
        std::thread::sleep(Duration::from_millis(5));
    }
    std::hint::black_box(&v);
    println!("exiting");
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

/// The newest committed generation in the store directory `dir`, if any.
fn newest_image(dir: &std::path::Path) -> Option<(u64, std::path::PathBuf)> {
    std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let g = name
                .strip_prefix("gen-")?
                .strip_suffix(".ckpt")?
                .parse()
                .ok()?;
            Some((g, e.path()))
        })
        .max_by_key(|(g, _)| *g)
}

/// Bytes of page data (data runs) that the image at `path` holds from `[start, end)`, the
/// image's total page data, and whether it is a full image.
fn image_data_in(path: &std::path::Path, start: u64, end: u64) -> (u64, u64, bool) {
    use ckpt::image;
    let bytes = std::fs::read(path).expect("read image");
    let h = image::check_header(&bytes, bytes.len() as u64).expect("image header");
    let m = image::parse_manifest(h, &bytes[h.manifest_offset as usize..]).expect("manifest");
    let inside = (m.runs.iter())
        .filter(|r| r.kind == image::RUN_DATA)
        .map(|r| (r.addr + r.len).min(end).saturating_sub(r.addr.max(start)))
        .sum();
    (inside, h.data_len, h.parent == 0)
}

/// Resident bytes (`Rss` in `/proc/self/smaps`) of the mappings inside `[start, end)`.
fn resident_in(start: u64, end: u64) -> u64 {
    let smaps = std::fs::read_to_string("/proc/self/smaps").expect("read smaps");
    let mut inside = false;
    let mut kib = 0;
    for line in smaps.lines() {
        if let Some((range, _)) = line.split_once(' ')
            && let Some((a, b)) = range.split_once('-')
            && let (Ok(a), Ok(b)) = (u64::from_str_radix(a, 16), u64::from_str_radix(b, 16))
        {
            inside = start <= a && b <= end;
        } else if inside && let Some(v) = line.strip_prefix("Rss:") {
            kib += v
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .unwrap_or(0);
        }
    }
    kib * 1024
}

/// Byte `j` of page `i` of the `guard` probe's mapping, in round `r`.
fn guard_byte(i: usize, j: usize, r: usize) -> u8 {
    ((i * 7 + j + r * 13) % 251) as u8 + 1
}

/// A mapping with guard pages inside it (`MADV_GUARD_INSTALL`, Linux 6.13+), whose entries
/// `PAGEMAP_SCAN` reports like written pages: two checkpoints (a full image, then an incremental
/// one under the incremental policies), a crash, and the data around the guards checked after
/// the restore.
fn guard(marker: &str) {
    const PAGE: usize = 4096;
    const PAGES: usize = 16;
    const MADV_GUARD_INSTALL: i32 = 102;
    let store = std::path::PathBuf::from(std::env::var_os("CKPT_DIR").expect("CKPT_DIR"));
    // SAFETY: a fresh private anonymous mapping, owned here for the process's life.
    let p = unsafe {
        libc::mmap(
            core::ptr::null_mut(),
            PAGES * PAGE,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    } as usize;
    assert_ne!(p as *mut libc::c_void, libc::MAP_FAILED);
    let fill = |pages: std::ops::Range<usize>, r: usize| {
        for i in pages {
            for j in 0..PAGE {
                // SAFETY: inside the mapping, outside its guard pages.
                unsafe { *((p + i * PAGE + j) as *mut u8) = guard_byte(i, j, r) };
            }
        }
    };
    fill(0..8, 0);
    fill(12..16, 0);
    // SAFETY: madvise on pages of the mapping just made.
    if unsafe { libc::madvise((p + 8 * PAGE) as *mut _, 4 * PAGE, MADV_GUARD_INSTALL) } != 0 {
        println!(
            "skipped guard: MADV_GUARD_INSTALL refused ({}; Linux 6.13+)",
            std::io::Error::last_os_error()
        );
        return;
    }
    let mut last = 0;
    for round in 0..2 {
        if round == 1 {
            fill(0..4, 1);
        }
        ckpt::checkpoint_now().expect("checkpoint");
        // The background policies commit in their writer process: wait for the file.
        last = loop {
            match newest_image(&store) {
                Some((g, _)) if g > last => break g,
                _ => std::thread::sleep(Duration::from_millis(10)),
            }
        };
    }
    crash_unless_restored(marker);
    let bad = (0..PAGES)
        .filter(|i| !(8..12).contains(i))
        .flat_map(|i| (0..PAGE).map(move |j| (i, j)))
        .filter(|&(i, j)| {
            let r = usize::from(i < 4);
            // SAFETY: inside the mapping, outside its guard pages.
            unsafe { *((p + i * PAGE + j) as *const u8) != guard_byte(i, j, r) }
        })
        .count();
    println!("guard: {bad} wrong bytes around the guard pages");
}

fn untouched() {
    const LEN: usize = 64 << 20;
    const MIB: usize = 1 << 20;
    let store = std::path::PathBuf::from(std::env::var_os("CKPT_DIR").expect("CKPT_DIR"));
    // Guard pages on both sides keep the mapping from merging with its neighbours, so its
    // resident size is its own.
    // SAFETY: a fresh private anonymous mapping, owned by this function for the process's life.
    let p = unsafe {
        libc::mmap(
            core::ptr::null_mut(),
            LEN + 2 * 4096,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    assert_ne!(p, libc::MAP_FAILED);
    let base = p as usize + 4096;
    // SAFETY: the guard pages and the buffer lie inside the mapping just created; the madvise
    // keeps transparent huge pages from making more than the written pages resident.
    unsafe {
        assert_eq!(libc::mprotect(p, 4096, libc::PROT_NONE), 0);
        assert_eq!(
            libc::mprotect((base + LEN) as *mut _, 4096, libc::PROT_NONE),
            0
        );
        libc::madvise(base as *mut _, LEN, libc::MADV_NOHUGEPAGE);
    }
    // SAFETY: the buffer is LEN read-write bytes reached only through this slice.
    let buf = unsafe { core::slice::from_raw_parts_mut(base as *mut u8, LEN) };
    // A read maps the shared zero page: not a write.
    // SAFETY: a read of a byte of the buffer.
    let _ = unsafe { core::ptr::read_volatile(&buf[40 * MIB]) };
    let (start, end) = (base as u64, (base + LEN) as u64);
    let mut written = 0;
    let mut last = 0;
    // Each step writes some pages the previous images did not hold, then checkpoints.
    for (step, (at, len)) in [(0, MIB), (8 * MIB, MIB + 4096), (20 * MIB, 3 * 4096)]
        .into_iter()
        .enumerate()
    {
        buf[at..at + len]
            .iter_mut()
            .enumerate()
            .for_each(|(i, b)| *b = (i % 251) as u8 + 1);
        written += len;
        ckpt::checkpoint_now().expect("checkpoint");
        // The background policies commit in their writer process: wait for the file.
        let (generation, path) = loop {
            match newest_image(&store) {
                Some((g, path)) if g > last => break (g, path),
                _ => std::thread::sleep(Duration::from_millis(10)),
            }
        };
        last = generation;
        let (saved, data, full) = image_data_in(&path, start, end);
        println!(
            "untouched: step {step} generation {generation} {} image, written {written} \
             (since the previous image {len}), saved from the buffer {saved}, page data {data}, \
             buffer resident {}",
            if full { "full" } else { "incremental" },
            resident_in(start, end),
        );
    }
    println!("untouched: done");
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |i: usize| args.get(i).map(String::as_str).unwrap_or("");
    // Opened before checkpointing starts, so it takes a low descriptor number that a restoring
    // process uses for its own purposes.
    let early = (arg(1) == "early-files").then(|| {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(arg(2))
            .expect("open output")
    });
    ckpt_suite::checkpointing_from_env();
    match arg(1) {
        "early-files" => files_to(early.expect("opened above"), arg(3).parse().unwrap_or(100)),
        "dlopen" => dlopen(arg(2)),
        "altstack" => altstack(arg(2)),
        "rseq" => rseq(arg(2)),
        "protnone" => protnone(arg(2)),
        "kernel-read" => kernel_read(arg(2)),
        "untouched" => untouched(),
        "guard" => guard(arg(2)),
        "panic" => {
            ckpt::checkpoint_now().expect("checkpoint");
            panic!("deliberate panic after a checkpoint");
        }
        "refuse" => refuse(),
        "files" => files(arg(2), arg(3).parse().unwrap_or(100)),
        "exclude" => exclude(arg(2)),
        "hold" => std::thread::sleep(Duration::from_secs_f64(arg(2).parse().unwrap_or(2.0))),
        "spin" => spin(arg(2).parse().unwrap_or(1.0)),
        "exit-while-writing" => exit_while_writing(arg(2).parse().unwrap_or(64), arg(3)),
        other => {
            eprintln!(
                "usage: probe refuse|files PATH N|exclude MARKER|hold SECS|spin SECS|untouched|exit-while-writing MIB MARKER (got {other:?})"
            );
            exit(2);
        }
    }
}
