//! How plaintext becomes a stored object: frame (compressed or raw), then
//! seal. High-entropy data is stored raw, since zstd would spend time and
//! win nothing.

use crate::crypto::Cipher;
use crate::entropy::sampled_entropy;
use crate::error::{Error, Result};
use crate::hash::BLOCK_SIZE;

const RAW: u8 = 0;
const ZSTD: u8 = 1;
/// Disk chunks: `[2][n: u16][n compressed lengths: u32][n zstd frames]`,
/// one frame per 64 KiB block, so one block decodes without the rest
/// (scattered small reads — diffs, scans, a booting guest — decode half of
/// a 128 KiB chunk). Costs ~2.8% more compressed bytes than one frame per
/// 128 KiB chunk at the same speed (zstd -b1 -B65536 against -B131072 on
/// the benchmark guest's compressible blocks: 128.6 against 125.1 MB),
/// under 1% of that vault; a delta restore or a scan would decode up to
/// twice as much without it.
const ZSTD_BLOCKS: u8 = 2;

/// How a chunk is framed when compressed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    /// One zstd frame (file-tree chunks, which are read whole).
    Whole,
    /// One zstd frame per 64 KiB block (disk chunks).
    Blocks,
}

thread_local! {
    static COMPRESSOR: std::cell::RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> = const { std::cell::RefCell::new(None) };
    static DECOMPRESSOR: std::cell::RefCell<zstd::bulk::Decompressor<'static>> =
        std::cell::RefCell::new(zstd::bulk::Decompressor::new().expect("zstd context"));
}

/// Above this many bits per byte, data is treated as incompressible.
/// Random bytes measure ~7.98 by [`sampled_entropy`] (an 8 KiB sample per
/// block reads a little low); blocks measured between 7.6 and 7.93 still
/// shrink 5–15% (on the benchmark's disk, ~150 such blocks saved ~0.4 MB).
pub const INCOMPRESSIBLE_ENTROPY: f32 = 7.93;

/// Frames `data`, compressing it unless it looks incompressible or does not
/// shrink. `entropy` may be given when already known.
pub fn frame(data: &[u8], level: i32, entropy: Option<f32>) -> Result<Vec<u8>> {
    frame_after(0, data, level, entropy)
}

/// [`frame`], with `room` bytes left free at the front of the result.
fn frame_after(room: usize, data: &[u8], level: i32, entropy: Option<f32>) -> Result<Vec<u8>> {
    frame_as(Framing::Whole, room, data, level, entropy)
}

/// Compresses `src` onto the end of `out` with this thread's context.
fn compress_onto(out: &mut Vec<u8>, src: &[u8], level: i32) -> Result<()> {
    let at = out.len();
    out.resize(at + zstd::zstd_safe::compress_bound(src.len()), 0);
    // One compression context per thread, kept: setting one up costs
    // more than compressing a small chunk.
    let n = COMPRESSOR
        .with(|c| {
            let mut c = c.borrow_mut();
            if c.as_ref().is_none_or(|(l, _)| *l != level) {
                let mut fresh = zstd::bulk::Compressor::new(level)?;
                if level <= 2 {
                    // The fast levels size their match table for 64 KiB
                    // inputs at 8K entries; 64K entries find ~0.5% more
                    // on guest disks at the same speed (zstd -b1 -B65536).
                    fresh.set_parameter(zstd::stream::raw::CParameter::HashLog(16))?;
                }
                *c = Some((level, fresh));
            }
            c.as_mut()
                .expect("set above")
                .1
                .compress_to_buffer(src, &mut out[at..])
        })
        .map_err(|e| Error::Invalid(format!("zstd: {e}")))?;
    out.truncate(at + n);
    Ok(())
}

