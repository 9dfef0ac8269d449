//! A read-only view of a qcow2 image's guest disk.
//!
//! Written for Cairn rather than taken from a crate: the `qcow` crate pins
//! an old zstd that cannot link beside ours, and none exposes which
//! clusters are allocated, which is what lets a backup skip holes without
//! reading them. The image may come from an attacker's VM: every size read
//! from it is bounded before it is used.

use crate::source::{DataRange, DiskReader};
use flate2::read::DeflateDecoder;
use lru::LruCache;
use std::fs::File;
use std::io::{self, Read};
use std::num::NonZeroUsize;
use std::os::unix::fs::FileExt;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

pub const MAGIC: &[u8; 4] = b"QFI\xfb";
const L1_OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
const L2_OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
const COMPRESSED: u64 = 1 << 62;
const ZERO_FLAG: u64 = 1;
/// Backing chains longer than this are refused (they can loop).
const MAX_BACKING_DEPTH: usize = 16;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Compression {
    Deflate,
    Zstd,
}

pub struct Qcow2 {
    file: File,
    path: PathBuf,
    size: u64,
    cluster_bits: u32,
    l1: Vec<u64>,
    compression: Compression,
    backing: Option<Box<dyn DiskReader>>,
    l2_cache: Mutex<LruCache<u64, Arc<Vec<u64>>>>,
}

#[derive(Debug)]
enum Cluster {
    /// Not allocated here: the backing file's content, or zeros.
    Unallocated,
    Zero,
    Data(u64),
    Compressed {
        offset: u64,
        len: usize,
    },
}

fn bad(path: &Path, what: impl std::fmt::Display) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("{}: not a usable qcow2 image: {what}", path.display()),
    )
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(b[at..at + 4].try_into().unwrap())
}
fn be64(b: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(b[at..at + 8].try_into().unwrap())
}

impl Qcow2 {
    pub fn open(path: &Path) -> io::Result<Self> {
        Self::open_depth(path, 0)
    }

    fn open_depth(path: &Path, depth: usize) -> io::Result<Self> {
        let file = File::open(path)?;
        let mut h = [0u8; 112];
        let file_len = file.metadata()?.len();
        let n = file.read_at(&mut h, 0)?;
        if n < 72 || &h[..4] != MAGIC {
            return Err(bad(path, "no qcow2 header"));
        }
        let version = be32(&h, 4);
        if !(2..=3).contains(&version) {
            return Err(bad(path, format!("version {version}")));
        }
        let backing_offset = be64(&h, 8);
        let backing_len = be32(&h, 16) as usize;
        let cluster_bits = be32(&h, 20);
        if !(9..=21).contains(&cluster_bits) {
            return Err(bad(path, format!("cluster bits {cluster_bits}")));
        }
        let size = be64(&h, 24);
        if size > 1 << 56 {
            return Err(bad(path, "disk size beyond any real disk"));
        }
        if be32(&h, 32) != 0 {
            return Err(bad(
                path,
                "encrypted images are not supported; decrypt with qemu-img convert first",
            ));
        }
        let l1_size = be32(&h, 36) as u64;
        let l1_offset = be64(&h, 40);
        let mut compression = Compression::Deflate;
        if version >= 3 && n >= 104 {
            let incompatible = be64(&h, 72);
            if incompatible & (1 << 1) != 0 {
                return Err(bad(
                    path,
                    "marked corrupt by QEMU; repair it with qemu-img check -r all",
                ));
            }
            if incompatible & (1 << 2) != 0 {
                return Err(bad(path, "external data files are not supported"));
            }
            if incompatible & (1 << 4) != 0 {
                return Err(bad(
                    path,
                    "extended L2 entries are not supported; convert with qemu-img convert",
                ));
            }
            if incompatible & !0b1_1111 != 0 {
                return Err(bad(
                    path,
                    format!("unknown incompatible features {incompatible:#x}"),
                ));
            }
            let header_len = be32(&h, 100);
            if incompatible & (1 << 3) != 0 && header_len > 104 && n > 104 {
                compression = match h[104] {
                    0 => Compression::Deflate,
                    1 => Compression::Zstd,
                    t => return Err(bad(path, format!("compression type {t}"))),
                };
            }
        }
        let cluster = 1u64 << cluster_bits;
        let entries_per_l2 = cluster / 8;
        let needed_l1 = size.div_ceil(cluster * entries_per_l2);
        if l1_size < needed_l1
            || l1_size > (32 << 20) / 8
            || l1_offset.saturating_add(l1_size * 8) > file_len
        {
            return Err(bad(path, "L1 table size or offset out of range"));
        }
        let mut raw = vec![0u8; (needed_l1 * 8) as usize];
        file.read_exact_at(&mut raw, l1_offset)?;
        let l1: Vec<u64> = raw
            .chunks_exact(8)
            .map(|c| u64::from_be_bytes(c.try_into().unwrap()))
            .collect();
        // Every L2 table serves one part of the disk. One listed by many
        // L1 entries would let a small file describe an endless disk of
        // alternating data and holes.
        let mut tables = std::collections::HashSet::new();
        if l1
            .iter()
            .map(|e| e & L1_OFFSET_MASK)
            .any(|t| t != 0 && !tables.insert(t))
        {
            return Err(bad(path, "an L2 table is listed twice"));
        }

        let backing = if backing_offset != 0 && backing_len > 0 {
            if depth >= MAX_BACKING_DEPTH || backing_len > 1023 {
                return Err(bad(path, "backing chain too deep or name too long"));
            }
            let mut name = vec![0u8; backing_len];
            file.read_exact_at(&mut name, backing_offset)?;
            let name = <std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(&name);
            let rel = Path::new(name);
            let bpath = if rel.is_absolute() {
                rel.to_path_buf()
            } else {
                path.parent().unwrap_or(Path::new(".")).join(rel)
            };
            // A FIFO or a character device named here would block the
            // backup or read something that is no disk.
            let kind = std::fs::metadata(&bpath)
                .map_err(|e| {
                    io::Error::new(e.kind(), format!("backing file {}: {e}", bpath.display()))
                })?
                .file_type();
            if !kind.is_file() && !kind.is_block_device() {
                return Err(bad(
                    path,
                    "the backing file is neither a regular file nor a block device",
                ));
            }
            Some(open_backing(&bpath, depth + 1)?)
        } else {
            None
        };
        Ok(Qcow2 {
            file,
            path: path.into(),
            size,
            cluster_bits,
            l1,
            compression,
            backing,
            l2_cache: Mutex::new(LruCache::new(NonZeroUsize::new(64).unwrap())),
        })
    }

