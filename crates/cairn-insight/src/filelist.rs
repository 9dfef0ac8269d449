//! Each analysed snapshot's file list, stored as `insight/v1/<id>.list`
//! (under the first version of the insight records, whatever theirs is
//! now: a list does not change when the facts computed from it do), so
//! the next snapshot is compared with it without walking the parent's
//! filesystem again.

use cairn_guest::{FileEntry, FileKind};
use cairn_vault::{SnapshotId, Vault};
use serde::{Deserialize, Serialize};

/// Lists larger than this are not stored (the parent is walked instead).
const MAX_ENTRIES: usize = 2_000_000;

/// One entry in the first format (read, no longer written but by tests).
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

/// The list in its first format (one record per entry); still read.
fn legacy_name(id: &SnapshotId) -> String {
    format!("insight/v1/{}.files", id.0)
}

pub fn object_name(id: &SnapshotId) -> String {
    format!("insight/v1/{}.list", id.0)
}

/// The list as stored: column by column, so that like values sit together
/// for the compressor, each path as the bytes it shares with the one
/// before plus the rest, and disk offsets and inode numbers as differences
/// from the previous ones. 24,128 entries of the benchmark's guest take
/// ~40% of what one record per entry took.
#[derive(Serialize, Deserialize, Default)]
struct Columns {
    shared: Vec<u32>,
    rest: Vec<Vec<u8>>,
    kind: Vec<u8>,
    size: Vec<u64>,
    mode: Vec<Option<u32>>,
    uid: Vec<Option<u32>>,
    gid: Vec<Option<u32>>,
    mtime_ns: Vec<i64>,
    file_id: Vec<Option<i64>>,
    link_target: Vec<Option<Vec<u8>>>,
    /// (start minus the end of the previous run, length).
    extents: Vec<Option<Vec<(i64, u64)>>>,
    content_key: Vec<Option<[u8; 32]>>,
    unsafe_name: Vec<bool>,
}

impl Columns {
    fn of(entries: &[FileEntry]) -> Columns {
        let mut c = Columns::default();
        let mut prev: &[u8] = &[];
        let mut prev_id = 0u64;
        let mut prev_end = 0u64;
        for e in entries {
            let shared = prev.iter().zip(&e.path).take_while(|(a, b)| a == b).count();
            c.shared.push(shared as u32);
            c.rest.push(e.path[shared..].to_vec());
            prev = &e.path;
            c.kind.push(kind_code(e.kind));
            c.size.push(e.size);
            c.mode.push(e.mode);
            c.uid.push(e.uid);
            c.gid.push(e.gid);
            c.mtime_ns.push(e.mtime_ns);
            c.file_id.push(e.file_id.map(|id| {
                let d = id.wrapping_sub(prev_id) as i64;
                prev_id = id;
                d
            }));
            c.link_target.push(e.link_target.clone());
            c.extents.push(e.extents.as_ref().map(|runs| {
                runs.iter()
                    .map(|&(start, len)| {
                        let d = start.wrapping_sub(prev_end) as i64;
                        prev_end = start.wrapping_add(len);
                        (d, len)
                    })
                    .collect()
            }));
            c.content_key.push(e.content_key);
            c.unsafe_name.push(e.unsafe_name);
        }
        c
    }

    /// The entries back, or `None` when the columns disagree (a damaged
    /// or foreign object): never a panic.
    fn entries(self) -> Option<Vec<FileEntry>> {
        let n = self.shared.len();
        let lens = [
            self.rest.len(),
            self.kind.len(),
            self.size.len(),
            self.mode.len(),
            self.uid.len(),
            self.gid.len(),
            self.mtime_ns.len(),
            self.file_id.len(),
            self.link_target.len(),
            self.extents.len(),
            self.content_key.len(),
            self.unsafe_name.len(),
        ];
        if n > MAX_ENTRIES || lens.iter().any(|&l| l != n) {
            return None;
        }
        let mut out: Vec<FileEntry> = Vec::with_capacity(n);
        let mut prev_id = 0u64;
        let mut prev_end = 0u64;
        let mut rest = self.rest.into_iter();
        let mut link = self.link_target.into_iter();
        let mut extents = self.extents.into_iter();
        for i in 0..n {
            let shared = self.shared[i] as usize;
            let mut path = match out.last() {
                Some(p) if shared <= p.path.len() => p.path[..shared].to_vec(),
                None if shared == 0 => Vec::new(),
                _ => return None,
            };
            path.extend_from_slice(&rest.next()?);
            out.push(FileEntry {
                path,
                kind: kind_of(self.kind[i]),
                size: self.size[i],
                mode: self.mode[i],
                uid: self.uid[i],
                gid: self.gid[i],
                mtime_ns: self.mtime_ns[i],
                file_id: self.file_id[i].map(|d| {
                    prev_id = prev_id.wrapping_add(d as u64);
                    prev_id
                }),
                link_target: link.next()?,
                extents: extents.next()?.map(|runs| {
                    runs.into_iter()
                        .map(|(d, len)| {
                            let start = prev_end.wrapping_add(d as u64);
                            prev_end = start.wrapping_add(len);
                            (start, len)
                        })
                        .collect()
                }),
                content_key: self.content_key[i],
                unsafe_name: self.unsafe_name[i],
            });
        }
        Some(out)
    }
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
    let bytes = postcard::to_stdvec(&Columns::of(entries))
        .map_err(|e| cairn_vault::Error::Invalid(format!("serializing a file list: {e}")))?;
    vault.put_sealed(&object_name(id), &bytes)?;
    Ok(())
}

