//! Which connections get served: the connection budget.
//!
//! The agent's ports are reachable by more than the host: by guest code over
//! loopback, and by whatever else can route to the guest. A single count of
//! connections taken before AUTH let anyone without the token fill it with
//! silent connections (each held up to the 5 s AUTH deadline, and reopened)
//! and lock the host out. So connections that have not authenticated yet live
//! on a budget of their own, per source and in total, apart from the
//! authenticated ones:
//!
//! - at most [`PRE_AUTH_PER_SOURCE`] unauthenticated connections per source
//!   address and [`PRE_AUTH_TOTAL`] in all;
//! - a source that has presented the token before (the host) is *trusted*: when
//!   the shared pre-auth budget is full, its new connections take one of
//!   [`RESERVED_PRE_AUTH`] reserved slots instead of being refused, so token-less
//!   peers cannot keep the host out;
//! - an authenticated control connection holds one of `MAX_CONTROL_CONNS`;
//!   authenticated forward tunnels are not counted (as before);
//! - without a token (nothing to authenticate) every control connection counts
//!   against `MAX_CONTROL_CONNS` from the start, as before.
//!
//! A refused connection is answered `ERROR "connection limit exceeded"`.
//! Unix-socket peers (test and container mode) are all one source.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::{Mutex, MutexGuard};

use bhatti_protocol::MAX_CONTROL_CONNS;

/// Unauthenticated connections one source may hold at a time.
pub const PRE_AUTH_PER_SOURCE: usize = 4;
/// Unauthenticated connections from all untrusted-budget sources together.
pub const PRE_AUTH_TOTAL: usize = 16;
/// Unauthenticated connections trusted sources may hold beyond the shared budget.
pub const RESERVED_PRE_AUTH: usize = MAX_CONTROL_CONNS;
/// How many sources that authenticated are remembered (the host is one).
const TRUSTED_SOURCES: usize = 8;

/// Where a connection comes from, as far as the budget is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Source {
    /// A Unix socket peer (test and container mode): one source.
    Local,
    /// A TCP peer's address (IPv4-mapped IPv6 folded to IPv4 by [`Source::ip`]).
    Ip(IpAddr),
    /// A vsock peer's CID.
    Vsock(u32),
}

impl Source {
    /// The source for a TCP peer at `ip`.
    pub(crate) fn ip(ip: IpAddr) -> Source {
        // An IPv4 peer on a dual-stack socket is the same source as over IPv4.
        Source::Ip(ip.to_canonical())
    }
}

/// Which listener a connection arrived on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Port {
    Control,
    Forward,
}

/// The connection was refused: over one of the limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("connection limit exceeded")]
pub struct Refused;

#[derive(Debug, Default)]
struct State {
    /// Unauthenticated connections on the shared budget.
    pre_auth: usize,
    pre_auth_by: HashMap<Source, usize>,
    /// Unauthenticated connections of trusted sources on the reserved budget.
    reserved: usize,
    /// Control connections holding a served slot.
    control: usize,
    /// Sources that presented the token, most recent first.
    trusted: VecDeque<Source>,
}

/// The budget of one agent.
#[derive(Debug, Default)]
pub struct Admission {
    state: Mutex<State>,
}

/// What a slot currently holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Held {
    PreAuth,
    Reserved,
    Control,
    Nothing,
}

/// A connection's place in the budget; released when dropped, however the
/// connection ends.
#[derive(Debug)]
pub struct Slot<'a> {
    admission: &'a Admission,
    source: Source,
    port: Port,
    held: Held,
}

impl Admission {
    fn lock(&self) -> MutexGuard<'_, State> {
        bhatti_sync::lock(&self.state)
    }

    /// Admits a new connection, or refuses it. `auth_required` is whether a
    /// token is configured.
    pub fn admit(
        &self,
        source: Source,
        port: Port,
        auth_required: bool,
    ) -> Result<Slot<'_>, Refused> {
        let mut st = self.lock();
        // A control connection that could never be served is refused at once.
        if port == Port::Control && st.control >= MAX_CONTROL_CONNS {
            return Err(Refused);
        }
        let held = if !auth_required {
            if port == Port::Control {
                // Below MAX_CONTROL_CONNS: checked above.
                st.control = st.control.saturating_add(1);
                Held::Control
            } else {
                Held::Nothing
            }
        } else {
            let mine = st.pre_auth_by.get(&source).copied().unwrap_or(0);
            if mine < PRE_AUTH_PER_SOURCE && st.pre_auth < PRE_AUTH_TOTAL {
                // Both below the limits just checked.
                st.pre_auth = st.pre_auth.saturating_add(1);
                let by_source = st.pre_auth_by.entry(source).or_insert(0);
                *by_source = by_source.saturating_add(1);
                Held::PreAuth
            } else if st.trusted.contains(&source) && st.reserved < RESERVED_PRE_AUTH {
                st.reserved = st.reserved.saturating_add(1);
                Held::Reserved
            } else {
                return Err(Refused);
            }
        };
        Ok(Slot {
            admission: self,
            source,
            port,
            held,
        })
    }

    #[cfg(test)]
    fn counts(&self) -> (usize, usize, usize) {
        let st = self.lock();
        (st.pre_auth, st.reserved, st.control)
    }
}

