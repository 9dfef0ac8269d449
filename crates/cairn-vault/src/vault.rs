//! Opening, creating and reading a vault.
//!
//! Layout (every object but `config`, `keys/*` and `pins/*` is sealed):
//! ```text
//! config                  chunking, pack size, retention (JSON)
//! keys/<id>               master key wrapped by a passphrase (JSON)
//! packs/<xx>/<pack>       sealed chunks, concatenated
//! index/<pack>            where each chunk of that pack is
//! maps/<xx>/<object>      disk maps and trees, content-addressed
//! snapshots/<id>          manifests
//! pins/<id>               pinned snapshots (never forgotten)
//! locks/, tmp/            coordination and atomic writes
//! ```

use crate::backend::{Backend, LocalBackend};
use crate::codec;
use crate::crypto::{Cipher, KeyFile, MasterKey, random_array};
use crate::diskmap::DiskMap;
use crate::error::{Error, IoContext, Problem, Result};
use crate::hash::{ChunkId, Hasher};
use crate::index::{ChunkIndex, PackIndex, index_object, pack_object};
use crate::snapshot::{Snapshot, SnapshotId};
use crate::tree::Tree;
use chrono::{DateTime, Duration, Utc};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeSet, HashSet};
use std::path::{Path, PathBuf};
use std::sync::RwLock;

pub const FORMAT_VERSION: u32 = 1;
/// Objects larger than this are refused when read (a tree of a few million
/// files fits).
const MAX_OBJECT: usize = 1 << 30;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Config {
    pub version: u32,
    pub id: String,
    pub created: DateTime<Utc>,
    /// Fixed chunk size for disks (a multiple of 64 KiB).
    pub disk_chunk_size: u32,
    /// FastCDC bounds for files.
    pub cdc_min: u32,
    pub cdc_avg: u32,
    pub cdc_max: u32,
    pub pack_size: u32,
    pub compression_level: i32,
    /// How long every object is kept at least, from when it is written.
    pub retention_secs: u64,
    /// On object storage: every object carries an Object Lock retention
    /// (compliance mode) of `retention_secs` plus a safety margin.
    #[serde(default)]
    pub object_lock: bool,
    /// [`MasterKey::check`] of the vault's master key (vaults made before
    /// it was recorded have none, and take any key the password opens).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_check: Option<String>,
}

impl Config {
    /// What a vault's keys hold of its config (from `init` on): a digest,
    /// keyed with the master key, of every setting but `object_lock`
    /// (which a replica sets for its own storage, sharing the keys; on S3
    /// the bucket itself says whether objects are locked). A config whose
    /// retention or chunking was changed behind Cairn's back no longer
    /// matches, and opening the vault refuses it.
    pub fn binding(&self, master: &MasterKey) -> [u8; 32] {
        let settings = serde_json::to_vec(&(
            self.version,
            &self.id,
            self.created,
            (
                self.disk_chunk_size,
                self.cdc_min,
                self.cdc_avg,
                self.cdc_max,
            ),
            (self.pack_size, self.compression_level, self.retention_secs),
            &self.key_check,
        ))
        .expect("json");
        master.mac("cairn 2026 vault config binding", &settings)
    }
}

/// Why there is no vault at `l`: none was made there, or one was deleted
/// and the store keeps its versions (Object Lock: a delete only puts a
/// marker on top).
fn deleted_or_none(l: &crate::s3::S3Location) -> Result<String> {
    let url = l.url();
    Ok(if crate::s3::S3Client::new(l.clone())?.hidden("config")? {
        format!(
            "{url}: the vault was deleted (its objects are behind delete markers) but the store kept them: `cairn undelete --vault {url}` brings it back (do not init a new vault there)"
        )
    } else {
        format!(
            "{url}: not a Cairn vault (no config found); create one with `cairn init --vault {url}`"
        )
    })
}

/// S3 options for `init`.
#[derive(Clone, Debug, Default)]
pub struct S3InitOptions {
    /// Create the bucket (with Object Lock) if it does not exist.
    pub create_bucket: bool,
    /// Accept a bucket without versioning and Object Lock (objects are
    /// then not protected by the store).
    pub no_lock: bool,
}

/// Where a vault lives: a local directory, `s3://BUCKET/PREFIX`, or a
/// Cairn server (`cairn serve`) reached with a token.
pub enum Location {
    Local(PathBuf),
    S3(crate::s3::S3Location),
    Server(crate::remote::ServerLocation),
}

impl Location {
    pub fn parse(s: &str) -> Result<Location> {
        if s.starts_with("s3://") {
            Ok(Location::S3(crate::s3::S3Location::from_url(s)?))
        } else if s.get(..5).is_some_and(|p| p.eq_ignore_ascii_case("s3://")) {
            Err(Error::Invalid(format!(
                "{s}: an S3 vault is written s3://BUCKET/PREFIX, in lower case"
            )))
        } else if let Some((scheme, _)) = s.split_once("://")
            && !scheme.is_empty()
            && scheme
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'+')
        {
            // Not a folder named "http:" by accident.
            Err(Error::Invalid(format!(
                "{s}: a vault is a folder or s3://BUCKET/PREFIX; a Cairn server is reached with `cairn backup --server {s}` (or its console)"
            )))
        } else {
            Ok(Location::Local(PathBuf::from(s)))
        }
    }

    /// The local directory of the vault: the vault itself, or for a
    /// remote vault the per-machine state beside it (locks, caches), under
    /// `CAIRN_CACHE_DIR` or `~/.cache/cairn`: all of it can be rebuilt
    /// from the vault.
    pub fn local_dir(&self) -> PathBuf {
        self.beside(user_dir(
            "CAIRN_CACHE_DIR",
            "XDG_CACHE_HOME",
            ".cache",
            "/var/cache",
        ))
    }

    /// Where what cannot be rebuilt from the vault is kept on this machine
    /// (a server's tokens and audit log): the vault itself, or for a
    /// remote vault a folder under `CAIRN_STATE_DIR` or
    /// `~/.local/state/cairn`, not in a cache anyone may clear.
    ///
    /// An S3 vault's is named by its bucket and prefix alone: the same
    /// store reached by another name (an address for a host name, a proxy
    /// in front) keeps its server's tokens and audit log.
    pub fn state_dir(&self) -> PathBuf {
        let base = Self::state_base();
        match self {
            Location::S3(l) => base.join(format!("s3-{}-{}", l.bucket, tag(&l.url()))),
            _ => self.beside(base),
        }
    }

    /// Where earlier versions kept an S3 vault's state: named by the
    /// endpoint too (see [`Self::state_dir`]).
    pub fn endpoint_state_dir(&self) -> Option<PathBuf> {
        matches!(self, Location::S3(_)).then(|| self.beside(Self::state_base()))
    }

    fn state_base() -> PathBuf {
        user_dir(
            "CAIRN_STATE_DIR",
            "XDG_STATE_HOME",
            ".local/state",
            "/var/lib",
        )
    }

    /// The vault's own folder, or a remote vault's folder under `base`.
    fn beside(&self, base: PathBuf) -> PathBuf {
        match self {
            Location::Local(p) => p.clone(),
            Location::S3(l) => base.join(format!(
                "s3-{}-{}",
                l.bucket,
                tag(&format!("{}|{}", l.endpoint, l.url()))
            )),
            Location::Server(l) => base.join(format!("server-{}", tag(&l.url))),
        }
    }
}

