//! The etcd client's decoders of what etcd (or anyone on its port) answers: the HTTP
//! framing and a range answer's JSON. Refused or decoded, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = krak_meta_etcd::fuzzing::read_http_answer(data);
    let _ = krak_meta_etcd::fuzzing::parse_range_answer(data);
});
