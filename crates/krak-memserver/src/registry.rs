//! Who holds which slab: the slab map, ownership checks, capacity accounting, and the
//! grace period that frees the slabs of clients that went away.
//!
//! Lock order: `clients` before `slabs` before any one slab. Page I/O holds `slabs` for
//! reading during a whole batch, so a batch is validated and applied against one view of
//! the map, and frees (which write-lock the map) wait for batches in flight.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use krak_auth::MacKey;
use krak_proto::units::ByteSize;
use krak_proto::{page_crc, ErrorCode, PageRef, ReadEntries, SlabId, WriteEntries, PAGE_SIZE};
use parking_lot::{Mutex, RwLock};

use crate::slab::Slab;

/// Why a slab or page request was refused; each maps to one wire error code.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RegistryError {
    #[error("capacity {} exhausted: {} lent in {slabs} slabs of {}",
        ByteSize(*capacity_bytes), ByteSize(*lent_bytes), ByteSize(*slab_size_bytes))]
    NoCapacity { capacity_bytes: u64, lent_bytes: u64, slabs: u64, slab_size_bytes: u64 },
    // Same answer for "never existed" and "someone else's", so ids cannot be probed.
    #[error("unknown slab {0:#x}")]
    UnknownSlab(u64),
    #[error("page {page} is outside slab {slab:#x} of {pages} pages")]
    PageOutOfRange { slab: u64, page: u32, pages: u32 },
    #[error("page {page} of slab {slab:#x} does not match its CRC-32C; nothing in the batch was stored")]
    ChecksumMismatch { slab: u64, page: u32 },
    #[error("could not map a slab: {0}")]
    Map(#[source] std::io::Error),
    #[error("client already has {connections} connections, the most one client may hold")]
    TooManyConnections { connections: usize },
    #[error("client limit of {} reached: {} lent to this client", ByteSize(*limit_bytes), ByteSize(*lent_bytes))]
    ClientCapacity { limit_bytes: u64, lent_bytes: u64 },
    #[error("slab {slab:#x} stores units of {unit_bytes} bytes, the request named {asked}")]
    WrongUnitSize { slab: u64, unit_bytes: u32, asked: u32 },
    #[error("pushing to {to}: this server does not push (--no-push)")]
    PushDisabled { to: std::net::SocketAddr },
    #[error("pushing to {to}: {source}")]
    PushFailed {
        to: std::net::SocketAddr,
        #[source]
        source: krak_client::ClientError,
    },
}

impl RegistryError {
    pub(crate) fn code(&self) -> ErrorCode {
        match self {
            RegistryError::NoCapacity { .. } => ErrorCode::NoCapacity,
            RegistryError::UnknownSlab(_) => ErrorCode::UnknownSlab,
            RegistryError::PageOutOfRange { .. } => ErrorCode::PageOutOfRange,
            RegistryError::ChecksumMismatch { .. } => ErrorCode::ChecksumMismatch,
            RegistryError::Map(_) => ErrorCode::Internal,
            RegistryError::TooManyConnections { .. } | RegistryError::ClientCapacity { .. } => ErrorCode::ClientLimit,
            RegistryError::WrongUnitSize { .. } => ErrorCode::WrongUnitSize,
            RegistryError::PushDisabled { .. } | RegistryError::PushFailed { .. } => ErrorCode::PushFailed,
        }
    }
}

#[derive(Debug)]
struct Lent {
    owner: u64,
    /// The capability tag handed out with the id; every use must present it.
    tag: u64,
    /// Copies of the slab's unit count and size, readable without locking the slab.
    pages: u32,
    unit_bytes: u32,
    lent_bytes: u64,
    slab: RwLock<Slab>,
}

#[derive(Debug, Default)]
struct Client {
    connections: usize,
    lent_bytes: u64,
    /// When the last connection closed; `None` while connected.
    gone_since: Option<Instant>,
}

/// What the reaper freed for one client.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Reaped {
    pub client_id: u64,
    pub slabs: usize,
}

