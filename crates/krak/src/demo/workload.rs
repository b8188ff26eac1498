//! The demo's verified workload: whole 4 KiB pages written with pseudo-random contents whose
//! CRC-32C is remembered, read back and checked.

use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};

const PAGE: usize = 4096;

/// Memory the workload runs on: a far-memory region or plain local RAM.
pub struct Target {
    pub ptr: *mut u8,
    pub pages: usize,
}

/// Remembers the CRC of every page written, so every read can be checked.
pub struct VerifiedPages {
    crcs: Vec<u32>,
    versions: Vec<u32>,
    buf: Vec<u8>,
    pub mismatches: u64,
    pub first_bad_page: Option<usize>,
}

/// One mixed phase's outcome.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct PhaseResult {
    pub ops: u64,
    pub elapsed_s: f64,
    pub ops_per_s: f64,
}

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

impl VerifiedPages {
    pub fn new(pages: usize) -> VerifiedPages {
        VerifiedPages {
            crcs: vec![0; pages],
            versions: vec![0; pages],
            buf: vec![0; PAGE],
            mismatches: 0,
            first_bad_page: None,
        }
    }

    /// Writes a new version of `page` and remembers its CRC.
    pub fn write(&mut self, t: &Target, page: usize) {
        self.versions[page] = self.versions[page].wrapping_add(1);
        let seed = ((page as u64) << 32) | self.versions[page] as u64;
        for (i, word) in self.buf.chunks_exact_mut(8).enumerate() {
            word.copy_from_slice(&splitmix(seed ^ ((i as u64) << 48)).to_le_bytes());
        }
        self.crcs[page] = crc32c::crc32c(&self.buf);
        assert!(page < t.pages);
        // SAFETY: `page < t.pages` (asserted), so the 4 KiB at its offset lie inside the
        // target's mapping, which outlives this call; the buffer is a separate allocation.
        unsafe { std::ptr::copy_nonoverlapping(self.buf.as_ptr(), t.ptr.add(page * PAGE), PAGE) };
    }

    /// Reads `page` back and checks it against the CRC of the last write.
    pub fn check(&mut self, t: &Target, page: usize) -> bool {
        assert!(page < t.pages);
        // SAFETY: as in `write`: in bounds, and the mapping outlives this call.
        unsafe { std::ptr::copy_nonoverlapping(t.ptr.add(page * PAGE), self.buf.as_mut_ptr(), PAGE) };
        let ok = crc32c::crc32c(&self.buf) == self.crcs[page];
        if !ok {
            self.mismatches += 1;
            self.first_bad_page.get_or_insert(page);
        }
        ok
    }

    /// Writes every page once.
    pub fn fill(&mut self, t: &Target, progress: &dyn Fn(u64)) {
        for page in 0..t.pages {
            self.write(t, page);
            if page % 4096 == 4095 {
                progress(4096);
            }
        }
    }

    /// Random pages, 70% read-and-check, 30% rewrite, for `ops` operations or `limit`.
    pub fn mixed(
        &mut self,
        t: &Target,
        ops: u64,
        seed: u64,
        limit: Option<Duration>,
        progress: &dyn Fn(u64),
    ) -> PhaseResult {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let start = Instant::now();
        let mut done = 0;
        while done < ops {
            let page = rng.gen_range(0..t.pages);
            if rng.gen_bool(0.3) {
                self.write(t, page);
            } else {
                self.check(t, page);
            }
            done += 1;
            if done % 1024 == 0 {
                progress(1024);
                if limit.is_some_and(|l| start.elapsed() > l) {
                    break;
                }
            }
        }
        let elapsed_s = start.elapsed().as_secs_f64();
        PhaseResult { ops: done, elapsed_s, ops_per_s: done as f64 / elapsed_s.max(1e-9) }
    }

    /// Checks every page; returns how many were intact.
    pub fn verify_all(&mut self, t: &Target, progress: &dyn Fn(u64)) -> u64 {
        let mut good = 0;
        for page in 0..t.pages {
            if self.check(t, page) {
                good += 1;
            }
            if page % 4096 == 4095 {
                progress(4096);
            }
        }
        good
    }
}
