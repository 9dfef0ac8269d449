//! A reader for Windows registry hives (the `regf` format of
//! `System32/config/SOFTWARE`, `SYSTEM` and each user's `NTUSER.DAT`),
//! just enough to list a key's subkeys and values. A hive comes from a
//! snapshot, so it is hostile input: every offset is checked against the
//! hive's data, lists and names are bounded, and a damaged hive gives an
//! error, never a panic. Written here because the maintained readers are
//! GPL-licensed (nt-hive) or pull in a large tree for this small need.

/// Hive files larger than this are not read.
pub const MAX_HIVE: u64 = 256 << 20;
/// Subkeys or values listed per key.
const MAX_LIST: usize = 1 << 16;
/// Bytes of one value's data.
const MAX_VALUE: usize = 1 << 16;
/// Base block size; cell offsets count from its end.
const BASE: usize = 4096;

pub struct Hive<'a> {
    data: &'a [u8],
    root: u32,
    /// Value bytes still to be handed out. A real hive's values add up to
    /// less than the hive; a crafted one whose keys all list one large
    /// value would otherwise be copied out once per key and per listing.
    data_budget: std::cell::Cell<usize>,
}

/// A value: its name, type and data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Value {
    pub name: String,
    pub kind: u32,
    pub data: Vec<u8>,
}

pub const REG_SZ: u32 = 1;
pub const REG_EXPAND_SZ: u32 = 2;
pub const REG_DWORD: u32 = 4;

impl Value {
    /// The data as text (strings), a number (DWORD), or hex.
    pub fn display(&self) -> String {
        match self.kind {
            REG_SZ | REG_EXPAND_SZ => utf16(&self.data),
            REG_DWORD if self.data.len() >= 4 => u32le(&self.data, 0).unwrap_or(0).to_string(),
            _ => hex_short(&self.data),
        }
    }
}

fn hex_short(d: &[u8]) -> String {
    let mut s: String = d.iter().take(32).map(|b| format!("{b:02x}")).collect();
    if d.len() > 32 {
        s.push('…');
    }
    s
}

fn utf16(d: &[u8]) -> String {
    let units: Vec<u16> = d
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .take_while(|&u| u != 0)
        .collect();
    String::from_utf16_lossy(&units)
}

fn u16le(d: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(d.get(at..at + 2)?.try_into().ok()?))
}

fn u32le(d: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(d.get(at..at + 4)?.try_into().ok()?))
}

type R<T> = Result<T, String>;

impl<'a> Hive<'a> {
    pub fn parse(data: &'a [u8]) -> R<Hive<'a>> {
        if data.len() < BASE + 32 || &data[..4] != b"regf" {
            return Err("not a registry hive (no regf header)".into());
        }
        let root = u32le(data, 0x24).ok_or("short header")?;
        let hive = Hive {
            data,
            root,
            data_budget: std::cell::Cell::new(data.len().saturating_mul(4)),
        };
        hive.key_node(root)?;
        Ok(hive)
    }

    /// The cell at `off`: its payload (after the size field).
    fn cell(&self, off: u32) -> R<&'a [u8]> {
        let start = BASE
            .checked_add(off as usize)
            .ok_or("cell offset overflows")?;
        let size =
            u32le(self.data, start).ok_or_else(|| format!("cell {off:#x} outside the hive"))?;
        // Allocated cells have a negative size.
        let size = (size as i32).unsigned_abs() as usize;
        if size < 8 {
            return Err(format!("cell {off:#x} has size {size}"));
        }
        self.data
            .get(start + 4..start + size)
            .ok_or_else(|| format!("cell {off:#x} runs past the hive"))
    }

