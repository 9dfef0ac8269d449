//! Cairn's verification of recovery points, agentless and straight from
//! the vault: malware (YARA rules through boreal), vulnerabilities (the
//! guest's installed packages against imported OSV advisories),
//! persistence and tampering indicators (a diff against the previous
//! clean snapshot), and the walk back to the newest point that passes.
//!
//! A snapshot's scan result is stored beside it, write-once, as
//! `scan/v2/<snapshot id>.<profile>` where the profile names the rule
//! set, the advisory database and the baseline it was made with; the
//! snapshot itself is never touched.

pub use cairn_rpm::bdb;
pub mod cache;
pub mod clamd;
pub mod error;
pub mod extensions;
pub mod fuzzing;
pub mod inventory;
pub mod lnk;
pub mod malware;
pub mod osv;
pub mod persistence;
pub mod registry;
pub mod rpm;
pub mod rules;
pub mod version;
pub mod walkback;
pub mod windows;

pub use error::{Error, Result};
pub use malware::{MalwareHit, MalwareStats};
pub use osv::{VulnDb, VulnFinding};
pub use persistence::Indicator;
pub use rules::{RuleSet, Severity};

use cache::ScanCache;
use cairn_guest::{FileEntry, Opened};
use cairn_vault::{Snapshot, SnapshotDisk, SnapshotId, Vault};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

/// Bumped when what a scan finds changes (v2: what is suspicious on its
/// own is reported whatever the baseline holds); results of another
/// version are scanned again.
pub const REPORT_VERSION: u32 = 2;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ScanVerdict {
    Clean,
    Warning,
    Compromised,
}

impl ScanVerdict {
    pub fn as_str(self) -> &'static str {
        match self {
            ScanVerdict::Clean => "clean",
            ScanVerdict::Warning => "warning",
            ScanVerdict::Compromised => "compromised",
        }
    }

    fn of(s: Severity) -> Self {
        match s {
            Severity::Warning => ScanVerdict::Warning,
            Severity::Compromised => ScanVerdict::Compromised,
        }
    }
}

/// One snapshot's scan, as stored and as `cairn scan --json` prints it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ScanReport {
    pub version: u32,
    pub snapshot: SnapshotId,
    pub name: String,
    pub time: chrono::DateTime<chrono::Utc>,
    pub scanned_at: chrono::DateTime<chrono::Utc>,
    pub verdict: ScanVerdict,
    /// The snapshot persistence was compared with (None: nothing older).
    pub baseline: Option<SnapshotId>,
    pub rules: String,
    /// The rule set's family (see `RuleSet::family`); empty in results
    /// stored before it was recorded, whose `rules` stands for it.
    #[serde(default)]
    pub rule_family: String,
    pub advisories: usize,
    pub malware: Vec<MalwareHit>,
    pub persistence: Vec<Indicator>,
    /// Things to patch before production; they do not change the verdict.
    pub vulnerabilities: Vec<VulnFinding>,
    pub os: Option<String>,
    pub packages: usize,
    pub notes: Vec<String>,
    pub stats: MalwareStats,
    pub seconds: f64,
    /// The one partition scanned (`scan --partition`); None: the disk's
    /// filesystem a scan reads by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partition: Option<u32>,
}

impl ScanReport {
    /// What a newer result must have been made with to supersede this one.
    /// A scan of one partition is a family of its own: it neither
    /// supersedes what a scan of the disk found nor is superseded by it.
    pub fn family(&self) -> std::borrow::Cow<'_, str> {
        let rules = if self.rule_family.is_empty() {
            &self.rules
        } else {
            &self.rule_family
        };
        match self.partition {
            None => rules.into(),
            Some(p) => format!("{rules}/partition {p}").into(),
        }
    }

    /// Whether a file went unjudged (see [`rules::is_transient`]).
    pub fn incomplete(&self) -> bool {
        self.malware.iter().any(|h| rules::is_transient(&h.rule))
    }

    pub fn findings(&self) -> usize {
        self.malware.len() + self.persistence.len()
    }
}

/// What a scan runs with: the rules, the advisories, the caches.
pub struct Profile {
    pub rules: RuleSet,
    pub vulndb: VulnDb,
    vulndb_digest: [u8; 32],
    pub cache: ScanCache,
    /// Partition to read on disk snapshots (default: the largest readable).
    pub partition: Option<u32>,
}

/// Where the per-machine state of a local vault lives (not vault
/// objects: mutable, rebuildable, never verified).
pub fn local_dir(vault: &Vault) -> PathBuf {
    vault.root().join("local")
}

pub fn vulndb_path(vault: &Vault) -> PathBuf {
    local_dir(vault).join("vulndb.bin")
}

