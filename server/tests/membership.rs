//! Run-time membership on real processes, driven by the real etcdctl 3.5.1: one script of
//! `member add` / `add --learner` / `promote` / `update` / `remove`, with new members started
//! from what `member add` printed (`--initial-cluster-state existing`), runs first against a
//! real three-member etcd 3.5.1 cluster and then against Keel on the same ports. Every
//! command's output, error and exit code must be the same (new member ids, which etcd derives
//! from the time, are normalised), each new member must catch up (a key written before it
//! joined is readable from it with `--consistency=s`), a removed member must stop, and no
//! acknowledged write may be lost.

mod common;

use jepsen::{etcdctl, free_port, provision, user_stderr, EtcdBins, Proc};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const TOKEN: &str = "keel-test";

struct Node {
    name: String,
    client: u16,
    peer: u16,
    proc: Option<Proc>,
}

impl Node {
    fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.client)
    }

    fn peer_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.peer)
    }
}

fn start(program: &Path, dir: &Path, n: &mut Node, cluster: &str, state: &str) {
    let client = format!("http://127.0.0.1:{}", n.client);
    let args = vec![
        format!("--name={}", n.name),
        format!("--data-dir={}", dir.join(&n.name).display()),
        format!("--listen-client-urls={client}"),
        format!("--advertise-client-urls={client}"),
        format!("--listen-peer-urls={}", n.peer_url()),
        format!("--initial-advertise-peer-urls={}", n.peer_url()),
        format!("--initial-cluster={cluster}"),
        format!("--initial-cluster-token={TOKEN}"),
        format!("--initial-cluster-state={state}"),
    ];
    let log = dir.join(format!("{}-{}.log", n.name, free_port()));
    let mut p = Proc::spawn(&n.name, program, &args, &log);
    p.wait_listening(SocketAddr::from(([127, 0, 0, 1], n.client)), Duration::from_secs(30));
    n.proc = Some(p);
}

