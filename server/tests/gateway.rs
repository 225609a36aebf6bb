//! etcd's grpc-gateway JSON API (`POST /v3/...`) against etcd 3.5.1: the same requests to
//! both, in lockstep, must answer the same HTTP status and the same JSON, byte for byte once
//! the few fields that legitimately differ are normalised (raft indexes and term, db sizes,
//! client URLs, server-chosen lease and member ids, remaining TTLs, hashes). Where Keel knowingly
//! answers otherwise (what it does not implement yet), the test says so and checks both answers.

mod common;

use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// An HTTP/1.1 answer, read as it arrives.
struct Answer {
    status: u16,
    /// Header names in lower case.
    headers: Vec<(String, String)>,
    chunked: bool,
    length: Option<usize>,
    r: BufReader<TcpStream>,
    /// Body bytes read but not yet returned.
    pending: Vec<u8>,
}

fn send(addr: &str, path: &str, body: &str) -> Answer {
    request(addr, "POST", path, body)
}

fn request(addr: &str, method: &str, path: &str, body: &str) -> Answer {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .unwrap();
    // A large body may be refused before it is all read: the answer counts, not the write.
    let _ = s.write_all(body.as_bytes());
    let mut r = BufReader::new(s);
    let mut line = String::new();
    r.read_line(&mut line).unwrap_or_else(|e| panic!("{method} {path} {body:.200} to {addr}: {e}"));
    let status = line.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let (mut chunked, mut length, mut headers) = (false, None, Vec::new());
    loop {
        line.clear();
        r.read_line(&mut line).unwrap();
        let l = line.trim();
        if l.is_empty() {
            break;
        }
        let (name, value) = l.split_once(':').unwrap_or((l, ""));
        let (name, value) = (name.to_ascii_lowercase(), value.trim().to_string());
        chunked |= name == "transfer-encoding" && value == "chunked";
        if name == "content-length" {
            length = value.parse::<usize>().ok();
        }
        headers.push((name, value));
    }
    Answer { status, headers, chunked, length, r, pending: Vec::new() }
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

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
        let [_, keel] = self.same_each(path, [body, body], fix);
        keel
    }

    /// As `same_with`, with a body of its own for each (etcd's, then Keel's); returns both
    /// answers, etcd's first.
    fn same_each(&self, path: &str, bodies: [&str; 2], fix: impl Fn(&mut Value)) -> [Value; 2] {
        let (etcd_code, etcd_body) = post(&self.etcd, path, bodies[0]);
        let (keel_code, keel_body) = post(&self.keel, path, bodies[1]);
        let norm = |b: &str| {
            let mut v: Value = serde_json::from_str(&normalise(b)).unwrap_or(Value::String(b.to_string()));
            fix(&mut v);
            v.to_string()
        };
        assert_eq!(
            (keel_code, norm(&keel_body)),
            (etcd_code, norm(&etcd_body)),
            "POST {path} {bodies:?}\n keel: {keel_body}\n etcd: {etcd_body}"
        );
        [&etcd_body, &keel_body].map(|b| serde_json::from_str(b).unwrap_or(Value::Null))
    }

    /// Any method: the status, the body and the headers that say what it is must match.
    fn same_http(&self, method: &str, path: &str, body: &str) {
        const HEADERS: [&str; 5] = [
            "content-type",
            "x-content-type-options",
            "access-control-allow-origin",
            "allow",
            "grpc-metadata-content-type",
        ];
        let seen = [&self.etcd, &self.keel].map(|addr| {
            let a = request(addr, method, path, body);
            let headers = HEADERS.map(|h| a.header(h).map(str::to_string));
            (a.status, headers, normalise(&a.body()))
        });
        assert_eq!(seen[1], seen[0], "{method} {path} {body}");
    }

    /// A known difference: both answers (status, JSON), etcd's first, for the caller to check.
    fn differs(&self, path: &str, body: &str) -> [(u16, Value); 2] {
        [&self.etcd, &self.keel].map(|addr| {
            let (code, body) = post(addr, path, body);
            (code, serde_json::from_str(&body).unwrap_or(Value::String(body)))
        })
    }
}

