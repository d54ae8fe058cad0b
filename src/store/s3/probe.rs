//! The conditional-write probe: does this service honour `If-None-Match` /
//! `If-Match`, and atomically? See [`S3Store::probe_conditional`].

use super::S3Store;
use crate::parallel::join_all;
use crate::store::{ObjectStore, PutCondition, StoreError};
use bytes::Bytes;

/// Concurrent writers in one round of the conditional-write race probe.
pub const RACE_WRITERS: usize = 16;
/// Rounds of the race probe (each must have exactly one winner).
pub const RACE_ROUNDS: usize = 4;

/// What the probe found out about conditional writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ConditionalSupport {
    /// Honoured, and exactly one of concurrent if-absent writers wins.
    Atomic,
    /// Honoured one at a time, but concurrent writers can all win.
    Racy,
    /// Ignored: a write that must fail succeeds.
    Ignored,
}

impl S3Store {
    /// Check that the service honours conditional writes, once per store (only a
    /// conclusive answer is cached; `Unavailable` lets a later call probe again):
    /// 1. a probe object is written with `IfAbsent` twice, then with `IfMatch` of a
    ///    wrong and of the right etag: if a write that must fail succeeds, the
    ///    service ignores the headers (Garage);
    /// 2. [`RACE_WRITERS`] concurrent `IfAbsent` writes of a fresh key, up to
    ///    [`RACE_ROUNDS`] times: more than one winner means the check is not atomic
    ///    (s3s-fs 0.14 checks, then writes).
    ///
    /// Returns `Err(ConditionalUnsupported)` in both cases, except that a non-atomic
    /// service is accepted (with a warning) when `allow_racy_conditional` is set.
    /// Probe objects live under `.glidefs-probe/` and are deleted afterwards.
    pub async fn probe_conditional(&self) -> Result<(), StoreError> {
        let support = *self
            .conditional
            .get_or_try_init(|| self.run_probe())
            .await?;
        match support {
            ConditionalSupport::Atomic => Ok(()),
            ConditionalSupport::Racy if self.allow_racy_conditional => Ok(()),
            ConditionalSupport::Racy => Err(StoreError::ConditionalUnsupported(format!(
                "{} honours If-None-Match/If-Match but not atomically (concurrent if-absent writes \
                 all won); set allow_racy_conditional only if a single writer uses this store",
                self.describe()
            ))),
            ConditionalSupport::Ignored => Err(StoreError::ConditionalUnsupported(format!(
                "{} ignores If-None-Match/If-Match (a conditional PUT that must fail succeeded)",
                self.describe()
            ))),
        }
    }

    async fn run_probe(&self) -> Result<ConditionalSupport, StoreError> {
        let base = format!(
            "{}-probe/{:016x}",
            crate::store::key::RESERVED_PREFIX,
            rand::random::<u64>()
        );
        let mut written = Vec::new();
        let result = self.probe_steps(&base, &mut written).await;
        for key in written {
            let _ = self.delete_raw(&key).await;
        }
        let support = match result {
            Err(StoreError::ConditionalUnsupported(_)) => ConditionalSupport::Ignored,
            other => other?,
        };
        if support != ConditionalSupport::Atomic {
            tracing::warn!(store = %self.describe(), ?support, "object store does not honour conditional writes atomically");
        }
        Ok(support)
    }

    async fn probe_steps(
        &self,
        base: &str,
        written: &mut Vec<String>,
    ) -> Result<ConditionalSupport, StoreError> {
        let data = Bytes::from_static(b"glidefs conditional-write probe");
        let key = format!("{base}/seq");
        written.push(key.clone());
        let must_fail = |r: Result<String, StoreError>| match r {
            Err(StoreError::PreconditionFailed(_)) => Ok(true),
            Ok(_) => Ok(false),
            Err(e) => Err(e),
        };
        let first = self
            .put_once(&key, data.clone(), Some(PutCondition::IfAbsent))
            .await?;
        if !must_fail(
            self.put_once(&key, data.clone(), Some(PutCondition::IfAbsent))
                .await,
        )? {
            return Ok(ConditionalSupport::Ignored);
        }
        let wrong = if first == "0" { "1" } else { "0" };
        let r = self
            .put_once(
                &key,
                data.clone(),
                Some(PutCondition::IfMatch(wrong.to_owned())),
            )
            .await;
        if !must_fail(r)? {
            return Ok(ConditionalSupport::Ignored);
        }
        match self
            .put_once(&key, data.clone(), Some(PutCondition::IfMatch(first)))
            .await
        {
            Ok(_) => {}
            Err(StoreError::PreconditionFailed(_)) => return Ok(ConditionalSupport::Ignored),
            Err(e) => return Err(e),
        }
        for round in 0..RACE_ROUNDS {
            let key = format!("{base}/race{round}");
            written.push(key.clone());
            let attempts: Vec<_> = (0..RACE_WRITERS)
                .map(|i| {
                    self.put_once(
                        &key,
                        Bytes::from(format!("probe writer {i}")),
                        Some(PutCondition::IfAbsent),
                    )
                })
                .collect();
            let mut winners = 0;
            for r in join_all(attempts).await {
                match r {
                    Ok(_) => winners += 1,
                    Err(StoreError::PreconditionFailed(_)) => {}
                    Err(e) => return Err(e),
                }
            }
            if winners != 1 {
                return Ok(ConditionalSupport::Racy);
            }
        }
        Ok(ConditionalSupport::Atomic)
    }
}
