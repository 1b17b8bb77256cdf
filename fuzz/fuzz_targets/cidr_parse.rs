//! CIDR blocks arrive from the network (`token_bound_cidrs`, `bound_cidrs`) and boolean
//! query parameters from URLs: parsing never panics; a parsed block prints as a block that
//! parses back to itself and contains its own network address; a boolean is one of the
//! twelve spellings Go accepts.
#![no_main]

use keyhaven_engine::cidr::Cidr;
use keyhaven_engine::params::parse_bool;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(c) = Cidr::parse(s) {
        let printed = c.to_string();
        let again = Cidr::parse(&printed).expect("a printed block parses");
        assert_eq!(again, c);
        let (addr, _) = printed.split_once('/').expect("printed with a prefix");
        assert!(c.contains(addr.parse().expect("an address")));
    }
    if let Some(b) = parse_bool(s) {
        assert!(matches!(
            (b, s),
            (true, "1" | "t" | "T" | "TRUE" | "true" | "True")
                | (false, "0" | "f" | "F" | "FALSE" | "false" | "False")
        ));
    }
});
