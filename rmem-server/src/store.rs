//! The lent memory: pre-faulted fixed-size slots, and the index of stored objects.
//!
//! All slots are allocated and touched when lending starts, so a checkpoint never pays
//! first-touch page faults (the paper's server direct-maps its pages for bounded access time).
//! An object (shard, manifest) owns whole slots, not necessarily adjacent; `used` counts whole
//! slots so capacity accounting includes fragmentation honestly. Because slots are owned buffers,
//! a connection can take free slots, read a PUT's payload straight into them without holding the
//! store's lock, and hand them back as an object: the bulk data is never copied on the server.
//! When lending stops every slot is dropped and the memory goes back to the owner.

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

/// Slots taken from the store, being filled by one connection.
pub type Slots = Vec<Box<[u8]>>;

#[derive(Debug)]
struct Obj {
    len: usize,
    /// CRC32C of the data, checked on arrival and sent with every read of it.
    crc: u32,
    slots: Slots,
}

#[derive(Debug, Default)]
struct GenData {
    objects: HashMap<u64, Obj>,
    manifest: Option<Obj>,
}

/// Object store. Callers serialize access (one mutex in the server); filling taken slots needs
/// no lock.
#[derive(Debug)]
pub struct Store {
    lending: bool,
    /// Counts lending periods: slots taken in one period must not return into the next (the
    /// memory was given back in between).
    epoch: u64,
    free: Slots,
    capacity: u64,
    pools: HashMap<PoolId, BTreeMap<u64, GenData>>,
}

impl Store {
    /// A store that lends nothing until [`Store::lend`].
    pub fn new() -> Store {
        Store {
            lending: false,
            epoch: 0,
            free: Vec::new(),
            capacity: 0,
            pools: HashMap::new(),
        }
    }

    /// Allocates and pre-faults `capacity` bytes (rounded down to whole slots).
    pub fn lend(&mut self, capacity: u64) {
        let nslots = (capacity as usize) / SLOT;
        // A non-zero fill writes every page now (a zero fill could stay lazily mapped).
        self.free = (0..nslots)
            .map(|_| vec![0xA5u8; SLOT].into_boxed_slice())
            .collect();
        std::hint::black_box(&self.free);
        self.capacity = (nslots * SLOT) as u64;
        self.lending = true;
        self.epoch += 1;
        self.pools.clear();
    }

    /// Drops every object and gives the memory back.
    pub fn unlend(&mut self) {
        self.pools.clear();
        self.free = Vec::new();
        self.capacity = 0;
        self.lending = false;
    }

