//! etcd's client-facing errors: the gRPC code and exact message clients match on.

use keel_core::lease::LeaseError;
use keel_core::membership::MemberError;
use keel_core::mvcc::MvccError;
use keel_core::state_machine::ApplyError;
use runtime::node::RequestError;
use tonic::{Code, Status};

pub const KEY_NOT_PROVIDED: &str = "etcdserver: key is not provided";
pub const VALUE_PROVIDED: &str = "etcdserver: value is provided";
pub const LEASE_PROVIDED: &str = "etcdserver: lease is provided";
pub const REQUEST_TOO_LARGE: &str = "etcdserver: request is too large";
pub const TOO_MANY_OPS: &str = "etcdserver: too many operations in txn request";
pub const DUPLICATE_KEY: &str = "etcdserver: duplicate key given in txn request";
/// etcd's answer to a txn op with no request set (`ErrGRPCKeyNotFound`, from the default case
/// of its `checkRequestOp`).
pub const OP_NOT_SET: &str = "etcdserver: key not found";
pub const MEMBER_BAD_URLS: &str = "etcdserver: given member URLs are invalid";

pub fn invalid(msg: &str) -> Status {
    Status::new(Code::InvalidArgument, msg)
}

pub fn mvcc_status(e: &MvccError) -> Status {
    let code = match e {
        MvccError::Compacted | MvccError::FutureRev => Code::OutOfRange,
        MvccError::KeyNotFound => Code::InvalidArgument,
        MvccError::LeaseNotFound => Code::NotFound,
    };
    Status::new(code, e.to_string())
}

pub fn lease_status(e: &LeaseError) -> Status {
    let code = match e {
        LeaseError::NotFound => Code::NotFound,
        LeaseError::LeaseExists => Code::FailedPrecondition,
        LeaseError::TooLargeTtl => Code::OutOfRange,
        LeaseError::NotLeader | LeaseError::Expired => Code::Unavailable,
    };
    Status::new(code, e.to_string())
}

pub fn request_status(e: RequestError) -> Status {
    match &e {
        RequestError::NoLeader
        | RequestError::LeaderChanged
        | RequestError::Stopped
        | RequestError::Timeout => Status::new(Code::Unavailable, e.to_string()),
        RequestError::TooManyRequests => Status::new(Code::ResourceExhausted, e.to_string()),
        RequestError::Mvcc(m) | RequestError::Apply(ApplyError::Mvcc(m)) => mvcc_status(m),
        RequestError::Apply(ApplyError::Unsupported(_)) => Status::new(Code::Unimplemented, e.to_string()),
        RequestError::Apply(ApplyError::Lease(l)) => lease_status(l),
        RequestError::Apply(ApplyError::NoSpace) => Status::new(Code::ResourceExhausted, e.to_string()),
        RequestError::Member(m) => member_status(m),
        RequestError::NotLeader => Status::new(Code::FailedPrecondition, e.to_string()),
    }
}

/// etcd's `togRPCError` for membership errors.
pub fn member_status(e: &MemberError) -> Status {
    let code = match e {
        MemberError::Removed | MemberError::NotFound => Code::NotFound,
        MemberError::BadUrls | MemberError::UnknownChange(_) | MemberError::NoMemberRecord => {
            Code::InvalidArgument
        }
        MemberError::LastVoter
        | MemberError::Exists
        | MemberError::PeerUrlExists
        | MemberError::NotLearner
        | MemberError::TooManyLearners
        | MemberError::NotEnoughStarted
        | MemberError::LearnerNotReady => Code::FailedPrecondition,
    };
    Status::new(code, e.to_string())
}
