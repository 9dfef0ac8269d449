//! Full restore of a disk snapshot to a file or block device: chunks are
//! fetched and decoded in parallel, holes stay holes in a file, and a file
//! appears under its name only once it is complete.

use crate::place::{parent_dir, sync_parent};
use cairn_vault::error::{Error, IoContext, Result};
use cairn_vault::hash::{BLOCK_SIZE, ZERO_BLOCK, is_zero};
use cairn_vault::{BlockSource, SnapshotDisk};
use rayon::prelude::*;
use serde::Serialize;
use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::{FileExt, FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Clone, Debug, Default)]
pub struct DiskRestoreOptions {
    /// Replace an existing file.
    pub overwrite: bool,
    /// Read the target back and compare it with the snapshot.
    pub verify: bool,
}

#[derive(Debug, Default, Serialize)]
pub struct DiskRestoreReport {
    pub target: String,
    /// For a snapshot made by `cairn commit`: the snapshot it was made from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub derived_from: Option<String>,
    pub dry_run: bool,
    pub size: u64,
    pub bytes_written: u64,
    pub zero_bytes: u64,
    pub verified: bool,
    pub duration_secs: f64,
    /// The target is a block device (its empty chunks are written as
    /// zeros, not left as holes).
    pub device: bool,
    /// Bytes of a larger device past the snapshot's end, left as they were
    /// (an old partition table's backup header may remain there).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device_tail_bytes: Option<u64>,
}

/// The size of the device (or file) behind `file`; negative when it
/// cannot be told.
fn device_size(file: &File) -> i64 {
    unsafe { libc::lseek(std::os::fd::AsRawFd::as_raw_fd(file), 0, libc::SEEK_END) }
}

/// Bytes of the device behind `file` past `size`, if any.
fn tail_past(file: &File, size: u64) -> Option<u64> {
    let end = device_size(file);
    (end > 0 && end as u64 > size).then(|| end as u64 - size)
}

enum Target {
    File {
        tmp: PathBuf,
        dest: PathBuf,
        file: File,
    },
    Device {
        file: File,
    },
}

/// A write lock over the whole file (length 0: to its end, wherever that
/// is).
fn whole_file_write_lock() -> libc::flock {
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = libc::F_WRLCK as i16;
    fl.l_whence = libc::SEEK_SET as i16;
    fl
}

/// Whether another program holds a lock on `file` (a restore must never
/// write under a running VM).
fn in_use(file: &File) -> bool {
    cairn_vault::lock::held_elsewhere(file)
}

/// Refuses an image file another program has open and locked; while a
/// restore writes, it holds a write lock itself, so QEMU cannot start a
/// guest on a half-restored image.
fn claim(file: &File, path: &Path, write: bool) -> Result<()> {
    let busy = || {
        Error::Invalid(format!(
            "{} is in use: another program (a running VM, qemu-nbd) holds a lock on it; stop it first",
            path.display()
        ))
    };
    if in_use(file) {
        return Err(busy());
    }
    if write {
        let fl = whole_file_write_lock();
        let fd = std::os::fd::AsRawFd::as_raw_fd(file);
        if unsafe { libc::fcntl(fd, libc::F_OFD_SETLK, &fl) } != 0 {
            let e = std::io::Error::last_os_error();
            // A filesystem without locks cannot tell; only a conflict stops.
            if matches!(e.raw_os_error(), Some(libc::EAGAIN) | Some(libc::EACCES)) {
                return Err(busy());
            }
        }
    }
    Ok(())
}

/// The loop device a file is attached to, if any: a filesystem mounted
/// from it (or a VM given the loop device) is using the file, although
/// the file itself carries no lock.
fn loop_device_of(file: &File) -> Option<String> {
    use std::os::unix::fs::FileTypeExt;
    use std::os::unix::fs::MetadataExt;
    let md = file.metadata().ok()?;
    for dev in fs::read_dir("/sys/block").ok()?.flatten() {
        let name = dev.file_name().to_string_lossy().into_owned();
        if !name.starts_with("loop") {
            continue;
        }
        // The backing file's device and inode, as the kernel gives them.
        let read = |what: &str| {
            fs::read_to_string(dev.path().join("loop").join(what))
                .ok()
                .map(|s| s.trim().to_string())
        };
        // A block device (a loop device stacked on a loop device): the
        // same device, by whatever node it was named.
        if md.file_type().is_block_device() {
            if let Some(backing) = read("backing_file")
                && fs::metadata(&backing)
                    .is_ok_and(|b| b.file_type().is_block_device() && b.rdev() == md.rdev())
            {
                return Some(format!("/dev/{name}"));
            }
            continue;
        }
        let (Some(inode), Some(device)) = (read("backing_inode"), read("backing_dev")) else {
            // Older kernels: compare by path.
            let Some(backing) = read("backing_file") else {
                continue; // not attached
            };
            if fs::metadata(backing.trim_end_matches(" (deleted)"))
                .is_ok_and(|b| b.dev() == md.dev() && b.ino() == md.ino())
            {
                return Some(format!("/dev/{name}"));
            }
            continue;
        };
        if inode.parse::<u64>().ok() == Some(md.ino())
            && device.parse::<u64>().ok() == Some(md.dev())
        {
            return Some(format!("/dev/{name}"));
        }
    }
    None
}

