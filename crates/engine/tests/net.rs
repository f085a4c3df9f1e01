//! Per-sandbox network namespaces against the real kernel. Needs root
//! (skipped with a message otherwise).
//!
//! There is no VM here, so each sandbox's `tap0` is replaced by a veth whose
//! other end (`gst0`) sits in a test namespace `bhatti-test-guest-*` holding
//! the guest address `172.31.255.2/30` — the guest is simulated at the
//! packet level. "The internet" is a test namespace `bhatti-test-outside`
//! behind a veth with benchmark-range addresses (198.18.0.0/30).
//!
//! Network rule: traffic only goes to addresses inside namespaces these
//! tests created (sandbox external addresses, fake guests, the outside
//! namespace, the host veths' 169.254.1.1). The pool has an `unreachable`
//! route on the host, so even a mistake cannot leak pool traffic outside.
//!
//! Tests sharing host state (the firewall) run in parallel under a read
//! lock; the ones that inspect or reset global state take the write lock.
//! Every object is removed by a Drop guard, also on failure; the host
//! firewall is removed when the last test using it finishes.
#![allow(clippy::unwrap_used, clippy::arithmetic_side_effects)] // a test panics to report its failure; its sums are on test data

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bhatti_engine::net::{
    enter_netns_on_spawn, netns_path, run_in_netns, EgressPolicy, NetConfig, NetError, NetManager,
    SandboxNet, GATEWAY_IP, GUEST_IP, HOST_VETH_IP, NETNS_DIR,
};

// ---------------------------------------------------------------- harness

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

macro_rules! require_root {
    () => {
        assert!(is_root(), "needs root (network namespaces, iptables)");
    };
}

/// The suite's manager: a scratch pool of its own (never the host daemon's),
/// its own chain and veth names, its own ledger. Everything below touches
/// only what it made.
fn mgr() -> &'static NetManager {
    static M: OnceLock<NetManager> = OnceLock::new();
    M.get_or_init(|| NetManager::scratch(ledger()).expect("manager"))
}

fn ledger() -> std::path::PathBuf {
    std::env::temp_dir().join(format!("bhatti-net-test-{}", std::process::id()))
}

/// Another manager on the suite's pool and ledger (a "previous daemon run").
fn peer(cfg: NetConfig) -> NetManager {
    NetManager::new(NetConfig {
        pool: mgr().config().pool,
        ledger_dir: Some(ledger()),
        ..cfg
    })
    .expect("peer manager")
}

static EXCLUSIVE: RwLock<()> = RwLock::new(());
/// (tests holding the host firewall, ip_forward before the first one).
static HOST: Mutex<(usize, Option<String>)> = Mutex::new((0, None));

