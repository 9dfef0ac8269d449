//! A file cut into content-defined chunks without reading its holes.
//!
//! A folder that holds virtual machines' disk images holds sparse files:
//! a 100 GiB image with 3 GiB written. Read through `read(2)`, every hole
//! costs the kernel a page of zeros and the chunker a scan, the whole
//! logical size of it. Here holes (found with SEEK_DATA/SEEK_HOLE as the
//! reading reaches them) are zeros from memory, and where a largest chunk's
//! scanned part lies wholly inside a hole its cut is known without looking:
//! FastCDC decides a cut from the bytes past the smallest chunk size only,
//! so over zeros it cuts where it cuts on any other zeros.
//!
//! The chunks are exactly those `fastcdc::v2020::StreamCDC` makes of the
//! same bytes (the same cut function over the same windows), so a sparse
//! file and a copy of it written out whole deduplicate against each other.

use fastcdc::v2020::{Normalization, cut, select_masks};
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;

/// FastCDC's sizes and masks, as `StreamCDC::new` chooses them.
#[derive(Clone, Copy)]
struct Cuts {
    min: usize,
    avg: usize,
    max: usize,
    mask_s: u64,
    mask_l: u64,
}

impl Cuts {
    fn new(min: usize, avg: usize, max: usize) -> Cuts {
        let (mask_s, mask_l) = select_masks(avg, Normalization::Level1);
        Cuts {
            min,
            avg,
            max,
            mask_s,
            mask_l,
        }
    }

    /// Where the next chunk of `window` (at most `max` bytes, fewer only at
    /// the end of the file) ends.
    fn cut(&self, window: &[u8]) -> usize {
        let (s, l) = (self.mask_s, self.mask_l);
        cut(window, self.min, self.avg, self.max, s, l, s << 1, l << 1).1
    }
}

/// Holes shorter than this are read like data: finding each costs two
/// system calls, more than reading its zeros.
const SMALL_HOLE: u64 = 256 * 1024;

/// What lies at an offset of the file: data or a hole, up to `end`.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Region {
    Data { end: u64 },
    Hole { end: u64 },
}

/// A regular file read from its start, its holes found as the reading
/// reaches them (one pair of `lseek` calls per extent, no list kept).
struct SparseFile {
    file: File,
    /// The size when opened: holes are looked for below it; past it the
    /// file is read until it ends (it may have grown).
    size: u64,
    /// The last region found, as `(start, region)`.
    last: Option<(u64, Region)>,
}

impl SparseFile {
    fn region(&mut self, pos: u64) -> Region {
        if let Some((start, r)) = self.last {
            let end = match r {
                Region::Data { end } | Region::Hole { end } => end,
            };
            if (start..end).contains(&pos) {
                return r;
            }
        }
        let r = self.find(pos);
        self.last = Some((pos, r));
        r
    }

    fn find(&self, pos: u64) -> Region {
        const ALL: Region = Region::Data { end: u64::MAX };
        if pos >= self.size || pos > i64::MAX as u64 {
            return ALL;
        }
        let fd = self.file.as_raw_fd();
        // SAFETY: lseek on a file descriptor this value owns; it moves the
        // file position only, which no read here uses (reads are pread).
        let data = unsafe { libc::lseek(fd, pos as i64, libc::SEEK_DATA) };
        if data < 0 {
            return match io::Error::last_os_error().raw_os_error() {
                // No data after `pos`: a hole to the end, or `pos` is past
                // the end of a file cut shorter since it was opened (then
                // reading ends there, and the backup says the size moved).
                Some(libc::ENXIO) => match self.file.metadata() {
                    Ok(m) if m.len() > pos => Region::Hole {
                        end: self.size.min(m.len()),
                    },
                    _ => ALL,
                },
                // A filesystem that cannot tell: everything is data.
                _ => ALL,
            };
        }
        let data = data as u64;
        // A hole too small to be worth a call of its own (a database's
        // free pages) is read through, as data.
        if data > pos && data - pos >= SMALL_HOLE {
            return Region::Hole {
                end: data.min(self.size),
            };
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(fd, data as i64, libc::SEEK_HOLE) };
        match hole {
            h if h > data as i64 => Region::Data { end: h as u64 },
            _ => ALL,
        }
    }

