//! What a file's bytes are: its type by magic bytes and by extension, and
//! whether its structure holds together. Encryption — even intermittent or
//! head-only — breaks the structure of typed files, while whole-file
//! entropy may barely move.
//!
//! Everything here reads a bounded sample of a file (its head and tail,
//! plus a few bytes at offsets the format names), never the whole file.

/// A file type, as far as insight cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Zip,
    Pdf,
    Jpeg,
    Png,
    Sqlite,
    Gzip,
    /// Other compressed or packed formats recognised by magic only.
    Packed,
    /// Audio, video and images other than JPEG and PNG, by magic only.
    Media,
    Elf,
    Text,
}

impl Kind {
    /// Formats whose content is compressed or encrypted by design: high
    /// entropy in them is normal.
    pub fn dense(self) -> bool {
        matches!(
            self,
            Kind::Zip
                | Kind::Jpeg
                | Kind::Png
                | Kind::Gzip
                | Kind::Packed
                | Kind::Media
                | Kind::Pdf
        )
    }
}

/// The file's extension, lowercased, without the dot (`""` when none).
pub fn extension(path: &str) -> String {
    let name = path.rsplit('/').next().unwrap_or(path);
    match name.rfind('.') {
        Some(i) if i > 0 && i + 1 < name.len() => name[i + 1..].to_ascii_lowercase(),
        _ => String::new(),
    }
}

/// The bytes of a file name after its last dot, as [`extension`] finds
/// them (before escaping and lower-casing; empty when there is none).
pub fn raw_extension(name: &[u8]) -> &[u8] {
    match name.iter().rposition(|&b| b == b'.') {
        Some(i) if i > 0 && i + 1 < name.len() => &name[i + 1..],
        _ => &[],
    }
}

/// The type a file of this extension should have, for extensions we know.
pub fn kind_for_extension(ext: &str) -> Option<Kind> {
    Some(match ext {
        "zip" | "docx" | "docm" | "xlsx" | "xlsm" | "pptx" | "odt" | "ods" | "odp" | "jar"
        | "apk" | "epub" => Kind::Zip,
        "pdf" => Kind::Pdf,
        "jpg" | "jpeg" => Kind::Jpeg,
        "png" => Kind::Png,
        "sqlite" | "sqlite3" => Kind::Sqlite,
        "gz" | "tgz" => Kind::Gzip,
        "xz" | "bz2" | "zst" | "7z" | "rar" | "deb" | "rpm" | "cab" => Kind::Packed,
        "mp4" | "m4a" | "m4v" | "mov" | "heic" | "gif" | "mp3" | "webp" | "wav" | "flac"
        | "ogg" | "mkv" | "webm" | "avi" => Kind::Media,
        "txt" | "csv" | "tsv" | "md" | "log" | "json" | "xml" | "html" | "htm" | "py" | "c"
        | "h" | "rs" | "js" | "ts" | "css" | "conf" | "cfg" | "ini" | "yaml" | "yml" | "sh"
        | "sql" | "tex" | "eml" | "toml" | "go" | "java" | "php" | "rb" | "pl" => Kind::Text,
        _ => return None,
    })
}

/// The type the first bytes announce, if any.
pub fn sniff(head: &[u8]) -> Option<Kind> {
    let starts = |m: &[u8]| head.starts_with(m);
    let at = |off: usize, m: &[u8]| head.len() >= off + m.len() && &head[off..off + m.len()] == m;
    Some(if starts(b"PK\x03\x04") || starts(b"PK\x05\x06") {
        Kind::Zip
    } else if head[..head.len().min(1024)]
        .windows(5)
        .any(|w| w == b"%PDF-")
    {
        Kind::Pdf
    } else if starts(&[0xff, 0xd8, 0xff]) {
        Kind::Jpeg
    } else if starts(b"\x89PNG\r\n\x1a\n") {
        Kind::Png
    } else if starts(b"SQLite format 3\0") {
        Kind::Sqlite
    } else if starts(&[0x1f, 0x8b]) {
        Kind::Gzip
    } else if starts(b"\x7fELF") {
        Kind::Elf
    } else if starts(&[0xfd, b'7', b'z', b'X', b'Z', 0])
        || starts(b"BZh")
        || starts(&[0x28, 0xb5, 0x2f, 0xfd])
        || starts(&[b'7', b'z', 0xbc, 0xaf, 0x27, 0x1c])
        || starts(b"Rar!")
        || starts(b"!<arch>\n")
        || starts(&[0xed, 0xab, 0xee, 0xdb])
        || starts(b"MSCF")
        || starts(b"PACK")
        || starts(b"hsqs")
        || starts(b"LUKS\xba\xbe")
        || starts(b"-----BEGIN PGP")
    {
        Kind::Packed
    } else if at(4, b"ftyp")
        || starts(b"GIF8")
        || starts(b"ID3")
        || (starts(b"RIFF") && (at(8, b"WEBP") || at(8, b"WAVE") || at(8, b"AVI ")))
        || starts(b"fLaC")
        || starts(b"OggS")
        || starts(&[0x1a, 0x45, 0xdf, 0xa3])
    {
        Kind::Media
    } else if !head.is_empty() && text_share(&head[..head.len().min(4096)]) >= 0.95 {
        Kind::Text
    } else {
        return None;
    })
}

/// Share of bytes that belong to text: printable characters, tab, newline
/// and carriage return, in valid UTF-8. Random bytes are almost never
/// valid UTF-8 for long, so encrypted spans drag this far down.
pub fn text_share(data: &[u8]) -> f64 {
    if data.is_empty() {
        return 1.0;
    }
    let ascii_good = |b: u8| b >= 0x20 && b != 0x7f || matches!(b, b'\t' | b'\n' | b'\r' | 0x0c);
    let mut good = 0usize;
    let mut i = 0;
    while i < data.len() {
        // Runs of ASCII, the common case, sixteen bytes at a time.
        if let Some(run) = data.get(i..i + 16)
            && run.iter().all(|&b| b < 0x80)
        {
            good += run.iter().filter(|&&b| ascii_good(b)).count();
            i += 16;
            continue;
        }
        let b = data[i];
        if b < 0x80 {
            good += ascii_good(b) as usize;
            i += 1;
            continue;
        }
        let len = match b {
            0xc2..=0xdf => 2,
            0xe0..=0xef => 3,
            0xf0..=0xf4 => 4,
            _ => 1,
        };
        match data
            .get(i..i + len)
            .and_then(|c| std::str::from_utf8(c).ok())
        {
            Some(c) if len > 1 && !c.chars().all(char::is_control) => {
                good += len;
                i += len;
            }
            _ => i += 1,
        }
    }
    good as f64 / data.len() as f64
}