/// A short name for `s` in a folder name.
fn tag(s: &str) -> String {
    hex::encode(&blake3::hash(s.as_bytes()).as_bytes()[..8])
}

/// `$VAR`, else `$XDG/cairn`, else `~/HOME_SUB/cairn`, else
/// `SYSTEM/cairn`.
fn user_dir(var: &str, xdg: &str, home_sub: &str, system: &str) -> PathBuf {
    std::env::var_os(var)
        .map(PathBuf::from)
        .or_else(|| std::env::var_os(xdg).map(|c| PathBuf::from(c).join("cairn")))
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(home_sub).join("cairn")))
        .unwrap_or_else(|| PathBuf::from(system).join("cairn"))
}

#[derive(Clone, Debug)]
pub struct InitOptions {
    pub disk_chunk_size: u32,
    pub pack_size: u32,
    pub compression_level: i32,
    pub retention_secs: u64,
}

impl Default for InitOptions {
    fn default() -> Self {
        InitOptions {
            // 128 KiB: a day's scattered 64 KiB changes rewrite half as
            // much as with 256 KiB chunks (on the benchmark guest the vault
            // after two days is 1% smaller and an incremental ~15% faster;
            // at 64 KiB full backups and restores got slower).
            disk_chunk_size: 128 * 1024,
            pack_size: 16 << 20,
            // Level 1: on the benchmark guest, level 3 stores 2% less for
            // 30% more CPU on a full backup.
            compression_level: 1,
            retention_secs: 30 * 86400,
        }
    }
}

/// The note left for a forgotten snapshot whose manifest is still locked.
pub fn forgotten_object(id: &SnapshotId) -> String {
    format!("forgotten/{}", id.0)
}

pub struct Vault {
    root: PathBuf,
    backend: Box<dyn Backend>,
    config: Config,
    cipher: Cipher,
    hasher: Hasher,
    index: RwLock<ChunkIndex>,
    /// Held while the index is reloaded and while one pack's index is
    /// added (see `load_index`).
    reloading: std::sync::Mutex<()>,
    /// Behind a Cairn server: chunks the server said it has (the index
    /// itself is not shown to agents).
    known: RwLock<std::collections::HashSet<ChunkId>>,
    /// Remote vaults: whole packs recently fetched (one request per pack
    /// instead of one per chunk). Each slot is filled by the first reader;
    /// others wanting the same pack wait for it.
    packs: std::sync::Mutex<lru::LruCache<String, PackSlot>>,
    /// On S3: write-once objects whose current version was not what Cairn
    /// wrote, read from the version below (see `original_version`).
    overwritten: std::sync::Mutex<std::collections::BTreeSet<String>>,
    /// Names looked for below and not found there: not asked again (each
    /// chunk of a pack would ask).
    no_original: std::sync::Mutex<std::collections::HashSet<String>>,
}

type PackSlot = std::sync::Arc<std::sync::Mutex<Option<std::sync::Arc<Vec<u8>>>>>;

/// Packs kept in memory for a remote vault (~16 MiB each).
const REMOTE_PACKS: usize = 6;

/// An object the vault refers to that the store does not have, or has
/// cut short, is damage (said by `verify`, exit 3), not a failure to reach
/// the store.
fn as_damage(name: &str, e: Error) -> Error {
    match &e {
        Error::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
            Error::damaged(name, "missing from the store")
        }
        Error::Io { source, .. } if source.kind() == std::io::ErrorKind::UnexpectedEof => {
            Error::damaged(name, format!("cut short ({source})"))
        }
        _ => e,
    }
}

const DIRS: &[&str] = &[
    "keys",
    "packs",
    "index",
    "maps",
    "snapshots",
    "pins",
    "locks",
    "tmp",
];

/// A new local vault gets a folder of its own: one that holds other
/// files (a typo for a data folder) is refused. What an interrupted init
/// left (the vault's own folders, without a config) may be reused, and so
/// may a fresh filesystem's `lost+found`.
fn refuse_foreign_entries(root: &Path) -> Result<()> {
    if root.exists() && !root.is_dir() {
        return Err(Error::Invalid(format!(
            "{} is a file; a vault is a folder (give a new or empty one)",
            root.display()
        )));
    }
    let Ok(entries) = std::fs::read_dir(root) else {
        return Ok(()); // missing: created below
    };
    let foreign: Vec<String> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !DIRS.contains(&n.as_str()) && n != "lost+found" && n != "cache")
        .collect();
    if let Some(first) = foreign.first() {
        return Err(Error::Invalid(format!(
            "{} is not empty (it holds {first:?}{}): a vault needs a new or empty folder of its own",
            root.display(),
            if foreign.len() > 1 {
                format!(" and {} more", foreign.len() - 1)
            } else {
                String::new()
            }
        )));
    }
    Ok(())
}

impl Vault {
    pub fn init(root: &Path, password: &[u8], opts: &InitOptions) -> Result<Vault> {
        Self::init_at(
            &Location::Local(root.into()),
            password,
            opts,
            &S3InitOptions::default(),
        )
    }

