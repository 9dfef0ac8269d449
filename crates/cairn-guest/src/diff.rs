//! What changed between two snapshots, file by file: added, deleted,
//! modified, and renamed or moved (same file id, or same content at a new
//! path). Works on any two file lists from the same kind of source.

use crate::model::{FileEntry, FileKind};
use serde::Serialize;
use std::collections::HashMap;

#[derive(Debug, Default, Serialize, PartialEq)]
pub struct Diff {
    pub added: Vec<Added>,
    pub deleted: Vec<Added>,
    pub modified: Vec<Modified>,
    pub renamed: Vec<Renamed>,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct Added {
    pub path: String,
    pub size: u64,
    pub mtime: i64,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct Modified {
    pub path: String,
    pub old_size: u64,
    pub new_size: u64,
    pub old_mtime: i64,
    pub new_mtime: i64,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct Renamed {
    pub from: String,
    pub to: String,
    pub size: u64,
    /// The content changed as well (e.g. encrypted, then renamed).
    pub modified: bool,
}

/// How a caller tells whether two versions of a file differ in content
/// (for disks, from block digests; for directory trees, from chunk ids).
pub trait ContentCheck {
    /// True when the content of `old` and `new` differs.
    fn changed(&mut self, old: &FileEntry, new: &FileEntry) -> bool;
    /// A digest of the content of `e` (from the new snapshot when `new`),
    /// for matching moved files; `None` when it cannot be had.
    fn digest(&mut self, e: &FileEntry, new: bool) -> Option<[u8; 32]>;
    /// Told up front which (old, new) pairs `changed` will be asked about,
    /// so that it can work them out together (in parallel).
    fn prepare(&mut self, _pairs: &[(&FileEntry, &FileEntry)]) {}
}

fn shown(p: &[u8]) -> String {
    format!("/{}", String::from_utf8_lossy(p))
}

fn added(e: &FileEntry) -> Added {
    Added {
        path: shown(&e.path),
        size: e.size,
        mtime: e.mtime_ns / 1_000_000_000,
    }
}

fn differs(o: &FileEntry, n: &FileEntry, check: &mut dyn ContentCheck) -> bool {
    match n.kind {
        FileKind::File => o.size != n.size || o.mtime_ns != n.mtime_ns || check.changed(o, n),
        FileKind::Symlink => o.link_target != n.link_target,
        _ => false, // a directory's own change is the change of its entries
    }
}

pub fn diff(old: &[FileEntry], new: &[FileEntry], check: &mut dyn ContentCheck) -> Diff {
    let old_by: HashMap<&[u8], &FileEntry> = old.iter().map(|e| (e.path.as_slice(), e)).collect();
    let new_by: HashMap<&[u8], &FileEntry> = new.iter().map(|e| (e.path.as_slice(), e)).collect();
    let mut d = Diff::default();
    let same_path: Vec<(&FileEntry, &FileEntry)> = new
        .iter()
        .filter_map(|n| old_by.get(n.path.as_slice()).map(|o| (*o, n)))
        .filter(|(o, n)| {
            n.kind == FileKind::File
                && o.kind == n.kind
                && o.size == n.size
                && o.mtime_ns == n.mtime_ns
        })
        .collect();
    check.prepare(&same_path);
    let mut gone: Vec<&FileEntry> = Vec::new();
    let mut came: Vec<&FileEntry> = Vec::new();
    for n in new {
        match old_by.get(n.path.as_slice()) {
            Some(o) if o.kind == n.kind => {
                if differs(o, n, check) {
                    d.modified.push(Modified {
                        path: shown(&n.path),
                        old_size: o.size,
                        new_size: n.size,
                        old_mtime: o.mtime_ns / 1_000_000_000,
                        new_mtime: n.mtime_ns / 1_000_000_000,
                    });
                }
            }
            Some(o) => {
                gone.push(o);
                came.push(n);
            }
            None => came.push(n),
        }
    }
    gone.extend(
        old.iter()
            .filter(|o| !new_by.contains_key(o.path.as_slice())),
    );

    // Renames: first by file id (same inode or MFT record, same kind), then
    // by content among files of equal size.
    let mut matched_old = vec![false; gone.len()];
    let mut matched_new = vec![false; came.len()];
    let mut by_id: HashMap<(u64, bool), Vec<usize>> = HashMap::new();
    for (i, o) in gone.iter().enumerate() {
        if let Some(id) = o.file_id {
            by_id
                .entry((id, o.kind == FileKind::Dir))
                .or_default()
                .push(i);
        }
    }
    for (j, n) in came.iter().enumerate() {
        let Some(id) = n.file_id else { continue };
        let Some(cands) = by_id.get_mut(&(id, n.kind == FileKind::Dir)) else {
            continue;
        };
        if let Some(pos) = cands.iter().position(|&i| !matched_old[i]) {
            let i = cands.remove(pos);
            let o = gone[i];
            // An inode freed and reused by an unrelated new file would
            // match by id: require the same size or unchanged content.
            let modified = differs(o, n, check);
            if o.kind == FileKind::Dir || !modified || o.size == n.size || o.name() == n.name() {
                matched_old[i] = true;
                matched_new[j] = true;
                d.renamed.push(Renamed {
                    from: shown(&o.path),
                    to: shown(&n.path),
                    size: n.size,
                    modified: modified && o.kind != FileKind::Dir,
                });
            } else {
                cands.insert(pos, i);
            }
        }
    }
    let mut by_size: HashMap<u64, Vec<usize>> = HashMap::new();
    for (i, o) in gone.iter().enumerate() {
        if !matched_old[i] && o.kind == FileKind::File && o.size > 0 {
            by_size.entry(o.size).or_default().push(i);
        }
    }
    for (j, n) in came.iter().enumerate() {
        if matched_new[j] || n.kind != FileKind::File || n.size == 0 {
            continue;
        }
        let Some(cands) = by_size.get(&n.size) else {
            continue;
        };
        let Some(dn) = check.digest(n, true) else {
            continue;
        };
        for &i in cands {
            if !matched_old[i] && check.digest(gone[i], false) == Some(dn) {
                matched_old[i] = true;
                matched_new[j] = true;
                d.renamed.push(Renamed {
                    from: shown(&gone[i].path),
                    to: shown(&n.path),
                    size: n.size,
                    modified: false,
                });
                break;
            }
        }
    }
    for (i, o) in gone.iter().enumerate() {
        if !matched_old[i] {
            d.deleted.push(added(o));
        }
    }
    for (j, n) in came.iter().enumerate() {
        if !matched_new[j] {
            d.added.push(added(n));
        }
    }
    d.added.sort_by(|a, b| a.path.cmp(&b.path));
    d.deleted.sort_by(|a, b| a.path.cmp(&b.path));
    d.renamed.sort_by(|a, b| a.to.cmp(&b.to));
    d
}

/// What changed from snapshot `old` to snapshot `new`, both opened: disk
/// snapshots check in-place change against the vault's block digests,
/// directory snapshots against their chunk lists.
pub fn between(old: &crate::Opened, new: &crate::Opened) -> crate::Result<Diff> {
    let (ow, nw) = (old.fs.walk()?, new.fs.walk()?);
    Ok(match (&old.disk, &new.disk) {
        (Some(od), Some(nd)) => diff(
            &ow,
            &nw,
            &mut crate::check::DiskCheck::new(old.fs.as_ref(), new.fs.as_ref(), od, nd),
        ),
        _ => diff(&ow, &nw, &mut crate::check::TreeCheck),
    })
}
