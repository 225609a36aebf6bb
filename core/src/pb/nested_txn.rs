//! `etcdserverpb.RequestOp` and `ResponseOp`, written by hand so that nested transactions (and
//! their answers) decode as deep as etcd takes them.
//!
//! prost stops any decode at 100 nested messages, and every level of a nested txn is two
//! messages (`RequestOp` and `TxnRequest`), so a generated `RequestOp` refuses a txn nested
//! about 50 deep — and more to the point, the same txn wrapped in Keel's log record
//! (`keelpb.Request`, one level more) decoded on the client port but not at apply. etcd 3.5
//! takes nesting bounded only by `--max-txn-ops` (at most 128 levels by default: each level
//! spends at least one op of the budget).
//!
//! Here the nested `TxnRequest` of a `RequestOp` (field 4) — likewise the nested `TxnResponse`
//! of a `ResponseOp`, so that Keel's own clients read the answer — is decoded as a message of its own,
//! with a fresh prost budget, while a per-thread count bounds the txn nesting at
//! [`TXN_NESTING_MAX`]. The bound is the same wherever a txn is decoded — the gRPC request,
//! the log entry at apply, the WAL on restart — because it counts txn levels, not the messages
//! around them; and it keeps decoding (which recurses) well inside a thread's stack. The wire
//! format is the generated one's, byte for byte.

use super::etcdserverpb::{
    DeleteRangeRequest, DeleteRangeResponse, PutRequest, PutResponse, RangeRequest, RangeResponse,
    TxnRequest, TxnResponse,
};
use bytes::{Buf, BufMut};
use prost::encoding::{self, DecodeContext, WireType};
use prost::DecodeError;
use std::cell::Cell;

/// The deepest txn nesting Keel decodes: a `TxnRequest` with this many `TxnRequest`s inside
/// one another (the outermost counted). Above etcd's default reach (128, see the module doc);
/// deeper input fails to decode, the same way on every path.
pub const TXN_NESTING_MAX: u32 = 256;

thread_local! {
    /// Nested txns being decoded on this thread right now.
    static TXN_DEPTH: Cell<u32> = const { Cell::new(0) };
}

/// prost's own error type, so that tonic reports it as it reports every decode error. Its
/// constructor is marked for prost's internal use; it is the only way to make one.
#[allow(deprecated)]
fn decode_error(what: String) -> DecodeError {
    DecodeError::new(what)
}

/// One level of nesting held while a nested txn decodes; released on every way out.
struct DepthGuard;

impl DepthGuard {
    fn enter() -> Result<DepthGuard, DecodeError> {
        TXN_DEPTH.with(|d| {
            // The outermost txn is decoded by generated code, outside any guard.
            if d.get() + 1 >= TXN_NESTING_MAX {
                return Err(decode_error(format!("txn nested deeper than {TXN_NESTING_MAX} levels")));
            }
            d.set(d.get() + 1);
            Ok(DepthGuard)
        })
    }
}

impl Drop for DepthGuard {
    fn drop(&mut self) {
        TXN_DEPTH.with(|d| d.set(d.get() - 1));
    }
}

/// Merges a length-delimited message field into the oneof's variant (a repeated field of the
/// same variant merges, as protobuf's oneof rule says).
fn merge_variant<M: prost::Message + Default, V>(
    slot: &mut Option<V>,
    wire_type: WireType,
    buf: &mut impl Buf,
    ctx: DecodeContext,
    get: fn(&mut V) -> Option<&mut M>,
    make: fn(M) -> V,
) -> Result<(), DecodeError> {
    if let Some(existing) = slot.as_mut().and_then(get) {
        return encoding::message::merge(wire_type, existing, buf, ctx);
    }
    let mut owned = M::default();
    encoding::message::merge(wire_type, &mut owned, buf, ctx)?;
    *slot = Some(make(owned));
    Ok(())
}

