//! The volume engine: one per export, no kernel dependency.
//!
//! INTERFACE CONTRACT (used by the router and the ublk target adapter; the
//! implementation behind it is free):
//!
//! ```text
//! VolumeConfig { name, size_bytes, cache_dir, dirty_limit_bytes, flush_interval, flush_mode, ... }
//! Volume::open(cfg, store) -> Result<Arc<Volume>, VolumeError>   // create, reopen, or cold wake
//! Volume::exists_in_store(store, name) -> Result<Option<u64 /*size*/>, VolumeError>
//! Volume::purge(store, cache_dir, name) -> Result<(), VolumeError>
//! vol.size_bytes() -> u64
//! vol.read(offset, &mut buf).await; vol.write(offset, &data, fua).await
//! vol.flush().await; vol.discard(offset, len).await; vol.write_zeroes(offset, len).await
//! vol.drain().await; vol.grow(new_size).await; vol.close().await; vol.stats()
//! ```
