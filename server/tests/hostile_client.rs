//! Hostile and malformed client requests, each sent to a real etcd 3.5.1 and to a real `keel`
//! started alike (same member and cluster ids): the gRPC code and message (or the response,
//! its header's raft term aside), or the gateway's HTTP status and body, must be the same; and
//! after every request both servers must still serve (a put and a get of their own).
//!
//! Requests go out as raw protobuf bytes through a pass-through codec, so that the test can
//! send what no well-behaved client would (truncated messages, wrong wire types, enum values
//! out of range, nesting deeper than a client library decodes); the gateway's through a bare
//! HTTP/1.1 connection. [`EXCEPTIONS`] lists, with the reason, each request Keel knowingly
//! answers otherwise; every other request must answer alike.
//!
//! `HOSTILE_PROBE=1` prints every pair of answers and does not stop at the first difference.

mod common;

use bytes::{Buf, BufMut};
use prost::Message;
use server::pb::etcdserverpb::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::transport::Channel;
use tonic::{Code, Status};

/// Requests Keel answers otherwise than etcd 3.5.1 on purpose, and why. The test still checks
/// that Keel answers each as said here and that both servers serve afterwards.
const EXCEPTIONS: &[(&str, &str)] = &[
    (
        "compact: revision 0",
        "etcd 3.5.1's compacted revision starts at -1, so it accepts a compaction at 0 (once); \
         Keel's starts at 0 and answers that it is compacted. Neither changes the store",
    ),
    (
        "alarm: unknown action",
        "etcd 3.5.1 applies it as nothing, then crashes on the empty response: not sent to etcd",
    ),
    (
        "alarm: activate an unknown alarm type",
        "etcd 3.5.1's apply loop panics on it (on every member, at every restart): not sent to etcd",
    ),
    (
        "wire: *",
        "a message that is not protobuf: the same code (Internal), but prost's decode error, not \
         gogoproto's (tonic decodes with prost before any Keel code runs)",
    ),
    (
        "http: huge number",
        "serde_json refuses a number beyond f64 while parsing the body (\"number out of range\"); \
         Go parses it and fails converting it",
    ),
    (
        "http: 1000 nested arrays",
        "serde_json stops at 128 levels of nesting (\"recursion limit exceeded\"), Go at 10000: \
         lifting serde's bound would let a deep body overflow the stack",
    ),
    (
        "http: txn nested 61 levels",
        "the same bound: Keel's gateway takes txns nested up to about 40 levels (3 JSON levels each)",
    ),
    (
        "http: path traversal",
        "Go's ServeMux answers a path that is not clean (`/v3/../v3/kv/range`) with a redirect to \
         the clean one; Keel's router answers 404",
    ),
    (
        "range: sort_target out of range",
        "etcd 3.5.1 crashes (a nil sorter); Keel refuses the request: not sent to etcd",
    ),
    (
        "txn: range op with sort_target out of range",
        "etcd 3.5.1 crashes applying it; Keel refuses the request: not sent to etcd",
    ),
];

// ---- A pass-through codec: requests and responses as raw protobuf bytes. ----

#[derive(Default, Clone, Copy)]
struct Raw;

impl Codec for Raw {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = Raw;
    type Decoder = Raw;
    fn encoder(&mut self) -> Raw {
        Raw
    }
    fn decoder(&mut self) -> Raw {
        Raw
    }
}

impl Encoder for Raw {
    type Item = Vec<u8>;
    type Error = Status;
    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for Raw {
    type Item = Vec<u8>;
    type Error = Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        let n = src.remaining();
        Ok(Some(src.copy_to_bytes(n).to_vec()))
    }
}

async fn unary(ch: &Channel, path: &str, body: Vec<u8>) -> Result<Vec<u8>, Status> {
    let mut grpc = tonic::client::Grpc::new(ch.clone());
    grpc.ready().await.map_err(|e| Status::unknown(e.to_string()))?;
    let path: tonic::codegen::http::uri::PathAndQuery = path.parse().expect("a path");
    grpc.unary(tonic::Request::new(body), path, Raw).await.map(|r| r.into_inner())
}

/// A status as clients match on it.
fn status_text(s: &Status) -> String {
    format!("ERR {:?}: {}", s.code(), s.message())
}

/// Replaces the digits after every `raft_term: ` (Debug) or `"raft_term":"` (JSON): the
/// servers' terms may differ.
fn without_terms(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(at) =
        ["raft_term: ", "\"raft_term\":\""].iter().filter_map(|p| rest.find(p).map(|i| (i, p.len()))).min()
    {
        let (i, n) = at;
        out.push_str(&rest[..i + n]);
        rest = rest[i + n..].trim_start_matches(|c: char| c.is_ascii_digit());
        out.push('T');
    }
    out.push_str(rest);
    out
}

/// A unary answer rendered as `M` (or its error).
fn render<M: Message + Default + std::fmt::Debug>(r: &Result<Vec<u8>, Status>) -> String {
    match r {
        Err(s) => status_text(s),
        Ok(bytes) => match M::decode(&bytes[..]) {
            Ok(m) => without_terms(&format!("{m:?}")),
            Err(e) => format!("UNDECODABLE {e} ({} bytes)", bytes.len()),
        },
    }
}

/// A TxnResponse read one level deep (nested responses as raw bytes), for answers nested deeper
/// than prost decodes.
#[derive(Clone, PartialEq, prost::Message)]
struct ShallowTxnResponse {
    #[prost(message, optional, tag = "1")]
    header: Option<ResponseHeader>,
    #[prost(bool, tag = "2")]
    succeeded: bool,
    #[prost(bytes = "vec", repeated, tag = "3")]
    responses: Vec<Vec<u8>>,
}

fn render_shallow_txn(r: &Result<Vec<u8>, Status>) -> String {
    match r {
        Err(s) => status_text(s),
        Ok(bytes) => match ShallowTxnResponse::decode(&bytes[..]) {
            Ok(m) => {
                let depth = nested_depth(bytes);
                let h = m.header.unwrap_or_default();
                format!(
                    "txn ok rev={} succeeded={} responses={} nested-depth={depth} bytes={}",
                    h.revision,
                    m.succeeded,
                    m.responses.len(),
                    bytes.len()
                )
            }
            Err(e) => format!("UNDECODABLE {e}"),
        },
    }
}

