//! The handshake's messages: any bytes as a hello, a server hello or an auth body decode
//! to an error or to a message whose proofs are checked without panicking.
#![no_main]

use krak_proto::{
    decode_request, decode_response, proof_matches, Header, Op, RackSecret, Request, Response, Transcript, RESPONSE_BIT,
};
use libfuzzer_sys::fuzz_target;

fn zero_hello() -> krak_proto::ServerHello {
    krak_proto::ServerHello {
        version: krak_proto::PROTOCOL_VERSION,
        page_size: 4096,
        slab_size_bytes: 1 << 20,
        capacity_bytes: 1 << 30,
        server_id: 1,
        nonce: [0; 32],
        proof: [0; 32],
    }
}

fuzz_target!(|data: &[u8]| {
    let secret = RackSecret::from_bytes([3; 32]);
    for kind in [Op::Hello as u16, Op::Auth as u16] {
        let h = Header { kind, status: 0, request_id: 1, body_len: data.len() as u32 };
        if let Ok(Request::Hello { version, client_id, nonce }) = decode_request(&h, data) {
            let _ = (version, client_id, nonce);
        }
        if let Ok(Request::Auth { proof }) = decode_request(&h, data) {
            let t = Transcript {
                version: krak_proto::PROTOCOL_VERSION,
                client_id: 1,
                client_nonce: [0; 32],
                server: zero_hello(),
            };
            let _ = proof_matches(&t.client_proof(&secret), &proof);
        }
        let h = Header { kind: kind | RESPONSE_BIT, ..h };
        if let Ok(Response::Hello(server)) = decode_response(&h, data) {
            let t = Transcript { version: krak_proto::PROTOCOL_VERSION, client_id: 1, client_nonce: [0; 32], server };
            let _ = proof_matches(&t.server_proof(&secret), &server.proof);
            let _ = t.session_key(&secret);
        }
    }
});
