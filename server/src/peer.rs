//! The peer transport: Raft messages between members over gRPC (`keelpb.Raft/Send`), in
//! batches. One sender task per peer drains a bounded queue, batches what is waiting, and sends
//! it; on failure it drops the batch (Raft retransmits what matters) and reconnects with
//! backoff. The receiving side hands batches to the node task. The node starts and drops
//! senders as members are added and removed ([`runtime::node::Transport`]).
//!
//! The same service answers two membership questions: the members (`keelpb.Raft/Members`, for a
//! member joining with `--initial-cluster-state existing`) and a learner's promotion forwarded
//! to the leader (`keelpb.Raft/Promote`). A removed member's messages are refused with etcd's
//! words, and a member told so stops, as etcd's does on HTTP 410.

use crate::pb::keelpb::raft_client::RaftClient;
use crate::pb::keelpb::raft_server::Raft;
use crate::pb::keelpb::{
    MembersRequest, MembersResponse, MessageBatch, PromoteRequest, PromoteResponse, SendResponse,
};
use keel_core::pb::etcdserverpb::Member;
use keel_core::raft::{Message, MessageType};
use prost::Message as _;
use runtime::node::{MemberChange, NodeHandle, REMOVED};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

/// Bound on messages queued for one peer.
pub const PEER_QUEUE_MAX: usize = 4096;
/// Bound on messages in one batch.
pub const BATCH_MESSAGES_MAX: usize = 512;
/// Bound on a batch's size on the wire. Raft bounds each append's entries; a snapshot carries
/// the whole state machine image in one message, so this bounds the image a member can send.
pub const PEER_MESSAGE_BYTES_MAX: usize = 512 << 20;

#[derive(Clone)]
pub(crate) struct PeerService {
    pub(crate) node: NodeHandle,
}

#[tonic::async_trait]
impl Raft for PeerService {
    async fn send(&self, request: Request<MessageBatch>) -> Result<Response<SendResponse>, Status> {
        let batch = request.into_inner();
        for m in &batch.messages {
            runtime::metrics::peer_received(m.from, m.encoded_len() as u64);
        }
        let members = self.node.members();
        if batch.messages.iter().any(|m| members.borrow().removed.contains(&m.from)) {
            return Err(Status::failed_precondition(REMOVED));
        }
        // Peers are not authenticated yet: drop what is malformed rather than let it reach the
        // node (a proposal without entries, a snapshot without metadata).
        let messages: Vec<Message> = batch
            .messages
            .into_iter()
            .filter(|m| match MessageType::try_from(m.msg_type) {
                Ok(MessageType::MsgProp) => !m.entries.is_empty(),
                Ok(MessageType::MsgSnap) => m.snapshot.as_ref().is_some_and(|s| s.metadata.is_some()),
                Ok(_) => true,
                Err(_) => false,
            })
            .collect();
        self.node.step(messages).await.map_err(|_| Status::unavailable("etcdserver: server stopped"))?;
        Ok(Response::new(SendResponse {}))
    }

    async fn members(&self, _r: Request<MembersRequest>) -> Result<Response<MembersResponse>, Status> {
        let s = self.node.status().await.map_err(crate::errors::request_status)?;
        Ok(Response::new(MembersResponse { cluster_id: self.node.cluster_id, members: s.members }))
    }

    async fn promote(&self, r: Request<PromoteRequest>) -> Result<Response<PromoteResponse>, Status> {
        let id = r.into_inner().id;
        let changed = self
            .node
            .change_members(MemberChange::Promote { id })
            .await
            .map_err(crate::errors::request_status)?;
        Ok(Response::new(PromoteResponse { members: changed.members }))
    }
}

async fn connect(url: &str) -> Result<RaftClient<Channel>, String> {
    let endpoint = tonic::transport::Endpoint::from_shared(url.to_string())
        .map_err(|e| e.to_string())?
        .connect_timeout(Duration::from_secs(1))
        .timeout(Duration::from_secs(5));
    let ch = endpoint.connect().await.map_err(|e| e.to_string())?;
    Ok(RaftClient::new(ch).max_encoding_message_size(PEER_MESSAGE_BYTES_MAX))
}

