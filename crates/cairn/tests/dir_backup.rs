//! A file server's tree: odd names, links and metadata survive the round
//! trip, and unchanged files are not read again.

mod common;
use common::*;
use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;

/// Everything about a tree that a restore must reproduce.
fn describe(root: &Path) -> BTreeMap<Vec<u8>, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let md = std::fs::symlink_metadata(&p).unwrap();
            let rel = p
                .strip_prefix(root)
                .unwrap()
                .as_os_str()
                .as_bytes()
                .to_vec();
            let ft = md.file_type();
            let what = if ft.is_symlink() {
                format!("link -> {:?}", std::fs::read_link(&p).unwrap())
            } else if ft.is_dir() {
                stack.push(p.clone());
                format!("dir {:o} {}", md.mode() & 0o7777, md.mtime())
            } else {
                let data = std::fs::read(&p).unwrap();
                let x = xattr::get(&p, "user.origin").ok().flatten();
                format!(
                    "file {:o} {} {}:{} {} links={} hash={} xattr={:?}",
                    md.mode() & 0o7777,
                    md.mtime(),
                    md.uid(),
                    md.gid(),
                    data.len(),
                    md.nlink(),
                    blake3_hex(&data),
                    x
                )
            };
            out.insert(rel, what);
        }
    }
    out
}

fn blake3_hex(d: &[u8]) -> String {
    // A cheap stable fingerprint without another dependency.
    let mut h: u64 = 0xcbf29ce484222325;
    for b in d {
        h = (h ^ *b as u64).wrapping_mul(0x100000001b3);
    }
    format!("{h:016x}")
}

/// A socket is not restored (its program binds it anew when it starts),
/// and saying nothing of it is right: no warnings about a file that was
/// never meant to be made. A named pipe is made.
#[test]
fn sockets_are_left_out_of_a_restore_without_warnings() {
    let env = Env::new("30d", &[]);
    let src = env.path("run");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("app.pid"), "4242\n").unwrap();
    let _listener = std::os::unix::net::UnixListener::bind(src.join("app.sock")).unwrap();
    sh("mkfifo", &[src.join("app.fifo").to_str().unwrap()]);
    env.backup(&src, "run", "2026-03-01T00:00:00Z");
    let out = env.path("back");
    let r = env.run(&["restore", "run@latest", "--to", out.to_str().unwrap()]);
    assert_eq!(r.status.code(), Some(0));
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(!err.contains("warning"), "{err}");
    assert!(std::fs::symlink_metadata(out.join("app.sock")).is_err());
    assert!(
        std::fs::symlink_metadata(out.join("app.fifo"))
            .unwrap()
            .file_type()
            .is_fifo()
    );
    assert_eq!(std::fs::read(out.join("app.pid")).unwrap(), b"4242\n");
}

