//! Which pages to fetch along with a faulting one.

/// A prefetch policy watches the stream of remote faults and proposes pages to bring in
/// with each. It only proposes: the pager fetches those that are not already local.
pub trait PrefetchPolicy: Send {
    fn name(&self) -> &'static str;
    /// Called for each fault that needs a remote page; appends pages to fetch to `out`.
    /// At most `max_pages` may be proposed.
    fn on_fault(&mut self, page: usize, region_pages: usize, max_pages: usize, out: &mut Vec<usize>);
    /// Prefetched pages that a later access in the same stream consumed without faulting.
    fn hits(&self) -> u64;
}

/// Never prefetches.
#[derive(Debug, Default)]
pub struct NoPrefetch;

impl PrefetchPolicy for NoPrefetch {
    fn name(&self) -> &'static str {
        "none"
    }
    fn on_fault(&mut self, _: usize, _: usize, _: usize, _: &mut Vec<usize>) {}
    fn hits(&self) -> u64 {
        0
    }
}

#[derive(Debug, Clone, Copy)]
struct Stream {
    last: i64,
    stride: i64,
    window: usize,
    /// Pages ahead of `last` that were prefetched for this stream.
    ahead: usize,
    age: u64,
}

/// Detects sequential and strided streams (several at once, e.g. one per thread) and
/// prefetches ahead of them with a window that doubles while the stream holds.
#[derive(Debug, Default)]
pub struct StrideDetector {
    streams: Vec<Stream>,
    recent: Vec<i64>,
    clock: u64,
    hits: u64,
}

const MAX_STREAMS: usize = 8;
const RECENT_FAULTS: usize = 8;
/// Farthest apart (in pages) two faults may be to start a stream.
const MAX_STRIDE: i64 = 8;
const FIRST_WINDOW: usize = 4;

impl PrefetchPolicy for StrideDetector {
    fn name(&self) -> &'static str {
        "stride"
    }

    fn on_fault(&mut self, page: usize, region_pages: usize, max_pages: usize, out: &mut Vec<usize>) {
        self.clock += 1;
        let p = page as i64;
        let matched = self.streams.iter().position(|s| {
            let d = p - s.last;
            d != 0 && d % s.stride == 0 && d / s.stride >= 1 && (d / s.stride) as usize <= s.ahead + 1
        });
        let stream = match matched {
            Some(i) => {
                let s = &mut self.streams[i];
                let steps = ((p - s.last) / s.stride) as usize;
                // The steps between the last fault and this one were served by the prefetch.
                self.hits += (steps - 1) as u64;
                s.last = p;
                s.window = (s.window * 2).min(max_pages.max(1));
                Some(i)
            }
            None => {
                let start = self.recent.iter().rev().find(|r| (p - **r).abs() <= MAX_STRIDE && **r != p).copied();
                start.map(|r| {
                    let s = Stream { last: p, stride: p - r, window: FIRST_WINDOW.min(max_pages), ahead: 0, age: 0 };
                    if self.streams.len() >= MAX_STREAMS {
                        let oldest = (0..self.streams.len()).min_by_key(|i| self.streams[*i].age).unwrap_or(0);
                        self.streams.swap_remove(oldest);
                    }
                    self.streams.push(s);
                    self.streams.len() - 1
                })
            }
        };
        if self.recent.len() >= RECENT_FAULTS {
            self.recent.remove(0);
        }
        self.recent.push(p);
        let Some(i) = stream else { return };
        let s = &mut self.streams[i];
        s.age = self.clock;
        s.ahead = 0;
        for k in 1..=s.window as i64 {
            let q = p + k * s.stride;
            if q < 0 || q as usize >= region_pages {
                break;
            }
            out.push(q as usize);
            s.ahead += 1;
        }
    }

    fn hits(&self) -> u64 {
        self.hits
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(p: &mut StrideDetector, page: usize) -> Vec<usize> {
        let mut out = Vec::new();
        p.on_fault(page, 1 << 20, 64, &mut out);
        out
    }

    #[test]
    fn sequential_stream_grows_its_window_and_counts_hits() {
        let mut p = StrideDetector::default();
        assert!(run(&mut p, 100).is_empty());
        assert_eq!(run(&mut p, 101), vec![102, 103, 104, 105]);
        // the scan used 102..=105 without faulting and next faults at 106
        let next = run(&mut p, 106);
        assert_eq!(next, (107..115).collect::<Vec<_>>());
        assert_eq!(p.hits(), 4);
        assert_eq!(run(&mut p, 115).len(), 16);
    }

    #[test]
    fn strided_and_backward_streams_are_detected() {
        let mut p = StrideDetector::default();
        run(&mut p, 50);
        assert_eq!(run(&mut p, 46)[..2], [42, 38]);
        let mut q = StrideDetector::default();
        run(&mut q, 0);
        assert_eq!(run(&mut q, 3)[..3], [6, 9, 12]);
    }

    #[test]
    fn random_faults_prefetch_nothing_and_stay_in_the_region() {
        let mut p = StrideDetector::default();
        for page in [5000, 12, 90000, 777, 4242, 31337] {
            assert!(run(&mut p, page).is_empty());
        }
        let mut out = Vec::new();
        p.on_fault(1 << 19, 1 << 19 | 2, 64, &mut out);
        p.on_fault((1 << 19) | 1, (1 << 19) | 2, 64, &mut out);
        assert!(out.iter().all(|q| *q < (1 << 19) | 2));
    }
}
