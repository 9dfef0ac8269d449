//! Extents of ext4 files: a file's disk bytes stand for its content (scan
//! cache keys, insight's in-place comparisons) only when its runs follow
//! each other from the first block, every one written.

use cairn_guest::io::MemDisk;
use cairn_guest::{FileKind, Partition, open_fs};
use std::process::Command;
use std::sync::Arc;

/// An ext4 filesystem that fills the whole image (no partition table).
fn whole_disk(size: u64) -> Partition {
    Partition {
        number: 0,
        start: 0,
        size,
        scheme: "none",
        type_name: String::new(),
        label: String::new(),
        filesystem: "ext4".into(),
        readable: true,
    }
}

/// Runs a tool that must succeed; its standard output.
fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// An empty 16 MiB ext4 image with inline data at `img`.
fn inline_data_fs(img: &str) {
    run(
        "mkfs.ext4",
        &[
            "-q",
            "-F",
            "-b",
            "4096",
            "-I",
            "256",
            "-O",
            "inline_data",
            img,
            "16M",
        ],
    );
}

#[test]
fn a_file_with_a_hole_has_no_extents_and_a_whole_file_has_its_bytes() {
    let dir = std::env::temp_dir().join(format!("cairn-ext4-extents-{}", std::process::id()));
    let root = dir.join("root");
    std::fs::create_dir_all(&root).unwrap();
    let plain: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(root.join("plain.bin"), &plain).unwrap();
    // 8 KiB, a hole up to 1 MiB, 8 KiB: mke2fs -d keeps the hole.
    let mut sparse = std::fs::File::create(root.join("sparse.bin")).unwrap();
    use std::io::{Seek, SeekFrom, Write};
    sparse.write_all(&[b'A'; 8192]).unwrap();
    sparse.seek(SeekFrom::Start(1 << 20)).unwrap();
    sparse.write_all(&[b'B'; 8192]).unwrap();
    drop(sparse);
    let img = dir.join("fs.img");
    let ok = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-b", "4096", "-d"])
        .arg(&root)
        .arg(&img)
        .arg("16M")
        .status()
        .unwrap()
        .success();
    assert!(ok, "mkfs.ext4 failed");
    let bytes = std::fs::read(&img).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();

    let part = whole_disk(bytes.len() as u64);
    let fs = open_fs(Arc::new(MemDisk(bytes.clone())), &part).unwrap();
    let entries = fs.walk().unwrap();
    let get = |name: &str| {
        entries
            .iter()
            .find(|e| e.display_path() == name && e.kind == FileKind::File)
            .unwrap_or_else(|| {
                let paths: Vec<String> = entries.iter().map(|e| e.display_path()).collect();
                panic!("{name} not among {paths:?}")
            })
    };

    let p = get("/plain.bin");
    let extents = p.extents.as_ref().expect("a whole file has extents");
    let mut from_disk = Vec::new();
    for &(off, len) in extents {
        from_disk.extend_from_slice(&bytes[off as usize..(off + len) as usize]);
    }
    from_disk.truncate(p.size as usize);
    assert_eq!(from_disk, plain);

    let s = get("/sparse.bin");
    assert_eq!(s.size, (1 << 20) + 8192);
    assert_eq!(s.extents, None, "the hole would be read as disk bytes");
    // The reader itself still sees the hole as zeros.
    let mut buf = vec![1u8; 4096];
    fs.read_at(s, 500_000, &mut buf).unwrap();
    assert!(buf.iter().all(|&b| b == 0));
}

