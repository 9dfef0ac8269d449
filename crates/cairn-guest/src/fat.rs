//! FAT12/16/32 with long names, through the `fatfs` crate. FAT keeps no
//! owner, permissions or stable file id; renames are found by content.

use crate::error::{GuestError, Result, corrupt};
use crate::io::{ReadBudget, ReadLog, Slice, SliceReader};
use crate::model::{FileEntry, FileKind, Filesystem, join};
use std::io::{Read, Seek, SeekFrom};
use std::sync::Mutex;

/// A crafted FAT can chain a directory back into itself, or many
/// directories to one (FAT keeps no ids to tell): these bound the walk.
/// FAT volumes (EFI partitions, removable media) hold far fewer files.
const MAX_ENTRIES: usize = 250_000;
const MAX_DEPTH: usize = 256;

type Fs = fatfs::FileSystem<SliceReader>;

/// `fatfs::FileSystem` is not `Send` only because its options hold
/// `&'static dyn` references to fatfs's default code-page converter and
/// time provider, which are stateless unit structs. Every use goes through
/// the `Mutex` below, one thread at a time.
struct SendFs(Fs);
unsafe impl Send for SendFs {}

impl std::ops::Deref for SendFs {
    type Target = Fs;
    fn deref(&self) -> &Fs {
        &self.0
    }
}

pub struct Fat {
    fs: Mutex<SendFs>,
    variant: &'static str,
    /// The filesystem's size: no file of an honest FAT is larger (FAT has
    /// no sparse files), while a cluster chain that loops reads on without
    /// end.
    size: u64,
    /// What `fatfs` may read for one listing: a directory whose clusters
    /// chain to themselves, full of deleted entries, is read without end
    /// inside its iterator.
    budget: ReadBudget,
    /// Where a file's read went (see `read_at`).
    log: ReadLog,
    geometry: Geometry,
}

/// Where the clusters lie, from the boot sector.
#[derive(Clone, Copy, Debug)]
struct Geometry {
    /// Volume offset of cluster 2, the first of the data region.
    data_start: u64,
    cluster_size: u64,
}

impl Geometry {
    fn of(b: &[u8]) -> Geometry {
        let u16_at = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]) as u64;
        let bps = u16_at(11);
        let fat_sectors = match u16_at(22) {
            0 => u32::from_le_bytes([b[36], b[37], b[38], b[39]]) as u64,
            n => n,
        };
        let root_sectors = (u16_at(17) * 32).div_ceil(bps);
        Geometry {
            data_start: (u16_at(14) + b[16] as u64 * fat_sectors + root_sectors) * bps,
            cluster_size: bps * b[13] as u64,
        }
    }

    /// The first data cluster read twice among reads starting at
    /// `offsets` (a chain that loops), if any.
    fn repeated_cluster(&self, offsets: &[u64]) -> Option<u64> {
        let mut seen = std::collections::HashSet::new();
        offsets
            .iter()
            .filter(|&&o| o >= self.data_start)
            .map(|&o| (o - self.data_start) / self.cluster_size + 2)
            .find(|&c| !seen.insert(c))
    }
}

/// A sane FAT boot sector: 55 AA, plausible BPB and a FAT type string.
pub fn probe(b: &[u8]) -> bool {
    if b.len() < 512 || b[510..512] != [0x55, 0xAA] {
        return false;
    }
    let bytes_per_sector = u16::from_le_bytes([b[11], b[12]]);
    let spc = b[13];
    let reserved = u16::from_le_bytes([b[14], b[15]]);
    let fats = b[16];
    matches!(bytes_per_sector, 512 | 1024 | 2048 | 4096)
        && spc.is_power_of_two()
        && reserved > 0
        && (1..=2).contains(&fats)
        && (&b[0x36..0x39] == b"FAT" || &b[0x52..0x57] == b"FAT32")
}

pub fn variant(b: &[u8]) -> &'static str {
    if &b[0x52..0x57] == b"FAT32" {
        "fat32"
    } else if &b[0x36..0x3B] == b"FAT12" {
        "fat12"
    } else {
        "fat16"
    }
}

