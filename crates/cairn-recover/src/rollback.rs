//! Least-data-loss rollback: start from the newest snapshot and replace
//! only what the attack damaged. Every file insight found damaged
//! (encrypted, broken, zeroed) takes its newest version from before the
//! damage; files the attack created (ransom notes, encrypted copies) are
//! dropped and the originals they replaced come back; everything else keeps
//! its newest content, so work done after the last clean snapshot is kept.
//! Files verification (`cairn scan`) flagged — a planted web shell, a new
//! cron entry, a binary with malware in it — are treated the same way:
//! the version from before the first flagged snapshot comes back, or the
//! file is dropped when it did not exist before.
//! A provenance entry says, for every file, where it came from and why.

use crate::beneath::Dir;
use crate::files::{set_meta, set_meta_fd, write_file, write_into};
use crate::tree::safe_join;
use cairn_guest::{FileEntry, FileKind, Opened};
use cairn_insight::{Damage, Timeline};
use cairn_vault::error::{Error, IoContext, Result};
use cairn_vault::{SnapshotId, Vault};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// The newest version, untouched by the attack.
    Kept,
    /// An older, good version replaces a damaged or deleted one.
    Restored,
    /// Created by the attack; left out.
    Dropped,
    /// Could not be written into the new folder (its data unreadable):
    /// not there; the reason says why.
    Missing,
}

#[derive(Clone, Debug, Serialize)]
pub struct Provenance {
    pub path: String,
    pub action: Action,
    /// The snapshot the content comes from (none for dropped files).
    pub snapshot: Option<String>,
    pub snapshot_time: Option<String>,
    pub reason: String,
    /// Verification flagged this file and it was kept as it is (a
    /// registry hive holds the whole system's settings): the operator
    /// must clean it before production.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub review: bool,
}

impl Provenance {
    /// A file left out, and why.
    fn dropped(path: String, reason: String) -> Provenance {
        Provenance {
            review: false,
            path,
            action: Action::Dropped,
            snapshot: None,
            snapshot_time: None,
            reason,
        }
    }
}

#[derive(Debug, Default, Serialize)]
pub struct RollbackReport {
    pub name: String,
    pub latest: String,
    /// Damage was looked for from this snapshot on.
    pub since: Option<String>,
    pub kept: u64,
    pub restored: u64,
    pub dropped: u64,
    pub bytes_written: u64,
    pub dry_run: bool,
    /// What the plan had to work around: a newest snapshot whose
    /// filesystem could not be read (the rollback starts from the newest
    /// one that can), folders that could not be read in it.
    pub notes: Vec<String>,
    /// Entries not written, with why.
    pub skipped: Vec<String>,
    /// Of those, planned repairs that failed on an error (as against files
    /// left alone on purpose: changed since the last backup, special).
    pub failed: u64,
    /// Entries the rollback could not bring back for what they are, not
    /// for an error: unsafe names, paths longer than this system takes,
    /// folders too deep to walk or with too much below them to take from
    /// an earlier snapshot (named in `skipped` and `notes`). A rollback
    /// with any is incomplete (exit 3).
    #[serde(default)]
    pub incomplete: u64,
    /// Files written without their setuid or setgid bits (see
    /// [`crate::files::SETID`]).
    pub setid_dropped: u64,
    /// The first of them by name (see [`crate::files::note_setid`]).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub setid_dropped_paths: Vec<String>,
    pub files: Vec<Provenance>,
}

/// Longest name a folder entry may have here (Linux filesystems).
const NAME_MAX: usize = 255;

/// How a rollback writes.
#[derive(Clone, Copy, Debug, Default)]
pub struct RollbackOptions {
    /// Say what would be done; write nothing.
    pub dry_run: bool,
    /// Give files back their setuid and setgid bits.
    pub keep_setid: bool,
}

/// A file verification flagged, from the first snapshot of the run of
/// scans that flag it up to the newest scan.
#[derive(Clone, Debug)]
pub struct Flagged {
    pub first: SnapshotId,
    /// As the scan shows it (`/etc/cron.d/x`).
    pub path: String,
    pub why: String,
    /// The file is the foothold itself, so an earlier version replaces it
    /// (or it is dropped); false for a finding inside a file that holds
    /// other needed data (accounts, a registry hive): reported, kept.
    pub revert: bool,
    /// With no earlier version, the file is left out (false: kept for
    /// review, as account files are).
    pub droppable: bool,
    /// Not flagged itself: a flagged job starts it. Left out only when it
    /// is as new as the job; one there the same before is kept (for review
    /// when it is newer than the oldest snapshot).
    pub started: bool,
}

/// Files larger than this are not compared byte for byte when looking for
/// a flagged file's last different version: the one before is taken.
const MAX_COMPARED: u64 = 256 << 20;

/// Whether two files hold the same bytes.
fn same_content(
    a: &dyn cairn_guest::Filesystem,
    ae: &FileEntry,
    b: &dyn cairn_guest::Filesystem,
    be: &FileEntry,
) -> bool {
    if ae.size != be.size {
        return false;
    }
    if ae.size > MAX_COMPARED {
        return false;
    }
    let mut x = vec![0u8; (ae.size as usize).min(1 << 20)];
    let mut y = x.clone();
    let mut off = 0u64;
    while off < ae.size {
        let (Ok(n), Ok(m)) = (
            cairn_guest::read_full(a, ae, off, &mut x),
            cairn_guest::read_full(b, be, off, &mut y),
        ) else {
            return false;
        };
        if n != m || n == 0 || x[..n] != y[..n] {
            return n == 0 && m == 0;
        }
        off += n as u64;
    }
    true
}

/// One decision: the entry to write and the timeline index it comes from.
struct Pick {
    index: usize,
    entry: FileEntry,
    /// The latest snapshot has nothing at this path (a deleted file, an
    /// original an encrypted copy replaced): in place, whatever is there
    /// now was made since and is left alone.
    absent: bool,
}

/// What damage was found for a path: where first, what, and the file it
/// replaced.
struct Hurt {
    index: usize,
    /// The snapshot it was found against (its parent, or the one before
    /// it read whole): where its good version is.
    base: Option<usize>,
    damage: Damage,
    origin: Option<String>,
    detail: String,
}

/// The guest path a finding names (findings show paths escaped, see
/// `FileEntry::display_path`).
fn rel(display: &str) -> Vec<u8> {
    cairn_guest::model::unescape(display.trim_start_matches('/'))
}

/// What a file keeps when it is renamed or moved: the digest of its
/// content (directory sources), or its file id with its size and time (a
/// rename in a guest keeps the inode and the mtime). Empty files have no
/// identity to follow.
#[derive(Clone, PartialEq, Eq, Hash)]
enum MovedKey {
    Content([u8; 32], u64),
    Id(u64, u64, i64),
}

fn moved_key(e: &FileEntry) -> Option<MovedKey> {
    if e.size == 0 {
        return None;
    }
    match (e.content_key, e.file_id) {
        (Some(k), _) => Some(MovedKey::Content(k, e.size)),
        (None, Some(id)) => Some(MovedKey::Id(id, e.size, e.mtime_ns)),
        _ => None,
    }
}

/// How many times each key comes.
fn counted(keys: impl Iterator<Item = MovedKey>) -> HashMap<MovedKey, usize> {
    let mut n = HashMap::new();
    for k in keys {
        *n.entry(k).or_default() += 1;
    }
    n
}

