//! Every page's state and the resident count, behind transitions that assert they are
//! legal. Nothing else in the pager writes a page's state: each method below is one arrow of
//! the state diagram in `docs/design.md` ("Page states"), and the resident count moves with
//! the states it counts, so the two cannot drift apart.
//!
//! One byte per page. The `REMOTE` bit (a memory server holds, or is about to hold, the
//! page) travels with the page through fetch and eviction; only landing a write-back sets it
//! and only a discard clears it. The bytes of `Staged` pages (evicted dirty, waiting for their
//! write-back) are kept here too: a page has staged bytes exactly when it is `Staged`.
//!
//! Held under the region's core lock, like everything it describes.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::Arc;

/// The `REMOTE` bit of a state's byte.
const REMOTE: u8 = 0x80;

/// A page's state. The low bits say where it is, the high bit whether a server holds it.
#[repr(u8)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PageState {
    /// Not resident, never written back: reads as zeros.
    Absent = 0x00,
    /// Not resident; its contents are on a memory server.
    AbsentRemote = 0x80,
    /// A handler is filling it (zeros); its frame counts against the budget.
    Fetching = 0x01,
    /// A handler is fetching it from its server.
    FetchingRemote = 0x81,
    /// A handler took it back from the write-back buffer and installs those bytes: they are
    /// the only copy that is sure to be current, so this fetch may not simply be given up.
    FetchingStaged = 0x86,
    /// Resident, write-protected, zero.
    Clean = 0x02,
    /// Resident, write-protected, identical to its server's copy.
    CleanRemote = 0x82,
    /// Resident, writable, never written back.
    Dirty = 0x03,
    /// Resident, writable, newer than its server's copy.
    DirtyRemote = 0x83,
    /// Evicted dirty: not mapped, its bytes wait here for their write-back.
    Staged = 0x84,
    /// Resident, being dropped by the reclaimer outside the lock.
    Evicting = 0x05,
    EvictingRemote = 0x85,
}

/// A state without its `REMOTE` bit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Absent,
    Fetching,
    Clean,
    Dirty,
    Staged,
    Evicting,
}

impl PageState {
    pub(crate) const fn kind(self) -> Kind {
        match self {
            PageState::Absent | PageState::AbsentRemote => Kind::Absent,
            PageState::Fetching | PageState::FetchingRemote | PageState::FetchingStaged => Kind::Fetching,
            PageState::Clean | PageState::CleanRemote => Kind::Clean,
            PageState::Dirty | PageState::DirtyRemote => Kind::Dirty,
            PageState::Staged => Kind::Staged,
            PageState::Evicting | PageState::EvictingRemote => Kind::Evicting,
        }
    }

    pub(crate) const fn remote(self) -> bool {
        self as u8 & REMOTE != 0
    }

    /// Whether its frame counts against the budget: fetching, mapped, or being dropped.
    pub(crate) const fn counts_resident(self) -> bool {
        matches!(self.kind(), Kind::Fetching | Kind::Clean | Kind::Dirty | Kind::Evicting)
    }

    /// The state of `kind` with the `REMOTE` bit `remote`. Staged pages are always remote.
    const fn of(kind: Kind, remote: bool) -> PageState {
        match (kind, remote) {
            (Kind::Absent, false) => PageState::Absent,
            (Kind::Absent, true) => PageState::AbsentRemote,
            (Kind::Fetching, false) => PageState::Fetching,
            (Kind::Fetching, true) => PageState::FetchingRemote,
            (Kind::Clean, false) => PageState::Clean,
            (Kind::Clean, true) => PageState::CleanRemote,
            (Kind::Dirty, false) => PageState::Dirty,
            (Kind::Dirty, true) => PageState::DirtyRemote,
            (Kind::Staged, _) => PageState::Staged,
            (Kind::Evicting, false) => PageState::Evicting,
            (Kind::Evicting, true) => PageState::EvictingRemote,
        }
    }
}

/// A page the reclaimer is dropping, with the state it had.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Victim {
    pub page: usize,
    was: PageState,
}

