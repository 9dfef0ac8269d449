//! How plaintext becomes a stored object: frame (compressed or raw), then
//! seal. High-entropy data is stored raw, since zstd would spend time and
//! win nothing.

use crate::crypto::Cipher;
use crate::entropy::sampled_entropy;
use crate::error::{Error, Result};

const RAW: u8 = 0;
const ZSTD: u8 = 1;

thread_local! {
    static COMPRESSOR: std::cell::RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> = const { std::cell::RefCell::new(None) };
    static DECOMPRESSOR: std::cell::RefCell<zstd::bulk::Decompressor<'static>> =
        std::cell::RefCell::new(zstd::bulk::Decompressor::new().expect("zstd context"));
}

/// Above this many bits per byte, data is treated as incompressible.
pub const INCOMPRESSIBLE_ENTROPY: f32 = 7.6;

/// Frames `data`, compressing it unless it looks incompressible or does not
/// shrink. `entropy` may be given when already known.
pub fn frame(data: &[u8], level: i32, entropy: Option<f32>) -> Result<Vec<u8>> {
    frame_after(0, data, level, entropy)
}

/// [`frame`], with `room` bytes left free at the front of the result.
fn frame_after(room: usize, data: &[u8], level: i32, entropy: Option<f32>) -> Result<Vec<u8>> {
    let e = entropy.unwrap_or_else(|| sampled_entropy(data));
    if e < INCOMPRESSIBLE_ENTROPY && data.len() > 64 {
        let bound = zstd::zstd_safe::compress_bound(data.len());
        let mut out = Vec::with_capacity(room + bound + 1 + crate::crypto::SEAL_OVERHEAD);
        out.resize(room, 0);
        out.push(ZSTD);
        out.resize(room + bound + 1, 0);
        // One compression context per thread, kept: setting one up costs
        // more than compressing a small chunk.
        let n = COMPRESSOR
            .with(|c| {
                let mut c = c.borrow_mut();
                if c.as_ref().is_none_or(|(l, _)| *l != level) {
                    *c = Some((level, zstd::bulk::Compressor::new(level)?));
                }
                c.as_mut()
                    .expect("set above")
                    .1
                    .compress_to_buffer(data, &mut out[room + 1..])
            })
            .map_err(|e| Error::Invalid(format!("zstd: {e}")))?;
        out.truncate(room + n + 1);
        if n + 1 < data.len() * 31 / 32 {
            return Ok(out);
        }
    }
    let mut out = Vec::with_capacity(room + data.len() + 1 + crate::crypto::SEAL_OVERHEAD);
    out.resize(room, 0);
    out.push(RAW);
    out.extend_from_slice(data);
    Ok(out)
}

/// Undoes [`frame`]; refuses to produce more than `max_len` bytes so that a
/// crafted object cannot exhaust memory.
pub fn unframe(framed: &[u8], max_len: usize) -> std::result::Result<Vec<u8>, String> {
    match framed.first() {
        Some(&RAW) if framed.len() - 1 <= max_len => Ok(framed[1..].to_vec()),
        Some(&RAW) => Err("raw object larger than allowed".into()),
        Some(&ZSTD) => DECOMPRESSOR
            .with(|d| d.borrow_mut().decompress(&framed[1..], max_len))
            .map_err(|e| format!("zstd: {e}")),
        _ => Err("unknown frame type".into()),
    }
}

pub fn seal(cipher: &Cipher, data: &[u8], level: i32, entropy: Option<f32>) -> Result<Vec<u8>> {
    cipher.seal_in_place(frame_after(
        crate::crypto::HEADER_LEN,
        data,
        level,
        entropy,
    )?)
}

/// [`open`] for sealed bytes the caller owns: decrypted where they lie.
pub fn open_owned(
    cipher: &Cipher,
    name: &str,
    mut sealed: Vec<u8>,
    max_len: usize,
) -> Result<Vec<u8>> {
    let r = cipher
        .open_in_place(&mut sealed)
        .map_err(|e| Error::damaged(name, e))?;
    unframe(&sealed[r], max_len).map_err(|e| Error::damaged(name, e))
}

pub fn open(cipher: &Cipher, name: &str, sealed: &[u8], max_len: usize) -> Result<Vec<u8>> {
    let framed = cipher.open(sealed).map_err(|r| Error::damaged(name, r))?;
    unframe(&framed, max_len).map_err(|r| Error::damaged(name, r))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compressible_data_shrinks_and_random_data_stays_raw() {
        let text = b"the quick brown fox jumps over the lazy dog ".repeat(1000);
        let f = frame(&text, 3, None).unwrap();
        assert_eq!(f[0], ZSTD);
        assert!(f.len() < text.len() / 10);
        assert_eq!(unframe(&f, text.len()).unwrap(), text);
        assert!(unframe(&f, text.len() - 1).is_err());

        let mut rnd = vec![0u8; 100_000];
        getrandom::fill(&mut rnd).unwrap();
        let f = frame(&rnd, 3, None).unwrap();
        assert_eq!(f[0], RAW);
        assert_eq!(unframe(&f, rnd.len()).unwrap(), rnd);
    }
}