impl Profile {
    /// Cairn's rules plus the operator's (`rules_dir`) and ClamAV when
    /// `CAIRN_CLAMD` names a clamd socket, the imported advisories and the
    /// vault's scan cache.
    pub fn load(vault: &Vault, rules_dir: Option<&Path>) -> Result<Profile> {
        let mut rules = RuleSet::load(rules_dir)?;
        if let Ok(addr) = std::env::var("CAIRN_CLAMD")
            && !addr.is_empty()
        {
            rules = rules.with_clamd(clamd::Clamd::connect(&addr)?);
        }
        let vulndb = VulnDb::load(&vulndb_path(vault))?;
        let cache = ScanCache::open(&local_dir(vault).join("scan-cache"), &rules.hash)?;
        Ok(Self::new(rules, vulndb, cache))
    }

    pub fn new(rules: RuleSet, vulndb: VulnDb, cache: ScanCache) -> Profile {
        Profile {
            vulndb_digest: vulndb.digest(),
            rules,
            vulndb,
            cache,
            partition: None,
        }
    }

    fn record_name(&self, snap: &SnapshotId, baseline: Option<&SnapshotId>) -> String {
        let mut h = blake3::Hasher::new();
        h.update(&self.rules.hash);
        h.update(&self.vulndb_digest);
        h.update(baseline.map(|b| b.0.as_bytes()).unwrap_or(b"-"));
        h.update(&self.partition.unwrap_or(0).to_le_bytes());
        format!(
            "scan/v{REPORT_VERSION}/{}.{}",
            snap.0,
            hex::encode(&h.finalize().as_bytes()[..8])
        )
    }
}

/// Every stored scan result, per snapshot, oldest scan first.
pub fn stored_reports(vault: &Vault) -> HashMap<SnapshotId, Vec<ScanReport>> {
    stored_reports_where(vault, |_| true)
}

/// [`stored_reports`] of the snapshots `wanted` says yes to, reading no
/// other record (a backup looks at its own source's scans only).
fn stored_reports_where(
    vault: &Vault,
    wanted: impl Fn(&str) -> bool,
) -> HashMap<SnapshotId, Vec<ScanReport>> {
    let mut out: HashMap<SnapshotId, Vec<ScanReport>> = HashMap::new();
    for name in vault
        .backend()
        .list(&format!("scan/v{REPORT_VERSION}"))
        .unwrap_or_default()
        .into_iter()
        .filter(|n| {
            wanted(
                n.rsplit('/')
                    .next()
                    .unwrap_or("")
                    .split('.')
                    .next()
                    .unwrap_or(""),
            )
        })
    {
        let Some(r) = vault
            .read_object(&name)
            .ok()
            .and_then(|b| serde_json::from_slice::<ScanReport>(&b).ok())
        else {
            continue;
        };
        // (Stored before findings were made printable when found.)
        let mut r = r;
        r.make_printable();
        // The record's name must agree with its content.
        let file = name.rsplit('/').next().unwrap_or("");
        if file.split('.').next() == Some(r.snapshot.0.as_str()) {
            out.entry(r.snapshot.clone()).or_default().push(r);
        }
    }
    for v in out.values_mut() {
        v.sort_by_key(|r| r.scanned_at);
    }
    out
}

/// The standing scan result of each scanned snapshot (see [`standing`]).
pub fn latest_reports(vault: &Vault) -> HashMap<SnapshotId, ScanReport> {
    standing_of(&stored_reports(vault))
}

/// Every stored result of the snapshots `ids` (a timeline's, which has
/// listed the vault's snapshots already), oldest scan first.
pub fn stored_reports_for<'a>(
    vault: &Vault,
    ids: impl IntoIterator<Item = &'a SnapshotId>,
) -> HashMap<SnapshotId, Vec<ScanReport>> {
    let ids: std::collections::HashSet<&str> = ids.into_iter().map(|id| id.0.as_str()).collect();
    stored_reports_where(vault, |id| ids.contains(id))
}

/// [`latest_reports`] of the snapshots `ids`.
pub fn latest_reports_for<'a>(
    vault: &Vault,
    ids: impl IntoIterator<Item = &'a SnapshotId>,
) -> HashMap<SnapshotId, ScanReport> {
    standing_of(&stored_reports_for(vault, ids))
}

/// What the stored scans of `timeline`'s snapshots say (for
/// [`cairn_insight::assess_latest`]).
pub fn verification_of(
    vault: &Vault,
    timeline: &cairn_insight::Timeline,
) -> cairn_insight::Verification {
    verification(&stored_reports_for(vault, timeline.snapshot_ids()))
}