/// A restore over a live folder: a folder where the snapshot has a file
/// is said before anything is written (it used to stop half-way, with the
/// files written so far readable by anyone and their owners, modes and
/// times never set); a restore that goes through gives every file its
/// snapshot's mode.
#[test]
fn a_restore_over_a_live_folder_stops_before_writing_at_a_folder_in_a_files_place() {
    use std::os::unix::fs::PermissionsExt;
    let env = Env::new("30d", &[]);
    let src = env.path("m");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("secret.txt"), "topsecret\n").unwrap();
    std::fs::set_permissions(
        src.join("secret.txt"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    std::fs::write(src.join("zz"), "data\n").unwrap();
    env.backup(&src, "m", "2026-03-01T00:00:00Z");
    let live = env.path("live");
    std::fs::create_dir_all(live.join("zz")).unwrap();
    std::fs::write(live.join("secret.txt"), "old\n").unwrap();
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
    let args = [
        "restore",
        "m@latest",
        "--to",
        live.to_str().unwrap(),
        "--overwrite",
    ];
    let out = env.run(&args);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("zz is a folder") && err.contains("nothing was written"),
        "{err}"
    );
    assert_eq!(std::fs::read(live.join("secret.txt")).unwrap(), b"old\n");
    std::fs::remove_dir(live.join("zz")).unwrap();
    std::fs::set_permissions(
        live.join("secret.txt"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    env.ok(&args);
    assert_eq!(
        std::fs::read(live.join("secret.txt")).unwrap(),
        b"topsecret\n"
    );
    assert_eq!(mode(&live.join("secret.txt")), 0o600);
    assert_eq!(std::fs::read(live.join("zz")).unwrap(), b"data\n");
}

/// The backed-up folder itself comes back as it was: a private folder
/// (0700, its owner, its attributes, its time) is not restored 0755.
#[test]
fn the_source_folder_s_own_metadata_is_restored() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let env = Env::new("30d", &[]);
    let src = env.path("private");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("diary.txt"), "dear diary\n").unwrap();
    sh(
        "setfattr",
        &["-n", "user.owner", "-v", "alice", src.to_str().unwrap()],
    );
    std::os::unix::fs::chown(&src, Some(1234), Some(5678)).unwrap();
    std::fs::set_permissions(&src, std::fs::Permissions::from_mode(0o700)).unwrap();
    let when = filetime::FileTime::from_unix_time(1_600_000_000, 123_000_000);
    filetime::set_file_mtime(&src, when).unwrap();
    env.backup(&src, "private", "2026-03-01T00:00:00Z");
    let out = env.path("back");
    env.ok(&["restore", "private@latest", "--to", out.to_str().unwrap()]);
    let md = std::fs::metadata(&out).unwrap();
    assert_eq!(md.mode() & 0o7777, 0o700);
    assert_eq!((md.uid(), md.gid()), (1234, 5678));
    assert_eq!((md.mtime(), md.mtime_nsec()), (1_600_000_000, 123_000_000));
    assert_eq!(
        sh(
            "getfattr",
            &["--only-values", "-n", "user.owner", out.to_str().unwrap()]
        ),
        "alice"
    );
    assert_eq!(
        std::fs::read(out.join("diary.txt")).unwrap(),
        b"dear diary\n"
    );
}

#[test]
fn directory_tree_with_links_odd_names_and_metadata_round_trips() {
    let env = Env::new("30d", &[]);
    let src = env.path("share");
    populate(&src);
    std::fs::write(src.join("name with spaces.txt"), "spaces").unwrap();
    std::fs::write(src.join("new\nline.txt"), "newline").unwrap();
    std::fs::write(
        src.join(OsStr::from_bytes(b"latin1-\xe9t\xe9.txt")),
        "not utf-8",
    )
    .unwrap();
    std::fs::write(src.join("ünïcødé ✓.txt"), "unicode").unwrap();
    std::os::unix::fs::symlink("home/alice/docs/report-1.txt", src.join("shortcut")).unwrap();
    std::os::unix::fs::symlink("/nonexistent/target", src.join("dangling")).unwrap();
    std::fs::hard_link(src.join("etc/hostname"), src.join("etc/hostname.bak")).unwrap();
    std::fs::create_dir(src.join("empty dir")).unwrap();
    std::fs::write(src.join("script.sh"), "#!/bin/sh\necho hi\n").unwrap();
    std::fs::set_permissions(
        src.join("script.sh"),
        std::fs::Permissions::from_mode(0o750),
    )
    .unwrap();
    let mut sparse = std::fs::File::create(src.join("sparse.bin")).unwrap();
    sparse.set_len(8 << 20).unwrap();
    use std::io::{Seek, Write};
    sparse.seek(std::io::SeekFrom::Start(4 << 20)).unwrap();
    sparse.write_all(b"island").unwrap();
    drop(sparse);
    let has_xattr = xattr::set(src.join("etc/hostname"), "user.origin", b"installer").is_ok();
    std::os::unix::fs::lchown(src.join("srv/app/src/mod1.rs"), Some(1234), Some(5678)).ok();
    filetime::set_file_mtime(
        src.join("home"),
        filetime::FileTime::from_unix_time(1_600_000_000, 0),
    )
    .unwrap();

    let s1 = env.backup(&src, "share", "2026-03-01T00:00:00Z");
    assert_eq!(s1["source"]["kind"], "directory");
    assert!(s1["metrics"]["files"].as_u64().unwrap() >= 38);

    let out = env.path("restored");
    env.ok(&["restore", "share@latest", "--to", out.to_str().unwrap()]);
    let (a, b) = (describe(&src), describe(&out));
    assert_eq!(a.len(), b.len());
    for (k, v) in &a {
        assert_eq!(b.get(k), Some(v), "entry {:?}", String::from_utf8_lossy(k));
    }
    if has_xattr {
        assert_eq!(
            xattr::get(out.join("etc/hostname"), "user.origin")
                .unwrap()
                .as_deref(),
            Some(&b"installer"[..])
        );
    }
    assert!(
        allocated(&out.join("sparse.bin")) < 1 << 20,
        "zero chunks restore as holes"
    );

    // Day 2: one file changes; the rest are not read again.
    std::fs::write(src.join("home/alice/docs/report-2.txt"), text(30_000, 555)).unwrap();
    let s2 = env.backup(&src, "share", "2026-03-02T00:00:00Z");
    let m = &s2["metrics"];
    // 39 files: the changed one is read, the second name of the hard link
    // needs no reading, the other 37 are unchanged by size, mtime and inode.
    assert_eq!(
        m["files"].as_u64().unwrap() - m["files_unchanged"].as_u64().unwrap(),
        2,
        "{m}"
    );
    assert_eq!(m["new_chunks"], 1, "{m}");
    assert_eq!(
        m["bytes_read"], 30_000,
        "only the changed file is read: {m}"
    );
    assert!(m["changed_bytes"].as_u64().unwrap() <= 30_000 + 26_000);

    let out2 = env.path("restored2");
    env.ok(&["restore", "share@latest", "--to", out2.to_str().unwrap()]);
    assert_eq!(describe(&src), describe(&out2));
    let out1 = env.path("restored1");
    env.ok(&["restore", "share@-1", "--to", out1.to_str().unwrap()]);
    assert_eq!(describe(&out), describe(&out1));

    // Day 3: a file encrypted in place, same size, its mtime put back (as
    // ransomware may): the inode's change time gives it away, it is read.
    let victim = src.join("home/alice/docs/report-1.txt");
    let old = std::fs::metadata(&victim).unwrap();
    let len = old.len() as usize;
    std::fs::write(&victim, noise(len, 9)).unwrap();
    std::fs::File::options()
        .write(true)
        .open(&victim)
        .unwrap()
        .set_modified(old.modified().unwrap())
        .unwrap();
    let out = env.run(&[
        "backup",
        src.to_str().unwrap(),
        "--name",
        "share",
        "--time",
        "2026-03-03T00:00:00Z",
        "--json",
    ]);
    let s3: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(s3["metrics"]["bytes_read"], len as u64, "{}", s3["metrics"]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "and insight flags it: {}",
        s3["insight"]
    );
    let out3 = env.path("restored3");
    env.ok(&["restore", "share@latest", "--to", out3.to_str().unwrap()]);
    assert_eq!(
        std::fs::read(out3.join("home/alice/docs/report-1.txt")).unwrap(),
        std::fs::read(&victim).unwrap()
    );
}

