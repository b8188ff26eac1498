//! Encoders (into a caller's buffer) and decoders (borrowing from a frame body).

use crate::frame::{DecodeError, Header, HEADER_LEN, MAX_BODY_BYTES};
use crate::message::*;
#[cfg(test)]
use crate::PAGE_SIZE;
use crate::{page_crc, MAX_BATCH_PAGES, MAX_ERROR_MESSAGE_BYTES, NONCE_LEN, PROOF_LEN};

/// Appends one frame to a buffer; the body length is patched in by [`FrameBuilder::finish`].
#[derive(Debug)]
pub struct FrameBuilder<'a> {
    out: &'a mut Vec<u8>,
    start: usize,
    header: Header,
}

impl<'a> FrameBuilder<'a> {
    pub fn begin(out: &'a mut Vec<u8>, kind: u16, status: u16, request_id: u64) -> Self {
        let start = out.len();
        let header = Header { kind, status, request_id, body_len: 0 };
        out.extend_from_slice(&header.encode());
        FrameBuilder { out, start, header }
    }

    pub fn put_u32(&mut self, v: u32) -> &mut Self {
        self.out.extend_from_slice(&v.to_le_bytes());
        self
    }

    pub fn put_u64(&mut self, v: u64) -> &mut Self {
        self.out.extend_from_slice(&v.to_le_bytes());
        self
    }

    pub fn put_slab(&mut self, slab: SlabId) -> &mut Self {
        self.put_u64(slab.0).put_u64(slab.1)
    }

    pub fn put_bytes(&mut self, b: &[u8]) -> &mut Self {
        self.out.extend_from_slice(b);
        self
    }

    /// Appends `len` zero bytes and returns them, so a page can be copied straight in.
    pub fn reserve(&mut self, len: usize) -> &mut [u8] {
        let at = self.out.len();
        self.out.resize(at + len, 0);
        &mut self.out[at..]
    }

    /// Patches the body length into the header. Panics only on a bug of the encoder's
    /// caller (a body over the protocol limit), never on peer input.
    pub fn finish(self) {
        let body_len = self.out.len() - self.start - HEADER_LEN;
        assert!(body_len <= MAX_BODY_BYTES, "encoder built a {body_len}-byte body");
        let header = Header { body_len: body_len as u32, ..self.header };
        self.out[self.start..self.start + HEADER_LEN].copy_from_slice(&header.encode());
    }
}

// ---- request encoders (client side) ----

pub fn encode_hello(out: &mut Vec<u8>, request_id: u64, version: u32, client_id: u64, nonce: &[u8; NONCE_LEN]) {
    let mut f = FrameBuilder::begin(out, Op::Hello as u16, 0, request_id);
    f.put_u32(version).put_u64(client_id).put_bytes(nonce);
    f.finish();
}

/// The client's proof, the second step of the handshake (see [`crate::Transcript`]).
pub fn encode_auth(out: &mut Vec<u8>, request_id: u64, proof: &[u8; PROOF_LEN]) {
    let mut f = FrameBuilder::begin(out, Op::Auth as u16, 0, request_id);
    f.put_bytes(proof);
    f.finish();
}

/// Encodes an allocation of a slab storing units of `unit_bytes` (see [`valid_unit_bytes`]).
pub fn encode_alloc_slab(out: &mut Vec<u8>, request_id: u64, unit_bytes: u32) {
    let mut f = FrameBuilder::begin(out, Op::AllocSlab as u16, 0, request_id);
    f.put_u32(unit_bytes);
    f.finish();
}

pub fn encode_free_slab(out: &mut Vec<u8>, request_id: u64, slab: SlabId) {
    let mut f = FrameBuilder::begin(out, Op::FreeSlab as u16, 0, request_id);
    f.put_slab(slab);
    f.finish();
}

pub fn encode_stats(out: &mut Vec<u8>, request_id: u64) {
    FrameBuilder::begin(out, Op::Stats as u16, 0, request_id).finish();
}

