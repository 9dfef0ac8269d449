use std::fmt;

/// What went wrong reading a guest disk. Messages name the partition and
/// the structure, since the disk may be damaged or crafted.
#[derive(Debug)]
pub enum GuestError {
    /// On-disk data that is inconsistent or out of bounds.
    Corrupt(String),
    /// Valid, but a feature this reader does not handle.
    Unsupported(String),
    NotFound(String),
    /// A request that does not fit the snapshot (e.g. a partition of a
    /// directory snapshot).
    Invalid(String),
    Io(std::io::Error),
    /// Reading the snapshot from the vault failed.
    Vault(cairn_vault::Error),
}

impl fmt::Display for GuestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GuestError::Corrupt(s) => write!(f, "damaged or crafted filesystem: {s}"),
            GuestError::Unsupported(s) => write!(f, "not supported yet: {s}"),
            GuestError::NotFound(s) => write!(f, "no such file or directory: {s}"),
            GuestError::Invalid(s) => f.write_str(s),
            GuestError::Io(e) => write!(f, "reading the snapshot: {e}"),
            GuestError::Vault(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for GuestError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            GuestError::Io(e) => Some(e),
            GuestError::Vault(e) => Some(e),
            _ => None,
        }
    }
}

impl From<std::io::Error> for GuestError {
    fn from(e: std::io::Error) -> Self {
        GuestError::Io(e)
    }
}

impl From<cairn_vault::Error> for GuestError {
    fn from(e: cairn_vault::Error) -> Self {
        GuestError::Vault(e)
    }
}

pub type Result<T, E = GuestError> = std::result::Result<T, E>;

pub(crate) fn corrupt<T>(what: impl Into<String>) -> Result<T> {
    Err(GuestError::Corrupt(what.into()))
}
