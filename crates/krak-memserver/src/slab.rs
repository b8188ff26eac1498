//! One slab: an anonymous mapping lent to a client, plus the CRC-32C of each of its units.
//!
//! A slab holds a fixed number of units of one size: whole pages, or (for erasure-coded
//! regions) one fragment of each page, stored back to back so a fragment costs only its own
//! bytes. The mapping is `MAP_NORESERVE` so a slab costs nothing until its units are
//! written, and untouched units read back as zeros. The CRC is stored, not recomputed, so a
//! read answers with the checksum the writer sent (which was verified on the way in).

use std::io;
use std::ptr::NonNull;
use std::sync::OnceLock;

use krak_proto::{page_crc, PAGE_SIZE};

/// CRC-32C of a unit of zeros of `unit_bytes` (at most a page): what every unit of a fresh
/// slab holds.
pub(crate) fn zero_unit_crc(unit_bytes: usize) -> u32 {
    static CRCS: OnceLock<Vec<u32>> = OnceLock::new();
    let crcs = CRCS.get_or_init(|| (0..=PAGE_SIZE.trailing_zeros()).map(|b| page_crc(&ZEROS[..1 << b])).collect());
    crcs.get(unit_bytes.trailing_zeros() as usize).copied().unwrap_or_else(|| page_crc(&ZEROS[..unit_bytes]))
}

static ZEROS: [u8; PAGE_SIZE] = [0; PAGE_SIZE];

/// Memory of one slab. Shared access reads, exclusive access writes: callers guard it
/// with a lock, so the borrow rules are the only synchronisation this type needs.
#[derive(Debug)]
pub(crate) struct Slab {
    base: NonNull<u8>,
    len_bytes: usize,
    unit_bytes: usize,
    crcs: Vec<u32>,
    /// One bit per unit: stored by a write (not a copy) since the slab was mapped.
    written: Vec<u64>,
    /// Locked in RAM (`mlock`): discarded pages stay, zeroed.
    locked: bool,
}

// SAFETY: the mapping is owned by this value alone (never aliased elsewhere); reads go
// through `&self` and writes through `&mut self`, so moving or sharing it across threads is
// as safe as for a `Vec<u8>`.
unsafe impl Send for Slab {}
// SAFETY: see `Send`: no interior mutability, `&Slab` only reads.
unsafe impl Sync for Slab {}

impl Slab {
    /// Maps `units` zeroed units of `unit_bytes` (a power of two up to a page) each.
    pub(crate) fn map(units: u32, unit_bytes: usize, mlock: bool) -> io::Result<Slab> {
        if units == 0 || unit_bytes == 0 || unit_bytes > PAGE_SIZE || !unit_bytes.is_power_of_two() {
            let what = format!("slab of {units} units of {unit_bytes} bytes");
            return Err(io::Error::new(io::ErrorKind::InvalidInput, what));
        }
        let len_bytes = (units as usize * unit_bytes).next_multiple_of(PAGE_SIZE);
        // SAFETY: a fresh anonymous private mapping at an address of the kernel's choosing
        // touches no existing memory; the result is checked against MAP_FAILED below.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len_bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let base = NonNull::new(ptr.cast::<u8>()).ok_or_else(|| io::Error::other("mmap returned null"))?;
        let mut slab = Slab {
            base,
            locked: false,
            len_bytes,
            unit_bytes,
            crcs: vec![zero_unit_crc(unit_bytes); units as usize],
            written: vec![0; (units as usize).div_ceil(64)],
        };
        if mlock {
            // SAFETY: the range is exactly the mapping created above, owned by `slab`.
            slab.locked = unsafe { libc::mlock(ptr, len_bytes) } == 0;
            if !slab.locked {
                tracing::warn!(
                    "mlock of a {len_bytes}-byte slab failed ({}); its pages may be swapped",
                    io::Error::last_os_error()
                );
            }
        }
        Ok(slab)
    }

    /// Number of units in the slab.
    pub(crate) fn pages(&self) -> u32 {
        self.crcs.len() as u32
    }

    /// Size of each unit.
    #[cfg(test)]
    pub(crate) fn unit_bytes(&self) -> usize {
        self.unit_bytes
    }

    /// Bytes the slab lends: its units, not the rounding of its mapping.
    pub(crate) fn lent_bytes(&self) -> u64 {
        (self.crcs.len() * self.unit_bytes) as u64
    }

    /// The stored CRC and contents of unit `index`, or `None` past the end.
    pub(crate) fn page(&self, index: u32) -> Option<(u32, &[u8])> {
        let crc = *self.crcs.get(index as usize)?;
        let u = self.unit_bytes;
        // SAFETY: `index` is in range (checked through `crcs`, which has one entry per unit,
        // and the mapping holds `crcs.len() * unit_bytes` bytes or more), so the unit lies
        // inside the live mapping; `&self` rules out a concurrent writer.
        let data = unsafe { std::slice::from_raw_parts(self.base.as_ptr().add(index as usize * u), u) };
        Some((crc, data))
    }

