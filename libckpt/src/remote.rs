//! The remote-memory store (`rmem://`, `tiered:`): the `ckpt-rmem` helper program does the pool
//! work (sockets, allocation, encryption) in a process of its own, which a signal handler or a
//! forked child of a program interrupted inside `malloc` cannot do. See `docs/stores.md`.
//!
//! Two sides:
//! - ordinary code (`init`, `restore`, exit): [`Helper`] finds the helper, derives the pool's
//!   namespace and local directory, runs the helper's `status`, `fetch` and `clear` commands, and
//!   prepares the [`ExecSpec`] the checkpoint uses;
//! - the checkpoint (async-signal-safe): a [`Stream`] starts `ckpt-rmem put` with
//!   `clone(CLONE_VM | CLONE_VFORK)` + `execve` and sends it the image as records (offset,
//!   length, bytes) over a socket pair; the helper stores each at its offset in a new pool
//!   generation and commits it when told; its reply and exit status are the commit.
//!
//! # Safety
//!
//! An [`ExecSpec`] is built once, in ordinary code, and never changed or freed while the runtime
//! lives (a restored process finds it again in its restored heap): the raw pointers of its
//! `argv`/`envp` arrays point into strings it owns. A [`Stream`] only reads it.
#![allow(unsafe_code)]

use core::ffi::c_char;
use std::ffi::{CString, OsStr};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::config::{LogLevel, RemoteStore};
use crate::error::{Error, RawError, Result, raw_err};
use crate::sys::exec;
use crate::sys::syscall::{self, Errno};
use crate::text::{Bytes, FixedStr};

/// The records a checkpoint sends the helper (`docs/stores.md`, "The stream"). All integers
/// little-endian. A record is a 24-byte header `{ magic u32, kind u32, offset u64, len u64 }`
/// and `len` bytes.
pub(crate) mod proto {
    /// Every record header starts with this.
    pub(crate) const MAGIC: u32 = 0x3152_4b43; // "CKR1"
    /// First record: payload `{ generation u64, parent u64 }`.
    pub(crate) const BEGIN: u32 = 1;
    /// Image bytes to store at image offset `offset`.
    pub(crate) const DATA: u32 = 2;
    /// Last record: payload `{ image length u64, generations to keep u64 }`; commit.
    pub(crate) const COMMIT: u32 = 3;
    /// Bytes of a record header.
    pub(crate) const HEADER: usize = 24;
    /// The helper's answer to COMMIT (or to a failure): 256 bytes, `{ magic u32, status u32,
    /// location u32, degraded u32, message [u8; 240] }` (message NUL-padded UTF-8).
    pub(crate) const REPLY: usize = 256;
    /// Magic of a reply.
    pub(crate) const REPLY_MAGIC: u32 = 0x3150_4b43; // "CKP1"
    /// Reply status: committed.
    pub(crate) const COMMITTED: u32 = 0;
    /// Reply status: failed, the previous generation is intact.
    pub(crate) const FAILED: u32 = 1;
    /// Reply status: the generation number is already committed in the pool (left by a
    /// helper of an earlier run): the checkpoint must use a higher one.
    pub(crate) const TAKEN: u32 = 2;
    /// Reply location: remote memory.
    pub(crate) const IN_REMOTE: u32 = 0;
    /// Reply location: the local directory (remote memory short).
    pub(crate) const ON_DISK: u32 = 1;
}

/// Where a committed generation went, for the log.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Placement {
    /// A local directory store.
    #[default]
    LocalDir,
    /// Remote memory.
    Remote,
    /// Remote memory with some shard missing (the redundancy covers it).
    RemoteDegraded,
    /// The remote store's local directory: remote memory was short.
    Disk,
}

impl Placement {
    /// Words for the `committed` log line ("" for a local directory).
    pub fn note(self) -> &'static str {
        match self {
            Placement::LocalDir => "",
            Placement::Remote => "; in remote memory",
            Placement::RemoteDegraded => "; in remote memory, degraded (a server is missing)",
            Placement::Disk => "; on local disk (remote memory short)",
        }
    }
}

/// The prepared command line of `ckpt-rmem put`, for the checkpoint to start without
/// allocating. See the module's Safety section.
#[derive(Debug)]
pub(crate) struct ExecSpec {
    path: CString,
    _args: Vec<CString>,
    _env: Vec<CString>,
    /// NULL-terminated; `argv[ppid_slot]` is filled in at each start.
    argv: Vec<*const c_char>,
    ppid_slot: usize,
    envp: Vec<*const c_char>,
}

/// Most arguments of a put command.
const MAX_ARGS: usize = 48;

/// One image being sent to a `ckpt-rmem put` helper: started at the first byte sent.
/// Async-signal-safe; plain data so that it can be handed to a writer process.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Stream {
    spec: *const ExecSpec,
    generation: u64,
    parent: u64,
    /// Our end of the socket pair, or -1 before the start.
    pub sock: i32,
    /// The helper, or 0 before the start (or once reaped).
    pub pid: i32,
}

