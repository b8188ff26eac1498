//! The messages between a program run by `krak run --pager separate` and the pager process
//! that serves its arena, over a Unix `SOCK_SEQPACKET` socket: one message per packet,
//! little-endian, a tag byte first. The program opens with [`Request::Hello`] (its memfd
//! and userfaultfd attached) and then asks one thing at a time, each answered before the
//! next is sent: a bounded exchange, never more than one request in flight per arena.
//!
//! Both ends run as the same user, but the pager still checks every field: a decoder error
//! is typed, never a panic. A connection may instead open with [`Request::Budget`]: `krak
//! budget pid:N` asking the pager to change the local budget of program N's arena; it is
//! answered with the arena's stats, and the connection ends.

/// Version of these messages; a pager refuses a program speaking another.
pub const VERSION: u16 = 1;
/// Largest message either end sends or accepts.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;
/// Longest reason in a [`Answer::Failed`].
pub const MAX_REASON_BYTES: usize = 1024;

const HELLO: u8 = 1;
const DISCARD: u8 = 2;
const STATS: u8 = 3;
const BUDGET: u8 = 4;
const READY: u8 = 0x81;
const DONE: u8 = 0x82;
const FAILED: u8 = 0x83;
const STATS_JSON: u8 = 0x84;

/// What the program asks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// "Serve this arena": `base` and `len` in the program's address space; the memfd and
    /// the userfaultfd (opened with `uffd_features`, in `uffd_mode`) come attached.
    Hello { version: u16, base: u64, len: u64, uffd_features: u64, uffd_mode: u8 },
    /// Forget the arena's pages `[offset, offset+len)` (bytes, page-aligned): answered
    /// [`Answer::Done`] once they read as zeros.
    Discard { offset: u64, len: u64 },
    /// The pager's counters for this arena, as JSON.
    Stats,
    /// "Keep `local_budget_bytes` of the arena of program `pid` local" (from `krak budget`,
    /// on a connection of its own): answered with that arena's stats once the budget is in
    /// force.
    Budget { pid: u32, local_budget_bytes: u64 },
}

/// What the pager answers, one per request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// The arena is served (after `Hello`).
    Ready,
    /// The discard is complete.
    Done,
    /// The request failed; the program stops with this reason.
    Failed(String),
    Stats(String),
}

/// Why a message could not be decoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    #[error("empty message")]
    Empty,
    #[error("unknown message tag {0:#x}")]
    UnknownTag(u8),
    #[error("message of tag {tag:#x} is {got} bytes, expected {expected}")]
    Length { tag: u8, got: usize, expected: usize },
    #[error("message of {0} bytes exceeds the limit")]
    TooLong(usize),
    #[error("text in a message is not UTF-8")]
    NotUtf8,
}

impl Request {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(32);
        match self {
            Request::Hello { version, base, len, uffd_features, uffd_mode } => {
                out.push(HELLO);
                out.extend_from_slice(&version.to_le_bytes());
                out.extend_from_slice(&base.to_le_bytes());
                out.extend_from_slice(&len.to_le_bytes());
                out.extend_from_slice(&uffd_features.to_le_bytes());
                out.push(*uffd_mode);
            }
            Request::Discard { offset, len } => {
                out.push(DISCARD);
                out.extend_from_slice(&offset.to_le_bytes());
                out.extend_from_slice(&len.to_le_bytes());
            }
            Request::Stats => out.push(STATS),
            Request::Budget { pid, local_budget_bytes } => {
                out.push(BUDGET);
                out.extend_from_slice(&pid.to_le_bytes());
                out.extend_from_slice(&local_budget_bytes.to_le_bytes());
            }
        }
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Request, WireError> {
        let (&tag, body) = bytes.split_first().ok_or(WireError::Empty)?;
        match tag {
            HELLO => {
                let b = exact(tag, body, 2 + 8 * 3 + 1)?;
                Ok(Request::Hello {
                    version: u16::from_le_bytes([b[0], b[1]]),
                    base: u64_at(b, 2),
                    len: u64_at(b, 10),
                    uffd_features: u64_at(b, 18),
                    uffd_mode: b[26],
                })
            }
            DISCARD => {
                let b = exact(tag, body, 16)?;
                Ok(Request::Discard { offset: u64_at(b, 0), len: u64_at(b, 8) })
            }
            STATS => exact(tag, body, 0).map(|_| Request::Stats),
            BUDGET => {
                let b = exact(tag, body, 12)?;
                Ok(Request::Budget {
                    pid: u32::from_le_bytes([b[0], b[1], b[2], b[3]]),
                    local_budget_bytes: u64_at(b, 4),
                })
            }
            other => Err(WireError::UnknownTag(other)),
        }
    }
}

