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
    let snap = vault.resolve(spec)?;
    let mtime = std::time::SystemTime::from(snap.time);
    let fs = if disk {
        if snap.source.kind != SourceKind::Disk {
            bail!("{spec} is a directory snapshot; --disk applies to disk snapshots");
        }
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
    while !STOP.load(Ordering::Relaxed) && !session.guard.is_finished() {
        std::thread::sleep(Duration::from_millis(100));
    }
    if !session.guard.is_finished() {
        session.umount_and_join().context("unmounting")?;
    }
    Ok(0)
}
