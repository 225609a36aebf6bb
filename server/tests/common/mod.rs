//! Shared set-up for the server's real-process tests.
#![allow(dead_code)]

use jepsen::{free_port, provision, EtcdBins, MemberSpec, Server};
use std::path::{Path, PathBuf};

pub fn keel_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_keel"))
}

pub fn spec(dir: &Path, name: &str, peer_url: &str) -> MemberSpec {
    MemberSpec {
        name: name.to_string(),
        data_dir: dir.join(name),
        client_port: free_port(),
        peer_url: peer_url.to_string(),
        token: "etcd-cluster".to_string(),
    }
}

/// etcd and Keel started with the same name, peer URL and token (so the same member and
/// cluster ids), on different client ports.
pub struct Pair {
    pub bins: EtcdBins,
    pub etcd: Server,
    pub keel: Server,
    pub dir: tempfile::TempDir,
}

pub fn start_pair() -> Pair {
    let bins = provision();
    let dir = tempfile::tempdir().expect("tempdir");
    // Keel does not bind its peer port yet, so the two can share one peer URL.
    let peer = format!("http://127.0.0.1:{}", free_port());
    let etcd =
        Server::start("etcd", &bins.etcd, spec(&dir.path().join("etcd"), "diff", &peer), &bins.etcdctl);
    let keel =
        Server::start("keel", &keel_bin(), spec(&dir.path().join("keel"), "diff", &peer), &bins.etcdctl);
    Pair { bins, etcd, keel, dir }
}

pub fn start_keel(dir: &Path, bins: &EtcdBins) -> Server {
    let peer = format!("http://127.0.0.1:{}", free_port());
    Server::start("keel", &keel_bin(), spec(dir, "keel", &peer), &bins.etcdctl)
}
