//! `ckpt inspect`: everything one image records, decoded (header, identity, process record,
//! regions, page runs, chain, open files, signal dispositions).
//!
//! Addresses are shown (and written in JSON) as `0x` hex strings: some, such as
//! `[vsyscall]`'s, do not fit the 53 bits a JSON reader's floating-point numbers hold.

use std::process::ExitCode;

use ckpt::image::{self, Manifest};
use serde::Serialize;

use crate::Result;
use crate::images::{self, FileState};
use crate::spec::ImageTarget;
use crate::text;

/// The JSON of `ckpt inspect --json`.
#[derive(Debug, Serialize)]
pub struct Inspection {
    /// The image file.
    pub file: String,
    /// Its state in the store (from the file name), if it is a store file.
    pub state: Option<FileState>,
    /// The header.
    pub header: HeaderOut,
    /// The process record.
    pub process: ProcessOut,
    /// The executable and every mapped file.
    pub identity: Vec<IdentityOut>,
    /// What changed on disk since the checkpoint (a restore would refuse).
    pub changed_on_disk: Vec<String>,
    /// The memory map.
    pub regions: Vec<RegionOut>,
    /// Page runs.
    pub runs: RunsOut,
    /// This image and those it builds on, newest first.
    pub chain: Vec<LinkOut>,
    /// Open descriptors other than 0-2.
    pub files: Vec<FileOut>,
    /// Signal dispositions.
    pub signals: SignalsOut,
}

/// Header fields.
#[derive(Debug, Serialize)]
pub struct HeaderOut {
    /// Format version.
    pub version: u32,
    /// Generation.
    pub generation: u64,
    /// Parent generation, 0 for a full image.
    pub parent: u64,
    /// `full` or `incremental`.
    pub kind: &'static str,
    /// Wall-clock time of the checkpoint, ns since the epoch.
    pub created_ns: u64,
    /// The same, RFC 3339 UTC.
    pub created: String,
    /// Offset of the page data.
    pub data_offset: u64,
    /// Bytes of page data.
    pub data_len: u64,
    /// Offset of the manifest.
    pub manifest_offset: u64,
    /// Bytes of manifest.
    pub manifest_len: u64,
    /// File length.
    pub total_len: u64,
    /// CRC-32C of the manifest.
    pub manifest_crc: String,
    /// CRC-32C of the header.
    pub header_crc: String,
}

/// The process record.
#[derive(Debug, Serialize)]
pub struct ProcessOut {
    /// Process id at the checkpoint.
    pub pid: u32,
    /// Executable path.
    pub exe: String,
    /// Working directory.
    pub cwd: String,
    /// Policy that wrote the image.
    pub policy: String,
    /// Dirty tracker in use.
    pub tracker: String,
    /// Start of the program break area.
    pub brk_start: String,
    /// The program break.
    pub brk: String,
    /// `brk - brk_start`.
    pub heap_bytes: u64,
    /// Saved instruction pointer (in the trampoline).
    pub rip: String,
    /// Saved stack pointer.
    pub rsp: String,
    /// Thread pointer.
    pub fs_base: String,
    /// MXCSR.
    pub mxcsr: String,
    /// x87 control word.
    pub fpucw: String,
    /// Signal mask.
    pub sigmask: String,
    /// Alternate signal stack address (0: none).
    pub altstack_sp: String,
    /// Its size.
    pub altstack_size: u64,
    /// File creation mask.
    pub umask: String,
    /// Offset of the tid in glibc's thread descriptor, -1 if unknown.
    pub tid_offset: i32,
    /// rseq area, 0 if none.
    pub rseq_area: String,
    /// `[vdso]`.
    pub vdso: String,
    /// `[vvar]`.
    pub vvar: String,
    /// Bytes of page data the writer counted.
    pub saved_bytes: u64,
}

