//! Generates the gRPC code of the KMS v2 and CSI provider APIs from our own `.proto`
//! copies, with a pure-Rust parser (no `protoc`).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "kms/v2/api.proto",
        "kms/v2/encrypted_object.proto",
        "csi/v1alpha1/service.proto",
    ];
    let fds = protox::compile(files, ["proto"])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(fds)?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
