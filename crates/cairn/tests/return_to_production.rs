//! Return to production: a delta restore brings the attacked disk back to
//! the clean snapshot writing only the blocks the attack changed, and a
//! rollback keeps the newest work while undoing exactly what the attack
//! did (on a disk's files into a directory, and in place on a directory
//! source), with a provenance manifest that says where each file came from.

mod common;
use common::*;
use std::collections::BTreeSet;
use std::path::Path;
use std::process::Output;

fn day(d: u32) -> String {
    format!("2026-04-{:02}T02:00:00Z", d + 1)
}

fn code(out: &Output) -> Option<i32> {
    out.status.code()
}

fn report(i: usize) -> String {
    format!("home/alice/docs/report-{i}.txt")
}

#[test]
fn delta_restore_writes_only_what_the_attack_changed_and_rollback_keeps_new_work() {
    let env = Env::new("30d", &[]);
    let root = env.path("root");
    populate(&root);
    let disk = env.path("disk.img");
    gpt_ext4_image(&disk, &root, 64);
    for d in 0..4u32 {
        if d > 0 {
            replace_guest_file(&disk, &report(d as usize), &text(21_000, 700 + d as u64));
        }
        env.backup(&disk, "vm", &day(d));
    }
    let clean = env.path("clean.img");
    std::fs::copy(&disk, &clean).unwrap();

    // The attack encrypts five reports in place; the same day alice keeps
    // working on report-1.
    let mut touched = BTreeSet::new();
    for i in 10..15 {
        let len = 20_000 + i * 3000;
        overwrite_file_in_place(&disk, &report(i), &noise(len, 4_000 + i as u64));
        for off in file_offsets(&disk, &report(i)) {
            touched.insert(off / 65536);
        }
    }
    let newest_work = text(25_000, 999);
    replace_guest_file(&disk, &report(1), &newest_work);
    let out = env.run(&[
        "backup",
        disk.to_str().unwrap(),
        "--name",
        "vm",
        "--time",
        &day(4),
    ]);
    assert_eq!(code(&out), Some(3), "the attack is flagged");
    let attacked = env.path("attacked.img");
    std::fs::copy(&disk, &attacked).unwrap();

    // A dry run says what it would write and writes nothing.
    let dry = env.json(&[
        "restore",
        "vm@-1",
        "--to",
        disk.to_str().unwrap(),
        "--delta",
        "--dry-run",
    ]);
    assert!(
        same_bytes(&disk, &attacked),
        "a dry run wrote to the target"
    );
    assert!(dry["dry_run"].as_bool().unwrap());

    // The delta restore: bytes identical to the clean snapshot, and only
    // about the changed 64 KiB blocks written (the attack's, plus the few
    // metadata and report-1 blocks of that day).
    let r = env.json(&[
        "restore",
        "vm@-1",
        "--to",
        disk.to_str().unwrap(),
        "--delta",
        "--verify",
    ]);
    assert!(
        same_bytes(&disk, &clean),
        "delta restore did not reproduce the clean snapshot"
    );
    assert_eq!(r["verified"], true);
    assert_eq!(r["blocks_written"], dry["blocks_written"]);
    // The target had not changed since the attack was backed up from it:
    // that snapshot's digests stood for it, nothing was read to compare.
    assert!(
        r["compared_with"].as_str().unwrap().starts_with("vm@"),
        "{r}"
    );
    let written = r["blocks_written"].as_u64().unwrap();
    let total = r["blocks_compared"].as_u64().unwrap();
    assert!(
        written >= touched.len() as u64,
        "{written} < {} blocks the attack hit",
        touched.len()
    );
    assert!(
        written <= touched.len() as u64 + 12,
        "wrote {written} blocks for {} changed",
        touched.len()
    );
    assert_eq!(total, 1024, "a 64 MiB disk has 1024 blocks of 64 KiB");
    // Run again: nothing differs any more.
    let again = env.json(&[
        "restore",
        "vm@-1",
        "--to",
        disk.to_str().unwrap(),
        "--delta",
    ]);
    assert_eq!(again["blocks_written"], 0);
    // Now the target changed after every snapshot: it is read, and a
    // --since that claims otherwise is refused.
    assert!(again["compared_with"].is_null(), "{again}");
    let out = env.run(&[
        "restore",
        "vm@-1",
        "--to",
        disk.to_str().unwrap(),
        "--delta",
        "--since",
        "vm@latest",
    ]);
    assert_eq!(code(&out), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("changed after that snapshot"));

    // Damage after the last snapshot: the target is read and compared, the
    // damaged blocks alone are written, then read back and checked.
    let hit = [3u64, 200, 777];
    for b in hit {
        write_at(&disk, b * 65536 + 100, &noise(5000, b));
    }
    let fixed = env.json(&[
        "restore",
        "vm@-1",
        "--to",
        disk.to_str().unwrap(),
        "--delta",
    ]);
    assert!(fixed["compared_with"].is_null(), "{fixed}");
    assert_eq!(fixed["blocks_written"], hit.len() as u64, "{fixed}");
    // Inside each data block only the two pages the damage reached (bytes
    // 100 to 5,100) were written; blocks of zeros are punched out whole.
    let zeroed = fixed["blocks_zeroed"].as_u64().unwrap();
    assert!(zeroed < hit.len() as u64, "{fixed}");
    assert_eq!(
        fixed["bytes_written"],
        (hit.len() as u64 - zeroed) * 8192 + zeroed * 65536,
        "{fixed}"
    );
    assert_eq!(fixed["blocks_checked"], hit.len() as u64, "{fixed}");
    assert!(same_bytes(&disk, &clean));

    // A running VM (here qemu-nbd serving the image) holds a lock on it:
    // neither a delta restore nor a full restore over it goes ahead.
    let sock = env.path("nbd.sock");
    let mut nbd = std::process::Command::new("qemu-nbd")
        .args(["-f", "raw", "-k", sock.to_str().unwrap()])
        .arg(&disk)
        .spawn()
        .unwrap();
    for _ in 0..100 {
        if sock.exists() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(sock.exists(), "qemu-nbd did not start");
    write_at(&disk, 5 * 65536, &noise(4096, 9));
    let target = disk.to_str().unwrap();
    let refused: Vec<Output> = [
        &["--delta"][..],
        &["--overwrite"],
        &["--overwrite", "--dry-run"],
    ]
    .iter()
    .map(|flags| env.run(&[&["restore", "vm@-1", "--to", target][..], flags].concat()))
    .collect();
    let _ = nbd.kill();
    let _ = nbd.wait();
    for out in &refused {
        assert_eq!(
            code(out),
            Some(1),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("in use"),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert!(
        !same_bytes(&disk, &clean),
        "nothing was written while in use"
    );
    // Stopped, it can be restored again.
    env.json(&[
        "restore",
        "vm@-1",
        "--to",
        disk.to_str().unwrap(),
        "--delta",
    ]);
    assert!(same_bytes(&disk, &clean));

    // Another image moved into place and dated back (mv keeps mtime,
    // `touch -d` sets it): it is read, not taken for the disk backed up.
    let impostor = env.path("impostor.img");
    std::fs::copy(&clean, &impostor).unwrap();
    write_at(&impostor, 300 * 65536, &noise(5000, 77));
    let touched_back = std::process::Command::new("touch")
        .args(["-d", "2000-01-01"])
        .arg(&impostor)
        .status()
        .unwrap();
    assert!(touched_back.success());
    std::fs::rename(&impostor, &disk).unwrap();
    let r = env.json(&[
        "restore",
        "vm@-1",
        "--to",
        disk.to_str().unwrap(),
        "--delta",
    ]);
    assert!(r["compared_with"].is_null(), "{r}");
    assert!(same_bytes(&disk, &clean), "the moved-in image was trusted");

    // A full restore's dry run checks the target and writes nothing.
    let fresh = env.path("fresh.img");
    let plan = env.json(&[
        "restore",
        "vm@-1",
        "--to",
        fresh.to_str().unwrap(),
        "--dry-run",
    ]);
    assert!(!fresh.exists(), "a dry run created the target");
    assert_eq!(plan["dry_run"], true);
    assert_eq!(
        plan["bytes_written"].as_u64().unwrap() + plan["zero_bytes"].as_u64().unwrap(),
        plan["size"].as_u64().unwrap()
    );
    assert!(plan["bytes_written"].as_u64().unwrap() > 0, "{plan}");
    let out = env.run(&[
        "restore",
        "vm@-1",
        "--to",
        disk.to_str().unwrap(),
        "--dry-run",
    ]);
    assert_eq!(code(&out), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--overwrite"));

    // Clear errors for a target of the wrong kind.
    let out = env.run(&[
        "restore",
        "vm@-1",
        "--to",
        env.path("nope.img").to_str().unwrap(),
        "--delta",
    ]);
    assert_eq!(code(&out), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("existing disk image"));
    let out = env.run(&[
        "restore",
        "vm@-1",
        "--to",
        root.to_str().unwrap(),
        "--delta",
    ]);
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("neither a disk image file nor a block device")
    );

    // A FIFO is refused at once (no hang); a device name under /dev that
    // does not exist is not created as a RAM-backed image.
    let fifo = env.path("fifo");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    for extra in [&["--overwrite"][..], &["--delta"]] {
        let out = env.run(
            &[
                &["restore", "vm@-1", "--to", fifo.to_str().unwrap()][..],
                extra,
            ]
            .concat(),
        );
        assert_eq!(code(&out), Some(1), "{extra:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr)
                .contains("neither a disk image file nor a block device"),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let out = env.run(&["restore", "vm@-1", "--to", "/dev/cairn-no-such-disk"]);
    assert_eq!(code(&out), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no such device"));
    assert!(!Path::new("/dev/cairn-no-such-disk").exists());
    assert!(!Path::new("/dev/.cairn-no-such-disk.cairn-partial").exists());

    // A qcow2 image is not overwritten with raw disk bytes.
    let q = env.path("t.qcow2");
    let made = std::process::Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&q)
        .arg("64M")
        .status()
        .unwrap();
    assert!(made.success());
    let before = std::fs::read(&q).unwrap();
    let out = env.run(&["restore", "vm@-1", "--to", q.to_str().unwrap(), "--delta"]);
    assert_eq!(code(&out), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("qcow2 image"));
    assert_eq!(std::fs::read(&q).unwrap(), before);

    // A link planted where the full restore builds its image: the link's
    // target is left alone, and the image is its owner's only.
    let victim = env.path("victim");
    std::fs::write(&victim, b"keep me").unwrap();
    let img = env.path("planted.img");
    std::os::unix::fs::symlink(&victim, env.path(".planted.img.cairn-partial")).unwrap();
    env.json(&["restore", "vm@-1", "--to", img.to_str().unwrap()]);
    assert_eq!(std::fs::read(&victim).unwrap(), b"keep me");
    assert!(same_bytes(&img, &clean));
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&img).unwrap().permissions().mode() & 0o777,
        0o600
    );

    // An image attached to a loop device (a filesystem may be mounted
    // from it) is in use, though it carries no lock.
    let attached = std::process::Command::new("losetup")
        .args(["-f", "--show"])
        .arg(&img)
        .output()
        .unwrap();
    if attached.status.success() {
        let dev = String::from_utf8_lossy(&attached.stdout).trim().to_string();
        let out = env.run(&[
            "restore",
            "vm@latest",
            "--to",
            img.to_str().unwrap(),
            "--delta",
        ]);
        // A loop device on the loop device (a partition of it set up
        // with an offset, say, and mounted): the first is in use too.
        let stacked = std::process::Command::new("losetup")
            .args(["-f", "--show", &dev])
            .output()
            .unwrap();
        let upper = String::from_utf8_lossy(&stacked.stdout).trim().to_string();
        let onto_dev = env.run(&["restore", "vm@latest", "--to", &dev, "--overwrite"]);
        for d in [&upper, &dev] {
            let _ = std::process::Command::new("losetup")
                .args(["-d", d])
                .status();
        }
        assert_eq!(code(&out), Some(1));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("in use") && err.contains(&dev), "{err}");
        if stacked.status.success() {
            let err = String::from_utf8_lossy(&onto_dev.stderr);
            assert_eq!(code(&onto_dev), Some(1), "{err}");
            assert!(err.contains("in use") && err.contains(&upper), "{err}");
        }
        assert!(same_bytes(&img, &clean));
    } else {
        eprintln!("no loop devices here: the loop check was not exercised");
    }

    // Rollback of the disk's files: the newest snapshot, with the five
    // encrypted reports from before the attack and report-1 as alice left it.
    let out_dir = env.path("rolled");
    let rb = env.json(&["rollback", "vm", "--to-dir", out_dir.to_str().unwrap()]);
    assert_eq!(rb["restored"], 5, "{rb}");
    assert_eq!(rb["dropped"], 0);
    for i in 10..15 {
        let got = std::fs::read(out_dir.join(report(i))).unwrap();
        assert_eq!(
            got,
            std::fs::read(root.join(format!("home/alice/docs/report-{i}.txt"))).unwrap(),
            "report-{i}"
        );
    }
    assert_eq!(std::fs::read(out_dir.join(report(1))).unwrap(), newest_work);
    assert_eq!(
        std::fs::read(out_dir.join("etc/hostname")).unwrap(),
        b"guest\n"
    );
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(env.path("rolled.cairn-provenance.json")).unwrap())
            .unwrap();
    let files = manifest["files"].as_array().unwrap();
    let entry = |p: &str| {
        files
            .iter()
            .find(|f| f["path"] == p)
            .unwrap_or_else(|| panic!("{p} not in the manifest"))
    };
    let r10 = entry("/home/alice/docs/report-10.txt");
    assert_eq!(r10["action"], "restored");
    assert!(
        r10["reason"]
            .as_str()
            .unwrap()
            .contains("encrypted in place")
    );
    let clean_id = env.json(&["snapshots", "vm"]).as_array().unwrap()[3]["id"].clone();
    assert_eq!(r10["snapshot"], clean_id);
    assert_eq!(entry("/home/alice/docs/report-1.txt")["action"], "kept");
}

#[test]
fn rollback_in_place_repairs_a_directory_source_and_keeps_newer_edits() {
    let env = Env::new("30d", &[]);
    let dir = env.path("share");
    let docs = dir.join("docs");
    let other = dir.join("projects");
    std::fs::create_dir_all(&docs).unwrap();
    std::fs::create_dir_all(&other).unwrap();
    for i in 0..12 {
        std::fs::write(
            docs.join(format!("doc{i}.txt")),
            text(15_000 + i * 500, i as u64),
        )
        .unwrap();
        std::fs::write(
            other.join(format!("plan{i}.md")),
            text(9_000, 50 + i as u64),
        )
        .unwrap();
    }
    let src = dir.to_str().unwrap();
    for d in 0..4u32 {
        if d > 0 {
            std::fs::write(docs.join("doc0.txt"), text(16_000, 100 + d as u64)).unwrap();
        }
        env.backup(&dir, "share", &day(d));
    }
    let last_clean: Vec<Vec<u8>> = (0..12)
        .map(|i| std::fs::read(docs.join(format!("doc{i}.txt"))).unwrap())
        .collect();

    // The attack: doc3..doc6 replaced by encrypted copies, doc7 encrypted
    // where it is, a note in both folders. Bob keeps editing doc1 and
    // plan2 that day and the next.
    for i in 3..7 {
        let p = docs.join(format!("doc{i}.txt"));
        let len = std::fs::metadata(&p).unwrap().len() as usize;
        std::fs::write(
            docs.join(format!("doc{i}.txt.locked")),
            noise(len, 300 + i as u64),
        )
        .unwrap();
        std::fs::remove_file(&p).unwrap();
    }
    let len7 = last_clean[7].len();
    std::fs::write(docs.join("doc7.txt"), noise(len7, 77)).unwrap();
    let note = "Your files are encrypted. To decrypt them pay 0.1 bitcoin; write to our Tor site \
                abcdefghijklmnopqrstuvwxyz234567abcdefghijklmnopqrstuvwx.onion with your personal ID.";
    std::fs::write(docs.join("HOW_TO_DECRYPT.txt"), note).unwrap();
    std::fs::write(other.join("HOW_TO_DECRYPT.txt"), note).unwrap();
    std::fs::write(docs.join("doc1.txt"), text(17_000, 555)).unwrap();
    // And one document simply deleted, with nothing in its place.
    std::fs::remove_file(docs.join("doc11.txt")).unwrap();
    let out = env.run(&["backup", src, "--name", "share", "--time", &day(4)]);
    assert_eq!(
        code(&out),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let newest_doc1 = text(18_000, 556);
    let newest_plan2 = text(9_500, 557);
    std::fs::write(docs.join("doc1.txt"), &newest_doc1).unwrap();
    std::fs::write(other.join("plan2.md"), &newest_plan2).unwrap();
    std::fs::write(other.join("plan-new.md"), text(4_000, 558)).unwrap();
    let out = env.run(&["backup", src, "--name", "share", "--time", &day(5)]);
    assert_eq!(
        code(&out),
        Some(3),
        "damage still present: not a clean point"
    );

    // A dry run changes nothing.
    let dry = env.json(&["rollback", "share", "--in-place", src, "--dry-run"]);
    assert!(docs.join("HOW_TO_DECRYPT.txt").exists());
    assert_eq!(dry["restored"], 6, "{dry}");
    // In words: a line per file repaired, then the summary; --quiet
    // keeps the summary alone.
    let lines = |quiet: bool| {
        let mut args = vec!["rollback", "share", "--in-place", src, "--dry-run"];
        if quiet {
            args.push("--quiet");
        }
        let out = env.run(&args);
        assert_eq!(
            code(&out),
            Some(0),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let (loud, quiet) = (lines(false), lines(true));
    assert!(loud.lines().any(|l| l.starts_with("restored")), "{loud}");
    assert_eq!(quiet.lines().count(), 1, "{quiet}");
    assert!(
        quiet.starts_with("dry run: ") && loud.ends_with(&quiet),
        "{quiet}"
    );
    // --since moves where damage is looked for: from the newest snapshot
    // on there was none (the attack was the day before); only what the
    // scan rollback ran first flagged (the ransom notes) still goes.
    let latest = env
        .json(&["snapshots", "share"])
        .as_array()
        .unwrap()
        .last()
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let later = env.json(&[
        "rollback",
        "share",
        "--in-place",
        src,
        "--dry-run",
        "--since",
        "latest",
    ]);
    assert_eq!(later["since"], latest.as_str(), "{later}");
    assert_eq!(
        (later["restored"].as_u64(), later["dropped"].as_u64()),
        (Some(0), Some(2)),
        "{later}"
    );
    for f in later["files"].as_array().unwrap() {
        if f["action"] == "dropped" {
            assert!(
                f["path"].as_str().unwrap().ends_with("HOW_TO_DECRYPT.txt")
                    && f["reason"]
                        .as_str()
                        .unwrap()
                        .contains("flagged by verification"),
                "{f}"
            );
        }
    }
    let out = env.run(&[
        "rollback",
        "share",
        "--in-place",
        src,
        "--since",
        "ffffffff",
    ]);
    assert_eq!(code(&out), Some(1));

    // Another folder is not the source: refused, nothing written there.
    let elsewhere = env.path("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    let out = env.run(&[
        "rollback",
        "share",
        "--in-place",
        elsewhere.to_str().unwrap(),
    ]);
    assert_eq!(code(&out), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("is not where share was backed up from"),
        "{err}"
    );
    assert_eq!(std::fs::read_dir(&elsewhere).unwrap().count(), 0);
    // A provenance that cannot be written is refused before the tree is
    // touched.
    let out = env.run(&[
        "rollback",
        "share",
        "--in-place",
        src,
        "--provenance",
        "/nonexistent/folder/p.json",
    ]);
    assert_eq!(code(&out), Some(1));
    assert!(docs.join("HOW_TO_DECRYPT.txt").exists());

    // The attack, still at work, swaps the folder for a link to a copy of
    // it: nothing is written through the link, the repairs there fail,
    // and the rollback says so with exit 1 (the other folder's note goes).
    let moved = env.path("docs-moved");
    std::fs::rename(&docs, &moved).unwrap();
    std::os::unix::fs::symlink(&moved, &docs).unwrap();
    let out = env.run(&["rollback", "share", "--in-place", src, "--json"]);
    assert_eq!(
        code(&out),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let partial: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(partial["failed"].as_u64().unwrap() >= 5, "{partial}");
    assert!(moved.join("HOW_TO_DECRYPT.txt").exists() && !moved.join("doc3.txt").exists());
    assert!(!other.join("HOW_TO_DECRYPT.txt").exists());
    std::fs::remove_file(&docs).unwrap();
    std::fs::rename(&moved, &docs).unwrap();

    // Since the last backup, doc7's owner rewrote the encrypted file and
    // someone kept a note in one the attack made: both are left alone and
    // reported, never replaced or deleted.
    let rewritten7 = text(len7, 559);
    std::fs::write(docs.join("doc7.txt"), &rewritten7).unwrap();
    std::fs::write(docs.join("doc4.txt.locked"), b"the key they sent us").unwrap();

    // The provenance never goes inside the tree (the attacker may write
    // there), and a link planted where it goes is replaced, not followed.
    let inside = docs.join("p.json");
    let out = env.run(&[
        "rollback",
        "share",
        "--in-place",
        src,
        "--provenance",
        inside.to_str().unwrap(),
    ]);
    assert_eq!(code(&out), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("would be inside"), "{err}");
    assert!(docs.join("HOW_TO_DECRYPT.txt").exists() && !inside.exists());
    let canary = env.path("canary");
    std::fs::write(&canary, b"not yours").unwrap();
    // (In place of the manifest the failed rollback above wrote.)
    std::fs::remove_file(env.path("share.cairn-provenance.json")).unwrap();
    std::os::unix::fs::symlink(&canary, env.path("share.cairn-provenance.json")).unwrap();

    // A dry run says what the run will do, files changed since included.
    let dry = env.json(&["rollback", "share", "--in-place", src, "--dry-run"]);
    let r = env.json(&["rollback", "share", "--in-place", src]);
    for k in ["restored", "dropped", "kept", "skipped"] {
        assert_eq!(dry[k], r[k], "{k}: {dry:#}\n{r:#}");
    }
    assert_eq!(std::fs::read(&canary).unwrap(), b"not yours");
    assert!(
        !std::fs::symlink_metadata(env.path("share.cairn-provenance.json"))
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert_eq!(r["restored"], 5, "4 damaged and 1 deleted: {r}");
    assert_eq!(
        r["dropped"], 5,
        "3 encrypted copies and 2 notes (one gone already): {r}"
    );
    let skipped = r["skipped"].to_string();
    assert!(
        skipped.contains("doc7.txt: changed since the last backup")
            && skipped.contains("doc4.txt.locked: changed since the last backup"),
        "{skipped}"
    );
    assert_eq!(std::fs::read(docs.join("doc7.txt")).unwrap(), rewritten7);
    assert_eq!(
        std::fs::read(docs.join("doc4.txt.locked")).unwrap(),
        b"the key they sent us"
    );
    assert_eq!(
        std::fs::read(docs.join("doc11.txt")).unwrap(),
        last_clean[11],
        "the deleted document is back"
    );
    for (i, clean) in last_clean.iter().enumerate().take(7).skip(3) {
        assert_eq!(
            &std::fs::read(docs.join(format!("doc{i}.txt"))).unwrap(),
            clean,
            "doc{i}"
        );
        assert_eq!(docs.join(format!("doc{i}.txt.locked")).exists(), i == 4);
    }
    assert!(
        !docs.join("HOW_TO_DECRYPT.txt").exists() && !other.join("HOW_TO_DECRYPT.txt").exists()
    );
    assert_eq!(
        std::fs::read(docs.join("doc1.txt")).unwrap(),
        newest_doc1,
        "newer work kept"
    );
    assert_eq!(
        std::fs::read(other.join("plan2.md")).unwrap(),
        newest_plan2,
        "newer work kept"
    );
    assert_eq!(std::fs::read(docs.join("doc0.txt")).unwrap(), last_clean[0]);

    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(env.path("share.cairn-provenance.json")).unwrap())
            .unwrap();
    let files = manifest["files"].as_array().unwrap();
    let entry = |p: &str| {
        files
            .iter()
            .find(|f| f["path"] == p)
            .unwrap_or_else(|| panic!("{p} missing"))
    };
    assert_eq!(entry("/docs/doc4.txt")["action"], "restored");
    assert!(
        entry("/docs/doc4.txt")["reason"]
            .as_str()
            .unwrap()
            .contains("doc4.txt.locked")
    );
    assert_eq!(entry("/docs/doc4.txt.locked")["action"], "kept");
    assert_eq!(entry("/docs/doc5.txt.locked")["action"], "dropped");
    assert_eq!(entry("/docs/doc7.txt")["action"], "kept");
    assert_eq!(entry("/projects/HOW_TO_DECRYPT.txt")["action"], "dropped");
    assert_eq!(entry("/docs/doc1.txt")["action"], "kept");
    assert!(
        entry("/docs/doc11.txt")["reason"]
            .as_str()
            .unwrap()
            .contains("deleted since the clean point")
    );
    let new = entry("/projects/plan-new.md");
    assert_eq!(new["action"], "kept");
    assert!(
        new["reason"]
            .as_str()
            .unwrap()
            .contains("new since the clean point"),
        "{new}"
    );

    // A second rollback keeps the first one's record of what it changed
    // (renamed after the time it was written) beside its own.
    // (Two within one second keep both.)
    let first = std::fs::read(env.path("share.cairn-provenance.json")).unwrap();
    // It finds the files the first restored as it wrote them: nothing to
    // say of them (only of what was left alone before).
    let again = env.json(&["rollback", "share", "--in-place", src]);
    assert_eq!(again["skipped"], r["skipped"], "{again:#}");
    let second = std::fs::read(env.path("share.cairn-provenance.json")).unwrap();
    env.json(&["rollback", "share", "--in-place", src]);
    let kept: Vec<Vec<u8>> = std::fs::read_dir(env.path(""))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("share.cairn-provenance.") && n != "share.cairn-provenance.json")
        .map(|n| std::fs::read(env.path(&n)).unwrap())
        .collect();
    assert_eq!(kept.len(), 2);
    assert!(kept.contains(&first) && kept.contains(&second));

    // After the repair, the next backup is clean again.
    let v = env.backup(&dir, "share", &day(6));
    assert_eq!(v["insight"]["verdict"], "clean", "{v}");
}

#[test]
fn rollback_undoes_what_verification_flagged_and_keeps_the_rest() {
    let env = Env::new("30d", &[]);
    let dir = env.path("site");
    for d in ["www", "bin", "docs"] {
        std::fs::create_dir_all(dir.join(d)).unwrap();
    }
    let deploy = b"#!/bin/sh\nset -e\nrsync -a build/ /srv/www/\n".to_vec();
    std::fs::write(dir.join("bin/deploy.sh"), &deploy).unwrap();
    std::fs::write(dir.join("www/index.html"), text(6_000, 1)).unwrap();
    std::fs::write(dir.join("docs/report.txt"), text(12_000, 2)).unwrap();
    let src = dir.to_str().unwrap();
    let backup = |d: u32| env.run(&["backup", src, "--name", "site", "--time", &day(d)]);
    backup(0);
    std::fs::write(dir.join("docs/report.txt"), text(12_500, 3)).unwrap();
    backup(1);

    // Day 2: an intruder drops a file with malware in it beside the site
    // and appends some to the deploy script; the report is edited as
    // usual that day and the next.
    std::fs::write(dir.join("www/upload.php"), EICAR).unwrap();
    let mut infected = deploy.clone();
    infected.extend_from_slice(b"# ");
    infected.extend_from_slice(EICAR);
    infected.push(b'\n');
    std::fs::write(dir.join("bin/deploy.sh"), &infected).unwrap();
    std::fs::write(dir.join("docs/report.txt"), text(13_000, 4)).unwrap();
    backup(2);
    let newest_report = text(13_500, 5);
    std::fs::write(dir.join("docs/report.txt"), &newest_report).unwrap();
    backup(3);

    // Only the newest snapshot is scanned: day 2 holds the same planted
    // bytes, so the good versions are looked for before it.
    let out = env.run(&["scan", "site@latest"]);
    assert_eq!(
        code(&out),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    let r = env.json(&["rollback", "site", "--in-place", src]);
    assert!(!dir.join("www/upload.php").exists(), "{r}");
    assert_eq!(std::fs::read(dir.join("bin/deploy.sh")).unwrap(), deploy);
    assert_eq!(
        std::fs::read(dir.join("docs/report.txt")).unwrap(),
        newest_report,
        "newer work kept"
    );
    let files = r["files"].as_array().unwrap();
    let entry = |p: &str| files.iter().find(|f| f["path"] == p).unwrap().clone();
    let shell = entry("/www/upload.php");
    assert_eq!(shell["action"], "dropped", "{shell}");
    assert!(
        shell["reason"]
            .as_str()
            .unwrap()
            .contains("flagged by verification"),
        "{shell}"
    );
    let script = entry("/bin/deploy.sh");
    assert_eq!(script["action"], "restored", "{script}");
    let day1 = env.json(&["snapshots", "site"]);
    let day1_id = day1.as_array().unwrap()[1]["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(script["snapshot"], day1_id.as_str(), "{script}");
    assert_eq!(entry("/docs/report.txt")["action"], "kept");
}

/// Asserts that `path` holds the same bytes below `a` and below `b`.
fn same_file(a: &Path, b: &Path, path: &str) {
    assert_eq!(
        std::fs::read(a.join(path)).unwrap(),
        std::fs::read(b.join(path)).unwrap(),
        "{path}"
    );
}

/// `cairn timeline vm --json`: its exit code and what it printed.
fn timeline(env: &Env) -> (Option<i32>, serde_json::Value) {
    let out = env.run(&["timeline", "vm", "--json"]);
    (code(&out), serde_json::from_slice(&out.stdout).unwrap())
}

/// Backs up `disk` as vm on day `d` whatever insight says (exit 0 or 3),
/// and returns the backup's JSON.
fn backup_any(env: &Env, disk: &Path, d: u32) -> serde_json::Value {
    let out = env.run(&[
        "backup",
        disk.to_str().unwrap(),
        "--name",
        "vm",
        "--time",
        &day(d),
        "--json",
    ]);
    assert!(
        matches!(code(&out), Some(0 | 3)),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// A file the newest snapshot cannot read (its extent points past the
/// disk) comes into a rollback's new folder from the newest snapshot
/// where it reads, instead of being left out.
#[test]
fn rollback_takes_a_file_unreadable_in_the_newest_snapshot_from_an_earlier_one() {
    let env = Env::new("30d", &[]);
    let root = env.path("root");
    populate(&root);
    let disk = env.path("disk.img");
    gpt_ext4_image(&disk, &root, 64);
    four_days_then_encryption(&env, &disk);
    debugfs_w(&disk, &format!("sif /{} block[5] 0xfffffff0", report(3)));
    backup_any(&env, &disk, 4);
    assert!(
        !env.run(&["cat", &format!("vm@latest:/{}", report(3))])
            .status
            .success()
    );

    let out_dir = env.path("rolled");
    let rb = env.json(&["rollback", "vm", "--to-dir", out_dir.to_str().unwrap()]);
    assert_eq!(rb["failed"], 0, "{rb}");
    for i in 10..15 {
        assert_eq!(
            std::fs::read(out_dir.join(report(i))).unwrap(),
            std::fs::read(root.join(report(i))).unwrap(),
            "report-{i}"
        );
    }
    // As alice left it on day 3 (see `four_days_then_encryption`).
    assert_eq!(
        std::fs::read(out_dir.join(report(3))).unwrap(),
        text(21_000, 503)
    );
    let three = rb["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["path"] == format!("/{}", report(3)))
        .unwrap();
    assert_eq!(three["action"], "restored", "{three}");
    assert!(
        three["reason"].as_str().unwrap().contains("unreadable in"),
        "{three}"
    );
}

#[test]
fn rollback_works_around_a_broken_folder_and_an_unreadable_newest_snapshot() {
    let env = Env::new("30d", &[]);
    let root = env.path("root");
    populate(&root);
    let disk = env.path("disk.img");
    gpt_ext4_image(&disk, &root, 64);
    // Days 0-3 clean, then five reports encrypted in place, backed up on
    // day 4. Day 5: work goes on (in the folder about to break, and on
    // report-1). Day 6: that folder's directory block is wiped, hiding
    // what it holds.
    four_days_then_encryption(&env, &disk);
    backup_any(&env, &disk, 4);
    let new_module = text(9_000, 4242);
    replace_guest_file(&disk, "srv/app/src/mod3.rs", &new_module);
    let newest_report = text(23_000, 4343);
    replace_guest_file(&disk, &report(1), &newest_report);
    backup_any(&env, &disk, 5);
    let dir_blocks = file_offsets(&disk, "srv/app/src");
    assert!(!dir_blocks.is_empty());
    for off in &dir_blocks {
        write_at(&disk, *off, &[0u8; 4096]);
    }
    let b6 = backup_any(&env, &disk, 6);

    // Insight still compares what it can read: the broken folder is named
    // as a reason, and the encrypted reports are still counted.
    let (exit, t) = timeline(&env);
    assert_eq!(exit, Some(3), "a compromised point exits 3");
    let last = t["snapshots"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["id"], b6["id"]);
    assert_ne!(last["verdict"], "clean", "{last}");
    let reasons = last["reasons"].to_string();
    assert!(
        reasons.contains("no longer readable") && reasons.contains("/srv/app/src"),
        "{reasons}"
    );
    assert!(last["filesystem_error"].is_null(), "{last}");
    // `cairn diff` compares the rest too, and names the folder it could
    // not (its files are unknown, not deleted).
    let d = env.json(&["diff", "vm@-1", "vm@latest"]);
    assert!(d["unread"].to_string().contains("srv/app/src"), "{d}");
    assert!(
        !d["deleted"].to_string().contains("srv/app/src"),
        "{}",
        d["deleted"]
    );

    // The rollback: everything alice did survives, the encrypted reports
    // come from before the attack, the broken folder from day 5.
    let check = |out_dir: &Path, rb: &serde_json::Value| {
        for i in 10..15 {
            same_file(out_dir, &root, &report(i));
        }
        assert_eq!(
            std::fs::read(out_dir.join(report(1))).unwrap(),
            newest_report
        );
        assert_eq!(
            std::fs::read(out_dir.join("srv/app/src/mod3.rs")).unwrap(),
            new_module,
            "the folder's newest readable version"
        );
        for i in [0, 9] {
            same_file(out_dir, &root, &format!("srv/app/src/mod{i}.rs"));
        }
        let m3 = provenance_of(rb, "/srv/app/src/mod3.rs");
        assert_eq!(m3["action"], "restored", "{m3}");
        assert!(
            m3["reason"].as_str().unwrap().contains("cannot be read"),
            "{m3}"
        );
        assert_eq!(
            provenance_of(rb, &format!("/{}", report(12)))["action"],
            "restored"
        );
        assert!(
            rb["notes"].to_string().contains("srv/app/src"),
            "{}",
            rb["notes"]
        );
    };
    let out_dir = env.path("rolled");
    let rb = env.json(&["rollback", "vm", "--to-dir", out_dir.to_str().unwrap()]);
    assert_eq!(rb["latest"], b6["id"]);
    check(&out_dir, &rb);

    // Day 7: the filesystem's superblock is gone too. The rollback starts
    // from day 6, the newest snapshot it can read, and says so.
    write_at(&disk, (1 << 20) + 1024, &[0u8; 1024]);
    backup_any(&env, &disk, 7);
    let out_dir = env.path("rolled-again");
    let rb = env.json(&["rollback", "vm", "--to-dir", out_dir.to_str().unwrap()]);
    assert_eq!(rb["latest"], b6["id"], "{rb}");
    assert!(
        rb["notes"].to_string().contains("cannot be read"),
        "{}",
        rb["notes"]
    );
    check(&out_dir, &rb);
}

/// The rollback's provenance entry for `path`.
fn provenance_of<'a>(rb: &'a serde_json::Value, path: &str) -> &'a serde_json::Value {
    rb["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["path"] == path)
        .unwrap_or_else(|| panic!("{path} not in {rb}"))
}

#[test]
fn a_folder_broken_for_a_day_or_a_loop_does_not_hide_encryption() {
    let env = Env::new("30d", &[]);
    let root = env.path("root");
    populate(&root);
    std::fs::create_dir_all(root.join("srv/tools")).unwrap();
    std::fs::write(root.join("srv/tools/old.sh"), b"#!/bin/sh\necho old\n").unwrap();
    let disk = env.path("disk.img");
    gpt_ext4_image(&disk, &root, 64);
    for d in 0..3u32 {
        if d == 1 {
            // Removed on purpose: nothing may bring it back.
            debugfs_w(&disk, "rm /srv/tools/old.sh");
            debugfs_w(&disk, "rmdir /srv/tools");
        }
        env.backup(&disk, "vm", &day(d));
    }
    // Day 3: five modules encrypted in place and their folder's directory
    // block broken; a new folder where the removed one was, broken too.
    // Day 4: the folder's block put back (the encryption now in plain
    // view, against the last snapshot read whole).
    let mut plain = Vec::new();
    for i in 0..5 {
        let path = format!("srv/app/src/mod{i}.rs");
        plain.push(std::fs::read(root.join(&path)).unwrap());
        overwrite_file_in_place(&disk, &path, &noise(8_000, 60 + i as u64));
    }
    debugfs_w(&disk, "mkdir /srv/tools");
    let dir_block = file_offsets(&disk, "srv/app/src")[0];
    let saved =
        std::fs::read(&disk).unwrap()[dir_block as usize..dir_block as usize + 4096].to_vec();
    write_at(&disk, dir_block, &[0u8; 4096]);
    write_at(&disk, file_offsets(&disk, "srv/tools")[0], &[0u8; 4096]);
    let b3 = backup_any(&env, &disk, 3);
    write_at(&disk, dir_block, &saved);
    let b4 = backup_any(&env, &disk, 4);

    let (exit, t) = timeline(&env);
    assert_eq!(exit, Some(3), "the newest point is not clean");
    let snaps = t["snapshots"].as_array().unwrap();
    let (d3, d4) = (&snaps[3], &snaps[4]);
    assert_eq!(d3["id"], b3["id"]);
    assert!(
        d3["reasons"]
            .to_string()
            .contains("(/srv/tools) that cannot be read appeared"),
        "a new folder that does not read is named: {d3}"
    );
    assert_eq!(d4["id"], b4["id"]);
    assert_eq!(d4["verdict"], "compromised", "{d4}");
    assert!(d4["reasons"].to_string().contains("encrypted"), "{d4}");
    assert_eq!(t["last_clean"], snaps[2]["id"], "{}", t["last_clean"]);

    let out_dir = env.path("rolled");
    let rb = env.json(&["rollback", "vm", "--to-dir", out_dir.to_str().unwrap()]);
    for (i, want) in plain.iter().enumerate() {
        let path = format!("srv/app/src/mod{i}.rs");
        assert_eq!(&std::fs::read(out_dir.join(&path)).unwrap(), want, "{path}");
        assert_eq!(
            provenance_of(&rb, &format!("/{path}"))["action"],
            "restored"
        );
    }
    assert!(
        !out_dir.join("srv/tools/old.sh").exists(),
        "a file removed on purpose came back: {}",
        provenance_of(&rb, "/srv/tools/old.sh")
    );

    // Day 5: a directory loop (a hard link to a folder above it) and three
    // reports encrypted in place; day 6: the loop gone again. The loop is
    // left out, the rest compared: the reports are found and restored.
    debugfs_w(&disk, "link /home/alice /home/alice/docs/back");
    for i in 15..18 {
        overwrite_file_in_place(&disk, &report(i), &noise(20_000 + i * 3000, 80 + i as u64));
    }
    let b5 = backup_any(&env, &disk, 5);
    debugfs_w(&disk, "unlink /home/alice/docs/back");
    backup_any(&env, &disk, 6);
    let (exit, t) = timeline(&env);
    assert_eq!(exit, Some(3), "the newest point is not clean");
    let d5 = &t["snapshots"][5];
    assert_eq!(d5["id"], b5["id"]);
    assert!(d5["filesystem_error"].is_null(), "{d5}");
    assert!(d5["reasons"].to_string().contains("encrypted"), "{d5}");
    let out_dir = env.path("rolled-again");
    let rb = env.json(&["rollback", "vm", "--to-dir", out_dir.to_str().unwrap()]);
    for i in 15..18 {
        same_file(&out_dir, &root, &report(i));
    }
    assert_eq!(
        std::fs::read(out_dir.join("srv/app/src/mod0.rs")).unwrap(),
        plain[0]
    );
    assert_eq!(
        provenance_of(&rb, &format!("/{}", report(16)))["action"],
        "restored"
    );

    // Day 7: a folder emptied and made a hard link to another one (two
    // names, one directory): what it held is gone, whichever name the
    // walk takes for the copy. Flagged, and the video comes back.
    debugfs_w(&disk, "rm /home/alice/media/video.mp4");
    debugfs_w(&disk, "rmdir /home/alice/media");
    debugfs_w(&disk, "link /srv/app/src /home/alice/media");
    backup_any(&env, &disk, 7);
    let (exit, t) = timeline(&env);
    assert_eq!(exit, Some(3), "the newest point is not clean");
    let d7 = &t["snapshots"][7];
    assert!(
        d7["reasons"].to_string().contains("no longer readable"),
        "{d7}"
    );
    let out_dir = env.path("rolled-third");
    env.json(&["rollback", "vm", "--to-dir", out_dir.to_str().unwrap()]);
    same_file(&out_dir, &root, "home/alice/media/video.mp4");
}

/// A vault with a 64 MiB GPT+ext4 guest made from `populate`, backed up
/// on three ordinary days: (env, the guest's files, the disk).
fn three_clean_days() -> (Env, std::path::PathBuf, std::path::PathBuf) {
    let env = Env::new("30d", &[]);
    let root = env.path("root");
    populate(&root);
    let disk = env.path("disk.img");
    gpt_ext4_image(&disk, &root, 64);
    for d in 0..3u32 {
        env.backup(&disk, "vm", &day(d));
    }
    (env, root, disk)
}

#[test]
fn a_folder_left_broken_stays_flagged_and_comes_back() {
    let (env, root, disk) = three_clean_days();
    // From day 3 on, /etc does not read, for longer than insight looks
    // back for a snapshot read whole.
    write_at(&disk, file_offsets(&disk, "etc")[0], &[0u8; 4096]);
    for d in 3..14u32 {
        backup_any(&env, &disk, d);
    }
    let (exit, t) = timeline(&env);
    assert_eq!(exit, Some(3), "a compromised point exits 3");
    let last = t["snapshots"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["verdict"], "compromised", "{last}");
    let reasons = last["reasons"].to_string();
    assert!(
        reasons.contains("/etc") && reasons.contains("still"),
        "{last}"
    );
    assert_eq!(t["last_clean"], t["snapshots"][2]["id"]);
    let out_dir = env.path("rolled");
    let rb = env.json(&["rollback", "vm", "--to-dir", out_dir.to_str().unwrap()]);
    same_file(&out_dir, &root, "etc/hostname");
    assert_eq!(provenance_of(&rb, "/etc/hostname")["action"], "restored");
}

#[test]
fn rollback_brings_back_folders_an_attack_replaced_with_a_file_or_a_link() {
    let (env, root, disk) = three_clean_days();
    debugfs_w(&disk, "rm /etc/hostname");
    debugfs_w(&disk, "rmdir /etc");
    write_guest_file(&disk, "/etc", b"not a folder any more\n");
    for i in 0..10 {
        debugfs_w(&disk, &format!("rm /srv/app/src/mod{i}.rs"));
    }
    debugfs_w(&disk, "rmdir /srv/app/src");
    debugfs_w(&disk, "symlink /srv/app/src /tmp");
    // Removing two folders passes for an ordinary day: the operator names
    // where the damage began.
    let b3 = backup_any(&env, &disk, 3);
    let out_dir = env.path("rolled");
    let rb = env.json(&[
        "rollback",
        "vm",
        "--to-dir",
        out_dir.to_str().unwrap(),
        "--since",
        b3["id"].as_str().unwrap(),
    ]);
    assert_eq!(rb["failed"], 0, "{rb}");
    same_file(&out_dir, &root, "etc/hostname");
    same_file(&out_dir, &root, "srv/app/src/mod7.rs");
    assert!(
        !std::fs::symlink_metadata(out_dir.join("srv/app/src"))
            .unwrap()
            .file_type()
            .is_symlink()
    );
    let etc = provenance_of(&rb, "/etc");
    assert_eq!(etc["action"], "dropped", "{etc}");

    // Day 4: a folder with files moved into a new folder that does not
    // read: as out of sight as a folder that broke, and flagged as such.
    debugfs_w(&disk, "mkdir /archive");
    debugfs_w(&disk, "link /home/alice/docs /archive/docs");
    debugfs_w(&disk, "unlink /home/alice/docs");
    write_at(&disk, file_offsets(&disk, "archive")[0], &[0u8; 4096]);
    backup_any(&env, &disk, 4);
    let (exit, t) = timeline(&env);
    assert_eq!(exit, Some(3));
    let last = t["snapshots"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["verdict"], "compromised", "{last}");
    assert!(
        last["reasons"]
            .to_string()
            .contains("(/archive) no longer readable"),
        "{last}"
    );
}

/// What a restore keeps, a rollback of a directory source keeps too: a
/// document's extended attributes (and its folder's), and two names of
/// one file stay one file.
#[test]
fn a_rollback_of_a_directory_keeps_extended_attributes_and_hard_links() {
    use std::os::unix::fs::MetadataExt;
    let env = Env::new("30d", &[]);
    let (dir, docs) = share_of_docs(&env, 10, 15_000, 500);
    let memo = text(900, 77);
    std::fs::write(docs.join("memo.txt"), &memo).unwrap();
    let attr = |p: &Path| {
        sh(
            "getfattr",
            &["--only-values", "-n", "user.tag", p.to_str().unwrap()],
        )
    };
    sh(
        "setfattr",
        &[
            "-n",
            "user.tag",
            "-v",
            "important",
            docs.join("doc3.txt").to_str().unwrap(),
        ],
    );
    sh(
        "setfattr",
        &["-n", "user.tag", "-v", "folder", docs.to_str().unwrap()],
    );
    std::fs::hard_link(docs.join("doc4.txt"), docs.join("doc4-link.txt")).unwrap();
    std::os::unix::fs::symlink("doc0.txt", docs.join("latest.txt")).unwrap();
    filetime::set_symlink_file_times(
        docs.join("latest.txt"),
        filetime::FileTime::from_unix_time(1_700_000_000, 5),
        filetime::FileTime::from_unix_time(1_700_000_000, 5),
    )
    .unwrap();
    for d in 0..3u32 {
        env.backup(&dir, "share", &day(d));
    }
    // One folder of the clean point restored on its own keeps the same:
    // attributes, links, the link's own time.
    let one = env.path("one");
    env.ok(&[
        "restore",
        "share@latest:/docs",
        "--to",
        one.to_str().unwrap(),
    ]);
    assert_eq!(attr(&one.join("docs/doc3.txt")), "important");
    assert_eq!(attr(&one.join("docs")), "folder");
    let (a, b) = (
        std::fs::metadata(one.join("docs/doc4.txt")).unwrap(),
        std::fs::metadata(one.join("docs/doc4-link.txt")).unwrap(),
    );
    assert_eq!((a.ino(), a.nlink()), (b.ino(), 2), "one file, two names");
    let l = std::fs::symlink_metadata(one.join("docs/latest.txt")).unwrap();
    assert_eq!((l.mtime(), l.mtime_nsec()), (1_700_000_000, 5));
    // One file to a new name, in a folder made for it; to a new folder.
    let single = env.path("new/folder/single.txt");
    env.ok(&[
        "restore",
        "share@latest:/docs/doc3.txt",
        "--to",
        single.to_str().unwrap(),
    ]);
    assert_eq!(attr(&single), "important");
    let into = env.path("into");
    env.ok(&[
        "restore",
        "share@latest:/docs/doc3.txt",
        "--to",
        &format!("{}/", into.display()),
    ]);
    assert_eq!(attr(&into.join("doc3.txt")), "important");
    // A link to a new name is that link.
    let renamed = env.path("links/newest");
    env.ok(&[
        "restore",
        "share@latest:/docs/latest.txt",
        "--to",
        renamed.to_str().unwrap(),
    ]);
    assert_eq!(
        std::fs::read_link(&renamed).unwrap(),
        std::path::Path::new("doc0.txt")
    );
    let clean: Vec<Vec<u8>> = (0..10)
        .map(|i| std::fs::read(docs.join(format!("doc{i}.txt"))).unwrap())
        .collect();
    // Encrypted where they are (doc4 through either of its names), three
    // more into copies named .locked (the originals deleted; one of them
    // too small for its bytes to tell), and a note.
    for name in ["doc8.txt", "doc9.txt", "memo.txt"] {
        let len = std::fs::metadata(docs.join(name)).unwrap().len() as usize;
        std::fs::write(docs.join(format!("{name}.locked")), noise(len + 16, 31)).unwrap();
        std::fs::remove_file(docs.join(name)).unwrap();
    }
    for (i, was) in clean.iter().enumerate().take(8).skip(3) {
        std::fs::write(
            docs.join(format!("doc{i}.txt")),
            noise(was.len(), 900 + i as u64),
        )
        .unwrap();
    }
    let src = noted_and_backed_up(&env, &dir);

    let to = env.path("rolled");
    env.json(&["rollback", "share", "--to-dir", to.to_str().unwrap()]);
    let rd = to.join("docs");
    assert_eq!(std::fs::read(rd.join("doc3.txt")).unwrap(), clean[3]);
    assert_eq!(attr(&rd.join("doc3.txt")), "important");
    assert_eq!(attr(&rd), "folder");
    let (a, b) = (
        std::fs::metadata(rd.join("doc4.txt")).unwrap(),
        std::fs::metadata(rd.join("doc4-link.txt")).unwrap(),
    );
    assert_eq!((a.ino(), a.nlink()), (b.ino(), 2), "one file, two names");
    assert_eq!(std::fs::read(rd.join("doc4-link.txt")).unwrap(), clean[4]);
    assert_eq!(std::fs::read(rd.join("memo.txt")).unwrap(), memo);
    assert!(
        !rd.join("memo.txt.locked").exists(),
        "the attack's copy is left out"
    );

    env.json(&["rollback", "share", "--in-place", src]);
    assert_eq!(std::fs::read(docs.join("doc3.txt")).unwrap(), clean[3]);
    assert_eq!(attr(&docs.join("doc3.txt")), "important");
    // In place too, the file with two names comes back as one file.
    let (a, b) = (
        std::fs::metadata(docs.join("doc4.txt")).unwrap(),
        std::fs::metadata(docs.join("doc4-link.txt")).unwrap(),
    );
    assert_eq!((a.ino(), a.nlink()), (b.ino(), 2), "one file, two names");
    assert_eq!(std::fs::read(docs.join("doc4-link.txt")).unwrap(), clean[4]);
}

/// A file a rollback into a new folder cannot write (its data damaged in
/// the vault) is said to be missing there, not "kept": exit 1, the rest
/// written.
#[test]
fn a_file_a_rollback_cannot_write_is_missing_not_kept() {
    let env = Env::new("30d", &[]);
    let dir = env.path("share");
    let docs = dir.join("docs");
    std::fs::create_dir_all(&docs).unwrap();
    for i in 0..8 {
        std::fs::write(docs.join(format!("doc{i}.txt")), text(12_000, i as u64)).unwrap();
    }
    std::fs::write(dir.join("big.bin"), noise(4 << 20, 5)).unwrap();
    for d in 0..3u32 {
        env.backup(&dir, "share", &day(d));
    }
    for i in 2..7 {
        std::fs::write(
            docs.join(format!("doc{i}.txt")),
            noise(12_000, 70 + i as u64),
        )
        .unwrap();
    }
    noted_and_backed_up(&env, &dir);
    // One byte flipped in the middle of the largest pack: big.bin's data.
    flip_byte_in_largest_pack(&env.vault);

    let to = env.path("rolled");
    let out = env.run(&[
        "rollback",
        "share",
        "--to-dir",
        to.to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(
        code(&out),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(provenance_of(&r, "/big.bin")["action"], "missing", "{r:#}");
    assert!(!to.join("big.bin").exists());
    assert_eq!(
        std::fs::read(to.join("docs/doc3.txt")).unwrap(),
        text(12_000, 3),
        "the rest is written"
    );
}

/// The attack's last step on the tree `dir` of source "share": a ransom
/// note in `docs`, then the day's backup, which insight flags (exit 3).
/// The tree's path, as the command line takes it.
fn noted_and_backed_up<'a>(env: &Env, dir: &'a Path) -> &'a str {
    std::fs::write(
        dir.join("docs/HOW_TO_DECRYPT.txt"),
        "Your files are encrypted. Pay 0.1 bitcoin to get them back; write to our .onion site.",
    )
    .unwrap();
    let src = dir.to_str().unwrap();
    let out = env.run(&["backup", src, "--name", "share", "--time", &day(3)]);
    assert_eq!(
        code(&out),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    src
}

/// A document the attack took (encrypted into a copy, the original
/// deleted) and a user then made again at its old place: the rollback
/// keeps the new one and brings the one from before the attack back
/// beside it; one made again with the same bytes gets no copy.
#[test]
fn a_file_made_again_after_the_attack_keeps_its_place_and_the_old_one_comes_back_beside_it() {
    let env = Env::new("30d", &[]);
    let (dir, docs) = share_of_docs(&env, 8, 12_000, 300);
    for d in 0..3u32 {
        env.backup(&dir, "share", &day(d));
    }
    let clean: Vec<Vec<u8>> = (0..8)
        .map(|i| std::fs::read(docs.join(format!("doc{i}.txt"))).unwrap())
        .collect();
    for (i, was) in clean.iter().enumerate().take(6).skip(2) {
        let name = format!("doc{i}.txt");
        let len = was.len();
        std::fs::write(
            docs.join(format!("{name}.locked")),
            noise(len + 16, 40 + i as u64),
        )
        .unwrap();
        std::fs::remove_file(docs.join(&name)).unwrap();
    }
    let src = noted_and_backed_up(&env, &dir);
    // The next day: doc2 written anew from memory, doc3 copied back from
    // a colleague's mail (the same bytes).
    let redone = text(9_000, 777);
    std::fs::write(docs.join("doc2.txt"), &redone).unwrap();
    std::fs::write(docs.join("doc3.txt"), &clean[3]).unwrap();
    backed_up_still_damaged(&env, src, 4);
    let (rb, rd) = rolled_into_folder(&env);
    assert_eq!(std::fs::read(rd.join("doc2.txt")).unwrap(), redone);
    let beside: Vec<String> = std::fs::read_dir(&rd)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("before the attack"))
        .collect();
    assert_eq!(beside.len(), 1, "{beside:?}\n{rb:#}");
    assert!(
        beside[0].starts_with("doc2 (before the attack, ") && beside[0].ends_with(").txt"),
        "{beside:?}"
    );
    assert_eq!(std::fs::read(rd.join(&beside[0])).unwrap(), clean[2]);
    assert_eq!(std::fs::read(rd.join("doc3.txt")).unwrap(), clean[3]);
    for i in [4, 5] {
        assert_eq!(
            std::fs::read(rd.join(format!("doc{i}.txt"))).unwrap(),
            clean[i]
        );
    }
    assert!(!rd.join("doc2.txt.locked").exists());
    let p = provenance_of(&rb, &format!("/docs/{}", beside[0]));
    assert_eq!(p["action"], "restored", "{p:#}");
    assert!(
        p["reason"]
            .as_str()
            .unwrap()
            .contains("a newer /docs/doc2.txt was made since"),
        "{p:#}"
    );

    // In place, the same: the copy appears beside the newer file.
    env.json(&["rollback", "share", "--in-place", src]);
    assert_eq!(std::fs::read(docs.join("doc2.txt")).unwrap(), redone);
    assert_eq!(std::fs::read(docs.join(&beside[0])).unwrap(), clean[2]);
    assert_eq!(std::fs::read(docs.join("doc5.txt")).unwrap(), clean[5]);
}

/// A file a user renamed or moved after the clean point is there under
/// its new name: a rollback does not make it again under its old one (a
/// file deleted outright does come back: nothing is lost that way).
#[test]
fn a_file_moved_since_the_clean_point_is_not_brought_back_twice() {
    let env = Env::new("30d", &[]);
    let (dir, docs) = share_of_docs(&env, 8, 12_000, 300);
    let plan = text(7_000, 99);
    std::fs::write(docs.join("plan.md"), &plan).unwrap();
    std::fs::write(docs.join("old.txt"), text(3_000, 98)).unwrap();
    // Two copies of one file: one deleted says nothing of a move.
    std::fs::write(docs.join("dup-a.txt"), text(2_000, 97)).unwrap();
    std::fs::write(docs.join("dup-b.txt"), text(2_000, 97)).unwrap();
    for d in 0..3u32 {
        env.backup(&dir, "share", &day(d));
    }
    let clean3 = std::fs::read(docs.join("doc3.txt")).unwrap();
    for i in 2..6 {
        let p = docs.join(format!("doc{i}.txt"));
        let len = std::fs::metadata(&p).unwrap().len() as usize;
        std::fs::write(&p, noise(len, 60 + i as u64)).unwrap();
    }
    let src = noted_and_backed_up(&env, &dir);
    // The next day a user tidies up: the plan moves to an archive
    // folder under a new name, an old note is deleted.
    std::fs::create_dir_all(docs.join("archive")).unwrap();
    std::fs::rename(docs.join("plan.md"), docs.join("archive/plan-2025.md")).unwrap();
    std::fs::remove_file(docs.join("old.txt")).unwrap();
    std::fs::remove_file(docs.join("dup-a.txt")).unwrap();
    backed_up_still_damaged(&env, src, 4);
    let (rb, rd) = rolled_into_folder(&env);
    assert_eq!(std::fs::read(rd.join("doc3.txt")).unwrap(), clean3);
    assert_eq!(
        std::fs::read(rd.join("archive/plan-2025.md")).unwrap(),
        plan
    );
    assert!(!rd.join("plan.md").exists(), "{rb:#}");
    assert!(rd.join("old.txt").exists(), "a deleted file comes back");
    assert!(rd.join("dup-a.txt").exists(), "{rb:#}");
    let p = provenance_of(&rb, "/docs/plan.md");
    assert_eq!(p["action"], "dropped", "{p:#}");
    assert!(
        p["reason"]
            .as_str()
            .unwrap()
            .contains("moved to /docs/archive/plan-2025.md"),
        "{p:#}"
    );
}

/// A directory source `share` with `n` documents `docs/doc{i}.txt` of
/// text, the i-th `len + i * step` bytes long.
fn share_of_docs(
    env: &Env,
    n: usize,
    len: usize,
    step: usize,
) -> (std::path::PathBuf, std::path::PathBuf) {
    let dir = env.path("share");
    let docs = dir.join("docs");
    std::fs::create_dir_all(&docs).unwrap();
    for i in 0..n {
        std::fs::write(
            docs.join(format!("doc{i}.txt")),
            text(len + i * step, i as u64),
        )
        .unwrap();
    }
    (dir, docs)
}

/// Backs the share up on day `d` with the damage still there: exit 3.
fn backed_up_still_damaged(env: &Env, src: &str, d: u32) {
    let out = env.run(&["backup", src, "--name", "share", "--time", &day(d)]);
    assert_eq!(
        code(&out),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Rolls the share back into a new folder: the report, and where its
/// `docs` are.
fn rolled_into_folder(env: &Env) -> (serde_json::Value, std::path::PathBuf) {
    let to = env.path("rolled");
    let rb = env.json(&["rollback", "share", "--to-dir", to.to_str().unwrap()]);
    (rb, to.join("docs"))
}

/// A rollback into a folder on a filesystem too small for the tree stops
/// at the first write that finds no room, with one line, and leaves no
/// folder behind (neither under its name nor half built beside it); a
/// dry run into a folder that is not empty is refused as the real run is.
#[test]
fn a_rollback_onto_a_full_filesystem_stops_and_leaves_nothing() {
    let env = Env::new("30d", &[]);
    let share = env.path("share");
    std::fs::create_dir_all(&share).unwrap();
    for i in 0..12u64 {
        std::fs::write(share.join(format!("f{i:02}.bin")), noise(1 << 20, i)).unwrap();
    }
    env.backup(&share, "share", "2026-03-01T00:00:00Z");
    let mnt = env.path("small");
    let Some(_mounted) = small_tmpfs(&mnt, "5m") else {
        return;
    };
    let to = mnt.join("rb");
    let out = env.run(&["rollback", "share", "--to-dir", to.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(code(&out), Some(1), "{err}");
    assert!(err.contains("No space left"), "{err}");
    // One line for the error (after the line saying the snapshot is
    // scanned first).
    assert_eq!(
        err.lines().filter(|l| !l.starts_with("scanning ")).count(),
        1,
        "{err}"
    );
    let left: Vec<_> = std::fs::read_dir(&mnt).unwrap().collect();
    assert!(left.is_empty(), "{left:?}");
    // Not empty: refused, dry run or not.
    std::fs::create_dir(&to).unwrap();
    std::fs::write(to.join("x"), b"x").unwrap();
    for dry in [true, false] {
        let mut args = vec!["rollback", "share", "--to-dir", to.to_str().unwrap()];
        if dry {
            args.push("--dry-run");
        }
        let out = env.run(&args);
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        assert_eq!(code(&out), Some(1), "{args:?}: {err}");
        assert!(err.contains("is not empty"), "{args:?}: {err}");
    }
}

/// A day insight found ordinary but a scan found compromised is no clean
/// point for a rollback either: damage counts from before it, so a
/// document the intruder deleted that day comes back with the rest.
#[test]
fn a_rollback_counts_damage_from_the_clean_point_the_scans_leave() {
    let env = Env::new("30d", &[]);
    let (dir, docs) = share_of_docs(&env, 8, 12_000, 300);
    let plan = text(7_000, 99);
    std::fs::write(docs.join("plan.md"), &plan).unwrap();
    for d in 0..2u32 {
        env.backup(&dir, "share", &day(d));
    }
    // Day 2: an intruder drops a web shell and deletes the plan; to
    // insight it is an ordinary day.
    std::fs::create_dir_all(dir.join("www")).unwrap();
    std::fs::write(dir.join("www/upload.php"), EICAR).unwrap();
    std::fs::remove_file(docs.join("plan.md")).unwrap();
    env.backup(&dir, "share", &day(2));
    let t = env.json(&["timeline", "share"]);
    let day2 = t["snapshots"][2]["id"].as_str().unwrap().to_string();
    assert_eq!(t["snapshots"][2]["verdict"], "clean", "{t:#}");
    // Day 3: encryption.
    for i in 2..6 {
        let p = docs.join(format!("doc{i}.txt"));
        let len = std::fs::metadata(&p).unwrap().len() as usize;
        std::fs::write(&p, noise(len, 70 + i as u64)).unwrap();
    }
    noted_and_backed_up(&env, &dir);
    let out = env.run(&["scan", &format!("share@{day2}")]);
    assert_eq!(
        code(&out),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    let (rb, rd) = rolled_into_folder(&env);
    assert_eq!(
        std::fs::read(rd.join("plan.md")).unwrap(),
        plan,
        "deleted on the compromised day: back\n{rb:#}"
    );
    let p = provenance_of(&rb, "/docs/plan.md");
    assert_eq!(p["action"], "restored", "{p:#}");
    assert!(!env.path("rolled/www/upload.php").exists(), "{rb:#}");
}

/// A guest path longer than this system takes whole (ext4 allows any
/// depth) is left out of a rollback with a warning and the rest comes
/// back: exit 3, incomplete — not an abort with nothing written.
#[test]
fn a_rollback_leaves_out_a_path_too_long_for_this_system_and_brings_back_the_rest() {
    let env = Env::new("30d", &[]);
    let content = env.path("content");
    std::fs::create_dir_all(content.join("u")).unwrap();
    std::fs::write(content.join("u/f.txt"), b"important\n").unwrap();
    // Twenty folders of 240 bytes: 4,800 bytes of path, made one folder
    // at a time (no path that long is ever given to the kernel).
    let deep: Vec<String> = (0..20)
        .map(|i| format!("d{i:02}{}", "x".repeat(237)))
        .collect();
    sh(
        "python3",
        &[
            "-c",
            "import os, sys\nos.chdir(sys.argv[1])\nfor n in sys.argv[2:]:\n    os.mkdir(n)\n    os.chdir(n)\nopen('bottom.txt', 'w').write('deep')",
            content.to_str().unwrap(),
        ]
        .into_iter()
        .chain(deep.iter().map(String::as_str))
        .collect::<Vec<_>>(),
    );
    let img = env.path("deep.img");
    gpt_ext4_image(&img, &content, 16);
    env.backup(&img, "deep", &day(0));
    let to = env.path("out");
    let out = env.run(&["rollback", "deep", "--to-dir", to.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(code(&out), Some(3), "{err}");
    assert!(
        err.contains("longer than this system takes") && err.contains("INCOMPLETE"),
        "{err}"
    );
    assert_eq!(
        std::fs::read(to.join("u/f.txt")).unwrap(),
        b"important\n",
        "{err}"
    );
    assert!(to.join(&deep[0]).is_dir(), "the folders that fit come back");
}

/// A rollback with no scan stored scans the newest snapshot first: a
/// startup script the attack planted, which only a scan recognises, is
/// left out as if the operator had scanned (and kept with --no-scan).
#[test]
fn a_rollback_scans_the_newest_snapshot_first_when_no_scan_is_stored() {
    let env = Env::new("30d", &[]);
    let (dir, docs) = share_of_docs(&env, 6, 12_000, 300);
    let startup =
        dir.join("Users/ann/AppData/Roaming/Microsoft/Windows/Start Menu/Programs/Startup");
    std::fs::create_dir_all(&startup).unwrap();
    for d in 0..2u32 {
        env.backup(&dir, "share", &day(d));
    }
    for i in 1..5 {
        let p = docs.join(format!("doc{i}.txt"));
        let len = std::fs::metadata(&p).unwrap().len() as usize;
        std::fs::write(&p, noise(len, 80 + i as u64)).unwrap();
    }
    std::fs::write(
        startup.join("evil.bat"),
        "@echo off\r\npowershell -w hidden -enc SQBFAFgA\r\n",
    )
    .unwrap();
    noted_and_backed_up(&env, &dir);
    let bat = "Users/ann/AppData/Roaming/Microsoft/Windows/Start Menu/Programs/Startup/evil.bat";
    let kept = env.path("kept");
    let out = env.run(&[
        "rollback",
        "share",
        "--to-dir",
        kept.to_str().unwrap(),
        "--no-scan",
    ]);
    assert_eq!(
        code(&out),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(kept.join(bat).exists(), "--no-scan: only insight decides");
    let (rb, _) = rolled_into_folder(&env);
    assert!(!env.path("rolled").join(bat).exists(), "{rb:#}");
    let p = provenance_of(&rb, &format!("/{bat}"));
    assert_eq!(p["action"], "dropped", "{p:#}");
    assert!(
        std::fs::read(env.path("rolled/docs/doc2.txt")).unwrap() == text(12_000 + 2 * 300, 2),
        "the encrypted documents come back"
    );
}

/// A newest snapshot the vault cannot give back whole (the blocks of an
/// NTFS disk's MFT damaged in the vault) stops a rollback with the damage
/// named (exit 3): it is not taken for a filesystem the attack left
/// unreadable and rolled back from an older snapshot, the newer days'
/// work silently lost.
#[test]
fn vault_damage_stops_a_rollback_instead_of_an_older_start() {
    let env = Env::new("30d", &[]);
    let vol = env.path("ntfs.img");
    ntfs_volume(&vol, "16M");
    let put = |name: &str, content: &[u8]| ntfs_put(&vol, name, content, None);
    put("/report.txt", &text(20_000, 1));
    env.backup(&vol, "fs", &day(0));
    put("/plan.txt", &text(30_000, 2));
    put("/report.txt", &text(21_000, 3));
    env.backup(&vol, "fs", &day(1));
    // What the second backup stored: its packs, damaged in the vault.
    let mut packs: Vec<(std::time::SystemTime, std::path::PathBuf)> = Vec::new();
    for shard in std::fs::read_dir(env.vault.join("packs")).unwrap() {
        for f in std::fs::read_dir(shard.unwrap().path()).unwrap() {
            let f = f.unwrap();
            packs.push((f.metadata().unwrap().modified().unwrap(), f.path()));
        }
    }
    packs.sort();
    let newest = packs.last().unwrap().0;
    for (_, p) in packs.iter().filter(|(t, _)| *t == newest) {
        let mut b = std::fs::read(p).unwrap();
        for i in (0..b.len()).step_by(512) {
            b[i] ^= 0xff;
        }
        std::fs::set_permissions(p, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
        std::fs::write(p, b).unwrap();
    }
    let to = env.path("rolled");
    let out = env.run(&[
        "rollback",
        "fs",
        "--to-dir",
        to.to_str().unwrap(),
        "--no-scan",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(code(&out), Some(3), "{err}");
    assert!(
        err.contains("damaged object packs/") && err.contains("cairn verify"),
        "{err}"
    );
    assert!(!to.exists(), "nothing rolled back from the older snapshot");
}
