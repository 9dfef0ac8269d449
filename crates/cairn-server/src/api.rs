//! The JSON API operators and admins use (the console renders the same
//! calls): sources, timelines, snapshots, scans and the walk back to a
//! clean point as jobs with live events, restore, and the admin actions.

use crate::jobs::Job;
use crate::tokens::Role;
use crate::{ApiError, Caller, Shared, blocking};
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use cairn_scan::{Profile, Scan, ScanReport, Targets};
use cairn_vault::Snapshot;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use std::sync::Arc;

pub fn routes() -> Router<Shared> {
    Router::new()
        .route("/api/v1/whoami", get(whoami))
        .route("/api/v1/sources", get(sources))
        .route("/api/v1/sources/{name}/timeline", get(timeline))
        .route("/api/v1/sources/{name}/timeline.svg", get(timeline_svg))
        .route("/api/v1/sources/{name}/find-clean", post(find_clean))
        .route("/api/v1/snapshots/{spec}", get(snapshot))
        .route("/api/v1/snapshots/{spec}/diff", get(diff))
        .route("/api/v1/snapshots/{spec}/scan", post(scan))
        .route("/api/v1/snapshots/{spec}/restore", post(restore))
        .route("/api/v1/snapshots/{spec}/boot", post(boot))
        .route("/api/v1/jobs", get(jobs))
        .route("/api/v1/jobs/{id}", get(job))
        .route("/api/v1/jobs/{id}/events", get(job_events))
        .route("/api/v1/forget", post(forget))
        .route("/api/v1/prune", post(prune))
        .route("/api/v1/pins/{spec}", post(pin).delete(unpin))
        .route("/api/v1/tokens", get(tokens).post(create_token))
        .route("/api/v1/tokens/{id}", axum::routing::delete(revoke_token))
        .route("/api/v1/audit", get(audit))
        .route("/api/v1/audit/verify", get(audit_verify))
}

/// A JSON body, with a JSON error when it does not parse.
fn body<T: DeserializeOwned + Default>(b: &Bytes) -> Result<T, ApiError> {
    if b.is_empty() {
        return Ok(T::default());
    }
    serde_json::from_slice(b).map_err(|e| ApiError::bad(format!("bad JSON body: {e}")))
}

// ---- sources and snapshots ----

/// One row per source: its newest snapshot, verdicts and last clean point.
pub fn sources_overview(st: &Shared) -> Result<Vec<Value>, ApiError> {
    let (snaps, _) = st.vault.snapshots()?;
    let mut names: Vec<String> = snaps.iter().map(|s| s.name.clone()).collect();
    names.sort();
    names.dedup();
    let all = cairn_scan::stored_reports(&st.vault);
    let verified = cairn_scan::verification(&all);
    let reports = cairn_scan::standing_of(&all);
    let mut out = Vec::new();
    for name in names {
        let mut t = cairn_insight::timeline(&st.vault, &name, &mut |_| {})?;
        t.heed_verification(&verified);
        let latest = t.entries.last().expect("a timeline has entries");
        out.push(json!({
            "name": name,
            "kind": latest.snapshot.source.kind,
            "snapshots": t.entries.len(),
            "latest": {
                "id": latest.snapshot.id.0,
                "time": latest.snapshot.time,
                "verdict": latest.assessment.verdict.as_str(),
                "score": latest.assessment.score,
                "scan": reports.get(&latest.snapshot.id).map(|r| r.verdict.as_str()),
            },
            "last_clean": t.last_clean().map(|e| json!({"id": e.snapshot.id.0, "time": e.snapshot.time})),
        }));
    }
    Ok(out)
}

#[derive(Deserialize, Default)]
struct WhoamiQuery {
    source: Option<String>,
}

/// What the caller's token may do: its role, for an agent the sources it
/// may back up, and with `?source=NAME` whether it may back up that one
/// (the server's own rule, so a backup can be refused before it uploads).
async fn whoami(
    caller: Caller,
    axum::extract::Query(q): axum::extract::Query<WhoamiQuery>,
) -> Response {
    let who = &caller.0;
    let may = q.source.as_deref().map(|name| who.may_write(name));
    axum::Json(json!({"role": who.role.as_str(), "sources": who.sources, "may_back_up": may}))
        .into_response()
}

