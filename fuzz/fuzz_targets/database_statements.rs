//! Operator-written statements and username templates of the `database/` engine:
//! arbitrary text through `statements::queries` (base64, JSON arrays, `;` splitting with
//! quotes and dollar quotes, `END` blocks) and `substitute`; or (first byte odd) through
//! `username::Template::parse` and `generate`.
//!
//! Must hold: nothing panics; every query is non-empty and trimmed; substituting values
//! without braces leaves no `{{name}}` behind; a generated username has 1 to 63 bytes.
#![no_main]

use keyhaven_engine::database::{statements, username};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    if first % 2 == 0 {
        let entries: Vec<String> = text.split('\u{0}').map(str::to_owned).collect();
        for query in statements::queries(&entries) {
            assert!(!query.is_empty());
            assert_eq!(query.trim(), query);
            let done = statements::substitute(
                &query,
                &[("name", "u"), ("username", "u"), ("password", "p"), ("expiration", "e")],
            );
            assert!(!done.contains("{{name}}"));
        }
        let _ = statements::is_multiline(text);
        let _ = statements::split(text);
    } else if let Ok(template) = username::Template::parse(text) {
        let inputs = username::Inputs {
            display_name: "token",
            role_name: "role",
            unix_millis: 1_700_000_000_000,
        };
        if let Ok(name) = username::generate(Some(&template), &inputs) {
            assert!(!name.is_empty() && name.len() <= username::MAX_USERNAME);
        }
    }
});
