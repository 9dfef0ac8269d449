//! File-level restore out of any snapshot's filesystem (a disk's guest
//! filesystem or a directory snapshot). The filesystem may be an
//! attacker's: every path is checked, nothing is written outside the
//! target, symlinks are created last so no write can pass through one, and
//! a bad entry is skipped and listed rather than stopping the restore.

use crate::tree::safe_join;
use cairn_guest::{FileEntry, FileKind, Filesystem};
use cairn_vault::error::{Error, IoContext, Result};
use serde::Serialize;
use std::ffi::OsStr;
use std::fs::{self, OpenOptions};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

#[derive(Debug, Default, Serialize)]
pub struct FilesRestoreReport {
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    /// Further names of files restored (made hard links again), not
    /// counted in `files`.
    pub hardlinks: u64,
    pub bytes_written: u64,
    /// Entries not restored, with why (unsafe names, unreadable content).
    pub skipped: Vec<String>,
    /// Special files (devices, FIFOs, sockets) left out on purpose: a
    /// guest's are nothing to restore onto this host.
    pub special: Vec<String>,
    /// Files whose setuid or setgid bits were left out (see [`SETID`]).
    pub setid_dropped: u64,
    /// The first of them by name (see [`note_setid`]).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub setid_dropped_paths: Vec<String>,
}

/// The setuid and setgid bits. A restored file gets them only when asked
/// (`--keep-setid`): a snapshot's program (a hostile guest's, or one
/// planted on a protected host) would otherwise become a privileged
/// program on the machine it is restored to, runnable by whoever reaches
/// the folder. On directories the setgid bit only passes the group on to
/// new files, and is kept.
pub const SETID: u32 = 0o6000;

/// How many files restored without their setid bits are named: the
/// operator gives back by hand those a system needs (`sudo`, `passwd`).
pub const MAX_SETID_NAMED: usize = 100;

/// Counts file `path` as restored without its setid bits when `dropped`,
/// naming it while fewer than [`MAX_SETID_NAMED`] are named.
pub fn note_setid(
    count: &mut u64,
    paths: &mut Vec<String>,
    path: impl Into<String>,
    dropped: bool,
) {
    if dropped {
        *count += 1;
        if paths.len() < MAX_SETID_NAMED {
            paths.push(path.into());
        }
    }
}

/// The permission bits to give a restored entry of `kind`, and whether
/// setuid or setgid bits were left out of them.
pub(crate) fn restored_mode(mode: u32, is_dir: bool, keep_setid: bool) -> (u32, bool) {
    let mode = mode & 0o7777;
    if keep_setid || is_dir || mode & SETID == 0 {
        (mode, false)
    } else {
        (mode & !SETID, true)
    }
}

fn guest(e: cairn_guest::GuestError) -> Error {
    Error::Invalid(e.to_string())
}

/// Everything to restore: `root` itself, then (for a directory) all below;
/// and the directories below that could not be read.
fn collect(fs: &dyn Filesystem, root: &FileEntry) -> Result<(Vec<FileEntry>, Vec<String>)> {
    // The directory itself comes first, so its metadata is restored too.
    let mut out = if root.path.is_empty() {
        vec![]
    } else {
        vec![root.clone()]
    };
    let mut skipped = Vec::new();
    if root.kind == FileKind::Dir {
        let (below, unread) = cairn_guest::walk_under(fs, root).map_err(guest)?;
        out.extend(below);
        skipped = unread;
    }
    Ok((out, skipped))
}

/// One file or link restored as `dest`: made new, or with `overwrite` put
/// in place of what is there (written beside it, then renamed over it, so
/// the name never holds half a file).
fn restore_one(
    fs: &dyn Filesystem,
    root: &FileEntry,
    dest: &Path,
    keep_setid: bool,
    overwrite: bool,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<FilesRestoreReport> {
    let mut report = FilesRestoreReport::default();
    if root.unsafe_name {
        return Err(Error::Invalid(format!(
            "{}: unsafe name, not restored",
            root.display_path()
        )));
    }
    let there = fs::symlink_metadata(dest).ok();
    match &there {
        Some(m) if m.is_dir() => {
            return Err(Error::Invalid(format!(
                "{} is a folder: give a file's name, or restore into a new or empty folder",
                dest.display()
            )));
        }
        Some(_) if !overwrite => {
            return Err(Error::Invalid(format!(
                "{} exists: give another name, or --overwrite to replace it",
                dest.display()
            )));
        }
        _ => {}
    }
    if let Some(parent) = dest.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent).ctx(|| format!("creating {}", parent.display()))?;
    }
    // Written under a name of its own when something is to be replaced.
    let staged = match &there {
        Some(_) => {
            let mut name = std::ffi::OsString::from(".");
            name.push(dest.file_name().unwrap_or_default());
            name.push(".cairn-restore");
            let tmp = dest.with_file_name(name);
            let _ = fs::remove_file(&tmp);
            tmp
        }
        None => dest.to_path_buf(),
    };
    if root.kind == FileKind::Symlink {
        make_symlink(root.link_target.as_deref().unwrap_or_default(), &staged)
            .ctx(|| format!("making the link {}", dest.display()))?;
        link_meta(root, &staged);
        report.symlinks = 1;
    } else {
        let n = write_file(fs, root, &staged, progress).map_err(|e| {
            // Made new by this run (create_new): nothing half-written
            // stays under the name asked for.
            if e.kind() != std::io::ErrorKind::AlreadyExists {
                let _ = fs::remove_file(&staged);
            }
            Error::io(format!("writing {}", dest.display()), e)
        })?;
        note_setid(
            &mut report.setid_dropped,
            &mut report.setid_dropped_paths,
            root.display_path(),
            set_meta(root, &staged, keep_setid),
        );
        set_xattrs(&fs.xattrs(root), &staged, keep_setid);
        report.files = 1;
        report.bytes_written = n;
    }
    if staged != dest {
        fs::rename(&staged, dest).map_err(|e| {
            let _ = fs::remove_file(&staged);
            Error::io(format!("replacing {}", dest.display()), e)
        })?;
    }
    Ok(report)
}

