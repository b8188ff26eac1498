//! A stable-toolchain stand-in for the `decode_frame` fuzzer (fuzz/), run with every
//! `cargo test`: random byte strings and mutated valid frames go through `Header::decode`,
//! `decode_request` and `decode_response`, every entry is walked, and nothing may panic.
//! Valid frames from every encoder must still decode to exactly what was encoded.
//!
//! Deterministic (fixed seeds, an in-file PRNG): a failure names its case and reproduces.

use krak_proto::*;

/// splitmix64: small, fast, good enough to drive a fuzzer, and no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn chance(&mut self, one_in: usize) -> bool {
        self.below(one_in) == 0
    }
    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
    fn bytes(&mut self, len: usize) -> Vec<u8> {
        let mut v = vec![0; len];
        self.fill(&mut v);
        v
    }
}

/// What decoding one frame found (for the statistics printed at the end).
#[derive(Debug, Default)]
struct Seen {
    headers_ok: u64,
    requests_ok: u64,
    responses_ok: u64,
    entries: u64,
}

/// The fuzz target's body: decode the header, then the body as a request and as a
/// response (each direction tried), walking every entry. Panics only on a decoder bug.
fn decode_everything(data: &[u8], seen: &mut Seen) {
    let Some((head, body)) = data.split_first_chunk::<HEADER_LEN>() else { return };
    let Ok(header) = Header::decode(head) else { return };
    seen.headers_ok += 1;
    assert!(header.body_len as usize <= MAX_BODY_BYTES);
    let body = &body[..body.len().min(header.body_len as usize)];
    for kind in [header.kind & !RESPONSE_BIT, header.kind | RESPONSE_BIT] {
        let h = Header { kind, ..header };
        if let Ok(request) = decode_request(&h, body) {
            seen.requests_ok += 1;
            match request {
                Request::ReadPages(entries) | Request::DiscardPages(entries) => {
                    assert!(entries.len() <= MAX_BATCH_PAGES);
                    assert_eq!(entries.iter().count(), entries.len());
                    assert_eq!(entries.is_empty(), entries.iter().next().is_none());
                    seen.entries += entries.len() as u64;
                }
                Request::WritePages(entries) => {
                    assert!(entries.len() <= MAX_BATCH_PAGES);
                    let mut n = 0;
                    assert!(valid_unit_bytes(entries.unit_bytes()));
                    for e in entries.iter() {
                        assert_eq!(e.data.len(), entries.unit_bytes() as usize);
                        let _ = page_crc(e.data) == e.crc;
                        n += 1;
                    }
                    assert_eq!(n, entries.len());
                    seen.entries += n as u64;
                }
                _ => {}
            }
        }
        if let Ok(response) = decode_response(&h, body) {
            seen.responses_ok += 1;
            match response {
                Response::Pages(pages) => {
                    assert!(pages.len() <= MAX_BATCH_PAGES);
                    let mut n = 0;
                    assert!(valid_unit_bytes(pages.unit_bytes()));
                    for p in pages.iter() {
                        assert_eq!(p.data.len(), pages.unit_bytes() as usize);
                        n += 1;
                    }
                    assert_eq!(n, pages.len());
                    seen.entries += n as u64;
                }
                Response::Error { message, .. } => assert!(message.len() <= MAX_ERROR_MESSAGE_BYTES),
                _ => {}
            }
        }
    }
}

/// Splits a well-formed frame; panics if the header does not decode or the length is off.
fn split(frame: &[u8]) -> (Header, &[u8]) {
    let (head, body) = frame.split_first_chunk::<HEADER_LEN>().expect("a whole header");
    let header = Header::decode(head).expect("an encoder's header decodes");
    assert_eq!(header.body_len as usize, body.len(), "body_len is the body's length");
    (header, body)
}

fn random_page(rng: &mut Rng) -> Vec<u8> {
    random_unit(rng, PAGE_SIZE)
}

