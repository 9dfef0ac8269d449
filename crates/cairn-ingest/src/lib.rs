//! Cairn's backup pipeline: read a source once, chunk it, measure change
//! while the data is in memory, store only what the vault lacks, and
//! record a snapshot manifest last.

pub mod dir;
pub mod disk;
pub mod fuzzing;
pub mod qcow2;
pub mod source;
mod sparse_cdc;

use cairn_vault::error::{Error, Result};
use cairn_vault::lock::VaultLock;
use cairn_vault::snapshot::SourceInfo;
use cairn_vault::{Snapshot, SnapshotId, SourceKind, Vault};
use chrono::{DateTime, Utc};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// Progress of long work: bytes done of a total, readable from another
/// thread (the CLI draws a bar from it).
#[derive(Default)]
pub struct Progress {
    pub done: AtomicU64,
    pub total: AtomicU64,
    /// Bytes written, for work that compares more than it writes (a delta
    /// restore); shown beside the bar when not zero.
    pub written: AtomicU64,
}

impl Progress {
    pub fn add(&self, n: u64) {
        self.done.fetch_add(n, Ordering::Relaxed);
    }
    pub fn set_total(&self, n: u64) {
        self.total.store(n, Ordering::Relaxed);
    }
}

#[derive(Clone, Debug, Default)]
pub struct BackupOptions {
    pub name: String,
    /// The snapshot's time (default: now). Lets a test or an import
    /// record when the data is from.
    pub time: Option<DateTime<Utc>>,
    pub tags: Vec<String>,
}

pub struct BackupOutcome {
    pub snapshot: Snapshot,
    pub parent: Option<Snapshot>,
    /// Things skipped or odd, which did not stop the backup.
    pub warnings: Vec<String>,
}

pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

/// Backs up `source` (disk image, block device, qcow2 or directory) as a
/// new snapshot of `opts.name`. The parent is the latest snapshot of that
/// name and kind.
pub fn backup(
    vault: &Vault,
    source: &Path,
    opts: &BackupOptions,
    progress: &Progress,
) -> Result<BackupOutcome> {
    check_name(&opts.name)?;
    if vault.holds(source) {
        return Err(Error::Invalid(format!(
            "{} is inside the vault {}: back up the data, not the vault",
            source.display(),
            vault.root().display()
        )));
    }
    let src = source::open(source)
        .map_err(|e| Error::io(format!("cannot read source {}", source.display()), e))?;
    // An empty file is no disk (an export that failed, a copy not made
    // yet): a snapshot of it would read as a wiper's work.
    if let source::Source::Disk(d) = &src
        && d.size() == 0
    {
        return Err(Error::Invalid(format!(
            "{} is empty (0 bytes): no disk to back up",
            source.display()
        )));
    }
    let label = cairn_vault::text::path_text(
        &std::fs::canonicalize(source).unwrap_or_else(|_| source.to_path_buf()),
    );
    store(vault, src, &label, opts, None, progress)
}

/// Saves a snapshot's disk as seen through a recovery overlay as a new
/// snapshot that records which one it was derived from. Only chunks the
/// vault lacks are stored.
pub fn commit(
    vault: &Vault,
    disk: std::sync::Arc<dyn cairn_vault::BlockSource>,
    base: &Snapshot,
    opts: &BackupOptions,
    progress: &Progress,
) -> Result<BackupOutcome> {
    check_name(&opts.name)?;
    let reader = source::BlockSourceDisk {
        inner: disk,
        format: "overlay",
    };
    let label = format!("{}@{} + overlay", base.name, base.id.short());
    store(
        vault,
        source::Source::Disk(Box::new(reader)),
        &label,
        opts,
        Some(base),
        progress,
    )
}

fn check_name(name: &str) -> Result<()> {
    cairn_vault::snapshot::check_name(name).map_err(Error::Invalid)
}

