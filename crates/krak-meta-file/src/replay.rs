//! Reading the log back at open: replaying its records over the snapshot, telling a write a
//! crash cut short (cut off) from damage (refused), and checking that the log's base record
//! fits the snapshot.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;

use krak_meta::MetaError;

use crate::codec::{self, RecordError, RECORD_HEADER};
use crate::{apply_to_map, Entry, FileStoreOptions, Recovery};

/// Replays the log from the start; returns the length of its valid prefix.
/// `base` receives the revision the log's base record names (if it has one).
pub(crate) fn replay(
    wal: &mut File,
    len: u64,
    opts: &FileStoreOptions,
    map: &mut BTreeMap<String, Entry>,
    revision: &mut u64,
    rec: &mut Recovery,
    base: &mut Option<u64>,
) -> Result<u64, MetaError> {
    let mut r = BufReader::with_capacity(1 << 20, &mut *wal);
    let mut pos = 0u64;
    let mut payload = Vec::new();
    let snapshot_rev = *revision;
    let mut last_rev = 0u64;
    loop {
        if pos == len {
            return Ok(pos);
        }
        let mut h = [0u8; RECORD_HEADER];
        if len - pos < RECORD_HEADER as u64 {
            return Ok(pos); // torn header
        }
        r.read_exact(&mut h).map_err(|e| MetaError::unavailable_by("read log", e))?;
        let (plen, crc) = codec::decode_header(&h);
        // `zero`: every byte of the damaged record read so far is zero.
        let bad = |why: RecordError, r: &mut BufReader<&mut File>, read: u64, zero: bool| -> Result<u64, MetaError> {
            // A crash leaves at most one unfinished record, at the very end: cut short (seen
            // below), or zero-filled (the file grew, its data never reached the disk). A
            // whole record that fails its check at the end may be an acknowledged write a
            // disk damaged: refused unless the operator says it was a crash. Damage with more
            // data after it is never a crash's doing.
            let end = pos + RECORD_HEADER as u64 + plen as u64;
            let one_record = len - pos <= (RECORD_HEADER + codec::MAX_RECORD_PAYLOAD) as u64;
            let follows = valid_record_follows(r.get_ref(), pos + 1, len, last_rev)?;
            let rest_zero = rest_is_zero(r, pos + read, len)?;
            if follows {
                Err(MetaError::corrupt_by(format!("log record at offset {pos}, followed by whole records"), why))
            } else if zero && rest_zero {
                Ok(pos)
            } else if (one_record && end >= len) || rest_zero {
                if opts.cut_damaged_tail {
                    return Ok(pos);
                }
                Err(MetaError::corrupt_by(
                    format!(
                        "the last log record (offset {pos}, {} bytes) is whole but damaged: a disk error, or a \
                         write torn by a crash; nothing was changed. If the controller crashed while writing, \
                         open once with the damaged record cut off (krak controller --store-cut-damaged-tail: \
                         that write was never acknowledged); otherwise restore the store from a backup",
                        len - pos
                    ),
                    why,
                ))
            } else {
                Err(MetaError::corrupt_by(format!("log record at offset {pos}, followed by more data"), why))
            }
        };
        if plen == 0 || plen > codec::MAX_RECORD_PAYLOAD {
            return bad(
                RecordError::TooLong { len: plen, at: pos as usize, max: codec::MAX_RECORD_PAYLOAD },
                &mut r,
                RECORD_HEADER as u64,
                h.iter().all(|&b| b == 0),
            );
        }
        if pos + RECORD_HEADER as u64 + plen as u64 > len {
            // Cut short, unless its length was damaged: a write a crash cut short is the
            // last, so no whole record can follow it.
            if valid_record_follows(r.get_ref(), pos + 1, len, last_rev)? {
                return Err(MetaError::corrupt(format!(
                    "log record at offset {pos} claims {plen} bytes, past the end of the log, yet whole records \
                     follow it: its length is damaged (restore the store from a backup)"
                )));
            }
            return Ok(pos);
        }
        payload.resize(plen, 0);
        r.read_exact(&mut payload).map_err(|e| MetaError::unavailable_by("read log", e))?;
        let read = (RECORD_HEADER + plen) as u64;
        let zero = h.iter().chain(&payload).all(|&b| b == 0);
        if !codec::crc_matches(plen, crc, &payload) {
            return bad(RecordError::CrcMismatch, &mut r, read, zero);
        }
        if let Some(b) = codec::decode_base(&payload) {
            if pos != 0 {
                return Err(MetaError::corrupt(format!("log record at offset {pos}: a base record after the first")));
            }
            *base = Some(b);
            last_rev = b;
            pos += read;
            continue;
        }
        let record = match codec::decode_payload(&payload) {
            Ok(rec) => rec,
            Err(e) => return bad(e, &mut r, read, zero),
        };
        if record.revision <= last_rev {
            return Err(MetaError::corrupt(format!(
                "log record at offset {pos}: revision {} after {last_rev}",
                record.revision
            )));
        }
        last_rev = record.revision;
        if record.revision <= snapshot_rev {
            rec.wal_records_skipped += 1;
        } else {
            for op in &record.ops {
                apply_to_map(map, op, record.revision);
            }
            *revision = record.revision;
            rec.wal_records += 1;
        }
        pos += read;
    }
}

