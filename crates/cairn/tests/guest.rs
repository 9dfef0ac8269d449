//! Reading the files inside disk snapshots, straight from the vault: ext4,
//! ext2, NTFS and FAT in GPT and MBR (with logical partitions) and on a
//! bare disk, compared with the ground truth the test put in.

mod common;
use common::*;
use serde_json::Value;
use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// What a listing must show for each path: kind, size, symlink target.
type Truth = BTreeMap<String, (String, u64, Option<String>)>;

fn truth(root: &Path) -> Truth {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let md = std::fs::symlink_metadata(&p).unwrap();
            let rel = format!("/{}", p.strip_prefix(root).unwrap().to_string_lossy());
            let v = if md.file_type().is_symlink() {
                (
                    "symlink".into(),
                    md.len(),
                    Some(
                        std::fs::read_link(&p)
                            .unwrap()
                            .to_string_lossy()
                            .into_owned(),
                    ),
                )
            } else if md.is_dir() {
                stack.push(p.clone());
                ("dir".into(), 0, None)
            } else {
                ("file".into(), md.len(), None)
            };
            out.insert(rel, v);
        }
    }
    out
}

fn listing(v: &Value) -> Truth {
    v.as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["path"].as_str().unwrap().to_string(),
                (
                    e["kind"].as_str().unwrap().to_string(),
                    e["size"].as_u64().unwrap(),
                    e["link_target"].as_str().map(String::from),
                ),
            )
        })
        .collect()
}

/// A tree with the things filesystems get wrong: depth, odd names, many
/// extents, sparse data, both kinds of symlink, hard links.
fn linux_tree(root: &Path) {
    populate(root);
    let mut deep = root.join("deep");
    for i in 0..40 {
        deep = deep.join(format!("level{i}"));
    }
    std::fs::create_dir_all(&deep).unwrap();
    std::fs::write(deep.join("bottom.txt"), "at the bottom\n").unwrap();
    std::fs::write(root.join("résumé – final.txt"), "non-ascii name\n").unwrap();
    std::fs::write(root.join("日本語のファイル.txt"), text(5000, 3)).unwrap();
    std::fs::write(root.join("empty"), "").unwrap();
    // Many islands of data: many extents (an extent tree deeper than the inode).
    let f = std::fs::File::create(root.join("islands.bin")).unwrap();
    for i in 0..300u64 {
        use std::os::unix::fs::FileExt;
        f.write_all_at(&noise(4096, i), i * 64 * 1024).unwrap();
    }
    drop(f);
    std::os::unix::fs::symlink("home/alice/docs/report-1.txt", root.join("short-link")).unwrap();
    let long = format!("{}/target.txt", "very-long-directory-name".repeat(5));
    std::os::unix::fs::symlink(&long, root.join("long-link")).unwrap();
    std::fs::hard_link(
        root.join("etc/hostname"),
        root.join("etc/hostname.hardlink"),
    )
    .unwrap();
    std::fs::set_permissions(
        root.join("etc/hostname"),
        std::fs::Permissions::from_mode(0o640),
    )
    .unwrap();
}

/// A tree FAT and NTFS can hold (no links), with long names and nesting.
fn plain_tree(root: &Path, nested: bool) {
    std::fs::create_dir_all(root).unwrap();
    std::fs::write(root.join("Quarterly Report 2026.docx"), text(40_000, 11)).unwrap();
    std::fs::write(root.join("photo.jpg"), noise(2 << 20, 12)).unwrap();
    std::fs::write(root.join("ÄÖÜ notes.txt"), "umlauts\n").unwrap();
    std::fs::write(root.join("tiny.txt"), "x").unwrap();
    if nested {
        std::fs::create_dir_all(root.join("Projects/Cairn/src")).unwrap();
        std::fs::write(root.join("Projects/Cairn/src/main.rs"), text(9000, 13)).unwrap();
        std::fs::write(
            root.join("Projects/a much longer file name than 8.3.txt"),
            "lfn\n",
        )
        .unwrap();
    }
}

fn mkfs(kind: &str, content: &Path, img: &Path, size_mib: u64) {
    let p = img.to_str().unwrap();
    sh("truncate", &["-s", &format!("{size_mib}M"), p]);
    match kind {
        "ext4" => {
            sh(
                "mkfs.ext4",
                &["-q", "-F", "-d", content.to_str().unwrap(), p],
            );
        }
        "ext2" => {
            sh(
                "mkfs.ext2",
                &["-q", "-F", "-b", "1024", "-d", content.to_str().unwrap(), p],
            );
        }
        "fat32" | "fat16" => {
            sh(
                "mkfs.vfat",
                &["-F", if kind == "fat32" { "32" } else { "16" }, p],
            );
            copy_into_fat(content, img, "");
        }
        "ntfs" => {
            sh("mkntfs", &["-F", "-Q", "-q", p]);
            for e in std::fs::read_dir(content).unwrap() {
                let e = e.unwrap().path();
                if e.is_file() {
                    let name = format!("/{}", e.file_name().unwrap().to_string_lossy());
                    sh("ntfscp", &["-q", p, e.to_str().unwrap(), &name]);
                }
            }
        }
        _ => unreachable!(),
    }
}

fn copy_into_fat(dir: &Path, img: &Path, at: &str) {
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap().path();
        let name = format!("{at}/{}", e.file_name().unwrap().to_string_lossy());
        if e.is_dir() {
            sh("mmd", &["-i", img.to_str().unwrap(), &format!("::{name}")]);
            copy_into_fat(&e, img, &name);
        } else {
            sh(
                "mcopy",
                &[
                    "-m",
                    "-i",
                    img.to_str().unwrap(),
                    e.to_str().unwrap(),
                    &format!("::{name}"),
                ],
            );
        }
    }
}

/// Writes `part` into `disk` at byte `offset`.
fn place(disk: &Path, part: &Path, offset: u64) {
    use std::os::unix::fs::FileExt;
    let data = std::fs::read(part).unwrap();
    let f = std::fs::OpenOptions::new().write(true).open(disk).unwrap();
    f.write_all_at(&data, offset).unwrap();
}

fn sizes_mib(parts: &[u64]) -> u64 {
    parts.iter().sum::<u64>() + 4
}

fn gpt_disk(disk: &Path, parts: &[(&Path, u64, &str)]) {
    sh(
        "truncate",
        &[
            "-s",
            &format!(
                "{}M",
                sizes_mib(&parts.iter().map(|p| p.1).collect::<Vec<_>>())
            ),
            disk.to_str().unwrap(),
        ],
    );
    let mut start = 2048u64;
    for (i, (img, mib, code)) in parts.iter().enumerate() {
        let end = start + mib * 2048 - 1;
        sh(
            "sgdisk",
            &[
                "-n",
                &format!("{}:{start}:{end}", i + 1),
                "-t",
                &format!("{}:{code}", i + 1),
                disk.to_str().unwrap(),
            ],
        );
        place(disk, img, start * 512);
        start = end + 1;
    }
}

