//! On-disk encodings: write-ahead log records and snapshots. Little-endian throughout.
//!
//! A log record is `len: u32 | crc: u32 | payload[len] | len: u32 | !len: u32`, `crc` being
//! the CRC-32C of the four `len` bytes followed by the payload; the trailer (the length and
//! its complement) marks where a whole record ends, so a record damaged after it was written
//! is told from one a crash cut short. The payload of a committed write is
//! `kind = 1: u8 | revision: u64 | n: u32 | op * n`, an op being
//! `1: u8 | key_len: u32 | key | value_len: u32 | value | lease: u64 (0 = none)` (put) or
//! `2: u8 | key_len: u32 | key` (delete). The log's first record is its *base*,
//! `kind = 3: u8 | revision: u64`: the revision of the snapshot it continues, so a missing
//! snapshot or a log emptied behind the store's back is noticed.
//!
//! The log file is preallocated: its size is always a multiple of [`LOG_STEP_BYTES`], and at
//! least one all-zero header follows the last record. A log cut short anywhere (at a record's
//! end included) therefore shows, and a crash never changes its size, only fills zeros.
//!
//! Logs written before trailers (*legacy*, base kind 2 or no base) have neither trailers nor
//! preallocation; they are read with the older rules and rewritten at open.
//!
//! A snapshot is `MAGIC | revision: u64 | count: u64 | entry * count | crc: u32`, an entry
//! being `key_len: u32 | key | value_len: u32 | value | mod_revision: u64`, `crc` the CRC-32C
//! of everything before it.

use krak_meta::{MetaError, Op, MAX_KEY_BYTES, MAX_TXN_OPS, MAX_VALUE_BYTES};

pub const SNAPSHOT_MAGIC: &[u8; 16] = b"krak-meta-snap2\n";
/// A snapshot written before logs began with a base record (read, but the log it goes
/// with may be empty).
pub const LEGACY_SNAPSHOT_MAGIC: &[u8; 16] = b"krak-meta-snap1\n";
pub const RECORD_HEADER: usize = 8;
pub const RECORD_TRAILER: usize = 8;
/// The log file grows in steps of this size (zero-filled), its size always a multiple.
pub const LOG_STEP_BYTES: u64 = 32 << 10;
const KIND_TXN: u8 = 1;
/// Base of a legacy log (no trailers, no preallocation).
const KIND_BASE_LEGACY: u8 = 2;
const KIND_BASE: u8 = 3;
const OP_PUT: u8 = 1;
const OP_DELETE: u8 = 2;

/// Largest payload a valid record can have: a full transaction of the largest ops.
pub const MAX_RECORD_PAYLOAD: usize = 1 + 8 + 4 + MAX_TXN_OPS * (1 + 4 + MAX_KEY_BYTES + 4 + MAX_VALUE_BYTES + 8);

/// One committed write as the log holds it.
#[derive(Debug, PartialEq, Eq)]
pub struct Record {
    pub revision: u64,
    pub ops: Vec<Op>,
}

/// The full record (header, payload, trailer) of a write at `revision`.
pub fn encode_record(revision: u64, ops: &[Op]) -> Vec<u8> {
    frame(encode_unframed(revision, ops))
}

/// A record of a write at `revision` as legacy logs held it: header and payload.
pub(crate) fn encode_unframed(revision: u64, ops: &[Op]) -> Vec<u8> {
    let mut p = Vec::with_capacity(
        RECORD_HEADER
            + 13
            + ops
                .iter()
                .map(|op| match op {
                    Op::Put { key, value, .. } => 17 + key.len() + value.len(),
                    Op::Delete { key } => 5 + key.len(),
                })
                .sum::<usize>(),
    );
    p.extend_from_slice(&[0; RECORD_HEADER]);
    p.push(KIND_TXN);
    p.extend_from_slice(&revision.to_le_bytes());
    p.extend_from_slice(&(ops.len() as u32).to_le_bytes());
    for op in ops {
        match op {
            Op::Put { key, value, lease } => {
                p.push(OP_PUT);
                put_bytes(&mut p, key.as_bytes());
                put_bytes(&mut p, value);
                p.extend_from_slice(&lease.map_or(0, |l| l.0).to_le_bytes());
            }
            Op::Delete { key } => {
                p.push(OP_DELETE);
                put_bytes(&mut p, key.as_bytes());
            }
        }
    }
    seal(p)
}