/// How a stream's commit went.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Reply {
    /// Where the generation is.
    pub placement: Placement,
}

impl Stream {
    /// A stream of generation `generation` (relative to `parent`) through `spec`.
    pub fn new(spec: &ExecSpec, generation: u64, parent: u64) -> Stream {
        Stream {
            spec,
            generation,
            parent,
            sock: -1,
            pid: 0,
        }
    }

    fn spec(&self) -> &ExecSpec {
        // SAFETY: the runtime's ExecSpec, alive and unchanged (module Safety section).
        unsafe { &*self.spec }
    }

    /// Starts the helper if it is not running yet, and sends it BEGIN.
    fn start(&mut self) -> Result<(), RawError> {
        if self.sock >= 0 {
            return Ok(());
        }
        crate::fault::point("rmem-start").map_err(|e| RawError::sys("start", b"ckpt-rmem", e))?;
        let (ours, theirs) =
            exec::socketpair().map_err(|e| RawError::sys("socketpair", b"for ckpt-rmem", e))?;
        let spec = self.spec();
        let mut argv = [core::ptr::null::<c_char>(); MAX_ARGS];
        let n = spec.argv.len().min(MAX_ARGS);
        argv[..n].copy_from_slice(&spec.argv[..n]);
        let mut ppid = FixedStr::<24>::new();
        let _ = core::fmt::write(&mut ppid, format_args!("{}", syscall::getpid()));
        let ppid_c = ppid.as_cstr().unwrap_or(b"0\0");
        argv[spec.ppid_slot] = ppid_c.as_ptr() as *const c_char;
        argv[MAX_ARGS - 1] = core::ptr::null();
        // SAFETY: path, argv and envp are NUL-terminated strings and NULL-terminated arrays
        // that live until spawn_exec returns (the spec's, and `ppid` on this frame).
        let spawned = unsafe {
            exec::spawn_exec(
                spec.path.as_ptr(),
                argv.as_ptr(),
                spec.envp.as_ptr(),
                theirs,
            )
        };
        let _ = syscall::close(theirs);
        match spawned {
            Ok(pid) => {
                self.sock = ours;
                self.pid = pid;
            }
            Err(e) => {
                let _ = syscall::close(ours);
                return Err(RawError::sys("execute", spec.path.as_bytes(), e));
            }
        }
        let mut body = [0u8; 16];
        body[..8].copy_from_slice(&self.generation.to_le_bytes());
        body[8..].copy_from_slice(&self.parent.to_le_bytes());
        self.record(proto::BEGIN, 0, &body)
    }

    /// Sends one record; a failure to send says why the helper went away if it said so.
    fn record(&mut self, kind: u32, offset: u64, body: &[u8]) -> Result<(), RawError> {
        let mut h = [0u8; proto::HEADER];
        h[..4].copy_from_slice(&proto::MAGIC.to_le_bytes());
        h[4..8].copy_from_slice(&kind.to_le_bytes());
        h[8..16].copy_from_slice(&offset.to_le_bytes());
        h[16..].copy_from_slice(&(body.len() as u64).to_le_bytes());
        match exec::send_all(self.sock, &[&h, body]) {
            Ok(()) => Ok(()),
            Err(e) => Err(self.why_gone(e)),
        }
    }

    /// The error of a helper that stopped reading: its reply's message, else the send error.
    fn why_gone(&mut self, e: Errno) -> RawError {
        let mut buf = [0u8; proto::REPLY];
        let n = exec::recv_full(self.sock, &mut buf).unwrap_or(0);
        match parse_reply(&buf[..n]) {
            Some((_, _, _, msg)) => raw_err!(Io, "remote store: {}", Bytes(msg)),
            None => RawError::sys("send to", b"ckpt-rmem", e),
        }
    }

    /// Sends `bytes` to be stored at image offset `off`.
    pub fn data(&mut self, off: u64, bytes: &[u8]) -> Result<(), RawError> {
        self.start()?;
        self.record(proto::DATA, off, bytes)
    }

