//! The pool: striping and redundancy over many servers, checkpoint generations, degraded reads,
//! rebuild onto spares, migration on revocation, disk fallback and the disk flusher.
//!
//! Everything here is synchronous and thread-free (see [`crate`] docs on fork): one call drives
//! all servers' connections itself, writing shards back to back without waiting for answers.
//!
//! Generation protocol (DESIGN §5): shards go to fresh object keys of the new generation; the
//! manifest goes last, to every target of the generation; a generation is committed once any one
//! server holds its manifest, because all its shards were acknowledged before. The caller frees
//! older generations only after commit, so a crash at any instant leaves the last committed
//! generation readable.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::auth::{Psk, random_bytes};
use crate::backend::{Backend, BackendError};
use crate::conn::{Conn, ConnConfig};
use crate::crypto::{CryptoError, Encryption, Sealer};
use crate::disk::DiskStore;
use crate::erasure::{self, Code, ErasureError, Redundancy};
use crate::manifest::{Extent, LOST, Manifest, ManifestError, ShardLoc, TargetRef, shard_key};
use crate::proto::{InstanceId, LendState, MAX_OBJECT, PoolId, Status};

/// Errors of pool operations.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("no server reachable and no local directory configured: {0}")]
    NoServers(String),
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error(transparent)]
    Geometry(#[from] ErasureError),
    #[error("generation {0} is already committed; generations are written once")]
    AlreadyCommitted(u64),
    #[error("generation {generation}: data lost, {detail}")]
    DataLoss { generation: u64, detail: String },
    #[error("generation {generation} was not committed: {detail}")]
    CommitFailed { generation: u64, detail: String },
    #[error("generation {0} not found (no valid manifest on any server or on disk)")]
    NotFound(u64),
    #[error("range {addr:#x}+{len} is not stored in generation {generation}")]
    NotPresent {
        generation: u64,
        addr: u64,
        len: u64,
    },
    #[error("generation {generation} is not a contiguous stream from offset 0")]
    NotAStream { generation: u64 },
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    #[error("no spare server or local directory to move {0} to")]
    NoSpare(String),
    #[error("bad configuration: {0}")]
    Config(String),
    #[error("writing the stream failed: {0}")]
    Io(#[from] std::io::Error),
}

pub type Result<T, E = PoolError> = std::result::Result<T, E>;

/// How to build a pool.
#[derive(Debug, Clone)]
pub struct PoolConfig {
    /// Server addresses (`host:port`). The first `stripe_width` usable ones hold a generation;
    /// the others are spares for rebuild and migration.
    pub servers: Vec<String>,
    /// Pre-shared key for the servers' handshake.
    pub key: Psk,
    /// This pool's namespace on the servers.
    pub pool_id: PoolId,
    pub encryption: Encryption,
    pub redundancy: Redundancy,
    /// Servers per generation (default: all usable ones).
    pub stripe_width: Option<usize>,
    /// Bytes per data chunk (the unit of encryption and of striping).
    pub chunk_size: usize,
    /// Local directory: disk fallback, migration target of last resort, flushed copies.
    pub local_dir: Option<PathBuf>,
    /// Below this much free remote memory (over the servers a generation would use) generations
    /// are written to `local_dir` instead.
    pub min_remote_free: u64,
    pub connect_timeout: Duration,
    pub io_timeout: Duration,
    /// Client name shown in server logs.
    pub name: String,
}

impl PoolConfig {
    pub fn new(
        servers: Vec<String>,
        key: Psk,
        pool_id: PoolId,
        encryption: Encryption,
        redundancy: Redundancy,
    ) -> PoolConfig {
        PoolConfig {
            servers,
            key,
            pool_id,
            encryption,
            redundancy,
            stripe_width: None,
            chunk_size: 1 << 20,
            local_dir: None,
            min_remote_free: 0,
            connect_timeout: Duration::from_secs(3),
            io_timeout: Duration::from_secs(30),
            name: format!("rmem-client pid {}", std::process::id()),
        }
    }
}

/// Where a shard store is, from the pool's point of view.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Handle {
    Server(usize),
    Disk,
    Flushed,
}

#[derive(Debug)]
struct Slot {
    addr: String,
    conn: Option<Conn>,
    instance: Option<InstanceId>,
    status: Option<Status>,
    last_error: Option<String>,
    /// Data moved away after a revocation; not used again until the server lends again.
    evacuated: bool,
    next_retry: Instant,
}

/// Where a committed generation was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Location {
    /// Every stored shard is in remote memory.
    Remote,
    /// Written to the local directory (disk fallback), wholly or in part
    /// ([`GenInfo::disk_shards`] of [`GenInfo::shards`]): remote memory was short when the
    /// generation started, ran out during its write, or a revoked server's shards had nowhere
    /// else to go. Maintenance moves it back to remote memory when there is room.
    Disk,
    /// Only the flusher's disk copy is left.
    Flushed,
}

/// A committed generation.
#[derive(Debug, Clone)]
pub struct GenInfo {
    pub generation: u64,
    pub bytes: u64,
    pub location: Location,
    /// Some shard has no copy (the redundancy still covers it); a rebuild is due.
    pub degraded: bool,
    pub manifest_version: u32,
    /// Stored shards (data and redundancy) of the generation.
    pub shards: usize,
    /// How many of them are on local disk (the fallback directory, or the flushed copy for
    /// [`Location::Flushed`]); zero for [`Location::Remote`].
    pub disk_shards: usize,
}

impl GenInfo {
    /// Part of the generation is on local disk and part in remote memory (servers filled up
    /// during its write, say).
    pub fn partly_on_disk(&self) -> bool {
        self.disk_shards > 0 && self.disk_shards < self.shards
    }
}

/// One server as `ckpt servers` shows it.
#[derive(Debug, Clone)]
pub struct ServerHealth {
    pub addr: String,
    pub connected: bool,
    pub status: Option<Status>,
    pub revoking: bool,
    pub evacuated: bool,
    pub last_error: Option<String>,
}

/// What a maintenance pass did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct MaintainReport {
    pub reconnected: usize,
    pub evacuated_servers: usize,
    pub shards_moved: usize,
    pub shards_rebuilt: usize,
    /// Generations moved from local disk back to remote memory.
    pub returned_to_remote: usize,
    pub flushed: usize,
    pub errors: Vec<String>,
}

/// A pool of rmem servers plus optional local disk.
#[derive(Debug)]
pub struct Pool {
    cfg: PoolConfig,
    conn_cfg: ConnConfig,
    sealer: Sealer,
    slots: Vec<Slot>,
    disk: Option<DiskStore>,
    flushed: Option<DiskStore>,
}

impl Pool {
    /// Connects to every server. Unreachable servers are noted and retried by [`Pool::maintain`];
    /// a wrong key is an error at once.
    pub fn connect(cfg: PoolConfig) -> Result<Pool> {
        if cfg.chunk_size == 0 || cfg.chunk_size > MAX_OBJECT - 4096 {
            return Err(PoolError::Config(format!(
                "chunk_size must be 1..={}",
                MAX_OBJECT - 4096
            )));
        }
        let conn_cfg = ConnConfig {
            key: cfg.key.clone(),
            pool: cfg.pool_id,
            name: cfg.name.clone(),
            connect_timeout: cfg.connect_timeout,
            io_timeout: cfg.io_timeout,
        };
        let (disk, flushed) = match &cfg.local_dir {
            Some(d) => (
                Some(DiskStore::open(&d.join("live"), &cfg.pool_id)?),
                Some(DiskStore::open(&d.join("flushed"), &cfg.pool_id)?),
            ),
            None => (None, None),
        };
        let mut slots = Vec::new();
        let mut errors = Vec::new();
        for addr in &cfg.servers {
            let mut slot = Slot {
                addr: addr.clone(),
                conn: None,
                instance: None,
                status: None,
                last_error: None,
                evacuated: false,
                next_retry: Instant::now(),
            };
            match Conn::connect(addr, &conn_cfg) {
                Ok(c) => {
                    slot.instance = Some(c.instance);
                    slot.conn = Some(c);
                }
                Err(e @ BackendError::Auth { .. }) => return Err(e.into()),
                Err(e) => {
                    tracing::warn!(server = %addr, error = %e, "server unavailable");
                    errors.push(e.to_string());
                    slot.last_error = Some(e.to_string());
                    slot.next_retry = Instant::now() + Duration::from_secs(1);
                }
            }
            slots.push(slot);
        }
        if slots.iter().all(|s| s.conn.is_none()) && disk.is_none() {
            return Err(PoolError::NoServers(errors.join("; ")));
        }
        let sealer = Sealer::new(&cfg.encryption, cfg.pool_id);
        Ok(Pool {
            cfg,
            conn_cfg,
            sealer,
            slots,
            disk,
            flushed,
        })
    }

    pub fn config(&self) -> &PoolConfig {
        &self.cfg
    }

    fn backend(&mut self, h: Handle) -> Option<&mut dyn Backend> {
        match h {
            Handle::Server(i) => match self.slots[i].conn.as_mut() {
                Some(c) if !c.is_dead() => Some(c as &mut dyn Backend),
                _ => None,
            },
            Handle::Disk => self.disk.as_mut().map(|d| d as &mut dyn Backend),
            Handle::Flushed => self.flushed.as_mut().map(|d| d as &mut dyn Backend),
        }
    }

    fn name_of(&self, h: Handle) -> String {
        match h {
            Handle::Server(i) => self.slots[i].addr.clone(),
            Handle::Disk => "local disk".into(),
            Handle::Flushed => "flushed disk copy".into(),
        }
    }

    /// Notes a failure; a connection that is down is dropped and retried later.
    fn note_error(&mut self, h: Handle, e: &BackendError) {
        if let Handle::Server(i) = h {
            let s = &mut self.slots[i];
            s.last_error = Some(e.to_string());
            if e.is_down() || s.conn.as_ref().is_some_and(|c| c.is_dead()) {
                if s.conn.take().is_some() {
                    tracing::warn!(server = %s.addr, error = %e, "server down");
                }
                // The first reconnection attempt may come at once; failed ones back off.
                s.next_retry = Instant::now();
            }
        }
    }

    fn live_servers(&self) -> Vec<usize> {
        (0..self.slots.len())
            .filter(|&i| self.slots[i].conn.as_ref().is_some_and(|c| !c.is_dead()))
            .collect()
    }

    fn resolve(&self, t: &TargetRef, disk_as: Handle) -> Option<Handle> {
        match t {
            TargetRef::Disk => match disk_as {
                Handle::Flushed => self.flushed.as_ref().map(|_| Handle::Flushed),
                _ => self.disk.as_ref().map(|_| Handle::Disk),
            },
            TargetRef::Remote { instance, .. } => self
                .slots
                .iter()
                .position(|s| {
                    s.instance.as_ref() == Some(instance)
                        && s.conn.as_ref().is_some_and(|c| !c.is_dead())
                })
                .map(Handle::Server),
        }
    }

