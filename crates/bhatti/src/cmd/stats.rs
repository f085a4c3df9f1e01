//! `bhatti stats [SANDBOX…]`: CPU, memory and disk use as the sandbox's own
//! code sees them, read in the guest now (`docker stats --no-stream`).
//! Without names, every running sandbox.

use clap::Args;

use super::Ctx;
use crate::output::{print_json, Table};

#[derive(Debug, Args)]
pub struct StatsArgs {
    /// Sandbox names or IDs (default: every running sandbox).
    pub sandboxes: Vec<String>,
}

/// Bytes as MiB or GiB, one decimal.
fn size(b: u64) -> String {
    const MIB: f64 = 1024.0 * 1024.0;
    let m = b as f64 / MIB;
    if m >= 1024.0 {
        format!("{:.1} GiB", m / 1024.0)
    } else {
        format!("{m:.1} MiB")
    }
}

fn pct(used: u64, total: u64) -> String {
    if total == 0 {
        return "-".into();
    }
    format!("{:.1}%", used as f64 * 100.0 / total as f64)
}

pub async fn run(ctx: &Ctx, a: StatsArgs) -> anyhow::Result<i32> {
    let client = ctx.client()?;
    let names = if a.sandboxes.is_empty() {
        client
            .list_sandboxes(&[])
            .await?
            .into_iter()
            .filter(|s| s.status == bhatti_api::SandboxStatus::Running)
            .map(|s| s.name)
            .collect()
    } else {
        a.sandboxes
    };
    let mut rows = Vec::new();
    for n in &names {
        rows.push((n.clone(), client.stats(n).await?));
    }
    if ctx.json {
        let v: Vec<serde_json::Value> = rows
            .iter()
            .map(|(n, s)| serde_json::json!({"sandbox": n, "stats": s}))
            .collect();
        print_json(&v)?;
        return Ok(0);
    }
    let mut t = Table::new(&[
        "NAME",
        "CPUS",
        "CPU %",
        "MEM USAGE / LIMIT",
        "MEM %",
        "DISK USAGE / SIZE",
        "DISK %",
    ]);
    for (n, s) in &rows {
        t.row([
            n.clone(),
            s.cpu_count.to_string(),
            format!("{:.1}%", s.cpu_used_pct),
            format!("{} / {}", size(s.mem_used_bytes), size(s.mem_total_bytes)),
            pct(s.mem_used_bytes, s.mem_total_bytes),
            format!("{} / {}", size(s.disk_used_bytes), size(s.disk_total_bytes)),
            pct(s.disk_used_bytes, s.disk_total_bytes),
        ]);
    }
    t.print_or("No running sandboxes.");
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_shares() {
        assert_eq!(size(512 * 1024 * 1024), "512.0 MiB");
        assert_eq!(size(3 * 1024 * 1024 * 1024), "3.0 GiB");
        assert_eq!(pct(1, 4), "25.0%");
        assert_eq!(pct(1, 0), "-");
    }
}
