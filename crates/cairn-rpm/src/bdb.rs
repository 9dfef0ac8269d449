//! The values of a Berkeley DB hash database: what `/var/lib/rpm/Packages`
//! is on systems before rpm 4.16 (CentOS/RHEL 7 and 8, older SUSE),
//! each value one package's header. Every page is walked in order (no
//! bucket arithmetic), values are taken from in-page items and from
//! overflow chains, with every offset checked and chains bounded: the
//! file is guest data. Written here: no maintained crate reads the
//! format without linking Berkeley DB itself.

/// Page types (db_page.h).
const P_HASH_UNSORTED: u8 = 2;
const P_OVERFLOW: u8 = 7;
const P_HASH: u8 = 13;
/// Item types on hash pages.
const H_KEYDATA: u8 = 1;
const H_OFFPAGE: u8 = 3;
const HASH_MAGIC: u32 = 0x0006_1561;
/// The page header's size.
const HEADER: usize = 26;
/// Largest value assembled from an overflow chain.
const MAX_VALUE: usize = 16 << 20;

struct Db<'a> {
    data: &'a [u8],
    page_size: usize,
    big_endian: bool,
}

impl Db<'_> {
    fn u16(&self, at: usize) -> Option<u16> {
        let b: [u8; 2] = self.data.get(at..at + 2)?.try_into().ok()?;
        Some(if self.big_endian {
            u16::from_be_bytes(b)
        } else {
            u16::from_le_bytes(b)
        })
    }

    fn u32(&self, at: usize) -> Option<u32> {
        let b: [u8; 4] = self.data.get(at..at + 4)?.try_into().ok()?;
        Some(if self.big_endian {
            u32::from_be_bytes(b)
        } else {
            u32::from_le_bytes(b)
        })
    }

    fn page(&self, n: u32) -> Option<usize> {
        let start = (n as usize).checked_mul(self.page_size)?;
        (start + self.page_size <= self.data.len()).then_some(start)
    }

    /// The bytes of an overflow chain starting at page `first`.
    fn overflow(&self, first: u32, total: usize) -> Option<Vec<u8>> {
        if total > MAX_VALUE {
            return None;
        }
        let mut out = Vec::with_capacity(total);
        let mut next = first;
        let pages = self.data.len() / self.page_size;
        for _ in 0..pages {
            let p = self.page(next)?;
            if self.data[p + 25] != P_OVERFLOW {
                return None;
            }
            // On an overflow page the free-area offset holds its length.
            let len = self.u16(p + 22)? as usize;
            out.extend_from_slice(self.data.get(p + HEADER..p + HEADER + len)?);
            if out.len() >= total {
                out.truncate(total);
                return Some(out);
            }
            next = self.u32(p + 16)?;
            if next == 0 {
                break;
            }
        }
        None
    }
}

/// Every value in the database (keys are dropped), at most `max`.
pub fn values(data: &[u8], max: usize) -> Result<Vec<Vec<u8>>, String> {
    if data.len() < 512 {
        return Err("too short for a Berkeley DB file".into());
    }
    let magic = u32::from_le_bytes(data[12..16].try_into().expect("4 bytes"));
    let big_endian = match magic {
        HASH_MAGIC => false,
        m if m.swap_bytes() == HASH_MAGIC => true,
        _ => return Err("not a Berkeley DB hash database".into()),
    };
    let mut db = Db {
        data,
        page_size: 0,
        big_endian,
    };
    let page_size = db.u32(20).ok_or("short metadata page")? as usize;
    if !(512..=65536).contains(&page_size) || !page_size.is_power_of_two() {
        return Err(format!("page size {page_size}"));
    }
    db.page_size = page_size;
    let mut out: Vec<Vec<u8>> = Vec::new();
    // A real database stores each value once, so its values add up to
    // less than the file: a crafted one whose items all point at one long
    // overflow chain would otherwise assemble terabytes.
    let mut budget = data.len();
    let mut chains = std::collections::HashSet::new();
    for n in 1..(data.len() / page_size) as u32 {
        let p = db.page(n).ok_or("page past the end")?;
        let kind = data[p + 25];
        if kind != P_HASH && kind != P_HASH_UNSORTED {
            continue;
        }
        let entries = db.u16(p + 20).ok_or("short page")? as usize;
        if HEADER + entries * 2 > page_size {
            continue; // a damaged page: its neighbours may still be fine
        }
        let offset = |i: usize| db.u16(p + HEADER + i * 2).map(|o| o as usize);
        // Items are pairs (key, value); an item ends where the one
        // before it in the index begins (items fill the page from its end).
        for i in (1..entries).step_by(2) {
            let (Some(start), Some(end)) = (
                offset(i),
                if i == 0 {
                    Some(page_size)
                } else {
                    offset(i - 1)
                },
            ) else {
                continue;
            };
            if start < HEADER || start >= page_size || end > page_size || end <= start {
                continue;
            }
            let item = &data[p + start..p + end];
            let value = match item[0] {
                H_KEYDATA => Some(item[1..].to_vec()),
                H_OFFPAGE if item.len() >= 12 => {
                    let first = db.u32(p + start + 4).ok_or("short item")?;
                    let total = db.u32(p + start + 8).ok_or("short item")? as usize;
                    if total <= budget && chains.insert(first) {
                        db.overflow(first, total)
                    } else {
                        None
                    }
                }
                _ => None,
            };
            if let Some(v) = value {
                match budget.checked_sub(v.len()) {
                    Some(left) => budget = left,
                    None => return Ok(out),
                }
                out.push(v);
            }
            if out.len() >= max {
                return Ok(out);
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Twenty values on one hash page all point at one overflow page that
    /// chains to itself: without a bound they would assemble twenty times
    /// what the file holds (terabytes from a crafted `Packages`).
    #[test]
    fn values_never_add_up_to_more_than_the_file() {
        const PS: usize = 512;
        let mut d = vec![0u8; 4 * PS];
        d[12..16].copy_from_slice(&HASH_MAGIC.to_le_bytes());
        d[20..24].copy_from_slice(&(PS as u32).to_le_bytes());
        let p = PS;
        d[p + 25] = P_HASH;
        let n = 20usize;
        d[p + 20..p + 22].copy_from_slice(&((2 * n) as u16).to_le_bytes());
        let chunk = PS - HEADER;
        let mut end = PS;
        for k in 0..n {
            let key = end - 2;
            d[p + key] = H_KEYDATA;
            d[p + key + 1] = b'k';
            let value = key - 12;
            d[p + value] = H_OFFPAGE;
            d[p + value + 4..p + value + 8].copy_from_slice(&2u32.to_le_bytes());
            d[p + value + 8..p + value + 12].copy_from_slice(&((4 * chunk) as u32).to_le_bytes());
            let idx = p + HEADER + 4 * k;
            d[idx..idx + 2].copy_from_slice(&(key as u16).to_le_bytes());
            d[idx + 2..idx + 4].copy_from_slice(&(value as u16).to_le_bytes());
            end = value;
        }
        let o = 2 * PS;
        d[o + 25] = P_OVERFLOW;
        d[o + 22..o + 24].copy_from_slice(&(chunk as u16).to_le_bytes());
        d[o + 16..o + 20].copy_from_slice(&2u32.to_le_bytes());
        let v = values(&d, 1000).unwrap();
        assert_eq!(v.len(), 1, "the chain is assembled once");
        assert!(v.iter().map(Vec::len).sum::<usize>() <= d.len());
    }
}
