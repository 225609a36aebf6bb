//! The workloads beyond the register (multi-key txns and ranges, leases, watches): what their
//! clients asked and were told, and the checks of it against the [`Model`] of the committed log
//! (see `model.rs` for what is checked and why).

use crate::model::{observed, Model, Outcome};
use keel_core::pb::etcdserverpb::RangeRequest;
use keel_core::pb::keelpb::request::Op;
use keel_core::pb::mvccpb::Event;
use keel_core::state_machine::{ApplyError, WriteResponse};
use prost::bytes::Bytes;
use std::collections::BTreeMap;

/// The new workloads' knobs, drawn per seed from their own stream (swarm testing: each seed
/// runs some of them, or none).
#[derive(Debug, Clone)]
pub struct Workload {
    /// Clients running multi-key txns, puts, range deletes and ranges.
    pub kv_clients: usize,
    /// Clients granting, attaching, keeping alive and revoking leases.
    pub lease_clients: usize,
    /// Watchers, each on some member, moving to another when it crashes.
    pub watchers: usize,
    /// Chance per step (%) that a watcher reads its stream: low values make watchers fall
    /// behind and catch up from history.
    pub watch_read_pct: u32,
    /// Chance per kv client op (‰) of a compaction.
    pub compact_per_mille: u32,
}

/// One request of the new workloads.
#[derive(Debug, Clone)]
pub enum KvRequest {
    /// Proposed through Raft: a put, delete, txn, lease grant or revoke, or compaction.
    Write(Op),
    /// A linearizable range (ReadIndex, then served from the member's store).
    Read(RangeRequest),
}

#[derive(Debug, Clone)]
pub enum KvOutput {
    Write(Result<WriteResponse, ApplyError>),
    Read(keel_core::pb::etcdserverpb::RangeResponse),
}

#[derive(Debug, Clone)]
pub struct KvOp {
    pub client: usize,
    /// The request id (a write) or ReadIndex context (a read).
    pub id: u64,
    pub request: KvRequest,
    pub call: u64,
    /// `None`: unknown outcome (the client gave up).
    pub ret: Option<(u64, KvOutput)>,
    /// Refused at once by the member (no leader known): it must never reach the log.
    pub refused: bool,
}

/// What a watcher received, as its client saw it.
#[derive(Debug, Clone)]
pub enum WatchItem {
    Created(i64),
    Events(i64, Vec<Event>),
    Progress(i64),
    Canceled { compact_revision: i64, reason: String },
}

/// One watch, created on one member, until that member crashed, the client moved or the watch
/// was canceled.
#[derive(Debug, Clone)]
pub struct WatchSession {
    pub node: u64,
    pub key: Bytes,
    pub range_end: Bytes,
    pub prev_kv: bool,
    /// The start revision asked for; 0 is "from now".
    pub start: i64,
    pub items: Vec<WatchItem>,
}

/// Counts of what the checks covered.
#[derive(Debug, Default)]
pub struct Checked {
    pub txns_ok: usize,
    pub reads_ok: usize,
    pub watch_events: usize,
}