    /// Asks the helper to commit the image (`total_len` bytes; `keep` generations kept) and
    /// waits for its answer and its exit: the commit. On failure the helper is gone too.
    pub fn commit(&mut self, total_len: u64, keep: u32) -> Result<Reply, RawError> {
        self.start()?;
        let mut body = [0u8; 16];
        body[..8].copy_from_slice(&total_len.to_le_bytes());
        body[8..].copy_from_slice(&(keep as u64).to_le_bytes());
        self.record(proto::COMMIT, 0, &body)?;
        let _ = exec::shutdown_write(self.sock);
        let mut buf = [0u8; proto::REPLY];
        let n = exec::recv_full(self.sock, &mut buf).unwrap_or(0);
        let status = self.reap();
        match parse_reply(&buf[..n]) {
            Some((proto::COMMITTED, loc, degraded, _)) if status == Some(0) => Ok(Reply {
                placement: match (loc, degraded) {
                    (proto::ON_DISK, _) => Placement::Disk,
                    (proto::IN_REMOTE, 0) => Placement::Remote,
                    _ => Placement::RemoteDegraded,
                },
            }),
            Some((proto::TAKEN, _, _, msg)) => Err(raw_err!(
                Io,
                "remote store: generation {} is already committed ({}); the next checkpoint takes a higher number",
                self.generation,
                Bytes(msg)
            )),
            Some((proto::FAILED, _, _, msg)) => Err(raw_err!(Io, "remote store: {}", Bytes(msg))),
            Some((answer, _, _, msg)) => Err(raw_err!(
                Io,
                "remote store: the helper answered {answer} ({}) and ended with wait status {:?}",
                Bytes(msg),
                status
            )),
            None => Err(match status {
                Some(s) if s & 0x7f != 0 => raw_err!(
                    Io,
                    "remote store: the ckpt-rmem helper was killed by signal {} before committing",
                    s & 0x7f
                ),
                Some(s) => raw_err!(
                    Io,
                    "remote store: the ckpt-rmem helper exited with status {} without committing",
                    (s >> 8) & 0xff
                ),
                None => raw_err!(Io, "remote store: the ckpt-rmem helper vanished"),
            }),
        }
    }

    /// Closes the socket and waits for the helper; its wait status.
    fn reap(&mut self) -> Option<i32> {
        if self.sock >= 0 {
            let _ = syscall::close(self.sock);
            self.sock = -1;
        }
        if self.pid <= 0 {
            return None;
        }
        let r = syscall::wait_child(self.pid, libc::__WALL).ok().flatten();
        self.pid = 0;
        r
    }

    /// Gives up: the helper is killed before it commits (what it stored is collected later).
    pub fn abandon(&mut self) {
        if self.pid > 0 {
            let _ = syscall::kill(self.pid, libc::SIGKILL);
        }
        self.reap();
    }
}

/// `(status, location, degraded, message)` of a reply.
fn parse_reply(b: &[u8]) -> Option<(u32, u32, u32, &[u8])> {
    if b.len() < proto::REPLY {
        return None;
    }
    let u = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
    if u(0) != proto::REPLY_MAGIC {
        return None;
    }
    let msg = &b[16..proto::REPLY];
    let end = msg.iter().position(|&c| c == 0).unwrap_or(msg.len());
    Some((u(4), u(8), u(12), &msg[..end]))
}

/// The remote store's helper and everything derived from the store's specification.
#[derive(Debug, Clone)]
pub(crate) struct Helper {
    /// The `ckpt-rmem` program.
    pub path: PathBuf,
    /// The local directory: the store's lock, the disk fallback, the tiered copy.
    pub dir: PathBuf,
    /// Arguments common to every command.
    args: Vec<String>,
    /// `RMEM_LOG` passed on, if set.
    rmem_log: Option<String>,
    /// The specification, for messages.
    pub spec: String,
    /// Whether fetches draw a progress bar on our standard error (a terminal, logging on).
    progress: bool,
}

/// A generation `fetch` staged for a restore.
#[derive(Debug, Clone)]
pub(crate) struct Fetched {
    /// The generation.
    pub generation: u64,
    /// Its chain, newest first (the generation itself first).
    pub chain: Vec<u64>,
    /// The highest generation committed in the pool.
    pub highest: u64,
    /// Where it was read from (`remote`, `disk`, `flushed`), and whether degraded.
    pub from: String,
    /// Bytes staged.
    pub bytes: u64,
}

impl Helper {
    /// Finds the helper and derives the pool's namespace, local directory and data key.
    pub fn prepare(r: &RemoteStore, log: LogLevel) -> Result<Helper> {
        Helper::prepare_for(r, log, None)
    }

