//! The isolated recovery environment: a snapshot booted by QEMU straight
//! from the vault, with Debian's cloud kernel and a tiny busybox initramfs
//! (`scripts/boot-assets`) that prints a marker file of the guest disk.

mod common;
use common::*;

#[test]
fn a_snapshot_boots_in_isolation_and_the_console_decides() {
    let assets = sh(
        concat!(env!("CARGO_MANIFEST_DIR"), "/../../scripts/boot-assets"),
        &[],
    );
    let mut it = assets.split_whitespace();
    let (kernel, initrd) = (
        it.next().unwrap().to_string(),
        it.next().unwrap().to_string(),
    );

    let env = Env::new("30d", &[]);
    let content = env.path("content");
    std::fs::create_dir_all(&content).unwrap();
    std::fs::write(content.join("MARKER"), "recovered-point-42\n").unwrap();
    let img = env.path("vm.img");
    gpt_ext4_image(&img, &content, 32);
    env.backup(&img, "vm", "2026-03-01T00:00:00Z");

    let log = env.path("console.log");
    let ok = env.json(&[
        "boot",
        "vm@latest",
        "--kernel",
        &kernel,
        "--initrd",
        &initrd,
        "--expect",
        "CAIRN-MARKER: recovered-point-42",
        "--timeout",
        "120",
        "--log",
        log.to_str().unwrap(),
    ]);
    assert_eq!(ok["result"], "booted", "{ok}");
    let console = std::fs::read_to_string(&log).unwrap();
    let net = console
        .lines()
        .find(|l| l.starts_with("CAIRN-NET:"))
        .expect("the guest listed its network devices");
    assert_eq!(
        net.trim(),
        "CAIRN-NET: lo",
        "--network none: no network device in the guest"
    );

    // A point whose console never shows the pattern fails, with exit 3.
    let bad = env.run(&[
        "boot",
        "vm@latest",
        "--kernel",
        &kernel,
        "--initrd",
        &initrd,
        "--expect",
        "this never appears",
        "--timeout",
        "120",
    ]);
    assert_eq!(
        bad.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&bad.stdout)
    );
    assert!(String::from_utf8_lossy(&bad.stdout).contains("failed"));
    // Restricted networking: no route out, but a forwarded guest port that
    // answers is a good boot.
    let log2 = env.path("console2.log");
    let served = env.json(&[
        "boot",
        "vm@latest",
        "--kernel",
        &kernel,
        "--initrd",
        &initrd,
        "--append",
        "console=ttyS0 cairn.serve=8080",
        "--network",
        "restricted",
        "--probe",
        "8080",
        "--timeout",
        "120",
        "--log",
        log2.to_str().unwrap(),
    ]);
    assert_eq!(served["result"], "booted", "{served}");
    assert!(served["reason"].as_str().unwrap().contains("8080"));
    assert!(
        std::fs::read_to_string(&log2)
            .unwrap()
            .contains("CAIRN-SERVING: 8080")
    );
    assert_eq!(
        env.run(&["verify", "--read-data"]).status.code(),
        Some(0),
        "booting never writes to the vault"
    );
}
