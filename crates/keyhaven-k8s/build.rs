//! Generates the gRPC code of the KMS v2 and CSI provider APIs from our own `.proto`
//! copies, with a pure-Rust parser (no `protoc`).

/// Messages whose `Debug` is written by hand, redacting their secret fields.
const SECRET_MESSAGES: [&str; 5] = [
    ".v2.EncryptRequest",
    ".v2.DecryptResponse",
    ".v1alpha1.MountRequest",
    ".v1alpha1.MountResponse",
    ".v1alpha1.File",
];

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
        // Messages that carry seeds, ServiceAccount tokens or secret file contents get a
        // hand-written `Debug` that shows none of it (src/proto.rs).
        .skip_debug(SECRET_MESSAGES)
        .compile_fds(fds)?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
