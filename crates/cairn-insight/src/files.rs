//! File-level signals of one snapshot against its parent: what the diff
//! says (added, modified, deleted, renamed) and what the changed files'
//! bytes say (encrypted in place, broken structure, zeroed, ransom notes,
//! files renamed to one new extension).
//!
//! A modified file is compared with its previous version position by
//! position: the bytes that changed are what an attack wrote. Their
//! entropy against the entropy of the bytes they replaced catches
//! encryption even when only the head of a file or one span in three is
//! encrypted — whole-file entropy would barely move.

use crate::content::{self, Kind, Sample};
use crate::notes;
use cairn_guest::diff::Diff;
use cairn_guest::model::ByPath;
use cairn_guest::{FileEntry, FileKind, Filesystem};
use cairn_vault::SnapshotDisk;
use cairn_vault::entropy::shannon_entropy;
use cairn_vault::units::bytes as human;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};

/// How much of each version of a modified file is compared: enough for
/// the entropy of what changed, in every file.
const COMPARE_BYTES: u64 = 256 << 10;
/// How much of the head of a new file is sampled.
const HEAD_BYTES: u64 = 256 << 10;
/// Head and tail read to check a file's structure.
const SAMPLE_BYTES: u64 = 64 << 10;
const TAIL_BYTES: u64 = 64 << 10;
/// Total bytes read for analysis per snapshot; files beyond are counted
/// as not analysed.
const BUDGET_BYTES: u64 = 2 << 30;
/// Fewer changed bytes than this say nothing about their entropy.
const MIN_CHANGED: u64 = 256;
/// Entropy is measured in windows of this size.
const WINDOW: usize = 4096;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Damage {
    /// Changed in place with high-entropy bytes over low-entropy ones.
    EncryptedInPlace,
    /// A typed file whose structure no longer holds.
    BrokenStructure,
    /// Overwritten with zeros.
    Zeroed,
    /// A new file of high entropy and no known type (often the encrypted
    /// copy of a deleted original).
    EncryptedNew,
    RansomNote,
    /// Saved with a password by its own application (an Office file in
    /// Office's encrypted container, an OpenDocument file whose manifest
    /// declares its encryption): what owners do to a few files, and what
    /// an attacker could imitate on many.
    Protected,
}

impl Damage {
    pub fn describe(self) -> &'static str {
        match self {
            Damage::EncryptedInPlace => "encrypted in place",
            Damage::BrokenStructure => "structure broken",
            Damage::Zeroed => "zeroed",
            Damage::EncryptedNew => "new encrypted-looking file",
            Damage::RansomNote => "ransom note",
            Damage::Protected => "password-protected",
        }
    }
}

/// One damaged or attack-created file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Finding {
    /// Path in this snapshot (`/`-rooted).
    pub path: String,
    pub damage: Damage,
    pub detail: String,
    /// The file this one replaced (renamed from, or the deleted original of
    /// an encrypted copy), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
    /// A file new at its path (not one changed): by itself it destroyed
    /// nothing, unless it replaced an original (`origin`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub added: bool,
}

