//! [`NetManager`]: sets up and tears down sandbox namespaces, owns the
//! address pool and the host firewall.

use crate::lock;
use std::collections::{HashMap, HashSet};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use super::cidr::Ipv4Cidr;
use super::cmd::Cmd;
use super::config::NetConfig;
use super::consts::{
    named_netns_path, netns_name, validate_sandbox_id, GATEWAY_IP, GATEWAY_MAC, GUEST_IP,
    GUEST_PREFIX_LEN, HOST_VETH_IP, NETNS_ETH, TAP_NAME, VETH_ID_CHARS,
};
use super::firewall::{self, EgressPolicy, HostChains};
use super::host::{
    check_pool_is_free, delete_link, delete_netns, netns_exists, normalize_mac, optional_sysctl,
};
use super::netns::write_sysctl;
use super::pool::AddressPool;
use super::scope::{PoolClaim, Scope};
use super::NetError;

/// The network of one sandbox, as created by [`NetManager::setup_sandbox`].
/// Persist it with the sandbox: it is what teardown, policy changes and
/// recovery ([`NetManager::adopt`]) take.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SandboxNet {
    /// The sandbox this network belongs to.
    pub sandbox_id: String,
    /// Owner subnet index the external address belongs to.
    pub owner_index: u16,
    /// `bhatti-<id>`.
    pub netns: String,
    /// `bhv-<first 11 id chars>`.
    pub host_veth: String,
    /// The sandbox's unique address: the daemon reaches the agent at
    /// `<ext_ip>:1024/1025`, siblings reach the guest here.
    pub ext_ip: Ipv4Addr,
    /// Always [`GUEST_IP`](super::GUEST_IP).
    pub guest_ip: Ipv4Addr,
    /// Always [`GATEWAY_IP`](super::GATEWAY_IP).
    pub gateway_ip: Ipv4Addr,
    /// Always [`TAP_NAME`](super::TAP_NAME).
    pub tap: String,
    /// The MAC to give the guest NIC (the VMM sets it; stored here).
    pub guest_mac: String,
}

impl SandboxNet {
    /// `/var/run/netns/bhatti-<id>`: enter it to start the VMM.
    pub fn netns_path(&self) -> PathBuf {
        named_netns_path(&self.netns)
    }
}

#[derive(Debug)]
struct State {
    pool: AddressPool,
    /// Sandboxes this manager set up or adopted: id -> (owner, ext ip).
    sandboxes: HashMap<String, (u16, Ipv4Addr)>,
    /// Namespaces set up detached (pooled sandboxes), not yet joined.
    detached: HashSet<String>,
}

/// Creates, polices and removes per-sandbox network namespaces. One per
/// daemon; `Sync`, methods may be called concurrently. All methods block
/// (they run `ip`/`iptables`), so call them from `spawn_blocking` in async
/// code. Requires root (CAP_NET_ADMIN and CAP_SYS_ADMIN).
#[derive(Debug)]
pub struct NetManager {
    config: NetConfig,
    /// This manager's names and ledger (see [`super::scope`]).
    scope: Scope,
    chains: HostChains,
    /// The pool claim, held for the manager's life.
    _claim: Option<PoolClaim>,
    state: Mutex<State>,
    /// Serialises host firewall changes, including per-owner rules, so that
    /// "last sandbox of an owner gone -> remove its rule" cannot race with
    /// "first sandbox of the owner -> add the rule".
    firewall: Mutex<()>,
    firewall_ready: AtomicBool,
}

/// What `setup_sandbox` has created so far, for rollback.
#[derive(Default)]
struct Created {
    netns: bool,
    veth: bool,
}

/// Serialises host-wide preparation across every manager of this process.
static HOST_SETUP: Mutex<()> = Mutex::new(());

