//! The NFSv3 export (through the `nfsserve` crate): hypervisors that can
//! only attach NFS datastores see a small tree, one folder per exported
//! snapshot holding its disk as one raw file and a description:
//!
//! ```text
//! /                       (file id 1)
//! /<name>-<id>/           (id: from the snapshot id, low 4 bits 0)
//!     disk.img            (dir id + 1) the guest-visible bytes
//!     snapshot.json       (dir id + 2)
//! ```
//!
//! File ids come from the snapshot ids, so they stay the same across
//! restarts and export sets. Only `disk.img` of a writable export takes
//! writes, and they go to its overlay; everything else answers with a
//! clean NFS error (read-only file system, or access denied).

use crate::overlay::OverlayDisk;
use async_trait::async_trait;
use cairn_vault::BlockSource;
use nfsserve::nfs::{
    fattr3, fileid3, filename3, ftype3, nfspath3, nfsstat3, nfstime3, sattr3, set_size3, specdata3,
};
use nfsserve::vfs::{DirEntry, NFSFileSystem, ReadDirResult, VFSCapabilities};
use std::sync::Arc;

/// One exported snapshot.
pub struct NfsExport {
    /// The folder name (`<name>-<short id>`).
    pub name: String,
    /// The snapshot id in hex (file ids are derived from it).
    pub snapshot_id: String,
    pub disk: Arc<OverlayDisk>,
    /// `snapshot.json`'s content.
    pub description: Vec<u8>,
    /// The snapshot's time (seconds, nanoseconds since the epoch), as the
    /// files' mtime.
    pub time: (u32, u32),
}

impl NfsExport {
    fn writable(&self) -> bool {
        self.disk.overlay.is_some()
    }

    fn mtime(&self) -> nfstime3 {
        nfstime3 {
            seconds: self.time.0,
            nseconds: self.time.1,
        }
    }
}

pub struct NfsTree {
    exports: Vec<(fileid3, NfsExport)>,
    /// When the server started: the root's times.
    started: nfstime3,
}

const ROOT: fileid3 = 1;
/// Largest read answered at once (what fsinfo advertises).
const MAX_READ: u32 = 1 << 20;

