//! Warm pools: a create that takes a restored, paused sandbox instead of
//! restoring or booting one.
//!
//! A template restore still costs the copy of the disks, the namespace, the
//! VMM's start and the memory load. For each configured [`PoolSpec`] (image
//! and shape) the engine keeps `size` sandboxes restored from the shape's
//! template snapshot and paused. They are owned by nobody and reachable by
//! nobody: each waits behind a *detached* network namespace (its `tap0`
//! only, no veth, no address, no rules), is in no registry and in no store,
//! and counts against no quota.
//!
//! A create that fits takes one in two steps. The server *reserves* it
//! ([`Engine::reserve_pooled`]) before it writes the sandbox's row, because
//! the row carries the ID and the pooled sandbox's directory and namespace
//! already carry theirs. The engine's `create` with that ID then *claims*
//! it: it joins the namespace to the host in the owner's address range (the
//! guest side is fixed, so the guest notices nothing), resumes the VM, and
//! makes it this sandbox through the agent's APPLY_CONFIG, as a template
//! restore does (hostname, env, files, init, clock, a fresh token, fresh
//! entropy). A pooled sandbox is taken once, by one create; a claim that
//! fails discards it and the create restores or boots as usual.
//!
//! One task refills the pools, one sandbox at a time, and only while the
//! host has memory to spare ([`REFILL_MIN_AVAILABLE_MB`] beyond the
//! sandbox's own); below [`EVICT_BELOW_AVAILABLE_MB`] it discards ready
//! sandboxes first, before anything of a user's is touched. A pool whose
//! image or kernel changed (a new template key) discards its old sandboxes.
//! Pooled sandboxes never outlive the daemon: shutdown discards them, and
//! after a crash the orphan sweep removes their VMMs and namespaces (they
//! are in this daemon's network ledger, and their directories in its data
//! dir).

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use super::sandbox::Detail;
use super::{blocking, random_hex, MicroVmEngine, Rollback};
use crate::contract::{EngineError, PoolSpec, PoolStatus, Result, SandboxInfo, SandboxSpec};
use crate::lock;
use crate::net::{EgressPolicy, SandboxNet};
use crate::vmm::Vm;
use bhatti_agent_client::{AgentClient, ApplyConfig, ClientError, Transport};

/// No refill unless the host has this much memory available beyond the new
/// sandbox's own, MiB.
const REFILL_MIN_AVAILABLE_MB: u64 = 1024;
/// Below this much available memory, ready sandboxes are discarded, MiB.
const EVICT_BELOW_AVAILABLE_MB: u64 = 512;
/// How often the refill task looks again when it has nothing to do (a
/// template may have been built meanwhile, or memory freed).
const IDLE_RECHECK: Duration = Duration::from_secs(3);
/// How long a pooled sandbox's warm-up may take before it is paused anyway.
const WARM_UP_LIMIT: Duration = Duration::from_secs(10);
/// A refill waits until no create has asked for a pooled sandbox for this
/// long.
const REFILL_YIELD: Duration = Duration::from_millis(500);
/// Pause after a refill that failed.
const FAILURE_BACKOFF: Duration = Duration::from_secs(10);

/// One restored, paused sandbox waiting for a create.
struct Pooled {
    id: String,
    /// The template it was restored from.
    key: String,
    detail: Detail,
    vm: Box<dyn Vm>,
}

#[derive(Default, Clone, Copy)]
struct Counters {
    hits: u64,
    misses: u64,
    refills: u64,
    discarded: u64,
}

/// The engine's warm pools.
#[derive(Default)]
pub(super) struct Pools {
    specs: Mutex<Vec<PoolSpec>>,
    /// Ready sandboxes by template key, oldest first.
    ready: Mutex<HashMap<String, VecDeque<Pooled>>>,
    /// Taken by a create that has not claimed them yet, by ID.
    reserved: Mutex<HashMap<String, Pooled>>,
    /// Per pool (index into `specs` is not stable across `set_pools`, so
    /// by shape).
    counters: Mutex<HashMap<Shape, Counters>>,
    wake: tokio::sync::Notify,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// When a create last asked for a pooled sandbox.
    last_asked: Mutex<Option<std::time::Instant>>,
}

