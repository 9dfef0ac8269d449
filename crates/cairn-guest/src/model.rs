//! One file-tree model for every filesystem and for directory snapshots,
//! so that listing, diff, scanning and per-file restore work the same on a
//! disk image and on a file-tree backup.

use crate::error::Result;
use cairn_vault::{BLOCK_SIZE, BlockDigest};
use serde::Serialize;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FileKind {
    File,
    Dir,
    Symlink,
    Other,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FileEntry {
    /// Path from the root, `/`-separated, no leading slash (root is empty).
    /// Raw bytes: names need not be UTF-8.
    #[serde(serialize_with = "rooted")]
    pub path: Vec<u8>,
    pub kind: FileKind,
    pub size: u64,
    /// Permission bits and owner, where the filesystem has them.
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    /// Nanoseconds since the Unix epoch.
    pub mtime_ns: i64,
    /// Stable id within one filesystem (inode, MFT record number), if any.
    pub file_id: Option<u64>,
    #[serde(serialize_with = "escaped_opt")]
    pub link_target: Option<Vec<u8>>,
    /// Where the content lies on the disk, as (disk offset, length) runs,
    /// when the reader knows; lets diff see in-place changes from the
    /// vault's block digests without reading the file.
    #[serde(skip)]
    pub extents: Option<Vec<(u64, u64)>>,
    /// For directory snapshots: a digest of the chunk list, so equal
    /// content is seen without reading it.
    #[serde(skip)]
    pub content_key: Option<[u8; 32]>,
    /// The name holds a `/` or NUL byte: never valid, so the path is
    /// ambiguous. Listed, never descended into, and never restored.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub unsafe_name: bool,
}

/// A path as JSON shows it: as `ls` and `diff` print it (rooted, and
/// escaped where it is not UTF-8, so that two names stay two and either
/// can be given back to `restore`).
fn rooted<S: serde::Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&display(v))
}

fn escaped_opt<S: serde::Serializer>(v: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(v) => s.serialize_some(&escape(v)),
        None => s.serialize_none(),
    }
}

impl FileEntry {
    /// Where this file's bytes lie in 64 KiB blocks whose digests differ
    /// between `old` and `new` (one disk's block digests in two snapshots):
    /// file-relative `start..end` runs in file order, merged, starting
    /// below file offset `stop`, until `budget` bytes are listed. Empty
    /// without extents.
    pub fn changed_runs(
        &self,
        old: &[BlockDigest],
        new: &[BlockDigest],
        stop: u64,
        budget: u64,
    ) -> Vec<(u64, u64)> {
        let bs = BLOCK_SIZE as u64;
        let mut out: Vec<(u64, u64)> = Vec::new();
        let mut file_off = 0u64;
        let mut total = 0u64;
        for &(disk_off, len) in self.extents.as_deref().unwrap_or_default() {
            let mut pos = disk_off;
            let end = disk_off + len;
            while pos < end && total < budget && file_off + (pos - disk_off) < stop {
                let blk = (pos / bs) as usize;
                let upto = ((blk as u64 + 1) * bs).min(end);
                if old.get(blk).is_none() || old.get(blk) != new.get(blk) {
                    let start = file_off + (pos - disk_off);
                    match out.last_mut() {
                        Some(last) if last.1 == start => last.1 = start + (upto - pos),
                        _ => out.push((start, start + (upto - pos))),
                    }
                    total += upto - pos;
                }
                pos = upto;
            }
            file_off += len;
        }
        out
    }

    /// The root directory, for filesystems that record nothing about it.
    pub fn root() -> Self {
        FileEntry {
            path: vec![],
            kind: FileKind::Dir,
            size: 0,
            mode: None,
            uid: None,
            gid: None,
            mtime_ns: 0,
            file_id: None,
            link_target: None,
            extents: None,
            content_key: None,
            unsafe_name: false,
        }
    }

    pub fn name(&self) -> &[u8] {
        self.path
            .rsplit(|&b| b == b'/')
            .next()
            .unwrap_or(&self.path)
    }

    /// The path as text that names exactly these bytes (see [`escape`]).
    pub fn display_path(&self) -> String {
        display(&self.path)
    }
}

/// A raw path (no leading slash) as text: `/`-rooted, escaped.
pub fn display(path: &[u8]) -> String {
    format!("/{}", escape(path))
}

pub use cairn_vault::text::{escape, unescape};

