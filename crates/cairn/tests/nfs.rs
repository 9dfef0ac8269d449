//! Instant recovery over NFS for hypervisors that attach NFS datastores,
//! checked with a real NFS client that needs no kernel support (Debian's
//! libnfs-utils: nfs-ls, nfs-cp, nfs-cat; and libnfs itself for writes).

mod common;
use common::*;
use std::path::Path;
use std::process::{Child, Command};

/// A running `cairn export --nfs`, stopped when dropped.
struct Server {
    child: Child,
    port: u16,
}

impl Drop for Server {
    fn drop(&mut self) {
        // SIGTERM, so the export flushes its overlays and exits cleanly.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

fn serve(env: &Env, args: &[&str]) -> Server {
    let mut cmd = env.cmd();
    cmd.args(["export", "--nfs", "--listen", "127.0.0.1:0"])
        .args(args);
    let (child, first) = spawn_ready(&mut cmd);
    let port = first
        .strip_prefix("nfs://127.0.0.1:")
        .and_then(|r| r.strip_suffix('/'))
        .unwrap_or_else(|| panic!("first line is the URL: {first:?}"))
        .parse()
        .unwrap();
    Server { child, port }
}

impl Server {
    fn url(&self, path: &str) -> String {
        format!(
            "nfs://127.0.0.1{path}?nfsport={p}&mountport={p}&version=3",
            p = self.port
        )
    }
}

fn nfs(tool: &str, args: &[&str]) -> std::process::Output {
    Command::new(tool).args(args).output().unwrap()
}

fn copy_out(server: &Server, path: &str, to: &Path) {
    let _ = std::fs::remove_file(to);
    let out = nfs("nfs-cp", &[&server.url(path), to.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "nfs-cp {path}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn pwrite(server: &Server, path: &str, offset: u64, data: &[u8], scratch: &Path) -> bool {
    std::fs::write(scratch, data).unwrap();
    let tool = in_package("tests/tools/nfs_pwrite.py");
    Command::new("python3")
        .arg(tool)
        .arg(server.url(path))
        .arg(offset.to_string())
        .arg(scratch)
        .output()
        .unwrap()
        .status
        .success()
}

fn two_days(env: &Env) -> (std::path::PathBuf, std::path::PathBuf, String, String) {
    let root = env.path("root");
    populate(&root);
    let day1 = env.path("day1.img");
    gpt_ext4_image(&day1, &root, 64);
    let a = env.backup(&day1, "vm", "2026-02-01T03:00:00Z");
    let day2 = env.path("day2.img");
    sh(
        "cp",
        &[
            "--sparse=always",
            day1.to_str().unwrap(),
            day2.to_str().unwrap(),
        ],
    );
    replace_guest_file(&day2, "/home/alice/notes.txt", &text(50_000, 42));
    let b = env.backup(&day2, "vm", "2026-02-02T03:00:00Z");
    (
        day1,
        day2,
        a["id"].as_str().unwrap().to_string(),
        b["id"].as_str().unwrap().to_string(),
    )
}

#[test]
fn two_snapshots_side_by_side_read_back_byte_for_byte_over_nfs() {
    let env = Env::new("30d", &[]);
    let (day1, day2, a, b) = two_days(&env);
    let server = serve(&env, &[&format!("vm@{}", &a[..8]), "vm@latest"]);
    let (fa, fb) = (format!("vm-{}", &a[..8]), format!("vm-{}", &b[..8]));

    let ls = nfs("nfs-ls", &["-R", &server.url("/")]);
    let ls = String::from_utf8_lossy(&ls.stdout);
    let size = std::fs::metadata(&day1).unwrap().len().to_string();
    for f in [&fa, &fb] {
        assert!(ls.contains(&format!("{size} {f}/disk.img")), "{ls}");
        assert!(ls.contains(&format!("{f}/snapshot.json")), "{ls}");
    }
    assert!(ls.contains("-r--r--r--"), "read-only files: {ls}");

    let out = env.path("out.img");
    copy_out(&server, &format!("/{fa}/disk.img"), &out);
    assert!(same_bytes(&out, &day1));
    copy_out(&server, &format!("/{fb}/disk.img"), &out);
    assert!(same_bytes(&out, &day2));

    let json = nfs("nfs-cat", &[&server.url(&format!("/{fb}/snapshot.json"))]);
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(v["id"], b.as_str());
    assert_eq!(v["time"], "2026-02-02T03:00:00Z");
    assert_eq!(v["writable"], false);

    // The tree allows no change: no new file, no write into a disk.
    let scratch = env.path("scratch");
    std::fs::write(&scratch, b"x").unwrap();
    let made = nfs(
        "nfs-cp",
        &[
            scratch.to_str().unwrap(),
            &server.url(&format!("/{fa}/new.txt")),
        ],
    );
    assert!(!made.status.success());
    assert!(!pwrite(
        &server,
        &format!("/{fa}/disk.img"),
        0,
        b"no",
        &scratch
    ));
    let ls2 = nfs("nfs-ls", &[&server.url(&format!("/{fa}"))]);
    assert!(!String::from_utf8_lossy(&ls2.stdout).contains("new.txt"));
}

#[test]
fn writes_through_a_writable_export_land_in_the_overlay_and_survive_a_restart() {
    let env = Env::new("30d", &[]);
    let (day1, _, a, _) = two_days(&env);
    let overlays = env.path("overlays");
    let spec = format!("vm@{}", &a[..8]);
    let folder = format!("vm-{}", &a[..8]);
    let disk = format!("/{folder}/disk.img");
    let scratch = env.path("scratch");
    let patch = noise(12_288, 5);
    {
        let server = serve(
            &env,
            &[&spec, "--writable", "--overlay", overlays.to_str().unwrap()],
        );
        assert!(pwrite(&server, &disk, 5 << 20, &patch, &scratch));
        // Only the disk takes writes.
        assert!(!pwrite(
            &server,
            &format!("/{folder}/snapshot.json"),
            0,
            b"{}",
            &scratch
        ));
    }
    assert!(overlays.join(format!("{folder}.overlay")).is_file());
    let mut want = std::fs::read(&day1).unwrap();
    want[5 << 20..(5 << 20) + patch.len()].copy_from_slice(&patch);
    let expected = env.path("expected.img");
    std::fs::write(&expected, &want).unwrap();

    // After a restart the writes are still there.
    let server = serve(
        &env,
        &[&spec, "--writable", "--overlay", overlays.to_str().unwrap()],
    );
    let out = env.path("out.img");
    copy_out(&server, &disk, &out);
    assert!(
        same_bytes(&out, &expected),
        "the disk shows the written bytes"
    );
    drop(server);

    // The vault never saw them.
    env.ok(&["verify", "--read-data"]);
    env.ok(&[
        "restore",
        &spec,
        "--to",
        env.path("restored.img").to_str().unwrap(),
    ]);
    assert!(same_bytes(&env.path("restored.img"), &day1));
}
