//! The rack secret and the keyed hashes built on it.
//!
//! Every link of a krak rack (pager ↔ memory server, anyone ↔ controller) is authenticated
//! with one 32-byte secret shared by the rack's machines. This crate holds the secret's
//! type, the HMAC-SHA256 helpers the protocols use, and reading/writing the secret file
//! ([`file`]). The protocols themselves live with their crates (`krak-proto` for the memory
//! servers' wire, `krak-controller` for the HTTP API); see `docs/threat-model.md`.

use std::fmt;

use hmac::{Hmac, Mac};
use sha2::Sha256;

pub mod file;

pub use file::{load_secret_file, write_new_secret_file, SecretFileError};

/// Length of the rack secret and of every derived key.
pub const KEY_LEN: usize = 32;
/// Length of a full HMAC-SHA256 tag.
pub const TAG_LEN: usize = 32;

type HmacSha256 = Hmac<Sha256>;

/// The rack's shared secret. Its `Debug` never shows the bytes.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct RackSecret([u8; KEY_LEN]);

impl fmt::Debug for RackSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RackSecret(<redacted>)")
    }
}

/// Why a secret's text could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseSecretError {
    #[error("a rack secret is {expected} hex digits, got {got} characters")]
    Length { expected: usize, got: usize },
    #[error("a rack secret is hex digits only (0-9, a-f)")]
    NotHex,
}

impl RackSecret {
    /// A fresh secret from the operating system's random source.
    pub fn generate() -> RackSecret {
        RackSecret(rand::random())
    }

    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> RackSecret {
        RackSecret(bytes)
    }

    /// The well-known all-zero key that `--insecure` racks use: the protocols run
    /// unchanged, but anyone can compute every tag. Never use it where it matters.
    pub fn insecure() -> RackSecret {
        RackSecret([0; KEY_LEN])
    }

    pub fn is_insecure(&self) -> bool {
        self.0 == [0; KEY_LEN]
    }

    /// Parses 64 hex digits (surrounding whitespace ignored).
    pub fn from_hex(text: &str) -> Result<RackSecret, ParseSecretError> {
        let text = text.trim();
        if text.len() != 2 * KEY_LEN {
            return Err(ParseSecretError::Length { expected: 2 * KEY_LEN, got: text.chars().count() });
        }
        let mut out = [0u8; KEY_LEN];
        for (i, pair) in text.as_bytes().chunks_exact(2).enumerate() {
            let digit = |c: u8| (c as char).to_digit(16).ok_or(ParseSecretError::NotHex);
            out[i] = (digit(pair[0])? * 16 + digit(pair[1])?) as u8;
        }
        Ok(RackSecret(out))
    }

    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// HMAC-SHA256 under the secret of `label` then each part, each prefixed by its length
    /// so that no two different inputs hash alike. Labels keep the uses of the one secret
    /// apart: a tag made for one purpose is never valid for another.
    pub fn tag(&self, label: &str, parts: &[&[u8]]) -> [u8; TAG_LEN] {
        MacKey(self.0).tag(label, parts)
    }

    /// A key derived from the secret for one purpose (e.g. one connection's session).
    pub fn derive(&self, label: &str, parts: &[&[u8]]) -> MacKey {
        MacKey(self.tag(label, parts))
    }
}

/// A derived 32-byte key (a session key, a server's capability key).
#[derive(Clone, PartialEq, Eq)]
pub struct MacKey([u8; KEY_LEN]);

impl fmt::Debug for MacKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MacKey(<redacted>)")
    }
}

impl MacKey {
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> MacKey {
        MacKey(bytes)
    }

    /// A fresh random key (e.g. a memory server's private key for capabilities).
    pub fn generate() -> MacKey {
        MacKey(rand::random())
    }

