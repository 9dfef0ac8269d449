//! File names that ransomware gives the files it encrypts. A name is
//! checked without reading the file, so this costs nothing per snapshot;
//! only extensions no ordinary program uses are listed (not `.locked`,
//! `.encrypted` or `.crypt`, which insight's extension churn catches
//! when many files take them at once).

/// (extension, lowercase without the dot; family).
const KNOWN: &[(&str, &str)] = &[
    ("wncry", "WannaCry"),
    ("wnry", "WannaCry"),
    ("wcry", "WannaCry"),
    ("locky", "Locky"),
    ("zepto", "Locky"),
    ("odin", "Locky"),
    ("thor", "Locky"),
    ("aesir", "Locky"),
    ("osiris", "Locky"),
    ("cerber", "Cerber"),
    ("cerber2", "Cerber"),
    ("cerber3", "Cerber"),
    ("ryk", "Ryuk"),
    ("lockbit", "LockBit"),
    ("krab", "GandCrab"),
    ("gdcb", "GandCrab"),
    ("dharma", "Dharma"),
    ("phobos", "Phobos"),
    ("makop", "Makop"),
    ("babyk", "Babuk"),
    ("nefilim", "Nefilim"),
    ("akira", "Akira"),
    ("royal", "Royal"),
    ("8base", "8Base"),
    ("cuba", "Cuba"),
    ("clop", "Cl0p"),
    ("nemty", "Nemty"),
];

/// The family whose encrypted files end like `name` (a file name, not a
/// path), if any.
pub fn ransomware_family(name: &[u8]) -> Option<(&'static str, &'static str)> {
    let dot = name.iter().rposition(|&b| b == b'.')?;
    let ext = &name[dot + 1..];
    if dot == 0 || ext.is_empty() || ext.len() > 8 {
        return None;
    }
    KNOWN
        .iter()
        .find(|(e, _)| e.as_bytes().eq_ignore_ascii_case(ext))
        .copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_extensions_match_in_any_case_and_only_at_the_end() {
        assert_eq!(
            ransomware_family(b"report.docx.WNCRY").unwrap().1,
            "WannaCry"
        );
        assert_eq!(
            ransomware_family(b"db.sqlite.lockbit").unwrap().1,
            "LockBit"
        );
        assert_eq!(ransomware_family(b"a.RYK").unwrap().1, "Ryuk");
        assert!(ransomware_family(b"report.docx").is_none());
        assert!(ransomware_family(b"wncry").is_none(), "no extension");
        assert!(ransomware_family(b".locky").is_none(), "a dotfile");
        assert!(ransomware_family(b"notes.locky.txt").is_none());
        assert!(ransomware_family(b"archive.locked").is_none());
    }
}
