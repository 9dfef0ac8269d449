#![no_main]
//! See cairn_guest::fuzzing: the partition parser on arbitrary bytes.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    cairn_guest::fuzzing::partitions(data);
});
