//! The network service: accept loop, per-connection handshake and request loop, lending state
//! (lending / revoking with a deadline / revoked), revocation notices, statistics.
//!
//! One thread per connection with blocking sockets. A connection's requests are answered in order,
//! so clients pipeline freely; a framing or checksum error closes only that connection.

use std::collections::HashMap;
use std::io::{BufReader, IoSliceMut, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rmem_client::auth::{Psk, Role, random_bytes};
use rmem_client::proto::{
    self, Challenge, Cursor, ErrorCode, FrameHeader, HEADER_LEN, Hello, InstanceId, LendState,
    MAX_MANIFEST, MAX_OBJECT, MAX_PAYLOAD, Op, PoolId, ProtoError, Status, VERSION,
};

use crate::store::{Store, StoreError};

/// Bytes of requests a client may have unanswered; advertised in the handshake. Replies to puts are
/// tiny, so this bounds what a client can make the server buffer in replies it is not reading.
pub const WINDOW: u32 = 32 << 20;
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// Errors of the service itself (a single connection's errors are only logged).
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: String,
        source: std::io::Error,
    },
    #[error("mlockall failed (try a smaller --capacity or raise RLIMIT_MEMLOCK): {0}")]
    Mlock(nix::Error),
    #[error(transparent)]
    Auth(#[from] rmem_client::auth::AuthError),
}

/// Why memory is being taken back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    Admin,
    Watermark,
    Busy,
    Shutdown,
}

impl Reason {
    pub fn name(self) -> &'static str {
        match self {
            Reason::Admin => "admin",
            Reason::Watermark => "watermark",
            Reason::Busy => "busy",
            Reason::Shutdown => "shutdown",
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Lend {
    Lending,
    Revoking { deadline: Instant, reason: Reason },
    Revoked { reason: Reason },
}

/// Settings of one server.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub capacity: u64,
    pub mlock: bool,
    pub max_clients: usize,
    pub key: Psk,
}

/// Counters exported by the stats endpoint.
#[derive(Debug, Default)]
pub struct Counters {
    pub clients: AtomicU64,
    pub connections: AtomicU64,
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
    pub revocations: AtomicU64,
    pub bad_frames: AtomicU64,
    pub auth_failures: AtomicU64,
    pub refused_full: AtomicU64,
}

/// State shared by all threads of a server.
#[derive(Debug)]
pub struct Shared {
    pub cfg: ServerConfig,
    pub instance: InstanceId,
    store: Mutex<Store>,
    lend: Mutex<Lend>,
    conns: Mutex<HashMap<u64, Arc<Mutex<TcpStream>>>>,
    next_conn: AtomicU64,
    pub counters: Arc<Counters>,
    pub stop: AtomicBool,
    pub local_addr: Mutex<Option<SocketAddr>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic in one connection thread must not take the whole server down with poisoned locks;
    // the protected data stays consistent because every mutation is a single call.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    pub fn new(cfg: ServerConfig) -> Result<Arc<Shared>, ServerError> {
        let mut instance = [0u8; 16];
        random_bytes(&mut instance)?;
        let s = Arc::new(Shared {
            cfg,
            instance,
            store: Mutex::new(Store::new()),
            lend: Mutex::new(Lend::Lending),
            conns: Mutex::new(HashMap::new()),
            next_conn: AtomicU64::new(1),
            counters: Arc::new(Counters::default()),
            stop: AtomicBool::new(false),
            local_addr: Mutex::new(None),
        });
        s.start_lending()?;
        Ok(s)
    }

    fn start_lending(&self) -> Result<(), ServerError> {
        let t = Instant::now();
        lock(&self.store).lend(self.cfg.capacity);
        if self.cfg.mlock {
            use nix::sys::mman::{MlockAllFlags, mlockall};
            mlockall(MlockAllFlags::MCL_CURRENT).map_err(ServerError::Mlock)?;
        }
        tracing::info!(
            capacity = self.cfg.capacity,
            mlock = self.cfg.mlock,
            ms = t.elapsed().as_millis() as u64,
            "lending memory (pre-faulted)"
        );
        Ok(())
    }