/// Where the version from before the attack of a file made again since
/// (`now`: the pick at its path) goes, beside it: `report.docx` →
/// `report (before the attack, 3f2a1b2c).docx`, keeping the extension so
/// it opens as what it is. `None` when there is nothing to bring back
/// (no such file then, or the same bytes as now) or the name is taken.
fn beside_the_new_one(
    snaps: &mut Snapshots,
    g: usize,
    path: &[u8],
    now: (usize, FileEntry),
    picks: &BTreeMap<Vec<u8>, Pick>,
    in_latest: &std::collections::HashSet<Vec<u8>>,
) -> Option<(Vec<u8>, FileEntry)> {
    let old = snaps.lookup(g, path).filter(|x| x.kind == FileKind::File)?;
    if now.1.kind == FileKind::File && same_in(snaps, (g, &old), (now.0, &now.1))? {
        return None;
    }
    let (id, _) = snaps.label(g);
    let short = &id[..id.len().min(8)];
    let slash = path.iter().rposition(|&b| b == b'/').map_or(0, |i| i + 1);
    let name = &path[slash..];
    // A leading dot is a hidden file's, not an extension.
    let dot = name
        .iter()
        .rposition(|&b| b == b'.')
        .filter(|&d| d > 0)
        .unwrap_or(name.len());
    // Within the 255 bytes a name may have: a long stem is cut (at a
    // character's edge), never the extension.
    let suffix = format!(" (before the attack, {short})");
    let ext = &name[dot..];
    let room = 255usize.checked_sub(suffix.len() + ext.len())?;
    let mut stem = &name[..dot];
    if stem.len() > room {
        let mut cut = room;
        if let Ok(text) = std::str::from_utf8(stem) {
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
        }
        stem = &stem[..cut];
    }
    let mut side = path[..slash].to_vec();
    side.extend_from_slice(stem);
    side.extend_from_slice(suffix.as_bytes());
    side.extend_from_slice(ext);
    (!picks.contains_key(&side) && !in_latest.contains(&side)).then_some((side, old))
}

/// The plan: for every path of the result, which version and why.
struct Plan {
    picks: BTreeMap<Vec<u8>, Pick>,
    provenance: Vec<Provenance>,
    since: Option<usize>,
    /// The snapshot the rollback starts from: the newest whose filesystem
    /// can be read.
    latest: usize,
    notes: Vec<String>,
    /// Folders whose content the plan cannot bring back (see
    /// [`RollbackReport::incomplete`]).
    incomplete: u64,
}

struct Snapshots<'a> {
    vault: &'a Arc<Vault>,
    timeline: &'a Timeline,
    partition: Option<u32>,
    open: HashMap<usize, Opened>,
}

impl Snapshots<'_> {
    fn get(&mut self, i: usize) -> Result<&Opened> {
        if !self.open.contains_key(&i) {
            let snap = self.timeline.entries[i].snapshot.clone();
            let o = cairn_guest::open_snapshot(self.vault, snap, self.partition)
                .map_err(guest_error)?;
            self.open.insert(i, o);
        }
        Ok(&self.open[&i])
    }

    fn lookup(&mut self, i: usize, path: &[u8]) -> Option<FileEntry> {
        self.get(i).ok()?.fs.lookup(path).ok()
    }

    fn label(&self, i: usize) -> (String, String) {
        let s = &self.timeline.entries[i].snapshot;
        (
            s.id.0.clone(),
            // As every other time Cairn prints: UTC with a Z.
            s.time.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
        )
    }
}

/// For a file verification flagged from snapshot `first` on: the newest
/// earlier version whose bytes differ from the flagged one (an unscanned
/// snapshot before may hold the same planted bytes), or `None` when the
/// file did not exist before it.
fn before_flagged(snaps: &mut Snapshots, first: usize, path: &[u8]) -> Option<(usize, FileEntry)> {
    let flagged = snaps.lookup(first, path)?;
    for g in (0..first).rev() {
        let old = snaps.lookup(g, path)?;
        if old.kind != FileKind::File {
            return None;
        }
        if !same_in(snaps, (g, &old), (first, &flagged))? {
            return Some((g, old));
        }
    }
    None
}

/// Whether file `a` of snapshot `i` and file `b` of snapshot `j` hold the
/// same bytes (`None` when either snapshot cannot be opened).
fn same_in(
    snaps: &mut Snapshots,
    (i, a): (usize, &FileEntry),
    (j, b): (usize, &FileEntry),
) -> Option<bool> {
    snaps.get(i).ok()?;
    snaps.get(j).ok()?;
    let (x, y) = (&snaps.open[&i], &snaps.open[&j]);
    Some(same_content(x.fs.as_ref(), a, y.fs.as_ref(), b))
}

