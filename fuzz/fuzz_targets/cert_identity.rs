//! Client certificates are untrusted bytes, and roles' subject globs are matched against
//! what they hold: parsing never panics, and matching follows Vault's glob.
#![no_main]

use keyhaven_engine::auth::cert::{ClientIdentity, Constraints, glob};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    if selector % 2 == 0 {
        // A certificate: whatever parses is matched against a few constraint sets.
        if let Ok(id) = ClientIdentity::parse(rest) {
            let all = vec!["*".to_owned()];
            let none: Vec<String> = Vec::new();
            let open = Constraints {
                names: &none,
                common_names: &none,
                dns_sans: &none,
                email_sans: &none,
                uri_sans: &none,
                organizational_units: &none,
            };
            assert!(open.matches(&id), "no constraint refuses nothing");
            let star = Constraints {
                names: &all,
                common_names: &all,
                ..open
            };
            assert!(star.matches(&id), "'*' matches any common name");
            let exact = vec![id.common_name.replace('*', "")];
            let pinned = Constraints {
                common_names: &exact,
                ..open
            };
            if !id.common_name.contains('*') {
                assert!(pinned.matches(&id));
            }
            let _ = Constraints {
                dns_sans: &all,
                ..open
            }
            .matches(&id);
        }
    } else if let Ok(text) = std::str::from_utf8(rest) {
        // A glob and a subject, split at the first NUL.
        let (pattern, subject) = text.split_once('\0').unwrap_or((text, ""));
        let matched = glob(pattern, subject);
        if !pattern.contains('*') {
            assert_eq!(matched, pattern == subject);
        }
        assert!(glob("*", subject));
        if !subject.contains('*') {
            assert!(glob(subject, subject));
        }
        // A `*` in place of any run of the subject still matches it.
        let n = subject.chars().count();
        if n >= 2 && !subject.contains('*') {
            let head: String = subject.chars().take(1).collect();
            let tail: String = subject.chars().skip(n - 1).collect();
            assert!(glob(&format!("{head}*{tail}"), subject));
        }
    }
});
