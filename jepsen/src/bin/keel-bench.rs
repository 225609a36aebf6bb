//! `keel-bench`: the same load against the real etcd 3.5.1 and against Keel, one after the
//! other on this machine, in one run, reported side by side with the ratio. Each server is a
//! fresh single member with its data in a temporary directory; both fsync every batch.
//!
//! `cargo build --release -p server && cargo run --release -p jepsen --bin keel-bench -- \
//!   --clients 64 --seconds 10`

use clap::Parser;
use etcd_client::Client;
use hdrhistogram::Histogram;
use jepsen::{provision, MemberSpec, Server};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Parser, Debug)]
#[command(about = "Side-by-side load: etcd 3.5.1 vs Keel")]
struct Args {
    /// Concurrent clients (each its own connection, one request in flight at a time).
    #[arg(long, default_value_t = 32)]
    clients: usize,
    /// Seconds of load per server (after a 1 s warm-up).
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Bytes per value.
    #[arg(long, default_value_t = 256)]
    value_size: usize,
    /// Distinct keys written (puts cycle over them).
    #[arg(long, default_value_t = 10_000)]
    keys: usize,
    /// Workload: put, get (linearizable) or mixed (90% get).
    #[arg(long, default_value = "put")]
    workload: String,
    /// The keel binary (build it with --release first).
    #[arg(long, default_value = "target/release/keel")]
    keel: PathBuf,
}

struct Result {
    ops: u64,
    errors: u64,
    secs: f64,
    hist: Histogram<u64>,
}

async fn load(endpoint: String, args: &Args) -> Result {
    let value = vec![b'v'; args.value_size];
    // Fill the keys first so gets find something.
    let mut c = Client::connect([endpoint.clone()], None).await.expect("connect");
    for k in 0..args.keys.min(1000) {
        c.put(format!("bench/{k:08}"), value.clone(), None).await.expect("prefill");
    }
    let stop = Arc::new(AtomicBool::new(false));
    let measuring = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for w in 0..args.clients {
        let (endpoint, value, stop, measuring) =
            (endpoint.clone(), value.clone(), stop.clone(), measuring.clone());
        let (keys, workload) = (args.keys, args.workload.clone());
        tasks.push(tokio::spawn(async move {
            let mut c = Client::connect([endpoint], None).await.expect("connect");
            let mut hist = Histogram::<u64>::new(3).unwrap();
            let (mut ops, mut errors) = (0u64, 0u64);
            let mut i = w;
            while !stop.load(Ordering::Relaxed) {
                i = (i + args_stride()) % keys;
                let key = format!("bench/{i:08}");
                let read = match workload.as_str() {
                    "get" => true,
                    "mixed" => i % 10 != 0,
                    _ => false,
                };
                let start = Instant::now();
                let ok = if read {
                    c.get(key, None).await.is_ok()
                } else {
                    c.put(key, value.clone(), None).await.is_ok()
                };
                if measuring.load(Ordering::Relaxed) {
                    if ok {
                        ops += 1;
                        let _ = hist.record(start.elapsed().as_micros() as u64);
                    } else {
                        errors += 1;
                    }
                }
            }
            (ops, errors, hist)
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    measuring.store(true, Ordering::Relaxed);
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(args.seconds)).await;
    measuring.store(false, Ordering::Relaxed);
    let secs = started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let mut total = Result { ops: 0, errors: 0, secs, hist: Histogram::new(3).unwrap() };
    for t in tasks {
        let (ops, errors, hist) = t.await.unwrap();
        total.ops += ops;
        total.errors += errors;
        total.hist.add(hist).unwrap();
    }
    total
}

fn args_stride() -> usize {
    7919
}

fn main() {
    let args = Args::parse();
    let bins = provision();
    MemberSpec::require_release_keel(&args.keel);
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut rows = Vec::new();
    for (name, program) in [("etcd 3.5.1", bins.etcd.clone()), ("keel", args.keel.clone())] {
        let spec = MemberSpec::local("bench", dir.path().join(name.split(' ').next().unwrap()), "bench");
        let mut server = Server::start(name, &program, spec, &bins.etcdctl);
        let r = rt.block_on(load(server.endpoint(), &args));
        server.proc.signal_and_wait(libc::SIGKILL);
        rows.push((name, r));
    }
    println!(
        "workload={} clients={} value={}B keys={} seconds={} (one machine, fresh single member each)",
        args.workload, args.clients, args.value_size, args.keys, args.seconds
    );
    println!(
        "{:<12} {:>12} {:>10} {:>10} {:>10} {:>8}",
        "server", "ops/s", "p50 ms", "p99 ms", "max ms", "errors"
    );
    for (name, r) in &rows {
        let q = |p: f64| r.hist.value_at_quantile(p) as f64 / 1000.0;
        println!(
            "{:<12} {:>12.0} {:>10.2} {:>10.2} {:>10.2} {:>8}",
            name,
            r.ops as f64 / r.secs,
            q(0.5),
            q(0.99),
            r.hist.max() as f64 / 1000.0,
            r.errors
        );
    }
    let rate = |r: &Result| r.ops as f64 / r.secs;
    println!("keel / etcd throughput: {:.2}x", rate(&rows[1].1) / rate(&rows[0].1));
}
