//! Content checks for diff. On disks, a file whose blocks' 64 KiB digests
//! are the same in both snapshots is unchanged without reading it; where a
//! digest differs (the 64 KiB block may hold other files' data too), the
//! file's own bytes are compared.

use crate::diff::ContentCheck;
use crate::model::{FileEntry, Filesystem};
use cairn_vault::hash::BLOCK_SIZE;
use cairn_vault::{BlockSource, SnapshotDisk};
use rayon::prelude::*;
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

    /// Whether the bytes of one extent differ between the snapshots. A
    /// 64 KiB block whose digest is the same is the same; a block that
    /// differs and lies wholly inside the extent proves a change without
    /// reading; only blocks the extent shares with other data are read,
    /// and only the extent's part of them.
    fn extent_changed(&self, offset: u64, len: u64) -> bool {
        let (a, b) = (self.old_disk.map(), self.new_disk.map());
        let bs = BLOCK_SIZE as u64;
        let end = offset + len;
        for i in (offset / bs) as usize..end.div_ceil(bs) as usize {
            if a.blocks.get(i).is_some() && a.blocks.get(i) == b.blocks.get(i) {
                continue;
            }
            let block_start = i as u64 * bs;
            let block_end = (block_start + bs).min(a.size).min(b.size);
            let (s, e) = (offset.max(block_start), end.min(block_start + bs));
            if (s == block_start && e >= block_end) || !self.bytes_equal(s, e.saturating_sub(s)) {
                return true;
            }
        }
        false
    }

    /// For a file in the same place on disk in both snapshots, whether
    /// those bytes changed; `None` for a file that moved or has no extents.
    fn in_place_changed(&self, old: &FileEntry, new: &FileEntry) -> Option<bool> {
        match (&old.extents, &new.extents) {
            (Some(a), Some(b)) if a == b => {
                Some(a.iter().any(|&(off, len)| self.extent_changed(off, len)))
            }
            _ => None,
        }
    }

    fn bytes_equal(&self, offset: u64, len: u64) -> bool {
        let mut pos = offset;
        let end = offset + len;
        // Most ranges are a small file's few KiB: size the buffers to them.
        let buf = (len as usize).min(1 << 20);
        let mut x = vec![0u8; buf];
        let mut y = vec![0u8; buf];
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
        let mut buf = vec![0u8; (e.size as usize).clamp(4096, 1 << 20)];
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
    fn prepare(&mut self, pairs: &[(&FileEntry, &FileEntry)]) -> Vec<Option<bool>> {
        // Files that stayed in place are checked in parallel: where they
        // share a changed block with other files, the parent's chunk has
        // to be decoded, and that is most of a diff's time.
        let this = &*self;
        pairs
            .par_iter()
            .map(|(o, n)| this.in_place_changed(o, n))
            .collect()
    }

    fn changed(&mut self, old: &FileEntry, new: &FileEntry) -> bool {
        if let Some(changed) = self.in_place_changed(old, new) {
            return changed;
        }
        let by_content = |this: &mut Self| {
            this.digest(old, false) != this.digest(new, true) || this.digest(new, true).is_none()
        };
        match (&old.extents, &new.extents) {
            // Moved, or mapped on one side only (holes punched into it,
            // or filled): the content decides.
            (Some(_), _) | (_, Some(_)) => by_content(self),
            // Holes on both sides (ext4 maps the rest): read, up to the
            // size a digest is taken of.
            (None, None)
                if self.new_fs.kind().starts_with("ext") && new.size <= MAX_DIGEST_BYTES =>
            {
                by_content(self)
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
