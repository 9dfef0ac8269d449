//! Backups may run side by side (they only add objects); forget and prune
//! remove objects, so they wait until no backup runs and keep backups out.

use crate::error::{IoContext, Result};
use std::fs::{File, OpenOptions};
use std::path::Path;

pub struct VaultLock {
    /// None: a vault on read-only storage, where nothing can be removed
    /// and so nothing needs keeping out.
    _file: Option<File>,
}

impl VaultLock {
    fn path(root: &Path) -> std::path::PathBuf {
        root.join("locks").join("vault.lock")
    }

    fn open(root: &Path) -> Result<File> {
        let p = Self::path(root);
        OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&p)
            .ctx(|| format!("opening lock {}", p.display()))
    }

    /// Held by writers that only add (backup) and by readers. On a
    /// read-only copy of a vault (a snapshot of its disk, a write-blocked
    /// mount) readers go on: the lock is taken through the file as it is,
    /// or not at all when there is none (no prune can run there either).
    pub fn shared(root: &Path) -> Result<Self> {
        let f = match Self::open(root) {
            Ok(f) => f,
            Err(crate::Error::Io { source, .. })
                if source.kind() == std::io::ErrorKind::ReadOnlyFilesystem =>
            {
                match File::open(Self::path(root)) {
                    Ok(f) => f,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        return Ok(VaultLock { _file: None });
                    }
                    Err(e) => return Err(crate::Error::io("opening the vault lock", e)),
                }
            }
            Err(e) => return Err(e),
        };
        f.lock_shared()
            .ctx(|| "waiting for the vault lock".into())?;
        Ok(VaultLock { _file: Some(f) })
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
        Ok(VaultLock { _file: Some(f) })
    }
}
