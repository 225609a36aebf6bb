//! The Rust `etcd-client` crate against Keel and against the real etcd 3.5.1: the same calls
//! must give the same responses (headers included; ids match because both derive them alike).

mod common;

use etcd_client::{Client, DeleteOptions, GetOptions, PutOptions};

/// A comparable rendering of a response: (key, create, mod, version, value, lease) rows.
type Row = (Vec<u8>, i64, i64, i64, Vec<u8>, i64);

fn rows(kvs: &[etcd_client::KeyValue]) -> Vec<Row> {
    kvs.iter()
        .map(|kv| {
            (
                kv.key().to_vec(),
                kv.create_revision(),
                kv.mod_revision(),
                kv.version(),
                kv.value().to_vec(),
                kv.lease(),
            )
        })
        .collect()
}

fn header(h: Option<&etcd_client::ResponseHeader>) -> (u64, u64, i64, u64) {
    let h = h.expect("every response has a header");
    (h.cluster_id(), h.member_id(), h.revision(), h.raft_term())
}

async fn session(endpoint: String) -> Vec<String> {
    let mut c = Client::connect([endpoint], None).await.expect("connect");
    let mut log = Vec::new();
    for (k, v) in [("a/1", "x"), ("a/2", "y"), ("a/3", "z"), ("b", "w"), ("a/1", "x2")] {
        let r = c.put(k, v, Some(PutOptions::new().with_prev_key())).await.unwrap();
        log.push(format!(
            "put {k}: {:?} prev={:?}",
            header(r.header()),
            r.prev_key().map(|kv| kv.value().to_vec())
        ));
    }
    let r = c.get("a/", Some(GetOptions::new().with_prefix())).await.unwrap();
    log.push(format!(
        "prefix: {:?} {:?} count={} more={}",
        header(r.header()),
        rows(r.kvs()),
        r.count(),
        r.more()
    ));
    let r = c.get("a/", Some(GetOptions::new().with_prefix().with_limit(1))).await.unwrap();
    log.push(format!("limit: {:?} count={} more={}", rows(r.kvs()), r.count(), r.more()));
    let r = c.get("a/1", Some(GetOptions::new().with_revision(2))).await.unwrap();
    log.push(format!("at rev 2: {:?} {:?}", header(r.header()), rows(r.kvs())));
    let r = c.get("a/1", Some(GetOptions::new().with_serializable())).await.unwrap();
    log.push(format!("serializable: {:?}", rows(r.kvs())));
    let r = c.delete("a/", Some(DeleteOptions::new().with_prefix().with_prev_key())).await.unwrap();
    log.push(format!(
        "delete: {:?} deleted={} prev={:?}",
        header(r.header()),
        r.deleted(),
        rows(r.prev_kvs())
    ));
    let r = c.delete("nothing", None).await.unwrap();
    log.push(format!("delete nothing: {:?} deleted={}", header(r.header()), r.deleted()));
    let r = c.get("", Some(GetOptions::new().with_all_keys())).await.unwrap();
    log.push(format!("all: {:?}", rows(r.kvs())));
    for err in [
        c.put("", "v", None).await.err(),
        c.get("a/1", Some(GetOptions::new().with_revision(1000))).await.err(),
        c.put("a/9", "v", Some(PutOptions::new().with_ignore_value())).await.err(),
    ] {
        // Clients match on the code and the message; transport metadata (a date) may differ.
        let err = match err {
            Some(etcd_client::Error::GRpcStatus(s)) => format!("{:?}: {}", s.code(), s.message()),
            other => format!("{other:?}"),
        };
        log.push(format!("error: {err}"));
    }
    log
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_client_sees_the_same_answers_as_from_etcd() {
    let pair = common::start_pair();
    let want = session(pair.etcd.endpoint()).await;
    let got = session(pair.keel.endpoint()).await;
    for (w, g) in want.iter().zip(&got) {
        assert_eq!(w, g);
    }
    assert_eq!(want.len(), got.len());
}
