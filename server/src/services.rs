//! The gRPC services. Each handler validates as etcd does, then hands the request to the node.

use crate::errors::{self, invalid, request_status};
use crate::pb::etcdserverpb::auth_server::{Auth, AuthServer};
use crate::pb::etcdserverpb::cluster_server::{Cluster, ClusterServer};
use crate::pb::etcdserverpb::kv_server::{Kv, KvServer};
use crate::pb::etcdserverpb::lease_client::LeaseClient;
use crate::pb::etcdserverpb::lease_server::{Lease, LeaseServer};
use crate::pb::etcdserverpb::maintenance_server::{Maintenance, MaintenanceServer};
use crate::pb::etcdserverpb::watch_server::{Watch, WatchServer};
use crate::pb::etcdserverpb::*;
use crate::pb::v3electionpb::election_server::ElectionServer;
use crate::pb::v3lockpb::lock_server::LockServer;
use crate::snapshot;
use futures::{Stream, StreamExt};
use keel_core::lease::{LeaseError, LeaseIdGen, MAX_LEASE_TTL_SECS};
use keel_core::mvcc::txn_keys_disjoint;
use keel_core::pb::keelpb::request::Op;
use keel_core::state_machine::WriteResponse;
use prost::Message as _;
use runtime::node::{MemberChange, NodeHandle, RequestError};
use runtime::watch::{WatchSpec, WatchUpdate};
use sha2::{Digest, Sha256};
use std::pin::Pin;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

/// Bytes of gRPC framing allowed on top of `--max-request-bytes`, as etcd allows, so that an
/// oversized request reaches the handler and gets etcd's own error.
const GRPC_OVERHEAD_BYTES: usize = 512 * 1024;

#[derive(Clone)]
pub(crate) struct Services {
    node: NodeHandle,
    self_member: Member,
    max_request_bytes: usize,
    max_txn_ops: usize,
    /// Lease ids when the client leaves the choice to the server, as etcd numbers them.
    lease_ids: std::sync::Arc<std::sync::Mutex<LeaseIdGen>>,
    /// `--quota-backend-bytes` resolved (`None`: no quota).
    quota_bytes: Option<u64>,
    /// What etcd's `InternalRaftRequest` header adds to a replicated request (its request id
    /// is as long as this member's), counted by [`Services::check_size`].
    raft_header_bytes: usize,
}

/// etcd's answer to most requests a learner receives.
pub(crate) const LEARNER_NOT_SUPPORTED: &str = "etcdserver: rpc not supported for learner";

/// etcd 3.5 lets a learner serve only serializable ranges, Status and Snapshot; everything
/// else it answers with Unavailable (checked against etcd 3.5.1 with each RPC). The caller
/// calls this first, before any validation, as etcd's interceptor does.
pub(crate) fn refuse_learner(node: &NodeHandle) -> Result<(), Status> {
    let learner = node.members().borrow().members.iter().any(|m| m.id == node.member_id && m.is_learner);
    if learner {
        return Err(Status::unavailable(LEARNER_NOT_SUPPORTED));
    }
    Ok(())
}

/// The gRPC services on the client port, as grpc-go names them in its errors.
#[cfg(not(madsim))]
const SERVICES: [&str; 8] = [
    "etcdserverpb.KV",
    "etcdserverpb.Watch",
    "etcdserverpb.Lease",
    "etcdserverpb.Cluster",
    "etcdserverpb.Maintenance",
    "etcdserverpb.Auth",
    "v3lockpb.Lock",
    "v3electionpb.Election",
];

/// tonic answers a method it does not serve `Unimplemented` with no message (Keel's own
/// `Unimplemented` answers all have one): this gives it grpc-go's message.
#[cfg(not(madsim))]
async fn name_unknown_methods(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let path = request.uri().path().to_string();
    let response = next.run(request).await;
    let headers = response.headers();
    let unimplemented = headers.get("grpc-status").is_some_and(|v| v == "12");
    if unimplemented && headers.get("grpc-message").is_none_or(|m| m.is_empty()) {
        return unknown_method(&path);
    }
    response
}

/// grpc-go's answer to a method it does not serve: `/service/method` split at the last slash.
#[cfg(not(madsim))]
fn unknown_method(path: &str) -> axum::response::Response {
    let name = path.strip_prefix('/').unwrap_or(path);
    let status = match name.rsplit_once('/') {
        None => Status::unimplemented(format!("malformed method name: {path:?}")),
        Some((service, method)) if SERVICES.contains(&service) => {
            Status::unimplemented(format!("unknown method {method} for service {service}"))
        }
        Some((service, _)) => Status::unimplemented(format!("unknown service {service}")),
    };
    status.into_http()
}

fn unimplemented(what: &str, issue: u32) -> Status {
    Status::unimplemented(format!("keel: {what} is not implemented yet (issue #{issue})"))
}

impl Services {
    pub(crate) fn new(
        node: NodeHandle,
        self_member: Member,
        max_request_bytes: usize,
        max_txn_ops: usize,
        lease_ids: std::sync::Arc<std::sync::Mutex<LeaseIdGen>>,
        quota_bytes: Option<u64>,
    ) -> Self {
        let raft_header_bytes = raft_header_bytes(self_member.id);
        Services {
            node,
            self_member,
            max_request_bytes,
            max_txn_ops,
            lease_ids,
            quota_bytes,
            raft_header_bytes,
        }
    }

    /// etcd's gRPC services and, on the same port, its HTTP endpoints (`/health`, `/version`,
    /// `/metrics`).
    #[cfg(not(madsim))]
    pub(crate) fn router(self) -> tonic::transport::server::Router {
        let max = self.max_request_bytes + GRPC_OVERHEAD_BYTES;
        let node = self.node.clone();
        let grpc = tonic::service::Routes::new(KvServer::new(self.clone()).max_decoding_message_size(max))
            .add_service(MaintenanceServer::new(self.clone()).max_decoding_message_size(max))
            .add_service(WatchServer::new(self.clone()).max_decoding_message_size(max))
            .add_service(LeaseServer::new(self.clone()).max_decoding_message_size(max))
            .add_service(AuthServer::new(self.clone()).max_decoding_message_size(max))
            .add_service(LockServer::new(crate::recipes::Recipes { node: self.node.clone() }))
            .add_service(ElectionServer::new(crate::recipes::Recipes { node: self.node.clone() }))
            .add_service(ClusterServer::new(self).max_decoding_message_size(max));
        // grpc-go's bound and error for an over-long message, in front of every service.
        let grpc = grpc.into_axum_router().layer(axum::middleware::from_fn(name_unknown_methods)).layer(
            tower::util::MapRequestLayer::new(move |request: axum::http::Request<axum::body::Body>| {
                crate::limit::limit_request(request, max)
            }),
        );
        let http = crate::http::routes(grpc, node, max);
        tonic::transport::Server::builder().accept_http1(true).add_routes(tonic::service::Routes::from(http))
    }

