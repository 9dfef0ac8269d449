//! The audit log: one JSON line per action, each carrying the hash of the
//! one before, so an edited, removed or reordered entry breaks the chain
//! at that point (`cairn audit verify`). Lines are fsynced before the
//! action's answer goes out.

use anyhow::{Context, Result};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// The `prev` of the first entry.
const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AuditEntry {
    pub seq: u64,
    pub time: DateTime<Utc>,
    /// Token id (or `local` for the command line on the server).
    pub actor: String,
    pub role: String,
    pub action: String,
    pub target: String,
    /// `ok`, `refused`, or what failed.
    pub outcome: String,
    pub prev: String,
    pub hash: String,
}

impl AuditEntry {
    fn digest(&self) -> String {
        let mut e = self.clone();
        e.hash = String::new();
        blake3::hash(&serde_json::to_vec(&e).expect("json"))
            .to_hex()
            .to_string()
    }
}

pub struct AuditLog {
    path: PathBuf,
    /// One append at a time within this process (the file lock orders
    /// processes).
    appending: Mutex<()>,
}

/// Where the chain breaks.
#[derive(Debug, Serialize)]
pub struct Break {
    /// Line number, from 1.
    pub line: usize,
    pub reason: String,
}

impl AuditLog {
    pub fn new(dir: &Path) -> AuditLog {
        AuditLog {
            path: dir.join("audit.log"),
            appending: Mutex::new(()),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn append(
        &self,
        actor: &str,
        role: &str,
        action: &str,
        target: &str,
        outcome: &str,
    ) -> Result<AuditEntry> {
        let _one = self.appending.lock().unwrap();
        let _guard = crate::FileLock::take(&self.path)?;
        // Another process (the CLI) may have appended: read the real tail.
        let (seq, prev) = match read_tail(&self.path)? {
            Some(t) => t,
            None => (0, GENESIS.to_string()),
        };
        let mut e = AuditEntry {
            seq,
            time: Utc::now(),
            actor: actor.into(),
            role: role.into(),
            action: action.into(),
            target: target.into(),
            outcome: outcome.into(),
            prev,
            hash: String::new(),
        };
        e.hash = e.digest();
        let mut line = serde_json::to_vec(&e).expect("json");
        line.push(b'\n');
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .with_context(|| format!("opening {}", self.path.display()))?;
        f.write_all(&line)
            .and_then(|_| f.sync_data())
            .with_context(|| format!("writing {}", self.path.display()))?;
        Ok(e)
    }

    /// Every entry that parses (for viewing; `verify` judges them).
    pub fn entries(&self) -> Result<Vec<AuditEntry>> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
            Err(e) => return Err(e).with_context(|| format!("reading {}", self.path.display())),
        };
        Ok(text
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect())
    }

    /// Checks the whole chain: number of entries, or the first break.
    pub fn verify(&self) -> Result<std::result::Result<u64, Break>> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Ok(0)),
            Err(e) => return Err(e).with_context(|| format!("reading {}", self.path.display())),
        };
        Ok(verify_text(&text))
    }
}

fn verify_text(text: &str) -> std::result::Result<u64, Break> {
    let mut prev = GENESIS.to_string();
    let mut n = 0u64;
    for (i, line) in text.lines().enumerate() {
        let brk = |reason: String| Break {
            line: i + 1,
            reason,
        };
        let e: AuditEntry =
            serde_json::from_str(line).map_err(|e| brk(format!("not an audit entry: {e}")))?;
        if e.seq != n {
            return Err(brk(format!(
                "entry number {} where {n} was expected (an entry was removed or moved)",
                e.seq
            )));
        }
        if e.prev != prev {
            return Err(brk(
                "does not follow the entry before it (an entry was removed, moved or edited)"
                    .into(),
            ));
        }
        if e.digest() != e.hash {
            return Err(brk("its content does not match its hash (edited)".into()));
        }
        prev = e.hash;
        n += 1;
    }
    Ok(n)
}

fn read_tail(path: &Path) -> Result<Option<(u64, String)>> {
    let text = match std::fs::read(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    // A torn last line (a crash mid-write) is cut, so the chain goes on
    // from the last whole entry.
    let whole = match text.iter().rposition(|&b| b == b'\n') {
        Some(p) => p + 1,
        None => 0,
    };
    if whole < text.len() {
        let f = OpenOptions::new().write(true).open(path)?;
        f.set_len(whole as u64)?;
        f.sync_data()?;
    }
    let last = text[..whole]
        .split(|&b| b == b'\n')
        .rev()
        .find(|l| !l.is_empty());
    Ok(match last {
        None => None,
        Some(l) => {
            let e: AuditEntry = serde_json::from_slice(l).with_context(|| {
                format!(
                    "the last line of {} is not an audit entry; run `cairn audit verify`",
                    path.display()
                )
            })?;
            Some((e.seq + 1, e.hash))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edits_removals_and_reorders_break_the_chain() {
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::new(dir.path());
        for i in 0..4 {
            log.append("tok", "admin", "prune", &format!("t{i}"), "ok")
                .unwrap();
        }
        assert_eq!(log.verify().unwrap().unwrap(), 4);
        let text = std::fs::read_to_string(log.path()).unwrap();
        let lines: Vec<&str> = text.lines().collect();

        let edited = text.replacen("\"t2\"", "\"t9\"", 1);
        assert_eq!(verify_text(&edited).unwrap_err().line, 3);
        let removed = [lines[0], lines[1], lines[3]].join("\n");
        assert_eq!(verify_text(&removed).unwrap_err().line, 3);
        let swapped = [lines[0], lines[2], lines[1], lines[3]].join("\n");
        assert_eq!(verify_text(&swapped).unwrap_err().line, 2);

        // A torn tail is cut and the chain continues.
        std::fs::write(log.path(), format!("{text}{{\"seq\":4,")).unwrap();
        log.append("tok", "admin", "prune", "t4", "ok").unwrap();
        assert_eq!(log.verify().unwrap().unwrap(), 5);
    }
}