/// Refuses a target that is attached to a loop device.
fn not_looped(file: &File, path: &Path) -> Result<()> {
    match loop_device_of(file) {
        Some(dev) => Err(Error::Invalid(format!(
            "{} is in use: it is attached to {dev} (losetup -d {dev} first)",
            path.display()
        ))),
        None => Ok(()),
    }
}

/// Opens a block device for writing a snapshot of `size` bytes: O_EXCL
/// fails while it is mounted or held by the kernel (a partition table in
/// use, device-mapper, RAID); a lock on it (QEMU's) is honoured too.
fn open_device(path: &Path, size: u64, write: bool) -> Result<File> {
    let file = OpenOptions::new()
        .write(write)
        .read(true)
        .custom_flags(libc::O_EXCL)
        .open(path)
        .ctx(|| {
            format!(
                "{} is in use (mounted?) or cannot be opened",
                path.display()
            )
        })?;
    let dev_size = device_size(&file);
    if dev_size < 0 || (dev_size as u64) < size {
        return Err(Error::Invalid(format!(
            "{} holds {dev_size} bytes; the snapshot needs {size}: the target is too small",
            path.display()
        )));
    }
    if read_only_device(&file) {
        // Opening it for writing works; every write then fails. Said now,
        // by a dry run too, instead of half-way through a restore.
        return Err(Error::Invalid(format!(
            "{} is a read-only device (blockdev --setrw makes it writable)",
            path.display()
        )));
    }
    not_looped(&file, path)?;
    claim(&file, path, write)?;
    Ok(file)
}

fn read_only_device(file: &File) -> bool {
    use std::os::fd::AsRawFd;
    // BLKROGET: _IO(0x12, 94).
    const BLKROGET: libc::c_ulong = 0x125e;
    let mut ro: libc::c_int = 0;
    let r = unsafe { libc::ioctl(file.as_raw_fd(), BLKROGET, &mut ro) };
    r == 0 && ro != 0
}

/// Opens an existing disk image or block device to bring it to a snapshot
/// of `size` bytes in place: (file, is a device, its current size).
pub(crate) fn open_existing(path: &Path, size: u64, write: bool) -> Result<(File, bool, u64)> {
    let md = fs::metadata(path).ctx(|| {
        format!(
            "{}: a delta restore needs an existing disk image or device (restore without --delta creates one)",
            path.display()
        )
    })?;
    if md.file_type().is_block_device() {
        return Ok((open_device(path, size, write)?, true, size));
    }
    if !md.is_file() {
        return Err(Error::Invalid(format!(
            "{} is neither a disk image file nor a block device",
            path.display()
        )));
    }
    // Never a FIFO swapped in meanwhile (it would hang the open).
    let file = OpenOptions::new()
        .read(true)
        .write(write)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .ctx(|| format!("opening {}", path.display()))?;
    // What was opened is what was checked: a device put in its place
    // since would be written without O_EXCL and the size check.
    let opened = file
        .metadata()
        .ctx(|| format!("opening {}", path.display()))?;
    if !opened.is_file() {
        return Err(Error::Invalid(format!(
            "{} changed into something other than a disk image file while being opened",
            path.display()
        )));
    }
    claim(&file, path, write)?;
    not_looped(&file, path)?;
    Ok((file, false, opened.len()))
}

/// What is at a full restore's target, after the checks every full
/// restore makes before writing (a dry run stops after them).
enum Found {
    /// A block device, opened with `O_EXCL` (for writing when asked).
    Device(File),
    /// Nothing yet: the image is created.
    Nothing,
    /// An image file `--overwrite` replaces (nobody holds a lock on it).
    Replaced,
}

