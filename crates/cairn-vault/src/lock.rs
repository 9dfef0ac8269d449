//! Backups may run side by side (they only add objects); forget and prune
//! remove objects, so they wait until no backup runs and keep backups out.

use crate::error::{IoContext, Result};
use std::fs::{File, OpenOptions};
use std::path::Path;

/// Whether another program holds a lock on `file`: QEMU locks the image
/// of a running guest (so does qemu-nbd) with open-file-description locks.
pub fn held_elsewhere(file: &File) -> bool {
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = libc::F_WRLCK as i16;
    fl.l_whence = libc::SEEK_SET as i16;
    let fd = std::os::fd::AsRawFd::as_raw_fd(file);
    // F_OFD_GETLK turns `fl` into the first conflicting lock, or F_UNLCK.
    let r = unsafe { libc::fcntl(fd, libc::F_OFD_GETLK, &mut fl) };
    r == 0 && fl.l_type != libc::F_UNLCK as i16
}

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

    /// Held by forget and prune. When something else holds the vault (an
    /// export runs until stopped), says what before waiting for it: a
    /// `forget --prune` from cron must not hang without a word.
    pub fn exclusive(root: &Path) -> Result<Self> {
        let f = Self::open(root)?;
        match f.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let held = holders(&f);
                tracing::warn!(
                    "waiting for the vault: {} {} it; forget and prune start when {} done",
                    if held.is_empty() {
                        "another process (a backup, restore, export or mount)".to_string()
                    } else {
                        held.join(", ")
                    },
                    if held.len() > 1 { "use" } else { "uses" },
                    if held.len() > 1 { "they are" } else { "it is" },
                );
                f.lock().ctx(|| "waiting for the vault lock".into())?;
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(crate::Error::io("taking the vault lock", e));
            }
        }
        Ok(VaultLock { _file: Some(f) })
    }
}

/// The processes holding a lock on `f`, as `pid 123 (cairn export web@-1)`,
/// from the kernel's table of locks (empty where it cannot be read).
fn holders(f: &File) -> Vec<String> {
    use std::os::unix::fs::MetadataExt;
    let Ok(m) = f.metadata() else {
        return Vec::new();
    };
    let dev = m.dev();
    // /proc/locks names a file as MAJOR:MINOR:INODE (hex major and minor).
    let (major, minor) = (libc::major(dev), libc::minor(dev));
    let me = format!("{major:02x}:{minor:02x}:{}", m.ino());
    let table = std::fs::read_to_string("/proc/locks").unwrap_or_default();
    let mut pids: Vec<u32> = table
        .lines()
        .filter_map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            // "1: FLOCK ADVISORY READ 1234 08:01:5678 0 EOF"; a waiter's
            // line ("1: -> FLOCK …") names one waiting, not a holder.
            if w.get(1) == Some(&"->") {
                return None;
            }
            (w.get(5) == Some(&me.as_str())).then(|| w.get(4)?.parse().ok())?
        })
        .filter(|&p| p != std::process::id())
        .collect();
    pids.sort_unstable();
    pids.dedup();
    pids.iter()
        .take(5)
        .map(|p| {
            let cmd = std::fs::read(format!("/proc/{p}/cmdline")).unwrap_or_default();
            let all: Vec<&[u8]> = cmd.split(|&b| b == 0).filter(|w| !w.is_empty()).collect();
            let words: Vec<String> = all
                .iter()
                .take(6)
                .enumerate()
                .map(|(i, w)| {
                    let w = String::from_utf8_lossy(w).into_owned();
                    // The program by its name, not its whole path.
                    match i {
                        0 => w.rsplit('/').next().unwrap_or(&w).to_string(),
                        _ => w,
                    }
                })
                .collect();
            let more = if all.len() > words.len() { " …" } else { "" };
            if words.is_empty() {
                format!("pid {p}")
            } else {
                format!("pid {p} ({}{more})", words.join(" "))
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whoever holds the vault is named (here `flock`, util-linux's, which
    /// takes the same kind of lock a backup or an export does).
    #[test]
    fn the_process_holding_the_vault_is_named() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("locks")).unwrap();
        let f = VaultLock::open(dir.path()).unwrap();
        assert!(holders(&f).is_empty());
        use std::os::unix::process::CommandExt;
        let mut child = std::process::Command::new("flock")
            .process_group(0)
            .arg("-s")
            .arg(VaultLock::path(dir.path()))
            .args(["sleep", "30"])
            .spawn()
            .unwrap();
        let mut named = Vec::new();
        for _ in 0..100 {
            named = holders(&f);
            if !named.is_empty() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        // flock and the sleep it starts.
        unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
        let _ = child.wait();
        assert_eq!(named.len(), 1, "{named:?}");
        assert!(
            named[0].starts_with(&format!("pid {} (flock -s ", child.id())),
            "{named:?}"
        );
    }
}