impl Victim {
    pub(crate) fn dirty(&self) -> bool {
        self.was.kind() == Kind::Dirty
    }
}

/// What [`PageTable::forget`] found a page holding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Forgotten {
    /// It was mapped (clean or dirty): the caller drops the mapping and tells the policy.
    pub mapped: bool,
    /// A server held a copy the caller may tell it to forget.
    pub remote: bool,
}

#[derive(Debug)]
pub(crate) struct PageTable {
    states: Box<[PageState]>,
    /// Pages whose state counts resident.
    resident: usize,
    /// Of those, the reserved frames not yet mapped (`Fetching`).
    fetching: usize,
    /// Pages a server holds a copy of (the `REMOTE` bit).
    remote: usize,
    /// Pages that hold data anywhere (every state but `Absent`).
    held: usize,
    /// The bytes of every `Staged` page, and of a `FetchingStaged` one only while its
    /// fetcher holds them (outside this table).
    staged: HashMap<usize, Arc<[u8]>>,
}

impl PageTable {
    /// `pages` pages, all absent.
    pub(crate) fn new(pages: usize) -> PageTable {
        PageTable {
            states: vec![PageState::Absent; pages].into_boxed_slice(),
            resident: 0,
            fetching: 0,
            remote: 0,
            held: 0,
            staged: HashMap::new(),
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.states.len()
    }

    pub(crate) fn get(&self, page: usize) -> PageState {
        self.states[page]
    }

    pub(crate) fn kind(&self, page: usize) -> Kind {
        self.states[page].kind()
    }

    pub(crate) fn is_remote(&self, page: usize) -> bool {
        self.states[page].remote()
    }

    /// How many pages a server holds a copy of.
    pub(crate) fn remote_pages(&self) -> usize {
        self.remote
    }

    /// Pages that hold data, locally, on a server or both: the region's footprint.
    pub(crate) fn held_pages(&self) -> usize {
        self.held
    }

    /// Pages that count against the budget.
    pub(crate) fn resident(&self) -> usize {
        self.resident
    }

    /// Pages mapped now (resident but for reserved frames still being fetched): what the
    /// region holds in RAM, never above the budget (`docs/design.md`, "The budget invariant").
    pub(crate) fn mapped(&self) -> usize {
        self.resident - self.fetching
    }

    /// Whether its only current copy is on a server (absent, or staged with its write in
    /// flight): what a lost server costs.
    pub(crate) fn only_remote(&self, page: usize) -> bool {
        matches!(self.states[page], PageState::AbsentRemote | PageState::Staged)
    }

    /// Whether a page of `pages` is being fetched.
    pub(crate) fn any_fetching(&self, pages: Range<usize>) -> bool {
        self.states[pages].iter().any(|s| s.kind() == Kind::Fetching)
    }

    /// Whether a page of `pages` is being fetched or dropped (a discard waits for those).
    pub(crate) fn any_in_flight(&self, pages: Range<usize>) -> bool {
        self.states[pages].iter().any(|s| matches!(s.kind(), Kind::Fetching | Kind::Evicting))
    }

    /// The pages of `pages` a server holds a copy of.
    pub(crate) fn remote_in(&self, pages: Range<usize>) -> impl Iterator<Item = usize> + '_ {
        pages.filter(|&p| self.states[p].remote())
    }

    /// Whether `bytes` are the staged bytes of `page` (not an older copy).
    pub(crate) fn is_newest(&self, page: usize, bytes: &Arc<[u8]>) -> bool {
        self.staged.get(&page).is_some_and(|s| Arc::ptr_eq(s, bytes))
    }

    fn set(&mut self, page: usize, to: PageState) {
        let from = self.states[page];
        self.resident = self.resident + usize::from(to.counts_resident()) - usize::from(from.counts_resident());
        let fetching = |s: PageState| usize::from(s.kind() == Kind::Fetching);
        self.fetching = self.fetching + fetching(to) - fetching(from);
        self.remote = self.remote + usize::from(to.remote()) - usize::from(from.remote());
        let held = |s: PageState| usize::from(s != PageState::Absent);
        self.held = self.held + held(to) - held(from);
        self.states[page] = to;
    }

