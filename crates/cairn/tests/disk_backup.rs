//! The story of a VM disk: backed up on three days with edits in between,
//! every snapshot restores byte for byte, holes stay holes.

mod common;
use common::*;

#[test]
fn gpt_ext4_disk_over_three_days_restores_byte_identical_and_sparse() {
    let env = Env::new("30d", &[]);
    let content = env.path("content");
    populate(&content);
    let disk = env.path("vm.img");
    gpt_ext4_image(&disk, &content, 64);
    let mut copies = Vec::new();

    let day1 = env.backup(&disk, "vm", "2026-03-01T02:00:00Z");
    assert_eq!(day1["name"], "vm");
    assert!(day1["parent"].is_null());
    let m = &day1["metrics"];
    assert_eq!(m["logical_size"], 64 << 20);
    assert!(
        m["zero_bytes"].as_u64().unwrap() > 40 << 20,
        "most of a fresh disk is holes: {m}"
    );
    assert!(
        m["bytes_read"].as_u64().unwrap() < 24 << 20,
        "holes are not read: {m}"
    );
    assert!(
        m["compression_ratio"].as_f64().unwrap() > 1.2,
        "text compresses: {m}"
    );
    std::fs::copy(&disk, env.path("day1.img")).unwrap();
    copies.push(env.path("day1.img"));

    // Day 2: a user edits documents inside the guest.
    std::fs::write(env.path("new.txt"), text(50_000, 99)).unwrap();
    debugfs_w(
        &disk,
        &format!(
            "write {} home/alice/docs/new.txt",
            env.path("new.txt").display()
        ),
    );
    debugfs_w(&disk, "rm home/alice/docs/report-3.txt");
    let day2 = env.backup(&disk, "vm", "2026-03-02T02:00:00Z");
    assert_eq!(day2["parent"], day1["id"]);
    let changed = day2["metrics"]["changed_bytes"].as_u64().unwrap();
    assert!(
        changed > 0 && changed < 2 << 20,
        "a small edit is a small change: {changed}"
    );
    assert!(day2["change_rate_bytes_per_hour"].as_f64().unwrap() > 0.0);
    std::fs::copy(&disk, env.path("day2.img")).unwrap();
    copies.push(env.path("day2.img"));

    // Day 3: 3 blocks of 64 KiB are overwritten in place with noise.
    for (i, off) in [10u64 << 20, 20 << 20, 30 << 20].iter().enumerate() {
        write_at(&disk, *off, &noise(64 * 1024, i as u64));
    }
    let day3 = env.backup(&disk, "vm", "2026-03-03T02:00:00Z");
    let m3 = &day3["metrics"];
    assert_eq!(
        m3["changed_bytes"],
        3 * 64 * 1024,
        "change is counted at 64 KiB grain: {m3}"
    );
    let hist: Vec<u64> = m3["entropy_histogram"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    assert_eq!(
        hist[7],
        3 * 64 * 1024,
        "noise lands in the top entropy bucket: {hist:?}"
    );
    assert!(
        m3["new_bytes_stored"].as_u64().unwrap() < 2 << 20,
        "only changed chunks are stored: {m3}"
    );
    copies.push(disk.clone());

    let list = env.json(&["snapshots"]);
    assert_eq!(list.as_array().unwrap().len(), 3);
    let listing = env.ok(&["snapshots", "vm"]);
    assert!(listing.contains(&day3["short_id"].as_str().unwrap().to_string()));

    for (spec, want) in [
        ("vm@-2", &copies[0]),
        ("vm@-1", &copies[1]),
        ("vm@latest", &copies[2]),
    ] {
        let out = env.path(&format!("restored-{spec}.img"));
        env.ok(&["restore", spec, "--to", out.to_str().unwrap(), "--verify"]);
        assert!(
            same_bytes(want, &out),
            "{spec} differs from the disk it was taken of"
        );
        let (a, b) = (allocated(want), allocated(&out));
        assert!(
            b <= a + (1 << 20),
            "{spec}: restore not sparse ({b} allocated vs source {a})"
        );
    }
    // By id prefix too.
    let id = day2["id"].as_str().unwrap();
    let out = env.path("by-id.img");
    env.ok(&[
        "restore",
        &format!("vm@{}", &id[..10]),
        "--to",
        out.to_str().unwrap(),
    ]);
    assert!(same_bytes(&copies[1], &out));
    // An existing target is not overwritten silently.
    let again = env.run(&["restore", "vm@latest", "--to", out.to_str().unwrap()]);
    assert_eq!(again.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&again.stderr).contains("--overwrite"));

    // Mistakes an operator makes with names and times are refused: a
    // directory under the VM's name, a time in the future (it would be
    // the newest for every keep policy).
    let src = content.to_str().unwrap();
    let mixed = env.run(&["backup", src, "--name", "vm"]);
    assert_eq!(mixed.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&mixed.stderr).contains("a name of its own"));
    let ahead = env.run(&[
        "backup",
        disk.to_str().unwrap(),
        "--name",
        "vm",
        "--time",
        "2099-01-01T00:00:00Z",
    ]);
    assert_eq!(ahead.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&ahead.stderr).contains("in the future"));

    let v = env.json(&["verify", "--read-data"]);
    assert_eq!(v["damaged_snapshots"].as_array().unwrap().len(), 0, "{v}");
    assert!(v["chunks_checked"].as_u64().unwrap() > 10);
}

