//! The YARA rule set: Cairn's own rules plus the operator's rule files,
//! compiled once with boreal (a pure-Rust YARA engine). Its hash names
//! the rule set in the scan cache, so a changed rule rescans everything.

use crate::error::{Error, Result};
use boreal::scanner::ScanParams;
use boreal::{Compiler, MetadataValue, Scanner};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Cairn's own rules, shipped in the binary.
pub const BUILTIN: &str = include_str!("../rules/cairn.yar");

/// What a rule's hit makes of a recovery point.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Warning,
    Compromised,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Warning => "warning",
            Severity::Compromised => "compromised",
        }
    }
}

/// One rule that matched a piece of content.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct RuleHit {
    /// `namespace:rule` — the namespace is `cairn` for our rules and the
    /// file name for an operator's.
    pub rule: String,
    /// Offset of the first matching string (0 when the condition matched
    /// without strings).
    pub offset: u64,
    pub severity: Severity,
    pub description: String,
    /// The rule's YARA tags.
    pub tags: Vec<String>,
}

/// The hit recorded when clamd failed on a file (never cached).
pub const CLAMD_ERROR: &str = "clamav:error";
/// The hit recorded when the rules did not finish on a file (the scan
/// timed out): what matched before the end is reported, but the file is
/// not judged clean, and the result is never cached.
pub const SCAN_INCOMPLETE: &str = "cairn:scan_incomplete";

/// How long the rules may take on one file.
const SCAN_TIMEOUT: Duration = Duration::from_secs(60);

impl RuleHit {
    /// A hit that says the file could not be judged this time (clamd
    /// failed, the rules timed out): never cached, so the file is judged
    /// again next time.
    pub fn is_transient(&self) -> bool {
        is_transient(&self.rule)
    }
}

/// Whether a hit of `rule` means "not judged this time" rather than a
/// finding (see [`RuleHit::is_transient`]).
pub fn is_transient(rule: &str) -> bool {
    rule == CLAMD_ERROR || rule == SCAN_INCOMPLETE
}

pub struct RuleSet {
    scanner: Scanner,
    /// ClamAV, when configured: every file goes to it too.
    clamd: Option<crate::clamd::Clamd>,
    /// BLAKE3 over the engine version and every rule file's name and text.
    pub hash: [u8; 32],
    /// Which rule files (by namespace) and whether ClamAV, without their
    /// versions: a newer scan of the same family supersedes an older one's
    /// findings (an edited rule, a new signature database, another Cairn);
    /// one of another family does not (see `crate::standing`).
    pub family: [u8; 32],
    /// Where the rules came from: `builtin` and the operator's files.
    pub sources: Vec<String>,
    /// Rescanning changed files only around their changes, when the rule
    /// set allows it; else why not.
    pub windows: std::result::Result<crate::windows::WindowScanner, String>,
}

/// Largest rule file read (a rule set, not a database).
const MAX_RULE_FILE: u64 = 64 << 20;

impl RuleSet {
    /// Cairn's rules, plus every `*.yar`/`*.yara` file in `operator_dir`
    /// (each in its own namespace, named after the file), or that one
    /// file when a file is given.
    pub fn load(operator_dir: Option<&Path>) -> Result<Self> {
        let mut files: Vec<(String, PathBuf, String)> = Vec::new();
        if let Some(dir) = operator_dir {
            let mut paths = Vec::new();
            let rd = if dir.is_file() {
                // One rule file given instead of a folder of them.
                paths.push(dir.to_path_buf());
                None
            } else {
                Some(std::fs::read_dir(dir).map_err(crate::error::io(format!(
                    "reading rules from {} (a folder of .yar files, or one file)",
                    dir.display()
                )))?)
            };
            for e in rd.into_iter().flatten() {
                let p = e
                    .map_err(crate::error::io(dir.display().to_string()))?
                    .path();
                let ext = p.extension().and_then(|e| e.to_str()).unwrap_or("");
                if p.is_file() && (ext == "yar" || ext == "yara") {
                    paths.push(p);
                }
            }
            paths.sort();
            if paths.is_empty() {
                return Err(Error::Rules {
                    path: dir.to_path_buf(),
                    message: "no .yar or .yara files in this folder".into(),
                });
            }
            for p in paths {
                let len = std::fs::metadata(&p)
                    .map_err(crate::error::io(p.display().to_string()))?
                    .len();
                if len > MAX_RULE_FILE {
                    return Err(Error::Rules {
                        path: p,
                        message: format!("larger than {MAX_RULE_FILE} bytes"),
                    });
                }
                let text = std::fs::read_to_string(&p)
                    .map_err(crate::error::io(p.display().to_string()))?;
                let ns = p
                    .file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_default();
                files.push((ns, p, text));
            }
        }
        Self::compile(&files)
    }