impl Finding {
    /// A new file, encrypted-looking or not matching its type, that
    /// replaced no original (none renamed to it, none deleted beside it):
    /// by itself it destroyed nothing — a download cut short, a cloned
    /// project's test vectors, someone's own encrypted archive.
    pub fn replaced_nothing(&self) -> bool {
        self.added
            && self.origin.is_none()
            && matches!(self.damage, Damage::EncryptedNew | Damage::BrokenStructure)
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ExtensionCount {
    pub extension: String,
    pub files: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct FileSignals {
    /// Regular files in the snapshot.
    pub files: u64,
    pub added: u64,
    pub modified: u64,
    pub deleted: u64,
    pub renamed: u64,
    /// Users' files (under /home, /root, /srv, /Users; caches and
    /// version-control stores left out) in the parent, and how many of
    /// them are gone: a wiper empties those, an upgrade or `git gc`
    /// deletes elsewhere.
    #[serde(default)]
    pub user_files_before: u64,
    #[serde(default)]
    pub user_files_deleted: u64,
    /// Path hashes (see [`path_hash`]) of those deleted users' files.
    #[serde(default)]
    pub user_deleted: Vec<u64>,
    pub analysed_files: u64,
    pub analysed_bytes: u64,
    /// Changed files left out because the read budget ran out.
    pub unanalysed_files: u64,
    pub findings: Vec<Finding>,
    /// Files renamed (or replaced by a copy) with one new extension added,
    /// grouped by that extension — excluding real archives (`.gz` of a log).
    pub extension_churn: Vec<ExtensionCount>,
    /// Extensions no file had in the parent, with how many new files have them.
    pub new_extensions: Vec<ExtensionCount>,
    /// The most folders one ransom note's text was dropped in.
    pub note_copies: u64,
    /// Changed files whose high entropy their type explains (archives,
    /// media, compressed files that check out).
    pub dense_ok_files: u64,
    /// Hashes of paths that changed or went away, so damage found earlier
    /// can be seen as repaired.
    pub touched: Vec<u64>,
    /// Hashes of the changed files whose new version still does not check
    /// out as what it claims to be (or was not analysed, or was only
    /// renamed; under their old names too): damage found in them earlier
    /// stays.
    #[serde(default)]
    pub unsound: Vec<u64>,
}

impl FileSignals {
    pub fn count(&self, d: Damage) -> u64 {
        self.findings.iter().filter(|f| f.damage == d).count() as u64
    }
}

/// A short, stable hash of a path (for `touched`).
pub fn path_hash(path: &str) -> u64 {
    let h = blake3::hash(path.as_bytes());
    u64::from_le_bytes(h.as_bytes()[..8].try_into().expect("8 bytes"))
}

/// One side of the comparison.
pub struct Side<'a> {
    pub fs: &'a dyn Filesystem,
    pub entries: &'a [FileEntry],
    /// The disk under `fs`, for disk snapshots: its 64 KiB block digests
    /// say which parts of a file changed in place without reading it.
    pub disk: Option<&'a SnapshotDisk>,
}

/// Reads for analysis, against one budget shared by the threads that
/// analyse files at once.
struct Reader {
    spent: AtomicU64,
}

impl Reader {
    /// Reads up to `len` bytes at `offset`, short at the end of the file;
    /// `None` when the budget is spent or the read fails.
    fn read(&self, fs: &dyn Filesystem, e: &FileEntry, offset: u64, len: u64) -> Option<Vec<u8>> {
        let len = len.min(e.size.saturating_sub(offset));
        if self.spent.fetch_add(len, Ordering::Relaxed) + len > BUDGET_BYTES {
            return None;
        }
        let mut buf = vec![0u8; len as usize];
        let n = cairn_guest::read_full(fs, e, offset, &mut buf).ok()?;
        buf.truncate(n);
        Some(buf)
    }

    /// Head and tail of a file.
    fn sample(&self, fs: &dyn Filesystem, e: &FileEntry, head: u64) -> Option<(Vec<u8>, Vec<u8>)> {
        let h = self.read(fs, e, 0, head)?;
        let t = if e.size <= h.len() as u64 {
            h[h.len().saturating_sub(TAIL_BYTES as usize)..].to_vec()
        } else {
            let from = e.size.saturating_sub(TAIL_BYTES);
            self.read(fs, e, from, TAIL_BYTES)?
        };
        Some((h, t))
    }
}

/// The entropy `n` random bytes would show, less a margin: small samples
/// of ciphertext measure below 8 bits per byte.
fn encrypted_threshold(n: u64) -> f64 {
    (8.0 - 184.0 / n as f64 - 0.4).max(6.5)
}

/// The bytes of `now` that differ from `was` at the same place, and the
/// bytes they replaced. Most of two versions' compared bytes are equal:
/// equal runs are passed over eight bytes at a time.
fn differing_bytes(was: &[u8], now: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let n = was.len().min(now.len());
    let (mut a_out, mut b_out) = (Vec::new(), Vec::new());
    let mut push_differing = |a: &[u8], b: &[u8]| {
        for (&x, &y) in a.iter().zip(b) {
            if x != y {
                a_out.push(x);
                b_out.push(y);
            }
        }
    };
    let (a8, b8) = (was[..n].chunks_exact(8), now[..n].chunks_exact(8));
    let (ra, rb) = (a8.remainder(), b8.remainder());
    for (a, b) in a8.zip(b8) {
        if a != b {
            push_differing(a, b);
        }
    }
    push_differing(ra, rb);
    (a_out, b_out)
}

/// Whether every page of a valid SQLite database that changed in the
/// compared `ranges` (file offset, length; their bytes one after the other
/// in `was` and `now`) is still a SQLite page: a database's own writes,
/// however random the values they store look. `head`: the new version's
/// first bytes (its header).
fn sqlite_pages_intact(
    ranges: &[(u64, u64)],
    was: &[u8],
    now: &[u8],
    head: &[u8],
    size: u64,
) -> bool {
    let page = match head.get(16..18).map(|b| u16::from_be_bytes([b[0], b[1]])) {
        Some(1) => 65536,
        Some(p) => p as usize,
        None => return false,
    };
    let pages = size / page.max(1) as u64;
    let (mut changed, mut intact, mut at) = (0, 0, 0usize);
    for &(off, len) in ranges {
        let end = (at + len as usize).min(was.len()).min(now.len());
        let (c, i) = content::sqlite_changed_pages(page, pages, off, &was[at..end], &now[at..end]);
        changed += c;
        intact += i;
        at = end;
    }
    changed > 0 && intact == changed
}

fn window_entropy(data: &[u8]) -> Vec<f64> {
    data.chunks(WINDOW)
        .filter(|w| w.len() >= 512)
        .map(|w| shannon_entropy(w) as f64)
        .collect()
}

/// Runs `check` on a file's head and tail, with a reader for the rest of
/// it that stays inside the file.
fn with_sample<T>(
    fs: &dyn Filesystem,
    e: &FileEntry,
    head: &[u8],
    tail: &[u8],
    check: impl FnOnce(&Sample, &mut content::ReadAt) -> T,
) -> T {
    let sample = Sample {
        head,
        tail,
        size: e.size,
    };
    let mut read_at = |off: u64, buf: &mut [u8]| {
        off.checked_add(buf.len() as u64)
            .is_some_and(|end| end <= e.size)
            && fs.read_at(e, off, buf).is_ok_and(|n| n == buf.len())
    };
    check(&sample, &mut read_at)
}

fn structure(
    kind: Kind,
    fs: &dyn Filesystem,
    e: &FileEntry,
    head: &[u8],
    tail: &[u8],
) -> Result<(), String> {
    with_sample(fs, e, head, tail, |s, r| {
        content::check_structure(kind, s, r)
    })
}

/// A file's ZIP entries as checked (`None` when it is no ZIP that checks
/// out).
fn zip_facts(
    fs: &dyn Filesystem,
    e: &FileEntry,
    head: &[u8],
    tail: &[u8],
) -> Option<content::ZipEntries> {
    with_sample(fs, e, head, tail, content::zip_facts)
}

/// The type a file's head announces when the file also checks out as it,
/// and for a ZIP its entries as checked (one walk serves both).
fn valid_kind(
    kind: Option<Kind>,
    fs: &dyn Filesystem,
    e: &FileEntry,
    head: &[u8],
    tail: &[u8],
) -> (Option<Kind>, Option<content::ZipEntries>) {
    match kind {
        Some(Kind::Zip) => {
            let zip = zip_facts(fs, e, head, tail);
            (zip.is_some().then_some(Kind::Zip), zip)
        }
        k => (k.filter(|&k| structure(k, fs, e, head, tail).is_ok()), None),
    }
}

/// Office's encrypted container: a compound file holding an
/// `EncryptionInfo` stream.
fn office_encrypted(head: &[u8]) -> bool {
    const CFB: &[u8] = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1";
    let name: Vec<u8> = "EncryptionInfo"
        .encode_utf16()
        .flat_map(u16::to_le_bytes)
        .collect();
    head.starts_with(CFB) && head.windows(name.len()).any(|w| w == name.as_slice())
}

/// The type a file should have: what its old content announced, else its
/// extension.
fn expected_kind(path: &str, head: &[u8]) -> Option<Kind> {
    content::sniff(head).or_else(|| content::kind_for_extension(&content::extension(path)))
}

struct Analysis<'a> {
    old: &'a Side<'a>,
    new: &'a Side<'a>,
    reader: Reader,
}

/// What looking at one changed or added file found.
#[derive(Default)]
struct Looked {
    /// Bytes read to analyse it; `None` when it could not be analysed
    /// (budget spent, read failed).
    analysed: Option<u64>,
    finding: Option<Finding>,
    /// Its high entropy is explained by a type that checks out.
    dense_ok: bool,
    /// Its new version does not check out as the type its name or
    /// content claims (nor as any other).
    unsound: bool,
    /// A ransom note: its text's hash and its folder.
    note: Option<([u8; 32], String)>,
}

impl Looked {
    fn unanalysed() -> Self {
        Looked::default()
    }

