//! Entry points for the fuzz targets (`fuzz/fuzz_targets/scan_parsers.rs`):
//! everything the scanner parses out of a guest or an advisory file,
//! fed arbitrary bytes. None of it may panic or run unbounded.

use crate::inventory::{self, Inventory};
use crate::osv::{self, VulnDb};
use crate::version::{self, Scheme};

/// One input, split in two at the first NUL: the package database and
/// an OSV record, plus both halves as versions and a CVSS vector.
pub fn scan_parsers(data: &[u8]) {
    let (a, b) = match data.iter().position(|&x| x == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let os = inventory::parse_os_release(a);
    let eco = inventory::ecosystem(&os);
    let mut packages = inventory::parse_dpkg_status(a);
    packages.extend(inventory::parse_apk_installed(a));
    let mut db = VulnDb::default();
    db.add_json(b);
    let _ = crate::rpm::parse_header(a);
    let mut files = Vec::new();
    cairn_rpm::header_files(a, &mut files, 10_000);
    let _ = crate::lnk::parse(a);
    for h in crate::bdb::values(a, 64).unwrap_or_default() {
        let _ = crate::rpm::parse_header(&h);
        cairn_rpm::header_files(&h, &mut files, 10_000);
    }
    for scheme in [Scheme::Dpkg, Scheme::Apk, Scheme::Rpm] {
        let inv = Inventory {
            os: Some(os.clone()),
            ecosystem: Some(eco.as_ref().map(|e| e.0.clone()).unwrap_or_default()),
            scheme: Some(scheme),
            packages: packages.clone(),
            notes: vec![],
        };
        let _ = db.matches(&inv);
        let (x, y) = (String::from_utf8_lossy(a), String::from_utf8_lossy(b));
        let _ = version::compare(scheme, &x, &y);
    }
    let _ = osv::cvss3(&String::from_utf8_lossy(a));
    crate::persistence::fuzz_text(a, b);
    // A job's command line (a cron line, a Run value, a task's XML).
    let _ = crate::persistence::started_files(&String::from_utf8_lossy(a));
}

/// A registry hive (`fuzz/fuzz_targets/registry.rs`): parsed, its Run
/// keys, Winlogon and services read, and compared with itself.
pub fn registry(data: &[u8]) {
    crate::persistence::fuzz_hive(data);
}

/// An rpmdb.sqlite file (`fuzz/fuzz_targets/rpmdb.rs`): opened by SQLite
/// read-only, each row's header blob parsed, its file list too.
pub fn rpmdb(data: &[u8]) {
    let _ = crate::rpm::parse_sqlite(data, None);
    let mut files = Vec::new();
    let _ = cairn_rpm::sqlite_headers(data, None, 64, |h| {
        cairn_rpm::header_files(h, &mut files, 10_000)
    });
}