#[test]
fn qcow2_restores_to_the_same_bytes_as_its_raw_twin() {
    let env = Env::new("30d", &[]);
    let content = env.path("content");
    populate(&content);
    let raw = env.path("vm.img");
    gpt_ext4_image(&raw, &content, 48);
    write_at(&raw, 40 << 20, &vec![0u8; 1 << 20]); // explicit zeros
    // Plain, compressed with deflate, and with zstd (QEMU 5.1 and later).
    let twins: Vec<(std::path::PathBuf, &str)> = [
        ("q", &[][..]),
        ("qc", &["-c"][..]),
        ("qz", &["-c", "-o", "compression_type=zstd"][..]),
    ]
    .into_iter()
    .map(|(name, opts)| {
        let q = env.path(&format!("vm-{name}.qcow2"));
        let mut args = vec!["convert", "-O", "qcow2"];
        args.extend_from_slice(opts);
        args.extend([raw.to_str().unwrap(), q.to_str().unwrap()]);
        sh("qemu-img", &args);
        (q, name)
    })
    .collect();
    let r = env.backup(&raw, "raw", "2026-03-01T00:00:00Z");
    for (q, name) in &twins {
        let s = env.backup(q, name, "2026-03-01T00:00:00Z");
        assert_eq!(s["source"]["format"], "qcow2");
        assert_eq!(s["metrics"]["logical_size"], 48 << 20);
        assert_eq!(
            s["metrics"]["new_bytes_stored"], 0,
            "same guest data as the raw image: all chunks known"
        );
        assert_eq!(s["metrics"]["zero_bytes"], r["metrics"]["zero_bytes"]);
        let out = env.path(&format!("{name}.restored.img"));
        let done = env.run(&[
            "restore",
            &format!("{name}@latest"),
            "--to",
            out.to_str().unwrap(),
        ]);
        assert_eq!(done.status.code(), Some(0));
        assert!(
            same_bytes(&raw, &out),
            "{name}: guest view differs from the raw twin"
        );
        // Said, since a VM defined with a qcow2 driver would not boot it.
        let said = String::from_utf8_lossy(&done.stderr);
        assert!(
            said.contains("is a raw disk image") && said.contains("qemu-img convert"),
            "{said}"
        );
    }
}

/// A qcow2 image cut short (a copy that did not finish) says so, not
/// "failed to fill whole buffer", and no snapshot is saved.
#[test]
fn a_truncated_qcow2_says_it_is_truncated() {
    let env = Env::new("30d", &[]);
    let content = env.path("content");
    populate(&content);
    let raw = env.path("vm.img");
    gpt_ext4_image(&raw, &content, 48);
    let q = env.path("vm.qcow2");
    sh(
        "qemu-img",
        &[
            "convert",
            "-O",
            "qcow2",
            raw.to_str().unwrap(),
            q.to_str().unwrap(),
        ],
    );
    let len = std::fs::metadata(&q).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&q)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    let out = env.run(&["backup", q.to_str().unwrap(), "--name", "q"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("truncated") && err.contains("qcow2 image is"),
        "{err}"
    );
    assert!(env.json(&["snapshots"]).as_array().unwrap().is_empty());
}

#[test]
fn qcow2_with_a_backing_file_is_read_through_the_chain() {
    let env = Env::new("30d", &[]);
    let base = env.path("base.img");
    std::fs::write(&base, noise(8 << 20, 1)).unwrap();
    let overlay = env.path("overlay.qcow2");
    sh(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-b",
            "base.img",
            "-F",
            "raw",
            overlay.to_str().unwrap(),
        ],
    );
    sh(
        "qemu-io",
        &["-c", "write -P 0x5a 1M 64k", overlay.to_str().unwrap()],
    );
    let flat = env.path("flat.img");
    sh(
        "qemu-img",
        &[
            "convert",
            "-O",
            "raw",
            overlay.to_str().unwrap(),
            flat.to_str().unwrap(),
        ],
    );
    env.backup(&overlay, "chain", "2026-03-01T00:00:00Z");
    let out = env.path("out.img");
    env.ok(&["restore", "chain@latest", "--to", out.to_str().unwrap()]);
    assert!(same_bytes(&flat, &out));
}

