//! The lent memory: a pre-faulted arena cut into fixed slots, and the index of stored objects.
//!
//! The arena is allocated and touched page by page when lending starts, so a checkpoint never pays
//! first-touch page faults (the paper's server direct-maps its pages for bounded access time).
//! Objects (shards, manifests) occupy whole slots, not necessarily contiguous; `used` counts whole
//! slots so capacity accounting includes fragmentation honestly. When lending stops the arena is
//! dropped and the memory goes back to the owner.

use std::collections::{BTreeMap, HashMap};

use rmem_client::proto::{GenEntry, PoolId};

/// Slot size: small enough that manifests waste little, large enough that a 1 MiB shard is a
/// short list of slots.
pub const SLOT: usize = 16 << 10;

/// Errors of the object store.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StoreError {
    #[error("no space: {need} bytes requested, {free} free of {capacity}")]
    NoSpace { need: u64, free: u64, capacity: u64 },
    #[error("memory is not lent at the moment")]
    NotLending,
}

#[derive(Debug)]
struct Obj {
    len: usize,
    /// CRC32C of the data, checked on arrival and sent with every read of it.
    crc: u32,
    slots: Vec<u32>,
}

#[derive(Debug, Default)]
struct GenData {
    objects: HashMap<u64, Obj>,
    manifest: Option<Obj>,
}

#[derive(Debug)]
struct Arena {
    mem: Vec<u8>,
    free: Vec<u32>,
}

/// Object store over one arena. Callers serialize access (one mutex in the server).
#[derive(Debug)]
pub struct Store {
    arena: Option<Arena>,
    capacity: u64,
    pools: HashMap<PoolId, BTreeMap<u64, GenData>>,
}

impl Store {
    /// A store that lends nothing until [`Store::lend`].
    pub fn new() -> Store {
        Store {
            arena: None,
            capacity: 0,
            pools: HashMap::new(),
        }
    }

    /// Allocates and pre-faults `capacity` bytes (rounded down to whole slots).
    pub fn lend(&mut self, capacity: u64) {
        let nslots = (capacity as usize) / SLOT;
        let mut mem = vec![0u8; nslots * SLOT];
        // The allocation is lazily zero-mapped by the kernel; writing one byte per page faults
        // every page in now instead of during a client's write.
        for i in (0..mem.len()).step_by(4096) {
            mem[i] = 0xA5;
        }
        std::hint::black_box(&mem);
        let free = (0..nslots as u32).rev().collect();
        self.arena = Some(Arena { mem, free });
        self.capacity = (nslots * SLOT) as u64;
        self.pools.clear();
    }

    /// Drops every object and gives the arena back.
    pub fn unlend(&mut self) {
        self.pools.clear();
        self.arena = None;
        self.capacity = 0;
    }

    #[cfg(test)]
    pub fn lending(&self) -> bool {
        self.arena.is_some()
    }

    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    pub fn used(&self) -> u64 {
        match &self.arena {
            Some(a) => self.capacity - (a.free.len() * SLOT) as u64,
            None => 0,
        }
    }

    pub fn pool_used(&self, pool: &PoolId) -> u64 {
        self.pools
            .get(pool)
            .map(|g| {
                g.values()
                    .map(|d| {
                        let m = d.manifest.as_ref().map_or(0, |o| o.slots.len());
                        d.objects.values().map(|o| o.slots.len()).sum::<usize>() + m
                    })
                    .sum::<usize>() as u64
                    * SLOT as u64
            })
            .unwrap_or(0)
    }

    fn alloc(&mut self, data: &[u8], crc: u32) -> Result<Obj, StoreError> {
        let capacity = self.capacity;
        let arena = self.arena.as_mut().ok_or(StoreError::NotLending)?;
        let need = data.len().div_ceil(SLOT).max(1);
        if arena.free.len() < need {
            return Err(StoreError::NoSpace {
                need: data.len() as u64,
                free: (arena.free.len() * SLOT) as u64,
                capacity,
            });
        }
        let slots = arena.free.split_off(arena.free.len() - need);
        for (piece, &s) in data.chunks(SLOT).zip(&slots) {
            let at = s as usize * SLOT;
            arena.mem[at..at + piece.len()].copy_from_slice(piece);
        }
        Ok(Obj {
            len: data.len(),
            crc,
            slots,
        })
    }

    fn release(arena: &mut Option<Arena>, o: Obj) {
        if let Some(a) = arena.as_mut() {
            a.free.extend_from_slice(&o.slots);
        }
    }

    fn read(&self, o: &Obj) -> Vec<u8> {
        let Some(a) = &self.arena else {
            return Vec::new();
        };
        let mut out = Vec::with_capacity(o.len);
        let mut left = o.len;
        for &s in &o.slots {
            let n = left.min(SLOT);
            let at = s as usize * SLOT;
            out.extend_from_slice(&a.mem[at..at + n]);
            left -= n;
        }
        out
    }

