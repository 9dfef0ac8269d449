//! Forgetting snapshots and reclaiming space, within the rules of an
//! immutable vault: nothing is deleted before its retention ends, a pinned
//! snapshot is never forgotten, and a pack goes only when no snapshot
//! refers to any chunk in it.

use crate::error::{Error, Result};
use crate::hash::ChunkId;
use crate::index::{index_object, pack_object};
use crate::snapshot::{Snapshot, SourceKind};
use crate::vault::Vault;
use chrono::{DateTime, Datelike, Duration, Utc};
use serde::Serialize;
use std::collections::{BTreeMap, HashSet};

/// Names the period a time falls in (hour, day, week…).
type BucketFn = fn(&DateTime<Utc>) -> String;

#[derive(Clone, Debug, Default)]
pub struct KeepPolicy {
    pub last: Option<usize>,
    pub within: Option<Duration>,
    pub hourly: Option<usize>,
    pub daily: Option<usize>,
    pub weekly: Option<usize>,
    pub monthly: Option<usize>,
    pub yearly: Option<usize>,
}

impl KeepPolicy {
    /// True when the policy keeps nothing: no option given, or only
    /// counts of zero (`--keep-last 0` forgets everything too).
    pub fn is_empty(&self) -> bool {
        let none = |n: Option<usize>| n.is_none_or(|n| n == 0);
        none(self.last)
            && self.within.is_none_or(|d| d.is_zero())
            && none(self.hourly)
            && none(self.daily)
            && none(self.weekly)
            && none(self.monthly)
            && none(self.yearly)
    }
}

#[derive(Debug, Serialize)]
pub struct Decision {
    pub id: String,
    pub name: String,
    pub time: String,
    pub reasons: Vec<String>,
}

#[derive(Debug, Default, Serialize)]
pub struct ForgetReport {
    pub kept: Vec<Decision>,
    pub forgotten: Vec<Decision>,
    /// Would be forgotten, but their retention has not ended.
    pub retained: Vec<Decision>,
}

/// Which snapshots of each name the policy keeps, and why.
pub fn plan(
    snapshots: &[Snapshot],
    policy: &KeepPolicy,
    pinned: &HashSet<String>,
) -> Vec<(Snapshot, Vec<String>)> {
    let mut by_name: BTreeMap<&str, Vec<&Snapshot>> = BTreeMap::new();
    for s in snapshots {
        by_name.entry(&s.name).or_default().push(s);
    }
    let mut out = Vec::new();
    for (_, mut group) in by_name {
        group.sort_by_key(|s| std::cmp::Reverse(s.time)); // newest first
        let newest = group[0].time;
        let mut reasons: Vec<Vec<String>> = vec![Vec::new(); group.len()];
        for (i, s) in group.iter().enumerate() {
            if pinned.contains(&s.id.0) {
                reasons[i].push("pinned".into());
            }
            if policy.last.is_some_and(|n| i < n) {
                reasons[i].push("last".into());
            }
            if policy.within.is_some_and(|d| s.time >= newest - d) {
                reasons[i].push("within".into());
            }
        }
        let buckets: [(&str, Option<usize>, BucketFn); 5] = [
            ("hourly", policy.hourly, |t| {
                t.format("%Y-%m-%d %H").to_string()
            }),
            ("daily", policy.daily, |t| t.format("%Y-%m-%d").to_string()),
            ("weekly", policy.weekly, |t| {
                format!("{}-{}", t.iso_week().year(), t.iso_week().week())
            }),
            ("monthly", policy.monthly, |t| t.format("%Y-%m").to_string()),
            ("yearly", policy.yearly, |t| t.format("%Y").to_string()),
        ];
        for (label, n, bucket) in buckets {
            let Some(n) = n else { continue };
            let mut seen = HashSet::new();
            for (i, s) in group.iter().enumerate() {
                if seen.len() >= n {
                    break;
                }
                if seen.insert(bucket(&s.time)) {
                    reasons[i].push(label.into());
                }
            }
        }
        out.extend(group.into_iter().cloned().zip(reasons));
    }
    out
}