fn plan(snaps: &mut Snapshots, since: Option<&SnapshotId>, flagged: &[Flagged]) -> Result<Plan> {
    let t = snaps.timeline;
    let mut notes = Vec::new();
    // The newest snapshot whose filesystem reads (a wiper or an encrypted
    // volume leaves none in the snapshots after it).
    let mut start = None;
    for i in (0..t.entries.len()).rev() {
        match walk(snaps, i) {
            Ok(w) => {
                start = Some((i, w));
                break;
            }
            // Not the guest's doing: no rollback from older snapshots
            // while the newer ones are only damaged in the vault.
            Err(e @ Error::Damaged { .. }) => return Err(e),
            Err(e) => notes.push(format!(
                "{}@{}: its filesystem cannot be read ({e}); starting from an earlier snapshot",
                t.name,
                t.entries[i].snapshot.id.short()
            )),
        }
    }
    let Some((latest, walked)) = start else {
        return Err(Error::Invalid(format!(
            "no snapshot of {} has a filesystem Cairn can read",
            t.name
        )));
    };
    // Damage counts from `since`, else from just after the clean point.
    let from = match since {
        Some(id) => Some(
            t.entries
                .iter()
                .position(|e| e.snapshot.id == *id)
                .ok_or_else(|| Error::SnapshotNotFound(format!("{:?} (--since)", id.0)))?,
        ),
        None => t.clean_point.as_ref().map(|c| c.index + 1),
    };
    let mut hurt: BTreeMap<String, Hurt> = BTreeMap::new();
    for (i, e) in t.entries.iter().enumerate().skip(from.unwrap_or(0)) {
        // A new file that replaced nothing destroyed nothing: it is kept
        // like any other new file (least data lost), not dropped. So is a
        // file its owner saved with a password, unless many were at once.
        let findings = || e.signals.files.iter().flat_map(|f| &f.findings);
        let protected = findings().filter(|f| f.damage == Damage::Protected).count() as u64;
        let undone = |f: &&cairn_insight::files::Finding| {
            !f.replaced_nothing()
                && (f.damage != Damage::Protected
                    || protected >= cairn_insight::score::MANY_PROTECTED)
        };
        let base = e
            .signals
            .parent
            .as_ref()
            .and_then(|p| t.entries[..i].iter().rposition(|x| x.snapshot.id == *p))
            .or(i.checked_sub(1));
        for f in findings().filter(undone) {
            hurt.entry(f.path.clone()).or_insert(Hurt {
                index: i,
                base,
                damage: f.damage,
                origin: f.origin.clone(),
                detail: f.detail.clone(),
            });
        }
    }

    let flags: HashMap<&str, (usize, &Flagged)> = flagged
        .iter()
        .filter_map(|f| {
            let i = t.entries.iter().position(|e| e.snapshot.id == f.first)?;
            Some((f.path.as_str(), (i, f)))
        })
        .collect();
    // Windows names a file in any case (a Run value's `c:\users\…`): on
    // its filesystems a flag matches whatever the case.
    let any_case = snaps
        .get(latest)
        .is_ok_and(|o| cairn_guest::model::windows_kind(&o.fs.kind()));
    let folded: HashMap<String, (usize, &Flagged)> = if any_case {
        flags.iter().map(|(p, v)| (p.to_lowercase(), *v)).collect()
    } else {
        HashMap::new()
    };
    let flag_of = |p: &str| {
        flags
            .get(p)
            .or_else(|| folded.get(&p.to_lowercase()))
            .copied()
    };

    // The files of the snapshot damage is counted after (the clean point):
    // those gone since come back from it, and a file it lacked is not
    // called untouched when it is kept.
    let clean = from.and_then(|f| f.checked_sub(1));
    // Every entry to decide on, with the snapshot it is taken from: the
    // starting snapshot's, then what lies below the folders it could not
    // read, from the newest earlier snapshot that lists them.
    let mut entries: Vec<(usize, FileEntry, Option<String>)> = walked
        .entries
        .into_iter()
        .map(|e| (latest, e, None))
        .collect();
    let newest_unreadable = latest + 1 < t.entries.len();
    let floor = clean.unwrap_or(0);
    let mut incomplete = 0;
    entries.extend(unread_folders(
        snaps,
        latest,
        floor,
        &walked.unread,
        &mut notes,
        &mut incomplete,
    ));
    let before: BTreeMap<Vec<u8>, FileEntry> = match clean {
        Some(c) => walk(snaps, c)?
            .entries
            .into_iter()
            .filter(|e| e.kind == FileKind::File)
            .map(|e| (e.path.clone(), e))
            .collect(),
        None => BTreeMap::new(),
    };
    // The extensions the attack gave the files it encrypted: insight's
    // extension churn on the days damage counts from (given to several
    // files at once) where a file of that extension was found encrypted
    // from an original (a `sed -i.bak` or a log rotation names files so
    // too, and encrypts nothing). A new file named as a file of the clean
    // point plus one of them is the attack's copy, even one too small for
    // its bytes to tell.
    let attack_exts: std::collections::HashSet<String> = match from {
        Some(f) => {
            let days = &t.entries[f.min(t.entries.len())..];
            let encrypted: std::collections::HashSet<String> = days
                .iter()
                .flat_map(|x| x.signals.files.iter().flat_map(|s| &s.findings))
                .filter(|f| f.origin.is_some() && f.damage != Damage::RansomNote)
                .map(|f| cairn_insight::content::extension(&f.path))
                .collect();
            days.iter()
                .flat_map(|x| x.signals.files.iter().flat_map(|s| &s.extension_churn))
                .filter(|c| c.files >= 2 && encrypted.contains(&c.extension))
                .map(|c| c.extension.clone())
                .collect()
        }
        None => Default::default(),
    };
    // The file names of the ransom notes found on those days: a new file
    // named so that insight did not judge a note (its text too short to
    // tell) is kept — it may be someone's — but said.
    let note_names: std::collections::HashSet<String> = match from {
        Some(f) => t.entries[f.min(t.entries.len())..]
            .iter()
            .flat_map(|x| x.signals.files.iter().flat_map(|s| &s.findings))
            .filter(|f| f.damage == Damage::RansomNote)
            .filter_map(|f| f.path.rsplit('/').next().map(str::to_lowercase))
            .collect(),
        None => Default::default(),
    };
    let copy_of = |path: &[u8]| -> Option<(Vec<u8>, String)> {
        let dot = path.iter().rposition(|&b| b == b'.')?;
        let ext = std::str::from_utf8(&path[dot + 1..])
            .ok()?
            .to_ascii_lowercase();
        let original = &path[..dot];
        (attack_exts.contains(ext.as_str()) && before.contains_key(original))
            .then(|| (original.to_vec(), ext))
    };
    let mut in_latest = std::collections::HashSet::new();
    let mut picks = BTreeMap::new();
    let mut provenance = Vec::new();
    for (src, e, hidden_why) in entries {
        if src == latest {
            in_latest.insert(e.path.clone());
        }
        let (latest_id, latest_time) = snaps.label(src);
        // In place, whatever stands where a file of an unread folder goes
        // is not known to be the attack's: it is left alone.
        let absent = src != latest;
        let shown = e.display_path();
        // What verification flagged: a file (one insight found damaged is
        // decided below) or a link (a timer enabled through
        // `timers.target.wants/`).
        let flag = flag_of(shown.as_str()).filter(|_| {
            e.kind == FileKind::Symlink || (e.kind == FileKind::File && !hurt.contains_key(&shown))
        });
        if let Some((k, f)) = flag {
            let (first, _) = snaps.label(k);
            let short = &first[..first.len().min(8)];
            let found = format!("flagged by verification in {short} ({})", f.why);
            let (action, index, entry, reason, review) = if e.kind == FileKind::Symlink {
                // A link: as it was before, or left out when it was not there.
                let earlier = k.checked_sub(1).map(|b| (b, snaps.lookup(b, &e.path)));
                let (action, index, entry, reason) = match earlier {
                    Some((_, None)) => (
                        Action::Dropped,
                        src,
                        e.clone(),
                        format!("{found}; it did not exist before"),
                    ),
                    Some((b, Some(old)))
                        if old.kind != FileKind::Symlink || old.link_target != e.link_target =>
                    {
                        (
                            Action::Restored,
                            b,
                            old,
                            format!("{found}; last version before it"),
                        )
                    }
                    _ => (
                        Action::Kept,
                        src,
                        e.clone(),
                        format!("{found}; the same before: kept, review it by hand"),
                    ),
                };
                (action, index, entry, reason, action == Action::Kept)
            } else {
                let good = if f.revert {
                    before_flagged(snaps, k, &e.path)
                } else {
                    None
                };
                // A file a flagged job starts that was there, the same, before
                // the job was (a system program, an application's script) is
                // most likely the system's own: kept (a guest must not get a
                // rollback to drop any file by naming it in a job); named for
                // review when it came after the oldest snapshot: a dropper
                // planted a day before the job that starts it looks the same.
                let there_before = f.started
                    && good.is_none()
                    && k > 0
                    && snaps
                        .lookup(k - 1, &e.path)
                        .is_some_and(|o| o.kind == FileKind::File);
                // One there since the oldest snapshot kept is the system's; one
                // that came later, maybe a dropper, is named for review.
                let since_oldest = there_before && snaps.lookup(0, &e.path).is_some();
                let (action, index, entry, reason) = match good {
                    Some((g, old)) => (
                        Action::Restored,
                        g,
                        old,
                        format!("{found}; last version before it"),
                    ),
                    None if since_oldest => (
                        Action::Kept,
                        src,
                        e.clone(),
                        format!("{found}; there the same since the oldest snapshot: kept"),
                    ),
                    None if there_before => (
                        Action::Kept,
                        src,
                        e.clone(),
                        format!(
                            "{found}; there the same before that job, but new since the oldest snapshot: kept, review it (a planted job's program may have been planted first)"
                        ),
                    ),
                    None if f.droppable => (
                        Action::Dropped,
                        src,
                        e.clone(),
                        format!("{found}; it did not exist before"),
                    ),
                    None if f.revert => (
                        Action::Kept,
                        src,
                        e.clone(),
                        format!("{found}; no earlier version differs: kept, review it by hand"),
                    ),
                    None => (
                        Action::Kept,
                        src,
                        e.clone(),
                        format!("{found}; kept, since it holds other data: review it by hand"),
                    ),
                };
                (
                    action,
                    index,
                    entry,
                    reason,
                    action == Action::Kept && !since_oldest,
                )
            };
            let (id, time) = snaps.label(index);
            provenance.push(Provenance {
                review,
                path: shown,
                action,
                snapshot: (action != Action::Dropped).then_some(id),
                snapshot_time: (action != Action::Dropped).then_some(time),
                reason,
            });
            if action != Action::Dropped {
                picks.insert(
                    e.path.clone(),
                    Pick {
                        index,
                        entry,
                        absent,
                    },
                );
            }
            continue;
        }
        let Some(h) = hurt.get(&shown).filter(|_| e.kind == FileKind::File) else {
            if e.kind == FileKind::File
                && clean.is_some()
                && !before.contains_key(&e.path)
                && let Some((original, ext)) = copy_of(&e.path)
            {
                provenance.push(Provenance::dropped(
                    shown,
                    format!(
                        "new since the clean point, named as {} plus .{ext}, the extension the attack gave the files it encrypted",
                        String::from_utf8_lossy(&original)
                    ),
                ));
                continue;
            }
            if e.kind == FileKind::Symlink {
                provenance.push(Provenance {
                    review: false,
                    path: shown.clone(),
                    action: Action::Kept,
                    snapshot: Some(latest_id.clone()),
                    snapshot_time: Some(latest_time.clone()),
                    reason: "a link: newest version".into(),
                });
            }
            if e.kind == FileKind::File {
                let untouched = if clean.is_none() || before.contains_key(&e.path) {
                    "untouched by the attack"
                } else {
                    "new since the clean point and not found damaged (review it)"
                };
                let base = shown.rsplit('/').next().unwrap_or(&shown).to_lowercase();
                if untouched.starts_with("new") && note_names.contains(&base) {
                    notes.push(format!(
                        "{shown} is new since the clean point and named as the ransom notes the attack left: kept (its text did not read as one), review it"
                    ));
                }
                let (action, reason) = match &hidden_why {
                    Some(why) => (
                        Action::Restored,
                        format!("{why}; {untouched}: newest version where it reads"),
                    ),
                    None if newest_unreadable => (
                        Action::Kept,
                        format!(
                            "{untouched}: newest readable version (newer snapshots cannot be read)"
                        ),
                    ),
                    None => (Action::Kept, format!("{untouched}: newest version")),
                };
                provenance.push(Provenance {
                    review: false,
                    path: shown,
                    action,
                    snapshot: Some(latest_id.clone()),
                    snapshot_time: Some(latest_time.clone()),
                    reason,
                });
            }
            picks.insert(
                e.path.clone(),
                Pick {
                    index: src,
                    entry: e,
                    absent,
                },
            );
            continue;
        };
        let created =
            matches!(h.damage, Damage::RansomNote | Damage::EncryptedNew) || h.origin.is_some();
        if created {
            provenance.push(Provenance::dropped(
                shown,
                format!(
                    "{} ({}){}",
                    h.damage.describe(),
                    h.detail,
                    h.origin
                        .as_deref()
                        .map(|o| format!("; replaced {o}"))
                        .unwrap_or_default()
                ),
            ));
            continue;
        }
        // Damaged in place: its version from the snapshot before the damage.
        let good = h
            .base
            .and_then(|g| snaps.lookup(g, &e.path).map(|x| (g, x)));
        match good {
            Some((g, old)) if old.kind == FileKind::File => {
                let (id, time) = snaps.label(g);
                provenance.push(Provenance {
                    review: false,
                    path: shown,
                    action: Action::Restored,
                    snapshot: Some(id),
                    snapshot_time: Some(time),
                    reason: format!(
                        "{} in {} ({}); last good version",
                        h.damage.describe(),
                        t.entries[h.index].snapshot.id.short(),
                        h.detail
                    ),
                });
                picks.insert(
                    e.path.clone(),
                    Pick {
                        index: g,
                        entry: old,
                        absent,
                    },
                );
            }
            _ => {
                provenance.push(Provenance {
                    review: false,
                    path: shown,
                    action: Action::Kept,
                    snapshot: Some(latest_id.clone()),
                    snapshot_time: Some(latest_time.clone()),
                    reason: format!(
                        "{} but no earlier version exists; kept as is",
                        h.damage.describe()
                    ),
                });
                picks.insert(
                    e.path.clone(),
                    Pick {
                        index: src,
                        entry: e,
                        absent,
                    },
                );
            }
        }
    }
    // Originals the attack replaced (encrypted copies, renames) and deleted.
    for (path, h) in &hurt {
        let Some(origin) = &h.origin else { continue };
        let o = rel(origin);
        let Some(g) = h.base else {
            continue;
        };
        if let Some(now) = picks.get(&o) {
            // Made again at its old place since the attack (by a user, a
            // copy from a colleague's mail): that newest file stays, and
            // the version the attack took comes back beside it, unless
            // it holds the same bytes. Neither is lost.
            let now = (now.index, now.entry.clone());
            if let Some((side, old)) = beside_the_new_one(snaps, g, &o, now, &picks, &in_latest) {
                let (id, time) = snaps.label(g);
                provenance.push(Provenance {
                    review: false,
                    path: cairn_guest::model::display(&side),
                    action: Action::Restored,
                    snapshot: Some(id),
                    snapshot_time: Some(time),
                    reason: format!(
                        "{origin} as it was before the attack replaced it by {path} ({}) in {}; a newer {origin} was made since and keeps its place",
                        h.damage.describe(),
                        t.entries[h.index].snapshot.id.short()
                    ),
                });
                picks.insert(
                    side,
                    Pick {
                        index: g,
                        entry: old,
                        absent: true,
                    },
                );
            }
            continue;
        }
        if let Some(old) = snaps.lookup(g, &o).filter(|x| x.kind == FileKind::File) {
            let (id, time) = snaps.label(g);
            provenance.push(Provenance {
                review: false,
                path: origin.clone(),
                action: Action::Restored,
                snapshot: Some(id),
                snapshot_time: Some(time),
                reason: format!(
                    "replaced by {path} ({}) in {}",
                    h.damage.describe(),
                    t.entries[h.index].snapshot.id.short()
                ),
            });
            // Its folders come from the latest snapshot when they still
            // exist; otherwise they are created.
            let absent = !in_latest.contains(&o);
            picks.insert(
                o,
                Pick {
                    index: g,
                    entry: old,
                    absent,
                },
            );
        }
    }
    // Where each file the result keeps from the starting snapshot is, by
    // what stays with a file that moves: its content (directory sources)
    // or its file id, size and time (a guest's rename keeps them). A file
    // the clean point had that is now elsewhere was moved, not lost —
    // when that identity is one file's alone on both sides (two copies of
    // one PDF, two names of one inode, tell nothing of a move), and the
    // file is kept (an attack's `.locked` copy, dropped, is no new place).
    let kept: Vec<(MovedKey, Vec<u8>)> = picks
        .iter()
        .filter(|(_, p)| p.index == latest && p.entry.kind == FileKind::File)
        .filter_map(|(path, p)| Some((moved_key(&p.entry)?, path.clone())))
        .collect();
    let before_keys = counted(before.values().filter_map(moved_key));
    let kept_keys = counted(kept.iter().map(|(k, _)| k.clone()));
    let now_at: HashMap<MovedKey, Vec<u8>> = kept
        .into_iter()
        .filter(|(k, _)| before_keys.get(k) == Some(&1) && kept_keys.get(k) == Some(&1))
        .collect();
    // Files deleted since the clean point (a wiper's or an attacker's
    // `rm`, or ordinary work: nothing is lost by bringing them back).
    if let Some(c) = clean {
        let (id, time) = snaps.label(c);
        for (path, old) in before {
            if in_latest.contains(&path) || picks.contains_key(&path) {
                continue;
            }
            if let Some((k, f)) = flag_of(old.display_path().as_str()) {
                // Verification flagged what was there: it stays gone.
                let (first, _) = snaps.label(k);
                provenance.push(Provenance::dropped(
                    old.display_path(),
                    format!(
                        "deleted since the clean point; flagged by verification in {} ({}): not brought back",
                        &first[..first.len().min(8)],
                        f.why
                    ),
                ));
                continue;
            }
            if let Some(to) = moved_key(&old).and_then(|k| now_at.get(&k)) {
                // Renamed or moved since (a user's tidying): it is there
                // under its new name; its old one is not made again.
                provenance.push(Provenance::dropped(
                    old.display_path(),
                    format!(
                        "moved to {} since the clean point (the same file): not brought back under its old name",
                        cairn_guest::model::display(to)
                    ),
                ));
                continue;
            }
            let hidden = walked
                .unread
                .iter()
                .find(|u| path.starts_with(&u.path) && path.get(u.path.len()) == Some(&b'/'));
            let reason = match hidden {
                Some(u) => format!(
                    "its folder cannot be read in {} ({}); its version at the clean point {}",
                    t.entries[latest].snapshot.id.short(),
                    u.why,
                    t.entries[c].snapshot.id.short()
                ),
                None => format!(
                    "deleted since the clean point {}; its version there",
                    t.entries[c].snapshot.id.short()
                ),
            };
            provenance.push(Provenance {
                review: false,
                path: old.display_path(),
                action: Action::Restored,
                snapshot: Some(id.clone()),
                snapshot_time: Some(time.clone()),
                reason,
            });
            picks.insert(
                path,
                Pick {
                    index: c,
                    entry: old,
                    absent: true,
                },
            );
        }
    }
    folders_win(&mut picks, &mut provenance);
    provenance.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(Plan {
        picks,
        provenance,
        since: from,
        latest,
        notes,
        incomplete,
    })
}

