//! What a controller reads from the network before trusting it: the Authorization header
//! and every JSON request body of its API, and the HTTP request framing before them (hyper's,
//! and the server's bounds on it); and the raw-answer reader the tests use. (The clients read
//! answers with ureq, fuzzed upstream.)
//! Anything may be refused; nothing may panic.
#![no_main]

use krak_auth::RackSecret;
use krak_api::signing::parse_header;
use krak_controller::auth::{verify_request, ReplayGuard};
use krak_controller::http::answer_raw;
use krak_api::messages::{
    parse_region, parse_server, CommitRequest, CreateRegionRequest, HeartbeatRequest, MoveStartRequest, PlaceRequest,
    PolicyBody, RegisterRequest,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = serde_json::from_slice::<RegisterRequest>(data);
    let _ = serde_json::from_slice::<HeartbeatRequest>(data);
    let _ = serde_json::from_slice::<CreateRegionRequest>(data);
    let _ = serde_json::from_slice::<PlaceRequest>(data);
    let _ = serde_json::from_slice::<CommitRequest>(data);
    let _ = serde_json::from_slice::<MoveStartRequest>(data);
    let _ = serde_json::from_slice::<PolicyBody>(data);
    let _ = krak_controller::http::split_answer(data);
    // hyper's framing and the server's bounds, with a handler that checks what reaches it
    let _ = answer_raw(data, 1 << 10);
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = parse_header(text);
        let _ = krak_api::signing::boot_of_refusal(data);
        let _ = parse_region(text);
        let _ = parse_server(text);
        let guard = ReplayGuard::default();
        let secret = RackSecret::from_bytes([1; 32]);
        // A header the fuzzer made up never verifies.
        assert!(verify_request(&secret, &guard, 1 << 40, Some(7), "POST", "/v1/servers", data, Some(text)).is_err());
    }
});
