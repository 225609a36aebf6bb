//! Counters and histograms that the runtime (and the server's peer transport) update and the
//! server's `/metrics` prints under etcd's metric names.
//!
//! They are process-wide, as etcd's are (Prometheus' default registry): a `keel` process runs
//! one member. Under the simulator several nodes share one process and these mix, but nothing
//! reads them there. Plain atomics: an update is one relaxed add or store, cheap enough for the
//! WAL's sync path.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::Duration;

/// Number of buckets of the disk histograms: etcd's `prometheus.ExponentialBuckets(0.001, 2, 14)`
/// (1 ms to about 8 s), plus `+Inf`.
pub const DISK_BUCKETS: usize = 14;
/// Bound on the peers counted per direction; a member beyond it (a cluster churning through
/// more members than this in one process lifetime) is not counted.
pub const PEERS_MAX: usize = 128;

/// A Prometheus histogram over durations with etcd's disk buckets.
pub struct Histogram {
    /// Observations per bucket (not cumulative); the last one is `+Inf`.
    buckets: [AtomicU64; DISK_BUCKETS + 1],
    sum_nanos: AtomicU64,
}

/// A histogram's values as Prometheus prints them.
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramSnapshot {
    /// (upper bound in seconds, cumulative count), without `+Inf` (whose count is `count`).
    pub buckets: Vec<(f64, u64)>,
    pub count: u64,
    pub sum_seconds: f64,
}

impl Histogram {
    #[allow(clippy::new_without_default)]
    pub const fn new() -> Self {
        Histogram { buckets: [const { AtomicU64::new(0) }; DISK_BUCKETS + 1], sum_nanos: AtomicU64::new(0) }
    }

    /// Upper bound of bucket `i` (below [`DISK_BUCKETS`]) in nanoseconds: 1 ms × 2^i.
    fn bound_nanos(i: usize) -> u64 {
        1_000_000 << i
    }

    pub fn observe(&self, d: Duration) {
        let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        let i = (0..DISK_BUCKETS).find(|&i| nanos <= Self::bound_nanos(i)).unwrap_or(DISK_BUCKETS);
        self.buckets[i].fetch_add(1, Relaxed);
        self.sum_nanos.fetch_add(nanos, Relaxed);
    }

    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut cumulative = 0;
        let mut buckets = Vec::with_capacity(DISK_BUCKETS);
        for i in 0..DISK_BUCKETS {
            cumulative += self.buckets[i].load(Relaxed);
            buckets.push((Self::bound_nanos(i) as f64 / 1e9, cumulative));
        }
        cumulative += self.buckets[DISK_BUCKETS].load(Relaxed);
        HistogramSnapshot {
            buckets,
            count: cumulative,
            sum_seconds: self.sum_nanos.load(Relaxed) as f64 / 1e9,
        }
    }
}

/// `etcd_disk_wal_fsync_duration_seconds`: each sync of a WAL segment.
pub static WAL_FSYNC: Histogram = Histogram::new();
/// `etcd_disk_backend_commit_duration_seconds`: each commit of the state image's B-tree.
pub static BACKEND_COMMIT: Histogram = Histogram::new();
/// `etcd_disk_wal_write_bytes_total`: bytes written to the WAL.
pub static WAL_WRITE_BYTES: AtomicU64 = AtomicU64::new(0);
/// `etcd_server_leader_changes_seen_total`.
pub static LEADER_CHANGES: AtomicU64 = AtomicU64::new(0);
/// `etcd_server_quota_backend_bytes`: the backend quota the server runs with (set once at
/// start; etcd shows the flag's negative value when the quota is off).
pub static QUOTA_BACKEND_BYTES: AtomicI64 = AtomicI64::new(0);
/// `etcd_server_proposals_committed_total` (a gauge in etcd: the commit index).
pub static COMMITTED_INDEX: AtomicU64 = AtomicU64::new(0);
/// `etcd_server_proposals_applied_total` (a gauge in etcd: the applied index).
pub static APPLIED_INDEX: AtomicU64 = AtomicU64::new(0);
/// `etcd_server_proposals_pending`: client proposals waiting to apply (see [`PendingProposal`]).
pub static PROPOSALS_PENDING: AtomicU64 = AtomicU64::new(0);
/// `etcd_server_proposals_failed_total`: client proposals that failed to commit (no leader,
/// leader changed, timed out, stopped).
pub static PROPOSALS_FAILED: AtomicU64 = AtomicU64::new(0);
/// `etcd_debugging_mvcc_compact_revision`: the revision of the last compaction (0 = none).
pub static COMPACT_REVISION: AtomicI64 = AtomicI64::new(0);
/// The leader last seen (0 = none), to count changes.
static LEADER: AtomicU64 = AtomicU64::new(0);