    fn compile(operator: &[(String, PathBuf, String)]) -> Result<Self> {
        let mut compiler = Compiler::new();
        // An `include` would bring in text from outside the folder that is
        // not part of the rule-set hash: a change there would leave stale
        // cached verdicts. Rule files stand alone.
        compiler.set_params(boreal::compiler::CompilerParams::default().disable_includes(true));
        let mut hash = blake3::Hasher::new();
        // The engine and Cairn's own version: another boreal (via cargo
        // update) or another Cairn may match differently.
        hash.update(b"cairn-rules-v2 boreal-1.4\0");
        hash.update(env!("CARGO_PKG_VERSION").as_bytes());
        hash.update(b"\0");
        hash.update(BUILTIN.as_bytes());
        compiler
            .add_rules_str_in_namespace(BUILTIN, "cairn")
            .map_err(|e| Error::Rules {
                path: "builtin".into(),
                message: describe(&e, "cairn.yar", BUILTIN),
            })?;
        let mut sources = vec!["builtin".to_string()];
        for (ns, path, text) in operator {
            hash.update(b"\0file\0");
            hash.update(ns.as_bytes());
            hash.update(b"\0");
            hash.update(text.as_bytes());
            compiler
                .add_rules_str_in_namespace(text, ns)
                .map_err(|e| Error::Rules {
                    path: path.clone(),
                    message: describe(&e, &path.display().to_string(), text),
                })?;
            sources.push(path.display().to_string());
        }
        let mut scanner = compiler.finalize();
        scanner.set_scan_params(
            ScanParams::default()
                .compute_full_matches(true)
                // Every rule's string matches, matched or not: a content in
                // which no string matches at all is remembered as such.
                .include_not_matched_rules(true)
                .string_max_nb_matches(100)
                .timeout_duration(Some(SCAN_TIMEOUT)),
        );
        let texts: Vec<&str> = std::iter::once(BUILTIN)
            .chain(operator.iter().map(|(_, _, t)| t.as_str()))
            .collect();
        let windows = crate::windows::WindowScanner::build(&texts);
        if let Err(why) = &windows {
            tracing::debug!("changed files are scanned whole: {why}");
        }
        let mut family = blake3::Hasher::new();
        family.update(b"builtin");
        let mut namespaces: Vec<&str> = operator.iter().map(|(ns, _, _)| ns.as_str()).collect();
        namespaces.sort_unstable();
        for ns in namespaces {
            family.update(b"\0");
            family.update(ns.as_bytes());
        }
        Ok(RuleSet {
            scanner,
            clamd: None,
            hash: *hash.finalize().as_bytes(),
            family: *family.finalize().as_bytes(),
            sources,
            windows,
        })
    }

    pub fn hash_hex(&self) -> String {
        hex::encode(&self.hash[..8])
    }

    pub fn family_hex(&self) -> String {
        hex::encode(&self.family[..8])
    }

    /// Number of rules compiled.
    pub fn rule_count(&self) -> usize {
        self.scanner.rules().count()
    }

    /// The rules that match `data`. A scan that times out reports what it
    /// matched so far.
    /// Sends every file to `clamd` as well; its version joins the hash.
    pub fn with_clamd(mut self, clamd: crate::clamd::Clamd) -> Self {
        let mut h = blake3::Hasher::new();
        h.update(&self.hash);
        h.update(b"clamd\0");
        h.update(clamd.version.as_bytes());
        self.hash = *h.finalize().as_bytes();
        self.family = *blake3::Hasher::new()
            .update(&self.family)
            .update(b"\0clamd")
            .finalize()
            .as_bytes();
        self.sources.push(format!("clamd ({})", clamd.version));
        self.clamd = Some(clamd);
        self.windows = Err("ClamAV sees files whole".into());
        self
    }

