//! `cairn serve`: the vault as an HTTP service.
//!
//! The isolation boundary sits here: protected hosts hold **agent**
//! tokens and reach the vault only through this server, which lets them
//! add objects (after checking each one) and read nothing but the config,
//! the wrapped keys and their own sources' manifests. Operators and
//! admins act through the API and the console; every one of their
//! requests, and every refusal, goes to the hash-chained audit log.
//!
//! Modules: [`objects`] (the object protocol agents back up through),
//! [`api`] (sources, timelines, scans, recovery, admin), [`jobs`] (long
//! work with live events), [`console`] (server-rendered HTML),
//! [`scheduler`] (periodic backups, insight, webhooks), [`exports`]
//! (NBD from the console), [`tokens`],
//! [`audit`], [`metrics`], [`openapi`].

pub mod api;
pub mod audit;
pub mod bodies;
pub mod config;
pub mod console;
pub mod exports;
pub mod jobs;
pub mod metrics;
pub mod objects;
pub mod openapi;
pub mod scheduler;
pub mod tokens;

use anyhow::{Context, Result};
use axum::Router;
use axum::body::Body;
use axum::extract::{FromRequestParts, Request, State};
use axum::http::{HeaderValue, StatusCode, header, request::Parts};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use cairn_vault::Vault;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use tokens::{Role, TokenRecord, Tokens};

/// Everything a request handler may reach.
pub struct AppState {
    pub vault: Arc<Vault>,
    /// The server's own state (tokens, audit log), never a vault object
    /// (see [`state_dir`]).
    pub dir: PathBuf,
    pub tokens: Tokens,
    pub audit: audit::AuditLog,
    pub metrics: metrics::Metrics,
    pub jobs: jobs::Jobs,
    pub exports: exports::Exports,
    pub claims: objects::Claims,
    pub maps_shown: objects::MapsShown,
    pub uploads: objects::Uploads,
    pub bodies: bodies::Bodies,
    /// Pack indexes checked at once (each reads its pack whole).
    pub verifying: Arc<tokio::sync::Semaphore>,
    pub config: config::ServerConfig,
    /// Console sessions: session id → (token id, when it ends).
    sessions: Mutex<HashMap<String, (String, std::time::Instant)>>,
    /// Scans share the scan cache: one at a time.
    pub scan_lock: Mutex<()>,
    /// Refusals of unknown or revoked tokens audited this minute: (minute,
    /// count), so that a flood of them cannot fill the disk.
    stranger_refusals: Mutex<(u64, u32)>,
}

pub type Shared = Arc<AppState>;

/// How long a console session lasts.
const SESSION_LIFE: std::time::Duration = std::time::Duration::from_secs(12 * 3600);
/// Most console sessions kept at once.
const MAX_SESSIONS: usize = 10_000;
/// Largest request body outside object uploads.
const MAX_BODY: usize = 64 * 1024;
/// Most refusals of unknown or revoked tokens audited a minute.
const STRANGERS_PER_MINUTE: u32 = 60;

/// The server's state folder (tokens, audit log) for the vault at `loc`:
/// `local/server` in a vault folder, or beside a remote vault in its
/// state folder (see [`Location::state_dir`]). State kept by earlier
/// versions in the cache folder of a remote vault, which clearing the
/// cache would have lost with every token, is moved there first.
pub fn state_dir(loc: &cairn_vault::vault::Location) -> Result<PathBuf> {
    let dir = loc.state_dir().join("local").join("server");
    // Kept before under a name of the endpoint too, or in the cache folder.
    let older = [
        loc.endpoint_state_dir()
            .map(|d| d.join("local").join("server")),
        Some(loc.local_dir().join("local").join("server")),
    ];
    let Some(old) = older
        .into_iter()
        .flatten()
        .find(|old| *old != dir && old.is_dir())
    else {
        return Ok(dir);
    };
    if !dir.exists() {
        let parent = dir.parent().expect("a state folder has a parent");
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
        // A rename where both lie on one filesystem, else a copy (the
        // old folder then stays, renamed aside: nothing is deleted).
        if std::fs::rename(&old, &dir).is_err() {
            copy_folder(&old, &dir).with_context(|| {
                format!(
                    "moving the server's state from {} to {}",
                    old.display(),
                    dir.display()
                )
            })?;
            std::fs::rename(&old, old.with_extension("moved")).ok();
        }
        eprintln!(
            "moved the server's tokens and audit log from {} to {}",
            old.display(),
            dir.display()
        );
    }
    Ok(dir)
}