/// A bounded view of one file.
pub struct Sample<'a> {
    /// The first bytes (up to a limit).
    pub head: &'a [u8],
    /// The last bytes (may overlap the head for small files).
    pub tail: &'a [u8],
    pub size: u64,
}

/// Reads `buf.len()` bytes at `offset` of the file; false when it cannot.
pub type ReadAt<'a> = dyn FnMut(u64, &mut [u8]) -> bool + 'a;

/// Whether the sample holds together as `kind`; `Err` says what broke.
/// Kinds known by magic only pass when the magic is there.
pub fn check_structure(kind: Kind, s: &Sample, read_at: &mut ReadAt) -> Result<(), String> {
    match kind {
        Kind::Zip => check_zip(s, read_at),
        Kind::Pdf => check_pdf(s),
        Kind::Jpeg => check_jpeg(s),
        Kind::Png => check_png(s),
        Kind::Sqlite => check_sqlite(s),
        Kind::Text => {
            let head = &s.head[..s.head.len().min(64 << 10)];
            if utf16_text(head) {
                return Ok(());
            }
            let share = text_share(head);
            if share < 0.85 {
                Err(format!(
                    "a text file holding binary data ({:.0}% text)",
                    share * 100.0
                ))
            } else {
                Ok(())
            }
        }
        Kind::Gzip => check_gzip(s),
        Kind::Packed | Kind::Media | Kind::Elf => {
            if sniff(s.head) == Some(kind) {
                Ok(())
            } else {
                Err("its magic bytes are gone".into())
            }
        }
    }
}

fn le16(b: &[u8], at: usize) -> u64 {
    u16::from_le_bytes([b[at], b[at + 1]]) as u64
}
fn le32(b: &[u8], at: usize) -> u64 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]) as u64
}
fn be16(b: &[u8], at: usize) -> usize {
    u16::from_be_bytes([b[at], b[at + 1]]) as usize
}
fn be32(b: &[u8], at: usize) -> u64 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]) as u64
}

/// ZIP (and OOXML, ODF, JAR…): a local header first, an end-of-central-
/// directory record at the end whose central directory lies inside the
/// file and starts with its own signature.
fn check_zip(s: &Sample, read_at: &mut ReadAt) -> Result<(), String> {
    zip_entries(s, read_at).map(|_| ())
}

/// Whether a file is a ZIP whose data is encrypted (with a password, or
/// WinZip's AES): an archive someone locked, or an Office document turned
/// into one.
pub fn zip_locked(s: &Sample, read_at: &mut ReadAt) -> bool {
    zip_entries(s, read_at).is_ok_and(|z| z.locked())
}

/// A ZIP's entries as checked (`None` when it does not check out).
pub fn zip_facts(s: &Sample, read_at: &mut ReadAt) -> Option<ZipEntries> {
    zip_entries(s, read_at).ok()
}

/// What checking a ZIP's entries found.
#[derive(Default)]
pub struct ZipEntries {
    /// Entries looked at (empty ones and directories aside), and their
    /// packed bytes.
    checked: usize,
    packed_bytes: u64,
    /// Of those, encrypted on purpose (not checked further).
    locked: usize,
    locked_bytes: u64,
    /// The Office and OpenDocument parts it holds (lower case).
    pub parts: Vec<String>,
}

impl ZipEntries {
    /// Nine tenths of its data and more is encrypted: a README left in
    /// the clear beside a locked document changes nothing.
    pub fn locked(&self) -> bool {
        self.locked > 0 && self.locked_bytes * 10 >= self.packed_bytes * 9
    }
}

/// The content part an Office or OpenDocument file of this extension
/// cannot be without.
pub fn office_part(ext: &str) -> Option<&'static str> {
    Some(match ext {
        "docx" | "docm" | "dotx" => "word/document.xml",
        "xlsx" | "xlsm" | "xltx" => "xl/workbook.xml",
        "pptx" | "pptm" | "potx" => "ppt/presentation.xml",
        "odt" | "ods" | "odp" | "odg" => "content.xml",
        _ => return None,
    })
}

/// A ZIP found through its end record, with any bytes in front of it (a
/// self-extracting stub, an executable jar's launcher script): the
/// directory's offsets count from where the ZIP starts, wherever `zip -A`
/// left that.
fn zip_entries(s: &Sample, read_at: &mut ReadAt) -> Result<ZipEntries, String> {
    let t = s.tail;
    let Some(eocd) = (0..t.len().saturating_sub(21))
        .rev()
        .find(|&i| &t[i..i + 4] == b"PK\x05\x06")
    else {
        return Err(if s.head.starts_with(b"PK\x03\x04") {
            "no ZIP end record".into()
        } else {
            "no ZIP header".into()
        });
    };
    let cd_size = le32(t, eocd + 12);
    let cd_offset = le32(t, eocd + 16);
    let eocd_at = s.size - t.len() as u64 + eocd as u64;
    if cd_offset == 0xffff_ffff {
        return Ok(ZipEntries::default()); // ZIP64: the real offsets are elsewhere
    }
    if cd_offset + cd_size > eocd_at {
        return Err("ZIP central directory out of bounds".into());
    }
    let entries = le16(t, eocd + 10);
    if entries > 0 && cd_size < entries * 46 {
        return Err("ZIP central directory too small for its entries".into());
    }
    let at_start = s.head.starts_with(b"PK\x03\x04") || s.head.starts_with(b"PK\x05\x06");
    if cd_size == 0 {
        return if at_start {
            Ok(ZipEntries::default())
        } else {
            Err("no ZIP header".into())
        };
    }
    // Where the directory is: at its offset (a ZIP at the file's start,
    // or one whose offsets `zip -A` made count from there), or that far
    // past the bytes in front of the ZIP. Each entry's header must then
    // be found where the directory says: a head encrypted in place fails
    // there.
    let mut sig = [0u8; 4];
    let mut directory_at = |base: u64| read_at(base + cd_offset, &mut sig) && &sig == b"PK\x01\x02";
    let base = if directory_at(0) {
        0
    } else if directory_at(eocd_at - cd_offset - cd_size) {
        eocd_at - cd_offset - cd_size
    } else {
        return Err("ZIP central directory damaged".into());
    };
    // What comes before the ZIP must launch it: a script or a program (an
    // executable jar, a self-extractor). Ciphertext with a small ZIP
    // behind it is no archive.
    let launcher = [&b"#!"[..], b"MZ", b"\x7fELF"];
    if !at_start && !launcher.iter().any(|m| s.head.starts_with(m)) {
        return Err("the bytes before its ZIP launch nothing".into());
    }
    check_zip_entries(base, base + cd_offset, cd_size, s.size, read_at)
}

