//! Generates etcd's gRPC services (server and client stubs) for tonic, through madsim's
//! builder so they also run under the simulator. The message types are keel-core's.

fn main() {
    let protoc = protoc_bin_vendored::protoc_bin_path().expect("vendored protoc for this platform");
    // SAFETY of the environment: build scripts are single-threaded here.
    unsafe { std::env::set_var("PROTOC", protoc) };
    let root = std::path::Path::new("../core/proto");
    let protos = [
        root.join("etcdserverpb/rpc.proto"),
        root.join("v3lockpb/v3lock.proto"),
        root.join("v3electionpb/v3election.proto"),
        root.join("keelpb/keel.proto"),
    ];
    tonic_build::configure()
        .extern_path(".mvccpb", "::keel_core::pb::mvccpb")
        .extern_path(".authpb", "::keel_core::pb::authpb")
        .extern_path(".etcdserverpb", "::keel_core::pb::etcdserverpb")
        .extern_path(".v3lockpb", "::keel_core::pb::v3lockpb")
        .extern_path(".v3electionpb", "::keel_core::pb::v3electionpb")
        .extern_path(".keelpb", "::keel_core::pb::keelpb")
        .compile_protos(&protos, &[root])
        .expect("compile etcd's services");
    println!("cargo:rerun-if-changed=../core/proto");
}
