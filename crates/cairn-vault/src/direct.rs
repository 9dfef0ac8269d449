//! Writes a large new object around the page cache (`O_DIRECT`).
//!
//! A backup writes hundreds of MiB of packs that nobody reads back soon.
//! Through the page cache each byte is copied into freshly allocated cache
//! pages, and the kernel's writeback threads then spend a core flushing
//! them: `perf` put the kernel's copy alone at 13% of a full backup's CPU.
//! With `O_DIRECT` the device reads the bytes from our buffer. Memory and
//! file offsets must be aligned for that: the pack writer aligns its
//! buffers, and other bytes pass through one aligned buffer per thread (a
//! copy into memory that stays hot costs a fraction of the cache's). The
//! last partial block is written through the cache. Filesystems without
//! `O_DIRECT` (tmpfs on older kernels, some FUSE ones) are written the
//! ordinary way, through the same file.

use std::alloc::{Layout, alloc_zeroed, dealloc};
use std::cell::RefCell;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;

/// Alignment that satisfies every block device's `O_DIRECT` rules (512 or
/// 4096-byte logical blocks).
pub const ALIGN: usize = 4096;
/// Bytes per direct write: large enough that the device sees big requests.
const STAGE: usize = 4 << 20;
/// Objects smaller than this go through the cache: a direct write waits for
/// the device, which is not worth it for an index or a manifest.
pub const MIN_DIRECT: usize = 1 << 20;

/// An aligned buffer of `STAGE` bytes, kept per thread.
struct Stage(*mut u8);

impl Stage {
    fn layout() -> Layout {
        Layout::from_size_align(STAGE, ALIGN).expect("valid layout")
    }

    fn new() -> Option<Stage> {
        // SAFETY: the layout has a non-zero size; zeroed, so the slice
        // below is over initialised bytes.
        let p = unsafe { alloc_zeroed(Self::layout()) };
        (!p.is_null()).then_some(Stage(p))
    }

    fn as_mut(&mut self) -> &mut [u8] {
        // SAFETY: `self.0` points to STAGE bytes this value owns.
        unsafe { std::slice::from_raw_parts_mut(self.0, STAGE) }
    }
}

impl Drop for Stage {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with the same layout.
        unsafe { dealloc(self.0, Self::layout()) }
    }
}

thread_local! {
    static STAGE_BUF: RefCell<Option<Stage>> = const { RefCell::new(None) };
}

/// Creates `path` (new, `mode`) and writes `data` into it, the aligned part
/// with `O_DIRECT` where the filesystem takes it; the caller syncs the
/// file. Also says whether `O_DIRECT` was used.
pub fn write_new(path: &Path, mode: u32, data: &[u8]) -> io::Result<(File, bool)> {
    write_new_with(path, mode, data, true)
}

fn write_new_with(
    path: &Path,
    mode: u32,
    data: &[u8],
    try_direct: bool,
) -> io::Result<(File, bool)> {
    // Created without the flag, which is then asked for: an open with
    // O_DIRECT that the filesystem refuses may still leave the file made.
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)?;
    if try_direct && set_direct(&file, true).is_ok() {
        match write_aligned(&file, data) {
            Ok(done) => {
                // The tail (less than one aligned block) through the cache.
                set_direct(&file, false)?;
                file.write_all_at(&data[done..], done as u64)?;
                return Ok((file, true));
            }
            // A filesystem that takes the flag and refuses the I/O, or a
            // short direct write that left the rest misaligned: everything
            // again through the cache.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => set_direct(&file, false)?,
            Err(e) => return Err(e),
        }
    }
    file.write_all_at(data, 0)?;
    Ok((file, false))
}

/// Writes the longest aligned prefix of `data`; returns its length.
fn write_aligned(file: &File, data: &[u8]) -> io::Result<usize> {
    let aligned = data.len() / ALIGN * ALIGN;
    if data.as_ptr().align_offset(ALIGN) == 0 {
        file.write_all_at(&data[..aligned], 0)?;
        return Ok(aligned);
    }
    STAGE_BUF.with(|cell| {
        let mut cell = cell.borrow_mut();
        if cell.is_none() {
            *cell = Some(Stage::new().ok_or_else(|| io::Error::other("out of memory"))?);
        }
        let stage = cell.as_mut().expect("just set").as_mut();
        let mut at = 0;
        while at < aligned {
            let n = (aligned - at).min(STAGE);
            stage[..n].copy_from_slice(&data[at..at + n]);
            file.write_all_at(&stage[..n], at as u64)?;
            at += n;
        }
        Ok(aligned)
    })
}

fn set_direct(file: &File, on: bool) -> io::Result<()> {
    let fd = file.as_raw_fd();
    // SAFETY: plain fcntl calls on a descriptor we own.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    let flags = if on {
        flags | libc::O_DIRECT
    } else {
        flags & !libc::O_DIRECT
    };
    // SAFETY: as above.
    if unsafe { libc::fcntl(fd, libc::F_SETFL, flags) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unaligned_sizes_round_trip_both_ways() {
        let dir = tempfile::tempdir().unwrap();
        let mut direct_used = false;
        for len in [MIN_DIRECT, MIN_DIRECT + 1, STAGE * 2 + 4095, 3 * STAGE + 17] {
            let data: Vec<u8> = (0..len + ALIGN).map(|i| (i * 7 + i / 4096) as u8).collect();
            // Straight from an aligned address, staged, and (as on a
            // filesystem without O_DIRECT) through the cache.
            let at = data.as_ptr().align_offset(ALIGN);
            for (name, data, try_direct) in [
                ("aligned", &data[at..at + len], true),
                ("staged", &data[at + 1..at + 1 + len], true),
                ("cached", &data[at + 1..at + 1 + len], false),
            ] {
                let path = dir.path().join(format!("{name}{len}"));
                let (f, direct) = write_new_with(&path, 0o444, data, try_direct).unwrap();
                f.sync_all().unwrap();
                assert!(try_direct || !direct);
                direct_used |= direct;
                assert_eq!(std::fs::read(&path).unwrap(), data, "{name} {len}");
            }
        }
        // Where the test's folder takes O_DIRECT (ext4, xfs, btrfs, tmpfs
        // since Linux 6.6), the direct path must have been the one tested.
        let probe = dir.path().join("probe");
        let f = std::fs::File::create(&probe).unwrap();
        if set_direct(&f, true).is_ok() {
            assert!(direct_used);
        }
    }
}
