//! The error type of the ublk layer. Every variant maps to a negative-free errno via
//! [`UblkError::errno`], which the daemon uses for logs and API answers and the data
//! plane uses to complete a failed request (`-errno`).

use std::io;

/// What went wrong in the ublk control or data plane.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UblkError {
    /// `/dev/ublk-control` is missing: the `ublk_drv` module is not loaded.
    #[error("ublk is not available: /dev/ublk-control missing (modprobe ublk_drv)")]
    NotAvailable,
    /// A control command was refused by the kernel (errno is positive).
    #[error("ublk control command {cmd} on device {dev_id:?} failed: errno {errno}")]
    Kernel {
        /// The command's name, e.g. "ADD_DEV".
        cmd: &'static str,
        /// The device it was sent for, if any.
        dev_id: Option<u32>,
        /// The positive errno the kernel returned.
        errno: i32,
    },
    /// An I/O error outside control commands (opening the char device, mmap, ...).
    #[error("{context}: {source}")]
    Io {
        /// What we were doing.
        context: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The device id is not served by this server.
    #[error("device {0} is not served by this server")]
    UnknownDevice(u32),
    /// The device exists in the kernel but was not created by glidefs.
    #[error("device {0} exists but was not created by glidefs")]
    NotOurs(u32),
    /// Bad options or arguments (e.g. zero queues, depth too large, size not aligned).
    #[error("invalid argument: {0}")]
    Invalid(String),
    /// The server is shutting down or one of its threads is gone.
    #[error("ublk server is shut down")]
    ShutDown,
    /// libublk reported an error that carries no errno.
    #[error("libublk: {0}")]
    Libublk(String),
}

impl UblkError {
    /// The positive errno that best describes this error.
    pub fn errno(&self) -> i32 {
        match self {
            UblkError::NotAvailable => libc::ENODEV,
            UblkError::Kernel { errno, .. } => *errno,
            UblkError::Io { source, .. } => source.raw_os_error().unwrap_or(libc::EIO),
            UblkError::UnknownDevice(_) => libc::ENOENT,
            UblkError::NotOurs(_) => libc::EPERM,
            UblkError::Invalid(_) => libc::EINVAL,
            UblkError::ShutDown => libc::ESHUTDOWN,
            UblkError::Libublk(_) => libc::EIO,
        }
    }

    pub(crate) fn io(context: impl Into<String>, source: io::Error) -> Self {
        UblkError::Io {
            context: context.into(),
            source,
        }
    }

    /// Map a libublk error from command `cmd` to ours.
    pub(crate) fn from_libublk(
        cmd: &'static str,
        dev_id: Option<u32>,
        e: libublk::UblkError,
    ) -> Self {
        match e {
            libublk::UblkError::UringIOError(r) | libublk::UblkError::OtherError(r) => {
                UblkError::Kernel {
                    cmd,
                    dev_id,
                    errno: r.abs(),
                }
            }
            libublk::UblkError::IOError(source) => UblkError::Io {
                context: format!("{cmd} on device {dev_id:?}"),
                source,
            },
            libublk::UblkError::InvalidVal => {
                UblkError::Invalid(format!("{cmd}: rejected by libublk"))
            }
            other => UblkError::Libublk(format!("{cmd}: {other}")),
        }
    }
}