    /// Under the simulator: the gRPC services only.
    #[cfg(madsim)]
    pub(crate) fn router(self) -> tonic::transport::server::Router {
        let max = self.max_request_bytes + GRPC_OVERHEAD_BYTES;
        tonic::transport::Server::builder()
            .add_service(KvServer::new(self.clone()).max_decoding_message_size(max))
            .add_service(MaintenanceServer::new(self.clone()).max_decoding_message_size(max))
            .add_service(WatchServer::new(self.clone()).max_decoding_message_size(max))
            .add_service(LeaseServer::new(self.clone()).max_decoding_message_size(max))
            .add_service(AuthServer::new(self.clone()).max_decoding_message_size(max))
            .add_service(LockServer::new(crate::recipes::Recipes { node: self.node.clone() }))
            .add_service(ElectionServer::new(crate::recipes::Recipes { node: self.node.clone() }))
            .add_service(ClusterServer::new(self).max_decoding_message_size(max))
    }

    /// etcd's size check on what it replicates: the request wrapped in an `InternalRaftRequest`
    /// (field `field` of it) with a header holding a request id, marshalled, may not exceed
    /// `--max-request-bytes`. Only requests that go through the log are checked: etcd serves
    /// ranges and read-only txns without it.
    fn check_size(&self, field: u32, m: &impl prost::Message) -> Result<(), Status> {
        let n = m.encoded_len();
        let wrapped = self.raft_header_bytes
            + prost::encoding::key_len(field)
            + prost::encoding::encoded_len_varint(n as u64)
            + n;
        if wrapped > self.max_request_bytes {
            return Err(invalid(errors::REQUEST_TOO_LARGE));
        }
        Ok(())
    }

    /// etcd's `checkTxnRequest`: at each level the op count (the longest of compare, success
    /// and failure) must be within `budget`, which starts at `--max-txn-ops` and shrinks by each
    /// level's count for the txns nested in it; then every op is checked as its own request
    /// would be.
    fn check_txn(&self, t: &TxnRequest, budget: usize) -> Result<(), Status> {
        let ops = t.compare.len().max(t.success.len()).max(t.failure.len());
        if ops > budget {
            return Err(invalid(errors::TOO_MANY_OPS));
        }
        if t.compare.iter().any(|c| c.key.is_empty()) {
            return Err(invalid(errors::KEY_NOT_PROVIDED));
        }
        for op in t.success.iter().chain(t.failure.iter()) {
            self.check_op(op, budget - ops)?;
        }
        Ok(())
    }

    /// etcd's `checkRequestOp`; an op with no request set is refused as etcd refuses it.
    fn check_op(&self, op: &RequestOp, budget: usize) -> Result<(), Status> {
        match &op.request {
            Some(request_op::Request::RequestRange(r)) => check_range(r),
            Some(request_op::Request::RequestPut(p)) => check_put(p),
            Some(request_op::Request::RequestDeleteRange(d)) if d.key.is_empty() => {
                Err(invalid(errors::KEY_NOT_PROVIDED))
            }
            Some(request_op::Request::RequestDeleteRange(_)) => Ok(()),
            Some(request_op::Request::RequestTxn(t)) => self.check_txn(t, budget),
            None => Err(invalid(errors::OP_NOT_SET)),
        }
    }

    /// The header etcd's Auth service answers with: this member's, at the current revision.
    async fn auth_header(&self) -> Result<ResponseHeader, Status> {
        Ok(self.node.status().await.map_err(request_status)?.header)
    }

    async fn write(&self, op: Op) -> Result<WriteResponse, Status> {
        propose(&self.node, op).await.map_err(request_status)
    }

    fn learner_check(&self) -> Result<(), Status> {
        refuse_learner(&self.node)
    }

    /// etcd's quota check before a put, transaction or lease grant of `cost`: if the database
    /// and the cost would reach the quota, this member raises the NOSPACE alarm (through the
    /// log, so every member refuses writes that could grow the database from then on) and the
    /// request fails. The size is the image's pages in use plus the bytes applied since its last
    /// save ([`NodeHandle::db_size_estimate`]): Keel's file reuses freed pages (and gives them
    /// back on a defrag), so after a compaction the pages in use are what etcd's file is after
    /// a defrag.
    async fn check_quota(&self, cost: u64) -> Result<(), Status> {
        if self.quota_bytes.is_none() {
            return Ok(());
        }
        if keel_core::quota::available(self.node.db_size_estimate(), cost, self.quota_bytes) {
            return Ok(());
        }
        let raise = AlarmRequest {
            action: alarm_request::AlarmAction::Activate as i32,
            member_id: self.self_member.id,
            alarm: AlarmType::Nospace as i32,
        };
        if let Err(e) = propose(&self.node, Op::Alarm(raise)).await {
            tracing::warn!(error = %e, "raising the NOSPACE alarm failed");
        }
        Err(request_status(RequestError::Apply(keel_core::state_machine::ApplyError::NoSpace)))
    }
}

/// What etcd 3.5.1 cannot answer: an alarm action out of range (it applies it as nothing and
/// then crashes on the missing response) and the activation of an alarm type out of range (its
/// apply loop panics on it, on every member, again at every restart). Keel refuses both before
/// they reach the log.
fn check_alarm(req: &AlarmRequest) -> Result<(), Status> {
    use alarm_request::AlarmAction;
    let action = AlarmAction::try_from(req.action).map_err(|_| {
        invalid(&format!("keel: alarm action {} is not GET, ACTIVATE or DEACTIVATE", req.action))
    })?;
    if action == AlarmAction::Activate && AlarmType::try_from(req.alarm).is_err() {
        return Err(invalid(&format!("keel: alarm type {} is not NONE, NOSPACE or CORRUPT", req.alarm)));
    }
    Ok(())
}

/// An alarm as etcd prints it (protobuf's text form): `memberID:<id> alarm:NOSPACE `, the
/// form `etcdctl alarm list` shows and endpoint status lists among its errors.
fn alarm_text(a: &AlarmMember) -> String {
    let name =
        AlarmType::try_from(a.alarm).map_or_else(|_| a.alarm.to_string(), |t| t.as_str_name().to_string());
    format!("memberID:{} alarm:{} ", a.member_id, name)
}

