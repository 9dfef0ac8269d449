#![no_main]
//! See cairn_ingest::fuzzing: the qcow2 reader on arbitrary image bytes.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    cairn_ingest::fuzzing::qcow2(data);
});