/// Merges a nested txn (field 4) with a fresh prost budget: its depth is counted by the guard.
/// As `Bytes` (a slice, not a copy, when the input is `Bytes`), so every level decodes through
/// the same code rather than a new type per level.
fn merge_nested<M: prost::Message + Default, V>(
    slot: &mut Option<V>,
    wire_type: WireType,
    buf: &mut impl Buf,
    get: fn(&mut V) -> Option<&mut M>,
    make: fn(M) -> V,
) -> Result<(), DecodeError> {
    encoding::check_wire_type(WireType::LengthDelimited, wire_type)?;
    let len = encoding::decode_varint(buf)?;
    if len > buf.remaining() as u64 {
        return Err(decode_error("buffer underflow".into()));
    }
    let _depth = DepthGuard::enter()?;
    let nested = buf.copy_to_bytes(len as usize);
    if let Some(existing) = slot.as_mut().and_then(get) {
        return existing.merge(nested);
    }
    let mut owned = M::default();
    owned.merge(nested)?;
    *slot = Some(make(owned));
    Ok(())
}

/// One of the two op types: the struct with its oneof field, the oneof module and enum, and
/// their protobuf encoding (fields 1-3 as generated code does them, field 4 the nested txn).
macro_rules! op_type {
    ($ty:ident, $module:ident, $enum:ident, $field:ident, $name:literal,
     $v1:ident($t1:ty), $v2:ident($t2:ty), $v3:ident($t3:ty), $v4:ident($t4:ty)) => {
        #[derive(Clone, PartialEq, Default)]
        pub struct $ty {
            pub $field: Option<$module::$enum>,
        }

        pub mod $module {
            use super::*;

            #[derive(Clone, PartialEq)]
            pub enum $enum {
                $v1($t1),
                $v2($t2),
                $v3($t3),
                $v4($t4),
            }

            impl std::fmt::Debug for $enum {
                fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                    match self {
                        $enum::$v1(r) => f.debug_tuple(stringify!($v1)).field(r).finish(),
                        $enum::$v2(r) => f.debug_tuple(stringify!($v2)).field(r).finish(),
                        $enum::$v3(r) => f.debug_tuple(stringify!($v3)).field(r).finish(),
                        $enum::$v4(r) => f.debug_tuple(stringify!($v4)).field(r).finish(),
                    }
                }
            }
        }

        impl std::fmt::Debug for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.debug_struct($name).field(stringify!($field), &self.$field).finish()
            }
        }

        impl prost::Message for $ty {
            fn encode_raw(&self, buf: &mut impl BufMut) {
                use $module::$enum::*;
                match &self.$field {
                    Some($v1(m)) => encoding::message::encode(1, m, buf),
                    Some($v2(m)) => encoding::message::encode(2, m, buf),
                    Some($v3(m)) => encoding::message::encode(3, m, buf),
                    Some($v4(m)) => encoding::message::encode(4, m, buf),
                    None => {}
                }
            }

            fn merge_field(
                &mut self,
                tag: u32,
                wire_type: WireType,
                buf: &mut impl Buf,
                ctx: DecodeContext,
            ) -> Result<(), DecodeError> {
                use $module::$enum;
                let slot = &mut self.$field;
                let result = match tag {
                    1 => merge_variant(
                        slot,
                        wire_type,
                        buf,
                        ctx,
                        |v| match v {
                            $enum::$v1(m) => Some(m),
                            _ => None,
                        },
                        $enum::$v1,
                    ),
                    2 => merge_variant(
                        slot,
                        wire_type,
                        buf,
                        ctx,
                        |v| match v {
                            $enum::$v2(m) => Some(m),
                            _ => None,
                        },
                        $enum::$v2,
                    ),
                    3 => merge_variant(
                        slot,
                        wire_type,
                        buf,
                        ctx,
                        |v| match v {
                            $enum::$v3(m) => Some(m),
                            _ => None,
                        },
                        $enum::$v3,
                    ),
                    4 => merge_nested(
                        slot,
                        wire_type,
                        buf,
                        |v| match v {
                            $enum::$v4(m) => Some(m),
                            _ => None,
                        },
                        $enum::$v4,
                    ),
                    _ => return encoding::skip_field(wire_type, tag, buf, ctx),
                };
                result.map_err(|mut e| {
                    e.push($name, stringify!($field));
                    e
                })
            }

            fn encoded_len(&self) -> usize {
                use $module::$enum::*;
                match &self.$field {
                    Some($v1(m)) => encoding::message::encoded_len(1, m),
                    Some($v2(m)) => encoding::message::encoded_len(2, m),
                    Some($v3(m)) => encoding::message::encoded_len(3, m),
                    Some($v4(m)) => encoding::message::encoded_len(4, m),
                    None => 0,
                }
            }

            fn clear(&mut self) {
                self.$field = None;
            }
        }
    };
}