    /// Stores one unit and its (already verified) CRC, and marks it written. Returns false
    /// past the end or for a unit of the wrong size.
    pub(crate) fn store(&mut self, index: u32, crc: u32, data: &[u8]) -> bool {
        let stored = self.put(index, crc, data);
        if stored {
            self.written[index as usize / 64] |= 1 << (index % 64);
        }
        stored
    }

    /// Stores one unit like [`Slab::store`], but only if no write stored it since the slab
    /// was mapped (a copy never overwrites newer data). Returns whether it was stored.
    pub(crate) fn store_if_unwritten(&mut self, index: u32, crc: u32, data: &[u8]) -> bool {
        let unwritten = self.written.get(index as usize / 64).is_some_and(|w| w & (1 << (index % 64)) == 0);
        unwritten && self.put(index, crc, data)
    }

    fn put(&mut self, index: u32, crc: u32, data: &[u8]) -> bool {
        let u = self.unit_bytes;
        let Some(slot) = self.crcs.get_mut(index as usize) else { return false };
        if data.len() != u {
            return false;
        }
        *slot = crc;
        // SAFETY: `index` is in range (checked through `crcs`), so the unit lies inside the
        // live mapping; `&mut self` makes this the only access to it.
        let dst = unsafe { std::slice::from_raw_parts_mut(self.base.as_ptr().add(index as usize * u), u) };
        dst.copy_from_slice(data);
        true
    }

    /// Forgets unit `index`: it reads as zeros (with the zero CRC) from now on and counts as
    /// written, so that no copy stores into it later. Once every unit sharing its host page
    /// is zero, the page goes back to the host (`MADV_DONTNEED`: a private anonymous page
    /// then reads as zeros again). Returns false past the end.
    pub(crate) fn discard(&mut self, index: u32) -> bool {
        let u = self.unit_bytes;
        let zero_crc = zero_unit_crc(u);
        let Some(slot) = self.crcs.get_mut(index as usize) else { return false };
        *slot = zero_crc;
        self.written[index as usize / 64] |= 1 << (index % 64);
        let per_page = PAGE_SIZE / u;
        let first = index as usize / per_page * per_page;
        let page_offset = first * u;
        // SAFETY: `index` is in range (checked through `crcs`) and the mapping is whole host
        // pages, so the host page holding the unit lies inside the live mapping; `&mut self`
        // makes this the only access to it.
        let page = unsafe { std::slice::from_raw_parts_mut(self.base.as_ptr().add(page_offset), PAGE_SIZE) };
        page[(index as usize - first) * u..][..u].fill(0);
        let neighbours = first..(first + per_page).min(self.crcs.len());
        // Every unit of the page zero (its bytes, not only its CRC, are checked).
        if !self.locked && self.crcs[neighbours].iter().all(|c| *c == zero_crc) && page.iter().all(|b| *b == 0) {
            // SAFETY: the range is one whole host page inside the mapping owned by `self`;
            // nothing borrows it (the slice above is not used past this point).
            let rc =
                unsafe { libc::madvise(self.base.as_ptr().add(page_offset).cast(), PAGE_SIZE, libc::MADV_DONTNEED) };
            if rc != 0 {
                tracing::warn!("madvise(MADV_DONTNEED) of a discarded page failed: {}", io::Error::last_os_error());
            }
        }
        true
    }

    /// Test support: flips the first byte of every unit, leaving the stored CRCs as they
    /// were, so that every read of this slab fails its checksum at the client.
    pub(crate) fn corrupt_every_unit(&mut self) {
        for i in 0..self.crcs.len() {
            // SAFETY: `i` is below the unit count, so byte `i * unit_bytes` lies inside the
            // live mapping; `&mut self` makes this the only access to it.
            unsafe { *self.base.as_ptr().add(i * self.unit_bytes) ^= 0x5a };
        }
    }
}

#[cfg(test)]
impl Slab {
    /// Whether the host page at byte `offset` of the slab is in RAM.
    fn resident(&self, offset: usize) -> bool {
        let mut vec = [0u8; 1];
        // SAFETY: `offset` is page-aligned inside the mapping owned by `self`, and `vec` has
        // room for the one page asked about.
        let rc = unsafe { libc::mincore(self.base.as_ptr().add(offset).cast(), PAGE_SIZE, vec.as_mut_ptr()) };
        assert_eq!(rc, 0, "mincore: {}", io::Error::last_os_error());
        vec[0] & 1 == 1
    }
}

