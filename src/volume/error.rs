//! [`VolumeError`]: every failure of the volume engine, with the errno an I/O completes with.

use crate::store::StoreError;

/// Errors of the volume engine. [`VolumeError::errno`] gives the (positive) errno the
/// ublk layer completes a request with (it negates it).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VolumeError {
    /// Bad argument: misaligned or out-of-range request, bad name or size.
    #[error("invalid argument: {0}")]
    Invalid(String),
    /// Local file I/O failed (cache file, journal, state).
    #[error("local I/O error ({context}): {source}")]
    Io {
        /// What the engine was doing.
        context: String,
        /// Underlying error.
        source: std::io::Error,
    },
    /// The object store failed (after retries where the engine retries).
    #[error("object store: {0}")]
    Store(#[from] StoreError),
    /// Data failed checksum verification (never returned to the caller).
    #[error("checksum mismatch: {0}")]
    Checksum(String),
    /// A stored object or local state file is malformed.
    #[error("corrupt {0}")]
    Corrupt(String),
    /// Another owner holds the volume's lease.
    #[error("volume lease held by {owner} (renewed {age_ms} ms ago); use takeover to force")]
    LeaseHeld {
        /// Current lease owner.
        owner: String,
        /// Age of its last renewal.
        age_ms: u64,
    },
    /// Our lease was taken by another owner: nothing more can be committed.
    #[error("fenced: {0}")]
    Fenced(String),
    /// Our lease could not be renewed before its deadline: writes and FLUSHes are
    /// refused until a renewal succeeds (self-fencing; another host may take over).
    #[error("lease expired: {0}")]
    LeaseExpired(String),
    /// The volume was closed (or a local I/O error put it into the failed state).
    #[error("volume closed")]
    Closed,
    /// The volume does not exist in the store.
    #[error("volume not found: {0}")]
    NotFound(String),
    /// The named thing exists already (a snapshot name in use).
    #[error("already exists: {0}")]
    AlreadyExists(String),
    /// The thing is still needed (a snapshot forks were made of, the name of a
    /// deleted volume whose snapshots forks still read).
    #[error("in use: {0}")]
    InUse(String),
    /// An encrypted volume's keys: no master key, a wrong one, or the data key was
    /// erased. Never carries key bytes.
    #[error("encryption key: {0}")]
    Key(String),
    /// The operation is not supported (e.g. shrinking).
    #[error("unsupported: {0}")]
    Unsupported(String),
}

impl VolumeError {
    /// Positive errno for completing an I/O with this error.
    pub fn errno(&self) -> i32 {
        match self {
            VolumeError::Invalid(_) => libc::EINVAL,
            VolumeError::LeaseHeld { .. } => libc::EBUSY,
            VolumeError::NotFound(_) => libc::ENOENT,
            VolumeError::AlreadyExists(_) => libc::EEXIST,
            VolumeError::InUse(_) => libc::EBUSY,
            VolumeError::Unsupported(_) => libc::EOPNOTSUPP,
            VolumeError::Closed => libc::ESHUTDOWN,
            VolumeError::Io { source, .. } => source.raw_os_error().unwrap_or(libc::EIO),
            _ => libc::EIO,
        }
    }

    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        VolumeError::Io {
            context: context.into(),
            source,
        }
    }
}

impl From<VolumeError> for std::io::Error {
    fn from(e: VolumeError) -> Self {
        std::io::Error::from_raw_os_error(e.errno())
    }
}
