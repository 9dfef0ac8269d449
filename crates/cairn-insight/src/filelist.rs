//! Each analysed snapshot's file list, stored beside its insight record
//! (`insight/v<N>/<id>.files`), so the next snapshot is compared with it
//! without walking the parent's filesystem again.

use cairn_guest::{FileEntry, FileKind};
use cairn_vault::{SnapshotId, Vault};
use serde::{Deserialize, Serialize};

/// Lists larger than this are not stored (the parent is walked instead).
const MAX_ENTRIES: usize = 2_000_000;

#[derive(Serialize, Deserialize)]
struct Stored {
    path: Vec<u8>,
    kind: u8,
    size: u64,
    mode: Option<u32>,
    uid: Option<u32>,
    gid: Option<u32>,
    mtime_ns: i64,
    file_id: Option<u64>,
    link_target: Option<Vec<u8>>,
    extents: Option<Vec<(u64, u64)>>,
    content_key: Option<[u8; 32]>,
    unsafe_name: bool,
}

pub fn object_name(id: &SnapshotId) -> String {
    format!("{}.files", crate::record_name(id))
}

fn kind_code(k: FileKind) -> u8 {
    match k {
        FileKind::File => 0,
        FileKind::Dir => 1,
        FileKind::Symlink => 2,
        FileKind::Other => 3,
    }
}

fn kind_of(c: u8) -> FileKind {
    match c {
        0 => FileKind::File,
        1 => FileKind::Dir,
        2 => FileKind::Symlink,
        _ => FileKind::Other,
    }
}

pub fn save(vault: &Vault, id: &SnapshotId, entries: &[FileEntry]) -> cairn_vault::Result<()> {
    if entries.len() > MAX_ENTRIES {
        return Ok(());
    }
    let stored: Vec<Stored> = entries
        .iter()
        .map(|e| Stored {
            path: e.path.clone(),
            kind: kind_code(e.kind),
            size: e.size,
            mode: e.mode,
            uid: e.uid,
            gid: e.gid,
            mtime_ns: e.mtime_ns,
            file_id: e.file_id,
            link_target: e.link_target.clone(),
            extents: e.extents.clone(),
            content_key: e.content_key,
            unsafe_name: e.unsafe_name,
        })
        .collect();
    let bytes = postcard::to_stdvec(&stored)
        .map_err(|e| cairn_vault::Error::Invalid(format!("serializing a file list: {e}")))?;
    vault.put_sealed(&object_name(id), &bytes)?;
    Ok(())
}

/// The stored list of a snapshot, if there is a readable one.
pub fn load(vault: &Vault, id: &SnapshotId) -> Option<Vec<FileEntry>> {
    let name = object_name(id);
    if !vault.backend().exists(&name).ok()? {
        return None;
    }
    let stored: Vec<Stored> = postcard::from_bytes(&vault.read_object(&name).ok()?).ok()?;
    Some(
        stored
            .into_iter()
            .map(|s| FileEntry {
                path: s.path,
                kind: kind_of(s.kind),
                size: s.size,
                mode: s.mode,
                uid: s.uid,
                gid: s.gid,
                mtime_ns: s.mtime_ns,
                file_id: s.file_id,
                link_target: s.link_target,
                extents: s.extents,
                content_key: s.content_key,
                unsafe_name: s.unsafe_name,
            })
            .collect(),
    )
}