/// The slab map of one server.
#[derive(Debug)]
pub(crate) struct Registry {
    capacity_bytes: u64,
    slab_size_bytes: u64,
    mlock: bool,
    max_connections_per_client: usize,
    max_bytes_per_client: u64,
    /// Private to this process: capability tags are HMACs under it.
    capability_key: MacKey,
    /// Bytes lent or being mapped; reserved before mapping so capacity is never exceeded.
    lent_bytes: AtomicU64,
    slabs: RwLock<HashMap<u64, Lent>>,
    clients: Mutex<HashMap<u64, Client>>,
}

impl Registry {
    pub(crate) fn new(capacity_bytes: u64, slab_size_bytes: u64, mlock: bool) -> Registry {
        Registry {
            capacity_bytes,
            slab_size_bytes,
            mlock,
            max_connections_per_client: usize::MAX,
            max_bytes_per_client: u64::MAX,
            capability_key: MacKey::generate(),
            lent_bytes: AtomicU64::new(0),
            slabs: RwLock::new(HashMap::new()),
            clients: Mutex::new(HashMap::new()),
        }
    }

    /// Per-client bounds on connections and bytes lent.
    pub(crate) fn with_client_limits(mut self, connections: usize, bytes: u64) -> Registry {
        self.max_connections_per_client = connections;
        self.max_bytes_per_client = bytes;
        self
    }

    /// The tag that makes `(id, tag)` a capability of `owner` for slab `id`.
    fn tag(&self, owner: u64, id: u64) -> u64 {
        let t = self.capability_key.tag("krak/2 slab capability", &[&owner.to_le_bytes(), &id.to_le_bytes()]);
        u64::from_le_bytes([t[0], t[1], t[2], t[3], t[4], t[5], t[6], t[7]])
    }

    pub(crate) fn lent_bytes(&self) -> u64 {
        self.lent_bytes.load(Ordering::Relaxed)
    }

    pub(crate) fn slab_count(&self) -> u64 {
        self.slabs.read().len() as u64
    }

    /// Distinct clients that are connected or hold slabs.
    pub(crate) fn client_count(&self) -> u64 {
        let clients = self.clients.lock();
        let slabs = self.slabs.read();
        let mut ids: HashSet<u64> = slabs.values().map(|l| l.owner).collect();
        ids.extend(clients.iter().filter(|(_, c)| c.connections > 0).map(|(id, _)| *id));
        ids.len() as u64
    }

    /// A connection of `client_id` authenticated: its slabs are safe from the reaper.
    /// Refused when the client already holds its most connections.
    pub(crate) fn connect(&self, client_id: u64) -> Result<(), RegistryError> {
        let mut clients = self.clients.lock();
        let c = clients.entry(client_id).or_default();
        if c.connections >= self.max_connections_per_client {
            return Err(RegistryError::TooManyConnections { connections: c.connections });
        }
        c.connections += 1;
        c.gone_since = None;
        Ok(())
    }

    /// A connection of `client_id` closed; the last one starts the grace period.
    pub(crate) fn disconnect(&self, client_id: u64, now: Instant) {
        let mut clients = self.clients.lock();
        if let Some(c) = clients.get_mut(&client_id) {
            c.connections = c.connections.saturating_sub(1);
            if c.connections == 0 {
                c.gone_since = Some(now);
            }
        }
    }