/// The timeline of `name` with what the stored scans found heeded: a
/// snapshot a scan found compromised is no clean point, whatever insight
/// saw (the clean point `cairn timeline` names).
pub fn verified_timeline(
    vault: &Arc<Vault>,
    name: &str,
) -> cairn_insight::Result<cairn_insight::Timeline> {
    let mut t = cairn_insight::timeline(vault, name, &mut |_| {})?;
    t.heed_verification(&verification_of(vault, &t));
    Ok(t)
}

/// The result that stands for a snapshot, of its stored ones (oldest
/// first): each rule family's newest, and of those the worst (the newest
/// of equals). A scan with other rules does not undo what one set found —
/// the built-in rules know nothing of the operator's indicator that
/// matched — while a newer scan with the same rule files (edited, or with
/// a newer signature database) supersedes an older.
pub fn standing(reports: &[ScanReport]) -> Option<&ScanReport> {
    standing_apart_from(reports, "")
}

/// [`standing`] of the results of another rule family than `family`
/// (what a scan of that family does not supersede).
pub fn standing_apart_from<'a>(reports: &'a [ScanReport], family: &str) -> Option<&'a ScanReport> {
    let mut newest: HashMap<std::borrow::Cow<'_, str>, &ScanReport> = HashMap::new();
    for r in reports.iter().filter(|r| r.family() != family) {
        newest.insert(r.family(), r);
    }
    newest
        .into_values()
        // One partition found clean says nothing of the rest of the disk:
        // it does not vouch for the snapshot (what it found still counts).
        .filter(|r| r.partition.is_none() || r.verdict != ScanVerdict::Clean)
        .max_by_key(|r| (r.verdict, r.scanned_at))
}

/// [`standing`] of each snapshot of `all` (every stored result per
/// snapshot, oldest first).
pub fn standing_of(all: &HashMap<SnapshotId, Vec<ScanReport>>) -> HashMap<SnapshotId, ScanReport> {
    all.iter()
        .filter_map(|(k, v)| standing(v).map(|r| (k.clone(), r.clone())))
        .collect()
}

/// A file the newest scans of a chain flag (see [`flagged_files`]).
#[derive(Clone, Debug)]
pub struct FlaggedFile {
    /// The first snapshot of the run of scans that flag it.
    pub first: SnapshotId,
    pub path: String,
    pub why: String,
    /// An earlier version may replace the file: it is the foothold itself
    /// (malware in it, a planted unit, cron entry, key or binary), or an
    /// account file an attacker added a login to (passwd, shadow: the
    /// account changes made since are lost, and the provenance says so).
    /// False for registry hives, which hold the whole system's settings:
    /// reported, kept.
    pub revert: bool,
    /// With no earlier version to take, the file may be left out: it is
    /// the foothold itself. False for account files, which a system
    /// cannot do without (kept for review instead).
    pub droppable: bool,
    /// Not flagged itself: a flagged foothold starts it (see
    /// `persistence::Indicator::started`).
    pub started: bool,
}

/// Whether a persistence finding of this kind is undone by taking an
/// earlier version of its file. Account files are: a login the attacker
/// added (a second uid 0, a password on a system account) must not go
/// back into production, and accounts made since are few and known.
fn reverts(kind: &str) -> bool {
    !kind.starts_with("windows_") || matches!(kind, "windows_startup" | "windows_task")
}

/// Findings in the account files (passwd, shadow): reverted when there
/// is an earlier version, never left out.
fn holds_accounts(kind: &str) -> bool {
    matches!(kind, "new_account" | "uid0_account" | "password_set")
}

/// The files verification flags in `chain` (time order) as things stand:
/// flagged by the newest scanned snapshot that looked, from the first
/// scan of the unbroken run that flags them (a later scan that no longer
/// flags a file clears it).
pub fn flagged_files(vault: &Vault, chain: &[Snapshot]) -> Vec<FlaggedFile> {
    let reports = latest_reports(vault);
    let mut open: BTreeMap<String, FlaggedFile> = BTreeMap::new();
    for s in chain {
        let Some(r) = reports.get(&s.id) else {
            continue;
        };
        let mut now: BTreeMap<&str, (String, bool, bool, bool)> = BTreeMap::new();
        // A file not judged (timed out, clamd failing) is not flagged:
        // rollback would otherwise revert or drop a good file.
        for h in r.malware.iter().filter(|h| !rules::is_transient(&h.rule)) {
            now.entry(&h.path)
                .or_insert((format!("malware rule {}", h.rule), true, true, false));
        }
        for i in &r.persistence {
            now.entry(&i.path).or_insert((
                i.detail.clone(),
                reverts(&i.kind),
                !holds_accounts(&i.kind),
                false,
            ));
        }
        // The program a flagged foothold starts (a Run value's, a
        // shortcut's, a cron job's): left out with it, or brought back
        // as it was before, or the rolled-back system starts it again.
        for i in &r.persistence {
            for t in i.started() {
                now.entry(t).or_insert((
                    format!("started by {}: {}", i.path, i.detail),
                    true,
                    true,
                    true,
                ));
            }
        }
        open.retain(|p, _| now.contains_key(p.as_str()));
        for (path, (why, revert, droppable, started)) in now {
            open.entry(path.to_string()).or_insert(FlaggedFile {
                first: s.id.clone(),
                path: path.to_string(),
                why,
                revert,
                droppable: revert && droppable,
                started,
            });
        }
    }
    open.into_values().collect()
}

