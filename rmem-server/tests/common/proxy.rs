//! A frame-aware TCP proxy that misbehaves on purpose: it corrupts, truncates, reorders,
//! replays or forges (re-checksummed) response frames, or corrupts request frames.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use rmem_client::proto::{FrameHeader, HEADER_LEN, Op};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Flip one payload byte of the Nth large response (frame checksum catches it).
    Corrupt,
    /// Send half of the Nth large response, then close.
    Truncate,
    /// Send the Nth large response after the one following it.
    Reorder,
    /// Send the Nth large response twice.
    Replay,
    /// Alter the Nth and every later large response and recompute the frame checksum: a
    /// persistently lying server.
    Forge,
    /// Flip one payload byte of the Nth large request (a PUT) on its way to the server.
    CorruptRequest,
}

pub struct Proxy {
    pub addr: String,
    pub fired: Arc<AtomicUsize>,
}

/// Frames with payloads at least this big are shards, not manifests or acks.
const LARGE: usize = 8192;

fn read_frame(s: &mut TcpStream) -> Option<Vec<u8>> {
    let mut h = [0u8; HEADER_LEN];
    s.read_exact(&mut h).ok()?;
    let len = u32::from_le_bytes([h[16], h[17], h[18], h[19]]) as usize;
    if len > 8 << 20 {
        return None;
    }
    let mut f = h.to_vec();
    f.resize(HEADER_LEN + len, 0);
    s.read_exact(&mut f[HEADER_LEN..]).ok()?;
    Some(f)
}

fn op_of(f: &[u8]) -> u16 {
    u16::from_le_bytes([f[6], f[7]])
}

fn reframe(f: &[u8], payload: &[u8]) -> Vec<u8> {
    let op = Op::from_u16(op_of(f)).expect("known op");
    let req = u64::from_le_bytes(f[8..16].try_into().expect("8 bytes"));
    let h = FrameHeader::new(op, req, &[payload]);
    let mut v = h.to_bytes().to_vec();
    v.extend_from_slice(payload);
    v
}

impl Proxy {
    /// Proxies to `upstream`; the fault hits the `nth` large frame (0-based) of the first
    /// connection only.
    pub fn start(upstream: &str, fault: Fault, nth: usize) -> Proxy {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        let addr = l.local_addr().expect("addr").to_string();
        let up = upstream.to_string();
        let fired = Arc::new(AtomicUsize::new(0));
        let fired2 = fired.clone();
        std::thread::spawn(move || {
            let mut first = true;
            for c in l.incoming() {
                let Ok(client) = c else { continue };
                let Ok(server) = TcpStream::connect(&up) else {
                    continue;
                };
                let armed = first;
                first = false;
                let fired = fired2.clone();
                let (c2, s2) = (
                    client.try_clone().expect("clone"),
                    server.try_clone().expect("clone"),
                );
                // Requests: client -> server.
                let f1 = fired.clone();
                std::thread::spawn(move || {
                    pump(
                        client,
                        server,
                        armed && fault == Fault::CorruptRequest,
                        fault,
                        nth,
                        f1,
                    )
                });
                // Responses: server -> client.
                std::thread::spawn(move || {
                    pump(
                        s2,
                        c2,
                        armed && fault != Fault::CorruptRequest,
                        fault,
                        nth,
                        fired,
                    )
                });
            }
        });
        Proxy { addr, fired }
    }
}

fn pump(
    mut from: TcpStream,
    mut to: TcpStream,
    armed: bool,
    fault: Fault,
    nth: usize,
    fired: Arc<AtomicUsize>,
) {
    let mut large = 0usize;
    let mut held: Option<Vec<u8>> = None;
    while let Some(mut f) = read_frame(&mut from) {
        let is_large = f.len() - HEADER_LEN >= LARGE;
        if armed && is_large {
            let n = large;
            large += 1;
            if n == nth || (fault == Fault::Forge && n > nth) {
                if n == nth {
                    fired.fetch_add(1, Ordering::SeqCst);
                }
                match fault {
                    Fault::Corrupt | Fault::CorruptRequest => {
                        let i = HEADER_LEN + (f.len() - HEADER_LEN) / 2;
                        f[i] ^= 0x10;
                    }
                    Fault::Truncate => {
                        let _ = to.write_all(&f[..f.len() / 2]);
                        let _ = to.shutdown(Shutdown::Both);
                        let _ = from.shutdown(Shutdown::Both);
                        return;
                    }
                    Fault::Reorder => {
                        held = Some(f);
                        continue;
                    }
                    Fault::Replay => {
                        if to.write_all(&f).is_err() {
                            return;
                        }
                    }
                    Fault::Forge => {
                        let mut p = f[HEADER_LEN..].to_vec();
                        let i = p.len() / 3;
                        p[i] ^= 0x01;
                        f = reframe(&f, &p);
                    }
                }
            }
        }
        if to.write_all(&f).is_err() {
            return;
        }
        if let Some(h) = held.take()
            && to.write_all(&h).is_err()
        {
            return;
        }
    }
    let _ = to.shutdown(Shutdown::Both);
}
