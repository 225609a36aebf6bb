//! Protobuf ↔ JSON as etcd 3.5's grpc-gateway maps them (`jsonpb` with `OrigName: true`,
//! `EmitDefaults: false`): fields under their `.proto` names and in `.proto` order, zero values
//! left out, bytes as standard base64, 64-bit integers as strings, enums by name. Requests
//! accept a field under its `.proto` name or its lowerCamelCase JSON name, integers as numbers
//! or strings, enums by name or number, and ignore unknown fields, as jsonpb does.

use crate::pb::authpb::{permission, Permission, UserAddOptions};
use crate::pb::etcdserverpb::*;
use crate::pb::mvccpb::{event::EventType, Event, KeyValue};
use crate::pb::v3electionpb::*;
use crate::pb::v3lockpb::*;
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use bytes::Bytes;
use serde_json::{Map, Value};

/// A request message read from a JSON object.
pub(crate) trait FromJson: Sized {
    fn from_json(o: &Obj<'_>) -> Result<Self, String>;

    /// Go's jsonpb decodes into `map[string]json.RawMessage` first; `null` is an empty message.
    fn from_value(v: &Value) -> Result<Self, String> {
        match v {
            Value::Object(map) => Self::from_json(&Obj(Some(map))),
            Value::Null => Self::from_json(&Obj(None)),
            other => Err(format!(
                "json: cannot unmarshal {} into Go value of type map[string]json.RawMessage",
                go_kind(other)
            )),
        }
    }
}

/// A response message written as a JSON object.
pub(crate) trait ToJson {
    fn to_json(&self) -> Value;
}

fn go_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// protoc's JSON name for a field: the `.proto` name in lowerCamelCase (`prev_kv` → `prevKv`).
fn json_name(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut upper = false;
    for c in name.chars() {
        if c == '_' {
            upper = true;
        } else if upper {
            out.push(c.to_ascii_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
}

/// A JSON object being read as a message (`None`: an empty message).
pub(crate) struct Obj<'a>(Option<&'a Map<String, Value>>);

impl Obj<'_> {
    /// The field under its `.proto` name or its JSON name; `null` counts as absent.
    fn get(&self, name: &str) -> Option<&Value> {
        let map = self.0?;
        map.get(name).or_else(|| map.get(&json_name(name))).filter(|v| !v.is_null())
    }

    fn bytes(&self, name: &str) -> Result<Bytes, String> {
        self.get(name).map_or(Ok(Bytes::new()), decode_bytes)
    }

    fn i64(&self, name: &str) -> Result<i64, String> {
        self.get(name).map_or(Ok(0), |v| int(v, "int64"))
    }

    fn u64(&self, name: &str) -> Result<u64, String> {
        self.get(name).map_or(Ok(0), |v| int(v, "uint64"))
    }

    fn string(&self, name: &str) -> Result<String, String> {
        self.get(name).map_or(Ok(String::new()), string)
    }

    fn bool(&self, name: &str) -> Result<bool, String> {
        match self.get(name) {
            None => Ok(false),
            Some(Value::Bool(b)) => Ok(*b),
            Some(v) => Err(format!("json: cannot unmarshal {} into Go value of type bool", go_kind(v))),
        }
    }

    /// An enum field, by name or number; `enum_name` is its full protobuf name.
    fn enumeration(
        &self,
        name: &str,
        enum_name: &str,
        by_name: fn(&str) -> Option<i32>,
    ) -> Result<i32, String> {
        self.get(name).map_or(Ok(0), |v| enum_value(v, enum_name, by_name))
    }

    fn message<T: FromJson>(&self, name: &str) -> Result<Option<T>, String> {
        self.get(name).map(T::from_value).transpose()
    }

    fn list<T>(&self, name: &str, item: impl Fn(&Value) -> Result<T, String>) -> Result<Vec<T>, String> {
        match self.get(name) {
            None => Ok(Vec::new()),
            Some(Value::Array(items)) => items.iter().map(item).collect(),
            Some(v) => {
                Err(format!("json: cannot unmarshal {} into Go value of type []json.RawMessage", go_kind(v)))
            }
        }
    }
}

/// Standard base64 with padding, as Go's `encoding/json` reads `[]byte`.
fn decode_bytes(v: &Value) -> Result<Bytes, String> {
    let Value::String(s) = v else {
        return Err(format!("json: cannot unmarshal {} into Go value of type []uint8", go_kind(v)));
    };
    BASE64.decode(s).map(Bytes::from).map_err(|e| match e {
        base64::DecodeError::InvalidByte(at, _) | base64::DecodeError::InvalidLastSymbol(at, _) => {
            format!("illegal base64 data at input byte {at}")
        }
        // Go reports an incomplete last quantum at its start.
        _ => format!("illegal base64 data at input byte {}", s.len() / 4 * 4),
    })
}

fn string(v: &Value) -> Result<String, String> {
    match v {
        Value::String(s) => Ok(s.clone()),
        v => Err(format!("json: cannot unmarshal {} into Go value of type string", go_kind(v))),
    }
}

/// An integer field as golang/protobuf's jsonpb reads it: a quoted value has its quotes
/// dropped and the rest is read by Go's `json.Unmarshal`, like an unquoted one: a number that is
/// no integer of the type, and any other kind of value, fails with Go's message; `null` is 0.
fn int<T: TryFrom<i128> + std::str::FromStr>(v: &Value, go_type: &str) -> Result<T, String> {
    let wrong = |kind: &str| format!("json: cannot unmarshal {kind} into Go value of type {go_type}");
    let number = |literal: &str, n: Option<&serde_json::Number>| {
        n.and_then(|n| n.as_i64().map(i128::from).or_else(|| n.as_u64().map(i128::from)))
            .and_then(|i| T::try_from(i).ok())
            .ok_or_else(|| wrong(&format!("number {literal}")))
    };
    match v {
        Value::Number(n) => number(&n.to_string(), Some(n)),
        Value::String(s) => {
            let end = match super::syntax::go_scan(s.as_bytes()) {
                Ok(0) => return Err("unexpected end of JSON input".to_string()),
                Ok(end) => end,
                Err(e) if e == "unexpected EOF" => return Err("unexpected end of JSON input".to_string()),
                Err(e) => return Err(e),
            };
            if let Some(c) = s.as_bytes()[end..].iter().find(|c| !matches!(c, b' ' | b'\t' | b'\n' | b'\r')) {
                return Err(format!(
                    "invalid character {} after top-level value",
                    super::syntax::quote_char(*c)
                ));
            }
            let text = s[..end].trim_start_matches([' ', '\t', '\n', '\r']);
            match serde_json::from_str::<Value>(text) {
                Ok(Value::Number(n)) => number(text, Some(&n)),
                Ok(Value::Null) => T::try_from(0).map_err(|_| wrong("null")),
                Ok(other) => Err(wrong(go_kind(&other))),
                // What Go reads but serde does not: a number beyond f64.
                Err(_) => number(text, None),
            }
        }
        other => Err(wrong(go_kind(other))),
    }
}

fn enum_value(v: &Value, enum_name: &str, by_name: fn(&str) -> Option<i32>) -> Result<i32, String> {
    let found = match v {
        Value::String(s) => by_name(s),
        Value::Number(n) => n.as_i64().and_then(|i| i32::try_from(i).ok()),
        _ => None,
    };
    found.ok_or_else(|| format!("unknown value \"{}\" for enum {enum_name}", v.to_string().escape_default()))
}

/// A JSON object being written from a message, leaving out zero values.
struct Out(Map<String, Value>);

impl Out {
    fn new() -> Self {
        Out(Map::new())
    }

    fn put(mut self, name: &str, keep: bool, v: impl FnOnce() -> Value) -> Self {
        if keep {
            self.0.insert(name.to_string(), v());
        }
        self
    }

    /// A present submessage is written even when empty (`"header":{}`), as jsonpb does.
    fn message<T: ToJson>(self, name: &str, m: Option<&T>) -> Self {
        self.put(name, m.is_some(), || m.map_or(Value::Null, T::to_json))
    }

    fn i64(self, name: &str, v: i64) -> Self {
        self.put(name, v != 0, || Value::String(v.to_string()))
    }

    fn u64(self, name: &str, v: u64) -> Self {
        self.put(name, v != 0, || Value::String(v.to_string()))
    }

    /// 32-bit integers are JSON numbers.
    fn u32(self, name: &str, v: u32) -> Self {
        self.put(name, v != 0, || Value::from(v))
    }

    fn bool(self, name: &str, v: bool) -> Self {
        self.put(name, v, || Value::Bool(true))
    }

    fn str(self, name: &str, v: &str) -> Self {
        self.put(name, !v.is_empty(), || Value::String(v.to_string()))
    }

    fn bytes(self, name: &str, v: &[u8]) -> Self {
        self.put(name, !v.is_empty(), || Value::String(BASE64.encode(v)))
    }

    /// An enum by name; a number jsonpb has no name for is written as the number.
    fn enumeration(self, name: &str, v: i32, to_name: fn(i32) -> Option<&'static str>) -> Self {
        self.put(name, v != 0, || to_name(v).map_or_else(|| Value::from(v), |n| Value::String(n.to_string())))
    }

    fn list<T>(self, name: &str, items: &[T], item: impl Fn(&T) -> Value) -> Self {
        self.put(name, !items.is_empty(), || Value::Array(items.iter().map(item).collect()))
    }

    fn done(self) -> Value {
        Value::Object(self.0)
    }
}

// ---- Requests ----

impl FromJson for RangeRequest {
    fn from_json(o: &Obj<'_>) -> Result<Self, String> {
        use range_request::{SortOrder, SortTarget};
        Ok(RangeRequest {
            key: o.bytes("key")?,
            range_end: o.bytes("range_end")?,
            limit: o.i64("limit")?,
            revision: o.i64("revision")?,
            sort_order: o.enumeration("sort_order", "etcdserverpb.RangeRequest.SortOrder", |s| {
                SortOrder::from_str_name(s).map(|e| e as i32)
            })?,
            sort_target: o.enumeration("sort_target", "etcdserverpb.RangeRequest.SortTarget", |s| {
                SortTarget::from_str_name(s).map(|e| e as i32)
            })?,
            serializable: o.bool("serializable")?,
            keys_only: o.bool("keys_only")?,
            count_only: o.bool("count_only")?,
            min_mod_revision: o.i64("min_mod_revision")?,
            max_mod_revision: o.i64("max_mod_revision")?,
            min_create_revision: o.i64("min_create_revision")?,
            max_create_revision: o.i64("max_create_revision")?,
        })
    }
}

impl FromJson for PutRequest {
    fn from_json(o: &Obj<'_>) -> Result<Self, String> {
        Ok(PutRequest {
            key: o.bytes("key")?,
            value: o.bytes("value")?,
            lease: o.i64("lease")?,
            prev_kv: o.bool("prev_kv")?,
            ignore_value: o.bool("ignore_value")?,
            ignore_lease: o.bool("ignore_lease")?,
        })
    }
}

impl FromJson for DeleteRangeRequest {
    fn from_json(o: &Obj<'_>) -> Result<Self, String> {
        Ok(DeleteRangeRequest {
            key: o.bytes("key")?,
            range_end: o.bytes("range_end")?,
            prev_kv: o.bool("prev_kv")?,
        })
    }
}

impl FromJson for Compare {
    fn from_json(o: &Obj<'_>) -> Result<Self, String> {
        use compare::{CompareResult, CompareTarget, TargetUnion};
        // The oneof member that is present is set, even to its zero value.
        let target_union = if o.get("version").is_some() {
            Some(TargetUnion::Version(o.i64("version")?))
        } else if o.get("create_revision").is_some() {
            Some(TargetUnion::CreateRevision(o.i64("create_revision")?))
        } else if o.get("mod_revision").is_some() {
            Some(TargetUnion::ModRevision(o.i64("mod_revision")?))
        } else if o.get("value").is_some() {
            Some(TargetUnion::Value(o.bytes("value")?))
        } else if o.get("lease").is_some() {
            Some(TargetUnion::Lease(o.i64("lease")?))
        } else {
            None
        };
        Ok(Compare {
            result: o.enumeration("result", "etcdserverpb.Compare.CompareResult", |s| {
                CompareResult::from_str_name(s).map(|e| e as i32)
            })?,
            target: o.enumeration("target", "etcdserverpb.Compare.CompareTarget", |s| {
                CompareTarget::from_str_name(s).map(|e| e as i32)
            })?,
            key: o.bytes("key")?,
            range_end: o.bytes("range_end")?,
            target_union,
        })
    }
}

impl FromJson for RequestOp {
    fn from_json(o: &Obj<'_>) -> Result<Self, String> {
        use request_op::Request;
        let request = if let Some(r) = o.message("request_range")? {
            Some(Request::RequestRange(r))
        } else if let Some(r) = o.message("request_put")? {
            Some(Request::RequestPut(r))
        } else if let Some(r) = o.message("request_delete_range")? {
            Some(Request::RequestDeleteRange(r))
        } else {
            o.message("request_txn")?.map(Request::RequestTxn)
        };
        Ok(RequestOp { request })
    }
}

impl FromJson for TxnRequest {
    fn from_json(o: &Obj<'_>) -> Result<Self, String> {
        Ok(TxnRequest {
            compare: o.list("compare", Compare::from_value)?,
            success: o.list("success", RequestOp::from_value)?,
            failure: o.list("failure", RequestOp::from_value)?,
        })
    }
}

impl FromJson for CompactionRequest {
    fn from_json(o: &Obj<'_>) -> Result<Self, String> {
        Ok(CompactionRequest { revision: o.i64("revision")?, physical: o.bool("physical")? })
    }
}

impl FromJson for LeaseGrantRequest {
    fn from_json(o: &Obj<'_>) -> Result<Self, String> {
        Ok(LeaseGrantRequest { ttl: o.i64("TTL")?, id: o.i64("ID")? })
    }
}

impl FromJson for LeaseRevokeRequest {
    fn from_json(o: &Obj<'_>) -> Result<Self, String> {
        Ok(LeaseRevokeRequest { id: o.i64("ID")? })
    }
}

impl FromJson for LeaseKeepAliveRequest {
    fn from_json(o: &Obj<'_>) -> Result<Self, String> {
        Ok(LeaseKeepAliveRequest { id: o.i64("ID")? })
    }
}

impl FromJson for LeaseTimeToLiveRequest {
    fn from_json(o: &Obj<'_>) -> Result<Self, String> {
        Ok(LeaseTimeToLiveRequest { id: o.i64("ID")?, keys: o.bool("keys")? })
    }
}

impl FromJson for WatchCreateRequest {
    fn from_json(o: &Obj<'_>) -> Result<Self, String> {
        use watch_create_request::FilterType;
        Ok(WatchCreateRequest {
            key: o.bytes("key")?,
            range_end: o.bytes("range_end")?,
            start_revision: o.i64("start_revision")?,
            progress_notify: o.bool("progress_notify")?,
            filters: o.list("filters", |v| {
                enum_value(v, "etcdserverpb.WatchCreateRequest.FilterType", |s| {
                    FilterType::from_str_name(s).map(|e| e as i32)
                })
            })?,
            prev_kv: o.bool("prev_kv")?,
            watch_id: o.i64("watch_id")?,
            fragment: o.bool("fragment")?,
        })
    }
}

impl FromJson for WatchCancelRequest {
    fn from_json(o: &Obj<'_>) -> Result<Self, String> {
        Ok(WatchCancelRequest { watch_id: o.i64("watch_id")? })
    }
}

impl FromJson for WatchRequest {
    fn from_json(o: &Obj<'_>) -> Result<Self, String> {
        use watch_request::RequestUnion;
        let request_union = if let Some(r) = o.message("create_request")? {
            Some(RequestUnion::CreateRequest(r))
        } else if let Some(r) = o.message("cancel_request")? {
            Some(RequestUnion::CancelRequest(r))
        } else {
            o.message("progress_request")?.map(RequestUnion::ProgressRequest)
        };
        Ok(WatchRequest { request_union })
    }
}

impl FromJson for AlarmRequest {
    fn from_json(o: &Obj<'_>) -> Result<Self, String> {
        Ok(AlarmRequest {
            action: o.enumeration("action", "etcdserverpb.AlarmRequest.AlarmAction", |s| {
                alarm_request::AlarmAction::from_str_name(s).map(|e| e as i32)
            })?,
            member_id: o.u64("memberID")?,
            alarm: o.enumeration("alarm", "etcdserverpb.AlarmType", |s| {
                AlarmType::from_str_name(s).map(|e| e as i32)
            })?,
        })
    }
}

impl FromJson for MemberListRequest {
    fn from_json(o: &Obj<'_>) -> Result<Self, String> {
        Ok(MemberListRequest { linearizable: o.bool("linearizable")? })
    }
}

impl FromJson for MemberAddRequest {
    fn from_json(o: &Obj<'_>) -> Result<Self, String> {
        Ok(MemberAddRequest { peer_ur_ls: o.list("peerURLs", string)?, is_learner: o.bool("isLearner")? })
    }
}

impl FromJson for MemberRemoveRequest {
    fn from_json(o: &Obj<'_>) -> Result<Self, String> {
        Ok(MemberRemoveRequest { id: o.u64("ID")? })
    }
}

impl FromJson for MemberUpdateRequest {
    fn from_json(o: &Obj<'_>) -> Result<Self, String> {
        Ok(MemberUpdateRequest { id: o.u64("ID")?, peer_ur_ls: o.list("peerURLs", string)? })
    }
}

impl FromJson for MemberPromoteRequest {
    fn from_json(o: &Obj<'_>) -> Result<Self, String> {
        Ok(MemberPromoteRequest { id: o.u64("ID")? })
    }
}

impl FromJson for MoveLeaderRequest {
    fn from_json(o: &Obj<'_>) -> Result<Self, String> {
        Ok(MoveLeaderRequest { target_id: o.u64("targetID")? })
    }
}

impl FromJson for DowngradeRequest {
    fn from_json(o: &Obj<'_>) -> Result<Self, String> {
        use downgrade_request::DowngradeAction;
        Ok(DowngradeRequest {
            action: o.enumeration("action", "etcdserverpb.DowngradeRequest.DowngradeAction", |s| {
                DowngradeAction::from_str_name(s).map(|e| e as i32)
            })?,
            version: o.string("version")?,
        })
    }
}

impl FromJson for AuthenticateRequest {
    fn from_json(o: &Obj<'_>) -> Result<Self, String> {
        Ok(AuthenticateRequest { name: o.string("name")?, password: o.string("password")? })
    }
}

impl FromJson for UserAddOptions {
    fn from_json(o: &Obj<'_>) -> Result<Self, String> {
        Ok(UserAddOptions { no_password: o.bool("no_password")? })
    }
}

impl FromJson for AuthUserAddRequest {
    fn from_json(o: &Obj<'_>) -> Result<Self, String> {
        Ok(AuthUserAddRequest {
            name: o.string("name")?,
            password: o.string("password")?,
            options: o.message("options")?,
            hashed_password: o.string("hashedPassword")?,
        })
    }
}

impl FromJson for AuthUserGetRequest {
    fn from_json(o: &Obj<'_>) -> Result<Self, String> {
        Ok(AuthUserGetRequest { name: o.string("name")? })
    }
}

impl FromJson for AuthUserDeleteRequest {
    fn from_json(o: &Obj<'_>) -> Result<Self, String> {
        Ok(AuthUserDeleteRequest { name: o.string("name")? })
    }
}

impl FromJson for AuthUserChangePasswordRequest {
    fn from_json(o: &Obj<'_>) -> Result<Self, String> {
        Ok(AuthUserChangePasswordRequest {
            name: o.string("name")?,
            password: o.string("password")?,
            hashed_password: o.string("hashedPassword")?,
        })
    }
}

impl FromJson for AuthUserGrantRoleRequest {
    fn from_json(o: &Obj<'_>) -> Result<Self, String> {
        Ok(AuthUserGrantRoleRequest { user: o.string("user")?, role: o.string("role")? })
    }
}

impl FromJson for AuthUserRevokeRoleRequest {
    fn from_json(o: &Obj<'_>) -> Result<Self, String> {
        Ok(AuthUserRevokeRoleRequest { name: o.string("name")?, role: o.string("role")? })
    }
}

impl FromJson for AuthRoleAddRequest {
    fn from_json(o: &Obj<'_>) -> Result<Self, String> {
        Ok(AuthRoleAddRequest { name: o.string("name")? })
    }
}

impl FromJson for AuthRoleGetRequest {
    fn from_json(o: &Obj<'_>) -> Result<Self, String> {
        Ok(AuthRoleGetRequest { role: o.string("role")? })
    }
}

impl FromJson for AuthRoleDeleteRequest {
    fn from_json(o: &Obj<'_>) -> Result<Self, String> {
        Ok(AuthRoleDeleteRequest { role: o.string("role")? })
    }
}

impl FromJson for Permission {
    fn from_json(o: &Obj<'_>) -> Result<Self, String> {
        Ok(Permission {
            perm_type: o.enumeration("permType", "authpb.Permission.Type", |s| {
                permission::Type::from_str_name(s).map(|e| e as i32)
            })?,
            key: o.bytes("key")?,
            range_end: o.bytes("range_end")?,
        })
    }
}

impl FromJson for AuthRoleGrantPermissionRequest {
    fn from_json(o: &Obj<'_>) -> Result<Self, String> {
        Ok(AuthRoleGrantPermissionRequest { name: o.string("name")?, perm: o.message("perm")? })
    }
}

impl FromJson for AuthRoleRevokePermissionRequest {
    fn from_json(o: &Obj<'_>) -> Result<Self, String> {
        Ok(AuthRoleRevokePermissionRequest {
            role: o.string("role")?,
            key: o.bytes("key")?,
            range_end: o.bytes("range_end")?,
        })
    }
}

impl FromJson for LockRequest {
    fn from_json(o: &Obj<'_>) -> Result<Self, String> {
        Ok(LockRequest { name: o.bytes("name")?, lease: o.i64("lease")? })
    }
}

impl FromJson for UnlockRequest {
    fn from_json(o: &Obj<'_>) -> Result<Self, String> {
        Ok(UnlockRequest { key: o.bytes("key")? })
    }
}

impl FromJson for CampaignRequest {
    fn from_json(o: &Obj<'_>) -> Result<Self, String> {
        Ok(CampaignRequest { name: o.bytes("name")?, lease: o.i64("lease")?, value: o.bytes("value")? })
    }
}

impl FromJson for LeaderKey {
    fn from_json(o: &Obj<'_>) -> Result<Self, String> {
        Ok(LeaderKey {
            name: o.bytes("name")?,
            key: o.bytes("key")?,
            rev: o.i64("rev")?,
            lease: o.i64("lease")?,
        })
    }
}

impl FromJson for LeaderRequest {
    fn from_json(o: &Obj<'_>) -> Result<Self, String> {
        Ok(LeaderRequest { name: o.bytes("name")? })
    }
}

impl FromJson for ResignRequest {
    fn from_json(o: &Obj<'_>) -> Result<Self, String> {
        Ok(ResignRequest { leader: o.message("leader")? })
    }
}

impl FromJson for ProclaimRequest {
    fn from_json(o: &Obj<'_>) -> Result<Self, String> {
        Ok(ProclaimRequest { leader: o.message("leader")?, value: o.bytes("value")? })
    }
}

/// Requests without fields: any object (its fields are ignored) or nothing.
macro_rules! empty_requests {
    ($($t:ident),* $(,)?) => {$(
        impl FromJson for $t {
            fn from_json(_: &Obj<'_>) -> Result<Self, String> {
                Ok($t {})
            }
        }
    )*};
}

empty_requests!(
    LeaseLeasesRequest,
    WatchProgressRequest,
    StatusRequest,
    DefragmentRequest,
    HashRequest,
    SnapshotRequest,
    AuthEnableRequest,
    AuthDisableRequest,
    AuthStatusRequest,
    AuthUserListRequest,
    AuthRoleListRequest,
);

// ---- Responses ----

impl ToJson for ResponseHeader {
    fn to_json(&self) -> Value {
        Out::new()
            .u64("cluster_id", self.cluster_id)
            .u64("member_id", self.member_id)
            .i64("revision", self.revision)
            .u64("raft_term", self.raft_term)
            .done()
    }
}

impl ToJson for KeyValue {
    fn to_json(&self) -> Value {
        Out::new()
            .bytes("key", &self.key)
            .i64("create_revision", self.create_revision)
            .i64("mod_revision", self.mod_revision)
            .i64("version", self.version)
            .bytes("value", &self.value)
            .i64("lease", self.lease)
            .done()
    }
}

impl ToJson for Event {
    fn to_json(&self) -> Value {
        Out::new()
            .enumeration("type", self.r#type, |v| EventType::try_from(v).ok().map(|e| e.as_str_name()))
            .message("kv", self.kv.as_ref())
            .message("prev_kv", self.prev_kv.as_ref())
            .done()
    }
}

impl ToJson for RangeResponse {
    fn to_json(&self) -> Value {
        Out::new()
            .message("header", self.header.as_ref())
            .list("kvs", &self.kvs, KeyValue::to_json)
            .bool("more", self.more)
            .i64("count", self.count)
            .done()
    }
}

impl ToJson for PutResponse {
    fn to_json(&self) -> Value {
        Out::new().message("header", self.header.as_ref()).message("prev_kv", self.prev_kv.as_ref()).done()
    }
}

impl ToJson for DeleteRangeResponse {
    fn to_json(&self) -> Value {
        Out::new()
            .message("header", self.header.as_ref())
            .i64("deleted", self.deleted)
            .list("prev_kvs", &self.prev_kvs, KeyValue::to_json)
            .done()
    }
}

impl ToJson for ResponseOp {
    fn to_json(&self) -> Value {
        use response_op::Response;
        let out = Out::new();
        match &self.response {
            Some(Response::ResponseRange(r)) => out.message("response_range", Some(r)),
            Some(Response::ResponsePut(r)) => out.message("response_put", Some(r)),
            Some(Response::ResponseDeleteRange(r)) => out.message("response_delete_range", Some(r)),
            Some(Response::ResponseTxn(r)) => out.message("response_txn", Some(r)),
            None => out,
        }
        .done()
    }
}

impl ToJson for TxnResponse {
    fn to_json(&self) -> Value {
        Out::new()
            .message("header", self.header.as_ref())
            .bool("succeeded", self.succeeded)
            .list("responses", &self.responses, ResponseOp::to_json)
            .done()
    }
}

impl ToJson for CompactionResponse {
    fn to_json(&self) -> Value {
        Out::new().message("header", self.header.as_ref()).done()
    }
}

impl ToJson for LeaseGrantResponse {
    fn to_json(&self) -> Value {
        Out::new()
            .message("header", self.header.as_ref())
            .i64("ID", self.id)
            .i64("TTL", self.ttl)
            .str("error", &self.error)
            .done()
    }
}

impl ToJson for LeaseRevokeResponse {
    fn to_json(&self) -> Value {
        Out::new().message("header", self.header.as_ref()).done()
    }
}

impl ToJson for LeaseKeepAliveResponse {
    fn to_json(&self) -> Value {
        Out::new().message("header", self.header.as_ref()).i64("ID", self.id).i64("TTL", self.ttl).done()
    }
}

impl ToJson for LeaseTimeToLiveResponse {
    fn to_json(&self) -> Value {
        Out::new()
            .message("header", self.header.as_ref())
            .i64("ID", self.id)
            .i64("TTL", self.ttl)
            .i64("grantedTTL", self.granted_ttl)
            .list("keys", &self.keys, |k| Value::String(BASE64.encode(k)))
            .done()
    }
}

impl ToJson for LeaseLeasesResponse {
    fn to_json(&self) -> Value {
        Out::new()
            .message("header", self.header.as_ref())
            .list("leases", &self.leases, |l| Out::new().i64("ID", l.id).done())
            .done()
    }
}

impl ToJson for WatchResponse {
    fn to_json(&self) -> Value {
        Out::new()
            .message("header", self.header.as_ref())
            .i64("watch_id", self.watch_id)
            .bool("created", self.created)
            .bool("canceled", self.canceled)
            .i64("compact_revision", self.compact_revision)
            .str("cancel_reason", &self.cancel_reason)
            .bool("fragment", self.fragment)
            .list("events", &self.events, Event::to_json)
            .done()
    }
}

impl ToJson for StatusResponse {
    fn to_json(&self) -> Value {
        Out::new()
            .message("header", self.header.as_ref())
            .str("version", &self.version)
            .i64("dbSize", self.db_size)
            .u64("leader", self.leader)
            .u64("raftIndex", self.raft_index)
            .u64("raftTerm", self.raft_term)
            .u64("raftAppliedIndex", self.raft_applied_index)
            .list("errors", &self.errors, |e| Value::String(e.clone()))
            .i64("dbSizeInUse", self.db_size_in_use)
            .bool("isLearner", self.is_learner)
            .done()
    }
}

impl ToJson for AlarmResponse {
    fn to_json(&self) -> Value {
        let alarm = |a: &AlarmMember| {
            Out::new()
                .u64("memberID", a.member_id)
                .enumeration("alarm", a.alarm, |v| AlarmType::try_from(v).ok().map(|e| e.as_str_name()))
                .done()
        };
        Out::new().message("header", self.header.as_ref()).list("alarms", &self.alarms, alarm).done()
    }
}

impl ToJson for Member {
    fn to_json(&self) -> Value {
        Out::new()
            .u64("ID", self.id)
            .str("name", &self.name)
            .list("peerURLs", &self.peer_ur_ls, json_string)
            .list("clientURLs", &self.client_ur_ls, json_string)
            .bool("isLearner", self.is_learner)
            .done()
    }
}

impl ToJson for MemberListResponse {
    fn to_json(&self) -> Value {
        Out::new()
            .message("header", self.header.as_ref())
            .list("members", &self.members, Member::to_json)
            .done()
    }
}

impl ToJson for MemberAddResponse {
    fn to_json(&self) -> Value {
        Out::new()
            .message("header", self.header.as_ref())
            .message("member", self.member.as_ref())
            .list("members", &self.members, Member::to_json)
            .done()
    }
}

/// Responses of a header and the members.
macro_rules! members_responses {
    ($($t:ident),* $(,)?) => {$(
        impl ToJson for $t {
            fn to_json(&self) -> Value {
                Out::new()
                    .message("header", self.header.as_ref())
                    .list("members", &self.members, Member::to_json)
                    .done()
            }
        }
    )*};
}

members_responses!(MemberRemoveResponse, MemberUpdateResponse, MemberPromoteResponse);

/// Responses of a header alone.
macro_rules! header_responses {
    ($($t:ident),* $(,)?) => {$(
        impl ToJson for $t {
            fn to_json(&self) -> Value {
                Out::new().message("header", self.header.as_ref()).done()
            }
        }
    )*};
}

header_responses!(
    DefragmentResponse,
    MoveLeaderResponse,
    AuthEnableResponse,
    AuthDisableResponse,
    AuthUserAddResponse,
    AuthUserDeleteResponse,
    AuthUserChangePasswordResponse,
    AuthUserGrantRoleResponse,
    AuthUserRevokeRoleResponse,
    AuthRoleAddResponse,
    AuthRoleDeleteResponse,
    AuthRoleGrantPermissionResponse,
    AuthRoleRevokePermissionResponse,
    UnlockResponse,
    ResignResponse,
    ProclaimResponse,
);

impl ToJson for HashResponse {
    fn to_json(&self) -> Value {
        Out::new().message("header", self.header.as_ref()).u32("hash", self.hash).done()
    }
}

impl ToJson for SnapshotResponse {
    fn to_json(&self) -> Value {
        Out::new()
            .message("header", self.header.as_ref())
            .u64("remaining_bytes", self.remaining_bytes)
            .bytes("blob", &self.blob)
            .str("version", &self.version)
            .done()
    }
}

impl ToJson for DowngradeResponse {
    fn to_json(&self) -> Value {
        Out::new().message("header", self.header.as_ref()).str("version", &self.version).done()
    }
}

impl ToJson for AuthStatusResponse {
    fn to_json(&self) -> Value {
        Out::new()
            .message("header", self.header.as_ref())
            .bool("enabled", self.enabled)
            .u64("authRevision", self.auth_revision)
            .done()
    }
}

impl ToJson for AuthenticateResponse {
    fn to_json(&self) -> Value {
        Out::new().message("header", self.header.as_ref()).str("token", &self.token).done()
    }
}

/// A string as a JSON string.
fn json_string<S: AsRef<str>>(s: &S) -> Value {
    Value::String(s.as_ref().to_string())
}

impl ToJson for AuthUserGetResponse {
    fn to_json(&self) -> Value {
        Out::new().message("header", self.header.as_ref()).list("roles", &self.roles, json_string).done()
    }
}

impl ToJson for AuthUserListResponse {
    fn to_json(&self) -> Value {
        Out::new().message("header", self.header.as_ref()).list("users", &self.users, json_string).done()
    }
}

impl ToJson for AuthRoleListResponse {
    fn to_json(&self) -> Value {
        Out::new().message("header", self.header.as_ref()).list("roles", &self.roles, json_string).done()
    }
}

impl ToJson for Permission {
    fn to_json(&self) -> Value {
        Out::new()
            .enumeration("permType", self.perm_type, |v| {
                permission::Type::try_from(v).ok().map(|e| e.as_str_name())
            })
            .bytes("key", &self.key)
            .bytes("range_end", &self.range_end)
            .done()
    }
}

impl ToJson for AuthRoleGetResponse {
    fn to_json(&self) -> Value {
        Out::new()
            .message("header", self.header.as_ref())
            .list("perm", &self.perm, Permission::to_json)
            .done()
    }
}

impl ToJson for LockResponse {
    fn to_json(&self) -> Value {
        Out::new().message("header", self.header.as_ref()).bytes("key", &self.key).done()
    }
}

impl ToJson for LeaderKey {
    fn to_json(&self) -> Value {
        Out::new()
            .bytes("name", &self.name)
            .bytes("key", &self.key)
            .i64("rev", self.rev)
            .i64("lease", self.lease)
            .done()
    }
}

impl ToJson for CampaignResponse {
    fn to_json(&self) -> Value {
        Out::new().message("header", self.header.as_ref()).message("leader", self.leader.as_ref()).done()
    }
}

impl ToJson for LeaderResponse {
    fn to_json(&self) -> Value {
        Out::new().message("header", self.header.as_ref()).message("kv", self.kv.as_ref()).done()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_accept_proto_and_json_names_numbers_and_strings() {
        let v: Value =
            serde_json::from_str(r#"{"key":"Zm9v","rangeEnd":"Zm9w","limit":"2","revision":3,"sort_order":"DESCEND","sortTarget":4,"bogus":1}"#)
                .unwrap();
        let r = RangeRequest::from_value(&v).unwrap();
        assert_eq!((&r.key[..], &r.range_end[..], r.limit, r.revision), (&b"foo"[..], &b"fop"[..], 2, 3));
        assert_eq!((r.sort_order, r.sort_target), (2, 4));
        let bad: Value = serde_json::from_str(r#"{"key":"Zm9v","limit":1.5}"#).unwrap();
        assert!(RangeRequest::from_value(&bad).is_err());
        let bad: Value = serde_json::from_str(r#"{"key":"!!"}"#).unwrap();
        assert_eq!(RangeRequest::from_value(&bad).unwrap_err(), "illegal base64 data at input byte 0");
        assert!(RangeRequest::from_value(&Value::Array(vec![])).is_err());
    }

    #[test]
    fn responses_omit_zero_values_and_keep_proto_order() {
        let resp = PutResponse {
            header: Some(ResponseHeader { cluster_id: 1, member_id: 0, revision: 5, raft_term: 2 }),
            prev_kv: Some(KeyValue { key: Bytes::from_static(b"a"), version: 1, ..Default::default() }),
        };
        assert_eq!(
            resp.to_json().to_string(),
            r#"{"header":{"cluster_id":"1","revision":"5","raft_term":"2"},"prev_kv":{"key":"YQ==","version":"1"}}"#
        );
        let op = ResponseOp {
            response: Some(response_op::Response::ResponseTxn(TxnResponse {
                header: Some(ResponseHeader::default()),
                succeeded: true,
                responses: vec![],
            })),
        };
        assert_eq!(op.to_json().to_string(), r#"{"response_txn":{"header":{},"succeeded":true}}"#);
    }
}
