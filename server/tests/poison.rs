//! Poison pills against three real members: each request or peer message that once stopped
//! every member for good (issue 19) is sent again; it is answered or refused, every member keeps
//! serving, and every member restarts cleanly afterwards. Then the poison is written straight
//! into every member's WAL as committed entries — what a data directory of the old code holds
//! after such a message — and every member starts again and serves.

mod common;

use bytes::Bytes;
use futures::StreamExt as _;
use jepsen::{free_port, Proc};
use prost::Message as _;
use server::pb::etcdserverpb::kv_client::KvClient;
use server::pb::etcdserverpb::maintenance_client::MaintenanceClient;
use server::pb::etcdserverpb::{request_op, PutRequest, RangeRequest, RequestOp, StatusRequest, TxnRequest};
use server::pb::keelpb::raft_client::RaftClient;
use server::pb::keelpb::{
    request::Op, ConfChange, Entry, EntryType, HardState, Message, MessageBatch, MessageType, Request,
    Snapshot, SnapshotChunk, SnapshotMetadata,
};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

struct Member {
    name: String,
    client: u16,
    peer: u16,
    proc: Option<Proc>,
}

fn start(m: &mut Member, cluster: &str, dir: &Path) {
    let client = format!("http://127.0.0.1:{}", m.client);
    let peer = format!("http://127.0.0.1:{}", m.peer);
    let args = vec![
        format!("--name={}", m.name),
        format!("--data-dir={}", dir.join(&m.name).display()),
        format!("--listen-client-urls={client}"),
        format!("--advertise-client-urls={client}"),
        format!("--listen-peer-urls={peer}"),
        format!("--initial-advertise-peer-urls={peer}"),
        format!("--initial-cluster={cluster}"),
        "--initial-cluster-token=keel-poison".to_string(),
        "--initial-cluster-state=new".to_string(),
    ];
    let log = dir.join(format!(
        "{}-{}.log",
        m.name,
        std::process::id() as u128 + Instant::now().elapsed().as_nanos()
    ));
    let mut p = Proc::spawn(&m.name, &common::keel_bin(), &args, &log);
    p.wait_listening(SocketAddr::from(([127, 0, 0, 1], m.client)), Duration::from_secs(30));
    m.proc = Some(p);
}

fn url(port: u16) -> String {
    format!("http://127.0.0.1:{port}")
}

/// This member's id, the cluster's, and the leader it knows (0 for none).
async fn status(client_port: u16) -> Result<(u64, u64, u64), String> {
    let mut c = MaintenanceClient::connect(url(client_port)).await.map_err(|e| e.to_string())?;
    let s = c.status(StatusRequest {}).await.map_err(|e| e.to_string())?.into_inner();
    let h = s.header.unwrap_or_default();
    Ok((h.member_id, h.cluster_id, s.leader))
}

