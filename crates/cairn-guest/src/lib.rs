//! Cairn's guest layer: the files inside a disk snapshot, read straight
//! from the vault through `BlockSource`, with no restore and no kernel
//! mount; and the same view of directory snapshots.
//!
//! Everything here parses attacker-controlled bytes: readers bound every
//! size before allocating, detect loops, and report damage as errors that
//! name the partition and the structure.

pub mod check;
pub mod diff;
pub mod error;
pub mod ext4;
pub mod fat;
pub mod fuzzing;
pub mod io;
pub mod model;
pub mod ntfs;
pub mod open;
pub mod partition;
pub mod tree_fs;

pub use error::{GuestError, Result};
pub use model::{FileEntry, FileKind, Filesystem};
pub use open::{Opened, open_snapshot};
pub use partition::Partition;

use cairn_vault::BlockSource;
use std::sync::Arc;

/// Picks a partition: the one asked for, or the largest readable one.
pub fn choose(parts: &[Partition], requested: Option<u32>) -> Result<&Partition> {
    if let Some(n) = requested {
        let p = parts.iter().find(|p| p.number == n).ok_or_else(|| {
            GuestError::Invalid(format!(
                "no partition {n}: the disk's partitions are {} (see `cairn partitions`)",
                numbers(parts)
            ))
        })?;
        if !p.readable {
            return Err(GuestError::Unsupported(format!(
                "partition {n}: {}, not readable yet",
                p.filesystem
            )));
        }
        return Ok(p);
    }
    parts
        .iter()
        .filter(|p| p.readable)
        .max_by_key(|p| p.size)
        .ok_or_else(|| {
            let what: Vec<String> = parts
                .iter()
                .map(|p| format!("partition {}: {}", p.number, p.filesystem))
                .collect();
            GuestError::Unsupported(format!(
                "no readable filesystem on this disk ({})",
                if what.is_empty() {
                    "no partitions".into()
                } else {
                    what.join(", ")
                }
            ))
        })
}

fn numbers(parts: &[Partition]) -> String {
    if parts.is_empty() {
        return "none (no partition table)".into();
    }
    parts
        .iter()
        .map(|p| p.number.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Opens the filesystem of a partition. Errors from it name the partition.
pub fn open_fs(disk: Arc<dyn BlockSource>, p: &Partition) -> Result<Box<dyn Filesystem>> {
    let slice = io::Slice::new(disk, p.start, p.size);
    let label = format!("partition {} ({})", p.number, p.filesystem);
    let kind = p.filesystem.clone();
    let open = move || -> Result<Box<dyn Filesystem>> {
        Ok(match kind.as_str() {
            "ext2" | "ext3" | "ext4" => Box::new(ext4::Ext4::open(slice)?),
            "ntfs" => Box::new(ntfs::NtfsFs::open(slice)?),
            "fat12" | "fat16" | "fat32" => Box::new(fat::Fat::open(slice)?),
            other => {
                return Err(GuestError::Unsupported(format!(
                    "{other}, not readable yet"
                )));
            }
        })
    };
    let inner = match guarded(open) {
        Ok(Ok(fs)) => fs,
        Ok(Err(GuestError::Unsupported(m))) if m.ends_with("not readable yet") => {
            return Err(GuestError::Unsupported(format!(
                "partition {}: {m}",
                p.number
            )));
        }
        Ok(Err(e)) => return Err(labeled(&label, e)),
        Err(_) => {
            return Err(GuestError::Corrupt(format!(
                "{label}: the reader failed on damaged structures"
            )));
        }
    };
    Ok(Box::new(Labeled { inner, label }))
}

fn labeled(label: &str, e: GuestError) -> GuestError {
    match e {
        GuestError::Corrupt(m) => GuestError::Corrupt(format!("{label}: {m}")),
        GuestError::Unsupported(m) => GuestError::Unsupported(format!("{label}: {m}")),
        GuestError::Io(e) => GuestError::Io(std::io::Error::new(
            e.kind(),
            LabeledIo {
                label: label.to_string(),
                source: e,
            },
        )),
        other => other,
    }
}

/// An I/O error with the partition it came from, keeping the error itself
/// (a damaged vault object behind it is still told apart by its type).
#[derive(Debug)]
struct LabeledIo {
    label: String,
    source: std::io::Error,
}

impl std::fmt::Display for LabeledIo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.label, self.source)
    }
}

