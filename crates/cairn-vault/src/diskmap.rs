//! A disk snapshot's map: fixed-size chunks aligned to the disk, so that
//! offset → chunk is one division (what the NBD server, the filesystem
//! readers and restore need), plus a digest per 64 KiB block.

use crate::hash::{BLOCK_SIZE, BlockDigest, ChunkId, Hasher, ZERO_BLOCK};
use rayon::prelude::*;
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

/// What starts a map stored by [`DiskMap::to_stored`]. A map in the first
/// format (postcard of [`DiskMap`], ids included) that began with these
/// bytes would claim a 67-byte disk in chunks of 65 bytes, which
/// [`DiskMap::validate`] refuses, so the two cannot be confused.
const STORED_MAGIC: &[u8; 9] = b"CAIRNMAP\x01";

/// A map as stored: the block digests alone. A chunk's id is the keyed
/// hash of its blocks' digests, so the ids — 32 bytes per chunk, as much
/// as its digests — are derived when the map is read instead of stored.
#[derive(Serialize)]
struct StoringDiskMap<'a> {
    size: u64,
    chunk_size: u32,
    blocks: &'a [BlockDigest],
}

#[derive(Deserialize)]
struct StoredDiskMap {
    size: u64,
    chunk_size: u32,
    blocks: Vec<BlockDigest>,
}

impl DiskMap {
    /// The bytes a map is stored as.
    pub fn to_stored(&self) -> Vec<u8> {
        let stored = StoringDiskMap {
            size: self.size,
            chunk_size: self.chunk_size,
            blocks: &self.blocks,
        };
        postcard::to_extend(&stored, STORED_MAGIC.to_vec()).expect("serializing a map")
    }

    /// A map from its stored bytes (either format), validated; the chunk
    /// ids of the digests-only format are derived with `hasher`.
    pub fn from_stored(bytes: &[u8], hasher: &Hasher) -> Result<DiskMap, String> {
        let Some(body) = bytes.strip_prefix(STORED_MAGIC) else {
            let map: DiskMap = postcard::from_bytes(bytes).map_err(|e| e.to_string())?;
            map.validate()?;
            return Ok(map);
        };
        let s: StoredDiskMap = postcard::from_bytes(body).map_err(|e| e.to_string())?;
        let mut map = DiskMap {
            size: s.size,
            chunk_size: s.chunk_size,
            chunks: Vec::new(),
            blocks: s.blocks,
        };
        // The digests first: their count (bounded by the bytes read)
        // bounds the chunk count before anything is allocated from it.
        map.validate_digests()?;
        let n = map.size.div_ceil(map.chunk_size as u64) as usize;
        let bpc = map.blocks_per_chunk();
        // Both cores: a 2 GiB disk's ids are ~7,000 hashes, a 2 TiB
        // disk's millions.
        map.chunks = (0..n)
            .into_par_iter()
            .map(|i| {
                let (_, len) = map.chunk_range(i);
                let digests = &map.blocks[i * bpc..(i * bpc + len.div_ceil(BLOCK_SIZE))];
                (!digests.iter().all(|d| *d == ZERO_BLOCK)).then(|| hasher.chunk_id(len, digests))
            })
            .collect();
        Ok(map)
    }

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
        self.validate_digests()?;
        if self.chunks.len() as u64 != self.size.div_ceil(self.chunk_size as u64) {
            return Err("chunk count does not match the disk size".into());
        }
        Ok(())
    }

    /// The chunk size, and one digest per block of the disk.
    fn validate_digests(&self) -> Result<(), String> {
        if self.chunk_size == 0 || !(self.chunk_size as usize).is_multiple_of(BLOCK_SIZE) {
            return Err(format!(
                "chunk size {} is not a multiple of 64 KiB",
                self.chunk_size
            ));
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A map the way ingest builds one: a chunk of data, a chunk whose
    /// second block is zeros, a hole, and a short last chunk.
    fn sample(h: &Hasher) -> DiskMap {
        let cs = 2 * BLOCK_SIZE;
        let size = (3 * cs + 1000) as u64;
        let mut map = DiskMap::new(size, cs as u32);
        let mut disk = vec![0u8; size as usize];
        disk[..cs]
            .iter_mut()
            .enumerate()
            .for_each(|(i, b)| *b = (i % 251) as u8);
        disk[cs..cs + 10].copy_from_slice(b"0123456789");
        disk[3 * cs..].fill(7);
        for i in 0..map.chunks.len() {
            let (start, len) = map.chunk_range(i);
            let data = &disk[start as usize..start as usize + len];
            if data.iter().any(|b| *b != 0) {
                let (id, digests) = h.digest_chunk(data);
                map.chunks[i] = Some(id);
                map.blocks[i * 2..i * 2 + digests.len()].copy_from_slice(&digests);
            }
        }
        map
    }

    #[test]
    fn a_stored_map_reads_back_with_the_same_chunk_ids() {
        let h = Hasher::new(&[9; 32]);
        let map = sample(&h);
        assert_eq!(map.chunks.iter().flatten().count(), 3);
        let stored = map.to_stored();
        let back = DiskMap::from_stored(&stored, &h).unwrap();
        assert_eq!(back.chunks, map.chunks);
        assert_eq!(back.blocks, map.blocks);
        assert_eq!((back.size, back.chunk_size), (map.size, map.chunk_size));
        // No ids stored: about the size of the digests alone.
        let old = postcard::to_stdvec(&map).unwrap();
        assert!(stored.len() + 3 * 32 <= old.len() + STORED_MAGIC.len());
        // A map stored in the first format (ids included) still reads.
        let first = DiskMap::from_stored(&old, &h).unwrap();
        assert_eq!(first.chunks, map.chunks);
    }

    #[test]
    fn a_crafted_stored_map_is_refused_without_panicking() {
        let h = Hasher::new(&[9; 32]);
        let craft = |size: u64, chunk_size: u32, blocks: usize| {
            let blocks = vec![[1u8; 16]; blocks];
            postcard::to_extend(
                &StoringDiskMap {
                    size,
                    chunk_size,
                    blocks: &blocks,
                },
                STORED_MAGIC.to_vec(),
            )
            .unwrap()
        };
        // A huge disk claimed with a handful of digests.
        assert!(DiskMap::from_stored(&craft(u64::MAX, 1 << 17, 4), &h).is_err());
        assert!(DiskMap::from_stored(&craft(1 << 20, 0, 16), &h).is_err());
        assert!(DiskMap::from_stored(&craft(1 << 20, 1000, 16), &h).is_err());
        assert!(DiskMap::from_stored(&craft(1 << 20, 1 << 17, 15), &h).is_err());
        assert!(DiskMap::from_stored(&craft(1 << 20, 1 << 17, 16), &h).is_ok());
        let good = craft(1 << 20, 1 << 17, 16);
        for cut in 0..good.len() {
            assert!(DiskMap::from_stored(&good[..cut], &h).is_err(), "{cut}");
        }
    }
}
