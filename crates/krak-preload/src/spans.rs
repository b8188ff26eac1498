//! Page ranges of the arena marked with a value: the protection of pages that are not
//! read-write, and the ranges another mapping covers (a `MAP_FIXED` file mapping over far
//! memory). Pages are absolute page numbers; a page has at most one mark.

use std::collections::BTreeMap;

#[derive(Debug)]
pub struct Spans<V> {
    /// start -> (pages, mark); never overlapping.
    map: BTreeMap<usize, (usize, V)>,
}

impl<V: Copy + Eq> Spans<V> {
    pub fn new() -> Spans<V> {
        Spans { map: BTreeMap::new() }
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Marks `[first, first+pages)` with `mark`, replacing what was there.
    pub fn insert(&mut self, first: usize, pages: usize, mark: V) {
        self.remove(first, pages);
        if pages > 0 {
            self.map.insert(first, (pages, mark));
            self.merge_around(first);
        }
    }

    /// Unmarks `[first, first+pages)`; returns the pieces that were marked, lowest first.
    pub fn remove(&mut self, first: usize, pages: usize) -> Vec<(usize, usize, V)> {
        let end = first + pages;
        let hit = self.pieces(first, pages);
        // Split the pieces that stick out of the range, then drop what is inside.
        let keys: Vec<usize> =
            self.map.range(..end).rev().take_while(|(&s, &(n, _))| s + n > first).map(|(&s, _)| s).collect();
        for s in keys {
            let (n, v) = self.map.remove(&s).expect("listed just now");
            if s < first {
                self.map.insert(s, (first - s, v));
            }
            if s + n > end {
                self.map.insert(end, (s + n - end, v));
            }
        }
        hit
    }

    /// The marked pieces within `[first, first+pages)`, clipped to it, lowest first.
    pub fn pieces(&self, first: usize, pages: usize) -> Vec<(usize, usize, V)> {
        let end = first + pages;
        let mut out: Vec<(usize, usize, V)> = self
            .map
            .range(..end)
            .rev()
            .take_while(|(&s, &(n, _))| s + n > first)
            .map(|(&s, &(n, v))| {
                let (lo, hi) = (s.max(first), (s + n).min(end));
                (lo, hi - lo, v)
            })
            .collect();
        out.reverse();
        out
    }

    /// Joins the piece at `at` with equal neighbours that touch it.
    fn merge_around(&mut self, at: usize) {
        let Some(&(n, v)) = self.map.get(&at) else { return };
        let (mut start, mut len) = (at, n);
        if let Some((&s, &(l, w))) = self.map.range(..at).next_back() {
            if s + l == at && w == v {
                self.map.remove(&at);
                start = s;
                len += l;
            }
        }
        if let Some(&(l, w)) = self.map.get(&(start + len)) {
            if w == v {
                self.map.remove(&(start + len));
                len += l;
            }
        }
        self.map.insert(start, (len, v));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_split_merge_and_clip() {
        let mut s: Spans<i32> = Spans::new();
        s.insert(10, 10, 1);
        s.insert(20, 5, 1);
        assert_eq!(s.pieces(0, 100), vec![(10, 15, 1)], "equal neighbours merge");
        s.insert(12, 2, 7);
        assert_eq!(s.pieces(0, 100), vec![(10, 2, 1), (12, 2, 7), (14, 11, 1)]);
        assert_eq!(s.pieces(13, 3), vec![(13, 1, 7), (14, 2, 1)], "clipped to the range");
        assert_eq!(s.remove(11, 4), vec![(11, 1, 1), (12, 2, 7), (14, 1, 1)]);
        assert_eq!(s.pieces(0, 100), vec![(10, 1, 1), (15, 10, 1)]);
        assert!(s.remove(0, 10).is_empty());
        s.remove(0, 100);
        assert!(s.is_empty());
    }
}