impl std::error::Error for LabeledIo {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

thread_local! {
    /// How many guarded reader calls this thread is inside.
    static GUARDED: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

/// Runs `f`, catching a panic inside it (a third-party reader's, on
/// crafted input).
fn guarded<T>(f: impl FnOnce() -> T) -> std::thread::Result<T> {
    GUARDED.with(|g| g.set(g.get() + 1));
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    GUARDED.with(|g| g.set(g.get() - 1));
    r
}

/// Whether this thread is inside a guarded reader call, whose panic
/// becomes an error naming the partition: a panic hook can then keep
/// its message and backtrace out of the output.
pub fn in_guarded_reader() -> bool {
    GUARDED.with(|g| g.get() > 0)
}

/// A filesystem whose errors say which partition they come from.
struct Labeled {
    inner: Box<dyn Filesystem>,
    label: String,
}

impl Labeled {
    /// Runs a reader call. A panic inside a third-party reader on crafted
    /// input becomes an error naming the partition, not a crash of the
    /// whole command.
    fn guard<T>(&self, f: impl FnOnce() -> Result<T>) -> Result<T> {
        match guarded(f) {
            Ok(r) => r.map_err(|e| labeled(&self.label, e)),
            Err(_) => Err(GuestError::Corrupt(format!(
                "{}: the reader failed on damaged structures",
                self.label
            ))),
        }
    }
}

impl Filesystem for Labeled {
    fn kind(&self) -> String {
        self.inner.kind()
    }
    fn max_entries(&self) -> usize {
        self.inner.max_entries()
    }
    fn walk(&self) -> Result<Vec<FileEntry>> {
        self.guard(|| self.inner.walk())
    }
    fn lookup(&self, path: &[u8]) -> Result<FileEntry> {
        self.guard(|| self.inner.lookup(path))
    }
    fn read_dir(&self, path: &[u8]) -> Result<Vec<FileEntry>> {
        self.guard(|| self.inner.read_dir(path))
    }
    fn read_at(&self, entry: &FileEntry, offset: u64, buf: &mut [u8]) -> Result<usize> {
        self.guard(|| self.inner.read_at(entry, offset, buf))
    }
    fn data_ranges(&self, entry: &FileEntry) -> Result<Option<Vec<(u64, u64)>>> {
        self.guard(|| self.inner.data_ranges(entry))
    }
    fn streams(&self, entry: &FileEntry) -> Result<Vec<(String, u64)>> {
        self.guard(|| self.inner.streams(entry))
    }
    fn read_stream(&self, entry: &FileEntry, name: &str, max: usize) -> Result<Vec<u8>> {
        self.guard(|| self.inner.read_stream(entry, name, max))
    }
}

/// Deepest directory nesting `walk_under` follows.
const MAX_WALK_DEPTH: usize = 4096;
/// Most entries `walk_under` returns (as many as a whole ext4 walk).
pub(crate) const MAX_WALK_ENTRIES: usize = 20_000_000;
/// Most unreadable directories `walk_under` steps over before it gives
/// up: one bad directory is skipped, a filesystem of them (or a loop that
/// keeps branching) is not walked on.
const MAX_WALK_SKIPPED: usize = 1000;

/// What a directory lists (names, kinds, sizes, times), for filesystems
/// without file ids (FAT), where it is all that tells one directory from
/// another: None for an empty listing or one with ids.
pub(crate) fn listing_key<'a>(
    entries: impl ExactSizeIterator<Item = &'a FileEntry> + Clone,
) -> Option<u64> {
    use std::hash::{Hash, Hasher};
    (entries.len() > 0 && entries.clone().all(|e| e.file_id.is_none())).then(|| {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        let mut rows: Vec<_> = entries
            .map(|e| (e.name(), e.kind as u8, e.size, e.mtime_ns))
            .collect();
        rows.sort_unstable();
        rows.hash(&mut h);
        h.finish()
    })
}

/// Directories without file ids that list exactly the same that are read
/// in one walk: more are taken for one directory that crafted entries
/// point to from many places (which would list it, and all below it,
/// over and over), and named instead of read. Copies made with `cp -a`
/// list the same too; beyond this many of one, they are named as well.
pub(crate) const MAX_SAME_LISTINGS: usize = 16;

/// What one directory of a walk lists (names, kinds, sizes and times, for
/// directories whose entries carry no file id), and the directories above
/// it.
struct Listing {
    key: Option<u64>,
    path: Vec<u8>,
    above: Option<std::rc::Rc<Listing>>,
}

impl Listing {
    fn of(path: &[u8], entries: &[FileEntry], above: Option<std::rc::Rc<Listing>>) -> Listing {
        Listing {
            key: listing_key(entries.iter()),
            path: path.to_vec(),
            above,
        }
    }