/// How much of a ZIP's entries is checked: entries in directory order,
/// each up to `ZIP_ENTRY_BYTES` of its packed data, `ZIP_BYTES` in all.
const ZIP_ENTRIES: usize = 256;
const ZIP_ENTRY_BYTES: u64 = 512 << 10;
const ZIP_BYTES: u64 = 2 << 20;
/// Inflating stops here (a small entry may inflate a thousandfold).
const ZIP_INFLATE_BYTES: u64 = 32 << 20;
/// A central directory longer than this is read this far.
const ZIP_DIRECTORY_BYTES: u64 = 1 << 20;
/// Entries whose names say they are text (an Office or OpenDocument
/// file's XML parts, a jar's manifest): the first bytes they inflate to
/// must read as text.
const TEXT_ENTRIES: [&str; 10] = [
    ".xml", ".rels", ".mf", ".txt", ".json", ".html", ".htm", ".css", ".svg", ".js",
];
/// How much of a text entry is looked at.
const TEXT_PEEK: usize = 4096;

/// One entry as the central directory records it.
struct ZipRecord<'a> {
    name: &'a [u8],
    flags: u64,
    method: u64,
    crc: u64,
    packed: u64,
    unpacked: u64,
    local: u64,
}

/// At most this many directory records are read (names, sizes).
const ZIP_RECORDS: usize = 1 << 16;
/// The parts an Office or OpenDocument file cannot be without: its
/// content, and the lists that say what it holds. Checked first, whatever
/// their place in the directory.
const OFFICE_PARTS: [&str; 7] = [
    "[content_types].xml",
    "word/document.xml",
    "xl/workbook.xml",
    "ppt/presentation.xml",
    "content.xml",
    "meta-inf/manifest.xml",
    "_rels/.rels",
];
const ODF_MANIFEST: &str = "meta-inf/manifest.xml";

fn directory(cd: &[u8]) -> Vec<ZipRecord<'_>> {
    let mut out = Vec::new();
    let mut at = 0usize;
    while out.len() < ZIP_RECORDS {
        let Some(rec) = cd.get(at..at + 46).filter(|r| r.starts_with(b"PK\x01\x02")) else {
            break;
        };
        let name_len = le16(rec, 28) as usize;
        out.push(ZipRecord {
            name: cd.get(at + 46..at + 46 + name_len).unwrap_or_default(),
            flags: le16(rec, 8),
            method: le16(rec, 10),
            crc: le32(rec, 16),
            packed: le32(rec, 20),
            unpacked: le32(rec, 24),
            local: le32(rec, 42),
        });
        at += 46 + name_len + (le16(rec, 30) + le16(rec, 32)) as usize;
    }
    out
}

/// The entries of a ZIP (offsets counted from `base`), found through its
/// central directory: the data of each must inflate (random bytes stop
/// inflating within a few bytes), an entry read whole must match its size
/// and CRC-32, and an entry named as text must read as text — an Office
/// or OpenDocument part as markup, not one long run of base64 or hex.
/// Encrypting the entries while keeping every header leaves a ZIP whose
/// directories look perfect — also when the first entry is left alone,
/// and when the ZIP is rewritten with the same names over random bytes
/// and their true CRCs. An OpenDocument file its owner saved with a
/// password (its manifest says so) has parts that are ciphertext by
/// design: those are counted as locked, not checked.
fn check_zip_entries(
    base: u64,
    cd_offset: u64,
    cd_size: u64,
    size: u64,
    read_at: &mut ReadAt,
) -> Result<ZipEntries, String> {
    let mut found = ZipEntries::default();
    let mut cd = vec![0u8; cd_size.min(ZIP_DIRECTORY_BYTES) as usize];
    if !read_at(cd_offset, &mut cd) {
        return Err("ZIP central directory unreadable".into());
    }
    let records = directory(&cd);
    let lower: Vec<String> = records
        .iter()
        .map(|r| String::from_utf8_lossy(r.name).to_ascii_lowercase())
        .collect();
    found.parts = lower
        .iter()
        .filter(|n| OFFICE_PARTS.contains(&n.as_str()))
        .cloned()
        .collect();
    // The manifest, then the other parts, then the rest in order.
    let mut order: Vec<usize> = (0..records.len()).collect();
    order.sort_by_key(|&i| {
        (
            lower[i] != ODF_MANIFEST,
            !OFFICE_PARTS.contains(&lower[i].as_str()),
            i,
        )
    });
    let mut budget = ZIP_BYTES;
    let mut odf_sealed = false;
    for (nth, &i) in order.iter().enumerate() {
        let r = &records[i];
        let part = OFFICE_PARTS.contains(&lower[i].as_str());
        if nth >= ZIP_ENTRIES && !part {
            break;
        }
        if r.packed == 0 {
            continue;
        }
        found.checked += 1;
        found.packed_bytes += r.packed;
        // Encrypted on purpose (a password, WinZip's AES as method 99):
        // counted, not checked.
        if r.flags & 1 != 0 || r.method == 99 || (odf_sealed && lower[i] != "mimetype") {
            found.locked += 1;
            found.locked_bytes += r.packed;
            continue;
        }
        // ZIP64 sizes, other methods: not checked.
        if r.packed == 0xffff_ffff || !matches!(r.method, 0 | 8) {
            continue;
        }
        let text = TEXT_ENTRIES.iter().any(|x| lower[i].ends_with(x));
        let local = base + r.local;
        let mut header = [0u8; 30];
        if local.checked_add(30).is_none_or(|end| end > size)
            || !read_at(local, &mut header)
            || !header.starts_with(b"PK\x03\x04")
        {
            return Err("a ZIP entry's header is missing".into());
        }
        let data_at = local + 30 + le16(&header, 26) + le16(&header, 28);
        // The parts an Office file needs are read whatever else was.
        let allowance = if part { ZIP_ENTRY_BYTES } else { budget };
        let take = r.packed.min(ZIP_ENTRY_BYTES).min(allowance);
        if take == 0 {
            break;
        }
        budget = budget.saturating_sub(take);
        let mut data = vec![0u8; take as usize];
        if data_at.checked_add(take).is_none_or(|end| end > size) || !read_at(data_at, &mut data) {
            return Err("a ZIP entry's data lies past the end".into());
        }
        let whole = take == r.packed;
        let mut peek = Vec::with_capacity(TEXT_PEEK);
        let ok = match r.method {
            8 => entry_inflates(&data, whole, r.unpacked, r.crc as u32, &mut peek),
            _ => {
                peek.extend_from_slice(&data[..data.len().min(TEXT_PEEK)]);
                !whole || (r.packed == r.unpacked && crc32fast::hash(&data) == r.crc as u32)
            }
        };
        if !ok {
            return Err("an entry's data does not match its checksum".into());
        }
        let shown = || cairn_guest::model::escape(&r.name[..r.name.len().min(80)]);
        if text && !peek.is_empty() && text_share(&peek) < 0.9 && !utf16_text(&peek) {
            return Err(format!("its entry {} is no text", shown()));
        }
        if part && longest_token(&peek) >= 1024 {
            return Err(format!(
                "its entry {} holds one long run of base64 or hex, not markup",
                shown()
            ));
        }
        if lower[i] == ODF_MANIFEST {
            odf_sealed = peek.windows(15).any(|w| w == b"encryption-data");
        }
    }
    Ok(found)
}

