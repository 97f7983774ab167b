//! One authenticated connection to an rmem-server: handshake, pipelined requests, flow control.
//!
//! Thread-free and synchronous by design so that a forked child (which has no other threads) can
//! write a checkpoint on it. Requests are written back to back; responses come in request order
//! and are matched against a queue of pending request ids, so a reordered, replayed or forged
//! response is a protocol violation that closes the connection. The number of unanswered request
//! bytes is bounded by the window the server advertised: before exceeding it the client reads
//! acknowledgements, which keeps both sides' buffers bounded and avoids a write/write deadlock.

use std::collections::VecDeque;
use std::io::{BufReader, BufWriter, IoSlice, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use crate::auth::{Psk, Role, random_bytes};
use crate::backend::{BResult, Backend, BackendError};
use crate::proto::{
    self, Challenge, ErrorCode, Frame, GenEntry, HEADER_LEN, Hello, InstanceId, LendState,
    NONCE_LEN, Op, PoolId, Status,
};

/// Writes every slice, header and bulk data together: one `writev` instead of a tiny segment
/// for the header followed by the payload.
fn write_all_vectored<W: Write>(w: &mut W, mut bufs: &mut [IoSlice<'_>]) -> std::io::Result<()> {
    IoSlice::advance_slices(&mut bufs, 0);
    while !bufs.is_empty() {
        match w.write_vectored(bufs) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => IoSlice::advance_slices(&mut bufs, n),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// How to reach and authenticate to one server.
#[derive(Debug, Clone)]
pub struct ConnConfig {
    pub key: Psk,
    pub pool: PoolId,
    pub name: String,
    pub connect_timeout: Duration,
    /// Longest wait for any single read or write; a silent peer counts as down after it.
    pub io_timeout: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Put,
    Get,
}

#[derive(Debug)]
struct Pending {
    req: u64,
    kind: Kind,
    bytes: u64,
    /// (generation, key) of the object a put or get names.
    obj: (u64, u64),
}

/// An authenticated connection.
#[derive(Debug)]
pub struct Conn {
    addr: String,
    w: BufWriter<TcpStream>,
    r: BufReader<TcpStream>,
    next_req: u64,
    pending: VecDeque<Pending>,
    outstanding: u64,
    window: u64,
    /// Results of pipelined gets that arrived while waiting for something else.
    gets_done: VecDeque<BResult<(Vec<u8>, u32)>>,
    /// First failure among pipelined puts not yet reported by `sync`.
    put_error: Option<BackendError>,
    /// Objects whose pipelined put was refused (the others were stored).
    failed_puts: Vec<(u64, u64)>,
    puts_sent: u64,
    puts_acked: u64,
    /// Sticky: once the connection is broken every call fails with this.
    dead: Option<BackendError>,
    pub instance: InstanceId,
    pub capacity: u64,
    pub free_at_connect: u64,
    /// Set when the server announced a revocation: when its deadline falls.
    pub revoke_deadline: Option<Instant>,
}

impl Conn {
    /// Connects and runs the mutual PSK handshake. A wrong key fails here, on both sides, with a
    /// message saying so.
    pub fn connect(addr: &str, cfg: &ConnConfig) -> BResult<Conn> {
        let down = |msg: String| BackendError::Down {
            target: addr.to_string(),
            msg,
        };
        let sa = addr
            .to_socket_addrs()
            .map_err(|e| down(format!("cannot resolve: {e}")))?
            .next()
            .ok_or_else(|| down("address resolves to nothing".into()))?;
        let s = TcpStream::connect_timeout(&sa, cfg.connect_timeout)
            .map_err(|e| down(format!("connect: {e}")))?;
        let _ = s.set_nodelay(true);
        s.set_read_timeout(Some(cfg.io_timeout))
            .map_err(|e| down(e.to_string()))?;
        s.set_write_timeout(Some(cfg.io_timeout))
            .map_err(|e| down(e.to_string()))?;
        let sock = socket2::SockRef::from(&s);
        // Large buffers let a whole shard sit in the kernel while we move on to the next server.
        let _ = sock.set_send_buffer_size(4 << 20);
        let _ = sock.set_recv_buffer_size(4 << 20);
        // Small buffers: they batch headers and acknowledgements; bulk payloads bypass them
        // (a large buffer would only add a copy of whatever part of a payload it happened to hold).
        let r = BufReader::with_capacity(16 << 10, s.try_clone().map_err(|e| down(e.to_string()))?);
        let w = BufWriter::with_capacity(16 << 10, s);
        let mut c = Conn {
            addr: addr.to_string(),
            w,
            r,
            next_req: 1,
            pending: VecDeque::new(),
            outstanding: 0,
            window: 8 << 20,
            gets_done: VecDeque::new(),
            put_error: None,
            failed_puts: Vec::new(),
            puts_sent: 0,
            puts_acked: 0,
            dead: None,
            instance: [0; 16],
            capacity: 0,
            free_at_connect: 0,
            revoke_deadline: None,
        };
        c.handshake(cfg)?;
        Ok(c)
    }

    pub fn addr(&self) -> &str {
        &self.addr
    }

    fn handshake(&mut self, cfg: &ConnConfig) -> BResult<()> {
        let mut cn = [0u8; NONCE_LEN];
        random_bytes(&mut cn).map_err(|e| self.fail(e.to_string()))?;
        let hello = Hello {
            pool: cfg.pool,
            nonce: cn,
            name: cfg.name.clone(),
        };
        self.write(Op::Hello, 0, &[&hello.encode()])?;
        self.flush()?;
        let f = self.read()?;
        let ch = match f.op {
            Op::Challenge => Challenge::decode(&f.payload).map_err(|e| self.fail(e.to_string()))?,
            Op::Error => return Err(self.server_error(&f.payload)),
            op => return Err(self.fail(format!("expected CHALLENGE, got {op:?}"))),
        };
        if !cfg
            .key
            .verify(Role::Server, &cn, &ch.nonce, &cfg.pool, &ch.proof)
        {
            // Tell the server why we leave, so its log says "wrong key" too.
            let msg = "the server's proof does not match the client's key (wrong key?)";
            let _ = self.write(
                Op::Error,
                0,
                &[&proto::encode_error(ErrorCode::AuthFailed, msg)],
            );
            let _ = self.flush();
            let e = BackendError::Auth {
                target: self.addr.clone(),
                msg: msg.into(),
            };
            self.dead = Some(e.clone());
            return Err(e);
        }
        let proof = cfg.key.proof(Role::Client, &cn, &ch.nonce, &cfg.pool);
        self.write(Op::Auth, 0, &[&proof])?;
        self.flush()?;
        let f = self.read()?;
        match f.op {
            Op::AuthOk => {}
            Op::Error => return Err(self.server_error(&f.payload)),
            op => return Err(self.fail(format!("expected AUTH_OK, got {op:?}"))),
        }
        self.instance = ch.instance;
        self.capacity = ch.capacity;
        self.free_at_connect = ch.free;
        // Stay inside what the server accepts; 16 MiB also bounds what a writer keeps in memory
        // for unacknowledged shards on this connection.
        self.window = u64::from(ch.window).clamp(1 << 20, 16 << 20);
        Ok(())
    }

    fn fail(&mut self, msg: String) -> BackendError {
        let e = BackendError::Down {
            target: self.addr.clone(),
            msg,
        };
        self.dead = Some(e.clone());
        e
    }

    fn server_error(&mut self, payload: &[u8]) -> BackendError {
        let (code, msg) = proto::decode_error(payload);
        let target = self.addr.clone();
        let e = match code {
            Some(ErrorCode::AuthFailed) => BackendError::Auth { target, msg },
            Some(ErrorCode::NotFound) => BackendError::NotFound { target, what: msg },
            Some(ErrorCode::NoSpace) => BackendError::NoSpace { target, msg },
            Some(ErrorCode::Revoked) => BackendError::Revoked { target, msg },
            Some(ErrorCode::BadRequest) => BackendError::Refused { target, msg },
            _ => BackendError::Down {
                target,
                msg: format!("server error: {msg}"),
            },
        };
        if e.is_down() {
            self.dead = Some(e.clone());
        }
        e
    }

    fn check(&self) -> BResult<()> {
        match &self.dead {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        }
    }

    fn write(&mut self, op: Op, req: u64, parts: &[&[u8]]) -> BResult<()> {
        let r = proto::write_frame(&mut self.w, op, req, parts);
        r.map_err(|e| self.fail(format!("write: {e}")))
    }

    fn flush(&mut self) -> BResult<()> {
        let r = self.w.flush();
        r.map_err(|e| self.fail(format!("write: {e}")))
    }

    /// Reads the next frame, handling unsolicited notices on the way.
    fn read(&mut self) -> BResult<Frame> {
        loop {
            let f = proto::read_frame(&mut self.r);
            let f = f.map_err(|e| self.fail(format!("read: {e}")))?;
            if f.op == Op::RevokeNotice && f.req_id == 0 {
                let ms = f
                    .payload
                    .get(..8)
                    .map(|b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])))
                    .unwrap_or(0);
                tracing::warn!(server = %self.addr, deadline_ms = ms, "server is revoking its memory");
                self.revoke_deadline = Some(Instant::now() + Duration::from_millis(ms));
                continue;
            }
            if f.op == Op::Error && f.req_id == 0 {
                return Err(self.server_error(&f.payload));
            }
            return Ok(f);
        }
    }

    /// Sends a request and remembers it as pending.
    fn send(&mut self, op: Op, kind: Kind, obj: (u64, u64), parts: &[&[u8]]) -> BResult<u64> {
        self.send_crc(op, kind, obj, parts, None)
    }

    /// `send` with an optional precomputed payload checksum (puts of shards whose CRC the writer
    /// already computed for the manifest: the bulk data is then checksummed once, not twice).
    fn send_crc(
        &mut self,
        op: Op,
        kind: Kind,
        obj: (u64, u64),
        parts: &[&[u8]],
        crc: Option<u32>,
    ) -> BResult<u64> {
        self.check()?;
        let bytes = (HEADER_LEN + parts.iter().map(|p| p.len()).sum::<usize>()) as u64;
        // Flow control: keep unanswered request bytes under the window.
        while self.outstanding + bytes > self.window && !self.pending.is_empty() {
            self.recv_one()?;
        }
        let req = self.next_req;
        self.next_req += 1;
        match crc {
            None => self.write(op, req, parts)?,
            Some(crc) => {
                let len = parts.iter().map(|p| p.len()).sum();
                let h = proto::FrameHeader::with_crc(op, req, len, crc).to_bytes();
                let mut bufs: Vec<IoSlice<'_>> = Vec::with_capacity(parts.len() + 1);
                bufs.push(IoSlice::new(&h));
                bufs.extend(parts.iter().map(|p| IoSlice::new(p)));
                let r = write_all_vectored(&mut self.w, &mut bufs);
                r.map_err(|e| self.fail(format!("write: {e}")))?;
            }
        }
        self.pending.push_back(Pending {
            req,
            kind,
            bytes,
            obj,
        });
        self.outstanding += bytes;
        Ok(req)
    }

    /// Receives the response to the oldest pending request and files it.
    fn recv_one(&mut self) -> BResult<()> {
        self.flush()?;
        let f = self.read()?;
        let Some(p) = self.pending.pop_front() else {
            return Err(self.fail(format!("unsolicited response {:?} id {}", f.op, f.req_id)));
        };
        if f.req_id != p.req {
            return Err(self.fail(format!(
                "response id {} where {} was expected (reordered or replayed frame)",
                f.req_id, p.req
            )));
        }
        self.outstanding -= p.bytes;
        match (p.kind, f.op) {
            (Kind::Put, Op::Ok) => self.puts_acked += 1,
            (Kind::Put, Op::Error) => {
                self.puts_acked += 1;
                let e = self.server_error(&f.payload);
                self.put_error.get_or_insert(e.clone());
                self.failed_puts.push(p.obj);
                if e.is_down() {
                    return Err(e);
                }
            }
            (Kind::Get, Op::Data) => self.gets_done.push_back(Ok((f.payload, f.crc))),
            (Kind::Get, Op::Error) => {
                let e = self.server_error(&f.payload);
                if e.is_down() {
                    return Err(e);
                }
                self.gets_done.push_back(Err(e));
            }
            (_, op) => return Err(self.fail(format!("unexpected response {op:?}"))),
        }
        Ok(())
    }

    /// Waits for every pending request to be answered.
    fn drain(&mut self) -> BResult<()> {
        while self.pending.iter().any(|p| p.kind == Kind::Put) {
            self.recv_one()?;
        }
        Ok(())
    }

    /// A synchronous request after all pipelined ones; returns the reply frame.
    fn call(&mut self, op: Op, parts: &[&[u8]]) -> BResult<Frame> {
        self.check()?;
        // Pending gets must be collected by their caller first; pending puts are drained here.
        if self.pending.iter().any(|p| p.kind == Kind::Get) {
            return Err(BackendError::Refused {
                target: self.addr.clone(),
                msg: "call with reads in flight".into(),
            });
        }
        self.drain()?;
        let req = self.next_req;
        self.next_req += 1;
        self.write(op, req, parts)?;
        self.flush()?;
        let f = self.read()?;
        if f.req_id != req {
            return Err(self.fail(format!(
                "response id {} where {req} was expected (reordered or replayed frame)",
                f.req_id
            )));
        }
        if f.op == Op::Error {
            return Err(self.server_error(&f.payload));
        }
        Ok(f)
    }

    fn expect(&mut self, f: Frame, op: Op) -> BResult<Vec<u8>> {
        if f.op == op {
            Ok(f.payload)
        } else {
            Err(self.fail(format!("expected {op:?}, got {:?}", f.op)))
        }
    }

    /// Frees everything this pool holds on the server (answer to a revocation).
    pub fn release(&mut self) -> BResult<()> {
        let f = self.call(Op::Release, &[])?;
        self.expect(f, Op::Ok).map(|_| ())
    }

    /// True once the connection is unusable.
    pub fn is_dead(&self) -> bool {
        self.dead.is_some()
    }
}

impl Backend for Conn {
    fn name(&self) -> String {
        self.addr.clone()
    }

    fn put(&mut self, generation: u64, key: u64, data: &[u8]) -> BResult<()> {
        self.put_crc(generation, key, data, crate::crc::crc32c(data))
    }

    fn put_crc(&mut self, generation: u64, key: u64, data: &[u8], crc: u32) -> BResult<()> {
        let mut h = [0u8; 16];
        h[..8].copy_from_slice(&generation.to_le_bytes());
        h[8..].copy_from_slice(&key.to_le_bytes());
        // A refused earlier put (no space, revoked) is reported now, before sending more, so
        // the writer can send the rest elsewhere. It stays pending for `sync` as well.
        if let Some(e) = &self.put_error {
            return Err(e.clone());
        }
        let frame_crc = proto::crc32c_combine(crate::crc::crc32c(&h), crc, data.len());
        self.send_crc(
            Op::Put,
            Kind::Put,
            (generation, key),
            &[&h, data],
            Some(frame_crc),
        )?;
        self.puts_sent += 1;
        Ok(())
    }

    fn take_failed_puts(&mut self) -> Vec<(u64, u64)> {
        std::mem::take(&mut self.failed_puts)
    }

    fn puts_sent(&self) -> u64 {
        self.puts_sent
    }

    fn puts_acked(&self) -> u64 {
        // While a refusal is unreported, nothing counts as acknowledged: the refused shard must
        // still be at hand when the writer learns about it.
        if self.failed_puts.is_empty() {
            self.puts_acked
        } else {
            0
        }
    }

    fn sync(&mut self) -> BResult<()> {
        self.check()?;
        self.drain()?;
        self.flush()?;
        match self.put_error.take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    fn send_get(&mut self, generation: u64, key: u64) -> BResult<()> {
        let mut h = [0u8; 16];
        h[..8].copy_from_slice(&generation.to_le_bytes());
        h[8..].copy_from_slice(&key.to_le_bytes());
        self.send(Op::Get, Kind::Get, (generation, key), &[&h])
            .map(|_| ())
    }

    fn flush_requests(&mut self) -> BResult<()> {
        self.flush()
    }

    fn recv_get(&mut self) -> BResult<Vec<u8>> {
        self.recv_get_crc().map(|(d, _)| d)
    }

    fn recv_get_crc(&mut self) -> BResult<(Vec<u8>, u32)> {
        loop {
            if let Some(r) = self.gets_done.pop_front() {
                return r;
            }
            self.check()?;
            if self.pending.is_empty() {
                return Err(BackendError::Refused {
                    target: self.addr.clone(),
                    msg: "recv_get without send_get".into(),
                });
            }
            self.recv_one()?;
        }
    }

    fn commit(&mut self, generation: u64, manifest: &[u8]) -> BResult<()> {
        let f = self.call(Op::Commit, &[&generation.to_le_bytes(), manifest])?;
        self.expect(f, Op::Ok).map(|_| ())
    }

    fn manifest(&mut self, generation: u64) -> BResult<Vec<u8>> {
        let f = self.call(Op::GetManifest, &[&generation.to_le_bytes()])?;
        self.expect(f, Op::Data)
    }

    fn list(&mut self) -> BResult<Vec<GenEntry>> {
        let f = self.call(Op::List, &[])?;
        let p = self.expect(f, Op::Gens)?;
        proto::decode_gens(&p).map_err(|e| self.fail(e.to_string()))
    }

    fn free(&mut self, generation: u64) -> BResult<()> {
        let f = self.call(Op::Free, &[&generation.to_le_bytes()])?;
        self.expect(f, Op::Ok).map(|_| ())
    }

    fn status(&mut self) -> BResult<Status> {
        let f = self.call(Op::Status, &[])?;
        let p = self.expect(f, Op::StatusReply)?;
        let st = Status::decode(&p).map_err(|e| self.fail(e.to_string()))?;
        match st.state {
            LendState::Revoking { deadline_ms } => {
                let d = Instant::now() + Duration::from_millis(deadline_ms);
                self.revoke_deadline = Some(self.revoke_deadline.map_or(d, |x| x.min(d)));
            }
            LendState::Revoked => {
                self.revoke_deadline.get_or_insert_with(Instant::now);
            }
            LendState::Lending => self.revoke_deadline = None,
        }
        Ok(st)
    }
}