/// A pool's image and shape: what its counters are kept under.
type Shape = (Option<PathBuf>, u32, u32);

fn shape(p: &PoolSpec) -> Shape {
    (p.image.clone(), p.cpus, p.memory_mb)
}

/// A `key: <n> kB` line of a `/proc` file, in KiB.
fn proc_kb(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let rest = l.strip_prefix(key)?.strip_prefix(':')?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// The host's available memory, MiB (`None`: unreadable, so no limit).
fn available_mb() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    proc_kb(&info, "MemAvailable").map(|kb| kb / 1024)
}

/// Resident memory of process `pid`, bytes.
fn rss_bytes(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| proc_kb(&s, "VmRSS"))
        .map_or(0, |kb| kb.saturating_mul(1024))
}

impl MicroVmEngine {
    /// The create spec a pool's sandboxes are made for: no user's, on the
    /// daemon's own address range (for a template build).
    fn pool_create_spec(&self, p: &PoolSpec) -> SandboxSpec {
        SandboxSpec {
            name: "pool".into(),
            owner_index: self.net.daemon_owner_index(),
            image: p.image.clone(),
            cpus: p.cpus,
            memory_mb: p.memory_mb,
            ..SandboxSpec::default()
        }
    }

    fn image_of(&self, spec: &SandboxSpec) -> PathBuf {
        spec.image.clone().unwrap_or(self.cfg.default_image.clone())
    }

    /// The configured pool `spec` would draw from.
    fn pool_for(&self, spec: &SandboxSpec) -> Option<PoolSpec> {
        let image = self.image_of(spec);
        lock(&self.pools.specs)
            .iter()
            .find(|p| {
                p.cpus == spec.cpus
                    && p.memory_mb == spec.memory_mb
                    && p.image.clone().unwrap_or(self.cfg.default_image.clone()) == image
            })
            .cloned()
    }

    fn count(&self, p: &PoolSpec, f: impl FnOnce(&mut Counters)) {
        f(lock(&self.pools.counters).entry(shape(p)).or_default());
    }

    /// See [`Engine::reserve_pooled`](crate::contract::Engine::reserve_pooled).
    pub(super) fn reserve(&self, spec: &SandboxSpec) -> Option<String> {
        let pool = self.pool_for(spec)?;
        let fit = self.fit(spec, &self.image_of(spec))?;
        let taken = lock(&self.pools.ready)
            .get_mut(&fit.key)
            .and_then(VecDeque::pop_front);
        *lock(&self.pools.last_asked) = Some(std::time::Instant::now());
        self.pools.wake.notify_one();
        let Some(p) = taken else {
            self.count(&pool, |c| c.misses = c.misses.saturating_add(1));
            return None;
        };
        self.count(&pool, |c| c.hits = c.hits.saturating_add(1));
        let id = p.id.clone();
        lock(&self.pools.reserved).insert(id.clone(), p);
        Some(id)
    }

    /// The reserved pooled sandbox `id`, if any, made the sandbox of
    /// `spec`. `None`: nothing was reserved under `id`; `Some(Err)`: the
    /// claim failed and the pooled sandbox is gone.
    pub(super) async fn claim_reserved(
        &self,
        id: &str,
        spec: &SandboxSpec,
    ) -> Option<Result<SandboxInfo>> {
        let p = lock(&self.pools.reserved).remove(id)?;
        let t0 = std::time::Instant::now();
        let res = self.claim_pooled(p, spec).await;
        match &res {
            Ok(_) => tracing::info!(id, took = ?t0.elapsed(), "created from the warm pool"),
            Err(e) => {
                tracing::warn!(
                    id,
                    "claiming a pooled sandbox failed (it is discarded): {e}"
                );
                if let Some(pool) = self.pool_for(spec) {
                    self.count(&pool, |c| c.discarded = c.discarded.saturating_add(1));
                }
            }
        }
        Some(res)
    }

