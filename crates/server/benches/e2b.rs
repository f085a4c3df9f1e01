//! E2B's SDK against bhatti, each figure beside a baseline measured in the
//! same run, from the same Python process, on the same daemon:
//! - `sbx.commands.run("true")` (envd `process.Start` over Connect, stream
//!   to the end) vs the native buffered exec through httpx;
//! - `Sandbox.create("base")` → first `commands.run` vs native create →
//!   first exec.
//!
//! Engine: `BHATTI_BENCH_ENGINE` (docker by default; qemu works too). Needs
//! the SDK venv (`BHATTI_E2B_PYTHON`, made by scripts/test.sh). Run as root:
//! `cargo bench -p bhatti-server --bench e2b` → bench/results/e2b.{json,md}
//! (`e2b-<engine>` for another engine).
//! Prints why and exits 0 if it cannot run.
#![allow(clippy::unwrap_used, clippy::arithmetic_side_effects)] // a test panics to report its failure; its sums are on test data

use std::time::Duration;

mod common;

use bhatti_benchkit::Report;
use bhatti_store::NewUser;

fn durations(v: &serde_json::Value, key: &str) -> Vec<Duration> {
    v[key]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_f64())
                .map(Duration::from_secs_f64)
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let Some(python) = std::env::var("BHATTI_E2B_PYTHON")
        .ok()
        .or_else(|| option_env!("BHATTI_E2B_PYTHON").map(str::to_string))
    else {
        println!("e2b bench skipped: BHATTI_E2B_PYTHON (the SDK venv's python) is not set");
        return;
    };
    let n = std::env::var("BHATTI_BENCH_N").unwrap_or_else(|_| "100".into());
    let Some(bench) = common::start("e2b").await else {
        return;
    };
    let (d, engine) = (bench.daemon, bench.engine);
    let (_, key) = d
        .state
        .store
        .create_user(&NewUser {
            name: "bench".into(),
            quotas: bhatti_store::Quotas {
                max_sandboxes: 100,
                ..Default::default()
            },
        })
        .expect("user");
    let e2b_key = format!("e2b_{}", key.strip_prefix("bht_").expect("bht_ key"));
    let addr = d.tcp_addr;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/e2b/sdk_bench.py");
    let out = tokio::process::Command::new(&python)
        .arg(script)
        .env("E2B_API_URL", format!("http://{addr}/e2b"))
        .env("E2B_SANDBOX_URL", format!("http://{addr}/e2b/envd"))
        .env("E2B_API_KEY", &e2b_key)
        .env("BENCH_NATIVE_URL", format!("http://{addr}"))
        .env("BENCH_NATIVE_KEY", &key)
        .env("BENCH_N", &n)
        .env("NO_PROXY", "*")
        .env_remove("E2B_DOMAIN")
        .output()
        .await
        .expect("run the SDK bench script");
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        panic!(
            "the SDK bench script failed:\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let v: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap_or("{}"))
        .expect("the script's JSON line");
    // The Docker figures are the suite's own; another engine's get a name
    // of their own beside them.
    let suite = if engine == "docker" {
        "e2b".to_string()
    } else {
        format!("e2b-{engine}")
    };
    let mut report = Report::new(&suite);
    report.latency(
        "E2B SDK `commands.run(\"true\")`",
        &durations(&v, "sdk_run"),
        Some(("native exec via httpx", &durations(&v, "native_exec"))),
        &format!("{engine} engine; Python client on both sides, interleaved"),
    );
    report.latency(
        "E2B SDK `Sandbox.create` → first `commands.run`",
        &durations(&v, "sdk_create_first"),
        Some((
            "native create → first exec via httpx",
            &durations(&v, "native_create_first"),
        )),
        &format!("{engine} engine; default image"),
    );
    match report.write() {
        Ok(p) => println!("report: {}", p.display()),
        Err(e) => println!("could not write the report: {e}"),
    }
    d.shutdown().await;
}