impl Drop for Slab {
    fn drop(&mut self) {
        // SAFETY: `base`/`len_bytes` describe the mapping created in `map`, unmapped only
        // here; no borrow of its pages can outlive `self`.
        if unsafe { libc::munmap(self.base.as_ptr().cast(), self.len_bytes) } != 0 {
            tracing::error!("munmap of a {}-byte slab failed: {}", self.len_bytes, io::Error::last_os_error());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fresh_pages_are_zero_with_the_zero_crc() {
        let slab = Slab::map(4, PAGE_SIZE, false).unwrap();
        assert_eq!(slab.pages(), 4);
        let (crc, data) = slab.page(3).unwrap();
        assert_eq!(crc, page_crc(&[0u8; PAGE_SIZE]));
        assert!(data.iter().all(|&b| b == 0));
        assert!(slab.page(4).is_none());
    }

    #[test]
    fn stores_pages_and_crcs_in_place() {
        let mut slab = Slab::map(2, PAGE_SIZE, true).unwrap();
        let page: Vec<u8> = (0..PAGE_SIZE).map(|i| (i * 7) as u8).collect();
        assert!(slab.store(1, page_crc(&page), &page));
        assert!(!slab.store(2, 0, &page), "past the end");
        assert!(!slab.store(0, 0, &page[..10]), "short page");
        let (crc, data) = slab.page(1).unwrap();
        assert_eq!((crc, data), (page_crc(&page), page.as_slice()));
        assert_eq!(slab.page(0).unwrap().0, zero_unit_crc(PAGE_SIZE), "neighbour untouched");
    }

    #[test]
    fn a_discarded_unit_reads_zero_keeps_copies_out_and_leaves_its_neighbours() {
        for unit in [PAGE_SIZE, 1024] {
            let mut slab = Slab::map(8, unit, false).unwrap();
            let data = vec![7u8; unit];
            for i in 0..8 {
                assert!(slab.store(i, page_crc(&data), &data));
            }
            assert!(slab.discard(1));
            assert!(!slab.discard(8), "past the end");
            assert_eq!(slab.page(1).unwrap(), (zero_unit_crc(unit), vec![0u8; unit].as_slice()));
            assert_eq!(slab.page(0).unwrap().1, data.as_slice(), "a neighbour keeps its bytes");
            assert_eq!(slab.page(2).unwrap().1, data.as_slice());
            assert!(!slab.store_if_unwritten(1, page_crc(&data), &data), "no copy lands in a discarded unit");
            assert!(slab.store(1, page_crc(&data), &data), "a write does");
            assert_eq!(slab.page(1).unwrap().1, data.as_slice());
            // a whole host page of units discarded: still zeros after MADV_DONTNEED
            for i in 0..(PAGE_SIZE / unit) as u32 {
                assert!(slab.discard(i));
            }
            assert!(!slab.resident(0), "{unit}: the host page went back");
            assert!(slab.page(0).unwrap().1.iter().all(|b| *b == 0));
            assert!(slab.resident(PAGE_SIZE), "{unit}: the next page holds data");
        }
    }

    #[test]
    fn a_copy_never_overwrites_a_write() {
        let mut slab = Slab::map(70, PAGE_SIZE, false).unwrap();
        let (old, new) = (vec![1u8; PAGE_SIZE], vec![2u8; PAGE_SIZE]);
        assert!(slab.store(65, page_crc(&new), &new));
        assert!(!slab.store_if_unwritten(65, page_crc(&old), &old), "written first: the copy is dropped");
        assert_eq!(slab.page(65).unwrap().1, new.as_slice());
        assert!(slab.store_if_unwritten(64, page_crc(&old), &old), "unwritten: the copy lands");
        assert!(slab.store(64, page_crc(&new), &new), "and a later write replaces it");
        assert!(!slab.store_if_unwritten(64, page_crc(&old), &old));
        assert_eq!(slab.page(64).unwrap(), (page_crc(&new), new.as_slice()));
        assert!(slab.store_if_unwritten(3, page_crc(&old), &old));
        assert!(slab.store_if_unwritten(3, page_crc(&new), &new), "copies do not mark a unit written");
        assert!(!slab.store_if_unwritten(70, page_crc(&old), &old), "past the end");
    }

    #[test]
    fn fragment_units_are_stored_back_to_back() {
        let mut slab = Slab::map(8, 512, false).unwrap();
        assert_eq!((slab.pages(), slab.unit_bytes(), slab.lent_bytes()), (8, 512, 4096));
        let unit = vec![9u8; 512];
        assert!(slab.store(7, page_crc(&unit), &unit));
        assert!(!slab.store(1, 0, &[0u8; PAGE_SIZE]), "a whole page is not a unit of this slab");
        assert_eq!(slab.page(7).unwrap(), (page_crc(&unit), unit.as_slice()));
        assert_eq!(slab.page(6).unwrap().0, zero_unit_crc(512));
        assert_eq!(zero_unit_crc(512), page_crc(&[0u8; 512]));
        slab.corrupt_every_unit();
        let (crc, data) = slab.page(7).unwrap();
        assert_ne!(page_crc(data), crc, "corruption is visible to the checksum");
    }
}
