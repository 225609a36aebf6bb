use crate::pb::keelpb::Message;
use bytes::Bytes;
use std::collections::{BTreeSet, HashMap, VecDeque};

/// One ReadIndex request waiting for a quorum to confirm the leader's leadership.
#[derive(Debug)]
pub(crate) struct ReadIndexStatus {
    pub(crate) req: Message,
    pub(crate) index: u64,
    pub(crate) acks: BTreeSet<u64>,
}

/// ReadIndex requests in arrival order (§6.4): each is answered once a heartbeat round that
/// started after it has been acknowledged by a quorum; a later request's quorum confirms every
/// earlier one too.
#[derive(Debug, Default)]
pub(crate) struct ReadOnly {
    pending: HashMap<Bytes, ReadIndexStatus>,
    queue: VecDeque<Bytes>,
}

pub(crate) fn read_ctx(m: &Message) -> Bytes {
    m.entries.first().map(|e| e.data.clone()).unwrap_or_default()
}

impl ReadOnly {
    pub(crate) fn add_request(&mut self, index: u64, req: Message) {
        let ctx = read_ctx(&req);
        if self.pending.contains_key(&ctx) {
            return;
        }
        self.queue.push_back(ctx.clone());
        self.pending.insert(ctx, ReadIndexStatus { req, index, acks: BTreeSet::new() });
    }

    /// Records `from`'s acknowledgement of the heartbeat round for `ctx`.
    pub(crate) fn recv_ack(&mut self, from: u64, ctx: &Bytes) -> Option<&BTreeSet<u64>> {
        let status = self.pending.get_mut(ctx)?;
        status.acks.insert(from);
        Some(&status.acks)
    }

    /// Removes and returns every request up to and including `ctx`.
    pub(crate) fn advance(&mut self, ctx: &Bytes) -> Vec<ReadIndexStatus> {
        let Some(pos) = self.queue.iter().position(|c| c == ctx) else { return Vec::new() };
        self.queue.drain(..=pos).filter_map(|c| self.pending.remove(&c)).collect()
    }

    pub(crate) fn last_pending_ctx(&self) -> Option<Bytes> {
        self.queue.back().cloned()
    }

    pub(crate) fn len(&self) -> usize {
        self.queue.len()
    }
}
