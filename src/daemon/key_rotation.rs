//! `glidefs keys rewrap`: finish a master-key rotation for the whole store by
//! re-wrapping the data keys of every volume no daemon has open (each open
//! re-wraps its own volume; see `volume::rewrap`).
//!
//! Invariant: the run is complete (`Summary::complete`) only when no volume's meta
//! still needs an old master key, so the operator may retire it.

use crate::clock::SystemClock;
use crate::store::ObjectStore;
use crate::volume::crypto::MasterKeys;
use crate::volume::lease::Rules;
use crate::volume::rewrap::Rewrap;
use crate::volume::{Volume, VolumeError};
use std::sync::Arc;
use std::time::Duration;

/// The lease owner the command judges leases as: no host has this id, so every
/// lease, this host's daemon's too, is somebody else's.
const REWRAP_OWNER: &str = "glidefs-keys-rewrap";

/// Counts of one run over the store.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Summary {
    /// Re-wrapped now.
    pub rewrapped: usize,
    /// Dry run: would be re-wrapped.
    pub stale: usize,
    /// Wrapped by the current key already.
    pub current: usize,
    /// Plaintext or crypto-erased.
    pub no_key: usize,
    /// Skipped: a live lease holder serves them.
    pub held: usize,
    /// Failed (a wrong key, a store error).
    pub failed: usize,
}

impl Summary {
    /// No volume needs an old master key any more.
    pub fn complete(&self) -> bool {
        self.stale == 0 && self.held == 0 && self.failed == 0
    }

    fn count(&mut self, r: &Result<Rewrap, VolumeError>) {
        let n = match r {
            Ok(Rewrap::Rewrapped { .. }) => &mut self.rewrapped,
            Ok(Rewrap::Stale { .. }) => &mut self.stale,
            Ok(Rewrap::Current) => &mut self.current,
            Ok(Rewrap::NoKey) => &mut self.no_key,
            Ok(Rewrap::Held { .. }) => &mut self.held,
            Err(_) => &mut self.failed,
        };
        *n += 1;
    }
}

/// One line for volume `name`'s outcome (`to`: the current master key's id).
pub fn describe(name: &str, r: &Result<Rewrap, VolumeError>, to: &str) -> String {
    match r {
        Ok(Rewrap::Rewrapped { from }) => format!("{name}: re-wrapped (key {from} -> {to})"),
        Ok(Rewrap::Stale { from }) => format!("{name}: would re-wrap (key {from} -> {to})"),
        Ok(Rewrap::Current) => format!("{name}: wrapped by the current key {to}"),
        Ok(Rewrap::NoKey) => format!("{name}: no data key (plaintext or crypto-erased)"),
        Ok(Rewrap::Held { holder, from }) => format!(
            "{name}: skipped, wrapped by key {from} and served by {holder}: that daemon re-wraps it when it opens it with key {to} (restart it), or run this again once its lease is stale"
        ),
        Err(e) => format!("{name}: FAILED: {e}"),
    }
}

/// Re-wrap every volume of `store` under `masters.current` (`dry_run`: change
/// nothing), calling `report` with each outcome. A volume's failure is reported
/// and counted, and the run goes on; only listing the store can fail the run.
pub async fn rewrap_store(
    store: &Arc<dyn ObjectStore>,
    masters: &MasterKeys,
    lease_ttl: Duration,
    dry_run: bool,
    mut report: impl FnMut(&str, &Result<Rewrap, VolumeError>),
) -> Result<Summary, VolumeError> {
    let rules = Rules {
        owner: REWRAP_OWNER,
        host: "",
        ttl_ms: lease_ttl.as_millis() as u64,
        clock: &SystemClock,
    };
    let mut summary = Summary::default();
    for name in Volume::names_in_store(store).await? {
        let r = Volume::rewrap_keys(store, &name, masters, rules, dry_run).await;
        summary.count(&r);
        report(&name, &r);
    }
    Ok(summary)
}