/// One damaged chunk costs the files it holds, not the whole restore:
/// the rest of the tree is written, the lost files are named, exit 3.
#[test]
fn a_damaged_chunk_costs_its_files_not_the_whole_restore() {
    let env = Env::new("30d", &[]);
    let src = env.path("share");
    std::fs::create_dir_all(src.join("docs")).unwrap();
    for i in 0..16u64 {
        std::fs::write(src.join(format!("docs/f{i:02}.bin")), noise(96_000, i)).unwrap();
    }
    env.backup(&src, "share", "2026-03-01T00:00:00Z");
    flip_byte_in_largest_pack(&env.vault);
    let to = env.path("back");
    let out = env.run(&["restore", "share@latest", "--to", to.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    let lost: Vec<u64> = (0..16)
        .filter(|i| !to.join(format!("docs/f{i:02}.bin")).exists())
        .collect();
    assert_eq!(lost.len(), 1, "one chunk, one file: {lost:?}\n{err}");
    assert!(
        err.contains(&format!("docs/f{:02}.bin: not restored", lost[0])),
        "{err}"
    );
    for i in (0..16).filter(|i| *i != lost[0]) {
        assert_eq!(
            std::fs::read(to.join(format!("docs/f{i:02}.bin"))).unwrap(),
            noise(96_000, i)
        );
    }

    // That one file asked for alone: damage found (exit 3), and nothing
    // made, neither the file nor a folder for it.
    let spec = format!("share@latest:/docs/f{:02}.bin", lost[0]);
    for to in [env.path("one.bin"), env.path("into")] {
        let mut arg = to.to_str().unwrap().to_string();
        if to.ends_with("into") {
            arg.push('/');
        }
        let out = env.run(&["restore", &spec, "--to", &arg]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(3), "{arg}: {err}");
        assert!(err.contains("damaged object"), "{err}");
        assert!(!to.exists(), "{arg} made for nothing");
    }
    let good = format!("share@latest:/docs/f{:02}.bin", (lost[0] + 1) % 16);
    env.ok(&[
        "restore",
        &good,
        "--to",
        env.path("good.bin").to_str().unwrap(),
    ]);
}

/// Restoring a folder with a file under two names: one file and one hard
/// link, each counted as what it is.
#[test]
fn a_path_restore_counts_hard_links_apart_from_files() {
    let env = Env::new("30d", &[]);
    let src = env.path("share");
    std::fs::create_dir_all(src.join("docs")).unwrap();
    std::fs::write(src.join("docs/a.txt"), "one file\n").unwrap();
    std::fs::hard_link(src.join("docs/a.txt"), src.join("docs/b.txt")).unwrap();
    env.backup(&src, "share", "2026-03-01T00:00:00Z");
    let to = env.path("back");
    let r = env.json(&[
        "restore",
        "share@latest:/docs",
        "--to",
        to.to_str().unwrap(),
    ]);
    assert_eq!(r["files"], 1, "{r}");
    assert_eq!(r["hardlinks"], 1, "{r}");
    let (a, b) = (
        std::fs::metadata(to.join("docs/a.txt")).unwrap(),
        std::fs::metadata(to.join("docs/b.txt")).unwrap(),
    );
    assert_eq!(a.ino(), b.ino());
    let text = env.ok(&[
        "restore",
        "share@latest:/docs",
        "--to",
        env.path("again").to_str().unwrap(),
    ]);
    assert!(
        text.contains("1 files, 1 dirs, 0 symlinks, 1 hard links"),
        "{text}"
    );
}

/// A folder of virtual machines' disk images: a sparse image's holes are
/// not read (the backup reads its data only), its
/// chunks are those of the same bytes written out whole (a dense copy adds
/// nothing to the vault), and it restores identical and sparse.
#[test]
fn a_sparse_file_in_a_folder_is_backed_up_without_reading_its_holes() {
    let env = Env::new("30d", &[]);
    let src = env.path("images");
    std::fs::create_dir_all(&src).unwrap();
    let img = src.join("vm.raw");
    let size: u64 = 256 << 20;
    std::fs::File::create(&img).unwrap().set_len(size).unwrap();
    let data = noise(3 << 20, 11);
    write_at(&img, 5 << 20, &data[..1 << 20]);
    write_at(&img, 100 << 20, &data[1 << 20..]);
    assert!(allocated(&img) < 8 << 20, "the filesystem keeps holes");

    let first = env.backup(&src, "images", "2026-03-01T00:00:00Z");
    let m = &first["metrics"];
    let read = m["bytes_read"].as_u64().unwrap();
    assert!(
        (3 << 20..8 << 20).contains(&read),
        "read {read} bytes of a file with 3 MiB of data"
    );

    // The same bytes with no holes: every chunk is one the vault has.
    sh(
        "cp",
        &[
            "--sparse=never",
            img.to_str().unwrap(),
            src.join("copy.raw").to_str().unwrap(),
        ],
    );
    let second = env.backup(&src, "images", "2026-03-02T00:00:00Z");
    assert_eq!(second["metrics"]["new_bytes"].as_u64(), Some(0), "{second}");
    assert!(second["metrics"]["bytes_read"].as_u64().unwrap() >= size);

    let out = env.path("back");
    env.ok(&["restore", "images@latest", "--to", out.to_str().unwrap()]);
    for name in ["vm.raw", "copy.raw"] {
        assert!(same_bytes(&img, &out.join(name)), "{name}");
        assert!(
            allocated(&out.join(name)) < 8 << 20,
            "{name} restored sparse"
        );
    }
}

/// A file written to while the backup reads it (a database in use) keeps
/// its size, so only its times show it: the backup says the copy may mix
/// old and new content. A file left alone gets no such word.
#[test]
fn a_file_written_while_being_read_is_said_to_be() {
    use std::os::unix::fs::FileExt;
    let env = Env::new("30d", &[]);
    let src = env.path("share");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("quiet.bin"), noise(4 << 20, 1)).unwrap();
    let busy = src.join("busy.db");
    std::fs::write(&busy, noise(96 << 20, 2)).unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (stop, busy) = (stop.clone(), busy.clone());
        std::thread::spawn(move || {
            let f = std::fs::OpenOptions::new().write(true).open(&busy).unwrap();
            let mut k = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                f.write_all_at(&[k as u8; 4096], (k * 7919 % 24_000) * 4096)
                    .unwrap();
                k += 1;
                std::thread::sleep(std::time::Duration::from_micros(200));
            }
        })
    };
    std::thread::sleep(std::time::Duration::from_millis(50));
    let out = env.json(&["backup", src.to_str().unwrap(), "--name", "share"]);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    writer.join().unwrap();
    let warnings = out["warnings"].to_string();
    assert!(
        warnings.contains("busy.db: written to while being read"),
        "{out:#}"
    );
    assert!(!warnings.contains("quiet.bin"), "{out:#}");
}