/// Copies folder `from` into a new folder `to`, every file synced, then
/// renames it into place whole.
fn copy_folder(from: &Path, to: &Path) -> std::io::Result<()> {
    fn copy_into(from: &Path, to: &Path) -> std::io::Result<()> {
        std::fs::create_dir_all(to)?;
        for e in std::fs::read_dir(from)? {
            let e = e?;
            let (kind, dest) = (e.file_type()?, to.join(e.file_name()));
            if kind.is_dir() {
                copy_into(&e.path(), &dest)?;
            } else if kind.is_file() {
                std::fs::copy(e.path(), &dest)?;
                std::fs::File::open(&dest)?.sync_all()?;
            }
        }
        std::fs::File::open(to)?.sync_all()
    }
    let tmp = to.with_extension(format!("moving-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    copy_into(from, &tmp)?;
    std::fs::rename(&tmp, to)
}

impl AppState {
    /// `dir`: the server's state folder (see [`state_dir`]).
    pub fn new(vault: Arc<Vault>, dir: PathBuf, config: config::ServerConfig) -> Result<Shared> {
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Arc::new(AppState {
            tokens: Tokens::new(&dir),
            audit: audit::AuditLog::new(&dir).anchored_in(vault.clone()),
            metrics: metrics::Metrics::default(),
            jobs: jobs::Jobs::default(),
            exports: exports::Exports::default(),
            claims: objects::Claims::default(),
            maps_shown: objects::MapsShown::default(),
            uploads: objects::Uploads::default(),
            bodies: bodies::Bodies::default(),
            verifying: Arc::new(tokio::sync::Semaphore::new(2)),
            sessions: Mutex::new(HashMap::new()),
            scan_lock: Mutex::new(()),
            stranger_refusals: Mutex::new((0, 0)),
            vault,
            dir,
            config,
        }))
    }

    /// Writes an audit entry; a log that cannot be written is reported
    /// (the action already happened) but does not crash the server.
    pub fn audit(&self, who: &TokenRecord, action: &str, target: &str, outcome: &str) {
        if let Err(e) = self
            .audit
            .append(&who.id, who.role.as_str(), action, target, outcome)
        {
            tracing::error!("audit log not written: {e:#}");
        }
    }

    /// Audits a request refused to a token no valid record holds (revoked,
    /// or never issued): a decommissioned or compromised host still trying
    /// is what an operator must see. At most [`STRANGERS_PER_MINUTE`] a
    /// minute are written (all are counted in the metrics).
    fn audit_stranger(&self, who: &str, role: &str, action: &str, status: StatusCode) {
        self.metrics
            .add("cairn_requests_refused_total", &[("role", role)], 1.0);
        let minute = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() / 60);
        {
            let mut seen = self.stranger_refusals.lock().unwrap();
            if seen.0 != minute {
                *seen = (minute, 0);
            }
            seen.1 += 1;
            if seen.1 > STRANGERS_PER_MINUTE {
                return;
            }
        }
        if let Err(e) = self.audit.append(
            who,
            role,
            action,
            &format!("HTTP {}", status.as_u16()),
            "refused",
        ) {
            tracing::error!("audit log not written: {e:#}");
        }
    }

    fn new_session(&self, token_id: &str) -> String {
        let sid = random_hex(24);
        let now = std::time::Instant::now();
        let mut all = self.sessions.lock().unwrap();
        // Ended sessions go; past the cap the ones ending soonest too, so
        // sign-ins cannot grow the map without end.
        all.retain(|_, (_, ends)| *ends > now);
        while all.len() >= MAX_SESSIONS {
            let first = all
                .iter()
                .min_by_key(|(_, (_, ends))| *ends)
                .map(|(k, _)| k.clone())
                .expect("not empty");
            all.remove(&first);
        }
        all.insert(sid.clone(), (token_id.to_string(), now + SESSION_LIFE));
        sid
    }

    /// The token id of a live session.
    fn session(&self, sid: &str) -> Option<String> {
        let all = self.sessions.lock().unwrap();
        all.get(sid)
            .filter(|(_, ends)| *ends > std::time::Instant::now())
            .map(|(id, _)| id.clone())
    }

    /// Ends a session (sign-out).
    pub(crate) fn end_session(&self, sid: &str) {
        self.sessions.lock().unwrap().remove(sid);
    }

    /// The session cookie's attributes (`Secure` when served over TLS).
    pub(crate) fn cookie(&self, sid: &str) -> String {
        let secure = if self.config.tls_cert.is_some() {
            "; Secure"
        } else {
            ""
        };
        format!(
            "cairn_session={sid}; HttpOnly; SameSite=Strict; Path=/; Max-Age={}{secure}",
            SESSION_LIFE.as_secs()
        )
    }
}

