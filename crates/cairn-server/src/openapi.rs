//! The OpenAPI 3.1 description served at `/openapi.json`, built from one
//! table of every endpoint (method, path, role, summary).

use serde_json::{Map, Value, json};

/// method, path, role needed (`none`: no token), summary, request body.
pub const ENDPOINTS: &[(&str, &str, &str, &str, Option<&str>)] = &[
    ("get", "/healthz", "none", "Liveness: answers ok.", None),
    (
        "get",
        "/metrics",
        "operator",
        "Prometheus metrics (cairn_… series); an operator token, since they name the sources and their verdicts.",
        None,
    ),
    ("get", "/openapi.json", "none", "This document.", None),
    (
        "get",
        "/api/v1/objects/{name}",
        "agent",
        "Read an object (agents: config, keys and their own sources' manifests and maps). Query offset and len read a range.",
        None,
    ),
    (
        "head",
        "/api/v1/objects/{name}",
        "agent",
        "Whether an object exists; x-cairn-size and x-cairn-modified headers.",
        None,
    ),
    (
        "put",
        "/api/v1/objects/{name}",
        "agent",
        "Store an object once (201 created, 200 the same bytes were there, 403 other bytes are there). Packs, indexes, maps and manifests are checked first.",
        Some("application/octet-stream"),
    ),
    (
        "delete",
        "/api/v1/objects/{name}",
        "agent",
        "Always refused (403): objects are removed only by prune.",
        None,
    ),
    (
        "get",
        "/api/v1/list/{dir}",
        "agent",
        "Object names under a folder (agents: keys and their own manifests; the index is never shown).",
        None,
    ),
    (
        "post",
        "/api/v1/chunks/missing",
        "agent",
        "Chunk negotiation: body is 32-byte chunk ids, the answer those the vault lacks.",
        Some("application/octet-stream"),
    ),
    (
        "get",
        "/api/v1/sources",
        "operator",
        "Every source with its latest verdicts and last clean point.",
        None,
    ),
    (
        "get",
        "/api/v1/sources/{name}/timeline",
        "operator",
        "Change rate, entropy, file signals, score, verdict and scan verdict of every snapshot, and the clean point.",
        None,
    ),
    (
        "get",
        "/api/v1/sources/{name}/timeline.svg",
        "operator",
        "The timeline as an SVG chart.",
        None,
    ),
    (
        "post",
        "/api/v1/sources/{name}/find-clean",
        "operator",
        "Start the walk back to the newest point that passes every check (a job).",
        Some("application/json"),
    ),
    (
        "get",
        "/api/v1/snapshots/{spec}",
        "operator",
        "A snapshot (NAME@ID, NAME@latest, NAME@-N): manifest, insight record, newest scan.",
        None,
    ),
    (
        "post",
        "/api/v1/snapshots/{spec}/scan",
        "operator",
        "Start a scan (a job): persistence, malware, vulnerabilities.",
        None,
    ),
    (
        "post",
        "/api/v1/snapshots/{spec}/restore",
        "operator",
        "Start a restore of a disk snapshot to a new file in the config's restore_dir (a job); body {\"to\": FILE NAME}.",
        Some("application/json"),
    ),
    (
        "post",
        "/api/v1/snapshots/{spec}/export",
        "operator",
        "Serve a disk snapshot read-only over NBD (QEMU boots the URL) until stopped or for ?seconds= (default 8 hours, at most 7 days; 16 exports at once); answers {id, url, expires}.",
        None,
    ),
    (
        "get",
        "/api/v1/exports",
        "operator",
        "Running exports, their connected clients and when each expires.",
        None,
    ),
    (
        "delete",
        "/api/v1/exports/{id}",
        "operator",
        "Stop an export.",
        None,
    ),
    (
        "get",
        "/api/v1/snapshots/{spec}/diff",
        "operator",
        "Files added, deleted, modified and renamed since the parent (or ?against=SPEC); lists capped at 5000 entries each.",
        None,
    ),
    (
        "get",
        "/snapshots/{spec}/diff",
        "operator",
        "Console: the file diff of a snapshot.",
        None,
    ),
    ("get", "/api/v1/jobs", "operator", "Recent jobs.", None),
    (
        "get",
        "/api/v1/jobs/{id}",
        "operator",
        "A job and its events.",
        None,
    ),
    (
        "get",
        "/api/v1/jobs/{id}/events",
        "operator",
        "A job's events as server-sent events (stage, finding, progress, tried, done, error), from the start.",
        None,
    ),
    (
        "post",
        "/api/v1/forget",
        "admin",
        "Forget snapshots a keep policy does not keep; body {names, keep_last, keep_within (e.g. 30d, 6mo), keep_hourly, keep_daily, keep_weekly, keep_monthly, keep_yearly, dry_run}; unknown keys are refused.",
        Some("application/json"),
    ),
    (
        "post",
        "/api/v1/prune",
        "admin",
        "Delete data nothing references once its retention has ended; body {dry_run}.",
        Some("application/json"),
    ),
    (
        "post",
        "/api/v1/pins/{spec}",
        "admin",
        "Pin a snapshot (never forgotten).",
        None,
    ),
    (
        "delete",
        "/api/v1/pins/{spec}",
        "admin",
        "Unpin a snapshot.",
        None,
    ),
    (
        "get",
        "/api/v1/tokens",
        "admin",
        "Tokens (never their secrets).",
        None,
    ),
    (
        "post",
        "/api/v1/tokens",
        "admin",
        "Create a token; body {role, sources, label}; the answer holds the secret, shown once.",
        Some("application/json"),
    ),
    (
        "delete",
        "/api/v1/tokens/{id}",
        "admin",
        "Revoke a token.",
        None,
    ),
    ("get", "/api/v1/audit", "operator", "The audit log.", None),
    (
        "get",
        "/api/v1/audit/verify",
        "operator",
        "Check the audit log's hash chain.",
        None,
    ),
    ("get", "/", "operator", "Console: sources.", None),
    (
        "get",
        "/login",
        "none",
        "Console: sign-in form (post a token to sign in).",
        None,
    ),
    (
        "get",
        "/sources/{name}",
        "operator",
        "Console: a source's timeline.",
        None,
    ),
    (
        "get",
        "/snapshots/{spec}",
        "operator",
        "Console: a snapshot's file changes and findings.",
        None,
    ),
    (
        "get",
        "/recover/{name}",
        "operator",
        "Console: recovery workflow.",
        None,
    ),
    ("get", "/audit", "operator", "Console: the audit log.", None),
];

