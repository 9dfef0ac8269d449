//! An NBD server (fixed newstyle handshake, structured replies, the
//! `base:allocation` meta context) written for Cairn: no crate does
//! these well. One task per client; a client that breaks the protocol
//! loses its connection, with a log line, and nobody else notices.

use crate::overlay::OverlayDisk;
use cairn_vault::BlockSource;
use std::io;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::TcpListener;

const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
const REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
const REQUEST_MAGIC: u32 = 0x2560_9513;
const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
const STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;

const FLAG_FIXED_NEWSTYLE: u16 = 1;
const FLAG_NO_ZEROES: u16 = 2;
const CLIENT_NO_ZEROES: u32 = 2;

const OPT_EXPORT_NAME: u32 = 1;
const OPT_ABORT: u32 = 2;
const OPT_LIST: u32 = 3;
const OPT_INFO: u32 = 6;
const OPT_GO: u32 = 7;
const OPT_STRUCTURED_REPLY: u32 = 8;
const OPT_LIST_META_CONTEXT: u32 = 9;
const OPT_SET_META_CONTEXT: u32 = 10;

const REP_ACK: u32 = 1;
const REP_SERVER: u32 = 2;
const REP_INFO: u32 = 3;
const REP_META_CONTEXT: u32 = 4;
const REP_ERR_UNSUP: u32 = 0x8000_0001;
const REP_ERR_INVALID: u32 = 0x8000_0003;
const REP_ERR_UNKNOWN: u32 = 0x8000_0006;

const INFO_EXPORT: u16 = 0;
const INFO_BLOCK_SIZE: u16 = 3;

const TF_HAS_FLAGS: u16 = 1 << 0;
const TF_READ_ONLY: u16 = 1 << 1;
const TF_SEND_FLUSH: u16 = 1 << 2;
const TF_SEND_TRIM: u16 = 1 << 5;
const TF_SEND_WRITE_ZEROES: u16 = 1 << 6;
const TF_CAN_MULTI_CONN: u16 = 1 << 8;

const CMD_READ: u16 = 0;
const CMD_WRITE: u16 = 1;
const CMD_DISC: u16 = 2;
const CMD_FLUSH: u16 = 3;
const CMD_TRIM: u16 = 4;
const CMD_CACHE: u16 = 5;
const CMD_WRITE_ZEROES: u16 = 6;
const CMD_BLOCK_STATUS: u16 = 7;

const REPLY_FLAG_DONE: u16 = 1;
const REPLY_TYPE_NONE: u16 = 0;
const REPLY_TYPE_OFFSET_DATA: u16 = 1;
const REPLY_TYPE_BLOCK_STATUS: u16 = 5;
const REPLY_TYPE_ERROR: u16 = 32769;

const EPERM: u32 = 1;
const EIO: u32 = 5;
const EINVAL: u32 = 22;
const ENOSPC: u32 = 28;

const STATE_HOLE: u32 = 1;
const STATE_ZERO: u32 = 2;
const META_CONTEXT: &str = "base:allocation";
const META_ID: u32 = 1;
/// Largest request served; larger ones are refused (clients split).
const MAX_REQUEST: u32 = 32 << 20;

/// One disk offered under a name.
pub struct Export {
    pub name: String,
    pub disk: Arc<OverlayDisk>,
    pub description: String,
}

impl Export {
    fn writable(&self) -> bool {
        self.disk.overlay.is_some()
    }
}

/// Serves `exports` to every client that connects, until the task is
/// dropped.
pub async fn serve(listener: TcpListener, exports: Arc<Vec<Export>>) -> io::Result<()> {
    serve_counted(listener, exports, Default::default()).await
}

/// [`serve`] on a Unix socket: only who may open the socket's folder can
/// connect (the isolated boot gives QEMU its disk this way, in a folder
/// of mode 0700, instead of on a TCP port any local user could reach).
pub async fn serve_unix(
    listener: tokio::net::UnixListener,
    exports: Arc<Vec<Export>>,
) -> io::Result<()> {
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::warn!("nbd: accepting a connection: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let exports = exports.clone();
        tokio::spawn(async move {
            if let Err(e) = client(stream, &exports).await {
                tracing::warn!("nbd client on the socket: {e}; connection closed");
            }
        });
    }
}

