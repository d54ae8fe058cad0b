//! The AEAD calls of glidefs (XChaCha20-Poly1305 from RustCrypto), behind
//! non-generic functions.
//!
//! Why a crate of its own: the cipher's code is generic, so it is compiled in the
//! crate that calls it, with that crate's optimisation level. In glidefs's debug
//! builds (which the VM tests run) that made sealing about 100x slower (16 MiB in
//! 1.4 s on the host, half a minute under TCG). Called from here, it is compiled
//! with this crate's level, which the workspace profile sets to 3 in every build.
//!
//! Invariant: no key bytes leave [`SealKey`] (no accessor, no `Debug` content).

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};

/// Key length in bytes.
pub const KEY_LEN: usize = 32;
/// Nonce length in bytes.
pub const NONCE_LEN: usize = 24;
/// Authentication tag length in bytes.
pub const TAG_LEN: usize = 16;

/// An XChaCha20-Poly1305 key.
#[derive(Clone)]
pub struct SealKey(XChaCha20Poly1305);

impl std::fmt::Debug for SealKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SealKey(..)")
    }
}

impl SealKey {
    /// The key of these 32 bytes.
    pub fn new(key: &[u8; KEY_LEN]) -> SealKey {
        SealKey(XChaCha20Poly1305::new(key.into()))
    }

    /// Append `ciphertext | tag` of `plain` (nonce `nonce`, associated data `aad`)
    /// to `out`. Returns `false` only if the cipher refuses the length (beyond
    /// 256 GiB).
    pub fn seal_into(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        plain: &[u8],
        out: &mut Vec<u8>,
    ) -> bool {
        match self
            .0
            .encrypt(XNonce::from_slice(nonce), Payload { msg: plain, aad })
        {
            Ok(ct) => {
                out.extend_from_slice(&ct);
                true
            }
            Err(_) => false,
        }
    }

    /// The plaintext of `ciphertext | tag`, or `None` when it does not
    /// authenticate under this key, nonce and associated data.
    pub fn open(&self, nonce: &[u8; NONCE_LEN], aad: &[u8], sealed: &[u8]) -> Option<Vec<u8>> {
        self.0
            .decrypt(XNonce::from_slice(nonce), Payload { msg: sealed, aad })
            .ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_refusals() {
        let k = SealKey::new(&[3; KEY_LEN]);
        let n = [5; NONCE_LEN];
        let mut f = Vec::new();
        assert!(k.seal_into(&n, b"ad", b"hello", &mut f));
        assert_eq!(f.len(), 5 + TAG_LEN);
        assert_eq!(k.open(&n, b"ad", &f).as_deref(), Some(&b"hello"[..]));
        assert!(k.open(&n, b"ae", &f).is_none());
        assert!(k.open(&[6; NONCE_LEN], b"ad", &f).is_none());
        assert!(SealKey::new(&[4; KEY_LEN]).open(&n, b"ad", &f).is_none());
    }
}
