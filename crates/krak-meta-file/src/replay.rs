//! Reading the log back at open: replaying its records over the snapshot, telling a write a
//! crash tore (cut off) from damage or a file cut short (refused), and checking that the
//! log's base record fits the snapshot.
//!
//! A framed log (see `codec`) makes the difference visible: a crash never changes the file's
//! size (it grows in zero-filled steps before records are written into it), and a whole
//! record ends with a trailer. So a record that fails its check is a torn write only if its
//! header came through, nothing came through after its claimed end, and no trailer of its
//! own is there; anything else is damage, named, and nothing is cut unless the operator
//! says the store crashed ([`FileStoreOptions::cut_damaged_tail`]).

use std::collections::BTreeMap;
use std::path::Path;

use krak_meta::MetaError;

use crate::codec::{self, RecordError, LOG_STEP_BYTES, MAX_RECORD_PAYLOAD, RECORD_HEADER, RECORD_TRAILER};
use crate::{apply_to_map, Entry, FileStoreOptions, Recovery};

const HOW: &str = "nothing was changed; restore the store directory from a backup";

/// What replaying a log found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Replayed {
    /// Length of the log's valid prefix (its whole records, the base record included).
    pub good: u64,
    /// Bytes of a torn write (or of a damaged last record cut as asked) left out.
    pub torn: u64,
    /// The revision the log's base record names, if it has one.
    pub base: Option<u64>,
}

/// Replays `log` (the whole log file) over the snapshot's state in `map` and `revision`.
pub(crate) fn replay(
    log: &[u8],
    opts: &FileStoreOptions,
    map: &mut BTreeMap<String, Entry>,
    revision: &mut u64,
    rec: &mut Recovery,
) -> Result<Replayed, MetaError> {
    let framed = starts_framed(log);
    let snapshot_rev = *revision;
    let mut a = Apply { map, revision, rec, snapshot_rev, last_rev: 0, base: None, framed };
    let (good, torn) = if framed { replay_framed(log, opts, &mut a)? } else { replay_legacy(log, opts, &mut a)? };
    Ok(Replayed { good: good as u64, torn: torn as u64, base: a.base })
}

/// Whether the log begins with a whole base record of a framed log.
fn starts_framed(log: &[u8]) -> bool {
    let Some((h, rest)) = log.split_first_chunk::<RECORD_HEADER>() else { return false };
    let (plen, crc) = codec::decode_header(h);
    rest.get(..plen)
        .is_some_and(|p| codec::crc_matches(plen, crc, p) && matches!(codec::decode_base(p), Some((_, true))))
}

/// The state being rebuilt, and what the records read so far said.
struct Apply<'a> {
    map: &'a mut BTreeMap<String, Entry>,
    revision: &'a mut u64,
    rec: &'a mut Recovery,
    snapshot_rev: u64,
    /// Revision of the last record read (the base's at first): revisions only grow.
    last_rev: u64,
    base: Option<u64>,
    framed: bool,
}

impl Apply<'_> {
    /// Applies the record at `pos`, whose CRC matched; `Ok(Err(_))`: its payload does not
    /// decode.
    fn record(&mut self, pos: usize, payload: &[u8]) -> Result<Result<(), RecordError>, MetaError> {
        if let Some((b, framed)) = codec::decode_base(payload) {
            if pos != 0 || framed != self.framed {
                return Err(MetaError::corrupt(format!("log record at offset {pos}: a base record out of place")));
            }
            self.base = Some(b);
            self.last_rev = b;
            return Ok(Ok(()));
        }
        let record = match codec::decode_payload(payload) {
            Ok(r) => r,
            Err(e) => return Ok(Err(e)),
        };
        if record.revision <= self.last_rev {
            return Err(MetaError::corrupt(format!(
                "log record at offset {pos}: revision {} after {}",
                record.revision, self.last_rev
            )));
        }
        self.last_rev = record.revision;
        if record.revision <= self.snapshot_rev {
            self.rec.wal_records_skipped += 1;
        } else {
            for op in &record.ops {
                apply_to_map(self.map, op, record.revision);
            }
            *self.revision = record.revision;
            self.rec.wal_records += 1;
        }
        Ok(Ok(()))
    }
}

