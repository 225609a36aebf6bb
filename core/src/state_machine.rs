//! What the log's entries mean: client writes applied to the MVCC store, configuration
//! changes applied to the membership. Deterministic: equal logs give equal states.

use crate::lease::{LeaseError, Lessor, LessorConfig};
use crate::membership::{MemberError, Membership};
use crate::mvcc::COMPACT_KEYS_PER_STEP;
use crate::mvcc::{MvccError, Store};
use crate::pb::etcdserverpb::{
    alarm_request::AlarmAction, AlarmMember, AlarmRequest, AlarmResponse, AlarmType, CompactionResponse,
    DeleteRangeResponse, LeaseCheckpointResponse, LeaseGrantResponse, LeaseRevokeResponse, Member,
    PutResponse, TxnResponse,
};
use crate::pb::keelpb::{
    request::Op, ConfChange, ConfState, Entry, EntryType, KeyHistoryImage, LeaseImage, Request, StateImage,
};
use crate::pb::mvccpb::{event::EventType, Event};
use prost::Message as _;

/// Whether an entry holds what [`StateMachine::apply`] applies: a client request (or nothing),
/// or a configuration change of a known type. Raft refuses a peer's proposal that does not
/// ([`crate::raft::Config::proposal_check`]), so nothing reaches the log that was forged or
/// damaged on the way.
pub fn entry_decodes(e: &Entry) -> bool {
    if e.entry_type == EntryType::EntryConfChange as i32 {
        return ConfChange::decode(e.data.clone())
            .is_ok_and(|cc| crate::pb::keelpb::ConfChangeType::try_from(cc.change_type).is_ok());
    }
    e.data.is_empty() || Request::decode(e.data.clone()).is_ok()
}

/// Whether a snapshot's data (a `FullImage`) is the state at the index, term and configuration
/// its metadata names. Raft refuses a peer's snapshot that is not
/// ([`crate::raft::Config::snapshot_check`]): installing it would replace this member's state
/// with a state at another point of the log. Reads the state record only.
pub fn snapshot_matches(snap: &crate::pb::keelpb::Snapshot) -> bool {
    let Some(meta) = &snap.metadata else { return false };
    let Ok(header) = crate::pb::keelpb::FullImageHeader::decode(snap.data.clone()) else { return false };
    header.state.is_some_and(|s| {
        s.applied_index == meta.index && s.applied_term == meta.term && s.conf_state == meta.conf_state
    })
}

/// The reply to one applied client write.
#[derive(Debug, Clone, PartialEq)]
pub enum WriteResponse {
    Put(PutResponse),
    DeleteRange(DeleteRangeResponse),
    Txn(TxnResponse),
    Compaction(CompactionResponse),
    LeaseGrant(LeaseGrantResponse),
    LeaseRevoke(LeaseRevokeResponse),
    LeaseCheckpoint(LeaseCheckpointResponse),
    MemberAttributes,
    Alarm(AlarmResponse),
}

impl WriteResponse {
    /// The revision the write left the store at, which its reply reports.
    pub fn revision(&self) -> i64 {
        let h = match self {
            WriteResponse::Put(r) => &r.header,
            WriteResponse::DeleteRange(r) => &r.header,
            WriteResponse::Txn(r) => &r.header,
            WriteResponse::Compaction(r) => &r.header,
            WriteResponse::LeaseGrant(r) => &r.header,
            WriteResponse::LeaseRevoke(r) => &r.header,
            WriteResponse::LeaseCheckpoint(r) => &r.header,
            WriteResponse::Alarm(r) => &r.header,
            WriteResponse::MemberAttributes => return 0,
        };
        h.as_ref().map_or(0, |h| h.revision)
    }