/// An MBR disk: one primary partition, then an extended partition holding
/// the rest as logical partitions (numbered from 5).
fn mbr_disk(disk: &Path, primary: (&Path, u64, &str), logical: &[(&Path, u64, &str)]) -> Vec<u64> {
    let total = sizes_mib(
        &std::iter::once(primary.1)
            .chain(logical.iter().map(|p| p.1 + 1))
            .collect::<Vec<_>>(),
    );
    sh(
        "truncate",
        &["-s", &format!("{total}M"), disk.to_str().unwrap()],
    );
    let mut script = format!(
        "label: dos\nsize={}MiB, type={}\ntype=5\n",
        primary.1, primary.2
    );
    for (_, mib, ty) in logical {
        script.push_str(&format!("size={mib}MiB, type={ty}\n"));
    }
    let mut child = std::process::Command::new("sfdisk")
        .args(["-q", disk.to_str().unwrap()])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    assert!(child.wait().unwrap().success());
    let json: Value =
        serde_json::from_str(&sh("sfdisk", &["--json", disk.to_str().unwrap()])).unwrap();
    let starts: Vec<u64> = json["partitiontable"]["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["start"].as_u64().unwrap() * 512)
        .collect();
    assert_eq!(starts.len(), 2 + logical.len(), "{json}");
    place(disk, primary.0, starts[0]);
    for (i, (img, _, _)) in logical.iter().enumerate() {
        place(disk, img, starts[2 + i]);
    }
    starts
}

fn restore_and_compare(env: &Env, spec: &str, part: &str, want: &Path, dest: &str) {
    let out = env.path(dest);
    env.ok(&[
        "restore",
        &format!("{spec}:/"),
        "--to",
        out.to_str().unwrap(),
        "--partition",
        part,
    ]);
    for (path, (kind, size, _)) in truth(want) {
        let got = out.join(path.trim_start_matches('/'));
        let md = std::fs::symlink_metadata(&got)
            .unwrap_or_else(|_| panic!("{path} missing after restore"));
        if kind == "file" {
            assert_eq!(md.len(), size, "{path}");
            assert!(
                same_bytes(&want.join(path.trim_start_matches('/')), &got),
                "{path} content differs"
            );
        }
    }
}

#[test]
fn ext4_and_fat32_in_gpt_read_like_the_trees_they_were_made_from() {
    let env = Env::new("30d", &[]);
    let (lt, ft) = (env.path("linux"), env.path("fat"));
    linux_tree(&lt);
    plain_tree(&ft, true);
    let (ext, fat) = (env.path("p1.img"), env.path("p2.img"));
    mkfs("ext4", &lt, &ext, 48);
    mkfs("fat32", &ft, &fat, 40);
    let disk = env.path("disk.img");
    gpt_disk(&disk, &[(&ext, 48, "8300"), (&fat, 40, "0700")]);
    env.backup(&disk, "vm", "2026-03-01T00:00:00Z");

    let parts = env.json(&["partitions", "vm@latest"]);
    let fs: Vec<&str> = parts
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["filesystem"].as_str().unwrap())
        .collect();
    assert_eq!(fs, vec!["ext4", "fat32"], "{parts}");
    assert_eq!(parts[0]["scheme"], "gpt");

    // Default partition: the largest readable one (ext4).
    let got = listing(&env.json(&["ls", "-R", "vm@latest"]));
    let mut want = truth(&lt);
    want.insert("/lost+found".into(), ("dir".into(), 0, None));
    assert_eq!(got, want);
    let l = env.json(&["ls", "-l", "vm@latest:/etc"]);
    let hostname = l
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["path"] == "/etc/hostname")
        .unwrap();
    assert_eq!(hostname["mode"].as_u64().unwrap() & 0o7777, 0o640);
    let md = std::fs::metadata(lt.join("etc/hostname")).unwrap();
    assert_eq!(
        hostname["mtime_ns"].as_i64().unwrap() / 1_000_000_000,
        md.mtime()
    );
    let link = l
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["path"] == "/etc/hostname.hardlink")
        .unwrap();
    assert_eq!(
        link["file_id"], hostname["file_id"],
        "hard links share the inode"
    );

    assert_eq!(env.ok(&["cat", "vm@latest:/deep/level0/level1/level2/level3/level4/level5/level6/level7/level8/level9/level10/level11/level12/level13/level14/level15/level16/level17/level18/level19/level20/level21/level22/level23/level24/level25/level26/level27/level28/level29/level30/level31/level32/level33/level34/level35/level36/level37/level38/level39/bottom.txt"]), "at the bottom\n");
    let islands = env
        .cmd()
        .args(["cat", "vm@latest:/islands.bin"])
        .output()
        .unwrap()
        .stdout;
    assert_eq!(
        islands,
        std::fs::read(lt.join("islands.bin")).unwrap(),
        "a file of 300 extents reads back"
    );
    restore_and_compare(&env, "vm@latest", "1", &lt, "out-ext4");

    let got = listing(&env.json(&["ls", "-R", "vm@latest", "--partition", "2"]));
    assert_eq!(got, truth(&ft));
    restore_and_compare(&env, "vm@latest", "2", &ft, "out-fat");
    assert_eq!(
        env.ok(&[
            "cat",
            "vm@latest:/Projects/a much longer file name than 8.3.txt",
            "--partition",
            "2"
        ]),
        "lfn\n"
    );
}

#[test]
fn ntfs_ext2_and_fat16_in_mbr_logical_partitions() {
    let env = Env::new("30d", &[]);
    let (nt, e2, f16) = (env.path("nt"), env.path("e2"), env.path("f16"));
    plain_tree(&nt, false);
    std::fs::write(nt.join("big.bin"), noise(5 << 20, 21)).unwrap();
    linux_tree(&e2);
    std::fs::write(e2.join("indirect.bin"), noise(3 << 20, 22)).unwrap(); // double-indirect with 1 KiB blocks
    plain_tree(&f16, true);
    let (a, b, c) = (env.path("nt.img"), env.path("e2.img"), env.path("f16.img"));
    mkfs("ntfs", &nt, &a, 24);
    mkfs("ext2", &e2, &b, 40);
    mkfs("fat16", &f16, &c, 24);
    let disk = env.path("mbr.img");
    mbr_disk(&disk, (&a, 24, "7"), &[(&b, 40, "83"), (&c, 24, "e")]);
    env.backup(&disk, "win", "2026-03-01T00:00:00Z");

    let parts = env.json(&["partitions", "win@latest"]);
    let got: Vec<(u64, &str)> = parts
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["number"].as_u64().unwrap(),
                p["filesystem"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(got, vec![(1, "ntfs"), (5, "ext2"), (6, "fat16")], "{parts}");

    assert_eq!(
        listing(&env.json(&["ls", "-R", "win@latest", "--partition", "1"])),
        truth(&nt)
    );
    restore_and_compare(&env, "win@latest", "1", &nt, "out-ntfs");
    let ntfs_ls = env.json(&["ls", "win@latest:/", "--partition", "1"]);
    assert!(
        ntfs_ls
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["file_id"].as_u64().unwrap() >= 16),
        "MFT record numbers as ids"
    );
    // A path as Windows writes it (as a scan prints a Run value's).
    for windows in [r"win@latest:C:\big.bin", r"win@latest:\big.bin"] {
        let out = env.run(&["cat", windows, "--partition", "1"]);
        assert!(out.status.success(), "{windows}");
        assert_eq!(
            out.stdout,
            std::fs::read(nt.join("big.bin")).unwrap(),
            "{windows}"
        );
    }

    let mut want = truth(&e2);
    want.insert("/lost+found".into(), ("dir".into(), 0, None));
    assert_eq!(
        listing(&env.json(&["ls", "-R", "win@latest", "--partition", "5"])),
        want
    );
    restore_and_compare(&env, "win@latest", "5", &e2, "out-ext2");

    assert_eq!(
        listing(&env.json(&["ls", "-R", "win@latest", "--partition", "6"])),
        truth(&f16)
    );
    restore_and_compare(&env, "win@latest", "6", &f16, "out-fat16");
}

