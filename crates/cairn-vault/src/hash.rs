//! Content addresses.
//!
//! Data is hashed once, in 64 KiB blocks: each block gets a 16-byte keyed
//! digest, and a chunk's id is the keyed hash of its blocks' digests. The
//! block digests are kept in disk maps and trees, so change is measured at
//! block grain (finer than a chunk) without hashing the data twice.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Grain of change measurement and of the digests kept per snapshot.
pub const BLOCK_SIZE: usize = 64 * 1024;

pub type BlockDigest = [u8; 16];

/// The digest recorded for a block that is all zeros (or a hole), so that a
/// zeroed block compares equal to a hole.
pub const ZERO_BLOCK: BlockDigest = [0; 16];

#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ChunkId(pub [u8; 32]);

impl ChunkId {
    pub fn hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Debug for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChunkId({})", &self.hex()[..16])
    }
}

impl fmt::Display for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.hex())
    }
}

/// Keyed hashing: without the vault's secret nobody can tell from ids which
/// content a vault holds.
#[derive(Clone)]
pub struct Hasher {
    block_key: [u8; 32],
    chunk_key: [u8; 32],
    object_key: [u8; 32],
}

impl Hasher {
    pub fn new(id_key: &[u8; 32]) -> Self {
        let derive = |ctx: &str| blake3::derive_key(ctx, id_key);
        Hasher {
            block_key: derive("cairn 2026 block digest"),
            chunk_key: derive("cairn 2026 chunk id"),
            object_key: derive("cairn 2026 object id"),
        }
    }

    /// Appends one digest per `BLOCK_SIZE` block of `data` (the last block
    /// may be short). All-zero blocks get [`ZERO_BLOCK`].
    pub fn block_digests(&self, data: &[u8], out: &mut Vec<BlockDigest>) {
        for block in data.chunks(BLOCK_SIZE) {
            if is_zero(block) {
                out.push(ZERO_BLOCK);
            } else {
                let h = blake3::keyed_hash(&self.block_key, block);
                let mut d = [0u8; 16];
                d.copy_from_slice(&h.as_bytes()[..16]);
                if d == ZERO_BLOCK {
                    d[0] = 1; // keep the zero digest for zero blocks only
                }
                out.push(d);
            }
        }
    }

    pub fn chunk_id(&self, len: usize, digests: &[BlockDigest]) -> ChunkId {
        let mut h = blake3::Hasher::new_keyed(&self.chunk_key);
        h.update(&(len as u64).to_le_bytes());
        for d in digests {
            h.update(d);
        }
        ChunkId(*h.finalize().as_bytes())
    }

    /// Digests and id of one chunk of data.
    pub fn digest_chunk(&self, data: &[u8]) -> (ChunkId, Vec<BlockDigest>) {
        let mut digests = Vec::with_capacity(data.len().div_ceil(BLOCK_SIZE));
        self.block_digests(data, &mut digests);
        (self.chunk_id(data.len(), &digests), digests)
    }

    /// Id of a whole object (a disk map or a tree), for content addressing.
    pub fn object_id(&self, data: &[u8]) -> String {
        hex::encode(blake3::keyed_hash(&self.object_key, data).as_bytes())
    }
}

/// True when every byte is zero; compares 16 bytes at a time.
/// Whether `s` is an id as the vault names packs, snapshots and maps: 64
/// lowercase hex digits (a name a crafted object could choose otherwise).
pub fn is_object_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'))
}

pub fn is_zero(data: &[u8]) -> bool {
    let (head, body, tail) = unsafe { data.align_to::<u128>() };
    head.iter().all(|&b| b == 0) && body.iter().all(|&w| w == 0) && tail.iter().all(|&b| b == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_blocks_get_the_zero_digest_and_others_do_not() {
        let h = Hasher::new(&[7; 32]);
        let mut data = vec![0u8; BLOCK_SIZE * 2 + 10];
        data[BLOCK_SIZE + 5] = 1;
        let (_, d) = h.digest_chunk(&data);
        assert_eq!(d.len(), 3);
        assert_eq!(d[0], ZERO_BLOCK);
        assert_ne!(d[1], ZERO_BLOCK);
        assert_eq!(d[2], ZERO_BLOCK);
    }

    #[test]
    fn ids_depend_on_content_length_and_key() {
        let a = Hasher::new(&[1; 32]);
        let b = Hasher::new(&[2; 32]);
        let x = vec![5u8; 1000];
        assert_eq!(a.digest_chunk(&x).0, a.digest_chunk(&x).0);
        assert_ne!(a.digest_chunk(&x).0, b.digest_chunk(&x).0);
        assert_ne!(a.digest_chunk(&x).0, a.digest_chunk(&x[..999]).0);
        assert_ne!(a.digest_chunk(&[0; 10]).0, a.digest_chunk(&[0; 11]).0);
    }

    #[test]
    fn is_zero_checks_every_byte() {
        for len in [0usize, 1, 15, 16, 17, 100, 4096] {
            let mut v = vec![0u8; len];
            assert!(is_zero(&v));
            for i in 0..len {
                v[i] = 1;
                assert!(!is_zero(&v), "len {len} byte {i}");
                v[i] = 0;
            }
        }
    }
}
