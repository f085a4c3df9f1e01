//! What every handler shares: the store, the engine, the recorder, the
//! limiter, and the host-side activity bookkeeping the thermal manager reads.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bhatti_engine::contract::{Thermal, Wake};
use bhatti_engine::Engine;
use bhatti_store::{RuntimeUpdate, Sandbox, SandboxStatus, Store, StoreError, User};

use crate::config::Config;
use crate::error::{ServiceError, ServiceResult};
use crate::events::Events;
use crate::ratelimit::{FailureThrottle, PublicLimiter, RateLimiter};
use crate::secrets::SecretBox;

pub type Shared = Arc<AppState>;

/// Counters exported by `GET /metrics`.
#[derive(Default)]
pub struct Counters {
    pub requests: AtomicU64,
    pub errors: AtomicU64,
    pub auth_failures: AtomicU64,
    pub rate_limited: AtomicU64,
    pub wakes: AtomicU64,
    pub proxy_requests: AtomicU64,
    pub websockets_active: AtomicU64,
}

impl Counters {
    pub fn inc(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }
}

pub struct AppState {
    pub cfg: Config,
    pub store: Arc<Store>,
    pub engine: Arc<dyn Engine>,
    pub engine_name: &'static str,
    pub events: Events,
    pub secrets: SecretBox,
    pub limiter: RateLimiter,
    /// Failed authentications per source address.
    pub auth_throttle: FailureThrottle,
    /// The public listener's per-address and per-alias limits.
    pub public_limiter: PublicLimiter,
    /// Published aliases → sandbox ports (`service::publish`).
    pub routes: crate::service::publish::RouteCache,
    /// The public listener's bound address, once it is bound.
    public_addr: std::sync::OnceLock<std::net::SocketAddr>,
    /// The API's TCP address, once it is bound.
    api_addr: std::sync::OnceLock<std::net::SocketAddr>,
    /// Live web-shell sessions per sandbox.
    pub web_shells: crate::service::web_shell::Sessions,
    /// Web-shell token attempts per client address.
    pub web_shell_attempts: crate::ratelimit::Keyed,
    /// The per-user DNS responders.
    pub dns: crate::dns::Dns,
    /// The volume backup bucket (none: backups answer 501).
    pub backups: crate::backup::Backups,
    /// Where the per-user DNS forwards other names.
    pub dns_upstreams: Vec<std::net::SocketAddr>,
    pub started: Instant,
    pub counters: Counters,
    /// Image files, the blob cache and the pull/import jobs.
    pub images: crate::images::Images,
    /// Processes started for later requests to address (E2B's envd).
    pub processes: Arc<crate::service::processes::Processes>,
    /// Polled directory watches (E2B's CreateWatcher).
    pub watchers: crate::service::watch::Watchers,
    /// Each sandbox user's home, for relative paths.
    pub homes: crate::service::guest_fs::Homes,
    /// The key envd access tokens are derived with.
    pub envd_key: crate::routes::e2b::token::EnvdKey,
    /// Creates in flight (and the clean-up of abandoned ones): shutdown
    /// waits for them, so none is cut off between the row and the engine.
    pub creates: tokio_util::task::TaskTracker,
    /// Sandboxes whose create is in flight: their row exists, and their
    /// engine resources are being made. Neither the lifetime reaper nor a
    /// destroy's leftover sweep may touch those resources; the create
    /// itself removes what it made if its row is gone when it finishes.
    creating: Mutex<std::collections::HashSet<String>>,
    /// Sandbox ID → last API touch (the thermal manager's fast path).
    activity: Mutex<HashMap<String, Instant>>,
    /// Sandbox ID → interactive clients attached through this daemon; a
    /// pinned sandbox is never paused.
    pins: Mutex<HashMap<String, usize>>,
}

pub(crate) use bhatti_sync::lock;

/// Whole milliseconds of `d` for logs, events and timers, saturating (a u64
/// of milliseconds outlasts any daemon).
pub(crate) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Holds a sandbox hot while alive (an attached shell or proxy socket).
pub struct Pin {
    state: Shared,
    id: String,
}

impl Drop for Pin {
    fn drop(&mut self) {
        let mut p = lock(&self.state.pins);
        if let Some(n) = p.get_mut(&self.id) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                p.remove(&self.id);
            }
        }
        drop(p);
        self.state.touch(&self.id);
    }
}