#[test]
fn a_filesystem_on_the_bare_disk_and_unreadable_ones_named() {
    let env = Env::new("30d", &[]);
    let t = env.path("t");
    plain_tree(&t, true);
    let bare = env.path("bare.img");
    mkfs("ext4", &t, &bare, 16);
    env.backup(&bare, "bare", "2026-03-01T00:00:00Z");
    let parts = env.json(&["partitions", "bare@latest"]);
    assert_eq!(parts[0]["number"], 0);
    assert_eq!(parts[0]["scheme"], "none");
    let mut want = truth(&t);
    want.insert("/lost+found".into(), ("dir".into(), 0, None));
    assert_eq!(listing(&env.json(&["ls", "-R", "bare@latest"])), want);

    // A GPT disk with an XFS superblock and an empty partition.
    let disk = env.path("x.img");
    let xfs = env.path("xfs.part");
    let mut head = vec![0u8; 1 << 20];
    head[..4].copy_from_slice(b"XFSB");
    std::fs::write(&xfs, &head).unwrap();
    let empty = env.path("empty.part");
    std::fs::write(&empty, vec![0u8; 1 << 20]).unwrap();
    gpt_disk(&disk, &[(&xfs, 2, "8300"), (&empty, 2, "8300")]);
    env.backup(&disk, "x", "2026-03-01T00:00:00Z");
    let out = env.run(&["ls", "x@latest:/", "--partition", "1"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("partition 1: xfs, not readable yet"));
    let out = env.run(&["ls", "x@latest:/"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no readable filesystem") && err.contains("partition 2: unknown"),
        "{err}"
    );
}

#[test]
fn a_directory_linked_into_itself_is_named_not_walked_forever() {
    let env = Env::new("30d", &[]);
    let t = env.path("t");
    plain_tree(&t, true);
    let img = env.path("loop.img");
    mkfs("ext4", &t, &img, 16);
    // A crafted guest: /Projects/Cairn/src gets an entry pointing back at
    // /Projects (a hard link to a directory, which no kernel would make).
    sh(
        "debugfs",
        &[
            "-w",
            "-R",
            "link /Projects /Projects/Cairn/src/up",
            img.to_str().unwrap(),
        ],
    );
    // The backup itself succeeds; insight says why it could not look in.
    let out = env.backup(&img, "loop", "2026-03-01T00:00:00Z");
    assert_eq!(out["name"], "loop");
    // A recursive listing names the loop and lists everything once.
    let out = env.run(&["ls", "-R", "loop@latest"]);
    assert_eq!(out.status.code(), Some(0));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("appears twice (loop)"), "{err}");
    let listed = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        listed.lines().filter(|l| l.ends_with("/up")).count(),
        1,
        "{listed}"
    );
    // The directories around it still read one level at a time.
    let top = env.json(&["ls", "loop@latest:/Projects/Cairn/src"]);
    let names: Vec<&str> = top
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["path"].as_str().unwrap())
        .collect();
    assert!(names.iter().any(|n| n.ends_with("/up")), "{names:?}");
}

/// Paths through linked folders read as in the guest (`/bin/ls` on a
/// Debian whose `/bin` links to `usr/bin`); a link listed is the link, a
/// trailing `/` follows it; links never climb out of the snapshot, and a
/// loop of links is an error, not a hang.
#[test]
fn paths_through_linked_folders_are_followed_inside_the_snapshot() {
    let env = Env::new("30d", &[]);
    let t = env.path("t");
    std::fs::create_dir_all(t.join("usr/bin")).unwrap();
    std::fs::create_dir_all(t.join("etc")).unwrap();
    std::fs::write(t.join("usr/bin/tool"), b"the guest's tool\n").unwrap();
    std::fs::write(t.join("etc/hostname"), b"guest-host\n").unwrap();
    std::os::unix::fs::symlink("usr/bin", t.join("bin")).unwrap();
    std::os::unix::fs::symlink("../../../../..", t.join("usr/up")).unwrap();
    std::os::unix::fs::symlink("/loop2", t.join("loop1")).unwrap();
    std::os::unix::fs::symlink("loop1", t.join("loop2")).unwrap();
    let img = env.path("links.img");
    mkfs("ext4", &t, &img, 16);
    env.backup(&img, "links", "2026-03-01T00:00:00Z");
    assert_eq!(
        env.ok(&["cat", "links@latest:/bin/tool"]),
        "the guest's tool\n"
    );
    assert_eq!(
        env.ok(&["cat", "links@latest:/usr/up/etc/hostname"]),
        "guest-host\n"
    );
    assert_eq!(env.ok(&["ls", "links@latest:/bin/"]).trim(), "tool");
    let long = env.ok(&["ls", "-l", "links@latest:/bin"]);
    assert!(
        long.starts_with("lrwxrwxrwx") && long.contains("-> usr/bin"),
        "{long}"
    );
    let out = env.path("tool");
    env.ok(&[
        "restore",
        "links@latest:/bin/tool",
        "--to",
        out.to_str().unwrap(),
    ]);
    assert_eq!(std::fs::read(&out).unwrap(), b"the guest's tool\n");
    let looped = within_a_minute(&env, &["cat", "links@latest:/loop1/x"]);
    assert_eq!(looped.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&looped.stderr).contains("a loop"),
        "{}",
        String::from_utf8_lossy(&looped.stderr)
    );
}