/// Entries found by path without hashing every path: walks return their
/// entries sorted by path, so a lookup is a binary search (a list that is
/// not sorted is sorted here, by reference).
pub struct ByPath<'a>(Vec<&'a FileEntry>);

impl<'a> ByPath<'a> {
    pub fn new(entries: &'a [FileEntry]) -> Self {
        let mut sorted: Vec<&FileEntry> = entries.iter().collect();
        if !sorted.is_sorted_by(|a, b| a.path <= b.path) {
            sorted.sort_by(|a, b| a.path.cmp(&b.path));
        }
        ByPath(sorted)
    }

    /// In path order.
    pub fn entries(&self) -> &[&'a FileEntry] {
        &self.0
    }

    pub fn get(&self, path: &[u8]) -> Option<&'a FileEntry> {
        self.0
            .binary_search_by(|e| e.path.as_slice().cmp(path))
            .ok()
            .map(|i| self.0[i])
    }

    /// The entry a listing shows as `shown` (see [`FileEntry::display_path`]).
    pub fn shown(&self, shown: &str) -> Option<&'a FileEntry> {
        self.get(&unescape(shown.strip_prefix('/').unwrap_or(shown)))
    }
}

/// A read-only filesystem (or a directory snapshot) seen as files.
pub trait Filesystem: Send + Sync {
    /// "ext4", "ntfs", "fat32", "directory"…
    fn kind(&self) -> String;
    /// Every entry under the root, sorted by path, root excluded.
    fn walk(&self) -> Result<Vec<FileEntry>>;
    /// The entry at `path` (no leading slash; empty for the root).
    fn lookup(&self, path: &[u8]) -> Result<FileEntry>;
    /// The entries of one directory, sorted by name.
    fn read_dir(&self, path: &[u8]) -> Result<Vec<FileEntry>>;
    /// Reads file content at `offset`; returns bytes read (0 at the end).
    fn read_at(&self, entry: &FileEntry, offset: u64, buf: &mut [u8]) -> Result<usize>;
    /// Where a file holds data, as file-relative (offset, length) runs in
    /// order; everything else reads as zeros (holes). None: not known, so
    /// all of it is data. A restore reads only these: a file of a few
    /// bytes that claims a terabyte is not read a terabyte long.
    fn data_ranges(&self, _entry: &FileEntry) -> Result<Option<Vec<(u64, u64)>>> {
        Ok(None)
    }
    /// Most entries a walk of this filesystem lists before it takes the
    /// filesystem for crafted (see `walk_under`).
    fn max_entries(&self) -> usize {
        crate::MAX_WALK_ENTRIES
    }
    /// The extended attributes of `entry` (name, value), where the
    /// snapshot keeps them (directory snapshots).
    fn xattrs(&self, _entry: &FileEntry) -> Vec<(Vec<u8>, Vec<u8>)> {
        Vec::new()
    }
    /// For a later name of a hard-linked file, its first name (the path
    /// the content is kept under), where the snapshot records links
    /// (directory snapshots).
    fn first_name(&self, _entry: &FileEntry) -> Option<Vec<u8>> {
        None
    }
    /// The named data streams of `entry` (NTFS's alternate data streams,
    /// on files and folders), by name with their sizes: content beside a
    /// file's own that Windows can run (`wscript report.txt:run.js`), so
    /// a scan reads them too. Most filesystems have none.
    fn streams(&self, _entry: &FileEntry) -> Result<Vec<(String, u64)>> {
        Ok(Vec::new())
    }
    /// Up to `max` bytes of stream `name` of `entry`, from its start.
    fn read_stream(&self, entry: &FileEntry, name: &str, _max: usize) -> Result<Vec<u8>> {
        Err(crate::GuestError::NotFound(format!(
            "{}:{name}",
            entry.display_path()
        )))
    }
}

/// A name no real filesystem allows: it would escape or confuse a path.
pub fn is_unsafe_name(name: &[u8]) -> bool {
    name.contains(&b'/') || name.contains(&0)
}

/// Joins a parent path and a name.
pub fn join(parent: &[u8], name: &[u8]) -> Vec<u8> {
    let mut p = Vec::with_capacity(parent.len() + name.len() + 1);
    p.extend_from_slice(parent);
    if !parent.is_empty() {
        p.push(b'/');
    }
    p.extend_from_slice(name);
    p
}

