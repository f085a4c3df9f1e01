//! iptables rules: the host's dedicated `BHATTI-*` chains, per-owner sibling
//! rules, and each sandbox namespace's own ruleset with its egress policy.
//!
//! Rule text is written in the exact form `iptables -S` prints (option order
//! `-s -d -i -o -m -j`), so "is the chain already right?" is a plain
//! comparison and a repeated `ensure` changes nothing.

use std::net::Ipv4Addr;
use std::path::Path;

use bhatti_protocol::{PORT_CONTROL, PORT_FORWARD};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use super::cidr::Ipv4Cidr;
use super::cmd::{Cmd, Program};
use super::consts::{
    CHAIN_EGRESS, CHAIN_FWD, CHAIN_IN, CHAIN_OWN, CHAIN_POST, GUEST_IP, HOST_VETH_IP, NETNS_ETH,
    TAP_NAME,
};
use super::NetError;

/// What a sandbox's guest may open connections to. Enforced inside the
/// sandbox's namespace for traffic from `tap0` out of `eth0`; replies to
/// allowed connections and connections *to* the guest are not affected.
/// Sibling sandboxes of the same owner (its /24) are always reachable.
///
/// Serialized as `"public"`, `"deny"` or `{"allow": ["198.51.100.0/24", …]}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EgressPolicy {
    /// Anything except the manager's blocked networks
    /// ([`NetConfig::egress_blocked`](super::NetConfig), by default
    /// link-local and private ranges: cloud metadata, the host's LAN), and
    /// subject to the host firewall, which always hides other owners'
    /// sandboxes and the host itself.
    #[default]
    Public,
    /// Only the owner's own sandboxes.
    Deny,
    /// The owner's own sandboxes plus these networks.
    Allow(Vec<Ipv4Cidr>),
}

fn ctstate(state: &str) -> String {
    format!("-m conntrack --ctstate {state}")
}

/// One daemon's host chains and veth prefix (see [`super::scope`]): the
/// default pool's are the historical `BHATTI-FWD`, … and `bhv-`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HostChains {
    pub(crate) fwd: String,
    pub(crate) own: String,
    pub(crate) input: String,
    pub(crate) post: String,
    pub(crate) veth_prefix: String,
}

impl HostChains {
    pub(crate) fn of(scope: &super::scope::Scope) -> HostChains {
        HostChains {
            fwd: scope.chain(CHAIN_FWD),
            own: scope.chain(CHAIN_OWN),
            input: scope.chain(CHAIN_IN),
            post: scope.chain(CHAIN_POST),
            veth_prefix: scope.veth_prefix(),
        }
    }
}

/// The fixed rules of the host chains, as `iptables -S` prints them.
pub(crate) fn host_filter_rules(pool: Ipv4Cidr, c: &HostChains) -> (Vec<String>, Vec<String>) {
    let bhv = format!("{}+", c.veth_prefix);
    let (chain_fwd, chain_own, chain_in) = (&c.fwd, &c.own, &c.input);
    let est = ctstate("RELATED,ESTABLISHED");
    let fwd = vec![
        // Replies to anything a sandbox (or the host) started.
        format!("-A {chain_fwd} -d {pool} {est} -j ACCEPT"),
        // Siblings of one owner: one rule per owner /24 with live sandboxes.
        format!("-A {chain_fwd} -j {chain_own}"),
        // Any other sandbox-to-sandbox traffic crosses owners.
        format!("-A {chain_fwd} -s {pool} -d {pool} -j DROP"),
        // Egress; the per-sandbox policy was already applied in its netns.
        format!("-A {chain_fwd} -s {pool} -i {bhv} -j ACCEPT"),
        // Nobody outside the pool may open connections to a sandbox.
        format!("-A {chain_fwd} -d {pool} -j DROP"),
        // Anything else from a sandbox veth has a forged source.
        format!("-A {chain_fwd} -i {bhv} -j DROP"),
    ];
    let input = vec![
        // Replies to the daemon's own connections (agent, forwards).
        format!("-A {chain_in} -i {bhv} {est} -j ACCEPT"),
        // Guests never open connections to the host (API, SSH, …).
        format!("-A {chain_in} -i {bhv} -j DROP"),
        format!("-A {chain_in} -s {pool} {} -j DROP", ctstate("NEW")),
    ];
    (fwd, input)
}

