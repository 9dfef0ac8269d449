//! Groups new chunks into pack objects of tens of MiB, so that storage sees
//! few large writes, and writes each pack's index after it. Full packs are
//! written by a thread of their own, so the workers that hash, compress
//! and encrypt never wait on storage (at most four full packs wait in
//! line, which bounds memory; on object storage four are sent at once).

use crate::codec;
use crate::codec::Framing;
use crate::crypto::random_array;
use crate::error::Result;
use crate::hash::ChunkId;
use crate::index::{IndexEntry, PackIndex, index_object, pack_object};
use crate::vault::Vault;
use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{SyncSender, sync_channel};
use std::sync::{Arc, Mutex};

#[derive(Default)]
struct OpenPack {
    /// The pack's bytes start at `buf[start]`, an address aligned for
    /// `O_DIRECT`, so the local backend writes them without a copy.
    buf: Vec<u8>,
    start: usize,
    entries: Vec<IndexEntry>,
}

impl OpenPack {
    fn bytes(&self) -> &[u8] {
        &self.buf[self.start..]
    }
}

/// What one backup added to the vault.
#[derive(Clone, Copy, Debug, Default)]
pub struct WriteStats {
    pub new_chunks: u64,
    /// Plaintext bytes of the new chunks.
    pub new_bytes: u64,
    /// What they take in the vault, compressed and sealed.
    pub new_bytes_stored: u64,
}

/// Full packs that may wait for the storing thread (~16 MiB each).
const PACKS_IN_LINE: usize = 4;
/// Packs stored at once on object storage.
const REMOTE_STORERS: usize = 4;
/// Behind a server, new chunks wait in a batch of about this many bytes
/// until the server has said which of them it lacks.
const NEGOTIATE_BYTES: usize = 8 << 20;

/// Chunks waiting for the server's answer.
#[derive(Default)]
struct Pending {
    chunks: Vec<(ChunkId, Vec<u8>, Option<f32>)>,
    bytes: usize,
}

/// Shared by the worker threads of one backup.
pub struct PackWriter<'v> {
    vault: &'v Vault,
    /// How chunks are framed (disk chunks in blocks, see `codec`).
    framing: Framing,
    open: Mutex<OpenPack>,
    /// Pack buffers already written out, kept for the next packs: a fresh
    /// 16 MiB buffer costs thousands of page faults as it fills (most of
    /// a backup's page faults before they were kept).
    spare: Arc<Mutex<Vec<Vec<u8>>>>,
    full: Mutex<Option<SyncSender<OpenPack>>>,
    in_flight: Mutex<HashSet<ChunkId>>,
    pending: Mutex<Pending>,
    /// Bytes of new data stored (sealed) and their plaintext size.
    pub stored_bytes: AtomicU64,
    pub raw_bytes: AtomicU64,
    pub new_chunks: AtomicU64,
}