/// The snapshots of `name` in time order.
pub fn chain(vault: &Vault, name: &str) -> Result<Vec<Snapshot>> {
    let (all, _) = vault.snapshots()?;
    let chain: Vec<Snapshot> = all.into_iter().filter(|s| s.name == name).collect();
    if chain.is_empty() {
        return Err(Error::Vault(cairn_vault::Error::SnapshotNotFound(format!(
            "{name:?}: no snapshots of that name{}",
            if name.contains('@') {
                " (this takes a source's NAME alone, without @…)"
            } else {
                ""
            }
        ))));
    }
    Ok(chain)
}

/// What the stored scans say (`all`, every stored result per snapshot,
/// oldest first): the snapshots whose standing result is compromised,
/// each with what was found, and those cleared — standing clean, and
/// scanned clean with the rule family of every compromised snapshot of
/// their source, against a baseline not found compromised (a clean scan
/// with other rules says nothing of what those rules found: the indicator
/// may be in this snapshot too; one against a compromised baseline may
/// have taken its foothold for the normal state).
pub fn verification(all: &HashMap<SnapshotId, Vec<ScanReport>>) -> cairn_insight::Verification {
    let mut v = cairn_insight::Verification::default();
    let stand = standing_of(all);
    let findings: Vec<&ScanReport> = stand
        .values()
        .filter(|r| r.verdict == ScanVerdict::Compromised)
        .collect();
    for (id, r) in &stand {
        match r.verdict {
            ScanVerdict::Compromised => {
                let found = walkback::describe(r);
                let first = found
                    .first()
                    .cloned()
                    .unwrap_or_else(|| "see its scan".into());
                let more = match found.len() {
                    0 | 1 => String::new(),
                    n => format!(" and {} more", n - 1),
                };
                v.compromised.insert(id.clone(), format!("{first}{more}"));
            }
            ScanVerdict::Clean => {
                let own = &all[id];
                let answers = |bad: &&ScanReport| {
                    bad.name != r.name
                        || own.iter().any(|c| {
                            c.verdict == ScanVerdict::Clean
                                && c.family() == bad.family()
                                && c.baseline.as_ref().is_none_or(|b| {
                                    stand
                                        .get(b)
                                        .is_none_or(|s| s.verdict != ScanVerdict::Compromised)
                                })
                        })
                };
                if findings.iter().all(answers) {
                    v.cleared.insert(id.clone());
                }
            }
            ScanVerdict::Warning => {}
        }
    }
    v
}

/// The verdict of each scanned snapshot's newest stored result. Read once
/// per run; a run adds the verdicts it stores (each the newest).
pub fn latest_verdicts(vault: &Vault) -> HashMap<SnapshotId, ScanVerdict> {
    latest_reports(vault)
        .into_iter()
        .map(|(id, r)| (id, r.verdict))
        .collect()
}

/// The baseline persistence is compared with: the newest earlier
/// snapshot whose stored scan was clean (`verdicts` from
/// [`latest_verdicts`]), else the oldest of the chain (what is
/// suspicious on its own is looked for whatever the baseline holds: see
/// `Scan::persistence`).
pub fn baseline_for(
    chain: &[Snapshot],
    snap: &SnapshotId,
    verdicts: &HashMap<SnapshotId, ScanVerdict>,
) -> Option<Snapshot> {
    let i = chain.iter().position(|s| s.id == *snap)?;
    chain[..i]
        .iter()
        .rev()
        .find(|s| verdicts.get(&s.id) == Some(&ScanVerdict::Clean))
        .or_else(|| chain[..i].first())
        .cloned()
}

/// A snapshot opened for scanning, its files listed once.
pub struct Target {
    pub opened: Opened,
    pub entries: Vec<FileEntry>,
    /// Folders that could not be read (crafted or damaged), with why:
    /// what is in them is not scanned.
    pub unread: Vec<String>,
}

