//! Operator interfaces: a Unix-socket admin channel (revoke with a deadline, resume, shutdown,
//! stats) and an optional HTTP endpoint serving Prometheus text.
//!
//! The admin socket is created mode 0600: whoever can revoke or stop the server must be the
//! machine's owner (root or the daemon's user), the same trust the paper gives the workstation
//! owner over lent memory.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::server::{Reason, Shared};
use crate::units::parse_duration;

/// Errors of the admin interfaces.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("cannot bind admin socket {path}: {source}")]
    Bind {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot bind stats endpoint {addr}: {source}")]
    BindStats {
        addr: String,
        source: std::io::Error,
    },
    #[error("cannot reach the server's admin socket {path}: {source}")]
    Connect {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("server answered: {0}")]
    Refused(String),
}

/// Binds the admin socket (replacing a stale one) and serves it on a thread.
pub fn spawn_admin(shared: Arc<Shared>, path: &Path) -> Result<(), AdminError> {
    let _ = std::fs::remove_file(path);
    let l = UnixListener::bind(path).map_err(|source| AdminError::Bind {
        path: path.into(),
        source,
    })?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(|source| {
        AdminError::Bind {
            path: path.into(),
            source,
        }
    })?;
    std::thread::Builder::new()
        .name("rmem-admin".into())
        .spawn(move || {
            for s in l.incoming().flatten() {
                let sh = shared.clone();
                let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
                admin_conn(&sh, s);
                if sh.stop.load(Ordering::SeqCst) {
                    break;
                }
            }
        })
        .map_err(|source| AdminError::Bind {
            path: path.into(),
            source,
        })?;
    Ok(())
}

fn admin_conn(sh: &Arc<Shared>, s: UnixStream) {
    let mut line = String::new();
    let Ok(mut w) = s.try_clone() else { return };
    if BufReader::new(s.take(4096)).read_line(&mut line).is_err() {
        return;
    }
    let reply = execute(sh, line.trim());
    let _ = w.write_all(reply.as_bytes());
}

/// Runs one admin command; the reply starts with `ok` or `error`.
pub fn execute(sh: &Arc<Shared>, cmd: &str) -> String {
    let mut it = cmd.split_whitespace();
    let verb = it.next().unwrap_or("");
    let arg = it.next();
    let deadline = |d: Option<&str>| parse_duration(d.unwrap_or("10s"));
    tracing::info!(command = cmd, "admin command");
    match verb {
        "stats" => format!("ok\n{}", sh.metrics()),
        "state" => format!("ok {}\n", sh.state_name()),
        "revoke" => match deadline(arg) {
            Ok(d) => {
                sh.revoke(d, Reason::Admin);
                format!("ok revoking, deadline {} ms\n", d.as_millis())
            }
            Err(e) => format!("error {e}\n"),
        },
        "shutdown" => match deadline(arg) {
            Ok(d) => {
                sh.revoke(d, Reason::Shutdown);
                sh.tick();
                format!("ok shutting down, deadline {} ms\n", d.as_millis())
            }
            Err(e) => format!("error {e}\n"),
        },
        "resume" => match sh.resume() {
            Ok(true) => "ok lending\n".into(),
            Ok(false) => format!("error nothing to resume (state {})\n", sh.state_name()),
            Err(e) => format!("error {e}\n"),
        },
        _ => "error unknown command (stats | state | revoke [DEADLINE] | resume | shutdown [DEADLINE])\n".into(),
    }
}

/// Client side of the admin socket, used by the `revoke`, `resume`, `stats`, `shutdown` subcommands.
pub fn send_command(path: &Path, cmd: &str) -> Result<String, AdminError> {
    let mut s = UnixStream::connect(path).map_err(|source| AdminError::Connect {
        path: path.into(),
        source,
    })?;
    let io = |source| AdminError::Connect {
        path: path.into(),
        source,
    };
    s.write_all(format!("{cmd}\n").as_bytes()).map_err(io)?;
    let mut out = String::new();
    s.read_to_string(&mut out).map_err(io)?;
    match out.strip_prefix("ok") {
        Some(rest) => Ok(rest.trim_start_matches([' ', '\n']).to_string()),
        None => Err(AdminError::Refused(out.trim().to_string())),
    }
}

/// Serves `GET /metrics` (any path, really) as Prometheus text.
pub fn spawn_stats(shared: Arc<Shared>, addr: &str) -> Result<std::net::SocketAddr, AdminError> {
    let l = TcpListener::bind(addr).map_err(|source| AdminError::BindStats {
        addr: addr.into(),
        source,
    })?;
    let local = l.local_addr().map_err(|source| AdminError::BindStats {
        addr: addr.into(),
        source,
    })?;
    std::thread::Builder::new()
        .name("rmem-stats".into())
        .spawn(move || {
            for s in l.incoming().flatten() {
                let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                let Ok(mut w) = s.try_clone() else { continue };
                let mut r = BufReader::new(s.take(8192));
                // Read the request head; its content does not matter.
                let mut line = String::new();
                while r.read_line(&mut line).map(|n| n > 0).unwrap_or(false) {
                    if line == "\r\n" || line == "\n" {
                        break;
                    }
                    line.clear();
                }
                let body = shared.metrics();
                let _ = write!(
                    w,
                    "HTTP/1.0 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\n\r\n{}",
                    body.len(),
                    body
                );
            }
        })
        .map_err(|source| AdminError::BindStats { addr: addr.into(), source })?;
    Ok(local)
}