    fn key_node(&self, off: u32) -> R<&'a [u8]> {
        let nk = self.cell(off)?;
        if nk.get(..2) != Some(b"nk") || nk.len() < 0x4C {
            return Err(format!("cell {off:#x} is not a key"));
        }
        Ok(nk)
    }

    fn name_of(nk: &[u8]) -> R<String> {
        let len = u16le(nk, 0x48).ok_or("short key")? as usize;
        let raw = nk
            .get(0x4C..0x4C + len)
            .ok_or("key name runs past its cell")?;
        // Flag 0x20: the name is stored as Latin-1, else UTF-16LE.
        Ok(if u16le(nk, 2).unwrap_or(0) & 0x20 != 0 {
            raw.iter().map(|&b| b as char).collect()
        } else {
            utf16(raw)
        })
    }

    /// Offsets of the subkeys of key `nk` (lf, lh, li and one level of ri).
    fn subkey_offsets(&self, nk: &[u8]) -> R<Vec<u32>> {
        let count = u32le(nk, 0x14).ok_or("short key")? as usize;
        if count == 0 {
            return Ok(vec![]);
        }
        if count > MAX_LIST {
            return Err(format!("{count} subkeys"));
        }
        let list = u32le(nk, 0x1C).ok_or("short key")?;
        let mut out = Vec::with_capacity(count);
        self.list_into(list, &mut out, 0)?;
        Ok(out)
    }

    fn list_into(&self, off: u32, out: &mut Vec<u32>, depth: u32) -> R<()> {
        let cell = self.cell(off)?;
        let n = u16le(cell, 2).ok_or("short list")? as usize;
        match cell.get(..2) {
            Some(b"lf") | Some(b"lh") => {
                for i in 0..n {
                    out.push(u32le(cell, 4 + i * 8).ok_or("list runs past its cell")?);
                }
            }
            Some(b"li") => {
                for i in 0..n {
                    out.push(u32le(cell, 4 + i * 4).ok_or("list runs past its cell")?);
                }
            }
            Some(b"ri") if depth == 0 => {
                for i in 0..n {
                    let sub = u32le(cell, 4 + i * 4).ok_or("list runs past its cell")?;
                    self.list_into(sub, out, 1)?;
                }
            }
            _ => return Err(format!("cell {off:#x} is not a subkey list")),
        }
        if out.len() > MAX_LIST {
            return Err("too many subkeys".into());
        }
        Ok(())
    }

    /// The offset of the key at `path` (names compared without case).
    pub fn find(&self, path: &[&str]) -> R<Option<u32>> {
        let mut at = self.root;
        for part in path {
            let nk = self.key_node(at)?;
            let mut next = None;
            for sub in self.subkey_offsets(nk)? {
                let child = self.key_node(sub)?;
                if Self::name_of(child)?.eq_ignore_ascii_case(part) {
                    next = Some(sub);
                    break;
                }
            }
            match next {
                Some(n) => at = n,
                None => return Ok(None),
            }
        }
        Ok(Some(at))
    }

    /// Names and offsets of a key's subkeys.
    pub fn subkeys(&self, key: u32) -> R<Vec<(String, u32)>> {
        let nk = self.key_node(key)?;
        self.subkey_offsets(nk)?
            .into_iter()
            .map(|o| Ok((Self::name_of(self.key_node(o)?)?, o)))
            .collect()
    }

    /// A key's values (data over 64 KiB, or kept in big-data cells, is
    /// left empty).
    pub fn values(&self, key: u32) -> R<Vec<Value>> {
        let nk = self.key_node(key)?;
        let count = u32le(nk, 0x24).ok_or("short key")? as usize;
        if count == 0 {
            return Ok(vec![]);
        }
        if count > MAX_LIST {
            return Err(format!("{count} values"));
        }
        let list = self.cell(u32le(nk, 0x28).ok_or("short key")?)?;
        let mut out = Vec::with_capacity(count);
        let mut seen = std::collections::HashSet::new();
        for i in 0..count {
            let vk_off = u32le(list, i * 4).ok_or("value list runs past its cell")?;
            if !seen.insert(vk_off) {
                continue; // a real key lists each value once
            }
            let vk = self.cell(vk_off)?;
            if vk.get(..2) != Some(b"vk") || vk.len() < 0x14 {
                return Err(format!("cell {vk_off:#x} is not a value"));
            }
            let name_len = u16le(vk, 2).ok_or("short value")? as usize;
            let size = u32le(vk, 4).ok_or("short value")?;
            let data_off = u32le(vk, 8).ok_or("short value")?;
            let kind = u32le(vk, 0xC).ok_or("short value")?;
            let flags = u16le(vk, 0x10).ok_or("short value")?;
            let raw = vk
                .get(0x14..0x14 + name_len)
                .ok_or("value name runs past its cell")?;
            let name = if flags & 1 != 0 {
                raw.iter().map(|&b| b as char).collect()
            } else {
                utf16(raw)
            };
            // High bit: up to four bytes of data kept in the offset field.
            let data = if size & 0x8000_0000 != 0 {
                let n = (size & 0x7FFF_FFFF).min(4) as usize;
                data_off.to_le_bytes()[..n].to_vec()
            } else if size as usize > MAX_VALUE || size as usize > self.data_budget.get() {
                Vec::new()
            } else {
                self.data_budget.set(self.data_budget.get() - size as usize);
                let cell = self.cell(data_off)?;
                match cell.get(..size as usize) {
                    Some(d) if cell.get(..2) != Some(b"db") => d.to_vec(),
                    _ => Vec::new(),
                }
            };
            out.push(Value { name, kind, data });
        }
        Ok(out)
    }
}