    /// Lends a new slab of `unit_bytes` units (one per page of a slab; the caller checked
    /// the size) to `owner`, or refuses at once when capacity is exhausted. The slab costs
    /// its units' bytes: a slab of 1 KiB units takes a quarter of a slab of pages.
    pub(crate) fn alloc(&self, owner: u64, unit_bytes: u32) -> Result<SlabId, RegistryError> {
        let units = (self.slab_size_bytes / PAGE_SIZE as u64) as u32;
        let size = units as u64 * unit_bytes as u64;
        {
            // Reserved under the lock; given back below if the server-wide reservation fails.
            let mut clients = self.clients.lock();
            let c = clients.entry(owner).or_default();
            if c.lent_bytes.saturating_add(size) > self.max_bytes_per_client {
                return Err(RegistryError::ClientCapacity {
                    limit_bytes: self.max_bytes_per_client,
                    lent_bytes: c.lent_bytes,
                });
            }
            c.lent_bytes += size;
        }
        let unreserve = || {
            if let Some(c) = self.clients.lock().get_mut(&owner) {
                c.lent_bytes = c.lent_bytes.saturating_sub(size);
            }
        };
        let reserved = self.lent_bytes.fetch_update(Ordering::AcqRel, Ordering::Acquire, |lent| {
            lent.checked_add(size).filter(|&after| after <= self.capacity_bytes)
        });
        if let Err(lent_bytes) = reserved {
            unreserve();
            return Err(RegistryError::NoCapacity {
                capacity_bytes: self.capacity_bytes,
                lent_bytes,
                slabs: self.slab_count(),
                slab_size_bytes: self.slab_size_bytes,
            });
        }
        // Mapping (and mlock) happens outside the map lock: it may take a while.
        let slab = match Slab::map(units, unit_bytes as usize, self.mlock) {
            Ok(slab) => slab,
            Err(e) => {
                self.lent_bytes.fetch_sub(size, Ordering::AcqRel);
                unreserve();
                return Err(RegistryError::Map(e));
            }
        };
        let mut slabs = self.slabs.write();
        let id = loop {
            // Random and non-zero; the tag binds it to its owner.
            let id = rand::random::<u64>();
            if id != 0 && !slabs.contains_key(&id) {
                break id;
            }
        };
        let tag = self.tag(owner, id);
        let lent_bytes = slab.lent_bytes();
        slabs.insert(id, Lent { owner, tag, pages: slab.pages(), unit_bytes, lent_bytes, slab: RwLock::new(slab) });
        Ok(SlabId(id, tag))
    }

    /// Frees a slab of `owner`; its memory is unmapped before returning.
    pub(crate) fn free(&self, owner: u64, slab: SlabId) -> Result<(), RegistryError> {
        let removed = {
            let mut slabs = self.slabs.write();
            match slabs.get(&slab.0) {
                Some(l) if holds(l, owner, slab) => slabs.remove(&slab.0),
                _ => return Err(RegistryError::UnknownSlab(slab.0)),
            }
        };
        let bytes = removed.as_ref().map_or(0, |l| l.lent_bytes);
        self.lent_bytes.fetch_sub(bytes, Ordering::AcqRel);
        if let Some(c) = self.clients.lock().get_mut(&owner) {
            c.lent_bytes = c.lent_bytes.saturating_sub(bytes);
        }
        drop(removed); // munmap outside the map lock
        Ok(())
    }

    /// Stores a batch of pages for `owner`: all of it, or (on any error) none of it.
    pub(crate) fn write_pages(&self, owner: u64, entries: WriteEntries<'_>) -> Result<(), RegistryError> {
        self.store_pages(owner, entries, false).map(|_| ())
    }

    /// Stores the units of a batch that no write stored since their slab was allocated
    /// (see `CopyPages` in docs/protocol.md); returns how many. On any error, none.
    pub(crate) fn copy_pages(&self, owner: u64, entries: WriteEntries<'_>) -> Result<u32, RegistryError> {
        self.store_pages(owner, entries, true)
    }

