//! `cairn mount`: a snapshot as a read-only FUSE filesystem, either the
//! guest's files (through the guest layer) or the raw disk as one file.
//! The tree is listed once at mount time; contents are read on demand.

use cairn_guest::{FileEntry, FileKind, Filesystem as GuestFs};
use cairn_vault::BlockSource;
use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, Generation, INodeNo, LockOwner, OpenFlags,
    ReplyAttr, ReplyData, ReplyDirectory, ReplyEntry, Request,
};
use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const TTL: Duration = Duration::from_secs(3600);

/// What one inode is.
enum Node {
    Dir { children: Vec<(Vec<u8>, u64)> },
    File(FileEntry),
    Symlink(Vec<u8>),
    Disk,
}

struct Inode {
    node: Node,
    attr: FileAttr,
}

enum Content {
    Files(Box<dyn GuestFs>),
    Disk(Arc<dyn BlockSource>),
}

pub struct SnapshotFs {
    inodes: HashMap<u64, Inode>,
    content: Content,
}

fn attr(
    ino: u64,
    kind: FileType,
    size: u64,
    perm: u16,
    uid: u32,
    gid: u32,
    mtime_ns: i64,
) -> FileAttr {
    let t = if mtime_ns >= 0 {
        UNIX_EPOCH + Duration::from_nanos(mtime_ns as u64)
    } else {
        UNIX_EPOCH
    };
    FileAttr {
        ino: INodeNo(ino),
        size,
        blocks: size.div_ceil(512),
        atime: t,
        mtime: t,
        ctime: t,
        crtime: t,
        kind,
        perm,
        nlink: if kind == FileType::Directory { 2 } else { 1 },
        uid,
        gid,
        rdev: 0,
        blksize: 4096,
        flags: 0,
    }
}

impl SnapshotFs {
    /// The guest's files; entries with unsafe names are left out.
    pub fn files(fs: Box<dyn GuestFs>, mtime: SystemTime) -> cairn_guest::Result<Self> {
        let (entries, unread) = cairn_guest::walk_readable(fs.as_ref())?;
        for s in unread {
            tracing::warn!("the mount shows what can be read: {s}");
        }
        let root_ns = mtime
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as i64)
            .unwrap_or(0);
        let mut inodes = HashMap::new();
        let mut by_path: HashMap<Vec<u8>, u64> = HashMap::from([(Vec::new(), 1u64)]);
        inodes.insert(
            1,
            Inode {
                node: Node::Dir { children: vec![] },
                attr: attr(1, FileType::Directory, 0, 0o555, 0, 0, root_ns),
            },
        );
        let mut next = 2u64;
        for e in entries {
            if e.unsafe_name {
                continue;
            }
            let parent_path = match e.path.iter().rposition(|&b| b == b'/') {
                Some(i) => e.path[..i].to_vec(),
                None => Vec::new(),
            };
            let Some(&parent) = by_path.get(&parent_path) else {
                continue;
            };
            let ino = next;
            next += 1;
            let perm = e
                .mode
                .map(|m| (m & 0o7777) as u16)
                .unwrap_or(if e.kind == FileKind::Dir {
                    0o555
                } else {
                    0o444
                });
            let (uid, gid) = (e.uid.unwrap_or(0), e.gid.unwrap_or(0));
            let (node, kind) = match e.kind {
                FileKind::Dir => (Node::Dir { children: vec![] }, FileType::Directory),
                FileKind::Symlink => (
                    Node::Symlink(e.link_target.clone().unwrap_or_default()),
                    FileType::Symlink,
                ),
                FileKind::File => (Node::File(e.clone()), FileType::RegularFile),
                FileKind::Other => continue,
            };
            let a = attr(ino, kind, e.size, perm, uid, gid, e.mtime_ns);
            if let Some(Inode {
                node: Node::Dir { children },
                ..
            }) = inodes.get_mut(&parent)
            {
                children.push((e.name().to_vec(), ino));
            }
            if e.kind == FileKind::Dir {
                by_path.insert(e.path.clone(), ino);
            }
            inodes.insert(ino, Inode { node, attr: a });
        }
        Ok(SnapshotFs {
            inodes,
            content: Content::Files(fs),
        })
    }

    /// The whole disk as one read-only file, `disk.img`.
    pub fn disk(disk: Arc<dyn BlockSource>, mtime: SystemTime) -> Self {
        let ns = mtime
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as i64)
            .unwrap_or(0);
        let mut inodes = HashMap::new();
        inodes.insert(
            1,
            Inode {
                node: Node::Dir {
                    children: vec![(b"disk.img".to_vec(), 2)],
                },
                attr: attr(1, FileType::Directory, 0, 0o555, 0, 0, ns),
            },
        );
        inodes.insert(
            2,
            Inode {
                node: Node::Disk,
                attr: attr(2, FileType::RegularFile, disk.size(), 0o444, 0, 0, ns),
            },
        );
        SnapshotFs {
            inodes,
            content: Content::Disk(disk),
        }
    }
}

