//! `cairn scan`, `cairn vulndb` and `cairn recover --find-clean`.

use crate::FOUND;
use crate::util::{Bar, bytes};
use anyhow::{Context, Result};
use cairn_ingest::Progress;
use cairn_scan::walkback::{self, Event};
use cairn_scan::{Profile, ScanReport, Stage, VulnDb};
use cairn_vault::{Snapshot, Vault};
use serde_json::json;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;

struct CliProgress {
    quiet: bool,
    on_bytes: Box<dyn Fn(u64, u64) + Sync>,
}

impl cairn_scan::Progress for CliProgress {
    fn stage(&mut self, snap: &Snapshot, stage: Stage) {
        if !self.quiet {
            eprintln!("{}@{}: {} ...", snap.name, snap.id.short(), stage.as_str());
        }
    }
    fn bytes(&self) -> &(dyn Fn(u64, u64) + Sync) {
        &self.on_bytes
    }
}

/// Scans `snap` with the vault's rules (stored like `cairn scan`'s
/// result) unless a result of it is stored already; says so unless
/// `quiet`. True when it scanned.
pub fn scan_unless_stored(
    vault: &Arc<Vault>,
    snap: &Snapshot,
    partition: Option<u32>,
    quiet: bool,
) -> Result<bool> {
    if !cairn_scan::stored_reports_for(vault, [&snap.id]).is_empty() {
        return Ok(false);
    }
    if !quiet {
        eprintln!(
            "scanning {}@{} first: no scan of it is stored, and a rollback leaves out what scans flag (--no-scan skips this) ...",
            snap.name,
            snap.id.short()
        );
    }
    let mut profile = Profile::load(vault, None)?;
    profile.partition = partition;
    let mut progress = CliProgress {
        quiet: true,
        on_bytes: Box::new(|_, _| {}),
    };
    cairn_scan::scan_snapshot(vault, snap, &mut profile, &mut progress)?;
    Ok(true)
}

pub fn scan(
    vault: &Arc<Vault>,
    specs: &[String],
    rules: Option<&Path>,
    partition: Option<u32>,
    json: bool,
    quiet: bool,
) -> Result<u8> {
    let mut snaps = Vec::new();
    for spec in specs {
        if spec.contains('@') {
            snaps.push(vault.resolve(spec)?);
        } else {
            snaps.extend(cairn_scan::chain(vault, spec)?);
        }
    }
    let one = specs.len() == 1 && specs[0].contains('@');
    let mut profile = Profile::load(vault, rules)?;
    profile.partition = partition;
    let bar = Arc::new(Progress::default());
    let drawn = Bar::start(bar.clone(), "malware", quiet || json);
    let b = bar.clone();
    let mut progress = CliProgress {
        quiet: quiet || json,
        on_bytes: Box::new(move |done, total| {
            b.total.store(total, Ordering::Relaxed);
            b.done.store(done, Ordering::Relaxed);
        }),
    };
    let reports = cairn_scan::scan_many(vault, &snaps, &mut profile, &mut progress)?;
    drop(drawn);
    // What else is known of each point: a scan with other rules that
    // found it compromised (this one's rules may not hold that
    // indicator), insight's verdict. Either keeps it from passing.
    let stored = cairn_scan::stored_reports_for(vault, reports.iter().map(|r| &r.snapshot));
    let standing = |r: &ScanReport| {
        stored
            .get(&r.snapshot)
            .and_then(|v| cairn_scan::standing_apart_from(v, &r.family()))
            .filter(|s| s.verdict > r.verdict)
            .cloned()
    };
    let insight: Vec<Option<cairn_insight::Record>> = reports
        .iter()
        .map(|r| cairn_insight::load(vault, &r.snapshot))
        .collect();
    let flagged_elsewhere = reports.iter().zip(&insight).any(|(r, i)| {
        standing(r).is_some()
            || i.as_ref()
                .is_some_and(|i| i.assessment.verdict != cairn_insight::Verdict::Clean)
    });
    if json {
        // What keeps a point from passing besides this scan's own verdict,
        // for scripts as for people.
        let with_context: Vec<serde_json::Value> = reports
            .iter()
            .zip(&insight)
            .map(|(r, i)| {
                let mut v = serde_json::to_value(r).expect("a report is JSON");
                v["still"] = match standing(r) {
                    Some(s) => json!({
                        "verdict": s.verdict.as_str(),
                        "rules": s.rules,
                        "scanned_at": s.scanned_at,
                        "found": cairn_scan::walkback::describe(&s),
                    }),
                    None => serde_json::Value::Null,
                };
                v["insight_verdict"] = json!(i.as_ref().map(|i| i.assessment.verdict.as_str()));
                v
            })
            .collect();
        if one {
            crate::print_json(&with_context[0]);
        } else {
            crate::print_json(&with_context);
        }
    } else {
        for (r, i) in reports.iter().zip(&insight) {
            print_report(
                r,
                profile.rules.rule_count(),
                i.as_ref(),
                standing(r).as_ref(),
            );
        }
    }
    let found: usize = reports
        .iter()
        .map(|r| r.findings() + r.vulnerabilities.len())
        .sum();
    // A point not judged clean (files or folders that could not be read)
    // is something found too, findings or not.
    let unclean = reports
        .iter()
        .any(|r| r.verdict != cairn_scan::ScanVerdict::Clean);
    Ok(if found > 0 || unclean || flagged_elsewhere {
        FOUND
    } else {
        0
    })
}

