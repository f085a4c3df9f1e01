//! What makes a daemon's host network objects its own, so that two daemons
//! (or a daemon and a test run) share one host without touching each
//! other's sandboxes:
//!
//! - **An address pool of its own**, claimed with an exclusive `flock` on
//!   `/run/bhatti/pools/<pool>.lock` for as long as the claim lives. The
//!   kernel drops the lock when the process dies, so a claim is never
//!   stale. A daemon remembers its pool in its data directory and claims
//!   the same one after a restart.
//! - **Names derived from the pool**: the host chains and the host veth
//!   prefix. The default pool keeps the historical names (`BHATTI-FWD`,
//!   `bhv-`), so existing installations are unchanged; any other pool adds
//!   a two-digit tag (`BHATTI-FWD-08`, `b08-`). Rules that match "any of our
//!   veths" (`-i bhv+`) then never match another daemon's.
//! - **A ledger** of the sandbox IDs it has set networks up for
//!   (`<ledger>/<id>`, written before anything is created, removed after
//!   teardown). Orphan clean-up considers only IDs in the ledger: a
//!   `bhatti-<id>` namespace that is not in it belongs to someone else.

use std::collections::HashMap;
use std::fs::File;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};

use super::consts::{DEFAULT_POOL, HOST_VETH_PREFIX};
use super::{Ipv4Cidr, NetError};

/// Where pool claims are kept (a tmpfs: claims do not outlive a boot).
pub const CLAIM_DIR: &str = "/run/bhatti/pools";

/// The pools a daemon takes when none is configured, in order: the
/// default, then /16s from 10.208.0.0 to 10.255.0.0 (256 owners each).
fn candidates() -> impl Iterator<Item = Ipv4Cidr> {
    std::iter::once(DEFAULT_POOL).chain(scratch_candidates())
}

/// The pools tests and benchmarks take: never the default, which belongs
/// to the host's own daemon.
fn scratch_candidates() -> impl Iterator<Item = Ipv4Cidr> {
    (208u8..=255).map(|b| Ipv4Cidr::new_unchecked(Ipv4Addr::new(10, b, 0, 0), 16))
}

/// The two-digit tag of a pool's names; `None` for the default pool.
fn tag_of(pool: Ipv4Cidr) -> Option<u8> {
    if pool == DEFAULT_POOL {
        return None;
    }
    let o = pool.addr().octets();
    Some(o[1] % 100)
}

/// An exclusive claim on a pool, held while this value lives.
#[derive(Debug)]
pub struct PoolClaim {
    pool: Ipv4Cidr,
    _lock: Arc<File>,
}

/// The claims this process holds. `flock` is per open file, so a second
/// lock from this process on a pool it holds would fail like another
/// process's; a daemon restarted in-process (tests do) takes its own pool
/// back from here instead, while a search for a free pool skips them.
static HELD: Mutex<Option<HashMap<Ipv4Cidr, Weak<File>>>> = Mutex::new(None);

fn held(pool: Ipv4Cidr) -> Option<Arc<File>> {
    let h = bhatti_sync::lock(&HELD);
    h.as_ref()?.get(&pool)?.upgrade()
}

fn remember_held(pool: Ipv4Cidr, f: &Arc<File>) {
    let mut h = bhatti_sync::lock(&HELD);
    h.get_or_insert_with(HashMap::new)
        .insert(pool, Arc::downgrade(f));
}

impl PoolClaim {
    /// The claimed pool.
    pub(crate) fn pool(&self) -> Ipv4Cidr {
        self.pool
    }

    fn lock_path(pool: Ipv4Cidr) -> PathBuf {
        Path::new(CLAIM_DIR).join(format!("{}_{}.lock", pool.addr(), pool.prefix()))
    }

    /// Claims exactly `pool` as a daemon's own (one this process already
    /// holds is shared); `Ok(None)` when another live process holds it.
    pub fn try_claim(pool: Ipv4Cidr) -> Result<Option<PoolClaim>, NetError> {
        if let Some(f) = held(pool) {
            return Ok(Some(PoolClaim { pool, _lock: f }));
        }
        Self::lock(pool)
    }

    fn lock(pool: Ipv4Cidr) -> Result<Option<PoolClaim>, NetError> {
        std::fs::create_dir_all(CLAIM_DIR)
            .map_err(|e| NetError::io(format!("create {CLAIM_DIR}"), e))?;
        let path = Self::lock_path(pool);
        let Some(f) = crate::lockfile::try_exclusive(&path)
            .map_err(|e| NetError::io(format!("lock {}", path.display()), e))?
        else {
            return Ok(None);
        };
        let f = Arc::new(f);
        remember_held(pool, &f);
        Ok(Some(PoolClaim { pool, _lock: f }))
    }

    /// The first free pool of `list` whose addresses the host does not use.
    fn first_free(
        list: impl Iterator<Item = Ipv4Cidr>,
        veth_prefix_of: impl Fn(Ipv4Cidr) -> String,
    ) -> Result<PoolClaim, NetError> {
        let mut tried = Vec::new();
        for pool in list {
            if super::host::check_pool_is_free(pool, &veth_prefix_of(pool)).is_err() {
                tried.push(format!("{pool} (in use on the host)"));
                continue;
            }
            if held(pool).is_some() {
                tried.push(format!(
                    "{pool} (claimed by another daemon in this process)"
                ));
                continue;
            }
            match Self::lock(pool)? {
                Some(c) => return Ok(c),
                None => tried.push(format!("{pool} (claimed by another daemon)")),
            }
        }
        Err(NetError::InvalidConfig(format!(
            "no free sandbox address pool: {}; set one in the network config",
            tried.join(", ")
        )))
    }