/// `{"error":…,"code":…}` as a pair.
fn error_of(v: &Value) -> (i64, &str) {
    (v["code"].as_i64().unwrap_or(-1), v["error"].as_str().unwrap_or(""))
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
    drop(watches);

    let rest = std::panic::catch_unwind(|| {
        members(&d);
        maintenance(&d);
        lock_and_election(&d);
        auth(&d);
        http_and_json_errors(&d);
    });
    if let Err(panic) = rest {
        for s in [&pair.etcd, &pair.keel] {
            let log = s.proc.log_text();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!("---- {} log (end) ----", s.proc.name);
            tail.iter().rev().for_each(|l| eprintln!("{l}"));
        }
        std::panic::resume_unwind(panic);
    }
}

/// Member add (a learner, so that the one-member cluster keeps its quorum), update, promote and
/// remove, and their errors.
fn members(d: &Diff) {
    // Member ids are a hash of the peer URLs and the time: the new member's may differ.
    let list = d.same("/v3/cluster/member/list", "{}");
    let (self_id, members) = (list["header"]["member_id"].clone(), list["members"].clone());
    let new_ids = |v: &mut Value| {
        set(v, &["member", "ID"], "ID");
        for m in v.get_mut("members").and_then(Value::as_array_mut).into_iter().flatten() {
            if m["ID"] != self_id {
                set(m, &["ID"], "ID");
            }
        }
        if let Some(ms) = v.get_mut("members").and_then(Value::as_array_mut) {
            ms.sort_by_key(|m| m.to_string());
        }
    };
    // etcd 3.5.1 proposes most member changes to raft even when they will fail, and raft drops a
    // change proposed before the one ahead of it is applied (the request then times out), which
    // may be just after etcd answered that one. A write answered after a change is a barrier:
    // raft has applied the change before it takes the write.
    let change = |path: &str, bodies: [&str; 2], fix: &dyn Fn(&mut Value)| {
        let answers = d.same_each(path, bodies, fix);
        d.same("/v3/lease/revoke", r#"{"ID":"1"}"#);
        answers
    };
    let learner = r#"{"peerURLs":["http://127.0.0.1:1"],"isLearner":true}"#;
    let added = change("/v3/cluster/member/add", [learner, learner], &new_ids);
    let ids = added.each_ref().map(|a| a["member"]["ID"].as_str().unwrap().to_string());
    let with_id = |extra: &str| ids.each_ref().map(|id| format!(r#"{{"ID":"{id}"{extra}}}"#));
    d.same_with("/v3/cluster/member/list", r#"{"linearizable":true}"#, new_ids);
    // (A second add of the same URLs would fail on its id or its URLs, by the second it is in.)
    let taken = format!(r#"{{"peerURLs":{},"isLearner":true}}"#, members[0]["peerURLs"]);
    change("/v3/cluster/member/add", [&taken, &taken], &new_ids);
    for bad in [r#"{"peerURLs":["bad"]}"#, "{}", r#"{"peerURLs":[1]}"#, r#"{"peerURLs":"x"}"#] {
        change("/v3/cluster/member/add", [bad, bad], &new_ids);
    }

    change("/v3/cluster/member/promote", bodies(&with_id("")), &new_ids);
    change("/v3/cluster/member/promote", [r#"{"ID":"1"}"#; 2], &new_ids);
    let promote_self = format!(r#"{{"ID":{self_id}}}"#);
    change("/v3/cluster/member/promote", [&promote_self, &promote_self], &new_ids);

    // etcd 3.5.1 drops an updated learner's flag from its answers (it still treats it as a
    // learner: promoting it still asks for it to be in sync); Keel keeps the flag.
    let update = with_id(r#","peerURLs":["http://127.0.0.1:2"]"#);
    let without_flag = |v: &mut Value| {
        new_ids(v);
        for m in v["members"].as_array_mut().unwrap() {
            m.as_object_mut().unwrap().remove("isLearner");
        }
    };
    let [etcd, keel] = change("/v3/cluster/member/update", bodies(&update), &without_flag);
    let learners =
        |v: &Value| v["members"].as_array().unwrap().iter().filter(|m| m["isLearner"] == true).count();
    assert_eq!((learners(&etcd), learners(&keel)), (0, 1), "{etcd}\n{keel}");
    change("/v3/cluster/member/update", [r#"{"ID":"1","peerURLs":["http://127.0.0.1:3"]}"#; 2], &new_ids);
    change("/v3/cluster/member/update", bodies(&update), &without_flag);
    // This member's URLs: its own again (an update to none would crash etcd 3.5.1), then the
    // learner's update to them.
    let own = format!(r#""peerURLs":{}"#, members[0]["peerURLs"]);
    let update_self = format!(r#"{{"ID":{self_id},{own}}}"#);
    change("/v3/cluster/member/update", [&update_self, &update_self], &without_flag);
    change("/v3/cluster/member/update", bodies(&with_id(&format!(",{own}"))), &new_ids);

    change("/v3/cluster/member/remove", bodies(&with_id("")), &new_ids);
    change("/v3/cluster/member/remove", bodies(&with_id("")), &new_ids);
    change("/v3/cluster/member/remove", ["{}"; 2], &new_ids);
    d.same("/v3/cluster/member/list", "{}");
}

fn bodies(b: &[String; 2]) -> [&str; 2] {
    [b[0].as_str(), b[1].as_str()]
}

/// Defragment, hash, snapshot (a stream), leadership transfer; HashKV has no route in etcd
/// 3.5 (Hash holds its path).
fn maintenance(d: &Diff) {
    d.same("/v3/maintenance/defragment", "{}");
    d.same("/v3/maintenance/defragment", "");
    d.same("/v3/maintenance/defragment", "x");
    // The hashes differ (different stores), but both are JSON numbers (a uint32).
    let hash = |v: &mut Value| {
        assert!(v["hash"].is_u64(), "{v}");
        v["hash"] = Value::from(0);
    };
    d.same_with("/v3/maintenance/hash", "{}", hash);
    d.same_with("/v3/maintenance/hash", r#"{"revision":"1"}"#, hash);
    d.same("/v3/maintenance/hashkv", "{}");

    // A store of a few chunks: the streams have the same shape (etcd's chunks are 32 KiB too).
    let value = base64_of(&[b'v'; 100_000]);
    d.same("/v3/kv/put", &format!(r#"{{"key":"c25hcA==","value":"{value}"}}"#));
    let shapes = [&d.etcd, &d.keel].map(|addr| snapshot_shape(addr));
    assert_eq!(shapes[1], shapes[0]);
    d.same("/v3/kv/deleterange", r#"{"key":"c25hcA=="}"#);
    d.same("/v3/maintenance/snapshot", r#"{"x":"#);

    d.same("/v3/maintenance/transfer-leadership", "{}");
    d.same("/v3/maintenance/transfer-leadership", r#"{"targetID":"5"}"#);
    let me = d.same("/v3/maintenance/status", "{}")["leader"].clone();
    d.same("/v3/maintenance/transfer-leadership", &format!(r#"{{"targetID":{me}}}"#));

    // Keel has no downgrade yet.
    let [(etcd_code, etcd), (keel_code, keel)] = d.differs("/v3/maintenance/downgrade", "{}");
    assert_eq!((etcd_code, error_of(&etcd)), (400, (3, "etcdserver: wrong downgrade target version format")));
    assert_eq!((keel_code, error_of(&keel).0), (501, 12), "{keel}");
}

fn base64_of(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// The snapshot stream of `addr`, checked: lines `{"result":…}` holding `blob` and, but in the
/// last chunk of data and the digest, `remaining_bytes` (a decimal string, what is left after
/// the chunk); the last blob is the SHA-256 of all the others. Returns the fields of each line,
/// runs of alike lines counted once.
fn snapshot_shape(addr: &str) -> Vec<Vec<String>> {
    use base64::Engine as _;
    use sha2::Digest as _;
    let (code, body) = post(addr, "/v3/maintenance/snapshot", "{}");
    assert_eq!(code, 200, "{body}");
    let results: Vec<Value> =
        body.lines().map(|l| serde_json::from_str::<Value>(l).unwrap()["result"].take()).collect();
    let blobs: Vec<Vec<u8>> = results
        .iter()
        .map(|r| base64::engine::general_purpose::STANDARD.decode(r["blob"].as_str().unwrap()).unwrap())
        .collect();
    let (digest, data) = blobs.split_last().unwrap();
    assert_eq!(digest[..], sha2::Sha256::digest(data.concat())[..], "{addr}");
    let total: usize = data.iter().map(Vec::len).sum();
    let mut sent = 0;
    for (r, blob) in results.iter().zip(data) {
        sent += blob.len();
        let remaining = r.get("remaining_bytes").map(|v| v.as_str().unwrap().parse::<usize>().unwrap());
        assert_eq!(remaining.unwrap_or(0), total - sent, "{addr}: {r}");
    }
    let mut shape: Vec<Vec<String>> =
        results.iter().map(|r| r.as_object().unwrap().keys().cloned().collect()).collect();
    shape.dedup();
    shape
}

/// The Lock and Election services' routes, with leases both servers know by id.
fn lock_and_election(d: &Diff) {
    d.same("/v3/lease/grant", r#"{"TTL":60,"ID":"777"}"#);
    d.same("/v3/lease/grant", r#"{"TTL":60,"ID":"888"}"#);

    let locked = d.same("/v3/lock/lock", r#"{"name":"bG9jaw==","lease":"777"}"#);
    // As etcd, errors of the store come through the Lock service with code Unknown.
    d.same("/v3/lock/lock", r#"{"name":"bG9jaw==","lease":"778"}"#);
    d.same("/v3/lock/lock", r#"{"name":"!!"}"#);
    d.same("/v3/lock/unlock", &format!(r#"{{"key":{}}}"#, locked["key"]));
    d.same("/v3/lock/unlock", "{}");

    d.same("/v3/election/leader", r#"{"name":"ZWxlYw=="}"#);
    let won = d.same("/v3/election/campaign", r#"{"name":"ZWxlYw==","lease":"888","value":"djE="}"#);
    let leader = won["leader"].to_string();
    d.same("/v3/election/leader", r#"{"name":"ZWxlYw=="}"#);
    let observe = r#"{"name":"ZWxlYw=="}"#;
    let mut observers =
        [send(&d.etcd, "/v3/election/observe", observe), send(&d.keel, "/v3/election/observe", observe)];
    assert_eq!((observers[1].status, observers[0].status), (200, 200));
    let first = observers.each_mut().map(|o| normalise(&o.line()));
    assert_eq!(first[1], first[0]);
    d.same("/v3/election/proclaim", &format!(r#"{{"leader":{leader},"value":"djI="}}"#));
    let next = observers.each_mut().map(|o| normalise(&o.line()));
    assert_eq!(next[1], next[0]);
    assert!(next[1].contains(r#""value":"djI=""#), "{}", next[1]);
    drop(observers);
    let stale = leader.replace(r#""rev":""#, r#""rev":"1"#);
    d.same("/v3/election/proclaim", &format!(r#"{{"leader":{stale},"value":"djM="}}"#));
    d.same("/v3/election/proclaim", r#"{"value":"djM="}"#);
    d.same("/v3/election/resign", &format!(r#"{{"leader":{stale}}}"#));
    d.same("/v3/election/resign", "{}");
    d.same("/v3/election/resign", &format!(r#"{{"leader":{leader}}}"#));
    d.same("/v3/election/leader", r#"{"name":"ZWxlYw=="}"#);
    d.same("/v3/election/campaign", r#"{"name":"ZWxlYw==","lease":"999","value":"djE="}"#);
    d.same("/v3/election/observe", r#"{"name":"#);
    d.same("/v3/election/observe", r#"{"name":"!!"}"#);
}

/// The Auth service with authentication never enabled and no users or roles; adding one is
/// what Keel cannot do yet, so that comes last.
fn auth(d: &Diff) {
    d.same("/v3/auth/status", "{}");
    d.same("/v3/auth/enable", "{}");
    d.same("/v3/auth/disable", "{}");
    d.same("/v3/auth/authenticate", r#"{"name":"root","password":"x"}"#);
    d.same("/v3/auth/user/add", r#"{"name":""}"#);
    d.same("/v3/auth/user/get", r#"{"name":"u"}"#);
    d.same("/v3/auth/user/get", r#"{"name":5}"#);
    d.same("/v3/auth/user/list", "{}");
    d.same("/v3/auth/user/delete", r#"{"name":"u"}"#);
    d.same("/v3/auth/user/changepw", r#"{"name":"u","password":"q"}"#);
    d.same("/v3/auth/user/grant", r#"{"user":"u","role":"r"}"#);
    d.same("/v3/auth/user/revoke", r#"{"name":"u","role":"r"}"#);
    d.same("/v3/auth/role/add", r#"{"name":""}"#);
    d.same("/v3/auth/role/get", r#"{"role":"r"}"#);
    d.same("/v3/auth/role/list", "{}");
    d.same("/v3/auth/role/delete", r#"{"role":"r"}"#);
    d.same("/v3/auth/role/grant", r#"{"name":"r","perm":{"permType":"READWRITE","key":"YQ=="}}"#);
    d.same("/v3/auth/role/grant", r#"{"name":"r","perm":{"permType":"BOGUS"}}"#);
    d.same("/v3/auth/role/revoke", r#"{"role":"r","key":"YQ==","range_end":"Yg=="}"#);

    for (path, body) in
        [("/v3/auth/user/add", r#"{"name":"u","password":"p"}"#), ("/v3/auth/role/add", r#"{"name":"r"}"#)]
    {
        let [(etcd_code, etcd), (keel_code, keel)] = d.differs(path, body);
        assert_eq!(etcd_code, 200, "{etcd}");
        assert!(etcd["header"].is_object(), "{etcd}");
        assert_eq!((keel_code, error_of(&keel).0), (501, 12), "{keel}");
    }
}

/// What is not a request of the API: other methods, unknown paths, the prefixes, bodies that
/// are not JSON or are too large.
fn http_and_json_errors(d: &Diff) {
    for method in ["GET", "PUT", "DELETE"] {
        d.same_http(method, "/v3/kv/range", "{}");
    }
    d.same_http("OPTIONS", "/v3/kv/range", "");
    d.same_http("OPTIONS", "/nowhere", "");
    d.same_http("POST", "/v3/kv/range", r#"{"key":"YQ=="}"#);
    d.same_http("POST", "/v3/nowhere", "{}");
    d.same_http("GET", "/v3/nowhere", "");
    d.same_http("POST", "/v3/kv/range/", "{}");
    d.same_http("POST", "/nowhere", "{}");
    // A gRPC method's path is a gRPC request's only (HTTP/2, gRPC content type).
    d.same_http("POST", "/etcdserverpb.KV/Range", "{}");
    d.same_http("GET", "/version", "");
    d.same_http("POST", "/version", "");
    d.same_http("PUT", "/health", "");
    // etcd 3.5 still serves its API under /v3beta, but no longer under /v3alpha.
    d.same_http("POST", "/v3beta/kv/range", r#"{"key":"YQ=="}"#);
    d.same_http("POST", "/v3beta/maintenance/status", "{}");
    d.same_http("POST", "/v3beta/nowhere", "{}");
    d.same_http("GET", "/v3beta/kv/range", "");
    d.same_http("POST", "/v3alpha/kv/range", r#"{"key":"YQ=="}"#);

    // Go's JSON syntax errors; what follows the first value is never read.
    for body in
        ["nonsense", "xx", r#"{"key":tru}"#, r#"{"key":"YQ==",}"#, r#"{"key" "x"}"#, "[1 2]", "truex", "1x"]
    {
        d.same("/v3/kv/range", body);
    }
    d.same("/v3/kv/range", r#"{"key":"YQ=="} trailing"#);
    // In a stream, a bad first request fails the call; a later one ends the requests.
    d.same("/v3/lease/keepalive", r#"{"ID":"888"} xx"#);
    d.same("/v3/lease/keepalive", r#"xx {"ID":"888"}"#);

    // Beyond --max-request-bytes, etcd's own error; beyond its gRPC limit (512 KiB more),
    // gRPC's.
    for len in [1572864 + 100, 3 << 20] {
        let value = base64_of(&vec![b'x'; len]);
        d.same("/v3/kv/put", &format!(r#"{{"key":"YQ==","value":"{value}"}}"#));
    }
}
