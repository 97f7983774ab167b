//! Wire format of the rmem protocol: fixed 32-byte frame headers, opcodes, payload codecs, limits.
//!
//! Every frame is `header (32 bytes) || payload (len bytes)`. The header carries a magic, a
//! version, the opcode, a request id (responses echo it; pipelining needs no round trip per
//! request), the payload length, a CRC32C of the payload and a CRC32C of the header itself.
//! Anything read from the wire is bounded by [`MAX_PAYLOAD`] before a byte of payload is
//! allocated. The full description lives in `rmem-client/PROTOCOL.md`; keep both in step.

use std::io::{self, Read, Write};

use zerocopy::byteorder::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// `b"RMEM"` read as a little-endian u32.
pub const MAGIC: u32 = u32::from_le_bytes(*b"RMEM");
/// Frame-format version. A peer seeing another version closes the connection.
pub const VERSION: u16 = 1;
/// Size of [`FrameHeader`] on the wire.
pub const HEADER_LEN: usize = 32;
/// Upper bound on any payload: a 4 MiB shard plus its small request header. Larger frames are
/// refused before allocation, so a hostile peer cannot make either side allocate unboundedly.
pub const MAX_PAYLOAD: u32 = (4 << 20) + 4096;
/// Largest shard a client may store in one object (what fits in one PUT payload).
pub const MAX_OBJECT: usize = 4 << 20;
/// Largest committed manifest accepted by a server.
pub const MAX_MANIFEST: usize = 4 << 20;
/// Length of the random nonces exchanged in the handshake and of the HMAC proofs.
pub const NONCE_LEN: usize = 32;
/// Pools are namespaces on a server; clients pick a 16-byte id.
pub type PoolId = [u8; 16];
/// Random per-process identity of a server: a restarted server has lost its memory, and a new id
/// tells the client so.
pub type InstanceId = [u8; 16];

/// Opcodes. Requests have the high bit clear, responses and notices have it set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum Op {
    Hello = 0x01,
    Auth = 0x03,
    Put = 0x10,
    Get = 0x11,
    Commit = 0x12,
    GetManifest = 0x13,
    List = 0x14,
    Free = 0x15,
    Status = 0x16,
    Release = 0x17,
    Challenge = 0x82,
    AuthOk = 0x84,
    Ok = 0x90,
    Data = 0x91,
    Gens = 0x92,
    StatusReply = 0x93,
    Error = 0x9F,
    /// Unsolicited (request id 0): the server is taking its memory back before a deadline.
    RevokeNotice = 0xA0,
}

impl Op {
    pub fn from_u16(v: u16) -> Option<Op> {
        use Op::*;
        Some(match v {
            0x01 => Hello,
            0x03 => Auth,
            0x10 => Put,
            0x11 => Get,
            0x12 => Commit,
            0x13 => GetManifest,
            0x14 => List,
            0x15 => Free,
            0x16 => Status,
            0x17 => Release,
            0x82 => Challenge,
            0x84 => AuthOk,
            0x90 => Ok,
            0x91 => Data,
            0x92 => Gens,
            0x93 => StatusReply,
            0x9F => Error,
            0xA0 => RevokeNotice,
            _ => return None,
        })
    }
}

/// Error codes carried by `Op::Error` frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum ErrorCode {
    BadFrame = 1,
    AuthFailed = 2,
    NoSpace = 3,
    NotFound = 4,
    Revoked = 5,
    TooManyClients = 6,
    BadRequest = 7,
    Unsupported = 8,
    ShuttingDown = 9,
}

impl ErrorCode {
    pub fn from_u32(v: u32) -> Option<ErrorCode> {
        use ErrorCode::*;
        Some(match v {
            1 => BadFrame,
            2 => AuthFailed,
            3 => NoSpace,
            4 => NotFound,
            5 => Revoked,
            6 => TooManyClients,
            7 => BadRequest,
            8 => Unsupported,
            9 => ShuttingDown,
            _ => return None,
        })
    }
}

