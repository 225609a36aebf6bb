//! etcd's plain-HTTP endpoints on the client port: `/health`, `/version` and `/metrics`
//! (Prometheus text, with etcd's metric names for what Keel measures).

use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use runtime::node::NodeHandle;

pub(crate) fn routes(grpc: Router, node: NodeHandle) -> Router {
    let (n1, n2) = (node.clone(), node);
    let grpc = grpc.clone().merge(crate::gateway::routes(grpc));
    grpc.route("/health", get(move || health(n1.clone())))
        .route("/version", get(version))
        .route("/metrics", get(move || metrics(n2.clone())))
}

async fn health(node: NodeHandle) -> impl IntoResponse {
    let json = |healthy: bool, reason: &str| format!("{{\"health\":\"{healthy}\",\"reason\":\"{reason}\"}}");
    match node.status().await {
        Ok(s) if s.leader != 0 => (StatusCode::OK, json(true, "")),
        Ok(_) => (StatusCode::SERVICE_UNAVAILABLE, json(false, "RAFT NO LEADER")),
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, json(false, "SERVER STOPPED")),
    }
}

async fn version() -> impl IntoResponse {
    format!("{{\"etcdserver\":\"{}\",\"etcdcluster\":\"3.5.0\"}}", crate::ETCD_VERSION)
}

async fn metrics(node: NodeHandle) -> impl IntoResponse {
    let Ok(s) = node.status().await else {
        return (StatusCode::SERVICE_UNAVAILABLE, [(header::CONTENT_TYPE, "text/plain")], String::new());
    };
    let mut out = String::new();
    let mut gauge = |name: &str, help: &str, value: String| {
        out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}\n"));
    };
    gauge(
        "etcd_server_has_leader",
        "Whether or not a leader exists. 1 is existence, 0 is not.",
        u8::from(s.leader != 0).to_string(),
    );
    gauge(
        "etcd_server_is_leader",
        "Whether or not this member is a leader. 1 if is, 0 otherwise.",
        u8::from(s.leader == node.member_id).to_string(),
    );
    gauge(
        "etcd_server_proposals_committed_total",
        "The total number of consensus proposals committed.",
        s.raft_index.to_string(),
    );
    gauge(
        "etcd_server_proposals_applied_total",
        "The total number of consensus proposals applied.",
        s.raft_applied_index.to_string(),
    );
    gauge("etcd_server_term", "The current raft term.", s.raft_term.to_string());
    gauge(
        "etcd_mvcc_db_total_size_in_bytes",
        "Total size of the underlying database physically allocated in bytes.",
        s.db_bytes.to_string(),
    );
    gauge(
        "etcd_debugging_mvcc_current_revision",
        "The current revision of store.",
        s.header.revision.to_string(),
    );
    out.push_str(&format!(
        "# HELP etcd_server_version Which version is running. 1 for 'server_version' label with current version.\n\
         # TYPE etcd_server_version gauge\netcd_server_version{{server_version=\"{}\"}} 1\n",
        crate::ETCD_VERSION
    ));
    (StatusCode::OK, [(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out)
}