    fn analysed(bytes: u64) -> Self {
        Looked {
            analysed: Some(bytes),
            ..Default::default()
        }
    }

    fn found(mut self, f: Finding) -> Self {
        self.finding = Some(f);
        self
    }
}

/// One file to look at.
enum Job<'e> {
    /// Changed in place; `origin` is the path it was renamed from.
    Modified {
        path: &'e str,
        old: &'e FileEntry,
        new: &'e FileEntry,
        origin: Option<String>,
    },
    Added {
        path: &'e str,
        new: &'e FileEntry,
    },
}

impl Analysis<'_> {
    /// The parts of a file to compare between versions: where its content
    /// stayed in place, only the 64 KiB blocks whose digests differ; else
    /// its head. File-relative (offset, length) runs, at most
    /// `COMPARE_BYTES` in all.
    fn compare_ranges(&self, o: &FileEntry, n: &FileEntry) -> Vec<(u64, u64)> {
        let same_place = matches!((&o.extents, &n.extents), (Some(a), Some(b)) if a == b);
        let (Some(od), Some(nd), true) = (self.old.disk, self.new.disk, same_place) else {
            return vec![(0, n.size.min(COMPARE_BYTES))];
        };
        n.changed_runs(&od.map().blocks, &nd.map().blocks, u64::MAX, COMPARE_BYTES)
            .into_iter()
            .map(|(start, end)| (start, end - start))
            .collect()
    }

    /// A file changed in place (same path or renamed with its inode).
    fn modified(&self, path: &str, o: &FileEntry, n: &FileEntry, origin: Option<String>) -> Looked {
        let (old_fs, new_fs) = (self.old.fs, self.new.fs);
        let Some((nh, nt)) = self.reader.sample(new_fs, n, SAMPLE_BYTES) else {
            return Looked::unanalysed();
        };
        let mut was_bytes = Vec::new();
        let mut now_bytes = Vec::new();
        let ranges = self.compare_ranges(o, n);
        for &(off, len) in &ranges {
            match (
                self.reader.read(old_fs, o, off, len),
                self.reader.read(new_fs, n, off, len),
            ) {
                (Some(a), Some(b)) => {
                    was_bytes.extend_from_slice(&a);
                    now_bytes.extend_from_slice(&b);
                }
                _ => return Looked::unanalysed(),
            }
        }
        let mut looked = Looked::analysed((was_bytes.len() + now_bytes.len()) as u64);

        // The bytes that changed, and the bytes they replaced.
        let (was, now) = differing_bytes(&was_bytes, &now_bytes);
        let zeros = now.iter().filter(|&&b| b == 0).count() as u64;
        let changed = now.len() as u64;
        let (wo, wn) = (window_entropy(&was_bytes), window_entropy(&now_bytes));
        let jumped = wo.iter().zip(&wn).filter(|(a, b)| **b - **a >= 1.5).count();
        let new_kind = content::sniff(&nh);
        // The type the new bytes announce, when they also check out as it
        // (checked once; the structure checks below reuse it).
        // (For a ZIP, also what it holds: used below.)
        let (new_valid, zip_now) = valid_kind(new_kind, new_fs, n, &nh, &nt);
        let valid_as = |k: Kind| {
            Some(k) == new_valid
                || (Some(k) != new_kind && structure(k, new_fs, n, &nh, &nt).is_ok())
        };
        let dense_ok = new_valid.is_some_and(Kind::dense);
        looked.dense_ok = dense_ok;
        let finding = |damage, detail: String| Finding {
            path: path.to_string(),
            damage,
            detail,
            origin: origin.clone(),
            added: false,
        };
        // (A valid program or archive has zero padding of its own.)
        if changed >= MIN_CHANGED
            && zeros as f64 >= 0.9 * changed as f64
            && new_valid.is_none_or(|k| k == Kind::Text)
        {
            return looked.found(finding(
                Damage::Zeroed,
                format!("{} overwritten with zeros", human(zeros)),
            ));
        }
        // Emptied: a wiper truncates what it cannot be bothered to
        // overwrite. Logs are emptied by their rotation.
        if o.size >= 1024 && n.size == 0 && !content::is_log(path) {
            return looked.found(finding(
                Damage::Zeroed,
                format!("emptied (was {})", human(o.size)),
            ));
        }
        // Encrypted with OpenPGP and armoured as text: base64, too few
        // bits per byte to look random. Nothing saves a document over
        // itself that way.
        const PGP: &[u8] = b"-----BEGIN PGP MESSAGE-----";
        if nh.starts_with(PGP)
            && self
                .reader
                .sample(old_fs, o, SAMPLE_BYTES)
                .is_some_and(|(oh, _)| !oh.starts_with(PGP))
        {
            return looked.found(finding(
                Damage::EncryptedInPlace,
                format!("{} replaced by an OpenPGP-encrypted message", human(n.size)),
            ));
        }
        // A ZIP (an Office document, an archive) that changed what it is:
        // saved with a password by its application, locked entry by
        // entry (what ZIP-based lockers such as Qlocker leave), or left
        // without the part that holds the document.
        let was_zip = || {
            self.reader
                .sample(old_fs, o, SAMPLE_BYTES)
                .filter(|(oh, _)| content::sniff(oh) == Some(Kind::Zip))
                .and_then(|(oh, ot)| zip_facts(old_fs, o, &oh, &ot))
        };
        let ext = content::extension(path);
        if office_encrypted(&nh) && was_zip().is_some() {
            return looked.found(finding(
                Damage::Protected,
                "saved with a password in Office's encrypted container".into(),
            ));
        }
        if let Some(now) = &zip_now {
            let manifest = now.parts.iter().any(|p| p == "meta-inf/manifest.xml");
            if now.locked()
                && let Some(was) = was_zip().filter(|w| !w.locked())
            {
                let odf = manifest && was.parts.iter().any(|p| p == "content.xml");
                return looked.found(if odf {
                    finding(
                        Damage::Protected,
                        "saved with a password (OpenDocument encryption)".into(),
                    )
                } else {
                    finding(
                        Damage::EncryptedInPlace,
                        format!(
                            "{}: was an open ZIP, now its entries are encrypted",
                            human(n.size)
                        ),
                    )
                });
            }
            if let Some(core) = content::office_part(&ext)
                && !now.parts.iter().any(|p| p == core)
                && was_zip().is_some_and(|w| w.parts.iter().any(|p| p == core))
            {
                return looked.found(finding(
                    Damage::BrokenStructure,
                    format!("its document part {core} is gone"),
                ));
            }
        }
        // Text whose words are gone, re-encoded as one long run of base64
        // or hex: ciphertext written out as text.
        if n.size >= 1024
            && content::encoded_blob(&nh)
            && self
                .reader
                .sample(old_fs, o, SAMPLE_BYTES)
                .is_some_and(|(oh, _)| content::has_words(&oh))
        {
            return looked.found(finding(
                Damage::EncryptedInPlace,
                format!("{}: its words replaced by base64 or hex", human(n.size)),
            ));
        }
        let (e_was, e_now) = (shannon_entropy(&was) as f64, shannon_entropy(&now) as f64);
        // A compressed type that checks out explains high entropy, unless
        // the file kept its size while its bytes jumped from plain to
        // random: ciphertext behind a kept header, or behind the magic of
        // a compressed type, does that; a re-save with compression does
        // not keep the size.
        let kept_format = (dense_ok && !(o.size == n.size && e_now - e_was >= 2.0))
            || (new_valid == Some(Kind::Sqlite)
                && sqlite_pages_intact(&ranges, &was_bytes, &now_bytes, &nh, n.size));
        if changed >= MIN_CHANGED
            && e_now >= encrypted_threshold(changed)
            && e_now - e_was >= 1.0
            && !kept_format
        {
            return looked.found(finding(
                Damage::EncryptedInPlace,
                format!(
                    "{} of {} rewritten at {:.2} bits/byte (was {:.2}); {} of {} windows jumped",
                    human(changed),
                    human(n.size),
                    e_now,
                    e_was,
                    jumped,
                    wn.len()
                ),
            ));
        }
        // Structure: only when the new version does not check out as what
        // it claims (or as any type) is the old version read to see what
        // it was.
        let by_ext = content::kind_for_extension(&content::extension(path));
        let claimed = by_ext.or(new_kind);
        if claimed.is_some_and(valid_as) {
            return looked;
        }
        // Damage found in it before is not repaired by this change: a
        // locker run twice rewrites ciphertext with ciphertext, which
        // shows no jump in entropy and no type lost. (A file that claims
        // no type cannot be told unsound: an encrypted database of an
        // application writes random bytes every day.)
        looked.unsound = claimed.is_some() && new_valid.is_none();
        let Some((oh, ot)) = self.reader.sample(old_fs, o, SAMPLE_BYTES) else {
            return looked;
        };
        let kind = expected_kind(path, &oh);
        // A file that became another valid type (a script replaced by a
        // binary in an upgrade) is not broken; a document that became a
        // container (ciphertext wrapped in a valid gzip, ZIP or PDF) or
        // plain text (a wiper's filler) is.
        let document = kind.is_some_and(|k| matches!(k, Kind::Text | Kind::Pdf | Kind::Zip));
        let other_valid_type = new_valid
            .is_some_and(|nk| Some(nk) != kind && !(document && (nk.dense() || nk == Kind::Text)));
        if let Some(k) = kind
            && !other_valid_type
            && structure(k, old_fs, o, &oh, &ot).is_ok()
            && let Err(why) = structure(k, new_fs, n, &nh, &nt)
        {
            return looked.found(finding(
                Damage::BrokenStructure,
                format!("was a valid {k:?} file; now {why}"),
            ));
        }
        looked
    }

    /// `doc.txt.gpg` (or `.pgp`, `.asc`, `.age`) beside a `doc.txt` that
    /// is still there: someone encrypted a copy on purpose (`gpg -c`);
    /// ransomware does not leave the original behind.
    fn encrypted_beside_its_original(&self, path: &str) -> bool {
        let raw = cairn_guest::model::unescape(path.strip_prefix('/').unwrap_or(path));
        [&b".gpg"[..], b".pgp", b".asc", b".age"].iter().any(|ext| {
            raw.strip_suffix(*ext).is_some_and(|original| {
                self.new
                    .entries
                    .binary_search_by(|e| e.path.as_slice().cmp(original))
                    .is_ok_and(|i| self.new.entries[i].kind == FileKind::File)
            })
        })
    }

    /// A file that is new at this path.
    fn added(&self, path: &str, n: &FileEntry) -> Looked {
        let fs = self.new.fs;
        let name = path.rsplit('/').next().unwrap_or(path).to_string();
        let Some((head, tail)) = self.reader.sample(fs, n, HEAD_BYTES) else {
            return Looked::unanalysed();
        };
        let mut looked = Looked::analysed(head.len() as u64);
        let finding = |damage, detail: String| Finding {
            path: path.to_string(),
            damage,
            detail,
            origin: None,
            added: true,
        };
        if n.size <= notes::MAX_NOTE_BYTES
            && content::text_share(&head) >= 0.9
            && let Some(why) = notes::looks_like_note(&name, &head)
        {
            let dir = path
                .rsplit_once('/')
                .map(|(d, _)| d)
                .unwrap_or("")
                .to_string();
            looked.note = Some((*blake3::hash(&head).as_bytes(), dir));
            return looked.found(finding(Damage::RansomNote, why));
        }
        let ext = content::extension(path);
        let magic = content::sniff(&head);
        let (magic_valid, zip) = valid_kind(magic, fs, n, &head, &tail);
        looked.dense_ok = magic_valid.is_some_and(Kind::dense);
        // A new archive whose every entry is encrypted: someone's own (a
        // weak sign alone), or a locker's copy of the file it replaced.
        if zip.is_some_and(|z| z.locked()) {
            return looked.found(finding(
                Damage::EncryptedNew,
                "an archive whose every entry is encrypted".into(),
            ));
        }
        if let Some(k) = content::kind_for_extension(&ext) {
            if Some(k) == magic_valid {
                return looked;
            }
            if let Err(why) = structure(k, fs, n, &head, &tail) {
                return looked.found(finding(
                    Damage::BrokenStructure,
                    format!("not a valid .{ext} file: {why}"),
                ));
            }
            return looked;
        }
        // Random bytes behind a magic that does not check out (the start
        // of a JPEG, a gzip that does not inflate) are no such file. (A
        // cache keeps compressed entries without any header: there such a
        // file counts only when it replaced a deleted original.)
        if magic_valid.is_none() && head.len() >= 1024 {
            let w = window_entropy(&head);
            let high = w.iter().filter(|&&e| e >= 7.2).count();
            let whole = shannon_entropy(&head) as f64;
            if whole >= encrypted_threshold(head.len() as u64)
                && high * 10 >= w.len() * 9
                && !self.encrypted_beside_its_original(path)
            {
                return looked.found(finding(
                    Damage::EncryptedNew,
                    format!("{:.2} bits/byte and no known file type", whole),
                ));
            }
        }
        looked
    }
}

