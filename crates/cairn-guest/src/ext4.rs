//! A read-only ext2/3/4 reader written for Cairn.
//!
//! Why not `ext4-view`: it hides inode numbers (the stable file id that
//! hard-link and rename detection need) and where a file's blocks lie on
//! the disk (which lets `diff` see in-place changes from the vault's block
//! digests without reading the file). Everything read from the disk is
//! bounded before use: the disk may come from a compromised guest.
//!
//! Not handled (reported by name): meta_bg, encryption, compression, and
//! the journal is not replayed (a crash-consistent snapshot shows the state
//! of the last checkpoint). Inline data is read from `i_block` and the
//! inode's own `system.data` attribute.

use crate::error::{GuestError, Result, corrupt};
use crate::io::Slice;
use crate::model::{FileEntry, FileKind, Filesystem, join};
use rayon::prelude::*;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

const MAGIC: u16 = 0xEF53;
const ROOT_INO: u32 = 2;
const INCOMPAT_FILETYPE: u32 = 0x2;
const INCOMPAT_RECOVER: u32 = 0x4;
const INCOMPAT_META_BG: u32 = 0x10;
const INCOMPAT_EXTENTS: u32 = 0x40;
const INCOMPAT_64BIT: u32 = 0x80;
const INCOMPAT_MMP: u32 = 0x100;
const INCOMPAT_FLEX_BG: u32 = 0x200;
const INCOMPAT_EA_INODE: u32 = 0x400;
const INCOMPAT_CSUM_SEED: u32 = 0x2000;
const INCOMPAT_LARGEDIR: u32 = 0x4000;
const INCOMPAT_INLINE_DATA: u32 = 0x8000;
const SUPPORTED_INCOMPAT: u32 = INCOMPAT_FILETYPE
    | INCOMPAT_RECOVER
    | INCOMPAT_EXTENTS
    | INCOMPAT_64BIT
    | INCOMPAT_MMP
    | INCOMPAT_FLEX_BG
    | INCOMPAT_EA_INODE
    | INCOMPAT_CSUM_SEED
    | INCOMPAT_LARGEDIR
    | INCOMPAT_INLINE_DATA;
const FLAG_EXTENTS: u32 = 0x80000;
const FLAG_INLINE_DATA: u32 = 0x1000_0000;
const EXTENT_MAGIC: u16 = 0xF30A;
/// Limits that keep a crafted filesystem from exhausting memory or time.
const MAX_DIR_BYTES: u64 = 64 << 20;
/// Entries of one directory (each listed costs a few hundred bytes).
const MAX_DIR_ENTRIES: usize = 1_000_000;
const MAX_DEPTH: usize = 2048;
const MAX_ENTRIES: usize = 20_000_000;
const MAX_EXTENT_NODES: usize = 1 << 20;
/// Bytes of paths and extent lists one walk may hold (~50 per entry of
/// the most entries allowed): long names in deep
/// chains, or one fragmented file linked under a thousand names, would
/// otherwise fill memory from a small image.
const MAX_LISTED_BYTES: usize = 1 << 30;
/// Beyond this many runs a file's extents are not kept (None: unknown).
const MAX_CONTENT_RUNS: usize = 1 << 16;

/// What one walk has listed so far, against the limits above.
#[derive(Default)]
struct Budget {
    entries: AtomicUsize,
    bytes: AtomicUsize,
}

/// One entry of a directory listing, with its inode when it is a
/// directory to walk into.
type Listed = (FileEntry, Option<(u32, Inode)>);

