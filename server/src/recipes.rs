//! The Lock and Election services: etcd's concurrency recipes (an owner key per lease under the
//! name's prefix; the owner is the key created first; waiting means watching the predecessor's
//! deletion), run server-side over the same KV, lease and watch paths clients use.

use crate::errors::request_status;
use crate::pb::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use crate::pb::etcdserverpb::range_request::{SortOrder, SortTarget};
use crate::pb::etcdserverpb::{
    request_op, response_op, Compare, DeleteRangeRequest, PutRequest, RangeRequest, RequestOp,
    ResponseHeader, TxnRequest, TxnResponse,
};
use crate::pb::mvccpb::{event::EventType, KeyValue};
use crate::pb::v3electionpb::election_server::Election;
use crate::pb::v3electionpb::*;
use crate::pb::v3lockpb::lock_server::Lock;
use crate::pb::v3lockpb::*;
use bytes::Bytes;
use futures::Stream;
use keel_core::mvcc::range::prefix_end;
use keel_core::pb::keelpb::request::Op;
use keel_core::state_machine::WriteResponse;
use runtime::node::{NodeHandle, RequestError};
use runtime::watch::{WatchSpec, WatchUpdate};
use std::pin::Pin;
use tonic::{Request, Response, Status};

pub const ELECTION_NO_LEADER: &str = "election: no leader";
pub const ELECTION_NOT_LEADER: &str = "election: not leader";
/// etcd's answer to a proclaim or resign without a leader key.
const LEADER_NOT_PROVIDED: &str = "\"leader\" field must be provided";

/// An error of the store as etcd's Lock and Election services pass it on: they are clients of
/// the KV and Lease services, their client turns etcd's errors into plain ones, and gRPC sends
/// those with code Unknown (the message stands).
fn store_error(e: RequestError) -> Status {
    let s = request_status(e);
    if s.message().starts_with("etcdserver: ") {
        Status::new(tonic::Code::Unknown, s.message())
    } else {
        s
    }
}

fn owner_key(name: &[u8], lease: i64) -> Bytes {
    let mut k = name.to_vec();
    k.extend_from_slice(format!("/{lease:x}").as_bytes());
    k.into()
}

fn create_rev_is(key: &Bytes, rev: i64) -> Compare {
    Compare {
        result: CompareResult::Equal as i32,
        target: CompareTarget::Create as i32,
        key: key.clone(),
        target_union: Some(TargetUnion::CreateRevision(rev)),
        range_end: Bytes::new(),
    }
}

/// A put of an owner key with its lease.
fn put_op(key: &Bytes, value: Bytes, lease: i64) -> RequestOp {
    op(request_op::Request::RequestPut(PutRequest { key: key.clone(), value, lease, ..Default::default() }))
}

fn op(r: request_op::Request) -> RequestOp {
    RequestOp { request: Some(r) }
}

/// The recipes' access to the store.
#[derive(Clone)]
pub(crate) struct Recipes {
    pub(crate) node: NodeHandle,
}

impl Recipes {
    async fn txn(&self, t: TxnRequest) -> Result<TxnResponse, Status> {
        let proposed = crate::services::propose(&self.node, Op::Txn(t)).await;
        match proposed.map_err(store_error)? {
            WriteResponse::Txn(r) => Ok(r),
            other => Err(Status::internal(format!("txn answered with {other:?}"))),
        }
    }

    /// Creates `key` (with `value` and `lease`) unless it exists; returns its create revision
    /// and current value, and the header.
    async fn create_owner_key(
        &self,
        key: &Bytes,
        value: Bytes,
        lease: i64,
    ) -> Result<(i64, KeyValue, ResponseHeader), Status> {
        let get =
            op(request_op::Request::RequestRange(RangeRequest { key: key.clone(), ..Default::default() }));
        let put = put_op(key, value, lease);
        let resp = self
            .txn(TxnRequest {
                compare: vec![create_rev_is(key, 0)],
                success: vec![put, get.clone()],
                failure: vec![get],
            })
            .await?;
        let header = resp.header.unwrap_or_default();
        let kv = resp
            .responses
            .iter()
            .find_map(|r| match &r.response {
                Some(response_op::Response::ResponseRange(rr)) => rr.kvs.first().cloned(),
                _ => None,
            })
            .ok_or_else(|| Status::internal("owner key vanished"))?;
        Ok((kv.create_revision, kv, header))
    }

