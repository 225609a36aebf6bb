//! Generates the message types of etcd's API and Keel's internal records with prost.
//! protoc comes from `protoc-bin-vendored`, so no system install is needed.

fn main() {
    let protoc = protoc_bin_vendored::protoc_bin_path().expect("vendored protoc for this platform");
    let mut config = prost_build::Config::new();
    config.protoc_executable(protoc);
    config.bytes(["."]);
    // Written by hand (src/pb/nested_txn.rs): nested txns decode as deep as etcd takes them.
    config.extern_path(".etcdserverpb.RequestOp", "crate::pb::nested_txn::RequestOp");
    config.extern_path(".etcdserverpb.ResponseOp", "crate::pb::nested_txn::ResponseOp");
    let protos = [
        "proto/mvccpb/kv.proto",
        "proto/authpb/auth.proto",
        "proto/etcdserverpb/rpc.proto",
        "proto/v3lockpb/v3lock.proto",
        "proto/v3electionpb/v3election.proto",
        "proto/keelpb/keel.proto",
    ];
    config.compile_protos(&protos, &["proto"]).expect("compile protos");
    println!("cargo:rerun-if-changed=proto");
}
