//! Extents of ext4 files: a file's disk bytes stand for its content (scan
//! cache keys, insight's in-place comparisons) only when its runs follow
//! each other from the first block, every one written.

use cairn_guest::io::MemDisk;
use cairn_guest::{FileKind, Partition, open_fs};
use std::process::Command;
use std::sync::Arc;

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

    let part = Partition {
        number: 0,
        start: 0,
        size: bytes.len() as u64,
        scheme: "none",
        type_name: String::new(),
        label: String::new(),
        filesystem: "ext4".into(),
        readable: true,
    };
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