    /// Waits until no key under `prefix` was created before `rev` (every earlier owner is gone).
    async fn wait_predecessors(&self, prefix: &Bytes, rev: i64) -> Result<ResponseHeader, Status> {
        loop {
            let resp = self
                .node
                .range(RangeRequest {
                    key: prefix.clone(),
                    range_end: prefix_end(prefix),
                    max_create_revision: rev - 1,
                    sort_target: SortTarget::Create as i32,
                    sort_order: SortOrder::Descend as i32,
                    limit: 1,
                    ..Default::default()
                })
                .await
                .map_err(store_error)?;
            let header = resp.header.unwrap_or_default();
            let Some(pred) = resp.kvs.first() else { return Ok(header) };
            self.wait_event(pred.key.clone(), Bytes::new(), header.revision + 1, Some(EventType::Delete))
                .await?;
        }
    }

    /// Waits for the first event on (`key`, `end`) from `start_rev` (of `kind`, if given).
    async fn wait_event(
        &self,
        key: Bytes,
        end: Bytes,
        start_rev: i64,
        kind: Option<EventType>,
    ) -> Result<(), Status> {
        let (stream, mut rx) = self.node.watch_open().await.map_err(store_error)?;
        let spec = WatchSpec { key, range_end: end, start_revision: start_rev, ..Default::default() };
        self.node.watch_create(stream, 0, spec).await.map_err(store_error)?;
        let result = loop {
            match rx.recv().await {
                Some(WatchUpdate::Events { events, .. }) => {
                    if events.iter().any(|e| kind.is_none_or(|k| e.r#type == k as i32)) {
                        break Ok(());
                    }
                }
                // Compacted past the start: the state changed; the caller looks again.
                Some(WatchUpdate::Canceled { .. }) => break Ok(()),
                Some(_) => {}
                None => break Err(Status::unavailable("etcdserver: server stopped")),
            }
        };
        self.node.watch_close(stream).await;
        result
    }

    async fn leader(&self, name: &Bytes) -> Result<(Option<KeyValue>, ResponseHeader), Status> {
        let prefix = prefix_key(name);
        let resp = self
            .node
            .range(RangeRequest {
                key: prefix.clone(),
                range_end: prefix_end(&prefix),
                sort_target: SortTarget::Create as i32,
                sort_order: SortOrder::Ascend as i32,
                limit: 1,
                ..Default::default()
            })
            .await
            .map_err(store_error)?;
        Ok((resp.kvs.first().cloned(), resp.header.unwrap_or_default()))
    }
}

/// Deletes an owner key unless disarmed: a Lock or Campaign whose caller gives up while waiting
/// must not leave its key queued ahead of later callers (etcd's Mutex does the same).
struct OwnerGuard {
    node: Option<NodeHandle>,
    key: Bytes,
}

impl OwnerGuard {
    fn disarm(mut self) {
        self.node = None;
    }
}

impl Drop for OwnerGuard {
    fn drop(&mut self) {
        if let Some(node) = self.node.take() {
            let key = self.key.clone();
            tokio::spawn(async move {
                let _ = crate::services::propose(
                    &node,
                    Op::DeleteRange(DeleteRangeRequest { key, ..Default::default() }),
                )
                .await;
            });
        }
    }
}

fn prefix_key(name: &[u8]) -> Bytes {
    let mut p = name.to_vec();
    p.push(b'/');
    p.into()
}

#[tonic::async_trait]
impl Lock for Recipes {
    async fn lock(&self, request: Request<LockRequest>) -> Result<Response<LockResponse>, Status> {
        crate::services::refuse_learner(&self.node)?;
        let req = request.into_inner();
        let key = owner_key(&req.name, req.lease);
        let (rev, _, _) = self.create_owner_key(&key, Bytes::new(), req.lease).await?;
        let guard = OwnerGuard { node: Some(self.node.clone()), key: key.clone() };
        let header = self.wait_predecessors(&prefix_key(&req.name), rev).await?;
        guard.disarm();
        Ok(Response::new(LockResponse { header: Some(header), key }))
    }

