//! A directory snapshot's tree: every entry with its metadata, sorted by
//! path, so that parents come before children and two trees diff with one
//! merge pass.

use crate::hash::{BlockDigest, ChunkId};
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EntryKind {
    File,
    Dir,
    Symlink,
    Fifo,
    CharDevice,
    BlockDevice,
    Socket,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileChunk {
    pub id: ChunkId,
    pub len: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Relative path, `/`-separated, as raw bytes (names need not be UTF-8).
    pub path: Vec<u8>,
    pub kind: EntryKind,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime_ns: i64,
    pub size: u64,
    /// Inode on the source; with size and mtime it tells an unchanged file.
    pub inode: u64,
    pub rdev: u64,
    pub link_target: Option<Vec<u8>>,
    /// Set on the second and later names of a hard-linked file: the path
    /// of the first name, which holds the content.
    pub hardlink_to: Option<Vec<u8>>,
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    pub chunks: Vec<FileChunk>,
    /// 64 KiB block digests of each chunk, in order.
    pub blocks: Vec<BlockDigest>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Tree {
    pub entries: Vec<Entry>,
}

impl Tree {
    pub fn find(&self, path: &[u8]) -> Option<&Entry> {
        self.entries
            .binary_search_by(|e| e.path.as_slice().cmp(path))
            .ok()
            .map(|i| &self.entries[i])
    }
}
