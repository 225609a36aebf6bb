//! The seed's scenario, differentially: the repository's `Procfile` cluster (three members on
//! etcd's ports 2379/22379/32379, token `etcd-cluster-1`) is started once with the real etcd
//! 3.5.1 and once with Keel, with the Procfile's own flags, and the real etcdctl 3.5.1 runs the
//! same workflow against each: member list, endpoint status and health, reads and writes through
//! every member (followers forward), txn, leases, lock, compaction, snapshot save, move-leader,
//! killing the leader (writes go on through the others), and the killed member's restart and
//! catch-up. Every command's stdout, error lines and exit code must be the same.
//!
//! What legitimately differs is normalised, and nothing else: lease ids (they embed the start
//! time), byte sizes, terms, indexes and the leader in `endpoint status` tables, terms in
//! JSON headers, `took` durations, and the snapshot path. Which member wins the first election is a race, so infra1
//! is made the leader first (outside the comparison). Member and cluster ids are compared as they are: they must be etcd's.
//!
//! The ports are fixed (they are the Procfile's), so this is the only test that uses them, and
//! runs of it in other checkouts wait for each other (a lock file); a port taken by anything
//! else (a node from `cargo run`) fails the test with a clear message.

mod common;

use jepsen::{etcdctl, etcdctl_input, provision, user_stderr, EtcdBins, Proc};
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

/// The Procfile's members: (name, client port, argv after the program).
fn procfile_members() -> Vec<(String, u16, Vec<String>)> {
    let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../Procfile"))
        .expect("read the Procfile");
    let mut members = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty() && !l.starts_with('#')) {
        let (_, cmd) = line.split_once(": ").expect("a Procfile line is `name: command`");
        let argv = shell_words(cmd);
        let flag = |name: &str| {
            let at = argv.iter().position(|a| a == name).unwrap_or_else(|| panic!("{name} in {line}"));
            argv[at + 1].clone()
        };
        let port = flag("--listen-client-urls").rsplit(':').next().unwrap().parse().expect("client port");
        assert_eq!(argv[0], "target/release/keel", "the Procfile runs the release keel");
        members.push((flag("--name"), port, argv[1..].to_vec()));
    }
    assert_eq!(members.len(), 3, "the Procfile has three members");
    members
}

/// Splits a command line on spaces, with single-quoted words (all the Procfile uses).
fn shell_words(s: &str) -> Vec<String> {
    let (mut words, mut word, mut quoted, mut any) = (Vec::new(), String::new(), false, false);
    for c in s.chars() {
        match c {
            '\'' => {
                quoted = !quoted;
                any = true;
            }
            ' ' if !quoted => {
                if any {
                    words.push(std::mem::take(&mut word));
                }
                any = false;
            }
            c => {
                word.push(c);
                any = true;
            }
        }
    }
    if any {
        words.push(word);
    }
    words
}

struct Cluster {
    bins: EtcdBins,
    program: std::path::PathBuf,
    dir: std::path::PathBuf,
    members: Vec<(String, u16, Vec<String>)>,
    procs: Vec<Option<Proc>>,
}

impl Cluster {
    fn start(kind: &str, program: &Path, bins: &EtcdBins, dir: &Path) -> Cluster {
        let members = procfile_members();
        let mut c = Cluster {
            bins: bins.clone(),
            program: program.to_path_buf(),
            dir: dir.join(kind),
            procs: members.iter().map(|_| None).collect(),
            members,
        };
        for i in 0..3 {
            c.start_member(i);
        }
        c
    }

    fn start_member(&mut self, i: usize) {
        let (name, port, argv) = &self.members[i];
        let mut args = argv.clone();
        args.push(format!("--data-dir={}", self.dir.join(name).display()));
        std::fs::create_dir_all(&self.dir).unwrap();
        let log = self.dir.join(format!("{name}-{}.log", jepsen::free_port()));
        let mut p = Proc::spawn(name, &self.program, &args, &log);
        p.wait_listening(SocketAddr::from(([127, 0, 0, 1], *port)), Duration::from_secs(30));
        self.procs[i] = Some(p);
    }

    fn endpoint(&self, i: usize) -> String {
        format!("127.0.0.1:{}", self.members[i].1)
    }

    fn all(&self) -> String {
        (0..3).map(|i| self.endpoint(i)).collect::<Vec<_>>().join(",")
    }

