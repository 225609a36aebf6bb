//! What the log's entries mean: client writes applied to the MVCC store, configuration
//! changes applied to the membership. Deterministic: equal logs give equal states.

use crate::mvcc::COMPACT_KEYS_PER_STEP;
use crate::mvcc::{MvccError, Store};
use crate::pb::etcdserverpb::{CompactionResponse, DeleteRangeResponse, Member, PutResponse, TxnResponse};
use crate::pb::keelpb::{request::Op, ConfChange, ConfChangeType, Entry, EntryType, Request};
use prost::Message as _;
use std::collections::BTreeMap;

/// The reply to one applied client write.
#[derive(Debug, Clone, PartialEq)]
pub enum WriteResponse {
    Put(PutResponse),
    DeleteRange(DeleteRangeResponse),
    Txn(TxnResponse),
    Compaction(CompactionResponse),
}

impl WriteResponse {
    /// The revision the write left the store at, which its reply reports.
    pub fn revision(&self) -> i64 {
        let h = match self {
            WriteResponse::Put(r) => &r.header,
            WriteResponse::DeleteRange(r) => &r.header,
            WriteResponse::Txn(r) => &r.header,
            WriteResponse::Compaction(r) => &r.header,
        };
        h.as_ref().map_or(0, |h| h.revision)
    }

    pub fn set_header(&mut self, header: crate::pb::etcdserverpb::ResponseHeader) {
        let h = match self {
            WriteResponse::Put(r) => &mut r.header,
            WriteResponse::DeleteRange(r) => &mut r.header,
            WriteResponse::Txn(r) => &mut r.header,
            WriteResponse::Compaction(r) => &mut r.header,
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
    /// A committed configuration change: the driver hands it to Raft
    /// ([`crate::raft::RawNode::apply_conf_change`]).
    ConfChange { change: ConfChange },
}

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum ApplyError {
    #[error(transparent)]
    Mvcc(#[from] MvccError),
    /// The entry is not one this version of Keel understands. Applying nothing keeps every
    /// replica equal; the proposer is told.
    #[error("etcdserver: unsupported request in log entry: {0}")]
    Unsupported(&'static str),
}

/// The replicated state: the key-value store and the cluster's members.
///
/// Invariant: `applied_index` is the index of the last entry passed to [`StateMachine::apply`].
#[derive(Debug, Default)]
pub struct StateMachine {
    pub store: Store,
    members: BTreeMap<u64, Member>,
    applied_index: u64,
}

impl StateMachine {
    pub fn new() -> Self {
        StateMachine::default()
    }

    pub fn applied_index(&self) -> u64 {
        self.applied_index
    }

    pub fn members(&self) -> impl Iterator<Item = &Member> {
        self.members.values()
    }

    pub fn apply(&mut self, entry: &Entry) -> Applied {
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
            // A committed entry that does not decode is a corrupt log, not a client error.
            Err(e) => panic!("committed entry {} does not decode: {e}", entry.index),
        };
        let result = match &request.op {
            Some(Op::Put(put)) => self.store.put(put).map(WriteResponse::Put).map_err(ApplyError::from),
            Some(Op::DeleteRange(del)) => {
                self.store.delete_range(del).map(WriteResponse::DeleteRange).map_err(ApplyError::from)
            }
            Some(Op::Txn(txn)) => self.store.txn(txn).map(WriteResponse::Txn).map_err(ApplyError::from),
            Some(Op::Compaction(c)) => {
                self.store.compact(c).map(WriteResponse::Compaction).map_err(ApplyError::from)
            }
            None => Err(ApplyError::Unsupported("empty request")),
        };
        // Physical compaction proceeds a bounded step per applied entry: equal logs still give
        // equal states, and no single apply stalls on a large cleanup.
        self.store.compact_step(COMPACT_KEYS_PER_STEP);
        let events = self.store.take_events();
        Applied::Write { request_id: request.id, result, events }
    }

    fn apply_conf_change(&mut self, entry: &Entry) -> Applied {
        let cc = ConfChange::decode(entry.data.clone())
            .unwrap_or_else(|e| panic!("committed conf change {} does not decode: {e}", entry.index));
        match ConfChangeType::try_from(cc.change_type) {
            Ok(ConfChangeType::AddNode) | Ok(ConfChangeType::AddLearnerNode) => {
                let mut member = Member::decode(cc.context.clone())
                    .unwrap_or_else(|e| panic!("conf change {} carries no member record: {e}", entry.index));
                member.id = cc.node_id;
                member.is_learner = cc.change_type == ConfChangeType::AddLearnerNode as i32;
                self.members.insert(cc.node_id, member);
            }
            Ok(ConfChangeType::RemoveNode) => {
                self.members.remove(&cc.node_id);
            }
            Err(_) => panic!("conf change {} has unknown type {}", entry.index, cc.change_type),
        }
        Applied::ConfChange { change: cc }
    }
}