impl Target {
    pub fn open(vault: &Arc<Vault>, snap: &Snapshot, partition: Option<u32>) -> Result<Target> {
        let opened = cairn_guest::open_snapshot(vault, snap.clone(), partition)?;
        // Insight stores each analysed snapshot's list; reuse it.
        // (Stored only when every folder read; folders nested deeper than
        // the walk goes are looked for again.)
        let (entries, unread) = match cairn_insight::filelist::load(vault, &snap.id) {
            Some(e) if partition.is_none() => {
                let deep = cairn_guest::too_deep(opened.fs.as_ref(), &e);
                (e, deep.iter().map(cairn_guest::Unread::describe).collect())
            }
            _ => cairn_guest::walk_readable(opened.fs.as_ref())?,
        };
        Ok(Target {
            opened,
            entries,
            unread,
        })
    }

    fn side(&self) -> persistence::Side<'_> {
        persistence::Side {
            fs: self.opened.fs.as_ref(),
            entries: &self.entries,
        }
    }
}

/// Snapshots opened for scanning, kept for reuse: scanning a history in
/// order, one scan's target is often the next one's baseline, and a walk
/// back compares every candidate with the same baseline.
#[derive(Default)]
pub struct Targets {
    open: Vec<(SnapshotId, Arc<Target>)>,
}

/// Opened snapshots kept by [`Targets`] (each holds a chunk cache).
const KEEP_TARGETS: usize = 3;

impl Targets {
    /// The disk of snapshot `id` if it is open here.
    fn disk(&self, id: &SnapshotId) -> Option<Arc<SnapshotDisk>> {
        self.open
            .iter()
            .find(|(i, _)| i == id)
            .and_then(|(_, t)| t.opened.disk.clone())
    }

    /// Keeps `target`, opened elsewhere (see [`scan_many`]).
    fn put(&mut self, id: SnapshotId, target: Arc<Target>) {
        if self.open.len() >= KEEP_TARGETS {
            self.open.remove(0);
        }
        self.open.push((id, target));
    }

    pub fn get(
        &mut self,
        vault: &Arc<Vault>,
        snap: &Snapshot,
        partition: Option<u32>,
    ) -> Result<Arc<Target>> {
        if let Some(i) = self.open.iter().position(|(id, _)| *id == snap.id) {
            let t = self.open.remove(i);
            self.open.push(t.clone());
            return Ok(t.1);
        }
        let t = Arc::new(Target::open(vault, snap, partition)?);
        self.put(snap.id.clone(), t.clone());
        Ok(t)
    }
}

/// The stages of a scan, cheapest first; a walk back stops at the first
/// that fails.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Stage {
    Insight,
    Persistence,
    Malware,
    Vulnerabilities,
    Boot,
}

impl Stage {
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Insight => "insight",
            Stage::Persistence => "persistence",
            Stage::Malware => "malware",
            Stage::Vulnerabilities => "vulnerabilities",
            Stage::Boot => "boot",
        }
    }
}

/// What a scan tells its caller while it runs.
pub trait Progress {
    fn stage(&mut self, _snap: &Snapshot, _stage: Stage) {}
    /// Malware scan progress: bytes of files done of `total` (called from
    /// the scanning threads).
    fn bytes(&self) -> &(dyn Fn(u64, u64) + Sync) {
        &|_, _| {}
    }
}

pub struct Quiet;
impl Progress for Quiet {}

/// A scan in progress: stages run one by one.
pub struct Scan<'a> {
    vault: &'a Arc<Vault>,
    pub report: ScanReport,
    target: Arc<Target>,
    baseline: Option<Arc<Target>>,
    /// The disk of the snapshot before (see [`malware::Keyer::Disk`]).
    earlier: Option<Arc<SnapshotDisk>>,
    started: Instant,
    record: String,
}

impl ScanReport {
    /// What the findings quote from the guest's files (a cron line, a
    /// startup script's words), with control characters escaped: a planted
    /// file must not hide its own line on the operator's terminal.
    fn make_printable(&mut self) {
        use cairn_vault::text::printable;
        for p in &mut self.persistence {
            p.detail = printable(&p.detail);
            p.path = printable(&p.path);
            if let Some(t) = &mut p.target {
                *t = printable(t);
            }
            for a in &mut p.also {
                *a = printable(a);
            }
        }
        for h in &mut self.malware {
            h.path = printable(&h.path);
            h.description = printable(&h.description);
        }
    }

