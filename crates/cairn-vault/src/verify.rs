//! Checks that every snapshot can be read back. The structure check reads
//! indexes, manifests and maps and checks every referenced chunk is indexed
//! in a pack that exists; `read_data` also decrypts every chunk and checks
//! its content against its id.

use crate::codec;
use crate::error::{Problem, Result};
use crate::hash::ChunkId;
use crate::index::pack_object;
use crate::snapshot::{Snapshot, SourceKind};
use crate::vault::Vault;
use rayon::prelude::*;
use serde::Serialize;
use std::collections::{BTreeSet, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, Serialize)]
pub struct DamagedSnapshot {
    pub id: String,
    pub name: String,
    pub time: String,
    pub reasons: Vec<String>,
}

#[derive(Debug, Default, Serialize)]
pub struct VerifyReport {
    pub snapshots: usize,
    pub packs: usize,
    pub chunks_checked: u64,
    pub bytes_checked: u64,
    pub damaged_snapshots: Vec<DamagedSnapshot>,
    /// Objects that could not be read or failed their check.
    pub damaged_objects: Vec<(String, String)>,
    /// Packs without an index: left by an interrupted backup, unused,
    /// removed by prune once their retention ends — or, where snapshots
    /// miss chunks, what a lost index object pointed at (prune then stops).
    pub unindexed_packs: usize,
}

impl VerifyReport {
    pub fn ok(&self) -> bool {
        self.damaged_snapshots.is_empty() && self.damaged_objects.is_empty()
    }
}

