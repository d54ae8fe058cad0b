//! Client-side encryption: master keys, per-volume data keys and the AEAD that seals
//! every stored payload, segment index and manifest body.
//!
//! Key hierarchy (docs/format.md "Encryption"):
//! - a **master key** (32 bytes) comes from a credentials file the operator controls;
//!   its **key id** is the first 8 bytes of SHA-256("glidefs master key id" | key), in
//!   hex, so a store object can name the key that wrapped it without revealing it;
//! - every encrypted volume has a random **data key**, stored only wrapped (sealed) by
//!   a master key in the volume's `keys` object together with that key's id.
//!   Rotation re-wraps data keys under the new master key; no data is rewritten;
//! - a fork's `keys` object also holds its ancestors' data keys (wrapped again by the
//!   fork), so the frames it shares with a parent stay readable after the parent is
//!   purged and its own `keys` object is gone.
//!
//! Sealing: XChaCha20-Poly1305 with a random 24-byte nonce per frame; a sealed frame is
//! `nonce | ciphertext | tag` ([`OVERHEAD`] bytes more than the plaintext). Payloads
//! are compressed before they are sealed. The associated data ([`Aad`]) binds a frame
//! to the volume incarnation (uuid), the object kind, the segment or manifest
//! sequence, the frame's byte offset and what the index says it holds, so a frame
//! moved to another offset, object or volume fails to open.
//!
//! Invariants: key bytes never reach `Debug`, logs, errors or metrics; a frame that
//! fails to open is an error, never data.

use glidefs_seal::SealKey;
use rand::RngCore;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Key length in bytes (master and data keys).
pub const KEY_LEN: usize = glidefs_seal::KEY_LEN;
/// Nonce length of XChaCha20-Poly1305.
pub const NONCE_LEN: usize = glidefs_seal::NONCE_LEN;
/// Authentication tag length.
pub const TAG_LEN: usize = glidefs_seal::TAG_LEN;
/// Bytes a sealed frame adds to its plaintext.
pub const OVERHEAD: usize = NONCE_LEN + TAG_LEN;

/// Lower-case hex of `b`.
pub(crate) fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The bytes of hex `s` (`None`: odd length or not hex).
pub(crate) fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Why a key could not be loaded or a frame not opened. Never carries key bytes.
#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    /// The key file could not be read or holds no valid key.
    #[error("master key file {path}: {msg}")]
    KeyFile {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        msg: String,
    },
    /// A sealed frame failed authentication (tampered, moved or another key).
    #[error("{0}: authentication failed (tampered, moved, or sealed with another key)")]
    Open(String),
}

/// The kind of object a sealed frame belongs to (part of its associated data).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum FrameKind {
    /// One extent's payload in a segment.
    Extent = 1,
    /// A segment's index.
    SegmentIndex = 2,
    /// A manifest's body.
    Manifest = 3,
    /// A data key wrapped by a master key.
    WrappedKey = 4,
}

/// Associated data of one frame: what it is and where it belongs.
#[derive(Debug, Clone)]
pub struct Aad(Vec<u8>);

impl Aad {
    /// Binds a frame to (volume uuid, kind, sequence, byte offset) plus `extra` bytes
    /// (an extent's index fields, a header that must not change).
    pub fn new(uuid: u64, kind: FrameKind, seq: u64, off: u64, extra: &[u8]) -> Aad {
        let mut v = Vec::with_capacity(33 + extra.len());
        v.extend_from_slice(b"GLFSAAD1");
        v.extend_from_slice(&uuid.to_le_bytes());
        v.push(kind as u8);
        v.extend_from_slice(&seq.to_le_bytes());
        v.extend_from_slice(&off.to_le_bytes());
        v.extend_from_slice(extra);
        Aad(v)
    }
}

/// A 32-byte key for sealing frames. `Debug` shows nothing of the key.
#[derive(Clone)]
pub struct FrameKey(Arc<SealKey>);

impl std::fmt::Debug for FrameKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FrameKey(..)")
    }
}

impl FrameKey {
    fn from_bytes(k: &[u8; KEY_LEN]) -> FrameKey {
        FrameKey(Arc::new(SealKey::new(k)))
    }