/// The file-level signals of `new` against `old`, given their diff.
pub fn analyse<'a>(old: &Side<'a>, new: &Side<'a>, d: &Diff) -> FileSignals {
    // The diff names files as listings show them.
    let (old_by, new_by) = (ByPath::new(old.entries), ByPath::new(new.entries));
    let is_file = |e: &&FileEntry| e.kind == FileKind::File;
    let a = Analysis {
        old,
        new,
        reader: Reader {
            spent: AtomicU64::new(0),
        },
    };
    let mut out = FileSignals {
        files: new.entries.iter().filter(is_file).count() as u64,
        added: d.added.len() as u64,
        modified: d.modified.len() as u64,
        deleted: d.deleted.len() as u64,
        renamed: d.renamed.len() as u64,
        user_files_before: old
            .entries
            .iter()
            .filter(|e| {
                e.kind == FileKind::File && content::is_user_data(&String::from_utf8_lossy(&e.path))
            })
            .count() as u64,
        ..Default::default()
    };
    out.user_deleted = d
        .deleted
        .iter()
        .filter(|x| content::is_user_data(&x.path))
        .filter(|x| {
            old_by
                .shown(&x.path)
                .is_some_and(|e| e.kind == FileKind::File)
        })
        .map(|x| path_hash(&x.path))
        .collect();
    out.user_files_deleted = out.user_deleted.len() as u64;

    let mut jobs: Vec<Job> = Vec::new();
    for m in &d.modified {
        if let (Some(o), Some(n)) = (old_by.shown(&m.path), new_by.shown(&m.path))
            && o.kind == FileKind::File
        {
            jobs.push(Job::Modified {
                path: &m.path,
                old: o,
                new: n,
                origin: None,
            });
        }
    }
    for r in &d.renamed {
        if let (Some(o), Some(n)) = (old_by.shown(&r.from), new_by.shown(&r.to))
            && o.kind == FileKind::File
            && r.modified
        {
            jobs.push(Job::Modified {
                path: &r.to,
                old: o,
                new: n,
                origin: Some(r.from.clone()),
            });
        }
    }
    for x in &d.added {
        if let Some(n) = new_by.shown(&x.path).filter(|e| e.kind == FileKind::File) {
            jobs.push(Job::Added {
                path: &x.path,
                new: n,
            });
        }
    }
    // Files are looked at in parallel (most of the time goes into decoding
    // the parent's chunks), and their results taken in job order, so the
    // findings come out in the same order every time.
    let mut looked: Vec<Looked> = jobs
        .par_iter()
        .rev()
        .map(|j| match j {
            Job::Modified {
                path,
                old,
                new,
                origin,
            } => a.modified(path, old, new, origin.clone()),
            Job::Added { path, new } => a.added(path, new),
        })
        .collect();
    looked.reverse();
    // Ransom note texts: hash → folders they were found in.
    let mut note_dirs: HashMap<[u8; 32], HashSet<String>> = HashMap::new();
    for (j, l) in jobs.iter().zip(looked) {
        // Not judged sound (or not judged at all, the read budget spent):
        // damage found in it earlier stays, under its old name too.
        if let Job::Modified { path, origin, .. } = j
            && (l.unsound || l.analysed.is_none())
        {
            out.unsound.push(path_hash(path));
            out.unsound.extend(origin.as_deref().map(path_hash));
        }
        match l.analysed {
            Some(bytes) => {
                out.analysed_files += 1;
                out.analysed_bytes += bytes;
            }
            None => out.unanalysed_files += 1,
        }
        out.dense_ok_files += l.dense_ok as u64;
        if let Some((hash, dir)) = l.note {
            note_dirs.entry(hash).or_default().insert(dir);
        }
        out.findings.extend(l.finding);
    }
    out.note_copies = note_dirs
        .values()
        .map(|d| d.len() as u64)
        .max()
        .unwrap_or(0);

    // Encrypted copies name their originals: "x.docx" → "x.docx.locked".
    let deleted: HashSet<&str> = d.deleted.iter().map(|x| x.path.as_str()).collect();
    let origin_of = |p: &str| -> Option<String> {
        let name_at = p.rfind('/').map(|i| i + 1).unwrap_or(0);
        p.match_indices('.')
            .map(|(i, _)| i)
            .filter(|&i| i > name_at)
            .find(|&i| deleted.contains(&p[..i]))
            .map(|i| p[..i].to_string())
    };
    let damaged: HashSet<String> = out.findings.iter().map(|f| f.path.clone()).collect();
    let mut churn: BTreeMap<String, u64> = BTreeMap::new();
    let mut pairs: Vec<(String, String)> = Vec::new();
    for x in &d.added {
        if let Some(o) = origin_of(&x.path) {
            pairs.push((o, x.path.clone()));
        }
    }
    for r in &d.renamed {
        // A file renamed with its bytes unchanged (`x.docx` → `x.docx.old`
        // by a user's script, a tool's backup copy) was not encrypted:
        // a new extension alone is no attack.
        if r.modified
            && r.to.len() > r.from.len()
            && r.to.starts_with(&r.from)
            && r.to.as_bytes()[r.from.len()] == b'.'
        {
            pairs.push((r.from.clone(), r.to.clone()));
        }
    }
    for (from, to) in pairs {
        let ext = content::extension(&to);
        let genuine_archive = content::kind_for_extension(&ext).is_some() && !damaged.contains(&to);
        if !genuine_archive {
            *churn.entry(ext).or_default() += 1;
        }
        if let Some(f) = out
            .findings
            .iter_mut()
            .find(|f| f.path == to && f.origin.is_none())
        {
            f.origin = Some(from);
        }
    }
    out.extension_churn = sorted_counts(churn);

    // Encrypted copies under names of their own (random, or the victim's
    // id) mostly land beside their originals, which the attack deleted: a
    // damaged new file replaces a file deleted from its folder in this
    // snapshot (one of the same extension first). Only an original that
    // was plain counts (text, a known type, low entropy): a cache that
    // evicts compressed entries and writes new ones replaces nothing.
    let mut plain: HashMap<String, bool> = HashMap::new();
    let mut was_plain = |p: &str| -> bool {
        *plain.entry(p.to_string()).or_insert_with(|| {
            old_by
                .shown(p)
                .filter(|e| e.kind == FileKind::File && e.size > 0)
                .and_then(|e| a.reader.read(a.old.fs, e, 0, 4096))
                .is_some_and(|h| content::sniff(&h).is_some() || shannon_entropy(&h) < 7.0)
        })
    };
    let mut gone: HashMap<&str, Vec<&str>> = HashMap::new();
    for x in &d.deleted {
        let dir = x.path.rsplit_once('/').map(|(d, _)| d).unwrap_or("");
        gone.entry(dir).or_default().push(&x.path);
    }
    let claimed: HashSet<String> = out
        .findings
        .iter()
        .filter_map(|f| f.origin.clone())
        .collect();
    for list in gone.values_mut() {
        list.retain(|p| !claimed.contains(*p));
    }
    for f in out.findings.iter_mut().filter(|f| f.replaced_nothing()) {
        let dir = f.path.rsplit_once('/').map(|(d, _)| d).unwrap_or("");
        let Some(list) = gone.get_mut(dir).filter(|l| !l.is_empty()) else {
            continue;
        };
        let ext = content::extension(&f.path);
        let mut order: Vec<usize> = (0..list.len()).collect();
        order.sort_by_key(|&i| content::extension(list[i]) != ext);
        if let Some(at) = order.into_iter().find(|&i| was_plain(list[i])) {
            f.origin = Some(list.swap_remove(at).to_string());
        }
    }
    // Elsewhere (a hidden folder, a cache), a ciphertext is its
    // original's size or a little more (padding, a header or footer
    // holding the wrapped key): an encrypted-looking new file pairs with a
    // plain deleted file up to 4 KiB smaller, the closest first.
    let mut left: Vec<(u64, &str)> = gone
        .values()
        .flatten()
        .filter_map(|p| {
            let e = old_by
                .shown(p)
                .filter(|e| e.kind == FileKind::File && e.size > 0)?;
            Some((e.size, *p))
        })
        .collect();
    left.sort_unstable();
    for f in out
        .findings
        .iter_mut()
        .filter(|f| f.damage == Damage::EncryptedNew && f.replaced_nothing())
    {
        let Some(size) = new_by.shown(&f.path).map(|e| e.size) else {
            continue;
        };
        // The deleted sizes not above this one, from the largest down.
        let mut i = left.partition_point(|(s, _)| *s <= size);
        while i > 0 && size - left[i - 1].0 <= 4096 {
            if was_plain(left[i - 1].1) {
                f.origin = Some(left.remove(i - 1).1.to_string());
                break;
            }
            i -= 1;
        }
    }
    // In a cache, a new file counts only as the copy of an original.
    out.findings
        .retain(|f| !(f.replaced_nothing() && content::is_cache(&f.path)));

    // What a package manager installed is not an attacker's copy: a
    // firmware package adds (and on upgrade replaces) hundreds of
    // high-entropy blobs of no known type, a library's tests ship corrupt
    // archives on purpose. New files that a package list changed in this
    // snapshot names are not counted as encrypted-looking or broken when
    // they lie where packages install, and so does the file each replaced
    // (if any): a forged list hides no copy of a user's or a web site's
    // files, wherever the copy was put. A new file that took the inode of
    // one the upgrade removed is seen as that file renamed and rewritten
    // ("encrypted in place"): the same holds for it. A file changed at its
    // own path is judged as ever (an upgrade's new version of a program
    // or a blob is no jump in entropy).
    let packaged = packaged_files(&a, &new_by, d);
    if !packaged.is_empty() {
        out.findings.retain(|f| {
            let new_here = match f.damage {
                Damage::EncryptedNew | Damage::BrokenStructure => f.added,
                Damage::EncryptedInPlace => f.origin.as_deref().is_some_and(|o| o != f.path),
                _ => false,
            };
            let installed = new_here
                && content::is_system_path(&f.path)
                && f.origin.as_deref().is_none_or(content::is_system_path)
                && packaged.contains(&cairn_guest::model::unescape(
                    f.path.strip_prefix('/').unwrap_or(&f.path),
                ));
            !installed
        });
    }

    // Every old name is looked at only when there are new files to compare.
    let old_exts: HashSet<String> = if d.added.is_empty() {
        HashSet::new()
    } else {
        let raw: HashSet<&[u8]> = old
            .entries
            .iter()
            .filter(is_file)
            .map(|e| content::raw_extension(e.name()))
            .collect();
        raw.into_iter()
            .map(|x| cairn_guest::model::escape(x).to_ascii_lowercase())
            .collect()
    };
    let mut fresh: BTreeMap<String, u64> = BTreeMap::new();
    for x in &d.added {
        let ext = content::extension(&x.path);
        if !ext.is_empty() && !old_exts.contains(&ext) {
            *fresh.entry(ext).or_default() += 1;
        }
    }
    out.new_extensions = sorted_counts(fresh);

    let mut touched: Vec<u64> = d
        .modified
        .iter()
        .map(|m| path_hash(&m.path))
        .chain(d.deleted.iter().map(|x| path_hash(&x.path)))
        .chain(d.renamed.iter().map(|r| path_hash(&r.from)))
        .collect();
    touched.sort_unstable();
    touched.dedup();
    out.touched = touched;
    // A file renamed as it was is what it was.
    out.unsound.extend(
        d.renamed
            .iter()
            .filter(|r| !r.modified)
            .map(|r| path_hash(&r.from)),
    );
    out
}