async fn sources(State(st): State<Shared>, caller: Caller) -> Result<Response, ApiError> {
    caller.require(Role::Operator)?;
    let v = blocking(move || sources_overview(&st)).await?;
    Ok(axum::Json(v).into_response())
}

/// The timeline as `cairn timeline --json` prints it, plus scan verdicts.
pub fn timeline_json(st: &Shared, name: &str) -> Result<Value, ApiError> {
    // Its clean point the one `cairn timeline` names: a snapshot a scan
    // found compromised is none.
    let t = cairn_scan::verified_timeline(&st.vault, name)?;
    let scans = cairn_scan::latest_verdicts(&st.vault);
    let mut v = t.to_json();
    if let Some(list) = v["snapshots"].as_array_mut() {
        for s in list {
            let id = cairn_vault::SnapshotId(s["id"].as_str().unwrap_or("").to_string());
            s["scan"] = json!(scans.get(&id).map(|v| v.as_str()));
        }
    }
    Ok(v)
}

async fn timeline(
    State(st): State<Shared>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    caller.require(Role::Operator)?;
    let v = blocking(move || timeline_json(&st, &name)).await?;
    Ok(axum::Json(v).into_response())
}

async fn timeline_svg(
    State(st): State<Shared>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    caller.require(Role::Operator)?;
    let svg = blocking(move || {
        let t = cairn_scan::verified_timeline(&st.vault, &name)?;
        Ok(cairn_insight::svg::render(&t))
    })
    .await?;
    Ok(([(header::CONTENT_TYPE, "image/svg+xml")], svg).into_response())
}

/// A snapshot's manifest, its insight record (file changes, findings)
/// and its newest stored scan.
pub fn snapshot_detail(st: &Shared, spec: &str) -> Result<Value, ApiError> {
    let snap = st.vault.resolve(spec)?;
    let record = cairn_insight::load(&st.vault, &snap.id);
    let scan = cairn_scan::latest_reports(&st.vault).remove(&snap.id);
    Ok(json!({
        "snapshot": snap,
        "insight": record,
        "scan": scan,
    }))
}

async fn snapshot(
    State(st): State<Shared>,
    caller: Caller,
    Path(spec): Path<String>,
) -> Result<Response, ApiError> {
    caller.require(Role::Operator)?;
    let v = blocking(move || snapshot_detail(&st, &spec)).await?;
    Ok(axum::Json(v).into_response())
}

/// Entries per list in a diff answer.
const DIFF_LIMIT: usize = 5000;

/// Files added, deleted, modified and renamed from `against` (default:
/// the snapshot's parent) to `spec`.
pub fn snapshot_diff(st: &Shared, spec: &str, against: Option<&str>) -> Result<Value, ApiError> {
    let vault = &st.vault;
    let new = vault.resolve(spec)?;
    let old = match against {
        Some(a) => vault.resolve(a)?,
        None => {
            let (all, _) = vault.snapshots()?;
            let parent = new
                .parent
                .as_ref()
                .and_then(|p| all.iter().find(|s| &s.id == p))
                .or_else(|| {
                    all.iter()
                        .rev()
                        .find(|s| s.name == new.name && s.time < new.time)
                });
            parent.cloned().ok_or_else(|| {
                ApiError::bad(format!(
                    "{spec} is the first snapshot of {}: nothing to compare with",
                    new.name
                ))
            })?
        }
    };
    let o = cairn_guest::open_snapshot(vault, old.clone(), None)?;
    let n = cairn_guest::open_snapshot(vault, new.clone(), o.partition)?;
    let d = cairn_guest::diff::between(&o, &n)?;
    let counts = json!({
        "added": d.added.len(), "deleted": d.deleted.len(),
        "modified": d.modified.len(), "renamed": d.renamed.len(),
    });
    let mut v = serde_json::to_value(&d).map_err(|e| ApiError::bad(e.to_string()))?;
    for k in ["added", "deleted", "modified", "renamed"] {
        if let Some(a) = v[k].as_array_mut() {
            a.truncate(DIFF_LIMIT);
        }
    }
    v["old"] = json!(old.id.0);
    v["new"] = json!(new.id.0);
    v["counts"] = counts;
    Ok(v)
}