/// [`serve`], keeping `clients` at the number of connected clients.
pub async fn serve_counted(
    listener: TcpListener,
    exports: Arc<Vec<Export>>,
    clients: Arc<std::sync::atomic::AtomicI64>,
) -> io::Result<()> {
    /// Counts a client out however its task ends (done, failed, aborted).
    struct Counted(Arc<std::sync::atomic::AtomicI64>);
    impl Drop for Counted {
        fn drop(&mut self) {
            self.0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        }
    }
    // Connections live in a set owned by this future: when it is dropped
    // (an export stopped or expired), every connection ends with it, and
    // no client reads on after the export let go of the vault.
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let (stream, peer) = crate::accept::next_client(&listener, &clients, "nbd").await;
        while connections.try_join_next().is_some() {}
        let exports = exports.clone();
        let counted = Counted(clients.clone());
        connections.spawn(async move {
            let _counted = counted;
            let served = match stream.set_nodelay(true) {
                Ok(()) => client(stream, &exports).await,
                Err(e) => Err(e),
            };
            if let Err(e) = served {
                tracing::warn!("nbd client {peer}: {e}; connection closed");
            }
        });
    }
}

struct Conn<R, W> {
    r: BufReader<R>,
    w: BufWriter<W>,
    structured: bool,
    meta: bool,
}

fn proto(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

impl<R, W: AsyncWrite + Unpin> Conn<R, W> {
    async fn opt_reply(&mut self, opt: u32, ty: u32, data: &[u8]) -> io::Result<()> {
        self.w.write_u64(REPLY_MAGIC).await?;
        self.w.write_u32(opt).await?;
        self.w.write_u32(ty).await?;
        self.w.write_u32(data.len() as u32).await?;
        self.w.write_all(data).await?;
        self.w.flush().await
    }
}

/// One client's whole session over any byte stream (a TCP connection;
/// the fuzzer's bytes).
async fn client<S: AsyncRead + AsyncWrite>(stream: S, exports: &[Export]) -> io::Result<()> {
    let (r, w) = tokio::io::split(stream);
    let mut c = Conn {
        r: BufReader::new(r),
        w: BufWriter::with_capacity(1 << 20, w),
        structured: false,
        meta: false,
    };
    c.w.write_u64(NBDMAGIC).await?;
    c.w.write_u64(IHAVEOPT).await?;
    c.w.write_u16(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES).await?;
    c.w.flush().await?;
    let client_flags = c.r.read_u32().await?;
    let no_zeroes = client_flags & CLIENT_NO_ZEROES != 0;
    let export = loop {
        if c.r.read_u64().await? != IHAVEOPT {
            return Err(proto("bad option magic"));
        }
        let opt = c.r.read_u32().await?;
        let len = c.r.read_u32().await?;
        if len > 64 * 1024 {
            return Err(proto("option data too long"));
        }
        let mut data = vec![0u8; len as usize];
        c.r.read_exact(&mut data).await?;
        match opt {
            OPT_EXPORT_NAME => {
                let name = String::from_utf8_lossy(&data).into_owned();
                let Some(e) = find(exports, &name) else {
                    return Err(proto(format!("no export named {name:?}")));
                };
                c.w.write_u64(e.disk.size()).await?;
                c.w.write_u16(flags(e)).await?;
                if !no_zeroes {
                    c.w.write_all(&[0u8; 124]).await?;
                }
                c.w.flush().await?;
                break e;
            }
            OPT_ABORT => {
                c.opt_reply(opt, REP_ACK, &[]).await?;
                return Ok(());
            }
            OPT_LIST => {
                for e in exports {
                    let mut d = (e.name.len() as u32).to_be_bytes().to_vec();
                    d.extend_from_slice(e.name.as_bytes());
                    d.extend_from_slice(e.description.as_bytes());
                    c.opt_reply(opt, REP_SERVER, &d).await?;
                }
                c.opt_reply(opt, REP_ACK, &[]).await?;
            }
            OPT_STRUCTURED_REPLY => {
                c.structured = true;
                c.opt_reply(opt, REP_ACK, &[]).await?;
            }
            OPT_LIST_META_CONTEXT | OPT_SET_META_CONTEXT => {
                let Some((_, queries)) = parse_meta_request(&data) else {
                    c.opt_reply(opt, REP_ERR_INVALID, b"malformed meta context request")
                        .await?;
                    continue;
                };
                if opt == OPT_SET_META_CONTEXT && !c.structured {
                    c.opt_reply(opt, REP_ERR_INVALID, b"structured replies first")
                        .await?;
                    continue;
                }
                let wanted = queries.is_empty() && opt == OPT_LIST_META_CONTEXT
                    || queries.iter().any(|q| {
                        q == META_CONTEXT || (opt == OPT_LIST_META_CONTEXT && q == "base:")
                    });
                if opt == OPT_SET_META_CONTEXT {
                    c.meta = queries.iter().any(|q| q == META_CONTEXT);
                }
                if wanted {
                    let mut d = META_ID.to_be_bytes().to_vec();
                    d.extend_from_slice(META_CONTEXT.as_bytes());
                    c.opt_reply(opt, REP_META_CONTEXT, &d).await?;
                }
                c.opt_reply(opt, REP_ACK, &[]).await?;
            }
            OPT_INFO | OPT_GO => {
                let Some(name) = parse_info_request(&data) else {
                    c.opt_reply(opt, REP_ERR_INVALID, b"malformed request")
                        .await?;
                    continue;
                };
                let Some(e) = find(exports, &name) else {
                    c.opt_reply(
                        opt,
                        REP_ERR_UNKNOWN,
                        format!("no export named {name:?}").as_bytes(),
                    )
                    .await?;
                    continue;
                };
                let mut d = INFO_EXPORT.to_be_bytes().to_vec();
                d.extend_from_slice(&e.disk.size().to_be_bytes());
                d.extend_from_slice(&flags(e).to_be_bytes());
                c.opt_reply(opt, REP_INFO, &d).await?;
                let mut b = INFO_BLOCK_SIZE.to_be_bytes().to_vec();
                for v in [1u32, 4096, MAX_REQUEST] {
                    b.extend_from_slice(&v.to_be_bytes());
                }
                c.opt_reply(opt, REP_INFO, &b).await?;
                c.opt_reply(opt, REP_ACK, &[]).await?;
                if opt == OPT_GO {
                    break e;
                }
            }
            _ => {
                c.opt_reply(opt, REP_ERR_UNSUP, b"unsupported option")
                    .await?
            }
        }
    };
    transmission(&mut c, export).await
}

fn find<'a>(exports: &'a [Export], name: &str) -> Option<&'a Export> {
    // The empty name is the default export: the first one.
    if name.is_empty() {
        return exports.first();
    }
    exports.iter().find(|e| e.name == name)
}

