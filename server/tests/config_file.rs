//! `--config-file`, side by side with etcd 3.5.1: a member started from a YAML file serves on
//! the file's URLs under the file's name, the other flags are ignored, keys neither knows are
//! ignored, and a bad file stops both with an error (Keel's names the file).

mod common;

use jepsen::{etcdctl, free_port, provision, Proc};
use std::path::Path;
use std::time::Duration;

/// A config file for one member; the name, peer URL and token decide the ids, so etcd and
/// Keel given the same ones agree on them.
fn config_yaml(dir: &Path, client_port: u16, metrics_port: u16, peer_url: &str) -> String {
    let client = format!("http://127.0.0.1:{client_port}");
    format!(
        "# etcd.conf.yml layout\n\
         name: from-file\n\
         data-dir: {data}\n\
         listen-client-urls: {client}\n\
         advertise-client-urls: {client}\n\
         listen-peer-urls: {peer_url}\n\
         initial-advertise-peer-urls: {peer_url}\n\
         initial-cluster: from-file={peer_url}\n\
         initial-cluster-token: file-token\n\
         initial-cluster-state: new\n\
         heartbeat-interval: 100\n\
         election-timeout: 1000\n\
         snapshot-count: 10000\n\
         max-request-bytes: 1572864\n\
         auto-compaction-mode: periodic\n\
         auto-compaction-retention: \"1h\"\n\
         listen-metrics-urls: http://127.0.0.1:{metrics_port}\n\
         log-level: info\n\
         enable-v2: false\n\
         no-such-key-anywhere: 5\n\
         client-transport-security:\n  cert-file:\n  key-file:\n  client-cert-auth: false\n  auto-tls: false\n",
        data = dir.join("data").display(),
    )
}

/// Starts `program` with a config file plus flags that must be ignored; waits until it serves.
fn start_from_file(
    kind: &str,
    program: &Path,
    dir: &Path,
    peer_url: &str,
    etcdctl_bin: &Path,
) -> (Proc, u16, u16) {
    std::fs::create_dir_all(dir).unwrap();
    let (client_port, metrics_port, flag_port) = (free_port(), free_port(), free_port());
    let file = dir.join("etcd.conf.yml");
    std::fs::write(&file, config_yaml(dir, client_port, metrics_port, peer_url)).unwrap();
    let args = vec![
        format!("--config-file={}", file.display()),
        "--name=from-flag".to_string(),
        format!("--listen-client-urls=http://127.0.0.1:{flag_port}"),
        format!("--advertise-client-urls=http://127.0.0.1:{flag_port}"),
        "--initial-cluster-token=flag-token".to_string(),
    ];
    let mut proc = Proc::spawn(kind, program, &args, &dir.join("log"));
    proc.wait_listening(([127, 0, 0, 1], client_port).into(), Duration::from_secs(30));
    let endpoint = format!("http://127.0.0.1:{client_port}");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while etcdctl(etcdctl_bin, &endpoint, &["get", "probe"]).code != 0 {
        assert!(std::time::Instant::now() < deadline, "{kind} does not serve:\n{}", proc.log_text());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", flag_port)).is_err(),
        "{kind} listens on the flag's client URL"
    );
    (proc, client_port, metrics_port)
}

#[test]
fn config_file_sets_the_member_and_the_flags_are_ignored() {
    let bins = provision();
    let dir = tempfile::tempdir().unwrap();
    // Keel binds no peer port while alone, so both can be given the same peer URL (same ids).
    let peer = format!("http://127.0.0.1:{}", free_port());
    let (_etcd, etcd_port, etcd_metrics) =
        start_from_file("etcd", &bins.etcd, &dir.path().join("etcd"), &peer, &bins.etcdctl);
    let (keel, keel_port, keel_metrics) =
        start_from_file("keel", &common::keel_bin(), &dir.path().join("keel"), &peer, &bins.etcdctl);
    let member_list = |port: u16| {
        let out = etcdctl(&bins.etcdctl, &format!("http://127.0.0.1:{port}"), &["member", "list"]);
        assert_eq!(out.code, 0, "{out:?}");
        out.stdout.replace(&port.to_string(), "CLIENT")
    };
    // Same id (from the file's peer URL and token, not the flag's token), same name.
    let listed = member_list(keel_port);
    assert_eq!(listed, member_list(etcd_port));
    assert!(listed.contains(", from-file, "), "{listed}");
    // /metrics and /health on --listen-metrics-urls, as etcd serves them there.
    for (port, kind) in [(etcd_metrics, "etcd"), (keel_metrics, "keel")] {
        let addr = format!("127.0.0.1:{port}");
        let (code, health) = common::http_get(&addr, "/health");
        assert_eq!((code, health.as_str()), (200, "{\"health\":\"true\",\"reason\":\"\"}"), "{kind}");
        let (code, metrics) = common::http_get(&addr, "/metrics");
        assert_eq!(code, 200, "{kind}");
        assert!(metrics.contains("etcd_server_has_leader 1"), "{kind}: {metrics}");
    }
    let log = keel.log_text();
    assert!(
        log.contains("no-such-key-anywhere") && log.contains("enable-v2"),
        "ignored keys not named:\n{log}"
    );
}

