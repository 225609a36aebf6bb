//! The one error type of the B-tree's boundary.

use std::io;
use thiserror::Error;

/// What can go wrong opening, reading or writing a B-tree file. Broken in-memory invariants are
/// bugs and panic instead; everything that can come from the disk is an error here.
#[derive(Debug, Error)]
pub enum DbError {
    /// The operating system failed a read, write, sync or map.
    #[error("btree {file}: i/o error: {source}")]
    Io { file: String, source: io::Error },
    /// A page failed its checksum or its structural checks, or the file as a whole is not a
    /// consistent tree. Such bytes are never returned as data.
    #[error("btree {file}: page {page} is corrupt: {reason}")]
    Corrupt { file: String, page: u64, reason: String },
    /// The file was written by a different on-disk format version.
    #[error("btree {file}: on-disk format version {found}, this build reads version {expected}")]
    FormatVersion { found: u32, expected: u32, file: String },
    /// A key longer than [`super::MAX_KEY_BYTES`].
    #[error("key of {len} bytes is longer than the limit of {max} bytes")]
    KeyTooLarge { len: usize, max: usize },
    /// A value longer than [`super::MAX_VALUE_BYTES`].
    #[error("value of {len} bytes is longer than the limit of {max} bytes")]
    ValueTooLarge { len: usize, max: usize },
    /// Another process (or another handle in this one) holds the file's exclusive lock.
    #[error("btree {file}: locked by another process")]
    Locked { file: String },
    /// An earlier commit failed part-way; what is on disk is unknown until the file is reopened.
    #[error("btree {file}: an earlier commit failed; reopen the file to recover")]
    Poisoned { file: String },
}

impl DbError {
    pub(crate) fn io(file: &str, source: io::Error) -> DbError {
        DbError::Io { file: file.to_string(), source }
    }

    pub(crate) fn corrupt(file: &str, page: u64, reason: impl Into<String>) -> DbError {
        DbError::Corrupt { file: file.to_string(), page, reason: reason.into() }
    }
}