    fn cluster_size(&self) -> u64 {
        1 << self.cluster_bits
    }

    /// Reads image bytes at `at`; one the image is too short for (cut off
    /// in a copy, or tables pointing past its end) says so, instead of
    /// a bare "failed to fill whole buffer".
    fn read_host(&self, buf: &mut [u8], at: u64, what: &str) -> io::Result<()> {
        self.file.read_exact_at(buf, at).map_err(|e| {
            if e.kind() != io::ErrorKind::UnexpectedEof {
                return e;
            }
            let len = self.file.metadata().map(|m| m.len()).unwrap_or(0);
            io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "the qcow2 image is {len} bytes, and its tables put a {what} at byte {at}: truncated (a copy cut short?) or damaged"
                ),
            )
        })
    }

    fn l2_table(&self, l2_offset: u64) -> io::Result<Arc<Vec<u64>>> {
        if let Some(t) = self.l2_cache.lock().unwrap().get(&l2_offset) {
            return Ok(t.clone());
        }
        let mut raw = vec![0u8; self.cluster_size() as usize];
        self.read_host(&mut raw, l2_offset, "L2 table")?;
        let t = Arc::new(
            raw.chunks_exact(8)
                .map(|c| u64::from_be_bytes(c.try_into().unwrap()))
                .collect::<Vec<_>>(),
        );
        self.l2_cache.lock().unwrap().put(l2_offset, t.clone());
        Ok(t)
    }

    fn lookup(&self, guest: u64) -> io::Result<Cluster> {
        let cluster = guest >> self.cluster_bits;
        let per_l2 = self.cluster_size() / 8;
        let l1e = self.l1[(cluster / per_l2) as usize];
        let l2_offset = l1e & L1_OFFSET_MASK;
        if l2_offset == 0 {
            return Ok(Cluster::Unallocated);
        }
        let l2e = self.l2_table(l2_offset)?[(cluster % per_l2) as usize];
        if l2e & COMPRESSED != 0 {
            let x = 62 - (self.cluster_bits - 8);
            let offset = l2e & ((1u64 << x) - 1);
            let sectors = (l2e >> x) & ((1u64 << (self.cluster_bits - 8)) - 1);
            let len = ((sectors + 1) * 512 - (offset & 511)) as usize;
            return Ok(Cluster::Compressed { offset, len });
        }
        if l2e & ZERO_FLAG != 0 {
            return Ok(Cluster::Zero);
        }
        match l2e & L2_OFFSET_MASK {
            0 => Ok(Cluster::Unallocated),
            off if off % self.cluster_size() != 0 => {
                Err(bad(&self.path, "unaligned cluster offset"))
            }
            off => Ok(Cluster::Data(off)),
        }
    }

    fn read_compressed(&self, offset: u64, len: usize, out: &mut [u8]) -> io::Result<()> {
        let mut comp = vec![0u8; len.min(2 * self.cluster_size() as usize)];
        let n = self.file.read_at(&mut comp, offset)?;
        comp.truncate(n);
        let cs = self.cluster_size() as usize;
        let mut cluster = vec![0u8; cs];
        match self.compression {
            Compression::Deflate => {
                // The stream may end early or carry padding; what QEMU
                // wrote is the first cluster-size bytes.
                let mut d = DeflateDecoder::new(&comp[..]);
                let mut got = 0;
                while got < cs {
                    match d.read(&mut cluster[got..])? {
                        0 => break,
                        k => got += k,
                    }
                }
            }
            Compression::Zstd => {
                let mut d = zstd::stream::read::Decoder::new(&comp[..])?;
                let mut got = 0;
                while got < cs {
                    match d.read(&mut cluster[got..]) {
                        Ok(0) => break,
                        Ok(k) => got += k,
                        Err(e) if got > 0 => {
                            let _ = e;
                            break;
                        }
                        Err(e) => return Err(e),
                    }
                }
            }
        }
        out.copy_from_slice(&cluster[..out.len()]);
        Ok(())
    }
}