/// Errors of frame encoding and decoding.
#[derive(Debug, thiserror::Error)]
pub enum ProtoError {
    #[error("i/o error on the connection: {0}")]
    Io(#[from] io::Error),
    #[error("peer closed the connection")]
    Closed,
    #[error("bad magic {0:#010x} (not an rmem peer?)")]
    BadMagic(u32),
    #[error("unsupported frame version {0} (this side speaks {VERSION})")]
    BadVersion(u16),
    #[error("frame header checksum mismatch")]
    HeaderChecksum,
    #[error("frame payload checksum mismatch (op {op:#x}, {len} bytes)")]
    PayloadChecksum { op: u16, len: u32 },
    #[error("frame payload of {0} bytes exceeds the limit of {MAX_PAYLOAD}")]
    Oversized(u32),
    #[error("unknown opcode {0:#x}")]
    UnknownOp(u16),
    #[error("malformed {0} payload")]
    Malformed(&'static str),
}

/// The fixed frame header, laid out exactly as on the wire (little-endian).
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct FrameHeader {
    pub magic: U32,
    pub version: U16,
    pub op: U16,
    pub req_id: U64,
    pub len: U32,
    pub payload_crc: U32,
    pub reserved: U32,
    pub header_crc: U32,
}

const _: () = assert!(std::mem::size_of::<FrameHeader>() == HEADER_LEN);

impl FrameHeader {
    /// Builds a header for `payload`, already checksummed. The payload may be given in parts
    /// (request fields, then bulk bytes) so that bulk data is never copied to be framed.
    pub fn new(op: Op, req_id: u64, parts: &[&[u8]]) -> FrameHeader {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        let mut crc = 0u32;
        for p in parts {
            crc = crate::crc::crc32c_append(crc, p);
        }
        let mut h = FrameHeader {
            magic: MAGIC.into(),
            version: VERSION.into(),
            op: (op as u16).into(),
            req_id: req_id.into(),
            len: (len as u32).into(),
            payload_crc: crc.into(),
            reserved: 0.into(),
            header_crc: 0.into(),
        };
        h.header_crc = crate::crc::crc32c(&h.as_bytes()[..HEADER_LEN - 4]).into();
        h
    }

    /// The header's wire bytes.
    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b.copy_from_slice(self.as_bytes());
        b
    }

    /// A header whose payload checksum the caller already has (`crc` of all payload parts).
    pub fn with_crc(op: Op, req_id: u64, len: usize, crc: u32) -> FrameHeader {
        let mut h = FrameHeader::new(op, req_id, &[]);
        h.len = (len as u32).into();
        h.payload_crc = crc.into();
        h.header_crc = crate::crc::crc32c(&h.as_bytes()[..HEADER_LEN - 4]).into();
        h
    }

    /// Validates magic, version, header checksum and size bound.
    pub fn check(bytes: &[u8; HEADER_LEN]) -> Result<FrameHeader, ProtoError> {
        let h = FrameHeader::read_from_bytes(bytes).map_err(|_| ProtoError::Malformed("header"))?;
        if h.magic.get() != MAGIC {
            return Err(ProtoError::BadMagic(h.magic.get()));
        }
        if crate::crc::crc32c(&bytes[..HEADER_LEN - 4]) != h.header_crc.get() {
            return Err(ProtoError::HeaderChecksum);
        }
        if h.version.get() != VERSION {
            return Err(ProtoError::BadVersion(h.version.get()));
        }
        if h.len.get() > MAX_PAYLOAD {
            return Err(ProtoError::Oversized(h.len.get()));
        }
        Ok(h)
    }
}

/// One decoded frame.
#[derive(Debug)]
pub struct Frame {
    pub op: Op,
    pub req_id: u64,
    pub payload: Vec<u8>,
    /// CRC32C of the payload (verified), so callers need not checksum it again.
    pub crc: u32,
}

/// Writes one frame whose payload is the concatenation of `parts`.
pub fn write_frame<W: Write>(
    w: &mut W,
    op: Op,
    req_id: u64,
    parts: &[&[u8]],
) -> Result<(), ProtoError> {
    let h = FrameHeader::new(op, req_id, parts);
    w.write_all(h.as_bytes())?;
    for p in parts {
        w.write_all(p)?;
    }
    Ok(())
}

/// Reads one frame into `buf`, reusing its allocation (a fresh 1 MiB buffer per frame costs
/// page faults and zeroing on every shard). Returns (op, request id, payload length); the
/// payload is `&buf[..len]`. Bounds are checked before the buffer grows.
pub fn read_frame_into<R: Read>(
    r: &mut R,
    buf: &mut Vec<u8>,
) -> Result<(Op, u64, usize), ProtoError> {
    read_frame_split(r, buf, 0).map(|(op, req, len, _)| (op, req, len))
}

/// [`read_frame_into`] that also returns the CRC32C of the payload from byte `split` on (0 if
/// the payload is shorter), at no extra pass: the two parts' CRCs are combined for the check.
/// A server keeps the CRC of a PUT's data so its GET replies need not checksum it again.
pub fn read_frame_split<R: Read>(
    r: &mut R,
    buf: &mut Vec<u8>,
    split: usize,
) -> Result<(Op, u64, usize, u32), ProtoError> {
    let h = read_header(r)?;
    let tail = read_payload(r, buf, &h, split)?;
    Ok((h.op, h.req_id, h.len, tail))
}

/// A checked frame header: what is known before the payload is read.
#[derive(Debug, Clone, Copy)]
pub struct Head {
    pub op: Op,
    pub req_id: u64,
    pub len: usize,
    pub payload_crc: u32,
}

/// Reads and checks a frame header (magic, checksum, version, size bound, opcode), so that the
/// caller can choose where the payload goes.
pub fn read_header<R: Read>(r: &mut R) -> Result<Head, ProtoError> {
    let mut hb = [0u8; HEADER_LEN];
    read_exact_or_closed(r, &mut hb)?;
    let h = FrameHeader::check(&hb)?;
    let op = Op::from_u16(h.op.get()).ok_or(ProtoError::UnknownOp(h.op.get()))?;
    Ok(Head {
        op,
        req_id: h.req_id.get(),
        len: h.len.get() as usize,
        payload_crc: h.payload_crc.get(),
    })
}

/// CRC32C of `a || b` from `crc32c(a)`, `crc32c(b)` and `b.len()`, in O(log len) steps using a
/// table of x^(2^n) mod P (zlib 1.2.12's method). The `crc32c` crate's combine squares 32x32
/// bit matrices ~20 times for a megabyte, which costs about as much as checksumming the
/// megabyte itself; this one is a few dozen shift-and-XOR rounds per set bit of the length.
pub fn crc32c_combine(crc1: u32, crc2: u32, len2: usize) -> u32 {
    if len2 == 0 {
        return crc1;
    }
    mult_mod_p(x8n_mod_p(len2), crc1) ^ crc2
}

/// Reflected CRC32C polynomial.
const POLY: u32 = 0x82F6_3B78;

/// a * b modulo the CRC polynomial (reflected bit order: bit 31 is x^0).
pub(crate) const fn mult_mod_p(a: u32, mut b: u32) -> u32 {
    let mut m = 1u32 << 31;
    let mut p = 0u32;
    loop {
        if a & m != 0 {
            p ^= b;
            if a & (m - 1) == 0 {
                break;
            }
        }
        m >>= 1;
        b = if b & 1 != 0 { (b >> 1) ^ POLY } else { b >> 1 };
    }
    p
}

/// X2N[n] = x^(2^n) mod P, for every bit of a byte count times 8.
pub(crate) const X2N: [u32; 67] = {
    let mut t = [0u32; 67];
    let mut p = 1u32 << 30; // x^1
    t[0] = p;
    let mut n = 1;
    while n < 67 {
        p = mult_mod_p(p, p);
        t[n] = p;
        n += 1;
    }
    t
};

/// x^(8 * n) mod P: the operator appending n zero bytes.
fn x8n_mod_p(mut n: usize) -> u32 {
    let mut p = 1u32 << 31; // x^0
    let mut k = 3;
    while n != 0 {
        if n & 1 != 0 {
            p = mult_mod_p(X2N[k], p);
        }
        n >>= 1;
        k += 1;
    }
    p
}

/// Reads the payload announced by `h` into `buf` and checks it; returns the CRC32C of the part
/// from byte `split` on.
pub fn read_payload<R: Read>(
    r: &mut R,
    buf: &mut Vec<u8>,
    h: &Head,
    split: usize,
) -> Result<u32, ProtoError> {
    let len = h.len;
    if buf.len() < len {
        buf.resize(len, 0);
    }
    read_exact_payload(r, &mut buf[..len])?;
    let cut = split.min(len);
    let tail = crate::crc::crc32c(&buf[cut..len]);
    let whole = crc32c_combine(crate::crc::crc32c(&buf[..cut]), tail, len - cut);
    if whole != h.payload_crc {
        return Err(ProtoError::PayloadChecksum {
            op: h.op as u16,
            len: len as u32,
        });
    }
    Ok(tail)
}

/// `read_exact` where an early end is a closed connection.
pub fn read_exact_payload<R: Read>(r: &mut R, buf: &mut [u8]) -> Result<(), ProtoError> {
    r.read_exact(buf).map_err(|e| {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            ProtoError::Closed
        } else {
            ProtoError::Io(e)
        }
    })
}