impl State {
    fn release(&mut self, source: Source, held: Held) {
        match held {
            Held::PreAuth => {
                self.pre_auth = self.pre_auth.saturating_sub(1);
                if let Some(n) = self.pre_auth_by.get_mut(&source) {
                    *n = n.saturating_sub(1);
                    if *n == 0 {
                        self.pre_auth_by.remove(&source);
                    }
                }
            }
            Held::Reserved => self.reserved = self.reserved.saturating_sub(1),
            Held::Control => self.control = self.control.saturating_sub(1),
            Held::Nothing => {}
        }
    }

    fn trust(&mut self, source: Source) {
        self.trusted.retain(|s| *s != source);
        self.trusted.push_front(source);
        self.trusted.truncate(TRUSTED_SOURCES);
    }
}

impl Slot<'_> {
    /// The connection presented the right token: it leaves the pre-auth
    /// budget, its source becomes trusted, and a control connection takes a
    /// served slot (refused if they are all taken meanwhile).
    pub fn authenticated(&mut self) -> Result<(), Refused> {
        let mut st = self.admission.lock();
        if matches!(self.held, Held::Control | Held::Nothing) {
            // Already counted (no token configured, or called twice).
            return Ok(());
        }
        st.release(self.source, self.held);
        self.held = Held::Nothing;
        st.trust(self.source);
        if self.port == Port::Control {
            if st.control >= MAX_CONTROL_CONNS {
                return Err(Refused);
            }
            st.control = st.control.saturating_add(1);
            self.held = Held::Control;
        }
        Ok(())
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.admission.lock().release(self.source, self.held);
    }
}

#[cfg(test)]
#[allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap,
    clippy::arithmetic_side_effects
)] // test data of known, small sizes
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn ip(last: u8) -> Source {
        Source::ip(IpAddr::V4(Ipv4Addr::new(10, 0, 0, last)))
    }

    #[test]
    fn pre_auth_is_limited_per_source_and_in_total() {
        let a = Admission::default();
        let mut held = Vec::new();
        for _ in 0..PRE_AUTH_PER_SOURCE {
            held.push(a.admit(ip(1), Port::Control, true).expect("within budget"));
        }
        assert_eq!(a.admit(ip(1), Port::Control, true).err(), Some(Refused));
        // Other sources fill the rest of the shared budget.
        let mut src = 2;
        while held.len() < PRE_AUTH_TOTAL {
            match a.admit(ip(src), Port::Forward, true) {
                Ok(s) => held.push(s),
                Err(_) => src += 1,
            }
        }
        assert_eq!(a.admit(ip(200), Port::Control, true).err(), Some(Refused));
        held.pop();
        assert!(
            a.admit(ip(200), Port::Control, true).is_ok(),
            "a slot freed up"
        );
    }

    #[test]
    fn a_trusted_source_gets_in_while_strangers_hold_the_budget() {
        let a = Admission::default();
        let host = ip(1);
        let mut first = a.admit(host, Port::Control, true).expect("first");
        first.authenticated().expect("authenticated");
        let strangers: Vec<_> = (0..PRE_AUTH_TOTAL)
            .map(|i| {
                a.admit(
                    ip(10 + (i / PRE_AUTH_PER_SOURCE) as u8),
                    Port::Control,
                    true,
                )
            })
            .collect::<Result<_, _>>()
            .expect("strangers fill the shared budget");
        assert_eq!(a.admit(ip(99), Port::Control, true).err(), Some(Refused));
        let mut s = a
            .admit(host, Port::Control, true)
            .expect("host on the reserve");
        assert_eq!(a.counts(), (PRE_AUTH_TOTAL, 1, 1));
        s.authenticated().expect("authenticated");
        assert_eq!(a.counts(), (PRE_AUTH_TOTAL, 0, 2));
        drop((s, first, strangers));
        assert_eq!(a.counts(), (0, 0, 0));
    }

    #[test]
    fn authenticated_control_connections_are_capped() {
        let a = Admission::default();
        let mut held = Vec::new();
        for _ in 0..MAX_CONTROL_CONNS {
            let mut s = a.admit(Source::Local, Port::Control, true).expect("admit");
            s.authenticated().expect("a served slot");
            held.push(s);
        }
        assert_eq!(
            a.admit(Source::Local, Port::Control, true).err(),
            Some(Refused)
        );
        // Tunnels are not counted once authenticated.
        let mut f = a
            .admit(Source::Local, Port::Forward, true)
            .expect("forward");
        f.authenticated().expect("forward authenticated");
        assert_eq!(a.counts(), (0, 0, MAX_CONTROL_CONNS));
    }

    #[test]
    fn without_a_token_control_connections_count_from_the_start() {
        let a = Admission::default();
        let held: Vec<_> = (0..MAX_CONTROL_CONNS)
            .map(|_| a.admit(Source::Local, Port::Control, false))
            .collect::<Result<_, _>>()
            .expect("within the cap");
        assert_eq!(
            a.admit(Source::Local, Port::Control, false).err(),
            Some(Refused)
        );
        assert!(a.admit(Source::Local, Port::Forward, false).is_ok());
        drop(held);
        assert_eq!(a.counts(), (0, 0, 0));
    }
}
