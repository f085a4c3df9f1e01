//! Shared benchmark plumbing: sample statistics (p50/p95/p99 by nearest rank),
//! a comparison against a baseline measured in the same run, and report files
//! (JSON for machines, Markdown for people) under `bench/results/`.
//!
//! Benchmarks report; they never assert on wall-clock numbers.

#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Serialize;

/// Summary of a set of latency samples, in microseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Stats {
    /// Number of samples.
    pub n: usize,
    /// Median (nearest rank).
    pub p50_us: f64,
    /// 95th percentile (nearest rank).
    pub p95_us: f64,
    /// 99th percentile (nearest rank).
    pub p99_us: f64,
    /// Arithmetic mean.
    pub mean_us: f64,
    /// Fastest sample.
    pub min_us: f64,
    /// Slowest sample.
    pub max_us: f64,
}

/// The p50 of `samples` as the report's rows compute it (nearest rank),
/// for a figure derived from it (a rate): a second median of its own could
/// pick the other middle sample of an even count.
pub fn p50(samples: &[Duration]) -> Duration {
    Duration::from_secs_f64(Stats::from_durations(samples).p50_us / 1e6)
}

impl Stats {
    /// The summary of `samples`; all zeros for none.
    pub fn from_durations(samples: &[Duration]) -> Stats {
        let mut us: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1e6).collect();
        us.sort_by(|a, b| a.total_cmp(b));
        let n = us.len();
        let pct = |p: f64| -> f64 {
            if n == 0 {
                return 0.0;
            }
            // Nearest rank.
            // Nearest rank: between 1 and n, so the cast neither truncates nor
            // loses a sign.
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            let rank = ((p / 100.0) * n as f64).ceil().max(1.0) as usize;
            us[rank.min(n).saturating_sub(1)]
        };
        Stats {
            n,
            p50_us: pct(50.0),
            p95_us: pct(95.0),
            p99_us: pct(99.0),
            mean_us: if n == 0 {
                0.0
            } else {
                us.iter().sum::<f64>() / n as f64
            },
            min_us: us.first().copied().unwrap_or(0.0),
            max_us: us.last().copied().unwrap_or(0.0),
        }
    }
}

/// Times `iters` calls of `f`.
pub fn sample<F: FnMut()>(iters: usize, mut f: F) -> Vec<Duration> {
    (0..iters)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed()
        })
        .collect()
}

/// One line of a report.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Entry {
    /// Latency samples, optionally beside a baseline's samples.
    Latency {
        /// What was measured.
        name: String,
        /// Its samples' summary.
        stats: Stats,
        /// What the baseline measured, when there is one.
        baseline_name: Option<String>,
        /// The baseline's summary, measured in the same run.
        baseline: Option<Stats>,
        /// p50 / baseline p50.
        ratio_p50: Option<f64>,
        /// How to read the line (what it includes, what it leaves out).
        note: String,
    },
    /// A rate (e.g. MiB/s), optionally beside a baseline rate.
    Throughput {
        /// What was measured.
        name: String,
        /// The rate's unit, e.g. `MiB/s`.
        unit: String,
        /// The rate.
        value: f64,
        /// What the baseline measured, when there is one.
        baseline_name: Option<String>,
        /// The baseline's rate, measured in the same run.
        baseline: Option<f64>,
        /// value / baseline.
        ratio: Option<f64>,
        /// How to read the line.
        note: String,
    },
}

/// A benchmark report being assembled.
#[derive(Debug, Serialize)]
pub struct Report {
    /// The benchmark's name; names the report files.
    pub suite: String,
    /// When the report was made, in seconds since the Unix epoch.
    pub generated_unix: u64,
    /// CPU count and model of the machine it ran on.
    pub host: String,
    /// The measurements, in the order they were added.
    pub entries: Vec<Entry>,
}

fn host_summary() -> String {
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| "unknown cpu".into());
    format!("{cpus} cpus, {model}")
}

impl Report {
    /// An empty report for `suite`, stamped with this host and time.
    pub fn new(suite: &str) -> Report {
        Report {
            suite: suite.into(),
            generated_unix: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            host: host_summary(),
            entries: Vec::new(),
        }
    }

    /// Adds a latency line, beside a baseline's samples when given.
    pub fn latency(
        &mut self,
        name: &str,
        samples: &[Duration],
        baseline: Option<(&str, &[Duration])>,
        note: &str,
    ) {
        let stats = Stats::from_durations(samples);
        let base = baseline.map(|(n, s)| (n.to_string(), Stats::from_durations(s)));
        let ratio = base
            .as_ref()
            .filter(|(_, b)| b.p50_us > 0.0)
            .map(|(_, b)| stats.p50_us / b.p50_us);
        println!(
            "{name:<44} n={:<4} p50 {:>10.1} µs  p95 {:>10.1} µs  p99 {:>10.1} µs{}",
            stats.n,
            stats.p50_us,
            stats.p95_us,
            stats.p99_us,
            match (&base, ratio) {
                (Some((bn, b)), Some(r)) => format!("  | {bn} p50 {:.1} µs → ×{r:.2}", b.p50_us),
                _ => String::new(),
            }
        );
        let (baseline_name, baseline) = match base {
            Some((n, s)) => (Some(n), Some(s)),
            None => (None, None),
        };
        self.entries.push(Entry::Latency {
            name: name.into(),
            stats,
            baseline_name,
            baseline,
            ratio_p50: ratio,
            note: note.into(),
        });
    }

