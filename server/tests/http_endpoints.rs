//! etcd's plain-HTTP endpoints on the client port, against etcd 3.5.1: `/health` and
//! `/version` answer the same, and `/metrics` carries etcd's metric names, beside gRPC on the
//! same port.

mod common;

use common::http_get as get;

#[test]
fn health_version_and_metrics_match_etcd() {
    let pair = common::start_pair();
    let (etcd, keel) = (pair.etcd.endpoint(), pair.keel.endpoint());
    let (etcd, keel) = (etcd.trim_start_matches("http://"), keel.trim_start_matches("http://"));
    for path in ["/health", "/version"] {
        assert_eq!(get(keel, path), get(etcd, path), "{path}");
    }
    let (code, metrics) = get(keel, "/metrics");
    assert_eq!(code, 200);
    for name in ["etcd_server_has_leader 1", "etcd_server_is_leader 1", "etcd_mvcc_db_total_size_in_bytes"] {
        assert!(metrics.contains(name), "{name} missing from:\n{metrics}");
        let etcd_metrics = get(etcd, "/metrics").1;
        let metric = name.split_whitespace().next().unwrap();
        assert!(etcd_metrics.contains(metric), "etcd has no {metric}: the name must be etcd's");
    }
}

/// `name value` samples (labels kept in the name) of a Prometheus text page.
fn samples(page: &str) -> std::collections::BTreeMap<String, f64> {
    page.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| l.rsplit_once(' '))
        .filter_map(|(name, value)| Some((name.to_string(), value.parse().ok()?)))
        .collect()
}

/// Every metric family Keel prints is etcd's, with etcd's type; the important ones are there;
/// and the counters follow the writes.
#[test]
fn metrics_are_etcds_and_follow_writes() {
    let pair = common::start_pair();
    let (etcd, keel) = (pair.etcd.endpoint(), pair.keel.endpoint());
    let (etcd_addr, keel_addr) = (etcd.trim_start_matches("http://"), keel.trim_start_matches("http://"));
    let etcd_page = get(etcd_addr, "/metrics").1;
    let (code, before_page) = get(keel_addr, "/metrics");
    assert_eq!(code, 200);
    for line in before_page.lines().filter(|l| l.starts_with("# TYPE ")) {
        assert!(etcd_page.lines().any(|l| l == line), "etcd 3.5.1 has no `{line}`");
    }
    for name in [
        "etcd_server_has_leader",
        "etcd_server_is_leader",
        "etcd_server_leader_changes_seen_total",
        "etcd_server_proposals_committed_total",
        "etcd_server_proposals_applied_total",
        "etcd_server_proposals_pending",
        "etcd_server_proposals_failed_total",
        "etcd_disk_wal_fsync_duration_seconds",
        "etcd_disk_backend_commit_duration_seconds",
        "etcd_disk_wal_write_bytes_total",
        "etcd_mvcc_db_total_size_in_bytes",
        "etcd_mvcc_db_total_size_in_use_in_bytes",
        "etcd_debugging_mvcc_keys_total",
        "etcd_debugging_mvcc_current_revision",
        "etcd_debugging_mvcc_compact_revision",
        "etcd_server_id",
        "etcd_server_version",
    ] {
        assert!(before_page.contains(&format!("# TYPE {name} ")), "{name} missing from:\n{before_page}");
    }
    let before = samples(&before_page);
    assert_eq!(before["etcd_server_has_leader"], 1.0);
    assert_eq!(before["etcd_server_leader_changes_seen_total"], 1.0, "one election at start");
    assert_eq!(before["etcd_server_proposals_pending"], 0.0);
    // The same member id as etcd's (same peer URL and token), in etcd's format.
    let etcd_id =
        samples(&etcd_page).into_keys().find(|k| k.starts_with("etcd_server_id{")).expect("etcd's id");
    assert_eq!(before.get(&etcd_id), Some(&1.0), "{etcd_id} missing from Keel's page");

    for i in 0..5 {
        let out = jepsen::etcdctl(&pair.bins.etcdctl, &keel, &["put", &format!("k{i}"), "v"]);
        assert_eq!(out.code, 0, "{out:?}");
    }
    let out = jepsen::etcdctl(&pair.bins.etcdctl, &keel, &["del", "k0"]);
    assert_eq!(out.code, 0, "{out:?}");
    let out = jepsen::etcdctl(&pair.bins.etcdctl, &keel, &["compact", "3"]);
    assert_eq!(out.code, 0, "{out:?}");
    // The gauges are published once per batch of the node task: wait for them, with a deadline.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let after = loop {
        let after = samples(&get(keel_addr, "/metrics").1);
        if after["etcd_server_proposals_applied_total"] >= before["etcd_server_proposals_applied_total"] + 7.0
            || std::time::Instant::now() > deadline
        {
            break after;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let grew = |name: &str, by: f64| {
        assert!(after[name] >= before[name] + by, "{name}: {} -> {}", before[name], after[name]);
    };
    grew("etcd_server_proposals_applied_total", 7.0);
    grew("etcd_server_proposals_committed_total", 7.0);
    grew("etcd_disk_wal_fsync_duration_seconds_count", 7.0);
    grew("etcd_disk_wal_write_bytes_total", 7.0 * 20.0);
    assert_eq!(after["etcd_debugging_mvcc_keys_total"], 4.0);
    assert_eq!(after["etcd_debugging_mvcc_current_revision"], 7.0);
    assert_eq!(after["etcd_debugging_mvcc_compact_revision"], 3.0);
    assert_eq!(after["etcd_server_proposals_pending"], 0.0);
    assert_eq!(after["etcd_server_proposals_failed_total"], 0.0);
    let fsync_inf = after["etcd_disk_wal_fsync_duration_seconds_bucket{le=\"+Inf\"}"];
    assert_eq!(fsync_inf, after["etcd_disk_wal_fsync_duration_seconds_count"]);
    assert!(after["etcd_server_proposals_committed_total"] >= after["etcd_server_proposals_applied_total"]);
}
