//! etcd 3.5's lease bookkeeping (its "lessor"), sans-IO: which leases exist, what TTL each was
//! granted, which keys hang off each, and, on the leader only, when each one expires.
//!
//! The state has two halves. The *replicated* half (ids, granted TTLs, checkpointed remaining
//! TTLs, attached keys) changes only through [`Lessor::grant`], [`Lessor::revoke`],
//! [`Lessor::attach`], [`Lessor::detach`], [`Lessor::detach_key`] and [`Lessor::checkpoint`],
//! which the state machine calls while applying committed entries; equal logs therefore give
//! equal replicated halves on every member. The *leader-only* half (expiry instants, keep-alive
//! renewals, which leases are due to be revoked or checkpointed) exists between
//! [`Lessor::promote`] and [`Lessor::demote`] and is driven by `now_ms` values the driver passes
//! in: milliseconds from any clock that is monotonic on this member. Expiries never leave the
//! member, so clocks need not agree across members; a new leader rebuilds them in `promote`.
//!
//! What this module is not: it has no timer, thread or clock of its own, it proposes nothing
//! and deletes nothing. [`Lessor::expired`] and [`Lessor::checkpoints_due`] say what the leader
//! should *propose* (revokes, checkpoints); the effects happen when those entries are applied.
//! [`Lessor::revoke`] returns the keys to delete; the state machine deletes them in the same
//! revision. It does not persist itself either: [`Lessor::records`] is what a snapshot needs
//! (keys are re-attached from the MVCC store's `lease` fields on restore, as etcd does), and it
//! speaks no gRPC: the server maps [`LeaseError`] to status codes and forwards keep-alives to the
//! leader.
//!
//! # Driving it (what etcd does)
//!
//! * Apply path, every member: `LeaseGrant` → [`Lessor::grant`]; `LeaseRevoke` →
//!   [`Lessor::revoke`] then delete the returned keys; put with a lease → [`Lessor::attach`]
//!   (which moves the key off any previous lease); put without a lease or delete →
//!   [`Lessor::detach_key`]; `LeaseCheckpoint` → [`Lessor::checkpoint`] for each entry.
//! * Leadership: etcd promotes when the new leader applies the empty entry of its own term (so
//!   every earlier grant and checkpoint is applied first), with `extend` = the election
//!   timeout; it demotes as soon as the member stops being leader.
//! * Leader loop, every [`EXPIRY_POLL_INTERVAL_MS`]: propose a revoke for each id from
//!   `expired(now, EXPIRED_LIMIT)`, and one `LeaseCheckpoint` request for
//!   `checkpoints_due(now, interval, CHECKPOINT_LIMIT)` if it is not empty.
//!
//! # Bounds
//!
//! Leases and attached keys are replicated data: each comes from an applied entry, so their
//! number is bounded by what the log may hold (etcd's space quota guards `LeaseGrant` and puts).
//! The lessor keeps O(1) entries per lease and per attached key beyond that: each leader-side
//! index ([`Lessor::expired`]'s queue, the checkpoint schedule, the pending clears) holds at
//! most one entry per lease, removed exactly (no lazy deletion, so renewals do not pile up).
//! [`Lessor::expired`] and [`Lessor::checkpoints_due`] do O(limit · log n) work and return at
//! most `limit` items; [`Lessor::promote`] is O(n log n); [`Lessor::revoke`] is O(k log n) for
//! k attached keys. TTLs are capped at [`MAX_LEASE_TTL_SECS`] and all time arithmetic saturates.

use bytes::Bytes;
use std::collections::{BTreeMap, BTreeSet};
use thiserror::Error;

/// The largest TTL a grant may ask for (etcd's `MaxLeaseTTL`), in seconds.
pub const MAX_LEASE_TTL_SECS: i64 = 9_000_000_000;

/// etcd's minimum TTL with its default election timeout (1000 ms): ceil(1.5 s).
pub const DEFAULT_MIN_TTL_SECS: i64 = 2;

/// How long the leader waits before reporting an expired lease again (etcd's
/// `expiredLeaseRetryInterval`): long enough for the revoke it proposed to commit.
pub const DEFAULT_EXPIRED_RETRY_MS: u64 = 3_000;

/// etcd's default lease checkpoint interval (5 minutes).
pub const DEFAULT_CHECKPOINT_INTERVAL_MS: u64 = 300_000;

/// How often etcd's leader looks for expired leases and due checkpoints.
pub const EXPIRY_POLL_INTERVAL_MS: u64 = 500;

/// Revokes etcd proposes per poll: half its rate of 1000 per second.
pub const EXPIRED_LIMIT: usize = 500;

/// Checkpoints etcd puts in one `LeaseCheckpoint` request.
pub const CHECKPOINT_LIMIT: usize = 1_000;

/// Failures of lease operations. Messages are etcd's client-facing ones where etcd has one; the
/// gRPC code each maps to is noted (the server adds it).
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
pub enum LeaseError {
    /// gRPC `NotFound`. (`LeaseTimeToLive` does not fail with it: etcd replies TTL -1, and a
    /// keep-alive stream replies TTL 0.)
    #[error("etcdserver: requested lease not found")]
    NotFound,
    /// gRPC `FailedPrecondition`.
    #[error("etcdserver: lease already exists")]
    LeaseExists,
    /// gRPC `OutOfRange`.
    #[error("etcdserver: too large lease TTL")]
    TooLargeTtl,
    /// A keep-alive reached a member that is not (or no longer) the leader; etcd forwards it to
    /// the leader instead of failing.
    #[error("not a primary lessor")]
    NotLeader,
    /// A keep-alive for a lease that has expired but is not revoked yet. etcd holds such a
    /// request until the revoke is applied (then answers `NotFound`) or leadership changes
    /// (then retries on the new leader); the server should do the same, not extend the lease.
    #[error("lease expired, revoke pending")]
    Expired,
}

/// etcd's minimum lease TTL for an election timeout of `election_ticks` ticks of `tick_ms`:
/// `ceil((3 * election_ticks / 2) * tick_ms / 1000)` seconds (integer halving on ticks, as
/// etcd does), and never below 1 so that no lease is born expired.
pub fn min_ttl_secs(election_ticks: u64, tick_ms: u64) -> i64 {
    let ms = (election_ticks.saturating_mul(3) / 2).saturating_mul(tick_ms);
    i64::try_from(ms.div_ceil(1000)).unwrap_or(MAX_LEASE_TTL_SECS).clamp(1, MAX_LEASE_TTL_SECS)
}

/// Configuration. Every member must use the same `min_ttl_secs`, because the raise is applied
/// to replicated state (etcd derives it from the election timeout, which members share).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LessorConfig {
    /// Grants below this TTL get this TTL. Must be in `1..=MAX_LEASE_TTL_SECS`.
    pub min_ttl_secs: i64,
    /// After [`Lessor::expired`] reports a lease, it is not reported again for this long.
    pub expired_retry_ms: u64,
}

impl Default for LessorConfig {
    fn default() -> Self {
        LessorConfig { min_ttl_secs: DEFAULT_MIN_TTL_SECS, expired_retry_ms: DEFAULT_EXPIRED_RETRY_MS }
    }
}