    /// [`Helper::prepare`] for the pool of the program at `exe` (without `pool=`, the pool is
    /// named after the program's path), `None`: this process's own.
    fn prepare_for(r: &RemoteStore, log: LogLevel, exe: Option<&Path>) -> Result<Helper> {
        let path = find_helper()?;
        let pool = pool_id(r, exe)?;
        let pool_hex: String = pool.iter().map(|b| format!("{b:02x}")).collect();
        let dir = match &r.dir {
            Some(d) => d.clone(),
            None => default_dir(&pool_hex),
        };
        let mut args = vec![
            "--servers".to_string(),
            r.servers.join(","),
            "--key".into(),
            path_arg(&r.key_file)?,
            "--redundancy".into(),
            r.redundancy().to_string(),
            "--pool".into(),
            pool_hex,
            "--dir".into(),
            path_arg(&dir)?,
            "--log".into(),
            match log {
                LogLevel::Off => "off",
                LogLevel::Info => "warn",
                LogLevel::Debug => "debug",
            }
            .into(),
        ];
        if r.plaintext {
            args.push("--plaintext".into());
        } else {
            let (key, create) = match &r.data_key_file {
                Some(k) => (k.clone(), false),
                None => (default_data_key()?, true),
            };
            args.extend(["--data-key".into(), path_arg(&key)?]);
            if create {
                args.push("--create-key".into());
            }
        }
        if r.tiered {
            args.push("--tiered".into());
        }
        if !r.fallback {
            args.push("--no-fallback".into());
        }
        if r.min_free > 0 {
            args.extend(["--min-free".into(), r.min_free.to_string()]);
        }
        if let Some(c) = r.chunk {
            args.extend(["--chunk".into(), c.to_string()]);
        }
        if let Some(t) = r.timeout {
            args.extend(["--timeout-ms".into(), t.as_millis().to_string()]);
        }
        if let Some(w) = r.width {
            args.extend(["--width".into(), w.to_string()]);
        }
        Ok(Helper {
            path,
            dir,
            args,
            rmem_log: std::env::var("RMEM_LOG").ok(),
            spec: r.spec.clone(),
            progress: crate::progress::wanted(log),
        })
    }

    /// The `put` command line, prepared for [`Stream`].
    pub fn exec_spec(&self) -> Result<ExecSpec> {
        let bad = |what: &str| Error::Checkpoint(format!("remote store: {what} holds a NUL byte"));
        let path =
            CString::new(self.path.as_os_str().as_bytes()).map_err(|_| bad("the helper path"))?;
        let mut args = vec![path.clone(), c"put".to_owned()];
        for a in &self.args {
            args.push(CString::new(a.as_str()).map_err(|_| bad("an argument"))?);
        }
        args.push(c"--ppid".to_owned());
        let ppid_slot = args.len();
        args.push(c"0".to_owned());
        if args.len() >= MAX_ARGS {
            return Err(Error::Checkpoint(
                "remote store: too many helper arguments".into(),
            ));
        }
        let env: Vec<CString> = self
            .rmem_log
            .iter()
            .filter_map(|v| CString::new(format!("RMEM_LOG={v}")).ok())
            .collect();
        let mut argv: Vec<*const c_char> = args.iter().map(|a| a.as_ptr()).collect();
        argv.push(core::ptr::null());
        let mut envp: Vec<*const c_char> = env.iter().map(|a| a.as_ptr()).collect();
        envp.push(core::ptr::null());
        Ok(ExecSpec {
            path,
            _args: args,
            _env: env,
            argv,
            ppid_slot,
            envp,
        })
    }

    fn command(&self, mode: &str) -> Command {
        let mut c = Command::new(&self.path);
        c.arg(mode).args(&self.args);
        c.arg("--ppid").arg(std::process::id().to_string());
        c.env_clear();
        if let Some(v) = &self.rmem_log {
            c.env("RMEM_LOG", v);
        }
        // The progress bar draws only for a terminal type it knows.
        if let Some(t) = std::env::var_os("TERM") {
            c.env("TERM", t);
        }
        c.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        c
    }

    /// Runs a command; returns (exit code, stdout). The helper's log lines are passed on to
    /// our standard error; a failure becomes an error carrying its last line.
    fn run(&self, mode: &str, extra: &[&OsStr], ok: &[i32]) -> Result<(i32, String)> {
        let mut c = self.command(mode);
        c.args(extra);
        // A long fetch draws its progress on our terminal: a copy of our standard error the
        // helper inherits (its own standard error is the pipe its messages are read from).
        let tty = if self.progress && mode == "fetch" {
            // SAFETY: fcntl duplicates a descriptor of ours; the copy is closed below.
            let fd = unsafe { libc::fcntl(2, libc::F_DUPFD, 3) };
            if fd >= 0 {
                c.arg("--progress-fd").arg(fd.to_string());
            }
            fd
        } else {
            -1
        };
        let out = c.output();
        if tty >= 0 {
            let _ = syscall::close(tty);
        }
        let out = out.map_err(|e| Error::Io {
            op: "run the remote store's helper",
            path: self.path.clone(),
            source: e,
        })?;
        let err = String::from_utf8_lossy(&out.stderr);
        let mut last = String::new();
        let code = out.status.code().unwrap_or(-1);
        for l in err.lines().filter(|l| !l.trim().is_empty()) {
            // The error line itself becomes the error returned, not a second message.
            if !l.starts_with("ckpt-rmem: error: ") || ok.contains(&code) {
                eprintln!("{l}");
            }
            last = l.trim().to_string();
        }
        if !ok.contains(&code) {
            let why = last
                .strip_prefix("ckpt-rmem: error: ")
                .map(str::to_string)
                .unwrap_or_else(|| format!("{} ({last})", out.status));
            return Err(Error::Checkpoint(format!(
                "remote store {}: {why}",
                self.spec
            )));
        }
        Ok((code, String::from_utf8_lossy(&out.stdout).into_owned()))
    }