    /// Moves `page` from a state of kind `from` to `to` (same `REMOTE` bit), asserting it.
    fn step(&mut self, page: usize, from: Kind, to: Kind) -> PageState {
        let was = self.states[page];
        assert!(was.kind() == from, "page {page}: {was:?} -> {to:?} is not a legal transition (want {from:?})");
        self.set(page, PageState::of(to, was.remote()));
        was
    }

    /// The first write to a clean page: from now on it must be written back.
    pub(crate) fn mark_dirty(&mut self, page: usize) {
        self.step(page, Kind::Clean, Kind::Dirty);
    }

    /// Claims the frame of a never-written page for a zero fill.
    pub(crate) fn reserve_zero(&mut self, page: usize) {
        assert_eq!(self.states[page], PageState::Absent, "page {page}: only an absent page is zero-filled");
        self.set(page, PageState::Fetching);
    }

    /// Claims the frame of a page whose contents are on its server, for a fetch; false (and
    /// nothing done) when the page is not absent on a server.
    pub(crate) fn try_reserve_remote(&mut self, page: usize) -> bool {
        if self.states[page] != PageState::AbsentRemote {
            return false;
        }
        self.set(page, PageState::FetchingRemote);
        true
    }

    /// Takes a staged page's bytes back for a fault: the caller installs them, or puts them
    /// back with [`PageTable::restage`].
    pub(crate) fn take_staged(&mut self, page: usize) -> Arc<[u8]> {
        assert_eq!(self.states[page], PageState::Staged, "page {page}: only a staged page has staged bytes");
        let bytes = self.staged.remove(&page);
        self.set(page, PageState::FetchingStaged);
        bytes.unwrap_or_else(|| panic!("page {page}: staged without bytes"))
    }

    /// Gives back bytes taken with [`PageTable::take_staged`] whose install did not happen.
    pub(crate) fn restage(&mut self, page: usize, bytes: Arc<[u8]>) {
        assert_eq!(self.states[page], PageState::FetchingStaged, "page {page}: restaged while not taken");
        self.staged.insert(page, bytes);
        self.set(page, PageState::Staged);
    }

    /// A fetch of `page` that will not complete gives its frame back; true if it was being
    /// fetched (a page installed meanwhile, or never reserved, is left alone). A page taken
    /// from the write-back buffer must be restaged instead: abandoning it would lose the
    /// only current copy.
    pub(crate) fn abandon(&mut self, page: usize) -> bool {
        match self.states[page] {
            PageState::Fetching | PageState::FetchingRemote => {
                self.step(page, Kind::Fetching, Kind::Absent);
                true
            }
            PageState::FetchingStaged => panic!("page {page}: a fetch of staged bytes abandoned"),
            _ => false,
        }
    }

    /// A fetched page is mapped: clean (write-protected) or dirty (writable). Bytes taken
    /// from the write-back buffer may not have landed yet, so they are always dirty.
    pub(crate) fn installed(&mut self, page: usize, dirty: bool) {
        if self.states[page] == PageState::FetchingStaged {
            assert!(dirty, "page {page}: staged bytes installed clean");
            self.set(page, PageState::DirtyRemote);
            return;
        }
        self.step(page, Kind::Fetching, if dirty { Kind::Dirty } else { Kind::Clean });
    }

    /// A clean page dropped from memory (its server, or zeros, still has it).
    pub(crate) fn evict_clean(&mut self, page: usize) {
        self.step(page, Kind::Clean, Kind::Absent);
    }

    /// A dirty page dropped from memory, its bytes handed to the write-back.
    pub(crate) fn stage(&mut self, page: usize, bytes: Arc<[u8]>) {
        self.step(page, Kind::Dirty, Kind::Staged);
        self.staged.insert(page, bytes);
    }

    /// The reclaimer takes a mapped page to drop it outside the lock.
    pub(crate) fn start_evicting(&mut self, page: usize) -> Victim {
        let was = self.states[page];
        assert!(matches!(was.kind(), Kind::Clean | Kind::Dirty), "page {page}: {was:?} cannot be evicted");
        self.set(page, PageState::of(Kind::Evicting, was.remote()));
        Victim { page, was }
    }

