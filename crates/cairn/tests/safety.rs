//! What an operator gets when things go wrong: clear errors, a vault that
//! always verifies, nothing deleted before its time.

mod common;
use common::*;
use std::process::Stdio;
use std::time::{Duration, Instant};

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// An init stopped after it wrote its key and before its config (the
/// last thing it writes) leaves a folder that is no vault, and a key of a
/// master key no vault has. A second init there makes the vault; the
/// first password then opens nothing (it used to open the stray key and
/// write data no one could read), and the vault verifies.
#[test]
fn a_key_left_by_an_interrupted_init_opens_nothing() {
    let env = Env::new("30d", &[]);
    let dir = env.path("v2");
    let as_ = |pw: &str| {
        let mut c = env.cmd();
        c.env("CAIRN_VAULT", &dir).env("CAIRN_PASSWORD", pw);
        c
    };
    assert!(
        as_("first")
            .args(["init", "-q"])
            .status()
            .unwrap()
            .success()
    );
    std::fs::remove_file(dir.join("config")).unwrap();
    assert!(
        as_("second")
            .args(["init", "-q"])
            .status()
            .unwrap()
            .success()
    );
    assert_eq!(std::fs::read_dir(dir.join("keys")).unwrap().count(), 2);

    let img = env.path("d.img");
    std::fs::write(&img, text(1 << 20, 3)).unwrap();
    let first = as_("first")
        .args(["backup", "-q", img.to_str().unwrap(), "--name", "d"])
        .output()
        .unwrap();
    assert_eq!(first.status.code(), Some(1), "{}", stderr(&first));
    assert!(
        stderr(&first).contains("wrong password"),
        "{}",
        stderr(&first)
    );
    let second = as_("second")
        .args(["backup", "-q", img.to_str().unwrap(), "--name", "d"])
        .output()
        .unwrap();
    assert!(second.status.success(), "{}", stderr(&second));
    let verify = as_("second")
        .args(["verify", "--read-data"])
        .output()
        .unwrap();
    assert!(verify.status.success(), "{}", stderr(&verify));
}

/// A config edited behind Cairn's back (an attacker holding the storage
/// but not the password shortens retention so that prune, or the store,
/// lets old snapshots go): the vault's key holds what the settings were,
/// so every command refuses it and nothing is read or written; the
/// original config put back, all is as before.
#[test]
fn a_config_changed_outside_cairn_is_refused() {
    let env = Env::new("30d", &[]);
    let img = env.path("d.img");
    std::fs::write(&img, text(1 << 20, 4)).unwrap();
    env.ok(&["backup", "-q", img.to_str().unwrap(), "--name", "d"]);
    let config = env.vault.join("config");
    let original = std::fs::read(&config).unwrap();
    let mut edited: serde_json::Value = serde_json::from_slice(&original).unwrap();
    assert!(edited["retention_secs"].as_u64().unwrap() > 86_400);
    edited["retention_secs"] = 1.into();
    let mut perms = std::fs::metadata(&config).unwrap().permissions();
    #[allow(clippy::permissions_set_readonly_false)]
    perms.set_readonly(false);
    std::fs::set_permissions(&config, perms).unwrap();
    std::fs::write(&config, serde_json::to_vec_pretty(&edited).unwrap()).unwrap();
    for args in [
        &["snapshots"][..],
        &["prune"][..],
        &["backup", "-q", img.to_str().unwrap(), "--name", "d"][..],
    ] {
        let out = env.run(args);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {}", stderr(&out));
        assert!(
            stderr(&out).contains("not the ones this vault was made with"),
            "{}",
            stderr(&out)
        );
    }
    // Verify's own finding: damage, exit 3.
    let out = env.run(&["verify"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    std::fs::write(&config, &original).unwrap();
    let listed = env.ok(&["snapshots"]);
    assert_eq!(
        listed.lines().filter(|l| l.contains(" d ")).count(),
        1,
        "{listed}"
    );
    env.ok(&["verify", "--read-data"]);
}

/// A vault on read-only storage (a copy on write-blocked media, a
/// snapshot of the vault's disk) can still be listed, verified and
/// restored from; what would write says so.
#[test]
fn a_read_only_vault_verifies_and_restores() {
    let env = Env::new("30d", &[]);
    let img = env.path("d.img");
    std::fs::write(&img, text(1 << 20, 5)).unwrap();
    env.ok(&["backup", "-q", img.to_str().unwrap(), "--name", "d"]);
    let vault = env.path("vault");
    // Bind-mounted read-only over itself (as root, which CI is).
    let v = vault.to_str().unwrap();
    sh("mount", &["--bind", v, v]);
    struct Unmount<'a>(&'a str);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(self.0).status();
        }
    }
    let _undo = Unmount(v);
    sh("mount", &["-o", "remount,ro,bind", v]);
    assert!(
        std::fs::write(vault.join("probe"), b"x").is_err(),
        "not read-only"
    );

    let verify = env.run(&["verify", "--read-data"]);
    assert!(verify.status.success(), "{}", stderr(&verify));
    let out = env.path("restored.img");
    let restore = env.run(&["restore", "d@latest", "--to", out.to_str().unwrap()]);
    assert!(restore.status.success(), "{}", stderr(&restore));
    assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&img).unwrap());
    let t = env.run(&["timeline", "d"]);
    assert!(t.status.success(), "{}", stderr(&t));
    let backup = env.run(&["backup", "-q", img.to_str().unwrap(), "--name", "d"]);
    assert_eq!(backup.status.code(), Some(1));
    assert!(
        stderr(&backup).contains("Read-only file system"),
        "{}",
        stderr(&backup)
    );
}

