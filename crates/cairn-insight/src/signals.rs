//! The facts about one snapshot that scoring uses: its ingest metrics and,
//! where its filesystem is readable, the file-level signals against its
//! parent. Facts do not depend on history, so they are computed once and
//! stored beside the snapshot.

use crate::files::{self, FileSignals, Side};
use cairn_guest::check::{DiskCheck, TreeCheck};
use cairn_guest::open::{GUEST_CACHE_CHUNKS, open_snapshot_with_source};
use cairn_guest::{FileEntry, Unread, UnreadKind};
use cairn_vault::BLOCK_SIZE;
use cairn_vault::{Snapshot, SnapshotId, Vault};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::path::Path;
use std::sync::Arc;

/// Bumped when the facts computed change meaning; records of another
/// version are computed again.
pub const SIGNALS_VERSION: u32 = 2;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Signals {
    pub version: u32,
    pub snapshot: SnapshotId,
    pub parent: Option<SnapshotId>,
    pub time: DateTime<Utc>,
    pub logical_size: u64,
    /// Bytes that differ from the parent (64 KiB grain).
    pub changed_bytes: u64,
    /// Changed bytes per hour since the parent.
    pub change_rate: Option<f64>,
    /// Mean entropy of the changed data, bits per byte (from ingest's
    /// 1-bit histogram, at bucket midpoints).
    pub entropy: f64,
    /// Share of changed bytes at 7 bits per byte or more.
    pub high_entropy_share: f64,
    pub compression_ratio: f64,
    /// Zero and hole bytes gained since the parent (negative: lost).
    pub zero_delta: i64,
    /// File-level signals, when both this snapshot's and its parent's
    /// filesystems could be read.
    pub files: Option<FileSignals>,
    /// Why this snapshot's files could not be read, if they could not.
    pub fs_error: Option<String>,
    /// Whether the parent's files could be read.
    pub parent_fs_readable: bool,
    /// Filesystems (or LUKS, swap…) the parent's partitions held that no
    /// longer show at all: "partition 2: xfs".
    #[serde(default)]
    pub lost_filesystems: Vec<String>,
    /// Folders whose files the parent listed (at that path, or before the
    /// folder was moved) that this snapshot does not list: they fail to
    /// read, or they are a loop or a hard link to another folder now. The
    /// rest of the filesystem is still compared; what lies below a folder
    /// that fails to read is left out on both sides.
    #[serde(default)]
    pub unread_folders: Vec<String>,
    /// Folders that fail to read and that the parent did not list at all.
    #[serde(default)]
    pub unread_new_folders: Vec<String>,
    /// Every folder of this snapshot not read, for or against the parent.
    #[serde(default)]
    pub unread_paths: Vec<String>,
    /// Some folders of this snapshot could not be read (those above, or
    /// ones that did not read in the parent either): the next snapshot is
    /// compared with the newest one read whole instead (see
    /// `crate::comparison_base`).
    #[serde(default)]
    pub partial_walk: bool,
    /// Seconds the file-level analysis took.
    pub analysis_secs: f64,
}

/// Most decoded bytes of the parent kept while a snapshot is compared
/// with it: enough for a day of scattered 1.5% changes on the benchmark's
/// 2 GiB disk (~670 chunks of 128 KiB) to decode each chunk once for both
/// the diff and the analysis; a day that changed more decodes some twice
/// rather than grow without bound.
const PARENT_CACHE_BYTES: usize = 96 << 20;

/// The source a disk snapshot was just made from, when it is a raw image
/// or block device (reads are checked block by block against the
/// snapshot, so a source that changed since costs nothing but speed).
fn source_file(snap: &Snapshot, source: Option<&Path>) -> Option<std::fs::File> {
    let path = source?;
    matches!(snap.source.format.as_str(), "raw" | "block-device")
        .then(|| std::fs::File::open(path).ok())
        .flatten()
}

/// What the parent's partitions held (by magic: a filesystem, LUKS, swap)
/// that `snap`'s no longer show: a wiper that overwrites a LUKS header or
/// an XFS superblock leaves nothing Cairn reads files from either way, so
/// only this tells that something was destroyed. (A partition formatted
/// anew with another filesystem shows that one instead.)
fn lost_filesystems(vault: &Arc<Vault>, parent: &Snapshot, snap: &Snapshot) -> Vec<String> {
    let parts = |s: &Snapshot| -> Option<Vec<cairn_guest::Partition>> {
        let disk: Arc<dyn cairn_vault::BlockSource> =
            Arc::new(cairn_vault::SnapshotDisk::open(vault.clone(), s, 16).ok()?);
        cairn_guest::partition::partitions(&disk).ok()
    };
    let (Some(before), Some(now)) = (parts(parent), parts(snap)) else {
        return Vec::new();
    };
    before
        .iter()
        .filter(|b| b.filesystem != "unknown")
        .filter(|b| {
            now.iter()
                .find(|n| n.number == b.number)
                .is_none_or(|n| n.filesystem == "unknown")
        })
        .map(|b| format!("partition {}: {}", b.number, b.filesystem))
        .collect()
}

