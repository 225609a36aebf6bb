//! The v3lock Lock and v3election Election services, through the Rust `etcd-client` crate,
//! against etcd 3.5.1 and Keel: the second locker (campaigner) waits for the first to unlock
//! (resign), proclaim changes the leader's value, and both servers tell the same story.

mod common;

use etcd_client::{Client, LockOptions, ProclaimOptions, ResignOptions};
use std::time::Duration;

/// Replaces a lease id in hex with a placeholder.
fn norm(s: &str, leases: &[i64]) -> String {
    let mut s = s.to_string();
    for (i, l) in leases.iter().enumerate() {
        s = s.replace(&format!("{l:x}"), &format!("<lease{i}>"));
    }
    s
}

async fn session(endpoint: String) -> Vec<String> {
    let mut c = Client::connect([endpoint.clone()], None).await.unwrap();
    let l1 = c.lease_grant(60, None).await.unwrap().id();
    let l2 = c.lease_grant(60, None).await.unwrap().id();
    let leases = [l1, l2];
    let mut log = Vec::new();

    let first = c.lock("svc", Some(LockOptions::new().with_lease(l1))).await.unwrap();
    let first_key = first.key().to_vec();
    log.push(norm(&format!("locked {}", String::from_utf8_lossy(&first_key)), &leases));
    let mut c2 = Client::connect([endpoint.clone()], None).await.unwrap();
    let second = tokio::spawn(async move { c2.lock("svc", Some(LockOptions::new().with_lease(l2))).await });
    // The second locker must still be waiting: absence of progress is observed over a while.
    tokio::time::sleep(Duration::from_millis(500)).await;
    log.push(format!("second done before unlock: {}", second.is_finished()));
    c.unlock(first_key).await.unwrap();
    let second = tokio::time::timeout(Duration::from_secs(10), second)
        .await
        .expect("second locker woke")
        .unwrap()
        .unwrap();
    log.push(norm(&format!("second locked {}", String::from_utf8_lossy(second.key())), &leases));
    c.unlock(second.key().to_vec()).await.unwrap();

    let won = c.campaign("elec", "v1", l1).await.unwrap();
    let leader_key = won.leader().unwrap().clone();
    log.push(norm(&format!("campaign: {:?}", String::from_utf8_lossy(leader_key.key())), &leases));
    let show = |r: etcd_client::LeaderResponse| String::from_utf8_lossy(r.kv().unwrap().value()).into_owned();
    log.push(format!("leader: {}", show(c.leader("elec").await.unwrap())));
    c.proclaim("v1b", Some(ProclaimOptions::new().with_leader(leader_key.clone()))).await.unwrap();
    log.push(format!("after proclaim: {}", show(c.leader("elec").await.unwrap())));
    let mut c3 = Client::connect([endpoint.clone()], None).await.unwrap();
    let challenger = tokio::spawn(async move { c3.campaign("elec", "v2", l2).await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    log.push(format!("challenger won before resign: {}", challenger.is_finished()));
    c.resign(Some(ResignOptions::new().with_leader(leader_key))).await.unwrap();
    let won2 = tokio::time::timeout(Duration::from_secs(10), challenger)
        .await
        .expect("challenger won")
        .unwrap()
        .unwrap();
    log.push(norm(
        &format!("challenger: {:?}", String::from_utf8_lossy(won2.leader().unwrap().key())),
        &leases,
    ));
    log.push(format!("leader: {}", show(c.leader("elec").await.unwrap())));
    let no_leader = c.leader("nobody").await.err().map(|e| match e {
        etcd_client::Error::GRpcStatus(s) => format!("{:?} {}", s.code(), s.message()),
        other => other.to_string(),
    });
    log.push(format!("no leader: {no_leader:?}"));
    log
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_and_election_services_match_etcd() {
    let pair = common::start_pair();
    let want = session(pair.etcd.endpoint()).await;
    let got = session(pair.keel.endpoint()).await;
    assert_eq!(want, got);
}
