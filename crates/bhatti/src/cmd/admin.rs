//! `bhatti admin status|events|metrics|pool`: the operator's view, DB-direct
//! like `user` (run on the server; opens `<data_dir>/state.db` read-only
//! in practice, beside the running daemon). The warm pools live in the
//! daemon's memory only: `pool`, and the pools line of `status`, ask the
//! daemon through the API (as a user named in `admin_users`).
//!
//! The reference's status also checked GitHub for a newer release; this
//! build does not phone home.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context as _};
use bhatti_store::{time, EventQuery, Store};
use clap::Subcommand;

use super::user::open;
use super::Ctx;
use crate::output::{print_json, Fields, Table};

#[derive(Debug, Subcommand)]
pub enum AdminCmd {
    /// Totals, sandboxes per user and status, the latest events.
    Status,
    /// Query the event log (newest first).
    Events {
        /// Event type or prefix, e.g. `sandbox.` or `auth.failed`.
        #[arg(long = "type", value_name = "PREFIX")]
        event_type: Option<String>,
        /// User name or ID.
        #[arg(long)]
        user: Option<String>,
        /// Sandbox ID (or name, with --user).
        #[arg(long)]
        sandbox: Option<String>,
        /// 30m, 24h, 7d, YYYY-MM-DD or RFC 3339.
        #[arg(long)]
        since: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// Print only how many events match.
        #[arg(long)]
        count: bool,
    },
    /// Events per time bucket and type (1 min buckets under 2 h, 15 min up
    /// to 24 h, then 1 h).
    Metrics {
        #[arg(long, default_value = "1h")]
        since: String,
    },
    /// The warm pools (from the daemon); `pool set` changes one until the
    /// daemon restarts.
    Pool {
        #[command(subcommand)]
        cmd: Option<PoolCmd>,
    },
}

#[derive(Debug, Subcommand)]
pub enum PoolCmd {
    /// Sets the size of the pool of an image and shape (0 empties it),
    /// adding the pool if there is none. Flags left out match any pool;
    /// they must pick at most one.
    Set {
        /// Sandboxes to keep ready (0–32).
        size: u32,
        /// Image name (an admin image, or `minimal`).
        #[arg(long)]
        image: Option<String>,
        #[arg(long)]
        cpus: Option<u32>,
        /// MiB.
        #[arg(long = "memory")]
        memory_mb: Option<u32>,
    },
}

/// The pools after `set`: the one the flags pick gets `size`, or a new
/// pool is added when none matches.
fn upsert_pool(
    pools: &[bhatti_api::PoolInfo],
    size: u32,
    image: Option<String>,
    cpus: Option<u32>,
    memory_mb: Option<u32>,
) -> anyhow::Result<Vec<bhatti_api::PoolConfig>> {
    let picks = |p: &bhatti_api::PoolInfo| {
        image.as_ref().is_none_or(|i| *i == p.image)
            && cpus.is_none_or(|c| c == p.cpus)
            && memory_mb.is_none_or(|m| m == p.memory_mb)
    };
    let matching = pools.iter().filter(|p| picks(p)).count();
    if matching > 1 {
        bail!("{matching} pools match; pick one with --image, --cpus and --memory");
    }
    let mut out: Vec<bhatti_api::PoolConfig> = pools
        .iter()
        .map(|p| bhatti_api::PoolConfig {
            image: Some(p.image.clone()),
            cpus: Some(p.cpus),
            memory_mb: Some(p.memory_mb),
            size: if picks(p) { size } else { p.size },
        })
        .collect();
    if matching == 0 {
        out.push(bhatti_api::PoolConfig {
            image,
            cpus,
            memory_mb,
            size,
        });
    }
    Ok(out)
}

fn print_pools(ctx: &Ctx, p: &bhatti_api::Pools) -> anyhow::Result<()> {
    if ctx.json {
        return print_json(p);
    }
    if !p.enabled {
        outln!("Warm pools are off (they need a microVM engine with template_snapshots).");
        return Ok(());
    }
    let mut t = Table::new(&[
        "IMAGE",
        "CPUS",
        "MEMORY",
        "SIZE",
        "READY",
        "TEMPLATE",
        "HITS",
        "MISSES",
        "REFILLS",
        "DISCARDED",
        "RSS",
    ]);
    for i in &p.pools {
        t.row([
            i.image.clone(),
            i.cpus.to_string(),
            format!("{} MB", i.memory_mb),
            i.size.to_string(),
            i.ready.to_string(),
            if i.template { "yes" } else { "building" }.to_string(),
            i.hits.to_string(),
            i.misses.to_string(),
            i.refills.to_string(),
            i.discarded.to_string(),
            format!("{} MiB", i.rss_bytes / (1024 * 1024)),
        ]);
    }
    t.print_or("No warm pools.");
    Ok(())
}