/// A crafted FAT: two directories chained to their parent's cluster (a
/// loop that branches) and a file whose cluster chain points to itself,
/// claiming 4 GiB. A restore of the whole filesystem ends, writes the good
/// file, names what it skipped, and writes no more than the filesystem
/// holds.
#[test]
fn a_fat_directory_loop_and_a_looping_cluster_chain_are_skipped_by_restore() {
    let env = Env::new("30d", &[]);
    let img = env.path("fat.img");
    sh("mkfs.vfat", &["-C", img.to_str().unwrap(), "32768"]);
    let note = env.path("note.txt");
    std::fs::write(&note, "kept\n").unwrap();
    let i = img.to_str().unwrap();
    sh("mmd", &["-i", i, "::/s", "::/s/a", "::/s/b"]);
    for to in ["::/OK.TXT", "::/G.TXT", "::/s/F.TXT"] {
        sh("mcopy", &["-i", i, note.to_str().unwrap(), to]);
    }
    sh(
        "python3",
        &[
            "-c",
            "import struct, sys\n\
             d = bytearray(open(sys.argv[1], 'rb').read())\n\
             s = struct.unpack_from('<H', d, d.find(b'S          \\x10') + 26)[0]\n\
             for n in (b'A          \\x10', b'B          \\x10'):\n\
             \x20   struct.pack_into('<H', d, d.find(n) + 26, s)\n\
             bps, rsv, nf = struct.unpack_from('<H', d, 11)[0], struct.unpack_from('<H', d, 14)[0], d[16]\n\
             fsz = struct.unpack_from('<H', d, 22)[0]\n\
             g = d.find(b'G       TXT'); c = struct.unpack_from('<H', d, g + 26)[0]\n\
             for k in range(nf):\n\
             \x20   struct.pack_into('<H', d, rsv * bps + k * fsz * bps + 2 * c, c)\n\
             struct.pack_into('<I', d, g + 28, 0xFFFFFFF0)\n\
             open(sys.argv[1], 'wb').write(d)",
            i,
        ],
    );
    env.backup(&img, "fat", "2026-03-01T00:00:00Z");
    let out_dir = env.path("out");
    let out = restore_within_a_minute(&env, "fat@latest:/", &out_dir);
    let err = String::from_utf8_lossy(&out.stderr);
    // Written but for what it skipped: exit 3, so no script takes it for
    // the whole tree.
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("INCOMPLETE"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(std::fs::read(out_dir.join("OK.TXT")).unwrap(), b"kept\n");
    assert!(
        err.contains("G.TXT") && err.contains("more than its filesystem holds"),
        "{err}"
    );
    assert!(err.contains("/s/a: lists what /s lists (a loop)"), "{err}");
    let written: u64 = walk_sizes(&out_dir);
    assert!(
        written <= 32 << 20,
        "{written} bytes written from a 32 MiB filesystem"
    );
}

/// A file whose cluster chain loops back within its size (its fourth
/// cluster chained to its first) reads its first clusters over and over:
/// that is damage to name, not content to restore or scan as the file.
#[test]
fn a_fat_file_whose_chain_loops_within_its_size_is_refused_not_repeated() {
    let env = Env::new("30d", &[]);
    let img = env.path("fat.img");
    sh("mkfs.vfat", &["-C", img.to_str().unwrap(), "32768"]);
    let i = img.to_str().unwrap();
    let (big, ok) = (env.path("big.bin"), env.path("ok.txt"));
    std::fs::write(&big, noise(300_000, 9)).unwrap();
    std::fs::write(&ok, "kept\n").unwrap();
    sh("mcopy", &["-i", i, big.to_str().unwrap(), "::/BIG.BIN"]);
    sh("mcopy", &["-i", i, ok.to_str().unwrap(), "::/OK.TXT"]);
    sh(
        "python3",
        &[
            "-c",
            "import struct, sys\n\
             d = bytearray(open(sys.argv[1], 'rb').read())\n\
             bps, rsv, nf = struct.unpack_from('<H', d, 11)[0], struct.unpack_from('<H', d, 14)[0], d[16]\n\
             fsz = struct.unpack_from('<H', d, 22)[0]\n\
             c = struct.unpack_from('<H', d, d.find(b'BIG     BIN') + 26)[0]\n\
             for k in range(nf):\n\
             \x20   struct.pack_into('<H', d, rsv * bps + k * fsz * bps + 2 * (c + 3), c)\n\
             open(sys.argv[1], 'wb').write(d)",
            i,
        ],
    );
    env.backup(&img, "fat", "2026-03-01T00:00:00Z");
    let cat = env.run(&["cat", "fat@latest:/BIG.BIN"]);
    assert_ne!(cat.status.code(), Some(0));
    assert!(
        String::from_utf8_lossy(&cat.stderr).contains("loop"),
        "{}",
        String::from_utf8_lossy(&cat.stderr)
    );
    let out_dir = env.path("out");
    let out = restore_within_a_minute(&env, "fat@latest:/", &out_dir);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(err.contains("BIG.BIN") && err.contains("loop"), "{err}");
    assert!(!out_dir.join("BIG.BIN").exists());
    assert_eq!(std::fs::read(out_dir.join("OK.TXT")).unwrap(), b"kept\n");
}

fn walk_sizes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let md = e.metadata().unwrap();
            if md.is_dir() {
                walk_sizes(&e.path())
            } else {
                md.len()
            }
        })
        .sum()
}

/// One file whose extent tree points into itself (a crafted inode) does
/// not hide its folder: the folder lists, a restore of the whole
/// filesystem writes every other file and names the one it skipped.
#[test]
fn a_file_with_a_looping_extent_tree_is_skipped_alone() {
    let env = Env::new("30d", &[]);
    let t = env.path("t");
    plain_tree(&t, true);
    let img = env.path("bad.img");
    mkfs("ext4", &t, &img, 16);
    let i = img.to_str().unwrap();
    let blocks = sh("debugfs", &["-R", "blocks /Projects/Cairn/src/main.rs", i]);
    let b: u64 = blocks.split_whitespace().next().unwrap().parse().unwrap();
    // The file's first block becomes an index node (depth 1) that points
    // at itself, and the inode's root an index (depth 2) that points at it.
    let mut node = Vec::new();
    for w in [0x0001_F30Au32, 0x0001_0054, 0, 0, b as u32, 0] {
        node.extend_from_slice(&w.to_le_bytes());
    }
    let stats = sh("debugfs", &["-R", "stats", i]);
    let bs: u64 = stats
        .lines()
        .find_map(|l| l.strip_prefix("Block size:"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    write_at(&img, b * bs, &node);
    for (k, w) in [0x0001_F30Au32, 0x0002_0004, 0, 0, b as u32, 0]
        .iter()
        .enumerate()
    {
        sh(
            "debugfs",
            &[
                "-w",
                "-R",
                &format!("sif /Projects/Cairn/src/main.rs block[{k}] {w}"),
                i,
            ],
        );
    }
    env.backup(&img, "bad", "2026-03-01T00:00:00Z");
    let ls = env.json(&["ls", "bad@latest:/Projects/Cairn/src"]);
    assert_eq!(ls.as_array().unwrap().len(), 1, "{ls}");
    let out_dir = env.path("out");
    let out = env.run(&["restore", "bad@latest:/", "--to", out_dir.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(
        err.contains("main.rs") && err.contains("extent tree"),
        "{err}"
    );
    assert_eq!(
        std::fs::read(out_dir.join("Quarterly Report 2026.docx")).unwrap(),
        std::fs::read(t.join("Quarterly Report 2026.docx")).unwrap()
    );
}

/// A file of a few bytes that claims a terabyte (a hole after its data,
/// as `truncate -s 1T` makes) restores at once, sparse: only where it
/// holds data is read.
#[test]
fn a_file_claiming_a_terabyte_of_holes_restores_at_once() {
    let env = Env::new("30d", &[]);
    let t = env.path("t");
    plain_tree(&t, false);
    let img = env.path("sparse.img");
    mkfs("ext4", &t, &img, 16);
    let i = img.to_str().unwrap();
    sh(
        "debugfs",
        &["-w", "-R", "sif /tiny.txt size 1099511627776", i],
    );
    env.backup(&img, "sp", "2026-03-01T00:00:00Z");
    let out_dir = env.path("out");
    let out = restore_within_a_minute(&env, "sp@latest:/", &out_dir);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tiny = out_dir.join("tiny.txt");
    assert_eq!(std::fs::metadata(&tiny).unwrap().len(), 1 << 40);
    assert!(allocated(&tiny) < 1 << 20);
    let mut head = [0u8; 2];
    use std::io::Read;
    std::fs::File::open(&tiny)
        .unwrap()
        .read_exact(&mut head)
        .unwrap();
    assert_eq!(&head, b"x\0");
}

/// Restores `spec` to `to`, failing the test when that takes more than a
/// minute (a crafted filesystem that makes a restore run without end).
fn restore_within_a_minute(env: &Env, spec: &str, to: &Path) -> std::process::Output {
    within_a_minute(env, &["restore", spec, "--to", to.to_str().unwrap()])
}

/// Runs cairn with `args`, failing the test when it has not ended after
/// a minute.
fn within_a_minute(env: &Env, args: &[&str]) -> std::process::Output {
    use std::io::Read;
    let mut child = env
        .cmd()
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Drained while it runs: a full pipe would stall it.
    let drain = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut v = Vec::new();
            let _ = r.read_to_end(&mut v);
            v
        })
    };
    let out = drain(Box::new(child.stdout.take().unwrap()));
    let err = drain(Box::new(child.stderr.take().unwrap()));
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > std::time::Duration::from_secs(60) {
            child.kill().unwrap();
            panic!("cairn {} did not end within a minute", args.join(" "));
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    std::process::Output {
        status,
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    }
}

fn set<'a>(v: &'a Value, key: &str, field: &str) -> Vec<&'a str> {
    let mut out: Vec<&str> = v[key]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e[field].as_str().unwrap())
        .collect();
    out.sort();
    out
}

