//! Delta restore: bring an existing disk (an image file or a block device,
//! typically the attacked original) back to a snapshot by writing only
//! the 64 KiB blocks whose digests differ, and of those only the 4 KiB
//! pages whose bytes differ. The target is read and hashed in parallel,
//! chunk by chunk; a snapshot chunk is fetched from the vault only when
//! one of its blocks must be written; blocks that are zeros in
//! the snapshot are punched out of a file (zeroed on a device). A block's
//! bytes are checked against the snapshot's digest before they are
//! written (nothing the vault gives back wrong reaches the target), and
//! what is written is read back at once and compared; the pages not
//! written were just compared equal, so each block written is known to
//! hold the snapshot's bytes without a second pass over the target.
//!
//! When the target is known to be unchanged since a later snapshot was
//! taken of it (the attacked disk, backed up when the attack was found),
//! that snapshot's block digests stand for the target's: nothing is read
//! to compare, and only the blocks that differ are touched, as changed
//! block tracking does in hypervisors' backup tools.

use crate::disk::{open_existing, verify_target};
use cairn_vault::error::{Error, IoContext, Result};
use cairn_vault::hash::{BLOCK_SIZE, ZERO_BLOCK};
use cairn_vault::{BlockSource, SnapshotDisk};
use rayon::prelude::*;
use serde::Serialize;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Clone, Debug, Default)]
pub struct DeltaOptions {
    /// Compare and report only; write nothing.
    pub dry_run: bool,
    /// Read the target back afterwards and compare it with the snapshot.
    pub verify: bool,
    /// Cut or grow a target file of another size to the snapshot's disk
    /// size (refused otherwise).
    pub resize: bool,
    /// The disk map of a snapshot the target is known to equal (taken
    /// after its last change): compared instead of reading the target.
    pub known: Option<std::sync::Arc<cairn_vault::diskmap::DiskMap>>,
}

#[derive(Debug, Default, Serialize)]
pub struct DeltaReport {
    pub target: String,
    /// For a snapshot made by `cairn commit`: the snapshot it was made from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub derived_from: Option<String>,
    pub size: u64,
    pub bytes_compared: u64,
    pub blocks_compared: u64,
    /// Blocks that differed and were (or, in a dry run, would be) written.
    pub blocks_written: u64,
    /// Bytes written: inside a block that differs, only its pages that
    /// differ (a dry run, reading nothing, counts whole blocks).
    pub bytes_written: u64,
    /// Of those, blocks that are zeros in the snapshot (punched or zeroed).
    pub blocks_zeroed: u64,
    /// Snapshot chunks fetched from the vault.
    pub chunks_fetched: u64,
    /// Blocks read back after writing and found to hold the snapshot's
    /// bytes (all of the target with `--verify`).
    pub blocks_checked: u64,
    pub dry_run: bool,
    /// Compared against this snapshot's digests instead of reading.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub compared_with: Option<String>,
    /// Whether the known map given was used (it is not when its shape
    /// differs from the target's).
    #[serde(skip)]
    pub known_used: bool,
    pub verified: bool,
    /// The target file's size before, when it had to be changed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resized_from: Option<u64>,
    pub duration_secs: f64,
}

