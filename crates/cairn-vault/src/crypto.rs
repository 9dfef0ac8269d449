//! Keys and authenticated encryption.
//!
//! A random master key encrypts everything; it is stored only wrapped by a
//! key derived from a passphrase with Argon2id, one key file per passphrase.
//! Objects are sealed with AES-256-GCM (AES-NI makes it two to three times
//! faster than ChaCha20-Poly1305 here; ring's implementation) under a key derived for each object
//! from 16 random bytes, with a random 12-byte nonce: 28 random bytes per
//! object, so nonces never repeat under one key in practice.

use crate::error::{Error, Result};
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use serde::{Deserialize, Serialize};

const SEAL_VERSION: u8 = 1;
const SALT_LEN: usize = 16;
const NONCE_LEN: usize = 12;
/// Room a buffer needs at its front for [`Cipher::seal_in_place`].
pub const HEADER_LEN: usize = 1 + SALT_LEN + NONCE_LEN;
/// Bytes a sealed object has beyond its plaintext.
pub const SEAL_OVERHEAD: usize = HEADER_LEN + 16;

/// The vault's secrets: one key for encryption, one for content ids.
pub struct MasterKey {
    pub encryption: [u8; 32],
    pub id: [u8; 32],
}

impl MasterKey {
    pub fn generate() -> Result<Self> {
        Ok(MasterKey {
            encryption: random_array()?,
            id: random_array()?,
        })
    }

    fn to_bytes(&self) -> Vec<u8> {
        [self.encryption.as_slice(), self.id.as_slice()].concat()
    }

    /// A value derived from the key that names it without revealing it:
    /// the config records it, so that a key file that opens with the
    /// password but wraps another master key (one an interrupted `init`
    /// left behind) is not taken for the vault's.
    pub fn check(&self) -> String {
        let d = blake3::derive_key("cairn 2026 vault master key check", &self.to_bytes());
        hex::encode(&d[..16])
    }

    /// A keyed digest of `data` with this key (what a config's binding is).
    pub fn mac(&self, context: &str, data: &[u8]) -> [u8; 32] {
        let key = blake3::derive_key(context, &self.to_bytes());
        *blake3::keyed_hash(&key, data).as_bytes()
    }

    fn from_bytes(b: &[u8]) -> Option<Self> {
        if b.len() != 64 {
            return None;
        }
        Some(MasterKey {
            encryption: b[..32].try_into().ok()?,
            id: b[32..].try_into().ok()?,
        })
    }
}

pub fn random_array<const N: usize>() -> Result<[u8; N]> {
    let mut a = [0u8; N];
    getrandom::fill(&mut a)
        .map_err(|e| Error::Invalid(format!("no randomness from the OS: {e}")))?;
    Ok(a)
}

pub struct Cipher {
    key: [u8; 32],
}

impl Cipher {
    pub fn new(key: &[u8; 32]) -> Self {
        Cipher { key: *key }
    }

    fn object_key(&self, salt: &[u8]) -> [u8; 32] {
        *blake3::keyed_hash(&self.key, salt).as_bytes()
    }

    /// `[version][salt][nonce][ciphertext + tag]`
    pub fn seal(&self, plaintext: &[u8]) -> Result<Vec<u8>> {
        let mut buf = Vec::with_capacity(SEAL_OVERHEAD + plaintext.len());
        buf.resize(HEADER_LEN, 0);
        buf.extend_from_slice(plaintext);
        self.seal_in_place(buf)
    }

    /// Seals `buf[HEADER_LEN..]` where it lies: the first `HEADER_LEN`
    /// bytes are room for the header. Saves a copy of every chunk.
    pub fn seal_in_place(&self, mut buf: Vec<u8>) -> Result<Vec<u8>> {
        if buf.len() < HEADER_LEN {
            return Err(Error::Invalid("no room for the seal header".into()));
        }
        let header: [u8; SALT_LEN + NONCE_LEN] = random_array()?;
        let nonce: [u8; NONCE_LEN] = header[SALT_LEN..].try_into().expect("split");
        buf[0] = SEAL_VERSION;
        buf[1..HEADER_LEN].copy_from_slice(&header);
        let tag = aead_seal(
            &self.object_key(&header[..SALT_LEN]),
            nonce,
            &mut buf[HEADER_LEN..],
        )
        .ok_or_else(|| Error::Invalid("encryption failed".into()))?;
        buf.extend_from_slice(&tag);
        Ok(buf)
    }

