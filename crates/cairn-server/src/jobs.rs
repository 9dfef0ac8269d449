//! Long work started from the API or the console (scan, find-clean,
//! restore): it runs on a blocking thread and reports events, which
//! `GET /api/v1/jobs/{id}/events` streams as server-sent events (a late
//! subscriber gets every event from the start).

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::watch;

/// Jobs kept for viewing; older finished ones are dropped.
const KEPT: usize = 200;

#[derive(Clone, Debug, Serialize)]
pub struct JobEvent {
    /// `stage`, `finding`, `progress`, `done` or `error`.
    pub kind: String,
    pub data: Value,
}

pub struct Job {
    pub id: u64,
    pub kind: String,
    pub target: String,
    pub started: DateTime<Utc>,
    events: Mutex<(Vec<JobEvent>, bool)>,
    /// Number of events so far (and whether done), for waiting streams.
    tick: watch::Sender<usize>,
}

impl Job {
    pub fn push(&self, kind: &str, data: Value) {
        let mut e = self.events.lock().unwrap();
        if e.1 {
            return;
        }
        e.0.push(JobEvent {
            kind: kind.into(),
            data,
        });
        if kind == "done" || kind == "error" {
            e.1 = true;
        }
        let n = e.0.len();
        drop(e);
        self.tick.send_replace(n);
    }

    /// Events from `from` on, and whether the job has finished.
    pub fn since(&self, from: usize) -> (Vec<JobEvent>, bool) {
        let e = self.events.lock().unwrap();
        (e.0.get(from..).unwrap_or(&[]).to_vec(), e.1)
    }

    pub fn subscribe(&self) -> watch::Receiver<usize> {
        self.tick.subscribe()
    }

    pub fn summary(&self) -> Value {
        let (events, done) = self.since(0);
        serde_json::json!({
            "id": self.id,
            "kind": self.kind,
            "target": self.target,
            "started": self.started,
            "done": done,
            "events": events,
        })
    }
}

#[derive(Default)]
pub struct Jobs {
    next: AtomicU64,
    map: Mutex<BTreeMap<u64, Arc<Job>>>,
}

impl Jobs {
    /// Registers a job and runs `work` on a blocking thread; an error it
    /// returns becomes the job's last event.
    pub fn spawn(
        &self,
        kind: &str,
        target: &str,
        work: impl FnOnce(&Job) -> anyhow::Result<Value> + Send + 'static,
    ) -> Arc<Job> {
        let id = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        let job = Arc::new(Job {
            id,
            kind: kind.into(),
            target: target.into(),
            started: Utc::now(),
            events: Mutex::new((Vec::new(), false)),
            tick: watch::channel(0).0,
        });
        {
            let mut m = self.map.lock().unwrap();
            m.insert(id, job.clone());
            while m.len() > KEPT {
                let oldest = *m.keys().next().expect("not empty");
                m.remove(&oldest);
            }
        }
        let j = job.clone();
        tokio::task::spawn_blocking(move || {
            // A panic still ends the job's event stream, with an error.
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| work(&j)));
            match r {
                Ok(Ok(v)) => j.push("done", v),
                Ok(Err(e)) => j.push("error", serde_json::json!({ "error": format!("{e:#}") })),
                Err(_) => j.push(
                    "error",
                    serde_json::json!({ "error": "the job failed (a bug: see the server's log)" }),
                ),
            }
        });
        job
    }

    /// Jobs of `kinds` not finished yet.
    pub fn running(&self, kinds: &[&str]) -> usize {
        self.map
            .lock()
            .unwrap()
            .values()
            .filter(|j| kinds.contains(&j.kind.as_str()) && !j.since(usize::MAX).1)
            .count()
    }

    /// Refuses a new job of `kinds` while `most` of them run: each holds a
    /// thread, a QEMU or a disk's worth of writes.
    pub fn room_for(&self, kinds: &[&str], most: usize) -> Result<(), crate::ApiError> {
        if self.running(kinds) >= most {
            return Err(crate::ApiError::new(
                axum::http::StatusCode::TOO_MANY_REQUESTS,
                format!(
                    "{most} {} jobs are running already; try again when one has finished",
                    kinds.join("/")
                ),
            ));
        }
        Ok(())
    }

    pub fn get(&self, id: u64) -> Option<Arc<Job>> {
        self.map.lock().unwrap().get(&id).cloned()
    }

    pub fn list(&self) -> Vec<Arc<Job>> {
        self.map.lock().unwrap().values().rev().cloned().collect()
    }
}