#[derive(Deserialize)]
struct DiffQuery {
    against: Option<String>,
}

async fn diff(
    State(st): State<Shared>,
    caller: Caller,
    Path(spec): Path<String>,
    axum::extract::Query(q): axum::extract::Query<DiffQuery>,
) -> Result<Response, ApiError> {
    caller.require(Role::Operator)?;
    let v = blocking(move || snapshot_diff(&st, &spec, q.against.as_deref())).await?;
    Ok(axum::Json(v).into_response())
}

/// `NAME@…` resolved off the async threads (a 404 when nothing matches).
async fn resolve(st: &Shared, spec: &str) -> Result<Snapshot, ApiError> {
    let (s, spec) = (st.clone(), spec.to_string());
    blocking(move || Ok(s.vault.resolve(&spec)?)).await
}

// ---- jobs ----

fn job_started(job: &Job) -> Response {
    (
        StatusCode::ACCEPTED,
        axum::Json(json!({
            "job": job.id,
            "events": format!("/api/v1/jobs/{}/events", job.id),
        })),
    )
        .into_response()
}

fn malware_findings(job: &Job, hits: &[cairn_scan::malware::MalwareHit]) {
    for h in hits {
        job.push(
            "finding",
            json!({"kind": "malware", "severity": h.severity, "text": format!("{} at {} (offset {})", h.rule, h.path, h.offset)}),
        );
    }
}

fn persistence_findings(job: &Job, found: &[cairn_scan::persistence::Indicator]) {
    for p in found {
        job.push(
            "finding",
            json!({"kind": "persistence", "severity": p.severity, "text": format!("{} {}: {}", p.kind, p.path, p.detail)}),
        );
    }
}

fn vulnerability_findings(job: &Job, found: &[cairn_scan::VulnFinding]) {
    for v in found {
        job.push(
            "finding",
            json!({"kind": "vulnerability", "severity": v.severity, "text": format!("{} {} {}: {}", v.package, v.installed, v.id, v.summary)}),
        );
    }
}

fn count_scan(st: &Shared, r: &ScanReport) {
    st.metrics
        .add("cairn_scans_total", &[("verdict", r.verdict.as_str())], 1.0);
    for (kind, n) in [
        ("malware", r.malware.len()),
        ("persistence", r.persistence.len()),
        ("vulnerability", r.vulnerabilities.len()),
    ] {
        st.metrics
            .add("cairn_scan_findings_total", &[("kind", kind)], n as f64);
    }
}

/// Scans one snapshot stage by stage, sending each stage's findings as
/// soon as it ends.
pub fn run_scan(st: &Shared, job: &Job, spec: &str) -> anyhow::Result<Value> {
    let _one = st.scan_lock.lock().unwrap();
    let vault = &st.vault;
    let snap = vault.resolve(spec)?;
    let mut profile = Profile::load(vault, None)?;
    let chain = cairn_scan::chain(vault, &snap.name)?;
    let verdicts = cairn_scan::latest_verdicts(vault);
    let baseline = cairn_scan::baseline_for(&chain, &snap.id, &verdicts);
    let report = match Scan::stored(vault, &snap, baseline.as_ref(), &profile) {
        Some(r) => {
            job.push("stage", json!({"stage": "stored", "snapshot": snap.id.0}));
            persistence_findings(job, &r.persistence);
            malware_findings(job, &r.malware);
            vulnerability_findings(job, &r.vulnerabilities);
            r
        }
        None => {
            let mut targets = Targets::default();
            job.push("stage", json!({"stage": "opening", "snapshot": snap.id.0}));
            let mut scan = Scan::start(vault, &snap, baseline.as_ref(), &profile, &mut targets)?;
            job.push("stage", json!({"stage": "persistence"}));
            scan.persistence();
            persistence_findings(job, &scan.report.persistence);
            job.push("stage", json!({"stage": "malware"}));
            let last = std::sync::Mutex::new(std::time::Instant::now());
            scan.malware(&mut profile, &|done, total| {
                let mut l = last.lock().unwrap();
                if l.elapsed().as_millis() >= 500 {
                    *l = std::time::Instant::now();
                    job.push("progress", json!({"done": done, "total": total}));
                }
            });
            malware_findings(job, &scan.report.malware);
            job.push("stage", json!({"stage": "vulnerabilities"}));
            scan.vulnerabilities(&profile);
            vulnerability_findings(job, &scan.report.vulnerabilities);
            scan.finish()?
        }
    };
    count_scan(st, &report);
    Ok(json!({
        "snapshot": report.snapshot.0,
        "verdict": report.verdict.as_str(),
        "malware": report.malware.len(),
        "persistence": report.persistence.len(),
        "vulnerabilities": report.vulnerabilities.len(),
    }))
}

