//! Snapshot manifests: what was backed up, when, from where, what it
//! contains (a disk map or a file tree) and what ingest measured.

use crate::entropy::EntropyHistogram;
use crate::error::{Error, Result};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::fmt;

#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SnapshotId(pub String);

impl SnapshotId {
    pub fn generate() -> Result<Self> {
        Ok(SnapshotId(
            hex::encode(crate::crypto::random_array::<32>()?),
        ))
    }

    pub fn short(&self) -> &str {
        &self.0[..8.min(self.0.len())]
    }
}

impl fmt::Display for SnapshotId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for SnapshotId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SnapshotId({})", self.short())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceKind {
    /// A disk: raw image, block device or qcow2 (stored as its guest view).
    Disk,
    Directory,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SourceInfo {
    pub kind: SourceKind,
    /// "raw", "block-device", "qcow2" or "directory".
    pub format: String,
    pub path: String,
    pub host: String,
    /// A directory source's own folder (its tree lists what is inside).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root: Option<RootMeta>,
}

/// The owner, mode, time and extended attributes of a directory source's
/// own folder: a folder kept private (0700) comes back private.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootMeta {
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime_ns: i64,
    #[serde(default)]
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

/// What ingest measured while the data was in memory.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Metrics {
    /// Size of the disk, or sum of file sizes.
    pub logical_size: u64,
    pub bytes_read: u64,
    /// Bytes that differ from the parent, counted in 64 KiB blocks.
    pub changed_bytes: u64,
    /// Plaintext bytes of chunks the vault did not have.
    pub new_bytes: u64,
    /// What those chunks took in the vault after compression and sealing.
    pub new_bytes_stored: u64,
    /// `new_bytes / new_bytes_stored` (1.0 when nothing was new).
    pub compression_ratio: f64,
    /// Changed bytes by entropy (bits per byte, buckets 0..8).
    pub entropy_histogram: EntropyHistogram,
    /// Bytes that are holes or all zeros.
    pub zero_bytes: u64,
    pub chunks: u64,
    pub new_chunks: u64,
    pub duration_secs: f64,
    /// Directory sources: files, and how many were unchanged by metadata.
    #[serde(default)]
    pub files: u64,
    #[serde(default)]
    pub files_unchanged: u64,
    /// Directory sources: entries that could not be read this time and
    /// are missing from the snapshot or kept as they were in the parent
    /// (a snapshot that is not the whole source says so). At most
    /// [`UNREADABLE_LISTED`] are named; `unreadable_count` counts all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unreadable: Vec<String>,
    #[serde(default)]
    pub unreadable_count: u64,
}

/// Unreadable entries named in a snapshot's metrics (the rest are counted).
pub const UNREADABLE_LISTED: usize = 100;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Snapshot {
    pub id: SnapshotId,
    pub name: String,
    pub time: DateTime<Utc>,
    pub parent: Option<SnapshotId>,
    pub source: SourceInfo,
    /// Object name of the disk map or tree (`maps/..`).
    pub content: String,
    pub metrics: Metrics,
    #[serde(default)]
    pub tags: Vec<String>,
    /// The manifest may not be deleted before this time.
    pub retain_until: DateTime<Utc>,
    /// When the manifest was written (real time, unlike `time`, which
    /// `--time` may set).
    pub written: DateTime<Utc>,
    pub cairn_version: String,
    /// Set by `cairn commit`: the snapshot this one was made from (its disk
    /// plus the writes of a recovery overlay).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub derived_from: Option<SnapshotId>,
}

impl Snapshot {
    pub fn object_name(id: &SnapshotId) -> String {
        format!("snapshots/{}", id.0)
    }

    /// Changed bytes per hour since the parent, when there is one.
    pub fn change_rate(&self, parent_time: Option<DateTime<Utc>>) -> Option<f64> {
        let hours = (self.time - parent_time?).num_milliseconds() as f64 / 3_600_000.0;
        (hours > 0.0).then(|| self.metrics.changed_bytes as f64 / hours)
    }
}

