//! etcd's grpc-gateway JSON API (`POST /v3/...`) against etcd 3.5.1: the same requests to
//! both, in lockstep, must answer the same HTTP status and the same JSON, byte for byte once
//! the few fields that legitimately differ are normalised (raft indexes and term, db sizes,
//! client URLs, server-chosen lease ids, remaining TTLs).

mod common;

use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// An HTTP/1.1 POST's answer, read as it arrives.
struct Answer {
    status: u16,
    chunked: bool,
    length: Option<usize>,
    r: BufReader<TcpStream>,
    /// Body bytes read but not yet returned.
    pending: Vec<u8>,
}

fn send(addr: &str, path: &str, body: &str) -> Answer {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut r = BufReader::new(s);
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    let status = line.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let (mut chunked, mut length) = (false, None);
    loop {
        line.clear();
        r.read_line(&mut line).unwrap();
        let l = line.trim().to_ascii_lowercase();
        if l.is_empty() {
            break;
        }
        chunked |= l == "transfer-encoding: chunked";
        if let Some(n) = l.strip_prefix("content-length:") {
            length = n.trim().parse::<usize>().ok();
        }
    }
    Answer { status, chunked, length, r, pending: Vec::new() }
}

impl Answer {
    /// The next piece of the body; empty at its end.
    fn chunk(&mut self) -> Vec<u8> {
        if !self.chunked {
            let mut out = vec![0; self.length.take().unwrap_or(0)];
            self.r.read_exact(&mut out).unwrap();
            return out;
        }
        let mut line = String::new();
        self.r.read_line(&mut line).unwrap();
        let n = usize::from_str_radix(line.trim(), 16).expect("chunk size");
        let mut chunk = vec![0; n + 2];
        self.r.read_exact(&mut chunk[..if n == 0 { 0 } else { n + 2 }]).unwrap();
        chunk.truncate(n);
        chunk
    }

    fn body(mut self) -> String {
        let mut out = std::mem::take(&mut self.pending);
        loop {
            let c = self.chunk();
            if c.is_empty() {
                return String::from_utf8(out).unwrap();
            }
            out.extend(c);
        }
    }

    /// The next line of a streamed body.
    fn line(&mut self) -> String {
        while !self.pending.contains(&b'\n') {
            let c = self.chunk();
            assert!(!c.is_empty(), "stream ended");
            self.pending.extend(c);
        }
        let at = self.pending.iter().position(|&b| b == b'\n').unwrap();
        let line: Vec<u8> = self.pending.drain(..=at).collect();
        String::from_utf8(line).unwrap()
    }
}

fn post(addr: &str, path: &str, body: &str) -> (u16, String) {
    let a = send(addr, path, body);
    (a.status, a.body())
}

/// Sets `field` (a path of object keys) to `to` wherever it is present.
fn set(v: &mut Value, field: &[&str], to: &str) {
    let (last, parents) = field.split_last().unwrap();
    let mut at = v;
    for p in parents {
        match at.get_mut(*p) {
            Some(next) => at = next,
            None => return,
        }
    }
    if let Some(x) = at.get_mut(*last) {
        *x = Value::String(to.to_string());
    }
}

/// Fields that legitimately differ between two servers, in any answer.
fn normalise(body: &str) -> String {
    let Ok(mut v) = serde_json::from_str::<Value>(body) else {
        return body.to_string();
    };
    let inner = if v.get("result").is_some() { &mut v["result"] } else { &mut v };
    set(inner, &["header", "raft_term"], "T");
    for f in ["dbSize", "dbSizeInUse", "raftIndex", "raftTerm", "raftAppliedIndex"] {
        set(inner, &[f], "N");
    }
    if let Some(members) = inner.get_mut("members").and_then(Value::as_array_mut) {
        for m in members {
            set(m, &["clientURLs"], "URLS");
        }
    }
    v.to_string()
}

struct Diff {
    etcd: String,
    keel: String,
}

impl Diff {
    /// Posts to both; asserts equal status and normalised body; returns keel's body.
    fn same(&self, path: &str, body: &str) -> Value {
        self.same_with(path, body, |_| {})
    }