op_type!(
    RequestOp,
    request_op,
    Request,
    request,
    "RequestOp",
    RequestRange(RangeRequest),
    RequestPut(PutRequest),
    RequestDeleteRange(DeleteRangeRequest),
    RequestTxn(TxnRequest)
);
op_type!(
    ResponseOp,
    response_op,
    Response,
    response,
    "ResponseOp",
    ResponseRange(RangeResponse),
    ResponsePut(PutResponse),
    ResponseDeleteRange(DeleteRangeResponse),
    ResponseTxn(TxnResponse)
);

#[cfg(test)]
mod tests {
    use super::super::etcdserverpb::Compare;
    use super::*;
    use prost::Message as _;

    /// The hand-written type's bytes are protobuf's: every kind of op round-trips, field
    /// numbers are etcd's, unknown fields are skipped.
    #[test]
    fn wire_format_is_protobufs() {
        for op in [
            request_op::Request::RequestRange(RangeRequest {
                key: "a".into(),
                limit: 3,
                ..Default::default()
            }),
            request_op::Request::RequestPut(PutRequest {
                key: "a".into(),
                value: "v".into(),
                ..Default::default()
            }),
            request_op::Request::RequestDeleteRange(DeleteRangeRequest {
                key: "a".into(),
                ..Default::default()
            }),
            // One nested level (deep nesting is tested in core/tests/nested_txn.rs).
            request_op::Request::RequestTxn(TxnRequest {
                compare: vec![Compare { key: "c".into(), ..Default::default() }],
                success: vec![RequestOp {
                    request: Some(request_op::Request::RequestRange(RangeRequest {
                        key: "k".into(),
                        ..Default::default()
                    })),
                }],
                ..Default::default()
            }),
        ] {
            let op = RequestOp { request: Some(op) };
            let bytes = op.encode_to_vec();
            assert_eq!(bytes.len(), op.encoded_len());
            assert_eq!(RequestOp::decode(bytes.as_slice()).unwrap(), op);
        }
        // Field numbers as etcd's: a put is field 2, length-delimited.
        let put = RequestOp {
            request: Some(request_op::Request::RequestPut(PutRequest {
                key: "k".into(),
                ..Default::default()
            })),
        };
        assert_eq!(put.encode_to_vec(), vec![0x12, 3, 0x0a, 1, b'k']);
        // An unknown field is skipped; an empty op stays empty.
        assert_eq!(RequestOp::decode(&[0x28, 1][..]).unwrap(), RequestOp::default());
    }

    /// Bytes that claim more than they hold, or a txn field of the wrong wire type, fail to
    /// decode without reading past the buffer.
    #[test]
    fn malformed_nested_txns_are_errors() {
        assert!(RequestOp::decode(&[0x22, 10, 0x12][..]).is_err()); // length past the end
        assert!(RequestOp::decode(&[0x20, 1][..]).is_err()); // field 4 as a varint
        TXN_DEPTH.with(|d| assert_eq!(d.get(), 0));
    }
}
