//! Opening a snapshot for looking at its files: a directory snapshot's
//! tree, or the chosen partition's filesystem on a disk snapshot.

use crate::error::{GuestError, Result};
use crate::model::Filesystem;
use crate::tree_fs::TreeFs;
use cairn_vault::source_backed::SourceBackedDisk;
use cairn_vault::{BlockSource, Snapshot, SnapshotDisk, SourceKind, Vault};
use std::sync::Arc;

/// Decoded chunks kept per open disk: filesystem metadata is read again
/// and again (64 MiB at the default chunk size).
pub const GUEST_CACHE_CHUNKS: usize = 256;

/// A snapshot opened for looking at files.
pub struct Opened {
    pub snapshot: Snapshot,
    pub fs: Box<dyn Filesystem>,
    /// The disk, for disk snapshots (diff checks block digests through it).
    pub disk: Option<Arc<SnapshotDisk>>,
    /// What `fs` reads the disk through: `disk`, or a source-backed view.
    pub reader: Option<Arc<dyn BlockSource>>,
    /// The partition `fs` is on (disk snapshots).
    pub partition: Option<u32>,
}

/// Opens `snapshot`'s files: its tree, or partition `partition` (default:
/// the largest readable one) of its disk.
pub fn open_snapshot(
    vault: &Arc<Vault>,
    snapshot: Snapshot,
    partition: Option<u32>,
) -> Result<Opened> {
    open_snapshot_with_source(vault, snapshot, partition, None, GUEST_CACHE_CHUNKS)
}

/// Blocks of the source taken per open disk when reading through it
/// (64 MiB).
const SOURCE_CACHE_BLOCKS: usize = 1024;

/// Like [`open_snapshot`]; for a disk snapshot, `source` (the raw image
/// or device it was just backed up from) is read wherever its 64 KiB
/// blocks still match the snapshot's digests, which is much cheaper than
/// decoding chunks from the vault. `cache_chunks` bounds the decoded
/// chunks kept ([`GUEST_CACHE_CHUNKS`] unless the caller knows better).
pub fn open_snapshot_with_source(
    vault: &Arc<Vault>,
    snapshot: Snapshot,
    partition: Option<u32>,
    source: Option<std::fs::File>,
    cache_chunks: usize,
) -> Result<Opened> {
    match snapshot.source.kind {
        SourceKind::Directory => {
            if partition.is_some() {
                return Err(GuestError::Invalid(format!(
                    "{}@{} is a directory snapshot: it has no partitions",
                    snapshot.name,
                    snapshot.id.short()
                )));
            }
            let tree = vault.read_tree(&snapshot)?;
            Ok(Opened {
                fs: Box::new(TreeFs::new(vault.clone(), tree)),
                snapshot,
                disk: None,
                reader: None,
                partition: None,
            })
        }
        SourceKind::Disk => {
            let disk = Arc::new(SnapshotDisk::open(vault.clone(), &snapshot, cache_chunks)?);
            let backing_up = source.is_some();
            let as_source: Arc<dyn BlockSource> = match source {
                Some(f) => Arc::new(SourceBackedDisk::new(f, disk.clone(), SOURCE_CACHE_BLOCKS)),
                None => disk.clone(),
            };
            let table = crate::partition::table(&as_source)?;
            // Said when the disk is backed up (its source read), where the
            // operator can still look at it; not at every later open.
            if backing_up {
                for w in &table.warnings {
                    tracing::warn!("{w}");
                }
            }
            let parts = table.parts;
            let p = crate::choose(&parts, partition)?;
            let fs = crate::open_fs(as_source.clone(), p)?;
            Ok(Opened {
                snapshot,
                fs,
                disk: Some(disk),
                reader: Some(as_source),
                partition: Some(p.number),
            })
        }
    }
}