/// A file or a link that stands where the plan fills a folder (an attack
/// replaced the folder with it, or a symlink out of it) is left out: the
/// folder and what it held come back, and the provenance says so.
fn folders_win(picks: &mut BTreeMap<Vec<u8>, Pick>, provenance: &mut Vec<Provenance>) {
    let blocking: Vec<Vec<u8>> = picks
        .iter()
        .filter(|(path, pick)| {
            let mut under = path.to_vec();
            under.push(b'/');
            pick.entry.kind != FileKind::Dir
                && picks
                    .range(under.clone()..)
                    .next()
                    .is_some_and(|(q, _)| q.starts_with(&under))
        })
        .map(|(path, _)| path.clone())
        .collect();
    if blocking.is_empty() {
        return;
    }
    let at: HashMap<String, usize> = provenance
        .iter()
        .enumerate()
        .map(|(k, f)| (f.path.clone(), k))
        .collect();
    for path in blocking {
        let pick = picks.remove(&path).expect("listed above");
        let shown = pick.entry.display_path();
        let why = "stands where a folder stood that the rollback brings back: left out";
        match at.get(&shown) {
            Some(&k) => {
                let f = &mut provenance[k];
                f.action = Action::Dropped;
                f.snapshot = None;
                f.snapshot_time = None;
                f.reason = format!("{}; {why}", f.reason);
            }
            None => provenance.push(Provenance::dropped(shown, why.into())),
        }
    }
}

