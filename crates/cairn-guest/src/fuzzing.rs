//! What the fuzz targets and the regression tests run on arbitrary bytes:
//! every parser, every operation, with results thrown away. Only a panic,
//! a hang or unbounded memory counts as a failure.

use crate::io::MemDisk;
use cairn_vault::BlockSource;
use std::sync::Arc;

/// Reads the partition table of `data` as a whole disk.
pub fn partitions(data: &[u8]) {
    let disk: Arc<dyn BlockSource> = Arc::new(MemDisk(data.to_vec()));
    if let Ok(parts) = crate::partition::partitions(&disk) {
        let _ = crate::choose(&parts, None);
    }
}

/// Opens `data` as a partition of the given filesystem (through
/// `open_fs`, as the commands do), walks it, lists the root and reads the
/// start and end of the first files.
pub fn filesystem(kind: &str, data: &[u8]) {
    let disk: Arc<dyn BlockSource> = Arc::new(MemDisk(data.to_vec()));
    let part = crate::Partition {
        number: 1,
        start: 0,
        size: data.len() as u64,
        scheme: "none",
        type_name: String::new(),
        label: String::new(),
        filesystem: kind.to_string(),
        readable: true,
    };
    let Ok(fs) = crate::open_fs(disk, &part) else {
        return;
    };
    let _ = fs.read_dir(b"");
    let Ok(entries) = fs.walk() else { return };
    let mut buf = vec![0u8; 64 * 1024];
    for e in entries.iter().take(64) {
        let _ = fs.lookup(&e.path);
        let _ = fs.read_at(e, 0, &mut buf);
        let _ = fs.read_at(e, e.size.saturating_sub(10), &mut buf);
        // Named streams (NTFS): listed and read as a scan does.
        for (name, _) in fs.streams(e).unwrap_or_default().iter().take(4) {
            let _ = fs.read_stream(e, name, 64 * 1024);
        }
    }
}

/// For fuzz targets: a panic in Cairn's own code aborts (a finding), while
/// a panic inside a third-party reader unwinds to the guard in `open_fs`,
/// which turns it into an error as in production. Such dependency panics
/// are counted in `DEPENDENCY_PANICS` and listed in the project's notes.
pub fn abort_only_on_own_panics() {
    std::panic::set_hook(Box::new(|info| {
        let file = info
            .location()
            .map(|l| l.file().to_string())
            .unwrap_or_default();
        if file.contains(".cargo/registry") {
            DEPENDENCY_PANICS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return;
        }
        eprintln!("{info}");
        std::process::abort();
    }));
}

pub static DEPENDENCY_PANICS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// All parsers on one input.
pub fn everything(data: &[u8]) {
    partitions(data);
    for kind in ["ext4", "ntfs", "fat16"] {
        filesystem(kind, data);
    }
}
