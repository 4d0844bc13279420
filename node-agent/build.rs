//! Generates the kubelet's gRPC APIs the agent speaks, client and server each: pod-resources
//! (`proto/podresources.proto`; the agent is the client, the integration test's fake kubelet the
//! server) and the device plugin API (`proto/deviceplugin.proto`; the agent serves `DevicePlugin` and
//! calls `Registration`, the test plays the kubelet's side of both). Needs `protoc` on PATH or in
//! `PROTOC`.

fn main() -> std::io::Result<()> {
    const PROTOS: [&str; 2] = ["proto/podresources.proto", "proto/deviceplugin.proto"];
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={proto}");
    }
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_protos(&PROTOS, &["proto"])
}
