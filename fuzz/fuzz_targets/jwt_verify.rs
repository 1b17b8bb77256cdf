//! Arbitrary bytes as a login JWT, a JWKS document or PEM key text: the auth validator must
//! never panic, and nothing that was not signed by the configured keys may verify.
#![no_main]

use std::sync::OnceLock;

use keyhaven_engine::auth::validator::{
    Expectations, KeySet, SigAlg, audiences, check_claims, claim, glob_match, peek_header,
    pem_blocks,
};
use libfuzzer_sys::fuzz_target;

/// Public keys whose private halves were discarded when they were made: no input can
/// carry a valid signature under them.
const JWKS: &str = r#"{"keys": [
  {"kty": "RSA", "alg": "RS256", "use": "sig", "kid": "fuzz-rsa", "e": "AQAB",
   "n": "lNr7wOfuMkvLOv9VGPEKYFxDyIR6FUUhW9UtqiDrQ4fCUUSj1kRp-ZvCv5tag4QKxwH-mRvSlqYbkWDOi6vmhbW1CgIzJBr7t-iMCJHalbol9P9YyLj3F0Y8YQ4YZrLxUJfrMMq5Gzf4ZF3xrHw5yQCf-UO1TlahL2t6oqblJORtSfwSKF5UAnm8c_92TN7LzxFJa_mkDWjnZoSVbeExusA6tE4dbKTDavO67Tdz6UZtZvCvKonJQ0XWcfQiVgtT-3wlchzR-x4ljq48PItgB_LR95S0WtF1B8DtqysSpkuUTvNVvcLC_mcPwdFSHYmIABpSqn2jbVORapGxUv-aWQ"},
  {"kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "kid": "fuzz-ec",
   "x": "yAScyBoO6-HRNFVUfe5zhd7fNCdFeUAn5gHmod9jLRw", "y": "MZjrdGPZELweAv0ugsMAZz25CnV6N-c23B_cTYGlO5g"}
]}"#;

fn keys() -> &'static KeySet {
    static KEYS: OnceLock<KeySet> = OnceLock::new();
    KEYS.get_or_init(|| {
        let doc: serde_json::Value = serde_json::from_str(JWKS).unwrap();
        let set = KeySet::from_jwks(&doc).unwrap();
        assert_eq!(set.len(), 2);
        set
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let text = String::from_utf8_lossy(rest);
    match mode % 4 {
        // A JWKS document from an issuer.
        0 => {
            if let Ok(doc) = serde_json::from_slice::<serde_json::Value>(rest) {
                let _ = KeySet::from_jwks(&doc);
            }
        }
        // PEM text as `pem_keys` sends it.
        1 => {
            let _ = pem_blocks(&text);
            let _ = KeySet::from_pem_keys("pem_keys", &[text.into_owned()]);
        }
        // Bound-claim globs.
        2 => {
            let (pattern, value) = text.split_once('\n').unwrap_or((&text, ""));
            let _ = glob_match(pattern, value);
        }
        // A login token.
        _ => {
            let _ = peek_header(&text);
            let verified = keys().verify(&text, &SigAlg::ALL);
            assert!(verified.is_err(), "a token verified under keys nobody can sign with");
            // The claim checks run on any JSON object, as after a successful verify.
            if let Some(payload) = text.split('.').nth(1)
                && let Ok(serde_json::Value::Object(claims)) = serde_json::from_str(payload)
            {
                let aud = vec!["keyhaven".to_owned()];
                let _ = check_claims(
                    &claims,
                    &Expectations {
                        now: 1_800_000_000,
                        leeway: 60,
                        issuer: Some("https://issuer"),
                        audiences: Some(&aud),
                    },
                );
                let _ = audiences(&claims);
                let _ = claim(&claims, "/kubernetes.io/namespace");
            }
        }
    }
});