#[allow(dead_code)]
enum Access {
    Shared(RwLockReadGuard<'static, ()>),
    Exclusive(RwLockWriteGuard<'static, ()>),
}

/// Holds the host firewall installed for the duration of a test.
struct HostGuard {
    _access: Access,
}

fn host(exclusive: bool) -> HostGuard {
    let access = if exclusive {
        Access::Exclusive(EXCLUSIVE.write().unwrap_or_else(|p| p.into_inner()))
    } else {
        Access::Shared(EXCLUSIVE.read().unwrap_or_else(|p| p.into_inner()))
    };
    let mut h = HOST.lock().unwrap_or_else(|p| p.into_inner());
    if h.0 == 0 {
        h.1 = std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").ok();
        mgr().ensure_host_firewall().expect("ensure_host_firewall");
    }
    h.0 += 1;
    HostGuard { _access: access }
}

impl Drop for HostGuard {
    fn drop(&mut self) {
        let mut h = HOST.lock().unwrap_or_else(|p| p.into_inner());
        h.0 -= 1;
        if h.0 == 0 {
            if let Err(e) = mgr().remove_host_firewall() {
                eprintln!("cleanup: remove_host_firewall: {e}");
            }
            if let Some(v) = h.1.take() {
                let _ = std::fs::write("/proc/sys/net/ipv4/ip_forward", v.trim());
            }
        }
    }
}

fn run(prog: &str, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(prog).args(args).output().expect("spawn");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `ip …`, panicking with stderr on failure.
fn ip(args: &[&str]) -> String {
    let (ok, out, err) = run("ip", args);
    assert!(ok, "ip {}: {err}", args.join(" "));
    out
}

fn ip_ok(args: &[&str]) -> bool {
    run("ip", args).0
}

fn ns_path(name: &str) -> PathBuf {
    Path::new(NETNS_DIR).join(name)
}

fn netns_listed(name: &str) -> bool {
    ip(&["netns", "list"])
        .lines()
        .any(|l| l.split_whitespace().next() == Some(name))
}

static COUNTER: AtomicU32 = AtomicU32::new(1);

fn next_n() -> u32 {
    COUNTER.fetch_add(1, Ordering::SeqCst)
}

/// A fresh sandbox id whose first 11 chars are unique in this run.
fn new_id() -> String {
    format!(
        "{:06x}{:05x}c0ffe",
        std::process::id() & 0xff_ffff,
        next_n()
    )
}

fn mac(n: u32) -> String {
    format!("02:bb:00:00:{:02x}:{:02x}", (n >> 8) & 0xff, n & 0xff)
}

/// A test-owned namespace, deleted on drop.
struct TestNs(String);

impl TestNs {
    fn new(name: String) -> TestNs {
        if netns_listed(&name) {
            ip(&["netns", "del", &name]); // stale from a crashed run
        }
        ip(&["netns", "add", &name]);
        TestNs(name)
    }
    fn path(&self) -> PathBuf {
        ns_path(&self.0)
    }
}

impl Drop for TestNs {
    fn drop(&mut self) {
        let _ = run("ip", &["netns", "del", &self.0]);
    }
}

/// A sandbox network with a simulated guest; torn down on drop.
struct Sbx {
    net: SandboxNet,
    // Dropped after the teardown in `drop`.
    guest: Option<TestNs>,
}

impl Sbx {
    fn new(owner: u16, policy: &EgressPolicy) -> Sbx {
        Sbx::with_id(&new_id(), owner, policy, None)
    }

    fn with_id(id: &str, owner: u16, policy: &EgressPolicy, ext: Option<Ipv4Addr>) -> Sbx {
        Sbx::try_with(mgr(), id, owner, policy, ext).expect("setup_sandbox")
    }

    fn try_with(
        m: &NetManager,
        id: &str,
        owner: u16,
        policy: &EgressPolicy,
        ext: Option<Ipv4Addr>,
    ) -> Result<Sbx, NetError> {
        let n = next_n();
        let net = m.setup_sandbox(id, owner, &mac(n), policy, ext)?;
        let mut sbx = Sbx { net, guest: None };
        sbx.attach_fake_guest(n);
        Ok(sbx)
    }

    /// Replaces tap0 by a veth to a namespace playing the guest.
    fn attach_fake_guest(&mut self, n: u32) {
        let sns = self.net.netns.clone();
        let guest = TestNs::new(format!("bhatti-test-guest-{}-{n}", std::process::id()));
        let g = guest.0.clone();
        self.guest = Some(guest);
        ip(&["-n", &sns, "link", "del", "tap0"]);
        ip(&[
            "-n", &sns, "link", "add", "tap0", "type", "veth", "peer", "name", "gst0", "netns", &g,
        ]);
        ip(&[
            "-n",
            &sns,
            "addr",
            "add",
            &format!("{GATEWAY_IP}/30"),
            "dev",
            "tap0",
        ]);
        ip(&["-n", &sns, "link", "set", "tap0", "up"]);
        ip(&["-n", &g, "link", "set", "lo", "up"]);
        ip(&[
            "-n",
            &g,
            "link",
            "set",
            "gst0",
            "address",
            &self.net.guest_mac,
        ]);
        ip(&[
            "-n",
            &g,
            "addr",
            "add",
            &format!("{GUEST_IP}/30"),
            "dev",
            "gst0",
        ]);
        ip(&["-n", &g, "link", "set", "gst0", "up"]);
        ip(&[
            "-n",
            &g,
            "route",
            "add",
            "default",
            "via",
            &GATEWAY_IP.to_string(),
        ]);
    }

    fn guest_path(&self) -> PathBuf {
        self.guest.as_ref().expect("guest").path()
    }

    fn serve(&self, tag: &str) -> Server {
        Server::start(Some(&self.guest_path()), Ipv4Addr::UNSPECIFIED, tag)
    }

    fn ext(&self, port: u16) -> SocketAddrV4 {
        SocketAddrV4::new(self.net.ext_ip, port)
    }

    /// Connects from inside the guest.
    fn probe(&self, to: SocketAddrV4) -> io::Result<String> {
        probe(Some(&self.guest_path()), to)
    }
}

impl Drop for Sbx {
    fn drop(&mut self) {
        if let Err(e) = mgr().teardown_sandbox(&self.net) {
            eprintln!("cleanup: teardown {}: {e}", self.net.sandbox_id);
        }
    }
}

/// Tears a sandbox network down on drop (no fake guest).
struct Down<'a>(&'a NetManager, SandboxNet);

impl Drop for Down<'_> {
    fn drop(&mut self) {
        if let Err(e) = self.0.teardown_sandbox(&self.1) {
            eprintln!("cleanup: teardown {}: {e}", self.1.sandbox_id);
        }
    }
}

/// A TCP server that answers every connection with "<tag> <peer ip>".
struct Server {
    port: u16,
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl Server {
    fn start(ns: Option<&Path>, bind_ip: Ipv4Addr, tag: &str) -> Server {
        Server::start_on(ns, bind_ip, 0, tag)
    }

    fn start_on(ns: Option<&Path>, bind_ip: Ipv4Addr, port: u16, tag: &str) -> Server {
        let bind = move || TcpListener::bind((bind_ip, port));
        let listener = match ns {
            // The socket stays in the namespace it was created in.
            Some(p) => run_in_netns(p, bind).expect("enter netns"),
            None => bind(),
        }
        .expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let port = listener.local_addr().expect("addr").port();
        let stop = Arc::new(AtomicBool::new(false));
        let (stop2, tag) = (stop.clone(), tag.to_string());
        let handle = std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(60);
            while !stop2.load(Ordering::SeqCst) && Instant::now() < deadline {
                match listener.accept() {
                    Ok((mut s, peer)) => {
                        let _ = s.set_nonblocking(false);
                        let _ = write!(s, "{tag} {}", peer.ip());
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(5))
                    }
                    Err(_) => break,
                }
            }
        });
        Server {
            port,
            stop,
            handle: Some(handle),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

const FAIL_TIMEOUT: Duration = Duration::from_millis(1500);

/// Connects (from inside `from`, or from the host) and reads the greeting.
fn probe(from: Option<&Path>, to: SocketAddrV4) -> io::Result<String> {
    let f = move || -> io::Result<String> {
        let mut s = TcpStream::connect_timeout(&to.into(), FAIL_TIMEOUT)?;
        s.set_read_timeout(Some(Duration::from_secs(3)))?;
        let mut buf = String::new();
        s.read_to_string(&mut buf)?;
        if buf.is_empty() {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "no greeting"));
        }
        Ok(buf)
    };
    match from {
        Some(p) => run_in_netns(p, f).expect("enter netns"),
        None => f(),
    }
}

