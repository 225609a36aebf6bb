//! The MVCC key-value state machine with etcd 3.5's revision semantics.

mod key_index;
mod revision;
mod store;

pub use revision::Revision;
pub use store::{MvccError, Store};
