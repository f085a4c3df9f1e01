//! Guest mode: lohar as PID 1 of a sandbox microVM.
//!
//! The kernel starts lohar as `init` on a bare root filesystem, so before the
//! agent can serve, lohar has to do what an init system would
//! (docs/guest.md, "Boot sequence (PID 1)"): mount the pseudo-filesystems
//! ([`mounts`]), read and apply the per-sandbox config drive and then unmount
//! it so the token cannot be re-read ([`config`]), tighten the kernel's
//! defaults for unprivileged code ([`harden`]), make sure the network is up
//! ([`net`]), collect the orphans every PID 1 inherits without stealing the
//! exit codes of its own children ([`reaper`]), and turn SIGTERM/SIGINT into
//! `sync` + power-off ([`power`]). Then it serves the agent on TCP and vsock
//! ports 1024/1025, prints `lohar: ready` on the console (what hosts and
//! tests wait for), records boot timing and starts the config's `init`
//! session.
//!
//! PID 1 must never exit (the kernel panics), and a broken step must not take
//! the whole sandbox down: every best-effort step logs a clear error and
//! carries on, and whatever ends the main future ends in a power-off. The one
//! deliberate exception: a config drive that exists but cannot be read makes
//! lohar power off rather than serve without the token the host configured.

pub mod config;
pub mod entropy;
pub mod harden;
pub mod mounts;
pub mod net;
pub mod power;
pub mod reaper;
pub mod vsock;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use bhatti_protocol::config::GuestConfig;
use bhatti_protocol::{PORT_CONTROL, PORT_FORWARD};

use crate::{Agent, AgentConfig};

/// Where the boot phases are recorded (ms since the kernel started).
pub const BOOT_TIMING: &str = "/run/bhatti/boot-timing.txt";
/// The console line hosts and tests wait for.
pub const READY_LINE: &str = "lohar: ready";
/// Env that image tiers and the boot profile add to every exec.
pub const EXEC_ENV: &str = "/run/bhatti/env";
/// The boot profile: run as root once the services are started.
pub const BOOT_PROFILE: &str = "/etc/bhatti/init.sh";
/// How long the boot profile may take before the init session starts
/// without it.
const BOOT_PROFILE_TIMEOUT: Duration = Duration::from_secs(30);

