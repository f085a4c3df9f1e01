//! Every fixed name, address and limit of the module, and the functions that
//! derive per-sandbox names from a sandbox id.

use std::net::Ipv4Addr;
use std::path::PathBuf;

use super::{Ipv4Cidr, NetError};

/// Prefix of every sandbox network namespace: `bhatti-<sandbox id>`.
pub const NETNS_PREFIX: &str = "bhatti-";
/// Prefix of the host-side veths of the default pool's daemon,
/// `bhv-<first 11 chars of the id>` (other pools tag theirs: see `scope`).
pub const HOST_VETH_PREFIX: &str = "bhv-";
/// Where `ip netns` bind-mounts named namespaces.
pub const NETNS_DIR: &str = "/var/run/netns";
/// The namespace side of the veth pair, as seen inside the namespace.
pub const NETNS_ETH: &str = "eth0";
/// The VM's TAP device inside the namespace; identical in every sandbox so
/// VMM snapshots restore unchanged.
pub const TAP_NAME: &str = "tap0";
/// The guest's address, identical in every sandbox.
pub const GUEST_IP: Ipv4Addr = Ipv4Addr::new(172, 31, 255, 2);
/// The guest's gateway: the TAP's address inside the namespace.
pub const GATEWAY_IP: Ipv4Addr = Ipv4Addr::new(172, 31, 255, 1);
/// The TAP's MAC address, identical in every sandbox (locally administered,
/// unicast): a guest restored into another namespace (a fork, a template
/// copy) keeps its ARP entry for the gateway, and with a random TAP address
/// its replies would go to the old one until that entry went stale (tens
/// of seconds of silence).
pub const GATEWAY_MAC: &str = "02:62:68:74:00:01";
/// Prefix length of the guest link.
pub const GUEST_PREFIX_LEN: u8 = 30;
/// Netmask of the guest link (for the kernel `ip=` argument).
pub const GUEST_NETMASK: Ipv4Addr = Ipv4Addr::new(255, 255, 255, 252);
/// The address every host veth holds; the namespace's default gateway and
/// the source address of the daemon's connections to guests.
pub const HOST_VETH_IP: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);
/// The default pool of external sandbox addresses.
pub const DEFAULT_POOL: Ipv4Cidr = Ipv4Cidr::new_unchecked(Ipv4Addr::new(10, 200, 0, 0), 13);
/// What a `public` sandbox may not reach by default: link-local (cloud
/// metadata at 169.254.169.254 among it), the RFC 1918 private ranges and
/// CGNAT space, i.e. the host's LAN and its provider's internal services.
/// The owner's own sandboxes stay reachable; an explicit allow-list is not
/// affected. Configurable ([`NetConfig::egress_blocked`](super::NetConfig)).
pub const DEFAULT_EGRESS_BLOCKED: [Ipv4Cidr; 5] = [
    Ipv4Cidr::new_unchecked(Ipv4Addr::new(10, 0, 0, 0), 8),
    Ipv4Cidr::new_unchecked(Ipv4Addr::new(100, 64, 0, 0), 10),
    Ipv4Cidr::new_unchecked(Ipv4Addr::new(169, 254, 0, 0), 16),
    Ipv4Cidr::new_unchecked(Ipv4Addr::new(172, 16, 0, 0), 12),
    Ipv4Cidr::new_unchecked(Ipv4Addr::new(192, 168, 0, 0), 16),
];

/// Length of a sandbox id (8 random bytes as hex).
pub(crate) const SANDBOX_ID_LEN: usize = 16;
/// How many id characters go into the host veth name (15-char IFNAMSIZ limit).
pub(crate) const VETH_ID_CHARS: usize = 11;
/// First and last usable host slot of an owner's /24 (.0, .1, .255 reserved).
pub(crate) const FIRST_SLOT: u8 = 2;
pub(crate) const LAST_SLOT: u8 = 254;
/// Shortest and longest pool prefix: at least one owner, at most 65535
/// (owner indices are `u16`).
pub(crate) const MIN_POOL_PREFIX: u8 = 8;
pub(crate) const MAX_POOL_PREFIX: u8 = 23;

/// Host chains (filter table unless noted).
pub(crate) const CHAIN_FWD: &str = "BHATTI-FWD";
pub(crate) const CHAIN_OWN: &str = "BHATTI-OWN";
pub(crate) const CHAIN_IN: &str = "BHATTI-IN";
/// nat table.
pub(crate) const CHAIN_POST: &str = "BHATTI-POST";
/// Inside each sandbox namespace: the egress policy chain.
pub(crate) const CHAIN_EGRESS: &str = "BHATTI-EGRESS";

/// Checks that `id` is a sandbox id: exactly 16 lower-case hex characters.
/// Ids end up in command arguments and interface names, so this is strict.
pub(crate) fn validate_sandbox_id(id: &str) -> Result<(), NetError> {
    let ok = id.len() == SANDBOX_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if ok {
        Ok(())
    } else {
        Err(NetError::InvalidSandboxId(id.to_string()))
    }
}

/// The network namespace of a sandbox: `bhatti-<id>`.
pub fn netns_name(sandbox_id: &str) -> Result<String, NetError> {
    validate_sandbox_id(sandbox_id)?;
    Ok(format!("{NETNS_PREFIX}{sandbox_id}"))
}

/// The bind-mounted namespace file of a sandbox, `/var/run/netns/bhatti-<id>`:
/// open it and `setns(CLONE_NEWNET)` to enter the sandbox's network (see
/// [`enter_netns_on_spawn`](super::enter_netns_on_spawn)).
pub fn netns_path(sandbox_id: &str) -> Result<PathBuf, NetError> {
    Ok(named_netns_path(&netns_name(sandbox_id)?))
}

/// The file of any named namespace.
pub(crate) fn named_netns_path(name: &str) -> PathBuf {
    PathBuf::from(NETNS_DIR).join(name)
}

/// The guest kernel `ip=` argument value (without `ip=`), identical for every
/// sandbox: `172.31.255.2::172.31.255.1:255.255.255.252::eth0:off`.
pub fn kernel_ip_arg() -> String {
    format!("{GUEST_IP}::{GATEWAY_IP}:{GUEST_NETMASK}::eth0:off")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        let id = "0123456789abcdef";
        assert_eq!(netns_name(id).unwrap(), "bhatti-0123456789abcdef");
        assert_eq!(
            netns_path(id).unwrap(),
            PathBuf::from("/var/run/netns/bhatti-0123456789abcdef")
        );
        for bad in [
            "",
            "0123456789ABCDEF",
            "0123456789abcde",
            "0123456789abcdef0",
            "../../etc/passw",
        ] {
            assert!(netns_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn kernel_arg() {
        assert_eq!(
            kernel_ip_arg(),
            "172.31.255.2::172.31.255.1:255.255.255.252::eth0:off"
        );
    }
}