/// What `LeaseTimeToLive` reports about one lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimeToLive {
    pub id: i64,
    /// The TTL the lease was granted (after the minimum-TTL raise), in seconds.
    pub granted_ttl: i64,
    /// Seconds left. On the leader: (expiry - now) truncated toward zero, as etcd's
    /// `int64(Remaining().Seconds())`, so it is negative for an expired lease whose revoke has
    /// not been applied yet. Elsewhere: the last checkpointed remaining TTL, or the granted TTL.
    pub remaining_ttl: i64,
    /// The attached keys, sorted. The server drops them unless the request asked for keys.
    pub keys: Vec<Bytes>,
}

/// The replicated part of one lease, as a snapshot stores it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseRecord {
    pub id: i64,
    /// Granted TTL in seconds.
    pub ttl: i64,
    /// Last checkpointed remaining TTL in seconds; 0 means none.
    pub remaining_ttl: i64,
}

/// The replicated part of a lease.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Lease {
    /// Granted TTL in seconds. Invariant: `min_ttl_secs <= ttl <= MAX_LEASE_TTL_SECS`.
    ttl: i64,
    /// Remaining TTL recorded by the last applied checkpoint; 0 means none (a keep-alive
    /// clears it through a checkpoint of 0). Invariant: `0 <= remaining_ttl <= MAX_LEASE_TTL_SECS`.
    remaining_ttl: i64,
    /// Invariant: every key here maps back to this lease in `Lessor::key_to_lease`.
    keys: BTreeSet<Bytes>,
}

impl Lease {
    /// What a new leader starts the lease's clock from (etcd's `getRemainingTTL`).
    fn remaining_or_granted(&self) -> i64 {
        if self.remaining_ttl > 0 {
            self.remaining_ttl
        } else {
            self.ttl
        }
    }
}

/// The leader's clocks for one lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Timer {
    /// When the lease expires unless renewed.
    expiry_ms: u64,
    /// When [`Lessor::expired`] may report the lease: its expiry at first, then, once reported,
    /// the report time plus the retry interval, so a revoke in flight is not proposed again
    /// every poll. Invariant: `due_ms >= expiry_ms`.
    due_ms: u64,
    /// When the lease's checkpoint schedule last started (grant, promote or last checkpoint
    /// report); the next checkpoint is due one interval later. `None` once the lease cannot
    /// benefit from checkpoints (expired, or its TTL fits within one interval).
    checkpoint_from_ms: Option<u64>,
}

/// Everything only the leader keeps.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct LeaderState {
    /// Invariant: exactly one timer per lease in `Lessor::leases`.
    timers: BTreeMap<i64, Timer>,
    /// The expiry queue, ordered by when each lease may next be reported, so [`Lessor::expired`]
    /// reads only the front. Invariant: holds exactly `(t.due_ms, id)` for each `(id, t)` in
    /// `timers`.
    expiry_queue: BTreeSet<(u64, i64)>,
    /// The checkpoint schedule. Invariant: holds exactly `(from, id)` for each timer whose
    /// `checkpoint_from_ms` is `Some(from)`.
    checkpoint_queue: BTreeSet<(u64, i64)>,
    /// Leases renewed while carrying a checkpointed remaining TTL: the leader proposes a
    /// checkpoint of 0 so a later leader does not cut the renewed lease short.
    /// Invariant: every id is a key of `timers`.
    pending_clears: BTreeSet<i64>,
}

impl LeaderState {
    /// (Re)starts the clocks of lease `id`: expiring at `expiry_ms`, checkpoints counted from
    /// `now_ms`.
    fn start(&mut self, id: i64, expiry_ms: u64, now_ms: u64) {
        self.forget(id);
        self.timers.insert(id, Timer { expiry_ms, due_ms: expiry_ms, checkpoint_from_ms: Some(now_ms) });
        self.expiry_queue.insert((expiry_ms, id));
        self.checkpoint_queue.insert((now_ms, id));
    }

    fn forget(&mut self, id: i64) {
        if let Some(t) = self.timers.remove(&id) {
            self.expiry_queue.remove(&(t.due_ms, id));
            if let Some(from) = t.checkpoint_from_ms {
                self.checkpoint_queue.remove(&(from, id));
            }
        }
        self.pending_clears.remove(&id);
    }

    /// Moves the lease's expiry (and its place in the expiry queue) to `expiry_ms`.
    fn set_expiry(&mut self, id: i64, expiry_ms: u64) {
        let t = self.timers.get_mut(&id).expect("a lease without a timer");
        self.expiry_queue.remove(&(t.due_ms, id));
        t.expiry_ms = expiry_ms;
        t.due_ms = expiry_ms;
        self.expiry_queue.insert((expiry_ms, id));
    }

    /// Postpones the next report of an expired lease to `due_ms`.
    fn set_due(&mut self, id: i64, due_ms: u64) {
        let t = self.timers.get_mut(&id).expect("a lease without a timer");
        self.expiry_queue.remove(&(t.due_ms, id));
        t.due_ms = due_ms;
        self.expiry_queue.insert((due_ms, id));
    }

    fn set_checkpoint_from(&mut self, id: i64, from: Option<u64>) {
        let t = self.timers.get_mut(&id).expect("a lease without a timer");
        if let Some(old) = t.checkpoint_from_ms {
            self.checkpoint_queue.remove(&(old, id));
        }
        t.checkpoint_from_ms = from;
        if let Some(new) = from {
            self.checkpoint_queue.insert((new, id));
        }
    }
}

/// Seconds to milliseconds, for TTLs: clamped to `0..=MAX_LEASE_TTL_SECS` so the product
/// (at most 9e12) cannot overflow.
fn secs_to_ms(secs: i64) -> u64 {
    secs.clamp(0, MAX_LEASE_TTL_SECS) as u64 * 1000
}

/// The lease table of one member. See the module documentation.
#[derive(Debug, Clone)]
pub struct Lessor {
    config: LessorConfig,
    /// Replicated. Invariant: no id is 0 (etcd's "no lease").
    leases: BTreeMap<i64, Lease>,
    /// Replicated, the reverse of each lease's key set.
    /// Invariant: every key in a lease's key set maps back to that lease in `key_to_lease`, and
    /// `key_to_lease` holds nothing else (so a key is attached to at most one lease).
    key_to_lease: BTreeMap<Bytes, i64>,
    /// `Some` between `promote` and `demote`: followers never expire leases.
    leader: Option<LeaderState>,
}

impl Default for Lessor {
    fn default() -> Self {
        Lessor::new(LessorConfig::default())
    }
}

impl Lessor {
    /// An empty lessor, not leader.
    pub fn new(config: LessorConfig) -> Self {
        assert!(
            (1..=MAX_LEASE_TTL_SECS).contains(&config.min_ttl_secs),
            "min_ttl_secs {} outside 1..={MAX_LEASE_TTL_SECS}",
            config.min_ttl_secs
        );
        Lessor { config, leases: BTreeMap::new(), key_to_lease: BTreeMap::new(), leader: None }
    }