/// Runs `program --config-file FILE` for a file that must be refused: its exit status and log.
fn refused(kind: &str, program: &Path, file: &Path, log: &Path) -> (std::process::ExitStatus, String) {
    let args =
        vec![format!("--config-file={}", file.display()), "--data-dir".to_string(), "unused".to_string()];
    let mut proc = Proc::spawn(kind, program, &args, log);
    let status = proc.wait_exit(Duration::from_secs(20));
    let status =
        status.unwrap_or_else(|| panic!("{kind} started with {}:\n{}", file.display(), proc.log_text()));
    (status, proc.log_text())
}

#[test]
fn bad_config_files_are_refused_like_etcd_refuses_them() {
    let bins = provision();
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("missing", None),
        ("bad-yaml", Some("name: [1, 2\n")),
        ("quoted-integer", Some("heartbeat-interval: \"100\"\n")),
        ("integer-retention", Some("auto-compaction-retention: 1\n")),
        ("number-name", Some("name: 123\n")),
        ("string-duration", Some("experimental-watch-progress-notify-interval: 10m\n")),
    ];
    for (case, text) in cases {
        let file = dir.path().join(format!("{case}.yml"));
        if let Some(text) = text {
            std::fs::write(&file, text).unwrap();
        }
        let cwd_etcd = dir.path().join(format!("{case}.etcd.log"));
        let (etcd_status, etcd_log) = refused("etcd", &bins.etcd, &file, &cwd_etcd);
        assert!(!etcd_status.success(), "{case}: etcd accepted it:\n{etcd_log}");
        let keel_log = dir.path().join(format!("{case}.keel.log"));
        let (keel_status, keel_log) = refused("keel", &common::keel_bin(), &file, &keel_log);
        assert_eq!(keel_status.code(), Some(1), "{case}: {keel_log}");
        let expected = format!("keel: config file {}: ", file.display());
        assert!(keel_log.starts_with(&expected), "{case}: {keel_log}");
    }
    // A file that asks for TLS: etcd would serve it; Keel refuses rather than serve plain HTTP.
    let file = dir.path().join("tls.yml");
    std::fs::write(&file, "client-transport-security:\n  cert-file: /etc/keel/server.crt\n").unwrap();
    let (status, log) = refused("keel", &common::keel_bin(), &file, &dir.path().join("tls.keel.log"));
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(log.contains("TLS is not supported"), "{log}");
}

#[test]
fn periodic_auto_compaction_compacts_on_the_leader() {
    let bins = provision();
    let dir = tempfile::tempdir().unwrap();
    let spec = common::spec(dir.path(), "keel", &format!("http://127.0.0.1:{}", free_port()));
    let endpoint = spec.client_url();
    let mut args = spec.args();
    args.extend([
        "--auto-compaction-mode=periodic".to_string(),
        "--auto-compaction-retention=1s".to_string(),
    ]);
    let mut proc = Proc::spawn("keel", &common::keel_bin(), &args, &dir.path().join("keel.log"));
    proc.wait_listening(spec.client_addr(), Duration::from_secs(30));
    let put = |k: &str| {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let out = etcdctl(&bins.etcdctl, &endpoint, &["put", k, "v"]);
            if out.code == 0 {
                return;
            }
            assert!(std::time::Instant::now() < deadline, "{out:?}\n{}", proc.log_text());
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    put("a"); // revision 2
    put("b"); // revision 3
              // Within about two retention periods, history older than a period is compacted away.
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let out = etcdctl(&bins.etcdctl, &endpoint, &["get", "a", "--rev=2"]);
        if out.code != 0 {
            assert!(out.stderr.contains("required revision has been compacted"), "{out:?}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "never compacted:\n{}", proc.log_text());
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(proc.log_text().contains("completed automatic compaction"));
}
