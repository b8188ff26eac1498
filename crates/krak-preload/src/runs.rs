//! The arena's page-run allocator: which pages of the far-memory arena the program holds.
//!
//! Pages are absolute page numbers (address / 4096). A run from `malloc` reserves the
//! next power of two of its pages, so that `realloc` usually grows in place (address
//! space is cheap; pages never touched cost nothing locally or remotely). A run from `mmap`
//! reserves exactly its pages and may be unmapped in parts.

use std::collections::BTreeMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Run {
    /// Pages in use, from the run's first page.
    pub pages: usize,
    /// Pages reserved for it (at least `pages`); the ones past `pages` are discarded.
    pub reserved: usize,
}

#[derive(Debug)]
pub struct Runs {
    /// Free ranges, start -> pages, coalesced.
    free: BTreeMap<usize, usize>,
    /// Runs handed out, start -> run.
    used: BTreeMap<usize, Run>,
}

impl Runs {
    pub fn new(first_page: usize, pages: usize) -> Runs {
        Runs { free: BTreeMap::from([(first_page, pages)]), used: BTreeMap::new() }
    }

    /// A run of `pages` with `reserved` pages of address space, its start a multiple of
    /// `align_pages` (a power of two); lowest address first. None when the arena is full.
    pub fn alloc(&mut self, pages: usize, reserved: usize, align_pages: usize) -> Option<usize> {
        debug_assert!(pages > 0 && reserved >= pages && align_pages.is_power_of_two());
        let (start, at) = self.free.iter().find_map(|(&start, &len)| {
            let at = start.next_multiple_of(align_pages);
            (at + reserved <= start + len).then_some((start, at))
        })?;
        self.take(start, at, reserved);
        self.used.insert(at, Run { pages, reserved });
        Some(at)
    }

    /// Takes `[at, at+len)` out of the free range starting at `start`.
    fn take(&mut self, start: usize, at: usize, len: usize) {
        let free_len = self.free.remove(&start).expect("taken from a free range");
        if at > start {
            self.free.insert(start, at - start);
        }
        let end = start + free_len;
        if at + len < end {
            self.free.insert(at + len, end - at - len);
        }
    }

    pub fn get(&self, start: usize) -> Option<Run> {
        self.used.get(&start).copied()
    }

    /// Forgets the run starting at `start` and frees its reservation. The caller discards
    /// its pages first (before anyone can be given them again).
    pub fn free_run(&mut self, start: usize) -> Option<Run> {
        let run = self.used.remove(&start)?;
        self.give_back(start, run.reserved);
        Some(run)
    }

    /// Sets a run's size to `pages`, in place: within its reservation, or by taking the free
    /// pages right after it. False when those are not free (the caller moves the run).
    pub fn resize_in_place(&mut self, start: usize, pages: usize) -> bool {
        let Some(mut run) = self.get(start) else { return false };
        if pages > run.reserved {
            let end = start + run.reserved;
            match self.free.get(&end) {
                Some(&len) if run.reserved + len >= pages => {
                    // Take what is needed, up to the next power of two, so further growth stays in place.
                    let want = pages.next_power_of_two().min(run.reserved + len) - run.reserved;
                    self.take(end, end, want);
                    run.reserved += want;
                }
                _ => return false,
            }
        }
        run.pages = pages;
        self.used.insert(start, run);
        true
    }

    /// Takes `[first, first+pages)` out of the runs that hold it (`munmap` of part of a
    /// mapping) and frees it. Returns the pieces that were in use, for the caller to discard
    /// first; pages that were not in use are left as they are.
    pub fn release(&mut self, first: usize, pages: usize) -> Vec<(usize, usize)> {
        let end = first + pages;
        let overlapping: Vec<(usize, Run)> =
            self.used.range(..end).rev().take_while(|(&s, r)| s + r.reserved > first).map(|(&s, &r)| (s, r)).collect();
        let mut released = Vec::new();
        for (s, run) in overlapping {
            let (lo, hi) = (s.max(first), (s + run.reserved).min(end));
            self.used.remove(&s);
            if s < lo {
                // The head stays in use; its reservation ends where the release starts.
                self.used.insert(s, Run { pages: run.pages.min(lo - s), reserved: lo - s });
            }
            if hi < s + run.reserved {
                // The tail of a mapping: all of it in use (mmap runs reserve no spare pages).
                let tail = s + run.reserved - hi;
                self.used.insert(hi, Run { pages: tail, reserved: tail });
            }
            released.push((lo, hi - lo));
        }
        for &(s, n) in &released {
            self.give_back(s, n);
        }
        released
    }