pub fn random_hex(n: usize) -> String {
    let mut b = vec![0u8; n];
    getrandom::fill(&mut b).expect("randomness");
    hex::encode(b)
}

/// The authenticated caller of a request.
#[derive(Clone, Debug)]
pub struct Caller(pub TokenRecord);

impl Caller {
    pub fn require(&self, role: Role) -> Result<(), ApiError> {
        if self.0.role >= role {
            Ok(())
        } else {
            Err(ApiError::new(
                StatusCode::FORBIDDEN,
                format!(
                    "this needs an {} token; yours is {}",
                    role.as_str(),
                    self.0.role.as_str()
                ),
            ))
        }
    }
}

/// Marks a request that came with a token an admin revoked.
#[derive(Clone, Copy)]
struct RevokedToken;

/// Marks a request that came with a token this server never issued (a
/// typing mistake, or a token of another server).
#[derive(Clone, Copy)]
struct UnknownToken;

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        let revoked = parts.extensions.get::<RevokedToken>().is_some();
        let unknown = parts.extensions.get::<UnknownToken>().is_some();
        parts.extensions.get::<Caller>().cloned().ok_or_else(|| {
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                if revoked {
                    "this token was revoked: ask an admin for a new one"
                } else if unknown {
                    "this server issued no such token: check it for a typing mistake (cairn: --token or CAIRN_TOKEN), or ask an admin for one (cairn token create)"
                } else {
                    "no token was sent: cairn takes it from --token or CAIRN_TOKEN; other clients send `Authorization: Bearer TOKEN`"
                },
            )
        })
    }
}

/// An error answered as `{"error": "..."}` with its status.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
        }
    }
    pub fn bad(message: impl Into<String>) -> ApiError {
        Self::new(StatusCode::BAD_REQUEST, message)
    }
    pub fn forbidden(message: impl Into<String>) -> ApiError {
        Self::new(StatusCode::FORBIDDEN, message)
    }
}

impl From<anyhow::Error> for ApiError {
    fn from(e: anyhow::Error) -> ApiError {
        match e.downcast_ref::<cairn_vault::Error>() {
            Some(v) => vault_error(v),
            None => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}")),
        }
    }
}

impl From<cairn_vault::Error> for ApiError {
    fn from(e: cairn_vault::Error) -> ApiError {
        vault_error(&e)
    }
}

impl From<cairn_scan::Error> for ApiError {
    fn from(e: cairn_scan::Error) -> ApiError {
        match e {
            cairn_scan::Error::Vault(v) => vault_error(&v),
            cairn_scan::Error::Invalid(m) => ApiError::bad(m),
            e => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        }
    }
}