fn mtime_ns(dt: fatfs::DateTime) -> i64 {
    // FAT stores local time without a zone; it is taken as UTC.
    let (y, m, d) = (
        dt.date.year as i64,
        dt.date.month as i64,
        dt.date.day as i64,
    );
    // Days from civil date (Howard Hinnant's algorithm).
    let y2 = if m <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146097 + doe - 719468;
    let secs =
        days * 86400 + dt.time.hour as i64 * 3600 + dt.time.min as i64 * 60 + dt.time.sec as i64;
    secs * 1_000_000_000 + dt.time.millis as i64 * 1_000_000
}

fn io_err(what: &str, e: std::io::Error) -> GuestError {
    GuestError::Corrupt(format!("fat: {what}: {e}"))
}

impl Fat {
    pub fn open(slice: Slice) -> Result<Self> {
        let head = slice.read_vec(0, 512)?;
        if !probe(&head) {
            return corrupt("fat: boot sector is not a FAT boot sector");
        }
        let variant = variant(&head);
        let size = slice.len;
        let budget = ReadBudget::default();
        budget.allow(u64::MAX);
        let log = ReadLog::default();
        let reader = SliceReader::new(slice)
            .with_budget(budget.clone())
            .with_log(log.clone());
        let fs = fatfs::FileSystem::new(reader, fatfs::FsOptions::new())
            .map_err(|e| io_err("mounting", e))?;
        Ok(Fat {
            fs: Mutex::new(SendFs(fs)),
            variant,
            size,
            budget,
            log,
            geometry: Geometry::of(&head),
        })
    }

    fn entry(path: Vec<u8>, e: &fatfs::DirEntry<SliceReader>) -> FileEntry {
        let kind = if e.is_dir() {
            FileKind::Dir
        } else {
            FileKind::File
        };
        FileEntry {
            path,
            kind,
            size: if kind == FileKind::File { e.len() } else { 0 },
            mode: None,
            uid: None,
            gid: None,
            mtime_ns: mtime_ns(e.modified()),
            file_id: None,
            link_target: None,
            extents: None,
            content_key: None,
            unsafe_name: false,
        }
    }

    fn list(
        &self,
        dir: &fatfs::Dir<SliceReader>,
        path: &[u8],
        count: &mut usize,
    ) -> Result<Vec<(FileEntry, Option<String>)>> {
        let _limit = self.budget.listing(ReadBudget::FAT_LISTING);
        let mut out = Vec::new();
        for e in dir.iter() {
            let e = e.map_err(|e| io_err("reading a directory", e))?;
            let name = e.file_name();
            if name == "." || name == ".." || name.is_empty() {
                continue;
            }
            *count += 1;
            if *count > MAX_ENTRIES {
                return corrupt("fat: more directory entries than any real volume (a loop?)");
            }
            let p = join(path, name.as_bytes());
            let unsafe_name = crate::model::is_unsafe_name(name.as_bytes());
            let sub =
                (e.is_dir() && !unsafe_name).then(|| String::from_utf8_lossy(&p).into_owned());
            let mut entry = Self::entry(p, &e);
            entry.unsafe_name = unsafe_name;
            out.push((entry, sub));
        }
        Ok(out)
    }
}

fn path_str(path: &[u8]) -> Result<&str> {
    std::str::from_utf8(path)
        .map_err(|_| GuestError::NotFound(String::from_utf8_lossy(path).into_owned()))
}

impl Filesystem for Fat {
    fn kind(&self) -> String {
        self.variant.into()
    }

    fn max_entries(&self) -> usize {
        MAX_ENTRIES
    }

    fn walk(&self) -> Result<Vec<FileEntry>> {
        let fs = self.fs.lock().unwrap_or_else(|p| p.into_inner());
        let root = fs.root_dir();
        let mut out = Vec::new();
        let mut count = 0;
        let mut same: std::collections::HashMap<u64, usize> = Default::default();
        let mut stack: Vec<(Vec<u8>, usize)> = vec![(Vec::new(), 0)];
        while let Some((path, depth)) = stack.pop() {
            let dir = if path.is_empty() {
                root.clone()
            } else {
                root.open_dir(path_str(&path)?)
                    .map_err(|e| io_err("opening a directory", e))?
            };
            let listed = self.list(&dir, &path, &mut count)?;
            if let Some(key) = crate::listing_key(listed.iter().map(|(e, _)| e)) {
                let n = same.entry(key).or_insert(0);
                *n += 1;
                if *n > crate::MAX_SAME_LISTINGS {
                    return corrupt(format!(
                        "fat: more than {} directories list what /{} lists (cross-linked?)",
                        crate::MAX_SAME_LISTINGS,
                        String::from_utf8_lossy(&path)
                    ));
                }
            }
            for (e, sub) in listed {
                if sub.is_some() {
                    if depth >= MAX_DEPTH {
                        return corrupt("fat: directories nested too deep (a loop?)");
                    }
                    stack.push((e.path.clone(), depth + 1));
                }
                out.push(e);
            }
        }
        out.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(out)
    }

