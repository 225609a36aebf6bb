//! Keel's runtime: drives the sans-IO core for real.
//!
//! It owns the node task (one tokio task that ticks the Raft node, takes proposals and reads,
//! and handles each `Ready`), the write-ahead log and the storage backends it writes through.
//! The handling of one `Ready` is [`ready::handle_ready`], a sync function that the simulator
//! calls too, so what the simulator tests is what ships. Backends are traits with a real file
//! implementation and a simulated one that can lose or tear unsynced writes.

pub mod backend;
pub mod btree;
pub mod image;
pub mod metrics;
pub mod node;
pub mod ready;
pub mod recover;
pub mod wal;
pub mod watch;
