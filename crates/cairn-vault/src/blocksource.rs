//! The one random-access interface the recovery side reads disks through.

use crate::diskmap::DiskMap;
use crate::error::{Error, Result};
use crate::hash::BLOCK_SIZE;
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

/// What the cache holds of one chunk: all of it, or the 64 KiB blocks
/// that small reads needed.
enum Decoded {
    Whole(Arc<Vec<u8>>),
    Blocks(Vec<Option<Arc<Vec<u8>>>>),
}

/// A disk snapshot served from its chunks, with a small cache of decoded
/// chunks (filesystem readers read the same metadata again and again). A
/// read of part of a chunk decodes only the 64 KiB blocks it needs (disk
/// chunks are framed in blocks); streams and reads across chunks decode
/// whole chunks, in parallel.
pub struct SnapshotDisk {
    vault: Arc<Vault>,
    map: DiskMap,
    cache: Mutex<LruCache<usize, Decoded>>,
    /// Where the last read ended, and how many bytes the run of reads that
    /// each continued the one before has covered: a stream.
    stream: Mutex<(u64, u64)>,
    cache_chunks: usize,
    read_ahead: bool,
    /// Blocks decoded from the vault so far (a cache that is too small
    /// shows up here).
    decoded: AtomicU64,
}

impl Drop for SnapshotDisk {
    fn drop(&mut self) {
        tracing::debug!(
            blocks = self.decoded.load(Ordering::Relaxed),
            "snapshot disk closed"
        );
    }
}