/// `--since` as an RFC 3339 UTC timestamp: a relative `30m`/`24h`/`7d`
/// (also `s`), a day `YYYY-MM-DD` (its midnight UTC), or RFC 3339 itself.
pub fn since_ts(s: &str, now: SystemTime) -> anyhow::Result<String> {
    let s = s.trim();
    if let Some(unit) = s.chars().last().filter(|c| "smhd".contains(*c)) {
        if let Some(Ok(n)) = s.strip_suffix(unit).map(str::parse::<u64>) {
            let per = match unit {
                's' => 1,
                'm' => 60,
                'h' => 3600,
                _ => 86_400,
            };
            let t = n
                .checked_mul(per)
                .and_then(|secs| now.checked_sub(Duration::from_secs(secs)))
                .filter(|t| *t >= std::time::UNIX_EPOCH)
                .context("--since reaches before 1970")?;
            return Ok(time::format_ts(t));
        }
    }
    let full = if s.len() == 10 && s.as_bytes().get(4) == Some(&b'-') {
        format!("{s}T00:00:00Z")
    } else {
        s.to_string()
    };
    match time::parse_ts(&full) {
        Some(t) => Ok(time::format_ts(t)),
        None => bail!("--since {s:?}: use 30m, 24h, 7d, YYYY-MM-DD or an RFC 3339 UTC time"),
    }
}

/// The start (unix seconds) of the `width`-second bucket holding `secs`; a
/// zero width leaves `secs` as it is.
fn bucket_start(secs: u64, width: u64) -> u64 {
    secs.saturating_sub(secs.checked_rem(width).unwrap_or(0))
}

/// A bucket's start as an RFC 3339 time (the bare seconds if the clock
/// cannot say it, which no bucket from a parsed timestamp reaches).
fn bucket_time(start: u64) -> String {
    SystemTime::UNIX_EPOCH
        .checked_add(Duration::from_secs(start))
        .map_or_else(|| start.to_string(), time::format_ts)
}

/// The bucket width for a window, as the reference chose it.
pub fn bucket_secs(window: Duration) -> u64 {
    match window.as_secs() {
        w if w < 2 * 3600 => 60,
        w if w <= 24 * 3600 => 15 * 60,
        _ => 3600,
    }
}

fn user_id(store: &Store, name_or_id: &str) -> anyhow::Result<String> {
    if let Ok(u) = store.user_by_name(name_or_id) {
        return Ok(u.id);
    }
    match store.list_users()?.into_iter().find(|u| u.id == name_or_id) {
        Some(u) => Ok(u.id),
        None => bail!("user {name_or_id:?} not found (see: bhatti user list)"),
    }
}