/// A framed log: returns (valid length, torn bytes).
fn replay_framed(log: &[u8], opts: &FileStoreOptions, a: &mut Apply<'_>) -> Result<(usize, usize), MetaError> {
    let len = log.len();
    if !(len as u64).is_multiple_of(LOG_STEP_BYTES) {
        return Err(MetaError::corrupt(format!(
            "the log is {len} bytes, not a multiple of {LOG_STEP_BYTES}: it was cut short or extended behind the \
             store's back ({HOW})"
        )));
    }
    let mut pos = 0;
    loop {
        let Some(h) = log.get(pos..pos + RECORD_HEADER) else {
            return Err(MetaError::corrupt(format!(
                "the log ends at offset {pos} without the end marker the store always leaves after its last \
                 record: it was cut short ({HOW})"
            )));
        };
        if h.iter().all(|&b| b == 0) {
            if log[pos..].iter().all(|&b| b == 0) {
                return Ok((pos, 0));
            }
            return damaged(log, pos, opts, a.last_rev);
        }
        let (plen, crc) = codec::decode_header(h.try_into().expect("a header's length"));
        let end = pos + RECORD_HEADER + plen;
        let whole = plen > 0
            && plen <= MAX_RECORD_PAYLOAD
            && end + RECORD_TRAILER <= len
            && codec::crc_matches(plen, crc, &log[pos + RECORD_HEADER..end]);
        if !whole {
            return damaged(log, pos, opts, a.last_rev);
        }
        // A record whose CRC matches was written so: no crash's doing.
        if let Err(e) = a.record(pos, &log[pos + RECORD_HEADER..end])? {
            return Err(MetaError::corrupt_by(format!("log record at offset {pos} does not decode ({HOW})"), e));
        }
        pos = end + RECORD_TRAILER;
    }
}

/// The record at `pos` of a framed log is not whole (its header is there): a torn write, cut
/// off, or damage, refused (cut only if asked and nothing whole follows).
fn damaged(log: &[u8], pos: usize, opts: &FileStoreOptions, last_rev: u64) -> Result<(usize, usize), MetaError> {
    if valid_record_follows(&log[pos + 1..], last_rev) {
        return Err(MetaError::corrupt(format!(
            "log record at offset {pos} is damaged, yet whole records follow it ({HOW})"
        )));
    }
    let rest = &log[pos..];
    let written = rest.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
    let (plen, _) = codec::decode_header(rest[..RECORD_HEADER].try_into().expect("a header's length"));
    let claimed = RECORD_HEADER + plen + RECORD_TRAILER;
    let whole = has_trailer(rest);
    // The writer leaves a zero header after every record, so a torn one ends before that.
    let torn = plen > 0 && plen <= MAX_RECORD_PAYLOAD && claimed + RECORD_HEADER <= rest.len() && written <= claimed;
    if (torn && !whole) || opts.cut_damaged_tail {
        return Ok((pos, written));
    }
    let what = if whole { "is whole but damaged" } else { "is damaged or cut short" };
    Err(MetaError::corrupt(format!(
        "the last log record (offset {pos}, {written} bytes) {what}: a disk error, a truncated file, or a write torn \
         by a crash; nothing was changed. If the controller's machine crashed while writing, open once with the \
         damaged record cut off (krak controller --store-cut-damaged-tail: that write was never acknowledged); \
         otherwise restore the store from a backup"
    )))
}

/// Whether a trailer that fits a record starting at `rec[0]` is anywhere in `rec`: the
/// record was written whole (a torn write has none: its end never came through).
fn has_trailer(rec: &[u8]) -> bool {
    let most = rec.len().saturating_sub(RECORD_HEADER + RECORD_TRAILER).min(MAX_RECORD_PAYLOAD);
    (1..=most).any(|plen| {
        let at = RECORD_HEADER + plen;
        rec[at..at + RECORD_TRAILER] == codec::trailer(plen)
    })
}