/// Reads one frame, checking every bound before allocating.
pub fn read_frame<R: Read>(r: &mut R) -> Result<Frame, ProtoError> {
    let mut hb = [0u8; HEADER_LEN];
    read_exact_or_closed(r, &mut hb)?;
    let h = FrameHeader::check(&hb)?;
    let op = Op::from_u16(h.op.get()).ok_or(ProtoError::UnknownOp(h.op.get()))?;
    let len = h.len.get();
    let mut payload = crate::bufpool::take(len as usize);
    r.read_exact(&mut payload).map_err(|e| {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            ProtoError::Closed
        } else {
            ProtoError::Io(e)
        }
    })?;
    if crate::crc::crc32c(&payload) != h.payload_crc.get() {
        return Err(ProtoError::PayloadChecksum {
            op: h.op.get(),
            len,
        });
    }
    Ok(Frame {
        op,
        crc: h.payload_crc.get(),
        req_id: h.req_id.get(),
        payload,
    })
}

fn read_exact_or_closed<R: Read>(r: &mut R, buf: &mut [u8]) -> Result<(), ProtoError> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => return Err(ProtoError::Closed),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(ProtoError::Io(e)),
        }
    }
    Ok(())
}

/// Little-endian field reader over a payload; every read is bounds-checked.
#[derive(Debug)]
pub struct Cursor<'a> {
    buf: &'a [u8],
    what: &'static str,
}