/// Every member alive, one leader known to all, a write through each member read through the
/// next: the cluster did not notice. Waits out an election (a forged message may not cause one,
/// but the first start has one).
async fn all_serving(members: &mut [Member], what: &str) {
    for m in members.iter_mut() {
        let p = m.proc.as_mut().expect("started");
        assert!(p.wait_exit(Duration::ZERO).is_none(), "{} exited after {what}:\n{}", m.name, p.log_text());
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    let ports: Vec<u16> = members.iter().map(|m| m.client).collect();
    'retry: loop {
        assert!(Instant::now() < deadline, "the cluster stopped serving after {what}");
        let mut leaders = Vec::new();
        for &p in &ports {
            match status(p).await {
                Ok((_, _, leader)) if leader != 0 => leaders.push(leader),
                _ => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue 'retry;
                }
            }
        }
        if leaders.iter().any(|l| *l != leaders[0]) {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        }
        for (i, &p) in ports.iter().enumerate() {
            let key = format!("after {what} via {i}");
            let Ok(mut c) = KvClient::connect(url(p)).await else { continue 'retry };
            let put = PutRequest { key: key.clone().into(), value: "v".into(), ..Default::default() };
            if c.put(put).await.is_err() {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue 'retry;
            }
            let next = ports[(i + 1) % ports.len()];
            let Ok(mut r) = KvClient::connect(url(next)).await else { continue 'retry };
            let got = r.range(RangeRequest { key: key.into(), ..Default::default() }).await;
            match got {
                Ok(resp) if resp.get_ref().kvs.len() == 1 => {}
                _ => continue 'retry,
            }
        }
        return;
    }
}

fn nested_txn(depth: u32, innermost_range: bool) -> TxnRequest {
    let mut t = TxnRequest {
        success: if innermost_range {
            vec![RequestOp {
                request: Some(request_op::Request::RequestRange(RangeRequest {
                    key: "k".into(),
                    ..Default::default()
                })),
            }]
        } else {
            Vec::new()
        },
        ..Default::default()
    };
    for _ in 1..depth {
        t = TxnRequest {
            success: vec![RequestOp { request: Some(request_op::Request::RequestTxn(t)) }],
            ..Default::default()
        };
    }
    t
}

async fn send(peer_port: u16, batch: MessageBatch) -> Result<(), tonic::Status> {
    let mut c = RaftClient::connect(url(peer_port)).await.expect("peer port");
    c.send(batch).await.map(|_| ())
}

fn message(t: MessageType, from: u64, to: u64, term: u64) -> Message {
    Message { msg_type: t as i32, from, to, term, ..Default::default() }
}

fn conf_change_99(id: u64) -> Entry {
    Entry {
        entry_type: EntryType::EntryConfChange as i32,
        data: ConfChange { change_type: 99, node_id: id, ..Default::default() }.encode_to_vec().into(),
        ..Default::default()
    }
}

fn garbage_entry() -> Entry {
    Entry { data: Bytes::from_static(&[0xff, 0xff, 0xff, 0xff, 0x0f, 0x01]), ..Default::default() }
}

#[test]
fn poison_requests_and_peer_messages_leave_every_member_serving() {
    let dir = tempfile::tempdir().unwrap();
    let mut members: Vec<Member> = ["p1", "p2", "p3"]
        .iter()
        .map(|n| Member { name: n.to_string(), client: free_port(), peer: free_port(), proc: None })
        .collect();
    let cluster: Vec<String> = members.iter().map(|m| format!("{}={}", m.name, url(m.peer))).collect();
    let cluster = cluster.join(",");
    for m in members.iter_mut() {
        start(m, &cluster, dir.path());
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        all_serving(&mut members, "the start").await;
        let mut ids = Vec::new();
        let mut cluster_id = 0;
        for m in &members {
            let (id, cid, _) = status(m.client).await.unwrap();
            ids.push(id);
            cluster_id = cid;
        }
        let (_, _, leader) = status(members[0].client).await.unwrap();
        let li = ids.iter().position(|&i| i == leader).unwrap();
        let fi = (li + 1) % 3;
        let (leader_peer, follower_peer, follower) = (members[li].peer, members[fi].peer, ids[fi]);
        let other = ids[(li + 2) % 3];

        // Client port: nested txns to the depth etcd takes (once a panic at apply on every
        // member, and at every restart).
        let mut kv = KvClient::connect(url(members[fi].client)).await.unwrap();
        for (depth, range) in [(50, true), (51, false), (100, true), (128, true)] {
            // In the success branch: the answer is as deep, and Keel's client decodes it too.
            let t = nested_txn(depth, range);
            let r = kv.txn(t).await;
            assert!(r.as_ref().is_ok_and(|r| r.get_ref().succeeded), "depth {depth}: {r:?}");
        }
        // Past Keel's decode bound: an error, and nothing else.
        assert!(kv.txn(nested_txn(300, true)).await.is_err());
        all_serving(&mut members, "deeply nested txns").await;

        client_port_answers(&members).await;
        all_serving(&mut members, "hostile client requests").await;

        // Peer port: from an id that is not a member, every kind of message is refused (by
        // Raft, which logs it): nothing changes.
        let (_, _, leader_before) = status(members[0].client).await.unwrap();
        let term = u64::MAX;
        let outsider = 0x99;
        for (to_peer, to, m) in [
            (
                leader_peer,
                leader,
                Message {
                    entries: vec![garbage_entry()],
                    ..message(MessageType::MsgProp, outsider, leader, 0)
                },
            ),
            (
                leader_peer,
                leader,
                Message {
                    entries: vec![conf_change_99(7)],
                    ..message(MessageType::MsgProp, outsider, leader, 0)
                },
            ),
            (follower_peer, follower, message(MessageType::MsgHeartbeat, outsider, follower, term)),
            (follower_peer, follower, message(MessageType::MsgTimeoutNow, outsider, follower, 5)),
            (leader_peer, leader, message(MessageType::MsgTransferLeader, outsider, leader, 5)),
        ] {
            let shown = format!("{m:?}");
            let batch = MessageBatch { messages: vec![m], cluster_id, from: outsider, to };
            send(to_peer, batch).await.expect(&shown);
        }
        // A heartbeat of a plausible term from a non-member does not unseat a healthy leader.
        let (_, _, now) = status(members[fi].client).await.unwrap();
        assert_eq!(now, leader_before);
        let hb = message(MessageType::MsgHeartbeat, outsider, follower, 1000);
        send(follower_peer, MessageBatch { messages: vec![hb], cluster_id, from: outsider, to: follower })
            .await
            .unwrap();
        // Another cluster's batch, a batch whose messages name other members, a snapshot in a
        // plain batch: refused.
        let hb = message(MessageType::MsgHeartbeat, leader, follower, 1);
        let e = send(
            follower_peer,
            MessageBatch {
                messages: vec![hb.clone()],
                cluster_id: cluster_id ^ 1,
                from: leader,
                to: follower,
            },
        )
        .await
        .unwrap_err();
        assert!(e.message().contains("cluster ID mismatch"), "{e:?}");
        let e =
            send(follower_peer, MessageBatch { messages: vec![hb], cluster_id, from: other, to: follower })
                .await
                .unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
        let snap = Message {
            snapshot: Some(Snapshot {
                metadata: Some(SnapshotMetadata { index: 1 << 40, term: 1 << 30, ..Default::default() }),
                data: Bytes::new(),
            }),
            ..message(MessageType::MsgSnap, leader, follower, 1 << 30)
        };
        let e = send(
            follower_peer,
            MessageBatch { messages: vec![snap], cluster_id, from: leader, to: follower },
        )
        .await
        .unwrap_err();
        assert!(e.message().contains("own stream"), "{e:?}");
        all_serving(&mut members, "messages from a non-member").await;
        let (_, _, leader_after) = status(members[0].client).await.unwrap();
        assert_eq!(leader_after, leader_before, "a non-member's message changed the leader");

        // Messages that claim a member's id (peers are not authenticated without TLS) reach
        // Raft, which refuses what no honest member sends. The cluster must not notice: no
        // panic, no term taken, no election.
        let last = 1 << 40;
        for (to_peer, from, to, m) in [
            (
                leader_peer,
                follower,
                leader,
                Message {
                    entries: vec![garbage_entry()],
                    ..message(MessageType::MsgProp, follower, leader, 0)
                },
            ),
            (
                leader_peer,
                follower,
                leader,
                Message {
                    entries: vec![conf_change_99(7)],
                    ..message(MessageType::MsgProp, follower, leader, 0)
                },
            ),
            (follower_peer, leader, follower, message(MessageType::MsgHeartbeat, leader, follower, u64::MAX)),
            (follower_peer, other, follower, message(MessageType::MsgPreVote, other, follower, u64::MAX)),
            (
                leader_peer,
                follower,
                leader,
                Message { index: last, ..message(MessageType::MsgAppResp, follower, leader, 1) },
            ),
            (
                follower_peer,
                leader,
                follower,
                Message {
                    index: u64::MAX,
                    log_term: 1,
                    entries: vec![Entry { index: 3, term: 1, ..garbage_entry() }],
                    ..message(MessageType::MsgApp, leader, follower, 1)
                },
            ),
            (follower_peer, other, follower, message(MessageType::MsgTimeoutNow, other, follower, 1)),
            (leader_peer, follower, leader, message(MessageType::MsgTransferLeader, follower, leader, 1)),
        ] {
            let shown = format!("{m:?}");
            send(to_peer, MessageBatch { messages: vec![m], cluster_id, from, to }).await.expect(&shown);
        }
        all_serving(&mut members, "forged messages in members' names").await;
        let (_, _, leader_after) = status(members[0].client).await.unwrap();
        assert_eq!(leader_after, leader_before, "a forged message changed the leader");

        // A snapshot stream from a non-member, and one from another cluster.
        let mut c = RaftClient::connect(url(follower_peer)).await.unwrap();
        let first = SnapshotChunk {
            message: Some(Message {
                snapshot: Some(Snapshot {
                    metadata: Some(SnapshotMetadata { index: 10, term: 1, ..Default::default() }),
                    data: Bytes::new(),
                }),
                ..message(MessageType::MsgSnap, outsider, follower, 1)
            }),
            total_bytes: 1,
            cluster_id,
            ..Default::default()
        };
        let other_cluster = SnapshotChunk { cluster_id: cluster_id ^ 1, ..first.clone() };
        let e = c.send_snapshot(futures::stream::iter(vec![other_cluster])).await.unwrap_err();
        assert!(e.message().contains("cluster ID mismatch"), "{e:?}");
        let whole = SnapshotChunk { total_bytes: 0, last: true, crc32: crc32fast::hash(b""), ..first };
        c.send_snapshot(futures::stream::iter(vec![whole])).await.unwrap();
        all_serving(&mut members, "a non-member's snapshot").await;
        let (_, _, leader_after) = status(members[0].client).await.unwrap();
        assert_eq!(leader_after, leader_before, "a non-member's snapshot changed the leader");

        // Snapshots in the leader's name, at a higher term: one whose data is the state at
        // another index than its metadata names (it once stopped the node task after wiping its
        // image), and one at index u64::MAX (its `index + 1` overflowed).
        let image = server::pb::keelpb::FullImage {
            state: Some(server::pb::keelpb::StateImage {
                applied_index: 5,
                applied_term: 1,
                ..Default::default()
            }),
            keys: Vec::new(),
        }
        .encode_to_vec();
        for index in [1 << 40, u64::MAX] {
            let forged = SnapshotChunk {
                message: Some(Message {
                    snapshot: Some(Snapshot {
                        metadata: Some(SnapshotMetadata { index, term: 1, ..Default::default() }),
                        data: Bytes::new(),
                    }),
                    ..message(MessageType::MsgSnap, leader, follower, 1 << 20)
                }),
                total_bytes: image.len() as u64,
                data: image.clone().into(),
                last: true,
                crc32: crc32fast::hash(&image),
                cluster_id,
            };
            c.send_snapshot(futures::stream::iter(vec![forged])).await.unwrap();
        }
        all_serving(&mut members, "forged snapshots in the leader's name").await;
        let (_, _, leader_after) = status(members[0].client).await.unwrap();
        assert_eq!(leader_after, leader_before, "a forged snapshot changed the leader");
    });

    // Every member restarts cleanly, with everything it acknowledged.
    for m in members.iter_mut() {
        assert!(
            m.proc.as_mut().unwrap().signal_and_wait(libc::SIGTERM).success(),
            "{} stops cleanly",
            m.name
        );
        start(m, &cluster, dir.path());
    }
    rt.block_on(async {
        all_serving(&mut members, "a restart").await;
        let mut kv = KvClient::connect(url(members[2].client)).await.unwrap();
        let r = kv
            .range(RangeRequest { key: "after the start via 0".into(), ..Default::default() })
            .await
            .unwrap();
        assert_eq!(r.get_ref().kvs.len(), 1);
    });

    // The data directories of the old code: the poison committed in every member's WAL, at the
    // same indexes. The members are killed together once quiet, so their logs are equal.
    rt.block_on(quiet(&members));
    for m in members.iter_mut() {
        unsafe { libc::kill(m.proc.as_ref().unwrap().pid() as i32, libc::SIGKILL) };
    }
    for m in members.iter_mut() {
        m.proc.as_mut().unwrap().wait_exit(Duration::from_secs(10)).expect("killed");
    }
    let wals: Vec<PathBuf> =
        members.iter().map(|m| dir.path().join(&m.name).join("member").join("wal")).collect();
    let lasts: Vec<(u64, u64)> = wals.iter().map(|w| wal_last(w)).collect();
    assert!(lasts.iter().all(|l| *l == lasts[0]), "members killed together hold the same log: {lasts:?}");
    for w in &wals {
        poison_wal(w);
    }
    for m in members.iter_mut() {
        start(m, &cluster, dir.path());
    }
    rt.block_on(all_serving(&mut members, "restarting on poisoned data directories"));
    for m in members.iter_mut() {
        let log = m.proc.as_ref().unwrap().log_text();
        assert!(!log.contains("panicked"), "{}:\n{log}", m.name);
        // The poison was applied, refused, and the member went on.
        assert!(log.contains("committed entry refused at apply"), "{}:\n{log}", m.name);
        assert!(log.contains("committed configuration change refused at apply"), "{}:\n{log}", m.name);
        assert!(m.proc.as_mut().unwrap().signal_and_wait(libc::SIGTERM).success());
    }
}

