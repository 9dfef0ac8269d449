//! RPM guests (RHEL, AlmaLinux, Rocky, Fedora, SUSE…): the package
//! headers of the RPM database, in SQLite form (`rpmdb.sqlite`, rpm 4.16
//! and later) or as a Berkeley DB hash (`Packages`, before; see [`bdb`]),
//! each header parsed here with bounds on every count and offset (the
//! database is guest data); and rpm's version order. Vulnerability scans
//! read the packages, insight the files they installed.

pub mod bdb;

/// Most index entries read from one header.
const MAX_ENTRIES: usize = 10_000;
/// Most packages read from one database.
pub const MAX_PACKAGES: usize = 200_000;

const TAG_NAME: u32 = 1000;
const TAG_VERSION: u32 = 1001;
const TAG_RELEASE: u32 = 1002;
const TAG_EPOCH: u32 = 1003;
const TAG_OLDFILENAMES: u32 = 1027;
const TAG_SOURCERPM: u32 = 1044;
const TAG_DIRINDEXES: u32 = 1116;
const TAG_BASENAMES: u32 = 1117;
const TAG_DIRNAMES: u32 = 1118;
const TYPE_INT32: u32 = 4;
const TYPE_STRING: u32 = 6;
const TYPE_STRING_ARRAY: u32 = 8;

fn be32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(
        b.get(at..at.checked_add(4)?)?.try_into().ok()?,
    ))
}

/// One package as its header names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    pub name: String,
    /// `[epoch:]version-release`.
    pub evr: String,
    /// The source package's name (`openssl` for `openssl-libs`).
    pub source: String,
}

/// One index entry of a header: tag, type, offset in the data, count.
type Entry = (u32, u32, usize, usize);

/// A header blob as stored in rpmdb.sqlite (index count, data length,
/// index entries, data): its entries and its data.
fn entries(blob: &[u8]) -> Option<(Vec<Entry>, &[u8])> {
    let il = be32(blob, 0)? as usize;
    let dl = be32(blob, 4)? as usize;
    if il > MAX_ENTRIES {
        return None;
    }
    let data_start = 8 + il * 16;
    let data = blob.get(data_start..data_start.checked_add(dl)?)?;
    let mut out = Vec::with_capacity(il);
    for i in 0..il {
        let e = 8 + i * 16;
        out.push((
            be32(blob, e)?,
            be32(blob, e + 4)?,
            be32(blob, e + 8)? as usize,
            be32(blob, e + 12)? as usize,
        ));
    }
    Some((out, data))
}

/// The NUL-terminated string at `offset` of `data`.
fn string_at(data: &[u8], offset: usize) -> Option<&[u8]> {
    let rest = data.get(offset..)?;
    Some(&rest[..rest.iter().position(|&b| b == 0)?])
}

/// `count` NUL-terminated strings from `offset` of `data`.
fn strings_at(data: &[u8], offset: usize, count: usize) -> Option<Vec<&[u8]>> {
    let mut rest = data.get(offset..)?;
    // Each string takes at least its NUL: a count past that is a lie.
    if count > rest.len() {
        return None;
    }
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        let end = rest.iter().position(|&b| b == 0)?;
        out.push(&rest[..end]);
        rest = &rest[end + 1..];
    }
    Some(out)
}