/// What can be listed of snapshot `i`'s filesystem, and the folders that
/// could not be read.
fn walk(snaps: &mut Snapshots, i: usize) -> Result<cairn_guest::Walked> {
    cairn_guest::walk_readable_marking(snaps.get(i)?.fs.as_ref()).map_err(guest_error)
}

/// A guest's error as the rollback's: the vault's damage behind it is
/// said as damage (the rollback stops: `cairn verify` names it), not
/// taken for a filesystem that cannot be read.
fn guest_error(e: cairn_guest::GuestError) -> Error {
    match cairn_vault::error::damage_in(&e) {
        Some((name, reason)) => Error::damaged(
            name,
            format!("{reason} (the vault is damaged: `cairn verify --read-data` names what)"),
        ),
        None => Error::Invalid(e.to_string()),
    }
}

/// Earlier snapshots searched for a folder the starting snapshot could
/// not read, or for a version of a file it could not read.
const MAX_LOOKBACK: usize = 16;
/// Most entries brought back from unreadable folders in one rollback.
const MAX_UNREAD_ENTRIES: usize = 2_000_000;

/// The entries below the folders of `unread` that failed to read in
/// snapshot `latest`, each from the newest earlier snapshot (not before
/// `floor`, the clean point) that lists it, with why it is taken from
/// there. A folder that an earlier, readable snapshot does not have at all
/// is not looked for further back (a folder made anew and broken must not
/// revive one deleted long ago); folders skipped on purpose (loops,
/// cross-links) are not brought back. Bounded: [`MAX_LOOKBACK`] snapshots
/// per folder, [`MAX_UNREAD_ENTRIES`] entries in all (past them, a note
/// says so).
fn unread_folders(
    snaps: &mut Snapshots,
    latest: usize,
    floor: usize,
    unread: &[cairn_guest::Unread],
    notes: &mut Vec<String>,
    incomplete: &mut u64,
) -> Vec<(usize, FileEntry, Option<String>)> {
    let t = snaps.timeline;
    let short = |i: usize| t.entries[i].snapshot.id.short();
    let mut out = Vec::new();
    let mut done: std::collections::HashSet<(usize, u64)> = Default::default();
    for u in unread {
        if u.kind == cairn_guest::UnreadKind::TooDeep {
            // No walk goes deeper, at the clean point either.
            *incomplete += 1;
            notes.push(format!(
                "{}@{}: folder {}; what it holds is not in this rollback: copy it from `cairn mount` or a restore of the disk",
                t.name,
                short(latest),
                u.describe()
            ));
            continue;
        }
        if u.kind != cairn_guest::UnreadKind::Failed {
            notes.push(format!(
                "{}@{}: folder {}; files it held at the clean point come back from there, as deleted ones do",
                t.name,
                short(latest),
                u.describe()
            ));
            continue;
        }
        let mut found = None;
        for j in (floor..latest).rev().take(MAX_LOOKBACK) {
            let Ok(o) = snaps.get(j) else { continue };
            let dir = match o.fs.lookup(&u.path) {
                Ok(d) => d,
                // Not there in a snapshot that reads: made anew since.
                Err(cairn_guest::GuestError::NotFound(_)) => break,
                Err(_) => continue,
            };
            if dir.kind != FileKind::Dir {
                break;
            }
            if let Some(id) = dir.file_id
                && !done.insert((j, id))
            {
                break;
            }
            if let Ok((below, _)) = cairn_guest::walk_under_marking(o.fs.as_ref(), &dir)
                && o.fs.read_dir(&u.path).is_ok()
            {
                found = Some((j, below));
                break;
            }
        }
        let Some((j, below)) = found else {
            notes.push(format!(
                "{}@{}: folder {}; no earlier snapshot since the clean point lists it: files it held at the clean point come back from there, as deleted ones do",
                t.name,
                short(latest),
                u.describe()
            ));
            continue;
        };
        if out.len() + below.len() > MAX_UNREAD_ENTRIES {
            *incomplete += 1;
            notes.push(format!(
                "{}@{}: folder {}; more entries below unreadable folders than one rollback brings back from earlier snapshots: not brought back",
                t.name,
                short(latest),
                u.describe()
            ));
            continue;
        }
        notes.push(format!(
            "{}@{}: folder {}; what it held comes from {}, the newest snapshot that lists it",
            t.name,
            short(latest),
            u.describe(),
            short(j)
        ));
        let why = format!("its folder cannot be read in {} ({})", short(latest), u.why);
        out.extend(below.into_iter().map(|e| (j, e, Some(why.clone()))));
    }
    out
}

impl RollbackReport {
    /// File `path` written without its setid bits when `dropped`.
    fn setid(&mut self, path: String, dropped: bool) {
        crate::files::note_setid(
            &mut self.setid_dropped,
            &mut self.setid_dropped_paths,
            path,
            dropped,
        );
    }

    /// Entry `k` of the plan was not carried out: it stays as it is now,
    /// and its provenance says so (the counts follow with `recount`).
    fn left_alone(&mut self, k: usize, why: String) {
        if let Some(f) = self.files.get_mut(k) {
            f.action = Action::Kept;
            f.snapshot = None;
            f.snapshot_time = None;
            f.reason = why.clone();
        }
        self.skipped.push(why);
    }

