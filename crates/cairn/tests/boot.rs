//! The isolated recovery environment: a snapshot booted by QEMU straight
//! from the vault, with Debian's cloud kernel and a tiny busybox initramfs
//! (`scripts/boot-assets`) that prints a marker file of the guest disk.

mod common;
use common::*;

/// The kernel and initramfs `scripts/boot-assets` builds (cached).
fn boot_assets() -> (String, String) {
    let assets = sh(&in_package("../../scripts/boot-assets"), &[]);
    let mut it = assets.split_whitespace();
    (
        it.next().unwrap().to_string(),
        it.next().unwrap().to_string(),
    )
}

#[test]
fn a_snapshot_boots_in_isolation_and_the_console_decides() {
    let (kernel, initrd) = boot_assets();

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
    // What it waited for was said when it started (it prints nothing
    // else until the timeout).
    let said = String::from_utf8_lossy(&bad.stderr);
    assert!(
        said.contains("waiting up to 120 s for \"this never appears\" on the console"),
        "{said}"
    );
    // The console log of a failed boot is kept in a file of its own.
    let said = String::from_utf8_lossy(&bad.stdout);
    let kept = said.split("console: ").nth(1).unwrap().trim();
    assert!(
        std::fs::read_to_string(kept)
            .unwrap()
            .contains("CAIRN-MARKER")
    );
    std::fs::remove_file(kept).unwrap();

    // Options QEMU cannot use are errors (exit 1), never a failed or a
    // good boot: QEMU's own messages are not the guest's console, so
    // "could not open" cannot pass for it.
    for (flag, value) in [
        ("--kernel", "/nonexistent"),
        ("--memory", "lots"),
        ("--memory", "900000G"),
    ] {
        let mut args = vec!["boot", "vm@latest", "--initrd", &initrd, flag, value];
        if flag != "--kernel" {
            args.extend(["--kernel", &kernel]);
        }
        args.extend(["--expect", "could not", "--timeout", "60"]);
        let out = env.run(&args);
        assert_eq!(
            out.status.code(),
            Some(1),
            "{flag} {value}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
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

/// `recover --find-clean --boot-check`: a point that passes every scan but
/// does not boot is stepped over.
#[test]
fn find_clean_with_a_boot_check_steps_over_a_point_that_does_not_boot() {
    let (kernel, initrd) = boot_assets();
    let env = Env::new("30d", &[]);
    let content = env.path("content");
    std::fs::create_dir_all(&content).unwrap();
    std::fs::write(content.join("MARKER"), "healthy\n").unwrap();
    let img = env.path("vm.img");
    gpt_ext4_image(&img, &content, 32);
    let a = env.backup(&img, "vm", "2026-03-01T00:00:00Z");
    replace_guest_file(&img, "/MARKER", b"healthy\n");
    let b = env.backup(&img, "vm", "2026-03-02T00:00:00Z");
    // The last point's service is broken: scans see nothing wrong.
    replace_guest_file(&img, "/MARKER", b"service failed to start\n");
    let c = env.backup(&img, "vm", "2026-03-03T00:00:00Z");
    let out = env.run(&[
        "recover",
        "vm",
        "--find-clean",
        "--boot-check",
        "--kernel",
        &kernel,
        "--initrd",
        &initrd,
        "--expect",
        "CAIRN-MARKER: healthy",
        "--timeout",
        "120",
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    assert_eq!(v["clean"], b["id"], "{v:#}");
    let tried = v["tried"].as_array().unwrap();
    assert_eq!(tried[0]["id"], c["id"]);
    assert_eq!(tried[0]["verdict"], "failed");
    assert_eq!(tried[0]["stage"], "boot");
    assert_eq!(tried.len(), 2, "day 1 ({}) is never needed", a["id"]);
}