fn u16le(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
fn u32le(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

/// A run of a file: `len` blocks from logical block `logical` lie at
/// physical block `physical`; uninitialised runs read as zeros.
#[derive(Clone, Copy, Debug)]
struct Run {
    logical: u64,
    physical: u64,
    len: u64,
    init: bool,
}

#[derive(Clone, Debug)]
struct Inode {
    ino: u32,
    mode: u16,
    uid: u32,
    gid: u32,
    size: u64,
    mtime_ns: i64,
    flags: u32,
    block: [u8; 60],
    /// Inline data past `i_block`'s 60 bytes (the `system.data`
    /// attribute inside the inode), for inodes with inline data.
    inline_tail: Vec<u8>,
}

/// The value of `system.data` in the attribute space inside a raw inode
/// `b`: where a file's or directory's inline data continues past the 60
/// bytes of `i_block`. Every offset is checked against the inode.
fn inline_tail(b: &[u8]) -> Option<Vec<u8>> {
    let u16at = |at: usize| Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?));
    let u32at = |at: usize| Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?));
    let start = 128usize.checked_add(u16at(0x80)? as usize)?;
    if u32at(start)? != 0xEA02_0000 {
        return None;
    }
    // Value offsets count from the first entry, just past the magic.
    let first = start + 4;
    let mut at = first;
    while u32at(at)? != 0 {
        let name_len = *b.get(at)? as usize;
        let index = *b.get(at + 1)?;
        let value_at = first.checked_add(u16at(at + 2)? as usize)?;
        let value_inum = u32at(at + 4)?;
        let value_len = u32at(at + 8)? as usize;
        let name = b.get(at + 16..at + 16 + name_len)?;
        // Index 7 is the "system." namespace.
        if index == 7 && name == b"data" && value_inum == 0 {
            return b
                .get(value_at..value_at.checked_add(value_len)?)
                .map(<[u8]>::to_vec);
        }
        at += (16 + name_len + 3) & !3;
    }
    None
}

impl Inode {
    fn kind(&self) -> FileKind {
        match self.mode & 0xF000 {
            0x8000 => FileKind::File,
            0x4000 => FileKind::Dir,
            0xA000 => FileKind::Symlink,
            _ => FileKind::Other,
        }
    }
}

pub struct Ext4 {
    slice: Slice,
    block_size: u64,
    blocks_count: u64,
    inodes_count: u32,
    inodes_per_group: u32,
    inode_size: u64,
    incompat: u32,
    inode_tables: Vec<u64>,
    name: &'static str,
    /// The directory each directory block was read for: no two share one
    /// on a real filesystem, and a crafted one that points many at the
    /// same blocks would have every listing read their entries again.
    dir_owner: Mutex<HashMap<u64, u32>>,
    /// Inode → runs, and how many runs it holds in all.
    runs_cache: Mutex<RunsCache>,
}

/// Inode → runs, and how many runs that is in all.
type RunsCache = (HashMap<u32, Arc<Vec<Run>>>, usize);

/// Runs kept in the cache at once (~64 MiB).
const CACHED_RUNS: usize = 1 << 21;

/// True when the slice starts like an ext2/3/4 filesystem.
pub fn probe(sb: &[u8]) -> bool {
    sb.len() >= 0x3A && u16le(sb, 0x38) == MAGIC
}