/// Folders the new snapshot does not read, sorted by what the parent knew
/// of them, as display paths: (listed with files before — by path, or,
/// for one that fails to read, by file id when it was moved, or any new
/// one that fails to read on the day a folder with files vanished —;
/// failing to read and not known to the parent). A folder the parent
/// could not read either is neither: nothing changed.
fn unread_against_parent(
    old: &[FileEntry],
    old_unread: &[Unread],
    new: &[FileEntry],
    unread: &[Unread],
) -> (Vec<String>, Vec<String>) {
    if unread.is_empty() {
        return (Vec::new(), Vec::new());
    }
    // The parent's folders that held anything, by file id.
    let mut held: std::collections::HashSet<u64> = std::collections::HashSet::new();
    let by_path: std::collections::HashMap<&[u8], &FileEntry> =
        old.iter().map(|e| (e.path.as_slice(), e)).collect();
    for e in old {
        if let Some(slash) = e.path.iter().rposition(|&b| b == b'/')
            && let Some(id) = by_path.get(&e.path[..slash]).and_then(|d| d.file_id)
        {
            held.insert(id);
        }
    }
    let (mut listed, mut unknown) = (Vec::new(), Vec::new());
    for u in unread {
        let mut under = u.path.clone();
        under.push(b'/');
        // `old` is sorted by path: the first entry at or after the
        // folder's prefix tells whether it held anything there.
        let i = old.partition_point(|e| e.path < under);
        let same_path = old.get(i).is_some_and(|e| e.path.starts_with(&under));
        let id = new
            .binary_search_by(|e| e.path.as_slice().cmp(&u.path))
            .ok()
            .and_then(|k| new[k].file_id);
        let shown = cairn_guest::model::display(&u.path);
        if same_path || (u.kind == UnreadKind::Failed && id.is_some_and(|id| held.contains(&id))) {
            listed.push(shown);
        } else if u.kind == UnreadKind::Failed && !old_unread.iter().any(|o| o.path == u.path) {
            unknown.push(shown);
        }
    }
    // A folder that held files and is gone the day one that cannot be
    // read appears was most likely moved into it: the files are out of
    // sight as surely as in a folder that broke.
    let in_new = |path: &[u8]| {
        new.binary_search_by(|e| e.path.as_slice().cmp(path))
            .is_ok()
    };
    let vanished = !unknown.is_empty()
        && old.iter().any(|e| {
            e.kind == cairn_guest::FileKind::Dir
                && e.file_id.is_some_and(|id| held.contains(&id))
                && !in_new(&e.path)
        });
    if vanished {
        listed.append(&mut unknown);
    }
    (listed, unknown)
}