    /// Lending state as clients see it.
    pub fn lend_state(&self) -> LendState {
        match *lock(&self.lend) {
            Lend::Lending => LendState::Lending,
            Lend::Revoking { deadline, .. } => LendState::Revoking {
                deadline_ms: deadline
                    .saturating_duration_since(Instant::now())
                    .as_millis() as u64,
            },
            Lend::Revoked { .. } => LendState::Revoked,
        }
    }

    pub fn state_name(&self) -> String {
        match *lock(&self.lend) {
            Lend::Lending => "lending".into(),
            Lend::Revoking { reason, .. } => format!("revoking({})", reason.name()),
            Lend::Revoked { reason } => format!("revoked({})", reason.name()),
        }
    }

    /// Starts taking memory back: writes are refused from now on, clients are told the deadline,
    /// and at the deadline (or as soon as no data is left) the arena is released.
    pub fn revoke(&self, deadline: Duration, reason: Reason) {
        let new_deadline = Instant::now() + deadline;
        {
            let mut l = lock(&self.lend);
            match *l {
                // An earlier deadline wins; a later one never extends a running revocation.
                Lend::Revoking {
                    deadline: d,
                    reason: r,
                } if d <= new_deadline => {
                    if reason == Reason::Shutdown {
                        *l = Lend::Revoking {
                            deadline: d,
                            reason,
                        };
                    }
                    let _ = r;
                    return;
                }
                Lend::Revoked { .. } if reason != Reason::Shutdown => return,
                Lend::Revoked { .. } => {
                    // Nothing lent any more: a shutdown can stop at once.
                    *l = Lend::Revoked { reason };
                    self.stop.store(true, Ordering::SeqCst);
                    return;
                }
                _ => {
                    *l = Lend::Revoking {
                        deadline: new_deadline,
                        reason,
                    }
                }
            }
        }
        self.counters.revocations.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(
            reason = reason.name(),
            deadline_ms = deadline.as_millis() as u64,
            "revoking lent memory"
        );
        let ms = deadline.as_millis() as u64;
        let conns: Vec<_> = lock(&self.conns).values().cloned().collect();
        let counters = self.counters.clone();
        // On its own thread: a client that stopped reading must not hold up the admin command or
        // the monitor (its write times out and its connection is dropped).
        let spawned = std::thread::Builder::new()
            .name("rmem-notify".into())
            .spawn(move || {
                for c in conns {
                    let _ = send(&c, Op::RevokeNotice, 0, &ms.to_le_bytes(), &counters);
                }
            });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot notify clients of the revocation");
        }
    }

    /// Lends again after a revocation (admin `resume`, or the machine became idle again).
    pub fn resume(&self) -> Result<bool, ServerError> {
        {
            let l = lock(&self.lend);
            match *l {
                Lend::Revoked {
                    reason: Reason::Shutdown,
                }
                | Lend::Lending => return Ok(false),
                Lend::Revoking { .. } => return Ok(false),
                Lend::Revoked { .. } => {}
            }
        }
        self.start_lending()?;
        *lock(&self.lend) = Lend::Lending;
        tracing::info!("lending again");
        Ok(true)
    }

    pub fn revoked_reason(&self) -> Option<Reason> {
        match *lock(&self.lend) {
            Lend::Revoked { reason } => Some(reason),
            _ => None,
        }
    }

    /// Called periodically: finishes a revocation at its deadline or once no client data is left.
    pub fn tick(&self) {
        let mut l = lock(&self.lend);
        if let Lend::Revoking { deadline, reason } = *l {
            let empty = lock(&self.store).pools() == 0;
            if empty || Instant::now() >= deadline {
                let mut st = lock(&self.store);
                let dropped = st.used();
                st.unlend();
                drop(st);
                *l = Lend::Revoked { reason };
                tracing::warn!(
                    reason = reason.name(),
                    dropped_bytes = dropped,
                    early = empty,
                    "memory revoked and released"
                );
                if reason == Reason::Shutdown {
                    self.stop.store(true, Ordering::SeqCst);
                }
            }
        }
    }

    /// Prometheus text exposition of the server's state.
    pub fn metrics(&self) -> String {
        let (cap, used, pools) = {
            let s = lock(&self.store);
            (s.capacity(), s.used(), s.pools())
        };
        let c = &self.counters;
        let state = match self.lend_state() {
            LendState::Lending => 0,
            LendState::Revoking { .. } => 1,
            LendState::Revoked => 2,
        };
        let mut o = String::new();
        let mut m = |name: &str, help: &str, kind: &str, v: u64| {
            o.push_str(&format!(
                "# HELP rmem_{name} {help}\n# TYPE rmem_{name} {kind}\nrmem_{name} {v}\n"
            ));
        };
        m(
            "capacity_bytes",
            "Memory currently lent (0 when revoked).",
            "gauge",
            cap,
        );
        m(
            "configured_capacity_bytes",
            "Memory lent when lending.",
            "gauge",
            self.cfg.capacity,
        );
        m(
            "used_bytes",
            "Bytes of lent memory holding client data (whole slots).",
            "gauge",
            used,
        );
        m("pools", "Client pools holding data.", "gauge", pools as u64);
        m(
            "clients",
            "Client connections now (authenticated or in handshake).",
            "gauge",
            c.clients.load(Ordering::Relaxed),
        );
        m(
            "connections_total",
            "Connections accepted.",
            "counter",
            c.connections.load(Ordering::Relaxed),
        );
        m(
            "bytes_in_total",
            "Frame bytes received.",
            "counter",
            c.bytes_in.load(Ordering::Relaxed),
        );
        m(
            "bytes_out_total",
            "Frame bytes sent.",
            "counter",
            c.bytes_out.load(Ordering::Relaxed),
        );
        m(
            "revocations_total",
            "Revocations started.",
            "counter",
            c.revocations.load(Ordering::Relaxed),
        );
        m(
            "bad_frames_total",
            "Connections closed for a malformed frame.",
            "counter",
            c.bad_frames.load(Ordering::Relaxed),
        );
        m(
            "auth_failures_total",
            "Handshakes refused.",
            "counter",
            c.auth_failures.load(Ordering::Relaxed),
        );
        m(
            "refused_full_total",
            "Writes refused for lack of space.",
            "counter",
            c.refused_full.load(Ordering::Relaxed),
        );
        m("state", "0 lending, 1 revoking, 2 revoked.", "gauge", state);
        o
    }
}