/// Everything that can go wrong while setting up the guest.
#[derive(Debug, thiserror::Error)]
pub enum GuestError {
    /// A `mount(2)` failed.
    #[error("mount {fstype} on {target}: {source}")]
    Mount {
        /// The filesystem type asked for (`ext4`, `proc`, `cgroup2` …).
        fstype: String,
        /// The mount point.
        target: String,
        /// The kernel's error.
        #[source]
        source: nix::Error,
    },
    /// A file or socket operation failed.
    #[error("{what}: {source}")]
    Io {
        /// The operation and its path, e.g. `mkdir /run/bhatti`.
        what: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A system call made through `nix` failed.
    #[error("{what}: {source}")]
    Sys {
        /// The call and its argument, e.g. `sethostname "box"`.
        what: String,
        /// The kernel's error.
        #[source]
        source: nix::Error,
    },
    /// The config drive's `config.json` is not a valid config.
    #[error("config.json: {0}")]
    ConfigJson(#[from] serde_json::Error),
    /// A value from the config drive or the kernel command line is unusable.
    #[error("invalid {what}: {value}")]
    Invalid {
        /// What the value was meant to be (`net.address`, `interface name` …).
        what: &'static str,
        /// The value as given.
        value: String,
    },
    /// Something the guest needs is missing from this kernel or image.
    #[error("{what}: {detail}")]
    Unavailable {
        /// What is missing.
        what: &'static str,
        /// The particulars (which items, and why).
        detail: String,
    },
}

pub(crate) fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> GuestError {
    let what = what.into();
    move |source| GuestError::Io { what, source }
}

/// Milliseconds since the kernel started (`/proc/uptime`).
pub fn uptime_ms() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/uptime").ok()?;
    let secs: f64 = s.split_whitespace().next()?.parse().ok()?;
    // /proc/uptime is non-negative and far below u64 milliseconds.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let ms = (secs * 1000.0) as u64;
    Some(ms)
}

/// Boot phases, each stamped with ms since kernel start when it finished.
#[derive(Debug, Default)]
struct Timing(Vec<(&'static str, Option<u64>)>);

impl Timing {
    fn mark(&mut self, phase: &'static str) {
        self.0.push((phase, uptime_ms()));
    }

    fn render(&self) -> String {
        self.0
            .iter()
            .map(|(p, ms)| match ms {
                Some(ms) => format!("{p}_ms={ms}\n"),
                None => format!("{p}_ms=unknown\n"),
            })
            .collect()
    }
}

/// The agent's configuration for a guest with this config drive.
pub fn agent_config(cfg: &GuestConfig) -> AgentConfig {
    AgentConfig {
        token: Some(cfg.token.clone()).filter(|t| !t.is_empty()),
        env: cfg.env.clone(),
        env_file: Some(EXEC_ENV.into()),
        system: true,
        ..AgentConfig::for_sandbox(&cfg.user, &cfg.cwd)
    }
}

/// Runs the guest: set-up, serve, and power off when told to. Never returns.
pub fn run() -> ! {
    // A panic in set-up must not end PID 1 either (the default hook has already
    // printed it on the console).
    match std::panic::catch_unwind(run_inner) {
        Ok(never) => match never {},
        Err(_) => power::power_off("panic during set-up"),
    }
}

fn run_inner() -> std::convert::Infallible {
    let mut timing = Timing::default();
    // Children without a `cwd` run in `/`.
    if let Err(e) = std::env::set_current_dir("/") {
        eprintln!("lohar: chdir /: {e}");
    }
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o022));
    mounts::mount_all();
    timing.mark("lohar_start_and_mounts");
    power::disable_ctrl_alt_del();
    if let Err(e) = net::loopback_up() {
        tracing::error!("lo: {e}");
    }

    let cfg = match config::load() {
        Ok(Some(c)) => c,
        Ok(None) => {
            println!(
                "lohar: no config drive at {}: running with an empty config (no token)",
                config::CONFIG_DEVICE
            );
            GuestConfig::default()
        }
        Err(e) => {
            println!(
                "lohar: config drive {} unusable: {e}; refusing to serve without its token",
                config::CONFIG_DEVICE
            );
            power::power_off("bad config drive")
        }
    };
    // Before anything runs as the sandbox user, and before the config's files
    // are written (the fs.protected_* settings cover those writes too).
    harden::apply(cfg.allow_userns);
    config::apply(&cfg);
    timing.mark("config");

    setup_network(&cfg);
    timing.mark("network");

    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            println!("lohar: cannot start the runtime: {e}");
            power::power_off("no runtime")
        }
    };
    let served = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        rt.block_on(serve(cfg, timing))
    }));
    // The runtime is never dropped: that could wait on a blocking task forever,
    // and powering off ends every thread anyway.
    power::power_off(served.unwrap_or("panic"))
}

fn setup_network(cfg: &GuestConfig) {
    let wanted = match &cfg.net {
        Some(n) => match net::from_config(n) {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::error!("config net: {e}");
                None
            }
        },
        None => std::fs::read_to_string("/proc/cmdline")
            .ok()
            .and_then(|c| net::parse_cmdline_ip(&c)),
    };
    match wanted {
        Some(w) => match net::apply(&w) {
            Ok(what) => tracing::info!("network: {what}"),
            Err(e) => tracing::error!("network {}: {e}", w.dev),
        },
        None => tracing::info!("network: no static ip= on the command line, nothing to do"),
    }
}

