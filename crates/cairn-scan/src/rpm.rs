//! RPM guests' installed packages, from the headers `cairn-rpm` reads.

use crate::inventory::Package;
pub use cairn_rpm::{MAX_PACKAGES, compare_evr};

/// One header blob as a package of the inventory.
pub fn parse_header(blob: &[u8]) -> Option<Package> {
    let h = cairn_rpm::parse_header(blob)?;
    Some(Package {
        name: h.name,
        version: h.evr.clone(),
        source: h.source,
        source_version: h.evr,
    })
}

/// Every package in an rpmdb.sqlite file's bytes (and its write-ahead
/// log, when the guest left one).
pub fn parse_sqlite(db: &[u8], wal: Option<&[u8]>) -> Result<Vec<Package>, String> {
    let mut out = Vec::new();
    cairn_rpm::sqlite_headers(db, wal, MAX_PACKAGES, |blob| {
        out.extend(parse_header(blob));
    })?;
    Ok(out)
}
