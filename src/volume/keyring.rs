//! A volume's data keys: wrapped in its `meta` object ([`WrappedKeys`]), unwrapped in
//! memory while it is open ([`Keyring`]).
//!
//! An encrypted volume's meta carries `encrypted: true` for good and, until it is
//! crypto-erased, `keys`: its own data key and those of its encrypted ancestors (a
//! fork reads their segments), each wrapped by the master key named by `key_id`.
//! Erasing rewrites meta without `keys`; nothing can open the volume's frames after
//! that, except forks, which hold their own wrapped copy of the keys they read with.
//!
//! Invariants: a volume's own objects are sealed iff it has a data key (decoders
//! refuse a plaintext object in an encrypted volume and the reverse); the keyring
//! holds a key for every encrypted ancestor, so a fork never falls back to plaintext
//! for a sealed ancestor segment.

use super::crypto::{hex, unhex, CryptoError, DataKey, FrameKey, MasterKey, MasterKeys};
use super::VolumeError;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// The wrapped data keys in an encrypted volume's meta.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WrappedKeys {
    /// Id of the master key that wrapped them (`crypto::MasterKey::id`).
    pub key_id: String,
    /// The volume's own data key, wrapped for its uuid (hex).
    pub own: String,
    /// Encrypted ancestors' data keys, wrapped for their uuids.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ancestors: Vec<WrappedAncestorKey>,
}

/// One ancestor's data key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WrappedAncestorKey {
    /// The ancestor's uuid (hex, as in the lineage).
    pub uuid: String,
    /// Its data key, wrapped for that uuid (hex).
    pub key: String,
}

/// The unwrapped data keys of an open volume (empty for a plaintext volume).
#[derive(Debug, Clone, Default)]
pub struct Keyring {
    own: Option<DataKey>,
    ancestors: HashMap<u64, DataKey>,
}

fn parse_uuid(s: &str) -> Result<u64, VolumeError> {
    u64::from_str_radix(s, 16).map_err(|e| VolumeError::Corrupt(format!("uuid {s:?}: {e}")))
}

impl Keyring {
    /// A new encrypted volume `uuid`: a fresh data key plus the keys it inherits
    /// (a fork: its parent's keyring). Returns the keyring and its wrapped form.
    pub fn create(
        masters: &MasterKeys,
        uuid: u64,
        parent: Option<(u64, &Keyring)>,
    ) -> (Keyring, WrappedKeys) {
        let mut ring = Keyring {
            own: Some(DataKey::random()),
            ancestors: HashMap::new(),
        };
        if let Some((puuid, p)) = parent {
            ring.ancestors = p.ancestors.clone();
            if let Some(k) = &p.own {
                ring.ancestors.insert(puuid, k.clone());
            }
        }
        let w = ring.wrap(&masters.current, uuid);
        (ring, w)
    }

    /// This keyring wrapped by `master` for volume `uuid` (creation and rotation).
    pub fn wrap(&self, master: &MasterKey, uuid: u64) -> WrappedKeys {
        let mut ancestors: Vec<WrappedAncestorKey> = self
            .ancestors
            .iter()
            .map(|(u, k)| WrappedAncestorKey {
                uuid: format!("{u:016x}"),
                key: hex(&master.wrap(*u, k)),
            })
            .collect();
        ancestors.sort_by(|a, b| a.uuid.cmp(&b.uuid));
        WrappedKeys {
            key_id: master.id.clone(),
            own: self
                .own
                .as_ref()
                .map(|k| hex(&master.wrap(uuid, k)))
                .unwrap_or_default(),
            ancestors,
        }
    }

