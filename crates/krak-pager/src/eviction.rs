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
    /// Removes and returns the page to evict next, or `None` when the policy holds none.
    fn pick_victim(&mut self) -> Option<usize>;
    /// Number of pages the policy holds.
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// CLOCK (second chance): pages sit on a ring in arrival order with a reference bit; the
/// hand skips (and clears) referenced pages once and evicts the first unreferenced one.
#[derive(Debug)]
pub struct Clock {
    ring: VecDeque<u32>,
    referenced: Vec<u64>,
}

impl Clock {
    pub fn new(region_pages: usize) -> Clock {
        Clock { ring: VecDeque::new(), referenced: vec![0; region_pages.div_ceil(64)] }
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
        self.ring.push_back(page as u32);
    }

    fn touched(&mut self, page: usize) {
        self.set(page, true);
    }

    fn pick_victim(&mut self) -> Option<usize> {
        // Two sweeps at most: the first clears every reference bit it passes.
        for _ in 0..=self.ring.len() * 2 {
            let page = self.ring.pop_front()? as usize;
            if self.get(page) {
                self.set(page, false);
                self.ring.push_back(page as u32);
            } else {
                return Some(page);
            }
        }
        self.ring.pop_front().map(|p| p as usize)
    }

    fn len(&self) -> usize {
        self.ring.len()
    }
}

/// First in, first out: the baseline CLOCK degenerates to when no page is ever touched twice.
#[derive(Debug, Default)]
pub struct Fifo {
    ring: VecDeque<u32>,
}

impl EvictionPolicy for Fifo {
    fn name(&self) -> &'static str {
        "fifo"
    }
    fn inserted(&mut self, page: usize) {
        self.ring.push_back(page as u32);
    }
    fn touched(&mut self, _page: usize) {}
    fn pick_victim(&mut self) -> Option<usize> {
        self.ring.pop_front().map(|p| p as usize)
    }
    fn len(&self) -> usize {
        self.ring.len()
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
    fn fifo_is_arrival_order() {
        let mut f = Fifo::default();
        f.inserted(5);
        f.inserted(4);
        f.touched(5);
        assert_eq!((f.pick_victim(), f.pick_victim(), f.pick_victim()), (Some(5), Some(4), None));
    }
}