/// The longest run of bytes that could be base64 or hex (no space, no
/// markup, no punctuation).
fn longest_token(data: &[u8]) -> usize {
    data.split(|&b| !(b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'=')))
        .map(<[u8]>::len)
        .max()
        .unwrap_or(0)
}

/// Whether `packed` (raw deflate) inflates; when it is an entry's whole
/// data, to `size` bytes of CRC-32 `crc`. Inflates through one small
/// buffer, keeps the first `TEXT_PEEK` bytes in `peek`, and stops
/// checking after `ZIP_INFLATE_BYTES`.
fn entry_inflates(packed: &[u8], whole: bool, size: u64, crc: u32, peek: &mut Vec<u8>) -> bool {
    use flate2::{Decompress, FlushDecompress, Status};
    let mut z = Decompress::new(false);
    let mut out = vec![0u8; 64 << 10];
    let mut sum = crc32fast::Hasher::new();
    loop {
        let (fed, made) = (z.total_in(), z.total_out());
        let rest = packed.get(fed as usize..).unwrap_or_default();
        let Ok(status) = z.decompress(rest, &mut out, FlushDecompress::None) else {
            return false;
        };
        let n = (z.total_out() - made) as usize;
        sum.update(&out[..n]);
        let room = TEXT_PEEK - peek.len();
        peek.extend_from_slice(&out[..n.min(room)]);
        if z.total_out() > size {
            return false;
        }
        if z.total_out() > ZIP_INFLATE_BYTES {
            return true;
        }
        match status {
            Status::StreamEnd => {
                return !whole || (z.total_out() == size && sum.finalize() == crc);
            }
            _ if z.total_in() == fed && n == 0 => return !whole,
            _ => {}
        }
    }
}

/// A log, which its rotation empties or rewrites as a matter of course.
pub fn is_log(path: &str) -> bool {
    let lower = path.to_ascii_lowercase();
    lower.contains("/log/") || lower.contains("/logs/") || lower.ends_with(".log")
}

/// A cache or a version-control store: files a program writes, packs and
/// drops by the hundred (compressed entries without headers, git's loose
/// objects), not the user's data.
pub fn is_cache(path: &str) -> bool {
    let lower = path.to_ascii_lowercase();
    [
        "/.cache/",
        "/cache/",
        "/cache2/",
        "/cachestorage/",
        "/gpucache/",
        "/code cache/",
        "/.git/",
        "/node_modules/",
        "/tmp/",
        "/var/tmp/",
    ]
    .iter()
    .any(|d| lower.contains(d))
}

/// Where users keep their files (Linux homes, service data, Windows
/// profiles), caches and version-control stores excepted.
pub fn is_user_data(path: &str) -> bool {
    let rel = path.strip_prefix('/').unwrap_or(path);
    [
        "home/",
        "root/",
        "srv/",
        "users/",
        "documents and settings/",
    ]
    .iter()
    .any(|d| rel.len() >= d.len() && rel.as_bytes()[..d.len()].eq_ignore_ascii_case(d.as_bytes()))
        && !is_cache(path)
}

/// Where package managers install: the system's own folders, not the
/// users', a web site's or a service's data.
pub fn is_system_path(path: &str) -> bool {
    let rel = path.strip_prefix('/').unwrap_or(path);
    [
        "usr/",
        "lib/",
        "lib32/",
        "lib64/",
        "bin/",
        "sbin/",
        "opt/",
        "boot/",
        "etc/",
        "var/lib/dpkg/",
        "var/lib/apk/",
    ]
    .iter()
    .any(|d| rel.starts_with(d))
}

/// Prose or records: spaces (or field separators) between words in at
/// least one byte in twenty of a readable head.
pub fn has_words(head: &[u8]) -> bool {
    let head = &head[..head.len().min(16 << 10)];
    head.len() >= 256
        && text_share(head) >= 0.95
        && head
            .iter()
            .filter(|&&b| matches!(b, b' ' | b'\t' | b',' | b';'))
            .count()
            * 20
            >= head.len()
}

/// Bytes written out as base64 or hex: almost nothing but that alphabet
/// and line breaks, no spaces, at least 1 KiB of it.
pub fn encoded_blob(head: &[u8]) -> bool {
    let head = &head[..head.len().min(16 << 10)];
    // An armour line or two (`-----BEGIN …-----`) may come first.
    let body: Vec<&[u8]> = head
        .split(|&b| b == b'\n')
        .filter(|l| !l.starts_with(b"-----") && !l.is_empty())
        .collect();
    let n: usize = body.iter().map(|l| l.len()).sum();
    let alphabet = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'=' | b'\r');
    n >= 1024 && body.iter().all(|l| l.iter().all(|&b| alphabet(b)))
}

/// UTF-16 bytes (little- or big-endian, no byte-order mark) as text, a
/// trailing odd byte dropped and bad units replaced.
pub fn utf16_lossy(bytes: &[u8], le: bool) -> String {
    let units: Vec<u16> = bytes
        .chunks_exact(2)
        .map(|p| {
            if le {
                u16::from_le_bytes([p[0], p[1]])
            } else {
                u16::from_be_bytes([p[0], p[1]])
            }
        })
        .collect();
    String::from_utf16_lossy(&units)
}

/// Text saved as UTF-16 (Windows tools do): a byte-order mark, or every
/// other byte zero beside readable characters, and that read as text.
pub fn utf16_text(head: &[u8]) -> bool {
    let (le, body) = match head {
        [0xff, 0xfe, rest @ ..] => (true, rest),
        [0xfe, 0xff, rest @ ..] => (false, rest),
        _ => {
            let n = head.len().min(4096) & !1;
            let zero_odd = head[..n].chunks(2).filter(|p| p[1] == 0).count();
            let zero_even = head[..n].chunks(2).filter(|p| p[0] == 0).count();
            match (zero_odd * 10 >= n / 2 * 9, zero_even * 10 >= n / 2 * 9) {
                (true, false) if n >= 64 => (true, head),
                (false, true) if n >= 64 => (false, head),
                _ => return false,
            }
        }
    };
    let text = utf16_lossy(&body[..body.len().min(64 << 10)], le);
    text_share(text.as_bytes()) >= 0.95 && !text.contains('\u{fffd}')
}

/// gzip: a deflate stream (the only method) behind a header whose
/// reserved flags are clear, and the stream inflates: random bytes behind
/// the two magic bytes do not.
fn check_gzip(s: &Sample) -> Result<(), String> {
    let h = s.head;
    if !h.starts_with(&[0x1f, 0x8b]) {
        return Err("its magic bytes are gone".into());
    }
    if h.len() < 10 || h[2] != 8 || h[3] & 0xe0 != 0 {
        return Err("not a valid gzip header".into());
    }
    inflates(flate2::read::GzDecoder::new(h), "gzip")
}

