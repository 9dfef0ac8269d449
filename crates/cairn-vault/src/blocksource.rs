//! The one random-access interface the recovery side reads disks through.

use crate::diskmap::DiskMap;
use crate::error::{Error, Result};
use crate::snapshot::{Snapshot, SourceKind};
use crate::vault::Vault;
use lru::LruCache;
use std::io;
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};

/// A run of the disk that is either data or zeros (a hole).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Extent {
    pub offset: u64,
    pub len: u64,
    pub zero: bool,
}

/// A disk that can be read at any offset.
pub trait BlockSource: Send + Sync {
    fn size(&self) -> u64;
    /// Fills `buf` from `offset`; reads past the end are short.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize>;
    /// Data and zero runs covering `[offset, offset + len)`, merged.
    fn extents(&self, offset: u64, len: u64) -> Vec<Extent>;

    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let n = self.read_at(offset, buf)?;
        if n < buf.len() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "read past the end of the disk",
            ));
        }
        Ok(())
    }
}

/// A disk snapshot served from its chunks, with a small cache of decoded
/// chunks (filesystem readers read the same metadata chunks again and
/// again).
pub struct SnapshotDisk {
    vault: Arc<Vault>,
    map: DiskMap,
    cache: Mutex<LruCache<usize, Arc<Vec<u8>>>>,
}

impl SnapshotDisk {
    /// `cache_chunks` bounds memory: at most that many decoded chunks.
    pub fn open(vault: Arc<Vault>, snap: &Snapshot, cache_chunks: usize) -> Result<Self> {
        if snap.source.kind != SourceKind::Disk {
            return Err(Error::Invalid(format!(
                "{}@{} is a directory snapshot, not a disk",
                snap.name,
                snap.id.short()
            )));
        }
        let map = vault.read_disk_map(snap)?;
        Ok(SnapshotDisk {
            vault,
            map,
            cache: Mutex::new(LruCache::new(
                NonZeroUsize::new(cache_chunks.max(1)).unwrap(),
            )),
        })
    }

    pub fn map(&self) -> &DiskMap {
        &self.map
    }

    pub fn vault(&self) -> &Arc<Vault> {
        &self.vault
    }

    /// Decoded chunk `i`, or `None` for a zero chunk.
    pub fn chunk(&self, i: usize) -> io::Result<Option<Arc<Vec<u8>>>> {
        let Some(id) = self.map.chunks.get(i).copied().flatten() else {
            return Ok(None);
        };
        if let Some(c) = self.cache.lock().unwrap().get(&i) {
            return Ok(Some(c.clone()));
        }
        let data = Arc::new(self.vault.read_chunk(&id).map_err(io::Error::other)?);
        if data.len() != self.map.chunk_range(i).1 {
            return Err(io::Error::other(format!(
                "chunk {i} of the disk has the wrong length"
            )));
        }
        self.cache.lock().unwrap().put(i, data.clone());
        Ok(Some(data))
    }
}

impl BlockSource for SnapshotDisk {
    fn size(&self) -> u64 {
        self.map.size
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        if offset >= self.map.size {
            return Ok(0);
        }
        let len = (buf.len() as u64).min(self.map.size - offset) as usize;
        let cs = self.map.chunk_size as u64;
        let mut done = 0usize;
        while done < len {
            let pos = offset + done as u64;
            let i = (pos / cs) as usize;
            let within = (pos % cs) as usize;
            let n = (cs as usize - within).min(len - done);
            match self.chunk(i)? {
                Some(c) => buf[done..done + n].copy_from_slice(&c[within..within + n]),
                None => buf[done..done + n].fill(0),
            }
            done += n;
        }
        Ok(len)
    }

    fn extents(&self, offset: u64, len: u64) -> Vec<Extent> {
        let end = offset.saturating_add(len).min(self.map.size);
        let cs = self.map.chunk_size as u64;
        let mut out: Vec<Extent> = Vec::new();
        let mut pos = offset;
        while pos < end {
            let i = (pos / cs) as usize;
            let chunk_end = ((i as u64 + 1) * cs).min(end);
            let zero = self.map.chunks[i].is_none();
            match out.last_mut() {
                Some(last) if last.zero == zero => last.len += chunk_end - pos,
                _ => out.push(Extent {
                    offset: pos,
                    len: chunk_end - pos,
                    zero,
                }),
            }
            pos = chunk_end;
        }
        out
    }
}