/// Retries until etcdctl succeeds (elections and catching up take a moment).
fn until_ok(bins: &EtcdBins, ep: &str, cmd: &[&str]) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = etcdctl(&bins.etcdctl, ep, cmd);
        if out.code == 0 {
            return out.stdout;
        }
        assert!(Instant::now() < deadline, "{cmd:?} via {ep} never succeeded: {out:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits until `key` reads as `value` from the member's own state (`--consistency=s`).
fn wait_local_value(bins: &EtcdBins, ep: &str, key: &str, value: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = etcdctl(&bins.etcdctl, ep, &["get", key, "--print-value-only", "--consistency=s"]);
        if out.code == 0 && out.stdout == format!("{value}\n") {
            return;
        }
        assert!(Instant::now() < deadline, "{key} never reached {ep}: {out:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `member list` as (name, status, peer URLs, client URLs, learner), by name: ids and their
/// order (which follows the ids) differ between runs.
fn member_table(bins: &EtcdBins, ep: &str) -> Vec<String> {
    let out = until_ok(bins, ep, &["member", "list"]);
    let mut rows: Vec<String> =
        out.lines().map(|l| l.split_once(", ").map_or(l, |(_, rest)| rest).to_string()).collect();
    rows.sort();
    rows
}

/// Member ids (hex, as etcdctl prints them) replaced by names, so transcripts compare.
struct Ids(HashMap<String, String>);

impl Ids {
    fn normalise(&self, s: &str) -> String {
        // A time-derived id can have fewer than 16 hex digits. etcdctl prints ids with `%16x`
        // (padded on the left), so in its output the padded form is replaced; the commands we
        // echo ("$ member update <id> ...") hold the bare id, where padding would eat a space.
        let s = s
            .lines()
            .map(|line| {
                let mut line = line.to_string();
                for (id, name) in &self.0 {
                    if !line.starts_with("$ ") {
                        line = line.replace(&format!("{id:>16}"), &format!("<{name}>"));
                    }
                    line = line.replace(id, &format!("<{name}>"));
                }
                line
            })
            .collect::<Vec<_>>()
            .join("\n");
        // The new member's position in ETCD_INITIAL_CLUSTER follows its id: sort the entries.
        s.lines()
            .map(|l| match l.strip_prefix("ETCD_INITIAL_CLUSTER=\"") {
                Some(rest) => {
                    let mut parts: Vec<&str> = rest.trim_end_matches('"').split(',').collect();
                    parts.sort();
                    format!("ETCD_INITIAL_CLUSTER=\"{}\"", parts.join(","))
                }
                None => l.to_string(),
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// The id `member add` printed: "Member <%16x> added ...".
fn added_id(out: &str) -> String {
    out.split_whitespace().nth(1).expect("member id").to_string()
}

/// The env lines `member add` printed, as flags: (initial cluster).
fn printed_cluster(out: &str) -> String {
    let line = out.lines().find(|l| l.starts_with("ETCD_INITIAL_CLUSTER=")).expect("cluster line");
    line.trim_start_matches("ETCD_INITIAL_CLUSTER=").trim_matches('"').to_string()
}

fn id_of(bins: &EtcdBins, ep: &str, name: &str) -> String {
    // A member publishes its name shortly after it starts.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = until_ok(bins, ep, &["member", "list"]);
        if let Some(line) = out.lines().find(|l| l.contains(&format!(", {name}, "))) {
            return line.split(',').next().unwrap().to_string();
        }
        assert!(Instant::now() < deadline, "{name} not in {out}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn unix_secs() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

/// Waits for the clock to pass the second after `secs`.
fn next_second(secs: u64) {
    while unix_secs() <= secs + 1 {
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs one etcdctl command and adds what it printed (normalised) to the transcript.
fn run(
    bins: &EtcdBins,
    transcript: &mut Vec<String>,
    ids: &Ids,
    ep: &str,
    cmd: &[&str],
) -> jepsen::CmdOutput {
    // etcd refuses changes until this member has been connected to every peer for 5 s
    // ("unhealthy cluster"); Keel has no such wait. Retry through it.
    let deadline = Instant::now() + Duration::from_secs(30);
    let out = loop {
        let out = etcdctl(&bins.etcdctl, ep, cmd);
        if !out.stderr.contains("etcdserver: unhealthy cluster") || Instant::now() > deadline {
            break out;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    // Normalised at the end, once every new member's id is known.
    let _ = ids;
    transcript.push(format!(
        "$ {}\n{}{}exit {}",
        cmd.join(" "),
        out.stdout,
        user_stderr(&out.stderr),
        out.code
    ));
    out
}

/// Runs the script against `program`; returns the normalised transcript of every command.
fn script(bins: &EtcdBins, program: &Path, dir: &Path, ports: &[(u16, u16)]) -> Vec<String> {
    eprintln!("running the script against {}", program.display());
    let mut nodes: Vec<Node> = ports
        .iter()
        .enumerate()
        .map(|(i, &(client, peer))| Node { name: format!("infra{}", i + 1), client, peer, proc: None })
        .collect();
    let cluster =
        nodes[..3].iter().map(|n| format!("{}={}", n.name, n.peer_url())).collect::<Vec<_>>().join(",");
    for n in nodes[..3].iter_mut() {
        start(program, dir, n, &cluster, "new");
    }
    let ep1 = nodes[0].endpoint();
    let mut ids = Ids(HashMap::new());
    for n in &nodes[..3] {
        let id = id_of(bins, &ep1, &n.name);
        ids.0.insert(id, n.name.clone());
    }
    let mut transcript = Vec::new();
    let mut acked: Vec<(String, String)> = Vec::new();
    let mut put = |ep: &str, k: &str, v: &str| {
        until_ok(bins, ep, &["put", k, v]);
        acked.push((k.to_string(), v.to_string()));
    };
    put(&ep1, "k0", "v0");

    // A voter joins with the settings `member add` printed.
    let (u4, u5, u6) = (nodes[3].peer_url(), nodes[4].peer_url(), nodes[5].peer_url());
    let added_at = unix_secs();
    let out = run(
        bins,
        &mut transcript,
        &ids,
        &nodes[1].endpoint(),
        &["member", "add", "infra4", &format!("--peer-urls={u4}")],
    );
    assert_eq!(out.code, 0, "{out:?}");
    ids.0.insert(added_id(&out.stdout), "infra4".into());
    assert_eq!(member_table(bins, &ep1).iter().filter(|r| r.starts_with("unstarted")).count(), 1);
    start(program, dir, &mut nodes[3], &printed_cluster(&out.stdout), "existing");
    wait_local_value(bins, &nodes[3].endpoint(), "k0", "v0");
    put(&nodes[3].endpoint(), "k1", "v1");

    // etcd's refusals.
    run(bins, &mut transcript, &ids, &ep1, &["member", "remove", "1234abcd"]);
    run(bins, &mut transcript, &ids, &ep1, &["member", "update", "1234abcd", &format!("--peer-urls={u6}")]);
    let id1 = id_of(bins, &ep1, "infra1");
    run(bins, &mut transcript, &ids, &ep1, &["member", "promote", &id1]);
    // A new member's id hashes its URLs and the time in seconds: re-adding infra4's URL within
    // the second of its addition would hit "member ID already exist" first, on etcd as here.
    next_second(added_at);
    run(bins, &mut transcript, &ids, &ep1, &["member", "add", "dup", &format!("--peer-urls={u4}")]);
    run(
        bins,
        &mut transcript,
        &ids,
        &ep1,
        &["member", "add", "dup", "--learner", &format!("--peer-urls={}", nodes[0].peer_url())],
    );

    // A learner joins, catches up and is promoted (once in sync: retried until then).
    let out = run(
        bins,
        &mut transcript,
        &ids,
        &ep1,
        &["member", "add", "infra5", "--learner", &format!("--peer-urls={u5}")],
    );
    assert_eq!(out.code, 0, "{out:?}");
    let id5 = added_id(&out.stdout);
    ids.0.insert(id5.clone(), "infra5".into());
    run(
        bins,
        &mut transcript,
        &ids,
        &ep1,
        &["member", "add", "infra6", "--learner", &format!("--peer-urls={u6}")],
    );
    start(program, dir, &mut nodes[4], &printed_cluster(&out.stdout), "existing");
    wait_local_value(bins, &nodes[4].endpoint(), "k1", "v1");
    let promoted = until_ok(bins, &nodes[1].endpoint(), &["member", "promote", &id5]);
    transcript.push(promoted);
    put(&nodes[4].endpoint(), "k2", "v2");

    // New peer URLs for infra4, which restarts on them.
    let id4 = id_of(bins, &ep1, "infra4");
    nodes[3].proc.take().unwrap().signal_and_wait(libc::SIGTERM);
    let new_peer = free_port();
    let u4b = format!("http://127.0.0.1:{new_peer}");
    run(bins, &mut transcript, &ids, &ep1, &["member", "update", &id4, &format!("--peer-urls={u4b}")]);
    nodes[3].peer = new_peer;
    let cluster4 =
        nodes[..5].iter().map(|n| format!("{}={}", n.name, n.peer_url())).collect::<Vec<_>>().join(",");
    put(&ep1, "k3", "v3");
    start(program, dir, &mut nodes[3], &cluster4, "existing");
    wait_local_value(bins, &nodes[3].endpoint(), "k3", "v3");
    let deadline = Instant::now() + Duration::from_secs(30);
    let table = loop {
        let t = member_table(bins, &ep1);
        if t.iter().all(|r| r.starts_with("started")) || Instant::now() > deadline {
            break t;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    transcript.push(table.join("\n"));

    // infra4 is removed: it stops; removing it again is refused.
    let out = run(bins, &mut transcript, &ids, &ep1, &["member", "remove", &id4]);
    assert_eq!(out.code, 0, "{out:?}");
    let status = nodes[3].proc.as_mut().unwrap().wait_exit(Duration::from_secs(20));
    assert!(status.is_some(), "a removed member stops");
    nodes[3].proc = None;
    run(bins, &mut transcript, &ids, &ep1, &["member", "remove", &id4]);
    put(&nodes[4].endpoint(), "k4", "v4");
    transcript.push(member_table(bins, &ep1).join("\n"));

    // No acknowledged write lost, on any remaining member.
    for n in nodes.iter().filter(|n| n.proc.is_some()) {
        for (k, v) in &acked {
            wait_local_value(bins, &n.endpoint(), k, v);
        }
    }
    let all = until_ok(bins, &nodes[2].endpoint(), &["get", "k", "--prefix", "--print-value-only"]);
    assert_eq!(all, "v0\nv1\nv2\nv3\nv4\n");
    for n in nodes.iter_mut() {
        if let Some(mut p) = n.proc.take() {
            p.signal_and_wait(libc::SIGKILL);
        }
    }
    // Ports are re-used by the next run: give the kernel a moment.
    std::thread::sleep(Duration::from_millis(200));
    transcript.into_iter().map(|t| ids.normalise(&t).replace(&new_peer.to_string(), "<new-port>")).collect()
}

#[test]
fn member_commands_match_etcd_and_lose_no_write() {
    let bins = provision();
    let dir = tempfile::tempdir().unwrap();
    let ports: Vec<(u16, u16)> = (0..6).map(|_| (free_port(), free_port())).collect();
    let etcd_dir: PathBuf = dir.path().join("etcd");
    let keel_dir: PathBuf = dir.path().join("keel");
    std::fs::create_dir_all(&etcd_dir).unwrap();
    std::fs::create_dir_all(&keel_dir).unwrap();
    let etcd = script(&bins, &bins.etcd, &etcd_dir, &ports);
    let keel = script(&bins, &common::keel_bin(), &keel_dir, &ports);
    for (e, k) in etcd.iter().zip(keel.iter()) {
        assert_eq!(k, e, "keel (left) differs from etcd (right)");
    }
    assert_eq!(etcd.len(), keel.len());
}

/// Found in fresh-clone CI runs: an id with 15 hex digits (one in 16 time-derived ids) is
/// printed padded by etcdctl (`%16x`) but bare in the commands the transcript echoes.
#[test]
fn short_ids_normalise_in_commands_and_tables() {
    let ids = Ids([("f3a0b1c2d3e4f56".to_string(), "infra4".to_string())].into_iter().collect());
    assert_eq!(
        ids.normalise("$ member update f3a0b1c2d3e4f56 --peer-urls=x"),
        "$ member update <infra4> --peer-urls=x"
    );
    assert_eq!(ids.normalise("|  f3a0b1c2d3e4f56 | started |"), "| <infra4> | started |");
    // etcdctl's own lines print ids with %16x.
    assert_eq!(
        ids.normalise("Member  f3a0b1c2d3e4f56 added to cluster c"),
        "Member <infra4> added to cluster c"
    );
}