    fn store_pages(&self, owner: u64, entries: WriteEntries<'_>, copy: bool) -> Result<u32, RegistryError> {
        let slabs = self.slabs.read();
        for e in entries.iter() {
            check(&slabs, owner, e.at, entries.unit_bytes())?;
            if page_crc(e.data) != e.crc {
                return Err(RegistryError::ChecksumMismatch { slab: e.at.slab.0, page: e.at.page });
            }
        }
        // Keep one slab locked across a run of pages of that slab: batches are usually sequential.
        let mut current: Option<(SlabId, parking_lot::RwLockWriteGuard<'_, Slab>)> = None;
        let mut stored = 0;
        for e in entries.iter() {
            if current.as_ref().map(|(id, _)| *id) != Some(e.at.slab) {
                drop(current.take()); // unlock before locking the next slab: no lock-order cycles
                let lent = slabs.get(&e.at.slab.0).ok_or(RegistryError::UnknownSlab(e.at.slab.0))?;
                current = Some((e.at.slab, lent.slab.write()));
            }
            if let Some((_, slab)) = current.as_mut() {
                let done = if copy {
                    slab.store_if_unwritten(e.at.page, e.crc, e.data)
                } else {
                    slab.store(e.at.page, e.crc, e.data)
                };
                stored += u32::from(done);
            }
        }
        Ok(stored)
    }

    /// Reads a batch of pages of `owner`, handing each page's stored CRC and contents to
    /// `emit` in request order. `emit` is called only once the whole batch was validated.
    /// Discards the units `entries` names (see `DiscardPages` in docs/protocol.md); returns
    /// how many. On any error (checked first), none.
    pub(crate) fn discard_pages(&self, owner: u64, entries: ReadEntries<'_>) -> Result<u32, RegistryError> {
        let slabs = self.slabs.read();
        for at in entries.iter() {
            check(&slabs, owner, at, entries.unit_bytes())?;
        }
        let mut current: Option<(SlabId, parking_lot::RwLockWriteGuard<'_, Slab>)> = None;
        let mut discarded = 0;
        for at in entries.iter() {
            if current.as_ref().map(|(id, _)| *id) != Some(at.slab) {
                drop(current.take());
                let lent = slabs.get(&at.slab.0).ok_or(RegistryError::UnknownSlab(at.slab.0))?;
                current = Some((at.slab, lent.slab.write()));
            }
            if let Some((_, slab)) = current.as_mut() {
                discarded += u32::from(slab.discard(at.page));
            }
        }
        Ok(discarded)
    }

    pub(crate) fn read_pages(
        &self,
        owner: u64,
        entries: ReadEntries<'_>,
        emit: impl FnMut(u32, &[u8]),
    ) -> Result<(), RegistryError> {
        self.read_units(owner, entries.unit_bytes(), || entries.iter(), emit)
    }

    /// Like [`Registry::read_pages`], for the units `refs()` names (called twice: once to
    /// validate them all, once to read).
    pub(crate) fn read_units<I: Iterator<Item = PageRef>>(
        &self,
        owner: u64,
        unit_bytes: u32,
        refs: impl Fn() -> I,
        mut emit: impl FnMut(u32, &[u8]),
    ) -> Result<(), RegistryError> {
        let slabs = self.slabs.read();
        for at in refs() {
            check(&slabs, owner, at, unit_bytes)?;
        }
        let mut current: Option<(SlabId, parking_lot::RwLockReadGuard<'_, Slab>)> = None;
        for at in refs() {
            if current.as_ref().map(|(id, _)| *id) != Some(at.slab) {
                drop(current.take());
                let lent = slabs.get(&at.slab.0).ok_or(RegistryError::UnknownSlab(at.slab.0))?;
                current = Some((at.slab, lent.slab.read()));
            }
            if let Some((_, slab)) = current.as_ref() {
                let (crc, data) = slab.page(at.page).ok_or(RegistryError::UnknownSlab(at.slab.0))?;
                emit(crc, data);
            }
        }
        Ok(())
    }

    /// Frees the slabs of every client gone for at least `grace`, and forgets the client.
    pub(crate) fn reap(&self, now: Instant, grace: Duration) -> Vec<Reaped> {
        // Hold `clients` throughout: a client reconnecting now waits, then finds its slabs
        // either all there or all gone, never half.
        let mut clients = self.clients.lock();
        let expired: HashSet<u64> = clients
            .iter()
            .filter(|(_, c)| {
                c.connections == 0 && c.gone_since.is_some_and(|t| now.saturating_duration_since(t) >= grace)
            })
            .map(|(id, _)| *id)
            .collect();
        if expired.is_empty() {
            return Vec::new();
        }
        clients.retain(|id, _| !expired.contains(id));
        let mut freed = Vec::new();
        {
            let mut slabs = self.slabs.write();
            let doomed: Vec<u64> =
                slabs.iter().filter(|(_, l)| expired.contains(&l.owner)).map(|(id, _)| *id).collect();
            for id in doomed {
                if let Some(lent) = slabs.remove(&id) {
                    freed.push(lent);
                }
            }
        }
        drop(clients);
        self.lent_bytes.fetch_sub(freed.iter().map(|l| l.lent_bytes).sum(), Ordering::AcqRel);
        let mut report: Vec<Reaped> = expired.into_iter().map(|client_id| Reaped { client_id, slabs: 0 }).collect();
        for lent in &freed {
            if let Some(r) = report.iter_mut().find(|r| r.client_id == lent.owner) {
                r.slabs += 1;
            }
        }
        drop(freed); // munmap outside every lock
        report
    }

    /// Test support (see `ServerHandle::corrupt_stored_units`): damages every unit of every
    /// slab behind its CRC; returns the slabs damaged.
    pub(crate) fn corrupt_every_unit(&self) -> usize {
        let slabs = self.slabs.read();
        for lent in slabs.values() {
            lent.slab.write().corrupt_every_unit();
        }
        slabs.len()
    }
}

/// `slab` is a capability of `owner` for `lent`: its owner, with the tag issued for it.
fn holds(lent: &Lent, owner: u64, slab: SlabId) -> bool {
    krak_auth::tags_equal(&lent.tag.to_le_bytes(), &slab.1.to_le_bytes()) && lent.owner == owner
}

/// The slab must exist, belong to `owner` (with the right tag), store units of
/// `unit_bytes`, and hold the unit.
fn check(slabs: &HashMap<u64, Lent>, owner: u64, at: PageRef, unit_bytes: u32) -> Result<(), RegistryError> {
    match slabs.get(&at.slab.0) {
        Some(l) if holds(l, owner, at.slab) => {
            if l.unit_bytes != unit_bytes {
                return Err(RegistryError::WrongUnitSize {
                    slab: at.slab.0,
                    unit_bytes: l.unit_bytes,
                    asked: unit_bytes,
                });
            }
            if at.page >= l.pages {
                return Err(RegistryError::PageOutOfRange { slab: at.slab.0, page: at.page, pages: l.pages });
            }
            Ok(())
        }
        _ => Err(RegistryError::UnknownSlab(at.slab.0)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use krak_proto::{decode_request, encode_read_pages, encode_write_pages, Header, Request, HEADER_LEN};

    const SLAB: u64 = 16 * PAGE_SIZE as u64;

    /// Runs `f` on the entries of an encoded write request.
    fn with_writes<R>(pages: &[(PageRef, &[u8])], corrupt: Option<usize>, f: impl FnOnce(WriteEntries<'_>) -> R) -> R {
        let mut frame = Vec::new();
        let unit = pages.first().map_or(PAGE_SIZE, |(_, d)| d.len());
        encode_write_pages(&mut frame, 1, unit as u32, pages.iter().copied());
        if let Some(i) = corrupt {
            // flip a data byte of entry i: 4-byte count and unit size, 24-byte entry header
            frame[HEADER_LEN + 8 + i * (24 + unit) + 24] ^= 1;
        }
        let head: [u8; HEADER_LEN] = frame[..HEADER_LEN].try_into().unwrap();
        let h = Header::decode(&head).unwrap();
        let Ok(Request::WritePages(e)) = decode_request(&h, &frame[HEADER_LEN..]) else { panic!("not a write") };
        f(e)
    }

    fn read(reg: &Registry, owner: u64, pages: &[PageRef]) -> Result<Vec<(u32, Vec<u8>)>, RegistryError> {
        read_units(reg, owner, PAGE_SIZE as u32, pages)
    }

    fn read_units(
        reg: &Registry,
        owner: u64,
        unit: u32,
        pages: &[PageRef],
    ) -> Result<Vec<(u32, Vec<u8>)>, RegistryError> {
        let mut frame = Vec::new();
        encode_read_pages(&mut frame, 1, unit, pages);
        let head: [u8; HEADER_LEN] = frame[..HEADER_LEN].try_into().unwrap();
        let h = Header::decode(&head).unwrap();
        let Ok(Request::ReadPages(e)) = decode_request(&h, &frame[HEADER_LEN..]) else { panic!("not a read") };
        let mut got = Vec::new();
        reg.read_pages(owner, e, |crc, data| got.push((crc, data.to_vec())))?;
        Ok(got)
    }

    #[test]
    fn capacity_is_enforced_and_freed_capacity_reused() {
        let reg = Registry::new(2 * SLAB, SLAB, false);
        let a = reg.alloc(1, 4096).unwrap();
        let b = reg.alloc(1, 4096).unwrap();
        assert_ne!(a, b);
        assert_eq!((reg.lent_bytes(), reg.slab_count()), (2 * SLAB, 2));
        let err = reg.alloc(2, 4096).unwrap_err();
        assert_eq!(err.code(), ErrorCode::NoCapacity);
        assert_eq!(err.to_string(), "capacity 128KiB exhausted: 128KiB lent in 2 slabs of 64KiB");
        reg.free(1, a).unwrap();
        assert_eq!(reg.lent_bytes(), SLAB);
        reg.alloc(2, 4096).unwrap();
        assert_eq!(reg.lent_bytes(), 2 * SLAB);
    }

    #[test]
    fn fragment_slabs_cost_their_units_and_refuse_other_unit_sizes() {
        let reg = Registry::new(2 * SLAB, SLAB, false);
        let a = reg.alloc(1, 1024).unwrap();
        assert_eq!(reg.lent_bytes(), SLAB / 4, "16 units of 1 KiB");
        let units: Vec<Vec<u8>> = (0..2u8).map(|i| vec![i + 1; 1024]).collect();
        let refs = [PageRef { slab: a, page: 0 }, PageRef { slab: a, page: 15 }];
        with_writes(&[(refs[0], &units[0]), (refs[1], &units[1])], None, |e| reg.write_pages(1, e)).unwrap();
        let got = read_units(&reg, 1, 1024, &refs).unwrap();
        assert_eq!(got[1], (page_crc(&units[1]), units[1].clone()));
        let err = read(&reg, 1, &refs).unwrap_err();
        assert_eq!(err.code(), ErrorCode::WrongUnitSize);
        let page = vec![3u8; PAGE_SIZE];
        let err = with_writes(&[(refs[0], &page)], None, |e| reg.write_pages(1, e)).unwrap_err();
        assert_eq!(err.code(), ErrorCode::WrongUnitSize);
        // 1.75 slabs of room are left: seven more quarter slabs fit, the eighth does not.
        for _ in 0..7 {
            reg.alloc(1, 1024).unwrap();
        }
        assert_eq!(reg.alloc(1, 1024).unwrap_err().code(), ErrorCode::NoCapacity);
        reg.free(1, a).unwrap();
        assert_eq!(reg.lent_bytes(), 7 * SLAB / 4);
        assert_eq!(reg.corrupt_every_unit(), 7);
    }

    #[test]
    fn foreign_slabs_look_like_missing_ones() {
        let reg = Registry::new(4 * SLAB, SLAB, false);
        let a = reg.alloc(1, 4096).unwrap();
        let page = vec![5u8; PAGE_SIZE];
        let at = PageRef { slab: a, page: 0 };
        assert_eq!(reg.free(2, a).unwrap_err().to_string(), format!("unknown slab {:#x}", a.0));
        assert_eq!(reg.free(2, SlabId(12345, 1)).unwrap_err().code(), ErrorCode::UnknownSlab);
        // The right id with a guessed tag, even by the owner, is refused.
        let forged = PageRef { slab: SlabId(a.0, a.1 ^ 1), page: 0 };
        assert_eq!(read(&reg, 1, &[forged]).unwrap_err().code(), ErrorCode::UnknownSlab);
        assert_eq!(reg.free(1, forged.slab).unwrap_err().code(), ErrorCode::UnknownSlab);
        assert_eq!(read(&reg, 2, &[at]).unwrap_err().code(), ErrorCode::UnknownSlab);
        let err = with_writes(&[(at, &page)], None, |e| reg.write_pages(2, e)).unwrap_err();
        assert_eq!(err.code(), ErrorCode::UnknownSlab);
        // The owner still sees zeros: the foreign write stored nothing.
        assert_eq!(read(&reg, 1, &[at]).unwrap()[0].1, vec![0u8; PAGE_SIZE]);
        reg.free(1, a).unwrap();
        assert_eq!(reg.free(1, a).unwrap_err().code(), ErrorCode::UnknownSlab, "double free");
    }

    #[test]
    fn batches_are_validated_whole_before_any_page_is_stored() {
        let reg = Registry::new(4 * SLAB, SLAB, false);
        let a = reg.alloc(1, 4096).unwrap();
        let p0 = vec![1u8; PAGE_SIZE];
        let p1 = vec![2u8; PAGE_SIZE];
        let at0 = PageRef { slab: a, page: 0 };
        let at1 = PageRef { slab: a, page: 1 };
        let err = with_writes(&[(at0, &p0), (at1, &p1)], Some(1), |e| reg.write_pages(1, e)).unwrap_err();
        assert_eq!(err.code(), ErrorCode::ChecksumMismatch);
        let out = PageRef { slab: a, page: 16 };
        let err = with_writes(&[(at0, &p0), (out, &p1)], None, |e| reg.write_pages(1, e)).unwrap_err();
        assert_eq!(err.code(), ErrorCode::PageOutOfRange);
        assert!(err.to_string().contains("page 16 is outside slab"));
        let got = read(&reg, 1, &[at0, at1]).unwrap();
        assert!(got.iter().all(|(crc, d)| *crc == page_crc(d) && d.iter().all(|&b| b == 0)), "nothing stored");

        with_writes(&[(at1, &p1), (at0, &p0)], None, |e| reg.write_pages(1, e)).unwrap();
        let got = read(&reg, 1, &[at0, at1, at0]).unwrap();
        assert_eq!(got.iter().map(|(_, d)| d[0]).collect::<Vec<_>>(), [1, 2, 1], "request order");
        assert_eq!(got[1].0, page_crc(&p1));
        assert_eq!(read(&reg, 1, &[at0, out]).unwrap_err().code(), ErrorCode::PageOutOfRange);
    }

    #[test]
    fn reaper_frees_only_clients_gone_past_grace() {
        let reg = Registry::new(8 * SLAB, SLAB, false);
        let t0 = Instant::now();
        let grace = Duration::from_millis(500);
        reg.connect(1).unwrap();
        reg.connect(2).unwrap();
        reg.connect(2).unwrap();
        reg.alloc(1, 4096).unwrap();
        reg.alloc(1, 4096).unwrap();
        reg.alloc(2, 4096).unwrap();
        assert_eq!(reg.client_count(), 2);
        reg.disconnect(1, t0);
        reg.disconnect(2, t0); // client 2 keeps one connection
        assert!(reg.reap(t0 + Duration::from_millis(499), grace).is_empty());
        assert_eq!(reg.reap(t0 + grace, grace), [Reaped { client_id: 1, slabs: 2 }]);
        assert_eq!((reg.lent_bytes(), reg.slab_count(), reg.client_count()), (SLAB, 1, 1));
        assert!(reg.reap(t0 + 10 * grace, grace).is_empty(), "client 2 is connected");
    }

    #[test]
    fn per_client_limits_on_connections_and_bytes() {
        let reg = Registry::new(8 * SLAB, SLAB, false).with_client_limits(2, 2 * SLAB);
        reg.connect(1).unwrap();
        reg.connect(1).unwrap();
        assert_eq!(reg.connect(1).unwrap_err().code(), ErrorCode::ClientLimit);
        reg.connect(2).unwrap();
        let a = reg.alloc(1, 4096).unwrap();
        reg.alloc(1, 4096).unwrap();
        let err = reg.alloc(1, 4096).unwrap_err();
        assert_eq!(err.code(), ErrorCode::ClientLimit);
        assert_eq!(err.to_string(), "client limit of 128KiB reached: 128KiB lent to this client");
        reg.alloc(2, 4096).unwrap(); // another client is not held back
        reg.free(1, a).unwrap();
        reg.alloc(1, 4096).unwrap();
        assert_eq!(reg.lent_bytes(), 3 * SLAB);
    }

    #[test]
    fn reconnecting_within_grace_keeps_slabs() {
        let reg = Registry::new(8 * SLAB, SLAB, false);
        let t0 = Instant::now();
        let grace = Duration::from_millis(500);
        reg.connect(7).unwrap();
        reg.alloc(7, 4096).unwrap();
        reg.disconnect(7, t0);
        reg.connect(7).unwrap();
        assert!(reg.reap(t0 + 10 * grace, grace).is_empty());
        assert_eq!(reg.slab_count(), 1);
    }
}