impl From<cairn_guest::GuestError> for ApiError {
    fn from(e: cairn_guest::GuestError) -> ApiError {
        // The snapshot's files could not be read (no filesystem Cairn
        // reads, or a damaged one): a fact about the data, not a crash.
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, e.to_string())
    }
}

fn vault_error(e: &cairn_vault::Error) -> ApiError {
    use cairn_vault::Error as E;
    let status = match e {
        E::SnapshotNotFound(_) => StatusCode::NOT_FOUND,
        E::Invalid(_) | E::BadSpec(_) => StatusCode::BAD_REQUEST,
        E::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
            StatusCode::NOT_FOUND
        }
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    ApiError::new(status, e.to_string())
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            axum::Json(serde_json::json!({ "error": self.message })),
        )
            .into_response()
    }
}

/// Runs blocking vault work off the async threads.
pub async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("task failed: {e}"),
        )
    })?
}

fn cookie_value<'a>(parts: &'a Parts, name: &str) -> Option<&'a str> {
    parts
        .headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

pub(crate) fn query_value(query: Option<&str>, name: &str) -> Option<String> {
    query?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == name).then(|| percent_decode(v))
    })
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 3 <= b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(v) => {
                        out.push(v);
                        i += 3;
                        continue;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Finds the caller (bearer token, session cookie, or `?token=` which
/// also opens a session), runs the request, then audits it and turns
/// plain-text errors from the framework into JSON ones.
async fn authenticate(State(st): State<Shared>, req: Request, next: Next) -> Response {
    let (mut parts, body) = req.into_parts();
    let mut new_session = None;
    let bearer = parts
        .headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|s| s.trim().to_string());
    let mut caller = bearer.as_deref().and_then(|t| st.tokens.check(t));
    // Who presented a token no valid record holds, for the audit log.
    let mut stranger = None;
    if caller.is_none()
        && let Some(t) = &bearer
    {
        if let Some(r) = st.tokens.revoked(t) {
            parts.extensions.insert(RevokedToken);
            stranger = Some((r.id, format!("{} (revoked)", r.role.as_str())));
        } else {
            parts.extensions.insert(UnknownToken);
            stranger = Some((tokens::Tokens::unknown_name(t), "none".to_string()));
        }
    }
    if caller.is_none()
        && let Some(sid) = cookie_value(&parts, "cairn_session")
    {
        caller = st.session(sid).and_then(|id| st.tokens.by_id(&id));
    }
    // A token in the address only opens the console (and a session):
    // addresses end up in histories, logs and Referer headers.
    if caller.is_none()
        && parts.method == axum::http::Method::GET
        && parts.uri.path() == "/"
        && let Some(t) = query_value(parts.uri.query(), "token")
        && let Some(rec) = st.tokens.check(&t)
    {
        if rec.role > Role::Agent {
            new_session = Some(st.new_session(&rec.id));
        }
        caller = Some(rec);
    }
    if let Some(c) = &caller {
        parts.extensions.insert(Caller(c.clone()));
    }
    let method = parts.method.clone();
    let path = parts.uri.path().to_string();
    // An admin's change is on record before it runs: its work goes on in
    // a blocking task even when the client hangs up before the answer.
    if let Some(c) = &caller
        && c.role == Role::Admin
        && method != axum::http::Method::GET
        && method != axum::http::Method::HEAD
    {
        st.audit(c, &format!("{method} {path}"), "", "started");
    }
    // The body arrives whole, within its limits, before any handler runs.
    let timeout = std::time::Duration::from_secs(st.config.header_timeout.unwrap_or(30));
    let received = st
        .bodies
        .receive(
            &parts,
            caller.as_ref().map(|c| c.id.as_str()),
            body,
            timeout,
        )
        .await;
    let mut resp = match received {
        Ok((body, held)) => {
            // Handlers whose work outlives the request (a client that hung
            // up) keep what the body holds until it is done.
            if let Some(h) = held {
                parts.extensions.insert(h);
            }
            next.run(Request::from_parts(parts, body)).await
        }
        Err(e) => e.into_response(),
    };
    let status = resp.status();
    st.metrics.add(
        "cairn_http_requests_total",
        &[("code", &format!("{}xx", status.as_u16() / 100))],
        1.0,
    );
    if let Some(c) = &caller {
        // Event streams are read over and over: not audited. Only the
        // route itself, not any path that ends the same (a source may be
        // named `events`).
        let quiet = method == axum::http::Method::GET
            && path.starts_with("/api/v1/jobs/")
            && path.ends_with("/events")
            && path.matches('/').count() == 5;
        // Every refusal of a write is audited too: an agent's upload that
        // fails its checks (a lying index, a backdated or short-lived
        // manifest) is as telling as one it had no right to make.
        let refused_write = status.is_client_error()
            && method != axum::http::Method::GET
            && method != axum::http::Method::HEAD;
        if status == StatusCode::FORBIDDEN || refused_write {
            st.metrics.add(
                "cairn_requests_refused_total",
                &[("role", c.role.as_str())],
                1.0,
            );
            st.audit(
                c,
                &format!("{method} {path}"),
                &format!("HTTP {}", status.as_u16()),
                "refused",
            );
        } else if c.role > Role::Agent && !quiet {
            st.audit(c, &format!("{method} {path}"), "", status.as_str());
        }
    }
    if caller.is_none()
        && let Some((who, role)) = &stranger
        && status.is_client_error()
    {
        st.audit_stranger(who, role, &format!("{method} {path}"), status);
    }
    if let Some(sid) = new_session
        && let Ok(v) = HeaderValue::from_str(&st.cookie(&sid))
    {
        // The session is open: the token leaves the address bar (and so
        // the history, and the Referer of what the page loads) at once.
        if resp.status().is_success() {
            resp = axum::response::Redirect::to("/").into_response();
        }
        resp.headers_mut().append(header::SET_COOKIE, v);
    }
    resp.headers_mut().insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    json_errors(resp).await
}

/// Framework rejections (bad path, bad query, body too large) come as
/// text; scripts get JSON like every other error.
async fn json_errors(resp: Response) -> Response {
    let status = resp.status();
    let is_text = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_none_or(|v| v.starts_with("text/plain"));
    if !(status.is_client_error() || status.is_server_error()) || !is_text {
        return resp;
    }
    let (parts, body) = resp.into_parts();
    let text = axum::body::to_bytes(body, 64 * 1024)
        .await
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    let message = if text.is_empty() {
        status.canonical_reason().unwrap_or("error").to_string()
    } else {
        text
    };
    let mut out = ApiError::new(status, message).into_response();
    for (k, v) in parts.headers.iter() {
        if k != header::CONTENT_TYPE && k != header::CONTENT_LENGTH {
            out.headers_mut().insert(k.clone(), v.clone());
        }
    }
    out
}

async fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "no such endpoint (see /openapi.json)",
    )
}

