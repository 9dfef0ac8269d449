use std::io;
use std::path::PathBuf;

/// An object that failed a check: (object name, why).
pub type Problem = (String, String);

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Errors say what went wrong and, where there is one, what to do next.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}: not a Cairn vault (no config found); create one in a new or empty folder with `cairn init --vault DIR`", .path.display())]
    NotAVault { path: PathBuf },
    #[error("{0}: a vault already exists here", .path.display())]
    AlreadyAVault { path: PathBuf },
    #[error("wrong password: none of the vault's keys opens with it")]
    WrongPassword,
    #[error("{what}: {source}")]
    Io { what: String, source: io::Error },
    #[error("damaged object {name}: {reason}")]
    Damaged { name: String, reason: String },
    #[error("no snapshot matches {0} (see `cairn snapshots`)")]
    SnapshotNotFound(String),
    #[error("{0}")]
    Invalid(String),
    /// A snapshot spec that is not one (a command-line mistake).
    #[error("{0}")]
    BadSpec(String),
    /// A request that does not fit the snapshot's kind (a disk's view of
    /// a directory snapshot): a command-line mistake too.
    #[error("{0}")]
    WrongKind(String),
}

/// The damaged vault object behind `e` (name, why), however deep: an I/O
/// error a reader made of it, a guest filesystem's error around that. A
/// snapshot that cannot be read for that is the vault's damage, not its
/// guest's: `cairn verify` names it.
pub fn damage_in<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<(&'a str, &'a str)> {
    let mut at = Some(e);
    while let Some(x) = at {
        if let Some(Error::Damaged { name, reason }) = x.downcast_ref::<Error>() {
            return Some((name, reason));
        }
        if let Some(inner) = x.downcast_ref::<io::Error>().and_then(|io| io.get_ref()) {
            let inner: &(dyn std::error::Error + 'static) = inner;
            if let Some(d) = damage_in(inner) {
                return Some(d);
            }
        }
        at = x.source();
    }
    None
}

impl Error {
    /// Wraps an I/O error with the thing that was being done, so a message
    /// such as "disk full" says where.
    pub fn io(what: impl Into<String>, source: io::Error) -> Self {
        Error::Io {
            what: what.into(),
            source,
        }
    }

    pub fn damaged(name: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::Damaged {
            name: name.into(),
            reason: reason.into(),
        }
    }
}

/// Adds "what was being done" to an `io::Result`.
pub trait IoContext<T> {
    fn ctx(self, what: impl FnOnce() -> String) -> Result<T>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn ctx(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|e| Error::io(what(), e))
    }
}
