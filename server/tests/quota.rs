//! `--quota-backend-bytes` and the NOSPACE alarm, differentially: the same etcdctl 3.5.1
//! transcript against the real etcd 3.5.1 and Keel, each with a 1 MiB quota. Fill it with
//! 100 kB values until a put is refused, look at the alarm (alarm list, endpoint status), see
//! which writes are refused and which still work, then compact, defrag and disarm, and write
//! again.
//!
//! etcd's database grows in bbolt pages and Keel's image in its own, so the number of puts
//! before the quota is reached differs: the transcript records the refused put, not the count.
//! Sizes, Raft indexes, revisions and lease ids are normalised; member ids are equal (the two
//! are started with the same name, peer URL and token).

mod common;

use jepsen::{etcdctl_input, user_stderr, EtcdBins, Server};

const QUOTA_BYTES: u64 = 1 << 20;
const VALUE_BYTES: usize = 100_000;
/// Bound on the puts that fill the quota (about ten do, on both).
const FILL_PUTS_MAX: usize = 100;

struct Run<'a> {
    bins: &'a EtcdBins,
    server: &'a Server,
    /// Each command and what it printed, normalised.
    lines: Vec<String>,
    /// The lease granted before the quota is reached, as etcdctl prints it.
    lease: String,
}

impl Run<'_> {
    fn raw(&self, args: &[&str], input: &str) -> jepsen::CmdOutput {
        etcdctl_input(&self.bins.etcdctl, &self.server.endpoint(), args, input)
    }

    /// Runs a command and records its output, normalised.
    fn cmd(&mut self, args: &[&str], input: &str) -> String {
        let out = self.raw(args, input);
        let text =
            format!("stdout: {}\nstderr: {}\ncode: {}", out.stdout, user_stderr(&out.stderr), out.code);
        let text = self.normalise(&format!("$ etcdctl {}\n{text}", args.join(" ")));
        self.lines.push(text);
        out.stdout
    }

    fn normalise(&self, s: &str) -> String {
        let mut s = s.replace(&self.server.endpoint(), "<client-url>");
        if !self.lease.is_empty() {
            s = s.replace(&self.lease, "<lease>");
        }
        s.lines().map(normalise_line).collect::<Vec<_>>().join("\n")
    }

    /// `/health` on the client port: its status and body.
    fn health(&mut self, path: &str) {
        let (code, body) = common::http_get(&self.server.spec.client_addr().to_string(), path);
        self.lines.push(format!("GET {path}\n{code} {body}"));
    }

    /// The store's current revision, from a JSON read.
    fn revision(&self) -> String {
        let out = self.raw(&["get", "nothing", "-w", "json"], "");
        let at = out.stdout.find("\"revision\":").expect("a header") + "\"revision\":".len();
        out.stdout[at..].split(|c: char| !c.is_ascii_digit()).next().unwrap().to_string()
    }
}

/// Table rows and simple lines of `endpoint status`: DB SIZE, RAFT INDEX and RAFT APPLIED
/// INDEX differ by storage; table borders and padding follow the cells' widths.
fn normalise_line(line: &str) -> String {
    if let Some(rest) = line.strip_prefix("stdout: ") {
        return format!("stdout: {}", normalise_line(rest));
    }
    if line.starts_with('+') {
        return String::new();
    }
    let (cells, joined): (Vec<String>, &str) = if line.starts_with('|') {
        (line.trim_matches('|').split('|').map(|c| c.trim().to_string()).collect(), "|")
    } else if line.contains("<client-url>, ") {
        (line.split(", ").map(str::to_string).collect(), ", ")
    } else {
        return revision_free(line);
    };
    let data_row = cells.first().is_some_and(|c| c.contains("<client-url>"));
    let cells: Vec<String> = cells
        .into_iter()
        .enumerate()
        .map(|(i, c)| if data_row && [3, 7, 8].contains(&i) { "N".to_string() } else { c })
        .collect();
    cells.join(joined)
}

