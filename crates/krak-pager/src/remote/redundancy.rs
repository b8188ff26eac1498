//! How a region survives the loss of memory servers: the scheme chosen when it is made, and
//! the coding of one page into the fragments its chunk's stripe of slabs stores.
//!
//! - `none`: one slab per chunk, whole pages.
//! - `replicate:N`: N slabs per chunk on N distinct servers, each a whole copy of every page.
//! - `ec:K+M`: K+M slabs per chunk on K+M distinct servers; slab `i` stores fragment `i` of
//!   every page of the chunk: fragments `0..K` are the page cut in K pieces (systematic, so
//!   a read of the K data fragments needs no decoding), `K..K+M` are Reed–Solomon parity.
//!   Any K of the K+M rebuild the page.

use std::fmt;
use std::str::FromStr;

use krak_uffd::PAGE_SIZE;

use crate::error::CodingError;
use reed_solomon_simd::{ReedSolomonDecoder, ReedSolomonEncoder};

/// Most copies `replicate:N` may keep.
pub const MAX_REPLICAS: usize = 8;
/// Most fragments (K+M) of one page under `ec:K+M`.
pub const MAX_FRAGMENTS: usize = 32;
/// Most data fragments: a fragment is at least 64 bytes (the memory server's smallest unit).
pub const MAX_DATA_FRAGMENTS: usize = PAGE_SIZE / krak_proto::MIN_UNIT_BYTES;

/// A region's redundancy, chosen when it is made.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Redundancy {
    /// One copy: losing its server loses the page.
    #[default]
    None,
    /// `n` whole copies on `n` distinct servers: survives `n - 1` losses.
    Replicate { n: usize },
    /// `k` data and `m` parity fragments on `k + m` distinct servers: survives `m` losses at
    /// `(k + m) / k` times the memory.
    Ec { k: usize, m: usize },
}

/// Why a redundancy scheme did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "redundancy {input:?}: {reason} (expected none, replicate:N with N from 2 to {MAX_REPLICAS}, \
     or ec:K+M with K a power of two from 1 to {MAX_DATA_FRAGMENTS}, M at least 1 and K+M at most {MAX_FRAGMENTS})"
)]
pub struct ParseRedundancyError {
    input: String,
    reason: String,
}

impl FromStr for Redundancy {
    type Err = ParseRedundancyError;

    fn from_str(s: &str) -> Result<Redundancy, ParseRedundancyError> {
        let err = |reason: &str| ParseRedundancyError { input: s.to_string(), reason: reason.to_string() };
        let t = s.trim().to_ascii_lowercase();
        let number =
            |n: &str, what: &str| n.trim().parse::<usize>().map_err(|_| err(&format!("{what} is not a number")));
        if t == "none" {
            return Ok(Redundancy::None);
        }
        if let Some(n) = t.strip_prefix("replicate:") {
            let n = number(n, "N")?;
            if !(2..=MAX_REPLICAS).contains(&n) {
                return Err(err("N out of range"));
            }
            return Ok(Redundancy::Replicate { n });
        }
        if let Some(km) = t.strip_prefix("ec:") {
            let (k, m) = km.split_once('+').ok_or_else(|| err("missing '+' between K and M"))?;
            let (k, m) = (number(k, "K")?, number(m, "M")?);
            if !k.is_power_of_two() || k > MAX_DATA_FRAGMENTS {
                return Err(err("K must be a power of two that leaves fragments of at least 64 bytes"));
            }
            if m == 0 || k + m > MAX_FRAGMENTS {
                return Err(err("M out of range"));
            }
            return Ok(Redundancy::Ec { k, m });
        }
        Err(err("unknown scheme"))
    }
}

impl fmt::Display for Redundancy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Redundancy::None => write!(f, "none"),
            Redundancy::Replicate { n } => write!(f, "replicate:{n}"),
            Redundancy::Ec { k, m } => write!(f, "ec:{k}+{m}"),
        }
    }
}

impl serde::Serialize for Redundancy {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl Redundancy {
    pub fn is_none(self) -> bool {
        self == Redundancy::None
    }

    /// Slabs per chunk, on that many distinct servers: the stripe's width.
    pub fn width(self) -> usize {
        match self {
            Redundancy::None => 1,
            Redundancy::Replicate { n } => n,
            Redundancy::Ec { k, m } => k + m,
        }
    }

    /// Fragments (or copies) a read needs.
    pub fn needed(self) -> usize {
        match self {
            Redundancy::Ec { k, .. } => k,
            _ => 1,
        }
    }

    /// Servers the region may lose without losing a page.
    pub fn tolerated_losses(self) -> usize {
        self.width() - self.needed()
    }

    /// Bytes of one fragment: what each slab of the stripe stores per page.
    pub fn unit_bytes(self) -> usize {
        match self {
            Redundancy::Ec { k, .. } => PAGE_SIZE / k,
            _ => PAGE_SIZE,
        }
    }

