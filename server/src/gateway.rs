//! etcd's grpc-gateway: its gRPC API as JSON over HTTP POST at `/v3/...` (and, as etcd 3.5
//! still serves it, `/v3beta/...`) on the client port.
//!
//! As in etcd, where the gateway is a gRPC client of its own server, each request is decoded
//! from JSON, sent through the very gRPC services the port serves (in process, through their
//! router: same validation, same limits, same errors) and the answer encoded back to JSON. A
//! server stream (`/v3/watch`, `/v3/lease/keepalive`, `/v3/maintenance/snapshot`,
//! `/v3/election/observe`) answers newline-delimited `{"result":…}` objects; an error answers
//! `{"error":msg,"code":grpc code,"message":msg}` with grpc-gateway's HTTP status for the code.
//! An unknown path under a prefix answers grpc-gateway's `404 Not Found`, another method than
//! POST its `405 Method Not Allowed`, both as plain text.

mod json;
mod syntax;

use crate::pb::etcdserverpb::*;
use axum::body::{Body, Bytes, HttpBody};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::Router;
use futures::StreamExt;
use json::{FromJson, ToJson};
use serde_json::{json, Value};
use std::pin::Pin;
use tonic::{Code, Status};
use tower::ServiceExt;

/// The prefixes the gateway serves: etcd 3.5 still serves its API under `/v3beta` (but no
/// longer under `/v3alpha`).
pub(crate) const PREFIXES: [&str; 2] = ["/v3", "/v3beta"];

/// The largest gRPC response message accepted from the services, as etcd's gateway sets its
/// client's receive limit (`math.MaxInt32`).
const GRPC_MESSAGE_BYTES_MAX: usize = i32::MAX as usize;

/// What a JSON body may hold beyond twice the largest message: room for field names and JSON
/// syntax around a message that is mostly base64 (4/3 of the bytes).
const JSON_BODY_SLACK_BYTES: usize = 64 * 1024;

/// The gateway's routes; `grpc` is the router of the gRPC services on the same port, which
/// accept messages of up to `message_bytes_max` (etcd's `--max-request-bytes` plus its gRPC
/// overhead allowance).
pub(crate) fn routes(grpc: Router, message_bytes_max: usize) -> Router {
    let body_bytes_max = message_bytes_max.saturating_mul(2).saturating_add(JSON_BODY_SLACK_BYTES);
    assert!(body_bytes_max >= message_bytes_max);
    let gateway = Gateway { grpc, message_bytes_max, body_bytes_max };
    PREFIXES.iter().fold(Router::new(), |router, prefix| router.merge(gateway.api(prefix)))
}

/// Invariant: `body_bytes_max >= message_bytes_max`, so that any message the services accept
/// can be sent as JSON.
#[derive(Clone)]
struct Gateway {
    grpc: Router,
    /// The largest request message the services accept; a larger one is refused with the
    /// error etcd's gRPC server gives it.
    message_bytes_max: usize,
    /// The largest JSON body read.
    body_bytes_max: usize,
}

/// How a method's messages flow.
#[derive(Clone, Copy)]
enum Kind {
    /// One request, one response.
    Unary,
    /// One request, a stream of responses.
    ServerStream,
    /// A stream each way: every JSON value of the body is a request.
    BidiStream,
}

/// Adds routes to an [`Api`]: `kind path => gRPC method: request => response;`.
macro_rules! add_routes {
    ($api:ident; $($kind:ident $path:literal => $method:literal: $req:ty => $resp:ty;)*) => {
        $( $api.add::<$req, $resp>(Kind::$kind, $path, $method); )*
    };
}

