//! Snapshot insight: a backup that captures an attack is flagged (exit 3),
//! the clean point is pinned and survives forget/prune, and the timeline
//! reads as JSON and as a chart. The full evaluation (benign heavy days
//! against six kinds of attack, beside a change-rate-only detector) runs
//! `eval/insight.py` against the real binary.

mod common;
use common::*;
use std::process::Command;

fn day(d: u32) -> String {
    format!("2026-04-{:02}T02:00:00Z", d + 1)
}

/// Backs `disk` up on days `0..n`, each judged clean.
fn clean_days(env: &Env, disk: &std::path::Path, n: u32) {
    for d in 0..n {
        let out = env.backup(disk, "vm", &day(d));
        assert_eq!(out["insight"]["verdict"], "clean", "day {d}: {out}");
    }
}

/// A vault, a guest tree made by `populate` and its GPT+ext4 disk, backed
/// up clean on days 0, 1 and 2.
fn three_clean_days() -> (Env, std::path::PathBuf, std::path::PathBuf) {
    let env = Env::new("0s", &[]);
    let root = env.path("root");
    populate(&root);
    let disk = env.path("disk.img");
    gpt_ext4_image(&disk, &root, 64);
    clean_days(&env, &disk, 3);
    (env, root, disk)
}

/// Backs `disk` up on day `d` and returns the JSON of a backup that
/// insight did not pass (exit 3).
fn flagged_backup(env: &Env, disk: &std::path::Path, d: u32) -> serde_json::Value {
    let args = [
        "backup",
        disk.to_str().unwrap(),
        "--name",
        "vm",
        "--time",
        &day(d),
        "--json",
    ];
    let out = env.run(&args);
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Ransomware that writes its encrypted copies under names that are not
/// text (a byte that is not UTF-8, a newline, a right-to-left override)
/// is found all the same, and the findings show those names escaped.
#[test]
fn encrypted_copies_under_names_that_are_not_text_are_found() {
    use std::os::unix::ffi::OsStrExt;
    let (env, root, disk) = three_clean_days();
    let docs = root.join("home/alice/docs");
    let odd: [&[u8]; 3] = [b"\xff", b"\n", "\u{202e}".as_bytes()];
    for i in 0..6 {
        let name = format!("report-{i}.txt");
        std::fs::remove_file(docs.join(&name)).unwrap();
        let mut new = name.into_bytes();
        new.extend_from_slice(odd[i % 3]);
        new.extend_from_slice(b".locked");
        let path = docs.join(std::ffi::OsStr::from_bytes(&new));
        std::fs::write(path, noise(20_000 + i * 3000, 70 + i as u64)).unwrap();
    }
    std::fs::remove_file(&disk).unwrap();
    gpt_ext4_image(&disk, &root, 64);
    let out = env
        .cmd()
        .args([
            "backup",
            disk.to_str().unwrap(),
            "--name",
            "vm",
            "--time",
            &day(3),
            "--json",
        ])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["insight"]["verdict"], "compromised", "{v}");
    let t = env.run(&["timeline", "vm", "--json"]);
    let t: serde_json::Value = serde_json::from_slice(&t.stdout).unwrap();
    let findings = t["snapshots"][3]["findings"].to_string();
    for shown in [
        "report-0.txt\\\\xff.locked",
        "report-1.txt\\\\n.locked",
        "report-2.txt\\\\xe2\\\\x80\\\\xae.locked",
    ] {
        assert!(findings.contains(shown), "{shown} not in {findings}");
    }
    assert!(!findings.contains('\u{fffd}'), "{findings}");
    // `cairn diff` shows them escaped too: one line per file.
    let diff = env.ok(&["diff", "vm@-1", "vm@latest"]);
    assert!(
        diff.contains("-> /home/alice/docs/report-1.txt\\n.locked (and modified)"),
        "{diff}"
    );
    assert_eq!(
        diff.lines().filter(|l| l.starts_with("R ")).count(),
        6,
        "{diff}"
    );
}

