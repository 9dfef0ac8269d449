//! The object protocol: what `cairn backup --server` speaks. A client's
//! vault sits on [`cairn_vault::remote::RemoteBackend`]; this side
//! decides, per role and per object, what is allowed, and checks every
//! object before it is stored, because a stored object can never be
//! taken back:
//!
//! - a pack index must decrypt and describe a stored pack;
//! - a map (disk map or tree) must be stored under its content hash;
//! - a manifest must decrypt, name itself, belong to one of the agent's
//!   sources, and reference only content and chunks the vault has.
//!
//! Writes are put-if-absent: the same bytes again are accepted (a resumed
//! upload), different bytes under an existing name are refused. Nothing
//! is deleted through this API; prune does that. A body is stored only
//! once it has fully arrived, so a client that disconnects mid-upload
//! leaves nothing behind.

use crate::tokens::{Role, TokenRecord};
use crate::{ApiError, Caller, Shared, blocking, bytes_response};
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use cairn_vault::{ChunkId, SourceKind};
use serde::Deserialize;
use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Largest object accepted (a pack is tens of MiB).
pub const MAX_UPLOAD: usize = 512 << 20;
/// Chunk ids per negotiation request.
const MAX_OFFERED: usize = 65536;
/// An agent that sent nothing for this long has given up its claims.
const CLAIM_IDLE: Duration = Duration::from_secs(60);
/// How long a manifest waits for chunks another live agent is sending
/// (it holds the vault lock meanwhile, so no prune runs).
const COMMIT_WAIT: Duration = Duration::from_secs(180);
/// Most chunk claims held at once: past them, chunks are handed out
/// unclaimed (two agents may then send one chunk twice, which costs only
/// bandwidth), so claims cannot fill the server's memory.
const MAX_CLAIMS: usize = 1_000_000;

/// Chunks an agent was told to upload. Agents backing up the same new
/// data at the same time then send it once: the first to offer a chunk
/// claims it, the others are told the vault has it, and their manifests
/// wait (while the claimer is alive) until its index arrives. A claimer
/// that goes quiet loses its claims, and the next offer claims anew.
#[derive(Default)]
pub struct Claims {
    inner: Mutex<ClaimState>,
}

#[derive(Default)]
struct ClaimState {
    owner: HashMap<ChunkId, String>,
    /// Token id → when it last sent anything.
    seen: HashMap<String, Instant>,
    /// Chunks taken over from an agent that claimed them and did not send
    /// them, with the agents that may not claim them again: one that
    /// claims chunks it expects another host to send, over and over, would
    /// otherwise win them back each time that host is idle between
    /// backups, and fail its every backup, not just one.
    forfeited: HashMap<ChunkId, HashSet<String>>,
}

impl ClaimState {
    fn alive(&self, token: &str) -> bool {
        self.seen
            .get(token)
            .is_some_and(|t| t.elapsed() < CLAIM_IDLE)
    }
}

impl Claims {
    pub fn touch(&self, token: &str) {
        self.inner
            .lock()
            .unwrap()
            .seen
            .insert(token.to_string(), Instant::now());
    }

    /// Of chunks the vault lacks, those `token` should send (the rest a
    /// live agent is sending already).
    fn claim(&self, token: &str, lacking: Vec<ChunkId>) -> Vec<ChunkId> {
        let mut g = self.inner.lock().unwrap();
        g.seen.insert(token.to_string(), Instant::now());
        if g.owner.len() > MAX_CLAIMS {
            // Claims of agents that went away: forget them.
            let dead: HashSet<String> = g.seen.keys().filter(|t| !g.alive(t)).cloned().collect();
            g.owner.retain(|_, t| !dead.contains(t));
        }
        if g.forfeited.len() >= MAX_CLAIMS {
            // A forfeit matters only while someone holds the chunk.
            let ClaimState {
                owner, forfeited, ..
            } = &mut *g;
            forfeited.retain(|id, _| owner.contains_key(id));
        }
        let mut out = Vec::with_capacity(lacking.len());
        for id in lacking {
            let theirs = g.owner.get(&id).is_some_and(|o| o != token && g.alive(o));
            if !theirs && g.forfeited.get(&id).is_some_and(|f| f.contains(token)) {
                // It may send it, but holds no one up with it.
                out.push(id);
                continue;
            }
            if !theirs {
                if g.owner.len() < MAX_CLAIMS || g.owner.contains_key(&id) {
                    g.owner.insert(id, token.to_string());
                }
                out.push(id);
            }
        }
        out
    }