    async fn unlock(&self, request: Request<UnlockRequest>) -> Result<Response<UnlockResponse>, Status> {
        crate::services::refuse_learner(&self.node)?;
        let key = request.into_inner().key;
        if key.is_empty() {
            return Err(Status::new(tonic::Code::Unknown, crate::errors::KEY_NOT_PROVIDED));
        }
        match crate::services::propose(
            &self.node,
            Op::DeleteRange(DeleteRangeRequest { key, ..Default::default() }),
        )
        .await
        {
            Ok(r) => Ok(Response::new(UnlockResponse { header: Some(header_of(&r)) })),
            Err(e) => Err(store_error(e)),
        }
    }
}

fn header_of(r: &WriteResponse) -> ResponseHeader {
    match r {
        WriteResponse::DeleteRange(d) => d.header.unwrap_or_default(),
        WriteResponse::Txn(t) => t.header.unwrap_or_default(),
        _ => ResponseHeader::default(),
    }
}

type ObserveStream = Pin<Box<dyn Stream<Item = Result<LeaderResponse, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl Election for Recipes {
    async fn campaign(
        &self,
        request: Request<CampaignRequest>,
    ) -> Result<Response<CampaignResponse>, Status> {
        crate::services::refuse_learner(&self.node)?;
        let req = request.into_inner();
        let key = owner_key(&req.name, req.lease);
        let (rev, kv, _) = self.create_owner_key(&key, req.value.clone(), req.lease).await?;
        if kv.value != req.value {
            // Campaigning again with the same lease: take the new value, as etcd does.
            self.proclaim_at(&key, rev, req.lease, req.value.clone()).await?;
        }
        let guard = OwnerGuard { node: Some(self.node.clone()), key: key.clone() };
        let header = self.wait_predecessors(&prefix_key(&req.name), rev).await?;
        guard.disarm();
        let leader = LeaderKey { name: req.name, key, rev, lease: req.lease };
        Ok(Response::new(CampaignResponse { header: Some(header), leader: Some(leader) }))
    }

    async fn proclaim(
        &self,
        request: Request<ProclaimRequest>,
    ) -> Result<Response<ProclaimResponse>, Status> {
        crate::services::refuse_learner(&self.node)?;
        let req = request.into_inner();
        let l = req.leader.ok_or_else(|| Status::new(tonic::Code::Unknown, LEADER_NOT_PROVIDED))?;
        let header = self.proclaim_at(&l.key, l.rev, l.lease, req.value).await?;
        Ok(Response::new(ProclaimResponse { header: Some(header) }))
    }

    async fn leader(&self, request: Request<LeaderRequest>) -> Result<Response<LeaderResponse>, Status> {
        crate::services::refuse_learner(&self.node)?;
        let (kv, header) = Recipes::leader(self, &request.into_inner().name).await?;
        match kv {
            Some(kv) => Ok(Response::new(LeaderResponse { header: Some(header), kv: Some(kv) })),
            // etcd answers these with code Unknown (its errors are not mapped to gRPC codes).
            None => Err(Status::new(tonic::Code::Unknown, ELECTION_NO_LEADER)),
        }
    }

    type ObserveStream = ObserveStream;

    async fn observe(
        &self,
        request: Request<LeaderRequest>,
    ) -> Result<Response<Self::ObserveStream>, Status> {
        crate::services::refuse_learner(&self.node)?;
        let name = request.into_inner().name;
        let me = self.clone();
        // Each step: report the leader if it changed, then wait for any change under the name.
        let out = futures::stream::unfold((me, name, None::<KeyValue>), |(me, name, last)| async move {
            loop {
                let (kv, header) = match Recipes::leader(&me, &name).await {
                    Ok(x) => x,
                    Err(e) => return Some((Err(e), (me, name, last))),
                };
                if let Some(kv) = kv.filter(|kv| last.as_ref() != Some(kv)) {
                    let resp = LeaderResponse { header: Some(header), kv: Some(kv.clone()) };
                    return Some((Ok(resp), (me, name, Some(kv))));
                }
                let prefix = prefix_key(&name);
                if let Err(e) =
                    me.wait_event(prefix.clone(), prefix_end(&prefix), header.revision + 1, None).await
                {
                    return Some((Err(e), (me, name, last)));
                }
            }
        });
        Ok(Response::new(Box::pin(out)))
    }

    async fn resign(&self, request: Request<ResignRequest>) -> Result<Response<ResignResponse>, Status> {
        crate::services::refuse_learner(&self.node)?;
        let l = request
            .into_inner()
            .leader
            .ok_or_else(|| Status::new(tonic::Code::Unknown, LEADER_NOT_PROVIDED))?;
        let del = op(request_op::Request::RequestDeleteRange(DeleteRangeRequest {
            key: l.key.clone(),
            ..Default::default()
        }));
        let resp = self
            .txn(TxnRequest {
                compare: vec![create_rev_is(&l.key, l.rev)],
                success: vec![del],
                failure: vec![],
            })
            .await?;
        Ok(Response::new(ResignResponse { header: resp.header }))
    }
}

impl Recipes {
    async fn proclaim_at(
        &self,
        key: &Bytes,
        rev: i64,
        lease: i64,
        value: Bytes,
    ) -> Result<ResponseHeader, Status> {
        let put = put_op(key, value, lease);
        let resp = self
            .txn(TxnRequest { compare: vec![create_rev_is(key, rev)], success: vec![put], failure: vec![] })
            .await?;
        if !resp.succeeded {
            return Err(Status::new(tonic::Code::Unknown, ELECTION_NOT_LEADER));
        }
        Ok(resp.header.unwrap_or_default())
    }
}
