//! etcd's six watch guarantees, each a named property over random workloads (puts, deletes,
//! multi-op txns) and random client behaviour (watchers on keys and ranges from past, present
//! or future revisions; clients that read late, so that watchers fall behind and catch up from
//! history). `KEEL_PROPTEST_CASES` sets the number of cases (default 64).

use bytes::Bytes;
use keel_core::mvcc::Store;
use keel_core::pb::etcdserverpb::{
    request_op::Request as Op, DeleteRangeRequest, PutRequest, RequestOp, ResponseHeader, TxnRequest,
};
use keel_core::pb::mvccpb::Event;
use proptest::prelude::*;
use runtime::watch::{WatchHub, WatchSpec, WatchUpdate};
use tokio::sync::mpsc;

#[derive(Debug, Clone)]
enum Step {
    Put(u8, u8),
    Delete(u8, u8),
    Txn(Vec<(bool, u8)>),
    /// The client of stream `i` reads everything queued.
    Read(usize),
    /// The hub catches lagging watchers up (the node does this every loop).
    CatchUp,
    Progress(usize),
}

fn key(k: u8) -> Bytes {
    Bytes::from(format!("k{}", k % 8))
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        6 => (any::<u8>(), any::<u8>()).prop_map(|(k, v)| Step::Put(k, v)),
        2 => (any::<u8>(), any::<u8>()).prop_map(|(k, n)| Step::Delete(k, n % 3)),
        2 => prop::collection::vec((any::<bool>(), any::<u8>()), 1..4).prop_map(Step::Txn),
        3 => (0..3usize).prop_map(Step::Read),
        2 => Just(Step::CatchUp),
        1 => (0..3usize).prop_map(Step::Progress),
    ]
}

/// One watcher: spec, and everything its stream delivered to it (in order).
struct Client {
    stream: u64,
    rx: mpsc::Receiver<WatchUpdate>,
    /// Per watch id: the event batches received, each with its header revision.
    batches: Vec<Vec<(i64, Vec<Event>)>>,
    specs: Vec<WatchSpec>,
    /// Progress notifications: (revision, number of batches received per watcher at that point).
    progress: Vec<(i64, Vec<usize>)>,
}

impl Client {
    fn read(&mut self) {
        while let Ok(u) = self.rx.try_recv() {
            match u {
                WatchUpdate::Events { watch_id, header, events } => {
                    self.batches[watch_id as usize].push((header.revision, events))
                }
                WatchUpdate::Progress { header } => {
                    self.progress.push((header.revision, self.batches.iter().map(Vec::len).collect()))
                }
                WatchUpdate::Canceled { .. } => panic!("no watcher is canceled without compaction"),
                WatchUpdate::Created { .. } => {}
            }
        }
    }
}

fn in_range(k: &[u8], start: &[u8], end: &[u8]) -> bool {
    if end.is_empty() {
        k == start
    } else {
        k >= start && k < end
    }
}

fn rev_of(e: &Event) -> i64 {
    e.kv.as_ref().unwrap().mod_revision
}

/// etcd's watch guarantees (its API guarantees page), each checked by a test of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Guarantee {
    /// Events are ordered by revision.
    Ordered,
    /// An event is never delivered twice.
    Unique,
    /// No event in the watched range and history is missed.
    Reliable,
    /// The events of one revision come in one response.
    Atomic,
    /// A watch resumed from any revision it saw continues exactly.
    Resumable,
    /// A progress notification at revision R means every event up to R was sent.
    Bookmarkable,
    All,
}

fn run(steps: &[Step], starts: &[i64]) {
    run_checking(steps, starts, Guarantee::All);
}

