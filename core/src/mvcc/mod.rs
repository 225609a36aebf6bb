//! The MVCC key-value state machine with etcd 3.5's revision semantics.

mod key_index;
pub mod range;
mod revision;
mod store;

pub use revision::Revision;
pub use store::{txn_keys_disjoint, MvccError, Store, COMPACT_KEYS_PER_STEP};
