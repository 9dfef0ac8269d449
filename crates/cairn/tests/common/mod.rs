//! Helpers for tests that drive the real `cairn` binary against real disk
//! images made with the real tools (sgdisk, mkfs.ext4, debugfs, qemu-img).
#![allow(dead_code)]

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub const PASSWORD: &str = "correct horse battery staple";
/// The antivirus test file every scanner knows.
pub const EICAR: &[u8] = br"X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*";

pub struct Env {
    pub dir: tempfile::TempDir,
    pub vault: PathBuf,
}

impl Env {
    /// A fresh vault with the given retention (e.g. "30d", "0s") and extra
    /// init options.
    pub fn new(retention: &str, extra: &[&str]) -> Env {
        let dir = tempfile::tempdir().unwrap();
        let vault = dir.path().join("vault");
        let env = Env { dir, vault };
        let mut args = vec!["init", "--retention", retention];
        args.extend_from_slice(extra);
        env.ok(&args);
        env
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn cmd(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_cairn"));
        c.env("CAIRN_VAULT", &self.vault)
            .env("CAIRN_PASSWORD", PASSWORD)
            .env_remove("CAIRN_PASSWORD_FILE");
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd().args(args).output().unwrap()
    }

    /// Runs cairn, asserts success, returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "cairn {args:?} failed ({:?}):\n{}\n{}",
            out.status.code(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut a = args.to_vec();
        a.push("--json");
        serde_json::from_str(&self.ok(&a)).unwrap()
    }

    /// Runs cairn with `--json`, asserts it exits with `code`, returns
    /// what it printed.
    pub fn json_code(&self, args: &[&str], code: i32) -> serde_json::Value {
        let mut a = args.to_vec();
        a.push("--json");
        let out = self.run(&a);
        assert_eq!(
            out.status.code(),
            Some(code),
            "cairn {a:?}:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    pub fn backup(&self, source: &Path, name: &str, time: &str) -> serde_json::Value {
        self.json(&[
            "backup",
            source.to_str().unwrap(),
            "--name",
            name,
            "--time",
            time,
        ])
    }
}

/// `rel` below this package's folder, as the test runner says it is now
/// (the path compiled in names wherever the binary was built, which a
/// shared target folder may have kept from another checkout).
pub fn in_package(rel: &str) -> String {
    let dir = std::env::var("CARGO_MANIFEST_DIR")
        .unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_string());
    format!("{dir}/{rel}")
}

/// Runs a tool and asserts it succeeded.
pub fn sh(prog: &str, args: &[&str]) -> String {
    let out = Command::new(prog).args(args).output().unwrap_or_else(|e| {
        panic!("cannot run {prog} (is it installed? .ci/run installs it): {e}")
    });
    assert!(
        out.status.success(),
        "{prog} {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// What `qemu-img compare` says of an NBD export and an image file.
pub fn nbd_equals(url: &str, img: &Path) -> bool {
    sh(
        "qemu-img",
        &[
            "compare",
            "-f",
            "raw",
            "-F",
            "raw",
            url,
            img.to_str().unwrap(),
        ],
    )
    .contains("identical")
}

/// Deterministic pseudo-random bytes (xorshift), incompressible.
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Text-like, compressible bytes.
pub fn text(len: usize, seed: u64) -> Vec<u8> {
    let words = [
        "invoice",
        "customer",
        "total",
        "the",
        "quarterly",
        "report",
        "server",
        "backup",
        "ledger",
        "2026",
    ];
    let n = noise(len / 4 + 1, seed);
    let mut out = Vec::with_capacity(len + 16);
    let mut i = 0;
    while out.len() < len {
        out.extend_from_slice(words[n[i % n.len()] as usize % words.len()].as_bytes());
        out.push(if i % 12 == 11 { b'\n' } else { b' ' });
        i += 1;
    }
    out.truncate(len);
    out
}

/// Fills a directory with a small "guest" tree: documents, code, media.
pub fn populate(root: &Path) {
    std::fs::create_dir_all(root.join("home/alice/docs")).unwrap();
    std::fs::create_dir_all(root.join("home/alice/media")).unwrap();
    std::fs::create_dir_all(root.join("srv/app/src")).unwrap();
    std::fs::create_dir_all(root.join("etc")).unwrap();
    for i in 0..20 {
        std::fs::write(
            root.join(format!("home/alice/docs/report-{i}.txt")),
            text(20_000 + i * 3000, i as u64),
        )
        .unwrap();
    }
    for i in 0..10 {
        std::fs::write(
            root.join(format!("srv/app/src/mod{i}.rs")),
            text(8_000, 100 + i as u64),
        )
        .unwrap();
    }
    std::fs::write(root.join("home/alice/media/video.mp4"), noise(3 << 20, 7)).unwrap();
    std::fs::write(root.join("etc/hostname"), "guest\n").unwrap();
}

/// A GPT disk of `size_mib` with one ext4 partition (from 1 MiB, 4 KiB
/// blocks) built from `content` with `mkfs.ext4 -d`, without root or
/// mounting.
pub fn gpt_ext4_image(path: &Path, content: &Path, size_mib: u64) {
    sh(
        "truncate",
        &["-s", &format!("{size_mib}M"), path.to_str().unwrap()],
    );
    sh(
        "sgdisk",
        &["-n", "1:2048:0", "-t", "1:8300", path.to_str().unwrap()],
    );
    assert!(
        sh("sgdisk", &["-p", path.to_str().unwrap()]).contains("8300"),
        "sgdisk made no partition"
    );
    ext4_at(path, content, 1 << 20, size_mib - 2);
}

/// An ext4 of `size_mib` (4 KiB blocks) made from `content` with
/// `mkfs.ext4 -d`, at byte `offset` of the disk image `path`.
pub fn ext4_at(path: &Path, content: &Path, offset: u64, size_mib: u64) {
    sh(
        "mkfs.ext4",
        &[
            "-q",
            "-F",
            "-b",
            "4096",
            "-d",
            content.to_str().unwrap(),
            "-E",
            &format!("offset={offset}"),
            path.to_str().unwrap(),
            &format!("{size_mib}M"),
        ],
    );
}

/// Runs a debugfs write command on the ext4 partition of a gpt_ext4_image.
pub fn debugfs_w(image: &Path, cmd: &str) {
    sh(
        "debugfs",
        &[
            "-w",
            "-R",
            cmd,
            &format!("{}?offset=1048576", image.display()),
        ],
    );
}

/// Overwrites bytes in place (like a guest writing to its disk).
/// A 28 MiB GPT disk at `disk` with one 24 MiB NTFS partition (from
/// 1 MiB) made with mkntfs and filled with ntfscp, without mounting:
/// `files` as (path in the volume, bytes).
pub fn ntfs_disk(disk: &Path, files: &[(String, Vec<u8>)]) {
    let part = disk.with_extension("ntfs-part");
    ntfs_volume(&part, "24M");
    for (name, data) in files {
        ntfs_put(&part, name, data, None);
    }
    sh("truncate", &["-s", "28M", disk.to_str().unwrap()]);
    sh(
        "sgdisk",
        &["-n", "1:2048:+24M", "-t", "1:0700", disk.to_str().unwrap()],
    );
    write_at(disk, 1 << 20, &std::fs::read(&part).unwrap());
    std::fs::remove_file(&part).unwrap();
}

/// An empty NTFS volume of `size` (`16M`) in the file `vol` (mkntfs).
pub fn ntfs_volume(vol: &Path, size: &str) {
    let v = vol.to_str().unwrap();
    sh("truncate", &["-s", size, v]);
    sh("mkntfs", &["-F", "-Q", "-q", v]);
}

/// Puts `data` at `name` in the NTFS volume `vol` with ntfscp (no
/// mount), as its named data stream `stream` when one is given.
pub fn ntfs_put(vol: &Path, name: &str, data: &[u8], stream: Option<&str>) {
    let local = vol.with_extension("ntfs-upload");
    std::fs::write(&local, data).unwrap();
    let mut args = vec!["-q"];
    if let Some(s) = stream {
        args.extend(["-N", s]);
    }
    args.extend([vol.to_str().unwrap(), local.to_str().unwrap(), name]);
    sh("ntfscp", &args);
    std::fs::remove_file(&local).unwrap();
}

pub fn write_at(path: &Path, offset: u64, data: &[u8]) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(data, offset).unwrap();
}

pub fn allocated(path: &Path) -> u64 {
    std::fs::metadata(path).unwrap().blocks() * 512
}

/// A long-running cairn (export, serve) stopped when the test ends, with
/// the URL it printed first.
pub struct Running {
    pub child: std::process::Child,
    pub url: String,
}

impl Running {
    pub fn start(cmd: &mut Command) -> Running {
        let (child, url) = spawn_ready(cmd);
        Running { child, url }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Four ordinary days of a guest disk made by `populate` (a report
/// rewritten each day, backed up as "vm"), then an attack that encrypts
/// five reports in place (not backed up yet).
pub fn four_days_then_encryption(env: &Env, disk: &Path) {
    four_days_then_encryption_by(disk, |d| {
        env.backup(disk, "vm", &format!("2026-04-{:02}T02:00:00Z", d + 1));
    });
}

/// [`four_days_then_encryption`], each day backed up by `backup(day)`
/// (through a server, say).
pub fn four_days_then_encryption_by(disk: &Path, mut backup: impl FnMut(u32)) {
    for d in 0..4u32 {
        if d > 0 {
            let path = format!("home/alice/docs/report-{d}.txt");
            replace_guest_file(disk, &path, &text(21_000, 500 + d as u64));
        }
        backup(d);
    }
    for i in 10..15 {
        let path = format!("home/alice/docs/report-{i}.txt");
        overwrite_file_in_place(disk, &path, &noise(20_000 + i * 3000, 9_000 + i as u64));
    }
}

/// Starts a long-running command (export, mount) and returns it with the
/// first line it prints, which it prints once it is ready.
pub fn spawn_ready(cmd: &mut Command) -> (std::process::Child, String) {
    use std::io::BufRead;
    let mut child = cmd.stdout(std::process::Stdio::piped()).spawn().unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    (child, line.trim().to_string())
}

pub fn same_bytes(a: &Path, b: &Path) -> bool {
    Command::new("cmp").args([a, b]).status().unwrap().success()
}

/// The 4 KiB blocks of a file in the ext4 partition of a gpt_ext4_image,
/// as byte offsets in the image (debugfs `blocks`).
pub fn file_offsets(image: &Path, path: &str) -> Vec<u64> {
    sh(
        "debugfs",
        &[
            "-R",
            &format!("blocks {path}"),
            &format!("{}?offset=1048576", image.display()),
        ],
    )
    .split_whitespace()
    .filter_map(|b| b.parse::<u64>().ok())
    .map(|b| 1_048_576 + b * 4096)
    .collect()
}

/// Rewrites a file where it lies on the disk (same inode, size, mtime),
/// the way in-place encryption does.
pub fn overwrite_file_in_place(image: &Path, path: &str, data: &[u8]) {
    for (i, off) in file_offsets(image, path).into_iter().enumerate() {
        let piece = &data[(i * 4096).min(data.len())..((i + 1) * 4096).min(data.len())];
        if piece.is_empty() {
            break;
        }
        write_at(image, off, piece);
    }
}

/// Replaces a file inside the ext4 partition of a gpt_ext4_image with new
/// content (a new inode, as an editor's save does).
/// Writes a new file at `guest_path` (quoted for debugfs when it holds
/// spaces) in the ext4 image.
pub fn write_guest_file(image: &Path, guest_path: &str, content: &[u8]) {
    let local = image.with_extension("upload");
    std::fs::write(&local, content).unwrap();
    debugfs_w(image, &format!("write {} {guest_path}", local.display()));
    std::fs::remove_file(&local).unwrap();
}

pub fn replace_guest_file(image: &Path, guest_path: &str, content: &[u8]) {
    let local = image.with_extension("upload");
    std::fs::write(&local, content).unwrap();
    debugfs_w(image, &format!("rm {guest_path}"));
    debugfs_w(image, &format!("write {} {guest_path}", local.display()));
    std::fs::remove_file(&local).unwrap();
}

/// Builds the binary RPMs of `spec` (its text) with Debian's rpmbuild in
/// `top`; they land in `top/RPMS/noarch`.
pub fn rpmbuild(top: &Path, spec: &str) {
    std::fs::create_dir_all(top.join("SPECS")).unwrap();
    let file = top.join("SPECS/package.spec");
    std::fs::write(&file, spec).unwrap();
    sh(
        "rpmbuild",
        &[
            "--define",
            &format!("_topdir {}", top.display()),
            "-bb",
            file.to_str().unwrap(),
        ],
    );
}

/// Flips one byte in the middle of the vault's largest pack (made
/// writable first: vault objects are read-only) and returns its path.
#[allow(dead_code)]
pub fn flip_byte_in_largest_pack(vault: &Path) -> PathBuf {
    let mut packs = Vec::new();
    for d in std::fs::read_dir(vault.join("packs")).unwrap() {
        for f in std::fs::read_dir(d.unwrap().path()).unwrap() {
            packs.push(f.unwrap().path());
        }
    }
    let target = packs
        .into_iter()
        .max_by_key(|p| std::fs::metadata(p).unwrap().len())
        .unwrap();
    let mut data = std::fs::read(&target).unwrap();
    let mid = data.len() / 2;
    data[mid] ^= 1;
    std::fs::set_permissions(&target, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    std::fs::write(&target, &data).unwrap();
    target
}

/// A tmpfs mounted for as long as it lives (see [`small_tmpfs`]).
pub struct Mounted(PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// A tmpfs of `size` (e.g. "5m") mounted at `at`, made here: a small disk
/// to fill. None, said, where mounting is not allowed (it needs root).
pub fn small_tmpfs(at: &Path, size: &str) -> Option<Mounted> {
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIP: needs root to mount a small tmpfs");
        return None;
    }
    std::fs::create_dir_all(at).unwrap();
    sh(
        "mount",
        &[
            "-t",
            "tmpfs",
            "-o",
            &format!("size={size}"),
            "tmpfs",
            at.to_str().unwrap(),
        ],
    );
    Some(Mounted(at.to_path_buf()))
}
