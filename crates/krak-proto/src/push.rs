//! `PushPages`: a client asks one memory server to copy units of one of its slabs straight
//! into a slab on another memory server (the move of a chunk, without the data passing
//! through the client). Encoding and decoding of the request; the answer is `Written`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::codec::FrameBuilder;
use crate::frame::DecodeError;
use crate::message::{read_slab, read_u32, valid_unit_bytes, Op, SlabId, SLAB_HANDLE_LEN};
use crate::MAX_BATCH_PAGES;

/// Bytes of a socket address on the wire: family (4 or 6), a zero byte, port (u16), then
/// 16 bytes of address (an IPv4 address in the first 4, the rest zero).
pub const ADDR_LEN: usize = 20;
/// Bytes before the unit indexes: address, source and destination slabs, count, unit size.
pub const PUSH_HEAD_LEN: usize = ADDR_LEN + 2 * SLAB_HANDLE_LEN + 8;

/// A decoded `PushPages` request, borrowing its unit indexes from the frame body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PushEntries<'a> {
    /// The memory server to copy to.
    pub to: SocketAddr,
    /// The slab of the server asked to read from.
    pub src: SlabId,
    /// The slab on `to` to copy into, at the same unit indexes.
    pub dst: SlabId,
    unit_bytes: u32,
    indexes: &'a [u8],
}

impl<'a> PushEntries<'a> {
    /// Size of each unit; both slabs must have it.
    pub fn unit_bytes(&self) -> u32 {
        self.unit_bytes
    }
    pub fn len(&self) -> usize {
        self.indexes.len() / 4
    }
    pub fn is_empty(&self) -> bool {
        self.indexes.is_empty()
    }
    /// Unit indexes to copy, in request order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = u32> + 'a {
        self.indexes.chunks_exact(4).map(|b| read_u32(b, 0))
    }
}

/// Encodes a push of up to [`MAX_BATCH_PAGES`] units of `unit_bytes` each: units `pages` of
/// slab `src` go to the same units of slab `dst` on the server at `to`.
pub fn encode_push_pages(
    out: &mut Vec<u8>,
    request_id: u64,
    to: SocketAddr,
    src: SlabId,
    dst: SlabId,
    unit_bytes: u32,
    pages: &[u32],
) {
    assert!(pages.len() <= MAX_BATCH_PAGES, "push batch of {} pages", pages.len());
    let mut f = FrameBuilder::begin(out, Op::PushPages as u16, 0, request_id);
    f.put_bytes(&encode_addr(to)).put_slab(src).put_slab(dst).put_u32(pages.len() as u32).put_u32(unit_bytes);
    for p in pages {
        f.put_u32(*p);
    }
    f.finish();
}

fn encode_addr(addr: SocketAddr) -> [u8; ADDR_LEN] {
    let mut b = [0u8; ADDR_LEN];
    b[2..4].copy_from_slice(&addr.port().to_le_bytes());
    match addr.ip() {
        IpAddr::V4(ip) => {
            b[0] = 4;
            b[4..8].copy_from_slice(&ip.octets());
        }
        IpAddr::V6(ip) => {
            b[0] = 6;
            b[4..20].copy_from_slice(&ip.octets());
        }
    }
    b
}

fn malformed(reason: impl Into<String>) -> DecodeError {
    DecodeError::Malformed { kind: Op::PushPages.name(), reason: reason.into() }
}

fn decode_addr(b: &[u8]) -> Result<SocketAddr, DecodeError> {
    let port = u16::from_le_bytes([b[2], b[3]]);
    if b[1] != 0 {
        return Err(malformed("address padding is not zero"));
    }
    let ip = match b[0] {
        4 if b[8..ADDR_LEN].iter().all(|&x| x == 0) => IpAddr::V4(Ipv4Addr::new(b[4], b[5], b[6], b[7])),
        4 => return Err(malformed("IPv4 address padding is not zero")),
        6 => {
            let mut o = [0u8; 16];
            o.copy_from_slice(&b[4..20]);
            IpAddr::V6(Ipv6Addr::from(o))
        }
        family => return Err(malformed(format!("address family {family} (4 or 6)"))),
    };
    if port == 0 {
        return Err(malformed("port 0"));
    }
    Ok(SocketAddr::new(ip, port))
}

