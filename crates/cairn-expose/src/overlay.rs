//! A copy-on-write overlay kept in a sparse local file the size of the
//! disk. A 4 KiB grain that was written is allocated in the file; one never
//! written is a hole there. The file is its own record of what was
//! written, so the overlay survives a restart with nothing else to save.

use cairn_vault::{BlockSource, Extent, push_extent};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};

pub const GRAIN: u64 = 4096;

pub struct Overlay {
    file: File,
    size: u64,
    /// One bit per grain: written to the overlay.
    written: RwLock<Vec<u64>>,
    /// Writes that cover part of a grain read, merge and write it back.
    write_lock: Mutex<()>,
}

/// Ties the overlay at `path` to the snapshot it is written over, in the
/// file beside it, `<overlay>.base`. Writes made over one snapshot mean
/// nothing over another (committed there they would mix two disks), so
/// an overlay already tied to another snapshot is refused. An overlay made
/// before this record existed is tied on first use.
fn bind_base(path: &Path, base: &str) -> io::Result<()> {
    let side = record_of(path);
    // A record left beside an overlay that was deleted (or never written)
    // binds nothing.
    if std::fs::metadata(path).map_or(true, |m| m.len() == 0) {
        return write_synced(&side, &format!("{base}\n"));
    }
    match std::fs::read_to_string(&side) {
        Ok(s) if first_line(&s) == base => Ok(()),
        Ok(s) => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "{} holds writes made over snapshot {}, not over {base}",
                path.display(),
                first_line(&s)
            ),
        )),
        // Bytes without the record of what they were written over: not an
        // overlay this program made (or its record was lost). Reading them
        // over any snapshot would mix two disks.
        Err(e) if e.kind() == io::ErrorKind::NotFound => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "{} is not an overlay Cairn made ({} is missing): give a new file",
                path.display(),
                side.display()
            ),
        )),
        Err(e) => Err(e),
    }
}

/// The overlay keeps no list of what was written: its file's allocated
/// ranges are that list. That holds only where a 4 KiB write allocates
/// exactly 4 KiB and holes are reported (ext4, XFS, Btrfs, tmpfs); on
/// ZFS (128 KiB records) or over NFS a restart would misread it. Checked
/// with a probe file beside the overlay before one is made.
fn probe_grains(path: &Path) -> io::Result<()> {
    let mut name = path.file_name().unwrap_or_default().to_owned();
    name.push(".cairn-probe");
    let probe = path.with_file_name(name);
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&probe)?;
    let result = (|| {
        f.set_len(16 * GRAIN)?;
        f.write_all_at(&[0x5a; GRAIN as usize], 5 * GRAIN)?;
        cairn_vault::sparse::data_ranges(&f, 16 * GRAIN)
    })();
    let _ = std::fs::remove_file(&probe);
    match result? {
        Some(r) if r == [(5 * GRAIN, 6 * GRAIN)] => Ok(()),
        _ => Err(io::Error::new(
            io::ErrorKind::Unsupported,
            format!(
                "{}: this filesystem does not keep 4 KiB writes apart from holes, which the overlay relies on; put the overlay on ext4, XFS, Btrfs or tmpfs",
                path.display()
            ),
        )),
    }
}

/// The record beside an overlay: `<overlay>.base`.
fn record_of(path: &Path) -> std::path::PathBuf {
    let mut side = path.as_os_str().to_owned();
    side.push(".base");
    std::path::PathBuf::from(side)
}

/// Writes `text` to `path` whole: a temporary file, synced, renamed.
fn write_synced(path: &Path, text: &str) -> io::Result<()> {
    let tmp = path.with_extension("base.tmp");
    let mut f = File::create(&tmp)?;
    std::io::Write::write_all(&mut f, text.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or_default().trim()
}

/// Which file the overlay is: its inode and, where the filesystem keeps
/// it, its birth time (a device number can change across reboots).
fn identity(file: &File) -> io::Result<String> {
    use std::os::unix::fs::MetadataExt;
    let m = file.metadata()?;
    let born = m
        .created()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    Ok(format!("file {} {born}", m.ino()))
}

/// The overlay's record of what was written is the file's own allocation,
/// which a copy does not keep: `cp` and `rsync -S` make holes of written
/// zeros (the snapshot's bytes show through again), `cp --sparse=never`
/// or `tar` allocate everything (the whole disk reads as zeros). So the
/// file is tied to the one the writes went to, in the record beside it,
/// and a copy is refused instead of silently read wrong. (A rename keeps
/// the file, and the record goes with it.)
fn tie_to_file(path: &Path, file: &File) -> io::Result<()> {
    let side = record_of(path);
    let record = std::fs::read_to_string(&side)?;
    let now = identity(file)?;
    // The same inode, and the same birth time where both sides know it
    // (a sandbox that blocks statx, an old kernel, reads none).
    let same = |was: &str| {
        let parts = |s: &str| {
            let mut w = s.split_whitespace().skip(1);
            (
                w.next().map(str::to_string),
                w.next().unwrap_or("0").to_string(),
            )
        };
        let ((a_ino, a_born), (b_ino, b_born)) = (parts(was), parts(&now));
        a_ino.is_some() && a_ino == b_ino && (a_born == "0" || b_born == "0" || a_born == b_born)
    };
    match record.lines().nth(1).map(str::trim) {
        Some(was) if same(was) => Ok(()),
        Some(_) => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "{} is a copy of the overlay the writes went to, not that file: an overlay keeps which blocks were written in its own allocation, which copies (cp, rsync, tar, a move to another filesystem) do not keep, so it would read wrong. Use the original file; to keep what was written elsewhere, `cairn commit` it into the vault",
                path.display()
            ),
        )),
        // Made before this record existed, or just now: tied from here on.
        None => write_synced(&side, &format!("{}\n{now}\n", first_line(&record))),
    }
}