fn flags(e: &Export) -> u16 {
    let mut f = TF_HAS_FLAGS | TF_SEND_FLUSH | TF_CAN_MULTI_CONN;
    if e.writable() {
        f |= TF_SEND_TRIM | TF_SEND_WRITE_ZEROES;
    } else {
        f |= TF_READ_ONLY;
    }
    f
}

fn parse_info_request(d: &[u8]) -> Option<String> {
    let n = u32::from_be_bytes(d.get(..4)?.try_into().ok()?) as usize;
    let name = d.get(4..4 + n)?;
    let k = u16::from_be_bytes(d.get(4 + n..6 + n)?.try_into().ok()?) as usize;
    d.get(6 + n..6 + n + 2 * k)?;
    Some(String::from_utf8_lossy(name).into_owned())
}

fn parse_meta_request(d: &[u8]) -> Option<(String, Vec<String>)> {
    let n = u32::from_be_bytes(d.get(..4)?.try_into().ok()?) as usize;
    let name = String::from_utf8_lossy(d.get(4..4 + n)?).into_owned();
    let count = u32::from_be_bytes(d.get(4 + n..8 + n)?.try_into().ok()?) as usize;
    let mut at = 8 + n;
    let mut queries = Vec::new();
    for _ in 0..count.min(256) {
        let l = u32::from_be_bytes(d.get(at..at + 4)?.try_into().ok()?) as usize;
        queries.push(String::from_utf8_lossy(d.get(at + 4..at + 4 + l)?).into_owned());
        at += 4 + l;
    }
    Some((name, queries))
}

/// Reads run concurrently (up to this many per client), each replying
/// when done: NBD matches replies to requests by cookie.
const READS_IN_FLIGHT: usize = 8;

/// Encodes a reply: structured or simple, data or error.
struct Reply {
    structured: bool,
    cookie: u64,
}

impl Reply {
    fn status(&self, code: u32) -> Vec<u8> {
        let mut v = Vec::with_capacity(32);
        if self.structured {
            v.extend_from_slice(&STRUCTURED_REPLY_MAGIC.to_be_bytes());
            v.extend_from_slice(&REPLY_FLAG_DONE.to_be_bytes());
            if code == 0 {
                v.extend_from_slice(&REPLY_TYPE_NONE.to_be_bytes());
                v.extend_from_slice(&self.cookie.to_be_bytes());
                v.extend_from_slice(&0u32.to_be_bytes());
            } else {
                v.extend_from_slice(&REPLY_TYPE_ERROR.to_be_bytes());
                v.extend_from_slice(&self.cookie.to_be_bytes());
                v.extend_from_slice(&6u32.to_be_bytes());
                v.extend_from_slice(&code.to_be_bytes());
                v.extend_from_slice(&0u16.to_be_bytes());
            }
        } else {
            v.extend_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
            v.extend_from_slice(&code.to_be_bytes());
            v.extend_from_slice(&self.cookie.to_be_bytes());
        }
        v
    }

