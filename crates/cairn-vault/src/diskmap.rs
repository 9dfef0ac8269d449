//! A disk snapshot's map: fixed-size chunks aligned to the disk, so that
//! offset → chunk is one division (what the NBD server, the filesystem
//! readers and restore need), plus a digest per 64 KiB block.

use crate::hash::{BLOCK_SIZE, BlockDigest, ChunkId, ZERO_BLOCK};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DiskMap {
    pub size: u64,
    pub chunk_size: u32,
    /// One per chunk; `None` is a hole or an all-zero chunk.
    pub chunks: Vec<Option<ChunkId>>,
    /// One per 64 KiB block of the disk; [`ZERO_BLOCK`] for zeros.
    pub blocks: Vec<BlockDigest>,
}

impl DiskMap {
    pub fn new(size: u64, chunk_size: u32) -> Self {
        let n = size.div_ceil(chunk_size as u64) as usize;
        DiskMap {
            size,
            chunk_size,
            chunks: vec![None; n],
            blocks: vec![ZERO_BLOCK; size.div_ceil(BLOCK_SIZE as u64) as usize],
        }
    }

    /// Offset and length of chunk `i` (the last one may be short).
    pub fn chunk_range(&self, i: usize) -> (u64, usize) {
        let start = i as u64 * self.chunk_size as u64;
        (
            start,
            (self.size - start).min(self.chunk_size as u64) as usize,
        )
    }

    pub fn blocks_per_chunk(&self) -> usize {
        self.chunk_size as usize / BLOCK_SIZE
    }

    /// Checks what a hostile or damaged map could get wrong, before any
    /// arithmetic relies on it.
    pub fn validate(&self) -> Result<(), String> {
        if self.chunk_size == 0 || !(self.chunk_size as usize).is_multiple_of(BLOCK_SIZE) {
            return Err(format!(
                "chunk size {} is not a multiple of 64 KiB",
                self.chunk_size
            ));
        }
        if self.chunks.len() as u64 != self.size.div_ceil(self.chunk_size as u64) {
            return Err("chunk count does not match the disk size".into());
        }
        if self.blocks.len() as u64 != self.size.div_ceil(BLOCK_SIZE as u64) {
            return Err("block count does not match the disk size".into());
        }
        Ok(())
    }

    /// Bytes in blocks whose digest differs from `parent`'s at the same
    /// offset (a size change counts as changed).
    pub fn changed_bytes_against(&self, parent: &DiskMap) -> u64 {
        let mut changed = 0u64;
        for (i, d) in self.blocks.iter().enumerate() {
            if parent.blocks.get(i) != Some(d) {
                let start = i as u64 * BLOCK_SIZE as u64;
                changed += (self.size - start).min(BLOCK_SIZE as u64);
            }
        }
        changed
    }
}
