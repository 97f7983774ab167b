//! A local directory as a backend: the disk fallback when remote capacity is short, the target of
//! migration when no spare server is left, and the home of the background flusher's copies.
//!
//! Layout: `ROOT/<pool hex>/g<generation, 16 hex>/s<key, 16 hex>` for shards and `.../MANIFEST` for
//! the committed manifest. A commit fsyncs the generation's shards, writes `MANIFEST.tmp`, fsyncs
//! it, renames it over `MANIFEST` and fsyncs the directory: after a crash a generation either has
//! its complete manifest or none.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::auth::encode_hex;
use crate::backend::{BResult, Backend, BackendError};
use crate::proto::{GenEntry, LendState, PoolId, Status};

/// A pool's directory on local disk.
#[derive(Debug)]
pub struct DiskStore {
    root: PathBuf,
    unsynced: Vec<PathBuf>,
    gets: VecDeque<BResult<Vec<u8>>>,
}

impl DiskStore {
    /// Opens (creating) the pool's directory under `root`.
    pub fn open(root: &Path, pool: &PoolId) -> BResult<DiskStore> {
        let root = root.join(encode_hex(pool));
        fs::create_dir_all(&root).map_err(|e| BackendError::Down {
            target: root.display().to_string(),
            msg: format!("create: {e}"),
        })?;
        Ok(DiskStore {
            root,
            unsynced: Vec::new(),
            gets: VecDeque::new(),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn gen_dir(&self, generation: u64) -> PathBuf {
        self.root.join(format!("g{generation:016x}"))
    }

    fn err(&self, what: &str, e: std::io::Error) -> BackendError {
        let target = self.root.display().to_string();
        if e.kind() == std::io::ErrorKind::NotFound {
            BackendError::NotFound {
                target,
                what: what.to_string(),
            }
        } else if e.raw_os_error() == Some(28) {
            BackendError::NoSpace {
                target,
                msg: format!("{what}: {e}"),
            }
        } else {
            BackendError::Down {
                target,
                msg: format!("{what}: {e}"),
            }
        }
    }

    /// Bytes stored for this pool (shards and manifests).
    pub fn used(&self) -> u64 {
        let mut n = 0;
        for g in fs::read_dir(&self.root).into_iter().flatten().flatten() {
            for f in fs::read_dir(g.path()).into_iter().flatten().flatten() {
                n += f.metadata().map(|m| m.len()).unwrap_or(0);
            }
        }
        n
    }
}

fn fsync_dir(p: &Path) -> std::io::Result<()> {
    File::open(p)?.sync_all()
}

impl Backend for DiskStore {
    fn name(&self) -> String {
        format!("disk:{}", self.root.display())
    }

    fn put(&mut self, generation: u64, key: u64, data: &[u8]) -> BResult<()> {
        let d = self.gen_dir(generation);
        fs::create_dir_all(&d).map_err(|e| self.err("create generation directory", e))?;
        let p = d.join(format!("s{key:016x}"));
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&p)
            .map_err(|e| self.err("create shard", e))?;
        f.write_all(data).map_err(|e| self.err("write shard", e))?;
        self.unsynced.push(p);
        Ok(())
    }

    fn sync(&mut self) -> BResult<()> {
        for p in std::mem::take(&mut self.unsynced) {
            let r = File::open(&p).and_then(|f| f.sync_all());
            r.map_err(|e| self.err("fsync shard", e))?;
        }
        Ok(())
    }

    fn send_get(&mut self, generation: u64, key: u64) -> BResult<()> {
        let p = self.gen_dir(generation).join(format!("s{key:016x}"));
        let r = fs::read(&p)
            .map_err(|e| self.err(&format!("shard {key:#x} of generation {generation}"), e));
        self.gets.push_back(r);
        Ok(())
    }

    fn recv_get(&mut self) -> BResult<Vec<u8>> {
        self.gets.pop_front().unwrap_or_else(|| {
            Err(BackendError::Refused {
                target: self.name(),
                msg: "recv_get without send_get".into(),
            })
        })
    }

    fn commit(&mut self, generation: u64, manifest: &[u8]) -> BResult<()> {
        self.sync()?;
        let d = self.gen_dir(generation);
        fs::create_dir_all(&d).map_err(|e| self.err("create generation directory", e))?;
        let tmp = d.join("MANIFEST.tmp");
        let r = (|| {
            let mut f = File::create(&tmp)?;
            f.write_all(manifest)?;
            f.sync_all()?;
            fs::rename(&tmp, d.join("MANIFEST"))?;
            fsync_dir(&d)?;
            fsync_dir(&self.root)
        })();
        r.map_err(|e| self.err("commit manifest", e))
    }

    fn manifest(&mut self, generation: u64) -> BResult<Vec<u8>> {
        fs::read(self.gen_dir(generation).join("MANIFEST"))
            .map_err(|e| self.err(&format!("manifest of generation {generation}"), e))
    }

    fn list(&mut self) -> BResult<Vec<GenEntry>> {
        let mut v = Vec::new();
        let rd = fs::read_dir(&self.root).map_err(|e| self.err("list", e))?;
        for ent in rd.flatten() {
            let name = ent.file_name();
            let Some(g) = name
                .to_str()
                .and_then(|n| n.strip_prefix('g'))
                .and_then(|h| u64::from_str_radix(h, 16).ok())
            else {
                continue;
            };
            let mut objects = 0u32;
            let mut committed = false;
            for f in fs::read_dir(ent.path()).into_iter().flatten().flatten() {
                let n = f.file_name();
                if n == "MANIFEST" {
                    committed = true;
                } else if n.to_str().is_some_and(|s| s.starts_with('s')) {
                    objects += 1;
                }
            }
            v.push(GenEntry {
                generation: g,
                committed,
                objects,
            });
        }
        v.sort_by_key(|e| e.generation);
        Ok(v)
    }

    fn free(&mut self, generation: u64) -> BResult<()> {
        let d = self.gen_dir(generation);
        // Remove the manifest first: a crash halfway leaves an uncommitted generation, never a
        // committed one with missing shards.
        let _ = fs::remove_file(d.join("MANIFEST"));
        match fs::remove_dir_all(&d) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(self.err("free generation", e)),
        }
    }

    fn status(&mut self) -> BResult<Status> {
        let used = self.used();
        Ok(Status {
            capacity: u64::MAX,
            used,
            pool_used: used,
            state: LendState::Lending,
        })
    }
}