    fn target_ref(&self, h: Handle) -> TargetRef {
        match h {
            Handle::Server(i) => TargetRef::Remote {
                instance: self.slots[i].instance.unwrap_or([0; 16]),
                addr: self.slots[i].addr.clone(),
            },
            Handle::Disk | Handle::Flushed => TargetRef::Disk,
        }
    }

    /// Asks every live server for its state (this also collects revocation notices).
    fn refresh(&mut self) {
        for i in self.live_servers() {
            let r = self.slots[i].conn.as_mut().map(|c| c.status());
            match r {
                Some(Ok(st)) => {
                    if st.state == LendState::Lending && self.slots[i].evacuated {
                        tracing::info!(server = %self.slots[i].addr, "server lends again");
                        self.slots[i].evacuated = false;
                    }
                    self.slots[i].status = Some(st);
                }
                Some(Err(e)) => self.note_error(Handle::Server(i), &e),
                None => {}
            }
        }
    }

    fn revoking(&self, i: usize) -> bool {
        self.slots[i]
            .conn
            .as_ref()
            .is_some_and(|c| c.revoke_deadline.is_some())
            || self.slots[i]
                .status
                .is_some_and(|s| s.state != LendState::Lending)
    }

    /// Servers a new generation (or moved data) may go to, in configuration order (placement stays
    /// predictable; `pick_destination` prefers free memory itself).
    fn usable_servers(&self) -> Vec<usize> {
        let mut v: Vec<usize> = self
            .live_servers()
            .into_iter()
            .filter(|&i| !self.slots[i].evacuated && !self.revoking(i))
            .collect();
        v.sort_unstable();
        v
    }

    fn free_of(&self, h: Handle) -> u64 {
        match h {
            Handle::Server(i) => self.slots[i].status.map_or(0, |s| s.free()),
            Handle::Disk | Handle::Flushed => u64::MAX,
        }
    }

    /// Where a new generation goes: the first `stripe_width` usable servers with the pool's
    /// redundancy, or the local disk when remote capacity is short (or too few servers are up).
    fn choose_targets(&mut self, generation: u64) -> Result<(Code, usize, usize, Vec<Handle>)> {
        self.refresh();
        let usable = self.usable_servers();
        let width = self
            .cfg
            .stripe_width
            .unwrap_or(usable.len())
            .min(usable.len());
        let chosen: Vec<usize> = usable[..width].to_vec();
        let free: u64 = chosen
            .iter()
            .map(|&i| self.slots[i].status.map_or(0, |s| s.free()))
            .sum();
        let geo = erasure::geometry(self.cfg.redundancy, width);
        let to_disk = match (&geo, self.disk.is_some()) {
            (Err(e), true) => Some(format!("{e}")),
            (Ok(_), true) if free < self.cfg.min_remote_free => Some(format!(
                "remote free memory {free} below the threshold {}",
                self.cfg.min_remote_free
            )),
            _ => None,
        };
        let (code, k, m, targets) = match to_disk {
            Some(reason) => {
                tracing::debug!(generation, %reason, "this generation would go to local disk");
                (Code::None, 1, 0, vec![Handle::Disk])
            }
            None => {
                let (c, k, m) = geo?;
                (c, k, m, chosen.iter().map(|&i| Handle::Server(i)).collect())
            }
        };
        Ok((code, k, m, targets))
    }