    /// A lessor rebuilt from an image: the leases' replicated parts, then every live key's
    /// lease (`keys`: key and lease id, each key once). Not leader.
    pub fn restore(
        config: LessorConfig,
        records: impl Iterator<Item = LeaseRecord>,
        keys: impl Iterator<Item = (Bytes, i64)>,
    ) -> Result<Lessor, String> {
        let mut l = Lessor::new(config);
        for r in records {
            let bounds = 0..=MAX_LEASE_TTL_SECS;
            if r.id == 0 || !bounds.contains(&r.ttl) || !bounds.contains(&r.remaining_ttl) {
                return Err(format!("lease record out of bounds: {r:?}"));
            }
            // A lease keeps at least this member's minimum TTL, as a grant here would give it.
            let ttl = r.ttl.max(l.config.min_ttl_secs);
            let lease = Lease { ttl, remaining_ttl: r.remaining_ttl, keys: BTreeSet::new() };
            if l.leases.insert(r.id, lease).is_some() {
                return Err(format!("lease {} twice", r.id));
            }
        }
        for (key, id) in keys {
            l.attach(id, key.clone()).map_err(|e| format!("key {key:?} on lease {id}: {e}"))?;
        }
        Ok(l)
    }

    pub fn config(&self) -> &LessorConfig {
        &self.config
    }

    /// Whether this lessor is between [`Lessor::promote`] and [`Lessor::demote`].
    pub fn is_leader(&self) -> bool {
        self.leader.is_some()
    }

    // ---- Replicated: called while applying committed entries. ----

    /// Applies a `LeaseGrant`: creates lease `id` with `ttl_secs`, raised to the minimum TTL.
    /// Returns the TTL granted (the response's `TTL`). On the leader the lease expires at
    /// `now_ms` + TTL; elsewhere `now_ms` is ignored.
    ///
    /// Errors as etcd checks them: [`LeaseError::TooLargeTtl`] above [`MAX_LEASE_TTL_SECS`],
    /// then [`LeaseError::LeaseExists`]. Either leaves the lessor unchanged.
    ///
    /// Id 0 is refused ([`LeaseError::NotFound`], as a lease that cannot exist): a request for
    /// "any id" gets its id ([`LeaseIdGen`]) before it is proposed, so that every member grants
    /// the same one, and a committed grant of 0 is forged or damaged (it once panicked every
    /// member; the hostile-apply property test found it). Negative ids are accepted, as etcd
    /// accepts them; the server decides whether clients may ask for them.
    pub fn grant(&mut self, id: i64, ttl_secs: i64, now_ms: u64) -> Result<i64, LeaseError> {
        if id == 0 {
            return Err(LeaseError::NotFound);
        }
        if ttl_secs > MAX_LEASE_TTL_SECS {
            return Err(LeaseError::TooLargeTtl);
        }
        if self.leases.contains_key(&id) {
            return Err(LeaseError::LeaseExists);
        }
        let ttl = ttl_secs.max(self.config.min_ttl_secs);
        self.leases.insert(id, Lease { ttl, remaining_ttl: 0, keys: BTreeSet::new() });
        if let Some(leader) = &mut self.leader {
            leader.start(id, now_ms.saturating_add(secs_to_ms(ttl)), now_ms);
        }
        Ok(ttl)
    }

    /// Applies a `LeaseRevoke` (from a client or from expiry): removes the lease and returns
    /// its keys, sorted, for the state machine to delete in the same revision.
    pub fn revoke(&mut self, id: i64) -> Result<Vec<Bytes>, LeaseError> {
        let lease = self.leases.remove(&id).ok_or(LeaseError::NotFound)?;
        for key in &lease.keys {
            self.key_to_lease.remove(key);
        }
        if let Some(leader) = &mut self.leader {
            leader.forget(id);
        }
        Ok(lease.keys.into_iter().collect())
    }

    /// Attaches `key` to lease `id` (a put with that lease), detaching it from the lease it
    /// had, if another: a key belongs to at most one lease. Returns that previous lease.
    /// An unknown `id` is [`LeaseError::NotFound`] and changes nothing.
    pub fn attach(&mut self, id: i64, key: Bytes) -> Result<Option<i64>, LeaseError> {
        let lease = self.leases.get_mut(&id).ok_or(LeaseError::NotFound)?;
        lease.keys.insert(key.clone());
        match self.key_to_lease.insert(key.clone(), id) {
            Some(old) if old != id => {
                if let Some(old_lease) = self.leases.get_mut(&old) {
                    old_lease.keys.remove(&key);
                }
                Ok(Some(old))
            }
            _ => Ok(None),
        }
    }

    /// Detaches `key` from lease `id`. Returns whether it was attached to that lease (a key
    /// attached to another lease stays there). An unknown `id` is [`LeaseError::NotFound`];
    /// etcd logs and ignores that case on the apply path.
    pub fn detach(&mut self, id: i64, key: &[u8]) -> Result<bool, LeaseError> {
        let lease = self.leases.get_mut(&id).ok_or(LeaseError::NotFound)?;
        if !lease.keys.remove(key) {
            return Ok(false);
        }
        self.key_to_lease.remove(key);
        Ok(true)
    }

    /// Detaches `key` from whichever lease holds it (a delete, or a put without a lease), and
    /// returns that lease.
    pub fn detach_key(&mut self, key: &[u8]) -> Option<i64> {
        let id = self.key_to_lease.remove(key)?;
        if let Some(lease) = self.leases.get_mut(&id) {
            lease.keys.remove(key);
        }
        Some(id)
    }

    /// Applies one `LeaseCheckpoint`: records that lease `id` had `remaining_ttl_secs` left
    /// when the leader looked, so that a later leader resumes from there rather than from the
    /// full TTL. 0 (or less) clears it. The leader's own expiry is not touched. Returns false,
    /// changing nothing, for an unknown lease: it may have been revoked after the checkpoint
    /// was proposed, which is normal.
    pub fn checkpoint(&mut self, id: i64, remaining_ttl_secs: i64) -> bool {
        match self.leases.get_mut(&id) {
            Some(lease) => {
                lease.remaining_ttl = remaining_ttl_secs.clamp(0, MAX_LEASE_TTL_SECS);
                true
            }
            None => false,
        }
    }

    // ---- Leadership. ----

    /// Becomes the leader's lessor at `now_ms`: each lease expires at `now_ms + extend_ms` +
    /// its remaining TTL (the last checkpointed one if any, else the granted TTL). The
    /// extension covers the time clients need to find the new leader; etcd uses the election
    /// timeout. Calling it again restarts every clock.
    ///
    /// Not done (etcd does it from 1000 leases on): spreading out leases whose new expiries
    /// pile up within the same second so that revokes stay under the revoke rate.
    pub fn promote(&mut self, now_ms: u64, extend_ms: u64) {
        let mut leader = LeaderState::default();
        let base = now_ms.saturating_add(extend_ms);
        for (&id, lease) in &self.leases {
            leader.start(id, base.saturating_add(secs_to_ms(lease.remaining_or_granted())), now_ms);
        }
        self.leader = Some(leader);
    }

    /// Stops being the leader's lessor: expiries are forgotten, so no lease expires here until
    /// the next [`Lessor::promote`].
    pub fn demote(&mut self) {
        self.leader = None;
    }

    // ---- Leader only: driven by `now_ms`. ----

