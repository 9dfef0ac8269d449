//! Ransom notes: small text files whose name and wording give them away
//! (".onion" addresses, payment and decryption wording), usually dropped
//! in many folders at once.

/// Notes are small; larger files are not read for this.
pub const MAX_NOTE_BYTES: u64 = 256 * 1024;

/// Phrases ransom notes use. Each one found counts once.
const WORDING: &[&str] = &[
    "bitcoin",
    "btc",
    "monero",
    "xmr",
    "tor browser",
    "ransom",
    "encrypted",
    "decrypt",
    "private key",
    "decryption key",
    "personal id",
    "unique id",
    "your files",
    "all your",
    "recover your",
    "restore your",
    "pay ",
    "payment",
    "wallet",
    "contact us",
    "do not try",
    "do not rename",
    "leak",
];

/// Words in note file names ("README_TO_DECRYPT.txt", "HOW_TO_RECOVER.html").
const NAME_HINTS: &[&str] = &[
    "readme",
    "read_me",
    "read-me",
    "decrypt",
    "how_to",
    "how-to",
    "howto",
    "restore",
    "recover",
    "ransom",
    "instruction",
    "unlock",
    "!!!",
];

/// Why a text looks like a ransom note, or `None`.
pub fn looks_like_note(file_name: &str, text: &[u8]) -> Option<String> {
    let lower = String::from_utf8_lossy(text).to_lowercase();
    let name = file_name.to_lowercase();
    let words: Vec<&str> = WORDING
        .iter()
        .copied()
        .filter(|w| lower.contains(w))
        .collect();
    let onion = has_onion_address(&lower);
    let named = NAME_HINTS.iter().any(|h| name.contains(h));
    let hit = words.len() >= 4 || (onion && !words.is_empty()) || (named && words.len() >= 2);
    if !hit {
        return None;
    }
    let mut why = Vec::new();
    if onion {
        why.push(".onion address".to_string());
    }
    if named {
        why.push(format!("note-like name {file_name:?}"));
    }
    // Shown without the space some words carry to match whole ("pay ").
    let shown: Vec<&str> = words.iter().map(|w| w.trim()).collect();
    why.push(format!("wording: {}", shown.join(", ")));
    Some(why.join("; "))
}

/// A Tor onion address: 16 (v2) or 56 (v3) base32 characters + ".onion".
fn has_onion_address(lower: &str) -> bool {
    let b = lower.as_bytes();
    let mut from = 0;
    while let Some(i) = lower[from..].find(".onion") {
        let at = from + i;
        let n = b[..at]
            .iter()
            .rev()
            .take_while(|c| c.is_ascii_lowercase() || (b'2'..=b'7').contains(c))
            .count();
        if n == 16 || n >= 56 {
            return true;
        }
        from = at + 6;
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_note_is_found_and_a_readme_is_not() {
        let note = b"All your files have been encrypted!\nTo decrypt them, install Tor Browser and visit \
            http://abcdefghijklmnopqrstuvwxyz234567abcdefghijklmnopqrstuvwx.onion/ with your personal ID.";
        assert!(looks_like_note("README_DECRYPT.txt", note).is_some());
        let readme =
            b"# Project\nBuild with make. See docs/ for how to restore a backup of the config.";
        assert!(looks_like_note("README.md", readme).is_none());
    }

    #[test]
    fn onion_addresses_need_the_right_length() {
        assert!(has_onion_address("visit abcdefghijklmnop.onion now"));
        assert!(!has_onion_address("the file name was x.onion"));
    }
}