    /// Checks that the pool can be used (servers reachable, key right, data key there) and
    /// returns the highest generation committed in it.
    pub fn status(&self) -> Result<u64> {
        let (_, out) = self.run("status", &[], &[0])?;
        Ok(field(&out, "highest").unwrap_or(0))
    }

    /// Stages the newest restorable generation and its chain as image files in `into`;
    /// `Ok(None)` when nothing is committed (then the highest generation is also 0).
    pub fn fetch(&self, into: &Path) -> Result<Option<Fetched>> {
        self.fetch_with(into, &[])
    }

    /// [`Helper::fetch`] with more of `fetch`'s options (`--generation G`, `--meta`).
    fn fetch_with(&self, into: &Path, more: &[&OsStr]) -> Result<Option<Fetched>> {
        let mut extra = vec![OsStr::new("--into"), into.as_os_str()];
        extra.extend_from_slice(more);
        let (code, out) = self.run("fetch", &extra, &[0, 2])?;
        if code == 2 {
            return Ok(None);
        }
        let generation = field(&out, "generation").ok_or_else(|| {
            Error::Checkpoint(format!(
                "remote store {}: fetch printed no generation",
                self.spec
            ))
        })?;
        let chain = out
            .lines()
            .find_map(|l| l.strip_prefix("chain "))
            .map(|c| {
                c.split_whitespace()
                    .filter_map(|g| g.parse().ok())
                    .collect()
            })
            .unwrap_or_else(|| vec![generation]);
        Ok(Some(Fetched {
            generation,
            chain,
            highest: field(&out, "highest").unwrap_or(generation),
            from: out
                .lines()
                .find_map(|l| l.strip_prefix("from "))
                .unwrap_or("remote memory")
                .to_string(),
            bytes: field(&out, "bytes").unwrap_or(0),
        }))
    }

    /// Removes every generation of the pool (remote, local fallback, tiered copy); how many.
    pub fn clear(&self) -> Result<u64> {
        let (_, out) = self.run("clear", &[], &[0])?;
        Ok(field(&out, "removed").unwrap_or(0))
    }
}

/// The number after `name ` on a line of `out`.
fn field(out: &str, name: &str) -> Option<u64> {
    out.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

fn path_arg(p: &Path) -> Result<String> {
    p.to_str().map(str::to_string).ok_or_else(|| {
        Error::Checkpoint(format!("remote store: path {} is not UTF-8", p.display()))
    })
}

/// FNV-1a, 64 bits, from `seed`.
fn fnv(seed: u64, bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .fold(seed, |h, &b| (h ^ b as u64).wrapping_mul(0x100_0000_01b3))
}

/// The pool's 16-byte namespace: `pool=` (32 hex digits, or up to 16 characters, zero-padded,
/// as `rmem-inspect` and `ckpt servers` take it), else a hash of the executable's path, so
/// that different programs sharing servers never see each other's generations (`exe`: that
/// path; `None`: this process's executable).
fn pool_id(r: &RemoteStore, exe: Option<&Path>) -> Result<[u8; 16]> {
    let mut id = [0u8; 16];
    if let Some(p) = &r.pool {
        if p.len() == 32 && p.bytes().all(|b| b.is_ascii_hexdigit()) {
            for (i, c) in p.as_bytes().chunks(2).enumerate() {
                let s = core::str::from_utf8(c).unwrap_or("00");
                id[i] = u8::from_str_radix(s, 16).unwrap_or(0);
            }
        } else {
            id[..p.len().min(16)].copy_from_slice(&p.as_bytes()[..p.len().min(16)]);
        }
        return Ok(id);
    }
    let exe = match exe {
        Some(p) => p.to_path_buf(),
        None => std::fs::read_link("/proc/self/exe").map_err(|e| Error::Io {
            op: "readlink",
            path: "/proc/self/exe".into(),
            source: e,
        })?,
    };
    Ok(program_pool(&exe))
}

/// The pool a program checkpoints into when its remote store has no `pool=`: derived from the
/// program's path (absolute, symbolic links resolved, as `/proc/self/exe` reads), so that
/// programs sharing servers never see each other's generations.
pub fn program_pool(exe: &Path) -> [u8; 16] {
    let mut id = [0u8; 16];
    let b = exe.as_os_str().as_bytes();
    id[..8].copy_from_slice(&fnv(0xcbf2_9ce4_8422_2325, b).to_le_bytes());
    id[8..].copy_from_slice(&fnv(0x6c62_272e_07bb_0142, b).to_le_bytes());
    // Marks a derived id: "ck" in the first two bytes.
    id[..2].copy_from_slice(b"ck");
    id
}

/// `$XDG_RUNTIME_DIR/ckpt-rmem-POOL`, else `/tmp/ckpt-rmem-UID-POOL`.
fn default_dir(pool_hex: &str) -> PathBuf {
    if let Some(x) = std::env::var_os("XDG_RUNTIME_DIR").filter(|x| Path::new(x).is_dir()) {
        return Path::new(&x).join(format!("ckpt-rmem-{pool_hex}"));
    }
    // SAFETY: getuid has no preconditions.
    let uid = unsafe { libc::getuid() };
    std::env::temp_dir().join(format!("ckpt-rmem-{uid}-{pool_hex}"))
}

/// `$XDG_CONFIG_HOME/ckpt/rmem-data.key`, else `$HOME/.config/ckpt/rmem-data.key`.
fn default_data_key() -> Result<PathBuf> {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|x| !x.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .filter(|x| !x.is_empty())
                .map(|h| Path::new(&h).join(".config"))
        })
        .ok_or_else(|| {
            Error::Checkpoint(
                "remote store: neither XDG_CONFIG_HOME nor HOME is set to keep the data key in: \
                 give datakey=FILE (or plaintext)"
                    .into(),
            )
        })?;
    Ok(base.join("ckpt").join("rmem-data.key"))
}

