//! Where objects are stored. The vault speaks to storage only through
//! [`Backend`], so a local directory and an object store look the same.
//!
//! The contract: `put` is put-if-absent and atomic (a reader sees the whole
//! object or none of it, and an existing object is never replaced); nothing
//! else writes objects.

use crate::error::{IoContext, Result};
use lru::LruCache;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::num::NonZeroUsize;
use std::os::unix::fs::{FileExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

pub trait Backend: Send + Sync {
    /// Stores `data` under `name` unless an object of that name exists.
    /// Returns false when it already existed (content addressing makes
    /// that harmless: same name, same content).
    fn put(&self, name: &str, data: &[u8]) -> Result<bool>;
    fn get(&self, name: &str) -> Result<Vec<u8>>;
    fn get_range(&self, name: &str, offset: u64, len: usize) -> Result<Vec<u8>>;
    /// Names of the objects under `dir` (recursively), relative to the root.
    fn list(&self, dir: &str) -> Result<Vec<String>>;
    fn exists(&self, name: &str) -> Result<bool>;
    fn size(&self, name: &str) -> Result<u64>;
    /// When the object was written.
    fn modified(&self, name: &str) -> Result<std::time::SystemTime>;
    /// Removes an object. Callers check retention first; the local backend
    /// has no retention of its own.
    fn delete(&self, name: &str) -> Result<()>;
    fn describe(&self) -> String;
    /// Stores an empty marker that may be removed again (a pin): on
    /// object storage it carries no lock.
    fn put_marker(&self, name: &str) -> Result<bool> {
        self.put(name, b"")
    }
    /// Drops a local cached copy of `name`; true when there was one (the
    /// next read asks the store).
    fn evict(&self, _name: &str) -> bool {
        false
    }
    /// Reads go to the store, not a local cache, from now on; true when
    /// there was a cache to bypass.
    fn set_cache_bypass(&self, _on: bool) -> bool {
        false
    }
    /// The S3 backend behind this one, if it is one (for its lock settings).
    fn as_s3(&self) -> Option<&crate::s3::S3Backend> {
        None
    }
    /// Of `ids`, those the store lacks, when the store can say so without
    /// showing its index (a Cairn server); `None` for plain storage, where
    /// the vault's own index answers.
    fn missing_chunks(
        &self,
        _ids: &[crate::hash::ChunkId],
    ) -> Result<Option<Vec<crate::hash::ChunkId>>> {
        Ok(None)
    }
    /// True when chunk ids are negotiated with [`Backend::missing_chunks`].
    fn negotiates(&self) -> bool {
        false
    }
}

/// A vault in a local directory. Objects are written to `tmp/`, fsynced,
/// made read-only and linked into place (link fails if the name exists,
/// which gives put-if-absent), then the directory is fsynced.
pub struct LocalBackend {
    root: PathBuf,
    /// Objects opened for ranged reads, kept open: a restore or a scan
    /// reads thousands of chunks from a few dozen packs, and opening the
    /// pack for each cost a path walk per chunk. Objects never change once
    /// written, so a kept handle reads what a fresh one would.
    open: Mutex<LruCache<String, Arc<File>>>,
}

/// Objects kept open for ranged reads.
const OPEN_OBJECTS: usize = 64;

impl LocalBackend {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        LocalBackend {
            root: root.into(),
            open: Mutex::new(LruCache::new(
                NonZeroUsize::new(OPEN_OBJECTS).expect("nonzero"),
            )),
        }
    }

    /// `name`, opened once and kept.
    fn opened(&self, name: &str) -> Result<Arc<File>> {
        if let Some(f) = self.open.lock().unwrap().get(name) {
            return Ok(f.clone());
        }
        let f = Arc::new(File::open(self.path(name)?).ctx(|| format!("opening {name}"))?);
        self.open.lock().unwrap().put(name.to_string(), f.clone());
        Ok(f)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where object `name` lives. Names come from stored manifests and
    /// from agents' requests too: one that is not a plain relative path
    /// (`..`, `.`, an absolute path, an empty part) is refused, so no name
    /// reaches outside the vault.
    fn path(&self, name: &str) -> Result<PathBuf> {
        let plain = !name.is_empty()
            && !name.contains('\0')
            && name
                .split('/')
                .all(|part| !part.is_empty() && part != "." && part != "..");
        if !plain {
            return Err(crate::Error::Invalid(format!(
                "{name:?} is not an object name"
            )));
        }
        Ok(self.root.join(name))
    }

    /// Creates `dir` and any missing parents, and makes each new entry
    /// durable in its parent: an object whose directory vanished after a
    /// power cut would be lost although its own rename was synced.
    fn create_dirs(&self, dir: &Path) -> io::Result<()> {
        let mut missing = Vec::new();
        let mut d = dir;
        while !d.exists() {
            missing.push(d.to_path_buf());
            match d.parent() {
                Some(p) => d = p,
                None => break,
            }
        }
        fs::create_dir_all(dir)?;
        for m in missing.iter().rev() {
            if let Some(p) = m.parent() {
                sync_dir(p)?;
            }
        }
        Ok(())
    }

    fn tmp_path(&self) -> Result<PathBuf> {
        let r: [u8; 8] = crate::crypto::random_array()?;
        Ok(self
            .root
            .join("tmp")
            .join(format!("{}-{}", std::process::id(), hex::encode(r))))
    }

    /// Removes temporary files left by processes that no longer run (a
    /// backup killed mid-write leaves at most one).
    pub fn clean_stale_tmp(&self) {
        let Ok(rd) = fs::read_dir(self.root.join("tmp")) else {
            return;
        };
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let pid: Option<i32> = name.split('-').next().and_then(|p| p.parse().ok());
            if let Some(pid) = pid {
                // kill(pid, 0) fails with ESRCH when no such process exists.
                let alive = unsafe { libc::kill(pid, 0) } == 0
                    || io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH);
                if !alive {
                    let _ = fs::remove_file(e.path());
                }
            }
        }
    }
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

