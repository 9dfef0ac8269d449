#![no_main]
//! The scanner's parsers of guest and advisory data: dpkg status, apk
//! database, os-release, OSV records and their matching, dpkg and apk
//! version ordering, CVSS vectors, passwd/shadow, line diffs and Windows
//! shortcuts (.lnk).
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    cairn_scan::fuzzing::scan_parsers(data);
});