    /// Fails (without saying more) when the data was not sealed by this key
    /// or was changed since.
    pub fn open(&self, sealed: &[u8]) -> std::result::Result<Vec<u8>, &'static str> {
        let (key, nonce) = self.header(sealed)?;
        aead_open(&key, nonce, &sealed[HEADER_LEN..]).ok_or(NOT_AUTHENTIC)
    }

    /// [`Cipher::open`] on a buffer it may decrypt where it lies (no copy):
    /// the plaintext is then `sealed[range]`.
    pub fn open_in_place(
        &self,
        sealed: &mut [u8],
    ) -> std::result::Result<std::ops::Range<usize>, &'static str> {
        let (key, nonce) = self.header(sealed)?;
        let len = aead_key(&key)
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::empty(),
                &mut sealed[HEADER_LEN..],
            )
            .map_err(|_| NOT_AUTHENTIC)?
            .len();
        Ok(HEADER_LEN..HEADER_LEN + len)
    }

    /// The object's key and nonce, from its header.
    fn header(
        &self,
        sealed: &[u8],
    ) -> std::result::Result<([u8; 32], [u8; NONCE_LEN]), &'static str> {
        if sealed.len() < SEAL_OVERHEAD {
            return Err("too short to be a sealed object");
        }
        if sealed[0] != SEAL_VERSION {
            return Err("unknown seal version");
        }
        let nonce = sealed[1 + SALT_LEN..HEADER_LEN]
            .try_into()
            .expect("length checked");
        Ok((self.object_key(&sealed[1..1 + SALT_LEN]), nonce))
    }
}

const NOT_AUTHENTIC: &str = "authentication failed (changed, truncated or wrong key)";

/// AES-256-GCM, no associated data: encrypts `data` where it lies and
/// returns the tag.
fn aead_seal(key: &[u8; 32], nonce: [u8; NONCE_LEN], data: &mut [u8]) -> Option<[u8; 16]> {
    let tag = aead_key(key)
        .seal_in_place_separate_tag(Nonce::assume_unique_for_key(nonce), Aad::empty(), data)
        .ok()?;
    tag.as_ref().try_into().ok()
}

/// Undoes [`aead_seal`] on ciphertext followed by its tag; None when it
/// does not authenticate.
fn aead_open(key: &[u8; 32], nonce: [u8; NONCE_LEN], sealed: &[u8]) -> Option<Vec<u8>> {
    let mut buf = sealed.to_vec();
    let len = aead_key(key)
        .open_in_place(Nonce::assume_unique_for_key(nonce), Aad::empty(), &mut buf)
        .ok()?
        .len();
    buf.truncate(len);
    Some(buf)
}

/// ring's AES-GCM (assembly, VAES and AVX-512 where the CPU has them) runs
/// about three times faster here than the pure-Rust `aes-gcm` crate, and
/// ring is in the build anyway (TLS). Every object has a key of its own.
fn aead_key(key: &[u8; 32]) -> LessSafeKey {
    LessSafeKey::new(UnboundKey::new(&AES_256_GCM, key).expect("a 32-byte key"))
}

/// A passphrase-wrapped copy of the master key, stored as `keys/<id>`.
#[derive(Clone, Serialize, Deserialize)]
pub struct KeyFile {
    pub kdf: String,
    pub memory_kib: u32,
    pub iterations: u32,
    pub parallelism: u32,
    pub salt: String,
    pub wrapped: String,
    pub created: chrono::DateTime<chrono::Utc>,
    /// A digest of the fields above as written: a key file damaged on
    /// disk is then said to be damaged, not taken for a wrong password
    /// (which is all a seal that fails to open can say). None in key
    /// files written before it was kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checksum: Option<String>,
}

impl KeyFile {
    /// OWASP's Argon2id floor (19 MiB, 2 passes): a fraction of a second
    /// per command, and costly to guess at scale. Two lanes, filled by two
    /// threads: the same memory and passes in half the wall time on the
    /// machines Cairn runs on (a guesser gains nothing, it runs many
    /// guesses side by side anyway). Key files keep their own settings,
    /// so older ones open as before.
    pub fn wrap(password: &[u8], master: &MasterKey) -> Result<Self> {
        Self::wrap_with(password, master, None, (19 * 1024, 2, 2))
    }

    /// A key that also holds `binding` (see [`crate::vault::Config::binding`])
    /// under the same seal: whoever changes the settings it stands for
    /// cannot make a key that agrees without the password, nor turn this
    /// one into a key without it.
    pub fn wrap_bound(password: &[u8], master: &MasterKey, binding: [u8; 32]) -> Result<Self> {
        Self::wrap_with(password, master, Some(binding), (19 * 1024, 2, 2))
    }