fn assert_blocked(r: io::Result<String>, what: &str) {
    match r {
        Ok(s) => panic!("{what}: expected to be blocked, got {s:?}"),
        Err(e) => eprintln!("{what}: blocked as expected ({e})"),
    }
}

/// The host rules of the manager's chains (not, say, the Docker engine's
/// `BHATTI-DKR-*` chains of a daemon running on this host).
fn bhatti_rules() -> String {
    let ours = mgr().host_chain_names();
    let mut s = String::new();
    for table in ["filter", "nat"] {
        let (ok, out, err) = run("iptables", &["-w", "-t", table, "-S"]);
        assert!(ok, "iptables -S: {err}");
        // Whole names: the host daemon's `BHATTI-FWD` is not ours.
        for l in out
            .lines()
            .filter(|l| l.split_whitespace().any(|w| ours.iter().any(|c| c == w)))
        {
            s.push_str(l);
            s.push('\n');
        }
    }
    s
}

fn pool_route() -> String {
    ip(&[
        "-4",
        "route",
        "show",
        "exact",
        &mgr().config().pool.to_string(),
    ])
}

// ------------------------------------------------------------------ tests

/// (1) Host firewall setup is idempotent, sits at position 1, and removal
/// leaves nothing behind.
#[test]
#[cfg_attr(not(bhatti_root), ignore = "needs root (network namespaces, iptables)")]
fn host_firewall_is_idempotent() {
    require_root!();
    let _h = host(true);
    let before = bhatti_rules();
    assert!(
        !mgr().ensure_host_firewall().unwrap(),
        "second ensure changed something"
    );
    assert_eq!(bhatti_rules(), before);
    let [fwd, _, input, post] = mgr().host_chain_names();
    for (table, chain, jump) in [
        ("filter", "FORWARD", fwd),
        ("filter", "INPUT", input),
        ("nat", "POSTROUTING", post),
    ] {
        let (_, out, _) = run("iptables", &["-w", "-t", table, "-S", chain]);
        let first = out.lines().find(|l| l.starts_with("-A "));
        assert_eq!(
            first,
            Some(format!("-A {chain} -j {jump}").as_str()),
            "{out}"
        );
    }
    assert!(pool_route().starts_with("unreachable"), "{}", pool_route());

    mgr().remove_host_firewall().unwrap();
    assert_eq!(bhatti_rules(), "");
    assert_eq!(pool_route().trim(), "");
    assert!(mgr().ensure_host_firewall().unwrap());
    assert!(!mgr().ensure_host_firewall().unwrap());
    assert_eq!(bhatti_rules(), before);
}

/// (2) The host reaches a TCP listener in the guest at `<ext ip>:port`,
/// from 169.254.1.1; the VMM launcher hook really enters the namespace.
#[test]
#[cfg_attr(not(bhatti_root), ignore = "needs root (network namespaces, iptables)")]
fn host_reaches_guest_via_ext_ip() {
    require_root!();
    let _h = host(false);
    let a = Sbx::new(11, &EgressPolicy::Public);
    assert_eq!(a.net.guest_ip, GUEST_IP);
    assert_eq!(a.net.netns, format!("bhatti-{}", a.net.sandbox_id));
    let srv = a.serve("guest-a");
    let got = probe(None, a.ext(srv.port)).expect("host -> guest");
    assert_eq!(got, format!("guest-a {HOST_VETH_IP}"));

    // enter_netns_on_spawn: a child process sees the sandbox's interfaces.
    let mut cmd = Command::new("ip");
    cmd.args(["-o", "-4", "addr", "show"]);
    enter_netns_on_spawn(&mut cmd, netns_path(&a.net.sandbox_id).unwrap()).unwrap();
    let out = String::from_utf8_lossy(&cmd.output().unwrap().stdout).into_owned();
    assert!(
        out.contains(&format!("eth0    inet {}/32", a.net.ext_ip)),
        "{out}"
    );
    assert!(
        out.contains(&format!("tap0    inet {GATEWAY_IP}/30")),
        "{out}"
    );
}

/// (3) Two sandboxes of one owner reach each other by external address
/// (the target sees the source's external address), even under `Deny`.
#[test]
#[cfg_attr(not(bhatti_root), ignore = "needs root (network namespaces, iptables)")]
fn siblings_of_one_owner_connect() {
    require_root!();
    let _h = host(false);
    let a = Sbx::new(12, &EgressPolicy::Public);
    let b = Sbx::new(12, &EgressPolicy::Public);
    let srv = b.serve("guest-b");
    let got = a.probe(b.ext(srv.port)).expect("A -> B");
    assert_eq!(got, format!("guest-b {}", a.net.ext_ip));
    mgr()
        .set_egress_policy(&a.net, &EgressPolicy::Deny)
        .unwrap();
    let got = a.probe(b.ext(srv.port)).expect("A -> B under Deny");
    assert_eq!(got, format!("guest-b {}", a.net.ext_ip));
}

/// (3b) The agent's ports (1024/1025) answer the daemon, which connects
/// from the host veth's address, and never a sibling; the sibling still
/// reaches the guest's other ports.
#[test]
#[cfg_attr(not(bhatti_root), ignore = "needs root (network namespaces, iptables)")]
fn agent_ports_answer_only_the_daemon() {
    require_root!();
    let _h = host(false);
    let a = Sbx::new(16, &EgressPolicy::Public);
    let b = Sbx::new(16, &EgressPolicy::Public);
    for port in [1024, 1025] {
        let agent = Server::start_on(Some(&b.guest_path()), Ipv4Addr::UNSPECIFIED, port, "agent");
        let got = probe(None, b.ext(agent.port)).expect("host -> agent port");
        assert!(got.starts_with("agent "), "{got}");
        assert_blocked(a.probe(b.ext(agent.port)), "sibling -> agent port");
    }
    let app = b.serve("app");
    let got = a.probe(b.ext(app.port)).expect("sibling -> app port");
    assert_eq!(got, format!("app {}", a.net.ext_ip));
}