fn print_report(
    r: &ScanReport,
    rule_count: usize,
    insight: Option<&cairn_insight::Record>,
    standing: Option<&ScanReport>,
) {
    // The scans' verdict, named as theirs: a snapshot whose files were
    // encrypted holds no malware, and "clean" alone would read as safe.
    println!(
        "{}@{} ({}): {}scans {}{}",
        r.name,
        r.snapshot.short(),
        r.time.format("%Y-%m-%d %H:%M"),
        // One partition's result is not the snapshot's (see
        // `ScanReport::family`): said where it is read.
        match r.partition {
            Some(p) => format!("partition {p} only: "),
            None => String::new(),
        },
        r.verdict.as_str(),
        match r.vulnerabilities.len() {
            0 => String::new(),
            // Exit 3 all the same: something to act on before production.
            n => format!(", {n} vulnerable package(s) to patch"),
        }
    );
    insight_note(r, insight);
    if let Some(s) = standing {
        let (by, clears) = if s.partition != r.partition {
            (
                match s.partition {
                    None => "a scan of the disk's filesystem".to_string(),
                    Some(p) => format!("a scan of partition {p}"),
                },
                "only a newer scan of the same with those rules clears it",
            )
        } else {
            (
                "a scan with other rules".to_string(),
                "only a newer scan with those rule files clears it",
            )
        };
        println!(
            "  still {}: {by} (set {}, {}) found {}; {clears}",
            s.verdict.as_str().to_uppercase(),
            s.rules,
            s.scanned_at.format("%Y-%m-%d %H:%M"),
            cairn_scan::walkback::describe(s)
                .first()
                .map_or("something", String::as_str)
        );
    }
    println!(
        "  malware: {} files, {} ({} files, {} scanned now; {rule_count} rules, set {})",
        r.stats.files,
        bytes(r.stats.bytes),
        r.stats.files_scanned,
        bytes(r.stats.bytes_scanned),
        r.rules
    );
    for h in &r.malware {
        println!(
            "    {} {} at offset {}: {} ({})",
            h.severity_str(),
            h.path,
            h.offset,
            h.rule,
            h.description
        );
    }
    match &r.baseline {
        Some(b) => println!("  persistence (against {}):", b.short()),
        None => println!("  persistence (no older snapshot: only what is suspicious on its own):"),
    }
    if r.persistence.is_empty() {
        println!("    nothing found");
    }
    for p in &r.persistence {
        println!(
            "    {} {} [{}]: {}",
            p.severity_str(),
            p.path,
            p.kind,
            p.detail
        );
    }
    println!(
        "  vulnerabilities: {} ({} packages, {} advisories imported)",
        r.os.as_deref().unwrap_or("OS unknown"),
        r.packages,
        r.advisories
    );
    for v in &r.vulnerabilities {
        println!(
            "    {} {} {} (source {} {}): {}fixed in {}{}",
            v.severity,
            v.id,
            v.package,
            v.source,
            v.source_version,
            if v.aliases.is_empty() {
                String::new()
            } else {
                format!("{}; ", v.aliases.join(", "))
            },
            v.fixed.as_deref().unwrap_or("no fixed version yet"),
            if v.summary.is_empty() {
                String::new()
            } else {
                format!(" — {}", v.summary)
            }
        );
    }
    for n in &r.notes {
        println!("  note: {n}");
    }
}