/// Picks one snapshot from a spec: `NAME@latest`, `NAME@-N` (N before the
/// latest), `NAME@<id prefix>`, `NAME` (latest) or a bare id prefix.
/// `snapshots` must be sorted by time.
pub fn resolve<'a>(snapshots: &'a [Snapshot], spec: &str) -> Result<&'a Snapshot> {
    let not_found = || Error::SnapshotNotFound(format!("{spec:?}"));
    if spec.contains(':') {
        return Err(Error::BadSpec(format!(
            "{spec}: a path cannot be given here; name the snapshot alone (NAME@SNAP)"
        )));
    }
    let (name, sel) = match spec.rsplit_once('@') {
        Some((n, s)) => (Some(n), s),
        None => {
            if snapshots.iter().any(|s| s.name == spec) {
                (Some(spec), "latest")
            } else {
                (None, spec)
            }
        }
    };
    if name == Some("") {
        return Err(Error::BadSpec(format!(
            "{spec}: the name before @ is missing (NAME@SNAP; `cairn snapshots` lists the names)"
        )));
    }
    let of_name: Vec<&Snapshot> = snapshots
        .iter()
        .filter(|s| name.is_none_or(|n| s.name == n))
        .collect();
    if let Some(n) = name
        && of_name.is_empty()
    {
        return Err(Error::SnapshotNotFound(format!(
            "{spec:?}: there are no snapshots named {n:?}"
        )));
    }
    if sel == "latest" {
        return of_name.last().copied().ok_or_else(not_found);
    }
    if let Some(back) = sel.strip_prefix('-') {
        let back: usize = back
            .parse()
            .map_err(|_| Error::BadSpec(format!("{spec}: expected NAME@-N with N a number")))?;
        return of_name
            .len()
            .checked_sub(1 + back)
            .map(|i| of_name[i])
            .ok_or_else(|| {
                let n = of_name.len();
                let oldest = match (n, name) {
                    (0, _) => String::new(),
                    (1, Some(x)) => format!(" (only {x}@latest)"),
                    (1, None) => " (only the latest)".to_string(),
                    (_, Some(x)) => format!(" (the oldest is {x}@-{})", n - 1),
                    (_, None) => format!(" (the oldest is -{})", n - 1),
                };
                Error::SnapshotNotFound(format!(
                    "{spec:?}: {} {n} snapshot{}{oldest}",
                    name.map_or("there are".to_string(), |x| format!("{x} has")),
                    if n == 1 { "" } else { "s" },
                ))
            });
    }
    if sel.is_empty() || !sel.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(Error::BadSpec(format!(
            "{spec}: expected NAME@latest, NAME@-N or NAME@<id prefix>"
        )));
    }
    // One digit or three would name whichever id happens to start so:
    // `vm@0` read as a prefix is the oldest snapshot, not the latest.
    if sel.len() < 4 {
        return Err(Error::BadSpec(format!(
            "{spec}: an id prefix needs at least 4 hex digits (`cairn snapshots` lists them); NAME@latest is the newest, NAME@-1 the one before"
        )));
    }
    let sel = sel.to_ascii_lowercase();
    let hits: Vec<&Snapshot> = of_name
        .into_iter()
        .filter(|s| s.id.0.starts_with(&sel))
        .collect();
    match hits.len() {
        0 => Err(not_found()),
        1 => Ok(hits[0]),
        n => Err(Error::Invalid(format!(
            "{spec}: {n} snapshots start with {sel}; give more of the id"
        ))),
    }
}

/// A disk snapshot of `name` with id `id` taken at `time` (RFC 3339),
/// for tests.
#[cfg(test)]
pub(crate) fn test_snapshot(name: &str, id: &str, time: &str) -> Snapshot {
    Snapshot {
        id: SnapshotId(id.into()),
        name: name.into(),
        time: time.parse().unwrap(),
        parent: None,
        source: SourceInfo {
            kind: SourceKind::Disk,
            format: "raw".into(),
            path: "x".into(),
            host: "h".into(),
            root: None,
        },
        content: String::new(),
        metrics: Metrics::default(),
        tags: vec![],
        retain_until: Utc::now(),
        written: Utc::now(),
        cairn_version: "0".into(),
        derived_from: None,
    }
}

/// Longest snapshot name: it is typed in `NAME@SNAP` and shown in tables.
const NAME_MAX: usize = 100;

/// Whether `name` may name a source's snapshots: a backup and the vault
/// server (for its agents' manifests) hold new snapshots to it, so no
/// name a terminal would act on (control characters) or that `NAME@SNAP`
/// could not address is written. (Manifests already written under other
/// names still read: refusing them would hide their data and stop prune.)
pub fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty()
        || name.trim() != name
        || name.chars().count() > NAME_MAX
        || name
            .chars()
            .any(|c| c.is_control() || matches!(c, '@' | ':' | '/'))
    {
        return Err(format!(
            "snapshot name {name:?} must be 1 to {NAME_MAX} characters, without '@', ':', '/', control characters or spaces at either end"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(name: &str, id: &str, hour: u32) -> Snapshot {
        test_snapshot(name, id, &format!("2026-01-01T{hour:02}:00:00Z"))
    }

    #[test]
    fn specs_resolve_like_the_docs_say() {
        let s = vec![
            snap("vm", "aaaa11", 1),
            snap("web", "aaaa22", 2),
            snap("vm", "bbbb33", 3),
            snap("vm", "cccc44", 4),
        ];
        assert_eq!(resolve(&s, "vm@latest").unwrap().id.0, "cccc44");
        assert_eq!(resolve(&s, "vm").unwrap().id.0, "cccc44");
        assert_eq!(resolve(&s, "vm@-1").unwrap().id.0, "bbbb33");
        assert_eq!(resolve(&s, "vm@-2").unwrap().id.0, "aaaa11");
        let past = resolve(&s, "vm@-3").unwrap_err().to_string();
        assert!(
            past.contains("vm has 3 snapshots (the oldest is vm@-2)"),
            "{past}"
        );
        assert_eq!(resolve(&s, "vm@BBBB").unwrap().id.0, "bbbb33");
        assert_eq!(resolve(&s, "aaaa22").unwrap().id.0, "aaaa22");
        assert!(resolve(&s, "aa").is_err(), "too short a prefix");
        assert!(resolve(&s, "aaaa").is_err(), "ambiguous prefix");
        assert!(resolve(&s, "vm@0").is_err(), "a digit is no prefix");
        assert!(resolve(&s, "vm@aaaa2").is_err(), "id of another name");
        assert!(resolve(&s, "nope@latest").is_err());
        assert!(resolve(&s, "vm@zz").is_err());
        let nameless = resolve(&s, "@latest").unwrap_err();
        assert!(
            matches!(nameless, Error::BadSpec(_)) && nameless.to_string().contains("name before @"),
            "{nameless}"
        );
    }
}