fn open_backing(path: &Path, depth: usize) -> io::Result<Box<dyn DiskReader>> {
    let mut magic = [0u8; 4];
    let f = File::open(path)
        .map_err(|e| io::Error::new(e.kind(), format!("backing file {}: {e}", path.display())))?;
    let n = f.read_at(&mut magic, 0)?;
    if n == 4 && &magic == MAGIC {
        Ok(Box::new(Qcow2::open_depth(path, depth)?))
    } else {
        Ok(Box::new(crate::source::RawDisk::open(path)?))
    }
}

impl DiskReader for Qcow2 {
    fn in_use(&self) -> bool {
        cairn_vault::lock::held_elsewhere(&self.file)
    }

    fn changed_at(&self) -> Option<i64> {
        use std::os::unix::fs::MetadataExt;
        let md = self.file.metadata().ok()?;
        Some(md.ctime() * 1_000_000_000 + md.ctime_nsec())
    }

    fn size(&self) -> u64 {
        self.size
    }

    fn format(&self) -> &'static str {
        "qcow2"
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let cs = self.cluster_size();
        let mut done = 0usize;
        while done < buf.len() {
            let pos = offset + done as u64;
            if pos >= self.size {
                buf[done..].fill(0);
                break;
            }
            let within = pos % cs;
            let n = ((cs - within) as usize)
                .min(buf.len() - done)
                .min((self.size - pos) as usize);
            let out = &mut buf[done..done + n];
            match self.lookup(pos)? {
                Cluster::Zero => out.fill(0),
                Cluster::Unallocated => match &self.backing {
                    Some(b) if pos < b.size() => {
                        let m = n.min((b.size() - pos) as usize);
                        b.read_at(pos, &mut out[..m])?;
                        out[m..].fill(0);
                    }
                    _ => out.fill(0),
                },
                Cluster::Data(host) => self.read_host(out, host + within, "data cluster")?,
                Cluster::Compressed { offset, len } => {
                    let mut whole = vec![0u8; cs as usize];
                    self.read_compressed(offset, len, &mut whole)?;
                    out.copy_from_slice(&whole[within as usize..within as usize + n]);
                }
            }
            done += n;
        }
        Ok(())
    }

    fn data_ranges(&self) -> io::Result<Option<Vec<DataRange>>> {
        if self.backing.is_some() {
            return Ok(None); // holes here may be data in the backing file
        }
        let cs = self.cluster_size();
        let per_l2 = cs / 8;
        let mut out: Vec<DataRange> = Vec::new();
        let mut pos = 0u64;
        while pos < self.size {
            // A whole L2 table's span unallocated: skipped in one step.
            let l1i = (pos >> self.cluster_bits) / per_l2;
            if self.l1[l1i as usize] & L1_OFFSET_MASK == 0 {
                pos = ((l1i + 1) * per_l2 * cs).min(self.size);
                continue;
            }
            let is_data = matches!(
                self.lookup(pos)?,
                Cluster::Data(_) | Cluster::Compressed { .. }
            );
            let end = (pos + cs).min(self.size);
            if is_data {
                match out.last_mut() {
                    Some(r) if r.end == pos => r.end = end,
                    _ => out.push(DataRange { start: pos, end }),
                }
            }
            pos = end;
        }
        Ok(Some(out))
    }
}
