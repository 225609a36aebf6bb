//! etcd's plain-HTTP endpoints on the client port: `/health`, `/version` and `/metrics`
//! (Prometheus text, with etcd's metric names for what Keel measures), and what the port
//! answers to any other HTTP request: CORS headers, preflights, unknown paths.

use axum::extract::{RawQuery, Request};
use axum::http::{header, HeaderValue, Method, StatusCode, Version};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::Router;
use keel_core::pb::etcdserverpb::{AlarmType, RangeRequest};
use runtime::node::NodeHandle;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use tower::ServiceExt;

/// Everything the client port serves: the gRPC services (`grpc`, which accept messages of up
/// to `message_bytes_max`), the JSON gateway, `/version`, `/health` and `/metrics`.
///
/// As etcd's, the port hands gRPC requests (HTTP/2 with a gRPC content type) to the services
/// and any other request to its HTTP handlers. Those are behind a permissive CORS layer: every
/// answer allows any origin, and a preflight `OPTIONS` of any path answers 200 with no body.
pub(crate) fn routes(grpc: Router, node: NodeHandle, message_bytes_max: usize) -> Router {
    let http = crate::gateway::routes(grpc.clone(), message_bytes_max)
        .merge(metrics_routes(node))
        .route("/version", any(version))
        .fallback(not_found)
        .layer(axum::middleware::from_fn(cors));
    Router::new().fallback(move |request: Request| {
        let to = if is_grpc(&request) { grpc.clone() } else { http.clone() };
        async move { to.oneshot(request).await.unwrap_or_else(|never| match never {}) }
    })
}

/// etcd's test for a gRPC request.
fn is_grpc(request: &Request) -> bool {
    request.version() == Version::HTTP_2
        && request
            .headers()
            .get(header::CONTENT_TYPE)
            .is_some_and(|v| v.to_str().is_ok_and(|v| v.contains("application/grpc")))
}

async fn cors(request: Request, next: Next) -> Response {
    let mut response = if request.method() == Method::OPTIONS {
        StatusCode::OK.into_response()
    } else {
        next.run(request).await
    };
    let headers = response.headers_mut();
    headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("POST, GET, OPTIONS, PUT, DELETE"),
    );
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("accept, content-type, authorization"),
    );
    response
}

/// An unknown path under the gateway's prefixes answers grpc-gateway's `Not Found`, any other
/// one Go's `404 page not found`.
async fn not_found(request: Request) -> Response {
    let path = request.uri().path();
    if crate::gateway::PREFIXES.iter().any(|p| path.strip_prefix(p).is_some_and(|rest| rest.starts_with('/')))
    {
        crate::gateway::text_response(StatusCode::NOT_FOUND)
    } else {
        crate::gateway::plain_text(StatusCode::NOT_FOUND, "404 page not found\n".to_string())
    }
}

/// `/metrics` and `/health`: on the client port, and alone on `--listen-metrics-urls`.
/// As etcd's, `/health` answers GET only and `/metrics` any method.
pub(crate) fn metrics_routes(node: NodeHandle) -> Router {
    let n1 = node.clone();
    let serve_health = move |method: Method, RawQuery(query): RawQuery| {
        let node = n1.clone();
        async move {
            if method != Method::GET {
                return get_only();
            }
            health(node, query).await.into_response()
        }
    };
    Router::new().route("/health", any(serve_health)).route("/metrics", any(move || metrics(node.clone())))
}

/// Go's answer to another method than GET (HEAD included) where only GET is served.
fn get_only() -> Response {
    let mut response = crate::gateway::text_response(StatusCode::METHOD_NOT_ALLOWED);
    response.headers_mut().insert(header::ALLOW, HeaderValue::from_static("GET"));
    response
}

/// Unhealthy while a raised alarm is not excluded (`?exclude=NOSPACE`; the reason names the
/// first one, as etcd's does), then while there is no leader.
async fn health(node: NodeHandle, query: Option<String>) -> impl IntoResponse {
    // etcd writes an unhealthy answer as an HTTP error, which ends with a newline.
    let json = |healthy: bool, reason: &str| {
        let end = if healthy { "" } else { "\n" };
        format!("{{\"health\":\"{healthy}\",\"reason\":\"{reason}\"}}{end}")
    };
    let query = query.unwrap_or_default();
    let excluded: Vec<&str> = query.split('&').filter_map(|kv| kv.strip_prefix("exclude=")).collect();
    let alarm = |s: &runtime::node::NodeStatus| {
        s.alarms
            .iter()
            .filter_map(|a| AlarmType::try_from(a.alarm).ok())
            .find(|t| !excluded.contains(&t.as_str_name()))
    };
    let answer = match node.status().await {
        Ok(s) if alarm(&s).is_some() => {
            let name = alarm(&s).map_or("", |t| t.as_str_name());
            (StatusCode::SERVICE_UNAVAILABLE, json(false, &format!("ALARM {name}")))
        }
        Ok(s) if s.leader != 0 => (StatusCode::OK, json(true, "")),
        Ok(_) => (StatusCode::SERVICE_UNAVAILABLE, json(false, "RAFT NO LEADER")),
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, json(false, "SERVER STOPPED")),
    };
    let counter = if answer.0 == StatusCode::OK { &HEALTH_SUCCESS } else { &HEALTH_FAILURES };
    counter.fetch_add(1, Relaxed);
    answer
}

