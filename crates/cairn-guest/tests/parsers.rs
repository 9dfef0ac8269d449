//! Inputs that once crashed or hung a parser (found by `cargo fuzz`), kept
//! so they never do again. Each runs through every parser.

#[test]
fn fuzz_regressions_no_longer_crash() {
    // Where the runner says the package is now: the path compiled in names
    // wherever the binary was built (a shared target folder may keep one
    // built in another checkout).
    let here = std::env::var("CARGO_MANIFEST_DIR")
        .unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_string());
    let dir = std::path::Path::new(&here).join("tests/fuzz-regressions");
    let mut n = 0;
    for e in std::fs::read_dir(&dir).unwrap() {
        let p = e.unwrap().path();
        let data = std::fs::read(&p).unwrap();
        eprintln!("{}", p.display());
        cairn_guest::fuzzing::everything(&data);
        n += 1;
    }
    assert!(n > 0, "the regression inputs are in {}", dir.display());
}

#[test]
fn garbage_and_truncated_inputs_are_errors_not_panics() {
    let mut x = 0x2545F4914F6CDD1Du64;
    for len in [0usize, 1, 511, 512, 1024, 1500, 4096, 65536, 300_000] {
        let data: Vec<u8> = (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        cairn_guest::fuzzing::everything(&data);
        // Magic numbers in place, the rest noise.
        let mut d = data.clone();
        if d.len() > 2048 {
            d[1024 + 0x38] = 0x53;
            d[1024 + 0x39] = 0xEF;
            d[3..11].copy_from_slice(b"NTFS    ");
            d[510] = 0x55;
            d[511] = 0xAA;
        }
        cairn_guest::fuzzing::everything(&d);
    }
}

/// A GPT made with more entries than the 128 tools create by default
/// (`sgdisk --resize-table`) is read, up to 8,192 entries: a partition in
/// entry 1,500 is found; a crafted count past that reads no more.
#[test]
fn a_gpt_with_a_large_entry_table_is_read() {
    let dir = std::env::temp_dir().join(format!("cairn-gpt-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let img = dir.join("disk.img");
    let f = std::fs::File::create(&img).unwrap();
    f.set_len(8 << 20).unwrap();
    drop(f);
    let out = std::process::Command::new("sgdisk")
        .args([
            "--resize-table=2048",
            "-n",
            "1:2048:4095",
            "-n",
            "1500:4096:8191",
        ])
        .arg(&img)
        .output()
        .expect("sgdisk (Debian's gdisk) runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut bytes = std::fs::read(&img).unwrap();
    let pristine = bytes.clone();
    std::fs::remove_dir_all(&dir).unwrap();
    let numbers = |bytes: &[u8]| -> Vec<u32> {
        let disk: std::sync::Arc<dyn cairn_vault::BlockSource> =
            std::sync::Arc::new(cairn_guest::io::MemDisk(bytes.to_vec()));
        cairn_guest::partition::partitions(&disk)
            .unwrap()
            .iter()
            .map(|p| p.number)
            .collect()
    };
    assert_eq!(numbers(&bytes), vec![1, 1500]);
    let warnings = |bytes: &[u8]| -> String {
        let disk: std::sync::Arc<dyn cairn_vault::BlockSource> =
            std::sync::Arc::new(cairn_guest::io::MemDisk(bytes.to_vec()));
        cairn_guest::partition::table(&disk)
            .unwrap()
            .warnings
            .join("\n")
    };
    assert_eq!(warnings(&bytes), "");
    // The disk cut short (a copy stopped early): the partition past the
    // new end is left out, and said to be.
    let cut = &pristine[..3 << 20];
    assert_eq!(numbers(cut), vec![1]);
    assert!(
        warnings(cut).contains("partition 1500 ends at 4.0 MiB"),
        "{}",
        warnings(cut)
    );
    // The primary header intact but its entries overwritten (zeros, as a
    // wiper or a partial encryption leaves them): the entries' CRC32 in
    // the header says so, and the backup's are read.
    let mut wiped = pristine.clone();
    wiped[1024..1024 + 2048 * 128].fill(0);
    assert_eq!(numbers(&wiped), vec![1, 1500]);
    assert!(
        warnings(&wiped).contains("primary GPT"),
        "{}",
        warnings(&wiped)
    );
    // An entry changed (a partition moved by one sector): no longer what
    // the header's CRC covers, so the backup's entries count.
    let mut moved = pristine.clone();
    let first = 1024 + 32;
    moved[first..first + 8].copy_from_slice(&2050u64.to_le_bytes());
    let disk: std::sync::Arc<dyn cairn_vault::BlockSource> =
        std::sync::Arc::new(cairn_guest::io::MemDisk(moved));
    let parts = cairn_guest::partition::partitions(&disk).unwrap();
    assert_eq!(parts[0].start, 2048 * 512, "{parts:?}");
    // The header claims four billion entries (its CRC no longer matches,
    // and the backup's is taken; without one, the first 8,192 entries
    // would be read): the two partitions.
    bytes[512 + 80..512 + 84].copy_from_slice(&u32::MAX.to_le_bytes());
    assert_eq!(numbers(&bytes), vec![1, 1500]);
    // A primary header no reader can use (an entry size of four billion,
    // or the sector overwritten): the backup GPT at the disk's last
    // sector still gives the partitions.
    bytes[512 + 84..512 + 88].copy_from_slice(&0xFFFF_FF00u32.to_le_bytes());
    assert_eq!(numbers(&bytes), vec![1, 1500]);
    bytes[512..1024].fill(0);
    assert_eq!(numbers(&bytes), vec![1, 1500]);
    // And with the protective MBR in sector 0 wiped too.
    bytes[..512].fill(0);
    assert_eq!(numbers(&bytes), vec![1, 1500]);
}
