//! Generates the kubelet pod-resources gRPC client (used by the agent) and server (used by the
//! integration test's fake kubelet) from `proto/podresources.proto`; needs `protoc` on PATH or in
//! `PROTOC`.

fn main() -> std::io::Result<()> {
    const PROTO: &str = "proto/podresources.proto";
    println!("cargo:rerun-if-changed={PROTO}");
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_protos(&[PROTO], &["proto"])
}