/// Appends to a stopped member's WAL, as committed entries of its last term, what once made
/// every apply panic: garbage request bytes, a conf change of type 99, a txn nested 50 deep
/// wrapped in the log record (and one 51 deep around an empty branch).
fn poison_wal(wal_dir: &Path) {
    use runtime::backend::FsDir;
    use runtime::wal::{Wal, WalOptions};
    let (mut wal, replayed) = Wal::open(FsDir::open(wal_dir).unwrap(), WalOptions::default()).unwrap();
    let last = replayed.entries.last().map(|e| (e.index, e.term)).expect("a log");
    let term = replayed.hard_state.term.max(last.1);
    let records = [
        garbage_entry(),
        conf_change_99(0x77),
        Entry {
            data: Request { id: 0x5150_0001, op: Some(Op::Txn(nested_txn(50, true))) }.encode_to_vec().into(),
            ..Default::default()
        },
        Entry {
            data: Request { id: 0x5150_0002, op: Some(Op::Txn(nested_txn(51, false))) }
                .encode_to_vec()
                .into(),
            ..Default::default()
        },
    ];
    let entries: Vec<Entry> = records
        .into_iter()
        .enumerate()
        .map(|(i, e)| Entry { index: last.0 + 1 + i as u64, term, ..e })
        .collect();
    let commit = entries.last().unwrap().index;
    wal.append_entries(&entries);
    wal.append_hard_state(&HardState { term, vote: replayed.hard_state.vote, commit });
    wal.flush(true).unwrap();
}