/// Two wipers that leave something readable behind: holes punched into
/// every report (same size and mtime, all zeros now), and the root
/// filesystem overwritten on a disk that also has an EFI partition (which
/// reads fine, and must not be compared with the ext4 it replaced).
#[test]
fn punched_files_and_a_destroyed_root_beside_an_efi_partition_are_found() {
    let env = Env::new("0s", &[]);
    let root = env.path("root");
    populate(&root);
    let disk = env.path("disk.img");
    let d = disk.to_str().unwrap();
    sh("truncate", &["-s", "96M", d]);
    sh(
        "sgdisk",
        &[
            "-n",
            "1:2048:+16M",
            "-t",
            "1:ef00",
            "-n",
            "2:34816:0",
            "-t",
            "2:8300",
            d,
        ],
    );
    sh("mkfs.vfat", &["-F", "16", "--offset=2048", d, "16384"]);
    ext4_at(&disk, &root, 17 << 20, 76);
    let ext4 = format!("{d}?offset=17825792");
    clean_days(&env, &disk, 3);
    for i in 0..6 {
        sh(
            "debugfs",
            &[
                "-w",
                "-R",
                &format!("punch /home/alice/docs/report-{i}.txt 0"),
                &ext4,
            ],
        );
    }
    let v = flagged_backup(&env, &disk, 3);
    assert_eq!(v["insight"]["verdict"], "compromised", "{v}");
    assert!(
        v["insight"]["reasons"]
            .to_string()
            .contains("6 file(s) overwritten with zeros"),
        "{v}"
    );

    // The root filesystem overwritten whole: the EFI partition still reads.
    write_at(&disk, 17 << 20, &noise(76 << 20, 5));
    let v = flagged_backup(&env, &disk, 4);
    assert_eq!(v["insight"]["verdict"], "compromised", "{v}");
    assert!(
        v["insight"]["reasons"]
            .to_string()
            .contains("no longer readable"),
        "{v}"
    );
    // `cairn diff` compares the same partition, not the EFI one.
    let out = env.run(&["diff", "vm@-1", "vm@latest"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("partition 2"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Ciphertext dressed up (found by a red-team pass): behind the two magic
/// bytes of gzip at the file's own size, and armoured as an OpenPGP
/// message (base64: too few bits per byte to look random). Notes saved
/// as UTF-16 by a Windows tool, on the other hand, are text.
#[test]
fn ciphertext_behind_a_magic_or_in_pgp_armour_is_found_and_utf16_text_is_not() {
    let (env, _, disk) = three_clean_days();
    for i in 0..5 {
        let text: String = (0..400)
            .map(|k| format!("line {k} of note {i}\r\n"))
            .collect();
        let utf16: Vec<u8> = [0xff, 0xfe]
            .into_iter()
            .chain(text.encode_utf16().flat_map(u16::to_le_bytes))
            .collect();
        replace_guest_file(&disk, &format!("home/alice/docs/report-{i}.txt"), &utf16);
    }
    let out = env.backup(&disk, "vm", &day(3));
    assert_eq!(out["insight"]["verdict"], "clean", "UTF-16 notes: {out}");

    for i in 5..8 {
        let len = 20_000 + i * 3000;
        let fake_gzip = [&[0x1f, 0x8b][..], &noise(len - 2, 40 + i as u64)].concat();
        replace_guest_file(
            &disk,
            &format!("home/alice/docs/report-{i}.txt"),
            &fake_gzip,
        );
    }
    for i in 8..11 {
        let mut armour = b"-----BEGIN PGP MESSAGE-----\n\n".to_vec();
        let body: String = noise(15_000, 60 + i as u64)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        for line in body.as_bytes().chunks(64) {
            armour.extend_from_slice(line);
            armour.push(b'\n');
        }
        armour.extend_from_slice(b"-----END PGP MESSAGE-----\n");
        replace_guest_file(&disk, &format!("home/alice/docs/report-{i}.txt"), &armour);
    }
    let v = flagged_backup(&env, &disk, 4);
    assert_eq!(v["insight"]["verdict"], "compromised", "{v}");
    let t: serde_json::Value =
        serde_json::from_slice(&env.run(&["timeline", "vm", "--json"]).stdout).unwrap();
    let findings = t["snapshots"][4]["findings"].as_array().unwrap();
    let flagged = |i: u32| {
        findings.iter().any(|f| {
            f["path"] == format!("/home/alice/docs/report-{i}.txt").as_str()
                && f["damage"] == "encrypted_in_place"
        })
    };
    for i in 5..11 {
        assert!(flagged(i), "report-{i} not flagged: {findings:#?}");
    }
}

/// Wipers and encoders without any random-looking bytes: documents whose
/// words became base64, documents emptied, then most files deleted.
#[test]
fn text_re_encoded_as_base64_emptied_files_and_mass_deletion_are_found() {
    let (env, _, disk) = three_clean_days();
    let b64 = |data: &[u8]| -> Vec<u8> {
        const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut out = Vec::new();
        for (i, c) in data.chunks(3).enumerate() {
            let n = c.iter().fold(0u32, |n, &b| n << 8 | b as u32) << (8 * (3 - c.len()));
            for k in 0..4 {
                out.push(A[(n >> (18 - 6 * k) & 63) as usize]);
            }
            if i % 19 == 18 {
                out.push(b'\n');
            }
        }
        out
    };
    for i in 0..3 {
        replace_guest_file(
            &disk,
            &format!("home/alice/docs/report-{i}.txt"),
            &b64(&noise(15_000, i)),
        );
    }
    for i in 3..6 {
        replace_guest_file(&disk, &format!("home/alice/docs/report-{i}.txt"), b"");
    }
    let v = flagged_backup(&env, &disk, 3);
    assert_eq!(v["insight"]["verdict"], "compromised", "{v}");
    let reasons = v["insight"]["reasons"].to_string();
    assert!(
        reasons.contains("3 file(s) encrypted in place"),
        "{reasons}"
    );
    assert!(
        reasons.contains("3 file(s) overwritten with zeros"),
        "{reasons}"
    );

    for i in 6..20 {
        debugfs_w(&disk, &format!("rm /home/alice/docs/report-{i}.txt"));
    }
    for i in 0..10 {
        debugfs_w(&disk, &format!("rm /srv/app/src/mod{i}.rs"));
    }
    // (Compromised here: the damage of the day before is still there.)
    let v = flagged_backup(&env, &disk, 4);
    assert!(
        v["insight"]["reasons"]
            .to_string()
            .contains("24 of the users' files deleted"),
        "{v}"
    );
}

/// Second red-team pass: documents turned into another valid container
/// (ciphertext gzipped under the same name) or into filler text are
/// damage; a browser cache of headerless compressed entries, `git gc`
/// dropping loose objects, scripts replaced by programs and encrypted
/// copies of documents kept beside them (`gpg -c`) are not.
#[test]
fn documents_turned_into_containers_or_filler_are_found_and_caches_and_upgrades_are_not() {
    use std::io::Write;
    let env = Env::new("0s", &[]);
    let root = env.path("root");
    populate(&root);
    for i in 0..60 {
        let obj = root.join(format!("home/alice/site/.git/objects/{:02x}/{i:038x}", i));
        std::fs::create_dir_all(obj.parent().unwrap()).unwrap();
        std::fs::write(obj, text(3000, 500 + i)).unwrap();
    }
    std::fs::create_dir_all(root.join("usr/bin")).unwrap();
    std::fs::write(root.join("usr/bin/helper-config"), text(6000, 77)).unwrap();
    let docx = root.join("home/alice/docs/plan.docx");
    sh(
        "python3",
        &[
            "-c",
            "import sys,zipfile; z=zipfile.ZipFile(sys.argv[1],'w',zipfile.ZIP_DEFLATED); z.writestr('[Content_Types].xml','<Types>'+'<Default/>'*300+'</Types>'); z.writestr('word/document.xml','<w:document>'+'plan text '*800+'</w:document>'); z.close()",
            docx.to_str().unwrap(),
        ],
    );
    let disk = env.path("disk.img");
    gpt_ext4_image(&disk, &root, 64);
    clean_days(&env, &disk, 3);

    // A benign day: git gc drops the loose objects, a browser fills its
    // cache, a script becomes a program.
    for i in 0..60 {
        debugfs_w(
            &disk,
            &format!("rm /home/alice/site/.git/objects/{:02x}/{i:038x}", i),
        );
    }
    let cache = env.path("cache-entry");
    debugfs_w(&disk, "mkdir /home/alice/.cache");
    debugfs_w(&disk, "mkdir /home/alice/.cache/browser");
    for i in 0..40 {
        let mut z = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::fast());
        z.write_all(&noise(20_000, 900 + i)).unwrap();
        std::fs::write(&cache, z.finish().unwrap()).unwrap();
        debugfs_w(
            &disk,
            &format!(
                "write {} /home/alice/.cache/browser/{i:016x}",
                cache.display()
            ),
        );
    }
    replace_guest_file(
        &disk,
        "usr/bin/helper-config",
        &std::fs::read("/usr/bin/true").unwrap(),
    );
    // And the user encrypts copies of ten reports (`gpg -c`), keeping them.
    for i in 5..15 {
        debugfs_w(
            &disk,
            &format!(
                "write {} /home/alice/docs/report-{i}.txt.gpg",
                cache.display()
            ),
        );
    }
    let out = env.backup(&disk, "vm", &day(3));
    assert_eq!(out["insight"]["verdict"], "clean", "{out}");

    // The attack: reports replaced by valid gzip files of ciphertext under
    // their own names, and a .docx overwritten with filler text.
    for i in 0..4 {
        let mut z = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        z.write_all(&noise(20_000, 40 + i)).unwrap();
        replace_guest_file(
            &disk,
            &format!("home/alice/docs/report-{i}.txt"),
            &z.finish().unwrap(),
        );
    }
    replace_guest_file(&disk, "home/alice/docs/plan.docx", &text(9000, 3));
    let v = flagged_backup(&env, &disk, 4);
    assert_eq!(v["insight"]["verdict"], "compromised", "{v}");
    let t: serde_json::Value =
        serde_json::from_slice(&env.run(&["timeline", "vm", "--json"]).stdout).unwrap();
    let findings = t["snapshots"][4]["findings"].to_string();
    for i in 0..4 {
        assert!(findings.contains(&format!("report-{i}.txt")), "{findings}");
    }
    assert!(findings.contains("plan.docx"), "{findings}");
}

/// An NTFS guest disk holding `contents` as `{stem}-{i}.txt`, backed up
/// clean on days 0, 1 and 2.
fn windows_guest(env: &Env, stem: &str, contents: &[Vec<u8>]) -> std::path::PathBuf {
    let disk = env.path("win.img");
    let files: Vec<(String, Vec<u8>)> = contents
        .iter()
        .enumerate()
        .map(|(i, d)| (format!("{stem}-{i}.txt"), d.clone()))
        .collect();
    ntfs_disk(&disk, &files);
    clean_days(env, &disk, 3);
    disk
}

/// An NTFS guest (Windows) whose documents are encrypted where they lie,
/// at the same size, their records untouched (so the timestamps are the
/// old ones): the data runs place them under the disk's block digests.
#[test]
fn documents_encrypted_in_place_on_ntfs_with_their_times_kept_are_found() {
    let env = Env::new("0s", &[]);
    let docs: Vec<Vec<u8>> = (0..8)
        .map(|i| text(24_000 + i * 1000, 300 + i as u64))
        .collect();
    let disk = windows_guest(&env, "doc", &docs);

    // Each document's bytes found on the disk and overwritten there.
    let image = std::fs::read(&disk).unwrap();
    for (i, d) in docs.iter().enumerate().take(5) {
        let at = image
            .windows(64)
            .position(|w| w == &d[..64])
            .unwrap_or_else(|| panic!("doc-{i} not found on the disk"));
        assert_eq!(
            &image[at..at + d.len()],
            &d[..],
            "doc-{i} is not in one piece"
        );
        write_at(&disk, at as u64, &noise(d.len(), 70 + i as u64));
    }
    let v = flagged_backup(&env, &disk, 3);
    assert_eq!(v["insight"]["verdict"], "compromised", "{v}");
    assert!(
        v["insight"]["reasons"]
            .to_string()
            .contains("5 file(s) encrypted in place"),
        "{v}"
    );
}

/// A wiper on a partition Cairn reads no files from (XFS here; LUKS the
/// same): its superblock overwritten, nothing there reads as any
/// filesystem any more.
#[test]
fn a_filesystem_cairn_does_not_read_wiped_is_found() {
    let env = Env::new("0s", &[]);
    let root = env.path("root");
    populate(&root);
    let disk = env.path("disk.img");
    let d = disk.to_str().unwrap();
    sh("truncate", &["-s", "96M", d]);
    sh(
        "sgdisk",
        &[
            "-n",
            "1:2048:+48M",
            "-t",
            "1:8300",
            "-n",
            "2:0:0",
            "-t",
            "2:8300",
            d,
        ],
    );
    ext4_at(&disk, &root, 1 << 20, 48);
    // Partition 2 starts at 49 MiB: an XFS superblock's magic there.
    let xfs_at = 49u64 << 20;
    write_at(&disk, xfs_at, b"XFSB\0\0\x10\0");
    clean_days(&env, &disk, 3);
    assert!(env.ok(&["partitions", "vm@latest"]).contains("xfs"));
    write_at(&disk, xfs_at, &noise(1 << 20, 9));
    let v = flagged_backup(&env, &disk, 3);
    assert_eq!(v["insight"]["verdict"], "compromised", "{v}");
    assert!(
        v["insight"]["reasons"]
            .to_string()
            .contains("partition 2: xfs no longer there"),
        "{v}"
    );
}

/// A slow encryption, then a forget that keeps the pinned clean point
/// and the newest snapshot only: the snapshots in between, and what
/// insight found in them, are gone, and a rollback still undoes all of it.
#[test]
fn a_rollback_after_forget_undoes_what_the_forgotten_snapshots_found() {
    let (env, root, disk) = four_clean_days_then_encryption();
    flagged_backup(&env, &disk, 4);
    for i in 15..18 {
        let path = format!("home/alice/docs/report-{i}.txt");
        overwrite_file_in_place(&disk, &path, &noise(20_000 + i * 3000, 8_000 + i as u64));
    }
    flagged_backup(&env, &disk, 5);
    replace_guest_file(&disk, "home/alice/docs/report-1.txt", &text(9_000, 77));
    flagged_backup(&env, &disk, 6);
    env.ok(&["forget", "--keep-last", "1", "--prune"]);
    assert_eq!(env.json(&["snapshots", "vm"]).as_array().unwrap().len(), 2);

    let out_dir = rolled_back_reports(&env, &root, 10..18);
    assert_eq!(
        std::fs::read(out_dir.join("home/alice/docs/report-1.txt")).unwrap(),
        text(9_000, 77),
        "the newest work is kept"
    );
}

/// A disk whose files Cairn cannot read is judged by its change alone,
/// and says so: after a backup, in the timeline, and in the clean point's
/// confidence (a slow encryption in place need not raise the change).
#[test]
fn a_verdict_without_the_files_says_it_rests_on_the_change_alone() {
    let env = Env::new("0s", &[]);
    let disk = env.path("raw.img");
    std::fs::write(&disk, text(4 << 20, 1)).unwrap();
    for d in 0..3u32 {
        write_at(&disk, d as u64 * 4096, &text(4096, 50 + d as u64));
        let d = day(d);
        let disk = disk.to_str().unwrap();
        let out = env.ok(&["backup", disk, "--name", "raw", "--time", &d]);
        assert!(
            d == day(0) || out.contains("its files could not be read"),
            "{out}"
        );
    }
    let t = env.json(&["timeline", "raw"]);
    assert_eq!(t["snapshots"][2]["verdict"], "clean", "{t}");
    let c = &t["clean_point"];
    assert!(c["confidence"].as_f64().unwrap() <= 0.5, "{c}");
    assert!(
        c["reason"].as_str().unwrap().contains("change alone"),
        "{c}"
    );
}

/// A VM disk grown (the new space reads as zeros) zeroed nothing: the
/// day is clean, not "newly zeroed".
#[test]
fn a_disk_grown_is_no_wiper() {
    let (env, _root, disk) = three_clean_days();
    sh("truncate", &["-s", "256M", disk.to_str().unwrap()]);
    let out = env.backup(&disk, "vm", &day(3));
    assert_eq!(out["insight"]["verdict"], "clean", "{out}");
}

#[test]
fn an_attack_is_flagged_its_clean_point_pinned_and_kept_by_prune() {
    let env = Env::new("0s", &[]);
    let root = env.path("root");
    populate(&root);
    let disk = env.path("disk.img");
    gpt_ext4_image(&disk, &root, 64);

    // Ordinary days: a report rewritten and a note added each day.
    for d in 0..4u32 {
        if d > 0 {
            let path = format!("home/alice/docs/report-{d}.txt");
            replace_guest_file(&disk, &path, &text(21_000, 500 + d as u64));
        }
        let out = env.backup(&disk, "vm", &day(d));
        assert_eq!(out["insight"]["verdict"], "clean", "day {d}: {out}");
    }
    let clean_id = env.json(&["snapshots", "vm"]).as_array().unwrap()[3]["id"]
        .as_str()
        .unwrap()
        .to_string();

    // The attack: five reports encrypted where they lie, no rename, no note.
    for i in 10..15 {
        let path = format!("home/alice/docs/report-{i}.txt");
        let len = 20_000 + i * 3000;
        overwrite_file_in_place(&disk, &path, &noise(len, 9_000 + i as u64));
    }
    let out = env
        .cmd()
        .args([
            "backup",
            disk.to_str().unwrap(),
            "--name",
            "vm",
            "--time",
            &day(4),
            "--json",
        ])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["insight"]["verdict"], "compromised", "{v}");
    assert_eq!(v["insight"]["last_clean"], clean_id.as_str());
    assert_eq!(v["insight"]["pinned"], clean_id.as_str());
    let reasons = v["insight"]["reasons"].to_string();
    assert!(
        reasons.contains("5 file(s) encrypted in place"),
        "{reasons}"
    );

    // The timeline, as scripts read it.
    let svg = env.path("timeline.svg");
    let out = env
        .cmd()
        .args(["timeline", "vm", "--json", "--svg", svg.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(3),
        "the latest snapshot is not clean"
    );
    let t: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let snaps = t["snapshots"].as_array().unwrap();
    assert_eq!(snaps.len(), 5);
    for s in snaps {
        for key in [
            "id",
            "time",
            "changed_bytes",
            "change_rate",
            "entropy",
            "score",
            "verdict",
            "reasons",
        ] {
            assert!(s.get(key).is_some(), "{key} missing in {s}");
        }
        for key in ["added", "modified", "deleted", "renamed"] {
            assert!(s["files"][key].is_u64(), "files.{key} missing in {s}");
        }
    }
    assert_eq!(snaps[4]["files"]["modified"], 5);
    assert_eq!(snaps[1]["files"]["modified"], 1);
    assert_eq!(snaps[1]["files"]["added"], 0);
    assert_eq!(t["last_clean"], clean_id.as_str());
    let chart = std::fs::read_to_string(&svg).unwrap();
    assert!(chart.starts_with("<svg") && chart.contains("last clean"));
    assert_eq!(chart.matches("<rect x=").count(), 5, "one bar per snapshot");
    assert!(
        chart.contains("#c8322b"),
        "the compromised snapshot is marked"
    );

    // A scan finds no malware there, and says insight's verdict so that
    // its "clean" is not taken for safe.
    let scan = env.run(&["scan", "vm@latest"]);
    let said = String::from_utf8_lossy(&scan.stdout);
    assert!(
        said.contains("insight: COMPROMISED") && said.contains("encrypted in place"),
        "{said}"
    );
    // The headline names the verdict as the scans', insight's right under it.
    let mut lines = said.lines();
    assert!(lines.next().unwrap().ends_with("scans clean"), "{said}");
    assert!(
        lines.next().unwrap().contains("insight: COMPROMISED"),
        "{said}"
    );
    let earlier = env.ok(&["scan", &format!("vm@{}", &clean_id[..8])]);
    assert!(!earlier.contains("insight:"), "{earlier}");

    // However many new snapshots arrive, prune never evicts the clean point.
    env.ok(&["forget", "--keep-last", "1", "--prune"]);
    let left: Vec<String> = env
        .json(&["snapshots", "vm"])
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_string())
        .collect();
    assert!(left.contains(&clean_id), "{left:?}");
    assert_eq!(left.len(), 2);
    env.ok(&[
        "restore",
        &format!("vm@{}", &clean_id[..8]),
        "--to",
        env.path("back.img").to_str().unwrap(),
    ]);
}

/// A vault, a guest tree made by `populate` and its disk, through
/// [`four_days_then_encryption`] (four clean days backed up, five reports
/// then encrypted in place, not backed up yet).
fn four_clean_days_then_encryption() -> (Env, std::path::PathBuf, std::path::PathBuf) {
    let env = Env::new("0s", &[]);
    let root = env.path("root");
    populate(&root);
    let disk = env.path("disk.img");
    gpt_ext4_image(&disk, &root, 64);
    four_days_then_encryption(&env, &disk);
    (env, root, disk)
}

/// Rolls vm back into a new folder, checks that exactly reports `which`
/// were restored, as `root` held them, and returns the folder.
fn rolled_back_reports(
    env: &Env,
    root: &std::path::Path,
    which: std::ops::Range<usize>,
) -> std::path::PathBuf {
    let out_dir = env.path("rolled");
    let rb = env.json(&["rollback", "vm", "--to-dir", out_dir.to_str().unwrap()]);
    assert_eq!(rb["restored"], which.len(), "{rb}");
    for i in which {
        let path = format!("home/alice/docs/report-{i}.txt");
        assert_eq!(
            std::fs::read(out_dir.join(&path)).unwrap(),
            std::fs::read(root.join(&path)).unwrap(),
            "{path}"
        );
    }
    out_dir
}

/// A locker run twice over the same files rewrites ciphertext with
/// ciphertext: no entropy jumps and no type is lost that day, but the
/// damage of the day before is not repaired. The day stays compromised,
/// the clean point stays before the attack, and a rollback brings the
/// files back.
#[test]
fn files_encrypted_again_stay_damaged_and_roll_back() {
    let (env, root, disk) = four_clean_days_then_encryption();
    let clean_id = env.json(&["snapshots", "vm"]).as_array().unwrap()[3]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let v = flagged_backup(&env, &disk, 4);
    assert_eq!(v["insight"]["verdict"], "compromised", "{v}");
    for i in 10..15 {
        let path = format!("home/alice/docs/report-{i}.txt");
        overwrite_file_in_place(&disk, &path, &noise(20_000 + i * 3000, 7_000 + i as u64));
    }
    let v = flagged_backup(&env, &disk, 5);
    assert_ne!(v["insight"]["verdict"], "clean", "{v}");
    assert_eq!(v["insight"]["last_clean"], clean_id.as_str(), "{v}");
    let reasons = v["insight"]["reasons"].to_string();
    assert!(reasons.contains("still present"), "{reasons}");

    rolled_back_reports(&env, &root, 10..15);
}

#[test]
fn insight_evaluation_meets_its_targets() {
    let script = in_package("../../eval/insight.py");
    let out = Command::new("python3")
        .args([script.as_str(), "--cairn", env!("CARGO_BIN_EXE_cairn")])
        .output()
        .expect("python3");
    let table = String::from_utf8_lossy(&out.stdout);
    println!("{table}");
    assert!(
        out.status.success(),
        "{table}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Every scenario has its row.
    let kind = |l: &str| {
        l.split('|')
            .next()
            .unwrap_or("")
            .trim_end()
            .rsplit(' ')
            .next()
            .unwrap_or("")
            .to_string()
    };
    assert_eq!(table.lines().filter(|l| kind(l) == "benign").count(), 6);
    assert_eq!(table.lines().filter(|l| kind(l) == "attack").count(), 6);
}

/// A package install that adds high-entropy firmware blobs and corrupt
/// test archives on purpose is no attack when the package manager's own
/// list (dpkg's per-package list, apk's database) names the new files,
/// and so is its upgrade replacing them; encrypted copies of a user's
/// files are found even where packages install, named by a forged list.
#[test]
fn files_a_package_list_names_are_not_an_attack_and_a_forged_list_hides_no_users_files() {
    let env = Env::new("0s", &[]);
    let root = env.path("root");
    populate(&root);
    for dir in [
        "var/lib/dpkg/info",
        "usr/lib/firmware",
        "usr/share",
        "lib/apk/db",
    ] {
        std::fs::create_dir_all(root.join(dir)).unwrap();
    }
    std::fs::write(root.join("var/lib/dpkg/info/base.list"), "/.\n/etc\n").unwrap();
    std::fs::write(
        root.join("lib/apk/db/installed"),
        "P:base\nF:etc\nR:hostname\n",
    )
    .unwrap();
    let disk = env.path("disk.img");
    gpt_ext4_image(&disk, &root, 64);
    clean_days(&env, &disk, 3);

    let put = |guest: &str, data: &[u8]| write_guest_file(&disk, guest, data);
    // dpkg installs firmware blobs and a test suite's corrupt archives.
    debugfs_w(&disk, "mkdir /usr/lib/firmware/acme");
    debugfs_w(&disk, "mkdir /usr/share/acme");
    let mut list = String::from("/.\n/usr/lib/firmware/acme\n/usr/share/acme\n");
    for i in 0..12 {
        let blob = format!("/usr/lib/firmware/acme/fw-{i}.bin");
        put(&blob, &noise(24_000, 300 + i));
        let mut gz = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03".to_vec();
        gz.extend(noise(6_000, 400 + i));
        let fixture = format!("/usr/share/acme/bad-{i}.gz");
        put(&fixture, &gz);
        let notes = format!("/usr/share/acme/notes-{i}.txt");
        put(&notes, &text(24_000, 450 + i));
        list.push_str(&format!("{blob}\n{fixture}\n{notes}\n"));
    }
    put("/var/lib/dpkg/info/acme-firmware.list", list.as_bytes());
    // apk installs blobs of its own.
    debugfs_w(&disk, "mkdir /usr/lib/firmware/alp");
    let mut db = String::from("P:base\nF:etc\nR:hostname\n\nP:alp-fw\nF:usr/lib/firmware/alp\n");
    for i in 0..12 {
        put(
            &format!("/usr/lib/firmware/alp/a{i}.fw"),
            &noise(24_000, 500 + i),
        );
        db.push_str(&format!("R:a{i}.fw\n"));
    }
    debugfs_w(&disk, "rm /lib/apk/db/installed");
    put("/lib/apk/db/installed", db.as_bytes());
    let out = env.backup(&disk, "vm", &day(3));
    assert_eq!(out["insight"]["verdict"], "clean", "{out}");

    // The upgrade: every blob replaced by its next version, the notes
    // (text, of the blobs' size) gone: without the list, each new blob
    // would be the encrypted copy of a deleted note.
    let mut list = String::from("/.\n/usr/lib/firmware/acme\n");
    for i in 0..12 {
        debugfs_w(&disk, &format!("rm /usr/lib/firmware/acme/fw-{i}.bin"));
        debugfs_w(&disk, &format!("rm /usr/share/acme/notes-{i}.txt"));
        let blob = format!("/usr/lib/firmware/acme/fw2-{i}.bin");
        put(&blob, &noise(24_000, 1300 + i));
        list.push_str(&format!("{blob}\n"));
    }
    debugfs_w(&disk, "rm /var/lib/dpkg/info/acme-firmware.list");
    put("/var/lib/dpkg/info/acme-firmware.list", list.as_bytes());
    let out = env.backup(&disk, "vm", &day(4));
    assert_eq!(out["insight"]["verdict"], "clean", "upgrade: {out}");

    // An attacker's encrypted copies of the user's reports, the reports
    // deleted, hidden where packages install and named by a forged
    // package list, are found all the same.
    debugfs_w(&disk, "mkdir /usr/share/cover");
    let mut forged = String::from("/.\n");
    for i in 0..12 {
        let p = format!("/usr/share/cover/blob-{i}.dat");
        put(&p, &noise(20_000 + i as usize * 3000 + 16, 600 + i));
        debugfs_w(&disk, &format!("rm /home/alice/docs/report-{i}.txt"));
        forged.push_str(&format!("{p}\n"));
    }
    put("/var/lib/dpkg/info/cover.list", forged.as_bytes());
    let v = flagged_backup(&env, &disk, 5);
    assert_eq!(v["insight"]["verdict"], "compromised", "{v}");
    assert!(v["insight"].to_string().contains("blob-"), "{v}");
}

/// An RPM package of `version` holding `files` (empty; only the package
/// database's record of them matters here), built with rpmbuild and
/// recorded in the rpmdb.sqlite of `db` (installed, or upgraded from the
/// version before) without touching any other file.
fn rpm_record(env: &Env, db: &std::path::Path, version: u32, files: &[String]) {
    let top = env.path(&format!("rpmbuild-{version}"));
    let make: String = files
        .iter()
        .map(|f| format!("mkdir -p %{{buildroot}}$(dirname {f}) && touch %{{buildroot}}{f}\n"))
        .collect();
    rpmbuild(
        &top,
        &format!(
            "Name: acme-firmware\nVersion: {version}\nRelease: 1\nSummary: t\nLicense: MIT\nBuildArch: noarch\n%description\nt\n%install\n{make}%files\n{}\n",
            files.join("\n")
        ),
    );
    let rpm = top.join(format!("RPMS/noarch/acme-firmware-{version}-1.noarch.rpm"));
    sh(
        "rpm",
        &[
            "-U",
            "--justdb",
            "--nodeps",
            "--dbpath",
            db.to_str().unwrap(),
            rpm.to_str().unwrap(),
        ],
    );
}

/// The same on an RPM guest: firmware blobs that dnf installs, then
/// replaces on upgrade, are named by the packages in rpm's database
/// (rpmdb.sqlite), so neither day is an attack.
#[test]
fn files_the_rpm_database_names_are_not_an_attack() {
    let env = Env::new("0s", &[]);
    let root = env.path("root");
    populate(&root);
    let db = root.join("var/lib/rpm");
    std::fs::create_dir_all(&db).unwrap();
    std::fs::create_dir_all(root.join("usr/lib/firmware/acme")).unwrap();
    std::fs::create_dir_all(root.join("usr/share/doc")).unwrap();
    sh("rpm", &["--dbpath", db.to_str().unwrap(), "--initdb"]);
    let disk = env.path("disk.img");
    gpt_ext4_image(&disk, &root, 64);
    clean_days(&env, &disk, 3);

    let put = |guest: &str, data: &[u8]| write_guest_file(&disk, guest, data);
    let new_db = || {
        debugfs_w(&disk, "rm /var/lib/rpm/rpmdb.sqlite");
        put(
            "/var/lib/rpm/rpmdb.sqlite",
            &std::fs::read(db.join("rpmdb.sqlite")).unwrap(),
        );
    };
    let blobs = |name: &str| -> Vec<String> {
        (0..12)
            .map(|i| format!("/usr/lib/firmware/acme/{name}-{i}.bin"))
            .collect()
    };
    let notes: Vec<String> = (0..12)
        .map(|i| format!("/usr/share/doc/acme/notes-{i}.txt"))
        .collect();
    rpm_record(&env, &db, 1, &[blobs("fw"), notes.clone()].concat());
    debugfs_w(&disk, "mkdir /usr/share/doc/acme");
    for (i, (blob, note)) in blobs("fw").iter().zip(&notes).enumerate() {
        put(blob, &noise(24_000, 300 + i as u64));
        put(note, &text(24_000, 350 + i as u64));
    }
    new_db();
    let out = env.backup(&disk, "vm", &day(3));
    assert_eq!(out["insight"]["verdict"], "clean", "install: {out}");

    // The upgrade: every blob replaced by its next version, the notes
    // (text, of the blobs' size) gone: without the database, each new
    // blob would be the encrypted copy of a deleted note.
    rpm_record(&env, &db, 2, &blobs("fw2"));
    for (i, (old, blob)) in blobs("fw").iter().zip(blobs("fw2")).enumerate() {
        debugfs_w(&disk, &format!("rm {old}"));
        debugfs_w(&disk, &format!("rm {}", notes[i]));
        put(&blob, &noise(24_000, 1300 + i as u64));
    }
    new_db();
    let out = env.backup(&disk, "vm", &day(4));
    assert_eq!(out["insight"]["verdict"], "clean", "upgrade: {out}");
}

/// Any user can nest folders thousands deep. That is no damage: the day
/// stays clean, and the guest's files still list (down to the depth read).
#[test]
fn folders_nested_thousands_deep_are_no_unreadable_filesystem() {
    let (env, _, disk) = three_clean_days();
    let mut script = String::new();
    for _ in 0..2100 {
        script.push_str("mkdir d\ncd d\n");
    }
    // At the bottom, a file no walk lists.
    let hidden = env.path("hidden.txt");
    std::fs::write(&hidden, b"out of sight\n").unwrap();
    script.push_str(&format!("write {} hidden.txt\n", hidden.display()));
    let cmds = env.path("deep.cmds");
    std::fs::write(&cmds, script).unwrap();
    sh(
        "debugfs",
        &[
            "-w",
            "-f",
            cmds.to_str().unwrap(),
            &format!("{}?offset=1048576", disk.display()),
        ],
    );
    let out = env.backup(&disk, "vm", &day(3));
    assert_eq!(out["insight"]["verdict"], "clean", "{out}");
    // What lies deeper than any walk goes is not listed: said, exit 3.
    let ls = env.run(&["ls", "-R", "vm@latest"]);
    assert_eq!(
        ls.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&ls.stderr)
    );
    let listed = String::from_utf8_lossy(&ls.stdout);
    assert!(
        listed.contains("/home/alice/docs/report-0.txt"),
        "{listed:.300}"
    );
    assert!(listed.lines().any(|l| l.matches("/d").count() >= 2000));
    // A scan cannot pass what it did not see: the point is a warning, and
    // says where.
    let out = env.run(&["scan", "vm@latest", "--json"]);
    assert_eq!(out.status.code(), Some(3));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["verdict"], "warning", "{v}");
    assert!(
        v["notes"].to_string().contains("deeper than Cairn lists"),
        "{v}"
    );
}

/// New files that look encrypted or broken but replaced nothing (a
/// project cloned with its test vectors and corrupt archives) destroy no
/// data: the day stays clean and so does the next. Encrypted copies under
/// random names, their originals deleted from the same folder, are an
/// attack, and each copy names an original it replaced.
#[test]
fn new_files_that_replaced_nothing_are_no_attack_and_copies_under_random_names_are() {
    let (env, _, disk) = three_clean_days();
    let put = |guest: &str, data: &[u8]| write_guest_file(&disk, guest, data);
    for dir in ["src", "src/zlib", "src/zlib/test", "src/zlib/test/vectors"] {
        debugfs_w(&disk, &format!("mkdir /home/alice/{dir}"));
    }
    for i in 0..12 {
        let mut gz = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03".to_vec();
        gz.extend(noise(6_000, 700 + i));
        put(&format!("/home/alice/src/zlib/test/bad-{i}.gz"), &gz);
        put(
            &format!("/home/alice/src/zlib/test/vectors/v{i}.key"),
            &noise(8_000, 800 + i),
        );
    }
    let out = env.backup(&disk, "vm", &day(3));
    assert_eq!(out["insight"]["verdict"], "clean", "{out}");
    let out = env.backup(&disk, "vm", &day(4));
    assert_eq!(out["insight"]["verdict"], "clean", "the day after: {out}");

    // Ransomware writes each report's ciphertext under a random name in
    // the same folder and deletes the report.
    for i in 0..12 {
        put(
            &format!(
                "/home/alice/docs/{:08x}.enc",
                0x9e37_79b9u32.wrapping_mul(i + 1)
            ),
            &noise(20_000 + i as usize * 3000, 900 + i as u64),
        );
        debugfs_w(&disk, &format!("rm /home/alice/docs/report-{i}.txt"));
    }
    let v = flagged_backup(&env, &disk, 5);
    assert_eq!(v["insight"]["verdict"], "compromised", "{v}");
    let t: serde_json::Value =
        serde_json::from_slice(&env.run(&["timeline", "vm", "--json"]).stdout).unwrap();
    let findings = t["snapshots"][5]["findings"].as_array().unwrap();
    let copies = findings
        .iter()
        .filter(|f| {
            f["path"].as_str().unwrap().ends_with(".enc")
                && f["origin"]
                    .as_str()
                    .is_some_and(|o| o.starts_with("/home/alice/docs/report-"))
        })
        .count();
    assert_eq!(copies, 12, "{findings:#?}");
}

/// Encrypted copies written to a folder of their own under random names,
/// ten originals deleted: each copy pairs with the deleted file of about
/// its size.
#[test]
fn copies_moved_to_another_folder_pair_with_their_deleted_originals_by_size() {
    let (env, _, disk) = three_clean_days();
    let upload = env.path("upload.bin");
    debugfs_w(&disk, "mkdir /home/alice/.x");
    for i in 0..10u64 {
        // The report's size, plus a 512-byte footer holding a wrapped key.
        std::fs::write(&upload, noise(20_000 + i as usize * 3000 + 512, 950 + i)).unwrap();
        debugfs_w(
            &disk,
            &format!(
                "write {} /home/alice/.x/{:016x}",
                upload.display(),
                i * 0x9e37_79b9
            ),
        );
        debugfs_w(&disk, &format!("rm /home/alice/docs/report-{i}.txt"));
    }
    let v = flagged_backup(&env, &disk, 3);
    assert_eq!(v["insight"]["verdict"], "compromised", "{v}");
    let t: serde_json::Value =
        serde_json::from_slice(&env.run(&["timeline", "vm", "--json"]).stdout).unwrap();
    let findings = t["snapshots"][3]["findings"].as_array().unwrap();
    for i in 0..10u64 {
        let copy = format!("/home/alice/.x/{:016x}", i * 0x9e37_79b9);
        let f = findings.iter().find(|f| f["path"] == copy.as_str());
        assert_eq!(
            f.and_then(|f| f["origin"].as_str()),
            Some(format!("/home/alice/docs/report-{i}.txt").as_str()),
            "{findings:#?}"
        );
    }
}

/// Small documents that NTFS keeps inside their MFT records (no data
/// runs), encrypted where they lie with their sizes and times kept: the
/// record's place on the disk stands for their extents.
#[test]
fn small_documents_inside_their_ntfs_records_encrypted_in_place_are_found() {
    let env = Env::new("0s", &[]);
    // 300 to 640 bytes: inside the record; the larger cross a sector end.
    let notes: Vec<Vec<u8>> = (0..8).map(|i| text(300 + i * 48, 500 + i as u64)).collect();
    let disk = windows_guest(&env, "note", &notes);

    // Windows rewriting the last note's record (a new update sequence
    // number in the record and at each sector's end) changes no note.
    let image = std::fs::read(&disk).unwrap();
    let last = &notes[7];
    let at = image.windows(32).position(|w| w == &last[..32]).unwrap();
    let rec = at / 1024 * 1024;
    assert_eq!(&image[rec..rec + 4], b"FILE", "note-7's record");
    let usa = u16::from_le_bytes([image[rec + 4], image[rec + 5]]) as usize;
    let usn = u16::from_le_bytes([image[rec + usa], image[rec + usa + 1]]);
    for spot in [rec + usa, rec + 510, rec + 1022] {
        write_at(&disk, spot as u64, &(usn.wrapping_add(1)).to_le_bytes());
    }
    let out = env.backup(&disk, "vm", &day(3));
    assert_eq!(out["insight"]["verdict"], "clean", "{out}");
    let t: serde_json::Value =
        serde_json::from_slice(&env.run(&["timeline", "vm", "--json"]).stdout).unwrap();
    assert_eq!(t["snapshots"][3]["files"]["modified"], 0, "{t}");

    // Each note's bytes found inside its record and overwritten there,
    // all but the two bytes at each sector's end (the record's sequence
    // number on disk).
    let image = std::fs::read(&disk).unwrap();
    for (i, d) in notes.iter().enumerate().take(6) {
        let at = image
            .windows(32)
            .position(|w| w == &d[..32])
            .unwrap_or_else(|| panic!("note-{i} not found on the disk"));
        let key = noise(d.len(), 80 + i as u64);
        let mut bytes = image[at..at + d.len()].to_vec();
        for (k, b) in bytes.iter_mut().enumerate() {
            if (at + k) % 512 < 510 {
                *b = key[k];
            }
        }
        write_at(&disk, at as u64, &bytes);
    }
    let v = flagged_backup(&env, &disk, 4);
    assert_eq!(v["insight"]["verdict"], "compromised", "{v}");
    let t: serde_json::Value =
        serde_json::from_slice(&env.run(&["timeline", "vm", "--json"]).stdout).unwrap();
    assert_eq!(t["snapshots"][4]["files"]["modified"], 6, "{t}");
    let findings = t["snapshots"][4]["findings"].to_string();
    for i in 0..6 {
        assert!(findings.contains(&format!("note-{i}.txt")), "{findings}");
    }
}

/// Writes a ZIP at `path` with python's zipfile: `entries` as
/// (name, hex of the bytes); `locked` sets every entry's encrypted flag
/// (a password-protected archive, as lockers write them).
fn python_zip(path: &std::path::Path, entries: &[(&str, Vec<u8>)], locked: bool) {
    let spec: Vec<String> = entries
        .iter()
        .map(|(n, d)| {
            let hex: String = d.iter().map(|b| format!("{b:02x}")).collect();
            format!("{n}={hex}")
        })
        .collect();
    sh(
        "python3",
        &[
            "-c",
            "import sys,zipfile
p,locked=sys.argv[1],sys.argv[2]=='1'
with zipfile.ZipFile(p,'w',zipfile.ZIP_DEFLATED) as z:
    for e in sys.argv[3:]:
        n,h=e.split('=',1); z.writestr(n,bytes.fromhex(h))
b=bytearray(open(p,'rb').read())
if locked:
    for sig,off in ((b'PK\\x03\\x04',6),(b'PK\\x01\\x02',8)):
        i=b.find(sig)
        while i>=0:
            b[i+off]|=1; i=b.find(sig,i+4)
open(p,'wb').write(b)",
            path.to_str().unwrap(),
            if locked { "1" } else { "0" },
        ]
        .into_iter()
        .map(str::to_string)
        .chain(spec)
        .collect::<Vec<_>>()
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>(),
    );
}

/// The parts of a small Word document: its content types and its text.
fn office(seed: u64) -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("[Content_Types].xml", text(1500, seed)),
        ("word/document.xml", text(30_000, seed + 1)),
    ]
}