    /// The plan for `path` was not carried out (`failed`: on an error):
    /// its provenance, when it has one, says so (the counts follow with
    /// `recount`).
    fn not_done(&mut self, path: &str, why: String, failed: bool) {
        // Provenance is sorted by path (see `plan`).
        match self.files.binary_search_by(|f| f.path.as_str().cmp(path)) {
            Ok(k) if failed => self.failed_on(k, why),
            Ok(k) => self.left_alone(k, why),
            Err(_) => {
                self.failed += failed as u64;
                self.skipped.push(why);
            }
        }
    }

    /// A file the rollback into a new folder could not write: absent
    /// there, which its provenance says (not "kept").
    fn missing(&mut self, path: &str, why: String) {
        self.failed += 1;
        if let Ok(k) = self.files.binary_search_by(|f| f.path.as_str().cmp(path)) {
            let f = &mut self.files[k];
            f.action = Action::Missing;
            f.snapshot = None;
            f.snapshot_time = None;
            f.reason = why.clone();
        }
        self.skipped.push(why);
    }

    /// A file that could not be read where the plan took it from, written
    /// from snapshot `id` (taken at `time`) instead.
    fn taken_from_earlier(&mut self, path: &str, id: String, time: String, why: String) {
        if let Ok(k) = self.files.binary_search_by(|f| f.path.as_str().cmp(path)) {
            let f = &mut self.files[k];
            f.action = Action::Restored;
            f.snapshot = Some(id);
            f.snapshot_time = Some(time);
            f.reason = why;
        }
    }

    /// [`left_alone`](Self::left_alone), because carrying it out failed.
    fn failed_on(&mut self, k: usize, why: String) {
        self.failed += 1;
        self.left_alone(k, why);
    }

    /// The counts, from what each file's provenance says.
    fn recount(&mut self) {
        let n = |a: Action| self.files.iter().filter(|f| f.action == a).count() as u64;
        (self.kept, self.restored, self.dropped) =
            (n(Action::Kept), n(Action::Restored), n(Action::Dropped));
    }
}

fn report_for(t: &Timeline, plan: &Plan, dry_run: bool) -> RollbackReport {
    let mut r = RollbackReport {
        name: t.name.clone(),
        latest: t
            .entries
            .get(plan.latest)
            .map(|e| e.snapshot.id.0.clone())
            .unwrap_or_default(),
        notes: plan.notes.clone(),
        incomplete: plan.incomplete,
        since: plan
            .since
            .and_then(|i| t.entries.get(i))
            .map(|e| e.snapshot.id.0.clone()),
        dry_run,
        ..Default::default()
    };
    r.files = plan.provenance.clone();
    r.recount();
    r
}

/// Rolls `name` back into the new or empty directory `to`.
pub fn rollback_to_dir(
    vault: &Arc<Vault>,
    timeline: &Timeline,
    to: &Path,
    since: Option<&SnapshotId>,
    partition: Option<u32>,
    flagged: &[Flagged],
    opts: RollbackOptions,
) -> Result<RollbackReport> {
    let mut snaps = Snapshots {
        vault,
        timeline,
        partition,
        open: HashMap::new(),
    };
    // (Before planning: a dry run says so too.)
    if to.exists()
        && fs::read_dir(to)
            .ctx(|| format!("reading {}", to.display()))?
            .next()
            .is_some()
    {
        return Err(Error::Invalid(format!(
            "{} is not empty; roll back into a new or empty directory",
            to.display()
        )));
    }
    let plan = plan(&mut snaps, since, flagged)?;
    let report = report_for(timeline, &plan, opts.dry_run);
    if opts.dry_run {
        return Ok(report);
    }
    // A new folder is built beside it and takes its name once whole; an
    // existing empty one (a mount point, say) is filled where it is.
    if to.exists() || to.file_name().is_none() {
        roll_into(&mut snaps, &plan, to, opts.keep_setid, report)
    } else {
        crate::tree::built_then_renamed(to, false, |work| {
            roll_into(&mut snaps, &plan, work, opts.keep_setid, report)
        })
    }
}

/// Writes file `path` into `dest` from the newest of the few snapshots
/// before `index` where it is a file that reads whole (back to where it
/// was not one): that snapshot, the bytes written and whether
/// setuid/setgid bits were left off.
fn earlier_readable(
    snaps: &mut Snapshots,
    index: usize,
    path: &[u8],
    dest: &Path,
    keep_setid: bool,
) -> Option<(usize, u64, bool)> {
    for j in (index.saturating_sub(MAX_LOOKBACK)..index).rev() {
        let Ok(o) = snaps.get(j) else {
            continue;
        };
        let e = match o.fs.lookup(path) {
            Ok(e) if e.kind == FileKind::File => e,
            // Before it was created (or while it was something else):
            // nothing older is this file.
            Ok(_) | Err(cairn_guest::GuestError::NotFound(_)) => return None,
            // Its folder damaged there: an earlier one may read.
            Err(_) => continue,
        };
        match write_file(o.fs.as_ref(), &e, dest, &|_| {}) {
            Ok(n) => {
                let dropped = set_meta(&e, dest, keep_setid);
                crate::files::set_xattrs(&o.fs.xattrs(&e), dest, keep_setid);
                return Some((j, n, dropped));
            }
            Err(_) => {
                let _ = fs::remove_file(dest);
            }
        }
    }
    None
}

/// A write that failed for want of room or of write access on the
/// target, which every later write would hit too.
fn target_gave_out(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(e.kind(), StorageFull | QuotaExceeded | ReadOnlyFilesystem)
}