    /// Stores (or replaces) one object of a generation.
    pub fn put(
        &mut self,
        pool: &PoolId,
        generation: u64,
        key: u64,
        data: &[u8],
        crc: u32,
    ) -> Result<(), StoreError> {
        // Free the previous version first so replacing an object in a full store works.
        let old = self
            .pools
            .get_mut(pool)
            .and_then(|g| g.get_mut(&generation))
            .and_then(|d| d.objects.remove(&key));
        if let Some(o) = old {
            Self::release(&mut self.arena, o);
        }
        let obj = self.alloc(data, crc)?;
        self.pools
            .entry(*pool)
            .or_default()
            .entry(generation)
            .or_default()
            .objects
            .insert(key, obj);
        Ok(())
    }

    /// Copies an object into `out` (reusing its allocation); returns its CRC32C, `None` when
    /// absent.
    pub fn get_into(
        &self,
        pool: &PoolId,
        generation: u64,
        key: u64,
        out: &mut Vec<u8>,
    ) -> Option<u32> {
        let o = self.pools.get(pool)?.get(&generation)?.objects.get(&key)?;
        let a = self.arena.as_ref()?;
        out.clear();
        let mut left = o.len;
        for &s in &o.slots {
            let n = left.min(SLOT);
            let at = s as usize * SLOT;
            out.extend_from_slice(&a.mem[at..at + n]);
            left -= n;
        }
        Some(o.crc)
    }

    #[cfg(test)]
    pub fn get(&self, pool: &PoolId, generation: u64, key: u64) -> Option<Vec<u8>> {
        let o = self.pools.get(pool)?.get(&generation)?.objects.get(&key)?;
        Some(self.read(o))
    }

    /// Records the manifest of a generation; this is what makes it committed on this server.
    pub fn commit(
        &mut self,
        pool: &PoolId,
        generation: u64,
        manifest: &[u8],
    ) -> Result<(), StoreError> {
        let obj = self.alloc(manifest, crc32c::crc32c(manifest))?;
        let d = self
            .pools
            .entry(*pool)
            .or_default()
            .entry(generation)
            .or_default();
        if let Some(old) = d.manifest.replace(obj) {
            Self::release(&mut self.arena, old);
        }
        Ok(())
    }

    pub fn manifest(&self, pool: &PoolId, generation: u64) -> Option<Vec<u8>> {
        let o = self.pools.get(pool)?.get(&generation)?.manifest.as_ref()?;
        Some(self.read(o))
    }

    pub fn list(&self, pool: &PoolId) -> Vec<GenEntry> {
        self.pools
            .get(pool)
            .map(|g| {
                g.iter()
                    .map(|(&generation, d)| GenEntry {
                        generation,
                        committed: d.manifest.is_some(),
                        objects: d.objects.len() as u32,
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    pub fn free_gen(&mut self, pool: &PoolId, generation: u64) {
        let Some(d) = self.pools.get_mut(pool).and_then(|g| g.remove(&generation)) else {
            return;
        };
        for (_, o) in d.objects {
            Self::release(&mut self.arena, o);
        }
        if let Some(m) = d.manifest {
            Self::release(&mut self.arena, m);
        }
        if self.pools.get(pool).is_some_and(|g| g.is_empty()) {
            self.pools.remove(pool);
        }
    }

    pub fn release_pool(&mut self, pool: &PoolId) {
        let gens: Vec<u64> = self
            .pools
            .get(pool)
            .map(|g| g.keys().copied().collect())
            .unwrap_or_default();
        for g in gens {
            self.free_gen(pool, g);
        }
    }

    pub fn pools(&self) -> usize {
        self.pools.len()
    }
}

impl Default for Store {
    fn default() -> Self {
        Store::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_get_commit_free_and_capacity() {
        let mut s = Store::new();
        assert_eq!(s.put(&[1; 16], 1, 1, b"x", 0), Err(StoreError::NotLending));
        s.lend(4 * SLOT as u64);
        let p = [1u8; 16];
        let big: Vec<u8> = (0..SLOT + 10).map(|i| i as u8).collect();
        s.put(&p, 1, 7, &big, crc32c::crc32c(&big)).unwrap();
        assert_eq!(s.get(&p, 1, 7).unwrap(), big);
        assert_eq!(s.used(), 2 * SLOT as u64);
        s.commit(&p, 1, b"manifest").unwrap();
        assert_eq!(s.manifest(&p, 1).unwrap(), b"manifest");
        assert!(matches!(
            s.put(&p, 2, 1, &vec![0; 2 * SLOT], 0),
            Err(StoreError::NoSpace { .. })
        ));
        // Replacing an object reuses its own slots even when the store is nearly full.
        s.put(&p, 1, 7, &big, crc32c::crc32c(&big)).unwrap();
        assert_eq!(
            s.list(&p),
            vec![GenEntry {
                generation: 1,
                committed: true,
                objects: 1
            }]
        );
        assert_eq!(s.pool_used(&p), 3 * SLOT as u64);
        s.free_gen(&p, 1);
        assert_eq!(s.used(), 0);
        assert!(s.get(&p, 1, 7).is_none());
        s.unlend();
        assert!(!s.lending());
    }
}