impl NetManager {
    /// A manager for `config`. Touches nothing on the host.
    pub fn new(config: NetConfig) -> Result<Self, NetError> {
        let pool = AddressPool::new(config.pool)?;
        for (what, v) in [
            ("tap_user", &config.tap_user),
            ("tap_group", &config.tap_group),
        ] {
            if let Some(v) = v {
                let ok = !v.is_empty()
                    && v.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b));
                if !ok {
                    return Err(NetError::InvalidConfig(format!("{what} {v:?}")));
                }
            }
        }
        let scope = Scope::new(config.pool, config.ledger_dir.clone());
        let chains = HostChains::of(&scope);
        Ok(NetManager {
            config,
            scope,
            chains,
            _claim: None,
            state: Mutex::new(State {
                pool,
                sandboxes: HashMap::new(),
                detached: HashSet::new(),
            }),
            firewall: Mutex::new(()),
            firewall_ready: AtomicBool::new(false),
        })
    }

    /// A manager on a claimed pool (`config.pool` is replaced by the
    /// claim's), holding the claim for its life.
    pub fn claimed(mut config: NetConfig, claim: PoolClaim) -> Result<Self, NetError> {
        config.pool = claim.pool();
        let mut m = NetManager::new(config)?;
        m._claim = Some(claim);
        Ok(m)
    }

    /// For tests and benchmarks: a manager on a scratch pool that neither
    /// the host's daemon nor a concurrent run uses, with its own names, and
    /// its ledger in `ledger_dir`. What it creates and cleans up can never
    /// be a live daemon's.
    pub fn scratch(ledger_dir: PathBuf) -> Result<Self, NetError> {
        let claim = PoolClaim::scratch()?;
        NetManager::claimed(
            NetConfig {
                ledger_dir: Some(ledger_dir),
                ..NetConfig::default()
            },
            claim,
        )
    }

    /// The configuration this manager runs with (a claimed pool in place
    /// of the configured one).
    pub fn config(&self) -> &NetConfig {
        &self.config
    }

    /// The host veth of a sandbox: this pool's prefix and the first 11
    /// characters of the id.
    pub fn host_veth_name(&self, sandbox_id: &str) -> Result<String, NetError> {
        validate_sandbox_id(sandbox_id)?;
        Ok(format!(
            "{}{}",
            self.chains.veth_prefix,
            &sandbox_id[..VETH_ID_CHARS]
        ))
    }

    /// The host chains' names (`BHATTI-FWD`, or `BHATTI-FWD-<tag>`, …), in
    /// the order forward, owners, input, nat postrouting.
    pub fn host_chain_names(&self) -> [String; 4] {
        [
            self.chains.fwd.clone(),
            self.chains.own.clone(),
            self.chains.input.clone(),
            self.chains.post.clone(),
        ]
    }

    /// The owner index of the pool's last /24, which the daemon keeps for
    /// its own VMs (template builds for warm pools). Users' indexes count
    /// up from 1 and never get near it with the default /13 (2047 users).
    pub fn daemon_owner_index(&self) -> u16 {
        u16::try_from(lock(&self.state).pool.max_owner_index()).unwrap_or(u16::MAX)
    }

    /// The /24 of an owner subnet index.
    pub fn owner_subnet(&self, owner_index: u16) -> Result<Ipv4Cidr, NetError> {
        lock(&self.state).pool.owner_subnet(owner_index)
    }

    /// Host preparation, idempotent: `net.ipv4.ip_forward=1`, an
    /// `unreachable` route for the pool (so traffic to unassigned pool
    /// addresses never leaves through the default route), the `BHATTI-*`
    /// chains and their jumps, and a sibling rule for every owner with live
    /// sandboxes. Returns whether anything had to change.
    /// [`setup_sandbox`](Self::setup_sandbox) calls it once if needed.
    pub fn ensure_host_firewall(&self) -> Result<bool, NetError> {
        let _fw = lock(&self.firewall);
        // Host-wide state: serialise with every other manager in this process.
        let _host = lock(&HOST_SETUP);
        let mut changed = false;
        let fwd = std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward")
            .map_err(|e| NetError::io("read /proc/sys/net/ipv4/ip_forward", e))?;
        if fwd.trim() != "1" {
            write_sysctl(None, "net/ipv4/ip_forward", "1")?;
            changed = true;
        }
        let pool = self.config.pool.to_string();
        check_pool_is_free(self.config.pool, &self.chains.veth_prefix)?;
        let routes = Cmd::ip()
            .args(["-4", "route", "show", "table", "main", "exact", &pool])
            .run()?;
        if routes.trim().is_empty() {
            // `replace`, not `add`: another manager (another engine in this
            // process, or a test) may be preparing the host at the same moment.
            Cmd::ip()
                .args(["route", "replace", "unreachable", &pool])
                .run()?;
            changed = true;
        } else if !routes.trim_start().starts_with("unreachable") {
            warn!(%pool, routes = routes.trim(), "the sandbox pool is routed elsewhere on this host");
        }
        changed |= firewall::ensure_host_chains(self.config.pool, &self.chains)?;
        for subnet in self.live_owner_subnets() {
            firewall::ensure_owner_rule(&self.chains, subnet)?;
        }
        self.firewall_ready.store(true, Ordering::SeqCst);
        Ok(changed)
    }

    /// Removes everything [`ensure_host_firewall`](Self::ensure_host_firewall)
    /// added except `ip_forward` (other software may rely on it). For
    /// uninstall and tests; live sandboxes lose isolation and egress NAT.
    pub fn remove_host_firewall(&self) -> Result<(), NetError> {
        let _fw = lock(&self.firewall);
        self.firewall_ready.store(false, Ordering::SeqCst);
        firewall::remove_host_chains(&self.chains)?;
        let pool = self.config.pool.to_string();
        let routes = Cmd::ip()
            .args(["-4", "route", "show", "table", "main", "exact", &pool])
            .run()?;
        if routes.trim_start().starts_with("unreachable") {
            Cmd::ip()
                .args(["route", "del", "unreachable", &pool])
                .run()?;
        }
        Ok(())
    }

    fn live_owner_subnets(&self) -> HashSet<Ipv4Cidr> {
        let st = lock(&self.state);
        st.sandboxes
            .values()
            .filter_map(|(owner, _)| st.pool.owner_subnet(*owner).ok())
            .collect()
    }

    /// Creates the sandbox's namespace, veth pair, `tap0`, routes and rules,
    /// claiming an external address from the owner's /24: `ext_ip: Some(ip)`
    /// claims exactly that one (restore keeping its address), `None` the
    /// lowest free one (new sandbox, or a fork/clone, which gets a new
    /// external address while its guest keeps `172.31.255.2`). Everything
    /// created is rolled back if a later step fails.
    pub fn setup_sandbox(
        &self,
        sandbox_id: &str,
        owner_index: u16,
        guest_mac: &str,
        policy: &EgressPolicy,
        ext_ip: Option<Ipv4Addr>,
    ) -> Result<SandboxNet, NetError> {
        let netns = netns_name(sandbox_id)?;
        let host_veth = self.host_veth_name(sandbox_id)?;
        let guest_mac = normalize_mac(guest_mac)?;
        // Ours before anything exists, so a crash halfway leaves an orphan
        // that clean-up knows to remove.
        self.scope.record(sandbox_id)?;
        let owner_subnet = self.owner_subnet(owner_index)?;
        if !self.firewall_ready.load(Ordering::SeqCst) {
            self.ensure_host_firewall()?;
        }

        let ext_ip = {
            let mut st = lock(&self.state);
            if st.sandboxes.contains_key(sandbox_id) {
                return Err(NetError::AlreadyExists(sandbox_id.to_string()));
            }
            let ip = match ext_ip {
                Some(ip) => st.pool.try_claim(owner_index, ip).map(|()| ip)?,
                None => st.pool.allocate(owner_index)?,
            };
            st.sandboxes
                .insert(sandbox_id.to_string(), (owner_index, ip));
            ip
        };
        let net = sandbox_net(sandbox_id, owner_index, netns, host_veth, ext_ip, guest_mac);

        let mut created = Created::default();
        match self.build(&net, owner_subnet, policy, &mut created) {
            Ok(()) => {
                info!(sandbox = sandbox_id, ext_ip = %ext_ip, "sandbox network up");
                Ok(net)
            }
            Err(e) => {
                warn!(sandbox = sandbox_id, error = %e, "sandbox network setup failed; rolling back");
                let mut rolled_back = true;
                if created.veth {
                    if let Err(e) = delete_link(&net.host_veth) {
                        warn!(error = %e, "rollback: deleting host veth");
                        rolled_back = false;
                    }
                }
                if created.netns {
                    if let Err(e) = delete_netns(&net.netns) {
                        warn!(error = %e, "rollback: deleting netns");
                        rolled_back = false;
                    }
                }
                self.forget(&net);
                // Nothing of ours is left (what was in the way, like a
                // taken veth name, was never ours to remove).
                if rolled_back {
                    self.scope.forget(sandbox_id);
                }
                Err(e)
            }
        }
    }

    /// A sandbox's namespace with only its guest side (`tap0`, the fixed
    /// gateway): no veth, no address, no rules, so nothing on the host or
    /// in another sandbox can reach it, and it reaches nothing. A pooled
    /// sandbox waits behind one; [`attach`](Self::attach) joins it to the
    /// host for its owner when it is claimed. The result has owner index 0
    /// and external address `0.0.0.0` until then;
    /// [`teardown_sandbox`](Self::teardown_sandbox) removes it either way.
    pub fn setup_detached(
        &self,
        sandbox_id: &str,
        guest_mac: &str,
    ) -> Result<SandboxNet, NetError> {
        let netns = netns_name(sandbox_id)?;
        let host_veth = self.host_veth_name(sandbox_id)?;
        let guest_mac = normalize_mac(guest_mac)?;
        self.scope.record(sandbox_id)?;
        {
            let mut st = lock(&self.state);
            if st.sandboxes.contains_key(sandbox_id) || !st.detached.insert(sandbox_id.to_string())
            {
                return Err(NetError::AlreadyExists(sandbox_id.to_string()));
            }
        }
        let mut created = Created::default();
        match self.build_ns(sandbox_id, &guest_mac, &mut created) {
            Ok(()) => Ok(sandbox_net(
                sandbox_id,
                0,
                netns,
                host_veth,
                Ipv4Addr::UNSPECIFIED,
                guest_mac,
            )),
            Err(e) => {
                let gone = !created.netns || delete_netns(&netns).is_ok();
                lock(&self.state).detached.remove(sandbox_id);
                if gone {
                    self.scope.forget(sandbox_id);
                }
                Err(e)
            }
        }
    }

    /// The guest took a new MAC address (a claimed template restore or
    /// pooled sandbox): its permanent neighbour entry follows, and the
    /// returned network carries it.
    pub fn set_guest_mac(&self, net: &SandboxNet, guest_mac: &str) -> Result<SandboxNet, NetError> {
        let guest_mac = normalize_mac(guest_mac)?;
        Cmd::ip()
            .args(["-n", &net.netns, "neigh", "replace"])
            .args([GUEST_IP.to_string().as_str(), "lladdr", &guest_mac])
            .args(["dev", TAP_NAME, "nud", "permanent"])
            .run()?;
        Ok(SandboxNet {
            guest_mac,
            ..net.clone()
        })
    }

    /// Joins a detached namespace ([`setup_detached`](Self::setup_detached))
    /// to the host for `owner_index`: the lowest free address of the
    /// owner's /24, the veth pair, routes and rules, as
    /// [`setup_sandbox`](Self::setup_sandbox) makes them. The guest side is
    /// untouched, so the guest notices nothing. On failure what was joined
    /// is rolled back and the namespace stays detached.
    pub fn attach(
        &self,
        detached: &SandboxNet,
        owner_index: u16,
        policy: &EgressPolicy,
    ) -> Result<SandboxNet, NetError> {
        let id = detached.sandbox_id.as_str();
        let owner_subnet = self.owner_subnet(owner_index)?;
        if !self.firewall_ready.load(Ordering::SeqCst) {
            self.ensure_host_firewall()?;
        }
        let ext_ip = {
            let mut st = lock(&self.state);
            if !st.detached.contains(id) {
                return Err(NetError::AlreadyExists(id.to_string()));
            }
            let ip = st.pool.allocate(owner_index)?;
            st.detached.remove(id);
            st.sandboxes.insert(id.to_string(), (owner_index, ip));
            ip
        };
        let net = SandboxNet {
            owner_index,
            ext_ip,
            ..detached.clone()
        };
        let mut created = Created {
            netns: true,
            veth: false,
        };
        match self.join_host(&net, owner_subnet, policy, &mut created) {
            Ok(()) => {
                info!(sandbox = id, ext_ip = %ext_ip, "pooled sandbox network joined");
                Ok(net)
            }
            Err(e) => {
                warn!(sandbox = id, error = %e, "joining a pooled sandbox's network failed; rolling back");
                if created.veth {
                    if let Err(e) = delete_link(&net.host_veth) {
                        warn!(error = %e, "rollback: deleting host veth");
                    }
                }
                self.forget(&net);
                lock(&self.state).detached.insert(id.to_string());
                Err(e)
            }
        }
    }

    fn build(
        &self,
        net: &SandboxNet,
        owner_subnet: Ipv4Cidr,
        policy: &EgressPolicy,
        created: &mut Created,
    ) -> Result<(), NetError> {
        self.build_ns(&net.sandbox_id, &net.guest_mac, created)?;
        self.join_host(net, owner_subnet, policy, created)
    }

    /// The namespace and its guest side: sysctls, `lo`, and `tap0` with the
    /// fixed gateway address and the guest's permanent neighbour entry.
    /// Nothing links it to the host yet.
    fn build_ns(
        &self,
        sandbox_id: &str,
        guest_mac: &str,
        created: &mut Created,
    ) -> Result<(), NetError> {
        let ns = netns_name(sandbox_id)?;
        let ns_path = named_netns_path(&ns);
        // Never adopt (or later roll back) someone else's namespace.
        if netns_exists(&ns) {
            return Err(NetError::AlreadyExists(sandbox_id.to_string()));
        }
        Cmd::ip().args(["netns", "add", &ns]).run()?;
        created.netns = true;

        // Namespace sysctls, before any interface is up.
        write_sysctl(Some(&ns_path), "net/ipv4/ip_forward", "1")?;
        // Strict reverse-path filtering: the guest can only send from the
        // TAP's subnet (the FORWARD anti-spoof rule says the same).
        write_sysctl(Some(&ns_path), "net/ipv4/conf/all/rp_filter", "1")?;
        write_sysctl(Some(&ns_path), "net/ipv4/conf/default/rp_filter", "1")?;
        // IPv4 only: no link-local IPv6 path around the IPv4 rules (`eth0`,
        // created later, inherits `default`).
        for key in ["all", "default"] {
            optional_sysctl(
                Some(&ns_path),
                &format!("net/ipv6/conf/{key}/disable_ipv6"),
                "1",
            )?;
        }

        let mut tuntap = format!("tuntap add dev {TAP_NAME} mode tap");
        if let Some(u) = &self.config.tap_user {
            tuntap.push_str(&format!(" user {u}"));
        }
        if let Some(g) = &self.config.tap_group {
            tuntap.push_str(&format!(" group {g}"));
        }
        // The guest's neighbour entry is permanent: a connection attempted before
        // the guest answers ARP would otherwise wait out the kernel's 1 s ARP
        // retransmit instead of reaching the guest the moment it listens.
        Cmd::ip()
            .args(["-n", &ns, "-batch", "-"])
            .stdin(format!(
                "link set dev lo up\n\
                 {tuntap}\n\
                 link set dev {TAP_NAME} address {GATEWAY_MAC}\n\
                 addr add {GATEWAY_IP}/{GUEST_PREFIX_LEN} dev {TAP_NAME}\n\
                 link set dev {TAP_NAME} up\n\
                 neigh replace {GUEST_IP} lladdr {guest_mac} dev {TAP_NAME} nud permanent\n"
            ))
            .run()?;
        Ok(())
    }

    /// Joins a namespace made by [`build_ns`](Self::build_ns) to the host
    /// at `net.ext_ip`: the veth pair, the host route, `eth0`'s address and
    /// routes, the namespace's rules and the owner's sibling rule.
    fn join_host(
        &self,
        net: &SandboxNet,
        owner_subnet: Ipv4Cidr,
        policy: &EgressPolicy,
        created: &mut Created,
    ) -> Result<(), NetError> {
        let ns = net.netns.as_str();
        let ns_path = net.netns_path();
        let veth = net.host_veth.as_str();
        let ext = net.ext_ip;

        // The peer is created directly inside the namespace under its final
        // name, so no `bhp-*` half ever exists in the host namespace.
        Cmd::ip()
            .args([
                "link", "add", veth, "type", "veth", "peer", "name", NETNS_ETH,
            ])
            .args(["netns", ns])
            .run()?;
        created.veth = true;
        optional_sysctl(
            Some(&ns_path),
            &format!("net/ipv6/conf/{NETNS_ETH}/disable_ipv6"),
            "1",
        )?;

        // Host side first, so the namespace's gateway is reachable as soon as
        // its routes exist.
        // rp_filter=1 (strict) on the host veth: the only source that may
        // arrive on it is the sandbox's own /32 (routed back through it). The
        // kernel applies max(all, iface), so a host-wide loose (2) setting
        // still wins; the BHATTI-FWD/IN interface rules cover that case.
        // No proxy_arp: 169.254.1.1 is a real address of the host veth, so
        // the host answers the namespace's ARP for its gateway itself, and
        // the namespace answers for <ext>/32 on eth0.
        write_sysctl(None, &format!("net/ipv4/conf/{veth}/rp_filter"), "1")?;
        optional_sysctl(None, &format!("net/ipv6/conf/{veth}/disable_ipv6"), "1")?;
        Cmd::ip()
            .args(["-batch", "-"])
            .stdin(format!(
                "link set dev {veth} up\n\
                 addr add {HOST_VETH_IP}/32 dev {veth}\n\
                 route add {ext}/32 dev {veth}\n"
            ))
            .run()?;
        Cmd::ip()
            .args(["-n", ns, "-batch", "-"])
            .stdin(format!(
                "addr add {ext}/32 dev {NETNS_ETH}\n\
                 link set dev {NETNS_ETH} up\n\
                 route add {HOST_VETH_IP}/32 dev {NETNS_ETH} scope link\n\
                 route add default via {HOST_VETH_IP} dev {NETNS_ETH}\n"
            ))
            .run()?;

        firewall::install_netns_rules(
            &ns_path,
            ext,
            owner_subnet,
            policy,
            &self.config.egress_blocked,
            true,
        )?;

        let _fw = lock(&self.firewall);
        firewall::ensure_owner_rule(&self.chains, owner_subnet)
    }

    /// Drops a sandbox from the pool and, if it was its owner's last,
    /// removes the owner's sibling rule. Only releases the address if this
    /// manager tracks the sandbox with exactly that address.
    fn forget(&self, net: &SandboxNet) -> Option<NetError> {
        let _fw = lock(&self.firewall);
        let owner_left = {
            let mut st = lock(&self.state);
            match st.sandboxes.get(&net.sandbox_id) {
                Some(&(owner, ip)) if ip == net.ext_ip => {
                    st.sandboxes.remove(&net.sandbox_id);
                    st.pool.release(ip);
                    (st.pool.in_use(owner) == 0).then(|| st.pool.owner_subnet(owner).ok())
                }
                Some(&(_, ip)) => {
                    warn!(sandbox = %net.sandbox_id, tracked = %ip, given = %net.ext_ip,
                          "teardown with a stale address; keeping the tracked one");
                    None
                }
                None => None,
            }
        };
        if let Some(Some(subnet)) = owner_left {
            if let Err(e) = firewall::remove_owner_rule(&self.chains, subnet) {
                warn!(error = %e, %subnet, "removing owner rule");
                return Some(e);
            }
        }
        None
    }

    /// Removes the sandbox's host veth (and with it the peer and the host
    /// route), its namespace (and with it `tap0`), and releases its address.
    /// Idempotent, and fine with half-created state. Stop the VMM first: a
    /// process still inside keeps the namespace alive (unnamed) until it
    /// exits, although the veth is removed regardless.
    pub fn teardown_sandbox(&self, net: &SandboxNet) -> Result<(), NetError> {
        // Names are re-derived from the id rather than trusted from `net`.
        let ns = netns_name(&net.sandbox_id)?;
        let veth = self.host_veth_name(&net.sandbox_id)?;
        let mut first_err = None;
        if let Err(e) = delete_link(&veth) {
            first_err.get_or_insert(e);
        }
        if let Err(e) = delete_netns(&ns) {
            first_err.get_or_insert(e);
        }
        if let Some(e) = self.forget(net) {
            first_err.get_or_insert(e);
        }
        lock(&self.state).detached.remove(&net.sandbox_id);
        if first_err.is_none() {
            self.scope.forget(&net.sandbox_id);
        }
        info!(sandbox = %net.sandbox_id, "sandbox network removed");
        first_err.map_or(Ok(()), Err)
    }

    /// Replaces the egress policy of a live sandbox (atomically: there is no
    /// instant without a policy). It applies at once to new connections and
    /// to those the guest opened before (every packet the guest originates
    /// is checked); answers on connections opened *to* the guest are not
    /// affected.
    pub fn set_egress_policy(
        &self,
        net: &SandboxNet,
        policy: &EgressPolicy,
    ) -> Result<(), NetError> {
        let ns = netns_name(&net.sandbox_id)?;
        if !netns_exists(&ns) {
            return Err(NetError::NetnsMissing(ns));
        }
        let subnet = self.owner_subnet(net.owner_index)?;
        firewall::replace_egress(
            &named_netns_path(&ns),
            subnet,
            policy,
            &self.config.egress_blocked,
        )
    }

    /// Re-installs the whole ruleset of an existing namespace (both tables,
    /// each atomically; conntrack state survives): after a daemon restart,
    /// so a namespace written by an older daemon or under other
    /// [`NetConfig::egress_blocked`] gets the current rules.
    pub fn reinstall_rules(&self, net: &SandboxNet, policy: &EgressPolicy) -> Result<(), NetError> {
        let ns = netns_name(&net.sandbox_id)?;
        if !netns_exists(&ns) {
            return Err(NetError::NetnsMissing(ns));
        }
        let subnet = self.owner_subnet(net.owner_index)?;
        firewall::install_netns_rules(
            &named_netns_path(&ns),
            net.ext_ip,
            subnet,
            policy,
            &self.config.egress_blocked,
            false,
        )
    }

    /// Recovery after a daemon restart: takes over a sandbox whose namespace
    /// survived, marking its address as used and restoring its owner's
    /// sibling rule. `NetnsMissing` means the host rebooted: set it up again
    /// with `setup_sandbox(…, Some(net.ext_ip))`.
    pub fn adopt(&self, net: &SandboxNet) -> Result<(), NetError> {
        let ns = netns_name(&net.sandbox_id)?;
        if !netns_exists(&ns) {
            return Err(NetError::NetnsMissing(ns));
        }
        let subnet = self.owner_subnet(net.owner_index)?;
        {
            let mut st = lock(&self.state);
            match st.sandboxes.get(&net.sandbox_id) {
                Some(&(_, ip)) if ip == net.ext_ip => {}
                Some(_) => return Err(NetError::AlreadyExists(net.sandbox_id.clone())),
                None => {
                    if st.sandboxes.values().any(|&(_, ip)| ip == net.ext_ip) {
                        return Err(NetError::AddressInUse(net.ext_ip));
                    }
                    st.pool.mark(net.owner_index, net.ext_ip)?;
                    st.sandboxes
                        .insert(net.sandbox_id.clone(), (net.owner_index, net.ext_ip));
                }
            }
        }
        // Recorded as ours: a daemon upgraded from before the ledger
        // learns its sandboxes here.
        self.scope.record(&net.sandbox_id)?;
        if !self.firewall_ready.load(Ordering::SeqCst) {
            return self.ensure_host_firewall().map(drop);
        }
        let _fw = lock(&self.firewall);
        firewall::ensure_owner_rule(&self.chains, subnet)
    }

    /// Deletes the namespace and host veth of every sandbox in this
    /// manager's ledger that belongs neither to `keep` nor to a sandbox it
    /// tracks, and every sibling rule of an owner without tracked
    /// sandboxes in its own owners' chain. Nothing another manager (another
    /// daemon, a test run) recorded is touched, whatever its name. Returns
    /// the names removed. Run after recovery ([`adopt`](Self::adopt)):
    /// sibling rules survive only for owners of tracked sandboxes, since
    /// `keep` carries no owner.
    pub fn cleanup_orphans<S: AsRef<str>>(&self, keep: &[S]) -> Result<Vec<String>, NetError> {
        let mut keep_ids: HashSet<String> = keep.iter().map(|s| s.as_ref().to_string()).collect();
        {
            let st = lock(&self.state);
            keep_ids.extend(st.sandboxes.keys().cloned());
            keep_ids.extend(st.detached.iter().cloned());
        }
        let orphans: Vec<String> = self
            .scope
            .recorded()
            .into_iter()
            .filter(|id| validate_sandbox_id(id).is_ok() && !keep_ids.contains(id))
            .collect();

        let mut removed = Vec::new();
        let mut first_err = None;
        for id in &orphans {
            let mut clean = true;
            // The host veth first: deleting it removes its peer at once,
            // whereas a namespace's interfaces go asynchronously after
            // `netns del`.
            let veth = self.host_veth_name(id)?;
            match delete_link(&veth) {
                Ok(true) => removed.push(veth),
                Ok(false) => {}
                Err(e) => {
                    clean = false;
                    first_err.get_or_insert(e);
                }
            }
            let ns = netns_name(id)?;
            match delete_netns(&ns) {
                Ok(true) => removed.push(ns),
                Ok(false) => {}
                Err(e) => {
                    clean = false;
                    first_err.get_or_insert(e);
                }
            }
            if clean {
                self.scope.forget(id);
            }
        }

        {
            let _fw = lock(&self.firewall);
            let live = self.live_owner_subnets();
            for subnet in firewall::owner_rule_subnets(&self.chains)? {
                if !live.contains(&subnet) {
                    if let Err(e) = firewall::remove_owner_rule(&self.chains, subnet) {
                        first_err.get_or_insert(e);
                    }
                }
            }
        }

        if !removed.is_empty() {
            info!(?removed, "removed orphaned sandbox networks");
        }
        first_err.map_or(Ok(removed), Err)
    }
}

