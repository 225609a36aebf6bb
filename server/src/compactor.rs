//! etcd's automatic compaction (`--auto-compaction-mode`, `--auto-compaction-retention`),
//! following etcd 3.5's `v3compactor`: only the leader compacts (the others are paused), and a
//! compaction is an ordinary Compaction request proposed through the log, as a client's is.
//!
//! - periodic, retention `P`: the store's revision is sampled every `min(P, 1h) / 10`; once `P`
//!   has passed since the start (then every `min(P, 1h)`), the store is compacted to the oldest
//!   sample kept, the revision of about `P` ago; a failure is retried at the next sample.
//! - revision, retention `R`: every 5 minutes, compact to `current - R` unless that is not
//!   positive or was the last one compacted to.

use crate::config::AutoCompaction;
use keel_core::mvcc::MvccError;
use keel_core::pb::etcdserverpb::CompactionRequest;
use keel_core::pb::keelpb::request::Op;
use keel_core::state_machine::ApplyError;
use runtime::node::{NodeHandle, RequestError};
use std::collections::VecDeque;
use std::time::Duration;

/// etcd's `revInterval`: how often revision mode compacts.
pub const REVISION_INTERVAL: Duration = Duration::from_secs(5 * 60);
/// etcd's `retryDivisor`: periodic mode samples the revision this many times per interval.
pub const RETRY_DIVISOR: u32 = 10;
/// Floor on the sampling interval, so that a tiny retention cannot make the task spin.
pub const RETRY_INTERVAL_MIN: Duration = Duration::from_millis(10);

/// Runs the compactor until the node stops.
pub(crate) async fn run(node: NodeHandle, compaction: AutoCompaction) {
    match compaction {
        AutoCompaction::Periodic(period) => periodic(node, period).await,
        AutoCompaction::Revision(retention) => revision(node, retention).await,
    }
}

/// The periodic compactor's bookkeeping, apart from time and the node (for tests).
#[derive(Debug)]
struct Periodic {
    compact_interval: Duration,
    retry_interval: Duration,
    /// Revisions sampled every `retry_interval`, oldest first; the first is from about
    /// `period` ago. Invariant: at most `retentions` of them.
    revs: VecDeque<i64>,
    retentions: usize,
    /// Since the start, when the last compaction succeeded (the start before the first).
    last_success: Duration,
    /// How long after `last_success` the next compaction is due: `period` for the first,
    /// `compact_interval` after.
    base_interval: Duration,
}

impl Periodic {
    fn new(period: Duration) -> Self {
        let compact_interval = period.min(Duration::from_secs(3600));
        let retry_interval = (compact_interval / RETRY_DIVISOR).max(RETRY_INTERVAL_MIN);
        let retentions = (period.as_nanos() / retry_interval.as_nanos()) as usize + 1;
        Periodic {
            compact_interval,
            retry_interval,
            revs: VecDeque::with_capacity(retentions.min(64)),
            retentions,
            last_success: Duration::ZERO,
            base_interval: period,
        }
    }

    fn sample(&mut self, rev: i64) {
        self.revs.push_back(rev);
        if self.revs.len() > self.retentions {
            self.revs.pop_front();
        }
    }

    /// After a sleep, at `now` (since the start), leading or not: the revision to compact to.
    fn due(&mut self, now: Duration, leading: bool) -> Option<i64> {
        if !leading || now.saturating_sub(self.last_success) < self.base_interval {
            return None;
        }
        self.base_interval = self.compact_interval;
        self.revs.front().copied()
    }
}

async fn periodic(node: NodeHandle, period: Duration) {
    let mut p = Periodic::new(period);
    let started = tokio::time::Instant::now();
    tracing::info!(?period, retry_interval = ?p.retry_interval, "automatic periodic compaction enabled");
    loop {
        let Some((rev, _)) = observe(&node).await else { return };
        p.sample(rev);
        tokio::time::sleep(p.retry_interval).await;
        let Some((_, leading)) = observe(&node).await else { return };
        if let Some(rev) = p.due(started.elapsed(), leading) {
            if compact(&node, rev, "periodic").await {
                p.last_success = started.elapsed();
            }
        }
    }
}

async fn revision(node: NodeHandle, retention: i64) {
    tracing::info!(retention, "automatic revision compaction enabled");
    let mut prev = 0;
    loop {
        tokio::time::sleep(REVISION_INTERVAL).await;
        let Some((current, leading)) = observe(&node).await else { return };
        let rev = current - retention;
        if !leading || rev <= 0 || rev == prev {
            continue;
        }
        if compact(&node, rev, "revision").await {
            prev = rev;
        }
    }
}

/// The store's revision and whether this member leads, or `None` once the node stopped.
async fn observe(node: &NodeHandle) -> Option<(i64, bool)> {
    match node.status().await {
        Ok(s) => Some((s.header.revision, s.leader == node.member_id)),
        Err(RequestError::Stopped) => None,
        Err(_) => Some((0, false)),
    }
}

/// Proposes a compaction to `rev`; true if it applied or the store was already compacted
/// there (etcd counts both as success).
async fn compact(node: &NodeHandle, rev: i64, mode: &str) -> bool {
    let req = CompactionRequest { revision: rev, physical: false };
    match crate::services::propose(node, Op::Compaction(req)).await {
        Ok(_) => {
            tracing::info!(revision = rev, mode, "completed automatic compaction");
            true
        }
        Err(
            RequestError::Mvcc(MvccError::Compacted)
            | RequestError::Apply(ApplyError::Mvcc(MvccError::Compacted)),
        ) => true,
        Err(e) => {
            tracing::warn!(revision = rev, mode, error = %e, "automatic compaction failed");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periodic_compacts_to_the_revision_of_one_period_ago() {
        let period = Duration::from_secs(10);
        let mut p = Periodic::new(period);
        assert_eq!(p.retry_interval, Duration::from_secs(1));
        assert_eq!(p.retentions, 11);
        // Revisions 100, 110, ... sampled each second; nothing is due before 10 s.
        let mut now = Duration::ZERO;
        for i in 0..10 {
            p.sample(100 + 10 * i);
            now += p.retry_interval;
            assert_eq!(p.due(now, true), if i < 9 { None } else { Some(100) }, "at {now:?}");
        }
        p.last_success = now;
        // Then every period (under an hour), to the sample of one period ago.
        for i in 10..20 {
            p.sample(100 + 10 * i);
            now += p.retry_interval;
            let due = p.due(now, true);
            assert_eq!(due, if i < 19 { None } else { Some(190) }, "at {now:?}");
        }
        assert!(p.revs.len() <= p.retentions);
    }

    #[test]
    fn periodic_waits_while_following_and_caps_the_interval_at_an_hour() {
        let mut p = Periodic::new(Duration::from_secs(5 * 3600));
        assert_eq!(p.compact_interval, Duration::from_secs(3600));
        assert_eq!(p.retry_interval, Duration::from_secs(360));
        assert_eq!(p.retentions, 51);
        p.sample(7);
        assert_eq!(p.due(Duration::from_secs(5 * 3600), false), None);
        assert_eq!(p.due(Duration::from_secs(5 * 3600), true), Some(7));
        assert_eq!(p.base_interval, Duration::from_secs(3600));
    }
}