    fn wrap_with(
        password: &[u8],
        master: &MasterKey,
        binding: Option<[u8; 32]>,
        (m, t, p): (u32, u32, u32),
    ) -> Result<Self> {
        let salt: [u8; 16] = random_array()?;
        let kek = derive_kek(password, &salt, m, t, p)?;
        let mut plain = master.to_bytes();
        plain.extend_from_slice(binding.as_ref().map_or(&[][..], |b| b.as_slice()));
        let wrapped = Cipher::new(&kek).seal(&plain)?;
        let mut key = KeyFile {
            kdf: "argon2id".into(),
            memory_kib: m,
            iterations: t,
            parallelism: p,
            salt: hex::encode(salt),
            wrapped: hex::encode(wrapped),
            created: chrono::Utc::now(),
            checksum: None,
        };
        key.checksum = Some(key.digest());
        Ok(key)
    }

    /// See `checksum`.
    fn digest(&self) -> String {
        let text = format!(
            "{}|{}|{}|{}|{}|{}|{}",
            self.kdf,
            self.memory_kib,
            self.iterations,
            self.parallelism,
            self.salt,
            self.wrapped,
            self.created.to_rfc3339()
        );
        hex::encode(&blake3::hash(text.as_bytes()).as_bytes()[..16])
    }

    /// `Ok(None)` when the password does not open this key.
    pub fn unwrap_key(&self, password: &[u8]) -> Result<Option<MasterKey>> {
        Ok(self.unwrap_bound(password)?.map(|(m, _)| m))
    }

    /// The master key, and the settings' binding when the key holds one
    /// (keys made before bindings hold none).
    pub fn unwrap_bound(&self, password: &[u8]) -> Result<Option<(MasterKey, Option<[u8; 32]>)>> {
        if self.kdf != "argon2id"
            || self.memory_kib > 4 * 1024 * 1024
            || self.iterations > 100
            || self.parallelism > 64
        {
            return Err(Error::Invalid(format!(
                "key file uses unsupported KDF settings ({})",
                self.kdf
            )));
        }
        if self.checksum.as_ref().is_some_and(|c| *c != self.digest()) {
            return Err(Error::damaged(
                "key file",
                "its content changed since it was written (checksum mismatch): put it back from a copy of the vault or a replica",
            ));
        }
        let bad = |_| Error::damaged("key file", "not hex");
        let salt = hex::decode(&self.salt).map_err(bad)?;
        let wrapped = hex::decode(&self.wrapped).map_err(bad)?;
        let kek = derive_kek(
            password,
            &salt,
            self.memory_kib,
            self.iterations,
            self.parallelism,
        )?;
        let Ok(plain) = Cipher::new(&kek).open(&wrapped) else {
            return Ok(None);
        };
        Ok(match plain.len() {
            64 => MasterKey::from_bytes(&plain).map(|m| (m, None)),
            96 => MasterKey::from_bytes(&plain[..64]).map(|m| (m, plain[64..].try_into().ok())),
            _ => None,
        })
    }
}

fn derive_kek(password: &[u8], salt: &[u8], m: u32, t: u32, p: u32) -> Result<[u8; 32]> {
    let params = argon2::Params::new(m, t, p, Some(32))
        .map_err(|e| Error::Invalid(format!("argon2 parameters: {e}")))?;
    let mut memory = KdfMemory::new(params.block_count());
    let argon = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    let mut out = [0u8; 32];
    argon
        .hash_password_into_with_memory(password, salt, &mut out, memory.blocks())
        .map_err(|e| Error::Invalid(format!("argon2: {e}")))?;
    Ok(out)
}

/// Argon2's working memory (19 MiB by default), mapped with its pages
/// populated by the kernel in one call. Taking them one page fault at a
/// time (what a zeroed allocation does on first touch) cost ~20 ms in a
/// VM, as much as the hashing itself: every command opening a vault paid
/// it.
enum KdfMemory {
    Mapped(*mut argon2::Block, usize),
    Heap(Vec<argon2::Block>),
}

impl KdfMemory {
    fn new(count: usize) -> KdfMemory {
        let len = count * std::mem::size_of::<argon2::Block>();
        // SAFETY: a fresh private anonymous mapping; the kernel returns it
        // zeroed, page aligned (Block needs 64), or MAP_FAILED.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED || len == 0 {
            return KdfMemory::Heap(vec![argon2::Block::default(); count]);
        }
        KdfMemory::Mapped(p.cast(), count)
    }

    fn blocks(&mut self) -> &mut [argon2::Block] {
        match self {
            // SAFETY: the mapping holds `count` zeroed (valid) blocks and
            // lives as long as `self`, which this borrow cannot outlive.
            KdfMemory::Mapped(p, count) => unsafe { std::slice::from_raw_parts_mut(*p, *count) },
            KdfMemory::Heap(v) => v,
        }
    }
}