    /// Chunks `token` waited for in vain: another agent claimed them and
    /// did not send them (gone, or holding them back on purpose). They are
    /// `token`'s to send now, so its next backup is told to.
    fn take_over(&self, token: &str, ids: &[ChunkId]) {
        let mut g = self.inner.lock().unwrap();
        for id in ids {
            // One that forfeited a chunk does not win it back this way
            // either (citing it in a manifest while its owner is idle).
            if g.forfeited.get(id).is_some_and(|f| f.contains(token)) {
                continue;
            }
            let Some(o) = g.owner.insert(*id, token.to_string()) else {
                g.owner.remove(id);
                continue;
            };
            if o != token && (g.forfeited.len() < MAX_CLAIMS || g.forfeited.contains_key(id)) {
                g.forfeited.entry(*id).or_default().insert(o);
            }
        }
    }

    fn release(&self, ids: impl Iterator<Item = ChunkId>) {
        let mut g = self.inner.lock().unwrap();
        for id in ids {
            g.owner.remove(&id);
            g.forfeited.remove(&id);
        }
    }

    /// Whether a live agent other than `token` is sending any of `ids`.
    fn pending_elsewhere(&self, token: &str, ids: &[ChunkId]) -> bool {
        let g = self.inner.lock().unwrap();
        ids.iter()
            .any(|id| g.owner.get(id).is_some_and(|o| o != token && g.alive(o)))
    }
}

pub fn routes() -> Router<Shared> {
    // Only object uploads and chunk-id lists are large; every other body
    // is held to the router's small limit.
    let large = || axum::extract::DefaultBodyLimit::max(MAX_UPLOAD);
    Router::new()
        .route(
            "/api/v1/objects/{*name}",
            get(get_object)
                .head(head_object)
                .put(put_object)
                .delete(delete_object)
                .layer(large()),
        )
        .route("/api/v1/list/{*dir}", get(list))
        .route(
            "/api/v1/chunks/missing",
            post(missing).layer(axum::extract::DefaultBodyLimit::max(MAX_OFFERED * 32)),
        )
}

/// Object names are relative paths of plain components.
fn check_name(name: &str) -> Result<(), ApiError> {
    let ok = !name.is_empty()
        && name.len() <= 256
        && name.split('/').all(|c| {
            !c.is_empty()
                && c != "."
                && c != ".."
                && c.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        });
    if ok {
        Ok(())
    } else {
        Err(ApiError::bad(format!("{name:?} is not an object name")))
    }
}

fn top(name: &str) -> &str {
    name.split('/').next().unwrap_or("")
}

/// Manifests and maps of the sources an agent may write.
fn own_objects(st: &Shared, who: &TokenRecord) -> Result<HashSet<String>, ApiError> {
    let (snaps, _) = st.vault.snapshots()?;
    Ok(snaps
        .into_iter()
        .filter(|s| who.may_write(&s.name))
        .flat_map(|s| [cairn_vault::Snapshot::object_name(&s.id), s.content])
        .collect())
}

/// Whether the caller may read `name` (or learn that it exists).
fn may_read(st: &Shared, who: &TokenRecord, name: &str, head: bool) -> Result<bool, ApiError> {
    if who.role > Role::Agent {
        return Ok(true);
    }
    Ok(match top(name) {
        "config" => name == "config",
        "keys" => true,
        // Existence only: a client writing a map asks first.
        "maps" if head => true,
        "snapshots" | "maps" => own_objects(st, who)?.contains(name),
        // The server's verdict on the agent's own snapshots (the record,
        // not the file list stored beside it), which `cairn backup
        // --server` waits for to warn like a local backup does.
        "insight" => {
            let id = name.rsplit('/').next().unwrap_or("");
            !id.contains('.') && own_objects(st, who)?.contains(&format!("snapshots/{id}"))
        }
        _ => false,
    })
}

fn refuse_read(name: &str) -> ApiError {
    ApiError::forbidden(format!(
        "an agent token cannot read {name}: agents may only add to the vault"
    ))
}

#[derive(Deserialize)]
struct Range {
    offset: Option<u64>,
    len: Option<usize>,
}

async fn get_object(
    State(st): State<Shared>,
    caller: Caller,
    Path(name): Path<String>,
    Query(range): Query<Range>,
) -> Result<Response, ApiError> {
    check_name(&name)?;
    blocking(move || {
        if !may_read(&st, &caller.0, &name, false)? {
            return Err(refuse_read(&name));
        }
        let b = st.vault.backend();
        let data = match (range.offset, range.len) {
            (Some(o), Some(l)) => {
                // A large length is checked before anything is allocated
                // for it (it is the client's to choose); chunk reads are
                // small and spared the extra call (a HEAD on S3).
                let past_end = |size: u64| {
                    ApiError::new(
                        StatusCode::RANGE_NOT_SATISFIABLE,
                        format!("{name} holds {size} bytes: {l} from {o} is past its end"),
                    )
                };
                if l > 16 << 20 {
                    let size = b.size(&name)?;
                    if o > size || l as u64 > size - o {
                        return Err(past_end(size));
                    }
                }
                match b.get_range(&name, o, l) {
                    Ok(data) => data,
                    // A small range is read without asking the size first:
                    // when the read comes up short, it is asked now.
                    Err(e) => match b.size(&name) {
                        Ok(size) if o.saturating_add(l as u64) > size => {
                            return Err(past_end(size));
                        }
                        _ => return Err(e.into()),
                    },
                }
            }
            (None, None) => b.get(&name)?,
            _ => return Err(ApiError::bad("a range needs both offset and len")),
        };
        Ok(bytes_response("application/octet-stream", data))
    })
    .await
}

