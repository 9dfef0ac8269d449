//! Cairn's way back: restoring snapshots.

pub mod disk;
pub mod files;
pub mod tree;

pub use disk::{DiskRestoreOptions, DiskRestoreReport, restore_disk};
pub use files::{FilesRestoreReport, restore_files};
pub use tree::{TreeRestoreOptions, TreeRestoreReport, restore_tree};
