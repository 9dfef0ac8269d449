//! A directory snapshot seen through the same `Filesystem` interface as a
//! disk's filesystem, so ls, cat, diff and file restore treat both alike.

use crate::error::{GuestError, Result};
use crate::model::{FileEntry, FileKind, Filesystem};
use cairn_vault::Vault;
use cairn_vault::tree::{Entry, EntryKind, Tree};
use std::sync::Arc;

pub struct TreeFs {
    vault: Arc<Vault>,
    tree: Tree,
}

impl TreeFs {
    pub fn new(vault: Arc<Vault>, tree: Tree) -> Self {
        TreeFs { vault, tree }
    }

    fn to_entry(&self, e: &Entry) -> FileEntry {
        let kind = match e.kind {
            EntryKind::File => FileKind::File,
            EntryKind::Dir => FileKind::Dir,
            EntryKind::Symlink => FileKind::Symlink,
            _ => FileKind::Other,
        };
        let content = self.content_of(e);
        let content_key = (kind == FileKind::File).then(|| {
            let mut h = blake3::Hasher::new();
            for c in &content.chunks {
                h.update(&c.id.0);
            }
            *h.finalize().as_bytes()
        });
        FileEntry {
            path: e.path.clone(),
            kind,
            size: e.size,
            mode: Some(e.mode),
            uid: Some(e.uid),
            gid: Some(e.gid),
            mtime_ns: e.mtime_ns,
            file_id: Some(e.inode),
            link_target: e.link_target.clone(),
            extents: None,
            content_key,
            unsafe_name: false,
        }
    }

    /// The entry that holds the content (the first name of a hard link).
    fn content_of<'a>(&'a self, e: &'a Entry) -> &'a Entry {
        e.hardlink_to
            .as_deref()
            .and_then(|p| self.tree.find(p))
            .unwrap_or(e)
    }
}

impl Filesystem for TreeFs {
    fn kind(&self) -> String {
        "directory".into()
    }

    fn walk(&self) -> Result<Vec<FileEntry>> {
        Ok(self.tree.entries.iter().map(|e| self.to_entry(e)).collect())
    }

    fn lookup(&self, path: &[u8]) -> Result<FileEntry> {
        if path.is_empty() {
            return Ok(FileEntry::root());
        }
        self.tree
            .find(path)
            .map(|e| self.to_entry(e))
            .ok_or_else(|| GuestError::NotFound(format!("/{}", String::from_utf8_lossy(path))))
    }

    fn read_dir(&self, path: &[u8]) -> Result<Vec<FileEntry>> {
        let dir = self.lookup(path)?;
        if dir.kind != FileKind::Dir {
            return Err(GuestError::NotFound(format!(
                "{} is not a directory",
                dir.display_path()
            )));
        }
        let prefix: Vec<u8> = if path.is_empty() {
            vec![]
        } else {
            [path, b"/"].concat()
        };
        let start = self
            .tree
            .entries
            .partition_point(|e| e.path.as_slice() < prefix.as_slice());
        Ok(self.tree.entries[start..]
            .iter()
            .take_while(|e| e.path.starts_with(&prefix))
            .filter(|e| !e.path[prefix.len()..].contains(&b'/'))
            .map(|e| self.to_entry(e))
            .collect())
    }

    fn xattrs(&self, entry: &FileEntry) -> Vec<(Vec<u8>, Vec<u8>)> {
        self.tree
            .find(&entry.path)
            .map(|e| e.xattrs.clone())
            .unwrap_or_default()
    }

    fn first_name(&self, entry: &FileEntry) -> Option<Vec<u8>> {
        self.tree.find(&entry.path)?.hardlink_to.clone()
    }

    fn read_at(&self, entry: &FileEntry, offset: u64, buf: &mut [u8]) -> Result<usize> {
        let e = self
            .tree
            .find(&entry.path)
            .ok_or_else(|| GuestError::NotFound(entry.display_path()))?;
        let e = self.content_of(e);
        let mut start = 0u64;
        let mut done = 0usize;
        for c in &e.chunks {
            let end = start + c.len as u64;
            let pos = offset + done as u64;
            if done == buf.len() {
                break;
            }
            if pos < end && pos >= start {
                let data = self.vault.read_chunk(&c.id).map_err(GuestError::Vault)?;
                // A tree claiming a chunk longer than it is reads as short.
                let within = ((pos - start) as usize).min(data.len());
                let n = (data.len() - within.min(data.len())).min(buf.len() - done);
                buf[done..done + n].copy_from_slice(&data[within..within + n]);
                done += n;
            }
            start = end;
        }
        Ok(done)
    }
}
