//! `etcdctl lock` and `etcdctl elect` (etcdctl's client-side recipes over KV, leases and
//! watch) against etcd 3.5.1 and Keel: the second caller blocks until the first lets go, then
//! gets the lock (or leadership), and an observer sees the leaders in order.

mod common;

use jepsen::Proc;
use std::path::Path;
use std::time::{Duration, Instant};

fn spawn(bins: &jepsen::EtcdBins, endpoint: &str, args: &[&str], log: &Path) -> Proc {
    let mut all = vec![format!("--endpoints={endpoint}")];
    all.extend(args.iter().map(|a| a.to_string()));
    Proc::spawn("etcdctl", &bins.etcdctl, &all, log)
}

fn user_lines(p: &Proc) -> Vec<String> {
    p.log_text().lines().filter(|l| !l.starts_with("{\"level\"")).map(String::from).collect()
}

fn wait_lines(p: &Proc, n: usize, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while user_lines(p).len() < n {
        assert!(Instant::now() < deadline, "{what}: expected {n} lines, got {:?}", user_lines(p));
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Replaces lease ids (the hex after `name/`) so that outputs compare across servers.
fn normalise(lines: &[String]) -> Vec<String> {
    lines
        .iter()
        .map(|l| match l.split_once('/') {
            // Keys carry the lease id as `%x`: up to 16 hex digits, leading zeros dropped.
            Some((name, id)) if (1..=16).contains(&id.len()) && id.chars().all(|c| c.is_ascii_hexdigit()) => {
                format!("{name}/<lease>")
            }
            _ => l.clone(),
        })
        .collect()
}

fn session(bins: &jepsen::EtcdBins, endpoint: &str, dir: &Path) -> Vec<Vec<String>> {
    // Lock: the holder prints its key and holds; the second caller must wait for it.
    let mut holder = spawn(bins, endpoint, &["lock", "L"], &dir.join("holder.log"));
    wait_lines(&holder, 1, "lock holder");
    let waiter = spawn(bins, endpoint, &["lock", "L", "echo", "acquired"], &dir.join("waiter.log"));
    // Absence of progress can only be observed over time: the waiter must still be blocked.
    std::thread::sleep(Duration::from_millis(700));
    assert!(user_lines(&waiter).is_empty(), "the second locker did not wait: {:?}", user_lines(&waiter));
    holder.signal_and_wait(libc::SIGINT); // etcdctl unlocks on interrupt
    wait_lines(&waiter, 1, "lock waiter");
    let mut waiter = waiter;
    waiter.wait_exit(Duration::from_secs(10)).expect("the waiter ran its command and exited");

    // Election: p1 leads; p2 waits; the observer sees p1, then p2 once p1 resigns.
    let mut p1 = spawn(bins, endpoint, &["elect", "E", "p1"], &dir.join("p1.log"));
    wait_lines(&p1, 2, "first candidate");
    let observer = spawn(bins, endpoint, &["elect", "-l", "E"], &dir.join("observer.log"));
    wait_lines(&observer, 2, "observer");
    let mut p2 = spawn(bins, endpoint, &["elect", "E", "p2"], &dir.join("p2.log"));
    std::thread::sleep(Duration::from_millis(700));
    assert!(user_lines(&p2).is_empty(), "the second candidate did not wait: {:?}", user_lines(&p2));
    p1.signal_and_wait(libc::SIGINT);
    wait_lines(&p2, 2, "second candidate");
    wait_lines(&observer, 4, "observer after the change");
    let mut observer = observer;
    let out = vec![
        normalise(&user_lines(&holder)),
        normalise(&user_lines(&waiter)),
        normalise(&user_lines(&p1)),
        normalise(&user_lines(&p2)),
        normalise(&user_lines(&observer)),
    ];
    p2.signal_and_wait(libc::SIGINT);
    observer.signal_and_wait(libc::SIGKILL);
    out
}

#[test]
fn etcdctl_lock_and_elect_match_etcd() {
    let pair = common::start_pair();
    let (de, dk) = (pair.dir.path().join("etcd-session"), pair.dir.path().join("keel-session"));
    std::fs::create_dir_all(&de).unwrap();
    std::fs::create_dir_all(&dk).unwrap();
    let want = session(&pair.bins, &pair.etcd.endpoint(), &de);
    let got = session(&pair.bins, &pair.keel.endpoint(), &dk);
    assert_eq!(want, got);
}
