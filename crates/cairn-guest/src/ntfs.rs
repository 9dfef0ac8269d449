//! NTFS through the `ntfs` crate: names, sizes, times and MFT record
//! numbers (the stable file id) of every file, and file content.

use crate::error::{GuestError, Result, corrupt};
use crate::io::{ReadBudget, Slice, SliceReader};
use crate::model::{FileEntry, FileKind, Filesystem, join};
use ntfs::NtfsAttributeFlags;
use ntfs::attribute_value::NtfsAttributeValue;
use ntfs::structured_values::NtfsFileNamespace;
use ntfs::{Ntfs, NtfsAttributeType, NtfsFile, NtfsReadSeek};
use std::collections::HashSet;
use std::io::SeekFrom;
use std::sync::Mutex;

const ROOT_RECORD: u64 = 5;
/// Records below this are NTFS's own metadata files ($MFT, $LogFile…).
const FIRST_USER_RECORD: u64 = 16;
const MAX_ENTRIES: usize = 20_000_000;
const MAX_DEPTH: usize = 1024;
/// Data runs listed per file at most (a file in more pieces is judged by
/// its size and times).
const MAX_RUNS: usize = 4096;
/// 100 ns ticks between 1601-01-01 and 1970-01-01.
const NT_EPOCH_OFFSET: i64 = 116_444_736_000_000_000;

pub struct NtfsFs {
    ntfs: Ntfs,
    reader: Mutex<SliceReader>,
    budget: ReadBudget,
    /// Where the volume lies on the disk (extents are disk offsets).
    slice: Slice,
}

/// Bytes one step through a directory's index may read. A step goes down
/// the index's B-tree a few nodes of 4 KiB at most before it gives the
/// next entry; a node naming itself (or a node above it) as its child
/// would be followed down without end by the crate, every node kept in
/// memory, so the step stops there (a 1 GiB listing budget alone let one
/// crafted node take a gigabyte of memory).
const INDEX_STEP: u64 = 4 << 20;
/// Data runs a file's data ranges list at most (past that its data is
/// read whole).
const MAX_DATA_RUNS: usize = 1 << 20;
/// Named data streams listed per file at most (a real file has a few: a
/// download's `Zone.Identifier`).
const MAX_STREAMS: usize = 64;

fn err(what: &str, e: ntfs::NtfsError) -> GuestError {
    match e {
        // The vault's damage, not the volume's: kept as it is, so that it
        // is told apart (`cairn verify`), not taken for a crafted volume.
        ntfs::NtfsError::Io(io) if cairn_vault::error::damage_in(&io).is_some() => {
            GuestError::Io(io)
        }
        // The crate shows an I/O error in its debug form.
        ntfs::NtfsError::Io(io) => GuestError::Corrupt(format!("ntfs: {what}: {io}")),
        e => GuestError::Corrupt(format!("ntfs: {what}: {e}")),
    }
}

impl NtfsFs {
    pub fn open(slice: Slice) -> Result<Self> {
        let budget = ReadBudget::default();
        budget.allow(u64::MAX);
        let mut r = SliceReader::zero_padded(slice.clone()).with_budget(budget.clone());
        let mut ntfs = Ntfs::new(&mut r).map_err(|e| err("boot sector", e))?;
        ntfs.read_upcase_table(&mut r)
            .map_err(|e| err("$UpCase", e))?;
        Ok(NtfsFs {
            ntfs,
            reader: Mutex::new(r),
            budget,
            slice,
        })
    }

    fn entry(&self, r: &mut SliceReader, path: Vec<u8>, file: &NtfsFile) -> Result<FileEntry> {
        let kind = if file.is_directory() {
            FileKind::Dir
        } else {
            FileKind::File
        };
        let (size, extents) = if kind == FileKind::File {
            match file.data(r, "") {
                Some(item) => {
                    let item = item.map_err(|e| err("$DATA", e))?;
                    let attr = item.to_attribute().map_err(|e| err("$DATA", e))?;
                    let plain = !attr.flags().intersects(
                        NtfsAttributeFlags::COMPRESSED
                            | NtfsAttributeFlags::ENCRYPTED
                            | NtfsAttributeFlags::SPARSE,
                    );
                    let value = attr.value(r).map_err(|e| err("$DATA", e))?;
                    let size = value.len();
                    let extents = match &value {
                        NtfsAttributeValue::NonResident(v) if plain => self.extents(v, size),
                        NtfsAttributeValue::Resident(v) if plain => {
                            self.resident_extents(v.data_position().value(), size)
                        }
                        _ => None,
                    };
                    (size, extents)
                }
                None => (0, None),
            }
        } else {
            (0, None)
        };
        let info = file.info().map_err(|e| err("$STANDARD_INFORMATION", e))?;
        let ticks = info.modification_time().nt_timestamp() as i64;
        Ok(FileEntry {
            path,
            kind,
            size,
            mode: None,
            uid: None,
            gid: None,
            mtime_ns: ticks.saturating_sub(NT_EPOCH_OFFSET).saturating_mul(100),
            file_id: Some(file.file_record_number()),
            link_target: None,
            extents,
            content_key: None,
            unsafe_name: false,
        })
    }