    /// Seal `plain` with a fresh random nonce: `nonce | ciphertext | tag`.
    pub fn seal(&self, aad: &Aad, plain: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_LEN];
        rand::thread_rng().fill_bytes(&mut nonce);
        let mut out = Vec::with_capacity(plain.len() + OVERHEAD);
        out.extend_from_slice(&nonce);
        // The AEAD refuses only frames beyond 256 GiB; frames are at most a block
        // or a manifest.
        if !self.0.seal_into(&nonce, &aad.0, plain, &mut out) {
            unreachable!("XChaCha20-Poly1305 encrypt of {} bytes", plain.len());
        }
        out
    }

    /// Open a frame made by [`FrameKey::seal`] with the same `aad`; `what` names it
    /// in the error.
    pub fn open(&self, aad: &Aad, frame: &[u8], what: &str) -> Result<Vec<u8>, CryptoError> {
        if frame.len() < OVERHEAD {
            return Err(CryptoError::Open(format!(
                "{what}: {} bytes, shorter than a sealed frame",
                frame.len()
            )));
        }
        let (nonce, ct) = frame.split_at(NONCE_LEN);
        let nonce: &[u8; NONCE_LEN] = nonce
            .try_into()
            .map_err(|_| CryptoError::Open(what.to_string()))?;
        self.0
            .open(nonce, &aad.0, ct)
            .ok_or_else(|| CryptoError::Open(what.to_string()))
    }
}

/// A master key and its id.
#[derive(Clone)]
pub struct MasterKey {
    /// Hex id (8 bytes of a hash of the key); stored next to what it wrapped.
    pub id: String,
    key: FrameKey,
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MasterKey({})", self.id)
    }
}

impl MasterKey {
    /// A key from its 32 bytes.
    pub fn from_bytes(k: &[u8; KEY_LEN]) -> MasterKey {
        let mut h = Sha256::new();
        h.update(b"glidefs master key id");
        h.update(k);
        let d = h.finalize();
        let id = hex(&d[..8]);
        MasterKey {
            id,
            key: FrameKey::from_bytes(k),
        }
    }

    /// Read a key file: exactly 32 raw bytes, or 64 hex digits (surrounding
    /// whitespace ignored). The error names the file, never its content.
    pub fn load(path: &Path) -> Result<MasterKey, CryptoError> {
        let bad = |msg: String| CryptoError::KeyFile {
            path: path.to_path_buf(),
            msg,
        };
        let raw = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
        let mut k = [0u8; KEY_LEN];
        if raw.len() == KEY_LEN {
            k.copy_from_slice(&raw);
        } else {
            let text = std::str::from_utf8(&raw)
                .map_err(|_| {
                    bad(format!(
                        "{} bytes: want 32 raw bytes or 64 hex digits",
                        raw.len()
                    ))
                })?
                .trim();
            match unhex(text) {
                Some(b) if b.len() == KEY_LEN => k.copy_from_slice(&b),
                _ => {
                    return Err(bad(format!(
                    "{} bytes: want 32 raw bytes or 64 hex digits (e.g. `openssl rand -hex 32`)",
                    raw.len()
                )))
                }
            }
        }
        if k == [0u8; KEY_LEN] {
            return Err(bad("the key is all zeros".into()));
        }
        Ok(MasterKey::from_bytes(&k))
    }

    /// Wrap a data key for the volume incarnation `uuid`.
    pub fn wrap(&self, uuid: u64, dek: &DataKey) -> Vec<u8> {
        self.key.seal(&wrap_aad(uuid), &dek.bytes)
    }

    /// Unwrap a data key wrapped for `uuid`.
    pub fn unwrap_key(
        &self,
        uuid: u64,
        wrapped: &[u8],
        what: &str,
    ) -> Result<DataKey, CryptoError> {
        let b = self.key.open(&wrap_aad(uuid), wrapped, what)?;
        let bytes: [u8; KEY_LEN] = b
            .as_slice()
            .try_into()
            .map_err(|_| CryptoError::Open(format!("{what}: {} bytes, not a key", b.len())))?;
        Ok(DataKey::from_bytes(bytes))
    }
}

fn wrap_aad(uuid: u64) -> Aad {
    Aad::new(uuid, FrameKind::WrappedKey, 0, 0, &[])
}

/// The master keys this daemon holds: the current one (wraps new data keys and
/// re-wraps old ones) and older ones still accepted for unwrapping.
#[derive(Debug, Clone)]
pub struct MasterKeys {
    /// Wraps every data key from now on.
    pub current: MasterKey,
    /// Accepted for unwrapping only (rotation in progress).
    pub old: Vec<MasterKey>,
}