/// One file put back where it belongs: into the folder it lives in (which
/// holds other files), and over the encrypted copy with --overwrite, as
/// one rename; never over a file without it.
#[test]
fn one_file_goes_back_into_its_folder_and_over_a_damaged_copy() {
    let env = Env::new("30d", &[]);
    let src = env.path("share");
    std::fs::create_dir_all(src.join("HR")).unwrap();
    std::fs::write(src.join("HR/report.docx"), text(30_000, 1)).unwrap();
    std::fs::write(src.join("HR/other.txt"), text(3_000, 2)).unwrap();
    env.backup(&src, "share", "2026-03-01T00:00:00Z");
    let hr = src.join("HR");
    std::fs::write(hr.join("report.docx"), noise(30_000, 3)).unwrap();
    let spec = "share@latest:/HR/report.docx";
    let out = env.run(&["restore", spec, "--to", hr.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("--overwrite to replace it"), "{err}");
    assert_eq!(
        std::fs::read(hr.join("report.docx")).unwrap(),
        noise(30_000, 3)
    );
    std::fs::remove_file(hr.join("other.txt")).unwrap();
    std::fs::write(hr.join("new.txt"), b"written since").unwrap();
    env.ok(&[
        "restore",
        "share@latest:/HR/other.txt",
        "--to",
        hr.to_str().unwrap(),
    ]);
    assert_eq!(std::fs::read(hr.join("other.txt")).unwrap(), text(3_000, 2));
    env.ok(&["restore", spec, "--to", hr.to_str().unwrap(), "--overwrite"]);
    assert_eq!(
        std::fs::read(hr.join("report.docx")).unwrap(),
        text(30_000, 1)
    );
    assert_eq!(std::fs::read(hr.join("new.txt")).unwrap(), b"written since");
    let names: Vec<_> = std::fs::read_dir(&hr)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 3, "nothing left beside them: {names:?}");
    // --overwrite does not empty a folder for a folder's restore.
    let out = env.run(&[
        "restore",
        "share@latest:/HR",
        "--to",
        hr.to_str().unwrap(),
        "--overwrite",
    ]);
    assert_eq!(out.status.code(), Some(1));
}