async fn head_object(
    State(st): State<Shared>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    check_name(&name)?;
    blocking(move || {
        if !may_read(&st, &caller.0, &name, true)? {
            return Err(refuse_read(&name));
        }
        let b = st.vault.backend();
        if !b.exists(&name)? {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                format!("{name}: no such object"),
            ));
        }
        let size = b.size(&name)?;
        let modified = b
            .modified(&name)?
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let mut r = StatusCode::OK.into_response();
        let h = r.headers_mut();
        h.insert("x-cairn-size", HeaderValue::from(size));
        h.insert("x-cairn-modified", HeaderValue::from(modified));
        Ok(r)
    })
    .await
}

async fn list(
    State(st): State<Shared>,
    caller: Caller,
    Path(dir): Path<String>,
) -> Result<Response, ApiError> {
    check_name(&dir)?;
    blocking(move || {
        let who = &caller.0;
        let names = if who.role > Role::Agent || dir == "keys" {
            st.vault.backend().list(&dir)?
        } else if dir == "snapshots" {
            let own = own_objects(&st, who)?;
            let mut v: Vec<String> = own.into_iter().filter(|n| top(n) == "snapshots").collect();
            v.sort();
            v
        } else if dir == "index" || dir == "forgotten" {
            // The index is not shown to agents; they negotiate chunk ids.
            // Forget notes are the operators' business (the snapshots an
            // agent is shown are already without the forgotten ones), and
            // a refusal at every backup only filled the audit log.
            Vec::new()
        } else {
            return Err(refuse_read(&dir));
        };
        Ok(axum::Json(names).into_response())
    })
    .await
}

async fn delete_object(caller: Caller, Path(name): Path<String>) -> ApiError {
    if caller.0.role == Role::Agent {
        ApiError::forbidden(format!(
            "{name}: an agent token cannot delete anything; agents may only add to the vault"
        ))
    } else {
        ApiError::forbidden(format!(
            "{name}: objects are removed only by prune, after their retention (POST /api/v1/prune, admin)"
        ))
    }
}

async fn put_object(
    State(st): State<Shared>,
    caller: Caller,
    Path(name): Path<String>,
    hold: Option<axum::Extension<crate::bodies::BodyHold>>,
    body: Bytes,
) -> Result<Response, ApiError> {
    check_name(&name)?;
    if body.is_empty() {
        return Err(ApiError::bad(format!("{name}: empty object")));
    }
    let len = body.len() as u64;
    st.claims.touch(&caller.0.id);
    // Checking an index reads its pack whole: a few at a time.
    let verifying = if top(&name) == "index" {
        Some(
            st.verifying
                .clone()
                .acquire_owned()
                .await
                .expect("never closed"),
        )
    } else {
        None
    };
    let st2 = st.clone();
    let (created, new_snapshot) = blocking(move || {
        // Held until the work is done, even when the client hung up.
        let _held = (hold, verifying);
        store(&st2, &caller.0, &name, &body)
    })
    .await?;
    st.metrics.add(
        "cairn_upload_bytes_total",
        &[],
        if created { len as f64 } else { 0.0 },
    );
    if let Some((who, snap)) = new_snapshot {
        st.audit(
            &who,
            "snapshot created",
            &format!("{}@{}", snap.name, snap.id.short()),
            "ok",
        );
        st.metrics.add(
            "cairn_backups_total",
            &[("source", &snap.name), ("via", "agent")],
            1.0,
        );
        st.metrics.add(
            "cairn_backup_bytes_total",
            &[("source", &snap.name)],
            snap.metrics.logical_size as f64,
        );
        st.metrics.add(
            "cairn_backup_new_bytes_total",
            &[("source", &snap.name)],
            snap.metrics.new_bytes_stored as f64,
        );
        crate::scheduler::after_backup(st.clone(), snap.name.clone());
    }
    Ok(if created {
        StatusCode::CREATED.into_response()
    } else {
        StatusCode::OK.into_response()
    })
}

type Stored = (bool, Option<(TokenRecord, cairn_vault::Snapshot)>);

