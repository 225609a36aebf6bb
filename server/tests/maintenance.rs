//! Maintenance (Snapshot, Defragment, Hash, Status) and Auth with authentication never enabled,
//! through the real etcdctl 3.5.1 against the real etcd 3.5.1 and Keel side by side; and a new
//! cluster started from a snapshot file (`etcdctl snapshot save`, then restore, then serve),
//! compared with etcd's own save / `etcdutl snapshot restore` / serve.

mod common;

use jepsen::{etcdctl, etcdctl_input, free_port, user_stderr, CmdOutput, MemberSpec, Server};
use server::pb::etcdserverpb::maintenance_client::MaintenanceClient;
use server::pb::etcdserverpb::{HashRequest, SnapshotRequest};
use server::snapshot::{restore, RestoreOptions};
use std::path::Path;

/// Replaces the values etcd and Keel legitimately differ in (database sizes, Raft indexes,
/// HashKV's hash: each its own storage format and log) and the endpoints.
fn normalise(s: &str, pair: &common::Pair) -> String {
    let s = s.replace(&pair.etcd.endpoint(), "<client-url>").replace(&pair.keel.endpoint(), "<client-url>");
    let s = s.replace(&pair.etcd.spec.client_addr().to_string(), "<endpoint>");
    let s = s.replace(&pair.keel.spec.client_addr().to_string(), "<endpoint>");
    let mut out = String::new();
    for line in s.lines() {
        out.push_str(&normalise_line(line));
        out.push('\n');
    }
    out
}

fn normalise_line(line: &str) -> String {
    // JSON: "dbSize":20480 and friends.
    let mut line = line.to_string();
    for field in ["dbSize", "dbSizeInUse", "raftIndex", "raftAppliedIndex", "hash"] {
        let pat = format!("\"{field}\":");
        let mut from = 0;
        while let Some(at) = line[from..].find(&pat).map(|i| i + from + pat.len()) {
            let end = line[at..].find(|c: char| !c.is_ascii_digit()).map_or(line.len(), |i| i + at);
            line.replace_range(at..end, "N");
            from = at;
        }
    }
    // Table rows and simple lines of `endpoint status`: DB SIZE (column 4), RAFT INDEX and
    // RAFT APPLIED INDEX (8, 9); `endpoint hash`: the hash (2).
    let sep = if line.starts_with('|') { '|' } else { ',' };
    let cells: Vec<&str> = line.split(sep).collect();
    let data_row = line.contains("<client-url>") && !line.starts_with('[');
    if !data_row {
        return line;
    }
    let offset = usize::from(sep == '|');
    let columns: &[usize] = if cells.len() >= 10 { &[3, 7, 8] } else { &[1] };
    let mut cells: Vec<String> = cells.into_iter().map(String::from).collect();
    for &c in columns {
        if let Some(cell) = cells.get_mut(c + offset) {
            *cell = " N ".to_string();
        }
    }
    cells.join(&sep.to_string())
}

fn same(want: &CmdOutput, got: &CmdOutput, pair: &common::Pair) -> Option<String> {
    let want = (normalise(&want.stdout, pair), user_stderr(&want.stderr), want.code);
    let got = (normalise(&got.stdout, pair), user_stderr(&got.stderr), got.code);
    (want != got).then(|| format!("  etcd: {want:?}\n  keel: {got:?}"))
}

