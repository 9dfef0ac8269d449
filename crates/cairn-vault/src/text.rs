//! Bytes that need not be UTF-8 (guest file names, host paths) as text
//! that names them exactly.

/// A name as text that says exactly which bytes it is: control characters
/// and bytes that are not UTF-8 become `\n`, `\t`, `\r` or `\xNN`, and
/// `\` becomes `\\` ([`unescape`] reads it back), so a crafted name can
/// neither break a listing into lines nor pass for another name.
pub fn escape(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\t' => out.push_str("\\t"),
                '\r' => out.push_str("\\r"),
                c if c.is_control() || invisible(c) => {
                    let mut buf = [0u8; 4];
                    for b in c.encode_utf8(&mut buf).bytes() {
                        let _ = write!(out, "\\x{b:02x}");
                    }
                }
                c => out.push(c),
            }
        }
        for b in chunk.invalid() {
            let _ = write!(out, "\\x{b:02x}");
        }
    }
    out
}

/// Text quoted from a guest's files (a cron line, a script's first
/// words) made safe to print: control characters and invisible ones
/// become `\n`, `\r`, `\t` or `\xNN` as in [`escape`], so a planted file
/// can neither move the cursor nor clear the line that names it. Other
/// text, backslashes included, is left as it is.
pub fn printable(text: &str) -> String {
    if !text.chars().any(|c| c.is_control() || invisible(c)) {
        return text.to_string();
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if c.is_control() || invisible(c) {
            // One character: escape's rules, backslash aside.
            out.push_str(&escape(c.encode_utf8(&mut [0u8; 4]).as_bytes()));
        } else {
            out.push(c);
        }
    }
    out
}

/// Characters that change how text around them shows without showing
/// themselves (zero-width ones, bidirectional overrides, the byte-order
/// mark): escaped too, or a name could pass for another.
fn invisible(c: char) -> bool {
    matches!(c,
        '\u{00ad}' | '\u{061c}' | '\u{180e}'
        | '\u{200b}'..='\u{200f}'
        | '\u{202a}'..='\u{202e}'
        | '\u{2060}'..='\u{2064}'
        | '\u{2066}'..='\u{206f}'
        | '\u{feff}')
}

/// The bytes a name printed by [`escape`] stands for. A backslash not
/// followed by `\\`, `n`, `t`, `r` or `xNN` is kept as it is.
pub fn unescape(text: &str) -> Vec<u8> {
    let b = text.as_bytes();
    let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' {
            let two = match b.get(i + 1) {
                Some(b'\\') => Some(b'\\'),
                Some(b'n') => Some(b'\n'),
                Some(b't') => Some(b'\t'),
                Some(b'r') => Some(b'\r'),
                _ => None,
            };
            if let Some(c) = two {
                out.push(c);
                i += 2;
                continue;
            }
            if b.get(i + 1) == Some(&b'x')
                && let (Some(h), Some(l)) = (
                    b.get(i + 2).copied().and_then(hex),
                    b.get(i + 3).copied().and_then(hex),
                )
            {
                out.push(h << 4 | l);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    out
}

/// A host path as text, exactly (see [`escape`]): what a snapshot records
/// as its source, and what it is compared with later.
pub fn path_text(path: &std::path::Path) -> String {
    use std::os::unix::ffi::OsStrExt;
    escape(path.as_os_str().as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn printable_text_escapes_what_moves_the_cursor_and_keeps_backslashes() {
        assert_eq!(printable(r"C:\Users\x.exe"), r"C:\Users\x.exe");
        assert_eq!(
            printable("sh\x1b[2K\r# fine\u{202e}"),
            r"sh\x1b[2K\r# fine\xe2\x80\xae"
        );
        assert_eq!(printable("plain"), "plain");
    }
}
