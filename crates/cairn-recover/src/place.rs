//! The folder a restore's output is made in.

use cairn_vault::error::{IoContext, Result};
use std::path::Path;

/// The folder `path` is in (`.` for a bare file name).
pub fn parent_dir(path: &Path) -> &Path {
    path.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// Fsyncs the folder `path` is in, so that a name just given to it (a
/// rename into place) survives a crash too.
pub fn sync_parent(path: &Path) -> Result<()> {
    let dir = parent_dir(path);
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .ctx(|| format!("syncing {}", dir.display()))
}
