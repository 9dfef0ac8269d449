//! Instant recovery over NBD with real clients: qemu-img, qemu-io, nbdinfo.

mod common;
use common::*;
use std::io::Write;
use std::process::{Command, Stdio};

/// Starts `cairn export` on a free port and returns the URL it prints first.
fn export(env: &Env, args: &[&str]) -> Running {
    let (child, url) = spawn_ready(
        env.cmd()
            .arg("export")
            .args(args)
            .args(["--listen", "127.0.0.1:0"])
            .stderr(Stdio::null()),
    );
    assert!(
        url.starts_with("nbd://127.0.0.1:"),
        "first line is the URL: {url:?}"
    );
    Running { child, url }
}

fn disk(env: &Env) -> std::path::PathBuf {
    let content = env.path("content");
    populate(&content);
    let img = env.path("vm.img");
    gpt_ext4_image(&img, &content, 48);
    env.backup(&img, "vm", "2026-03-01T00:00:00Z");
    img
}

#[test]
fn qemu_reads_the_snapshot_over_nbd_and_sees_its_holes() {
    let env = Env::new("30d", &[]);
    let img = disk(&env);
    let s = export(&env, &["vm@latest", "--name", "vm"]);
    assert!(s.url.ends_with("/vm"));
    assert!(nbd_equals(&s.url, &img));
    let map = sh("nbdinfo", &["--map", &s.url]);
    let holes: u64 = map
        .lines()
        .filter(|l| l.contains("hole"))
        .map(|l| l.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap())
        .sum();
    assert!(
        holes > 30 << 20,
        "most of the fresh disk is reported as holes:\n{map}"
    );
    let info = sh("nbdinfo", &[&s.url]);
    assert!(
        info.contains("is_read_only: true") && info.contains("base:allocation"),
        "{info}"
    );
    // Two clients at once.
    let compare = || {
        Command::new("qemu-img")
            .args([
                "compare",
                "-f",
                "raw",
                "-F",
                "raw",
                &s.url,
                img.to_str().unwrap(),
            ])
            .spawn()
            .unwrap()
    };
    let (a, b) = (compare(), compare());
    for mut c in [a, b] {
        assert!(c.wait().unwrap().success());
    }
    // A read-only export refuses writes.
    let w = Command::new("qemu-io")
        .args(["-f", "raw", "-c", "write -P 0x11 0 4k", &s.url])
        .output()
        .unwrap();
    assert!(!w.status.success(), "a write to a read-only export fails");
    let err = String::from_utf8_lossy(&w.stderr);
    assert!(err.contains("Permission denied"), "{err}");
}