    /// A read reply with room for `len` bytes of data at the end, so the
    /// data is read straight into the buffer that is sent.
    fn data_header(&self, mut v: Vec<u8>, offset: u64, len: u32) -> Vec<u8> {
        v.clear();
        v.reserve(32 + len as usize);
        if self.structured {
            v.extend_from_slice(&STRUCTURED_REPLY_MAGIC.to_be_bytes());
            v.extend_from_slice(&REPLY_FLAG_DONE.to_be_bytes());
            v.extend_from_slice(&REPLY_TYPE_OFFSET_DATA.to_be_bytes());
            v.extend_from_slice(&self.cookie.to_be_bytes());
            v.extend_from_slice(&(8 + len).to_be_bytes());
            v.extend_from_slice(&offset.to_be_bytes());
        } else {
            v.extend_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
            v.extend_from_slice(&0u32.to_be_bytes());
            v.extend_from_slice(&self.cookie.to_be_bytes());
        }
        v
    }

    fn block_status(&self, payload: &[u8]) -> Vec<u8> {
        let mut v = Vec::with_capacity(20 + payload.len());
        v.extend_from_slice(&STRUCTURED_REPLY_MAGIC.to_be_bytes());
        v.extend_from_slice(&REPLY_FLAG_DONE.to_be_bytes());
        v.extend_from_slice(&REPLY_TYPE_BLOCK_STATUS.to_be_bytes());
        v.extend_from_slice(&self.cookie.to_be_bytes());
        v.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        v.extend_from_slice(payload);
        v
    }
}

async fn transmission<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
    c: &mut Conn<R, W>,
    e: &Export,
) -> io::Result<()> {
    let size = e.disk.size();
    // Replies go through one writer task, in whatever order they finish.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(READS_IN_FLIGHT * 2);
    let slots = Arc::new(tokio::sync::Semaphore::new(READS_IN_FLIGHT));
    // Read buffers go back here once sent, so steady reading allocates
    // nothing per request.
    let pool: Arc<std::sync::Mutex<Vec<Vec<u8>>>> = Arc::default();
    let w = &mut c.w;
    let returned = pool.clone();
    let writer = async move {
        while let Some(buf) = rx.recv().await {
            w.write_all(&buf).await?;
            if rx.is_empty() {
                w.flush().await?;
            }
            let mut p = returned.lock().unwrap();
            if p.len() < READS_IN_FLIGHT && buf.capacity() <= 4 << 20 {
                p.push(buf);
            }
        }
        w.flush().await
    };
    let r = &mut c.r;
    let (structured, meta) = (c.structured, c.meta);
    let reader = async move {
        loop {
            let magic = match r.read_u32().await {
                Ok(m) => m,
                Err(err) if err.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
                Err(err) => return Err(err),
            };
            if magic != REQUEST_MAGIC {
                return Err(proto("bad request magic"));
            }
            let _flags = r.read_u16().await?;
            let ty = r.read_u16().await?;
            let cookie = r.read_u64().await?;
            let offset = r.read_u64().await?;
            let len = r.read_u32().await?;
            let reply = Reply { structured, cookie };
            let in_range = offset
                .checked_add(len as u64)
                .is_some_and(|end| end <= size);
            let send = |buf: Vec<u8>| {
                let tx = tx.clone();
                async move {
                    tx.send(buf)
                        .await
                        .map_err(|_| proto("reply writer stopped"))
                }
            };
            match ty {
                CMD_DISC => return Ok(()),
                CMD_READ => {
                    if !in_range || len > MAX_REQUEST {
                        send(reply.status(EINVAL)).await?;
                        continue;
                    }
                    let permit = slots
                        .clone()
                        .acquire_owned()
                        .await
                        .map_err(io::Error::other)?;
                    let (disk, tx) = (e.disk.clone(), tx.clone());
                    let spare = pool.lock().unwrap().pop().unwrap_or_default();
                    tokio::task::spawn_blocking(move || {
                        let mut buf = reply.data_header(spare, offset, len);
                        let at = buf.len();
                        buf.resize(at + len as usize, 0);
                        let out = match disk.read_exact_at(offset, &mut buf[at..]) {
                            Ok(()) => buf,
                            Err(err) => {
                                tracing::error!("reading the snapshot at {offset}: {err}");
                                reply.status(EIO)
                            }
                        };
                        let _ = tx.blocking_send(out);
                        drop(permit);
                    });
                }
                CMD_WRITE => {
                    if len > MAX_REQUEST {
                        return Err(proto("write larger than the maximum request"));
                    }
                    let mut data = vec![0u8; len as usize];
                    r.read_exact(&mut data).await?;
                    send(reply.status(write(e, offset, in_range, data).await)).await?;
                }
                CMD_WRITE_ZEROES | CMD_TRIM => {
                    // Both leave zeros in the overlay (a trim may do so).
                    let code = if !e.writable() {
                        EPERM
                    } else if !in_range || len > MAX_REQUEST {
                        EINVAL
                    } else {
                        write(e, offset, in_range, vec![0u8; len as usize]).await
                    };
                    send(reply.status(code)).await?;
                }
                CMD_FLUSH => {
                    // Writes are done before the next request is read, so
                    // everything acknowledged so far is in the overlay.
                    let code = match &e.disk.overlay {
                        Some(o) => {
                            let o = o.clone();
                            match tokio::task::spawn_blocking(move || o.flush()).await {
                                Ok(Ok(())) => 0,
                                _ => EIO,
                            }
                        }
                        None => 0,
                    };
                    send(reply.status(code)).await?;
                }
                CMD_CACHE => send(reply.status(0)).await?,
                CMD_BLOCK_STATUS => {
                    if !meta || !structured || !in_range || len == 0 {
                        send(reply.status(EINVAL)).await?;
                        continue;
                    }
                    let mut payload = META_ID.to_be_bytes().to_vec();
                    for x in e.disk.extents(offset, len as u64).iter().take(4096) {
                        let state = if x.zero { STATE_HOLE | STATE_ZERO } else { 0 };
                        payload.extend_from_slice(
                            &(x.len.min(u32::MAX as u64 & !4095) as u32).to_be_bytes(),
                        );
                        payload.extend_from_slice(&state.to_be_bytes());
                    }
                    send(reply.block_status(&payload)).await?;
                }
                _ => send(reply.status(EINVAL)).await?,
            }
        }
    };
    // The reader ends (disconnect or error); then the writer drains what
    // the reads still in flight send.
    let (read_result, write_result) = tokio::join!(reader, writer);
    read_result.and(write_result)
}

