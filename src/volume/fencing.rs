//! Which stored objects of a volume count: the fencing rule that makes a late PUT of
//! a fenced writer harmless whenever it lands.
//!
//! A *witness* `(epoch E, base b)` says: epoch E opened the volume having seen every
//! object that had landed, all with sequence numbers `<= b`. Writers of older epochs
//! were fenced at that point; an object of an older epoch with a sequence number
//! above `b` therefore landed after it (a "zombie") and never counts. Witnesses:
//! - the fences in the lease object (each open adds one before it serves anything:
//!   `(its epoch, highest seq listed)`), carried from holder to holder;
//! - every manifest `(its epoch, its seq)` (a manifest of epoch E at seq S is only
//!   written after E's fence, and `S` exceeds E's base);
//! - every segment header read `(epoch, base_seq)`.
//!
//! Invariant kept by the writers: a fence leaves the lease only once a manifest of an
//! epoch at least as new exists (it dominates everything the fence did, for the
//! objects that are not below it anyway), and manifests are deleted only by newer
//! ones. The argument in full is in docs/format.md ("Ownership and fencing").

/// One witness.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Witness {
    /// Epoch that saw the store.
    pub epoch: u64,
    /// Highest sequence number that counts for older epochs.
    pub base: u64,
}

/// Whether an object written by `epoch` at sequence `seq` landed after a newer
/// epoch had fenced its writer. Epoch 0 (manifests of older versions) is unknown and
/// neither witnesses nor is judged.
pub fn is_zombie(epoch: u64, seq: u64, witnesses: &[Witness]) -> bool {
    epoch != 0
        && witnesses
            .iter()
            .any(|w| w.epoch != 0 && w.epoch > epoch && w.base < seq)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn older_epoch_above_a_newer_base_is_a_zombie() {
        let w = [Witness { epoch: 5, base: 10 }];
        assert!(is_zombie(4, 11, &w));
        assert!(!is_zombie(4, 10, &w), "landed before epoch 5 listed");
        assert!(!is_zombie(5, 11, &w), "the fencing epoch itself");
        assert!(!is_zombie(6, 11, &w), "a newer epoch");
        assert!(!is_zombie(0, 99, &w), "unknown epoch is not judged");
        assert!(!is_zombie(4, 99, &[Witness { epoch: 0, base: 1 }]));
    }
}