/// (4) Sandboxes of different owners cannot connect, either way.
#[test]
#[cfg_attr(not(bhatti_root), ignore = "needs root (network namespaces, iptables)")]
fn other_owners_are_isolated() {
    require_root!();
    let _h = host(false);
    let a = Sbx::new(13, &EgressPolicy::Public);
    let b = Sbx::new(14, &EgressPolicy::Public);
    let sa = a.serve("guest-a");
    let sb = b.serve("guest-b");
    // Control: both are up and reachable from the host.
    probe(None, a.ext(sa.port)).expect("host -> A");
    probe(None, b.ext(sb.port)).expect("host -> B");
    assert_blocked(a.probe(b.ext(sb.port)), "owner 13 -> owner 14");
    assert_blocked(b.probe(a.ext(sa.port)), "owner 14 -> owner 13");
}

/// (5) A guest cannot open connections to the host's own services.
#[test]
#[cfg_attr(not(bhatti_root), ignore = "needs root (network namespaces, iptables)")]
fn guest_cannot_reach_host() {
    require_root!();
    let _h = host(false);
    let a = Sbx::new(15, &EgressPolicy::Public);
    // A host service on the host veth address (which exists once a sandbox
    // is up); control: the host itself reaches it.
    let srv = Server::start(None, HOST_VETH_IP, "host");
    let to = SocketAddrV4::new(HOST_VETH_IP, srv.port);
    probe(None, to).expect("host -> own service");
    assert_blocked(a.probe(to), "guest -> host service");
    // Nor anything on the sandbox namespace itself.
    assert_blocked(
        a.probe(SocketAddrV4::new(GATEWAY_IP, srv.port)),
        "guest -> gateway",
    );
}

/// (7) Teardown removes namespace, veth and route, is idempotent, handles
/// half-created state; the address is released and reused.
#[test]
#[cfg_attr(not(bhatti_root), ignore = "needs root (network namespaces, iptables)")]
fn teardown_removes_everything() {
    require_root!();
    let _h = host(false);
    let id = new_id();
    let net = mgr()
        .setup_sandbox(&id, 16, "02:00:00:00:00:16", &EgressPolicy::Public, None)
        .unwrap();
    let _g1 = Down(mgr(), net.clone());
    let route = |a: Ipv4Addr| ip(&["-4", "route", "show", "exact", &format!("{a}/32")]);
    assert!(netns_listed(&net.netns));
    assert!(ip_ok(&["link", "show", "dev", &net.host_veth]));
    assert!(route(net.ext_ip).contains(&net.host_veth));
    assert!(ip_ok(&["-n", &net.netns, "link", "show", "dev", "tap0"]));

    mgr().teardown_sandbox(&net).unwrap();
    assert!(!netns_listed(&net.netns));
    assert!(!ns_path(&net.netns).exists());
    assert!(!ip_ok(&["link", "show", "dev", &net.host_veth]));
    assert_eq!(route(net.ext_ip).trim(), "");
    mgr().teardown_sandbox(&net).unwrap(); // idempotent

    // The address was released: the owner's next sandbox gets it again.
    let again = mgr()
        .setup_sandbox(
            &new_id(),
            16,
            "02:00:00:00:00:17",
            &EgressPolicy::Public,
            None,
        )
        .unwrap();
    let _g2 = Down(mgr(), again.clone());
    assert_eq!(again.ext_ip, net.ext_ip);
    // Half-gone: namespace deleted behind our back (veth goes with it).
    ip(&["netns", "del", &again.netns]);
    mgr().teardown_sandbox(&again).unwrap();
    assert!(!ip_ok(&["link", "show", "dev", &again.host_veth]));
    assert_eq!(route(again.ext_ip).trim(), "");
}

/// Setup rolls back everything when a step fails (here: the host veth name
/// is taken), and leaves the foreign object alone.
#[test]
#[cfg_attr(not(bhatti_root), ignore = "needs root (network namespaces, iptables)")]
fn setup_rolls_back_on_failure() {
    require_root!();
    let _h = host(false);
    let id = new_id();
    let veth = mgr().host_veth_name(&id).unwrap();
    ip(&["tuntap", "add", "dev", &veth, "mode", "tap"]);
    struct DelLink(String);
    impl Drop for DelLink {
        fn drop(&mut self) {
            let _ = run("ip", &["link", "del", "dev", &self.0]);
        }
    }
    let _dummy = DelLink(veth.clone());
    let err = mgr()
        .setup_sandbox(&id, 17, "02:00:00:00:00:18", &EgressPolicy::Public, None)
        .unwrap_err();
    assert!(matches!(err, NetError::Command { .. }), "{err}");
    eprintln!("expected failure: {err}");
    assert!(!netns_listed(&format!("bhatti-{id}")));
    assert!(
        ip_ok(&["link", "show", "dev", &veth]),
        "foreign link removed"
    );
    // Nothing stays claimed.
    let ok = mgr()
        .setup_sandbox(
            &new_id(),
            17,
            "02:00:00:00:00:19",
            &EgressPolicy::Public,
            None,
        )
        .unwrap();
    let _g = Down(mgr(), ok.clone());
    let first = Ipv4Addr::from(u32::from(mgr().owner_subnet(17).unwrap().addr()) + 2);
    assert_eq!(ok.ext_ip, first);
}

