//! Entry points for `cargo fuzz` (see `fuzz/`): the qcow2 reader on
//! arbitrary image bytes. Not used by Cairn itself.

use crate::qcow2::Qcow2;
use crate::source::DiskReader;
use std::io::Write;

/// Opens `data` as a qcow2 image and reads it: its data ranges and a few
/// clusters chosen by the input. Errors are fine; panics, hangs and
/// unbounded memory are the bugs looked for.
pub fn qcow2(data: &[u8]) {
    let mut image = data.to_vec();
    // A backing file is named by the host, not the guest; the fuzzer's
    // would open arbitrary paths of this machine (a FIFO blocks), so it is
    // cut off here.
    if image.len() >= 20 {
        image[8..20].fill(0);
    }
    let path = std::env::temp_dir().join(format!("cairn-fuzz-qcow2-{}", std::process::id()));
    let written = std::fs::File::create(&path).and_then(|mut f| f.write_all(&image));
    if written.is_err() {
        return;
    }
    if let Ok(q) = Qcow2::open(&path) {
        let size = q.size();
        let _ = q.data_ranges();
        let mut buf = vec![0u8; 64 << 10];
        for w in data.chunks(8).take(16) {
            let mut k = [0u8; 8];
            k[..w.len()].copy_from_slice(w);
            if size == 0 {
                break;
            }
            let at = u64::from_le_bytes(k) % size;
            let n = (size - at).min(buf.len() as u64) as usize;
            let _ = q.read_at(at, &mut buf[..n]);
        }
    }
    let _ = std::fs::remove_file(&path);
}