/// The node task's view after each batch: the leader it sees (a change to a new leader
/// counts, as etcd counts `leaderChanges` when a Ready names a leader other than the last
/// one), its commit index, its applied index and the store's compacted revision.
pub fn observe_node(leader: u64, committed: u64, applied: u64, compacted: i64) {
    let previous = LEADER.swap(leader, Relaxed);
    if leader != 0 && leader != previous {
        LEADER_CHANGES.fetch_add(1, Relaxed);
    }
    COMMITTED_INDEX.store(committed, Relaxed);
    APPLIED_INDEX.store(applied, Relaxed);
    COMPACT_REVISION.store(compacted, Relaxed);
}

/// A client proposal in flight: counted in `etcd_server_proposals_pending` while it lives.
pub struct PendingProposal(());

impl PendingProposal {
    #[allow(clippy::new_without_default)]
    pub fn new() -> Self {
        PROPOSALS_PENDING.fetch_add(1, Relaxed);
        PendingProposal(())
    }
}

impl Drop for PendingProposal {
    fn drop(&mut self) {
        PROPOSALS_PENDING.fetch_sub(1, Relaxed);
    }
}

/// Bytes and failed messages per peer, by member id.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PeerCounts {
    pub sent_bytes: u64,
    pub received_bytes: u64,
    pub sent_failures: u64,
}

static PEERS: Mutex<BTreeMap<u64, PeerCounts>> = Mutex::new(BTreeMap::new());

fn with_peer(id: u64, f: impl FnOnce(&mut PeerCounts)) {
    let mut peers = PEERS.lock().unwrap_or_else(|e| e.into_inner());
    if peers.len() >= PEERS_MAX && !peers.contains_key(&id) {
        return;
    }
    f(peers.entry(id).or_default());
}

/// `etcd_network_peer_sent_bytes_total{To}`.
pub fn peer_sent(to: u64, bytes: u64) {
    with_peer(to, |p| p.sent_bytes += bytes);
}

/// `etcd_network_peer_received_bytes_total{From}`.
pub fn peer_received(from: u64, bytes: u64) {
    with_peer(from, |p| p.received_bytes += bytes);
}

/// `etcd_network_peer_sent_failures_total{To}`: messages that could not be sent.
pub fn peer_send_failed(to: u64, messages: u64) {
    with_peer(to, |p| p.sent_failures += messages);
}

/// Every peer counted so far, by member id.
pub fn peers() -> BTreeMap<u64, PeerCounts> {
    PEERS.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_with_etcds_bounds() {
        let h = Histogram::new();
        h.observe(Duration::from_micros(500));
        h.observe(Duration::from_millis(1));
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_secs(60));
        let s = h.snapshot();
        assert_eq!(s.buckets.len(), DISK_BUCKETS);
        assert_eq!(s.buckets[0], (0.001, 2));
        assert_eq!(s.buckets[1], (0.002, 2));
        assert_eq!(s.buckets[2], (0.004, 3));
        assert_eq!(s.buckets[DISK_BUCKETS - 1], (8.192, 3));
        assert_eq!(s.count, 4);
        assert!((s.sum_seconds - 60.0045).abs() < 1e-9, "{}", s.sum_seconds);
    }
}