fn random_unit(rng: &mut Rng, unit_bytes: usize) -> Vec<u8> {
    // Mostly random, sometimes all one byte (zero pages are common in practice).
    if rng.chance(4) {
        vec![rng.next() as u8; unit_bytes]
    } else {
        rng.bytes(unit_bytes)
    }
}

/// A valid unit size, whole pages half of the time (what unreplicated regions use).
fn random_unit_bytes(rng: &mut Rng) -> u32 {
    if rng.chance(2) {
        PAGE_SIZE as u32
    } else {
        (MIN_UNIT_BYTES << rng.below(7)) as u32
    }
}

fn random_refs(rng: &mut Rng, max: usize) -> Vec<PageRef> {
    let n = rng.below(max + 1);
    (0..n).map(|_| PageRef { slab: SlabId(rng.next(), rng.next()), page: rng.next() as u32 }).collect()
}

/// One valid frame from a random encoder, after checking that it decodes back to exactly
/// what went in.
fn valid_frame(rng: &mut Rng) -> Vec<u8> {
    let mut out = Vec::new();
    let id = rng.next();
    match rng.below(13) {
        0 => {
            let (version, client_id) = (rng.next() as u32, rng.next());
            let mut nonce = [0u8; NONCE_LEN];
            rng.fill(&mut nonce);
            encode_hello(&mut out, id, version, client_id, &nonce);
            let (h, body) = split(&out);
            assert_eq!(decode_request(&h, body).unwrap(), Request::Hello { version, client_id, nonce });
        }
        1 => {
            let unit_bytes = random_unit_bytes(rng);
            encode_alloc_slab(&mut out, id, unit_bytes);
            let (h, body) = split(&out);
            assert_eq!(decode_request(&h, body).unwrap(), Request::AllocSlab { unit_bytes });
        }
        2 => {
            let slab = SlabId(rng.next(), rng.next());
            encode_free_slab(&mut out, id, slab);
            let (h, body) = split(&out);
            assert_eq!(decode_request(&h, body).unwrap(), Request::FreeSlab { slab });
        }
        3 if rng.chance(2) => {
            let mut proof = [0u8; PROOF_LEN];
            rng.fill(&mut proof);
            encode_auth(&mut out, id, &proof);
            let (h, body) = split(&out);
            assert_eq!(decode_request(&h, body).unwrap(), Request::Auth { proof });
        }
        3 => {
            encode_stats(&mut out, id);
            let (h, body) = split(&out);
            assert_eq!(decode_request(&h, body).unwrap(), Request::Stats);
        }
        4 => {
            let refs = random_refs(rng, MAX_BATCH_PAGES);
            let unit_bytes = random_unit_bytes(rng);
            encode_read_pages(&mut out, id, unit_bytes, &refs);
            let (h, body) = split(&out);
            let Request::ReadPages(entries) = decode_request(&h, body).unwrap() else { panic!("not a read") };
            assert_eq!(entries.iter().collect::<Vec<_>>(), refs);
            assert_eq!(entries.unit_bytes(), unit_bytes);
        }
        5 => {
            // Writes are large; keep most batches small so the test stays fast.
            let max = if rng.chance(50) { MAX_BATCH_PAGES } else { 4 };
            let refs = random_refs(rng, max);
            let unit_bytes = random_unit_bytes(rng);
            let pages: Vec<Vec<u8>> = refs.iter().map(|_| random_unit(rng, unit_bytes as usize)).collect();
            encode_write_pages(&mut out, id, unit_bytes, refs.iter().copied().zip(pages.iter().map(|p| p.as_slice())));
            let (h, body) = split(&out);
            let Request::WritePages(entries) = decode_request(&h, body).unwrap() else { panic!("not a write") };
            assert_eq!((entries.len(), entries.unit_bytes()), (refs.len(), unit_bytes));
            for ((e, at), page) in entries.iter().zip(&refs).zip(&pages) {
                assert_eq!((e.at, e.data, e.crc), (*at, page.as_slice(), page_crc(page)));
            }
        }
        6 => {
            let mut hello = ServerHello {
                version: rng.next() as u32,
                page_size: rng.next() as u32,
                slab_size_bytes: rng.next(),
                capacity_bytes: rng.next(),
                server_id: rng.next(),
                nonce: [0; NONCE_LEN],
                proof: [0; PROOF_LEN],
            };
            rng.fill(&mut hello.nonce);
            rng.fill(&mut hello.proof);
            encode_hello_ok(&mut out, id, &hello);
            let (h, body) = split(&out);
            assert_eq!(decode_response(&h, body).unwrap(), Response::Hello(hello));
        }
        7 => {
            let slab = SlabId(rng.next(), rng.next());
            encode_slab_allocated(&mut out, id, slab);
            let (h, body) = split(&out);
            assert_eq!(decode_response(&h, body).unwrap(), Response::SlabAllocated { slab });
        }
        8 if rng.chance(2) => {
            encode_authenticated(&mut out, id);
            let (h, body) = split(&out);
            assert_eq!(decode_response(&h, body).unwrap(), Response::Authenticated);
        }
        8 => {
            encode_slab_freed(&mut out, id);
            let (h, body) = split(&out);
            assert_eq!(decode_response(&h, body).unwrap(), Response::SlabFreed);
        }
        9 => {
            let count = rng.next() as u32;
            encode_written(&mut out, Op::WritePages, id, count);
            let (h, body) = split(&out);
            assert_eq!(decode_response(&h, body).unwrap(), Response::Written { count });
        }
        10 => {
            let stats = ServerStats {
                capacity_bytes: rng.next(),
                lent_bytes: rng.next(),
                slab_size_bytes: rng.next(),
                slabs: rng.next(),
                clients: rng.next(),
                connections: rng.next(),
                pages_read: rng.next(),
                pages_written: rng.next(),
                errors: rng.next(),
                units_discarded: rng.next(),
            };
            encode_stats_response(&mut out, id, &stats);
            let (h, body) = split(&out);
            assert_eq!(decode_response(&h, body).unwrap(), Response::Stats(stats));
        }
        11 => {
            let max = if rng.chance(50) { MAX_BATCH_PAGES } else { 4 };
            let unit_bytes = random_unit_bytes(rng);
            let pages: Vec<Vec<u8>> = (0..rng.below(max + 1)).map(|_| random_unit(rng, unit_bytes as usize)).collect();
            let mut f = begin_pages_response(&mut out, id, pages.len() as u32, unit_bytes);
            for p in &pages {
                f.put_u32(page_crc(p)).put_bytes(p);
            }
            f.finish();
            let (h, body) = split(&out);
            let Response::Pages(got) = decode_response(&h, body).unwrap() else { panic!("not pages") };
            assert_eq!((got.len(), got.unit_bytes()), (pages.len(), unit_bytes));
            for (e, p) in got.iter().zip(&pages) {
                assert_eq!((e.crc, e.data), (page_crc(p), p.as_slice()));
            }
        }
        _ => {
            let codes = [ErrorCode::Malformed, ErrorCode::NoCapacity, ErrorCode::UnknownSlab, ErrorCode::Internal];
            let code = codes[rng.below(codes.len())];
            let kind = [Op::Hello, Op::AllocSlab, Op::ReadPages, Op::WritePages][rng.below(4)] as u16;
            // Any text, sometimes longer than the limit (the encoder cuts it).
            let len = if rng.chance(10) { MAX_ERROR_MESSAGE_BYTES + rng.below(100) } else { rng.below(64) };
            let text: String = (0..len).map(|_| ['a', 'é', '€', ' ', '𝄞'][rng.below(5)]).collect();
            encode_error(&mut out, id, kind, code, &text);
            let (h, body) = split(&out);
            let Response::Error { code: got, message } = decode_response(&h, body).unwrap() else {
                panic!("not an error")
            };
            assert_eq!(got, code as u16);
            assert!(text.starts_with(message) && message.len() <= MAX_ERROR_MESSAGE_BYTES);
        }
    }
    // Either way round it is also a frame of the other direction, which must be rejected.
    let (h, body) = split(&out);
    if h.kind & RESPONSE_BIT == 0 {
        assert!(decode_response(&h, body).is_err(), "a request is not a response");
    } else {
        assert!(decode_request(&h, body).is_err(), "a response is not a request");
    }
    out
}

