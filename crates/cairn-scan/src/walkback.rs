//! The walk back: from just before the first snapshot insight calls
//! suspicious, try older points until one passes every check, running
//! the cheap checks first (insight → persistence → malware →
//! vulnerabilities → an optional boot check; a point that fails one is
//! still scanned through, and every scan's result is stored, so that the
//! timeline and a rollback know all it holds). Over a long history the
//! steps back double and the boundary is then bisected, assuming that a
//! point after an infection is infected too.

use crate::{Profile, Result, Scan, ScanReport, ScanVerdict, Stage, VulnFinding};
use cairn_vault::{Snapshot, SnapshotId, Vault};
use serde::Serialize;
use std::collections::HashMap;
use std::sync::Arc;

/// Up to this many candidates are tried one by one, newest first.
const LINEAR_LIMIT: usize = 8;

#[derive(Clone, Debug, Serialize)]
pub struct Tried {
    pub id: SnapshotId,
    pub time: chrono::DateTime<chrono::Utc>,
    /// `clean`, or what the failing stage said (`suspicious`, `warning`,
    /// `compromised`, `failed` for a boot check).
    pub verdict: String,
    /// The stage that decided: the first that failed, or the last run.
    pub stage: Stage,
    /// Decided by a scan stored earlier (`cairn scan`, an earlier walk).
    #[serde(default)]
    pub stored: bool,
    pub findings: Vec<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct WalkReport {
    pub clean: Option<SnapshotId>,
    pub tried: Vec<Tried>,
    /// Known vulnerabilities of the clean point: patch before production.
    pub to_patch: Vec<VulnFinding>,
    /// The clean point is pinned (now, or it was), so forget and prune
    /// keep it: set when a newer snapshot failed.
    pub pinned: bool,
}

pub enum Event<'a> {
    /// Where the walk starts and why.
    Plan {
        candidates: &'a [Snapshot],
        start: Option<&'a Snapshot>,
        reason: String,
    },
    Trying(&'a Snapshot),
    Stage(&'a Snapshot, Stage),
    Done(&'a Tried),
}

/// Boots a candidate: None when it booted, Some(reason) when not.
pub type BootCheck<'a> = &'a mut dyn FnMut(&Snapshot) -> Result<Option<String>>;

pub struct Options<'a> {
    /// A point whose worst finding is a warning passes too.
    pub accept_warnings: bool,
    /// The boot check: None when it booted, Some(reason) when not.
    pub boot_check: Option<BootCheck<'a>>,
    /// Told how far each candidate's malware scan is: bytes of files done
    /// of a total (called from the scanning threads).
    pub malware_bytes: Option<&'a (dyn Fn(u64, u64) + Sync)>,
}

struct Walker<'a, 'b> {
    vault: &'a Arc<Vault>,
    chain: &'a [Snapshot],
    insight: HashMap<SnapshotId, (String, Vec<String>)>,
    profile: &'a mut Profile,
    opts: Options<'b>,
    on: &'a mut dyn FnMut(Event),
    tried: Vec<Tried>,
    reports: HashMap<usize, ScanReport>,
    targets: crate::Targets,
    /// Newest stored verdict per snapshot (for baselines), kept current.
    verdicts: HashMap<SnapshotId, crate::ScanVerdict>,
    /// Every stored result, per snapshot: what scans with other rules
    /// found stands beside this walk's (see `crate::standing`).
    stored: HashMap<SnapshotId, Vec<ScanReport>>,
}

impl Walker<'_, '_> {
    fn acceptable(&self, v: ScanVerdict) -> bool {
        v == ScanVerdict::Clean || (self.opts.accept_warnings && v == ScanVerdict::Warning)
    }

    /// Runs the checks on chain[i]; true when it passes.
    fn check(&mut self, i: usize) -> Result<bool> {
        let snap = &self.chain[i];
        (self.on)(Event::Trying(snap));
        let mut tried = Tried {
            id: snap.id.clone(),
            time: snap.time,
            verdict: "clean".into(),
            stage: Stage::Insight,
            stored: false,
            findings: vec![],
        };
        let passed = self.run(i, &mut tried)?;
        (self.on)(Event::Done(&tried));
        self.tried.push(tried);
        Ok(passed)
    }

    fn run(&mut self, i: usize, tried: &mut Tried) -> Result<bool> {
        let snap = &self.chain[i];
        (self.on)(Event::Stage(snap, Stage::Insight));
        if let Some((verdict, reasons)) = self.insight.get(&snap.id)
            && verdict != "clean"
        {
            tried.verdict = verdict.clone();
            tried.findings = reasons.clone();
            return Ok(false);
        }
        let baseline = crate::baseline_for(self.chain, &snap.id, &self.verdicts);
        let stored = Scan::stored(self.vault, snap, baseline.as_ref(), self.profile);
        tried.stored = stored.is_some();
        let report = match stored {
            Some(r) => {
                // The stage that would have decided, from what it found.
                tried.stage = self.deciding_stage(&r);
                r
            }
            None => {
                let started = Scan::start(
                    self.vault,
                    snap,
                    baseline.as_ref(),
                    self.profile,
                    &mut self.targets,
                );
                let mut scan = match started {
                    Ok(scan) => scan,
                    Err(e) => {
                        tried.stage = Stage::Persistence;
                        let r = crate::unreadable_filesystem(
                            self.vault,
                            snap,
                            baseline.as_ref(),
                            self.profile,
                            &mut self.targets,
                            e,
                        )?;
                        self.verdicts.insert(r.snapshot.clone(), r.verdict);
                        return Ok(self.failed(tried, &r));
                    }
                };
                // Every stage runs and the result is stored, also for a
                // point that fails early: the timeline, the next walk and
                // a rollback (which takes every file a scan flagged from
                // before the flag) must know what was found, and a point
                // that fails on a startup entry may hold the malware the
                // entry starts, which only the malware stage names.
                tried.stage = Stage::Persistence;
                (self.on)(Event::Stage(snap, Stage::Persistence));
                scan.persistence();
                let mut failed_at = None;
                if !self.acceptable(scan.report.verdict) {
                    failed_at = Some(Stage::Persistence);
                }
                tried.stage = Stage::Malware;
                (self.on)(Event::Stage(snap, Stage::Malware));
                scan.malware(self.profile, self.opts.malware_bytes.unwrap_or(&|_, _| {}));
                if failed_at.is_none() && !self.acceptable(scan.report.verdict) {
                    failed_at = Some(Stage::Malware);
                }
                tried.stage = Stage::Vulnerabilities;
                (self.on)(Event::Stage(snap, Stage::Vulnerabilities));
                scan.vulnerabilities(self.profile);
                let r = scan.finish()?;
                self.verdicts.insert(r.snapshot.clone(), r.verdict);
                if let Some(stage) = failed_at {
                    tried.stage = stage;
                }
                r
            }
        };
        if !self.acceptable(report.verdict) {
            return Ok(self.failed(tried, &report));
        }
        // Found compromised by a scan with other rules (an operator's
        // indicator these rules do not hold): that stands.
        let elsewhere = self
            .stored
            .get(&snap.id)
            .and_then(|v| crate::standing_apart_from(v, &report.family()))
            .filter(|s| !self.acceptable(s.verdict))
            .cloned();
        if let Some(s) = elsewhere {
            self.verdicts.insert(s.snapshot.clone(), s.verdict);
            return Ok(self.failed(tried, &s));
        }
        tried.stage = Stage::Vulnerabilities;
        tried.findings = describe(&report);
        if let Some(boot) = self.opts.boot_check.as_mut() {
            tried.stage = Stage::Boot;
            (self.on)(Event::Stage(snap, Stage::Boot));
            if let Some(reason) = boot(snap)? {
                tried.verdict = "failed".into();
                tried.findings.push(format!("boot check: {reason}"));
                return Ok(false);
            }
        }
        tried.verdict = report.verdict.as_str().into();
        self.reports.insert(i, report);
        Ok(true)
    }

    /// The first stage whose findings alone fail `r` (the vulnerability
    /// stage, which fails nothing, when none does).
    fn deciding_stage(&self, r: &ScanReport) -> Stage {
        let worst = |sev: &mut dyn Iterator<Item = crate::Severity>| {
            sev.map(ScanVerdict::of).max().unwrap_or(ScanVerdict::Clean)
        };
        if !self.acceptable(worst(&mut r.persistence.iter().map(|i| i.severity))) {
            Stage::Persistence
        } else if !self.acceptable(r.verdict) {
            Stage::Malware
        } else {
            Stage::Vulnerabilities
        }
    }

    fn failed(&self, tried: &mut Tried, report: &ScanReport) -> bool {
        tried.verdict = report.verdict.as_str().into();
        tried.findings = describe(report);
        // What the deciding stage found first, as "decided by" says.
        if tried.stage == Stage::Persistence {
            tried.findings.rotate_left(report.malware.len());
        }
        false
    }
}

/// Findings as one line each, worst kinds first.
pub fn describe(r: &ScanReport) -> Vec<String> {
    let mut out: Vec<String> = r
        .malware
        .iter()
        .map(|h| format!("malware {} at {} (offset {})", h.rule, h.path, h.offset))
        .collect();
    out.extend(
        r.persistence
            .iter()
            .map(|p| format!("{} {}: {}", p.kind, p.path, p.detail)),
    );
    out
}

/// Finds the newest point of `name` that passes.
pub fn find_clean(
    vault: &Arc<Vault>,
    name: &str,
    profile: &mut Profile,
    opts: Options,
    on: &mut dyn FnMut(Event),
) -> Result<WalkReport> {
    let chain = crate::chain(vault, name)?;
    let timeline = cairn_insight::timeline(vault, name, &mut |_| {})?;
    let insight: HashMap<SnapshotId, (String, Vec<String>)> = timeline
        .entries
        .iter()
        .map(|e| {
            (
                e.snapshot.id.clone(),
                (
                    e.assessment.verdict.as_str().to_string(),
                    e.assessment.reasons.clone(),
                ),
            )
        })
        .collect();
    let first_suspicious = chain
        .iter()
        .position(|s| insight.get(&s.id).is_some_and(|(v, _)| v != "clean"));
    let (start, reason) = match first_suspicious {
        Some(0) => (
            None,
            format!(
                "insight flags the oldest snapshot, {} ({}): there is no earlier point to try",
                chain[0].id.short(),
                chain[0].time.format("%Y-%m-%d %H:%M")
            ),
        ),
        Some(f) => (
            Some(f - 1),
            format!(
                "insight first flags {} ({}); starting just before it",
                chain[f].id.short(),
                chain[f].time.format("%Y-%m-%d %H:%M")
            ),
        ),
        None => (
            Some(chain.len() - 1),
            "insight flags nothing; starting at the newest".to_string(),
        ),
    };
    let candidates = &chain[..start.map_or(0, |s| s + 1)];
    on(Event::Plan {
        candidates,
        start: start.map(|s| &chain[s]),
        reason,
    });
    // Every stored result read once: the verdicts that choose baselines
    // stand from them too.
    let stored = crate::stored_reports(vault);
    let verdicts = crate::standing_of(&stored)
        .into_iter()
        .map(|(id, r)| (id, r.verdict))
        .collect();
    let mut w = Walker {
        vault,
        chain: &chain,
        insight,
        profile,
        opts,
        on,
        tried: vec![],
        reports: HashMap::new(),
        targets: crate::Targets::default(),
        verdicts,
        stored,
    };
    let mut clean = None;
    if let Some(start) = start {
        if candidates.len() <= LINEAR_LIMIT {
            for i in (0..=start).rev() {
                if w.check(i)? {
                    clean = Some(i);
                    break;
                }
            }
        } else {
            clean = search(start, |i| {
                let passed = w.check(i)?;
                // Only a finding that stays marks the infection's
                // boundary: insight's verdict, a persistence change, a
                // malware hit. A malware-stage warning (a file not judged,
                // clamd failing, a suspicious script) or a failed boot may
                // not come back at an older point.
                let firm = w.tried.last().is_some_and(|t| match t.stage {
                    Stage::Insight | Stage::Persistence => true,
                    Stage::Malware => t.verdict == "compromised",
                    _ => false,
                });
                Ok((passed, firm))
            })?;
        }
    }
    let to_patch = clean
        .and_then(|i| w.reports.get(&i))
        .map(|r| r.vulnerabilities.clone())
        .unwrap_or_default();
    // A point found by walking back past failed ones is what the operator
    // will restore: pinned like insight's clean point, so no retention
    // policy removes it meanwhile. A vault that cannot take the pin (read
    // only) still gets the answer.
    let pinned = match clean {
        Some(i) if i + 1 < chain.len() => {
            let id = &chain[i].id;
            vault.pins().is_ok_and(|p| p.contains(id)) || vault.pin(id).is_ok()
        }
        _ => false,
    };
    Ok(WalkReport {
        clean: clean.map(|i| chain[i].id.clone()),
        tried: w.tried,
        to_patch,
        pinned,
    })
}

/// The newest index at or below `start` that passes `check` (which says
/// whether it passed and, if not, whether the failure is firm: one that
/// every later point shares, assuming an infection stays). Gallops back
/// (1, 2, 4… steps) past firm failures and one step at a time past the
/// others, then bisects between the newest pass and the oldest firm
/// failure above it; a non-firm failure met while bisecting sends the
/// search through the points above it one by one.
fn search(
    start: usize,
    mut check: impl FnMut(usize) -> Result<(bool, bool)>,
) -> Result<Option<usize>> {
    let (mut i, mut step) = (start, 1usize);
    let (mut passed, mut failed) = (None::<usize>, None::<usize>);
    loop {
        let (ok, firm) = check(i)?;
        if ok {
            passed = Some(i);
            break;
        }
        if firm {
            failed = Some(i);
        }
        if i == 0 {
            break;
        }
        if firm {
            i = i.saturating_sub(step);
            step *= 2;
        } else {
            i -= 1;
        }
    }
    if let (Some(mut lo), Some(mut hi)) = (passed, failed) {
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            let (ok, firm) = check(mid)?;
            if ok {
                lo = mid;
            } else if firm {
                hi = mid;
            } else {
                let mut found = None;
                for j in (mid + 1..hi).rev() {
                    if check(j)?.0 {
                        found = Some(j);
                        break;
                    }
                }
                match found {
                    Some(j) => {
                        lo = j;
                        break;
                    }
                    None => hi = mid,
                }
            }
        }
        passed = Some(lo);
    }
    Ok(passed)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Points 0–15 and 17 pass, 16 fails with a warning that does not
    /// last, 18–19 are infected: the newest passing point is 17, not the
    /// 15 a bisection trusting every failure would settle on.
    #[test]
    fn a_passing_warning_does_not_hide_a_newer_clean_point() {
        let outcome = |i: usize| -> (bool, bool) {
            match i {
                18.. => (false, true),
                16 => (false, false),
                _ => (true, false),
            }
        };
        let mut asked = Vec::new();
        let found = search(19, |i| {
            asked.push(i);
            Ok(outcome(i))
        })
        .unwrap();
        assert_eq!(found, Some(17), "asked {asked:?}");
        // A history infected from point 5 on: the boundary is found.
        let found = search(40, |i| {
            Ok(if i >= 5 { (false, true) } else { (true, false) })
        })
        .unwrap();
        assert_eq!(found, Some(4));
        // Nothing passes.
        assert_eq!(search(9, |_| Ok((false, true))).unwrap(), None);
    }
}