    /// Starts writing generation `generation`. With a local directory, lanes whose servers fill
    /// up (or fail with no spare server left) go on there.
    pub fn begin_generation(&mut self, generation: u64) -> Result<GenWriter<'_>> {
        self.begin(generation, true)
    }

    /// [`Pool::begin_generation`]; `spill` lets the write go on in the local directory. It is off
    /// when that directory holds this very generation (a return to remote memory), whose shard
    /// files a spilled lane would overwrite.
    fn begin(&mut self, generation: u64, spill: bool) -> Result<GenWriter<'_>> {
        let (code, k, m, targets) = self.choose_targets(generation)?;
        if targets == [Handle::Disk] {
            tracing::warn!(
                generation,
                "remote memory short: writing this generation to local disk"
            );
        }
        // Fresh slots: leftovers of an interrupted earlier attempt at this generation go first; a
        // committed generation is never overwritten. The local directory counts as a target when
        // the write may spill there.
        let mut check = targets.clone();
        if spill && self.disk.is_some() && !check.contains(&Handle::Disk) {
            check.push(Handle::Disk);
        }
        for &h in &check {
            let Some(b) = self.backend(h) else { continue };
            match b.list() {
                Ok(l) => {
                    if let Some(e) = l.iter().find(|e| e.generation == generation) {
                        if e.committed {
                            return Err(PoolError::AlreadyCommitted(generation));
                        }
                        let r = b.free(generation);
                        if let Err(e) = r {
                            self.note_error(h, &e);
                        }
                    }
                }
                Err(e) => self.note_error(h, &e),
            }
        }
        let mut salt = [0u8; 8];
        random_bytes(&mut salt).map_err(|e| PoolError::Config(e.to_string()))?;
        let refs = targets.iter().map(|&h| self.target_ref(h)).collect();
        let n = targets.len();
        let chunk_size = self.cfg.chunk_size;
        let budget = targets.iter().map(|&h| self.free_of(h)).collect();
        Ok(GenWriter {
            pool: self,
            generation,
            salt: u64::from_le_bytes(salt),
            code,
            k,
            m,
            lanes: (0..n).collect(),
            budget,
            unacked: vec![VecDeque::new(); n],
            dirty: vec![false; n],
            free_bufs: Vec::new(),
            targets,
            refs,
            failed: vec![None; n],
            chunk: chunk_buf(chunk_size),
            chunk_size,
            nchunks: 0,
            chunk_lens: Vec::new(),
            pending: Vec::new(),
            pending_crcs: Vec::new(),
            chunk_crc: 0,
            zero_crc: None,
            stripes: Vec::new(),
            extents: Vec::new(),
            stream_pos: 0,
            done: false,
            version: 1,
            spill,
            out_of_space: false,
        })
    }

    /// Loads the best manifest of a generation: the highest version among remote servers and the
    /// live disk directory, else the flushed copy. Also returns the flushed copy as a fallback.
    fn load_manifest(&mut self, generation: u64) -> Result<(Manifest, Handle, Option<Manifest>)> {
        let mut best: Option<(Manifest, Handle)> = None;
        let mut handles: Vec<Handle> = self
            .live_servers()
            .into_iter()
            .map(Handle::Server)
            .collect();
        if self.disk.is_some() {
            handles.push(Handle::Disk);
        }
        for h in handles {
            let Some(b) = self.backend(h) else { continue };
            let r = b.manifest(generation);
            match r {
                Ok(blob) => {
                    match Manifest::open(&blob, &self.sealer, &self.cfg.pool_id, generation) {
                        Ok(m) => {
                            if best.as_ref().is_none_or(|(b, _)| m.version > b.version) {
                                best = Some((m, h));
                            }
                        }
                        Err(e) => {
                            tracing::warn!(source = %self.name_of(h), generation, error = %e, "rejecting manifest")
                        }
                    }
                }
                Err(BackendError::NotFound { .. }) => {}
                Err(e) => self.note_error(h, &e),
            }
        }
        let flushed = match self.flushed.as_mut().map(|f| f.manifest(generation)) {
            Some(Ok(blob)) => {
                match Manifest::open(&blob, &self.sealer, &self.cfg.pool_id, generation) {
                    Ok(m) => Some(m),
                    Err(e) => {
                        tracing::warn!(generation, error = %e, "rejecting flushed manifest");
                        None
                    }
                }
            }
            _ => None,
        };
        match (best, flushed) {
            (Some((m, h)), f) => Ok((
                m,
                if h == Handle::Disk {
                    Handle::Disk
                } else {
                    Handle::Server(0)
                },
                f,
            )),
            (None, Some(f)) => Ok((f, Handle::Flushed, None)),
            (None, None) => Err(PoolError::NotFound(generation)),
        }
    }

    /// Committed generations known anywhere (remote, disk, flushed), newest first.
    pub fn committed_generations(&mut self) -> Vec<u64> {
        self.stored_generations(true).into_iter().rev().collect()
    }

    /// Generations with anything stored on a live server, in the local directory or in the
    /// tiered copy; with `committed_only`, those committed there.
    fn stored_generations(&mut self, committed_only: bool) -> BTreeSet<u64> {
        let mut set = BTreeSet::new();
        let mut handles: Vec<Handle> = self
            .live_servers()
            .into_iter()
            .map(Handle::Server)
            .collect();
        handles.extend([Handle::Disk, Handle::Flushed]);
        for h in handles {
            let Some(b) = self.backend(h) else { continue };
            match b.list() {
                Ok(l) => set.extend(
                    l.iter()
                        .filter(|e| e.committed || !committed_only)
                        .map(|e| e.generation),
                ),
                Err(e) => self.note_error(h, &e),
            }
        }
        set
    }

    /// The newest generation whose manifest verifies. Recovery starts here.
    pub fn latest_committed(&mut self) -> Option<GenInfo> {
        for g in self.committed_generations() {
            match self.info(g) {
                Ok(i) => return Some(i),
                Err(e) => tracing::warn!(generation = g, error = %e, "skipping generation"),
            }
        }
        None
    }

    /// The decoded manifest of a committed generation (for inspection tools).
    pub fn manifest(&mut self, generation: u64) -> Result<Manifest> {
        Ok(self.load_manifest(generation)?.0)
    }

    /// Describes a committed generation.
    pub fn info(&mut self, generation: u64) -> Result<GenInfo> {
        let (m, disk_as, _) = self.load_manifest(generation)?;
        let degraded = self.unavailable_shards(&m, disk_as) > 0;
        Ok(gen_info(&m, disk_as == Handle::Flushed, degraded))
    }

    fn real_shard(m: &Manifest, s: usize, j: usize) -> bool {
        j >= m.k as usize || s * m.k as usize + j < m.chunk_lens.len()
    }

    fn unavailable_shards(&self, m: &Manifest, disk_as: Handle) -> usize {
        let mut n = 0;
        for (s, st) in m.stripes.iter().enumerate() {
            for (j, l) in st.iter().enumerate() {
                if Self::real_shard(m, s, j)
                    && (l.target == LOST
                        || self
                            .resolve(&m.targets[l.target as usize], disk_as)
                            .is_none())
                {
                    n += 1;
                }
            }
        }
        n
    }

    /// Opens a committed generation for reading: remote memory first, then the disk copy.
    pub fn read_generation(&mut self, generation: u64) -> Result<GenReader<'_>> {
        let (man, disk_as, fallback) = self.load_manifest(generation)?;
        let mut by_addr: Vec<usize> = (0..man.extents.len()).collect();
        by_addr.sort_by_key(|&i| man.extents[i].addr);
        Ok(GenReader {
            pool: self,
            man,
            disk_as,
            fallback,
            by_addr,
            cache: None,
        })
    }

    /// Frees a generation everywhere (remote, disk, flushed copy).
    pub fn free_generation(&mut self, generation: u64) -> Result<()> {
        let mut handles: Vec<Handle> = self
            .live_servers()
            .into_iter()
            .map(Handle::Server)
            .collect();
        handles.extend([Handle::Disk, Handle::Flushed]);
        for h in handles {
            let Some(b) = self.backend(h) else { continue };
            if let Err(e) = b.free(generation) {
                self.note_error(h, &e);
            }
        }
        Ok(())
    }

    /// Frees every generation this pool holds on a live server, in the local directory or in
    /// the tiered copy, committed or not: what a program that finished leaves behind. A writer
    /// killed before its commit (the background writer of a program that exits, which takes its
    /// `put` helper with it) leaves written, uncommitted shards that nothing else would free,
    /// since [`Pool::maintain`] collects them only for a pool that goes on. No writer of the pool
    /// may be running. Returns how many committed generations were freed.
    pub fn free_all(&mut self) -> Result<usize> {
        let committed = self.stored_generations(true).len();
        for g in self.stored_generations(false) {
            self.free_generation(g)?;
        }
        Ok(committed)
    }

    /// State of every configured server.
    pub fn health(&mut self) -> Vec<ServerHealth> {
        self.refresh();
        (0..self.slots.len())
            .map(|i| {
                let s = &self.slots[i];
                ServerHealth {
                    addr: s.addr.clone(),
                    connected: s.conn.as_ref().is_some_and(|c| !c.is_dead()),
                    status: s.status,
                    revoking: self.revoking(i),
                    evacuated: s.evacuated,
                    last_error: s.last_error.clone(),
                }
            })
            .collect()
    }

    /// Reconnects to servers that were down (a restarted server comes back empty, with a new
    /// instance id, so its old shards count as lost and get rebuilt).
    fn reconnect(&mut self) -> usize {
        let mut n = 0;
        for i in 0..self.slots.len() {
            let s = &self.slots[i];
            if s.conn.as_ref().is_some_and(|c| !c.is_dead()) || Instant::now() < s.next_retry {
                continue;
            }
            match Conn::connect(&s.addr.clone(), &self.conn_cfg) {
                Ok(c) => {
                    let s = &mut self.slots[i];
                    if s.instance.is_some_and(|x| x != c.instance) {
                        tracing::warn!(server = %s.addr, "server restarted: its memory is empty");
                    }
                    s.instance = Some(c.instance);
                    s.conn = Some(c);
                    s.last_error = None;
                    n += 1;
                }
                Err(e) => {
                    let s = &mut self.slots[i];
                    s.last_error = Some(e.to_string());
                    s.next_retry = Instant::now() + Duration::from_secs(1);
                }
            }
        }
        n
    }

    /// One maintenance pass: reconnect, evacuate revoking servers, rebuild lost shards onto
    /// spares. Call it periodically (or use [`spawn_maintainer`]).
    pub fn maintain(&mut self) -> MaintainReport {
        // Probe first (a server that died since the last call shows up here), reconnect what is
        // down, then learn the state of the new connections too.
        self.refresh();
        let mut rep = MaintainReport {
            reconnected: self.reconnect(),
            ..Default::default()
        };
        self.refresh();
        self.collect_garbage();
        for i in 0..self.slots.len() {
            if self.slots[i].conn.is_some() && self.revoking(i) && !self.slots[i].evacuated {
                match self.evacuate(i) {
                    Ok(n) => {
                        rep.evacuated_servers += 1;
                        rep.shards_moved += n;
                    }
                    Err(e) => rep
                        .errors
                        .push(format!("evacuating {}: {e}", self.slots[i].addr)),
                }
            }
        }
        match self.rebuild() {
            Ok(n) => rep.shards_rebuilt = n,
            Err(e) => rep.errors.push(format!("rebuild: {e}")),
        }
        match self.return_to_remote() {
            Ok(n) => rep.returned_to_remote = n,
            Err(e) => rep.errors.push(format!("return to remote memory: {e}")),
        }
        rep
    }

    /// Moves generations that were written to local disk (remote capacity was short) back into
    /// remote memory, with the pool's redundancy, once capacity allows (the paper's remote memory
    /// layer does the same). A generation written wholly to disk is restriped: its sealed chunks
    /// are copied as they are (same salt, same chunk numbers) and committed as a newer manifest
    /// version before the disk copy goes. One that went partly to disk (servers filled up during
    /// its write) keeps its geometry: its disk shards move to servers with room, and the disk copy
    /// goes once none is left there. Returns how many generations are now wholly remote.
    pub fn return_to_remote(&mut self) -> Result<usize> {
        let Some(disk) = self.disk.as_mut() else {
            return Ok(0);
        };
        let gens: Vec<u64> = disk
            .list()?
            .iter()
            .filter(|e| e.committed)
            .map(|e| e.generation)
            .collect();
        let mut n = 0;
        for g in gens {
            let (man, disk_as, _) = self.load_manifest(g)?;
            let (_, on_disk) = shard_counts(&man);
            if disk_as != Handle::Disk && on_disk == 0 {
                // A newer manifest elsewhere that no longer uses the disk: a completed return
                // whose disk copy was not yet freed (a crash in between).
                if let Some(d) = self.disk.as_mut() {
                    d.free(g)?;
                }
                continue;
            }
            if man.targets.iter().all(|t| *t == TargetRef::Disk) {
                if self.restripe_to_remote(&man)? {
                    n += 1;
                }
                continue;
            }
            // Without a server that could take even the smallest disk shard, moving them would
            // read every one from disk (on every maintenance pass) only to find no destination.
            if on_disk == 0
                || !self.room_for_a_disk_shard(&man, disk_as)
                || self.relocate(g, Move::OffDisk)? == 0
            {
                continue;
            }
            let (man, disk_as, _) = self.load_manifest(g)?;
            if disk_as != Handle::Disk && shard_counts(&man).1 == 0 {
                if let Some(d) = self.disk.as_mut() {
                    d.free(g)?;
                }
                tracing::info!(
                    generation = g,
                    bytes = man.bytes(),
                    "generation moved from local disk back to remote memory"
                );
                n += 1;
            }
        }
        Ok(n)
    }

    /// Writes generation `man`, held wholly on local disk, to remote memory with the pool's
    /// redundancy, then drops the disk copy. Returns false when remote memory has no room for it
    /// yet.
    fn restripe_to_remote(&mut self, man: &Manifest) -> Result<bool> {
        let g = man.generation;
        let (_, k, m, targets) = self.choose_targets(g)?;
        if targets == [Handle::Disk] {
            return Ok(false);
        }
        // Room for every chunk and its redundancy, in the servers' 16 KiB slots, with a margin
        // per server: a write that has to give up half-way costs as much as one that succeeds.
        let slots: u64 = man
            .stripes
            .iter()
            .flatten()
            .filter(|l| l.target != LOST)
            .map(|l| (l.len as u64).div_ceil(16 << 10).max(1) * (16 << 10))
            .sum();
        let need = slots / k as u64 * (k + m) as u64 + targets.len() as u64 * (64 << 10);
        let free: u64 = targets.iter().map(|&h| self.free_of(h)).sum();
        if free < need {
            tracing::debug!(generation = g, free, need, "no room in remote memory yet");
            return Ok(false);
        }
        // The writer must not spill to the local directory: it holds this very generation.
        let mut w = self.begin(g, false)?;
        w.salt = man.salt;
        w.version = man.version + 1;
        for (i, &plain_len) in man.chunk_lens.iter().enumerate() {
            let (s, j) = (i / man.k as usize, i % man.k as usize);
            let l = man.stripes[s][j];
            let data = match w.pool.disk.as_mut() {
                Some(d) => d.get(g, shard_key(s, j))?,
                None => return Err(PoolError::Config("no local_dir".into())),
            };
            if data.len() != l.len as usize || crate::crc::crc32c(&data) != l.crc {
                return Err(PoolError::DataLoss {
                    generation: g,
                    detail: format!("chunk {i} on local disk failed its checksum"),
                });
            }
            w.push_sealed(plain_len, data)?;
        }
        w.extents = man.extents.clone();
        w.commit(&man.user)?;
        if let Some(d) = self.disk.as_mut() {
            d.free(g)?;
        }
        tracing::info!(
            generation = g,
            bytes = man.bytes(),
            "generation moved from local disk back to remote memory"
        );
        Ok(true)
    }

    /// Frees, on every server, generations committed nowhere and older than the newest committed
    /// one: leftovers of writers that died before their commit. Newer uncommitted generations
    /// may be in progress (a forked child writing) and are left alone.
    fn collect_garbage(&mut self) {
        // Committed anywhere counts: a server whose commit failed still holds needed shards.
        let committed: BTreeSet<u64> = self.committed_generations().into_iter().collect();
        let Some(&newest) = committed.last() else {
            return;
        };
        let mut handles: Vec<Handle> = self
            .live_servers()
            .into_iter()
            .map(Handle::Server)
            .collect();
        handles.push(Handle::Disk);
        for h in handles {
            let Some(b) = self.backend(h) else { continue };
            let Ok(list) = b.list() else { continue };
            for e in list
                .iter()
                .filter(|e| !committed.contains(&e.generation) && e.generation < newest)
            {
                tracing::info!(target = %h_name(h), generation = e.generation, "freeing an abandoned uncommitted generation");
                if let Some(b) = self.backend(h) {
                    let _ = b.free(e.generation);
                }
            }
        }
    }

    /// Moves every shard held by revoking server `i` elsewhere, re-commits the manifests, then
    /// releases the server's memory. Returns the number of shards moved.
    pub fn evacuate_server(&mut self, addr: &str) -> Result<usize> {
        let i = self
            .slots
            .iter()
            .position(|s| s.addr == addr)
            .ok_or_else(|| PoolError::Config(format!("{addr} is not in the pool")))?;
        self.evacuate(i)
    }

    fn evacuate(&mut self, i: usize) -> Result<usize> {
        let t0 = Instant::now();
        let list = {
            let addr = self.slots[i].addr.clone();
            let c = self.slots[i]
                .conn
                .as_mut()
                .ok_or(PoolError::NoServers(addr))?;
            c.list()
        };
        let list = list.inspect_err(|e| self.note_error(Handle::Server(i), e))?;
        let mut moved = 0;
        let mut first_err = None;
        // Every generation with objects here, committed here or not: a server that started
        // revoking during a write refused that generation's commit but holds its early shards.
        for e in &list {
            match self.relocate(e.generation, Move::OffServer(i)) {
                Ok(n) => moved += n,
                // Committed nowhere: an abandoned write, nothing to keep.
                Err(PoolError::NotFound(_)) => {}
                Err(err) => {
                    tracing::error!(server = %self.slots[i].addr, generation = e.generation, error = %err, "cannot move data off a revoking server");
                    first_err.get_or_insert(err);
                }
            }
        }
        if let Some(e) = first_err {
            return Err(e);
        }
        let r = self.slots[i].conn.as_mut().map(|c| c.release());
        if let Some(Err(e)) = r {
            self.note_error(Handle::Server(i), &e);
        }
        self.slots[i].evacuated = true;
        tracing::info!(server = %self.slots[i].addr, shards = moved, ms = t0.elapsed().as_millis() as u64, "evacuated revoking server");
        Ok(moved)
    }

    /// Rebuilds shards of every committed generation that have no reachable copy onto spares.
    pub fn rebuild(&mut self) -> Result<usize> {
        let mut n = 0;
        for g in self.committed_generations() {
            let Ok((m, disk_as, _)) = self.load_manifest(g) else {
                continue;
            };
            if disk_as == Handle::Flushed || self.unavailable_shards(&m, disk_as) == 0 {
                continue;
            }
            n += self.relocate(g, Move::Lost)?;
        }
        Ok(n)
    }

    /// Whether a usable server has room for the smallest of `man`'s shards on local disk (the
    /// test [`Pool::pick_destination`] makes of every shard it moves).
    fn room_for_a_disk_shard(&self, man: &Manifest, disk_as: Handle) -> bool {
        let smallest = man
            .stripes
            .iter()
            .flatten()
            .filter(|l| l.target != LOST)
            .filter(|l| {
                self.resolve(&man.targets[l.target as usize], disk_as) == Some(Handle::Disk)
            })
            .map(|l| l.len as u64)
            .min();
        smallest.is_some_and(|len| {
            self.usable_servers()
                .into_iter()
                .any(|i| self.free_of(Handle::Server(i)) >= len + (64 << 10))
        })
    }

    /// Moves the shards of `generation` that `what` says to other targets, then re-commits the
    /// manifest. Returns how many moved.
    fn relocate(&mut self, generation: u64, what: Move) -> Result<usize> {
        let (mut man, disk_as, _) = self.load_manifest(generation)?;
        if disk_as == Handle::Flushed {
            return Ok(0);
        }
        let mut moved = 0;
        let mut touched: BTreeSet<Handle> = BTreeSet::new();
        let todo: Vec<(usize, usize)> = (0..man.stripes.len())
            .flat_map(|s| (0..man.stripes[s].len()).map(move |j| (s, j)))
            .filter(|&(s, j)| Self::real_shard(&man, s, j))
            .filter(|&(s, j)| {
                let l = man.stripes[s][j];
                let h = if l.target == LOST {
                    None
                } else {
                    self.resolve(&man.targets[l.target as usize], disk_as)
                };
                match what {
                    Move::OffServer(i) => h == Some(Handle::Server(i)),
                    Move::Lost => h.is_none(),
                    Move::OffDisk => h == Some(Handle::Disk),
                }
            })
            .collect();
        // Batches keep the reads pipelined (no round trip per shard) and memory bounded.
        // Reads of the next batch are on the wire while this batch is written to its new
        // places: the source servers and the destinations work at the same time.
        let batches: Vec<&[(usize, usize)]> = todo.chunks(RELOCATE_BATCH).collect();
        let mut inflight = match batches.first() {
            Some(b) => self.send_gets(&man, disk_as, b),
            None => Vec::new(),
        };
        for (bi, batch) in batches.iter().enumerate() {
            // Content: straight from the revoking server while it still serves reads...
            let mut got = self.recv_gets(&man, std::mem::take(&mut inflight));
            // ...else reconstructed from the rest of the stripe (nothing is in flight here, so
            // the synchronous reads of the degraded path are safe).
            let missing: Vec<(usize, usize)> = batch
                .iter()
                .copied()
                .filter(|x| !got.contains_key(x))
                .collect();
            if !missing.is_empty() {
                let stripes: BTreeSet<usize> = missing.iter().map(|x| x.0).collect();
                let others: Vec<(usize, usize)> = stripes
                    .iter()
                    .flat_map(|&s| (0..man.stripes[s].len()).map(move |j| (s, j)))
                    .filter(|&(s, j)| Self::real_shard(&man, s, j) && !missing.contains(&(s, j)))
                    .collect();
                let mut pre = self.fetch_pipelined(&man, disk_as, &others);
                for &s in &stripes {
                    let shards = self.stripe_shards(&man, disk_as, s, &[], true, &mut pre)?;
                    for (j, d) in shards.into_iter().enumerate() {
                        if missing.contains(&(s, j)) {
                            got.insert((s, j), d);
                        }
                    }
                }
            }
            if let Some(next) = batches.get(bi + 1) {
                inflight = self.send_gets(&man, disk_as, next);
            }
            if let Err(e) = self.place_moved(
                &mut man,
                &missing,
                disk_as,
                what,
                generation,
                batch,
                &mut got,
                &mut touched,
                &mut moved,
            ) {
                // Leave no read in flight on the connections before giving up.
                let pending = std::mem::take(&mut inflight);
                self.recv_gets(&man, pending);
                return Err(e);
            }
        }
        if moved == 0 {
            return Ok(0);
        }
        for &h in &touched {
            let r = self.backend(h).map(|b| b.sync());
            if let Some(Err(e)) = r {
                self.note_error(h, &e);
                return Err(e.into());
            }
        }
        man.version += 1;
        let blob = man.seal(&self.sealer)?;
        let mut ok = 0;
        let mut errs = Vec::new();
        let holders: BTreeSet<Handle> = man
            .stripes
            .iter()
            .flatten()
            .filter(|l| l.target != LOST)
            .filter_map(|l| self.resolve(&man.targets[l.target as usize], disk_as))
            .filter(|h| !matches!((h, what), (Handle::Server(i), Move::OffServer(f)) if *i == f))
            .collect();
        for h in holders {
            let r = self.backend(h).map(|b| b.commit(generation, &blob));
            match r {
                Some(Ok(())) => ok += 1,
                Some(Err(e)) => {
                    errs.push(e.to_string());
                    self.note_error(h, &e);
                }
                None => {}
            }
        }
        if ok == 0 {
            return Err(PoolError::CommitFailed {
                generation,
                detail: format!("re-commit after moving data failed: {}", errs.join("; ")),
            });
        }
        tracing::info!(
            generation,
            moved,
            version = man.version,
            "moved shards and re-committed manifest"
        );
        Ok(moved)
    }

    /// Fetches the given shards with all requests sent before any answer is read; returns those
    /// that arrived intact (length and CRC as the manifest says).
    fn fetch_pipelined(
        &mut self,
        man: &Manifest,
        disk_as: Handle,
        wanted: &[(usize, usize)],
    ) -> HashMap<(usize, usize), Vec<u8>> {
        let order = self.send_gets(man, disk_as, wanted);
        self.recv_gets(man, order)
    }

    /// First half of [`Pool::fetch_pipelined`]: queues the reads and puts them on the wire.
    /// Every call must be followed by [`Pool::recv_gets`] with the returned order before any
    /// synchronous request on those connections.
    fn send_gets(
        &mut self,
        man: &Manifest,
        disk_as: Handle,
        wanted: &[(usize, usize)],
    ) -> Vec<(Handle, usize, usize)> {
        let mut order = Vec::new();
        for &(s, j) in wanted {
            self.request_shard(man, disk_as, s, j, &mut order);
        }
        self.flush_requests(&order);
        order
    }

    /// Sends a GET for shard `j` of stripe `s` to wherever it lives (skipping a lost one) and
    /// records where it went in `order`; a failing backend is noted, not fatal.
    fn request_shard(
        &mut self,
        man: &Manifest,
        disk_as: Handle,
        s: usize,
        j: usize,
        order: &mut Vec<(Handle, usize, usize)>,
    ) {
        let l = man.stripes[s][j];
        if l.target == LOST {
            return;
        }
        let Some(h) = self.resolve(&man.targets[l.target as usize], disk_as) else {
            return;
        };
        match self
            .backend(h)
            .map(|b| b.send_get(man.generation, shard_key(s, j)))
        {
            Some(Ok(())) => order.push((h, s, j)),
            Some(Err(e)) => self.note_error(h, &e),
            None => {}
        }
    }

    /// Second half of [`Pool::fetch_pipelined`]: collects the answers, keeping intact shards.
    fn recv_gets(
        &mut self,
        man: &Manifest,
        order: Vec<(Handle, usize, usize)>,
    ) -> HashMap<(usize, usize), Vec<u8>> {
        let mut got = HashMap::new();
        for (h, s, j) in order {
            let r = match self.backend(h) {
                Some(b) => b.recv_get_crc(),
                None => continue,
            };
            match r {
                Ok((d, crc)) => {
                    let l = man.stripes[s][j];
                    if d.len() == l.len as usize && crc == l.crc {
                        got.insert((s, j), d);
                    } else {
                        tracing::warn!(source = %self.name_of(h), stripe = s, shard = j, "shard failed its checksum");
                    }
                }
                Err(e) => self.note_error(h, &e),
            }
        }
        got
    }

    /// Puts every backend's queued reads on the wire before the first answer is awaited.
    fn flush_requests(&mut self, order: &[(Handle, usize, usize)]) {
        let hs: BTreeSet<Handle> = order.iter().map(|x| x.0).collect();
        for h in hs {
            let r = self.backend(h).map(|b| b.flush_requests());
            if let Some(Err(e)) = r {
                self.note_error(h, &e);
            }
        }
    }

    /// Writes fetched shards of one batch to their new places and updates the manifest.
    #[allow(clippy::too_many_arguments)] // the relocation's state, threaded through one step
    fn place_moved(
        &mut self,
        man: &mut Manifest,
        rebuilt: &[(usize, usize)],
        disk_as: Handle,
        what: Move,
        generation: u64,
        batch: &[(usize, usize)],
        got: &mut HashMap<(usize, usize), Vec<u8>>,
        touched: &mut BTreeSet<Handle>,
        moved: &mut usize,
    ) -> Result<()> {
        for &(s, j) in batch {
            let Some(data) = got.remove(&(s, j)) else {
                continue;
            };
            let used: Vec<Handle> = man.stripes[s]
                .iter()
                .filter(|l| l.target != LOST)
                .filter_map(|l| self.resolve(&man.targets[l.target as usize], disk_as))
                .collect();
            let dest = match (self.pick_destination(&used, what, data.len() as u64), what) {
                (Some(d), _) => d,
                // Back to remote memory: what no server has room for stays on the disk.
                (None, Move::OffDisk) => {
                    crate::bufpool::give(data);
                    continue;
                }
                (None, _) => {
                    return Err(PoolError::NoSpare(format!(
                        "shard {j} of stripe {s} of generation {generation}"
                    )));
                }
            };
            // A shard read as is was checked against the manifest's CRC on arrival; only a
            // reconstructed one needs checksumming.
            let crc = if rebuilt.contains(&(s, j)) {
                crate::crc::crc32c(&data)
            } else {
                man.stripes[s][j].crc
            };
            let r = match self.backend(dest) {
                Some(b) => b.put_crc(generation, shard_key(s, j), &data, crc),
                None => continue,
            };
            // The put copied the bytes into the socket: the buffer can serve the next read.
            let len = data.len();
            crate::bufpool::give(data);
            if let Err(e) = r {
                self.note_error(dest, &e);
                return Err(e.into());
            }
            touched.insert(dest);
            let tref = self.target_ref(dest);
            let idx = match man.targets.iter().position(|t| *t == tref) {
                Some(x) => x,
                None => {
                    man.targets.push(tref);
                    man.targets.len() - 1
                }
            };
            man.stripes[s][j] = ShardLoc {
                target: idx as u16,
                len: len as u32,
                crc,
            };
            *moved += 1;
        }
        Ok(())
    }

    /// A target for a moved shard: a usable server not already holding a shard of the stripe,
    /// most free memory first; else the local disk (unless the shard is leaving it).
    fn pick_destination(&mut self, used: &[Handle], what: Move, len: u64) -> Option<Handle> {
        let mut best: Option<(u64, usize)> = None;
        for i in self.usable_servers() {
            if what == Move::OffServer(i) || used.contains(&Handle::Server(i)) {
                continue;
            }
            let free = self.slots[i].status.map_or(0, |s| s.free());
            if free < len + (64 << 10) {
                continue;
            }
            if best.is_none_or(|(f, _)| free > f) {
                best = Some((free, i));
            }
        }
        match best {
            Some((_, i)) => {
                // Account for what we are about to put so several moves spread out.
                if let Some(st) = self.slots[i].status.as_mut() {
                    st.used += len;
                }
                Some(Handle::Server(i))
            }
            None if what == Move::OffDisk => None,
            None => self.disk.as_ref().map(|_| Handle::Disk),
        }
    }

    /// All real shards of stripe `s` as stored (ciphertext), reconstructing missing data shards,
    /// and with `all`, recomputing missing redundancy shards too. `exclude` marks shards known bad.
    fn stripe_shards(
        &mut self,
        man: &Manifest,
        disk_as: Handle,
        s: usize,
        exclude: &[usize],
        all: bool,
        prefetched: &mut HashMap<(usize, usize), Vec<u8>>,
    ) -> Result<Vec<Vec<u8>>> {
        let (k, m) = (man.k as usize, man.m as usize);
        let mut shards: Vec<Option<Vec<u8>>> = vec![None; k + m];
        let mut why: Vec<String> = Vec::new();
        let mut fetch = |pool: &mut Pool, j: usize, why: &mut Vec<String>| -> Option<Vec<u8>> {
            if let Some(d) = prefetched.remove(&(s, j)) {
                return Some(d);
            }
            let l = man.stripes[s][j];
            if l.target == LOST {
                why.push(format!(
                    "shard {j} was never stored (its server failed during the write)"
                ));
                return None;
            }
            let t = &man.targets[l.target as usize];
            let Some(h) = pool.resolve(t, disk_as) else {
                why.push(format!("shard {j}: {} is unavailable", describe(t)));
                return None;
            };
            let r = pool.backend(h)?.get(man.generation, shard_key(s, j));
            match r {
                Ok(b) if b.len() == l.len as usize && crate::crc::crc32c(&b) == l.crc => Some(b),
                Ok(_) => {
                    why.push(format!(
                        "shard {j} from {} failed its checksum",
                        pool.name_of(h)
                    ));
                    None
                }
                Err(e) => {
                    why.push(format!("shard {j}: {e}"));
                    pool.note_error(h, &e);
                    None
                }
            }
        };
        let real = |j: usize| Self::real_shard(man, s, j);
        for (j, slot) in shards.iter_mut().enumerate().take(k) {
            if !real(j) {
                *slot = Some(Vec::new());
            } else if !exclude.contains(&j) {
                *slot = fetch(self, j, &mut why);
            }
        }
        let lens: Vec<usize> = (0..k)
            .map(|j| {
                if real(j) {
                    man.stripes[s][j].len as usize
                } else {
                    0
                }
            })
            .collect();
        let missing = (0..k).any(|j| shards[j].is_none());
        if missing || all {
            for (j, slot) in shards.iter_mut().enumerate().skip(k) {
                if !exclude.contains(&j) {
                    *slot = fetch(self, j, &mut why);
                }
            }
        }
        if missing {
            erasure::reconstruct(man.code, k, m, &mut shards, &lens).map_err(|e| {
                PoolError::DataLoss {
                    generation: man.generation,
                    detail: format!("stripe {s}: {e}: {}", why.join("; ")),
                }
            })?;
        }
        if all && (k..k + m).any(|j| shards[j].is_none()) {
            let data: Vec<&[u8]> = (0..k)
                .map(|j| shards[j].as_deref().unwrap_or(&[]))
                .collect();
            let len = erasure::coded_len(data.iter().map(|d| d.len()).max().unwrap_or(0));
            let red = erasure::encode(man.code, &data, m, len)?;
            for (j, r) in red.into_iter().enumerate() {
                if shards[k + j].is_none() {
                    shards[k + j] = Some(r);
                }
            }
        }
        Ok(shards.into_iter().map(|x| x.unwrap_or_default()).collect())
    }

    /// Reads stripes `range` (data chunks, decrypted), pipelining all data-shard reads across the
    /// servers; stripes with a missing or bad shard go through the degraded path.
    fn read_stripes(
        &mut self,
        man: &Manifest,
        disk_as: Handle,
        range: std::ops::Range<usize>,
    ) -> Vec<Result<Vec<Vec<u8>>>> {
        let k = man.k as usize;
        let wanted: Vec<(usize, usize)> = range
            .clone()
            .flat_map(|s| (0..k).map(move |j| (s, j)))
            .filter(|&(s, j)| Self::real_shard(man, s, j))
            .collect();
        let mut got = self.fetch_pipelined(man, disk_as, &wanted);
        let mut out = Vec::new();
        for s in range {
            let mut chunks = Vec::with_capacity(k);
            let mut bad = Vec::new();
            for j in 0..k {
                let idx = s * k + j;
                if idx >= man.chunk_lens.len() {
                    break;
                }
                match got.remove(&(s, j)) {
                    Some(mut b) => match self.sealer.open_chunk(
                        man.generation,
                        man.salt,
                        idx as u32,
                        man.chunk_lens[idx],
                        &mut b,
                    ) {
                        Ok(()) => chunks.push(b),
                        Err(e) => {
                            tracing::warn!(stripe = s, shard = j, error = %e, "shard failed authentication; trying redundancy");
                            bad.push(j);
                            chunks.push(Vec::new());
                        }
                    },
                    None => {
                        bad.push(j);
                        chunks.push(Vec::new());
                    }
                }
            }
            if bad.is_empty() {
                out.push(Ok(chunks));
                continue;
            }
            // Degraded: rebuild the stripe from whatever is left, excluding shards that lied.
            out.push(self.degraded_stripe(man, disk_as, s, &bad));
        }
        out
    }

    fn degraded_stripe(
        &mut self,
        man: &Manifest,
        disk_as: Handle,
        s: usize,
        bad: &[usize],
    ) -> Result<Vec<Vec<u8>>> {
        let k = man.k as usize;
        let mut exclude: Vec<usize> = Vec::new();
        // Shards that were fetched but failed authentication must not feed reconstruction.
        for _attempt in 0..=man.m as usize + 1 {
            let shards =
                self.stripe_shards(man, disk_as, s, &exclude, false, &mut HashMap::new())?;
            let mut chunks = Vec::with_capacity(k);
            let mut failed = None;
            for (j, mut b) in shards.into_iter().take(k).enumerate() {
                let idx = s * k + j;
                if idx >= man.chunk_lens.len() {
                    break;
                }
                match self.sealer.open_chunk(
                    man.generation,
                    man.salt,
                    idx as u32,
                    man.chunk_lens[idx],
                    &mut b,
                ) {
                    Ok(()) => chunks.push(b),
                    Err(e) => {
                        failed = Some((j, e));
                        break;
                    }
                }
            }
            match failed {
                None => return Ok(chunks),
                Some((j, e)) => {
                    if exclude.contains(&j) || !bad.contains(&j) && exclude.len() >= man.m as usize
                    {
                        return Err(PoolError::DataLoss {
                            generation: man.generation,
                            detail: format!("stripe {s}: {e}"),
                        });
                    }
                    exclude.push(j);
                }
            }
        }
        Err(PoolError::DataLoss {
            generation: man.generation,
            detail: format!("stripe {s}: no consistent set of shards"),
        })
    }

    /// Copies a committed generation to the flushed directory (data shards only, as stored),
    /// so recovery still works when remote memory is gone. No-op when already there.
    pub fn flush_to_disk(&mut self, generation: u64) -> Result<bool> {
        let Some(f) = self.flushed.as_mut() else {
            return Err(PoolError::Config("no local_dir configured".into()));
        };
        if f.list()?
            .iter()
            .any(|e| e.generation == generation && e.committed)
        {
            return Ok(false);
        }
        let (man, disk_as, _) = self.load_manifest(generation)?;
        if disk_as == Handle::Flushed {
            return Ok(false);
        }
        let k = man.k as usize;
        let mut out = man.clone();
        out.targets = vec![TargetRef::Disk];
        for s in 0..man.stripes.len() {
            let shards = self.stripe_shards(&man, disk_as, s, &[], false, &mut HashMap::new())?;
            for (j, shard) in shards.iter().enumerate() {
                if j < k && Self::real_shard(&man, s, j) {
                    let f = self
                        .flushed
                        .as_mut()
                        .ok_or_else(|| PoolError::Config("no local_dir".into()))?;
                    f.put(generation, shard_key(s, j), shard)?;
                    out.stripes[s][j] = ShardLoc {
                        target: 0,
                        len: shard.len() as u32,
                        crc: crate::crc::crc32c(shard),
                    };
                } else {
                    out.stripes[s][j] = ShardLoc {
                        target: LOST,
                        len: 0,
                        crc: 0,
                    };
                }
            }
        }
        let blob = out.seal(&self.sealer)?;
        let f = self
            .flushed
            .as_mut()
            .ok_or_else(|| PoolError::Config("no local_dir".into()))?;
        f.commit(generation, &blob)?;
        tracing::info!(
            generation,
            bytes = man.bytes(),
            "flushed generation to local disk"
        );
        Ok(true)
    }

    /// Flushes every committed generation that has no disk copy yet; drops disk copies of
    /// generations that no longer exist anywhere else.
    pub fn flush_committed(&mut self) -> Result<usize> {
        let mut n = 0;
        let mut remote = BTreeSet::new();
        for h in self
            .live_servers()
            .into_iter()
            .map(Handle::Server)
            .chain([Handle::Disk])
        {
            let Some(b) = self.backend(h) else { continue };
            match b.list() {
                Ok(l) => remote.extend(l.iter().filter(|e| e.committed).map(|e| e.generation)),
                Err(e) => self.note_error(h, &e),
            }
        }
        for g in remote {
            if self.flush_to_disk(g)? {
                n += 1;
            }
        }
        Ok(n)
    }
}

