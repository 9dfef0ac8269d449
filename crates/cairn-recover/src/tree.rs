//! Restore of a directory snapshot with its metadata. Paths come from the
//! vault, but are still checked: nothing is ever written outside the
//! target directory.

use crate::place::{parent_dir, sync_parent};
use cairn_vault::Vault;
use cairn_vault::error::{Error, IoContext, Result};
use cairn_vault::hash::{BLOCK_SIZE, is_zero};
use cairn_vault::tree::{Entry, EntryKind, Tree};
use rayon::prelude::*;
use serde::Serialize;
use std::collections::HashSet;
use std::ffi::OsStr;
use std::fs::{self, OpenOptions};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

#[derive(Clone, Debug, Default)]
pub struct TreeRestoreOptions {
    /// Restore into a directory that is not empty (existing files of the
    /// same names are replaced).
    pub overwrite: bool,
    /// Check the target and count what would be written; write nothing.
    pub dry_run: bool,
    /// Give files back their setuid and setgid bits and file capabilities
    /// (see [`crate::files::SETID`]).
    pub keep_setid: bool,
    /// The source folder's own metadata, given to the folder restored
    /// into (a whole tree's restore; None: a folder made now's).
    pub root: Option<cairn_vault::snapshot::RootMeta>,
}

#[derive(Debug, Default, Serialize)]
pub struct TreeRestoreReport {
    pub dry_run: bool,
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    pub hardlinks: u64,
    pub bytes_written: u64,
    /// Entries not restored or restored without some metadata, with why.
    pub warnings: Vec<String>,
    /// Files whose data could not be read from the vault (a damaged or
    /// missing pack): not restored, the rest is. Named, with why.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub missing: Vec<String>,
    /// Files restored without their setuid or setgid bits or file
    /// capabilities (`security.capability`).
    pub setid_dropped: u64,
    /// The first of them by name (see [`crate::files::note_setid`]).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub setid_dropped_paths: Vec<String>,
    /// With --overwrite: what the target held that the snapshot does not
    /// (left in place), relative paths; at most `MAX_EXTRA`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub extra: Vec<String>,
}

/// The longest path the kernel takes, with its terminating NUL.
pub(crate) const PATH_MAX: usize = libc::PATH_MAX as usize;

/// How many of a target's extra entries are listed.
const MAX_EXTRA: usize = 10_000;

/// Entries under `target` whose paths the tree does not hold, found
/// without following symlinks.
fn not_in_tree(target: &Path, tree: &Tree) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![(target.to_path_buf(), Vec::<u8>::new())];
    while let Some((dir, rel)) = stack.pop() {
        let Ok(rd) = fs::read_dir(&dir) else { continue };
        for e in rd.flatten() {
            let mut path = rel.clone();
            if !path.is_empty() {
                path.push(b'/');
            }
            path.extend_from_slice(e.file_name().as_bytes());
            let known = tree.find(&path);
            if known.is_none() {
                out.push(shown(&path));
                if out.len() >= MAX_EXTRA {
                    return out;
                }
            } else if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push((e.path(), path));
            }
        }
    }
    out.sort();
    out
}

/// The destination of a stored path, or `None` when the path could escape
/// the target (absolute, `..`, `.`, empty components, NUL).
pub fn safe_join(target: &Path, rel: &[u8]) -> Option<PathBuf> {
    if rel.is_empty() || rel.contains(&0) {
        return None;
    }
    let mut out = target.to_path_buf();
    for comp in rel.split(|&b| b == b'/') {
        if comp.is_empty() || comp == b"." || comp == b".." {
            return None;
        }
        out.push(OsStr::from_bytes(comp));
    }
    Some(out)
}

fn shown(rel: &[u8]) -> String {
    String::from_utf8_lossy(rel).into_owned()
}