/// Writes one frame on a shared stream as a single buffer (one syscall for small frames).
fn send(
    stream: &Mutex<TcpStream>,
    op: Op,
    req: u64,
    payload: &[u8],
    c: &Counters,
) -> std::io::Result<()> {
    let h = FrameHeader::new(op, req, &[payload]);
    let mut s = lock(stream);
    if payload.len() <= 4096 {
        let mut buf = Vec::with_capacity(HEADER_LEN + payload.len());
        buf.extend_from_slice(&h.to_bytes());
        buf.extend_from_slice(payload);
        s.write_all(&buf)?;
    } else {
        s.write_all(&h.to_bytes())?;
        s.write_all(payload)?;
    }
    c.bytes_out
        .fetch_add((HEADER_LEN + payload.len()) as u64, Ordering::Relaxed);
    Ok(())
}

/// `send` for a payload whose CRC32C is known (stored objects): no pass over the data.
fn send_crc(
    stream: &Mutex<TcpStream>,
    op: Op,
    req: u64,
    payload: &[u8],
    crc: u32,
    c: &Counters,
) -> std::io::Result<()> {
    let h = FrameHeader::with_crc(op, req, payload.len(), crc);
    let mut s = lock(stream);
    s.write_all(&h.to_bytes())?;
    s.write_all(payload)?;
    c.bytes_out
        .fetch_add((HEADER_LEN + payload.len()) as u64, Ordering::Relaxed);
    Ok(())
}

