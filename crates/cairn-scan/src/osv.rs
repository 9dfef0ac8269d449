//! OSV advisories, imported offline (`cairn vulndb import`) from the JSON
//! records OSV publishes per ecosystem (a zip such as `Debian/all.zip`,
//! or a folder of `.json` files), kept as a compact local database and
//! matched against a guest's inventory with the ecosystem's own version
//! ordering. Our own serde structs read only the fields we use.

use crate::error::{Error, Result};
use crate::inventory::{Inventory, Package};
use crate::version::{self, Scheme};
use serde::{Deserialize, Serialize};
use std::cmp::Ordering;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Read;
use std::path::Path;

/// Largest single record read (the biggest real ones are a few MiB).
const MAX_RECORD: u64 = 32 << 20;
/// Most records taken from one import.
const MAX_RECORDS: usize = 2_000_000;
/// Most bytes of record text read in one import (the whole of OSV's data
/// for one distribution is a few hundred MB): a zip of many small entries
/// that each inflate to the per-record limit cannot fill memory.
const MAX_IMPORT_BYTES: u64 = 2 << 30;

#[derive(Deserialize)]
struct OsvRecord {
    id: String,
    #[serde(default)]
    aliases: Vec<String>,
    #[serde(default)]
    upstream: Vec<String>,
    #[serde(default)]
    summary: String,
    #[serde(default)]
    details: String,
    #[serde(default)]
    withdrawn: Option<String>,
    #[serde(default)]
    severity: Vec<OsvSeverity>,
    #[serde(default)]
    affected: Vec<OsvAffected>,
    #[serde(default)]
    database_specific: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct OsvSeverity {
    #[serde(rename = "type")]
    kind: String,
    score: String,
}

#[derive(Deserialize)]
struct OsvAffected {
    package: Option<OsvPackage>,
    #[serde(default)]
    ranges: Vec<OsvRange>,
    #[serde(default)]
    versions: Vec<String>,
    #[serde(default)]
    ecosystem_specific: Option<serde_json::Value>,
    #[serde(default)]
    database_specific: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct OsvPackage {
    ecosystem: String,
    name: String,
}

#[derive(Deserialize)]
struct OsvRange {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    events: Vec<BTreeMap<String, String>>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Event {
    Introduced(String),
    Fixed(String),
    LastAffected(String),
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Affected {
    pub ecosystem: String,
    pub package: String,
    pub ranges: Vec<Vec<Event>>,
    pub versions: Vec<String>,
    pub severity: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Advisory {
    pub id: String,
    /// CVE and other ids of the same problem.
    pub aliases: Vec<String>,
    pub summary: String,
    pub severity: Option<String>,
    pub affected: Vec<Affected>,
}

/// The imported advisories.
#[derive(Default, Serialize, Deserialize)]
pub struct VulnDb {
    pub advisories: BTreeMap<String, Advisory>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct VulnFinding {
    pub id: String,
    pub aliases: Vec<String>,
    pub package: String,
    pub installed: String,
    pub source: String,
    pub source_version: String,
    /// The first version that fixes it, if one is known.
    pub fixed: Option<String>,
    pub severity: String,
    pub summary: String,
}

/// CVSS v3 base score and rating from a vector string.
pub fn cvss3(vector: &str) -> Option<(f64, &'static str)> {
    let mut m = HashMap::new();
    for part in vector.split('/').skip(1) {
        let (k, v) = part.split_once(':')?;
        m.insert(k, v);
    }
    let changed = *m.get("S")? == "C";
    let av = match *m.get("AV")? {
        "N" => 0.85,
        "A" => 0.62,
        "L" => 0.55,
        "P" => 0.2,
        _ => return None,
    };
    let ac = match *m.get("AC")? {
        "L" => 0.77,
        "H" => 0.44,
        _ => return None,
    };
    let pr = match (*m.get("PR")?, changed) {
        ("N", _) => 0.85,
        ("L", false) => 0.62,
        ("L", true) => 0.68,
        ("H", false) => 0.27,
        ("H", true) => 0.5,
        _ => return None,
    };
    let ui = match *m.get("UI")? {
        "N" => 0.85,
        "R" => 0.62,
        _ => return None,
    };
    let cia = |k| match m.get(k).copied() {
        Some("H") => Some(0.56),
        Some("L") => Some(0.22),
        Some("N") => Some(0.0),
        _ => None,
    };
    let iss = 1.0 - (1.0 - cia("C")?) * (1.0 - cia("I")?) * (1.0 - cia("A")?);
    let impact = if changed {
        7.52 * (iss - 0.029) - 3.25 * (iss - 0.02f64).powi(15)
    } else {
        6.42 * iss
    };
    let exploitability = 8.22 * av * ac * pr * ui;
    // CVSS's round-up to one decimal, done in integers as the spec asks.
    let roundup = |x: f64| {
        let i = (x * 100_000.0).round() as i64;
        if i % 10_000 == 0 {
            i as f64 / 100_000.0
        } else {
            ((i / 10_000) + 1) as f64 / 10.0
        }
    };
    let score = if impact <= 0.0 {
        0.0
    } else if changed {
        roundup((1.08 * (impact + exploitability)).min(10.0))
    } else {
        roundup((impact + exploitability).min(10.0))
    };
    let rating = match score {
        0.0 => "NONE",
        s if s < 4.0 => "LOW",
        s if s < 7.0 => "MEDIUM",
        s if s < 9.0 => "HIGH",
        _ => "CRITICAL",
    };
    Some((score, rating))
}

fn named_severity(v: &Option<serde_json::Value>, key: &str) -> Option<String> {
    let s = v.as_ref()?.get(key)?.as_str()?.trim();
    (!s.is_empty()).then(|| s.to_uppercase())
}

impl Advisory {
    fn from_record(r: OsvRecord) -> Option<Advisory> {
        if r.withdrawn.is_some() {
            return None;
        }
        let severity = r
            .severity
            .iter()
            .filter(|s| s.kind.starts_with("CVSS_V3"))
            .find_map(|s| cvss3(&s.score))
            .map(|(score, rating)| format!("{rating} ({score:.1})"))
            .or_else(|| named_severity(&r.database_specific, "severity"));
        let mut aliases: Vec<String> = r.aliases;
        for u in r.upstream {
            if !aliases.contains(&u) {
                aliases.push(u);
            }
        }
        let mut summary = if r.summary.is_empty() {
            r.details.lines().next().unwrap_or("").to_string()
        } else {
            r.summary
        };
        if summary.len() > 240 {
            let cut = (0..=240)
                .rev()
                .find(|&i| summary.is_char_boundary(i))
                .unwrap_or(0);
            summary.truncate(cut);
            summary.push('…');
        }
        let affected = r
            .affected
            .into_iter()
            .filter_map(|a| {
                let p = a.package?;
                let ranges = a
                    .ranges
                    .into_iter()
                    .filter(|r| r.kind == "ECOSYSTEM")
                    .map(|r| {
                        r.events
                            .into_iter()
                            .filter_map(|e| {
                                let (k, v) = e.into_iter().next()?;
                                Some(match k.as_str() {
                                    "introduced" => Event::Introduced(v),
                                    "fixed" => Event::Fixed(v),
                                    "last_affected" => Event::LastAffected(v),
                                    _ => return None,
                                })
                            })
                            .collect()
                    })
                    .collect();
                Some(Affected {
                    ecosystem: p.ecosystem,
                    package: p.name,
                    ranges,
                    versions: a.versions,
                    severity: named_severity(&a.database_specific, "severity")
                        .or_else(|| named_severity(&a.ecosystem_specific, "urgency"))
                        .or_else(|| named_severity(&a.ecosystem_specific, "severity")),
                })
            })
            .collect();
        Some(Advisory {
            id: r.id,
            aliases,
            summary,
            severity,
            affected,
        })
    }
}

/// Whether `installed` falls in `a`, and the first fixed version above it.
/// Versions that do not parse are never claimed vulnerable.
pub fn affects(a: &Affected, scheme: Scheme, installed: &str) -> Option<Option<String>> {
    version::compare(scheme, installed, installed)?;
    if a.versions.iter().any(|v| v == installed) {
        let fixed = first_fix_above(a, scheme, installed);
        return Some(fixed);
    }
    let cmp = |x: &str| version::compare(scheme, installed, x);
    for range in &a.ranges {
        // OSV: evaluate events in version order ("0" first).
        let mut events: Vec<&Event> = range.iter().collect();
        let key = |e: &Event| match e {
            Event::Introduced(v) | Event::Fixed(v) | Event::LastAffected(v) => v.clone(),
        };
        events.sort_by(|x, y| {
            let (kx, ky) = (key(x), key(y));
            match (kx == "0", ky == "0") {
                (true, true) => Ordering::Equal,
                (true, false) => Ordering::Less,
                (false, true) => Ordering::Greater,
                _ => version::compare(scheme, &kx, &ky).unwrap_or(Ordering::Equal),
            }
        });
        let mut vulnerable = false;
        for e in events {
            match e {
                Event::Introduced(v) => {
                    if v == "0" || cmp(v).is_some_and(|o| o != Ordering::Less) {
                        vulnerable = true;
                    }
                }
                Event::Fixed(v) => {
                    if cmp(v).is_some_and(|o| o != Ordering::Less) {
                        vulnerable = false;
                    }
                }
                Event::LastAffected(v) => {
                    if cmp(v).is_some_and(|o| o == Ordering::Greater) {
                        vulnerable = false;
                    }
                }
            }
        }
        if vulnerable {
            return Some(first_fix_above(a, scheme, installed));
        }
    }
    None
}

fn first_fix_above(a: &Affected, scheme: Scheme, installed: &str) -> Option<String> {
    a.ranges
        .iter()
        .flatten()
        .filter_map(|e| match e {
            Event::Fixed(v) => Some(v),
            _ => None,
        })
        .filter(|v| version::compare(scheme, v, installed) == Some(Ordering::Greater))
        .min_by(|x, y| version::compare(scheme, x, y).unwrap_or(Ordering::Equal))
        .cloned()
}

/// `Debian:12` matches records for `Debian:12`; Ubuntu's records add
/// `:LTS` or `:Pro` after the release.
fn ecosystem_matches(record: &str, guest: &str) -> bool {
    record == guest
        || record
            .strip_prefix(guest)
            .is_some_and(|rest| rest.starts_with(':'))
}

/// One record file's bytes; None when it is larger than a record can be.
fn read_record(p: &Path) -> Result<Option<Vec<u8>>> {
    let mut bytes = Vec::new();
    std::fs::File::open(p)
        .and_then(|f| f.take(MAX_RECORD + 1).read_to_end(&mut bytes))
        .map_err(crate::error::io(p.display().to_string()))?;
    Ok((bytes.len() as u64 <= MAX_RECORD).then_some(bytes))
}

/// What an import took.
#[derive(Debug)]
pub struct Imported {
    /// Records added (or replacing earlier ones, or withdrawing them).
    pub used: usize,
    /// Files not used: withdrawn records not held, records for no
    /// package, files too large, and the damaged ones below.
    pub skipped: usize,
    /// Files that are no OSV record at all, with why.
    pub damaged: Vec<String>,
}

impl VulnDb {
    pub fn len(&self) -> usize {
        self.advisories.len()
    }

    pub fn is_empty(&self) -> bool {
        self.advisories.is_empty()
    }

    /// A digest of the content, naming it in stored scan results.
    pub fn digest(&self) -> [u8; 32] {
        *blake3::hash(&postcard::to_allocvec(self).expect("serialise")).as_bytes()
    }

    /// Adds one OSV JSON record; false when it is not one we can use.
    pub fn add_json(&mut self, bytes: &[u8]) -> bool {
        self.add_record(bytes).unwrap_or(false)
    }

    /// [`add_json`](Self::add_json), saying why bytes that are no OSV
    /// record are not one.
    fn add_record(&mut self, bytes: &[u8]) -> std::result::Result<bool, String> {
        let r = serde_json::from_slice::<OsvRecord>(bytes).map_err(|e| e.to_string())?;
        Ok(self.add_parsed(r))
    }

    fn add_parsed(&mut self, r: OsvRecord) -> bool {
        // A record withdrawn since an earlier import (a false report)
        // takes the earlier one out.
        if r.withdrawn.is_some() {
            return self.advisories.remove(&r.id).is_some();
        }
        match Advisory::from_record(r) {
            Some(a) if !a.affected.is_empty() => {
                self.advisories.insert(a.id.clone(), a);
                true
            }
            _ => false,
        }
    }

    /// Imports a zip of records or a folder of `.json` files.
    pub fn import(&mut self, path: &Path) -> Result<Imported> {
        let (mut used, mut skipped) = (0usize, 0usize);
        let mut damaged: Vec<String> = Vec::new();
        let mut total = 0u64;
        let mut take =
            |db: &mut VulnDb, name: &str, bytes: &[u8], used: &mut usize, skipped: &mut usize| {
                total += bytes.len() as u64;
                if total > MAX_IMPORT_BYTES {
                    return Err(Error::VulnDb(format!(
                        "more than {} GiB of records in one import",
                        MAX_IMPORT_BYTES >> 30
                    )));
                }
                match db.add_record(bytes) {
                    Ok(true) => *used += 1,
                    // Withdrawn, or for no package: nothing to match.
                    Ok(false) => *skipped += 1,
                    // Not an OSV record at all (a truncated download, say):
                    // named, so it is not taken for one of those.
                    Err(why) => {
                        *skipped += 1;
                        damaged.push(format!("{name}: {why}"));
                    }
                }
                Ok(())
            };
        if path.is_dir() {
            let mut stack = vec![path.to_path_buf()];
            while let Some(d) = stack.pop() {
                let rd =
                    std::fs::read_dir(&d).map_err(crate::error::io(d.display().to_string()))?;
                for e in rd {
                    let p = e.map_err(crate::error::io(d.display().to_string()))?.path();
                    // Links are not followed: one to a parent folder would
                    // loop, one to /dev/zero would never end.
                    let Ok(md) = std::fs::symlink_metadata(&p) else {
                        skipped += 1;
                        continue;
                    };
                    if md.is_dir() {
                        stack.push(p);
                    } else if md.is_file() && p.extension().is_some_and(|x| x == "json") {
                        let name = p.display().to_string();
                        match read_record(&p)? {
                            Some(bytes) => take(self, &name, &bytes, &mut used, &mut skipped)?,
                            None => skipped += 1,
                        }
                    }
                    if used + skipped > MAX_RECORDS {
                        return Err(Error::VulnDb(format!("more than {MAX_RECORDS} records")));
                    }
                }
            }
        } else if path.extension().is_some_and(|x| x == "json") {
            // One record, as OSV serves them one by one.
            let name = path.display().to_string();
            match read_record(path)? {
                Some(bytes) => take(self, &name, &bytes, &mut used, &mut skipped)?,
                None => skipped += 1,
            }
        } else {
            let f =
                std::fs::File::open(path).map_err(crate::error::io(path.display().to_string()))?;
            let mut zip = zip::ZipArchive::new(f).map_err(|e| {
                Error::VulnDb(format!("{}: not a zip of OSV records: {e}", path.display()))
            })?;
            for i in 0..zip.len() {
                let mut entry = zip
                    .by_index(i)
                    .map_err(|e| Error::VulnDb(format!("{}: {e}", path.display())))?;
                if !entry.is_file() || !entry.name().is_ok_and(|n| n.ends_with(".json")) {
                    continue;
                }
                if entry.size() > MAX_RECORD {
                    skipped += 1;
                    continue;
                }
                let mut bytes = Vec::new();
                // Read at most the limit, whatever the header claims.
                (&mut entry)
                    .take(MAX_RECORD)
                    .read_to_end(&mut bytes)
                    .map_err(|e| Error::VulnDb(format!("{}: {e}", path.display())))?;
                let name = format!("{}:{}", path.display(), entry.name().unwrap_or("?".into()));
                take(self, &name, &bytes, &mut used, &mut skipped)?;
                if used + skipped > MAX_RECORDS {
                    return Err(Error::VulnDb(format!("more than {MAX_RECORDS} records")));
                }
            }
        }
        if used == 0 {
            // Nothing usable is an import gone wrong (a wrong file, an
            // empty download), not a database that is now up to date.
            return Err(Error::VulnDb(format!(
                "{}: no OSV advisory found ({skipped} file(s) that are not OSV records with affected packages)",
                path.display()
            )));
        }
        Ok(Imported {
            used,
            skipped,
            damaged,
        })
    }

    /// Loads the database at `path`; an empty one when there is none.
    pub fn load(path: &Path) -> Result<VulnDb> {
        match std::fs::read(path) {
            Ok(b) => postcard::from_bytes(&b).map_err(|e| {
                Error::VulnDb(format!(
                    "{} is damaged ({e}); import the advisories again",
                    path.display()
                ))
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(VulnDb::default()),
            Err(e) => Err(crate::error::io(path.display().to_string())(e)),
        }
    }

    /// Writes the database atomically (temp file, fsync, rename).
    pub fn save(&self, path: &Path) -> Result<()> {
        let dir = path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(crate::error::io(dir.display().to_string()))?;
        let tmp = path.with_extension("tmp");
        let bytes = postcard::to_allocvec(self).expect("serialise");
        {
            use std::io::Write;
            let mut f =
                std::fs::File::create(&tmp).map_err(crate::error::io(tmp.display().to_string()))?;
            f.write_all(&bytes)
                .map_err(crate::error::io(tmp.display().to_string()))?;
            f.sync_all()
                .map_err(crate::error::io(tmp.display().to_string()))?;
        }
        std::fs::rename(&tmp, path).map_err(crate::error::io(path.display().to_string()))?;
        Ok(())
    }

    /// Ecosystems present, with their record counts.
    /// Advisories per ecosystem: one naming several packages of an
    /// ecosystem counts once there.
    pub fn ecosystems(&self) -> BTreeMap<String, usize> {
        let mut m = BTreeMap::new();
        for a in self.advisories.values() {
            let named: std::collections::BTreeSet<&String> =
                a.affected.iter().map(|x| &x.ecosystem).collect();
            for e in named {
                *m.entry(e.clone()).or_insert(0) += 1;
            }
        }
        m
    }

    /// The advisories that affect the inventory's packages (at most
    /// [`MAX_FINDINGS`]).
    pub fn matches(&self, inv: &Inventory) -> Vec<VulnFinding> {
        let (Some(eco), Some(scheme)) = (&inv.ecosystem, inv.scheme) else {
            return Vec::new();
        };
        // Debian, Ubuntu and Alpine advisories name source packages; the
        // RHEL family's name binary ones (openssl-libs) as often as
        // source ones, so both are looked up there. Packages are grouped
        // by the version advisories are checked against, so each
        // advisory's ranges are walked once per version, not once per
        // package: a crafted package database (thousands of packages of
        // one source) costs no more than a real one.
        let mut by_source: HashMap<&str, BTreeMap<&str, Vec<&Package>>> = HashMap::new();
        for p in &inv.packages {
            let rpm_name = scheme == crate::version::Scheme::Rpm && p.name != p.source;
            let keys =
                std::iter::once(p.source.as_str()).chain(rpm_name.then_some(p.name.as_str()));
            for key in keys {
                let versions = by_source.entry(key).or_default();
                if versions.len() < MAX_VERSIONS_PER_SOURCE
                    || versions.contains_key(p.source_version.as_str())
                {
                    versions
                        .entry(p.source_version.as_str())
                        .or_default()
                        .push(p);
                }
            }
        }
        let mut seen: HashSet<(&str, &str)> = HashSet::new();
        let mut out = Vec::new();
        'all: for adv in self.advisories.values() {
            for a in adv
                .affected
                .iter()
                .filter(|a| ecosystem_matches(&a.ecosystem, eco))
            {
                let Some(versions) = by_source.get(a.package.as_str()) else {
                    continue;
                };
                for (version, packages) in versions {
                    let Some(fixed) = affects(a, scheme, version) else {
                        continue;
                    };
                    for p in packages {
                        if !seen.insert((p.name.as_str(), adv.id.as_str())) {
                            continue;
                        }
                        out.push(VulnFinding {
                            id: adv.id.clone(),
                            aliases: adv.aliases.clone(),
                            package: p.name.clone(),
                            installed: p.version.clone(),
                            source: p.source.clone(),
                            source_version: p.source_version.clone(),
                            fixed: fixed.clone(),
                            severity: adv
                                .severity
                                .clone()
                                .or_else(|| a.severity.clone())
                                .unwrap_or_else(|| "UNKNOWN".into()),
                            summary: adv.summary.clone(),
                        });
                        if out.len() >= MAX_FINDINGS {
                            tracing::warn!(
                                "more than {MAX_FINDINGS} vulnerable packages: the list is cut short"
                            );
                            break 'all;
                        }
                    }
                }
            }
        }
        out.sort_by(|x, y| (&x.package, &x.id).cmp(&(&y.package, &y.id)));
        out
    }
}

/// Most findings reported for one snapshot (a real system has thousands
/// at worst; a crafted package database could make billions).
pub const MAX_FINDINGS: usize = 50_000;
/// Distinct installed versions of one source package looked at (a real
/// system has one, during an upgrade two or three).
const MAX_VERSIONS_PER_SOURCE: usize = 16;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cvss3_scores_match_the_specification_examples() {
        // Values from NVD for well-known vectors.
        assert_eq!(
            cvss3("CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H"),
            Some((9.8, "CRITICAL"))
        );
        assert_eq!(
            cvss3("CVSS:3.1/AV:L/AC:L/PR:L/UI:N/S:U/C:H/I:H/A:H"),
            Some((7.8, "HIGH"))
        );
        assert_eq!(
            cvss3("CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:C/C:H/I:H/A:H"),
            Some((10.0, "CRITICAL"))
        );
        assert_eq!(
            cvss3("CVSS:3.1/AV:N/AC:H/PR:N/UI:R/S:U/C:L/I:N/A:N"),
            Some((3.1, "LOW"))
        );
        assert_eq!(cvss3("garbage"), None);
    }

    /// A crafted package database (many packages of one source, many
    /// versions) against many advisories: bounded findings, quickly.
    #[test]
    fn a_crafted_inventory_cannot_blow_up_the_matching() {
        let mut db = VulnDb::default();
        for i in 0..200 {
            db.advisories.insert(
                format!("DSA-{i}"),
                Advisory {
                    id: format!("DSA-{i}"),
                    aliases: vec![],
                    summary: String::new(),
                    severity: None,
                    affected: vec![Affected {
                        ecosystem: "Debian:12".into(),
                        package: "linux".into(),
                        ranges: vec![vec![
                            Event::Introduced("0".into()),
                            Event::Fixed("9.9-1".into()),
                        ]],
                        versions: vec![],
                        severity: None,
                    }],
                },
            );
        }
        let inv = Inventory {
            os: None,
            ecosystem: Some("Debian:12".into()),
            scheme: Some(Scheme::Dpkg),
            packages: (0..100_000)
                .map(|i| Package {
                    name: format!("p{i}"),
                    version: "1.0-1".into(),
                    source: "linux".into(),
                    source_version: format!("1.{}-1", i % 1000),
                })
                .collect(),
            notes: vec![],
        };
        assert_eq!(db.matches(&inv).len(), MAX_FINDINGS);
        // A real inventory: every (package, advisory) pair once.
        let small = Inventory {
            packages: inv.packages[..3].to_vec(),
            ..inv
        };
        assert_eq!(db.matches(&small).len(), 3 * 200);
    }

    /// A folder import follows no links: one to /dev/zero is skipped, not
    /// read for ever, and one to a parent folder does not loop.
    #[test]
    fn a_folder_import_follows_no_links() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("a.json"),
            r#"{"id":"DSA-1","affected":[{"package":{"ecosystem":"Debian:12","name":"bash"},"ranges":[{"type":"ECOSYSTEM","events":[{"introduced":"0"},{"fixed":"5.2-1"}]}]}]}"#,
        )
        .unwrap();
        std::os::unix::fs::symlink("/dev/zero", dir.path().join("b.json")).unwrap();
        std::os::unix::fs::symlink(dir.path(), dir.path().join("loop")).unwrap();
        let mut db = VulnDb::default();
        let used = db.import(dir.path()).unwrap().used;
        assert_eq!(used, 1);
        assert!(db.advisories.contains_key("DSA-1"));
    }

    /// A record imported, then imported again as withdrawn, is gone.
    #[test]
    fn a_withdrawn_record_removes_the_earlier_import() {
        let record = |withdrawn: &str| {
            format!(
                r#"{{"id":"DSA-1","summary":"x",{withdrawn}"affected":[{{"package":{{"ecosystem":"Debian:12","name":"bash"}},"ranges":[{{"type":"ECOSYSTEM","events":[{{"introduced":"0"}},{{"fixed":"5.2-1"}}]}}]}}]}}"#
            )
        };
        let mut db = VulnDb::default();
        assert!(db.add_json(record("").as_bytes()));
        assert!(db.advisories.contains_key("DSA-1"));
        assert!(db.add_json(record(r#""withdrawn":"2026-01-01T00:00:00Z","#).as_bytes()));
        assert!(db.advisories.is_empty());
    }

    #[test]
    fn ranges_follow_osv_semantics() {
        let a = Affected {
            ecosystem: "Debian:12".into(),
            package: "glibc".into(),
            ranges: vec![vec![
                Event::Introduced("0".into()),
                Event::Fixed("2.36-9+deb12u3".into()),
            ]],
            versions: vec![],
            severity: None,
        };
        assert_eq!(
            affects(&a, Scheme::Dpkg, "2.36-9+deb12u1"),
            Some(Some("2.36-9+deb12u3".into()))
        );
        assert_eq!(affects(&a, Scheme::Dpkg, "2.36-9+deb12u3"), None);
        assert_eq!(affects(&a, Scheme::Dpkg, "2.36-9+deb12u4"), None);
        assert_eq!(affects(&a, Scheme::Dpkg, "not a version!"), None);
        let b = Affected {
            ranges: vec![vec![
                Event::Introduced("1.0-1".into()),
                Event::LastAffected("1.2-1".into()),
            ]],
            ..a
        };
        assert_eq!(affects(&b, Scheme::Dpkg, "0.9-1"), None);
        assert_eq!(affects(&b, Scheme::Dpkg, "1.2-1"), Some(None));
        assert_eq!(affects(&b, Scheme::Dpkg, "1.3-1"), None);
        assert!(ecosystem_matches("Ubuntu:22.04:LTS", "Ubuntu:22.04"));
        assert!(!ecosystem_matches("Debian:11", "Debian:1"));
    }
}