    /// Creates a vault at `loc`. On S3 the bucket must have versioning and
    /// Object Lock (or `s3.no_lock`), and every object is locked.
    pub fn init_at(
        loc: &Location,
        password: &[u8],
        opts: &InitOptions,
        s3: &S3InitOptions,
    ) -> Result<Vault> {
        let root = &loc.local_dir();
        if let Location::Local(_) = loc {
            if root.join("config").exists() {
                return Err(Error::AlreadyAVault { path: root.into() });
            }
            refuse_foreign_entries(root)?;
        }
        if opts.disk_chunk_size == 0
            || !(opts.disk_chunk_size as usize).is_multiple_of(crate::BLOCK_SIZE)
        {
            return Err(Error::Invalid(
                "the disk chunk size must be a positive multiple of 64 KiB".into(),
            ));
        }
        if password.is_empty() {
            return Err(Error::Invalid("refusing an empty password".into()));
        }
        let (backend, object_lock) = Self::prepare(loc, root, opts.retention_secs, s3)?;
        let master = MasterKey::generate()?;
        let config = Config {
            version: FORMAT_VERSION,
            id: hex::encode(random_array::<16>()?),
            created: Utc::now(),
            disk_chunk_size: opts.disk_chunk_size,
            cdc_min: 64 * 1024,
            cdc_avg: 256 * 1024,
            cdc_max: 1024 * 1024,
            pack_size: opts.pack_size,
            compression_level: opts.compression_level,
            retention_secs: opts.retention_secs,
            object_lock,
            key_check: Some(master.check()),
        };
        let key = KeyFile::wrap_bound(password, &master, config.binding(&master))?;
        let key_id = hex::encode(random_array::<16>()?);
        backend.put(
            &format!("keys/{key_id}"),
            &serde_json::to_vec_pretty(&key).expect("json"),
        )?;
        // The config goes last: a directory without it is not a vault, so a
        // failed init leaves nothing that looks like one.
        backend.put("config", &serde_json::to_vec_pretty(&config).expect("json"))?;
        Ok(Self::assemble(root, backend, config, master))
    }

    /// The storage for a new vault at `loc`, after S3's checks (bucket,
    /// versioning, Object Lock); whether its objects are locked.
    fn prepare(
        loc: &Location,
        root: &Path,
        retention_secs: u64,
        s3: &S3InitOptions,
    ) -> Result<(Box<dyn Backend>, bool)> {
        for d in DIRS {
            std::fs::create_dir_all(root.join(d))
                .ctx(|| format!("creating {}", root.join(d).display()))?;
        }
        let mut object_lock = false;
        let backend: Box<dyn Backend> = match loc {
            Location::Local(_) => Box::new(LocalBackend::new(root)),
            Location::Server(l) => {
                return Err(Error::Invalid(format!(
                    "{}: a vault is created where it is stored (on the server: `cairn init --vault DIR`, then `cairn serve`)",
                    l.url
                )));
            }
            Location::S3(l) => {
                let client = crate::s3::S3Client::new(l.clone())?;
                if s3.create_bucket {
                    client.create_bucket()?;
                }
                let (versioning, lock) = client.lock_status()?;
                let protected = versioning && lock;
                if !protected && !s3.no_lock {
                    return Err(Error::Invalid(format!(
                        "bucket {} has {}: objects could be changed or deleted; use a bucket created with Object Lock (--create-bucket does that), or pass --no-lock to accept it",
                        l.bucket,
                        if versioning {
                            "versioning but no Object Lock"
                        } else {
                            "no versioning and no Object Lock"
                        }
                    )));
                }
                object_lock = versioning && lock;
                let hidden = client.hidden("config")?;
                let b = crate::s3::S3Backend::new(client);
                if b.exists("config")? {
                    return Err(Error::Invalid(format!(
                        "{}: a vault already exists there",
                        l.url()
                    )));
                }
                if hidden {
                    return Err(Error::Invalid(format!(
                        "{}: a vault is there, deleted (its objects behind delete markers) but kept by the store: `cairn undelete --vault {}` brings it back; a new vault is not made over it",
                        l.url(),
                        l.url()
                    )));
                }
                if object_lock {
                    b.set_retention(retention_secs as i64 + crate::s3::lock_margin_secs());
                }
                Box::new(crate::cached::CachedBackend::new(
                    Box::new(b),
                    root.join("cache"),
                ))
            }
        };
        Ok((backend, object_lock))
    }

    /// Creates a replica of `src` at `loc`: the same vault id, keys and
    /// chunking (so chunks are copied as they are), its own Object Lock
    /// setting. Returns it opened.
    pub fn create_replica(
        src: &Vault,
        loc: &Location,
        password: &[u8],
        s3: &S3InitOptions,
    ) -> Result<Vault> {
        let root = &loc.local_dir();
        if let Location::Local(_) = loc {
            if root.join("config").exists() {
                return Err(Error::AlreadyAVault { path: root.into() });
            }
            refuse_foreign_entries(root)?;
        }
        let (backend, object_lock) = Self::prepare(loc, root, src.config.retention_secs, s3)?;
        for name in src.backend.list("keys")? {
            backend.put(&name, &src.backend.get(&name)?)?;
        }
        let config = Config {
            object_lock,
            ..src.config.clone()
        };
        backend.put("config", &serde_json::to_vec_pretty(&config).expect("json"))?;
        drop(backend);
        Self::open_at(loc, password)
    }

    /// Whether a vault exists at `loc`.
    pub fn exists_at(loc: &Location) -> Result<bool> {
        match loc {
            Location::Local(p) => Ok(p.join("config").is_file()),
            Location::S3(l) => {
                crate::s3::S3Backend::new(crate::s3::S3Client::new(l.clone())?).exists("config")
            }
            Location::Server(l) => crate::remote::RemoteBackend::new(l.clone())?.exists("config"),
        }
    }

    pub fn open(root: &Path, password: &[u8]) -> Result<Vault> {
        Self::open_at(&Location::Local(root.into()), password)
    }

    pub fn open_at(loc: &Location, password: &[u8]) -> Result<Vault> {
        let root = &loc.local_dir();
        let backend: Box<dyn Backend> = match loc {
            Location::Local(_) => {
                if !root.join("config").is_file() {
                    return Err(Error::NotAVault { path: root.into() });
                }
                let b = LocalBackend::new(root);
                b.clean_stale_tmp();
                Box::new(b)
            }
            Location::S3(l) => {
                for d in DIRS {
                    std::fs::create_dir_all(root.join(d))
                        .ctx(|| format!("creating {}", root.join(d).display()))?;
                }
                let b = crate::cached::CachedBackend::new(
                    Box::new(crate::s3::S3Backend::new(crate::s3::S3Client::new(
                        l.clone(),
                    )?)),
                    root.join("cache"),
                );
                if !b.exists("config")? {
                    return Err(Error::Invalid(deleted_or_none(l)?));
                }
                Box::new(b)
            }
            Location::Server(l) => {
                for d in ["locks", "tmp"] {
                    std::fs::create_dir_all(root.join(d))
                        .ctx(|| format!("creating {}", root.join(d).display()))?;
                }
                Box::new(crate::remote::RemoteBackend::new(l.clone())?)
            }
        };
        let (config, master) = match Self::unlock(backend.as_ref(), password, &|n| backend.get(n)) {
            Ok(opened) => opened,
            Err(e @ (Error::WrongPassword | Error::Damaged { .. }))
                if backend.as_s3().is_some() =>
            {
                Self::unlock_originals(backend.as_ref(), password, e)?
            }
            Err(e) => return Err(e),
        };
        if let Some(s3) = backend.as_s3() {
            // Whether objects are locked is the bucket's to say, not the
            // config's alone: a config edited to say "no lock" on a bucket
            // with Object Lock must not get unlocked objects written.
            let lock = config.object_lock || s3.client.lock_status()? == (true, true);
            if lock {
                s3.set_retention(config.retention_secs as i64 + crate::s3::lock_margin_secs());
            }
        }
        let vault = Self::assemble(root, backend, config, master);
        vault.load_index()?;
        Ok(vault)
    }