/// Where the `ckpt-rmem` program is: `CKPT_RMEM_HELPER`, else next to the executable (or one
/// directory up, for cargo's `examples/`), else next to the shared library holding this code,
/// else on `PATH`, else in this build's cargo target directory.
fn find_helper() -> Result<PathBuf> {
    const NAME: &str = "ckpt-rmem";
    if let Some(p) = std::env::var_os("CKPT_RMEM_HELPER").filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        return if is_executable(&p) {
            Ok(p)
        } else {
            Err(Error::Checkpoint(format!(
                "CKPT_RMEM_HELPER={} is not an executable file",
                p.display()
            )))
        };
    }
    let mut dirs: Vec<PathBuf> = Vec::new();
    if let Ok(exe) = std::fs::read_link("/proc/self/exe")
        && let Some(d) = exe.parent()
    {
        dirs.push(d.to_path_buf());
        if let Some(up) = d.parent() {
            dirs.push(up.to_path_buf());
        }
    }
    if let Some(so) = library_dir() {
        dirs.push(so);
    }
    if let Some(path) = std::env::var_os("PATH") {
        dirs.extend(std::env::split_paths(&path));
    }
    let target = option_env!("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("..")
                .join("target")
        });
    let profile = if cfg!(debug_assertions) {
        ["debug", "release"]
    } else {
        ["release", "debug"]
    };
    dirs.extend(profile.iter().map(|p| target.join(p)));
    for d in &dirs {
        let p = d.join(NAME);
        if is_executable(&p) {
            return Ok(p);
        }
    }
    Err(Error::Checkpoint(format!(
        "the remote store needs the {NAME} helper program, which was not found: set \
         CKPT_RMEM_HELPER=PATH, put it next to the program or on PATH, or build it with \
         `cargo build -p ckpt-rmem` (looked in {})",
        dirs.iter()
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    )))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The directory of the shared object this code is in (`libckpt.so` when preloaded).
fn library_dir() -> Option<PathBuf> {
    // SAFETY: a zeroed Dl_info is valid for dladdr to fill in.
    let mut info: libc::Dl_info = unsafe { core::mem::zeroed() };
    // SAFETY: dladdr only reads the address and fills `info`; `dli_fname` is a string owned by
    // the dynamic linker, copied at once.
    let name = unsafe {
        if libc::dladdr(find_helper as *const libc::c_void, &mut info) == 0
            || info.dli_fname.is_null()
        {
            return None;
        }
        std::ffi::CStr::from_ptr(info.dli_fname)
    };
    let p = PathBuf::from(OsStr::from_bytes(name.to_bytes()));
    p.parent().map(Path::to_path_buf)
}

/// What [`RemoteImages::stage`] writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StageWhat {
    /// The newest generation whose whole chain can be read (what a restore would fetch), and
    /// its chain.
    Newest,
    /// This committed generation and its chain.
    Generation(u64),
    /// Every committed generation, each on its own: one that cannot be read is reported, not
    /// an error.
    All,
}

/// One generation [`RemoteImages::stage`] wrote, or could not.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct StagedGeneration {
    /// The generation.
    pub generation: u64,
    /// The generation it builds on (0: a full image); 0 when it could not be read.
    pub parent: u64,
    /// Length of its image.
    pub bytes: u64,
    /// Where it is: `remote`, `degraded` (remote memory, some shards lost, covered by the
    /// redundancy), `remote+disk` (remote memory filled up while it was written: the rest is in
    /// the local fallback directory), `disk` (the local fallback directory) or `copy` (only the
    /// tiered store's local copy); empty when it could not be read.
    pub location: String,
    /// Why it could not be read.
    pub error: Option<String>,
}