/// How many TxnResponse levels a raw TxnResponse holds (following the first nested txn).
fn nested_depth(bytes: &[u8]) -> usize {
    let mut depth = 1;
    let mut level = bytes.to_vec();
    loop {
        let Ok(m) = ShallowTxnResponse::decode(&level[..]) else { return depth };
        let Some(op) = m.responses.first() else { return depth };
        // ResponseOp's field 4 is response_txn.
        let mut op = &op[..];
        let mut inner = None;
        while op.has_remaining() {
            let Ok(key) = prost::encoding::decode_varint(&mut op) else { break };
            let Ok(len) = prost::encoding::decode_varint(&mut op) else { break };
            let (field, rest) = op.split_at((len as usize).min(op.len()));
            op = rest;
            if key == (4 << 3 | 2) {
                inner = Some(field.to_vec());
            }
        }
        match inner {
            Some(i) => {
                depth += 1;
                level = i;
            }
            None => return depth,
        }
    }
}

// ---- The two servers. ----

struct Side {
    name: &'static str,
    addr: String,
    ch: Channel,
}

struct Suite {
    etcd: Side,
    keel: Side,
    cases: usize,
    probe: bool,
    failures: Vec<String>,
    alive_round: u64,
}

fn put_req(key: &str, value: &[u8]) -> PutRequest {
    PutRequest { key: key.to_string().into(), value: value.to_vec().into(), ..Default::default() }
}

fn range_req(key: &str) -> RangeRequest {
    RangeRequest { key: key.to_string().into(), ..Default::default() }
}

fn op_put(key: &str, value: &str) -> RequestOp {
    RequestOp { request: Some(request_op::Request::RequestPut(put_req(key, value.as_bytes()))) }
}

fn op_range(r: RangeRequest) -> RequestOp {
    RequestOp { request: Some(request_op::Request::RequestRange(r)) }
}

fn op_delete(key: &str, end: &str) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestDeleteRange(DeleteRangeRequest {
            key: key.to_string().into(),
            range_end: end.to_string().into(),
            ..Default::default()
        })),
    }
}

fn op_txn(t: TxnRequest) -> RequestOp {
    RequestOp { request: Some(request_op::Request::RequestTxn(t)) }
}

fn compare(key: &str, target: i32, result: i32, union: Option<compare::TargetUnion>) -> Compare {
    Compare { key: key.to_string().into(), target, result, target_union: union, ..Default::default() }
}

/// A txn nested `depth` levels deep (level 1 is the request itself); the innermost level holds
/// `innermost`.
fn nested_txn(depth: usize, innermost: Vec<RequestOp>) -> TxnRequest {
    let mut t = TxnRequest { success: innermost, ..Default::default() };
    for _ in 1..depth {
        t = TxnRequest { success: vec![op_txn(t)], ..Default::default() };
    }
    t
}

impl Suite {
    fn side(&self, keel: bool) -> &Side {
        if keel {
            &self.keel
        } else {
            &self.etcd
        }
    }

