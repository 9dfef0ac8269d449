//! Cairn's vault: the one place snapshots live.
//!
//! Everything written here is content-addressed, encrypted and written once
//! (see `ARCHITECTURE.md` at the repository root for the layout and the
//! invariants). The recovery side reads disk snapshots through
//! [`BlockSource`] and directory snapshots through [`tree::Tree`].

pub mod backend;
pub mod blocksource;
pub mod cached;
pub mod codec;
pub mod crypto;
pub mod direct;
pub mod diskmap;
pub mod entropy;
pub mod error;
pub mod hash;
pub mod http;
pub mod index;
pub mod lock;
pub mod lock_record;
pub mod missing;
pub mod pack;
pub mod prune;
pub mod remote;
pub mod replicate;
pub mod s3;
pub mod snapshot;
pub mod source_backed;
pub mod sparse;
pub mod text;
pub mod tree;
pub mod units;
pub mod vault;
pub mod verify;

pub use blocksource::{BlockSource, Extent, SnapshotDisk, push_extent};
pub use error::{Error, Result};
pub use hash::{BLOCK_SIZE, BlockDigest, ChunkId, ZERO_BLOCK};
pub use snapshot::{Metrics, Snapshot, SnapshotId, SourceKind};
pub use vault::{Config, InitOptions, Location, S3InitOptions, Vault};