/// Name, epoch:version-release and source package of one header blob.
pub fn parse_header(blob: &[u8]) -> Option<Header> {
    let (entries, data) = entries(blob)?;
    let (mut name, mut version, mut release, mut epoch, mut source) =
        (None, None, None, None::<u32>, None);
    for (tag, kind, offset, _) in entries {
        let text = || string_at(data, offset).map(|s| String::from_utf8_lossy(s).into_owned());
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
    let source = source
        .as_deref()
        .and_then(|s| s.strip_suffix(".src.rpm").or(s.strip_suffix(".nosrc.rpm")))
        .and_then(|s| s.rsplitn(3, '-').nth(2))
        .map(String::from)
        .unwrap_or_else(|| name.clone());
    Some(Header { name, evr, source })
}

/// Adds the paths one header's package installed (absolute, as rpm
/// records them) to `out`, stopping at `limit` paths in all: directory
/// names, base names and each base name's directory (rpm 4), or the old
/// flat list. A header that lies about its lists adds nothing.
pub fn header_files(blob: &[u8], out: &mut Vec<Vec<u8>>, limit: usize) {
    let Some((entries, data)) = entries(blob) else {
        return;
    };
    let find = |want: u32, kind: u32| {
        entries
            .iter()
            .find(|e| e.0 == want && e.1 == kind)
            .map(|e| (e.2, e.3))
    };
    if let (Some(b), Some(d), Some(i)) = (
        find(TAG_BASENAMES, TYPE_STRING_ARRAY),
        find(TAG_DIRNAMES, TYPE_STRING_ARRAY),
        find(TAG_DIRINDEXES, TYPE_INT32),
    ) {
        let (Some(base), Some(dirs)) = (strings_at(data, b.0, b.1), strings_at(data, d.0, d.1))
        else {
            return;
        };
        if i.1 != base.len() {
            return;
        }
        for (k, name) in base.iter().enumerate() {
            if out.len() >= limit {
                return;
            }
            let Some(dir) = be32(data, i.0 + 4 * k).and_then(|x| dirs.get(x as usize)) else {
                return;
            };
            out.push([*dir, *name].concat());
        }
    } else if let Some((offset, count)) = find(TAG_OLDFILENAMES, TYPE_STRING_ARRAY) {
        for path in strings_at(data, offset, count).unwrap_or_default() {
            if out.len() >= limit {
                return;
            }
            out.push(path.to_vec());
        }
    }
}

/// Calls `each` with every header blob (up to `max`) of an rpmdb.sqlite
/// file's bytes and its write-ahead log, when the guest left one. SQLite
/// reads a private copy.
pub fn sqlite_headers(
    db: &[u8],
    wal: Option<&[u8]>,
    max: usize,
    mut each: impl FnMut(&[u8]),
) -> Result<(), String> {
    // A private directory of unpredictable name (made with mode 0700):
    // nothing another user planted in /tmp is followed or written into.
    let tmp = tempfile::Builder::new()
        .prefix("cairn-rpmdb-")
        .tempdir()
        .map_err(|e| e.to_string())?;
    let dir = tmp.path().to_path_buf();
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
    let mut seen = 0;
    while let Some(row) = rows.next().map_err(|e| e.to_string())? {
        if seen >= max {
            break;
        }
        seen += 1;
        if let Ok(rusqlite::types::ValueRef::Blob(b)) = row.get_ref(0) {
            each(b);
        }
    }
    Ok(())
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

    /// A header as rpm lays it out: index entries, then the data.
    fn header(entries: &[(u32, u32, &[u8], usize)]) -> Vec<u8> {
        let mut data = Vec::new();
        let mut index = Vec::new();
        for (tag, kind, bytes, count) in entries {
            index.extend_from_slice(&tag.to_be_bytes());
            index.extend_from_slice(&kind.to_be_bytes());
            index.extend_from_slice(&(data.len() as u32).to_be_bytes());
            index.extend_from_slice(&(*count as u32).to_be_bytes());
            data.extend_from_slice(bytes);
        }
        let mut h = (entries.len() as u32).to_be_bytes().to_vec();
        h.extend_from_slice(&(data.len() as u32).to_be_bytes());
        h.extend(index);
        h.extend(data);
        h
    }

    #[test]
    fn a_headers_files_are_its_directories_joined_with_its_base_names() {
        let idx: Vec<u8> = [1u32, 0, 1].iter().flat_map(|i| i.to_be_bytes()).collect();
        let h = header(&[
            (TAG_NAME, TYPE_STRING, b"linux-firmware\0", 1),
            (
                TAG_BASENAMES,
                TYPE_STRING_ARRAY,
                b"a.bin\0README\0b.bin\0",
                3,
            ),
            (
                TAG_DIRNAMES,
                TYPE_STRING_ARRAY,
                b"/usr/share/doc/fw/\0/usr/lib/firmware/\0",
                2,
            ),
            (TAG_DIRINDEXES, TYPE_INT32, &idx, 3),
        ]);
        let mut files = Vec::new();
        header_files(&h, &mut files, 100);
        assert_eq!(
            files,
            [
                b"/usr/lib/firmware/a.bin".to_vec(),
                b"/usr/share/doc/fw/README".to_vec(),
                b"/usr/lib/firmware/b.bin".to_vec()
            ]
        );
        let mut two = Vec::new();
        header_files(&h, &mut two, 2);
        assert_eq!(two.len(), 2, "stops at the limit");

        // Lies: an index past the directories, counts that disagree or
        // run past the data, the old flat list.
        let bad: Vec<u8> = [1u32, 5, 0].iter().flat_map(|i| i.to_be_bytes()).collect();
        for h in [
            header(&[
                (TAG_BASENAMES, TYPE_STRING_ARRAY, b"a\0b\0c\0", 3),
                (TAG_DIRNAMES, TYPE_STRING_ARRAY, b"/x/\0/y/\0", 2),
                (TAG_DIRINDEXES, TYPE_INT32, &bad, 3),
            ]),
            header(&[
                (TAG_BASENAMES, TYPE_STRING_ARRAY, b"a\0b\0c\0", 3),
                (TAG_DIRNAMES, TYPE_STRING_ARRAY, b"/x/\0/y/\0", 2),
                (TAG_DIRINDEXES, TYPE_INT32, &idx, 2),
            ]),
            header(&[
                (TAG_BASENAMES, TYPE_STRING_ARRAY, b"a\0b\0", 4_000_000),
                (TAG_DIRNAMES, TYPE_STRING_ARRAY, b"/x/\0", 1),
                (TAG_DIRINDEXES, TYPE_INT32, &idx, 3),
            ]),
        ] {
            let mut files = Vec::new();
            header_files(&h, &mut files, 100);
            assert!(
                files.len() < 3
                    && files
                        .iter()
                        .all(|f| f.starts_with(b"/x/") || f.starts_with(b"/y/")),
                "{files:?}"
            );
        }
        let old = header(&[(TAG_OLDFILENAMES, TYPE_STRING_ARRAY, b"/etc/a\0/etc/b\0", 2)]);
        let mut files = Vec::new();
        header_files(&old, &mut files, 100);
        assert_eq!(files, [b"/etc/a".to_vec(), b"/etc/b".to_vec()]);
    }
}