/// A crafted qcow2 whose L1 table lists one L2 table twice (a small file
/// describing a disk of repeated data, or endless alternating ranges) is
/// refused, not read.
#[test]
fn a_qcow2_that_lists_an_l2_table_twice_is_refused() {
    let env = Env::new("30d", &[]);
    let img = env.path("twice.qcow2");
    let p = img.to_str().unwrap();
    sh("qemu-img", &["create", "-q", "-f", "qcow2", p, "2G"]);
    // Data at 0 and at 1 GiB: two L2 tables (each maps 512 MiB).
    sh(
        "qemu-io",
        &["-c", "write -P 0x11 0 64k", "-c", "write -P 0x22 1G 64k", p],
    );
    env.ok(&["backup", p, "--name", "good"]);
    let mut b = std::fs::read(&img).unwrap();
    let l1 = u64::from_be_bytes(b[40..48].try_into().unwrap()) as usize;
    let first: [u8; 8] = b[l1..l1 + 8].try_into().unwrap();
    assert_ne!(first, [0; 8], "L1[0] points at an L2 table");
    assert_ne!(&b[l1 + 16..l1 + 24], &[0; 8], "L1[2] points at another");
    b[l1 + 16..l1 + 24].copy_from_slice(&first);
    std::fs::write(&img, &b).unwrap();
    let out = env.run(&["backup", p, "--name", "crafted"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("listed twice"), "{err}");
}

/// Other virtual-disk formats are refused with a way forward, not backed
/// up as raw bytes in which no filesystem can be found.
#[test]
fn vmdk_vdi_vhdx_and_vhd_images_are_refused_with_the_conversion_to_make() {
    let env = Env::new("30d", &[]);
    for (fmt, opts, named) in [
        ("vmdk", "", "VMDK"),
        ("vmdk", "subformat=streamOptimized", "VMDK"),
        ("vdi", "", "VirtualBox VDI"),
        ("vhdx", "", "VHDX"),
        ("vpc", "", "dynamic VHD"),
        ("qed", "", "QED"),
    ] {
        let img = env.path(&format!("disk-{fmt}.img"));
        let p = img.to_str().unwrap();
        let mut args = vec!["create", "-q", "-f", fmt];
        if !opts.is_empty() {
            args.extend(["-o", opts]);
        }
        args.extend([p, "64M"]);
        sh("qemu-img", &args);
        let out = env.run(&["backup", p, "--name", fmt]);
        assert_eq!(out.status.code(), Some(1), "{fmt} {opts}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(&format!("is a {named} image")) && err.contains("qemu-img convert"),
            "{fmt} {opts}: {err}"
        );
        assert_eq!(err.lines().count(), 1, "{err}");
    }
    // A fixed VHD is raw data with a footer: backed up as it is.
    let fixed = env.path("fixed.vhd");
    let p = fixed.to_str().unwrap();
    sh(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "vpc",
            "-o",
            "subformat=fixed",
            p,
            "64M",
        ],
    );
    // The first snapshot has nothing to be compared with: not vouched for
    // as clean; the next one is judged.
    let first = env.ok(&["backup", p, "--name", "fixed"]);
    assert!(
        first.contains("insight: first snapshot of fixed, nothing to compare with yet"),
        "{first}"
    );
    let second = env.ok(&["backup", p, "--name", "fixed"]);
    assert!(second.contains("insight: clean"), "{second}");
    let snaps = env.json(&["snapshots"]);
    assert_eq!(snaps.as_array().unwrap().len(), 2, "{snaps:#}");
}

/// Zeros inside a stored chunk stay holes in the restored file: a disk
/// with a zeroed 64 KiB block in every 128 KiB chunk (written zeros, so
/// allocated in the source) restores to about half its size on disk.
#[test]
fn zero_blocks_inside_chunks_restore_as_holes() {
    let env = Env::new("30d", &[]);
    let disk = env.path("half.img");
    let mut bytes = Vec::new();
    for i in 0..8u64 {
        bytes.extend_from_slice(&noise(64 * 1024, i));
        bytes.extend_from_slice(&[0u8; 64 * 1024]);
    }
    std::fs::write(&disk, &bytes).unwrap();
    env.backup(&disk, "half", "2026-03-01T02:00:00Z");
    let out = env.path("half-restored.img");
    env.ok(&[
        "restore",
        "half@latest",
        "--to",
        out.to_str().unwrap(),
        "--verify",
    ]);
    assert!(same_bytes(&disk, &out));
    let on_disk = allocated(&out);
    assert!(
        on_disk <= 512 * 1024 + 64 * 1024,
        "{on_disk} bytes allocated for 512 KiB of data"
    );
}