    /// Both servers still serve: a put of a fresh value and a get of it, on each.
    async fn alive(&mut self, after: &str) {
        self.alive_round += 1;
        let value = format!("v{}", self.alive_round);
        for side in [&self.etcd, &self.keel] {
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let put = unary(
                    &side.ch,
                    "/etcdserverpb.KV/Put",
                    put_req("alive", value.as_bytes()).encode_to_vec(),
                )
                .await;
                let got = unary(&side.ch, "/etcdserverpb.KV/Range", range_req("alive").encode_to_vec()).await;
                let got = got.ok().and_then(|b| RangeResponse::decode(&b[..]).ok());
                if put.is_ok()
                    && got.as_ref().is_some_and(|r| r.kvs.first().is_some_and(|kv| kv.value == value))
                {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "{} no longer serves after {after:?}: put {put:?}, get {got:?}",
                    side.name
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }

    fn record(&mut self, name: &str, etcd: &str, keel: &str) {
        self.cases += 1;
        if self.probe || etcd != keel {
            println!("[{name}]\n  etcd: {etcd:.3000}\n  keel: {keel:.3000}");
        }
        if etcd != keel {
            self.failures.push(format!("{name}:\n  etcd: {etcd:.600}\n  keel: {keel:.600}"));
            assert!(self.probe, "{name}: answers differ\n  etcd: {etcd:.2000}\n  keel: {keel:.2000}");
        }
    }

    /// One unary request to both, rendered as `M`.
    async fn same<M: Message + Default + std::fmt::Debug>(&mut self, name: &str, path: &str, body: Vec<u8>) {
        let e = render::<M>(&unary(&self.etcd.ch, path, body.clone()).await);
        let k = render::<M>(&unary(&self.keel.ch, path, body).await);
        self.record(name, &e, &k);
        self.alive(name).await;
    }

    async fn same_msg<M: Message + Default + std::fmt::Debug>(
        &mut self,
        name: &str,
        path: &str,
        req: impl Message,
    ) {
        self.same::<M>(name, path, req.encode_to_vec()).await
    }

    async fn txn(&mut self, name: &str, t: TxnRequest) {
        self.same_msg::<TxnResponse>(name, "/etcdserverpb.KV/Txn", t).await
    }

    async fn range(&mut self, name: &str, r: RangeRequest) {
        self.same_msg::<RangeResponse>(name, "/etcdserverpb.KV/Range", r).await
    }

    async fn put(&mut self, name: &str, p: PutRequest) {
        self.same_msg::<PutResponse>(name, "/etcdserverpb.KV/Put", p).await
    }

    /// A request only Keel gets (etcd would crash on it): Keel must refuse it with
    /// InvalidArgument and a message containing `says`.
    async fn keel_refuses(&mut self, name: &str, path: &str, body: Vec<u8>, says: &str) {
        assert!(EXCEPTIONS.iter().any(|(n, _)| *n == name), "{name} is not among the exceptions");
        self.cases += 1;
        let k = unary(&self.keel.ch, path, body).await;
        let refused = matches!(&k, Err(s) if s.code() == Code::InvalidArgument && s.message().contains(says));
        if !refused {
            let got = render::<RangeResponse>(&k);
            self.failures.push(format!("{name}: Keel answered {got}"));
            assert!(self.probe, "{name}: Keel answered {got}");
        }
        if self.probe {
            println!("[{name}] (keel only)\n  keel: {}", render::<RangeResponse>(&k));
        }
        self.alive(name).await;
    }

    /// A request Keel knowingly answers otherwise (see [`EXCEPTIONS`]): both answers are
    /// printed; Keel's must be `keel_says`.
    async fn differs<M: Message + Default + std::fmt::Debug>(
        &mut self,
        name: &str,
        path: &str,
        body: Vec<u8>,
        keel_says: &str,
    ) {
        assert!(EXCEPTIONS.iter().any(|(n, _)| *n == name), "{name} is not among the exceptions");
        self.cases += 1;
        let e = render::<M>(&unary(&self.etcd.ch, path, body.clone()).await);
        let k = render::<M>(&unary(&self.keel.ch, path, body).await);
        println!("[{name}] (a known difference)\n  etcd: {e:.300}\n  keel: {k:.300}");
        if k != keel_says {
            self.failures.push(format!("{name}: Keel answered {k}"));
            assert!(self.probe, "{name}: Keel answered {k}, not {keel_says}");
        }
        self.alive(name).await;
    }

    /// A malformed request both refuse with the same code (see the `wire: *` exception).
    async fn same_code(&mut self, name: &str, path: &str, body: Vec<u8>) {
        assert!(name.starts_with("wire: "), "{name} is not a wire case");
        self.cases += 1;
        let e = unary(&self.etcd.ch, path, body.clone()).await;
        let k = unary(&self.keel.ch, path, body).await;
        let code = |r: &Result<Vec<u8>, Status>| r.as_ref().err().map(Status::code);
        println!("[{name}] (the same code)\n  etcd: {:?}\n  keel: {:?}", e.as_ref().err(), k.as_ref().err());
        if code(&k) != code(&e) || code(&e).is_none() {
            self.failures.push(format!("{name}: etcd {e:?}, keel {k:?}"));
            assert!(self.probe, "{name}: etcd {e:?}, keel {k:?}");
        }
        self.alive(name).await;
    }

    /// An HTTP request Keel knowingly answers otherwise: Keel's answer must start with
    /// `keel_says`.
    async fn http_differs(&mut self, name: &str, method: &str, path: &str, body: &[u8], keel_says: &str) {
        assert!(EXCEPTIONS.iter().any(|(n, _)| *n == name), "{name} is not among the exceptions");
        self.cases += 1;
        let e = http_call(&self.etcd.addr, method, path, body);
        let k = http_call(&self.keel.addr, method, path, body);
        println!("[{name}] (a known difference)\n  etcd: {e:.300}\n  keel: {k:.300}");
        if !k.starts_with(keel_says) {
            self.failures.push(format!("{name}: Keel answered {k:.300}"));
            assert!(self.probe, "{name}: Keel answered {k:.300}");
        }
        self.alive(name).await;
    }

    /// A nested txn of `depth` levels to both; answers compared one level deep.
    async fn deep_txn(&mut self, name: &str, depth: usize, innermost: Vec<RequestOp>) {
        let body = nested_txn(depth, innermost).encode_to_vec();
        let e = render_shallow_txn(&unary(&self.etcd.ch, "/etcdserverpb.KV/Txn", body.clone()).await);
        let k = render_shallow_txn(&unary(&self.keel.ch, "/etcdserverpb.KV/Txn", body).await);
        self.record(name, &e, &k);
        self.alive(name).await;
    }

    /// A watch stream on each server: `script` is sent, then a progress request as a barrier;
    /// the responses up to the barrier's (or the stream's end) are compared.
    async fn watch(&mut self, name: &str, script: Vec<WatchStep>) {
        let mut answers = Vec::new();
        for keel in [false, true] {
            answers.push(watch_session(self.side(keel), &script).await);
        }
        let [e, k] = [answers[0].join("\n        "), answers[1].join("\n        ")];
        self.record(name, &e, &k);
        self.alive(name).await;
    }

    /// One HTTP request to both gateways: status and body (raft term aside) must match.
    async fn http(&mut self, name: &str, method: &str, path: &str, body: &[u8]) {
        let e = http_call(&self.etcd.addr, method, path, body);
        let k = http_call(&self.keel.addr, method, path, body);
        self.record(name, &without_terms(&e), &without_terms(&k));
        self.alive(name).await;
    }
}

enum WatchStep {
    Send(WatchRequest),
    Put(&'static str, &'static str),
}

fn create(c: WatchCreateRequest) -> WatchStep {
    WatchStep::Send(WatchRequest { request_union: Some(watch_request::RequestUnion::CreateRequest(c)) })
}

fn cancel(id: i64) -> WatchStep {
    WatchStep::Send(WatchRequest {
        request_union: Some(watch_request::RequestUnion::CancelRequest(WatchCancelRequest { watch_id: id })),
    })
}

fn watch_key(key: &str, end: &str) -> WatchCreateRequest {
    WatchCreateRequest {
        key: key.to_string().into(),
        range_end: end.to_string().into(),
        ..Default::default()
    }
}

fn is_barrier(r: &WatchResponse) -> bool {
    r.watch_id == -1 && !r.created && !r.canceled && r.events.is_empty()
}

/// A watch stream through `script`; a put waits for a progress barrier first, so that every
/// watch created before it is in place. The responses, up to the last barrier (or the end).
async fn watch_session(side: &Side, script: &[WatchStep]) -> Vec<String> {
    use server::pb::etcdserverpb::watch_client::WatchClient;
    let (tx, rx) = tokio::sync::mpsc::channel::<WatchRequest>(16);
    let mut client = WatchClient::new(side.ch.clone()).max_decoding_message_size(64 << 20);
    // A server may send the call's headers only with its first response: call from a task.
    let call = tokio::spawn(async move { client.watch(tokio_stream_of(rx)).await });
    let mut w = WatchReader { call: Some(call), stream: None, out: Vec::new(), ended: false };
    for step in script {
        match step {
            WatchStep::Send(req) => {
                let _ = tx.send(req.clone()).await;
            }
            WatchStep::Put(k, v) => {
                w.barrier(&tx).await;
                unary(&side.ch, "/etcdserverpb.KV/Put", put_req(k, v.as_bytes()).encode_to_vec())
                    .await
                    .expect("put");
            }
        }
    }
    w.barrier(&tx).await;
    w.out
}

type WatchCall = tokio::task::JoinHandle<Result<tonic::Response<tonic::Streaming<WatchResponse>>, Status>>;

struct WatchReader {
    call: Option<WatchCall>,
    stream: Option<tonic::Streaming<WatchResponse>>,
    out: Vec<String>,
    ended: bool,
}

impl WatchReader {
    /// Sends a progress request and reads up to its answer (a response with watch id -1 that
    /// is neither created nor canceled), or to the stream's end.
    async fn barrier(&mut self, tx: &tokio::sync::mpsc::Sender<WatchRequest>) {
        if self.ended {
            return;
        }
        let progress = WatchRequest {
            request_union: Some(watch_request::RequestUnion::ProgressRequest(WatchProgressRequest {})),
        };
        let _ = tx.send(progress).await;
        if let Some(call) = self.call.take() {
            match tokio::time::timeout(Duration::from_secs(5), call).await {
                Err(_) => return self.end("TIMEOUT (no response headers)".to_string()),
                Ok(joined) => match joined.expect("watch call task") {
                    Ok(r) => self.stream = Some(r.into_inner()),
                    Err(s) => return self.end(status_text(&s)),
                },
            }
        }
        let stream = self.stream.as_mut().expect("a stream");
        loop {
            match tokio::time::timeout(Duration::from_secs(5), stream.message()).await {
                Err(_) => return self.end("TIMEOUT".to_string()),
                Ok(Err(s)) => return self.end(status_text(&s)),
                Ok(Ok(None)) => return self.end("END".to_string()),
                Ok(Ok(Some(r))) if is_barrier(&r) => return,
                Ok(Ok(Some(r))) => self.out.push(without_terms(&format!("{r:?}"))),
            }
        }
    }

    fn end(&mut self, last: String) {
        self.out.push(last);
        self.ended = true;
    }
}

fn tokio_stream_of(
    mut rx: tokio::sync::mpsc::Receiver<WatchRequest>,
) -> impl futures::Stream<Item = WatchRequest> + Send + 'static {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// A bare HTTP/1.1 request: `status body` (a chunked body's chunks joined).
fn http_call(addr: &str, method: &str, path: &str, body: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).unwrap();
    // A large body may be refused before it is all read: the answer counts, not the write.
    let _ = s.write_all(body);
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let raw = String::from_utf8_lossy(&raw).to_string();
    let status = raw.split_whitespace().nth(1).unwrap_or("?").to_string();
    let (headers, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let body = if headers.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        let mut out = String::new();
        let mut rest = body;
        while let Some((size, after)) = rest.split_once("\r\n") {
            let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
            if n == 0 || after.len() < n {
                break;
            }
            out.push_str(&after[..n]);
            rest = after[n..].trim_start_matches("\r\n");
        }
        out
    } else {
        body.to_string()
    };
    format!("{status} {}", body.trim_end())
}

