//! etcd's plain-HTTP endpoints on the client port, against etcd 3.5.1: `/health` and
//! `/version` answer the same, and `/metrics` carries etcd's metric names, beside gRPC on the
//! same port.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;

/// A bare HTTP/1.1 GET: (status code, body).
fn get(addr: &str, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).expect("connect");
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").unwrap();
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

#[test]
fn health_version_and_metrics_match_etcd() {
    let pair = common::start_pair();
    let (etcd, keel) = (pair.etcd.endpoint(), pair.keel.endpoint());
    let (etcd, keel) = (etcd.trim_start_matches("http://"), keel.trim_start_matches("http://"));
    for path in ["/health", "/version"] {
        assert_eq!(get(keel, path), get(etcd, path), "{path}");
    }
    let (code, metrics) = get(keel, "/metrics");
    assert_eq!(code, 200);
    for name in ["etcd_server_has_leader 1", "etcd_server_is_leader 1", "etcd_mvcc_db_total_size_in_bytes"] {
        assert!(metrics.contains(name), "{name} missing from:\n{metrics}");
        let etcd_metrics = get(etcd, "/metrics").1;
        let metric = name.split_whitespace().next().unwrap();
        assert!(etcd_metrics.contains(metric), "etcd has no {metric}: the name must be etcd's");
    }
}