    /// Where a file's data lies on the disk, from its data runs: with
    /// them, a change in place is seen in the disk's block digests even
    /// when an attacker restored the size and the timestamps (else those
    /// are all there is to go by). None for sparse runs, or runs that do
    /// not cover the file.
    fn extents(
        &self,
        v: &ntfs::attribute_value::NtfsNonResidentAttributeValue,
        size: u64,
    ) -> Option<Vec<(u64, u64)>> {
        let mut out = Vec::new();
        let mut covered = 0u64;
        for run in v.data_runs() {
            if covered >= size {
                break;
            }
            let run = run.ok()?;
            let at = run.data_position().value()?.get();
            let len = run.allocated_size().min(size - covered);
            if out.len() == MAX_RUNS || at.checked_add(len)? > self.slice.len {
                return None;
            }
            out.push((self.slice.disk_offset(at), len));
            covered += len;
        }
        (covered >= size).then_some(out)
    }

    /// Where a small file kept inside its MFT record lies on the disk, in
    /// pieces that leave out the last two bytes of every 512-byte sector:
    /// on disk those hold the record's update sequence number, which every
    /// write of the record changes (their real bytes are kept elsewhere in
    /// the record). A change to the file's bytes in place — its size and
    /// times restored — is then seen in the block digests like any other,
    /// except in those two bytes of each 512.
    fn resident_extents(
        &self,
        at: Option<std::num::NonZeroU64>,
        size: u64,
    ) -> Option<Vec<(u64, u64)>> {
        const SECTOR: u64 = 512;
        let at = at?.get();
        let end = at.checked_add(size).filter(|&e| e <= self.slice.len)?;
        let mut out = Vec::new();
        let mut pos = at;
        while pos < end {
            let sector = pos / SECTOR * SECTOR;
            let usn = sector + SECTOR - 2;
            if pos >= usn {
                pos = sector + SECTOR;
                continue;
            }
            let stop = end.min(usn);
            out.push((self.slice.disk_offset(pos), stop - pos));
            pos = stop;
        }
        Some(out)
    }

    /// Children of directory record `dir`: (entry, record number).
    fn list(&self, r: &mut SliceReader, dir: u64, path: &[u8]) -> Result<Vec<(FileEntry, u64)>> {
        // The crate follows index nodes by itself: one naming itself as
        // its child would be followed (and kept in memory) without end.
        let _limit = self.budget.listing(ReadBudget::NTFS_LISTING);
        let file = self
            .ntfs
            .file(r, dir)
            .map_err(|e| err("directory record", e))?;
        if !file.is_directory() {
            return Err(GuestError::NotFound(format!(
                "/{} is not a directory",
                String::from_utf8_lossy(path)
            )));
        }
        let index = file
            .directory_index(r)
            .map_err(|e| err("directory index", e))?;
        let mut entries = index.entries();
        let mut out = Vec::new();
        let mut seen = HashSet::new();
        loop {
            let left = self.budget.left();
            let step = left.min(INDEX_STEP);
            self.budget.allow(step);
            let next = entries.next(r);
            self.budget.allow(left - (step - self.budget.left()));
            let Some(e) = next else { break };
            let e = e.map_err(|e| err("directory entry", e))?;
            let Some(key) = e.key() else { continue };
            let key = key.map_err(|e| err("file name", e))?;
            if key.namespace() == NtfsFileNamespace::Dos {
                continue; // the 8.3 alias of a name listed anyway
            }
            let rec = e.file_reference().file_record_number();
            let name = key.name().to_string_lossy();
            if rec < FIRST_USER_RECORD
                || name == "."
                || name == ".."
                || name.is_empty()
                || !seen.insert(name.clone())
            {
                continue;
            }
            if out.len() > MAX_ENTRIES {
                return corrupt("ntfs: more directory entries than any real volume");
            }
            let child = e
                .to_file(&self.ntfs, r)
                .map_err(|e| err("file record", e))?;
            let mut entry = self.entry(r, join(path, name.as_bytes()), &child)?;
            entry.unsafe_name = crate::model::is_unsafe_name(name.as_bytes());
            out.push((entry, rec));
        }
        Ok(out)
    }

