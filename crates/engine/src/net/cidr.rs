//! A minimal IPv4 CIDR type (all we need; not worth a dependency).

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::NetError;

/// An IPv4 network such as `10.128.0.0/9`. The address never has host bits
/// set. Serialized as its string form.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Ipv4Cidr {
    addr: Ipv4Addr,
    prefix: u8,
}

impl Ipv4Cidr {
    /// A network from its address and prefix length; rejects host bits.
    pub fn new(addr: Ipv4Addr, prefix: u8) -> Result<Self, NetError> {
        if prefix > 32 {
            return Err(NetError::InvalidCidr(format!("{addr}/{prefix}")));
        }
        if u32::from(addr) & !mask(prefix) != 0 {
            return Err(NetError::InvalidCidr(format!("{addr}/{prefix}")));
        }
        Ok(Ipv4Cidr { addr, prefix })
    }

    /// For constants that are known to be valid.
    pub(crate) const fn new_unchecked(addr: Ipv4Addr, prefix: u8) -> Self {
        Ipv4Cidr { addr, prefix }
    }

    /// The network address.
    pub fn addr(&self) -> Ipv4Addr {
        self.addr
    }

    /// The prefix length.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// Whether `ip` lies inside this network.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & mask(self.prefix) == u32::from(self.addr)
    }
}

/// The netmask of a prefix length (`0..=32`) as a host-order integer.
pub(crate) fn mask(prefix: u8) -> u32 {
    // Prefix 0 is a shift by 32, out of range: no bits set.
    u32::MAX
        .checked_shl(32u32.saturating_sub(u32::from(prefix)))
        .unwrap_or(0)
}

impl fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl FromStr for Ipv4Cidr {
    type Err = NetError;

    /// Parses `a.b.c.d/n`; a bare address means `/32`.
    fn from_str(s: &str) -> Result<Self, NetError> {
        let bad = || NetError::InvalidCidr(s.to_string());
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, p.parse::<u8>().map_err(|_| bad())?),
            None => (s, 32),
        };
        let addr: Ipv4Addr = addr.parse().map_err(|_| bad())?;
        Ipv4Cidr::new(addr, prefix).map_err(|_| bad())
    }
}

impl TryFrom<String> for Ipv4Cidr {
    type Error = NetError;
    fn try_from(s: String) -> Result<Self, NetError> {
        s.parse()
    }
}

impl From<Ipv4Cidr> for String {
    fn from(c: Ipv4Cidr) -> String {
        c.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_display_contains() {
        let c: Ipv4Cidr = "10.128.0.0/9".parse().unwrap();
        assert_eq!(c.to_string(), "10.128.0.0/9");
        assert!(c.contains(Ipv4Addr::new(10, 255, 255, 255)));
        assert!(c.contains(Ipv4Addr::new(10, 128, 0, 0)));
        assert!(!c.contains(Ipv4Addr::new(10, 127, 255, 255)));
        let one: Ipv4Cidr = "198.18.0.1".parse().unwrap();
        assert_eq!(one.prefix(), 32);
        assert!("0.0.0.0/0"
            .parse::<Ipv4Cidr>()
            .unwrap()
            .contains(Ipv4Addr::BROADCAST));
        for bad in [
            "10.128.0.1/9",
            "10.0.0.0/33",
            "x/8",
            "10.0.0/8",
            "10.0.0.0/",
        ] {
            assert!(bad.parse::<Ipv4Cidr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn serde_as_string() {
        let c: Ipv4Cidr = "192.0.2.0/24".parse().unwrap();
        let j = serde_json::to_string(&c).unwrap();
        assert_eq!(j, "\"192.0.2.0/24\"");
        assert_eq!(serde_json::from_str::<Ipv4Cidr>(&j).unwrap(), c);
        assert!(serde_json::from_str::<Ipv4Cidr>("\"192.0.2.1/24\"").is_err());
    }
}
