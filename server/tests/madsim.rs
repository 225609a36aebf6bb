//! The madsim tier: three real `keel` servers (the `server` and `runtime` crates as they ship,
//! tonic and tokio through madsim) in madsim's deterministic simulator, with a leader killed
//! and restarted and a member cut off by the network. Run it with `cargo simtest` (the alias
//! builds with `--cfg madsim` in its own target directory); `MADSIM_TEST_SEED` picks the seed.
//!
//! Without the cfg this file is one test that fails, saying how to run the tier: a plain build
//! must not pass it with zero tests.

#[cfg(not(madsim))]
#[test]
#[ignore = "the madsim tier runs under `cargo simtest`"]
fn madsim_tier_needs_cargo_simtest() {
    panic!("the madsim tier only runs built with --cfg madsim: use `cargo simtest`");
}

#[cfg(madsim)]
mod tier {
    use madsim::runtime::Handle;
    use server::config::Config;
    use server::pb::etcdserverpb::kv_client::KvClient;
    use server::pb::etcdserverpb::{PutRequest, RangeRequest};
    use std::net::SocketAddr;
    use std::time::Duration;

    const MEMBERS: usize = 3;

    fn ip(i: usize) -> std::net::IpAddr {
        format!("10.0.0.{}", i + 1).parse().unwrap()
    }

    fn config(i: usize, dir: &std::path::Path) -> Config {
        let cluster: Vec<String> = (0..MEMBERS).map(|j| format!("m{j}=http://{}:2380", ip(j))).collect();
        let client = format!("http://{}:2379", ip(i));
        let peer = format!("http://{}:2380", ip(i));
        let args = [
            format!("--name=m{i}"),
            format!("--data-dir={}", dir.join(format!("m{i}")).display()),
            format!("--listen-client-urls={client}"),
            format!("--advertise-client-urls={client}"),
            format!("--listen-peer-urls={peer}"),
            format!("--initial-advertise-peer-urls={peer}"),
            format!("--initial-cluster={}", cluster.join(",")),
            "--initial-cluster-token=madsim".to_string(),
            "--snapshot-count=50".to_string(),
        ];
        <Config as clap::Parser>::try_parse_from(std::iter::once("keel".to_string()).chain(args)).unwrap()
    }

    /// Puts through any member until one accepts (elections and failovers take a moment).
    async fn put(key: &str, value: &str) -> u32 {
        for attempt in 0..200u32 {
            let addr = SocketAddr::new(ip(attempt as usize % MEMBERS), 2379);
            if let Ok(mut c) = KvClient::connect(format!("http://{addr}")).await {
                let req = PutRequest {
                    key: key.as_bytes().to_vec().into(),
                    value: value.as_bytes().to_vec().into(),
                    ..Default::default()
                };
                if let Ok(Ok(_)) = madsim::time::timeout(Duration::from_secs(3), c.put(req)).await {
                    return attempt;
                }
            }
            madsim::time::sleep(Duration::from_millis(200)).await;
        }
        panic!("put {key} never succeeded");
    }

    async fn count(member: usize, prefix: &str) -> Option<i64> {
        let mut c = KvClient::connect(format!("http://{}:2379", ip(member))).await.ok()?;
        let mut end = prefix.as_bytes().to_vec();
        *end.last_mut().unwrap() += 1;
        let req = RangeRequest {
            key: prefix.as_bytes().to_vec().into(),
            range_end: end.into(),
            count_only: true,
            ..Default::default()
        };
        let r = madsim::time::timeout(Duration::from_secs(3), c.range(req)).await.ok()?.ok()?;
        Some(r.into_inner().count)
    }

    #[madsim::test]
    async fn three_members_under_kills_and_partitions() {
        let handle = Handle::current();
        let dir = tempfile::tempdir().unwrap();
        let mut nodes = Vec::new();
        for i in 0..MEMBERS {
            let cfg = config(i, dir.path());
            let node = handle
                .create_node()
                .name(format!("m{i}"))
                .ip(ip(i))
                .init(move || {
                    let cfg = cfg.clone();
                    async move {
                        let (_tx, rx) = tokio::sync::watch::channel(false);
                        if let Err(e) = server::run(cfg, rx).await {
                            panic!("keel stopped: {e}");
                        }
                    }
                })
                .build();
            nodes.push(node);
        }
        let client = handle.create_node().name("client").ip("10.0.0.100".parse().unwrap()).build();
        let net = madsim::net::NetSim::current();
        let ids: Vec<_> = nodes.iter().map(|n| n.id()).collect();
        client
            .spawn(async move {
                for i in 0..100 {
                    put(&format!("k{i:03}"), "v").await;
                }
                // Kill a member and restart it: it recovers from its image and WAL.
                Handle::current().kill(ids[0]);
                for i in 100..200 {
                    put(&format!("k{i:03}"), "v").await;
                }
                Handle::current().restart(ids[0]);
                // Cut another member off, write more, heal.
                net.clog_node(ids[1]);
                for i in 200..300 {
                    put(&format!("k{i:03}"), "v").await;
                }
                net.unclog_node(ids[1]);
                // Every member ends up with every acknowledged key.
                for m in 0..MEMBERS {
                    let mut n = None;
                    for _ in 0..300 {
                        n = count(m, "k").await;
                        if n == Some(300) {
                            break;
                        }
                        madsim::time::sleep(Duration::from_millis(100)).await;
                    }
                    assert_eq!(n, Some(300), "member m{m} has every acknowledged key");
                }
            })
            .await
            .unwrap();
    }
}