#[test]
fn diff_of_two_disk_snapshots_reports_exactly_the_edits() {
    let env = Env::new("30d", &[]);
    let content = env.path("content");
    populate(&content);
    let disk = env.path("vm.img");
    gpt_ext4_image(&disk, &content, 48);
    env.backup(&disk, "vm", "2026-03-01T00:00:00Z");

    std::fs::write(env.path("new.txt"), text(12_345, 5)).unwrap();
    debugfs_w(
        &disk,
        &format!(
            "write {} home/alice/docs/added.txt",
            env.path("new.txt").display()
        ),
    );
    debugfs_w(&disk, "rm home/alice/docs/report-4.txt");
    // A rename keeps the inode: link under the new name, unlink the old.
    debugfs_w(
        &disk,
        "ln home/alice/docs/report-5.txt home/alice/report-5-moved.txt",
    );
    debugfs_w(&disk, "unlink home/alice/docs/report-5.txt");
    // Rewrite a file: delete and write it again with new content.
    std::fs::write(env.path("mod.txt"), text(33_000, 77)).unwrap();
    debugfs_w(&disk, "rm srv/app/src/mod3.rs");
    debugfs_w(
        &disk,
        &format!(
            "write {} srv/app/src/mod3.rs",
            env.path("mod.txt").display()
        ),
    );
    // A stealthy in-place change: same size, same mtime, new bytes.
    let blocks = sh(
        "debugfs",
        &[
            "-R",
            "blocks home/alice/docs/report-9.txt",
            &format!("{}?offset=1048576", disk.display()),
        ],
    );
    let first: u64 = blocks.split_whitespace().next().unwrap().parse().unwrap();
    write_at(&disk, (1 << 20) + first * 4096 + 100, b"ENCRYPTED");
    env.backup(&disk, "vm", "2026-03-02T00:00:00Z");

    let d = env.json(&["diff", "vm@-1", "vm@latest"]);
    assert_eq!(
        set(&d, "added", "path"),
        vec!["/home/alice/docs/added.txt"],
        "{d}"
    );
    assert_eq!(
        set(&d, "deleted", "path"),
        vec!["/home/alice/docs/report-4.txt"],
        "{d}"
    );
    assert_eq!(
        set(&d, "modified", "path"),
        vec!["/home/alice/docs/report-9.txt", "/srv/app/src/mod3.rs"],
        "{d}"
    );
    assert_eq!(
        set(&d, "renamed", "from"),
        vec!["/home/alice/docs/report-5.txt"],
        "{d}"
    );
    assert_eq!(
        set(&d, "renamed", "to"),
        vec!["/home/alice/report-5-moved.txt"],
        "{d}"
    );
    let m = d["modified"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["path"] == "/srv/app/src/mod3.rs")
        .unwrap();
    assert_eq!(m["new_size"], 33_000);
    assert_eq!(d["added"][0]["size"], 12_345);
    let text_out = env.ok(&["diff", "vm@-1", "vm@latest"]);
    assert!(
        text_out.contains("1 added, 1 deleted, 2 modified, 1 renamed"),
        "{text_out}"
    );
    let same = env.json(&["diff", "vm@latest", "vm@latest"]);
    for k in ["added", "deleted", "modified", "renamed"] {
        assert!(same[k].as_array().unwrap().is_empty());
    }
}

#[test]
fn diff_of_two_directory_snapshots_and_file_restore_from_one() {
    let env = Env::new("30d", &[]);
    let src: PathBuf = env.path("share");
    populate(&src);
    env.backup(&src, "share", "2026-03-01T00:00:00Z");
    std::fs::write(src.join("home/alice/docs/new.txt"), "new\n").unwrap();
    std::fs::remove_file(src.join("home/alice/docs/report-4.txt")).unwrap();
    std::fs::rename(
        src.join("home/alice/docs/report-5.txt"),
        src.join("home/alice/report-5.txt.locked"),
    )
    .unwrap();
    std::fs::write(src.join("srv/app/src/mod2.rs"), text(8_000, 999)).unwrap();
    env.backup(&src, "share", "2026-03-02T00:00:00Z");
    let d = env.json(&["diff", "share@-1", "share@latest"]);
    assert_eq!(
        set(&d, "added", "path"),
        vec!["/home/alice/docs/new.txt"],
        "{d}"
    );
    assert_eq!(
        set(&d, "deleted", "path"),
        vec!["/home/alice/docs/report-4.txt"],
        "{d}"
    );
    assert_eq!(
        set(&d, "modified", "path"),
        vec!["/srv/app/src/mod2.rs"],
        "{d}"
    );
    assert_eq!(
        set(&d, "renamed", "to"),
        vec!["/home/alice/report-5.txt.locked"],
        "{d}"
    );

    let out = env.path("docs-back");
    env.ok(&[
        "restore",
        "share@-1:/home/alice/docs",
        "--to",
        out.to_str().unwrap(),
    ]);
    assert_eq!(std::fs::read_dir(out.join("docs")).unwrap().count(), 20);
    assert_eq!(
        std::fs::read(out.join("docs/report-4.txt")).unwrap(),
        text(20_000 + 4 * 3000, 4),
        "deleted file back"
    );
    assert_eq!(
        std::fs::read(out.join("docs/report-5.txt")).unwrap(),
        text(20_000 + 5 * 3000, 5)
    );
    let refused = env.run(&[
        "restore",
        "share@-1:/home/alice/docs",
        "--to",
        out.to_str().unwrap(),
    ]);
    assert_eq!(
        refused.status.code(),
        Some(1),
        "a non-empty target is refused"
    );
    // One file given a new name is that file, as `cp` makes it; an
    // existing file is not written over.
    let one = env.path("report-4.back");
    let spec = "share@-1:/home/alice/docs/report-4.txt";
    env.ok(&["restore", spec, "--to", one.to_str().unwrap()]);
    assert_eq!(std::fs::read(&one).unwrap(), text(20_000 + 4 * 3000, 4));
    let again = env.run(&["restore", spec, "--to", one.to_str().unwrap()]);
    assert_eq!(again.status.code(), Some(1));
    assert_eq!(std::fs::read(&one).unwrap(), text(20_000 + 4 * 3000, 4));
}

#[test]
fn a_crafted_name_that_would_escape_is_listed_and_never_restored() {
    let env = Env::new("30d", &[]);
    let content = env.path("content");
    std::fs::create_dir_all(content.join("docs")).unwrap();
    std::fs::write(
        content.join("docs/..Xescaped"),
        "written outside the target\n",
    )
    .unwrap();
    std::fs::write(content.join("docs/fine.txt"), "fine\n").unwrap();
    let disk = env.path("evil.img");
    mkfs("ext4", &content, &disk, 8);
    // What a hostile guest can do to its own disk: a directory entry named
    // "../escaped" (no real filesystem allows '/' in a name).
    let mut img = std::fs::read(&disk).unwrap();
    let at = img
        .windows(10)
        .position(|w| w == b"..Xescaped")
        .expect("name in the image");
    img[at + 2] = b'/';
    std::fs::write(&disk, &img).unwrap();
    env.backup(&disk, "evil", "2026-03-01T00:00:00Z");

    let ls = env.json(&["ls", "evil@latest:/docs"]);
    let bad = ls
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["path"] == "/docs/../escaped")
        .expect("listed");
    assert_eq!(bad["unsafe_name"], true);
    // Listed whole, not cut at its `/` (as `escaped`, another name).
    let plain = env.ok(&["ls", "evil@latest:/docs"]);
    assert!(plain.contains("../escaped  (unsafe name)"), "{plain}");

    let target = env.path("restore-here");
    let out = env.run(&[
        "restore",
        "evil@latest:/docs",
        "--to",
        target.to_str().unwrap(),
    ]);
    assert!(
        out.status.code() == Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("/docs/../escaped: unsafe name, not restored"),
        "{err}"
    );
    assert!(
        !env.path("escaped").exists() && !target.join("escaped").exists(),
        "nothing written outside"
    );
    assert_eq!(
        std::fs::read_to_string(target.join("docs/fine.txt")).unwrap(),
        "fine\n"
    );
}

