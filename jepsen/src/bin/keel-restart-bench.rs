//! `keel-restart-bench`: the same N distinct puts into the real etcd 3.5.1 and into Keel (fresh
//! single members, one after the other, one run), then `kill -9` and a restart of each: how long
//! until it serves a linearizable read again, whether every acknowledged key is there, and the
//! memory (RSS) and disk each uses — reported side by side.
//!
//! `cargo build --release -p server -p jepsen && ./target/release/keel-restart-bench --keys 1000000`

use clap::Parser;
use etcd_client::{Client, GetOptions};
use jepsen::{provision, MemberSpec, Proc, Server};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[derive(Parser, Debug)]
#[command(about = "Side-by-side kill -9 and restart with N keys: etcd 3.5.1 vs Keel")]
struct Args {
    /// Distinct keys put (each acknowledged) before the kill.
    #[arg(long, default_value_t = 100_000)]
    keys: usize,
    /// Bytes per value.
    #[arg(long, default_value_t = 100)]
    value_size: usize,
    /// Concurrent clients loading the keys.
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// The keel binary (build it with --release first).
    #[arg(long, default_value = "target/release/keel")]
    keel: PathBuf,
    /// Where the data directories go (a real disk, not tmpfs).
    #[arg(long, default_value = "target/restart-bench")]
    dir: PathBuf,
    /// Keep the data directories (to profile a restart by hand).
    #[arg(long)]
    keep: bool,
    /// Run only Keel (for profiling its restart; no comparison is printed).
    #[arg(long)]
    keel_only: bool,
}

struct Row {
    load_secs: f64,
    rss_loaded_mib: f64,
    disk_mib: f64,
    restart_secs: f64,
    rss_restarted_mib: f64,
    count: i64,
}

fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kb: f64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    kb / 1024.0
}

/// Bytes allocated on disk under `dir` (preallocated but unwritten space is not counted).
fn disk_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let meta = entry.metadata().unwrap();
        if meta.is_dir() {
            total += disk_bytes(&entry.path());
        } else {
            total += std::os::unix::fs::MetadataExt::blocks(&meta) * 512;
        }
    }
    total
}

async fn load(endpoint: &str, args: &Args) {
    let value = vec![b'v'; args.value_size];
    let mut tasks = Vec::new();
    for w in 0..args.clients {
        let (endpoint, value, clients, keys) = (endpoint.to_string(), value.clone(), args.clients, args.keys);
        tasks.push(tokio::spawn(async move {
            let mut c = Client::connect([endpoint], None).await.expect("connect");
            let mut k = w;
            while k < keys {
                // Every put must be acknowledged: a failure ends the benchmark.
                c.put(format!("restart/{k:08}"), value.clone(), None).await.expect("put acknowledged");
                k += clients;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

/// Polls until a linearizable read succeeds; returns how long that took.
async fn until_serving(endpoint: &str, since: Instant) -> Duration {
    loop {
        if let Ok(mut c) = Client::connect([endpoint.to_string()], None).await {
            if c.get("restart/00000000", None).await.is_ok() {
                return since.elapsed();
            }
        }
        assert!(since.elapsed() < Duration::from_secs(600), "{endpoint} did not come back within 10 minutes");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn main() {
    let args = Args::parse();
    let bins = provision();
    MemberSpec::require_release_keel(&args.keel);
    std::fs::create_dir_all(&args.dir).unwrap();
    let dir = tempfile::tempdir_in(&args.dir).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut rows = Vec::new();
    let mut servers = vec![("etcd 3.5.1", bins.etcd.clone()), ("keel", args.keel.clone())];
    if args.keel_only {
        servers.remove(0);
    }
    for (name, program) in servers {
        let spec = MemberSpec::local("restart", dir.path().join(name.split(' ').next().unwrap()), "restart");
        let mut server = Server::start(name, &program, spec.clone(), &bins.etcdctl);
        let started = Instant::now();
        rt.block_on(load(&server.endpoint(), &args));
        let load_secs = started.elapsed().as_secs_f64();
        let rss_loaded_mib = rss_mib(server.proc.pid());
        server.proc.signal_and_wait(libc::SIGKILL);
        let disk_mib = disk_bytes(&spec.data_dir) as f64 / (1 << 20) as f64;

        let log = spec.data_dir.with_extension("restart.log");
        let since = Instant::now();
        let mut proc = Proc::spawn(name, &program, &spec.args(), &log);
        let restart = rt.block_on(until_serving(&spec.client_url(), since));
        let rss_restarted_mib = rss_mib(proc.pid());
        let count = rt.block_on(async {
            let mut c = Client::connect([spec.client_url()], None).await.unwrap();
            let opts = GetOptions::new().with_prefix().with_count_only();
            c.get("restart/", Some(opts)).await.unwrap().count()
        });
        if args.keel_only {
            println!("{}", std::fs::read_to_string(&log).unwrap_or_default());
        }
        proc.signal_and_wait(libc::SIGKILL);
        rows.push((
            name,
            Row {
                load_secs,
                rss_loaded_mib,
                disk_mib,
                restart_secs: restart.as_secs_f64(),
                rss_restarted_mib,
                count,
            },
        ));
    }
    println!(
        "keys={} value={}B clients={} (one machine; kill -9 after the last acknowledged put)",
        args.keys, args.value_size, args.clients
    );
    println!(
        "{:<12} {:>10} {:>12} {:>12} {:>12} {:>14} {:>12}",
        "server", "load s", "RSS MiB", "disk MiB", "restart s", "RSS after MiB", "keys found"
    );
    for (name, r) in &rows {
        println!(
            "{:<12} {:>10.1} {:>12.0} {:>12.0} {:>12.3} {:>14.0} {:>12}",
            name, r.load_secs, r.rss_loaded_mib, r.disk_mib, r.restart_secs, r.rss_restarted_mib, r.count
        );
    }
    for (name, r) in &rows {
        assert_eq!(r.count, args.keys as i64, "{name}: acknowledged keys missing after the restart");
    }
    if let [(_, etcd), (_, keel)] = &rows[..] {
        println!(
            "every acknowledged key present on both; keel / etcd restart time: {:.2}",
            keel.restart_secs / etcd.restart_secs
        );
    }
    if args.keep {
        println!("data kept in {}", dir.keep().display());
    }
}
