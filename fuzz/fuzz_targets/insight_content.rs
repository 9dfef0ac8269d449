#![no_main]
//! Insight's file-content checks (type sniffing, ZIP/PDF/JPEG/PNG/SQLite
//! structure, text share, ransom-note wording) on arbitrary file bytes.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    cairn_insight::content::fuzz_one(data);
});
