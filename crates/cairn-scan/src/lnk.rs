//! Windows shortcuts (`.lnk`, the Shell Link format of MS-SHLLINK): what a
//! shortcut dropped into a Startup folder starts, so the finding can name
//! the program and its arguments. Our own reader rather than the `lnk`
//! crate, which brings binrw, encoding_rs and more (some 300K lines of
//! dependencies by lib.rs' count) for the three strings needed here:
//! every size, offset and count is checked against the file, and strings
//! are capped.

/// What a shortcut starts.
#[derive(Debug, Default, PartialEq)]
pub struct Shortcut {
    /// The program or document (as the shortcut names it: a path, a UNC
    /// path, or one with `%VARIABLES%`).
    pub target: Option<String>,
    pub arguments: Option<String>,
    pub working_dir: Option<String>,
}

const HEADER_SIZE: usize = 0x4C;
/// The class id every shell link carries, {00021401-0000-0000-C000-000000000046}.
const LINK_CLSID: [u8; 16] = [
    0x01, 0x14, 0x02, 0x00, 0x00, 0x00, 0x00, 0x00, 0xC0, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x46,
];

const HAS_ID_LIST: u32 = 0x1;
const HAS_LINK_INFO: u32 = 0x2;
const HAS_NAME: u32 = 0x4;
const HAS_RELATIVE_PATH: u32 = 0x8;
const HAS_WORKING_DIR: u32 = 0x10;
const HAS_ARGUMENTS: u32 = 0x20;
const HAS_ICON_LOCATION: u32 = 0x40;
const IS_UNICODE: u32 = 0x80;
const FORCE_NO_LINK_INFO: u32 = 0x100;

/// The extra-data block holding the target with environment variables.
const ENVIRONMENT_BLOCK: u32 = 0xA000_0001;
/// Longest string kept (characters); a shortcut's strings are short.
const MAX_CHARS: usize = 1024;
/// Most ID list items followed.
const MAX_ITEMS: usize = 64;

fn u16_at(d: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(
        d.get(at..at.checked_add(2)?)?.try_into().ok()?,
    ))
}

fn u32_at(d: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(
        d.get(at..at.checked_add(4)?)?.try_into().ok()?,
    ))
}

fn capped(s: String) -> String {
    s.chars().take(MAX_CHARS).collect()
}

/// A NUL-terminated single-byte string at `at` (Windows' ANSI code page;
/// read as UTF-8 where it is, byte for byte otherwise).
fn cstr(d: &[u8], at: usize) -> Option<String> {
    let rest = d.get(at..)?;
    let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
    Some(capped(String::from_utf8_lossy(&rest[..end]).into_owned()))
}

/// The UTF-16LE code units of `bytes`.
fn utf16le_units(bytes: &[u8]) -> impl Iterator<Item = u16> + '_ {
    bytes
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
}

/// Text from UTF-16 code units, at most [`MAX_CHARS`] of them.
fn utf16_text(units: impl Iterator<Item = u16>) -> String {
    char::decode_utf16(units.take(MAX_CHARS))
        .map(|c| c.unwrap_or(char::REPLACEMENT_CHARACTER))
        .collect()
}

/// A NUL-terminated UTF-16LE string at `at`.
fn wstr(d: &[u8], at: usize) -> Option<String> {
    Some(utf16_text(
        utf16le_units(d.get(at..)?).take_while(|&u| u != 0),
    ))
}

fn non_empty(s: Option<String>) -> Option<String> {
    s.filter(|s| !s.is_empty())
}

/// Reads a shortcut; `None` when `data` is not one.
pub fn parse(data: &[u8]) -> Option<Shortcut> {
    if u32_at(data, 0)? != HEADER_SIZE as u32 || data.get(4..20)? != LINK_CLSID {
        return None;
    }
    let flags = u32_at(data, 0x14)?;
    let mut pos = HEADER_SIZE;
    let mut id_path = None;
    if flags & HAS_ID_LIST != 0 {
        let size = u16_at(data, pos)? as usize;
        id_path = id_list_path(data.get(pos + 2..pos + 2 + size)?);
        pos += 2 + size;
    }
    let (mut local, mut network) = (None, None);
    if flags & HAS_LINK_INFO != 0 {
        let size = u32_at(data, pos)? as usize;
        let info = data.get(pos..pos.checked_add(size)?)?;
        if flags & FORCE_NO_LINK_INFO == 0 {
            (local, network) = link_info_paths(info);
        }
        pos += size;
    }
    let unicode = flags & IS_UNICODE != 0;
    let mut strings = [None, None, None, None, None];
    let bits = [
        HAS_NAME,
        HAS_RELATIVE_PATH,
        HAS_WORKING_DIR,
        HAS_ARGUMENTS,
        HAS_ICON_LOCATION,
    ];
    for (slot, bit) in strings.iter_mut().zip(bits) {
        if flags & bit == 0 {
            continue;
        }
        let chars = u16_at(data, pos)? as usize;
        let len = if unicode { chars * 2 } else { chars };
        let raw = data.get(pos + 2..pos + 2 + len)?;
        *slot = Some(capped(if unicode {
            utf16_text(utf16le_units(raw))
        } else {
            String::from_utf8_lossy(raw).into_owned()
        }));
        pos += 2 + len;
    }
    let [_, relative, working_dir, arguments, _] = strings;
    let env_target = environment_target(data.get(pos..).unwrap_or_default());
    let target = [env_target, local, network, id_path, relative]
        .into_iter()
        .find_map(non_empty);
    Some(Shortcut {
        target,
        arguments: non_empty(arguments),
        working_dir: non_empty(working_dir),
    })
}