fn run_checking(steps: &[Step], starts: &[i64], check: Guarantee) {
    let on = |g: Guarantee| check == Guarantee::All || check == g;
    let mut store = Store::new();
    let mut hub = WatchHub::new();
    let mut all_events: Vec<Event> = Vec::new();
    // Some history before the watchers arrive, so that they can start in the past.
    for i in 0..5u8 {
        store.put(&PutRequest { key: key(i), value: Bytes::from(vec![i]), ..Default::default() }).unwrap();
        all_events.extend(store.take_events());
    }
    let h = |store: &Store| ResponseHeader { revision: store.revision(), ..Default::default() };
    let ranges: [(&str, &str); 3] = [("k1", ""), ("k2", "k6"), ("k", "l")];
    let mut clients: Vec<Client> = Vec::new();
    for (i, (start, end)) in ranges.iter().enumerate() {
        let (stream, rx) = hub.open_stream();
        let mut c = Client { stream, rx, batches: Vec::new(), specs: Vec::new(), progress: Vec::new() };
        // Two watchers per stream: one from a past (or current) revision, one from "now".
        for (id, start_revision) in [(0i64, starts[i].clamp(1, store.revision())), (1, 0)] {
            let spec = WatchSpec {
                key: Bytes::from(*start),
                range_end: Bytes::from(*end),
                start_revision,
                ..Default::default()
            };
            hub.create(stream, id, spec.clone(), &store, h(&store));
            c.specs.push(WatchSpec {
                start_revision: if start_revision == 0 { store.revision() + 1 } else { start_revision },
                ..spec
            });
            c.batches.push(Vec::new());
        }
        clients.push(c);
    }
    for s in steps {
        match s {
            Step::Put(k, v) => {
                store
                    .put(&PutRequest { key: key(*k), value: Bytes::from(vec![*v]), ..Default::default() })
                    .unwrap();
            }
            Step::Delete(k, n) => {
                let end = if *n == 0 { Bytes::new() } else { key(k.saturating_add(*n)) };
                store
                    .delete_range(&DeleteRangeRequest { key: key(*k), range_end: end, ..Default::default() })
                    .unwrap();
            }
            Step::Txn(ops) => {
                // Distinct keys (etcd rejects duplicates); puts only, deletes only on other keys.
                let mut used = std::collections::BTreeSet::new();
                let success = ops
                    .iter()
                    .filter(|(_, k)| used.insert(k % 8))
                    .map(|(put, k)| RequestOp {
                        request: Some(if *put {
                            Op::RequestPut(PutRequest {
                                key: key(*k),
                                value: Bytes::from_static(b"t"),
                                ..Default::default()
                            })
                        } else {
                            Op::RequestDeleteRange(DeleteRangeRequest { key: key(*k), ..Default::default() })
                        }),
                    })
                    .collect();
                store.txn(&TxnRequest { compare: vec![], success, failure: vec![] }).unwrap();
            }
            Step::Read(i) => clients[*i].read(),
            Step::CatchUp => hub.catch_up(&store, h(&store)),
            Step::Progress(i) => {
                hub.progress(clients[*i].stream, h(&store));
            }
        }
        let events = store.take_events();
        if !events.is_empty() {
            hub.notify(&events, ResponseHeader { revision: rev_of(&events[0]), ..Default::default() });
            all_events.extend(events);
        }
    }
    // Let every client read everything and every watcher catch up.
    for _ in 0..1000 {
        for c in clients.iter_mut() {
            c.read();
        }
        if !hub.has_unsynced() {
            break;
        }
        hub.catch_up(&store, h(&store));
    }
    for c in clients.iter_mut() {
        c.read();
    }
    assert!(!hub.has_unsynced(), "every watcher caught up once its client read");

    for c in &clients {
        for (w, spec) in c.specs.iter().enumerate() {
            let got: Vec<&Event> = c.batches[w].iter().flat_map(|(_, evs)| evs.iter()).collect();
            if on(Guarantee::Ordered) {
                assert!(got.windows(2).all(|p| rev_of(p[0]) <= rev_of(p[1])), "ordered: {got:?}");
            }
            if on(Guarantee::Atomic) {
                let mut seen_revs = std::collections::BTreeSet::new();
                for (_, batch) in &c.batches[w] {
                    let revs: std::collections::BTreeSet<i64> = batch.iter().map(rev_of).collect();
                    for r in &revs {
                        assert!(seen_revs.insert(*r), "atomic: revision {r} split across responses");
                    }
                }
            }
            if on(Guarantee::Unique) {
                let mut seen = std::collections::BTreeSet::new();
                for e in &got {
                    let id = (rev_of(e), e.kv.as_ref().unwrap().key.clone());
                    assert!(seen.insert(id.clone()), "unique: {id:?} delivered twice");
                }
            }
            // Unique and reliable: exactly the store's events in range from the start revision.
            let want: Vec<&Event> = all_events
                .iter()
                .filter(|e| {
                    rev_of(e) >= spec.start_revision
                        && in_range(&e.kv.as_ref().unwrap().key, &spec.key, &spec.range_end)
                })
                .collect();
            let strip = |evs: Vec<&Event>| -> Vec<Event> {
                evs.into_iter().map(|e| Event { prev_kv: None, ..e.clone() }).collect()
            };
            if on(Guarantee::Reliable) {
                // Every event of the range from the start revision, and nothing else.
                assert_eq!(strip(got.clone()), strip(want.clone()), "reliable: no gap");
            }
            if !on(Guarantee::Resumable) {
                continue;
            }
            if let Some(mid) = got.get(got.len() / 2) {
                let resume = rev_of(mid) + 1;
                let (rest, _) = store
                    .history_events(&spec.key, &spec.range_end, resume, store.revision(), usize::MAX)
                    .unwrap();
                let tail: Vec<&Event> = got.iter().copied().filter(|e| rev_of(e) >= resume).collect();
                assert_eq!(strip(rest.iter().collect()), strip(tail), "resumable from revision {resume}");
            }
        }
        if !on(Guarantee::Bookmarkable) {
            continue;
        }
        for (rev, counts) in &c.progress {
            for (w, spec) in c.specs.iter().enumerate() {
                let delivered: usize = c.batches[w][..counts[w]].iter().map(|(_, evs)| evs.len()).sum();
                let due = all_events
                    .iter()
                    .filter(|e| {
                        rev_of(e) >= spec.start_revision
                            && rev_of(e) <= *rev
                            && in_range(&e.kv.as_ref().unwrap().key, &spec.key, &spec.range_end)
                    })
                    .count();
                assert_eq!(delivered, due, "bookmarkable: progress at {rev} before all its events were sent");
            }
        }
    }
}