    /// Remote bytes per byte of region.
    pub fn overhead(self) -> f64 {
        (self.width() * self.unit_bytes()) as f64 / PAGE_SIZE as f64
    }
}

/// Encodes pages into fragments and rebuilds them; one per thread (it keeps work buffers).
pub(crate) struct Coder {
    scheme: Redundancy,
    encoder: Option<ReedSolomonEncoder>,
    decoder: Option<ReedSolomonDecoder>,
}

impl fmt::Debug for Coder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Coder").field("scheme", &self.scheme).finish()
    }
}

impl Coder {
    pub fn new(scheme: Redundancy) -> Coder {
        Coder { scheme, encoder: None, decoder: None }
    }

    /// Writes the `width` fragments of `page` into `out` (`width × unit_bytes` bytes),
    /// fragment `i` at `i × unit_bytes`.
    pub fn encode(&mut self, page: &[u8], out: &mut [u8]) -> Result<(), CodingError> {
        let unit = self.scheme.unit_bytes();
        debug_assert_eq!((page.len(), out.len()), (PAGE_SIZE, self.scheme.width() * unit));
        match self.scheme {
            Redundancy::None | Redundancy::Replicate { .. } => {
                for copy in out.chunks_exact_mut(PAGE_SIZE) {
                    copy.copy_from_slice(page);
                }
                Ok(())
            }
            Redundancy::Ec { k, m } => {
                out[..PAGE_SIZE].copy_from_slice(page);
                let encoder = match &mut self.encoder {
                    Some(e) => e,
                    None => self.encoder.insert(ReedSolomonEncoder::new(k, m, unit)?),
                };
                for shard in page.chunks_exact(unit) {
                    encoder.add_original_shard(shard)?;
                }
                let result = encoder.encode()?;
                for (dst, parity) in out[PAGE_SIZE..].chunks_exact_mut(unit).zip(result.recovery_iter()) {
                    dst.copy_from_slice(parity);
                }
                Ok(())
            }
        }
    }

    /// Rebuilds the K data fragments of `n` pages that all have the same fragments at hand:
    /// `shards[i]` is fragment `i` of every page, concatenated (`n × unit` bytes), or empty
    /// when missing. Returns the K data shards, concatenated the same way.
    ///
    /// One decode serves the whole batch: the code works position by position in 64-byte
    /// blocks, so concatenated fragments decode as each page would alone, and a Leopard
    /// decode has a fixed cost (a transform over the whole field, ~0.2 ms) that a call per
    /// page would pay every time.
    pub fn decode_batch(&mut self, shards: &[Vec<u8>], n: usize) -> Result<Vec<Vec<u8>>, CodingError> {
        let Redundancy::Ec { k, m } = self.scheme else {
            return Err(CodingError::NotErasureCoded);
        };
        let bytes = n * self.scheme.unit_bytes();
        let have = shards.iter().filter(|s| !s.is_empty()).count();
        if have < k {
            return Err(CodingError::TooFewFragments { have, needed: k });
        }
        if shards[..k].iter().all(|s| !s.is_empty()) {
            return Ok(shards[..k].to_vec());
        }
        let decoder = match &mut self.decoder {
            Some(d) => {
                d.reset(k, m, bytes)?;
                d
            }
            None => self.decoder.insert(ReedSolomonDecoder::new(k, m, bytes)?),
        };
        for (i, s) in shards.iter().enumerate().filter(|(_, s)| !s.is_empty()) {
            if i < k {
                decoder.add_original_shard(i, s)?;
            } else {
                decoder.add_recovery_shard(i - k, s)?;
            }
        }
        let result = decoder.decode()?;
        (0..k)
            .map(|i| match shards[i].is_empty() {
                false => Ok(shards[i].clone()),
                true => result.restored_original(i).map(|r| r.to_vec()).ok_or(CodingError::NotRestored { index: i }),
            })
            .collect()
    }