/// (stored shards, those on the local directory) of a manifest.
fn shard_counts(m: &Manifest) -> (usize, usize) {
    let (mut all, mut disk) = (0, 0);
    for (s, st) in m.stripes.iter().enumerate() {
        for (j, l) in st.iter().enumerate() {
            if l.target == LOST || !Pool::real_shard(m, s, j) {
                continue;
            }
            all += 1;
            if m.targets.get(l.target as usize) == Some(&TargetRef::Disk) {
                disk += 1;
            }
        }
    }
    (all, disk)
}

/// What a manifest says about where its generation is. Any shard on the local directory makes it
/// [`Location::Disk`]: the generation then depends on this machine's disk, whatever the rest.
fn gen_info(m: &Manifest, flushed: bool, degraded: bool) -> GenInfo {
    let (shards, on_disk) = shard_counts(m);
    let (location, disk_shards) = if flushed {
        (Location::Flushed, shards)
    } else if on_disk > 0 || m.targets.iter().all(|t| *t == TargetRef::Disk) {
        // (The second case: an empty generation written to disk, its manifest only there.)
        (Location::Disk, on_disk)
    } else {
        (Location::Remote, 0)
    };
    GenInfo {
        generation: m.generation,
        bytes: m.bytes(),
        location,
        degraded,
        manifest_version: m.version,
        shards,
        disk_shards,
    }
}

