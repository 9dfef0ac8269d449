//! A local copy of a remote vault's small, immutable objects (indexes,
//! manifests, maps, insight and scan records, keys, config), so that
//! `snapshots`, `timeline` or `ls` read them from disk after the first
//! time instead of fetching every index from the bucket again. Objects
//! are write-once, so a cached copy never goes stale; sealed objects are
//! authenticated when opened, so a tampered copy reads as damage, and a
//! missing cache is simply rebuilt from the bucket. Listing and existence
//! are always asked of the store, so objects another machine pruned are
//! never taken for present.

use crate::backend::Backend;
use crate::error::{IoContext, Result};
use std::path::PathBuf;

/// Prefixes of objects worth keeping locally (packs stay remote).
const CACHED: &[&str] = &[
    "config",
    "keys/",
    "index/",
    "snapshots/",
    "maps/",
    "insight/",
    "scan/",
    // Notes of forgotten snapshots: read on every listing; only names
    // the store still lists are read, so a pruned note is never used.
    "forgotten/",
];

pub struct CachedBackend {
    inner: Box<dyn Backend>,
    dir: PathBuf,
    /// Set by verify: check the store itself.
    bypass: std::sync::atomic::AtomicBool,
}

impl CachedBackend {
    pub fn new(inner: Box<dyn Backend>, dir: PathBuf) -> Self {
        CachedBackend {
            inner,
            dir,
            bypass: Default::default(),
        }
    }

    fn local(&self, name: &str) -> Option<PathBuf> {
        (CACHED.iter().any(|p| name.starts_with(p)) && !name.contains(".."))
            .then(|| self.dir.join(name))
    }

    fn keep(&self, name: &str, data: &[u8]) {
        let Some(path) = self.local(name) else { return };
        let write = || -> std::io::Result<()> {
            let dir = path.parent().expect("under the cache dir");
            std::fs::create_dir_all(dir)?;
            // A name of its own per write: threads fetching indexes in
            // parallel would otherwise rename each other's bytes into place.
            let r: [u8; 8] = crate::crypto::random_array().map_err(std::io::Error::other)?;
            let tmp = dir.join(format!(".{}-{}.tmp", std::process::id(), hex::encode(r)));
            std::fs::write(&tmp, data)?;
            std::fs::rename(&tmp, &path)
        };
        // A cache that cannot be written only costs a fetch next time.
        if let Err(e) = write() {
            tracing::debug!("not caching {name}: {e}");
        }
    }
}

impl Backend for CachedBackend {
    fn put(&self, name: &str, data: &[u8]) -> Result<bool> {
        let stored = self.inner.put(name, data)?;
        if stored {
            self.keep(name, data);
        }
        Ok(stored)
    }

    fn put_marker(&self, name: &str) -> Result<bool> {
        self.inner.put_marker(name)
    }

    fn get(&self, name: &str) -> Result<Vec<u8>> {
        if self.bypass.load(std::sync::atomic::Ordering::Relaxed) {
            return self.inner.get(name);
        }
        if let Some(p) = self.local(name)
            && let Ok(data) = std::fs::read(&p)
        {
            return Ok(data);
        }
        let data = self.inner.get(name)?;
        self.keep(name, &data);
        Ok(data)
    }

    fn get_range(&self, name: &str, offset: u64, len: usize) -> Result<Vec<u8>> {
        self.inner.get_range(name, offset, len)
    }

    fn list(&self, dir: &str) -> Result<Vec<String>> {
        self.inner.list(dir)
    }

    /// Always asked of the store: another machine's prune may have
    /// removed an object this cache still holds, and a writer that
    /// believed the copy would skip storing it again.
    fn exists(&self, name: &str) -> Result<bool> {
        self.inner.exists(name)
    }

    fn size(&self, name: &str) -> Result<u64> {
        self.inner.size(name)
    }

    fn modified(&self, name: &str) -> Result<std::time::SystemTime> {
        self.inner.modified(name)
    }

    fn delete(&self, name: &str) -> Result<()> {
        self.inner.delete(name)?;
        if let Some(p) = self.local(name) {
            match std::fs::remove_file(&p) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    Err(e).ctx(|| format!("removing the cached {name}"))?
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn describe(&self) -> String {
        self.inner.describe()
    }

    fn as_s3(&self) -> Option<&crate::s3::S3Backend> {
        self.inner.as_s3()
    }

    fn evict(&self, name: &str) -> bool {
        self.local(name)
            .is_some_and(|p| std::fs::remove_file(p).is_ok())
    }

    fn set_cache_bypass(&self, on: bool) -> bool {
        self.bypass.store(on, std::sync::atomic::Ordering::Relaxed);
        true
    }
}
