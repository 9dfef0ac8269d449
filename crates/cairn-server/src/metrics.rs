//! Counters for Prometheus (`/metrics`, text format 0.0.4). Series are
//! named `cairn_…`; labels are escaped as the format requires.

use std::collections::BTreeMap;
use std::sync::Mutex;

#[derive(Default)]
pub struct Metrics {
    /// (name, labels) → value; the kind and help of each name below.
    values: Mutex<BTreeMap<(String, String), f64>>,
}

/// name, type, help.
const SERIES: &[(&str, &str, &str)] = &[
    (
        "cairn_backups_total",
        "counter",
        "Snapshots created, by source and how (agent upload or scheduler).",
    ),
    (
        "cairn_backup_bytes_total",
        "counter",
        "Logical bytes of the snapshots created.",
    ),
    (
        "cairn_backup_new_bytes_total",
        "counter",
        "New bytes stored after deduplication.",
    ),
    (
        "cairn_backup_duration_seconds_total",
        "counter",
        "Time spent in backups the server ran.",
    ),
    (
        "cairn_backup_failures_total",
        "counter",
        "Scheduled backups that failed.",
    ),
    (
        "cairn_verdicts_total",
        "counter",
        "Insight verdicts of new snapshots.",
    ),
    ("cairn_scans_total", "counter", "Scans run, by verdict."),
    (
        "cairn_scan_findings_total",
        "counter",
        "Scan findings, by kind (malware, persistence, vulnerability).",
    ),
    (
        "cairn_upload_bytes_total",
        "counter",
        "Object bytes uploaded by clients.",
    ),
    (
        "cairn_chunks_offered_total",
        "counter",
        "Chunk ids offered by clients in negotiation.",
    ),
    (
        "cairn_chunks_missing_total",
        "counter",
        "Offered chunks the vault lacked (the ones uploaded).",
    ),
    (
        "cairn_requests_refused_total",
        "counter",
        "Requests refused for the caller's role.",
    ),
    (
        "cairn_http_requests_total",
        "counter",
        "HTTP requests, by status class.",
    ),
    (
        "cairn_webhooks_total",
        "counter",
        "Webhook deliveries, by outcome.",
    ),
    (
        "cairn_nbd_clients",
        "gauge",
        "NBD clients connected to exports the server started.",
    ),
    ("cairn_snapshots", "gauge", "Snapshots in the vault."),
];

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

pub fn labels(pairs: &[(&str, &str)]) -> String {
    if pairs.is_empty() {
        return String::new();
    }
    let inner: Vec<String> = pairs
        .iter()
        .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
        .collect();
    format!("{{{}}}", inner.join(","))
}

impl Metrics {
    pub fn add(&self, name: &str, pairs: &[(&str, &str)], v: f64) {
        debug_assert!(SERIES.iter().any(|s| s.0 == name), "{name}");
        *self
            .values
            .lock()
            .unwrap()
            .entry((name.to_string(), labels(pairs)))
            .or_default() += v;
    }

    pub fn set(&self, name: &str, pairs: &[(&str, &str)], v: f64) {
        self.values
            .lock()
            .unwrap()
            .insert((name.to_string(), labels(pairs)), v);
    }

    pub fn render(&self) -> String {
        let values = self.values.lock().unwrap();
        let mut out = String::new();
        for (name, kind, help) in SERIES {
            out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
            let mut any = false;
            for ((n, l), v) in values.iter() {
                if n == name {
                    out.push_str(&format!("{n}{l} {v}\n"));
                    any = true;
                }
            }
            if !any && *kind == "gauge" {
                out.push_str(&format!("{name} 0\n"));
            }
        }
        out
    }
}