/// Restore claims the exact old address; a fork gets a new external address
/// and runs next to its source with the same guest address.
#[test]
#[cfg_attr(not(bhatti_root), ignore = "needs root (network namespaces, iptables)")]
fn restore_and_fork_addresses() {
    require_root!();
    let _h = host(false);
    let src = Sbx::new(18, &EgressPolicy::Public);
    let taken = mgr()
        .setup_sandbox(
            &new_id(),
            18,
            "02:00:00:00:00:20",
            &EgressPolicy::Public,
            Some(src.net.ext_ip),
        )
        .unwrap_err();
    assert!(
        matches!(taken, NetError::AddressInUse(ip) if ip == src.net.ext_ip),
        "{taken}"
    );
    let outside = mgr()
        .setup_sandbox(
            &new_id(),
            18,
            "02:00:00:00:00:21",
            &EgressPolicy::Public,
            Some(Ipv4Addr::new(10, 200, 19, 5)),
        )
        .unwrap_err();
    assert!(
        matches!(outside, NetError::AddressOutsideOwner { .. }),
        "{outside}"
    );
    assert!(matches!(
        mgr().setup_sandbox(
            &src.net.sandbox_id,
            18,
            "02:00:00:00:00:22",
            &EgressPolicy::Public,
            None
        ),
        Err(NetError::AlreadyExists(_))
    ));

    // Fork: new ext ip, same guest ip, both reachable at once.
    let fork = Sbx::new(18, &EgressPolicy::Public);
    assert_ne!(fork.net.ext_ip, src.net.ext_ip);
    assert_eq!(fork.net.guest_ip, src.net.guest_ip);
    let s1 = src.serve("source");
    let s2 = fork.serve("fork");
    assert!(probe(None, src.ext(s1.port))
        .unwrap()
        .starts_with("source "));
    assert!(probe(None, fork.ext(s2.port)).unwrap().starts_with("fork "));
    drop((s1, s2));

    // Restore: the source goes away and comes back with its exact address.
    let (id, ext) = (src.net.sandbox_id.clone(), src.net.ext_ip);
    drop(src);
    let restored = Sbx::with_id(&id, 18, &EgressPolicy::Public, Some(ext));
    assert_eq!(restored.net.ext_ip, ext);
    let s = restored.serve("restored");
    assert!(probe(None, restored.ext(s.port))
        .unwrap()
        .starts_with("restored "));
}

/// (8) Egress policy: Public reaches "outside", Deny does not, an Allow list
/// containing it does, one without it does not; changeable live.
#[test]
#[cfg_attr(not(bhatti_root), ignore = "needs root (network namespaces, iptables)")]
fn egress_policy_is_enforced() {
    require_root!();
    let _h = host(false);
    // "Outside": a namespace behind a host veth, 198.18.0.1 <-> 198.18.0.2.
    let out = TestNs::new("bhatti-test-outside".to_string());
    ip(&[
        "link",
        "add",
        "bhtst-out0",
        "type",
        "veth",
        "peer",
        "name",
        "out0",
        "netns",
        &out.0,
    ]);
    ip(&["addr", "add", "198.18.0.2/30", "dev", "bhtst-out0"]);
    ip(&["link", "set", "bhtst-out0", "up"]);
    ip(&["-n", &out.0, "addr", "add", "198.18.0.1/30", "dev", "out0"]);
    ip(&["-n", &out.0, "link", "set", "out0", "up"]);
    ip(&["-n", &out.0, "link", "set", "lo", "up"]);
    let srv = Server::start(Some(&out.path()), Ipv4Addr::new(198, 18, 0, 1), "outside");
    let to = SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 1), srv.port);

    let a = Sbx::new(19, &EgressPolicy::Public);
    // Egress is masqueraded behind the host's address on that link.
    assert_eq!(a.probe(to).expect("Public"), "outside 198.18.0.2");
    mgr()
        .set_egress_policy(&a.net, &EgressPolicy::Deny)
        .unwrap();
    assert_blocked(a.probe(to), "Deny");
    let allow = |c: &str| EgressPolicy::Allow(vec![c.parse().unwrap()]);
    mgr()
        .set_egress_policy(&a.net, &allow("198.18.0.0/30"))
        .unwrap();
    a.probe(to).expect("Allow 198.18.0.0/30");
    mgr()
        .set_egress_policy(&a.net, &allow("192.0.2.0/24"))
        .unwrap();
    assert_blocked(a.probe(to), "Allow 192.0.2.0/24");
    mgr()
        .set_egress_policy(&a.net, &EgressPolicy::Public)
        .unwrap();
    a.probe(to).expect("Public again");

    // A sandbox created with Deny is denied from the start.
    let b = Sbx::new(19, &EgressPolicy::Deny);
    assert_blocked(b.probe(to), "created with Deny");

    // Fresh namespaces hold their rules in the legacy backend where the
    // host has it; a namespace whose rules an older daemon put in the
    // default backend has them changed there, and never in both.
    let legacy_has_rules = |ns: &str| {
        run(
            "ip",
            &[
                "netns",
                "exec",
                ns,
                "iptables-legacy",
                "-w",
                "-S",
                "BHATTI-EGRESS",
            ],
        )
        .0
    };
    if run("iptables-legacy", &["--version"]).0 {
        assert!(legacy_has_rules(&b.net.netns), "fresh rules are legacy");
        let c = Sbx::new(19, &EgressPolicy::Public);
        let ns = c.net.netns.clone();
        let sh = |script: String| {
            let (ok, _, err) = run("sh", &["-c", &script]);
            assert!(ok, "{script}: {err}");
        };
        sh(format!(
            "ip netns exec {ns} iptables-legacy-save | ip netns exec {ns} iptables-restore -w"
        ));
        sh(format!(
            "printf '*filter\\n:INPUT ACCEPT [0:0]\\n:FORWARD ACCEPT [0:0]\\n:OUTPUT ACCEPT [0:0]\\nCOMMIT\\n\
             *nat\\n:PREROUTING ACCEPT [0:0]\\n:INPUT ACCEPT [0:0]\\n:OUTPUT ACCEPT [0:0]\\n:POSTROUTING ACCEPT [0:0]\\nCOMMIT\\n' \
             | ip netns exec {ns} iptables-legacy-restore -w"
        ));
        assert!(!legacy_has_rules(&ns));
        c.probe(to).expect("Public, rules in the default backend");
        mgr()
            .set_egress_policy(&c.net, &EgressPolicy::Deny)
            .unwrap();
        assert_blocked(c.probe(to), "Deny, set in the default backend");
        mgr()
            .reinstall_rules(&c.net, &EgressPolicy::Public)
            .unwrap();
        c.probe(to)
            .expect("Public again, reinstalled in the default backend");
        assert!(!legacy_has_rules(&ns), "nothing went to the legacy backend");
        let chain = bhatti_engine::net::netns_egress_chain(&c.net.netns_path())
            .unwrap()
            .unwrap();
        assert!(chain.contains("-A BHATTI-EGRESS"), "{chain}");
    }
    drop(out); // deletes out0 and with it bhtst-out0
}