/// Writes the plan's picks into the folder `to`.
fn roll_into(
    snaps: &mut Snapshots,
    plan: &Plan,
    to: &Path,
    keep_setid: bool,
    mut report: RollbackReport,
) -> Result<RollbackReport> {
    let mut dirs = Vec::new();
    let mut links = Vec::new();
    // Files written here, by (snapshot, path): a later name of a
    // hard-linked file whose first name was written from the same
    // snapshot becomes a link to it again, not a copy.
    let mut written: HashMap<(usize, Vec<u8>), PathBuf> = HashMap::new();
    for (path, pick) in &plan.picks {
        let Some(dest) = (!pick.entry.unsafe_name)
            .then(|| safe_join(to, path))
            .flatten()
        else {
            let shown = pick.entry.display_path();
            report.incomplete += 1;
            report.not_done(&shown, format!("{shown}: unsafe name"), false);
            continue;
        };
        // A guest's path may be longer than this system takes whole: left
        // out (and said), not the end of the rollback.
        // So may one of its names (an NTFS name of 255 characters is up to
        // 765 bytes of UTF-8).
        if dest.as_os_str().len() >= crate::tree::PATH_MAX
            || path.split(|&b| b == b'/').any(|n| n.len() > NAME_MAX)
        {
            let shown = pick.entry.display_path();
            report.incomplete += 1;
            report.not_done(
                &shown,
                format!(
                    "{shown}: its path or a name in it is longer than this system takes ({} bytes a path, {NAME_MAX} a name): not brought back; copy it from `cairn mount`",
                    crate::tree::PATH_MAX
                ),
                false,
            );
            continue;
        }
        match pick.entry.kind {
            FileKind::Dir => {
                fs::create_dir_all(&dest).ctx(|| format!("creating {}", dest.display()))?;
                let xattrs = snaps.get(pick.index)?.fs.xattrs(&pick.entry);
                dirs.push((pick.entry.clone(), dest, xattrs));
            }
            FileKind::File => {
                if let Some(parent) = dest.parent() {
                    fs::create_dir_all(parent).ctx(|| format!("creating {}", parent.display()))?;
                }
                let fs_ = snaps.get(pick.index)?;
                if let Some(first) = fs_.fs.first_name(&pick.entry)
                    && let Some(at) = written.get(&(pick.index, first))
                    && fs::hard_link(at, &dest).is_ok()
                {
                    continue;
                }
                match write_file(fs_.fs.as_ref(), &pick.entry, &dest, &|_| {}) {
                    Ok(n) => {
                        report.bytes_written += n;
                        // After the owner: a chown clears file capabilities.
                        report.setid(
                            pick.entry.display_path(),
                            set_meta(&pick.entry, &dest, keep_setid),
                        );
                        crate::files::set_xattrs(&fs_.fs.xattrs(&pick.entry), &dest, keep_setid);
                        written.insert((pick.index, pick.entry.path.clone()), dest.clone());
                    }
                    // The target full or read-only: nothing after this
                    // would be written either, and a tree with files
                    // missing must not take the name (as a restore stops).
                    Err(e) if target_gave_out(&e) => {
                        let _ = fs::remove_file(&dest);
                        return Err(e).ctx(|| format!("writing {}", dest.display()));
                    }
                    Err(e) if !crate::files::read_failed(&e) => {
                        if e.kind() != std::io::ErrorKind::AlreadyExists {
                            let _ = fs::remove_file(&dest);
                        }
                        let shown = pick.entry.display_path();
                        report.missing(&shown, format!("{shown}: not written: {e}"));
                    }
                    Err(e) => {
                        let _ = fs::remove_file(&dest);
                        let shown = pick.entry.display_path();
                        // Unreadable there (a damaged extent map, a block
                        // past the disk's end): the newest earlier version
                        // that reads comes back in its place.
                        match earlier_readable(
                            snaps,
                            pick.index,
                            &pick.entry.path,
                            &dest,
                            keep_setid,
                        ) {
                            Some((j, n, dropped)) => {
                                // Its other names become links to it.
                                written.insert((pick.index, pick.entry.path.clone()), dest.clone());
                                report.bytes_written += n;
                                report.setid(shown.clone(), dropped);
                                let (id, time) = snaps.label(j);
                                report.taken_from_earlier(
                                    &shown,
                                    id,
                                    time,
                                    format!(
                                        "unreadable in {} ({e}): the newest earlier version that reads",
                                        snaps.label(pick.index).0.get(..8).unwrap_or_default()
                                    ),
                                );
                            }
                            None => report.missing(&shown, format!("{shown}: not written: {e}")),
                        }
                    }
                }
            }
            FileKind::Symlink => links.push((pick.entry.clone(), dest)),
            FileKind::Other => report.skipped.push(format!(
                "{}: special file, not restored",
                pick.entry.display_path()
            )),
        }
    }
    for (e, dest) in links {
        let t = e.link_target.as_deref().unwrap_or_default();
        match crate::files::make_symlink(t, &dest) {
            Ok(()) => crate::files::link_meta(&e, &dest),
            Err(err) => {
                report.failed += 1;
                report.skipped.push(format!("{}: {err}", e.display_path()));
            }
        }
    }
    for (e, dest, xattrs) in dirs.iter().rev() {
        set_meta(e, dest, keep_setid);
        crate::files::set_xattrs(xattrs, dest, keep_setid);
    }
    report.recount();
    Ok(report)
}

/// Rolls a directory source back where it lives: only damaged files are
/// replaced (each atomically: written beside it, then renamed over it),
/// attack-created files are removed, deleted originals come back; nothing
/// else in `dir` is touched.
pub fn rollback_in_place(
    vault: &Arc<Vault>,
    timeline: &Timeline,
    dir: &Path,
    since: Option<&SnapshotId>,
    flagged: &[Flagged],
    opts: RollbackOptions,
) -> Result<RollbackReport> {
    if !dir.is_dir() {
        return Err(Error::Invalid(format!(
            "{} is not a directory",
            dir.display()
        )));
    }
    let mut snaps = Snapshots {
        vault,
        timeline,
        partition: None,
        open: HashMap::new(),
    };
    refuse_another_tree(timeline, dir)?;
    let plan = plan(&mut snaps, since, flagged)?;
    let mut report = report_for(timeline, &plan, opts.dry_run);
    let dry = opts.dry_run;
    let latest = timeline.entries.len() - 1;
    // A dry run looks at the tree as the real run does (what changed
    // since the last backup is left alone either way) and changes nothing.
    // Everything below happens inside directories opened from `dir`
    // without following links (see `beneath`): the attacker may still
    // be at work in the tree.
    let root = Dir::open(dir).ctx(|| format!("opening {}", dir.display()))?;
    // Files written here, by (snapshot, path), as (folder, name): a later
    // name of a hard-linked file whose first name was written from the
    // same snapshot becomes a link to it again, not a copy of its own.
    let mut written: HashMap<(usize, Vec<u8>), FolderAndName> = HashMap::new();
    for (k, p) in plan.provenance.iter().enumerate() {
        let path = rel(&p.path);
        if safe_join(dir, &path).is_none() {
            report.incomplete += 1;
            report.left_alone(k, format!("{}: unsafe name", p.path));
            continue;
        }
        let (parent, name) = match path.iter().rposition(|&b| b == b'/') {
            Some(i) => (&path[..i], &path[i + 1..]),
            None => (&path[..0], &path[..]),
        };
        match p.action {
            // (Missing is only ever set while writing into a new folder.)
            Action::Kept | Action::Missing => {}
            Action::Dropped => {
                let backed_up = snaps.lookup(latest, &path);
                let removed = root.beneath(parent, false).and_then(|d| {
                    Ok(match d.stat(name)? {
                        None => Gone::Already,
                        Some(st) if st.st_mode & libc::S_IFMT != libc::S_IFREG => Gone::NotAFile,
                        Some(st) if !as_backed_up(&st, backed_up.as_ref()) => Gone::Changed,
                        Some(_) => {
                            if !dry {
                                d.unlink(name)?;
                            }
                            Gone::Removed
                        }
                    })
                });
                match removed {
                    Ok(Gone::Removed | Gone::Already) => {}
                    Ok(Gone::NotAFile) => report
                        .left_alone(k, format!("{}: not a regular file now; left alone", p.path)),
                    Ok(Gone::Changed) => report.left_alone(k, changed_since(&p.path)),
                    Err(e) => report.failed_on(k, format!("{}: {e}", p.path)),
                }
            }
            Action::Restored => {
                let Some(pick) = plan.picks.get(&path) else {
                    continue;
                };
                // A path that cannot be handled safely is skipped and
                // reported; the rest of the rollback goes on. (A dry run
                // makes no folder: one missing holds nothing to look at.)
                let d = match root.beneath(parent, !dry) {
                    Err(e) if dry && e.kind() == std::io::ErrorKind::NotFound => continue,
                    Ok(d) => d,
                    Err(e) => {
                        report.failed_on(k, format!("{}: {e}", p.path));
                        continue;
                    }
                };
                match d.stat(name) {
                    Ok(Some(st)) if st.st_mode & libc::S_IFMT == libc::S_IFDIR => {
                        report.left_alone(
                            k,
                            format!("{}: a directory is there now; left alone", p.path),
                        );
                        continue;
                    }
                    // Already what the rollback writes (a run before this
                    // one restored it): nothing to do, nothing to say. (Not
                    // when it also looks like the damaged version backed
                    // up: ransomware may keep the size and set the time
                    // back, and then the content decides — rewritten.)
                    Ok(Some(st))
                        if st.st_mode & libc::S_IFMT == libc::S_IFREG
                            && as_backed_up(&st, Some(&pick.entry))
                            && !as_backed_up(&st, snaps.lookup(latest, &path).as_ref()) =>
                    {
                        continue;
                    }
                    Ok(Some(_)) if pick.absent => {
                        report.left_alone(
                            k,
                            format!("{}: made again since the last backup; left alone", p.path),
                        );
                        continue;
                    }
                    // What is there is not the damaged version the last
                    // snapshot holds: written since (by a user, or by the
                    // attack going on). Replacing it could lose work.
                    Ok(Some(st)) if !as_backed_up(&st, snaps.lookup(latest, &path).as_ref()) => {
                        report.left_alone(k, changed_since(&p.path));
                        continue;
                    }
                    _ => {}
                }
                if dry {
                    continue;
                }
                let mut tmp = b".".to_vec();
                tmp.extend_from_slice(name);
                tmp.extend_from_slice(b".cairn-rollback");
                let _ = d.unlink(&tmp);
                let fs_ = snaps.get(pick.index)?;
                if let Some(first) = fs_.fs.first_name(&pick.entry)
                    && let Some((at, first_leaf)) = written.get(&(pick.index, first))
                {
                    let linked = root.beneath(at, false).and_then(|from| {
                        d.link_from(&from, first_leaf, &tmp)?;
                        d.rename(&tmp, name)?;
                        d.sync()
                    });
                    if linked.is_ok() {
                        continue;
                    }
                    let _ = d.unlink(&tmp);
                }
                let outcome = d.create_new(&tmp).and_then(|f| {
                    let n = write_into(fs_.fs.as_ref(), &pick.entry, &f, &|_| {})?;
                    // Metadata through the file itself, never by name.
                    let dropped = set_meta_fd(&pick.entry, &f, opts.keep_setid);
                    // After the owner: a chown clears file capabilities.
                    let xattrs = fs_.fs.xattrs(&pick.entry);
                    crate::files::set_xattrs_fd(&xattrs, &f, opts.keep_setid);
                    f.sync_all()?;
                    d.rename(&tmp, name)?;
                    d.sync()?;
                    Ok((n, dropped))
                });
                match outcome {
                    Ok((n, dropped)) => {
                        report.bytes_written += n;
                        report.setid(pick.entry.display_path(), dropped);
                        written.insert(
                            (pick.index, pick.entry.path.clone()),
                            (parent.to_vec(), name.to_vec()),
                        );
                    }
                    // (Disk full, say): this file stays as it is, the
                    // rest is tried, and the provenance records which.
                    Err(e) => {
                        let _ = d.unlink(&tmp);
                        report.failed_on(k, format!("{}: restoring failed: {e}", p.path));
                    }
                }
            }
        }
    }
    report.recount();
    Ok(report)
}

