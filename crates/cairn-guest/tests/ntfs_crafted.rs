//! A real NTFS image (mkntfs, ntfscp) made hostile by hand: the root
//! directory's index node names itself as its own child. The `ntfs` crate
//! follows such loops; the read budget of one listing must end it with an
//! error instead of a hang.

use cairn_guest::io::MemDisk;
use cairn_guest::{Partition, open_fs};
use std::process::Command;
use std::sync::Arc;

fn run(cmd: &str, args: &[&str]) {
    let out = Command::new(cmd).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn u16le(d: &[u8], at: usize) -> usize {
    u16::from_le_bytes([d[at], d[at + 1]]) as usize
}

fn u32le(d: &[u8], at: usize) -> usize {
    u32::from_le_bytes(d[at..at + 4].try_into().unwrap()) as usize
}

/// NTFS multi-sector records keep the last two bytes of every 512-byte
/// sector in an update sequence array: puts them back (`undo`) so the
/// record can be edited, or moves them out again.
fn fixups(record: &mut [u8], undo: bool) {
    let usa = u16le(record, 4);
    let count = u16le(record, 6);
    let usn = [record[usa], record[usa + 1]];
    for i in 1..count {
        let end = i * 512 - 2;
        let slot = usa + 2 * i;
        if undo {
            record.copy_within(slot..slot + 2, end);
        } else {
            record.copy_within(end..end + 2, slot);
            record[end..end + 2].copy_from_slice(&usn);
        }
    }
}

/// The byte offset of the root directory's first index record (VCN 0 of
/// its `$INDEX_ALLOCATION`).
fn root_index_record(img: &[u8]) -> usize {
    let sector = u16le(img, 0x0B);
    let cluster = sector * img[0x0D] as usize;
    let mft = u64::from_le_bytes(img[0x30..0x38].try_into().unwrap()) as usize * cluster;
    let record_size = match img[0x40] as i8 {
        n if n < 0 => 1usize << (-n),
        n => n as usize * cluster,
    };
    let mut rec = img[mft + 5 * record_size..mft + 6 * record_size].to_vec();
    assert_eq!(&rec[..4], b"FILE");
    fixups(&mut rec, true);
    let mut at = u16le(&rec, 0x14);
    loop {
        let kind = u32le(&rec, at);
        assert_ne!(kind, 0xFFFF_FFFF, "the root has no $INDEX_ALLOCATION");
        if kind == 0xA0 {
            assert_eq!(rec[at + 8], 1, "non-resident");
            let runs = at + u16le(&rec, at + 0x20);
            let header = rec[runs];
            let (len_size, off_size) = ((header & 0xF) as usize, (header >> 4) as usize);
            let mut lcn = [0u8; 8];
            lcn[..off_size]
                .copy_from_slice(&rec[runs + 1 + len_size..runs + 1 + len_size + off_size]);
            return u64::from_le_bytes(lcn) as usize * cluster;
        }
        at += u32le(&rec, at + 4);
    }
}

#[test]
fn an_index_node_that_is_its_own_child_ends_in_an_error_not_a_hang() {
    let dir = std::env::temp_dir().join(format!("cairn-ntfs-loop-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let img = dir.join("ntfs.img");
    let p = img.to_str().unwrap();
    std::fs::File::create(&img)
        .unwrap()
        .set_len(16 << 20)
        .unwrap();
    run("mkntfs", &["-F", "-Q", "-q", p]);
    let src = dir.join("file.txt");
    std::fs::write(&src, b"hello").unwrap();
    for i in 0..40 {
        run(
            "ntfscp",
            &["-q", p, src.to_str().unwrap(), &format!("/doc{i:03}.txt")],
        );
    }
    let mut data = std::fs::read(&img).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    let part = Partition {
        number: 0,
        start: 0,
        size: data.len() as u64,
        scheme: "none",
        type_name: String::new(),
        label: String::new(),
        filesystem: "ntfs".into(),
        readable: true,
    };
    let list = move |data: &[u8]| {
        let fs = open_fs(Arc::new(MemDisk(data.to_vec())), &part).unwrap();
        fs.read_dir(b"").map(|v| v.len())
    };
    // As made, the root lists (system files hidden, the 40 documents).
    assert!(list(&data).unwrap() >= 40);

    // The last entry of the root's first index record gains a child
    // pointer to that same record.
    let at = root_index_record(&data);
    let size = 4096.min(data.len() - at);
    let mut rec = data[at..at + size].to_vec();
    assert_eq!(&rec[..4], b"INDX");
    fixups(&mut rec, true);
    let node = 0x18;
    let used = u32le(&rec, node + 4);
    let allocated = u32le(&rec, node + 8);
    assert!(used + 8 <= allocated, "room for the child pointer");
    let mut e = node + u32le(&rec, node);
    while u32le(&rec, e + 12) & 2 == 0 {
        e += u16le(&rec, e + 8);
    }
    let len = u16le(&rec, e + 8);
    assert_eq!(e + len, node + used, "the last entry ends the node");
    rec[e + 8..e + 10].copy_from_slice(&((len + 8) as u16).to_le_bytes());
    rec[e + 12] |= 1;
    rec[e + len..e + len + 8].copy_from_slice(&0u64.to_le_bytes());
    rec[node + 4..node + 8].copy_from_slice(&((used + 8) as u32).to_le_bytes());
    rec[node + 12] |= 1;
    fixups(&mut rec, false);
    data[at..at + size].copy_from_slice(&rec);

    // Listed on its own thread: without the budget it would never return.
    let started = std::time::Instant::now();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(list(&data).map_err(|e| e.to_string()));
    });
    let got = rx
        .recv_timeout(std::time::Duration::from_secs(120))
        .expect("listing the looping index did not end");
    let err = got.unwrap_err();
    assert!(err.contains("read too much"), "{err}");
    eprintln!("refused after {:?}: {err}", started.elapsed());
}