fn store(st: &Shared, who: &TokenRecord, name: &str, body: &[u8]) -> Result<Stored, ApiError> {
    let vault = &st.vault;
    let b = vault.backend();
    // Operators read, scan and restore through the API, where the server
    // itself writes what it finds: through the object protocol only
    // agents (their own sources) and admins add objects. An operator who
    // could store a scan record could call a compromised snapshot clean.
    if who.role == Role::Operator {
        return Err(ApiError::forbidden(format!(
            "{name}: an operator token cannot write objects"
        )));
    }
    // Where the caller may write at all is said before anything about
    // what exists there.
    let writable = match top(name) {
        "packs" | "index" | "maps" | "snapshots" => true,
        "insight" | "scan" => who.role > Role::Agent,
        _ => false,
    };
    if !writable {
        return Err(ApiError::forbidden(format!(
            "{name}: {} token cannot write there",
            match who.role {
                Role::Agent => "an agent",
                Role::Operator => "an operator",
                Role::Admin => "an admin",
            }
        )));
    }
    if top(name) == "maps" {
        // A map is its plaintext (sealing it again gives other bytes):
        // one that decrypts to what its address names is the same map,
        // stored or not, and the caller has shown it holds that map.
        let plain = vault
            .open_object(name, body)
            .map_err(|e| ApiError::bad(e.to_string()))?;
        let id = vault.hasher().object_id(&plain);
        if name != format!("maps/{}/{}", &id[..2], id) {
            return Err(ApiError::bad(format!(
                "{name} is not the content address of what was sent"
            )));
        }
        let exists = b.exists(name)?;
        if !exists {
            check_quota(st, who, body.len())?;
        }
        let created = !exists && b.put(name, body)?;
        if created {
            count_upload(st, who, body.len());
        }
        st.maps_shown.record(&who.id, name);
        return Ok((created, None));
    }
    if b.exists(name)? {
        // Put-if-absent: a resumed upload sends the same bytes again.
        if same_bytes(b, name, body)? {
            return Ok((false, None));
        }
        return Err(ApiError::forbidden(format!(
            "{name} exists with other content: objects are written once, never overwritten"
        )));
    }
    check_quota(st, who, body.len())?;
    let mut snapshot = None;
    let mut index = None;
    // Held from checking a manifest until it is stored: a prune (here or
    // from the command line) cannot run in between, and one that ran
    // before is seen (the index is reloaded when packs went away), so a
    // manifest is accepted only while every chunk it needs is stored.
    let mut _accepting = None;
    // A source's manifests are checked and stored one at a time: two
    // checked at once would both follow the same newest snapshot (see
    // `check_lineage`).
    let mut _manifest_turn = None;
    match top(name) {
        "packs" => {
            let id = name.rsplit('/').next().unwrap_or("");
            // The id first: a pack name of one character panicked here.
            if !cairn_vault::hash::is_object_id(id) || cairn_vault::index::pack_object(id) != name {
                return Err(ApiError::bad(format!("{name} is not a pack name")));
            }
        }
        "index" => {
            let idx = vault
                .parse_pack_index(name, body)
                .map_err(|e| ApiError::bad(e.to_string()))?;
            let pack = cairn_vault::index::pack_object(&idx.pack);
            let end = idx
                .entries
                .iter()
                .map(|e| e.offset as u64 + e.len as u64)
                .max()
                .unwrap_or(0);
            // The agent does not choose how long its data is kept either.
            check_retention(vault, "pack index", idx.retain_until)?;
            check_index_bounds(vault, name, &idx)?;
            if !b.exists(&pack)? || b.size(&pack)? < end {
                return Err(ApiError::new(
                    StatusCode::CONFLICT,
                    format!("{name} describes {pack}, which is not stored (send the pack first)"),
                ));
            }
            // Every host deduplicates against this index: each entry must
            // be the chunk its id names, or one host could put its own
            // bytes under the ids of other hosts' data.
            let bad = cairn_vault::verify::pack_mismatches(vault, &pack, &idx, &b.get(&pack)?);
            if let Some((id, why)) = bad.first() {
                return Err(ApiError::bad(format!(
                    "{name}: {} of its entries do not match {pack} (chunk {id}: {why})",
                    bad.len()
                )));
            }
            index = Some(idx);
        }
        "snapshots" => {
            let snap = vault
                .parse_snapshot(name, body)
                .map_err(|e| ApiError::bad(e.to_string()))?;
            // The name every command can address, and a terminal will
            // not act on (what `cairn backup` holds its own to).
            cairn_vault::snapshot::check_name(&snap.name).map_err(ApiError::bad)?;
            // Every command names snapshots by id prefix, and an id is a
            // file name under several folders.
            if !cairn_vault::hash::is_object_id(&snap.id.0) {
                return Err(ApiError::bad(format!(
                    "{name}: a snapshot id is 64 lowercase hex digits"
                )));
            }
            if !who.may_write(&snap.name) {
                return Err(ApiError::forbidden(format!(
                    "this agent token may back up {}, not {}",
                    who.sources.join(", "),
                    snap.name
                )));
            }
            check_times(vault, &snap)?;
            _manifest_turn = Some(SourceTurn::take(&snap.name)?);
            check_lineage(vault, &snap)?;
            check_cited_map(st, who, &snap)?;
            _accepting = Some(cairn_vault::lock::VaultLock::shared(vault.root())?);
            vault.refresh_index()?;
            check_complete(st, who, &snap)?;
            snapshot = Some(snap);
        }
        _ => {
            // insight or scan, by an admin (see `writable`).
            vault
                .open_object(name, body)
                .map_err(|e| ApiError::bad(e.to_string()))?;
        }
    }
    let created = b.put(name, body)?;
    if created {
        count_upload(st, who, body.len());
    }
    if let Some(idx) = index {
        vault.add_index(&idx);
        st.claims.release(idx.entries.iter().map(|e| e.id));
    }
    Ok((created, snapshot.map(|s| (who.clone(), s))))
}

