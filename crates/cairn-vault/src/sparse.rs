//! Where a sparse file holds data, from SEEK_DATA/SEEK_HOLE.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

/// The `[start, end)` ranges of `file` (of `size` bytes) that hold data;
/// everything else is a hole. `None` when the filesystem cannot tell.
pub fn data_ranges(file: &File, size: u64) -> io::Result<Option<Vec<(u64, u64)>>> {
    let fd = file.as_raw_fd();
    let mut out = Vec::new();
    let mut pos: i64 = 0;
    while (pos as u64) < size {
        let data = unsafe { libc::lseek(fd, pos, libc::SEEK_DATA) };
        if data < 0 {
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::ENXIO) => break, // no data after pos
                Some(libc::EINVAL) => return Ok(None),
                _ => return Err(e),
            }
        }
        let hole = unsafe { libc::lseek(fd, data, libc::SEEK_HOLE) };
        if hole < 0 {
            return Err(io::Error::last_os_error());
        }
        let end = (hole as u64).min(size);
        if end > data as u64 {
            out.push((data as u64, end));
        }
        pos = hole;
    }
    Ok(Some(out))
}
