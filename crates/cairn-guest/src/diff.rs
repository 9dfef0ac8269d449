//! What changed between two snapshots, file by file: added, deleted,
//! modified, and renamed or moved (same file id, or same content at a new
//! path). Works on any two file lists from the same kind of source.

use crate::model::{ByPath, FileEntry, FileKind, escape};
use serde::Serialize;
use std::cmp::Ordering;
use std::collections::HashMap;

#[derive(Debug, Default, Serialize, PartialEq)]
pub struct Diff {
    pub added: Vec<Added>,
    pub deleted: Vec<Added>,
    pub modified: Vec<Modified>,
    pub renamed: Vec<Renamed>,
    /// Folders one side could not read: what lies below them is left out
    /// on both sides (neither added nor deleted, just unknown).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub unread: Vec<String>,
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
    /// Whether each (old, new) pair of files at the same path, of the same
    /// size and mtime, differs in content, worked out together (in
    /// parallel); `None` where `changed` must be asked.
    fn prepare(&mut self, pairs: &[(&FileEntry, &FileEntry)]) -> Vec<Option<bool>> {
        vec![None; pairs.len()]
    }
}

/// A path as listings show it: escaped, so that it names exactly these
/// bytes and a crafted name cannot forge a line (see
/// [`FileEntry::display_path`]).
fn shown(p: &[u8]) -> String {
    format!("/{}", escape(p))
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

/// Both lists in one path order, entries of the same path side by side
/// (a merge of the sorted lists: no path is hashed).
fn side_by_side<'a>(
    old: &'a [FileEntry],
    new: &'a [FileEntry],
) -> Vec<(Option<&'a FileEntry>, Option<&'a FileEntry>)> {
    let (old, new) = (ByPath::new(old), ByPath::new(new));
    let (o, n) = (old.entries(), new.entries());
    let (mut i, mut j) = (0, 0);
    let mut out = Vec::with_capacity(o.len().max(n.len()));
    loop {
        let next = match (o.get(i), n.get(j)) {
            (None, None) => break,
            (Some(a), Some(b)) => match a.path.cmp(&b.path) {
                Ordering::Less => (Some(*a), None),
                Ordering::Greater => (None, Some(*b)),
                Ordering::Equal => (Some(*a), Some(*b)),
            },
            (a, b) => (a.copied(), b.copied()),
        };
        i += next.0.is_some() as usize;
        j += next.1.is_some() as usize;
        out.push(next);
    }
    out
}