impl<'a> Cursor<'a> {
    pub fn new(buf: &'a [u8], what: &'static str) -> Self {
        Cursor { buf, what }
    }
    pub fn bytes(&mut self, n: usize) -> Result<&'a [u8], ProtoError> {
        if self.buf.len() < n {
            return Err(ProtoError::Malformed(self.what));
        }
        let (a, b) = self.buf.split_at(n);
        self.buf = b;
        Ok(a)
    }
    pub fn array<const N: usize>(&mut self) -> Result<[u8; N], ProtoError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.bytes(N)?);
        Ok(a)
    }
    pub fn u8(&mut self) -> Result<u8, ProtoError> {
        Ok(self.bytes(1)?[0])
    }
    pub fn u16(&mut self) -> Result<u16, ProtoError> {
        Ok(u16::from_le_bytes(self.array()?))
    }
    pub fn u32(&mut self) -> Result<u32, ProtoError> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    pub fn u64(&mut self) -> Result<u64, ProtoError> {
        Ok(u64::from_le_bytes(self.array()?))
    }
    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.buf)
    }
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }
    /// Fails if bytes remain: trailing garbage is a malformed payload, not something to ignore.
    pub fn finish(self) -> Result<(), ProtoError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(ProtoError::Malformed(self.what))
        }
    }
}

