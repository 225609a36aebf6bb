//! A three-member Keel cluster of real processes, driven by the real etcdctl 3.5.1: a leader
//! is elected, writes through any member are read through any other, killing the leader
//! elects a new one and writes continue, and a restarted member catches up. No acknowledged
//! write is lost along the way.

mod common;

use jepsen::{etcdctl, free_port, provision, Proc};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

struct Member {
    name: String,
    client: u16,
    peer: u16,
    proc: Option<Proc>,
}

fn args(m: &Member, cluster: &str, dir: &std::path::Path) -> Vec<String> {
    let client = format!("http://127.0.0.1:{}", m.client);
    let peer = format!("http://127.0.0.1:{}", m.peer);
    vec![
        format!("--name={}", m.name),
        format!("--data-dir={}", dir.join(&m.name).display()),
        format!("--listen-client-urls={client}"),
        format!("--advertise-client-urls={client}"),
        format!("--listen-peer-urls={peer}"),
        format!("--initial-advertise-peer-urls={peer}"),
        format!("--initial-cluster={cluster}"),
        "--initial-cluster-token=keel-test".to_string(),
        "--initial-cluster-state=new".to_string(),
    ]
}

fn start(m: &mut Member, cluster: &str, dir: &std::path::Path) {
    start_with(m, cluster, dir, &[]);
}

/// Starts a member with flags beyond the common ones.
fn start_with(m: &mut Member, cluster: &str, dir: &std::path::Path, extra: &[&str]) {
    let log = dir.join(format!("{}-{}.log", m.name, Instant::now().elapsed().as_nanos()));
    let mut a = args(m, cluster, dir);
    a.extend(extra.iter().map(|x| x.to_string()));
    LOGS.lock().unwrap_or_else(|e| e.into_inner()).push(log.clone());
    let mut p = Proc::spawn(&m.name, &common::keel_bin(), &a, &log);
    p.wait_listening(SocketAddr::from(([127, 0, 0, 1], m.client)), Duration::from_secs(30));
    m.proc = Some(p);
}

/// The log files of the members started by the running test (tests take one cluster at a time).
static LOGS: std::sync::Mutex<Vec<std::path::PathBuf>> = std::sync::Mutex::new(Vec::new());

/// The last lines of every member's log, for a failure's message: a member that cannot find a
/// leader must say why.
fn log_tails() -> String {
    let logs = LOGS.lock().unwrap_or_else(|e| e.into_inner());
    let mut out = String::new();
    for path in logs.iter() {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        out += &format!("--- {}\n{}\n", path.display(), lines[lines.len().saturating_sub(40)..].join("\n"));
    }
    out
}

fn endpoint(m: &Member) -> String {
    format!("127.0.0.1:{}", m.client)
}

/// Retries an etcdctl command until it succeeds, as a client would (elections take a moment).
fn until_ok(bins: &jepsen::EtcdBins, ep: &str, cmd: &[&str]) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = etcdctl(&bins.etcdctl, ep, cmd);
        if out.code == 0 {
            return out.stdout;
        }
        assert!(Instant::now() < deadline, "{cmd:?} via {ep} never succeeded: {out:?}\n{}", log_tails());
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The member that reports itself leader, by index.
fn leader(bins: &jepsen::EtcdBins, members: &[Member]) -> usize {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        for (i, m) in members.iter().enumerate() {
            if m.proc.is_none() {
                continue;
            }
            let out = etcdctl(&bins.etcdctl, &endpoint(m), &["endpoint", "status", "-w", "json"]);
            // The member's own id equals the leader id it reports.
            let field = |name: &str| {
                out.stdout
                    .split(&format!("\"{name}\":"))
                    .nth(1)
                    .map(|r| r.chars().take_while(|c| c.is_ascii_digit()).collect::<String>())
            };
            if let (Some(id), Some(lead)) = (field("member_id"), field("leader")) {
                if !id.is_empty() && id == lead {
                    return i;
                }
            }
        }
        assert!(Instant::now() < deadline, "no leader elected\n{}", log_tails());
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Three members on free ports, and their `--initial-cluster`.
/// One three-member cluster at a time: twelve servers at once on a 2-core machine starve
/// elections (a follower once saw no leader for 30 s while another build ran).
fn one_cluster_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    LOGS.lock().unwrap_or_else(|e| e.into_inner()).clear();
    guard
}