/// Makes `frame` subtly wrong in one or more ways.
fn mutate(rng: &mut Rng, frame: &mut Vec<u8>) {
    for _ in 0..1 + rng.below(3) {
        match rng.below(7) {
            // flip random bits anywhere
            0 => {
                for _ in 0..1 + rng.below(4) {
                    if !frame.is_empty() {
                        let i = rng.below(frame.len());
                        frame[i] ^= 1 << rng.below(8);
                    }
                }
            }
            // overwrite a byte of the header or of the first entries, where the lengths live
            1 => {
                let span = frame.len().min(HEADER_LEN + 32);
                if span > 0 {
                    let i = rng.below(span);
                    frame[i] = rng.next() as u8;
                }
            }
            // truncate
            2 => {
                let n = rng.below(frame.len() + 1);
                frame.truncate(n);
            }
            // extend with garbage
            3 => {
                let n = 1 + rng.below(64);
                let extra = rng.bytes(n);
                frame.extend_from_slice(&extra);
            }
            // set the page count to something else
            4 => {
                if frame.len() >= HEADER_LEN + 4 {
                    let count: u32 = match rng.below(4) {
                        0 => rng.next() as u32,
                        1 => MAX_BATCH_PAGES as u32 + 1,
                        _ => rng.below(MAX_BATCH_PAGES + 1) as u32,
                    };
                    frame[HEADER_LEN..HEADER_LEN + 4].copy_from_slice(&count.to_le_bytes());
                }
            }
            // set the unit size to another (valid or not)
            5 => {
                if frame.len() >= HEADER_LEN + 8 {
                    let unit: u32 = if rng.chance(2) { random_unit_bytes(rng) } else { rng.next() as u32 };
                    frame[HEADER_LEN + 4..HEADER_LEN + 8].copy_from_slice(&unit.to_le_bytes());
                }
            }
            // change the kind, keeping or flipping the response bit
            _ => {
                if frame.len() >= 6 {
                    let kind = (rng.below(9) as u16) | if rng.chance(2) { RESPONSE_BIT } else { 0 };
                    frame[4..6].copy_from_slice(&kind.to_le_bytes());
                }
            }
        }
    }
    // Usually make body_len agree with what is there, so the decoders see the damage
    // instead of the header check stopping it.
    if frame.len() >= HEADER_LEN && rng.below(4) != 0 {
        let body_len = (frame.len() - HEADER_LEN).min(u32::MAX as usize) as u32;
        frame[16..20].copy_from_slice(&body_len.to_le_bytes());
    }
}