/// A create in flight (see `AppState::creating`).
pub struct Creating {
    state: Shared,
    id: String,
}

impl Drop for Creating {
    fn drop(&mut self) {
        lock(&self.state.creating).remove(&self.id);
    }
}

impl AppState {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        cfg: Config,
        store: Arc<Store>,
        engine: Arc<dyn Engine>,
        engine_name: &'static str,
        events: Events,
        images: crate::images::Images,
    ) -> AppState {
        let secrets = SecretBox::new(cfg.data_dir.join("age.key"));
        let cfg_data_dir = cfg.data_dir.clone();
        let cfg_dns_upstreams = cfg.dns_upstreams.clone();
        let limiter = RateLimiter::new(cfg.rate_limits.clone());
        let auth_throttle = FailureThrottle::new(&cfg.rate_limits);
        let public_limiter = PublicLimiter::new(&cfg.rate_limits);
        let web_shell_attempts = crate::ratelimit::Keyed::new(
            cfg.rate_limits.enabled,
            cfg.rate_limits.web_shell_attempts,
        );
        let backups = crate::backup::Backups::new(cfg.backup.as_ref());
        AppState {
            backups,
            cfg,
            store,
            engine,
            engine_name,
            events,
            secrets,
            limiter,
            auth_throttle,
            public_limiter,
            routes: Default::default(),
            public_addr: Default::default(),
            api_addr: Default::default(),
            web_shells: Default::default(),
            web_shell_attempts,
            dns: Default::default(),
            dns_upstreams: crate::dns::upstreams(&cfg_dns_upstreams),
            started: Instant::now(),
            counters: Counters::default(),
            images,
            processes: Arc::new(crate::service::processes::Processes::new()),
            watchers: Default::default(),
            homes: Default::default(),
            envd_key: crate::routes::e2b::token::EnvdKey::new(cfg_data_dir.join("envd.key")),
            creates: tokio_util::task::TaskTracker::new(),
            creating: Mutex::new(Default::default()),
            activity: Mutex::new(HashMap::new()),
            pins: Mutex::new(HashMap::new()),
        }
    }

    /// Runs a store call off the async threads.
    pub async fn db<R: Send + 'static>(
        &self,
        f: impl FnOnce(&Store) -> Result<R, StoreError> + Send + 'static,
    ) -> ServiceResult<R> {
        let store = self.store.clone();
        Ok(tokio::task::spawn_blocking(move || f(&store)).await??)
    }

    /// A point lookup (one indexed row) run on the calling task: it takes
    /// the store's read connection, which never waits behind a write, and
    /// costs tens of microseconds, less than handing it to the blocking
    /// pool and back. Anything that scans or writes goes through [`db`].
    ///
    /// [`db`]: Self::db
    pub fn lookup<R>(&self, f: impl FnOnce(&Store) -> Result<R, StoreError>) -> ServiceResult<R> {
        Ok(f(&self.store)?)
    }

    /// Where the public listener listens (the kernel's port when the
    /// config named port 0); `None` without one.
    pub fn public_addr(&self) -> Option<std::net::SocketAddr> {
        self.public_addr.get().copied()
    }

    /// Records the public listener's bound address (once, at start).
    pub(crate) fn set_public_addr(&self, a: std::net::SocketAddr) {
        let _ = self.public_addr.set(a);
    }

    /// Sandboxes get per-user DNS (microVM engines, unless turned off).
    pub fn dns_enabled(&self) -> bool {
        self.cfg.per_user_dns && self.engine_name != "docker"
    }

    /// The API's TCP address, once bound.
    pub fn api_addr(&self) -> Option<std::net::SocketAddr> {
        self.api_addr.get().copied()
    }

    /// Records the API's bound TCP address (once, at start).
    pub(crate) fn set_api_addr(&self, a: std::net::SocketAddr) {
        let _ = self.api_addr.set(a);
    }

    pub fn touch(&self, id: &str) {
        lock(&self.activity).insert(id.to_string(), Instant::now());
    }

    pub fn last_touch(&self, id: &str) -> Option<Instant> {
        lock(&self.activity).get(id).copied()
    }

    pub fn forget(&self, id: &str) {
        lock(&self.activity).remove(id);
        lock(&self.pins).remove(id);
        self.homes.forget(id);
        self.watchers.forget(id);
    }

    pub fn pin(self: &Arc<Self>, id: &str) -> Pin {
        let mut pins = lock(&self.pins);
        let n = pins.entry(id.to_string()).or_insert(0);
        *n = n.saturating_add(1);
        drop(pins);
        self.touch(id);
        Pin {
            state: self.clone(),
            id: id.to_string(),
        }
    }

    /// Marks `id` as being created until the guard drops.
    pub fn creating(self: &Arc<Self>, id: &str) -> Creating {
        lock(&self.creating).insert(id.to_string());
        Creating {
            state: self.clone(),
            id: id.to_string(),
        }
    }

    pub fn is_creating(&self, id: &str) -> bool {
        lock(&self.creating).contains(id)
    }

    pub fn pinned(&self, id: &str) -> bool {
        lock(&self.pins).get(id).is_some_and(|n| *n > 0)
    }

    /// The user's sandbox by ID or name; another user's is `404`.
    pub async fn sandbox(&self, user: &User, id_or_name: &str) -> ServiceResult<Sandbox> {
        self.lookup(|s| s.sandbox(&user.id, id_or_name))
            .map_err(|e| e.or_not_found(|| format!("sandbox {id_or_name:?} not found")))
    }

    /// Saves the engine's view of a sandbox (status, IP, VM state with its
    /// generation) into the store.
    pub async fn persist(&self, id: &str) -> ServiceResult<Sandbox> {
        let Some(vm) = self.engine.vm_state(id) else {
            let id = id.to_string();
            return self.db(move |s| s.sandbox_by_id(&id)).await;
        };
        let info = self.engine.status(id).await.ok();
        let status = store_status(vm.status);
        let upd = RuntimeUpdate {
            status: Some(status),
            status_reason: info.as_ref().and_then(|i| i.reason.clone()),
            ip: info.map(|i| i.ip),
            generation: Some(vm.generation),
            vm_state: serde_json::to_value(&vm).ok(),
        };
        let id = id.to_string();
        self.db(move |s| s.update_runtime(&id, &upd)).await
    }

    /// Makes a sandbox hot before an operation (every sandbox route but
    /// list/get), recording the wake.
    pub async fn ensure_hot(&self, sb: &Sandbox) -> ServiceResult<()> {
        self.touch(&sb.id);
        if sb.status == SandboxStatus::Unknown && self.engine.vm_state(&sb.id).is_none() {
            return Err(ServiceError::sandbox_lost(sb, "cannot be woken"));
        }
        // A crashed sandbox is never hot (the engine marks both at once),
        // so this fast path needs no health check.
        let hot_already = matches!(self.engine.thermal(&sb.id), Ok(Thermal::Hot));
        if hot_already && sb.status == SandboxStatus::Running {
            return Ok(());
        }
        // A VM that died since the last health sweep is recorded now, so
        // the answer and the store agree (the engine refuses the wake).
        crate::health::note_crash(self, sb).await;
        let wake: Wake = self
            .engine
            .ensure_hot(&sb.id)
            .await
            .map_err(|e| ServiceError::from(e).context("wake sandbox"))?;
        self.touch(&sb.id);
        Counters::inc(&self.counters.wakes);
        if wake.from != Thermal::Hot || sb.status != SandboxStatus::Running {
            self.persist(&sb.id).await?;
        }
        // Only the call that woke it: concurrent callers that waited for
        // that wake find it hot (`from` is hot) and record nothing.
        if wake.from != Thermal::Hot {
            self.events.emit(
                &sb.user_id,
                &sb.id,
                "thermal.wake",
                serde_json::json!({"from_state": wake.from.to_string(), "wake_ms": millis(wake.took)}),
            );
        }
        Ok(())
    }
}

/// The store's word for an engine status.
pub fn store_status(s: bhatti_engine::contract::Status) -> SandboxStatus {
    use bhatti_engine::contract::Status;
    match s {
        Status::Running => SandboxStatus::Running,
        Status::Stopped => SandboxStatus::Stopped,
        Status::Crashed => SandboxStatus::Crashed,
        Status::Unknown => SandboxStatus::Unknown,
    }
}
