//! Versioned pages checked against an oracle: every word of page `p` at version `v` is a
//! hash of (p, v, word), so a page read back proves both where it came from and which
//! write it is. Tests fill every page before they check any, so the oracle starts at the
//! version they filled.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use krak_pager::{FarMemory, PAGE_SIZE};

use super::{read_u64, write_u64};

const WORDS: usize = PAGE_SIZE / 8;

pub fn word(page: usize, version: u64, w: usize) -> u64 {
    let x = (page as u64) << 32 ^ version << 12 ^ w as u64;
    x.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ (x >> 29)
}

pub fn fill_page(region: &FarMemory, page: usize, version: u64) {
    for w in 0..WORDS {
        write_u64(region, page * PAGE_SIZE + w * 8, word(page, version, w));
    }
}

pub fn page_is(region: &FarMemory, page: usize, version: u64) -> bool {
    (0..WORDS).all(|w| read_u64(region, page * PAGE_SIZE + w * 8) == word(page, version, w))
}

/// The version last written to each page.
pub struct Oracle(pub Vec<AtomicU64>);

impl Oracle {
    /// `pages` pages, all at `version`.
    pub fn at(pages: usize, version: u64) -> Oracle {
        Oracle((0..pages).map(|_| AtomicU64::new(version)).collect())
    }

    /// `pages` pages at version 0 (to be filled before they are checked).
    pub fn new(pages: usize) -> Oracle {
        Oracle::at(pages, 0)
    }
}

/// `threads` threads reading (checked) and rewriting pages of their own (page % threads)
/// until stopped; each returns (operations, wrong pages seen).
pub fn workload(
    region: Arc<FarMemory>,
    oracle: Arc<Oracle>,
    stop: Arc<AtomicBool>,
    threads: usize,
) -> Vec<std::thread::JoinHandle<(u64, u64)>> {
    (0..threads)
        .map(|t| {
            let (region, oracle, stop) = (region.clone(), oracle.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut rng = 0x1234_5678_9abc_def0u64 ^ (t as u64) << 40;
                let (mut ops, mut wrong) = (0u64, 0u64);
                let pages = oracle.0.len();
                while !stop.load(Ordering::Relaxed) {
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    let page = ((rng >> 8) as usize % (pages / threads)) * threads + t;
                    let version = oracle.0[page].load(Ordering::Relaxed);
                    if rng % 10 < 7 {
                        if !page_is(&region, page, version) {
                            wrong += 1;
                        }
                    } else {
                        fill_page(&region, page, version + 1);
                        oracle.0[page].store(version + 1, Ordering::Relaxed);
                    }
                    ops += 1;
                }
                (ops, wrong)
            })
        })
        .collect()
}
