//! Keel's sans-IO core: the Raft consensus module and the MVCC state machine that Raft
//! replicates.
//!
//! The core is driven, it never drives: the runtime (or the simulator) calls `tick`, `step`,
//! `propose`, `read_index`, `ready` and `advance`, persists what each `Ready` asks for, and
//! applies committed entries to [`mvcc::Store`]. There is no clock (time is counted in ticks), no
//! ambient randomness (a seed is passed in), no files, sockets, threads or async runtime here;
//! `clippy.toml` bans them mechanically. Storage is read through the small sync
//! [`raft::Storage`] trait and written only by the driver, as `Ready` tells it to.
#![forbid(unsafe_code)]

pub mod ids;
pub mod lease;
pub mod membership;
pub mod mvcc;
pub mod pb;
#[cfg(feature = "planted-bugs")]
pub mod planted;
pub mod quota;
pub mod raft;
pub mod state_machine;