/// A sandbox's network as this manager lays every one out: the fixed guest
/// side, and the given names, owner and external address.
fn sandbox_net(
    sandbox_id: &str,
    owner_index: u16,
    netns: String,
    host_veth: String,
    ext_ip: Ipv4Addr,
    guest_mac: String,
) -> SandboxNet {
    SandboxNet {
        sandbox_id: sandbox_id.to_string(),
        owner_index,
        netns,
        host_veth,
        ext_ip,
        guest_ip: GUEST_IP,
        gateway_ip: GATEWAY_IP,
        tap: TAP_NAME.to_string(),
        guest_mac,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_validation() {
        assert!(NetManager::new(NetConfig::default()).is_ok());
        let bad_user = NetConfig {
            tap_user: Some("root; rm".into()),
            ..NetConfig::default()
        };
        assert!(NetManager::new(bad_user).is_err());
        let bad_pool = NetConfig {
            pool: "10.0.0.0/24".parse().unwrap(),
            ..NetConfig::default()
        };
        assert!(NetManager::new(bad_pool).is_err());
        let j = serde_json::to_value(NetConfig::default()).unwrap();
        assert_eq!(j["pool"], "10.200.0.0/13");
        assert_eq!(j["egress_blocked"][2], "169.254.0.0/16");
        let c: NetConfig = serde_json::from_str("{}").unwrap();
        assert_eq!(c, NetConfig::default());
    }
}