fn cases() -> u32 {
    std::env::var("KEEL_PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(64)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    // Each guarantee on its own random workloads, with enough writes to overflow the stream
    // buffers and send watchers back to history.

    #[test]
    fn ordered(steps in prop::collection::vec(step(), 0..800), starts in prop::collection::vec(1i64..8, 3)) {
        run_checking(&steps, &starts, Guarantee::Ordered);
    }

    #[test]
    fn unique(steps in prop::collection::vec(step(), 0..800), starts in prop::collection::vec(1i64..8, 3)) {
        run_checking(&steps, &starts, Guarantee::Unique);
    }

    #[test]
    fn reliable(steps in prop::collection::vec(step(), 0..800), starts in prop::collection::vec(1i64..8, 3)) {
        run_checking(&steps, &starts, Guarantee::Reliable);
    }

    #[test]
    fn atomic(steps in prop::collection::vec(step(), 0..800), starts in prop::collection::vec(1i64..8, 3)) {
        run_checking(&steps, &starts, Guarantee::Atomic);
    }

    #[test]
    fn resumable(steps in prop::collection::vec(step(), 0..800), starts in prop::collection::vec(1i64..8, 3)) {
        run_checking(&steps, &starts, Guarantee::Resumable);
    }

    #[test]
    fn bookmarkable(steps in prop::collection::vec(step(), 0..800), starts in prop::collection::vec(1i64..8, 3)) {
        run_checking(&steps, &starts, Guarantee::Bookmarkable);
    }
}

#[test]
fn slow_consumer_overflow_is_exercised() {
    // Far more writes than a stream buffers, read only at the end.
    let steps: Vec<Step> = (0..2000).map(|i| Step::Put((i % 8) as u8, i as u8)).collect();
    run(&steps, &[1, 2, 3]);
}