impl Gateway {
    /// etcd 3.5's routes under one prefix.
    #[rustfmt::skip]
    fn api(&self, prefix: &str) -> Router {
        use crate::pb::v3electionpb::*;
        use crate::pb::v3lockpb::*;
        let mut api = Api { gateway: self, prefix, router: Router::new() };
        add_routes! { api;
            Unary "/kv/range" => "/etcdserverpb.KV/Range": RangeRequest => RangeResponse;
            Unary "/kv/put" => "/etcdserverpb.KV/Put": PutRequest => PutResponse;
            Unary "/kv/deleterange" => "/etcdserverpb.KV/DeleteRange": DeleteRangeRequest => DeleteRangeResponse;
            Unary "/kv/txn" => "/etcdserverpb.KV/Txn": TxnRequest => TxnResponse;
            Unary "/kv/compaction" => "/etcdserverpb.KV/Compact": CompactionRequest => CompactionResponse;

            BidiStream "/watch" => "/etcdserverpb.Watch/Watch": WatchRequest => WatchResponse;

            Unary "/lease/grant" => "/etcdserverpb.Lease/LeaseGrant": LeaseGrantRequest => LeaseGrantResponse;
            Unary "/lease/revoke" => "/etcdserverpb.Lease/LeaseRevoke": LeaseRevokeRequest => LeaseRevokeResponse;
            BidiStream "/lease/keepalive" => "/etcdserverpb.Lease/LeaseKeepAlive": LeaseKeepAliveRequest => LeaseKeepAliveResponse;
            Unary "/lease/timetolive" => "/etcdserverpb.Lease/LeaseTimeToLive": LeaseTimeToLiveRequest => LeaseTimeToLiveResponse;
            Unary "/lease/leases" => "/etcdserverpb.Lease/LeaseLeases": LeaseLeasesRequest => LeaseLeasesResponse;
            // etcd serves these three also at their older paths.
            Unary "/kv/lease/revoke" => "/etcdserverpb.Lease/LeaseRevoke": LeaseRevokeRequest => LeaseRevokeResponse;
            Unary "/kv/lease/timetolive" => "/etcdserverpb.Lease/LeaseTimeToLive": LeaseTimeToLiveRequest => LeaseTimeToLiveResponse;
            Unary "/kv/lease/leases" => "/etcdserverpb.Lease/LeaseLeases": LeaseLeasesRequest => LeaseLeasesResponse;

            Unary "/cluster/member/add" => "/etcdserverpb.Cluster/MemberAdd": MemberAddRequest => MemberAddResponse;
            Unary "/cluster/member/remove" => "/etcdserverpb.Cluster/MemberRemove": MemberRemoveRequest => MemberRemoveResponse;
            Unary "/cluster/member/update" => "/etcdserverpb.Cluster/MemberUpdate": MemberUpdateRequest => MemberUpdateResponse;
            Unary "/cluster/member/list" => "/etcdserverpb.Cluster/MemberList": MemberListRequest => MemberListResponse;
            Unary "/cluster/member/promote" => "/etcdserverpb.Cluster/MemberPromote": MemberPromoteRequest => MemberPromoteResponse;

            Unary "/maintenance/alarm" => "/etcdserverpb.Maintenance/Alarm": AlarmRequest => AlarmResponse;
            Unary "/maintenance/status" => "/etcdserverpb.Maintenance/Status": StatusRequest => StatusResponse;
            Unary "/maintenance/defragment" => "/etcdserverpb.Maintenance/Defragment": DefragmentRequest => DefragmentResponse;
            // etcd 3.5 declares HashKV at this path too, but Hash holds it: HashKV has no route.
            Unary "/maintenance/hash" => "/etcdserverpb.Maintenance/Hash": HashRequest => HashResponse;
            ServerStream "/maintenance/snapshot" => "/etcdserverpb.Maintenance/Snapshot": SnapshotRequest => SnapshotResponse;
            Unary "/maintenance/transfer-leadership" => "/etcdserverpb.Maintenance/MoveLeader": MoveLeaderRequest => MoveLeaderResponse;
            Unary "/maintenance/downgrade" => "/etcdserverpb.Maintenance/Downgrade": DowngradeRequest => DowngradeResponse;

            Unary "/auth/enable" => "/etcdserverpb.Auth/AuthEnable": AuthEnableRequest => AuthEnableResponse;
            Unary "/auth/disable" => "/etcdserverpb.Auth/AuthDisable": AuthDisableRequest => AuthDisableResponse;
            Unary "/auth/status" => "/etcdserverpb.Auth/AuthStatus": AuthStatusRequest => AuthStatusResponse;
            Unary "/auth/authenticate" => "/etcdserverpb.Auth/Authenticate": AuthenticateRequest => AuthenticateResponse;
            Unary "/auth/user/add" => "/etcdserverpb.Auth/UserAdd": AuthUserAddRequest => AuthUserAddResponse;
            Unary "/auth/user/get" => "/etcdserverpb.Auth/UserGet": AuthUserGetRequest => AuthUserGetResponse;
            Unary "/auth/user/list" => "/etcdserverpb.Auth/UserList": AuthUserListRequest => AuthUserListResponse;
            Unary "/auth/user/delete" => "/etcdserverpb.Auth/UserDelete": AuthUserDeleteRequest => AuthUserDeleteResponse;
            Unary "/auth/user/changepw" => "/etcdserverpb.Auth/UserChangePassword": AuthUserChangePasswordRequest => AuthUserChangePasswordResponse;
            Unary "/auth/user/grant" => "/etcdserverpb.Auth/UserGrantRole": AuthUserGrantRoleRequest => AuthUserGrantRoleResponse;
            Unary "/auth/user/revoke" => "/etcdserverpb.Auth/UserRevokeRole": AuthUserRevokeRoleRequest => AuthUserRevokeRoleResponse;
            Unary "/auth/role/add" => "/etcdserverpb.Auth/RoleAdd": AuthRoleAddRequest => AuthRoleAddResponse;
            Unary "/auth/role/get" => "/etcdserverpb.Auth/RoleGet": AuthRoleGetRequest => AuthRoleGetResponse;
            Unary "/auth/role/list" => "/etcdserverpb.Auth/RoleList": AuthRoleListRequest => AuthRoleListResponse;
            Unary "/auth/role/delete" => "/etcdserverpb.Auth/RoleDelete": AuthRoleDeleteRequest => AuthRoleDeleteResponse;
            Unary "/auth/role/grant" => "/etcdserverpb.Auth/RoleGrantPermission": AuthRoleGrantPermissionRequest => AuthRoleGrantPermissionResponse;
            Unary "/auth/role/revoke" => "/etcdserverpb.Auth/RoleRevokePermission": AuthRoleRevokePermissionRequest => AuthRoleRevokePermissionResponse;

            Unary "/lock/lock" => "/v3lockpb.Lock/Lock": LockRequest => LockResponse;
            Unary "/lock/unlock" => "/v3lockpb.Lock/Unlock": UnlockRequest => UnlockResponse;

            Unary "/election/campaign" => "/v3electionpb.Election/Campaign": CampaignRequest => CampaignResponse;
            Unary "/election/proclaim" => "/v3electionpb.Election/Proclaim": ProclaimRequest => ProclaimResponse;
            Unary "/election/leader" => "/v3electionpb.Election/Leader": LeaderRequest => LeaderResponse;
            ServerStream "/election/observe" => "/v3electionpb.Election/Observe": LeaderRequest => LeaderResponse;
            Unary "/election/resign" => "/v3electionpb.Election/Resign": ResignRequest => ResignResponse;
        }
        api.router
    }

