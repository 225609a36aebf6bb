//! Leases through the real etcdctl 3.5.1, against etcd 3.5.1 and against Keel: grant, put
//! --lease, time-to-live, list, keep-alive, revoke (its keys go with it), expiry after the TTL,
//! and the errors for unknown leases. Lease ids differ between the servers (they embed the
//! start time), so each server's ids are replaced by placeholders before comparing.

mod common;

use jepsen::{etcdctl, user_stderr};
use std::time::{Duration, Instant};

/// etcd lists a lease's keys in Go map order (it varies from run to run); compare them sorted.
fn sort_attached_keys(s: &str) -> String {
    let Some(start) = s.find("attached keys([") else { return s.to_string() };
    let from = start + "attached keys([".len();
    let Some(len) = s[from..].find("])") else { return s.to_string() };
    let mut keys: Vec<&str> = s[from..from + len].split(' ').collect();
    keys.sort_unstable();
    format!("{}{}{}", &s[..from], keys.join(" "), &s[from + len..])
}

/// Runs `script` (where `{a}`/`{b}` stand for the ids of the first and second lease granted)
/// against one server; returns normalised (stdout, stderr, code) per command.
fn session(bins: &jepsen::EtcdBins, endpoint: &str) -> Vec<(String, String, i32)> {
    let script: &[&[&str]] = &[
        &["lease", "grant", "600"],
        &["lease", "grant", "1"],
        &["put", "--lease={a}", "la", "1"],
        &["put", "--lease={a}", "lb", "2"],
        &["put", "--lease={b}", "lc", "3"],
        &["lease", "timetolive", "{a}"],
        &["lease", "timetolive", "{a}", "--keys"],
        &["lease", "keep-alive", "--once", "{a}"],
        &["get", "l", "--prefix", "-w", "json"],
        &["lease", "revoke", "{a}"],
        &["get", "l", "--prefix"],
        &["lease", "timetolive", "{a}"],
        &["lease", "revoke", "{a}"],
        &["lease", "keep-alive", "--once", "1234"],
        &["put", "--lease=1234", "x", "y"],
        &["lease", "grant", "9000000001"],
    ];
    let mut ids: Vec<String> = Vec::new();
    let mut out = Vec::new();
    for args in script {
        let args: Vec<String> = args
            .iter()
            .map(|a| {
                let mut a = a.to_string();
                for (i, name) in ["{a}", "{b}"].iter().enumerate() {
                    if let Some(id) = ids.get(i) {
                        a = a.replace(name, id);
                    }
                }
                a
            })
            .collect();
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let r = etcdctl(&bins.etcdctl, endpoint, &argv);
        if argv[..2] == ["lease", "grant"] && r.code == 0 {
            ids.push(r.stdout.split_whitespace().nth(1).expect("lease id").to_string());
        }
        let mut norm = (format!("{args:?}\n{}", sort_attached_keys(&r.stdout)), user_stderr(&r.stderr));
        for (i, id) in ids.iter().enumerate() {
            let dec = i64::from_str_radix(id, 16).unwrap().to_string();
            let name = format!("<lease{i}>");
            norm.0 = norm.0.replace(id, &name).replace(&dec, &name);
            norm.1 = norm.1.replace(id, &name);
        }
        out.push((norm.0, norm.1, r.code));
    }
    // The 1 s lease (raised to the 2 s minimum) expires: its key goes, through the log.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let r = etcdctl(&bins.etcdctl, endpoint, &["get", "lc"]);
        if r.stdout.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "lease never expired on {endpoint}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let r = etcdctl(&bins.etcdctl, endpoint, &["lease", "timetolive", &ids[1]]);
    out.push((r.stdout.replace(&ids[1], "<lease1>"), user_stderr(&r.stderr), r.code));
    out
}

#[test]
fn etcdctl_lease_commands_match_etcd() {
    let pair = common::start_pair();
    let want = session(&pair.bins, &pair.etcd.endpoint());
    let got = session(&pair.bins, &pair.keel.endpoint());
    let mut mismatches = Vec::new();
    for (w, g) in want.iter().zip(&got) {
        if w != g {
            mismatches.push(format!("etcd: {w:?}\nkeel: {g:?}"));
        }
    }
    assert!(mismatches.is_empty(), "{} differ:\n{}", mismatches.len(), mismatches.join("\n"));
}
