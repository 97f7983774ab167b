//! `rmem-server`: a daemon that lends pre-faulted memory to rmem clients and takes it back when
//! its owner needs it (admin command with a deadline, free-memory watermark, busy CPU, shutdown).

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use rmem_client::auth::Psk;

mod admin;
mod fault;
mod monitor;
mod server;
mod store;
mod units;

use server::{Reason, ServerConfig, Shared};
use units::{parse_duration, parse_size};

#[derive(Parser, Debug)]
#[command(
    name = "rmem-server",
    version,
    about = "Lend this machine's idle memory to rmem clients"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Run the daemon.
    Serve(ServeArgs),
    /// Take the lent memory back: clients get DEADLINE to move their data away.
    Revoke {
        #[arg(long)]
        admin_socket: PathBuf,
        #[arg(long, default_value = "10s", value_parser = parse_duration)]
        deadline: Duration,
    },
    /// Lend again after an admin revocation.
    Resume {
        #[arg(long)]
        admin_socket: PathBuf,
    },
    /// Print the lending state (lending, revoking(REASON), revoked(REASON)).
    State {
        #[arg(long)]
        admin_socket: PathBuf,
    },
    /// Print the server's statistics (Prometheus text).
    Stats {
        #[arg(long)]
        admin_socket: PathBuf,
    },
    /// Revoke with DEADLINE, then exit.
    Shutdown {
        #[arg(long)]
        admin_socket: PathBuf,
        #[arg(long, default_value = "10s", value_parser = parse_duration)]
        deadline: Duration,
    },
}

#[derive(Args, Debug)]
struct ServeArgs {
    /// Address to listen on (host:port; port 0 picks one, printed on stdout as `listening ADDR`).
    #[arg(long, default_value = "127.0.0.1:7077")]
    listen: String,
    /// Memory to lend, allocated and pre-faulted at start (e.g. 512M, 4G).
    #[arg(long, value_parser = parse_size)]
    capacity: u64,
    /// Lock the lent memory in RAM (mlockall) so it is never swapped.
    #[arg(long)]
    mlock: bool,
    /// File holding the pre-shared key (hex or raw bytes, at least 16 bytes).
    #[arg(long)]
    key_file: PathBuf,
    /// Authenticated connections served at once; more are refused with an error.
    #[arg(long, default_value_t = 64)]
    max_clients: usize,
    /// Unix socket for admin commands (revoke, resume, stats, shutdown).
    #[arg(long)]
    admin_socket: Option<PathBuf>,
    /// Serve Prometheus metrics over HTTP on this address.
    #[arg(long)]
    stats_listen: Option<String>,
    /// Revoke when the machine's MemAvailable falls below this (e.g. 2G).
    #[arg(long, value_parser = parse_size)]
    min_free: Option<u64>,
    /// Revoke when CPU use (0.0-1.0 of all cores) stays at or above this for --busy-grace.
    #[arg(long)]
    busy_threshold: Option<f64>,
    /// How long the machine must stay busy before revoking (Condor waits five minutes).
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    busy_grace: Duration,
    /// How long the machine must be idle again before lending resumes after an automatic revocation.
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    idle_grace: Duration,
    /// Deadline given to clients on automatic revocations.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    revoke_deadline: Duration,
    /// Deadline given to clients on SIGTERM/SIGINT before the server exits.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    shutdown_deadline: Duration,
    /// How often the watermark and CPU load are sampled.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    monitor_interval: Duration,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let admin = |path: &PathBuf, cmd: String| match admin::send_command(path, &cmd) {
        Ok(out) => {
            print!("{out}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("rmem-server: {e}");
            ExitCode::FAILURE
        }
    };
    match cli.cmd {
        Cmd::Serve(a) => match serve(a) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("rmem-server: {e}");
                ExitCode::FAILURE
            }
        },
        Cmd::Revoke {
            admin_socket,
            deadline,
        } => admin(&admin_socket, format!("revoke {}ms", deadline.as_millis())),
        Cmd::Resume { admin_socket } => admin(&admin_socket, "resume".into()),
        Cmd::State { admin_socket } => admin(&admin_socket, "state".into()),
        Cmd::Stats { admin_socket } => admin(&admin_socket, "stats".into()),
        Cmd::Shutdown {
            admin_socket,
            deadline,
        } => admin(
            &admin_socket,
            format!("shutdown {}ms", deadline.as_millis()),
        ),
    }
}