    fn lookup(&self, path: &[u8]) -> Result<FileEntry> {
        if path.is_empty() {
            return Ok(FileEntry::root());
        }
        let (parent, name) = match path.iter().rposition(|&b| b == b'/') {
            Some(i) => (&path[..i], &path[i + 1..]),
            None => (&path[..0], path),
        };
        let fs = self.fs.lock().unwrap_or_else(|p| p.into_inner());
        let root = fs.root_dir();
        let dir = if parent.is_empty() {
            root
        } else {
            root.open_dir(path_str(parent)?)
                .map_err(|_| GuestError::NotFound(format!("/{}", String::from_utf8_lossy(path))))?
        };
        let mut count = 0;
        self.list(&dir, parent, &mut count)?
            .into_iter()
            .map(|(e, _)| e)
            .find(|e| e.name().eq_ignore_ascii_case(name))
            .ok_or_else(|| GuestError::NotFound(format!("/{}", String::from_utf8_lossy(path))))
    }

    fn read_dir(&self, path: &[u8]) -> Result<Vec<FileEntry>> {
        // FAT keeps no file ids to see a directory again by: a directory
        // chained to its own cluster is found by the depth it leads to.
        if path.split(|&b| b == b'/').count() >= MAX_DEPTH {
            return corrupt("fat: directories nested too deep (a loop?)");
        }
        let fs = self.fs.lock().unwrap_or_else(|p| p.into_inner());
        let root = fs.root_dir();
        let dir = if path.is_empty() {
            root
        } else {
            root.open_dir(path_str(path)?)
                .map_err(|_| GuestError::NotFound(format!("/{}", String::from_utf8_lossy(path))))?
        };
        let mut count = 0;
        let mut out: Vec<FileEntry> = self
            .list(&dir, path, &mut count)?
            .into_iter()
            .map(|(e, _)| e)
            .collect();
        out.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(out)
    }

    fn read_at(&self, entry: &FileEntry, offset: u64, buf: &mut [u8]) -> Result<usize> {
        if offset >= entry.size {
            return Ok(0);
        }
        if entry.size > self.size {
            return corrupt(format!(
                "fat: {} claims {} bytes, more than its filesystem holds",
                entry.display_path(),
                entry.size
            ));
        }
        let fs = self.fs.lock().unwrap_or_else(|p| p.into_inner());
        let mut f = fs
            .root_dir()
            .open_file(path_str(&entry.path)?)
            .map_err(|_| GuestError::NotFound(entry.display_path()))?;
        f.seek(SeekFrom::Start(offset))
            .map_err(|e| io_err("seeking in a file", e))?;
        let want = (buf.len() as u64).min(entry.size - offset) as usize;
        // A chain that loops back within the file's size reads its first
        // clusters over and over: every cluster this read goes through is
        // noted (the reader holds the lock, so the notes are its own), and
        // one read twice is damage, not data.
        self.log.arm();
        let read = self.read_all(&mut f, entry, offset, &mut buf[..want]);
        let went = self.log.disarm();
        let done = read?;
        if let Some(c) = self.geometry.repeated_cluster(&went) {
            return corrupt(format!(
                "fat: the clusters of {} loop (cluster {c} comes round again)",
                entry.display_path()
            ));
        }
        Ok(done)
    }
}

impl Fat {
    /// Fills `buf` from `f` (at `offset` of `entry`).
    fn read_all(
        &self,
        f: &mut fatfs::File<SliceReader>,
        entry: &FileEntry,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<usize> {
        let want = buf.len();
        let mut done = 0;
        while done < want {
            match f
                .read(&mut buf[done..want])
                .map_err(|e| io_err("reading a file", e))?
            {
                // Its size says there is more: a chain cut short (or one
                // that starts nowhere) is damage, not the end of the file.
                0 => {
                    return corrupt(format!(
                        "fat: the clusters of {} end at byte {} of its {}",
                        entry.display_path(),
                        offset + done as u64,
                        entry.size
                    ));
                }
                n => done += n,
            }
        }
        Ok(done)
    }
}