/// A legacy log (no trailers, not preallocated): returns (valid length, torn bytes).
fn replay_legacy(log: &[u8], opts: &FileStoreOptions, a: &mut Apply<'_>) -> Result<(usize, usize), MetaError> {
    let len = log.len();
    let mut pos = 0;
    loop {
        let Some(h) = log.get(pos..pos + RECORD_HEADER) else {
            return Ok((pos, len - pos)); // the end, or a torn header
        };
        let (plen, crc) = codec::decode_header(h.try_into().expect("a header's length"));
        let last_rev = a.last_rev;
        // `zero`: every byte of the damaged record read so far is zero.
        let bad = |why: RecordError, read: usize, zero: bool| -> Result<(usize, usize), MetaError> {
            // A crash leaves at most one unfinished record, at the very end: cut short (seen
            // below), or zero-filled (the file grew, its data never reached the disk). A
            // whole record that fails its check at the end may be an acknowledged write a
            // disk damaged: refused unless the operator says it was a crash. Damage with more
            // data after it is never a crash's doing.
            let end = pos + RECORD_HEADER + plen;
            let one_record = len - pos <= RECORD_HEADER + MAX_RECORD_PAYLOAD;
            let rest_zero = log[pos + read..].iter().all(|&b| b == 0);
            if valid_record_follows(&log[pos + 1..], last_rev) {
                Err(MetaError::corrupt_by(format!("log record at offset {pos}, followed by whole records"), why))
            } else if zero && rest_zero {
                Ok((pos, len - pos))
            } else if (one_record && end >= len) || rest_zero {
                if opts.cut_damaged_tail {
                    return Ok((pos, len - pos));
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
        if plen == 0 || plen > MAX_RECORD_PAYLOAD {
            let why = RecordError::TooLong { len: plen, at: pos, max: MAX_RECORD_PAYLOAD };
            return bad(why, RECORD_HEADER, h.iter().all(|&b| b == 0));
        }
        if pos + RECORD_HEADER + plen > len {
            // Cut short, unless its length was damaged: a write a crash cut short is the
            // last, so no whole record can follow it.
            if valid_record_follows(&log[pos + 1..], last_rev) {
                return Err(MetaError::corrupt(format!(
                    "log record at offset {pos} claims {plen} bytes, past the end of the log, yet whole records \
                     follow it: its length is damaged (restore the store from a backup)"
                )));
            }
            return Ok((pos, len - pos));
        }
        let payload = &log[pos + RECORD_HEADER..pos + RECORD_HEADER + plen];
        let read = RECORD_HEADER + plen;
        let zero = h.iter().chain(payload).all(|&b| b == 0);
        if !codec::crc_matches(plen, crc, payload) {
            return bad(RecordError::CrcMismatch, read, zero);
        }
        if let Err(e) = a.record(pos, payload)? {
            return bad(e, read, zero);
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
            "store {}: the log is empty, missing or without its base record but the snapshot holds revision \
             {rev}: the log was deleted, emptied or cut short ({how})",
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
/// `log`: what tells damage from a write cut short (only the last write can be cut short).
/// Cheap checks (kind, revision, length) before any CRC.
fn valid_record_follows(log: &[u8], after_rev: u64) -> bool {
    let min_payload = 1 + 8 + 4;
    (0..log.len()).any(|off| {
        let Some(head) = log.get(off..off + RECORD_HEADER) else { return false };
        let (plen, crc) = codec::decode_header(head.try_into().expect("a header's length"));
        let Some(payload) = log.get(off + RECORD_HEADER..off + RECORD_HEADER + plen) else { return false };
        if plen < min_payload || payload[0] != 1 {
            return false;
        }
        let rev = u64::from_le_bytes(payload[1..9].try_into().expect("8 bytes"));
        rev > after_rev && codec::crc_matches(plen, crc, payload)
    })
}