fn decision(s: &Snapshot, reasons: Vec<String>) -> Decision {
    Decision {
        id: s.id.0.clone(),
        name: s.name.clone(),
        time: s.time.to_rfc3339(),
        reasons,
    }
}

/// Applies `policy` to the snapshots (of `names`, or all), deleting the
/// manifests it does not keep and whose retention has ended.
pub fn forget(
    vault: &Vault,
    names: &[String],
    policy: &KeepPolicy,
    dry_run: bool,
) -> Result<ForgetReport> {
    if policy.is_empty() {
        return Err(Error::Invalid(
            "this policy keeps nothing: give at least one --keep-* option above zero (forgetting everything is not a policy)".into(),
        ));
    }
    let _lock = crate::lock::VaultLock::exclusive(vault.root())?;
    let (all, _) = vault.snapshots()?;
    // A mistyped name in a retention job must not pass as "nothing to
    // forget" for ever.
    if let Some(n) = names.iter().find(|n| !all.iter().any(|s| &s.name == *n)) {
        return Err(Error::SnapshotNotFound(format!(
            "{n:?}: there are no snapshots of that name"
        )));
    }
    let chosen: Vec<Snapshot> = all
        .into_iter()
        .filter(|s| names.is_empty() || names.contains(&s.name))
        .collect();
    let pinned: HashSet<String> = vault.pins()?.into_iter().map(|p| p.0).collect();
    let now = Utc::now();
    let mut report = ForgetReport::default();
    for (s, reasons) in plan(&chosen, policy, &pinned) {
        if !reasons.is_empty() {
            report.kept.push(decision(&s, reasons));
        } else if s.retain_until > now {
            report.retained.push(decision(
                &s,
                vec![format!(
                    "retained until {}",
                    s.retain_until.format("%Y-%m-%dT%H:%M:%SZ")
                )],
            ));
        } else {
            // On S3 the store's own lock may outlast the retention: the
            // snapshot is then forgotten by a note, and its manifest
            // deleted by a prune once the lock ends.
            // The note that forget removed it first: a manifest gone
            // without one was deleted behind Cairn's back (see
            // `missing`).
            if !dry_run {
                vault.mark_gone(&s.id)?;
                if !try_delete(vault, &Snapshot::object_name(&s.id))? {
                    vault.mark_forgotten(&s.id)?;
                }
            }
            report.forgotten.push(decision(&s, vec![]));
        }
    }
    Ok(report)
}

#[derive(Debug, Default, Serialize)]
pub struct PruneReport {
    pub packs_deleted: usize,
    pub bytes_deleted: u64,
    pub maps_deleted: usize,
    /// Derived records (insight, scan results) of snapshots that are gone.
    pub records_deleted: usize,
    /// Unreferenced packs kept because their retention has not ended.
    pub packs_retained: usize,
    pub bytes_retained: u64,
    /// Packs kept because a snapshot still uses some of their chunks.
    pub packs_in_use: usize,
    /// On S3: objects still in use whose Object Lock was extended.
    pub locks_renewed: usize,
    /// Chunks snapshots refer to that no index lists (an index object
    /// lost or damaged): packs without an index, which may hold them, are
    /// kept while there are any.
    pub chunks_missing: usize,
    /// Packs without an index kept for that reason.
    pub unindexed_kept: usize,
    /// On S3: uploads of killed backups (parts stored, no object) aborted.
    pub uploads_aborted: usize,
}

/// A multipart upload a prune saw this long before and still open belongs
/// to a backup that died (a pack goes up in seconds).
const STALE_UPLOAD_HOURS: i64 = 12;

/// Adds what snapshot `s` refers to: its chunks and its map or tree.
fn count_used(
    vault: &Vault,
    s: &Snapshot,
    used: &mut HashSet<ChunkId>,
    used_maps: &mut HashSet<String>,
) -> Result<()> {
    used_maps.insert(s.content.clone());
    match s.source.kind {
        SourceKind::Disk => used.extend(vault.read_disk_map(s)?.chunks.into_iter().flatten()),
        SourceKind::Directory => used.extend(
            vault
                .read_tree(s)?
                .entries
                .into_iter()
                .flat_map(|e| e.chunks.into_iter().map(|c| c.id)),
        ),
    }
    Ok(())
}