/// `compacted revision 13` (the revision depends on how many puts filled the quota) and
/// `lease 694d81a3c1c4a70b granted with TTL(100s)` (lease ids follow the start time).
fn revision_free(line: &str) -> String {
    if line.starts_with("compacted revision ") || line.starts_with("$ etcdctl compaction") {
        let mut words: Vec<&str> = line.split(' ').collect();
        words.pop();
        return format!("{} N", words.join(" "));
    }
    if let Some(rest) = line.strip_prefix("lease ") {
        if let Some((_, after)) = rest.split_once(' ') {
            return format!("lease <id> {after}");
        }
    }
    line.to_string()
}

fn transcript(bins: &EtcdBins, server: &Server) -> (Vec<String>, usize) {
    let mut run = Run { bins, server, lines: Vec::new(), lease: String::new() };
    let big = "x".repeat(VALUE_BYTES);
    run.cmd(&["alarm", "list"], "");
    run.cmd(&["alarm", "disarm"], "");
    let granted = run.raw(&["lease", "grant", "1000"], "");
    assert_eq!(granted.code, 0, "{granted:?}");
    run.lease = granted.stdout.split_whitespace().nth(1).expect("lease <id> granted").to_string();
    // Fill: puts of one key (its history grows) until the first refusal.
    let mut accepted = 0;
    loop {
        assert!(accepted < FILL_PUTS_MAX, "{} took {accepted} puts of {VALUE_BYTES} bytes", server.proc.name);
        let out = run.raw(&["put", "big"], &big);
        if out.code != 0 {
            break;
        }
        accepted += 1;
    }
    run.cmd(&["put", "big"], &big);
    run.cmd(&["alarm", "list"], "");
    run.cmd(&["endpoint", "status", "-w", "table"], "");
    run.cmd(&["endpoint", "status"], "");
    run.cmd(&["endpoint", "health"], "");
    run.health("/health");
    run.health("/health?exclude=NOSPACE");
    // Refused: whatever could grow the database.
    run.cmd(&["put", "small", "v"], "");
    run.cmd(&["txn"], "\n\nput small v\n\n");
    run.cmd(&["lease", "grant", "100"], "");
    // Allowed: reads, deletes, lease revokes, compaction, defrag.
    run.cmd(&["get", "big", "--keys-only"], "");
    run.cmd(&["get", "big", "--consistency=s", "--keys-only"], "");
    run.cmd(&["del", "nothing"], "");
    let lease = run.lease.clone();
    run.cmd(&["lease", "revoke", &lease], "");
    run.cmd(&["del", "big"], "");
    let revision = run.revision();
    run.cmd(&["compaction", "--physical", &revision], "");
    run.cmd(&["defrag"], "");
    // Now the database is back under the quota, but the alarm stays until disarmed: what
    // could grow the database is still refused, even in a transaction's branch not taken;
    // read-only and delete-only transactions go through.
    run.cmd(&["alarm", "list"], "");
    run.cmd(&["put", "small", "v"], "");
    run.cmd(&["txn"], "value(\"small\") = \"x\"\n\nget small\n\nput small v\n\n");
    run.cmd(&["txn"], "\nget small\n\n\n");
    run.cmd(&["txn"], "\ndel nothing\n\n\n");
    run.cmd(&["lease", "grant", "100"], "");
    run.cmd(&["alarm", "disarm"], "");
    run.cmd(&["alarm", "list"], "");
    run.cmd(&["alarm", "disarm"], "");
    run.cmd(&["endpoint", "status", "-w", "table"], "");
    run.health("/health");
    run.cmd(&["put", "small", "v"], "");
    run.cmd(&["put", "big"], &big);
    run.cmd(&["lease", "grant", "100"], "");
    run.cmd(&["txn"], "\nget small\n\n\n");
    run.cmd(&["get", "small"], "");
    (run.lines, accepted)
}

