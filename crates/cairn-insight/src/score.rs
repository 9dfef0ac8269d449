//! From facts to a verdict. Each piece of evidence carries a weight (how
//! sure it alone makes us that the snapshot is hit); the score combines
//! them as independent evidence, `1 - Π(1 - w)`.
//!
//! File-level evidence (encrypted, broken or zeroed files, notes, renames
//! to a new extension) is what decides. Ingest metrics measured against a
//! baseline learned from the source's own clean history (change rate by
//! time of day and weekday, file churn, entropy, zeroing) weigh little
//! when the files were readable and showed no damage — a heavy day that
//! the files explain (an upgrade, a photo import) stays clean — and weigh
//! more when there are no files to look at.
//!
//! Damage also accumulates: files found damaged stay counted until a later
//! snapshot changes or removes them, so an attack that encrypts a few
//! files per day escalates instead of looking small every day.

use crate::content;
use crate::files::{Damage, FileSignals, Finding, path_hash};
use crate::signals::Signals;
use chrono::{DateTime, Datelike, Timelike, Utc};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

pub const SUSPICIOUS: f64 = 0.4;
pub const COMPROMISED: f64 = 0.7;
/// Files newly saved with a password in one snapshot that are more than
/// an owner protecting a few: suspicious, and undone by a rollback.
pub const MANY_PROTECTED: u64 = 5;
/// Clean snapshots needed before the baseline is trusted.
const MIN_BASELINE: usize = 3;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Clean,
    Suspicious,
    Compromised,
}