pub async fn run(ctx: &Ctx, c: AdminCmd) -> anyhow::Result<i32> {
    if let AdminCmd::Pool { cmd } = c {
        let client = ctx.client()?;
        let p = match cmd {
            None => client.pools().await?,
            Some(PoolCmd::Set {
                size,
                image,
                cpus,
                memory_mb,
            }) => {
                let now = client.pools().await?;
                client
                    .set_pools(upsert_pool(&now.pools, size, image, cpus, memory_mb)?)
                    .await?
            }
        };
        print_pools(ctx, &p)?;
        return Ok(0);
    }
    let store = open(&ctx.data_dir(), false)?;
    match c {
        AdminCmd::Pool { .. } => Ok(0),
        AdminCmd::Status => {
            // The pools are in the daemon's memory: asked for, and left
            // out (with why) when the daemon does not answer.
            let pools = match ctx.client() {
                Ok(c) => c.pools().await.map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            status(ctx, &store, pools)
        }
        AdminCmd::Events {
            event_type,
            user,
            sandbox,
            since,
            limit,
            count,
        } => {
            let user_id = user.as_deref().map(|u| user_id(&store, u)).transpose()?;
            let sandbox_id = match (&sandbox, &user_id) {
                (Some(s), Some(u)) => Some(store.sandbox(u, s).map(|s| s.id).unwrap_or(s.clone())),
                (s, _) => s.clone(),
            };
            let q = EventQuery {
                type_prefix: event_type,
                user_id,
                sandbox_id,
                since: since
                    .as_deref()
                    .map(|s| since_ts(s, SystemTime::now()))
                    .transpose()?,
                limit: (!count).then_some(limit),
            };
            let events = store.events(&q)?;
            if count {
                if ctx.json {
                    print_json(&serde_json::json!({ "count": events.len() }))?;
                } else {
                    outln!("{}", events.len());
                }
                return Ok(0);
            }
            if ctx.json {
                print_json(&events)?;
                return Ok(0);
            }
            let mut t = Table::new(&["TIME", "TYPE", "USER", "SANDBOX", "META"]);
            for e in &events {
                t.row([
                    e.ts.clone(),
                    e.event_type.clone(),
                    e.user_id.clone(),
                    e.sandbox_id.clone(),
                    e.meta.to_string(),
                ]);
            }
            t.print_or("No events match.");
            Ok(0)
        }
        AdminCmd::Metrics { since } => {
            let now = SystemTime::now();
            let from = since_ts(&since, now)?;
            let start = time::parse_ts(&from).context("since")?;
            let window = now.duration_since(start).unwrap_or_default();
            let width = bucket_secs(window);
            let events = store.events(&EventQuery {
                since: Some(from),
                ..Default::default()
            })?;
            // bucket start (unix s) → type → count
            let mut buckets: BTreeMap<u64, BTreeMap<String, u64>> = BTreeMap::new();
            for e in &events {
                let Some(t) = time::parse_ts(&e.ts) else {
                    continue;
                };
                let secs = t
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_secs();
                let n = buckets
                    .entry(bucket_start(secs, width))
                    .or_default()
                    .entry(e.event_type.clone())
                    .or_default();
                *n = n.saturating_add(1);
            }
            if ctx.json {
                let rows: Vec<_> = buckets
                    .iter()
                    .map(|(b, types)| {
                        serde_json::json!({
                            "bucket": bucket_time(*b),
                            "width_secs": width,
                            "counts": types,
                        })
                    })
                    .collect();
                print_json(&rows)?;
                return Ok(0);
            }
            let mut t = Table::new(&["BUCKET", "TOTAL", "EVENTS"]);
            for (b, types) in &buckets {
                let total: u64 = types.values().sum();
                let detail: Vec<String> = types.iter().map(|(k, v)| format!("{k}={v}")).collect();
                t.row([bucket_time(*b), total.to_string(), detail.join(" ")]);
            }
            if t.is_empty() {
                eprintln!("No events since {since}.");
            } else {
                outln!("{} buckets of {} min", buckets.len(), width / 60);
                t.print();
            }
            Ok(0)
        }
    }
}

fn status(
    ctx: &Ctx,
    store: &Store,
    pools: Result<bhatti_api::Pools, String>,
) -> anyhow::Result<i32> {
    let users = store.list_users()?;
    let sandboxes = store.list_all_sandboxes()?;
    let mut by_status: BTreeMap<String, u64> = BTreeMap::new();
    let mut per_user: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
    let (mut cpus, mut mem) = (0u64, 0u64);
    for s in &sandboxes {
        let st = s.status.as_str().to_string();
        let n = by_status.entry(st.clone()).or_default();
        *n = n.saturating_add(1);
        let n = per_user
            .entry(s.user_id.clone())
            .or_default()
            .entry(st)
            .or_default();
        *n = n.saturating_add(1);
        if s.status.as_str() == "running" {
            cpus = cpus.saturating_add(u64::from(s.cpus));
            mem = mem.saturating_add(u64::from(s.memory_mb));
        }
    }
    let recent = store.events(&EventQuery {
        limit: Some(10),
        ..Default::default()
    })?;
    let name_of = |id: &str| {
        users
            .iter()
            .find(|u| u.id == id)
            .map_or_else(|| id.to_string(), |u| u.name.clone())
    };
    if ctx.json {
        let per: BTreeMap<String, &BTreeMap<String, u64>> =
            per_user.iter().map(|(u, m)| (name_of(u), m)).collect();
        print_json(&serde_json::json!({
            "users": users.len(),
            "sandboxes": sandboxes.len(),
            "by_status": by_status,
            "running_cpus": cpus,
            "running_memory_mb": mem,
            "per_user": per,
            "recent_events": recent,
            "pools": pools.as_ref().ok(),
        }))?;
        return Ok(0);
    }
    let mut f = Fields::new();
    f.add("Users", users.len().to_string())
        .add("Sandboxes", sandboxes.len().to_string());
    for (st, n) in &by_status {
        f.add(&format!("  {st}"), n.to_string());
    }
    f.add("Running vCPUs", cpus.to_string())
        .add("Running memory", format!("{mem} MB"));
    // Pooled sandboxes are the daemon's, in no user's count above.
    match &pools {
        Ok(p) => {
            let ready: u64 = p.pools.iter().map(|i| u64::from(i.ready)).sum();
            let size: u64 = p.pools.iter().map(|i| u64::from(i.size)).sum();
            let rss: u64 = p.pools.iter().map(|i| i.rss_bytes).sum();
            f.add(
                "Warm pools",
                format!(
                    "{ready}/{size} ready in {} pools, {} MiB resident (bhatti admin pool)",
                    p.pools.len(),
                    rss / (1024 * 1024)
                ),
            );
        }
        Err(e) => {
            f.add("Warm pools", format!("unknown ({e})"));
        }
    }
    f.print();
    if !per_user.is_empty() {
        outln!();
        let mut t = Table::new(&["USER", "SANDBOXES", "BY STATUS"]);
        for (u, m) in &per_user {
            let total: u64 = m.values().sum();
            let detail: Vec<String> = m.iter().map(|(k, v)| format!("{k}={v}")).collect();
            t.row([name_of(u), total.to_string(), detail.join(" ")]);
        }
        t.print();
    }
    if !recent.is_empty() {
        outln!();
        outln!("Recent events:");
        let mut t = Table::new(&["TIME", "TYPE", "USER", "SANDBOX"]);
        for e in &recent {
            t.row([
                e.ts.clone(),
                e.event_type.clone(),
                name_of(&e.user_id),
                e.sandbox_id.clone(),
            ]);
        }
        t.print();
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_set_picks_one_pool_or_adds_one() {
        let pool = |image: &str, memory_mb: u32, size: u32| bhatti_api::PoolInfo {
            image: image.into(),
            cpus: 1,
            memory_mb,
            size,
            ready: 0,
            template: true,
            hits: 0,
            misses: 0,
            refills: 0,
            discarded: 0,
            rss_bytes: 0,
        };
        let now = [pool("base", 1024, 2), pool("docker", 2048, 1)];
        let out = upsert_pool(&now, 5, Some("docker".into()), None, None).unwrap();
        assert_eq!(
            out.iter().map(|p| p.size).collect::<Vec<_>>(),
            [2, 5],
            "only the picked pool changes"
        );
        let out = upsert_pool(&now, 1, Some("browser".into()), None, Some(4096)).unwrap();
        assert_eq!(out.len(), 3);
        assert_eq!(out[2].image.as_deref(), Some("browser"));
        assert_eq!(out[2].memory_mb, Some(4096));
        assert!(
            upsert_pool(&now, 1, None, Some(1), None).is_err(),
            "ambiguous"
        );
        let out = upsert_pool(&now, 0, None, None, Some(1024)).unwrap();
        assert_eq!(out[0].size, 0);
    }

    #[test]
    fn since_forms() {
        let now = time::parse_ts("2026-12-02T12:00:00Z").unwrap();
        assert_eq!(since_ts("30m", now).unwrap(), "2026-12-02T11:30:00.000Z");
        assert_eq!(since_ts("24h", now).unwrap(), "2026-12-01T12:00:00.000Z");
        assert_eq!(since_ts("7d", now).unwrap(), "2026-11-25T12:00:00.000Z");
        assert_eq!(
            since_ts("2026-11-30", now).unwrap(),
            "2026-11-30T00:00:00.000Z"
        );
        assert_eq!(
            since_ts("2026-11-30T08:15:00Z", now).unwrap(),
            "2026-11-30T08:15:00.000Z"
        );
        assert!(since_ts("yesterday", now).is_err());
        assert!(since_ts("5w", now).is_err());
        // Too far back is an error, not an overflow.
        assert!(since_ts("18446744073709551615d", now).is_err());
        assert!(since_ts("99999999999d", now).is_err());
    }

    #[test]
    fn buckets_grow_with_the_window() {
        assert_eq!(bucket_secs(Duration::from_secs(3600)), 60);
        assert_eq!(bucket_secs(Duration::from_secs(6 * 3600)), 900);
        assert_eq!(bucket_secs(Duration::from_secs(7 * 86_400)), 3600);
    }
}
