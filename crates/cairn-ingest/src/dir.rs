//! Directory ingest: a walk that records every entry's metadata, and
//! content-defined chunks (FastCDC) for file data, so an insertion moves
//! chunk boundaries only locally. Files whose size, mtime and inode match
//! the parent snapshot are not read again.

use crate::Progress;
use cairn_vault::entropy::sampled_entropy;
use cairn_vault::error::{Error, Result};
use cairn_vault::hash::BLOCK_SIZE;
use cairn_vault::pack::PackWriter;
use cairn_vault::tree::{Entry, EntryKind, FileChunk, Tree};
use cairn_vault::{Metrics, Vault};
use rayon::prelude::*;
use std::collections::{HashMap, HashSet};
use std::fs::{self, Metadata};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// What the walk found, before any file is read.
struct Found {
    abs: PathBuf,
    entry: Entry,
    /// (device, inode) when the file has more than one name.
    hard_link: Option<(u64, u64)>,
    /// (device, inode) as walked: the file read later must be this one.
    id: (u64, u64),
    /// Last change of the inode (content or metadata), ns since the epoch;
    /// unlike mtime, no program can set it back.
    ctime_ns: i64,
}

fn kind_of(md: &Metadata) -> EntryKind {
    let ft = md.file_type();
    if ft.is_dir() {
        EntryKind::Dir
    } else if ft.is_symlink() {
        EntryKind::Symlink
    } else if ft.is_fifo() {
        EntryKind::Fifo
    } else if ft.is_char_device() {
        EntryKind::CharDevice
    } else if ft.is_block_device() {
        EntryKind::BlockDevice
    } else if ft.is_socket() {
        EntryKind::Socket
    } else {
        EntryKind::File
    }
}

/// The source folder's own owner, mode, time and extended attributes.
pub fn root_meta(root: &Path) -> Option<cairn_vault::snapshot::RootMeta> {
    let md = fs::metadata(root).ok()?;
    Some(cairn_vault::snapshot::RootMeta {
        mode: md.mode() & 0o7777,
        uid: md.uid(),
        gid: md.gid(),
        mtime_ns: md.mtime() * 1_000_000_000 + md.mtime_nsec(),
        xattrs: read_xattrs(root),
    })
}

fn read_xattrs(path: &Path) -> Vec<(Vec<u8>, Vec<u8>)> {
    let Ok(names) = xattr::list(path) else {
        return vec![];
    };
    let mut out: Vec<(Vec<u8>, Vec<u8>)> = names
        .filter_map(|n| {
            let v = xattr::get(path, &n).ok().flatten()?;
            Some((n.as_bytes().to_vec(), v))
        })
        .collect();
    out.sort();
    out
}

/// Opens the directory `dir` for listing and checks that it is the one
/// the walk saw: `seen` is its (device, inode) from its parent's listing
/// (`None` for the root, which the operator named and may be a link).
/// A directory swapped since for a link, or for another folder anywhere
/// on its path, fails the check, so nothing outside the tree is listed
/// (a host's user could otherwise point a folder at `/etc` mid-backup).
fn open_walked_dir(dir: &Path, seen: Option<(u64, u64)>) -> std::io::Result<fs::File> {
    let nofollow = if seen.is_some() { libc::O_NOFOLLOW } else { 0 };
    let f = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | nofollow)
        .open(dir)?;
    let md = f.metadata()?;
    if seen.is_some_and(|id| (md.dev(), md.ino()) != id) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "replaced by another directory since it was listed",
        ));
    }
    Ok(f)
}