/// The whole HTTP surface.
pub fn router(st: Shared) -> Router {
    Router::new()
        .merge(objects::routes())
        .merge(api::routes())
        .merge(exports::routes())
        .merge(console::routes())
        .route("/healthz", axum::routing::get(|| async { "ok\n" }))
        .route(
            "/metrics",
            axum::routing::get(|State(st): State<Shared>, caller: Caller| async move {
                // Source names and verdicts are no one else's business.
                caller.require(Role::Operator)?;
                let s = st.clone();
                let n = blocking(move || Ok(cairn_vault::Vault::snapshots(&s.vault)?))
                    .await
                    .map(|(s, _)| s.len())
                    .unwrap_or(0);
                st.metrics.set("cairn_snapshots", &[], n as f64);
                st.metrics
                    .set("cairn_nbd_clients", &[], st.exports.clients() as f64);
                Ok::<_, ApiError>((
                    [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
                    st.metrics.render(),
                ))
            }),
        )
        .route(
            "/openapi.json",
            axum::routing::get(|| async { axum::Json(openapi::document()) }),
        )
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(
            st.clone(),
            authenticate,
        ))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .with_state(st)
}

/// Serves until the process is stopped: plain HTTP, or HTTPS when the
/// config names a certificate and key.
pub async fn serve(st: Shared, listener: tokio::net::TcpListener) -> Result<()> {
    let app = router(st.clone());
    // What the command line recorded while no server ran (token changes)
    // is anchored now.
    if let Err(e) = st.audit.anchor_tail() {
        tracing::error!("audit log not anchored: {e:#}");
    }
    let tls = match (&st.config.tls_cert, &st.config.tls_key) {
        (Some(cert), Some(key)) => Some(tls_acceptor(cert, key)?),
        (None, None) => None,
        _ => anyhow::bail!("TLS needs both tls_cert and tls_key"),
    };
    scheduler::start(st.clone());
    let limits = Limits {
        connections: connections_within_file_limit(st.config.max_connections.unwrap_or(1024)),
        header_timeout: std::time::Duration::from_secs(st.config.header_timeout.unwrap_or(30)),
        per_address: st.config.max_connections_per_address.unwrap_or(256),
    };
    accept_loop(app, listener, tls, limits).await
}