/// Errors of starting the daemon.
#[derive(Debug, thiserror::Error)]
enum MainError {
    #[error(transparent)]
    Server(#[from] server::ServerError),
    #[error(transparent)]
    Admin(#[from] admin::AdminError),
    #[error(transparent)]
    Auth(#[from] rmem_client::auth::AuthError),
    #[error("cannot start a thread: {0}")]
    Thread(std::io::Error),
}

fn serve(a: ServeArgs) -> Result<(), MainError> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("RMEM_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let key = Psk::from_file(&a.key_file)?;
    let listener = TcpListener::bind(&a.listen).map_err(|source| server::ServerError::Listen {
        addr: a.listen.clone(),
        source,
    })?;
    let shared = Shared::new(ServerConfig {
        capacity: a.capacity,
        mlock: a.mlock,
        max_clients: a.max_clients,
        key,
    })?;
    if let Some(p) = &a.admin_socket {
        admin::spawn_admin(shared.clone(), p)?;
    }
    if let Some(addr) = &a.stats_listen {
        let local = admin::spawn_stats(shared.clone(), addr)?;
        println!("stats {local}");
    }
    if a.min_free.is_some() || a.busy_threshold.is_some() {
        monitor::spawn(
            shared.clone(),
            monitor::MonitorConfig {
                min_free: a.min_free,
                busy_threshold: a.busy_threshold,
                busy_grace: a.busy_grace,
                idle_grace: a.idle_grace,
                revoke_deadline: a.revoke_deadline,
                interval: a.monitor_interval,
            },
        )
        .map_err(MainError::Thread)?;
    }
    // Signals: the first SIGTERM/SIGINT starts a graceful revocation; a second one exits at once.
    let sh = shared.clone();
    let deadline = a.shutdown_deadline;
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
    ])
    .map_err(MainError::Thread)?;
    std::thread::Builder::new()
        .name("rmem-signals".into())
        .spawn(move || {
            let mut seen = 0;
            for s in signals.forever() {
                seen += 1;
                tracing::warn!(signal = s, "shutdown requested");
                if seen == 1 {
                    sh.revoke(deadline, Reason::Shutdown);
                    sh.tick();
                } else {
                    sh.stop.store(true, Ordering::SeqCst);
                }
            }
        })
        .map_err(MainError::Thread)?;
    let sh = shared.clone();
    std::thread::Builder::new()
        .name("rmem-tick".into())
        .spawn(move || {
            while !sh.stop.load(Ordering::SeqCst) {
                sh.tick();
                std::thread::sleep(Duration::from_millis(20));
            }
            server::wake_acceptor(&sh);
        })
        .map_err(MainError::Thread)?;
    let local = listener
        .local_addr()
        .map_err(|source| server::ServerError::Listen {
            addr: a.listen.clone(),
            source,
        })?;
    // Tests and scripts read this line to learn the port when --listen used port 0.
    println!("listening {local}");
    use std::io::Write;
    let _ = std::io::stdout().flush();
    tracing::info!(%local, capacity = a.capacity, max_clients = a.max_clients, "rmem-server up");
    server::serve(shared.clone(), listener);
    server::close_all(&shared);
    if let Some(p) = &a.admin_socket {
        let _ = std::fs::remove_file(p);
    }
    tracing::info!("rmem-server stopped");
    Ok(())
}
