//! Every object key of a volume, and their parsing: nothing else in the crate formats
//! or takes apart a volume's key.
//!
//! Layout under `volumes/<name>/` (see docs/format.md):
//! - `meta`: size, uuid and format version (JSON), written once, replaced on grow;
//! - `lease`: the writer's lease, updated by conditional PUT;
//! - `clock`: an empty object rewritten to read the store's clock (its Last-Modified)
//!   when a lease held by another owner must be judged stale (see `lease.rs`);
//! - `seg/<seq>`: immutable segment objects;
//! - `manifest/<seq>`: checkpoints of the block map as of segment `seq`;
//! - `snap/<name>`: a snapshot (JSON: the manifest it pins, size, time);
//! - `forks/<snap>/<child>`: a fork `child` was made of snapshot `snap` (a marker:
//!   the snapshot, and what it pins, stay while one exists).
//!
//! Invariant: `<seq>` is written as 20 zero-padded decimal digits, so the store's
//! lexicographic listing order is the numeric order; [`VolumeKeys::parse`] inverts
//! every key [`VolumeKeys`] formats (a property test checks the round trip).

/// One object of a volume, as named by its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Key<'a> {
    /// `meta`.
    Meta,
    /// `lease`.
    Lease,
    /// `clock`.
    ClockProbe,
    /// `seg/<seq>`.
    Segment(u64),
    /// `manifest/<seq>`.
    Manifest(u64),
    /// `snap/<name>`.
    Snapshot(&'a str),
    /// `forks/<snap>/<child>`.
    ForkMarker(&'a str, &'a str),
}

/// The keys of one volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeKeys {
    root: String,
}

/// The prefix of every volume's objects.
pub const VOLUMES: &str = "volumes/";
const META: &str = "meta";
const SEG: &str = "seg/";
const MANIFEST: &str = "manifest/";
const SNAP: &str = "snap/";
const FORKS: &str = "forks/";

/// The volume whose `meta` object `key` is (`None`: another object).
pub fn meta_owner(key: &str) -> Option<&str> {
    let name = key
        .strip_prefix(VOLUMES)?
        .strip_suffix(META)?
        .strip_suffix('/')?;
    (!name.is_empty() && !name.contains('/')).then_some(name)
}

impl VolumeKeys {
    /// The keys of volume `name` (a name that passed [`crate::rules::validate_name`]).
    pub fn new(name: &str) -> VolumeKeys {
        VolumeKeys {
            root: format!("{VOLUMES}{name}/"),
        }
    }

    /// The listing prefix of every object of the volume.
    pub fn root(&self) -> &str {
        &self.root
    }

    /// The key of `k`.
    pub fn key(&self, k: Key) -> String {
        let root = &self.root;
        match k {
            Key::Meta => format!("{root}{META}"),
            Key::Lease => format!("{root}lease"),
            Key::ClockProbe => format!("{root}clock"),
            Key::Segment(seq) => format!("{root}{SEG}{seq:020}"),
            Key::Manifest(seq) => format!("{root}{MANIFEST}{seq:020}"),
            Key::Snapshot(name) => format!("{root}{SNAP}{name}"),
            Key::ForkMarker(snap, child) => format!("{root}{FORKS}{snap}/{child}"),
        }
    }

    /// `meta`.
    pub fn meta(&self) -> String {
        self.key(Key::Meta)
    }

    /// `lease`.
    pub fn lease(&self) -> String {
        self.key(Key::Lease)
    }

    /// `clock`.
    pub fn clock_probe(&self) -> String {
        self.key(Key::ClockProbe)
    }

    /// `seg/<seq>`.
    pub fn segment(&self, seq: u64) -> String {
        self.key(Key::Segment(seq))
    }

    /// `manifest/<seq>`.
    pub fn manifest(&self, seq: u64) -> String {
        self.key(Key::Manifest(seq))
    }

    /// `snap/<name>`.
    pub fn snapshot(&self, name: &str) -> String {
        self.key(Key::Snapshot(name))
    }

    /// The listing prefix of the snapshots.
    pub fn snapshots(&self) -> String {
        format!("{}{SNAP}", self.root)
    }

    /// `forks/<snap>/<child>`.
    pub fn fork_marker(&self, snap: &str, child: &str) -> String {
        self.key(Key::ForkMarker(snap, child))
    }

    /// The listing prefix of the fork markers of `snap`, or of every snapshot.
    pub fn fork_markers(&self, snap: Option<&str>) -> String {
        match snap {
            Some(s) => format!("{}{FORKS}{s}/", self.root),
            None => format!("{}{FORKS}", self.root),
        }
    }

    /// The listing prefix of the segments.
    pub fn segments(&self) -> String {
        format!("{}{SEG}", self.root)
    }

    /// The listing prefix of the manifests.
    pub fn manifests(&self) -> String {
        format!("{}{MANIFEST}", self.root)
    }