fn check_target(path: &Path, size: u64, opts: &DiskRestoreOptions, write: bool) -> Result<Found> {
    let folder = parent_dir(path);
    if !folder.is_dir() {
        return Err(Error::Invalid(format!(
            "cannot restore to {}: the folder {} does not exist (create it first)",
            path.display(),
            folder.display()
        )));
    }
    // "out/" names a folder: the image would be written and then fail
    // to take that name.
    if path.as_os_str().as_encoded_bytes().ends_with(b"/") && !path.exists() {
        return Err(Error::Invalid(format!(
            "cannot restore to {}: no such folder, and a disk restores to a file or block device (name the file)",
            path.display()
        )));
    }
    match fs::metadata(path) {
        Ok(md) if md.file_type().is_block_device() && !opts.overwrite => {
            Err(Error::Invalid(format!(
                "{} is a block device; pass --overwrite to write the snapshot over all of it",
                path.display()
            )))
        }
        Ok(md) if md.file_type().is_block_device() => {
            Ok(Found::Device(open_device(path, size, write)?))
        }
        Ok(md) if md.is_dir() => Err(Error::Invalid(format!(
            "{} is a directory; give the path of the disk image to create",
            path.display()
        ))),
        Ok(md) if !md.is_file() => Err(Error::Invalid(format!(
            "{} is neither a disk image file nor a block device",
            path.display()
        ))),
        Ok(_) if !opts.overwrite => Err(Error::Invalid(format!(
            "{} exists; pass --overwrite to replace it",
            path.display()
        ))),
        Ok(_) => {
            // Replaced by rename: a VM running on it would go on with the
            // old file unseen, so that is refused too.
            let f = OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(path)
                .ctx(|| format!("opening {}", path.display()))?;
            claim(&f, path, false)?;
            not_looped(&f, path)?;
            Ok(Found::Replaced)
        }
        Err(_) if under_dev(path) => Err(Error::Invalid(format!(
            "{}: no such device (a new image is not created under /dev, where it would fill memory)",
            path.display()
        ))),
        Err(_) => Ok(Found::Nothing),
    }
}

/// Whether `path` would be created under `/dev` (a memory filesystem of
/// device nodes: a mistyped device name must not become a RAM-backed
/// image the size of a disk).
fn under_dev(path: &Path) -> bool {
    fs::canonicalize(parent_dir(path)).is_ok_and(|p| p.starts_with("/dev"))
}

/// What a full restore to `path` would do, checked without writing: the
/// same refusals as a real restore (an existing file without
/// `--overwrite`, an image in use, a device too small or mounted).
pub fn plan_disk_restore(
    disk: &SnapshotDisk,
    path: &Path,
    opts: &DiskRestoreOptions,
) -> Result<DiskRestoreReport> {
    let map = disk.map();
    let found = check_target(path, map.size, opts, false)?;
    let (device, device_tail_bytes) = match &found {
        Found::Device(f) => (true, tail_past(f, map.size)),
        _ => (false, None),
    };
    let data: u64 = (0..map.chunks.len())
        .filter(|&i| map.chunks[i].is_some())
        .map(|i| map.chunk_range(i).1 as u64)
        .sum();
    Ok(DiskRestoreReport {
        target: path.display().to_string(),
        dry_run: true,
        size: map.size,
        bytes_written: data,
        zero_bytes: map.size - data,
        device,
        device_tail_bytes,
        ..Default::default()
    })
}

