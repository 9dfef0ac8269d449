#![no_main]
//! An RPM database in SQLite form from a guest (rpmdb.sqlite): opened
//! read-only by SQLite, every header blob of its Packages table parsed.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    cairn_scan::fuzzing::rpmdb(data);
});