/// Deletes `name`; false when the store refuses because the object is
/// still under its own lock (S3 Object Lock outlives the vault's retention
/// by a margin), so it stays until a later prune.
fn try_delete(vault: &Vault, name: &str) -> Result<bool> {
    match vault.backend().delete(name) {
        Ok(()) => Ok(true),
        Err(Error::Io { source, .. })
            if source.kind() == std::io::ErrorKind::PermissionDenied
                && let Some(until) = lock_of(vault, name) =>
        {
            if until > Utc::now() {
                return Ok(false);
            }
            // The lock ended between the refusal and the look at it.
            vault.backend().delete(name)?;
            Ok(true)
        }
        Err(e) => Err(e),
    }
}

/// When the store's lock on `name` ends: only an object under a lock is
/// "retained" when its delete is refused; a refusal for any other reason
/// (credentials without delete rights) is an error the operator sees.
fn lock_of(vault: &Vault, name: &str) -> Option<chrono::DateTime<Utc>> {
    vault
        .backend()
        .as_s3()
        .and_then(|s3| s3.retain_until(name).ok().flatten())
}

/// Whether derived record `name` (see `prune`) belongs to snapshots that
/// are all still there.
fn record_live(name: &str, ids: &HashSet<&str>) -> bool {
    let file = name.rsplit('/').next().unwrap_or(name);
    let id = file.split('.').next().unwrap_or(file);
    let other = file.split_once(".vs-").map(|(_, o)| o);
    ids.contains(id) && other.is_none_or(|o| ids.contains(o))
}