/// The base record of a log continuing the snapshot at `revision`.
pub fn encode_base(revision: u64) -> Vec<u8> {
    frame(encode_base_of_kind(KIND_BASE, revision))
}

/// The base record of a legacy log (tests build such logs).
#[cfg(test)]
pub fn encode_legacy_base(revision: u64) -> Vec<u8> {
    encode_base_of_kind(KIND_BASE_LEGACY, revision)
}

fn encode_base_of_kind(kind: u8, revision: u64) -> Vec<u8> {
    let mut p = vec![0; RECORD_HEADER];
    p.push(kind);
    p.extend_from_slice(&revision.to_le_bytes());
    seal(p)
}

/// If a record's payload is a base record: the snapshot revision it names, and whether it
/// begins a framed (trailers, preallocated) log.
pub fn decode_base(payload: &[u8]) -> Option<(u64, bool)> {
    match payload {
        [kind @ (KIND_BASE | KIND_BASE_LEGACY), rev @ ..] => {
            Some((u64::from_le_bytes(rev.try_into().ok()?), *kind == KIND_BASE))
        }
        _ => None,
    }
}

/// Appends the trailer to a sealed record (header and payload).
fn frame(mut record: Vec<u8>) -> Vec<u8> {
    let t = trailer(record.len() - RECORD_HEADER);
    record.extend_from_slice(&t);
    record
}

/// The trailer of a record whose payload is `len` bytes.
pub fn trailer(len: usize) -> [u8; RECORD_TRAILER] {
    let len = len as u32;
    let mut t = [0; RECORD_TRAILER];
    t[..4].copy_from_slice(&len.to_le_bytes());
    t[4..].copy_from_slice(&(!len).to_le_bytes());
    t
}

/// Fills in the header (length and CRC) of a record whose payload follows it.
fn seal(mut p: Vec<u8>) -> Vec<u8> {
    let len = (p.len() - RECORD_HEADER) as u32;
    p[0..4].copy_from_slice(&len.to_le_bytes());
    let crc = crc32c::crc32c_append(crc32c::crc32c(&len.to_le_bytes()), &p[RECORD_HEADER..]);
    p[4..8].copy_from_slice(&crc.to_le_bytes());
    p
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u32).to_le_bytes());
    out.extend_from_slice(b);
}

/// The header of a record: payload length and CRC.
pub fn decode_header(h: &[u8; RECORD_HEADER]) -> (usize, u32) {
    let len = u32::from_le_bytes([h[0], h[1], h[2], h[3]]) as usize;
    let crc = u32::from_le_bytes([h[4], h[5], h[6], h[7]]);
    (len, crc)
}

/// Whether `payload` matches the CRC of its header.
pub fn crc_matches(len: usize, crc: u32, payload: &[u8]) -> bool {
    crc32c::crc32c_append(crc32c::crc32c(&(len as u32).to_le_bytes()), payload) == crc
}

/// Why a log record (or a piece of a snapshot) does not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("{wanted} bytes wanted at offset {at}, {left} left")]
    Short { wanted: usize, at: usize, left: usize },
    #[error("length {len} at offset {at} exceeds {max}")]
    TooLong { len: usize, at: usize, max: usize },
    #[error("key before offset {at} is not UTF-8: {source}")]
    KeyNotUtf8 {
        at: usize,
        #[source]
        source: std::string::FromUtf8Error,
    },
    #[error("unknown record kind {0}")]
    UnknownKind(u8),
    #[error("record of {n} ops, more than {MAX_TXN_OPS}")]
    TooManyOps { n: usize },
    #[error("unknown op tag {0}")]
    UnknownOp(u8),
    #[error("{bytes} trailing bytes after the ops")]
    Trailing { bytes: usize },
    #[error("short header")]
    ShortHeader,
    #[error("short payload")]
    ShortPayload,
    #[error("CRC mismatch")]
    CrcMismatch,
}