/// Sources whose manifest is being checked and stored.
static IN_FLIGHT: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// A source's turn to store a manifest, from its lineage check until it
/// is stored (not a lock held while waiting: a manifest may wait minutes
/// for chunks another agent claimed, and no other source waits on it).
struct SourceTurn(String);

impl SourceTurn {
    fn take(source: &str) -> Result<SourceTurn, ApiError> {
        let mut busy = IN_FLIGHT.lock().unwrap_or_else(|e| e.into_inner());
        if busy.iter().any(|s| s == source) {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                format!(
                    "a snapshot of {source} is being stored right now: back it up again after it"
                ),
            ));
        }
        busy.push(source.to_string());
        Ok(SourceTurn(source.to_string()))
    }
}

impl Drop for SourceTurn {
    fn drop(&mut self) {
        let mut busy = IN_FLIGHT.lock().unwrap_or_else(|e| e.into_inner());
        busy.retain(|s| *s != self.0);
    }
}

/// How far an agent's clock may run ahead of the server's.
const CLOCK_SKEW_SECS: i64 = 300;

/// An agent's clock does not rule the vault: a manifest dated in the
/// future would be the newest for every keep policy (`--keep-last`, the
/// daily buckets…), so forgetting would keep it and drop real snapshots;
/// a retention shorter than the vault's would let its data go early.
fn check_times(vault: &cairn_vault::Vault, snap: &cairn_vault::Snapshot) -> Result<(), ApiError> {
    let now = chrono::Utc::now();
    let skew = chrono::Duration::seconds(CLOCK_SKEW_SECS);
    let latest = snap.time.max(snap.written);
    if latest > now + skew {
        return Err(ApiError::bad(format!(
            "snapshot {} is dated {}, in the future by this server's clock ({}): check the agent's clock or --time",
            snap.id.0,
            latest.to_rfc3339(),
            now.to_rfc3339()
        )));
    }
    check_retention(
        vault,
        &format!("snapshot {}", snap.id.0),
        snap.retain_until.timestamp(),
    )
}

/// Most an agent may ask beyond the vault's retention (its clock, a
/// backup that ran long): anything further would keep its data out of
/// every forget and prune.
const RETENTION_SLACK_SECS: i64 = 86_400;

/// A retain-until (Unix seconds) an agent sent must reach the vault's
/// retention from now, and not much beyond it.
fn check_retention(vault: &cairn_vault::Vault, what: &str, until: i64) -> Result<(), ApiError> {
    let retention = vault.config().retention_secs.min(i64::MAX as u64 / 4) as i64;
    let now = chrono::Utc::now().timestamp();
    let least = now + retention - CLOCK_SKEW_SECS;
    let most = now + retention + RETENTION_SLACK_SECS;
    if until > most {
        return Err(ApiError::bad(format!(
            "{what} would be retained until {}, past the vault's retention ({}): forget and prune could never remove it",
            when(until),
            when(most),
        )));
    }
    if until < least {
        return Err(ApiError::bad(format!(
            "{what} would be retained until {}, before the vault's retention ends ({})",
            when(until),
            when(least),
        )));
    }
    Ok(())
}

/// Unix seconds as a date, or as the number when no date is that far.
fn when(secs: i64) -> String {
    chrono::DateTime::from_timestamp(secs, 0).map_or_else(|| secs.to_string(), |t| t.to_rfc3339())
}

/// Whether stored object `name` holds exactly `body`, read a piece at a
/// time (a pack may be hundreds of MiB).
fn same_bytes(
    b: &dyn cairn_vault::backend::Backend,
    name: &str,
    body: &[u8],
) -> Result<bool, ApiError> {
    const PIECE: usize = 8 << 20;
    if b.size(name)? != body.len() as u64 {
        return Ok(false);
    }
    for (i, piece) in body.chunks(PIECE).enumerate() {
        if b.get_range(name, (i * PIECE) as u64, piece.len())? != piece {
            return Ok(false);
        }
    }
    Ok(true)
}

/// New bytes each agent token stored, over the last day, in minutes (the
/// server's memory: a restart forgets it), against
/// `agent_upload_per_day`. Kept only when a quota is set.
#[derive(Default)]
pub struct Uploads {
    inner: Mutex<HashMap<String, std::collections::VecDeque<(u64, u64)>>>,
}