    /// A keep-alive: the lease now expires at `now_ms` + its granted TTL. Returns the granted
    /// TTL (the keep-alive response's `TTL`).
    ///
    /// If the lease carries a checkpointed remaining TTL, the next [`Lessor::checkpoints_due`]
    /// reports a checkpoint of 0 for it, which clears it on every member. (etcd proposes that
    /// clear and waits for it before renewing; here the server may do the same by proposing it
    /// itself, or rely on the next poll: until it is applied a new leader would resume from the
    /// older, shorter remaining TTL.)
    ///
    /// Errors in etcd's order: [`LeaseError::NotLeader`], [`LeaseError::NotFound`],
    /// [`LeaseError::Expired`] (the lease expired at or before `now_ms`; its revoke is coming).
    pub fn renew(&mut self, id: i64, now_ms: u64) -> Result<i64, LeaseError> {
        let leader = self.leader.as_mut().ok_or(LeaseError::NotLeader)?;
        let lease = self.leases.get(&id).ok_or(LeaseError::NotFound)?;
        let timer = leader.timers.get(&id).expect("a lease without a timer");
        if timer.expiry_ms <= now_ms {
            return Err(LeaseError::Expired);
        }
        if lease.remaining_ttl > 0 {
            leader.pending_clears.insert(id);
        }
        leader.set_expiry(id, now_ms.saturating_add(secs_to_ms(lease.ttl)));
        Ok(lease.ttl)
    }

    /// The leases to revoke: those whose expiry is at or before `now_ms`, at most `limit`,
    /// earliest first (by expiry, or for a lease reported before, by when its retry fell due).
    /// A lease reported here is not reported again until `expired_retry_ms` later, unless it is
    /// renewed or the lessor is promoted again; so the leader proposes a revoke once, and
    /// again only if the first did not take. Empty when not leader.
    pub fn expired(&mut self, now_ms: u64, limit: usize) -> Vec<i64> {
        let Some(leader) = self.leader.as_mut() else {
            return Vec::new();
        };
        let ids: Vec<i64> = leader
            .expiry_queue
            .iter()
            .take_while(|&&(due, _)| due <= now_ms)
            .take(limit)
            .map(|&(_, id)| id)
            .collect();
        let retry_at = now_ms.saturating_add(self.config.expired_retry_ms);
        for &id in &ids {
            leader.set_due(id, retry_at);
        }
        ids
    }

    /// The checkpoints to propose, as `(id, remaining_ttl_secs)`, in one `LeaseCheckpoint`
    /// request. First the clears owed after keep-alives (`remaining` 0), then leases whose last
    /// checkpoint (or grant, or promotion) is at least `interval_ms` old, with their remaining
    /// TTL rounded up to whole seconds, as etcd does. A lease is skipped when it has expired (its
    /// revoke is coming) or its remaining TTL is still its full TTL (nothing to save), and
    /// leaves the schedule for good when its TTL is not longer than `interval_ms` (etcd
    /// schedules only leases that outlive an interval). `limit` bounds the leases examined,
    /// so it bounds the result too; what is left is found by the next call. Pass the same
    /// `interval_ms` every time. Empty when not leader.
    pub fn checkpoints_due(&mut self, now_ms: u64, interval_ms: u64, limit: usize) -> Vec<(i64, i64)> {
        let Some(leader) = self.leader.as_mut() else {
            return Vec::new();
        };
        let mut out = Vec::new();
        let clears: Vec<i64> = leader.pending_clears.iter().copied().take(limit).collect();
        for id in clears {
            leader.pending_clears.remove(&id);
            out.push((id, 0));
        }
        let budget = limit - out.len();
        let due: Vec<(u64, i64)> = leader
            .checkpoint_queue
            .iter()
            .take_while(|&&(from, _)| from.saturating_add(interval_ms) <= now_ms)
            .take(budget)
            .copied()
            .collect();
        for (_, id) in due {
            let lease = &self.leases[&id];
            let expiry_ms = leader.timers[&id].expiry_ms;
            if expiry_ms <= now_ms || secs_to_ms(lease.ttl) <= interval_ms {
                leader.set_checkpoint_from(id, None);
                continue;
            }
            leader.set_checkpoint_from(id, Some(now_ms));
            let remaining = (expiry_ms - now_ms).div_ceil(1000) as i64;
            if remaining < lease.ttl {
                out.push((id, remaining));
            }
        }
        out
    }

    // ---- Queries. ----

    /// `LeaseTimeToLive` for lease `id` at `now_ms`, or `None` for an unknown lease (etcd
    /// answers that with TTL -1, not an error). See [`TimeToLive::remaining_ttl`] for the
    /// rounding.
    pub fn time_to_live(&self, id: i64, now_ms: u64) -> Option<TimeToLive> {
        let lease = self.leases.get(&id)?;
        let remaining_ttl = match self.leader.as_ref().and_then(|l| l.timers.get(&id)) {
            // Integer division truncates toward zero, like Go's float-to-int conversion.
            Some(t) => ((i128::from(t.expiry_ms) - i128::from(now_ms)) / 1000) as i64,
            None => lease.remaining_or_granted(),
        };
        Some(TimeToLive {
            id,
            granted_ttl: lease.ttl,
            remaining_ttl,
            keys: lease.keys.iter().cloned().collect(),
        })
    }

    /// The lease `key` is attached to, if any.
    pub fn lease_of(&self, key: &[u8]) -> Option<i64> {
        self.key_to_lease.get(key).copied()
    }

    /// Every lease id, sorted (`LeaseLeases`).
    pub fn leases(&self) -> Vec<i64> {
        self.leases.keys().copied().collect()
    }

    pub fn contains(&self, id: i64) -> bool {
        self.leases.contains_key(&id)
    }

    pub fn len(&self) -> usize {
        self.leases.len()
    }

    pub fn is_empty(&self) -> bool {
        self.leases.is_empty()
    }

    /// The replicated part of every lease, by id: what a snapshot must keep. To restore, grant
    /// each record, checkpoint its remaining TTL, and attach the keys whose `lease` field names
    /// it.
    pub fn records(&self) -> impl Iterator<Item = LeaseRecord> + '_ {
        self.leases.iter().map(|(&id, l)| LeaseRecord { id, ttl: l.ttl, remaining_ttl: l.remaining_ttl })
    }

    /// Checks every invariant written on the fields, in O(n log n). For tests.
    pub fn check_invariants(&self) -> Result<(), String> {
        let mut attached = 0;
        for (&id, lease) in &self.leases {
            if id == 0 {
                return Err("lease id 0".into());
            }
            if !(self.config.min_ttl_secs..=MAX_LEASE_TTL_SECS).contains(&lease.ttl) {
                return Err(format!("lease {id:016x}: ttl {} out of range", lease.ttl));
            }
            if !(0..=MAX_LEASE_TTL_SECS).contains(&lease.remaining_ttl) {
                return Err(format!("lease {id:016x}: remaining ttl {} out of range", lease.remaining_ttl));
            }
            for key in &lease.keys {
                if self.key_to_lease.get(key) != Some(&id) {
                    return Err(format!(
                        "lease {id:016x}: key {key:?} maps to {:?}",
                        self.key_to_lease.get(key)
                    ));
                }
            }
            attached += lease.keys.len();
        }
        // Each key of each lease maps back to it, so the key sets are disjoint; equal counts
        // then mean key_to_lease holds nothing else.
        if attached != self.key_to_lease.len() {
            return Err(format!("{attached} attached keys but {} in key_to_lease", self.key_to_lease.len()));
        }
        let Some(leader) = &self.leader else {
            return Ok(());
        };
        if !leader.timers.keys().eq(self.leases.keys()) {
            return Err("timers and leases differ".into());
        }
        let mut scheduled = 0;
        for (&id, t) in &leader.timers {
            if t.due_ms < t.expiry_ms {
                return Err(format!("lease {id:016x}: due {} before expiry {}", t.due_ms, t.expiry_ms));
            }
            if !leader.expiry_queue.contains(&(t.due_ms, id)) {
                return Err(format!("lease {id:016x}: not in the expiry queue"));
            }
            if let Some(from) = t.checkpoint_from_ms {
                scheduled += 1;
                if !leader.checkpoint_queue.contains(&(from, id)) {
                    return Err(format!("lease {id:016x}: not in the checkpoint queue"));
                }
            }
        }
        if leader.expiry_queue.len() != leader.timers.len() {
            return Err("stale entries in the expiry queue".into());
        }
        if leader.checkpoint_queue.len() != scheduled {
            return Err("stale entries in the checkpoint queue".into());
        }
        if let Some(id) = leader.pending_clears.iter().find(|id| !leader.timers.contains_key(id)) {
            return Err(format!("pending clear for unknown lease {id:016x}"));
        }
        Ok(())
    }
}