    /// A daemon's pool: the one remembered in `remembered` (a file in its
    /// data directory), else `configured`, else the first free candidate;
    /// claimed, and remembered for the next start. A remembered or
    /// configured pool that another daemon holds is an error, not a
    /// silent switch: the sandboxes on disk have addresses in it.
    pub fn for_daemon(
        remembered: &Path,
        configured: Option<Ipv4Cidr>,
    ) -> Result<PoolClaim, NetError> {
        let stored = match std::fs::read_to_string(remembered) {
            Ok(s) => Some(s.trim().parse::<Ipv4Cidr>().map_err(|_| {
                NetError::InvalidConfig(format!("{}: not a pool: {s:?}", remembered.display()))
            })?),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(NetError::io(format!("read {}", remembered.display()), e)),
        };
        let claim = match configured.or(stored) {
            Some(pool) => Self::try_claim(pool)?.ok_or_else(|| {
                NetError::InvalidConfig(format!(
                    "the sandbox address pool {pool} is claimed by another daemon on this host (lock {})",
                    Self::lock_path(pool).display()
                ))
            })?,
            None => Self::first_free(candidates(), |p| Scope::veth_prefix_for(tag_of(p)))?,
        };
        if stored != Some(claim.pool) {
            write_synced(remembered, &format!("{}\n", claim.pool))?;
        }
        Ok(claim)
    }

    /// A pool for a test run or a benchmark: never the default, never one
    /// a daemon holds.
    pub fn scratch() -> Result<PoolClaim, NetError> {
        Self::first_free(scratch_candidates(), |p| Scope::veth_prefix_for(tag_of(p)))
    }
}

fn write_synced(path: &Path, text: &str) -> Result<(), NetError> {
    bhatti_durable::write(path, text.as_bytes(), 0o644)
        .map_err(|e| NetError::io(format!("write {}", path.display()), e))
}

/// A manager's names and ledger, derived from its pool.
#[derive(Debug)]
pub(crate) struct Scope {
    tag: Option<u8>,
    ledger: Option<PathBuf>,
}

impl Scope {
    pub(crate) fn new(pool: Ipv4Cidr, ledger: Option<PathBuf>) -> Scope {
        Scope {
            tag: tag_of(pool),
            ledger,
        }
    }

    fn veth_prefix_for(tag: Option<u8>) -> String {
        match tag {
            None => HOST_VETH_PREFIX.to_string(),
            Some(t) => format!("b{t:02}-"),
        }
    }

    /// `bhv-` for the default pool, `b<tag>-` otherwise: four characters,
    /// leaving eleven of the interface name for the sandbox ID.
    pub(crate) fn veth_prefix(&self) -> String {
        Self::veth_prefix_for(self.tag)
    }

    /// A host chain's name for this pool.
    pub(crate) fn chain(&self, base: &str) -> String {
        match self.tag {
            None => base.to_string(),
            Some(t) => format!("{base}-{t:02}"),
        }
    }

    fn entry(&self, id: &str) -> Option<PathBuf> {
        self.ledger.as_ref().map(|d| d.join(id))
    }

    /// Records `id` as ours before anything is created for it.
    pub(crate) fn record(&self, id: &str) -> Result<(), NetError> {
        let Some(p) = self.entry(id) else {
            return Ok(());
        };
        if let Some(d) = p.parent() {
            std::fs::create_dir_all(d)
                .map_err(|e| NetError::io(format!("create {}", d.display()), e))?;
        }
        write_synced(&p, "")
    }

    /// Forgets `id` once nothing of it is left.
    pub(crate) fn forget(&self, id: &str) {
        if let Some(p) = self.entry(id) {
            let _ = std::fs::remove_file(p);
        }
    }

    /// Every ID in the ledger (none without one: then nothing on the host
    /// is known to be ours beyond what the manager tracks).
    pub(crate) fn recorded(&self) -> Vec<String> {
        let Some(d) = &self.ledger else {
            return Vec::new();
        };
        std::fs::read_dir(d)
            .map(|rd| {
                rd.filter_map(|e| e.ok()?.file_name().into_string().ok())
                    .filter(|n| !n.ends_with(".tmp"))
                    .collect()
            })
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_keep_the_default_pools_and_tag_the_others() {
        let d = Scope::new(DEFAULT_POOL, None);
        assert_eq!(d.veth_prefix(), "bhv-");
        assert_eq!(d.chain("BHATTI-FWD"), "BHATTI-FWD");
        let p = Ipv4Cidr::new_unchecked(Ipv4Addr::new(10, 208, 0, 0), 16);
        let s = Scope::new(p, None);
        assert_eq!(s.veth_prefix(), "b08-");
        assert_eq!(s.chain("BHATTI-POST"), "BHATTI-POST-08");
        // Every scratch pool has a tag of its own, and no tag's prefix is
        // matched by the default pool's `bhv+`.
        let tags: std::collections::HashSet<_> = scratch_candidates().map(tag_of).collect();
        assert_eq!(tags.len(), scratch_candidates().count());
        assert!(scratch_candidates().all(|p| p != DEFAULT_POOL));
    }

    #[test]
    fn the_ledger_records_and_forgets() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = Scope::new(DEFAULT_POOL, Some(dir.path().join("net")));
        assert!(s.recorded().is_empty());
        s.record("0123456789abcdef").expect("record");
        assert_eq!(s.recorded(), vec!["0123456789abcdef".to_string()]);
        s.forget("0123456789abcdef");
        assert!(s.recorded().is_empty());
    }
}