impl Overlay {
    /// Opens (or creates) the overlay of a disk of `size` bytes, written
    /// over snapshot `base` (recorded beside it; see `bind_base`).
    pub fn open(path: &Path, size: u64, base: &str) -> io::Result<Self> {
        bind_base(path, base)?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        // One user at a time: a commit taken while an export still
        // writes would capture a half-written disk, and two exports
        // writing one overlay would interleave their guests' writes.
        // (Released when the file closes, also when a process dies.)
        if let Err(e) = file.try_lock() {
            return Err(match e {
                std::fs::TryLockError::WouldBlock => io::Error::new(
                    io::ErrorKind::ResourceBusy,
                    format!(
                        "{} is in use (a writable export, a boot or a commit has it open): stop that first",
                        path.display()
                    ),
                ),
                std::fs::TryLockError::Error(e) => e,
            });
        }
        tie_to_file(path, &file)?;
        let len = file.metadata()?.len();
        if len == 0 {
            probe_grains(path)?;
            file.set_len(size)?;
        } else if len != size {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "{} is an overlay of a {len}-byte disk, not of this {size}-byte one",
                    path.display()
                ),
            ));
        }
        let grains = size.div_ceil(GRAIN) as usize;
        let mut bits = vec![0u64; grains.div_ceil(64)];
        let ranges = cairn_vault::sparse::data_ranges(&file, size)?.ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::Unsupported,
                format!(
                    "{}: its filesystem cannot report holes, which the overlay needs",
                    path.display()
                ),
            )
        })?;
        for (start, end) in ranges {
            for g in start / GRAIN..end.div_ceil(GRAIN) {
                bits[(g / 64) as usize] |= 1 << (g % 64);
            }
        }
        Ok(Overlay {
            file,
            size,
            written: RwLock::new(bits),
            write_lock: Mutex::new(()),
        })
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    fn is_written(bits: &[u64], grain: u64) -> bool {
        bits[(grain / 64) as usize] & (1 << (grain % 64)) != 0
    }

    /// Bytes written so far (whole grains).
    pub fn written_bytes(&self) -> u64 {
        self.written
            .read()
            .unwrap()
            .iter()
            .map(|w| w.count_ones() as u64)
            .sum::<u64>()
            * GRAIN
    }

    /// Reads through the overlay: written grains from the file, the rest
    /// from `base`.
    pub fn read_at(&self, base: &dyn BlockSource, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let bits = self.written.read().unwrap();
        let mut done = 0usize;
        while done < buf.len() {
            let pos = offset + done as u64;
            let grain = pos / GRAIN;
            let written = Self::is_written(&bits, grain);
            // Extend over grains in the same state.
            let mut end = (grain + 1) * GRAIN;
            while end < offset + buf.len() as u64 && Self::is_written(&bits, end / GRAIN) == written
            {
                end += GRAIN;
            }
            let n = ((end - pos) as usize).min(buf.len() - done);
            if written {
                self.file.read_exact_at(&mut buf[done..done + n], pos)?;
            } else {
                base.read_exact_at(pos, &mut buf[done..done + n])?;
            }
            done += n;
        }
        Ok(())
    }

    /// Writes to the overlay only; partial grains are completed from what
    /// the disk shows there now.
    pub fn write_at(&self, base: &dyn BlockSource, offset: u64, data: &[u8]) -> io::Result<()> {
        if offset
            .checked_add(data.len() as u64)
            .is_none_or(|e| e > self.size)
        {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "write past the end of the disk",
            ));
        }
        // NBD allows empty writes; there is no grain to touch.
        if data.is_empty() {
            return Ok(());
        }
        let _guard = self.write_lock.lock().unwrap();
        let first = offset / GRAIN;
        let last = (offset + data.len() as u64).div_ceil(GRAIN);
        let start = first * GRAIN;
        let end = (last * GRAIN).min(self.size);
        let mut whole = vec![0u8; (end - start) as usize];
        // Only the edge grains need what was there before.
        for g in [first, last - 1] {
            let (gs, ge) = (g * GRAIN, ((g + 1) * GRAIN).min(self.size));
            if gs < offset || ge > offset + data.len() as u64 {
                let at = (gs - start) as usize;
                self.read_at(base, gs, &mut whole[at..at + (ge - gs) as usize])?;
            }
        }
        whole[(offset - start) as usize..(offset - start) as usize + data.len()]
            .copy_from_slice(data);
        self.file.write_all_at(&whole, start)?;
        let mut bits = self.written.write().unwrap();
        for g in first..last {
            bits[(g / 64) as usize] |= 1 << (g % 64);
        }
        Ok(())
    }

    pub fn flush(&self) -> io::Result<()> {
        self.file.sync_data()
    }
}