/// A reader over a byte slice that fails instead of panicking.
pub struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Cursor { buf, pos: 0 }
    }
    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }
    pub fn take(&mut self, n: usize) -> Result<&'a [u8], RecordError> {
        if self.remaining() < n {
            return Err(RecordError::Short { wanted: n, at: self.pos, left: self.remaining() });
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    pub fn u8(&mut self) -> Result<u8, RecordError> {
        Ok(self.take(1)?[0])
    }
    pub fn u32(&mut self) -> Result<u32, RecordError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    pub fn u64(&mut self) -> Result<u64, RecordError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }
    /// A length-prefixed byte string of at most `max` bytes.
    pub fn bytes(&mut self, max: usize) -> Result<&'a [u8], RecordError> {
        let n = self.u32()? as usize;
        if n > max {
            return Err(RecordError::TooLong { len: n, at: self.pos, max });
        }
        self.take(n)
    }
    pub fn key(&mut self) -> Result<String, RecordError> {
        let b = self.bytes(MAX_KEY_BYTES)?;
        String::from_utf8(b.to_vec()).map_err(|source| RecordError::KeyNotUtf8 { at: self.pos, source })
    }
}

/// Decodes a record's payload (its CRC already checked).
pub fn decode_payload(payload: &[u8]) -> Result<Record, RecordError> {
    let mut c = Cursor::new(payload);
    let kind = c.u8()?;
    if kind != KIND_TXN {
        return Err(RecordError::UnknownKind(kind));
    }
    let revision = c.u64()?;
    let n = c.u32()? as usize;
    if n > MAX_TXN_OPS {
        return Err(RecordError::TooManyOps { n });
    }
    let mut ops = Vec::with_capacity(n);
    for _ in 0..n {
        match c.u8()? {
            OP_PUT => {
                let key = c.key()?;
                let value = c.bytes(MAX_VALUE_BYTES)?.to_vec();
                let lease = c.u64()?;
                ops.push(Op::Put { key, value, lease: (lease != 0).then_some(krak_meta::LeaseId(lease)) });
            }
            OP_DELETE => ops.push(Op::Delete { key: c.key()? }),
            t => return Err(RecordError::UnknownOp(t)),
        }
    }
    if c.remaining() != 0 {
        return Err(RecordError::Trailing { bytes: c.remaining() });
    }
    Ok(Record { revision, ops })
}

/// One entry of a snapshot.
pub struct SnapEntry<'a> {
    pub key: &'a str,
    pub value: &'a [u8],
    pub mod_revision: u64,
}

/// Encodes a snapshot into `out`, returning the number of bytes.
pub fn write_snapshot<'a, W: std::io::Write>(
    out: &mut W,
    revision: u64,
    count: u64,
    entries: impl Iterator<Item = SnapEntry<'a>>,
) -> std::io::Result<u64> {
    let mut crc = 0u32;
    let mut n = 0u64;
    let mut w = |b: &[u8]| -> std::io::Result<()> {
        crc = crc32c::crc32c_append(crc, b);
        n += b.len() as u64;
        out.write_all(b)
    };
    w(SNAPSHOT_MAGIC)?;
    w(&revision.to_le_bytes())?;
    w(&count.to_le_bytes())?;
    let mut written = 0u64;
    for e in entries {
        w(&(e.key.len() as u32).to_le_bytes())?;
        w(e.key.as_bytes())?;
        w(&(e.value.len() as u32).to_le_bytes())?;
        w(e.value)?;
        w(&e.mod_revision.to_le_bytes())?;
        written += 1;
    }
    if written != count {
        return Err(std::io::Error::other(format!("snapshot of {written} entries, {count} announced")));
    }
    let c = crc;
    out.write_all(&c.to_le_bytes())?;
    Ok(n + 4)
}

/// Whether a snapshot file was written before logs had a base record.
pub fn snapshot_is_legacy(buf: &[u8]) -> bool {
    buf.get(..LEGACY_SNAPSHOT_MAGIC.len()) == Some(&LEGACY_SNAPSHOT_MAGIC[..])
}

/// A decoded snapshot: revision and entries `(key, value, mod_revision)` in key order.
pub type Snapshot = (u64, Vec<(String, Vec<u8>, u64)>);