    /// A report with nothing found yet.
    fn empty(snap: &Snapshot, baseline: Option<&Snapshot>, profile: &Profile) -> ScanReport {
        ScanReport {
            version: REPORT_VERSION,
            snapshot: snap.id.clone(),
            name: snap.name.clone(),
            time: snap.time,
            scanned_at: chrono::Utc::now(),
            verdict: ScanVerdict::Clean,
            baseline: baseline.map(|b| b.id.clone()),
            rules: profile.rules.hash_hex(),
            rule_family: profile.rules.family_hex(),
            advisories: profile.vulndb.len(),
            malware: vec![],
            persistence: vec![],
            vulnerabilities: vec![],
            os: None,
            packages: 0,
            notes: vec![],
            stats: MalwareStats::default(),
            seconds: 0.0,
            partition: profile.partition,
        }
    }
}

/// A snapshot whose filesystem cannot be read where its baseline's (an
/// earlier snapshot of the source) could be — encrypted or wiped whole:
/// that is the finding, not an error, so a history is still scanned to
/// the end and a walk back steps past it. Any other failure stays one.
fn unreadable_filesystem(
    vault: &Arc<Vault>,
    snap: &Snapshot,
    baseline: Option<&Snapshot>,
    profile: &Profile,
    targets: &mut Targets,
    err: Error,
) -> Result<ScanReport> {
    // What the bytes say about the filesystem, not a vault that failed to
    // give them (damage there is verify's to report, and not stored here).
    let (
        Error::Guest(
            why @ (cairn_guest::GuestError::Corrupt(_)
            | cairn_guest::GuestError::Unsupported(_)
            | cairn_guest::GuestError::NotFound(_)),
        ),
        Some(b),
    ) = (&err, baseline)
    else {
        return Err(err);
    };
    if targets.get(vault, b, profile.partition).is_err() {
        return Err(err);
    }
    let mut report = ScanReport::empty(snap, baseline, profile);
    report.verdict = ScanVerdict::Compromised;
    report.persistence.push(Indicator {
        path: "/".into(),
        kind: "filesystem_unreadable".into(),
        target: None,
        also: Vec::new(),
        severity: rules::Severity::Compromised,
        detail: format!(
            "the filesystem {}@{} had cannot be read here ({why}): encrypted or wiped whole?",
            b.name,
            b.id.short()
        ),
    });
    let record = profile.record_name(&snap.id, Some(&b.id));
    let json = serde_json::to_vec(&report).expect("json");
    vault.put_sealed(&record, &json)?;
    Ok(report)
}