/// A block device (a loop device here, as root) is written only with
/// --overwrite, its empty chunks are zeroed, and a device larger than the
/// snapshot is reported with the size of the tail left as it was.
#[test]
fn a_block_device_target_needs_overwrite_and_its_tail_is_reported() {
    let env = Env::new("30d", &[]);
    let disk = env.path("small.img");
    let mut bytes = noise(512 * 1024, 3);
    bytes.extend_from_slice(&[0u8; 512 * 1024]);
    std::fs::write(&disk, &bytes).unwrap();
    env.backup(&disk, "small", "2026-03-01T02:00:00Z");
    let backing = env.path("device.img");
    std::fs::write(&backing, noise(2 << 20, 9)).unwrap();
    let Some(dev) = attach_loop(&backing, false) else {
        eprintln!("no loop devices here: block device targets not exercised");
        return;
    };
    let refused = env.run(&["restore", "small@latest", "--to", &dev]);
    let r = env.run(&[
        "restore",
        "small@latest",
        "--to",
        &dev,
        "--overwrite",
        "--json",
    ]);
    let _ = std::process::Command::new("losetup")
        .args(["-d", &dev])
        .status();
    assert_eq!(refused.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--overwrite"));
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let v: serde_json::Value = serde_json::from_slice(&r.stdout).unwrap();
    assert_eq!(v["device"], true, "{v}");
    assert_eq!(v["device_tail_bytes"], 1 << 20, "{v}");
    let after = std::fs::read(&backing).unwrap();
    assert_eq!(
        &after[..bytes.len()],
        &bytes[..],
        "the snapshot, zeros included"
    );
    assert_eq!(
        &after[bytes.len()..],
        &noise(2 << 20, 9)[bytes.len()..],
        "the tail untouched"
    );

    // A read-only device is refused before anything is written, by a dry
    // run too (opening it for writing works; every write would fail).
    let dev = attach_loop(&backing, true).expect("a loop device, as above");
    let full = env.run(&["restore", "small@-0", "--to", &dev, "--overwrite"]);
    let dry = env.run(&[
        "restore",
        "small@latest",
        "--to",
        &dev,
        "--delta",
        "--dry-run",
    ]);
    let _ = std::process::Command::new("losetup")
        .args(["-d", &dev])
        .status();
    for out in [full, dry] {
        assert_eq!(out.status.code(), Some(1));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("read-only device"), "{err}");
    }
    assert_eq!(std::fs::read(&backing).unwrap(), after);
}

/// Attaches `file` to a free loop device (read-only when asked); None
/// where there are none.
fn attach_loop(file: &std::path::Path, read_only: bool) -> Option<String> {
    let mut c = std::process::Command::new("losetup");
    if read_only {
        c.arg("-r");
    }
    let out = c.args(["-f", "--show"]).arg(file).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// An image another program holds a lock on (QEMU running the guest,
/// qemu-nbd serving it) is backed up, and said to be in use: the copy is
/// what a power cut would leave. Unlocked, nothing is said.
#[test]
fn an_image_in_use_is_backed_up_and_said_to_be() {
    let env = Env::new("30d", &[]);
    let img = env.path("vm.img");
    std::fs::write(&img, noise(2 << 20, 9)).unwrap();
    let calm = env.json(&["backup", img.to_str().unwrap(), "--name", "vm"]);
    assert_eq!(calm["warnings"], serde_json::json!([]), "{calm:#}");
    let mut holder = std::process::Command::new("python3")
        .args([
            "-c",
            "import fcntl, sys, time\n\
             f = open(sys.argv[1], 'rb')\n\
             fcntl.lockf(f, fcntl.LOCK_SH)\n\
             print('locked', flush=True)\n\
             time.sleep(60)",
            img.to_str().unwrap(),
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(holder.stdout.as_mut().unwrap()),
        &mut line,
    )
    .unwrap();
    assert_eq!(line.trim(), "locked");
    let busy = env.json(&["backup", img.to_str().unwrap(), "--name", "vm"]);
    holder.kill().unwrap();
    holder.wait().unwrap();
    assert!(
        busy["warnings"].to_string().contains("is in use"),
        "{busy:#}"
    );
}