/// Encodes a read of up to [`MAX_BATCH_PAGES`] units of `unit_bytes` each.
pub fn encode_read_pages(out: &mut Vec<u8>, request_id: u64, unit_bytes: u32, pages: &[PageRef]) {
    encode_unit_refs(out, Op::ReadPages, request_id, unit_bytes, pages);
}

/// Encodes a discard (see [`Request::DiscardPages`]) of up to [`MAX_BATCH_PAGES`] units of
/// `unit_bytes` each.
pub fn encode_discard_pages(out: &mut Vec<u8>, request_id: u64, unit_bytes: u32, pages: &[PageRef]) {
    encode_unit_refs(out, Op::DiscardPages, request_id, unit_bytes, pages);
}

fn encode_unit_refs(out: &mut Vec<u8>, op: Op, request_id: u64, unit_bytes: u32, pages: &[PageRef]) {
    assert!(pages.len() <= MAX_BATCH_PAGES, "{} batch of {} pages", op.name(), pages.len());
    let mut f = FrameBuilder::begin(out, op as u16, 0, request_id);
    f.put_u32(pages.len() as u32).put_u32(unit_bytes);
    for p in pages {
        f.put_slab(p.slab).put_u32(p.page);
    }
    f.finish();
}

/// Encodes a write of up to [`MAX_BATCH_PAGES`] units of `unit_bytes` each, computing each
/// unit's CRC-32C.
pub fn encode_write_pages<'p>(
    out: &mut Vec<u8>,
    request_id: u64,
    unit_bytes: u32,
    pages: impl ExactSizeIterator<Item = (PageRef, &'p [u8])>,
) {
    let units = pages.map(|(at, data)| (at, page_crc(data), data));
    encode_units(out, Op::WritePages, request_id, unit_bytes, units);
}

/// Encodes a copy (see [`Request::CopyPages`]) of up to [`MAX_BATCH_PAGES`] units of
/// `unit_bytes` each, each with its CRC-32C: computed by the caller, or as stored (a server
/// pushing its units passes on the checksum its writer sent, not a new one).
pub fn encode_copy_units<'p>(
    out: &mut Vec<u8>,
    request_id: u64,
    unit_bytes: u32,
    units: impl ExactSizeIterator<Item = (PageRef, u32, &'p [u8])>,
) {
    encode_units(out, Op::CopyPages, request_id, unit_bytes, units);
}

fn encode_units<'p>(
    out: &mut Vec<u8>,
    op: Op,
    request_id: u64,
    unit_bytes: u32,
    units: impl ExactSizeIterator<Item = (PageRef, u32, &'p [u8])>,
) {
    assert!(units.len() <= MAX_BATCH_PAGES, "batch of {} units", units.len());
    let mut f = FrameBuilder::begin(out, op as u16, 0, request_id);
    f.put_u32(units.len() as u32).put_u32(unit_bytes);
    for (at, crc, data) in units {
        assert_eq!(data.len(), unit_bytes as usize, "every unit of the batch is {unit_bytes} bytes");
        f.put_slab(at.slab).put_u32(at.page).put_u32(crc).put_bytes(data);
    }
    f.finish();
}

// ---- response encoders (server side) ----

pub fn encode_hello_ok(out: &mut Vec<u8>, request_id: u64, hello: &ServerHello) {
    let mut f = FrameBuilder::begin(out, Op::Hello as u16 | RESPONSE_BIT, 0, request_id);
    f.put_u32(hello.version)
        .put_u32(hello.page_size)
        .put_u64(hello.slab_size_bytes)
        .put_u64(hello.capacity_bytes)
        .put_u64(hello.server_id)
        .put_bytes(&hello.nonce)
        .put_bytes(&hello.proof);
    f.finish();
}

pub fn encode_authenticated(out: &mut Vec<u8>, request_id: u64) {
    FrameBuilder::begin(out, Op::Auth as u16 | RESPONSE_BIT, 0, request_id).finish();
}

pub fn encode_slab_allocated(out: &mut Vec<u8>, request_id: u64, slab: SlabId) {
    let mut f = FrameBuilder::begin(out, Op::AllocSlab as u16 | RESPONSE_BIT, 0, request_id);
    f.put_slab(slab);
    f.finish();
}

