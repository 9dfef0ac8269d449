//! The web console: HTML rendered here, charts as SVG rendered here, and
//! one small hand-written script that starts jobs and shows their events
//! as they arrive (EventSource). No build step, no framework.
//!
//! Sign in with an operator or admin token (the form, or `?token=` in
//! any URL); either opens a session cookie.

use crate::tokens::Role;
use crate::{ApiError, Caller, Shared, blocking};
use axum::Form;
use axum::Router;
use axum::extract::{FromRequestParts, Path, State};
use axum::http::{HeaderValue, StatusCode, header, request::Parts};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::get;
use serde::Deserialize;
use serde_json::Value;

pub fn routes() -> Router<Shared> {
    Router::new()
        .route("/", get(home))
        .route("/login", get(login_form).post(login))
        .route("/logout", get(logout))
        .route("/sources/{name}", get(source_page))
        .route("/snapshots/{spec}", get(snapshot_page))
        .route("/snapshots/{spec}/diff", get(diff_page))
        .route("/recover/{name}", get(recover_page))
        .route("/audit", get(audit_page))
        .route("/static/console.js", get(script))
}

/// A console page's caller; anyone else is sent to the sign-in form.
pub struct Viewer(pub Caller);

impl<S: Send + Sync> FromRequestParts<S> for Viewer {
    type Rejection = Response;
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Response> {
        match parts.extensions.get::<Caller>() {
            Some(c) if c.0.role >= Role::Operator => Ok(Viewer(c.clone())),
            Some(_) => Err((
                StatusCode::FORBIDDEN,
                page(
                    "Not allowed",
                    "<p>The console needs an operator or admin token.</p>",
                ),
            )
                .into_response()),
            None => Err(Redirect::to("/login").into_response()),
        }
    }
}

pub fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

/// Path segment escaping for links (names and snapshot specs).
fn seg(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~@".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:0;color:#222;background:#f6f6f4}\
header{background:#27343f;color:#fff;padding:.6em 1.2em;display:flex;gap:1.5em;align-items:center}\
header a{color:#dfe8ee;text-decoration:none}main{padding:1em 1.5em;max-width:1100px}\
table{border-collapse:collapse;width:100%;background:#fff}td,th{border-bottom:1px solid #ddd;padding:.35em .6em;text-align:left;font-size:.92em}\
.badge{display:inline-block;padding:.1em .55em;border-radius:.8em;color:#fff;font-size:.85em}\
.clean{background:#3c8d5a}.suspicious,.warning{background:#e09b22}.compromised,.failed{background:#c8322b}.none{background:#999}\
#events li{margin:.2em 0}.finding{color:#a32}button{padding:.35em .9em;cursor:pointer}svg{max-width:100%;height:auto;background:#fff}\
code{font-size:.9em}";

/// An error on a console page: the page layout saying what went wrong,
/// with the error's status (a person reads it, not a script).
pub struct PageError(ApiError);

impl From<ApiError> for PageError {
    fn from(e: ApiError) -> Self {
        PageError(e)
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        let title = self.0.status.canonical_reason().unwrap_or("Error");
        let body = format!(
            "<p>{}</p><p><a href=\"/\">Back to the sources</a></p>",
            esc(&self.0.message)
        );
        (self.0.status, page(title, &body)).into_response()
    }
}

pub fn page(title: &str, body: &str) -> Html<String> {
    Html(format!(
        "<!doctype html><html><head><meta charset=utf-8><title>{t} · Cairn</title>\
<style>{STYLE}</style><script src=\"/static/console.js\" defer></script></head><body>\
<header><strong>Cairn</strong><a href=\"/\">Sources</a><a href=\"/audit\">Audit log</a>\
<a href=\"/logout\">Sign out</a></header><main><h1>{t}</h1>{body}</main></body></html>",
        t = esc(title)
    ))
}

fn badge(v: Option<&str>) -> String {
    match v {
        Some(v) => format!("<span class=\"badge {c}\">{c}</span>", c = esc(v)),
        None => "<span class=\"badge none\">not scanned</span>".into(),
    }
}

fn s<'a>(v: &'a Value, k: &str) -> &'a str {
    v.get(k).and_then(Value::as_str).unwrap_or("")
}

fn short_time(v: &Value) -> String {
    v.as_str()
        .map(|t| t.replace('T', " ").chars().take(19).collect())
        .unwrap_or_default()
}