/// `HELLO`: the client's opening message.
#[derive(Debug, Clone)]
pub struct Hello {
    pub pool: PoolId,
    pub nonce: [u8; NONCE_LEN],
    pub name: String,
}

impl Hello {
    pub fn encode(&self) -> Vec<u8> {
        let name = &self.name.as_bytes()[..self.name.len().min(255)];
        let mut v = Vec::with_capacity(16 + NONCE_LEN + 2 + name.len() + 4);
        v.extend_from_slice(&VERSION.to_le_bytes()); // lowest version spoken
        v.extend_from_slice(&VERSION.to_le_bytes()); // highest version spoken
        v.extend_from_slice(&self.pool);
        v.extend_from_slice(&self.nonce);
        v.push(name.len() as u8);
        v.extend_from_slice(name);
        v
    }
    pub fn decode(p: &[u8]) -> Result<(Hello, u16, u16), ProtoError> {
        let mut c = Cursor::new(p, "HELLO");
        let lo = c.u16()?;
        let hi = c.u16()?;
        let pool = c.array()?;
        let nonce = c.array()?;
        let n = c.u8()? as usize;
        let name = String::from_utf8_lossy(c.bytes(n)?).into_owned();
        c.finish()?;
        Ok((Hello { pool, nonce, name }, lo, hi))
    }
}

/// `CHALLENGE`: the server's nonce, its proof of knowing the key, and what it lends.
#[derive(Debug, Clone)]
pub struct Challenge {
    pub nonce: [u8; NONCE_LEN],
    pub proof: [u8; 32],
    pub instance: InstanceId,
    pub capacity: u64,
    pub free: u64,
    pub max_payload: u32,
    /// Bytes of requests a client may have outstanding (unanswered) on this connection.
    pub window: u32,
}

impl Challenge {
    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(128);
        v.extend_from_slice(&self.nonce);
        v.extend_from_slice(&self.proof);
        v.extend_from_slice(&self.instance);
        v.extend_from_slice(&self.capacity.to_le_bytes());
        v.extend_from_slice(&self.free.to_le_bytes());
        v.extend_from_slice(&self.max_payload.to_le_bytes());
        v.extend_from_slice(&self.window.to_le_bytes());
        v
    }
    pub fn decode(p: &[u8]) -> Result<Challenge, ProtoError> {
        let mut c = Cursor::new(p, "CHALLENGE");
        let ch = Challenge {
            nonce: c.array()?,
            proof: c.array()?,
            instance: c.array()?,
            capacity: c.u64()?,
            free: c.u64()?,
            max_payload: c.u32()?,
            window: c.u32()?,
        };
        c.finish()?;
        Ok(ch)
    }
}

/// Lending state reported by `STATUS_REPLY`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LendState {
    Lending,
    /// Taking memory back: reads still served, writes refused, all data dropped at the deadline.
    Revoking {
        deadline_ms: u64,
    },
    /// Not lending at all.
    Revoked,
}

/// `STATUS_REPLY` payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Status {
    pub capacity: u64,
    pub used: u64,
    /// Bytes this pool holds on the server.
    pub pool_used: u64,
    pub state: LendState,
}