    /// The request frames of a body: its first JSON value for a unary or server-stream method
    /// (none: an empty request), every value for a bidirectional stream.
    fn frames<Req: FromJson + prost::Message>(&self, kind: Kind, body: &[u8]) -> Result<Vec<u8>, Status> {
        // Go's decoder reads bytes that are not UTF-8 as U+FFFD.
        let body = String::from_utf8_lossy(body);
        let body = body.as_bytes();
        let mut frames = Vec::new();
        match kind {
            Kind::Unary | Kind::ServerStream => {
                let req = match requests::<Req>(body).next() {
                    None => Req::from_value(&Value::Null),
                    Some(r) => r,
                }
                .map_err(Status::invalid_argument)?;
                self.frame(&req, &mut frames)?;
            }
            Kind::BidiStream => {
                for (i, req) in requests::<Req>(body).enumerate() {
                    match req {
                        Ok(req) => self.frame(&req, &mut frames)?,
                        // grpc-gateway reports a bad first request as an unknown error; a later
                        // one ends the requests (the stream answers those before it).
                        Err(e) if i == 0 => return Err(Status::unknown(e)),
                        Err(_) => break,
                    }
                }
            }
        }
        Ok(frames)
    }

    /// Appends a gRPC message frame (uncompressed flag, big-endian length, the message), or
    /// refuses the message as etcd's gRPC server refuses one beyond its limit.
    fn frame(&self, m: &impl prost::Message, out: &mut Vec<u8>) -> Result<(), Status> {
        let len = m.encoded_len();
        if len > self.message_bytes_max {
            return Err(crate::limit::too_large(len, self.message_bytes_max));
        }
        out.reserve(5 + len);
        out.push(0);
        out.extend_from_slice(&u32::try_from(len).expect("within the message limit").to_be_bytes());
        m.encode(out).expect("a Vec grows as needed");
        Ok(())
    }

    async fn read_body(&self, body: Body) -> Result<Bytes, Status> {
        axum::body::to_bytes(body, self.body_bytes_max).await.map_err(|_| {
            Status::resource_exhausted(format!(
                "keel: gateway request body larger than max ({} bytes)",
                self.body_bytes_max
            ))
        })
    }
}