/// The stored list of a snapshot, if there is a readable one.
pub fn load(vault: &Vault, id: &SnapshotId) -> Option<Vec<FileEntry>> {
    let name = object_name(id);
    if vault.backend().exists(&name).ok()? {
        let columns: Columns = postcard::from_bytes(&vault.read_object(&name).ok()?).ok()?;
        return columns.entries();
    }
    let name = legacy_name(id);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(path: &str, kind: FileKind, id: u64, runs: Option<Vec<(u64, u64)>>) -> FileEntry {
        FileEntry {
            path: path.as_bytes().to_vec(),
            kind,
            size: runs.as_ref().map_or(0, |r| r.iter().map(|x| x.1).sum()),
            mode: Some(0o644),
            uid: id.is_multiple_of(2).then_some(1000),
            gid: Some(1000),
            mtime_ns: 1_700_000_000_000_000_000 - id as i64 * 7,
            file_id: Some(id),
            link_target: None,
            extents: runs,
            content_key: None,
            unsafe_name: false,
        }
    }

    fn sample() -> Vec<FileEntry> {
        let mut v = vec![
            entry("", FileKind::Dir, 2, None),
            entry("etc", FileKind::Dir, 12, None),
            entry(
                "etc/passwd",
                FileKind::File,
                13,
                Some(vec![(1 << 30, 4096)]),
            ),
            // Runs that go backwards, and an id smaller than the last.
            entry(
                "etc/shadow",
                FileKind::File,
                9,
                Some(vec![(8192, 4096), (1 << 40, 65536)]),
            ),
            entry("etc/empty", FileKind::File, u64::MAX, Some(vec![])),
        ];
        let mut link = entry("etc/link", FileKind::Symlink, 14, None);
        link.link_target = Some(b"/etc/passwd".to_vec());
        link.file_id = None;
        link.mode = None;
        v.push(link);
        let mut odd = entry("etc/odd", FileKind::Other, 15, None);
        odd.path = b"etc/a\nb\xff".to_vec();
        odd.unsafe_name = true;
        odd.content_key = Some([7; 32]);
        odd.mtime_ns = -5;
        v.push(odd);
        v
    }

    fn same(a: &[FileEntry], b: &[FileEntry]) {
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(b) {
            assert_eq!(
                (
                    &x.path, x.kind, x.size, x.mode, x.uid, x.gid, x.mtime_ns, x.file_id
                ),
                (
                    &y.path, y.kind, y.size, y.mode, y.uid, y.gid, y.mtime_ns, y.file_id
                )
            );
            assert_eq!(
                (&x.link_target, &x.extents, x.content_key, x.unsafe_name),
                (&y.link_target, &y.extents, y.content_key, y.unsafe_name)
            );
        }
    }

    #[test]
    fn a_list_reads_back_column_by_column() {
        let entries = sample();
        let bytes = postcard::to_stdvec(&Columns::of(&entries)).unwrap();
        let back: Columns = postcard::from_bytes(&bytes).unwrap();
        same(&back.entries().unwrap(), &entries);
    }

    /// Through a real vault: a list saved now reads back, and a list in
    /// the first format (one record per entry, `.files`) still does.
    #[test]
    fn saved_and_first_format_lists_load_from_a_vault() {
        let dir = std::env::temp_dir().join(format!("cairn-filelist-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let vault = Vault::init(&dir, b"pw", &Default::default()).unwrap();
        let entries = sample();
        let new_id = SnapshotId::generate().unwrap();
        save(&vault, &new_id, &entries).unwrap();
        let old_id = SnapshotId::generate().unwrap();
        let old: Vec<Stored> = entries
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
        vault
            .put_sealed(&legacy_name(&old_id), &postcard::to_stdvec(&old).unwrap())
            .unwrap();
        let from_new = load(&vault, &new_id);
        let from_old = load(&vault, &old_id);
        let none = load(&vault, &SnapshotId::generate().unwrap());
        let _ = std::fs::remove_dir_all(&dir);
        same(&from_new.unwrap(), &entries);
        same(&from_old.unwrap(), &entries);
        assert!(none.is_none());
    }

    #[test]
    fn columns_that_disagree_are_refused_without_panicking() {
        let entries = sample();
        let mut short = Columns::of(&entries);
        short.kind.pop();
        assert!(short.entries().is_none());
        let mut long_prefix = Columns::of(&entries);
        long_prefix.shared[3] = 1000;
        assert!(long_prefix.entries().is_none());
        let mut first = Columns::of(&entries);
        first.shared[0] = 1;
        assert!(first.entries().is_none());
        let bytes = postcard::to_stdvec(&Columns::of(&entries)).unwrap();
        for cut in 0..bytes.len() {
            if let Ok(c) = postcard::from_bytes::<Columns>(&bytes[..cut]) {
                let _ = c.entries();
            }
        }
    }
}