/// Walks `root` without following symlinks; entries come out sorted by
/// path bytes. Unreadable entries are skipped with a warning. Each folder
/// is listed, and its entries looked at, through the folder opened and
/// checked by [`open_walked_dir`] (`/proc/self/fd/N/NAME`), never by a
/// path that could have been redirected since.
fn walk(
    root: &Path,
    warnings: &mut Vec<String>,
    unreadable: &mut Vec<String>,
    vault: Option<(u64, u64)>,
) -> Vec<Found> {
    let by_fd = Path::new("/proc/self/fd").is_dir();
    if !by_fd {
        warnings.push(
            "/proc is not mounted: folders are listed by path, so one swapped for a link during the backup could be followed".into(),
        );
    }
    let mut out = Vec::new();
    // (folder, its path in the tree, its (device, inode) as seen).
    type Pending = (PathBuf, Vec<u8>, Option<(u64, u64)>);
    let mut stack: Vec<Pending> = vec![(root.to_path_buf(), Vec::new(), None)];
    while let Some((dir, rel, seen)) = stack.pop() {
        let opened = match open_walked_dir(&dir, seen) {
            Ok(f) => f,
            Err(e) => {
                unreadable.push(format!("{}: {e} (skipped)", dir.display()));
                continue;
            }
        };
        let base = if by_fd {
            PathBuf::from(format!("/proc/self/fd/{}", opened.as_raw_fd()))
        } else {
            dir.clone()
        };
        let rd = match fs::read_dir(&base) {
            Ok(rd) => rd,
            Err(e) => {
                unreadable.push(format!("{}: {e} (skipped)", dir.display()));
                continue;
            }
        };
        for de in rd {
            let de = match de {
                Ok(d) => d,
                Err(e) => {
                    unreadable.push(format!("{}: {e} (skipped)", dir.display()));
                    continue;
                }
            };
            let abs = dir.join(de.file_name());
            let via = de.path();
            let md = match fs::symlink_metadata(&via) {
                Ok(m) => m,
                Err(e) => {
                    unreadable.push(format!("{}: {e} (skipped)", abs.display()));
                    continue;
                }
            };
            let mut path = rel.clone();
            if !path.is_empty() {
                path.push(b'/');
            }
            path.extend_from_slice(de.file_name().as_bytes());
            let kind = kind_of(&md);
            let link_target = if kind == EntryKind::Symlink {
                match fs::read_link(&via) {
                    Ok(t) => Some(t.as_os_str().as_bytes().to_vec()),
                    Err(e) => {
                        unreadable.push(format!("{}: {e} (skipped)", abs.display()));
                        continue;
                    }
                }
            } else {
                None
            };
            if kind == EntryKind::Dir && vault == Some((md.dev(), md.ino())) {
                // A vault inside what it backs up would hold ever more
                // copies of itself.
                warnings.push(format!(
                    "{}: the vault itself, left out of its own backup",
                    abs.display()
                ));
                continue;
            }
            let entry = Entry {
                path: path.clone(),
                kind,
                mode: md.mode(),
                uid: md.uid(),
                gid: md.gid(),
                mtime_ns: md.mtime() * 1_000_000_000 + md.mtime_nsec(),
                size: if kind == EntryKind::File { md.len() } else { 0 },
                inode: md.ino(),
                rdev: md.rdev(),
                link_target,
                hardlink_to: None,
                xattrs: read_xattrs(&via),
                chunks: vec![],
                blocks: vec![],
            };
            if kind == EntryKind::Dir {
                stack.push((abs.clone(), path, Some((md.dev(), md.ino()))));
            }
            let hard_link =
                (kind == EntryKind::File && md.nlink() > 1).then(|| (md.dev(), md.ino()));
            out.push(Found {
                abs,
                entry,
                hard_link,
                id: (md.dev(), md.ino()),
                ctime_ns: md.ctime() * 1_000_000_000 + md.ctime_nsec(),
            });
        }
    }
    out.sort_by(|a, b| a.entry.path.cmp(&b.entry.path));
    out
}

#[derive(Default)]
struct FileResult {
    chunks: Vec<FileChunk>,
    blocks: Vec<[u8; 16]>,
    /// The file's length as chunked.
    size: u64,
    /// Bytes read from its data (the rest were holes).
    read: u64,
    changed: u64,
    new_entropy: cairn_vault::entropy::EntropyHistogram,
    /// Written to while it was read (its mtime or ctime moved): what was
    /// stored may mix the old content and the new.
    torn: bool,
}

/// When a file's content or inode last changed, as far as its metadata
/// says.
fn change_stamp(md: &std::fs::Metadata) -> (i64, i64, i64, i64) {
    (md.mtime(), md.mtime_nsec(), md.ctime(), md.ctime_nsec())
}