    pub fn scan(&self, data: &[u8]) -> Vec<RuleHit> {
        self.scan_telling(data).0
    }

    /// [`RuleSet::scan`], and whether no string of any rule matched
    /// anywhere in `data` (known only for rule sets that qualify for
    /// [`crate::windows`] and hide no rule or string; false otherwise).
    pub fn scan_telling(&self, data: &[u8]) -> (Vec<RuleHit>, bool) {
        let (mut hits, strings_free) = self.scan_rules(data);
        if let Some(c) = &self.clamd {
            match c.scan(data) {
                Ok(None) => {}
                Ok(Some(sig)) => hits.push(RuleHit {
                    rule: format!("clamav:{sig}"),
                    offset: 0,
                    severity: Severity::Compromised,
                    description: "ClamAV signature".into(),
                    tags: vec![],
                }),
                Err(e) => hits.push(RuleHit {
                    rule: CLAMD_ERROR.into(),
                    offset: 0,
                    severity: Severity::Warning,
                    description: format!("ClamAV could not scan this file: {e}"),
                    tags: vec![],
                }),
            }
        }
        (hits, strings_free)
    }

    fn scan_rules(&self, data: &[u8]) -> (Vec<RuleHit>, bool) {
        let (result, complete) = match self.scanner.scan_mem(data) {
            Ok(r) => (r, true),
            Err((_, partial)) => (partial, false),
        };
        let strings_free = complete
            && self.windows.as_ref().is_ok_and(|w| w.sees_all)
            && result.rules.iter().all(|r| r.matches.is_empty());
        let mut hits: Vec<RuleHit> = result
            .rules
            .iter()
            .filter(|r| r.matched)
            .map(|r| {
                let mut severity = Severity::Compromised;
                let mut description = String::new();
                for m in r.metadatas {
                    let name = self.scanner.get_string_symbol(m.name);
                    if let MetadataValue::Bytes(b) = &m.value {
                        let v = String::from_utf8_lossy(self.scanner.get_bytes_symbol(*b));
                        match name {
                            "severity" if v.eq_ignore_ascii_case("warning") => {
                                severity = Severity::Warning
                            }
                            "description" => description = v.into_owned(),
                            _ => {}
                        }
                    }
                }
                let offset = r
                    .matches
                    .iter()
                    .flat_map(|s| s.matches.iter())
                    .map(|m| (m.base + m.offset) as u64)
                    .min()
                    .unwrap_or(0);
                RuleHit {
                    rule: format!("{}:{}", r.namespace, r.name),
                    offset,
                    severity,
                    description,
                    tags: r
                        .tags
                        .iter()
                        .map(|t| self.scanner.get_string_symbol(*t).to_string())
                        .collect(),
                }
            })
            .collect();
        hits.sort_by(|a, b| a.rule.cmp(&b.rule));
        if !complete {
            hits.push(RuleHit {
                rule: SCAN_INCOMPLETE.into(),
                offset: 0,
                severity: Severity::Warning,
                description: format!(
                    "the rules did not finish on this file within {} s: not judged clean",
                    SCAN_TIMEOUT.as_secs()
                ),
                tags: vec![],
            });
        }
        (hits, strings_free)
    }

    /// Sets how long the rules may take on one file (tests).
    #[cfg(test)]
    fn set_timeout(&mut self, timeout: Duration) {
        let params = self
            .scanner
            .scan_params()
            .clone()
            .timeout_duration(Some(timeout));
        self.scanner.set_scan_params(params);
    }
}