impl Ext4 {
    pub fn open(slice: Slice) -> Result<Self> {
        let sb = slice.read_vec(1024, 1024)?;
        if u16le(&sb, 0x38) != MAGIC {
            return corrupt("ext superblock magic missing");
        }
        let log = u32le(&sb, 0x18);
        if log > 6 {
            return corrupt(format!("ext superblock: block size 2^(10 + {log})"));
        }
        let block_size = 1024u64 << log;
        let first_data_block = u32le(&sb, 0x14) as u64;
        let blocks_per_group = u32le(&sb, 0x20) as u64;
        let inodes_per_group = u32le(&sb, 0x28);
        let inodes_count = u32le(&sb, 0x0);
        let rev = u32le(&sb, 0x4C);
        let inode_size = if rev >= 1 {
            u16le(&sb, 0x58) as u64
        } else {
            128
        };
        let compat = u32le(&sb, 0x5C);
        let incompat = u32le(&sb, 0x60);
        let bit64 = incompat & INCOMPAT_64BIT != 0;
        let blocks_count = u32le(&sb, 0x4) as u64
            | if bit64 {
                (u32le(&sb, 0x150) as u64) << 32
            } else {
                0
            };
        if incompat & INCOMPAT_META_BG != 0 {
            return Err(GuestError::Unsupported("ext4 with meta_bg".into()));
        }
        if incompat & !SUPPORTED_INCOMPAT != 0 {
            return Err(GuestError::Unsupported(format!(
                "ext4 features {:#x} (encryption, compression or journal device)",
                incompat & !SUPPORTED_INCOMPAT
            )));
        }
        if blocks_per_group == 0
            || inodes_per_group == 0
            || !(128..=block_size).contains(&inode_size)
            || !inode_size.is_power_of_two()
        {
            return corrupt("ext superblock: zero group sizes or bad inode size");
        }
        if blocks_per_group > 8 * block_size || inodes_per_group as u64 > 8 * block_size {
            return corrupt(
                "ext superblock: more blocks or inodes per group than a bitmap block can track",
            );
        }
        if blocks_count.saturating_mul(block_size) > slice.len.saturating_add(block_size) {
            return corrupt(format!(
                "ext superblock claims {} blocks of {block_size} bytes, more than the partition holds",
                blocks_count
            ));
        }
        let groups = blocks_count
            .saturating_sub(first_data_block)
            .div_ceil(blocks_per_group);
        if groups == 0
            || groups > (1 << 24)
            || groups * inodes_per_group as u64 > u32::MAX as u64 + inodes_per_group as u64
        {
            return corrupt("ext superblock: group count out of range");
        }
        let desc_size = if bit64 { u16le(&sb, 0xFE) as u64 } else { 32 };
        if !(32..=1024).contains(&desc_size) || !desc_size.is_power_of_two() {
            return corrupt(format!("ext superblock: descriptor size {desc_size}"));
        }
        if groups * desc_size > 64 << 20 {
            return corrupt("ext: group descriptor table larger than 64 MiB");
        }
        let gdt = slice.read_vec(
            (first_data_block + 1) * block_size,
            (groups * desc_size) as usize,
        )?;
        let inode_tables = gdt
            .chunks_exact(desc_size as usize)
            .map(|d| {
                u32le(d, 0x8) as u64
                    | if desc_size >= 64 {
                        (u32le(d, 0x28) as u64) << 32
                    } else {
                        0
                    }
            })
            .collect();
        let name = if incompat & (INCOMPAT_EXTENTS | INCOMPAT_64BIT | INCOMPAT_FLEX_BG) != 0 {
            "ext4"
        } else if compat & 0x4 != 0 {
            "ext3"
        } else {
            "ext2"
        };
        let fs = Ext4 {
            slice,
            block_size,
            blocks_count,
            inodes_count,
            inodes_per_group,
            inode_size,
            incompat,
            inode_tables,
            name,
            runs_cache: Mutex::new((HashMap::new(), 0)),
            dir_owner: Mutex::new(HashMap::new()),
        };
        // Everything hangs from the root: one that is a file (it listed as
        // an empty root, and restored as a file where a folder belongs)
        // leaves nothing to read.
        if fs.inode(ROOT_INO)?.kind() != FileKind::Dir {
            return corrupt("ext root inode is not a directory");
        }
        Ok(fs)
    }

    /// True when the journal holds changes not yet written back.
    pub fn needs_recovery(&self) -> bool {
        self.incompat & INCOMPAT_RECOVER != 0
    }

    fn inode(&self, ino: u32) -> Result<Inode> {
        if ino == 0 || ino > self.inodes_count {
            return corrupt(format!("ext4: inode number {ino} out of range"));
        }
        let group = ((ino - 1) / self.inodes_per_group) as usize;
        let index = ((ino - 1) % self.inodes_per_group) as u64;
        let table = *self.inode_tables.get(group).ok_or_else(|| {
            GuestError::Corrupt(format!("ext4: inode {ino} in missing group {group}"))
        })?;
        let at = table
            .checked_mul(self.block_size)
            .and_then(|t| t.checked_add(index * self.inode_size))
            .ok_or_else(|| {
                GuestError::Corrupt(format!("ext4: inode table of group {group} out of range"))
            })?;
        let b = self
            .slice
            .read_vec(at, self.inode_size as usize)
            .map_err(|e| GuestError::Corrupt(format!("ext4: inode {ino}: {e}")))?;
        let mode = u16le(&b, 0);
        let uid = u16le(&b, 0x2) as u32 | (u16le(&b, 0x78) as u32) << 16;
        let gid = u16le(&b, 0x18) as u32 | (u16le(&b, 0x7A) as u32) << 16;
        let size = u32le(&b, 0x4) as u64 | (u32le(&b, 0x6C) as u64) << 32;
        let mut secs = u32le(&b, 0x10) as i32 as i64;
        let mut nsec = 0i64;
        if self.inode_size > 128 {
            let extra = u16le(&b, 0x80) as u64;
            if 128 + extra >= 0x8C && 0x8C <= self.inode_size {
                let x = u32le(&b, 0x88);
                secs += ((x & 3) as i64) << 32;
                nsec = (x >> 2) as i64;
            }
        }
        let mut block = [0u8; 60];
        block.copy_from_slice(&b[0x28..0x28 + 60]);
        let flags = u32le(&b, 0x20);
        let inline_tail = if flags & FLAG_INLINE_DATA != 0 {
            inline_tail(&b).unwrap_or_default()
        } else {
            Vec::new()
        };
        Ok(Inode {
            ino,
            mode,
            uid,
            gid,
            size,
            mtime_ns: secs
                .saturating_mul(1_000_000_000)
                .saturating_add(nsec.min(999_999_999)),
            flags,
            block,
            inline_tail,
        })
    }

