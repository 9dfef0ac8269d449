//! Commands that look inside snapshots: partitions, ls, cat, diff, and
//! file-level restore.

use crate::util::bytes;
use anyhow::{Context, Result, bail};
use cairn_guest::open::GUEST_CACHE_CHUNKS;
use cairn_guest::{FileEntry, FileKind, Opened};
use cairn_vault::SourceKind;
use cairn_vault::{BlockSource, SnapshotDisk, Vault};
use std::io::Write;
use std::sync::Arc;

/// `NAME@SNAP:/path` → (`NAME@SNAP`, `/path`); the path defaults to `/`.
pub fn split_spec(spec: &str) -> (&str, &str) {
    match spec.split_once(':') {
        Some((s, p)) => (s, if p.is_empty() { "/" } else { p }),
        None => (spec, "/"),
    }
}

pub fn open_snapshot(vault: &Arc<Vault>, spec: &str, partition: Option<u32>) -> Result<Opened> {
    let snapshot = vault.resolve(spec)?;
    Ok(cairn_guest::open_snapshot(vault, snapshot, partition)?)
}

pub fn partitions(vault: &Arc<Vault>, spec: &str, json: bool) -> Result<u8> {
    let snap = vault.resolve(spec)?;
    let disk: Arc<dyn BlockSource> = Arc::new(SnapshotDisk::open(
        vault.clone(),
        &snap,
        GUEST_CACHE_CHUNKS,
    )?);
    let cairn_guest::partition::Table { parts, warnings } = cairn_guest::partition::table(&disk)?;
    for w in &warnings {
        eprintln!("warning: {w}");
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&parts)?);
        return Ok(0);
    }
    println!(
        "{:>3}  {:>12} {:>10}  {:<6} {:<8} {:<22} label",
        "#", "start", "size", "table", "fs", "type"
    );
    for p in &parts {
        println!(
            "{:>3}  {:>12} {:>10}  {:<6} {:<8} {:<22} {}{}",
            p.number,
            p.start,
            bytes(p.size),
            p.scheme,
            p.filesystem,
            p.type_name,
            p.label,
            if p.readable {
                ""
            } else {
                "  (not readable yet)"
            }
        );
    }
    Ok(0)
}

/// `rwxr-xr-x`, with `s`/`S` for setuid and setgid and `t`/`T` for the
/// sticky bit, as `ls -l` shows them.
fn symbolic(mode: u32) -> String {
    let mut out = String::with_capacity(9);
    for (shift, special, letter) in [(6, 0o4000, 's'), (3, 0o2000, 's'), (0, 0o1000, 't')] {
        let bits = (mode >> shift) & 7;
        out.push(if bits & 4 != 0 { 'r' } else { '-' });
        out.push(if bits & 2 != 0 { 'w' } else { '-' });
        out.push(match (bits & 1 != 0, mode & special != 0) {
            (true, true) => letter,
            (false, true) => letter.to_ascii_uppercase(),
            (true, false) => 'x',
            (false, false) => '-',
        });
    }
    out
}

fn long_line(e: &FileEntry) -> String {
    let kind = match e.kind {
        FileKind::Dir => 'd',
        FileKind::Symlink => 'l',
        FileKind::File => '-',
        FileKind::Other => '?',
    };
    let mode = e.mode.map(symbolic).unwrap_or_else(|| "?????????".into());
    let owner = match (e.uid, e.gid) {
        (Some(u), Some(g)) => format!("{u}:{g}"),
        _ => "-".into(),
    };
    let time = chrono::DateTime::from_timestamp(e.mtime_ns.div_euclid(1_000_000_000), 0)
        .map(|t| t.format("%Y-%m-%d %H:%M").to_string())
        .unwrap_or_default();
    let link = e
        .link_target
        .as_ref()
        .map(|t| format!(" -> {}", String::from_utf8_lossy(t)))
        .unwrap_or_default();
    format!(
        "{kind}{mode} {owner:>11} {:>12} {time} {}{link}",
        e.size,
        e.display_path()
    )
}