pub fn encode_slab_freed(out: &mut Vec<u8>, request_id: u64) {
    FrameBuilder::begin(out, Op::FreeSlab as u16 | RESPONSE_BIT, 0, request_id).finish();
}

/// The answer to a `WritePages` (`op`) or `CopyPages`: how many units were stored.
pub fn encode_written(out: &mut Vec<u8>, op: Op, request_id: u64, count: u32) {
    let mut f = FrameBuilder::begin(out, op as u16 | RESPONSE_BIT, 0, request_id);
    f.put_u32(count);
    f.finish();
}

pub fn encode_stats_response(out: &mut Vec<u8>, request_id: u64, stats: &ServerStats) {
    let mut f = FrameBuilder::begin(out, Op::Stats as u16 | RESPONSE_BIT, 0, request_id);
    for v in stats.to_array() {
        f.put_u64(v);
    }
    f.finish();
}

/// Starts a read response of `count` units of `unit_bytes`; the caller appends `crc` +
/// unit for each.
pub fn begin_pages_response(out: &mut Vec<u8>, request_id: u64, count: u32, unit_bytes: u32) -> FrameBuilder<'_> {
    let mut f = FrameBuilder::begin(out, Op::ReadPages as u16 | RESPONSE_BIT, 0, request_id);
    f.put_u32(count).put_u32(unit_bytes);
    f
}

/// Encodes an error answer to a request of `kind`; the message is cut to the protocol limit.
pub fn encode_error(out: &mut Vec<u8>, request_id: u64, kind: u16, code: ErrorCode, message: &str) {
    let mut end = message.len().min(MAX_ERROR_MESSAGE_BYTES);
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    let mut f = FrameBuilder::begin(out, kind | RESPONSE_BIT, code as u16, request_id);
    f.put_bytes(&message.as_bytes()[..end]);
    f.finish();
}

// ---- decoders ----

/// Body of a client hello: version, client id, nonce.
const HELLO_LEN: usize = 12 + NONCE_LEN;
/// The largest body a frame of the handshake (a client's hello, or its proof) can carry: a
/// server reads no more of a peer that has not proved the rack secret.
pub const MAX_HANDSHAKE_BODY_BYTES: usize = if HELLO_LEN > PROOF_LEN { HELLO_LEN } else { PROOF_LEN };
/// Body of a server hello: five fixed fields, nonce, proof.
const SERVER_HELLO_LEN: usize = 32 + NONCE_LEN + PROOF_LEN;

fn malformed(kind: &'static str, reason: impl Into<String>) -> DecodeError {
    DecodeError::Malformed { kind, reason: reason.into() }
}

fn expect_len(kind: &'static str, body: &[u8], len: usize) -> Result<(), DecodeError> {
    if body.len() != len {
        return Err(malformed(kind, format!("body is {} bytes, expected {len}", body.len())));
    }
    Ok(())
}

/// Checks the unit size of an allocation, a batch or an answer.
fn unit(kind: &'static str, unit_bytes: u32) -> Result<u32, DecodeError> {
    if !valid_unit_bytes(unit_bytes) {
        return Err(malformed(kind, format!("unit of {unit_bytes} bytes (a power of two from 64 to 4096)")));
    }
    Ok(unit_bytes)
}

/// Splits `count: u32` + `unit_bytes: u32` + `count` entries of `head + unit_bytes` (`head`
/// alone when `with_unit` is false), checking the count against the limit, the unit size,
/// and the body length against both.
fn counted<'a>(
    kind: &'static str,
    body: &'a [u8],
    head: usize,
    with_unit: bool,
) -> Result<(u32, &'a [u8]), DecodeError> {
    if body.len() < 8 {
        return Err(malformed(kind, "missing count or unit size"));
    }
    let count = read_u32(body, 0);
    if count as usize > MAX_BATCH_PAGES {
        return Err(DecodeError::BatchTooLarge(count));
    }
    let unit_bytes = unit(kind, read_u32(body, 4))?;
    let entry_len = head + if with_unit { unit_bytes as usize } else { 0 };
    let entries = &body[8..];
    if entries.len() != count as usize * entry_len {
        return Err(malformed(
            kind,
            format!("{count} entries need {} bytes, got {}", count as usize * entry_len, entries.len()),
        ));
    }
    Ok((unit_bytes, entries))
}