impl Status {
    pub fn free(&self) -> u64 {
        match self.state {
            LendState::Lending => self.capacity.saturating_sub(self.used),
            _ => 0,
        }
    }
    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(41);
        v.extend_from_slice(&self.capacity.to_le_bytes());
        v.extend_from_slice(&self.used.to_le_bytes());
        v.extend_from_slice(&self.pool_used.to_le_bytes());
        let (s, d) = match self.state {
            LendState::Lending => (0u8, 0u64),
            LendState::Revoking { deadline_ms } => (1, deadline_ms),
            LendState::Revoked => (2, 0),
        };
        v.push(s);
        v.extend_from_slice(&d.to_le_bytes());
        v
    }
    pub fn decode(p: &[u8]) -> Result<Status, ProtoError> {
        let mut c = Cursor::new(p, "STATUS_REPLY");
        let capacity = c.u64()?;
        let used = c.u64()?;
        let pool_used = c.u64()?;
        let s = c.u8()?;
        let d = c.u64()?;
        c.finish()?;
        let state = match s {
            0 => LendState::Lending,
            1 => LendState::Revoking { deadline_ms: d },
            2 => LendState::Revoked,
            _ => return Err(ProtoError::Malformed("STATUS_REPLY")),
        };
        Ok(Status {
            capacity,
            used,
            pool_used,
            state,
        })
    }
}

/// One generation a server holds for a pool, as listed by `GENS`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GenEntry {
    pub generation: u64,
    pub committed: bool,
    pub objects: u32,
}

pub fn encode_gens(gens: &[GenEntry]) -> Vec<u8> {
    let mut v = Vec::with_capacity(4 + gens.len() * 13);
    v.extend_from_slice(&(gens.len() as u32).to_le_bytes());
    for g in gens {
        v.extend_from_slice(&g.generation.to_le_bytes());
        v.push(g.committed as u8);
        v.extend_from_slice(&g.objects.to_le_bytes());
    }
    v
}

pub fn decode_gens(p: &[u8]) -> Result<Vec<GenEntry>, ProtoError> {
    let mut c = Cursor::new(p, "GENS");
    let n = c.u32()? as usize;
    if n > p.len() / 13 {
        return Err(ProtoError::Malformed("GENS"));
    }
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        v.push(GenEntry {
            generation: c.u64()?,
            committed: c.u8()? != 0,
            objects: c.u32()?,
        });
    }
    c.finish()?;
    Ok(v)
}

/// `ERROR` payload: a code and a human-readable message.
pub fn encode_error(code: ErrorCode, msg: &str) -> Vec<u8> {
    let m = &msg.as_bytes()[..msg.len().min(1024)];
    let mut v = Vec::with_capacity(4 + m.len());
    v.extend_from_slice(&(code as u32).to_le_bytes());
    v.extend_from_slice(m);
    v
}

