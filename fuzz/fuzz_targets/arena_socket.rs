//! The messages of `krak run --pager separate`'s socket (`krak_arena::wire`): any
//! bytes must decode to a request, an answer or a typed error, never a panic, and whatever
//! decodes must encode back to the same bytes (answers: within the encoder's bounds).
#![no_main]

use krak_arena::wire::{Answer, Request, MAX_REASON_BYTES};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(request) = Request::decode(data) {
        assert_eq!(request.encode(), data);
    }
    if let Ok(answer) = Answer::decode(data) {
        let again = answer.encode();
        assert_eq!(Answer::decode(&again).unwrap(), answer);
        if let Answer::Failed(why) = &answer {
            assert!(why.len() <= MAX_REASON_BYTES);
        }
    }
});