pub fn restore_tree(
    vault: &Vault,
    tree: &Tree,
    target: &Path,
    opts: &TreeRestoreOptions,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<TreeRestoreReport> {
    if target.exists() {
        if !target.is_dir() {
            return Err(Error::Invalid(format!(
                "{} exists and is not a directory",
                target.display()
            )));
        }
        let empty = fs::read_dir(target)
            .ctx(|| format!("reading {}", target.display()))?
            .next()
            .is_none();
        if !empty && !opts.overwrite {
            return Err(Error::Invalid(format!(
                "{} is not empty; pass --overwrite to restore into it",
                target.display()
            )));
        }
        // An existing directory (maybe a mount point, or a link the user
        // gave on purpose) is restored into where it is.
        let mut report = restore_into(vault, tree, target, opts, progress)?;
        if !empty {
            report.extra = not_in_tree(target, tree);
            if !report.extra.is_empty() {
                const SHOWN: usize = 10;
                let mut names: Vec<&str> = report
                    .extra
                    .iter()
                    .take(SHOWN)
                    .map(String::as_str)
                    .collect();
                if report.extra.len() > SHOWN {
                    names.push("…");
                }
                report.warnings.push(format!(
                    "{} entries of {} are not in the snapshot and were left in place ({}; all in the JSON report's \"extra\")",
                    report.extra.len(),
                    target.display(),
                    names.join(", ")
                ));
            }
        }
        return Ok(report);
    }
    if opts.dry_run || target.file_name().is_none() {
        return restore_into(vault, tree, target, opts, progress);
    }
    built_then_renamed(target, opts.root.is_some(), |work| {
        restore_into(vault, tree, work, opts, progress)
    })
}

/// Builds a new folder `target` (named `name`) beside it, then renames it
/// into place once whole: a build that fails half-way, or a process
/// killed meanwhile, leaves no plausible-looking tree under the target's
/// name (a leftover `.NAME.cairn-partial` is cleared by the next run).
/// `moded`: the build gives the folder its mode itself; else it gets the
/// mode a folder made now would have.
pub(crate) fn built_then_renamed<T>(
    target: &Path,
    moded: bool,
    build: impl FnOnce(&Path) -> Result<T>,
) -> Result<T> {
    let name = target
        .file_name()
        .ok_or_else(|| Error::Invalid(format!("{}: not a folder name", target.display())))?;
    let work = target.with_file_name(format!(".{}.cairn-partial", name.to_string_lossy()));
    if fs::symlink_metadata(&work).is_ok() {
        fs::remove_dir_all(&work).ctx(|| format!("removing {}", work.display()))?;
    }
    // Made here, new, and open to no one else while it fills: a folder
    // someone put in its place meanwhile, or links planted in it during
    // the build, would steer writes out of the tree.
    let parent = parent_dir(&work);
    fs::create_dir_all(parent).ctx(|| format!("creating {}", parent.display()))?;
    fs::DirBuilder::new()
        .mode(0o700)
        .create(&work)
        .ctx(|| format!("creating {}", work.display()))?;
    let built = build(&work).and_then(|r| {
        // Then the mode a folder made now would have had.
        if !moded {
            fs::set_permissions(&work, fs::Permissions::from_mode(0o777 & !umask()))
                .ctx(|| format!("opening {} to its readers", work.display()))?;
        }
        // Everything on disk before the tree takes its name: after a crash
        // a tree under the target's name is whole, not files left empty.
        sync_filesystem(&work).ctx(|| format!("syncing {}", work.display()))?;
        Ok(r)
    });
    match built {
        Ok(report) => match fs::rename(&work, target) {
            Ok(()) => {
                sync_parent(target)?;
                Ok(report)
            }
            Err(e) => {
                let _ = fs::remove_dir_all(&work);
                Err(Error::io(
                    format!("moving {} to {}", work.display(), target.display()),
                    e,
                ))
            }
        },
        Err(e) => {
            let _ = fs::remove_dir_all(&work);
            Err(e)
        }
    }
}

/// This process's umask, read without changing it (`/proc/self/status`,
/// Linux 4.7+); the common 022 where it cannot be read.
fn umask() -> u32 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Umask:"))
                .and_then(|v| u32::from_str_radix(v.trim(), 8).ok())
        })
        .unwrap_or(0o022)
}