/// Addresses inside the test's destination namespace: cloud metadata,
/// three private ranges, and a benchmark-range "public" one.
const METADATA: Ipv4Addr = Ipv4Addr::new(169, 254, 169, 254);
const PRIVATE_192: Ipv4Addr = Ipv4Addr::new(192, 168, 234, 1);
const PRIVATE_10: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 1);
const CGNAT: Ipv4Addr = Ipv4Addr::new(100, 64, 7, 1);
const PUBLIC_LIKE: Ipv4Addr = Ipv4Addr::new(198, 18, 2, 1);
/// The host side of the link to the destination namespace.
const DST_HOST_SIDE: Ipv4Addr = Ipv4Addr::new(198, 18, 2, 2);
/// Policy-routing table and rule priority the test uses (checked unused).
const DST_TABLE: &str = "26728";

/// A namespace holding [`METADATA`], the private addresses and
/// [`PUBLIC_LIKE`] behind a host veth, reachable *only* from one sandbox:
/// a policy-routing rule for packets arriving on that sandbox's host veth
/// looks the destinations up in a table of the test's own, so the host's
/// own routes (a real metadata service, its LAN) are never used and never
/// changed. Removed on drop.
struct Destinations {
    ns: Option<TestNs>,
    /// Host veths whose packets use the test's table.
    sources: Vec<String>,
}

impl Destinations {
    fn new(sandbox_veth: &str) -> Destinations {
        // A table that does not exist at all is an error for `ip`: unused.
        let (_, table_used, _) = run("ip", &["-4", "route", "show", "table", DST_TABLE]);
        assert!(
            table_used.trim().is_empty(),
            "routing table {DST_TABLE} is in use on this host: {table_used}"
        );
        let rules = ip(&["-4", "rule", "show"]);
        assert!(
            !rules
                .lines()
                .any(|l| l.starts_with(&format!("{DST_TABLE}:"))),
            "rule priority {DST_TABLE} is in use on this host: {rules}"
        );
        let ns = TestNs::new(format!("bhatti-test-dst-{}", std::process::id()));
        let mut d = Destinations {
            ns: Some(ns),
            sources: Vec::new(),
        };
        let n = d.name();
        ip(&[
            "link",
            "add",
            "bhtst-dst0",
            "type",
            "veth",
            "peer",
            "name",
            "dst0",
            "netns",
            &n,
        ]);
        // Loose reverse-path filtering on our link: replies come from
        // addresses the main table routes elsewhere.
        std::fs::write("/proc/sys/net/ipv4/conf/bhtst-dst0/rp_filter", "2").unwrap();
        ip(&[
            "addr",
            "add",
            &format!("{DST_HOST_SIDE}/32"),
            "dev",
            "bhtst-dst0",
        ]);
        ip(&["link", "set", "bhtst-dst0", "up"]);
        for a in [METADATA, PRIVATE_192, PRIVATE_10, CGNAT, PUBLIC_LIKE] {
            ip(&["-n", &n, "addr", "add", &format!("{a}/32"), "dev", "dst0"]);
            ip(&[
                "route",
                "add",
                &format!("{a}/32"),
                "dev",
                "bhtst-dst0",
                "table",
                DST_TABLE,
            ]);
        }
        ip(&["-n", &n, "link", "set", "dst0", "up"]);
        ip(&["-n", &n, "link", "set", "lo", "up"]);
        ip(&[
            "-n",
            &n,
            "route",
            "add",
            &format!("{DST_HOST_SIDE}/32"),
            "dev",
            "dst0",
        ]);
        d.route_from(sandbox_veth);
        d
    }

    /// Lets one more sandbox (by its host veth) reach the destinations.
    fn route_from(&mut self, sandbox_veth: &str) {
        self.sources.push(sandbox_veth.to_string());
        ip(&[
            "rule",
            "add",
            "pref",
            DST_TABLE,
            "iif",
            sandbox_veth,
            "lookup",
            DST_TABLE,
        ]);
    }

    fn name(&self) -> String {
        self.ns.as_ref().expect("ns").0.clone()
    }

    fn path(&self) -> PathBuf {
        self.ns.as_ref().expect("ns").path()
    }
}

