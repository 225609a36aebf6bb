//! etcd's grpc-gateway: its gRPC API as JSON over HTTP POST at `/v3/...` on the client port.
//!
//! As in etcd, where the gateway is a gRPC client of its own server, each request is decoded
//! from JSON, sent through the very gRPC services the port serves (in process, through their
//! router: same validation, same limits, same errors) and the answer encoded back to JSON. A
//! server stream (`/v3/watch`, `/v3/lease/keepalive`) answers newline-delimited
//! `{"result":…}` objects; an error answers `{"error":msg,"code":grpc code,"message":msg}`
//! with grpc-gateway's HTTP status for the code.

mod json;

use crate::pb::etcdserverpb::*;
use axum::body::{Body, Bytes, HttpBody};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{post, MethodRouter};
use axum::Router;
use futures::StreamExt;
use json::{FromJson, ToJson};
use serde_json::{json, Value};
use std::pin::Pin;
use tonic::{Code, Status};
use tower::ServiceExt;

/// The largest JSON body accepted. The gRPC services still apply `--max-request-bytes` to
/// the decoded request (etcd's error for it included); this only bounds what is buffered.
/// It is sized for base64 (4/3) of a request at etcd's largest recommended limit (10 MiB).
const JSON_BODY_BYTES_MAX: usize = 16 * 1024 * 1024;

/// The largest gRPC response message accepted from the services, as etcd's gateway sets its
/// client's receive limit (`math.MaxInt32`).
const GRPC_MESSAGE_BYTES_MAX: usize = i32::MAX as usize;

/// The gateway's routes; `grpc` is the router of the gRPC services on the same port.
pub(crate) fn routes(grpc: Router) -> Router {
    Router::new()
        .route("/v3/kv/range", unary::<RangeRequest, RangeResponse>(&grpc, "/etcdserverpb.KV/Range"))
        .route("/v3/kv/put", unary::<PutRequest, PutResponse>(&grpc, "/etcdserverpb.KV/Put"))
        .route(
            "/v3/kv/deleterange",
            unary::<DeleteRangeRequest, DeleteRangeResponse>(&grpc, "/etcdserverpb.KV/DeleteRange"),
        )
        .route("/v3/kv/txn", unary::<TxnRequest, TxnResponse>(&grpc, "/etcdserverpb.KV/Txn"))
        .route(
            "/v3/kv/compaction",
            unary::<CompactionRequest, CompactionResponse>(&grpc, "/etcdserverpb.KV/Compact"),
        )
        .route("/v3/watch", stream::<WatchRequest, WatchResponse>(&grpc, "/etcdserverpb.Watch/Watch"))
        .route(
            "/v3/lease/grant",
            unary::<LeaseGrantRequest, LeaseGrantResponse>(&grpc, "/etcdserverpb.Lease/LeaseGrant"),
        )
        .route(
            "/v3/lease/keepalive",
            stream::<LeaseKeepAliveRequest, LeaseKeepAliveResponse>(
                &grpc,
                "/etcdserverpb.Lease/LeaseKeepAlive",
            ),
        )
        .route(
            "/v3/cluster/member/list",
            unary::<MemberListRequest, MemberListResponse>(&grpc, "/etcdserverpb.Cluster/MemberList"),
        )
        .route(
            "/v3/maintenance/alarm",
            unary::<AlarmRequest, AlarmResponse>(&grpc, "/etcdserverpb.Maintenance/Alarm"),
        )
        .route(
            "/v3/maintenance/status",
            unary::<StatusRequest, StatusResponse>(&grpc, "/etcdserverpb.Maintenance/Status"),
        )
        // etcd serves these three also under `/v3/kv/lease/...` (its older paths).
        .merge(lease_routes(&grpc, "/v3/lease"))
        .merge(lease_routes(&grpc, "/v3/kv/lease"))
}

fn lease_routes(grpc: &Router, prefix: &str) -> Router {
    Router::new()
        .route(
            &format!("{prefix}/revoke"),
            unary::<LeaseRevokeRequest, LeaseRevokeResponse>(grpc, "/etcdserverpb.Lease/LeaseRevoke"),
        )
        .route(
            &format!("{prefix}/timetolive"),
            unary::<LeaseTimeToLiveRequest, LeaseTimeToLiveResponse>(
                grpc,
                "/etcdserverpb.Lease/LeaseTimeToLive",
            ),
        )
        .route(
            &format!("{prefix}/leases"),
            unary::<LeaseLeasesRequest, LeaseLeasesResponse>(grpc, "/etcdserverpb.Lease/LeaseLeases"),
        )
}

