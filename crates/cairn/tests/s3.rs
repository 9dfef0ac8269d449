//! The vault on S3 with Object Lock, against a real S3 API: moto's server
//! mode (from PyPI, installed by scripts/install-deps), started per test
//! on a free loopback port.

mod common;
use common::*;
use serde_json::Value;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Moto {
    child: Child,
    endpoint: String,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn moto() -> Moto {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new("moto_server")
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("moto_server (pip install 'moto[server]'; scripts/install-deps does)");
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "moto_server did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    Moto {
        child,
        endpoint: format!("http://127.0.0.1:{port}"),
    }
}

struct S3Env {
    moto: Moto,
    dir: tempfile::TempDir,
    url: String,
}

impl S3Env {
    fn new(bucket: &str) -> S3Env {
        S3Env {
            moto: moto(),
            dir: tempfile::tempdir().unwrap(),
            url: format!("s3://{bucket}/vault"),
        }
    }

    fn path(&self, name: &str) -> std::path::PathBuf {
        self.dir.path().join(name)
    }

    fn run(&self, args: &[&str]) -> std::process::Output {
        self.run_with(args, &[])
    }

    fn run_with(&self, args: &[&str], extra: &[(&str, &str)]) -> std::process::Output {
        self.command(args, extra).output().unwrap()
    }

