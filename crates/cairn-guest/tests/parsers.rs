//! Inputs that once crashed or hung a parser (found by `cargo fuzz`), kept
//! so they never do again. Each runs through every parser.

#[test]
fn fuzz_regressions_no_longer_crash() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz-regressions");
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
