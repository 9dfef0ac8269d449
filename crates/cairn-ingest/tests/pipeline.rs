//! The ingest pipeline and the BlockSource it feeds, driven as a library.

use cairn_ingest::{BackupOptions, Progress, backup};
use cairn_vault::{BlockSource, InitOptions, SnapshotDisk, Vault};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::sync::atomic::Ordering;

fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn vault(dir: &std::path::Path) -> Arc<Vault> {
    Arc::new(Vault::init(&dir.join("vault"), b"pw", &InitOptions::default()).unwrap())
}

/// Backs up the image at `img` as source "d".
fn backup_as_d(v: &Arc<Vault>, img: &std::path::Path) -> cairn_vault::Snapshot {
    backup(
        v,
        img,
        &BackupOptions {
            name: "d".into(),
            ..Default::default()
        },
        &Progress::default(),
    )
    .unwrap()
    .snapshot
}

#[test]
fn a_source_that_grows_during_backup_is_refused_and_no_snapshot_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let v = vault(dir.path());
    let img = dir.path().join("live.img");
    std::fs::write(&img, noise(96 << 20, 1)).unwrap();
    let progress = Arc::new(Progress::default());
    let (p, path) = (progress.clone(), img.clone());
    let writer = std::thread::spawn(move || {
        while p.done.load(Ordering::Relaxed) == 0 {
            std::thread::yield_now();
        }
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        f.write_all(&[1u8; 4096]).unwrap();
    });
    let opts = BackupOptions {
        name: "live".into(),
        ..Default::default()
    };
    let err = backup(&v, &img, &opts, &progress)
        .err()
        .expect("the backup must fail");
    writer.join().unwrap();
    assert!(
        err.to_string().contains("changed size during the backup"),
        "{err}"
    );
    assert!(v.snapshots().unwrap().0.is_empty());
}

#[test]
fn block_source_reads_any_range_and_reports_holes() {
    let dir = tempfile::tempdir().unwrap();
    let v = vault(dir.path());
    let img = dir.path().join("d.img");
    let f = std::fs::File::create(&img).unwrap();
    f.set_len(10 << 20).unwrap();
    f.write_all_at(&noise(1 << 20, 2), 0).unwrap();
    f.write_all_at(&noise(300_000, 3), 6 << 20).unwrap();
    // Text too, whose chunks are compressed block by block.
    let text: Vec<u8> = (0..700_000u32)
        .map(|i| b"the quick brown fox "[(i % 20) as usize] ^ (i / 5000) as u8)
        .collect();
    f.write_all_at(&text, 3 << 20).unwrap();
    drop(f);
    let snap = backup_as_d(&v, &img);
    let disk = SnapshotDisk::open(v.clone(), &snap, 4).unwrap();
    let want = std::fs::read(&img).unwrap();
    assert_eq!(disk.size(), want.len() as u64);
    let mut seed = 7u64;
    for round in 0..400 {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        // Every other read small, every fourth in the text.
        let off = match round % 4 {
            0 => (3 << 20) + (seed >> 20) % 700_000,
            _ => (seed >> 20) % (want.len() as u64),
        };
        let len = match round % 2 {
            0 => (seed >> 8) % 9_000,
            _ => (seed >> 8) % 700_000,
        } as usize;
        let mut buf = vec![0xAAu8; len];
        let n = disk.read_at(off, &mut buf).unwrap();
        let end = (off as usize + len).min(want.len());
        assert_eq!(n, end - off as usize);
        assert_eq!(&buf[..n], &want[off as usize..end], "at {off}+{len}");
    }
    let mut past = [0u8; 10];
    assert_eq!(disk.read_at(20 << 20, &mut past).unwrap(), 0);
    // Data at 0..1 MiB and in the whole chunks around 3 and 6 MiB; the
    // rest are holes.
    let cs = v.config().disk_chunk_size as u64;
    let ext = disk.extents(0, disk.size());
    let data: Vec<(u64, u64)> = ext
        .iter()
        .filter(|e| !e.zero)
        .map(|e| (e.offset, e.len))
        .collect();
    assert_eq!(
        data,
        vec![
            (0, 1 << 20),
            (3 << 20, 700_000u64.div_ceil(cs) * cs),
            (6 << 20, 300_000u64.div_ceil(cs) * cs)
        ],
        "{ext:?}"
    );
    assert_eq!(ext.iter().map(|e| e.len).sum::<u64>(), 10 << 20);
}