    /// The member that says it leads, from each member's own `endpoint status`.
    fn leader(&self) -> Option<usize> {
        (0..3).filter(|&i| self.procs[i].is_some()).find(|&i| {
            let out = etcdctl(&self.bins.etcdctl, &self.endpoint(i), &["endpoint", "status"]);
            out.stdout.split(", ").nth(4) == Some("true")
        })
    }

    fn wait_leader(&self) -> usize {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(l) = self.leader() {
                // Every running member agrees there is a leader and serves reads.
                let ok = (0..3)
                    .filter(|&i| self.procs[i].is_some())
                    .all(|i| etcdctl(&self.bins.etcdctl, &self.endpoint(i), &["get", "probe"]).code == 0);
                if ok {
                    return l;
                }
            }
            assert!(Instant::now() < deadline, "no leader after 30 s:\n{}", self.logs());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Moves the leadership to member `i` (retrying: elections may intervene).
    fn make_leader(&self, i: usize) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.wait_leader() != i {
            let r = etcdctl(&self.bins.etcdctl, &self.all(), &["move-leader", &self.member_id(i)]);
            assert!(
                Instant::now() < deadline,
                "{} never became the leader: {r:?}\n{}",
                self.members[i].0,
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn member_id(&self, i: usize) -> String {
        let out = etcdctl(&self.bins.etcdctl, &self.endpoint(i), &["endpoint", "status"]);
        out.stdout.split(", ").nth(1).expect("an id").to_string()
    }

    fn logs(&self) -> String {
        self.procs.iter().flatten().map(|p| format!("--- {}\n{}", p.name, p.log_text())).collect()
    }
}

/// One step of the workflow: where it runs and how its output is made comparable.
struct Step {
    via: Via,
    args: Vec<String>,
    input: &'static str,
    /// The output's lines in sorted order (etcdctl prints concurrent checks as they finish).
    sorted: bool,
}

/// Where a step runs: all three endpoints, or one member (by Procfile order).
#[derive(Clone, Copy)]
enum Via {
    All,
    Member(usize),
}

fn step(via: Via, args: &[&str]) -> Step {
    Step { via, args: args.iter().map(|a| a.to_string()).collect(), input: "", sorted: false }
}

/// What a run printed, normalised, step by step.
type Transcript = Vec<(String, String, String, i32)>;

/// Replaces the `endpoint status -w table` cells that legitimately differ (sizes, terms,
/// indexes, who leads) and keeps the rest, cell by cell, so column widths do not matter.
fn normalise_status_table(s: &str) -> String {
    let mut out = Vec::new();
    for line in s.lines() {
        if !line.starts_with('|') {
            continue;
        }
        let cells: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
        let header = cells.first() == Some(&"ENDPOINT");
        let cells: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| match i {
                3 | 4 | 6 | 7 | 8 if !header => "*".to_string(),
                _ => c.to_string(),
            })
            .collect();
        out.push(cells.join(" | "));
    }
    out.join("\n")
}

fn normalise(s: &str, leases: &[String], snap: &Path) -> String {
    let mut s = s.replace(&snap.display().to_string(), "<snapshot>");
    for (i, id) in leases.iter().enumerate() {
        s = s.replace(id, &format!("<lease{i}>"));
    }
    // The term counts elections, and infra1 may have needed one more to become the leader.
    while let Some(at) = s.find("\"raft_term\":") {
        let from = at + "\"raft_term\":".len();
        let digits = s[from..].chars().take_while(char::is_ascii_digit).count();
        s = format!("{}\"raft_term\"=<term>{}", &s[..at], &s[from + digits..]);
    }
    // `endpoint health`: "... is healthy: successfully committed proposal: took = 2.1ms".
    let s: Vec<String> = s
        .lines()
        .map(|l| match l.find("took = ") {
            Some(at) => format!("{}took = <t>", &l[..at]),
            None => l.to_string(),
        })
        .collect();
    s.join("\n")
}

fn run_workflow(c: &mut Cluster, snap_dir: &Path) -> Transcript {
    // Which member wins the first election is a race: infra1 is made the leader (not part of
    // the comparison), so that the rest of the run is the same for both clusters.
    c.make_leader(0);
    // The workflow moves the leadership to infra2, then kills and restarts it.
    let transferee = 1;
    let snap = snap_dir.join("procfile.snap.db");
    let snap_arg = snap.display().to_string();
    let transferee_id = c.member_id(transferee);
    use Via::*;
    let mut steps = vec![
        step(All, &["member", "list"]),
        step(All, &["member", "list", "-w", "table"]),
        step(Member(1), &["member", "list", "-w", "json"]),
        step(All, &["endpoint", "status", "--cluster", "-w", "table"]),
        Step { sorted: true, ..step(All, &["endpoint", "health", "--cluster"]) },
        step(Member(0), &["put", "seed/a", "1"]),
        step(Member(1), &["put", "seed/b", "2"]),
        step(Member(2), &["put", "seed/c", "3"]),
        step(Member(0), &["get", "seed/", "--prefix"]),
        step(Member(1), &["get", "seed/", "--prefix", "-w", "json"]),
        step(Member(2), &["get", "seed/b", "--print-value-only"]),
        step(Member(1), &["put", "seed/a", "10", "--prev-kv"]),
        step(Member(2), &["del", "seed/c"]),
        Step {
            input: "value(\"seed/a\") = \"10\"\n\nput seed/txn yes\nget seed/a\n\nput seed/txn no\n\n",
            ..step(Member(2), &["txn"])
        },
        Step {
            input: "mod(\"seed/a\") = \"0\"\n\nput seed/txn yes\n\nput seed/txn no\n\n",
            ..step(Member(0), &["txn", "-w", "json"])
        },
        step(Member(1), &["get", "seed/txn"]),
        step(Member(2), &["lease", "grant", "600"]),
        step(Member(1), &["put", "seed/leased", "x", "--lease=<lease0>"]),
        step(Member(0), &["lease", "timetolive", "<lease0>", "--keys"]),
        step(Member(1), &["lease", "keep-alive", "--once", "<lease0>"]),
        step(Member(2), &["lease", "list"]),
        step(Member(0), &["lease", "revoke", "<lease0>"]),
        step(Member(1), &["get", "seed/leased"]),
        step(Member(2), &["lock", "seed-lock", "echo", "held"]),
        step(All, &["get", "seed/", "--prefix", "--keys-only"]),
        step(Member(1), &["compaction", "4"]),
        step(Member(2), &["get", "seed/a", "--rev=2"]),
        step(Member(0), &["snapshot", "save", &snap_arg]),
        step(All, &["move-leader", &transferee_id]),
    ];
    let mut out = Vec::new();
    let mut leases: Vec<String> = Vec::new();
    let run = |c: &Cluster, steps: &mut Vec<Step>, out: &mut Transcript, leases: &mut Vec<String>| {
        for st in steps.drain(..) {
            let ep = match st.via {
                All => c.all(),
                Member(i) => c.endpoint(i),
            };
            let args: Vec<String> = st
                .args
                .iter()
                .map(|a| {
                    let mut a = a.clone();
                    for (i, id) in leases.iter().enumerate() {
                        a = a.replace(&format!("<lease{i}>"), id);
                    }
                    a
                })
                .collect();
            let argv: Vec<&str> = args.iter().map(String::as_str).collect();
            let r = etcdctl_input(&c.bins.etcdctl, &ep, &argv, st.input);
            if argv.starts_with(&["lease", "grant"]) && r.code == 0 {
                leases.push(r.stdout.split_whitespace().nth(1).expect("lease id").to_string());
            }
            let mut stdout = if argv.starts_with(&["endpoint", "status"]) && argv.contains(&"table") {
                normalise_status_table(&r.stdout)
            } else {
                normalise(&r.stdout, leases, &snap)
            };
            let mut stderr = normalise(&user_stderr(&r.stderr), leases, &snap);
            if st.sorted {
                for s in [&mut stdout, &mut stderr] {
                    let mut lines: Vec<&str> = s.lines().collect();
                    lines.sort_unstable();
                    *s = lines.join("\n");
                }
            }
            let via = match st.via {
                All => "every member".to_string(),
                Member(i) => c.members[i].0.clone(),
            };
            out.push((format!("{} via {via}", st.args.join(" ")), stdout, stderr, r.code));
        }
    };
    run(c, &mut steps, &mut out, &mut leases);
    // On a loaded machine an election may follow the transfer; the member killed next must be
    // the leader.
    c.make_leader(transferee);

    // Kill the new leader: the other two elect one and take writes; every read agrees.
    c.procs[transferee].take().expect("running").signal_and_wait(libc::SIGKILL);
    let survivor = (transferee + 1) % 3;
    let deadline = Instant::now() + Duration::from_secs(30);
    while etcdctl(&c.bins.etcdctl, &c.endpoint(survivor), &["put", "seed/after-kill", "v"]).code != 0 {
        assert!(Instant::now() < deadline, "no writes after the leader was killed:\n{}", c.logs());
        std::thread::sleep(Duration::from_millis(100));
    }
    let others: Vec<usize> = (0..3).filter(|&i| i != transferee).collect();
    let mut steps = vec![
        step(Member(others[0]), &["get", "seed/after-kill"]),
        step(Member(others[1]), &["put", "seed/after-kill", "w"]),
        step(Member(others[0]), &["get", "seed/", "--prefix"]),
        step(Member(others[1]), &["member", "list"]),
        Step { sorted: true, ..step(Member(others[0]), &["endpoint", "health", "--cluster"]) },
    ];
    run(c, &mut steps, &mut out, &mut leases);

    // Restart it: it catches up from its WAL and the leader.
    c.start_member(transferee);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = etcdctl(
            &c.bins.etcdctl,
            &c.endpoint(transferee),
            &["get", "seed/after-kill", "--print-value-only", "--consistency=s"],
        );
        if r.code == 0 && r.stdout == "w\n" {
            break;
        }
        assert!(Instant::now() < deadline, "the restarted member never caught up: {r:?}\n{}", c.logs());
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut steps = vec![
        step(Member(transferee), &["get", "seed/", "--prefix", "--consistency=s"]),
        step(Member(transferee), &["put", "seed/restarted", "yes"]),
        step(All, &["get", "seed/", "--prefix", "--keys-only"]),
        step(All, &["endpoint", "status", "--cluster", "-w", "table"]),
    ];
    run(c, &mut steps, &mut out, &mut leases);
    out
}

/// Holds the Procfile's ports for this process: other runs of this test (other checkouts of
/// the repository) wait; then every port must be free.
fn take_procfile_ports() -> std::fs::File {
    let lock =
        std::fs::File::create(std::env::temp_dir().join("keel-procfile-ports.lock")).expect("lock file");
    lock.lock().expect("lock the Procfile's ports");
    for (name, client, argv) in procfile_members() {
        let peer = argv
            .iter()
            .position(|a| a == "--listen-peer-urls")
            .and_then(|i| argv[i + 1].rsplit(':').next()?.parse::<u16>().ok())
            .expect("a peer port");
        for port in [client, peer] {
            if let Err(e) = std::net::TcpListener::bind(("127.0.0.1", port)) {
                panic!("port {port} of {name} (the Procfile's) is taken ({e}): stop what listens there");
            }
        }
    }
    lock
}

#[test]
fn the_procfile_cluster_runs_the_seed_workflow_like_etcd() {
    let _ports = take_procfile_ports();
    let bins = provision();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut etcd = Cluster::start("etcd", &bins.etcd, &bins, dir.path());
    let want = run_workflow(&mut etcd, dir.path());
    let etcd_logs = etcd.logs();
    drop(etcd);
    let mut keel = Cluster::start("keel", &common::keel_bin(), &bins, dir.path());
    let got = run_workflow(&mut keel, dir.path());
    let mut mismatches = Vec::new();
    for (w, g) in want.iter().zip(&got) {
        if w != g {
            mismatches.push(format!(
                "{}\n  etcd: {:?}\n  keel: {:?}",
                w.0,
                (&w.1, &w.2, w.3),
                (&g.1, &g.2, g.3)
            ));
        }
    }
    assert_eq!(want.len(), got.len());
    assert!(
        mismatches.is_empty(),
        "{} of {} steps differ:\n{}\n\nkeel logs:\n{}\n\netcd logs (tail):\n{}",
        mismatches.len(),
        want.len(),
        mismatches.join("\n"),
        keel.logs(),
        &etcd_logs[etcd_logs.len().saturating_sub(4000)..]
    );
    // The transcript holds real answers, not only errors both sides share.
    assert!(want.iter().filter(|s| s.3 == 0).count() >= want.len() - 4, "etcd failed too often: {want:?}");
}
