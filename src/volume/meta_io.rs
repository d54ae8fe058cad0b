//! Reading and writing the volume metadata object (`volumes/<name>/meta`, JSON) and
//! the volume-name check every store-level operation starts with.

use super::manifest::{VolumeMeta, FORMAT_VERSION, FORMAT_WHOLE_BLOCKS};
use super::VolumeError;
use crate::store::{ObjectStore, StoreError};
use crate::BLOCK_SIZE;
use bytes::Bytes;

pub(super) fn parse_meta(b: &[u8]) -> Result<VolumeMeta, VolumeError> {
    let m: VolumeMeta =
        serde_json::from_slice(b).map_err(|e| VolumeError::Corrupt(format!("volume meta: {e}")))?;
    if m.format != FORMAT_VERSION && m.format != FORMAT_WHOLE_BLOCKS {
        return Err(VolumeError::Corrupt(format!(
            "unsupported volume format {} (this build reads formats {FORMAT_WHOLE_BLOCKS} and {FORMAT_VERSION}; a newer glidefs wrote it)",
            m.format
        )));
    }
    if m.block_size != BLOCK_SIZE as u64 {
        return Err(VolumeError::Corrupt(format!(
            "volume block size {} differs from this build's {}",
            m.block_size, BLOCK_SIZE
        )));
    }
    Ok(m)
}

pub(super) fn meta_bytes(m: &VolumeMeta) -> Result<Bytes, VolumeError> {
    serde_json::to_vec(m)
        .map(Bytes::from)
        .map_err(|e| VolumeError::Corrupt(format!("meta encoding: {e}")))
}

pub(super) async fn read_meta(
    store: &dyn ObjectStore,
    key: &str,
) -> Result<Option<(VolumeMeta, String)>, VolumeError> {
    let etag = match store.head(key).await {
        Ok(m) => m.etag,
        Err(StoreError::NotFound(_)) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    match store.get(key).await {
        Ok(b) => Ok(Some((parse_meta(&b)?, etag))),
        Err(StoreError::NotFound(_)) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

pub(super) fn check_name(name: &str) -> Result<(), VolumeError> {
    crate::rules::validate_name(name)
        .map_err(|m| VolumeError::Invalid(format!("bad volume name {name:?}: {m}")))
}