fn describe(e: &boreal::compiler::AddRuleError, name: &str, text: &str) -> String {
    boreal::compiler::generate_description(&e.to_diagnostic(), name, text)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A scan cut short by the timeout is a warning that is never cached,
    /// not a clean file.
    #[test]
    fn a_scan_that_times_out_is_not_clean() {
        let mut rules = RuleSet::load(None).unwrap();
        let data = b"bitcoin monero decryptor ".repeat(400_000);
        let (hits, strings_free) = rules.scan_telling(&data);
        assert!(hits.iter().all(|h| !h.is_transient()), "{hits:?}");
        rules.set_timeout(Duration::ZERO);
        let (hits, strings_free_now) = rules.scan_telling(&data);
        let cut = hits
            .iter()
            .find(|h| h.rule == SCAN_INCOMPLETE)
            .expect("timed out");
        assert_eq!(cut.severity, Severity::Warning);
        assert!(cut.is_transient());
        assert!(!strings_free_now || strings_free);
    }

    /// An operator's file may not include another: the included text would
    /// not be in the rule-set hash, and the scan cache would go stale.
    #[test]
    fn includes_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("b.inc"), "rule b { condition: true }").unwrap();
        std::fs::write(
            dir.path().join("a.yar"),
            format!("include \"{}\"\n", dir.path().join("b.inc").display()),
        )
        .unwrap();
        let err = RuleSet::load(Some(dir.path())).err().expect("refused");
        assert!(err.to_string().contains("include"), "{err}");
    }

    #[test]
    fn builtin_rules_find_eicar_and_ignore_plain_text() {
        let rules = RuleSet::load(None).unwrap();
        let eicar = br"X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*";
        let mut data = b"padding padding\n".repeat(100);
        let at = data.len() as u64;
        data.extend_from_slice(eicar);
        let hits = rules.scan(&data);
        assert_eq!(hits.len(), 1, "{hits:?}");
        assert_eq!(hits[0].rule, "cairn:Cairn_EICAR_Test_File");
        assert_eq!(hits[0].offset, at);
        assert_eq!(hits[0].severity, Severity::Compromised);
        assert!(
            rules
                .scan(b"an ordinary letter about bitcoin prices")
                .is_empty()
        );
    }

    #[test]
    fn a_note_naming_a_bitcoin_address_or_a_short_onion_is_a_ransom_note() {
        let rules = RuleSet::load(None).unwrap();
        let note = |pay: &str| {
            rules
                .scan(format!("YOUR FILES HAVE BEEN ENCRYPTED!\n{pay}\n").as_bytes())
                .iter()
                .any(|h| h.rule == "cairn:Cairn_Ransom_Note")
        };
        assert!(note(
            "pay 2 BTC to bc1qxy2kgdygjrsqtzq2n0yrf2493p83kkfjhx0wlh"
        ));
        assert!(note(
            "send to bc1qar0srrr7xfkvy5l643lydnw9re59gtzzwf5mdq now"
        ));
        assert!(note("Contact us at http://lockbitsupp4x7qzk2a3bnqz6.onion"));
        assert!(!note("call the help desk on monday"));
        assert!(
            rules
                .scan(b"the invoice 13 was paid, order 3 of 1000 items, ref bc1 ok")
                .is_empty()
        );
    }

    #[test]
    fn a_scan_tells_when_no_string_matched_anywhere() {
        let rules = RuleSet::load(None).unwrap();
        assert_eq!(rules.scan_telling(b"an ordinary letter"), (vec![], true));
        // A string of a rule that does not match is still a string match.
        assert_eq!(
            rules.scan_telling(b"an ordinary letter about bitcoin prices"),
            (vec![], false)
        );
        // A private string is not reported: nothing can be told.
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("p.yar"),
            "rule P { strings: $s = \"ACME\" private condition: $s }",
        )
        .unwrap();
        let rules = RuleSet::load(Some(dir.path())).unwrap();
        assert_eq!(rules.scan_telling(b"an ordinary letter"), (vec![], false));
    }

    #[test]
    fn operator_rules_load_from_a_folder_and_change_the_hash() {
        let dir = tempfile::tempdir().unwrap();
        let builtin = RuleSet::load(None).unwrap();
        std::fs::write(
            dir.path().join("acme.yar"),
            "rule Acme_Secret { meta: severity = \"warning\" strings: $s = \"ACME-IMPLANT\" condition: $s }",
        )
        .unwrap();
        let rules = RuleSet::load(Some(dir.path())).unwrap();
        assert_ne!(rules.hash, builtin.hash);
        let hits = rules.scan(b"xx ACME-IMPLANT yy");
        assert_eq!(hits[0].rule, "acme:Acme_Secret");
        assert_eq!(hits[0].offset, 3);
        assert_eq!(hits[0].severity, Severity::Warning);
    }

    #[test]
    fn a_broken_rule_names_its_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("bad.yar"),
            "rule Broken {\n condition: $nope\n}",
        )
        .unwrap();
        let e = RuleSet::load(Some(dir.path())).err().unwrap().to_string();
        assert!(e.contains("bad.yar"), "{e}");
    }
}
