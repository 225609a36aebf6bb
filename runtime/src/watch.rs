//! The watch hub: which watchers exist, where their events go, and how a watcher that fell
//! behind catches up from history. Owned by the node task (which also owns the store), so every
//! watcher sees exactly the events of applied revisions, in order, with no gap and no duplicate.
//!
//! Each client stream has one bounded channel. A watcher is *synced* while it receives events
//! live as entries apply; when its stream's channel is full it becomes *unsynced* at the
//! revision it missed, and catches up from the store's history in bounded batches once the
//! channel has room — so a slow consumer costs bounded memory, never an unbounded queue. A
//! watcher whose next revision has been compacted away is canceled with `compact_revision`.

use keel_core::mvcc::range::in_range;
use keel_core::mvcc::{MvccError, Store};
use keel_core::pb::etcdserverpb::ResponseHeader;
use keel_core::pb::mvccpb::{event::EventType, Event};
use std::collections::{BTreeMap, HashMap};
use tokio::sync::mpsc;

/// Bound on updates queued for one client stream.
pub const STREAM_BUFFER_MAX: usize = 256;
/// Bound on events in one catch-up batch (a revision is never split, so it may exceed this by
/// the events of one revision).
pub const CATCH_UP_EVENTS_MAX: usize = 1000;
/// Bound on catch-up batches per pass, so catching up never stalls the node task.
pub const CATCH_UP_BATCHES_PER_PASS: usize = 16;
/// Bound on watchers on one stream and in all.
pub const WATCHERS_PER_STREAM_MAX: usize = 1024;
pub const WATCHERS_MAX: usize = 64 * 1024;

/// What a client asked to watch.
#[derive(Debug, Clone, Default)]
pub struct WatchSpec {
    pub key: bytes::Bytes,
    pub range_end: bytes::Bytes,
    /// First revision to report; 0 means "from the next one".
    pub start_revision: i64,
    pub no_put: bool,
    pub no_delete: bool,
    pub prev_kv: bool,
    /// Send an empty (progress) response after this many quiet progress ticks.
    pub progress_notify: bool,
}

/// What the hub tells a client stream; the server turns it into a `WatchResponse`.
#[derive(Debug, Clone, PartialEq)]
pub enum WatchUpdate {
    Created {
        watch_id: i64,
        header: ResponseHeader,
    },
    Events {
        watch_id: i64,
        header: ResponseHeader,
        events: Vec<Event>,
    },
    /// `created`: the watch was refused at its creation (etcd answers such a create with
    /// `created` and `canceled` both set and watch id -1).
    Canceled {
        watch_id: i64,
        header: ResponseHeader,
        compact_revision: i64,
        reason: String,
        created: bool,
    },
    Progress {
        header: ResponseHeader,
    },
}

struct Watcher {
    spec: WatchSpec,
    /// Every revision below this has been delivered (or had nothing for this watcher).
    next_rev: i64,
    synced: bool,
    /// Progress ticks since this watcher was last sent anything.
    quiet_ticks: u32,
}

/// Every keyed by (stream, watch id).
#[derive(Default)]
pub struct WatchHub {
    streams: HashMap<u64, mpsc::Sender<WatchUpdate>>,
    watchers: BTreeMap<(u64, i64), Watcher>,
    next_stream: u64,
}

/// Why etcd's `watchStream.Watch` refuses a watch whose range end is at or below its key.
pub const EMPTY_RANGE: &str = "mvcc: watcher range is empty";
/// Why etcd's `watchStream.Watch` refuses a client-chosen watch id already in use on the stream.
pub const DUPLICATE_ID: &str = "mvcc: duplicate watch ID provided on the WatchStream";
/// Why Keel refuses a watch beyond its bounds on watchers (etcd has none).
pub const TOO_MANY_WATCHERS: &str = "etcdserver: too many watchers";

