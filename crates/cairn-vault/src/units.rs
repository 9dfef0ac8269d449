//! Sizes and durations as people read and write them.

/// `1536` → `"1.5 KiB"`; bytes below 1 KiB are shown exactly.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// `30d`, `12h`, `2w`, `1y6mo`… (s, min, h, d, w, mo = 31 days, y = 365
/// days). A bare `m` is refused: restic and borg read it as months, and a
/// retention or `--keep-within` of minutes where months were meant would
/// let forget and prune remove what the operator wanted kept.
pub fn duration(s: &str) -> Result<chrono::Duration, String> {
    const UNITS: &str = "s, min, h, d, w, mo or y";
    if s.is_empty() {
        return Err("empty duration".into());
    }
    let mut total = 0i64;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        let (num, after) = rest.split_at(digits);
        let letters = after.len()
            - after
                .trim_start_matches(|c: char| c.is_ascii_alphabetic())
                .len();
        let (unit, after) = after.split_at(letters);
        if num.is_empty() {
            match unit.chars().next().or_else(|| after.chars().next()) {
                Some(c) => {
                    return Err(format!(
                        "{s:?} is not a duration: expected a number before {c:?} (for example 30d, 12h or 2w)"
                    ));
                }
                None => return Err(format!("{s:?} is not a duration")),
            }
        }
        let secs = match unit {
            "" => {
                return Err(format!(
                    "{s:?}: give a unit after {num} (for example {num}d)"
                ));
            }
            "s" => 1,
            "min" => 60,
            "h" => 3600,
            "d" => 86400,
            "w" => 7 * 86400,
            "mo" => 31 * 86400,
            "y" => 365 * 86400,
            "m" => {
                return Err(format!(
                    "{s:?}: \"m\" could mean minutes or months: write {num}min or {num}mo (31 days)"
                ));
            }
            _ => return Err(format!("{s:?}: unknown unit {unit:?} (use {UNITS})")),
        };
        let n: i64 = num
            .parse()
            .map_err(|_| format!("{s:?}: duration too long"))?;
        total = total
            .checked_add(
                n.checked_mul(secs)
                    .ok_or_else(|| format!("{s:?}: duration too long"))?,
            )
            .ok_or_else(|| format!("{s:?}: duration too long"))?;
        rest = after;
    }
    // Past this, times computed from it overflow (and no retention or
    // keep rule needs more).
    const MOST: i64 = 1000 * 365 * 86400;
    if total > MOST {
        return Err(format!("{s:?}: duration too long (at most 1000y)"));
    }
    Ok(chrono::Duration::seconds(total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        let secs = |s| duration(s).unwrap().num_seconds();
        assert_eq!(secs("30d"), 30 * 86400);
        assert_eq!(secs("1d12h"), 36 * 3600);
        assert_eq!(secs("0s"), 0);
        assert_eq!(secs("90min"), 5400);
        assert_eq!(duration("1y6mo").unwrap().num_days(), 365 + 6 * 31);
        assert_eq!(duration("1000y").unwrap().num_days(), 365_000);
        for bad in [
            "12",
            "3q",
            "",
            "d",
            "1h30",
            "1 d",
            "-1d",
            "99999999999999999999d",
            "9999999999999999s",
            "1001y",
        ] {
            assert!(duration(bad).is_err(), "{bad:?}");
        }
        // Months and minutes are spelled out: "m" alone is refused, with
        // both readings offered.
        let e = duration("6m").unwrap_err();
        assert!(e.contains("6min") && e.contains("6mo"), "{e}");
    }
}