    /// The config and the master key its keys unwrap with `password`,
    /// each object read with `read`.
    fn unlock(
        backend: &dyn Backend,
        password: &[u8],
        read: &dyn Fn(&str) -> Result<Vec<u8>>,
    ) -> Result<(Config, MasterKey)> {
        let config: Config = serde_json::from_slice(&read("config")?)
            .map_err(|e| Error::damaged("config", e.to_string()))?;
        if config.version != FORMAT_VERSION {
            return Err(Error::Invalid(format!(
                "vault format {} is not supported by this cairn (format {FORMAT_VERSION})",
                config.version
            )));
        }
        let mut master = None;
        let keys = backend.list("keys")?;
        if keys.is_empty() {
            // On S3 the keys may only be hidden: deleted by someone holding
            // the bucket's keys, kept by Object Lock.
            let deleted = backend
                .as_s3()
                .and_then(|s3| s3.client.hidden_objects("keys/").ok())
                .is_some_and(|hidden| !hidden.is_empty());
            return Err(Error::Invalid(if deleted {
                "the vault's keys were deleted (they are behind delete markers) but the store kept them: `cairn undelete` brings them back".into()
            } else {
                "the vault has no keys (its keys/ folder is empty), so no password can open it: restore keys/ from a backup of the vault or its replica".into()
            }));
        }
        let mut damaged = None;
        for name in keys {
            let kf: KeyFile = serde_json::from_slice(&read(&name)?).map_err(|e| {
                let hint = if backend.as_s3().is_some() {
                    " (overwritten in the bucket? `cairn undelete` puts back what Cairn wrote)"
                } else {
                    ""
                };
                Error::damaged(&name, format!("{e}{hint}"))
            })?;
            // A damaged key file is said once no other key opened.
            let opened = match kf.unwrap_bound(password) {
                Ok(o) => o,
                Err(Error::Damaged { reason, .. }) => {
                    damaged.get_or_insert(Error::damaged(&name, reason));
                    continue;
                }
                Err(e) => return Err(e),
            };
            if let Some((m, binding)) = opened {
                // A key of another master (left by an init that was
                // stopped before it wrote its config) opens nothing here.
                if config.key_check.as_ref().is_some_and(|c| *c != m.check()) {
                    tracing::warn!(key = name, "a key that is not this vault's was skipped");
                    continue;
                }
                if binding.is_some_and(|b| b != config.binding(&m)) {
                    return Err(Error::damaged(
                        "config",
                        "its settings are not the ones this vault was made with (changed outside Cairn: retention shortened, chunking altered?). Nothing was read or written; put the original config back (on S3, `cairn undelete` copies its oldest version, kept locked, back on top)",
                    ));
                }
                master = Some(m);
                break;
            }
        }
        match (master, damaged) {
            (Some(m), _) => Ok((config, m)),
            (None, Some(e)) => Err(e),
            (None, None) => Err(Error::WrongPassword),
        }
    }

    /// [`Self::unlock`] again after it failed with `failed` on S3: someone
    /// holding the bucket's keys may have put versions of their own over
    /// the config or the keys (Object Lock keeps Cairn's below), and this
    /// machine's cache may hold such a copy. Each is read again from the
    /// store — Cairn's own version where anything is stacked on it — and
    /// no cached copy is kept of what did not open.
    fn unlock_originals(
        backend: &dyn Backend,
        password: &[u8],
        failed: Error,
    ) -> Result<(Config, MasterKey)> {
        let s3 = backend.as_s3().expect("called on S3");
        let stacked = std::sync::Mutex::new(Vec::new());
        let read = |name: &str| -> Result<Vec<u8>> {
            backend.evict(name);
            match s3.client.original_of(name)? {
                Some(version) => {
                    stacked.lock().unwrap().push(name.to_string());
                    s3.get_version(name, &version)
                }
                None => backend.get(name),
            }
        };
        let opened = Self::unlock(backend, password, &read);
        let stacked = stacked.into_inner().unwrap();
        match opened {
            Ok(opened) if !stacked.is_empty() => {
                for name in &stacked {
                    tracing::warn!(
                        "{name}: the store serves a version Cairn did not write (overwritten behind its back); the one it wrote, kept below by Object Lock, opened the vault instead. `cairn undelete` puts it back on top"
                    );
                }
                Ok(opened)
            }
            Ok(opened) => {
                tracing::warn!(
                    "this machine's cached config or keys did not open the vault ({failed}); read again from the store"
                );
                Ok(opened)
            }
            Err(_) if !stacked.is_empty() => Err(Error::Invalid(format!(
                "{failed}. Also, the store serves versions of {} that Cairn did not write (someone put theirs on top), and the versions Cairn wrote below them did not open the vault either: check the password; `cairn undelete` puts Cairn's versions back on top",
                stacked.join(", ")
            ))),
            Err(_) => Err(failed),
        }
    }

    fn assemble(
        root: &Path,
        backend: Box<dyn Backend>,
        config: Config,
        master: MasterKey,
    ) -> Vault {
        Vault {
            root: root.into(),
            backend,
            config,
            cipher: Cipher::new(&master.encryption),
            hasher: Hasher::new(&master.id),
            index: RwLock::new(ChunkIndex::default()),
            reloading: std::sync::Mutex::new(()),
            known: RwLock::new(Default::default()),
            packs: std::sync::Mutex::new(lru::LruCache::new(
                std::num::NonZeroUsize::new(REMOTE_PACKS).unwrap(),
            )),
            overwritten: Default::default(),
            no_original: Default::default(),
        }
    }

    /// Reads every index object (in parallel: a vault has many).
    pub fn load_index(&self) -> Result<()> {
        // An index announced (add_index) while this lists and reads would
        // be lost when the result replaces the index: it waits instead.
        let _one = self.reloading.lock().unwrap();
        let names = self.backend.list("index")?;
        let loaded: Vec<std::result::Result<PackIndex, (String, String)>> = names
            .par_iter()
            .map(|n| {
                self.read_pack_index(n)
                    .map_err(|e| (n.clone(), e.to_string()))
            })
            .collect();
        let mut idx = ChunkIndex::default();
        for l in loaded {
            match l {
                Ok(p) => idx.add(&p),
                Err(d) => idx.damaged.push(d),
            }
        }
        *self.index.write().unwrap() = idx;
        Ok(())
    }