    fn block_ok(&self, physical: u64, len: u64) -> bool {
        physical
            .checked_add(len)
            .is_some_and(|end| end <= self.blocks_count)
    }

    /// The block runs of an inode's content, cached for repeated reads.
    fn runs(&self, ino: &Inode) -> Result<Arc<Vec<Run>>> {
        if let Some(r) = self.runs_cache.lock().unwrap().0.get(&ino.ino) {
            return Ok(r.clone());
        }
        let max_blocks = ino.size.div_ceil(self.block_size);
        let mut runs = Vec::new();
        if ino.flags & FLAG_INLINE_DATA != 0 || is_fast_symlink(ino) {
            // Content lives in the inode itself; no blocks.
        } else if ino.flags & FLAG_EXTENTS != 0 {
            // Entries, and blocks mapped and tree blocks read (each at most
            // as many as the filesystem has): a crafted tree that reuses its
            // nodes stops early, not after a million entries per file.
            let mut budget = (MAX_EXTENT_NODES, self.blocks_count);
            self.extent_node(ino.ino, &ino.block, 6, &mut runs, &mut budget)?;
            runs.sort_by_key(|r| r.logical);
        } else {
            self.block_map(ino, max_blocks, &mut runs)?;
        }
        self.check_runs(ino.ino, &runs)?;
        let runs = Arc::new(runs);
        let mut cache = self.runs_cache.lock().unwrap();
        if cache.0.len() > 256 || cache.1 + runs.len() > CACHED_RUNS {
            *cache = (HashMap::new(), 0);
        }
        if runs.len() <= CACHED_RUNS {
            cache.1 += runs.len();
            cache.0.insert(ino.ino, runs.clone());
        }
        Ok(runs)
    }

    /// A file's runs map each block of the filesystem once at most: a
    /// crafted tree that maps the same blocks over and over would make a
    /// few MiB read as terabytes. (That they map no more blocks than the
    /// filesystem has, `extent_node` and `block_map` check as they go.)
    fn check_runs(&self, ino: u32, runs: &[Run]) -> Result<()> {
        let overlap = |w: &[(u64, u64)]| w[0].0 + w[0].1 > w[1].0;
        let places = || runs.iter().map(|r| (r.physical, r.len));
        // Most files are one run, or runs in disk order: nothing to sort.
        let twice = if runs.is_sorted_by_key(|r| r.physical) {
            runs.windows(2)
                .any(|w| overlap(&[(w[0].physical, w[0].len), (w[1].physical, w[1].len)]))
        } else {
            let mut by_place: Vec<(u64, u64)> = places().collect();
            by_place.sort_unstable();
            by_place.windows(2).any(overlap)
        };
        if twice {
            return corrupt(format!("ext4 inode {ino}: maps one block twice"));
        }
        Ok(())
    }