/// Minutes in the window.
const DAY_MINUTES: u64 = 24 * 60;

fn minute_now() -> u64 {
    chrono::Utc::now().timestamp().max(0) as u64 / 60
}

impl Uploads {
    /// Bytes `token` stored in the last 24 hours.
    fn used(&self, token: &str) -> u64 {
        let now = minute_now();
        let mut g = self.inner.lock().unwrap();
        let Some(q) = g.get_mut(token) else { return 0 };
        while q.front().is_some_and(|(m, _)| m + DAY_MINUTES <= now) {
            q.pop_front();
        }
        q.iter().map(|(_, n)| n).sum()
    }

    fn add(&self, token: &str, bytes: u64) {
        let now = minute_now();
        let mut g = self.inner.lock().unwrap();
        let q = g.entry(token.to_string()).or_default();
        match q.back_mut() {
            Some((m, n)) if *m == now => *n += bytes,
            _ => q.push_back((now, bytes)),
        }
    }
}

fn count_upload(st: &Shared, who: &TokenRecord, len: usize) {
    if who.role == Role::Agent && st.config.agent_quota().is_some() {
        st.uploads.add(&who.id, len as u64);
    }
}

/// Refuses an agent's new object of `len` bytes past its daily quota.
fn check_quota(st: &Shared, who: &TokenRecord, len: usize) -> Result<(), ApiError> {
    let Some(quota) = st.config.agent_quota().filter(|_| who.role == Role::Agent) else {
        return Ok(());
    };
    let used = st.uploads.used(&who.id);
    if used + len as u64 <= quota {
        return Ok(());
    }
    use cairn_vault::units::bytes;
    Err(ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        format!(
            "this agent token stored {} in the last 24 hours and may store {} (agent_upload_per_day): ask an admin to raise it, or wait",
            bytes(used),
            bytes(quota)
        ),
    ))
}

/// Maps each agent has shown it holds (by sending them, new or not),
/// the newest few per token: an agent's manifest may cite only those, or
/// maps its own sources' snapshots cite already. A map is a source's
/// file names and chunk ids, and the agent may read what its snapshots
/// cite: citing a map it merely knew the name of would hand it another
/// host's tree.
#[derive(Default)]
pub struct MapsShown {
    inner: Mutex<HashMap<String, std::collections::VecDeque<String>>>,
}

/// Maps remembered per token (an agent sends one per backup, just before
/// its manifest).
const MAPS_SHOWN_PER_TOKEN: usize = 64;

impl MapsShown {
    fn record(&self, token: &str, map: &str) {
        let mut g = self.inner.lock().unwrap();
        let shown = g.entry(token.to_string()).or_default();
        if !shown.iter().any(|m| m == map) {
            if shown.len() >= MAPS_SHOWN_PER_TOKEN {
                shown.pop_front();
            }
            shown.push_back(map.to_string());
        }
    }

    fn has(&self, token: &str, map: &str) -> bool {
        self.inner
            .lock()
            .unwrap()
            .get(token)
            .is_some_and(|s| s.iter().any(|m| m == map))
    }
}

/// An agent's manifest cites a map it sent (see [`MapsShown`]) or one its
/// own sources' snapshots cite.
fn check_cited_map(
    st: &Shared,
    who: &TokenRecord,
    snap: &cairn_vault::Snapshot,
) -> Result<(), ApiError> {
    if who.role > Role::Agent
        || st.maps_shown.has(&who.id, &snap.content)
        || own_objects(st, who)?.contains(&snap.content)
    {
        return Ok(());
    }
    Err(ApiError::bad(format!(
        "snapshot {}: {} was not sent by this agent (send the map before the manifest; back up again if the server restarted in between)",
        snap.id.0, snap.content
    )))
}

/// An agent's pack index is bounded before a byte of it is decoded: each
/// chunk no larger than the vault makes them (a few bytes of zstd can
/// claim gigabytes of zeros), each listed once, and no more in all than a
/// pack of the vault's size could hold compressed 256 to 1.
fn check_index_bounds(
    vault: &cairn_vault::Vault,
    name: &str,
    idx: &cairn_vault::index::PackIndex,
) -> Result<(), ApiError> {
    let c = vault.config();
    let largest = c.cdc_max.max(c.disk_chunk_size) as u64;
    if let Some(e) = idx.entries.iter().find(|e| e.raw_len as u64 > largest) {
        return Err(ApiError::bad(format!(
            "{name}: chunk {} claims {} bytes, more than this vault's chunks hold ({largest})",
            e.id.hex(),
            e.raw_len
        )));
    }
    let total: u64 = idx.entries.iter().map(|e| e.raw_len as u64).sum();
    if total > c.pack_size as u64 * 256 {
        return Err(ApiError::bad(format!(
            "{name}: its chunks claim {total} bytes, more than any pack of this vault holds"
        )));
    }
    let mut ids = HashSet::with_capacity(idx.entries.len());
    if !idx.entries.iter().all(|e| ids.insert(e.id)) {
        return Err(ApiError::bad(format!("{name}: a chunk is listed twice")));
    }
    Ok(())
}