#[test]
fn writes_go_to_the_overlay_survive_a_restart_and_never_touch_the_vault() {
    let env = Env::new("30d", &[]);
    let img = disk(&env);
    let overlay = env.path("overlay.img");
    let o = overlay.to_str().unwrap();
    {
        let s = export(&env, &["vm@latest", "--writable", "--overlay", o]);
        sh(
            "qemu-io",
            &["-f", "raw", "-c", "write -P 0xab 1000000 70000", &s.url],
        );
        sh("qemu-io", &["-f", "raw", "-c", "write -z 8M 1M", &s.url]);
        let r = sh(
            "qemu-io",
            &["-f", "raw", "-c", "read -P 0xab 1000000 70000", &s.url],
        );
        assert!(!r.contains("Pattern verification failed"), "{r}");
    }
    // A new export on the same overlay sees the writes.
    let s = export(&env, &["vm@latest", "--writable", "--overlay", o]);
    // While it serves, no commit takes a half-written disk from the
    // overlay, and no second export writes into it.
    let busy = env.run(&["commit", "vm@latest", "--overlay", o]);
    assert_eq!(busy.status.code(), Some(1));
    let err = String::from_utf8_lossy(&busy.stderr);
    assert!(err.contains("is in use"), "{err}");
    let mut second = env
        .cmd()
        .args(["export", "vm@latest", "--writable", "--overlay", o])
        .args(["--listen", "127.0.0.1:0"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let refused = loop {
        if let Some(status) = second.try_wait().unwrap() {
            break status.code();
        }
        if std::time::Instant::now() > deadline {
            let _ = second.kill();
            let _ = second.wait();
            break None;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert_eq!(
        refused,
        Some(1),
        "a second writer on the overlay is refused"
    );
    let r = sh(
        "qemu-io",
        &[
            "-f",
            "raw",
            "-c",
            "read -P 0xab 1000000 70000",
            "-c",
            "read -P 0 8M 1M",
            &s.url,
        ],
    );
    assert!(!r.contains("Pattern verification failed"), "{r}");
    // Around the write, the snapshot's own bytes.
    let mut want = std::fs::read(&img).unwrap();
    want[1_000_000..1_070_000].fill(0xab);
    want[8 << 20..9 << 20].fill(0);
    let expected = env.path("expected.img");
    std::fs::write(&expected, &want).unwrap();
    assert!(nbd_equals(&s.url, &expected));
    assert!(
        allocated(&overlay) < 2 << 20,
        "the overlay holds only what was written"
    );
    drop(s);
    // The vault is untouched.
    let v = env.json(&["verify", "--read-data"]);
    assert_eq!(v["damaged_snapshots"].as_array().unwrap().len(), 0);
    let out = env.path("restored.img");
    env.ok(&["restore", "vm@latest", "--to", out.to_str().unwrap()]);
    assert!(same_bytes(&img, &out));
}

#[test]
fn a_client_that_breaks_the_protocol_loses_only_its_connection() {
    let env = Env::new("30d", &[]);
    let img = disk(&env);
    let s = export(&env, &["vm@latest", "--name", "vm"]);
    let addr = s
        .url
        .trim_start_matches("nbd://")
        .split('/')
        .next()
        .unwrap()
        .to_string();
    for junk in [&b"GARBAGE!"[..], &[0xffu8; 4096][..], b""] {
        let mut c = std::net::TcpStream::connect(&addr).unwrap();
        let _ = c.write_all(junk);
        drop(c);
    }
    assert!(nbd_equals(&s.url, &img));
    let missing = Command::new("nbdinfo")
        .arg(format!("nbd://{addr}/nope"))
        .output()
        .unwrap();
    assert!(
        !missing.status.success(),
        "an unknown export name is refused"
    );
    assert!(sh("nbdinfo", &["--list", &format!("nbd://{addr}")]).contains("export=\"vm\""));
}

#[test]
fn commit_saves_base_plus_overlay_as_a_derived_snapshot() {
    let env = Env::new("30d", &[]);
    let img = disk(&env);
    let base = env.json(&["snapshots"])[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let overlay = env.path("fix.ovl");
    {
        let s = export(
            &env,
            &[
                "vm@latest",
                "--writable",
                "--overlay",
                overlay.to_str().unwrap(),
            ],
        );
        sh(
            "qemu-io",
            &["-f", "raw", "-c", "write -P 0x5c 3M 100k", &s.url],
        );
    }
    let c = env.json(&[
        "commit",
        "vm@latest",
        "--overlay",
        overlay.to_str().unwrap(),
        "--name",
        "vm-fixed",
    ]);
    assert_eq!(c["derived_from"], base.as_str());
    assert_eq!(c["parent"], base.as_str());
    assert_eq!(c["name"], "vm-fixed");
    assert!(
        c["metrics"]["new_bytes_stored"].as_u64().unwrap() < 1 << 20,
        "deduplicated against the base: {c}"
    );
    assert_eq!(
        c["metrics"]["changed_bytes"].as_u64().unwrap(),
        2 * 64 * 1024,
        "100 KiB at 3 MiB touches two 64 KiB blocks: {c}"
    );
    let mut want = std::fs::read(&img).unwrap();
    want[3 << 20..(3 << 20) + 100 * 1024].fill(0x5c);
    let out = env.path("fixed.img");
    let r = env.json(&["restore", "vm-fixed@latest", "--to", out.to_str().unwrap()]);
    assert_eq!(
        r["derived_from"],
        base.as_str(),
        "the restore names its base"
    );
    let shown = env.ok(&["snapshots", "vm-fixed"]);
    assert!(shown.contains(&format!("from:{}", &base[..8])), "{shown}");
    assert_eq!(
        std::fs::read(&out).unwrap(),
        want,
        "restore gives base + writes"
    );
    let missing = env.run(&[
        "commit",
        "vm@latest",
        "--overlay",
        env.path("nope.ovl").to_str().unwrap(),
    ]);
    assert_eq!(missing.status.code(), Some(1));
    // Over another snapshot the overlay's writes mean nothing: refused.
    let other = env.run(&[
        "commit",
        "vm-fixed@latest",
        "--overlay",
        overlay.to_str().unwrap(),
        "--name",
        "mixed",
    ]);
    assert_eq!(other.status.code(), Some(1));
    let err = String::from_utf8_lossy(&other.stderr);
    assert!(err.contains("holds writes made over snapshot"), "{err}");
    // A copy without its record of the base is not taken for an overlay
    // of whatever snapshot is named, and a refused file gets no record.
    let copy = env.path("copy.ovl");
    std::fs::copy(&overlay, &copy).unwrap();
    let out = env.run(&[
        "commit",
        "vm-fixed@latest",
        "--overlay",
        copy.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not an overlay Cairn made"), "{err}");
    assert!(!env.path("copy.ovl.base").exists());
}

#[test]
fn prune_waits_while_a_snapshot_is_exported() {
    let env = Env::new("0s", &[]);
    let img = disk(&env);
    let s = export(&env, &["vm@latest", "--name", "vm"]);
    let mut prune = env
        .cmd()
        .args(["prune", "--json"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    assert!(
        prune.try_wait().unwrap().is_none(),
        "prune must wait for the export to end"
    );
    assert!(nbd_equals(&s.url, &img));
    drop(s);
    let out = prune.wait_with_output().unwrap();
    assert!(out.status.success());
}
