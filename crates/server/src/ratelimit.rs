//! Per-user token buckets (docs/server.md, "Rate limits"): *create* for
//! `POST /sandboxes`, *exec* for exec, file writes and WebSockets, *read*
//! for the rest.
//!
//! Failed authentication is throttled per source address
//! ([`FailureThrottle`]): past its burst, a source gets 429 without its key
//! being looked up or an event written, so guessing keys or filling the
//! event log costs the attacker time instead of costing the daemon rows.
//!
//! At most [`MAX_USERS`] keys' buckets are kept in each map; the least
//! recently used is evicted (a scan, only when the map is full).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use axum::http::Method;

use crate::config::{Bucket, RateLimits};

pub const MAX_USERS: usize = 10_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    Create,
    Exec,
    Read,
}

/// Which bucket a request draws from.
pub fn classify(method: &Method, path: &str) -> Class {
    if method == Method::POST && path.trim_end_matches('/') == "/sandboxes" {
        Class::Create
    } else if (method == Method::POST && path.contains("/exec"))
        || (method == Method::PUT && path.contains("/files"))
        || path.contains("/ws")
    {
        Class::Exec
    } else {
        Class::Read
    }
}

#[derive(Debug, Clone, Copy)]
struct Tokens {
    tokens: f64,
    at: Instant,
}

