//! The isolated recovery environment (`cairn boot`, the walk back's boot
//! check, the console's boot button). The snapshot is
//! exported over NBD inside this process (writes go to an overlay), QEMU
//! boots it with no network (or user networking with no route out), the
//! serial console is recorded, and the boot is judged by a console pattern
//! or a guest port that answers.

use crate::{Export, Overlay, OverlayDisk};
use anyhow::{Context, Result, bail};
use cairn_vault::{BlockSource, SnapshotDisk, Vault};
use serde::Serialize;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub struct BootOptions {
    pub overlay: Option<PathBuf>,
    pub kernel: Option<PathBuf>,
    pub initrd: Option<PathBuf>,
    pub append: String,
    pub memory: String,
    pub network: String,
    pub expect: Option<String>,
    pub probe: Option<u16>,
    pub timeout: u64,
    pub log: Option<PathBuf>,
}

#[derive(Serialize)]
pub struct BootReport {
    pub snapshot: String,
    /// `booted` or `failed`.
    pub result: &'static str,
    pub accel: String,
    pub seconds: f64,
    pub console_log: String,
    pub reason: String,
}

/// A line from a QEMU run: the guest's serial console, or QEMU's own
/// messages (never matched against `--expect`: "could not open kernel
/// file" must not pass for a guest that printed it).
enum Line {
    Console(String),
    Qemu(String),
}

/// One QEMU run: the lines as they come, and whether it ended.
fn start_qemu(args: &[String], log: &Path) -> Result<(std::process::Child, mpsc::Receiver<Line>)> {
    let mut child = Command::new("qemu-system-x86_64")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting qemu-system-x86_64 (Debian package qemu-system-x86)")?;
    let (tx, rx) = mpsc::channel();
    let mut logf =
        std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let out = child.stdout.take().expect("piped");
    let err = child.stderr.take().expect("piped");
    let tx2 = tx.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            let _ = tx2.send(Line::Qemu(line));
        }
    });
    std::thread::spawn(move || {
        let mut r = BufReader::new(out);
        let mut buf = Vec::new();
        while r
            .read_until(b'\n', &mut buf)
            .map(|n| n > 0)
            .unwrap_or(false)
        {
            let _ = logf.write_all(&buf);
            let _ = tx.send(Line::Console(
                String::from_utf8_lossy(&buf).trim_end().to_string(),
            ));
            buf.clear();
        }
    });
    Ok((child, rx))
}

/// True when the guest's service answers through the forwarded port.
/// Connecting is not enough: QEMU's user network accepts on the host side
/// before the guest listens. The service must send something, on its own
/// (SSH, SMTP…) or in reply to an HTTP HEAD request.
fn probe_port(port: u16) -> bool {
    use std::io::Read;
    let Ok(mut s) = std::net::TcpStream::connect_timeout(
        &([127, 0, 0, 1], port).into(),
        Duration::from_millis(300),
    ) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(1000)));
    let mut buf = [0u8; 64];
    match s.read(&mut buf) {
        Ok(n) if n > 0 => return true,
        Ok(_) => return false, // closed: nobody behind the forward
        Err(_) => {}
    }
    if s.write_all(b"HEAD / HTTP/1.0\r\n\r\n").is_err() {
        return false;
    }
    matches!(s.read(&mut buf), Ok(n) if n > 0)
}

/// Checks the boot options before anything is booted, so that a typo is
/// an error and not a snapshot that "failed to boot" (a walk back would
/// otherwise step past every good point).
pub fn check_options(o: &BootOptions) -> Result<()> {
    if o.expect.is_none() && o.probe.is_none() {
        bail!(
            "say how to recognise a good boot: --expect PATTERN (on the console) or --probe PORT"
        );
    }
    if o.probe == Some(0) {
        bail!("--probe: a guest port from 1 to 65535");
    }
    if o.probe.is_some() && o.network != "restricted" {
        bail!(
            "--probe needs --network restricted (with --network none the guest has no network at all)"
        );
    }
    if !matches!(o.network.as_str(), "none" | "restricted") {
        bail!("--network is none or restricted");
    }
    let digits = o.memory.trim_end_matches(['M', 'G', 'm', 'g']);
    if digits.is_empty()
        || !digits.bytes().all(|b| b.is_ascii_digit())
        || o.memory.len() - digits.len() > 1
    {
        bail!("--memory {:?}: a size such as 512M or 2G", o.memory);
    }
    for (flag, file) in [("--kernel", &o.kernel), ("--initrd", &o.initrd)] {
        if let Some(f) = file {
            std::fs::File::open(f)
                .and_then(|h| h.metadata())
                .ok()
                .filter(|m| m.is_file())
                .with_context(|| format!("{flag} {}: not a readable file", f.display()))?;
        }
    }
    Ok(())
}