pub fn restore_files(
    fs: &dyn Filesystem,
    root: &FileEntry,
    target: &Path,
    keep_setid: bool,
    overwrite: bool,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<FilesRestoreReport> {
    // `--to new/` (a trailing slash) asks for a folder.
    let folder_asked = target.as_os_str().as_encoded_bytes().ends_with(b"/");
    let single = matches!(root.kind, FileKind::File | FileKind::Symlink);
    let existing_folder = fs::symlink_metadata(target).is_ok_and(|m| m.is_dir());
    if single && (existing_folder || !folder_asked) {
        // One file (or link) to a new name is that file, as `cp` makes
        // it; into a folder that is there, it goes in under its own name.
        let dest = if existing_folder {
            let name = root.path.rsplit(|&b| b == b'/').next().unwrap_or_default();
            target.join(std::ffi::OsStr::from_bytes(name))
        } else {
            target.to_path_buf()
        };
        return restore_one(fs, root, &dest, keep_setid, overwrite, progress);
    }
    if overwrite {
        return Err(Error::Invalid(
            "--overwrite replaces one file; a folder is restored into a new or empty folder".into(),
        ));
    }
    if target.exists() && !target.is_dir() {
        return Err(Error::Invalid(format!(
            "{} exists and is not a folder: give a new name, or a new or empty folder",
            target.display()
        )));
    }
    // A folder comes back under its own name inside the target: into a
    // folder that holds other things (a live share, its parent) as long
    // as nothing there has that name yet. The whole filesystem only into
    // a new or empty folder.
    let own_name = (!root.path.is_empty()).then(|| root.name());
    let taken = |name: &[u8]| {
        use std::os::unix::ffi::OsStrExt;
        fs::symlink_metadata(target.join(std::ffi::OsStr::from_bytes(name))).is_ok()
    };
    if target.exists()
        && fs::read_dir(target)
            .ctx(|| format!("reading {}", target.display()))?
            .next()
            .is_some()
        && own_name.is_none_or(taken)
    {
        return Err(Error::Invalid(match own_name {
            Some(name) => format!(
                "{} already holds {}; restore into a folder where it is not yet (or a new one)",
                target.display(),
                String::from_utf8_lossy(name)
            ),
            None => format!(
                "{} is not empty; restore into a new or empty directory",
                target.display()
            ),
        }));
    }
    let made_target = !target.exists();
    fs::create_dir_all(target).ctx(|| format!("creating {}", target.display()))?;
    let (entries, unread) = collect(fs, root)?;
    // Paths relative to the parent of `root`, so restoring /home/alice
    // gives TARGET/alice/…
    let base_len = root
        .path
        .iter()
        .rposition(|&b| b == b'/')
        .map_or(0, |i| i + 1);
    let mut report = FilesRestoreReport {
        skipped: unread,
        ..Default::default()
    };
    let mut links = Vec::new();
    let mut dirs = Vec::new();
    // Files written, by the name their content was first listed under: a
    // later name of the same file (a hard link) becomes a link again.
    let mut written: std::collections::HashMap<Vec<u8>, std::path::PathBuf> = Default::default();
    for e in &entries {
        let rel = &e.path[base_len.min(e.path.len())..];
        let dest = if e.unsafe_name {
            None
        } else {
            safe_join(target, rel)
        };
        let Some(dest) = dest else {
            report
                .skipped
                .push(format!("{}: unsafe name, not restored", e.display_path()));
            continue;
        };
        match e.kind {
            FileKind::Dir => match fs::create_dir_all(&dest) {
                Ok(()) => {
                    report.dirs += 1;
                    dirs.push((e, dest));
                }
                Err(err) => report.skipped.push(format!("{}: {err}", e.display_path())),
            },
            FileKind::File
                if fs
                    .first_name(e)
                    .and_then(|first| written.get(&first))
                    .is_some_and(|at| fs::hard_link(at, &dest).is_ok()) =>
            {
                report.hardlinks += 1;
            }
            FileKind::File => match write_file(fs, e, &dest, progress) {
                Ok(n) => {
                    report.files += 1;
                    report.bytes_written += n;
                    // After the owner: a chown clears file capabilities.
                    note_setid(
                        &mut report.setid_dropped,
                        &mut report.setid_dropped_paths,
                        e.display_path(),
                        set_meta(e, &dest, keep_setid),
                    );
                    set_xattrs(&fs.xattrs(e), &dest, keep_setid);
                    written.insert(e.path.clone(), dest.clone());
                }
                Err(err) => {
                    // Made new by this run: no empty or half-written file
                    // stays in its place.
                    if err.kind() != std::io::ErrorKind::AlreadyExists {
                        let _ = fs::remove_file(&dest);
                    }
                    report.skipped.push(format!("{}: {err}", e.display_path()))
                }
            },
            FileKind::Symlink => links.push((e, dest)),
            FileKind::Other => report
                .special
                .push(format!("{}: special file, not restored", e.display_path())),
        }
    }
    for (e, dest) in links {
        match make_symlink(e.link_target.as_deref().unwrap_or_default(), &dest) {
            Ok(()) => {
                report.symlinks += 1;
                link_meta(e, &dest);
            }
            Err(err) => report.skipped.push(format!("{}: {err}", e.display_path())),
        }
    }
    // Last, deepest first: writing into a folder moves its mtime.
    for (e, dest) in dirs.iter().rev() {
        set_meta(e, dest, keep_setid);
        set_xattrs(&fs.xattrs(e), dest, keep_setid);
    }
    // Nothing came back (one damaged file asked for): no empty folder is
    // left for a restore that made nothing.
    if made_target && report.files + report.dirs + report.symlinks + report.hardlinks == 0 {
        let _ = fs::remove_dir(target);
    }
    Ok(report)
}

/// A symlink at `dest` to `target`, which may come from a crafted guest:
/// a target with a NUL byte is named as such (the system's own message
/// speaks of a file name).
pub(crate) fn make_symlink(target: &[u8], dest: &Path) -> std::io::Result<()> {
    if target.contains(&0) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "its link target holds a NUL byte (damaged or crafted)",
        ));
    }
    std::os::unix::fs::symlink(OsStr::from_bytes(target), dest)
}