/// Accepts connections until `stop` is set.
pub fn serve(shared: Arc<Shared>, listener: TcpListener) {
    if let Ok(a) = listener.local_addr() {
        *lock(&shared.local_addr) = Some(a);
    }
    for conn in listener.incoming() {
        if shared.stop.load(Ordering::SeqCst) {
            break;
        }
        let stream = match conn {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        let sh = shared.clone();
        let spawned = std::thread::Builder::new()
            .name("rmem-conn".into())
            .spawn(move || {
                let peer = stream
                    .peer_addr()
                    .map(|a| a.to_string())
                    .unwrap_or_else(|_| "?".into());
                handle(sh, stream, &peer);
            });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot spawn connection thread");
        }
    }
}

/// Unblocks `serve` so it sees `stop` (accept has no timeout).
pub fn wake_acceptor(shared: &Shared) {
    if let Some(a) = *lock(&shared.local_addr) {
        let _ = TcpStream::connect_timeout(&a, Duration::from_millis(200));
    }
}

/// Closes every client connection (shutdown).
pub fn close_all(shared: &Shared) {
    for c in lock(&shared.conns).values() {
        let _ = lock(c).shutdown(Shutdown::Both);
    }
}

fn handle(sh: Arc<Shared>, stream: TcpStream, peer: &str) {
    sh.counters.connections.fetch_add(1, Ordering::Relaxed);
    let _ = stream.set_nodelay(true);
    // A peer that stops reading its replies is dropped rather than blocking a thread forever.
    let _ = stream.set_write_timeout(Some(WRITE_TIMEOUT));
    let writer = match stream.try_clone() {
        Ok(w) => Arc::new(Mutex::new(w)),
        Err(e) => {
            tracing::warn!(peer, error = %e, "cannot clone socket");
            return;
        }
    };
    // Small: bulk payloads are read straight into the connection's buffer; whatever part of a
    // payload this buffer happens to hold is copied once more.
    let mut reader = BufReader::with_capacity(16 << 10, stream);
    // Reserve a client slot before the handshake so that concurrent connections cannot all pass
    // the --max-clients check.
    if sh.counters.clients.fetch_add(1, Ordering::SeqCst) as usize >= sh.cfg.max_clients {
        sh.counters.clients.fetch_sub(1, Ordering::SeqCst);
        tracing::warn!(
            peer,
            max = sh.cfg.max_clients,
            "refusing connection: too many clients"
        );
        let msg = "server has --max-clients connections already";
        let _ = send(
            &writer,
            Op::Error,
            0,
            &proto::encode_error(ErrorCode::TooManyClients, msg),
            &sh.counters,
        );
        let _ = lock(&writer).shutdown(Shutdown::Both);
        return;
    }
    let pool = match handshake(&sh, &mut reader, &writer, peer) {
        Some(p) => p,
        None => {
            sh.counters.clients.fetch_sub(1, Ordering::SeqCst);
            let _ = lock(&writer).shutdown(Shutdown::Both);
            return;
        }
    };
    let id = sh.next_conn.fetch_add(1, Ordering::Relaxed);
    lock(&sh.conns).insert(id, writer.clone());
    tracing::info!(peer, pool = %rmem_client::auth::encode_hex(&pool), "client authenticated");
    if let LendState::Revoking { deadline_ms } = sh.lend_state() {
        let _ = send(
            &writer,
            Op::RevokeNotice,
            0,
            &deadline_ms.to_le_bytes(),
            &sh.counters,
        );
    }
    let result = request_loop(&sh, &mut reader, &writer, &pool);
    match result {
        Ok(()) => tracing::info!(peer, "client disconnected"),
        Err(ConnEnd::Io(e)) => tracing::info!(peer, error = %e, "connection ended"),
        Err(ConnEnd::Bad(e)) => {
            sh.counters.bad_frames.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(peer, error = %e, "malformed frame; closing this connection");
            let _ = send(
                &writer,
                Op::Error,
                0,
                &proto::encode_error(ErrorCode::BadFrame, &e.to_string()),
                &sh.counters,
            );
        }
    }
    lock(&sh.conns).remove(&id);
    sh.counters.clients.fetch_sub(1, Ordering::Relaxed);
    let _ = lock(&writer).shutdown(Shutdown::Both);
}