/// Routes under one prefix, being built.
struct Api<'a> {
    gateway: &'a Gateway,
    prefix: &'a str,
    router: Router,
}

impl Api<'_> {
    /// Routes POST `prefix + path` to the gRPC `method`; any other method (but OPTIONS, which
    /// the CORS layer answers) gets grpc-gateway's 405.
    fn add<Req, Resp>(&mut self, kind: Kind, path: &str, method: &'static str)
    where
        Req: FromJson + prost::Message + 'static,
        Resp: ToJson + prost::Message + Default + Send + 'static,
    {
        let gateway = self.gateway.clone();
        // Not `post(..)`: axum's answer to other methods would name the allowed ones.
        let handler = any(move |http_method: Method, body: Body| {
            let gateway = gateway.clone();
            async move {
                if http_method != Method::POST {
                    return text_response(StatusCode::METHOD_NOT_ALLOWED);
                }
                let called = async {
                    let body = gateway.read_body(body).await?;
                    let frames = gateway.frames::<Req>(kind, &body)?;
                    call(gateway.grpc.clone(), method, frames).await
                };
                match (kind, called.await) {
                    (_, Err(status)) => error_response(&status),
                    (Kind::Unary, Ok(mut answer)) => {
                        match answer
                            .next::<Resp>()
                            .await
                            .unwrap_or_else(|| Err(Status::internal("no response")))
                        {
                            Ok(resp) => answered(Body::from(resp.to_json().to_string())),
                            Err(status) => error_response(&status),
                        }
                    }
                    (Kind::ServerStream | Kind::BidiStream, Ok(answer)) => {
                        stream_response::<Resp>(answer).await
                    }
                }
            }
        });
        let router = std::mem::take(&mut self.router);
        self.router = router.route(&format!("{}{path}", self.prefix), handler);
    }
}

/// A stream's responses as lines `{"result":…}`, until the service ends the stream or the
/// client goes away. As grpc-gateway, the HTTP status waits for the first response: an error
/// before any gets its own status; a later one is a line of its own that ends the stream.
async fn stream_response<Resp>(mut answer: Answer) -> Response
where
    Resp: ToJson + prost::Message + Default + Send + 'static,
{
    let first = match answer.next::<Resp>().await {
        None => return answered(Body::empty()),
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
    answered(Body::from_stream(lines.map(Ok::<_, std::convert::Infallible>)))
}

/// Answers as Go's `http.Error` does: the status text and a newline, as plain text.
/// grpc-gateway answers its unknown paths (`Not Found`) and other methods than POST (`Method
/// Not Allowed`) so.
pub(crate) fn text_response(code: StatusCode) -> Response {
    plain_text(code, format!("{}\n", code.canonical_reason().unwrap_or("")))
}

/// A plain-text error answer as Go's `http.Error` writes it.
pub(crate) fn plain_text(code: StatusCode, text: String) -> Response {
    let mut response = (code, text).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    response
}

/// The JSON values of a body, one after another, as Go's JSON decoder reads a stream; the
/// first bad one ends them, with Go's message for it.
fn requests<Req: FromJson>(body: &[u8]) -> impl Iterator<Item = Result<Req, String>> + '_ {
    let mut values = serde_json::Deserializer::from_slice(body).into_iter::<Value>();
    let mut done = false;
    std::iter::from_fn(move || {
        if done {
            return None;
        }
        let start = values.byte_offset();
        let item = match values.next()? {
            Ok(v) => Req::from_value(&v),
            Err(e) if e.is_syntax() || e.is_eof() => {
                // serde also refuses what may follow a value (`truex`), which Go never reads;
                // then the value alone is the request, and the last one.
                done = true;
                let rest = &body[start..];
                syntax::go_scan(rest).and_then(|end| match serde_json::from_slice::<Value>(&rest[..end]) {
                    Ok(v) => Req::from_value(&v),
                    // What Go reads but serde does not (a lone surrogate) keeps serde's message.
                    Err(_) => Err(e.to_string()),
                })
            }
            Err(e) => Err(e.to_string()),
        };
        done |= item.is_err();
        Some(item)
    })
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

/// A successful answer: grpc-gateway passes the gRPC response's headers on as
/// `Grpc-Metadata-*`, and a gRPC response always has its content type.
fn answered(body: Body) -> Response {
    let mut response = json_response(StatusCode::OK, body);
    response.headers_mut().insert("grpc-metadata-content-type", HeaderValue::from_static("application/grpc"));
    response
}

fn json_response(code: StatusCode, body: Body) -> Response {
    let mut response = (code, body).into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
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