/// The LinkInfo structure's local path (base path and suffix) and network
/// path (share name and suffix).
fn link_info_paths(info: &[u8]) -> (Option<String>, Option<String>) {
    let field = |at: usize| u32_at(info, at).map(|v| v as usize);
    let (Some(header), Some(flags)) = (field(4), field(8)) else {
        return (None, None);
    };
    let unicode_offsets = header >= 0x24;
    let suffix = if unicode_offsets {
        field(32).filter(|&o| o != 0).and_then(|o| wstr(info, o))
    } else {
        None
    }
    .or_else(|| field(24).and_then(|o| cstr(info, o)))
    .unwrap_or_default();
    let join = |base: String| {
        if suffix.is_empty() || base.ends_with('\\') {
            format!("{base}{suffix}")
        } else {
            format!("{base}\\{suffix}")
        }
    };
    let local = (flags & 1 != 0)
        .then(|| {
            if unicode_offsets {
                field(28).filter(|&o| o != 0).and_then(|o| wstr(info, o))
            } else {
                None
            }
            .or_else(|| field(16).and_then(|o| cstr(info, o)))
        })
        .flatten()
        .filter(|s| !s.is_empty())
        .map(join);
    let network = (flags & 2 != 0)
        .then(|| {
            let link = field(20)?;
            let net_name = u32_at(info, link.checked_add(8)?)? as usize;
            cstr(info, link.checked_add(net_name)?)
        })
        .flatten()
        .filter(|s| !s.is_empty())
        .map(join);
    (local, network)
}

/// The path an ID list spells: its drive item and the names of its file
/// and folder items (the short names every item carries).
fn id_list_path(list: &[u8]) -> Option<String> {
    let mut parts: Vec<String> = Vec::new();
    let mut pos = 0;
    for _ in 0..MAX_ITEMS {
        let size = u16_at(list, pos)? as usize;
        if size < 2 {
            break;
        }
        let item = list.get(pos + 2..pos + size)?;
        pos += size;
        let Some(&kind) = item.first() else { continue };
        match kind & 0x70 {
            // A drive: "C:\".
            0x20 => {
                if let Some(d) = cstr(item, 1) {
                    parts.push(d.trim_end_matches('\\').to_string());
                }
            }
            // A file or folder: type, flags, size, date, attributes, name.
            0x30 => {
                let name = if kind & 0x04 != 0 {
                    wstr(item, 12)
                } else {
                    cstr(item, 12)
                };
                if let Some(n) = name.filter(|n| !n.is_empty()) {
                    parts.push(n);
                }
            }
            _ => {}
        }
    }
    (!parts.is_empty()).then(|| parts.join("\\"))
}

/// The target in an EnvironmentVariableDataBlock, if the extra data holds
/// one (Unicode form first).
fn environment_target(extra: &[u8]) -> Option<String> {
    let mut pos = 0;
    for _ in 0..MAX_ITEMS {
        let size = u32_at(extra, pos)? as usize;
        if size < 8 {
            return None;
        }
        let block = extra.get(pos..pos.checked_add(size)?)?;
        if u32_at(block, 4)? == ENVIRONMENT_BLOCK {
            return non_empty(block.get(268..788).and_then(|w| wstr(w, 0)))
                .or_else(|| non_empty(block.get(8..268).and_then(|a| cstr(a, 0))));
        }
        pos += size;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A shortcut with a LinkInfo local path and ANSI strings, laid out by
    /// hand after MS-SHLLINK 2.1–2.4.
    fn with_link_info(base: &str, suffix: &str, args: &str) -> Vec<u8> {
        let mut d = vec![0u8; HEADER_SIZE];
        d[0] = HEADER_SIZE as u8;
        d[4..20].copy_from_slice(&LINK_CLSID);
        let flags = HAS_LINK_INFO | HAS_ARGUMENTS;
        d[0x14..0x18].copy_from_slice(&flags.to_le_bytes());
        let header = 0x1C;
        let base_at = header;
        let suffix_at = base_at + base.len() + 1;
        let size = suffix_at + suffix.len() + 1;
        for v in [size, header, 1, 0, base_at, 0, suffix_at] {
            d.extend_from_slice(&(v as u32).to_le_bytes());
        }
        d.extend_from_slice(base.as_bytes());
        d.push(0);
        d.extend_from_slice(suffix.as_bytes());
        d.push(0);
        d.extend_from_slice(&(args.len() as u16).to_le_bytes());
        d.extend_from_slice(args.as_bytes());
        d.extend_from_slice(&0u32.to_le_bytes());
        d
    }

    #[test]
    fn reads_the_local_path_and_arguments() {
        let d = with_link_info("C:\\Users\\Public\\", "svc.exe", "-k netsvcs");
        assert_eq!(
            parse(&d),
            Some(Shortcut {
                target: Some("C:\\Users\\Public\\svc.exe".into()),
                arguments: Some("-k netsvcs".into()),
                working_dir: None,
            })
        );
    }

    #[test]
    fn refuses_what_is_not_a_shortcut_and_survives_every_cut() {
        assert_eq!(parse(b"@echo off\r\n"), None);
        let d = with_link_info("C:\\Windows\\", "x.exe", "/q");
        for n in 0..d.len() {
            let _ = parse(&d[..n]);
        }
        // Sizes and offsets pointing past the end.
        let mut bad = d.clone();
        bad[HEADER_SIZE..HEADER_SIZE + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(parse(&bad), None);
        let mut bad = d;
        bad[HEADER_SIZE + 16..HEADER_SIZE + 20].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(parse(&bad).and_then(|s| s.target), None);
    }
}