    async fn claim_pooled(&self, p: Pooled, spec: &SandboxSpec) -> Result<SandboxInfo> {
        let Pooled {
            id, mut detail, vm, ..
        } = p;
        let (net, detached, owner, egress) = (
            self.net.clone(),
            detail.net.clone(),
            spec.owner_index,
            spec.egress.clone(),
        );
        let apply = self.claim(&id, spec);
        let cfg = self.guest_config(&id, &apply.token, spec);
        // Three things at once, all done before the sandbox is handed out:
        // the config drive (mke2fs) is written; the namespace joins the
        // host; and the guest, resumed, takes the claim over a connection
        // made from inside its namespace, which needs no host route.
        let (timed, netns) = (Timed::start(), detached.netns_path());
        let (drive, joined, claimed) = tokio::join!(
            timed.run(super::template::write_claim_drive(&detail.dir, &cfg)),
            timed.run(blocking(move || Ok(net.attach(&detached, owner, &egress)?))),
            timed.run(async {
                vm.resume().await.map_err(EngineError::Vmm)?;
                let to = Transport::TcpInNetns {
                    netns,
                    addr: std::net::IpAddr::V4(crate::net::GUEST_IP),
                };
                self.send_claim(to, &detail.token, &apply).await
            }),
        );
        // Where a claim's time goes, for an operator chasing a slow create.
        tracing::debug!(%id, drive = ?drive.1, attach = ?joined.1, apply = ?claimed.1, "claimed a pooled sandbox");
        let res = match joined.0 {
            Ok(net) => {
                detail.net = net;
                detail.owner_index = spec.owner_index;
                detail.egress = spec.egress.clone();
                match (claimed.0, drive.0) {
                    (Ok(mac), Ok(())) => self.adopt_claim(&mut detail, &apply, mac).await,
                    (Err(e), _) | (_, Err(e)) => Err(e),
                }
            }
            Err(e) => Err(e),
        };
        match res {
            Ok(()) => Ok(self.register_hot(id, spec.name.clone(), detail, vm)),
            Err(e) => {
                self.discard(Pooled {
                    id,
                    key: String::new(),
                    detail,
                    vm,
                })
                .await;
                Err(e)
            }
        }
    }

    /// Discards the reserved pooled sandbox `id` (its create did not
    /// happen). Whether there was one.
    pub(super) async fn unreserve(&self, id: &str) -> bool {
        let p = lock(&self.pools.reserved).remove(id);
        match p {
            Some(p) => {
                self.discard(p).await;
                true
            }
            None => false,
        }
    }

    /// Stops a pooled sandbox's VMM and removes its network and directory.
    async fn discard(&self, p: Pooled) {
        if let Err(e) = p.vm.kill().await {
            tracing::warn!(id = %p.id, error = %e, "killing a pooled VM failed");
        }
        Rollback {
            engine: self,
            dir: Some(p.detail.dir.clone()),
            net: Some(p.detail.net.clone()),
        }
        .run()
        .await;
    }

    /// See [`Engine::set_pools`](crate::contract::Engine::set_pools).
    /// Pools need template snapshots: without them this does nothing.
    pub(super) fn configure_pools(&self, specs: Vec<PoolSpec>) {
        let Some(me) = self.templates.me.get().and_then(Weak::upgrade) else {
            if specs.iter().any(|p| p.size > 0) {
                tracing::info!("warm pools need template snapshots, which are off: no pools");
            }
            return;
        };
        *lock(&self.pools.specs) = specs;
        let mut task = lock(&self.pools.task);
        if task.is_none() && !self.templates.stopping.load(Ordering::Acquire) {
            *task = Some(tokio::spawn(refill(me)));
        }
        drop(task);
        self.pools.wake.notify_one();
    }