/// Tells a client its watch was not created, and why: as etcd, a response that is both
/// `created` and `canceled`, with watch id -1.
fn refuse(tx: &mpsc::Sender<WatchUpdate>, header: ResponseHeader, reason: &str) {
    let _ = tx.try_send(WatchUpdate::Canceled {
        watch_id: -1,
        header,
        compact_revision: 0,
        reason: reason.to_string(),
        created: true,
    });
}

impl WatchSpec {
    /// etcd's check: a range end other than `"\0"` (every key from the key on) at or below the
    /// key selects nothing.
    pub fn is_empty_range(&self) -> bool {
        !self.range_end.is_empty() && self.range_end[..] != [0] && self.key >= self.range_end
    }
}

impl WatchSpec {
    fn select(&self, events: &[Event]) -> Vec<Event> {
        events
            .iter()
            .filter(|e| {
                let key = e.kv.as_ref().map(|kv| &kv.key[..]).unwrap_or_default();
                let put = e.r#type == EventType::Put as i32;
                in_range(key, &self.key, &self.range_end) && !(put && self.no_put) && (put || !self.no_delete)
            })
            .map(|e| {
                let mut e = e.clone();
                if !self.prev_kv {
                    e.prev_kv = None;
                }
                e
            })
            .collect()
    }
}

impl WatchHub {
    pub fn new() -> Self {
        WatchHub::default()
    }

    /// A new client stream: its id and the receiving end of its channel.
    pub fn open_stream(&mut self) -> (u64, mpsc::Receiver<WatchUpdate>) {
        let (tx, rx) = mpsc::channel(STREAM_BUFFER_MAX);
        self.next_stream += 1;
        self.streams.insert(self.next_stream, tx);
        (self.next_stream, rx)
    }

    /// Forgets a stream and its watchers: only its own watchers are visited (a scan of every
    /// watcher per stream made closing 10,000 streams at once hold up the node task for
    /// seconds, and their memory with it).
    pub fn close_stream(&mut self, stream: u64) {
        self.streams.remove(&stream);
        let ids: Vec<i64> =
            self.watchers.range((stream, i64::MIN)..=(stream, i64::MAX)).map(|((_, id), _)| *id).collect();
        for id in ids {
            self.watchers.remove(&(stream, id));
        }
    }

    /// Forgets streams whose client stopped reading (the receiving end is gone). The stream
    /// table gives back its room once most of it is free, so that a burst of streams leaves
    /// nothing behind.
    pub fn purge_closed(&mut self) {
        let closed: Vec<u64> =
            self.streams.iter().filter(|(_, tx)| tx.is_closed()).map(|(id, _)| *id).collect();
        for s in closed {
            self.close_stream(s);
        }
        if self.streams.capacity() > 64 && self.streams.len() < self.streams.capacity() / 4 {
            self.streams.shrink_to_fit();
        }
    }

    pub fn watcher_count(&self) -> usize {
        self.watchers.len()
    }

    /// Registers a watcher; its `Created` update goes out before any of its events.
    pub fn create(
        &mut self,
        stream: u64,
        watch_id: i64,
        spec: WatchSpec,
        store: &Store,
        header: ResponseHeader,
    ) {
        let Some(tx) = self.streams.get(&stream) else { return };
        // In etcd's order: the range, then the id, then (Keel's own) the bounds.
        if spec.is_empty_range() {
            refuse(tx, header, EMPTY_RANGE);
            return;
        }
        if self.watchers.contains_key(&(stream, watch_id)) {
            // A client-chosen id already in use: refuse it, keep the existing watcher.
            refuse(tx, header, DUPLICATE_ID);
            return;
        }
        let on_stream = self.watchers.range((stream, i64::MIN)..=(stream, i64::MAX)).count();
        if on_stream >= WATCHERS_PER_STREAM_MAX || self.watchers.len() >= WATCHERS_MAX {
            refuse(tx, header, TOO_MANY_WATCHERS);
            return;
        }
        if tx.try_send(WatchUpdate::Created { watch_id, header }).is_err() {
            // The client is not reading; its stream will be closed.
            return;
        }
        let current = store.revision();
        let next_rev = if spec.start_revision <= 0 { current + 1 } else { spec.start_revision };
        let synced = next_rev > current;
        self.watchers.insert((stream, watch_id), Watcher { spec, next_rev, synced, quiet_ticks: 0 });
    }