/// A unary method: one JSON object in, one out. An empty body is an empty request.
fn unary<Req, Resp>(grpc: &Router, method: &'static str) -> MethodRouter
where
    Req: FromJson + prost::Message + 'static,
    Resp: ToJson + prost::Message + Default + 'static,
{
    let grpc = grpc.clone();
    post(move |body: Body| {
        let grpc = grpc.clone();
        async move {
            let result = async {
                let body = read_body(body).await?;
                let req = match requests::<Req>(&body).next() {
                    None => Req::from_value(&Value::Null),
                    Some(r) => r,
                }
                .map_err(Status::invalid_argument)?;
                let mut answer = call(grpc, method, frame(&req)).await?;
                answer.next::<Resp>().await.unwrap_or_else(|| Err(Status::internal("no response")))
            }
            .await;
            match result {
                Ok(resp) => json_response(StatusCode::OK, Body::from(resp.to_json().to_string())),
                Err(status) => error_response(&status),
            }
        }
    })
}

/// A server stream: each JSON object of the body is a request, each response a line
/// `{"result":…}`, until the service ends the stream or the client goes away.
fn stream<Req, Resp>(grpc: &Router, method: &'static str) -> MethodRouter
where
    Req: FromJson + prost::Message + 'static,
    Resp: ToJson + prost::Message + Default + Send + 'static,
{
    let grpc = grpc.clone();
    post(move |body: Body| {
        let grpc = grpc.clone();
        async move {
            let frames = async {
                let body = read_body(body).await?;
                let mut frames = Vec::new();
                for req in requests::<Req>(&body) {
                    // grpc-gateway reports a bad streamed request as an unknown error.
                    frames.extend_from_slice(&frame(&req.map_err(Status::unknown)?));
                }
                Ok::<_, Status>(frames)
            };
            let mut answer = match frames.await {
                Ok(frames) => match call(grpc, method, frames).await {
                    Ok(answer) => answer,
                    Err(status) => return error_response(&status),
                },
                Err(status) => return error_response(&status),
            };
            // As grpc-gateway, the HTTP status waits for the first response: an error before any
            // gets its own status.
            let first = match answer.next::<Resp>().await {
                None => return json_response(StatusCode::OK, Body::empty()),
                Some(Err(status)) => {
                    return json_response(http_status(status.code()), Body::from(stream_error(&status)))
                }
                Some(Ok(first)) => first,
            };
            let rest = futures::stream::unfold(Some(answer), |answer| async move {
                let mut answer = answer?;
                match answer.next::<Resp>().await? {
                    Ok(resp) => Some((result_line(&resp), Some(answer))),
                    Err(status) => Some((stream_error(&status), None)),
                }
            });
            let lines = futures::stream::iter([result_line(&first)]).chain(rest);
            json_response(StatusCode::OK, Body::from_stream(lines.map(Ok::<_, std::convert::Infallible>)))
        }
    })
}

async fn read_body(body: Body) -> Result<Bytes, Status> {
    axum::body::to_bytes(body, JSON_BODY_BYTES_MAX).await.map_err(|_| {
        Status::resource_exhausted(format!(
            "keel: gateway request body larger than max ({JSON_BODY_BYTES_MAX} bytes)"
        ))
    })
}

/// The JSON values of a body, one after another, as Go's JSON decoder reads a stream.
fn requests<Req: FromJson>(body: &[u8]) -> impl Iterator<Item = Result<Req, String>> + '_ {
    let mut values = serde_json::Deserializer::from_slice(body).into_iter::<Value>();
    let mut failed = false;
    std::iter::from_fn(move || {
        if failed {
            return None;
        }
        let item = match values.next()? {
            Ok(v) => Req::from_value(&v),
            // Go's decoder says this of a truncated value; serde's other messages stand.
            Err(e) if e.is_eof() => Err("unexpected EOF".to_string()),
            Err(e) => Err(e.to_string()),
        };
        failed = item.is_err();
        Some(item)
    })
}

/// A gRPC message frame: uncompressed flag, big-endian length, the message.
fn frame(m: &impl prost::Message) -> Vec<u8> {
    let len = m.encoded_len();
    let mut out = Vec::with_capacity(5 + len);
    out.push(0);
    out.extend_from_slice(&u32::try_from(len).expect("request within the body limit").to_be_bytes());
    m.encode(&mut out).expect("a Vec grows as needed");
    out
}

/// Calls a gRPC method of the services in process with the given request frames.
async fn call(grpc: Router, method: &str, frames: Vec<u8>) -> Result<Answer, Status> {
    let request = axum::http::Request::post(method)
        .header(header::CONTENT_TYPE, "application/grpc")
        .header("te", "trailers")
        .body(Body::from(frames))
        .map_err(|e| Status::internal(e.to_string()))?;
    let response = grpc.oneshot(request).await.unwrap_or_else(|never| match never {});
    // A failure before any message comes back in the headers alone.
    match Status::from_header_map(response.headers()) {
        Some(status) if status.code() != Code::Ok => Err(status),
        _ => Ok(Answer { body: response.into_body(), buf: Vec::new(), ended: false }),
    }
}

/// The response messages of a gRPC call, read frame by frame.
struct Answer {
    body: Body,
    /// Invariant: holds less than one whole frame between calls to `next`.
    buf: Vec<u8>,
    ended: bool,
}

impl Answer {
    async fn next<M: prost::Message + Default>(&mut self) -> Option<Result<M, Status>> {
        loop {
            if self.buf.len() >= 5 {
                if self.buf[0] != 0 {
                    return Some(Err(Status::internal("compressed gRPC frame")));
                }
                let len = u32::from_be_bytes(self.buf[1..5].try_into().expect("4 bytes")) as usize;
                if len > GRPC_MESSAGE_BYTES_MAX {
                    return Some(Err(Status::resource_exhausted("response larger than max")));
                }
                if self.buf.len() >= 5 + len {
                    let message =
                        M::decode(&self.buf[5..5 + len]).map_err(|e| Status::internal(e.to_string()));
                    self.buf.drain(..5 + len);
                    return Some(message);
                }
            }
            if self.ended {
                return None;
            }
            let frame = std::future::poll_fn(|cx| Pin::new(&mut self.body).poll_frame(cx)).await;
            match frame {
                None => self.ended = true,
                Some(Err(e)) => {
                    self.ended = true;
                    return Some(Err(Status::unavailable(e.to_string())));
                }
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => self.buf.extend_from_slice(&data),
                    Err(frame) => {
                        self.ended = true;
                        let trailers = frame.into_trailers().unwrap_or_default();
                        if let Some(status) = trailer_status(&trailers) {
                            return Some(Err(status));
                        }
                    }
                },
            }
        }
    }
}