/// Refuses a log whose base record does not fit the snapshot: `snapshot` is its (revision,
/// legacy format) if there is one, `base` the revision the log's base record names, `good`
/// the log's valid length.
pub(crate) fn check_base(
    dir: &Path,
    snapshot: Option<(u64, bool)>,
    base: Option<u64>,
    good: u64,
) -> Result<(), MetaError> {
    let how = "nothing was changed; restore the store directory from a backup, or move it away to start an empty rack";
    match (snapshot, base) {
        (Some((rev, false)), None) if good == 0 => Err(MetaError::corrupt(format!(
            "store {}: the log is empty or missing but the snapshot holds revision {rev}: the log was deleted or \
             emptied ({how})",
            dir.display()
        ))),
        (None, Some(b)) if b > 0 => Err(MetaError::corrupt(format!(
            "store {}: the snapshot is missing, but the log continues the snapshot at revision {b} ({how})",
            dir.display()
        ))),
        (Some((rev, _)), Some(b)) if rev < b => Err(MetaError::corrupt(format!(
            "store {}: the snapshot holds revision {rev}, older than the revision {b} the log continues: it was \
             replaced by an older one ({how})",
            dir.display()
        ))),
        _ => Ok(()),
    }
}

/// Whether a whole, valid log record of a revision above `after_rev` starts anywhere in
/// the log between `from` and `len`: what tells a damaged length from a write cut short
/// (only the last write can be cut short). Reads that stretch once; cheap checks (kind,
/// revision, length) before any CRC.
fn valid_record_follows(wal: &File, from: u64, len: u64, after_rev: u64) -> Result<bool, MetaError> {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0u8; len.saturating_sub(from) as usize];
    wal.read_exact_at(&mut buf, from).map_err(|e| MetaError::unavailable_by("read log", e))?;
    let min_payload = 1 + 8 + 4;
    for off in 0..buf.len().saturating_sub(RECORD_HEADER + min_payload) + 1 {
        let Some(head) = buf.get(off..off + RECORD_HEADER) else { break };
        let (plen, crc) = codec::decode_header(head.try_into().expect("a header's length"));
        let Some(payload) = buf.get(off + RECORD_HEADER..off + RECORD_HEADER + plen) else { continue };
        if plen < min_payload || payload[0] != 1 {
            continue;
        }
        let rev = u64::from_le_bytes(payload[1..9].try_into().expect("8 bytes"));
        if rev > after_rev && codec::crc_matches(plen, crc, payload) {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Whether every byte from `from` to `len` is zero.
fn rest_is_zero(r: &mut BufReader<&mut File>, from: u64, len: u64) -> Result<bool, MetaError> {
    let mut left = len.saturating_sub(from);
    let mut buf = vec![0u8; 64 << 10];
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        r.read_exact(&mut buf[..n]).map_err(|e| MetaError::unavailable_by("read log", e))?;
        if buf[..n].iter().any(|&b| b != 0) {
            return Ok(false);
        }
        left -= n as u64;
    }
    Ok(true)
}