    /// `run_with`, started and left running.
    fn spawn_with(&self, args: &[&str], extra: &[(&str, &str)]) -> Child {
        self.command(args, extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    fn command(&self, args: &[&str], extra: &[(&str, &str)]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_cairn"));
        c.args(args)
            .env("CAIRN_VAULT", &self.url)
            .env("CAIRN_PASSWORD", PASSWORD)
            .env("CAIRN_CACHE_DIR", self.path("cache"))
            .env("CAIRN_STATE_DIR", self.path("state"))
            .env("AWS_ENDPOINT_URL", &self.moto.endpoint)
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .env("AWS_REGION", "us-east-1")
            .env_remove("AWS_PROFILE")
            .envs(extra.iter().copied());
        c
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "cairn {args:?}: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// `run_with`, which must succeed.
    fn ok_with(&self, args: &[&str], extra: &[(&str, &str)]) -> std::process::Output {
        let out = self.run_with(args, extra);
        assert!(
            out.status.success(),
            "cairn {args:?}: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    fn json(&self, args: &[&str]) -> Value {
        let mut a = args.to_vec();
        a.push("--json");
        serde_json::from_str(&self.ok(&a)).unwrap()
    }

    fn tool(&self, args: &[&str]) -> String {
        let bucket = self
            .url
            .trim_start_matches("s3://")
            .split('/')
            .next()
            .unwrap();
        self.tool_on(bucket, args)
    }

    fn tool_on(&self, bucket: &str, args: &[&str]) -> String {
        let script = in_package("tests/tools/s3.py");
        let mut all = vec![self.moto.endpoint.as_str(), args[0], bucket];
        all.extend_from_slice(&args[1..]);
        sh("python3", &[&[script.as_str()][..], &all].concat())
    }

    fn audit(&self) -> serde_json::Map<String, Value> {
        serde_json::from_str::<Value>(&self.tool(&["audit"]))
            .unwrap()
            .as_object()
            .unwrap()
            .clone()
    }
}

#[test]
fn a_bucket_without_object_lock_is_refused_unless_asked() {
    let env = S3Env::new("plain-bucket");
    let missing = env.run(&["init"]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("--create-bucket"));
    env.tool(&["plain-bucket"]);
    let out = env.run(&["init"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no Object Lock"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(env.audit().is_empty(), "nothing written");
    let v = env.json(&["init", "--no-lock"]);
    assert_eq!(v["object_lock"], false);
}

/// The one folder under `dir` (a remote vault's folder in a cache or
/// state folder).
fn only_folder(dir: &Path) -> std::path::PathBuf {
    let mut all: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(all.len(), 1, "{all:?}");
    all.remove(0)
}

#[test]
fn a_servers_tokens_for_an_s3_vault_are_state_that_clearing_the_cache_keeps() {
    let env = S3Env::new("tokens");
    env.json(&["init", "--create-bucket"]);
    let made = env.json(&["token", "create", "--role", "admin"]);
    let listed = || env.json(&["token", "list"]);
    assert_eq!(listed()[0]["id"], made["id"]);
    // Not in the cache: clearing it loses no token.
    std::fs::remove_dir_all(env.path("cache")).unwrap();
    assert_eq!(listed()[0]["id"], made["id"]);
    // The same store by another name (a host name for its address, a
    // proxy in front): the same tokens.
    let by_name = env.moto.endpoint.replace("127.0.0.1", "localhost");
    let out = env.ok_with(
        &["token", "list", "--json"],
        &[("AWS_ENDPOINT_URL", by_name.as_str())],
    );
    let other: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(other[0]["id"], made["id"], "{other:#}");
    // Where earlier versions kept them (the cache folder, then a state
    // folder named by the endpoint too), they are moved to the state
    // folder, once.
    let state = only_folder(&env.path("state"));
    env.ok(&["snapshots"]);
    let cache = only_folder(&env.path("cache"));
    let by_endpoint = env.path("state").join(cache.file_name().unwrap());
    for old in [cache, by_endpoint] {
        std::fs::create_dir_all(old.join("local")).unwrap();
        std::fs::rename(state.join("local/server"), old.join("local/server")).unwrap();
        let out = env.ok_with(&["token", "list", "--json"], &[]);
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("moved the server's tokens"),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!old.join("local/server").exists());
        assert!(state.join("local/server").is_dir());
        assert_eq!(listed()[0]["id"], made["id"]);
    }
}

#[test]
fn backup_restore_verify_on_s3_with_every_object_locked() {
    let env = S3Env::new("cairn-vault");
    let v = env.json(&["init", "--create-bucket", "--retention", "30d"]);
    assert_eq!(v["object_lock"], true);
    let root = env.path("root");
    populate(&root);
    let day1 = env.path("day1.img");
    gpt_ext4_image(&day1, &root, 48);
    env.json(&[
        "backup",
        day1.to_str().unwrap(),
        "--name",
        "vm",
        "--time",
        "2026-05-01T00:00:00Z",
    ]);
    let day2 = env.path("day2.img");
    sh(
        "cp",
        &[
            "--sparse=always",
            day1.to_str().unwrap(),
            day2.to_str().unwrap(),
        ],
    );
    replace_guest_file(&day2, "/home/alice/notes.txt", &text(40_000, 7));
    env.json(&[
        "backup",
        day2.to_str().unwrap(),
        "--name",
        "vm",
        "--time",
        "2026-05-02T00:00:00Z",
    ]);

    let out = env.path("out.img");
    env.ok(&["restore", "vm@latest", "--to", out.to_str().unwrap()]);
    assert!(same_bytes(&out, &day2));
    env.ok(&[
        "restore",
        "vm@-1",
        "--to",
        env.path("out1.img").to_str().unwrap(),
    ]);
    assert!(same_bytes(&env.path("out1.img"), &day1));
    env.ok(&["verify", "--read-data"]);
    // Looking inside works the same on S3.
    assert!(
        env.ok(&["cat", "vm@latest:/etc/hostname"])
            .contains("guest")
    );

    // Every object carries a compliance lock past the retention.
    let objects = env.audit();
    assert!(objects.len() >= 10, "{objects:?}");
    let min_until = chrono::Utc::now() + chrono::Duration::days(30);
    for (key, o) in &objects {
        assert_eq!(o["mode"], "COMPLIANCE", "{key}");
        let until: chrono::DateTime<chrono::Utc> = o["until"].as_str().unwrap().parse().unwrap();
        assert!(until > min_until, "{key} locked until {until}");
        assert_eq!(o["versions"], 1, "{key} written once");
    }
    let pack = objects
        .keys()
        .find(|k| k.contains("/packs/"))
        .unwrap()
        .clone();
    let manifest = objects
        .keys()
        .find(|k| k.contains("/snapshots/"))
        .unwrap()
        .clone();

    // A prune before the retention ends deletes nothing.
    env.ok(&["forget", "--keep-last", "1", "--prune"]);
    assert_eq!(env.audit().len(), objects.len());

    // Deleting a locked version fails; an overwrite only adds a version.
    assert_eq!(env.tool(&["delete-locked", &pack]).trim(), "AccessDenied");
    assert_eq!(env.tool(&["overwrite", &manifest]).trim(), "2");
    // Cairn sees the overwritten object as damage (the original version is
    // still in the bucket, locked).
    let v = env.run(&["verify"]);
    assert_eq!(
        v.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&v.stdout)
    );
}

/// Someone holding the bucket's keys but not the password edits the
/// config: "no Object Lock" still gets every new object locked (the bucket
/// says whether objects are locked), and a config with a shorter
/// retention is not the one the vault's key was made with (the key holds
/// what the settings were): the config Cairn wrote is read from below it.
#[test]
fn a_config_edited_in_the_bucket_unlocks_nothing() {
    let env = S3Env::new("cairn-edited");
    env.ok(&["init", "--create-bucket"]);
    let img = env.path("d.img");
    std::fs::write(&img, noise(2 << 20, 8)).unwrap();
    env.ok(&["backup", "-q", img.to_str().unwrap(), "--name", "d"]);
    env.tool_on(
        "cairn-edited",
        &["edit-json", "vault/config", "object_lock", "false"],
    );
    // A new machine (no cache) reads the edited config.
    std::fs::remove_dir_all(env.path("cache")).unwrap();
    std::fs::write(&img, noise(2 << 20, 9)).unwrap();
    env.ok(&["backup", "-q", img.to_str().unwrap(), "--name", "d"]);
    let objects = env.audit();
    let snapshots: Vec<_> = objects
        .iter()
        .filter(|(k, _)| k.contains("/snapshots/"))
        .collect();
    assert_eq!(snapshots.len(), 2, "{objects:?}");
    for (k, o) in objects.iter().filter(|(k, _)| !k.ends_with("/config")) {
        assert_eq!(o["mode"], "COMPLIANCE", "{k} written unlocked");
    }
    env.tool_on(
        "cairn-edited",
        &["edit-json", "vault/config", "retention_secs", "1"],
    );
    std::fs::remove_dir_all(env.path("cache")).unwrap();
    // The edited config opens nothing: the one Cairn wrote, kept below it
    // by Object Lock, is read instead, and said.
    let out = env.run(&["snapshots", "--json"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(
        err.contains("config: the store serves a version Cairn did not write")
            && err.contains("cairn undelete"),
        "{err}"
    );
    let listed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 2, "{listed:#}");
}

/// Someone holding the bucket's keys puts another vault's config and keys
/// (made with a password of theirs) over the vault's. A new machine
/// (no cache) opens the vault with the versions Cairn wrote, kept below
/// by Object Lock, and says so — not "wrong password"; it keeps no copy
/// of theirs, and once `cairn undelete` put Cairn's back on top it opens
/// without a word.
#[test]
fn a_config_and_keys_put_over_the_vaults_are_passed_over_for_cairns_own() {
    let env = S3Env::new("cairn-config-over");
    env.ok(&["init", "--create-bucket"]);
    let img = env.path("d.img");
    std::fs::write(&img, noise(1 << 20, 12)).unwrap();
    env.ok(&["backup", "-q", img.to_str().unwrap(), "--name", "d"]);
    let theirs = env.run_with(
        &["init", "-q", "--vault", "s3://cairn-config-over/evil"],
        &[
            ("CAIRN_PASSWORD", "theirs"),
            ("CAIRN_CACHE_DIR", env.path("their-cache").to_str().unwrap()),
        ],
    );
    assert!(theirs.status.success(), "{theirs:?}");
    env.tool(&["copy-over", "evil/", "vault/"]);
    std::fs::remove_dir_all(env.path("cache")).unwrap();
    for _ in 0..2 {
        let out = env.run(&["snapshots", "--json"]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{err}");
        assert!(
            err.contains("config: the store serves a version Cairn did not write")
                && err.contains("keys/")
                && err.contains("cairn undelete"),
            "{err}"
        );
        let listed: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(listed.as_array().unwrap().len(), 1, "{listed:#}");
    }
    let out = env.path("out.img");
    env.ok(&["restore", "d@latest", "--to", out.to_str().unwrap()]);
    assert!(same_bytes(&out, &img));
    env.ok(&["undelete"]);
    let again = env.run(&["snapshots"]);
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(again.status.success(), "{err}");
    assert!(!err.contains("did not write"), "{err}");
}

/// `aws s3 rm --recursive` by whoever holds the bucket's keys: the vault
/// is said to be deleted (not "no vault here, init one"), init refuses to
/// make a new one over it, and `cairn undelete` (with no password) takes
/// the delete markers away: every snapshot restores as before.
#[test]
fn a_vault_deleted_from_the_bucket_is_brought_back() {
    let env = S3Env::new("cairn-deleted");
    env.ok(&["init", "--create-bucket"]);
    let img = env.path("d.img");
    std::fs::write(&img, noise(3 << 20, 10)).unwrap();
    env.ok(&["backup", "-q", img.to_str().unwrap(), "--name", "d"]);
    // A live vault is one, not a deleted one.
    let again = env.run(&["init"]);
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(err.contains("already exists"), "{err}");
    // Only the manifests deleted: the vault looks empty, but verify says
    // what happened and prune deletes nothing (the packs would look unused).
    let id = env.json(&["snapshots"])[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    env.tool_on("cairn-deleted", &["delete-all", "vault/snapshots/"]);
    // Listing and restoring say where the snapshot went.
    let listed = env.run(&["snapshots"]);
    assert_eq!(listed.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&listed.stderr).contains("cairn undelete"));
    let r = env.run(&[
        "restore",
        &format!("d@{}", &id[..8]),
        "--to",
        env.path("gone.img").to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&r.stderr);
    assert_eq!(r.status.code(), Some(1), "{err}");
    assert!(err.contains("cairn undelete"), "{err}");
    let v = env.run(&["verify"]);
    let said = String::from_utf8_lossy(&v.stdout);
    assert_eq!(v.status.code(), Some(3), "{said}");
    assert!(said.contains("cairn undelete"), "{said}");
    let p = env.run(&["prune"]);
    let err = String::from_utf8_lossy(&p.stderr);
    assert_eq!(p.status.code(), Some(1), "{err}");
    assert!(err.contains("prune stopped"), "{err}");
    // Only the keys deleted: no password opens the vault, and the error
    // says the store kept them.
    env.tool_on("cairn-deleted", &["delete-all", "vault/keys/"]);
    std::fs::remove_dir_all(env.path("cache")).unwrap();
    let out = env.run(&["snapshots"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("keys were deleted") && err.contains("cairn undelete"),
        "{err}"
    );
    // Everything deleted, twice over (markers stacked on markers).
    let removed = env.tool_on("cairn-deleted", &["delete-all"]);
    assert!(removed.trim().parse::<u32>().unwrap() > 3, "{removed}");
    env.tool_on("cairn-deleted", &["delete-all"]);
    std::fs::remove_dir_all(env.path("cache")).unwrap();
    for args in [&["snapshots"][..], &["init"][..]] {
        let out = env.run(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(err.contains("cairn undelete"), "{args:?}: {err}");
    }
    let back = env.ok(&["undelete"]);
    assert!(back.contains("objects brought back"), "{back}");
    std::fs::remove_dir_all(env.path("cache")).unwrap();
    let out = env.path("back.img");
    env.ok(&["restore", "d@latest", "--to", out.to_str().unwrap()]);
    assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&img).unwrap());
    env.ok(&["verify", "--read-data"]);
    assert!(env.ok(&["undelete"]).contains("nothing was deleted"));
}

/// Someone holding the bucket's keys puts versions of their own over the
/// vault's objects (random bytes of each one's size, as ransomware that
/// re-encrypts a bucket in place leaves): Object Lock kept Cairn's below,
/// so the snapshot still restores from them (said), verify names every
/// object overwritten, and undelete copies Cairn's versions back on top.
#[test]
fn objects_overwritten_in_the_bucket_are_read_from_below_and_put_back() {
    let env = S3Env::new("cairn-overwritten");
    env.ok(&["init", "--create-bucket"]);
    let img = env.path("d.img");
    std::fs::write(&img, noise(3 << 20, 12)).unwrap();
    env.ok(&["backup", "-q", img.to_str().unwrap(), "--name", "d"]);
    let mut overwritten = 0;
    for dir in ["packs/", "index/", "maps/", "snapshots/", "packs/"] {
        let n = env.tool(&["overwrite-all", &format!("vault/{dir}")]);
        overwritten += n.trim().parse::<usize>().unwrap();
    }
    assert!(overwritten >= 5, "{overwritten}");
    std::fs::remove_dir_all(env.path("cache")).unwrap();

    let out = env.path("out.img");
    let r = env.run(&["restore", "d@latest", "--to", out.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(r.status.success(), "{err}");
    assert!(same_bytes(&out, &img));
    assert!(err.contains("cairn undelete"), "{err}");

    let v = env.run(&["verify", "--read-data", "--json"]);
    assert_eq!(v.status.code(), Some(3));
    let report: Value = serde_json::from_slice(&v.stdout).unwrap();
    assert_eq!(
        report["damaged_snapshots"],
        serde_json::json!([]),
        "{report:#}"
    );
    let named = report["damaged_objects"].as_array().unwrap();
    for dir in ["packs/", "index/", "maps/", "snapshots/"] {
        assert!(
            named
                .iter()
                .any(|o| o.to_string().contains(dir) && o.to_string().contains("cairn undelete")),
            "{dir}: {report:#}"
        );
    }

    // A replica made now gets Cairn's versions, not the ones on top.
    let replica = env.path("replica");
    env.ok(&["replicate", "--to", replica.to_str().unwrap()]);
    let from_replica = env.path("from-replica.img");
    let r = env.run(&[
        "restore",
        "d@latest",
        "--vault",
        replica.to_str().unwrap(),
        "--to",
        from_replica.to_str().unwrap(),
    ]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    assert!(same_bytes(&from_replica, &img));

    // The config too: the vault opens with the one Cairn wrote, and says
    // how to put it back on top.
    env.tool(&["overwrite-all", "vault/config"]);
    std::fs::remove_dir_all(env.path("cache")).unwrap();
    let r = env.run(&["snapshots"]);
    let err = String::from_utf8_lossy(&r.stderr);
    assert_eq!(r.status.code(), Some(0), "{err}");
    assert!(
        err.contains("config: the store serves a version Cairn did not write"),
        "{err}"
    );

    let said = env.ok(&["undelete"]);
    assert!(said.contains("overwritten objects put back"), "{said}");
    std::fs::remove_dir_all(env.path("cache")).unwrap();
    let v = env.run(&["verify", "--read-data"]);
    assert!(
        v.status.success(),
        "{}{}",
        String::from_utf8_lossy(&v.stdout),
        String::from_utf8_lossy(&v.stderr)
    );
    let r = env.run(&[
        "restore",
        "d@latest",
        "--to",
        env.path("again.img").to_str().unwrap(),
    ]);
    assert!(
        r.status.success() && r.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&r.stderr)
    );
    assert!(same_bytes(&env.path("again.img"), &img));
    assert!(
        env.ok(&["undelete"])
            .contains("nothing was deleted or overwritten")
    );
}

#[test]
fn a_backup_killed_mid_upload_leaves_a_vault_that_verifies_and_resumes() {
    let env = S3Env::new("cairn-kill");
    env.ok(&["init", "--create-bucket"]);
    let img = env.path("big.img");
    std::fs::write(&img, noise(192 << 20, 3)).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(["backup", img.to_str().unwrap(), "--name", "big", "-q"])
        .env("CAIRN_VAULT", &env.url)
        .env("CAIRN_PASSWORD", PASSWORD)
        .env("CAIRN_CACHE_DIR", env.path("cache"))
        .env("AWS_ENDPOINT_URL", &env.moto.endpoint)
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_REGION", "us-east-1")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Kill it once the first pack is in the bucket (moto answers
    // unsigned listings, so a plain curl polls quickly).
    let listing = format!(
        "{}/cairn-kill?list-type=2&prefix=vault/packs/",
        env.moto.endpoint
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if sh("curl", &["-s", &listing]).contains("<Key>") {
            break;
        }
        assert!(Instant::now() < deadline, "no pack uploaded");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let objects = env.audit();
    let packs = objects.keys().filter(|k| k.contains("/packs/")).count();
    let indexed = objects.keys().filter(|k| k.contains("/index/")).count();
    assert!(packs >= 1);
    assert!(
        objects.keys().all(|k| !k.contains("/snapshots/")),
        "killed before the manifest"
    );
    env.ok(&["verify", "--read-data"]);
    let v = env.json(&["backup", img.to_str().unwrap(), "--name", "big"]);
    assert_eq!(env.json(&["snapshots"]).as_array().unwrap().len(), 1);
    // Packs whose index made it before the kill are reused, not uploaded
    // again (a pack without its index is an orphan prune removes later).
    let stored = v["new_bytes_stored"].as_u64().unwrap();
    if indexed > 0 {
        assert!(
            stored < 192 << 20,
            "{indexed} indexed packs, yet all stored again"
        );
    }
    let out = env.path("out.img");
    env.ok(&["restore", "big@latest", "--to", out.to_str().unwrap()]);
    assert!(same_bytes(&out, &img));
}

#[test]
fn prune_extends_the_locks_of_what_is_still_in_use_and_the_cache_rebuilds() {
    let env = S3Env::new("cairn-renew");
    // A 2 s retention and a 10 s margin: locks of 12 s, renewed once less
    // than half of that is left (wide enough that a loaded machine still
    // runs the first prune before that).
    let short = [("CAIRN_S3_LOCK_MARGIN_SECS", "10")];
    let ok = |args: &[&str]| env.ok_with(args, &short);
    ok(&["init", "--create-bucket", "--retention", "2s"]);
    let img = env.path("d.img");
    std::fs::write(&img, noise(3 << 20, 1)).unwrap();
    ok(&["backup", img.to_str().unwrap(), "--name", "d"]);
    let first = env.audit();
    let until = |o: &serde_json::Map<String, Value>, k: &str| -> chrono::DateTime<chrono::Utc> {
        o[k]["until"].as_str().unwrap().parse().unwrap()
    };
    // Nothing to renew yet.
    let r: Value = serde_json::from_slice(&ok(&["prune", "--json"]).stdout).unwrap();
    assert_eq!(r["locks_renewed"], 0, "{r:#}");
    std::thread::sleep(Duration::from_millis(7000));
    let r: Value = serde_json::from_slice(&ok(&["prune", "--json"]).stdout).unwrap();
    assert_eq!(r["packs_deleted"], 0);
    let renewed = r["locks_renewed"].as_u64().unwrap() as usize;
    let after = env.audit();
    let in_use: Vec<&String> = after.keys().filter(|k| !k.contains("/pins/")).collect();
    assert_eq!(renewed, in_use.len(), "every object still in use: {r:#}");
    for k in in_use {
        assert!(until(&after, k) > until(&first, k), "{k} was extended");
    }

    // The local copies of indexes and manifests are only a cache.
    let cache = env.path("cache");
    let cached = walk_count(&cache);
    assert!(cached > 0);
    std::fs::remove_dir_all(&cache).unwrap();
    assert!(env.ok(&["snapshots"]).contains(" d "));
    assert!(walk_count(&cache) > 0, "rebuilt from the bucket");
    // A cached copy cut short (a power cut during its write) is fetched
    // again, not taken for damage in the vault.
    let mut cut = 0;
    let mut stack = vec![cache.clone()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let shown = p.display().to_string();
            if p.is_dir() {
                stack.push(p);
            } else if shown.contains("/cache/index/") || shown.contains("/cache/snapshots/") {
                std::fs::write(&p, b"").unwrap();
                cut += 1;
            }
        }
    }
    assert!(cut >= 2, "{cut} cached files cut");
    ok(&[
        "restore",
        "d@latest",
        "--to",
        env.path("r.img").to_str().unwrap(),
    ]);
    assert_eq!(
        std::fs::read(env.path("r.img")).unwrap(),
        std::fs::read(&img).unwrap()
    );
}

#[test]
fn prune_keeps_locked_the_versions_cairn_wrote_not_the_ones_stacked_on_them() {
    let env = S3Env::new("cairn-renew-originals");
    let short = [("CAIRN_S3_LOCK_MARGIN_SECS", "10")];
    let ok = |args: &[&str]| env.ok_with(args, &short);
    ok(&["init", "--create-bucket", "--retention", "2s"]);
    let img = env.path("d.img");
    std::fs::write(&img, noise(3 << 20, 4)).unwrap();
    ok(&["backup", img.to_str().unwrap(), "--name", "d"]);
    let originals = |env: &S3Env| -> serde_json::Map<String, Value> {
        serde_json::from_str::<Value>(&env.tool(&["originals"]))
            .unwrap()
            .as_object()
            .unwrap()
            .clone()
    };
    let first = originals(&env);
    // Someone holding the bucket's keys re-encrypts every object in place.
    for dir in ["packs/", "index/", "maps/", "snapshots/"] {
        env.tool(&["overwrite-all", &format!("vault/{dir}")]);
    }
    std::thread::sleep(Duration::from_millis(7000));
    let r: Value = serde_json::from_slice(&ok(&["prune", "--json"]).stdout).unwrap();
    assert_eq!(r["packs_deleted"], 0, "{r:#}");
    assert!(r["locks_renewed"].as_u64().unwrap() >= 4, "{r:#}");
    let after = originals(&env);
    let until = |o: &serde_json::Map<String, Value>, k: &str| -> chrono::DateTime<chrono::Utc> {
        o[k]["until"].as_str().unwrap().parse().unwrap()
    };
    let mut stacked = 0;
    for k in first
        .keys()
        .filter(|k| !k.contains("/pins/") && !k.ends_with("/config"))
    {
        if after[k]["versions"].as_u64().unwrap() > 1 {
            stacked += 1;
            assert!(
                until(&after, k) > until(&first, k),
                "{k}: the version Cairn wrote was not kept locked"
            );
        }
    }
    assert!(stacked >= 4, "{stacked}");
    // What Cairn wrote is still what it reads.
    std::fs::remove_dir_all(env.path("cache")).unwrap();
    let out = env.path("out.img");
    ok(&["restore", "d@latest", "--to", out.to_str().unwrap()]);
    assert!(same_bytes(&out, &img));
}

#[test]
fn verify_names_the_config_and_keys_someone_overwrote_even_from_a_warm_cache() {
    let env = S3Env::new("cairn-overwritten-keys");
    env.ok(&["init", "--create-bucket"]);
    let img = env.path("d.img");
    std::fs::write(&img, noise(1 << 20, 6)).unwrap();
    env.ok(&["backup", img.to_str().unwrap(), "--name", "d"]);
    env.tool(&["overwrite-all", "vault/keys/"]);
    env.tool(&["overwrite-all", "vault/config"]);
    env.tool(&["delete-all", "vault/maps/"]);
    let v = env.run(&["verify", "--json"]);
    assert_eq!(
        v.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&v.stderr)
    );
    let report: Value = serde_json::from_slice(&v.stdout).unwrap();
    let named: Vec<String> = report["damaged_objects"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o.to_string())
        .collect();
    for want in ["\"config\"", "\"keys/", "\"maps/"] {
        assert!(named.iter().any(|n| n.contains(want)), "{want}: {named:#?}");
    }
    assert!(
        !named.iter().any(|n| n.contains("vault/")),
        "named as in the vault: {named:#?}"
    );
    env.ok(&["undelete"]);
    env.ok(&["verify"]);
}

#[test]
fn prune_aborts_the_uploads_killed_backups_left() {
    let env = S3Env::new("cairn-uploads");
    env.ok(&["init", "--create-bucket"]);
    let img = env.path("d.img");
    std::fs::write(&img, noise(1 << 20, 5)).unwrap();
    env.ok(&["backup", img.to_str().unwrap(), "--name", "d"]);
    env.tool(&["start-upload", "vault/packs/ab/abandoned"]);
    env.tool(&["start-upload", "elsewhere/not-ours"]);
    assert_eq!(env.tool(&["uploads"]).trim(), "2");
    // The first prune to see an upload only notes it (it may be a running
    // backup's); one a given time later aborts it if it is still there.
    let r = env.json(&["prune"]);
    assert_eq!(r["uploads_aborted"], 0, "{r:#}");
    assert_eq!(env.tool(&["uploads"]).trim(), "2");
    let r: Value = serde_json::from_slice(
        &env.ok_with(&["prune", "--json"], &[("CAIRN_S3_STALE_UPLOAD_SECS", "0")])
            .stdout,
    )
    .unwrap();
    assert_eq!(r["uploads_aborted"], 1, "{r:#}");
    assert_eq!(env.tool(&["uploads"]).trim(), "1", "only the vault's");
    env.ok(&["verify"]);
}

fn walk_count(dir: &Path) -> usize {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return 0;
    };
    rd.map(|e| {
        let p = e.unwrap().path();
        if p.is_dir() { walk_count(&p) } else { 1 }
    })
    .sum()
}

#[test]
fn replicate_local_to_s3_to_local_keeps_snapshots_verdicts_and_pins() {
    let env = S3Env::new("cairn-replica");
    let local = Env::new("30d", &[]);
    let root = local.path("root");
    populate(&root);
    let day1 = local.path("day1.img");
    gpt_ext4_image(&day1, &root, 48);
    let a = local.backup(&day1, "vm", "2026-06-01T00:00:00Z");
    let day2 = local.path("day2.img");
    sh(
        "cp",
        &[
            "--sparse=always",
            day1.to_str().unwrap(),
            day2.to_str().unwrap(),
        ],
    );
    replace_guest_file(&day2, "/home/alice/notes.txt", &text(40_000, 9));
    local.backup(&day2, "vm", "2026-06-02T00:00:00Z");
    let a_id = a["id"].as_str().unwrap().to_string();
    local.ok(&["pin", &format!("vm@{}", &a_id[..8])]);
    let scan = local.run(&["scan", "vm@latest", "--json"]);
    assert!(scan.status.code().is_some());

    let s3_url = "s3://cairn-replica/copy";
    let to_s3 = |extra: &[&str]| {
        let mut args = vec![
            "replicate",
            "--from",
            local.vault.to_str().unwrap(),
            "--to",
            s3_url,
            "--json",
        ];
        args.extend_from_slice(extra);
        let out = env.run(&args);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<Value>(&out.stdout).unwrap()
    };
    let r = to_s3(&["--create-bucket"]);
    assert_eq!(r["snapshots_copied"].as_array().unwrap().len(), 2, "{r:#}");
    for (k, o) in env.audit() {
        if !k.contains("/pins/") {
            assert_eq!(o["mode"], "COMPLIANCE", "{k}");
        }
    }
    // Again: nothing is missing, nothing is sent.
    let again = to_s3(&[]);
    assert_eq!(again["objects_copied"], 0, "{again:#}");
    assert_eq!(again["snapshots_present"], 2);

    // A third day: only what it added travels.
    let day3 = local.path("day3.img");
    sh(
        "cp",
        &[
            "--sparse=always",
            day2.to_str().unwrap(),
            day3.to_str().unwrap(),
        ],
    );
    replace_guest_file(&day3, "/etc/hostname", b"renamed\n");
    local.backup(&day3, "vm", "2026-06-03T00:00:00Z");
    let third = to_s3(&[]);
    assert_eq!(third["snapshots_copied"].as_array().unwrap().len(), 1);
    assert!(
        third["bytes_copied"].as_u64().unwrap() * 4 < r["bytes_copied"].as_u64().unwrap(),
        "an incremental replication sends little: {third:#} vs {r:#}"
    );

    // S3 to another bucket (a second site): everything, locked there too.
    let out = env.run(&[
        "replicate",
        "--from",
        s3_url,
        "--to",
        "s3://cairn-replica-2/site-b",
        "--create-bucket",
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let b: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(b["snapshots_copied"].as_array().unwrap().len(), 3, "{b:#}");
    let site_b: Value = serde_json::from_str(&env.tool_on("cairn-replica-2", &["audit"])).unwrap();
    let site_b = site_b.as_object().unwrap();
    assert!(site_b.len() > 10);
    for (k, o) in site_b {
        if !k.contains("/pins/") {
            assert_eq!(o["mode"], "COMPLIANCE", "{k}");
        }
    }

    // And back from S3 to a new local vault.
    let back = env.path("back");
    let out = env.run(&[
        "replicate",
        "--from",
        s3_url,
        "--to",
        back.to_str().unwrap(),
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let local_back = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_cairn"))
            .args(args)
            .env("CAIRN_VAULT", &back)
            .env("CAIRN_PASSWORD", PASSWORD)
            .output()
            .unwrap();
        assert!(
            out.status.success() || out.status.code() == Some(3),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    local_back(&["verify", "--read-data"]);
    let out = env.path("r1.img");
    local_back(&[
        "restore",
        &format!("vm@{}", &a_id[..8]),
        "--to",
        out.to_str().unwrap(),
    ]);
    assert!(same_bytes(&out, &day1));
    local_back(&[
        "restore",
        "vm@latest",
        "--to",
        env.path("r3.img").to_str().unwrap(),
    ]);
    assert!(same_bytes(&env.path("r3.img"), &day3));
    let snaps: Value = serde_json::from_str(&local_back(&["snapshots", "--json"])).unwrap();
    let pinned: Vec<&str> = snaps
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["pinned"] == true)
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    assert_eq!(pinned, vec![a_id.as_str()], "the pin came along");
    let t: Value = serde_json::from_str(&local_back(&["timeline", "vm", "--json"])).unwrap();
    assert!(
        t["snapshots"][1]["scan"]["verdict"].is_string(),
        "the scan verdict came along: {t:#}"
    );
}

#[test]
fn large_packs_go_up_in_parts_and_are_locked_like_the_rest() {
    let env = S3Env::new("cairn-parts");
    env.ok(&["init", "--create-bucket", "--pack-mib", "48"]);
    let img = env.path("big.img");
    std::fs::write(&img, noise(110 << 20, 8)).unwrap();
    env.ok(&["backup", img.to_str().unwrap(), "--name", "big", "-q"]);
    let objects = env.audit();
    // An ETag with a part count ("…-3") is a multipart upload.
    let multipart = objects
        .iter()
        .filter(|(k, o)| k.contains("/packs/") && o["etag"].as_str().unwrap().contains('-'))
        .count();
    assert!(multipart >= 2, "{objects:?}");
    for (k, o) in &objects {
        assert_eq!(o["mode"], "COMPLIANCE", "{k}");
    }
    let out = env.path("out.img");
    env.ok(&["restore", "big@latest", "--to", out.to_str().unwrap()]);
    assert!(same_bytes(&out, &img));
    env.ok(&["verify", "--read-data"]);
}

#[test]
fn what_another_machine_pruned_is_stored_again_despite_a_local_cache() {
    let env = S3Env::new("cairn-two-hosts");
    let a = env.path("cache-a");
    let b = env.path("cache-b");
    let host = |cache: &Path, args: &[&str]| {
        let out = env.run_with(
            args,
            &[
                ("CAIRN_CACHE_DIR", cache.to_str().unwrap()),
                ("CAIRN_S3_LOCK_MARGIN_SECS", "1"),
            ],
        );
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    host(&a, &["init", "--create-bucket", "--retention", "1s"]);
    let x = env.path("x.img");
    std::fs::write(&x, noise(2 << 20, 11)).unwrap();
    let y = env.path("y.img");
    std::fs::write(&y, noise(2 << 20, 12)).unwrap();
    host(&a, &["backup", x.to_str().unwrap(), "--name", "d"]);
    // Host B reads X's snapshot: its map and index are now in B's cache.
    host(
        &b,
        &[
            "restore",
            "d@latest",
            "--to",
            env.path("b.img").to_str().unwrap(),
        ],
    );
    host(&a, &["backup", y.to_str().unwrap(), "--name", "d"]);
    std::thread::sleep(Duration::from_millis(2500));
    // Host A forgets X and prunes its map, index and pack.
    let pruned = host(&a, &["forget", "--keep-last", "1", "--prune", "--json"]);
    assert!(pruned.contains("\"maps_deleted\": 1"), "{pruned}");
    // Host B backs X up again: what its cache still holds must be stored.
    host(&b, &["backup", x.to_str().unwrap(), "--name", "d"]);
    // A third host, with nothing cached, restores it.
    let c = env.path("cache-c");
    let out = env.path("c.img");
    host(&c, &["restore", "d@latest", "--to", out.to_str().unwrap()]);
    assert!(same_bytes(&out, &x));
    host(&c, &["verify", "--read-data"]);
}

/// Two hosts, one bucket, and no lock between them: host B prunes while
/// host A's backup is running and reuses a pack that B finds unreferenced
/// and past its lock. Whatever the interleaving, no snapshot may point at
/// deleted data: either A extended the pack's lock first (the store then
/// refuses B's delete) or B deleted it first (A's backup then fails when
/// it extends that lock, and writes no snapshot).
#[test]
fn a_prune_on_another_host_never_deletes_what_a_running_backup_reuses() {
    let env = S3Env::new("cairn-race");
    let (cache_a, cache_b) = (env.path("cache-a"), env.path("cache-b"));
    // Locks of 1 s + 6 s: the old pack's lock has ended when the race
    // begins, those of the packs written during it have not (in use, the
    // margin is 7 days).
    let margin = ("CAIRN_S3_LOCK_MARGIN_SECS", "6");
    let a = [("CAIRN_CACHE_DIR", cache_a.to_str().unwrap()), margin];
    let b = [("CAIRN_CACHE_DIR", cache_b.to_str().unwrap()), margin];
    let ok = |host: &[(&str, &str)], cmd: &[&str]| {
        String::from_utf8(env.ok_with(cmd, host).stdout).unwrap()
    };
    ok(&b, &["init", "--create-bucket", "--retention", "1s"]);
    let old = noise(8 << 20, 21);
    let old_img = env.path("old.img");
    std::fs::write(&old_img, &old).unwrap();
    ok(
        &b,
        &["backup", "-q", old_img.to_str().unwrap(), "--name", "old"],
    );
    let other = env.path("other.img");
    std::fs::write(&other, noise(1 << 20, 23)).unwrap();
    ok(
        &b,
        &["backup", "-q", other.to_str().unwrap(), "--name", "old"],
    );
    // Past the retention and the locks, the first snapshot is forgotten:
    // its pack is unreferenced, and a prune may delete it.
    std::thread::sleep(Duration::from_millis(7500));
    ok(&b, &["forget", "old", "--keep-last", "1"]);

    // Host A backs up the old bytes again, and a lot of new ones after
    // them (the upload keeps the backup running); host B prunes meanwhile.
    let mut new = old.clone();
    new.extend(noise(160 << 20, 22));
    let new_img = env.path("new.img");
    std::fs::write(&new_img, &new).unwrap();
    let backup = env.spawn_with(
        &["backup", "-q", new_img.to_str().unwrap(), "--name", "new"],
        &a,
    );
    std::thread::sleep(Duration::from_millis(300));
    let pruned: Value = serde_json::from_str(&ok(&b, &["prune", "--json"])).unwrap();
    let backup = backup.wait_with_output().unwrap();
    let listed: Value = serde_json::from_str(&ok(&b, &["snapshots", "--json"])).unwrap();
    let snapshots = listed.as_array().unwrap().len();
    eprintln!(
        "prune deleted {} packs; the backup {}",
        pruned["packs_deleted"],
        if backup.status.success() {
            "succeeded"
        } else {
            "failed"
        }
    );
    if backup.status.success() {
        assert_eq!(snapshots, 2, "{listed:#}");
    } else {
        // It failed cleanly: said why, wrote no snapshot.
        let err = String::from_utf8_lossy(&backup.stderr);
        assert!(err.contains("pruned"), "{err}");
        assert_eq!(snapshots, 1, "{listed:#}");
    }
    // Every snapshot left reads whole, and a backup run again stores what
    // it needs and restores the bytes.
    ok(&b, &["verify", "--read-data"]);
    ok(
        &a,
        &["backup", "-q", new_img.to_str().unwrap(), "--name", "new"],
    );
    let out = env.path("out.img");
    ok(
        &b,
        &["restore", "new@latest", "--to", out.to_str().unwrap()],
    );
    assert!(same_bytes(&out, &new_img));
    ok(&b, &["verify", "--read-data"]);
}

/// A snapshot the policy drops while the store's lock on its manifest
/// still runs (the lock outlives the retention by a margin): forget does
/// not fail on the refused delete, the snapshot is gone from listings at
/// once, and a prune after the lock ends deletes its manifest and note.
#[test]
fn forget_on_a_locked_bucket_forgets_now_and_prune_deletes_when_the_lock_ends() {
    let env = S3Env::new("cairn-forget-locked");
    // Long enough that three backups and a forget end before the first
    // manifest's lock does, on a loaded machine too.
    const MARGIN: u64 = 15;
    let short = [("CAIRN_S3_LOCK_MARGIN_SECS", "15")];
    let ok = |args: &[&str]| env.ok_with(args, &short);
    ok(&["init", "--create-bucket", "--retention", "1s"]);
    let img = env.path("d.img");
    for i in 0..3u64 {
        std::fs::write(&img, noise(1 << 20, i)).unwrap();
        ok(&["backup", "-q", img.to_str().unwrap(), "--name", "d"]);
    }
    let all_written = std::time::Instant::now();
    std::thread::sleep(Duration::from_millis(1500));
    let r: Value =
        serde_json::from_slice(&ok(&["forget", "d", "--keep-last", "1", "--json"]).stdout).unwrap();
    assert_eq!(
        r["forget"]["forgotten"].as_array().unwrap().len(),
        2,
        "{r:#}"
    );
    let listed: Value = serde_json::from_slice(&ok(&["snapshots", "--json"]).stdout).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed:#}");
    let manifests = |audit: &serde_json::Map<String, Value>| {
        audit.keys().filter(|k| k.contains("/snapshots/")).count()
    };
    assert_eq!(manifests(&env.audit()), 3, "still locked, still there");
    // Prune while locked: nothing of the kept snapshot goes, no lock of a
    // forgotten one is renewed, and the run succeeds.
    ok(&["prune"]);
    let locks_end = all_written + Duration::from_secs(1 + MARGIN + 1);
    std::thread::sleep(locks_end.saturating_duration_since(std::time::Instant::now()));
    ok(&["prune"]);
    let after = env.audit();
    assert_eq!(manifests(&after), 1, "{after:#?}");
    env.ok(&["verify", "--read-data"]);
    ok(&[
        "restore",
        "d@latest",
        "--to",
        env.path("r.img").to_str().unwrap(),
    ]);
    assert_eq!(std::fs::read(env.path("r.img")).unwrap(), noise(1 << 20, 2));
}

/// A backup that reuses old data (here: the same disk again, every chunk
/// already stored) keeps that data locked as long as its own manifest:
/// left with the lock it got when first written, it could be deleted by a
/// stolen key long before the new snapshot's retention ends.
#[test]
fn a_backup_extends_the_locks_of_the_old_data_it_reuses() {
    let env = S3Env::new("cairn-reuse-lock");
    let short = [("CAIRN_S3_LOCK_MARGIN_SECS", "3")];
    let ok = |args: &[&str]| env.ok_with(args, &short);
    ok(&["init", "--create-bucket", "--retention", "2s"]);
    let img = env.path("d.img");
    std::fs::write(&img, noise(3 << 20, 7)).unwrap();
    ok(&["backup", "-q", img.to_str().unwrap(), "--name", "d"]);
    // Past the margin: the first backup's locks end before a new
    // snapshot's retention would.
    std::thread::sleep(Duration::from_millis(7500));
    ok(&["backup", "-q", img.to_str().unwrap(), "--name", "d"]);
    // At once again: this machine recorded the locks it just set, so it
    // asks the store about none of them while they reach far enough.
    let third = env.ok_with(
        &["backup", "-q", img.to_str().unwrap(), "--name", "d"],
        &[("CAIRN_S3_LOCK_MARGIN_SECS", "3"), ("CAIRN_LOG", "debug")],
    );
    // The log without its colour codes (ESC [ ... m).
    let mut log = String::new();
    let mut in_code = false;
    for c in String::from_utf8_lossy(&third.stderr).chars() {
        match c {
            '\u{1b}' => in_code = true,
            'm' if in_code => in_code = false,
            _ if !in_code => log.push(c),
            _ => {}
        }
    }
    let asked: usize = log
        .lines()
        .find(|l| l.contains("locks of reused objects"))
        .and_then(|l| l.split("asked=").nth(1))
        .and_then(|rest| {
            rest.chars()
                .take_while(|c| c.is_ascii_digit())
                .collect::<String>()
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no count of locks asked about in {log}"));
    let snaps: Value = serde_json::from_slice(&ok(&["snapshots", "--json"]).stdout).unwrap();
    let until_of = |i: usize| -> chrono::DateTime<chrono::Utc> {
        snaps.as_array().unwrap()[i]["retain_until"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap()
    };
    let newest = until_of(2);
    // The second backup locked what it reused until its own retention
    // plus the 3 s margin; only if the third came later than that are
    // the locks asked about again.
    if newest <= until_of(1) + chrono::Duration::seconds(3) {
        assert_eq!(asked, 0, "{log}");
    } else {
        assert!(asked > 0, "{log}");
    }
    let audit = env.audit();
    let data: Vec<&String> = audit
        .keys()
        .filter(|k| k.contains("/packs/") || k.contains("/index/") || k.contains("/maps/"))
        .collect();
    assert!(data.len() >= 3, "{audit:#?}");
    for k in data {
        let until: chrono::DateTime<chrono::Utc> =
            audit[k]["until"].as_str().unwrap().parse().unwrap();
        assert!(
            until >= newest,
            "{k} locked until {until}, the snapshot until {newest}"
        );
    }
}

/// A store that takes requests and then never answers (paused,
/// overloaded, a proxy holding the connection) is said as each try gives
/// up, and the command ends with an error instead of waiting silently
/// for the global timeout of every try.
#[test]
fn a_store_that_stops_answering_is_said_and_given_up_on() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    // Accepts every connection and holds it, reading, never answering.
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for c in listener.incoming().flatten() {
            held.push(c);
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(["snapshots"])
        .env("CAIRN_VAULT", "s3://stalled/vault")
        .env("CAIRN_PASSWORD", PASSWORD)
        .env("CAIRN_CACHE_DIR", dir.path().join("cache"))
        .env("CAIRN_STATE_DIR", dir.path().join("state"))
        .env("CAIRN_S3_ANSWER_SECS", "1")
        .env("AWS_ENDPOINT_URL", &endpoint)
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_REGION", "us-east-1")
        .env_remove("AWS_PROFILE")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("trying again (2/5)"), "{err}");
}