pub(crate) fn write_file(
    fs: &dyn Filesystem,
    e: &FileEntry,
    dest: &Path,
    progress: &(dyn Fn(u64) + Sync),
) -> std::io::Result<u64> {
    // O_NOFOLLOW: never write through a symlink, even one planted earlier.
    let f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_NOFOLLOW)
        .mode(0o600)
        .open(dest)?;
    write_into(fs, e, &f, progress)
}

/// Whether an error of [`write_file`] came from reading the guest's
/// filesystem (not from writing on this host: a full disk, a quota).
pub(crate) fn read_failed(e: &std::io::Error) -> bool {
    e.get_ref()
        .is_some_and(|inner| inner.is::<cairn_guest::GuestError>())
}

/// Writes the content of `e` into the new, empty file `f`; zero runs stay
/// holes.
pub(crate) fn write_into(
    fs: &dyn Filesystem,
    e: &FileEntry,
    f: &fs::File,
    progress: &(dyn Fn(u64) + Sync),
) -> std::io::Result<u64> {
    // A crafted inode may claim any size; no real file system holds a
    // file past 16 TiB (ext4's limit) in a guest this restores.
    if e.size > 16 << 40 {
        return Err(std::io::Error::other(format!(
            "claims {} bytes, more than any real file",
            e.size
        )));
    }
    // Only where the file holds data (all of it when that is not known):
    // holes stay holes without being read as zeros first.
    let ranges = fs
        .data_ranges(e)
        .map_err(std::io::Error::other)?
        .unwrap_or_else(|| vec![(0, e.size)]);
    let mut buf = vec![0u8; 1 << 20];
    let mut end = 0u64;
    for (start, len) in ranges {
        let stop = start.saturating_add(len).min(e.size);
        let mut off = start.max(end);
        while off < stop {
            let want = ((stop - off) as usize).min(buf.len());
            let n = fs
                .read_at(e, off, &mut buf[..want])
                .map_err(std::io::Error::other)?;
            if n == 0 {
                // The file ends here (shorter than it claims).
                f.set_len(off)?;
                return Ok(off);
            }
            if buf[..n].iter().any(|&b| b != 0) {
                f.write_all_at(&buf[..n], off)?;
            }
            off += n as u64;
            progress(n as u64);
        }
        end = end.max(off);
    }
    f.set_len(e.size)?;
    Ok(e.size)
}

