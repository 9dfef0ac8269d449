//! Which pack holds which chunk.
//!
//! Each pack has one index object, written right after the pack itself, so
//! a backup killed at any moment leaves only packs whose index is either
//! complete or absent; the next run reuses every indexed chunk.

use crate::hash::ChunkId;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub struct IndexEntry {
    pub id: ChunkId,
    pub offset: u32,
    pub len: u32,
    pub raw_len: u32,
}

/// The index object of one pack (`index/<pack id>`).
#[derive(Debug, Serialize, Deserialize)]
pub struct PackIndex {
    pub pack: String,
    /// Unix seconds before which neither the pack nor this index may be
    /// deleted.
    pub retain_until: i64,
    pub entries: Vec<IndexEntry>,
}

#[derive(Clone, Copy, Debug)]
pub struct Location {
    pub pack: u32,
    pub offset: u32,
    pub len: u32,
    pub raw_len: u32,
}

#[derive(Clone, Debug)]
pub struct PackInfo {
    pub id: String,
    pub retain_until: i64,
    pub size: u64,
    pub chunks: u32,
}

/// All indexes of a vault, in memory.
#[derive(Default)]
pub struct ChunkIndex {
    pub packs: Vec<PackInfo>,
    /// Ids of `packs`: an index added twice (listed by a reload and
    /// announced by its writer) counts once.
    pack_ids: std::collections::HashSet<String>,
    pub chunks: HashMap<ChunkId, Location>,
    /// Index objects that could not be read: (name, reason).
    pub damaged: Vec<(String, String)>,
}

impl ChunkIndex {
    pub fn add(&mut self, idx: &PackIndex) {
        if !self.pack_ids.insert(idx.pack.clone()) {
            return;
        }
        let pack = self.packs.len() as u32;
        let size = idx
            .entries
            .iter()
            .map(|e| e.offset as u64 + e.len as u64)
            .max()
            .unwrap_or(0);
        self.packs.push(PackInfo {
            id: idx.pack.clone(),
            retain_until: idx.retain_until,
            size,
            chunks: idx.entries.len() as u32,
        });
        for e in &idx.entries {
            // Two concurrent backups may store the same chunk twice; either
            // copy serves.
            self.chunks.entry(e.id).or_insert(Location {
                pack,
                offset: e.offset,
                len: e.len,
                raw_len: e.raw_len,
            });
        }
    }

    pub fn contains(&self, id: &ChunkId) -> bool {
        self.chunks.contains_key(id)
    }

    pub fn get(&self, id: &ChunkId) -> Option<(Location, &PackInfo)> {
        let loc = *self.chunks.get(id)?;
        Some((loc, &self.packs[loc.pack as usize]))
    }
}

pub fn pack_object(pack: &str) -> String {
    format!("packs/{}/{}", &pack[..2], pack)
}

pub fn index_object(pack: &str) -> String {
    format!("index/{pack}")
}
