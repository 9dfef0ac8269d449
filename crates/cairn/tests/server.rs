//! `cairn serve` with real HTTP on loopback: agents back up through it and
//! can do nothing else, operators cannot prune, every refusal is in the
//! audit log whose hash chain catches a tampered entry, an interrupted
//! upload leaves nothing half-written and resumes, the scheduler's
//! backup of an attacked disk fires the webhook, scans stream their
//! findings as server-sent events, TLS works with a private CA, and 20
//! agents backing up at once all complete.

mod common;
use common::*;
use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

const EICAR: &[u8] = br"X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*";

type Server = Running;

fn serve(env: &Env, extra: &[&str]) -> Server {
    let mut cmd = env.cmd();
    cmd.args(["serve", "--listen", "127.0.0.1:0"]).args(extra);
    let server = Running::start(&mut cmd);
    assert!(
        server.url.starts_with("http"),
        "serve printed {:?}",
        server.url
    );
    server
}

fn token(env: &Env, args: &[&str]) -> String {
    let mut a = vec!["token", "create"];
    a.extend_from_slice(args);
    env.ok(&a).lines().last().unwrap().to_string()
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into()
}

/// One request: status and body (JSON when it parses, else a string).
fn call(method: &str, url: &str, token: Option<&str>, body: &[u8]) -> (u16, Value) {
    let mut req = ureq::http::Request::builder().method(method).uri(url);
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let mut resp = agent().run(req.body(body.to_vec()).unwrap()).unwrap();
    let status = resp.status().as_u16();
    let mut text = String::new();
    if method != "HEAD" {
        resp.body_mut()
            .as_reader()
            .read_to_string(&mut text)
            .unwrap_or_default();
    }
    let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, v)
}