#[cfg(test)]
pub(crate) mod testhive {
    //! A hive writer for tests (the reader's counterpart; real tools
    //! cross-check it in the integration tests).

    pub struct Key {
        pub name: String,
        pub values: Vec<(String, u32, Vec<u8>)>,
        pub subkeys: Vec<Key>,
    }

    pub fn sz(s: &str) -> Vec<u8> {
        s.encode_utf16()
            .chain([0])
            .flat_map(|u| u.to_le_bytes())
            .collect()
    }

    struct W {
        bin: Vec<u8>,
    }

    impl W {
        fn cell(&mut self, payload: &[u8]) -> u32 {
            let off = self.bin.len() as u32;
            let size = (payload.len() + 4).div_ceil(8) * 8;
            self.bin.extend_from_slice(&(-(size as i32)).to_le_bytes());
            self.bin.extend_from_slice(payload);
            self.bin.resize(off as usize + size, 0);
            off
        }

        fn key(&mut self, k: &Key, parent: u32) -> u32 {
            let subs: Vec<u32> = k.subkeys.iter().map(|s| self.key(s, 0)).collect();
            let list = if subs.is_empty() {
                u32::MAX
            } else {
                let mut lf = b"lf".to_vec();
                lf.extend_from_slice(&(subs.len() as u16).to_le_bytes());
                for s in &subs {
                    lf.extend_from_slice(&s.to_le_bytes());
                    lf.extend_from_slice(&[0; 4]);
                }
                self.cell(&lf)
            };
            let vks: Vec<u32> = k
                .values
                .iter()
                .map(|(name, kind, data)| {
                    let (size, off) = if data.len() <= 4 {
                        let mut b = [0u8; 4];
                        b[..data.len()].copy_from_slice(data);
                        (data.len() as u32 | 0x8000_0000, u32::from_le_bytes(b))
                    } else {
                        (data.len() as u32, self.cell(data))
                    };
                    let mut vk = b"vk".to_vec();
                    vk.extend_from_slice(&(name.len() as u16).to_le_bytes());
                    vk.extend_from_slice(&size.to_le_bytes());
                    vk.extend_from_slice(&off.to_le_bytes());
                    vk.extend_from_slice(&kind.to_le_bytes());
                    vk.extend_from_slice(&1u16.to_le_bytes());
                    vk.extend_from_slice(&[0; 2]);
                    vk.extend_from_slice(name.as_bytes());
                    self.cell(&vk)
                })
                .collect();
            let vlist = if vks.is_empty() {
                u32::MAX
            } else {
                let b: Vec<u8> = vks.iter().flat_map(|v| v.to_le_bytes()).collect();
                self.cell(&b)
            };
            let mut nk = vec![0u8; 0x4C];
            nk[..2].copy_from_slice(b"nk");
            nk[2..4].copy_from_slice(&0x20u16.to_le_bytes());
            nk[0x10..0x14].copy_from_slice(&parent.to_le_bytes());
            nk[0x14..0x18].copy_from_slice(&(subs.len() as u32).to_le_bytes());
            nk[0x1C..0x20].copy_from_slice(&list.to_le_bytes());
            nk[0x20..0x24].copy_from_slice(&u32::MAX.to_le_bytes());
            nk[0x24..0x28].copy_from_slice(&(vks.len() as u32).to_le_bytes());
            nk[0x28..0x2C].copy_from_slice(&vlist.to_le_bytes());
            nk[0x2C..0x30].copy_from_slice(&u32::MAX.to_le_bytes());
            nk[0x30..0x34].copy_from_slice(&u32::MAX.to_le_bytes());
            nk[0x48..0x4A].copy_from_slice(&(k.name.len() as u16).to_le_bytes());
            nk.extend_from_slice(k.name.as_bytes());
            self.cell(&nk)
        }
    }