/// Flushes the filesystem holding `dir` (one call for a whole tree of
/// files, where an fsync per file would cost a disk flush each).
fn sync_filesystem(dir: &Path) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let d = fs::File::open(dir)?;
    if unsafe { libc::syncfs(d.as_raw_fd()) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn restore_into(
    vault: &Vault,
    tree: &Tree,
    target: &Path,
    opts: &TreeRestoreOptions,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<TreeRestoreReport> {
    let mut report = TreeRestoreReport {
        dry_run: opts.dry_run,
        ..Default::default()
    };
    // An entry is restored only below what the snapshot itself says are
    // directories: a crafted tree holding the symlink `a -> /etc` and then
    // `a/cron.d/x` must not write through the link.
    let dirs: HashSet<&[u8]> = tree
        .entries
        .iter()
        .filter(|e| e.kind == EntryKind::Dir)
        .map(|e| e.path.as_slice())
        .collect();
    let under_dirs = |path: &[u8]| {
        path.iter()
            .enumerate()
            .filter(|(_, b)| **b == b'/')
            .all(|(i, _)| dirs.contains(&path[..i]))
    };
    let mut plan: Vec<(&Entry, PathBuf)> = Vec::new();
    for e in &tree.entries {
        match safe_join(target, &e.path) {
            // Deeper than this system's paths reach once under the target
            // (the source's own limit, counted from the source folder, is
            // passed by the target's longer name): left out, not a reason
            // to abandon the whole tree.
            Some(p) if p.as_os_str().len() >= PATH_MAX => {
                let whole = shown(&e.path);
                let cut = if whole.len() > 120 {
                    let (mut a, mut b) = (60, whole.len() - 60);
                    while !whole.is_char_boundary(a) {
                        a -= 1;
                    }
                    while !whole.is_char_boundary(b) {
                        b += 1;
                    }
                    format!("{}…{}", &whole[..a], &whole[b..])
                } else {
                    whole
                };
                report.warnings.push(format!(
                    "{cut}: too deep for this system's paths under {} ({} bytes), not restored: restore it alone (NAME@SNAP:/path) into a shorter target",
                    target.display(),
                    p.as_os_str().len()
                ));
            }
            Some(p) if under_dirs(&e.path) => plan.push((e, p)),
            Some(_) => report.warnings.push(format!(
                "{}: below an entry that is not a directory in the snapshot, not restored",
                shown(&e.path)
            )),
            None => report
                .warnings
                .push(format!("{}: unsafe path, not restored", shown(&e.path))),
        }
    }
    if opts.dry_run {
        for (e, _) in &plan {
            match e.kind {
                EntryKind::Dir => report.dirs += 1,
                EntryKind::File if e.hardlink_to.is_some() => report.hardlinks += 1,
                EntryKind::File => {
                    report.files += 1;
                    report.bytes_written += e.size;
                }
                EntryKind::Symlink => report.symlinks += 1,
                _ => {}
            }
        }
        return Ok(report);
    }
    // A folder in the target where the snapshot has something else would
    // stop the restore half-way (a folder is never deleted to make room):
    // said before anything is written.
    let blocked: Vec<String> = plan
        .iter()
        .filter(|(e, p)| {
            e.kind != EntryKind::Dir && fs::symlink_metadata(p).is_ok_and(|m| m.is_dir())
        })
        .map(|(e, _)| shown(&e.path))
        .take(5)
        .collect();
    if !blocked.is_empty() {
        return Err(Error::Invalid(format!(
            "{} in {} where the snapshot has a file, a link or a special file: move it away or restore into an empty folder (nothing was written)",
            if blocked.len() == 1 {
                format!("{} is a folder", blocked[0])
            } else {
                format!("{} are folders", blocked.join(", "))
            },
            target.display()
        )));
    }
    fs::create_dir_all(target).ctx(|| format!("creating {}", target.display()))?;

    // 1. Directories, parents first (the tree is sorted by path). What
    //    stands in a directory's place in the target (a file, a symlink
    //    an earlier restore or someone else left) is replaced, never
    //    followed.
    for (_, p) in plan.iter().filter(|(e, _)| e.kind == EntryKind::Dir) {
        no_link_above(target, p)?;
        match fs::symlink_metadata(p) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                fs::remove_file(p).ctx(|| format!("replacing {}", p.display()))?;
                new_dir(p)?;
            }
            Err(_) => new_dir(p)?,
        }
        report.dirs += 1;
    }
    // 2. File contents, in parallel.
    let files: Vec<&(&Entry, PathBuf)> = plan
        .iter()
        .filter(|(e, _)| e.kind == EntryKind::File && e.hardlink_to.is_none())
        .collect();
    let written: Vec<std::result::Result<u64, Failed>> = files
        .par_iter()
        .map(|(e, p)| {
            no_link_above(target, p).map_err(Failed::Target)?;
            write_file(vault, e, p, progress)
        })
        .collect();
    for (w, (e, _)) in written.into_iter().zip(&files) {
        match w {
            Ok(n) => {
                report.bytes_written += n;
                report.files += 1;
            }
            // One damaged chunk costs its files, not the whole restore:
            // the rest of the tree is written, and they are named.
            // (What the target held at that name, with --overwrite, is
            // left as it was.)
            Err(Failed::Vault(err)) => {
                report
                    .missing
                    .push(format!("{}: not restored: {err}", shown(&e.path)));
            }
            Err(Failed::Target(err)) => return Err(err),
        }
    }
    // 3. Links and special files.
    for (e, p) in &plan {
        let made_here =
            e.hardlink_to.is_some() || !matches!(e.kind, EntryKind::Dir | EntryKind::File);
        if made_here && let Err(err) = no_link_above(target, p) {
            report.warnings.push(format!("{}: {err}", shown(&e.path)));
            continue;
        }
        let r = match e.kind {
            EntryKind::Symlink => {
                remove_existing(p);
                report.symlinks += 1;
                crate::files::make_symlink(e.link_target.as_deref().unwrap_or_default(), p)
            }
            EntryKind::File if e.hardlink_to.is_some() => {
                let first = e.hardlink_to.as_deref().unwrap_or_default();
                match safe_join(target, first)
                    .filter(|src| under_dirs(first) && no_link_above(target, src).is_ok())
                {
                    Some(src) => {
                        remove_existing(p);
                        report.hardlinks += 1;
                        fs::hard_link(src, p)
                    }
                    None => Err(std::io::Error::other("unsafe hard link target")),
                }
            }
            EntryKind::Fifo => mknod(e, p),
            // A socket is an endpoint its program binds anew when it
            // starts: there is nothing to restore.
            EntryKind::Socket => Ok(()),
            // A device node is raw access to a disk or a device of this
            // host for whoever it belongs to: a snapshot cannot grant it.
            EntryKind::CharDevice | EntryKind::BlockDevice => Err(std::io::Error::other(format!(
                "device node {}:{} not restored (create it by hand if it is needed)",
                libc::major(e.rdev as libc::dev_t),
                libc::minor(e.rdev as libc::dev_t)
            ))),
            _ => Ok(()),
        };
        if let Err(err) = r {
            report.warnings.push(format!("{}: {err}", shown(&e.path)));
        }
    }
    // 4. Metadata, directories last and deepest first, so that creating
    //    entries does not disturb a directory's restored mtime.
    let mut chown_denied = false;
    for (e, p) in plan
        .iter()
        .filter(|(e, _)| e.kind != EntryKind::Dir)
        .chain(plan.iter().rev().filter(|(e, _)| e.kind == EntryKind::Dir))
    {
        if e.hardlink_to.is_some() {
            continue; // shares the first name's inode
        }
        if no_link_above(target, p).is_err() {
            continue; // warned about above
        }
        // Not made: a socket (its program makes it anew when it starts),
        // or an entry whose creation failed and was warned about above.
        if fs::symlink_metadata(p).is_err() {
            continue;
        }
        let dropped = set_metadata(
            e,
            p,
            opts.keep_setid,
            &mut report.warnings,
            &mut chown_denied,
        );
        crate::files::note_setid(
            &mut report.setid_dropped,
            &mut report.setid_dropped_paths,
            shown(&e.path),
            dropped,
        );
    }
    // 5. The folder restored into, last: its time is set after every
    //    entry in it was made.
    if let Some(r) = &opts.root {
        let root = Entry {
            path: Vec::new(),
            kind: EntryKind::Dir,
            mode: r.mode,
            uid: r.uid,
            gid: r.gid,
            mtime_ns: r.mtime_ns,
            size: 0,
            inode: 0,
            rdev: 0,
            link_target: None,
            hardlink_to: None,
            xattrs: r.xattrs.clone(),
            chunks: Vec::new(),
            blocks: Vec::new(),
        };
        set_metadata(
            &root,
            target,
            opts.keep_setid,
            &mut report.warnings,
            &mut chown_denied,
        );
    }
    Ok(report)
}