fn open_target(path: &Path, size: u64, opts: &DiskRestoreOptions) -> Result<Target> {
    if let Found::Device(file) = check_target(path, size, opts, true)? {
        return Ok(Target::Device { file });
    }
    let name = path
        .file_name()
        .ok_or_else(|| Error::Invalid(format!("{}: not a file path", path.display())))?;
    let tmp = path.with_file_name(format!(".{}.cairn-partial", name.to_string_lossy()));
    // A stale partial file (or a link planted in its place) goes; the new
    // one is made here, readable by its owner only (it holds a decrypted
    // disk), and locked, so a second restore to the same path fails
    // instead of writing into it too.
    if fs::symlink_metadata(&tmp).is_ok() {
        let stale = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(&tmp);
        if let Ok(f) = &stale
            && in_use(f)
        {
            return Err(Error::Invalid(format!(
                "{} is being written by another restore",
                tmp.display()
            )));
        }
        fs::remove_file(&tmp).ctx(|| format!("removing {}", tmp.display()))?;
    }
    let file = OpenOptions::new()
        .write(true)
        .read(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&tmp)
        .ctx(|| format!("creating {}", tmp.display()))?;
    if let Err(e) = claim(&file, &tmp, true).and_then(|()| {
        file.set_len(size)
            .ctx(|| format!("sizing {}", tmp.display()))
    }) {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    Ok(Target::File {
        tmp,
        dest: path.to_path_buf(),
        file,
    })
}

pub fn restore_disk(
    disk: &SnapshotDisk,
    target: &Path,
    opts: &DiskRestoreOptions,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<DiskRestoreReport> {
    let started = std::time::Instant::now();
    let map = disk.map();
    let t = open_target(target, map.size, opts)?;
    let (file, is_device) = match &t {
        Target::File { file, .. } => (file, false),
        Target::Device { file } => (file, true),
    };
    let written = AtomicU64::new(0);
    let zeros = AtomicU64::new(0);
    let result: Result<()> = (0..map.chunks.len()).into_par_iter().try_for_each(|i| {
        let (start, len) = map.chunk_range(i);
        match map.chunks[i] {
            Some(id) => {
                let data = disk.vault().read_chunk(&id)?;
                if data.len() != len {
                    return Err(Error::damaged(
                        format!("chunk {id}"),
                        "wrong length for its place on the disk",
                    ));
                }
                if is_device {
                    file.write_all_at(&data, start)
                        .ctx(|| format!("writing {}", target.display()))?;
                } else {
                    // Zero blocks inside a chunk stay holes in a new file
                    // (it starts as one hole): runs of data are written.
                    let bpc = map.blocks_per_chunk();
                    let digests = &map.blocks[i * bpc..i * bpc + len.div_ceil(BLOCK_SIZE)];
                    let mut b = 0;
                    while b < digests.len() {
                        if digests[b] == ZERO_BLOCK {
                            b += 1;
                            continue;
                        }
                        let first = b;
                        while b < digests.len() && digests[b] != ZERO_BLOCK {
                            b += 1;
                        }
                        let from = first * BLOCK_SIZE;
                        let to = (b * BLOCK_SIZE).min(len);
                        file.write_all_at(&data[from..to], start + from as u64)
                            .ctx(|| format!("writing {}", target.display()))?;
                    }
                }
                start_writeback(file, start, len);
                written.fetch_add(len as u64, Ordering::Relaxed);
            }
            None => {
                // A new file is all holes already; a device must be zeroed.
                if is_device {
                    file.write_all_at(&vec![0u8; len], start)
                        .ctx(|| format!("writing {}", target.display()))?;
                }
                zeros.fetch_add(len as u64, Ordering::Relaxed);
            }
        }
        progress(len as u64);
        Ok(())
    });
    let finished = result
        .and_then(|()| {
            file.sync_all()
                .ctx(|| format!("syncing {}", target.display()))
        })
        .and_then(|()| match opts.verify {
            true => verify_target(disk, file).map(|()| true),
            false => Ok(false),
        })
        .and_then(|verified| {
            if let Target::File { tmp, dest, .. } = &t {
                fs::rename(tmp, dest)
                    .ctx(|| format!("renaming {} to {}", tmp.display(), dest.display()))?;
                sync_parent(dest)?;
            }
            Ok(verified)
        });
    let verified = match finished {
        Ok(v) => v,
        Err(e) => {
            // No full-size partial file left behind.
            if let Target::File { tmp, .. } = &t {
                let _ = fs::remove_file(tmp);
            }
            return Err(e);
        }
    };
    Ok(DiskRestoreReport {
        target: target.display().to_string(),
        size: map.size,
        bytes_written: written.into_inner(),
        zero_bytes: zeros.into_inner(),
        verified,
        duration_secs: started.elapsed().as_secs_f64(),
        device: is_device,
        device_tail_bytes: if is_device {
            tail_past(file, map.size)
        } else {
            None
        },
        ..Default::default()
    })
}

/// Starts writing a range to the device now rather than at the final
/// fsync, so the disk works while the next chunks are decoded; the fsync
/// at the end then finds little left to do (a delta restore's fsync was a
/// third of its time). Advisory: errors surface at the fsync.
pub(crate) fn start_writeback(file: &File, offset: u64, len: usize) {
    use std::os::fd::AsRawFd;
    unsafe {
        libc::sync_file_range(
            file.as_raw_fd(),
            offset as i64,
            len as i64,
            libc::SYNC_FILE_RANGE_WRITE,
        );
    }
}

/// Re-reads the target and compares each chunk's block digests with the
/// snapshot's.
pub(crate) fn verify_target(disk: &SnapshotDisk, file: &File) -> Result<()> {
    let map = disk.map();
    let hasher = disk.vault().hasher();
    let bpc = map.blocks_per_chunk();
    (0..map.chunks.len()).into_par_iter().try_for_each(|i| {
        let (start, len) = map.chunk_range(i);
        let mut buf = vec![0u8; len];
        file.read_exact_at(&mut buf, start)
            .ctx(|| "reading back the target".into())?;
        let ok = match map.chunks[i] {
            None => is_zero(&buf),
            Some(_) => {
                let (_, digests) = hasher.digest_chunk(&buf);
                digests == map.blocks[i * bpc..i * bpc + digests.len()]
            }
        };
        if ok {
            Ok(())
        } else {
            Err(Error::Invalid(format!(
                "verification failed: the target differs from the snapshot at offset {start}"
            )))
        }
    })?;
    let _ = disk.size();
    Ok(())
}
