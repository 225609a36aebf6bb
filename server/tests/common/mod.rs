//! Shared set-up for the server's real-process tests.
#![allow(dead_code)]

use jepsen::{free_port, provision, EtcdBins, MemberSpec, Server};
use std::io::{Read, Write};
use std::net::TcpStream;
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

/// A bare HTTP GET: (status code, body). HTTP/1.0, so that the body is not chunked (a chunk
/// boundary could split a line of `/metrics`).
pub fn http_get(addr: &str, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).expect("connect");
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let status = raw.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = raw.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    // Chunked bodies: keep only the payload lines.
    let body = if raw.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        body.lines()
            .filter(|l| !l.is_empty() && u64::from_str_radix(l.trim(), 16).is_err())
            .collect::<Vec<_>>()
            .join("\n")
    } else {
        body
    };
    (status, body.trim().to_string())
}
