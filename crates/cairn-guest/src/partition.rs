//! Partition tables (GPT, MBR with extended/logical partitions, or none)
//! and recognising what filesystem a partition holds. Written for Cairn:
//! a few bounded reads of one `BlockSource`, where the table crates want a
//! writable device.

use crate::error::Result;
use crate::io::Slice;
use cairn_vault::BlockSource;
use serde::Serialize;
use std::collections::HashSet;
use std::sync::Arc;

const SECTOR: u64 = 512;
/// Most of a GPT's entry array read (8,192 entries of the usual 128
/// bytes): a table may be made larger than the 128 entries tools create
/// by default, and entries past this are ignored rather than the whole
/// table, while a crafted count cannot make Cairn read gigabytes.
const MAX_GPT_TABLE_BYTES: u64 = 1 << 20;
const MAX_LOGICAL: usize = 128;

#[derive(Clone, Debug, Serialize)]
pub struct Partition {
    /// 1-based as Linux numbers them (logical MBR partitions from 5); 0 is
    /// a filesystem on the whole disk.
    pub number: u32,
    pub start: u64,
    pub size: u64,
    /// "gpt", "mbr" or "none".
    pub scheme: &'static str,
    /// Partition type: a GPT type name or GUID, or an MBR type byte.
    pub type_name: String,
    pub label: String,
    /// What the partition holds, by its magic bytes ("ext4", "ntfs",
    /// "fat32", "xfs", "swap", "luks", "unknown"…).
    pub filesystem: String,
    /// Whether Cairn can read the files in it.
    pub readable: bool,
}