/// Descriptors kept for the vault's files, logs and exports beside the
/// connections.
const RESERVED_FDS: u64 = 256;

/// `wanted` connections, fewer if the process may not open that many
/// files: its soft limit is raised to the hard one first (systemd's soft
/// limit is 1024), and what is still short leaves room for the vault's own
/// files, so a full house of clients cannot make them fail to open.
fn connections_within_file_limit(wanted: usize) -> usize {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain calls on a struct we own.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return wanted;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim.rlim_cur = lim.rlim_max;
            }
        }
    }
    let room = lim.rlim_cur.saturating_sub(RESERVED_FDS).max(16);
    let n = wanted.min(usize::try_from(room).unwrap_or(usize::MAX));
    if n < wanted {
        tracing::warn!(
            "serving at most {n} connections at once: the process may open {} files",
            lim.rlim_cur
        );
    }
    n
}

/// What one client can hold of the server.
#[derive(Clone, Copy)]
struct Limits {
    /// Connections served at once; the next ones wait in the listen
    /// backlog until one closes.
    connections: usize,
    /// For a TLS handshake, for each request's headers, and idle between
    /// requests: past it the connection is closed, so connections that
    /// send nothing (or a byte a minute) cannot keep the places.
    header_timeout: std::time::Duration,
    /// Connections one address may hold at once: one host cannot take
    /// every place (agents open a few each).
    per_address: usize,
}

/// The connections each client address holds.
type PerAddress = Arc<std::sync::Mutex<HashMap<std::net::IpAddr, usize>>>;

/// One of an address's places, given back when its connection ends.
struct AddressPlace {
    held: PerAddress,
    ip: std::net::IpAddr,
}

impl AddressPlace {
    /// A place for `ip`, or None when it holds `most` already.
    fn take(held: &PerAddress, ip: std::net::IpAddr, most: usize) -> Option<AddressPlace> {
        let mut map = held.lock().unwrap_or_else(|p| p.into_inner());
        let n = map.entry(ip).or_insert(0);
        if *n >= most {
            return None;
        }
        *n += 1;
        Some(AddressPlace {
            held: held.clone(),
            ip,
        })
    }
}

impl Drop for AddressPlace {
    fn drop(&mut self) {
        let mut map = self.held.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = map.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.ip);
            }
        }
    }
}

