//! Restore of a directory snapshot with its metadata. Paths come from the
//! vault, but are still checked: nothing is ever written outside the
//! target directory.

use cairn_vault::Vault;
use cairn_vault::error::{Error, IoContext, Result};
use cairn_vault::hash::{BLOCK_SIZE, is_zero};
use cairn_vault::tree::{Entry, EntryKind, Tree};
use rayon::prelude::*;
use serde::Serialize;
use std::ffi::OsStr;
use std::fs::{self, OpenOptions};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};

#[derive(Clone, Debug, Default)]
pub struct TreeRestoreOptions {
    /// Restore into a directory that is not empty (existing files of the
    /// same names are replaced).
    pub overwrite: bool,
    /// Check the target and count what would be written; write nothing.
    pub dry_run: bool,
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
    }
    let mut report = TreeRestoreReport {
        dry_run: opts.dry_run,
        ..Default::default()
    };
    let mut plan: Vec<(&Entry, PathBuf)> = Vec::new();
    for e in &tree.entries {
        match safe_join(target, &e.path) {
            Some(p) => plan.push((e, p)),
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
    fs::create_dir_all(target).ctx(|| format!("creating {}", target.display()))?;

    // 1. Directories, parents first (the tree is sorted by path).
    for (e, p) in plan.iter().filter(|(e, _)| e.kind == EntryKind::Dir) {
        fs::create_dir_all(p).ctx(|| format!("creating {}", p.display()))?;
        let _ = e;
        report.dirs += 1;
    }
    // 2. File contents, in parallel.
    let files: Vec<&(&Entry, PathBuf)> = plan
        .iter()
        .filter(|(e, _)| e.kind == EntryKind::File && e.hardlink_to.is_none())
        .collect();
    let written: Vec<Result<u64>> = files
        .par_iter()
        .map(|(e, p)| write_file(vault, e, p, progress))
        .collect();
    for w in written {
        report.bytes_written += w?;
        report.files += 1;
    }
    // 3. Links and special files.
    for (e, p) in &plan {
        let r = match e.kind {
            EntryKind::Symlink => {
                remove_existing(p);
                report.symlinks += 1;
                std::os::unix::fs::symlink(
                    OsStr::from_bytes(e.link_target.as_deref().unwrap_or_default()),
                    p,
                )
            }
            EntryKind::File if e.hardlink_to.is_some() => {
                let first = e.hardlink_to.as_deref().unwrap_or_default();
                match safe_join(target, first) {
                    Some(src) => {
                        remove_existing(p);
                        report.hardlinks += 1;
                        fs::hard_link(src, p)
                    }
                    None => Err(std::io::Error::other("unsafe hard link target")),
                }
            }
            EntryKind::Fifo | EntryKind::CharDevice | EntryKind::BlockDevice => mknod(e, p),
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
        set_metadata(e, p, &mut report.warnings, &mut chown_denied);
    }
    Ok(report)
}

fn remove_existing(p: &Path) {
    if fs::symlink_metadata(p).is_ok_and(|m| !m.is_dir()) {
        let _ = fs::remove_file(p);
    }
}

fn write_file(vault: &Vault, e: &Entry, p: &Path, progress: &(dyn Fn(u64) + Sync)) -> Result<u64> {
    remove_existing(p);
    let f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(p)
        .ctx(|| format!("creating {}", p.display()))?;
    let mut offset = 0u64;
    for c in &e.chunks {
        let data = vault.read_chunk(&c.id)?;
        if data.len() != c.len as usize {
            return Err(Error::damaged(format!("chunk {}", c.id), "wrong length"));
        }
        // Zero blocks stay holes (the file is sized at the end).
        for (i, block) in data.chunks(BLOCK_SIZE).enumerate() {
            if !is_zero(block) {
                f.write_all_at(block, offset + (i * BLOCK_SIZE) as u64)
                    .ctx(|| format!("writing {}", p.display()))?;
            }
        }
        offset += data.len() as u64;
        progress(data.len() as u64);
    }
    f.set_len(offset)
        .ctx(|| format!("sizing {}", p.display()))?;
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
    let r = unsafe { libc::mknod(c.as_ptr(), kind | (e.mode & 0o7777), e.rdev as libc::dev_t) };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn set_metadata(e: &Entry, p: &Path, warnings: &mut Vec<String>, chown_denied: &mut bool) {
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
    for (k, v) in &e.xattrs {
        if let Err(err) = xattr::set(p, OsStr::from_bytes(k), v) {
            warnings.push(format!(
                "{}: xattr {}: {err}",
                shown(&e.path),
                String::from_utf8_lossy(k)
            ));
        }
    }
    if e.kind != EntryKind::Symlink
        && let Err(err) = fs::set_permissions(p, fs::Permissions::from_mode(e.mode & 0o7777))
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
}

#[cfg(test)]
mod tests {
    use super::*;

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