fn h_name(h: Handle) -> String {
    format!("{h:?}")
}

fn describe(t: &TargetRef) -> String {
    match t {
        TargetRef::Remote { addr, .. } => format!("server {addr}"),
        TargetRef::Disk => "local disk".into(),
    }
}

/// Which shards [`Pool::relocate`] moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Move {
    /// Those on a revoking server (index into the pool's servers).
    OffServer(usize),
    /// Those with no reachable copy, rebuilt from the rest of their stripe.
    Lost,
    /// Those on the local directory, to servers with room (back to remote memory); what no
    /// server can take stays there.
    OffDisk,
}

/// A shard sent but not yet acknowledged: (put sequence number, stripe, shard index, bytes).
type Unacked = (u64, usize, usize, Shard);

/// A shard's bytes, shared when several targets hold the same bytes (mirror copies).
type Shard = Arc<Vec<u8>>;

/// Writes one generation. Data is chunked, sealed, striped and sent as it comes; nothing waits
/// for a server's answer until [`GenWriter::commit`].
#[derive(Debug)]
pub struct GenWriter<'p> {
    pool: &'p mut Pool,
    generation: u64,
    salt: u64,
    code: Code,
    k: usize,
    m: usize,
    /// Target (index into `targets`/`refs`) of each of the `width` lanes; stripe `s` puts shard
    /// `j` on lane `(s + j) % width`. A lane whose target fails moves to a spare.
    lanes: Vec<usize>,
    /// Bytes each target can still take (its free memory when the write started), so a full
    /// server's lane moves to a spare before the server has to refuse.
    budget: Vec<u64>,
    /// Per target: shards sent but not yet acknowledged, as (put sequence, stripe, shard, bytes).
    unacked: Vec<VecDeque<Unacked>>,
    /// Shard buffers ready for reuse.
    free_bufs: Vec<Vec<u8>>,
    /// Per target: puts sent since the last successful sync.
    dirty: Vec<bool>,
    /// Every target this generation used, in manifest order.
    targets: Vec<Handle>,
    refs: Vec<TargetRef>,
    failed: Vec<Option<String>>,
    chunk: Vec<u8>,
    chunk_size: usize,
    nchunks: usize,
    chunk_lens: Vec<u32>,
    pending: Vec<Vec<u8>>,
    /// CRC32C of each pending chunk when it was computed while the chunk was filled (plaintext).
    pending_crcs: Vec<Option<u32>>,
    /// Running CRC32C of `chunk` (plaintext only: a sealed chunk is checksummed after sealing).
    chunk_crc: u32,
    /// (length, CRC32C of that many zero bytes), to derive XOR parity checksums.
    zero_crc: Option<(usize, u32)>,
    stripes: Vec<Vec<ShardLoc>>,
    extents: Vec<Extent>,
    stream_pos: u64,
    /// Committed or already cleaned up: nothing for `Drop` to do.
    done: bool,
    /// Version of the manifest this writer commits (above 1 when it replaces a placement).
    version: u32,
    /// Lanes may go on in the local directory when no spare server is left (see [`Pool::begin`]).
    spill: bool,
    /// Some target ran out of memory during the write (for the error when nothing could take
    /// over).
    out_of_space: bool,
}