/// Decodes a `PushPages` body, checking the address, the count against the limit, the unit
/// size, and the body length.
pub(crate) fn decode_push(body: &[u8]) -> Result<PushEntries<'_>, DecodeError> {
    if body.len() < PUSH_HEAD_LEN {
        return Err(malformed(format!("body is {} bytes, at least {PUSH_HEAD_LEN} expected", body.len())));
    }
    let to = decode_addr(&body[..ADDR_LEN])?;
    let src = read_slab(body, ADDR_LEN);
    let dst = read_slab(body, ADDR_LEN + SLAB_HANDLE_LEN);
    let count = read_u32(body, ADDR_LEN + 2 * SLAB_HANDLE_LEN);
    if count as usize > MAX_BATCH_PAGES {
        return Err(DecodeError::BatchTooLarge(count));
    }
    let unit_bytes = read_u32(body, ADDR_LEN + 2 * SLAB_HANDLE_LEN + 4);
    if !valid_unit_bytes(unit_bytes) {
        return Err(malformed(format!("unit of {unit_bytes} bytes (a power of two from 64 to 4096)")));
    }
    let indexes = &body[PUSH_HEAD_LEN..];
    if indexes.len() != count as usize * 4 {
        return Err(malformed(format!("{count} indexes need {} bytes, got {}", count * 4, indexes.len())));
    }
    Ok(PushEntries { to, src, dst, unit_bytes, indexes })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{decode_request, decode_response, encode_written};
    use crate::frame::{Header, HEADER_LEN};
    use crate::message::{Request, Response, RESPONSE_BIT};

    fn split(frame: &[u8]) -> (Header, &[u8]) {
        let h = Header::decode(frame[..HEADER_LEN].try_into().unwrap()).unwrap();
        (h, &frame[HEADER_LEN..])
    }

    #[test]
    fn pushes_round_trip_for_both_families() {
        for to in ["127.0.0.1:7070", "[::1]:9", "[2001:db8::7]:65535"] {
            let to: SocketAddr = to.parse().unwrap();
            let mut out = Vec::new();
            encode_push_pages(&mut out, 3, to, SlabId(1, 2), SlabId(3, 4), 4096, &[0, 7, 9]);
            let (h, body) = split(&out);
            let Request::PushPages(p) = decode_request(&h, body).unwrap() else { panic!("wrong kind") };
            assert_eq!((p.to, p.src, p.dst, p.unit_bytes()), (to, SlabId(1, 2), SlabId(3, 4), 4096));
            assert_eq!(p.iter().collect::<Vec<_>>(), vec![0, 7, 9]);
        }
        let mut out = Vec::new();
        encode_written(&mut out, Op::PushPages, 3, 2);
        let (h, body) = split(&out);
        assert_eq!(h.kind, Op::PushPages as u16 | RESPONSE_BIT);
        assert_eq!(decode_response(&h, body).unwrap(), Response::Written { count: 2 });
    }

    #[test]
    fn bad_pushes_are_refused() {
        let mut good = Vec::new();
        encode_push_pages(&mut good, 1, "10.0.0.1:80".parse().unwrap(), SlabId(1, 1), SlabId(2, 2), 512, &[1, 2]);
        let body = &good[HEADER_LEN..];
        let malformed = |body: &[u8]| matches!(decode_push(body), Err(DecodeError::Malformed { .. }));
        assert!(decode_push(body).is_ok());
        for (at, value) in [(0, 5u8), (1, 1), (2, 0), (3, 0), (12, 1)] {
            let mut b = body.to_vec();
            b[at] = value;
            if at == 3 {
                b[2] = 0; // port 0
            }
            assert!(malformed(&b), "byte {at} = {value}");
        }
        assert!(malformed(&body[..body.len() - 1]), "short");
        assert!(malformed(&body[..PUSH_HEAD_LEN - 1]), "no head");
        let mut b = body.to_vec();
        b[PUSH_HEAD_LEN - 4..PUSH_HEAD_LEN].copy_from_slice(&100u32.to_le_bytes());
        assert!(malformed(&b), "unit size");
        let mut b = body.to_vec();
        b[PUSH_HEAD_LEN - 8..PUSH_HEAD_LEN - 4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(decode_push(&b), Err(DecodeError::BatchTooLarge(_))));
    }
}