    /// See [`Engine::pools`](crate::contract::Engine::pools).
    pub(super) fn pool_status(&self) -> Vec<PoolStatus> {
        let specs = lock(&self.pools.specs).clone();
        specs
            .into_iter()
            .map(|p| {
                let fit = self.fit(
                    &self.pool_create_spec(&p),
                    &self.image_of(&self.pool_create_spec(&p)),
                );
                let (ready, rss) = fit
                    .as_ref()
                    .and_then(|f| {
                        lock(&self.pools.ready).get(&f.key).map(|q| {
                            let rss = q
                                .iter()
                                .filter_map(|x| x.vm.pid())
                                .map(rss_bytes)
                                .fold(0u64, u64::saturating_add);
                            (u32::try_from(q.len()).unwrap_or(u32::MAX), rss)
                        })
                    })
                    .unwrap_or((0, 0));
                let template = fit
                    .as_ref()
                    .is_some_and(|f| self.templates_dir().join(&f.key).is_dir());
                let c = lock(&self.pools.counters)
                    .get(&shape(&p))
                    .copied()
                    .unwrap_or_default();
                PoolStatus {
                    spec: p,
                    ready,
                    template,
                    hits: c.hits,
                    misses: c.misses,
                    refills: c.refills,
                    discarded: c.discarded,
                    rss_bytes: rss,
                }
            })
            .collect()
    }

    /// Shutdown: the refill task ends and every pooled sandbox goes (no
    /// daemon could adopt one: they are in no store).
    pub(super) async fn stop_pools(&self) {
        self.pools.wake.notify_one();
        let task = lock(&self.pools.task).take();
        if let Some(t) = task {
            // `templates.stopping` is set: the task ends at its next step.
            let limit = self
                .cfg
                .boot_timeout
                .saturating_add(Duration::from_secs(30));
            if tokio::time::timeout(limit, t).await.is_err() {
                tracing::warn!("the pool refill did not wind down in {limit:?}");
            }
        }
        let mut all: Vec<Pooled> = lock(&self.pools.ready)
            .drain()
            .flat_map(|(_, q)| q)
            .collect();
        all.extend(lock(&self.pools.reserved).drain().map(|(_, p)| p));
        for p in all {
            self.discard(p).await;
        }
    }