    fn extent_node(
        &self,
        ino: u32,
        node: &[u8],
        max_depth: u16,
        out: &mut Vec<Run>,
        budget: &mut (usize, u64),
    ) -> Result<()> {
        if node.len() < 12 || u16le(node, 0) != EXTENT_MAGIC {
            return corrupt(format!("ext4 inode {ino}: extent header missing"));
        }
        let entries = u16le(node, 2) as usize;
        let depth = u16le(node, 6);
        if depth >= max_depth || 12 + entries * 12 > node.len() {
            return corrupt(format!(
                "ext4 inode {ino}: extent tree too deep or overfull"
            ));
        }
        if budget.0 < entries {
            return corrupt(format!("ext4 inode {ino}: extent tree too large (loop?)"));
        }
        budget.0 -= entries;
        for i in 0..entries {
            let e = &node[12 + i * 12..24 + i * 12];
            if depth == 0 {
                let raw_len = u16le(e, 4) as u64;
                let (len, init) = if raw_len > 32768 {
                    (raw_len - 32768, false)
                } else {
                    (raw_len, true)
                };
                let physical = (u16le(e, 6) as u64) << 32 | u32le(e, 8) as u64;
                if !self.block_ok(physical, len) {
                    return corrupt(format!(
                        "ext4 inode {ino}: extent points past the filesystem"
                    ));
                }
                if budget.1 < len {
                    return corrupt(format!(
                        "ext4 inode {ino}: maps more blocks than the filesystem has"
                    ));
                }
                budget.1 -= len;
                out.push(Run {
                    logical: u32le(e, 0) as u64,
                    physical,
                    len,
                    init,
                });
            } else {
                let child = (u16le(e, 8) as u64) << 32 | u32le(e, 4) as u64;
                if !self.block_ok(child, 1) || budget.1 == 0 {
                    return corrupt(format!(
                        "ext4 inode {ino}: extent index points past the filesystem, or to more blocks than it has"
                    ));
                }
                budget.1 -= 1;
                let block = self
                    .slice
                    .read_vec(child * self.block_size, self.block_size as usize)?;
                self.extent_node(ino, &block, depth, out, budget)?;
            }
        }
        Ok(())
    }