async fn login_form() -> Html<String> {
    page(
        "Sign in",
        "<form method=post action=/login><p>Operator or admin token:</p>\
<input name=token type=password size=60 autofocus> <button type=submit>Sign in</button></form>",
    )
}

#[derive(Deserialize)]
struct LoginForm {
    token: String,
}

async fn login(State(st): State<Shared>, Form(f): Form<LoginForm>) -> Response {
    match st.tokens.check(f.token.trim()) {
        Some(rec) if rec.role >= Role::Operator => {
            let sid = st.new_session(&rec.id);
            st.audit(&rec, "console sign-in", "", "ok");
            let mut r = Redirect::to("/").into_response();
            if let Ok(v) = HeaderValue::from_str(&st.cookie(&sid)) {
                r.headers_mut().append(header::SET_COOKIE, v);
            }
            r
        }
        _ => (
            StatusCode::UNAUTHORIZED,
            page(
                "Sign in",
                "<p class=finding>That token is not a valid operator or admin token.</p>\
<form method=post action=/login><input name=token type=password size=60> <button>Sign in</button></form>",
            ),
        )
            .into_response(),
    }
}

async fn logout(State(st): State<Shared>, headers: axum::http::HeaderMap) -> Response {
    // The session ends here, not only in this browser.
    if let Some(sid) = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|c| c.trim().strip_prefix("cairn_session="))
    {
        st.end_session(sid);
    }
    let mut r = Redirect::to("/login").into_response();
    r.headers_mut().append(
        header::SET_COOKIE,
        HeaderValue::from_static("cairn_session=; Max-Age=0; Path=/"),
    );
    r
}

async fn home(State(st): State<Shared>, _v: Viewer) -> Result<Html<String>, PageError> {
    let rows = blocking(move || crate::api::sources_overview(&st)).await?;
    let mut body = String::from(
        "<table><tr><th>Source</th><th>Kind</th><th>Snapshots</th><th>Latest</th>\
<th>Verdict</th><th>Scan</th><th>Last clean point</th><th></th></tr>",
    );
    for r in &rows {
        let name = s(r, "name");
        let latest = &r["latest"];
        let clean = match r.get("last_clean") {
            Some(c) if !c.is_null() => format!(
                "<a href=\"/snapshots/{}\">{}</a> {}",
                seg(&format!("{name}@{}", s(c, "id"))),
                esc(&s(c, "id")[..8.min(s(c, "id").len())]),
                short_time(&c["time"])
            ),
            _ => "none".into(),
        };
        body.push_str(&format!(
            "<tr><td><a href=\"/sources/{l}\">{n}</a></td><td>{k}</td><td>{c}</td><td>{t}</td><td>{v}</td><td>{sc}</td><td>{clean}</td>\
<td><a href=\"/recover/{l}\">Recover…</a></td></tr>",
            l = seg(name),
            n = esc(name),
            k = esc(r["kind"].as_str().unwrap_or("")),
            c = r["snapshots"],
            t = short_time(&latest["time"]),
            v = badge(latest["verdict"].as_str()),
            sc = badge(latest["scan"].as_str()),
        ));
    }
    body.push_str("</table>");
    if rows.is_empty() {
        body.push_str("<p>No snapshots yet: back up with <code>cairn backup SOURCE --name NAME --server URL --token AGENT_TOKEN</code>.</p>");
    }
    Ok(page("Protected sources", &body))
}

async fn source_page(
    State(st): State<Shared>,
    _v: Viewer,
    Path(name): Path<String>,
) -> Result<Html<String>, PageError> {
    let n = name.clone();
    let (t, svg) = blocking(move || {
        let t = cairn_scan::verified_timeline(&st.vault, &n)?;
        let svg = cairn_insight::svg::render(&t);
        Ok((crate::api::timeline_json(&st, &n)?, svg))
    })
    .await?;
    let mut body = format!(
        "<p><a href=\"/recover/{}\">Recover this source…</a></p>{svg}",
        seg(&name)
    );
    body.push_str(
        "<h2>Snapshots</h2><table><tr><th>Snapshot</th><th>Time</th><th>Changed</th>\
<th>Files +/~/−/→</th><th>Entropy</th><th>Score</th><th>Verdict</th><th>Scan</th></tr>",
    );
    for e in t["snapshots"].as_array().into_iter().flatten().rev() {
        let id = s(e, "id");
        let f = &e["files"];
        body.push_str(&format!(
            "<tr><td><a href=\"/snapshots/{l}\">{short}</a></td><td>{time}</td><td>{mb:.1} MiB</td>\
<td>{}/{}/{}/{}</td><td>{:.2}</td><td>{:.2}</td><td>{v}</td><td>{sc}</td></tr>",
            f["added"],
            f["modified"],
            f["deleted"],
            f["renamed"],
            e["entropy"].as_f64().unwrap_or(0.0),
            e["score"].as_f64().unwrap_or(0.0),
            l = seg(&format!("{name}@{id}")),
            short = esc(&id[..8.min(id.len())]),
            time = short_time(&e["time"]),
            mb = e["changed_bytes"].as_f64().unwrap_or(0.0) / 1048576.0,
            v = badge(e["verdict"].as_str()),
            sc = badge(e["scan"].as_str()),
        ));
    }
    body.push_str("</table>");
    Ok(page(&format!("Timeline of {name}"), &body))
}

