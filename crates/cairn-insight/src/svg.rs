//! The timeline as an SVG chart: change rate as bars, entropy of changed
//! data as a line, verdicts as coloured badges, the clean point flagged.
//! Written by hand: a few dozen elements do not need a plotting library.

use crate::{Timeline, Verdict};
use std::fmt::Write;

const W: f64 = 960.0;
const H: f64 = 340.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 60.0;
const TOP: f64 = 50.0;
const BOTTOM: f64 = 60.0;

fn colour(v: Verdict) -> &'static str {
    match v {
        Verdict::Clean => "#3c8d5a",
        Verdict::Suspicious => "#e09b22",
        Verdict::Compromised => "#c8322b",
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

pub fn render(t: &Timeline) -> String {
    let n = t.entries.len().max(1);
    let pw = W - LEFT - RIGHT;
    let ph = H - TOP - BOTTOM;
    let step = pw / n as f64;
    let mib = (1u64 << 20) as f64;
    let max_rate = t
        .entries
        .iter()
        .filter_map(|e| e.signals.change_rate)
        .fold(0.0f64, f64::max)
        .max(mib);
    let x = |i: usize| LEFT + step * (i as f64 + 0.5);
    let y_rate = |r: f64| TOP + ph - ph * (r / max_rate);
    let y_ent = |e: f64| TOP + ph - ph * (e / 8.0);
    let mut s = String::new();
    let _ = writeln!(
        s,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="11">"##
    );
    let _ = writeln!(s, r##"<rect width="{W}" height="{H}" fill="#ffffff"/>"##);
    let _ = writeln!(
        s,
        r##"<text x="{LEFT}" y="20" font-size="14" font-weight="bold">{}: change rate (bars), entropy of changed data (line), verdicts</text>"##,
        escape(&t.name)
    );
    // Axes and grid.
    for k in 0..=4 {
        let f = k as f64 / 4.0;
        let y = TOP + ph - ph * f;
        let _ = writeln!(
            s,
            r##"<line x1="{LEFT}" x2="{}" y1="{y:.1}" y2="{y:.1}" stroke="#e4e4e4"/><text x="{}" y="{:.1}" text-anchor="end">{:.1}</text><text x="{}" y="{:.1}">{:.0}</text>"##,
            W - RIGHT,
            LEFT - 6.0,
            y + 4.0,
            max_rate * f / mib,
            W - RIGHT + 6.0,
            y + 4.0,
            8.0 * f
        );
    }
    let _ = writeln!(
        s,
        r##"<text x="14" y="{:.1}" transform="rotate(-90 14 {:.1})" text-anchor="middle">change rate (MiB/h)</text><text x="{:.1}" y="{:.1}" transform="rotate(90 {:.1} {:.1})" text-anchor="middle">entropy (bits/byte)</text>"##,
        TOP + ph / 2.0,
        TOP + ph / 2.0,
        W - 14.0,
        TOP + ph / 2.0,
        W - 14.0,
        TOP + ph / 2.0
    );
    // Bars and badges.
    let label_every = n.div_ceil(12).max(1);
    let clean = t.clean_point.as_ref().map(|c| c.index);
    for (i, e) in t.entries.iter().enumerate() {
        let v = e.assessment.verdict;
        let rate = e.signals.change_rate.unwrap_or(0.0);
        let (bx, by) = (x(i) - step * 0.35, y_rate(rate));
        let tip = format!(
            "{} {} — {} (score {:.2}){}{}",
            e.snapshot.id.short(),
            e.snapshot.time.format("%Y-%m-%d %H:%M"),
            v.as_str(),
            e.assessment.score,
            if e.assessment.reasons.is_empty() {
                ""
            } else {
                ": "
            },
            e.assessment.reasons.join("; ")
        );
        let _ = writeln!(
            s,
            r##"<g><title>{}</title><rect x="{bx:.1}" y="{by:.1}" width="{:.1}" height="{:.1}" fill="{}" opacity="0.75"/><circle cx="{:.1}" cy="{:.1}" r="6" fill="{}"/></g>"##,
            escape(&tip),
            step * 0.7,
            (TOP + ph - by).max(0.0),
            colour(v),
            x(i),
            TOP - 12.0,
            colour(v)
        );
        if v != Verdict::Clean {
            let _ = writeln!(
                s,
                r##"<text x="{:.1}" y="{:.1}" text-anchor="middle" fill="#ffffff" font-weight="bold" font-size="9">!</text>"##,
                x(i),
                TOP - 9.0
            );
        }
        if clean == Some(i) {
            let _ = writeln!(
                s,
                r##"<path d="M{:.1} {:.1} l0 -22 l14 5 l-14 5" fill="#3c8d5a" stroke="#1f5a36"/><text x="{:.1}" y="{:.1}" fill="#1f5a36">last clean</text>"##,
                x(i),
                TOP + ph,
                x(i) + 16.0,
                TOP + ph - 12.0
            );
        }
        if i % label_every == 0 {
            let _ = writeln!(
                s,
                r##"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
                x(i),
                TOP + ph + 16.0,
                e.snapshot.time.format("%m-%d %H:%M")
            );
        }
    }
    // Entropy line.
    let pts: Vec<String> = t
        .entries
        .iter()
        .enumerate()
        .filter(|(_, e)| e.signals.changed_bytes > 0)
        .map(|(i, e)| format!("{:.1},{:.1}", x(i), y_ent(e.signals.entropy)))
        .collect();
    if !pts.is_empty() {
        let _ = writeln!(
            s,
            r##"<polyline points="{}" fill="none" stroke="#333366" stroke-width="2"/>"##,
            pts.join(" ")
        );
    }
    // Legend.
    let ly = H - 18.0;
    let _ = writeln!(
        s,
        r##"<g><circle cx="{LEFT}" cy="{ly}" r="5" fill="#3c8d5a"/><text x="{}" y="{}">clean</text><circle cx="{}" cy="{ly}" r="5" fill="#e09b22"/><text x="{}" y="{}">suspicious</text><circle cx="{}" cy="{ly}" r="5" fill="#c8322b"/><text x="{}" y="{}">compromised</text><line x1="{}" x2="{}" y1="{ly}" y2="{ly}" stroke="#333366" stroke-width="2"/><text x="{}" y="{}">entropy</text></g>"##,
        LEFT + 8.0,
        ly + 4.0,
        LEFT + 60.0,
        LEFT + 68.0,
        ly + 4.0,
        LEFT + 145.0,
        LEFT + 153.0,
        ly + 4.0,
        LEFT + 240.0,
        LEFT + 262.0,
        LEFT + 268.0,
        ly + 4.0
    );
    s.push_str("</svg>\n");
    s
}