/// What a joining member learns from the running cluster: its id, the cluster's, and the
/// members, asked of the first member (by peer URL) that answers, as etcd asks at start.
pub(crate) async fn fetch_cluster(
    peer_urls: &[String],
    own_peer_urls: &[String],
) -> Result<(u64, u64, Vec<Member>), String> {
    let mut errors = Vec::new();
    for url in peer_urls.iter().filter(|u| !own_peer_urls.contains(u)) {
        let resp = match connect(url).await {
            Ok(mut c) => c.members(MembersRequest {}).await.map_err(|e| e.message().to_string()),
            Err(e) => Err(e),
        };
        let resp = match resp {
            Ok(r) => r.into_inner(),
            Err(e) => {
                errors.push(format!("{url}: {e}"));
                continue;
            }
        };
        let mut own = own_peer_urls.to_vec();
        own.sort();
        let me = resp.members.iter().find(|m| {
            let mut urls = m.peer_ur_ls.clone();
            urls.sort();
            urls == own
        });
        return match me {
            Some(m) => Ok((m.id, resp.cluster_id, resp.members.clone())),
            None => Err(format!(
                "the cluster (asked at {url}) has no member with peer URLs {own_peer_urls:?}; \
                 add it first (etcdctl member add)"
            )),
        };
    }
    Err(format!("cannot fetch the cluster's members from any peer URL in --initial-cluster: {errors:?}"))
}

/// Forwards a learner's promotion to the leader at `leader_url`; etcd's errors come back as
/// they are.
pub(crate) async fn forward_promote(leader_url: &str, id: u64) -> Result<Vec<Member>, Status> {
    let mut c = connect(leader_url).await.map_err(Status::unavailable)?;
    Ok(c.promote(PromoteRequest { id }).await?.into_inner().members)
}

/// The peer service, ready to serve (its type differs under the simulator, hence a macro).
macro_rules! peer_server {
    ($node:expr) => {
        $crate::pb::keelpb::raft_server::RaftServer::new($crate::peer::PeerService { node: $node })
            .max_decoding_message_size($crate::peer::PEER_MESSAGE_BYTES_MAX)
    };
}
pub(crate) use peer_server;

/// Starts a sender task for the peer `id` at `url`; returns the queue the node task writes to.
/// The task ends once the queue is dropped and drained. `on_removed` runs if the peer says
/// this member was removed from the cluster.
pub(crate) fn start_sender(
    id: u64,
    url: &str,
    on_removed: Arc<dyn Fn() + Send + Sync>,
) -> mpsc::Sender<Message> {
    let (tx, rx) = mpsc::channel(PEER_QUEUE_MAX);
    tokio::spawn(sender(id, url.to_string(), rx, on_removed));
    tx
}

async fn sender(
    peer: u64,
    url: String,
    mut rx: mpsc::Receiver<Message>,
    on_removed: Arc<dyn Fn() + Send + Sync>,
) {
    let mut client: Option<RaftClient<Channel>> = None;
    let mut backoff = Duration::from_millis(50);
    while let Some(first) = rx.recv().await {
        let mut messages = vec![first];
        while messages.len() < BATCH_MESSAGES_MAX {
            match rx.try_recv() {
                Ok(m) => messages.push(m),
                Err(_) => break,
            }
        }
        if client.is_none() {
            let endpoint = match tonic::transport::Endpoint::from_shared(url.clone()) {
                Ok(e) => e.connect_timeout(Duration::from_secs(1)).timeout(Duration::from_secs(5)),
                Err(e) => {
                    tracing::error!(peer = %format!("{peer:x}"), %url, error = %e, "bad peer URL");
                    return;
                }
            };
            match endpoint.connect().await {
                Ok(ch) => {
                    client = Some(RaftClient::new(ch).max_encoding_message_size(PEER_MESSAGE_BYTES_MAX));
                    backoff = Duration::from_millis(50);
                }
                Err(e) => {
                    runtime::metrics::peer_send_failed(peer, messages.len() as u64);
                    tracing::debug!(peer = %format!("{peer:x}"), error = %e, "peer unreachable");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                    continue; // These messages are dropped; Raft sends again.
                }
            }
        }
        let c = client.as_mut().expect("connected");
        let (count, bytes) = (messages.len() as u64, messages.iter().map(|m| m.encoded_len() as u64).sum());
        if let Err(e) = c.send(MessageBatch { messages }).await {
            runtime::metrics::peer_send_failed(peer, count);
            if e.code() == tonic::Code::FailedPrecondition && e.message() == REMOVED {
                tracing::warn!(peer = %format!("{peer:x}"), "{REMOVED}");
                on_removed();
                return;
            }
            tracing::debug!(peer = %format!("{peer:x}"), error = %e, "peer send failed");
            client = None;
        } else {
            runtime::metrics::peer_sent(peer, bytes);
        }
    }
}