/// A scan looks for malware, persistence and vulnerable packages; mass
/// encryption is insight's to see. A scan that finds nothing on a
/// snapshot insight flagged says so, so "clean" is not read as "safe".
fn insight_note(r: &ScanReport, stored: Option<&cairn_insight::Record>) {
    // The verdict stored with the snapshot's facts (one object read; the
    // timeline would replay the whole history).
    let Some(e) = stored else {
        return;
    };
    if e.assessment.verdict == cairn_insight::Verdict::Clean {
        return;
    }
    println!(
        "  insight: {} (score {:.2}){}; see `cairn timeline {}`",
        e.assessment.verdict.as_str().to_uppercase(),
        e.assessment.score,
        e.assessment
            .reasons
            .first()
            .map(|why| format!(": {why}"))
            .unwrap_or_default(),
        r.name
    );
}

pub fn vulndb_import(vault: &Arc<Vault>, path: &Path, json: bool) -> Result<u8> {
    let db_path = cairn_scan::vulndb_path(vault);
    let mut db = VulnDb::load(&db_path)?;
    let before = db.len();
    let got = db
        .import(path)
        .with_context(|| format!("importing {}", path.display()))?;
    let (used, skipped) = (got.used, got.skipped);
    db.save(&db_path)?;
    // Damaged files are said (a download cut short looks like this), and
    // make the exit 3: what they held is not in the database.
    for d in got.damaged.iter().take(20) {
        eprintln!("warning: not an OSV record: {d}");
    }
    if got.damaged.len() > 20 {
        eprintln!("warning: … and {} more", got.damaged.len() - 20);
    }
    if json {
        crate::print_json(&json!({
            "imported": used,
            "skipped": skipped,
            "damaged": got.damaged,
            "advisories": db.len(),
            "new": db.len() - before,
            "ecosystems": db.ecosystems(),
        }));
    } else {
        println!(
            "imported {used} advisories ({skipped} files skipped); {} in the database ({} new)",
            db.len(),
            db.len() - before
        );
        for (eco, n) in db.ecosystems() {
            println!("  {eco}: {n}");
        }
    }
    Ok(if got.damaged.is_empty() {
        0
    } else {
        crate::FOUND
    })
}

pub fn vulndb_status(vault: &Arc<Vault>, json: bool) -> Result<u8> {
    let db = VulnDb::load(&cairn_scan::vulndb_path(vault))?;
    if json {
        crate::print_json(&json!({"advisories": db.len(), "ecosystems": db.ecosystems()}));
    } else if db.is_empty() {
        println!("no advisories imported: cairn vulndb import FILE.zip|DIR");
    } else {
        println!("{} advisories", db.len());
        for (eco, n) in db.ecosystems() {
            println!("  {eco}: {n}");
        }
    }
    Ok(0)
}

pub struct FindClean<'a> {
    pub rules: Option<&'a Path>,
    pub partition: Option<u32>,
    pub accept_warnings: bool,
    pub boot: Option<crate::boot_cmd::BootOptions>,
}

