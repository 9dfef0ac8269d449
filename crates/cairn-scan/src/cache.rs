//! Scan once per content: which rules matched a piece of content, by its
//! content key, for one rule set. An append-only log beside the vault
//! (`cache/scan-<rule set>.log`): a crash loses at most the unflushed
//! tail, and a torn last record is ignored on load. It holds no paths or
//! content, only keys and rule names.

use crate::error::Result;
use crate::rules::RuleHit;
use std::collections::{HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

pub type ContentKey = [u8; 32];

pub struct ScanCache {
    path: Option<PathBuf>,
    known: HashMap<ContentKey, Vec<RuleHit>>,
    /// Contents in which no string of the rule set matched anywhere.
    strings_free: HashSet<ContentKey>,
    pending: Vec<(ContentKey, Vec<RuleHit>, bool)>,
    /// Length of the log's valid prefix (a torn tail is cut before appending).
    valid_len: u64,
}

/// Records larger than this are taken as damage, not read.
const MAX_RECORD: usize = 1 << 20;

impl ScanCache {
    /// A cache that remembers nothing beyond this process.
    pub fn in_memory() -> Self {
        ScanCache {
            path: None,
            known: HashMap::new(),
            strings_free: HashSet::new(),
            pending: Vec::new(),
            valid_len: 0,
        }
    }

    /// Opens (or starts) the log for rule set `rules_hash` in `dir`.
    pub fn open(dir: &Path, rules_hash: &[u8; 32]) -> Result<Self> {
        std::fs::create_dir_all(dir)
            .map_err(crate::error::io(format!("creating {}", dir.display())))?;
        let path = dir.join(format!("scan-{}.log", hex::encode(&rules_hash[..16])));
        let mut cache = ScanCache {
            path: Some(path.clone()),
            ..Self::in_memory()
        };
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(crate::error::io(path.display().to_string())(e)),
        };
        let mut pos = 0usize;
        // Record: u32 length, 8 bytes of BLAKE3 over the body, body.
        while pos + 12 <= bytes.len() {
            let len = u32::from_le_bytes(bytes[pos..pos + 4].try_into().unwrap()) as usize;
            if len > MAX_RECORD || pos + 12 + len > bytes.len() {
                break;
            }
            let body = &bytes[pos + 12..pos + 12 + len];
            if blake3::hash(body).as_bytes()[..8] != bytes[pos + 4..pos + 12] {
                break;
            }
            match postcard::from_bytes::<(ContentKey, Vec<RuleHit>, bool)>(body) {
                Ok((k, hits, free)) => {
                    if free {
                        cache.strings_free.insert(k);
                    }
                    cache.known.insert(k, hits);
                }
                Err(_) => break,
            }
            pos += 12 + len;
        }
        cache.valid_len = pos as u64;
        Ok(cache)
    }

    pub fn get(&self, key: &ContentKey) -> Option<&Vec<RuleHit>> {
        self.known.get(key)
    }

    pub fn len(&self) -> usize {
        self.known.len()
    }

    pub fn is_empty(&self) -> bool {
        self.known.is_empty()
    }

    /// Whether no string matched anywhere in this content.
    pub fn strings_free(&self, key: &ContentKey) -> bool {
        self.strings_free.contains(key)
    }

    /// `strings_free`: no string of the rule set matched anywhere.
    pub fn insert(&mut self, key: ContentKey, hits: Vec<RuleHit>, strings_free: bool) {
        if self.known.insert(key, hits.clone()).is_none() {
            if strings_free {
                self.strings_free.insert(key);
            }
            self.pending.push((key, hits, strings_free));
        }
    }

    /// Appends what was learnt since the last flush and syncs it.
    pub fn flush(&mut self) -> Result<()> {
        let Some(path) = &self.path else {
            self.pending.clear();
            return Ok(());
        };
        if self.pending.is_empty() {
            return Ok(());
        }
        let ctx = || path.display().to_string();
        let mut f: File = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .map_err(crate::error::io(ctx()))?;
        // Cut a torn tail left by a crash, then append after the valid part.
        f.set_len(self.valid_len).map_err(crate::error::io(ctx()))?;
        let mut out = Vec::new();
        for rec in &self.pending {
            let body = postcard::to_allocvec(rec).expect("serialise");
            out.extend_from_slice(&(body.len() as u32).to_le_bytes());
            out.extend_from_slice(&blake3::hash(&body).as_bytes()[..8]);
            out.extend_from_slice(&body);
        }
        use std::io::Seek;
        f.seek(std::io::SeekFrom::Start(self.valid_len))
            .map_err(crate::error::io(ctx()))?;
        f.write_all(&out).map_err(crate::error::io(ctx()))?;
        f.sync_data().map_err(crate::error::io(ctx()))?;
        self.valid_len += out.len() as u64;
        self.pending.clear();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::Severity;

    fn hit() -> RuleHit {
        RuleHit {
            rule: "cairn:X".into(),
            offset: 7,
            severity: Severity::Warning,
            description: "d".into(),
            tags: vec![],
        }
    }

    #[test]
    fn survives_reopen_and_ignores_a_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let rules = [1u8; 32];
        let mut c = ScanCache::open(dir.path(), &rules).unwrap();
        c.insert([2; 32], vec![hit()], false);
        c.insert([3; 32], vec![], true);
        c.flush().unwrap();
        let log = std::fs::read_dir(dir.path())
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path();
        // A crash mid-append leaves half a record.
        let mut f = OpenOptions::new().append(true).open(&log).unwrap();
        f.write_all(&[200, 0, 0, 0, 1, 2, 3]).unwrap();
        drop(f);
        let mut c = ScanCache::open(dir.path(), &rules).unwrap();
        assert_eq!(c.get(&[2; 32]), Some(&vec![hit()]));
        assert_eq!(c.get(&[3; 32]), Some(&vec![]));
        assert!(c.strings_free(&[3; 32]) && !c.strings_free(&[2; 32]));
        assert_eq!(c.len(), 2);
        c.insert([4; 32], vec![], false);
        c.flush().unwrap();
        let c = ScanCache::open(dir.path(), &rules).unwrap();
        assert_eq!(c.len(), 3, "the torn tail was cut and the new record kept");
        // Another rule set starts empty.
        assert!(ScanCache::open(dir.path(), &[9; 32]).unwrap().is_empty());
    }
}
