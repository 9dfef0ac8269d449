//! RPM guests (RHEL, AlmaLinux, Rocky, Fedora…): the installed packages
//! from the RPM database in SQLite form (`rpmdb.sqlite`, rpm 4.16 and
//! later), each row an RPM header blob parsed here with bounds on every
//! count and offset.

use crate::inventory::Package;

/// Most index entries read from one header.
const MAX_ENTRIES: usize = 10_000;
/// Most packages read from one database.
pub const MAX_PACKAGES: usize = 200_000;

const TAG_NAME: u32 = 1000;
const TAG_VERSION: u32 = 1001;
const TAG_RELEASE: u32 = 1002;
const TAG_EPOCH: u32 = 1003;
const TAG_SOURCERPM: u32 = 1044;
const TYPE_INT32: u32 = 4;
const TYPE_STRING: u32 = 6;

fn be32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// Name, epoch:version-release and source package of one header blob
/// (as stored in rpmdb.sqlite: index count, data length, entries, data).
pub fn parse_header(blob: &[u8]) -> Option<Package> {
    let il = be32(blob, 0)? as usize;
    let dl = be32(blob, 4)? as usize;
    if il > MAX_ENTRIES {
        return None;
    }
    let data_start = 8 + il * 16;
    let data = blob.get(data_start..data_start.checked_add(dl)?)?;
    let (mut name, mut version, mut release, mut epoch, mut source) =
        (None, None, None, None::<u32>, None);
    for i in 0..il {
        let e = 8 + i * 16;
        let (tag, kind, offset) = (
            be32(blob, e)?,
            be32(blob, e + 4)?,
            be32(blob, e + 8)? as usize,
        );
        let text = || {
            let rest = data.get(offset..)?;
            let end = rest.iter().position(|&b| b == 0)?;
            Some(String::from_utf8_lossy(&rest[..end]).into_owned())
        };
        match (tag, kind) {
            (TAG_NAME, TYPE_STRING) => name = text(),
            (TAG_VERSION, TYPE_STRING) => version = text(),
            (TAG_RELEASE, TYPE_STRING) => release = text(),
            (TAG_SOURCERPM, TYPE_STRING) => source = text(),
            (TAG_EPOCH, TYPE_INT32) => epoch = be32(data, offset),
            _ => {}
        }
    }
    let (name, version, release) = (name?, version?, release?);
    let evr = match epoch {
        Some(e) if e > 0 => format!("{e}:{version}-{release}"),
        _ => format!("{version}-{release}"),
    };
    // `openssl-3.0.7-16.el9_2.src.rpm` → `openssl` (name-version-release).
    let src_name = source
        .as_deref()
        .and_then(|s| s.strip_suffix(".src.rpm").or(s.strip_suffix(".nosrc.rpm")))
        .and_then(|s| s.rsplitn(3, '-').nth(2))
        .map(String::from)
        .unwrap_or_else(|| name.clone());
    Some(Package {
        name,
        version: evr.clone(),
        source: src_name,
        source_version: evr,
    })
}

/// Every package in an rpmdb.sqlite file's bytes (and its write-ahead
/// log, when the guest left one). SQLite reads a private read-only copy.
pub fn parse_sqlite(db: &[u8], wal: Option<&[u8]>) -> Result<Vec<Package>, String> {
    // A private directory of unpredictable name (made with mode 0700):
    // nothing another user planted in /tmp is followed or written into.
    let tmp = tempfile::Builder::new()
        .prefix("cairn-rpmdb-")
        .tempdir()
        .map_err(|e| e.to_string())?;
    let dir = tmp.path().to_path_buf();
    let result = (|| {
        let path = dir.join("rpmdb.sqlite");
        std::fs::write(&path, db).map_err(|e| e.to_string())?;
        if let Some(w) = wal {
            std::fs::write(dir.join("rpmdb.sqlite-wal"), w).map_err(|e| e.to_string())?;
        }
        let conn = rusqlite::Connection::open_with_flags(
            &path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| e.to_string())?;
        // A crafted database must not run code or pull in other files.
        conn.execute_batch("PRAGMA trusted_schema = OFF; PRAGMA query_only = ON;")
            .map_err(|e| e.to_string())?;
        let mut stmt = conn
            .prepare("SELECT blob FROM Packages")
            .map_err(|e| format!("no Packages table: {e}"))?;
        let mut rows = stmt.query([]).map_err(|e| e.to_string())?;
        let mut out = Vec::new();
        while let Some(row) = rows.next().map_err(|e| e.to_string())? {
            if out.len() >= MAX_PACKAGES {
                break;
            }
            let blob: Vec<u8> = row.get(0).map_err(|e| e.to_string())?;
            if let Some(p) = parse_header(&blob) {
                out.push(p);
            }
        }
        Ok(out)
    })();
    drop(tmp);
    result
}