/// `populate`, and `n` Word documents `home/alice/docs/plan-{i}.docx`
/// made from `office(seed + i)`.
fn populate_with_plans(root: &std::path::Path, n: u64, seed: u64) {
    populate(root);
    for i in 0..n {
        python_zip(
            &root.join(format!("home/alice/docs/plan-{i}.docx")),
            &office(seed + i),
            false,
        );
    }
}

/// Office documents rewritten as valid ZIPs over random bytes (their true
/// CRCs kept) or re-saved with every entry encrypted, and reports
/// replaced by one password-protected archive each (Qlocker), are found;
/// ciphertext copies hidden in a cache folder pair with the reports they
/// replaced, while a browser's cache churning its compressed entries is
/// no attack.
#[test]
fn zips_of_random_or_locked_entries_lockers_and_copies_hidden_in_a_cache_are_found() {
    let env = Env::new("0s", &[]);
    let root = env.path("root");
    populate_with_plans(&root, 5, 40);
    let sw = root.join("home/alice/.config/chrome/Default/Service Worker/CacheStorage/ab12");
    std::fs::create_dir_all(&sw).unwrap();
    for i in 0..8 {
        std::fs::write(
            sw.join(format!("{i:016x}_0")),
            noise(30_000 + i * 500, 70 + i as u64),
        )
        .unwrap();
    }
    let disk = env.path("disk.img");
    gpt_ext4_image(&disk, &root, 64);
    clean_days(&env, &disk, 3);

    // The browser evicts its cached entries and writes new ones.
    let put = |guest: &str, data: &[u8]| write_guest_file(&disk, guest, data);
    let cache = "/home/alice/.config/chrome/Default/Service Worker/CacheStorage/ab12";
    for i in 0..8 {
        debugfs_w(&disk, &format!("rm \"{cache}/{i:016x}_0\""));
        put(
            &format!("\"{cache}/{:016x}_0\"", 100 + i),
            &noise(30_000 + i * 500 + 40, 170 + i as u64),
        );
    }
    let out = env.backup(&disk, "vm", &day(3));
    assert_eq!(out["insight"]["verdict"], "clean", "cache churn: {out}");
    let t: serde_json::Value =
        serde_json::from_slice(&env.run(&["timeline", "vm", "--json"]).stdout).unwrap();
    let files = &t["snapshots"][3]["files"];
    assert_eq!(
        (files["added"].as_u64(), files["deleted"].as_u64()),
        (Some(8), Some(8)),
        "{t}"
    );

    // The attack.
    let local = env.path("attack.zip");
    // Three plans keep their part names over random bytes, two have
    // every entry locked.
    for i in 0..5 {
        let random: Vec<(&str, Vec<u8>)> = office(40 + i)
            .into_iter()
            .map(|(n, d)| (n, noise(d.len(), 900 + i)))
            .collect();
        python_zip(&local, &random, i >= 3);
        replace_guest_file(
            &disk,
            &format!("home/alice/docs/plan-{i}.docx"),
            &std::fs::read(&local).unwrap(),
        );
    }
    for i in 0..5u64 {
        python_zip(&local, &[("report.txt", noise(20_000, 990 + i))], true);
        put(
            &format!("/home/alice/docs/report-{i}.txt.zip"),
            &std::fs::read(&local).unwrap(),
        );
        debugfs_w(&disk, &format!("rm /home/alice/docs/report-{i}.txt"));
    }
    debugfs_w(&disk, "mkdir /home/alice/.cache");
    debugfs_w(&disk, "mkdir /home/alice/.cache/thumbnails");
    for i in 5..12u64 {
        put(
            &format!(
                "/home/alice/.cache/thumbnails/{:032x}",
                i * 0x9e37_79b9_7f4a
            ),
            &noise(20_000 + i as usize * 3000, 1900 + i),
        );
        debugfs_w(&disk, &format!("rm /home/alice/docs/report-{i}.txt"));
    }
    let v = flagged_backup(&env, &disk, 4);
    assert_eq!(v["insight"]["verdict"], "compromised", "{v}");
    let t: serde_json::Value =
        serde_json::from_slice(&env.run(&["timeline", "vm", "--json"]).stdout).unwrap();
    let findings = t["snapshots"][4]["findings"].as_array().unwrap();
    let about = |path: &str| findings.iter().find(|f| f["path"] == path).cloned();
    for i in 0..5 {
        assert!(
            about(&format!("/home/alice/docs/plan-{i}.docx")).is_some(),
            "plan-{i}: {findings:#?}"
        );
        let lock = about(&format!("/home/alice/docs/report-{i}.txt.zip"));
        assert_eq!(
            lock.as_ref().and_then(|f| f["origin"].as_str()),
            Some(format!("/home/alice/docs/report-{i}.txt").as_str()),
            "{findings:#?}"
        );
    }
    for i in 5..12u64 {
        let copy = about(&format!(
            "/home/alice/.cache/thumbnails/{:032x}",
            i * 0x9e37_79b9_7f4a
        ));
        assert_eq!(
            copy.as_ref().and_then(|f| f["origin"].as_str()),
            Some(format!("/home/alice/docs/report-{i}.txt").as_str()),
            "{findings:#?}"
        );
    }
}