/// Inline data: small files live in the inode, the first 60 bytes in
/// `i_block` and the rest in the inode's `system.data` attribute; both
/// parts are read (a scanner that could not read them would pass a planted
/// EICAR file or web shell unseen). `debugfs write` makes inline files of
/// a few bytes only, so the longer one gets its tail and size by hand, as
/// the kernel would have written them.
#[test]
fn inline_files_are_read_whole() {
    let dir = std::env::temp_dir().join(format!("cairn-ext4-inline-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let img = dir.join("fs.img");
    let img_s = img.to_str().unwrap();
    inline_data_fs(img_s);
    std::fs::write(dir.join("short"), b"short\n").unwrap();
    std::fs::write(dir.join("long"), b"x\n").unwrap();
    let tail = b"TAIL-0123456789-abcdefghij-0123456789ZZ";
    std::fs::write(dir.join("tail"), tail).unwrap();
    for name in ["short", "long"] {
        let local = dir.join(name);
        run(
            "debugfs",
            &[
                "-w",
                "-R",
                &format!("write {} {name}", local.display()),
                img_s,
            ],
        );
    }
    let tail_file = dir.join("tail");
    run(
        "debugfs",
        &[
            "-w",
            "-R",
            &format!("ea_set -f {} /long system.data", tail_file.display()),
            img_s,
        ],
    );
    run("debugfs", &["-w", "-R", "sif /long size 99", img_s]);
    let bytes = std::fs::read(&img).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    let part = whole_disk(bytes.len() as u64);
    let fs = open_fs(Arc::new(MemDisk(bytes)), &part).unwrap();
    let entries = fs.walk().unwrap();
    let read = |name: &str| {
        let e = entries
            .iter()
            .find(|e| e.display_path() == name)
            .unwrap_or_else(|| panic!("{name} not listed"));
        let mut got = vec![0u8; e.size as usize];
        let n = fs.read_at(e, 0, &mut got).unwrap();
        got.truncate(n);
        got
    };
    assert_eq!(read("/short"), b"short\n");
    let mut want = b"x\n".to_vec();
    want.resize(60, 0);
    want.extend_from_slice(tail);
    assert_eq!(read("/long"), want);
}

/// An inline directory continues in its `system.data` attribute once its
/// 56 bytes in the inode are full (the kernel grows it there before it
/// moves it to a block): the entries there are listed too, or a file
/// dropped into a small folder would escape every scan and diff.
/// `debugfs` moves a full inline folder straight to a block, so the
/// attribute's entry and the folder's size are set by hand, as the kernel
/// writes them.
#[test]
fn an_inline_directory_lists_the_entries_in_its_attribute() {
    let dir = std::env::temp_dir().join(format!("cairn-ext4-inline-dir-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let img = dir.join("fs.img");
    let img_s = img.to_str().unwrap().to_string();
    inline_data_fs(&img_s);
    std::fs::write(dir.join("small"), b"hi\n").unwrap();
    let hidden = b"planted in the attribute\n";
    std::fs::write(dir.join("hidden"), hidden).unwrap();
    let mut cmds = String::from("mkdir d\n");
    for i in 1..=3 {
        cmds += &format!("write {} d/file{i}\n", dir.join("small").display());
    }
    cmds += &format!("write {} extra\n", dir.join("hidden").display());
    std::fs::write(dir.join("cmds"), cmds).unwrap();
    run(
        "debugfs",
        &["-w", "-f", dir.join("cmds").to_str().unwrap(), &img_s],
    );
    let stat = run("debugfs", &["-R", "stat d", &img_s]);
    assert!(stat.contains("Size: 60"), "d is not inline: {stat}");
    let ino: u32 = run("debugfs", &["-R", "stat extra", &img_s])
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("the inode of extra");
    // One directory entry filling the attribute: inode, rec_len, name
    // length, type (1: regular file), name.
    let name = b"tailfile";
    let mut entry = ino.to_le_bytes().to_vec();
    entry.extend_from_slice(&16u16.to_le_bytes());
    entry.extend_from_slice(&[name.len() as u8, 1]);
    entry.extend_from_slice(name);
    std::fs::write(dir.join("entry"), &entry).unwrap();
    let entry_path = dir.join("entry");
    run(
        "debugfs",
        &[
            "-w",
            "-R",
            &format!("ea_set -f {} d system.data", entry_path.display()),
            &img_s,
        ],
    );
    run("debugfs", &["-w", "-R", "sif d size 76", &img_s]);
    let bytes = std::fs::read(&img).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();

    let part = whole_disk(bytes.len() as u64);
    let fs = open_fs(Arc::new(MemDisk(bytes)), &part).unwrap();
    let entries = fs.walk().unwrap();
    let paths: Vec<String> = entries.iter().map(|e| e.display_path()).collect();
    for p in ["/d/file1", "/d/file2", "/d/file3"] {
        assert!(paths.contains(&p.to_string()), "{p} not among {paths:?}");
    }
    let e = entries
        .iter()
        .find(|e| e.display_path() == "/d/tailfile")
        .unwrap_or_else(|| panic!("/d/tailfile not among {paths:?}"));
    assert_eq!(e.kind, FileKind::File);
    let mut got = vec![0u8; e.size as usize];
    let n = fs.read_at(e, 0, &mut got).unwrap();
    assert_eq!(&got[..n], hidden);
}