/// Decodes a whole snapshot file; any inconsistency is [`MetaError::Corrupt`] (a snapshot
/// is fsynced before it is renamed into place, so it is never torn).
pub fn read_snapshot(buf: &[u8]) -> Result<Snapshot, MetaError> {
    let corrupt = |m: String| MetaError::corrupt(format!("snapshot: {m}"));
    let unreadable = |e: RecordError| MetaError::corrupt_by("snapshot", e);
    let magic = buf.get(..SNAPSHOT_MAGIC.len());
    if buf.len() < SNAPSHOT_MAGIC.len() + 20
        || (magic != Some(&SNAPSHOT_MAGIC[..]) && magic != Some(&LEGACY_SNAPSHOT_MAGIC[..]))
    {
        return Err(corrupt("bad magic or too short".into()));
    }
    let (body, tail) = buf.split_at(buf.len() - 4);
    let want = u32::from_le_bytes([tail[0], tail[1], tail[2], tail[3]]);
    if crc32c::crc32c(body) != want {
        return Err(corrupt("CRC mismatch".into()));
    }
    let mut c = Cursor::new(&body[SNAPSHOT_MAGIC.len()..]);
    let revision = c.u64().map_err(unreadable)?;
    let count = c.u64().map_err(unreadable)?;
    // Each entry takes at least 17 bytes: bounds the allocation by the file size.
    if count > (c.remaining() / 17) as u64 {
        return Err(corrupt(format!("{count} entries announced in {} bytes", c.remaining())));
    }
    let mut entries = Vec::with_capacity(count as usize);
    let mut prev: Option<String> = None;
    for _ in 0..count {
        let key = c.key().map_err(unreadable)?;
        let value = c.bytes(MAX_VALUE_BYTES).map_err(unreadable)?.to_vec();
        let rev = c.u64().map_err(unreadable)?;
        if rev == 0 || rev > revision {
            return Err(corrupt(format!("key {key:?} at revision {rev}, snapshot at {revision}")));
        }
        if prev.as_ref().is_some_and(|p| *p >= key) {
            return Err(corrupt(format!("key {key:?} out of order")));
        }
        prev = Some(key.clone());
        entries.push((key, value, rev));
    }
    if c.remaining() != 0 {
        return Err(corrupt(format!("{} trailing bytes", c.remaining())));
    }
    Ok((revision, entries))
}

#[cfg(test)]
mod tests {
    use super::*;
    use krak_meta::LeaseId;

    #[test]
    fn record_round_trip_and_crc() {
        let ops = vec![
            Op::Put { key: "/a".into(), value: b"xyz".to_vec(), lease: None },
            Op::Put { key: "/b".into(), value: vec![], lease: Some(LeaseId(7)) },
            Op::Delete { key: "/c".into() },
        ];
        let rec = encode_unframed(42, &ops);
        let framed = encode_record(42, &ops);
        assert_eq!(framed[..rec.len()], rec[..]);
        assert_eq!(framed[rec.len()..], trailer(rec.len() - RECORD_HEADER));
        let mut h = [0u8; RECORD_HEADER];
        h.copy_from_slice(&rec[..RECORD_HEADER]);
        let (len, crc) = decode_header(&h);
        assert_eq!(len, rec.len() - RECORD_HEADER);
        assert!(crc_matches(len, crc, &rec[RECORD_HEADER..]));
        assert_eq!(decode_payload(&rec[RECORD_HEADER..]).unwrap(), Record { revision: 42, ops });
        // Any flipped bit is caught by the CRC.
        for i in RECORD_HEADER..rec.len() {
            let mut bad = rec.clone();
            bad[i] ^= 0x10;
            assert!(!crc_matches(len, crc, &bad[RECORD_HEADER..]), "flip at {i} not caught");
        }
        // Truncated or garbage payloads fail to decode without panicking.
        for cut in 0..rec.len() - RECORD_HEADER {
            assert!(decode_payload(&rec[RECORD_HEADER..RECORD_HEADER + cut]).is_err());
        }
        assert!(decode_payload(&[1, 0, 0, 0, 0, 0, 0, 0, 0, 255, 255, 255, 255]).is_err());
    }

    #[test]
    fn snapshot_round_trip_and_damage() {
        let entries = [("/a".to_string(), b"1".to_vec(), 3u64), ("/b".to_string(), vec![0u8; 100], 9)];
        let mut buf = Vec::new();
        let n = write_snapshot(
            &mut buf,
            10,
            2,
            entries.iter().map(|(k, v, r)| SnapEntry { key: k, value: v, mod_revision: *r }),
        )
        .unwrap();
        assert_eq!(n as usize, buf.len());
        let (rev, got) = read_snapshot(&buf).unwrap();
        assert_eq!(rev, 10);
        assert_eq!(got, entries.to_vec());
        for i in 0..buf.len() {
            let mut bad = buf.clone();
            bad[i] ^= 1;
            assert!(matches!(read_snapshot(&bad), Err(MetaError::Corrupt { .. })), "flip at {i}");
        }
        for cut in 0..buf.len() {
            assert!(read_snapshot(&buf[..cut]).is_err());
        }
    }
}