    fn same_with(&self, path: &str, body: &str, fix: impl Fn(&mut Value)) -> Value {
        let (etcd_code, etcd_body) = post(&self.etcd, path, body);
        let (keel_code, keel_body) = post(&self.keel, path, body);
        let norm = |b: &str| {
            let mut v: Value = serde_json::from_str(&normalise(b)).unwrap_or(Value::String(b.to_string()));
            fix(&mut v);
            v.to_string()
        };
        assert_eq!(
            (keel_code, norm(&keel_body)),
            (etcd_code, norm(&etcd_body)),
            "POST {path} {body}\n keel: {keel_body}\n etcd: {etcd_body}"
        );
        serde_json::from_str(&keel_body).unwrap_or(Value::Null)
    }
}

#[test]
fn gateway_json_matches_etcd() {
    let pair = common::start_pair();
    let host = |s: &jepsen::Server| s.endpoint().trim_start_matches("http://").to_string();
    let d = Diff { etcd: host(&pair.etcd), keel: host(&pair.keel) };

    // Put, and put returning the previous pair (under the JSON name `prevKv` too).
    d.same("/v3/kv/put", r#"{"key":"Zm9v","value":"YmFy"}"#);
    d.same("/v3/kv/put", r#"{"key":"Zm9vMg==","value":"YmFy","prev_kv":true}"#);
    d.same("/v3/kv/put", r#"{"key":"Zm9vMg==","value":"YmF6","prevKv":true}"#);
    d.same("/v3/kv/put", r#"{"key":"Zm9vMw==","value":"eA=="}"#);

    // Range: prefix, limit (numbers or strings), count only, keys only, a missing key.
    d.same("/v3/kv/range", r#"{"key":"Zm9v","range_end":"Zm9w"}"#);
    d.same("/v3/kv/range", r#"{"key":"Zm9v","range_end":"Zm9w","limit":1}"#);
    d.same("/v3/kv/range", r#"{"key":"Zm9v","rangeEnd":"Zm9w","limit":"2","sort_order":"DESCEND"}"#);
    d.same("/v3/kv/range", r#"{"key":"Zm9v","range_end":"Zm9w","count_only":true}"#);
    d.same("/v3/kv/range", r#"{"key":"Zm9v","range_end":"Zm9w","keys_only":true}"#);
    d.same("/v3/kv/range", r#"{"key":"bm9uZQ=="}"#);
    d.same("/v3/kv/range", r#"{"key":"Zm9v","revision":"2","unknown_field":1}"#);

    // Delete with and without previous pairs, and a delete of nothing.
    d.same("/v3/kv/deleterange", r#"{"key":"Zm9vMg==","prev_kv":true}"#);
    d.same("/v3/kv/deleterange", r#"{"key":"Zm9vMw=="}"#);
    d.same("/v3/kv/deleterange", r#"{"key":"Zm9vMg=="}"#);

    // Txn: a compare that succeeds, then the same compare failing.
    let txn = r#"{"compare":[{"key":"Zm9v","result":"EQUAL","target":"VALUE","value":"YmFy"}],
        "success":[{"request_put":{"key":"Zm9v","value":"YmF6"}},{"request_range":{"key":"Zm9v"}}],
        "failure":[{"request_range":{"key":"Zm9v"}},{"request_delete_range":{"key":"Zm9v","prev_kv":true}}]}"#;
    let ok = d.same("/v3/kv/txn", txn);
    assert_eq!(ok["succeeded"], Value::Bool(true), "{ok}");
    let failed = d.same("/v3/kv/txn", txn);
    assert!(failed.get("succeeded").is_none(), "{failed}");
    d.same(
        "/v3/kv/txn",
        r#"{"compare":[{"key":"Zm9v","target":"CREATE","create_revision":"0","result":"GREATER"}],
            "success":[{"requestPut":{"key":"Zm9v","value":"YmF6"}}]}"#,
    );
    d.same("/v3/kv/put", r#"{"key":"Zm9v","value":"YmFy"}"#);

    // Compaction, then reads below it and beyond the head.
    let head =
        d.same("/v3/kv/range", r#"{"key":"Zm9v"}"#)["header"]["revision"].as_str().unwrap().to_string();
    d.same("/v3/kv/compaction", &format!(r#"{{"revision":"{head}"}}"#));
    d.same("/v3/kv/range", r#"{"key":"Zm9v","revision":"2"}"#);
    d.same("/v3/kv/range", r#"{"key":"Zm9v","revision":"1000"}"#);
    d.same("/v3/kv/compaction", r#"{"revision":"2"}"#);

    // Leases: grant (chosen and server-chosen ids), attach, time-to-live, list, keep-alive,
    // revoke (and the `/v3/kv/lease/...` aliases).
    d.same("/v3/lease/grant", r#"{"TTL":"60","ID":"1234"}"#);
    d.same_with("/v3/lease/grant", r#"{"TTL":60}"#, |v| set(v, &["ID"], "ID"));
    d.same("/v3/kv/put", r#"{"key":"bGs=","value":"eA==","lease":"1234"}"#);
    let remaining = |v: &mut Value| {
        let ttl = v["TTL"].as_str().unwrap().parse::<i64>().unwrap();
        assert!((55..=60).contains(&ttl), "{v}");
        set(v, &["TTL"], "ttl");
    };
    d.same_with("/v3/lease/timetolive", r#"{"ID":"1234","keys":true}"#, remaining);
    d.same_with("/v3/kv/lease/timetolive", r#"{"ID":1234}"#, remaining);
    d.same("/v3/lease/timetolive", r#"{"ID":"99"}"#);
    let leases = |v: &mut Value| {
        let ids = v["leases"].as_array_mut().unwrap();
        for l in ids.iter_mut() {
            if l["ID"] != "1234" {
                set(l, &["ID"], "ID");
            }
        }
        ids.sort_by_key(|l| l.to_string());
    };
    d.same_with("/v3/lease/leases", "{}", leases);
    d.same_with("/v3/kv/lease/leases", "", leases);
    d.same("/v3/lease/keepalive", r#"{"ID":"1234"}"#);
    d.same("/v3/lease/keepalive", r#"{"ID":"99"}"#);
    d.same("/v3/lease/revoke", r#"{"ID":"1234"}"#);
    d.same("/v3/kv/lease/revoke", r#"{"ID":"1234"}"#);
    d.same("/v3/kv/range", r#"{"key":"bGs="}"#);
    d.same("/v3/lease/grant", r#"{"TTL":"9999999999999"}"#);

    // Cluster and maintenance.
    d.same("/v3/cluster/member/list", "{}");
    let status = d.same("/v3/maintenance/status", "{}");
    assert_eq!(status["leader"], status["header"]["member_id"], "{status}");
    d.same("/v3/maintenance/alarm", "{}");
    d.same("/v3/maintenance/alarm", r#"{"action":"GET"}"#);

    // Errors: etcd's own, and undecodable bodies.
    d.same("/v3/kv/put", r#"{"key":"","value":"YmFy"}"#);
    d.same("/v3/kv/range", "");
    d.same("/v3/kv/put", r#"{"key":"Zm9v","value":"YmFy","ignore_value":true}"#);
    d.same("/v3/kv/put", r#"{"key":"Zm9v","value":"YmFy"#);
    d.same("/v3/kv/put", r#"{"key":"!!"}"#);
    d.same("/v3/kv/put", "[1]");
    d.same("/v3/lease/keepalive", r#"{"ID":"#);

    // Watch: the created response, then one event per put, as lines of a chunked stream.
    for addr in [&d.etcd, &d.keel] {
        post(addr, "/v3/kv/put", r#"{"key":"dw==","value":"MA=="}"#);
    }
    let create = r#"{"create_request":{"key":"dw==","prev_kv":true}}"#;
    let mut watches = [send(&d.etcd, "/v3/watch", create), send(&d.keel, "/v3/watch", create)];
    assert_eq!(watches[1].status, watches[0].status);
    let created = watches.each_mut().map(|w| normalise(&w.line()));
    assert_eq!(created[1], created[0]);
    assert!(created[1].contains(r#""created":true"#), "{}", created[1]);
    for addr in [&d.etcd, &d.keel] {
        post(addr, "/v3/kv/put", r#"{"key":"dw==","value":"MQ=="}"#);
    }
    let events = watches.each_mut().map(|w| normalise(&w.line()));
    assert_eq!(events[1], events[0]);
    assert!(events[1].contains(r#""prev_kv":{"#), "{}", events[1]);
}