pub fn start_scan(st: &Shared, spec: String) -> Arc<Job> {
    let s = st.clone();
    st.jobs
        .spawn("scan", &spec.clone(), move |job| run_scan(&s, job, &spec))
}

async fn scan(
    State(st): State<Shared>,
    caller: Caller,
    Path(spec): Path<String>,
) -> Result<Response, ApiError> {
    caller.require(Role::Operator)?;
    resolve(&st, &spec).await?;
    st.jobs
        .room_for(&["scan", "find-clean"], MAX_QUEUED_SCANS)?;
    Ok(job_started(&start_scan(&st, spec)))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FindCleanBody {
    #[serde(default)]
    accept_warnings: bool,
}

pub fn start_find_clean(st: &Shared, name: String, accept_warnings: bool) -> Arc<Job> {
    let s = st.clone();
    st.jobs.spawn("find-clean", &name.clone(), move |job| {
        let _one = s.scan_lock.lock().unwrap();
        let mut profile = Profile::load(&s.vault, None)?;
        let last = std::sync::Mutex::new(std::time::Instant::now());
        let progress = |done: u64, total: u64| {
            let mut l = last.lock().unwrap();
            if l.elapsed().as_millis() >= 500 {
                *l = std::time::Instant::now();
                job.push("progress", json!({"done": done, "total": total}));
            }
        };
        let report = cairn_scan::walkback::find_clean(
            &s.vault,
            &name,
            &mut profile,
            cairn_scan::walkback::Options {
                accept_warnings,
                boot_check: None,
                malware_bytes: Some(&progress),
            },
            &mut |ev| match ev {
                cairn_scan::walkback::Event::Plan { start, reason, .. } => job.push(
                    "stage",
                    json!({"stage": "plan", "start": start.map(|s| s.id.0.clone()), "reason": reason}),
                ),
                cairn_scan::walkback::Event::Trying(s) => {
                    job.push("stage", json!({"stage": "trying", "snapshot": s.id.0}))
                }
                cairn_scan::walkback::Event::Stage(s, stage) => job.push(
                    "stage",
                    json!({"stage": stage.as_str(), "snapshot": s.id.0}),
                ),
                cairn_scan::walkback::Event::Done(t) => {
                    for f in &t.findings {
                        job.push(
                            "finding",
                            json!({"kind": t.stage.as_str(), "snapshot": t.id.0, "text": f}),
                        );
                    }
                    job.push("tried", serde_json::to_value(t).unwrap_or_default());
                }
            },
        )?;
        Ok(serde_json::to_value(&report)?)
    })
}

async fn find_clean(
    State(st): State<Shared>,
    caller: Caller,
    Path(name): Path<String>,
    b: Bytes,
) -> Result<Response, ApiError> {
    caller.require(Role::Operator)?;
    let opts: FindCleanBody = body(&b)?;
    let s = st.clone();
    let n = name.clone();
    blocking(move || Ok(cairn_scan::chain(&s.vault, &n)?)).await?;
    st.jobs
        .room_for(&["scan", "find-clean"], MAX_QUEUED_SCANS)?;
    Ok(job_started(&start_find_clean(
        &st,
        name,
        opts.accept_warnings,
    )))
}

/// Jobs an operator may have running at once, by kind (scans wait for
/// one another, each holding a thread meanwhile).
const MAX_QUEUED_SCANS: usize = 8;
const MAX_RESTORES: usize = 2;
const MAX_BOOTS: usize = 2;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RestoreBody {
    /// The name of a new file in the config's `restore_dir`.
    to: String,
}

async fn restore(
    State(st): State<Shared>,
    caller: Caller,
    Path(spec): Path<String>,
    b: Bytes,
) -> Result<Response, ApiError> {
    caller.require(Role::Operator)?;
    let RestoreBody { to } = body(&b)?;
    let Some(dir) = st.config.restore_dir.clone() else {
        return Err(ApiError::bad(
            "restores through the API need restore_dir in the server config (they write only there)",
        ));
    };
    if to.is_empty() || to == "." || to == ".." || to.contains('/') || to.contains('\0') {
        return Err(ApiError::bad(
            "say which new file in restore_dir to write: {\"to\": \"name.img\"}",
        ));
    }
    let to = dir.join(to).display().to_string();
    let snap = resolve(&st, &spec).await?;
    let s = st.clone();
    st.jobs.room_for(&["restore"], MAX_RESTORES)?;
    let job = st.jobs.spawn("restore", &spec, move |job| {
        let to = std::path::PathBuf::from(&to);
        job.push(
            "stage",
            json!({"stage": "restoring", "snapshot": snap.id.0, "to": to}),
        );
        match snap.source.kind {
            cairn_vault::SourceKind::Disk => {
                let disk = Arc::new(cairn_vault::SnapshotDisk::open(s.vault.clone(), &snap, 64)?);
                let r = cairn_recover_disk(&disk, &to)?;
                Ok(r)
            }
            // A new folder (never into one that exists), with the files'
            // metadata; setuid/setgid bits and file capabilities are left
            // off, as `cairn restore` does unless asked.
            cairn_vault::SourceKind::Directory => {
                if std::fs::symlink_metadata(&to).is_ok() {
                    anyhow::bail!("{} exists (the target must not exist)", to.display());
                }
                let tree = s.vault.read_tree(&snap)?;
                let r = cairn_recover::restore_tree(
                    &s.vault,
                    &tree,
                    &to,
                    &cairn_recover::TreeRestoreOptions {
                        overwrite: false,
                        dry_run: false,
                        keep_setid: false,
                        root: snap.source.root.clone(),
                    },
                    &|_| {},
                )?;
                // Not whole: the job failed, naming what is missing (the
                // rest stays written where it was asked).
                if !r.missing.is_empty() {
                    anyhow::bail!(
                        "{} file(s) could not be read from the vault and are not in {}: {}",
                        r.missing.len(),
                        to.display(),
                        r.missing.join("; ")
                    );
                }
                Ok(serde_json::to_value(r)?)
            }
        }
    });
    Ok(job_started(&job))
}

/// Writes a disk snapshot to a new file, sparse, and says how much.
fn cairn_recover_disk(
    disk: &Arc<cairn_vault::SnapshotDisk>,
    to: &std::path::Path,
) -> anyhow::Result<Value> {
    use cairn_vault::BlockSource;
    use std::os::unix::fs::FileExt;
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(to)
        .map_err(|e| {
            anyhow::anyhow!("creating {}: {e} (the target must not exist)", to.display())
        })?;
    let size = disk.size();
    f.set_len(size)?;
    let mut buf = vec![0u8; 4 << 20];
    let mut written = 0u64;
    let mut off = 0u64;
    while off < size {
        let n = ((size - off) as usize).min(buf.len());
        disk.read_at(off, &mut buf[..n])?;
        if buf[..n].iter().any(|&b| b != 0) {
            f.write_all_at(&buf[..n], off)?;
            written += n as u64;
        }
        off += n as u64;
    }
    f.sync_all()?;
    Ok(json!({"to": to, "size": size, "written": written}))
}

/// Boots a snapshot in the isolated environment (no network by default,
/// writes to a throw-away overlay) and judges the boot as `[boot]` in the
/// config says.
async fn boot(
    State(st): State<Shared>,
    caller: Caller,
    Path(spec): Path<String>,
) -> Result<Response, ApiError> {
    caller.require(Role::Operator)?;
    let opts = match &st.config.boot {
        Some(b) if b.expect.is_some() || b.probe.is_some() => b.options(),
        _ => {
            return Err(ApiError::bad(
                "the boot check is not configured: add [boot] with expect = \"…\" (or probe) to the server config",
            ));
        }
    };
    let snap = resolve(&st, &spec).await?;
    let s = st.clone();
    st.jobs.room_for(&["boot"], MAX_BOOTS)?;
    let job = st.jobs.spawn("boot", &spec, move |job| {
        job.push("stage", json!({"stage": "boot", "snapshot": snap.id.0}));
        // The console log is kept beside the server's state.
        let logs = s.dir.join("boot-logs");
        std::fs::create_dir_all(&logs)?;
        let mut opts = opts;
        opts.log = Some(logs.join(format!(
            "{}-{}.log",
            snap.id.short(),
            chrono::Utc::now().format("%Y%m%dT%H%M%S")
        )));
        let r = cairn_expose::boot::boot_check(&s.vault, &snap, &opts)?;
        let console = std::fs::read_to_string(&r.console_log).unwrap_or_default();
        let tail: Vec<&str> = console.lines().rev().take(20).collect();
        Ok(json!({
            "result": r.result,
            "reason": r.reason,
            "accel": r.accel,
            "seconds": r.seconds,
            "console_log": r.console_log,
            "console_tail": tail.into_iter().rev().collect::<Vec<_>>().join("\n"),
        }))
    });
    Ok(job_started(&job))
}

async fn jobs(State(st): State<Shared>, caller: Caller) -> Result<Response, ApiError> {
    caller.require(Role::Operator)?;
    let list: Vec<Value> = st
        .jobs
        .list()
        .iter()
        .map(|j| {
            let (ev, done) = j.since(0);
            json!({"id": j.id, "kind": j.kind, "target": j.target, "started": j.started, "done": done, "events": ev.len()})
        })
        .collect();
    Ok(axum::Json(list).into_response())
}

fn find_job(st: &Shared, id: &str) -> Result<Arc<Job>, ApiError> {
    id.parse()
        .ok()
        .and_then(|id| st.jobs.get(id))
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, format!("no job {id}")))
}