    /// The drop did not happen: the victim is mapped as it was.
    pub(crate) fn cancel_evicting(&mut self, victim: Victim) {
        let now = self.states[victim.page];
        assert_eq!(now.kind(), Kind::Evicting, "page {}: {now:?} was not being evicted", victim.page);
        self.set(victim.page, victim.was);
    }

    /// The victim is unmapped: a clean one is absent, a dirty one staged with `bytes`.
    pub(crate) fn finish_evicting(&mut self, victim: Victim, bytes: Option<Arc<[u8]>>) {
        let page = victim.page;
        assert_eq!(bytes.is_some(), victim.dirty(), "page {page}: a dirty victim is staged with its bytes");
        match bytes {
            Some(bytes) => {
                self.step(page, Kind::Evicting, Kind::Staged);
                self.staged.insert(page, bytes);
            }
            None => {
                self.step(page, Kind::Evicting, Kind::Absent);
            }
        }
    }

    /// The write-back of `bytes` landed: if they are still the page's newest copy, the page
    /// is now only on its server. Returns whether it was.
    pub(crate) fn landed(&mut self, page: usize, bytes: &Arc<[u8]>) -> bool {
        if !self.is_newest(page, bytes) {
            return false;
        }
        self.staged.remove(&page);
        self.set(page, PageState::AbsentRemote);
        true
    }

    /// Forgets a page (`free`, `munmap`, `MADV_DONTNEED`): it reads as zeros next. It must
    /// not be in flight (the caller waits for that with [`PageTable::any_in_flight`]).
    pub(crate) fn forget(&mut self, page: usize) -> Forgotten {
        let was = self.states[page];
        let kind = was.kind();
        assert!(!matches!(kind, Kind::Fetching | Kind::Evicting), "page {page}: forgotten while {was:?}");
        if kind == Kind::Staged {
            // Its queued write may still land; only a newer staged copy would be kept.
            self.staged.remove(&page);
        }
        self.set(page, PageState::Absent);
        Forgotten { mapped: matches!(kind, Kind::Clean | Kind::Dirty), remote: was.remote() }
    }