/// `progress(done, total)` is called as packs are checked, in bytes of
/// packs.
pub fn verify(
    vault: &Vault,
    read_data: bool,
    progress: &(dyn Fn(u64, u64) + Sync),
) -> Result<VerifyReport> {
    // Check the store itself, not this machine's copy of its metadata.
    if vault.backend().set_cache_bypass(true) {
        vault.load_index()?;
    }
    let mut report = VerifyReport::default();
    // On S3, objects someone deleted behind Cairn's back (a delete marker
    // on top, the versions kept): gone from every listing, so nothing
    // below would miss a manifest or an index of them.
    // (Packs are not listed here: one missing is named below, and
    // `undelete` brings back packs with the rest.)
    if let Some(s3) = vault.backend().as_s3() {
        for dir in ["keys/", "snapshots/", "index/", "maps/"] {
            match s3.client.hidden_objects(dir) {
                Ok(hidden) => report.damaged_objects.extend(hidden.into_iter().map(|name| {
                    (
                        name,
                        "deleted on the store behind Cairn's back (a delete marker on top, the data kept): `cairn undelete` brings it back".to_string(),
                    )
                })),
                Err(e) => tracing::warn!("could not look for objects deleted on the store: {e}"),
            }
        }
    }
    let index = vault.index();
    report.damaged_objects.extend(index.damaged.iter().cloned());
    report.packs = index.packs.len();

    let stored: HashSet<String> = vault.backend().list("packs")?.into_iter().collect();
    let indexed: HashSet<String> = index.packs.iter().map(|p| pack_object(&p.id)).collect();
    report.unindexed_packs = stored.difference(&indexed).count();

    // Chunks that cannot be read back, with why.
    let mut bad: std::collections::HashMap<ChunkId, String> = Default::default();
    let mut bad_packs = BTreeSet::new();
    for p in &index.packs {
        let name = pack_object(&p.id);
        let reason = if !stored.contains(&name) {
            Some("pack is missing".to_string())
        } else {
            match vault.backend().size(&name) {
                Ok(s) if s < p.size => Some(format!("pack is truncated ({s} of {} bytes)", p.size)),
                Ok(_) => None,
                Err(e) => Some(e.to_string()),
            }
        };
        // On S3, what is served may be someone's version over Cairn's
        // (see `Vault::original_version`): one of the right size below it
        // is read instead (`--read-data` checks its bytes).
        let original_below = || {
            vault.backend().as_s3().is_some_and(|s3| {
                s3.client
                    .older_versions(&name)
                    .is_ok_and(|v| v.iter().any(|v| v.size == p.size))
            })
        };
        match reason {
            Some(_) if original_below() => vault.note_overwritten(&name),
            Some(r) => {
                report.damaged_objects.push((name.clone(), r));
                bad_packs.insert(p.id.clone());
            }
            None => {}
        }
    }
    for (id, loc) in &index.chunks {
        if bad_packs.contains(&index.packs[loc.pack as usize].id) {
            bad.insert(*id, "its pack is missing or truncated".into());
        }
    }

    if read_data {
        let total = index.packs.iter().map(|p| p.size).sum();
        let done = AtomicU64::new(0);
        let checked = AtomicU64::new(0);
        let bytes = AtomicU64::new(0);
        let results: Vec<PackCheck> = index
            .packs
            .par_iter()
            .filter(|p| !bad_packs.contains(&p.id))
            .map(|p| {
                let r = check_pack(vault, &p.id, &checked, &bytes);
                progress(done.fetch_add(p.size, Ordering::Relaxed) + p.size, total);
                r
            })
            .collect();
        for (chunks, obj) in results {
            for (id, why) in chunks {
                bad.insert(id, why);
            }
            report.damaged_objects.extend(obj);
        }
        report.chunks_checked = checked.into_inner();
        report.bytes_checked = bytes.into_inner();
    }

    let (snapshots, unreadable) = vault.snapshots()?;
    report.snapshots = snapshots.len() + unreadable.len();
    for (name, why) in unreadable {
        report.damaged_snapshots.push(DamagedSnapshot {
            id: name.trim_start_matches("snapshots/").to_string(),
            name: "?".into(),
            time: "?".into(),
            reasons: vec![format!("manifest unreadable: {why}")],
        });
    }
    for m in vault.missing_snapshots(&snapshots)? {
        report.damaged_snapshots.push(DamagedSnapshot {
            id: m.id,
            name: "?".into(),
            time: "?".into(),
            reasons: vec![format!(
                "manifest missing, though nothing forgot it (named by {}): deleted outside Cairn? Put it back from a copy of the vault or a replica; prune deletes nothing meanwhile",
                m.named_by
            )],
        });
    }
    for s in &snapshots {
        let reasons = check_snapshot(vault, s, &bad);
        if !reasons.is_empty() {
            report.damaged_snapshots.push(DamagedSnapshot {
                id: s.id.0.clone(),
                name: s.name.clone(),
                time: s.time.to_rfc3339(),
                reasons,
            });
        }
    }
    // Objects read from below someone else's version: the data is whole,
    // but the store no longer serves it (any other reader of the bucket
    // gets the other version) until they are put back.
    // And every write-once name the store serves someone else's version
    // of, read or not (the config and keys are read from this machine's
    // cache, when it has them).
    let mut overwritten = vault.overwritten();
    if let Some(s3) = vault.backend().as_s3() {
        match s3.client.overwritten() {
            Ok(found) => overwritten.extend(found.into_iter().map(|(name, _, _)| name)),
            Err(e) => tracing::warn!("could not look for objects overwritten on the store: {e}"),
        }
    }
    overwritten.sort();
    overwritten.dedup();
    for name in overwritten {
        if !report.damaged_objects.iter().any(|(n, _)| *n == name) {
            report.damaged_objects.push((
                name,
                "overwritten or deleted on the store behind Cairn's back; the version Cairn wrote is kept below (Object Lock) and was checked instead: `cairn undelete` puts it back on top".to_string(),
            ));
        }
    }
    Ok(report)
}

/// The damaged chunks of a pack (with why), and the pack itself when any.
type PackCheck = (Vec<(ChunkId, String)>, Option<Problem>);

