//! Cairn's snapshot insight: for every snapshot, how much changed and how
//! that change looks — from ingest metrics and from the files inside — a
//! score with reasons, a verdict, and the clean point to recover from.
//!
//! Facts per snapshot (`signals`) are computed once and stored beside the
//! snapshot as `insight/v<N>/<snapshot id>` (write-once, like everything
//! in the vault; the manifest itself never changes), and once more as
//! `….vs-<other id>` when the snapshot they compared it with is forgotten
//! (see `timeline`). Scores depend on history, so they are replayed in
//! time order whenever a timeline is asked for — cheap, as the facts are
//! stored. ([`load`] gives the first record: what the backup saw.)

pub mod content;
pub mod filelist;
pub mod files;
pub mod notes;
pub mod score;
pub mod signals;
pub mod svg;

pub use files::{Damage, FileSignals, Finding};
pub use score::{Assessment, CleanPoint, Verdict};
pub use signals::Signals;

use cairn_vault::{Snapshot, SnapshotId, Vault};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::Arc;

pub type Result<T> = std::result::Result<T, cairn_vault::Error>;

/// What the stored scans say, for [`Timeline::heed_verification`]: the
/// snapshots found compromised (with what was found), and those found
/// clean.
#[derive(Clone, Debug, Default)]
pub struct Verification {
    pub compromised: HashMap<SnapshotId, String>,
    pub cleared: std::collections::HashSet<SnapshotId>,
}

/// What is stored per snapshot.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Record {
    pub signals: Signals,
    /// The assessment made when the record was written (with the history
    /// known then).
    pub assessment: Assessment,
}

pub fn record_name(id: &SnapshotId) -> String {
    format!("insight/v{}/{}", signals::SIGNALS_VERSION, id.0)
}

/// The record of snapshot `id` compared with `base` in place of its
/// recorded parent, which was forgotten since.
fn rebased_name(id: &SnapshotId, base: &SnapshotId) -> String {
    format!("{}.vs-{}", record_name(id), base.0)
}

/// The stored record of a snapshot, if there is a readable one.
pub fn load(vault: &Vault, id: &SnapshotId) -> Option<Record> {
    load_at(vault, &record_name(id), id)
}

fn load_at(vault: &Vault, name: &str, id: &SnapshotId) -> Option<Record> {
    if !vault.backend().exists(name).ok()? {
        return None;
    }
    let bytes = vault.read_object(name).ok()?;
    let r: Record = serde_json::from_slice(&bytes).ok()?;
    (r.signals.snapshot == *id && r.signals.version == signals::SIGNALS_VERSION).then_some(r)
}

fn store(vault: &Vault, name: &str, r: &Record) -> Result<()> {
    let json = serde_json::to_vec(r).expect("json");
    vault.put_sealed(name, &json)?;
    Ok(())
}

/// One snapshot on the timeline.
#[derive(Clone, Debug)]
pub struct Entry {
    pub snapshot: Snapshot,
    pub signals: Signals,
    pub assessment: Assessment,
}

#[derive(Clone, Debug)]
pub struct Timeline {
    pub name: String,
    pub entries: Vec<Entry>,
    pub clean_point: Option<CleanPoint>,
    /// Snapshot manifests of the vault that could not be read (name,
    /// why): any of them may be a newer snapshot of this source, left out.
    pub unreadable: Vec<(String, String)>,
}

impl Timeline {
    pub fn snapshot_ids(&self) -> impl Iterator<Item = &SnapshotId> {
        self.entries.iter().map(|e| &e.snapshot.id)
    }

    pub fn last_clean(&self) -> Option<&Entry> {
        self.clean_point.as_ref().map(|c| &self.entries[c.index])
    }

    /// Moves the clean point back past what verification found: a
    /// snapshot a scan found compromised is no clean point, and after the
    /// first one only a snapshot a scan found clean since is (a backdoor
    /// planted without encrypting anything leaves insight nothing to see,
    /// and stays until removed). Unchanged when insight's own clean point
    /// comes before the first compromised snapshot.
    pub fn heed_verification(&mut self, v: &Verification) {
        let Some(first_bad) = self
            .entries
            .iter()
            .position(|e| v.compromised.contains_key(&e.snapshot.id))
        else {
            return;
        };
        let Some(c) = &self.clean_point else {
            return;
        };
        if c.index < first_bad {
            return;
        }
        let confidence = c.confidence;
        let bad = &self.entries[first_bad].snapshot;
        let found = format!(
            "verification found {}@{} compromised ({})",
            bad.name,
            bad.id.short(),
            v.compromised[&bad.id]
        );
        self.clean_point = self.entries[..=c.index]
            .iter()
            .enumerate()
            .rposition(|(i, e)| {
                e.assessment.verdict == Verdict::Clean
                    && !v.compromised.contains_key(&e.snapshot.id)
                    && (i < first_bad || v.cleared.contains(&e.snapshot.id))
            })
            .map(|index| CleanPoint {
                index,
                reason: if index < first_bad {
                    format!("{found}; the newest snapshot before it that insight calls clean")
                } else {
                    format!("{found}; this one, scanned clean since, is the newest that passes")
                },
                confidence,
            });
    }