/// Deletes packs and maps that no snapshot refers to and whose retention
/// has ended. Refuses to run when any manifest is unreadable, since it may
/// refer to anything.
pub fn prune(vault: &Vault, dry_run: bool) -> Result<PruneReport> {
    let _lock = crate::lock::VaultLock::exclusive(vault.root())?;
    vault.load_index()?;
    let (snapshots, unreadable) = vault.snapshots()?;
    if let Some((name, why)) = unreadable.first() {
        return Err(Error::Invalid(format!(
            "prune stopped: {name} is unreadable ({why}); run `cairn verify` first (a manifest that is lost for good: `cairn forget --missing` accepts that, then prune)"
        )));
    }
    // Manifests deleted outside Cairn (named still by a pin, a child or
    // a record): the data only they used looks unused, and deleting it
    // would make the loss final.
    if let Some(m) = vault.missing_snapshots(&snapshots)?.first() {
        return Err(Error::Invalid(format!(
            "prune stopped: the manifest of snapshot {} is missing, though nothing forgot it (named by {}): deleted outside Cairn? Put it back from a copy of the vault or a replica; if it is lost, `cairn forget --missing` accepts that, then prune",
            &m.id[..8],
            m.named_by
        )));
    }
    // Manifests someone deleted on the store (delete markers on top,
    // versions kept): the data they name looks unused, and deleting it
    // would make the deletion final. Nothing is pruned until they are
    // back. (Hidden indexes and maps stop prune by themselves: chunks no
    // index lists keep every unindexed pack, a map that cannot be read
    // stops it.) A store that will not list versions (a key without
    // s3:ListBucketVersions) is said, and prune goes on as before.
    if let Some(s3) = vault.backend().as_s3() {
        match s3.client.hidden_objects("snapshots/") {
            Ok(hidden) => {
                if let Some(first) = hidden.first() {
                    return Err(Error::Invalid(format!(
                        "prune stopped: {} snapshot manifest(s) were deleted on the store behind Cairn's back (delete markers on top, e.g. {first}); `cairn undelete` brings them back, then prune",
                        hidden.len()
                    )));
                }
            }
            Err(e) => tracing::warn!("could not look for manifests deleted on the store: {e}"),
        }
    }
    // Forgotten snapshots whose manifests were locked: deleted now if
    // their lock has ended, and their notes with them.
    if !dry_run {
        for id in vault.forgotten() {
            let id = crate::SnapshotId(id);
            if try_delete(vault, &Snapshot::object_name(&id))? {
                try_delete(vault, &crate::vault::forgotten_object(&id))?;
            }
        }
    }
    let mut used: HashSet<ChunkId> = HashSet::new();
    let mut used_maps: HashSet<String> = HashSet::new();
    let mut counted: HashSet<crate::SnapshotId> = HashSet::new();
    for s in &snapshots {
        count_used(vault, s, &mut used, &mut used_maps)?;
        counted.insert(s.id.clone());
    }
    // What a backup on another host finished while the above was read
    // counts too (on S3 no lock spans hosts; Object Lock's margin is the
    // backstop): the manifests are listed again before anything goes.
    let forgotten = vault.forgotten();
    let mut recount = |used: &mut HashSet<ChunkId>,
                       used_maps: &mut HashSet<String>|
     -> Result<()> {
        if dry_run {
            return Ok(());
        }
        // (Names only, and only new manifests read: this runs before
        // every deletion.)
        for name in vault.backend().list("snapshots")? {
            let id = crate::SnapshotId(name.rsplit('/').next().unwrap_or(&name).to_string());
            if !forgotten.contains(&id.0) && counted.insert(id) {
                let s = vault.read_snapshot(&name).map_err(|e| {
                    Error::Invalid(format!(
                        "{name}, written during this prune, cannot be read ({e}): nothing more was deleted; run prune again"
                    ))
                })?;
                count_used(vault, &s, used, used_maps)?;
            }
        }
        Ok(())
    };
    // A chunk a snapshot needs that no index lists: an index object lost
    // or damaged, whose pack would then look unindexed — unused — and be
    // deleted below with the only copy of that data. (On S3 a backup on
    // another host may have stored its index since the indexes were
    // loaded: they are loaded again before anything counts as missing.)
    let count_missing = || {
        let index = vault.index();
        used.iter().filter(|c| !index.contains(c)).count()
    };
    let mut missing = count_missing();
    if missing > 0 {
        vault.load_index()?;
        missing = count_missing();
    }
    let now = Utc::now().timestamp();
    let mut report = PruneReport {
        chunks_missing: missing,
        ..Default::default()
    };
    let index_names = vault.backend().list("index")?;
    let mut indexed_packs = HashSet::new();
    for name in index_names {
        let idx = vault.read_pack_index(&name)?;
        indexed_packs.insert(pack_object(&idx.pack));
        let size = vault.backend().size(&pack_object(&idx.pack)).unwrap_or(0);
        let in_use = |used: &HashSet<ChunkId>| idx.entries.iter().any(|e| used.contains(&e.id));
        // About to go: counted again against the manifests there now.
        let in_use = in_use(&used)
            || (idx.retain_until <= now && {
                recount(&mut used, &mut used_maps)?;
                in_use(&used)
            });
        if in_use {
            report.packs_in_use += 1;
        } else if idx.retain_until > now {
            report.packs_retained += 1;
            report.bytes_retained += size;
        } else {
            // Index first: a crash in between leaves an unindexed pack
            // (harmless), never an index that points at nothing.
            let deleted = dry_run
                || (try_delete(vault, &index_object(&idx.pack))?
                    && try_delete(vault, &pack_object(&idx.pack))?);
            if !deleted {
                report.packs_retained += 1;
                report.bytes_retained += size;
                continue;
            }
            report.packs_deleted += 1;
            report.bytes_deleted += size;
        }
    }
    // Packs whose index was never written (a backup killed in between):
    // nothing can refer to them.
    let retention = std::time::Duration::from_secs(vault.config().retention_secs);
    for name in vault.backend().list("packs")? {
        if indexed_packs.contains(&name) {
            continue;
        }
        if missing > 0 {
            report.unindexed_kept += 1;
            report.packs_retained += 1;
            report.bytes_retained += vault.backend().size(&name).unwrap_or(0);
            continue;
        }
        let written = vault.backend().modified(&name)?;
        let size = vault.backend().size(&name).unwrap_or(0);
        if written.elapsed().unwrap_or_default() >= retention {
            // Indexed since the indexes were listed: by a backup on another
            // host of an S3 vault (no lock spans hosts), written out
            // before its index. Deleting it would leave an index that
            // points at nothing.
            let id = name.rsplit('/').next().unwrap_or_default();
            if vault.backend().exists(&index_object(id))? {
                report.packs_retained += 1;
                report.bytes_retained += size;
                continue;
            }
            if !dry_run && !try_delete(vault, &name)? {
                report.packs_retained += 1;
                report.bytes_retained += size;
                continue;
            }
            report.bytes_deleted += size;
            report.packs_deleted += 1;
        } else {
            report.packs_retained += 1;
            report.bytes_retained += size;
        }
    }
    // Maps and records too wait out the retention: a map an agent sent
    // just before its manifest is referenced by nothing yet.
    let aged = |name: &str| -> Result<bool> {
        Ok(vault
            .backend()
            .modified(name)?
            .elapsed()
            .unwrap_or_default()
            >= retention)
    };
    for name in vault.backend().list("maps")? {
        if !used_maps.contains(&name) && aged(&name)? && {
            recount(&mut used, &mut used_maps)?;
            !used_maps.contains(&name)
        } {
            if !dry_run && !try_delete(vault, &name)? {
                continue;
            }
            report.maps_deleted += 1;
        }
    }
    // Derived records are named after their snapshot (`insight/v2/<id>`,
    // `insight/v1/<id>.list`, `scan/v2/<id>.<profile>`) and go when it
    // goes; a record comparing it with another snapshot
    // (`insight/v2/<id>.vs-<other id>`) goes when either does.
    let ids: HashSet<&str> = snapshots.iter().map(|s| s.id.0.as_str()).collect();
    let derived = [
        vault.backend().list("insight")?,
        vault.backend().list("scan")?,
    ]
    .concat();
    for name in derived {
        if !record_live(&name, &ids) && aged(&name)? {
            // A record written later than its snapshot (a scan run weeks
            // after) may still be under its own lock: a later prune.
            if !dry_run && !try_delete(vault, &name)? {
                continue;
            }
            report.records_deleted += 1;
        }
    }
    // Parts of uploads a killed backup left: billed, and nobody's.
    if !dry_run && let Some(s3) = vault.backend().as_s3() {
        let age = std::env::var("CAIRN_S3_STALE_UPLOAD_SECS")
            .ok()
            .and_then(|v| v.parse::<i64>().ok())
            .unwrap_or(STALE_UPLOAD_HOURS * 3600);
        report.uploads_aborted = s3
            .client
            .abort_stale_uploads(&vault.root().join("uploads-seen"), age)?;
    }
    // Object Lock on what stays: extended before it runs out, so a
    // snapshot kept longer than the retention (pinned, or kept by policy)
    // stays protected by the store itself.
    if !dry_run
        && vault.config().object_lock
        && let Some(s3) = vault.backend().as_s3()
    {
        let mut keep: Vec<String> = vec!["config".into()];
        keep.extend(vault.backend().list("keys")?);
        keep.extend(snapshots.iter().map(|s| Snapshot::object_name(&s.id)));
        keep.extend(used_maps.iter().cloned());
        // One object that cannot be read or renewed does not stop the
        // rest from being renewed; the failures are reported at the end.
        let mut failed: Vec<String> = Vec::new();
        for name in vault.backend().list("index")? {
            match vault.read_pack_index(&name) {
                Ok(idx) if idx.entries.iter().any(|e| used.contains(&e.id)) => {
                    keep.push(pack_object(&idx.pack));
                    keep.push(name);
                }
                Ok(_) => {}
                Err(e) => failed.push(format!("{name}: {e}")),
            }
        }
        keep.extend(
            [
                vault.backend().list("insight")?,
                vault.backend().list("scan")?,
            ]
            .concat()
            .into_iter()
            .filter(|n| record_live(n, &ids)),
        );
        let full = vault.config().retention_secs as i64 + crate::s3::lock_margin_secs();
        let now = Utc::now();
        // Where someone stacked a version (or a delete marker) on one of
        // Cairn's objects, Cairn reads the one it wrote, below: that is the
        // one kept locked.
        let originals = s3.client.originals("")?;
        for name in keep {
            let version = originals.get(&name).map(String::as_str);
            let renewed = s3.retain_until_of(&name, version).and_then(|until| {
                if until.is_none_or(|u| (u - now).num_seconds() < full / 2) {
                    s3.extend_lock_of(&name, version, now + chrono::Duration::seconds(full))?;
                    return Ok(true);
                }
                Ok(false)
            });
            match renewed {
                Ok(true) => report.locks_renewed += 1,
                Ok(false) => {}
                Err(e) => failed.push(format!("{name}: {e}")),
            }
        }
        if let Some(first) = failed.first() {
            return Err(Error::Invalid(format!(
                "the locks of {} objects in use could not be renewed (the others were; first: {first}); run prune again",
                failed.len()
            )));
        }
    }
    if !dry_run {
        vault.load_index()?;
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(name: &str, id: &str, time: &str) -> Snapshot {
        crate::snapshot::test_snapshot(name, id, time)
    }

    /// Ids kept by `policy`, oldest first.
    fn kept(snaps: &[Snapshot], policy: KeepPolicy, pinned: &[&str]) -> Vec<String> {
        let pinned: HashSet<String> = pinned.iter().map(|p| p.to_string()).collect();
        let mut k: Vec<(String, String)> = plan(snaps, &policy, &pinned)
            .into_iter()
            .filter(|(_, r)| !r.is_empty())
            .map(|(s, _)| (s.time.to_rfc3339(), s.id.0))
            .collect();
        k.sort();
        k.into_iter().map(|(_, id)| id).collect()
    }

    /// Two snapshots a day for ten days (02:00 and 14:00), then one more
    /// on the last day.
    fn history() -> Vec<Snapshot> {
        let mut v = Vec::new();
        for d in 1..=10 {
            v.push(at(
                "vm",
                &format!("d{d}a"),
                &format!("2026-03-{d:02}T02:00:00Z"),
            ));
            v.push(at(
                "vm",
                &format!("d{d}b"),
                &format!("2026-03-{d:02}T14:00:00Z"),
            ));
        }
        v.push(at("vm", "d10c", "2026-03-10T20:00:00Z"));
        v
    }

    #[test]
    fn keep_daily_keeps_the_newest_of_each_of_the_last_n_days() {
        let policy = KeepPolicy {
            daily: Some(3),
            ..Default::default()
        };
        assert_eq!(kept(&history(), policy, &[]), ["d8b", "d9b", "d10c"]);
    }

    #[test]
    fn keep_within_counts_back_from_the_newest_snapshot() {
        let policy = KeepPolicy {
            within: Some(Duration::hours(30)),
            ..Default::default()
        };
        // Newest 03-10 20:00; 30 h back is 03-09 14:00, which is kept.
        assert_eq!(
            kept(&history(), policy, &[]),
            ["d9b", "d10a", "d10b", "d10c"]
        );
    }

    #[test]
    fn keep_weekly_and_monthly_use_calendar_periods_and_policies_add_up() {
        // 2026-03-01 is a Sunday: ISO weeks 9 (03-01), 10 (03-02..08), 11.
        let weekly = KeepPolicy {
            weekly: Some(2),
            ..Default::default()
        };
        assert_eq!(kept(&history(), weekly, &[]), ["d8b", "d10c"]);
        let monthly = KeepPolicy {
            monthly: Some(5),
            ..Default::default()
        };
        assert_eq!(kept(&history(), monthly, &[]), ["d10c"], "one month only");
        let both = KeepPolicy {
            last: Some(2),
            weekly: Some(3),
            ..Default::default()
        };
        assert_eq!(
            kept(&history(), both, &["d3a"]),
            ["d1b", "d3a", "d8b", "d10b", "d10c"],
            "last 2, the newest of three weeks, and the pinned one"
        );
    }

    #[test]
    fn each_name_is_judged_on_its_own() {
        let mut s = history();
        s.push(at("db", "x1", "2026-01-01T00:00:00Z"));
        s.push(at("db", "x2", "2026-01-05T00:00:00Z"));
        let policy = KeepPolicy {
            last: Some(1),
            ..Default::default()
        };
        assert_eq!(kept(&s, policy, &[]), ["x2", "d10c"]);
    }
}