/// Decodes a request body. `header` must have come from [`Header::decode`].
pub fn decode_request<'a>(header: &Header, body: &'a [u8]) -> Result<Request<'a>, DecodeError> {
    if header.kind & RESPONSE_BIT != 0 {
        return Err(DecodeError::UnknownKind(header.kind));
    }
    let op = Op::from_kind(header.kind).ok_or(DecodeError::UnknownKind(header.kind))?;
    let name = op.name();
    if header.status != 0 {
        return Err(malformed(name, "requests carry status 0"));
    }
    Ok(match op {
        Op::Hello => {
            expect_len(name, body, HELLO_LEN)?;
            Request::Hello { version: read_u32(body, 0), client_id: read_u64(body, 4), nonce: read_array(body, 12) }
        }
        Op::Auth => {
            expect_len(name, body, PROOF_LEN)?;
            Request::Auth { proof: read_array(body, 0) }
        }
        Op::AllocSlab => {
            expect_len(name, body, 4)?;
            Request::AllocSlab { unit_bytes: unit(name, read_u32(body, 0))? }
        }
        Op::FreeSlab => {
            expect_len(name, body, SLAB_HANDLE_LEN)?;
            Request::FreeSlab { slab: read_slab(body, 0) }
        }
        Op::ReadPages => {
            let (unit_bytes, bytes) = counted(name, body, READ_ENTRY_LEN, false)?;
            Request::ReadPages(ReadEntries { unit_bytes, bytes })
        }
        Op::WritePages => {
            let (unit_bytes, bytes) = counted(name, body, WRITE_ENTRY_HEAD, true)?;
            Request::WritePages(WriteEntries { unit_bytes, bytes })
        }
        Op::CopyPages => {
            let (unit_bytes, bytes) = counted(name, body, WRITE_ENTRY_HEAD, true)?;
            Request::CopyPages(WriteEntries { unit_bytes, bytes })
        }
        Op::PushPages => Request::PushPages(crate::push::decode_push(body)?),
        Op::DiscardPages => {
            let (unit_bytes, bytes) = counted(name, body, READ_ENTRY_LEN, false)?;
            Request::DiscardPages(ReadEntries { unit_bytes, bytes })
        }
        Op::Stats => {
            expect_len(name, body, 0)?;
            Request::Stats
        }
    })
}

