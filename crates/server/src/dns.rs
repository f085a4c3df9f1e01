//! Per-user DNS for microVM sandboxes: each sandbox resolves its owner's
//! other sandboxes as `name` and `name.sb`, and nothing of anyone else's;
//! every other question goes on to the host's resolvers.
//!
//! The responder listens *inside* each sandbox's network namespace, on the
//! guest's gateway address (`172.31.255.1:53`, UDP and TCP), which every
//! guest's `/etc/resolv.conf` names. So:
//! - the socket a question arrives on says which sandbox asked, and with it
//!   the owner: nothing in the packet needs to be trusted;
//! - the address is the same in every sandbox, so forks and resumed
//!   snapshots (whose guests keep their resolv.conf) just work;
//! - nothing listens on the host, and no host firewall rule opens for it
//!   (the question stays inside the sandbox's namespace).
//!
//! The sockets are opened when a sandbox is created, forked or resumed, and
//! by a sweep every few seconds for sandboxes that came back another way (a
//! daemon restart adopting them, a namespace rebuilt after a host reboot);
//! they close when the sandbox goes.
//!
//! Answers: A for a sibling's address (TTL 5 s), no answer (NOERROR) for
//! its other types, FORMERR for more than one question, SERVFAIL for a
//! class other than IN. Anything else is forwarded verbatim to the
//! upstreams in order (2 s each; SERVFAIL when none answers), except from a
//! sandbox whose egress is `deny`, which is REFUSED: forwarding would be
//! egress.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::fs::MetadataExt;
use std::sync::Mutex;
use std::time::Duration;