/// One identity record.
#[derive(Debug, Serialize)]
pub struct IdentityOut {
    /// Path.
    pub path: String,
    /// The executable (else a library or mapped file).
    pub executable: bool,
    /// Device.
    pub dev: u64,
    /// Inode.
    pub ino: u64,
    /// Size.
    pub size: u64,
    /// Modification time, seconds.
    pub mtime_sec: i64,
    /// Nanoseconds.
    pub mtime_nsec: i64,
}

/// One region.
#[derive(Debug, Serialize)]
pub struct RegionOut {
    /// First address.
    pub start: String,
    /// One past the last.
    pub end: String,
    /// Bytes.
    pub size: u64,
    /// `rw-p`.
    pub prot: String,
    /// Decoded `REGION_*` flags.
    pub flags: Vec<String>,
    /// Path or pseudo-path.
    pub path: String,
    /// File offset (file mappings).
    pub offset: u64,
    /// Bytes stored in data runs.
    pub saved_bytes: u64,
    /// Bytes recorded as zero runs.
    pub zero_bytes: u64,
}

/// Page runs.
#[derive(Debug, Serialize)]
pub struct RunsOut {
    /// Data runs.
    pub data: usize,
    /// Zero runs.
    pub zero: usize,
    /// Bytes of data runs.
    pub data_bytes: u64,
    /// Bytes of zero runs.
    pub zero_bytes: u64,
    /// Every run (with `--runs`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub list: Option<Vec<RunOut>>,
}

/// One run.
#[derive(Debug, Serialize)]
pub struct RunOut {
    /// Index in the manifest.
    pub index: usize,
    /// `data` or `zero`.
    pub kind: &'static str,
    /// Address.
    pub addr: String,
    /// Bytes.
    pub len: u64,
    /// Offset in the file (data runs).
    pub data_off: u64,
    /// CRC-32C (data runs).
    pub crc: String,
}

/// One image of the chain.
#[derive(Debug, Serialize)]
pub struct LinkOut {
    /// Generation.
    pub generation: u64,
    /// `full`, `incremental`, or `null` when the image cannot be read.
    pub kind: Option<&'static str>,
    /// Its parent.
    pub parent: Option<u64>,
    /// Bytes of page data.
    pub data_bytes: Option<u64>,
    /// RFC 3339 UTC.
    pub created: Option<String>,
    /// Why the link is broken (missing, unreadable), if it is.
    pub problem: Option<String>,
}

/// One open file.
#[derive(Debug, Serialize)]
pub struct FileOut {
    /// Descriptor.
    pub fd: i32,
    /// Path.
    pub path: String,
    /// Decoded `open` flags.
    pub flags: String,
    /// Offset.
    pub offset: u64,
    /// Size at the checkpoint.
    pub size: u64,
    /// `regular`, `chardev`, `directory`.
    pub kind: String,
}

/// Signal dispositions.
#[derive(Debug, Serialize)]
pub struct SignalsOut {
    /// Records.
    pub recorded: usize,
    /// With a handler installed.
    pub handled: usize,
    /// Ignored.
    pub ignored: usize,
    /// Signal numbers with a handler.
    pub handled_signals: Vec<u32>,
    /// Signal numbers ignored.
    pub ignored_signals: Vec<u32>,
}

fn hex(v: u64) -> String {
    format!("{v:#x}")
}

/// Runs `ckpt inspect`.
pub fn inspect(t: &ImageTarget, list_runs: bool, json: bool) -> Result<ExitCode> {
    write(&mut std::io::stdout().lock(), t, list_runs, json)?;
    Ok(ExitCode::SUCCESS)
}

/// Decodes the image `t` names and writes it as text or JSON.
pub fn write(
    w: &mut dyn std::io::Write,
    t: &ImageTarget,
    list_runs: bool,
    json: bool,
) -> Result<()> {
    let (path, state) = images::resolve(t)?;
    let img = images::open(&path)?;
    let out = build(&img, state, &t.dir, list_runs);
    if json {
        serde_json::to_writer_pretty(&mut *w, &out)?;
        let _ = writeln!(w);
    } else {
        print_text(w, &out);
    }
    Ok(())
}