impl GenWriter<'_> {
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Whether this whole generation goes to local disk (remote capacity was short when it
    /// started). Lanes of a remote generation may still move there during the write; the
    /// [`GenInfo`] of the commit says where it ended up.
    pub fn on_disk(&self) -> bool {
        self.targets == [Handle::Disk]
    }

    /// Stores `data` at caller address `addr` (a page run of a checkpoint image, for instance).
    pub fn put(&mut self, mut addr: u64, mut data: &[u8]) -> Result<()> {
        while !data.is_empty() {
            let off = self.chunk.len();
            let n = (self.chunk_size - off).min(data.len());
            let chunk = self.nchunks as u32;
            match self.extents.last_mut() {
                Some(e)
                    if e.chunk == chunk
                        && e.off + e.len == off as u32
                        && e.addr + e.len as u64 == addr =>
                {
                    e.len += n as u32
                }
                _ => self.extents.push(Extent {
                    addr,
                    len: n as u32,
                    chunk,
                    off: off as u32,
                }),
            }
            if self.pool.sealer.encrypts() {
                self.chunk.extend_from_slice(&data[..n]);
            } else {
                // Plaintext: the chunk is sent as it is, so checksum each piece right after
                // copying it, while it is in cache, instead of a second pass over the chunk.
                for piece in data[..n].chunks(64 << 10) {
                    self.chunk.extend_from_slice(piece);
                    self.chunk_crc = crate::crc::crc32c_append(self.chunk_crc, piece);
                }
            }
            addr += n as u64;
            data = &data[n..];
            if self.chunk.len() == self.chunk_size {
                self.seal_chunk()?;
            }
        }
        Ok(())
    }

    /// Adds a chunk that is already sealed (moving a generation without decrypting it).
    fn push_sealed(&mut self, plain_len: u32, sealed: Vec<u8>) -> Result<()> {
        self.chunk_lens.push(plain_len);
        self.nchunks += 1;
        self.pending.push(sealed);
        self.pending_crcs.push(None);
        if self.pending.len() == self.k {
            self.write_stripe()?;
        }
        Ok(())
    }

    fn seal_chunk(&mut self) -> Result<()> {
        let idx = self.nchunks as u32;
        let next = self
            .free_bufs
            .pop()
            .unwrap_or_else(|| chunk_buf(self.chunk_size));
        let mut buf = std::mem::replace(&mut self.chunk, next);
        self.chunk_lens.push(buf.len() as u32);
        self.pool
            .sealer
            .seal_chunk(self.generation, self.salt, idx, &mut buf)?;
        self.nchunks += 1;
        self.pending.push(buf);
        let crc = std::mem::take(&mut self.chunk_crc);
        self.pending_crcs
            .push((!self.pool.sealer.encrypts()).then_some(crc));
        if self.pending.len() == self.k {
            self.write_stripe()?;
        }
        Ok(())
    }

    /// Records that target `t` failed: shards it did not store become lost, and the lanes that
    /// used it move to a spare when one is free, so the rest of the write goes there. Returns the
    /// unacknowledged shards that must be placed again.
    fn fail_target(&mut self, t: usize, e: &BackendError) -> Vec<(usize, usize, Shard)> {
        if self.failed[t].is_none() {
            tracing::warn!(generation = self.generation, target = %self.pool.name_of(self.targets[t]), error = %e, "target failed during the write");
            self.failed[t] = Some(e.to_string());
        }
        self.out_of_space |= matches!(e, BackendError::NoSpace { .. });
        let h = self.targets[t];
        // Still connected (no space, revoked): learn exactly which puts were refused; the
        // others are stored. Down: everything on it is gone.
        let refused: Option<Vec<(u64, u64)>> = if e.is_down() {
            None
        } else {
            match self
                .pool
                .backend(h)
                .map(|b| (b.sync(), b.take_failed_puts()))
            {
                Some((Err(e2), _)) if e2.is_down() => None,
                Some((_, keys)) => Some(keys),
                None => None,
            }
        };
        self.pool.note_error(h, e);
        let generation = self.generation;
        let is_lost = |s: usize, j: usize| match &refused {
            None => true,
            Some(keys) => keys.contains(&(generation, shard_key(s, j))),
        };
        for (s, st) in self.stripes.iter_mut().enumerate() {
            for (j, l) in st.iter_mut().enumerate() {
                if l.target == t as u16 && is_lost(s, j) {
                    l.target = LOST;
                }
            }
        }
        tracing::debug!(?refused, unacked = ?self.unacked[t].iter().map(|x| (x.0, x.1, x.2)).collect::<Vec<_>>(), "fail_target");
        let requeue: Vec<(usize, usize, Shard)> = std::mem::take(&mut self.unacked[t])
            .into_iter()
            .filter(|(_, s, j, _)| is_lost(*s, *j))
            .map(|(_, s, j, d)| (s, j, d))
            .collect();
        let mut in_use: Vec<Handle> = self.lanes.iter().map(|&x| self.targets[x]).collect();
        for lane in 0..self.lanes.len() {
            if self.lanes[lane] != t {
                continue;
            }
            // A spare server first (one this generation never used: a failed one stays failed);
            // else the local directory, which takes any number of lanes, so that servers
            // filling up one after another never leave a lane with nowhere to go.
            let spare = self
                .pool
                .usable_servers()
                .into_iter()
                .map(Handle::Server)
                .find(|h| !in_use.contains(h) && !self.targets.contains(h));
            let to = match spare {
                Some(sp) => Some(self.add_target(sp)),
                None => self.disk_target(),
            };
            if let Some(nt) = to {
                let sp = self.targets[nt];
                if sp == Handle::Disk {
                    tracing::warn!(generation = self.generation, from = %self.pool.name_of(h), "remote memory short: continuing this part of the write on local disk");
                } else {
                    tracing::info!(generation = self.generation, from = %self.pool.name_of(h), to = %self.pool.name_of(sp), "continuing the write on a spare");
                }
                self.lanes[lane] = nt;
                in_use.push(sp);
            }
        }
        requeue
    }

    /// Adds `h` to this generation's targets; returns its index.
    fn add_target(&mut self, h: Handle) -> usize {
        self.targets.push(h);
        self.refs.push(self.pool.target_ref(h));
        self.failed.push(None);
        self.budget.push(self.pool.free_of(h));
        self.unacked.push(VecDeque::new());
        self.dirty.push(false);
        self.targets.len() - 1
    }

    /// The local directory as a lane's target, when the write may spill there and it has not
    /// failed: one target however many lanes use it (the manifest names it once).
    fn disk_target(&mut self) -> Option<usize> {
        if !self.spill || self.pool.disk.is_none() {
            return None;
        }
        match self.targets.iter().position(|&h| h == Handle::Disk) {
            Some(d) => self.failed[d].is_none().then_some(d),
            None => Some(self.add_target(Handle::Disk)),
        }
    }

    /// Shards of stripe `s` that have no place (their target failed with nothing to take over).
    fn lost_in(&self, s: usize) -> usize {
        let st = &self.stripes[s];
        (0..st.len())
            .filter(|&j| j >= self.k || s * self.k + j < self.nchunks)
            .filter(|&j| st[j].target == LOST)
            .count()
    }

    /// The error for stripe `s` having lost `lost` shards, more than the redundancy covers.
    fn loss_error(&self, s: usize, lost: usize) -> PoolError {
        // (Each backend error names its target.)
        let why: Vec<&str> = self.failed.iter().flatten().map(String::as_str).collect();
        let hint = if self.out_of_space && (self.pool.disk.is_none() || !self.spill) {
            " (remote memory ran out during the write and there is no local directory to go on in)"
        } else {
            ""
        };
        PoolError::DataLoss {
            generation: self.generation,
            detail: format!(
                "stripe {s} lost {lost} shards, redundancy covers {}{hint}; {}",
                self.m,
                why.join("; ")
            ),
        }
    }

    /// Keeps acknowledged shard buffers for the next chunks: fresh megabyte allocations would
    /// cost page faults and zeroing on every chunk. Shared buffers (a mirror copy still waiting
    /// for another target) are simply dropped here.
    fn recycle(&mut self, b: Shard) {
        if let Ok(mut b) = Arc::try_unwrap(b)
            && self.free_bufs.len() < 32
            && b.capacity() >= self.chunk_size
        {
            b.clear();
            self.free_bufs.push(b);
        }
    }

    /// Sends shard `j` of stripe `s` to its lane's target, moving on to spares when targets fail.
    /// The shard is kept until the target acknowledges it, so a refusal can be retried elsewhere.
    fn place(&mut self, s: usize, j: usize, shard: Shard) {
        let lane = (s + j) % self.lanes.len();
        let mut requeue = Vec::new();
        // Each failure retires a target for good, so this ends.
        for _ in 0..=self.targets.len() + self.pool.slots.len() + 1 {
            let t = self.lanes[lane];
            if self.failed[t].is_some() {
                break;
            }
            let h = self.targets[t];
            // Servers store whole 16 KiB slots.
            let need = (shard.len() as u64).div_ceil(16 << 10).max(1) * (16 << 10);
            if self.budget[t] < need {
                let e = BackendError::NoSpace {
                    target: self.pool.name_of(h),
                    msg: "its free memory is used up by this generation".into(),
                };
                requeue.extend(self.fail_target(t, &e));
                continue;
            }
            let crc = self.stripes[s][j].crc;
            let r = match self.pool.backend(h) {
                Some(b) => b
                    .put_crc(self.generation, shard_key(s, j), shard.as_slice(), crc)
                    .map(|()| (b.puts_sent(), b.puts_acked())),
                None => Err(BackendError::Down {
                    target: self.pool.name_of(h),
                    msg: "not connected".into(),
                }),
            };
            match r {
                Ok((sent, acked)) => {
                    self.budget[t] -= need;
                    self.stripes[s][j].target = t as u16;
                    self.dirty[t] = true;
                    while self.unacked[t].front().is_some_and(|x| x.0 <= acked) {
                        if let Some((_, _, _, b)) = self.unacked[t].pop_front() {
                            self.recycle(b);
                        }
                    }
                    if sent > acked {
                        self.unacked[t].push_back((sent, s, j, shard));
                    } else {
                        self.recycle(shard);
                    }
                    break;
                }
                Err(e) => requeue.extend(self.fail_target(t, &e)),
            }
        }
        for (s2, j2, d2) in requeue {
            self.place(s2, j2, d2);
        }
    }

    fn write_stripe(&mut self) -> Result<()> {
        let s = self.stripes.len();
        let data = std::mem::take(&mut self.pending);
        let mut crcs = std::mem::take(&mut self.pending_crcs);
        // Data shards not checksummed while they were filled (sealed chunks) are checksummed now.
        for (c, d) in crcs.iter_mut().zip(&data) {
            c.get_or_insert_with(|| crate::crc::crc32c(d));
        }
        let mut crcs: Vec<u32> = crcs.into_iter().flatten().collect();
        // Mirror copies share the data shard's buffer and checksum: no copy, no second pass.
        let mut shards: Vec<Option<Shard>> = Vec::with_capacity(self.k + self.m);
        if self.code == Code::Copy {
            let d = data.into_iter().next().map(Arc::new);
            let c = crcs.first().copied().unwrap_or(0);
            shards.extend((0..=self.m).map(|_| d.clone()));
            crcs = vec![c; self.m + 1];
        } else if self.code == Code::Xor && self.m == 1 {
            // XOR parity into a reused buffer (no fresh zeroed megabyte per stripe). Its CRC32C
            // follows from the data shards' ones when they are all full length, CRC32C being
            // affine: crc(a ^ b) = crc(a) ^ crc(b) ^ crc(zeros).
            let len = erasure::coded_len(data.iter().map(|d| d.len()).max().unwrap_or(0));
            let mut p = self.free_bufs.pop().unwrap_or_default();
            erasure::xor_parity_into(&data, len, &mut p);
            let pcrc = if data.len() == self.k && data.iter().all(|d| d.len() == len) {
                let z = match self.zero_crc {
                    Some((l, z)) if l == len => z,
                    _ => {
                        let z = crate::crc::crc32c(&vec![0u8; len]);
                        self.zero_crc = Some((len, z));
                        z
                    }
                };
                let even = self.k.is_multiple_of(2);
                crcs.iter().fold(if even { z } else { 0 }, |a, c| a ^ c)
            } else {
                crate::crc::crc32c(&p)
            };
            shards.extend(data.into_iter().map(|d| Some(Arc::new(d))));
            shards.resize(self.k, None);
            crcs.resize(self.k, 0);
            shards.push(Some(Arc::new(p)));
            crcs.push(pcrc);
        } else {
            let red = {
                let refs: Vec<&[u8]> = (0..self.k)
                    .map(|j| data.get(j).map_or(&[][..], |d| d.as_slice()))
                    .collect();
                let len = erasure::coded_len(refs.iter().map(|d| d.len()).max().unwrap_or(0));
                erasure::encode(self.code, &refs, self.m, len)?
            };
            shards.extend(data.into_iter().map(|d| Some(Arc::new(d))));
            shards.resize(self.k, None);
            crcs.resize(self.k, 0);
            crcs.extend(red.iter().map(|r| crate::crc::crc32c(r)));
            shards.extend(red.into_iter().map(|r| Some(Arc::new(r))));
        }
        let locs = shards
            .iter()
            .zip(&crcs)
            .map(|(x, &crc)| match x {
                Some(d) => ShardLoc {
                    target: LOST,
                    len: d.len() as u32,
                    crc,
                },
                None => ShardLoc {
                    target: LOST,
                    len: 0,
                    crc: 0,
                },
            })
            .collect();
        self.stripes.push(locs);
        for (j, sh) in shards.into_iter().enumerate() {
            if let Some(d) = sh {
                self.place(s, j, d);
            }
        }
        // Nothing could take a lost shard (a lost one stays lost): the commit would fail, so
        // fail now instead of encoding and sending the rest of the generation for nothing.
        let lost = self.lost_in(s);
        if lost > self.m {
            return Err(self.loss_error(s, lost));
        }
        Ok(())
    }

    /// Waits for every acknowledgement; a target failing now has its unacknowledged shards
    /// placed again elsewhere, which makes that target need a sync in turn.
    fn sync_all(&mut self) {
        loop {
            let mut again = false;
            for t in 0..self.targets.len() {
                if self.failed[t].is_some() || !self.dirty[t] {
                    continue;
                }
                let h = self.targets[t];
                let r = match self.pool.backend(h) {
                    Some(b) => b.sync(),
                    None => Err(BackendError::Down {
                        target: self.pool.name_of(h),
                        msg: "not connected".into(),
                    }),
                };
                match r {
                    Ok(()) => {
                        self.dirty[t] = false;
                        for (_, _, _, b) in std::mem::take(&mut self.unacked[t]) {
                            self.recycle(b);
                        }
                    }
                    Err(e) => {
                        for (s, j, d) in self.fail_target(t, &e) {
                            self.place(s, j, d);
                        }
                        again = true;
                    }
                }
            }
            if !again {
                break;
            }
        }
    }

    /// Moves every shard of this generation off target `t` (revoking): its lanes go to spares,
    /// the shards it stored are read back (it still serves reads) and placed there; any it can no
    /// longer return count as lost, so the commit check sees them.
    fn move_off(&mut self, t: usize) {
        let h = self.targets[t];
        let e = BackendError::Revoked {
            target: self.pool.name_of(h),
            msg: "revoking: moving this generation off it before the commit".into(),
        };
        for (s, j, d) in self.fail_target(t, &e) {
            self.place(s, j, d);
        }
        let keys: Vec<(usize, usize)> = self
            .stripes
            .iter()
            .enumerate()
            .flat_map(|(s, st)| {
                st.iter()
                    .enumerate()
                    .filter(|(_, l)| l.target == t as u16)
                    .map(move |(j, _)| (s, j))
            })
            .collect();
        let mut fetched: Vec<Option<Vec<u8>>> = Vec::with_capacity(keys.len());
        if let Some(b) = self.pool.backend(h) {
            let sent = keys
                .iter()
                .all(|&(s, j)| b.send_get(self.generation, shard_key(s, j)).is_ok())
                && b.flush_requests().is_ok();
            for &(s, j) in &keys {
                let l = self.stripes[s][j];
                let got = if sent { b.recv_get_crc().ok() } else { None };
                fetched.push(
                    got.filter(|(d, c)| d.len() == l.len as usize && *c == l.crc)
                        .map(|(d, _)| d),
                );
            }
        }
        fetched.resize(keys.len(), None);
        let mut lost = 0;
        for ((s, j), d) in keys.into_iter().zip(fetched) {
            self.stripes[s][j].target = LOST;
            match d {
                Some(d) => self.place(s, j, Arc::new(d)),
                None => lost += 1,
            }
        }
        tracing::info!(generation = self.generation, target = %self.pool.name_of(h), lost, "moved this generation off a revoking server before its commit");
    }

    /// Commits the generation: waits for every shard's acknowledgement, checks that each stripe is
    /// still recoverable, then writes the manifest to every target. `user` is the caller's own
    /// manifest (region table, image header), returned by [`GenReader::user_manifest`].
    pub fn commit(mut self, user: &[u8]) -> Result<GenInfo> {
        if !self.chunk.is_empty() {
            self.seal_chunk()?;
        }
        if !self.pending.is_empty() {
            self.write_stripe()?;
        }
        self.sync_all();
        // Targets that started revoking during the write: move this generation's shards off them
        // now, before the manifest names them, rather than after the commit, when their deadline
        // may already have taken the data.
        self.pool.refresh();
        // (A target that refused puts is already marked failed, but still holds the shards it took
        // before: what counts is whether the manifest would name it.)
        let revoking: Vec<usize> = (0..self.targets.len())
            .filter(|&t| self.stripes.iter().flatten().any(|l| l.target == t as u16))
            .filter(|&t| matches!(self.targets[t], Handle::Server(i) if self.pool.revoking(i)))
            .collect();
        if !revoking.is_empty() {
            for t in revoking {
                self.move_off(t);
            }
            self.sync_all();
        }
        let mut degraded = false;
        for s in 0..self.stripes.len() {
            let lost = self.lost_in(s);
            if lost > self.m {
                let e = self.loss_error(s, lost);
                self.abort();
                return Err(e);
            }
            degraded |= lost > 0;
        }
        let man = Manifest {
            pool: self.pool.cfg.pool_id,
            generation: self.generation,
            version: self.version,
            salt: self.salt,
            code: self.code,
            k: self.k as u8,
            m: self.m as u8,
            chunk_size: self.chunk_size as u32,
            chunk_lens: std::mem::take(&mut self.chunk_lens),
            targets: self.refs.clone(),
            stripes: std::mem::take(&mut self.stripes),
            extents: std::mem::take(&mut self.extents),
            user: user.to_vec(),
        };
        let blob = man.seal(&self.pool.sealer)?;
        let mut ok = 0;
        let mut errs = Vec::new();
        for t in 0..self.targets.len() {
            let h = self.targets[t];
            // A server that filled up (still connected) keeps the shards it took: the manifest
            // goes there too when it has room for it, as to every holder of the generation, but
            // its refusal does not count against the commit.
            let best_effort = self.failed[t].is_some();
            if best_effort && !man.stripes.iter().flatten().any(|l| l.target == t as u16) {
                continue;
            }
            let r = self
                .pool
                .backend(h)
                .map(|b| b.commit(self.generation, &blob));
            match r {
                Some(Ok(())) => ok += 1,
                Some(Err(e)) if best_effort => {
                    tracing::debug!(generation = self.generation, target = %self.pool.name_of(h), error = %e, "no manifest on a full target");
                    self.pool.note_error(h, &e);
                }
                Some(Err(e)) => {
                    errs.push(e.to_string());
                    self.pool.note_error(h, &e);
                }
                None => {}
            }
        }
        if ok == 0 {
            return Err(PoolError::CommitFailed {
                generation: self.generation,
                detail: errs.join("; "),
            });
        }
        // Committed: from here on, nothing may free it (not even `Drop` after a panic).
        self.done = true;
        let mut info = gen_info(&man, false, degraded);
        if degraded {
            tracing::warn!(
                generation = self.generation,
                "committed degraded; rebuilding onto spares"
            );
            match self.pool.relocate(self.generation, Move::Lost) {
                // The rebuilt shards may have gone to the local directory: say where it is now.
                Ok(n) if n > 0 => info = self.pool.info(self.generation).unwrap_or(info),
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(generation = self.generation, error = %e, "rebuild after a degraded commit failed")
                }
            }
        }
        if info.partly_on_disk() {
            tracing::warn!(
                generation = self.generation,
                disk_shards = info.disk_shards,
                shards = info.shards,
                "committed partly on local disk (remote memory ran short during the write); maintenance moves it back when there is room"
            );
        }
        // A target that started revoking during the write holds shards that must move before its
        // deadline: do it now rather than wait for the next maintenance pass.
        for &h in &self.targets {
            if let Handle::Server(i) = h
                && self.pool.slots[i].conn.is_some()
                && self.pool.revoking(i)
                && !self.pool.slots[i].evacuated
                && let Err(e) = self.pool.evacuate(i)
            {
                tracing::warn!(server = %self.pool.slots[i].addr, error = %e, "evacuation after commit failed");
            }
        }
        Ok(info)
    }

    /// Drops what was written of this generation.
    pub fn abort(&mut self) {
        self.done = true;
        for &h in &self.targets {
            if let Some(b) = self.pool.backend(h) {
                let _ = b.sync();
                let _ = b.free(self.generation);
            }
        }
    }
}

