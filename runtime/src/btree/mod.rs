//! The memory-mapped copy-on-write B-tree: one ordered keyspace of byte-string keys to
//! byte-string values in one file, with atomic, durable multi-key commits.
//!
//! Pages are 4 KiB. A commit writes every page it changed to fresh pages (never one the last
//! committed tree reaches), syncs, then writes a meta page naming the new root into the slot
//! the previous commit did not use, and syncs again. Every page carries a checksum, its own id
//! and the id of the transaction that wrote it, checked on every read. Real files are read
//! through a read-only memory map and written with pwrite; the simulated disk is read with
//! `read_at`. The byte layouts, the commit protocol and the crash argument are in
//! `docs/btree-format.md`.

mod cursor;
mod db;
mod error;
mod page;
mod pager;
mod shrink;
mod txn;

pub use cursor::{Entry, Range};
pub use db::{Db, Stats};
pub use error::DbError;
/// The map type [`PageFile::map`] returns, for implementations outside this crate.
pub use memmap2::Mmap;
pub use page::{fuzz_decode_page, PageId, FORMAT_VERSION, MAX_KEY_BYTES, MAX_VALUE_BYTES, PAGE_BYTES};
pub use pager::PageFile;
pub use shrink::ShrinkProgress;
pub use txn::WriteTxn;

#[cfg(test)]
mod tests;
