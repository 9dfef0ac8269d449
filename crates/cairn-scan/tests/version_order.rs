//! The version orderings that decide whether an installed package is
//! older than an advisory's fix, checked against the package managers'
//! own on the same pairs: `dpkg --compare-versions` for Debian, rpm's
//! `rpm.vercmp` for RPM. (apk-tools is not packaged for Debian; the apk
//! ordering is covered by the unit tests in `src/version.rs`.)
//!
//! The versions are this host's installed packages (real Debian versions,
//! with epochs, `~`, `+deb12u1`, `+b2`, `-3.1`…), odd but valid forms, and
//! small changes to each (a `~rc1`, a bump, a binNMU, an epoch), so that
//! most pairs are close calls, which is where orderings differ.

use cairn_scan::version::{Scheme, compare};
use std::cmp::Ordering;
use std::io::Write;
use std::process::{Command, Stdio};

/// Deterministic pseudo-random picks (the test runs the same each time).
struct Picks(u64);

impl Picks {
    fn next(&mut self, n: usize) -> usize {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 33) % n as u64) as usize
    }
}

fn installed_versions() -> Vec<String> {
    let out = Command::new("dpkg-query")
        .args(["-W", "-f", "${Version}\\n"])
        .output()
        .expect("dpkg-query runs");
    assert!(out.status.success());
    let mut v: Vec<String> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect();
    v.sort();
    v.dedup();
    assert!(v.len() > 100, "too few installed packages to compare");
    v
}

const ODD: &[&str] = &[
    "0",
    "1",
    "1.0",
    "1.0-0",
    "1.0-1",
    "1.0~rc1-1",
    "1.0~~-1",
    "1.0~-1",
    "1.0+-1",
    "1.0.-1",
    "1:1.0-1",
    "0:1.0-1",
    "2:0.1",
    "10:1",
    "1.0a-1",
    "1.0A-1",
    "1.0z",
    "1.00-1",
    "1.000",
    "01.0",
    "1.0-1~bpo12+1",
    "1.0-1+deb12u1",
    "1.0-1+b1",
    "1.0-1.1",
    "1.0-1ubuntu1",
    "1.0-1ubuntu0.22.04.1",
    "1.0+dfsg-1",
    "1.0+dfsg1-1",
    "1.0~dfsg-1",
    "1.2.3-4-5",
    "1.2.3-4.5-6",
    "2.36-9+deb12u3",
    "3.0.11-1~deb12u2",
    "1:2.38.1-5+deb12u1",
    "9.2p1-2+deb12u3",
    "20230311",
    "2023.03.11-1",
    "1.0+git20230101.abcdef-1",
    "1.0~git20230101-1",
    "0.0.0",
    "1.a",
    "1.a.b",
    "a",
    "Z",
];

/// Small changes to a version, most of which sort next to it.
fn near(v: &str, p: &mut Picks) -> String {
    let (upstream, revision) = match v.rsplit_once('-') {
        Some((u, r)) => (u.to_string(), format!("-{r}")),
        None => (v.to_string(), String::new()),
    };
    match p.next(10) {
        9 => format!("{upstream}^git1{revision}"),
        0 => format!("{upstream}~rc1{revision}"),
        1 => format!("{v}+b1"),
        2 => format!("{upstream}.1{revision}"),
        3 if !v.contains(':') => format!("1:{v}"),
        4 => format!("{upstream}{revision}~bpo1"),
        5 => format!("{upstream}a{revision}"),
        6 => format!("{upstream}+dfsg{revision}"),
        // Bump (or drop) the last digit.
        7 => match v.rfind(|c: char| c.is_ascii_digit()) {
            Some(i) => {
                let d = v.as_bytes()[i] - b'0';
                format!("{}{}{}", &v[..i], (d + 1) % 10, &v[i + 1..])
            }
            None => format!("{v}0"),
        },
        _ => format!("{upstream}{revision}.0"),
    }
}

/// Pairs to compare: each version against a random other and `near` of
/// its own changes, then the odd forms against each other (every pair, or
/// one in `odd_every`: each dpkg comparison is a process).
fn pairs(near_per_version: usize, odd_every: usize) -> Vec<(String, String)> {
    let mut versions = installed_versions();
    versions.extend(ODD.iter().map(|s| s.to_string()));
    let mut p = Picks(0x5eed);
    let mut out = Vec::new();
    for v in &versions {
        out.push((v.clone(), versions[p.next(versions.len())].clone()));
        for _ in 0..near_per_version {
            let w = near(v, &mut p);
            if p.next(2) == 0 {
                out.push((v.clone(), w));
            } else {
                out.push((w, v.clone()));
            }
        }
    }
    for (i, (a, b)) in ODD
        .iter()
        .flat_map(|a| ODD.iter().map(move |b| (a, b)))
        .enumerate()
    {
        if i % odd_every == 0 {
            out.push((a.to_string(), b.to_string()));
        }
    }
    out
}

