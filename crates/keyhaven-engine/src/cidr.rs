//! CIDR blocks for `token_bound_cidrs`: a token bound to blocks works only for requests
//! from an address inside one of them.

use std::fmt;
use std::net::IpAddr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// One block: an address and a prefix length (`10.0.0.0/8`, `2001:db8::/32`); a bare
/// address is a block of one (`/32` or `/128`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

/// Why a CIDR block was refused. The input is not repeated (it is the caller's).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CidrError {
    /// The address part is not an IPv4 or IPv6 address.
    #[error("not an IP address or CIDR block")]
    Address,
    /// The prefix length is not a number within the address's width.
    #[error("the prefix length must be 0 to 32 (IPv4) or 0 to 128 (IPv6)")]
    Prefix,
}

impl Cidr {
    /// Parse `addr[/prefix]`. Host bits set below the prefix are allowed and ignored
    /// (`10.1.2.3/8` is `10.0.0.0/8`), as Go's `ParseCIDR` allows.
    ///
    /// # Errors
    ///
    /// [`CidrError`] for anything else, including surrounding space.
    pub fn parse(s: &str) -> Result<Cidr, CidrError> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| CidrError::Address)?;
        let width = match addr {
            IpAddr::V4(_) => 32,
            IpAddr::V6(_) => 128,
        };
        let prefix = match prefix {
            None => width,
            Some(p) if !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit()) => {
                p.parse::<u8>().map_err(|_| CidrError::Prefix)?
            }
            Some(_) => return Err(CidrError::Prefix),
        };
        if prefix > width {
            return Err(CidrError::Prefix);
        }
        Ok(Cidr {
            addr: mask(addr, prefix),
            prefix,
        })
    }

    /// The block's network address.
    pub fn network(&self) -> IpAddr {
        self.addr
    }

    /// The block's prefix length.
    pub fn prefix_len(&self) -> u8 {
        self.prefix
    }

    /// Whether `ip` is inside the block. An IPv4 address written as IPv6
    /// (`::ffff:10.0.0.1`, as dual-stack listeners report IPv4 peers) counts as IPv4.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(_), IpAddr::V4(_)) | (IpAddr::V6(_), IpAddr::V6(_)) => {
                mask(ip, self.prefix) == self.addr
            }
            _ => false,
        }
    }
}

fn mask(addr: IpAddr, prefix: u8) -> IpAddr {
    match addr {
        IpAddr::V4(a) => {
            let bits = u32::from(a);
            let m = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V4((bits & m).into())
        }
        IpAddr::V6(a) => {
            let bits = u128::from(a);
            let m = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V6((bits & m).into())
        }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl Serialize for Cidr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Cidr, D::Error> {
        let s = String::deserialize(d)?;
        Cidr::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// Parse a list of blocks, naming the parameter and the position of the first bad one.
///
/// # Errors
///
/// [`crate::EngineError::InvalidRequest`] naming `param`.
pub fn parse_list(param: &str, items: &[String]) -> Result<Vec<Cidr>, crate::EngineError> {
    items
        .iter()
        .map(|s| s.trim())
        .filter(|s| !s.is_empty())
        .enumerate()
        .map(|(i, s)| {
            Cidr::parse(s).map_err(|e| {
                crate::EngineError::invalid(format!(
                    "invalid value for parameter {param:?}: item {} is {e}",
                    i + 1
                ))
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn blocks_contain_what_their_prefix_covers() {
        let c = Cidr::parse("10.1.2.3/8").unwrap();
        assert_eq!(c.to_string(), "10.0.0.0/8");
        assert!(c.contains(ip("10.255.0.1")));
        assert!(!c.contains(ip("11.0.0.1")));
        assert!(
            c.contains(ip("::ffff:10.0.0.7")),
            "IPv4-mapped IPv6 is IPv4"
        );
        let one = Cidr::parse("127.0.0.1").unwrap();
        assert!(one.contains(ip("127.0.0.1")) && !one.contains(ip("127.0.0.2")));
        let all = Cidr::parse("0.0.0.0/0").unwrap();
        assert!(all.contains(ip("8.8.8.8")) && !all.contains(ip("::1")));
        let v6 = Cidr::parse("2001:db8::/32").unwrap();
        assert!(v6.contains(ip("2001:db8:1::5")) && !v6.contains(ip("2001:db9::1")));
        assert!(Cidr::parse("::/0").unwrap().contains(ip("::1")));
    }

    #[test]
    fn malformed_blocks_are_refused() {
        for bad in [
            "",
            "10.0.0.0/33",
            "::/129",
            "10.0.0.0/",
            "10.0.0.0/-1",
            "10.0.0/8",
            "x/8",
            " 10.0.0.0/8",
            "10.0.0.0/8 ",
            "10.0.0.0/+8",
            "10.0.0.0/0008",
        ] {
            assert!(Cidr::parse(bad).is_err(), "{bad:?}");
        }
        let err = parse_list("token_bound_cidrs", &["10.0.0.0/8".into(), "nope".into()])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("token_bound_cidrs") && err.contains("item 2"),
            "{err}"
        );
        assert!(!err.contains("nope"), "{err}");
    }

    #[test]
    fn blocks_round_trip_through_serde() {
        let c = Cidr::parse("192.168.0.0/16").unwrap();
        let json = serde_json::to_string(&c).unwrap();
        assert_eq!(json, "\"192.168.0.0/16\"");
        assert_eq!(serde_json::from_str::<Cidr>(&json).unwrap(), c);
        assert!(serde_json::from_str::<Cidr>("\"300.0.0.0/8\"").is_err());
    }
}
