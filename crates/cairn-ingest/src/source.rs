//! What can be backed up: disks (raw image files, block devices, qcow2
//! images, all seen as the guest's disk) and directories.

use std::fs::File;
use std::io;
use std::os::unix::fs::{FileExt, FileTypeExt};
use std::path::{Path, PathBuf};

/// `[start, end)` of a disk that holds data (everything else is a hole).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DataRange {
    pub start: u64,
    pub end: u64,
}

/// A disk as the guest sees it. `read_at` must be callable from several
/// threads at once.
pub trait DiskReader: Send + Sync {
    fn size(&self) -> u64;
    fn format(&self) -> &'static str;
    /// Fills `buf` exactly (zeros past the end).
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()>;
    /// Where the data is, when the source can tell (`None`: assume all).
    fn data_ranges(&self) -> io::Result<Option<Vec<DataRange>>>;
    /// The size now, to notice a source that changed during the backup.
    fn current_size(&self) -> io::Result<u64> {
        Ok(self.size())
    }
    /// The file's last change (ctime, ns) when the source is a regular
    /// file: a change between the start and the end of the backup means
    /// the snapshot may mix old and new blocks.
    fn changed_at(&self) -> Option<i64> {
        None
    }
    /// Whether another program holds a lock on the source (a running VM,
    /// qemu-nbd): what is read is what a power cut would leave.
    fn in_use(&self) -> bool {
        false
    }
}

pub struct RawDisk {
    file: File,
    size: u64,
    block_device: bool,
}

impl RawDisk {
    pub fn open(path: &Path) -> io::Result<Self> {
        let file = File::open(path)?;
        let block_device = file.metadata()?.file_type().is_block_device();
        let size = device_or_file_size(&file)?;
        Ok(RawDisk {
            file,
            size,
            block_device,
        })
    }
}

fn device_or_file_size(file: &File) -> io::Result<u64> {
    let md = file.metadata()?;
    if md.file_type().is_block_device() {
        // The length of a block device is where seeking to the end lands.
        let end = unsafe { libc::lseek(std::os::fd::AsRawFd::as_raw_fd(file), 0, libc::SEEK_END) };
        if end < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(end as u64)
    } else {
        Ok(md.len())
    }
}

impl DiskReader for RawDisk {
    fn size(&self) -> u64 {
        self.size
    }

    fn format(&self) -> &'static str {
        if self.block_device {
            "block-device"
        } else {
            "raw"
        }
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let avail = self.size.saturating_sub(offset).min(buf.len() as u64) as usize;
        let mut done = 0;
        while done < avail {
            match self
                .file
                .read_at(&mut buf[done..avail], offset + done as u64)
            {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the source became shorter during the backup",
                    ));
                }
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        buf[avail..].fill(0);
        Ok(())
    }

    /// Holes from SEEK_DATA/SEEK_HOLE; block devices and filesystems
    /// without them report everything as data.
    fn data_ranges(&self) -> io::Result<Option<Vec<DataRange>>> {
        if self.block_device {
            return Ok(None);
        }
        Ok(
            cairn_vault::sparse::data_ranges(&self.file, self.size)?.map(|r| {
                r.into_iter()
                    .map(|(start, end)| DataRange { start, end })
                    .collect()
            }),
        )
    }

    fn current_size(&self) -> io::Result<u64> {
        device_or_file_size(&self.file)
    }
    fn in_use(&self) -> bool {
        cairn_vault::lock::held_elsewhere(&self.file)
    }
    fn changed_at(&self) -> Option<i64> {
        use std::os::unix::fs::MetadataExt;
        let md = self.file.metadata().ok()?;
        md.file_type()
            .is_file()
            .then(|| md.ctime() * 1_000_000_000 + md.ctime_nsec())
    }
}

/// Any `BlockSource` (a snapshot seen through a recovery overlay, say) as
/// a disk to back up.
pub struct BlockSourceDisk {
    pub inner: std::sync::Arc<dyn cairn_vault::BlockSource>,
    pub format: &'static str,
}

impl DiskReader for BlockSourceDisk {
    fn size(&self) -> u64 {
        self.inner.size()
    }

    fn format(&self) -> &'static str {
        self.format
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let n = self.inner.read_at(offset, buf)?;
        buf[n..].fill(0);
        Ok(())
    }

    fn data_ranges(&self) -> io::Result<Option<Vec<DataRange>>> {
        Ok(Some(
            self.inner
                .extents(0, self.inner.size())
                .into_iter()
                .filter(|e| !e.zero)
                .map(|e| DataRange {
                    start: e.offset,
                    end: e.offset + e.len,
                })
                .collect(),
        ))
    }
}

pub enum Source {
    Disk(Box<dyn DiskReader>),
    Directory(PathBuf),
}

/// Opens a source and tells which kind it is (qcow2 by its magic bytes).
pub fn open(path: &Path) -> io::Result<Source> {
    let md = std::fs::metadata(path)?;
    if md.is_dir() {
        std::fs::read_dir(path)?; // fail now if unreadable
        return Ok(Source::Directory(path.to_path_buf()));
    }
    if !(md.is_file() || md.file_type().is_block_device()) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a disk image, block device or directory",
        ));
    }
    let f = File::open(path)?;
    let mut head = [0u8; 72];
    let n = if md.is_file() {
        f.read_at(&mut head, 0)?
    } else {
        0
    };
    if n >= 4 && &head[..4] == crate::qcow2::MAGIC {
        return Ok(Source::Disk(Box::new(crate::qcow2::Qcow2::open(path)?)));
    }
    if let Some(format) = container_format(&head[..n]) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "{} is a {format} image: Cairn reads raw and qcow2 disks (its bytes are not what the guest sees); convert it first, e.g. `qemu-img convert -O qcow2 {} disk.qcow2`",
                path.display(),
                path.display()
            ),
        ));
    }
    Ok(Source::Disk(Box::new(RawDisk::open(path)?)))
}

/// Virtual-disk containers other than qcow2, by their magic bytes: backed
/// up as raw, their guest's filesystem would be unreadable, so insight
/// and scans would see nothing while every backup reads "clean". (A fixed
/// VHD is raw data with a footer, and reads right as raw.)
fn container_format(head: &[u8]) -> Option<&'static str> {
    let at = |off: usize, magic: &[u8]| head.get(off..off + magic.len()) == Some(magic);
    if at(0, b"KDMV") || at(0, b"COWD") || at(0, b"# Disk DescriptorFile") {
        Some("VMDK")
    } else if at(0x40, &[0x7f, 0x10, 0xda, 0xbe]) {
        Some("VirtualBox VDI")
    } else if at(0, b"vhdxfile") {
        Some("VHDX")
    } else if at(0, b"conectix") {
        Some("dynamic VHD")
    } else if at(0, b"QED\0") {
        Some("QED")
    } else {
        None
    }
}