/// The last entry of a stopped member's WAL.
fn wal_last(wal_dir: &Path) -> (u64, u64) {
    use runtime::backend::FsDir;
    use runtime::wal::{Wal, WalOptions};
    let (_, replayed) = Wal::open(FsDir::open(wal_dir).unwrap(), WalOptions::default()).unwrap();
    replayed.entries.last().map(|e| (e.index, e.term)).expect("a log")
}

/// Waits until every member has applied the same last index (the cluster is quiet), so that
/// members killed together hold the same log.
async fn quiet(members: &[Member]) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut indexes = Vec::new();
        for m in members {
            let mut c = MaintenanceClient::connect(url(m.client)).await.unwrap();
            let s = c.status(StatusRequest {}).await.unwrap().into_inner();
            indexes.push((s.raft_index, s.raft_applied_index));
        }
        if indexes.iter().all(|&(i, a)| i == a && i == indexes[0].0) {
            return;
        }
        assert!(Instant::now() < deadline, "the members never agreed on their last index: {indexes:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The client-port answers that differed from etcd 3.5.1's (issue 19), each sent through a
/// different member of the three: answered as etcd answers it (the same requests are compared
/// with a real etcd side by side in `hostile_client.rs`).
async fn client_port_answers(members: &[Member]) {
    use server::pb::etcdserverpb::watch_client::WatchClient;
    use server::pb::etcdserverpb::{compare, watch_request, Compare, WatchCreateRequest, WatchRequest};
    let via = |i: usize| url(members[i % members.len()].client);
    let range = |k: &str| RequestOp {
        request: Some(request_op::Request::RequestRange(RangeRequest {
            key: k.to_string().into(),
            ..Default::default()
        })),
    };
    let expect_err =
        |r: Result<tonic::Response<_>, tonic::Status>, code: tonic::Code, msg: &str, what: &str| {
            let e: tonic::Status = match r {
                Ok(resp) => {
                    let _: tonic::Response<server::pb::etcdserverpb::TxnResponse> = resp;
                    panic!("{what}: accepted")
                }
                Err(e) => e,
            };
            assert_eq!((e.code(), e.message()), (code, msg), "{what}");
        };

    // An empty op anywhere in a txn.
    let mut kv = KvClient::connect(via(0)).await.unwrap();
    let empty = TxnRequest { success: vec![range("k"), RequestOp::default()], ..Default::default() };
    expect_err(kv.txn(empty).await, tonic::Code::InvalidArgument, "etcdserver: key not found", "empty op");
    // The op budget across nesting levels: 100 ops holding a txn of 29 is over 128.
    let nested_ops = |inner: usize| {
        let mut success: Vec<RequestOp> = (0..99).map(|i| range(&format!("o{i}"))).collect();
        let inner = TxnRequest {
            success: (0..inner).map(|i| range(&format!("i{i}"))).collect(),
            ..Default::default()
        };
        success.push(RequestOp { request: Some(request_op::Request::RequestTxn(inner)) });
        TxnRequest { success, ..Default::default() }
    };
    let mut kv = KvClient::connect(via(1)).await.unwrap();
    expect_err(
        kv.txn(nested_ops(29)).await,
        tonic::Code::InvalidArgument,
        "etcdserver: too many operations in txn request",
        "nested op budget",
    );
    assert!(kv.txn(nested_ops(28)).await.is_ok(), "28 nested ops under 100 fit the budget");
    // A compare whose target is out of range compares as equal.
    let odd = TxnRequest {
        compare: vec![Compare {
            key: "k".into(),
            target: 99,
            result: compare::CompareResult::Equal as i32,
            target_union: Some(compare::TargetUnion::Version(0)),
            ..Default::default()
        }],
        ..Default::default()
    };
    let mut kv = KvClient::connect(via(2)).await.unwrap();
    assert!(kv.txn(odd).await.unwrap().get_ref().succeeded, "an out-of-range compare target compares equal");
    // count_only with a limit: no `more`.
    for k in ["cnt/a", "cnt/b", "cnt/c"] {
        kv.put(PutRequest { key: k.into(), value: "v".into(), ..Default::default() }).await.unwrap();
    }
    let counted = kv
        .range(RangeRequest {
            key: "cnt/".into(),
            range_end: "cnt0".into(),
            count_only: true,
            limit: 1,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((counted.count, counted.more, counted.kvs.len()), (3, false, 0));
    // A sort target out of range (etcd 3.5.1 crashes on it): refused.
    let e = kv
        .range(RangeRequest {
            key: "cnt/".into(),
            range_end: "cnt0".into(),
            sort_order: 1,
            sort_target: 99,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    // Too large: over the gRPC bound (ResourceExhausted), and over the replicated bound.
    let mut kv = KvClient::connect(via(0)).await.unwrap();
    let huge = PutRequest { key: "big".into(), value: vec![b'x'; 2 << 20].into(), ..Default::default() };
    let e = kv.put(huge).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{e:?}");
    let big = PutRequest { key: "big".into(), value: vec![b'x'; 1572864].into(), ..Default::default() };
    let e = kv.put(big).await.unwrap_err();
    assert_eq!((e.code(), e.message()), (tonic::Code::InvalidArgument, "etcdserver: request is too large"));

    // Watches: a range that ends at or before its key, and a live watch id reused.
    let mut w = WatchClient::connect(via(1)).await.unwrap();
    let create = |key: &str, end: &str, id: i64| WatchRequest {
        request_union: Some(watch_request::RequestUnion::CreateRequest(WatchCreateRequest {
            key: key.to_string().into(),
            range_end: end.to_string().into(),
            watch_id: id,
            ..Default::default()
        })),
    };
    let requests = vec![create("m", "a", 0), create("k", "", 5), create("j", "", 5)];
    let mut stream = w
        .watch(futures::stream::iter(requests).chain(futures::stream::pending()))
        .await
        .unwrap()
        .into_inner();
    let mut answers = Vec::new();
    for _ in 0..3 {
        let r =
            tokio::time::timeout(Duration::from_secs(10), stream.message()).await.unwrap().unwrap().unwrap();
        answers.push((r.watch_id, r.created, r.canceled, r.cancel_reason));
    }
    assert_eq!(
        answers,
        vec![
            (-1, true, true, "mvcc: watcher range is empty".to_string()),
            (5, true, false, String::new()),
            (-1, true, true, "mvcc: duplicate watch ID provided on the WatchStream".to_string()),
        ]
    );
}