/// Random bytes shaped like a frame often enough to get past the header check, with body
/// lengths that often fit some message exactly so that the body decoders run too.
fn random_frame(rng: &mut Rng) -> Vec<u8> {
    // (body length, entries) of lengths some message has: fixed bodies and counted batches.
    let k = rng.below(3);
    let unit = random_unit_bytes(rng) as usize;
    let shaped = [
        (0, 0),
        (4, 0),
        (16, 0),
        (44, 0),
        (32, 0),
        (96, 0),
        (72, 0),
        (8 + 20 * k, k),
        (8 + (4 + unit) * k, k),
        (8 + (24 + unit) * k, k),
    ];
    let (len, entries) = match rng.below(10) {
        0 => (rng.below(HEADER_LEN), 0),
        1 => (HEADER_LEN + rng.below(2 * (4 + PAGE_SIZE) + 64), 0),
        2 | 3 => (HEADER_LEN + rng.below(64), 0),
        _ => {
            let (body, entries) = shaped[rng.below(shaped.len())];
            (HEADER_LEN + body, entries)
        }
    };
    let mut f = rng.bytes(len);
    if f.len() >= HEADER_LEN {
        if !rng.chance(8) {
            f[..4].copy_from_slice(&MAGIC);
        }
        if !rng.chance(8) {
            f[20..24].fill(0);
        }
        if !rng.chance(4) {
            let kind = (1 + rng.below(7) as u16) | if rng.chance(2) { RESPONSE_BIT } else { 0 };
            f[4..6].copy_from_slice(&kind.to_le_bytes());
        }
        if !rng.chance(4) {
            f[6..8].fill(0);
        }
        if !rng.chance(8) {
            f[16..20].copy_from_slice(&((len - HEADER_LEN) as u32).to_le_bytes());
        }
        if f.len() >= HEADER_LEN + 4 && !rng.chance(4) {
            let count = if rng.chance(4) { rng.below(4) } else { entries } as u32;
            f[HEADER_LEN..HEADER_LEN + 4].copy_from_slice(&count.to_le_bytes());
        }
        if f.len() >= HEADER_LEN + 8 && !rng.chance(4) {
            f[HEADER_LEN + 4..HEADER_LEN + 8].copy_from_slice(&(unit as u32).to_le_bytes());
        }
    }
    f
}

