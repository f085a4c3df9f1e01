//! Per-user token buckets (04-api.md §5.2): *create* for `POST /sandboxes`,
//! *exec* for exec, file writes and WebSockets, *read* for the rest.
//!
//! At most [`MAX_USERS`] users' buckets are kept; the least recently used
//! set is evicted (a scan, only when the map is full).

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
    fn take(&mut self, b: &Bucket, now: Instant) -> bool {
        let dt = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + dt * b.per_minute / 60.0).min(b.burst);
        self.at = now;
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
        let mut users = self.users.lock().unwrap_or_else(|p| p.into_inner());
        if !users.contains_key(user) && users.len() >= MAX_USERS {
            if let Some(oldest) = users
                .iter()
                .min_by_key(|(_, b)| b.used)
                .map(|(k, _)| k.clone())
            {
                users.remove(&oldest);
            }
        }
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
    fn eviction_keeps_the_map_bounded() {
        let rl = RateLimiter::new(RateLimits::default());
        for i in 0..(MAX_USERS + 5) {
            rl.allow(&format!("u{i}"), Class::Read);
        }
        assert_eq!(rl.tracked_users(), MAX_USERS);
    }
}
