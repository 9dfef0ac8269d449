//! Disk ingest: fixed chunks aligned to the disk, holes skipped unread,
//! zero chunks recorded but not stored, change and entropy measured per
//! 64 KiB block against the parent while the data is in memory.

use crate::Progress;
use crate::source::{DataRange, DiskReader};
use cairn_vault::diskmap::DiskMap;
use cairn_vault::entropy::{EntropyHistogram, sampled_entropy};
use cairn_vault::error::{Error, Result};
use cairn_vault::hash::{BLOCK_SIZE, ZERO_BLOCK, is_zero};
use cairn_vault::pack::PackWriter;
use cairn_vault::{ChunkId, Metrics, Vault};
use rayon::prelude::*;

struct ChunkResult {
    id: Option<ChunkId>,
    blocks: Vec<[u8; 16]>,
    read: u64,
    zero: u64,
    changed: u64,
    entropy: EntropyHistogram,
}

fn overlaps(ranges: &Option<Vec<DataRange>>, start: u64, end: u64) -> bool {
    let Some(r) = ranges else { return true };
    // First range ending after `start`.
    let i = r.partition_point(|x| x.end <= start);
    r.get(i).is_some_and(|x| x.start < end)
}

pub fn ingest(
    vault: &Vault,
    src: &dyn DiskReader,
    parent: Option<&DiskMap>,
    progress: &Progress,
) -> Result<(DiskMap, Metrics)> {
    let size = src.size();
    let cs = vault.config().disk_chunk_size;
    let mut map = DiskMap::new(size, cs);
    let ranges = src
        .data_ranges()
        .map_err(|e| Error::io("finding the data in the source", e))?;
    let bpc = map.blocks_per_chunk();
    let n = map.chunks.len();
    progress.set_total(size);

    let (results, stats) = PackWriter::run(vault, cairn_vault::codec::Framing::Blocks, |writer| {
        Ok((0..n)
            .into_par_iter()
            // Pieces of 16 chunks (4 MiB): rayon left to itself cuts the
            // disk into a few large pieces, and one that holds most of the
            // data kept one core busy alone at the end of a backup.
            .with_min_len(16)
            .with_max_len(16)
            .map_init(
                || vec![0u8; cs as usize],
                |buf, i| {
                    let (start, len) = map.chunk_range(i);
                    let parent_blocks = parent.and_then(|p| p.blocks.get(i * bpc..)).unwrap_or(&[]);
                    let r = chunk(
                        vault,
                        src,
                        writer,
                        &ranges,
                        start,
                        &mut buf[..len],
                        parent_blocks,
                        parent.is_some(),
                    );
                    progress.add(len as u64);
                    r
                },
            )
            .collect::<Vec<Result<ChunkResult>>>())
    })?;

    let mut m = Metrics {
        logical_size: size,
        ..Metrics::default()
    };
    for (i, r) in results.into_iter().enumerate() {
        let r = r?;
        map.chunks[i] = r.id;
        let first = i * bpc;
        map.blocks[first..first + r.blocks.len()].copy_from_slice(&r.blocks);
        m.bytes_read += r.read;
        m.zero_bytes += r.zero;
        m.changed_bytes += r.changed;
        m.entropy_histogram.merge(&r.entropy);
    }
    if let Some(p) = parent
        && p.size != size
    {
        // Blocks past the parent's end were counted as changed above;
        // blocks that vanished count too.
        m.changed_bytes += p.size.saturating_sub(size);
    }
    m.chunks = n as u64;
    m.new_chunks = stats.new_chunks;
    m.new_bytes = stats.new_bytes;
    m.new_bytes_stored = stats.new_bytes_stored;
    Ok((map, m))
}

#[allow(clippy::too_many_arguments)]
fn chunk(
    vault: &Vault,
    src: &dyn DiskReader,
    writer: &PackWriter,
    ranges: &Option<Vec<DataRange>>,
    start: u64,
    buf: &mut [u8],
    parent_blocks: &[[u8; 16]],
    has_parent: bool,
) -> Result<ChunkResult> {
    let len = buf.len();
    let mut r = ChunkResult {
        id: None,
        blocks: Vec::with_capacity(len.div_ceil(BLOCK_SIZE)),
        read: 0,
        zero: 0,
        changed: 0,
        entropy: EntropyHistogram::default(),
    };
    let is_hole = !overlaps(ranges, start, start + len as u64);
    if !is_hole {
        src.read_at(start, buf)
            .map_err(|e| Error::io(format!("reading the source at offset {start}"), e))?;
        r.read = len as u64;
    }
    if is_hole || is_zero(buf) {
        r.zero = len as u64;
        for (b, block) in buf.chunks(BLOCK_SIZE).enumerate() {
            r.blocks.push(ZERO_BLOCK);
            if has_parent && parent_blocks.get(b).is_some_and(|d| *d != ZERO_BLOCK) {
                r.changed += block.len() as u64;
                r.entropy.add(0.0, block.len() as u64);
            }
        }
        return Ok(r);
    }
    let (id, digests) = vault.hasher().digest_chunk(buf);
    let mut entropy_sum = 0.0f32;
    let mut measured = 0usize;
    for (b, (block, d)) in buf.chunks(BLOCK_SIZE).zip(&digests).enumerate() {
        if !has_parent || parent_blocks.get(b) != Some(d) {
            let e = sampled_entropy(block);
            r.changed += block.len() as u64;
            r.entropy.add(e, block.len() as u64);
            entropy_sum += e;
            measured += 1;
        }
        if *d == ZERO_BLOCK {
            r.zero += block.len() as u64;
        }
    }
    let entropy = (measured == digests.len()).then(|| entropy_sum / measured as f32);
    writer.add(id, buf, entropy)?;
    r.id = Some(id);
    r.blocks = digests;
    Ok(r)
}
