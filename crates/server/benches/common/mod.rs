//! What the server benchmarks share: a daemon on the engine named by
//! `BHATTI_BENCH_ENGINE` (docker by default), in a data directory of its
//! own, with rate limits and the thermal manager off.

/// A started daemon, its data directory (removed on drop) and its engine.
pub struct Bench {
    pub daemon: bhatti_server::daemon::Daemon,
    pub engine: String,
    _dir: tempfile::TempDir,
}

/// Starts the daemon, or says why it cannot and returns `None` (a
/// benchmark that cannot run exits 0).
#[allow(dead_code)] // not every bench takes the defaults
pub async fn start(suite: &str) -> Option<Bench> {
    start_with(suite, "docker", |_| {}).await
}

/// [`start`] with `default_engine` when `BHATTI_BENCH_ENGINE` is unset, and
/// `tweak` applied to the config.
#[allow(dead_code)] // not every bench tweaks
pub async fn start_with(
    suite: &str,
    default_engine: &str,
    tweak: impl FnOnce(&mut bhatti_server::Config),
) -> Option<Bench> {
    let engine = std::env::var("BHATTI_BENCH_ENGINE").unwrap_or_else(|_| default_engine.into());
    let dir = tempfile::Builder::new()
        .prefix(&format!("bhatti-bench-{suite}-"))
        .tempdir_in("/var/tmp")
        .expect("tempdir");
    let mut cfg = bhatti_server::Config {
        engine: Some(engine.clone()),
        listen: "127.0.0.1:0".into(),
        data_dir: dir.path().to_path_buf(),
        ..Default::default()
    };
    cfg.rate_limits.enabled = false;
    cfg.thermal.enabled = false;
    cfg.default_memory_mb = 256;
    // Benches that measure template restores turn them on themselves.
    cfg.template_snapshots = false;
    cfg.pools = Some(Vec::new());
    tweak(&mut cfg);
    match bhatti_server::start(cfg).await {
        Ok(daemon) => Some(Bench {
            daemon,
            engine,
            _dir: dir,
        }),
        Err(e) => {
            println!("{suite} bench skipped: cannot start a daemon on the {engine} engine: {e}");
            None
        }
    }
}