async fn write(e: &Export, offset: u64, in_range: bool, data: Vec<u8>) -> u32 {
    let Some(o) = e.disk.overlay.clone() else {
        return EPERM;
    };
    if !in_range {
        return ENOSPC;
    }
    let base = e.disk.base.clone();
    match tokio::task::spawn_blocking(move || o.write_at(base.as_ref(), offset, &data)).await {
        Ok(Ok(())) => 0,
        Ok(Err(err)) => {
            tracing::error!("writing the overlay at {offset}: {err}");
            EIO
        }
        Err(_) => EIO,
    }
}

/// The fuzz target's entry (`fuzz/fuzz_targets/nbd.rs`): `data` is all a
/// client sends, answered by a server of two small exports, one read-only
/// and one with an overlay. Nothing a client sends may panic the server or
/// make it allocate beyond its request limits.
pub fn fuzz_session(data: &[u8]) {
    use std::sync::OnceLock;
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    static EXPORTS: OnceLock<(tempfile::TempDir, Vec<Export>)> = OnceLock::new();
    let runtime = RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a tokio runtime")
    });
    let (_, exports) = EXPORTS.get_or_init(|| {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let base = |n: usize| -> Arc<dyn BlockSource> {
            Arc::new(cairn_guest::io::MemDisk(
                (0..n).map(|i| (i * 7 % 251) as u8).collect(),
            ))
        };
        let overlay = crate::overlay::Overlay::open(&dir.path().join("overlay"), 1 << 20, "test")
            .expect("an overlay file");
        let exports = vec![
            Export {
                name: "ro".into(),
                disk: Arc::new(OverlayDisk {
                    base: base(1 << 20),
                    overlay: None,
                }),
                description: "read-only".into(),
            },
            Export {
                name: "rw".into(),
                disk: Arc::new(OverlayDisk {
                    base: base(1 << 20),
                    overlay: Some(Arc::new(overlay)),
                }),
                description: "with an overlay".into(),
            },
        ];
        (dir, exports)
    });
    let stream = tokio::io::join(data, tokio::io::sink());
    let _ = runtime.block_on(client(stream, exports));
}