fn metric(url: &str, token: &str, series: &str) -> f64 {
    let (_, v) = call("GET", &format!("{url}/metrics"), Some(token), b"");
    v.as_str()
        .unwrap()
        .lines()
        .filter(|l| l.starts_with(series))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn remote_backup(
    env: &Env,
    server: &Server,
    token: &str,
    source: &Path,
    name: &str,
) -> std::process::Output {
    remote_backup_with(env, server, token, source, name, &[])
}

/// [`remote_backup`] with more arguments (`--time`, say).
fn remote_backup_with(
    env: &Env,
    server: &Server,
    token: &str,
    source: &Path,
    name: &str,
    extra: &[&str],
) -> std::process::Output {
    env.cmd()
        .env("CAIRN_CACHE_DIR", env.path("agent-cache"))
        .args([
            "backup",
            source.to_str().unwrap(),
            "--name",
            name,
            "--server",
            &server.url,
            "--token",
            token,
            "--json",
        ])
        .args(extra)
        .output()
        .unwrap()
}

/// A backup through the server that must succeed: its JSON.
fn remote_backup_ok(env: &Env, server: &Server, token: &str, source: &Path, name: &str) -> Value {
    let out = remote_backup(env, server, token, source, name);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The vault as an agent holding `token` sees it through the server.
fn remote_vault(url: &str, token: &str) -> cairn_vault::Vault {
    cairn_vault::Vault::open_at(
        &cairn_vault::Location::Server(cairn_vault::remote::ServerLocation {
            url: url.to_string(),
            token: token.to_string(),
        }),
        PASSWORD.as_bytes(),
    )
    .unwrap()
}

fn guest_disk(env: &Env, name: &str) -> std::path::PathBuf {
    let root = env.path(&format!("{name}-root"));
    populate(&root);
    let disk = env.path(&format!("{name}.img"));
    gpt_ext4_image(&disk, &root, 64);
    disk
}

#[test]
fn an_agent_can_only_add_an_operator_cannot_prune_and_the_audit_chain_catches_tampering() {
    let env = Env::new("0s", &[]);
    let admin = token(&env, &["--role", "admin"]);
    let operator = token(&env, &["--role", "operator"]);
    let agent_token = token(&env, &["--role", "agent", "--source", "vm"]);
    let server = serve(&env, &[]);
    let url = server.url.clone();
    let disk = guest_disk(&env, "vm");

    // The agent backs up, twice; the second run offers chunk ids and
    // sends only what changed.
    let first = remote_backup_ok(&env, &server, &agent_token, &disk, "vm");
    // The server scored it, and the agent waited to say so.
    assert_eq!(first["insight"]["scored_by"], "server", "{first:#}");
    assert_eq!(first["insight"]["verdict"], "clean", "{first:#}");
    replace_guest_file(&disk, "home/alice/docs/report-3.txt", &text(25_000, 77));
    let uploaded_before = metric(&url, &operator, "cairn_upload_bytes_total");
    let second = remote_backup_ok(&env, &server, &agent_token, &disk, "vm");
    let uploaded = metric(&url, &operator, "cairn_upload_bytes_total") - uploaded_before;
    assert!(
        uploaded < 2.0 * 1048576.0,
        "the second backup uploaded {uploaded} bytes of a 64 MiB disk"
    );
    assert!(
        metric(&url, &operator, "cairn_chunks_offered_total")
            > metric(&url, &operator, "cairn_chunks_missing_total")
    );
    let snap = second["id"].as_str().unwrap();
    assert_ne!(snap, first["id"].as_str().unwrap());

    // What the agent sent restores byte for byte on the server side.
    let restored = env.path("restored.img");
    env.ok(&["restore", "vm@latest", "--to", restored.to_str().unwrap()]);
    assert!(same_bytes(&disk, &restored));

    // Everything else the agent tries is refused.
    let objects = format!("{url}/api/v1/objects");
    let packs = std::fs::read_dir(env.vault.join("packs"))
        .unwrap()
        .flat_map(|d| std::fs::read_dir(d.unwrap().path()).unwrap())
        .map(|e| e.unwrap().path())
        .next()
        .unwrap();
    let pack = packs
        .strip_prefix(&env.vault)
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    let manifest = format!("snapshots/{snap}");
    let forbidden: Vec<(&str, String, Vec<u8>)> = vec![
        ("DELETE", format!("{objects}/{manifest}"), vec![]),
        ("DELETE", format!("{objects}/{pack}"), vec![]),
        (
            "PUT",
            format!("{objects}/{manifest}"),
            b"other bytes".to_vec(),
        ),
        ("PUT", format!("{objects}/config"), b"{}".to_vec()),
        ("PUT", format!("{objects}/pins/{snap}"), b"x".to_vec()),
        ("GET", format!("{objects}/{pack}"), vec![]),
        ("GET", format!("{url}/api/v1/sources"), vec![]),
        ("GET", format!("{url}/api/v1/sources/vm/timeline"), vec![]),
        (
            "POST",
            format!("{url}/api/v1/snapshots/vm@latest/scan"),
            vec![],
        ),
        (
            "POST",
            format!("{url}/api/v1/forget"),
            br#"{"keep_last":1}"#.to_vec(),
        ),
        ("POST", format!("{url}/api/v1/prune"), vec![]),
        ("POST", format!("{url}/api/v1/pins/vm@latest"), vec![]),
        (
            "POST",
            format!("{url}/api/v1/tokens"),
            br#"{"role":"admin"}"#.to_vec(),
        ),
    ];
    for (method, u, body) in &forbidden {
        let (status, v) = call(method, u, Some(&agent_token), body);
        assert_eq!(status, 403, "{method} {u} with an agent token: {v}");
        assert!(v["error"].is_string(), "{v}");
    }
    // The index is not shown to agents (they negotiate chunk ids).
    let (status, v) = call(
        "GET",
        &format!("{url}/api/v1/list/index"),
        Some(&agent_token),
        b"",
    );
    assert_eq!((status, v), (200, serde_json::json!([])));
    // Nor can an agent back up a source that is not its own: refused
    // before anything is uploaded...
    let uploaded_before = metric(&url, &operator, "cairn_upload_bytes_total");
    let out = remote_backup(&env, &server, &agent_token, &disk, "someone-else");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("may not back up \"someone-else\""), "{err}");
    assert_eq!(
        metric(&url, &operator, "cairn_upload_bytes_total"),
        uploaded_before,
        "nothing uploaded"
    );
    // ...and a client that skips that question is refused by the server
    // all the same when it stores the manifest.
    let remote = remote_vault(&url, &agent_token);
    let mut forged = remote.read_snapshot(&manifest).unwrap();
    forged.name = "someone-else".into();
    forged.id = cairn_vault::SnapshotId::generate().unwrap();
    let refused = remote.write_snapshot(&forged).unwrap_err().to_string();
    assert!(
        refused.contains("403") && refused.contains("may back up vm, not someone-else"),
        "{refused}"
    );
    // Nor may it hang its snapshot under a parent that is not its
    // source's, or keep it past the vault's retention (out of reach of
    // every forget and prune).
    let mut orphan = remote.read_snapshot(&manifest).unwrap();
    orphan.id = cairn_vault::SnapshotId::generate().unwrap();
    orphan.parent = Some(cairn_vault::SnapshotId("ab".repeat(32)));
    let refused = remote.write_snapshot(&orphan).unwrap_err().to_string();
    assert!(refused.contains("is not a snapshot of vm"), "{refused}");
    // Nor slip one in before the newest (a host under attack choosing
    // the point the timeline and the walk back would offer as clean),
    // change its source's kind, or hang one under an older snapshot.
    let newest = remote.read_snapshot(&manifest).unwrap();
    let next = |f: &dyn Fn(&mut cairn_vault::Snapshot)| {
        let mut s = newest.clone();
        s.id = cairn_vault::SnapshotId::generate().unwrap();
        s.time = chrono::Utc::now();
        s.parent = Some(newest.id.clone());
        f(&mut s);
        remote.write_snapshot(&s).unwrap_err().to_string()
    };
    let backdated = next(&|s| s.time = newest.time - chrono::Duration::hours(1));
    assert!(
        backdated.contains("400") && backdated.contains("not after vm@"),
        "{backdated}"
    );
    let kind = next(&|s| s.source.kind = cairn_vault::SourceKind::Directory);
    assert!(kind.contains("under another name"), "{kind}");
    let sideways = next(&|s| s.parent = newest.parent.clone());
    assert!(sideways.contains("must follow vm@"), "{sideways}");
    let rootless = next(&|s| s.parent = None);
    assert!(rootless.contains("must follow vm@"), "{rootless}");
    // Through the command line too, with --time before the newest.
    let out = remote_backup_with(
        &env,
        &server,
        &agent_token,
        &disk,
        "vm",
        &["--time", "2020-01-01T00:00:00Z"],
    );
    assert_eq!(out.status.code(), Some(1));
    let mut forever = remote.read_snapshot(&manifest).unwrap();
    forever.id = cairn_vault::SnapshotId::generate().unwrap();
    forever.retain_until = chrono::Utc::now() + chrono::Duration::days(36_500);
    let refused = remote.write_snapshot(&forever).unwrap_err().to_string();
    assert!(refused.contains("past the vault's retention"), "{refused}");
    // Nor name it what no command could address, or what a terminal
    // would act on: not even an admin (or an agent for any source).
    let mut named = newest.clone();
    named.id = cairn_vault::SnapshotId::generate().unwrap();
    named.time = chrono::Utc::now();
    named.parent = Some(newest.id.clone());
    named.name = "\u{1b}[31mvm".into();
    let refused = remote_vault(&url, &admin)
        .write_snapshot(&named)
        .unwrap_err()
        .to_string();
    assert!(
        refused.contains("400") && refused.contains("snapshot name"),
        "{refused}"
    );
    // Nor cite, for its disk, an object that is no disk map (the server
    // used to fail on it with a 500).
    let mut miscited = remote.read_snapshot(&manifest).unwrap();
    miscited.id = cairn_vault::SnapshotId::generate().unwrap();
    miscited.time = chrono::Utc::now();
    miscited.parent = Some(newest.id.clone());
    miscited.content = remote.write_content(&"no disk map").unwrap();
    let refused = remote.write_snapshot(&miscited).unwrap_err().to_string();
    assert!(
        refused.contains("400") && refused.contains("is not a disk map"),
        "{refused}"
    );
    // A chunk-id list is held to what one request may offer (it used to
    // take up to 512 MiB, buffered whole before it was refused).
    let (status, _) = call(
        "POST",
        &format!("{url}/api/v1/chunks/missing"),
        Some(&agent_token),
        &vec![0u8; 65_537 * 32],
    );
    assert_eq!(status, 413);
    // An operator cannot store objects (a scan record calling a snapshot
    // clean, say): the server writes what its scans find.
    let (status, v) = call(
        "PUT",
        &format!("{objects}/scan/v1/{}.forged", "cd".repeat(32)),
        Some(&operator),
        b"sealed or not",
    );
    assert_eq!(status, 403, "{v}");
    assert!(v.to_string().contains("operator token cannot write"), "{v}");
    // And is told so before a backup uploads anything.
    let (status, v) = call(
        "GET",
        &format!("{url}/api/v1/whoami?source=vm"),
        Some(&operator),
        b"",
    );
    assert_eq!(status, 200);
    assert_eq!(v["may_back_up"], false, "{v}");
    // The manifest is still the agent's original.
    let (status, _) = call("HEAD", &format!("{objects}/{manifest}"), Some(&admin), b"");
    assert_eq!(status, 200);
    env.ok(&["verify", "--read-data"]);

    // An operator reads but cannot prune, forget or mint tokens.
    let (status, v) = call(
        "GET",
        &format!("{url}/api/v1/sources"),
        Some(&operator),
        b"",
    );
    assert_eq!(status, 200);
    assert_eq!(v[0]["name"], "vm");
    assert_eq!(v[0]["snapshots"], 2);
    // The console answers a person: a page that says what is wrong.
    let (status, v) = call(
        "GET",
        &format!("{url}/sources/nosuch"),
        Some(&operator),
        b"",
    );
    assert_eq!(status, 404, "{v}");
    let page = v.as_str().unwrap_or_default();
    assert!(
        page.starts_with("<!doctype html>") && page.contains("nosuch"),
        "{v}"
    );
    for (method, path, body) in [
        ("POST", "/api/v1/prune", &b""[..]),
        ("POST", "/api/v1/forget", br#"{"keep_last":1}"#),
        ("POST", "/api/v1/tokens", br#"{"role":"admin"}"#),
    ] {
        let (status, v) = call(method, &format!("{url}{path}"), Some(&operator), body);
        assert_eq!(status, 403, "operator {method} {path}: {v}");
    }
    // An admin can.
    let (status, v) = call("POST", &format!("{url}/api/v1/prune"), Some(&admin), b"{}");
    assert_eq!(status, 200, "{v}");

    // Bad input gets a JSON 4xx, never a crash.
    for (method, path, tok, body, want) in [
        (
            "PUT",
            "/api/v1/objects/packs/..%2F..%2Fetc",
            Some(&agent_token),
            &b"x"[..],
            400,
        ),
        (
            "POST",
            "/api/v1/chunks/missing",
            Some(&agent_token),
            &[1u8; 33][..],
            400,
        ),
        ("POST", "/api/v1/forget", Some(&admin), b"{not json", 400),
        // A misspelt key is refused, not skipped: "dry-run" taken for
        // nothing made this a real forget.
        (
            "POST",
            "/api/v1/forget",
            Some(&admin),
            br#"{"keep_last":1,"dry-run":true}"#,
            400,
        ),
        (
            "POST",
            "/api/v1/forget",
            Some(&admin),
            br#"{"keep_last":1,"keep_within":"6m"}"#,
            400,
        ),
        ("GET", "/api/v1/no-such-thing", Some(&admin), b"", 404),
        ("GET", "/api/v1/sources", None, b"", 401),
        (
            "GET",
            "/api/v1/snapshots/vm@abcdef12",
            Some(&operator),
            b"",
            404,
        ),
        ("GET", "/api/v1/jobs/notanumber", Some(&operator), b"", 404),
        (
            "PUT",
            "/api/v1/objects/index/abc",
            Some(&agent_token),
            b"garbage",
            400,
        ),
    ] {
        let (status, v) = call(
            method,
            &format!("{url}{path}"),
            tok.map(|s| s.as_str()),
            body,
        );
        assert_eq!(status, want, "{method} {path}: {v}");
        assert!(
            v["error"].is_string(),
            "{method} {path}: not a JSON error: {v}"
        );
    }
    // A revoked token is refused, and told why.
    let made = env.json(&["token", "create", "--role", "operator"]);
    env.ok(&["token", "revoke", made["id"].as_str().unwrap()]);
    let (status, v) = call(
        "GET",
        &format!("{url}/api/v1/sources"),
        made["token"].as_str(),
        b"",
    );
    assert_eq!(status, 401, "{v}");
    assert!(v["error"].as_str().unwrap().contains("revoked"), "{v}");
    // A mistyped token is told apart from none at all.
    let mistyped = format!("{}x", made["token"].as_str().unwrap());
    let (status, v) = call(
        "GET",
        &format!("{url}/api/v1/sources"),
        Some(&mistyped),
        b"",
    );
    assert_eq!(status, 401, "{v}");
    assert!(
        v["error"].as_str().unwrap().contains("no such token"),
        "{v}"
    );
    // Both refusals are on record: whose the revoked token was, and the
    // unknown one by the start of its hash (never the secret itself).
    let log: Vec<Value> = serde_json::from_str(&env.ok(&["audit", "--json"])).unwrap();
    assert!(
        log.iter().any(|e| e["actor"] == made["id"]
            && e["action"] == "GET /api/v1/sources"
            && e["outcome"] == "refused"),
        "{log:#?}"
    );
    assert!(
        log.iter().any(
            |e| e["actor"].as_str().unwrap_or("").starts_with("unknown:")
                && e["outcome"] == "refused"
        ),
        "{log:#?}"
    );
    assert!(!serde_json::to_string(&log).unwrap().contains(&mistyped));
    let (_, v) = call("GET", &format!("{url}/api/v1/sources"), None, b"");
    assert!(
        v["error"].as_str().unwrap().contains("no token was sent"),
        "{v}"
    );
    let (status, _) = call("GET", &format!("{url}/healthz"), None, b"");
    assert_eq!(status, 200, "the server survived");
    // Metrics name the sources and their verdicts: not for anyone, nor
    // for an agent.
    for t in [None, Some(agent_token.as_str())] {
        let (status, _) = call("GET", &format!("{url}/metrics"), t, b"");
        assert!(status == 401 || status == 403, "{status}");
    }
    // Bodies outside object uploads are small: one past 64 KiB is refused.
    // (Just past it: the server answers before reading the rest, and a
    // body much larger than the socket's buffers would break the pipe
    // before the answer could be read.)
    let (status, _) = call(
        "POST",
        &format!("{url}/api/v1/forget"),
        Some(&admin),
        &vec![b' '; 80 << 10],
    );
    assert_eq!(status, 413);
    // An operator's restore writes only into the config's restore_dir
    // (none here): never to a path of its choosing.
    let (status, v) = call(
        "POST",
        &format!("{url}/api/v1/snapshots/vm@latest/restore"),
        Some(&operator),
        br#"{"to": "/root/.ssh/authorized_keys"}"#,
    );
    assert_eq!(status, 400, "{v}");
    assert!(v.to_string().contains("restore_dir"), "{v}");

    // A snapshot dated years ahead, which every keep policy would keep
    // in place of the real ones, is refused (by the agent here; the
    // server's own check is a unit test of `objects`).
    let future = remote_backup_with(
        &env,
        &server,
        &agent_token,
        &disk,
        "vm",
        &["--time", "2099-01-01T00:00:00Z"],
    );
    let err = String::from_utf8_lossy(&future.stderr);
    assert!(!future.status.success(), "{err}");
    assert!(err.contains("in the future"), "{err}");
    let snaps: Value = serde_json::from_str(&env.ok(&["snapshots", "vm", "--json"])).unwrap();
    assert_eq!(
        snaps.as_array().unwrap().len(),
        2,
        "only the two real snapshots"
    );

    // An agent holds the vault key, so it can seal any bytes; it still
    // cannot put them under the id of a chunk every host deduplicates to:
    // an index whose entries are not what its pack holds is refused.
    {
        let vault = cairn_vault::Vault::open(&env.vault, PASSWORD.as_bytes()).unwrap();
        let snap = vault.resolve("vm@latest").unwrap();
        let victim = vault
            .read_disk_map(&snap)
            .unwrap()
            .chunks
            .into_iter()
            .flatten()
            .next()
            .unwrap();
        let forged = b"the attacker's bytes";
        let sealed = cairn_vault::codec::seal(vault.cipher(), forged, 1, None).unwrap();
        let pack_id = "f0".repeat(32);
        let pack = cairn_vault::index::pack_object(&pack_id);
        let (status, v) = call(
            "PUT",
            &format!("{objects}/{pack}"),
            Some(&agent_token),
            &sealed,
        );
        assert!(status < 300, "{status} {v}");
        let index = cairn_vault::index::PackIndex {
            pack: pack_id.clone(),
            retain_until: chrono::Utc::now().timestamp() + 86_400,
            entries: vec![cairn_vault::index::IndexEntry {
                id: victim,
                offset: 0,
                len: sealed.len() as u32,
                raw_len: forged.len() as u32,
            }],
        };
        // Each index below is refused with 400, saying why.
        let refused = |idx: &cairn_vault::index::PackIndex, why: &str| {
            let (status, v) = call(
                "PUT",
                &format!("{objects}/{}", cairn_vault::index::index_object(&pack_id)),
                Some(&agent_token),
                &vault.seal_pack_index(idx).unwrap(),
            );
            assert_eq!(status, 400, "{v}");
            assert!(v.to_string().contains(why), "{v}");
        };
        refused(&index, "do not match");
        // A chunk claiming gigabytes (a few bytes of zstd can decode to
        // that much) is refused before anything is decoded, and so is an
        // index kept past the vault's retention.
        let mut bomb = index.entries[0];
        bomb.raw_len = 3 << 30;
        let mut far = cairn_vault::index::PackIndex {
            pack: pack_id.clone(),
            retain_until: index.retain_until,
            entries: vec![bomb],
        };
        refused(&far, "more than this vault's chunks hold");
        far.entries = index.entries.clone();
        far.retain_until = i64::MAX / 4;
        refused(&far, "past the vault's retention");
        // What the vault restores is still the real data.
        let again = env.path("restored-again.img");
        env.ok(&["restore", "vm@latest", "--to", again.to_str().unwrap()]);
        assert!(same_bytes(&disk, &again));
    }

    // The audit log has every refusal, and its chain verifies...
    let log: Vec<Value> = serde_json::from_str(&env.ok(&["audit", "--json"])).unwrap();
    let refused = log.iter().filter(|e| e["outcome"] == "refused").count();
    assert!(
        refused >= forbidden.len() + 4,
        "{refused} refusals audited:\n{log:#?}"
    );
    assert!(log.iter().any(|e| e["role"] == "operator"
        && e["action"] == "POST /api/v1/prune"
        && e["outcome"] == "refused"));
    assert!(log.iter().any(|e| e["action"] == "snapshot created"));
    // Uploads that failed their checks too, not only writes out of place.
    assert!(
        log.iter().any(|e| e["role"] == "agent"
            && e["outcome"] == "refused"
            && e["target"] == "HTTP 400"),
        "{log:#?}"
    );
    let (_, v) = call(
        "GET",
        &format!("{url}/api/v1/audit/verify"),
        Some(&operator),
        b"",
    );
    assert_eq!(v["ok"], true, "{v}");
    env.ok(&["audit", "verify"]);

    // A log cut short is caught by the vault's checkpoint of its newest
    // change (the chain alone cannot tell)...
    let path = env.vault.join("local/server/audit.log");
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = || std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode() & 0o077, 0, "the audit log is its owner's alone");
        // One an earlier version left readable by all is made so too.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        env.ok(&["token", "create", "--role", "operator"]);
        assert_eq!(mode() & 0o077, 0, "made its owner's alone again");
    }
    let full = std::fs::read_to_string(&path).unwrap();
    let half: Vec<&str> = full.lines().take(full.lines().count() / 2).collect();
    std::fs::write(&path, half.join("\n") + "\n").unwrap();
    let out = env.run(&["audit", "verify", "--json"]);
    assert_eq!(out.status.code(), Some(3));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        v["reason"].as_str().unwrap().contains("cut from its end"),
        "{v}"
    );
    std::fs::write(&path, &full).unwrap();
    env.ok(&["audit", "verify"]);

    // ...and so is a refused read cut from its end (a host probing for
    // what is not its own): refusals are anchored within seconds, not
    // at the quiet pace of other reads.
    std::thread::sleep(std::time::Duration::from_millis(5_200));
    let (status, _) = call("GET", &format!("{objects}/{pack}"), Some(&agent_token), b"");
    assert_eq!(status, 403);
    let probed = std::fs::read_to_string(&path).unwrap();
    assert!(probed.lines().last().unwrap().contains("\"refused\""));
    let cut: Vec<&str> = probed.lines().take(probed.lines().count() - 1).collect();
    std::fs::write(&path, cut.join("\n") + "\n").unwrap();
    let out = env.run(&["audit", "verify", "--json"]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    std::fs::write(&path, &probed).unwrap();
    env.ok(&["audit", "verify"]);

    // ...and so is an entry edited: the refusal turned into "ok".
    let text = probed;
    let line = text
        .lines()
        .position(|l| l.contains("\"refused\""))
        .unwrap();
    let tampered: Vec<String> = text
        .lines()
        .enumerate()
        .map(|(i, l)| {
            if i == line {
                l.replace("\"refused\"", "\"ok\"")
            } else {
                l.to_string()
            }
        })
        .collect();
    std::fs::write(&path, tampered.join("\n") + "\n").unwrap();
    let out = env.run(&["audit", "verify", "--json"]);
    assert_eq!(out.status.code(), Some(3));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["line"], line + 1, "{v}");
    let (_, v) = call(
        "GET",
        &format!("{url}/api/v1/audit/verify"),
        Some(&operator),
        b"",
    );
    assert_eq!(v["ok"], false, "{v}");
}