/// Decodes `img` (in store `dir`, for its chain).
pub fn build(
    img: &images::Image,
    state: Option<FileState>,
    dir: &std::path::Path,
    list_runs: bool,
) -> Inspection {
    let m = &img.manifest;
    let h = m.header;
    let p = &m.process;
    let header = HeaderOut {
        version: h.version,
        generation: h.generation,
        parent: h.parent,
        kind: if h.parent == 0 { "full" } else { "incremental" },
        created_ns: h.created_ns,
        created: text::rfc3339(h.created_ns),
        data_offset: h.data_offset,
        data_len: h.data_len,
        manifest_offset: h.manifest_offset,
        manifest_len: h.manifest_len,
        total_len: h.total_len,
        manifest_crc: format!("{:08x}", h.manifest_crc),
        header_crc: format!("{:08x}", h.header_crc),
    };
    let process = ProcessOut {
        pid: p.pid,
        exe: m.text(p.exe),
        cwd: m.text(p.cwd),
        policy: text::policy(p.policy),
        tracker: text::tracker(p.tracker),
        brk_start: hex(p.brk_start),
        brk: hex(p.brk),
        heap_bytes: p.brk.saturating_sub(p.brk_start),
        rip: hex(p.ctx.rip),
        rsp: hex(p.ctx.rsp),
        fs_base: hex(p.fs_base),
        mxcsr: format!("{:#06x}", p.ctx.mxcsr),
        fpucw: format!("{:#06x}", p.ctx.fpucw & 0xffff),
        sigmask: format!("{:#018x}", p.sigmask),
        altstack_sp: hex(p.altstack_sp),
        altstack_size: p.altstack_size,
        umask: format!("{:04o}", p.umask),
        tid_offset: p.tid_offset,
        rseq_area: hex(p.rseq_area),
        vdso: hex(p.vdso),
        vvar: hex(p.vvar),
        saved_bytes: p.saved_bytes,
    };
    let identity = m
        .identity
        .iter()
        .map(|i| IdentityOut {
            path: m.text(i.path),
            executable: i.is_exe != 0,
            dev: i.dev,
            ino: i.ino,
            size: i.size,
            mtime_sec: i.mtime_sec,
            mtime_nsec: i.mtime_nsec,
        })
        .collect();
    let regions = m
        .regions
        .iter()
        .map(|r| {
            let within = |kind| -> u64 {
                m.runs
                    .iter()
                    .filter(|x| x.kind == kind && x.addr >= r.start && x.addr + x.len <= r.end)
                    .map(|x| x.len)
                    .sum()
            };
            RegionOut {
                start: hex(r.start),
                end: hex(r.end),
                size: r.end - r.start,
                prot: text::prot(r.prot, r.flags),
                flags: text::region_flags(r.flags),
                path: m.text(r.path),
                offset: r.offset,
                saved_bytes: within(image::RUN_DATA),
                zero_bytes: within(image::RUN_ZERO),
            }
        })
        .collect();
    let sum = |kind| {
        m.runs
            .iter()
            .filter(|r| r.kind == kind)
            .fold((0usize, 0u64), |(n, b), r| (n + 1, b + r.len))
    };
    let (data, data_bytes) = sum(image::RUN_DATA);
    let (zero, zero_bytes) = sum(image::RUN_ZERO);
    let runs = RunsOut {
        data,
        zero,
        data_bytes,
        zero_bytes,
        list: list_runs.then(|| {
            m.runs
                .iter()
                .enumerate()
                .map(|(index, r)| RunOut {
                    index,
                    kind: if r.kind == image::RUN_ZERO {
                        "zero"
                    } else {
                        "data"
                    },
                    addr: hex(r.addr),
                    len: r.len,
                    data_off: r.data_off,
                    crc: format!("{:08x}", r.crc),
                })
                .collect()
        }),
    };
    let files = m
        .files
        .iter()
        .map(|f| FileOut {
            fd: f.fd,
            path: m.text(f.path),
            flags: text::open_flags(f.flags),
            offset: f.offset,
            size: f.size,
            kind: text::file_kind(f.kind),
        })
        .collect();
    Inspection {
        file: img.path.display().to_string(),
        state,
        header,
        process,
        identity,
        changed_on_disk: images::changed_on_disk(m),
        regions,
        runs,
        chain: chain(img, dir),
        files,
        signals: signals(m),
    }
}