pub fn find_clean(
    vault: &Arc<Vault>,
    name: &str,
    o: &FindClean,
    json: bool,
    quiet: bool,
) -> Result<u8> {
    let mut profile = Profile::load(vault, o.rules)?;
    profile.partition = o.partition;
    let talk = !json && !quiet;
    let mut boot_fn;
    let boot_check: Option<walkback::BootCheck> = match &o.boot {
        Some(b) => {
            boot_fn = |s: &Snapshot| -> cairn_scan::Result<Option<String>> {
                let r = crate::boot_cmd::boot_check(vault, s, b)
                    .map_err(|e| cairn_scan::Error::Invalid(format!("boot check: {e:#}")))?;
                Ok((r.result != "booted").then_some(r.reason))
            };
            Some(&mut boot_fn)
        }
        None => None,
    };
    // --quiet leaves out the plan and the stages, not the results: why a
    // point was turned down is what the operator acts on.
    let mut on = |e: Event| {
        if json {
            return;
        }
        match e {
            Event::Plan { .. } | Event::Trying(_) | Event::Stage(..) if !talk => {}
            Event::Plan {
                candidates,
                start,
                reason,
            } => {
                println!("plan: {reason}");
                match start {
                    Some(s) => println!(
                        "  {} candidates, newest {} ({}); checks: insight, persistence, malware, vulnerabilities{}",
                        candidates.len(),
                        s.id.short(),
                        s.time.format("%Y-%m-%d %H:%M"),
                        if o.boot.is_some() { ", boot" } else { "" }
                    ),
                    None => println!("  no candidates"),
                }
            }
            Event::Trying(s) => println!("{} ({}):", s.id.short(), s.time.format("%Y-%m-%d %H:%M")),
            Event::Stage(_, st) => println!("  {} ...", st.as_str()),
            Event::Done(t) => {
                if !talk {
                    println!("{} ({}):", t.id.short(), t.time.format("%Y-%m-%d %H:%M"));
                }
                if t.verdict == "clean" {
                    println!("  => clean (passed every check)");
                } else {
                    if t.stored {
                        println!("  => {} (by its stored scan)", t.verdict);
                    } else {
                        println!("  => {} (decided by {})", t.verdict, t.stage.as_str());
                    }
                }
                for f in t.findings.iter().take(8) {
                    println!("     {f}");
                }
                if t.findings.len() > 8 {
                    println!("     and {} more", t.findings.len() - 8);
                }
            }
        }
    };
    // The malware stage is the long one: a bar while it runs.
    let bar = Arc::new(Progress::default());
    let drawn = Bar::start(bar.clone(), "malware", !talk);
    let b = bar.clone();
    let on_bytes = move |done: u64, total: u64| {
        b.total.store(total, Ordering::Relaxed);
        b.done.store(done, Ordering::Relaxed);
    };
    let report = walkback::find_clean(
        vault,
        name,
        &mut profile,
        walkback::Options {
            accept_warnings: o.accept_warnings,
            boot_check,
            malware_bytes: Some(&on_bytes),
        },
        &mut on,
    );
    drop(drawn);
    let report = report?;
    if json {
        crate::print_json(&report);
    } else {
        match &report.clean {
            Some(id) => {
                println!(
                    "clean point: {name}@{}{}",
                    id.short(),
                    if report.pinned { " (pinned)" } else { "" }
                );
                if !report.to_patch.is_empty() {
                    println!("patch before production:");
                    for v in &report.to_patch {
                        println!(
                            "  {} {} {} -> {}",
                            v.id,
                            v.package,
                            v.installed,
                            v.fixed.as_deref().unwrap_or("no fix yet")
                        );
                    }
                }
            }
            None => println!("no point passed every check"),
        }
    }
    Ok(if report.clean.is_some() { 0 } else { FOUND })
}