pub fn ls(
    vault: &Arc<Vault>,
    spec: &str,
    long: bool,
    recursive: bool,
    partition: Option<u32>,
    json: bool,
) -> Result<u8> {
    let (snap, path) = split_spec(spec);
    let o = open_snapshot(vault, snap, partition)?;
    let path = guest_path(&o, path)?;
    let top = o.fs.lookup(&path)?;
    // Folders that could not be read make the listing partial: said, and
    // exit 3 (a script must not take it for the whole tree).
    let mut partial = 0;
    let entries: Vec<FileEntry> = if top.kind != FileKind::Dir {
        vec![top]
    } else if recursive {
        let w = if path.is_empty() {
            cairn_guest::walk_readable_marking(o.fs.as_ref())?
        } else {
            let (entries, unread) = cairn_guest::walk_under_marking(o.fs.as_ref(), &top)?;
            cairn_guest::Walked {
                entries,
                unread,
                whole_walk_error: None,
            }
        };
        if let Some(e) = &w.whole_walk_error {
            eprintln!(
                "warning: the filesystem could not be walked whole ({e}); listing what can be read"
            );
        }
        // (A folder left unread because it lists what is listed already,
        // a loop, loses nothing.)
        partial = w
            .unread
            .iter()
            .filter(|u| u.kind != cairn_guest::UnreadKind::Repeat)
            .count();
        for u in &w.unread {
            eprintln!("warning: {}", u.describe());
        }
        w.entries
    } else {
        o.fs.read_dir(&path)?
    };
    let code = if partial == 0 {
        0
    } else {
        eprintln!("INCOMPLETE: {partial} folder(s) could not be read (named above): exit 3");
        crate::FOUND
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&entries)?);
        return Ok(code);
    }
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for e in &entries {
        if long {
            writeln!(out, "{}", long_line(e))?;
        } else if recursive {
            writeln!(out, "{}", e.display_path())?;
        } else {
            let slash = if e.kind == FileKind::Dir { "/" } else { "" };
            // The whole name: one holding a `/` (crafted) shown cut at it
            // would pass for another file.
            let skip = if path.is_empty() { 0 } else { path.len() + 1 };
            let name = e.path.get(skip..).unwrap_or(e.name());
            let flag = if e.unsafe_name { "  (unsafe name)" } else { "" };
            writeln!(out, "{}{slash}{flag}", cairn_guest::model::escape(name))?;
        }
    }
    // Dropping a BufWriter swallows its last write's error.
    out.flush()?;
    Ok(code)
}

/// A path as typed, in the snapshot's terms. On a Windows filesystem a
/// path pasted from Windows (`C:\Users\…`, `\Users\…`: how a scan
/// prints what a Run value starts) has `\` between its folders, and its
/// drive letter is left out.
///
/// Links among its folders are followed inside the snapshot (`/bin/ls`
/// on a guest whose `/bin` links to `usr/bin`), and the last one too when
/// the path ends in `/` (the folder a link names, as a shell reads it).
fn guest_path(o: &cairn_guest::Opened, path: &str) -> Result<Vec<u8>> {
    let windows = cairn_guest::model::windows_kind(&o.fs.kind());
    let b = path.as_bytes();
    let drive = b.len() >= 2 && b[0].is_ascii_alphabetic() && b[1] == b':';
    if windows && (drive || (path.contains('\\') && !path.contains('/'))) {
        let rest = if drive { &path[2..] } else { path };
        return Ok(cairn_guest::model::normalize(&rest.replace('\\', "/"))?);
    }
    let normal = cairn_guest::model::normalize(path)?;
    let last = path.ends_with('/') && !normal.is_empty();
    Ok(cairn_guest::model::follow_links(
        o.fs.as_ref(),
        &normal,
        last,
    )?)
}