    /// Whether `a..b` lies wholly inside one hole.
    fn hole_covers(&mut self, a: u64, b: u64) -> bool {
        matches!(self.region(a), Region::Hole { end } if end >= b)
    }

    /// Fills `buf` from `pos`: zeros where holes are, the file's bytes
    /// elsewhere. Returns how many bytes were filled (fewer at the end of
    /// the file) and how many of them were read from data.
    fn fill(&mut self, pos: u64, buf: &mut [u8]) -> io::Result<(usize, u64)> {
        let (mut done, mut read) = (0usize, 0u64);
        while done < buf.len() {
            let at = pos + done as u64;
            let left = buf.len() - done;
            match self.region(at) {
                Region::Hole { end } => {
                    let n = (end - at).min(left as u64) as usize;
                    buf[done..done + n].fill(0);
                    done += n;
                }
                Region::Data { end } => {
                    let n = (end - at).min(left as u64) as usize;
                    match self.file.read_at(&mut buf[done..done + n], at) {
                        Ok(0) => break,
                        Ok(k) => {
                            done += k;
                            read += k as u64;
                        }
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => return Err(e),
                    }
                }
            }
        }
        Ok((done, read))
    }
}

/// One chunk of the file.
pub struct Chunk<'a> {
    pub data: &'a [u8],
    /// Every byte of it came from a hole (it is all zeros, and nothing was
    /// read for it).
    pub hole: bool,
    /// Bytes of it read from the file's data (the rest were holes).
    pub read: u64,
}

/// The chunks of a file, in order.
pub struct SparseCdc {
    src: SparseFile,
    cuts: Cuts,
    /// Bytes from `at` on, filled but not yet given out as chunks.
    buf: Vec<u8>,
    len: usize,
    /// How many bytes the last chunk given out took from the front of
    /// `buf`: dropped when the next one is asked for.
    given: usize,
    at: u64,
    /// The cut of a largest chunk whose scanned part is zeros, and the
    /// zeros such a chunk is given out from: made when a file first has a
    /// hole that large (most files are small and have none, and a share's
    /// tens of thousands of them would each pay for a scan of `max` zeros).
    zero_cut: Option<usize>,
    zeros: Vec<u8>,
    eof: bool,
}

impl SparseCdc {
    /// `min`, `avg`, `max`: the vault's FastCDC sizes (even, as FastCDC
    /// requires). `size`: the file's size when opened.
    pub fn new(file: File, size: u64, min: usize, avg: usize, max: usize) -> SparseCdc {
        let cuts = Cuts::new(min, avg, max);
        SparseCdc {
            src: SparseFile {
                file,
                size,
                last: None,
            },
            cuts,
            // A window of the file's size where it is smaller (one byte
            // more, to see its end in one read); one that grows meanwhile
            // is read on through the same window.
            buf: vec![0u8; usize::try_from(size).map_or(max, |s| s.saturating_add(1).min(max))],
            len: 0,
            given: 0,
            at: 0,
            zero_cut: None,
            zeros: Vec::new(),
            eof: false,
        }
    }

    /// The file being chunked.
    pub fn file(&self) -> &File {
        &self.src.file
    }