#[test]
fn auth_and_maintenance_commands_match_etcd() {
    let pair = common::start_pair();
    let script: &[(&[&str], &str)] = &[
        (&["put", "a", "1"], ""),
        (&["put", "b", "2"], ""),
        (&["auth", "status"], ""),
        (&["auth", "status", "-w", "json"], ""),
        (&["user", "list"], ""),
        (&["user", "list", "-w", "json"], ""),
        (&["role", "list"], ""),
        (&["role", "list", "-w", "json"], ""),
        (&["user", "get", "root"], ""),
        (&["user", "get", "u1", "--detail"], ""),
        (&["role", "get", "root"], ""),
        (&["user", "delete", "u1"], ""),
        (&["role", "delete", "r1"], ""),
        (&["user", "grant-role", "u1", "r1"], ""),
        (&["user", "revoke-role", "u1", "r1"], ""),
        (&["role", "grant-permission", "r1", "read", "foo"], ""),
        (&["role", "revoke-permission", "r1", "foo"], ""),
        (&["user", "passwd", "u1", "--interactive=false"], "pw\n"),
        (&["user", "add", ":x"], ""),
        (&["role", "add"], ""),
        (&["auth", "enable"], ""),
        (&["auth", "disable"], ""),
        // etcd's client takes "authentication is not enabled" as "no token needed".
        (&["--user=u1:pw", "get", "a"], ""),
        (&["endpoint", "status"], ""),
        (&["endpoint", "status", "-w", "table"], ""),
        (&["endpoint", "status", "-w", "json"], ""),
        (&["endpoint", "hash"], ""),
        (&["endpoint", "hash", "-w", "table"], ""),
        (&["defrag"], ""),
        (&["get", "", "--prefix", "-w", "json"], ""),
    ];
    let mut mismatches = Vec::new();
    for (args, input) in script {
        let want = etcdctl_input(&pair.bins.etcdctl, &pair.etcd.endpoint(), args, input);
        let got = etcdctl_input(&pair.bins.etcdctl, &pair.keel.endpoint(), args, input);
        if let Some(diff) = same(&want, &got, &pair) {
            mismatches.push(format!("etcdctl {args:?}\n{diff}"));
        }
    }
    assert!(mismatches.is_empty(), "{} commands differ:\n{}", mismatches.len(), mismatches.join("\n"));
}