/// Computes the facts about `snap` against `parent` (normally its parent
/// in the vault; `None` for a first snapshot). `source`: where `snap` was
/// just read from, if known. Stores `snap`'s file list for the next
/// snapshot and uses the parent's stored list when there is one.
pub fn compute(
    vault: &Arc<Vault>,
    snap: &Snapshot,
    parent: Option<&Snapshot>,
    source: Option<&Path>,
) -> Signals {
    let started = std::time::Instant::now();
    let m = &snap.metrics;
    let hist = &m.entropy_histogram.0;
    let total: u64 = hist.iter().sum();
    let entropy = if total == 0 {
        0.0
    } else {
        hist.iter()
            .enumerate()
            .map(|(i, &b)| (i as f64 + 0.5) * b as f64)
            .sum::<f64>()
            / total as f64
    };
    let mut out = Signals {
        version: SIGNALS_VERSION,
        snapshot: snap.id.clone(),
        parent: parent.map(|p| p.id.clone()),
        time: snap.time,
        logical_size: m.logical_size,
        changed_bytes: m.changed_bytes,
        change_rate: snap.change_rate(parent.map(|p| p.time)),
        entropy,
        high_entropy_share: m.entropy_histogram.high_entropy_share(),
        compression_ratio: m.compression_ratio,
        // Bytes zeroed where data was: a disk grown (the new space reads
        // as zeros) zeroed nothing.
        zero_delta: parent
            .map(|p| {
                let grown = m.logical_size.saturating_sub(p.metrics.logical_size);
                m.zero_bytes as i64 - p.metrics.zero_bytes as i64 - grown as i64
            })
            .unwrap_or(0),
        files: None,
        fs_error: None,
        parent_fs_readable: false,
        lost_filesystems: parent
            .map(|p| lost_filesystems(vault, p, snap))
            .unwrap_or_default(),
        unread_folders: Vec::new(),
        unread_new_folders: Vec::new(),
        unread_paths: Vec::new(),
        partial_walk: false,
        analysis_secs: 0.0,
    };
    // The parent is opened first: this snapshot's files are read from the
    // same partition. Taking whatever partition reads best would compare
    // unrelated filesystems when the one that mattered was destroyed (the
    // EFI partition is readable still) and call the day clean.
    let old = parent.and_then(|p| {
        let changed_blocks = snap.metrics.changed_bytes.div_ceil(BLOCK_SIZE as u64) as usize;
        let most = PARENT_CACHE_BYTES / vault.config().disk_chunk_size.max(1) as usize;
        let cache = changed_blocks.clamp(GUEST_CACHE_CHUNKS, most.max(GUEST_CACHE_CHUNKS));
        open_snapshot_with_source(vault, p.clone(), None, None, cache).ok()
    });
    // This snapshot's files: opened and walked, or why not. A folder that
    // cannot be read (damaged, or crafted to stop the walk) leaves the
    // rest to compare: an attack must not hide files it encrypted behind
    // one broken directory.
    let opened = open_snapshot_with_source(
        vault,
        snap.clone(),
        old.as_ref().and_then(|o| o.partition),
        source_file(snap, source),
        GUEST_CACHE_CHUNKS,
    )
    .map_err(|e| e.to_string())
    .and_then(|o| {
        cairn_guest::readable_part(o.fs.as_ref())
            .map(|w| (o, w))
            .map_err(|e| e.to_string())
    });
    let (new, (new_entries, mut unread)) = match opened {
        Ok(x) => x,
        Err(e) => {
            out.fs_error = Some(e);
            out.parent_fs_readable = old.is_some();
            out.analysis_secs = started.elapsed().as_secs_f64();
            return out;
        }
    };
    // Folders deeper than any walk goes are cut the same way in every
    // snapshot: the comparison is whole without them (a scan names them).
    unread.retain(|u| u.kind != cairn_guest::UnreadKind::TooDeep);
    out.partial_walk = !unread.is_empty();
    out.unread_paths = unread
        .iter()
        .map(|u| cairn_guest::model::display(&u.path))
        .collect();
    tracing::debug!(
        secs = started.elapsed().as_secs_f64(),
        files = new_entries.len(),
        "walked"
    );
    // The list is stored for the next snapshot's diff on its own thread
    // while this snapshot is compared with its parent.
    std::thread::scope(|s| {
        // A list with folders missing is not stored: whoever reads the
        // snapshot next (the next diff, a scan) walks it and learns which.
        if unread.is_empty() {
            s.spawn(|| {
                let _ = crate::filelist::save(vault, &snap.id, &new_entries);
                tracing::debug!(secs = started.elapsed().as_secs_f64(), "list saved");
            });
        }
        let old_listed = old.as_ref().and_then(|o| {
            parent
                .and_then(|p| crate::filelist::load(vault, &p.id))
                .map(|e| (e, Vec::new()))
                .or_else(|| cairn_guest::readable_part(o.fs.as_ref()).ok())
        });
        out.parent_fs_readable = old_listed.is_some();
        let (old_entries, new_entries) = match &old_listed {
            Some((old_entries, old_unread)) => {
                (out.unread_folders, out.unread_new_folders) =
                    unread_against_parent(old_entries, old_unread, &new_entries, &unread);
                // What lies below a folder either side could not read is
                // unknown, not added or deleted: left out of the diff.
                let hidden = cairn_guest::failed_folders(old_unread.iter().chain(&unread));
                (
                    Some(cairn_guest::outside(old_entries, &hidden)),
                    cairn_guest::outside(&new_entries, &hidden),
                )
            }
            None => (None, Cow::Borrowed(new_entries.as_slice())),
        };
        tracing::debug!(secs = started.elapsed().as_secs_f64(), "parent listed");
        if let (Some(old), Some(old_entries)) = (old, old_entries) {
            let d = match (&old.disk, &new.disk) {
                (Some(od), Some(nd)) => cairn_guest::diff::diff(
                    &old_entries,
                    &new_entries,
                    &mut DiskCheck::new(old.fs.as_ref(), new.fs.as_ref(), od, nd)
                        .reading_new_through(new.reader.as_deref().unwrap_or(nd.as_ref())),
                ),
                _ => cairn_guest::diff::diff(&old_entries, &new_entries, &mut TreeCheck),
            };
            tracing::debug!(
                secs = started.elapsed().as_secs_f64(),
                old_blocks = old.disk.as_ref().map(|d| d.decoded_blocks()),
                "diffed"
            );
            let files_found = files::analyse(
                &Side {
                    fs: old.fs.as_ref(),
                    entries: &old_entries,
                    disk: old.disk.as_deref(),
                },
                &Side {
                    fs: new.fs.as_ref(),
                    entries: &new_entries,
                    disk: new.disk.as_deref(),
                },
                &d,
            );
            tracing::debug!(
                old_blocks = old.disk.as_ref().map(|d| d.decoded_blocks()),
                "parent's blocks decoded for the diff and the analysis"
            );
            out.files = Some(files_found);
        } else {
            out.files = Some(FileSignals {
                files: new_entries
                    .iter()
                    .filter(|e| e.kind == cairn_guest::FileKind::File)
                    .count() as u64,
                ..Default::default()
            });
        }
    });
    out.analysis_secs = started.elapsed().as_secs_f64();
    tracing::debug!(secs = out.analysis_secs, "analysed");
    out
}