/// Boots `snap` in the isolated environment and judges the boot.
pub fn boot_check(
    vault: &Arc<Vault>,
    snap: &cairn_vault::Snapshot,
    o: &BootOptions,
) -> Result<BootReport> {
    check_options(o)?;
    let disk: Arc<dyn BlockSource> =
        Arc::new(SnapshotDisk::open(vault.clone(), snap, 256)?.without_read_ahead());
    let tmp = tempfile::tempdir()?;
    let overlay_path = o
        .overlay
        .clone()
        .unwrap_or_else(|| tmp.path().join("overlay"));
    let overlay = Arc::new(
        Overlay::open(&overlay_path, disk.size(), &snap.id.0).context("opening the overlay")?,
    );
    let log = o
        .log
        .clone()
        .unwrap_or_else(|| tmp.path().join("console.log"));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    // QEMU gets the decrypted disk over a Unix socket in this run's private
    // folder (mode 0700): no other local user can connect to it.
    let socket = tmp.path().join("disk.sock");
    let listener = {
        let _in_runtime = rt.enter();
        tokio::net::UnixListener::bind(&socket).context("binding the disk's socket")?
    };
    let exports = Arc::new(vec![Export {
        name: "boot".into(),
        disk: Arc::new(OverlayDisk {
            base: disk,
            overlay: Some(overlay.clone()),
        }),
        description: format!("{}@{}", snap.name, snap.id.short()),
    }]);
    rt.spawn(crate::nbd::serve_unix(listener, exports));

    let host_port = o.probe.map(|_| {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
        l.local_addr().expect("address").port()
    });
    let mut base: Vec<String> = vec![
        // The guest may be infected: QEMU itself runs under seccomp, with
        // no new processes, no privilege changes and no obsolete calls.
        "-sandbox".into(),
        "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny".into(),
        "-nodefaults".into(),
        "-display".into(),
        "none".into(),
        "-no-reboot".into(),
        "-m".into(),
        o.memory.clone(),
        "-serial".into(),
        "stdio".into(),
        "-drive".into(),
        format!(
            "file=nbd+unix:///boot?socket={},format=raw,if=virtio,cache=writeback",
            // A comma in QEMU's option values is written twice.
            socket.display().to_string().replace(',', ",,")
        ),
    ];
    match (o.network.as_str(), o.probe, host_port) {
        ("restricted", Some(guest), Some(host)) => base.extend([
            "-nic".into(),
            format!("user,restrict=on,model=virtio-net-pci,hostfwd=tcp:127.0.0.1:{host}-:{guest}"),
        ]),
        ("restricted", _, _) => base.extend([
            "-nic".into(),
            "user,restrict=on,model=virtio-net-pci".into(),
        ]),
        _ => base.extend(["-nic".into(), "none".into()]),
    }
    if let Some(k) = &o.kernel {
        base.extend([
            "-kernel".into(),
            k.display().to_string(),
            "-append".into(),
            o.append.clone(),
        ]);
    }
    if let Some(i) = &o.initrd {
        base.extend(["-initrd".into(), i.display().to_string()]);
    }
    // KVM when it works; field experience: it can hang before the first
    // console byte, or QEMU can abort at once, so a silent start and an
    // early exit without output both fall back to TCG.
    let mut accels = vec![];
    if std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok()
    {
        accels.push((
            "kvm",
            vec![
                "-accel".to_string(),
                "kvm".into(),
                "-cpu".into(),
                "host".into(),
            ],
        ));
    }
    accels.push((
        "tcg",
        vec![
            "-accel".to_string(),
            "tcg".into(),
            "-cpu".into(),
            "max".into(),
        ],
    ));
    let started = Instant::now();
    let deadline = started + Duration::from_secs(o.timeout);
    let mut report = BootReport {
        snapshot: format!("{}@{}", snap.name, snap.id.short()),
        result: "failed",
        accel: String::new(),
        seconds: 0.0,
        console_log: log.display().to_string(),
        reason: String::new(),
    };
    // Why the first accelerator gave up at start, if it did.
    let mut fell_back: Option<String> = None;
    'accel: for (i, (name, accel)) in accels.iter().enumerate() {
        let last = i + 1 == accels.len();
        let mut args = accel.clone();
        args.extend(base.iter().cloned());
        let (mut child, rx) = start_qemu(&args, &log)?;
        report.accel = name.to_string();
        let mut saw_output = false;
        let mut qemu_said = false;
        let first_output_by = Instant::now() + Duration::from_secs(8);
        loop {
            if Instant::now() > deadline {
                report.reason = format!("no sign of a good boot within {} s", o.timeout);
                let _ = child.kill();
                let _ = child.wait();
                break 'accel;
            }
            if !saw_output && !last && Instant::now() > first_output_by {
                let _ = child.kill();
                let _ = child.wait();
                continue 'accel; // silent KVM: try TCG
            }
            if let (Some(_), Some(h)) = (o.probe, host_port)
                && probe_port(h)
            {
                report.result = "booted";
                report.reason = format!("guest port {} answered", o.probe.unwrap_or_default());
                let _ = child.kill();
                let _ = child.wait();
                break 'accel;
            }
            match rx.recv_timeout(Duration::from_millis(200)) {
                Ok(Line::Console(line)) => {
                    saw_output = true;
                    if let Some(p) = &o.expect
                        && line.contains(p.as_str())
                    {
                        report.result = "booted";
                        report.reason = format!("console showed {p:?}");
                        let _ = child.kill();
                        let _ = child.wait();
                        break 'accel;
                    }
                }
                Ok(Line::Qemu(line)) => {
                    qemu_said = true;
                    report.reason = format!("qemu: {line}");
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let _ = child.wait();
                    if !saw_output && !last {
                        // KVM that fails as QEMU starts (seen here: an
                        // assertion in kvm_buf_set_msrs on some hosts):
                        // TCG, and the reason of that run.
                        tracing::debug!(accel = name, reason = %report.reason, "accelerator failed at start");
                        fell_back = Some(std::mem::take(&mut report.reason));
                        continue 'accel;
                    }
                    if !saw_output && qemu_said {
                        // QEMU gave up before the guest ran (a kernel file
                        // it cannot read, options it refuses): nothing is
                        // known about the snapshot.
                        bail!("QEMU could not start the guest: {}", report.reason);
                    }
                    if report.reason.is_empty() {
                        report.reason =
                            "the guest stopped before showing a sign of a good boot".into();
                    }
                    break 'accel;
                }
            }
        }
    }
    report.seconds = started.elapsed().as_secs_f64();
    if let Some(why) = fell_back.filter(|_| report.result != "booted") {
        let why = if why.is_empty() {
            String::new()
        } else {
            format!(": {why}")
        };
        report.reason = format!(
            "{} (KVM failed at start{why}; tried under TCG)",
            report.reason
        );
    }
    if o.log.is_none() {
        report.console_log = if report.result == "booted" {
            // The run's folder goes with the run: nothing to point at.
            String::new()
        } else {
            keep_console(&log, snap.id.short())
        };
    }
    drop(rt);
    Ok(report)
}

/// Keeps the console of a failed boot for the operator: a new file of its
/// own in the temp folder (created, never opened through a link planted
/// under a name guessed in advance), readable by its owner only.
fn keep_console(log: &Path, id: &str) -> String {
    let kept = tempfile::Builder::new()
        .prefix(&format!("cairn-boot-{id}-"))
        .suffix(".log")
        .tempfile()
        .and_then(|mut f| {
            std::io::copy(&mut std::fs::File::open(log)?, f.as_file_mut())?;
            f.keep().map_err(|e| e.error)
        });
    match kept {
        Ok((_, path)) => path.display().to_string(),
        Err(e) => format!("not kept ({e})"),
    }
}
