//! Differential tests: the real etcdctl 3.5.1 runs the same commands against the real etcd
//! 3.5.1 and against Keel; stdout, the error lines of stderr and the exit code must be equal.
//! Member and cluster ids and terms are compared as they are: Keel derives them as etcd does.

mod common;

use jepsen::{etcdctl_input, user_stderr};

fn normalise(s: &str, pair: &common::Pair) -> String {
    s.replace(&pair.etcd.endpoint(), "<client-url>").replace(&pair.keel.endpoint(), "<client-url>")
}

#[test]
fn etcdctl_kv_commands_match_etcd() {
    let pair = common::start_pair();
    let script: &[&[&str]] = &[
        &["get", "foo"],
        &["get", "foo", "-w", "json"],
        &["put", "foo", "bar"],
        &["get", "foo"],
        &["get", "foo", "-w", "json"],
        &["put", "foo", "bar2", "--prev-kv"],
        &["get", "foo", "-w", "json"],
        &["get", "foo", "--rev=2", "-w", "json"],
        &["get", "foo", "--rev=1", "-w", "json"],
        &["get", "foo", "--rev=100"],
        &["put", "web1", "value1"],
        &["put", "web2", "value2"],
        &["put", "web3", "value3"],
        &["get", "web", "--prefix"],
        &["get", "web", "--prefix", "--keys-only"],
        &["get", "web", "--prefix", "--limit=2"],
        &["get", "web", "--prefix", "--limit=2", "-w", "json"],
        &["get", "web", "--prefix", "--count-only", "-w", "json"],
        &["get", "web", "--prefix", "--sort-by=MODIFY", "--order=DESCEND"],
        &["get", "web", "--prefix", "--sort-by=VALUE", "--order=ASCEND", "--limit=1"],
        &["get", "web1", "web3"],
        &["get", "--from-key", "web2"],
        &["get", "", "--prefix", "--keys-only"],
        &["put", "key", "v"],
        &["del", "key"],
        &["del", "key"],
        &["put", "k1", "a"],
        &["put", "k2", "b"],
        &["del", "k", "--prefix"],
        &["del", "web1", "--prev-kv"],
        &["del", "nothing-here", "-w", "json"],
        &["get", "missing"],
        &["get", "missing", "-w", "json"],
        &["put", "", "v"],
        &["get", ""],
        &["del", ""],
        &["put", "foo", "again"],
        &["get", "foo", "-w", "json"],
        &["get", "", "--from-key", "-w", "json"],
        &["member", "list"],
        &["member", "list", "-w", "json"],
    ];
    let with_input: Vec<(&[&str], &str)> = script.iter().map(|args| (*args, "")).collect();
    assert_same_output(&pair, &with_input);
}

/// Runs each command (with its standard input) against etcd and Keel; all must print the same.
fn assert_same_output(pair: &common::Pair, script: &[(&[&str], &str)]) {
    let mut mismatches = Vec::new();
    for (args, input) in script {
        let want = etcdctl_input(&pair.bins.etcdctl, &pair.etcd.endpoint(), args, input);
        let got = etcdctl_input(&pair.bins.etcdctl, &pair.keel.endpoint(), args, input);
        let want = (normalise(&want.stdout, pair), user_stderr(&want.stderr), want.code);
        let got = (normalise(&got.stdout, pair), user_stderr(&got.stderr), got.code);
        if want != got {
            mismatches.push(format!("etcdctl {args:?} <<< {input:?}\n  etcd: {want:?}\n  keel: {got:?}"));
        }
    }
    assert!(
        mismatches.is_empty(),
        "{} of {} commands differ:\n{}",
        mismatches.len(),
        script.len(),
        mismatches.join("\n")
    );
}

/// Txn (the seed's `txn --interactive` flows, SUCCESS and FAILURE), its bad inputs, and
/// compaction with the errors reads below it get.
#[test]
fn etcdctl_txn_and_compaction_match_etcd() {
    let pair = common::start_pair();
    let many_ops: String = (0..129).map(|i| format!("put k{i} v\n")).collect();
    let script: &[(&[&str], &str)] = &[
        (&["put", "key1", "1"], ""),
        (&["txn"], "mod(\"key1\") > \"0\"\n\nput key1 \"overwrote-key1\"\n\nput key1 \"created-key1\"\nput key2 \"some extra key\"\n\n"),
        (&["get", "key", "--prefix", "-w", "json"], ""),
        (&["txn"], "value(\"key1\") = \"nope\"\n\nput key1 x\n\nput key3 \"from failure\"\nget key1\ndel key2\n\n"),
        (&["txn", "-w", "json"], "version(\"key3\") = \"1\"\ncreate(\"key1\") > \"1\"\n\nget key3\nput key4 four\ndel key3\n\n\n"),
        (&["txn", "--interactive"], "mod(\"key4\") > \"0\"\n\nget key4\n\nput key4 other\n\n"),
        (&["txn"], "\nput dup a\nput dup b\n\n\n"),
        (&["txn"], "\nput dup a\ndel d\\0 e\n\n\n"),
        (&["txn"], &format!("\n{many_ops}\n\n")),
        (&["txn"], "value(\"missing\") = \"\"\n\nput a 1\n\nput b 2\n\n"),
        (&["put", "c", "1"], ""),
        (&["put", "c", "2"], ""),
        (&["put", "c", "3"], ""),
        (&["compaction", "5"], ""),
        (&["get", "c", "--rev=4"], ""),
        (&["get", "c", "--rev=5", "-w", "json"], ""),
        (&["compaction", "5"], ""),
        (&["compaction", "1000"], ""),
        (&["compaction", "--physical", "7"], ""),
        (&["get", "c", "-w", "json"], ""),
    ];
    assert_same_output(&pair, script);
}
