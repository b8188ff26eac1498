//! The default store's decoder of a stored value (CRC, revision, lease, bytes), which
//! whoever can write the store's file controls: refused or decoded, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = krak_meta_redb::fuzzing::decode_value(data);
});
