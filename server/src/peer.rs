//! The peer transport: Raft messages between members over gRPC (`keelpb.Raft/Send`), in
//! batches. One sender task per peer drains a bounded queue, batches what is waiting, and sends
//! it; on failure it drops the batch (Raft retransmits what matters) and reconnects with
//! backoff. The receiving side hands batches to the node task.

use crate::pb::keelpb::raft_client::RaftClient;
use crate::pb::keelpb::raft_server::Raft;
use crate::pb::keelpb::{MessageBatch, SendResponse};
use keel_core::raft::{Message, MessageType};
use runtime::node::NodeHandle;
use std::collections::HashMap;
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
}

/// The peer service, ready to serve (its type differs under the simulator, hence a macro).
macro_rules! peer_server {
    ($node:expr) => {
        $crate::pb::keelpb::raft_server::RaftServer::new($crate::peer::PeerService { node: $node })
            .max_decoding_message_size($crate::peer::PEER_MESSAGE_BYTES_MAX)
    };
}
pub(crate) use peer_server;

/// Starts a sender task per peer; returns the queues the node task writes to.
pub(crate) fn start_senders(peers: &HashMap<u64, String>) -> HashMap<u64, mpsc::Sender<Message>> {
    let mut outbox = HashMap::new();
    for (&id, url) in peers {
        let (tx, rx) = mpsc::channel(PEER_QUEUE_MAX);
        outbox.insert(id, tx);
        tokio::spawn(sender(id, url.clone(), rx));
    }
    outbox
}

async fn sender(peer: u64, url: String, mut rx: mpsc::Receiver<Message>) {
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
                    tracing::debug!(peer = %format!("{peer:x}"), error = %e, "peer unreachable");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                    continue; // These messages are dropped; Raft sends again.
                }
            }
        }
        let c = client.as_mut().expect("connected");
        if let Err(e) = c.send(MessageBatch { messages }).await {
            tracing::debug!(peer = %format!("{peer:x}"), error = %e, "peer send failed");
            client = None;
        }
    }
}