enum ConnEnd {
    Io(String),
    Bad(ProtoError),
}

fn classify(e: ProtoError) -> ConnEnd {
    match e {
        ProtoError::Closed => ConnEnd::Io("closed by peer".into()),
        ProtoError::Io(e) => ConnEnd::Io(e.to_string()),
        other => ConnEnd::Bad(other),
    }
}

fn handshake(
    sh: &Shared,
    r: &mut BufReader<TcpStream>,
    w: &Mutex<TcpStream>,
    peer: &str,
) -> Option<PoolId> {
    let c = &sh.counters;
    let _ = r.get_ref().set_read_timeout(Some(HANDSHAKE_TIMEOUT));
    let fail = |code, msg: &str| {
        let _ = send(w, Op::Error, 0, &proto::encode_error(code, msg), c);
    };
    let f = match proto::read_frame(r) {
        Ok(f) => f,
        Err(e) => {
            c.bad_frames.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(peer, error = %e, "bad handshake frame");
            fail(ErrorCode::BadFrame, &e.to_string());
            return None;
        }
    };
    c.bytes_in
        .fetch_add((HEADER_LEN + f.payload.len()) as u64, Ordering::Relaxed);
    if f.op != Op::Hello {
        tracing::warn!(peer, op = ?f.op, "expected HELLO");
        fail(ErrorCode::BadRequest, "expected HELLO");
        return None;
    }
    let (hello, lo, hi) = match Hello::decode(&f.payload) {
        Ok(h) => h,
        Err(e) => {
            tracing::warn!(peer, error = %e, "bad HELLO");
            fail(ErrorCode::BadFrame, &e.to_string());
            return None;
        }
    };
    if !(lo..=hi).contains(&VERSION) {
        tracing::warn!(peer, lo, hi, "no common protocol version");
        fail(
            ErrorCode::Unsupported,
            &format!("server speaks protocol version {VERSION} only"),
        );
        return None;
    }
    let mut nonce = [0u8; 32];
    if random_bytes(&mut nonce).is_err() {
        fail(ErrorCode::BadRequest, "server has no randomness");
        return None;
    }
    let (capacity, free) = {
        let s = lock(&sh.store);
        (s.capacity(), s.capacity() - s.used())
    };
    let ch = Challenge {
        nonce,
        proof: sh
            .cfg
            .key
            .proof(Role::Server, &hello.nonce, &nonce, &hello.pool),
        instance: sh.instance,
        capacity,
        free,
        max_payload: MAX_PAYLOAD,
        window: WINDOW,
    };
    if send(w, Op::Challenge, f.req_id, &ch.encode(), c).is_err() {
        return None;
    }
    let f = match proto::read_frame(r) {
        Ok(f) => f,
        Err(e) => {
            tracing::warn!(peer, error = %e, "handshake aborted by client");
            return None;
        }
    };
    match f.op {
        Op::Auth
            if sh
                .cfg
                .key
                .verify(Role::Client, &hello.nonce, &nonce, &hello.pool, &f.payload) => {}
        Op::Auth => {
            c.auth_failures.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(peer, client = %hello.name, "authentication failed: the client's proof does not match this server's key (wrong key?)");
            fail(
                ErrorCode::AuthFailed,
                "authentication failed: your proof does not match the server's key (wrong key?)",
            );
            return None;
        }
        Op::Error => {
            c.auth_failures.fetch_add(1, Ordering::Relaxed);
            let (_, msg) = proto::decode_error(&f.payload);
            tracing::warn!(peer, client = %hello.name, "client refused this server: {msg}");
            return None;
        }
        other => {
            tracing::warn!(peer, op = ?other, "expected AUTH");
            fail(ErrorCode::BadRequest, "expected AUTH");
            return None;
        }
    }
    let _ = r.get_ref().set_read_timeout(None);
    if send(w, Op::AuthOk, f.req_id, &[], c).is_err() {
        return None;
    }
    Some(hello.pool)
}