    /// Makes every free page of `[first, first+pages)` a run of its own (`mmap(MAP_FIXED)`
    /// at addresses of the arena the program does not hold): the whole range is then held.
    /// Returns the pieces that were free, for a caller that gives them back on failure.
    pub fn claim(&mut self, first: usize, pages: usize) -> Vec<(usize, usize)> {
        let end = first + pages;
        let overlapping: Vec<(usize, usize)> =
            self.free.range(..end).rev().take_while(|(&s, &l)| s + l > first).map(|(&s, &l)| (s, l)).collect();
        let mut claimed = Vec::with_capacity(overlapping.len());
        for (s, l) in overlapping {
            let (lo, hi) = (s.max(first), (s + l).min(end));
            self.take(s, lo, hi - lo);
            self.used.insert(lo, Run { pages: hi - lo, reserved: hi - lo });
            claimed.push((lo, hi - lo));
        }
        claimed
    }

    /// Whether every page of `[first, first+pages)` is held by some run.
    pub fn all_in_use(&self, first: usize, pages: usize) -> bool {
        let mut at = first;
        let end = first + pages;
        while at < end {
            match self.used.range(..=at).next_back() {
                Some((&s, r)) if s + r.reserved > at => at = s + r.reserved,
                _ => return false,
            }
        }
        true
    }

    fn give_back(&mut self, mut start: usize, mut len: usize) {
        if let Some((&s, &l)) = self.free.range(..start).next_back() {
            if s + l == start {
                self.free.remove(&s);
                start = s;
                len += l;
            }
        }
        if let Some(&l) = self.free.get(&(start + len)) {
            self.free.remove(&(start + len));
            len += l;
        }
        self.free.insert(start, len);
    }

    #[cfg(test)]
    pub fn free_pages(&self) -> usize {
        self.free.values().sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alloc_free_coalesces() {
        let mut r = Runs::new(1000, 100);
        let a = r.alloc(10, 16, 1).unwrap();
        let b = r.alloc(5, 5, 1).unwrap();
        assert_eq!((a, b), (1000, 1016));
        assert_eq!(r.free_pages(), 100 - 21);
        assert!(r.free_run(a).is_some());
        assert!(r.free_run(a).is_none(), "double free is refused");
        r.free_run(b);
        assert_eq!(r.free.len(), 1);
        assert_eq!(r.free_pages(), 100);
        assert!(r.alloc(101, 101, 1).is_none());
    }

    #[test]
    fn alignment_and_growth_in_place() {
        let mut r = Runs::new(1001, 200);
        let a = r.alloc(3, 4, 64).unwrap();
        assert_eq!(a % 64, 0);
        assert!(r.resize_in_place(a, 4), "within the reservation");
        assert!(r.resize_in_place(a, 20), "into the free pages after it");
        let b = r.alloc(1, 1, 1).unwrap();
        assert!(b < a || b >= a + r.get(a).unwrap().reserved);
        assert!(r.resize_in_place(a, 2), "shrinking is always in place");
        assert_eq!(r.get(a).unwrap().pages, 2);
    }

    #[test]
    fn claim_holds_the_free_pages_of_a_range() {
        let mut r = Runs::new(0, 100);
        let a = r.alloc(10, 10, 1).unwrap();
        assert_eq!(r.claim(5, 20), vec![(10, 15)]);
        assert!(r.all_in_use(0, 25) && !r.all_in_use(0, 26));
        assert_eq!(r.get(10), Some(Run { pages: 15, reserved: 15 }));
        assert_eq!(r.get(a), Some(Run { pages: 10, reserved: 10 }), "held runs are left as they are");
        r.claim(0, 25);
        assert_eq!(r.free_pages(), 75);
        r.release(0, 100);
        assert_eq!(r.free_pages(), 100);
    }

    #[test]
    fn partial_release_splits_runs() {
        let mut r = Runs::new(0, 100);
        let a = r.alloc(30, 30, 1).unwrap();
        assert_eq!(r.release(a + 10, 5), vec![(a + 10, 5)]);
        assert_eq!(r.get(a), Some(Run { pages: 10, reserved: 10 }));
        assert_eq!(r.get(a + 15), Some(Run { pages: 15, reserved: 15 }));
        assert!(r.all_in_use(a, 10) && !r.all_in_use(a, 11) && r.all_in_use(a + 15, 15));
        assert_eq!(r.release(a, 30), vec![(a + 15, 15), (a, 10)]);
        assert_eq!(r.free_pages(), 100);
        assert!(r.release(0, 100).is_empty());
    }
}