/// Fails when a directory between `target` and `p` is a symlink (or not
/// a directory) on disk: writing there would land outside the target.
fn no_link_above(target: &Path, p: &Path) -> Result<()> {
    let mut a = p.parent();
    while let Some(dir) = a {
        if dir == target {
            return Ok(());
        }
        match fs::symlink_metadata(dir) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(Error::Invalid(format!(
                    "{} is not a directory (a symlink is never followed)",
                    dir.display()
                )));
            }
            // Not there (yet): nothing to follow.
            Err(_) => {}
        }
        a = dir.parent();
    }
    Err(Error::Invalid(format!(
        "{} is not inside {}",
        p.display(),
        target.display()
    )))
}

/// A folder made for the restore: open to its owner alone until the
/// metadata step gives it its mode (a folder that was 0700 must not show
/// what it holds meanwhile, nor after a restore that stops half-way).
fn new_dir(p: &Path) -> Result<()> {
    fs::DirBuilder::new()
        .mode(0o700)
        .create(p)
        .ctx(|| format!("creating {}", p.display()))
}

fn remove_existing(p: &Path) {
    if fs::symlink_metadata(p).is_ok_and(|m| !m.is_dir()) {
        let _ = fs::remove_file(p);
    }
}

/// Why a file was not written: its data could not be read from the
/// vault (the restore goes on without it), or the target refused it (the
/// restore stops: the next file would fare no better).
enum Failed {
    Vault(Error),
    Target(Error),
}