pub fn cat(vault: &Arc<Vault>, spec: &str, partition: Option<u32>) -> Result<u8> {
    let (snap, path) = split_spec(spec);
    let o = open_snapshot(vault, snap, partition)?;
    let e = o.fs.lookup(&guest_path(&o, path)?)?;
    if e.kind != FileKind::File {
        bail!("{} is not a regular file", e.display_path());
    }
    let mut out = std::io::stdout().lock();
    let mut buf = vec![0u8; 1 << 20];
    let mut off = 0u64;
    loop {
        let n = o.fs.read_at(&e, off, &mut buf)?;
        if n == 0 {
            break;
        }
        out.write_all(&buf[..n]).context("writing to stdout")?;
        off += n as u64;
    }
    Ok(0)
}

pub fn diff(
    vault: &Arc<Vault>,
    a: &str,
    b: &str,
    partition: Option<u32>,
    json: bool,
) -> Result<u8> {
    let old = open_snapshot(vault, a, partition)?;
    // The same partition on both sides (the largest readable one of the
    // second may be another filesystem altogether).
    let new = open_snapshot(vault, b, partition.or(old.partition))?;
    if old.snapshot.source.kind != new.snapshot.source.kind {
        let kind = |k: SourceKind| match k {
            SourceKind::Disk => "a disk",
            SourceKind::Directory => "a directory",
        };
        bail!(
            "{a} is {} and {b} {}; diff compares like with like",
            kind(old.snapshot.source.kind),
            kind(new.snapshot.source.kind)
        );
    }
    let d = cairn_guest::diff::between(&old, &new)?;
    for u in &d.unread {
        eprintln!("warning: folder {u}: what lies below it is not compared");
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&d)?);
        return Ok(0);
    }
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for x in &d.added {
        writeln!(out, "+ {} ({})", x.path, bytes(x.size))?;
    }
    for x in &d.deleted {
        writeln!(out, "- {} ({})", x.path, bytes(x.size))?;
    }
    for x in &d.modified {
        writeln!(
            out,
            "M {} ({} -> {})",
            x.path,
            bytes(x.old_size),
            bytes(x.new_size)
        )?;
    }
    for x in &d.renamed {
        writeln!(
            out,
            "R {} -> {}{}",
            x.from,
            x.to,
            if x.modified { " (and modified)" } else { "" }
        )?;
    }
    writeln!(
        out,
        "{} added, {} deleted, {} modified, {} renamed",
        d.added.len(),
        d.deleted.len(),
        d.modified.len(),
        d.renamed.len()
    )?;
    out.flush()?;
    Ok(0)
}

pub fn restore_files(
    vault: &Arc<Vault>,
    spec: &str,
    to: &std::path::Path,
    partition: Option<u32>,
    keep_setid: bool,
    overwrite: bool,
    json: bool,
) -> Result<u8> {
    let (snap, path) = split_spec(spec);
    let o = open_snapshot(vault, snap, partition)?;
    let root = o.fs.lookup(&guest_path(&o, path)?)?;
    let r = cairn_recover::restore_files(o.fs.as_ref(), &root, to, keep_setid, overwrite, &|_| {})?;
    for s in r.special.iter().chain(&r.skipped) {
        eprintln!("skipped: {s}");
    }
    crate::util::setid_warning(r.setid_dropped, &r.setid_dropped_paths);
    if json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        println!(
            "restored {}:{} to {}: {} files, {} dirs, {} symlinks, {} hard links, {}{}",
            snap,
            path,
            to.display(),
            r.files,
            r.dirs,
            r.symlinks,
            r.hardlinks,
            bytes(r.bytes_written),
            if r.skipped.is_empty() {
                String::new()
            } else {
                format!("; INCOMPLETE: {} skipped (listed above)", r.skipped.len())
            }
        );
    }
    // A script must not take a partial restore for the whole tree.
    Ok(if r.skipped.is_empty() {
        0
    } else {
        crate::FOUND
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn modes_read_as_ls_shows_them() {
        assert_eq!(super::symbolic(0o644), "rw-r--r--");
        assert_eq!(super::symbolic(0o4755), "rwsr-xr-x");
        assert_eq!(super::symbolic(0o2644), "rw-r-Sr--");
        assert_eq!(super::symbolic(0o1777), "rwxrwxrwt");
    }
}