impl Answer {
    /// Encodes the answer; a reason or JSON longer than allowed is cut (at a character).
    pub fn encode(&self) -> Vec<u8> {
        let (tag, text) = match self {
            Answer::Ready => (READY, ""),
            Answer::Done => (DONE, ""),
            Answer::Failed(why) => (FAILED, cut(why, MAX_REASON_BYTES)),
            Answer::Stats(json) => (STATS_JSON, cut(json, MAX_MESSAGE_BYTES - 1)),
        };
        let mut out = Vec::with_capacity(1 + text.len());
        out.push(tag);
        out.extend_from_slice(text.as_bytes());
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Answer, WireError> {
        if bytes.len() > MAX_MESSAGE_BYTES {
            return Err(WireError::TooLong(bytes.len()));
        }
        let (&tag, body) = bytes.split_first().ok_or(WireError::Empty)?;
        let text = || std::str::from_utf8(body).map(str::to_owned).map_err(|_| WireError::NotUtf8);
        match tag {
            READY => exact(tag, body, 0).map(|_| Answer::Ready),
            DONE => exact(tag, body, 0).map(|_| Answer::Done),
            FAILED if body.len() > MAX_REASON_BYTES => Err(WireError::TooLong(body.len())),
            FAILED => text().map(Answer::Failed),
            STATS_JSON => text().map(Answer::Stats),
            other => Err(WireError::UnknownTag(other)),
        }
    }
}

fn exact(tag: u8, body: &[u8], expected: usize) -> Result<&[u8], WireError> {
    if body.len() == expected {
        Ok(body)
    } else {
        Err(WireError::Length { tag, got: body.len(), expected })
    }
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut word = [0u8; 8];
    word.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(word)
}

fn cut(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_message_round_trips() {
        let requests = [
            Request::Hello {
                version: VERSION,
                base: 0x7f00_0000_0000,
                len: 1 << 35,
                uffd_features: 0x1101,
                uffd_mode: 0,
            },
            Request::Discard { offset: 4096, len: u64::MAX },
            Request::Stats,
            Request::Budget { pid: 4242, local_budget_bytes: 128 << 20 },
        ];
        for r in requests {
            assert_eq!(Request::decode(&r.encode()), Ok(r));
        }
        let answers = [Answer::Ready, Answer::Done, Answer::Failed("nope: é".into()), Answer::Stats("{}".into())];
        for a in answers {
            assert_eq!(Answer::decode(&a.encode()), Ok(a));
        }
    }

    #[test]
    fn bad_messages_are_typed_errors() {
        assert_eq!(Request::decode(&[]), Err(WireError::Empty));
        assert_eq!(Request::decode(&[9]), Err(WireError::UnknownTag(9)));
        assert_eq!(Request::decode(&[DISCARD, 1, 2]), Err(WireError::Length { tag: DISCARD, got: 2, expected: 16 }));
        let mut hello = Request::Stats.encode();
        hello.push(0);
        assert!(matches!(Request::decode(&hello), Err(WireError::Length { .. })));
        assert_eq!(Answer::decode(&[DONE, 0]), Err(WireError::Length { tag: DONE, got: 1, expected: 0 }));
        assert_eq!(Answer::decode(&[FAILED, 0xff, 0xfe]), Err(WireError::NotUtf8));
        assert!(matches!(Answer::decode(&vec![STATS_JSON; MAX_MESSAGE_BYTES + 1]), Err(WireError::TooLong(_))));
        let long_reason = [vec![FAILED], vec![b'a'; MAX_REASON_BYTES + 1]].concat();
        assert!(matches!(Answer::decode(&long_reason), Err(WireError::TooLong(_))));
        // an over-long reason is cut at a character boundary when encoded, so it decodes
        let long = "é".repeat(MAX_REASON_BYTES);
        let Ok(Answer::Failed(got)) = Answer::decode(&Answer::Failed(long).encode()) else { panic!("decodes") };
        assert!(got.len() <= MAX_REASON_BYTES && got.chars().all(|c| c == 'é'));
    }

    #[test]
    fn no_prefix_or_byte_flip_panics() {
        let samples = [
            Request::Hello { version: 1, base: 1, len: 2, uffd_features: 3, uffd_mode: 4 }.encode(),
            Request::Discard { offset: 1, len: 2 }.encode(),
            Request::Budget { pid: 1, local_budget_bytes: 2 }.encode(),
            Answer::Failed("x".into()).encode(),
        ];
        for s in samples {
            for n in 0..=s.len() {
                let _ = Request::decode(&s[..n]);
                let _ = Answer::decode(&s[..n]);
            }
            for i in 0..s.len() {
                let mut m = s.clone();
                m[i] ^= 0xff;
                let _ = Request::decode(&m);
                let _ = Answer::decode(&m);
            }
        }
    }
}