/// Pass four: a document its owner protects with a password (Office's
/// encrypted container, OpenDocument's encryption) is no attack; Office
/// files left without their document part, with the part turned into one
/// long hex run, and ciphertext dressed with a small ZIP behind it are.
#[test]
fn a_password_protected_document_is_no_attack_and_hollowed_or_dressed_zips_are() {
    let env = Env::new("0s", &[]);
    let root = env.path("root");
    populate_with_plans(&root, 6, 60);
    python_zip(
        &root.join("home/alice/docs/minutes.odt"),
        &[
            (
                "mimetype",
                b"application/vnd.oasis.opendocument.text".to_vec(),
            ),
            ("content.xml", text(20_000, 77)),
            ("META-INF/manifest.xml", b"<manifest:manifest/>".to_vec()),
        ],
        false,
    );
    let disk = env.path("disk.img");
    gpt_ext4_image(&disk, &root, 64);
    clean_days(&env, &disk, 3);

    // The owner protects one Word file and one OpenDocument file.
    let mut cfb = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1".to_vec();
    cfb.extend(noise(600, 5));
    cfb.extend("EncryptionInfo".encode_utf16().flat_map(u16::to_le_bytes));
    cfb.extend(noise(40_000, 6));
    replace_guest_file(&disk, "home/alice/docs/plan-5.docx", &cfb);
    let local = env.path("made.zip");
    python_zip(
        &local,
        &[
            ("mimetype", b"application/vnd.oasis.opendocument.text".to_vec()),
            ("content.xml", noise(20_000, 78)),
            (
                "META-INF/manifest.xml",
                b"<manifest:manifest><manifest:file-entry manifest:full-path=\"content.xml\"><manifest:encryption-data/></manifest:file-entry></manifest:manifest>".to_vec(),
            ),
        ],
        false,
    );
    replace_guest_file(
        &disk,
        "home/alice/docs/minutes.odt",
        &std::fs::read(&local).unwrap(),
    );
    let out = env.backup(&disk, "vm", &day(3));
    assert_eq!(out["insight"]["verdict"], "clean", "{out}");

    // The attack: two documents left with their content types and a
    // stored payload, two with their document part one hex run, and
    // three reports turned into ciphertext with a small ZIP behind.
    for i in 0..2u64 {
        python_zip(
            &local,
            &[
                ("[Content_Types].xml", text(1500, 60 + i)),
                ("payload.bin", noise(30_000, 300 + i)),
            ],
            false,
        );
        replace_guest_file(
            &disk,
            &format!("home/alice/docs/plan-{i}.docx"),
            &std::fs::read(&local).unwrap(),
        );
    }
    for i in 2..4u64 {
        let hex: String = noise(15_000, 400 + i)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        python_zip(
            &local,
            &[
                ("[Content_Types].xml", text(1500, 60 + i)),
                (
                    "word/document.xml",
                    format!("<w:document>{hex}</w:document>").into_bytes(),
                ),
            ],
            false,
        );
        replace_guest_file(
            &disk,
            &format!("home/alice/docs/plan-{i}.docx"),
            &std::fs::read(&local).unwrap(),
        );
    }
    python_zip(&local, &[("README.txt", text(400, 9))], false);
    let tiny = std::fs::read(&local).unwrap();
    let upload = env.path("upload.bin");
    for i in 0..3u64 {
        let dressed = [noise(20_000 + i as usize * 3000, 500 + i), tiny.clone()].concat();
        std::fs::write(&upload, dressed).unwrap();
        debugfs_w(
            &disk,
            &format!(
                "write {} /home/alice/docs/report-{i}.txt.zip",
                upload.display()
            ),
        );
        debugfs_w(&disk, &format!("rm /home/alice/docs/report-{i}.txt"));
    }
    // The same day, the owner protects one more document.
    let mut cfb4 = cfb.clone();
    cfb4.extend(noise(100, 7));
    replace_guest_file(&disk, "home/alice/docs/plan-4.docx", &cfb4);
    let v = flagged_backup(&env, &disk, 4);
    assert_eq!(v["insight"]["verdict"], "compromised", "{v}");
    // A rollback undoes the attack and keeps the owner's protected
    // document as it is now.
    let out_dir = env.path("rolled");
    env.json(&["rollback", "vm", "--to-dir", out_dir.to_str().unwrap()]);
    let docs = out_dir.join("home/alice/docs");
    assert_eq!(std::fs::read(docs.join("plan-4.docx")).unwrap(), cfb4);
    assert!(
        std::fs::read(docs.join("plan-0.docx"))
            .unwrap()
            .starts_with(b"PK")
    );
    assert!(docs.join("report-0.txt").exists());
    assert!(!docs.join("report-0.txt.zip").exists());
    let t: serde_json::Value =
        serde_json::from_slice(&env.run(&["timeline", "vm", "--json"]).stdout).unwrap();
    let findings = t["snapshots"][4]["findings"].to_string();
    for p in (0..4)
        .map(|i| format!("plan-{i}.docx"))
        .chain((0..3).map(|i| format!("report-{i}.txt.zip")))
    {
        assert!(findings.contains(&p), "{p}: {findings}");
    }
}