impl<'v> PackWriter<'v> {
    /// Runs `body` with a pack writer, then writes what is left and waits
    /// for every pack to be stored. A storage error (disk full) is the
    /// error returned, even when `body` failed because of it.
    pub fn run<T>(
        vault: &'v Vault,
        framing: Framing,
        body: impl FnOnce(&PackWriter<'v>) -> Result<T>,
    ) -> Result<(T, WriteStats)> {
        // Four packs may wait: a run of incompressible data (media) is
        // sealed faster than the disk takes it, and with one place in line
        // the workers stood idle there instead of compressing what follows.
        let (tx, rx) = sync_channel::<OpenPack>(PACKS_IN_LINE);
        let spare = Arc::new(Mutex::new(Vec::new()));
        // A storer that fails drops the receiver, so the workers' next
        // send fails and the backup stops instead of waiting forever.
        let rx = Mutex::new(Some(rx));
        std::thread::scope(|s| {
            // Object storage answers each PUT after a round trip: several
            // packs go up at once. A local disk is best written by one.
            let remote = vault.backend().as_s3().is_some() || vault.backend().negotiates();
            let storers = if remote { REMOTE_STORERS } else { 1 };
            let rx = &rx;
            let storers: Vec<_> = (0..storers)
                .map(|_| {
                    let spare = spare.clone();
                    s.spawn(move || -> Result<()> {
                        loop {
                            let next = match rx.lock().unwrap().as_ref() {
                                Some(r) => r.recv(),
                                None => return Ok(()),
                            };
                            let Ok(pack) = next else { return Ok(()) };
                            match write_pack(vault, pack) {
                                Ok(mut buf) => {
                                    buf.clear();
                                    spare.lock().unwrap().push(buf);
                                }
                                Err(e) => {
                                    *rx.lock().unwrap() = None;
                                    return Err(e);
                                }
                            }
                        }
                    })
                })
                .collect();
            let writer = PackWriter {
                vault,
                framing,
                open: Mutex::new(OpenPack::default()),
                spare,
                full: Mutex::new(Some(tx)),
                in_flight: Mutex::new(HashSet::new()),
                pending: Mutex::new(Pending::default()),
                stored_bytes: AtomicU64::new(0),
                raw_bytes: AtomicU64::new(0),
                new_chunks: AtomicU64::new(0),
            };
            let out = body(&writer);
            let last = writer.finish();
            let stats = WriteStats {
                new_chunks: writer.new_chunks.load(Ordering::Relaxed),
                new_bytes: writer.raw_bytes.load(Ordering::Relaxed),
                new_bytes_stored: writer.stored_bytes.load(Ordering::Relaxed),
            };
            drop(writer);
            for storer in storers {
                storer.join().expect("a pack storing thread panicked")?;
            }
            last?;
            Ok((out?, stats))
        })
    }

    /// True when the vault (or this backup) has the chunk already.
    pub fn has(&self, id: &ChunkId) -> bool {
        self.vault.has_chunk(id) || self.in_flight.lock().unwrap().contains(id)
    }

    /// Stores a chunk unless it is known. Behind a server, the chunk
    /// waits in a batch whose ids are offered first; only those the
    /// server lacks are sealed and sent.
    pub fn add(&self, id: ChunkId, data: &[u8], entropy: Option<f32>) -> Result<()> {
        if self.vault.has_chunk(&id) || !self.in_flight.lock().unwrap().insert(id) {
            return Ok(());
        }
        if !self.vault.backend().negotiates() {
            return self.store(id, data, entropy);
        }
        let batch = {
            let mut p = self.pending.lock().unwrap();
            p.chunks.push((id, data.to_vec(), entropy));
            p.bytes += data.len();
            (p.bytes >= NEGOTIATE_BYTES).then(|| std::mem::take(&mut *p))
        };
        match batch {
            Some(b) => self.negotiate(b),
            None => Ok(()),
        }
    }

    fn negotiate(&self, batch: Pending) -> Result<()> {
        let ids: Vec<ChunkId> = batch.chunks.iter().map(|c| c.0).collect();
        let missing: HashSet<ChunkId> = self
            .vault
            .backend()
            .missing_chunks(&ids)?
            .unwrap_or(ids)
            .into_iter()
            .collect();
        for (id, data, entropy) in batch.chunks {
            if missing.contains(&id) {
                self.store(id, &data, entropy)?;
            } else {
                self.vault.mark_present([id]);
            }
        }
        Ok(())
    }

    fn store(&self, id: ChunkId, data: &[u8], entropy: Option<f32>) -> Result<()> {
        let sealed = codec::seal_as(
            self.vault.cipher(),
            self.framing,
            data,
            self.vault.config().compression_level,
            entropy,
        )?;
        let stored = sealed.len() as u64;
        let full = {
            let mut p = self.open.lock().unwrap();
            if p.buf.is_empty() {
                if p.buf.capacity() == 0 {
                    // Room for a whole pack, the chunk that fills it and
                    // the alignment: the buffer never grows by copying
                    // itself (if it did, the write would copy it once).
                    let pack = self.vault.config().pack_size as usize;
                    p.buf
                        .reserve(pack + sealed.len().max(1 << 20) + crate::direct::ALIGN);
                }
                p.start = p.buf.as_ptr().align_offset(crate::direct::ALIGN);
                let start = p.start;
                p.buf.resize(start, 0);
            }
            let offset = (p.buf.len() - p.start) as u32;
            p.buf.extend_from_slice(&sealed);
            p.entries.push(IndexEntry {
                id,
                offset,
                len: sealed.len() as u32,
                raw_len: data.len() as u32,
            });
            if (p.buf.len() - p.start) as u64 >= self.vault.config().pack_size as u64 {
                let next = OpenPack {
                    buf: self.spare.lock().unwrap().pop().unwrap_or_default(),
                    start: 0,
                    entries: Vec::new(),
                };
                Some(std::mem::replace(&mut *p, next))
            } else {
                None
            }
        };
        if let Some(pack) = full {
            self.send(pack)?;
        }
        self.stored_bytes.fetch_add(stored, Ordering::Relaxed);
        self.raw_bytes
            .fetch_add(data.len() as u64, Ordering::Relaxed);
        self.new_chunks.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn send(&self, pack: OpenPack) -> Result<()> {
        let tx = self.full.lock().unwrap().clone();
        match tx {
            Some(tx) if tx.send(pack).is_ok() => Ok(()),
            // The storing thread stopped: its error is what `run` returns.
            _ => Err(crate::Error::Invalid("storing packs failed".into())),
        }
    }

    /// Offers the last batch, queues the pack in progress and closes the
    /// queue.
    fn finish(&self) -> Result<()> {
        let batch = std::mem::take(&mut *self.pending.lock().unwrap());
        if !batch.chunks.is_empty()
            && let Err(e) = self.negotiate(batch)
        {
            self.full.lock().unwrap().take();
            return Err(e);
        }
        let pack = std::mem::take(&mut *self.open.lock().unwrap());
        let r = if pack.entries.is_empty() {
            Ok(())
        } else {
            self.send(pack)
        };
        self.full.lock().unwrap().take();
        r
    }
}

/// Stores a pack and its index; gives back the pack's buffer.
fn write_pack(vault: &Vault, pack: OpenPack) -> Result<Vec<u8>> {
    let id = hex::encode(random_array::<32>()?);
    vault.backend().put(&pack_object(&id), pack.bytes())?;
    let index = PackIndex {
        pack: id.clone(),
        retain_until: vault.retain_until_from_now().timestamp(),
        entries: pack.entries,
    };
    vault
        .backend()
        .put(&index_object(&id), &vault.seal_pack_index(&index)?)?;
    vault.add_index(&index);
    Ok(pack.buf)
}