impl Backend for LocalBackend {
    fn put(&self, name: &str, data: &[u8]) -> Result<bool> {
        let dest = self.path(name)?;
        if dest.exists() {
            return Ok(false);
        }
        let parent = dest.parent().expect("object names have a parent");
        self.create_dirs(parent)
            .ctx(|| format!("creating {}", parent.display()))?;
        let tmp = self.tmp_path()?;
        let write = || -> io::Result<()> {
            if data.len() >= crate::direct::MIN_DIRECT {
                let (f, _) = crate::direct::write_new(&tmp, 0o444, data)?;
                return f.sync_all();
            }
            let mut f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o444)
                .open(&tmp)?;
            f.write_all(data)?;
            f.sync_all()
        };
        if let Err(e) = write() {
            let _ = fs::remove_file(&tmp);
            return Err(crate::Error::io(
                format!("writing {name} to {}", self.root.display()),
                e,
            ));
        }
        let linked = fs::hard_link(&tmp, &dest);
        let _ = fs::remove_file(&tmp);
        match linked {
            Ok(()) => {
                sync_dir(parent).ctx(|| format!("syncing {}", parent.display()))?;
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(crate::Error::io(format!("storing {name}"), e)),
        }
    }

    fn get(&self, name: &str) -> Result<Vec<u8>> {
        fs::read(self.path(name)?).ctx(|| format!("reading {name}"))
    }

    fn get_range(&self, name: &str, offset: u64, len: usize) -> Result<Vec<u8>> {
        let f = self.opened(name)?;
        // Nothing large is allocated for bytes the object does not have
        // (chunk reads, the common case, are far smaller: no stat for them).
        let size = if len > 16 << 20 {
            f.metadata().ctx(|| format!("stat {name}"))?.len()
        } else {
            u64::MAX
        };
        if offset > size || len as u64 > size - offset {
            return Err(crate::Error::io(
                format!("reading {len} bytes at {offset} of {name}"),
                std::io::Error::from(std::io::ErrorKind::UnexpectedEof),
            ));
        }
        let mut buf = vec![0u8; len];
        f.read_exact_at(&mut buf, offset)
            .ctx(|| format!("reading {len} bytes at {offset} of {name}"))?;
        Ok(buf)
    }

