//! `cairn mount`: a snapshot as a read-only FUSE filesystem until stopped.

use crate::guest_cmds::open_snapshot;
use anyhow::{Context, Result, bail};
use cairn_expose::fuse::{SnapshotFs, mount as fuse_mount};
use cairn_vault::{BlockSource, SnapshotDisk, SourceKind, Vault};
use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

pub fn mount(
    vault: &Arc<Vault>,
    spec: &str,
    mountpoint: &Path,
    disk: bool,
    partition: Option<u32>,
) -> Result<u8> {
    // What the command asks is checked before where it would go.
    let snap = vault.resolve(spec)?;
    if disk && snap.source.kind != SourceKind::Disk {
        crate::usage!("{spec} is a directory snapshot; --disk applies to disk snapshots");
    }
    match std::fs::read_dir(mountpoint) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                // Mounted over, its files would vanish from view while the
                // snapshot is shown: easy to take one for the other.
                bail!(
                    "{} is not empty: mount on an empty folder",
                    mountpoint.display()
                );
            }
        }
        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => bail!(
            "{} is a mount whose program has gone (killed?): unmount it first with `fusermount3 -u {}`",
            mountpoint.display(),
            mountpoint.display()
        ),
        Err(e) => bail!("{}: not a folder to mount on ({e})", mountpoint.display()),
    }
    let mtime = std::time::SystemTime::from(snap.time);
    let fs = if disk {
        let d: Arc<dyn BlockSource> = Arc::new(SnapshotDisk::open(vault.clone(), &snap, 256)?);
        SnapshotFs::disk(d, mtime)
    } else {
        let o = open_snapshot(vault, spec, partition)?;
        SnapshotFs::files(o.fs, mtime)?
    };
    let session = fuse_mount(fs, mountpoint).with_context(|| {
        format!(
            "mounting on {} (needs /dev/fuse and fusermount3)",
            mountpoint.display()
        )
    })?;
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "{}", mountpoint.display())?;
        out.flush()?;
    }
    eprintln!(
        "mounted {}@{} read-only on {}; stop with Ctrl-C or fusermount3 -u {}",
        snap.name,
        snap.id.short(),
        mountpoint.display(),
        mountpoint.display()
    );
    // Stopped while a program still uses the mount (a shell in it, a
    // copy going on), the unmount is refused: going away then would leave
    // a dead mount that fails every reader. So it says so and goes on;
    // asked again, it detaches the mount (gone from view, still served to
    // those using it) and stops when the last of them is done.
    let mut detach = false;
    loop {
        while !STOP.load(Ordering::Relaxed) && !session.guard.is_finished() {
            std::thread::sleep(Duration::from_millis(100));
        }
        if session.guard.is_finished() {
            return Ok(0);
        }
        STOP.store(false, Ordering::Relaxed);
        let mut cmd = std::process::Command::new("fusermount3");
        cmd.arg("-u");
        if detach {
            cmd.arg("-z");
        }
        let out = match cmd.arg(mountpoint).output() {
            Ok(out) => out,
            // Without fusermount3 (it mounted, so rarely): the session's
            // own unmount.
            Err(_) => {
                session.umount_and_join().context("unmounting")?;
                return Ok(0);
            }
        };
        if out.status.success() {
            if detach {
                eprintln!(
                    "{} detached: still served to the programs using it; Cairn stops when they are done",
                    mountpoint.display()
                );
            }
            // The session ends once the kernel lets the filesystem go.
            continue;
        }
        let why = String::from_utf8_lossy(&out.stderr);
        eprintln!(
            "{} is in use ({}): close what uses it (`fuser -vm {}` names it), or stop again to detach it",
            mountpoint.display(),
            why.trim().rsplit(": ").next().unwrap_or("busy"),
            mountpoint.display()
        );
        detach = true;
    }
}