/// Files renamed with a new extension and their bytes unchanged (a user's
/// clean-up script: `report-3.txt` → `report-3.txt.old`) are no attack;
/// the same names given to encrypted copies are.
#[test]
fn a_new_extension_on_files_left_as_they_were_is_no_attack() {
    let (env, _, disk) = three_clean_days();
    for i in 0..10 {
        let from = format!("/home/alice/docs/report-{i}.txt");
        debugfs_w(&disk, &format!("ln {from} {from}.old"));
        debugfs_w(&disk, &format!("unlink {from}"));
    }
    let out = env.backup(&disk, "vm", &day(3));
    assert_eq!(out["insight"]["verdict"], "clean", "{out:#}");
    // Encrypted, then given a new extension: an attack.
    for i in 10..20 {
        let from = format!("/home/alice/docs/report-{i}.txt");
        write_guest_file(&disk, &format!("{from}.old"), &noise(20_000, 40 + i));
        debugfs_w(&disk, &format!("rm {from}"));
    }
    let v = flagged_backup(&env, &disk, 4);
    assert_eq!(v["insight"]["verdict"], "compromised", "{v:#}");
    assert!(
        v["insight"]["reasons"]
            .to_string()
            .contains("given the new extension .old"),
        "{v:#}"
    );
}

