#![no_main]
//! See cairn_guest::fuzzing: the ext4 reader on arbitrary partition bytes.
use libfuzzer_sys::fuzz_target;

fuzz_target!(init: cairn_guest::fuzzing::abort_only_on_own_panics(), |data: &[u8]| {
    cairn_guest::fuzzing::filesystem("ext4", data);
});