impl<'a> Scan<'a> {
    /// Opens `snap` (and `baseline`) for scanning; None from `stored` when
    /// a result with this profile and baseline is already stored.
    pub fn start(
        vault: &'a Arc<Vault>,
        snap: &Snapshot,
        baseline: Option<&Snapshot>,
        profile: &Profile,
        targets: &mut Targets,
    ) -> Result<Scan<'a>> {
        let started = Instant::now();
        let baseline_target = match baseline {
            Some(b) => Some(targets.get(vault, b, profile.partition)?),
            None => None,
        };
        let target = targets.get(vault, snap, profile.partition)?;
        let earlier = match (&snap.parent, &target.opened.disk, &profile.rules.windows) {
            // Scanning a history in order, the parent was the last target.
            (Some(p), Some(_), Ok(_)) => targets.disk(p).or_else(|| {
                vault
                    .read_snapshot(&Snapshot::object_name(p))
                    .and_then(|p| SnapshotDisk::open(vault.clone(), &p, 8))
                    .map(|d| Arc::new(d.without_read_ahead()))
                    .ok()
            }),
            _ => None,
        };
        Ok(Scan {
            vault,
            record: profile.record_name(&snap.id, baseline.map(|b| &b.id)),
            report: ScanReport::empty(snap, baseline, profile),
            target,
            baseline: baseline_target,
            earlier,
            started,
        })
    }

    /// The stored result of this exact scan, if one exists.
    pub fn stored(
        vault: &Vault,
        snap: &Snapshot,
        baseline: Option<&Snapshot>,
        profile: &Profile,
    ) -> Option<ScanReport> {
        let name = profile.record_name(&snap.id, baseline.map(|b| &b.id));
        let bytes = vault.read_object(&name).ok()?;
        let mut report: ScanReport = serde_json::from_slice(&bytes).ok()?;
        report.make_printable();
        // A result with a file not judged (a timeout, clamd failing) is
        // not the last word: such a point is scanned again.
        (!report.incomplete()).then_some(report)
    }

    /// 64 KiB blocks of the scanned snapshot decoded so far (0 for
    /// directories).
    fn decoded_blocks(&self) -> u64 {
        self.target
            .opened
            .disk
            .as_ref()
            .map_or(0, |d| d.decoded_blocks())
    }

    fn raise(&mut self, v: ScanVerdict) {
        self.report.verdict = self.report.verdict.max(v);
    }

    /// Persistence and tampering against the baseline; true when clean.
    pub fn persistence(&mut self) -> bool {
        let side = self.target.side();
        let mut found =
            persistence::indicators(self.baseline.as_ref().map(|b| b.side()).as_ref(), &side);
        // What is suspicious on its own (a preload, a second root, a
        // program in a temp folder) is reported whatever the baseline
        // holds: one never scanned may carry the same infection. Present
        // in the baseline too, it may also be the system's own (an
        // endpoint agent's preload): a warning then, so the point is no
        // pass, but not compromised for ever.
        if self.baseline.is_some() {
            let against_baseline = found.clone();
            for mut i in persistence::indicators(None, &side) {
                let same =
                    |f: &Indicator| f.path == i.path && f.kind == i.kind && f.detail == i.detail;
                if !against_baseline.iter().any(same) {
                    i.severity = rules::Severity::Warning;
                    i.detail = format!("{} (there in the baseline too)", i.detail);
                    found.push(i);
                }
            }
        }
        for i in &found {
            self.raise(ScanVerdict::of(i.severity));
        }
        self.report.persistence = found;
        self.report.persistence.is_empty()
    }

    /// Every file through the rules; true when nothing matched.
    pub fn malware(&mut self, profile: &mut Profile, bytes: &(dyn Fn(u64, u64) + Sync)) -> bool {
        let keyer = match &self.target.opened.disk {
            Some(d) => malware::Keyer::Disk {
                disk: d,
                earlier: self.earlier.as_deref(),
            },
            None => malware::Keyer::Tree,
        };
        let total: u64 = self
            .target
            .entries
            .iter()
            .filter(|e| e.kind == cairn_guest::FileKind::File)
            .map(|e| e.size)
            .sum();
        let (mut hits, mut stats) = malware::scan_files(
            self.target.opened.fs.as_ref(),
            &self.target.entries,
            &keyer,
            &profile.rules,
            &mut profile.cache,
            &|done| bytes(done, total),
        );
        hits.extend(malware::scan_streams(
            self.target.opened.fs.as_ref(),
            &self.target.entries,
            &profile.rules,
            &mut stats,
        ));
        if let Err(e) = profile.cache.flush() {
            self.report.notes.push(format!("scan cache not saved: {e}"));
        }
        for h in &hits {
            self.raise(ScanVerdict::of(h.severity));
        }
        if !stats.unreadable.is_empty() {
            // A file that could not be read is not known to be clean: a
            // point with one is a warning, not a pass.
            self.raise(ScanVerdict::Warning);
            self.report.notes.push(format!(
                "{} files could not be read and were not scanned, so this point is not judged clean: {}",
                stats.unreadable.len(),
                stats
                    .unreadable
                    .iter()
                    .take(5)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        if !self.target.unread.is_empty() {
            self.raise(ScanVerdict::Warning);
            self.report.notes.push(format!(
                "folders that could not be read were not scanned, so this point is not judged clean: {}",
                self.target
                    .unread
                    .iter()
                    .take(5)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join("; ")
            ));
        }
        self.report.malware = hits;
        self.report.stats = stats;
        self.report.malware.is_empty()
    }

    /// Installed packages against the advisories (never fails a point).
    pub fn vulnerabilities(&mut self, profile: &Profile) {
        let inv = inventory::read(self.target.opened.fs.as_ref());
        self.report.os = inv.os.as_ref().map(|o| {
            if o.pretty_name.is_empty() {
                format!("{} {}", o.id, o.version_id)
            } else {
                o.pretty_name.clone()
            }
        });
        self.report.packages = inv.packages.len();
        self.report.notes.extend(inv.notes.iter().cloned());
        if profile.vulndb.is_empty() && !inv.packages.is_empty() {
            self.report.notes.push(
                "no advisories imported (cairn vulndb import): packages were not checked".into(),
            );
        }
        // A system whose package database is gone (or never read) passes
        // this check by default: said, so nothing reads it as checked.
        if inv.os.is_some() && inv.packages.is_empty() {
            self.report.notes.push(
                "no installed packages found (package database missing or unreadable): vulnerabilities were not checked".into(),
            );
        }
        self.report.vulnerabilities = profile.vulndb.matches(&inv);
        if self.report.vulnerabilities.len() >= osv::MAX_FINDINGS {
            self.report.notes.push(format!(
                "more than {} vulnerable packages (a damaged or crafted package database?): the list is cut short",
                osv::MAX_FINDINGS
            ));
        }
    }

    /// Stores the finished result beside the snapshot (records are
    /// write-once: one with a file not judged this time is not stored, so
    /// the next scan of the point judges it again).
    pub fn finish(mut self) -> Result<ScanReport> {
        self.report.seconds = self.started.elapsed().as_secs_f64();
        self.report.make_printable();
        if !self.report.incomplete() {
            let json = serde_json::to_vec(&self.report).expect("json");
            self.vault.put_sealed(&self.record, &json)?;
        }
        Ok(self.report)
    }
}

/// A full scan of `snap` (all stages), stored; reuses a stored result of
/// the same profile and baseline.
pub fn scan_snapshot(
    vault: &Arc<Vault>,
    snap: &Snapshot,
    profile: &mut Profile,
    progress: &mut dyn Progress,
) -> Result<ScanReport> {
    Ok(scan_many(vault, std::slice::from_ref(snap), profile, progress)?.remove(0))
}

/// Full scans of several snapshots in one go, in time order (so each can
/// use the previous one's clean result as its baseline, and opened
/// snapshots are shared); results in the order given.
pub fn scan_many(
    vault: &Arc<Vault>,
    snaps: &[Snapshot],
    profile: &mut Profile,
    progress: &mut dyn Progress,
) -> Result<Vec<ScanReport>> {
    let mut order: Vec<usize> = (0..snaps.len()).collect();
    order.sort_by_key(|&i| snaps[i].time);
    let mut targets = Targets::default();
    let mut chains: HashMap<String, Vec<Snapshot>> = HashMap::new();
    let mut verdicts = latest_verdicts(vault);
    let mut out: Vec<Option<ScanReport>> = vec![None; snaps.len()];
    std::thread::scope(|s| -> Result<()> {
        // The next snapshot is opened (its map and file list read) on a
        // thread of its own while this one is scanned.
        let mut next: Option<(
            SnapshotId,
            std::thread::ScopedJoinHandle<'_, Result<Target>>,
        )> = None;
        for (k, &i) in order.iter().enumerate() {
            let snap = &snaps[i];
            // (Opened for nothing when its result turns out to be stored.)
            if let Some((id, opening)) = next.take()
                && let Ok(t) = opening.join().expect("opening thread")
                && id == snap.id
            {
                targets.put(id, Arc::new(t));
            }
            if !chains.contains_key(&snap.name) {
                chains.insert(snap.name.clone(), chain(vault, &snap.name)?);
            }
            let baseline = baseline_for(&chains[&snap.name], &snap.id, &verdicts);
            if let Some(r) = Scan::stored(vault, snap, baseline.as_ref(), profile) {
                out[i] = Some(r);
                continue;
            }
            let t = Instant::now();
            let mut scan = match Scan::start(vault, snap, baseline.as_ref(), profile, &mut targets)
            {
                Ok(scan) => scan,
                Err(e) => {
                    let r = unreadable_filesystem(
                        vault,
                        snap,
                        baseline.as_ref(),
                        profile,
                        &mut targets,
                        e,
                    )?;
                    verdicts.insert(r.snapshot.clone(), r.verdict);
                    out[i] = Some(r);
                    continue;
                }
            };
            tracing::debug!("{}: opened in {:?}", snap.id.short(), t.elapsed());
            if let Some(&j) = order.get(k + 1) {
                let (following, partition) = (&snaps[j], profile.partition);
                next = Some((
                    following.id.clone(),
                    s.spawn(move || Target::open(vault, following, partition)),
                ));
            }
            progress.stage(snap, Stage::Persistence);
            scan.persistence();
            tracing::debug!(
                "{}: persistence done at {:?} ({} blocks decoded)",
                snap.id.short(),
                t.elapsed(),
                scan.decoded_blocks()
            );
            progress.stage(snap, Stage::Malware);
            scan.malware(profile, progress.bytes());
            tracing::debug!(
                "{}: malware done at {:?} ({} blocks decoded)",
                snap.id.short(),
                t.elapsed(),
                scan.decoded_blocks()
            );
            progress.stage(snap, Stage::Vulnerabilities);
            scan.vulnerabilities(profile);
            tracing::debug!(
                "{}: vulnerabilities done at {:?}",
                snap.id.short(),
                t.elapsed()
            );
            let report = scan.finish()?;
            verdicts.insert(report.snapshot.clone(), report.verdict);
            out[i] = Some(report);
        }
        Ok(())
    })?;
    Ok(out
        .into_iter()
        .map(|r| r.expect("every snapshot scanned"))
        .collect())
}