fn u16le(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
fn u32le(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}
fn u64le(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

fn read(disk: &dyn BlockSource, offset: u64, len: usize) -> Result<Vec<u8>> {
    let mut buf = vec![0u8; len];
    let n = disk.read_at(offset, &mut buf)?;
    buf.truncate(n);
    Ok(buf)
}

/// The filesystem in a slice, by magic numbers; never fails (an unreadable
/// start is "unknown").
pub fn detect(slice: &Slice) -> String {
    let head = read(
        slice.disk.as_ref(),
        slice.start,
        0x10050.min(slice.len as usize),
    )
    .unwrap_or_default();
    let at = |off: usize, magic: &[u8]| head.get(off..off + magic.len()) == Some(magic);
    if head.len() >= 2048 && crate::ext4::probe(&head[1024..]) {
        let incompat = u32le(&head, 1024 + 0x60);
        let compat = u32le(&head, 1024 + 0x5C);
        return if incompat & (0x40 | 0x80 | 0x200) != 0 {
            "ext4"
        } else if compat & 0x4 != 0 {
            "ext3"
        } else {
            "ext2"
        }
        .into();
    }
    if at(3, b"NTFS    ") {
        return "ntfs".into();
    }
    if at(3, b"EXFAT   ") {
        return "exfat".into();
    }
    if crate::fat::probe(&head) {
        return crate::fat::variant(&head).into();
    }
    if at(0, b"XFSB") {
        return "xfs".into();
    }
    if at(0x10040, b"_BHRfS_M") {
        return "btrfs".into();
    }
    if at(4086, b"SWAPSPACE2") || at(4086, b"SWAP-SPACE") {
        return "swap".into();
    }
    if at(0, b"LUKS\xba\xbe") {
        return "luks".into();
    }
    if at(512, b"LABELONE") {
        return "lvm2".into();
    }
    if at(0x8001, b"CD001") {
        return "iso9660".into();
    }
    "unknown".into()
}

pub fn readable(fs: &str) -> bool {
    matches!(
        fs,
        "ext2" | "ext3" | "ext4" | "ntfs" | "fat12" | "fat16" | "fat32"
    )
}

fn gpt_type_name(guid: &str) -> String {
    match guid {
        "0FC63DAF-8483-4772-8E79-3D69D8477DE4" => "Linux filesystem",
        "C12A7328-F81F-11D2-BA4B-00A0C93EC93B" => "EFI system",
        "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7" => "Microsoft basic data",
        "E3C9E316-0B5C-4DB8-817D-F92DF00215AE" => "Microsoft reserved",
        "DE94BBA4-06D1-4D40-A16A-BFD50179D6AC" => "Windows recovery",
        "0657FD6D-A4AB-43C4-84E5-0933C84B4F4F" => "Linux swap",
        "E6D6D379-F507-44C2-A23C-238F2A3DF928" => "Linux LVM",
        "21686148-6449-6E6F-744E-656564454649" => "BIOS boot",
        "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709" => "Linux root (x86-64)",
        "A19D880F-05FC-4D3B-A006-743F0F84911E" => "Linux RAID",
        _ => return guid.to_string(),
    }
    .to_string()
}

fn guid(b: &[u8]) -> String {
    format!(
        "{:08X}-{:04X}-{:04X}-{:02X}{:02X}-{}",
        u32le(b, 0),
        u16le(b, 4),
        u16le(b, 6),
        b[8],
        b[9],
        b[10..16]
            .iter()
            .map(|x| format!("{x:02X}"))
            .collect::<String>()
    )
}

fn finish(disk: &Arc<dyn BlockSource>, mut parts: Vec<Partition>) -> Vec<Partition> {
    for p in &mut parts {
        p.filesystem = detect(&Slice::new(disk.clone(), p.start, p.size));
        p.readable = readable(&p.filesystem);
    }
    parts
}

/// A disk's partitions and what is wrong with its table.
pub struct Table {
    pub parts: Vec<Partition>,
    /// Partitions the table places past the disk's end (a disk cut short:
    /// they are left out), a GPT whose checksums do not match.
    pub warnings: Vec<String>,
}

/// Reads the partition table; a disk without one that holds a filesystem
/// is one partition numbered 0.
pub fn partitions(disk: &Arc<dyn BlockSource>) -> Result<Vec<Partition>> {
    Ok(table(disk)?.parts)
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / 1048576.0)
}

/// A partition the table says ends past the disk's end, and what became
/// of it.
fn past_end(number: usize, end: u64, disk: u64, kept: &str) -> String {
    format!(
        "the partition table says partition {number} ends at {}, past the end of the {} disk: {kept} (the disk was cut short, or the table damaged)",
        mib(end),
        mib(disk)
    )
}

/// [`partitions`], with what is wrong with the table.
pub fn table(disk: &Arc<dyn BlockSource>) -> Result<Table> {
    let mut warnings = Vec::new();
    let parts = read_table(disk, &mut warnings)?;
    Ok(Table { parts, warnings })
}

fn read_table(disk: &Arc<dyn BlockSource>, warnings: &mut Vec<String>) -> Result<Vec<Partition>> {
    let size = disk.size();
    let mbr = read(disk.as_ref(), 0, 512)?;
    let whole = || {
        finish(
            disk,
            vec![Partition {
                number: 0,
                start: 0,
                size,
                scheme: "none",
                type_name: String::new(),
                label: String::new(),
                filesystem: String::new(),
                readable: false,
            }],
        )
    };
    // A filesystem boot sector also ends in 55 AA: look for one first.
    let fs = detect(&Slice::new(disk.clone(), 0, size));
    if fs != "unknown" && fs != "iso9660" {
        return Ok(whole());
    }
    // The primary header at LBA 1, else the backup GPT keeps at the
    // disk's last LBA (a damaged primary header — a bad entry size, an
    // overwritten sector, entries that no longer match its CRC — leaves
    // the partitions readable there). A table whose CRCs match comes
    // first; with none, the first one found.
    let mut any_gpt = || -> Result<Option<Vec<Partition>>> {
        let mut found: Option<Gpt> = None;
        let mut primary_damaged = false;
        for sector in [512u64, 4096] {
            let last = (size / sector).saturating_sub(1);
            for lba in [1, last] {
                match gpt(disk, sector, lba)? {
                    Some(t) if t.intact => {
                        if primary_damaged {
                            warnings.push("the primary GPT (at the disk's start) does not match its checksums; the backup GPT at the disk's end was read".into());
                        }
                        warnings.extend(t.warnings);
                        return Ok(Some(t.parts));
                    }
                    Some(t) => {
                        primary_damaged |= lba == 1 && sector == 512;
                        found.get_or_insert(t);
                    }
                    _ => {}
                }
            }
        }
        Ok(found.map(|t| {
            warnings.push("the GPT does not match its checksums (changed outside a partitioning tool, or damaged); its entries are read as they stand".into());
            warnings.extend(t.warnings);
            t.parts
        }))
    };
    if mbr.len() < 512 || mbr[510..512] != [0x55, 0xAA] {
        // No MBR (a wiper's first write is to sector 0): a GPT may
        // still be there behind it.
        return Ok(match any_gpt()? {
            Some(parts) => finish(disk, parts),
            None => whole(),
        });
    }
    let entries: Vec<&[u8]> = (0..4).map(|i| &mbr[446 + i * 16..462 + i * 16]).collect();
    if entries.iter().any(|e| e[4] == 0xEE)
        && let Some(parts) = any_gpt()?
    {
        return Ok(finish(disk, parts));
    }
    let mut parts = Vec::new();
    let disk_sectors = size / SECTOR;
    for (i, e) in entries.iter().enumerate() {
        let (ty, start, count) = (e[4], u32le(e, 8) as u64, u32le(e, 12) as u64);
        if ty == 0 || count == 0 || (e[0] != 0 && e[0] != 0x80) {
            continue;
        }
        // (A protective entry for a GPT spans the whole disk, or more.)
        if ty != 0xEE && start.saturating_add(count) > disk_sectors {
            let kept = if start < disk_sectors {
                "read up to the disk's end"
            } else {
                "left out"
            };
            warnings.push(past_end(i + 1, (start + count) * SECTOR, size, kept));
        }
        if start >= disk_sectors {
            continue;
        }
        let count = count.min(disk_sectors - start);
        if matches!(ty, 0x05 | 0x0F | 0x85) {
            logical(disk.as_ref(), start, count, &mut parts)?;
            continue;
        }
        parts.push(Partition {
            number: i as u32 + 1,
            start: start * SECTOR,
            size: count * SECTOR,
            scheme: "mbr",
            type_name: format!("0x{ty:02x}"),
            label: String::new(),
            filesystem: String::new(),
            readable: false,
        });
    }
    parts.sort_by_key(|p| p.number);
    Ok(finish(disk, parts))
}

/// Follows the chain of extended boot records, bounded and loop-checked.
fn logical(
    disk: &dyn BlockSource,
    ext_start: u64,
    ext_len: u64,
    out: &mut Vec<Partition>,
) -> Result<()> {
    let mut seen = HashSet::new();
    let mut ebr = ext_start;
    let mut number = 5;
    while seen.insert(ebr) && seen.len() <= MAX_LOGICAL {
        let b = read(disk, ebr * SECTOR, 512)?;
        if b.len() < 512 || b[510..512] != [0x55, 0xAA] {
            break;
        }
        let (e0, e1) = (&b[446..462], &b[462..478]);
        let (start, count) = (u32le(e0, 8) as u64, u32le(e0, 12) as u64);
        if e0[4] != 0 && count > 0 {
            let abs = ebr + start;
            if abs + count <= ext_start + ext_len {
                out.push(Partition {
                    number,
                    start: abs * SECTOR,
                    size: count * SECTOR,
                    scheme: "mbr",
                    type_name: format!("0x{:02x}", e0[4]),
                    label: String::new(),
                    filesystem: String::new(),
                    readable: false,
                });
                number += 1;
            }
        }
        let next = u32le(e1, 8) as u64;
        if !matches!(e1[4], 0x05 | 0x0F | 0x85) || next == 0 || next >= ext_len {
            break;
        }
        ebr = ext_start + next;
    }
    Ok(())
}

/// A GPT as one of its headers gives it.
struct Gpt {
    parts: Vec<Partition>,
    /// The header and the entry array match the CRC32s the header holds.
    intact: bool,
    warnings: Vec<String>,
}

/// The GPT whose header is at `lba` (of `sector` bytes).
fn gpt(disk: &Arc<dyn BlockSource>, sector: u64, lba: u64) -> Result<Option<Gpt>> {
    let h = read(disk.as_ref(), lba.saturating_mul(sector), 512)?;
    if h.len() < 92 || &h[..8] != b"EFI PART" {
        return Ok(None);
    }
    // The header's CRC covers its own length of bytes with the CRC field
    // read as zeros.
    let header_len = u32le(&h, 12) as usize;
    let header_intact = (92..=h.len()).contains(&header_len) && {
        let mut c = crc32fast::Hasher::new();
        c.update(&h[..16]);
        c.update(&[0; 4]);
        c.update(&h[20..header_len]);
        c.finalize() == u32le(&h, 16)
    };
    let entries_lba = u64le(&h, 72);
    let count = u32le(&h, 80);
    let entry_size = u32le(&h, 84) as u64;
    if !(128..=4096).contains(&entry_size) {
        return Ok(None);
    }
    let whole = (count as u64).saturating_mul(entry_size) <= MAX_GPT_TABLE_BYTES;
    let count = (count as u64).min(MAX_GPT_TABLE_BYTES / entry_size);
    let table = read(
        disk.as_ref(),
        entries_lba.saturating_mul(sector),
        (count * entry_size) as usize,
    )?;
    // A table cut short to what Cairn reads cannot be checked.
    let intact = header_intact
        && whole
        && table.len() as u64 == count * entry_size
        && crc32fast::hash(&table) == u32le(&h, 88);
    let disk_sectors = disk.size() / sector;
    let mut parts = Vec::new();
    let mut warnings = Vec::new();
    for (i, e) in table.chunks_exact(entry_size as usize).enumerate() {
        if e[..16].iter().all(|&b| b == 0) {
            continue;
        }
        let (first, last) = (u64le(e, 32), u64le(e, 40));
        if first <= last && last >= disk_sectors {
            warnings.push(past_end(
                i + 1,
                last.saturating_add(1).saturating_mul(sector),
                disk.size(),
                "left out",
            ));
        }
        if first > last || last >= disk_sectors {
            continue;
        }
        let name: Vec<u16> = e[56..128]
            .chunks_exact(2)
            .map(|c| u16le(c, 0))
            .take_while(|&c| c != 0)
            .collect();
        parts.push(Partition {
            number: i as u32 + 1,
            start: first * sector,
            size: (last - first + 1) * sector,
            scheme: "gpt",
            type_name: gpt_type_name(&guid(&e[..16])),
            label: String::from_utf16_lossy(&name),
            filesystem: String::new(),
            readable: false,
        });
    }
    Ok(Some(Gpt {
        parts,
        intact,
        warnings,
    }))
}