impl Verdict {
    /// Clean < suspicious < compromised.
    pub fn rank(self) -> u8 {
        match self {
            Verdict::Clean => 0,
            Verdict::Suspicious => 1,
            Verdict::Compromised => 2,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Clean => "clean",
            Verdict::Suspicious => "suspicious",
            Verdict::Compromised => "compromised",
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Assessment {
    pub score: f64,
    pub verdict: Verdict,
    /// Strongest first.
    pub reasons: Vec<String>,
    /// Damaged files carried from this and earlier snapshots.
    pub accumulated_damage: u64,
}

/// Scores snapshots of one source in time order, learning as it goes.
#[derive(Default)]
pub struct Assessor {
    /// (signals, verdict) of the snapshots assessed so far.
    history: Vec<(Signals, Verdict)>,
    /// Damaged files not repaired since: path hash → (path, index of the
    /// snapshot where found).
    carried: BTreeMap<u64, (String, usize)>,
    /// How `carried` changed at each snapshot assessed, against the state
    /// after the snapshot it was compared with: the state after any of
    /// them can be rebuilt. A snapshot's parent is not always the one
    /// assessed before it — a remediated state committed on an older
    /// point descends from that point, not from the attack after it.
    steps: Vec<Step>,
    /// The snapshot (index) after which `carried` is the state.
    carried_at: Option<usize>,
    /// Folders that stopped reading and have not read since: path → when
    /// first. A folder left broken stays a reason for as long as it is,
    /// however many snapshots later (each compared only with the one
    /// before would find nothing new).
    broken: BTreeMap<String, DateTime<Utc>>,
}

/// What one snapshot did to the damage carried (see `Assessor::steps`).
#[derive(Default)]
struct Step {
    /// The snapshot whose state it started from.
    base: Option<usize>,
    repaired: Vec<u64>,
    found: Vec<(u64, String, usize)>,
}

/// "2 folder(s) (/a, /b)", naming three at most.
fn folder_list<S: AsRef<str>>(folders: &[S]) -> String {
    let more = if folders.len() > 3 { ", …" } else { "" };
    let some: Vec<&str> = folders.iter().take(3).map(|f| f.as_ref()).collect();
    format!("{} folder(s) ({}{more})", folders.len(), some.join(", "))
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    Some(v[v.len() / 2])
}

fn churn(f: &FileSignals) -> f64 {
    (f.added + f.modified + f.deleted + f.renamed) as f64
}

/// A time slot for the baseline: quarter of the day, weekday or weekend.
fn slot(s: &Signals) -> (u32, bool) {
    (
        s.time.hour() / 6,
        s.time.weekday().number_from_monday() >= 6,
    )
}

struct Evidence(Vec<(f64, String)>);

impl Evidence {
    fn add(&mut self, w: f64, why: String) {
        if w > 0.0 {
            self.0.push((w, why));
        }
    }
}

fn example(f: &FileSignals, d: Damage) -> String {
    example_where(f, |x| x.damage == d)
}

fn example_where(f: &FileSignals, pick: impl Fn(&Finding) -> bool) -> String {
    f.findings
        .iter()
        .find(|x| pick(x))
        .map(|x| format!("{}: {}", x.path, x.detail))
        .unwrap_or_default()
}

/// New files of damage `d` that replaced nothing (see
/// [`Finding::replaced_nothing`]): they weigh little unless other damage
/// comes with them.
fn strays(f: &FileSignals, d: Damage) -> u64 {
    f.findings
        .iter()
        .filter(|x| x.damage == d && x.replaced_nothing())
        .count() as u64
}

/// `repaired`: how many of the users' files deleted had been found
/// damaged earlier (an operator clearing away what the attack left).
fn file_evidence(f: &FileSignals, repaired: u64, ev: &mut Evidence) {
    let notes = f.count(Damage::RansomNote);
    if notes > 0 {
        let spread = if f.note_copies >= 3 {
            format!(", the same note in {} folders", f.note_copies)
        } else {
            String::new()
        };
        ev.add(
            if f.note_copies >= 3 { 0.9 } else { 0.75 },
            format!(
                "{notes} ransom note(s){spread} (e.g. {})",
                example(f, Damage::RansomNote)
            ),
        );
    }
    let k = f.count(Damage::EncryptedInPlace);
    if k > 0 {
        let w = if k >= 10 || (k >= 3 && k * 5 >= f.modified) {
            0.9
        } else if k >= 3 {
            0.8
        } else {
            0.55
        };
        ev.add(
            w,
            format!(
                "{k} file(s) encrypted in place (e.g. {})",
                example(f, Damage::EncryptedInPlace)
            ),
        );
    }
    let k = f.count(Damage::BrokenStructure) - strays(f, Damage::BrokenStructure);
    if k > 0 {
        let w = match k {
            1 => 0.45,
            2..=4 => 0.6,
            _ => 0.75,
        };
        ev.add(
            w,
            format!(
                "{k} file(s) no longer match their type (e.g. {})",
                example_where(f, |x| x.damage == Damage::BrokenStructure
                    && !x.replaced_nothing())
            ),
        );
    }
    // Saved with a password by the file's own application: an owner
    // protects a few files; dozens at once is someone else.
    let k = f.count(Damage::Protected);
    if k > 0 {
        ev.add(
            match k {
                0..MANY_PROTECTED => 0.15,
                MANY_PROTECTED..20 => 0.45,
                _ => 0.75,
            },
            format!(
                "{k} file(s) newly password-protected (e.g. {})",
                example(f, Damage::Protected)
            ),
        );
    }
    let k = f.count(Damage::Zeroed);
    if k > 0 {
        let w = match k {
            1 => 0.4,
            2..=4 => 0.65,
            _ => 0.85,
        };
        ev.add(
            w,
            format!(
                "{k} file(s) overwritten with zeros (e.g. {})",
                example(f, Damage::Zeroed)
            ),
        );
    }
    let k = f.count(Damage::EncryptedNew) - strays(f, Damage::EncryptedNew);
    if k > 0 {
        let copies = f
            .findings
            .iter()
            .filter(|x| x.damage == Damage::EncryptedNew && x.origin.is_some())
            .count();
        let w = if k >= 10 || copies >= 3 {
            0.8
        } else if k >= 3 {
            0.6
        } else {
            0.3
        };
        ev.add(
            w,
            format!(
                "{k} new encrypted-looking file(s){} (e.g. {})",
                if copies > 0 {
                    format!(", {copies} replacing deleted originals")
                } else {
                    String::new()
                },
                example_where(f, |x| x.damage == Damage::EncryptedNew
                    && !x.replaced_nothing())
            ),
        );
    }
    // New files that look encrypted or broken but replaced nothing: one
    // weak sign however many (a cloned project's test vectors), which
    // only adds to others.
    let k = strays(f, Damage::EncryptedNew) + strays(f, Damage::BrokenStructure);
    if k > 0 {
        ev.add(
            if k >= 10 { 0.25 } else { 0.1 },
            format!(
                "{k} new file(s) encrypted-looking or not matching their type, replacing nothing (e.g. {})",
                example_where(f, Finding::replaced_nothing)
            ),
        );
    }
    // A wiper deletes: much of the users' files gone at once. (A user
    // clearing out a folder can look the same, hence no more than
    // suspicious.)
    let (gone, before) = (
        f.user_files_deleted.saturating_sub(repaired),
        f.user_files_before.saturating_sub(repaired),
    );
    if gone >= 20 && gone * 10 >= before * 3 {
        ev.add(
            0.45,
            format!(
                "{gone} of the users' files deleted, {:.0}% of them",
                gone as f64 * 100.0 / before as f64
            ),
        );
    }
    if let Some(top) = f.extension_churn.first()
        && top.files >= 3
    {
        ev.add(
            if top.files >= 10 { 0.8 } else { 0.6 },
            format!(
                "{} files given the new extension .{} (renamed, or replaced by copies)",
                top.files, top.extension
            ),
        );
    }
    if let Some(top) = f.new_extensions.first()
        && top.files >= 10
        && content::kind_for_extension(&top.extension).is_none()
    {
        ev.add(
            0.15,
            format!(
                "{} new files with the unknown extension .{}",
                top.files, top.extension
            ),
        );
    }
}

impl Assessor {
    pub fn new() -> Self {
        Self::default()
    }

    fn clean_history(&self) -> impl Iterator<Item = &Signals> {
        self.history
            .iter()
            .filter(|(_, v)| *v == Verdict::Clean)
            .map(|(s, _)| s)
    }

    /// Typical change rate for `s`'s time slot (or overall, when the slot
    /// has too few samples) among clean snapshots.
    fn typical_rate(&self, s: &Signals) -> Option<f64> {
        let all: Vec<&Signals> = self
            .clean_history()
            .filter(|h| h.change_rate.is_some())
            .collect();
        let same: Vec<f64> = all
            .iter()
            .filter(|h| slot(h) == slot(s))
            .filter_map(|h| h.change_rate)
            .collect();
        if same.len() >= MIN_BASELINE {
            return median(same);
        }
        (all.len() >= MIN_BASELINE)
            .then(|| median(all.iter().filter_map(|h| h.change_rate).collect()))
            .flatten()
    }

    /// The snapshot `s` was compared with, among those assessed: its
    /// parent, or (parent unknown or forgotten) the one before it.
    fn base_of(&self, s: &Signals) -> Option<usize> {
        s.parent
            .as_ref()
            .and_then(|p| self.history.iter().rposition(|(h, _)| h.snapshot == *p))
            .or_else(|| self.history.len().checked_sub(1))
    }

    /// The damage carried after snapshot `at`, rebuilt from the steps
    /// along its line of parents.
    fn carried_after(&self, at: Option<usize>) -> BTreeMap<u64, (String, usize)> {
        let mut line = Vec::new();
        let mut next = at;
        // Each step's base is an earlier snapshot: the walk ends.
        while let Some(i) = next {
            line.push(i);
            next = self.steps[i].base.filter(|&b| b < i);
        }
        let mut carried = BTreeMap::new();
        for i in line.into_iter().rev() {
            for h in &self.steps[i].repaired {
                carried.remove(h);
            }
            for (h, path, found) in &self.steps[i].found {
                carried.entry(*h).or_insert((path.clone(), *found));
            }
        }
        carried
    }

    /// Replaces the verdict remembered for the snapshot assessed last
    /// (a better-informed one was known; see `timeline`).
    pub fn overrule(&mut self, verdict: Verdict) {
        if let Some(last) = self.history.last_mut() {
            last.1 = verdict;
        }
    }

    /// Scores `s` (the next snapshot in time order) and remembers it.
    pub fn assess(&mut self, s: &Signals) -> Assessment {
        let mut ev = Evidence(Vec::new());
        let idx = self.history.len();
        let base = self.base_of(s);
        if base != self.carried_at {
            self.carried = self.carried_after(base);
        }
        let mut step = Step {
            base,
            ..Default::default()
        };
        let diffed = s.files.as_ref().filter(|_| s.parent_fs_readable);
        if let Some(f) = diffed {
            // Deleting files found damaged before is repair, not a wiper.
            let repaired = f
                .user_deleted
                .iter()
                .filter(|h| self.carried.contains_key(h))
                .count() as u64;
            file_evidence(f, repaired, &mut ev);
        }
        if !s.lost_filesystems.is_empty() {
            ev.add(
                0.75,
                format!(
                    "{} no longer there (overwritten: nothing on the disk reads as it any more)",
                    s.lost_filesystems.join(", ")
                ),
            );
        }
        if s.parent_fs_readable {
            if !s.unread_folders.is_empty() {
                ev.add(
                    0.75,
                    format!(
                        "{} no longer readable, their files gone from view",
                        folder_list(&s.unread_folders)
                    ),
                );
            }
            if !s.unread_new_folders.is_empty() {
                ev.add(
                    0.45,
                    format!(
                        "{} that cannot be read appeared",
                        folder_list(&s.unread_new_folders)
                    ),
                );
            }
        }
        self.broken.retain(|p, _| s.unread_paths.contains(p));
        let still: Vec<&String> = self
            .broken
            .keys()
            .filter(|p| !s.unread_folders.contains(p))
            .collect();
        if let Some(since) = self.broken.values().min()
            && !still.is_empty()
        {
            ev.add(
                0.75,
                format!(
                    "{} unreadable since {} still",
                    folder_list(&still),
                    since.format("%Y-%m-%d %H:%M")
                ),
            );
        }
        for p in &s.unread_folders {
            self.broken.entry(p.clone()).or_insert(s.time);
        }
        if s.fs_error.is_some() && s.parent_fs_readable {
            ev.add(
                0.75,
                format!(
                    "the filesystem is no longer readable ({})",
                    s.fs_error.as_deref().unwrap_or_default()
                ),
            );
        }

        // Metrics against the baseline. With readable, undamaged files
        // they only describe the day; without files they must speak.
        let explained = diffed.is_some();
        let pick = |explained_w: f64, raw_w: f64| if explained { explained_w } else { raw_w };
        let mib = |b: f64| b / (1u64 << 20) as f64;
        // A first snapshot "changes" everything: its metrics say nothing.
        let compared = s.parent.is_some();
        if let (true, Some(rate), Some(typical)) = (compared, s.change_rate, self.typical_rate(s)) {
            let ratio = rate / typical.max((1u64 << 20) as f64);
            if ratio >= 4.0 {
                ev.add(
                    if ratio >= 10.0 { pick(0.15, 0.35) } else { pick(0.08, 0.2) },
                    format!(
                        "change rate {:.1} MiB/h, {ratio:.0}x the typical {:.1} MiB/h for this time{}",
                        mib(rate),
                        mib(typical),
                        if explained && ev.0.is_empty() { " (files show no damage)" } else { "" }
                    ),
                );
            }
        }
        let clean_shares: Vec<f64> = self
            .clean_history()
            .filter(|h| h.changed_bytes > 0)
            .map(|h| h.high_entropy_share)
            .collect();
        // Whether a day's change is usually high-entropy: by the clean
        // history's median, or while it is short, by the earliest snapshot
        // (a first snapshot's share is the whole disk's) — on an encrypted
        // (LUKS) or media disk every day looks high-entropy, on others not.
        let high_entropy_usual = if clean_shares.len() >= MIN_BASELINE {
            median(clean_shares).unwrap_or(0.0) >= 0.3
        } else {
            self.history
                .first()
                .is_some_and(|(h, _)| h.high_entropy_share >= 0.5)
        };
        if compared
            && s.high_entropy_share >= 0.5
            && s.changed_bytes >= 1 << 20
            && !high_entropy_usual
        {
            let why = match diffed {
                Some(f) if f.dense_ok_files > 0 => format!(
                    "; {} changed files are archives or media that check out",
                    f.dense_ok_files
                ),
                Some(_) => String::new(),
                None => "; there are no files to tell encryption from compressed data".into(),
            };
            // Without files to look at, data turning high-entropy where the
            // history shows none (or where there is no history yet) is
            // suspicious on its own: it is all there is to see of an
            // encryption on a disk whose filesystem is not read (XFS,
            // btrfs, LUKS) — slowly, a few percent a day, it raises no
            // change rate.
            ev.add(
                pick(0.1, 0.45),
                format!(
                    "{:.0}% of changed data is high-entropy{why}",
                    s.high_entropy_share * 100.0
                ),
            );
        }
        let zero_floor = (8u64 << 20).max(s.logical_size / 20) as i64;
        if compared && s.zero_delta >= zero_floor {
            ev.add(
                pick(0.25, 0.5),
                format!("{:.0} MiB newly zeroed", mib(s.zero_delta as f64)),
            );
        }
        if let Some(f) = diffed {
            let typical = median(
                self.clean_history()
                    .filter(|h| h.parent_fs_readable)
                    .filter_map(|h| h.files.as_ref().map(churn))
                    .collect(),
            );
            let n = self
                .clean_history()
                .filter(|h| h.parent_fs_readable && h.files.is_some())
                .count();
            if let Some(t) = typical
                && n >= MIN_BASELINE
                && churn(f) >= 10.0 * t.max(10.0)
            {
                ev.add(
                    0.1,
                    format!(
                        "{} files changed, {:.0}x the typical {t:.0}",
                        churn(f),
                        churn(f) / t.max(1.0)
                    ),
                );
            }
        }

        // Damage that stays: carry findings until their files change again.
        if let Some(f) = diffed {
            let found: std::collections::HashSet<u64> =
                f.findings.iter().map(|x| path_hash(&x.path)).collect();
            // Changed again and now sound (restored, or saved anew by its
            // owner): repaired. Changed again and still unsound: not.
            let unsound: std::collections::HashSet<u64> = f.unsound.iter().copied().collect();
            for t in &f.touched {
                if !found.contains(t) && !unsound.contains(t) && self.carried.remove(t).is_some() {
                    step.repaired.push(*t);
                }
            }
            // A stray new file destroyed nothing: it is not damage that
            // stays (a cloned project keeps its test vectors for good).
            // Nor is a file its owner protected with a password.
            let stays =
                |x: &&crate::files::Finding| !x.replaced_nothing() && x.damage != Damage::Protected;
            for x in f.findings.iter().filter(stays) {
                let h = path_hash(&x.path);
                if let std::collections::btree_map::Entry::Vacant(e) = self.carried.entry(h) {
                    e.insert((x.path.clone(), idx));
                    step.found.push((h, x.path.clone(), idx));
                }
            }
        }
        self.steps.push(step);
        self.carried_at = Some(idx);
        let spans: std::collections::BTreeSet<usize> = self.carried.values().map(|v| v.1).collect();
        let accumulated = self.carried.len() as u64;
        let earlier = self.carried.values().filter(|v| v.1 < idx).count() as u64;
        if earlier > 0 {
            // A snapshot that still holds damage is no recovery point,
            // however quiet the day itself was.
            let first = spans.first().copied().unwrap_or(idx);
            let since = self
                .history
                .get(first)
                .map(|(h, _)| h.time)
                .unwrap_or(s.time);
            let w = match accumulated {
                1 => 0.45,
                2..=4 => 0.6,
                _ => 0.85,
            };
            ev.add(
                w,
                if spans.len() >= 2 {
                    format!(
                        "damage accumulating: {accumulated} damaged files over {} snapshots since {}",
                        spans.len(),
                        since.format("%Y-%m-%d %H:%M")
                    )
                } else {
                    format!(
                        "{accumulated} damaged file(s) found since {} are still present",
                        since.format("%Y-%m-%d %H:%M")
                    )
                },
            );
        }

        ev.0.sort_by(|a, b| b.0.total_cmp(&a.0));
        let score = 1.0 - ev.0.iter().map(|(w, _)| 1.0 - w).product::<f64>();
        let score = (score * 1000.0).round() / 1000.0;
        let verdict = if score >= COMPROMISED {
            Verdict::Compromised
        } else if score >= SUSPICIOUS {
            Verdict::Suspicious
        } else {
            Verdict::Clean
        };
        let mut reasons: Vec<String> = ev.0.into_iter().map(|(_, r)| r).collect();
        // Files never read say nothing: a clean verdict rests on the
        // disk's change alone (which a slow or in-place encryption need
        // not raise), and says so.
        if let (Some(e), false) = (&s.fs_error, s.parent_fs_readable) {
            reasons.push(format!(
                "its files could not be read ({e}): judged by the disk's change alone"
            ));
        }
        if s.parent.is_none() {
            reasons.push("first snapshot: nothing to compare with yet".into());
        } else if self.typical_rate(s).is_none() {
            reasons.push(
                "baseline still learning (fewer than 3 clean snapshots after the first)".into(),
            );
        }
        self.history.push((s.clone(), verdict));
        Assessment {
            score,
            verdict,
            reasons,
            accumulated_damage: accumulated,
        }
    }
}

/// The recovery point to try first.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CleanPoint {
    /// Index into the assessed sequence.
    pub index: usize,
    pub reason: String,
    /// 0–1: how sure the estimate is (clean point's own score, how much
    /// history the baseline had, how clear the first bad snapshot is).
    pub confidence: f64,
}

/// The newest clean snapshot before the trailing run of suspicious or
/// compromised ones (the latest, when it is clean).
pub fn clean_point(seq: &[(&Signals, &Assessment)]) -> Option<CleanPoint> {
    let last = seq.len().checked_sub(1)?;
    // A point whose files could not be read is vouched for by the disk's
    // change alone: half as sure.
    let blind = |i: usize| seq[i].0.fs_error.is_some();
    if seq[last].1.verdict == Verdict::Clean {
        return Some(CleanPoint {
            index: last,
            reason: if blind(last) {
                "the latest snapshot is clean by the disk's change alone (its files could not be read)".into()
            } else {
                "the latest snapshot is clean".into()
            },
            confidence: round2((1.0 - seq[last].1.score) * if blind(last) { 0.5 } else { 1.0 }),
        });
    }
    let first_bad = (0..=last)
        .rev()
        .take_while(|&i| seq[i].1.verdict != Verdict::Clean)
        .last()?;
    let index = first_bad.checked_sub(1)?;
    let (bad_s, bad_a) = seq[first_bad];
    let history = seq[..=index]
        .iter()
        .filter(|(s, _)| s.change_rate.is_some())
        .count();
    let confidence = (1.0 - seq[index].1.score)
        * (0.7 + 0.3 * (history as f64 / 5.0).min(1.0))
        * (0.5 + 0.5 * bad_a.score)
        * if blind(index) { 0.5 } else { 1.0 };
    Some(CleanPoint {
        index,
        reason: format!(
            "newest clean snapshot before {} ({}), {}: {}",
            bad_s.snapshot.short(),
            bad_s.time.format("%Y-%m-%d %H:%M"),
            bad_a.verdict.as_str(),
            bad_a.reasons.first().cloned().unwrap_or_default()
        ),
        confidence: round2(confidence),
    })
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_vault::SnapshotId;
    use chrono::{Duration, TimeZone, Utc};

    /// Day `d` of a 10 GiB disk whose filesystem is not read (XFS, LUKS):
    /// `changed` MiB changed, `share` of it high-entropy.
    fn raw_day(d: i64, changed: u64, share: f64) -> Signals {
        Signals {
            version: crate::signals::SIGNALS_VERSION,
            snapshot: SnapshotId(format!("{d:064}")),
            parent: (d > 0).then(|| SnapshotId(format!("{:064}", d - 1))),
            time: Utc.with_ymd_and_hms(2026, 3, 2, 2, 0, 0).unwrap() + Duration::days(d),
            logical_size: 10 << 30,
            changed_bytes: changed << 20,
            change_rate: (d > 0).then(|| (changed << 20) as f64 / 24.0),
            entropy: 4.0 + 4.0 * share,
            high_entropy_share: share,
            compression_ratio: 2.0,
            zero_delta: 0,
            files: None,
            fs_error: Some("no filesystem Cairn reads".into()),
            parent_fs_readable: false,
            lost_filesystems: vec![],
            unread_folders: vec![],
            unread_new_folders: vec![],
            unread_paths: vec![],
            partial_walk: false,
            analysis_secs: 0.0,
        }
    }

    fn verdicts(days: &[Signals]) -> Vec<Verdict> {
        let mut a = Assessor::new();
        days.iter().map(|s| a.assess(s).verdict).collect()
    }

    #[test]
    fn data_turning_high_entropy_on_an_unread_disk_is_suspicious_even_while_learning() {
        use Verdict::*;
        // An ordinary disk (a fifth of its data high-entropy), then a slow
        // encryption from day 2: 40 MiB a day, no change-rate spike.
        let mut days = vec![raw_day(0, 4000, 0.2), raw_day(1, 40, 0.05)];
        days.extend((2..6).map(|d| raw_day(d, 40, 0.98)));
        assert_eq!(
            verdicts(&days),
            [Clean, Clean, Suspicious, Suspicious, Suspicious, Suspicious]
        );
        // Once the history knows the disk, the same day is no different.
        let mut days: Vec<Signals> = (0..5).map(|d| raw_day(d, 40, 0.1)).collect();
        days[0] = raw_day(0, 4000, 0.2);
        days.push(raw_day(5, 40, 0.98));
        assert_eq!(verdicts(&days).last(), Some(&Suspicious));
    }

    #[test]
    fn an_encrypted_or_media_disk_changes_high_entropy_every_day_and_stays_clean() {
        // A LUKS guest: its data, and every day's change, is high-entropy.
        let days: Vec<Signals> = (0..6)
            .map(|d| raw_day(d, if d == 0 { 4000 } else { 40 }, 0.99))
            .collect();
        assert!(
            verdicts(&days).iter().all(|v| *v == Verdict::Clean),
            "{:?}",
            verdicts(&days)
        );
    }
}
