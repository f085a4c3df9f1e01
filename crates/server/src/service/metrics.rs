//! A sandbox's resource use, read from inside the guest on request: CPU
//! from two readings of `/proc/stat` a moment apart, memory from
//! `/proc/meminfo`, the root filesystem from `df`. Read in the guest
//! because that is what the sandbox's code sees (a cgroup or VMM view of
//! the same VM counts the guest kernel's page cache as used memory).

use std::time::{Duration, SystemTime};

use bhatti_engine::EngineExt;
use bhatti_protocol::messages::ExecRequest;
use bhatti_store::{Sandbox, User};

use crate::service::error::{ServiceError, ServiceResult};
use crate::state::Shared;

/// Between the two CPU readings.
const CPU_WINDOW: Duration = Duration::from_millis(200);

/// One reading.
#[derive(Debug, Clone, PartialEq)]
pub struct Metrics {
    pub at: SystemTime,
    pub cpu_count: u32,
    pub cpu_used_pct: f32,
    pub mem_used: u64,
    pub mem_total: u64,
    pub mem_cache: u64,
    pub disk_used: u64,
    pub disk_total: u64,
}

/// `cpu` line totals: (busy, all) jiffies, and the number of CPUs.
fn cpu_times(stat: &str) -> Option<(u64, u64, u32)> {
    let mut total = None;
    let mut cpus = 0u32;
    for line in stat.lines() {
        let mut f = line.split_whitespace();
        match f.next() {
            Some("cpu") => {
                let v: Vec<u64> = f.filter_map(|x| x.parse().ok()).collect();
                let all: u64 = v.iter().fold(0u64, |a, b| a.saturating_add(*b));
                // idle and iowait are not busy.
                let idle = v
                    .get(3)
                    .copied()
                    .unwrap_or(0)
                    .saturating_add(v.get(4).copied().unwrap_or(0));
                total = Some((all.saturating_sub(idle), all));
            }
            Some(c) if c.starts_with("cpu") => cpus = cpus.saturating_add(1),
            _ => {}
        }
    }
    total.map(|(busy, all)| (busy, all, cpus))
}

/// `(used, total, cache)` bytes from `/proc/meminfo`.
fn memory(meminfo: &str) -> Option<(u64, u64, u64)> {
    let kb = |key: &str| {
        meminfo.lines().find_map(|l| {
            let rest = l.strip_prefix(key)?.strip_prefix(':')?;
            rest.split_whitespace().next()?.parse::<u64>().ok()
        })
    };
    let total = kb("MemTotal")?;
    let available = kb("MemAvailable").or_else(|| kb("MemFree"))?;
    let cache = kb("Cached")
        .unwrap_or(0)
        .saturating_add(kb("Buffers").unwrap_or(0));
    Some((
        total.saturating_sub(available).saturating_mul(1024),
        total.saturating_mul(1024),
        cache.saturating_mul(1024),
    ))
}

/// `(used, total)` bytes from `df -Pk /`.
fn disk(df: &str) -> Option<(u64, u64)> {
    let line = df.lines().nth(1)?;
    let f: Vec<&str> = line.split_whitespace().collect();
    let total: u64 = f.get(1)?.parse().ok()?;
    let used: u64 = f.get(2)?.parse().ok()?;
    Some((used.saturating_mul(1024), total.saturating_mul(1024)))
}

async fn read(st: &Shared, sb: &Sandbox, path: &str) -> ServiceResult<String> {
    let agent = st.engine.agent(&sb.id).map_err(ServiceError::from)?;
    let v = agent
        .file_read_to_vec(path, Default::default())
        .await
        .map_err(ServiceError::from)?;
    Ok(String::from_utf8_lossy(&v).into_owned())
}

/// A reading of the caller's sandbox `id` (see [`sample`]).
pub async fn for_caller(st: &Shared, user: &User, id: &str) -> ServiceResult<Metrics> {
    let sb = st.sandbox(user, id).await?;
    sample(st, &sb).await
}

/// Reads the sandbox's metrics now (waking it: a paused sandbox has
/// nothing to measure).
pub async fn sample(st: &Shared, sb: &Sandbox) -> ServiceResult<Metrics> {
    st.ensure_hot(sb).await?;
    let unreadable = |what: &str| ServiceError::internal(format!("guest {what} is unreadable"));
    let first =
        cpu_times(&read(st, sb, "/proc/stat").await?).ok_or_else(|| unreadable("/proc/stat"))?;
    tokio::time::sleep(CPU_WINDOW).await;
    let second =
        cpu_times(&read(st, sb, "/proc/stat").await?).ok_or_else(|| unreadable("/proc/stat"))?;
    let (busy, all) = (
        second.0.saturating_sub(first.0),
        second.1.saturating_sub(first.1),
    );
    let cpu_used_pct = if all == 0 {
        0.0
    } else {
        // A percentage: 0–100, well within f32.
        #[allow(clippy::cast_possible_truncation)]
        let pct = (busy as f64 * 100.0 / all as f64) as f32;
        pct
    };
    let (mem_used, mem_total, mem_cache) =
        memory(&read(st, sb, "/proc/meminfo").await?).ok_or_else(|| unreadable("/proc/meminfo"))?;
    let df = st
        .engine
        .exec_request(&sb.id, ExecRequest::new(["df", "-Pk", "/"]), None)
        .await?;
    let (disk_used, disk_total) = disk(&df.stdout_str()).unwrap_or((0, 0));
    Ok(Metrics {
        at: SystemTime::now(),
        cpu_count: second.2.max(1),
        cpu_used_pct,
        mem_used,
        mem_total,
        mem_cache,
        disk_used,
        disk_total,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_files_parse() {
        let stat = "cpu  100 0 50 800 50 0 0 0 0 0\ncpu0 50 0 25 400 25 0 0 0 0 0\ncpu1 50 0 25 400 25 0 0 0 0 0\nintr 1\n";
        assert_eq!(cpu_times(stat), Some((150, 1000, 2)));
        let mem = "MemTotal:        1000 kB\nMemFree:          100 kB\nMemAvailable:     600 kB\nBuffers:           10 kB\nCached:           200 kB\n";
        assert_eq!(memory(mem), Some((400 * 1024, 1000 * 1024, 210 * 1024)));
        let df = "Filesystem     1024-blocks    Used Available Capacity Mounted on\n/dev/vda           1000000  250000    750000      25% /\n";
        assert_eq!(disk(df), Some((250_000 * 1024, 1_000_000 * 1024)));
        assert_eq!(disk(""), None);
        assert_eq!(cpu_times("nothing"), None);
    }
}
