//! Types generated from Keel's `.proto` files: etcd's wire API and Keel's internal records.
//! Two types are written by hand: `etcdserverpb.RequestOp` and `ResponseOp` ([`nested_txn`], so
//! that nested transactions decode as deep as etcd takes them); the generated code refers to them.
#![allow(clippy::all, missing_docs, non_snake_case, non_camel_case_types)]

pub mod nested_txn;

pub mod mvccpb {
    include!(concat!(env!("OUT_DIR"), "/mvccpb.rs"));
}
pub mod authpb {
    include!(concat!(env!("OUT_DIR"), "/authpb.rs"));
}
pub mod etcdserverpb {
    include!(concat!(env!("OUT_DIR"), "/etcdserverpb.rs"));
    pub use super::nested_txn::{request_op, response_op, RequestOp, ResponseOp};
}
pub mod v3lockpb {
    include!(concat!(env!("OUT_DIR"), "/v3lockpb.rs"));
}
pub mod v3electionpb {
    include!(concat!(env!("OUT_DIR"), "/v3electionpb.rs"));
}
pub mod keelpb {
    include!(concat!(env!("OUT_DIR"), "/keelpb.rs"));
}
