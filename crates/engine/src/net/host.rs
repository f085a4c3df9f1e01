//! What the host already has: links, named namespaces and sysctls looked up
//! and removed idempotently, MACs checked, and the check that the sandbox
//! pool overlaps nothing the host uses. Blocking (runs `ip`).

use std::path::Path;

use super::cidr::Ipv4Cidr;
use super::cmd::Cmd;
use super::consts::named_netns_path;
use super::netns::write_sysctl;
use super::NetError;

pub(super) fn normalize_mac(mac: &str) -> Result<String, NetError> {
    let bad = || NetError::InvalidMac(mac.to_string());
    let parts: Vec<&str> = mac.split(':').collect();
    if parts.len() != 6 {
        return Err(bad());
    }
    let mut bytes = [0u8; 6];
    for (b, p) in bytes.iter_mut().zip(&parts) {
        if p.len() != 2 {
            return Err(bad());
        }
        *b = u8::from_str_radix(p, 16).map_err(|_| bad())?;
    }
    if bytes[0] & 1 != 0 {
        return Err(bad()); // multicast
    }
    Ok(bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":"))
}

pub(super) fn link_exists(name: &str) -> Result<bool, NetError> {
    Cmd::ip().args(["link", "show", "dev", name]).succeeds()
}

pub(super) fn netns_exists(name: &str) -> bool {
    named_netns_path(name).exists()
}

/// Deletes a link if present; an error only if it is still there afterwards.
pub(super) fn delete_link(name: &str) -> Result<bool, NetError> {
    if !link_exists(name)? {
        return Ok(false);
    }
    match Cmd::ip().args(["link", "del", "dev", name]).run() {
        Ok(_) => Ok(true),
        Err(e) if link_exists(name)? => Err(e),
        Err(_) => Ok(false),
    }
}

/// Deletes a named namespace if present (which destroys `tap0` and `eth0`
/// with it once no process is left inside).
pub(super) fn delete_netns(name: &str) -> Result<bool, NetError> {
    if !netns_exists(name) {
        return Ok(false);
    }
    match Cmd::ip().args(["netns", "del", name]).run() {
        Ok(_) => Ok(true),
        Err(e) if netns_exists(name) => Err(e),
        Err(_) => Ok(false),
    }
}

/// Best-effort sysctl for hardening; a kernel without the knob (e.g. no
/// IPv6) is not an error.
pub(super) fn optional_sysctl(
    netns: Option<&Path>,
    key: &str,
    value: &str,
) -> Result<(), NetError> {
    match write_sysctl(netns, key, value) {
        Err(NetError::Io { ref source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            Ok(())
        }
        other => other,
    }
}

/// Refuses a pool that overlaps anything the host already uses: an interface
/// address, a route other than the default one (and our own), or a DNS server
/// from /etc/resolv.conf. The pool's `unreachable` route would otherwise cut the
/// host off from, say, a resolver that is reached through the default route.
pub(crate) fn check_pool_is_free(pool: Ipv4Cidr, veth_prefix: &str) -> Result<(), NetError> {
    let clash = |what: String| {
        Err(NetError::InvalidConfig(format!(
            "the sandbox address pool {pool} overlaps {what}; choose another pool in the network config"
        )))
    };
    let resolv = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    for ns in resolv
        .lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
    {
        if let Ok(ip) = ns.trim().parse::<std::net::Ipv4Addr>() {
            if pool.contains(ip) {
                return clash(format!("the DNS server {ip} in /etc/resolv.conf"));
            }
        }
    }
    let addrs = Cmd::ip().args(["-4", "-o", "addr", "show"]).run()?;
    for word in addrs.split_whitespace().collect::<Vec<_>>().windows(2) {
        if word[0] == "inet" {
            if let Some(ip) = word[1].split('/').next().and_then(|a| a.parse().ok()) {
                if pool.contains(ip) {
                    return clash(format!("the host address {}", word[1]));
                }
            }
        }
    }
    let routes = Cmd::ip()
        .args(["-4", "route", "show", "table", "main"])
        .run()?;
    for line in routes.lines() {
        let mut words = line.split_whitespace();
        let mut dest = words.next().unwrap_or_default();
        if dest == "unreachable" || dest == "blackhole" || dest == "prohibit" {
            dest = words.next().unwrap_or_default();
        }
        let ours = line.contains(&format!("dev {veth_prefix}")) || dest == pool.to_string();
        if dest == "default" || ours {
            continue;
        }
        let net: Ipv4Cidr = match dest.parse() {
            Ok(n) => n,
            Err(_) => match dest.parse::<std::net::Ipv4Addr>() {
                Ok(a) => Ipv4Cidr::new_unchecked(a, 32),
                Err(_) => continue,
            },
        };
        if net.contains(pool.addr()) || pool.contains(net.addr()) {
            return clash(format!("the route {}", line.trim()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs() {
        assert_eq!(
            normalize_mac("AA:bb:0c:00:00:01").unwrap(),
            "aa:bb:0c:00:00:01"
        );
        for bad in [
            "",
            "aa:bb:cc:dd:ee",
            "01:00:5e:00:00:01",
            "aa:bb:cc:dd:ee:fg",
            "aabb:cc:dd:ee:ff:00",
        ] {
            assert!(normalize_mac(bad).is_err(), "{bad}");
        }
    }
}