/// An agent's snapshot follows the newest snapshot of its own source
/// (none, for a source's first): a parent from another source would have
/// insight diff against (and report on) that source's files, and one
/// dated before the newest — or of another kind, or hung under an older
/// one — would let a compromised host slip a snapshot of its choosing in
/// before its attack, where the timeline, the walk back and their pins
/// would offer it as the clean point to restore. Derived snapshots
/// (`cairn commit`) are made on the server's side, not by agents.
fn check_lineage(vault: &cairn_vault::Vault, snap: &cairn_vault::Snapshot) -> Result<(), ApiError> {
    if snap.derived_from.is_some() {
        return Err(ApiError::bad(format!(
            "snapshot {}: an agent does not send derived snapshots",
            snap.id.0
        )));
    }
    if let Some(parent) = &snap.parent {
        let ok = cairn_vault::hash::is_object_id(&parent.0)
            && vault
                .read_snapshot(&cairn_vault::Snapshot::object_name(parent))
                .is_ok_and(|p| p.name == snap.name);
        if !ok {
            return Err(ApiError::bad(format!(
                "snapshot {}: its parent {} is not a snapshot of {}",
                snap.id.0, parent.0, snap.name
            )));
        }
    }
    let (all, _) = vault.snapshots()?;
    let Some(newest) = all
        .iter()
        .filter(|s| s.name == snap.name)
        .max_by_key(|s| s.time)
    else {
        return Ok(());
    };
    let short = newest.id.short();
    if snap.time <= newest.time {
        return Err(ApiError::bad(format!(
            "snapshot {} is dated {}, not after {}@{short} ({}): a source's snapshots are taken in time order",
            snap.id.0,
            snap.time.to_rfc3339(),
            snap.name,
            newest.time.to_rfc3339()
        )));
    }
    if snap.source.kind != newest.source.kind {
        return Err(ApiError::bad(format!(
            "snapshot {} is of a {:?} source, but {}'s snapshots are of a {:?} one: back it up under another name",
            snap.id.0, snap.source.kind, snap.name, newest.source.kind
        )));
    }
    if snap.parent.as_ref() != Some(&newest.id) {
        return Err(ApiError::bad(format!(
            "snapshot {} must follow {}@{short}, the newest snapshot of its source",
            snap.id.0, snap.name
        )));
    }
    Ok(())
}