pub fn document() -> Value {
    let mut paths: Map<String, Value> = Map::new();
    for (method, path, role, summary, body) in ENDPOINTS {
        let params: Vec<Value> = path
            .split('/')
            .filter_map(|s| s.strip_prefix('{')?.strip_suffix('}'))
            .map(|p| json!({"name": p, "in": "path", "required": true, "schema": {"type": "string"}}))
            .collect();
        let mut op = json!({
            "summary": summary,
            "x-cairn-role": role,
            "parameters": params,
            "responses": {
                "200": {"description": "OK"},
                "400": {"description": "Bad request", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}},
                "401": {"description": "No valid token"},
                "403": {"description": "The token's role may not do this (audited)"},
                "404": {"description": "Not found"}
            }
        });
        if *role != "none" {
            op["security"] = json!([{"bearer": []}]);
        }
        if let Some(ct) = body {
            op["requestBody"] = json!({"content": {*ct: {}}});
        }
        paths
            .entry(path.to_string())
            .or_insert_with(|| json!({}))
            .as_object_mut()
            .expect("object")
            .insert(method.to_string(), op);
    }
    json!({
        "openapi": "3.1.0",
        "info": {"title": "Cairn vault server", "version": env!("CARGO_PKG_VERSION")},
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {"Error": {"type": "object", "properties": {"error": {"type": "string"}}, "required": ["error"]}}
        }
    })
}