/// Frames `data` as `framing` says, compressing it unless it looks
/// incompressible or does not shrink; `room` bytes are left free at the
/// front of the result.
fn frame_as(
    framing: Framing,
    room: usize,
    data: &[u8],
    level: i32,
    entropy: Option<f32>,
) -> Result<Vec<u8>> {
    let e = entropy.unwrap_or_else(|| sampled_entropy(data));
    if e < INCOMPRESSIBLE_ENTROPY && data.len() > 64 {
        let bound = zstd::zstd_safe::compress_bound(data.len()) + 64;
        let mut out = Vec::with_capacity(room + bound + 1 + crate::crypto::SEAL_OVERHEAD);
        out.resize(room, 0);
        if framing == Framing::Blocks && data.len() > BLOCK_SIZE {
            let blocks = data.len().div_ceil(BLOCK_SIZE);
            out.push(ZSTD_BLOCKS);
            out.extend_from_slice(&(blocks as u16).to_le_bytes());
            let lengths = out.len();
            out.resize(lengths + 4 * blocks, 0);
            for (i, block) in data.chunks(BLOCK_SIZE).enumerate() {
                let start = out.len();
                compress_onto(&mut out, block, level)?;
                let n = (out.len() - start) as u32;
                out[lengths + 4 * i..lengths + 4 * i + 4].copy_from_slice(&n.to_le_bytes());
            }
        } else {
            out.push(ZSTD);
            compress_onto(&mut out, data, level)?;
        }
        if out.len() - room < data.len() * 31 / 32 {
            return Ok(out);
        }
    }
    let mut out = Vec::with_capacity(room + data.len() + 1 + crate::crypto::SEAL_OVERHEAD);
    out.resize(room, 0);
    out.push(RAW);
    out.extend_from_slice(data);
    Ok(out)
}

/// The frames of a [`ZSTD_BLOCKS`] payload, each checked to lie inside it.
fn block_frames(payload: &[u8]) -> std::result::Result<Vec<&[u8]>, String> {
    let n = u16::from_le_bytes(
        payload
            .get(..2)
            .ok_or("block table cut short")?
            .try_into()
            .expect("two bytes"),
    ) as usize;
    let table = payload.get(2..2 + 4 * n).ok_or("block table cut short")?;
    let mut at = 2 + 4 * n;
    let mut frames = Vec::with_capacity(n);
    for len in table.chunks_exact(4) {
        let len = u32::from_le_bytes(len.try_into().expect("four bytes")) as usize;
        let end = at.checked_add(len).ok_or("block length overflows")?;
        frames.push(payload.get(at..end).ok_or("block past the end")?);
        at = end;
    }
    if at != payload.len() {
        return Err("bytes after the last block".into());
    }
    Ok(frames)
}

/// Decodes one block's frame into `out` (which must be exactly the
/// block's length: every block but the last is 64 KiB).
fn decode_block(frame: &[u8], out: &mut [u8]) -> std::result::Result<(), String> {
    let n = DECOMPRESSOR
        .with(|d| d.borrow_mut().decompress_to_buffer(frame, out))
        .map_err(|e| format!("zstd: {e}"))?;
    if n != out.len() {
        return Err("a block decoded to the wrong length".into());
    }
    Ok(())
}

/// Plaintext blocks `first..=last` (64 KiB each, the last of the object
/// maybe shorter) of a framed object of `raw_len` bytes; only those
/// blocks are decompressed when the object was framed in blocks.
pub fn unframe_blocks(
    framed: &[u8],
    raw_len: usize,
    first: usize,
    last: usize,
) -> std::result::Result<Vec<u8>, String> {
    let start = first.checked_mul(BLOCK_SIZE).ok_or("block out of range")?;
    let end = last
        .checked_add(1)
        .and_then(|l| l.checked_mul(BLOCK_SIZE))
        .ok_or("block out of range")?
        .min(raw_len);
    if start >= end {
        return Err("block out of range".into());
    }
    match framed.first() {
        Some(&ZSTD_BLOCKS) => {
            let frames = block_frames(&framed[1..])?;
            if frames.len() != raw_len.div_ceil(BLOCK_SIZE) {
                return Err("block count does not match the length".into());
            }
            let mut out = vec![0u8; end - start];
            for (k, piece) in out.chunks_mut(BLOCK_SIZE).enumerate() {
                decode_block(frames[first + k], piece)?;
            }
            Ok(out)
        }
        _ => {
            let whole = unframe(framed, raw_len)?;
            whole
                .get(start..end)
                .map(<[u8]>::to_vec)
                .ok_or_else(|| "object shorter than recorded".into())
        }
    }
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
        Some(&ZSTD_BLOCKS) => {
            let frames = block_frames(&framed[1..])?;
            if frames.len() > max_len.div_ceil(BLOCK_SIZE) {
                return Err("more blocks than allowed".into());
            }
            let mut out = Vec::with_capacity(frames.len() * BLOCK_SIZE);
            // Every block but the last is whole; the last fills the rest,
            // at most up to the limit.
            if let Some((last, whole)) = frames.split_last() {
                for frame in whole {
                    let at = out.len();
                    out.resize(at + BLOCK_SIZE, 0);
                    decode_block(frame, &mut out[at..])?;
                }
                let room = max_len.saturating_sub(out.len()).min(BLOCK_SIZE);
                let got = DECOMPRESSOR
                    .with(|d| d.borrow_mut().decompress(last, room))
                    .map_err(|e| format!("zstd: {e}"))?;
                out.extend_from_slice(&got);
            }
            if out.len() > max_len {
                return Err("object larger than allowed".into());
            }
            Ok(out)
        }
        _ => Err("unknown frame type".into()),
    }
}

