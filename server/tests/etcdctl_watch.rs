//! Watch through the real etcdctl 3.5.1, against etcd 3.5.1 and against Keel: live events (one
//! revision's events together, prev_kv, deletes), watches from a past revision, and a watch from
//! a compacted revision. The watchers' output must be equal.

mod common;

use jepsen::{etcdctl, etcdctl_input, Proc};
use std::path::Path;
use std::time::{Duration, Instant};

fn user_lines(s: &str) -> String {
    s.lines().filter(|l| !l.starts_with("{\"level\"")).collect::<Vec<_>>().join("\n")
}

/// Starts `etcdctl watch ...` against `endpoint`, its output in `log`.
fn watcher(bins: &jepsen::EtcdBins, endpoint: &str, args: &[&str], log: &Path) -> Proc {
    let mut all = vec![format!("--endpoints={endpoint}"), "watch".to_string()];
    all.extend(args.iter().map(|a| a.to_string()));
    Proc::spawn("etcdctl watch", &bins.etcdctl, &all, log)
}

/// Waits until the watcher printed `marker` (or exited), then stops it; returns its output.
fn finish(mut p: Proc, marker: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !p.log_text().contains(marker) && Instant::now() < deadline {
        if p.wait_exit(Duration::from_millis(20)).is_some() {
            return user_lines(&p.log_text());
        }
    }
    assert!(p.log_text().contains(marker), "watcher never printed {marker:?}: {}", p.log_text());
    p.signal_and_wait(libc::SIGKILL);
    user_lines(&p.log_text())
}

fn workload(bins: &jepsen::EtcdBins, endpoint: &str) {
    for args in [&["put", "w1", "a"][..], &["put", "w2", "b"], &["put", "w1", "a2"], &["del", "w1"]] {
        assert_eq!(etcdctl(&bins.etcdctl, endpoint, args).code, 0);
    }
    let txn = etcdctl_input(&bins.etcdctl, endpoint, &["txn"], "\nput w3 c\nput w4 d\ndel w2\n\n\n");
    assert_eq!(txn.code, 0, "{txn:?}");
    assert_eq!(etcdctl(&bins.etcdctl, endpoint, &["put", "w-end", "done"]).code, 0);
}

#[test]
fn etcdctl_watch_matches_etcd() {
    let pair = common::start_pair();
    let dir = pair.dir.path();
    let mut outputs: Vec<Vec<String>> = Vec::new();
    for (name, server) in [("etcd", &pair.etcd), ("keel", &pair.keel)] {
        let ep = server.endpoint();
        // Watchers start at the next revision, so their output does not depend on whether they
        // registered before the workload began (live) or after (caught up from history).
        let head = etcdctl(&pair.bins.etcdctl, &ep, &["get", "x", "-w", "json"]).stdout;
        let rev: i64 = head
            .split("\"revision\":")
            .nth(1)
            .unwrap()
            .split(|c: char| !c.is_ascii_digit())
            .next()
            .unwrap()
            .parse()
            .unwrap();
        let from = format!("--rev={}", rev + 1);
        let live = watcher(&pair.bins, &ep, &["w", "--prefix", &from], &dir.join(format!("{name}-live.log")));
        let prev =
            watcher(&pair.bins, &ep, &["w1", "--prev-kv", &from], &dir.join(format!("{name}-prev.log")));
        let json =
            watcher(&pair.bins, &ep, &["w3", "-w", "json", &from], &dir.join(format!("{name}-json.log")));
        workload(&pair.bins, &ep);
        let mut out = vec![finish(live, "w-end"), finish(prev, "DELETE"), finish(json, "\"Events\"")];
        let history =
            watcher(&pair.bins, &ep, &["w", "--prefix", "--rev=3"], &dir.join(format!("{name}-hist.log")));
        out.push(finish(history, "w-end"));
        assert!(etcdctl(&pair.bins.etcdctl, &ep, &["compaction", "5"]).code == 0);
        let compacted =
            watcher(&pair.bins, &ep, &["w", "--prefix", "--rev=2"], &dir.join(format!("{name}-comp.log")));
        out.push(finish(compacted, "compacted"));
        outputs.push(out);
    }
    let normalise = |s: &str| s.replace(&pair.etcd.endpoint(), "<ep>").replace(&pair.keel.endpoint(), "<ep>");
    for (i, (want, got)) in outputs[0].iter().zip(&outputs[1]).enumerate() {
        assert_eq!(normalise(want), normalise(got), "watch session {i} differs");
    }
}
