//! `cairn timeline` and the verdict a backup prints.

use crate::util::bytes;
use anyhow::{Context, Result};
use cairn_insight::{Outcome, Timeline, Verdict};
use cairn_vault::Vault;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use crate::FOUND;

fn rate(r: Option<f64>) -> String {
    r.map(|r| format!("{}/h", bytes(r as u64)))
        .unwrap_or_else(|| "-".into())
}

pub fn timeline(
    vault: &Arc<Vault>,
    name: &str,
    svg: Option<&Path>,
    json: bool,
    quiet: bool,
) -> Result<u8> {
    let mut t = cairn_insight::timeline(vault, name, &mut |s| {
        if !quiet && !json {
            eprintln!("analysing {}@{} ...", s.name, s.id.short());
        }
    })?;
    // Verification results, where a scan has been run (`cairn scan`,
    // `cairn recover --find-clean`): a snapshot a scan found compromised
    // is no clean point, whatever insight saw.
    let all = cairn_scan::stored_reports_for(vault, t.snapshot_ids());
    t.heed_verification(&cairn_scan::verification(&all));
    let scans = cairn_scan::standing_of(&all);
    warn_unreadable(&t);
    if let Some(path) = svg {
        std::fs::write(path, cairn_insight::svg::render(&t))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if json {
        let mut v = t.to_json();
        v["unreadable_manifests"] = t.unreadable.iter().map(|(n, _)| n.clone()).collect();
        if let Some(snaps) = v["snapshots"].as_array_mut() {
            for s in snaps {
                let id = cairn_vault::SnapshotId(s["id"].as_str().unwrap_or("").to_string());
                s["scan"] = match scans.get(&id) {
                    Some(r) => serde_json::json!({
                        "verdict": r.verdict,
                        "findings": cairn_scan::walkback::describe(r),
                        "vulnerabilities": r.vulnerabilities.len(),
                        "scanned_at": r.scanned_at,
                    }),
                    None => serde_json::Value::Null,
                };
            }
        }
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        print_table(&t, &scans)?;
    }
    // The latest is fine when it is the clean point itself: insight calls
    // it clean and no compromise found by a scan stands unresolved before
    // it (or in it).
    let latest_ok = t
        .clean_point
        .as_ref()
        .is_some_and(|c| c.index + 1 == t.entries.len());
    // A manifest that cannot be read is damage, and may hide the newest.
    Ok(if latest_ok && t.unreadable.is_empty() {
        0
    } else {
        FOUND
    })
}

fn print_table(
    t: &Timeline,
    scans: &std::collections::HashMap<cairn_vault::SnapshotId, cairn_scan::ScanReport>,
) -> Result<()> {
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    writeln!(
        out,
        "{:<8}  {:<16}  {:>10} {:>12} {:>7}  {:>17}  {:>5}  {:<11}  {:<11}  reasons",
        "id",
        "time (UTC)",
        "changed",
        "rate",
        "entropy",
        "files +/~/-/>",
        "score",
        "verdict",
        "scan"
    )?;
    for e in &t.entries {
        let f = e.signals.files.clone().unwrap_or_default();
        let files = if e.signals.files.is_some() && e.signals.parent_fs_readable {
            format!("{}/{}/{}/{}", f.added, f.modified, f.deleted, f.renamed)
        } else {
            "-".into()
        };
        let mut reasons = e.assessment.reasons.iter();
        writeln!(
            out,
            "{:<8}  {:<16}  {:>10} {:>12} {:>7.2}  {:>17}  {:>5.2}  {:<11}  {:<11}  {}",
            e.snapshot.id.short(),
            e.snapshot.time.format("%Y-%m-%d %H:%M"),
            bytes(e.signals.changed_bytes),
            rate(e.signals.change_rate),
            e.signals.entropy,
            files,
            e.assessment.score,
            e.assessment.verdict.as_str(),
            scans
                .get(&e.snapshot.id)
                .map(|r| r.verdict.as_str())
                .unwrap_or("-"),
            reasons.next().map(String::as_str).unwrap_or("")
        )?;
        for r in reasons {
            writeln!(out, "{:>113}{r}", "")?;
        }
    }
    match (&t.clean_point, t.last_clean()) {
        (Some(c), Some(e)) => writeln!(
            out,
            "last clean: {}@{} ({}), confidence {:.2}: {}",
            e.snapshot.name,
            e.snapshot.id.short(),
            e.snapshot.time.format("%Y-%m-%d %H:%M"),
            c.confidence,
            c.reason
        )?,
        _ => writeln!(
            out,
            "last clean: none (no clean snapshot before the damage)"
        )?,
    }
    out.flush()?;
    Ok(())
}

/// What a backup adds to its JSON.
pub fn outcome_json(o: &Outcome) -> serde_json::Value {
    let e = o.latest();
    serde_json::json!({
        "score": e.assessment.score,
        "verdict": e.assessment.verdict,
        "reasons": e.assessment.reasons,
        "last_clean": o.timeline.last_clean().map(|c| c.snapshot.id.0.clone()),
        "pinned": o.pinned.as_ref().map(|p| p.0.clone()),
        "analysis_secs": e.signals.analysis_secs,
    })
}

/// Prints the verdict after a backup (warnings to stderr); the exit code.
pub fn report(o: &Outcome, json: bool) -> u8 {
    let e = o.latest();
    let a = &e.assessment;
    if a.verdict == Verdict::Clean {
        // A first snapshot has nothing to be compared with: "clean" would
        // vouch for a host that may have been attacked before it came.
        if !json && o.timeline.entries.len() == 1 {
            println!(
                "  insight: first snapshot of {name}, nothing to compare with yet (`cairn scan {name}@latest` checks it on its own)",
                name = e.snapshot.name
            );
        } else if !json {
            println!("  insight: clean (score {:.2})", a.score);
            // What the verdict rests on when the files could not be read.
            for r in a
                .reasons
                .iter()
                .filter(|r| r.starts_with("its files could not be read"))
            {
                println!("    ({r})");
            }
        }
        return 0;
    }
    eprintln!(
        "warning: {}@{} looks {} (score {:.2}):",
        e.snapshot.name,
        e.snapshot.id.short(),
        a.verdict.as_str().to_uppercase(),
        a.score
    );
    for r in &a.reasons {
        eprintln!("  - {r}");
    }
    match o.timeline.last_clean() {
        Some(c) => eprintln!(
            "  last clean point: {}@{} ({}){}",
            c.snapshot.name,
            c.snapshot.id.short(),
            c.snapshot.time.format("%Y-%m-%d %H:%M"),
            if o.pinned.is_some() {
                ", now pinned"
            } else {
                ", pinned"
            }
        ),
        None => eprintln!("  no clean snapshot before this one"),
    }
    FOUND
}

pub struct RollbackTarget<'a> {
    pub to_dir: Option<&'a Path>,
    pub in_place: Option<&'a Path>,
}