/// Every acknowledged reply against the model, refusals against the log, and real-time order
/// against revision order.
pub fn check_kv_ops(seed: u64, model: &Model, ops: &[KvOp], checked: &mut Checked) {
    // (call, return, revision, whether it made a revision) of each completed op with a revision.
    let mut timed: Vec<(u64, u64, i64, bool)> = Vec::new();
    for op in ops {
        if op.refused {
            assert!(
                !model.outcomes.contains_key(&op.id),
                "SIM_SEED={seed}: a request refused at once reached the log: {op:?}"
            );
            continue;
        }
        let Some((ret, output)) = &op.ret else { continue };
        match (&op.request, output) {
            (KvRequest::Write(w), KvOutput::Write(result)) => {
                let outcome = model.outcomes.get(&op.id).unwrap_or_else(|| {
                    panic!("SIM_SEED={seed}: an acknowledged write is not in the committed log: {op:?}")
                });
                match outcome {
                    Outcome::Kv { revision, changed, succeeded, results } => {
                        let got = observed(result);
                        assert_eq!(
                            got,
                            Some((*revision, *succeeded, results.clone())),
                            "SIM_SEED={seed}: reply differs from the model's (revision, branch, results) for \
                             {w:?}"
                        );
                        if matches!(w, Op::Txn(_)) {
                            checked.txns_ok += 1;
                        }
                        timed.push((op.call, *ret, *revision, *changed));
                    }
                    Outcome::Error => {
                        assert!(
                            result.is_err(),
                            "SIM_SEED={seed}: the model refuses {w:?}, Keel answered {result:?}"
                        )
                    }
                    Outcome::LeaseGrant => assert!(
                        matches!(result, Ok(WriteResponse::LeaseGrant(_))),
                        "SIM_SEED={seed}: {w:?} answered {result:?}"
                    ),
                    Outcome::LeaseRevoke { revision, keys } => {
                        assert!(
                            matches!(result, Ok(WriteResponse::LeaseRevoke(_))),
                            "SIM_SEED={seed}: {w:?} answered {result:?}"
                        );
                        if *keys > 0 {
                            timed.push((op.call, *ret, *revision, true));
                        }
                    }
                    Outcome::Compaction => assert!(
                        matches!(result, Ok(WriteResponse::Compaction(_))),
                        "SIM_SEED={seed}: {w:?} answered {result:?}"
                    ),
                    Outcome::Other => {}
                }
            }
            (KvRequest::Read(r), KvOutput::Read(resp)) => {
                let rev = resp.header.as_ref().expect("a header").revision;
                assert!(
                    rev <= model.revision(),
                    "SIM_SEED={seed}: a read at {rev}, beyond the log's revisions"
                );
                let want = model.range_at(&r.key, &r.range_end, rev);
                assert_eq!(
                    resp.kvs, want,
                    "SIM_SEED={seed}: range {:?}..{:?} at revision {rev} differs from the model's state there",
                    r.key, r.range_end
                );
                checked.reads_ok += 1;
                timed.push((op.call, *ret, rev, false));
            }
            (r, o) => panic!("SIM_SEED={seed}: {r:?} answered {o:?}"),
        }
    }
    // Real time agrees with revision order: sweep ops by invocation, with the highest revision
    // of every op that completed strictly before.
    let mut by_ret: Vec<(u64, i64)> = timed.iter().map(|&(_, ret, rev, _)| (ret, rev)).collect();
    by_ret.sort();
    timed.sort();
    let (mut j, mut max_before) = (0, 0);
    for &(call, _, rev, changed) in &timed {
        while j < by_ret.len() && by_ret[j].0 < call {
            max_before = max_before.max(by_ret[j].1);
            j += 1;
        }
        assert!(
            rev >= max_before,
            "SIM_SEED={seed}: an op invoked at step {call} saw revision {rev}, older than {max_before} which an \
             op completed before it had"
        );
        assert!(
            !changed || rev > max_before,
            "SIM_SEED={seed}: a write invoked at step {call} made revision {rev}, not after {max_before} of an \
             op completed before it"
        );
    }
}

