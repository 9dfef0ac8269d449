//! Vault-to-vault replication (local → S3, S3 → local, S3 → S3): copies
//! the snapshots the target lacks with exactly the objects they need and
//! the target lacks — packs, their indexes, maps, insight and scan
//! records, pins — manifests last, so an interrupted run leaves a target
//! that verifies and the next run picks up where it stopped. The target is
//! a replica (same vault id and keys), so chunks travel as they are.
//! Every pack is checked chunk by chunk before it is sent and read back
//! after; every sealed object is opened (authenticated) before it is sent.

use crate::error::{Error, Result};
use crate::index::{index_object, pack_object};
use crate::snapshot::{Snapshot, SourceKind};
use crate::vault::Vault;
use serde::Serialize;
use std::collections::{BTreeSet, HashSet};
use std::sync::atomic::AtomicU64;

#[derive(Debug, Default, Serialize)]
pub struct ReplicateReport {
    pub snapshots_copied: Vec<String>,
    /// Snapshots the target had already.
    pub snapshots_present: usize,
    pub objects_copied: usize,
    pub bytes_copied: u64,
    /// Objects needed that the target already held.
    pub objects_present: usize,
}

/// What `snap` needs besides its manifest, in a safe order.
fn needs(src: &Vault, snap: &Snapshot) -> Result<Vec<String>> {
    let chunks: Vec<crate::ChunkId> = match snap.source.kind {
        SourceKind::Disk => src
            .read_disk_map(snap)?
            .chunks
            .into_iter()
            .flatten()
            .collect(),
        SourceKind::Directory => src
            .read_tree(snap)?
            .entries
            .into_iter()
            .flat_map(|e| e.chunks.into_iter().map(|c| c.id))
            .collect(),
    };
    let index = src.index();
    let mut packs = BTreeSet::new();
    for id in &chunks {
        let (_, info) = index
            .get(id)
            .ok_or_else(|| Error::damaged(&snap.content, format!("chunk {id} is in no pack")))?;
        packs.insert(info.id.clone());
    }
    let mut out = Vec::new();
    for p in &packs {
        out.push(pack_object(p));
        out.push(index_object(p));
    }
    out.push(snap.content.clone());
    Ok(out)
}

/// `served` if it passes `check`, else the original version that does.
fn checked_or_original(
    src: &Vault,
    name: &str,
    served: Result<Vec<u8>>,
    check: impl Fn(&[u8]) -> Result<()>,
) -> Result<Vec<u8>> {
    let failed = match served {
        Ok(data) => match check(&data) {
            Ok(()) => return Ok(data),
            Err(e) => e,
        },
        Err(e) => e,
    };
    match src.original_version(name, &check) {
        Some(((), original)) => Ok(original),
        None => Err(failed),
    }
}

fn copy(
    src: &Vault,
    dst: &Vault,
    name: &str,
    done: &mut HashSet<String>,
    report: &mut ReplicateReport,
) -> Result<()> {
    if !done.insert(name.to_string()) {
        return Ok(());
    }
    if dst.backend().exists(name)? {
        report.objects_present += 1;
        return Ok(());
    }
    let served = src.backend().get(name);
    // The bytes copied are the bytes checked: what the store serves, or
    // (someone's version on top of it) Cairn's own below.
    let data = if let Some(pack) = name
        .strip_prefix("packs/")
        .and_then(|p| p.split('/').nth(1))
    {
        let idx = src.read_pack_index(&index_object(pack))?;
        let check = |data: &[u8]| -> Result<()> {
            let bad = crate::verify::check_pack_bytes(
                src,
                name,
                &idx,
                data,
                &AtomicU64::new(0),
                &AtomicU64::new(0),
            );
            match bad.first() {
                Some((_, why)) => Err(Error::damaged(name, format!("not replicated: {why}"))),
                None => Ok(()),
            }
        };
        checked_or_original(src, name, served, check)?
    } else if !name.starts_with("pins/") {
        // Sealed: opening it authenticates every byte.
        checked_or_original(src, name, served, |b| src.open_object(name, b).map(drop))?
    } else {
        served?
    };
    if name.starts_with("pins/") {
        dst.backend().put_marker(name)?;
    } else {
        dst.backend().put(name, &data)?;
    }
    // From the store itself, not the copy a cache kept when it was put.
    dst.backend().evict(name);
    let back = dst.backend().get(name)?;
    if blake3::hash(&back) != blake3::hash(&data) {
        return Err(Error::damaged(
            name,
            format!("reads back different from {}", dst.backend().describe()),
        ));
    }
    report.objects_copied += 1;
    report.bytes_copied += data.len() as u64;
    Ok(())
}

/// Copies the snapshots of `names` (all when empty) that `dst` lacks.
/// `on_snapshot` is told about each snapshot as it starts.
pub fn replicate(
    src: &Vault,
    dst: &Vault,
    names: &[String],
    on_snapshot: &mut dyn FnMut(&Snapshot),
) -> Result<ReplicateReport> {
    if src.config().id != dst.config().id {
        return Err(Error::Invalid(format!(
            "the target is another vault (id {}, not {}): replicate into a new location, which becomes a replica",
            dst.config().id,
            src.config().id
        )));
    }
    let (snaps, unreadable) = src.snapshots()?;
    if let Some((name, why)) = unreadable.first() {
        return Err(Error::Invalid(format!(
            "replication stopped: {name} is unreadable ({why}); run `cairn verify` on the source"
        )));
    }
    let pins = src.pins()?;
    let records = [src.backend().list("insight")?, src.backend().list("scan")?].concat();
    let mut report = ReplicateReport::default();
    let mut done = HashSet::new();
    for snap in snaps
        .iter()
        .filter(|s| names.is_empty() || names.contains(&s.name))
    {
        let manifest = Snapshot::object_name(&snap.id);
        if dst.backend().exists(&manifest)? {
            report.snapshots_present += 1;
            // Still bring over verdicts and pins made since.
        } else {
            on_snapshot(snap);
        }
        for name in needs(src, snap)? {
            copy(src, dst, &name, &mut done, &mut report)?;
        }
        for name in records.iter().filter(|n| {
            let file = n.rsplit('/').next().unwrap_or(n);
            file.split('.').next() == Some(snap.id.0.as_str())
        }) {
            copy(src, dst, name, &mut done, &mut report)?;
        }
        // A parent forgotten here is forgotten there too (else the
        // replica would show it as deleted behind Cairn's back).
        if let Some(parent) = &snap.parent {
            let note = crate::missing::gone_object(parent);
            if src.backend().exists(&note)? {
                copy(src, dst, &note, &mut done, &mut report)?;
            }
        }
        if pins.contains(&snap.id) {
            copy(
                src,
                dst,
                &format!("pins/{}", snap.id.0),
                &mut done,
                &mut report,
            )?;
        }
        if !dst.backend().exists(&manifest)? {
            copy(src, dst, &manifest, &mut done, &mut report)?;
            report.snapshots_copied.push(snap.id.0.clone());
        }
    }
    if names.iter().any(|n| !snaps.iter().any(|s| &s.name == n)) {
        return Err(Error::SnapshotNotFound(format!(
            "{:?}: no snapshots of that name in the source",
            names
                .iter()
                .filter(|n| !snaps.iter().any(|s| &s.name == *n))
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    dst.load_index()?;
    Ok(report)
}