    pub fn set_header(&mut self, header: crate::pb::etcdserverpb::ResponseHeader) {
        let h = match self {
            WriteResponse::Put(r) => &mut r.header,
            WriteResponse::DeleteRange(r) => &mut r.header,
            WriteResponse::Txn(r) => &mut r.header,
            WriteResponse::Compaction(r) => &mut r.header,
            WriteResponse::LeaseGrant(r) => &mut r.header,
            WriteResponse::LeaseRevoke(r) => &mut r.header,
            WriteResponse::LeaseCheckpoint(r) => &mut r.header,
            WriteResponse::Alarm(r) => &mut r.header,
            WriteResponse::MemberAttributes => return,
        };
        *h = Some(header);
    }
}

/// What applying one entry did, for the driver to route replies.
#[derive(Debug)]
pub enum Applied {
    /// An empty entry (a new leader's) or one carrying nothing to reply to.
    Nothing,
    /// A client write; `request_id` names the proposer's waiter. `events` are the changes it
    /// made (empty if none), for watchers.
    Write {
        request_id: u64,
        result: Result<WriteResponse, ApplyError>,
        events: Vec<crate::pb::mvccpb::Event>,
    },
    /// A committed configuration change. If the member table took it (`result` is Ok) the
    /// driver hands it to Raft ([`crate::raft::RawNode::apply_conf_change`]); a rejected one
    /// changes nothing anywhere, and its proposer (`change.id`) gets the error.
    ConfChange { change: ConfChange, result: Result<(), MemberError> },
}

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum ApplyError {
    #[error(transparent)]
    Mvcc(#[from] MvccError),
    #[error(transparent)]
    Lease(#[from] LeaseError),
    /// The entry is not one this version of Keel understands. Applying nothing keeps every
    /// replica equal; the proposer is told.
    #[error("etcdserver: unsupported request in log entry: {0}")]
    Unsupported(&'static str),
    /// A write that could grow the database while the NOSPACE alarm is raised.
    #[error("etcdserver: mvcc: database space exceeded")]
    NoSpace,
}

/// The replicated state: the key-value store and the cluster's members.
///
/// Invariants: `applied_index` is the index of the last entry passed to
/// [`StateMachine::apply`]; the store's known leases are exactly the lessor's.
pub struct StateMachine {
    pub store: Store,
    pub lessor: Lessor,
    membership: Membership,
    applied_index: u64,
    /// Request ids applied recently (bounded, oldest dropped first). A proposal can reach the
    /// log twice (a forwarded proposal whose message was delivered twice); the second copy
    /// must not apply again, or a write would take effect twice.
    recent_ids: std::collections::HashSet<u64>,
    recent_order: std::collections::VecDeque<u64>,
    /// Raised alarms as (alarm type, member id). Replicated: every member refuses the same
    /// writes while one is raised.
    alarms: std::collections::BTreeSet<(i32, u64)>,
}

/// Bound on the request ids remembered for de-duplication.
pub const RECENT_REQUESTS_MAX: usize = 1 << 16;
/// Bound on raised alarms: one per alarm type per member, and members are bounded far below.
pub const ALARMS_MAX: usize = 1 << 12;

impl Default for StateMachine {
    fn default() -> Self {
        StateMachine::new(LessorConfig::default())
    }
}

impl StateMachine {
    pub fn new(lease_config: LessorConfig) -> Self {
        StateMachine {
            store: Store::new(),
            lessor: Lessor::new(lease_config),
            membership: Membership::default(),
            applied_index: 0,
            recent_ids: Default::default(),
            recent_order: Default::default(),
            alarms: Default::default(),
        }
    }

    /// Everything but the keys' histories, as of the applied index (whose term and the
    /// configuration in force there the caller knows).
    pub fn image_state(&self, applied_term: u64, conf_state: ConfState) -> StateImage {
        StateImage {
            applied_index: self.applied_index,
            applied_term,
            conf_state: Some(conf_state),
            current_revision: self.store.revision(),
            compacted_revision: self.store.compacted(),
            compact_cursor: self.store.compact_cursor().cloned(),
            leases: self
                .lessor
                .records()
                .map(|r| LeaseImage { id: r.id, ttl: r.ttl, remaining_ttl: r.remaining_ttl })
                .collect(),
            members: self.membership.members().cloned().collect(),
            recent_ids: self.recent_order.iter().copied().collect(),
            removed_members: self.membership.removed().collect(),
            alarms: self.alarms().collect(),
        }
    }

    /// A state machine rebuilt from an image: `state`, and every key's history in ascending key
    /// order. Checks what it reads; an error says what is wrong.
    pub fn restore(
        lease_config: LessorConfig,
        state: &StateImage,
        keys: impl Iterator<Item = (bytes::Bytes, KeyHistoryImage)>,
    ) -> Result<StateMachine, String> {
        let store = crate::mvcc::Store::restore(
            keys,
            state.current_revision,
            state.compacted_revision,
            state.compact_cursor.clone(),
            state.leases.iter().map(|l| l.id),
        )?;
        let live_leased = store.live_leased_keys();
        let lessor = Lessor::restore(
            lease_config,
            state.leases.iter().map(|l| crate::lease::LeaseRecord {
                id: l.id,
                ttl: l.ttl,
                remaining_ttl: l.remaining_ttl,
            }),
            live_leased.into_iter(),
        )?;
        let recent_ids: std::collections::HashSet<u64> = state.recent_ids.iter().copied().collect();
        if state.recent_ids.len() > RECENT_REQUESTS_MAX || recent_ids.len() != state.recent_ids.len() {
            return Err(format!("{} recent request ids, over the bound or repeated", state.recent_ids.len()));
        }
        let mut alarms = std::collections::BTreeSet::new();
        for a in &state.alarms {
            if AlarmType::try_from(a.alarm).is_err() || a.alarm == AlarmType::None as i32 {
                return Err(format!("alarm of unknown type {} for member {:x}", a.alarm, a.member_id));
            }
            if !alarms.insert((a.alarm, a.member_id)) {
                return Err(format!("alarm {} for member {:x} listed twice", a.alarm, a.member_id));
            }
        }
        if alarms.len() > ALARMS_MAX {
            return Err(format!("{} alarms, over the bound of {ALARMS_MAX}", alarms.len()));
        }
        Ok(StateMachine {
            store,
            lessor,
            membership: Membership::restore(
                state.members.iter().cloned(),
                state.removed_members.iter().copied(),
            ),
            applied_index: state.applied_index,
            recent_ids,
            recent_order: state.recent_ids.iter().copied().collect(),
            alarms,
        })
    }

    /// Keeps the lessor's key sets in step with what the write did to keys.
    fn track_leases(&mut self, events: &[Event]) {
        for e in events {
            let Some(kv) = &e.kv else { continue };
            if e.r#type == EventType::Put as i32 && kv.lease != 0 {
                // Attaching moves the key off any lease it had; the lease exists (the put checked).
                let _ = self.lessor.attach(kv.lease, kv.key.clone());
            } else {
                self.lessor.detach_key(&kv.key);
            }
        }
    }

    pub fn applied_index(&self) -> u64 {
        self.applied_index
    }

    pub fn member(&self, id: u64) -> Option<&Member> {
        self.membership.member(id)
    }

    pub fn members(&self) -> impl Iterator<Item = &Member> {
        self.membership.members()
    }

    pub fn membership(&self) -> &Membership {
        &self.membership
    }

    /// The raised alarms, ordered by alarm type, then member id.
    pub fn alarms(&self) -> impl Iterator<Item = AlarmMember> + '_ {
        self.alarms.iter().map(|&(alarm, member_id)| AlarmMember { member_id, alarm })
    }

    fn no_space(&self) -> bool {
        self.alarms
            .range((AlarmType::Nospace as i32, 0)..=(AlarmType::Nospace as i32, u64::MAX))
            .next()
            .is_some()
    }

    /// etcd's alarm requests: raising one already raised, or clearing one that is not, changes
    /// nothing; the answer lists the alarm changed (or, for GET, the alarms of the type asked
    /// for, all for NONE).
    fn apply_alarm(&mut self, r: &AlarmRequest) -> AlarmResponse {
        let alarm = AlarmMember { member_id: r.member_id, alarm: r.alarm };
        let known = AlarmType::try_from(r.alarm).is_ok_and(|t| t != AlarmType::None);
        let alarms = match AlarmAction::try_from(r.action) {
            Ok(AlarmAction::Activate) if known => {
                if self.alarms.len() < ALARMS_MAX || self.alarms.contains(&(r.alarm, r.member_id)) {
                    self.alarms.insert((r.alarm, r.member_id));
                    vec![alarm]
                } else {
                    Vec::new()
                }
            }
            Ok(AlarmAction::Deactivate) if self.alarms.remove(&(r.alarm, r.member_id)) => vec![alarm],
            Ok(AlarmAction::Get) => {
                self.alarms().filter(|a| r.alarm == AlarmType::None as i32 || a.alarm == r.alarm).collect()
            }
            _ => Vec::new(),
        };
        AlarmResponse { header: None, alarms }
    }

    /// Applies one committed entry. `now_ms` (a monotonic clock of this member) only feeds the
    /// leader-side lease expiry; the replicated state never depends on it.
    pub fn apply(&mut self, entry: &Entry, now_ms: u64) -> Applied {
        assert!(
            entry.index > self.applied_index,
            "entry {} applied after {}",
            entry.index,
            self.applied_index
        );
        self.applied_index = entry.index;
        if entry.entry_type == EntryType::EntryConfChange as i32 {
            return self.apply_conf_change(entry);
        }
        if entry.data.is_empty() {
            return Applied::Nothing;
        }
        let request = match Request::decode(entry.data.clone()) {
            Ok(r) => r,
            // Nothing Keel proposes fails to decode (the client port decodes every request with
            // this same code), so this is a forged or damaged entry. Decoding is deterministic:
            // every member refuses it alike, applies nothing and goes on.
            Err(_) => {
                return Applied::Write {
                    request_id: 0,
                    result: Err(ApplyError::Unsupported("entry does not decode")),
                    events: Vec::new(),
                }
            }
        };
        if request.id != 0 {
            if !self.recent_ids.insert(request.id) {
                return Applied::Nothing;
            }
            self.recent_order.push_back(request.id);
            if self.recent_order.len() > RECENT_REQUESTS_MAX {
                let old = self.recent_order.pop_front().expect("non-empty");
                self.recent_ids.remove(&old);
            }
        }
        let grows_db = match &request.op {
            Some(Op::Put(_)) | Some(Op::LeaseGrant(_)) => true,
            Some(Op::Txn(txn)) => crate::quota::txn_cost(txn) > 0,
            _ => false,
        };
        let result = match &request.op {
            // While the NOSPACE alarm is raised, every member refuses what could grow the
            // database; deletes, compaction and lease revokes still free space.
            _ if grows_db && self.no_space() => Err(ApplyError::NoSpace),
            Some(Op::Put(put)) => self.store.put(put).map(WriteResponse::Put).map_err(ApplyError::from),
            Some(Op::DeleteRange(del)) => {
                self.store.delete_range(del).map(WriteResponse::DeleteRange).map_err(ApplyError::from)
            }
            Some(Op::Txn(txn)) => self.store.txn(txn).map(WriteResponse::Txn).map_err(ApplyError::from),
            Some(Op::Compaction(c)) => {
                self.store.compact(c).map(WriteResponse::Compaction).map_err(ApplyError::from)
            }
            Some(Op::LeaseGrant(g)) => match self.lessor.grant(g.id, g.ttl, now_ms) {
                Ok(ttl) => {
                    self.store.set_lease(g.id, true);
                    Ok(WriteResponse::LeaseGrant(LeaseGrantResponse { id: g.id, ttl, ..Default::default() }))
                }
                Err(e) => Err(ApplyError::Lease(e)),
            },
            Some(Op::LeaseRevoke(r)) => match self.lessor.revoke(r.id) {
                Ok(keys) => {
                    self.store.set_lease(r.id, false);
                    self.store.delete_keys(&keys);
                    Ok(WriteResponse::LeaseRevoke(LeaseRevokeResponse::default()))
                }
                Err(e) => Err(ApplyError::Lease(e)),
            },
            Some(Op::MemberAttributes(a)) => {
                if let Some(m) = self.membership.member_mut(a.id) {
                    m.name = a.name.clone();
                    m.client_ur_ls = a.client_urls.clone();
                }
                Ok(WriteResponse::MemberAttributes)
            }
            Some(Op::LeaseCheckpoint(c)) => {
                for cp in &c.checkpoints {
                    self.lessor.checkpoint(cp.id, cp.remaining_ttl);
                }
                Ok(WriteResponse::LeaseCheckpoint(LeaseCheckpointResponse::default()))
            }
            Some(Op::Alarm(a)) => Ok(WriteResponse::Alarm(self.apply_alarm(a))),
            None => Err(ApplyError::Unsupported("empty request")),
        };
        // Physical compaction proceeds a bounded step per applied entry: equal logs still give
        // equal states, and no single apply stalls on a large cleanup.
        self.store.compact_step(COMPACT_KEYS_PER_STEP);
        let events = self.store.take_events();
        self.track_leases(&events);
        Applied::Write { request_id: request.id, result, events }
    }

    fn apply_conf_change(&mut self, entry: &Entry) -> Applied {
        // As for writes: a change that does not decode is refused alike on every member, and
        // changes neither the member table nor Raft's configuration.
        let Ok(cc) = ConfChange::decode(entry.data.clone()) else {
            return Applied::Write {
                request_id: 0,
                result: Err(ApplyError::Unsupported("configuration change does not decode")),
                events: Vec::new(),
            };
        };
        let result = self.membership.apply(&cc);
        Applied::ConfChange { change: cc, result }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb::etcdserverpb::{
        CompactionRequest, DeleteRangeRequest, LeaseGrantRequest, LeaseRevokeRequest, PutRequest,
        RangeRequest,
    };
    use bytes::Bytes;
    use std::collections::BTreeMap;

    fn entry(index: u64, op: Op) -> Entry {
        let data = Request { id: index, op: Some(op) }.encode_to_vec();
        Entry { index, term: 1, entry_type: EntryType::EntryNormal as i32, data: data.into() }
    }

    fn alarm(action: AlarmAction, member_id: u64, alarm: AlarmType) -> Op {
        Op::Alarm(AlarmRequest { action: action as i32, member_id, alarm: alarm as i32 })
    }

    fn result(applied: Applied) -> Result<WriteResponse, ApplyError> {
        match applied {
            Applied::Write { result, .. } => result,
            other => panic!("not a write: {other:?}"),
        }
    }

    /// NOSPACE is replicated state: raised, it makes the state machine refuse what could grow
    /// the database and let through what cannot; it survives the image; cleared, writes work.
    #[test]
    fn nospace_alarm_refuses_growth_and_survives_the_image() {
        use crate::pb::etcdserverpb::{request_op, RequestOp, TxnRequest};
        let mut sm = StateMachine::default();
        let mut index = 0;
        let mut apply = |sm: &mut StateMachine, op: Op| {
            index += 1;
            result(sm.apply(&entry(index, op), 0))
        };
        let put =
            |k: &str| PutRequest { key: Bytes::from(k.to_string()), value: "v".into(), ..Default::default() };
        apply(&mut sm, Op::Put(put("a"))).unwrap();
        apply(&mut sm, Op::LeaseGrant(LeaseGrantRequest { id: 7, ttl: 60 })).unwrap();
        let raised = apply(&mut sm, alarm(AlarmAction::Activate, 0x1234, AlarmType::Nospace)).unwrap();
        let nospace = AlarmMember { member_id: 0x1234, alarm: AlarmType::Nospace as i32 };
        assert_eq!(raised, WriteResponse::Alarm(AlarmResponse { header: None, alarms: vec![nospace] }));
        // Raising it again (another request) changes nothing.
        apply(&mut sm, alarm(AlarmAction::Activate, 0x1234, AlarmType::Nospace)).unwrap();
        apply(&mut sm, alarm(AlarmAction::Activate, 0x99, AlarmType::Corrupt)).unwrap();
        assert_eq!(
            sm.alarms().collect::<Vec<_>>(),
            vec![nospace, AlarmMember { member_id: 0x99, alarm: AlarmType::Corrupt as i32 }]
        );
        let get = apply(&mut sm, alarm(AlarmAction::Get, 0, AlarmType::Nospace)).unwrap();
        assert_eq!(get, WriteResponse::Alarm(AlarmResponse { header: None, alarms: vec![nospace] }));

        let txn = |success: Vec<request_op::Request>| {
            Op::Txn(TxnRequest {
                success: success.into_iter().map(|r| RequestOp { request: Some(r) }).collect(),
                ..Default::default()
            })
        };
        let check =
            |sm: &mut StateMachine,
             apply: &mut dyn FnMut(&mut StateMachine, Op) -> Result<WriteResponse, ApplyError>| {
                let revision = sm.store.revision();
                for refused in [
                    Op::Put(put("b")),
                    Op::LeaseGrant(LeaseGrantRequest { id: 8, ttl: 60 }),
                    txn(vec![request_op::Request::RequestPut(put("c"))]),
                ] {
                    assert_eq!(apply(sm, refused), Err(ApplyError::NoSpace));
                }
                assert_eq!(sm.store.revision(), revision, "nothing refused was written");
                let read =
                    request_op::Request::RequestRange(RangeRequest { key: "a".into(), ..Default::default() });
                apply(sm, txn(vec![read])).unwrap();
                let del = request_op::Request::RequestDeleteRange(DeleteRangeRequest {
                    key: "a".into(),
                    ..Default::default()
                });
                apply(sm, txn(vec![del])).unwrap();
                apply(sm, Op::DeleteRange(DeleteRangeRequest { key: "zz".into(), ..Default::default() }))
                    .unwrap();
                let rev = sm.store.revision();
                if rev > sm.store.compacted() {
                    apply(sm, Op::Compaction(CompactionRequest { revision: rev, physical: true })).unwrap();
                }
            };
        check(&mut sm, &mut apply);

        // The image carries the alarms; the restored state machine refuses the same writes.
        let state = sm.image_state(1, ConfState::default());
        let mut restored = StateMachine::restore(
            LessorConfig::default(),
            &state,
            sm.store.history_images().map(|(k, h)| (k.clone(), h)),
        )
        .unwrap();
        assert_eq!(restored.alarms().collect::<Vec<_>>(), sm.alarms().collect::<Vec<_>>());
        let mut restored_index = restored.applied_index();
        let mut apply_restored = |sm: &mut StateMachine, op: Op| {
            restored_index += 1;
            result(sm.apply(&entry(restored_index, op), 0))
        };
        check(&mut restored, &mut apply_restored);
        apply_restored(&mut restored, Op::LeaseRevoke(LeaseRevokeRequest { id: 7 })).unwrap();

        // Cleared (twice: the second changes nothing), writes go through again.
        let cleared =
            apply_restored(&mut restored, alarm(AlarmAction::Deactivate, 0x1234, AlarmType::Nospace));
        assert_eq!(
            cleared.unwrap(),
            WriteResponse::Alarm(AlarmResponse { header: None, alarms: vec![nospace] })
        );
        let again = apply_restored(&mut restored, alarm(AlarmAction::Deactivate, 0x1234, AlarmType::Nospace));
        assert_eq!(again.unwrap(), WriteResponse::Alarm(AlarmResponse::default()));
        apply_restored(&mut restored, Op::Put(put("b"))).unwrap();
        apply_restored(&mut restored, Op::LeaseGrant(LeaseGrantRequest { id: 8, ttl: 60 })).unwrap();

        // An image with a repeated or unknown alarm is refused.
        let mut bad = state.clone();
        bad.alarms.push(bad.alarms[0]);
        assert!(StateMachine::restore(LessorConfig::default(), &bad, std::iter::empty()).is_err());
        let mut bad = state;
        bad.alarms = vec![AlarmMember { member_id: 1, alarm: 9 }];
        assert!(StateMachine::restore(LessorConfig::default(), &bad, std::iter::empty()).is_err());
    }

    /// A state machine rebuilt from its image — taken whole, or kept up to date from dirty
    /// keys only — is the same state machine: same reads at every revision, same leases, and
    /// it goes on applying the same way.
    #[test]
    fn image_round_trip_gives_the_same_state_machine() {
        let mut rng = 0x9e3779b97f4a7c15u64;
        let mut next = move |n: u64| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng % n
        };
        let mut a = StateMachine::default();
        // An incrementally kept image: key -> history, updated from dirty keys.
        let mut kept: BTreeMap<Bytes, KeyHistoryImage> = BTreeMap::new();
        let mut leases: Vec<i64> = Vec::new();
        for index in 1..=3000u64 {
            let key = Bytes::from(format!("k{}", next(40)));
            let op = match next(20) {
                0..=9 => {
                    let lease = if next(3) == 0 && !leases.is_empty() {
                        leases[next(leases.len() as u64) as usize]
                    } else {
                        0
                    };
                    Op::Put(PutRequest {
                        key,
                        value: Bytes::from(format!("v{index}")),
                        lease,
                        ..Default::default()
                    })
                }
                10..=12 => Op::DeleteRange(DeleteRangeRequest { key, ..Default::default() }),
                13..=14 => {
                    leases.push(index as i64);
                    Op::LeaseGrant(LeaseGrantRequest { id: index as i64, ttl: 60 })
                }
                15 if !leases.is_empty() => {
                    let id = leases.remove(next(leases.len() as u64) as usize);
                    Op::LeaseRevoke(LeaseRevokeRequest { id })
                }
                16 => {
                    let rev = a.store.revision() - next(20) as i64;
                    Op::Compaction(CompactionRequest { revision: rev.max(1), physical: next(2) == 0 })
                }
                _ => Op::Put(PutRequest { key, value: Bytes::from("x"), ..Default::default() }),
            };
            a.apply(&entry(index, op), 0);
            for k in a.store.take_dirty() {
                match a.store.history_image(&k) {
                    Some(h) => kept.insert(k, h),
                    None => kept.remove(&k),
                };
            }
            if index % 500 == 0 {
                let state = a.image_state(1, ConfState::default());
                let whole = StateMachine::restore(
                    LessorConfig::default(),
                    &state,
                    a.store.history_images().map(|(k, h)| (k.clone(), h)),
                )
                .unwrap();
                let incremental =
                    StateMachine::restore(LessorConfig::default(), &state, kept.clone().into_iter()).unwrap();
                for b in [whole, incremental] {
                    assert_eq!(b.applied_index(), a.applied_index());
                    assert_eq!(b.store.revision(), a.store.revision());
                    assert_eq!(b.store.compacted(), a.store.compacted());
                    assert_eq!(
                        b.lessor.records().collect::<Vec<_>>(),
                        a.lessor.records().collect::<Vec<_>>()
                    );
                    b.lessor.check_invariants().unwrap();
                    for rev in a.store.compacted().max(1)..=a.store.revision() {
                        let all = RangeRequest {
                            key: Bytes::from_static(b"\0"),
                            range_end: Bytes::from_static(b"\0"),
                            revision: rev,
                            ..Default::default()
                        };
                        assert_eq!(b.store.range(&all), a.store.range(&all), "range at {rev}");
                    }
                    assert_eq!(b.store.hash_kv(0), a.store.hash_kv(0));
                    // Exactly the versions compaction kept, nothing it dropped.
                    let histories = |s: &StateMachine| {
                        s.store.history_images().map(|(k, h)| (k.clone(), h)).collect::<Vec<_>>()
                    };
                    assert_eq!(histories(&b), histories(&a), "histories at entry {index}");
                }
            }
        }
    }
}
