//! The fixed frame header that precedes every message.

use crate::{MAX_BATCH_PAGES, PAGE_SIZE};

/// First four bytes of every frame.
pub const MAGIC: [u8; 4] = *b"KRAK";
/// Length of the fixed header in bytes.
pub const HEADER_LEN: usize = 24;
/// Largest body a frame may declare: a full write batch of whole pages (count, unit size,
/// then per-unit overhead and data).
pub const MAX_BODY_BYTES: usize = 8 + MAX_BATCH_PAGES * (crate::message::WRITE_ENTRY_HEAD + PAGE_SIZE);

/// Why a frame or message could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("bad magic {0:02x?}: not a krak peer")]
    BadMagic([u8; 4]),
    #[error("frame body of {0} bytes exceeds the limit of {MAX_BODY_BYTES}")]
    FrameTooLarge(u32),
    #[error("reserved header field is {0}, must be 0")]
    ReservedNotZero(u32),
    #[error("unknown message kind {0:#06x}")]
    UnknownKind(u16),
    #[error("malformed {kind}: {reason}")]
    Malformed { kind: &'static str, reason: String },
    #[error("batch of {0} pages exceeds the limit of {MAX_BATCH_PAGES}")]
    BatchTooLarge(u32),
}

/// The fixed 24-byte header of a frame (all fields little-endian).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Message kind; responses set [`crate::RESPONSE_BIT`].
    pub kind: u16,
    /// 0 in requests and successful responses, an [`crate::ErrorCode`] otherwise.
    pub status: u16,
    /// Chosen by the client; echoed in the response.
    pub request_id: u64,
    /// Length of the body that follows the header.
    pub body_len: u32,
}

impl Header {
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        out[0..4].copy_from_slice(&MAGIC);
        out[4..6].copy_from_slice(&self.kind.to_le_bytes());
        out[6..8].copy_from_slice(&self.status.to_le_bytes());
        out[8..16].copy_from_slice(&self.request_id.to_le_bytes());
        out[16..20].copy_from_slice(&self.body_len.to_le_bytes());
        // bytes 20..24 are reserved and stay zero
        out
    }

    /// Checks magic, reserved bits and the body bound before anyone allocates for the body.
    pub fn decode(bytes: &[u8; HEADER_LEN]) -> Result<Header, DecodeError> {
        let magic = [bytes[0], bytes[1], bytes[2], bytes[3]];
        if magic != MAGIC {
            return Err(DecodeError::BadMagic(magic));
        }
        let u16_at = |i: usize| u16::from_le_bytes([bytes[i], bytes[i + 1]]);
        let u32_at = |i: usize| u32::from_le_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
        let mut id = [0u8; 8];
        id.copy_from_slice(&bytes[8..16]);
        let header =
            Header { kind: u16_at(4), status: u16_at(6), request_id: u64::from_le_bytes(id), body_len: u32_at(16) };
        let reserved = u32_at(20);
        if reserved != 0 {
            return Err(DecodeError::ReservedNotZero(reserved));
        }
        if header.body_len as usize > MAX_BODY_BYTES {
            return Err(DecodeError::FrameTooLarge(header.body_len));
        }
        Ok(header)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips() {
        let h = Header { kind: 0x8004, status: 7, request_id: u64::MAX - 3, body_len: 4096 };
        assert_eq!(Header::decode(&h.encode()).unwrap(), h);
    }

    #[test]
    fn header_rejects_bad_magic_oversize_and_reserved() {
        let mut bytes = Header { kind: 1, status: 0, request_id: 1, body_len: 0 }.encode();
        bytes[0] = b'X';
        assert!(matches!(Header::decode(&bytes), Err(DecodeError::BadMagic(_))));

        let big = Header { kind: 1, status: 0, request_id: 1, body_len: MAX_BODY_BYTES as u32 + 1 };
        assert_eq!(Header::decode(&big.encode()), Err(DecodeError::FrameTooLarge(MAX_BODY_BYTES as u32 + 1)));

        let mut bytes = Header { kind: 1, status: 0, request_id: 1, body_len: 0 }.encode();
        bytes[23] = 1;
        assert!(matches!(Header::decode(&bytes), Err(DecodeError::ReservedNotZero(_))));
    }
}