impl SnapshotDisk {
    /// `cache_chunks` bounds memory: at most that many decoded chunks (or
    /// parts of chunks).
    pub fn open(vault: Arc<Vault>, snap: &Snapshot, cache_chunks: usize) -> Result<Self> {
        if snap.source.kind != SourceKind::Disk {
            return Err(Error::WrongKind(format!(
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
                NonZeroUsize::new(cache_chunks.max(1)).expect("nonzero"),
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

    /// 64 KiB blocks decoded from the vault so far.
    pub fn decoded_blocks(&self) -> u64 {
        self.decoded.load(Ordering::Relaxed)
    }

    pub fn vault(&self) -> &Arc<Vault> {
        &self.vault
    }

    /// Decodes chunks `first..=last` that are not cached whole, in
    /// parallel, into the cache (never more than half of it, so they are
    /// still there when read).
    fn prefetch(&self, first: usize, last: usize) {
        let last = last
            .min(self.map.chunks.len().saturating_sub(1))
            .min(first + self.cache_chunks / 2);
        let missing: Vec<(usize, crate::ChunkId)> = {
            let cache = self.cache.lock().unwrap();
            (first..=last)
                .filter(|i| !matches!(cache.peek(i), Some(Decoded::Whole(_))))
                .filter_map(|i| self.map.chunks[i].map(|id| (i, id)))
                .collect()
        };
        if missing.len() < 2 {
            return;
        }
        let decoded: Vec<(usize, Vec<u8>)> = missing
            .par_iter()
            .filter_map(|&(i, id)| self.vault.read_chunk(&id).ok().map(|d| (i, d)))
            .collect();
        let mut cache = self.cache.lock().unwrap();
        for (i, d) in decoded {
            if d.len() == self.map.chunk_range(i).1 {
                self.decoded
                    .fetch_add(d.len().div_ceil(BLOCK_SIZE) as u64, Ordering::Relaxed);
                cache.put(i, Decoded::Whole(Arc::new(d)));
            }
        }
    }

    /// Fills `out` from chunk `i`, starting `within` bytes into it:
    /// from the cache, else by decoding the whole chunk when the read
    /// needs all of it, or only the blocks it touches.
    fn fill_from_chunk(&self, i: usize, within: usize, out: &mut [u8]) -> io::Result<()> {
        let Some(id) = self.map.chunks.get(i).copied().flatten() else {
            out.fill(0);
            return Ok(());
        };
        let chunk_len = self.map.chunk_range(i).1;
        let blocks_here = chunk_len.div_ceil(BLOCK_SIZE);
        let (k0, k1) = (within / BLOCK_SIZE, (within + out.len() - 1) / BLOCK_SIZE);
        let copy_blocks = |out: &mut [u8], blocks: &[Option<Arc<Vec<u8>>>]| {
            let mut done = 0;
            for (k, b) in blocks.iter().enumerate().take(k1 + 1).skip(k0) {
                let b = b.as_ref().expect("checked present");
                let from = (within + done) - k * BLOCK_SIZE;
                let n = (b.len() - from).min(out.len() - done);
                out[done..done + n].copy_from_slice(&b[from..from + n]);
                done += n;
            }
        };
        match self.cache.lock().unwrap().get(&i) {
            Some(Decoded::Whole(d)) => {
                out.copy_from_slice(&d[within..within + out.len()]);
                return Ok(());
            }
            Some(Decoded::Blocks(b)) if (k0..=k1).all(|k| b[k].is_some()) => {
                copy_blocks(out, b);
                return Ok(());
            }
            _ => {}
        }
        let wrong_length =
            || io::Error::other(format!("chunk {i} of the disk has the wrong length"));
        if k0 == 0 && k1 + 1 == blocks_here {
            let data = self.vault.read_chunk(&id).map_err(io::Error::other)?;
            if data.len() != chunk_len {
                return Err(wrong_length());
            }
            self.decoded
                .fetch_add(blocks_here as u64, Ordering::Relaxed);
            out.copy_from_slice(&data[within..within + out.len()]);
            self.cache
                .lock()
                .unwrap()
                .put(i, Decoded::Whole(Arc::new(data)));
            return Ok(());
        }
        let data = self
            .vault
            .read_chunk_blocks(&id, k0, k1)
            .map_err(io::Error::other)?;
        if data.len() != ((k1 + 1) * BLOCK_SIZE).min(chunk_len) - k0 * BLOCK_SIZE {
            return Err(wrong_length());
        }
        self.decoded
            .fetch_add((k1 - k0 + 1) as u64, Ordering::Relaxed);
        let from = within - k0 * BLOCK_SIZE;
        out.copy_from_slice(&data[from..from + out.len()]);
        let mut cache = self.cache.lock().unwrap();
        // Another reader may have cached the whole chunk meanwhile: keep it.
        if cache.peek(&i).is_none() {
            cache.put(i, Decoded::Blocks(vec![None; blocks_here]));
        }
        if let Some(Decoded::Blocks(b)) = cache.get_mut(&i) {
            if k0 == k1 {
                b[k0] = Some(Arc::new(data));
            } else {
                for (k, piece) in data.chunks(BLOCK_SIZE).enumerate() {
                    b[k0 + k] = Some(Arc::new(piece.to_vec()));
                }
            }
        }
        Ok(())
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
        // The chunks a read covers whole are decoded on all cores at once
        // (the blocks it needs of the chunks at its edges, by themselves);
        // a stream that has read a whole chunk in order has the next few
        // decoded too. Scattered small reads that happen to touch (several
        // threads reading neighbouring small files) are no stream, and
        // neither is one long read on its own (a scan's window around
        // changed blocks: decoding ahead of each cost a scan of a day's
        // changes a fifth more blocks).
        let streaming = {
            let mut stream = self.stream.lock().unwrap();
            let run = if stream.0 == offset { stream.1 } else { 0 };
            *stream = (offset + len as u64, run + len as u64);
            run > 0 && run + len as u64 > cs
        };
        let (first, last) = (
            (offset / cs) as usize,
            ((offset + len as u64 - 1) / cs) as usize,
        );
        let end = offset + len as u64;
        if self.read_ahead && streaming {
            let ahead = (READ_AHEAD_BYTES / cs).max(2) as usize;
            self.prefetch(first, last + ahead);
        } else if self.read_ahead && last > first {
            let whole_from = offset.div_ceil(cs) as usize;
            let whole_to = if end == self.map.size {
                last + 1
            } else {
                (end / cs) as usize
            };
            if whole_to > whole_from {
                self.prefetch(whole_from, whole_to - 1);
            }
        }
        let mut pos = offset;
        while pos < end {
            let i = (pos / cs) as usize;
            let part_end = end.min((i as u64 + 1) * cs);
            let out = &mut buf[(pos - offset) as usize..(part_end - offset) as usize];
            self.fill_from_chunk(i, (pos % cs) as usize, out)?;
            pos = part_end;
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
