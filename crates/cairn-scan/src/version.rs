//! Each package ecosystem's own version ordering: dpkg (Debian, Ubuntu)
//! through the `debversion` crate, apk (Alpine) written here (no crate
//! implements it).

use std::cmp::Ordering;

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scheme {
    Dpkg,
    Apk,
    Rpm,
}

/// Compares two versions; None when either does not parse.
pub fn compare(scheme: Scheme, a: &str, b: &str) -> Option<Ordering> {
    match scheme {
        Scheme::Dpkg => {
            let a: debversion::Version = a.parse().ok()?;
            let b: debversion::Version = b.parse().ok()?;
            Some(a.cmp(&b))
        }
        Scheme::Apk => Some(apk_compare(&apk_parse(a)?, &apk_parse(b)?)),
        Scheme::Rpm => {
            let sane = |v: &str| !v.is_empty() && v.len() <= 256 && v.is_ascii();
            (sane(a) && sane(b)).then(|| crate::rpm::compare_evr(a, b))
        }
    }
}

/// An apk version: dotted numbers, an optional letter, suffixes
/// (`_alpha1`, `_rc2`, `_p3`…) and a package revision (`-r4`).
#[derive(Debug)]
struct ApkVersion {
    numbers: Vec<Vec<u8>>,
    letter: Option<u8>,
    suffixes: Vec<(i32, u64)>,
    revision: u64,
}

/// Suffix order from apk-tools: pre-release kinds sort before the
/// release, post-release kinds after.
fn suffix_rank(s: &str) -> Option<i32> {
    Some(match s {
        "alpha" => -4,
        "beta" => -3,
        "pre" => -2,
        "rc" => -1,
        "cvs" => 1,
        "svn" => 2,
        "git" => 3,
        "hg" => 4,
        "p" => 5,
        _ => return None,
    })
}

fn apk_parse(v: &str) -> Option<ApkVersion> {
    if v.is_empty() || v.len() > 256 {
        return None;
    }
    let (main, revision) = match v.rsplit_once("-r") {
        Some((m, r)) if !r.is_empty() && r.bytes().all(|b| b.is_ascii_digit()) => {
            (m, r.parse().ok()?)
        }
        _ => (v, 0),
    };
    let mut parts = main.split('_');
    let head = parts.next()?;
    let mut numbers = Vec::new();
    let mut letter = None;
    for (i, n) in head.split('.').enumerate() {
        let digits: &str = &n[..n.bytes().take_while(|b| b.is_ascii_digit()).count()];
        let rest = &n[digits.len()..];
        if digits.is_empty() {
            return None;
        }
        numbers.push(digits.trim_start_matches('0').as_bytes().to_vec());
        match rest.len() {
            0 => {}
            1 if rest.as_bytes()[0].is_ascii_lowercase() && i + 1 == head.split('.').count() => {
                letter = Some(rest.as_bytes()[0])
            }
            _ => return None,
        }
    }
    let mut suffixes = Vec::new();
    for s in parts {
        let name_len = s.bytes().take_while(|b| b.is_ascii_lowercase()).count();
        let rank = suffix_rank(&s[..name_len])?;
        let num = &s[name_len..];
        let n = if num.is_empty() { 0 } else { num.parse().ok()? };
        suffixes.push((rank, n));
    }
    Some(ApkVersion {
        numbers,
        letter,
        suffixes,
        revision,
    })
}

fn cmp_digits(a: &[u8], b: &[u8]) -> Ordering {
    a.len().cmp(&b.len()).then_with(|| a.cmp(b))
}

fn apk_compare(a: &ApkVersion, b: &ApkVersion) -> Ordering {
    for i in 0..a.numbers.len().max(b.numbers.len()) {
        match (a.numbers.get(i), b.numbers.get(i)) {
            (Some(x), Some(y)) => match cmp_digits(x, y) {
                Ordering::Equal => {}
                o => return o,
            },
            // 1.2.1 > 1.2
            (Some(_), None) => return Ordering::Greater,
            (None, Some(_)) => return Ordering::Less,
            (None, None) => {}
        }
    }
    match a.letter.cmp(&b.letter) {
        Ordering::Equal => {}
        o => return o,
    }
    for i in 0..a.suffixes.len().max(b.suffixes.len()) {
        // A missing suffix is the release itself: after pre-releases,
        // before post-release patches.
        let x = a.suffixes.get(i).copied().unwrap_or((0, 0));
        let y = b.suffixes.get(i).copied().unwrap_or((0, 0));
        match x.cmp(&y) {
            Ordering::Equal => {}
            o => return o,
        }
    }
    a.revision.cmp(&b.revision)
}

#[cfg(test)]
mod tests {
    use super::*;
    use Ordering::*;

    #[test]
    fn dpkg_ordering_follows_debian_policy() {
        let c = |a, b| compare(Scheme::Dpkg, a, b).unwrap();
        assert_eq!(c("2.36-9+deb12u1", "2.36-9+deb12u3"), Less);
        assert_eq!(c("1.0~rc1-1", "1.0-1"), Less);
        assert_eq!(c("1:0.9-1", "2.0-1"), Greater);
        assert_eq!(c("5.2.15-2+b2", "5.2.15-2"), Greater);
        assert_eq!(compare(Scheme::Dpkg, "", "1"), None);
    }

    #[test]
    fn apk_ordering_follows_apk_tools() {
        let c = |a, b| compare(Scheme::Apk, a, b).unwrap();
        assert_eq!(c("3.1.4-r1", "3.1.4-r0"), Greater);
        assert_eq!(c("3.1.4-r5", "3.1.10-r0"), Less);
        assert_eq!(c("1.2_rc1-r0", "1.2-r0"), Less);
        assert_eq!(c("1.2_p1-r0", "1.2-r0"), Greater);
        assert_eq!(c("1.2a-r0", "1.2-r0"), Greater);
        assert_eq!(c("1.2.1", "1.2"), Greater);
        assert_eq!(compare(Scheme::Apk, "x.y", "1"), None);
    }
}