/// Decrypts every chunk of one pack and checks it against its id.
fn check_pack(vault: &Vault, pack: &str, checked: &AtomicU64, bytes: &AtomicU64) -> PackCheck {
    let name = pack_object(pack);
    let idx = match vault.read_pack_index(&crate::index::index_object(pack)) {
        Ok(i) => i,
        Err(e) => return (vec![], Some((name, e.to_string()))),
    };
    // Counted once the pack's bytes are taken (the ones served, or
    // Cairn's own below them).
    let check = |data: &[u8]| {
        let (c, b) = (AtomicU64::new(0), AtomicU64::new(0));
        let bad = check_pack_bytes(vault, &name, &idx, data, &c, &b);
        (bad, c.into_inner(), b.into_inner())
    };
    let served = vault.backend().get(&name).map(|d| check(&d));
    let original = || {
        vault
            .original_version(&name, |d| match check(d) {
                (bad, c, b) if bad.is_empty() => Ok((bad, c, b)),
                _ => Err(crate::Error::damaged(&name, "not Cairn's")),
            })
            .map(|(r, _)| r)
    };
    let (bad, c, b) = match served {
        Ok(r) if r.0.is_empty() => r,
        Ok(r) => original().unwrap_or(r),
        Err(e) => match original() {
            Some(r) => r,
            None => {
                let all = idx
                    .entries
                    .iter()
                    .map(|e| (e.id, "pack unreadable".to_string()))
                    .collect();
                return (all, Some((name, e.to_string())));
            }
        },
    };
    checked.fetch_add(c, Ordering::Relaxed);
    bytes.fetch_add(b, Ordering::Relaxed);
    let obj = (!bad.is_empty()).then(|| {
        // The first chunk's reason without the pack's name a second time.
        let prefix = format!("damaged object {name}: ");
        let why = bad[0].1.strip_prefix(&prefix).unwrap_or(&bad[0].1);
        let first = format!("{} damaged chunk(s): {why}", bad.len());
        (name, first)
    });
    (bad, obj)
}

/// The chunks of `data` (the bytes of pack `name`) that are not what
/// `idx` says they are, with why: each is decrypted and hashed. A server
/// checks an agent's index with it before taking the index in, so that no
/// host can put other bytes under a chunk id every host deduplicates to.
pub fn pack_mismatches(
    vault: &Vault,
    name: &str,
    idx: &crate::index::PackIndex,
    data: &[u8],
) -> Vec<(ChunkId, String)> {
    check_pack_bytes(
        vault,
        name,
        idx,
        data,
        &AtomicU64::new(0),
        &AtomicU64::new(0),
    )
}

/// Decrypts every chunk of a pack's bytes and checks it against its id;
/// the damaged ones, with why.
pub(crate) fn check_pack_bytes(
    vault: &Vault,
    name: &str,
    idx: &crate::index::PackIndex,
    data: &[u8],
    checked: &AtomicU64,
    bytes: &AtomicU64,
) -> Vec<(ChunkId, String)> {
    let mut bad = Vec::new();
    for e in &idx.entries {
        let (start, end) = (e.offset as usize, e.offset as usize + e.len as usize);
        let why = match data.get(start..end) {
            None => Some("chunk lies past the end of its pack".to_string()),
            Some(sealed) => match codec::open(vault.cipher(), name, sealed, e.raw_len as usize) {
                Err(err) => Some(err.to_string()),
                Ok(plain) if vault.hasher().digest_chunk(&plain).0 != e.id => {
                    Some(format!("chunk {} does not match its id", e.id))
                }
                Ok(plain) => {
                    bytes.fetch_add(plain.len() as u64, Ordering::Relaxed);
                    None
                }
            },
        };
        checked.fetch_add(1, Ordering::Relaxed);
        if let Some(w) = why {
            bad.push((e.id, w));
        }
    }
    bad
}

fn check_snapshot(
    vault: &Vault,
    s: &Snapshot,
    bad: &std::collections::HashMap<ChunkId, String>,
) -> Vec<String> {
    let ids: Vec<ChunkId> = match s.source.kind {
        SourceKind::Disk => match vault.read_disk_map(s) {
            Ok(m) => m.chunks.iter().flatten().copied().collect(),
            Err(e) => return vec![format!("disk map unreadable: {e}")],
        },
        SourceKind::Directory => match vault.read_tree(s) {
            Ok(t) => t
                .entries
                .iter()
                .flat_map(|e| e.chunks.iter().map(|c| c.id))
                .collect(),
            Err(e) => return vec![format!("tree unreadable: {e}")],
        },
    };
    let index = vault.index();
    let mut reasons = Vec::new();
    let (mut missing, mut damaged) = (0usize, 0usize);
    let mut first = None;
    for id in ids.iter().collect::<HashSet<_>>() {
        if !index.contains(id) {
            missing += 1;
        } else if let Some(w) = bad.get(id) {
            damaged += 1;
            first.get_or_insert_with(|| w.clone());
        }
    }
    if missing > 0 {
        reasons.push(format!("{missing} chunk(s) missing from the vault"));
    }
    if damaged > 0 {
        reasons.push(format!(
            "{damaged} chunk(s) damaged ({})",
            first.unwrap_or_default()
        ));
    }
    reasons
}
