//! Instant recovery: snapshots served as block devices over NBD, straight
//! from the vault, with writes going to a copy-on-write overlay and never
//! to the vault.

mod accept;
pub mod boot;
pub mod fuse;
pub mod nbd;
pub mod nfs;
pub mod overlay;

pub use nbd::{Export, serve, serve_counted};
pub use nfs::{NfsExport, NfsTree};
pub use overlay::{Overlay, OverlayDisk};
