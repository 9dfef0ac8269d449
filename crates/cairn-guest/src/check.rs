//! Content checks for diff. On disks, a file whose blocks' 64 KiB digests
//! are the same in both snapshots is unchanged without reading it; where a
//! digest differs (the 64 KiB block may hold other files' data too), the
//! file's own bytes are compared.

use crate::diff::ContentCheck;
use crate::model::{FileEntry, Filesystem};
use cairn_vault::hash::BLOCK_SIZE;
use cairn_vault::{BlockSource, SnapshotDisk};
use std::collections::HashMap;

/// Files above this size are not hashed to find moves (they are reported
/// as deleted and added instead).
const MAX_DIGEST_BYTES: u64 = 256 << 20;

pub struct DiskCheck<'a> {
    pub old_fs: &'a dyn Filesystem,
    pub new_fs: &'a dyn Filesystem,
    pub old_disk: &'a SnapshotDisk,
    pub new_disk: &'a SnapshotDisk,
    /// What the new snapshot's bytes are read through (the disk itself, or
    /// a faster source-backed view of it).
    new_reader: Option<&'a dyn BlockSource>,
    digests: HashMap<(bool, Vec<u8>), Option<[u8; 32]>>,
}

impl<'a> DiskCheck<'a> {
    pub fn new(
        old_fs: &'a dyn Filesystem,
        new_fs: &'a dyn Filesystem,
        old_disk: &'a SnapshotDisk,
        new_disk: &'a SnapshotDisk,
    ) -> Self {
        DiskCheck {
            old_fs,
            new_fs,
            old_disk,
            new_disk,
            new_reader: None,
            digests: HashMap::new(),
        }
    }

    /// Reads the new snapshot's bytes through `reader` (which must show
    /// the same disk as `new_disk`).
    pub fn reading_new_through(mut self, reader: &'a dyn BlockSource) -> Self {
        self.new_reader = Some(reader);
        self
    }

    fn blocks_equal(&self, offset: u64, len: u64) -> bool {
        let (a, b) = (self.old_disk.map(), self.new_disk.map());
        let first = (offset / BLOCK_SIZE as u64) as usize;
        let last = ((offset + len).div_ceil(BLOCK_SIZE as u64)) as usize;
        (first..last).all(|i| a.blocks.get(i).is_some() && a.blocks.get(i) == b.blocks.get(i))
    }

    fn bytes_equal(&self, offset: u64, len: u64) -> bool {
        let mut pos = offset;
        let end = offset + len;
        let mut x = vec![0u8; 1 << 20];
        let mut y = vec![0u8; 1 << 20];
        while pos < end {
            let n = ((end - pos) as usize).min(x.len());
            let (ra, rb) = (
                self.old_disk.read_exact_at(pos, &mut x[..n]),
                match self.new_reader {
                    Some(r) => r.read_exact_at(pos, &mut y[..n]),
                    None => self.new_disk.read_exact_at(pos, &mut y[..n]),
                },
            );
            if ra.is_err() || rb.is_err() || x[..n] != y[..n] {
                return false;
            }
            pos += n as u64;
        }
        true
    }

    fn hash(&self, fs: &dyn Filesystem, e: &FileEntry) -> Option<[u8; 32]> {
        if e.size > MAX_DIGEST_BYTES {
            return None;
        }
        let mut h = blake3::Hasher::new();
        let mut buf = vec![0u8; 1 << 20];
        let mut off = 0u64;
        loop {
            let n = fs.read_at(e, off, &mut buf).ok()?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
            off += n as u64;
        }
        Some(*h.finalize().as_bytes())
    }
}

impl ContentCheck for DiskCheck<'_> {
    fn changed(&mut self, old: &FileEntry, new: &FileEntry) -> bool {
        match (&old.extents, &new.extents) {
            (Some(a), Some(b)) if a == b => {
                // Same place on disk: unchanged unless those bytes changed.
                a.iter()
                    .any(|&(off, len)| !self.blocks_equal(off, len) && !self.bytes_equal(off, len))
            }
            (Some(_), Some(_)) => {
                self.digest(old, false) != self.digest(new, true)
                    || self.digest(new, true).is_none()
            }
            // A reader without extents (NTFS, FAT): size and mtime decide.
            _ => false,
        }
    }

    fn digest(&mut self, e: &FileEntry, new: bool) -> Option<[u8; 32]> {
        let key = (new, e.path.clone());
        if let Some(d) = self.digests.get(&key) {
            return *d;
        }
        let d = self.hash(if new { self.new_fs } else { self.old_fs }, e);
        self.digests.insert(key, d);
        d
    }
}

/// Directory snapshots: content is equal when the chunk lists are.
pub struct TreeCheck;

impl ContentCheck for TreeCheck {
    fn changed(&mut self, old: &FileEntry, new: &FileEntry) -> bool {
        old.content_key != new.content_key
    }
    fn digest(&mut self, e: &FileEntry, _new: bool) -> Option<[u8; 32]> {
        e.content_key
    }
}
