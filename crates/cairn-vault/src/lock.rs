//! Backups may run side by side (they only add objects); forget and prune
//! remove objects, so they wait until no backup runs and keep backups out.

use crate::error::{IoContext, Result};
use std::fs::{File, OpenOptions};
use std::path::Path;

pub struct VaultLock {
    _file: File,
}

impl VaultLock {
    fn open(root: &Path) -> Result<File> {
        let p = root.join("locks").join("vault.lock");
        OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&p)
            .ctx(|| format!("opening lock {}", p.display()))
    }

    /// Held by writers that only add (backup).
    pub fn shared(root: &Path) -> Result<Self> {
        let f = Self::open(root)?;
        f.lock_shared()
            .ctx(|| "waiting for the vault lock".into())?;
        Ok(VaultLock { _file: f })
    }

    /// Held by forget and prune.
    pub fn exclusive(root: &Path) -> Result<Self> {
        let f = Self::open(root)?;
        f.lock().ctx(|| "waiting for the vault lock".into())?;
        Ok(VaultLock { _file: f })
    }
}