fn b64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn varint_len(v: u64) -> usize {
    prost::encoding::encoded_len_varint(v)
}

/// The size etcd gives a put in its size check: the InternalRaftRequest it would replicate,
/// a header with a request id (the member id's low 16 bits, then the time in ms and a count:
/// below 2^64, its top bits from the member id) and the put as field 4.
fn etcd_put_request_size(member_id: u64, put: &PutRequest) -> usize {
    let id = ((member_id & 0xffff) << 48) | (1 << 47);
    let header = 1 + varint_len(id);
    let n = put.encoded_len();
    2 + varint_len(header as u64) + header + 1 + varint_len(n as u64) + n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_requests_answer_as_etcd() {
    let pair = common::start_pair();
    let started = Instant::now();
    let connect = |s: &jepsen::Server| {
        tonic::transport::Endpoint::from_shared(s.endpoint()).expect("endpoint").connect_lazy()
    };
    let host = |s: &jepsen::Server| s.endpoint().trim_start_matches("http://").to_string();
    let mut t = Suite {
        etcd: Side { name: "etcd", addr: host(&pair.etcd), ch: connect(&pair.etcd) },
        keel: Side { name: "keel", addr: host(&pair.keel), ch: connect(&pair.keel) },
        cases: 0,
        probe: std::env::var_os("HOSTILE_PROBE").is_some(),
        failures: Vec::new(),
        alive_round: 0,
    };
    t.alive("start").await;
    let outcome = std::panic::AssertUnwindSafe(run_all(&mut t));
    let result = futures::FutureExt::catch_unwind(outcome).await;
    if let Err(panic) = result {
        for s in [&pair.etcd, &pair.keel] {
            let log = s.proc.log_text();
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            eprintln!("---- {} log (end) ----", s.proc.name);
            tail.iter().rev().for_each(|l| eprintln!("{l}"));
        }
        std::panic::resume_unwind(panic);
    }
    println!("{} hostile requests in {:?}", t.cases, started.elapsed());
    assert!(t.failures.is_empty(), "{} differences:\n{}", t.failures.len(), t.failures.join("\n"));
    assert!(t.cases >= 60, "only {} cases", t.cases);
}

async fn run_all(t: &mut Suite) {
    kv_cases(t).await;
    txn_cases(t).await;
    size_cases(t).await;
    watch_cases(t).await;
    other_cases(t).await;
    wire_cases(t).await;
    gateway_cases(t).await;
}

async fn kv_cases(t: &mut Suite) {
    for (k, v) in [("k1", "c"), ("k2", "b"), ("k3", "a")] {
        t.put(&format!("put {k}"), put_req(k, v.as_bytes())).await;
    }
    let all = || RangeRequest { key: "k".into(), range_end: "l".into(), ..Default::default() };
    t.range("range: no key", RangeRequest::default()).await;
    t.range("range: count_only with limit", RangeRequest { count_only: true, limit: 1, ..all() }).await;
    t.range("range: count_only with limit above count", RangeRequest { count_only: true, limit: 5, ..all() })
        .await;
    t.range("range: keys_only with limit", RangeRequest { keys_only: true, limit: 2, ..all() }).await;
    t.range("range: negative limit", RangeRequest { limit: -1, ..all() }).await;
    t.range("range: negative revision", RangeRequest { revision: -5, ..all() }).await;
    t.range("range: future revision", RangeRequest { revision: i64::MAX, ..all() }).await;
    t.range("range: sort_order out of range, target KEY", RangeRequest { sort_order: 7, ..all() }).await;
    t.range(
        "range: sort_order out of range, target VALUE",
        RangeRequest { sort_order: 7, sort_target: 4, ..all() },
    )
    .await;
    t.range("range: sort_order negative", RangeRequest { sort_order: -1, limit: 1, ..all() }).await;
    // Without an order etcd reads limit + 1 keys in key order and sorts only those.
    t.range(
        "range: sort_target VALUE without order, limit 1",
        RangeRequest { sort_target: 4, limit: 1, ..all() },
    )
    .await;
    t.range(
        "range: sort by VERSION descending, ties",
        RangeRequest { sort_target: 1, sort_order: 2, ..all() },
    )
    .await;
    t.range(
        "range: sort by VALUE descending, limit 2",
        RangeRequest { sort_target: 4, sort_order: 2, limit: 2, ..all() },
    )
    .await;
    t.range(
        "range: sort_target and sort_order out of range",
        RangeRequest { sort_order: 9, sort_target: 9, ..all() },
    )
    .await;
    t.keel_refuses(
        "range: sort_target out of range",
        "/etcdserverpb.KV/Range",
        RangeRequest { sort_target: 9, ..all() }.encode_to_vec(),
        "sort_target",
    )
    .await;
    t.range(
        "range: range_end below key",
        RangeRequest { key: "k3".into(), range_end: "k1".into(), ..Default::default() },
    )
    .await;
    t.range(
        "range: range_end equal to key",
        RangeRequest { key: "k1".into(), range_end: "k1".into(), ..Default::default() },
    )
    .await;
    t.range(
        "range: all keys",
        RangeRequest {
            key: vec![0].into(),
            range_end: vec![0].into(),
            keys_only: true,
            ..Default::default()
        },
    )
    .await;
    t.range(
        "range: negative min_mod_revision",
        RangeRequest { min_mod_revision: -3, max_create_revision: -1, ..all() },
    )
    .await;
    t.range("range: max_mod_revision filters", RangeRequest { max_mod_revision: 3, limit: 1, ..all() }).await;
    t.put("put: no key", put_req("", b"v")).await;
    t.put("put: ignore_value with a value", PutRequest { ignore_value: true, ..put_req("k1", b"v") }).await;
    t.put(
        "put: ignore_lease with a lease",
        PutRequest { ignore_lease: true, lease: 5, ..put_req("k1", b"") },
    )
    .await;
    t.put("put: ignore_value on a missing key", PutRequest { ignore_value: true, ..put_req("nokey", b"") })
        .await;
    t.put("put: unknown lease", PutRequest { lease: 12345, ..put_req("k1", b"v") }).await;
    t.put("put: negative lease", PutRequest { lease: -1, ..put_req("k1", b"v") }).await;
    t.put("put: prev_kv of a missing key", PutRequest { prev_kv: true, ..put_req("fresh", b"v") }).await;
    t.same_msg::<DeleteRangeResponse>(
        "delete: no key",
        "/etcdserverpb.KV/DeleteRange",
        DeleteRangeRequest::default(),
    )
    .await;
    t.same_msg::<DeleteRangeResponse>(
        "delete: range_end below key",
        "/etcdserverpb.KV/DeleteRange",
        DeleteRangeRequest { key: "k3".into(), range_end: "k1".into(), ..Default::default() },
    )
    .await;
    t.same_msg::<DeleteRangeResponse>(
        "delete: from key, prev_kv",
        "/etcdserverpb.KV/DeleteRange",
        DeleteRangeRequest { key: "fresh".into(), range_end: vec![0].into(), prev_kv: true },
    )
    .await;
}

async fn txn_cases(t: &mut Suite) {
    use compare::{CompareResult as R, CompareTarget as T, TargetUnion as U};
    let puts =
        |n: usize, prefix: &str| (0..n).map(|i| op_put(&format!("{prefix}{i}"), "v")).collect::<Vec<_>>();
    t.txn(
        "txn: 129 compares",
        TxnRequest {
            compare: (0..129).map(|_| compare("k1", T::Version as i32, R::Greater as i32, None)).collect(),
            ..Default::default()
        },
    )
    .await;
    t.txn("txn: 128 puts", TxnRequest { success: puts(128, "p"), ..Default::default() }).await;
    t.txn("txn: 129 failure ops", TxnRequest { failure: puts(129, "p"), ..Default::default() }).await;
    // etcd's budget: a nested txn may hold at most the top budget less its parent's op count.
    let nested = |outer: usize, inner: usize| TxnRequest {
        success: puts(outer - 1, "o")
            .into_iter()
            .chain([op_txn(TxnRequest { success: puts(inner, "i"), ..Default::default() })])
            .collect(),
        ..Default::default()
    };
    t.txn("txn: nested 28 ops under 100", nested(100, 28)).await;
    t.txn("txn: nested 29 ops under 100", nested(100, 29)).await;
    t.txn("txn: nested 100 ops under 100", nested(100, 100)).await;
    let three = TxnRequest {
        success: puts(60, "a")
            .into_iter()
            .chain([op_txn(TxnRequest {
                success: puts(30, "b")
                    .into_iter()
                    .chain([op_txn(TxnRequest { success: puts(39, "c"), ..Default::default() })])
                    .collect(),
                ..Default::default()
            })])
            .collect(),
        ..Default::default()
    };
    t.txn("txn: three levels 61/31/39", three).await;
    t.txn("txn: empty op", TxnRequest { success: vec![RequestOp::default()], ..Default::default() }).await;
    t.txn(
        "txn: empty op in failure",
        TxnRequest { failure: vec![op_put("k1", "x"), RequestOp::default()], ..Default::default() },
    )
    .await;
    t.txn(
        "txn: empty op nested",
        TxnRequest {
            success: vec![op_txn(TxnRequest { failure: vec![RequestOp::default()], ..Default::default() })],
            ..Default::default()
        },
    )
    .await;
    t.txn(
        "txn: compare without key",
        TxnRequest { compare: vec![compare("", 0, 0, None)], ..Default::default() },
    )
    .await;
    for (name, target, result) in [
        ("txn: compare target out of range, EQUAL", 9, R::Equal as i32),
        ("txn: compare target out of range, NOT_EQUAL", 9, R::NotEqual as i32),
        ("txn: compare target out of range, GREATER", -2, R::Greater as i32),
        ("txn: compare result out of range", T::Version as i32, 9),
        ("txn: compare result negative", T::Value as i32, -1),
        ("txn: compare target and result out of range", 7, 7),
    ] {
        let tx = TxnRequest {
            compare: vec![compare("k1", target, result, Some(U::Version(1000)))],
            success: vec![op_range(range_req("k1"))],
            failure: vec![op_range(range_req("k2"))],
        };
        t.txn(name, tx).await;
    }
    t.txn(
        "txn: compare result out of range on a missing key's value",
        TxnRequest {
            compare: vec![compare("nokey", T::Value as i32, 5, Some(U::Value("x".into())))],
            ..Default::default()
        },
    )
    .await;
    t.txn(
        "txn: compare with a mismatched target union",
        TxnRequest {
            compare: vec![compare("k1", T::Mod as i32, R::Equal as i32, Some(U::Version(1)))],
            ..Default::default()
        },
    )
    .await;
    t.txn(
        "txn: duplicate put",
        TxnRequest { success: vec![op_put("d", "1"), op_put("d", "2")], ..Default::default() },
    )
    .await;
    t.txn(
        "txn: put inside a delete",
        TxnRequest { success: vec![op_delete("a", "z"), op_put("d", "2")], ..Default::default() },
    )
    .await;
    t.txn(
        "txn: nested put of an outer put's key",
        TxnRequest {
            success: vec![
                op_put("d", "1"),
                op_txn(TxnRequest { success: vec![op_put("d", "2")], ..Default::default() }),
            ],
            ..Default::default()
        },
    )
    .await;
    t.txn(
        "txn: same key in both branches of a nested txn",
        TxnRequest {
            success: vec![op_txn(TxnRequest {
                success: vec![op_put("d", "1")],
                failure: vec![op_put("d", "2")],
                ..Default::default()
            })],
            ..Default::default()
        },
    )
    .await;
    t.txn(
        "txn: range op without key",
        TxnRequest { success: vec![op_range(RangeRequest::default())], ..Default::default() },
    )
    .await;
    t.txn(
        "txn: range op at a negative revision",
        TxnRequest {
            success: vec![op_range(RangeRequest { revision: -5, ..range_req("k1") })],
            ..Default::default()
        },
    )
    .await;
    t.txn(
        "txn: range op at revision -1",
        TxnRequest {
            success: vec![op_range(RangeRequest { revision: -1, ..range_req("k1") })],
            ..Default::default()
        },
    )
    .await;
    t.txn(
        "txn: range op at a future revision",
        TxnRequest {
            success: vec![op_range(RangeRequest { revision: 1 << 40, ..range_req("k1") })],
            ..Default::default()
        },
    )
    .await;
    t.txn(
        "txn: range op with count_only and limit",
        TxnRequest {
            success: vec![op_range(RangeRequest {
                count_only: true,
                limit: 1,
                range_end: "l".into(),
                ..range_req("k")
            })],
            ..Default::default()
        },
    )
    .await;
    t.keel_refuses(
        "txn: range op with sort_target out of range",
        "/etcdserverpb.KV/Txn",
        TxnRequest {
            success: vec![op_range(RangeRequest { sort_target: 9, ..range_req("k1") })],
            ..Default::default()
        }
        .encode_to_vec(),
        "sort_target",
    )
    .await;
    t.txn(
        "txn: put to an unknown lease",
        TxnRequest {
            success: vec![op_put("k1", "x"), op_put("k2", "y")]
                .into_iter()
                .map(|mut o| {
                    if let Some(request_op::Request::RequestPut(p)) = &mut o.request {
                        p.lease = 777
                    }
                    o
                })
                .collect(),
            ..Default::default()
        },
    )
    .await;
    t.txn("txn: delete without key", TxnRequest { failure: vec![op_delete("", "")], ..Default::default() })
        .await;
    // Nested txns at depths around where decoders give up: Keel decodes (and applies) up to 256
    // levels on every path, so each is answered as etcd answers it (up to etcd's op budget).
    for (depth, innermost) in [
        (10, vec![op_range(range_req("k1"))]),
        (40, vec![op_range(range_req("k1"))]),
        (40, vec![op_put("deep40", "v")]),
        (50, vec![op_range(range_req("k1"))]),
        (51, vec![]),
        (100, vec![op_range(range_req("k1"))]),
        (128, vec![op_range(range_req("k1"))]),
        (128, vec![]),
        (129, vec![op_range(range_req("k1"))]),
        (129, vec![]),
        (200, vec![op_range(range_req("k1"))]),
    ] {
        let what = if innermost.is_empty() {
            "empty"
        } else if depth % 2 == 0
            && innermost.len() == 1
            && matches!(innermost[0].request, Some(request_op::Request::RequestPut(_)))
        {
            "put"
        } else {
            "range"
        };
        t.deep_txn(&format!("txn: nested {depth} levels, {what} innermost"), depth, innermost).await;
    }
}

async fn size_cases(t: &mut Suite) {
    let status = unary(&t.etcd.ch, "/etcdserverpb.Maintenance/Status", StatusRequest {}.encode_to_vec())
        .await
        .unwrap();
    let member_id = StatusResponse::decode(&status[..]).unwrap().header.unwrap().member_id;
    // The largest put etcd replicates with the default --max-request-bytes, and one byte more.
    let max = 1572864;
    let mut n = max - 100;
    while etcd_put_request_size(member_id, &put_req("big", &vec![b'x'; n + 1])) <= max {
        n += 1;
    }
    assert_eq!(etcd_put_request_size(member_id, &put_req("big", &vec![b'x'; n])), max);
    t.put("put: exactly --max-request-bytes as etcd counts it", put_req("big", &vec![b'x'; n])).await;
    t.put("put: one byte over --max-request-bytes", put_req("big", &vec![b'x'; n + 1])).await;
    // Over the gRPC limit (--max-request-bytes + 512 KiB): gRPC's own error.
    let grpc_max = max + 512 * 1024;
    let mut at = grpc_max - 100;
    while put_req("big", &vec![b'x'; at + 1]).encoded_len() <= grpc_max {
        at += 1;
    }
    assert_eq!(put_req("big", &vec![b'x'; at]).encoded_len(), grpc_max);
    t.put("put: at the gRPC limit", put_req("big", &vec![b'x'; at])).await;
    t.put("put: one byte over the gRPC limit", put_req("big", &vec![b'x'; at + 1])).await;
    t.range("range: a key over --max-request-bytes", range_req(&"r".repeat(max + 10))).await;
    t.txn(
        "txn: read-only over --max-request-bytes",
        TxnRequest {
            compare: vec![compare("k1", 2, 0, Some(compare::TargetUnion::Value(vec![b'x'; max].into())))],
            ..Default::default()
        },
    )
    .await;
    t.txn(
        "txn: write over --max-request-bytes",
        TxnRequest { success: vec![op_put("k1", &"x".repeat(max))], ..Default::default() },
    )
    .await;
    t.same_msg::<DeleteRangeResponse>(
        "delete: key over --max-request-bytes",
        "/etcdserverpb.KV/DeleteRange",
        DeleteRangeRequest { key: vec![b'd'; max].into(), ..Default::default() },
    )
    .await;
    t.range("range: over the gRPC limit", range_req(&"r".repeat(grpc_max))).await;
}

async fn watch_cases(t: &mut Suite) {
    t.watch("watch: range_end below key", vec![create(watch_key("b", "a"))]).await;
    t.watch("watch: range_end equal to key", vec![create(watch_key("b", "b"))]).await;
    t.watch(
        "watch: a live watch_id reused",
        vec![
            create(WatchCreateRequest { watch_id: 5, ..watch_key("w", "") }),
            create(WatchCreateRequest { watch_id: 5, ..watch_key("x", "") }),
        ],
    )
    .await;
    t.watch(
        "watch: automatic ids after a cancel",
        vec![create(watch_key("w", "")), cancel(0), create(watch_key("w", "")), create(watch_key("w", ""))],
    )
    .await;
    t.watch(
        "watch: a chosen id, then automatic ones",
        vec![
            create(WatchCreateRequest { watch_id: 1, ..watch_key("w", "") }),
            create(watch_key("w", "")),
            create(watch_key("w", "")),
        ],
    )
    .await;
    t.watch(
        "watch: negative watch_id",
        vec![create(WatchCreateRequest { watch_id: -7, ..watch_key("w", "") })],
    )
    .await;
    t.watch("watch: cancel of an unknown id", vec![cancel(42)]).await;
    t.watch("watch: empty request", vec![WatchStep::Send(WatchRequest::default())]).await;
    t.watch(
        "watch: empty key, then a put of \\0",
        vec![create(WatchCreateRequest::default()), WatchStep::Put("\0", "z")],
    )
    .await;
    t.watch(
        "watch: unknown filter",
        vec![
            create(WatchCreateRequest { filters: vec![7, -1], ..watch_key("f", "") }),
            WatchStep::Put("f", "1"),
        ],
    )
    .await;
    t.watch(
        "watch: negative start_revision",
        vec![create(WatchCreateRequest { start_revision: -5, ..watch_key("k1", "") })],
    )
    .await;
    t.watch(
        "watch: far future start_revision",
        vec![create(WatchCreateRequest { start_revision: i64::MAX, ..watch_key("k1", "") })],
    )
    .await;
    let big = "w".repeat(3 << 20);
    t.watch(
        "watch: create over the gRPC limit",
        vec![create(WatchCreateRequest { key: big.into(), ..Default::default() })],
    )
    .await;
}

async fn other_cases(t: &mut Suite) {
    t.same_msg::<LeaseGrantResponse>(
        "lease: negative TTL",
        "/etcdserverpb.Lease/LeaseGrant",
        LeaseGrantRequest { ttl: -5, id: 100 },
    )
    .await;
    t.same_msg::<LeaseGrantResponse>(
        "lease: huge TTL",
        "/etcdserverpb.Lease/LeaseGrant",
        LeaseGrantRequest { ttl: i64::MAX, id: 101 },
    )
    .await;
    t.same_msg::<LeaseGrantResponse>(
        "lease: negative id",
        "/etcdserverpb.Lease/LeaseGrant",
        LeaseGrantRequest { ttl: 60, id: -3 },
    )
    .await;
    t.same_msg::<LeaseGrantResponse>(
        "lease: existing id",
        "/etcdserverpb.Lease/LeaseGrant",
        LeaseGrantRequest { ttl: 60, id: 100 },
    )
    .await;
    t.same_msg::<LeaseRevokeResponse>(
        "lease: revoke unknown",
        "/etcdserverpb.Lease/LeaseRevoke",
        LeaseRevokeRequest { id: 999 },
    )
    .await;
    t.same_msg::<LeaseRevokeResponse>(
        "lease: revoke id 0",
        "/etcdserverpb.Lease/LeaseRevoke",
        LeaseRevokeRequest { id: 0 },
    )
    .await;
    t.same_msg::<LeaseTimeToLiveResponse>(
        "lease: time-to-live unknown",
        "/etcdserverpb.Lease/LeaseTimeToLive",
        LeaseTimeToLiveRequest { id: 999, keys: true },
    )
    .await;
    t.same_msg::<CompactionResponse>(
        "compact: negative revision",
        "/etcdserverpb.KV/Compact",
        CompactionRequest { revision: -5, physical: false },
    )
    .await;
    t.differs::<CompactionResponse>(
        "compact: revision 0",
        "/etcdserverpb.KV/Compact",
        CompactionRequest { revision: 0, physical: false }.encode_to_vec(),
        "ERR OutOfRange: etcdserver: mvcc: required revision has been compacted",
    )
    .await;
    t.same_msg::<CompactionResponse>(
        "compact: future revision",
        "/etcdserverpb.KV/Compact",
        CompactionRequest { revision: 1 << 50, physical: true },
    )
    .await;
    t.keel_refuses(
        "alarm: unknown action",
        "/etcdserverpb.Maintenance/Alarm",
        AlarmRequest { action: 9, member_id: 0, alarm: 1 }.encode_to_vec(),
        "alarm action 9",
    )
    .await;
    t.keel_refuses(
        "alarm: activate an unknown alarm type",
        "/etcdserverpb.Maintenance/Alarm",
        AlarmRequest { action: 1, member_id: 0, alarm: 9 }.encode_to_vec(),
        "alarm type 9",
    )
    .await;
    t.same_msg::<AlarmResponse>(
        "alarm: unknown alarm type",
        "/etcdserverpb.Maintenance/Alarm",
        AlarmRequest { action: 0, member_id: 0, alarm: 9 },
    )
    .await;
    t.same_msg::<MemberAddResponse>(
        "member add: no URLs",
        "/etcdserverpb.Cluster/MemberAdd",
        MemberAddRequest::default(),
    )
    .await;
    t.same_msg::<MemberAddResponse>(
        "member add: a URL with a path",
        "/etcdserverpb.Cluster/MemberAdd",
        MemberAddRequest { peer_ur_ls: vec!["http://127.0.0.1:1/x".into()], is_learner: true },
    )
    .await;
    t.same_msg::<MemberRemoveResponse>(
        "member remove: unknown id",
        "/etcdserverpb.Cluster/MemberRemove",
        MemberRemoveRequest { id: 42 },
    )
    .await;
    t.same_msg::<MoveLeaderResponse>(
        "move leader: unknown target",
        "/etcdserverpb.Maintenance/MoveLeader",
        MoveLeaderRequest { target_id: 42 },
    )
    .await;
    t.same_msg::<HashKvResponse>(
        "hashkv: future revision",
        "/etcdserverpb.Maintenance/HashKV",
        HashKvRequest { revision: 1 << 40 },
    )
    .await;
    t.same_msg::<AuthUserAddResponse>(
        "auth: user add without name",
        "/etcdserverpb.Auth/UserAdd",
        AuthUserAddRequest::default(),
    )
    .await;
}

/// Requests that are not well-formed protobuf or gRPC.
async fn wire_cases(t: &mut Suite) {
    let mut truncated = put_req("k1", b"value").encode_to_vec();
    truncated.truncate(truncated.len() - 2);
    t.same_code("wire: truncated message", "/etcdserverpb.KV/Put", truncated).await;
    t.same_code("wire: wrong wire type for key", "/etcdserverpb.KV/Put", vec![0x08, 0x01]).await;
    t.same_code("wire: field number 0", "/etcdserverpb.KV/Range", vec![0x00, 0x01]).await;
    t.same_code("wire: overlong varint", "/etcdserverpb.KV/Range", [vec![0x18], vec![0xff; 11]].concat())
        .await;
    t.same_code("wire: length beyond the message", "/etcdserverpb.KV/Range", vec![0x0a, 0x7f, b'a']).await;
    let mut unknown = range_req("k1").encode_to_vec();
    unknown.extend([0xf8, 0x3f, 0x01]); // field 1023, varint 1
    unknown.extend([0x9a, 0x05, 0x03, b'a', b'b', b'c']); // field 83, bytes
    t.same::<RangeResponse>("wire: unknown fields", "/etcdserverpb.KV/Range", unknown).await;
    t.same_code("wire: group wire type", "/etcdserverpb.KV/Range", vec![0x0b, 0x0c]).await;
    t.same::<RangeResponse>("wire: unknown method", "/etcdserverpb.KV/Nope", range_req("k1").encode_to_vec())
        .await;
    t.same::<RangeResponse>("wire: unknown service", "/nope.Nope/Range", range_req("k1").encode_to_vec())
        .await;
}

async fn gateway_cases(t: &mut Suite) {
    t.http("http: bad base64", "POST", "/v3/kv/range", br#"{"key":"!!!"}"#).await;
    t.http("http: base64url", "POST", "/v3/kv/range", br#"{"key":"a2-_"}"#).await;
    t.http("http: unpadded base64", "POST", "/v3/kv/range", br#"{"key":"azE"}"#).await;
    t.http("http: key as a number", "POST", "/v3/kv/range", br#"{"key":5}"#).await;
    t.http("http: limit as text", "POST", "/v3/kv/range", br#"{"key":"azE=","limit":"abc"}"#).await;
    t.http("http: limit as a fraction", "POST", "/v3/kv/range", br#"{"key":"azE=","limit":1.5}"#).await;
    t.http("http: limit as a bool", "POST", "/v3/kv/range", br#"{"key":"azE=","limit":true}"#).await;
    t.http("http: huge limit", "POST", "/v3/kv/range", br#"{"key":"azE=","limit":"99999999999999999999"}"#)
        .await;
    t.http_differs(
        "http: huge number",
        "POST",
        "/v3/kv/range",
        br#"{"key":"azE=","revision":1e400}"#,
        "400 ",
    )
    .await;
    t.http(
        "http: sort_order unknown name",
        "POST",
        "/v3/kv/range",
        br#"{"key":"azE=","sort_order":"SIDEWAYS"}"#,
    )
    .await;
    t.http(
        "http: sort_order out of range number",
        "POST",
        "/v3/kv/range",
        br#"{"key":"azE=","sort_order":9}"#,
    )
    .await;
    t.http("http: null fields", "POST", "/v3/kv/range", br#"{"key":null,"range_end":null}"#).await;
    t.http("http: duplicate field", "POST", "/v3/kv/range", br#"{"key":"azE=","key":"azI="}"#).await;
    t.http(
        "http: unknown field",
        "POST",
        "/v3/kv/put",
        br#"{"key":"azE=","value":"eA==","nope":{"a":[1,2]}}"#,
    )
    .await;
    t.http("http: negative uint64", "POST", "/v3/cluster/member/remove", br#"{"ID":-1}"#).await;
    t.http(
        "http: txn compare target out of range",
        "POST",
        "/v3/kv/txn",
        br#"{"compare":[{"key":"azE=","target":9,"result":0}]}"#,
    )
    .await;
    t.http("http: txn with an empty op", "POST", "/v3/kv/txn", br#"{"success":[{}]}"#).await;
    let deep_array = format!(r#"{{"key":{}1{}}}"#, "[".repeat(1000), "]".repeat(1000));
    t.http_differs("http: 1000 nested arrays", "POST", "/v3/kv/range", deep_array.as_bytes(), "400 ").await;
    let deep_object = format!(r#"{}{}"#, r#"{"a":"#.repeat(200), "}".repeat(200));
    t.http("http: 200 nested objects", "POST", "/v3/kv/range", deep_object.as_bytes()).await;
    let mut deep_txn = r#"{"request_range":{"key":"azE="}}"#.to_string();
    for _ in 0..60 {
        deep_txn = format!(r#"{{"request_txn":{{"success":[{deep_txn}]}}}}"#);
    }
    let deep_txn = format!(r#"{{"success":[{deep_txn}]}}"#);
    t.http_differs("http: txn nested 61 levels", "POST", "/v3/kv/txn", deep_txn.as_bytes(), "400 ").await;
    t.http("http: body not UTF-8", "POST", "/v3/kv/range", b"{\"key\":\"\xff\xfe\"}").await;
    t.http("http: watch with a bad create", "POST", "/v3/watch", br#"{"create_request":{"key":"!!"}}"#).await;
    t.http(
        "http: watch with range_end below key",
        "POST",
        "/v3/watch",
        br#"{"create_request":{"key":"Yg==","range_end":"YQ=="}}"#,
    )
    .await;
    t.http("http: GET on a POST route", "GET", "/v3/kv/put", b"").await;
    t.http("http: unknown route", "POST", "/v3/kv/nothing", b"{}").await;
    t.http_differs("http: path traversal", "POST", "/v3/../v3/kv/range", br#"{"key":"azE="}"#, "404 ").await;
    let body = format!(r#"{{"key":"azE=","value":"{}"}}"#, b64(&vec![b'x'; 3 << 20]));
    t.http("http: body over the gRPC limit", "POST", "/v3/kv/put", body.as_bytes()).await;
}