fn store(
    vault: &Vault,
    src: source::Source,
    label: &str,
    opts: &BackupOptions,
    derived_from: Option<&Snapshot>,
    progress: &Progress,
) -> Result<BackupOutcome> {
    let started = Instant::now();
    let _lock = VaultLock::shared(vault.root())?;
    vault.refresh_index()?;
    let kind = match src {
        source::Source::Disk(_) => SourceKind::Disk,
        source::Source::Directory(_) => SourceKind::Directory,
    };
    if let Some(t) = opts.time
        && t > chrono::Utc::now() + chrono::Duration::minutes(5)
    {
        // Keep policies count from the newest snapshot: one dated ahead
        // would be kept while real ones are forgotten.
        return Err(Error::Invalid(format!(
            "--time {} is in the future; a snapshot is dated no later than when it is taken",
            t.to_rfc3339()
        )));
    }
    let parent = match derived_from {
        Some(base) => Some(base.clone()),
        None => {
            let (all, _) = vault.snapshots()?;
            if let Some(other) = all
                .iter()
                .find(|s| s.name == opts.name && s.source.kind != kind)
            {
                // One name, one kind of source: a directory among a VM's
                // disk snapshots breaks `NAME@-1`, diffs and the timeline.
                let what = |k: SourceKind| match k {
                    SourceKind::Disk => "a disk",
                    SourceKind::Directory => "a directory",
                };
                return Err(Error::Invalid(format!(
                    "{:?} holds snapshots of {} ({}); back up {} under a name of its own",
                    opts.name,
                    what(other.source.kind),
                    other.source.path,
                    what(kind)
                )));
            }
            all.into_iter()
                .rev()
                .find(|s| s.name == opts.name && s.source.kind == kind)
        }
    };
    if let (Some(t), Some(p)) = (opts.time, &parent)
        && derived_from.is_none()
        && t <= p.time
    {
        // A snapshot's parent is the one before it in time, and insight
        // reads a name's snapshots in time order: one dated before the
        // newest would be compared with a later snapshot as its parent.
        return Err(Error::Invalid(format!(
            "--time {} is not after {}@{} ({}), the newest snapshot of {:?}: snapshots of a name are taken in time order",
            t.to_rfc3339(),
            p.name,
            p.id.short(),
            p.time.to_rfc3339(),
            opts.name
        )));
    }
    let mut warnings = Vec::new();

    let mut root_meta = None;
    let (content, mut metrics, format, size, until) = match src {
        source::Source::Disk(reader) => {
            let parent_map = match &parent {
                Some(p) => vault.read_disk_map(p).ok(),
                None => None,
            };
            if let Some(m) = &parent_map {
                // Behind a server: learn which of the parent's chunks the
                // vault still has, so unchanged ones are not offered again.
                vault.learn_present(m.chunks.iter().flatten().copied())?;
            }
            if reader.in_use() {
                warnings.push(format!(
                    "{label} is in use: another program (a running VM, qemu-nbd) holds a lock on it, so the snapshot is what a power cut would leave (crash-consistent); back up a VM or LVM snapshot for a consistent one"
                ));
            }
            let before = reader.changed_at();
            let (map, metrics) =
                disk::ingest(vault, reader.as_ref(), parent_map.as_ref(), progress)?;
            if before.is_some() && reader.changed_at() != before {
                warnings.push(format!(
                    "{label} was written to during the backup: the snapshot may mix blocks from before and after (crash-inconsistent); back up a stable copy (a VM or LVM snapshot) for a consistent one"
                ));
            }
            let now = reader
                .current_size()
                .map_err(|e| Error::io(format!("re-reading the size of {label}"), e))?;
            if now != map.size {
                return Err(Error::Invalid(format!(
                    "{label} changed size during the backup ({} → {now} bytes); no snapshot was written. \
                     Back up a stable copy (a VM snapshot or an LVM snapshot) instead",
                    map.size
                )));
            }
            let content = vault.write_disk_map(&map)?;
            // The new snapshot's retention, counted from its end (the
            // server refuses a manifest retained shorter than from now):
            // what it uses is kept locked as long.
            let until = vault.retain_until_from_now();
            vault.lock_reused(map.chunks.iter().flatten().copied(), &content, until)?;
            (content, metrics, reader.format(), map.size, until)
        }
        source::Source::Directory(root) => {
            let parent_tree = match &parent {
                Some(p) => vault.read_tree(p).ok(),
                None => None,
            };
            if let Some(t) = &parent_tree {
                vault
                    .learn_present(t.entries.iter().flat_map(|e| e.chunks.iter().map(|c| c.id)))?;
            }
            // When the parent backup began reading: its manifest is written
            // at the end, after the measured duration.
            let began = parent.as_ref().map(|p| {
                let d = (p.metrics.duration_secs.max(0.0) * 1e9).ceil() as i64;
                p.written
                    .timestamp_nanos_opt()
                    .unwrap_or(i64::MIN)
                    .saturating_sub(d)
            });
            root_meta = dir::root_meta(&root);
            let (tree, metrics) = dir::ingest(
                vault,
                &root,
                parent_tree.as_ref().zip(began),
                progress,
                &mut warnings,
            )?;
            let size = metrics.logical_size;
            let content = vault.write_content(&tree)?;
            let chunks = tree
                .entries
                .iter()
                .flat_map(|e| e.chunks.iter().map(|c| c.id));
            let until = vault.retain_until_from_now();
            vault.lock_reused(chunks, &content, until)?;
            (content, metrics, "directory", size, until)
        }
    };
    let _ = size;
    metrics.duration_secs = started.elapsed().as_secs_f64();
    metrics.compression_ratio = if metrics.new_bytes_stored > 0 {
        metrics.new_bytes as f64 / metrics.new_bytes_stored as f64
    } else {
        1.0
    };
    let now = Utc::now();
    let snapshot = Snapshot {
        id: SnapshotId::generate()?,
        name: opts.name.clone(),
        time: opts.time.unwrap_or(now),
        parent: parent.as_ref().map(|p| p.id.clone()),
        source: SourceInfo {
            kind,
            format: format.to_string(),
            path: label.to_string(),
            host: hostname(),
            root: root_meta,
        },
        content,
        metrics,
        tags: opts.tags.clone(),
        retain_until: until,
        written: now,
        cairn_version: env!("CARGO_PKG_VERSION").to_string(),
        derived_from: derived_from.map(|b| b.id.clone()),
    };
    vault.write_snapshot(&snapshot)?;
    Ok(BackupOutcome {
        snapshot,
        parent,
        warnings,
    })
}