    /// The next chunk; None at the end of the file.
    pub fn next_chunk(&mut self) -> io::Result<Option<Chunk<'_>>> {
        if self.given > 0 {
            self.buf.copy_within(self.given..self.len, 0);
            self.len -= self.given;
            self.given = 0;
        }
        let (min, max) = (self.cuts.min as u64, self.cuts.max as u64);
        // A largest window (so the file goes on past it) whose scanned part
        // is a hole: the cut is the one zeros make, whatever comes first.
        if self.len == 0
            && !self.eof
            && self.at + max <= self.src.size
            && self.src.hole_covers(self.at + min, self.at + max)
        {
            let n = match self.zero_cut {
                Some(n) => n,
                None => {
                    self.zeros = vec![0u8; max as usize];
                    *self.zero_cut.insert(self.cuts.cut(&self.zeros))
                }
            };
            let start = self.at;
            self.at += n as u64;
            if self.src.hole_covers(start, start + n as u64) {
                return Ok(Some(Chunk {
                    data: &self.zeros[..n],
                    hole: true,
                    read: 0,
                }));
            }
            let (filled, read) = self.src.fill(start, &mut self.buf[..n])?;
            if filled < n {
                // Shorter than it was a moment ago: give what is there.
                self.eof = true;
            }
            self.given = filled;
            self.len = filled;
            return Ok((filled > 0).then(|| Chunk {
                data: &self.buf[..filled],
                hole: false,
                read,
            }));
        }
        let mut read = 0;
        loop {
            if !self.eof && self.len < self.buf.len() {
                let pos = self.at + self.len as u64;
                let (filled, r) = self.src.fill(pos, &mut self.buf[self.len..])?;
                if self.len + filled < self.buf.len() {
                    self.eof = true;
                }
                self.len += filled;
                read += r;
            }
            // A file that grew past its size at open has filled the window
            // made for that size: it gets a largest one, and cuts as any
            // file of its new size does.
            if self.eof || self.len < self.buf.len() || self.buf.len() >= self.cuts.max {
                break;
            }
            self.buf.resize(self.cuts.max, 0);
        }
        if self.len == 0 {
            return Ok(None);
        }
        let n = self.cuts.cut(&self.buf[..self.len]);
        self.given = n;
        self.at += n as u64;
        // Bytes read count against the chunk they were read for: what was
        // read ahead into the buffer is counted now, once.
        Ok(Some(Chunk {
            data: &self.buf[..n],
            hole: false,
            read,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    const MIN: usize = 16 * 1024;
    const AVG: usize = 64 * 1024;
    const MAX: usize = 256 * 1024;

    /// The chunks as `StreamCDC` makes them of the file read whole.
    fn streamed(path: &std::path::Path) -> Vec<Vec<u8>> {
        let f = File::open(path).unwrap();
        fastcdc::v2020::StreamCDC::new(f, MIN, AVG, MAX)
            .map(|c| c.unwrap().data)
            .collect()
    }

    fn sparse(path: &std::path::Path) -> (Vec<Vec<u8>>, u64, u64) {
        let f = File::open(path).unwrap();
        let size = f.metadata().unwrap().len();
        let mut cdc = SparseCdc::new(f, size, MIN, AVG, MAX);
        let (mut out, mut read, mut holes) = (Vec::new(), 0, 0);
        while let Some(c) = cdc.next_chunk().unwrap() {
            read += c.read;
            if c.hole {
                holes += c.data.len() as u64;
            }
            out.push(c.data.to_vec());
        }
        (out, read, holes)
    }

    fn noise(n: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect()
    }

    /// Data, holes of every size around the chunk sizes, zeros written
    /// out, and a hole at the end: the same chunks as reading it all, and
    /// only the data read.
    #[test]
    fn cuts_a_sparse_file_as_reading_it_whole_does() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk.img");
        let mut f = File::create(&path).unwrap();
        let mut at = 0u64;
        let mut data = 0u64;
        let pieces: [(u64, usize); 9] = [
            (0, 100_000),
            (3 << 20, 5_000),
            (MIN as u64 + 4096, 70_000),
            (MAX as u64 * 5 + 12_288, 300_000),
            (4096, 20_000),
            (MAX as u64 - 8192, 1),
            (8 << 20, 200_000),
            (MAX as u64 * 2, 0),
            (1 << 20, 0),
        ];
        for (i, (gap, len)) in pieces.into_iter().enumerate() {
            at += gap;
            at = at.div_ceil(4096) * 4096;
            f.write_all_at(&noise(len, i as u64 + 7), at).unwrap();
            data += len as u64;
            at += len as u64;
        }
        // Zeros written as data are read, not skipped.
        f.write_all_at(&vec![0u8; 600_000], at + (1 << 20)).unwrap();
        f.set_len(at + (6 << 20)).unwrap();
        f.flush().unwrap();
        drop(f);
        let whole = streamed(&path);
        let (chunks, read, holes) = sparse(&path);
        assert_eq!(chunks.len(), whole.len());
        assert!(chunks == whole, "the chunks differ from StreamCDC's");
        let size = std::fs::metadata(&path).unwrap().len();
        // Filesystems keep data in blocks: a little around each piece is
        // read too, never the holes.
        assert!(read >= data + 600_000, "read {read} of {data}");
        assert!(read < size / 3, "read {read} of a {size}-byte file");
        assert!(holes > size / 2, "{holes} bytes of hole chunks");
        assert_eq!(
            chunks.iter().map(|c| c.len() as u64).sum::<u64>(),
            size,
            "every byte is in a chunk"
        );
    }

    /// No holes at all, and a file that is one hole: the same chunks.
    #[test]
    fn dense_and_empty_files_cut_as_streamed() {
        let dir = tempfile::tempdir().unwrap();
        let dense = dir.path().join("dense");
        std::fs::write(&dense, noise(3 * MAX + 12_345, 3)).unwrap();
        let (chunks, read, holes) = sparse(&dense);
        assert!(chunks == streamed(&dense));
        assert_eq!(read, 3 * MAX as u64 + 12_345);
        assert_eq!(holes, 0);

        let hole = dir.path().join("hole");
        File::create(&hole).unwrap().set_len(40 << 20).unwrap();
        let (chunks, read, _) = sparse(&hole);
        assert!(chunks == streamed(&hole));
        assert_eq!(read, 0);

        let empty = dir.path().join("empty");
        File::create(&empty).unwrap();
        assert!(sparse(&empty).0.is_empty());
    }

    /// A share holds tens of thousands of small files: each costs memory
    /// for its own bytes, not a largest chunk's window and zeros (a scan of
    /// which cost ~0.4 ms a file), and still cuts as streamed.
    #[test]
    fn a_small_file_costs_its_size() {
        let dir = tempfile::tempdir().unwrap();
        let small = dir.path().join("small");
        std::fs::write(&small, noise(5_000, 4)).unwrap();
        let f = File::open(&small).unwrap();
        let mut cdc = SparseCdc::new(f, 5_000, MIN, AVG, MAX);
        assert!(cdc.buf.len() <= 5_001 && cdc.zeros.is_empty());
        let mut got = Vec::new();
        while let Some(c) = cdc.next_chunk().unwrap() {
            got.push(c.data.to_vec());
        }
        assert!(cdc.zeros.is_empty() && cdc.zero_cut.is_none());
        assert!(got == streamed(&small));

        // One that grows while it is read (empty when opened, a download
        // landing in the share) cuts as its grown self, not in bytes.
        let grown = dir.path().join("grown");
        File::create(&grown).unwrap();
        let f = File::open(&grown).unwrap();
        let mut cdc = SparseCdc::new(f, 0, MIN, AVG, MAX);
        std::fs::write(&grown, noise(3 * MAX + 777, 5)).unwrap();
        let mut got = Vec::new();
        while let Some(c) = cdc.next_chunk().unwrap() {
            got.push(c.data.to_vec());
        }
        assert!(got == streamed(&grown), "{} chunks", got.len());
    }
}