/// A client's proposal, counted as etcd counts them: pending while it waits, failed when it
/// could not commit (no leader, leader changed, timed out, stopped). A request the state
/// machine refused (a compacted revision, an unknown lease) did commit and is no failure.
pub(crate) async fn propose(node: &NodeHandle, op: Op) -> Result<WriteResponse, RequestError> {
    let _pending = runtime::metrics::PendingProposal::new();
    let result = node.propose(op).await;
    if let Err(
        RequestError::NoLeader | RequestError::LeaderChanged | RequestError::Timeout | RequestError::Stopped,
    ) = &result
    {
        runtime::metrics::PROPOSALS_FAILED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    result
}

#[tonic::async_trait]
impl Kv for Services {
    async fn range(&self, request: Request<RangeRequest>) -> Result<Response<RangeResponse>, Status> {
        let req = request.into_inner();
        if !req.serializable {
            self.learner_check()?;
        }
        check_range(&req)?;
        self.node.range(req).await.map(Response::new).map_err(request_status)
    }

    async fn put(&self, request: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        self.learner_check()?;
        let req = request.into_inner();
        self.check_quota(keel_core::quota::put_cost(&req)).await?;
        check_put(&req)?;
        self.check_size(RAFT_PUT_FIELD, &req)?;
        match self.write(Op::Put(req)).await? {
            WriteResponse::Put(r) => Ok(Response::new(r)),
            other => Err(Status::internal(format!("put answered with {other:?}"))),
        }
    }

    async fn delete_range(
        &self,
        request: Request<DeleteRangeRequest>,
    ) -> Result<Response<DeleteRangeResponse>, Status> {
        self.learner_check()?;
        let req = request.into_inner();
        if req.key.is_empty() {
            return Err(invalid(errors::KEY_NOT_PROVIDED));
        }
        self.check_size(RAFT_DELETE_RANGE_FIELD, &req)?;
        match self.write(Op::DeleteRange(req)).await? {
            WriteResponse::DeleteRange(r) => Ok(Response::new(r)),
            other => Err(Status::internal(format!("delete answered with {other:?}"))),
        }
    }

    async fn txn(&self, request: Request<TxnRequest>) -> Result<Response<TxnResponse>, Status> {
        self.learner_check()?;
        let req = request.into_inner();
        self.check_quota(keel_core::quota::txn_cost(&req)).await?;
        self.check_txn(&req, self.max_txn_ops)?;
        // Checked after the cheap checks, as etcd does, to avoid quadratic work on bad input.
        if !txn_keys_disjoint(&req.success) || !txn_keys_disjoint(&req.failure) {
            return Err(invalid(errors::DUPLICATE_KEY));
        }
        if !txn_read_only(&req) {
            self.check_size(RAFT_TXN_FIELD, &req)?;
        }
        match self.write(Op::Txn(req)).await? {
            WriteResponse::Txn(r) => Ok(Response::new(r)),
            other => Err(Status::internal(format!("txn answered with {other:?}"))),
        }
    }

    async fn compact(
        &self,
        request: Request<CompactionRequest>,
    ) -> Result<Response<CompactionResponse>, Status> {
        self.learner_check()?;
        let req = request.into_inner();
        match self.write(Op::Compaction(req)).await? {
            WriteResponse::Compaction(r) => Ok(Response::new(r)),
            other => Err(Status::internal(format!("compaction answered with {other:?}"))),
        }
    }
}

/// The fields of etcd's `InternalRaftRequest` that carry a put, a delete and a txn.
const RAFT_PUT_FIELD: u32 = 4;
const RAFT_DELETE_RANGE_FIELD: u32 = 5;
const RAFT_TXN_FIELD: u32 = 6;
/// The field of etcd's `InternalRaftRequest` holding its `RequestHeader`.
const RAFT_HEADER_FIELD: u32 = 100;

/// The bytes etcd's `InternalRaftRequest` header takes: the header field holding a
/// `RequestHeader` whose only field set is the request id. etcd's ids are the member id's low
/// 16 bits, then 40 bits of milliseconds and 8 of a count: their varint length is fixed by the
/// member id (the time bits only matter when its low 16 bits are 0; then the widest is taken).
fn raft_header_bytes(member_id: u64) -> usize {
    let id = ((member_id & 0xffff) << 48) | (((1u64 << 40) - 1) << 8);
    let header = prost::encoding::key_len(1) + prost::encoding::encoded_len_varint(id);
    prost::encoding::key_len(RAFT_HEADER_FIELD) + prost::encoding::encoded_len_varint(header as u64) + header
}

/// etcd's `isTxnReadonly`: no put or delete at any level.
fn txn_read_only(t: &TxnRequest) -> bool {
    t.success.iter().chain(t.failure.iter()).all(|op| match &op.request {
        Some(request_op::Request::RequestRange(_)) | None => true,
        Some(request_op::Request::RequestTxn(t)) => txn_read_only(t),
        Some(request_op::Request::RequestPut(_) | request_op::Request::RequestDeleteRange(_)) => false,
    })
}

/// etcd's `checkRangeRequest`, and what would crash etcd 3.5.1: a sort target out of range
/// that it would sort by (its sorter is nil then), refused here instead.
fn check_range(req: &RangeRequest) -> Result<(), Status> {
    use range_request::{SortOrder, SortTarget};
    if req.key.is_empty() {
        return Err(invalid(errors::KEY_NOT_PROVIDED));
    }
    let target_known = SortTarget::try_from(req.sort_target).is_ok();
    // etcd sorts by a target other than the key ascending when no order is given.
    let sorts = req.sort_order == SortOrder::Ascend as i32
        || req.sort_order == SortOrder::Descend as i32
        || req.sort_order == SortOrder::None as i32;
    if !target_known && sorts {
        return Err(invalid(&format!(
            "keel: range sort_target {} is not KEY, VERSION, CREATE, MOD or VALUE",
            req.sort_target
        )));
    }
    Ok(())
}

/// etcd's `checkPutRequest`.
fn check_put(req: &PutRequest) -> Result<(), Status> {
    if req.key.is_empty() {
        return Err(invalid(errors::KEY_NOT_PROVIDED));
    }
    if req.ignore_value && !req.value.is_empty() {
        return Err(invalid(errors::VALUE_PROVIDED));
    }
    if req.ignore_lease && req.lease != 0 {
        return Err(invalid(errors::LEASE_PROVIDED));
    }
    Ok(())
}

type SnapshotStream = Pin<Box<dyn Stream<Item = Result<SnapshotResponse, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl Maintenance for Services {
    /// GET lists the raised alarms of the type asked for (all for NONE) as this member has
    /// applied them; ACTIVATE and DEACTIVATE go through the log and answer the alarm changed
    /// (none if nothing changed).
    async fn alarm(&self, request: Request<AlarmRequest>) -> Result<Response<AlarmResponse>, Status> {
        self.learner_check()?;
        let req = request.into_inner();
        check_alarm(&req)?;
        if req.action == alarm_request::AlarmAction::Get as i32 {
            let s = self.node.status().await.map_err(request_status)?;
            let alarms = s
                .alarms
                .into_iter()
                .filter(|a| req.alarm == AlarmType::None as i32 || a.alarm == req.alarm)
                .collect();
            return Ok(Response::new(AlarmResponse { header: Some(s.header), alarms }));
        }
        match self.write(Op::Alarm(req)).await? {
            WriteResponse::Alarm(r) => Ok(Response::new(r)),
            other => Err(Status::internal(format!("alarm answered with {other:?}"))),
        }
    }

    async fn status(&self, _request: Request<StatusRequest>) -> Result<Response<StatusResponse>, Status> {
        let s = self.node.status().await.map_err(request_status)?;
        let is_learner = s.members.iter().any(|m| m.id == self.node.member_id && m.is_learner);
        // etcd reports a missing leader among the errors, then every raised alarm.
        let mut errors = if s.leader == 0 { vec!["etcdserver: no leader".to_string()] } else { Vec::new() };
        errors.extend(s.alarms.iter().map(alarm_text));
        Ok(Response::new(StatusResponse {
            header: Some(s.header),
            version: crate::ETCD_VERSION.to_string(),
            db_size: s.db_bytes as i64,
            leader: s.leader,
            raft_index: s.raft_index,
            raft_term: s.raft_term,
            raft_applied_index: s.raft_applied_index,
            errors,
            db_size_in_use: s.db_in_use_bytes as i64,
            is_learner,
        }))
    }

    /// Saves the image now (a checkpoint), so that the pages a compaction freed are free at
    /// once, then shrinks the image file: live pages move into free ones at the bottom and the
    /// file is truncated (`runtime::btree::Db::shrink_step`), in bounded steps off the node
    /// task, so writes go on meanwhile (unlike etcd's defrag, which blocks them). Like etcd,
    /// the answer carries no header.
    async fn defragment(
        &self,
        _r: Request<DefragmentRequest>,
    ) -> Result<Response<DefragmentResponse>, Status> {
        self.learner_check()?;
        // A checkpoint first (the image takes in everything applied), then the file shrinks.
        self.node.defragment().await.map_err(|e| Status::internal(format!("etcdserver: defragment: {e}")))?;
        Ok(Response::new(DefragmentResponse { header: None }))
    }

    /// The whole state's hash (etcd hashes its whole database): Keel's crc32 over every key's
    /// history as the image stores it, then the current and compacted revisions and the
    /// members. It is the same on every member that has applied the same index.
    async fn hash(&self, _r: Request<HashRequest>) -> Result<Response<HashResponse>, Status> {
        self.learner_check()?;
        let snap = self.node.snapshot().await.map_err(request_status)?;
        let image = keel_core::pb::keelpb::FullImage::decode(snap.image)
            .map_err(|e| Status::data_loss(format!("keel: the state image does not decode: {e}")))?;
        Ok(Response::new(HashResponse { header: Some(snap.header), hash: image_hash(&image) }))
    }

    async fn hash_kv(&self, r: Request<HashKvRequest>) -> Result<Response<HashKvResponse>, Status> {
        self.learner_check()?;
        let h = self.node.hash_kv(r.into_inner().revision).await.map_err(request_status)?;
        Ok(Response::new(HashKvResponse {
            header: Some(h.header),
            hash: h.hash,
            compact_revision: h.compact_revision,
            hash_revision: h.hash_revision,
        }))
    }

    type SnapshotStream = SnapshotStream;

    /// The state as of now (the image is saved first), in [`snapshot::CHUNK_BYTES`] chunks,
    /// then the SHA-256 of all of them as the last message, as etcd 3.5 sends its database.
    /// Chunks are made as the client reads them: memory beyond the image is one chunk or two.
    async fn snapshot(&self, _r: Request<SnapshotRequest>) -> Result<Response<Self::SnapshotStream>, Status> {
        let snap = self.node.snapshot().await.map_err(request_status)?;
        let payload = snapshot::Payload::new(snap.image, snap.applied_index);
        tracing::info!(
            total_bytes = payload.len(),
            index = snap.applied_index,
            "sending a snapshot to a client"
        );
        type State = (snapshot::Payload, u64, Option<Sha256>);
        let start: State = (payload, 0, Some(Sha256::new()));
        let out = futures::stream::unfold(start, |(p, sent, hasher)| async move {
            let mut hasher = hasher?;
            let total = p.len();
            if sent == total {
                let digest = hasher.finalize().to_vec();
                let last = SnapshotResponse { blob: digest.into(), ..Default::default() };
                return Some((Ok(last), (p, sent, None)));
            }
            let blob = p.chunk(sent, snapshot::CHUNK_BYTES);
            hasher.update(&blob);
            let sent = sent + blob.len() as u64;
            let resp =
                SnapshotResponse { remaining_bytes: total - sent, blob: blob.into(), ..Default::default() };
            Some((Ok(resp), (p, sent, Some(hasher))))
        });
        Ok(Response::new(Box::pin(out)))
    }

    async fn move_leader(
        &self,
        r: Request<MoveLeaderRequest>,
    ) -> Result<Response<MoveLeaderResponse>, Status> {
        self.learner_check()?;
        let target = r.into_inner().target_id;
        let s = self.node.status().await.map_err(request_status)?;
        if s.leader != self.self_member.id {
            return Err(Status::failed_precondition("etcdserver: not leader"));
        }
        if !s.members.iter().any(|m| m.id == target && !m.is_learner) {
            return Err(Status::failed_precondition("etcdserver: bad leader transferee"));
        }
        // Like etcd, the answer carries no header; a move to the leader itself is done at once.
        if target == self.self_member.id {
            return Ok(Response::new(MoveLeaderResponse { header: None }));
        }
        self.node.transfer_leader(target).await.map_err(request_status)?;
        // The transfer finishes within an election timeout or is abandoned.
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            let s = self.node.status().await.map_err(request_status)?;
            if s.leader == target {
                return Ok(Response::new(MoveLeaderResponse { header: None }));
            }
            if tokio::time::Instant::now() > deadline {
                return Err(Status::unavailable(
                    "etcdserver: request timed out, leader transfer took too long",
                ));
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    async fn downgrade(&self, _r: Request<DowngradeRequest>) -> Result<Response<DowngradeResponse>, Status> {
        self.learner_check()?;
        Err(unimplemented("Downgrade", 7))
    }
}

/// [`Maintenance::hash`]'s crc32 over the parts of an image that every member has alike (not
/// the request ids kept for de-duplication, nor lease deadlines, which are local).
fn image_hash(image: &keel_core::pb::keelpb::FullImage) -> u32 {
    let mut h = crc32fast::Hasher::new();
    for k in &image.keys {
        h.update(&(k.key.len() as u64).to_le_bytes());
        h.update(&k.key);
        h.update(&k.history.as_ref().map(|x| x.encode_to_vec()).unwrap_or_default());
    }
    if let Some(state) = &image.state {
        h.update(&state.current_revision.to_le_bytes());
        h.update(&state.compacted_revision.to_le_bytes());
        for m in &state.members {
            h.update(&m.id.to_le_bytes());
            h.update(m.peer_ur_ls.join(",").as_bytes());
        }
        for a in &state.alarms {
            h.update(&a.member_id.to_le_bytes());
            h.update(&a.alarm.to_le_bytes());
        }
    }
    h.finalize()
}

/// etcd's `types.NewURLs` as MemberAdd uses it: at least one URL, each `scheme://host:port`
/// with scheme http, https, unix or unixs and no path; sorted.
fn member_urls(urls: &[String]) -> Result<Vec<String>, Status> {
    let bad = || Status::invalid_argument(errors::MEMBER_BAD_URLS);
    if urls.is_empty() {
        return Err(bad());
    }
    let mut out = Vec::with_capacity(urls.len());
    for u in urls {
        let u = u.trim();
        let (scheme, rest) = u.split_once("://").ok_or_else(bad)?;
        if !matches!(scheme, "http" | "https" | "unix" | "unixs") {
            return Err(bad());
        }
        if scheme.starts_with("http") {
            let (host, port) = rest.rsplit_once(':').ok_or_else(bad)?;
            if host.is_empty() && port.is_empty() || port.contains('/') {
                return Err(bad());
            }
        } else if rest.contains('/') {
            return Err(bad());
        }
        out.push(u.to_string());
    }
    out.sort();
    Ok(out)
}

#[tonic::async_trait]
impl Cluster for Services {
    async fn member_add(&self, r: Request<MemberAddRequest>) -> Result<Response<MemberAddResponse>, Status> {
        self.learner_check()?;
        let r = r.into_inner();
        let peer_urls = member_urls(&r.peer_ur_ls)?;
        let unix_secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let change = MemberChange::Add { peer_urls, is_learner: r.is_learner, unix_secs };
        let c = self.node.change_members(change).await.map_err(request_status)?;
        Ok(Response::new(MemberAddResponse { header: Some(c.header), member: c.member, members: c.members }))
    }

    async fn member_remove(
        &self,
        r: Request<MemberRemoveRequest>,
    ) -> Result<Response<MemberRemoveResponse>, Status> {
        self.learner_check()?;
        let change = MemberChange::Remove { id: r.into_inner().id };
        let c = self.node.change_members(change).await.map_err(request_status)?;
        Ok(Response::new(MemberRemoveResponse { header: Some(c.header), members: c.members }))
    }

    async fn member_update(
        &self,
        r: Request<MemberUpdateRequest>,
    ) -> Result<Response<MemberUpdateResponse>, Status> {
        self.learner_check()?;
        // etcd does not check the new URLs' form here (only that no other member has them).
        let r = r.into_inner();
        let change = MemberChange::Update { id: r.id, peer_urls: r.peer_ur_ls };
        let c = self.node.change_members(change).await.map_err(request_status)?;
        Ok(Response::new(MemberUpdateResponse { header: Some(c.header), members: c.members }))
    }

    async fn member_list(
        &self,
        _r: Request<MemberListRequest>,
    ) -> Result<Response<MemberListResponse>, Status> {
        self.learner_check()?;
        let s = self.node.status().await.map_err(request_status)?;
        let members = s
            .members
            .into_iter()
            .map(|mut m| {
                // Until its attributes are published through the log, a member knows its own.
                if m.id == self.self_member.id && m.client_ur_ls.is_empty() {
                    m.client_ur_ls = self.self_member.client_ur_ls.clone();
                }
                m
            })
            .collect();
        // etcd's Cluster service headers carry no revision.
        let header = ResponseHeader { revision: 0, ..s.header };
        Ok(Response::new(MemberListResponse { header: Some(header), members }))
    }

    /// Only the leader knows whether the learner is in sync, so a follower forwards the
    /// promotion to it (on its peer URL), as etcd does, until it is answered or time runs out.
    async fn member_promote(
        &self,
        r: Request<MemberPromoteRequest>,
    ) -> Result<Response<MemberPromoteResponse>, Status> {
        self.learner_check()?;
        let id = r.into_inner().id;
        let deadline = tokio::time::Instant::now() + runtime::node::REQUEST_TIMEOUT;
        loop {
            match self.node.change_members(MemberChange::Promote { id }).await {
                Ok(c) => {
                    return Ok(Response::new(MemberPromoteResponse {
                        header: Some(c.header),
                        members: c.members,
                    }))
                }
                Err(RequestError::NotLeader) => {}
                Err(e) => return Err(request_status(e)),
            }
            let s = self.node.status().await.map_err(request_status)?;
            let leader_url = s.members.iter().find(|m| m.id == s.leader && s.leader != self.node.member_id);
            if let Some(url) = leader_url.and_then(|m| m.peer_ur_ls.first()) {
                match crate::peer::forward_promote(url, id).await {
                    Ok(members) => {
                        let header = ResponseHeader { revision: 0, ..s.header };
                        return Ok(Response::new(MemberPromoteResponse { header: Some(header), members }));
                    }
                    // The leader could not be reached or moved: ask again.
                    Err(e) if e.code() == tonic::Code::Unavailable => {}
                    Err(e) => return Err(e),
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(request_status(RequestError::Timeout));
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }
}

/// etcd's auth errors that an empty, disabled auth store can give.
const AUTH_NOT_ENABLED: &str = "etcdserver: authentication is not enabled";
const ROOT_USER_NOT_EXIST: &str = "etcdserver: root user does not exist";
const USER_EMPTY: &str = "etcdserver: user name is empty";
const USER_NOT_FOUND: &str = "etcdserver: user name not found";
const ROLE_EMPTY: &str = "etcdserver: role name is empty";
const ROLE_NOT_FOUND: &str = "etcdserver: role name not found";
/// etcd's auth store revision before any auth change.
const AUTH_REVISION: u64 = 1;

fn user_not_found() -> Status {
    Status::failed_precondition(USER_NOT_FOUND)
}

fn role_not_found() -> Status {
    Status::failed_precondition(ROLE_NOT_FOUND)
}

/// The Auth service as etcd answers it while authentication has never been enabled and no user
/// or role exists. Keel cannot store users or roles yet, so it can never leave that state:
/// everything that reads or changes a user or role answers exactly as etcd does about one that
/// does not exist, and only adding one (which etcd would do) answers `Unimplemented`.
#[tonic::async_trait]
impl Auth for Services {
    async fn auth_enable(
        &self,
        _r: Request<AuthEnableRequest>,
    ) -> Result<Response<AuthEnableResponse>, Status> {
        self.learner_check()?;
        Err(Status::failed_precondition(ROOT_USER_NOT_EXIST))
    }

    async fn auth_disable(
        &self,
        _r: Request<AuthDisableRequest>,
    ) -> Result<Response<AuthDisableResponse>, Status> {
        self.learner_check()?;
        let header = self.auth_header().await?;
        Ok(Response::new(AuthDisableResponse { header: Some(header) }))
    }

    async fn auth_status(
        &self,
        _r: Request<AuthStatusRequest>,
    ) -> Result<Response<AuthStatusResponse>, Status> {
        self.learner_check()?;
        let header = self.auth_header().await?;
        Ok(Response::new(AuthStatusResponse {
            header: Some(header),
            enabled: false,
            auth_revision: AUTH_REVISION,
        }))
    }

    /// etcd's clients take this answer as "no token needed" and go on without one.
    async fn authenticate(
        &self,
        _r: Request<AuthenticateRequest>,
    ) -> Result<Response<AuthenticateResponse>, Status> {
        self.learner_check()?;
        Err(Status::failed_precondition(AUTH_NOT_ENABLED))
    }

    async fn user_add(
        &self,
        r: Request<AuthUserAddRequest>,
    ) -> Result<Response<AuthUserAddResponse>, Status> {
        self.learner_check()?;
        if r.get_ref().name.is_empty() {
            return Err(invalid(USER_EMPTY));
        }
        Err(unimplemented("storing users", 7))
    }

    async fn user_get(
        &self,
        _r: Request<AuthUserGetRequest>,
    ) -> Result<Response<AuthUserGetResponse>, Status> {
        self.learner_check()?;
        Err(user_not_found())
    }

    async fn user_list(
        &self,
        _r: Request<AuthUserListRequest>,
    ) -> Result<Response<AuthUserListResponse>, Status> {
        self.learner_check()?;
        let header = self.auth_header().await?;
        Ok(Response::new(AuthUserListResponse { header: Some(header), users: Vec::new() }))
    }

    async fn user_delete(
        &self,
        _r: Request<AuthUserDeleteRequest>,
    ) -> Result<Response<AuthUserDeleteResponse>, Status> {
        self.learner_check()?;
        Err(user_not_found())
    }

    async fn user_change_password(
        &self,
        _r: Request<AuthUserChangePasswordRequest>,
    ) -> Result<Response<AuthUserChangePasswordResponse>, Status> {
        self.learner_check()?;
        Err(user_not_found())
    }

    async fn user_grant_role(
        &self,
        _r: Request<AuthUserGrantRoleRequest>,
    ) -> Result<Response<AuthUserGrantRoleResponse>, Status> {
        self.learner_check()?;
        Err(user_not_found())
    }

    async fn user_revoke_role(
        &self,
        _r: Request<AuthUserRevokeRoleRequest>,
    ) -> Result<Response<AuthUserRevokeRoleResponse>, Status> {
        self.learner_check()?;
        Err(user_not_found())
    }

    async fn role_add(
        &self,
        r: Request<AuthRoleAddRequest>,
    ) -> Result<Response<AuthRoleAddResponse>, Status> {
        self.learner_check()?;
        if r.get_ref().name.is_empty() {
            return Err(invalid(ROLE_EMPTY));
        }
        Err(unimplemented("storing roles", 7))
    }

    async fn role_get(
        &self,
        _r: Request<AuthRoleGetRequest>,
    ) -> Result<Response<AuthRoleGetResponse>, Status> {
        self.learner_check()?;
        Err(role_not_found())
    }

    async fn role_list(
        &self,
        _r: Request<AuthRoleListRequest>,
    ) -> Result<Response<AuthRoleListResponse>, Status> {
        self.learner_check()?;
        let header = self.auth_header().await?;
        Ok(Response::new(AuthRoleListResponse { header: Some(header), roles: Vec::new() }))
    }

    async fn role_delete(
        &self,
        _r: Request<AuthRoleDeleteRequest>,
    ) -> Result<Response<AuthRoleDeleteResponse>, Status> {
        self.learner_check()?;
        Err(role_not_found())
    }

    async fn role_grant_permission(
        &self,
        _r: Request<AuthRoleGrantPermissionRequest>,
    ) -> Result<Response<AuthRoleGrantPermissionResponse>, Status> {
        self.learner_check()?;
        Err(role_not_found())
    }

    async fn role_revoke_permission(
        &self,
        _r: Request<AuthRoleRevokePermissionRequest>,
    ) -> Result<Response<AuthRoleRevokePermissionResponse>, Status> {
        self.learner_check()?;
        Err(role_not_found())
    }
}

type WatchResponseStream = Pin<Box<dyn Stream<Item = Result<WatchResponse, Status>> + Send + 'static>>;

fn watch_response(update: WatchUpdate) -> WatchResponse {
    match update {
        WatchUpdate::Created { watch_id, header } => {
            WatchResponse { header: Some(header), watch_id, created: true, ..Default::default() }
        }
        WatchUpdate::Events { watch_id, header, events } => {
            WatchResponse { header: Some(header), watch_id, events, ..Default::default() }
        }
        WatchUpdate::Canceled { watch_id, header, compact_revision, reason, created } => WatchResponse {
            header: Some(header),
            watch_id,
            created,
            canceled: true,
            compact_revision,
            cancel_reason: reason,
            ..Default::default()
        },
        // A stream-wide progress notification carries no watch id (etcd's -1).
        WatchUpdate::Progress { header } => {
            WatchResponse { header: Some(header), watch_id: -1, ..Default::default() }
        }
    }
}

/// Splits a response whose events exceed `limit` bytes into several, all but the last marked
/// `fragment`, when the client asked for fragments (etcd's rule); otherwise sends it whole.
fn fragment(mut resp: WatchResponse, enabled: bool, limit: usize) -> Vec<WatchResponse> {
    use prost::Message as _;
    if !enabled || resp.events.len() < 2 || resp.encoded_len() <= limit {
        return vec![resp];
    }
    let events = std::mem::take(&mut resp.events);
    let template = resp;
    let mut out = Vec::new();
    let mut current = template.clone();
    let mut size = 0;
    for e in events {
        let n = e.encoded_len();
        if !current.events.is_empty() && size + n > limit {
            let mut full = std::mem::replace(&mut current, template.clone());
            full.fragment = true;
            out.push(full);
            size = 0;
        }
        size += n;
        current.events.push(e);
    }
    out.push(current);
    out
}

#[tonic::async_trait]
impl Watch for Services {
    type WatchStream = WatchResponseStream;

    async fn watch(
        &self,
        request: Request<tonic::Streaming<WatchRequest>>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        self.learner_check()?;
        let mut inbound = request.into_inner();
        let node = self.node.clone();
        let (stream, rx) = node.watch_open().await.map_err(request_status)?;
        // Watch ids whose client accepts fragmented responses.
        let fragmenting = std::sync::Arc::new(std::sync::Mutex::new(std::collections::HashSet::<i64>::new()));
        let limit = self.max_request_bytes;
        let out_fragmenting = fragmenting.clone();
        // A request that cannot be read (too large, not protobuf) ends the call with its error,
        // as etcd's recvLoop error ends its Watch.
        let (failed_tx, failed_rx) = tokio::sync::oneshot::channel::<Status>();
        tokio::spawn(async move {
            // Watch ids are per stream; automatic ones count up from 0 and, as etcd's, are never
            // handed out twice on a stream (nor one a client chose and still uses).
            let mut in_use = std::collections::HashSet::new();
            let mut next_id: i64 = 0;
            loop {
                let req = match inbound.message().await {
                    Ok(Some(req)) => req,
                    Ok(None) => break,
                    Err(status) => {
                        let _ = failed_tx.send(status);
                        break;
                    }
                };
                let sent = match req.request_union {
                    Some(watch_request::RequestUnion::CreateRequest(c)) => {
                        let filters = |f: watch_create_request::FilterType| c.filters.contains(&(f as i32));
                        let spec = WatchSpec {
                            // etcd watches the smallest key, "\0", for an empty one.
                            key: if c.key.is_empty() {
                                bytes::Bytes::from_static(&[0])
                            } else {
                                c.key.clone()
                            },
                            range_end: c.range_end.clone(),
                            start_revision: c.start_revision,
                            no_put: filters(watch_create_request::FilterType::Noput),
                            no_delete: filters(watch_create_request::FilterType::Nodelete),
                            prev_kv: c.prev_kv,
                            progress_notify: c.progress_notify,
                        };
                        // The hub refuses an empty range or an id in use; neither takes an id.
                        let id = if spec.is_empty_range() || (c.watch_id != 0 && in_use.contains(&c.watch_id))
                        {
                            c.watch_id
                        } else if c.watch_id != 0 {
                            in_use.insert(c.watch_id);
                            c.watch_id
                        } else {
                            while in_use.contains(&next_id) {
                                next_id += 1;
                            }
                            in_use.insert(next_id);
                            next_id += 1;
                            next_id - 1
                        };
                        if c.fragment {
                            fragmenting.lock().expect("fragment set").insert(id);
                        } else if !spec.is_empty_range() {
                            fragmenting.lock().expect("fragment set").remove(&id);
                        }
                        node.watch_create(stream, id, spec).await
                    }
                    Some(watch_request::RequestUnion::CancelRequest(c)) => {
                        in_use.remove(&c.watch_id);
                        node.watch_cancel(stream, c.watch_id).await
                    }
                    Some(watch_request::RequestUnion::ProgressRequest(_)) => {
                        node.watch_progress(stream).await
                    }
                    None => Ok(()),
                };
                if sent.is_err() {
                    break;
                }
            }
            // The client may only have closed its sending side: its watchers stay until it
            // stops reading (the node forgets streams nobody reads).
        });
        let updates =
            futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|update| (update, rx)) })
                .flat_map(move |update| {
                    let resp = watch_response(update);
                    let frag = out_fragmenting.lock().expect("fragment set").contains(&resp.watch_id);
                    futures::stream::iter(fragment(resp, frag, limit).into_iter().map(|r| Some(Ok(r))))
                });
        // The updates until they end or a request fails to be read (then that failure); `None`
        // marks the end of either.
        let failed = futures::stream::once(async move {
            match failed_rx.await {
                Ok(status) => Some(Err(status)),
                // The client closed its side: the updates go on.
                Err(_) => std::future::pending().await,
            }
        });
        let end = || futures::stream::iter([None]);
        #[cfg(not(madsim))]
        let closed = crate::memory::ClosedGuard;
        let out = futures::stream::select(updates.chain(end()), failed.chain(end()))
            .take_while(|item| futures::future::ready(item.is_some()))
            .filter_map(move |item| {
                // Dropped with the stream: counts its end (see `crate::memory`).
                #[cfg(not(madsim))]
                let _ = &closed;
                futures::future::ready(item)
            });
        Ok(Response::new(Box::pin(out)))
    }
}

/// How long a follower waits for a leader (and its published client URL) before a forwarded
/// lease request fails, checking every [`LEADER_CHECK`]: as etcd's lease forwarding does, up to
/// its request timeout.
const LEADER_WAIT: std::time::Duration = std::time::Duration::from_secs(5);
const LEADER_CHECK: std::time::Duration = std::time::Duration::from_millis(50);

/// A Lease client to the leader's (published) client URL.
async fn leader_lease_client(node: &NodeHandle) -> Result<LeaseClient<Channel>, Status> {
    let no_leader = || Status::unavailable("etcdserver: no leader");
    let deadline = tokio::time::Instant::now() + LEADER_WAIT;
    let url = loop {
        let s = node.status().await.map_err(request_status)?;
        let url = s
            .members
            .iter()
            .find(|m| m.id == s.leader && s.leader != 0)
            .and_then(|m| m.client_ur_ls.first().cloned());
        match url {
            Some(url) => break url,
            // Just after an election the leader may not have published its client URLs yet.
            None if tokio::time::Instant::now() < deadline => tokio::time::sleep(LEADER_CHECK).await,
            None => return Err(no_leader()),
        }
    };
    let endpoint = tonic::transport::Endpoint::from_shared(url).map_err(|_| no_leader())?;
    let channel = endpoint
        .connect_timeout(std::time::Duration::from_secs(1))
        .connect()
        .await
        .map_err(|_| no_leader())?;
    Ok(LeaseClient::new(channel))
}

async fn forward_keep_alive(
    node: &NodeHandle,
    leader: &mut Option<LeaseClient<Channel>>,
    id: i64,
) -> Result<LeaseKeepAliveResponse, Status> {
    if leader.is_none() {
        *leader = Some(leader_lease_client(node).await?);
    }
    let client = leader.as_mut().expect("connected");
    let result = async {
        let mut responses = client
            .lease_keep_alive(futures::stream::iter([LeaseKeepAliveRequest { id }]))
            .await?
            .into_inner();
        responses.message().await?.ok_or_else(|| Status::unavailable("etcdserver: leader changed"))
    }
    .await;
    if result.is_err() {
        *leader = None; // Reconnect next time; the leader may have changed.
    }
    result
}

type KeepAliveStream = Pin<Box<dyn Stream<Item = Result<LeaseKeepAliveResponse, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl Lease for Services {
    async fn lease_grant(
        &self,
        request: Request<LeaseGrantRequest>,
    ) -> Result<Response<LeaseGrantResponse>, Status> {
        self.learner_check()?;
        self.check_quota(keel_core::quota::LEASE_OVERHEAD_BYTES).await?;
        let mut req = request.into_inner();
        if req.ttl > MAX_LEASE_TTL_SECS {
            return Err(errors::lease_status(&LeaseError::TooLargeTtl));
        }
        if req.id == 0 {
            req.id = self.lease_ids.lock().expect("lease id generator").next_id();
        }
        match self.write(Op::LeaseGrant(req)).await? {
            WriteResponse::LeaseGrant(r) => Ok(Response::new(r)),
            other => Err(Status::internal(format!("lease grant answered with {other:?}"))),
        }
    }

    async fn lease_revoke(
        &self,
        request: Request<LeaseRevokeRequest>,
    ) -> Result<Response<LeaseRevokeResponse>, Status> {
        self.learner_check()?;
        match self.write(Op::LeaseRevoke(request.into_inner())).await? {
            WriteResponse::LeaseRevoke(r) => Ok(Response::new(r)),
            other => Err(Status::internal(format!("lease revoke answered with {other:?}"))),
        }
    }

    type LeaseKeepAliveStream = KeepAliveStream;

    async fn lease_keep_alive(
        &self,
        request: Request<tonic::Streaming<LeaseKeepAliveRequest>>,
    ) -> Result<Response<Self::LeaseKeepAliveStream>, Status> {
        self.learner_check()?;
        let inbound = request.into_inner();
        let node = self.node.clone();
        type State = (tonic::Streaming<LeaseKeepAliveRequest>, NodeHandle, Option<LeaseClient<Channel>>);
        let out = futures::stream::unfold(
            (inbound, node, None) as State,
            |(mut inbound, node, mut leader)| async move {
                let req = match inbound.message().await {
                    Ok(Some(req)) => req,
                    _ => return None,
                };
                let item = match node.lease_keep_alive(req.id).await {
                    // Only the leader tracks expiry: a follower forwards the keep-alive to it.
                    Ok((_, Err(LeaseError::NotLeader))) => {
                        forward_keep_alive(&node, &mut leader, req.id).await
                    }
                    // An unknown (or just expired) lease answers TTL 0, as etcd does.
                    Ok((header, result)) => Ok(LeaseKeepAliveResponse {
                        header: Some(header),
                        id: req.id,
                        ttl: result.unwrap_or(0),
                    }),
                    Err(e) => Err(request_status(e)),
                };
                Some((item, (inbound, node, leader)))
            },
        );
        Ok(Response::new(Box::pin(out)))
    }

    async fn lease_time_to_live(
        &self,
        request: Request<LeaseTimeToLiveRequest>,
    ) -> Result<Response<LeaseTimeToLiveResponse>, Status> {
        self.learner_check()?;
        let req = request.into_inner();
        // The remaining TTL is known exactly only on the leader: a follower asks it.
        let status = self.node.status().await.map_err(request_status)?;
        if status.leader != self.self_member.id {
            let mut client = leader_lease_client(&self.node).await?;
            return client.lease_time_to_live(req).await;
        }
        let (header, ttl) = self.node.lease_time_to_live(req.id).await.map_err(request_status)?;
        let resp = match ttl {
            // An unknown lease answers TTL -1, as etcd does.
            None => {
                LeaseTimeToLiveResponse { header: Some(header), id: req.id, ttl: -1, ..Default::default() }
            }
            Some(t) => LeaseTimeToLiveResponse {
                header: Some(header),
                id: t.id,
                ttl: t.remaining_ttl,
                granted_ttl: t.granted_ttl,
                keys: if req.keys { t.keys } else { Vec::new() },
            },
        };
        Ok(Response::new(resp))
    }

    async fn lease_leases(
        &self,
        _r: Request<LeaseLeasesRequest>,
    ) -> Result<Response<LeaseLeasesResponse>, Status> {
        self.learner_check()?;
        let (header, ids) = self.node.lease_leases().await.map_err(request_status)?;
        let leases = ids.into_iter().map(|id| LeaseStatus { id }).collect();
        Ok(Response::new(LeaseLeasesResponse { header: Some(header), leases }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb::mvccpb::{Event, KeyValue};

    #[test]
    fn large_responses_fragment_only_when_asked() {
        let ev = |i: u8| Event {
            kv: Some(KeyValue { key: vec![i].into(), value: vec![0; 100].into(), ..Default::default() }),
            ..Default::default()
        };
        let resp = WatchResponse { watch_id: 3, events: (0..10).map(ev).collect(), ..Default::default() };
        assert_eq!(fragment(resp.clone(), false, 250).len(), 1);
        let parts = fragment(resp.clone(), true, 250);
        assert!(parts.len() > 1);
        assert!(parts[..parts.len() - 1].iter().all(|p| p.fragment) && !parts.last().unwrap().fragment);
        assert!(parts.iter().all(|p| p.watch_id == 3));
        let events: Vec<Event> = parts.into_iter().flat_map(|p| p.events).collect();
        assert_eq!(events, resp.events, "every event once, in order");
    }
}
