//! The audit log: one JSON line per action, each carrying the hash of the
//! one before, so an edited, removed or reordered entry breaks the chain
//! at that point (`cairn audit verify`). Lines are fsynced before the
//! action's answer goes out.
//!
//! A chain alone cannot show that entries were cut from its end, or that
//! the whole log was written anew by someone who can write the server's
//! disk. So the log is anchored in the vault: after every change (after
//! refused requests unless an anchor was stored in the 5 seconds before,
//! after other reads at most every 5 minutes: what came after the newest
//! anchor can still be cut unseen, until the next entry anchors it) the
//! newest entry's number and
//! hash are stored as a write-once object `audit/<seq>`, locked like the
//! rest on object storage. Verifying compares the log with the newest of
//! them: every entry up to it must be there, with that hash (which the
//! chain makes depend on all the entries before it).

use anyhow::{Context, Result};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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
    anchor: Option<Anchor>,
}

/// Where the log is anchored, and when it last was.
struct Anchor {
    vault: Arc<cairn_vault::Vault>,
    last: Mutex<Option<Instant>>,
}

/// Reads (GET, HEAD) are anchored at most this often; changes at once.
const QUIET_ANCHOR: Duration = Duration::from_secs(300);

/// Refused requests, reads included, are anchored at most this often:
/// they are what shows a host probing for what is not its own, so whoever
/// can edit the log must not be able to cut them unseen for minutes; a
/// host spamming refusals still causes only one checkpoint in this time.
const REFUSAL_ANCHOR: Duration = Duration::from_secs(5);

/// What `audit/<seq>` holds.
#[derive(Debug, Serialize, Deserialize)]
struct Checkpoint {
    seq: u64,
    hash: String,
    time: DateTime<Utc>,
}

fn checkpoint_name(seq: u64) -> String {
    format!("audit/{seq:020}")
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
            anchor: None,
        }
    }

    /// Anchors the log in `vault` (see the module's comment).
    pub fn anchored_in(mut self, vault: Arc<cairn_vault::Vault>) -> Self {
        self.anchor = Some(Anchor {
            vault,
            last: Mutex::new(None),
        });
        self
    }

    /// Stores the checkpoint of entry `seq` unless one was stored less
    /// than `within` ago. Failing to is reported, not fatal: the action is
    /// on record locally.
    fn anchor(&self, seq: u64, hash: &str, within: Duration) {
        let Some(a) = &self.anchor else { return };
        let mut last = a.last.lock().unwrap();
        if last.is_some_and(|t| t.elapsed() < within) {
            return;
        }
        let cp = Checkpoint {
            seq,
            hash: hash.to_string(),
            time: Utc::now(),
        };
        let json = serde_json::to_vec(&cp).expect("json");
        match a.vault.put_sealed(&checkpoint_name(seq), &json) {
            Ok(_) => *last = Some(Instant::now()),
            Err(e) => tracing::error!("audit checkpoint {seq} not stored in the vault: {e}"),
        }
    }

    /// Anchors the newest entry now (a server starting: entries the
    /// command line added meanwhile, token changes, get anchored).
    pub fn anchor_tail(&self) -> Result<()> {
        let _one = self.appending.lock().unwrap();
        let _guard = crate::FileLock::take(&self.path)?;
        if let Some((next, hash)) = read_tail(&self.path)? {
            self.anchor(next - 1, &hash, Duration::ZERO);
        }
        Ok(())
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
        // Who called what, and from where: for the server's owner alone,
        // as the tokens are.
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&self.path)
            .with_context(|| format!("opening {}", self.path.display()))?;
        // A log an earlier version made readable by all is made its
        // owner's alone.
        if f.metadata().is_ok_and(|m| {
            use std::os::unix::fs::PermissionsExt;
            m.permissions().mode() & 0o077 != 0
        }) {
            use std::os::unix::fs::PermissionsExt;
            let _ = f.set_permissions(std::fs::Permissions::from_mode(0o600));
        }
        f.write_all(&line)
            .and_then(|_| f.sync_data())
            .with_context(|| format!("writing {}", self.path.display()))?;
        let read = e.action.starts_with("GET ") || e.action.starts_with("HEAD ");
        let within = match (read, e.outcome == "refused") {
            (false, _) => Duration::ZERO,
            (true, true) => REFUSAL_ANCHOR,
            (true, false) => QUIET_ANCHOR,
        };
        self.anchor(e.seq, &e.hash, within);
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

    /// Checks the whole chain, and against the vault's newest checkpoint
    /// when the log is anchored: number of entries, or the first break.
    pub fn verify(&self) -> Result<std::result::Result<u64, Break>> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(e).with_context(|| format!("reading {}", self.path.display())),
        };
        let hashes = match verify_text(&text) {
            Ok(h) => h,
            Err(b) => return Ok(Err(b)),
        };
        if let Some(a) = &self.anchor
            && let Some(b) = against_checkpoint(&a.vault, &hashes)?
        {
            return Ok(Err(b));
        }
        Ok(Ok(hashes.len() as u64))
    }
}

/// Where the log disagrees with the newest checkpoint in `vault`, if it
/// does (`hashes`: the verified chain's entries).
fn against_checkpoint(vault: &cairn_vault::Vault, hashes: &[String]) -> Result<Option<Break>> {
    let newest = vault
        .backend()
        .list("audit")?
        .iter()
        .filter_map(|n| n.strip_prefix("audit/")?.parse::<u64>().ok())
        .max();
    let Some(seq) = newest else { return Ok(None) };
    let name = checkpoint_name(seq);
    let cp: Checkpoint = serde_json::from_slice(&vault.read_object(&name)?)
        .with_context(|| format!("reading the vault's {name}"))?;
    if cp.seq != seq {
        return Ok(Some(Break {
            line: hashes.len() + 1,
            reason: format!("the vault's {name} names entry {} (damaged?)", cp.seq),
        }));
    }
    let when = cp.time.format("%Y-%m-%d %H:%M:%S UTC");
    Ok(match hashes.get(seq as usize) {
        None => Some(Break {
            line: hashes.len() + 1,
            reason: format!(
                "the log ends after {} entries, but the vault holds a checkpoint of entry {seq} (stored {when}): entries were cut from its end",
                hashes.len()
            ),
        }),
        Some(h) if *h != cp.hash => Some(Break {
            line: seq as usize + 1,
            reason: format!(
                "entry {seq} is not the one the vault's checkpoint of {when} holds: the log was written anew"
            ),
        }),
        Some(_) => None,
    })
}

/// The hashes of the entries of a log whose chain holds, or where it
/// breaks.
fn verify_text(text: &str) -> std::result::Result<Vec<String>, Break> {
    let mut prev = GENESIS.to_string();
    let mut hashes = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let brk = |reason: String| Break {
            line: i + 1,
            reason,
        };
        let e: AuditEntry =
            serde_json::from_str(line).map_err(|e| brk(format!("not an audit entry: {e}")))?;
        let n = hashes.len() as u64;
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
        prev = e.hash.clone();
        hashes.push(e.hash);
    }
    Ok(hashes)
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