fn request_loop(
    sh: &Shared,
    r: &mut BufReader<TcpStream>,
    w: &Mutex<TcpStream>,
    pool: &PoolId,
) -> Result<(), ConnEnd> {
    let c = &sh.counters;
    // Per-connection buffers, reused for every frame.
    let mut inbuf: Vec<u8> = Vec::new();
    let mut outbuf: Vec<u8> = Vec::new();
    loop {
        let head = match proto::read_header(r) {
            Ok(h) => h,
            Err(ProtoError::Closed) => return Ok(()),
            Err(e) => return Err(classify(e)),
        };
        if head.op == Op::Put && crate::fault::hit("crash-at-put") {
            std::process::abort();
        }
        // The bulk of the traffic: PUT data goes straight into lent slots.
        if head.op == Op::Put
            && (16..=16 + MAX_OBJECT).contains(&head.len)
            && matches!(sh.lend_state(), LendState::Lending)
            && put_direct(sh, r, w, pool, &head)?
        {
            continue;
        }
        // PUT payloads are `generation, key, data`: keep the data's CRC for later GETs.
        let (op, req, len) = (head.op, head.req_id, head.len);
        let data_crc = match proto::read_payload(r, &mut inbuf, &head, 16) {
            Ok(x) => x,
            Err(ProtoError::Closed) => return Ok(()),
            Err(e) => return Err(classify(e)),
        };
        let f = FrameRef {
            op,
            payload: &inbuf[..len],
        };
        c.bytes_in
            .fetch_add((HEADER_LEN + len) as u64, Ordering::Relaxed);
        let reply =
            |op: Op, p: &[u8]| send(w, op, req, p, c).map_err(|e| ConnEnd::Io(e.to_string()));
        let err = |code: ErrorCode, msg: &str| {
            send(w, Op::Error, req, &proto::encode_error(code, msg), c)
                .map_err(|e| ConnEnd::Io(e.to_string()))
        };
        let mut cur = Cursor::new(f.payload, "request");
        match f.op {
            Op::Put => {
                let (generation, key) = (
                    cur.u64().map_err(ConnEnd::Bad)?,
                    cur.u64().map_err(ConnEnd::Bad)?,
                );
                let data = cur.rest();
                if data.len() > MAX_OBJECT {
                    err(
                        ErrorCode::BadRequest,
                        "object larger than the server's limit",
                    )?;
                    continue;
                }
                if !matches!(sh.lend_state(), LendState::Lending) {
                    err(
                        ErrorCode::Revoked,
                        "memory is being revoked; writes refused",
                    )?;
                    continue;
                }
                let res = lock(&sh.store).put(pool, generation, key, data, data_crc);
                match res {
                    Ok(()) => reply(Op::Ok, &[])?,
                    Err(e @ StoreError::NoSpace { .. }) => {
                        c.refused_full.fetch_add(1, Ordering::Relaxed);
                        err(ErrorCode::NoSpace, &e.to_string())?
                    }
                    Err(e) => err(ErrorCode::Revoked, &e.to_string())?,
                }
            }
            Op::Get => {
                let (generation, key) = (
                    cur.u64().map_err(ConnEnd::Bad)?,
                    cur.u64().map_err(ConnEnd::Bad)?,
                );
                cur.finish().map_err(ConnEnd::Bad)?;
                if crate::fault::hit("stall-get") {
                    // A hung peer: keep the connection open, answer nothing.
                    loop {
                        std::thread::sleep(Duration::from_secs(3600));
                    }
                }
                let got = lock(&sh.store).get_into(pool, generation, key, &mut outbuf);
                if let Some(b) = outbuf
                    .first_mut()
                    .filter(|_| got.is_some() && crate::fault::hit("corrupt-get"))
                {
                    *b ^= 0x20;
                }
                match got {
                    Some(crc) => send_crc(w, Op::Data, req, &outbuf, crc, c)
                        .map_err(|e| ConnEnd::Io(e.to_string()))?,
                    None => err(
                        ErrorCode::NotFound,
                        &format!("no object {key:#x} of generation {generation}"),
                    )?,
                }
            }
            Op::Commit => {
                let generation = cur.u64().map_err(ConnEnd::Bad)?;
                let m = cur.rest();
                if m.len() > MAX_MANIFEST {
                    err(ErrorCode::BadRequest, "manifest too large")?;
                    continue;
                }
                if !matches!(sh.lend_state(), LendState::Lending) {
                    err(
                        ErrorCode::Revoked,
                        "memory is being revoked; commits refused",
                    )?;
                    continue;
                }
                let res = lock(&sh.store).commit(pool, generation, m);
                if res.is_ok() && crate::fault::hit("crash-at-commit") {
                    std::process::abort();
                }
                match res {
                    Ok(()) => reply(Op::Ok, &[])?,
                    Err(e) => err(ErrorCode::NoSpace, &e.to_string())?,
                }
            }
            Op::GetManifest => {
                let generation = cur.u64().map_err(ConnEnd::Bad)?;
                cur.finish().map_err(ConnEnd::Bad)?;
                let got = lock(&sh.store).manifest(pool, generation);
                match got {
                    Some(d) => reply(Op::Data, &d)?,
                    None => err(
                        ErrorCode::NotFound,
                        &format!("generation {generation} is not committed here"),
                    )?,
                }
            }
            Op::List => {
                cur.finish().map_err(ConnEnd::Bad)?;
                let l = lock(&sh.store).list(pool);
                reply(Op::Gens, &proto::encode_gens(&l))?;
            }
            Op::Free => {
                let generation = cur.u64().map_err(ConnEnd::Bad)?;
                cur.finish().map_err(ConnEnd::Bad)?;
                lock(&sh.store).free_gen(pool, generation);
                reply(Op::Ok, &[])?;
            }
            Op::Release => {
                cur.finish().map_err(ConnEnd::Bad)?;
                lock(&sh.store).release_pool(pool);
                sh.tick();
                reply(Op::Ok, &[])?;
            }
            Op::Status => {
                cur.finish().map_err(ConnEnd::Bad)?;
                let state = sh.lend_state();
                let (capacity, used, pool_used) = {
                    let s = lock(&sh.store);
                    (s.capacity(), s.used(), s.pool_used(pool))
                };
                reply(
                    Op::StatusReply,
                    &Status {
                        capacity,
                        used,
                        pool_used,
                        state,
                    }
                    .encode(),
                )?;
            }
            other => return Err(ConnEnd::Bad(ProtoError::Malformed(op_name(other)))),
        }
    }
}

