#![no_main]
//! Windows registry hives from a guest: the regf reader and the
//! persistence checks on Run keys, Winlogon and services.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    cairn_scan::fuzzing::registry(data);
});