    /// Makes the loaded index safe to deduplicate against once the vault
    /// lock is held: a prune that ran between opening the vault and taking
    /// the lock may have deleted packs the index still lists, and a backup
    /// that reused their chunks would save a snapshot with holes. Reloads
    /// when any loaded pack's index object is gone (new ones need not be
    /// seen: missing them only stores a chunk twice).
    pub fn refresh_index(&self) -> Result<()> {
        if self.backend.negotiates() {
            // Behind a server the index is the server's to keep.
            return Ok(());
        }
        let names = self.backend.list("index")?;
        let listed: std::collections::HashSet<&str> = names
            .iter()
            .map(|n| n.rsplit('/').next().unwrap_or(""))
            .collect();
        let stale = self
            .index
            .read()
            .unwrap()
            .packs
            .iter()
            .any(|p| !listed.contains(p.id.as_str()));
        if stale {
            self.known.write().unwrap().clear();
            self.load_index()?;
        }
        Ok(())
    }

    /// A pack's index as stored (`index/<pack id>`).
    pub fn seal_pack_index(&self, index: &PackIndex) -> Result<Vec<u8>> {
        let bytes = postcard::to_stdvec(index).expect("index serializes");
        codec::seal(&self.cipher, &bytes, 3, None)
    }

    pub fn read_pack_index(&self, name: &str) -> Result<PackIndex> {
        self.read_checked(name, |b| self.parse_pack_index(name, b))
    }

    /// Reads `name` and checks it with `parse`. A local cached copy that
    /// fails the check (cut short by a power cut, garbage a proxy
    /// answered with) is dropped and the store asked once more, so a bad
    /// copy costs a fetch instead of reading as damage for ever.
    fn read_checked<T>(&self, name: &str, parse: impl Fn(&[u8]) -> Result<T>) -> Result<T> {
        let current = || match parse(&self.backend.get(name)?) {
            Err(e) if self.backend.evict(name) => {
                let again = parse(&self.backend.get(name)?);
                // (When the store's copy is as bad, the cache was not to blame.)
                if again.is_ok() {
                    tracing::warn!(
                        "the cached copy of {name} was bad ({e}); read again from the store"
                    );
                }
                again
            }
            r => r,
        };
        current().or_else(|e| match self.original_version(name, &parse) {
            Some((t, _)) => Ok(t),
            // (A name that is not there may be asked for: a snapshot id a
            // client gave. Not found stays not found.)
            None => Err(e),
        })
    }

    /// On S3, someone holding the bucket's keys can put a version of their
    /// own over one of Cairn's write-once objects (garbage, or the same
    /// bytes re-encrypted with a key only they have), or a delete marker:
    /// Object Lock keeps Cairn's version below. When what the store serves
    /// fails `check`, the oldest versions below are tried (Cairn's was
    /// the first written, however many were stacked on it); the one that
    /// passes is used, and the name noted for `verify` and said once.
    pub(crate) fn original_version<T>(
        &self,
        name: &str,
        check: impl Fn(&[u8]) -> Result<T>,
    ) -> Option<(T, Vec<u8>)> {
        let s3 = self.backend.as_s3()?;
        if !crate::s3::written_once(name) || self.no_original.lock().unwrap().contains(name) {
            return None;
        }
        let older = s3.client.older_versions(name).ok()?;
        // A pack's size is in the index: versions of another size are not
        // fetched (someone may have stacked large ones).
        let size = name
            .strip_prefix("packs/")
            .and_then(|p| p.rsplit('/').next())
            .and_then(|id| {
                let idx = self.index.read().unwrap();
                idx.packs.iter().find(|p| p.id == id).map(|p| p.size)
            });
        for v in older
            .iter()
            .filter(|v| size.is_none_or(|s| v.size == s))
            .take(4)
        {
            let Ok(bytes) = s3.get_version(name, &v.id) else {
                continue;
            };
            if let Ok(t) = check(&bytes) {
                self.note_overwritten(name);
                return Some((t, bytes));
            }
        }
        self.no_original.lock().unwrap().insert(name.to_string());
        None
    }

    /// Notes (once) that `name`'s current version on the store is not the
    /// one Cairn wrote.
    pub(crate) fn note_overwritten(&self, name: &str) {
        if self.overwritten.lock().unwrap().insert(name.to_string()) {
            tracing::warn!(
                "{name}: the store serves a version Cairn did not write (overwritten or deleted behind its back); the one it wrote, kept below by Object Lock, is read instead. `cairn undelete` puts it back on top"
            );
        }
    }

    /// Write-once objects read from below someone else's version.
    pub fn overwritten(&self) -> Vec<String> {
        self.overwritten.lock().unwrap().iter().cloned().collect()
    }

