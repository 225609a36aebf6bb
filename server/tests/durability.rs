//! Durability through the real binary: many concurrent clients write, the server is killed with
//! SIGKILL mid-load, restarted, and every acknowledged write must be there, at the revision it
//! was acknowledged with. Repeated over several crash/restart cycles (KEEL_DURABILITY_CYCLES,
//! default 3). The image is saved every 20 entries, and a client keeps asking for the whole
//! state's hash meanwhile (each answer checkpoints the image on the node task), so checkpoints
//! and background saves race: a checkpoint that overtook a save in flight once made the save
//! be dropped, and the keys it held were lost at the next restart.

mod common;

use etcd_client::{Client, GetOptions};
use jepsen::{free_port, provision, MemberSpec, Server};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio::sync::mpsc;

const WRITERS: usize = 16;
/// Acknowledgements to wait for before the kill, so the kill lands mid-load.
const ACKS_BEFORE_KILL: usize = 400;

/// key -> (value, revision it was acknowledged at)
type Acked = BTreeMap<String, (String, i64)>;

async fn verify(endpoint: &str, acked: &Acked, max_rev: i64) {
    let mut client = Client::connect([endpoint], None).await.expect("connect");
    let resp = client.get("c", Some(GetOptions::new().with_prefix())).await.expect("read back");
    let found: BTreeMap<String, (String, i64)> = resp
        .kvs()
        .iter()
        .map(|kv| {
            (kv.key_str().unwrap().to_string(), (kv.value_str().unwrap().to_string(), kv.mod_revision()))
        })
        .collect();
    let rev = resp.header().expect("header").revision();
    assert!(rev >= max_rev, "store revision {rev} is below the last acknowledged revision {max_rev}");
    let mut lost = Vec::new();
    for (k, want) in acked {
        match found.get(k) {
            Some(got) if got == want => {}
            other => lost.push(format!("{k}: acknowledged {want:?}, found {other:?}")),
        }
    }
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged writes lost or changed: {:?}",
        lost.len(),
        acked.len(),
        &lost[..lost.len().min(10)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_sigkill_mid_load() {
    let bins = provision();
    let dir = tempfile::tempdir().unwrap();
    let cycles: usize =
        std::env::var("KEEL_DURABILITY_CYCLES").ok().and_then(|v| v.parse().ok()).unwrap_or(3);
    // The same peer URL on every restart: it decides the member id the data directory holds.
    let peer = format!("http://127.0.0.1:{}", free_port());
    let mut acked = Acked::new();
    let mut max_rev = 0i64;
    for cycle in 0..cycles {
        let spec = MemberSpec { client_port: free_port(), ..common::spec(dir.path(), "durable", &peer) };
        let flags = ["--snapshot-count=20".to_string()];
        let mut server = Server::start_with("keel", &common::keel_bin(), spec, &flags, &bins.etcdctl);
        let endpoint = server.endpoint();
        verify(&endpoint, &acked, max_rev).await;

        let stop = Arc::new(AtomicBool::new(false));
        let (tx, mut rx) = mpsc::unbounded_channel::<(String, String, i64)>();
        let mut writers = Vec::new();
        for w in 0..WRITERS {
            let (tx, stop, endpoint) = (tx.clone(), stop.clone(), endpoint.clone());
            writers.push(tokio::spawn(async move {
                let Ok(mut client) = Client::connect([endpoint], None).await else { return };
                for i in 0.. {
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    let (k, v) = (format!("c{cycle}/w{w}/{i}"), format!("v{cycle}.{w}.{i}"));
                    match client.put(k.clone(), v.clone(), None).await {
                        Ok(resp) => {
                            let _ = tx.send((k, v, resp.header().expect("header").revision()));
                        }
                        // The server is gone: what was not acknowledged may or may not be there.
                        Err(_) => return,
                    }
                }
            }));
        }
        let hasher = {
            let (stop, endpoint) = (stop.clone(), endpoint.clone());
            tokio::spawn(async move {
                let Ok(mut client) = Client::connect([endpoint], None).await else { return };
                while !stop.load(Ordering::Relaxed) && client.hash().await.is_ok() {}
            })
        };
        drop(tx);
        let mut this_cycle = 0;
        while this_cycle < ACKS_BEFORE_KILL {
            let (k, v, rev) = rx.recv().await.expect("writers stopped before the kill");
            max_rev = max_rev.max(rev);
            acked.insert(k, (v, rev));
            this_cycle += 1;
        }
        let status = server.proc.signal_and_wait(libc::SIGKILL);
        assert!(!status.success(), "SIGKILL must kill the server");
        stop.store(true, Ordering::Relaxed);
        for w in writers {
            w.await.unwrap();
        }
        hasher.await.unwrap();
        while let Ok((k, v, rev)) = rx.try_recv() {
            max_rev = max_rev.max(rev);
            acked.insert(k, (v, rev));
        }
        eprintln!("cycle {cycle}: {} acknowledged writes so far, last revision {max_rev}", acked.len());
    }
    let spec = MemberSpec { client_port: free_port(), ..common::spec(dir.path(), "durable", &peer) };
    let server = Server::start("keel", &common::keel_bin(), spec, &bins.etcdctl);
    verify(&server.endpoint(), &acked, max_rev).await;
    assert!(acked.len() >= cycles * ACKS_BEFORE_KILL);
}