fn trailer_status(trailers: &HeaderMap) -> Option<Status> {
    Status::from_header_map(trailers).filter(|s| s.code() != Code::Ok)
}

fn result_line(resp: &impl ToJson) -> Bytes {
    let mut line = json!({ "result": resp.to_json() }).to_string();
    line.push('\n');
    Bytes::from(line)
}

/// grpc-gateway's error object within a stream.
fn stream_error(status: &Status) -> Bytes {
    let http = http_status(status.code());
    let mut line = json!({ "error": {
        "grpc_code": status.code() as i32,
        "http_code": http.as_u16(),
        "message": status.message(),
        "http_status": http.canonical_reason().unwrap_or(""),
    }})
    .to_string();
    line.push('\n');
    Bytes::from(line)
}

fn error_response(status: &Status) -> Response {
    let body =
        json!({ "error": status.message(), "code": status.code() as i32, "message": status.message() });
    json_response(http_status(status.code()), Body::from(body.to_string()))
}

fn json_response(code: StatusCode, body: Body) -> Response {
    let mut response = (code, body).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    // etcd's gateway allows any origin.
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

/// grpc-gateway's `HTTPStatusFromCode`.
fn http_status(code: Code) -> StatusCode {
    match code {
        Code::Ok => StatusCode::OK,
        Code::Cancelled => StatusCode::REQUEST_TIMEOUT,
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => StatusCode::BAD_REQUEST,
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::Unknown | Code::Internal | Code::DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
    }
}