    /// The directory above this one that lists the same, if any.
    fn repeats(&self) -> Option<Vec<u8>> {
        let key = self.key?;
        let mut up = self.above.as_deref();
        while let Some(l) = up {
            if l.key == Some(key) {
                return Some(l.path.clone());
            }
            up = l.above.as_deref();
        }
        None
    }
}

/// Every entry below the directory `root` (not `root` itself), found with
/// `read_dir` so that only that subtree is read; sorted by path. Does not
/// descend into entries with unsafe names, into a directory seen before
/// (a loop), or deeper than `MAX_WALK_DEPTH`. A directory below `root`
/// that cannot be read is left out and named, with why, in the second
/// list, so that one crafted entry does not stop a restore.
pub fn walk_under(fs: &dyn Filesystem, root: &FileEntry) -> Result<(Vec<FileEntry>, Vec<String>)> {
    let (entries, unread) = walk_under_marking(fs, root)?;
    Ok((entries, unread.iter().map(Unread::describe).collect()))
}

/// A directory a walk could not read, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unread {
    pub path: Vec<u8>,
    pub why: String,
    pub kind: UnreadKind,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnreadKind {
    /// Reading it failed (damaged, or crafted to fail).
    Failed,
    /// Not read on purpose: it lists what a directory above it or many
    /// others list (a loop, cross-linked directories), so reading it would
    /// list the same again.
    Repeat,
    /// Nested deeper than the walk goes (any user can make such a tree):
    /// what it holds is not listed.
    TooDeep,
}

impl Unread {
    /// `/path: why`, as listings print it.
    pub fn describe(&self) -> String {
        format!("{}: {}", crate::model::display(&self.path), self.why)
    }
}

/// [`walk_under`], naming each directory it could not read by its path
/// (callers that bring such folders back from elsewhere need the path).
pub fn walk_under_marking(
    fs: &dyn Filesystem,
    root: &FileEntry,
) -> Result<(Vec<FileEntry>, Vec<Unread>)> {
    let mut out = Vec::new();
    let mut skipped = Vec::new();
    let mut seen = std::collections::HashSet::new();
    // A path is listed once: a crafted directory holding many entries of
    // one name (each a different inode) would otherwise list the one the
    // name resolves to again for each of them.
    let mut walked = std::collections::HashSet::new();
    let mut same_as: std::collections::HashMap<u64, (usize, Vec<u8>)> = Default::default();
    let mut stack = vec![(root.path.clone(), 0usize, None::<std::rc::Rc<Listing>>)];
    while let Some((dir, depth, above)) = stack.pop() {
        let listed = match fs.read_dir(&dir) {
            Ok(l) => l,
            Err(e) if dir != root.path && skipped.len() < MAX_WALK_SKIPPED => {
                skipped.push(Unread {
                    path: dir,
                    why: format!("not read ({e})"),
                    kind: UnreadKind::Failed,
                });
                continue;
            }
            Err(e) => return Err(e),
        };
        // Without file ids (FAT), a directory chained back to one above
        // it is known by listing what that one lists.
        let here = std::rc::Rc::new(Listing::of(&dir, &listed, above));
        if let Some(same) = here.repeats() {
            if skipped.len() >= MAX_WALK_SKIPPED {
                return Err(GuestError::Corrupt(
                    "too many directories list what one above them lists (loops)".into(),
                ));
            }
            skipped.push(Unread {
                path: dir,
                why: format!(
                    "lists what {} lists (a loop), not read again",
                    crate::model::display(&same)
                ),
                kind: UnreadKind::Repeat,
            });
            continue;
        }
        if let Some(key) = here.key {
            let (n, first) = same_as.entry(key).or_insert((0, dir.clone()));
            *n += 1;
            if *n > MAX_SAME_LISTINGS {
                if skipped.len() >= MAX_WALK_SKIPPED {
                    return Err(GuestError::Corrupt(
                        "too many directories list the same (cross-linked?)".into(),
                    ));
                }
                let why = format!(
                    "lists what {} and {MAX_SAME_LISTINGS} others list (cross-linked directories?), not read",
                    crate::model::display(first)
                );
                skipped.push(Unread {
                    path: dir,
                    why,
                    kind: UnreadKind::Repeat,
                });
                continue;
            }
        }
        for e in listed {
            if e.kind == FileKind::Dir && !e.unsafe_name {
                let fresh = e.file_id.is_none_or(|id| seen.insert(id));
                if !fresh {
                    // Named, so that a walk with one loop in it still
                    // counts as a partial one, not as no walk at all.
                    if skipped.len() >= MAX_WALK_SKIPPED {
                        return Err(GuestError::Corrupt(
                            "too many directories listed twice (loops)".into(),
                        ));
                    }
                    skipped.push(Unread {
                        path: e.path.clone(),
                        why: "the same directory as one listed elsewhere (a loop, or a directory hard-linked), not read again".into(),
                        kind: UnreadKind::Repeat,
                    });
                } else if depth < MAX_WALK_DEPTH && walked.insert(e.path.clone()) {
                    stack.push((e.path.clone(), depth + 1, Some(here.clone())));
                }
            }
            out.push(e);
            if out.len() > fs.max_entries() {
                return Err(GuestError::Corrupt(
                    "more entries below one directory than any real filesystem".into(),
                ));
            }
        }
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok((out, skipped))
}

/// The whole filesystem, as [`Filesystem::walk`] lists it; when that
/// fails (one crafted directory is enough), what [`walk_under`] the root
/// can read, with what it could not named. Listings and mounts show the
/// readable part instead of nothing.
pub fn walk_readable(fs: &dyn Filesystem) -> Result<(Vec<FileEntry>, Vec<String>)> {
    let walked = walk_readable_marking(fs)?;
    let mut notes: Vec<String> = walked.unread.iter().map(Unread::describe).collect();
    if let Some(e) = walked.whole_walk_error {
        notes.insert(
            0,
            format!("the filesystem could not be walked whole ({e}); listing what can be read"),
        );
    }
    Ok((walked.entries, notes))
}

/// What [`walk_readable_marking`] could list.
pub struct Walked {
    pub entries: Vec<FileEntry>,
    /// Directories that could not be read (their entries are missing).
    pub unread: Vec<Unread>,
    /// Why the whole walk failed, when it did.
    pub whole_walk_error: Option<String>,
}

/// [`walk_readable`], naming the directories it could not read by path.
pub fn walk_readable_marking(fs: &dyn Filesystem) -> Result<Walked> {
    let mut w = match fs.walk() {
        Ok(all) => Walked {
            entries: all,
            unread: Vec::new(),
            whole_walk_error: None,
        },
        Err(e) => {
            let (entries, unread) = walk_under_marking(fs, &fs.lookup(b"")?)?;
            Walked {
                entries,
                unread,
                whole_walk_error: Some(e.to_string()),
            }
        }
    };
    let deep = too_deep(fs, &w.entries);
    w.unread.extend(deep);
    Ok(w)
}

/// Depth at which the deepest-going walk (ext4's) stops listing: a folder
/// there is listed, what it holds is not (NTFS and FAT walks fail at
/// their limits instead).
const DEEPEST: usize = 2048;
/// Folders named by [`too_deep`] at most (the rest are counted).
const MOST_TOO_DEEP: usize = 64;

/// The folders of `entries` (a walk of `fs`) the walk did not look into
/// because they lie deeper than it goes: a place to hide files from a
/// scan, so they are named, never passed over in silence. (Not read to see
/// whether they hold anything: any user can make a million of them.)
pub fn too_deep(fs: &dyn Filesystem, entries: &[FileEntry]) -> Vec<Unread> {
    // Only ext's walk stops there without failing.
    if !fs.kind().starts_with("ext") {
        return Vec::new();
    }
    let depth = |p: &[u8]| p.iter().filter(|&&b| b == b'/').count() + 1;
    // (A walk without that limit, a directory source's, lists below.)
    let parents: std::collections::HashSet<&[u8]> = entries
        .iter()
        .filter(|e| depth(&e.path) > DEEPEST + 1)
        .filter_map(|e| {
            e.path
                .iter()
                .rposition(|&b| b == b'/')
                .map(|i| &e.path[..i])
        })
        .collect();
    let deep: Vec<&FileEntry> = entries
        .iter()
        .filter(|e| e.kind == FileKind::Dir && depth(&e.path) > DEEPEST)
        .filter(|e| !parents.contains(e.path.as_slice()))
        .collect();
    let why = |e: &FileEntry| {
        format!(
            "nested {} folders deep, deeper than Cairn lists: what it holds is not listed",
            depth(&e.path)
        )
    };
    let mut out: Vec<Unread> = deep
        .iter()
        .take(MOST_TOO_DEEP)
        .map(|e| Unread {
            path: e.path.clone(),
            why: why(e),
            kind: UnreadKind::TooDeep,
        })
        .collect();
    if let (Some(last), true) = (out.last_mut(), deep.len() > MOST_TOO_DEEP) {
        last.why = format!(
            "{} (and {} more folders that deep)",
            last.why,
            deep.len() - MOST_TOO_DEEP
        );
    }
    out
}

/// What of a filesystem can be listed, and the folders that could not be
/// read; an error when not even that much can be (the root, or a whole
/// walk that failed for another reason than a folder).
pub fn readable_part(fs: &dyn Filesystem) -> Result<(Vec<FileEntry>, Vec<Unread>)> {
    let w = walk_readable_marking(fs)?;
    match w.whole_walk_error {
        Some(e) if w.unread.iter().all(|u| u.kind == UnreadKind::TooDeep) => {
            Err(GuestError::Corrupt(e))
        }
        _ => Ok((w.entries, w.unread)),
    }
}

/// The folders of `unread` that failed to read: below them nothing is
/// known, so a comparison leaves what lies there out on both sides (a loop
/// or a hard-linked folder lists what is listed elsewhere, so what it held
/// before shows as deleted).
pub fn failed_folders<'a>(
    unread: impl IntoIterator<Item = &'a Unread>,
) -> std::collections::HashSet<&'a [u8]> {
    unread
        .into_iter()
        .filter(|u| u.kind == UnreadKind::Failed)
        .map(|u| u.path.as_slice())
        .collect()
}