    pub fn write(root: &Key) -> Vec<u8> {
        let mut w = W { bin: vec![0; 32] };
        let root_off = w.key(root, u32::MAX);
        let size = w.bin.len().div_ceil(4096) * 4096;
        w.bin.resize(size, 0);
        w.bin[..4].copy_from_slice(b"hbin");
        w.bin[8..12].copy_from_slice(&(size as u32).to_le_bytes());
        let mut base = vec![0u8; 4096];
        base[..4].copy_from_slice(b"regf");
        base[0x24..0x28].copy_from_slice(&root_off.to_le_bytes());
        base[0x28..0x2C].copy_from_slice(&(size as u32).to_le_bytes());
        base.extend_from_slice(&w.bin);
        base
    }
}

#[cfg(test)]
mod tests {
    use super::testhive::{Key, sz, write};
    use super::*;

    fn key(name: &str, values: Vec<(String, u32, Vec<u8>)>, subkeys: Vec<Key>) -> Key {
        Key {
            name: name.into(),
            values,
            subkeys,
        }
    }

    #[test]
    fn keys_and_values_are_found_by_path_without_case() {
        let run = key(
            "Run",
            vec![
                ("Updater".into(), REG_SZ, sz(r"C:\Users\Public\upd.exe")),
                ("Start".into(), REG_DWORD, 2u32.to_le_bytes().to_vec()),
            ],
            vec![],
        );
        let hive = write(&key(
            "ROOT",
            vec![],
            vec![key(
                "Microsoft",
                vec![],
                vec![key("Windows", vec![], vec![run])],
            )],
        ));
        let h = Hive::parse(&hive).unwrap();
        let k = h.find(&["microsoft", "WINDOWS", "run"]).unwrap().unwrap();
        let v = h.values(k).unwrap();
        assert_eq!(v.len(), 2);
        assert_eq!(v[0].name, "Updater");
        assert_eq!(v[0].display(), r"C:\Users\Public\upd.exe");
        assert_eq!(v[1].display(), "2");
        assert_eq!(h.find(&["Microsoft", "Nope"]).unwrap(), None);
        let subs = h.subkeys(h.find(&["Microsoft"]).unwrap().unwrap()).unwrap();
        assert_eq!(subs.len(), 1);
        assert_eq!(subs[0].0, "Windows");
    }

    /// Hundreds of values whose data all point at one 60 KB cell: what is
    /// copied out stays within a small multiple of the hive's size, not
    /// hundreds of times the cell.
    #[test]
    fn values_sharing_one_big_data_cell_are_bounded() {
        let mut values = vec![("big".to_string(), 3u32, vec![0xAB; 60_000])];
        values.extend((0..300).map(|i| (format!("v{i}"), 3u32, vec![1u8; 8])));
        let mut hive = write(&key("ROOT", values, vec![]));
        let h = Hive::parse(&hive).unwrap();
        let root = h.root;
        let nk = h.key_node(root).unwrap();
        let list_off = u32le(nk, 0x28).unwrap();
        let list = h.cell(list_off).unwrap();
        let vks: Vec<u32> = (0..301).map(|i| u32le(list, i * 4).unwrap()).collect();
        // Payload of a cell: after its 4-byte size field.
        let at = |off: u32| BASE + off as usize + 4;
        let big_data = u32le(&hive, at(vks[0]) + 8).unwrap();
        for &vk in &vks[1..] {
            let p = at(vk);
            hive[p + 4..p + 8].copy_from_slice(&60_000u32.to_le_bytes());
            hive[p + 8..p + 12].copy_from_slice(&big_data.to_le_bytes());
        }
        let h = Hive::parse(&hive).unwrap();
        let got = h.values(h.root).unwrap();
        assert_eq!(got.len(), 301);
        assert_eq!(got[0].data.len(), 60_000, "the real value keeps its data");
        let total: usize = got.iter().map(|v| v.data.len()).sum();
        assert!(
            got[1].data.len() == 60_000,
            "the first copies fit the budget"
        );
        assert!(
            total <= 4 * hive.len(),
            "{total} bytes copied out of a {}-byte hive",
            hive.len()
        );
    }

    #[test]
    fn damaged_hives_are_errors_not_panics() {
        let hive = write(&key(
            "ROOT",
            vec![("x".into(), REG_SZ, sz("some longer data"))],
            vec![key("A", vec![], vec![])],
        ));
        assert!(Hive::parse(&hive[..100]).is_err());
        // Every single-byte corruption of the cells either parses or
        // fails cleanly.
        for i in BASE..hive.len() {
            for b in [0x00, 0xFF, 0x7F] {
                let mut h = hive.clone();
                h[i] = b;
                if let Ok(p) = Hive::parse(&h) {
                    let _ = p.values(p.root);
                    let _ = p.find(&["A"]);
                }
            }
        }
    }
}
