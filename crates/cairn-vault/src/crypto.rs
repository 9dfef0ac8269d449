//! Keys and authenticated encryption.
//!
//! A random master key encrypts everything; it is stored only wrapped by a
//! key derived from a passphrase with Argon2id, one key file per passphrase.
//! Objects are sealed with AES-256-GCM (AES-NI makes it two to three times
//! faster than ChaCha20-Poly1305 here) under a key derived for each object
//! from 16 random bytes, with a random 12-byte nonce: 28 random bytes per
//! object, so nonces never repeat under one key in practice.

use crate::error::{Error, Result};
use aes_gcm::aead::{Aead, AeadInOut, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce};
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

    fn object_cipher(&self, salt: &[u8]) -> Aes256Gcm {
        let subkey = blake3::keyed_hash(&self.key, salt);
        Aes256Gcm::new(subkey.as_bytes().into())
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
        let tag = self
            .object_cipher(&header[..SALT_LEN])
            .encrypt_inout_detached(&Nonce::from(nonce), b"", (&mut buf[HEADER_LEN..]).into())
            .map_err(|_| Error::Invalid("encryption failed".into()))?;
        buf.extend_from_slice(&tag);
        Ok(buf)
    }

    /// Fails (without saying more) when the data was not sealed by this key
    /// or was changed since.
    pub fn open(&self, sealed: &[u8]) -> std::result::Result<Vec<u8>, &'static str> {
        if sealed.len() < SEAL_OVERHEAD {
            return Err("too short to be a sealed object");
        }
        if sealed[0] != SEAL_VERSION {
            return Err("unknown seal version");
        }
        let salt = &sealed[1..1 + SALT_LEN];
        let nonce: [u8; NONCE_LEN] = sealed[1 + SALT_LEN..HEADER_LEN]
            .try_into()
            .expect("length checked");
        self.object_cipher(salt)
            .decrypt(&Nonce::from(nonce), &sealed[HEADER_LEN..])
            .map_err(|_| "authentication failed (changed, truncated or wrong key)")
    }
}

/// A passphrase-wrapped copy of the master key, stored as `keys/<id>`.
#[derive(Serialize, Deserialize)]
pub struct KeyFile {
    pub kdf: String,
    pub memory_kib: u32,
    pub iterations: u32,
    pub parallelism: u32,
    pub salt: String,
    pub wrapped: String,
    pub created: chrono::DateTime<chrono::Utc>,
}

impl KeyFile {
    /// OWASP's Argon2id floor (19 MiB, 2 passes): a fraction of a second
    /// per command, and costly to guess at scale.
    pub fn wrap(password: &[u8], master: &MasterKey) -> Result<Self> {
        let salt: [u8; 16] = random_array()?;
        let (m, t, p) = (19 * 1024, 2, 1);
        let kek = derive_kek(password, &salt, m, t, p)?;
        let wrapped = Cipher::new(&kek).seal(&master.to_bytes())?;
        Ok(KeyFile {
            kdf: "argon2id".into(),
            memory_kib: m,
            iterations: t,
            parallelism: p,
            salt: hex::encode(salt),
            wrapped: hex::encode(wrapped),
            created: chrono::Utc::now(),
        })
    }

    /// `Ok(None)` when the password does not open this key.
    pub fn unwrap_key(&self, password: &[u8]) -> Result<Option<MasterKey>> {
        if self.kdf != "argon2id" || self.memory_kib > 4 * 1024 * 1024 || self.iterations > 100 {
            return Err(Error::Invalid(format!(
                "key file uses unsupported KDF settings ({})",
                self.kdf
            )));
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
        Ok(Cipher::new(&kek)
            .open(&wrapped)
            .ok()
            .and_then(|b| MasterKey::from_bytes(&b)))
    }
}

fn derive_kek(password: &[u8], salt: &[u8], m: u32, t: u32, p: u32) -> Result<[u8; 32]> {
    let params = argon2::Params::new(m, t, p, Some(32))
        .map_err(|e| Error::Invalid(format!("argon2 parameters: {e}")))?;
    let argon = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    let mut out = [0u8; 32];
    argon
        .hash_password_into(password, salt, &mut out)
        .map_err(|e| Error::Invalid(format!("argon2: {e}")))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_round_trip_and_tamper_detection() {
        let c = Cipher::new(&[9; 32]);
        let mut s = c.seal(b"hello vault").unwrap();
        assert_eq!(c.open(&s).unwrap(), b"hello vault");
        let last = s.len() - 1;
        s[last] ^= 1;
        assert!(c.open(&s).is_err());
        assert!(Cipher::new(&[8; 32]).open(&c.seal(b"x").unwrap()).is_err());
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
}