fn read_file(
    vault: &Vault,
    writer: &PackWriter,
    path: &Path,
    walked: (u64, u64),
    parent_blocks: &HashSet<[u8; 16]>,
    progress: &Progress,
) -> std::io::Result<FileResult> {
    let c = vault.config();
    // The file walked, and nothing else: not a symlink or a FIFO someone
    // put in its place since (one would leak another file, the other hang
    // the backup), checked on the open file itself.
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)?;
    let md = f.metadata()?;
    if !md.file_type().is_file() || (md.dev(), md.ino()) != walked {
        return Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "replaced by another file since the walk",
        ));
    }
    let mut cdc = crate::sparse_cdc::SparseCdc::new(
        f,
        md.len(),
        c.cdc_min as usize,
        c.cdc_avg as usize,
        c.cdc_max as usize,
    );
    let mut r = FileResult::default();
    // Chunks of a hole are all alike: hashed once per length.
    let mut hole_chunks: HashMap<usize, (cairn_vault::ChunkId, Vec<cairn_vault::BlockDigest>)> =
        HashMap::new();
    while let Some(chunk) = cdc.next_chunk()? {
        let data = chunk.data;
        let (id, digests) = if chunk.hole {
            hole_chunks
                .entry(data.len())
                .or_insert_with(|| vault.hasher().digest_chunk(data))
                .clone()
        } else {
            vault.hasher().digest_chunk(data)
        };
        let mut esum = 0.0f32;
        let mut measured = 0;
        for (block, d) in data.chunks(BLOCK_SIZE).zip(&digests) {
            if !parent_blocks.contains(d) {
                let e = sampled_entropy(block);
                r.changed += block.len() as u64;
                r.new_entropy.add(e, block.len() as u64);
                esum += e;
                measured += 1;
            }
        }
        let entropy = (measured == digests.len() && measured > 0).then(|| esum / measured as f32);
        writer
            .add(id, data, entropy)
            .map_err(std::io::Error::other)?;
        r.size += data.len() as u64;
        r.read += chunk.read;
        progress.add(data.len() as u64);
        r.chunks.push(FileChunk {
            id,
            len: data.len() as u32,
        });
        r.blocks.extend_from_slice(&digests);
    }
    r.torn = cdc
        .file()
        .metadata()
        .is_ok_and(|now| change_stamp(&now) != change_stamp(&md));
    Ok(r)
}