    pub fn cancel(&mut self, stream: u64, watch_id: i64, header: ResponseHeader) {
        if self.watchers.remove(&(stream, watch_id)).is_some() {
            if let Some(tx) = self.streams.get(&stream) {
                let _ = tx.try_send(WatchUpdate::Canceled {
                    watch_id,
                    header,
                    compact_revision: 0,
                    reason: String::new(),
                    created: false,
                });
            }
        }
    }

    /// A progress notification: sent only when every watcher of the stream is synced, so that
    /// it truthfully means "everything up to this revision was sent".
    pub fn progress(&mut self, stream: u64, header: ResponseHeader) {
        let all_synced = self.watchers.range((stream, i64::MIN)..=(stream, i64::MAX)).all(|(_, w)| w.synced);
        if all_synced {
            if let Some(tx) = self.streams.get(&stream) {
                let _ = tx.try_send(WatchUpdate::Progress { header });
            }
        }
    }

    /// Delivers the events of one applied revision to the synced watchers.
    pub fn notify(&mut self, events: &[Event], header: ResponseHeader) {
        let Some(rev) = events.first().and_then(|e| e.kv.as_ref()).map(|kv| kv.mod_revision) else { return };
        let mut dead = Vec::new();
        for ((stream, watch_id), w) in self.watchers.iter_mut() {
            // A watcher created with a start revision beyond this member's current one (a
            // client resuming on a member that lags the one it was on) is synced but owed
            // nothing before its start: etcd sends a watcher only events at or after its minRev.
            if !w.synced || rev < w.next_rev {
                continue;
            }
            let selected = w.spec.select(events);
            if selected.is_empty() {
                w.next_rev = rev + 1;
                continue;
            }
            let Some(tx) = self.streams.get(stream) else { continue };
            match tx.try_send(WatchUpdate::Events { watch_id: *watch_id, header, events: selected }) {
                Ok(()) => {
                    w.next_rev = rev + 1;
                    w.quiet_ticks = 0;
                }
                Err(mpsc::error::TrySendError::Full(_)) => {
                    // A slow consumer: stop queueing, catch up from history later.
                    w.synced = false;
                    w.next_rev = rev;
                }
                Err(mpsc::error::TrySendError::Closed(_)) => dead.push(*stream),
            }
        }
        for s in dead {
            self.close_stream(s);
        }
    }

    /// Marks every watcher unsynced, to catch up from the store's history: after the store was
    /// replaced by a leader's snapshot, live events no longer follow on from what was sent.
    pub fn desync_all(&mut self) {
        for w in self.watchers.values_mut() {
            w.synced = false;
        }
    }

    /// Moves unsynced watchers forward from history, in bounded batches, while their streams
    /// have room. `header` carries the current revision.
    pub fn catch_up(&mut self, store: &Store, header: ResponseHeader) {
        let current = store.revision();
        let mut batches = 0;
        let mut dead = Vec::new();
        let mut canceled = Vec::new();
        for ((stream, watch_id), w) in self.watchers.iter_mut() {
            if w.synced {
                continue;
            }
            let Some(tx) = self.streams.get(stream) else { continue };
            if w.next_rev > current {
                // Nothing to read yet (it starts beyond this member's revision): reading history
                // up to `current` would move it back to `current + 1`.
                w.synced = true;
                continue;
            }
            while !w.synced && batches < CATCH_UP_BATCHES_PER_PASS && tx.capacity() > 0 {
                batches += 1;
                match store.history_events(
                    &w.spec.key,
                    &w.spec.range_end,
                    w.next_rev,
                    current,
                    CATCH_UP_EVENTS_MAX,
                ) {
                    Err(MvccError::Compacted) => {
                        let _ = tx.try_send(WatchUpdate::Canceled {
                            watch_id: *watch_id,
                            header,
                            compact_revision: store.compacted(),
                            reason: MvccError::Compacted.to_string(),
                            created: false,
                        });
                        canceled.push((*stream, *watch_id));
                        break;
                    }
                    Err(e) => unreachable!("history read failed: {e}"),
                    Ok((events, next)) => {
                        let selected = w.spec.select(&events);
                        if !selected.is_empty() {
                            match tx.try_send(WatchUpdate::Events {
                                watch_id: *watch_id,
                                header,
                                events: selected,
                            }) {
                                Ok(()) => {}
                                Err(mpsc::error::TrySendError::Full(_)) => break,
                                Err(mpsc::error::TrySendError::Closed(_)) => {
                                    dead.push(*stream);
                                    break;
                                }
                            }
                        }
                        w.next_rev = next;
                        w.synced = next > current;
                    }
                }
            }
        }
        for key in canceled {
            self.watchers.remove(&key);
        }
        for s in dead {
            self.close_stream(s);
        }
    }

