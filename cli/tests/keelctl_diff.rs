//! keelctl against etcdctl 3.5.1: each runs the same script against its own fresh etcd 3.5.1,
//! and stdout, error lines and exit codes must be equal (member and cluster ids, which differ
//! between the two servers, are normalised).

use jepsen::{etcdctl, provision, user_stderr, CmdOutput, MemberSpec, Server};
use std::process::Command;

fn keelctl(endpoint: &str, args: &[&str]) -> CmdOutput {
    let out = Command::new(env!("CARGO_BIN_EXE_keelctl"))
        .arg(format!("--endpoints={endpoint}"))
        .args(args)
        .output()
        .expect("run keelctl");
    CmdOutput {
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        code: out.status.code().unwrap_or(-1),
    }
}

fn etcd(dir: &std::path::Path, name: &str, bins: &jepsen::EtcdBins) -> Server {
    let spec = MemberSpec::local(name, dir.join(name), "etcd-cluster");
    Server::start("etcd", &bins.etcd, spec, &bins.etcdctl)
}

/// The decimal value of `"field":N` in a JSON line.
fn json_number(s: &str, field: &str) -> String {
    let pat = format!("\"{field}\":");
    let start = s.find(&pat).unwrap_or_else(|| panic!("{field} in {s}")) + pat.len();
    s[start..].chars().take_while(|c| c.is_ascii_digit()).collect()
}

#[test]
fn keelctl_prints_what_etcdctl_prints() {
    let bins = provision();
    let dir = tempfile::tempdir().unwrap();
    let a = etcd(dir.path(), "a", &bins);
    let b = etcd(dir.path(), "b", &bins);
    let ids = |out: &str| (json_number(out, "cluster_id"), json_number(out, "member_id"));
    let ids_a = ids(&etcdctl(&bins.etcdctl, &a.endpoint(), &["get", "x", "-w", "json"]).stdout);
    let ids_b = ids(&etcdctl(&bins.etcdctl, &b.endpoint(), &["get", "x", "-w", "json"]).stdout);
    let norm = |s: &str, (c, m): &(String, String)| {
        s.replace(c.as_str(), "<cluster>").replace(m.as_str(), "<member>")
    };
    let script: &[&[&str]] = &[
        &["put", "foo", "bar"],
        &["get", "foo"],
        &["get", "foo", "-w", "json"],
        &["put", "foo", "baz", "--prev-kv"],
        &["put", "foo", "qux", "--prev-kv", "-w", "json"],
        &["put", "web1", "value1"],
        &["put", "web2", "value2"],
        &["put", "web3", "value3"],
        &["get", "web", "--prefix"],
        &["get", "web", "--prefix", "--keys-only"],
        &["get", "web", "--prefix", "--print-value-only"],
        &["get", "web", "--prefix", "--limit=2", "-w", "json"],
        &["get", "web", "--prefix", "--count-only", "-w", "json"],
        &["get", "web", "--prefix", "--sort-by=MODIFY", "--order=DESCEND"],
        &["get", "web", "--prefix", "--order=ASCEND"],
        &["get", "web1", "web3"],
        &["get", "--from-key", "web2"],
        &["get", "", "--prefix", "--keys-only"],
        &["get", "foo", "--rev=2"],
        &["get", "foo", "--rev=100"],
        &["get", "foo", "--consistency=s"],
        &["del", "web1", "--prev-kv"],
        &["del", "web", "--prefix", "-w", "json"],
        &["del", "nothing"],
        &["get", "missing"],
        &["get", "missing", "-w", "json"],
        &["put", "", "v"],
        &["put", "k", "v", "--ignore-value"],
        &["put", "k", "--ignore-value", ""],
        &["put", "foo", "--ignore-value"],
        &["put", "foo", "v", "--lease=xyz"],
        &["get", "foo", "--count-only"],
        &["del", ""],
    ];
    let mut mismatches = Vec::new();
    for args in script {
        let want = etcdctl(&bins.etcdctl, &a.endpoint(), args);
        let got = keelctl(&b.endpoint(), args);
        let want = (norm(&want.stdout, &ids_a), user_stderr(&want.stderr), want.code);
        let got = (norm(&got.stdout, &ids_b), user_stderr(&got.stderr), got.code);
        if want != got {
            mismatches.push(format!("{args:?}\n  etcdctl: {want:?}\n  keelctl: {got:?}"));
        }
    }
    assert!(
        mismatches.is_empty(),
        "{} of {} differ:\n{}",
        mismatches.len(),
        script.len(),
        mismatches.join("\n")
    );
}