    /// The JSON scripts read (the shape `cairn timeline --json` prints).
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::json;
        let snaps: Vec<serde_json::Value> = self
            .entries
            .iter()
            .map(|e| {
                let f = e.signals.files.clone().unwrap_or_default();
                json!({
                    "id": e.snapshot.id.0,
                    "time": e.snapshot.time,
                    "changed_bytes": e.signals.changed_bytes,
                    "change_rate": e.signals.change_rate,
                    "entropy": (e.signals.entropy * 100.0).round() / 100.0,
                    "high_entropy_share": (e.signals.high_entropy_share * 1000.0).round() / 1000.0,
                    "files": {
                        "added": f.added,
                        "modified": f.modified,
                        "deleted": f.deleted,
                        "renamed": f.renamed,
                    },
                    "score": e.assessment.score,
                    "verdict": e.assessment.verdict,
                    "reasons": e.assessment.reasons,
                    "findings": f.findings,
                    "accumulated_damage": e.assessment.accumulated_damage,
                    "filesystem_error": e.signals.fs_error,
                })
            })
            .collect();
        json!({
            "name": self.name,
            "snapshots": snaps,
            "last_clean": self.last_clean().map(|e| e.snapshot.id.0.clone()),
            "clean_point": self.clean_point.as_ref().map(|c| json!({
                "id": self.entries[c.index].snapshot.id.0,
                "time": self.entries[c.index].snapshot.time,
                "reason": c.reason,
                "confidence": c.confidence,
            })),
        })
    }
}

/// The snapshot a snapshot is compared with: its recorded parent when
/// it still exists, else the previous snapshot of the same name.
fn parent_of<'a>(
    all: &'a HashMap<SnapshotId, &'a Snapshot>,
    ordered: &[&'a Snapshot],
    i: usize,
) -> Option<&'a Snapshot> {
    ordered[i]
        .parent
        .as_ref()
        .and_then(|p| all.get(p).copied())
        .or_else(|| i.checked_sub(1).map(|j| ordered[j]))
}

/// Earlier snapshots looked at for one whose files were read whole.
const MAX_BASE_LOOKBACK: usize = 8;

/// What snapshot `i` is compared with: its parent, unless the parent's
/// files could not all be read — then the newest of the few before it that
/// were read whole. Otherwise a folder broken one day and repaired the
/// next (or a filesystem unreadable for a day) would hide what was done to
/// the files in it meanwhile: each day alone compares nothing there.
fn comparison_base<'a>(
    all: &'a HashMap<SnapshotId, &'a Snapshot>,
    ordered: &[&'a Snapshot],
    computed: &[Entry],
    i: usize,
) -> Option<&'a Snapshot> {
    let parent = parent_of(all, ordered, i)?;
    let whole = |s: &Signals| s.fs_error.is_none() && !s.partial_walk;
    let signals_of = |id: &SnapshotId| computed.iter().rev().find(|e| e.snapshot.id == *id);
    match signals_of(&parent.id) {
        Some(e) if !whole(&e.signals) => computed
            .iter()
            .rev()
            .filter(|e| e.snapshot.time < parent.time)
            .take(MAX_BASE_LOOKBACK)
            .find(|e| whole(&e.signals))
            .and_then(|e| all.get(&e.snapshot.id).copied())
            .or(Some(parent)),
        _ => Some(parent),
    }
}

/// The timeline of source `name`: facts for every snapshot (computing and
/// storing those not yet stored), scores replayed in time order, and the
/// clean point. `on_compute` is told about each snapshot analysed now.
pub fn timeline(
    vault: &Arc<Vault>,
    name: &str,
    on_compute: &mut dyn FnMut(&Snapshot),
) -> Result<Timeline> {
    timeline_with_source(vault, name, None, on_compute)
}