    fn record_of(&self, r: &mut SliceReader, path: &[u8]) -> Result<(u64, Option<FileEntry>)> {
        let mut rec = ROOT_RECORD;
        let mut found = None;
        let mut at: Vec<u8> = Vec::new();
        if path.is_empty() {
            return Ok((rec, None));
        }
        for comp in path.split(|&b| b == b'/') {
            let children = self.list(r, rec, &at)?;
            let Some((e, child)) = children
                .into_iter()
                .find(|(e, _)| e.name().eq_ignore_ascii_case(comp))
            else {
                return Err(GuestError::NotFound(format!(
                    "/{}",
                    String::from_utf8_lossy(path)
                )));
            };
            rec = child;
            at = e.path.clone();
            found = Some(e);
        }
        Ok((rec, found))
    }
}

impl Filesystem for NtfsFs {
    fn kind(&self) -> String {
        "ntfs".into()
    }

    fn walk(&self) -> Result<Vec<FileEntry>> {
        let mut r = self.reader.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = Vec::new();
        let mut seen = HashSet::from([ROOT_RECORD]);
        let mut stack = vec![(ROOT_RECORD, Vec::new(), 0usize)];
        while let Some((dir, path, depth)) = stack.pop() {
            for (e, rec) in self.list(&mut r, dir, &path)? {
                if e.kind == FileKind::Dir && !e.unsafe_name {
                    if depth >= MAX_DEPTH || !seen.insert(rec) {
                        return corrupt(format!(
                            "ntfs: directory record {rec} loops or nests too deep"
                        ));
                    }
                    stack.push((rec, e.path.clone(), depth + 1));
                }
                out.push(e);
            }
        }
        out.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(out)
    }

    fn lookup(&self, path: &[u8]) -> Result<FileEntry> {
        let mut r = self.reader.lock().unwrap_or_else(|p| p.into_inner());
        match self.record_of(&mut r, path)? {
            (_, Some(e)) => Ok(e),
            (rec, None) => {
                let f = self.ntfs.file(&mut *r, rec).map_err(|e| err("root", e))?;
                self.entry(&mut r, Vec::new(), &f)
            }
        }
    }

    fn read_dir(&self, path: &[u8]) -> Result<Vec<FileEntry>> {
        let mut r = self.reader.lock().unwrap_or_else(|p| p.into_inner());
        let (rec, _) = self.record_of(&mut r, path)?;
        let mut out: Vec<FileEntry> = self
            .list(&mut r, rec, path)?
            .into_iter()
            .map(|(e, _)| e)
            .collect();
        out.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(out)
    }

    fn read_at(&self, entry: &FileEntry, offset: u64, buf: &mut [u8]) -> Result<usize> {
        let rec = entry
            .file_id
            .ok_or_else(|| GuestError::NotFound(entry.display_path()))?;
        let read = self.on_data(rec, |r, _, mut value| {
            if offset >= value.len() {
                return Ok(0);
            }
            value
                .seek(r, SeekFrom::Start(offset))
                .map_err(|e| err("seeking $DATA", e))?;
            let want = (buf.len() as u64).min(value.len() - offset) as usize;
            // The data through a reader that fails past the volume's end
            // (the records' reader gives zeros there, for the crate's
            // sake): a run pointing past the volume is an error, not a
            // file of zeros as long as it claims to be (and not the next
            // run's bytes moved up, which the crate would give after a
            // read of nothing).
            let mut data = SliceReader::strict(self.slice.clone());
            let mut done = 0;
            while done < want {
                match value
                    .read(&mut data, &mut buf[done..want])
                    .map_err(|e| err("reading $DATA", e))?
                {
                    0 => break,
                    n => done += n,
                }
            }
            if done < want {
                return corrupt(format!(
                    "ntfs: {}: its data runs end before its size ({} bytes), or lie past the end of the volume",
                    entry.display_path(),
                    value.len()
                ));
            }
            Ok(done)
        })?;
        Ok(read.unwrap_or(0))
    }

    fn streams(&self, entry: &FileEntry) -> Result<Vec<(String, u64)>> {
        self.named_streams(entry)
    }

    fn read_stream(&self, entry: &FileEntry, name: &str, max: usize) -> Result<Vec<u8>> {
        self.stream_bytes(entry, name, max)
    }