    /// HMAC-SHA256 with the same framing as [`RackSecret::tag`], under this key.
    pub fn tag(&self, label: &str, parts: &[&[u8]]) -> [u8; TAG_LEN] {
        let mut mac = <HmacSha256 as Mac>::new_from_slice(&self.0).expect("HMAC takes keys of any length");
        put(&mut mac, label.as_bytes());
        for p in parts {
            put(&mut mac, p);
        }
        mac.finalize().into_bytes().into()
    }

    /// A keyed BLAKE3 hasher for frame MACs: a MAC by design (keyed mode), and several
    /// times faster than HMAC-SHA256 on 4 KiB pages (SIMD over the page's 1 KiB chunks).
    pub fn hasher(&self) -> FrameHasher {
        FrameHasher(blake3::Hasher::new_keyed(&self.0))
    }
}

/// A keyed BLAKE3 in progress; see [`MacKey::hasher`].
#[derive(Clone)]
pub struct FrameHasher(blake3::Hasher);

impl fmt::Debug for FrameHasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FrameHasher")
    }
}

impl FrameHasher {
    pub fn update(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    pub fn finalize(&self) -> [u8; TAG_LEN] {
        *self.0.finalize().as_bytes()
    }
}

fn put(mac: &mut HmacSha256, bytes: &[u8]) {
    mac.update(&(bytes.len() as u64).to_le_bytes());
    mac.update(bytes);
}

/// Compares two tags in time independent of where they differ.
pub fn tags_equal(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trips_and_refuses_bad_text() {
        let s = RackSecret::generate();
        assert_eq!(RackSecret::from_hex(&format!("  {}\n", s.to_hex())).unwrap(), s);
        assert!(matches!(RackSecret::from_hex("abcd"), Err(ParseSecretError::Length { .. })));
        assert_eq!(RackSecret::from_hex(&"zz".repeat(32)), Err(ParseSecretError::NotHex));
        assert_eq!(format!("{s:?}"), "RackSecret(<redacted>)");
    }

    #[test]
    fn hmac_matches_rfc_4231_case_2() {
        // Key "Jefe", data "what do ya want for nothing?": checks the HMAC underneath.
        let mut h = <HmacSha256 as Mac>::new_from_slice(b"Jefe").unwrap();
        h.update(b"what do ya want for nothing?");
        let hex: String = h.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
    }

    #[test]
    fn tags_depend_on_key_label_and_framing() {
        let a = RackSecret::generate();
        let b = RackSecret::generate();
        assert_eq!(a.tag("x", &[b"1"]), a.tag("x", &[b"1"]));
        assert_ne!(a.tag("x", &[b"1"]), b.tag("x", &[b"1"]));
        assert_ne!(a.tag("x", &[b"1"]), a.tag("y", &[b"1"]));
        // length prefixes: ("ab","c") and ("a","bc") differ
        assert_ne!(a.tag("x", &[b"ab", b"c"]), a.tag("x", &[b"a", b"bc"]));
        assert_ne!(a.derive("s", &[b"n"]).tag("t", &[]), a.derive("s", &[b"m"]).tag("t", &[]));
    }

    #[test]
    fn frame_hashes_depend_on_key_and_every_byte() {
        let k = MacKey::generate();
        let mac = |key: &MacKey, parts: &[&[u8]]| {
            let mut h = key.hasher();
            for p in parts {
                h.update(p);
            }
            h.finalize()
        };
        let page = vec![7u8; 4096];
        assert_eq!(mac(&k, &[b"hdr", &page]), mac(&k, &[b"hd", b"r", &page]), "a stream, not framed");
        assert_ne!(mac(&k, &[b"hdr", &page]), mac(&MacKey::generate(), &[b"hdr", &page]));
        let mut other = page.clone();
        other[4095] ^= 1;
        assert_ne!(mac(&k, &[b"hdr", &page]), mac(&k, &[b"hdr", &other]));
    }

    #[test]
    fn tag_comparison() {
        assert!(tags_equal(&[1, 2, 3], &[1, 2, 3]));
        assert!(!tags_equal(&[1, 2, 3], &[1, 2, 4]));
        assert!(!tags_equal(&[1, 2], &[1, 2, 3]));
    }
}