#[test]
fn the_same_filesystems_in_the_other_tables() {
    // NTFS and ext2 in GPT; FAT32 primary and ext4 logical in MBR.
    let env = Env::new("30d", &[]);
    let (nt, e2, f32t, e4) = (
        env.path("nt"),
        env.path("e2"),
        env.path("f32"),
        env.path("e4"),
    );
    plain_tree(&nt, false);
    linux_tree(&e2);
    plain_tree(&f32t, true);
    linux_tree(&e4);
    let imgs: Vec<PathBuf> = ["nt.img", "e2.img", "f32.img", "e4.img"]
        .iter()
        .map(|n| env.path(n))
        .collect();
    mkfs("ntfs", &nt, &imgs[0], 16);
    mkfs("ext2", &e2, &imgs[1], 40);
    mkfs("fat32", &f32t, &imgs[2], 40);
    mkfs("ext4", &e4, &imgs[3], 40);
    let gpt = env.path("gpt.img");
    gpt_disk(&gpt, &[(&imgs[0], 16, "0700"), (&imgs[1], 40, "8300")]);
    let mbr = env.path("mbr.img");
    mbr_disk(&mbr, (&imgs[2], 40, "c"), &[(&imgs[3], 40, "83")]);
    env.backup(&gpt, "g", "2026-03-01T00:00:00Z");
    env.backup(&mbr, "m", "2026-03-01T00:00:00Z");

    let with_lost_found = |t: Truth| {
        let mut t = t;
        t.insert("/lost+found".into(), ("dir".into(), 0, None));
        t
    };
    assert_eq!(
        listing(&env.json(&["ls", "-R", "g@latest", "--partition", "1"])),
        truth(&nt)
    );
    assert_eq!(
        listing(&env.json(&["ls", "-R", "g@latest", "--partition", "2"])),
        with_lost_found(truth(&e2))
    );
    assert_eq!(
        listing(&env.json(&["ls", "-R", "m@latest", "--partition", "1"])),
        truth(&f32t)
    );
    assert_eq!(
        listing(&env.json(&["ls", "-R", "m@latest", "--partition", "5"])),
        with_lost_found(truth(&e4))
    );
    restore_and_compare(&env, "g@latest", "1", &nt, "g1");
    restore_and_compare(&env, "m@latest", "5", &e4, "m5");
}

fn mode_of(p: &Path) -> u32 {
    std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
}

#[test]
fn setuid_programs_come_back_plain_unless_asked() {
    let env = Env::new("30d", &[]);
    let content = env.path("content");
    std::fs::create_dir_all(content.join("usr/bin")).unwrap();
    std::fs::create_dir_all(content.join("srv/shared")).unwrap();
    let set = |rel: &str, mode: u32| {
        std::fs::set_permissions(content.join(rel), std::fs::Permissions::from_mode(mode)).unwrap()
    };
    std::fs::write(content.join("usr/bin/rootshell"), b"#!/bin/sh\nexec sh\n").unwrap();
    set("usr/bin/rootshell", 0o4755);
    std::fs::write(content.join("usr/bin/grouptool"), b"#!/bin/sh\n").unwrap();
    set("usr/bin/grouptool", 0o2755);
    std::fs::write(content.join("usr/bin/plain"), b"#!/bin/sh\n").unwrap();
    set("usr/bin/plain", 0o755);
    set("srv/shared", 0o2775);
    // A file capability makes a privileged program as setuid does.
    std::fs::write(content.join("usr/bin/capable"), b"#!/bin/sh\n").unwrap();
    sh(
        "setcap",
        &[
            "cap_setuid+ep",
            content.join("usr/bin/capable").to_str().unwrap(),
        ],
    );
    let has_cap = |p: &Path| xattr::get(p, "security.capability").unwrap().is_some();
    assert!(has_cap(&content.join("usr/bin/capable")));

    // Out of a guest disk's filesystem.
    let img = env.path("vm.img");
    gpt_ext4_image(&img, &content, 16);
    env.backup(&img, "vm", "2026-03-01T00:00:00Z");
    let plain = env.path("plain");
    let out = env.run(&["restore", "vm@latest:/", "--to", plain.to_str().unwrap()]);
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("2 file(s) restored without their setuid/setgid"),
        "{err}"
    );
    // Named, so that the operator can give back those a system needs.
    assert!(
        err.contains("/usr/bin/rootshell") && err.contains("/usr/bin/grouptool"),
        "{err}"
    );
    assert_eq!(mode_of(&plain.join("usr/bin/rootshell")), 0o755);
    assert_eq!(mode_of(&plain.join("usr/bin/grouptool")), 0o755);
    assert_eq!(mode_of(&plain.join("usr/bin/plain")), 0o755);
    assert_eq!(
        mode_of(&plain.join("srv/shared")),
        0o2775,
        "a folder's setgid stays"
    );
    let kept = env.path("kept");
    let out = env.run(&[
        "restore",
        "vm@latest:/usr",
        "--to",
        kept.to_str().unwrap(),
        "--keep-setid",
    ]);
    assert!(out.status.success());
    assert!(!String::from_utf8_lossy(&out.stderr).contains("setuid"));
    assert_eq!(mode_of(&kept.join("usr/bin/rootshell")), 0o4755);
    assert_eq!(mode_of(&kept.join("usr/bin/grouptool")), 0o2755);

    // A directory snapshot restored whole.
    env.backup(&content, "share", "2026-03-01T00:00:00Z");
    let tree = env.path("tree");
    let out = env.run(&["restore", "share@latest", "--to", tree.to_str().unwrap()]);
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("3 file(s) restored without"), "{err}");
    assert!(err.contains("usr/bin/capable"), "{err}");
    let again = env.path("tree-json");
    let r = env.json(&["restore", "share@latest", "--to", again.to_str().unwrap()]);
    let mut named: Vec<&str> = r["setid_dropped_paths"]
        .as_array()
        .unwrap_or_else(|| panic!("{r:#}"))
        .iter()
        .map(|p| p.as_str().unwrap().trim_start_matches('/'))
        .collect();
    named.sort();
    assert_eq!(
        named,
        ["usr/bin/capable", "usr/bin/grouptool", "usr/bin/rootshell"],
        "{r:#}"
    );
    assert_eq!(mode_of(&tree.join("usr/bin/rootshell")), 0o755);
    assert_eq!(mode_of(&tree.join("usr/bin/grouptool")), 0o755);
    assert!(!has_cap(&tree.join("usr/bin/capable")));
    assert_eq!(mode_of(&tree.join("srv/shared")), 0o2775);
    let tree_kept = env.path("tree-kept");
    env.ok(&[
        "restore",
        "share@latest",
        "--to",
        tree_kept.to_str().unwrap(),
        "--keep-setid",
    ]);
    assert_eq!(mode_of(&tree_kept.join("usr/bin/rootshell")), 0o4755);
    assert!(has_cap(&tree_kept.join("usr/bin/capable")));
}

/// Peak resident memory of the largest child this test process has
/// waited for, in bytes.
fn children_peak_rss() -> u64 {
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    assert_eq!(
        unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) },
        0
    );
    usage.ru_maxrss as u64 * 1024
}