    fn data_ranges(&self, entry: &FileEntry) -> Result<Option<Vec<(u64, u64)>>> {
        let (Some(rec), FileKind::File) = (entry.file_id, entry.kind) else {
            return Ok(None);
        };
        let ranges = self.on_data(rec, |_, attr, value| {
            // Compressed runs hold their clusters in other places.
            let packed = NtfsAttributeFlags::COMPRESSED | NtfsAttributeFlags::ENCRYPTED;
            let NtfsAttributeValue::NonResident(v) = &value else {
                return Ok(None);
            };
            if attr.flags().intersects(packed) {
                return Ok(None);
            }
            // Runs without a place on the disk are sparse: zeros, not read.
            let size = value.len();
            let mut ranges = Vec::new();
            let mut at = 0u64;
            for run in v.data_runs() {
                if at >= size {
                    break;
                }
                let run = run.map_err(|e| err("data runs", e))?;
                let len = run.allocated_size().min(size - at);
                if run.data_position().value().is_some() {
                    if ranges.len() == MAX_DATA_RUNS {
                        return Ok(None);
                    }
                    ranges.push((at, len));
                }
                at += len;
            }
            // Past the last run, the file's bytes have no place: reading
            // them fails, so they are left in the ranges to be read.
            if at < size {
                ranges.push((at, size - at));
            }
            Ok(Some(ranges))
        })?;
        Ok(ranges.flatten())
    }
}

impl NtfsFs {
    /// Lists the named $DATA attributes of `entry`'s record.
    fn named_streams(&self, entry: &FileEntry) -> Result<Vec<(String, u64)>> {
        let Some(rec) = entry.file_id else {
            return Ok(Vec::new());
        };
        let mut r = self.reader.lock().unwrap_or_else(|p| p.into_inner());
        let file = self
            .ntfs
            .file(&mut *r, rec)
            .map_err(|e| err("file record", e))?;
        let mut out = Vec::new();
        let mut attrs = file.attributes();
        while let Some(item) = attrs.next(&mut *r) {
            let item = item.map_err(|e| err("attributes", e))?;
            let attr = item.to_attribute().map_err(|e| err("attributes", e))?;
            if attr.ty().map_err(|e| err("attributes", e))? != NtfsAttributeType::Data {
                continue;
            }
            let name = attr.name().map_err(|e| err("$DATA name", e))?;
            if name.is_empty() {
                continue;
            }
            if out.len() == MAX_STREAMS {
                return corrupt(format!(
                    "ntfs: {}: more than {MAX_STREAMS} named data streams",
                    entry.display_path()
                ));
            }
            out.push((name.to_string_lossy(), attr.value_length()));
        }
        Ok(out)
    }

    /// Up to `max` bytes of `entry`'s named stream `name`.
    fn stream_bytes(&self, entry: &FileEntry, name: &str, max: usize) -> Result<Vec<u8>> {
        let missing = || GuestError::NotFound(format!("{}:{name}", entry.display_path()));
        let rec = entry.file_id.ok_or_else(missing)?;
        let mut r = self.reader.lock().unwrap_or_else(|p| p.into_inner());
        let file = self
            .ntfs
            .file(&mut *r, rec)
            .map_err(|e| err("file record", e))?;
        let item = file
            .data(&mut *r, name)
            .ok_or_else(missing)?
            .map_err(|e| err("$DATA", e))?;
        let attr = item.to_attribute().map_err(|e| err("$DATA", e))?;
        let mut value = attr.value(&mut *r).map_err(|e| err("$DATA", e))?;
        let want = value.len().min(max as u64) as usize;
        // Grown as bytes arrive: a size claimed by a crafted record costs
        // nothing until it is read.
        let mut buf = Vec::new();
        let mut piece = vec![0u8; want.min(1 << 20)];
        // Past the volume's end is an error, as for a file's own data.
        let mut data = SliceReader::strict(self.slice.clone());
        while buf.len() < want {
            let room = (want - buf.len()).min(piece.len());
            match value
                .read(&mut data, &mut piece[..room])
                .map_err(|e| err("reading $DATA", e))?
            {
                0 => break,
                n => buf.extend_from_slice(&piece[..n]),
            }
        }
        Ok(buf)
    }

    /// Runs `f` on the unnamed $DATA attribute of record `rec` and its
    /// value, with the records' reader; None when the file has none.
    fn on_data<T>(
        &self,
        rec: u64,
        f: impl FnOnce(
            &mut SliceReader,
            &ntfs::NtfsAttribute<'_, '_>,
            NtfsAttributeValue<'_, '_>,
        ) -> Result<T>,
    ) -> Result<Option<T>> {
        let mut r = self.reader.lock().unwrap_or_else(|p| p.into_inner());
        let file = self
            .ntfs
            .file(&mut *r, rec)
            .map_err(|e| err("file record", e))?;
        let Some(item) = file.data(&mut *r, "") else {
            return Ok(None);
        };
        let item = item.map_err(|e| err("$DATA", e))?;
        let attr = item.to_attribute().map_err(|e| err("$DATA", e))?;
        let value = attr.value(&mut *r).map_err(|e| err("$DATA", e))?;
        f(&mut r, &attr, value).map(Some)
    }
}