#[test]
fn bad_input_gets_a_one_line_error_and_exit_1() {
    let env = Env::new("30d", &[]);
    let img = env.path("d.img");
    std::fs::write(&img, text(1 << 20, 1)).unwrap();

    let wrong = env
        .cmd()
        .env("CAIRN_PASSWORD", "nope")
        .args(["snapshots"])
        .output()
        .unwrap();
    assert_eq!(wrong.status.code(), Some(1));
    assert!(
        stderr(&wrong).contains("wrong password"),
        "{}",
        stderr(&wrong)
    );

    let not_vault = env
        .cmd()
        .env("CAIRN_VAULT", env.path("nowhere"))
        .args(["snapshots"])
        .output()
        .unwrap();
    assert_eq!(not_vault.status.code(), Some(1));
    assert!(
        stderr(&not_vault).contains("not a Cairn vault"),
        "{}",
        stderr(&not_vault)
    );

    let missing = env.run(&[
        "backup",
        env.path("missing.img").to_str().unwrap(),
        "--name",
        "x",
    ]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(
        stderr(&missing).contains("cannot read source"),
        "{}",
        stderr(&missing)
    );
    assert_eq!(stderr(&missing).lines().count(), 1);

    let bad_ref = env.run(&[
        "restore",
        "ghost@latest",
        "--to",
        env.path("x").to_str().unwrap(),
    ]);
    assert_eq!(bad_ref.status.code(), Some(1));
    assert!(
        stderr(&bad_ref).contains("no snapshot"),
        "{}",
        stderr(&bad_ref)
    );

    let empty = env.path("empty.img");
    std::fs::write(&empty, b"").unwrap();
    let r = env.run(&["backup", empty.to_str().unwrap(), "--name", "e"]);
    assert_eq!(r.status.code(), Some(1));
    assert!(stderr(&r).contains("empty (0 bytes)"), "{}", stderr(&r));

    let usage = env.run(&["backup"]);
    assert_eq!(usage.status.code(), Some(2), "usage errors exit 2");
    let bogus = env.run(&["bogus", "--json"]);
    assert_eq!(bogus.status.code(), Some(2));
    let said: serde_json::Value = serde_json::from_slice(&bogus.stdout).unwrap();
    assert_eq!(said["exit_code"], 2, "{said}");
    assert!(said["error"].as_str().unwrap().contains("bogus"), "{said}");
    let no_zone = env.run(&[
        "backup",
        img.to_str().unwrap(),
        "--name",
        "x",
        "--time",
        "2026-11-20",
    ]);
    assert_eq!(no_zone.status.code(), Some(2));
    assert!(
        stderr(&no_zone).contains("2026-11-20T18:00:00Z"),
        "{}",
        stderr(&no_zone)
    );

    // Asked for JSON, a failure is JSON too.
    let as_json = env.run(&[
        "backup",
        env.path("missing.img").to_str().unwrap(),
        "--name",
        "x",
        "--json",
    ]);
    assert_eq!(as_json.status.code(), Some(1));
    let said: serde_json::Value = serde_json::from_slice(&as_json.stdout).unwrap();
    assert!(
        said["error"]
            .as_str()
            .unwrap()
            .contains("cannot read source"),
        "{said}"
    );
    assert_eq!(said["exit_code"], 1);

    let pwfile = env.path("pw");
    std::fs::write(&pwfile, format!("{PASSWORD}\n")).unwrap();
    let via_file = env
        .cmd()
        .env_remove("CAIRN_PASSWORD")
        .env("CAIRN_PASSWORD_FILE", &pwfile)
        .args(["snapshots"])
        .output()
        .unwrap();
    assert!(via_file.status.success(), "{}", stderr(&via_file));
    // Set but empty is not set.
    let empty_file = env
        .cmd()
        .env("CAIRN_PASSWORD_FILE", "")
        .args(["snapshots"])
        .output()
        .unwrap();
    assert!(empty_file.status.success(), "{}", stderr(&empty_file));

    // Nothing above changed the vault.
    assert_eq!(env.json(&["snapshots"]).as_array().unwrap().len(), 0);
    assert!(
        std::fs::read_dir(env.vault.join("packs"))
            .unwrap()
            .next()
            .is_none()
    );
}

#[test]
fn kill_9_mid_backup_leaves_a_vault_that_verifies_and_the_next_run_reuses_it() {
    let env = Env::new("30d", &["--pack-mib", "1"]);
    let img = env.path("big.img");
    std::fs::write(&img, noise(160 << 20, 3)).unwrap();
    let mut child = env
        .cmd()
        .args(["backup", img.to_str().unwrap(), "--name", "big"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let packs = |env: &Env| -> usize { walk_count(&env.vault.join("index")) };
    let start = Instant::now();
    while packs(&env) < 8 && start.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap(); // SIGKILL
    let status = child.wait().unwrap();
    assert!(
        !status.success(),
        "the backup should have been killed mid-way; make the image larger"
    );
    let written_before = packs(&env);
    assert!(written_before >= 8);

    let v = env.json(&["verify", "--read-data"]);
    assert_eq!(v["damaged_objects"].as_array().unwrap().len(), 0, "{v}");
    assert_eq!(v["damaged_snapshots"].as_array().unwrap().len(), 0, "{v}");
    assert_eq!(env.json(&["snapshots"]).as_array().unwrap().len(), 0);

    let s = env.json(&["backup", img.to_str().unwrap(), "--name", "big"]);
    let stored = s["metrics"]["new_bytes_stored"].as_u64().unwrap();
    assert!(
        stored < (160 << 20) - (written_before as u64 - 1) * (1 << 20),
        "the second run reused the packs written before the kill ({stored} bytes stored anew)"
    );
    let out = env.path("out.img");
    env.ok(&["restore", "big@latest", "--to", out.to_str().unwrap()]);
    assert!(same_bytes(&img, &out));
    let v = env.json(&["verify", "--read-data"]);
    assert_eq!(v["damaged_snapshots"].as_array().unwrap().len(), 0, "{v}");
}

fn walk_count(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir).map(|r| r.count()).unwrap_or(0)
}

#[test]
fn a_flipped_byte_in_a_pack_is_found_and_the_snapshot_named() {
    let env = Env::new("30d", &[]);
    let a = env.path("a.img");
    let b = env.path("b.img");
    std::fs::write(&a, text(4 << 20, 1)).unwrap();
    std::fs::write(&b, noise(4 << 20, 2)).unwrap();
    env.backup(&a, "alpha", "2026-03-01T00:00:00Z");
    let sb = env.backup(&b, "beta", "2026-03-01T00:00:00Z");
    assert_eq!(env.run(&["verify", "--read-data"]).status.code(), Some(0));

    // Flip one byte in the middle of beta's pack (the one with noise:
    // noise does not compress, so beta's pack is the largest).
    let target = flip_byte_in_largest_pack(&env.vault);
    assert!(std::fs::metadata(&target).unwrap().len() >= 4 << 20);

    // The structure check cannot see inside chunks...
    assert_eq!(env.run(&["verify"]).status.code(), Some(0));
    // ...reading the data does.
    let out = env.run(&["verify", "--read-data"]);
    assert_eq!(out.status.code(), Some(3), "damage exits 3");
    let text_out = String::from_utf8_lossy(&out.stdout);
    let short = &sb["id"].as_str().unwrap()[..8];
    assert!(
        text_out.contains(&format!("beta@{short}")),
        "names the damaged snapshot:\n{text_out}"
    );
    assert!(!text_out.contains("alpha@"), "alpha is intact:\n{text_out}");

    // The pack gone altogether: the data cannot be given back, which is
    // damage found (exit 3), as with the flipped byte.
    std::fs::remove_file(&target).unwrap();
    let out = env.run(&[
        "restore",
        "beta@latest",
        "--to",
        env.path("b2.img").to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(err.contains("missing from the store"), "{err}");
    env.ok(&[
        "restore",
        "alpha@latest",
        "--to",
        env.path("a2.img").to_str().unwrap(),
    ]);
}

/// An index object lost (deleted, or unreadable) leaves its pack looking
/// like the leftover of an interrupted backup: prune must not take it
/// for one, or the only copy of a snapshot's data goes with it (it keeps
/// every pack without an index while chunks are missing, and says so).
#[test]
fn a_lost_index_keeps_prune_from_deleting_the_pack_it_described() {
    let env = Env::new("0s", &[]);
    let img = env.path("a.img");
    std::fs::write(&img, text(3 << 20, 7)).unwrap();
    let snap = env.backup(&img, "alpha", "2026-03-01T00:00:00Z");
    let index = env.vault.join("index");
    std::fs::set_permissions(&index, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    for f in std::fs::read_dir(&index).unwrap() {
        std::fs::remove_file(f.unwrap().path()).unwrap();
    }
    let out = env.run(&["verify"]);
    assert_eq!(out.status.code(), Some(3));
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains("may hold what the damaged snapshots miss")
            && !said.contains("prune removes them"),
        "{said}"
    );
    let out = env.run(&["prune"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stderr(&out).contains("no index lists"), "{}", stderr(&out));
    let packs = || {
        std::fs::read_dir(env.vault.join("packs"))
            .unwrap()
            .map(|d| walk_count(&d.unwrap().path()))
            .sum::<usize>()
    };
    assert_eq!(packs(), 1, "the pack is still there");
    // With the index back (here: restored from a copy an operator kept,
    // simulated by a fresh backup writing the same chunks, which it does
    // since the vault no longer lists them), the data is whole again.
    env.backup(&img, "alpha", "2026-03-02T00:00:00Z");
    let out = env.path("out.img");
    env.ok(&[
        "restore",
        &format!("alpha@{}", &snap["id"].as_str().unwrap()[..8]),
        "--to",
        out.to_str().unwrap(),
    ]);
    assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&img).unwrap());
    assert_eq!(env.run(&["verify", "--read-data"]).status.code(), Some(0));
}

/// A damaged manifest of the newest snapshot must not quietly make
/// `NAME@latest` the one before, nor the timeline call that one the
/// clean newest.
#[test]
fn a_damaged_newest_manifest_is_said_where_latest_is_counted() {
    let env = Env::new("30d", &[]);
    let img = env.path("a.img");
    std::fs::write(&img, text(1 << 20, 1)).unwrap();
    env.backup(&img, "alpha", "2026-03-01T00:00:00Z");
    std::fs::write(&img, text(1 << 20, 2)).unwrap();
    let newest = env.backup(&img, "alpha", "2026-03-02T00:00:00Z");
    let manifest = env
        .vault
        .join("snapshots")
        .join(newest["id"].as_str().unwrap());
    std::fs::set_permissions(
        &manifest,
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )
    .unwrap();
    let mut data = std::fs::read(&manifest).unwrap();
    let mid = data.len() / 2;
    data[mid] ^= 1;
    std::fs::write(&manifest, &data).unwrap();
    let out = env.run(&[
        "restore",
        "alpha@latest",
        "--to",
        env.path("out.img").to_str().unwrap(),
    ]);
    assert!(
        stderr(&out).contains("cannot be read")
            && stderr(&out).contains("alpha@latest counts without them"),
        "{}",
        stderr(&out)
    );
    let out = env.run(&["timeline", "alpha", "--json"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("may not be the newest"),
        "{}",
        stderr(&out)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        v["unreadable_manifests"].as_array().unwrap().len(),
        1,
        "{v}"
    );
    // The list says it is not all there is: damage found.
    let out = env.run(&["snapshots"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains("unreadable"), "{}", stderr(&out));
}

/// A key file damaged on disk (one hex digit of its sealed key changed)
/// is said to be damaged — verify exits 3 — not taken for a wrong
/// password.
#[test]
fn a_damaged_key_file_is_not_taken_for_a_wrong_password() {
    let env = Env::new("30d", &[]);
    let keys: Vec<_> = std::fs::read_dir(env.vault.join("keys"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(keys.len(), 1);
    let key = &keys[0];
    let mut kf: serde_json::Value = serde_json::from_slice(&std::fs::read(key).unwrap()).unwrap();
    let wrapped = kf["wrapped"].as_str().unwrap().to_string();
    let flipped = if wrapped.starts_with('0') { "1" } else { "0" };
    kf["wrapped"] = format!("{flipped}{}", &wrapped[1..]).into();
    std::fs::set_permissions(key, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    std::fs::write(key, serde_json::to_vec(&kf).unwrap()).unwrap();
    let out = env.run(&["snapshots"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("damaged") && !stderr(&out).contains("wrong password"),
        "{}",
        stderr(&out)
    );
    let out = env.run(&["verify"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
}

/// Manifests deleted by hand (a pinned snapshot's, the newest one's):
/// the snapshots do not just vanish. Verify names them (exit 3), prune
/// stops before deleting the data only they used, and goes on only once
/// the operator accepts the loss; snapshots `forget` removed are not
/// taken for deleted ones.
#[test]
fn a_manifest_deleted_outside_cairn_is_named_and_prune_keeps_its_data() {
    let env = Env::new("1s", &[]);
    let img = env.path("a.img");
    let mut ids = Vec::new();
    for day in 0..4u64 {
        std::fs::write(&img, text(1 << 20, day)).unwrap();
        let v = env.backup(&img, "alpha", &format!("2026-03-0{}T00:00:00Z", day + 1));
        ids.push(v["id"].as_str().unwrap().to_string());
    }
    env.ok(&["pin", &format!("alpha@{}", &ids[1][..8])]);
    std::thread::sleep(std::time::Duration::from_millis(1200));
    // Forgotten by forget: nothing missing (two snapshots' parents gone).
    let f = env.json(&["forget", "alpha", "--keep-last", "1"]);
    assert_eq!(f["forget"]["forgotten"].as_array().unwrap().len(), 2, "{f}");
    env.ok(&["verify"]);
    for id in [&ids[1], &ids[3]] {
        std::fs::remove_file(env.vault.join("snapshots").join(id)).unwrap();
    }
    let out = env.run(&["verify", "--json"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let damaged = v["damaged_snapshots"].to_string();
    for id in [&ids[1], &ids[3]] {
        assert!(damaged.contains(id.as_str()), "{id}: {v:#}");
    }
    assert!(damaged.contains("manifest missing"), "{v:#}");
    let packs = || {
        std::fs::read_dir(env.vault.join("packs"))
            .unwrap()
            .map(|d| walk_count(&d.unwrap().path()))
            .sum::<usize>()
    };
    let before = packs();
    let out = env.run(&["prune"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("prune stopped"), "{}", stderr(&out));
    assert_eq!(packs(), before);
    // The loss accepted: prune deletes what only they used, verify passes.
    let a = env.json(&["forget", "--missing"]);
    assert_eq!(a["accepted_missing"].as_array().unwrap().len(), 2, "{a}");
    env.ok(&["prune"]);
    assert!(packs() < before);
    env.ok(&["verify", "--read-data"]);
}

/// `args` is a mistake in the command line (exit 2) and `target` is not
/// written.
fn usage_error_writing_nothing(env: &Env, args: &[&str], target: &std::path::Path) {
    let out = env.run(args);
    assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
    assert!(!target.exists(), "{args:?}");
}

#[test]
fn nothing_is_deleted_before_retention_ends_and_pins_are_never_forgotten() {
    // Under retention: forget and prune delete nothing.
    let env = Env::new("30d", &[]);
    let img = env.path("d.img");
    for day in 1..=3 {
        std::fs::write(&img, noise(2 << 20, day)).unwrap();
        env.backup(&img, "vm", &format!("2026-03-0{day}T00:00:00Z"));
    }
    // Policies that would forget everything, or name no source, are
    // refused instead of passing silently: the first is a mistake in the
    // command (exit 2, like any usage error), the second one in the
    // vault's contents (exit 1).
    for (bad, code) in [
        (&["forget", "--keep-last", "0"][..], 2),
        (&["forget", "--dry-run"], 2),
        // "m" is refused: restic and borg read it as months, Cairn once
        // as minutes (a keep-within that kept next to nothing).
        (&["forget", "--keep-within", "6m"], 2),
        (&["forget", "--keep-within", "6mo", "vn"], 1),
        (&["forget", "--keep-last", "1", "vn"], 1),
    ] {
        let out = env.run(bad);
        assert_eq!(out.status.code(), Some(code), "{bad:?}");
    }
    // Options that do not apply to what is asked: usage errors too.
    let out_dir = env.path("nowhere");
    for bad in [
        &[
            "restore",
            "vm@latest:/x",
            "--to",
            out_dir.to_str().unwrap(),
            "--delta",
        ][..],
        &[
            "restore",
            "vm@latest:/x",
            "--to",
            out_dir.to_str().unwrap(),
            "--verify",
        ],
        &["export", "vm@latest", "--writable"],
        &["rollback", "vm"],
    ] {
        usage_error_writing_nothing(&env, bad, &out_dir);
    }
    let f = env.json(&["forget", "--keep-last", "1", "--prune"]);
    assert_eq!(f["forget"]["forgotten"].as_array().unwrap().len(), 0);
    assert_eq!(f["forget"]["retained"].as_array().unwrap().len(), 2);
    assert_eq!(f["prune"]["packs_deleted"], 0);
    let p = env.json(&["prune"]);
    assert_eq!(p["packs_deleted"], 0);
    assert_eq!(env.json(&["snapshots"]).as_array().unwrap().len(), 3);
    assert_eq!(env.run(&["verify", "--read-data"]).status.code(), Some(0));

    // Retention over: forget keeps the policy's and the pinned snapshots,
    // prune frees what nothing refers to, and what is left restores.
    let env = Env::new("0s", &[]);
    let mut ids = Vec::new();
    for day in 1..=4 {
        std::fs::write(&img, noise(2 << 20, 10 + day)).unwrap();
        ids.push(
            env.backup(&img, "vm", &format!("2026-03-0{day}T00:00:00Z"))["id"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    std::fs::copy(&img, env.path("day4.img")).unwrap();
    env.ok(&["pin", &format!("vm@{}", &ids[0][..8])]);
    let dry = env.json(&["forget", "--keep-last", "1", "--dry-run"]);
    assert_eq!(dry["forget"]["forgotten"].as_array().unwrap().len(), 2);
    assert_eq!(
        env.json(&["snapshots"]).as_array().unwrap().len(),
        4,
        "dry run changes nothing"
    );
    // A pack whose index was never written (a backup killed between the
    // two) is deleted too, and counted with its size.
    let packs = env.vault.join("packs");
    let sub = std::fs::read_dir(&packs)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let some = std::fs::read_dir(&sub)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let prefix = sub.file_name().unwrap().to_str().unwrap().to_string();
    let orphan = sub.join(format!("{prefix}{}", "7".repeat(62)));
    std::fs::copy(&some, &orphan).unwrap();
    let packs_bytes = || -> u64 {
        std::fs::read_dir(&packs)
            .unwrap()
            .flat_map(|d| std::fs::read_dir(d.unwrap().path()).unwrap())
            .map(|f| f.unwrap().metadata().unwrap().len())
            .sum()
    };
    let before = packs_bytes();
    let f = env.json(&["forget", "--keep-last", "1", "--prune"]);
    assert!(!orphan.exists());
    assert_eq!(
        f["prune"]["bytes_deleted"].as_u64().unwrap(),
        before - packs_bytes(),
        "{f}"
    );
    let kept: Vec<&str> = f["forget"]["kept"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_str().unwrap())
        .collect();
    assert!(kept.contains(&ids[0].as_str()), "pinned snapshot kept");
    assert!(kept.contains(&ids[3].as_str()), "latest kept");
    assert_eq!(f["prune"]["packs_deleted"].as_u64().unwrap(), 3, "{f}");
    let left = env.json(&["snapshots"]);
    assert_eq!(left.as_array().unwrap().len(), 2);
    assert!(left.as_array().unwrap().iter().any(|s| s["pinned"] == true));
    let out = env.path("r.img");
    env.ok(&["restore", "vm@latest", "--to", out.to_str().unwrap()]);
    assert!(same_bytes(&env.path("day4.img"), &out));
    assert_eq!(env.run(&["verify", "--read-data"]).status.code(), Some(0));
    let no_policy = env.run(&["forget"]);
    assert_eq!(no_policy.status.code(), Some(2), "a usage error");
}

#[test]
fn two_backups_of_different_sources_run_at_once() {
    let env = Env::new("30d", &[]);
    let a = env.path("a.img");
    let b = env.path("b.img");
    std::fs::write(&a, noise(24 << 20, 1)).unwrap();
    std::fs::write(&b, text(24 << 20, 2)).unwrap();
    let spawn = |p: &std::path::Path, n: &str| {
        env.cmd()
            .args(["backup", p.to_str().unwrap(), "--name", n, "--json"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (ca, cb) = (spawn(&a, "a"), spawn(&b, "b"));
    let (oa, ob) = (
        ca.wait_with_output().unwrap(),
        cb.wait_with_output().unwrap(),
    );
    assert!(oa.status.success(), "{}", stderr(&oa));
    assert!(ob.status.success(), "{}", stderr(&ob));
    for (img, n) in [(&a, "a"), (&b, "b")] {
        let out = env.path(&format!("{n}.out"));
        env.ok(&[
            "restore",
            &format!("{n}@latest"),
            "--to",
            out.to_str().unwrap(),
        ]);
        assert!(same_bytes(img, &out));
    }
    assert_eq!(env.run(&["verify", "--read-data"]).status.code(), Some(0));
}

#[test]
fn disk_full_while_writing_fails_cleanly_and_the_vault_still_verifies() {
    // A small tmpfs stands in for a full disk.
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("small");
    let Some(_mounted) = small_tmpfs(&mnt, "6m") else {
        return;
    };
    let vault = mnt.join("vault");
    let cairn = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_cairn"))
            .env("CAIRN_VAULT", &vault)
            .env("CAIRN_PASSWORD", PASSWORD)
            .args(args)
            .output()
            .unwrap()
    };
    assert!(cairn(&["init", "--pack-mib", "1"]).status.success());
    let small = dir.path().join("small.img");
    std::fs::write(&small, noise(1 << 20, 1)).unwrap();
    assert!(
        cairn(&["backup", small.to_str().unwrap(), "--name", "small"])
            .status
            .success()
    );
    let big = dir.path().join("big.img");
    std::fs::write(&big, noise(16 << 20, 2)).unwrap();
    let out = cairn(&["backup", big.to_str().unwrap(), "--name", "big"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("No space left") || err.contains("space"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
    let v = cairn(&["verify", "--read-data", "--json"]);
    assert_eq!(
        v.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&v.stdout)
    );
    let snaps: serde_json::Value =
        serde_json::from_slice(&cairn(&["snapshots", "--json"]).stdout).unwrap();
    assert_eq!(
        snaps.as_array().unwrap().len(),
        1,
        "no snapshot of the failed backup"
    );
    assert_eq!(
        std::fs::read_dir(vault.join("tmp")).unwrap().count(),
        0,
        "no temp files left"
    );
}

/// Mistakes an operator makes under stress are refused with one line,
/// exit 1, and nothing written.
#[test]
fn operator_mistakes_are_refused_and_nothing_is_written() {
    let env = Env::new("30d", &[]);
    let img = env.path("d.img");
    std::fs::write(&img, text(2 << 20, 1)).unwrap();
    let first = env.backup(&img, "vm", "2026-03-02T00:00:00Z");
    let count = |env: &Env| env.json(&["snapshots"]).as_array().unwrap().len();

    // A snapshot dated before the newest of its name would get a later
    // snapshot as its parent.
    let back = env.run(&[
        "backup",
        img.to_str().unwrap(),
        "--name",
        "vm",
        "--time",
        "2026-03-01T00:00:00Z",
    ]);
    assert_eq!(back.status.code(), Some(1), "{}", stderr(&back));
    assert!(stderr(&back).contains("not after vm@"), "{}", stderr(&back));
    assert_eq!(count(&env), 1);

    // Names that break tables and NAME@SNAP.
    for bad in [" ", "a\nb", " vm", &"n".repeat(101)] {
        let out = env.run(&["backup", img.to_str().unwrap(), "--name", bad]);
        assert_eq!(out.status.code(), Some(1), "{bad:?}: {}", stderr(&out));
    }
    assert_eq!(count(&env), 1);

    // S3's options for a local vault, an S3 URL in capitals, undelete of
    // a local vault: mistakes said as such, nothing made.
    let local = env.path("v2");
    for (args, code, says) in [
        (
            vec!["init", "--create-bucket"],
            2,
            "--create-bucket is for a vault on S3",
        ),
        (
            vec!["init", "--no-lock"],
            2,
            "--no-lock is for a vault on S3",
        ),
        (vec!["undelete"], 2, "undelete is for a vault on S3"),
    ] {
        let out = env
            .cmd()
            .args(&args)
            .env("CAIRN_VAULT", &local)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(code), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(says), "{}", stderr(&out));
        assert!(!local.join("config").exists());
    }
    let caps = env.run(&["snapshots", "--vault", "S3://my-bucket/cairn"]);
    assert_eq!(caps.status.code(), Some(1), "{}", stderr(&caps));
    assert!(stderr(&caps).contains("in lower case"), "{}", stderr(&caps));

    // Too far back names the snapshot name, not the number.
    let far = env.run(&["restore", "vm@-5", "--to", env.path("x").to_str().unwrap()]);
    assert_eq!(far.status.code(), Some(1));
    assert!(
        stderr(&far).contains("vm has 1 snapshot (only vm@latest)"),
        "{}",
        stderr(&far)
    );

    // A delta restore onto a file of another size: most likely the wrong
    // file, left untouched unless --resize says otherwise.
    let notes = env.path("notes.txt");
    std::fs::write(&notes, b"important notes").unwrap();
    let wrong = env.run(&[
        "restore",
        "vm@latest",
        "--to",
        notes.to_str().unwrap(),
        "--delta",
    ]);
    assert_eq!(wrong.status.code(), Some(1), "{}", stderr(&wrong));
    assert!(stderr(&wrong).contains("--resize"), "{}", stderr(&wrong));
    assert_eq!(std::fs::read(&notes).unwrap(), b"important notes");
    let grown = env.path("grown.img");
    std::fs::copy(&img, &grown).unwrap();
    write_at(&grown, (3 << 20) - 1, b"x");
    env.ok(&[
        "restore",
        "vm@latest",
        "--to",
        grown.to_str().unwrap(),
        "--delta",
        "--resize",
    ]);
    assert!(same_bytes(&grown, &img));

    // Nothing is restored into the vault (prune would take a file under
    // packs/ for an interrupted backup's and delete it).
    let inside = env.vault.join("packs").join("zz.img");
    let into = env.run(&["restore", "vm@latest", "--to", inside.to_str().unwrap()]);
    assert_eq!(into.status.code(), Some(1), "{}", stderr(&into));
    assert!(
        stderr(&into).contains("inside the vault"),
        "{}",
        stderr(&into)
    );
    assert!(!inside.exists());

    // A vault is made in a folder of its own, not among other files.
    let data = env.path("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::write(data.join("report.odt"), b"work").unwrap();
    let init = env
        .cmd()
        .args(["init", "--vault", data.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(init.status.code(), Some(1), "{}", stderr(&init));
    assert!(stderr(&init).contains("not empty"), "{}", stderr(&init));
    assert_eq!(std::fs::read_dir(&data).unwrap().count(), 1);

    // A vault is not backed up into itself: inside the source it is left
    // out, and a source inside it is refused.
    let all = env.run(&["backup", env.dir.path().to_str().unwrap(), "--name", "all"]);
    assert!(all.status.success(), "{}", stderr(&all));
    assert!(
        stderr(&all).contains("the vault itself, left out"),
        "{}",
        stderr(&all)
    );
    let top = env.ok(&["ls", "all@latest:/"]);
    assert!(top.contains("d.img") && !top.contains("vault"), "{top}");
    let own = env.run(&[
        "backup",
        env.vault.join("packs").to_str().unwrap(),
        "--name",
        "own",
    ]);
    assert_eq!(own.status.code(), Some(1), "{}", stderr(&own));
    assert!(
        stderr(&own).contains("inside the vault"),
        "{}",
        stderr(&own)
    );

    // A source path that is not UTF-8 is recorded exactly, escaped.
    use std::os::unix::ffi::OsStrExt;
    let odd = env
        .dir
        .path()
        .join(std::ffi::OsStr::from_bytes(b"share-\xff"));
    std::fs::create_dir(&odd).unwrap();
    std::fs::write(odd.join("a.txt"), b"a").unwrap();
    let b = env
        .cmd()
        .arg("backup")
        .arg(&odd)
        .args(["--name", "odd", "--json"])
        .output()
        .unwrap();
    assert!(b.status.success(), "{}", stderr(&b));
    let v: serde_json::Value = serde_json::from_slice(&b.stdout).unwrap();
    let recorded = v["source"]["path"].as_str().unwrap();
    assert!(recorded.ends_with("/share-\\xff"), "{recorded}");
    // Options for disks on a directory source: mistakes in the command.
    let there = env.path("odd-out");
    for bad in [
        &[
            "restore",
            "odd@latest",
            "--to",
            there.to_str().unwrap(),
            "--delta",
        ][..],
        &[
            "rollback",
            "odd",
            "--to-dir",
            there.to_str().unwrap(),
            "--partition",
            "1",
        ],
        &["ls", "odd@latest", "--partition", "2"],
        &["mount", "odd@latest", there.to_str().unwrap(), "--disk"],
        &["export", "odd@latest"],
        &["partitions", "odd@latest"],
    ] {
        usage_error_writing_nothing(&env, bad, &there);
    }

    // Tokens belong to a vault, and only an agent's can be limited to
    // sources; a vault is not replicated onto itself.
    let stray = env
        .cmd()
        .env("CAIRN_VAULT", env.path("no-vault"))
        .args(["token", "create", "--role", "admin"])
        .output()
        .unwrap();
    assert_eq!(stray.status.code(), Some(1), "{}", stderr(&stray));
    assert!(!env.path("no-vault").exists());
    // (Mistakes in the command line: exit 2.)
    for bad in [
        &["token", "create", "--role", "operator", "--source", "vm"][..],
        &["token", "create", "--role", "bogus"],
        &["token", "create", "--role", "agent"],
        &["token", "create", "--role", "agent", "--source", "a/../b"],
        &["token", "create", "--role", "agent", "--source", ""],
    ] {
        let out = env.run(bad);
        assert_eq!(out.status.code(), Some(2), "{bad:?}: {}", stderr(&out));
    }
    let selfie = env.run(&["replicate", "--to", env.vault.to_str().unwrap()]);
    assert_eq!(selfie.status.code(), Some(2), "{}", stderr(&selfie));
    // A snapshot reference that is none is a mistake in the command line
    // too; one that names nothing there is not.
    let out = env.path("spec-out");
    for (spec, want) in [
        ("odd@bogus", 2),
        ("odd@-x", 2),
        ("odd@", 2),
        ("odd@abcdef12", 1),
        ("odd@-5", 1),
    ] {
        let r = env.run(&["restore", spec, "--to", out.to_str().unwrap()]);
        assert_eq!(r.status.code(), Some(want), "{spec}: {}", stderr(&r));
    }
    let url = env.run(&["snapshots", "--vault", "http://127.0.0.1:8080"]);
    assert_eq!(url.status.code(), Some(1), "{}", stderr(&url));
    assert!(stderr(&url).contains("--server"), "{}", stderr(&url));
    // A backup goes to one vault: --vault typed beside --server is a
    // mistake (CAIRN_VAULT in the environment is not: the server wins).
    let img = env.path("one.img");
    std::fs::write(&img, noise(1 << 20, 3)).unwrap();
    let two = env.run(&[
        "backup",
        img.to_str().unwrap(),
        "--name",
        "one",
        "--server",
        "http://127.0.0.1:9",
        "--token",
        "t",
        "--vault",
        env.vault.to_str().unwrap(),
    ]);
    assert_eq!(two.status.code(), Some(2), "{}", stderr(&two));
    assert!(
        stderr(&two).contains("do not go together"),
        "{}",
        stderr(&two)
    );
    let env_only = env.run(&[
        "backup",
        img.to_str().unwrap(),
        "--name",
        "one",
        "--server",
        "http://127.0.0.1:9",
        "--token",
        "t",
    ]);
    assert_eq!(env_only.status.code(), Some(1), "{}", stderr(&env_only));

    // Output that cannot be written is an error, not a crash, whether
    // printed line by line or buffered.
    for args in [
        &["snapshots"][..],
        &["snapshots", "--json"],
        &["timeline", "vm"],
    ] {
        let out = env
            .cmd()
            .args(args)
            .stdout(std::fs::File::create("/dev/full").unwrap())
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{args:?}: {}", stderr(&out));
        assert!(!stderr(&out).contains("panicked"), "{}", stderr(&out));
        assert!(stderr(&out).starts_with("error: "), "{}", stderr(&out));
    }
    assert_eq!(env.json(&["snapshots"])[0]["id"], first["id"]);
    assert_eq!(count(&env), 3, "vm, all and odd");
}

/// A directory backup that could not read everything says so: exit 3,
/// the entries named, and the snapshot records them.
#[test]
fn a_backup_that_could_not_read_everything_says_so() {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    let dir = tempfile::tempdir().unwrap();
    // Root reads everything: the backup runs as nobody.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let src = dir.path().join("src");
    std::fs::create_dir_all(src.join("secret")).unwrap();
    std::fs::write(src.join("open.txt"), b"readable").unwrap();
    std::fs::write(src.join("locked.txt"), b"not for nobody").unwrap();
    std::fs::write(src.join("secret").join("inner.txt"), b"hidden").unwrap();
    std::fs::set_permissions(
        src.join("locked.txt"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    std::fs::set_permissions(src.join("secret"), std::fs::Permissions::from_mode(0o700)).unwrap();
    let vault = dir.path().join("vault");
    let nobody = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_cairn"))
            .env("CAIRN_VAULT", &vault)
            .env("CAIRN_PASSWORD", PASSWORD)
            .env_remove("CAIRN_PASSWORD_FILE")
            .uid(65534)
            .gid(65534)
            .args(args)
            .output()
            .unwrap()
    };
    let init = nobody(&["init", "-q"]);
    assert!(init.status.success(), "{}", stderr(&init));
    let out = nobody(&["backup", src.to_str().unwrap(), "--name", "share", "--json"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("is incomplete: 2 entries"),
        "{}",
        stderr(&out)
    );
    let list = nobody(&["snapshots", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&list.stdout).unwrap();
    let m = &v[0]["metrics"];
    assert_eq!(m["unreadable_count"], 2, "{m}");
    let named = m["unreadable"].to_string();
    assert!(
        named.contains("locked.txt") && named.contains("secret"),
        "{named}"
    );
    // The table says so too; a mistyped name is an error, not an empty
    // table.
    let table = nobody(&["snapshots", "share"]);
    assert!(
        String::from_utf8_lossy(&table.stdout).contains("incomplete:2-unread"),
        "{}",
        String::from_utf8_lossy(&table.stdout)
    );
    let typo = nobody(&["snapshots", "shrae"]);
    assert_eq!(typo.status.code(), Some(1));
    assert!(
        stderr(&typo).contains("no snapshots of that name"),
        "{}",
        stderr(&typo)
    );
    // The readable file is there.
    let files = nobody(&["ls", "share@latest:/"]);
    assert!(String::from_utf8_lossy(&files.stdout).contains("open.txt"));
}

#[test]
fn a_disk_restore_to_a_folder_name_that_does_not_exist_writes_nothing() {
    let env = Env::new("30d", &[]);
    let img = env.path("d.img");
    std::fs::write(&img, text(1 << 20, 2)).unwrap();
    env.backup(&img, "d", "2026-01-01T00:00:00Z");
    // Dated as the newest snapshot is not after it (the server says the
    // same, after the upload).
    let same = env.run(&[
        "backup",
        img.to_str().unwrap(),
        "--name",
        "d",
        "--time",
        "2026-01-01T00:00:00Z",
    ]);
    assert_eq!(same.status.code(), Some(1));
    assert!(stderr(&same).contains("not after"), "{}", stderr(&same));
    let slash = format!("{}/", env.path("nodir").display());
    let r = env.run(&["restore", "d@latest", "--to", &slash]);
    assert_eq!(r.status.code(), Some(1));
    assert!(stderr(&r).contains("no such folder"), "{}", stderr(&r));
    let left: Vec<_> = std::fs::read_dir(env.path(""))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("nodir"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

/// Junk someone put under a manifest's name (or a manifest damaged for
/// good) stops prune, which cannot know what it named; `forget --missing`
/// accepts its loss as it does a deleted one's, and prune runs again.
#[test]
fn an_unreadable_manifest_accepted_as_lost_lets_prune_run() {
    let env = Env::new("0s", &[]);
    let img = env.path("d.img");
    for day in 1..=2 {
        std::fs::write(&img, noise(1 << 20, day)).unwrap();
        env.backup(&img, "vm", &format!("2026-03-0{day}T00:00:00Z"));
    }
    let junk_id = "ab".repeat(32);
    std::fs::write(env.vault.join("snapshots").join(&junk_id), b"junk").unwrap();
    let out = env.run(&["prune"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("forget --missing"),
        "{}",
        stderr(&out)
    );
    let a = env.json(&["forget", "--missing"]);
    let lost: Vec<&str> = a["accepted_missing"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(lost, [junk_id.as_str()], "{a}");
    env.ok(&["prune"]);
    env.ok(&["verify"]);
    assert_eq!(env.json(&["snapshots"]).as_array().unwrap().len(), 2);
}