/// A database's own writes are no attack, however random the values they
/// store look (floating-point numbers updated in place read at ~7.7 bits
/// a byte): every page SQLite touched is still a page. Ciphertext written
/// every 192 bytes behind its kept header is found all the same.
#[test]
fn a_databases_own_writes_are_no_attack_and_pages_encrypted_behind_its_header_are() {
    let env = Env::new("0s", &[]);
    let share = env.path("share");
    std::fs::create_dir_all(share.join("Finance")).unwrap();
    std::fs::write(share.join("notes.txt"), text(20_000, 3)).unwrap();
    let db = share.join("Finance/ledger.sqlite");
    let sql = |script: &str, d: u32| {
        let out = Command::new("python3")
            .args(["-c", script, db.to_str().unwrap(), &d.to_string()])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    sql(
        "import sqlite3, random, sys\n\
         random.seed(1)\n\
         db = sqlite3.connect(sys.argv[1])\n\
         db.execute('create table t(id integer primary key, who text, amount real)')\n\
         db.executemany('insert into t(who, amount) values(?, ?)', [('alpha beta %d' % i, random.random() * 1000) for i in range(3000)])\n\
         db.commit()",
        0,
    );
    let day_of_work = "import sqlite3, random, sys\n\
         d = int(sys.argv[2]); random.seed(d)\n\
         db = sqlite3.connect(sys.argv[1])\n\
         db.executemany('insert into t(who, amount) values(?, ?)', [('gamma %d' % i, random.random()) for i in range(200)])\n\
         db.execute('update t set amount = amount * 1.01 where id % 7 = ?', (d % 7,))\n\
         db.commit()";
    for d in 0..8 {
        sql(day_of_work, d);
        let out = env.backup(&share, "share", &day(d));
        assert_eq!(out["insight"]["verdict"], "clean", "day {d}: {out}");
    }
    // Every 192 bytes, 64 encrypted, the first page (the header) kept:
    // SQLite still opens the file's header.
    let mut bytes = std::fs::read(&db).unwrap();
    let junk = noise(bytes.len(), 77);
    let mut at = 4096;
    while at < bytes.len() {
        let end = (at + 64).min(bytes.len());
        bytes[at..end].copy_from_slice(&junk[at..end]);
        at += 192;
    }
    std::fs::write(&db, &bytes).unwrap();
    let out = env.run(&[
        "backup",
        share.to_str().unwrap(),
        "--name",
        "share",
        "--time",
        &day(8),
        "--json",
    ]);
    let said = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(3), "{said}");
    assert!(
        said.contains("ledger.sqlite") && said.contains("encrypted in place"),
        "{said}"
    );
}