fn events_panel(buttons: &str) -> String {
    format!(
        "<div>{buttons}</div><h2>Progress and findings</h2><p id=status></p><ul id=events></ul>"
    )
}

async fn snapshot_page(
    State(st): State<Shared>,
    _v: Viewer,
    Path(spec): Path<String>,
) -> Result<Html<String>, PageError> {
    let sp = spec.clone();
    let d = blocking(move || crate::api::snapshot_detail(&st, &sp)).await?;
    let snap = &d["snapshot"];
    let id = s(snap, "id");
    let name = s(snap, "name");
    let full = format!("{name}@{id}");
    let m = &snap["metrics"];
    let mut body = format!(
        "<p>Source <a href=\"/sources/{ln}\">{n}</a> · taken {t} · {size:.1} MiB · changed {ch:.1} MiB · new stored {nb:.1} MiB</p>",
        ln = seg(name),
        n = esc(name),
        t = short_time(&snap["time"]),
        size = m["logical_size"].as_f64().unwrap_or(0.0) / 1048576.0,
        ch = m["changed_bytes"].as_f64().unwrap_or(0.0) / 1048576.0,
        nb = m["new_bytes_stored"].as_f64().unwrap_or(0.0) / 1048576.0,
    );
    let ins = &d["insight"];
    if !ins.is_null() {
        let a = &ins["assessment"];
        body.push_str(&format!(
            "<h2>Change insight {}</h2><p>Score {:.2}. {}</p>",
            badge(a["verdict"].as_str()),
            a["score"].as_f64().unwrap_or(0.0),
            a["reasons"]
                .as_array()
                .map(|r| r
                    .iter()
                    .filter_map(Value::as_str)
                    .map(esc)
                    .collect::<Vec<_>>()
                    .join("; "))
                .unwrap_or_default()
        ));
        let f = &ins["signals"]["files"];
        if !f.is_null() {
            body.push_str(&format!(
                "<h3>Files since the previous snapshot</h3><p>{} added, {} modified, {} deleted, {} renamed.</p><table><tr><th>Path</th><th>Damage</th><th>Detail</th></tr>",
                f["added"], f["modified"], f["deleted"], f["renamed"]
            ));
            for x in f["findings"].as_array().into_iter().flatten().take(500) {
                body.push_str(&format!(
                    "<tr><td><code>{}</code></td><td>{}</td><td>{}</td></tr>",
                    esc(s(x, "path")),
                    esc(&x["damage"].to_string().replace('"', "")),
                    esc(s(x, "detail"))
                ));
            }
            body.push_str("</table>");
        } else if let Some(e) = ins["signals"]["fs_error"].as_str() {
            body.push_str(&format!("<p>Files could not be compared: {}</p>", esc(e)));
        }
    }
    let scan = &d["scan"];
    if !scan.is_null() {
        body.push_str(&format!(
            "<h2>Last scan {}</h2><ul>",
            badge(scan["verdict"].as_str())
        ));
        for h in scan["malware"].as_array().into_iter().flatten() {
            body.push_str(&format!(
                "<li class=finding>malware {} at <code>{}</code></li>",
                esc(s(h, "rule")),
                esc(s(h, "path"))
            ));
        }
        for p in scan["persistence"].as_array().into_iter().flatten() {
            body.push_str(&format!(
                "<li class=finding>{} <code>{}</code>: {}</li>",
                esc(s(p, "kind")),
                esc(s(p, "path")),
                esc(s(p, "detail"))
            ));
        }
        for v in scan["vulnerabilities"].as_array().into_iter().flatten() {
            body.push_str(&format!(
                "<li>{} {} {} ({})</li>",
                esc(s(v, "package")),
                esc(s(v, "installed")),
                esc(s(v, "id")),
                esc(s(v, "severity"))
            ));
        }
        body.push_str("</ul>");
    }
    body.push_str(&events_panel(&format!(
        "<button id=scan data-job=\"/api/v1/snapshots/{f}/scan\">Scan now</button> \
<a href=\"/snapshots/{f}/diff\">Full file diff</a> · <a href=\"/recover/{}\">Recover…</a>",
        seg(name),
        f = seg(&full),
    )));
    Ok(page(
        &format!("Snapshot {}", &full[..(name.len() + 9).min(full.len())]),
        &body,
    ))
}

