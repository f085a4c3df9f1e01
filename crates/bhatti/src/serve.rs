//! `bhatti serve`: load the daemon's config, apply the command-line
//! overrides, set up JSON logging and hand over to the server crate.
//!
//! The daemon lives in `bhatti-server`; this module is the only place the
//! binary touches it, behind the `server` cargo feature (on by default), so
//! a CLI-only build (e.g. for a laptop that only talks to a remote daemon)
//! leaves the engine and its dependencies out.

use std::path::PathBuf;

use clap::Args;

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Config file (default: $BHATTI_CONFIG, else /etc/bhatti/config.yaml).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Address of the TCP API listener, e.g. 127.0.0.1:8080 or :8080.
    #[arg(long, value_name = "ADDR", env = "BHATTI_LISTEN")]
    pub listen: Option<String>,
    /// Engine: firecracker, qemu or docker (default: chosen from the host).
    #[arg(long, value_name = "NAME")]
    pub engine: Option<String>,
}

/// Installs the daemon's logger: JSON lines on stdout, level from
/// `BHATTI_LOG_LEVEL` (debug|info|warn|error, or any tracing filter
/// directive), default `info`.
#[cfg(feature = "server")]
pub fn init_logging() {
    let level = std::env::var("BHATTI_LOG_LEVEL")
        .ok()
        .filter(|l| !l.trim().is_empty())
        .unwrap_or_else(|| "info".into());
    let filter = tracing_subscriber::EnvFilter::try_new(level.trim())
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .json()
        .with_env_filter(filter)
        .with_current_span(false)
        .with_writer(std::io::stdout)
        .try_init();
}

#[cfg(feature = "server")]
pub async fn run(args: ServeArgs, data_dir: Option<PathBuf>) -> anyhow::Result<i32> {
    init_logging();
    let mut cfg = bhatti_server::config::Config::load(args.config.as_deref())?;
    if let Some(listen) = args.listen {
        cfg.listen = listen;
    }
    if let Some(dir) = data_dir {
        cfg.data_dir = dir;
    }
    if let Some(engine) = args.engine {
        cfg.engine = Some(engine);
    }
    bhatti_server::daemon::run(cfg).await?;
    Ok(0)
}

#[cfg(not(feature = "server"))]
pub async fn run(_args: ServeArgs, _data_dir: Option<PathBuf>) -> anyhow::Result<i32> {
    anyhow::bail!("this bhatti binary was built without the daemon (cargo feature `server`)")
}