/// Three members started with `extra` flags, and the index of the one that leads.
fn running_cluster(
    bins: &jepsen::EtcdBins,
    dir: &std::path::Path,
    extra: &[&str],
) -> (Vec<Member>, String, usize) {
    let (mut members, cluster) = three_members();
    for m in members.iter_mut() {
        start_with(m, &cluster, dir, extra);
    }
    let l = leader(bins, &members);
    (members, cluster, l)
}

fn three_members() -> (Vec<Member>, String) {
    let members: Vec<Member> = (1..=3)
        .map(|i| Member { name: format!("infra{i}"), client: free_port(), peer: free_port(), proc: None })
        .collect();
    let cluster = members
        .iter()
        .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer))
        .collect::<Vec<_>>()
        .join(",");
    (members, cluster)
}

#[test]
fn three_members_survive_the_loss_of_the_leader() {
    let _serial = one_cluster_at_a_time();
    let bins = provision();
    let dir = tempfile::tempdir().unwrap();
    let (mut members, cluster, l) = running_cluster(&bins, dir.path(), &[]);
    let (f1, f2) = ((l + 1) % 3, (l + 2) % 3);
    until_ok(&bins, &endpoint(&members[f1]), &["put", "k1", "v1"]);
    assert_eq!(until_ok(&bins, &endpoint(&members[f2]), &["get", "k1", "--print-value-only"]), "v1\n");
    let list = until_ok(&bins, &endpoint(&members[l]), &["member", "list"]);
    assert_eq!(list.lines().count(), 3, "{list}");

    // Leases through followers: only the leader tracks expiry, so followers forward.
    let granted = until_ok(&bins, &endpoint(&members[f1]), &["lease", "grant", "60"]);
    let id = granted.split_whitespace().nth(1).expect("lease id").to_string();
    let kept = until_ok(&bins, &endpoint(&members[f2]), &["lease", "keep-alive", "--once", &id]);
    assert_eq!(kept, format!("lease {id} keepalived with TTL(60)\n"));
    let ttl = until_ok(&bins, &endpoint(&members[f2]), &["lease", "timetolive", &id]);
    assert!(ttl.starts_with(&format!("lease {id} granted with TTL(60s), remaining(5")), "{ttl}");

    // Move leadership to a follower and back (etcdctl move-leader talks to the leader).
    let ids: Vec<String> = list.lines().map(|l| l.split(',').next().unwrap().to_string()).collect();
    let name_of = |i: usize| members[i].name.clone();
    let target_id = ids
        .iter()
        .zip(list.lines())
        .find(|(_, l)| l.contains(&format!(" {},", name_of(f1))))
        .unwrap()
        .0
        .clone();
    let moved = until_ok(&bins, &endpoint(&members[l]), &["move-leader", &target_id]);
    assert!(moved.starts_with("Leadership transferred from "), "{moved}");
    assert_eq!(leader(&bins, &members), f1);
    // (etcdctl itself refuses to send move-leader to a member that is not the leader.)
    let l = f1;
    let (f1, f2) = ((l + 1) % 3, (l + 2) % 3);

    // Kill the leader: the others elect a new one and take writes.
    members[l].proc.take().unwrap().signal_and_wait(libc::SIGKILL);
    until_ok(&bins, &endpoint(&members[f1]), &["put", "k2", "v2"]);
    let l2 = leader(&bins, &members);
    assert_ne!(l2, l, "a new leader among the survivors");
    for i in 0..20 {
        until_ok(&bins, &endpoint(&members[f2]), &["put", &format!("k3-{i}"), "x"]);
    }

    // The old leader returns and catches up with everything acknowledged meanwhile.
    start(&mut members[l], &cluster, dir.path());
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = etcdctl(
            &bins.etcdctl,
            &endpoint(&members[l]),
            &["get", "k", "--prefix", "--keys-only", "--consistency=s"],
        );
        let keys = out.stdout.lines().filter(|l| !l.is_empty()).count();
        if keys == 22 {
            break;
        }
        assert!(Instant::now() < deadline, "restarted member did not catch up: {out:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let all = until_ok(&bins, &endpoint(&members[l]), &["get", "k", "--prefix", "--print-value-only"]);
    assert!(all.starts_with("v1\nv2\n"), "acknowledged writes survive: {all}");
}

/// The same three-member cluster (names, ports, token) run first on etcd 3.5.1, then on Keel:
/// `member list` in every format must be identical, ids included.
#[test]
fn member_list_of_a_three_member_cluster_matches_etcd() {
    let _serial = one_cluster_at_a_time();
    let bins = provision();
    let dir = tempfile::tempdir().unwrap();
    let (mut members, cluster) = three_members();
    let mut outputs = Vec::new();
    for (kind, program) in [("etcd", bins.etcd.clone()), ("keel", common::keel_bin())] {
        let data = dir.path().join(kind);
        for m in members.iter_mut() {
            let log = data.join(format!("{}.log", m.name));
            std::fs::create_dir_all(&data).unwrap();
            let mut p = Proc::spawn(&m.name, &program, &args(m, &cluster, &data), &log);
            p.wait_listening(SocketAddr::from(([127, 0, 0, 1], m.client)), Duration::from_secs(30));
            m.proc = Some(p);
        }
        leader(&bins, &members);
        let ep = endpoint(&members[1]);
        // Every member's attributes are published through the log shortly after the election.
        let deadline = Instant::now() + Duration::from_secs(30);
        let simple = loop {
            let out = until_ok(&bins, &ep, &["member", "list"]);
            if out.lines().all(|l| l.matches("http://").count() == 2) || Instant::now() > deadline {
                break out;
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        let table = until_ok(&bins, &ep, &["member", "list", "-w", "table"]);
        outputs.push((kind, simple, table));
        for m in members.iter_mut() {
            m.proc.take().unwrap().signal_and_wait(libc::SIGKILL);
        }
    }
    assert_eq!(outputs[0].1, outputs[1].1, "member list");
    assert_eq!(outputs[0].2, outputs[1].2, "member list -w table");
}

/// With image saves every 20 entries, a member that was down while the others wrote 300 keys
/// is behind their compacted logs: it catches up from the leader's image (a Raft snapshot).
/// Then the whole cluster is killed and restarted from images and WAL tails: nothing
/// acknowledged is lost.
#[test]
fn a_member_far_behind_catches_up_by_snapshot() {
    let _serial = one_cluster_at_a_time();
    let bins = provision();
    let dir = tempfile::tempdir().unwrap();
    const SMALL: &[&str] = &["--snapshot-count=20"];
    let (mut members, cluster, l) = running_cluster(&bins, dir.path(), SMALL);
    let start_small = |m: &mut Member| start_with(m, &cluster, dir.path(), SMALL);
    let behind = (l + 1) % 3;
    members[behind].proc.take().unwrap().signal_and_wait(libc::SIGKILL);
    for i in 0..300 {
        until_ok(&bins, &endpoint(&members[l]), &["put", &format!("far-{i:03}"), &format!("v{i}")]);
    }
    start_small(&mut members[behind]);
    let count = |m: &Member| {
        let out = etcdctl(
            &bins.etcdctl,
            &endpoint(m),
            &["get", "far-", "--prefix", "--count-only", "--consistency=s", "-w", "fields"],
        );
        out.stdout
            .lines()
            .find_map(|l| l.strip_prefix("\"Count\" : ").map(|c| c.trim().parse::<usize>().unwrap_or(0)))
            .unwrap_or(0)
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while count(&members[behind]) != 300 {
        assert!(Instant::now() < deadline, "the member far behind did not catch up");
        std::thread::sleep(Duration::from_millis(100));
    }
    let log = members[behind].proc.as_ref().unwrap().log_text();
    assert!(log.contains("installed a snapshot from the leader"), "it caught up by snapshot:\n{log}");

    // Every member killed at once, restarted from its image and WAL tail.
    for m in members.iter_mut() {
        m.proc.take().unwrap().signal_and_wait(libc::SIGKILL);
    }
    for m in members.iter_mut() {
        start_small(m);
    }
    let all = until_ok(&bins, &endpoint(&members[0]), &["get", "far-", "--prefix", "--print-value-only"]);
    let values: Vec<&str> = all.lines().filter(|l| !l.is_empty()).collect();
    assert_eq!(values.len(), 300, "every acknowledged write survives");
    for m in &members {
        let deadline = Instant::now() + Duration::from_secs(30);
        while count(m) != 300 {
            assert!(Instant::now() < deadline, "{} did not recover every key", m.name);
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// An HTTP/1.0 POST (the JSON gateway), answering (status, body).
fn post(port: u16, path: &str, body: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "POST {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let status = out.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = out.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status, body)
}

/// The Rust `etcd-client` crate and the JSON gateway against a three-member cluster, through
/// followers as well as the leader: writes, reads, txns, leases and watches go through any
/// member and are seen through any other.
#[test]
fn real_clients_against_three_members() {
    let _serial = one_cluster_at_a_time();
    let bins = provision();
    let dir = tempfile::tempdir().unwrap();
    let (members, _cluster, l) = running_cluster(&bins, dir.path(), &[]);
    let (f1, f2) = ((l + 1) % 3, (l + 2) % 3);
    let url = |i: usize| format!("http://127.0.0.1:{}", members[i].client);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        use etcd_client::{Client, Compare, CompareOp, EventType, PutOptions, Txn, TxnOp};
        let mut via_f1 = Client::connect([url(f1)], None).await.unwrap();
        let mut via_f2 = Client::connect([url(f2)], None).await.unwrap();
        via_f1.put("rc/a", "1", None).await.unwrap();
        let got = via_f2.get("rc/a", None).await.unwrap();
        assert_eq!(got.kvs()[0].value(), b"1", "a write through one follower is read through the other");

        // A txn through a follower: compare-and-set on the value.
        let txn = Txn::new()
            .when([Compare::value("rc/a", CompareOp::Equal, "1")])
            .and_then([TxnOp::put("rc/a", "2", None)]);
        assert!(via_f2.txn(txn).await.unwrap().succeeded());

        // A watch on one follower sees a write made through the other.
        let mut stream = via_f1.watch("rc/w", None).await.unwrap();
        via_f2.put("rc/w", "seen", None).await.unwrap();
        let event = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                let resp = stream.message().await.unwrap().expect("the watch stream stays open");
                if let Some(e) = resp.events().first() {
                    return (e.event_type(), e.kv().unwrap().value().to_vec());
                }
            }
        })
        .await
        .expect("the event arrives");
        assert_eq!(event, (EventType::Put, b"seen".to_vec()));

        // Leases through followers: granted through one, attached through the other.
        let lease = via_f1.lease_grant(60, None).await.unwrap().id();
        via_f2.put("rc/leased", "x", Some(PutOptions::new().with_lease(lease))).await.unwrap();
        let ttl = via_f2.lease_time_to_live(lease, None).await.unwrap();
        assert!(ttl.ttl() > 50, "{}", ttl.ttl());
        via_f1.lease_revoke(lease).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while via_f2.get("rc/leased", None).await.unwrap().count() != 0 {
            assert!(Instant::now() < deadline, "the revoked lease's key is deleted everywhere");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });

    // The JSON gateway on followers: a put through one, a range through the other.
    let (status, body) =
        post(members[f1].client, "/v3/kv/put", r#"{"key":"cmMvZ3c=","value":"Z2F0ZXdheQ=="}"#);
    assert_eq!(status, 200, "{body}");
    let (status, body) = post(members[f2].client, "/v3/kv/range", r#"{"key":"cmMvZ3c="}"#);
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(r#""value":"Z2F0ZXdheQ==""#), "the gateway reads the gateway's write: {body}");
    let (status, body) =
        post(members[l].client, "/v3/kv/range", r#"{"key":"cmMv","range_end":"cmMw","count_only":true}"#);
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(r#""count":"3""#), "rc/a, rc/w and rc/gw through the leader: {body}");
}

/// Every client RPC a learner gets, with whether etcd 3.5.1 serves it there (checked against a
/// real etcd learner: serializable Range, Status and Snapshot only; the rest answer
/// Unavailable "etcdserver: rpc not supported for learner").
async fn learner_answers(endpoint: String) -> Vec<(&'static str, Result<(), (tonic::Code, String)>)> {
    use futures::StreamExt;
    use server::pb::etcdserverpb::auth_client::AuthClient;
    use server::pb::etcdserverpb::cluster_client::ClusterClient;
    use server::pb::etcdserverpb::kv_client::KvClient;
    use server::pb::etcdserverpb::lease_client::LeaseClient;
    use server::pb::etcdserverpb::maintenance_client::MaintenanceClient;
    use server::pb::etcdserverpb::watch_client::WatchClient;
    use server::pb::etcdserverpb::*;
    use server::pb::v3electionpb::election_client::ElectionClient;
    use server::pb::v3lockpb::lock_client::LockClient;

    let channel = tonic::transport::Endpoint::from_shared(endpoint).unwrap().connect().await.unwrap();
    let mut kv = KvClient::new(channel.clone());
    let mut watch = WatchClient::new(channel.clone());
    let mut lease = LeaseClient::new(channel.clone());
    let mut cluster = ClusterClient::new(channel.clone());
    let mut maintenance = MaintenanceClient::new(channel.clone());
    let mut auth = AuthClient::new(channel.clone());
    let mut lock = LockClient::new(channel.clone());
    let mut election = ElectionClient::new(channel);
    fn done<T>(r: Result<tonic::Response<T>, tonic::Status>) -> Result<(), (tonic::Code, String)> {
        r.map(|_| ()).map_err(|s| (s.code(), s.message().to_string()))
    }
    let key = || bytes::Bytes::from_static(b"foo");
    let mut out = Vec::new();
    out.push(("Range", done(kv.range(RangeRequest { key: key(), ..Default::default() }).await)));
    let serializable = RangeRequest { key: key(), serializable: true, ..Default::default() };
    out.push(("Range serializable", done(kv.range(serializable).await)));
    out.push(("Put", done(kv.put(PutRequest { key: key(), ..Default::default() }).await)));
    out.push((
        "DeleteRange",
        done(kv.delete_range(DeleteRangeRequest { key: key(), ..Default::default() }).await),
    ));
    out.push(("Txn", done(kv.txn(TxnRequest::default()).await)));
    out.push(("Compact", done(kv.compact(CompactionRequest { revision: 1, physical: false }).await)));
    out.push(("Watch", done(watch.watch(futures::stream::pending::<WatchRequest>()).await)));
    out.push(("LeaseGrant", done(lease.lease_grant(LeaseGrantRequest { ttl: 60, id: 0 }).await)));
    out.push(("LeaseRevoke", done(lease.lease_revoke(LeaseRevokeRequest { id: 1 }).await)));
    let keep_alive = lease.lease_keep_alive(futures::stream::pending::<LeaseKeepAliveRequest>()).await;
    out.push(("LeaseKeepAlive", done(keep_alive)));
    out.push((
        "LeaseTimeToLive",
        done(lease.lease_time_to_live(LeaseTimeToLiveRequest { id: 1, keys: false }).await),
    ));
    out.push(("LeaseLeases", done(lease.lease_leases(LeaseLeasesRequest {}).await)));
    out.push(("MemberList", done(cluster.member_list(MemberListRequest::default()).await)));
    out.push(("MemberPromote", done(cluster.member_promote(MemberPromoteRequest { id: 1 }).await)));
    out.push(("MemberRemove", done(cluster.member_remove(MemberRemoveRequest { id: 1 }).await)));
    out.push(("Status", done(maintenance.status(StatusRequest {}).await)));
    let snapshot = maintenance.snapshot(SnapshotRequest {}).await;
    let snapshot = match snapshot {
        Ok(s) => s
            .into_inner()
            .next()
            .await
            .map_or(Ok(()), |m| m.map(|_| ()).map_err(|s| (s.code(), s.message().to_string()))),
        Err(s) => Err((s.code(), s.message().to_string())),
    };
    out.push(("Snapshot", snapshot));
    out.push(("Alarm", done(maintenance.alarm(AlarmRequest::default()).await)));
    out.push(("Defragment", done(maintenance.defragment(DefragmentRequest {}).await)));
    out.push(("Hash", done(maintenance.hash(HashRequest {}).await)));
    out.push(("HashKV", done(maintenance.hash_kv(HashKvRequest { revision: 0 }).await)));
    out.push(("MoveLeader", done(maintenance.move_leader(MoveLeaderRequest { target_id: 1 }).await)));
    out.push(("AuthStatus", done(auth.auth_status(AuthStatusRequest {}).await)));
    out.push(("UserList", done(auth.user_list(AuthUserListRequest {}).await)));
    let lock_req = server::pb::v3lockpb::LockRequest { name: key(), lease: 1 };
    out.push(("Lock", done(lock.lock(lock_req).await)));
    let leader_req = server::pb::v3electionpb::LeaderRequest { name: key() };
    out.push(("Leader", done(election.leader(leader_req).await)));
    out
}

/// A learner serves what etcd's learners serve and refuses the rest with etcd's error, through
/// gRPC and through etcdctl; once promoted, it serves everything. And the NOSPACE alarm is
/// the cluster's: raised through one member, it refuses puts through every other member until
/// disarmed.
#[test]
fn a_learner_refuses_what_etcd_learners_refuse() {
    let _serial = one_cluster_at_a_time();
    let bins = provision();
    let dir = tempfile::tempdir().unwrap();
    let (mut members, cluster, l) = running_cluster(&bins, dir.path(), &[]);
    let ep = |m: &Member| endpoint(m);
    until_ok(&bins, &ep(&members[l]), &["put", "foo", "bar"]);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();

    // NOSPACE, raised through one member, is seen and enforced by all.
    let (a, b) = ((l + 1) % 3, (l + 2) % 3);
    let id_a = rt.block_on(async {
        use server::pb::etcdserverpb::maintenance_client::MaintenanceClient;
        use server::pb::etcdserverpb::*;
        let mut c = MaintenanceClient::connect(format!("http://{}", ep(&members[a]))).await.unwrap();
        let id = c.status(StatusRequest {}).await.unwrap().into_inner().header.unwrap().member_id;
        let raise = AlarmRequest {
            action: alarm_request::AlarmAction::Activate as i32,
            member_id: id,
            alarm: AlarmType::Nospace as i32,
        };
        let raised = c.alarm(raise).await.unwrap().into_inner();
        assert_eq!(raised.alarms, vec![AlarmMember { member_id: id, alarm: AlarmType::Nospace as i32 }]);
        id
    });
    let alarm = format!("memberID:{id_a} alarm:NOSPACE \n");
    let deadline = Instant::now() + Duration::from_secs(10);
    while etcdctl(&bins.etcdctl, &ep(&members[b]), &["alarm", "list"]).stdout != alarm {
        assert!(Instant::now() < deadline, "the alarm reaches every member");
        std::thread::sleep(Duration::from_millis(50));
    }
    for m in &members {
        let out = etcdctl(&bins.etcdctl, &ep(m), &["put", "foo", "x"]);
        assert_eq!(jepsen::user_stderr(&out.stderr), "Error: etcdserver: mvcc: database space exceeded");
        assert_eq!(etcdctl(&bins.etcdctl, &ep(m), &["get", "foo", "--print-value-only"]).stdout, "bar\n");
    }
    assert_eq!(etcdctl(&bins.etcdctl, &ep(&members[b]), &["alarm", "disarm"]).stdout, alarm);
    until_ok(&bins, &ep(&members[a]), &["put", "foo", "bar"]);

    // A learner joins.
    let mut learner =
        Member { name: "infra4".to_string(), client: free_port(), peer: free_port(), proc: None };
    let learner_peer = format!("http://127.0.0.1:{}", learner.peer);
    let added = etcdctl(
        &bins.etcdctl,
        &ep(&members[l]),
        &["member", "add", "infra4", "--learner", &format!("--peer-urls={learner_peer}")],
    );
    assert_eq!(added.code, 0, "{added:?}");
    let learner_id = added.stdout.split_whitespace().nth(1).unwrap().to_string();
    let mut args = args(&learner, &format!("{cluster},infra4={learner_peer}"), dir.path());
    args.retain(|a| !a.starts_with("--initial-cluster-state"));
    args.push("--initial-cluster-state=existing".to_string());
    let log = dir.path().join("infra4.log");
    let mut p = Proc::spawn("infra4", &common::keel_bin(), &args, &log);
    p.wait_listening(SocketAddr::from(([127, 0, 0, 1], learner.client)), Duration::from_secs(30));
    learner.proc = Some(p);
    let lep = ep(&learner);
    let deadline = Instant::now() + Duration::from_secs(30);
    while etcdctl(&bins.etcdctl, &lep, &["get", "foo", "--consistency=s", "--print-value-only"]).stdout
        != "bar\n"
    {
        assert!(Instant::now() < deadline, "the learner catches up");
        std::thread::sleep(Duration::from_millis(100));
    }

    // What etcd 3.5.1's learner answered, RPC by RPC.
    let served = ["Range serializable", "Status", "Snapshot"];
    let refused = (tonic::Code::Unavailable, "etcdserver: rpc not supported for learner".to_string());
    for (rpc, answer) in rt.block_on(learner_answers(format!("http://{lep}"))) {
        if served.contains(&rpc) {
            assert_eq!(answer, Ok(()), "{rpc} is served by a learner");
        } else {
            assert_eq!(answer, Err(refused.clone()), "{rpc} is refused by a learner");
        }
    }
    // Through etcdctl, as etcd's learner printed it (commands etcdctl does not retry).
    for args in
        [&["put", "foo", "x"][..], &["del", "foo"], &["compaction", "1"], &["member", "promote", &learner_id]]
    {
        let out = etcdctl(&bins.etcdctl, &lep, args);
        assert_eq!(
            (jepsen::user_stderr(&out.stderr).as_str(), out.code),
            ("Error: etcdserver: rpc not supported for learner", 1),
            "{args:?}"
        );
    }
    let out = etcdctl(&bins.etcdctl, &lep, &["defrag"]);
    assert_eq!(
        (jepsen::user_stderr(&out.stderr), out.code),
        (format!("Failed to defragment etcd member[{lep}] (etcdserver: rpc not supported for learner)"), 1)
    );
    let status = etcdctl(&bins.etcdctl, &lep, &["endpoint", "status"]);
    assert!(status.code == 0 && status.stdout.contains(&format!(", {learner_id}, 3.5.1, ")), "{status:?}");
    assert!(status.stdout.contains(", false, true, "), "not leader, learner: {status:?}");
    // The JSON gateway goes through the same services.
    let (code, body) = post(learner.client, "/v3/kv/range", r#"{"key":"Zm9v"}"#);
    assert_eq!(
        (code, body.as_str()),
        (
            503,
            r#"{"error":"etcdserver: rpc not supported for learner","code":14,"message":"etcdserver: rpc not supported for learner"}"#
        )
    );

    // Promoted, it serves everything.
    until_ok(&bins, &ep(&members[l]), &["member", "promote", &learner_id]);
    until_ok(&bins, &lep, &["put", "foo", "promoted"]);
    assert_eq!(until_ok(&bins, &lep, &["get", "foo", "--print-value-only"]), "promoted\n");
    until_ok(&bins, &lep, &["member", "list"]);
    members.push(learner);
}
