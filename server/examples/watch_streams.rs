//! Watch-stream memory: starts a `keel`, opens and closes watch streams in rounds (each
//! stream creates one watch, reads its created response and goes away) and prints the
//! server's resident memory before, after each round and after it has been idle.
//!
//! ```sh
//! cargo build -p server && cargo run -p server --example watch_streams -- \
//!     [--streams 10000] [--rounds 3] [--concurrent 100] [--keel target/debug/keel]
//! ```
//!
//! RSS depends on the allocator and the machine, so this is a tool and not a test.

use futures::StreamExt;
use server::pb::etcdserverpb::watch_client::WatchClient;
use server::pb::etcdserverpb::{watch_request, WatchCreateRequest, WatchRequest};
use std::path::PathBuf;
use std::time::{Duration, Instant};

fn arg(name: &str, default: &str) -> String {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1).cloned()).unwrap_or(default.to_string())
}

/// Resident memory of `pid` from `/proc`: all of it, and the anonymous part (the heap and
/// stacks, not the binary's pages), in MiB.
fn rss(pid: u32) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("the server's /proc status");
    let field = |name: &str| -> f64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<f64>().ok())
            .expect("a /proc status field")
            / 1024.0
    };
    format!("{:.1} MiB (anon {:.1})", field("VmRSS:"), field("RssAnon:"))
}

/// A stream kept open: its request sender and its responses.
type Open =
    (tokio::sync::mpsc::Sender<WatchRequest>, tonic::Streaming<server::pb::etcdserverpb::WatchResponse>);

async fn one_stream(mut client: WatchClient<tonic::transport::Channel>, i: usize) -> Open {
    let create = WatchRequest {
        request_union: Some(watch_request::RequestUnion::CreateRequest(WatchCreateRequest {
            key: format!("key/{i}").into(),
            ..Default::default()
        })),
    };
    let (tx, mut rx) = tokio::sync::mpsc::channel::<WatchRequest>(1);
    tx.send(create).await.expect("queued");
    let requests = futures::stream::poll_fn(move |cx| rx.poll_recv(cx));
    let mut responses = client.watch(requests).await.expect("watch call").into_inner();
    let created = responses.message().await.expect("a response").expect("not the end");
    assert!(created.created, "{created:?}");
    // Dropping both ends resets the stream: the server must forget it.
    (tx, responses)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let streams: usize = arg("--streams", "10000").parse().expect("--streams N");
    let rounds: usize = arg("--rounds", "3").parse().expect("--rounds N");
    let concurrent: usize = arg("--concurrent", "100").parse().expect("--concurrent N");
    let keel = PathBuf::from(arg(
        "--keel",
        &jepsen::etcd_dist::target_dir().join("debug/keel").display().to_string(),
    ));
    assert!(keel.exists(), "{} not found: cargo build -p server first", keel.display());

    let bins = jepsen::provision();
    let dir = tempfile::tempdir().expect("tempdir");
    let spec = jepsen::MemberSpec::local("mem", dir.path().join("mem"), "etcd-cluster");
    let server = jepsen::Server::start("keel", &keel, spec, &bins.etcdctl);
    let pid = server.proc.pid();
    let channel =
        tonic::transport::Endpoint::from_shared(server.endpoint()).expect("endpoint").connect_lazy();
    let client = WatchClient::new(channel);
    // --hold: every stream of a round stays open until the round's last one is created.
    let hold = std::env::args().any(|a| a == "--hold");
    println!(
        "keel {} (pid {pid}): {streams} streams per round, {concurrent} opened at a time{}",
        keel.display(),
        if hold { ", all held open until the round ends" } else { "" }
    );
    println!("start: {}", rss(pid));
    // A few streams first, so that what serving any client costs once (runtime threads and
    // their arenas, the connection's buffers, code paged in) is in the baseline.
    futures::stream::iter(0..100)
        .map(|i| one_stream(client.clone(), i))
        .buffer_unordered(10)
        .collect::<Vec<_>>()
        .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    println!("after 100 streams to warm up: {}", rss(pid));
    for round in 1..=rounds {
        let started = Instant::now();
        let held: Vec<Option<Open>> = futures::stream::iter(0..streams)
            .map(|i| one_stream(client.clone(), i))
            .buffer_unordered(concurrent)
            .map(|open| hold.then_some(open))
            .collect()
            .await;
        let opened = started.elapsed();
        let busy = rss(pid);
        drop(held);
        // The node forgets closed streams at its next tick; give it a few.
        tokio::time::sleep(Duration::from_secs(2)).await;
        println!("round {round}: {opened:.1?}, {busy} just after, {} 2 s later", rss(pid));
        if std::env::args().any(|a| a == "--trim-each") {
            println!("  after malloc_trim(0): {}", gdb_trim(pid));
        }
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    println!("idle 5 s more: {}", rss(pid));
    // --trim: ask glibc (through gdb) to give the server's free heap back, to tell memory the
    // server still holds from memory its allocator keeps.
    drop(client);
    tokio::time::sleep(Duration::from_secs(2)).await;
    println!("the client's connection closed, 2 s later: {}", rss(pid));
    for line in server.proc.log_text().lines().filter(|l| l.contains("trimmed the heap")) {
        println!("server: {line}");
    }
    if std::env::args().any(|a| a == "--trim") {
        println!("after malloc_trim(0): {}", gdb_trim(pid));
    }
}

/// Calls `malloc_trim(0)` in the server through gdb; its RSS after.
fn gdb_trim(pid: u32) -> String {
    let out = std::process::Command::new("gdb")
        .args(["-p", &pid.to_string(), "-batch", "-ex", "call (int) malloc_trim(0)"])
        .output()
        .expect("gdb");
    let said = String::from_utf8_lossy(&out.stdout);
    let result = said.lines().rev().find(|l| l.starts_with('$')).unwrap_or("(no result)").to_string();
    format!("{} ({result})", rss(pid))
}
