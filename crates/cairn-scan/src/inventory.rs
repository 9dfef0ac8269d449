//! The installed-package inventory read from a guest: the OS from
//! `os-release`, packages from dpkg's status file (Debian, Ubuntu) or
//! apk's installed database (Alpine). Both are attacker-controlled text:
//! read with a size limit, parsed line by line, never trusted to be sane.

use crate::version::Scheme;
use cairn_guest::{FileKind, Filesystem};
use serde::Serialize;

/// Largest package database read.
const MAX_DB: u64 = 256 << 20;
/// Most packages taken from one database.
const MAX_PACKAGES: usize = 200_000;

#[derive(Clone, Debug, Serialize)]
pub struct Os {
    pub id: String,
    pub version_id: String,
    pub pretty_name: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct Package {
    /// The installed (binary) package.
    pub name: String,
    pub version: String,
    /// The source package it was built from, which advisories name.
    pub source: String,
    pub source_version: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct Inventory {
    pub os: Option<Os>,
    /// OSV ecosystem of the guest (`Debian:12`, `Alpine:v3.19`…).
    pub ecosystem: Option<String>,
    pub scheme: Option<Scheme>,
    pub packages: Vec<Package>,
    /// What could not be read, for the report.
    pub notes: Vec<String>,
}

/// Reads `path`, following symlinks (os-release usually is one).
fn read_resolved(fs: &dyn Filesystem, path: &str, limit: u64) -> Option<Vec<u8>> {
    let mut path = path.to_string();
    for _ in 0..8 {
        let e = fs.lookup(path.as_bytes()).ok()?;
        match e.kind {
            FileKind::File => return cairn_guest::read_all(fs, &e, limit).ok(),
            FileKind::Symlink => {
                let target = String::from_utf8_lossy(e.link_target.as_ref()?).into_owned();
                let joined = if let Some(abs) = target.strip_prefix('/') {
                    abs.to_string()
                } else {
                    let dir = path.rsplit_once('/').map(|(d, _)| d).unwrap_or("");
                    format!("{dir}/{target}")
                };
                // Resolve `..` and `.` without leaving the root.
                let mut parts: Vec<&str> = Vec::new();
                for c in joined.split('/') {
                    match c {
                        "" | "." => {}
                        ".." => {
                            parts.pop();
                        }
                        c => parts.push(c),
                    }
                }
                path = parts.join("/");
            }
            _ => return None,
        }
    }
    None
}

pub fn parse_os_release(data: &[u8]) -> Os {
    let mut os = Os {
        id: String::new(),
        version_id: String::new(),
        pretty_name: String::new(),
    };
    for line in String::from_utf8_lossy(data).lines() {
        let Some((k, v)) = line.split_once('=') else {
            continue;
        };
        let v = v.trim().trim_matches('"').trim_matches('\'').to_string();
        match k.trim() {
            "ID" => os.id = v,
            "VERSION_ID" => os.version_id = v,
            "PRETTY_NAME" => os.pretty_name = v,
            _ => {}
        }
    }
    os
}

/// The OSV ecosystem and version scheme for an OS.
pub fn ecosystem(os: &Os) -> Option<(String, Scheme)> {
    let major_minor = |v: &str| v.split('.').take(2).collect::<Vec<_>>().join(".");
    match os.id.as_str() {
        "debian" if !os.version_id.is_empty() => Some((
            format!("Debian:{}", os.version_id.split('.').next().unwrap_or("")),
            Scheme::Dpkg,
        )),
        "ubuntu" if !os.version_id.is_empty() => {
            Some((format!("Ubuntu:{}", os.version_id), Scheme::Dpkg))
        }
        "alpine" if !os.version_id.is_empty() => Some((
            format!("Alpine:v{}", major_minor(&os.version_id)),
            Scheme::Apk,
        )),
        "almalinux" | "rocky" | "rhel" if !os.version_id.is_empty() => {
            let major = os.version_id.split('.').next().unwrap_or("");
            let eco = match os.id.as_str() {
                "almalinux" => format!("AlmaLinux:{major}"),
                "rocky" => format!("Rocky Linux:{major}"),
                _ => format!("Red Hat:enterprise_linux:{major}"),
            };
            Some((eco, Scheme::Rpm))
        }
        _ => None,
    }
}

/// Installed packages from a dpkg `status` file.
pub fn parse_dpkg_status(data: &[u8]) -> Vec<Package> {
    let text = String::from_utf8_lossy(data);
    let mut out = Vec::new();
    for para in text.split("\n\n") {
        if out.len() >= MAX_PACKAGES {
            break;
        }
        let (mut name, mut version, mut status, mut source) = ("", "", "", "");
        for line in para.lines() {
            if line.starts_with([' ', '\t']) {
                continue;
            }
            let Some((k, v)) = line.split_once(':') else {
                continue;
            };
            match k {
                "Package" => name = v.trim(),
                "Version" => version = v.trim(),
                "Status" => status = v.trim(),
                "Source" => source = v.trim(),
                _ => {}
            }
        }
        if name.is_empty() || version.is_empty() || !status.ends_with(" installed") {
            continue;
        }
        // `Source: name` or `Source: name (version)` when they differ.
        let (src, src_version) = match source.split_once(' ') {
            Some((s, v)) => (s, v.trim().trim_start_matches('(').trim_end_matches(')')),
            None if !source.is_empty() => (source, version),
            None => (name, version),
        };
        out.push(Package {
            name: name.to_string(),
            version: version.to_string(),
            source: src.to_string(),
            source_version: src_version.to_string(),
        });
    }
    out
}

/// Installed packages from apk's `installed` database.
pub fn parse_apk_installed(data: &[u8]) -> Vec<Package> {
    let text = String::from_utf8_lossy(data);
    let mut out = Vec::new();
    for para in text.split("\n\n") {
        if out.len() >= MAX_PACKAGES {
            break;
        }
        let (mut name, mut version, mut origin) = ("", "", "");
        for line in para.lines() {
            match line.split_at_checked(2) {
                Some(("P:", v)) => name = v,
                Some(("V:", v)) => version = v,
                Some(("o:", v)) => origin = v,
                _ => {}
            }
        }
        if name.is_empty() || version.is_empty() {
            continue;
        }
        out.push(Package {
            name: name.to_string(),
            version: version.to_string(),
            source: if origin.is_empty() { name } else { origin }.to_string(),
            source_version: version.to_string(),
        });
    }
    out
}

/// Everything the guest says about its installed software.
pub fn read(fs: &dyn Filesystem) -> Inventory {
    let mut inv = Inventory {
        os: None,
        ecosystem: None,
        scheme: None,
        packages: Vec::new(),
        notes: Vec::new(),
    };
    let os = read_resolved(fs, "etc/os-release", 64 << 10)
        .or_else(|| read_resolved(fs, "usr/lib/os-release", 64 << 10))
        .map(|d| parse_os_release(&d));
    if let Some(os) = &os {
        match ecosystem(os) {
            Some((eco, scheme)) => {
                inv.ecosystem = Some(eco);
                inv.scheme = Some(scheme);
            }
            None => inv.notes.push(format!(
                "no advisory ecosystem known for OS id {:?} version {:?}",
                os.id, os.version_id
            )),
        }
    }
    inv.os = os;
    // The database of the OS's own package manager first (an Alpine guest
    // may carry a dpkg status file of its own `dpkg` package); the first
    // that lists packages is read, and any other that does is named.
    let mut order = vec![Scheme::Dpkg, Scheme::Apk, Scheme::Rpm];
    if let Some(mine) = inv.scheme {
        order.retain(|s| *s != mine);
        order.insert(0, mine);
    }
    let mut read_from: Option<Scheme> = None;
    let mut unreadable = Vec::new();
    for scheme in order {
        let found = match scheme {
            Scheme::Dpkg => {
                read_resolved(fs, "var/lib/dpkg/status", MAX_DB).map(|d| Ok(parse_dpkg_status(&d)))
            }
            Scheme::Apk => read_resolved(fs, "lib/apk/db/installed", MAX_DB)
                .map(|d| Ok(parse_apk_installed(&d))),
            Scheme::Rpm => read_rpm(fs),
        };
        let packages = match found {
            None => continue,
            Some(Err(why)) => {
                unreadable.push(why);
                continue;
            }
            Some(Ok(p)) if p.is_empty() => continue,
            Some(Ok(p)) => p,
        };
        match read_from {
            None => {
                inv.packages = packages;
                read_from = Some(scheme);
            }
            Some(used) => inv.notes.push(format!(
                "{} package database is there too ({} packages), not checked: this system's packages were read from its {} database",
                manager(scheme),
                packages.len(),
                manager(used)
            )),
        }
    }
    // A database that could not be read matters when none could.
    if read_from.is_none() {
        inv.notes.extend(unreadable);
    }
    inv
}

fn manager(s: Scheme) -> &'static str {
    match s {
        Scheme::Dpkg => "a dpkg",
        Scheme::Apk => "an apk",
        Scheme::Rpm => "an RPM",
    }
}

/// The packages of an RPM database (SQLite since rpm 4.16, Berkeley DB
/// before), if there is one, or why it cannot be read.
fn read_rpm(fs: &dyn Filesystem) -> Option<std::result::Result<Vec<Package>, String>> {
    for dir in ["var/lib/rpm", "usr/lib/sysimage/rpm"] {
        let db = format!("{dir}/rpmdb.sqlite");
        if let Some(d) = read_resolved(fs, &db, MAX_DB) {
            let wal = read_resolved(fs, &format!("{db}-wal"), MAX_DB);
            return Some(
                crate::rpm::parse_sqlite(&d, wal.as_deref())
                    .map_err(|e| format!("/{db}: unreadable RPM database ({e})")),
            );
        }
        let bdb = format!("{dir}/Packages");
        if let Some(d) = read_resolved(fs, &bdb, MAX_DB) {
            // Before rpm 4.16: a Berkeley DB hash of package headers.
            return Some(
                crate::bdb::values(&d, crate::rpm::MAX_PACKAGES)
                    .map(|headers| {
                        headers
                            .iter()
                            .filter_map(|h| crate::rpm::parse_header(h))
                            .collect()
                    })
                    .map_err(|e| format!("/{bdb}: unreadable RPM database ({e})")),
            );
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dpkg_status_gives_source_packages_and_skips_removed_ones() {
        let status = b"Package: libc6\nStatus: install ok installed\nArchitecture: amd64\nSource: glibc\nVersion: 2.36-9+deb12u1\nDescription: GNU C Library\n multi-line\n\nPackage: bash\nStatus: install ok installed\nSource: bash (5.2.15-2)\nVersion: 5.2.15-2+b2\n\nPackage: gone\nStatus: deinstall ok config-files\nVersion: 1.0\n\nPackage: coreutils\nStatus: install ok installed\nVersion: 9.1-1\n";
        let p = parse_dpkg_status(status);
        assert_eq!(p.len(), 3);
        assert_eq!(
            (p[0].source.as_str(), p[0].source_version.as_str()),
            ("glibc", "2.36-9+deb12u1")
        );
        assert_eq!(
            (p[1].source.as_str(), p[1].source_version.as_str()),
            ("bash", "5.2.15-2")
        );
        assert_eq!(p[1].version, "5.2.15-2+b2");
        assert_eq!(p[2].source, "coreutils");
    }

    #[test]
    fn apk_and_os_release() {
        let db = b"C:Q1abc=\nP:libcrypto3\nV:3.1.4-r0\no:openssl\n\nP:busybox\nV:1.36.1-r5\n";
        let p = parse_apk_installed(db);
        assert_eq!(p[0].source, "openssl");
        assert_eq!(p[1].source, "busybox");
        let os = parse_os_release(b"NAME=\"Alpine Linux\"\nID=alpine\nVERSION_ID=3.18.4\n");
        assert_eq!(ecosystem(&os).unwrap().0, "Alpine:v3.18");
        let os = parse_os_release(b"ID=debian\nVERSION_ID=\"12\"\n");
        assert_eq!(ecosystem(&os).unwrap().0, "Debian:12");
    }
}
