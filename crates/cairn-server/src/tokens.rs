//! API tokens and their roles. Only a hash of each token is kept: a copy
//! of the token file does not let anyone in.

use anyhow::{Context, Result, bail};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

/// What a token may do, each role a superset of the one before.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Append-only: upload chunks and create snapshots of its own sources.
    Agent,
    /// Read, timeline, diff, scan, export, recover, restore.
    Operator,
    /// Also forget, prune, pins, tokens.
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Agent => "agent",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Result<Role> {
        Ok(match s {
            "agent" => Role::Agent,
            "operator" => Role::Operator,
            "admin" => Role::Admin,
            _ => bail!("unknown role {s:?}: use agent, operator or admin"),
        })
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TokenRecord {
    pub id: String,
    pub role: Role,
    /// Agent tokens: the source names it may back up (`*`: any).
    #[serde(default)]
    pub sources: Vec<String>,
    pub label: String,
    pub created: DateTime<Utc>,
    /// BLAKE3 of the token, hex.
    pub hash: String,
    #[serde(default)]
    pub revoked: bool,
}

impl TokenRecord {
    pub fn may_write(&self, source: &str) -> bool {
        match self.role {
            Role::Agent => self.sources.iter().any(|s| s == "*" || s == source),
            // Operators add nothing through the object protocol (see
            // `objects::store`): told so before a backup uploads.
            Role::Operator => false,
            Role::Admin => true,
        }
    }
}

/// The token file (`tokens.json` in the server's state folder), re-read
/// when it changes on disk so `cairn token create` works while the
/// server runs.
pub struct Tokens {
    path: PathBuf,
    cached: Mutex<(Option<SystemTime>, Vec<TokenRecord>)>,
}

fn hash(secret: &str) -> String {
    blake3::hash(secret.as_bytes()).to_hex().to_string()
}

impl Tokens {
    pub fn new(dir: &Path) -> Tokens {
        Tokens {
            path: dir.join("tokens.json"),
            cached: Mutex::new((None, Vec::new())),
        }
    }

    fn load(&self) -> Result<Vec<TokenRecord>> {
        let mtime = std::fs::metadata(&self.path)
            .and_then(|m| m.modified())
            .ok();
        let mut c = self.cached.lock().unwrap();
        if mtime.is_some() && c.0 == mtime {
            return Ok(c.1.clone());
        }
        let records: Vec<TokenRecord> = match std::fs::read(&self.path) {
            Ok(b) => serde_json::from_slice(&b)
                .with_context(|| format!("reading {}", self.path.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e).with_context(|| format!("reading {}", self.path.display())),
        };
        *c = (mtime, records.clone());
        Ok(records)
    }

    fn save(&self, records: &[TokenRecord]) -> Result<()> {
        crate::write_atomic(
            &self.path,
            &serde_json::to_vec_pretty(records).expect("json"),
            0o600,
        )
    }

    /// A new token: its record and the secret (shown once, never stored).
    pub fn create(
        &self,
        role: Role,
        sources: Vec<String>,
        label: &str,
    ) -> Result<(TokenRecord, String)> {
        if role == Role::Agent && sources.is_empty() {
            bail!(
                "an agent token needs the sources it may back up (--source NAME, or '*' for any)"
            );
        }
        for name in sources.iter().filter(|s| *s != "*") {
            cairn_vault::snapshot::check_name(name)
                .map_err(|e| anyhow::anyhow!("--source: {e}"))?;
        }
        let _guard = crate::FileLock::take(&self.path)?;
        let mut records = self.load()?;
        let mut raw = [0u8; 24];
        getrandom::fill(&mut raw).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
        let id = hex::encode(&raw[..4]);
        let secret = format!("cairn_{}_{}", id, hex::encode(&raw[4..]));
        let rec = TokenRecord {
            id,
            role,
            sources,
            label: label.to_string(),
            created: Utc::now(),
            hash: hash(&secret),
            revoked: false,
        };
        records.push(rec.clone());
        self.save(&records)?;
        Ok((rec, secret))
    }

    /// The record of a valid (not revoked) token.
    pub fn check(&self, secret: &str) -> Option<TokenRecord> {
        let h = hash(secret);
        self.load()
            .ok()?
            .into_iter()
            .find(|r| !r.revoked && r.hash == h)
    }

    /// The record of `secret` when it is a token that was revoked (so the
    /// refusal can say why, and the audit log whose it was).
    pub fn revoked(&self, secret: &str) -> Option<TokenRecord> {
        let h = hash(secret);
        self.load()
            .ok()?
            .into_iter()
            .find(|r| r.revoked && r.hash == h)
    }

    /// How a token no record holds is named in the audit log: by the
    /// start of its hash (the secret itself is never written down).
    pub fn unknown_name(secret: &str) -> String {
        format!("unknown:{}", &hash(secret)[..12])
    }

    pub fn by_id(&self, id: &str) -> Option<TokenRecord> {
        self.load()
            .ok()?
            .into_iter()
            .find(|r| !r.revoked && r.id == id)
    }

    pub fn list(&self) -> Result<Vec<TokenRecord>> {
        self.load()
    }

    pub fn revoke(&self, id: &str) -> Result<bool> {
        let _guard = crate::FileLock::take(&self.path)?;
        let mut records = self.load()?;
        let Some(r) = records.iter_mut().find(|r| r.id == id && !r.revoked) else {
            return Ok(false);
        };
        r.revoked = true;
        self.save(&records)?;
        Ok(true)
    }
}
