//! What this machine knows of the object locks in an S3 vault: for each
//! object whose lock it extended or saw, the date the lock runs to.
//!
//! A backup that reuses old packs makes sure they stay locked as long as
//! its own snapshot (`Vault::lock_reused`); it asked the store about every
//! such pack on every backup, a round trip each: 20,000 questions per
//! backup on a vault of 10,000 packs. Object Lock in compliance mode can
//! be neither shortened nor removed, so a date recorded here stays true
//! until it passes, and only objects whose known lock ends too soon are
//! asked about. The record is a hint kept on this machine: a lost, stale
//! or damaged one costs the questions again, never a lock.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

/// A record larger than this is ignored (and rewritten): it would list far
/// more objects than any vault holds.
const MAX_RECORD_BYTES: u64 = 256 << 20;

pub struct LockRecord {
    path: PathBuf,
    /// Object name → Unix second its lock is known to run to.
    known: HashMap<String, i64>,
}

impl LockRecord {
    /// The record in `dir` (a vault's local directory); empty if there is
    /// none or it cannot be read.
    pub fn load(dir: &Path) -> LockRecord {
        let path = dir.join("lock-record");
        let mut known = HashMap::new();
        let small = std::fs::metadata(&path).is_ok_and(|m| m.len() <= MAX_RECORD_BYTES);
        if let Some(text) = small.then(|| std::fs::read_to_string(&path).ok()).flatten() {
            for line in text.lines() {
                if let Some((until, name)) = line.split_once(' ')
                    && let Ok(until) = until.parse::<i64>()
                {
                    known.insert(name.to_string(), until);
                }
            }
        }
        LockRecord { path, known }
    }

    /// Whether `name` is known to stay locked at least until `until`.
    pub fn covers(&self, name: &str, until: i64) -> bool {
        self.known.get(name).is_some_and(|&u| u >= until)
    }

    pub fn note(&mut self, name: &str, until: i64) {
        let e = self.known.entry(name.to_string()).or_insert(until);
        *e = (*e).max(until);
    }

    /// Writes the record (dates already past are dropped), atomically.
    pub fn save(&self) -> std::io::Result<()> {
        let now = chrono::Utc::now().timestamp();
        let mut text = String::new();
        for (name, until) in &self.known {
            if *until > now && !name.contains('\n') {
                text.push_str(&format!("{until} {name}\n"));
            }
        }
        let dir = self.path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir)?;
        let r: [u8; 8] = crate::crypto::random_array().map_err(std::io::Error::other)?;
        let tmp = dir.join(format!(".lock-record-{}", hex::encode(r)));
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, &self.path).inspect_err(|_| {
            let _ = std::fs::remove_file(&tmp);
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_survive_a_save_and_only_later_ones_cover() {
        let dir = tempfile::tempdir().unwrap();
        let now = chrono::Utc::now().timestamp();
        let mut r = LockRecord::load(dir.path());
        assert!(!r.covers("packs/a", now));
        r.note("packs/a", now + 100);
        r.note("packs/a", now + 50); // never moves back
        r.note("packs/old", now - 10);
        r.save().unwrap();
        let r = LockRecord::load(dir.path());
        assert!(r.covers("packs/a", now + 100));
        assert!(!r.covers("packs/a", now + 101));
        assert!(!r.covers("packs/old", now - 20), "past dates are dropped");
        // A damaged record is a hint lost, not an error.
        std::fs::write(dir.path().join("lock-record"), b"x y\n\xff\n12").unwrap();
        assert!(!LockRecord::load(dir.path()).covers("y", 0));
    }
}