/// Decodes a response body. `header` must have come from [`Header::decode`].
pub fn decode_response<'a>(header: &Header, body: &'a [u8]) -> Result<Response<'a>, DecodeError> {
    if header.kind & RESPONSE_BIT == 0 {
        return Err(DecodeError::UnknownKind(header.kind));
    }
    let op = Op::from_kind(header.kind).ok_or(DecodeError::UnknownKind(header.kind))?;
    let name = op.name();
    if header.status != 0 {
        if body.len() > MAX_ERROR_MESSAGE_BYTES {
            return Err(malformed(name, "error message too long"));
        }
        let message = std::str::from_utf8(body).map_err(|_| malformed(name, "error message is not UTF-8"))?;
        return Ok(Response::Error { code: header.status, message });
    }
    Ok(match op {
        Op::Hello => {
            expect_len(name, body, SERVER_HELLO_LEN)?;
            Response::Hello(ServerHello {
                version: read_u32(body, 0),
                page_size: read_u32(body, 4),
                slab_size_bytes: read_u64(body, 8),
                capacity_bytes: read_u64(body, 16),
                server_id: read_u64(body, 24),
                nonce: read_array(body, 32),
                proof: read_array(body, 32 + NONCE_LEN),
            })
        }
        Op::Auth => {
            expect_len(name, body, 0)?;
            Response::Authenticated
        }
        Op::AllocSlab => {
            expect_len(name, body, SLAB_HANDLE_LEN)?;
            Response::SlabAllocated { slab: read_slab(body, 0) }
        }
        Op::FreeSlab => {
            expect_len(name, body, 0)?;
            Response::SlabFreed
        }
        Op::ReadPages => {
            let (unit_bytes, bytes) = counted(name, body, PAGE_ENTRY_HEAD, true)?;
            Response::Pages(PageEntries { unit_bytes, bytes })
        }
        Op::WritePages | Op::CopyPages | Op::PushPages | Op::DiscardPages => {
            expect_len(name, body, 4)?;
            Response::Written { count: read_u32(body, 0) }
        }
        Op::Stats => {
            expect_len(name, body, ServerStats::FIELDS * 8)?;
            let mut a = [0u64; ServerStats::FIELDS];
            for (i, v) in a.iter_mut().enumerate() {
                *v = read_u64(body, i * 8);
            }
            Response::Stats(ServerStats::from_array(a))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(frame: &[u8]) -> (Header, &[u8]) {
        let mut h = [0u8; HEADER_LEN];
        h.copy_from_slice(&frame[..HEADER_LEN]);
        let header = Header::decode(&h).unwrap();
        assert_eq!(header.body_len as usize, frame.len() - HEADER_LEN);
        (header, &frame[HEADER_LEN..])
    }

    #[test]
    fn write_request_round_trips_with_crcs() {
        let a = vec![1u8; PAGE_SIZE];
        let b: Vec<u8> = (0..PAGE_SIZE).map(|i| i as u8).collect();
        let refs = [PageRef { slab: SlabId(9, 90), page: 3 }, PageRef { slab: SlabId(10, 100), page: 0 }];
        let mut out = Vec::new();
        encode_write_pages(&mut out, 42, PAGE_SIZE as u32, refs.iter().copied().zip([a.as_slice(), b.as_slice()]));
        let (h, body) = split(&out);
        assert_eq!(h.request_id, 42);
        let Request::WritePages(entries) = decode_request(&h, body).unwrap() else { panic!("wrong kind") };
        let got: Vec<_> = entries.iter().collect();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].at, refs[0]);
        assert_eq!(got[1].data, b.as_slice());
        assert_eq!(got[1].crc, page_crc(&b));
    }

    #[test]
    fn read_request_and_response_round_trip() {
        let refs = [PageRef { slab: SlabId(1, u64::MAX), page: 7 }];
        let mut out = Vec::new();
        encode_read_pages(&mut out, 5, PAGE_SIZE as u32, &refs);
        let (h, body) = split(&out);
        let Request::ReadPages(entries) = decode_request(&h, body).unwrap() else { panic!("wrong kind") };
        assert_eq!(entries.iter().collect::<Vec<_>>(), refs);

        let page = vec![0xabu8; PAGE_SIZE];
        let mut out = Vec::new();
        let mut f = begin_pages_response(&mut out, 5, 1, PAGE_SIZE as u32);
        f.put_u32(page_crc(&page)).put_bytes(&page);
        f.finish();
        let (h, body) = split(&out);
        let Response::Pages(pages) = decode_response(&h, body).unwrap() else { panic!("wrong kind") };
        let p = pages.iter().next().unwrap();
        assert_eq!((p.crc, p.data), (page_crc(&page), page.as_slice()));
    }

    #[test]
    fn small_messages_round_trip() {
        let mut out = Vec::new();
        let hello = ServerHello {
            version: 1,
            page_size: 4096,
            slab_size_bytes: 1 << 26,
            capacity_bytes: 1 << 30,
            server_id: 77,
            nonce: [3; NONCE_LEN],
            proof: [4; PROOF_LEN],
        };
        encode_hello_ok(&mut out, 1, &hello);
        let (h, body) = split(&out);
        assert_eq!(decode_response(&h, body).unwrap(), Response::Hello(hello));

        let mut out = Vec::new();
        let stats = ServerStats {
            capacity_bytes: 1,
            lent_bytes: 2,
            slab_size_bytes: 3,
            slabs: 4,
            clients: 5,
            connections: 6,
            pages_read: 7,
            pages_written: 8,
            errors: 9,
            units_discarded: 10,
        };
        encode_stats_response(&mut out, 2, &stats);
        let (h, body) = split(&out);
        assert_eq!(decode_response(&h, body).unwrap(), Response::Stats(stats));

        let mut out = Vec::new();
        encode_hello(&mut out, 3, 1, 99, &[7; NONCE_LEN]);
        let (h, body) = split(&out);
        assert_eq!(
            decode_request(&h, body).unwrap(),
            Request::Hello { version: 1, client_id: 99, nonce: [7; NONCE_LEN] }
        );

        let mut out = Vec::new();
        encode_auth(&mut out, 4, &[8; PROOF_LEN]);
        let (h, body) = split(&out);
        assert_eq!(decode_request(&h, body).unwrap(), Request::Auth { proof: [8; PROOF_LEN] });
        let mut out = Vec::new();
        encode_authenticated(&mut out, 4);
        let (h, body) = split(&out);
        assert_eq!(decode_response(&h, body).unwrap(), Response::Authenticated);

        let mut out = Vec::new();
        encode_slab_allocated(&mut out, 5, SlabId(1, 2));
        let (h, body) = split(&out);
        assert_eq!(decode_response(&h, body).unwrap(), Response::SlabAllocated { slab: SlabId(1, 2) });

        let mut out = Vec::new();
        encode_alloc_slab(&mut out, 4, 1024);
        let (h, body) = split(&out);
        assert_eq!(decode_request(&h, body).unwrap(), Request::AllocSlab { unit_bytes: 1024 });
    }

    #[test]
    fn discards_round_trip_as_their_own_kind() {
        let refs = [PageRef { slab: SlabId(4, 40), page: 9 }, PageRef { slab: SlabId(4, 40), page: 10 }];
        let mut out = Vec::new();
        encode_discard_pages(&mut out, 7, 1024, &refs);
        let (h, body) = split(&out);
        assert_eq!(h.kind, Op::DiscardPages as u16);
        let Request::DiscardPages(entries) = decode_request(&h, body).unwrap() else { panic!("wrong kind") };
        assert_eq!(entries.unit_bytes(), 1024);
        assert_eq!(entries.iter().collect::<Vec<_>>(), refs.to_vec());
        let mut out = Vec::new();
        encode_written(&mut out, Op::DiscardPages, 7, 2);
        let (h, body) = split(&out);
        assert_eq!(decode_response(&h, body).unwrap(), Response::Written { count: 2 });
    }

    #[test]
    fn copies_round_trip_as_their_own_kind() {
        let page = vec![3u8; PAGE_SIZE];
        let at = PageRef { slab: SlabId(4, 40), page: 9 };
        let mut out = Vec::new();
        encode_copy_units(&mut out, 6, PAGE_SIZE as u32, std::iter::once((at, page_crc(&page), page.as_slice())));
        let (h, body) = split(&out);
        assert_eq!(h.kind, Op::CopyPages as u16);
        let Request::CopyPages(entries) = decode_request(&h, body).unwrap() else { panic!("wrong kind") };
        let got: Vec<_> = entries.iter().map(|e| (e.at, e.crc, e.data.to_vec())).collect();
        assert_eq!(got, vec![(at, page_crc(&page), page.clone())]);
        let mut out = Vec::new();
        encode_written(&mut out, Op::CopyPages, 6, 0);
        let (h, body) = split(&out);
        assert_eq!(h.kind, Op::CopyPages as u16 | RESPONSE_BIT);
        assert_eq!(decode_response(&h, body).unwrap(), Response::Written { count: 0 });
    }

    #[test]
    fn fragment_units_round_trip_and_bad_units_are_malformed() {
        let frags: Vec<Vec<u8>> = (0..3u8).map(|i| vec![i; 1024]).collect();
        let refs: Vec<PageRef> = (0..3).map(|i| PageRef { slab: SlabId(7, 70), page: i }).collect();
        let mut out = Vec::new();
        encode_write_pages(&mut out, 1, 1024, refs.iter().copied().zip(frags.iter().map(|f| f.as_slice())));
        let (h, body) = split(&out);
        assert_eq!(body.len(), 8 + 3 * (WRITE_ENTRY_HEAD + 1024));
        let Request::WritePages(entries) = decode_request(&h, body).unwrap() else { panic!("wrong kind") };
        assert_eq!(entries.unit_bytes(), 1024);
        let got: Vec<_> = entries.iter().map(|e| (e.at, e.data.to_vec(), e.crc)).collect();
        assert_eq!(got[2], (refs[2], frags[2].clone(), page_crc(&frags[2])));

        let mut out = Vec::new();
        let mut f = begin_pages_response(&mut out, 2, 2, 64);
        for f_ in [&[1u8; 64], &[2u8; 64]] {
            f.put_u32(page_crc(f_)).put_bytes(f_);
        }
        f.finish();
        let (h, body) = split(&out);
        let Response::Pages(units) = decode_response(&h, body).unwrap() else { panic!("wrong kind") };
        assert_eq!((units.len(), units.unit_bytes()), (2, 64));
        assert_eq!(units.iter().nth(1).unwrap().data, &[2u8; 64]);

        let h = |kind, len| Header { kind, status: 0, request_id: 1, body_len: len };
        for bad in [0u32, 32, 100, 8192] {
            let body = bad.to_le_bytes();
            assert!(matches!(decode_request(&h(2, 4), &body), Err(DecodeError::Malformed { .. })), "unit {bad}");
            let mut body = 0u32.to_le_bytes().to_vec();
            body.extend_from_slice(&bad.to_le_bytes());
            assert!(matches!(decode_request(&h(4, 8), &body), Err(DecodeError::Malformed { .. })), "unit {bad}");
        }
    }

    #[test]
    fn error_messages_are_cut_on_a_char_boundary() {
        let long = "é".repeat(MAX_ERROR_MESSAGE_BYTES);
        let mut out = Vec::new();
        encode_error(&mut out, 1, Op::AllocSlab as u16, ErrorCode::NoCapacity, &long);
        let (h, body) = split(&out);
        let Response::Error { code, message } = decode_response(&h, body).unwrap() else { panic!("wrong kind") };
        assert_eq!(code, ErrorCode::NoCapacity as u16);
        assert!(message.len() <= MAX_ERROR_MESSAGE_BYTES && message.chars().all(|c| c == 'é'));
    }

    #[test]
    fn malformed_bodies_are_errors_not_panics() {
        let h = |kind, len| Header { kind, status: 0, request_id: 1, body_len: len };
        // count says 2 entries but only one is there
        let mut body = 2u32.to_le_bytes().to_vec();
        body.extend_from_slice(&4096u32.to_le_bytes());
        body.extend_from_slice(&[0u8; READ_ENTRY_LEN]);
        assert!(matches!(decode_request(&h(4, body.len() as u32), &body), Err(DecodeError::Malformed { .. })));
        // count over the batch limit
        let mut body = (MAX_BATCH_PAGES as u32 + 1).to_le_bytes().to_vec();
        body.extend_from_slice(&4096u32.to_le_bytes());
        assert!(matches!(decode_request(&h(5, 8), &body), Err(DecodeError::BatchTooLarge(_))));
        // unknown kinds, responses sent as requests
        assert!(matches!(decode_request(&h(99, 0), &[]), Err(DecodeError::UnknownKind(99))));
        assert!(matches!(decode_request(&h(0x8001, 0), &[]), Err(DecodeError::UnknownKind(_))));
        // short hello
        assert!(decode_request(&h(1, 3), &[1, 2, 3]).is_err());
        // non-UTF-8 error message
        let bad = Header { kind: 0x8002, status: 6, request_id: 1, body_len: 2 };
        assert!(decode_response(&bad, &[0xff, 0xfe]).is_err());
    }
}