/// Accepts connections up to the limit and serves each on a task of its
/// own. On a stop signal it accepts no more, asks every connection to
/// finish the request it is in, and returns once they are all closed, or
/// after ten seconds (an open event stream would otherwise hold the stop
/// until systemd kills).
async fn accept_loop(
    app: Router,
    listener: tokio::net::TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    limits: Limits,
) -> Result<()> {
    let places = Arc::new(tokio::sync::Semaphore::new(limits.connections));
    let per_address: PerAddress = Arc::default();
    let (stopping, stop_seen) = tokio::sync::watch::channel(false);
    let stop = shutdown();
    tokio::pin!(stop);
    loop {
        let place = tokio::select! {
            p = places.clone().acquire_owned() => p?,
            _ = &mut stop => break,
        };
        let (tcp, peer) = tokio::select! {
            a = listener.accept() => match a {
                Ok(accepted) => accepted,
                // Out of descriptors, or a connection reset before it was
                // taken: the next one may do.
                Err(e) => {
                    tracing::warn!("accepting a connection: {e}");
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                    continue;
                }
            },
            _ = &mut stop => break,
        };
        let Some(address_place) = AddressPlace::take(&per_address, peer.ip(), limits.per_address)
        else {
            tracing::debug!("{}: too many connections from this address", peer.ip());
            // Said if it can be said at once (plain HTTP), then closed.
            let _ = tcp.try_write(
                b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
            );
            continue;
        };
        let app = app.clone();
        let tls = tls.clone();
        let mut stop_seen = stop_seen.clone();
        tokio::spawn(async move {
            let _place = (place, address_place);
            let svc = hyper_util::service::TowerToHyperService::new(app);
            let mut http = hyper::server::conn::http1::Builder::new();
            http.timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(limits.header_timeout);
            let io: Box<dyn Io> = match tls {
                Some(acceptor) => {
                    match tokio::time::timeout(limits.header_timeout, acceptor.accept(tcp)).await {
                        Ok(Ok(tls)) => Box::new(tls),
                        _ => return,
                    }
                }
                None => Box::new(tcp),
            };
            let conn = http.serve_connection(hyper_util::rt::TokioIo::new(io), svc);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => return,
                _ = stop_seen.changed() => {}
            }
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        });
    }
    let _ = stopping.send(true);
    // Every place back means every connection closed.
    let all = u32::try_from(limits.connections).unwrap_or(u32::MAX);
    let _ =
        tokio::time::timeout(std::time::Duration::from_secs(10), places.acquire_many(all)).await;
    Ok(())
}

/// A connection's byte stream, plain or TLS.
trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Io for T {}

/// Ctrl-C, or SIGTERM (what systemd and `kill` send): the server stops
/// taking requests and exits 0 once the requests in flight have finished
/// (ten seconds at most).
async fn shutdown() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}

fn tls_acceptor(cert: &Path, key: &Path) -> Result<tokio_rustls::TlsAcceptor> {
    use tokio_rustls::rustls;
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer> = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("reading certificate {}", cert.display()))?
        .collect::<std::result::Result<_, _>>()
        .with_context(|| format!("reading certificate {}", cert.display()))?;
    let key = PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("reading key {}", key.display()))?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .context("the TLS certificate and key do not fit together")?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// Writes a small state file atomically (temp, fsync, rename).
pub fn write_atomic(path: &Path, data: &[u8], mode: u32) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension(format!("tmp-{}", random_hex(4)));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .with_context(|| format!("writing {}", tmp.display()))?;
    f.write_all(data)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    if let Some(d) = path.parent() {
        std::fs::File::open(d)?.sync_all()?;
    }
    Ok(())
}

/// An exclusive lock on `<file>.lock` between processes (the server and
/// the command line both write tokens and the audit log).
pub struct FileLock {
    _held: std::fs::File,
}

impl FileLock {
    pub fn take(of: &Path) -> Result<FileLock> {
        use std::os::fd::AsRawFd;
        let p = of.with_extension("lock");
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&p)
            .with_context(|| format!("opening {}", p.display()))?;
        // SAFETY: flock on a descriptor we own.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(std::io::Error::last_os_error())
                .context(format!("locking {}", p.display()));
        }
        Ok(FileLock { _held: f })
    }
}

/// A body of bytes as a response with a content type.
pub fn bytes_response(content_type: &'static str, body: Vec<u8>) -> Response {
    let mut r = Response::new(Body::from(body));
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}