/// Whether a filesystem of this kind (`Filesystem::kind`) is Windows's:
/// its names match in any case, and Windows writes its paths with `\`.
pub fn windows_kind(kind: &str) -> bool {
    matches!(kind, "ntfs" | "fat12" | "fat16" | "fat32")
}

/// Normalises a user-given guest path: strips slashes at both ends,
/// refuses `.` and `..` components.
/// Escapes as [`escape`] prints them are read back, so any name a listing
/// shows can be given.
pub fn normalize(path: &str) -> Result<Vec<u8>> {
    let bytes = unescape(path);
    let mut out: Vec<&[u8]> = Vec::new();
    for c in bytes.split(|&b| b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => {
                return Err(crate::error::GuestError::NotFound(format!(
                    "{path} (.. is not allowed)"
                )));
            }
            c => out.push(c),
        }
    }
    Ok(out.join(&b'/'))
}

/// Most links followed while resolving one path (Linux's own bound).
const MAX_LINKS: usize = 40;

/// `path` (normalized) with the links among its folders followed inside
/// the snapshot — `bin/ls` where `bin` links to `usr/bin` is
/// `usr/bin/ls`, as current Debian lays out `/bin`, `/sbin` and `/lib` —
/// and, when `last` is set, a link at the end too. An absolute target
/// starts at the snapshot's root and `..` never climbs above it (the
/// guest's links name the guest's files, never this machine's); more than
/// 40 links is a loop. Where a folder is not found the path is given
/// back as it stands, for the lookup to say so. Windows filesystems are
/// left alone (their reparse points name drives).
pub fn follow_links(fs: &dyn Filesystem, path: &[u8], last: bool) -> Result<Vec<u8>> {
    if windows_kind(&fs.kind()) {
        return Ok(path.to_vec());
    }
    let mut todo: std::collections::VecDeque<Vec<u8>> = path
        .split(|&b| b == b'/')
        .filter(|c| !c.is_empty())
        .map(<[u8]>::to_vec)
        .collect();
    let mut done: Vec<Vec<u8>> = Vec::new();
    let mut links = 0;
    while let Some(c) = todo.pop_front() {
        match c.as_slice() {
            b"." => continue,
            b".." => {
                done.pop();
                continue;
            }
            _ => done.push(c),
        }
        if todo.is_empty() && !last {
            break;
        }
        let here = done.join(&b'/');
        let Ok(e) = fs.lookup(&here) else {
            done.extend(todo.drain(..));
            break;
        };
        if e.kind != FileKind::Symlink {
            continue;
        }
        links += 1;
        if links > MAX_LINKS {
            return Err(crate::error::GuestError::NotFound(format!(
                "/{} (more than {MAX_LINKS} links: a loop)",
                escape(path)
            )));
        }
        let target = e.link_target.unwrap_or_default();
        done.pop();
        if target.starts_with(b"/") {
            done.clear();
        }
        for c in target.split(|&b| b == b'/').rev().filter(|c| !c.is_empty()) {
            todo.push_front(c.to_vec());
        }
    }
    Ok(done.join(&b'/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaped_names_read_back_to_the_same_bytes() {
        for name in [
            &b"plain.txt"[..],
            b"new\nline",
            b"bad\xff\xfe",
            b"back\\slash",
            b"tab\tcr\r",
            b"\x1b[31mred",
            "caf\u{e9}".as_bytes(),
            b"\\x41 literal",
            "invoice\u{202e}fdp.exe".as_bytes(),
        ] {
            let shown = escape(name);
            assert!(!shown.chars().any(char::is_control), "{shown:?}");
            assert_eq!(unescape(&shown), name, "{shown:?}");
        }
        assert_eq!(escape(b"bad\xff"), "bad\\xff");
        assert_eq!(escape(b"new\nline"), "new\\nline");
        // A right-to-left override would show "invoiceexe.pdf".
        assert_eq!(
            escape("invoice\u{202e}fdp.exe".as_bytes()),
            "invoice\\xe2\\x80\\xaefdp.exe"
        );
        assert_eq!(
            unescape("a\\b"),
            b"a\\b",
            "an unknown escape stays as typed"
        );
        assert_eq!(
            normalize("/dir/bad\\xff\\xfe/").unwrap(),
            b"dir/bad\xff\xfe"
        );
        assert!(normalize("a/../b").is_err());
    }
}