    /// What `key` names, or `None` for a key that is not one of this volume's
    /// objects (another volume's, or a stray object in its directory).
    pub fn parse<'a>(&self, key: &'a str) -> Option<Key<'a>> {
        let rest = key.strip_prefix(self.root.as_str())?;
        let seq = |s: &str| {
            (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
                .then(|| s.parse::<u64>().ok())
                .flatten()
        };
        match rest {
            "meta" => Some(Key::Meta),
            "lease" => Some(Key::Lease),
            "clock" => Some(Key::ClockProbe),
            _ => {
                if let Some(s) = rest.strip_prefix(SEG) {
                    seq(s).map(Key::Segment)
                } else if let Some(n) = rest.strip_prefix(SNAP) {
                    crate::rules::validate_name(n)
                        .ok()
                        .map(|()| Key::Snapshot(n))
                } else if let Some(m) = rest.strip_prefix(FORKS) {
                    let (snap, child) = m.split_once('/')?;
                    let ok = crate::rules::validate_name(snap).is_ok()
                        && crate::rules::validate_name(child).is_ok();
                    ok.then_some(Key::ForkMarker(snap, child))
                } else {
                    rest.strip_prefix(MANIFEST).and_then(seq).map(Key::Manifest)
                }
            }
        }
    }

    /// The sequence number of a segment key, or `None`.
    pub fn segment_seq(&self, key: &str) -> Option<u64> {
        match self.parse(key)? {
            Key::Segment(s) => Some(s),
            _ => None,
        }
    }

    /// The name of a snapshot key, or `None`.
    pub fn snapshot_name<'a>(&self, key: &'a str) -> Option<&'a str> {
        match self.parse(key)? {
            Key::Snapshot(n) => Some(n),
            _ => None,
        }
    }

    /// The sequence number of a manifest key, or `None`.
    pub fn manifest_seq(&self, key: &str) -> Option<u64> {
        match self.parse(key)? {
            Key::Manifest(s) => Some(s),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn any_key() -> impl Strategy<Value = Key<'static>> {
        prop_oneof![
            Just(Key::Snapshot("s1")),
            Just(Key::Snapshot("golden-2026.12")),
            Just(Key::ForkMarker("s1", "vm-7")),
            Just(Key::Meta),
            Just(Key::Lease),
            Just(Key::ClockProbe),
            any::<u64>().prop_map(Key::Segment),
            any::<u64>().prop_map(Key::Manifest),
        ]
    }

    proptest! {
        #[test]
        fn round_trip(name in "[a-z0-9][a-z0-9._-]{0,63}", k in any_key()) {
            let keys = VolumeKeys::new(&name);
            let key = keys.key(k);
            prop_assert!(crate::store::validate_key(&key).is_ok(), "{key}");
            prop_assert!(key.starts_with(keys.root()));
            prop_assert_eq!(keys.parse(&key), Some(k));
            let owner = (k == Key::Meta).then_some(name.as_str());
            prop_assert_eq!(meta_owner(&key), owner);
        }

        #[test]
        fn listing_order_is_numeric_order(a in any::<u64>(), b in any::<u64>()) {
            let keys = VolumeKeys::new("v");
            prop_assert_eq!(a.cmp(&b), keys.segment(a).cmp(&keys.segment(b)));
            prop_assert_eq!(a.cmp(&b), keys.manifest(a).cmp(&keys.manifest(b)));
        }

        #[test]
        fn other_volumes_keys_are_not_ours(seq in any::<u64>()) {
            let (a, ab) = (VolumeKeys::new("a"), VolumeKeys::new("ab"));
            let (ka, kab) = (a.segment(seq), ab.segment(seq));
            prop_assert_eq!(a.parse(&kab), None);
            prop_assert_eq!(ab.parse(&ka), None);
        }
    }

    #[test]
    fn strays_are_rejected() {
        let k = VolumeKeys::new("v");
        for bad in [
            "volumes/v/",
            "volumes/v/seg/",
            "volumes/v/seg/+5",
            "volumes/v/seg/x",
            "volumes/v/seg/1/2",
            "volumes/v/manifest/",
            "volumes/v/metadata",
            "volumes/w/meta",
            "volumes/v/seg/99999999999999999999999",
            "volumes/v/snap/",
            "volumes/v/snap/a/b",
            "volumes/v/snap/-x",
            "volumes/v/forks/s1",
            "volumes/v/forks/s1/",
            "volumes/v/forks/s1/a/b",
        ] {
            assert_eq!(k.parse(bad), None, "{bad}");
        }
        assert_eq!(k.parse("volumes/v/seg/7"), Some(Key::Segment(7)));
        for bad in [
            "volumes/meta",
            "volumes//meta",
            "volumes/v/snap/meta",
            "volumes/v/xmeta",
        ] {
            assert_eq!(meta_owner(bad), None, "{bad}");
        }
    }
}
