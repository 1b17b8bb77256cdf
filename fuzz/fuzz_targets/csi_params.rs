//! The CSI provider's mount parameters: the driver's attributes JSON, the node-publish
//! secrets JSON and the permission, with the `objects` YAML inside. Parsing either succeeds
//! with valid file paths only, or fails with an error that never quotes the token.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    // As attributes, and as the objects YAML of otherwise valid attributes.
    let _ = keyhaven_k8s::csi::params::parse(text, "null", "420");
    let attributes = serde_json::json!({
        "roleName": "app",
        "objects": text,
        "csi.storage.k8s.io/serviceAccount.tokens": "{\"keyhaven\":{\"token\":\"fuzz-token-marker\"}}",
    })
    .to_string();
    match keyhaven_k8s::csi::params::parse(&attributes, text, "420") {
        Ok(spec) => {
            for o in &spec.objects {
                assert!(keyhaven_k8s::csi::params::check_file_path(&o.name).is_ok());
                assert!(o.mode <= 0o777);
            }
        }
        Err(e) => assert!(!e.to_string().contains("fuzz-token-marker")),
    }
});