pub(crate) fn host_nat_rules(pool: Ipv4Cidr, c: &HostChains) -> Vec<String> {
    vec![format!("-A {} -s {pool} ! -d {pool} -j MASQUERADE", c.post)]
}

fn owner_rule(subnet: Ipv4Cidr) -> Vec<String> {
    [
        "-s",
        &subnet.to_string(),
        "-d",
        &subnet.to_string(),
        "-j",
        "ACCEPT",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// `iptables -S <chain>` `-A` lines, or `None` if the chain does not exist.
fn chain_rules(table: &str, chain: &str) -> Result<Option<Vec<String>>, NetError> {
    let out = Cmd::iptables()
        .args(["-t", table, "-S", chain])
        .run_if_ok()?;
    Ok(out.map(|out| {
        out.lines()
            .filter(|l| l.starts_with("-A "))
            .map(str::to_string)
            .collect()
    }))
}

fn chain_exists(table: &str, chain: &str) -> Result<bool, NetError> {
    Cmd::iptables().args(["-t", table, "-S", chain]).succeeds()
}

/// Creates an empty chain unless it exists. Tolerates a concurrent creator.
fn ensure_chain(table: &str, chain: &str) -> Result<bool, NetError> {
    if chain_exists(table, chain)? {
        return Ok(false);
    }
    match Cmd::iptables().args(["-t", table, "-N", chain]).run() {
        Ok(_) => Ok(true),
        Err(e) if chain_exists(table, chain)? => {
            warn!(error = %e, "chain appeared concurrently");
            Ok(false)
        }
        Err(e) => Err(e),
    }
}

/// Inserts `-j <target>` at position 1 of `parent` unless such a jump exists.
fn ensure_jump(table: &str, parent: &str, target: &str) -> Result<bool, NetError> {
    let exists = Cmd::iptables()
        .args(["-t", table, "-C", parent, "-j", target])
        .succeeds()?;
    if exists {
        return Ok(false);
    }
    Cmd::iptables()
        .args(["-t", table, "-I", parent, "1", "-j", target])
        .run()?;
    Ok(true)
}

/// Installs or repairs the host chains and jumps. Returns whether anything
/// changed. Chains whose content differs are replaced atomically with
/// `iptables-restore --noflush`; `BHATTI-OWN` is created but never flushed.
pub(crate) fn ensure_host_chains(pool: Ipv4Cidr, c: &HostChains) -> Result<bool, NetError> {
    let (fwd, input) = host_filter_rules(pool, c);
    let nat = host_nat_rules(pool, c);
    let mut changed = ensure_chain("filter", &c.own)?;

    let mut filter = String::new();
    for (chain, rules) in [(&c.fwd, &fwd), (&c.input, &input)] {
        if chain_rules("filter", chain)?.as_ref() != Some(rules) {
            filter.push_str(&format!(":{chain} - [0:0]\n"));
            for r in rules {
                filter.push_str(r);
                filter.push('\n');
            }
        }
    }
    let mut restore = String::new();
    if !filter.is_empty() {
        restore.push_str(&format!("*filter\n{filter}COMMIT\n"));
    }
    if chain_rules("nat", &c.post)?.as_ref() != Some(&nat) {
        restore.push_str(&format!("*nat\n:{} - [0:0]\n", c.post));
        for r in &nat {
            restore.push_str(r);
            restore.push('\n');
        }
        restore.push_str("COMMIT\n");
    }
    if !restore.is_empty() {
        info!("installing host firewall chains");
        Cmd::new(Program::IptablesRestore)
            .arg("--noflush")
            .stdin(restore)
            .run()?;
        changed = true;
    }
    changed |= ensure_jump("filter", "FORWARD", &c.fwd)?;
    changed |= ensure_jump("filter", "INPUT", &c.input)?;
    changed |= ensure_jump("nat", "POSTROUTING", &c.post)?;
    Ok(changed)
}

/// Removes the jumps and the `BHATTI-*` chains. Missing pieces are fine.
pub(crate) fn remove_host_chains(c: &HostChains) -> Result<(), NetError> {
    for (table, parent, chain) in [
        ("filter", "FORWARD", c.fwd.as_str()),
        ("filter", "INPUT", c.input.as_str()),
        ("nat", "POSTROUTING", c.post.as_str()),
    ] {
        // A jump could have been inserted twice by hand; remove them all.
        while Cmd::iptables()
            .args(["-t", table, "-C", parent, "-j", chain])
            .succeeds()?
        {
            Cmd::iptables()
                .args(["-t", table, "-D", parent, "-j", chain])
                .run()?;
        }
    }
    for (table, chain) in [
        ("filter", c.fwd.as_str()),
        ("filter", c.input.as_str()),
        ("filter", c.own.as_str()),
        ("nat", c.post.as_str()),
    ] {
        if chain_exists(table, chain)? {
            Cmd::iptables().args(["-t", table, "-F", chain]).run()?;
        }
    }
    for (table, chain) in [
        ("filter", c.fwd.as_str()),
        ("filter", c.input.as_str()),
        ("filter", c.own.as_str()),
        ("nat", c.post.as_str()),
    ] {
        if chain_exists(table, chain)? {
            Cmd::iptables().args(["-t", table, "-X", chain]).run()?;
        }
    }
    Ok(())
}

/// Lets the sandboxes of one owner reach each other.
pub(crate) fn ensure_owner_rule(c: &HostChains, subnet: Ipv4Cidr) -> Result<(), NetError> {
    let rule = owner_rule(subnet);
    if !Cmd::iptables()
        .args(["-C", c.own.as_str()])
        .args(rule.clone())
        .succeeds()?
    {
        Cmd::iptables()
            .args(["-A", c.own.as_str()])
            .args(rule)
            .run()?;
    }
    Ok(())
}

pub(crate) fn remove_owner_rule(c: &HostChains, subnet: Ipv4Cidr) -> Result<(), NetError> {
    let rule = owner_rule(subnet);
    while Cmd::iptables()
        .args(["-C", c.own.as_str()])
        .args(rule.clone())
        .succeeds()?
    {
        Cmd::iptables()
            .args(["-D", c.own.as_str()])
            .args(rule.clone())
            .run()?;
    }
    Ok(())
}

/// The owner subnets that currently have a sibling rule.
pub(crate) fn owner_rule_subnets(c: &HostChains) -> Result<Vec<Ipv4Cidr>, NetError> {
    let prefix = format!("-A {} -s ", c.own);
    Ok(chain_rules("filter", &c.own)?
        .unwrap_or_default()
        .iter()
        .filter_map(|l| l.strip_prefix(&prefix)?.split(' ').next()?.parse().ok())
        .collect())
}

/// How a refused destination is answered. REJECT rather than DROP: the
/// guest's own user gets an immediate "prohibited" instead of a hang, and
/// there is nothing to hide from them.
const REJECT: &str = "-j REJECT --reject-with icmp-admin-prohibited";

/// The egress chain. `blocked` applies to [`EgressPolicy::Public`] only: an
/// allow-list allows exactly what it lists.
fn egress_rules(
    owner_subnet: Ipv4Cidr,
    policy: &EgressPolicy,
    blocked: &[Ipv4Cidr],
) -> Vec<String> {
    let accept = |c: &Ipv4Cidr| format!("-A {CHAIN_EGRESS} -d {c} -j ACCEPT");
    let reject = format!("-A {CHAIN_EGRESS} {REJECT}");
    match policy {
        EgressPolicy::Public if blocked.is_empty() => vec![format!("-A {CHAIN_EGRESS} -j ACCEPT")],
        // The owner's sandboxes first: the pool usually lies in a blocked range.
        EgressPolicy::Public => std::iter::once(accept(&owner_subnet))
            .chain(
                blocked
                    .iter()
                    .map(|c| format!("-A {CHAIN_EGRESS} -d {c} {REJECT}")),
            )
            .chain(std::iter::once(format!("-A {CHAIN_EGRESS} -j ACCEPT")))
            .collect(),
        EgressPolicy::Deny => vec![accept(&owner_subnet), reject],
        EgressPolicy::Allow(cidrs) => std::iter::once(accept(&owner_subnet))
            .chain(cidrs.iter().map(accept))
            .chain(std::iter::once(reject))
            .collect(),
    }
}

/// The complete iptables ruleset of a fresh sandbox namespace.
pub(crate) fn netns_ruleset(
    ext_ip: Ipv4Addr,
    owner_subnet: Ipv4Cidr,
    policy: &EgressPolicy,
    blocked: &[Ipv4Cidr],
) -> String {
    let g = GUEST_IP;
    let mut s = String::new();
    s.push_str("*filter\n:INPUT ACCEPT [0:0]\n:FORWARD DROP [0:0]\n:OUTPUT ACCEPT [0:0]\n");
    s.push_str(&format!(":{CHAIN_EGRESS} - [0:0]\n"));
    // The guest may only send as itself.
    s.push_str(&format!("-A FORWARD ! -s {g}/32 -i {TAP_NAME} -j DROP\n"));
    // The guest's answers on connections opened *to* it (the daemon's agent
    // connections, siblings, forwarded ports).
    s.push_str(&format!(
        "-A FORWARD -i {TAP_NAME} -o {NETNS_ETH} {} --ctdir REPLY -j ACCEPT\n",
        ctstate("RELATED,ESTABLISHED")
    ));
    // Everything the guest itself opened goes through the policy, packet by
    // packet and not just the first: a policy change also cuts connections
    // that were established before it.
    s.push_str(&format!(
        "-A FORWARD -i {TAP_NAME} -o {NETNS_ETH} -j {CHAIN_EGRESS}\n"
    ));
    s.push_str(&format!(
        "-A FORWARD {} -j ACCEPT\n",
        ctstate("RELATED,ESTABLISHED")
    ));
    // The agent's ports are the daemon's alone: it connects from the host
    // veth's address, and a sibling sandbox (which may reach the guest's
    // other ports) has no business there — token-less connections from it
    // would only spend the agent's pre-auth budget.
    s.push_str(&format!(
        "-A FORWARD -d {g}/32 -i {NETNS_ETH} -o {TAP_NAME} -p tcp -m multiport \
         --dports {PORT_CONTROL},{PORT_FORWARD} ! -s {HOST_VETH_IP}/32 -j DROP\n"
    ));
    // Who may connect *to* the guest is the host firewall's decision.
    s.push_str(&format!(
        "-A FORWARD -d {g}/32 -i {NETNS_ETH} -o {TAP_NAME} -j ACCEPT\n"
    ));
    for r in egress_rules(owner_subnet, policy, blocked) {
        s.push_str(&r);
        s.push('\n');
    }
    s.push_str("COMMIT\n");
    s.push_str("*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n");
    // Every port of the external address belongs to the guest.
    s.push_str(&format!(
        "-A PREROUTING -d {ext_ip}/32 -i {NETNS_ETH} -j DNAT --to-destination {g}\n"
    ));
    s.push_str(&format!(
        "-A POSTROUTING -s {g}/32 -o {NETNS_ETH} -j SNAT --to-source {ext_ip}\n"
    ));
    s.push_str("COMMIT\n");
    s
}

/// Which iptables backend holds a sandbox namespace's rules. A namespace is
/// new and private, so its rules need not live where the host's do: fresh
/// ones get the legacy backend, whose restore into an empty namespace takes
/// about a tenth of iptables-nft's (it is on a pool claim's critical path;
/// docs/decisions.md "Sandbox namespaces on iptables-legacy"). A host whose
/// legacy backend fails (no binary, no `ip_tables` module) falls back to
/// the default `iptables` for the rest of the daemon's life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Backend {
    Legacy,
    Default,
}

/// Set once the legacy backend failed on this host.
static LEGACY_FAILED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

impl Backend {
    /// What a fresh namespace gets.
    fn preferred() -> Backend {
        if LEGACY_FAILED.load(std::sync::atomic::Ordering::Relaxed) {
            Backend::Default
        } else {
            Backend::Legacy
        }
    }

    /// The backend that holds `netns`'s rules (its egress chain), if any:
    /// a namespace made by an older daemon (or after a fallback) keeps the
    /// default backend, and its rules are changed there.
    fn holding(netns: &Path) -> Option<Backend> {
        [Backend::Legacy, Backend::Default].into_iter().find(|b| {
            Cmd::new(b.list())
                .args(["-S", CHAIN_EGRESS])
                .in_netns(netns.to_path_buf())
                .succeeds()
                .unwrap_or(false)
        })
    }

    fn list(self) -> Program {
        match self {
            Backend::Legacy => Program::IptablesLegacy,
            Backend::Default => Program::Iptables,
        }
    }

    fn restore(self) -> Program {
        match self {
            Backend::Legacy => Program::IptablesLegacyRestore,
            Backend::Default => Program::IptablesRestore,
        }
    }
}

fn restore_in(
    backend: Backend,
    netns: &Path,
    rules: String,
    noflush: bool,
) -> Result<(), NetError> {
    let mut cmd = Cmd::new(backend.restore());
    if noflush {
        cmd = cmd.arg("--noflush");
    }
    cmd.in_netns(netns.to_path_buf())
        .stdin(rules)
        .run()
        .map(drop)
}

/// Installs the full ruleset in a namespace (replacing its tables). `fresh`:
/// the namespace was just made and holds no rules yet; otherwise they are
/// replaced in the backend that holds them.
pub(crate) fn install_netns_rules(
    netns: &Path,
    ext_ip: Ipv4Addr,
    owner_subnet: Ipv4Cidr,
    policy: &EgressPolicy,
    blocked: &[Ipv4Cidr],
    fresh: bool,
) -> Result<(), NetError> {
    let rules = netns_ruleset(ext_ip, owner_subnet, policy, blocked);
    let backend = match fresh {
        true => Backend::preferred(),
        false => Backend::holding(netns).unwrap_or_else(Backend::preferred),
    };
    match restore_in(backend, netns, rules.clone(), false) {
        Err(e) if backend == Backend::Legacy && fresh => {
            warn!(error = %e, "iptables-legacy failed in a sandbox namespace; using iptables from now on");
            LEGACY_FAILED.store(true, std::sync::atomic::Ordering::Relaxed);
            // One table may have been committed before another failed: rules
            // left in the legacy tables would apply beside the default ones.
            let empty = "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n\
                         *nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\nCOMMIT\n";
            match restore_in(Backend::Legacy, netns, empty.to_string(), false) {
                // No legacy binary: nothing can have been committed.
                Ok(()) | Err(NetError::Spawn { .. }) => {}
                Err(e) => return Err(e),
            }
            restore_in(Backend::Default, netns, rules, false)
        }
        res => res,
    }
}

/// Atomically replaces the egress chain of a live namespace, in the backend
/// that holds its rules.
pub(crate) fn replace_egress(
    netns: &Path,
    owner_subnet: Ipv4Cidr,
    policy: &EgressPolicy,
    blocked: &[Ipv4Cidr],
) -> Result<(), NetError> {
    let mut s = format!("*filter\n:{CHAIN_EGRESS} - [0:0]\n");
    for r in egress_rules(owner_subnet, policy, blocked) {
        s.push_str(&r);
        s.push('\n');
    }
    s.push_str("COMMIT\n");
    let backend = Backend::holding(netns).unwrap_or_else(Backend::preferred);
    restore_in(backend, netns, s, true)
}

/// The rules of a sandbox namespace's egress chain as `iptables -S` prints
/// them, from whichever backend holds them (`None`: no such chain).
pub fn netns_egress_chain(netns: &Path) -> Result<Option<String>, NetError> {
    match Backend::holding(netns) {
        Some(b) => Cmd::new(b.list())
            .args(["-S", CHAIN_EGRESS])
            .in_netns(netns.to_path_buf())
            .run()
            .map(Some),
        None => Ok(None),
    }
}

/// Docker's chain for user rules in the host's `FORWARD`; dockerd creates
/// it and never flushes it.
pub(crate) const DOCKER_USER: &str = "DOCKER-USER";
/// Comment prefix of every rule the Docker engine puts into [`DOCKER_USER`]:
/// `bhatti-egress:<network name>`.
pub(crate) const DOCKER_TAG_PREFIX: &str = "bhatti-egress:";
/// Prefix of the per-network chains the `DOCKER-USER` rules jump to.
const DOCKER_CHAIN_PREFIX: &str = "BHATTI-DKR-";

/// The chain of one Docker network's egress rules: `BHATTI-DKR-` and 12
/// hex characters of the tag's SHA-256 (chain names are short).
fn docker_chain(tag: &str) -> String {
    use sha2::Digest;
    let h = sha2::Sha256::digest(tag.as_bytes());
    let hex: String = h.iter().take(6).map(|b| format!("{b:02x}")).collect();
    format!("{DOCKER_CHAIN_PREFIX}{hex}")
}

/// The rules of a network's chain, as `iptables -S` prints them: DNS to
/// the resolvers Docker forwards to from inside the container (those in a
/// blocked range), then REJECT for each blocked network.
fn docker_chain_rules(chain: &str, blocked: &[Ipv4Cidr], dns: &[Ipv4Addr]) -> Vec<String> {
    let mut rules = Vec::new();
    for d in dns
        .iter()
        .filter(|d| blocked.iter().any(|c| c.contains(**d)))
    {
        for proto in ["udp", "tcp"] {
            rules.push(format!(
                "-A {chain} -d {d}/32 -p {proto} -m {proto} --dport 53 -j RETURN"
            ));
        }
    }
    rules.extend(
        blocked
            .iter()
            .map(|c| format!("-A {chain} -d {c} {REJECT}")),
    );
    rules
}

/// The `DOCKER-USER` jump of a network: everything a container on `bridge`
/// sends out of the bridge (traffic between two containers of the bridge,
/// which crosses `FORWARD` with bridge netfilter on, is not affected).
fn docker_jump(bridge: &str, tag: &str) -> Vec<String> {
    let chain = docker_chain(tag);
    [
        "-i",
        bridge,
        "!",
        "-o",
        bridge,
        "-m",
        "comment",
        "--comment",
        tag,
        "-j",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain(std::iter::once(chain))
    .collect()
}

fn check_docker_name(what: &str, s: &str) -> Result<(), NetError> {
    let ok = !s.is_empty()
        && s.len() <= 200
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-:".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(NetError::InvalidConfig(format!("{what} {s:?}")))
    }
}

/// Makes containers on the Docker bridge `bridge` (of the network whose
/// rules carry `tag`) unable to open connections to `blocked`, except DNS
/// to those of `dns` inside a blocked range: a chain of the network's own
/// (replaced atomically when it differs) and one jump to it at the top of
/// `DOCKER-USER`; a jump with that tag for another bridge (a network that
/// was re-created) is removed. Idempotent. Fails if `DOCKER-USER` does not
/// exist (dockerd runs with `--iptables=false`).
pub(crate) fn ensure_docker_block(
    bridge: &str,
    tag: &str,
    blocked: &[Ipv4Cidr],
    dns: &[Ipv4Addr],
) -> Result<(), NetError> {
    check_docker_name("bridge", bridge)?;
    check_docker_name("rule tag", tag)?;
    if blocked.is_empty() {
        return remove_docker_block(tag);
    }
    if !chain_exists("filter", DOCKER_USER)? {
        return Err(NetError::InvalidConfig(format!(
            "the {DOCKER_USER} chain does not exist (is dockerd running with --iptables=false?): \
             cannot keep Docker sandboxes away from {}; set egress_blocked_cidrs: [] to run without",
            blocked
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    let chain = docker_chain(tag);
    let rules = docker_chain_rules(&chain, blocked, dns);
    if chain_rules("filter", &chain)?.as_ref() != Some(&rules) {
        let mut restore = format!("*filter\n:{chain} - [0:0]\n");
        for r in &rules {
            restore.push_str(r);
            restore.push('\n');
        }
        restore.push_str("COMMIT\n");
        Cmd::new(Program::IptablesRestore)
            .arg("--noflush")
            .stdin(restore)
            .run()?;
    }
    let jump = docker_jump(bridge, tag);
    for (t, args) in docker_tagged_rules()? {
        if t == tag && args != jump {
            Cmd::iptables()
                .args(["-D", DOCKER_USER])
                .args(args)
                .run_if_ok()?;
        }
    }
    let present = Cmd::iptables()
        .args(["-C", DOCKER_USER])
        .args(jump.clone())
        .succeeds()?;
    if !present {
        Cmd::iptables()
            .args(["-I", DOCKER_USER, "1"])
            .args(jump)
            .run()?;
    }
    Ok(())
}

/// `DOCKER-USER` rules carrying a `bhatti-egress:…` tag: (tag, rule
/// arguments after the chain name, quotes removed).
fn docker_tagged_rules() -> Result<Vec<(String, Vec<String>)>, NetError> {
    let Some(lines) = chain_rules("filter", DOCKER_USER)? else {
        return Ok(Vec::new());
    };
    let prefix = format!("-A {DOCKER_USER} ");
    Ok(lines
        .iter()
        .filter_map(|l| {
            let args: Vec<String> = l
                .strip_prefix(&prefix)?
                .split_whitespace()
                .map(|w| w.trim_matches('"').to_string())
                .collect();
            let i = args.iter().position(|a| a == "--comment")?;
            let tag = args.get(i.checked_add(1)?)?;
            tag.starts_with(DOCKER_TAG_PREFIX)
                .then(|| (tag.clone(), args.clone()))
        })
        .collect())
}

/// The tags of every `bhatti-egress:…` rule in `DOCKER-USER`.
pub(crate) fn docker_block_tags() -> Result<Vec<String>, NetError> {
    let mut tags: Vec<String> = docker_tagged_rules()?.into_iter().map(|(t, _)| t).collect();
    tags.sort();
    tags.dedup();
    Ok(tags)
}

/// Removes every `DOCKER-USER` rule tagged exactly `tag` and the network's
/// chain; nothing else.
pub(crate) fn remove_docker_block(tag: &str) -> Result<(), NetError> {
    for (t, args) in docker_tagged_rules()? {
        if t == tag {
            Cmd::iptables()
                .args(["-D", DOCKER_USER])
                .args(args)
                .run_if_ok()?;
        }
    }
    let chain = docker_chain(tag);
    if chain_exists("filter", &chain)? {
        Cmd::iptables().args(["-F", &chain]).run()?;
        Cmd::iptables().args(["-X", &chain]).run_if_ok()?;
    }
    Ok(())
}

/// The IPv4 resolvers of a `resolv.conf` text.
pub(crate) fn resolv_conf_nameservers(text: &str) -> Vec<Ipv4Addr> {
    text.lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            (w.next()? == "nameserver").then_some(())?;
            w.next()?.parse().ok()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_serde() {
        let p = EgressPolicy::Allow(vec!["198.18.0.0/30".parse().unwrap()]);
        let j = serde_json::to_string(&p).unwrap();
        assert_eq!(j, r#"{"allow":["198.18.0.0/30"]}"#);
        assert_eq!(serde_json::from_str::<EgressPolicy>(&j).unwrap(), p);
        assert_eq!(
            serde_json::from_str::<EgressPolicy>(r#""deny""#).unwrap(),
            EgressPolicy::Deny
        );
        assert_eq!(EgressPolicy::default(), EgressPolicy::Public);
    }

    #[test]
    fn egress_chain() {
        let owner: Ipv4Cidr = "10.128.1.0/24".parse().unwrap();
        assert_eq!(
            egress_rules(owner, &EgressPolicy::Public, &[]),
            vec!["-A BHATTI-EGRESS -j ACCEPT"]
        );
        let blocked = super::super::DEFAULT_EGRESS_BLOCKED;
        let public = egress_rules(owner, &EgressPolicy::Public, &blocked);
        assert_eq!(public.len(), 7, "{public:?}");
        assert_eq!(public[0], "-A BHATTI-EGRESS -d 10.128.1.0/24 -j ACCEPT");
        assert!(public.contains(
            &"-A BHATTI-EGRESS -d 169.254.0.0/16 -j REJECT --reject-with icmp-admin-prohibited"
                .to_string()
        ));
        assert_eq!(public[6], "-A BHATTI-EGRESS -j ACCEPT");
        // An allow-list allows what it lists, blocked range or not.
        let allow = egress_rules(
            owner,
            &EgressPolicy::Allow(vec!["198.18.0.0/30".parse().unwrap()]),
            &blocked,
        );
        assert_eq!(allow.len(), 3);
        assert_eq!(allow[0], "-A BHATTI-EGRESS -d 10.128.1.0/24 -j ACCEPT");
        assert_eq!(allow[1], "-A BHATTI-EGRESS -d 198.18.0.0/30 -j ACCEPT");
        assert!(allow[2].contains("REJECT"));
        let rs = netns_ruleset(
            Ipv4Addr::new(10, 128, 1, 2),
            owner,
            &EgressPolicy::Deny,
            &blocked,
        );
        assert!(rs.contains("-j DNAT --to-destination 172.31.255.2"));
        assert!(rs.contains("-j SNAT --to-source 10.128.1.2"));
    }

    #[test]
    fn docker_rules() {
        let blocked = [
            "10.0.0.0/8".parse().unwrap(),
            "169.254.0.0/16".parse().unwrap(),
        ];
        let tag = "bhatti-egress:bhatti-owner-3";
        let chain = docker_chain(tag);
        assert_eq!(chain.len(), "BHATTI-DKR-".len() + 12);
        assert!(chain.len() <= 28);
        assert_ne!(chain, docker_chain("bhatti-egress:bhatti-owner-4"));
        let dns = [Ipv4Addr::new(10, 255, 255, 53), Ipv4Addr::new(1, 1, 1, 1)];
        let r = docker_chain_rules(&chain, &blocked, &dns);
        // Only the resolver inside a blocked range gets an exception, first.
        assert_eq!(r.len(), 4, "{r:?}");
        assert_eq!(
            r[0],
            format!("-A {chain} -d 10.255.255.53/32 -p udp -m udp --dport 53 -j RETURN")
        );
        assert!(r[1].contains("-p tcp"));
        assert_eq!(
            r[3],
            format!("-A {chain} -d 169.254.0.0/16 -j REJECT --reject-with icmp-admin-prohibited")
        );
        assert_eq!(
            docker_jump("br-0123456789ab", tag).join(" "),
            format!(
                "-i br-0123456789ab ! -o br-0123456789ab -m comment --comment {tag} -j {chain}"
            )
        );
        assert!(check_docker_name("bridge", "br-x y").is_err());
        assert!(check_docker_name("bridge", "br-\"x").is_err());
        assert!(check_docker_name("bridge", "br-0123456789ab").is_ok());
        assert_eq!(
            resolv_conf_nameservers(
                "# x\nnameserver 10.255.255.53\nnameserver ::1\nsearch a\nnameserver 1.1.1.1 \n"
            ),
            dns
        );
    }
}
