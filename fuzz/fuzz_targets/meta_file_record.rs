//! The file store's decoders of its own files (WAL records, whole logs, snapshots), which whoever can
//! write the store's directory controls: refused or decoded, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = krak_meta_file::fuzzing::decode_record(data);
    let _ = krak_meta_file::fuzzing::decode_payload(data);
    let _ = krak_meta_file::fuzzing::replay_log(data);
    let _ = krak_meta_file::fuzzing::decode_snapshot(data);
});