/// What [`RemoteImages::stage`] wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Staged {
    /// `Newest` and `Generation`: the chain written, newest first.
    pub chain: Vec<u64>,
    /// `Newest` and `Generation`: where it was read from, as a restore logs it.
    pub from: String,
    /// `All`: every committed generation, newest first.
    pub generations: Vec<StagedGeneration>,
    /// `All`: (servers connected, servers configured).
    pub servers: (usize, usize),
    /// The highest generation committed in the pool.
    pub highest: u64,
}

/// A remote store's images, read from outside the program that wrote them (the `ckpt` command's
/// `ls`, `inspect` and `verify`). [`RemoteImages::stage`] fetches them through the `ckpt-rmem`
/// helper, as a restore does, into a private memory-backed directory as image files in the
/// format of a directory store (`IMAGE-FORMAT.md`), which any image reader can then check; the
/// directory goes when this is dropped. Reading takes the store's helper lock for the time of
/// the transfer, never the program's store lock: a running program goes on checkpointing.
#[derive(Debug)]
pub struct RemoteImages {
    helper: Helper,
    staging: Staging,
}

impl RemoteImages {
    /// The images of `store`. Without `pool=` a pool is named after its program's path:
    /// `program` is that program (its path as the running program's `/proc/self/exe` would
    /// read: absolute, symbolic links resolved).
    pub fn open(store: &RemoteStore, program: Option<&Path>) -> Result<RemoteImages> {
        if store.pool.is_none() && program.is_none() {
            return Err(Error::Checkpoint(format!(
                "remote store {}: without pool=, a pool is named after the program that wrote \
                 it; name the program (or give pool=)",
                store.spec
            )));
        }
        let helper = Helper::prepare_for(store, LogLevel::Info, program)?;
        Ok(RemoteImages {
            helper,
            staging: Staging::new()?,
        })
    }

    /// The store's local directory (its lock, the disk fallback, the tiered copy).
    pub fn local_dir(&self) -> &Path {
        &self.helper.dir
    }

    /// The highest generation committed in the pool (0: none), without reading any image.
    pub fn highest(&self) -> Result<u64> {
        self.helper.status()
    }

    /// The directory the images are written to.
    pub fn staging_dir(&self) -> &Path {
        &self.staging.0
    }

    /// Writes `what` into [`RemoteImages::staging_dir`] as `gen-<20 digits>.ckpt` files; with
    /// `meta`, only each image's header and manifest (the page data is a hole of the file),
    /// which is enough for everything but checking the page data's checksums. A long transfer
    /// draws a progress bar on standard error when that is a terminal. `Ok(None)`: nothing is
    /// committed in the pool.
    pub fn stage(&self, what: StageWhat, meta: bool) -> Result<Option<Staged>> {
        let into = self.staging_dir();
        // What an earlier call staged goes first.
        if let Ok(entries) = std::fs::read_dir(into) {
            for e in entries.flatten() {
                let _ = std::fs::remove_file(e.path());
            }
        }
        let g;
        let mut more: Vec<&OsStr> = Vec::new();
        match what {
            StageWhat::Newest => {}
            StageWhat::Generation(n) => {
                g = n.to_string();
                more.extend([OsStr::new("--generation"), OsStr::new(g.as_str())]);
            }
            StageWhat::All => more.push(OsStr::new("--all")),
        }
        if meta {
            more.push(OsStr::new("--meta"));
        }
        if what != StageWhat::All {
            return Ok(self.helper.fetch_with(into, &more)?.map(|f| Staged {
                chain: f.chain,
                from: f.from,
                highest: f.highest,
                ..Staged::default()
            }));
        }
        let mut extra = vec![OsStr::new("--into"), into.as_os_str()];
        extra.extend_from_slice(&more);
        let (code, out) = self.helper.run("fetch", &extra, &[0, 2])?;
        if code == 2 {
            return Ok(None);
        }
        Ok(Some(parse_all(&out)))
    }
}

/// The output of `ckpt-rmem fetch --all`.
fn parse_all(out: &str) -> Staged {
    let mut s = Staged::default();
    for l in out.lines() {
        let w: Vec<&str> = l.splitn(4, ' ').collect();
        let num = |i: usize| w.get(i).and_then(|v| v.parse::<u64>().ok());
        match (w.first(), w.get(2)) {
            (Some(&"servers"), _) => {
                s.servers = (num(1).unwrap_or(0) as usize, num(2).unwrap_or(0) as usize)
            }
            (Some(&"gen"), Some(&"error")) => s.generations.push(StagedGeneration {
                generation: num(1).unwrap_or(0),
                parent: 0,
                bytes: 0,
                location: String::new(),
                error: Some(w.get(3).unwrap_or(&"").to_string()),
            }),
            (Some(&"gen"), _) => {
                // gen G parent P bytes N from WHERE
                let f: Vec<&str> = l.split_whitespace().collect();
                let at = |k: &str| f.iter().position(|x| *x == k).and_then(|i| f.get(i + 1));
                let n = |k: &str| at(k).and_then(|v| v.parse().ok()).unwrap_or(0);
                s.generations.push(StagedGeneration {
                    generation: num(1).unwrap_or(0),
                    parent: n("parent"),
                    bytes: n("bytes"),
                    location: at("from").map_or("remote", |v| v).to_string(),
                    error: None,
                });
            }
            _ => {}
        }
    }
    s.highest = s.generations.first().map_or(0, |g| g.generation);
    s
}

