//! The one random-access interface the recovery side reads disks through.

use crate::diskmap::DiskMap;
use crate::error::{Error, Result};
use crate::snapshot::{Snapshot, SourceKind};
use crate::vault::Vault;
use lru::LruCache;
use rayon::prelude::*;
use std::io;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Bytes decoded ahead of a sequential reader (whole chunks, at least two).
const READ_AHEAD_BYTES: u64 = 1 << 20;

/// A run of the disk that is either data or zeros (a hole).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Extent {
    pub offset: u64,
    pub len: u64,
    pub zero: bool,
}

/// Appends `e`, merging it into the last extent when they touch and are
/// of the same kind, so lists of extents stay as short as possible.
pub fn push_extent(out: &mut Vec<Extent>, e: Extent) {
    match out.last_mut() {
        Some(l) if l.zero == e.zero && l.offset + l.len == e.offset => l.len += e.len,
        _ => out.push(e),
    }
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
    /// Where the last read ended, and how many bytes the run of reads that
    /// each continued the one before has covered: a stream.
    stream: Mutex<(u64, u64)>,
    cache_chunks: usize,
    read_ahead: bool,
    /// Chunks decoded from the vault so far (a cache that is too small
    /// shows up here).
    decoded: AtomicU64,
}

impl Drop for SnapshotDisk {
    fn drop(&mut self) {
        tracing::debug!(
            chunks = self.decoded.load(Ordering::Relaxed),
            "snapshot disk closed"
        );
    }
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
            stream: Mutex::new((u64::MAX, 0)),
            cache_chunks: cache_chunks.max(1),
            read_ahead: true,
            decoded: AtomicU64::new(0),
        })
    }

    /// For servers whose clients already keep several reads in flight
    /// (NBD): parallel read-ahead would only compete with them.
    pub fn without_read_ahead(mut self) -> Self {
        self.read_ahead = false;
        self
    }

    pub fn map(&self) -> &DiskMap {
        &self.map
    }

    /// Chunks decoded from the vault so far.
    pub fn decoded_chunks(&self) -> u64 {
        self.decoded.load(Ordering::Relaxed)
    }

    pub fn vault(&self) -> &Arc<Vault> {
        &self.vault
    }

    /// Decodes chunks `first..=last` that are not cached, in parallel, into
    /// the cache (never more than half of it, so they are still there when
    /// read).
    fn prefetch(&self, first: usize, last: usize) {
        let last = last
            .min(self.map.chunks.len().saturating_sub(1))
            .min(first + self.cache_chunks / 2);
        let missing: Vec<(usize, crate::ChunkId)> = {
            let mut cache = self.cache.lock().unwrap();
            (first..=last)
                .filter(|i| cache.get(i).is_none())
                .filter_map(|i| self.map.chunks[i].map(|id| (i, id)))
                .collect()
        };
        if missing.len() < 2 {
            return;
        }
        self.decoded
            .fetch_add(missing.len() as u64, Ordering::Relaxed);
        let decoded: Vec<(usize, Vec<u8>)> = missing
            .par_iter()
            .filter_map(|&(i, id)| self.vault.read_chunk(&id).ok().map(|d| (i, d)))
            .collect();
        let mut cache = self.cache.lock().unwrap();
        for (i, d) in decoded {
            if d.len() == self.map.chunk_range(i).1 {
                cache.put(i, Arc::new(d));
            }
        }
    }

    /// Decoded chunk `i`, or `None` for a zero chunk.
    pub fn chunk(&self, i: usize) -> io::Result<Option<Arc<Vec<u8>>>> {
        let Some(id) = self.map.chunks.get(i).copied().flatten() else {
            return Ok(None);
        };
        if let Some(c) = self.cache.lock().unwrap().get(&i) {
            return Ok(Some(c.clone()));
        }
        self.decoded.fetch_add(1, Ordering::Relaxed);
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
        // A read that spans chunks decodes them on all cores at once; a
        // stream that has read a whole chunk in order has the next few
        // decoded too. Scattered small reads that happen to touch (several
        // threads reading neighbouring small files) are no stream.
        let streaming = {
            let mut stream = self.stream.lock().unwrap();
            let run = if stream.0 == offset { stream.1 } else { 0 };
            *stream = (offset + len as u64, run + len as u64);
            run + len as u64 > cs
        };
        let (first, last) = (
            (offset / cs) as usize,
            ((offset + len as u64 - 1) / cs) as usize,
        );
        if self.read_ahead && (last > first || streaming) {
            let ahead = (READ_AHEAD_BYTES / cs).max(2) as usize;
            self.prefetch(first, last + if streaming { ahead } else { 0 });
        }
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
            push_extent(
                &mut out,
                Extent {
                    offset: pos,
                    len: chunk_end - pos,
                    zero,
                },
            );
            pos = chunk_end;
        }
        out
    }
}
