//! The admission webhook's decoder and judge: arbitrary bytes as an AdmissionReview body
//! and as a `keyhaven admission review` file (JSON or YAML manifest). Decoding either
//! refuses with an error or yields a decision whose response echoes the uid and, on deny,
//! carries a 403 with a message; warnings stay under 120 characters.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = keyhaven_k8s::admission::fuzz_review(data);
});