    /// One progress tick: a synced watcher that asked for progress notifications and has been
    /// sent nothing for `quiet_ticks_max` ticks gets an empty response at the current revision
    /// (it says: nothing for you up to here).
    pub fn progress_tick(&mut self, quiet_ticks_max: u32, header: ResponseHeader) {
        for ((stream, watch_id), w) in self.watchers.iter_mut() {
            if !w.spec.progress_notify {
                continue;
            }
            w.quiet_ticks += 1;
            if w.synced && w.quiet_ticks >= quiet_ticks_max {
                if let Some(tx) = self.streams.get(stream) {
                    if tx
                        .try_send(WatchUpdate::Events { watch_id: *watch_id, header, events: Vec::new() })
                        .is_ok()
                    {
                        w.quiet_ticks = 0;
                    }
                }
            }
        }
    }

    pub fn has_unsynced(&self) -> bool {
        self.watchers.values().any(|w| !w.synced)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel_core::pb::etcdserverpb::{CompactionRequest, DeleteRangeRequest, PutRequest};

    fn put(store: &mut Store, k: &str, v: &str) -> Vec<Event> {
        store
            .put(&PutRequest { key: k.to_string().into(), value: v.to_string().into(), ..Default::default() })
            .unwrap();
        store.take_events()
    }

    fn h(rev: i64) -> ResponseHeader {
        ResponseHeader { revision: rev, ..Default::default() }
    }

    fn drain(rx: &mut mpsc::Receiver<WatchUpdate>) -> Vec<WatchUpdate> {
        let mut out = Vec::new();
        while let Ok(u) = rx.try_recv() {
            out.push(u);
        }
        out
    }

    fn revisions(updates: &[WatchUpdate]) -> Vec<i64> {
        updates
            .iter()
            .flat_map(|u| match u {
                WatchUpdate::Events { events, .. } => {
                    events.iter().map(|e| e.kv.as_ref().unwrap().mod_revision).collect()
                }
                _ => vec![],
            })
            .collect()
    }

    #[test]
    fn created_comes_first_then_live_events_in_order() {
        let mut store = Store::new();
        let mut hub = WatchHub::new();
        let (s, mut rx) = hub.open_stream();
        hub.create(
            s,
            0,
            WatchSpec { key: "a".into(), range_end: "b".into(), ..Default::default() },
            &store,
            h(1),
        );
        for i in 0..3 {
            let ev = put(&mut store, "a1", &i.to_string());
            hub.notify(&ev, h(store.revision()));
        }
        let ev = put(&mut store, "zz", "x");
        hub.notify(&ev, h(store.revision()));
        let got = drain(&mut rx);
        assert!(matches!(got[0], WatchUpdate::Created { watch_id: 0, .. }));
        assert_eq!(revisions(&got), vec![2, 3, 4], "ordered, none outside the range");
    }

    /// Found by the simulator (SIM_SEED=0 with the watch workload): a client resuming a watch
    /// at revision 39 on a member still at revision 29 was sent the events of revisions 30 to
    /// 38 again as that member applied them.
    #[test]
    fn a_watch_from_a_future_revision_gets_nothing_before_it() {
        let mut store = Store::new();
        let mut hub = WatchHub::new();
        let (s, mut rx) = hub.open_stream();
        hub.create(
            s,
            0,
            WatchSpec { key: "k".into(), start_revision: 4, ..Default::default() },
            &store,
            h(1),
        );
        for i in 0..4 {
            let ev = put(&mut store, "k", &i.to_string());
            hub.notify(&ev, h(store.revision()));
        }
        assert_eq!(revisions(&drain(&mut rx)), vec![4, 5], "only revisions from the start on");
    }

    /// Found by the simulator (SIM_SEED=10): the same watcher, made unsynced before its start
    /// (its member installed a leader's snapshot still below it), was moved back to the
    /// member's revision + 1 by catching up, and sent revisions it already had.
    #[test]
    fn catching_up_never_moves_a_watch_back_before_its_start() {
        let mut store = Store::new();
        let mut hub = WatchHub::new();
        let (s, mut rx) = hub.open_stream();
        hub.create(
            s,
            0,
            WatchSpec { key: "k".into(), start_revision: 4, ..Default::default() },
            &store,
            h(1),
        );
        hub.desync_all();
        hub.catch_up(&store, h(store.revision()));
        for i in 0..4 {
            let ev = put(&mut store, "k", &i.to_string());
            hub.notify(&ev, h(store.revision()));
            hub.catch_up(&store, h(store.revision()));
        }
        assert_eq!(revisions(&drain(&mut rx)), vec![4, 5], "only revisions from the start on");
    }

    #[test]
    fn slow_consumer_is_bounded_and_catches_up_without_gap_or_duplicate() {
        let mut store = Store::new();
        let mut hub = WatchHub::new();
        let (s, mut rx) = hub.open_stream();
        hub.create(s, 7, WatchSpec { key: "k".into(), ..Default::default() }, &store, h(1));
        let total = STREAM_BUFFER_MAX as i64 * 3;
        let mut seen = Vec::new();
        for i in 0..total {
            let ev = put(&mut store, "k", &i.to_string());
            hub.notify(&ev, h(store.revision()));
            // The client reads only now and then.
            if i % 500 == 0 {
                seen.extend(drain(&mut rx));
                hub.catch_up(&store, h(store.revision()));
            }
        }
        for _ in 0..100 {
            seen.extend(drain(&mut rx));
            hub.catch_up(&store, h(store.revision()));
        }
        seen.extend(drain(&mut rx));
        let want: Vec<i64> = (2..2 + total).collect();
        assert_eq!(revisions(&seen), want, "every revision exactly once, in order");
        assert!(!hub.has_unsynced());
    }

    #[test]
    fn watch_from_history_and_from_compacted_revision() {
        let mut store = Store::new();
        for i in 0..5 {
            put(&mut store, "k", &i.to_string());
        }
        store.delete_range(&DeleteRangeRequest { key: "k".into(), ..Default::default() }).unwrap();
        let mut hub = WatchHub::new();
        let (s, mut rx) = hub.open_stream();
        hub.create(
            s,
            0,
            WatchSpec { key: "k".into(), start_revision: 3, prev_kv: true, ..Default::default() },
            &store,
            h(7),
        );
        hub.catch_up(&store, h(7));
        let got = drain(&mut rx);
        assert_eq!(revisions(&got), vec![3, 4, 5, 6, 7]);
        let WatchUpdate::Events { events, .. } = &got[1] else { panic!() };
        assert_eq!(events[0].prev_kv.as_ref().unwrap().value, "0", "prev_kv from history");
        store.compact(&CompactionRequest { revision: 5, physical: true }).unwrap();
        hub.create(
            s,
            1,
            WatchSpec { key: "k".into(), start_revision: 2, ..Default::default() },
            &store,
            h(7),
        );
        hub.catch_up(&store, h(7));
        let got = drain(&mut rx);
        assert!(matches!(got[1], WatchUpdate::Canceled { watch_id: 1, compact_revision: 5, .. }), "{got:?}");
    }

    #[test]
    fn progress_notify_after_a_quiet_interval() {
        let mut store = Store::new();
        let mut hub = WatchHub::new();
        let (s, mut rx) = hub.open_stream();
        hub.create(
            s,
            0,
            WatchSpec { key: "k".into(), progress_notify: true, ..Default::default() },
            &store,
            h(1),
        );
        hub.create(s, 1, WatchSpec { key: "k".into(), ..Default::default() }, &store, h(1));
        drain(&mut rx);
        hub.progress_tick(3, h(1));
        hub.progress_tick(3, h(1));
        let ev = put(&mut store, "k", "v");
        hub.notify(&ev, h(2));
        hub.progress_tick(3, h(2));
        hub.progress_tick(3, h(2));
        assert_eq!(revisions(&drain(&mut rx)), vec![2, 2], "an event resets the quiet count");
        hub.progress_tick(3, h(2));
        let got = drain(&mut rx);
        assert!(
            matches!(&got[..], [WatchUpdate::Events { watch_id: 0, events, header }] if events.is_empty() && header.revision == 2),
            "{got:?}"
        );
    }

    #[test]
    fn filters_and_progress() {
        let mut store = Store::new();
        let mut hub = WatchHub::new();
        let (s, mut rx) = hub.open_stream();
        hub.create(s, 0, WatchSpec { key: "k".into(), no_put: true, ..Default::default() }, &store, h(1));
        let ev = put(&mut store, "k", "1");
        hub.notify(&ev, h(2));
        store.delete_range(&DeleteRangeRequest { key: "k".into(), ..Default::default() }).unwrap();
        let ev = store.take_events();
        hub.notify(&ev, h(3));
        hub.progress(s, h(3));
        let got = drain(&mut rx);
        assert_eq!(revisions(&got), vec![3], "only the delete passes NOPUT");
        assert!(matches!(got.last(), Some(WatchUpdate::Progress { header }) if header.revision == 3));
    }

    /// etcd's `watchStream.Watch` refusals, as etcd 3.5.1 answers them: created and canceled at
    /// once, watch id -1, the reason; the existing watcher keeps its id.
    #[test]
    fn empty_ranges_and_ids_in_use_are_refused_as_etcd_refuses_them() {
        let store = Store::new();
        let mut hub = WatchHub::new();
        let (s, mut rx) = hub.open_stream();
        let spec = |k: &str, end: &str| WatchSpec {
            key: k.to_string().into(),
            range_end: end.to_string().into(),
            ..Default::default()
        };
        hub.create(s, 0, spec("b", "a"), &store, h(1));
        hub.create(s, 0, spec("b", "b"), &store, h(1));
        hub.create(s, 0, WatchSpec { range_end: vec![0].into(), ..spec("b", "") }, &store, h(1));
        hub.create(s, 0, spec("x", ""), &store, h(1));
        let refused = |reason: &str| WatchUpdate::Canceled {
            watch_id: -1,
            header: h(1),
            compact_revision: 0,
            reason: reason.to_string(),
            created: true,
        };
        assert_eq!(
            drain(&mut rx),
            vec![
                refused(EMPTY_RANGE),
                refused(EMPTY_RANGE),
                WatchUpdate::Created { watch_id: 0, header: h(1) },
                refused(DUPLICATE_ID),
            ]
        );
        assert_eq!(hub.watcher_count(), 1);
    }

    #[test]
    fn closing_a_stream_forgets_its_watchers_only() {
        let store = Store::new();
        let mut hub = WatchHub::new();
        let streams: Vec<_> = (0..3).map(|_| hub.open_stream()).collect();
        for (s, _) in &streams {
            for id in 0..5 {
                hub.create(*s, id, WatchSpec { key: "k".into(), ..Default::default() }, &store, h(1));
            }
        }
        hub.close_stream(streams[1].0);
        assert_eq!(hub.watcher_count(), 10);
        let mut streams = streams;
        streams.truncate(1); // The last stream's receiver goes away.
        hub.purge_closed();
        assert_eq!(hub.watcher_count(), 5, "the stream nobody reads is forgotten too");
    }
}