/// A manifest is accepted only when every chunk it references is stored,
/// so an agent cannot leave a snapshot that restores with holes. Chunks
/// another live agent claimed are waited for.
fn check_complete(
    st: &Shared,
    who: &TokenRecord,
    snap: &cairn_vault::Snapshot,
) -> Result<(), ApiError> {
    let vault = &st.vault;
    if !vault.backend().exists(&snap.content)? {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!(
                "{} is not stored (send it before the manifest)",
                snap.content
            ),
        ));
    }
    // What the manifest cites was checked against its address when it
    // was stored, so an object that does not parse as the source's kind
    // of map is the client's mistake (or forgery), not the server's; an
    // object that cannot be read or opened stays a server error.
    let bytes = vault.read_content_of(snap)?;
    let cited = |reason: String| {
        ApiError::bad(format!(
            "{} is not a {} map: {reason}",
            snap.content,
            match snap.source.kind {
                SourceKind::Disk => "disk",
                SourceKind::Directory => "directory tree",
            }
        ))
    };
    let mut wanted: Vec<ChunkId> = match snap.source.kind {
        SourceKind::Disk => cairn_vault::diskmap::DiskMap::from_stored(&bytes, vault.hasher())
            .map_err(|r| cited(r.to_string()))?
            .chunks
            .into_iter()
            .flatten()
            .collect(),
        SourceKind::Directory => postcard::from_bytes::<cairn_vault::tree::Tree>(&bytes)
            .map_err(|e| cited(e.to_string()))?
            .entries
            .iter()
            .flat_map(|e| e.chunks.iter().map(|c| c.id))
            .collect(),
    };
    // On S3, what the snapshot reuses is kept locked as long as it (see
    // `Vault::lock_reused`): the agent cannot, the server does.
    let all = wanted.clone();
    let deadline = Instant::now() + COMMIT_WAIT;
    loop {
        wanted.retain(|id| !vault.has_chunk(id));
        if wanted.is_empty() {
            vault.lock_reused(all, &snap.content, snap.retain_until)?;
            return Ok(());
        }
        if Instant::now() > deadline || !st.claims.pending_elsewhere(&who.id, &wanted) {
            st.claims.take_over(&who.id, &wanted);
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                format!(
                    "the snapshot references {} chunks the vault does not have (back up again: only they are sent)",
                    wanted.len()
                ),
            ));
        }
        st.claims.touch(&who.id);
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Chunk negotiation: the body is chunk ids (32 bytes each); the answer
/// is those the vault lacks.
async fn missing(
    State(st): State<Shared>,
    caller: Caller,
    body: Bytes,
) -> Result<Response, ApiError> {
    if !body.len().is_multiple_of(32) || body.len() / 32 > MAX_OFFERED {
        return Err(ApiError::bad(format!(
            "send up to {MAX_OFFERED} chunk ids of 32 bytes each"
        )));
    }
    let offered = body.len() / 32;
    let lacking: Vec<ChunkId> = body
        .chunks_exact(32)
        .map(|c| ChunkId(c.try_into().expect("32 bytes")))
        .filter(|id| !st.vault.has_chunk(id))
        .collect();
    let out: Vec<u8> = st
        .claims
        .claim(&caller.0.id, lacking)
        .into_iter()
        .flat_map(|id| id.0)
        .collect();
    st.metrics
        .add("cairn_chunks_offered_total", &[], offered as f64);
    st.metrics
        .add("cairn_chunks_missing_total", &[], (out.len() / 32) as f64);
    Ok(bytes_response("application/octet-stream", out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_vault::snapshot::{Metrics, SourceInfo};
    use chrono::{Duration, Utc};

    /// A live agent that claimed a chunk and never sends it stalls the
    /// others' manifests once: the one that waited in vain takes the
    /// chunk over, and its next backup is told to send it.
    #[test]
    fn a_claim_held_back_is_taken_over_by_the_agent_that_waited() {
        let c = Claims::default();
        let x = ChunkId([7; 32]);
        assert_eq!(c.claim("holder", vec![x]), vec![x]);
        c.touch("holder");
        assert!(c.claim("waiter", vec![x]).is_empty(), "the holder sends it");
        assert!(c.pending_elsewhere("waiter", &[x]));
        c.take_over("waiter", &[x]);
        c.touch("holder");
        assert!(!c.pending_elsewhere("waiter", &[x]));
        assert_eq!(c.claim("waiter", vec![x]), vec![x]);
        assert!(c.claim("holder", vec![x]).is_empty());
        // The holder cannot win it back while the waiter is idle between
        // backups (it may send it, but no one waits for it).
        c.inner.lock().unwrap().seen.remove("waiter");
        assert_eq!(c.claim("holder", vec![x]), vec![x]);
        assert!(!c.pending_elsewhere("waiter", &[x]));
        assert_eq!(c.claim("waiter", vec![x]), vec![x]);
        // Nor by citing it in a manifest while the waiter is idle.
        c.take_over("holder", &[x]);
        assert!(!c.pending_elsewhere("waiter", &[x]));
        assert_eq!(
            c.inner.lock().unwrap().owner.get(&x).map(String::as_str),
            Some("waiter")
        );
        // Once it arrives, the slate is clean.
        c.release([x].into_iter());
        assert!(c.inner.lock().unwrap().forfeited.is_empty());
    }

    fn snapshot(
        time: chrono::DateTime<Utc>,
        retain_until: chrono::DateTime<Utc>,
    ) -> cairn_vault::Snapshot {
        cairn_vault::Snapshot {
            id: cairn_vault::SnapshotId("0".repeat(32)),
            name: "vm".into(),
            time,
            parent: None,
            source: SourceInfo {
                kind: SourceKind::Disk,
                format: "raw".into(),
                path: "/x".into(),
                host: "h".into(),
                root: None,
            },
            content: String::new(),
            metrics: Metrics::default(),
            tags: vec![],
            retain_until,
            written: time,
            cairn_version: "0".into(),
            derived_from: None,
        }
    }

    #[test]
    fn an_agents_clock_does_not_rule_the_vault() {
        let dir = tempfile::tempdir().unwrap();
        let opts = cairn_vault::InitOptions {
            retention_secs: 30 * 86_400,
            ..Default::default()
        };
        let vault = cairn_vault::Vault::init(&dir.path().join("v"), b"pw", &opts).unwrap();
        let now = Utc::now();
        let keep = now + Duration::days(30);
        assert!(check_times(&vault, &snapshot(now, keep)).is_ok());
        assert!(check_times(&vault, &snapshot(now - Duration::days(400), keep)).is_ok());
        let ahead = check_times(
            &vault,
            &snapshot(now + Duration::days(365), keep + Duration::days(365)),
        );
        assert!(ahead.unwrap_err().message.contains("in the future"));
        let short = check_times(&vault, &snapshot(now, now + Duration::days(1)));
        assert!(short.unwrap_err().message.contains("retention"));
        // A pack index's retain-until too.
        assert!(check_retention(&vault, "pack index", keep.timestamp()).is_ok());
        assert!(check_retention(&vault, "pack index", 0).is_err());
    }
}