    /// IDs of pooled sandboxes (ready or reserved): the orphan sweep keeps
    /// them.
    pub(super) fn pooled_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = lock(&self.pools.ready)
            .values()
            .flatten()
            .map(|p| p.id.clone())
            .collect();
        ids.extend(lock(&self.pools.reserved).keys().cloned());
        ids
    }

    /// One step of the refill task: evict under memory pressure, drop what
    /// no pool wants any more, or make one sandbox for the emptiest pool.
    /// Whether there may be more to do at once.
    async fn refill_step(&self) -> bool {
        let avail = available_mb();
        if avail.is_some_and(|a| a < EVICT_BELOW_AVAILABLE_MB) {
            let victim = {
                let mut ready = lock(&self.pools.ready);
                ready.values_mut().find_map(VecDeque::pop_back)
            };
            if let Some(p) = victim {
                tracing::warn!(id = %p.id, available_mb = ?avail, "memory pressure: discarding a pooled sandbox");
                self.count_key(&p.key, |c| c.discarded = c.discarded.saturating_add(1));
                self.discard(p).await;
                return true;
            }
            return false;
        }
        // What each pool wants, by its current template key.
        let specs = lock(&self.pools.specs).clone();
        let mut wanted: HashMap<String, (PoolSpec, super::template::Fit)> = HashMap::new();
        for p in specs {
            let spec = self.pool_create_spec(&p);
            if let Some(fit) = self.fit(&spec, &self.image_of(&spec)) {
                wanted.insert(fit.key.clone(), (p, fit));
            }
        }
        // Surplus: a pool that shrank or went, or a stale template key.
        let surplus = {
            let mut ready = lock(&self.pools.ready);
            let mut out = None;
            for (key, q) in ready.iter_mut() {
                let size = wanted.get(key).map_or(0, |(p, _)| p.size);
                if q.len() > usize::try_from(size).unwrap_or(usize::MAX) {
                    out = q.pop_back();
                    break;
                }
            }
            ready.retain(|_, q| !q.is_empty());
            out
        };
        if let Some(p) = surplus {
            tracing::info!(id = %p.id, "discarding a pooled sandbox no pool wants");
            self.count_key(&p.key, |c| c.discarded = c.discarded.saturating_add(1));
            self.discard(p).await;
            return true;
        }
        // The emptiest pool below its size, relative to its size.
        let next = {
            let ready = lock(&self.pools.ready);
            wanted
                .into_values()
                .filter_map(|(p, fit)| {
                    let have = ready.get(&fit.key).map_or(0, VecDeque::len);
                    let size = usize::try_from(p.size).unwrap_or(usize::MAX);
                    (have < size).then_some((have, p, fit))
                })
                .min_by_key(|(have, _, _)| *have)
        };
        let Some((_, p, fit)) = next else {
            return false;
        };
        if avail.is_some_and(|a| a < u64::from(p.memory_mb).saturating_add(REFILL_MIN_AVAILABLE_MB))
        {
            return false;
        }
        let dir = self.templates_dir().join(&fit.key);
        if !dir.is_dir() {
            // Built once, in the background, on the daemon's own range.
            let spec = self.pool_create_spec(&p);
            self.start_build(fit, &spec);
            return false;
        }
        // Creates come first: a claim and its first requests are what a
        // caller waits for, a refill is nobody's wait, and on a small host
        // the two share the cores.
        let since = lock(&self.pools.last_asked).map(|t| t.elapsed());
        if let Some(left) = since.and_then(|s| REFILL_YIELD.checked_sub(s)) {
            tokio::time::sleep(left).await;
            return true;
        }
        match self.make_pooled(&fit.key, &dir).await {
            Ok(made) => {
                tracing::debug!(id = %made.id, template = %fit.key, "pooled sandbox ready");
                self.count(&p, |c| c.refills = c.refills.saturating_add(1));
                lock(&self.pools.ready)
                    .entry(fit.key)
                    .or_default()
                    .push_back(made);
                true
            }
            Err(e) => {
                tracing::warn!(template = %fit.key, "making a pooled sandbox failed: {e}");
                tokio::time::sleep(FAILURE_BACKOFF).await;
                false
            }
        }
    }

    fn count_key(&self, key: &str, f: impl FnOnce(&mut Counters)) {
        let specs = lock(&self.pools.specs).clone();
        let owner = specs.into_iter().find(|p| {
            let spec = self.pool_create_spec(p);
            self.fit(&spec, &self.image_of(&spec))
                .is_some_and(|fit| fit.key == key)
        });
        if let Some(p) = owner {
            self.count(&p, f);
        }
    }

    /// A sandbox restored from the template in `dir`, paused behind a
    /// detached namespace.
    async fn make_pooled(&self, key: &str, dir: &Path) -> Result<Pooled> {
        let (m, vmm) = self.load_checkpoint(dir).await?;
        if !m.volumes.is_empty() {
            return Err(EngineError::Invalid("a template has no volumes".into()));
        }
        let id = random_hex(8);
        let (sdir, mut rb) = self.new_sandbox_dir(&id).await?;
        let res = async {
            self.copy_checkpoint_disks(dir, &sdir, &m).await?;
            let (net, sid, mac) = (self.net.clone(), id.clone(), m.guest_mac.clone());
            let detached: SandboxNet =
                blocking(move || Ok(net.setup_detached(&sid, &mac)?)).await?;
            rb.net = Some(detached.clone());
            let detail = Detail {
                dir: sdir.clone(),
                owner_index: 0,
                cpus: m.cpus,
                memory_mb: m.memory_mb,
                mac: m.guest_mac.clone(),
                token: m.agent_token.clone(),
                net: detached,
                volumes: Vec::new(),
                egress: EgressPolicy::default(),
                restore_failed: None,
                crashed: None,
            };
            let vm = self
                .driver
                .restore(&self.vm_spec(&id, &detail), &vmm)
                .await
                .map_err(EngineError::Vmm)?;
            warm_up(&detail).await;
            if let Err(e) = vm.pause().await {
                let _ = vm.kill().await;
                return Err(EngineError::Vmm(e));
            }
            Ok::<_, EngineError>(Pooled {
                id: id.clone(),
                key: key.to_string(),
                detail,
                vm,
            })
        }
        .await;
        if res.is_err() {
            rb.run().await;
        }
        res
    }
}