/// `list` without what lies below the folders in `hidden`.
pub fn outside<'a>(
    list: &'a [FileEntry],
    hidden: &std::collections::HashSet<&[u8]>,
) -> std::borrow::Cow<'a, [FileEntry]> {
    if hidden.is_empty() {
        return std::borrow::Cow::Borrowed(list);
    }
    // Whether a path lies below one of `hidden`: each of its ancestors
    // looked up.
    let below = |path: &[u8]| {
        path.iter()
            .enumerate()
            .any(|(i, &b)| b == b'/' && hidden.contains(&path[..i]))
    };
    list.iter()
        .filter(|e| !below(&e.path))
        .cloned()
        .collect::<Vec<_>>()
        .into()
}

/// Reads a whole file into memory, refusing more than `limit` bytes.
pub fn read_all(fs: &dyn Filesystem, e: &FileEntry, limit: u64) -> Result<Vec<u8>> {
    if e.size > limit {
        return Err(GuestError::Unsupported(format!(
            "{} is larger than {limit} bytes",
            e.display_path()
        )));
    }
    let mut buf = vec![0u8; e.size as usize];
    let n = read_full(fs, e, 0, &mut buf)?;
    buf.truncate(n);
    Ok(buf)
}

/// Fills `buf` from `offset` of file `e`, short only at the end of the
/// file; the bytes read.
pub fn read_full(fs: &dyn Filesystem, e: &FileEntry, offset: u64, buf: &mut [u8]) -> Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match fs.read_at(e, offset + done as u64, &mut buf[done..])? {
            0 => break,
            n => done += n,
        }
    }
    Ok(done)
}