fn signals(m: &Manifest) -> SignalsOut {
    // SIG_DFL is 0 and SIG_IGN 1 in the kernel's sigaction.
    let handled: Vec<u32> = m
        .signals
        .iter()
        .filter(|s| s.handler > 1)
        .map(|s| s.sig)
        .collect();
    let ignored: Vec<u32> = m
        .signals
        .iter()
        .filter(|s| s.handler == 1)
        .map(|s| s.sig)
        .collect();
    SignalsOut {
        recorded: m.signals.len(),
        handled: handled.len(),
        ignored: ignored.len(),
        handled_signals: handled,
        ignored_signals: ignored,
    }
}

/// This image, then every committed image it builds on (headers only; `ckpt verify` reads the
/// data).
fn chain(img: &images::Image, dir: &std::path::Path) -> Vec<LinkOut> {
    let link = |h: &image::Header| LinkOut {
        generation: h.generation,
        kind: Some(if h.parent == 0 { "full" } else { "incremental" }),
        parent: (h.parent != 0).then_some(h.parent),
        data_bytes: Some(h.data_len),
        created: Some(text::rfc3339(h.created_ns)),
        problem: None,
    };
    let mut out = vec![link(img.header())];
    let mut child = *img.header();
    while child.parent != 0 {
        let g = child.parent;
        let broken = |problem: String| LinkOut {
            generation: g,
            kind: None,
            parent: None,
            data_bytes: None,
            created: None,
            problem: Some(problem),
        };
        if g >= child.generation {
            out.push(broken(format!(
                "not older than generation {}",
                child.generation
            )));
            break;
        }
        let path = images::committed_path(dir, g);
        if !path.exists() {
            out.push(broken(format!("missing: no {}", path.display())));
            break;
        }
        match images::read_header(&path) {
            Ok((_, _, h)) if h.generation == g => {
                out.push(link(&h));
                child = h;
            }
            Ok((_, _, h)) => {
                out.push(broken(format!(
                    "{} holds generation {}",
                    path.display(),
                    h.generation
                )));
                break;
            }
            Err(e) => {
                out.push(broken(e.to_string()));
                break;
            }
        }
    }
    out
}