use bhatti_engine::net::{EgressPolicy, GATEWAY_IP};
use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{DNSClass, RData, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::state::{lock, Shared};

/// The port the guests ask.
const PORT: u16 = 53;
/// Answers about siblings may be cached this long (renames and destroys
/// show within it).
const TTL: u32 = 5;
/// Each upstream gets this long to answer.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(2);
/// A TCP question must arrive within this.
const TCP_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest DNS message (TCP's 16-bit length).
const MAX_MESSAGE: usize = 65_535;
/// How often the sweep looks for sandboxes without a responder.
pub const SWEEP_EVERY: Duration = Duration::from_secs(5);
/// The suffix a sibling may be asked with.
const SUFFIX: &str = ".sb";
/// Questions one sandbox may have in flight (UDP, and TCP connections,
/// each): past it, UDP questions are dropped (the guest retries) and TCP
/// connections wait, so a guest flooding its resolver costs the daemon a
/// bounded number of tasks and upstream sockets.
const IN_FLIGHT: usize = 64;

/// The responders, one per sandbox namespace.
#[derive(Default)]
pub struct Dns {
    attached: Mutex<HashMap<String, Attached>>,
}

struct Attached {
    /// The namespace's inode: a rebuilt namespace needs new sockets.
    inode: u64,
    tasks: Vec<tokio::task::AbortHandle>,
}

impl Drop for Attached {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Why a responder could not be opened (logged; the sandbox works, but
/// does not resolve its siblings).
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    /// The namespace is not there (a Docker sandbox, or one being made).
    #[error("no network namespace")]
    NoNamespace,
    /// The sockets could not be bound in it.
    #[error("bind {GATEWAY_IP}:{PORT} in the sandbox's namespace: {0}")]
    Bind(String),
}

/// The upstream resolvers: the config's, else the host's (`/etc/resolv.conf`,
/// loopback ones included: the daemon asks them from the host).
pub fn upstreams(configured: &[String]) -> Vec<SocketAddr> {
    if !configured.is_empty() {
        return configured.iter().filter_map(|s| upstream(s)).collect();
    }
    std::fs::read_to_string("/etc/resolv.conf")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|ip| upstream(ip.trim()))
        .collect()
}

/// One upstream: `ip:port`, or an `ip` on port 53.
pub fn upstream(s: &str) -> Option<SocketAddr> {
    s.parse::<SocketAddr>().ok().or_else(|| {
        s.parse::<std::net::IpAddr>()
            .ok()
            .map(|ip| SocketAddr::new(ip, PORT))
    })
}

impl Dns {
    /// Opens the responder of sandbox `id` unless it is open on its current
    /// namespace already.
    pub fn attach(&self, st: &Shared, id: &str) -> Result<(), DnsError> {
        let path = bhatti_engine::net::netns_path(id).map_err(|_| DnsError::NoNamespace)?;
        let inode = std::fs::metadata(&path)
            .map_err(|_| DnsError::NoNamespace)?
            .ino();
        if lock(&self.attached)
            .get(id)
            .is_some_and(|a| a.inode == inode)
        {
            return Ok(());
        }
        let addr = SocketAddr::from((GATEWAY_IP, PORT));
        let (udp, tcp) = bhatti_engine::net::run_in_netns(&path, || {
            let udp = std::net::UdpSocket::bind(addr)?;
            let tcp = std::net::TcpListener::bind(addr)?;
            udp.set_nonblocking(true)?;
            tcp.set_nonblocking(true)?;
            Ok::<_, std::io::Error>((udp, tcp))
        })
        .map_err(|e| DnsError::Bind(e.to_string()))?
        .map_err(|e| DnsError::Bind(e.to_string()))?;
        let udp =
            tokio::net::UdpSocket::from_std(udp).map_err(|e| DnsError::Bind(e.to_string()))?;
        let tcp =
            tokio::net::TcpListener::from_std(tcp).map_err(|e| DnsError::Bind(e.to_string()))?;
        let tasks = vec![
            tokio::spawn(serve_udp(st.clone(), id.to_string(), udp)).abort_handle(),
            tokio::spawn(serve_tcp(st.clone(), id.to_string(), tcp)).abort_handle(),
        ];
        lock(&self.attached).insert(id.to_string(), Attached { inode, tasks });
        tracing::debug!(sandbox = id, "DNS responder open");
        Ok(())
    }

    /// Closes the responder of a sandbox that is gone.
    pub fn detach(&self, id: &str) {
        lock(&self.attached).remove(id);
    }

    fn attached_ids(&self) -> Vec<String> {
        lock(&self.attached).keys().cloned().collect()
    }
}

/// Opens the responder of a sandbox just made (create, fork, resume); a
/// failure is logged, never the caller's.
pub fn open_for(st: &Shared, id: &str) {
    if !st.dns_enabled() {
        return;
    }
    if let Err(e) = st.dns.attach(st, id) {
        tracing::warn!(sandbox = id, error = %e, "per-user DNS not available");
    }
}

/// Keeps the responders in step with the sandboxes: opens missing ones,
/// closes those of sandboxes that are gone.
pub async fn sweep_loop(st: Shared, mut stop: tokio::sync::watch::Receiver<bool>) {
    if !st.dns_enabled() {
        return;
    }
    loop {
        if let Ok(rows) = st.db(|s| s.list_all_sandboxes()).await {
            let live: std::collections::HashSet<String> =
                rows.iter().map(|r| r.id.clone()).collect();
            for id in st.dns.attached_ids() {
                if !live.contains(&id) {
                    st.dns.detach(&id);
                }
            }
            for r in rows {
                // A sandbox without a namespace (being made) is seen next time.
                if let Err(DnsError::Bind(e)) = st.dns.attach(&st, &r.id) {
                    tracing::debug!(sandbox = r.id, error = e, "DNS responder not opened");
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(SWEEP_EVERY) => {}
            _ = stop.wait_for(|v| *v) => return,
        }
    }
}

async fn serve_udp(st: Shared, id: String, sock: tokio::net::UdpSocket) {
    let sock = std::sync::Arc::new(sock);
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(IN_FLIGHT));
    let mut buf = vec![0u8; MAX_MESSAGE];
    loop {
        let Ok((n, peer)) = sock.recv_from(&mut buf).await else {
            return;
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            continue;
        };
        let query = buf[..n].to_vec();
        let (st, id, sock) = (st.clone(), id.clone(), sock.clone());
        // Each question on its own task: a slow upstream holds up no one.
        tokio::spawn(async move {
            let _slot = slot;
            if let Some(answer) = answer(&st, &id, &query, false).await {
                let _ = sock.send_to(&answer, peer).await;
            }
        });
    }
}

async fn serve_tcp(st: Shared, id: String, listener: tokio::net::TcpListener) {
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(IN_FLIGHT));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let Ok((mut s, _)) = listener.accept().await else {
            return;
        };
        let (st, id) = (st.clone(), id.clone());
        tokio::spawn(async move {
            let _slot = slot;
            let _ = tokio::time::timeout(TCP_TIMEOUT, async {
                let len = usize::from(s.read_u16().await?);
                let mut q = vec![0u8; len];
                s.read_exact(&mut q).await?;
                if let Some(a) = answer(&st, &id, &q, true).await {
                    let n = u16::try_from(a.len()).unwrap_or(u16::MAX);
                    s.write_u16(n).await?;
                    s.write_all(&a[..usize::from(n)]).await?;
                }
                Ok::<_, std::io::Error>(())
            })
            .await;
        });
    }
}

/// The answer to one question from sandbox `id`, or `None` for bytes that
/// are not a DNS query.
async fn answer(st: &Shared, id: &str, query: &[u8], tcp: bool) -> Option<Vec<u8>> {
    let q = Message::from_vec(query).ok()?;
    if q.metadata.message_type != MessageType::Query {
        return None;
    }
    let reply = |code: ResponseCode, answers: Vec<Record>| {
        let mut m = Message::response(q.metadata.id, q.metadata.op_code);
        m.metadata.recursion_desired = q.metadata.recursion_desired;
        m.metadata.recursion_available = true;
        m.metadata.response_code = code;
        m.queries = q.queries.clone();
        m.answers = answers;
        m.to_vec().ok()
    };
    if q.metadata.op_code != OpCode::Query || q.queries.len() != 1 {
        return reply(ResponseCode::FormErr, Vec::new());
    }
    let question = &q.queries[0];
    if question.query_class() != DNSClass::IN {
        return reply(ResponseCode::ServFail, Vec::new());
    }
    let asker = st.lookup(|s| s.sandbox_by_id(id)).ok()?;
    if let Some(ip) = sibling(st, &asker.user_id, &question.name().to_ascii()).await {
        let answers = match question.query_type() {
            RecordType::A => vec![Record::from_rdata(
                question.name().clone(),
                TTL,
                RData::A(A(ip)),
            )],
            _ => Vec::new(),
        };
        return reply(ResponseCode::NoError, answers);
    }
    if matches!(
        crate::service::sandboxes::egress_policy(&asker),
        Some(EgressPolicy::Deny)
    ) {
        return reply(ResponseCode::Refused, Vec::new());
    }
    for up in &st.dns_upstreams {
        let got = tokio::time::timeout(UPSTREAM_TIMEOUT, forward(*up, query, tcp)).await;
        if let Ok(Ok(a)) = got {
            return Some(a);
        }
    }
    reply(ResponseCode::ServFail, Vec::new())
}

/// The address of the owner's sandbox called `name` (any case, an optional
/// `.sb`, a trailing dot), if there is one.
async fn sibling(st: &Shared, user_id: &str, name: &str) -> Option<Ipv4Addr> {
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    let name = name.strip_suffix(SUFFIX).unwrap_or(&name).to_string();
    crate::validate::name("sandbox", &name).ok()?;
    let uid = user_id.to_string();
    let rows = st
        .db(move |s| s.list_sandboxes(&uid, &Default::default()))
        .await
        .ok()?;
    // Sandbox names may have upper case; DNS names do not.
    rows.into_iter()
        .find(|r| r.name.eq_ignore_ascii_case(&name))
        .and_then(|r| r.ip.parse().ok())
}

/// Sends `query` to `up` as it came and returns the answer as it comes.
async fn forward(up: SocketAddr, query: &[u8], tcp: bool) -> std::io::Result<Vec<u8>> {
    if tcp {
        let mut s = tokio::net::TcpStream::connect(up).await?;
        let n = u16::try_from(query.len()).map_err(std::io::Error::other)?;
        s.write_u16(n).await?;
        s.write_all(query).await?;
        let len = usize::from(s.read_u16().await?);
        let mut a = vec![0u8; len];
        s.read_exact(&mut a).await?;
        return Ok(a);
    }
    let bind: SocketAddr = if up.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let s = tokio::net::UdpSocket::bind(bind).await?;
    s.connect(up).await?;
    s.send(query).await?;
    let mut buf = vec![0u8; MAX_MESSAGE];
    loop {
        let n = s.recv(&mut buf).await?;
        // Only the answer to this question (same ID).
        if n >= 2 && query.len() >= 2 && buf[..2] == query[..2] {
            buf.truncate(n);
            return Ok(buf);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstreams_take_addresses_with_or_without_a_port() {
        let u = upstreams(&["192.0.2.1".into(), "127.0.0.1:5353".into(), "nope".into()]);
        assert_eq!(
            u,
            vec![
                "192.0.2.1:53".parse().unwrap(),
                "127.0.0.1:5353".parse().unwrap()
            ]
        );
    }
}