async fn diff_page(
    State(st): State<Shared>,
    _v: Viewer,
    Path(spec): Path<String>,
) -> Result<Html<String>, PageError> {
    let sp = spec.clone();
    let d = blocking(move || crate::api::snapshot_diff(&st, &sp, None)).await?;
    let c = &d["counts"];
    let mut body = format!(
        "<p>From {} to {}: {} added, {} deleted, {} modified, {} renamed.</p>",
        esc(&s(&d, "old")[..8]),
        esc(&s(&d, "new")[..8]),
        c["added"],
        c["deleted"],
        c["modified"],
        c["renamed"]
    );
    let mut table = |title: &str, key: &str, row: &dyn Fn(&Value) -> String| {
        let list = d[key].as_array().cloned().unwrap_or_default();
        if list.is_empty() {
            return;
        }
        body.push_str(&format!("<h2>{title}</h2><table>"));
        for x in &list {
            body.push_str(&row(x));
        }
        body.push_str("</table>");
    };
    let mib = |v: &Value| format!("{:.1} KiB", v.as_f64().unwrap_or(0.0) / 1024.0);
    table("Modified", "modified", &|x| {
        format!(
            "<tr><td><code>{}</code></td><td>{} → {}</td></tr>",
            esc(s(x, "path")),
            mib(&x["old_size"]),
            mib(&x["new_size"])
        )
    });
    table("Renamed", "renamed", &|x| {
        format!(
            "<tr><td><code>{}</code> → <code>{}</code></td><td>{}</td></tr>",
            esc(s(x, "from")),
            esc(s(x, "to")),
            if x["modified"] == true {
                "content changed too"
            } else {
                ""
            }
        )
    });
    table("Added", "added", &|x| {
        format!(
            "<tr><td><code>{}</code></td><td>{}</td></tr>",
            esc(s(x, "path")),
            mib(&x["size"])
        )
    });
    table("Deleted", "deleted", &|x| {
        format!(
            "<tr><td><code>{}</code></td><td>{}</td></tr>",
            esc(s(x, "path")),
            mib(&x["size"])
        )
    });
    Ok(page(&format!("File diff of {spec}"), &body))
}

async fn recover_page(
    State(st): State<Shared>,
    _v: Viewer,
    Path(name): Path<String>,
) -> Result<Html<String>, PageError> {
    let n = name.clone();
    let t = blocking(move || crate::api::timeline_json(&st, &n)).await?;
    let mut body = String::from(
        "<p>Find the newest point that passes every check (insight, persistence, malware, vulnerabilities), \
or pick a point to scan or restore.</p>",
    );
    body.push_str(&events_panel(&format!(
        "<button id=findclean data-job=\"/api/v1/sources/{}/find-clean\">Find the clean point</button>",
        seg(&name)
    )));
    body.push_str("<h2>Points</h2><table><tr><th>Snapshot</th><th>Time</th><th>Verdict</th><th>Scan</th><th></th></tr>");
    for e in t["snapshots"].as_array().into_iter().flatten().rev() {
        let id = s(e, "id");
        let full = seg(&format!("{name}@{id}"));
        body.push_str(&format!(
            "<tr><td><a href=\"/snapshots/{full}\">{short}</a></td><td>{time}</td><td>{v}</td><td>{sc}</td>\
<td><button data-job=\"/api/v1/snapshots/{full}/scan\">Scan</button> \
<button data-job=\"/api/v1/snapshots/{full}/export\">Export (NBD)</button> \
<button data-job=\"/api/v1/snapshots/{full}/boot\">Boot check</button> \
<button data-job=\"/api/v1/snapshots/{full}/restore\" data-ask=\"Restore to which new file on the server?\">Restore…</button></td></tr>",
            short = esc(&id[..8.min(id.len())]),
            time = short_time(&e["time"]),
            v = badge(e["verdict"].as_str()),
            sc = badge(e["scan"].as_str()),
        ));
    }
    body.push_str("</table>");
    Ok(page(&format!("Recover {name}"), &body))
}

