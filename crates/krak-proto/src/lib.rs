//! The krak wire protocol between pagers and memory servers.
//!
//! This crate holds only types, encoders and decoders: no sockets, no threads, so that
//! every decoder can be fuzzed in isolation and reused by any transport. The frame layout
//! and every message are documented in `docs/protocol.md`; keep the two in step.
//!
//! Decoders never trust their input: every length is bounded before it is used, and a
//! malformed frame yields a [`DecodeError`], never a panic.

mod auth;
mod codec;
mod frame;
mod message;
mod push;
pub mod units;

pub use auth::{proof_matches, BadMac, FrameMac, Side, Transcript, MAC_LEN, NONCE_LEN, PROOF_LEN};
pub use codec::*;
pub use frame::{DecodeError, Header, HEADER_LEN, MAGIC, MAX_BODY_BYTES};
pub use krak_auth::{MacKey, RackSecret};
pub use message::*;
pub use push::{encode_push_pages, PushEntries, ADDR_LEN, PUSH_HEAD_LEN};

/// Version spoken by this build; a server refuses a hello with any other.
pub const PROTOCOL_VERSION: u32 = 4;
/// The unit of transfer: every page on the wire is exactly this long.
pub const PAGE_SIZE: usize = 4096;
/// Smallest unit a slab may store (a page's fragment under erasure coding).
pub const MIN_UNIT_BYTES: usize = 64;
/// Largest unit a slab may store: a whole page.
pub const MAX_UNIT_BYTES: usize = PAGE_SIZE;
/// Most units one read or write request may carry.
pub const MAX_BATCH_PAGES: usize = 256;
/// Longest error message a response may carry, in bytes.
pub const MAX_ERROR_MESSAGE_BYTES: usize = 1024;

/// CRC-32C (Castagnoli) of one unit (a page or a fragment), as carried next to every unit
/// on the wire.
pub fn page_crc(page: &[u8]) -> u32 {
    crc32c::crc32c(page)
}