/// Where package managers list the files they installed: dpkg one list
/// per package, apk one database for all, rpm one database (SQLite, or
/// Berkeley DB before rpm 4.16) in one of two folders.
const DPKG_LISTS: &str = "/var/lib/dpkg/info/";
const APK_DB: &str = "/lib/apk/db/installed";
const RPM_DIRS: [&str; 2] = ["/var/lib/rpm/", "/usr/lib/sysimage/rpm/"];
const RPM_FILES: [&str; 3] = ["rpmdb.sqlite", "rpmdb.sqlite-wal", "Packages"];
/// A package list longer than this is read this far.
const MAX_LIST_BYTES: u64 = 16 << 20;
/// An RPM database longer than this is not read (a large server's is
/// tens of MB).
const MAX_RPM_DB: u64 = 128 << 20;
/// Most paths taken from an RPM database.
const MAX_RPM_PATHS: usize = 1_000_000;

/// The files (as raw paths without the leading `/`) that the package
/// lists added or changed in this snapshot name: those of the packages
/// installed or upgraded since the parent.
fn packaged_files(a: &Analysis, new_by: &ByPath, d: &Diff) -> HashSet<Vec<u8>> {
    let mut out = HashSet::new();
    let changed = (d.added.iter().map(|x| &x.path))
        .chain(d.modified.iter().map(|m| &m.path))
        .chain(d.renamed.iter().map(|r| &r.to));
    let mut rpm_read = Vec::new();
    for path in changed {
        let rpm = RPM_DIRS.iter().find(|dir| {
            path.strip_prefix(**dir)
                .is_some_and(|f| RPM_FILES.contains(&f))
        });
        if let Some(dir) = rpm {
            if !rpm_read.contains(dir) {
                rpm_read.push(dir);
                out.extend(rpm_files(a, new_by, dir));
            }
            continue;
        }
        let dpkg = path.starts_with(DPKG_LISTS) && path.ends_with(".list");
        if !dpkg && path != APK_DB {
            continue;
        }
        let Some(e) = new_by.shown(path).filter(|e| e.kind == FileKind::File) else {
            continue;
        };
        let Some(list) = a.reader.read(a.new.fs, e, 0, MAX_LIST_BYTES) else {
            continue;
        };
        if dpkg {
            // One absolute path per line.
            for line in list.split(|&b| b == b'\n') {
                if let Some(p) = line.strip_prefix(b"/").filter(|p| !p.is_empty()) {
                    out.insert(p.to_vec());
                }
            }
        } else {
            // `F:dir` names a folder, each `R:name` after it a file there.
            let mut dir: &[u8] = b"";
            for line in list.split(|&b| b == b'\n') {
                if let Some(d) = line.strip_prefix(b"F:") {
                    dir = d;
                } else if let Some(name) = line.strip_prefix(b"R:") {
                    let mut p = dir.to_vec();
                    if !p.is_empty() {
                        p.push(b'/');
                    }
                    p.extend_from_slice(name);
                    out.insert(p);
                }
            }
        }
    }
    out
}