/// Where a file was written in the tree: its folder (relative) and name.
type FolderAndName = (Vec<u8>, Vec<u8>);

/// What became of a file the rollback drops.
enum Gone {
    Removed,
    Already,
    NotAFile,
    Changed,
}

/// Whether a live file is the one the last snapshot holds at its path
/// (same size and modification time, as the backup itself decides).
fn as_backed_up(st: &libc::stat, backed_up: Option<&FileEntry>) -> bool {
    backed_up.is_some_and(|e| {
        e.size == st.st_size as u64 && e.mtime_ns == st.st_mtime * 1_000_000_000 + st.st_mtime_nsec
    })
}

fn changed_since(path: &str) -> String {
    format!(
        "{path}: changed since the last backup, so not the damaged version it holds; left alone (back it up and roll back again, or move it away)"
    )
}

/// Rolling back in place writes into the source the snapshots were taken
/// of, and nowhere else: a directory at another path is most likely
/// another tree (`--to-dir` makes a new one).
fn refuse_another_tree(timeline: &Timeline, dir: &Path) -> Result<()> {
    let Some(last) = timeline.entries.last() else {
        return Ok(());
    };
    let source = &last.snapshot.source.path;
    let real = std::fs::canonicalize(dir).ctx(|| format!("opening {}", dir.display()))?;
    // As recorded now, or as snapshots made before paths were escaped.
    if cairn_vault::text::path_text(&real) != *source && real.display().to_string() != *source {
        return Err(Error::Invalid(format!(
            "{} is not where {} was backed up from ({source}): roll back into a new folder with --to-dir, or give that path",
            dir.display(),
            last.snapshot.name
        )));
    }
    Ok(())
}

/// A path as it really is, for a target that may not exist yet: its
/// folder resolved (links, `.` and `..`) and its name kept.
fn resolved(path: &Path) -> Result<PathBuf> {
    if let Ok(real) = std::fs::canonicalize(path) {
        return Ok(real);
    }
    let folder = crate::parent_dir(path);
    let real = std::fs::canonicalize(folder).ctx(|| format!("opening {}", folder.display()))?;
    Ok(match path.file_name() {
        Some(name) if name != ".." => real.join(name),
        _ => real,
    })
}

/// Where a rollback of `target` writes its provenance: `given`, or beside
/// the target (`DIR.cairn-provenance.json`), never inside the tree being
/// repaired, which the attacker may still write to (a link planted there
/// under the manifest's name would have the write land anywhere).
pub fn provenance_path(target: &Path, given: Option<&Path>) -> Result<PathBuf> {
    let target = resolved(target)?;
    let manifest = match given {
        Some(p) => resolved(p)?,
        None => {
            let name = target
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "rollback".into());
            target.with_file_name(format!("{name}.cairn-provenance.json"))
        }
    };
    if manifest.starts_with(&target) {
        return Err(Error::Invalid(format!(
            "the provenance manifest {} would be inside {}, the tree being rolled back: give --provenance a path outside it",
            manifest.display(),
            target.display()
        )));
    }
    let folder = crate::parent_dir(&manifest);
    if !folder.is_dir() {
        return Err(Error::Invalid(format!(
            "the provenance manifest {} cannot be written: {} is not a folder",
            manifest.display(),
            folder.display()
        )));
    }
    Ok(manifest)
}

/// Writes the provenance manifest whole or not at all: a new file of its
/// own (never opened through a link or over another file), synced, then
/// renamed over the name, which replaces a link there instead of
/// following it. A manifest an earlier rollback left under the name (a
/// regular file) is kept, renamed after the time it was written: it is
/// the record of what that rollback changed.
pub fn write_provenance(manifest: &Path, data: &[u8]) -> Result<()> {
    use std::io::Write;
    use std::os::unix::ffi::OsStrExt;
    let folder = crate::parent_dir(manifest);
    let name = manifest
        .file_name()
        .ok_or_else(|| Error::Invalid(format!("{} names no file", manifest.display())))?
        .as_bytes();
    let dir = Dir::open(folder).ctx(|| format!("opening {}", folder.display()))?;
    let mut tmp = name.to_vec();
    tmp.extend_from_slice(format!(".tmp-{}", std::process::id()).as_bytes());
    let tmp = [b".", &tmp[..]].concat();
    let _ = dir.unlink(&tmp);
    let earlier = std::fs::symlink_metadata(manifest)
        .ok()
        .filter(|m| m.file_type().is_file())
        .and_then(|m| m.modified().ok());
    let write = || -> std::io::Result<()> {
        let mut f = dir.create_new(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        if let Some(when) = earlier {
            // Never over another kept manifest (two rollbacks in one
            // second): the next free name.
            let stamp = chrono::DateTime::<chrono::Utc>::from(when).format("%Y%m%dT%H%M%SZ");
            let mut n = 0;
            loop {
                let tag = if n == 0 {
                    format!(".{stamp}")
                } else {
                    format!(".{stamp}-{n}")
                };
                let kept = match name.strip_suffix(b".json") {
                    Some(stem) => [stem, format!("{tag}.json").as_bytes()].concat(),
                    None => [name, tag.as_bytes()].concat(),
                };
                match dir.rename_new(name, &kept) {
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && n < 1000 => n += 1,
                    r => break r?,
                }
            }
        }
        dir.rename(&tmp, name)?;
        dir.sync()
    };
    write().map_err(|e| {
        let _ = dir.unlink(&tmp);
        Error::io(format!("writing {}", manifest.display()), e)
    })
}