/// rpm's version comparison (rpmvercmp) of `[epoch:]version-release`.
pub fn compare_evr(a: &str, b: &str) -> std::cmp::Ordering {
    let split = |s: &str| {
        let (epoch, rest) = match s.split_once(':') {
            Some((e, r)) if e.bytes().all(|c| c.is_ascii_digit()) => {
                (e.parse::<u64>().unwrap_or(0), r)
            }
            _ => (0, s),
        };
        let (v, r) = rest.rsplit_once('-').unwrap_or((rest, ""));
        (epoch, v.to_string(), r.to_string())
    };
    let (ea, va, ra) = split(a);
    let (eb, vb, rb) = split(b);
    ea.cmp(&eb)
        .then_with(|| rpmvercmp(&va, &vb))
        .then_with(|| rpmvercmp(&ra, &rb))
}

/// Segment-wise comparison as rpm does it: `~` sorts before everything,
/// `^` after the base but before more segments, digits beat letters,
/// numbers compare as numbers.
pub fn rpmvercmp(a: &str, b: &str) -> std::cmp::Ordering {
    use std::cmp::Ordering::*;
    if a == b {
        return Equal;
    }
    let (mut x, mut y) = (a.as_bytes(), b.as_bytes());
    let sep = |c: u8| !(c.is_ascii_alphanumeric() || c == b'~' || c == b'^');
    loop {
        while let Some(&c) = x.first().filter(|&&c| sep(c)) {
            let _ = c;
            x = &x[1..];
        }
        while y.first().is_some_and(|&c| sep(c)) {
            y = &y[1..];
        }
        match (x.first(), y.first()) {
            (Some(b'~'), Some(b'~')) => {
                x = &x[1..];
                y = &y[1..];
                continue;
            }
            (Some(b'~'), _) => return Less,
            (_, Some(b'~')) => return Greater,
            (Some(b'^'), Some(b'^')) => {
                x = &x[1..];
                y = &y[1..];
                continue;
            }
            (Some(b'^'), None) => return Greater,
            (None, Some(b'^')) => return Less,
            (Some(b'^'), _) => return Less,
            (_, Some(b'^')) => return Greater,
            (None, None) => return Equal,
            (None, _) => return Less,
            (_, None) => return Greater,
            _ => {}
        }
        let numeric = x[0].is_ascii_digit();
        let take = |s: &[u8]| {
            s.iter()
                .take_while(|c| {
                    if numeric {
                        c.is_ascii_digit()
                    } else {
                        c.is_ascii_alphabetic()
                    }
                })
                .count()
        };
        let (nx, ny) = (take(x), take(y));
        if ny == 0 {
            // Segments of different kinds: a number is newer.
            return if numeric { Greater } else { Less };
        }
        let (sx, sy) = (&x[..nx], &y[..ny]);
        let o = if numeric {
            let (tx, ty) = (trim_zeros(sx), trim_zeros(sy));
            tx.len().cmp(&ty.len()).then_with(|| tx.cmp(ty))
        } else {
            sx.cmp(sy)
        };
        if o != Equal {
            return o;
        }
        x = &x[nx..];
        y = &y[ny..];
    }
}

fn trim_zeros(s: &[u8]) -> &[u8] {
    let n = s.iter().take_while(|&&c| c == b'0').count();
    &s[n..]
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cmp::Ordering::*;

    #[test]
    fn rpm_version_order() {
        assert_eq!(rpmvercmp("1.0", "1.0"), Equal);
        assert_eq!(rpmvercmp("1.0", "2.0"), Less);
        assert_eq!(rpmvercmp("2.0.1", "2.0"), Greater);
        assert_eq!(rpmvercmp("1.0a", "1.0"), Greater);
        assert_eq!(rpmvercmp("1.0~rc1", "1.0"), Less);
        assert_eq!(rpmvercmp("1.0^git1", "1.0"), Greater);
        assert_eq!(rpmvercmp("1.0^git1", "1.0.1"), Less);
        assert_eq!(rpmvercmp("10", "9"), Greater);
        assert_eq!(rpmvercmp("1.a", "1.1"), Less);
        assert_eq!(compare_evr("1:3.0.7-16.el9_2", "1:3.0.7-17.el9_2"), Less);
        assert_eq!(compare_evr("3.0.7-16.el9_2", "1:3.0.1-1.el9"), Less);
    }

    #[test]
    fn a_truncated_or_lying_header_is_refused() {
        assert!(parse_header(b"").is_none());
        assert!(parse_header(&[0, 0, 0xff, 0xff, 0, 0, 0, 0]).is_none());
        let mut h = vec![0, 0, 0, 1, 0, 0, 0, 4];
        h.extend_from_slice(&[0, 0, 3, 0xe8, 0, 0, 0, 6, 0, 0, 0, 100, 0, 0, 0, 1]);
        h.extend_from_slice(b"abc\0");
        assert!(parse_header(&h).is_none(), "offset past the data");
    }
}
