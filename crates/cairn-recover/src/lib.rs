//! Cairn's way back: restoring snapshots.

mod beneath;
pub mod delta;
pub mod disk;
pub mod files;
mod place;
pub mod rollback;
pub mod tree;

pub use delta::{DeltaOptions, DeltaReport, restore_delta};
pub use disk::{DiskRestoreOptions, DiskRestoreReport, restore_disk};
pub use files::{FilesRestoreReport, restore_files};
pub use place::parent_dir;
pub use tree::{TreeRestoreOptions, TreeRestoreReport, restore_tree};