    fn list(&self, dir: &str) -> Result<Vec<String>> {
        let mut out = Vec::new();
        let base = self.path(dir)?;
        if !base.exists() {
            return Ok(out);
        }
        let mut stack = vec![base];
        while let Some(d) = stack.pop() {
            for e in fs::read_dir(&d).ctx(|| format!("listing {}", d.display()))? {
                let e = e.ctx(|| format!("listing {}", d.display()))?;
                let p = e.path();
                if e.file_type()
                    .ctx(|| format!("stat {}", p.display()))?
                    .is_dir()
                {
                    stack.push(p);
                } else if let Ok(rel) = p.strip_prefix(&self.root) {
                    out.push(rel.to_string_lossy().into_owned());
                }
            }
        }
        out.sort();
        Ok(out)
    }

    fn exists(&self, name: &str) -> Result<bool> {
        Ok(self.path(name)?.exists())
    }

    fn size(&self, name: &str) -> Result<u64> {
        Ok(fs::metadata(self.path(name)?)
            .ctx(|| format!("stat {name}"))?
            .len())
    }

    fn modified(&self, name: &str) -> Result<std::time::SystemTime> {
        fs::metadata(self.path(name)?)
            .and_then(|m| m.modified())
            .ctx(|| format!("stat {name}"))
    }

    fn delete(&self, name: &str) -> Result<()> {
        self.open.lock().unwrap().pop(name);
        let p = self.path(name)?;
        // Objects are read-only; the directory's permission governs unlink.
        match fs::remove_file(&p) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(crate::Error::io(format!("deleting {name}"), e)),
        }
    }

    fn describe(&self) -> String {
        self.root.display().to_string()
    }
}

/// Mutable markers (pins) are the one thing that may be removed and
/// re-created; they are still written atomically.
pub fn set_mode_readonly(path: &Path) -> io::Result<()> {
    fs::set_permissions(path, fs::Permissions::from_mode(0o444))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_leave_the_vault_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let vault = dir.path().join("v");
        fs::create_dir_all(vault.join("tmp")).unwrap();
        fs::write(dir.path().join("secret"), b"host file").unwrap();
        let b = LocalBackend::new(&vault);
        for bad in [
            "../secret",
            "maps/../../secret",
            "/etc/passwd",
            "",
            "a//b",
            "./x",
            "a/.",
        ] {
            assert!(b.get(bad).is_err(), "{bad:?} was read");
            assert!(b.exists(bad).is_err(), "{bad:?} was looked up");
            assert!(b.put(bad, b"x").is_err(), "{bad:?} was written");
        }
        assert!(b.put("maps/ab/cd", b"x").unwrap());
        assert_eq!(b.get("maps/ab/cd").unwrap(), b"x");
    }

    #[test]
    fn put_is_atomic_put_if_absent_and_read_only() {
        let d = tempfile::tempdir().unwrap();
        fs::create_dir_all(d.path().join("tmp")).unwrap();
        let b = LocalBackend::new(d.path());
        assert!(b.put("a/b/obj", b"one").unwrap());
        assert!(!b.put("a/b/obj", b"two").unwrap());
        assert_eq!(b.get("a/b/obj").unwrap(), b"one");
        assert_eq!(b.get_range("a/b/obj", 1, 2).unwrap(), b"ne");
        let mode = fs::metadata(d.path().join("a/b/obj"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o222, 0, "objects are written read-only");
        assert_eq!(b.list("a").unwrap(), vec!["a/b/obj".to_string()]);
        assert_eq!(fs::read_dir(d.path().join("tmp")).unwrap().count(), 0);
    }
}