/// What a watch session must have received: exactly the model's events in its range from its
/// start on, in order, each revision whole, without duplicates or gaps; progress never ahead;
/// canceled as compacted only when it needed a compacted revision. Returns the next revision
/// the watcher is owed (everything below it was received or announced by progress).
pub fn check_watch(seed: u64, model: &Model, s: &WatchSession, checked: &mut Checked) -> i64 {
    let ctx = |what: &str| format!("SIM_SEED={seed}: watch on node {} from {}: {what}", s.node, s.start);
    let mut items = s.items.iter();
    let mut next = match items.next() {
        None => return s.start,
        Some(WatchItem::Created(_)) if s.start > 0 => s.start,
        Some(WatchItem::Created(h)) => h + 1,
        Some(other) => panic!("{}", ctx(&format!("the first response is not the creation: {other:?}"))),
    };
    let mut canceled = false;
    for item in items {
        assert!(
            !canceled,
            "{}",
            ctx(&format!("a response after the cancellation: {item:?}; all: {:?}", s.items))
        );
        match item {
            WatchItem::Created(_) => panic!("{}", ctx("created twice")),
            WatchItem::Events(h, evs) if evs.is_empty() => next = progress(model, s, next, *h, &ctx),
            WatchItem::Progress(h) => next = progress(model, s, next, *h, &ctx),
            WatchItem::Events(h, evs) => {
                let mut i = 0;
                while i < evs.len() {
                    let rev = evs[i].kv.as_ref().expect("an event has a kv").mod_revision;
                    let mut j = i;
                    while j < evs.len() && evs[j].kv.as_ref().unwrap().mod_revision == rev {
                        j += 1;
                    }
                    assert!(
                        rev >= next,
                        "{}",
                        ctx(&format!(
                            "events of revision {rev} after {} (duplicated or out of order)",
                            next - 1
                        ))
                    );
                    let missed = model.event_revisions(next, rev - 1, &s.key, &s.range_end);
                    assert!(
                        missed.is_empty(),
                        "{}",
                        ctx(&format!("revisions {missed:?} missed before {rev}"))
                    );
                    let mut want = model.events_at(rev, &s.key, &s.range_end, s.prev_kv);
                    let delivered = &evs[i..j];
                    want.retain(|w| {
                        !model.optional(rev, w)
                            || delivered.iter().any(|g| g.kv == w.kv && g.r#type == w.r#type)
                    });
                    // etcd reads a prev_kv at the revision before the event's, and sends none
                    // when a compaction has removed that revision by then (so does Keel): a
                    // missing prev_kv is owed only if no compaction reached the event's revision.
                    let compacted_past = model.compactions().range(rev..).next().is_some();
                    for (w, got) in want.iter_mut().zip(&evs[i..j]) {
                        if compacted_past && got.prev_kv.is_none() {
                            w.prev_kv = None;
                        }
                    }
                    assert_eq!(
                        &evs[i..j],
                        &want[..],
                        "{}",
                        ctx(&format!(
                            "revision {rev} delivered differently (not whole, or not as committed)"
                        ))
                    );
                    assert!(rev <= *h, "{}", ctx(&format!("events of {rev} under a header of {h}")));
                    checked.watch_events += j - i;
                    next = rev + 1;
                    i = j;
                }
            }
            WatchItem::Canceled { compact_revision, reason } => {
                assert!(*compact_revision > 0, "{}", ctx(&format!("canceled without compaction: {reason}")));
                assert!(
                    next < *compact_revision,
                    "{}",
                    ctx(&format!("canceled as compacted at {compact_revision}, needing only {next} on"))
                );
                assert!(
                    model.compactions().contains(compact_revision),
                    "{}",
                    ctx(&format!("compacted at {compact_revision}, where no committed compaction was"))
                );
                canceled = true;
            }
        }
    }
    if canceled {
        i64::MAX
    } else {
        next
    }
}

fn progress(model: &Model, s: &WatchSession, next: i64, rev: i64, ctx: &dyn Fn(&str) -> String) -> i64 {
    let unsent = model.event_revisions(next, rev, &s.key, &s.range_end);
    assert!(
        unsent.is_empty(),
        "{}",
        ctx(&format!("a progress notification at {rev} ran ahead of revisions {unsent:?}"))
    );
    next.max(rev + 1)
}

/// A member's store against the model: every revision it keeps reads as the model's state.
pub fn check_store(seed: u64, id: u64, model: &Model, store: &keel_core::mvcc::Store) {
    let all = |revision| RangeRequest {
        key: Bytes::from_static(b"\0"),
        range_end: Bytes::from_static(b"\0"),
        revision,
        ..Default::default()
    };
    let current = store.revision();
    assert!(current <= model.revision(), "SIM_SEED={seed}: node {id} at revision {current}, beyond the log");
    for rev in store.compacted().max(1)..=current {
        let got =
            store.range(&all(rev)).unwrap_or_else(|e| panic!("SIM_SEED={seed}: node {id} at {rev}: {e}"));
        assert_eq!(
            got.kvs,
            model.range_at(b"\0", b"\0", rev),
            "SIM_SEED={seed}: node {id}'s store at revision {rev} differs from the model's"
        );
    }
}

/// Leases the sim granted: the TTL each was granted with (after the minimum), by id.
pub type LeaseTtls = BTreeMap<i64, i64>;
