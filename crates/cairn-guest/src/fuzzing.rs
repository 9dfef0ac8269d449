//! What the fuzz targets and the regression tests run on arbitrary bytes:
//! every parser, every operation, with results thrown away. Only a panic,
//! a hang or unbounded memory counts as a failure.

use crate::io::{MemDisk, Slice};
use crate::model::Filesystem;
use cairn_vault::BlockSource;
use std::sync::Arc;

/// Reads the partition table of `data` as a whole disk.
pub fn partitions(data: &[u8]) {
    let disk: Arc<dyn BlockSource> = Arc::new(MemDisk(data.to_vec()));
    if let Ok(parts) = crate::partition::partitions(&disk) {
        let _ = crate::choose(&parts, None);
    }
}

/// Opens `data` as a partition of the given filesystem, walks it, lists
/// the root and reads the start and end of the first files.
pub fn filesystem(kind: &str, data: &[u8]) {
    let slice = Slice::new(Arc::new(MemDisk(data.to_vec())), 0, data.len() as u64);
    let fs: Box<dyn Filesystem> = match kind {
        "ext4" => match crate::ext4::Ext4::open(slice) {
            Ok(f) => Box::new(f),
            Err(_) => return,
        },
        "ntfs" => match crate::ntfs::NtfsFs::open(slice) {
            Ok(f) => Box::new(f),
            Err(_) => return,
        },
        "fat" => match crate::fat::Fat::open(slice) {
            Ok(f) => Box::new(f),
            Err(_) => return,
        },
        _ => panic!("unknown filesystem {kind}"),
    };
    let _ = fs.read_dir(b"");
    let Ok(entries) = fs.walk() else { return };
    let mut buf = vec![0u8; 64 * 1024];
    for e in entries.iter().take(64) {
        let _ = fs.lookup(&e.path);
        let _ = fs.read_at(e, 0, &mut buf);
        let _ = fs.read_at(e, e.size.saturating_sub(10), &mut buf);
    }
}

/// All parsers on one input.
pub fn everything(data: &[u8]) {
    partitions(data);
    for kind in ["ext4", "ntfs", "fat"] {
        filesystem(kind, data);
    }
}