    /// The keyring of volume `name` (uuid `uuid`) from its meta fields. Errors say
    /// which key is missing or wrong; they never carry key bytes.
    pub fn unwrap(
        name: &str,
        uuid: u64,
        encrypted: bool,
        wrapped: Option<&WrappedKeys>,
        masters: Option<&MasterKeys>,
    ) -> Result<Keyring, VolumeError> {
        if !encrypted {
            return Ok(Keyring::default());
        }
        let Some(masters) = masters else {
            return Err(VolumeError::Key(format!(
                "volume {name:?} is encrypted and this daemon has no master key: set [store.encryption] key_file"
            )));
        };
        let Some(w) = wrapped else {
            return Err(VolumeError::Key(format!(
                "volume {name:?} has no data key: it was crypto-erased (deleted with purge)"
            )));
        };
        let Some(master) = masters.by_id(&w.key_id) else {
            return Err(VolumeError::Key(format!(
                "volume {name:?} was wrapped by master key id {}; this daemon holds {} (add the old key to [store.encryption] old_key_files)",
                w.key_id,
                masters.ids().join(", ")
            )));
        };
        let open = |u: u64, h: &str, what: &str| -> Result<DataKey, VolumeError> {
            let b = unhex(h).ok_or_else(|| VolumeError::Corrupt(format!("{what}: not hex")))?;
            master.unwrap_key(u, &b, what).map_err(|e| match e {
                CryptoError::Open(_) => VolumeError::Key(format!(
                    "{what} of volume {name:?} does not open with master key {} (wrong key file?)",
                    master.id
                )),
                other => VolumeError::Key(other.to_string()),
            })
        };
        let own = open(uuid, &w.own, "data key")?;
        let mut ancestors = HashMap::new();
        for a in &w.ancestors {
            let u = parse_uuid(&a.uuid)?;
            ancestors.insert(u, open(u, &a.key, "ancestor data key")?);
        }
        Ok(Keyring {
            own: Some(own),
            ancestors,
        })
    }

    /// Whether the volume is encrypted (has its own data key).
    pub fn encrypted(&self) -> bool {
        self.own.is_some()
    }

    /// The key that seals the volume's own objects.
    pub fn own(&self) -> Option<&FrameKey> {
        self.own.as_ref().map(DataKey::frames)
    }

    /// The key of ancestor `uuid`'s objects (`None`: that ancestor is plaintext).
    pub fn ancestor(&self, uuid: u64) -> Option<&FrameKey> {
        self.ancestors.get(&uuid).map(DataKey::frames)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn masters(b: u8) -> MasterKeys {
        MasterKeys {
            current: MasterKey::from_bytes(&[b; 32]),
            old: Vec::new(),
        }
    }

    #[test]
    fn keys_unwrap_with_their_master_key_only_and_forks_inherit_their_parents() {
        let m = masters(1);
        let (parent, pw) = Keyring::create(&m, 10, None);
        let back = Keyring::unwrap("p", 10, true, Some(&pw), Some(&m)).unwrap();
        let aad =
            super::super::crypto::Aad::new(10, super::super::crypto::FrameKind::Extent, 1, 2, &[]);
        let f = parent.own().unwrap().seal(&aad, b"x");
        assert_eq!(back.own().unwrap().open(&aad, &f, "x").unwrap(), b"x");
        // A fork holds the parent's key under the parent's uuid.
        let (_, cw) = Keyring::create(&m, 11, Some((10, &parent)));
        let child = Keyring::unwrap("c", 11, true, Some(&cw), Some(&m)).unwrap();
        assert_eq!(
            child.ancestor(10).unwrap().open(&aad, &f, "x").unwrap(),
            b"x"
        );
        // Errors: no master key, erased, other key id, wrong key under the same id.
        let e = |r: Result<Keyring, VolumeError>| r.unwrap_err().to_string();
        assert!(e(Keyring::unwrap("p", 10, true, Some(&pw), None)).contains("no master key"));
        assert!(e(Keyring::unwrap("p", 10, true, None, Some(&m))).contains("crypto-erased"));
        assert!(
            e(Keyring::unwrap("p", 10, true, Some(&pw), Some(&masters(2)))).contains(&pw.key_id)
        );
        let forged = WrappedKeys {
            key_id: masters(2).current.id,
            ..pw.clone()
        };
        assert!(e(Keyring::unwrap(
            "p",
            10,
            true,
            Some(&forged),
            Some(&masters(2))
        ))
        .contains("wrong key file"));
        // Another volume's wrapped key does not open as ours.
        assert!(Keyring::unwrap("p", 12, true, Some(&pw), Some(&m)).is_err());
        // Rotation: re-wrapped under a new key, read with it; the old id is accepted
        // while the old key is listed.
        let rot = MasterKeys {
            current: MasterKey::from_bytes(&[3; 32]),
            old: vec![m.current.clone()],
        };
        assert!(Keyring::unwrap("p", 10, true, Some(&pw), Some(&rot)).is_ok());
        let rw = back.wrap(&rot.current, 10);
        assert_ne!(rw.key_id, pw.key_id);
        let again = Keyring::unwrap("p", 10, true, Some(&rw), Some(&masters(3))).unwrap();
        assert_eq!(again.own().unwrap().open(&aad, &f, "x").unwrap(), b"x");
        assert!(!Keyring::unwrap("q", 1, false, None, None)
            .unwrap()
            .encrypted());
    }
}