/// An attack that encrypts 22 of the users' files into `.locked` copies
/// (originals deleted) and drops a note in three folders, as a fresh
/// disk built from `root`'s tree.
fn locked_disk(env: &Env, root: &std::path::Path) -> std::path::PathBuf {
    let attacked = env.path("attacked");
    sh(
        "cp",
        &["-a", root.to_str().unwrap(), attacked.to_str().unwrap()],
    );
    let victims = (0..20)
        .map(|i| format!("home/alice/docs/report-{i}.txt"))
        .chain((0..2).map(|i| format!("srv/app/src/mod{i}.rs")));
    for (k, v) in victims.enumerate() {
        let len = std::fs::metadata(attacked.join(&v)).unwrap().len() as usize;
        std::fs::write(
            attacked.join(format!("{v}.locked")),
            noise(len, 900 + k as u64),
        )
        .unwrap();
        std::fs::remove_file(attacked.join(&v)).unwrap();
    }
    for dir in ["home/alice/docs", "home/alice/media", "srv/app/src"] {
        std::fs::write(
            attacked.join(dir).join("HOW_TO_DECRYPT.txt"),
            "All your files are encrypted. Send 0.5 bitcoin to recover them. Contact us at http://decryptorxyzabcdefghijklmnopqrstuvwxyzabcdefghijklmnopqrst.onion\n",
        )
        .unwrap();
    }
    let disk = env.path("attacked.img");
    gpt_ext4_image(&disk, &attacked, 64);
    disk
}