enum Node<'a> {
    Root,
    Dir(&'a NfsExport),
    Disk(&'a NfsExport),
    Json(&'a NfsExport),
}

fn dir_id(snapshot_id: &str) -> fileid3 {
    let prefix = snapshot_id.get(..16).unwrap_or(snapshot_id);
    let n = u64::from_str_radix(prefix, 16).unwrap_or(0x10);
    // Low 4 bits name the entry inside the folder; never 0 or the root.
    (n & !0xF).max(0x10)
}

impl NfsTree {
    pub fn new(exports: Vec<NfsExport>) -> std::io::Result<Self> {
        let mut out: Vec<(fileid3, NfsExport)> = Vec::new();
        for e in exports {
            let id = dir_id(&e.snapshot_id);
            if out.iter().any(|(i, x)| *i == id || x.name == e.name) {
                return Err(std::io::Error::other(format!(
                    "{} is exported twice (or two snapshot ids collide)",
                    e.name
                )));
            }
            out.push((id, e));
        }
        out.sort_by_key(|(id, _)| *id);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        Ok(NfsTree {
            exports: out,
            started: nfstime3 {
                seconds: now.as_secs() as u32,
                nseconds: now.subsec_nanos(),
            },
        })
    }

    fn node(&self, id: fileid3) -> Result<Node<'_>, nfsstat3> {
        if id == ROOT {
            return Ok(Node::Root);
        }
        let dir = id & !0xF;
        let e = self
            .exports
            .iter()
            .find(|(d, _)| *d == dir)
            .map(|(_, e)| e)
            .ok_or(nfsstat3::NFS3ERR_STALE)?;
        match id & 0xF {
            0 => Ok(Node::Dir(e)),
            1 => Ok(Node::Disk(e)),
            2 => Ok(Node::Json(e)),
            _ => Err(nfsstat3::NFS3ERR_STALE),
        }
    }

    fn attr(&self, id: fileid3) -> Result<fattr3, nfsstat3> {
        let node = self.node(id)?;
        let (ftype, mode, size, time, used) = match &node {
            Node::Root => (ftype3::NF3DIR, 0o555, 4096, self.started, 4096),
            Node::Dir(_) => (ftype3::NF3DIR, 0o555, 4096, self.started, 4096),
            Node::Disk(e) => {
                let size = e.disk.size();
                (
                    ftype3::NF3REG,
                    if e.writable() { 0o644 } else { 0o444 },
                    size,
                    e.mtime(),
                    size,
                )
            }
            Node::Json(e) => {
                let n = e.description.len() as u64;
                (ftype3::NF3REG, 0o444, n, e.mtime(), n)
            }
        };
        let time = match node {
            Node::Dir(e) => e.mtime(),
            _ => time,
        };
        Ok(fattr3 {
            ftype,
            mode,
            nlink: if matches!(ftype, ftype3::NF3DIR) {
                2
            } else {
                1
            },
            uid: 0,
            gid: 0,
            size,
            used,
            rdev: specdata3::default(),
            fsid: 0xCA1B,
            fileid: id,
            atime: time,
            mtime: time,
            ctime: time,
        })
    }

    /// The error for a change the tree does not allow.
    fn refuse(&self) -> nfsstat3 {
        if self.exports.iter().any(|(_, e)| e.writable()) {
            nfsstat3::NFS3ERR_ACCES
        } else {
            nfsstat3::NFS3ERR_ROFS
        }
    }

    fn entries(&self, dir: fileid3) -> Result<Vec<(fileid3, Vec<u8>)>, nfsstat3> {
        match self.node(dir)? {
            Node::Root => Ok(self
                .exports
                .iter()
                .map(|(id, e)| (*id, e.name.as_bytes().to_vec()))
                .collect()),
            Node::Dir(_) => Ok(vec![
                (dir + 1, b"disk.img".to_vec()),
                (dir + 2, b"snapshot.json".to_vec()),
            ]),
            _ => Err(nfsstat3::NFS3ERR_NOTDIR),
        }
    }
}

fn io_error(e: std::io::Error) -> nfsstat3 {
    tracing::warn!("NFS read or write failed: {e}");
    nfsstat3::NFS3ERR_IO
}

#[async_trait]
impl NFSFileSystem for NfsTree {
    fn capabilities(&self) -> VFSCapabilities {
        if self.exports.iter().any(|(_, e)| e.writable()) {
            VFSCapabilities::ReadWrite
        } else {
            VFSCapabilities::ReadOnly
        }
    }

    fn root_dir(&self) -> fileid3 {
        ROOT
    }

    async fn lookup(&self, dirid: fileid3, filename: &filename3) -> Result<fileid3, nfsstat3> {
        let name = filename.0.as_slice();
        if name == b"." {
            return self.attr(dirid).map(|_| dirid);
        }
        if name == b".." {
            return match self.node(dirid)? {
                Node::Root | Node::Dir(_) => Ok(ROOT),
                _ => Err(nfsstat3::NFS3ERR_NOTDIR),
            };
        }
        self.entries(dirid)?
            .into_iter()
            .find(|(_, n)| n == name)
            .map(|(id, _)| id)
            .ok_or(nfsstat3::NFS3ERR_NOENT)
    }

    async fn getattr(&self, id: fileid3) -> Result<fattr3, nfsstat3> {
        self.attr(id)
    }

    async fn setattr(&self, id: fileid3, setattr: sattr3) -> Result<fattr3, nfsstat3> {
        let attr = self.attr(id)?;
        match self.node(id)? {
            // Times and modes are not kept; a size change is refused (the
            // disk's size is the snapshot's).
            Node::Disk(e) if e.writable() => match setattr.size {
                set_size3::size(n) if n != attr.size => Err(nfsstat3::NFS3ERR_INVAL),
                _ => Ok(attr),
            },
            _ => Err(self.refuse()),
        }
    }

    async fn read(
        &self,
        id: fileid3,
        offset: u64,
        count: u32,
    ) -> Result<(Vec<u8>, bool), nfsstat3> {
        match self.node(id)? {
            Node::Disk(e) => {
                let size = e.disk.size();
                if offset >= size {
                    return Ok((Vec::new(), true));
                }
                let n = (count.min(MAX_READ) as u64).min(size - offset) as usize;
                let disk = e.disk.clone();
                // Chunk decoding is CPU work: off the async threads.
                let data = tokio::task::spawn_blocking(move || {
                    let mut buf = vec![0u8; n];
                    disk.read_exact_at(offset, &mut buf).map(|_| buf)
                })
                .await
                .map_err(|_| nfsstat3::NFS3ERR_IO)?
                .map_err(io_error)?;
                Ok((data, offset + n as u64 >= size))
            }
            Node::Json(e) => {
                let d = &e.description;
                let start = (offset as usize).min(d.len());
                let end = (start + count as usize).min(d.len());
                Ok((d[start..end].to_vec(), end == d.len()))
            }
            _ => Err(nfsstat3::NFS3ERR_ISDIR),
        }
    }

    async fn write(&self, id: fileid3, offset: u64, data: &[u8]) -> Result<fattr3, nfsstat3> {
        match self.node(id)? {
            Node::Disk(e) if e.writable() => {
                let size = e.disk.size();
                if offset.saturating_add(data.len() as u64) > size {
                    return Err(nfsstat3::NFS3ERR_FBIG);
                }
                let disk = e.disk.clone();
                let data = data.to_vec();
                // nfsserve answers every WRITE as FILE_SYNC (it has no
                // COMMIT), so the bytes must be on disk before the reply.
                tokio::task::spawn_blocking(move || {
                    let overlay = disk.overlay.as_ref().expect("writable");
                    overlay.write_at(disk.base.as_ref(), offset, &data)?;
                    overlay.flush()
                })
                .await
                .map_err(|_| nfsstat3::NFS3ERR_IO)?
                .map_err(io_error)?;
                self.attr(id)
            }
            Node::Root | Node::Dir(_) => Err(nfsstat3::NFS3ERR_ISDIR),
            _ => Err(self.refuse()),
        }
    }

    async fn create(
        &self,
        _dirid: fileid3,
        _filename: &filename3,
        _attr: sattr3,
    ) -> Result<(fileid3, fattr3), nfsstat3> {
        Err(self.refuse())
    }

    async fn create_exclusive(
        &self,
        _dirid: fileid3,
        _filename: &filename3,
    ) -> Result<fileid3, nfsstat3> {
        Err(self.refuse())
    }

    async fn mkdir(
        &self,
        _dirid: fileid3,
        _dirname: &filename3,
    ) -> Result<(fileid3, fattr3), nfsstat3> {
        Err(self.refuse())
    }

    async fn remove(&self, _dirid: fileid3, _filename: &filename3) -> Result<(), nfsstat3> {
        Err(self.refuse())
    }

    async fn rename(
        &self,
        _from_dirid: fileid3,
        _from_filename: &filename3,
        _to_dirid: fileid3,
        _to_filename: &filename3,
    ) -> Result<(), nfsstat3> {
        Err(self.refuse())
    }

    async fn readdir(
        &self,
        dirid: fileid3,
        start_after: fileid3,
        max_entries: usize,
    ) -> Result<ReadDirResult, nfsstat3> {
        let all = self.entries(dirid)?;
        let skip = if start_after == 0 {
            0
        } else {
            all.iter()
                .position(|(id, _)| *id == start_after)
                .map(|i| i + 1)
                .ok_or(nfsstat3::NFS3ERR_BAD_COOKIE)?
        };
        let mut entries = Vec::new();
        for (id, name) in all.iter().skip(skip).take(max_entries) {
            entries.push(DirEntry {
                fileid: *id,
                name: name.clone().into(),
                attr: self.attr(*id)?,
            });
        }
        Ok(ReadDirResult {
            end: skip + entries.len() >= all.len(),
            entries,
        })
    }

    async fn symlink(
        &self,
        _dirid: fileid3,
        _linkname: &filename3,
        _symlink: &nfspath3,
        _attr: &sattr3,
    ) -> Result<(fileid3, fattr3), nfsstat3> {
        Err(self.refuse())
    }

    async fn readlink(&self, _id: fileid3) -> Result<nfspath3, nfsstat3> {
        Err(nfsstat3::NFS3ERR_INVAL)
    }
}

/// Largest RPC record a client may send (the biggest NFS WRITE we offer
/// and its header fit many times over).
const MAX_RECORD: u32 = 4 << 20;

/// Serves `tree` on `addr` until the task is dropped; returns the bound
/// port first through `ready`.
///
/// `nfsserve` sizes its buffer from a record's claimed length (up to
/// 2 GiB) before reading it, so a single client could exhaust memory.
/// It therefore listens on loopback only, behind our own listener, which
/// passes each client's records through once their lengths are checked.
pub async fn serve(
    addr: &str,
    tree: NfsTree,
    ready: tokio::sync::oneshot::Sender<u16>,
) -> std::io::Result<()> {
    use nfsserve::tcp::{NFSTcp, NFSTcpListener};
    let inner = NFSTcpListener::bind("127.0.0.1:0", tree).await?;
    let inner_port = inner.get_listen_port();
    let outer = tokio::net::TcpListener::bind(addr).await?;
    let _ = ready.send(outer.local_addr()?.port());
    tokio::select! {
        r = inner.handle_forever() => r,
        r = relay(outer, inner_port) => r,
    }
}

/// Accepts clients and relays each to the inner server.
async fn relay(outer: tokio::net::TcpListener, inner_port: u16) -> std::io::Result<()> {
    use std::sync::atomic::{AtomicI64, Ordering};
    let clients = Arc::new(AtomicI64::new(0));
    loop {
        let (client, peer) = crate::accept::next_client(&outer, &clients, "nfs").await;
        let clients = clients.clone();
        tokio::spawn(async move {
            if let Ok(server) = tokio::net::TcpStream::connect(("127.0.0.1", inner_port)).await {
                // Each record goes out whole at once: with Nagle's algorithm
                // a small request waited for the peer's delayed ACK (40 ms
                // per READ: a 2 GiB disk took two minutes instead of 4 s).
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                let (cr, mut cw) = client.into_split();
                let (mut sr, sw) = server.into_split();
                let up = checked_records(cr, sw);
                let down = tokio::io::copy(&mut sr, &mut cw);
                tokio::select! {
                    r = up => if let Err(e) = r {
                        tracing::warn!("nfs client {peer}: {e}; connection closed");
                    },
                    _ = down => {}
                }
            }
            clients.fetch_sub(1, Ordering::Relaxed);
        });
    }
}

/// Copies RPC records (RFC 5531 record marking: fragments, each with a
/// 4-byte header) from `r` to `w`, refusing a record longer than
/// [`MAX_RECORD`] before any of it is passed on.
async fn checked_records(
    mut r: impl tokio::io::AsyncRead + Unpin,
    mut w: impl tokio::io::AsyncWrite + Unpin,
) -> std::io::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut record = 0u32;
    let mut buf = Vec::new();
    loop {
        let mut h = [0u8; 4];
        match r.read_exact(&mut h).await {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e),
        }
        let header = u32::from_be_bytes(h);
        let len = header & 0x7fff_ffff;
        record = record.saturating_add(len);
        if record > MAX_RECORD {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("a record of over {record} bytes"),
            ));
        }
        // Header and fragment in one write (one segment for a small one).
        buf.clear();
        buf.extend_from_slice(&h);
        buf.resize(4 + len as usize, 0);
        r.read_exact(&mut buf[4..]).await?;
        w.write_all(&buf).await?;
        if header & 0x8000_0000 != 0 {
            record = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn records_pass_whole_and_an_oversized_one_is_refused_unread() {
        let frag = |last: bool, data: &[u8]| {
            let mut v = ((data.len() as u32) | if last { 1 << 31 } else { 0 })
                .to_be_bytes()
                .to_vec();
            v.extend_from_slice(data);
            v
        };
        let mut input = frag(false, b"abc");
        input.extend(frag(true, b"defg"));
        let mut out = Vec::new();
        checked_records(&input[..], &mut out).await.unwrap();
        assert_eq!(out, input);
        // A header claiming 2 GiB: refused before anything is read or sent.
        let mut out = Vec::new();
        let huge = [0xff, 0xff, 0xff, 0xff, 1, 2, 3];
        assert!(checked_records(&huge[..], &mut out).await.is_err());
        assert!(out.is_empty());
        // Many small fragments adding up past the limit: refused too.
        let mut many = Vec::new();
        for _ in 0..5 {
            many.extend(frag(false, &vec![0u8; 1 << 20]));
        }
        let mut out = Vec::new();
        assert!(checked_records(&many[..], &mut out).await.is_err());
        assert!(out.len() < 5 << 20);
    }

    #[test]
    fn ids_are_stable_and_distinct() {
        let a = dir_id("3f2a9c0011223344aabbccdd");
        assert_eq!(a, dir_id("3f2a9c0011223344ffff"));
        assert_eq!(a & 0xF, 0);
        assert_ne!(a, ROOT);
        assert_eq!(dir_id("not hex"), 0x10);
    }
}