async fn job(
    State(st): State<Shared>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    caller.require(Role::Operator)?;
    Ok(axum::Json(find_job(&st, &id)?.summary()).into_response())
}

/// Server-sent events: every event of the job from the start, then new
/// ones as they happen; the stream ends after `done` or `error`.
async fn job_events(
    State(st): State<Shared>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    caller.require(Role::Operator)?;
    let job = find_job(&st, &id)?;
    let rx = job.subscribe();
    let stream = futures_util::stream::unfold(
        (job, rx, 0usize, Vec::<crate::jobs::JobEvent>::new(), false),
        |(job, mut rx, mut next, mut queue, mut finished)| async move {
            loop {
                if !queue.is_empty() {
                    let e = queue.remove(0);
                    let ev = Event::default()
                        .event(e.kind.clone())
                        .data(e.data.to_string());
                    return Some((
                        Ok::<_, std::convert::Infallible>(ev),
                        (job, rx, next, queue, finished),
                    ));
                }
                if finished {
                    return None;
                }
                let (new, done) = job.since(next);
                next += new.len();
                queue = new;
                finished = done;
                if queue.is_empty() && !finished && rx.changed().await.is_err() {
                    finished = true;
                }
            }
        },
    );
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response())
}

// ---- admin ----

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ForgetBody {
    #[serde(default)]
    names: Vec<String>,
    keep_last: Option<usize>,
    keep_within: Option<String>,
    keep_hourly: Option<usize>,
    keep_daily: Option<usize>,
    keep_weekly: Option<usize>,
    keep_monthly: Option<usize>,
    keep_yearly: Option<usize>,
    #[serde(default)]
    dry_run: bool,
}