    /// Checks the table's invariants (a pass over every page: tests and debug checks only).
    #[cfg_attr(not(debug_assertions), allow(dead_code))]
    pub(crate) fn validate(&self) {
        let counted = self.states.iter().filter(|s| s.counts_resident()).count();
        assert_eq!(counted, self.resident, "resident count");
        let fetching = self.states.iter().filter(|s| s.kind() == Kind::Fetching).count();
        assert_eq!(fetching, self.fetching, "fetching count");
        let remote = self.states.iter().filter(|s| s.remote()).count();
        assert_eq!(remote, self.remote, "remote count");
        let staged = self.states.iter().filter(|s| **s == PageState::Staged).count();
        assert_eq!(staged, self.staged.len(), "staged pages and staged bytes");
        for page in self.staged.keys() {
            assert_eq!(self.states[*page], PageState::Staged, "page {page} has staged bytes");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(b: u8) -> Arc<[u8]> {
        vec![b; 8].into()
    }

    #[test]
    fn a_page_goes_round_the_whole_cycle_and_the_count_follows() {
        let mut t = PageTable::new(4);
        t.reserve_zero(0);
        assert_eq!((t.get(0), t.resident()), (PageState::Fetching, 1));
        t.installed(0, false);
        t.mark_dirty(0);
        let v = t.start_evicting(0);
        assert_eq!(t.resident(), 1, "an evicting page still holds its frame");
        t.finish_evicting(v, Some(bytes(1)));
        assert_eq!((t.get(0), t.resident()), (PageState::Staged, 0));
        assert!(t.only_remote(0));
        let b = t.take_staged(0);
        t.restage(0, b);
        let b = t.take_staged(0);
        t.installed(0, true);
        assert_eq!(t.get(0), PageState::DirtyRemote);
        t.stage(0, b.clone());
        assert!(!t.landed(0, &bytes(1)), "an older copy landing changes nothing");
        assert!(t.landed(0, &b));
        assert_eq!(t.get(0), PageState::AbsentRemote);
        assert!(t.try_reserve_remote(0) && !t.try_reserve_remote(0));
        assert!(t.abandon(0) && !t.abandon(0));
        assert!(t.try_reserve_remote(0));
        t.installed(0, false);
        assert_eq!(t.forget(0), Forgotten { mapped: true, remote: true });
        assert_eq!((t.get(0), t.resident()), (PageState::Absent, 0));
        t.validate();
    }

    #[test]
    fn a_cancelled_eviction_restores_the_state() {
        let mut t = PageTable::new(2);
        t.reserve_zero(1);
        t.installed(1, true);
        let v = t.start_evicting(1);
        assert!(v.dirty() && t.any_in_flight(0..2) && !t.any_fetching(0..2));
        t.cancel_evicting(v);
        assert_eq!((t.get(1), t.resident()), (PageState::Dirty, 1));
        t.validate();
    }

    #[test]
    #[should_panic(expected = "not a legal transition")]
    fn marking_an_absent_page_dirty_is_refused() {
        PageTable::new(1).mark_dirty(0);
    }

    #[test]
    #[should_panic(expected = "a fetch of staged bytes abandoned")]
    fn staged_bytes_are_never_abandoned() {
        let mut t = PageTable::new(1);
        t.reserve_zero(0);
        t.installed(0, true);
        t.stage(0, bytes(2));
        let _ = t.take_staged(0);
        t.abandon(0);
    }

    #[test]
    #[should_panic(expected = "forgotten while")]
    fn a_page_in_flight_is_not_forgotten() {
        let mut t = PageTable::new(1);
        t.reserve_zero(0);
        t.forget(0);
    }

    #[test]
    fn random_legal_sequences_keep_the_invariants() {
        let mut t = PageTable::new(16);
        let mut x = 0x9e37_79b9_u64;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut taken: HashMap<usize, Arc<[u8]>> = HashMap::new();
        let mut victims: HashMap<usize, Victim> = HashMap::new();
        for _ in 0..20_000 {
            let p = (next() % 16) as usize;
            match (t.get(p), next() % 3) {
                (PageState::Absent, _) => t.reserve_zero(p),
                (PageState::AbsentRemote, _) => assert!(t.try_reserve_remote(p)),
                (PageState::Fetching | PageState::FetchingRemote, 0) => assert!(t.abandon(p)),
                (PageState::Fetching | PageState::FetchingRemote, d) => t.installed(p, d == 1),
                (PageState::FetchingStaged, 0) => t.restage(p, taken.remove(&p).unwrap()),
                (PageState::FetchingStaged, _) => {
                    taken.remove(&p);
                    t.installed(p, true)
                }
                (PageState::Clean | PageState::CleanRemote, 0) => t.mark_dirty(p),
                (PageState::Clean | PageState::CleanRemote, 1) => t.evict_clean(p),
                (PageState::Dirty | PageState::DirtyRemote, 0) => t.stage(p, bytes(p as u8)),
                (PageState::Clean | PageState::CleanRemote | PageState::Dirty | PageState::DirtyRemote, 2) => {
                    victims.insert(p, t.start_evicting(p));
                }
                (PageState::Dirty | PageState::DirtyRemote, _) => {
                    t.forget(p);
                }
                (PageState::Staged, 0) => {
                    let b = t.staged[&p].clone();
                    assert!(t.landed(p, &b));
                }
                (PageState::Staged, _) => {
                    taken.insert(p, t.take_staged(p));
                }
                (PageState::Evicting | PageState::EvictingRemote, d) => {
                    let v = victims.remove(&p).unwrap();
                    if d == 0 {
                        t.cancel_evicting(v)
                    } else {
                        let b = v.dirty().then(|| bytes(3));
                        t.finish_evicting(v, b)
                    }
                }
                (s, d) => unreachable!("{s:?} {d}"),
            }
            t.validate();
        }
    }
}
