//! The router's errors and their kinds: each [`RouterError`] maps to one
//! [`ErrorKind`], and the API maps each kind to one HTTP status (src/api/handlers.rs).
//! Backend failures keep the export name and the operation that failed.

use super::backend::BackendError;
use super::registry::RegistryError;

/// How an error should be reported (the API maps each to one HTTP status).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Bad input (400).
    Invalid,
    /// No such export (404).
    NotFound,
    /// Conflicts with the current state (409).
    Conflict,
    /// A capacity limit was hit (507).
    Limit,
    /// Not ready, shutting down, or a dependency is down: retry later (503).
    Unavailable,
    /// Corrupt data or an unexpected failure (500).
    Internal,
}

/// Router errors.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RouterError {
    /// The export name is not acceptable.
    #[error("{0}")]
    InvalidName(String),
    /// The size is not acceptable.
    #[error("{0}")]
    InvalidSize(String),
    /// The request's options do not fit together.
    #[error("{0}")]
    InvalidRequest(String),
    /// No export of that name.
    #[error("export {0:?} not found")]
    NotFound(String),
    /// The request conflicts with the export's state.
    #[error("{0}")]
    Conflict(String),
    /// `max_exports` reached.
    #[error("export limit reached: this daemon serves at most {0} exports (limits.max_exports)")]
    LimitReached(usize),
    /// Start-up recovery is not finished.
    #[error("not ready: recovering exports")]
    NotReady,
    /// The daemon is stopping.
    #[error("shutting down")]
    ShuttingDown,
    /// The volume engine or device layer failed.
    #[error("{op} {name:?}: {source}")]
    Backend {
        /// Export name.
        name: String,
        /// What was being done.
        op: &'static str,
        /// The failure.
        source: BackendError,
    },
    /// The registry could not be read or written.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// Metric handles could not be created.
    #[error("metrics: {0}")]
    Metrics(String),
}

impl RouterError {
    /// The error's kind, for status codes.
    pub fn kind(&self) -> ErrorKind {
        match self {
            RouterError::InvalidName(_)
            | RouterError::InvalidSize(_)
            | RouterError::InvalidRequest(_) => ErrorKind::Invalid,
            RouterError::NotFound(_) => ErrorKind::NotFound,
            RouterError::Conflict(_) => ErrorKind::Conflict,
            RouterError::LimitReached(_) => ErrorKind::Limit,
            RouterError::NotReady | RouterError::ShuttingDown => ErrorKind::Unavailable,
            RouterError::Backend { source, .. } => match source {
                BackendError::Invalid(_) => ErrorKind::Invalid,
                BackendError::Unavailable(_) => ErrorKind::Unavailable,
                BackendError::Fenced(_) | BackendError::Conflict(_) => ErrorKind::Conflict,
                BackendError::NotFound(_) => ErrorKind::NotFound,
                _ => ErrorKind::Internal,
            },
            RouterError::Registry(_) | RouterError::Metrics(_) => ErrorKind::Internal,
        }
    }
}

pub(super) fn backend<'a>(
    name: &'a str,
    op: &'static str,
) -> impl FnOnce(BackendError) -> RouterError + 'a {
    move |source| RouterError::Backend {
        name: name.to_string(),
        op,
        source,
    }
}