    /// A pack index from its sealed bytes (checked before it is stored).
    pub fn parse_pack_index(&self, name: &str, sealed: &[u8]) -> Result<PackIndex> {
        let bytes = self.open_object(name, sealed)?;
        let idx: PackIndex =
            postcard::from_bytes(&bytes).map_err(|e| Error::damaged(name, e.to_string()))?;
        // Pack ids are 64 hex digits (and the first two name a folder).
        if !crate::hash::is_object_id(&idx.pack) || index_object(&idx.pack) != name {
            return Err(Error::damaged(name, "index names another pack"));
        }
        Ok(idx)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Whether `path` (which need not exist yet: its nearest existing
    /// folder decides) lies inside this vault's folder.
    pub fn holds(&self, path: &Path) -> bool {
        let Ok(root) = std::fs::canonicalize(&self.root) else {
            return false;
        };
        let Ok(mut at) = std::path::absolute(path) else {
            return false;
        };
        loop {
            if let Ok(real) = std::fs::canonicalize(&at) {
                return real.starts_with(&root);
            }
            if !at.pop() {
                return false;
            }
        }
    }
    pub fn backend(&self) -> &dyn Backend {
        self.backend.as_ref()
    }
    pub fn config(&self) -> &Config {
        &self.config
    }
    pub fn cipher(&self) -> &Cipher {
        &self.cipher
    }
    pub fn hasher(&self) -> &Hasher {
        &self.hasher
    }
    pub fn index(&self) -> std::sync::RwLockReadGuard<'_, ChunkIndex> {
        self.index.read().unwrap()
    }

    pub fn has_chunk(&self, id: &ChunkId) -> bool {
        self.index.read().unwrap().contains(id) || self.known.read().unwrap().contains(id)
    }

    /// Adds a pack's index to the in-memory one (after the pack and its
    /// index object are stored).
    pub fn add_index(&self, idx: &PackIndex) {
        let _one = self.reloading.lock().unwrap();
        self.index.write().unwrap().add(idx);
    }

    /// Behind a server: asks which of `ids` the vault has and remembers
    /// them, so that a backup neither re-reads unchanged files nor offers
    /// their chunks again. Does nothing for a vault that holds its index.
    pub fn learn_present(&self, ids: impl IntoIterator<Item = ChunkId>) -> Result<()> {
        if !self.backend.negotiates() {
            return Ok(());
        }
        let ids: Vec<ChunkId> = {
            let known = self.known.read().unwrap();
            let mut seen = std::collections::HashSet::new();
            ids.into_iter()
                .filter(|id| !known.contains(id) && seen.insert(*id))
                .collect()
        };
        if ids.is_empty() {
            return Ok(());
        }
        let missing: std::collections::HashSet<ChunkId> = self
            .backend
            .missing_chunks(&ids)?
            .unwrap_or_default()
            .into_iter()
            .collect();
        self.mark_present(ids.into_iter().filter(|id| !missing.contains(id)));
        Ok(())
    }

    /// Records chunks the server said it has.
    pub fn mark_present(&self, ids: impl IntoIterator<Item = ChunkId>) {
        self.known.write().unwrap().extend(ids);
    }

    pub fn retain_until_from_now(&self) -> DateTime<Utc> {
        Utc::now() + Duration::seconds(self.config.retention_secs.min(i64::MAX as u64 / 2) as i64)
    }

    /// Blocks `first..=last` (64 KiB each) of a chunk: for a chunk framed
    /// in blocks, only those are decompressed (the whole chunk is still
    /// read and authenticated).
    pub fn read_chunk_blocks(&self, id: &ChunkId, first: usize, last: usize) -> Result<Vec<u8>> {
        self.open_chunk(id, |sealed, loc, name| {
            codec::open_blocks(
                &self.cipher,
                name,
                sealed,
                loc.raw_len as usize,
                (first, last),
            )
        })
    }

    /// Reads and decrypts one chunk.
    pub fn read_chunk(&self, id: &ChunkId) -> Result<Vec<u8>> {
        self.open_chunk(id, |sealed, loc, name| {
            let data = codec::open_owned(&self.cipher, name, sealed, loc.raw_len as usize)?;
            if data.len() != loc.raw_len as usize {
                return Err(Error::damaged(
                    name,
                    format!("chunk {} has the wrong length", id.hex()),
                ));
            }
            Ok(data)
        })
    }

    /// Opens chunk `id` with `open`, given it as stored (sealed), its index
    /// entry and its pack's name: a ranged read of a local pack, or a
    /// slice of a remote pack fetched whole once. On S3, a pack that does
    /// not give the chunk back is looked for below someone else's version.
    fn open_chunk<T>(
        &self,
        id: &ChunkId,
        open: impl Fn(Vec<u8>, &crate::index::Location, &str) -> Result<T>,
    ) -> Result<T> {
        let (loc, pack) = {
            let idx = self.index.read().unwrap();
            let (loc, pack) = idx.get(id).ok_or_else(|| {
                Error::damaged(format!("chunk {}", id.hex()), "not in any index (missing)")
            })?;
            (loc, pack.id.clone())
        };
        let name = pack_object(&pack);
        let range = loc.offset as usize..loc.offset as usize + loc.len as usize;
        let slice = |pack: &[u8]| {
            pack.get(range.clone())
                .map(<[u8]>::to_vec)
                .ok_or_else(|| Error::damaged(&name, "a chunk lies past the end of its pack"))
        };
        let current = if self.backend.as_s3().is_some() {
            self.remote_pack(&name).and_then(|p| slice(&p))
        } else {
            self.backend
                .get_range(&name, loc.offset as u64, loc.len as usize)
        };
        current
            .and_then(|sealed| open(sealed, &loc, &name))
            .or_else(
                |e| match self.original_version(&name, |p| open(slice(p)?, &loc, &name)) {
                    Some((t, original)) => {
                        self.keep_pack(&name, original);
                        Ok(t)
                    }
                    None => Err(as_damage(&name, e)),
                },
            )
    }

    /// Keeps `data` as remote pack `name` in memory (its original version,
    /// in place of what the store serves now).
    fn keep_pack(&self, name: &str, data: Vec<u8>) {
        *self.pack_slot(name).lock().unwrap() = Some(std::sync::Arc::new(data));
    }

    fn pack_slot(&self, name: &str) -> PackSlot {
        self.packs
            .lock()
            .unwrap()
            .get_or_insert(name.to_string(), Default::default)
            .clone()
    }

    /// A whole pack of a remote vault, from memory or fetched once.
    fn remote_pack(&self, name: &str) -> Result<std::sync::Arc<Vec<u8>>> {
        let slot = self.pack_slot(name);
        let mut filled = slot.lock().unwrap();
        if let Some(d) = filled.as_ref() {
            return Ok(d.clone());
        }
        let data = std::sync::Arc::new(self.backend.get(name)?);
        *filled = Some(data.clone());
        Ok(data)
    }

    pub fn read_object(&self, name: &str) -> Result<Vec<u8>> {
        self.read_checked(name, |b| self.open_object(name, b))
    }

    /// Decrypts and unframes a sealed object's bytes.
    pub fn open_object(&self, name: &str, sealed: &[u8]) -> Result<Vec<u8>> {
        codec::open(&self.cipher, name, sealed, MAX_OBJECT)
    }

    /// Stores a tree, content-addressed; returns its name.
    pub fn write_content<T: Serialize>(&self, value: &T) -> Result<String> {
        let bytes =
            postcard::to_stdvec(value).map_err(|e| Error::Invalid(format!("serializing: {e}")))?;
        self.write_content_bytes(&bytes)
    }

    /// Stores a disk map (its digests; see [`DiskMap::to_stored`]),
    /// content-addressed; returns its name.
    pub fn write_disk_map(&self, map: &DiskMap) -> Result<String> {
        self.write_content_bytes(&map.to_stored())
    }

    fn write_content_bytes(&self, bytes: &[u8]) -> Result<String> {
        let id = self.hasher.object_id(bytes);
        let name = format!("maps/{}/{}", &id[..2], id);
        // A Cairn server is sent the map even when it has one: a manifest
        // may cite only maps its agent showed it holds.
        let negotiates = self.backend.negotiates();
        if negotiates || !self.backend.exists(&name)? {
            let sealed = codec::seal(&self.cipher, bytes, self.config.compression_level, None)?;
            match self.backend.put(&name, &sealed) {
                // A server older than that rule compares bytes, and a map
                // sealed anew has other bytes than the one it holds.
                Err(Error::Io { source, .. })
                    if negotiates
                        && source.kind() == std::io::ErrorKind::PermissionDenied
                        && self.backend.exists(&name)? => {}
                r => {
                    r?;
                }
            }
        }
        Ok(name)
    }

    /// Stores a small sealed object under `name`, write-once; false when
    /// it already existed.
    pub fn put_sealed(&self, name: &str, plaintext: &[u8]) -> Result<bool> {
        self.backend
            .put(name, &codec::seal(&self.cipher, plaintext, 3, None)?)
    }

    /// A disk map or tree, checked to be what its content address names:
    /// a map swapped for another (by a cache or a hostile store) would
    /// restore another snapshot's data without any error.
    fn read_content(&self, name: &str) -> Result<Vec<u8>> {
        self.read_checked(name, |sealed| {
            let bytes = self.open_object(name, sealed)?;
            if name.rsplit('/').next() != Some(self.hasher.object_id(&bytes).as_str()) {
                return Err(Error::damaged(name, "content does not match its address"));
            }
            Ok(bytes)
        })
    }

    /// The plaintext of a snapshot's disk map or tree, checked against its
    /// address, not yet parsed.
    pub fn read_content_of(&self, snap: &Snapshot) -> Result<Vec<u8>> {
        self.read_content(&snap.content)
    }

    pub fn read_disk_map(&self, snap: &Snapshot) -> Result<DiskMap> {
        let bytes = self.read_content(&snap.content)?;
        DiskMap::from_stored(&bytes, &self.hasher).map_err(|r| Error::damaged(&snap.content, r))
    }

    pub fn read_tree(&self, snap: &Snapshot) -> Result<Tree> {
        let bytes = self.read_content(&snap.content)?;
        postcard::from_bytes(&bytes).map_err(|e| Error::damaged(&snap.content, e.to_string()))
    }

    /// On S3 with Object Lock: keeps the objects a new snapshot uses
    /// locked at least as long as its own manifest (`until` is its
    /// retain-until). Chunks reused from old packs, or a map stored before,
    /// still carry the lock they got when written; without this, a backup
    /// that changed little would rest on data whose lock ends in days, and
    /// a stolen key could delete it then. Only objects written longer ago
    /// than the lock margin can end too early: those are asked (HEAD, in
    /// parallel) and extended where needed. Returns how many were.
    pub fn lock_reused(
        &self,
        chunks: impl IntoIterator<Item = ChunkId>,
        content: &str,
        until: DateTime<Utc>,
    ) -> Result<usize> {
        let Some(s3) = self.backend.as_s3() else {
            return Ok(0);
        };
        if !self.config.object_lock {
            return Ok(0);
        }
        let margin = crate::s3::lock_margin_secs();
        let mut names = BTreeSet::from([content.to_string()]);
        {
            let index = self.index();
            for c in chunks {
                if let Some((_, pack)) = index.get(&c)
                    && pack.retain_until.saturating_add(margin) < until.timestamp()
                {
                    names.insert(crate::index::pack_object(&pack.id));
                    names.insert(crate::index::index_object(&pack.id));
                }
            }
        }
        // Locks this machine already saw or set far enough ahead are not
        // asked about again (compliance locks never get shorter).
        let mut record = crate::lock_record::LockRecord::load(&self.root);
        let names: Vec<String> = names
            .into_iter()
            .filter(|n| !record.covers(n, until.timestamp()))
            .collect();
        let seen = std::sync::Mutex::new(Vec::new());
        let extended = std::sync::atomic::AtomicUsize::new(0);
        let next = std::sync::atomic::AtomicUsize::new(0);
        let want = until + chrono::Duration::seconds(margin);
        // Each question is a round trip: eight at a time.
        std::thread::scope(|sc| {
            let workers: Vec<_> = (0..8)
                .map(|_| {
                    sc.spawn(|| -> Result<()> {
                        loop {
                            let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            let Some(name) = names.get(i) else {
                                return Ok(());
                            };
                            // The version Cairn wrote, if someone stacked
                            // theirs on it (see `S3Client::originals`).
                            let version = s3.client.original_of(name)?;
                            let version = version.as_deref();
                            let now_until = match s3.retain_until_of(name, version)? {
                                Some(u) if u >= until => u,
                                _ => {
                                    s3.extend_lock_of(name, version, want).map_err(|e| {
                                        // Another host's prune can delete what this
                                        // backup reuses (no lock spans hosts): then
                                        // no snapshot may refer to it.
                                        Error::Invalid(format!(
                                            "{name}, which this backup reuses, could not be kept locked as long as its snapshot ({e}); pruned meanwhile from another host? No snapshot was written: back up again"
                                        ))
                                    })?;
                                    extended.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                                    want
                                }
                            };
                            seen.lock()
                                .unwrap()
                                .push((name.clone(), now_until.timestamp()));
                        }
                    })
                })
                .collect();
            workers
                .into_iter()
                .try_for_each(|w| w.join().expect("a lock worker panicked"))
        })?;
        // Rewritten only when the store was asked: a backup whose reused
        // locks were all known leaves the record as it was.
        if !names.is_empty() {
            for (name, u) in seen.into_inner().unwrap() {
                record.note(&name, u);
            }
            if let Err(e) = record.save() {
                tracing::debug!(error = %e, "the lock record could not be saved");
            }
        }
        let extended = extended.into_inner();
        tracing::debug!(asked = names.len(), extended, "locks of reused objects");
        Ok(extended)
    }

    pub fn write_snapshot(&self, snap: &Snapshot) -> Result<()> {
        let json = serde_json::to_vec(snap).expect("json");
        self.backend.put(
            &Snapshot::object_name(&snap.id),
            &codec::seal(&self.cipher, &json, 3, None)?,
        )?;
        Ok(())
    }

    pub fn read_snapshot(&self, name: &str) -> Result<Snapshot> {
        self.read_checked(name, |b| self.parse_snapshot(name, b))
    }

    /// A manifest from its sealed bytes (checked before it is stored).
    pub fn parse_snapshot(&self, name: &str, sealed: &[u8]) -> Result<Snapshot> {
        let bytes = self.open_object(name, sealed)?;
        let snap: Snapshot =
            serde_json::from_slice(&bytes).map_err(|e| Error::damaged(name, e.to_string()))?;
        if Snapshot::object_name(&snap.id) != name {
            return Err(Error::damaged(name, "manifest names another snapshot"));
        }
        if !is_content_name(&snap.content) {
            return Err(Error::damaged(
                name,
                format!("{:?} is not the name of a disk map or tree", snap.content),
            ));
        }
        Ok(snap)
    }

    /// Snapshots forgotten whose manifests the store would not delete yet
    /// (on S3, Object Lock outlives the vault's retention by a margin):
    /// `forget` leaves a sealed note for each, so only a holder of the
    /// vault key can forget, and they are gone from every listing at once.
    /// Prune deletes manifest and note once the lock ends. A store that
    /// will not list the notes (an agent's token) shows them as present,
    /// the safe side: their data is kept and their locks renewed.
    pub fn forgotten(&self) -> HashSet<String> {
        self.sealed_notes("forgotten")
    }

    /// The snapshot ids of the notes under `dir` (`dir/<id>`, each sealed
    /// over its own id: one that does not open to it is no note).
    pub(crate) fn sealed_notes(&self, dir: &str) -> HashSet<String> {
        let Ok(names) = self.backend.list(dir) else {
            return HashSet::new();
        };
        names
            .into_iter()
            .filter_map(|n| {
                let id = n.strip_prefix(dir)?.strip_prefix('/')?.to_string();
                let plain = self.read_object(&n).ok()?;
                (plain == id.as_bytes()).then_some(id)
            })
            .collect()
    }

    /// Leaves the note that `id` is forgotten (see [`Vault::forgotten`]).
    pub fn mark_forgotten(&self, id: &SnapshotId) -> Result<()> {
        self.put_sealed(&forgotten_object(id), id.0.as_bytes())?;
        Ok(())
    }

    /// All readable snapshots sorted by time, and the manifests that could
    /// not be read.
    pub fn snapshots(&self) -> Result<(Vec<Snapshot>, Vec<Problem>)> {
        let names = self.backend.list("snapshots")?;
        let forgotten = self.forgotten();
        let mut good = Vec::new();
        let mut bad = Vec::new();
        for n in names {
            let file = n.rsplit('/').next().unwrap_or(&n);
            if forgotten.contains(file.split('.').next().unwrap_or(file)) {
                continue;
            }
            match self.read_snapshot(&n) {
                Ok(s) => good.push(s),
                Err(e) => bad.push((n, e.to_string())),
            }
        }
        // On S3, manifests someone deleted behind Cairn's back (a delete
        // marker on top, the version kept below) are gone from the listing:
        // said like manifests that cannot be read, not left out unseen.
        if let Some(s3) = self.backend.as_s3() {
            match s3.client.hidden_objects("snapshots/") {
                Ok(hidden) => bad.extend(hidden.into_iter().map(|n| {
                    (
                        n,
                        "deleted on the store behind Cairn's back (a delete marker on top, the data kept): `cairn undelete` brings it back".to_string(),
                    )
                })),
                Err(e) => tracing::warn!("could not look for manifests deleted on the store: {e}"),
            }
        }
        good.sort_by(|a, b| a.time.cmp(&b.time).then(a.written.cmp(&b.written)));
        Ok((good, bad))
    }

    /// The snapshot `spec` names. Where manifests cannot be read and the
    /// spec counts from the newest (`@latest`, `@-N`), says once on
    /// stderr that the count leaves them out: one of them may be the
    /// newest (a damaged manifest must not quietly make `@latest` mean
    /// the one before).
    pub fn resolve(&self, spec: &str) -> Result<Snapshot> {
        let (all, bad) = self.snapshots()?;
        // Counted from the newest: NAME@latest, NAME@-N, or a bare NAME.
        let relative = match spec.rsplit_once('@') {
            Some((_, r)) => r == "latest" || r.starts_with('-'),
            None => all.iter().any(|s| s.name == spec),
        };
        static SAID: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
        if relative
            && let Some((name, why)) = bad.first()
            && !SAID.swap(true, std::sync::atomic::Ordering::Relaxed)
        {
            eprintln!(
                "warning: {} snapshot manifest(s) cannot be read ({name}: {why}): {spec} counts without them, and one may be newer; `cairn verify` says more",
                bad.len()
            );
        }
        crate::snapshot::resolve(&all, spec).cloned().map_err(|e| {
            // An id whose manifest cannot be read (deleted on the store)
            // is said as that, not as no such snapshot.
            let id = spec.rsplit_once('@').map_or(spec, |(_, r)| r);
            match bad.iter().find(|(n, _)| {
                id.len() >= 4 && n.rsplit('/').next().is_some_and(|f| f.starts_with(id))
            }) {
                Some((n, why)) => Error::Invalid(format!("{spec}: {n} {why}")),
                None => e,
            }
        })
    }

    pub fn pins(&self) -> Result<BTreeSet<SnapshotId>> {
        Ok(self
            .backend
            .list("pins")?
            .into_iter()
            .filter_map(|n| n.strip_prefix("pins/").map(|s| SnapshotId(s.to_string())))
            .collect())
    }

    /// Pins a snapshot. Under the vault lock, and only while its manifest
    /// is there: a forget reads the pins and then deletes, so a pin made
    /// in between would be reported done for a snapshot about to go.
    pub fn pin(&self, id: &SnapshotId) -> Result<()> {
        let _lock = crate::lock::VaultLock::shared(self.root())?;
        if !self.backend.exists(&Snapshot::object_name(id))? || self.forgotten().contains(&id.0) {
            return Err(Error::Invalid(format!(
                "snapshot {} is gone (forgotten meanwhile)",
                id.0
            )));
        }
        self.backend.put_marker(&format!("pins/{}", id.0))?;
        Ok(())
    }

    /// Unpins a snapshot (under the lock, like [`Vault::pin`]).
    pub fn unpin(&self, id: &SnapshotId) -> Result<()> {
        let _lock = crate::lock::VaultLock::shared(self.root())?;
        self.backend.delete(&format!("pins/{}", id.0))
    }
}

/// `maps/XX/<64 hex digits>` with XX the id's first two: what
/// [`Vault::write_content`] names a disk map or tree.
fn is_content_name(name: &str) -> bool {
    let mut parts = name.split('/');
    let (Some("maps"), Some(shard), Some(id), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    crate::hash::is_object_id(id) && id.get(..2) == Some(shard)
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_content_addresses_name_a_snapshots_content() {
        let id = "ab".to_string() + &"0".repeat(62);
        assert!(super::is_content_name(&format!("maps/ab/{id}")));
        for bad in [
            format!("maps/cd/{id}"),
            format!("maps/ab/{id}/x"),
            "maps/ab/../../../../dev/zero".to_string(),
            format!("snapshots/ab/{id}"),
            format!("maps/ab/{}", id.to_uppercase()),
            String::new(),
        ] {
            assert!(!super::is_content_name(&bad), "{bad}");
        }
    }
}