fn write_file(
    vault: &Vault,
    e: &Entry,
    p: &Path,
    progress: &(dyn Fn(u64) + Sync),
) -> std::result::Result<u64, Failed> {
    use Failed::Target;
    // Written under a name of its own beside `p`, then renamed over it:
    // with --overwrite, a file whose data the vault cannot give back
    // leaves the target's own version in place, not nothing.
    static PART: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let part = p.with_file_name(format!(
        ".cairn-part-{}-{}",
        std::process::id(),
        PART.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    remove_existing(&part);
    // A new file, never one reached through a symlink planted meanwhile,
    // readable by its owner alone until the metadata step gives it its
    // mode (a secret restored over a live folder is never readable by
    // others in between, nor after a restore that stops half-way).
    let f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&part)
        .ctx(|| format!("creating {}", p.display()))
        .map_err(Target)?;
    let written = fill(vault, e, &f, p, progress);
    // (A rename replaces a file or a symlink at `p`, never follows it.)
    match written.and_then(|n| {
        fs::rename(&part, p)
            .ctx(|| format!("moving {} into place", p.display()))
            .map_err(Target)?;
        Ok(n)
    }) {
        Ok(n) => Ok(n),
        Err(err) => {
            let _ = fs::remove_file(&part);
            Err(err)
        }
    }
}

/// Writes `e`'s content into `f` (the file for `p`).
fn fill(
    vault: &Vault,
    e: &Entry,
    f: &fs::File,
    p: &Path,
    progress: &(dyn Fn(u64) + Sync),
) -> std::result::Result<u64, Failed> {
    use Failed::Target;
    let mut offset = 0u64;
    for c in &e.chunks {
        let data = vault.read_chunk(&c.id).map_err(Failed::Vault)?;
        if data.len() != c.len as usize {
            return Err(Failed::Vault(Error::damaged(
                format!("chunk {}", c.id),
                "wrong length",
            )));
        }
        // Zero blocks stay holes (the file is sized at the end).
        for (i, block) in data.chunks(BLOCK_SIZE).enumerate() {
            if !is_zero(block) {
                f.write_all_at(block, offset + (i * BLOCK_SIZE) as u64)
                    .ctx(|| format!("writing {}", p.display()))
                    .map_err(Target)?;
            }
        }
        offset += data.len() as u64;
        progress(data.len() as u64);
    }
    f.set_len(offset)
        .ctx(|| format!("sizing {}", p.display()))
        .map_err(Target)?;
    Ok(offset)
}

fn mknod(e: &Entry, p: &Path) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt as _;
    let c = std::ffi::CString::new(p.as_os_str().as_bytes()).map_err(std::io::Error::other)?;
    let kind = match e.kind {
        EntryKind::Fifo => libc::S_IFIFO,
        EntryKind::CharDevice => libc::S_IFCHR,
        _ => libc::S_IFBLK,
    };
    remove_existing(p);
    let r = unsafe { libc::mknod(c.as_ptr(), kind | (e.mode & 0o1777), e.rdev as libc::dev_t) };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Gives `p` the owner, extended attributes, mode and time of `e`; true
/// when setuid or setgid bits were left out.
fn set_metadata(
    e: &Entry,
    p: &Path,
    keep_setid: bool,
    warnings: &mut Vec<String>,
    chown_denied: &mut bool,
) -> bool {
    if let Err(err) = std::os::unix::fs::lchown(p, Some(e.uid), Some(e.gid)) {
        if err.kind() == std::io::ErrorKind::PermissionDenied {
            if !*chown_denied {
                warnings.push("ownership not restored (needs root)".into());
                *chown_denied = true;
            }
        } else {
            warnings.push(format!("{}: chown: {err}", shown(&e.path)));
        }
    }
    let restorable = crate::files::restorable_xattrs(&e.xattrs, keep_setid);
    let mut set = 0;
    for (k, v) in restorable {
        set += 1;
        if let Err(err) = xattr::set(p, k, v) {
            warnings.push(format!(
                "{}: xattr {}: {err}",
                shown(&e.path),
                k.to_string_lossy()
            ));
        }
    }
    let capability_dropped = set < e.xattrs.len();
    // chmod follows symlinks: only what is not one on disk is changed.
    let is_link = fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_symlink());
    let (mode, dropped) = crate::files::restored_mode(e.mode, e.kind == EntryKind::Dir, keep_setid);
    if e.kind != EntryKind::Symlink
        && !is_link
        && let Err(err) = fs::set_permissions(p, fs::Permissions::from_mode(mode))
    {
        warnings.push(format!("{}: chmod: {err}", shown(&e.path)));
    }
    let t = filetime::FileTime::from_unix_time(
        e.mtime_ns.div_euclid(1_000_000_000),
        e.mtime_ns.rem_euclid(1_000_000_000) as u32,
    );
    if let Err(err) = filetime::set_symlink_file_times(p, t, t) {
        warnings.push(format!("{}: mtime: {err}", shown(&e.path)));
    }
    capability_dropped || (dropped && e.kind != EntryKind::Symlink && !is_link)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(path: &str, kind: EntryKind) -> Entry {
        Entry {
            path: path.as_bytes().to_vec(),
            kind,
            mode: if kind == EntryKind::Dir { 0o755 } else { 0o644 },
            uid: 0,
            gid: 0,
            mtime_ns: 0,
            size: 0,
            inode: 0,
            rdev: 0,
            link_target: None,
            hardlink_to: None,
            xattrs: vec![],
            chunks: vec![],
            blocks: vec![],
        }
    }

    fn link(path: &str, to: &Path) -> Entry {
        Entry {
            link_target: Some(to.as_os_str().as_bytes().to_vec()),
            ..entry(path, EntryKind::Symlink)
        }
    }

    /// A restore that fails leaves no half-built tree where the target
    /// was to be; one over a non-empty target says what it left there.
    #[test]
    fn a_failed_restore_leaves_nothing_and_extras_are_listed() {
        let dir = tempfile::tempdir().unwrap();
        let vault = Vault::init(&dir.path().join("v"), b"pw", &Default::default()).unwrap();
        let target = dir.path().join("t");
        // A name the target's filesystem refuses (longer than 255 bytes).
        let long = "n".repeat(300);
        let tree = Tree {
            entries: vec![entry("a", EntryKind::File), entry(&long, EntryKind::File)],
        };
        assert!(restore_tree(&vault, &tree, &target, &Default::default(), &|_| {}).is_err());
        assert!(!target.exists());
        assert_eq!(
            fs::read_dir(dir.path()).unwrap().count(),
            1,
            "only the vault"
        );
        // Data the vault cannot give back costs its file, not the rest.
        let tree = Tree {
            entries: vec![
                entry("a", EntryKind::File),
                Entry {
                    chunks: vec![cairn_vault::tree::FileChunk {
                        id: cairn_vault::ChunkId([7; 32]),
                        len: 10,
                    }],
                    size: 10,
                    ..entry("b", EntryKind::File)
                },
            ],
        };
        let r = restore_tree(&vault, &tree, &target, &Default::default(), &|_| {}).unwrap();
        assert!(target.join("a").exists() && !target.join("b").exists());
        assert_eq!(r.missing.len(), 1, "{:?}", r.missing);
        assert!(
            r.missing[0].starts_with("b: not restored: "),
            "{:?}",
            r.missing
        );
        fs::remove_dir_all(&target).unwrap();

        fs::create_dir(&target).unwrap();
        fs::write(target.join("ransom.txt"), b"pay").unwrap();
        let tree = Tree {
            entries: vec![entry("a", EntryKind::File)],
        };
        let opts = TreeRestoreOptions {
            overwrite: true,
            ..Default::default()
        };
        let r = restore_tree(&vault, &tree, &target, &opts, &|_| {}).unwrap();
        assert_eq!(r.extra, vec!["ransom.txt".to_string()]);
        assert!(target.join("a").exists());

        // A new target is built closed to others, then opened when whole.
        let fresh = dir.path().join("fresh");
        restore_tree(&vault, &tree, &fresh, &Default::default(), &|_| {}).unwrap();
        let mode = fs::metadata(&fresh).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o777 & !umask());
        assert!(fresh.join("a").exists());
        // Folders above a new target are made as before.
        let deep = dir.path().join("deep/er/fresh");
        restore_tree(&vault, &tree, &deep, &Default::default(), &|_| {}).unwrap();
        assert!(deep.join("a").exists());
    }

    /// A crafted tree (a symlink out of the target, then entries below
    /// it) and a target with a planted symlink: nothing lands outside.
    #[test]
    fn nothing_is_written_through_a_symlink() {
        let dir = tempfile::tempdir().unwrap();
        let vault = Vault::init(&dir.path().join("v"), b"pw", &Default::default()).unwrap();
        let outside = dir.path().join("outside");
        fs::create_dir(&outside).unwrap();
        fs::write(outside.join("victim"), b"host data").unwrap();
        let target = dir.path().join("t");
        let tree = Tree {
            entries: vec![
                link("a", &outside),
                entry("a/new", EntryKind::File),
                Entry {
                    hardlink_to: Some(b"x".to_vec()),
                    ..entry("a/victim", EntryKind::File)
                },
                entry("x", EntryKind::File),
            ],
        };
        let r = restore_tree(&vault, &tree, &target, &Default::default(), &|_| {}).unwrap();
        assert_eq!(fs::read(outside.join("victim")).unwrap(), b"host data");
        assert!(!outside.join("new").exists());
        assert_eq!(r.warnings.len(), 2, "{:?}", r.warnings);
        assert!(fs::symlink_metadata(target.join("a")).unwrap().is_symlink());

        // Restoring over a target where `d` is a symlink out: the
        // snapshot's directory `d` replaces the link, its file lands inside.
        let planted = dir.path().join("t2");
        fs::create_dir(&planted).unwrap();
        std::os::unix::fs::symlink(&outside, planted.join("d")).unwrap();
        let tree = Tree {
            entries: vec![
                entry("d", EntryKind::Dir),
                entry("d/victim", EntryKind::File),
            ],
        };
        let opts = TreeRestoreOptions {
            overwrite: true,
            ..Default::default()
        };
        restore_tree(&vault, &tree, &planted, &opts, &|_| {}).unwrap();
        assert_eq!(fs::read(outside.join("victim")).unwrap(), b"host data");
        assert!(fs::symlink_metadata(planted.join("d")).unwrap().is_dir());
        assert_eq!(fs::read(planted.join("d/victim")).unwrap(), b"");
    }

    #[test]
    fn safe_join_refuses_escapes() {
        let t = Path::new("/restore");
        assert_eq!(
            safe_join(t, b"a/b c/d"),
            Some(PathBuf::from("/restore/a/b c/d"))
        );
        for bad in [
            &b"../x"[..],
            b"a/../../x",
            b"/etc/passwd",
            b"a//b",
            b"./a",
            b"",
            b"a/\0b",
            b"a/",
        ] {
            assert_eq!(
                safe_join(t, bad),
                None,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
