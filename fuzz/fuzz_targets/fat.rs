#![no_main]
//! See cairn_guest::fuzzing: the fat parser on arbitrary bytes.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    cairn_guest::fuzzing::filesystem("fat", data);
});