/// A snapshot seen through an optional overlay: what an export serves.
pub struct OverlayDisk {
    pub base: Arc<dyn BlockSource>,
    pub overlay: Option<Arc<Overlay>>,
}

impl BlockSource for OverlayDisk {
    fn size(&self) -> u64 {
        self.base.size()
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        let size = self.size();
        if offset >= size {
            return Ok(0);
        }
        let n = (buf.len() as u64).min(size - offset) as usize;
        match &self.overlay {
            Some(o) => o.read_at(self.base.as_ref(), offset, &mut buf[..n])?,
            None => self.base.read_exact_at(offset, &mut buf[..n])?,
        }
        Ok(n)
    }

    fn extents(&self, offset: u64, len: u64) -> Vec<Extent> {
        let base = self.base.extents(offset, len);
        let Some(o) = &self.overlay else { return base };
        // Written grains are data, whatever the base holds there.
        let bits = o.written.read().unwrap();
        let mut out: Vec<Extent> = Vec::new();
        for e in base {
            if !e.zero {
                push_extent(&mut out, e);
                continue;
            }
            let mut pos = e.offset;
            while pos < e.offset + e.len {
                let g_end = ((pos / GRAIN + 1) * GRAIN).min(e.offset + e.len);
                let zero = e.zero && !Overlay::is_written(&bits, pos / GRAIN);
                push_extent(
                    &mut out,
                    Extent {
                        offset: pos,
                        len: g_end - pos,
                        zero,
                    },
                );
                pos = g_end;
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_guest::io::MemDisk;

    /// NBD clients may send empty writes (the fuzzer's first find: the
    /// edge-grain arithmetic underflowed at offset 0).
    #[test]
    fn empty_writes_touch_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let base = MemDisk(vec![7u8; 3 * GRAIN as usize]);
        let o = Overlay::open(&dir.path().join("o"), base.size(), "test").unwrap();
        for offset in [0, 100, GRAIN, base.size()] {
            o.write_at(&base, offset, &[]).unwrap();
        }
        assert_eq!(o.written_bytes(), 0);
        assert!(o.write_at(&base, base.size() + 1, &[]).is_err());
        o.write_at(&base, GRAIN + 1, b"xy").unwrap();
        let mut buf = vec![0u8; 4];
        o.read_at(&base, GRAIN, &mut buf).unwrap();
        assert_eq!(buf, [7, b'x', b'y', 7]);
        assert_eq!(o.written_bytes(), GRAIN);
    }

    /// A copy of an overlay (holes where zeros were written, or nothing
    /// left a hole) is refused; the file itself, renamed with its record,
    /// opens and reads what was written.
    #[test]
    fn a_copied_overlay_is_refused_and_a_renamed_one_kept() {
        let dir = tempfile::tempdir().unwrap();
        let base = MemDisk(vec![7u8; 8 * GRAIN as usize]);
        let path = dir.path().join("o");
        let o = Overlay::open(&path, base.size(), "snap").unwrap();
        o.write_at(&base, GRAIN, &[0u8; GRAIN as usize]).unwrap();
        o.flush().unwrap();
        drop(o);
        let copy = dir.path().join("copy");
        std::fs::copy(&path, &copy).unwrap();
        std::fs::copy(record_of(&path), record_of(&copy)).unwrap();
        let err = Overlay::open(&copy, base.size(), "snap").err().unwrap();
        assert!(
            err.to_string().contains("is a copy of the overlay"),
            "{err}"
        );
        let moved = dir.path().join("moved");
        std::fs::rename(&path, &moved).unwrap();
        std::fs::rename(record_of(&path), record_of(&moved)).unwrap();
        let o = Overlay::open(&moved, base.size(), "snap").unwrap();
        let mut buf = vec![9u8; 2 * GRAIN as usize];
        o.read_at(&base, 0, &mut buf).unwrap();
        assert!(buf[..GRAIN as usize].iter().all(|&b| b == 7));
        assert!(buf[GRAIN as usize..].iter().all(|&b| b == 0));
    }
}