pub fn diff(old: &[FileEntry], new: &[FileEntry], check: &mut dyn ContentCheck) -> Diff {
    let paired = side_by_side(old, new);
    let mut d = Diff::default();
    let in_place = |o: &FileEntry, n: &FileEntry| {
        n.kind == FileKind::File && o.kind == n.kind && o.size == n.size && o.mtime_ns == n.mtime_ns
    };
    let same_path: Vec<(&FileEntry, &FileEntry)> = paired
        .iter()
        .filter_map(|p| match *p {
            (Some(o), Some(n)) if in_place(o, n) => Some((o, n)),
            _ => None,
        })
        .collect();
    let mut answers = check.prepare(&same_path).into_iter();
    let mut gone: Vec<&FileEntry> = Vec::new();
    let mut came: Vec<&FileEntry> = Vec::new();
    let mut only_old: Vec<&FileEntry> = Vec::new();
    for p in &paired {
        match *p {
            (Some(o), Some(n)) if o.kind == n.kind => {
                // The prepared answers come in this same order.
                let known = if in_place(o, n) {
                    answers.next().flatten()
                } else {
                    None
                };
                if known.unwrap_or_else(|| differs(o, n, check)) {
                    d.modified.push(Modified {
                        path: shown(&n.path),
                        old_size: o.size,
                        new_size: n.size,
                        old_mtime: o.mtime_ns / 1_000_000_000,
                        new_mtime: n.mtime_ns / 1_000_000_000,
                    });
                }
            }
            (Some(o), Some(n)) => {
                gone.push(o);
                came.push(n);
            }
            (None, Some(n)) => came.push(n),
            (Some(o), None) => only_old.push(o),
            (None, None) => {}
        }
    }
    gone.extend(only_old);

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
    // A new file named as a deleted one plus an extension (`a.jpg` gone,
    // `a.jpg.enc` come) is that file's copy, whatever inode it took: a
    // locker writes each copy and deletes its original, so the next copy
    // often takes the inode just freed — of another file, of the same
    // size when the originals are — and pairing by id would shift every
    // pair by one.
    let gone_files: std::collections::HashSet<&[u8]> = gone
        .iter()
        .filter(|o| o.kind == FileKind::File)
        .map(|o| o.path.as_slice())
        .collect();
    fn copy_of<'p>(n: &'p FileEntry, gone: &std::collections::HashSet<&[u8]>) -> Option<&'p [u8]> {
        let name_at = n.path.iter().rposition(|&b| b == b'/').map_or(0, |i| i + 1);
        let dot = n.path[name_at..].iter().rposition(|&b| b == b'.')? + name_at;
        let stem = &n.path[..dot];
        gone.contains(stem).then_some(stem)
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
            let anothers_copy =
                copy_of(n, &gone_files).is_some_and(|stem| stem != o.path.as_slice());
            if o.kind == FileKind::Dir
                || !modified
                || (o.size == n.size && !anothers_copy)
                || o.name() == n.name()
            {
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
    let (ow, ou) = crate::readable_part(old.fs.as_ref())?;
    let (nw, nu) = crate::readable_part(new.fs.as_ref())?;
    let hidden = crate::failed_folders(ou.iter().chain(&nu));
    let (ow, nw) = (crate::outside(&ow, &hidden), crate::outside(&nw, &hidden));
    let unread = ou
        .iter()
        .map(|u| format!("{} (in the older snapshot)", u.describe()))
        .chain(
            nu.iter()
                .map(|u| format!("{} (in the newer snapshot)", u.describe())),
        )
        .collect();
    let d = match (&old.disk, &new.disk) {
        (Some(od), Some(nd)) => diff(
            &ow,
            &nw,
            &mut crate::check::DiskCheck::new(old.fs.as_ref(), new.fs.as_ref(), od, nd),
        ),
        _ => diff(&ow, &nw, &mut crate::check::TreeCheck),
    };
    Ok(Diff { unread, ..d })
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Unreadable;
    impl ContentCheck for Unreadable {
        fn changed(&mut self, _: &FileEntry, _: &FileEntry) -> bool {
            true
        }
        fn digest(&mut self, _: &FileEntry, _: bool) -> Option<[u8; 32]> {
            None
        }
    }

    fn file(path: &str, id: u64, size: u64) -> FileEntry {
        FileEntry {
            path: path.as_bytes().to_vec(),
            kind: FileKind::File,
            size,
            mode: None,
            uid: None,
            gid: None,
            mtime_ns: id as i64,
            file_id: Some(id),
            link_target: None,
            extents: None,
            content_key: None,
            unsafe_name: false,
        }
    }

    #[test]
    fn copies_that_took_the_inodes_of_other_originals_pair_with_their_own() {
        // img0..img3 of one size; each encrypted copy took the inode its
        // predecessor's original freed (the first a fresh one).
        let old: Vec<FileEntry> = (0..4)
            .map(|i| file(&format!("p/img{i}.jpg"), 10 + i, 500))
            .collect();
        let new: Vec<FileEntry> = (0..4)
            .map(|i| {
                file(
                    &format!("p/img{i}.jpg.enc"),
                    if i == 0 { 99 } else { 9 + i },
                    500,
                )
            })
            .collect();
        let d = diff(&old, &new, &mut Unreadable);
        let shifted: Vec<_> = d
            .renamed
            .iter()
            .filter(|r| format!("{}.enc", r.from) != r.to)
            .collect();
        assert!(shifted.is_empty(), "{:?}", d.renamed);
        // A plain rename that kept its inode still pairs.
        let d = diff(
            &[file("a/x.txt", 5, 100)],
            &[file("b/y.txt", 5, 100)],
            &mut Unreadable,
        );
        assert_eq!(d.renamed.len(), 1);
    }
}
