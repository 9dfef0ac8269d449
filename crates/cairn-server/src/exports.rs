//! Instant recovery from the console: a snapshot served read-only over
//! NBD by the server process, on a port of its own, until stopped or until
//! it expires (8 hours unless asked otherwise: an export forgotten in the
//! console would serve the disk to anyone who can reach the port, and
//! hold off prune, for ever). While an export runs it holds the vault lock
//! shared, so prune waits.

use crate::tokens::Role;
use crate::{ApiError, Caller, Shared, blocking};
use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use cairn_vault::{BlockSource, SnapshotDisk};
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

/// Chunks each export keeps in memory.
const CACHE_CHUNKS: usize = 256;
/// How long an export serves unless the request says (`?seconds=`).
const DEFAULT_SECONDS: u64 = 8 * 3600;
/// The longest an export may be asked to serve.
const MOST_SECONDS: u64 = 7 * 24 * 3600;
/// Exports running at once (each a port and a cache of its own).
const MOST_EXPORTS: usize = 16;

#[derive(serde::Deserialize)]
struct StartQuery {
    seconds: Option<u64>,
}

pub struct Running {
    pub id: u64,
    pub snapshot: String,
    pub url: String,
    pub clients: Arc<AtomicI64>,
    pub expires: chrono::DateTime<chrono::Utc>,
    task: tokio::task::JoinHandle<()>,
    _lock: cairn_vault::lock::VaultLock,
}

#[derive(Default)]
pub struct Exports {
    next: AtomicU64,
    running: Mutex<Vec<Running>>,
}

impl Exports {
    pub fn list(&self) -> Vec<Value> {
        self.running
            .lock()
            .unwrap()
            .iter()
            .map(|r| json!({"id": r.id, "snapshot": r.snapshot, "url": r.url, "clients": r.clients.load(Ordering::Relaxed), "expires": r.expires.to_rfc3339()}))
            .collect()
    }

    /// NBD clients connected to all exports (for /metrics).
    pub fn clients(&self) -> i64 {
        self.running
            .lock()
            .unwrap()
            .iter()
            .map(|r| r.clients.load(Ordering::Relaxed))
            .sum()
    }

    fn stop(&self, id: u64) -> bool {
        let mut r = self.running.lock().unwrap();
        match r.iter().position(|e| e.id == id) {
            Some(i) => {
                r.remove(i).task.abort();
                true
            }
            None => false,
        }
    }
}

pub fn routes() -> Router<Shared> {
    Router::new()
        .route("/api/v1/snapshots/{spec}/export", post(start))
        .route("/api/v1/exports", get(list))
        .route("/api/v1/exports/{id}", delete(stop))
}

async fn start(
    State(st): State<Shared>,
    caller: Caller,
    Path(spec): Path<String>,
    axum::extract::Query(q): axum::extract::Query<StartQuery>,
) -> Result<Response, ApiError> {
    caller.require(Role::Operator)?;
    let seconds = q.seconds.unwrap_or(DEFAULT_SECONDS);
    if !(1..=MOST_SECONDS).contains(&seconds) {
        return Err(ApiError::bad(format!(
            "seconds must be 1 to {MOST_SECONDS} (7 days), not {seconds}"
        )));
    }
    if st.exports.running.lock().unwrap().len() >= MOST_EXPORTS {
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            format!("{MOST_EXPORTS} exports are running; stop one first"),
        ));
    }
    let s = st.clone();
    let (snap, disk, lock) = blocking(move || {
        let snap = s.vault.resolve(&spec)?;
        if snap.source.kind != cairn_vault::SourceKind::Disk {
            return Err(ApiError::bad(format!(
                "{spec} is a directory snapshot; NBD serves disks"
            )));
        }
        let lock = cairn_vault::lock::VaultLock::shared(s.vault.root())?;
        let disk: Arc<dyn BlockSource> = Arc::new(
            SnapshotDisk::open(s.vault.clone(), &snap, CACHE_CHUNKS)?.without_read_ahead(),
        );
        Ok((snap, disk, lock))
    })
    .await?;
    let host = st.config.export_host.as_deref().unwrap_or("127.0.0.1");
    let listener = tokio::net::TcpListener::bind((host, 0))
        .await
        .map_err(|e| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("no port for the export: {e}"),
            )
        })?;
    let addr = listener
        .local_addr()
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let name = format!("{}-{}", snap.name, snap.id.short());
    let export = cairn_expose::Export {
        name: name.clone(),
        disk: Arc::new(cairn_expose::OverlayDisk {
            base: disk,
            overlay: None,
        }),
        description: format!(
            "{}@{} {}",
            snap.name,
            snap.id.short(),
            snap.time.to_rfc3339()
        ),
    };
    let clients = Arc::new(AtomicI64::new(0));
    let c = clients.clone();
    let id = st.exports.next.fetch_add(1, Ordering::Relaxed) + 1;
    let expires = chrono::Utc::now() + chrono::Duration::seconds(seconds as i64);
    let state = st.clone();
    // The running list is locked until the export is in it, so a task
    // that ends at once still finds (and removes) its entry.
    let mut running = st.exports.running.lock().unwrap();
    let task = tokio::spawn(async move {
        let serve = cairn_expose::serve_counted(listener, Arc::new(vec![export]), c);
        match tokio::time::timeout(std::time::Duration::from_secs(seconds), serve).await {
            Ok(Err(e)) => tracing::error!("export {id} stopped: {e}"),
            Ok(Ok(())) => {}
            Err(_) => tracing::info!("export {id} expired"),
        }
        // Gone from the list: its port closes and the vault lock goes.
        let mut r = state.exports.running.lock().unwrap();
        r.retain(|e| e.id != id);
    });
    let url = format!("nbd://{addr}/{name}");
    running.push(Running {
        id,
        snapshot: format!("{}@{}", snap.name, snap.id.0),
        url: url.clone(),
        clients,
        expires,
        task,
        _lock: lock,
    });
    drop(running);
    Ok((
        StatusCode::CREATED,
        axum::Json(
            json!({"id": id, "url": url, "read_only": true, "expires": expires.to_rfc3339()}),
        ),
    )
        .into_response())
}

async fn list(State(st): State<Shared>, caller: Caller) -> Result<Response, ApiError> {
    caller.require(Role::Operator)?;
    Ok(axum::Json(st.exports.list()).into_response())
}

async fn stop(
    State(st): State<Shared>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    caller.require(Role::Operator)?;
    match id.parse().ok().filter(|&i| st.exports.stop(i)) {
        Some(i) => Ok(axum::Json(json!({"stopped": i})).into_response()),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no export {id}"),
        )),
    }
}