async fn forget(State(st): State<Shared>, caller: Caller, b: Bytes) -> Result<Response, ApiError> {
    caller.require(Role::Admin)?;
    let f: ForgetBody = body(&b)?;
    let within = match &f.keep_within {
        Some(s) => Some(parse_days(s)?),
        None => None,
    };
    let policy = cairn_vault::prune::KeepPolicy {
        last: f.keep_last,
        within,
        hourly: f.keep_hourly,
        daily: f.keep_daily,
        weekly: f.keep_weekly,
        monthly: f.keep_monthly,
        yearly: f.keep_yearly,
    };
    if policy.is_empty() {
        return Err(ApiError::bad(
            "say what to keep (keep_last, keep_within, keep_daily, …)",
        ));
    }
    vault_free(&st)?;
    let r = blocking(move || {
        Ok(cairn_vault::prune::forget(
            &st.vault, &f.names, &policy, f.dry_run,
        )?)
    })
    .await?;
    Ok(axum::Json(r).into_response())
}

/// Forget and prune wait for every reader of the vault (an export may
/// run for days): through the API they answer 409 instead of hanging.
fn vault_free(st: &Shared) -> Result<(), ApiError> {
    if cairn_vault::lock::VaultLock::is_free(st.vault.root())? {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::CONFLICT,
            "the vault is in use (an export, a backup, a restore or a scan): try again when it ends",
        ))
    }
}

