//! Freed runs kept, resident and unchanged, for the next `malloc` of the same size.
//!
//! A program that allocates and frees a block of the same size over and over (an
//! interpreter's temporaries: Python builds a 1 MiB `bytes` object per step of a loop)
//! would otherwise pay for each round a discard (a message to the pager) and a zero-fill
//! fault on every page it touches again. glibc's heap keeps freed blocks for reuse the same
//! way (its mmap threshold rises to the size of a freed mapped block). Only `malloc`'s
//! callers get these runs back (their contents are undefined); `calloc` and `mmap` want
//! zeros and get fresh runs. The runs kept are bounded in number and in pages, and the
//! oldest is given up first.

use std::collections::VecDeque;

/// Most runs kept at once.
pub const MAX_RUNS: usize = 64;
/// Most pages of one run kept (4 MiB): larger blocks are rarer, and each would hold much of
/// the bound.
pub const MAX_RUN_PAGES: usize = 1024;
/// Most pages kept in all (16 MiB), at most a sixteenth of the local budget.
pub const MAX_PAGES: usize = 4096;

#[derive(Debug)]
pub struct Retained {
    /// (first page, pages in use), oldest first.
    runs: VecDeque<(usize, usize)>,
    pages: usize,
    max_pages: usize,
}

impl Retained {
    /// Keeps at most `max_pages` pages (and never more than [`MAX_PAGES`]).
    pub fn new(max_pages: usize) -> Retained {
        Retained { runs: VecDeque::with_capacity(MAX_RUNS), pages: 0, max_pages: max_pages.min(MAX_PAGES) }
    }

    /// Whether a freed run of `pages` may be kept at all.
    pub fn may_keep(&self, pages: usize) -> bool {
        pages <= MAX_RUN_PAGES && pages <= self.max_pages
    }

    /// The oldest run to give up before one of `pages` fits, if any must go.
    pub fn must_give_up(&mut self, pages: usize) -> Option<usize> {
        if self.runs.len() < MAX_RUNS && self.pages + pages <= self.max_pages {
            return None;
        }
        let (first, n) = self.runs.pop_front()?;
        self.pages -= n;
        Some(first)
    }

    /// Keeps the freed run at `first` of `pages`; the caller made room first.
    pub fn keep(&mut self, first: usize, pages: usize) {
        debug_assert!(self.may_keep(pages) && self.runs.len() < MAX_RUNS && self.pages + pages <= self.max_pages);
        self.runs.push_back((first, pages));
        self.pages += pages;
    }

    /// The newest kept run of exactly `pages` whose start `fits` (alignment, reservation),
    /// taken out: it is the program's again.
    pub fn take(&mut self, pages: usize, fits: impl Fn(usize) -> bool) -> Option<usize> {
        let at = self.runs.iter().rposition(|&(first, n)| n == pages && fits(first))?;
        let (first, n) = self.runs.remove(at).expect("found above");
        self.pages -= n;
        Some(first)
    }

    /// Whether the run at `first` is kept (freed): a second `free` of it is a double free.
    pub fn contains(&self, first: usize) -> bool {
        self.runs.iter().any(|&(f, _)| f == first)
    }

    /// Stops keeping the runs whose start `gone` names (their range is being released).
    pub fn drop_if(&mut self, gone: impl Fn(usize) -> bool) {
        let pages = &mut self.pages;
        self.runs.retain(|&(first, n)| {
            let keep = !gone(first);
            if !keep {
                *pages -= n;
            }
            keep
        });
    }

    #[cfg(test)]
    pub fn pages(&self) -> usize {
        self.pages
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_newest_run_of_the_size_comes_back_and_the_oldest_goes_first() {
        let mut r = Retained::new(100);
        assert!(r.may_keep(100) && !r.may_keep(101));
        for (first, n) in [(10, 30), (50, 30), (90, 20)] {
            assert_eq!(r.must_give_up(n), None);
            r.keep(first, n);
        }
        assert_eq!(r.pages(), 80);
        assert!(r.contains(50) && !r.contains(51));
        assert_eq!(r.take(30, |_| true), Some(50), "newest of the size");
        assert!(!r.contains(50));
        assert_eq!(r.take(30, |f| f != 10), None, "one that does not fit is left");
        assert_eq!(r.take(25, |_| true), None, "exact sizes only");
        r.keep(50, 30);
        assert_eq!(r.must_give_up(30), Some(10), "over the page bound: the oldest goes");
        assert_eq!(r.must_give_up(30), None);
        r.keep(200, 30);
        assert_eq!(r.pages(), 80);
        r.drop_if(|f| f == 50);
        assert_eq!((r.pages(), r.take(30, |_| true)), (50, Some(200)));
        assert_eq!(Retained::new(1 << 30).max_pages, MAX_PAGES);
    }

    #[test]
    fn the_number_of_runs_is_bounded_too() {
        let mut r = Retained::new(MAX_PAGES);
        for i in 0..MAX_RUNS {
            assert_eq!(r.must_give_up(1), None);
            r.keep(i, 1);
        }
        assert_eq!(r.must_give_up(1), Some(0));
    }
}