#[test]
fn random_byte_strings_never_panic_the_decoders() {
    let mut rng = Rng(0x6b72_616b);
    let mut seen = Seen::default();
    for _ in 0..200_000 {
        let f = random_frame(&mut rng);
        decode_everything(&f, &mut seen);
    }
    eprintln!("random frames: {seen:?}");
    // The generator must actually reach the body decoders, or this test checks little.
    assert!(seen.headers_ok > 100_000, "{seen:?}");
    assert!(seen.requests_ok > 1_000 && seen.responses_ok > 1_000, "{seen:?}");
    assert!(seen.entries > 100, "{seen:?}");
}

#[test]
fn mutated_valid_frames_never_panic_the_decoders() {
    let mut rng = Rng(0x6672_616d_6573);
    let mut seen = Seen::default();
    let mut frames = 0;
    while frames < 50_000 {
        let valid = valid_frame(&mut rng);
        // Each valid frame, whole and in many damaged forms.
        decode_everything(&valid, &mut seen);
        for _ in 0..4 {
            let mut f = valid.clone();
            mutate(&mut rng, &mut f);
            decode_everything(&f, &mut seen);
            frames += 1;
        }
        // Glued to another frame: a stream reader takes only body_len bytes.
        let mut two = valid.clone();
        two.extend_from_slice(&random_frame(&mut rng));
        decode_everything(&two, &mut seen);
    }
    eprintln!("mutated frames: {seen:?}");
    assert!(seen.requests_ok > 1_000 && seen.responses_ok > 1_000, "{seen:?}");
}

#[test]
fn a_damaged_page_is_caught_by_its_crc() {
    // Decoding does not check page CRCs (the receiver does); any single corrupted byte of
    // a page must make its CRC-32C disagree.
    let mut rng = Rng(42);
    for _ in 0..2_000 {
        let page = random_page(&mut rng);
        let refs = [PageRef { slab: SlabId(rng.next(), rng.next()), page: rng.next() as u32 }];
        let mut out = Vec::new();
        encode_write_pages(&mut out, 1, PAGE_SIZE as u32, refs.iter().copied().zip([page.as_slice()]));
        let at = HEADER_LEN + 8 + SLAB_HANDLE_LEN + 8 + rng.below(PAGE_SIZE);
        out[at] ^= 1 + rng.below(255) as u8;
        let (h, body) = split(&out);
        let Request::WritePages(entries) = decode_request(&h, body).unwrap() else { panic!("not a write") };
        let e = entries.iter().next().unwrap();
        assert_ne!(page_crc(e.data), e.crc, "corruption at byte {at} went unnoticed");
    }
}