/// `parent_began`: when the parent backup began reading (ns since the
/// epoch). A file is taken from the parent unread only when its size,
/// mtime and inode are the parent's and its inode has not changed since
/// then (ctime): mtime can be set back (ransomware that encrypts in place
/// may), and a write in the same clock tick as the parent's read would
/// leave mtime equal.
pub fn ingest(
    vault: &Vault,
    root: &Path,
    parent: Option<(&Tree, i64)>,
    progress: &Progress,
    warnings: &mut Vec<String>,
) -> Result<(Tree, Metrics)> {
    let (parent, parent_began) = match parent {
        Some((t, b)) => (Some(t), b),
        None => (None, i64::MIN),
    };
    let mut unreadable = Vec::new();
    let vault_dir = fs::metadata(vault.root()).ok().map(|m| (m.dev(), m.ino()));
    let mut found = walk(root, warnings, &mut unreadable, vault_dir);
    let parent_by_path: HashMap<&[u8], &Entry> = parent
        .map(|t| t.entries.iter().map(|e| (e.path.as_slice(), e)).collect())
        .unwrap_or_default();

    // Hard links: the first name holds the content, later names point to it.
    let mut first_name: HashMap<(u64, u64), Vec<u8>> = HashMap::new();
    let mut m = Metrics::default();
    let mut to_read = Vec::new();
    for (i, f) in found.iter_mut().enumerate() {
        let e = &mut f.entry;
        if e.kind != EntryKind::File {
            continue;
        }
        m.files += 1;
        m.logical_size += e.size;
        if let Some(key) = f.hard_link {
            if let Some(first) = first_name.get(&key) {
                e.hardlink_to = Some(first.clone());
                continue;
            }
            first_name.insert(key, e.path.clone());
        }
        let ctime_ns = f.ctime_ns;
        match parent_by_path.get(e.path.as_slice()) {
            Some(p)
                if p.kind == EntryKind::File
                    && p.hardlink_to.is_none()
                    && p.size == e.size
                    && p.mtime_ns == e.mtime_ns
                    && p.inode == e.inode
                    && ctime_ns < parent_began
                    && p.chunks.iter().all(|c| vault.has_chunk(&c.id)) =>
            {
                e.chunks = p.chunks.clone();
                e.blocks = p.blocks.clone();
                m.files_unchanged += 1;
            }
            _ => to_read.push(i),
        }
    }
    progress.set_total(to_read.iter().map(|&i| found[i].entry.size).sum());

    let (results, stats) = PackWriter::run(vault, cairn_vault::codec::Framing::Whole, |writer| {
        Ok(to_read
            .par_iter()
            .map(|&i| {
                let f = &found[i];
                let parent_blocks: HashSet<[u8; 16]> = parent_by_path
                    .get(f.entry.path.as_slice())
                    .map(|p| p.blocks.iter().copied().collect())
                    .unwrap_or_default();
                (
                    i,
                    read_file(vault, writer, &f.abs, f.id, &parent_blocks, progress),
                )
            })
            .collect::<Vec<(usize, std::io::Result<FileResult>)>>())
    })?;
    let mut gone = HashSet::new();
    for (i, r) in results {
        let shown = found[i].abs.display().to_string();
        let e = &mut found[i].entry;
        match r {
            Ok(r) => {
                if r.size != e.size {
                    warnings.push(format!(
                        "{}: changed size while being read ({} → {} bytes); stored as read",
                        shown, e.size, r.size
                    ));
                    m.logical_size = m.logical_size - e.size + r.size;
                    e.size = r.size;
                } else if r.torn {
                    // A database or a VM image in use: the copy may not
                    // be one its program would open. (Snapshot the
                    // filesystem, or stop the writer, for one that is.)
                    warnings.push(format!(
                        "{shown}: written to while being read; stored as read, which may mix its old and new content"
                    ));
                }
                // Holes are not read, and not counted as zeros either: only
                // files read again would count, and insight reads a jump
                // in zeros between snapshots as a wiper's work.
                m.bytes_read += r.read;
                m.changed_bytes += r.changed;
                m.entropy_histogram.merge(&r.new_entropy);
                e.chunks = r.chunks;
                e.blocks = r.blocks;
            }
            Err(err) => {
                if err.kind() == std::io::ErrorKind::StorageFull
                    || err.kind() == std::io::ErrorKind::Other
                {
                    // Vault trouble (disk full while storing), not a file's.
                    return Err(Error::io(format!("backing up {shown}"), err));
                }
                // Unreadable now: its last content stays (an empty file
                // would restore as data lost and read as truncation).
                match parent_by_path.get(e.path.as_slice()) {
                    Some(p) if p.kind == EntryKind::File && p.hardlink_to.is_none() => {
                        unreadable.push(format!(
                            "{shown}: {err} (kept as it was in the previous snapshot)"
                        ));
                        m.logical_size = m.logical_size - e.size + p.size;
                        *e = (*p).clone();
                    }
                    _ => {
                        unreadable.push(format!("{shown}: {err} (left out)"));
                        m.logical_size -= e.size;
                        m.files -= 1;
                        gone.insert(i);
                    }
                }
            }
        }
    }
    // Deleted files count as changed bytes: they are gone from the source.
    if let Some(p) = parent {
        let now: HashSet<&[u8]> = found.iter().map(|f| f.entry.path.as_slice()).collect();
        m.changed_bytes += p
            .entries
            .iter()
            .filter(|e| {
                e.kind == EntryKind::File
                    && e.hardlink_to.is_none()
                    && !now.contains(e.path.as_slice())
            })
            .map(|e| e.size)
            .sum::<u64>();
    }
    m.chunks = found.iter().map(|f| f.entry.chunks.len() as u64).sum();
    m.new_chunks = stats.new_chunks;
    m.new_bytes = stats.new_bytes;
    m.new_bytes_stored = stats.new_bytes_stored;
    m.unreadable_count = unreadable.len() as u64;
    m.unreadable = unreadable
        .iter()
        .take(cairn_vault::snapshot::UNREADABLE_LISTED)
        .cloned()
        .collect();
    warnings.extend(unreadable);
    Ok((
        Tree {
            entries: found
                .into_iter()
                .enumerate()
                .filter(|(i, _)| !gone.contains(i))
                .map(|(_, f)| f.entry)
                .collect(),
        },
        m,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What is read is the file the walk saw: not a symlink, a FIFO or
    /// another file put at its name since.
    #[test]
    fn a_file_replaced_after_the_walk_is_not_read() {
        let dir = tempfile::tempdir().unwrap();
        let vault = Vault::init(&dir.path().join("v"), b"pw", &Default::default()).unwrap();
        let root = dir.path().join("src");
        fs::create_dir(&root).unwrap();
        let file = root.join("a.txt");
        fs::write(&file, b"walked").unwrap();
        fs::write(dir.path().join("secret"), b"not in the tree").unwrap();
        let found = walk(&root, &mut Vec::new(), &mut Vec::new(), None);
        let f = found.iter().find(|f| f.abs == file).unwrap();
        let read = |vault: &Vault| {
            PackWriter::run(vault, cairn_vault::codec::Framing::Whole, |w| {
                Ok(read_file(
                    vault,
                    w,
                    &f.abs,
                    f.id,
                    &HashSet::new(),
                    &Progress::default(),
                ))
            })
            .unwrap()
            .0
        };
        assert_eq!(read(&vault).unwrap().read, 6);
        // Kept alive elsewhere, so no new file gets its inode number.
        fs::hard_link(&file, dir.path().join("kept")).unwrap();
        fs::remove_file(&file).unwrap();
        std::os::unix::fs::symlink(dir.path().join("secret"), &file).unwrap();
        assert!(read(&vault).is_err(), "a symlink is not followed");
        fs::remove_file(&file).unwrap();
        let c = std::ffi::CString::new(file.as_os_str().as_bytes()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        assert!(read(&vault).is_err(), "a FIFO neither hangs nor is read");
        fs::remove_file(&file).unwrap();
        fs::write(&file, b"another").unwrap();
        assert!(read(&vault).is_err(), "another file is not taken for it");
    }

    /// A folder swapped for a link (or another folder) between being seen
    /// in its parent and being listed is not listed: its files would be
    /// taken from outside the tree.
    #[test]
    fn a_directory_replaced_after_it_was_seen_is_not_listed() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("src");
        fs::create_dir_all(root.join("a")).unwrap();
        fs::write(root.join("a/x.txt"), b"in the tree").unwrap();
        fs::create_dir(dir.path().join("elsewhere")).unwrap();
        fs::write(dir.path().join("elsewhere/secret"), b"not in the tree").unwrap();
        let md = fs::symlink_metadata(root.join("a")).unwrap();
        let seen = Some((md.dev(), md.ino()));
        assert!(open_walked_dir(&root.join("a"), seen).is_ok());
        fs::rename(root.join("a"), root.join("a.old")).unwrap();
        std::os::unix::fs::symlink(dir.path().join("elsewhere"), root.join("a")).unwrap();
        assert!(
            open_walked_dir(&root.join("a"), seen).is_err(),
            "a link is not followed"
        );
        fs::remove_file(root.join("a")).unwrap();
        // A link higher up: the folder at the end of the path is another.
        std::os::unix::fs::symlink(dir.path(), root.join("up")).unwrap();
        fs::create_dir(dir.path().join("a")).unwrap();
        assert!(open_walked_dir(&root.join("up/a"), seen).is_err());
        assert!(
            open_walked_dir(&root.join("a.old"), seen).is_ok(),
            "the moved folder is the one seen"
        );
        // A whole walk lists through the opened folders and sees the tree.
        let found = walk(&root, &mut Vec::new(), &mut Vec::new(), None);
        let paths: Vec<&[u8]> = found.iter().map(|f| f.entry.path.as_slice()).collect();
        assert_eq!(paths, [&b"a.old"[..], b"a.old/x.txt", b"up"]);
        assert_eq!(found[1].abs, root.join("a.old/x.txt"));
    }
}