/// etcd's `endpoint status` reports its database file's size and the part of it in use; Keel's
/// are its image file's.
#[test]
fn status_reports_the_image_file() {
    let bins = jepsen::provision();
    let dir = tempfile::tempdir().unwrap();
    let keel = common::start_keel(dir.path(), &bins);
    let out = etcdctl(&bins.etcdctl, &keel.endpoint(), &["endpoint", "status", "-w", "json"]);
    assert_eq!(out.code, 0, "{out:?}");
    let number = |field: &str| -> u64 {
        let at = out.stdout.find(&format!("\"{field}\":")).unwrap() + field.len() + 3;
        out.stdout[at..].split(|c: char| !c.is_ascii_digit()).next().unwrap().parse().unwrap()
    };
    let file = std::fs::metadata(keel.spec.data_dir.join("member/snap/db")).unwrap().len();
    assert_eq!(number("dbSize"), file);
    let in_use = number("dbSizeInUse");
    assert!(in_use > 0 && in_use <= file && in_use.is_multiple_of(4096), "in use {in_use} of {file}");
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

/// Maintenance.Hash: stable while nothing changes, changed by a write.
#[test]
fn hash_covers_the_whole_state() {
    let bins = jepsen::provision();
    let dir = tempfile::tempdir().unwrap();
    let keel = common::start_keel(dir.path(), &bins);
    let hash = || {
        runtime().block_on(async {
            let mut c = MaintenanceClient::connect(keel.endpoint()).await.unwrap();
            c.hash(HashRequest {}).await.unwrap().into_inner()
        })
    };
    let h1 = hash();
    assert_eq!(hash().hash, h1.hash);
    assert_eq!(etcdctl(&bins.etcdctl, &keel.endpoint(), &["put", "k", "v"]).code, 0);
    let h2 = hash();
    assert_ne!(h2.hash, h1.hash);
    assert_eq!(h2.header.unwrap().revision, h1.header.unwrap().revision + 1);
}

/// Puts enough data that the snapshot takes several 32 KiB messages.
fn load(bins: &jepsen::EtcdBins, server: &Server) {
    let value = "v".repeat(1000);
    for i in 0..60 {
        let out = etcdctl(&bins.etcdctl, &server.endpoint(), &["put", &format!("key{i:03}"), &value]);
        assert_eq!(out.code, 0, "{out:?}");
    }
    for args in [
        &["put", "key000", "again"][..],
        &["del", "key001"],
        &["compaction", "5"],
        &["lease", "grant", "600"],
    ] {
        let out = etcdctl(&bins.etcdctl, &server.endpoint(), args);
        assert_eq!(out.code, 0, "{args:?}: {out:?}");
    }
}

fn restored_spec(dir: &Path, peer_url: &str) -> MemberSpec {
    MemberSpec {
        name: "restored".to_string(),
        data_dir: dir.to_path_buf(),
        client_port: free_port(),
        peer_url: peer_url.to_string(),
        token: "restored-token".to_string(),
    }
}

/// `etcdctl snapshot save` against Keel prints what it prints for etcd and writes a file with
/// etcd's trailing SHA-256; restored into a new data directory (new name, member, cluster), a
/// Keel started on it serves the same keys at the same revisions as etcd restored from its own
/// snapshot with etcdutl does.
#[test]
fn snapshot_save_restore_serve_matches_etcd() {
    let pair = common::start_pair();
    let bins = &pair.bins;
    load(bins, &pair.etcd);
    load(bins, &pair.keel);

    let files = pair.dir.path().join("files");
    std::fs::create_dir_all(&files).unwrap();
    let (etcd_file, keel_file) = (files.join("etcd.db"), files.join("keel.db"));
    let save = |server: &Server, file: &Path| {
        let out = etcdctl(&bins.etcdctl, &server.endpoint(), &["snapshot", "save", file.to_str().unwrap()]);
        (out.stdout.replace(file.to_str().unwrap(), "<file>"), out.code)
    };
    let want = save(&pair.etcd, &etcd_file);
    let got = save(&pair.keel, &keel_file);
    assert_eq!(got, want);
    assert_eq!(want, ("Snapshot saved at <file>\n".to_string(), 0));
    let bytes = std::fs::read(&keel_file).unwrap();
    assert_eq!(bytes.len() % 512, 32, "etcd's layout: a multiple of 512 bytes, then the digest");
    assert!(bytes.len() > server::snapshot::CHUNK_BYTES, "several chunks: {}", bytes.len());
    {
        use sha2::Digest as _;
        let body = bytes.len() - 32;
        assert_eq!(&sha2::Sha256::digest(&bytes[..body])[..], &bytes[body..]);
    }

    // Both restored with the same name, peer URL and token: the same new member and cluster ids.
    let peer = format!("http://127.0.0.1:{}", free_port());
    let etcd_dir = pair.dir.path().join("etcd-restored");
    let keel_dir = pair.dir.path().join("keel-restored");
    let etcd_spec = restored_spec(&etcd_dir, &peer);
    let keel_spec = restored_spec(&keel_dir, &peer);
    let flags = |spec: &MemberSpec| {
        vec![
            format!("--data-dir={}", spec.data_dir.display()),
            format!("--name={}", spec.name),
            format!("--initial-cluster={}={}", spec.name, spec.peer_url),
            format!("--initial-cluster-token={}", spec.token),
            format!("--initial-advertise-peer-urls={}", spec.peer_url),
        ]
    };
    let out = std::process::Command::new(&bins.etcdutl)
        .arg("snapshot")
        .arg("restore")
        .arg(&etcd_file)
        .args(flags(&etcd_spec))
        .output()
        .unwrap();
    assert!(out.status.success(), "etcdutl: {}", String::from_utf8_lossy(&out.stderr));
    let opts = RestoreOptions {
        data_dir: keel_dir.clone(),
        wal_dir: None,
        name: keel_spec.name.clone(),
        initial_cluster: format!("{}={}", keel_spec.name, keel_spec.peer_url),
        initial_cluster_token: keel_spec.token.clone(),
        initial_advertise_peer_urls: keel_spec.peer_url.clone(),
        skip_hash_check: false,
    };
    restore(&keel_file, &opts).expect("restore");
    // Restoring again into the now non-empty directory is refused, in etcdutl's words.
    let again = restore(&keel_file, &opts).unwrap_err().to_string();
    assert_eq!(
        again,
        format!("data-dir {:?} not empty or could not be read", keel_dir.display().to_string())
    );

    // etcd first: Keel binds no peer port while alone, so they can share the peer URL.
    let etcd = Server::start("etcd", &bins.etcd, etcd_spec, &bins.etcdctl);
    let keel = Server::start("keel", &common::keel_bin(), keel_spec, &bins.etcdctl);
    let script: &[&[&str]] = &[
        &["get", "", "--prefix", "-w", "json"],
        &["get", "key000", "--rev=4", "-w", "json"],
        &["get", "key002", "--rev=3"],
        &["member", "list"],
        &["lease", "list"],
        &["put", "new", "x", "-w", "json"],
        &["get", "new", "-w", "json"],
    ];
    let mut mismatches = Vec::new();
    for args in script {
        let want = etcdctl(&bins.etcdctl, &etcd.endpoint(), args);
        let got = etcdctl(&bins.etcdctl, &keel.endpoint(), args);
        let clean = |o: &CmdOutput| {
            let s =
                o.stdout.replace(&etcd.endpoint(), "<client-url>").replace(&keel.endpoint(), "<client-url>");
            // Lease ids are drawn from each server's start time.
            let s = if args[0] == "lease" { s.lines().next().unwrap_or("").to_string() } else { s };
            (s, user_stderr(&o.stderr), o.code)
        };
        if clean(&want) != clean(&got) {
            mismatches.push(format!(
                "etcdctl {args:?}\n  etcd: {:?}\n  keel: {:?}",
                clean(&want),
                clean(&got)
            ));
        }
    }
    assert!(mismatches.is_empty(), "{} commands differ:\n{}", mismatches.len(), mismatches.join("\n"));
}

/// The snapshot file's integrity checks, in etcdutl's words.
#[test]
fn restore_checks_the_digest_like_etcdutl() {
    let bins = jepsen::provision();
    let dir = tempfile::tempdir().unwrap();
    let keel = common::start_keel(&dir.path().join("keel"), &bins);
    let file = dir.path().join("snap.db");
    let out = etcdctl(&bins.etcdctl, &keel.endpoint(), &["snapshot", "save", file.to_str().unwrap()]);
    assert_eq!(out.code, 0, "{out:?}");
    let bytes = std::fs::read(&file).unwrap();
    let opts = |name: &str, skip: bool| RestoreOptions {
        data_dir: dir.path().join(name),
        wal_dir: None,
        name: "default".into(),
        initial_cluster: "default=http://localhost:2380".into(),
        initial_cluster_token: "etcd-cluster".into(),
        initial_advertise_peer_urls: "http://localhost:2380".into(),
        skip_hash_check: skip,
    };
    let short = dir.path().join("short.db");
    std::fs::write(&short, &bytes[..bytes.len() - 1]).unwrap();
    let err = restore(&short, &opts("a", false)).unwrap_err().to_string();
    assert_eq!(err, "snapshot missing hash but --skip-hash-check=false");
    let flipped = dir.path().join("flipped.db");
    let mut damaged = bytes.clone();
    damaged[40] ^= 1;
    std::fs::write(&flipped, &damaged).unwrap();
    let err = restore(&flipped, &opts("b", false)).unwrap_err().to_string();
    assert!(err.starts_with("expected sha256 [") && err.contains("], got ["), "{err}");
    // etcd's own file is not a Keel snapshot.
    let mut etcd_like = vec![0u8; 512];
    etcd_like.extend_from_slice(&[0u8; 32]);
    let other = dir.path().join("other.db");
    std::fs::write(&other, &etcd_like).unwrap();
    let err = restore(&other, &opts("c", true)).unwrap_err().to_string();
    assert!(err.contains("not a Keel snapshot"), "{err}");
    restore(&file, &opts("d", false)).expect("the intact file restores");
}

/// A snapshot streamed through the Rust client: 32 KiB chunks, `remaining_bytes` counting
/// down to 0, and the digest last.
#[test]
fn snapshot_stream_is_chunked() {
    let bins = jepsen::provision();
    let dir = tempfile::tempdir().unwrap();
    let keel = common::start_keel(dir.path(), &bins);
    load(&bins, &keel);
    let messages = runtime().block_on(async {
        let mut c = MaintenanceClient::connect(keel.endpoint()).await.unwrap();
        let mut stream = c.snapshot(SnapshotRequest {}).await.unwrap().into_inner();
        let mut out = Vec::new();
        while let Some(m) = stream.message().await.unwrap() {
            out.push((m.remaining_bytes, m.blob.len()));
        }
        out
    });
    let (last, chunks) = messages.split_last().unwrap();
    assert_eq!(*last, (0, 32));
    assert!(chunks.len() >= 2);
    let total: usize = chunks.iter().map(|c| c.1).sum();
    let mut remaining = total as u64;
    for (i, &(r, len)) in chunks.iter().enumerate() {
        assert!(len == server::snapshot::CHUNK_BYTES || i + 1 == chunks.len(), "chunk {i}: {len}");
        remaining -= len as u64;
        assert_eq!(r, remaining);
    }
}

/// `endpoint status`'s DB SIZE in bytes.
fn db_size(bins: &jepsen::EtcdBins, server: &Server) -> u64 {
    let out = etcdctl(&bins.etcdctl, &server.endpoint(), &["endpoint", "status", "-w", "json"]);
    assert_eq!(out.code, 0, "{out:?}");
    let at = out.stdout.find("\"dbSize\":").unwrap() + "\"dbSize\":".len();
    out.stdout[at..].split(|c: char| !c.is_ascii_digit()).next().unwrap().parse().unwrap()
}

/// The script of the defrag test: big values put, deleted and compacted away, then `etcdctl
/// defrag`. Returns DB SIZE with the values in, before the defrag, and after it.
fn fill_delete_compact_defrag(bins: &jepsen::EtcdBins, server: &Server) -> (u64, u64, u64) {
    fill_delete_compact_defrag_steps(bins, server, true)
}

/// [`fill_delete_compact_defrag`], with the last defrag left to the caller when `defrag` is
/// false (the third figure is then the size before it).
fn fill_delete_compact_defrag_steps(
    bins: &jepsen::EtcdBins,
    server: &Server,
    defrag: bool,
) -> (u64, u64, u64) {
    use server::pb::etcdserverpb::kv_client::KvClient;
    use server::pb::etcdserverpb::PutRequest;
    let keys = 1500u32;
    let revision = runtime().block_on(async {
        let mut c = KvClient::connect(server.endpoint()).await.unwrap();
        let mut revision = 0;
        for i in 0..keys {
            let put = PutRequest {
                key: format!("big/{i:05}").into_bytes().into(),
                value: vec![b'a' + (i % 26) as u8; 10_000].into(),
                ..Default::default()
            };
            revision = c.put(put).await.unwrap().into_inner().header.unwrap().revision;
        }
        revision
    });
    // A defrag also makes Keel's image take in everything so far, for a fair "full" figure.
    assert_eq!(etcdctl(&bins.etcdctl, &server.endpoint(), &["defrag"]).code, 0);
    let full = db_size(bins, server);
    let out = etcdctl(&bins.etcdctl, &server.endpoint(), &["del", "big/", "--prefix"]);
    assert_eq!(out.stdout.trim(), keys.to_string(), "{out:?}");
    let out = etcdctl(&bins.etcdctl, &server.endpoint(), &["compaction", &(revision + 1).to_string()]);
    assert_eq!(out.code, 0, "{out:?}");
    let before = db_size(bins, server);
    if !defrag {
        return (full, before, before);
    }
    let out = etcdctl(&bins.etcdctl, &server.endpoint(), &["defrag"]);
    assert_eq!(out.code, 0, "{out:?}");
    (full, before, db_size(bins, server))
}

/// Deleting and compacting away most of the data, then `etcdctl defrag`, shrinks the database
/// file (DB SIZE) on etcd and on Keel alike.
#[test]
fn defrag_after_delete_and_compaction_shrinks_the_file_like_etcd() {
    let pair = common::start_pair();
    let etcd = fill_delete_compact_defrag(&pair.bins, &pair.etcd);
    let keel = fill_delete_compact_defrag(&pair.bins, &pair.keel);
    eprintln!("DB SIZE (full, before defrag, after defrag): etcd {etcd:?}, keel {keel:?}");
    assert!(etcd.2 * 5 < etcd.0, "etcd {etcd:?}");
    assert!(keel.0 > 10_000_000, "keel {keel:?}");
    assert!(keel.2 * 20 < keel.0, "keel {keel:?}");
    // Writes still work on the shrunk file.
    assert_eq!(etcdctl(&pair.bins.etcdctl, &pair.keel.endpoint(), &["put", "after", "defrag"]).code, 0);
    let out = etcdctl(&pair.bins.etcdctl, &pair.keel.endpoint(), &["get", "after", "--print-value-only"]);
    assert_eq!(out.stdout.trim(), "defrag");
}

/// A defrag shrinks the file in steps while writes go on: a writer keeps putting (with image
/// saves every 50 entries, so saves and shrink steps interleave) before, during and after
/// `etcdctl defrag`; no put fails, every acknowledged one is there afterwards, and the file
/// shrank.
#[test]
fn writes_go_on_while_the_file_shrinks() {
    use server::pb::etcdserverpb::kv_client::KvClient;
    use server::pb::etcdserverpb::{PutRequest, RangeRequest};
    use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
    let bins = jepsen::provision();
    let dir = tempfile::tempdir().unwrap();
    let peer = format!("http://127.0.0.1:{}", free_port());
    let spec = common::spec(&dir.path().join("keel"), "defrag", &peer);
    let keel = Server::start_with(
        "keel",
        &common::keel_bin(),
        spec,
        &["--snapshot-count=50".to_string()],
        &bins.etcdctl,
    );
    let (_, before, _) = fill_delete_compact_defrag_steps(&bins, &keel, false);
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let progress = std::sync::Arc::new(AtomicU32::new(0));
    let writer = {
        let (endpoint, stop, progress) = (keel.endpoint(), stop.clone(), progress.clone());
        std::thread::spawn(move || {
            runtime().block_on(async move {
                let mut c = KvClient::connect(endpoint).await.unwrap();
                let mut acked = 0u32;
                while !stop.load(Ordering::Relaxed) || acked < 200 {
                    let put = PutRequest {
                        key: format!("live/{acked:06}").into_bytes().into(),
                        value: vec![b'v'; 4_000].into(),
                        ..Default::default()
                    };
                    c.put(put).await.unwrap_or_else(|e| panic!("put {acked} during the defrag: {e}"));
                    acked += 1;
                    progress.store(acked, Ordering::Relaxed);
                }
                acked
            })
        })
    };
    while progress.load(Ordering::Relaxed) < 20 {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let started = progress.load(Ordering::Relaxed);
    let out = etcdctl(&bins.etcdctl, &keel.endpoint(), &["defrag"]);
    assert_eq!(out.code, 0, "{out:?}");
    let during = progress.load(Ordering::Relaxed) - started;
    stop.store(true, Ordering::Relaxed);
    let acked = writer.join().unwrap();
    let count = runtime().block_on(async {
        let mut c = KvClient::connect(keel.endpoint()).await.unwrap();
        let all = RangeRequest {
            key: "live/".into(),
            range_end: "live0".into(),
            count_only: true,
            ..Default::default()
        };
        c.range(all).await.unwrap().into_inner().count
    });
    assert_eq!(count, i64::from(acked), "every acknowledged put is there");
    let after = db_size(&bins, &keel);
    eprintln!(
        "{acked} puts, {during} of them acknowledged while the defrag ran; DB SIZE {before} -> {after}"
    );
    assert!(after * 2 < before, "the file shrank: {before} -> {after}");
}