/// Read-ahead is for streams. Small reads that merely touch (threads
/// comparing neighbouring small files) decode only their own chunk; a
/// reader that has gone through a whole chunk in order gets the next ones
/// decoded ahead.
#[test]
fn block_source_reads_ahead_for_streams_only() {
    let dir = tempfile::tempdir().unwrap();
    let v = vault(dir.path());
    let img = dir.path().join("d.img");
    std::fs::write(&img, noise(8 << 20, 5)).unwrap();
    let snap = backup_as_d(&v, &img);
    let cs = v.config().disk_chunk_size as u64;
    let want = std::fs::read(&img).unwrap();
    let mut buf = vec![0u8; 4096];

    // Two 4 KiB reads, the second where the first ended: one block.
    let disk = SnapshotDisk::open(v.clone(), &snap, 64).unwrap();
    disk.read_exact_at(0, &mut buf).unwrap();
    disk.read_exact_at(4096, &mut buf).unwrap();
    assert_eq!(&buf[..], &want[4096..8192]);
    assert_eq!(disk.decoded_blocks(), 1);

    // 4 KiB reads in order through more than a chunk: the stream's next
    // chunks are decoded before it asks for them.
    let disk = SnapshotDisk::open(v.clone(), &snap, 64).unwrap();
    let mut pos = 0;
    while pos <= cs {
        disk.read_exact_at(pos, &mut buf).unwrap();
        assert_eq!(&buf[..], &want[pos as usize..pos as usize + 4096]);
        pos += 4096;
    }
    assert!(disk.decoded_blocks() > 2, "{}", disk.decoded_blocks());

    // One read longer than a chunk, on its own (a scan's window around
    // changed blocks): only the blocks it covers, nothing ahead.
    let disk = SnapshotDisk::open(v.clone(), &snap, 64).unwrap();
    let block = cairn_vault::BLOCK_SIZE as u64;
    let (at, len) = (3 * cs + block - 1000, cs + 2000);
    let mut window = vec![0u8; len as usize];
    disk.read_exact_at(at, &mut window).unwrap();
    assert_eq!(&window[..], &want[at as usize..(at + len) as usize]);
    let covered = (at + len).div_ceil(block) - at / block;
    assert_eq!(disk.decoded_blocks(), covered);
}

/// Disk chunks are compressed block by block: a small read decodes only
/// the 64 KiB block it lies in, and the bytes are the disk's.
#[test]
fn a_small_read_decodes_one_block_of_a_chunk() {
    let dir = tempfile::tempdir().unwrap();
    let v = vault(dir.path());
    let img = dir.path().join("d.img");
    let text: Vec<u8> = (0..4u32 << 20)
        .map(|i| b"lorem ipsum dolor sit amet "[(i % 27) as usize] ^ (i / 9000) as u8)
        .collect();
    std::fs::write(&img, &text).unwrap();
    let snap = backup_as_d(&v, &img);
    assert!(snap.metrics.compression_ratio > 2.0);
    let disk = SnapshotDisk::open(v.clone(), &snap, 8).unwrap();
    let block = cairn_vault::BLOCK_SIZE as u64;
    let mut buf = vec![0u8; 4096];
    disk.read_exact_at(block + 100, &mut buf).unwrap();
    assert_eq!(&buf[..], &text[block as usize + 100..block as usize + 4196]);
    assert_eq!(disk.decoded_blocks(), 1);
    disk.read_exact_at(200, &mut buf).unwrap();
    assert_eq!(&buf[..], &text[200..4296]);
    assert_eq!(disk.decoded_blocks(), 2);
    // Both blocks of the first chunk are known now: read again from memory.
    let mut whole = vec![0u8; 2 * block as usize];
    disk.read_exact_at(0, &mut whole).unwrap();
    assert_eq!(&whole[..], &text[..2 * block as usize]);
    assert_eq!(disk.decoded_blocks(), 2);
}

/// A backup whose vault handle was opened before a prune deleted packs
/// must not reuse the chunks those packs held (it waits for the lock, so
/// the prune runs first): its snapshot would restore with holes.
#[test]
fn a_backup_opened_before_a_prune_does_not_reuse_pruned_chunks() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("vault");
    let opts = InitOptions {
        retention_secs: 0,
        ..Default::default()
    };
    let v = Arc::new(Vault::init(&root, b"pw", &opts).unwrap());
    let (one, two) = (dir.path().join("one.img"), dir.path().join("two.img"));
    std::fs::write(&one, noise(1 << 20, 7)).unwrap();
    std::fs::write(&two, noise(1 << 20, 8)).unwrap();
    backup_as_d(&v, &one);
    backup_as_d(&v, &two);
    // Opened now: its index lists the packs of the first snapshot.
    let early = Arc::new(Vault::open(&root, b"pw").unwrap());
    let keep = cairn_vault::prune::KeepPolicy {
        last: Some(1),
        ..Default::default()
    };
    cairn_vault::prune::forget(&v, &["d".into()], &keep, false).unwrap();
    let pruned = cairn_vault::prune::prune(&v, false).unwrap();
    assert!(pruned.packs_deleted > 0, "{pruned:?}");
    let again = backup(
        &early,
        &one,
        &BackupOptions {
            name: "e".into(),
            ..Default::default()
        },
        &Progress::default(),
    )
    .unwrap()
    .snapshot;
    // Progress counts the bytes of packs read, up to all of them.
    let seen = std::sync::Mutex::new((0u64, 0u64));
    let report = cairn_vault::verify::verify(&Vault::open(&root, b"pw").unwrap(), true, &|d, t| {
        let mut s = seen.lock().unwrap();
        *s = (s.0.max(d), t);
    })
    .unwrap();
    assert!(report.ok(), "{report:?}");
    let pack_bytes: u64 = walk_files(&root.join("packs"))
        .iter()
        .map(|p| std::fs::metadata(p).unwrap().len())
        .sum();
    assert_eq!(*seen.lock().unwrap(), (pack_bytes, pack_bytes));
    let disk = SnapshotDisk::open(early.clone(), &again, 2).unwrap();
    let mut back = vec![0u8; 1 << 20];
    disk.read_at(0, &mut back).unwrap();
    assert_eq!(back, std::fs::read(&one).unwrap());
}

/// Every file below `dir`.
fn walk_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk_files(&p));
        } else {
            out.push(p);
        }
    }
    out
}