/// What an operator does after an attack is no attack itself. A disk put
/// back as it was and backed up next deletes what the attack left: repair,
/// not a wiper. A remediated state committed on the clean point descends
/// from that point, not from the attack after it: it is clean, and so is
/// the next backup of it (the damage the attacked snapshot held is not
/// carried into it).
#[test]
fn a_disk_put_back_after_an_attack_and_a_state_committed_on_the_clean_point_are_clean() {
    let (env, root, disk) = three_clean_days();
    let attacked = locked_disk(&env, &root);
    let clean = env.json(&["snapshots", "vm"]).as_array().unwrap()[2]["id"]
        .as_str()
        .unwrap()
        .to_string();
    // Restored and backed up right after the attacked snapshot.
    for d in 0..3 {
        env.backup(&disk, "vm2", &day(d));
    }
    let hit = env.run(&[
        "backup",
        attacked.to_str().unwrap(),
        "--name",
        "vm2",
        "--time",
        &day(3),
        "--json",
    ]);
    assert_eq!(hit.status.code(), Some(3));
    let back = env.backup(&disk, "vm2", &day(4));
    assert_eq!(back["insight"]["verdict"], "clean", "{back}");
    // `snapshots` shows each one's verdict from its backup.
    let listed = env.json(&["snapshots", "vm2"]);
    let verdicts: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["verdict"].as_str().unwrap())
        .collect();
    assert_eq!(
        verdicts,
        ["clean", "clean", "clean", "compromised", "clean"]
    );
    assert!(env.ok(&["snapshots", "vm2"]).contains(" compromised "));

    // Committed on the clean point (nothing changed in its overlay).
    flagged_backup(&env, &attacked, 3);
    let overlay = env.path("fix.ovl");
    {
        let _export = Running::start(
            env.cmd()
                .arg("export")
                .arg(format!("vm@{clean}"))
                .args(["--writable", "--overlay", overlay.to_str().unwrap()])
                .args(["--listen", "127.0.0.1:0"])
                .stderr(std::process::Stdio::null()),
        );
    }
    std::thread::sleep(std::time::Duration::from_millis(300));
    let c = env.json(&[
        "commit",
        &format!("vm@{clean}"),
        "--overlay",
        overlay.to_str().unwrap(),
    ]);
    let committed = c["id"].as_str().unwrap().to_string();
    let t = env.json(&["timeline", "vm"]);
    let last = t["snapshots"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["id"], committed.as_str(), "{t:#}");
    assert_eq!(last["verdict"], "clean", "{t:#}");
    assert_eq!(t["last_clean"], committed.as_str(), "{t:#}");
    let next = env.json(&["backup", disk.to_str().unwrap(), "--name", "vm"]);
    assert_eq!(next["insight"]["verdict"], "clean", "{next}");
}

/// A snapshot found compromised when it was backed up stays so after the
/// snapshots before it are forgotten (replayed alone, the damage an
/// earlier snapshot found is gone with it, and its own day was quiet):
/// the timeline and `recover --find-clean` never call it the clean point.
#[test]
fn a_compromised_snapshot_stays_so_when_the_history_before_it_is_forgotten() {
    let (env, root, _disk) = three_clean_days();
    let attacked = locked_disk(&env, &root);
    flagged_backup(&env, &attacked, 3);
    // A quiet day on the attacked disk: one document added.
    let tree = env.path("attacked");
    std::fs::write(tree.join("home/alice/docs/minutes.txt"), text(5_000, 3)).unwrap();
    let later = env.path("later.img");
    gpt_ext4_image(&later, &tree, 64);
    let v = flagged_backup(&env, &later, 4);
    let pinned = v["insight"]["last_clean"].as_str().unwrap().to_string();
    let unpinned = env.run(&["unpin", &format!("vm@{pinned}")]);
    assert!(unpinned.status.success());
    let said = String::from_utf8_lossy(&unpinned.stderr);
    assert!(said.contains("clean point"), "{said}");
    env.ok(&["forget", "--keep-last", "1", "--prune"]);
    assert_eq!(env.json(&["snapshots", "vm"]).as_array().unwrap().len(), 1);
    let t = env.json_code(&["timeline", "vm"], 3);
    assert_eq!(t["snapshots"][0]["verdict"], "compromised", "{t:#}");
    assert_eq!(t["last_clean"], serde_json::Value::Null, "{t:#}");
    let r = env.run(&["recover", "vm", "--find-clean", "--json"]);
    let found: serde_json::Value = serde_json::from_slice(&r.stdout).unwrap();
    assert_eq!(found["clean"], serde_json::Value::Null, "{found:#}");
}

/// A file dropped after the attack under its notes' name, whose text is
/// too short to read as a note, is kept by a rollback (it could be
/// someone's) but said on the console, not only in the provenance.
#[test]
fn a_rollback_says_which_kept_files_are_named_as_the_attacks_notes() {
    let (env, root, _disk) = three_clean_days();
    let attacked = locked_disk(&env, &root);
    flagged_backup(&env, &attacked, 3);
    let tree = env.path("attacked");
    std::fs::write(
        tree.join("home/alice/HOW_TO_DECRYPT.txt"),
        "still encrypted\n",
    )
    .unwrap();
    let later = env.path("later.img");
    gpt_ext4_image(&later, &tree, 64);
    flagged_backup(&env, &later, 4);
    let out = env.path("rolled");
    let r = env.run(&["rollback", "vm", "--to-dir", out.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(
        err.contains("/home/alice/HOW_TO_DECRYPT.txt is new since the clean point and named as the ransom notes"),
        "{err}"
    );
    assert!(out.join("home/alice/HOW_TO_DECRYPT.txt").exists());
    assert!(!out.join("home/alice/docs/HOW_TO_DECRYPT.txt").exists());
    assert_eq!(
        std::fs::read(out.join("home/alice/docs/report-3.txt")).unwrap(),
        std::fs::read(root.join("home/alice/docs/report-3.txt")).unwrap()
    );
}

/// A locker that writes each encrypted copy and then deletes its original
/// hands the next copy the inode just freed; with originals all of one
/// size, pairing by inode shifted every copy onto the wrong original and
/// a rollback left nine of ten copies behind. Each copy pairs with the
/// original it is named after, and all of them go.
#[test]
fn copies_of_same_size_originals_that_took_their_inodes_are_all_rolled_back() {
    let env = Env::new("0s", &[]);
    let share = env.path("share");
    std::fs::create_dir_all(share.join("Photos")).unwrap();
    std::fs::create_dir_all(share.join("Docs")).unwrap();
    let photo = |i: u64| {
        [
            &b"\xff\xd8\xff\xe0\x00\x10JFIF\x00"[..],
            &noise(60_000, 40 + i),
            b"\xff\xd9",
        ]
        .concat()
    };
    for i in 0..10 {
        std::fs::write(share.join(format!("Photos/img{i:03}.jpg")), photo(i)).unwrap();
    }
    std::fs::write(share.join("Docs/memo.txt"), text(9_000, 1)).unwrap();
    for d in 0..3 {
        std::fs::write(share.join("Docs/memo.txt"), text(9_000 + d * 10, 1)).unwrap();
        env.backup(&share, "share", &day(d as u32));
    }
    for i in 0..10 {
        let p = share.join(format!("Photos/img{i:03}.jpg"));
        std::fs::write(p.with_extension("jpg.enc"), noise(60_013, 70 + i)).unwrap();
        std::fs::remove_file(&p).unwrap();
    }
    let r = env.run(&[
        "backup",
        share.to_str().unwrap(),
        "--name",
        "share",
        "--time",
        &day(3),
    ]);
    assert_eq!(r.status.code(), Some(3));
    let diff = env.ok(&["diff", "share@-1", "share@latest"]);
    assert!(!diff.contains("jpg ->"), "{diff}");
    env.ok(&[
        "rollback",
        "-q",
        "share",
        "--in-place",
        share.to_str().unwrap(),
    ]);
    let left: Vec<String> = std::fs::read_dir(share.join("Photos"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".enc"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    for i in 0..10 {
        assert_eq!(
            std::fs::read(share.join(format!("Photos/img{i:03}.jpg"))).unwrap(),
            photo(i)
        );
    }
}