/// `30d`, `12h`, `6mo` (see [`cairn_vault::units::duration`]).
fn parse_days(s: &str) -> Result<chrono::Duration, ApiError> {
    cairn_vault::units::duration(s).map_err(ApiError::bad)
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct PruneBody {
    #[serde(default)]
    dry_run: bool,
}

async fn prune(State(st): State<Shared>, caller: Caller, b: Bytes) -> Result<Response, ApiError> {
    caller.require(Role::Admin)?;
    let p: PruneBody = body(&b)?;
    vault_free(&st)?;
    let r = blocking(move || Ok(cairn_vault::prune::prune(&st.vault, p.dry_run)?)).await?;
    Ok(axum::Json(r).into_response())
}

async fn pin(st: State<Shared>, caller: Caller, spec: Path<String>) -> Result<Response, ApiError> {
    set_pin(st, caller, spec, true).await
}

async fn unpin(
    st: State<Shared>,
    caller: Caller,
    spec: Path<String>,
) -> Result<Response, ApiError> {
    set_pin(st, caller, spec, false).await
}

async fn set_pin(
    State(st): State<Shared>,
    caller: Caller,
    Path(spec): Path<String>,
    on: bool,
) -> Result<Response, ApiError> {
    caller.require(Role::Admin)?;
    let id = blocking(move || {
        let s = st.vault.resolve(&spec)?;
        if on {
            st.vault.pin(&s.id)?;
        } else {
            st.vault.unpin(&s.id)?;
        }
        Ok(s.id.0)
    })
    .await?;
    let key = if on { "pinned" } else { "unpinned" };
    Ok(axum::Json(json!({ key: id })).into_response())
}

async fn tokens(State(st): State<Shared>, caller: Caller) -> Result<Response, ApiError> {
    caller.require(Role::Admin)?;
    let list: Vec<Value> = st
        .tokens
        .list()?
        .into_iter()
        .map(|t| json!({"id": t.id, "role": t.role, "sources": t.sources, "label": t.label, "created": t.created, "revoked": t.revoked}))
        .collect();
    Ok(axum::Json(list).into_response())
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct TokenBody {
    role: String,
    #[serde(default)]
    sources: Vec<String>,
    #[serde(default)]
    label: String,
}

async fn create_token(
    State(st): State<Shared>,
    caller: Caller,
    b: Bytes,
) -> Result<Response, ApiError> {
    caller.require(Role::Admin)?;
    let t: TokenBody = body(&b)?;
    let role = Role::parse(&t.role).map_err(|e| ApiError::bad(e.to_string()))?;
    let (rec, secret) = st
        .tokens
        .create(role, t.sources, &t.label)
        .map_err(|e| ApiError::bad(e.to_string()))?;
    Ok((
        StatusCode::CREATED,
        axum::Json(
            json!({"id": rec.id, "role": rec.role, "sources": rec.sources, "token": secret}),
        ),
    )
        .into_response())
}

async fn revoke_token(
    State(st): State<Shared>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    caller.require(Role::Admin)?;
    if !st.tokens.revoke(&id)? {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no token {id}"),
        ));
    }
    Ok(axum::Json(json!({"revoked": id})).into_response())
}

async fn audit(State(st): State<Shared>, caller: Caller) -> Result<Response, ApiError> {
    caller.require(Role::Operator)?;
    Ok(axum::Json(st.audit.entries()?).into_response())
}

async fn audit_verify(State(st): State<Shared>, caller: Caller) -> Result<Response, ApiError> {
    caller.require(Role::Operator)?;
    Ok(match st.audit.verify()? {
        Ok(n) => axum::Json(json!({"ok": true, "entries": n})).into_response(),
        Err(b) => {
            axum::Json(json!({"ok": false, "line": b.line, "reason": b.reason})).into_response()
        }
    })
}