    /// ext2/3 block maps: 12 direct pointers, then single, double and triple
    /// indirect blocks. Only as many blocks as the size needs are followed.
    fn block_map(&self, ino: &Inode, max_blocks: u64, out: &mut Vec<Run>) -> Result<()> {
        let per = self.block_size / 4;
        let mut logical = 0u64;
        // Blocks mapped and indirect blocks read, each at most as many as
        // the filesystem has (a loop of indirect blocks would not end).
        let mut mapped = 0u64;
        let mut reads = 0u64;
        let mut push = |out: &mut Vec<Run>, logical: u64, physical: u32| -> Result<()> {
            if physical == 0 {
                return Ok(()); // a hole
            }
            mapped += 1;
            if mapped > self.blocks_count {
                return corrupt(format!(
                    "ext inode {}: maps more blocks than the filesystem has",
                    ino.ino
                ));
            }
            if !self.block_ok(physical as u64, 1) {
                return corrupt(format!(
                    "ext inode {}: block pointer past the filesystem",
                    ino.ino
                ));
            }
            match out.last_mut() {
                Some(r)
                    if r.logical + r.len == logical && r.physical + r.len == physical as u64 =>
                {
                    r.len += 1
                }
                _ => out.push(Run {
                    logical,
                    physical: physical as u64,
                    len: 1,
                    init: true,
                }),
            }
            Ok(())
        };
        for i in 0..12 {
            if logical >= max_blocks {
                return Ok(());
            }
            push(out, logical, u32le(&ino.block, i * 4))?;
            logical += 1;
        }
        for (level, slot) in [(1u32, 12usize), (2, 13), (3, 14)] {
            if logical >= max_blocks {
                return Ok(());
            }
            let span = per.pow(level);
            let root = u32le(&ino.block, slot * 4);
            if root == 0 {
                logical += span;
                continue;
            }
            self.indirect(
                ino.ino,
                root,
                level,
                &mut logical,
                max_blocks,
                out,
                &mut push,
                &mut reads,
            )?;
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn indirect(
        &self,
        ino: u32,
        block: u32,
        level: u32,
        logical: &mut u64,
        max_blocks: u64,
        out: &mut Vec<Run>,
        push: &mut impl FnMut(&mut Vec<Run>, u64, u32) -> Result<()>,
        reads: &mut u64,
    ) -> Result<()> {
        let per = self.block_size / 4;
        if !self.block_ok(block as u64, 1) {
            return corrupt(format!(
                "ext inode {ino}: indirect block past the filesystem"
            ));
        }
        *reads += 1;
        if *reads > self.blocks_count {
            return corrupt(format!(
                "ext inode {ino}: more indirect blocks than the filesystem has (a loop?)"
            ));
        }
        let data = self
            .slice
            .read_vec(block as u64 * self.block_size, self.block_size as usize)?;
        for i in 0..per as usize {
            if *logical >= max_blocks {
                return Ok(());
            }
            let p = u32le(&data, i * 4);
            if level == 1 {
                push(out, *logical, p)?;
                *logical += 1;
            } else if p == 0 {
                *logical += per.pow(level - 1);
            } else {
                self.indirect(ino, p, level - 1, logical, max_blocks, out, push, reads)?;
            }
        }
        Ok(())
    }

    fn read_inode_at(&self, ino: &Inode, offset: u64, buf: &mut [u8]) -> Result<usize> {
        if offset >= ino.size {
            return Ok(0);
        }
        let len = (buf.len() as u64).min(ino.size - offset) as usize;
        if ino.flags & FLAG_INLINE_DATA != 0 || is_fast_symlink(ino) {
            // The first 60 bytes in i_block, the rest in `system.data`.
            let held = 60 + ino.inline_tail.len() as u64;
            if ino.size > held {
                return corrupt(format!(
                    "ext4 inode {}: {} bytes of inline data, {held} held in the inode",
                    ino.ino, ino.size
                ));
            }
            let at = offset as usize;
            for (i, byte) in buf[..len].iter_mut().enumerate() {
                *byte = match at + i {
                    k if k < 60 => ino.block[k],
                    k => ino.inline_tail[k - 60],
                };
            }
            return Ok(len);
        }
        let runs = self.runs(ino)?;
        let bs = self.block_size;
        let mut done = 0usize;
        while done < len {
            let pos = offset + done as u64;
            let lblock = pos / bs;
            let within = pos % bs;
            let i = runs.partition_point(|r| r.logical + r.len <= lblock);
            let (n, src) = match runs.get(i) {
                Some(r) if r.logical <= lblock => {
                    let avail = (r.logical + r.len - lblock) * bs - within;
                    let n = (avail.min((len - done) as u64)) as usize;
                    (
                        n,
                        r.init
                            .then(|| (r.physical + lblock - r.logical) * bs + within),
                    )
                }
                Some(r) => (
                    ((r.logical - lblock) * bs - within).min((len - done) as u64) as usize,
                    None,
                ),
                None => (len - done, None),
            };
            match src {
                Some(at) => self.slice.read_exact_at(at, &mut buf[done..done + n])?,
                None => buf[done..done + n].fill(0),
            }
            done += n;
        }
        Ok(len)
    }

    /// (name, inode) pairs of a directory, without "." and "..".
    fn dir_entries(&self, dir: &Inode) -> Result<Vec<(Vec<u8>, u32)>> {
        if dir.kind() != FileKind::Dir {
            return Err(GuestError::NotFound(format!(
                "inode {} is not a directory",
                dir.ino
            )));
        }
        if dir.size > MAX_DIR_BYTES {
            return corrupt(format!(
                "ext4 directory inode {}: {} bytes",
                dir.ino, dir.size
            ));
        }
        let mut out = Vec::new();
        if dir.flags & FLAG_INLINE_DATA != 0 {
            // 4 bytes of parent inode, then entries in the rest of i_block,
            // continued in `system.data`.
            let filetype = self.incompat & INCOMPAT_FILETYPE != 0;
            parse_dirents(dir.ino, &dir.block[4..], filetype, &mut out)?;
            if !dir.inline_tail.is_empty() {
                parse_dirents(dir.ino, &dir.inline_tail, filetype, &mut out)?;
            }
            return Ok(out);
        }
        {
            let runs = self.runs(dir)?;
            let mut owner = self.dir_owner.lock().unwrap();
            for r in runs.iter() {
                for b in r.physical..r.physical + r.len {
                    let o = *owner.entry(b).or_insert(dir.ino);
                    if o != dir.ino {
                        return corrupt(format!(
                            "ext4 directory inode {}: shares block {b} with directory inode {o}",
                            dir.ino
                        ));
                    }
                }
            }
        }
        let mut data = vec![0u8; dir.size as usize];
        self.read_inode_at(dir, 0, &mut data)?;
        for block in data.chunks(self.block_size as usize) {
            parse_dirents(
                dir.ino,
                block,
                self.incompat & INCOMPAT_FILETYPE != 0,
                &mut out,
            )?;
            if out.len() > MAX_DIR_ENTRIES {
                return corrupt(format!(
                    "ext4 directory inode {}: more than {MAX_DIR_ENTRIES} entries",
                    dir.ino
                ));
            }
        }
        Ok(out)
    }

    fn entry(&self, path: Vec<u8>, ino: &Inode) -> Result<FileEntry> {
        let kind = ino.kind();
        // A file whose own block map is damaged still lists (its read
        // fails, by itself): one crafted inode does not hide its folder.
        let link_target = if kind == FileKind::Symlink {
            let mut t = vec![0u8; ino.size.min(4096) as usize];
            self.read_inode_at(ino, 0, &mut t).ok().map(|n| {
                t.truncate(n);
                t
            })
        } else {
            None
        };
        let extents = if kind == FileKind::File && ino.flags & FLAG_INLINE_DATA == 0 {
            self.content_extents(ino).unwrap_or(None)
        } else {
            None
        };
        Ok(FileEntry {
            path,
            kind,
            size: if kind == FileKind::Dir { 0 } else { ino.size },
            mode: Some(ino.mode as u32),
            uid: Some(ino.uid),
            gid: Some(ino.gid),
            mtime_ns: ino.mtime_ns,
            file_id: Some(ino.ino as u64),
            link_target,
            extents,
            content_key: None,
            unsafe_name: false,
        })
    }

    /// Where a file's bytes lie on the disk, in file order — only when the
    /// file is exactly those bytes: runs that follow each other from the
    /// first block to the last, every one written. A file with a hole or an
    /// unwritten run (which read as zeros, whatever the disk holds) gets
    /// None, so nothing takes its disk bytes for its content (scan-cache
    /// keys, insight's in-place comparisons).
    fn content_extents(&self, ino: &Inode) -> Result<Option<Vec<(u64, u64)>>> {
        let bs = self.block_size;
        let need = ino.size.div_ceil(bs);
        let mut next = 0u64;
        let mut out = Vec::new();
        for r in self.runs(ino)?.iter() {
            if next >= need {
                break;
            }
            if r.logical != next || !r.init {
                return Ok(None);
            }
            if out.len() == MAX_CONTENT_RUNS {
                return Ok(None);
            }
            out.push((self.slice.disk_offset(r.physical * bs), r.len * bs));
            next += r.len;
        }
        Ok((next >= need).then_some(out))
    }

    /// The entries of directory `dir` (at `path`), each with its inode
    /// when it is a directory to walk into. `count` is shared by a whole
    /// walk, so that a crafted filesystem cannot list without end.
    fn list(&self, path: &[u8], dir: &Inode, budget: &Budget) -> Result<Vec<Listed>> {
        let mut out = Vec::new();
        for (name, ino) in self.dir_entries(dir)? {
            if budget.entries.fetch_add(1, Ordering::Relaxed) >= MAX_ENTRIES {
                return corrupt("ext4: more entries than any real filesystem");
            }
            let child = self.inode(ino)?;
            let mut e = self.entry(join(path, &name), &child)?;
            let bytes = e.path.len() + 16 * e.extents.as_ref().map_or(0, Vec::len);
            if budget.bytes.fetch_add(bytes, Ordering::Relaxed) >= MAX_LISTED_BYTES {
                return corrupt("ext4: longer paths and extent lists than any real filesystem");
            }
            e.unsafe_name = crate::model::is_unsafe_name(&name);
            let walk_into = e.kind == FileKind::Dir && !e.unsafe_name;
            out.push((e, walk_into.then_some((ino, child))));
        }
        Ok(out)
    }

    fn resolve(&self, path: &[u8]) -> Result<Inode> {
        let mut ino = self.inode(ROOT_INO)?;
        if path.is_empty() {
            return Ok(ino);
        }
        for comp in path.split(|&b| b == b'/') {
            let entries = self.dir_entries(&ino)?;
            let Some((_, child)) = entries.into_iter().find(|(n, _)| n == comp) else {
                return Err(GuestError::NotFound(format!(
                    "/{}",
                    String::from_utf8_lossy(path)
                )));
            };
            ino = self.inode(child)?;
        }
        Ok(ino)
    }
}

/// A symlink whose target (under 60 bytes) is stored in the inode's block
/// array instead of a data block.
fn is_fast_symlink(ino: &Inode) -> bool {
    ino.kind() == FileKind::Symlink && ino.size < 60 && ino.flags & FLAG_EXTENTS == 0
}

fn parse_dirents(
    dir: u32,
    block: &[u8],
    filetype: bool,
    out: &mut Vec<(Vec<u8>, u32)>,
) -> Result<()> {
    let mut at = 0usize;
    while at + 8 <= block.len() {
        let ino = u32le(block, at);
        let rec_len = u16le(block, at + 4) as usize;
        let name_len = if filetype {
            block[at + 6] as usize
        } else {
            u16le(block, at + 6) as usize
        };
        if rec_len < 8 || at + rec_len > block.len() || name_len + 8 > rec_len {
            return corrupt(format!(
                "ext4 directory inode {dir}: bad entry at byte {at}"
            ));
        }
        let name = &block[at + 8..at + 8 + name_len];
        if ino != 0 && name != b"." && name != b".." && !name.is_empty() {
            out.push((name.to_vec(), ino));
        }
        at += rec_len;
    }
    Ok(())
}

impl Filesystem for Ext4 {
    fn kind(&self) -> String {
        self.name.to_string()
    }

    fn data_ranges(&self, entry: &FileEntry) -> Result<Option<Vec<(u64, u64)>>> {
        let Some(ino) = entry.file_id.and_then(|i| u32::try_from(i).ok()) else {
            return Ok(None);
        };
        let ino = self.inode(ino)?;
        if ino.kind() != FileKind::File || ino.flags & FLAG_INLINE_DATA != 0 {
            return Ok(None);
        }
        let bs = self.block_size;
        // Unwritten runs read as zeros: holes too.
        Ok(Some(
            self.runs(&ino)?
                .iter()
                .filter(|r| r.init)
                .map(|r| (r.logical * bs, r.len * bs))
                .take_while(|(at, _)| *at < ino.size)
                .collect(),
        ))
    }

    fn walk(&self) -> Result<Vec<FileEntry>> {
        // Level by level, the directories of one level read in parallel:
        // a walk is mostly small reads of inodes and directory blocks.
        let mut out = Vec::new();
        let mut seen_dirs = HashSet::from([ROOT_INO]);
        let budget = Budget::default();
        let mut level = vec![(Vec::new(), self.inode(ROOT_INO)?)];
        let mut depth = 0usize;
        let mut deeper = 0usize;
        while !level.is_empty() {
            let listed: Vec<Result<Vec<Listed>>> = level
                .par_iter()
                .map(|(path, dir)| self.list(path, dir, &budget))
                .collect();
            let mut next = Vec::new();
            for listing in listed {
                for (e, dir) in listing? {
                    if let Some((ino, child)) = dir {
                        // Any user can nest folders this deep (`mkdir -p`
                        // with a long enough path): what lies below is
                        // left unlisted, not the whole filesystem taken
                        // for damaged.
                        if depth >= MAX_DEPTH {
                            deeper += 1;
                            out.push(e);
                            continue;
                        }
                        if !seen_dirs.insert(ino) {
                            return corrupt(format!(
                                "ext4: directory inode {ino} appears twice (loop)"
                            ));
                        }
                        next.push((e.path.clone(), child));
                    }
                    out.push(e);
                }
            }
            level = next;
            depth += 1;
        }
        if deeper > 0 {
            tracing::warn!(
                folders = deeper,
                "ext4: folders nested deeper than {MAX_DEPTH} levels were not listed"
            );
        }
        out.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(out)
    }

    fn lookup(&self, path: &[u8]) -> Result<FileEntry> {
        let ino = self.resolve(path)?;
        self.entry(path.to_vec(), &ino)
    }

    fn read_dir(&self, path: &[u8]) -> Result<Vec<FileEntry>> {
        let dir = self.resolve(path)?;
        let mut out: Vec<FileEntry> = self
            .list(path, &dir, &Budget::default())?
            .into_iter()
            .map(|(e, _)| e)
            .collect();
        out.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(out)
    }

    fn read_at(&self, entry: &FileEntry, offset: u64, buf: &mut [u8]) -> Result<usize> {
        let ino = entry
            .file_id
            .ok_or_else(|| GuestError::NotFound(entry.display_path()))?;
        let ino = self
            .inode(u32::try_from(ino).map_err(|_| GuestError::NotFound(entry.display_path()))?)?;
        self.read_inode_at(&ino, offset, buf)
    }
}