/// Receives a PUT's data directly into slots taken from the store (no copy on the server), checks
/// the frame checksum over them, and stores the object. Returns false, having read nothing of the
/// payload, when no slots are available: the ordinary path then reads the payload and answers
/// with the store's error.
fn put_direct(
    sh: &Shared,
    r: &mut BufReader<TcpStream>,
    w: &Mutex<TcpStream>,
    pool: &PoolId,
    head: &proto::Head,
) -> Result<bool, ConnEnd> {
    let c = &sh.counters;
    let data_len = head.len - 16;
    let Ok((mut slots, epoch)) = lock(&sh.store).take(data_len) else {
        return Ok(false);
    };
    let mut h16 = [0u8; 16];
    let mut crc = 0u32;
    let mut read = || -> Result<(), ProtoError> {
        proto::read_exact_payload(r, &mut h16)?;
        // One readv fills many slots: a read per 16 KiB slot would cost more than the copy saved.
        // The checksum runs over each piece as soon as it arrived, while it is still in cache,
        // instead of a second pass over the whole object from memory afterwards.
        read_exact_vectored_crc(r, &mut slots, data_len, &mut crc)
    };
    let mut res = read();
    if res.is_ok()
        && proto::crc32c_combine(rmem_client::crc::crc32c(&h16), crc, data_len) != head.payload_crc
    {
        res = Err(ProtoError::PayloadChecksum {
            op: head.op as u16,
            len: head.len as u32,
        });
    }
    if let Err(e) = res {
        lock(&sh.store).give_back(slots, epoch);
        return Err(match e {
            ProtoError::Closed => ConnEnd::Io("closed by peer".into()),
            e => classify(e),
        });
    }
    c.bytes_in
        .fetch_add((HEADER_LEN + head.len) as u64, Ordering::Relaxed);
    let generation = u64::from_le_bytes(h16[..8].try_into().unwrap_or([0; 8]));
    let key = u64::from_le_bytes(h16[8..].try_into().unwrap_or([0; 8]));
    let res = lock(&sh.store).insert(pool, generation, key, slots, epoch, data_len, crc);
    let sent = match res {
        Ok(()) => send(w, Op::Ok, head.req_id, &[], c),
        Err(e) => send(
            w,
            Op::Error,
            head.req_id,
            &proto::encode_error(ErrorCode::Revoked, &e.to_string()),
            c,
        ),
    };
    sent.map_err(|e| ConnEnd::Io(e.to_string()))?;
    Ok(true)
}

