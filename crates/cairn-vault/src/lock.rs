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

    /// True when forget or prune could start now: no backup, restore,
    /// export or other reader holds the lock (a server answers "busy"
    /// rather than waiting without end behind an export).
    pub fn is_free(root: &Path) -> Result<bool> {
        let f = Self::open(root)?;
        match f.try_lock() {
            Ok(()) => Ok(true),
            Err(std::fs::TryLockError::WouldBlock) => Ok(false),
            Err(std::fs::TryLockError::Error(e)) => {
                Err(crate::Error::io("trying the vault lock", e))
            }
        }
    }

    /// Held by forget and prune.
    pub fn exclusive(root: &Path) -> Result<Self> {
        let f = Self::open(root)?;
        f.lock().ctx(|| "waiting for the vault lock".into())?;
        Ok(VaultLock { _file: f })
    }
}
