//! `etcdserverpb.RequestOp`, written by hand so that nested transactions decode as deep as
//! etcd takes them.
//!
//! prost stops any decode at 100 nested messages, and every level of a nested txn is two
//! messages (`RequestOp` and `TxnRequest`), so a generated `RequestOp` refuses a txn nested
//! about 50 deep — and more to the point, the same txn wrapped in Keel's log record
//! (`keelpb.Request`, one level more) decoded on the client port but not at apply. etcd 3.5
//! takes nesting bounded only by `--max-txn-ops` (at most 128 levels by default: each level
//! spends at least one op of the budget).
//!
//! Here the nested `TxnRequest` of a `RequestOp` (field 4) is decoded as a message of its own,
//! with a fresh prost budget, while a per-thread count bounds the txn nesting at
//! [`TXN_NESTING_MAX`]. The bound is the same wherever a txn is decoded — the gRPC request,
//! the log entry at apply, the WAL on restart — because it counts txn levels, not the messages
//! around them; and it keeps decoding (which recurses) well inside a thread's stack. The wire
//! format is the generated one's, byte for byte.

use super::etcdserverpb::{DeleteRangeRequest, PutRequest, RangeRequest, TxnRequest};
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

#[derive(Clone, PartialEq, Default)]
pub struct RequestOp {
    pub request: Option<request_op::Request>,
}

pub mod request_op {
    use super::*;

    #[derive(Clone, PartialEq)]
    pub enum Request {
        RequestRange(RangeRequest),
        RequestPut(PutRequest),
        RequestDeleteRange(DeleteRangeRequest),
        RequestTxn(TxnRequest),
    }

    impl std::fmt::Debug for Request {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            match self {
                Request::RequestRange(r) => f.debug_tuple("RequestRange").field(r).finish(),
                Request::RequestPut(r) => f.debug_tuple("RequestPut").field(r).finish(),
                Request::RequestDeleteRange(r) => f.debug_tuple("RequestDeleteRange").field(r).finish(),
                Request::RequestTxn(r) => f.debug_tuple("RequestTxn").field(r).finish(),
            }
        }
    }
}

impl std::fmt::Debug for RequestOp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestOp").field("request", &self.request).finish()
    }
}

/// Merges a length-delimited message field into `value`, taking the variant's place in the
/// oneof (a repeated field of the same variant merges, as protobuf's oneof rule says).
fn merge_variant<M: prost::Message + Default>(
    slot: &mut Option<request_op::Request>,
    wire_type: WireType,
    buf: &mut impl Buf,
    ctx: DecodeContext,
    get: fn(&mut request_op::Request) -> Option<&mut M>,
    make: fn(M) -> request_op::Request,
) -> Result<(), DecodeError> {
    if let Some(existing) = slot.as_mut().and_then(get) {
        return encoding::message::merge(wire_type, existing, buf, ctx);
    }
    let mut owned = M::default();
    encoding::message::merge(wire_type, &mut owned, buf, ctx)?;
    *slot = Some(make(owned));
    Ok(())
}

impl prost::Message for RequestOp {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        use request_op::Request::*;
        match &self.request {
            Some(RequestRange(m)) => encoding::message::encode(1, m, buf),
            Some(RequestPut(m)) => encoding::message::encode(2, m, buf),
            Some(RequestDeleteRange(m)) => encoding::message::encode(3, m, buf),
            Some(RequestTxn(m)) => encoding::message::encode(4, m, buf),
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
        use request_op::Request;
        let result = match tag {
            1 => merge_variant(
                &mut self.request,
                wire_type,
                buf,
                ctx,
                |r| match r {
                    Request::RequestRange(m) => Some(m),
                    _ => None,
                },
                Request::RequestRange,
            ),
            2 => merge_variant(
                &mut self.request,
                wire_type,
                buf,
                ctx,
                |r| match r {
                    Request::RequestPut(m) => Some(m),
                    _ => None,
                },
                Request::RequestPut,
            ),
            3 => merge_variant(
                &mut self.request,
                wire_type,
                buf,
                ctx,
                |r| match r {
                    Request::RequestDeleteRange(m) => Some(m),
                    _ => None,
                },
                Request::RequestDeleteRange,
            ),
            4 => {
                encoding::check_wire_type(WireType::LengthDelimited, wire_type)?;
                let len = encoding::decode_varint(buf)?;
                if len > buf.remaining() as u64 {
                    return Err(decode_error("buffer underflow".into()));
                }
                let _depth = DepthGuard::enter()?;
                // A fresh prost budget for the nested txn: its depth is counted by the guard. As
                // `Bytes` (a slice, not a copy, when the input is `Bytes`), so every level decodes
                // through the same code rather than a new type per level.
                let nested = buf.copy_to_bytes(len as usize);
                match &mut self.request {
                    Some(Request::RequestTxn(existing)) => existing.merge(nested),
                    slot => {
                        let mut owned = TxnRequest::default();
                        owned.merge(nested)?;
                        *slot = Some(Request::RequestTxn(owned));
                        Ok(())
                    }
                }
            }
            _ => return encoding::skip_field(wire_type, tag, buf, ctx),
        };
        result.map_err(|mut e| {
            e.push("RequestOp", "request");
            e
        })
    }

    fn encoded_len(&self) -> usize {
        use request_op::Request::*;
        match &self.request {
            Some(RequestRange(m)) => encoding::message::encoded_len(1, m),
            Some(RequestPut(m)) => encoding::message::encoded_len(2, m),
            Some(RequestDeleteRange(m)) => encoding::message::encoded_len(3, m),
            Some(RequestTxn(m)) => encoding::message::encoded_len(4, m),
            None => 0,
        }
    }

    fn clear(&mut self) {
        self.request = None;
    }
}

#[cfg(test)]
mod tests {
    use super::super::etcdserverpb::Compare;
    use super::*;
    use prost::Message as _;

    /// A txn nested `depth` levels (the outermost counted), a Range innermost.
    fn nested(depth: u32) -> TxnRequest {
        let mut t = TxnRequest {
            success: vec![RequestOp {
                request: Some(request_op::Request::RequestRange(RangeRequest {
                    key: "k".into(),
                    ..Default::default()
                })),
            }],
            ..Default::default()
        };
        for _ in 1..depth {
            t = TxnRequest {
                compare: vec![Compare { key: "c".into(), ..Default::default() }],
                success: vec![RequestOp { request: Some(request_op::Request::RequestTxn(t)) }],
                ..Default::default()
            };
        }
        t
    }

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
            request_op::Request::RequestTxn(nested(3)),
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