/// A writer dropped before its commit (an error in the caller, say) frees what it wrote, best
/// effort; a process that dies leaves the leftovers to [`Pool::maintain`]'s collection.
impl Drop for GenWriter<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.abort();
        }
        // The next generation's writer starts with these instead of freshly faulted memory.
        for b in self.free_bufs.drain(..) {
            crate::bufpool::give(b);
        }
    }
}

/// An empty chunk buffer with room for a sealed chunk (the AEAD tag), reusing the thread's
/// buffer pool: a fresh megabyte costs page faults and zeroing, and its release an munmap.
fn chunk_buf(chunk_size: usize) -> Vec<u8> {
    let mut b = crate::bufpool::take(chunk_size + 16);
    b.clear();
    b
}

/// The byte-stream mode: a generation written as one offset-addressed stream (an image file).
impl std::io::Write for GenWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.put(self.stream_pos, buf)
            .map_err(std::io::Error::other)?;
        self.stream_pos += buf.len() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Reads one committed generation.
#[derive(Debug)]
pub struct GenReader<'p> {
    pool: &'p mut Pool,
    man: Manifest,
    disk_as: Handle,
    fallback: Option<Manifest>,
    by_addr: Vec<usize>,
    cache: Option<(usize, Vec<Vec<u8>>)>,
}