/// Whether a decompressor reads up to 64 KiB out of a sample without
/// finding the data broken (running out of the sample is fine).
fn inflates(mut r: impl std::io::Read, what: &str) -> Result<(), String> {
    let mut out = vec![0u8; 64 << 10];
    let mut done = 0;
    while done < out.len() {
        match r.read(&mut out[done..]) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
            Err(_) => return Err(format!("its {what} data does not decompress")),
        }
    }
    Ok(())
}

fn check_pdf(s: &Sample) -> Result<(), String> {
    if sniff(s.head) != Some(Kind::Pdf) {
        return Err("no PDF header".into());
    }
    let tail = &s.tail[s.tail.len().saturating_sub(2048)..];
    if !tail.windows(5).any(|w| w == b"%%EOF") {
        return Err("no PDF end marker".into());
    }
    Ok(())
}

/// JPEG: the segment chain from the start must be well formed up to the
/// start of scan (or the end of the sample), and the image must end with
/// an end-of-image marker.
fn check_jpeg(s: &Sample) -> Result<(), String> {
    let h = s.head;
    if !h.starts_with(&[0xff, 0xd8, 0xff]) {
        return Err("no JPEG header".into());
    }
    let mut i = 2;
    while i + 4 <= h.len() {
        if h[i] != 0xff {
            return Err(format!("JPEG segment chain broken at byte {i}"));
        }
        let m = h[i + 1];
        match m {
            0xda => break, // start of scan: entropy-coded data follows
            0xd0..=0xd7 | 0x01 | 0xff => i += if m == 0xff { 1 } else { 2 },
            0xd8 | 0xd9 => return Err(format!("JPEG marker out of place at byte {i}")),
            _ => {
                let len = be16(h, i + 2);
                if len < 2 {
                    return Err(format!("JPEG segment of length {len} at byte {i}"));
                }
                i += 2 + len;
            }
        }
    }
    // Tools pad images with zeros after the marker (to a block size, or
    // a fixed file size): looked for before the padding. A tail of zeros
    // alone tells nothing (zeroing is judged on its own).
    let padded = s.tail.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
    let tail = &s.tail[padded.saturating_sub(4096)..padded];
    if padded > 0 && !tail.windows(2).any(|w| w == [0xff, 0xd9]) {
        return Err("no JPEG end-of-image marker".into());
    }
    Ok(())
}

/// PNG: every chunk in the sample has a sane length, a letter type and a
/// matching CRC; the file ends with IEND.
fn check_png(s: &Sample) -> Result<(), String> {
    let h = s.head;
    if !h.starts_with(b"\x89PNG\r\n\x1a\n") {
        return Err("no PNG signature".into());
    }
    let mut i = 8usize;
    let mut seen = 0;
    while i + 12 <= h.len() {
        let len = be32(h, i);
        let ty = &h[i + 4..i + 8];
        if len > 0x7fff_ffff || !ty.iter().all(u8::is_ascii_alphabetic) {
            return Err(format!("PNG chunk header damaged at byte {i}"));
        }
        let end = i + 12 + len as usize;
        if end > h.len() {
            break; // runs past the sample
        }
        let crc = crc32fast::hash(&h[i + 4..end - 4]) as u64;
        if crc != be32(h, end - 4) {
            return Err(format!(
                "PNG chunk {} fails its CRC",
                String::from_utf8_lossy(ty)
            ));
        }
        seen += 1;
        if ty == b"IEND" {
            return Ok(());
        }
        i = end;
    }
    if seen == 0 {
        return Err("no complete PNG chunk".into());
    }
    let tail = &s.tail[s.tail.len().saturating_sub(12)..];
    if tail.len() < 12 || &tail[4..8] != b"IEND" {
        return Err("no PNG end chunk".into());
    }
    Ok(())
}

/// SQLite: the database header's fixed fields and the first page's b-tree
/// type.
fn check_sqlite(s: &Sample) -> Result<(), String> {
    let h = s.head;
    if h.len() < 108 || !h.starts_with(b"SQLite format 3\0") {
        return Err("no SQLite header".into());
    }
    let page = match be16(h, 16) {
        1 => 65536,
        p if p >= 512 && p.is_power_of_two() => p as u64,
        p => return Err(format!("SQLite page size {p} is invalid")),
    };
    if !(1..=2).contains(&h[18]) || !(1..=2).contains(&h[19]) || h[21..24] != [64, 32, 32] {
        return Err("SQLite header fields damaged".into());
    }
    if !s.size.is_multiple_of(page) {
        return Err("SQLite file is not a whole number of pages".into());
    }
    if !matches!(h[100], 0x05 | 0x0d) {
        return Err("SQLite schema page damaged".into());
    }
    Ok(())
}

/// Of a SQLite database's pages that changed (`was` → `now`, its bytes
/// from file offset `at`), how many there are and how many still read as
/// SQLite pages. A database's own writes leave every page it touched a
/// page (a b-tree page with its cell pointers in place, an overflow or
/// freelist page chaining to a page that exists, a pointer map), however
/// random the new values in it look (floating-point numbers do); a page
/// encrypted in place reads as none of them. `page` is the page size,
/// `pages` the database's page count.
pub fn sqlite_changed_pages(
    page: usize,
    pages: u64,
    at: u64,
    was: &[u8],
    now: &[u8],
) -> (u64, u64) {
    if page < 512 || !page.is_power_of_two() {
        return (0, 0);
    }
    let n = was.len().min(now.len());
    // The first page boundary at or after `at`, as an index into the bytes.
    let mut i = ((page as u64 - at % page as u64) % page as u64) as usize;
    let (mut changed, mut intact) = (0, 0);
    while i + page <= n {
        if was[i..i + page] != now[i..i + page] {
            changed += 1;
            let number = (at + i as u64) / page as u64 + 1;
            intact += sqlite_page_plausible(&now[i..i + page], number, pages) as u64;
        }
        i += page;
    }
    (changed, intact)
}

fn sqlite_page_plausible(p: &[u8], number: u64, pages: u64) -> bool {
    if p.iter().all(|&b| b == 0) {
        return true;
    }
    if number == 1 {
        return p.starts_with(b"SQLite format 3\0") && btree_page(p, 100);
    }
    // An overflow page or a freelist trunk: the next page's number first
    // (0 ends the chain).
    btree_page(p, 0)
        || be32(p, 0) <= pages
        // A pointer map (auto-vacuum): 5-byte entries, a type and a page.
        || p.chunks_exact(5)
            .all(|e| e[0] <= 5 && (e[0] == 0 || be32(e, 1) <= pages))
}