/// Chooses lease ids as etcd's `idutil.Generator` does for a grant that names none: the high
/// 16 bits are the low 16 bits of the member id, the low 48 bits a counter that starts from
/// the low 40 bits of the start time in milliseconds shifted left by 8 and is incremented
/// before each id. The top bit is cleared, because lease ids are positive, and 0 is skipped.
/// Different members differ in the prefix; a restarted member starts from a later time.
///
/// The driver creates it with a wall-clock `start_ms` when the member starts (the core has no
/// clock). Ids are usually printed `{:016x}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseIdGen {
    prefix: u64,
    counter: u64,
}

const COUNTER_BITS: u32 = 48;
const TIME_BITS: u32 = 40;

impl LeaseIdGen {
    pub fn new(member_id: u64, start_ms: u64) -> Self {
        LeaseIdGen {
            prefix: (member_id & 0xffff) << COUNTER_BITS,
            counter: (start_ms & ((1 << TIME_BITS) - 1)) << (COUNTER_BITS - TIME_BITS),
        }
    }

    /// The next id: positive, and distinct from every earlier one of this generator until the
    /// 48-bit counter wraps.
    pub fn next_id(&mut self) -> i64 {
        loop {
            self.counter = self.counter.wrapping_add(1);
            let raw = self.prefix | (self.counter & ((1 << COUNTER_BITS) - 1));
            let id = (raw & i64::MAX as u64) as i64;
            if id != 0 {
                return id;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::btree_map;

    const MIN: i64 = DEFAULT_MIN_TTL_SECS;
    const RETRY: u64 = 1_000;

    fn lessor() -> Lessor {
        Lessor::new(LessorConfig { min_ttl_secs: MIN, expired_retry_ms: RETRY })
    }

    fn leader_at(now_ms: u64) -> Lessor {
        let mut l = lessor();
        l.promote(now_ms, 0);
        l
    }

    fn key(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    fn expiry(l: &Lessor, id: i64) -> u64 {
        l.leader.as_ref().unwrap().timers[&id].expiry_ms
    }

    #[test]
    fn grant_raises_ttl_below_the_minimum() {
        let mut l = lessor();
        assert_eq!(l.grant(1, 1, 0), Ok(MIN));
        assert_eq!(l.grant(2, 0, 0), Ok(MIN));
        assert_eq!(l.grant(3, -5, 0), Ok(MIN));
        assert_eq!(l.grant(4, MIN + 1, 0), Ok(MIN + 1));
        assert_eq!(l.time_to_live(1, 0).unwrap().granted_ttl, MIN);
        assert_eq!(l.time_to_live(4, 0).unwrap().granted_ttl, MIN + 1);
        l.check_invariants().unwrap();
    }

    #[test]
    fn min_ttl_follows_etcd_formula() {
        assert_eq!(min_ttl_secs(10, 100), 2); // etcd defaults: 1.5 s rounds up
        assert_eq!(min_ttl_secs(5, 100), 1); // 7 ticks (integer halving) * 100 ms
        assert_eq!(min_ttl_secs(10, 500), 8); // 7.5 s
        assert_eq!(min_ttl_secs(0, 100), 1); // never 0
    }

    #[test]
    fn grant_rejects_too_large_ttl() {
        let mut l = lessor();
        assert_eq!(l.grant(1, MAX_LEASE_TTL_SECS + 1, 0), Err(LeaseError::TooLargeTtl));
        assert_eq!(LeaseError::TooLargeTtl.to_string(), "etcdserver: too large lease TTL");
        assert!(!l.contains(1));
        assert_eq!(l.grant(1, MAX_LEASE_TTL_SECS, 0), Ok(MAX_LEASE_TTL_SECS));
        // Checked before existence, as etcd does.
        assert_eq!(l.grant(1, MAX_LEASE_TTL_SECS + 1, 0), Err(LeaseError::TooLargeTtl));
    }

    #[test]
    fn grant_rejects_an_existing_id_and_keeps_the_lease() {
        let mut l = lessor();
        l.grant(7, 10, 0).unwrap();
        l.attach(7, key("a")).unwrap();
        assert_eq!(l.grant(7, 99, 0), Err(LeaseError::LeaseExists));
        assert_eq!(LeaseError::LeaseExists.to_string(), "etcdserver: lease already exists");
        let ttl = l.time_to_live(7, 0).unwrap();
        assert_eq!((ttl.granted_ttl, ttl.keys), (10, vec![key("a")]));
    }

    #[test]
    fn grant_of_id_zero_is_refused() {
        let mut l = lessor();
        assert_eq!(l.grant(0, 10, 0), Err(LeaseError::NotFound));
        assert_eq!(l.records().count(), 0);
    }

    #[test]
    fn revoke_returns_attached_keys_sorted() {
        let mut l = lessor();
        l.grant(1, 10, 0).unwrap();
        l.grant(2, 10, 0).unwrap();
        for k in ["c", "a", "b"] {
            l.attach(1, key(k)).unwrap();
        }
        l.attach(2, key("z")).unwrap();
        assert_eq!(l.revoke(1), Ok(vec![key("a"), key("b"), key("c")]));
        assert_eq!(l.lease_of(b"a"), None);
        assert_eq!(l.lease_of(b"z"), Some(2));
        assert_eq!(l.revoke(1), Err(LeaseError::NotFound));
        assert_eq!(LeaseError::NotFound.to_string(), "etcdserver: requested lease not found");
        assert_eq!(l.leases(), vec![2]);
        l.check_invariants().unwrap();
    }

    #[test]
    fn attaching_to_another_lease_detaches_from_the_old_one() {
        let mut l = lessor();
        l.grant(1, 10, 0).unwrap();
        l.grant(2, 10, 0).unwrap();
        assert_eq!(l.attach(1, key("k")), Ok(None));
        assert_eq!(l.attach(1, key("k")), Ok(None));
        assert_eq!(l.attach(2, key("k")), Ok(Some(1)));
        assert_eq!(l.lease_of(b"k"), Some(2));
        assert!(l.time_to_live(1, 0).unwrap().keys.is_empty());
        l.check_invariants().unwrap();
        assert_eq!(l.revoke(1), Ok(vec![]));
        assert_eq!(l.revoke(2), Ok(vec![key("k")]));
    }

    #[test]
    fn attach_and_detach_need_a_known_lease() {
        let mut l = lessor();
        l.grant(1, 10, 0).unwrap();
        l.grant(2, 10, 0).unwrap();
        assert_eq!(l.attach(3, key("k")), Err(LeaseError::NotFound));
        assert_eq!(l.lease_of(b"k"), None);
        l.attach(1, key("k")).unwrap();
        assert_eq!(l.detach(3, b"k"), Err(LeaseError::NotFound));
        // A key attached elsewhere stays where it is.
        assert_eq!(l.detach(2, b"k"), Ok(false));
        assert_eq!(l.lease_of(b"k"), Some(1));
        assert_eq!(l.detach(1, b"k"), Ok(true));
        assert_eq!(l.lease_of(b"k"), None);
        l.attach(2, key("j")).unwrap();
        assert_eq!(l.detach_key(b"j"), Some(2));
        assert_eq!(l.detach_key(b"j"), None);
        l.check_invariants().unwrap();
    }

    #[test]
    fn expired_reports_earliest_first_up_to_the_limit() {
        let mut l = leader_at(0);
        l.grant(1, 30, 0).unwrap();
        l.grant(2, 10, 0).unwrap();
        l.grant(3, 20, 0).unwrap();
        l.grant(4, 10, 5_000).unwrap();
        assert_eq!(l.expired(9_999, 10), Vec::<i64>::new());
        assert_eq!(l.expired(10_000, 10), vec![2]);
        l.revoke(2).unwrap();
        assert_eq!(l.expired(25_000, 0), Vec::<i64>::new());
        assert_eq!(l.expired(25_000, 2), vec![4, 3]);
        l.revoke(4).unwrap();
        l.revoke(3).unwrap();
        assert_eq!(l.expired(29_999, 10), Vec::<i64>::new());
        assert_eq!(l.expired(30_000, 1), vec![1]);
        l.check_invariants().unwrap();
    }

    #[test]
    fn expired_lease_is_not_reported_again_before_the_retry_interval() {
        let mut l = leader_at(0);
        l.grant(1, 10, 0).unwrap();
        assert_eq!(l.expired(10_000, 10), vec![1]);
        assert_eq!(l.expired(10_500, 10), Vec::<i64>::new());
        assert_eq!(l.expired(10_000 + RETRY - 1, 10), Vec::<i64>::new());
        // The revoke did not take: report it again.
        assert_eq!(l.expired(10_000 + RETRY, 10), vec![1]);
        assert_eq!(l.expired(10_000 + RETRY, 10), Vec::<i64>::new());
        // The expiry itself did not move.
        assert_eq!(expiry(&l, 1), 10_000);
        l.revoke(1).unwrap();
        assert_eq!(l.expired(100_000, 10), Vec::<i64>::new());
        l.check_invariants().unwrap();
    }

    #[test]
    fn renew_pushes_the_expiry() {
        let mut l = leader_at(0);
        l.grant(1, 10, 0).unwrap();
        assert_eq!(l.renew(1, 8_000), Ok(10));
        assert_eq!(expiry(&l, 1), 18_000);
        assert_eq!(l.expired(17_999, 10), Vec::<i64>::new());
        assert_eq!(l.time_to_live(1, 8_000).unwrap().remaining_ttl, 10);
        assert_eq!(l.expired(18_000, 10), vec![1]);
        l.check_invariants().unwrap();
    }

    #[test]
    fn renew_errors() {
        let mut l = lessor();
        l.grant(1, 10, 0).unwrap();
        assert_eq!(l.renew(1, 0), Err(LeaseError::NotLeader));
        l.promote(0, 0);
        assert_eq!(l.renew(2, 0), Err(LeaseError::NotFound));
        assert_eq!(l.renew(1, 10_000), Err(LeaseError::Expired));
        // A refused renewal leaves the lease expired.
        assert_eq!(expiry(&l, 1), 10_000);
        assert_eq!(l.renew(1, 9_999), Ok(10));
    }

    #[test]
    fn promote_resumes_from_the_checkpointed_remaining_ttl() {
        let mut l = lessor();
        l.grant(1, 100, 0).unwrap();
        l.grant(2, 100, 0).unwrap();
        l.checkpoint(1, 40);
        l.promote(50_000, 2_000);
        assert_eq!(expiry(&l, 1), 50_000 + 2_000 + 40_000);
        assert_eq!(expiry(&l, 2), 50_000 + 2_000 + 100_000);
        // Checkpoint 0 clears it.
        l.checkpoint(1, 0);
        l.promote(50_000, 2_000);
        assert_eq!(expiry(&l, 1), 50_000 + 2_000 + 100_000);
        assert!(!l.checkpoint(9, 5));
        l.check_invariants().unwrap();
    }

    /// Two members apply the same entries; the leader fails right after its checkpoint commits
    /// and the other takes over. The lease then expires within a second (the checkpoint's
    /// rounding up) of `extend` after the old leader's expiry: neither extended further nor
    /// lost. Without the checkpoint the new leader would restart the full TTL.
    #[test]
    fn leader_change_neither_extends_nor_loses_a_lease() {
        let interval = 10_000;
        let extend = 1_000;
        let mut a = leader_at(0);
        let mut b = lessor();
        for m in [&mut a, &mut b] {
            m.grant(1, 60, 1_234).unwrap();
            m.grant(2, 60, 1_234).unwrap();
        }
        let true_expiry = expiry(&a, 1);
        assert_eq!(true_expiry, 61_234);
        let now = 25_000;
        let cps = a.checkpoints_due(now, interval, CHECKPOINT_LIMIT);
        // 36.234 s left, rounded up.
        assert_eq!(cps, vec![(1, 37), (2, 37)]);
        // Only lease 1's checkpoint commits before the failure.
        b.checkpoint(cps[0].0, cps[0].1);
        b.promote(now, extend);
        let resumed = expiry(&b, 1);
        assert!(resumed >= true_expiry + extend, "lost: {resumed}");
        assert!(resumed < true_expiry + extend + 1_000, "extended: {resumed}");
        assert_eq!(expiry(&b, 2), now + extend + 60_000);
    }

    #[test]
    fn demote_stops_expiries() {
        let mut l = leader_at(0);
        l.grant(1, 10, 0).unwrap();
        l.checkpoint(1, 7);
        l.demote();
        assert!(!l.is_leader());
        assert_eq!(l.expired(1_000_000, 10), Vec::<i64>::new());
        assert_eq!(l.checkpoints_due(1_000_000, 0, 10), Vec::<(i64, i64)>::new());
        assert_eq!(l.renew(1, 1_000_000), Err(LeaseError::NotLeader));
        assert_eq!(l.time_to_live(1, 1_000_000).unwrap().remaining_ttl, 7);
        // Replicated changes still apply.
        l.grant(2, 10, 0).unwrap();
        assert_eq!(l.leases(), vec![1, 2]);
        l.check_invariants().unwrap();
    }

    #[test]
    fn time_to_live_rounds_like_etcd() {
        let mut l = leader_at(0);
        l.grant(1, 10, 0).unwrap();
        l.attach(1, key("b")).unwrap();
        l.attach(1, key("a")).unwrap();
        let ttl = |l: &Lessor, now| l.time_to_live(1, now).unwrap().remaining_ttl;
        assert_eq!(ttl(&l, 0), 10);
        assert_eq!(ttl(&l, 1), 9); // 9.999 s truncates
        assert_eq!(ttl(&l, 9_001), 0);
        assert_eq!(ttl(&l, 10_500), 0); // -0.5 s truncates toward zero
        assert_eq!(ttl(&l, 11_500), -1); // expired, revoke not applied yet
        let full = l.time_to_live(1, 3_000).unwrap();
        assert_eq!(
            full,
            TimeToLive { id: 1, granted_ttl: 10, remaining_ttl: 7, keys: vec![key("a"), key("b")] }
        );
        assert_eq!(l.time_to_live(2, 0), None);
        // A follower reports the checkpointed remaining TTL, else the granted one.
        l.demote();
        assert_eq!(ttl(&l, 5_000), 10);
        l.checkpoint(1, 4);
        assert_eq!(ttl(&l, 5_000), 4);
    }

    #[test]
    fn checkpoints_wait_for_the_interval_and_round_up() {
        let mut l = leader_at(0);
        l.grant(1, 100, 0).unwrap();
        l.grant(2, 5, 0).unwrap(); // fits in one interval: never checkpointed
        assert_eq!(l.checkpoints_due(9_999, 10_000, 10), Vec::<(i64, i64)>::new());
        assert_eq!(l.checkpoints_due(10_500, 10_000, 10), vec![(1, 90)]);
        // Next one a full interval after the last.
        assert_eq!(l.checkpoints_due(20_499, 10_000, 10), Vec::<(i64, i64)>::new());
        assert_eq!(l.checkpoints_due(20_500, 10_000, 10), vec![(1, 80)]);
        // Lease 2 left the schedule.
        assert_eq!(l.leader.as_ref().unwrap().timers[&2].checkpoint_from_ms, None);
        l.check_invariants().unwrap();
    }

    #[test]
    fn checkpoints_skip_full_and_expired_leases_and_respect_the_limit() {
        let mut l = leader_at(0);
        for id in 1..=3 {
            l.grant(id, 30, 0).unwrap();
        }
        l.renew(3, 10_000).unwrap(); // still its full TTL at 10 s
        assert_eq!(l.checkpoints_due(10_000, 10_000, 2), vec![(1, 20), (2, 20)]);
        assert_eq!(l.checkpoints_due(10_000, 10_000, 2), Vec::<(i64, i64)>::new());
        // Leases 1 and 2 expired at 30 s: no checkpoint, the revoke is coming.
        assert_eq!(l.checkpoints_due(30_000, 10_000, 10), vec![(3, 10)]);
        let leader = l.leader.as_ref().unwrap();
        assert_eq!(leader.timers[&1].checkpoint_from_ms, None);
        assert_eq!(leader.timers[&3].checkpoint_from_ms, Some(30_000));
        l.check_invariants().unwrap();
    }

    #[test]
    fn renew_after_a_checkpoint_owes_a_clear() {
        let mut l = leader_at(0);
        l.grant(1, 100, 0).unwrap();
        l.grant(2, 100, 0).unwrap();
        l.renew(2, 1_000).unwrap(); // nothing checkpointed: nothing to clear
        l.checkpoint(1, 60);
        l.renew(1, 2_000).unwrap();
        assert_eq!(l.checkpoints_due(2_000, 10_000, 10), vec![(1, 0)]);
        assert_eq!(l.checkpoints_due(2_000, 10_000, 10), Vec::<(i64, i64)>::new());
        l.checkpoint(1, 0);
        assert_eq!(l.time_to_live(1, 2_000).unwrap().remaining_ttl, 100);
        l.check_invariants().unwrap();
    }

    #[test]
    fn check_invariants_catches_a_broken_reverse_map() {
        let mut l = leader_at(0);
        l.grant(1, 10, 0).unwrap();
        l.grant(2, 10, 0).unwrap();
        l.attach(1, key("k")).unwrap();
        l.check_invariants().unwrap();
        let mut broken = l.clone();
        broken.key_to_lease.insert(key("k"), 2);
        assert!(broken.check_invariants().is_err());
        let mut broken = l.clone();
        broken.key_to_lease.insert(key("orphan"), 2);
        assert!(broken.check_invariants().is_err());
        let mut broken = l.clone();
        broken.leader.as_mut().unwrap().expiry_queue.insert((5, 1));
        assert!(broken.check_invariants().is_err());
        let mut broken = l;
        broken.leader.as_mut().unwrap().timers.remove(&2);
        assert!(broken.check_invariants().is_err());
    }

    #[test]
    fn records_hold_the_replicated_part() {
        let mut l = lessor();
        l.grant(2, 10, 0).unwrap();
        l.grant(1, 1, 0).unwrap();
        l.checkpoint(2, 4);
        let records: Vec<_> = l.records().collect();
        assert_eq!(
            records,
            vec![
                LeaseRecord { id: 1, ttl: MIN, remaining_ttl: 0 },
                LeaseRecord { id: 2, ttl: 10, remaining_ttl: 4 }
            ]
        );
    }

    #[test]
    fn id_generator_matches_etcd() {
        let start_ms = 1_700_000_000_123;
        let mut g = LeaseIdGen::new(0x8211_f1d0_f64f_3269, start_ms);
        let first = g.next_id();
        assert!(format!("{first:016x}").starts_with("3269"), "{first:016x}");
        assert_eq!(first as u64, (0x3269 << 48) | (((start_ms & ((1 << 40) - 1)) << 8) + 1));
        assert_eq!(g.next_id(), first + 1);
        // The top bit is cleared so ids stay positive.
        let mut g = LeaseIdGen::new(0x1234_5678_9abc_bfb3, start_ms);
        let id = g.next_id();
        assert!(id > 0);
        assert!(format!("{id:016x}").starts_with("3fb3"), "{id:016x}");
        // Only the low 40 bits of the start time count.
        let mut a = LeaseIdGen::new(7, start_ms);
        let mut b = LeaseIdGen::new(7, start_ms | (1 << 45));
        assert_eq!(a.next_id(), b.next_id());
    }

    #[test]
    fn id_generator_skips_zero() {
        // Prefix 0 after clearing the top bit, counter about to wrap to 0.
        let mut g = LeaseIdGen { prefix: 0x8000 << 48, counter: (1 << 48) - 1 };
        assert_eq!(g.next_id(), 1);
    }

    // ---- The lessor against a simple model. ----

    const INTERVAL: u64 = 2_000;

    #[derive(Debug, Clone)]
    enum Op {
        Grant(i64, i64),
        Revoke(i64),
        Attach(i64, u8),
        Detach(i64, u8),
        DetachKey(u8),
        Renew(i64),
        Checkpoint(i64, i64),
        Advance(u64),
        Expired(usize),
        CheckpointsDue(usize),
        Promote(u64),
        Demote,
    }

    fn op() -> impl Strategy<Value = Op> {
        let id = 0i64..6;
        let ttl = prop_oneof![4 => -2i64..12, 1 => (MAX_LEASE_TTL_SECS - 1)..=(MAX_LEASE_TTL_SECS + 1)];
        prop_oneof![
            4 => (1i64..6, ttl).prop_map(|(i, t)| Op::Grant(i, t)),
            1 => id.clone().prop_map(Op::Revoke),
            4 => (id.clone(), 0u8..6).prop_map(|(i, k)| Op::Attach(i, k)),
            1 => (id.clone(), 0u8..6).prop_map(|(i, k)| Op::Detach(i, k)),
            1 => (0u8..6).prop_map(Op::DetachKey),
            3 => id.clone().prop_map(Op::Renew),
            1 => (id, -1i64..12).prop_map(|(i, r)| Op::Checkpoint(i, r)),
            // Whole seconds too, so that `now` lands exactly on expiries (TTLs are whole seconds).
            2 => (0u64..6_000).prop_map(Op::Advance),
            2 => (0u64..6).prop_map(|s| Op::Advance(s * 1_000)),
            2 => (0usize..4).prop_map(Op::Expired),
            2 => (0usize..4).prop_map(Op::CheckpointsDue),
            1 => (0u64..2_000).prop_map(Op::Promote),
            1 => Just(Op::Demote),
        ]
    }

    #[derive(Debug, Clone)]
    struct ModelLease {
        ttl: i64,
        remaining: i64,
        keys: BTreeSet<u8>,
        /// Meaningful only while leader.
        expiry: u64,
        due: u64,
    }

    #[derive(Debug, Default)]
    struct Model {
        leases: BTreeMap<i64, ModelLease>,
        leader: bool,
        now: u64,
    }

    fn model_key(k: u8) -> Bytes {
        Bytes::from(vec![b'k', k])
    }

    impl Model {
        fn holder(&self, k: u8) -> Option<i64> {
            self.leases.iter().find(|(_, l)| l.keys.contains(&k)).map(|(&id, _)| id)
        }

        fn time_to_live(&self, id: i64) -> Option<TimeToLive> {
            let l = self.leases.get(&id)?;
            let remaining_ttl = if self.leader {
                ((l.expiry as i128 - self.now as i128) / 1000) as i64
            } else if l.remaining > 0 {
                l.remaining
            } else {
                l.ttl
            };
            Some(TimeToLive {
                id,
                granted_ttl: l.ttl,
                remaining_ttl,
                keys: l.keys.iter().map(|&k| model_key(k)).collect(),
            })
        }
    }

    fn step(l: &mut Lessor, m: &mut Model, op: &Op) {
        let now = m.now;
        match *op {
            Op::Grant(id, ttl) => {
                let expected = if ttl > MAX_LEASE_TTL_SECS {
                    Err(LeaseError::TooLargeTtl)
                } else if let btree_map::Entry::Vacant(slot) = m.leases.entry(id) {
                    let ttl = ttl.max(MIN);
                    let expiry = now + ttl as u64 * 1000;
                    slot.insert(ModelLease { ttl, remaining: 0, keys: BTreeSet::new(), expiry, due: expiry });
                    Ok(ttl)
                } else {
                    Err(LeaseError::LeaseExists)
                };
                assert_eq!(l.grant(id, ttl, now), expected);
            }
            Op::Revoke(id) => {
                let expected = match m.leases.remove(&id) {
                    Some(ml) => Ok(ml.keys.iter().map(|&k| model_key(k)).collect()),
                    None => Err(LeaseError::NotFound),
                };
                assert_eq!(l.revoke(id), expected);
            }
            Op::Attach(id, k) => {
                let expected = if m.leases.contains_key(&id) {
                    let old = m.holder(k);
                    if let Some(old) = old {
                        m.leases.get_mut(&old).unwrap().keys.remove(&k);
                    }
                    m.leases.get_mut(&id).unwrap().keys.insert(k);
                    Ok(old.filter(|&o| o != id))
                } else {
                    Err(LeaseError::NotFound)
                };
                assert_eq!(l.attach(id, model_key(k)), expected);
            }
            Op::Detach(id, k) => {
                let expected = match m.leases.get_mut(&id) {
                    Some(ml) => Ok(ml.keys.remove(&k)),
                    None => Err(LeaseError::NotFound),
                };
                assert_eq!(l.detach(id, &model_key(k)), expected);
            }
            Op::DetachKey(k) => {
                let expected = m.holder(k);
                if let Some(id) = expected {
                    m.leases.get_mut(&id).unwrap().keys.remove(&k);
                }
                assert_eq!(l.detach_key(&model_key(k)), expected);
            }
            Op::Renew(id) => {
                let expected = if !m.leader {
                    Err(LeaseError::NotLeader)
                } else {
                    match m.leases.get_mut(&id) {
                        None => Err(LeaseError::NotFound),
                        Some(ml) if ml.expiry <= now => Err(LeaseError::Expired),
                        Some(ml) => {
                            ml.expiry = now + ml.ttl as u64 * 1000;
                            ml.due = ml.expiry;
                            Ok(ml.ttl)
                        }
                    }
                };
                assert_eq!(l.renew(id, now), expected);
            }
            Op::Checkpoint(id, r) => {
                let expected = match m.leases.get_mut(&id) {
                    Some(ml) => {
                        ml.remaining = r.max(0);
                        true
                    }
                    None => false,
                };
                assert_eq!(l.checkpoint(id, r), expected);
            }
            Op::Advance(ms) => m.now += ms,
            Op::Expired(limit) => {
                let mut expected: Vec<(u64, i64)> = if m.leader {
                    m.leases.iter().filter(|(_, ml)| ml.due <= now).map(|(&id, ml)| (ml.due, id)).collect()
                } else {
                    Vec::new()
                };
                expected.sort();
                expected.truncate(limit);
                for &(_, id) in &expected {
                    m.leases.get_mut(&id).unwrap().due = now + RETRY;
                }
                let expected: Vec<i64> = expected.into_iter().map(|(_, id)| id).collect();
                assert_eq!(l.expired(now, limit), expected);
            }
            Op::CheckpointsDue(limit) => {
                let cps = l.checkpoints_due(now, INTERVAL, limit);
                assert!(cps.len() <= limit);
                if !m.leader {
                    assert!(cps.is_empty());
                }
                // As the driver would: propose them, and they commit.
                for &(id, remaining) in &cps {
                    let ml = &m.leases[&id];
                    if remaining != 0 {
                        assert!(ml.expiry > now);
                        assert_eq!(remaining, (ml.expiry - now).div_ceil(1000) as i64);
                        assert!(remaining < ml.ttl);
                    }
                    m.leases.get_mut(&id).unwrap().remaining = remaining;
                    assert!(l.checkpoint(id, remaining));
                }
            }
            Op::Promote(extend) => {
                m.leader = true;
                for ml in m.leases.values_mut() {
                    let resume = if ml.remaining > 0 { ml.remaining } else { ml.ttl };
                    ml.expiry = now + extend + resume as u64 * 1000;
                    ml.due = ml.expiry;
                }
                l.promote(now, extend);
            }
            Op::Demote => {
                m.leader = false;
                l.demote();
            }
        }
    }

    proptest! {
        #[test]
        fn lessor_matches_model(ops in prop::collection::vec(op(), 1..80), start_leader in any::<bool>()) {
            let mut l = lessor();
            let mut m = Model::default();
            if start_leader {
                l.promote(0, 0);
                m.leader = true;
            }
            for op in &ops {
                step(&mut l, &mut m, op);
                if let Err(e) = l.check_invariants() {
                    panic!("after {op:?}: {e}");
                }
                prop_assert_eq!(l.is_leader(), m.leader);
                prop_assert_eq!(l.leases(), m.leases.keys().copied().collect::<Vec<_>>());
                for id in 0..6 {
                    prop_assert_eq!(l.time_to_live(id, m.now), m.time_to_live(id), "lease {}", id);
                }
                for k in 0..6 {
                    prop_assert_eq!(l.lease_of(&model_key(k)), m.holder(k), "key {}", k);
                }
            }
        }
    }
}
