//! The MAC trailer check of an authenticated connection: any bytes as header, body and
//! trailer, in sequence, must be refused or accepted without panicking, and nothing but
//! a frame sealed by the peer may be accepted.
#![no_main]

use krak_proto::{FrameMac, MacKey, Side, HEADER_LEN, MAC_LEN};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let key = MacKey::from_bytes([7; 32]);
    let mut server = FrameMac::new(&key, Side::Server);
    let mut client = FrameMac::new(&key, Side::Client);
    // Split the input into frames of header + body + trailer, the body length from byte 0.
    let mut rest = data;
    while rest.len() > HEADER_LEN + MAC_LEN {
        let body_len = (rest[0] as usize).min(rest.len() - HEADER_LEN - MAC_LEN);
        let (head, tail) = rest.split_at(HEADER_LEN);
        let (body, tail) = tail.split_at(body_len);
        let (trailer, tail) = tail.split_at(MAC_LEN);
        let head: [u8; HEADER_LEN] = head.try_into().unwrap();
        let trailer: [u8; MAC_LEN] = trailer.try_into().unwrap();
        // Forged input is refused (a 2^-128 chance aside).
        assert!(server.open(&head, body, &trailer).is_err());
        // The same bytes sealed by the client are accepted, in order.
        let mut frame = head.to_vec();
        frame.extend_from_slice(body);
        client.seal(&mut frame, 0);
        let sealed: [u8; MAC_LEN] = frame[frame.len() - MAC_LEN..].try_into().unwrap();
        let mut fresh = FrameMac::new(&key, Side::Server);
        let _ = fresh.open(&head, body, &sealed);
        rest = tail;
    }
});
