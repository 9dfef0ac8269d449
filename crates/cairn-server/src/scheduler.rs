//! Periodic backups of the sources in the config, and what follows every
//! new snapshot however it arrived (scheduled, or uploaded by an agent):
//! insight scores it (and pins the clean point when it is not clean), the
//! verdict is counted, a webhook fires on suspicious or compromised
//! verdicts, and the policy's scan and retention run.

use crate::Shared;
use crate::config::Policy;
use serde_json::json;
use std::sync::Arc;

/// Starts one loop per configured source: a backup at start, then one
/// every interval (a run that overlaps the next tick delays it).
pub fn start(st: Shared) {
    for policy in st.config.source.clone() {
        let Ok(every) = policy.interval() else {
            continue;
        };
        let st = st.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let (s, p) = (st.clone(), policy.clone());
                let _ = tokio::task::spawn_blocking(move || run_policy(&s, &p)).await;
            }
        });
    }
}

/// One scheduled backup and everything after it.
pub fn run_policy(st: &Shared, p: &Policy) {
    let started = std::time::Instant::now();
    let opts = cairn_ingest::BackupOptions {
        name: p.name.clone(),
        time: None,
        tags: vec!["scheduled".into()],
    };
    let progress = cairn_ingest::Progress::default();
    match cairn_ingest::backup(&st.vault, &p.path, &opts, &progress) {
        Ok(out) => {
            let m = &out.snapshot.metrics;
            st.metrics.add(
                "cairn_backups_total",
                &[("source", &p.name), ("via", "scheduler")],
                1.0,
            );
            st.metrics.add(
                "cairn_backup_bytes_total",
                &[("source", &p.name)],
                m.logical_size as f64,
            );
            st.metrics.add(
                "cairn_backup_new_bytes_total",
                &[("source", &p.name)],
                m.new_bytes_stored as f64,
            );
            st.metrics.add(
                "cairn_backup_duration_seconds_total",
                &[("source", &p.name)],
                started.elapsed().as_secs_f64(),
            );
            tracing::info!(
                "scheduled backup of {} done: {}",
                p.name,
                out.snapshot.id.short()
            );
            assess(st, &p.name, Some(&p.path));
            if p.scan {
                let job = crate::api::start_scan(st, format!("{}@{}", p.name, out.snapshot.id.0));
                tracing::info!("scan of {} started as job {}", p.name, job.id);
            }
            if let Some(n) = p.keep_last {
                let policy = cairn_vault::prune::KeepPolicy {
                    last: Some(n),
                    ..Default::default()
                };
                if let Err(e) = cairn_vault::prune::forget(
                    &st.vault,
                    std::slice::from_ref(&p.name),
                    &policy,
                    false,
                ) {
                    tracing::error!("retention of {} failed: {e}", p.name);
                }
            }
        }
        Err(e) => {
            st.metrics
                .add("cairn_backup_failures_total", &[("source", &p.name)], 1.0);
            tracing::error!("scheduled backup of {} failed: {e}", p.name);
            notify(
                st,
                json!({"event": "backup_failed", "source": p.name, "error": e.to_string()}),
            );
        }
    }
}

/// After an agent's snapshot: insight in the background.
pub fn after_backup(st: Shared, name: String) {
    tokio::task::spawn_blocking(move || assess(&st, &name, None));
}

/// Scores the newest snapshot of `name`; counts the verdict; calls the
/// webhook when it is not clean.
fn assess(st: &Shared, name: &str, source: Option<&std::path::Path>) {
    // One assessment at a time: insight stores records write-once.
    static ONE: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = ONE.lock().unwrap();
    let out = match cairn_insight::assess_latest(&st.vault, name, source, |t| {
        cairn_scan::verification_of(&st.vault, t)
    }) {
        Ok(o) => o,
        Err(e) => {
            tracing::error!("insight on {name} failed: {e}");
            return;
        }
    };
    let latest = out.latest();
    let verdict = latest.assessment.verdict.as_str();
    st.metrics
        .add("cairn_verdicts_total", &[("verdict", verdict)], 1.0);
    if verdict != "clean" {
        notify(
            st,
            json!({
                "event": "verdict",
                "source": name,
                "snapshot": latest.snapshot.id.0,
                "time": latest.snapshot.time,
                "verdict": verdict,
                "score": latest.assessment.score,
                "reasons": latest.assessment.reasons,
                "last_clean": out.timeline.last_clean().map(|e| e.snapshot.id.0.clone()),
                "pinned": out.pinned.as_ref().map(|p| p.0.clone()),
            }),
        );
    }
}

/// POSTs `body` to the configured webhook, retrying a few times.
fn notify(st: &Shared, body: serde_json::Value) {
    let Some(url) = st.config.webhook.clone() else {
        return;
    };
    let st: Arc<crate::AppState> = st.clone();
    std::thread::spawn(move || {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(std::time::Duration::from_secs(10)))
            .build()
            .into();
        for attempt in 0..3 {
            if attempt > 0 {
                std::thread::sleep(std::time::Duration::from_secs(1 << attempt));
            }
            match agent
                .post(&url)
                .header("content-type", "application/json")
                .send(body.to_string())
            {
                Ok(_) => {
                    st.metrics
                        .add("cairn_webhooks_total", &[("outcome", "delivered")], 1.0);
                    return;
                }
                // The address often holds a secret: only its host is logged.
                Err(e) => tracing::warn!(
                    "webhook to {}: {e}",
                    url.split('/').nth(2).unwrap_or("the configured address")
                ),
            }
        }
        st.metrics
            .add("cairn_webhooks_total", &[("outcome", "failed")], 1.0);
    });
}
