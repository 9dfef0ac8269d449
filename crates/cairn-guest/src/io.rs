//! Reading a window of a disk (a partition) through `BlockSource`, and the
//! `Read + Seek` (+ refused `Write`) adapter that crate readers need.

use cairn_vault::BlockSource;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::sync::Arc;

/// A partition: `len` bytes of `disk` from `start`.
#[derive(Clone)]
pub struct Slice {
    pub disk: Arc<dyn BlockSource>,
    pub start: u64,
    pub len: u64,
}

impl Slice {
    pub fn new(disk: Arc<dyn BlockSource>, start: u64, len: u64) -> Self {
        Slice { disk, start, len }
    }

    /// Reads exactly `buf.len()` bytes at `offset` within the slice.
    pub fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let end = offset.checked_add(buf.len() as u64);
        if end.is_none_or(|e| e > self.len) {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "read of {} bytes at {offset} is past the end of the partition ({} bytes)",
                    buf.len(),
                    self.len
                ),
            ));
        }
        self.disk.read_exact_at(self.start + offset, buf)
    }

    pub fn read_vec(&self, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        let mut v = vec![0u8; len];
        self.read_exact_at(offset, &mut v)?;
        Ok(v)
    }

    /// Offset on the whole disk of a byte of this slice.
    pub fn disk_offset(&self, offset: u64) -> u64 {
        self.start + offset
    }
}

/// `Read + Seek` over a slice for readers built on std I/O. Writes fail:
/// the vault is never written through a guest reader.
pub struct SliceReader {
    slice: Slice,
    pos: u64,
    zero_padded: bool,
    /// Reads past the end fail instead of returning end-of-file.
    strict: bool,
    /// Bytes left to read, shared with the reader's owner (see
    /// [`ReadBudget`]); None: no limit.
    budget: Option<ReadBudget>,
    /// Where reads start, for the reader's owner (see [`ReadLog`]).
    log: Option<ReadLog>,
}

/// The offsets a third-party filesystem reader's reads start at, recorded
/// while armed: its owner then sees which clusters a file's read went
/// through (a FAT chain that loops back reads one of them twice, where
/// the reader itself would return the same bytes over and over).
#[derive(Clone, Default)]
pub struct ReadLog(std::sync::Arc<std::sync::Mutex<Option<Vec<u64>>>>);

impl ReadLog {
    /// Starts recording, forgetting what an earlier recording left.
    pub fn arm(&self) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(Vec::new());
    }

    /// Stops recording; the offsets read since [`ReadLog::arm`].
    pub fn disarm(&self) -> Vec<u64> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .unwrap_or_default()
    }

    fn note(&self, at: u64) {
        if let Some(v) = self.0.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
            v.push(at);
        }
    }
}

/// A limit on what a third-party filesystem reader may read for one
/// directory listing. Its loops are its own (a directory's clusters
/// chained to themselves, an index node naming itself as its child) and
/// may never return; every step reads, so a spent budget ends them with an
/// error.
#[derive(Clone, Default)]
pub struct ReadBudget(std::sync::Arc<std::sync::atomic::AtomicU64>);

impl ReadBudget {
    /// Bytes one NTFS directory listing may read: a real directory of
    /// 100,000 files reads ~120 MiB (its index and a file record each).
    pub const NTFS_LISTING: u64 = 1 << 30;
    /// Bytes one FAT directory listing may read: a FAT directory holds at
    /// most 65,536 entries of 32 bytes (2 MiB), plus its chain in the FAT.
    pub const FAT_LISTING: u64 = 32 << 20;

    /// Allows `bytes` more reading (u64::MAX: no limit).
    pub fn allow(&self, bytes: u64) {
        self.0.store(bytes, std::sync::atomic::Ordering::Relaxed);
    }

    /// Bytes still allowed.
    pub fn left(&self) -> u64 {
        self.0.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Limits reading to `bytes` until the guard drops.
    pub fn listing(&self, bytes: u64) -> ListingGuard<'_> {
        self.allow(bytes);
        ListingGuard(self)
    }

    fn take(&self, n: u64) -> io::Result<()> {
        use std::sync::atomic::Ordering::Relaxed;
        self.0
            .fetch_update(Relaxed, Relaxed, |left| left.checked_sub(n))
            .map(|_| ())
            .map_err(|_| {
                io::Error::other("read too much for one listing: the filesystem's structures loop")
            })
    }
}

impl SliceReader {
    pub fn new(slice: Slice) -> Self {
        SliceReader {
            slice,
            pos: 0,
            zero_padded: false,
            strict: false,
            budget: None,
            log: None,
        }
    }

    /// Reads count against `budget`.
    pub fn with_budget(mut self, budget: ReadBudget) -> Self {
        self.budget = Some(budget);
        self
    }

    /// Reads are noted in `log` while it is armed.
    pub fn with_log(mut self, log: ReadLog) -> Self {
        self.log = Some(log);
        self
    }

    /// Reads past the end fail: for file data, where a reader that takes
    /// a read of nothing for the end of one run would go on with the next
    /// run's bytes in its place.
    pub fn strict(slice: Slice) -> Self {
        SliceReader {
            strict: true,
            ..SliceReader::new(slice)
        }
    }

    /// Reads past the end return zeros instead of end-of-file. For readers
    /// (the `ntfs` crate) that treat an I/O error in the middle of a record
    /// as impossible and panic: zeros fail their checks as ordinary errors.
    pub fn zero_padded(slice: Slice) -> Self {
        SliceReader {
            slice,
            pos: 0,
            zero_padded: true,
            strict: false,
            budget: None,
            log: None,
        }
    }
}

/// Lifts the limit of [`ReadBudget::listing`] when dropped.
pub struct ListingGuard<'a>(&'a ReadBudget);

impl Drop for ListingGuard<'_> {
    fn drop(&mut self) {
        self.0.allow(u64::MAX);
    }
}

impl Read for SliceReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Some(b) = &self.budget {
            b.take(buf.len() as u64)?;
        }
        if let Some(l) = &self.log {
            l.note(self.pos);
        }
        if self.pos >= self.slice.len {
            if self.zero_padded && !buf.is_empty() {
                buf.fill(0);
                self.pos = self.pos.saturating_add(buf.len() as u64);
                return Ok(buf.len());
            }
            if self.strict && !buf.is_empty() {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "past the end of the volume",
                ));
            }
            return Ok(0);
        }
        let n = (buf.len() as u64).min(self.slice.len - self.pos) as usize;
        self.slice.read_exact_at(self.pos, &mut buf[..n])?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for SliceReader {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let new = match to {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::End(d) => self.slice.len.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        self.pos = new
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "seek before the start"))?;
        Ok(self.pos)
    }
}

impl Write for SliceReader {
    fn write(&mut self, _: &[u8]) -> io::Result<usize> {
        Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            "snapshots are read-only",
        ))
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A disk held in memory, for tests and fuzzing.
pub struct MemDisk(pub Vec<u8>);

impl BlockSource for MemDisk {
    fn size(&self) -> u64 {
        self.0.len() as u64
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        let Some(src) = self.0.get(offset.min(self.0.len() as u64) as usize..) else {
            return Ok(0);
        };
        let n = src.len().min(buf.len());
        buf[..n].copy_from_slice(&src[..n]);
        Ok(n)
    }
    fn extents(&self, offset: u64, len: u64) -> Vec<cairn_vault::Extent> {
        vec![cairn_vault::Extent {
            offset,
            len: len.min(self.size().saturating_sub(offset)),
            zero: false,
        }]
    }
}
