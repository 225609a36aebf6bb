//! Golden interaction tests: scripts under `core/testdata/*.script` drive a cluster of real Raft
//! nodes step by step; everything they do is printed through the `describe_*` functions and
//! compared with `*.golden` beside the script. `KEEL_UPDATE_GOLDEN=1` rewrites the goldens
//! (review the diff: it is the specification).
//!
//! Commands: `add-nodes N [pre-vote=B] [check-quorum=B] [election=T] [inflight=N] [msg-bytes=N]`,
//! `campaign ID`, `tick ID [N]`, `tick-election ID`, `tick-heartbeat ID`, `propose ID DATA`,
//! `propose-conf-change ID add|remove|add-learner NODE`, `add-node ID VOTERS...` (start a new
//! empty node that knows the given voters), `read-index ID CTX`, `transfer-leader ID TO`,
//! `partition A,B C,D`, `isolate ID`, `heal`, `process-ready ID...`, `deliver-msgs [ID]`,
//! `stabilize`, `crash ID`, `restart ID`, `compact ID INDEX`, `status`, `log ID`.

mod support;

use keel_core::raft::{ConfState, Config};
use std::path::Path;
use support::{conf_change, Network};

fn run_script(script: &str) -> String {
    let mut net: Option<Network> = None;
    let mut out = String::new();
    for (n, line) in script.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            out.push_str(line);
            out.push('\n');
            continue;
        }
        out.push_str(&format!("> {line}\n"));
        let words: Vec<&str> = line.split_whitespace().collect();
        let id = |i: usize| -> u64 {
            words
                .get(i)
                .and_then(|w| w.parse().ok())
                .unwrap_or_else(|| panic!("line {}: bad id in {line:?}", n + 1))
        };
        let lines: Vec<String> = match words[0] {
            "add-nodes" => {
                let mut cfg = Config::new(1, 0);
                cfg.pre_vote = false;
                cfg.check_quorum = false;
                for opt in &words[2..] {
                    let (k, v) = opt.split_once('=').expect("option=value");
                    match k {
                        "pre-vote" => cfg.pre_vote = v == "true",
                        "check-quorum" => cfg.check_quorum = v == "true",
                        "election" => cfg.election_ticks = v.parse().unwrap(),
                        "inflight" => cfg.inflight_msgs_max = v.parse().unwrap(),
                        "msg-bytes" => cfg.msg_bytes_max = v.parse().unwrap(),
                        other => panic!("line {}: unknown option {other}", n + 1),
                    }
                }
                let network = Network::new(id(1), cfg);
                let lines = network.describe_status();
                net = Some(network);
                lines
            }
            cmd => {
                let net = net.as_mut().unwrap_or_else(|| panic!("line {}: add-nodes first", n + 1));
                match cmd {
                    "campaign" => {
                        net.node_mut(id(1)).campaign();
                        vec![]
                    }
                    "tick" => {
                        let times = words.get(2).map_or(1, |w| w.parse().unwrap());
                        net.tick(id(1), times);
                        vec![]
                    }
                    "tick-election" => {
                        let t = net.cfg_template.election_ticks * 2;
                        net.tick(id(1), t);
                        vec![]
                    }
                    "tick-heartbeat" => {
                        let t = net.cfg_template.heartbeat_ticks;
                        net.tick(id(1), t);
                        vec![]
                    }
                    "propose" => match net.propose(id(1), words[2]) {
                        Ok(()) => vec![],
                        Err(e) => vec![format!("error: {e}")],
                    },
                    "propose-conf-change" => {
                        let cc = conf_change(words[2], id(3));
                        match net.node_mut(id(1)).propose_conf_change(&cc) {
                            Ok(()) => vec![],
                            Err(e) => vec![format!("error: {e}")],
                        }
                    }
                    "add-node" => {
                        let voters = words[2..].iter().map(|w| w.parse().unwrap()).collect();
                        net.add_node(id(1), ConfState { voters, learners: vec![] });
                        vec![]
                    }
                    "read-index" => match net
                        .node_mut(id(1))
                        .read_index(bytes::Bytes::copy_from_slice(words[2].as_bytes()))
                    {
                        Ok(()) => vec![],
                        Err(e) => vec![format!("error: {e}")],
                    },
                    "transfer-leader" => {
                        net.node_mut(id(1)).transfer_leader(id(2));
                        vec![]
                    }
                    "partition" => {
                        let groups: Vec<Vec<u64>> = words[1..]
                            .iter()
                            .map(|g| g.split(',').map(|x| x.parse().unwrap()).collect())
                            .collect();
                        net.partition(&groups);
                        vec![]
                    }
                    "isolate" => {
                        net.isolate(id(1));
                        vec![]
                    }
                    "heal" => {
                        net.heal();
                        vec![]
                    }
                    "process-ready" => (1..words.len()).flat_map(|i| net.process_ready(id(i))).collect(),
                    "deliver-msgs" => net.deliver(words.get(1).map(|_| id(1))),
                    "stabilize" => net.stabilize(),
                    "crash" => {
                        net.crash(id(1));
                        vec![]
                    }
                    "restart" => {
                        net.restart(id(1));
                        vec![]
                    }
                    "compact" => {
                        let index = id(2);
                        let cs = net.node(id(1)).conf_state();
                        net.node_mut(id(1)).store_mut().compact(index, cs, bytes::Bytes::new());
                        vec![]
                    }
                    "status" => net.describe_status(),
                    "log" => net.describe_log(id(1)),
                    other => panic!("line {}: unknown command {other}", n + 1),
                }
            }
        };
        if let Some(net) = &net {
            net.check_safety();
        }
        for l in lines {
            out.push_str(&l);
            out.push('\n');
        }
    }
    out
}

#[test]
fn golden_interactions() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata");
    let update = std::env::var_os("KEEL_UPDATE_GOLDEN").is_some();
    let mut scripts: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "script"))
        .collect();
    scripts.sort();
    assert!(!scripts.is_empty(), "no scripts in {}", dir.display());
    let mut failed = Vec::new();
    for script in &scripts {
        let got = run_script(&std::fs::read_to_string(script).unwrap());
        let golden = script.with_extension("golden");
        if update {
            std::fs::write(&golden, &got).unwrap();
            continue;
        }
        let want = std::fs::read_to_string(&golden)
            .unwrap_or_else(|_| panic!("{} missing: run with KEEL_UPDATE_GOLDEN=1", golden.display()));
        if got != want {
            let first = got.lines().zip(want.lines()).position(|(g, w)| g != w).unwrap_or(0);
            failed.push(format!(
                "{}: first difference at output line {}:\n  want: {:?}\n  got:  {:?}",
                script.display(),
                first + 1,
                want.lines().nth(first),
                got.lines().nth(first)
            ));
        }
    }
    assert!(failed.is_empty(), "golden mismatches (KEEL_UPDATE_GOLDEN=1 to accept):\n{}", failed.join("\n"));
}
