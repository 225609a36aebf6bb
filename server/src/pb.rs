//! etcd's gRPC services, generated for tonic over keel-core's message types.
#![allow(clippy::all, missing_docs)]

pub mod etcdserverpb {
    pub use keel_core::pb::etcdserverpb::*;
    tonic::include_proto!("etcdserverpb");
}
pub mod v3lockpb {
    pub use keel_core::pb::v3lockpb::*;
    tonic::include_proto!("v3lockpb");
}
pub mod v3electionpb {
    pub use keel_core::pb::v3electionpb::*;
    tonic::include_proto!("v3electionpb");
}
pub use keel_core::pb::{authpb, mvccpb};
pub mod keelpb {
    pub use keel_core::pb::keelpb::*;
    tonic::include_proto!("keelpb");
}