/// Shards moved per pipelined batch during migration and rebuild.
const RELOCATE_BATCH: usize = 32;

/// Stripes fetched per pipelined batch when streaming a whole generation.
const READ_BATCH: usize = 8;

impl GenReader<'_> {
    pub fn generation(&self) -> u64 {
        self.man.generation
    }

    /// The caller's manifest bytes given at commit.
    pub fn user_manifest(&self) -> &[u8] {
        &self.man.user
    }

    pub fn bytes(&self) -> u64 {
        self.man.bytes()
    }

    /// Address runs stored in this generation, in address order, adjacent ones merged.
    pub fn ranges(&self) -> Vec<(u64, u64)> {
        let mut v: Vec<(u64, u64)> = Vec::new();
        for &i in &self.by_addr {
            let e = self.man.extents[i];
            match v.last_mut() {
                Some((a, l)) if *a + *l == e.addr => *l += e.len as u64,
                _ => v.push((e.addr, e.len as u64)),
            }
        }
        v
    }

    fn stripes(&mut self, range: std::ops::Range<usize>) -> Vec<Result<Vec<Vec<u8>>>> {
        let r = self
            .pool
            .read_stripes(&self.man, self.disk_as, range.clone());
        // Remote memory failed beyond its redundancy: the flushed disk copy is the last resort.
        let mut out = Vec::with_capacity(r.len());
        for (s, x) in range.zip(r) {
            match (x, &self.fallback) {
                (Ok(c), _) => out.push(Ok(c)),
                (Err(e), Some(f)) => {
                    tracing::warn!(generation = self.man.generation, stripe = s, error = %e, "remote copy lost; reading the disk copy");
                    let f = f.clone();
                    let mut y = self.pool.read_stripes(&f, Handle::Flushed, s..s + 1);
                    out.push(y.pop().unwrap_or(Err(e)));
                }
                (Err(e), None) => out.push(Err(e)),
            }
        }
        out
    }

    /// Reads `len` bytes at caller address `addr`; every byte must have been written.
    pub fn get(&mut self, addr: u64, len: u64) -> Result<Vec<u8>> {
        let generation = self.man.generation;
        // A range past the end of the address space, or larger than the generation, cannot be
        // stored here; refuse it before allocating.
        let end = addr
            .checked_add(len)
            .filter(|_| len <= self.man.bytes())
            .ok_or(PoolError::NotPresent {
                generation,
                addr,
                len,
            })?;
        let mut out = vec![0u8; len as usize];
        let mut covered = 0u64;
        let start = self.by_addr.partition_point(|&i| {
            let e = &self.man.extents[i];
            e.addr + e.len as u64 <= addr
        });
        let k = self.man.k as usize;
        for p in start..self.by_addr.len() {
            let e = self.man.extents[self.by_addr[p]];
            if e.addr >= end {
                break;
            }
            let lo = e.addr.max(addr);
            let hi = (e.addr + e.len as u64).min(end);
            let stripe = e.chunk as usize / k;
            if self.cache.as_ref().is_none_or(|(s, _)| *s != stripe) {
                let c = self
                    .stripes(stripe..stripe + 1)
                    .pop()
                    .unwrap_or(Err(PoolError::NotFound(self.man.generation)))?;
                self.cache = Some((stripe, c));
            }
            let chunk = &self
                .cache
                .as_ref()
                .map(|(_, c)| c)
                .ok_or(PoolError::NotFound(self.man.generation))?[e.chunk as usize % k];
            let from = e.off as usize + (lo - e.addr) as usize;
            out[(lo - addr) as usize..(hi - addr) as usize]
                .copy_from_slice(&chunk[from..from + (hi - lo) as usize]);
            covered += hi - lo;
        }
        if covered != len {
            return Err(PoolError::NotPresent {
                generation: self.man.generation,
                addr,
                len,
            });
        }
        Ok(out)
    }

    /// Streams every stored run in write order to `f(addr, bytes)`, pipelining reads.
    pub fn read_all(&mut self, mut f: impl FnMut(u64, &[u8]) -> Result<()>) -> Result<()> {
        let k = self.man.k as usize;
        let mut by_chunk: Vec<Vec<Extent>> = vec![Vec::new(); self.man.chunk_lens.len()];
        for e in &self.man.extents {
            by_chunk[e.chunk as usize].push(*e);
        }
        let ns = self.man.stripes.len();
        let mut s0 = 0;
        while s0 < ns {
            let s1 = (s0 + READ_BATCH).min(ns);
            for (s, r) in (s0..s1).zip(self.stripes(s0..s1)) {
                for (j, chunk) in r?.into_iter().enumerate() {
                    for e in &by_chunk[s * k + j] {
                        f(e.addr, &chunk[e.off as usize..(e.off + e.len) as usize])?;
                    }
                    crate::bufpool::give(chunk);
                }
            }
            s0 = s1;
        }
        Ok(())
    }

    /// Writes a generation written in stream mode (offsets 0, 1, 2, ... in order) to `w`.
    pub fn read_stream(&mut self, w: &mut dyn std::io::Write) -> Result<u64> {
        let gen_ = self.man.generation;
        let mut pos = 0u64;
        self.read_all(|addr, b| {
            if addr != pos {
                return Err(PoolError::NotAStream { generation: gen_ });
            }
            w.write_all(b)?;
            pos += b.len() as u64;
            Ok(())
        })?;
        Ok(pos)
    }
}

/// A background thread running [`Pool::maintain`] and the disk flusher every `interval`.
/// Only for processes that keep their threads; a forked child should not rely on it.
#[derive(Debug)]
pub struct Maintainer {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Starts the maintainer; it locks the pool for each pass.
pub fn spawn_maintainer(
    pool: Arc<Mutex<Pool>>,
    interval: Duration,
    flush: bool,
) -> std::io::Result<Maintainer> {
    let stop = Arc::new(AtomicBool::new(false));
    let st = stop.clone();
    let thread = std::thread::Builder::new()
        .name("rmem-maintainer".into())
        .spawn(move || {
            while !st.load(Ordering::SeqCst) {
                {
                    let mut p = pool.lock().unwrap_or_else(|e| e.into_inner());
                    let rep = p.maintain();
                    for e in &rep.errors {
                        tracing::warn!(error = %e, "maintenance");
                    }
                    if flush
                        && p.flushed.is_some()
                        && let Err(e) = p.flush_committed()
                    {
                        tracing::warn!(error = %e, "flusher");
                    }
                }
                let until = Instant::now() + interval;
                while Instant::now() < until && !st.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        })?;
    Ok(Maintainer {
        stop,
        thread: Some(thread),
    })
}

impl Drop for Maintainer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