#[test]
fn nospace_alarm_matches_etcd() {
    let bins = jepsen::provision();
    let dir = tempfile::tempdir().expect("tempdir");
    let peer = format!("http://127.0.0.1:{}", jepsen::free_port());
    let quota = [format!("--quota-backend-bytes={QUOTA_BYTES}")];
    let spec = |name: &str| common::spec(&dir.path().join(name), "quota", &peer);
    let etcd = Server::start_with("etcd", &bins.etcd, spec("etcd"), &quota, &bins.etcdctl);
    // Keel's image is saved every --snapshot-count entries (10000 by default): its quota counts
    // the pages in use plus what was applied since, so the default fills up as etcd's does.
    let keel_flags = [quota[0].clone()];
    let keel = Server::start_with("keel", &common::keel_bin(), spec("keel"), &keel_flags, &bins.etcdctl);

    let (want, etcd_puts) = transcript(&bins, &etcd);
    let (got, keel_puts) = transcript(&bins, &keel);
    if let Ok(path) = std::env::var("QUOTA_TRANSCRIPT") {
        std::fs::write(path, format!("{}\n=====\n{}", want.join("\n"), got.join("\n"))).unwrap();
    }
    assert!(etcd_puts >= 1 && keel_puts >= 1, "puts before the quota: etcd {etcd_puts}, keel {keel_puts}");
    eprintln!(
        "puts of {VALUE_BYTES} bytes before the quota of {QUOTA_BYTES}: etcd {etcd_puts}, keel {keel_puts}"
    );
    let mut mismatches = Vec::new();
    for (w, g) in want.iter().zip(&got) {
        if w != g {
            mismatches.push(format!("etcd:\n{w}\nkeel:\n{g}\n"));
        }
    }
    assert_eq!(want.len(), got.len());
    assert!(
        mismatches.is_empty(),
        "{} of {} commands differ:\n{}",
        mismatches.len(),
        want.len(),
        mismatches.join("\n")
    );

    // The quota gauge, as etcd prints it.
    let gauge = |s: &Server| {
        let (_, page) = common::http_get(&s.spec.client_addr().to_string(), "/metrics");
        page.lines().find(|l| l.starts_with("etcd_server_quota_backend_bytes ")).map(str::to_string)
    };
    assert_eq!(gauge(&keel), gauge(&etcd));
    assert_eq!(gauge(&etcd).as_deref(), Some("etcd_server_quota_backend_bytes 1.048576e+06"));
}

/// The alarm is replicated state: it survives a restart, whether it is read back from the
/// log (the default `--snapshot-count`) or from the saved image (a save after every entry).
#[test]
fn the_alarm_survives_a_restart() {
    let bins = jepsen::provision();
    for snapshot_count in ["10000", "1"] {
        let dir = tempfile::tempdir().expect("tempdir");
        let peer = format!("http://127.0.0.1:{}", jepsen::free_port());
        let spec = common::spec(&dir.path().join("keel"), "restart", &peer);
        let flags = [format!("--snapshot-count={snapshot_count}")];
        let keel = Server::start_with("keel", &common::keel_bin(), spec.clone(), &flags, &bins.etcdctl);
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let id = rt.block_on(async {
            use server::pb::etcdserverpb::maintenance_client::MaintenanceClient;
            use server::pb::etcdserverpb::*;
            let mut c = MaintenanceClient::connect(keel.endpoint()).await.unwrap();
            let id = c.status(StatusRequest {}).await.unwrap().into_inner().header.unwrap().member_id;
            let raise = AlarmRequest {
                action: alarm_request::AlarmAction::Activate as i32,
                member_id: id,
                alarm: AlarmType::Nospace as i32,
            };
            c.alarm(raise).await.unwrap();
            id
        });
        let ctl = |s: &Server, args: &[&str]| etcdctl_input(&bins.etcdctl, &s.endpoint(), args, "");
        let listed = format!("memberID:{id} alarm:NOSPACE \n");
        assert_eq!(ctl(&keel, &["alarm", "list"]).stdout, listed);
        // A few more entries, so that a save after every entry has certainly covered the alarm.
        for _ in 0..3 {
            assert_eq!(ctl(&keel, &["del", "nothing"]).code, 0);
        }
        let Server { mut proc, .. } = keel;
        proc.signal_and_wait(libc::SIGTERM);
        let keel = Server::start_with("keel", &common::keel_bin(), spec, &flags, &bins.etcdctl);
        assert_eq!(ctl(&keel, &["alarm", "list"]).stdout, listed, "--snapshot-count={snapshot_count}");
        let put = ctl(&keel, &["put", "k", "v"]);
        assert_eq!(user_stderr(&put.stderr), "Error: etcdserver: mvcc: database space exceeded");
        assert_eq!(ctl(&keel, &["alarm", "disarm"]).stdout, listed);
        assert_eq!(ctl(&keel, &["put", "k", "v"]).stdout, "OK\n");
    }
}