impl Filesystem for SnapshotFs {
    /// Every `close` of a file sends a flush; a read-only view has
    /// nothing to write back (fuser's default logs each one as a
    /// warning).
    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: fuser::LockOwner,
        reply: fuser::ReplyEmpty,
    ) {
        reply.ok();
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let Some(Inode {
            node: Node::Dir { children },
            ..
        }) = self.inodes.get(&parent.0)
        else {
            return reply.error(Errno::ENOTDIR);
        };
        match children
            .iter()
            .find(|(n, _)| n.as_slice() == name.as_bytes())
        {
            Some((_, ino)) => reply.entry(&TTL, &self.inodes[ino].attr, Generation(0)),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.inodes.get(&ino.0) {
            Some(i) => reply.attr(&TTL, &i.attr),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.inodes.get(&ino.0) {
            Some(Inode {
                node: Node::Symlink(t),
                ..
            }) => reply.data(t),
            _ => reply.error(Errno::EINVAL),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let mut buf = vec![0u8; size as usize];
        let n = match (self.inodes.get(&ino.0).map(|i| &i.node), &self.content) {
            (Some(Node::File(e)), Content::Files(fs)) => {
                let mut done = 0;
                loop {
                    match fs.read_at(e, offset + done as u64, &mut buf[done..]) {
                        Ok(0) => break Ok(done),
                        Ok(n) => {
                            done += n;
                            if done == buf.len() {
                                break Ok(done);
                            }
                        }
                        Err(err) => break Err(err.to_string()),
                    }
                }
            }
            (Some(Node::Disk), Content::Disk(d)) => {
                d.read_at(offset, &mut buf).map_err(|e| e.to_string())
            }
            (Some(Node::Dir { .. }), _) => return reply.error(Errno::EISDIR),
            _ => return reply.error(Errno::ENOENT),
        };
        match n {
            Ok(n) => reply.data(&buf[..n]),
            Err(e) => {
                tracing::error!("reading inode {}: {e}", ino.0);
                reply.error(Errno::EIO)
            }
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let Some(Inode {
            node: Node::Dir { children },
            ..
        }) = self.inodes.get(&ino.0)
        else {
            return reply.error(Errno::ENOTDIR);
        };
        let dots = [(b".".to_vec(), ino.0), (b"..".to_vec(), 1)];
        for (i, (name, child)) in dots
            .iter()
            .chain(children.iter())
            .enumerate()
            .skip(offset as usize)
        {
            let kind = self
                .inodes
                .get(child)
                .map(|c| c.attr.kind)
                .unwrap_or(FileType::Directory);
            if reply.add(INodeNo(*child), i as u64 + 1, kind, OsStr::from_bytes(name)) {
                break;
            }
        }
        reply.ok();
    }
}

/// Mounts read-only in the background; dropping the session unmounts.
pub fn mount(
    fs: SnapshotFs,
    mountpoint: &std::path::Path,
) -> std::io::Result<fuser::BackgroundSession> {
    let mut config = fuser::Config::default();
    config.mount_options = vec![
        fuser::MountOption::RO,
        fuser::MountOption::FSName("cairn".into()),
        fuser::MountOption::DefaultPermissions,
        // A guest's setuid programs and device nodes are files to look
        // at here, never privileges or devices of this host.
        fuser::MountOption::NoSuid,
        fuser::MountOption::NoDev,
    ];
    fuser::spawn_mount(fs, mountpoint, &config)
}