/// When a claim's parts end, from its start.
#[derive(Clone, Copy)]
struct Timed(std::time::Instant);

impl Timed {
    fn start() -> Timed {
        Timed(std::time::Instant::now())
    }

    async fn run<T>(self, f: impl std::future::Future<Output = T>) -> (T, Duration) {
        let v = f.await;
        (v, self.0.elapsed())
    }
}

/// Runs what a claim and a first exec will run (a HELLO, an APPLY_CONFIG
/// that changes nothing of note, an exec of `true`) once, before the
/// sandbox is paused. A VM restored from a
/// snapshot has run none of its code in this VMM yet: under TCG each first
/// pass through the agent's paths (network stack, runtime, spawn) is
/// translated on the spot, which made a claim ~300 ms where a warm one
/// takes a few. The detached namespace has no route from the host, so the
/// connection is made from inside it. Best effort: a failure here only
/// leaves the claim as slow as it was.
async fn warm_up(detail: &Detail) {
    let client = AgentClient::new(
        Transport::TcpInNetns {
            netns: detail.net.netns_path(),
            addr: std::net::IpAddr::V4(crate::net::GUEST_IP),
        },
        Some(detail.token.clone()),
    );
    // The pool's own token stays; the clock and fresh entropy do no harm
    // (the claim sets both again), and the hostname is replaced too.
    let apply = ApplyConfig {
        hostname: "pooled".into(),
        token: detail.token.clone(),
        entropy: super::template::fresh_entropy(),
        unix_time_ms: super::template::now_ms(),
        ..ApplyConfig::default()
    };
    // The daemon's client keeps its connection between operations, so the
    // claimed sandbox's first exec takes that path: run it twice (a new
    // connection, then a kept one), then close it and make a last round
    // trip, by which the agent has seen the close (a connection left open
    // would be in the pooled guest's memory when it is paused).
    let kept = client.clone().reusing();
    let warmed = async {
        client.hello().await?;
        client.apply_config(&apply).await?;
        kept.exec(["true"]).await?;
        kept.exec(["true"]).await?;
        kept.close_idle();
        client.hello().await
    };
    if let Err(e) = tokio::time::timeout(WARM_UP_LIMIT, warmed)
        .await
        .unwrap_or(Err(ClientError::Closed))
    {
        tracing::debug!("warming a pooled sandbox up: {e}");
    }
}

/// The refill task: runs until the daemon stops.
async fn refill(me: Arc<MicroVmEngine>) {
    loop {
        if me.templates.stopping.load(Ordering::Acquire) {
            return;
        }
        if me.refill_step().await {
            continue;
        }
        let _ = tokio::time::timeout(IDLE_RECHECK, me.pools.wake.notified()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_lines_parse() {
        let info = "MemTotal:       24000000 kB\nMemAvailable:    2048000 kB\n";
        assert_eq!(proc_kb(info, "MemAvailable"), Some(2_048_000));
        assert_eq!(proc_kb(info, "MemFree"), None);
        assert_eq!(proc_kb("VmRSS:\t  1234 kB\n", "VmRSS"), Some(1234));
    }
}