async fn audit_page(State(st): State<Shared>, _v: Viewer) -> Result<Html<String>, PageError> {
    let (entries, verdict) =
        blocking(move || Ok((st.audit.entries()?, st.audit.verify()?))).await?;
    let mut body = match verdict {
        Ok(n) => {
            format!("<p><span class=\"badge clean\">chain intact</span> {n} entries verified.</p>")
        }
        Err(b) => format!(
            "<p><span class=\"badge compromised\">chain broken</span> at line {}: {}</p>",
            b.line,
            esc(&b.reason)
        ),
    };
    body.push_str("<table><tr><th>#</th><th>Time</th><th>Token</th><th>Role</th><th>Action</th><th>Target</th><th>Outcome</th></tr>");
    for e in entries.iter().rev().take(1000) {
        body.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            e.seq,
            e.time.format("%Y-%m-%d %H:%M:%S"),
            esc(&e.actor),
            esc(&e.role),
            esc(&e.action),
            esc(&e.target),
            esc(&e.outcome)
        ));
    }
    body.push_str("</table>");
    Ok(page("Audit log", &body))
}

/// Starts the job a button names and lists its events as they arrive.
const SCRIPT: &str = r#"
function show(kind, data) {
  const li = document.createElement('li');
  let text = kind;
  if (kind === 'finding') { li.className = 'finding'; text = (data.kind || '') + ': ' + (data.text || ''); }
  else if (kind === 'stage') { text = 'stage ' + (data.stage || '') + (data.snapshot ? ' ' + data.snapshot.slice(0, 8) : ''); }
  else if (kind === 'progress') { text = 'scanned ' + Math.round(data.done / 1048576) + ' of ' + Math.round(data.total / 1048576) + ' MiB'; }
  else if (kind === 'tried') { text = 'tried ' + data.id.slice(0, 8) + ': ' + data.verdict; }
  else if (kind === 'done') {
    if (data.verdict) text = 'done: verdict ' + data.verdict + ' (' + data.malware + ' malware, ' + data.persistence + ' persistence, ' + data.vulnerabilities + ' vulnerabilities)';
    else if (data.result) text = 'done: ' + data.result + ' (' + data.reason + ', ' + Math.round(data.seconds) + ' s)';
    else if ('clean' in data) text = 'done: clean point ' + (data.clean ? data.clean.slice(0, 8) : 'none found') + ' after ' + data.tried.length + ' tried';
    else text = 'done: ' + JSON.stringify(data);
  }
  else if (kind === 'error') { li.className = 'finding'; text = 'error: ' + data.error; }
  li.textContent = text;
  li.dataset.kind = kind;
  document.getElementById('events').appendChild(li);
}
async function start(btn) {
  let body = '{}';
  if (btn.dataset.ask) {
    const to = prompt(btn.dataset.ask);
    if (!to) return;
    body = JSON.stringify({to: to});
  }
  const status = document.getElementById('status');
  document.getElementById('events').innerHTML = '';
  status.textContent = 'starting…';
  const r = await fetch(btn.dataset.job, {method: 'POST', body: body, headers: {'content-type': 'application/json'}, credentials: 'same-origin'});
  const j = await r.json();
  if (!r.ok) { status.textContent = 'refused: ' + j.error; return; }
  if (j.url) { status.textContent = 'serving read-only at ' + j.url + ' (qemu: -drive file=' + j.url + ')'; return; }
  status.textContent = 'job ' + j.job + ' running';
  const es = new EventSource(j.events);
  for (const k of ['stage', 'finding', 'progress', 'tried']) {
    es.addEventListener(k, e => show(k, JSON.parse(e.data)));
  }
  for (const k of ['done', 'error']) {
    es.addEventListener(k, e => { show(k, JSON.parse(e.data)); status.textContent = 'job ' + j.job + ' ' + k; es.close(); });
  }
}
document.addEventListener('click', e => {
  const b = e.target.closest('button[data-job]');
  if (b) { e.preventDefault(); start(b); }
});
"#;

async fn script() -> Response {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        SCRIPT,
    )
        .into_response()
}