#[test]
fn crafted_ntfs_runs_and_index_nodes_end_in_errors_not_gigabytes_or_endless_reads() {
    let env = Env::new("30d", &[]);
    let vol = env.path("ntfs.img");
    sh("truncate", &["-s", "64M", vol.to_str().unwrap()]);
    sh("mkntfs", &["-F", "-f", "-q", vol.to_str().unwrap()]);
    let mnt = env.path("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    sh("ntfs-3g", &[vol.to_str().unwrap(), mnt.to_str().unwrap()]);
    let made = (|| {
        std::fs::create_dir_all(mnt.join("D"))?;
        std::fs::create_dir_all(mnt.join("S"))?;
        // Enough entries for the folder's index to need nodes of its own.
        for i in 1..=40 {
            std::fs::write(mnt.join(format!("D/file{i}.txt")), format!("file {i}\n"))?;
        }
        for (name, seed) in [
            ("big.bin", 1),
            ("beyond.bin", 2),
            ("short.bin", 3),
            ("first-beyond.bin", 4),
        ] {
            std::fs::write(mnt.join("S").join(name), noise(300_000, seed))?;
        }
        std::fs::write(mnt.join("S/small.txt"), "small\n")
    })();
    sh("umount", &[mnt.to_str().unwrap()]);
    made.unwrap();
    let craft = |args: &[&str]| {
        let tool = in_package("tests/tools/ntfs_craft.py");
        let mut a = vec![tool.as_str(), vol.to_str().unwrap()];
        a.extend_from_slice(args);
        sh("python3", &a);
    };
    // D's first index node names itself as every entry's child: the
    // reader went down it without end, keeping every node (a gigabyte).
    craft(&["index-cycle", "D"]);
    // A run of 2^40 clusters far past the 64 MiB volume (was read as 4
    // PiB of zeros by a scan), a sparse terabyte (was read a terabyte
    // long by a restore), sizes claiming 100 MiB over 300 KB of runs (was
    // restored cut short without a word).
    craft(&["runs-beyond", "beyond.bin"]);
    craft(&["sparse", "big.bin", "1024"]);
    craft(&["short-runs", "short.bin", "100"]);
    // The first cluster's run past the volume: a read of nothing there
    // must not pass the next run's bytes off as the file's first ones.
    craft(&["run-beyond-first", "first-beyond.bin"]);
    env.backup(&vol, "vm", "2026-03-01T00:00:00Z");

    let ls = within_a_minute(&env, &["ls", "-R", "vm@latest:/"]);
    let listed = String::from_utf8_lossy(&ls.stdout);
    let err = String::from_utf8_lossy(&ls.stderr);
    // A listing with a folder missing says so: exit 3, as a restore.
    assert_eq!(ls.status.code(), Some(3), "{err}");
    assert!(err.contains("INCOMPLETE: 1 folder(s)"), "{err}");
    assert!(
        listed.contains("/S/small.txt"),
        "the rest is listed: {listed}"
    );
    assert!(
        err.contains("/D: not read") && err.contains("loop"),
        "{err}"
    );
    assert!(
        !err.contains("panicked") && !err.contains("Custom {"),
        "{err}"
    );

    let out = env.path("out");
    let r = within_a_minute(
        &env,
        &["restore", "vm@latest:/S", "--to", out.to_str().unwrap()],
    );
    assert_eq!(
        r.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&r.stderr)
    );
    let err = String::from_utf8_lossy(&r.stderr);
    let big = std::fs::metadata(out.join("S/big.bin")).unwrap();
    assert_eq!(big.len(), 1 << 40);
    assert!(
        allocated(&out.join("S/big.bin")) < 1 << 20,
        "holes stay holes"
    );
    for skipped in ["beyond.bin", "short.bin", "first-beyond.bin"] {
        assert!(
            err.contains(&format!("/S/{skipped}")),
            "{skipped} named: {err}"
        );
        assert!(
            !out.join("S").join(skipped).exists(),
            "nothing left in place of {skipped}"
        );
    }
    assert!(err.contains("data runs end before its size"), "{err}");
    assert_eq!(std::fs::read(out.join("S/small.txt")).unwrap(), b"small\n");

    for file in ["beyond.bin", "first-beyond.bin"] {
        let cat = within_a_minute(&env, &["cat", &format!("vm@latest:/S/{file}")]);
        assert_eq!(
            cat.status.code(),
            Some(1),
            "{file}: no bytes from past the volume"
        );
    }

    let scan = within_a_minute(&env, &["scan", "vm@latest", "--json"]);
    assert_eq!(
        scan.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&scan.stderr)
    );
    let report: Value = serde_json::from_slice(&scan.stdout).unwrap();
    assert_eq!(report["verdict"], "warning", "{report}");
    let notes = report["notes"].to_string();
    assert!(
        notes.contains("/S/beyond.bin") && notes.contains("/D: not read"),
        "{notes}"
    );

    assert!(
        children_peak_rss() < 400 << 20,
        "no command took more than 400 MiB: {} MiB",
        children_peak_rss() >> 20
    );
}

/// Runs tests/tools/extfat_craft.py on `img`.
fn extfat_craft(img: &Path, args: &[&str]) {
    let tool = in_package("tests/tools/extfat_craft.py");
    let mut a = vec![tool.as_str(), img.to_str().unwrap()];
    a.extend_from_slice(args);
    sh("python3", &a);
}

/// The inode number of `path` in ext image `img`.
fn inode_of(img: &Path, path: &str) -> String {
    let out = sh(
        "debugfs",
        &["-R", &format!("stat {path}"), img.to_str().unwrap()],
    );
    let at = out.find("Inode: ").expect("debugfs stat") + 7;
    out[at..].split_whitespace().next().unwrap().to_string()
}

