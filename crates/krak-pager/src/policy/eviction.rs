//! Which resident page to give up when the local budget is full.

use std::collections::VecDeque;

/// An eviction policy sees pages become resident and be touched, and names victims.
///
/// The pager only learns about accesses that fault (first touch, first write to a clean
/// page), so a policy works from those signals; it never sees plain reads of resident pages.
pub trait EvictionPolicy: Send {
    fn name(&self) -> &'static str;
    /// `page` was installed and is now resident.
    fn inserted(&mut self, page: usize);
    /// A fault showed `page` in use while resident (e.g. its first write).
    fn touched(&mut self, page: usize);
    /// `page` is no longer resident for another reason than eviction (it was discarded).
    fn removed(&mut self, page: usize);
    /// Removes and returns the page to evict next, or `None` when the policy holds none.
    fn pick_victim(&mut self) -> Option<usize>;
    /// Number of pages the policy holds.
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Which pages a ring holds. A removed page's entry stays in the ring until the hand reaches
/// it (removal is O(1)); the ring is compacted when such stale entries outnumber the live ones.
#[derive(Debug, Default)]
struct Members {
    bits: Vec<u64>,
    live: usize,
}

impl Members {
    fn contains(&self, page: usize) -> bool {
        self.bits.get(page / 64).is_some_and(|w| w & (1u64 << (page % 64)) != 0)
    }

    /// Adds `page`; false if it was already there.
    fn insert(&mut self, page: usize) -> bool {
        if self.bits.len() <= page / 64 {
            self.bits.resize(page / 64 + 1, 0);
        }
        let fresh = self.bits[page / 64] & (1u64 << (page % 64)) == 0;
        self.bits[page / 64] |= 1u64 << (page % 64);
        self.live += usize::from(fresh);
        fresh
    }

    fn remove(&mut self, page: usize) {
        if self.contains(page) {
            self.bits[page / 64] &= !(1u64 << (page % 64));
            self.live -= 1;
        }
    }

    /// Drops stale and repeated entries once they are more than half of `ring`.
    fn compact(&self, ring: &mut VecDeque<u32>) {
        if ring.len() <= 2 * self.live + 64 {
            return;
        }
        let mut seen = Members::default();
        ring.retain(|&p| self.contains(p as usize) && seen.insert(p as usize));
    }
}

/// CLOCK (second chance): pages sit on a ring in arrival order with a reference bit; the
/// hand skips (and clears) referenced pages once and evicts the first unreferenced one.
#[derive(Debug)]
pub struct Clock {
    ring: VecDeque<u32>,
    referenced: Vec<u64>,
    members: Members,
}

impl Clock {
    pub fn new(region_pages: usize) -> Clock {
        Clock { ring: VecDeque::new(), referenced: vec![0; region_pages.div_ceil(64)], members: Members::default() }
    }

    fn set(&mut self, page: usize, on: bool) {
        let (word, bit) = (page / 64, 1u64 << (page % 64));
        if on {
            self.referenced[word] |= bit;
        } else {
            self.referenced[word] &= !bit;
        }
    }

    fn get(&self, page: usize) -> bool {
        self.referenced[page / 64] & (1u64 << (page % 64)) != 0
    }
}

impl EvictionPolicy for Clock {
    fn name(&self) -> &'static str {
        "clock"
    }

    fn inserted(&mut self, page: usize) {
        // A new page starts unreferenced: one that is never touched again goes first.
        self.set(page, false);
        if self.members.insert(page) {
            self.ring.push_back(page as u32);
        }
        self.members.compact(&mut self.ring);
    }

    fn touched(&mut self, page: usize) {
        self.set(page, true);
    }

    fn removed(&mut self, page: usize) {
        self.members.remove(page);
        self.members.compact(&mut self.ring);
    }

    fn pick_victim(&mut self) -> Option<usize> {
        // Two sweeps at most over live pages: the first clears every reference bit it passes.
        let mut budget = self.ring.len() * 2 + 1;
        while let Some(page) = self.ring.pop_front() {
            let page = page as usize;
            if !self.members.contains(page) {
                continue;
            }
            if self.get(page) && budget > 0 {
                budget -= 1;
                self.set(page, false);
                self.ring.push_back(page as u32);
            } else {
                self.members.remove(page);
                return Some(page);
            }
        }
        None
    }

    fn len(&self) -> usize {
        self.members.live
    }
}

/// First in, first out: the baseline CLOCK degenerates to when no page is ever touched twice.
#[derive(Debug, Default)]
pub struct Fifo {
    ring: VecDeque<u32>,
    members: Members,
}

impl EvictionPolicy for Fifo {
    fn name(&self) -> &'static str {
        "fifo"
    }
    fn inserted(&mut self, page: usize) {
        if self.members.insert(page) {
            self.ring.push_back(page as u32);
        }
        self.members.compact(&mut self.ring);
    }
    fn touched(&mut self, _page: usize) {}
    fn removed(&mut self, page: usize) {
        self.members.remove(page);
        self.members.compact(&mut self.ring);
    }
    fn pick_victim(&mut self) -> Option<usize> {
        while let Some(page) = self.ring.pop_front() {
            if self.members.contains(page as usize) {
                self.members.remove(page as usize);
                return Some(page as usize);
            }
        }
        None
    }
    fn len(&self) -> usize {
        self.members.live
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clock_gives_touched_pages_a_second_chance() {
        let mut c = Clock::new(128);
        for p in [1, 2, 3] {
            c.inserted(p);
        }
        c.touched(1);
        assert_eq!(c.pick_victim(), Some(2));
        assert_eq!(c.pick_victim(), Some(3));
        assert_eq!(c.pick_victim(), Some(1), "touched page goes last, not never");
        assert_eq!(c.pick_victim(), None);
    }

    #[test]
    fn clock_terminates_when_everything_is_referenced() {
        let mut c = Clock::new(64);
        for p in 0..10 {
            c.inserted(p);
            c.touched(p);
        }
        assert_eq!(c.pick_victim(), Some(0));
        assert_eq!(c.len(), 9);
    }

    #[test]
    fn removed_pages_are_never_victims_and_the_ring_stays_bounded() {
        let mut c = Clock::new(1 << 16);
        for round in 0..100 {
            for p in 0..1000 {
                c.inserted(p);
            }
            for p in 0..1000 {
                c.removed(p);
            }
            assert_eq!(c.len(), 0, "round {round}");
            assert!(c.ring.len() <= 2 * 1000 + 64);
        }
        c.inserted(7);
        c.inserted(8);
        c.removed(7);
        c.inserted(7);
        // A page removed and inserted again may be picked early (its old entry), but once.
        let mut picked = [c.pick_victim(), c.pick_victim()];
        picked.sort();
        assert_eq!((picked, c.pick_victim()), ([Some(7), Some(8)], None));
        let mut f = Fifo::default();
        f.inserted(3);
        f.inserted(4);
        f.removed(3);
        assert_eq!((f.pick_victim(), f.pick_victim()), (Some(4), None));
    }

    #[test]
    fn fifo_is_arrival_order() {
        let mut f = Fifo::default();
        f.inserted(5);
        f.inserted(4);
        f.touched(5);
        assert_eq!((f.pick_victim(), f.pick_victim(), f.pick_victim()), (Some(5), Some(4), None));
    }
}