/// A b-tree page header at `h` whose cell pointers lie in the page.
fn btree_page(p: &[u8], h: usize) -> bool {
    let Some(&kind) = p.get(h) else {
        return false;
    };
    let header = match kind {
        0x0a | 0x0d => 8,
        0x02 | 0x05 => 12,
        _ => return false,
    };
    if p.len() < h + header {
        return false;
    }
    let cells = be16(p, h + 3);
    let content = match be16(p, h + 5) {
        0 => 65536,
        c => c,
    };
    let pointers = h + header + 2 * cells;
    pointers <= content
        && content <= p.len()
        && p[h + 7] <= 60
        && (0..cells).all(|c| (content..p.len()).contains(&be16(p, h + header + 2 * c)))
}

/// Everything insight parses from a file's bytes, on arbitrary input (the
/// fuzz target runs this): no panic, no unbounded allocation.
pub fn fuzz_one(data: &[u8]) {
    let half = data.len() / 2;
    let sample = Sample {
        head: &data[..half],
        tail: &data[half..],
        size: data.len() as u64,
    };
    let mut read_at = |off: u64, buf: &mut [u8]| {
        let Some(end) = off
            .checked_add(buf.len() as u64)
            .filter(|&e| e <= data.len() as u64)
        else {
            return false;
        };
        buf.copy_from_slice(&data[off as usize..end as usize]);
        true
    };
    let _ = sniff(data);
    let _ = text_share(data);
    for k in [
        Kind::Zip,
        Kind::Pdf,
        Kind::Jpeg,
        Kind::Png,
        Kind::Sqlite,
        Kind::Gzip,
        Kind::Packed,
        Kind::Media,
        Kind::Elf,
        Kind::Text,
    ] {
        let _ = check_structure(k, &sample, &mut read_at);
    }
    let _ = crate::notes::looks_like_note("README.txt", data);
    for page in [512, 4096] {
        let _ = sqlite_changed_pages(
            page,
            1 << 20,
            data.len() as u64 % 5000,
            &data[..half],
            &data[half..],
        );
    }
}

#[cfg(test)]
mod tests {
    /// `text_share` as it was written first, a byte at a time.
    fn text_share_bytewise(data: &[u8]) -> f64 {
        let mut good = 0usize;
        let mut i = 0;
        while i < data.len() {
            let b = data[i];
            if b < 0x80 {
                good +=
                    (b >= 0x20 && b != 0x7f || matches!(b, b'\t' | b'\n' | b'\r' | 0x0c)) as usize;
                i += 1;
                continue;
            }
            let len = match b {
                0xc2..=0xdf => 2,
                0xe0..=0xef => 3,
                0xf0..=0xf4 => 4,
                _ => 1,
            };
            match data
                .get(i..i + len)
                .and_then(|c| std::str::from_utf8(c).ok())
            {
                Some(c) if len > 1 && !c.chars().all(char::is_control) => {
                    good += len;
                    i += len;
                }
                _ => i += 1,
            }
        }
        good as f64 / data.len().max(1) as f64
    }

    #[test]
    fn text_share_counts_like_a_byte_at_a_time() {
        let mut x = 3u64;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let pieces: [&[u8]; 6] = [
            b"plain ascii text, long enough to fill runs of sixteen\n",
            "gr\u{fc}\u{df}e, \u{4e2d}\u{6587}, \u{1f600} ".as_bytes(),
            b"\x00\x01\x7f\x1b",
            b"\xff\xfe\xc3",
            b"\t\r\n\x0c",
            b"\xe2\x82",
        ];
        for _ in 0..300 {
            let mut data = Vec::new();
            for _ in 0..(next() % 12) {
                data.extend_from_slice(pieces[(next() % 6) as usize]);
            }
            if data.is_empty() {
                continue;
            }
            assert_eq!(text_share(&data), text_share_bytewise(&data), "{data:?}");
        }
    }

    use super::*;

    fn check(kind: Kind, data: &[u8]) -> Result<(), String> {
        let s = Sample {
            head: data,
            tail: data,
            size: data.len() as u64,
        };
        let mut read = |off: u64, buf: &mut [u8]| {
            let off = off as usize;
            if off + buf.len() > data.len() {
                return false;
            }
            buf.copy_from_slice(&data[off..off + buf.len()]);
            true
        };
        check_structure(kind, &s, &mut read)
    }

    #[test]
    fn a_jpeg_padded_with_zeros_after_its_end_is_whole_and_one_cut_short_is_not() {
        let mut jpeg =
            b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00\xff\xda\x00\x08"
                .to_vec();
        jpeg.extend((0..20_000u32).map(|i| (i * 7 % 251) as u8 | 1));
        jpeg.extend_from_slice(b"\xff\xd9");
        assert_eq!(check(Kind::Jpeg, &jpeg), Ok(()));
        let mut padded = jpeg.clone();
        padded.resize(60_000, 0);
        assert_eq!(check(Kind::Jpeg, &padded), Ok(()));
        let cut = &jpeg[..jpeg.len() - 2];
        assert!(check(Kind::Jpeg, cut).is_err());
        let mut cut_then_padded = cut.to_vec();
        cut_then_padded.resize(60_000, 0);
        assert!(check(Kind::Jpeg, &cut_then_padded).is_err());
    }

    fn png() -> Vec<u8> {
        let mut v = b"\x89PNG\r\n\x1a\n".to_vec();
        for (ty, data) in [
            (&b"IHDR"[..], &[0u8, 0, 0, 1, 0, 0, 0, 1, 8, 0, 0, 0, 0][..]),
            (b"IEND", &[]),
        ] {
            v.extend_from_slice(&(data.len() as u32).to_be_bytes());
            let mut body = ty.to_vec();
            body.extend_from_slice(data);
            v.extend_from_slice(&body);
            v.extend_from_slice(&crc32fast::hash(&body).to_be_bytes());
        }
        v
    }

    #[test]
    fn a_valid_png_passes_and_a_flipped_byte_fails() {
        let mut p = png();
        assert_eq!(check(Kind::Png, &p), Ok(()));
        p[20] ^= 0x55;
        assert!(check(Kind::Png, &p).is_err());
    }