impl MasterKeys {
    /// The key with id `id`, if this daemon has it.
    pub fn by_id(&self, id: &str) -> Option<&MasterKey> {
        std::iter::once(&self.current)
            .chain(self.old.iter())
            .find(|k| k.id == id)
    }

    /// The ids of every key held, current first (for error messages).
    pub fn ids(&self) -> Vec<String> {
        std::iter::once(&self.current)
            .chain(self.old.iter())
            .map(|k| k.id.clone())
            .collect()
    }
}

/// A volume's data key. `Debug` shows nothing of it.
#[derive(Clone)]
pub struct DataKey {
    bytes: [u8; KEY_LEN],
    key: FrameKey,
}

impl std::fmt::Debug for DataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DataKey(..)")
    }
}

impl DataKey {
    /// A fresh random key.
    pub fn random() -> DataKey {
        let mut b = [0u8; KEY_LEN];
        rand::thread_rng().fill_bytes(&mut b);
        DataKey::from_bytes(b)
    }

    fn from_bytes(bytes: [u8; KEY_LEN]) -> DataKey {
        DataKey {
            key: FrameKey::from_bytes(&bytes),
            bytes,
        }
    }

    /// The frame key.
    pub fn frames(&self) -> &FrameKey {
        &self.key
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_opens_only_with_its_own_associated_data() {
        let k = DataKey::random();
        let aad = Aad::new(7, FrameKind::Extent, 3, 4096, &[1, 2]);
        let f = k.frames().seal(&aad, b"hello");
        assert_eq!(f.len(), 5 + OVERHEAD);
        assert_eq!(k.frames().open(&aad, &f, "x").unwrap(), b"hello");
        for other in [
            Aad::new(8, FrameKind::Extent, 3, 4096, &[1, 2]),
            Aad::new(7, FrameKind::Manifest, 3, 4096, &[1, 2]),
            Aad::new(7, FrameKind::Extent, 4, 4096, &[1, 2]),
            Aad::new(7, FrameKind::Extent, 3, 4097, &[1, 2]),
            Aad::new(7, FrameKind::Extent, 3, 4096, &[1, 3]),
        ] {
            assert!(k.frames().open(&other, &f, "x").is_err());
        }
        assert!(DataKey::random().frames().open(&aad, &f, "x").is_err());
        let mut t = f.clone();
        t[30] ^= 1;
        assert!(k.frames().open(&aad, &t, "x").is_err());
    }

    #[test]
    fn key_files_are_raw_or_hex_and_errors_name_the_file_not_the_key() {
        let d = tempfile::tempdir().unwrap();
        let raw = d.path().join("raw");
        std::fs::write(&raw, [5u8; 32]).unwrap();
        let hex = d.path().join("hex");
        std::fs::write(&hex, format!("{}\n", "05".repeat(32))).unwrap();
        let a = MasterKey::load(&raw).unwrap();
        let b = MasterKey::load(&hex).unwrap();
        assert_eq!(a.id, b.id);
        assert_eq!(a.id.len(), 16);
        assert!(!format!("{a:?}").contains("0505"));
        let short = d.path().join("short");
        std::fs::write(&short, "abcd").unwrap();
        let e = MasterKey::load(&short).unwrap_err().to_string();
        assert!(e.contains("short") && e.contains("64 hex digits"), "{e}");
        assert!(!e.contains("abcd"), "{e}");
        let zero = d.path().join("zero");
        std::fs::write(&zero, [0u8; 32]).unwrap();
        assert!(MasterKey::load(&zero).is_err());
        assert!(MasterKey::load(&d.path().join("missing")).is_err());
    }

    #[test]
    fn wrapped_keys_are_bound_to_the_volume_and_the_master_key() {
        let m = MasterKey::from_bytes(&[9u8; 32]);
        let dek = DataKey::random();
        let w = m.wrap(42, &dek);
        let back = m.unwrap_key(42, &w, "k").unwrap();
        assert_eq!(back.bytes, dek.bytes);
        assert!(m.unwrap_key(43, &w, "k").is_err());
        assert!(MasterKey::from_bytes(&[8u8; 32])
            .unwrap_key(42, &w, "k")
            .is_err());
    }
}
