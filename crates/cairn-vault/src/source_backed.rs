//! A snapshot's disk read from the source it was just backed up from —
//! where, and only where, the source still holds the snapshot's bytes.
//!
//! Right after a backup the source's pages are in the page cache, while
//! the vault's copy costs a decryption and a decompression per chunk.
//! Every 64 KiB block taken from the source is hashed and compared with
//! the snapshot's block digest before use, and kept in memory once
//! checked (so a later change of the source cannot slip in between check
//! and use); a block that differs — the source moved on — comes from the
//! vault. Readers therefore see exactly the snapshot, faster.

use crate::blocksource::{BlockSource, Extent, SnapshotDisk};
use crate::hash::BLOCK_SIZE;
use lru::LruCache;
use std::fs::File;
use std::io;
use std::num::NonZeroUsize;
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Mutex};

pub struct SourceBackedDisk {
    source: File,
    snapshot: Arc<SnapshotDisk>,
    /// Checked blocks: index → bytes (`None`: the source differs there).
    blocks: Mutex<LruCache<usize, Option<Arc<Vec<u8>>>>>,
    /// Blocks read from the source and hashed (for the debug log).
    checked: std::sync::atomic::AtomicU64,
}

impl Drop for SourceBackedDisk {
    fn drop(&mut self) {
        tracing::debug!(
            blocks = self.checked.load(std::sync::atomic::Ordering::Relaxed),
            "source-backed disk closed"
        );
    }
}

impl SourceBackedDisk {
    /// `cache_blocks` bounds memory (64 KiB each).
    pub fn new(source: File, snapshot: Arc<SnapshotDisk>, cache_blocks: usize) -> Self {
        SourceBackedDisk {
            source,
            snapshot,
            blocks: Mutex::new(LruCache::new(
                NonZeroUsize::new(cache_blocks.max(1)).expect("nonzero"),
            )),
            checked: Default::default(),
        }
    }

    /// Block `i` from the source if it matches the snapshot there.
    fn block(&self, i: usize) -> Option<Arc<Vec<u8>>> {
        if let Some(b) = self.blocks.lock().unwrap().get(&i) {
            return b.clone();
        }
        let map = self.snapshot.map();
        let want = *map.blocks.get(i)?;
        let start = i as u64 * BLOCK_SIZE as u64;
        let len = (BLOCK_SIZE as u64).min(map.size - start) as usize;
        let mut buf = vec![0u8; len];
        self.checked
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let ok = self.source.read_exact_at(&mut buf, start).is_ok() && {
            let mut got = Vec::with_capacity(1);
            self.snapshot.vault().hasher().block_digests(&buf, &mut got);
            got.first() == Some(&want)
        };
        let entry = ok.then(|| Arc::new(buf));
        self.blocks.lock().unwrap().put(i, entry.clone());
        entry
    }
}

impl BlockSource for SourceBackedDisk {
    fn size(&self) -> u64 {
        self.snapshot.size()
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        let size = self.size();
        if offset >= size {
            return Ok(0);
        }
        let len = (buf.len() as u64).min(size - offset) as usize;
        let bs = BLOCK_SIZE as u64;
        let mut done = 0;
        while done < len {
            let pos = offset + done as u64;
            let i = (pos / bs) as usize;
            let within = (pos % bs) as usize;
            let n = (BLOCK_SIZE - within).min(len - done);
            match self.block(i) {
                Some(b) => buf[done..done + n].copy_from_slice(&b[within..within + n]),
                None => self.snapshot.read_exact_at(pos, &mut buf[done..done + n])?,
            }
            done += n;
        }
        Ok(len)
    }

    fn extents(&self, offset: u64, len: u64) -> Vec<Extent> {
        self.snapshot.extents(offset, len)
    }
}