/// [`timeline`], telling it where the newest snapshot was just read from
/// (see [`signals::compute`]).
fn timeline_with_source(
    vault: &Arc<Vault>,
    name: &str,
    latest_source: Option<&std::path::Path>,
    on_compute: &mut dyn FnMut(&Snapshot),
) -> Result<Timeline> {
    let (all, unreadable) = vault.snapshots()?;
    let ordered: Vec<&Snapshot> = all.iter().filter(|s| s.name == name).collect();
    if ordered.is_empty() {
        return Err(cairn_vault::Error::SnapshotNotFound(format!(
            "{name:?}: no snapshots of that name{}",
            if name.contains('@') {
                " (this takes a source's NAME alone, without @…)"
            } else {
                ""
            }
        )));
    }
    let by_id: HashMap<SnapshotId, &Snapshot> = all.iter().map(|s| (s.id.clone(), s)).collect();
    // Gone from the vault (forgotten), not merely unreadable for now.
    let forgotten = |id: &SnapshotId| {
        !by_id.contains_key(id)
            && !unreadable
                .iter()
                .any(|(n, _)| *n == Snapshot::object_name(id))
    };
    let mut assessor = score::Assessor::new();
    let mut entries = Vec::with_capacity(ordered.len());
    // Snapshots with a forgotten snapshot among their ancestors: what
    // those found went with them.
    let mut thinned: std::collections::HashSet<SnapshotId> = Default::default();
    for (i, snap) in ordered.iter().enumerate() {
        let base = comparison_base(&by_id, &ordered, &entries, i);
        if snap
            .parent
            .as_ref()
            .is_some_and(|p| forgotten(p) || thinned.contains(p))
        {
            thinned.insert(snap.id.clone());
        }
        let mut name = record_name(&snap.id);
        let mut record = load_at(vault, &name, &snap.id);
        // The assessment made when the snapshot was backed up, with every
        // snapshot before it still there.
        let first_judged = record
            .as_ref()
            .map(|r| r.assessment.clone())
            .filter(|_| thinned.contains(&snap.id));
        // A record compared with a snapshot forgotten since (its parent,
        // or the one before it read whole) describes a change the
        // timeline no longer holds, and what the forgotten snapshots found
        // went with them (a slow encryption's earlier days): when its
        // parent is gone too, the snapshot is compared again with the one
        // before it that is left, once, and that record kept beside the
        // first. (After a forget that thins a history: once for each
        // snapshot kept.)
        if let (Some(r), Some(b)) = (&record, base)
            && r.signals.parent.as_ref().is_some_and(forgotten)
            && snap.parent.as_ref().is_some_and(forgotten)
        {
            name = rebased_name(&snap.id, &b.id);
            record = load_at(vault, &name, &snap.id)
                .filter(|r| r.signals.parent.as_ref() == Some(&b.id));
        }
        let (signals, stored) = match record {
            Some(r) => (r.signals, true),
            None => {
                on_compute(snap);
                (
                    signals::compute(
                        vault,
                        snap,
                        base,
                        latest_source.filter(|_| i + 1 == ordered.len()),
                    ),
                    false,
                )
            }
        };
        let mut assessment = assessor.assess(&signals);
        // Replayed without the snapshots forgotten since, a history loses
        // what they found (the encryption that began three snapshots
        // back): the verdict never gets better for it. A snapshot whose
        // backup said compromised stays so, whatever was forgotten.
        if let Some(then) = first_judged
            && then.verdict.rank() > assessment.verdict.rank()
        {
            let mut reasons = then.reasons.clone();
            reasons.push(format!(
                "judged {} when backed up, against snapshots forgotten since",
                then.verdict.as_str()
            ));
            assessor.overrule(then.verdict);
            assessment = score::Assessment { reasons, ..then };
        }
        if !stored {
            store(
                vault,
                &name,
                &Record {
                    signals: signals.clone(),
                    assessment: assessment.clone(),
                },
            )?;
        }
        entries.push(Entry {
            snapshot: (*snap).clone(),
            signals,
            assessment,
        });
    }
    let seq: Vec<(&Signals, &Assessment)> = entries
        .iter()
        .map(|e| (&e.signals, &e.assessment))
        .collect();
    let clean_point = score::clean_point(&seq);
    Ok(Timeline {
        unreadable,
        name: name.to_string(),
        entries,
        clean_point,
    })
}

/// What a backup reports after insight looked at its snapshot.
#[derive(Clone, Debug)]
pub struct Outcome {
    pub timeline: Timeline,
    /// The clean point pinned now (it was not pinned before).
    pub pinned: Option<SnapshotId>,
}

impl Outcome {
    pub fn latest(&self) -> &Entry {
        self.timeline
            .entries
            .last()
            .expect("a timeline has entries")
    }
}

/// Scores the newest snapshot of `name` (after a backup of `source`) and,
/// when it or an earlier one is not clean (by insight, or by what
/// `verified` says the stored scans of the timeline's snapshots found,
/// see [`Timeline::heed_verification`]), pins the clean point so prune
/// can never evict it.
pub fn assess_latest(
    vault: &Arc<Vault>,
    name: &str,
    source: Option<&std::path::Path>,
    verified: impl FnOnce(&Timeline) -> Verification,
) -> Result<Outcome> {
    let mut timeline = timeline_with_source(vault, name, source, &mut |_| {})?;
    timeline.heed_verification(&verified(&timeline));
    let mut pinned = None;
    if let Some(c) = &timeline.clean_point
        && c.index + 1 < timeline.entries.len()
        && let Some(clean) = timeline.last_clean()
        && !vault.pins()?.contains(&clean.snapshot.id)
    {
        vault.pin(&clean.snapshot.id)?;
        pinned = Some(clean.snapshot.id.clone());
    }
    Ok(Outcome { timeline, pinned })
}
