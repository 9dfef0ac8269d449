use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("rule file {path}: {message}")]
    Rules { path: PathBuf, message: String },
    #[error("vulnerability database: {0}")]
    VulnDb(String),
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Vault(#[from] cairn_vault::Error),
    #[error(transparent)]
    Guest(#[from] cairn_guest::GuestError),
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
}

pub type Result<T> = std::result::Result<T, Error>;

pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let context = context.into();
    move |source| Error::Io { context, source }
}
