//! Instant recovery from the console: a snapshot served read-only over
//! NBD by the server process, on a port of its own, until stopped. While
//! an export runs it holds the vault lock shared, so prune waits.

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

pub struct Running {
    pub id: u64,
    pub snapshot: String,
    pub url: String,
    pub clients: Arc<AtomicI64>,
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
            .map(|r| json!({"id": r.id, "snapshot": r.snapshot, "url": r.url, "clients": r.clients.load(Ordering::Relaxed)}))
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
) -> Result<Response, ApiError> {
    caller.require(Role::Operator)?;
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
    let task = tokio::spawn(async move {
        if let Err(e) = cairn_expose::serve_counted(listener, Arc::new(vec![export]), c).await {
            tracing::error!("export stopped: {e}");
        }
    });
    let id = st.exports.next.fetch_add(1, Ordering::Relaxed) + 1;
    let url = format!("nbd://{addr}/{name}");
    st.exports.running.lock().unwrap().push(Running {
        id,
        snapshot: format!("{}@{}", snap.name, snap.id.0),
        url: url.clone(),
        clients,
        task,
        _lock: lock,
    });
    Ok((
        StatusCode::CREATED,
        axum::Json(json!({"id": id, "url": url, "read_only": true})),
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