/// Fills the first `len` bytes of `slots` with `readv` calls (an early end being a closed
/// connection), extending `crc` (CRC32C) over each piece right after it arrived.
fn read_exact_vectored_crc<R: Read>(
    r: &mut R,
    slots: &mut [Box<[u8]>],
    len: usize,
    crc: &mut u32,
) -> Result<(), ProtoError> {
    let slot = crate::store::SLOT;
    let mut done = 0;
    while done < len {
        let (first, off) = (done / slot, done % slot);
        let mut left = len - done;
        let n = {
            let mut bufs: Vec<IoSliceMut<'_>> = Vec::with_capacity(slots.len() - first);
            for (i, s) in slots[first..].iter_mut().enumerate() {
                if left == 0 {
                    break;
                }
                let from = if i == 0 { off } else { 0 };
                let n = left.min(slot - from);
                left -= n;
                bufs.push(IoSliceMut::new(&mut s[from..from + n]));
            }
            match r.read_vectored(&mut bufs) {
                Ok(0) => return Err(ProtoError::Closed),
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(ProtoError::Io(e)),
            }
        };
        let mut at = done;
        while at < done + n {
            let (i, o) = (at / slot, at % slot);
            let m = (slot - o).min(done + n - at);
            *crc = rmem_client::crc::crc32c_append(*crc, &slots[i][o..o + m]);
            at += m;
        }
        done += n;
    }
    Ok(())
}

/// A frame borrowed from the connection's buffer.
struct FrameRef<'a> {
    op: Op,
    payload: &'a [u8],
}

fn op_name(op: Op) -> &'static str {
    match op {
        Op::Hello | Op::Auth => "handshake frame after the handshake",
        _ => "request (a response opcode sent to the server)",
    }
}