#[test]
fn every_header_prefix_and_every_kind_is_handled() {
    // Exhaustive over the small fields: every kind (with and without the response bit) and
    // several statuses, with empty and short bodies.
    let mut seen = Seen::default();
    for kind in 0..=20u16 {
        for kind in [kind, kind | RESPONSE_BIT] {
            for status in [0u16, 1, 6, 12, 13, u16::MAX] {
                for body_len in [0usize, 1, 3, 4, 8, 12, 16, 32, 72, 4100] {
                    let mut f = Header { kind, status, request_id: 9, body_len: body_len as u32 }.encode().to_vec();
                    f.resize(HEADER_LEN + body_len, 0);
                    decode_everything(&f, &mut seen);
                    // and with the body cut short by one byte
                    if body_len > 0 {
                        decode_everything(&f[..f.len() - 1], &mut seen);
                    }
                }
            }
        }
    }
    // Oversized and reserved-bit headers are refused before any body is looked at.
    let big = Header { kind: 5, status: 0, request_id: 0, body_len: MAX_BODY_BYTES as u32 + 1 }.encode();
    assert!(Header::decode(&big).is_err());
    let max = Header { kind: 5, status: 0, request_id: 0, body_len: MAX_BODY_BYTES as u32 }.encode();
    assert!(Header::decode(&max).is_ok());
    assert!(seen.requests_ok > 0 && seen.responses_ok > 0);
}

#[test]
fn sealed_frames_open_and_every_damaged_or_replayed_one_is_refused() {
    // The MAC trailer check, driven like the decoders above: valid frames sealed by one end
    // open at the other, in order; any mutation, a replay or a skipped frame fails.
    let mut rng = Rng(0x6d61_6373);
    let key = MacKey::from_bytes({
        let mut k = [0u8; 32];
        rng.fill(&mut k);
        k
    });
    let mut client = FrameMac::new(&key, Side::Client);
    let mut server = FrameMac::new(&key, Side::Server);
    let (mut opened, mut refused) = (0u64, 0u64);
    for _ in 0..5_000 {
        let mut frame = valid_frame(&mut rng);
        let len = frame.len();
        client.seal(&mut frame, 0);
        let split = |f: &[u8]| -> Option<([u8; HEADER_LEN], Vec<u8>, [u8; MAC_LEN])> {
            if f.len() < HEADER_LEN + MAC_LEN {
                return None;
            }
            let n = f.len();
            Some((
                f[..HEADER_LEN].try_into().ok()?,
                f[HEADER_LEN..n - MAC_LEN].to_vec(),
                f[n - MAC_LEN..].try_into().ok()?,
            ))
        };
        // A damaged copy, checked at a clone of the receiver (the same sequence number).
        let mut bad = frame.clone();
        mutate(&mut rng, &mut bad);
        if bad != frame {
            if let Some((h, b, t)) = split(&bad) {
                assert!(server.clone().open(&h, &b, &t).is_err(), "a damaged frame opened");
                refused += 1;
            }
        }
        let (h, b, t) = split(&frame).unwrap();
        assert_eq!(b.len(), len - HEADER_LEN);
        server.open(&h, &b, &t).expect("a sealed frame opens");
        // Replayed at once: the receiver is one frame further on.
        assert!(server.clone().open(&h, &b, &t).is_err(), "a replayed frame opened");
        opened += 1;
    }
    eprintln!("sealed frames: {opened} opened, {refused} damaged copies refused");
    assert!(refused > 1_000);
}