    #[test]
    fn text_with_every_other_16_bytes_encrypted_is_not_text() {
        let text: Vec<u8> = b"Quarterly report: revenue grew in all regions. "
            .iter()
            .cycle()
            .take(8192)
            .copied()
            .collect();
        assert!(text_share(&text) > 0.99);
        let mut x = text.clone();
        let mut seed = 7u32;
        for (i, b) in x.iter_mut().enumerate() {
            if (i / 16) % 2 == 1 {
                seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12345);
                *b = (seed >> 16) as u8;
            }
        }
        assert!(text_share(&x) < 0.85, "{}", text_share(&x));
        assert!(check(Kind::Text, &x).is_err());
    }

    #[test]
    fn extensions_and_magic() {
        assert_eq!(extension("a/b/Report.DOCX"), "docx");
        assert_eq!(extension("a/.bashrc"), "");
        assert_eq!(extension("x.tar.gz"), "gz");
        assert_eq!(kind_for_extension("docx"), Some(Kind::Zip));
        assert_eq!(sniff(b"\x7fELF\x02\x01"), Some(Kind::Elf));
        assert_eq!(sniff(&[0x1f, 0x8b, 8, 0]), Some(Kind::Gzip));
        assert_eq!(sniff(&[0x00, 0x9f, 0x31, 0xee]), None);
    }

    #[test]
    fn sqlite_header_checks() {
        let mut db = vec![0u8; 4096];
        db[..16].copy_from_slice(b"SQLite format 3\0");
        db[16..18].copy_from_slice(&1024u16.to_be_bytes());
        db[18] = 1;
        db[19] = 1;
        db[21..24].copy_from_slice(&[64, 32, 32]);
        db[100] = 0x0d;
        assert_eq!(check(Kind::Sqlite, &db), Ok(()));
        db[100] = 0x77;
        assert!(check(Kind::Sqlite, &db).is_err());
    }

    fn noise(n: usize) -> Vec<u8> {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    fn words(n: usize) -> Vec<u8> {
        b"invoice total ledger the report "
            .iter()
            .copied()
            .cycle()
            .take(n)
            .collect()
    }

    #[test]
    fn gzip_must_inflate_not_just_start_with_its_magic() {
        use std::io::Write;
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&words(100_000)).unwrap();
        let gz = gz.finish().unwrap();
        assert_eq!(check(Kind::Gzip, &gz), Ok(()));
        // Cut short: still fine (a sample ends somewhere).
        assert_eq!(check(Kind::Gzip, &gz[..gz.len() / 2]), Ok(()));
        // The magic bytes in front of random bytes (ciphertext).
        let fake = [&[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3][..], &noise(20_000)].concat();
        assert!(check(Kind::Gzip, &fake).is_err());
    }

    /// A ZIP of one entry, deflated, with its central directory.
    fn zip_of(name: &[u8], data: &[u8]) -> Vec<u8> {
        zip_with(&[(name, data)])
    }

    /// A ZIP of these entries, deflated, with its central directory.
    fn zip_with(entries: &[(&[u8], &[u8])]) -> Vec<u8> {
        use std::io::Write;
        let header = |sig: &[u8], name: &[u8], data: &[u8], packed: usize, local: u32| {
            let mut h = sig.to_vec();
            let central = local != u32::MAX;
            if central {
                h.extend_from_slice(&20u16.to_le_bytes());
            }
            h.extend_from_slice(&20u16.to_le_bytes());
            h.extend_from_slice(&0u16.to_le_bytes());
            h.extend_from_slice(&8u16.to_le_bytes());
            h.extend_from_slice(&[0; 4]);
            h.extend_from_slice(&crc32fast::hash(data).to_le_bytes());
            h.extend_from_slice(&(packed as u32).to_le_bytes());
            h.extend_from_slice(&(data.len() as u32).to_le_bytes());
            h.extend_from_slice(&(name.len() as u16).to_le_bytes());
            h.extend_from_slice(&0u16.to_le_bytes());
            if central {
                // Comment length, disk, internal and external attributes.
                h.extend_from_slice(&[0; 10]);
                h.extend_from_slice(&local.to_le_bytes());
            }
            h.extend_from_slice(name);
            h
        };
        let (mut z, mut cd) = (Vec::new(), Vec::new());
        for (name, data) in entries {
            let mut d = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::fast());
            d.write_all(data).unwrap();
            let packed = d.finish().unwrap();
            let local = z.len() as u32;
            z.extend_from_slice(&header(b"PK\x03\x04", name, data, packed.len(), u32::MAX));
            z.extend_from_slice(&packed);
            cd.extend_from_slice(&header(b"PK\x01\x02", name, data, packed.len(), local));
        }
        let cd_at = z.len() as u32;
        z.extend_from_slice(&cd);
        z.extend_from_slice(b"PK\x05\x06");
        z.extend_from_slice(&[0; 4]);
        z.extend_from_slice(&(entries.len() as u16).to_le_bytes());
        z.extend_from_slice(&(entries.len() as u16).to_le_bytes());
        z.extend_from_slice(&(cd.len() as u32).to_le_bytes());
        z.extend_from_slice(&cd_at.to_le_bytes());
        z.extend_from_slice(&0u16.to_le_bytes());
        z
    }

    #[test]
    fn a_zip_rewritten_over_random_bytes_with_true_checksums_fails() {
        let z = zip_with(&[
            (b"[Content_Types].xml", &noise(3000)),
            (b"word/document.xml", &noise(20_000)),
        ]);
        let why = check(Kind::Zip, &z).unwrap_err();
        assert!(why.contains("no text"), "{why}");
        // Random bytes under names that do not say text are fine (media).
        let media = zip_with(&[(b"word/media/image1.png", &noise(20_000))]);
        assert_eq!(check(Kind::Zip, &media), Ok(()));
    }

    #[test]
    fn a_zip_behind_a_launcher_script_passes_and_one_whose_head_was_encrypted_does_not() {
        let z = zip_with(&[
            (b"META-INF/MANIFEST.MF", &words(400)),
            (b"a.class", &words(5000)),
        ]);
        let stub = b"#!/bin/sh\nexec java -jar \"$0\" \"$@\"\n".to_vec();
        // As `cat stub app.jar` leaves it: offsets count from the ZIP.
        let cat = [stub.clone(), z.clone()].concat();
        assert_eq!(check(Kind::Zip, &cat), Ok(()));
        // As `zip -A` leaves it: offsets count from the file's start.
        let mut adjusted = cat.clone();
        let shift = stub.len() as u32;
        let bump = |v: &mut Vec<u8>, at: usize| {
            let x = u32::from_le_bytes(v[at..at + 4].try_into().unwrap()) + shift;
            v[at..at + 4].copy_from_slice(&x.to_le_bytes());
        };
        let cds: Vec<usize> = (0..adjusted.len() - 4)
            .filter(|&i| &adjusted[i..i + 4] == b"PK\x01\x02")
            .collect();
        for at in cds {
            bump(&mut adjusted, at + 42);
        }
        let eocd = adjusted.len() - 22;
        bump(&mut adjusted, eocd + 16);
        assert_eq!(check(Kind::Zip, &adjusted), Ok(()));
        // The first bytes encrypted, the end intact.
        let mut head = z.clone();
        head[..64].copy_from_slice(&noise(64));
        assert!(check(Kind::Zip, &head).is_err());
    }

    #[test]
    fn a_zip_whose_entries_are_all_password_protected_is_locked() {
        let mut z = zip_with(&[(b"report.docx", &noise(5000)), (b"notes.txt", &words(900))]);
        let plain = z.clone();
        let s = |d: &[u8]| {
            let mut read = |off: u64, buf: &mut [u8]| {
                let off = off as usize;
                off + buf.len() <= d.len() && {
                    buf.copy_from_slice(&d[off..off + buf.len()]);
                    true
                }
            };
            zip_locked(
                &Sample {
                    head: d,
                    tail: d,
                    size: d.len() as u64,
                },
                &mut read,
            )
        };
        assert!(!s(&plain));
        for sig in [&b"PK\x03\x04"[..], b"PK\x01\x02"] {
            let flag = if sig == b"PK\x03\x04" { 6 } else { 8 };
            let at: Vec<usize> = (0..z.len() - 4).filter(|&i| &z[i..i + 4] == sig).collect();
            for i in at {
                z[i + flag] |= 1;
            }
        }
        assert!(s(&z));
        assert_eq!(check(Kind::Zip, &z), Ok(()));
    }

    fn facts(d: &[u8]) -> Option<ZipEntries> {
        let mut read = |off: u64, buf: &mut [u8]| {
            let off = off as usize;
            off + buf.len() <= d.len() && {
                buf.copy_from_slice(&d[off..off + buf.len()]);
                true
            }
        };
        let s = Sample {
            head: d,
            tail: d,
            size: d.len() as u64,
        };
        zip_facts(&s, &mut read)
    }

    #[test]
    fn ciphertext_in_front_of_a_small_zip_or_as_one_long_token_in_a_part_fails() {
        let tiny = zip_with(&[(b"README.txt", &words(200))]);
        let fake = [noise(30_000), tiny.clone()].concat();
        assert!(check(Kind::Zip, &fake).is_err());
        let blob: String = noise(3000).iter().map(|b| format!("{b:02x}")).collect();
        let doc = format!("<x>{blob}</x>");
        let z = zip_with(&[(b"word/document.xml", doc.as_bytes())]);
        let why = check(Kind::Zip, &z).unwrap_err();
        assert!(why.contains("base64 or hex"), "{why}");
        // The same run in a part that is not the document's is data.
        let z = zip_with(&[(b"customXml/item1.xml", doc.as_bytes())]);
        assert_eq!(check(Kind::Zip, &z), Ok(()));
    }

    #[test]
    fn a_zip_mostly_locked_is_locked_and_parts_are_listed() {
        let mut z = zip_with(&[
            (b"report.docx", &noise(50_000)),
            (b"README.txt", &words(100)),
        ]);
        // Lock the first entry only (local and central headers).
        let local = z.windows(4).position(|w| w == b"PK\x03\x04").unwrap();
        z[local + 6] |= 1;
        let central = z.windows(4).position(|w| w == b"PK\x01\x02").unwrap();
        z[central + 8] |= 1;
        assert!(facts(&z).unwrap().locked());
        let office = zip_with(&[
            (b"[Content_Types].xml", &words(300)),
            (b"word/document.xml", &words(3000)),
        ]);
        let f = facts(&office).unwrap();
        assert!(!f.locked());
        assert!(f.parts.iter().any(|p| p == "word/document.xml"));
        assert_eq!(office_part("docx"), Some("word/document.xml"));
    }

    #[test]
    fn an_opendocument_saved_with_a_password_is_locked_not_broken() {
        let manifest = b"<manifest:manifest><manifest:file-entry manifest:full-path=\"content.xml\"><manifest:encryption-data manifest:checksum-type=\"SHA1\"/></manifest:file-entry></manifest:manifest>";
        let z = zip_with(&[
            (b"mimetype", b"application/vnd.oasis.opendocument.text"),
            (b"content.xml", &noise(20_000)),
            (b"styles.xml", &noise(8_000)),
            (b"META-INF/manifest.xml", manifest),
        ]);
        assert_eq!(check(Kind::Zip, &z), Ok(()));
        assert!(facts(&z).unwrap().locked());
        // Without the manifest's word, its parts are no text: broken.
        let plain = String::from_utf8_lossy(manifest).replace("encryption-data", "checksum-only");
        let z = zip_with(&[
            (b"content.xml", &noise(20_000)),
            (b"META-INF/manifest.xml", plain.as_bytes()),
        ]);
        assert!(check(Kind::Zip, &z).is_err());
    }

    #[test]
    fn a_zip_whose_later_entry_alone_was_encrypted_fails() {
        let types = b"[Content_Types].xml";
        let doc = words(40_000);
        let z = zip_with(&[(types, &words(3000)), (b"word/document.xml", &doc)]);
        assert_eq!(check(Kind::Zip, &z), Ok(()));
        // The document's part overwritten with random bytes at its place,
        // the first entry and every header kept.
        let second = z
            .windows(4)
            .skip(1)
            .position(|w| w == b"PK\x03\x04")
            .unwrap()
            + 1;
        let start = second + 30 + "word/document.xml".len();
        let end = z.windows(4).position(|w| w == b"PK\x01\x02").unwrap();
        let mut bad = z.clone();
        bad[start..end].copy_from_slice(&noise(end - start));
        assert!(check(Kind::Zip, &bad).is_err());
        // Only the end of its data: it no longer inflates to its CRC.
        let mut tail = z.clone();
        let from = end - (end - start) / 4;
        tail[from..end].copy_from_slice(&noise(end - from));
        assert!(check(Kind::Zip, &tail).is_err());
    }

    #[test]
    fn a_zip_whose_entries_were_encrypted_behind_intact_headers_fails() {
        let name = b"[Content_Types].xml";
        let mut z = zip_of(name, &words(5000));
        assert_eq!(check(Kind::Zip, &z), Ok(()));
        // The entry's data overwritten with random bytes, every header
        // and directory kept.
        let start = 30 + name.len();
        let end = z.windows(4).position(|w| w == b"PK\x01\x02").unwrap();
        z[start..end].copy_from_slice(&noise(end - start));
        assert!(check(Kind::Zip, &z).is_err());
    }

    #[test]
    fn utf16_text_is_text() {
        let text: String = (0..200).map(|i| format!("line {i}\r\n")).collect();
        let le: Vec<u8> = text.encode_utf16().flat_map(u16::to_le_bytes).collect();
        let bom = [&[0xff, 0xfe][..], &le].concat();
        let be: Vec<u8> = text.encode_utf16().flat_map(u16::to_be_bytes).collect();
        for t in [&le, &bom, &be] {
            assert_eq!(check(Kind::Text, t), Ok(()));
        }
        // Random bytes with zeros every other byte are no text.
        let fake: Vec<u8> = noise(8192).iter().flat_map(|&b| [b, 0]).collect();
        assert!(check(Kind::Text, &fake).is_err());
    }
}