    /// Rebuilds one page from the fragments at hand (the tests' reference for
    /// `decode_batch`) (`frags[i]` is fragment `i`, when read
    /// intact). Needs at least `needed()` of them.
    #[cfg(test)]
    pub fn decode(&mut self, frags: &[Option<&[u8]>], page: &mut [u8]) -> Result<(), CodingError> {
        let have = frags.iter().filter(|f| f.is_some()).count();
        if have < self.scheme.needed() {
            return Err(CodingError::TooFewFragments { have, needed: self.scheme.needed() });
        }
        let Redundancy::Ec { k, m } = self.scheme else {
            let copy = frags.iter().flatten().next().expect("at least one copy");
            page.copy_from_slice(copy);
            return Ok(());
        };
        let unit = self.scheme.unit_bytes();
        if frags[..k].iter().all(|f| f.is_some()) {
            for (dst, f) in page.chunks_exact_mut(unit).zip(frags.iter().flatten()) {
                dst.copy_from_slice(f);
            }
            return Ok(());
        }
        let decoder = match &mut self.decoder {
            Some(d) => {
                d.reset(k, m, unit)?;
                d
            }
            None => self.decoder.insert(ReedSolomonDecoder::new(k, m, unit)?),
        };
        for (i, f) in frags.iter().enumerate() {
            if let Some(f) = f {
                if i < k {
                    decoder.add_original_shard(i, f)?;
                } else {
                    decoder.add_recovery_shard(i - k, f)?;
                }
            }
        }
        let result = decoder.decode()?;
        for (i, dst) in page.chunks_exact_mut(unit).enumerate() {
            match frags[i] {
                Some(f) => dst.copy_from_slice(f),
                None => dst.copy_from_slice(result.restored_original(i).ok_or(CodingError::NotRestored { index: i })?),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_every_scheme() {
        for (s, r) in [
            ("none", Redundancy::None),
            ("replicate:2", Redundancy::Replicate { n: 2 }),
            ("ec:4+2", Redundancy::Ec { k: 4, m: 2 }),
            ("EC:8+3", Redundancy::Ec { k: 8, m: 3 }),
        ] {
            assert_eq!(s.parse::<Redundancy>().unwrap(), r);
            assert_eq!(r.to_string().parse::<Redundancy>().unwrap(), r);
        }
        let ec = Redundancy::Ec { k: 4, m: 2 };
        assert_eq!((ec.width(), ec.needed(), ec.tolerated_losses(), ec.unit_bytes()), (6, 4, 2, 1024));
        assert_eq!(ec.overhead(), 1.5);
        assert_eq!(Redundancy::Replicate { n: 3 }.tolerated_losses(), 2);
        for bad in ["", "raid5", "replicate:1", "replicate:x", "replicate:9", "ec:3+2", "ec:4", "ec:4+0", "ec:128+1"] {
            let e = bad.parse::<Redundancy>().unwrap_err().to_string();
            assert!(e.contains("expected none, replicate:N"), "{bad}: {e}");
        }
    }

    fn page(seed: u8) -> Vec<u8> {
        (0..PAGE_SIZE).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
    }

    #[test]
    fn any_k_of_k_plus_m_fragments_rebuild_the_page() {
        let scheme = Redundancy::Ec { k: 4, m: 2 };
        let mut coder = Coder::new(scheme);
        let p = page(7);
        let mut frags = vec![0u8; 6 * 1024];
        coder.encode(&p, &mut frags).unwrap();
        assert_eq!(&frags[..PAGE_SIZE], p.as_slice(), "systematic: data fragments are the page");
        let pieces: Vec<&[u8]> = frags.chunks_exact(1024).collect();
        // every pair of lost fragments
        for a in 0..6 {
            for b in a..6 {
                let have: Vec<Option<&[u8]>> =
                    (0..6).map(|i| if i == a || i == b { None } else { Some(pieces[i]) }).collect();
                let mut out = vec![0u8; PAGE_SIZE];
                coder.decode(&have, &mut out).unwrap();
                assert!(out == p, "lost {a} and {b}");
            }
        }
        let three_lost: Vec<Option<&[u8]>> = (0..6).map(|i| if i < 3 { None } else { Some(pieces[i]) }).collect();
        assert!(coder.decode(&three_lost, &mut vec![0u8; PAGE_SIZE]).is_err());
    }

    #[test]
    fn a_batch_of_pages_decodes_as_each_page_alone() {
        let scheme = Redundancy::Ec { k: 4, m: 2 };
        let mut coder = Coder::new(scheme);
        let n = 5;
        let pages: Vec<Vec<u8>> = (0..n).map(|i| page(i as u8 * 17 + 3)).collect();
        let mut frags = vec![vec![0u8; 6 * 1024]; n];
        for (p, f) in pages.iter().zip(frags.iter_mut()) {
            coder.encode(p, f).unwrap();
        }
        // Lose fragments 0 and 3 of every page; hand the rest over concatenated.
        let shards: Vec<Vec<u8>> = (0..6)
            .map(|i| {
                if i == 0 || i == 3 {
                    Vec::new()
                } else {
                    frags.iter().flat_map(|f| f[i * 1024..(i + 1) * 1024].to_vec()).collect()
                }
            })
            .collect();
        let data = coder.decode_batch(&shards, n).unwrap();
        for (j, p) in pages.iter().enumerate() {
            let rebuilt: Vec<u8> = data.iter().flat_map(|d| d[j * 1024..(j + 1) * 1024].to_vec()).collect();
            assert!(&rebuilt == p, "page {j} of the batch");
        }
        let too_few: Vec<Vec<u8>> = (0..6).map(|i| if i < 3 { Vec::new() } else { shards[i].clone() }).collect();
        assert!(coder.decode_batch(&too_few, n).is_err());
    }

    #[test]
    fn replicas_are_whole_copies() {
        let mut coder = Coder::new(Redundancy::Replicate { n: 3 });
        let p = page(1);
        let mut copies = vec![0u8; 3 * PAGE_SIZE];
        coder.encode(&p, &mut copies).unwrap();
        assert!(copies.chunks_exact(PAGE_SIZE).all(|c| c == p.as_slice()));
        let have = [None, None, Some(&copies[2 * PAGE_SIZE..])];
        let mut out = vec![0u8; PAGE_SIZE];
        coder.decode(&have, &mut out).unwrap();
        assert!(out == p);
        assert!(coder.decode(&[None, None, None], &mut out).is_err());
    }
}