impl Drop for Destinations {
    fn drop(&mut self) {
        for veth in &self.sources {
            let _ = run(
                "ip",
                &[
                    "rule", "del", "pref", DST_TABLE, "iif", veth, "lookup", DST_TABLE,
                ],
            );
        }
        // Deleting the namespace deletes dst0, its peer and the table's routes.
        self.ns.take();
        let _ = run("ip", &["link", "del", "dev", "bhtst-dst0"]);
        let _ = run("ip", &["-4", "route", "flush", "table", DST_TABLE]);
    }
}

/// A TCP echo server (line by line) that keeps connections open.
fn echo_server(ns: &Path) -> (u16, Arc<AtomicBool>, JoinHandle<()>) {
    let listener = run_in_netns(ns, || TcpListener::bind((Ipv4Addr::UNSPECIFIED, 0)))
        .expect("enter netns")
        .expect("bind");
    listener.set_nonblocking(true).expect("nonblocking");
    let port = listener.local_addr().expect("addr").port();
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    let h = std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !stop2.load(Ordering::SeqCst) && Instant::now() < deadline {
            match listener.accept() {
                Ok((mut s, _)) => {
                    std::thread::spawn(move || {
                        let _ = s.set_nonblocking(false);
                        let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
                        let mut buf = [0u8; 256];
                        while let Ok(n) = s.read(&mut buf) {
                            if n == 0 || s.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(5))
                }
                Err(_) => break,
            }
        }
    });
    (port, stop, h)
}

