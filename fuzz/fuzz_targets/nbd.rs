#![no_main]
//! The NBD server's side of a session: the handshake's options, then
//! read, write, trim, flush and block-status requests, from a client that
//! sends anything at all.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    cairn_expose::nbd::fuzz_session(data);
});