    #[cfg(test)]
    pub fn lending(&self) -> bool {
        self.lending
    }

    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Bytes in use: objects and slots taken by connections still filling them.
    pub fn used(&self) -> u64 {
        if self.lending {
            self.capacity - (self.free.len() * SLOT) as u64
        } else {
            0
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

    /// Takes the slots for an object of `len` bytes; fill them, then [`Store::insert`] them (or
    /// give them back with [`Store::give_back`]).
    pub fn take(&mut self, len: usize) -> Result<(Slots, u64), StoreError> {
        if !self.lending {
            return Err(StoreError::NotLending);
        }
        let need = len.div_ceil(SLOT).max(1);
        if self.free.len() < need {
            return Err(StoreError::NoSpace {
                need: len as u64,
                free: (self.free.len() * SLOT) as u64,
                capacity: self.capacity,
            });
        }
        Ok((self.free.split_off(self.free.len() - need), self.epoch))
    }

    /// Returns unused slots (a failed transfer). Slots of an earlier lending period are dropped.
    pub fn give_back(&mut self, slots: Slots, epoch: u64) {
        if self.lending && epoch == self.epoch {
            self.free.extend(slots);
        }
    }

    fn release(&mut self, o: Obj) {
        let e = self.epoch;
        self.give_back(o.slots, e);
    }

    fn alloc(&mut self, data: &[u8], crc: u32) -> Result<Obj, StoreError> {
        let (mut slots, _) = self.take(data.len())?;
        for (piece, s) in data.chunks(SLOT).zip(slots.iter_mut()) {
            s[..piece.len()].copy_from_slice(piece);
        }
        Ok(Obj {
            len: data.len(),
            crc,
            slots,
        })
    }

    fn read(o: &Obj, out: &mut Vec<u8>) {
        out.clear();
        let mut left = o.len;
        for s in &o.slots {
            let n = left.min(SLOT);
            out.extend_from_slice(&s[..n]);
            left -= n;
        }
    }

    /// Stores filled slots as object `key` of `generation` (replacing an older version).
    #[allow(clippy::too_many_arguments)] // an object's identity, its bytes and their checksum
    pub fn insert(
        &mut self,
        pool: &PoolId,
        generation: u64,
        key: u64,
        slots: Slots,
        epoch: u64,
        len: usize,
        crc: u32,
    ) -> Result<(), StoreError> {
        if !self.lending || epoch != self.epoch {
            // Revoked while the data was arriving: the slots were already let go.
            return Err(StoreError::NotLending);
        }
        let old = self
            .pools
            .entry(*pool)
            .or_default()
            .entry(generation)
            .or_default()
            .objects
            .insert(key, Obj { len, crc, slots });
        if let Some(o) = old {
            self.release(o);
        }
        Ok(())
    }

    /// Stores (or replaces) one object of a generation from a buffer.
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
            self.release(o);
        }
        let obj = self.alloc(data, crc)?;
        let e = self.epoch;
        self.insert(pool, generation, key, obj.slots, e, obj.len, obj.crc)
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
        Self::read(o, out);
        Some(o.crc)
    }

    #[cfg(test)]
    pub fn get(&self, pool: &PoolId, generation: u64, key: u64) -> Option<Vec<u8>> {
        let mut v = Vec::new();
        self.get_into(pool, generation, key, &mut v).map(|_| v)
    }

    /// Records the manifest of a generation; this is what makes it committed on this server.
    pub fn commit(
        &mut self,
        pool: &PoolId,
        generation: u64,
        manifest: &[u8],
    ) -> Result<(), StoreError> {
        let obj = self.alloc(manifest, rmem_client::crc::crc32c(manifest))?;
        let d = self
            .pools
            .entry(*pool)
            .or_default()
            .entry(generation)
            .or_default();
        if let Some(old) = d.manifest.replace(obj) {
            self.release(old);
        }
        Ok(())
    }

    pub fn manifest(&self, pool: &PoolId, generation: u64) -> Option<Vec<u8>> {
        let o = self.pools.get(pool)?.get(&generation)?.manifest.as_ref()?;
        let mut v = Vec::new();
        Self::read(o, &mut v);
        Some(v)
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
            self.release(o);
        }
        if let Some(m) = d.manifest {
            self.release(m);
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

    #[test]
    fn slots_taken_before_a_revocation_never_return_into_the_next_lending() {
        let mut s = Store::new();
        s.lend(4 * SLOT as u64);
        let p = [2u8; 16];
        let (slots, epoch) = s.take(SLOT + 1).unwrap();
        assert_eq!(s.used(), 2 * SLOT as u64);
        // Revoked and lent again while a PUT was still arriving into those slots.
        s.unlend();
        s.lend(4 * SLOT as u64);
        assert_eq!(
            s.insert(&p, 1, 1, slots, epoch, SLOT + 1, 0),
            Err(StoreError::NotLending)
        );
        let (more, e2) = s.take(10).unwrap();
        s.give_back(more, e2);
        assert_eq!(s.used(), 0);
        let (old, _) = s.take(10).unwrap();
        s.give_back(old, epoch);
        assert_eq!(
            s.used(),
            SLOT as u64,
            "a slot from the old period is dropped, not counted twice"
        );
    }
}