/// One round trip on an open connection.
fn echo(s: &mut TcpStream, msg: &str) -> io::Result<String> {
    s.write_all(msg.as_bytes())?;
    let mut buf = vec![0u8; msg.len()];
    s.read_exact(&mut buf)?;
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

/// (8b) Under `public` the default blocked networks are refused — cloud
/// metadata (169.254.169.254) and the private ranges — while other
/// destinations are reached; an allow-list listing them reaches them; a
/// live change (public → deny → public) takes effect at once, also on a
/// connection the guest opened before it.
#[test]
#[cfg_attr(not(bhatti_root), ignore = "needs root (network namespaces, iptables)")]
fn public_egress_refuses_metadata_and_private_ranges() {
    require_root!();
    let _h = host(false);
    let a = Sbx::new(25, &EgressPolicy::Public);
    let mut dst = Destinations::new(&a.net.host_veth);
    let srv = Server::start(Some(&dst.path()), Ipv4Addr::UNSPECIFIED, "dst");
    let to = |ip: Ipv4Addr| SocketAddrV4::new(ip, srv.port);
    let private = [METADATA, PRIVATE_192, PRIVATE_10, CGNAT];

    // Public: the public-like address is reached (masqueraded behind the
    // host side of the link), metadata and private ranges are not.
    assert_eq!(
        a.probe(to(PUBLIC_LIKE)).expect("public-like under Public"),
        format!("dst {DST_HOST_SIDE}")
    );
    for ip in private {
        assert_blocked(a.probe(to(ip)), &format!("{ip} under Public"));
    }

    // Control: the path to each of them works; an allow-list that names
    // them reaches them (and nothing else).
    let allow = EgressPolicy::Allow(
        [
            "169.254.169.254/32",
            "192.168.234.0/24",
            "10.99.0.0/16",
            "100.64.0.0/10",
        ]
        .iter()
        .map(|c| c.parse().unwrap())
        .collect(),
    );
    mgr().set_egress_policy(&a.net, &allow).unwrap();
    for ip in private {
        a.probe(to(ip))
            .unwrap_or_else(|e| panic!("{ip} allow-listed: {e}"));
    }
    assert_blocked(a.probe(to(PUBLIC_LIKE)), "public-like, not allow-listed");

    // Live: public → deny → public, on new connections and on one that
    // was open before the change.
    mgr()
        .set_egress_policy(&a.net, &EgressPolicy::Public)
        .unwrap();
    let (eport, estop, eh) = echo_server(&dst.path());
    let mut conn = run_in_netns(a.guest_path(), || {
        TcpStream::connect_timeout(&SocketAddrV4::new(PUBLIC_LIKE, eport).into(), FAIL_TIMEOUT)
    })
    .expect("enter netns")
    .expect("guest -> echo server under Public");
    conn.set_read_timeout(Some(FAIL_TIMEOUT)).unwrap();
    assert_eq!(echo(&mut conn, "one").unwrap(), "one");

    mgr()
        .set_egress_policy(&a.net, &EgressPolicy::Deny)
        .unwrap();
    assert_blocked(a.probe(to(PUBLIC_LIKE)), "public-like under Deny");
    match echo(&mut conn, "two") {
        Ok(s) => panic!("an open connection survived the change to Deny: {s:?}"),
        Err(e) => eprintln!("open connection cut by Deny as expected ({e})"),
    }
    drop(conn);

    mgr()
        .set_egress_policy(&a.net, &EgressPolicy::Public)
        .unwrap();
    a.probe(to(PUBLIC_LIKE))
        .expect("public-like under Public again");
    assert_blocked(a.probe(to(METADATA)), "metadata under Public again");
    // Recovery re-installs the whole ruleset; the sandbox keeps working.
    mgr()
        .reinstall_rules(&a.net, &EgressPolicy::Public)
        .unwrap();
    a.probe(to(PUBLIC_LIKE))
        .expect("public-like after reinstall");
    assert_blocked(a.probe(to(METADATA)), "metadata after reinstall");
    let srv_a = a.serve("guest-a");
    probe(None, a.ext(srv_a.port)).expect("host -> guest after reinstall");
    drop(srv_a);

    // A manager without blocked networks: `public` is everything again.
    // (Its own address, outside what the shared manager hands out; the
    // sandbox is torn down by name like every `Sbx`.)
    let open = peer(NetConfig {
        egress_blocked: Vec::new(),
        ..NetConfig::default()
    });
    let ext = Ipv4Addr::from(u32::from(mgr().owner_subnet(25).unwrap().addr()) + 200);
    let b = Sbx::try_with(&open, &new_id(), 25, &EgressPolicy::Public, Some(ext)).unwrap();
    dst.route_from(&b.net.host_veth);
    b.probe(to(METADATA))
        .expect("metadata with egress_blocked: []");
    b.probe(to(PRIVATE_192))
        .expect("private range with egress_blocked: []");
    drop(b);

    estop.store(true, Ordering::SeqCst);
    let _ = eh.join();
}

/// Orphan cleanup removes only the namespaces and links of sandboxes in its
/// own ledger that are neither kept nor tracked: exact look-alikes of its
/// own names that another daemon made are left alone.
#[test]
#[cfg_attr(not(bhatti_root), ignore = "needs root (network namespaces, iptables)")]
fn cleanup_orphans_only_touches_ours() {
    require_root!();
    let _h = host(true);
    // A sandbox from a "previous daemon run" (another manager).
    let old = peer(NetConfig::default());
    let orphan = old
        .setup_sandbox(
            &new_id(),
            20,
            "02:00:00:00:00:30",
            &EgressPolicy::Public,
            None,
        )
        .unwrap();
    let _g1 = Down(&old, orphan.clone());
    let kept_by_arg = old
        .setup_sandbox(
            &new_id(),
            21,
            "02:00:00:00:00:31",
            &EgressPolicy::Public,
            None,
        )
        .unwrap();
    let _g2 = Down(&old, kept_by_arg.clone());
    let tracked = Sbx::new(22, &EgressPolicy::Public);
    // Look-alikes that are not ours: named exactly like a sandbox of this
    // manager's, as another daemon's would be, but not in its ledger.
    let foreign = new_id();
    let decoy_ns = TestNs::new(format!("bhatti-{foreign}"));
    let decoy_link = mgr().host_veth_name(&foreign).unwrap();
    ip(&["tuntap", "add", "dev", &decoy_link, "mode", "tap"]);

    let removed = mgr().cleanup_orphans(&[kept_by_arg.sandbox_id.as_str()]);
    let decoy_link_left = ip_ok(&["link", "show", "dev", &decoy_link]);
    let _ = run("ip", &["link", "del", "dev", &decoy_link]);
    let removed = removed.unwrap();
    eprintln!("removed: {removed:?}");
    assert!(removed.contains(&orphan.netns), "{removed:?}");
    assert!(removed.contains(&orphan.host_veth), "{removed:?}");
    assert!(!netns_listed(&orphan.netns));
    assert!(!ip_ok(&["link", "show", "dev", &orphan.host_veth]));
    for keep in [&kept_by_arg, &tracked.net] {
        assert!(netns_listed(&keep.netns), "{} removed", keep.netns);
        assert!(ip_ok(&["link", "show", "dev", &keep.host_veth]));
    }
    assert!(netns_listed(&decoy_ns.0), "another daemon's netns removed");
    assert!(decoy_link_left, "another daemon's link removed");
    // The orphan's owner rule went with it; the tracked owner's stayed.
    let rules = bhatti_rules();
    let s20 = mgr().owner_subnet(20).unwrap();
    let s22 = mgr().owner_subnet(22).unwrap();
    let own = &mgr().host_chain_names()[1];
    assert!(!rules.contains(&format!("{s20}")), "{rules}");
    assert!(
        rules.contains(&format!("-A {own} -s {s22} -d {s22} -j ACCEPT")),
        "{rules}"
    );

    old.teardown_sandbox(&orphan).unwrap();
    old.teardown_sandbox(&kept_by_arg).unwrap();
    assert!(!netns_listed(&kept_by_arg.netns));
}

/// Recovery: a restarted daemon adopts a live sandbox, which keeps working,
/// and its address is not handed out again.
#[test]
#[cfg_attr(not(bhatti_root), ignore = "needs root (network namespaces, iptables)")]
fn adopt_after_restart() {
    require_root!();
    let _h = host(false);
    let before = peer(NetConfig::default());
    let net = before
        .setup_sandbox(
            &new_id(),
            23,
            "02:00:00:00:00:40",
            &EgressPolicy::Public,
            None,
        )
        .unwrap();
    drop(before); // "daemon exits"; the namespace survives
    let guard = Down(mgr(), net.clone());
    mgr().adopt(&net).unwrap();
    mgr().adopt(&net).unwrap(); // idempotent
    let next = mgr()
        .setup_sandbox(
            &new_id(),
            23,
            "02:00:00:00:00:41",
            &EgressPolicy::Public,
            None,
        )
        .unwrap();
    let _g = Down(mgr(), next.clone());
    assert_ne!(next.ext_ip, net.ext_ip);
    mgr().teardown_sandbox(&next).unwrap();
    // Another sandbox claiming the same address cannot be adopted.
    let clash_id = new_id();
    let _clash_ns = TestNs::new(format!("bhatti-{clash_id}"));
    let clash = SandboxNet {
        sandbox_id: clash_id,
        ..net.clone()
    };
    assert!(matches!(
        mgr().adopt(&clash),
        Err(NetError::AddressInUse(_))
    ));
    let gone = SandboxNet {
        sandbox_id: new_id(),
        ..net.clone()
    };
    assert!(matches!(mgr().adopt(&gone), Err(NetError::NetnsMissing(_))));
    drop(guard);
}