async fn bind_tcp(port: u16) -> Option<tokio::net::TcpListener> {
    let addr = SocketAddr::from((Ipv4Addr::UNSPECIFIED, port));
    for attempt in 1..=5 {
        match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => return Some(l),
            Err(e) => {
                tracing::error!(%addr, attempt, error = %e, "tcp listen failed");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    None
}

/// Serves until a shutdown signal; returns why it stopped.
async fn serve(cfg: GuestConfig, mut timing: Timing) -> &'static str {
    reaper::start();
    let agent_cfg = agent_config(&cfg);
    let init_run_as = agent_cfg.run_as.clone();
    let agent = Agent::new(agent_cfg);

    let shutdown = power::shutdown_signal();
    tokio::pin!(shutdown);

    for (port, forward) in [(PORT_CONTROL, false), (PORT_FORWARD, true)] {
        let Ok(p) = u16::try_from(port) else { continue };
        match bind_tcp(p).await {
            Some(l) => {
                tokio::spawn(agent.clone().run_tcp(l, forward));
            }
            None => println!("lohar: cannot listen on tcp port {port}"),
        }
    }
    if Path::new("/dev/vsock").exists() {
        tokio::spawn(vsock::serve(agent.clone(), PORT_CONTROL, false));
        tokio::spawn(vsock::serve(agent.clone(), PORT_FORWARD, true));
    } else {
        tracing::info!("no /dev/vsock: serving on TCP only");
    }

    println!("{READY_LINE}");
    timing.mark("ready");
    if let Err(e) = config::write_atomic(Path::new(BOOT_TIMING), &timing.render(), 0o644) {
        tracing::warn!("boot timing: {e}");
    }
    // The service manager: tmpfiles.d, its sockets, then the enabled units
    // in the background (the agent already serves); it appends
    // `units_started_ms` to the boot timing when they are all up.
    let helper = std::env::current_exe().unwrap_or_else(|_| "/usr/local/bin/lohar".into());
    crate::systemd::start(crate::systemd::Paths::under(Path::new("/"), helper)).await;
    run_boot_profile().await;
    if !cfg.init.is_empty() {
        agent.start_init(&cfg.init, init_run_as);
    }
    let sig = shutdown.await;
    tracing::info!("{sig}: shutting down");
    sig
}

/// Runs `/etc/bhatti/init.sh` as root, at most 30 s; its output goes to
/// `/var/log/bhatti/init.sh.log`.
async fn run_boot_profile() {
    if !Path::new(BOOT_PROFILE).is_file() {
        return;
    }
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open("/var/log/bhatti/init.sh.log");
    let mut cmd = tokio::process::Command::new("/bin/sh");
    cmd.arg(BOOT_PROFILE)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    if let Ok(f) = log {
        if let Ok(g) = f.try_clone() {
            cmd.stdout(f).stderr(g);
        }
    }
    let child = reaper::spawn_tracked(|| cmd.spawn());
    match child {
        Ok(mut c) => {
            let pid = c.id();
            match tokio::time::timeout(BOOT_PROFILE_TIMEOUT, c.wait()).await {
                Ok(Ok(st)) if !st.success() => tracing::warn!("{BOOT_PROFILE}: {st}"),
                Ok(_) => {}
                Err(_) => {
                    tracing::warn!("{BOOT_PROFILE}: still running after 30 s, killed");
                    let _ = c.kill().await;
                }
            }
            reaper::untrack(pid);
        }
        Err(e) => tracing::warn!("{BOOT_PROFILE}: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::RunAs;

    #[test]
    fn agent_config_for_lohar_and_root() {
        let mut c = GuestConfig {
            token: "t0k".into(),
            ..GuestConfig::default()
        };
        let a = agent_config(&c);
        assert_eq!(a.token.as_deref(), Some("t0k"));
        assert_eq!(a.run_as, Some(RunAs::lohar()));
        assert!(a.sync_after_exec);
        assert_eq!(a.file_user, Some((1000, 1000)));

        c.user = "root".into();
        c.token.clear();
        let a = agent_config(&c);
        assert_eq!(a.token, None);
        assert_eq!(a.run_as, None);
        assert_eq!(a.home, "/root");
        assert_eq!(a.file_user, None);
    }

    #[test]
    fn timing_renders_phases() {
        let t = Timing(vec![("ready", Some(1234)), ("x", None)]);
        assert_eq!(t.render(), "ready_ms=1234\nx_ms=unknown\n");
    }
}