/// A private, memory-backed directory for the images a restore fetches: under `/dev/shm` (else
/// `$XDG_RUNTIME_DIR`, else the temporary directory), mode 0700. Removed on drop.
#[derive(Debug)]
pub(crate) struct Staging(pub PathBuf);

impl Staging {
    pub fn new() -> Result<Staging> {
        use std::os::unix::fs::DirBuilderExt;
        let bases: Vec<PathBuf> = [
            Some(PathBuf::from("/dev/shm")),
            std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from),
            Some(std::env::temp_dir()),
        ]
        .into_iter()
        .flatten()
        .filter(|b| b.is_dir())
        .collect();
        for b in &bases {
            remove_stale(b);
        }
        let mut last = None;
        for b in &bases {
            for n in 0..16u32 {
                let mut t = [0u8; 8];
                // SAFETY: getrandom fills the buffer it is given.
                let _ = unsafe { libc::getrandom(t.as_mut_ptr().cast(), t.len(), 0) };
                let p = b.join(format!(
                    "ckpt-restore-{}-{:016x}",
                    std::process::id(),
                    u64::from_le_bytes(t).wrapping_add(n as u64)
                ));
                match std::fs::DirBuilder::new().mode(0o700).create(&p) {
                    Ok(()) => return Ok(Staging(p)),
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                    Err(e) => {
                        last = Some((p, e));
                        break;
                    }
                }
            }
        }
        let (path, source) = last.unwrap_or_else(|| {
            (
                PathBuf::from("/dev/shm"),
                std::io::ErrorKind::NotFound.into(),
            )
        });
        Err(Error::Io {
            op: "create a staging directory for the restore",
            path,
            source,
        })
    }

    /// Removes the directory and what it holds (images stay readable through open descriptors).
    pub fn remove(&self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Removes staging directories in `base` left by restores that were killed (their process is
/// gone): they hold whole images in memory.
fn remove_stale(base: &Path) {
    use std::os::unix::fs::MetadataExt;
    // SAFETY: getuid has no preconditions.
    let uid = unsafe { libc::getuid() };
    let Ok(entries) = std::fs::read_dir(base) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix("ckpt-restore-"))
            .and_then(|n| n.split('-').next())
            .and_then(|p| p.parse::<i32>().ok())
        else {
            continue;
        };
        let mine = e.metadata().is_ok_and(|m| m.uid() == uid && m.is_dir());
        // SAFETY: kill with signal 0 only checks that the process exists.
        let gone = unsafe { libc::kill(pid, 0) } != 0
            && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH);
        if mine && gone && pid > 0 {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        self.remove();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fetch_all_output_parses() {
        let s = parse_all(
            "servers 2 3\ngen 9 parent 8 bytes 4096 from degraded\ngen 8 error data lost, stripe 0\ngen 7 parent 0 bytes 81920 from copy\n",
        );
        assert_eq!(s.servers, (2, 3));
        assert_eq!(s.highest, 9);
        assert_eq!(s.generations.len(), 3);
        assert_eq!((s.generations[0].parent, s.generations[0].bytes), (8, 4096));
        assert_eq!(s.generations[0].location, "degraded");
        assert_eq!(
            s.generations[1].error.as_deref(),
            Some("data lost, stripe 0")
        );
        assert_eq!(s.generations[2].location, "copy");
    }

    #[test]
    fn replies_parse() {
        let mut b = [0u8; proto::REPLY];
        b[..4].copy_from_slice(&proto::REPLY_MAGIC.to_le_bytes());
        b[4..8].copy_from_slice(&proto::FAILED.to_le_bytes());
        b[16..21].copy_from_slice(b"gone!");
        assert_eq!(parse_reply(&b), Some((proto::FAILED, 0, 0, &b"gone!"[..])));
        assert_eq!(parse_reply(&b[..100]), None);
        b[0] = 0;
        assert_eq!(parse_reply(&b), None);
        assert_eq!(field("x 1\nhighest 42\n", "highest"), Some(42));
        assert_eq!(field("highestx 4\n", "highest"), None);
    }

    #[test]
    fn pool_ids() {
        let mut r = RemoteStore::parse("rmem://a:1?key=/k&pool=job-7").unwrap();
        assert_eq!(&pool_id(&r, None).unwrap()[..6], b"job-7\0");
        r.pool = Some("00112233445566778899aabbccddeeff".into());
        assert_eq!(pool_id(&r, None).unwrap()[15], 0xff);
        r.pool = None;
        assert_eq!(&pool_id(&r, None).unwrap()[..2], b"ck");
    }
}