pub fn seal(cipher: &Cipher, data: &[u8], level: i32, entropy: Option<f32>) -> Result<Vec<u8>> {
    seal_as(cipher, Framing::Whole, data, level, entropy)
}

/// [`seal`], framed as `framing` says.
pub fn seal_as(
    cipher: &Cipher,
    framing: Framing,
    data: &[u8],
    level: i32,
    entropy: Option<f32>,
) -> Result<Vec<u8>> {
    cipher.seal_in_place(frame_as(
        framing,
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

/// Blocks `first..=last` of a sealed object of `raw_len` bytes (see
/// [`unframe_blocks`]); the whole object is still authenticated.
pub fn open_blocks(
    cipher: &Cipher,
    name: &str,
    mut sealed: Vec<u8>,
    raw_len: usize,
    (first, last): (usize, usize),
) -> Result<Vec<u8>> {
    let r = cipher
        .open_in_place(&mut sealed)
        .map_err(|e| Error::damaged(name, e))?;
    unframe_blocks(&sealed[r], raw_len, first, last).map_err(|e| Error::damaged(name, e))
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

    /// Text in 2.5 blocks: framed whole or in blocks, every way of reading
    /// it back gives the same bytes, and a block framing decodes one block
    /// without the others.
    #[test]
    fn block_framing_reads_any_blocks_alone() {
        let text: Vec<u8> = (0..BLOCK_SIZE * 5 / 2)
            .map(|i| b"abcdefghij"[(i / 7 + i / 1000) % 10])
            .collect();
        let whole = frame_as(Framing::Whole, 0, &text, 1, None).unwrap();
        let blocks = frame_as(Framing::Blocks, 0, &text, 1, None).unwrap();
        assert_eq!((whole[0], blocks[0]), (ZSTD, ZSTD_BLOCKS));
        for f in [&whole, &blocks] {
            assert_eq!(unframe(f, text.len()).unwrap(), text);
            assert!(unframe(f, text.len() - 1).is_err());
            for (a, b) in [(0, 0), (1, 1), (2, 2), (0, 2), (1, 2)] {
                let want = &text[a * BLOCK_SIZE..((b + 1) * BLOCK_SIZE).min(text.len())];
                assert_eq!(unframe_blocks(f, text.len(), a, b).unwrap(), want);
            }
            assert!(unframe_blocks(f, text.len(), 3, 3).is_err());
        }
        // Block 1 decodes while block 0's frame is garbage.
        let mut broken = blocks.clone();
        broken[1 + 2 + 12 + 5] ^= 0xff;
        assert!(unframe(&broken, text.len()).is_err());
        assert_eq!(
            unframe_blocks(&broken, text.len(), 1, 1).unwrap(),
            &text[BLOCK_SIZE..2 * BLOCK_SIZE]
        );
        // Lengths that point outside, or disagree with the object's length.
        let mut bad = blocks.clone();
        bad[3..7].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(unframe(&bad, text.len()).is_err());
        assert!(unframe_blocks(&blocks, text.len() + BLOCK_SIZE, 0, 0).is_err());
        for n in 0..blocks.len() {
            let _ = unframe(&blocks[..n], text.len());
            let _ = unframe_blocks(&blocks[..n], text.len(), 1, 1);
        }
    }
}