pub fn decode_error(p: &[u8]) -> (Option<ErrorCode>, String) {
    if p.len() < 4 {
        return (None, "malformed error frame".into());
    }
    let code = u32::from_le_bytes([p[0], p[1], p[2], p[3]]);
    (
        ErrorCode::from_u32(code),
        String::from_utf8_lossy(&p[4..]).into_owned(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_roundtrip_and_corruption_detected() {
        let mut buf = Vec::new();
        write_frame(&mut buf, Op::Put, 7, &[b"abc", b"defg"]).unwrap();
        let f = read_frame(&mut &buf[..]).unwrap();
        assert_eq!(f.op, Op::Put);
        assert_eq!(f.req_id, 7);
        assert_eq!(f.payload, b"abcdefg");
        for i in 0..buf.len() {
            let mut b = buf.clone();
            b[i] ^= 0x40;
            assert!(
                read_frame(&mut &b[..]).is_err(),
                "flip at byte {i} went unnoticed"
            );
        }
        assert!(matches!(
            read_frame(&mut &buf[..buf.len() - 1]),
            Err(ProtoError::Closed)
        ));
    }

    #[test]
    fn oversized_frame_refused_before_allocation() {
        let mut h = FrameHeader::new(Op::Put, 1, &[]);
        h.len = (MAX_PAYLOAD + 1).into();
        h.header_crc = crc32c::crc32c(&h.as_bytes()[..HEADER_LEN - 4]).into();
        let r = read_frame(&mut h.as_bytes());
        assert!(matches!(r, Err(ProtoError::Oversized(_))), "{r:?}");
    }

    #[test]
    fn messages_roundtrip() {
        let st = Status {
            capacity: 10,
            used: 3,
            pool_used: 2,
            state: LendState::Revoking { deadline_ms: 99 },
        };
        assert_eq!(Status::decode(&st.encode()).unwrap(), st);
        let g = vec![GenEntry {
            generation: 5,
            committed: true,
            objects: 3,
        }];
        assert_eq!(decode_gens(&encode_gens(&g)).unwrap(), g);
        let h = Hello {
            pool: [3; 16],
            nonce: [4; 32],
            name: "x".into(),
        };
        let (h2, lo, hi) = Hello::decode(&h.encode()).unwrap();
        assert_eq!(
            (h2.pool, h2.nonce, h2.name.as_str(), lo, hi),
            (h.pool, h.nonce, "x", 1, 1)
        );
        assert!(decode_gens(&[255, 255, 255, 255]).is_err());
    }
}

#[cfg(test)]
mod robustness {
    use super::*;

    #[test]
    fn fast_crc_combine_matches_the_crate() {
        let data: Vec<u8> = (0..70_000u32)
            .map(|x| (x.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        for &cut in &[0usize, 1, 16, 17, 4096, 65_536, 69_999, 70_000] {
            let (a, b) = data.split_at(cut);
            let (ca, cb) = (crc32c::crc32c(a), crc32c::crc32c(b));
            assert_eq!(
                crc32c_combine(ca, cb, b.len()),
                crc32c::crc32c(&data),
                "cut {cut}"
            );
            assert_eq!(
                crc32c_combine(ca, cb, b.len()),
                crc32c::crc32c_combine(ca, cb, b.len())
            );
        }
        for len in [1usize, 3, 1 << 20, (1 << 20) + 16, 4 << 20, usize::MAX >> 1] {
            assert_eq!(
                crc32c_combine(0x1234_5678, 0x9abc_def0, len),
                crc32c::crc32c_combine(0x1234_5678, 0x9abc_def0, len),
                "len {len}"
            );
        }
    }

    /// Random byte streams and mutated valid frames: errors, never panics, never a payload
    /// allocation beyond the limit.
    #[test]
    fn random_input_never_panics() {
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let mut rnd = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut valid = Vec::new();
        write_frame(&mut valid, Op::Put, 5, &[&[7u8; 300]]).unwrap();
        for _ in 0..20_000 {
            let mut b = if rnd() % 2 == 0 {
                (0..(rnd() % 200) as usize)
                    .map(|_| rnd() as u8)
                    .collect::<Vec<u8>>()
            } else {
                let mut v = valid.clone();
                let i = (rnd() as usize) % v.len();
                v[i] = rnd() as u8;
                v
            };
            if rnd() % 4 == 0 {
                // A header claiming a huge payload with a correct header checksum.
                let mut h = FrameHeader::new(Op::Data, 1, &[]);
                h.len = (rnd() as u32).into();
                h.header_crc = crc32c::crc32c(&h.as_bytes()[..HEADER_LEN - 4]).into();
                b = h.to_bytes().to_vec();
            }
            let _ = read_frame(&mut &b[..]);
            let mut buf = Vec::new();
            let _ = read_frame_into(&mut &b[..], &mut buf);
            assert!(buf.len() <= MAX_PAYLOAD as usize);
            let _ = Hello::decode(&b);
            let _ = Challenge::decode(&b);
            let _ = Status::decode(&b);
            let _ = decode_gens(&b);
            let _ = decode_error(&b);
        }
    }
}
