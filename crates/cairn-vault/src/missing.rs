//! Snapshots whose manifests are gone though nothing forgot them.
//!
//! `forget` leaves a sealed note under `gone/` before it deletes a
//! manifest, so a manifest deleted any other way (by hand, by someone
//! with write access to the vault's folder, lost with a disk) can be told
//! from a forgotten one wherever the vault still shows signs of the
//! snapshot: a pin, a manifest naming it as parent, an insight or scan
//! record. Without this, such a snapshot would just vanish from every
//! listing, `verify` would pass, and prune would delete the data only it
//! used — making the deletion final.

use crate::Result;
use crate::snapshot::{Snapshot, SnapshotId};
use crate::vault::Vault;
use std::collections::{BTreeMap, HashSet};

/// The note `forget` leaves for a snapshot it removed.
pub fn gone_object(id: &SnapshotId) -> String {
    format!("gone/{}", id.0)
}

/// A snapshot the vault still shows signs of, without its manifest.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Missing {
    pub id: String,
    /// What still names it (the first sign found).
    pub named_by: String,
}

fn looks_like_id(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

impl Vault {
    /// Leaves the note that `id` was forgotten (see the module).
    pub fn mark_gone(&self, id: &SnapshotId) -> Result<()> {
        self.put_sealed(&gone_object(id), id.0.as_bytes())?;
        Ok(())
    }

    /// The snapshots named by a pin, by a manifest of `snapshots` (the
    /// vault's, as listed) as its parent, or by an insight or scan
    /// record, whose manifest is not there and which no `forget` removed.
    pub fn missing_snapshots(&self, snapshots: &[Snapshot]) -> Result<Vec<Missing>> {
        let mut signs: BTreeMap<String, String> = BTreeMap::new();
        let mut sign = |id: &str, what: String| {
            if looks_like_id(id) {
                signs.entry(id.to_string()).or_insert(what);
            }
        };
        for p in self.pins()? {
            sign(&p.0, "its pin".into());
        }
        for s in snapshots {
            if let Some(p) = &s.parent {
                sign(&p.0, format!("the parent of {}@{}", s.name, s.id.short()));
            }
        }
        for dir in ["insight", "scan"] {
            for name in self.backend().list(dir)? {
                // `insight/v2/<id>`, `scan/v2/<id>.<profile>`, …: the
                // record's own snapshot (a `.vs-<other>` comparison may
                // name a snapshot of a source not replicated here).
                let file = name.rsplit('/').next().unwrap_or(&name);
                let id = file.split('.').next().unwrap_or(file);
                sign(id, format!("its {dir} record"));
            }
        }
        if signs.is_empty() {
            return Ok(Vec::new());
        }
        let present: HashSet<String> = self
            .backend()
            .list("snapshots")?
            .into_iter()
            .filter_map(|n| n.rsplit('/').next().map(str::to_string))
            .collect();
        signs.retain(|id, _| !present.contains(id));
        if signs.is_empty() {
            return Ok(Vec::new());
        }
        // (Sealed notes: only a holder of the vault key leaves one.)
        let (gone, forgotten) = (self.sealed_notes("gone"), self.forgotten());
        Ok(signs
            .into_iter()
            .filter(|(id, _)| !gone.contains(id) && !forgotten.contains(id))
            .map(|(id, named_by)| Missing { id, named_by })
            .collect())
    }

    /// Accepts as lost the snapshots [`Vault::missing_snapshots`] names
    /// (their manifests cannot be put back): each gets the note `forget`
    /// leaves, so prune may delete what only they used.
    pub fn accept_missing(&self) -> Result<Vec<Missing>> {
        let _lock = crate::lock::VaultLock::exclusive(self.root())?;
        let (snapshots, unreadable) = self.snapshots()?;
        let mut missing = self.missing_snapshots(&snapshots)?;
        for m in &missing {
            self.mark_gone(&SnapshotId(m.id.clone()))?;
        }
        // Manifests that are there but cannot be read (damaged, or junk
        // someone put under a manifest's name, locked for years): prune
        // stops on them too, and accepting their loss is forgetting them
        // (prune deletes them once their lock ends). Ones deleted on the
        // store (a delete marker on top) are not there: `cairn undelete`
        // brings those back instead.
        for (name, why) in unreadable {
            let file = name.rsplit('/').next().unwrap_or(&name);
            let id = file.split('.').next().unwrap_or(file);
            if !looks_like_id(id) || !self.backend().exists(&name)? {
                continue;
            }
            self.mark_forgotten(&SnapshotId(id.to_string()))?;
            missing.push(Missing {
                id: id.to_string(),
                named_by: format!("its manifest, which cannot be read: {why}"),
            });
        }
        Ok(missing)
    }
}
