//! A stored value: `[crc32c u32][mod_revision u64][lease u64][bytes]`, little-endian. redb
//! checks its pages at open; the CRC also catches a value damaged while the store is open.

use krak_meta::MetaError;

const HEAD: usize = 4 + 8 + 8;

/// One key's stored state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Record {
    pub(crate) mod_revision: u64,
    /// 0: no lease.
    pub(crate) lease: u64,
    pub(crate) value: Vec<u8>,
}

pub(crate) fn encode(mod_revision: u64, lease: u64, value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEAD + value.len());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&mod_revision.to_le_bytes());
    out.extend_from_slice(&lease.to_le_bytes());
    out.extend_from_slice(value);
    let crc = crc32c::crc32c(&out[4..]);
    out[..4].copy_from_slice(&crc.to_le_bytes());
    out
}

/// Decodes the record of `key`; a short or damaged one is [`MetaError::Corrupt`].
pub(crate) fn decode(key: &str, data: &[u8]) -> Result<Record, MetaError> {
    let bad = |why: &str| MetaError::corrupt(format!("the stored value of {key:?} {why}"));
    let (crc, rest) = data.split_first_chunk::<4>().ok_or_else(|| bad("is shorter than its header"))?;
    if crc32c::crc32c(rest) != u32::from_le_bytes(*crc) {
        return Err(bad("fails its checksum"));
    }
    let (rev, rest) = rest.split_first_chunk::<8>().ok_or_else(|| bad("is shorter than its header"))?;
    let (lease, value) = rest.split_first_chunk::<8>().ok_or_else(|| bad("is shorter than its header"))?;
    let mod_revision = u64::from_le_bytes(*rev);
    if mod_revision == 0 {
        return Err(bad("has revision 0"));
    }
    Ok(Record { mod_revision, lease: u64::from_le_bytes(*lease), value: value.to_vec() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_every_flipped_bit_is_caught() {
        let data = encode(7, 3, b"hello");
        assert_eq!(decode("k", &data).unwrap(), Record { mod_revision: 7, lease: 3, value: b"hello".to_vec() });
        for i in 0..data.len() * 8 {
            let mut d = data.clone();
            d[i / 8] ^= 1 << (i % 8);
            assert!(matches!(decode("k", &d), Err(MetaError::Corrupt { .. })), "bit {i} not caught");
        }
        for n in 0..HEAD {
            assert!(decode("k", &data[..n]).is_err(), "a record cut to {n} bytes must be refused");
        }
    }
}