/// Says that manifests the timeline had to leave out may hide the
/// newest snapshot of its source.
fn warn_unreadable(t: &Timeline) {
    if let Some((first, why)) = t.unreadable.first() {
        eprintln!(
            "warning: {} snapshot manifest(s) of this vault cannot be read ({first}: {why}): a newer snapshot of {} may be among them, so the newest here may not be the newest; `cairn verify` says more",
            t.unreadable.len(),
            t.name
        );
    }
}

#[allow(clippy::too_many_arguments)]
pub fn rollback(
    vault: &Arc<Vault>,
    name: &str,
    target: RollbackTarget,
    since: Option<&str>,
    partition: Option<u32>,
    provenance: Option<&Path>,
    opts: cairn_recover::rollback::RollbackOptions,
    scan_first: bool,
    json: bool,
    quiet: bool,
) -> Result<u8> {
    let dry_run = opts.dry_run;
    // What only a scan recognises as planted (a startup script, a cron
    // job, a web shell) is left out only when a scan flagged it: the
    // newest snapshot is scanned first when no scan of it is stored.
    if scan_first
        && let Some(newest) = cairn_scan::chain(vault, name)?.pop()
        && let Err(e) =
            crate::scan_cmd::scan_unless_stored(vault, &newest, partition, quiet || json)
    {
        eprintln!(
            "warning: {}@{} could not be scanned ({e:#}): what only a scan would flag is kept",
            newest.name,
            newest.id.short()
        );
    }
    // Damage counts from after the clean point `timeline` names: one a
    // scan found compromised is none, whatever insight saw.
    let t = cairn_scan::verified_timeline(vault, name)?;
    warn_unreadable(&t);
    let since = match since {
        Some(spec) => {
            let spec = if spec.contains('@') {
                spec.to_string()
            } else {
                format!("{name}@{spec}")
            };
            Some(vault.resolve(&spec)?.id)
        }
        None => None,
    };
    let kind = t.entries.last().map(|e| e.snapshot.source.kind);
    if kind == Some(cairn_vault::SourceKind::Directory) && partition.is_some() {
        crate::usage!("--partition applies to disk snapshots; {name} is a directory source");
    }
    // A rollback starts from the newest snapshot whose files can be read.
    // When none after the clean point can (a disk encrypted whole the day
    // the attack began), nothing newer is there to keep: the way back is a
    // whole restore.
    if kind == Some(cairn_vault::SourceKind::Disk)
        && let Some(latest) = t.entries.last()
        && let Err(
            e @ (cairn_guest::GuestError::Corrupt(_) | cairn_guest::GuestError::Unsupported(_)),
        ) = cairn_guest::open_snapshot(vault, latest.snapshot.clone(), partition)
    {
        let after_clean = t.clean_point.as_ref().map_or(0, |c| c.index + 1);
        let newer_readable = t
            .entries
            .get(after_clean..t.entries.len() - 1)
            .unwrap_or_default()
            .iter()
            .rev()
            .any(|e| cairn_guest::open_snapshot(vault, e.snapshot.clone(), partition).is_ok());
        if !newer_readable {
            let clean = t
                .last_clean()
                .map(|c| format!("{name}@{}", c.snapshot.id.short()))
                .unwrap_or_else(|| format!("{name}@<a clean snapshot>"));
            anyhow::bail!(
                "the newest snapshot's files cannot be read ({e}), so there is nothing newer to keep: restore the clean point whole instead, `cairn restore {clean} --to …` (or --delta over the disk)"
            );
        }
    }
    // What verification flagged, where scans are stored.
    let chain: Vec<_> = t.entries.iter().map(|e| e.snapshot.clone()).collect();
    let flagged: Vec<cairn_recover::rollback::Flagged> = cairn_scan::flagged_files(vault, &chain)
        .into_iter()
        .map(|f| cairn_recover::rollback::Flagged {
            first: f.first,
            path: f.path,
            why: f.why,
            revert: f.revert,
            droppable: f.droppable,
            started: f.started,
        })
        .collect();
    // Where the provenance goes is checked before anything is written: a
    // rollback done whose record cannot be kept is half a rollback.
    let Some(dest) = target.to_dir.or(target.in_place) else {
        crate::usage!("give --to-dir DIR or --in-place PATH");
    };
    let manifest = cairn_recover::rollback::provenance_path(dest, provenance)?;
    let r = if target.to_dir.is_some() {
        cairn_recover::rollback::rollback_to_dir(
            vault,
            &t,
            dest,
            since.as_ref(),
            partition,
            &flagged,
            opts,
        )?
    } else {
        if kind != Some(cairn_vault::SourceKind::Directory) {
            crate::usage!(
                "--in-place repairs directory sources; {name} is a disk: use --to-dir, or `cairn restore --delta`"
            );
        }
        cairn_recover::rollback::rollback_in_place(vault, &t, dest, since.as_ref(), &flagged, opts)?
    };
    if !dry_run {
        cairn_recover::rollback::write_provenance(&manifest, &serde_json::to_vec_pretty(&r)?)?;
    }
    // A rollback that could not carry out its plan is no success, however
    // much of it was done: the operator has to look. One that kept a file
    // verification flagged (a registry hive holding a planted Run value)
    // is done, but not ready for production: a script has to branch.
    let review = r.files.iter().filter(|f| f.review).count();
    let code = if r.failed > 0 {
        1
    } else if review > 0 || r.incomplete > 0 {
        3
    } else {
        0
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&r)?);
        return Ok(code);
    }
    // A tree of millions of files makes a long list: --quiet keeps the
    // summary and the warnings (the provenance has every file).
    for f in r
        .files
        .iter()
        .filter(|f| !quiet && f.action != cairn_recover::rollback::Action::Kept)
    {
        println!(
            "{:<9} {}  ({}{})",
            format!("{:?}", f.action).to_lowercase(),
            f.path,
            f.reason,
            f.snapshot
                .as_deref()
                .map(|s| format!("; from {}", &s[..8.min(s.len())]))
                .unwrap_or_default()
        );
    }
    for s in r.notes.iter().chain(&r.skipped) {
        eprintln!("warning: {s}");
    }
    // A file verification flagged that was kept (a registry hive) is the
    // operator's to clean before production: said even with -q.
    for f in r.files.iter().filter(|f| f.review) {
        eprintln!("warning: {} kept as it is: {}", f.path, f.reason);
    }
    crate::util::setid_warning(r.setid_dropped, &r.setid_dropped_paths);
    println!(
        "{}{} kept with their newest content, {} restored from before the damage, {} dropped; {} written{}",
        if dry_run { "dry run: " } else { "" },
        r.kept,
        r.restored,
        r.dropped,
        bytes(r.bytes_written),
        if dry_run {
            String::new()
        } else {
            format!("; provenance in {}", manifest.display())
        }
    );
    if r.incomplete > 0 && r.failed == 0 {
        eprintln!(
            "INCOMPLETE: {} entr{} could not be brought back (named above as warnings; the provenance has them): exit 3",
            r.incomplete,
            if r.incomplete == 1 { "y" } else { "ies" }
        );
    }
    if review > 0 && r.failed == 0 {
        eprintln!(
            "{review} file(s) verification flagged were kept as they are (named above): clean them by hand before production (exit 3)"
        );
    }
    if r.failed > 0 {
        eprintln!(
            "error: {} planned repair(s) failed (listed above as warnings); the provenance marks each: kept as it is (in place) or missing (into a new folder)",
            r.failed
        );
    }
    Ok(code)
}