/// [`set_meta`] through an open file: nothing swapped in at its path
/// (a symlink, in a live tree others write to) is changed instead.
pub(crate) fn set_meta_fd(e: &FileEntry, f: &fs::File, keep_setid: bool) -> bool {
    if let (Some(uid), Some(gid)) = (e.uid, e.gid) {
        let _ = std::os::unix::fs::fchown(f, Some(uid), Some(gid));
    }
    let (mode, dropped) = restored_mode(e.mode.unwrap_or(0o644), false, keep_setid);
    let _ = f.set_permissions(fs::Permissions::from_mode(mode));
    let t = std::time::UNIX_EPOCH
        .checked_add(std::time::Duration::from_nanos(e.mtime_ns.max(0) as u64));
    if let Some(t) = t {
        let _ = f.set_modified(t);
    }
    dropped
}

/// The extended attributes of `xattrs` a restore gives back: all but
/// file capabilities unless `keep_setid` (they make a privileged program
/// as setuid does).
pub(crate) fn restorable_xattrs(
    xattrs: &[(Vec<u8>, Vec<u8>)],
    keep_setid: bool,
) -> impl Iterator<Item = (&std::ffi::OsStr, &[u8])> {
    use std::os::unix::ffi::OsStrExt;
    xattrs
        .iter()
        .filter(move |(k, _)| keep_setid || k.as_slice() != b"security.capability")
        .map(|(k, v)| (std::ffi::OsStr::from_bytes(k), v.as_slice()))
}

/// Gives the file `f` its [`restorable_xattrs`] (best effort, as owners
/// are).
pub(crate) fn set_xattrs_fd(xattrs: &[(Vec<u8>, Vec<u8>)], f: &fs::File, keep_setid: bool) {
    use xattr::FileExt;
    for (k, v) in restorable_xattrs(xattrs, keep_setid) {
        let _ = f.set_xattr(k, v);
    }
}

/// [`set_xattrs_fd`] on `dest` by name (a file or folder this process
/// made, never a link).
pub(crate) fn set_xattrs(xattrs: &[(Vec<u8>, Vec<u8>)], dest: &Path, keep_setid: bool) {
    for (k, v) in restorable_xattrs(xattrs, keep_setid) {
        let _ = xattr::set(dest, k, v);
    }
}

/// Gives `dest` the owner, mode and time of `e`; true when setuid or
/// setgid bits were left out (see [`SETID`]).
pub(crate) fn set_meta(e: &FileEntry, dest: &Path, keep_setid: bool) -> bool {
    if let (Some(uid), Some(gid)) = (e.uid, e.gid) {
        let _ = std::os::unix::fs::lchown(dest, Some(uid), Some(gid));
    }
    let is_dir = e.kind == FileKind::Dir;
    let (mode, dropped) = restored_mode(
        e.mode.unwrap_or(if is_dir { 0o755 } else { 0o644 }),
        is_dir,
        keep_setid,
    );
    let _ = fs::set_permissions(dest, fs::Permissions::from_mode(mode));
    let _ = filetime::set_file_mtime(dest, mtime(e));
    dropped
}

/// `e`'s modification time, as the filesystem takes it.
fn mtime(e: &FileEntry) -> filetime::FileTime {
    filetime::FileTime::from_unix_time(
        e.mtime_ns.div_euclid(1_000_000_000),
        e.mtime_ns.rem_euclid(1_000_000_000) as u32,
    )
}

/// A symlink's own owner and time (its mode means nothing on Linux).
pub(crate) fn link_meta(e: &FileEntry, dest: &Path) {
    if let (Some(uid), Some(gid)) = (e.uid, e.gid) {
        let _ = std::os::unix::fs::lchown(dest, Some(uid), Some(gid));
    }
    let _ = filetime::set_symlink_file_times(dest, mtime(e), mtime(e));
}

#[cfg(test)]
mod tests {
    use super::make_symlink;

    #[test]
    fn a_link_target_with_a_nul_is_named_as_such() {
        let dir = tempfile::tempdir().unwrap();
        let err = make_symlink(b"../etc\0passwd", &dir.path().join("bad")).unwrap_err();
        assert!(err.to_string().contains("link target holds a NUL"), "{err}");
        assert!(std::fs::symlink_metadata(dir.path().join("bad")).is_err());
        make_symlink(b"../etc/passwd", &dir.path().join("good")).unwrap();
        assert_eq!(
            std::fs::read_link(dir.path().join("good")).unwrap(),
            std::path::Path::new("../etc/passwd")
        );
    }
}
