//! Groups new chunks into pack objects of tens of MiB, so that storage sees
//! few large writes, and writes each pack's index after it.

use crate::codec;
use crate::crypto::random_array;
use crate::error::Result;
use crate::hash::ChunkId;
use crate::index::{IndexEntry, PackIndex, index_object, pack_object};
use crate::vault::Vault;
use std::collections::HashSet;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Default)]
struct OpenPack {
    buf: Vec<u8>,
    entries: Vec<IndexEntry>,
}

/// Shared by the worker threads of one backup.
pub struct PackWriter<'v> {
    vault: &'v Vault,
    open: Mutex<OpenPack>,
    in_flight: Mutex<HashSet<ChunkId>>,
    /// Bytes of new data stored (sealed) and their plaintext size.
    pub stored_bytes: AtomicU64,
    pub raw_bytes: AtomicU64,
    pub new_chunks: AtomicU64,
}

impl<'v> PackWriter<'v> {
    pub fn new(vault: &'v Vault) -> Self {
        PackWriter {
            vault,
            open: Mutex::new(OpenPack::default()),
            in_flight: Mutex::new(HashSet::new()),
            stored_bytes: AtomicU64::new(0),
            raw_bytes: AtomicU64::new(0),
            new_chunks: AtomicU64::new(0),
        }
    }

    /// True when the vault (or this backup) has the chunk already.
    pub fn has(&self, id: &ChunkId) -> bool {
        self.vault.has_chunk(id) || self.in_flight.lock().unwrap().contains(id)
    }

    /// Stores a chunk unless it is known. Returns the stored size when it
    /// was new.
    pub fn add(&self, id: ChunkId, data: &[u8], entropy: Option<f32>) -> Result<Option<u64>> {
        if self.vault.has_chunk(&id) || !self.in_flight.lock().unwrap().insert(id) {
            return Ok(None);
        }
        let sealed = codec::seal(
            self.vault.cipher(),
            data,
            self.vault.config().compression_level,
            entropy,
        )?;
        let stored = sealed.len() as u64;
        let full = {
            let mut p = self.open.lock().unwrap();
            let offset = p.buf.len() as u32;
            p.buf.extend_from_slice(&sealed);
            p.entries.push(IndexEntry {
                id,
                offset,
                len: sealed.len() as u32,
                raw_len: data.len() as u32,
            });
            if p.buf.len() as u64 >= self.vault.config().pack_size as u64 {
                Some(std::mem::take(&mut *p))
            } else {
                None
            }
        };
        if let Some(pack) = full {
            self.write_pack(pack)?;
        }
        self.stored_bytes.fetch_add(stored, Ordering::Relaxed);
        self.raw_bytes
            .fetch_add(data.len() as u64, Ordering::Relaxed);
        self.new_chunks.fetch_add(1, Ordering::Relaxed);
        Ok(Some(stored))
    }

    /// Writes the pack in progress. Call before writing anything that
    /// refers to the chunks added.
    pub fn finish(&self) -> Result<()> {
        let pack = std::mem::take(&mut *self.open.lock().unwrap());
        if !pack.entries.is_empty() {
            self.write_pack(pack)?;
        }
        Ok(())
    }

    fn write_pack(&self, pack: OpenPack) -> Result<()> {
        let id = hex::encode(random_array::<32>()?);
        self.vault.backend().put(&pack_object(&id), &pack.buf)?;
        let index = PackIndex {
            pack: id.clone(),
            retain_until: self.vault.retain_until_from_now().timestamp(),
            entries: pack.entries,
        };
        let bytes = postcard::to_stdvec(&index).expect("index serializes");
        let sealed = codec::seal(self.vault.cipher(), &bytes, 3, None)?;
        self.vault.backend().put(&index_object(&id), &sealed)?;
        self.vault.add_index(&index);
        Ok(())
    }
}