#[test]
fn crafted_ext_and_fat_structures_that_repeat_blocks_end_in_errors_not_terabytes() {
    let env = Env::new("30d", &[]);
    let text = |e: &std::process::Output| {
        format!(
            "{}{}",
            String::from_utf8_lossy(&e.stdout),
            String::from_utf8_lossy(&e.stderr)
        )
    };
    let all_read = |name: &str| {
        let ls = within_a_minute(&env, &["ls", "-R", &format!("{name}@latest:/")]);
        // A folder left unread makes the listing incomplete: exit 3.
        let partial = text(&ls).contains(": not read (");
        assert_eq!(
            ls.status.code(),
            Some(if partial { 3 } else { 0 }),
            "{}",
            text(&ls)
        );
        let out = env.path(&format!("{name}-out"));
        let r = within_a_minute(
            &env,
            &[
                "restore",
                &format!("{name}@latest:/"),
                "--to",
                out.to_str().unwrap(),
            ],
        );
        assert_eq!(r.status.code(), Some(3), "{}", text(&r));
        // Nothing amplified: what is restored is no larger than the image.
        let restored: u64 = sh("du", &["-sb", out.to_str().unwrap()])
            .split_whitespace()
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert!(restored < 80 << 20, "{name}: {restored} bytes restored");
        let scan = within_a_minute(&env, &["scan", "-q", &format!("{name}@latest")]);
        assert!(!text(&scan).contains("panicked"), "{}", text(&scan));
        (text(&ls), text(&r))
    };

    // ext2: every indirect pointer names one block filled with its own
    // number (a loop that pushed a run per block: gigabytes, then abort).
    let src = env.path("ext2-src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("f"), "data\n").unwrap();
    std::fs::write(src.join("ok.txt"), "fine\n").unwrap();
    let ext2 = env.path("ext2.img");
    sh(
        "mkfs.ext2",
        &[
            "-q",
            "-b",
            "4096",
            "-d",
            src.to_str().unwrap(),
            ext2.to_str().unwrap(),
            "16M",
        ],
    );
    extfat_craft(&ext2, &["indirect-loop", &inode_of(&ext2, "/f")]);
    env.backup(&ext2, "ext2", "2026-03-01T00:00:00Z");
    let (_, restored) = all_read("ext2");
    assert!(
        restored.contains("/f") && restored.contains("maps more blocks than the filesystem has"),
        "{restored}"
    );
    assert_eq!(
        std::fs::read(env.path("ext2-out/ok.txt")).unwrap(),
        b"fine\n"
    );

    // ext4: a file mapping one 16 MiB extent 65,536 times (a terabyte of
    // real bytes restored from 64 MiB), and a directory on another's
    // blocks (its entries listed again for each such directory).
    let src = env.path("ext4-src");
    std::fs::create_dir_all(src.join("d1")).unwrap();
    std::fs::create_dir_all(src.join("d2")).unwrap();
    std::fs::write(src.join("pat"), noise(16 << 20, 9)).unwrap();
    std::fs::write(src.join("bomb"), "").unwrap();
    for i in 0..50 {
        std::fs::write(src.join(format!("d1/n{i}")), "x").unwrap();
    }
    let ext4 = env.path("ext4.img");
    sh(
        "mkfs.ext4",
        &[
            "-q",
            "-b",
            "4096",
            "-d",
            src.to_str().unwrap(),
            ext4.to_str().unwrap(),
            "64M",
        ],
    );
    extfat_craft(
        &ext4,
        &[
            "extent-bomb",
            &inode_of(&ext4, "/bomb"),
            &inode_of(&ext4, "/pat"),
        ],
    );
    extfat_craft(
        &ext4,
        &[
            "share-dir",
            &inode_of(&ext4, "/d2"),
            &inode_of(&ext4, "/d1"),
        ],
    );
    env.backup(&ext4, "ext4", "2026-03-01T00:00:00Z");
    let (listed, restored) = all_read("ext4");
    assert!(listed.contains("shares block"), "{listed}");
    assert!(
        restored.contains("/bomb") && restored.contains("maps more blocks than the filesystem has"),
        "{restored}"
    );
    assert_eq!(
        std::fs::read(env.path("ext4-out/pat")).unwrap(),
        noise(16 << 20, 9)
    );

    // A root inode that says it is a file: nothing to read (it listed as
    // an empty root and restored as a file where the folder belongs).
    let rootless = env.path("rootless.img");
    sh(
        "mkfs.ext4",
        &[
            "-q",
            "-d",
            src.to_str().unwrap(),
            rootless.to_str().unwrap(),
            "64M",
        ],
    );
    extfat_craft(&rootless, &["root-file"]);
    env.backup(&rootless, "rootless", "2026-03-01T00:00:00Z");
    let ls = env.run(&["ls", "-R", "rootless@latest:/"]);
    assert_eq!(ls.status.code(), Some(1), "{}", text(&ls));
    assert!(
        text(&ls).contains("root inode is not a directory"),
        "{}",
        text(&ls)
    );
    let out = env.path("rootless-out");
    let r = env.run(&[
        "restore",
        "rootless@latest:/",
        "--to",
        out.to_str().unwrap(),
    ]);
    assert_eq!(r.status.code(), Some(1), "{}", text(&r));
    assert!(!out.is_file());

    // FAT: twenty folders whose P and Q both lead to the next (2^20
    // paths, no loop; the walk listed until its limits, for minutes), and
    // a file whose cluster chain ends long before its size (was restored
    // cut short without a word).
    let fat = env.path("fat.img");
    sh(
        "mkfs.vfat",
        &["-C", "-F", "32", fat.to_str().unwrap(), "65536"],
    );
    let marker = env.path("marker");
    for i in 0..20 {
        let d = format!("::/D{i:02}");
        sh(
            "mmd",
            &[
                "-i",
                fat.to_str().unwrap(),
                &d,
                &format!("{d}/P"),
                &format!("{d}/Q"),
            ],
        );
        std::fs::write(&marker, format!("marker {i}\n")).unwrap();
        sh(
            "mcopy",
            &[
                "-i",
                fat.to_str().unwrap(),
                marker.to_str().unwrap(),
                &format!("{d}/M"),
            ],
        );
    }
    std::fs::write(&marker, noise(256 << 10, 4)).unwrap();
    sh(
        "mcopy",
        &[
            "-i",
            fat.to_str().unwrap(),
            marker.to_str().unwrap(),
            "::/BIG.BIN",
        ],
    );
    extfat_craft(&fat, &["fat-dag", "20"]);
    extfat_craft(&fat, &["fat-short", "/BIG.BIN", "2"]);
    env.backup(&fat, "fat", "2026-03-01T00:00:00Z");
    let (listed, restored) = all_read("fat");
    assert!(listed.contains("cross-linked"), "{listed}");
    assert!(
        restored.contains("BIG.BIN") && restored.contains("clusters of"),
        "{restored}"
    );
    let cat = env.run(&["cat", "fat@latest:/BIG.BIN"]);
    assert_eq!(cat.status.code(), Some(1));
}

/// A guest's special files (a mail system's FIFO) are left out of a file
/// restore on purpose: named, and no reason for exit 3, which says the
/// restore could not read something.
#[test]
fn special_files_left_out_on_purpose_do_not_make_a_restore_incomplete() {
    let env = Env::new("30d", &[]);
    let t = env.path("t");
    plain_tree(&t, false);
    std::fs::create_dir_all(t.join("spool")).unwrap();
    sh("mkfifo", &[t.join("spool/pickup").to_str().unwrap()]);
    let img = env.path("g.img");
    mkfs("ext4", &t, &img, 16);
    env.backup(&img, "g", "2026-03-01T00:00:00Z");
    let out_dir = env.path("out");
    let out = restore_within_a_minute(&env, "g@latest:/", &out_dir);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(
        err.contains("/spool/pickup: special file, not restored"),
        "{err}"
    );
    assert!(out_dir.join("tiny.txt").exists());
}

/// A folder deleted from a live share comes back into the folder that
/// held it (which holds other things): under its own name, the rest left
/// alone; never over a folder of that name, and a whole filesystem only
/// into a new or empty folder.
#[test]
fn a_folder_comes_back_into_the_folder_that_held_it() {
    let env = Env::new("30d", &[]);
    let content = env.path("content");
    std::fs::create_dir_all(content.join("Users/bob/Documents")).unwrap();
    std::fs::write(content.join("Users/bob/Documents/plan.txt"), b"plan\n").unwrap();
    std::fs::write(content.join("Users/bob/notes.txt"), b"notes\n").unwrap();
    let img = env.path("vm.img");
    gpt_ext4_image(&img, &content, 16);
    env.backup(&img, "vm", "2026-03-01T00:00:00Z");
    let share = env.path("share/Users/bob");
    std::fs::create_dir_all(&share).unwrap();
    std::fs::write(share.join("newer.txt"), b"made since\n").unwrap();
    env.ok(&[
        "restore",
        "vm@latest:/Users/bob/Documents",
        "--to",
        share.to_str().unwrap(),
    ]);
    assert_eq!(
        std::fs::read(share.join("Documents/plan.txt")).unwrap(),
        b"plan\n"
    );
    assert_eq!(
        std::fs::read(share.join("newer.txt")).unwrap(),
        b"made since\n"
    );
    // Not over a folder of that name, nor a whole filesystem into it.
    for (spec, said) in [
        ("vm@latest:/Users/bob/Documents", "already holds Documents"),
        ("vm@latest:/", "is not empty"),
    ] {
        let out = env.run(&["restore", spec, "--to", share.to_str().unwrap()]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(err.contains(said), "{err}");
    }
}