impl Drop for KdfMemory {
    fn drop(&mut self) {
        if let KdfMemory::Mapped(p, count) = self {
            // The key schedule's memory is not left behind for the next
            // allocation to read: unmapping returns it to the kernel.
            // SAFETY: the mapping made in `new`, unmapped once.
            unsafe {
                libc::munmap(p.cast(), *count * std::mem::size_of::<argon2::Block>());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mapped_kdf_memory_derives_the_library_s_own_key() {
        // Key files written before the memory was mapped must still open:
        // the same parameters give the same key as argon2's own buffers.
        for (m, t, p) in [(19 * 1024, 2, 2), (64, 1, 1), (1024, 3, 4)] {
            let params = argon2::Params::new(m, t, p, Some(32)).unwrap();
            let argon =
                argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
            let mut theirs = [0u8; 32];
            argon
                .hash_password_into(b"correct horse", b"salt of sixteen!", &mut theirs)
                .unwrap();
            let ours = derive_kek(b"correct horse", b"salt of sixteen!", m, t, p).unwrap();
            assert_eq!(ours, theirs, "m={m} t={t} p={p}");
        }
    }

    #[test]
    fn seal_open_round_trip_and_tamper_detection() {
        let c = Cipher::new(&[9; 32]);
        let mut s = c.seal(b"hello vault").unwrap();
        assert_eq!(c.open(&s).unwrap(), b"hello vault");
        let mut t = s.clone();
        let r = c.open_in_place(&mut t).unwrap();
        assert_eq!(&t[r], b"hello vault");
        let last = s.len() - 1;
        s[last] ^= 1;
        assert!(c.open(&s).is_err());
        assert!(c.open_in_place(&mut s.clone()).is_err());
        assert!(Cipher::new(&[8; 32]).open(&c.seal(b"x").unwrap()).is_err());
    }

    /// The McGrew–Viega GCM test case 15 (AES-256, 96-bit IV, no
    /// associated data): the sealed format is standard AES-256-GCM.
    #[test]
    fn aes_256_gcm_matches_the_published_test_vector() {
        let h = |s: &str| hex::decode(s).unwrap();
        let key: [u8; 32] = h("feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308")
            .try_into()
            .unwrap();
        let nonce: [u8; 12] = h("cafebabefacedbaddecaf888").try_into().unwrap();
        let plain = h(concat!(
            "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a72",
            "1c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b391aafd255"
        ));
        let cipher = h(concat!(
            "522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa",
            "8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662898015ad"
        ));
        let tag = h("b094dac5d93471bdec1a502270e3cc6c");
        let mut data = plain.clone();
        assert_eq!(aead_seal(&key, nonce, &mut data).unwrap().to_vec(), tag);
        assert_eq!(data, cipher);
        data.extend_from_slice(&tag);
        assert_eq!(aead_open(&key, nonce, &data).unwrap(), plain);
        data[0] ^= 1;
        assert!(aead_open(&key, nonce, &data).is_none());
    }

    #[test]
    fn key_file_opens_only_with_its_password() {
        let mk = MasterKey::generate().unwrap();
        let kf = KeyFile::wrap(b"right", &mk).unwrap();
        let got = kf.unwrap_key(b"right").unwrap().unwrap();
        assert_eq!(got.encryption, mk.encryption);
        assert_eq!(got.id, mk.id);
        assert!(kf.unwrap_key(b"wrong").unwrap().is_none());
    }

    /// Key files made before two lanes became the default (one lane) open
    /// with the settings they record, and the lanes are part of the key.
    #[test]
    fn a_one_lane_key_file_still_opens() {
        let mk = MasterKey::generate().unwrap();
        let one = KeyFile::wrap_with(b"pw", &mk, None, (19 * 1024, 2, 1)).unwrap();
        assert_eq!(one.parallelism, 1);
        assert_eq!(one.unwrap_key(b"pw").unwrap().unwrap().id, mk.id);
        let mut relabelled = one.clone();
        relabelled.parallelism = 2;
        // Caught as damage by its checksum, and in a key file from before
        // checksums by the seal alone.
        assert!(matches!(
            relabelled.unwrap_key(b"pw"),
            Err(Error::Damaged { .. })
        ));
        relabelled.checksum = None;
        assert!(relabelled.unwrap_key(b"pw").unwrap().is_none());
    }
}
