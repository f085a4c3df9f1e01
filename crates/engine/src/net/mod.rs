//! Per-sandbox network namespaces.
//!
//! # Design
//!
//! Every sandbox gets its own network namespace `bhatti-<id>`. Inside it
//! live the VM's TAP device (`tap0`) and a fixed guest network: the guest is
//! always `172.31.255.2/30` behind the gateway `172.31.255.1` (the TAP's
//! address). Because those names and addresses are identical in every
//! sandbox, a VMM snapshot (which records the TAP name and the guest's IP
//! configuration) restores unchanged, and a fork or clone can run next to its
//! source with the *same* guest IP.
//!
//! The namespace is joined to the host by a veth pair: `bhv-<11 id chars>` on
//! the host, `eth0` inside. `eth0` carries the sandbox's unique *external*
//! address, a `/32` taken from its owner's `/24` inside the pool
//! (`10.200.0.0/13` by default). Inside the namespace, DNAT maps every port of
//! the external address to the guest and SNAT maps the guest back to it, so
//! outside the namespace a sandbox is simply "its external address".
//!
//! ```text
//!  root netns                       bhatti-<id>                      VM
//!  bhv-<id11> 169.254.1.1/32 <veth> eth0 <ext>/32   tap0 172.31.255.1/30 <-> guest eth0
//!  route <ext>/32 dev bhv-…         default via 169.254.1.1          172.31.255.2/30
//!                                   DNAT <ext> -> 172.31.255.2
//!                                   SNAT 172.31.255.2 -> <ext>
//!                                   FORWARD: egress policy
//! ```
//!
//! The host side uses the Calico-style "link-local gateway" trick: every host
//! veth holds the same `169.254.1.1/32`, the namespace routes
//! `169.254.1.1 dev eth0 scope link` and `default via 169.254.1.1`, and the
//! host routes `<ext>/32 dev bhv-…`. No bridge, no per-sandbox host subnet,
//! and no proxy ARP (the gateway address is real on the host veth, so the
//! host answers ARP for it). The daemon reaches a guest's agent at
//! `<ext>:1024/1025` from source `169.254.1.1`, never through the host's main
//! interfaces.
//!
//! # Isolation
//!
//! Host rules live in dedicated chains so we never disturb other software and
//! removal is trivial: `BHATTI-FWD` (jumped from `FORWARD` position 1),
//! `BHATTI-OWN` (one `-s X/24 -d X/24 ACCEPT` per owner with live sandboxes),
//! `BHATTI-IN` (from `INPUT` position 1) and nat `BHATTI-POST` (from
//! `POSTROUTING`). Siblings of one owner reach each other, other owners'
//! sandboxes and the host's own services are unreachable, nothing from
//! outside the pool may open a connection to a sandbox, egress is
//! masqueraded. The per-sandbox egress policy ([`EgressPolicy`]) is enforced
//! in the namespace's own `FORWARD` chain, where it can be swapped
//! atomically on a live sandbox ([`NetManager::set_egress_policy`]), and
//! checks every packet the guest originates, so a change also cuts
//! connections opened before it. Under `public` it refuses
//! [`NetConfig::egress_blocked`] (by default link-local, cloud metadata
//! among it, and the private ranges). An `unreachable` route for the whole
//! pool keeps traffic to unassigned pool addresses from leaking out of the
//! host's default route.
//!
//! # Why `ip` and `iptables` commands rather than netlink
//!
//! Configuring links, addresses, routes and firewall rules *inside* another
//! namespace through a netlink crate means `setns` on a dedicated thread for
//! every operation (netns membership is per thread, and a tokio worker must
//! never change namespace), and nftables/iptables have no stable Rust API at
//! all. `ip -n <ns>` and `iptables` under a `setns` `pre_exec` hook do that
//! juggling in a child process instead, are what operators debug with anyway,
//! and cost a few milliseconds per sandbox. Every command goes through one
//! small typed runner that captures stderr into [`NetError::Command`].
//!
//! All calls are blocking (they spawn short-lived processes); async callers
//! should use `spawn_blocking`.
//!
//! # Ownership of host objects
//!
//! Several daemons (and test runs) share a host, so nothing is ours by its
//! name alone ([`scope`]): each manager works in an address pool it has
//! claimed, names its host chains and veths after that pool, and keeps a
//! ledger of the sandboxes it set up. Orphan clean-up removes only the
//! namespaces and veths of sandboxes in its own ledger, and owner rules
//! only in its own chain.