/// A number as Prometheus' Go client prints a float (Go's `strconv.FormatFloat(v, 'g', -1,
/// 64)`): integers below a million as they are, larger ones as `d.ddde+XX` with the fewest
/// digits that give the value back, as etcd prints `etcd_server_quota_backend_bytes`.
fn go_float(v: i64) -> String {
    if v.unsigned_abs() < 1_000_000 {
        return v.to_string();
    }
    let digits = v.unsigned_abs().to_string();
    let exponent = digits.len() - 1;
    let mantissa = digits.trim_end_matches('0');
    let sign = if v < 0 { "-" } else { "" };
    let (first, rest) = mantissa.split_at(1);
    let dot = if rest.is_empty() { String::new() } else { format!(".{rest}") };
    format!("{sign}{first}{dot}e+{exponent:02}")
}

/// `etcd_server_health_success` and `etcd_server_health_failures`: `/health` answers.
static HEALTH_SUCCESS: AtomicU64 = AtomicU64::new(0);
static HEALTH_FAILURES: AtomicU64 = AtomicU64::new(0);

async fn version(method: Method) -> Response {
    if method != Method::GET {
        return get_only();
    }
    let body = format!("{{\"etcdserver\":\"{}\",\"etcdcluster\":\"3.5.0\"}}", crate::ETCD_VERSION);
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// Prometheus' text format, one metric family at a time.
struct Text(String);

impl Text {
    fn header(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    fn gauge(&mut self, name: &str, help: &str, value: impl std::fmt::Display) {
        self.header(name, "gauge", help);
        let _ = writeln!(self.0, "{name} {value}");
    }

    fn counter(&mut self, name: &str, help: &str, value: impl std::fmt::Display) {
        self.header(name, "counter", help);
        let _ = writeln!(self.0, "{name} {value}");
    }

    fn histogram(&mut self, name: &str, help: &str, h: &runtime::metrics::HistogramSnapshot) {
        self.header(name, "histogram", help);
        for (le, count) in &h.buckets {
            let _ = writeln!(self.0, "{name}_bucket{{le=\"{le}\"}} {count}");
        }
        let _ = writeln!(self.0, "{name}_bucket{{le=\"+Inf\"}} {}", h.count);
        let _ = writeln!(self.0, "{name}_sum {}\n{name}_count {}", h.sum_seconds, h.count);
    }

    /// A family with one sample per peer (none printed when there are no peers, as etcd).
    fn per_peer(&mut self, name: &str, kind: &str, help: &str, label: &str, values: &[(u64, u64)]) {
        if values.is_empty() {
            return;
        }
        self.header(name, kind, help);
        for (id, value) in values {
            let _ = writeln!(self.0, "{name}{{{label}=\"{id:x}\"}} {value}");
        }
    }
}

/// etcd's metrics, by etcd's names, types and help texts, for what Keel measures. A metric
/// whose value Keel does not have is left out rather than made up.
async fn metrics(node: NodeHandle) -> impl IntoResponse {
    let Ok(s) = node.status().await else {
        return (StatusCode::SERVICE_UNAVAILABLE, [(header::CONTENT_TYPE, "text/plain")], String::new());
    };
    // Live keys: a count-only range over every key, served locally (etcd keeps a gauge).
    let all_keys = RangeRequest {
        key: vec![0].into(),
        range_end: vec![0].into(),
        count_only: true,
        serializable: true,
        ..Default::default()
    };
    let keys = node.range(all_keys).await.ok().map(|r| r.count);
    let mut out = Text(String::with_capacity(8 << 10));
    out.gauge(
        "etcd_debugging_mvcc_compact_revision",
        "The revision of the last compaction in store.",
        runtime::metrics::COMPACT_REVISION.load(Relaxed),
    );
    out.gauge("etcd_debugging_mvcc_current_revision", "The current revision of store.", s.header.revision);
    if let Some(keys) = keys {
        out.gauge("etcd_debugging_mvcc_keys_total", "Total number of keys.", keys);
    }
    out.histogram(
        "etcd_disk_backend_commit_duration_seconds",
        "The latency distributions of commit called by backend.",
        &runtime::metrics::BACKEND_COMMIT.snapshot(),
    );
    out.histogram(
        "etcd_disk_wal_fsync_duration_seconds",
        "The latency distributions of fsync called by WAL.",
        &runtime::metrics::WAL_FSYNC.snapshot(),
    );
    // A gauge in etcd 3.5, though named as a counter.
    out.gauge(
        "etcd_disk_wal_write_bytes_total",
        "Total number of bytes written in WAL.",
        runtime::metrics::WAL_WRITE_BYTES.load(Relaxed),
    );
    out.gauge(
        "etcd_mvcc_db_total_size_in_bytes",
        "Total size of the underlying database physically allocated in bytes.",
        s.db_bytes,
    );
    out.gauge(
        "etcd_mvcc_db_total_size_in_use_in_bytes",
        "Total size of the underlying database logically in use in bytes.",
        s.db_in_use_bytes,
    );
    let peers = runtime::metrics::peers();
    let column = |f: fn(&runtime::metrics::PeerCounts) -> u64| -> Vec<(u64, u64)> {
        peers.iter().map(|(id, p)| (*id, f(p))).filter(|(_, v)| *v > 0).collect()
    };
    out.per_peer(
        "etcd_network_peer_received_bytes_total",
        "counter",
        "The total number of bytes received from peers.",
        "From",
        &column(|p| p.received_bytes),
    );
    out.per_peer(
        "etcd_network_peer_sent_bytes_total",
        "counter",
        "The total number of bytes sent to peers.",
        "To",
        &column(|p| p.sent_bytes),
    );
    out.per_peer(
        "etcd_network_peer_sent_failures_total",
        "counter",
        "The total number of send failures from peers.",
        "To",
        &column(|p| p.sent_failures),
    );
    out.gauge(
        "etcd_server_has_leader",
        "Whether or not a leader exists. 1 is existence, 0 is not.",
        u8::from(s.leader != 0),
    );
    out.counter(
        "etcd_server_health_failures",
        "The total number of failed health checks",
        HEALTH_FAILURES.load(Relaxed),
    );
    out.counter(
        "etcd_server_health_success",
        "The total number of successful health checks",
        HEALTH_SUCCESS.load(Relaxed),
    );
    out.header(
        "etcd_server_id",
        "gauge",
        "Server or member ID in hexadecimal format. 1 for 'server_id' label with current ID.",
    );
    let _ = writeln!(out.0, "etcd_server_id{{server_id=\"{:x}\"}} 1", node.member_id);
    out.gauge(
        "etcd_server_is_leader",
        "Whether or not this member is a leader. 1 if is, 0 otherwise.",
        u8::from(s.leader == node.member_id),
    );
    let learner = s.members.iter().any(|mb| mb.id == node.member_id && mb.is_learner);
    out.gauge(
        "etcd_server_is_learner",
        "Whether or not this member is a learner. 1 if is, 0 otherwise.",
        u8::from(learner),
    );
    out.counter(
        "etcd_server_leader_changes_seen_total",
        "The number of leader changes seen.",
        runtime::metrics::LEADER_CHANGES.load(Relaxed),
    );
    out.gauge(
        "etcd_server_proposals_applied_total",
        "The total number of consensus proposals applied.",
        runtime::metrics::APPLIED_INDEX.load(Relaxed),
    );
    out.gauge(
        "etcd_server_proposals_committed_total",
        "The total number of consensus proposals committed.",
        runtime::metrics::COMMITTED_INDEX.load(Relaxed),
    );
    out.counter(
        "etcd_server_proposals_failed_total",
        "The total number of failed proposals seen.",
        runtime::metrics::PROPOSALS_FAILED.load(Relaxed),
    );
    out.gauge(
        "etcd_server_proposals_pending",
        "The current number of pending proposals to commit.",
        runtime::metrics::PROPOSALS_PENDING.load(Relaxed),
    );
    out.gauge(
        "etcd_server_quota_backend_bytes",
        "Current backend storage quota size in bytes.",
        go_float(runtime::metrics::QUOTA_BACKEND_BYTES.load(Relaxed)),
    );
    out.header(
        "etcd_server_version",
        "gauge",
        "Which version is running. 1 for 'server_version' label with current version.",
    );
    let _ = writeln!(out.0, "etcd_server_version{{server_version=\"{}\"}} 1", crate::ETCD_VERSION);
    (StatusCode::OK, [(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out.0)
}

#[cfg(test)]
mod tests {
    use super::go_float;

    /// As etcd 3.5.1's `/metrics` printed its quota for `--quota-backend-bytes` of -5, 0,
    /// 16777216 and 9000000000.
    #[test]
    fn floats_print_as_go_prints_them() {
        assert_eq!(go_float(-5), "-5");
        assert_eq!(go_float(20480), "20480");
        assert_eq!(go_float(2147483648), "2.147483648e+09");
        assert_eq!(go_float(16777216), "1.6777216e+07");
        assert_eq!(go_float(9000000000), "9e+09");
        assert_eq!(go_float(1_000_000), "1e+06");
    }
}