    /// Adds a rate line, beside a baseline rate when given.
    pub fn throughput(
        &mut self,
        name: &str,
        unit: &str,
        value: f64,
        baseline: Option<(&str, f64)>,
        note: &str,
    ) {
        let ratio = baseline.filter(|(_, b)| *b > 0.0).map(|(_, b)| value / b);
        println!(
            "{name:<44} {value:>12.1} {unit}{}",
            match (baseline, ratio) {
                (Some((bn, b)), Some(r)) => format!("  | {bn} {b:.1} {unit} → ×{r:.2}"),
                _ => String::new(),
            }
        );
        self.entries.push(Entry::Throughput {
            name: name.into(),
            unit: unit.into(),
            value,
            baseline_name: baseline.map(|(n, _)| n.to_string()),
            baseline: baseline.map(|(_, b)| b),
            ratio,
            note: note.into(),
        });
    }

    /// Writes `<dir>/<suite>.json` and `<dir>/<suite>.md`, `dir` defaulting to
    /// `BHATTI_BENCH_DIR` or `<workspace>/bench/results`.
    pub fn write(&self) -> std::io::Result<PathBuf> {
        let dir = results_dir();
        std::fs::create_dir_all(&dir)?;
        let json = dir.join(format!("{}.json", self.suite));
        let text = serde_json::to_string_pretty(self).map_err(std::io::Error::other)?;
        bhatti_durable::write(&json, text.as_bytes(), 0o644)?;
        bhatti_durable::write(
            &dir.join(format!("{}.md", self.suite)),
            self.markdown().as_bytes(),
            0o644,
        )?;
        println!("report written to {}", json.display());
        Ok(json)
    }

    /// The report as a Markdown table, for people.
    pub fn markdown(&self) -> String {
        let mut s = format!(
            "# Benchmark: {}\n\nHost: {}. Generated at unix time {}.\n\n",
            self.suite, self.host, self.generated_unix
        );
        s.push_str("| benchmark | n | p50 | p95 | p99 | baseline (same run) | ratio |\n");
        s.push_str("|---|---|---|---|---|---|---|\n");
        for e in &self.entries {
            match e {
                Entry::Latency {
                    name,
                    stats,
                    baseline_name,
                    baseline,
                    ratio_p50,
                    note,
                } => {
                    let base = match (baseline_name, baseline) {
                        (Some(n), Some(b)) => {
                            format!("{n}: p50 {} / p99 {}", fmt_us(b.p50_us), fmt_us(b.p99_us))
                        }
                        _ => "—".into(),
                    };
                    s.push_str(&format!(
                        "| {name}{} | {} | {} | {} | {} | {base} | {} |\n",
                        if note.is_empty() {
                            String::new()
                        } else {
                            format!(" ({note})")
                        },
                        stats.n,
                        fmt_us(stats.p50_us),
                        fmt_us(stats.p95_us),
                        fmt_us(stats.p99_us),
                        ratio_p50.map(|r| format!("×{r:.2}")).unwrap_or("—".into())
                    ));
                }
                Entry::Throughput {
                    name,
                    unit,
                    value,
                    baseline_name,
                    baseline,
                    ratio,
                    note,
                } => {
                    let base = match (baseline_name, baseline) {
                        (Some(n), Some(b)) => format!("{n}: {b:.1} {unit}"),
                        _ => "—".into(),
                    };
                    s.push_str(&format!(
                        "| {name}{} | — | {value:.1} {unit} | | | {base} | {} |\n",
                        if note.is_empty() {
                            String::new()
                        } else {
                            format!(" ({note})")
                        },
                        ratio.map(|r| format!("×{r:.2}")).unwrap_or("—".into())
                    ));
                }
            }
        }
        s
    }
}

fn fmt_us(us: f64) -> String {
    if us >= 10_000.0 {
        format!("{:.1} ms", us / 1000.0)
    } else {
        format!("{us:.1} µs")
    }
}

/// `BHATTI_BENCH_DIR`, else `bench/results` at the workspace root.
pub fn results_dir() -> PathBuf {
    if let Ok(d) = std::env::var("BHATTI_BENCH_DIR") {
        return PathBuf::from(d);
    }
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../bench/results")
        .components()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let s: Vec<Duration> = (1..=100).map(Duration::from_micros).collect();
        let st = Stats::from_durations(&s);
        assert_eq!((st.p50_us, st.p95_us, st.p99_us), (50.0, 95.0, 99.0));
        assert_eq!((st.min_us, st.max_us, st.n), (1.0, 100.0, 100));
        let one = Stats::from_durations(&[Duration::from_micros(7)]);
        assert_eq!((one.p50_us, one.p99_us), (7.0, 7.0));
        assert_eq!(Stats::from_durations(&[]).n, 0);
    }

    #[test]
    fn markdown_has_a_row_per_entry() {
        let mut r = Report::new("t");
        r.latency(
            "x",
            &[Duration::from_micros(10)],
            Some(("b", &[Duration::from_micros(5)])),
            "",
        );
        r.throughput("y", "MiB/s", 10.0, Some(("z", 20.0)), "note");
        let md = r.markdown();
        assert!(md.contains("| x | 1 | 10.0 µs"));
        assert!(md.contains("×2.00"));
        assert!(md.contains("×0.50"));
    }
}