/// The files (raw paths without the leading `/`) that the packages of the
/// RPM database in `dir` installed, all of them: which package changed
/// would take reading the parent's database too.
fn rpm_files(a: &Analysis, new_by: &ByPath, dir: &str) -> Vec<Vec<u8>> {
    let read = |name: &str| {
        let e = new_by
            .shown(&format!("{dir}{name}"))
            .filter(|e| e.kind == FileKind::File && e.size <= MAX_RPM_DB)?;
        a.reader.read(a.new.fs, e, 0, MAX_RPM_DB)
    };
    let mut files = Vec::new();
    let mut each = |header: &[u8]| cairn_rpm::header_files(header, &mut files, MAX_RPM_PATHS);
    if let Some(db) = read("rpmdb.sqlite") {
        let wal = read("rpmdb.sqlite-wal");
        if let Err(e) =
            cairn_rpm::sqlite_headers(&db, wal.as_deref(), cairn_rpm::MAX_PACKAGES, each)
        {
            tracing::debug!(dir, error = e, "rpm database unreadable");
        }
    } else if let Some(db) = read("Packages") {
        for header in cairn_rpm::bdb::values(&db, cairn_rpm::MAX_PACKAGES).unwrap_or_default() {
            each(&header);
        }
    }
    files
        .into_iter()
        .filter_map(|p| {
            p.strip_prefix(b"/")
                .filter(|p| !p.is_empty())
                .map(<[u8]>::to_vec)
        })
        .collect()
}

fn sorted_counts(m: BTreeMap<String, u64>) -> Vec<ExtensionCount> {
    let mut v: Vec<ExtensionCount> = m
        .into_iter()
        .map(|(extension, files)| ExtensionCount { extension, files })
        .collect();
    v.sort_by(|a, b| b.files.cmp(&a.files).then(a.extension.cmp(&b.extension)));
    v
}

#[cfg(test)]
mod tests {
    use super::differing_bytes;

    #[test]
    fn differing_bytes_are_those_a_byte_by_byte_comparison_finds() {
        let mut x = 1u64;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for len in [0usize, 1, 7, 8, 9, 63, 64, 65, 4097] {
            let was: Vec<u8> = (0..len).map(|_| next() as u8 % 4).collect();
            let now: Vec<u8> = was
                .iter()
                .map(|&b| if next() % 5 == 0 { b ^ 1 } else { b })
                .collect();
            let want: (Vec<u8>, Vec<u8>) = was
                .iter()
                .zip(&now)
                .filter(|(a, b)| a != b)
                .map(|(&a, &b)| (a, b))
                .unzip();
            assert_eq!(differing_bytes(&was, &now), want, "length {len}");
        }
    }
}