impl Tokens {
    fn full(b: &Bucket, now: Instant) -> Tokens {
        Tokens {
            tokens: b.burst,
            at: now,
        }
    }
    fn refill(&mut self, b: &Bucket, now: Instant) {
        let dt = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + dt * b.per_minute / 60.0).min(b.burst);
        self.at = now;
    }
    fn take(&mut self, b: &Bucket, now: Instant) -> bool {
        self.refill(b, now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

struct UserBuckets {
    create: Tokens,
    exec: Tokens,
    read: Tokens,
    used: Instant,
}

/// Makes room for one more key in a bounded map: drops the least recently
/// used entry when `key` is new and the map is full.
fn make_room<V>(map: &mut HashMap<String, V>, key: &str, used: impl Fn(&V) -> Instant) {
    if !map.contains_key(key) && map.len() >= MAX_USERS {
        if let Some(oldest) = map
            .iter()
            .min_by_key(|(_, v)| used(v))
            .map(|(k, _)| k.clone())
        {
            map.remove(&oldest);
        }
    }
}

/// One token bucket per key (a source address, an alias), at most
/// [`MAX_USERS`] keys.
pub struct Keyed {
    enabled: bool,
    bucket: Bucket,
    keys: Mutex<HashMap<String, Tokens>>,
}

impl Keyed {
    /// Buckets of `bucket`'s shape; `enabled` false allows everything.
    pub fn new(enabled: bool, bucket: Bucket) -> Keyed {
        Keyed {
            enabled,
            bucket,
            keys: Mutex::new(HashMap::new()),
        }
    }

    /// True while `key` has a token left, taking none.
    pub fn permits(&self, key: &str) -> bool {
        if !self.enabled {
            return true;
        }
        let keys = bhatti_sync::lock(&self.keys);
        keys.get(key).is_none_or(|t| {
            let mut t = *t;
            t.refill(&self.bucket, Instant::now());
            t.tokens >= 1.0
        })
    }

    /// Takes a token for `key`; false = refuse (429).
    pub fn take(&self, key: &str) -> bool {
        if !self.enabled {
            return true;
        }
        let now = Instant::now();
        let mut keys = bhatti_sync::lock(&self.keys);
        make_room(&mut keys, key, |t| t.at);
        let b = &self.bucket;
        keys.entry(key.to_string())
            .or_insert_with(|| Tokens::full(b, now))
            .take(b, now)
    }
}

/// Failed authentications per source address (see the module comment).
pub struct FailureThrottle(Keyed);

impl FailureThrottle {
    pub fn new(cfg: &RateLimits) -> FailureThrottle {
        FailureThrottle(Keyed::new(cfg.enabled, cfg.auth_failures))
    }

    /// False while `source` has no failures left: answer 429 at once.
    pub fn permits(&self, source: &str) -> bool {
        self.0.permits(source)
    }

    /// Counts one failed authentication from `source`.
    pub fn failed(&self, source: &str) {
        let _ = self.0.take(source);
    }
}

/// The public listener's limits: per client address and per alias.
pub struct PublicLimiter {
    per_ip: Keyed,
    per_alias: Keyed,
}

impl PublicLimiter {
    pub fn new(cfg: &RateLimits) -> PublicLimiter {
        PublicLimiter {
            per_ip: Keyed::new(cfg.enabled, cfg.public_per_ip),
            per_alias: Keyed::new(cfg.enabled, cfg.public_per_alias),
        }
    }

    /// Takes a token from both buckets; false = 429.
    pub fn allow(&self, ip: &str, alias: &str) -> bool {
        self.per_ip.take(ip) && self.per_alias.take(alias)
    }
}

pub struct RateLimiter {
    cfg: RateLimits,
    users: Mutex<HashMap<String, UserBuckets>>,
}

impl RateLimiter {
    pub fn new(cfg: RateLimits) -> RateLimiter {
        RateLimiter {
            cfg,
            users: Mutex::new(HashMap::new()),
        }
    }

    /// Takes a token for `user` from `class`'s bucket; false = 429.
    pub fn allow(&self, user: &str, class: Class) -> bool {
        if !self.cfg.enabled {
            return true;
        }
        let now = Instant::now();
        let mut users = bhatti_sync::lock(&self.users);
        make_room(&mut users, user, |b| b.used);
        let c = &self.cfg;
        let b = users
            .entry(user.to_string())
            .or_insert_with(|| UserBuckets {
                create: Tokens::full(&c.create, now),
                exec: Tokens::full(&c.exec, now),
                read: Tokens::full(&c.read, now),
                used: now,
            });
        b.used = now;
        match class {
            Class::Create => b.create.take(&c.create, now),
            Class::Exec => b.exec.take(&c.exec, now),
            Class::Read => b.read.take(&c.read, now),
        }
    }

    pub fn tracked_users(&self) -> usize {
        self.users.lock().map(|u| u.len()).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes() {
        assert_eq!(classify(&Method::POST, "/sandboxes"), Class::Create);
        assert_eq!(classify(&Method::POST, "/sandboxes/x/exec"), Class::Exec);
        assert_eq!(classify(&Method::PUT, "/sandboxes/x/files"), Class::Exec);
        assert_eq!(classify(&Method::GET, "/sandboxes/x/ws"), Class::Exec);
        assert_eq!(classify(&Method::GET, "/sandboxes/x/files"), Class::Read);
        assert_eq!(classify(&Method::GET, "/sandboxes"), Class::Read);
    }

    #[test]
    fn burst_then_refuse_and_users_are_separate() {
        let cfg = RateLimits {
            read: Bucket {
                burst: 3.0,
                per_minute: 0.0,
            },
            ..Default::default()
        };
        let rl = RateLimiter::new(cfg);
        for _ in 0..3 {
            assert!(rl.allow("a", Class::Read));
        }
        assert!(!rl.allow("a", Class::Read));
        assert!(rl.allow("b", Class::Read));
        assert!(rl.allow("a", Class::Exec));
    }

    #[test]
    fn refills_over_time() {
        let b = Bucket {
            burst: 1.0,
            per_minute: 60.0,
        };
        let t0 = Instant::now();
        let mut t = Tokens::full(&b, t0);
        assert!(t.take(&b, t0));
        assert!(!t.take(&b, t0));
        assert!(t.take(&b, t0 + std::time::Duration::from_millis(1100)));
    }

    #[test]
    fn failed_auth_is_throttled_per_source() {
        let cfg = RateLimits {
            auth_failures: Bucket {
                burst: 3.0,
                per_minute: 0.0,
            },
            ..Default::default()
        };
        let t = FailureThrottle::new(&cfg);
        for _ in 0..3 {
            assert!(t.permits("10.0.0.1"));
            t.failed("10.0.0.1");
        }
        assert!(!t.permits("10.0.0.1"));
        assert!(t.permits("10.0.0.2"), "another source is not affected");
        let off = FailureThrottle::new(&RateLimits {
            enabled: false,
            ..cfg
        });
        for _ in 0..10 {
            off.failed("x");
        }
        assert!(off.permits("x"));
    }

    #[test]
    fn eviction_keeps_the_map_bounded() {
        let rl = RateLimiter::new(RateLimits::default());
        for i in 0..(MAX_USERS + 5) {
            rl.allow(&format!("u{i}"), Class::Read);
        }
        assert_eq!(rl.tracked_users(), MAX_USERS);
    }
}