#[test]
fn an_agent_backup_of_an_attacked_disk_warns_and_exits_3_like_a_local_one() {
    let env = Env::new("30d", &[]);
    let agent_token = token(&env, &["--role", "agent", "--source", "vm"]);
    let server = serve(&env, &[]);
    let disk = guest_disk(&env, "vm");
    let backup = |day: u32| {
        let time = format!("2026-04-{:02}T02:00:00Z", day + 1);
        remote_backup_with(&env, &server, &agent_token, &disk, "vm", &["--time", &time])
    };
    four_days_then_encryption_by(&disk, |d| {
        let out = backup(d);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    });
    let out = backup(4);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("scored by the server"), "{stderr}");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_ne!(v["insight"]["verdict"], "clean", "{v:#}");
    assert!(!v["insight"]["reasons"].as_array().unwrap().is_empty());
}

#[test]
fn an_interrupted_upload_leaves_nothing_half_written_and_the_next_run_resumes() {
    let env = Env::new("0s", &["--pack-mib", "1"]);
    let agent_token = token(&env, &["--role", "agent", "--source", "big"]);
    let admin = token(&env, &["--role", "admin"]);
    let server = serve(&env, &[]);

    // A client that sends half a body and hangs up.
    let addr = server.url.trim_start_matches("http://").to_string();
    let name = format!("packs/ab/{}", "ab".repeat(32));
    let mut s = std::net::TcpStream::connect(&addr).unwrap();
    write!(
        s,
        "PUT /api/v1/objects/{name} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {agent_token}\r\nContent-Length: 1000000\r\n\r\n"
    )
    .unwrap();
    s.write_all(&[7u8; 4096]).unwrap();
    drop(s);
    std::thread::sleep(Duration::from_millis(300));
    let (status, _) = call(
        "HEAD",
        &format!("{}/api/v1/objects/{name}", server.url),
        Some(&admin),
        b"",
    );
    assert_eq!(status, 404, "half an upload was stored");
    assert_eq!(std::fs::read_dir(env.vault.join("tmp")).unwrap().count(), 0);

    // A backup killed once a few packs are up...
    let data = env.path("big.img");
    std::fs::write(&data, noise(48 << 20, 5)).unwrap();
    let mut child = env
        .cmd()
        .env("CAIRN_CACHE_DIR", env.path("agent-cache"))
        .args([
            "backup",
            data.to_str().unwrap(),
            "--name",
            "big",
            "--server",
            &server.url,
            "--token",
            &agent_token,
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let count = |dir: &str| {
        std::fs::read_dir(env.vault.join(dir))
            .map(|d| d.count())
            .unwrap_or(0)
    };
    while count("index") < 4 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let stored_before = metric(&server.url, &admin, "cairn_upload_bytes_total");
    // Packs whose index made it are known to the server; a pack sent
    // without its index is an orphan that prune removes later.
    let indexed: u64 = std::fs::read_dir(env.vault.join("index"))
        .unwrap()
        .map(|e| {
            let id = e.unwrap().file_name().into_string().unwrap();
            std::fs::metadata(env.vault.join("packs").join(&id[..2]).join(&id))
                .unwrap()
                .len()
        })
        .sum();
    assert!(indexed > 3 * 1048576, "{indexed}");
    assert_eq!(
        count("snapshots"),
        0,
        "the killed run must not have finished"
    );
    env.ok(&["verify"]);

    // ...and the next run sends only what is missing.
    remote_backup_ok(&env, &server, &agent_token, &data, "big");
    let sent = metric(&server.url, &admin, "cairn_upload_bytes_total") - stored_before;
    assert!(
        sent < 48.0 * 1048576.0 - indexed as f64 + 1048576.0,
        "resumed run sent {sent} bytes after {indexed} were stored and indexed"
    );
    let restored = env.path("big.out");
    env.ok(&["restore", "big@latest", "--to", restored.to_str().unwrap()]);
    assert!(same_bytes(&data, &restored));
    env.ok(&["verify", "--read-data"]);
}

/// Accepts one HTTP request and returns its body.
fn receive_webhook(listener: std::net::TcpListener) -> std::thread::JoinHandle<Value> {
    std::thread::spawn(move || {
        let (s, _) = listener.accept().unwrap();
        let mut r = BufReader::new(s);
        let mut len = 0usize;
        loop {
            let mut line = String::new();
            r.read_line(&mut line).unwrap();
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                len = v.trim().parse().unwrap();
            }
            if line == "\r\n" {
                break;
            }
        }
        let mut body = vec![0u8; len];
        r.read_exact(&mut body).unwrap();
        r.get_mut()
            .write_all(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n")
            .unwrap();
        serde_json::from_slice(&body).unwrap()
    })
}

#[test]
fn the_scheduler_backs_up_scores_and_calls_the_webhook_on_an_attack() {
    let env = Env::new("0s", &[]);
    let disk = guest_disk(&env, "vm");
    four_days_then_encryption(&env, &disk);
    let hook = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let hook_addr = hook.local_addr().unwrap();
    let received = receive_webhook(hook);
    let config = env.path("server.toml");
    std::fs::write(
        &config,
        format!(
            "webhook = \"http://{hook_addr}/hook\"\n\n[[source]]\nname = \"vm\"\npath = \"{}\"\nevery = \"1h\"\nkeep_last = 10\n",
            disk.display()
        ),
    )
    .unwrap();
    let operator = token(&env, &["--role", "operator"]);
    let server = serve(&env, &["--config", config.to_str().unwrap()]);

    let body = received.join().unwrap();
    assert_eq!(body["event"], "verdict");
    assert_eq!(body["source"], "vm");
    assert_eq!(body["verdict"], "compromised", "{body}");
    assert!(body["last_clean"].is_string());
    let (_, t) = call(
        "GET",
        &format!("{}/api/v1/sources/vm/timeline", server.url),
        Some(&operator),
        b"",
    );
    let snaps = t["snapshots"].as_array().unwrap();
    assert_eq!(snaps.len(), 5);
    assert_eq!(snaps[4]["verdict"], "compromised");
    assert!(
        metric(
            &server.url,
            &operator,
            "cairn_backups_total{source=\"vm\",via=\"scheduler\"}"
        ) >= 1.0
    );
    assert!(
        metric(
            &server.url,
            &operator,
            "cairn_verdicts_total{verdict=\"compromised\"}"
        ) >= 1.0
    );

    // The file diff of the attack: the five reports, modified in place.
    let (status, d) = call(
        "GET",
        &format!("{}/api/v1/snapshots/vm@latest/diff", server.url),
        Some(&operator),
        b"",
    );
    assert_eq!(status, 200, "{d}");
    let modified: Vec<&str> = d["modified"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["path"].as_str().unwrap())
        .collect();
    for i in 10..15 {
        assert!(
            modified.contains(&format!("/home/alice/docs/report-{i}.txt").as_str()),
            "{modified:?}"
        );
    }

    // Instant recovery from the API: the snapshot served over NBD is the
    // disk as it was backed up; connected clients show in /metrics.
    let (status, e) = call(
        "POST",
        &format!("{}/api/v1/snapshots/vm@latest/export", server.url),
        Some(&operator),
        b"",
    );
    assert_eq!(status, 201, "{e}");
    let nbd = e["url"].as_str().unwrap().to_string();
    assert!(nbd_equals(&nbd, &disk));
    let hostport = nbd
        .trim_start_matches("nbd://")
        .split('/')
        .next()
        .unwrap()
        .to_string();
    let held = std::net::TcpStream::connect(&hostport).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(metric(&server.url, &operator, "cairn_nbd_clients"), 1.0);
    drop(held);
    let (status, _) = call(
        "DELETE",
        &format!("{}/api/v1/exports/{}", server.url, e["id"]),
        Some(&operator),
        b"",
    );
    assert_eq!(status, 200);
    let stopped = (0..50).any(|_| {
        std::thread::sleep(Duration::from_millis(50));
        std::net::TcpStream::connect(&hostport).is_err()
    });
    assert!(stopped, "the export stopped");

    // An export ends by itself when its time is up, and lets go of the
    // vault; a time out of range is refused.
    let export = |query: &str| {
        call(
            "POST",
            &format!("{}/api/v1/snapshots/vm@latest/export{query}", server.url),
            Some(&operator),
            b"",
        )
    };
    assert_eq!(export("?seconds=0").0, 400);
    assert_eq!(export("?seconds=99999999").0, 400);
    let (status, e) = export("?seconds=1");
    assert_eq!(status, 201, "{e}");
    assert!(e["expires"].as_str().is_some(), "{e}");
    let (_, list) = call(
        "GET",
        &format!("{}/api/v1/exports", server.url),
        Some(&operator),
        b"",
    );
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
    let hostport = e["url"].as_str().unwrap()["nbd://".len()..]
        .split('/')
        .next()
        .unwrap()
        .to_string();
    // A client connected before the end is cut off with it (it must not
    // read on once the export has let go of the vault).
    let mut held = std::net::TcpStream::connect(&hostport).unwrap();
    let expired = (0..100).any(|_| {
        std::thread::sleep(Duration::from_millis(50));
        std::net::TcpStream::connect(&hostport).is_err()
    });
    assert!(expired, "the export expired");
    held.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut greeting = Vec::new();
    use std::io::Read;
    assert!(
        held.read_to_end(&mut greeting).is_ok(),
        "the connected client was not cut off"
    );
    let (_, list) = call(
        "GET",
        &format!("{}/api/v1/exports", server.url),
        Some(&operator),
        b"",
    );
    assert_eq!(list, serde_json::json!([]));
}

/// Reads a server-sent event stream to its end: (event, data) pairs.
/// Starts a job with `POST path` (answered 202) and reads its events to the end.
fn run_job(base: &str, path: &str, token: &str) -> Vec<(String, Value)> {
    let (status, v) = call("POST", &format!("{base}{path}"), Some(token), b"");
    assert_eq!(status, 202, "{v}");
    read_events(&format!("{base}{}", v["events"].as_str().unwrap()), token)
}

fn read_events(url: &str, token: &str) -> Vec<(String, Value)> {
    let req = ureq::http::Request::builder()
        .uri(url)
        .header("authorization", format!("Bearer {token}"))
        .body(())
        .unwrap();
    let mut resp = agent().run(req).unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let r = BufReader::new(resp.body_mut().as_reader());
    let mut out = Vec::new();
    let mut event = String::new();
    for line in r.lines() {
        let line = line.unwrap();
        if let Some(e) = line.strip_prefix("event: ") {
            event = e.to_string();
        } else if let Some(d) = line.strip_prefix("data: ") {
            out.push((event.clone(), serde_json::from_str(d).unwrap()));
        }
    }
    out
}

/// An operator restores a disk and a folder through the API, into the
/// config's restore_dir only, never over something there.
#[test]
fn the_api_restores_disks_and_folders_into_restore_dir() {
    let env = Env::new("0s", &[]);
    let root = env.path("root");
    populate(&root);
    let disk = env.path("vm.img");
    gpt_ext4_image(&disk, &root, 64);
    env.backup(&disk, "vm", "2026-04-01T02:00:00Z");
    env.backup(&root, "share", "2026-04-01T02:00:00Z");
    let restores = env.path("restores");
    std::fs::create_dir(&restores).unwrap();
    let config = env.path("server.toml");
    std::fs::write(
        &config,
        format!("restore_dir = {:?}\n", restores.to_str().unwrap()),
    )
    .unwrap();
    let server = serve(&env, &["--config", config.to_str().unwrap()]);
    let operator = token(&env, &["--role", "operator"]);
    let restore = |spec: &str, to: &str| {
        let (status, v) = call(
            "POST",
            &format!("{}/api/v1/snapshots/{spec}/restore", server.url),
            Some(&operator),
            format!("{{\"to\": \"{to}\"}}").as_bytes(),
        );
        assert_eq!(status, 202, "{v}");
        let events = read_events(
            &format!("{}{}", server.url, v["events"].as_str().unwrap()),
            &operator,
        );
        events.last().unwrap().clone()
    };
    let (last, data) = restore("vm@latest", "vm.img");
    assert_eq!(last, "done", "{data}");
    assert!(same_bytes(&disk, &restores.join("vm.img")));
    let (last, data) = restore("share@latest", "share");
    assert_eq!(last, "done", "{data}");
    sh(
        "diff",
        &[
            "-r",
            root.to_str().unwrap(),
            restores.join("share").to_str().unwrap(),
        ],
    );
    // Never over what is there.
    for (spec, to) in [("share@latest", "share"), ("share@latest", "vm.img")] {
        let (last, data) = restore(spec, to);
        assert_eq!(last, "error", "{spec} to {to}: {data}");
    }
    assert!(same_bytes(&disk, &restores.join("vm.img")));
}

#[test]
fn a_scan_streams_its_stages_and_findings_as_server_sent_events() {
    let env = Env::new("0s", &[]);
    let root = env.path("root");
    populate(&root);
    std::fs::create_dir_all(root.join("home/alice/Downloads")).unwrap();
    std::fs::write(root.join("home/alice/Downloads/invoice.com"), EICAR).unwrap();
    let disk = env.path("vm.img");
    gpt_ext4_image(&disk, &root, 64);
    env.backup(&disk, "vm", "2026-04-01T02:00:00Z");
    let operator = token(&env, &["--role", "operator"]);
    let server = serve(&env, &[]);

    let events = run_job(&server.url, "/api/v1/snapshots/vm@latest/scan", &operator);
    let kinds: Vec<&str> = events.iter().map(|(k, _)| k.as_str()).collect();
    let stage = |s: &str| {
        events
            .iter()
            .position(|(k, d)| k == "stage" && d["stage"] == s)
            .unwrap()
    };
    let hit = events
        .iter()
        .position(|(k, d)| k == "finding" && d["kind"] == "malware")
        .unwrap_or_else(|| panic!("no malware finding in {kinds:?}"));
    assert!(
        stage("malware") < hit && hit < stage("vulnerabilities"),
        "{kinds:?}"
    );
    assert!(
        events[hit].1["text"]
            .as_str()
            .unwrap()
            .contains("/home/alice/Downloads/invoice.com")
    );
    let (last, data) = events.last().unwrap();
    assert_eq!(last, "done");
    assert_eq!(data["verdict"], "compromised");
    // The result is stored: the timeline shows it.
    let (_, t) = call(
        "GET",
        &format!("{}/api/v1/sources/vm/timeline", server.url),
        Some(&operator),
        b"",
    );
    assert_eq!(t["snapshots"][0]["scan"], "compromised");
    assert!(
        metric(
            &server.url,
            &operator,
            "cairn_scan_findings_total{kind=\"malware\"}"
        ) >= 1.0
    );
    // The OpenAPI document names every endpoint used here.
    let (_, doc) = call("GET", &format!("{}/openapi.json", server.url), None, b"");
    for p in [
        "/api/v1/snapshots/{spec}/scan",
        "/api/v1/jobs/{id}/events",
        "/api/v1/sources/{name}/timeline",
        "/api/v1/objects/{name}",
        "/api/v1/chunks/missing",
    ] {
        assert!(
            doc["paths"][p].is_object(),
            "{p} missing from /openapi.json"
        );
    }
}

#[test]
fn tls_with_a_private_certificate() {
    let env = Env::new("0s", &[]);
    // A private CA and a server certificate it signed.
    let p = |n: &str| env.path(n).to_str().unwrap().to_string();
    let (ca, ca_key, cert, key, csr, ext) = (
        p("ca.pem"),
        p("ca.key"),
        p("cert.pem"),
        p("key.pem"),
        p("req.csr"),
        p("ext.cnf"),
    );
    let ssl = |args: &[&str]| sh("openssl", args);
    ssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=Cairn test CA",
        "-keyout",
        &ca_key,
        "-out",
        &ca,
    ]);
    ssl(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=localhost",
        "-keyout",
        &key,
        "-out",
        &csr,
    ]);
    std::fs::write(
        &ext,
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
    )
    .unwrap();
    ssl(&[
        "x509",
        "-req",
        "-in",
        &csr,
        "-CA",
        &ca,
        "-CAkey",
        &ca_key,
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        &ext,
        "-out",
        &cert,
    ]);
    let config = env.path("server.toml");
    std::fs::write(
        &config,
        format!("tls_cert = \"{cert}\"\ntls_key = \"{key}\"\n"),
    )
    .unwrap();
    let agent_token = token(&env, &["--role", "agent", "--source", "files"]);
    let server = serve(&env, &["--config", config.to_str().unwrap()]);
    assert!(server.url.starts_with("https://"), "{}", server.url);
    let root = env.path("files");
    populate(&root);
    // Without the CA the client refuses the server, at once, saying what
    // to do...
    let out = remote_backup(&env, &server, &agent_token, &root, "files");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("set CAIRN_CA_CERT") && !err.contains("attempts"),
        "{err}"
    );
    // ...and with it the backup goes through.
    let out = env
        .cmd()
        .env("CAIRN_CA_CERT", &ca)
        .env("CAIRN_CACHE_DIR", env.path("agent-cache"))
        .args([
            "backup",
            root.to_str().unwrap(),
            "--name",
            "files",
            "--server",
            &server.url,
            "--token",
            &agent_token,
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let restored = env.path("restored");
    env.ok(&[
        "restore",
        "files@latest",
        "--to",
        restored.to_str().unwrap(),
    ]);
    assert!(
        Command::new("diff")
            .args(["-r", root.to_str().unwrap(), restored.to_str().unwrap()])
            .status()
            .unwrap()
            .success()
    );
}

/// Every (image, token, name) backed up through the server at once; all
/// must succeed.
fn all_back_up(env: &Env, server: &Server, jobs: &[(std::path::PathBuf, String, String)]) {
    let children: Vec<(&String, Child)> = jobs
        .iter()
        .map(|(img, tok, name)| {
            let c = env
                .cmd()
                .env("CAIRN_CACHE_DIR", env.path(&format!("cache-{name}")))
                .args(["backup", img.to_str().unwrap(), "--name", name])
                .args(["--server", &server.url, "--token", tok, "--quiet"])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            (name, c)
        })
        .collect();
    for (name, c) in children {
        let out = c.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn twenty_agents_back_up_at_once() {
    let env = Env::new("0s", &[]);
    let operator = token(&env, &["--role", "operator"]);
    let server = serve(&env, &[]);
    let n = 20;
    let mut total = 0u64;
    let mut jobs = Vec::new();
    for i in 0..n {
        // Each host's image: some data of its own, some shared with the
        // others (the same base), the rest holes.
        let img = env.path(&format!("host{i}.img"));
        let f = std::fs::File::create(&img).unwrap();
        f.set_len(32 << 20).unwrap();
        write_at(&img, 0, &noise(4 << 20, 1));
        write_at(&img, 8 << 20, &noise(2 << 20, 100 + i as u64));
        total += 32 << 20;
        let tok = token(&env, &["--role", "agent", "--source", &format!("host{i}")]);
        jobs.push((img, tok, format!("host{i}")));
    }
    let started = Instant::now();
    all_back_up(&env, &server, &jobs);
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "20 agents: {:.0} MiB of disks in {secs:.1} s ({:.0} MiB/s logical), {:.1} MiB uploaded",
        total as f64 / 1048576.0,
        total as f64 / 1048576.0 / secs,
        metric(&server.url, &operator, "cairn_upload_bytes_total") / 1048576.0
    );
    let snaps = env.json(&["snapshots"]);
    assert_eq!(snaps.as_array().unwrap().len(), n);
    env.ok(&["verify", "--read-data"]);
    // Hosts that started together sent the shared 4 MiB once: each chunk
    // was claimed by the first host to offer it, the others waited for it.
    let uploaded = metric(&server.url, &operator, "cairn_upload_bytes_total");
    assert!(
        uploaded < (4.0 + 2.0 * n as f64) * 1048576.0 * 1.1,
        "{uploaded} bytes uploaded for 4 MiB shared and 2 MiB per host"
    );

    // The next round, each host with 1 MiB changed: only that goes up
    // (what any host stored before is not sent again).
    let before = metric(&server.url, &operator, "cairn_upload_bytes_total");
    for (i, (img, _, _)) in jobs.iter().enumerate() {
        write_at(img, 20 << 20, &noise(1 << 20, 500 + i as u64));
    }
    all_back_up(&env, &server, &jobs);
    let sent = metric(&server.url, &operator, "cairn_upload_bytes_total") - before;
    assert!(
        sent < n as f64 * 1.2 * 1048576.0,
        "second round sent {sent} bytes"
    );
    assert_eq!(env.json(&["snapshots"]).as_array().unwrap().len(), 2 * n);
    env.ok(&["verify", "--read-data"]);
}

#[test]
fn the_console_api_boots_a_point_in_isolation() {
    let assets = sh(&in_package("../../scripts/boot-assets"), &[]);
    let mut it = assets.split_whitespace();
    let (kernel, initrd) = (it.next().unwrap(), it.next().unwrap());
    let env = Env::new("0s", &[]);
    let content = env.path("content");
    std::fs::create_dir_all(&content).unwrap();
    std::fs::write(content.join("MARKER"), "recovered-point-7\n").unwrap();
    let img = env.path("vm.img");
    gpt_ext4_image(&img, &content, 32);
    env.backup(&img, "vm", "2026-03-01T00:00:00Z");
    let config = env.path("server.toml");
    std::fs::write(
        &config,
        format!("[boot]\nkernel = \"{kernel}\"\ninitrd = \"{initrd}\"\nexpect = \"CAIRN-MARKER: recovered-point-7\"\ntimeout = 120\n"),
    )
    .unwrap();
    let operator = token(&env, &["--role", "operator"]);
    let server = serve(&env, &["--config", config.to_str().unwrap()]);
    let events = run_job(&server.url, "/api/v1/snapshots/vm@latest/boot", &operator);
    let (last, data) = events.last().unwrap();
    assert_eq!(last, "done", "{events:?}");
    assert_eq!(data["result"], "booted", "{data}");
    assert!(
        data["console_tail"]
            .as_str()
            .unwrap()
            .contains("CAIRN-MARKER: recovered-point-7")
    );
}

/// The server's host:port.
fn address(server: &Server) -> String {
    let rest = server.url.trim_start_matches("http://");
    rest.split('/').next().unwrap().to_string()
}

/// GET /healthz on a connection of its own: the whole answer as text
/// (empty when the server closed it without one).
fn raw_healthz(addr: &str) -> String {
    let mut c = std::net::TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let _ = c.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let mut answer = String::new();
    let _ = c.read_to_string(&mut answer);
    answer
}

#[test]
fn connections_that_send_nothing_are_cut_and_cannot_take_every_place() {
    let env = Env::new("30d", &[]);
    let config = env.path("server.toml");
    std::fs::write(&config, "max_connections = 4\nheader_timeout = 5\n").unwrap();
    let server = serve(&env, &["--config", config.to_str().unwrap()]);
    let addr = address(&server);
    // Every place taken: two connections that send nothing, two that
    // start a request and never finish its headers.
    let idle: Vec<std::net::TcpStream> = (0..4)
        .map(|i| {
            let mut c = std::net::TcpStream::connect(&addr).unwrap();
            if i % 2 == 1 {
                c.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
                    .unwrap();
            }
            c
        })
        .collect();
    // Each is cut by the server (no answer comes in the meantime)...
    for mut c in idle {
        c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut buf = [0u8; 256];
        match c.read(&mut buf) {
            Ok(n) => assert!(
                n == 0 || String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 408"),
                "{:?}",
                String::from_utf8_lossy(&buf[..n])
            ),
            Err(e) => assert_eq!(
                e.kind(),
                std::io::ErrorKind::ConnectionReset,
                "not cut: {e}"
            ),
        }
    }
    // ...and an ordinary request is served after them.
    let (status, body) = call("GET", &format!("{}/healthz", server.url), None, b"");
    assert_eq!((status, body), (200, Value::String("ok\n".into())));

    // One address holds three places at most: a fourth connection is
    // told so and closed, not served.
    let config = env.path("server2.toml");
    std::fs::write(&config, "max_connections_per_address = 3\n").unwrap();
    let server = serve(&env, &["--config", config.to_str().unwrap()]);
    let addr = address(&server);
    let held: Vec<std::net::TcpStream> = (0..3)
        .map(|_| std::net::TcpStream::connect(&addr).unwrap())
        .collect();
    let answer = raw_healthz(&addr);
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer:?}");
    drop(held);
    // Once they are closed, the address is served again.
    let served = (0..100).any(|_| {
        let ok = raw_healthz(&addr).starts_with("HTTP/1.1 200");
        if !ok {
            std::thread::sleep(Duration::from_millis(50));
        }
        ok
    });
    assert!(served);
}

/// Starts a PUT of `len` bytes to object `name` with `token` and sends
/// only `sent` of them: the connection, left open.
fn slow_put(addr: &str, token: &str, name: &str, len: usize, sent: usize) -> std::net::TcpStream {
    let mut c = std::net::TcpStream::connect(addr).unwrap();
    write!(
        c,
        "PUT /api/v1/objects/{name} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Length: {len}\r\n\r\n"
    )
    .unwrap();
    c.write_all(&vec![7u8; sent]).unwrap();
    c
}

#[test]
fn a_compromised_agent_cannot_stall_exhaust_crash_or_read_through_the_server() {
    let env = Env::new("30d", &[]);
    let config = env.path("server.toml");
    std::fs::write(&config, "header_timeout = 5\n").unwrap();
    let server = serve(&env, &["--config", config.to_str().unwrap()]);
    let (url, addr) = (server.url.clone(), address(&server));
    let objects = format!("{url}/api/v1/objects");
    let admin = token(&env, &["--role", "admin"]);
    let evil = token(&env, &["--role", "agent", "--source", "vm"]);
    let honest = token(&env, &["--role", "agent", "--source", "other"]);
    remote_backup_ok(&env, &server, &evil, &guest_disk(&env, "vm"), "vm");

    // A range is checked against the object before anything is
    // allocated for it (a terabyte asked for aborted the server).
    let (status, v) = call(
        "GET",
        &format!("{objects}/config?offset=0&len=1000000000000"),
        Some(&evil),
        b"",
    );
    assert_eq!(status, 416, "{v}");
    // So is a small one that starts past the end (it was a 500).
    let (status, v) = call(
        "GET",
        &format!("{objects}/config?offset=99999999999999&len=1"),
        Some(&evil),
        b"",
    );
    assert_eq!(status, 416, "{v}");
    let (status, _) = call("GET", &format!("{url}/healthz"), None, b"");
    assert_eq!(status, 200, "the server is still up");
    // A body larger than any object is refused before it is read.
    let mut c = slow_put(
        &addr,
        &evil,
        &format!("packs/ab/{}", "ab".repeat(32)),
        600 << 20,
        0,
    );
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut answer = [0u8; 64];
    let n = c.read(&mut answer).unwrap();
    assert!(
        String::from_utf8_lossy(&answer[..n]).starts_with("HTTP/1.1 413"),
        "{:?}",
        String::from_utf8_lossy(&answer[..n])
    );

    // Bodies that stop coming: some after a trickle, some after a burst
    // (bytes sent early buy no pause later). The agent gets a few places
    // and the rest wait for one...
    let started = Instant::now();
    let put = |i: usize, sent: usize| {
        let name = format!("packs/cd/{}{i:02}", "cd".repeat(31));
        slow_put(&addr, &evil, &name, 1 << 20, sent)
    };
    // Bursts first (cut a span after they stop, 5 to 10 s), then two that
    // wait for a place in vain (5 s).
    let mut stalled: Vec<std::net::TcpStream> = (0..8).map(|i| put(i, 200_000)).collect();
    std::thread::sleep(Duration::from_millis(300));
    stalled.extend((8..10).map(|i| put(i, 10)));
    // ...another agent backs up meanwhile (and again, its map unchanged
    // and sent again)...
    let disk = guest_disk(&env, "other");
    let other = remote_backup_ok(&env, &server, &honest, &disk, "other");
    remote_backup_ok(&env, &server, &honest, &disk, "other");
    // ...and each stalled body is cut, or never gets a place.
    let mut said = Vec::new();
    for mut c in stalled {
        c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut buf = [0u8; 64];
        let n = c.read(&mut buf).unwrap_or(0);
        said.push(
            String::from_utf8_lossy(&buf[..n])
                .get(..12)
                .unwrap_or("")
                .to_string(),
        );
    }
    let count = |s: &str| said.iter().filter(|x| *x == s).count();
    assert_eq!(count("HTTP/1.1 408"), 8, "{said:?}");
    assert_eq!(count("HTTP/1.1 503"), 2, "{said:?}");
    assert!(started.elapsed() < Duration::from_secs(25));
    // A trickle alone is cut after one span.
    let mut c = put(10, 10);
    c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut buf = [0u8; 12];
    c.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"HTTP/1.1 408");
    // A body without a valid token is not read: the answer is 401.
    let (status, _) = call(
        "PUT",
        &format!("{objects}/packs/ab/x"),
        Some("no-such-token"),
        &[1; 10_000],
    );
    assert_eq!(status, 401);

    // The agent knows the name of the other host's map (a HEAD tells it
    // one exists) but never sent it: it may not cite it, for what its
    // snapshots cite it may read.
    let theirs = format!("snapshots/{}", other["id"].as_str().unwrap());
    let (status, v) = call("GET", &format!("{objects}/{theirs}"), Some(&admin), b"");
    assert_eq!(status, 200, "{v}");
    let vault = cairn_vault::Vault::open(&env.vault, PASSWORD.as_bytes()).unwrap();
    let their_map = vault.read_snapshot(&theirs).unwrap().content;
    let remote = remote_vault(&url, &evil);
    let (mine, _) = remote.snapshots().unwrap();
    let newest = mine.iter().max_by_key(|s| s.time).unwrap();
    let mut forged = newest.clone();
    forged.id = cairn_vault::SnapshotId::generate().unwrap();
    forged.time = chrono::Utc::now();
    forged.parent = Some(newest.id.clone());
    forged.content = their_map.clone();
    let refused = remote.write_snapshot(&forged).unwrap_err().to_string();
    assert!(
        refused.contains("HTTP 400") && refused.contains("was not sent by this agent"),
        "{refused}"
    );
    let (status, _) = call("GET", &format!("{objects}/{their_map}"), Some(&evil), b"");
    assert_eq!(status, 403);
    // A snapshot id is 64 hex digits (one named x/y blocked the source's
    // next backups), and an index names a pack id (a short one panicked
    // the handler).
    let mut odd = mine[0].clone();
    odd.id = cairn_vault::SnapshotId("x".into());
    let refused = remote.write_snapshot(&odd).unwrap_err().to_string();
    assert!(
        refused.contains("HTTP 400") && refused.contains("64 lowercase hex"),
        "{refused}"
    );
    let short = cairn_vault::index::PackIndex {
        pack: "a".into(),
        retain_until: 0,
        entries: vec![],
    };
    let (status, v) = call(
        "PUT",
        &format!("{objects}/index/a"),
        Some(&evil),
        &vault.seal_pack_index(&short).unwrap(),
    );
    assert_eq!(status, 400, "{v}");
    let (status, v) = call("PUT", &format!("{objects}/packs/a"), Some(&evil), b"x");
    assert_eq!(status, 400, "{v}");
    // The agent's own next backup still goes through, and the vault
    // verifies.
    remote_backup_ok(&env, &server, &evil, &guest_disk(&env, "vm2"), "vm");
    env.ok(&["verify", "--read-data"]);
    drop(server);

    // With a daily quota, junk (or a backup) past it is refused: a host
    // cannot fill the disk every other host backs up to.
    std::fs::write(&config, "agent_upload_per_day = \"256K\"\n").unwrap();
    let server = serve(&env, &["--config", config.to_str().unwrap()]);
    let objects = format!("{}/api/v1/objects", server.url);
    let junk = |i: u8, len: usize| {
        call(
            "PUT",
            &format!("{objects}/packs/ef/{}{i:02x}", "ef".repeat(31)),
            Some(&evil),
            &vec![i; len],
        )
    };
    assert_eq!((junk(1, 126 << 10).0, junk(2, 126 << 10).0), (201, 201));
    let (status, v) = junk(3, 8 << 10);
    assert_eq!(status, 429, "{v}");
    assert!(v.to_string().contains("agent_upload_per_day"), "{v}");
    let out = remote_backup(&env, &server, &evil, &guest_disk(&env, "vm3"), "vm");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("agent_upload_per_day"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Another agent's quota is its own (its backup stores more than the
    // 4 KiB the first left).
    remote_backup_ok(&env, &server, &honest, &guest_disk(&env, "other2"), "other");
}