fn order(s: &str) -> Ordering {
    match s.trim() {
        "lt" | "-1" => Ordering::Less,
        "eq" | "0" => Ordering::Equal,
        "gt" | "1" => Ordering::Greater,
        other => panic!("unexpected answer {other:?}"),
    }
}

/// Asserts that Cairn orders every pair as `tool` did, naming the first
/// pairs that differ, and that enough pairs were compared.
fn assert_agrees(
    tool: &str,
    scheme: Scheme,
    pairs: &[(String, String)],
    theirs: &[Ordering],
    min: usize,
) {
    assert_eq!(pairs.len(), theirs.len(), "an answer per pair");
    let bad: Vec<String> = pairs
        .iter()
        .zip(theirs)
        .filter_map(|((a, b), want)| {
            let ours = compare(scheme, a, b);
            (ours != Some(*want)).then(|| format!("{a} vs {b}: ours {ours:?}, theirs {want:?}"))
        })
        .collect();
    assert!(
        bad.is_empty(),
        "{} of {} pairs ordered unlike {tool}, e.g.:\n{}",
        bad.len(),
        pairs.len(),
        bad[..bad.len().min(15)].join("\n")
    );
    assert!(pairs.len() > min, "only {} pairs compared", pairs.len());
}

#[test]
fn dpkg_ordering_matches_dpkg_compare_versions() {
    // Only versions dpkg accepts (it warns about the rest).
    let pairs: Vec<_> = pairs(1, 7)
        .into_iter()
        .filter(|(a, b)| debian_syntax(a) && debian_syntax(b))
        .collect();
    let mut input = String::new();
    for (a, b) in &pairs {
        input.push_str(&format!("{a} {b}\n"));
    }
    let script = r#"while read -r a b; do
        if dpkg --compare-versions "$a" lt "$b" 2>/dev/null; then echo lt
        elif dpkg --compare-versions "$a" eq "$b" 2>/dev/null; then echo eq
        else echo gt; fi
    done"#;
    let theirs: Vec<Ordering> = run_with_input("bash", &["-c", script], &input)
        .lines()
        .map(order)
        .collect();
    assert_agrees("dpkg", Scheme::Dpkg, &pairs, &theirs, 1000);
}

/// Debian policy's syntax: `[epoch:]upstream[-revision]`, the epoch
/// digits, the upstream starting with a digit and made of alphanumerics
/// and `.+~-` (`-` only with a revision), the revision of alphanumerics
/// and `.+~`.
fn debian_syntax(v: &str) -> bool {
    let rest = match v.split_once(':') {
        Some((e, r)) if !e.is_empty() && e.bytes().all(|c| c.is_ascii_digit()) => r,
        Some(_) => return false,
        None => v,
    };
    let (up, rev) = match rest.rsplit_once('-') {
        Some((u, r)) => (u, Some(r)),
        None => (rest, None),
    };
    let ok = |s: &str, extra: &[u8]| {
        s.bytes()
            .all(|c| c.is_ascii_alphanumeric() || b".+~".contains(&c) || extra.contains(&c))
    };
    up.starts_with(|c: char| c.is_ascii_digit())
        && ok(up, if rev.is_some() { b"-" } else { b"" })
        && rev.is_none_or(|r| !r.is_empty() && ok(r, b""))
}

#[test]
fn rpm_ordering_matches_rpm_vercmp() {
    // rpm takes any of these: `[epoch:]version[-release]`.
    let pairs: Vec<_> = pairs(3, 1)
        .into_iter()
        .filter(|(a, b)| !a.contains(']') && !b.contains(']'))
        .collect();
    let mut lua = String::from("for _, p in ipairs({\n");
    for (a, b) in &pairs {
        lua.push_str(&format!("{{[[{a}]], [[{b}]]}},\n"));
    }
    lua.push_str("}) do io.write(rpm.vercmp(p[1], p[2]), \"\\n\") end\n");
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("pairs.lua");
    std::fs::write(&script, lua).unwrap();
    let theirs: Vec<Ordering> = run_with_input(
        "rpm",
        &[
            "--eval",
            &format!("%{{lua: dofile('{}')}}", script.display()),
        ],
        "",
    )
    .lines()
    .filter(|l| !l.is_empty())
    .map(order)
    .collect();
    assert_agrees("rpm", Scheme::Rpm, &pairs, &theirs, 2000);
}

fn run_with_input(cmd: &str, args: &[&str], input: &str) -> String {
    let mut child = Command::new(cmd)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{cmd}: {e}"));
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_string();
    let feeder = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
    let out = child.wait_with_output().unwrap();
    feeder.join().unwrap().unwrap();
    assert!(out.status.success(), "{cmd} failed");
    String::from_utf8(out.stdout).unwrap()
}
