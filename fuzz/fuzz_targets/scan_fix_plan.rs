//! `keyhaven scan --fix` planning of arbitrary bytes as `.env`, properties, INI and YAML
//! config and as Kubernetes manifests, and the diff of each rewrite.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = keyhaven_scan::internal::fix_plan_bytes(data);
});