fn punch_hole(file: &File, offset: u64, len: u64) -> std::io::Result<()> {
    let r = unsafe {
        libc::fallocate(
            file.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            offset as i64,
            len as i64,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        // Filesystems without hole punching: write the zeros.
        file.write_all_at(&vec![0u8; len as usize], offset)
    }
}

/// The grain of writing inside a block that differs: a guest changes its
/// disk a page at a time, so a 64 KiB block that differs often differs in
/// one or two of its pages (on the benchmark's day, 1,748 of the 1,134
/// blocks' 18,144 pages). Reading the block to compare is cheaper than
/// writing it, and the device wears less.
const PAGE: usize = 4096;

/// Writes the pages of `want` (the snapshot's bytes for the block at
/// `at`) that differ from what the target holds there, each run of
/// adjacent differing pages in one write, and reads each run back to
/// check it landed: the pages left alone were just compared equal, so the
/// block then holds `want`. Returns the bytes written.
fn write_differing_pages(
    file: &File,
    want: &[u8],
    at: u64,
    have: &mut [u8],
) -> std::io::Result<u64> {
    let have = &mut have[..want.len()];
    file.read_exact_at(have, at)?;
    let mut written = 0;
    let mut run: Option<usize> = None;
    for p in (0..want.len()).step_by(PAGE).chain([want.len()]) {
        let end = (p + PAGE).min(want.len());
        let differs = p < want.len() && want[p..end] != have[p..end];
        match (run, differs) {
            (None, true) => run = Some(p),
            (Some(from), false) => {
                file.write_all_at(&want[from..p], at + from as u64)?;
                let back = &mut have[from..p];
                file.read_exact_at(back, at + from as u64)?;
                if back != &want[from..p] {
                    return Err(not_written(at + from as u64));
                }
                written += (p - from) as u64;
                run = None;
            }
            _ => {}
        }
    }
    Ok(written)
}

/// Zeroes a block (a hole punched in a file, zeros written to a device)
/// and reads it back to check.
fn zero_block(file: &File, is_device: bool, at: u64, buf: &mut [u8]) -> std::io::Result<()> {
    if is_device {
        buf.fill(0);
        file.write_all_at(buf, at)?;
    } else {
        punch_hole(file, at, buf.len() as u64)?;
    }
    file.read_exact_at(buf, at)?;
    if !cairn_vault::hash::is_zero(buf) {
        return Err(not_written(at));
    }
    Ok(())
}

fn not_written(at: u64) -> std::io::Error {
    std::io::Error::other(format!(
        "the bytes at offset {at} read back different from what was written: the target's storage may be failing"
    ))
}

/// Image formats whose files are not the disk they hold: a delta restore
/// writing raw disk bytes over one would leave a file the VM, configured
/// for that format, cannot use.
const CONTAINERS: [(&[u8], &str); 2] = [(b"QFI\xfb", "qcow2"), (b"vhdxfile", "VHDX")];

/// Refuses a target that is an image container (qcow2, VHDX) unless the
/// snapshot's own disk starts the same way (a disk that holds one).
fn refuse_other_format(disk: &SnapshotDisk, file: &File, target: &Path) -> Result<()> {
    let mut head = [0u8; 8];
    let n = file.read_at(&mut head, 0).unwrap_or(0);
    let mut ours = [0u8; 8];
    disk.read_at(0, &mut ours)
        .ctx(|| "reading the snapshot's first bytes".into())?;
    for (magic, format) in CONTAINERS {
        if head[..n].starts_with(magic) && !ours.starts_with(magic) {
            return Err(Error::Invalid(format!(
                "{} is a {format} image, not a raw disk: restore without --delta to a new file and convert it (qemu-img convert -O {})",
                target.display(),
                format.to_lowercase()
            )));
        }
    }
    Ok(())
}

/// Makes `target` equal to the snapshot, writing only what differs.
/// `progress` is told about bytes compared and bytes written.
pub fn restore_delta(
    disk: &SnapshotDisk,
    target: &Path,
    opts: &DeltaOptions,
    progress: &(dyn Fn(u64, u64) + Sync),
) -> Result<DeltaReport> {
    let started = std::time::Instant::now();
    let map = disk.map();
    let (file, is_device, old_size) = open_existing(target, map.size, !opts.dry_run)?;
    refuse_other_format(disk, &file, target)?;
    let mut report = DeltaReport {
        target: target.display().to_string(),
        size: map.size,
        dry_run: opts.dry_run,
        ..Default::default()
    };
    if !is_device && old_size != map.size {
        if !opts.resize {
            use cairn_vault::units::bytes;
            let lost = if old_size > map.size {
                format!(" (its last {} would be lost)", bytes(old_size - map.size))
            } else {
                String::new()
            };
            return Err(Error::Invalid(format!(
                "{} is {} but the snapshot's disk is {}: a delta restore brings a disk back to an earlier state of itself, and a file of another size is likely not that disk. Pass --resize to make it {}{lost}",
                target.display(),
                bytes(old_size),
                bytes(map.size),
                bytes(map.size),
            )));
        }
        report.resized_from = Some(old_size);
        if !opts.dry_run {
            file.set_len(map.size)
                .ctx(|| format!("resizing {}", target.display()))?;
        }
    }
    // Holes of a target file read as zeros without being read at all.
    let data = if is_device {
        None
    } else {
        cairn_vault::sparse::data_ranges(&file, old_size)
            .ctx(|| format!("finding the data of {}", target.display()))?
    };
    let has_data = |start: u64, len: u64| match &data {
        None => start < old_size,
        Some(ranges) => {
            let i = ranges.partition_point(|r| r.1 <= start);
            ranges.get(i).is_some_and(|r| r.0 < start + len)
        }
    };
    let hasher = disk.vault().hasher();
    let bpc = map.blocks_per_chunk();
    // A known map only stands for the target when it has the same shape.
    let known = opts
        .known
        .as_deref()
        .filter(|k| k.size == old_size && k.size == map.size && k.chunk_size == map.chunk_size);
    report.known_used = known.is_some();
    let compared = AtomicU64::new(0);
    let written = AtomicU64::new(0);
    let zeroed = AtomicU64::new(0);
    let fetched = AtomicU64::new(0);
    let bytes_written = AtomicU64::new(0);
    (0..map.chunks.len())
        .into_par_iter()
        .try_for_each(|i| -> Result<()> {
            let (start, len) = map.chunk_range(i);
            // Past the old end of a grown file there is nothing to read.
            let readable = old_size.saturating_sub(start).min(len as u64) as usize;
            let mut digests = Vec::with_capacity(bpc);
            if let Some(k) = known {
                digests.extend_from_slice(&k.blocks[i * bpc..i * bpc + len.div_ceil(BLOCK_SIZE)]);
            } else if has_data(start, len as u64) {
                let mut have = vec![0u8; len];
                file.read_exact_at(&mut have[..readable], start)
                    .ctx(|| format!("reading {}", target.display()))?;
                hasher.block_digests(&have, &mut digests);
            } else {
                digests.resize(len.div_ceil(BLOCK_SIZE), ZERO_BLOCK);
            }
            let want = &map.blocks[i * bpc..i * bpc + digests.len()];
            // The snapshot's data blocks to write here: only they are
            // decompressed (from the first to the last of them).
            let mut to_fetch = digests
                .iter()
                .zip(want)
                .enumerate()
                .filter(|(_, (got, want))| got != want && **want != ZERO_BLOCK)
                .map(|(b, _)| b);
            let fetch_span = to_fetch
                .next()
                .map(|f| (f, to_fetch.next_back().unwrap_or(f)));
            let mut snapshot_blocks: Option<Vec<u8>> = None;
            let mut have: Option<Vec<u8>> = None;
            let mut digest = Vec::with_capacity(1);
            for (b, (got, want)) in digests.iter().zip(want).enumerate() {
                if got == want {
                    continue;
                }
                let off = b * BLOCK_SIZE;
                let n = (len - off).min(BLOCK_SIZE);
                written.fetch_add(1, Ordering::Relaxed);
                if *want == ZERO_BLOCK {
                    zeroed.fetch_add(1, Ordering::Relaxed);
                    bytes_written.fetch_add(n as u64, Ordering::Relaxed);
                    if !opts.dry_run {
                        let buf = have.get_or_insert_with(|| vec![0u8; BLOCK_SIZE]);
                        zero_block(&file, is_device, start + off as u64, &mut buf[..n])
                            .ctx(|| format!("writing {}", target.display()))?;
                    }
                    continue;
                }
                if opts.dry_run {
                    // Without reading the target, the whole block counts.
                    bytes_written.fetch_add(n as u64, Ordering::Relaxed);
                    continue;
                }
                let (first, last) = fetch_span.expect("a data block to write is in the span");
                if snapshot_blocks.is_none() {
                    let id = map.chunks[i].ok_or_else(|| {
                        Error::damaged(
                            format!("chunk {i} of the disk map"),
                            "a data block in a zero chunk",
                        )
                    })?;
                    let data = disk.vault().read_chunk_blocks(&id, first, last)?;
                    if data.len() != ((last + 1) * BLOCK_SIZE).min(len) - first * BLOCK_SIZE {
                        return Err(Error::damaged(
                            format!("chunk {id}"),
                            "wrong length for its place",
                        ));
                    }
                    fetched.fetch_add(1, Ordering::Relaxed);
                    snapshot_blocks = Some(data);
                }
                let data = snapshot_blocks.as_ref().expect("fetched above");
                let at = off - first * BLOCK_SIZE;
                let block = &data[at..at + n];
                // The snapshot's bytes are checked against its digest
                // before they are written; what is written is read back.
                digest.clear();
                hasher.block_digests(block, &mut digest);
                if digest.first() != Some(want) {
                    return Err(Error::damaged(
                        format!(
                            "chunk {}",
                            map.chunks[i].map(|c| c.hex()).unwrap_or_default()
                        ),
                        format!("block {b} does not match its digest"),
                    ));
                }
                let put = write_differing_pages(
                    &file,
                    block,
                    start + off as u64,
                    have.get_or_insert_with(|| vec![0u8; BLOCK_SIZE]),
                )
                .ctx(|| format!("writing {}", target.display()))?;
                bytes_written.fetch_add(put, Ordering::Relaxed);
                progress(0, put);
            }
            if snapshot_blocks.is_some() {
                crate::disk::start_writeback(&file, start, len);
            }
            compared.fetch_add(len as u64, Ordering::Relaxed);
            progress(len as u64, 0);
            Ok(())
        })?;
    if !opts.dry_run {
        file.sync_all()
            .ctx(|| format!("syncing {}", target.display()))?;
        if opts.verify {
            verify_target(disk, &file)?;
            report.verified = true;
            report.blocks_checked = map.blocks.len() as u64;
        } else {
            // Every block written was checked on the way (or the restore
            // stopped with an error).
            report.blocks_checked = written.load(Ordering::Relaxed);
        }
    }
    report.bytes_compared = compared.into_inner();
    report.blocks_compared = report.bytes_compared.div_ceil(BLOCK_SIZE as u64);
    report.blocks_written = written.into_inner();
    report.blocks_zeroed = zeroed.into_inner();
    report.bytes_written = bytes_written.into_inner();
    report.chunks_fetched = fetched.into_inner();
    report.duration_secs = started.elapsed().as_secs_f64();
    Ok(report)
}
