//! Feeds arbitrary bytes to the frame decoders a memory server (and a client) runs on
//! peer input: the header, then the body as a request and as a response, walking every
//! entry. Any panic is a bug: decoders must return `DecodeError` instead.
#![no_main]

use krak_proto::{decode_request, decode_response, Header, Request, Response, HEADER_LEN, MAX_BODY_BYTES};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((head, body)) = data.split_first_chunk::<HEADER_LEN>() else { return };
    let Ok(header) = Header::decode(head) else { return };
    assert!(header.body_len as usize <= MAX_BODY_BYTES);
    let body = &body[..body.len().min(header.body_len as usize)];
    // Try the body under both directions: flip the response bit so each decoder sees it.
    for kind in [header.kind & 0x7fff, header.kind | 0x8000] {
        let h = Header { kind, ..header };
        if let Ok(request) = decode_request(&h, body) {
            match request {
                Request::ReadPages(entries) | Request::DiscardPages(entries) => {
                    assert_eq!(entries.iter().count(), entries.len());
                }
                Request::WritePages(entries) | Request::CopyPages(entries) => {
                    assert!(krak_proto::valid_unit_bytes(entries.unit_bytes()));
                    for e in entries.iter() {
                        assert_eq!(e.data.len(), entries.unit_bytes() as usize);
                        let _ = krak_proto::page_crc(e.data) == e.crc;
                    }
                }
                Request::PushPages(push) => {
                    assert!(krak_proto::valid_unit_bytes(push.unit_bytes()));
                    assert!(push.len() <= krak_proto::MAX_BATCH_PAGES && push.to.port() != 0);
                    assert_eq!(push.iter().count(), push.len());
                }
                _ => {}
            }
        }
        if let Ok(response) = decode_response(&h, body) {
            match response {
                Response::Pages(pages) => {
                    assert!(krak_proto::valid_unit_bytes(pages.unit_bytes()));
                    for p in pages.iter() {
                        assert_eq!(p.data.len(), pages.unit_bytes() as usize);
                    }
                }
                Response::Error { message, .. } => assert!(message.len() <= krak_proto::MAX_ERROR_MESSAGE_BYTES),
                _ => {}
            }
        }
    }
});