fn print_text(w: &mut dyn std::io::Write, o: &Inspection) {
    let h = &o.header;
    let p = &o.process;
    let state = o
        .state
        .map(|s| format!(" ({})", s.name()))
        .unwrap_or_default();
    let _ = writeln!(w, "image       {}{state}", o.file);
    let _ = writeln!(
        w,
        "generation  {} {}{}, taken {} UTC ({})",
        h.generation,
        h.kind,
        if h.parent != 0 {
            format!(" on generation {}", h.parent)
        } else {
            String::new()
        },
        text::time(h.created_ns),
        text::age(h.created_ns)
    );
    let _ = writeln!(
        w,
        "file        {} ({} bytes), format v{}: page data {} at {:#x}, manifest {} at {:#x}; CRC-32C header {}, manifest {}",
        text::bytes(h.total_len),
        h.total_len,
        h.version,
        text::bytes(h.data_len),
        h.data_offset,
        text::bytes(h.manifest_len),
        h.manifest_offset,
        h.header_crc,
        h.manifest_crc
    );
    let _ = writeln!(w, "program     {} (pid {}), cwd {}", p.exe, p.pid, p.cwd);
    let _ = writeln!(w, "policy      {}, tracker {}", p.policy, p.tracker);
    let _ = writeln!(
        w,
        "heap        brk {}..{} ({})",
        p.brk_start,
        p.brk,
        text::bytes(p.heap_bytes)
    );
    let _ = writeln!(
        w,
        "registers   rip {} rsp {} fs {} mxcsr {} fpucw {}",
        p.rip, p.rsp, p.fs_base, p.mxcsr, p.fpucw
    );
    let _ = writeln!(
        w,
        "process     sigmask {} umask {} altstack {} ({}) tid offset {} rseq {} vdso {} vvar {}",
        p.sigmask,
        p.umask,
        p.altstack_sp,
        text::bytes(p.altstack_size),
        p.tid_offset,
        p.rseq_area,
        p.vdso,
        p.vvar
    );

    let _ = writeln!(w, "\nidentity ({} files):", o.identity.len());
    for i in &o.identity {
        let _ = writeln!(
            w,
            "  {:<4} {}  ({} bytes, inode {}, mtime {})",
            if i.executable { "exe" } else { "file" },
            i.path,
            i.size,
            i.ino,
            i.mtime_sec
        );
    }
    for c in &o.changed_on_disk {
        let _ = writeln!(w, "  CHANGED: {c} (a restore would refuse)");
    }

    let saved = o.regions.iter().filter(|r| r.saved_bytes > 0).count();
    let _ = writeln!(
        w,
        "\nregions ({}, {} with saved pages):",
        o.regions.len(),
        saved
    );
    let _ = writeln!(
        w,
        "  {:<33} {:>10} {:<4} {:>10} {:>10}  {:<24} PATH",
        "ADDRESS", "SIZE", "PROT", "SAVED", "ZERO", "FLAGS"
    );
    for r in &o.regions {
        let _ = writeln!(
            w,
            "  {:>16}-{:<16} {:>10} {:<4} {:>10} {:>10}  {:<24} {}",
            r.start,
            r.end,
            text::bytes(r.size),
            r.prot,
            if r.saved_bytes > 0 {
                text::bytes(r.saved_bytes)
            } else {
                "-".into()
            },
            if r.zero_bytes > 0 {
                text::bytes(r.zero_bytes)
            } else {
                "-".into()
            },
            r.flags.join(","),
            r.path
        );
    }
    let _ = writeln!(
        w,
        "\nruns: {} data runs ({}), {} zero runs ({})",
        o.runs.data,
        text::bytes(o.runs.data_bytes),
        o.runs.zero,
        text::bytes(o.runs.zero_bytes)
    );
    if let Some(list) = &o.runs.list {
        for r in list {
            let _ = writeln!(
                w,
                "  {:>6} {:<4} {:>18} {:>10} at file offset {:#x}, crc {}",
                r.index,
                r.kind,
                r.addr,
                text::bytes(r.len),
                r.data_off,
                r.crc
            );
        }
    }

    let _ = writeln!(w, "\nchain ({} images):", o.chain.len());
    for (i, l) in o.chain.iter().enumerate() {
        let what = match (&l.problem, l.kind, l.parent) {
            (Some(p), _, _) => format!("BROKEN: {p}"),
            (None, Some(_), Some(p)) => format!(
                "incremental on {p}, {} of page data",
                text::bytes(l.data_bytes.unwrap_or(0))
            ),
            (None, Some(k), None) => format!(
                "{k}, {} of page data",
                text::bytes(l.data_bytes.unwrap_or(0))
            ),
            (None, None, _) => "?".into(),
        };
        let _ = writeln!(
            w,
            "  {:>6}  {what}{}",
            l.generation,
            if i == 0 { "  (this image)" } else { "" }
        );
    }

    let _ = writeln!(w, "\nopen files ({}):", o.files.len());
    for f in &o.files {
        let _ = writeln!(
            w,
            "  fd {:<3} {:<9} {:<22} offset {} of {}  {}",
            f.fd, f.kind, f.flags, f.offset, f.size, f.path
        );
    }
    let s = &o.signals;
    let _ = writeln!(
        w,
        "\nsignals: {} dispositions recorded; {} with a handler {:?}, {} ignored {:?}",
        s.recorded, s.handled, s.handled_signals, s.ignored, s.ignored_signals
    );
}
