#![no_main]
//! The framing of stored objects (raw, one zstd frame, a zstd frame per
//! 64 KiB block), as read after decryption: whole, and block by block.
//! Objects are authenticated before they are unframed, so this is defence
//! in depth: no input may panic or decode past its recorded length.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let raw_len = 3 * cairn_vault::BLOCK_SIZE - 100;
    let _ = cairn_vault::codec::unframe(data, raw_len);
    for (first, last) in [(0, 0), (1, 2), (2, 2), (0, 3)] {
        if let Ok(out) = cairn_vault::codec::unframe_blocks(data, raw_len, first, last) {
            assert!(out.len() <= raw_len);
        }
    }
});