mod cidr;
mod cmd;
mod config;
mod consts;
mod firewall;
mod host;
mod manager;
mod netns;
mod pool;
mod scope;

use std::net::Ipv4Addr;

pub use cidr::Ipv4Cidr;
pub use config::NetConfig;
pub use consts::{
    kernel_ip_arg, netns_name, netns_path, DEFAULT_EGRESS_BLOCKED, DEFAULT_POOL, GATEWAY_IP,
    GUEST_IP, GUEST_NETMASK, GUEST_PREFIX_LEN, HOST_VETH_IP, HOST_VETH_PREFIX, NETNS_DIR,
    NETNS_ETH, NETNS_PREFIX, TAP_NAME,
};
pub(crate) use firewall::{
    docker_block_tags, ensure_docker_block, remove_docker_block, resolv_conf_nameservers,
    DOCKER_TAG_PREFIX,
};
pub use firewall::{netns_egress_chain, EgressPolicy};
pub use manager::{NetManager, SandboxNet};
pub use netns::{enter_netns_on_spawn, run_in_netns, setns_hook};
pub use scope::{PoolClaim, CLAIM_DIR};

/// Everything that can go wrong while managing sandbox networking.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// Sandbox ids are exactly 16 lower-case hex characters.
    #[error("invalid sandbox id {0:?}: expected 16 lower-case hex characters")]
    InvalidSandboxId(String),
    /// A MAC address that is not `xx:xx:xx:xx:xx:xx` unicast.
    #[error("invalid guest MAC {0:?}: expected a unicast xx:xx:xx:xx:xx:xx")]
    InvalidMac(String),
    /// A CIDR string that does not parse or has host bits set.
    #[error("invalid IPv4 CIDR {0:?}")]
    InvalidCidr(String),
    /// A [`NetConfig`] that cannot work.
    #[error("invalid network config: {0}")]
    InvalidConfig(String),
    /// An owner subnet index outside `1..=max`.
    #[error("owner subnet index {index} out of range 1..={max}")]
    InvalidOwnerIndex {
        /// The index given.
        index: u32,
        /// The largest index the pool has room for.
        max: u32,
    },
    /// An address that is not a sandbox slot (`.2`–`.254`) of the owner's /24.
    #[error("address {ip} is not a sandbox address of owner {owner_index} ({subnet})")]
    AddressOutsideOwner {
        /// The address asked for.
        ip: Ipv4Addr,
        /// The owner it was asked for.
        owner_index: u16,
        /// That owner's /24.
        subnet: Ipv4Cidr,
    },
    /// An exact claim of an address that is already taken.
    #[error("address {0} is already in use")]
    AddressInUse(Ipv4Addr),
    /// The owner's /24 has no free slot left.
    #[error("IP pool exhausted for owner {owner_index} ({subnet}: 253 sandboxes per owner)")]
    PoolExhausted {
        /// The owner whose subnet is full.
        owner_index: u16,
        /// That owner's /24.
        subnet: Ipv4Cidr,
    },
    /// `setup_sandbox` for a sandbox that is already set up (by this manager
    /// or, if its namespace exists, by someone else).
    #[error("network of sandbox {0} already exists")]
    AlreadyExists(String),
    /// The sandbox's namespace is missing (e.g. `adopt` after a host reboot).
    #[error("network namespace {0} does not exist")]
    NetnsMissing(String),
    /// A command could not be started at all.
    #[error("cannot run `{cmd}`: {source}")]
    Spawn {
        /// The command line.
        cmd: String,
        /// Why it could not be started (e.g. the program is missing).
        #[source]
        source: std::io::Error,
    },
    /// A command ran and failed.
    #[error("`{cmd}` failed ({status}): {stderr}")]
    Command {
        /// The command line.
        cmd: String,
        /// Its exit status, as text.
        status: String,
        /// What it wrote to stderr, trimmed.
        stderr: String,
    },
    /// A file-system or syscall failure (sysctl writes, `setns`, …).
    #[error("{context}: {source}")]
    Io {
        /// What was being done, usually naming the file or namespace.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

impl NetError {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        NetError::Io {
            context: context.into(),
            source,
        }
    }
}