/// A folder nested as deep as paths go under the source goes deeper
/// than that under a restore's target (its name is longer): that entry
/// is left out and named, the rest of the tree is restored — not the
/// whole restore abandoned.
#[test]
fn an_entry_too_deep_for_the_target_is_left_out_and_the_rest_restored() {
    let env = Env::new("30d", &[]);
    let src = env.path("src");
    std::fs::create_dir(&src).unwrap();
    std::fs::write(src.join("f"), b"kept\n").unwrap();
    // Folders of 200-byte names down to 4090 bytes of absolute path.
    sh(
        "python3",
        &[
            "-c",
            "import os,sys\nroot=sys.argv[1]\nos.chdir(root)\nleft=4090-len(root)-len('/deep')\nwhile left>1:\n  n=min(200,left-1)\n  os.mkdir('d'*n); os.chdir('d'*n); left-=n+1\nopen('deep','w').write('x')\n",
            src.to_str().unwrap(),
        ],
    );
    env.backup(&src, "deep", "2026-03-01T00:00:00Z");
    let to = env.path("restored-tree");
    let out = env.run(&["restore", "deep@latest", "--to", to.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(err.contains("too deep for this system's paths"), "{err}");
    assert!(err.lines().all(|l| l.len() < 600), "{err}");
    assert_eq!(std::fs::read(to.join("f")).unwrap(), b"kept\n");
}
