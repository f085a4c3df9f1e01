//! `bhatti serve`: open the store, build the engine, recover, serve the API
//! on TCP and on `<data_dir>/api.sock` (0600), run the thermal manager, and
//! on SIGTERM/SIGINT drain, snapshot running sandboxes (bounded
//! parallelism, one retry), and stop.

use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::time::Duration;

use bhatti_store::{SandboxStatus, Store};
use tokio::net::{TcpListener, UnixListener};

use crate::config::Config;
use crate::engines;
use crate::events::Events;
use crate::listener;
use crate::recovery;
use crate::routes;
use crate::state::{AppState, Shared};
use crate::thermal::Thermostat;

/// Why the daemon could not start (or, for [`run`], keep serving).
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The data directory (or a file in it) could not be created, locked
    /// or prepared.
    #[error("data dir {path}: {source}")]
    DataDir {
        /// The directory or file concerned.
        path: std::path::PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The store (`<data_dir>/state.db`) could not be opened or queried.
    #[error("store: {0}")]
    Store(#[from] bhatti_store::StoreError),
    /// No engine is usable on this host, or the chosen one failed to start.
    #[error("engine: {0}")]
    Engine(#[from] engines::EngineSetupError),
    /// The configuration is invalid.
    #[error("config: {0}")]
    Config(#[from] crate::config::ConfigError),
    /// Another daemon holds the data directory's lock.
    #[error("data dir {path} is in use by another bhatti daemon (one daemon per data directory: stop that one, or give this one another --data-dir)")]
    DataDirInUse {
        /// The data directory.
        path: std::path::PathBuf,
    },
    /// A listener (TCP address or Unix socket) could not be bound or set up.
    #[error("listen on {addr}: {source}{}", listen_hint(.source))]
    Listen {
        /// The TCP address or socket path.
        addr: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The public listener's certificate or key could not be loaded.
    #[error("public listener: {0}")]
    Tls(#[from] crate::public::tls::TlsError),
    /// The bound TCP listener's address could not be read, or the SIGTERM
    /// handler could not be installed.
    #[error("serve: {0}")]
    Serve(std::io::Error),
}

fn listen_hint(e: &std::io::Error) -> &'static str {
    if e.kind() == std::io::ErrorKind::AddrInUse {
        " (something else listens there: pick another address with `bhatti serve --listen <addr:port>` or the config key `listen`)"
    } else {
        ""
    }
}

/// A TCP listener on `addr` and the address it got (the kernel picks the
/// port for port 0).
async fn bind_tcp(
    addr: std::net::SocketAddr,
) -> Result<(TcpListener, std::net::SocketAddr), DaemonError> {
    let tcp = TcpListener::bind(addr)
        .await
        .map_err(|source| DaemonError::Listen {
            addr: addr.to_string(),
            source,
        })?;
    let bound = tcp.local_addr().map_err(DaemonError::Serve)?;
    Ok((tcp, bound))
}

/// A Unix socket for the API at `path`, replacing a stale file there,
/// with `mode` and (when given) group `gid`.
fn bind_socket(
    path: &std::path::Path,
    mode: u32,
    gid: Option<u32>,
) -> Result<UnixListener, DaemonError> {
    let listen_err = |source| DaemonError::Listen {
        addr: path.display().to_string(),
        source,
    };
    let _ = std::fs::remove_file(path);
    let l = UnixListener::bind(path).map_err(listen_err)?;
    if let Some(gid) = gid {
        nix::unistd::chown(path, None, Some(nix::unistd::Gid::from_raw(gid)))
            .map_err(|e| listen_err(std::io::Error::from(e)))?;
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(listen_err)?;
    Ok(l)
}

/// The API socket for a group's members (see `Config::group_socket`):
/// 0660, owned by root and the group, in a directory anyone may traverse.
/// A live socket there belongs to another daemon and is left alone (this
/// one serves only its own); a stale one is replaced.
fn bind_group_socket(
    path: &std::path::Path,
    gid: u32,
) -> Result<Option<UnixListener>, DaemonError> {
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        tracing::warn!(
            socket = %path.display(),
            "another daemon serves the group socket; this one does not"
        );
        return Ok(None);
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|source| DaemonError::Listen {
            addr: path.display().to_string(),
            source,
        })?;
    }
    let l = bind_socket(path, 0o660, Some(gid))?;
    tracing::info!(socket = %path.display(), gid, "group socket serving");
    Ok(Some(l))
}

/// One daemon per data directory: an exclusive `flock` on
/// `<data_dir>/daemon.lock`, held for the daemon's life. The kernel drops it
/// with the process, so a crashed daemon never leaves it stale; a second
/// daemon on the same directory would otherwise remove the first one's
/// socket and run recovery over sandboxes that are in use.
fn lock_data_dir(dir: &std::path::Path) -> Result<std::fs::File, DaemonError> {
    let path = dir.join("daemon.lock");
    match bhatti_engine::lockfile::try_exclusive(&path) {
        Ok(Some(f)) => Ok(f),
        Ok(None) => Err(DaemonError::DataDirInUse {
            path: dir.to_path_buf(),
        }),
        Err(source) => Err(DaemonError::DataDir { path, source }),
    }
}

const STOP_TIMEOUT: Duration = Duration::from_secs(60);
const KEEP_HOT_WAKE_TIMEOUT: Duration = Duration::from_secs(60);

/// A running daemon: its state, the addresses it listens on, and a handle
/// to stop it (used by `run` and by tests that embed the daemon).
pub struct Daemon {
    /// The state every handler shares (store, engine, config); tests and
    /// benchmarks reach the store through it.
    pub state: Shared,
    /// The TCP address actually bound (the port is the kernel's choice when
    /// `listen` names port 0).
    pub tcp_addr: std::net::SocketAddr,
    /// The public listener's bound address, when one is configured.
    pub public_addr: Option<std::net::SocketAddr>,
    /// `<data_dir>/api.sock`, removed at shutdown.
    socket: std::path::PathBuf,
    stop: tokio::sync::watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    events_task: tokio::task::JoinHandle<()>,
    /// The data directory's lock, released when the daemon is dropped.
    _lock: std::fs::File,
}

/// Opens everything and starts serving; returns once the listeners are up.
pub async fn start(cfg: Config) -> Result<Daemon, DaemonError> {
    cfg.validate()?;
    let dd = cfg.data_dir.clone();
    let dir_err = |source| DaemonError::DataDir {
        path: dd.clone(),
        source,
    };
    std::fs::create_dir_all(&cfg.data_dir).map_err(dir_err)?;
    std::fs::set_permissions(&cfg.data_dir, std::fs::Permissions::from_mode(0o700))
        .map_err(dir_err)?;
    let lock = lock_data_dir(&cfg.data_dir)?;
    let store = Arc::new(Store::open(cfg.data_dir.join("state.db"))?);
    let chosen = engines::build(&cfg).await?;
    let engine_name = engines::kind_name(chosen.kind);
    tracing::info!(
        engine = engine_name,
        reason = chosen.reason,
        "engine selected"
    );

    let images = crate::images::Images::open(&cfg, engine_name == "docker").map_err(dir_err)?;
    // Pulls and imports a killed daemon left running can never finish.
    let failed = store.fail_running_tasks("the daemon restarted while the task ran")?;
    if failed > 0 {
        tracing::warn!(
            tasks = failed,
            "tasks interrupted by a restart marked failed"
        );
    }

    let (events, events_task) = Events::start(store.clone());
    let state: Shared = Arc::new(AppState::new(
        cfg.clone(),
        store,
        chosen.engine,
        engine_name,
        events,
        images,
    ));

    let report = recovery::recover(&state).await;
    tracing::info!(
        recovered = report.recovered.len(),
        adopted = report.adopted.len(),
        crashed = report.crashed.len(),
        unknown = report.unknown.len(),
        took_ms = report.took_ms,
        orphans = report.orphans_removed.len(),
        "recovery done"
    );
    register_tier_images(&state).await;
    // After recovery (which sweeps orphans) and with the images known.
    crate::service::pools::start(&state).await;

    let app = routes::router(state.clone());
    // The public listener binds first so its URLs are known before any
    // request is served.
    let public = match cfg.public_addr()? {
        Some(addr) => {
            let (tcp, bound) = bind_tcp(addr).await?;
            state.set_public_addr(bound);
            let tls = match &cfg.domain {
                Some(d) => match (&d.tls_cert, &d.tls_key, &d.acme_email) {
                    (Some(cert), Some(key), _) => Some(crate::public::tls::Certs::Fixed(
                        crate::public::tls::server_config(cert, key)?,
                    )),
                    (_, _, Some(email)) => Some(crate::public::tls::Certs::Acme(
                        std::sync::Arc::new(crate::public::acme::Acme::new(
                            email,
                            d.acme_directory
                                .as_deref()
                                .unwrap_or(crate::public::acme::LETS_ENCRYPT),
                            d.acme_ca_file.clone(),
                            cfg.data_dir.join("certs"),
                        )),
                        state.clone(),
                    )),
                    _ => None,
                },
                None => None,
            };
            Some((tcp, tls, bound))
        }
        None => None,
    };
    // Domain mode's plain-HTTP listener (ACME challenges, the redirect).
    let http = match cfg
        .domain
        .as_ref()
        .map(|d| d.http_addr())
        .transpose()?
        .flatten()
    {
        Some(addr) => Some(bind_tcp(addr).await?.0),
        None => None,
    };
    let addr = cfg.listen_addr()?;
    let (tcp, tcp_addr) = bind_tcp(addr).await?;
    state.set_api_addr(tcp_addr);
    let sock = cfg.api_socket();
    let unix = bind_socket(&sock, 0o600, None)?;
    let group = match cfg.group_socket()? {
        Some((path, gid)) => bind_group_socket(&path, gid)?,
        None => None,
    };

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut tasks = Vec::new();
    let timeouts = cfg.connection_timeouts();
    let mut public_addr = None;
    if let Some((tcp, tls, bound)) = public {
        let public_app = crate::public::router(state.clone(), app.clone());
        let stop = stop_rx.clone();
        if let Some(http) = http {
            let acme = match &tls {
                Some(crate::public::tls::Certs::Acme(a, _)) => Some(a.clone()),
                _ => None,
            };
            tasks.push(tokio::spawn(listener::serve(
                http,
                crate::public::http_router(acme),
                timeouts,
                stop_rx.clone(),
            )));
        }
        tasks.push(match tls {
            Some(tls) => tokio::spawn(listener::serve(
                crate::public::tls::TlsListener::new(tcp, tls),
                public_app,
                timeouts,
                stop,
            )),
            None => tokio::spawn(listener::serve(tcp, public_app, timeouts, stop)),
        });
        tracing::info!(listen = %bound, "public listener serving");
        public_addr = Some(bound);
    }
    tasks.push(tokio::spawn(listener::serve(
        tcp,
        app.clone(),
        timeouts,
        stop_rx.clone(),
    )));
    if let Some(g) = group {
        tasks.push(tokio::spawn(listener::serve(
            g,
            app.clone(),
            timeouts,
            stop_rx.clone(),
        )));
    }
    tasks.push(tokio::spawn(listener::serve(
        unix,
        app,
        timeouts,
        stop_rx.clone(),
    )));
    // Lifetimes end whether or not the thermal manager runs.
    tasks.push(tokio::spawn(crate::service::sandboxes::reap_loop(
        state.clone(),
        stop_rx.clone(),
    )));
    // Per-user DNS responders for sandboxes that came back (adopted,
    // rebuilt) rather than being made by this daemon.
    tasks.push(tokio::spawn(crate::dns::sweep_loop(
        state.clone(),
        stop_rx.clone(),
    )));
    // Scheduled volume backups (nothing when none are configured).
    tasks.push(tokio::spawn(crate::service::backups::schedule_loop(
        state.clone(),
        stop_rx.clone(),
    )));
    // Crashed sandboxes reach the store and the event log within a tick,
    // whether or not the thermal manager runs.
    tasks.push(tokio::spawn(crate::health::run(
        state.clone(),
        stop_rx.clone(),
    )));
    if cfg.thermal.enabled {
        let t = Thermostat::new(state.clone());
        tasks.push(tokio::spawn(t.run(stop_rx.clone())));
    }
    // keep_hot sandboxes come back up in the background.
    let st = state.clone();
    tokio::spawn(async move {
        let Ok(rows) = st.db(|s| s.list_all_sandboxes()).await else {
            return;
        };
        for sb in rows
            .into_iter()
            .filter(|s| s.keep_hot && s.status != SandboxStatus::Unknown)
        {
            match tokio::time::timeout(KEEP_HOT_WAKE_TIMEOUT, st.ensure_hot(&sb)).await {
                Ok(Ok(())) => tracing::info!(sandbox = sb.id, "keep_hot sandbox woken"),
                Ok(Err(e)) => {
                    tracing::warn!(sandbox = sb.id, error = e.message, "keep_hot wake failed")
                }
                Err(_) => tracing::warn!(sandbox = sb.id, "keep_hot wake timed out"),
            }
        }
    });
    state.events.emit(
        "",
        "",
        "daemon.started",
        serde_json::json!({"version": routes::VERSION, "engine": engine_name,
            "recovered_vms": report.recovered.len(), "listen": tcp_addr.to_string()}),
    );
    tracing::info!(listen = %tcp_addr, socket = %sock.display(), "bhatti API ready");
    Ok(Daemon {
        state,
        tcp_addr,
        public_addr,
        socket: sock,
        stop: stop_tx,
        tasks,
        events_task,
        _lock: lock,
    })
}

/// How long shutdown waits for creates in flight (a boot takes seconds;
/// an image conversion on first use can take longer).
const CREATE_GRACE: Duration = Duration::from_secs(120);

impl Daemon {
    /// Graceful shutdown: stop accepting, drain, then either leave every
    /// sandbox running for the next daemon to adopt or (snapshot_on_shutdown,
    /// or an engine that cannot adopt) snapshot each to disk; stop the engine.
    pub async fn shutdown(self) {
        let st = self.state.clone();
        let _ = self.stop.send(true);
        let drain = Duration::from_secs(st.cfg.drain_secs);
        for t in self.tasks {
            let _ = tokio::time::timeout(drain, t).await;
        }
        // A create in flight finishes (or its abandoned result is removed)
        // before the engine goes: cut off, it would leave a VM and a
        // network nobody records.
        st.creates.close();
        if tokio::time::timeout(CREATE_GRACE, st.creates.wait())
            .await
            .is_err()
        {
            tracing::warn!("creates still running at shutdown after {CREATE_GRACE:?}");
        }
        // Sandboxes keep running through the restart where the engine
        // lets the next daemon adopt them; otherwise (or when asked to, for
        // a host that reboots) their memory goes to disk first.
        let caps = st.engine.capabilities();
        let keep_running = caps.survives_restart && !st.cfg.snapshot_on_shutdown;
        if caps.memory_snapshots && !keep_running {
            snapshot_all(&st).await;
        }
        st.events.emit(
            "",
            "",
            "daemon.shutdown",
            serde_json::json!({"sandboxes_left_running": keep_running}),
        );
        st.engine.shutdown(keep_running).await;
        let _ = std::fs::remove_file(&self.socket);
        // The recorder flushes and ends once the last handle is gone; give
        // it a moment (the state holds one until the process exits).
        drop(st);
        let _ = tokio::time::timeout(Duration::from_secs(2), self.events_task).await;
    }
}

async fn snapshot_all(st: &Shared) {
    let Ok(rows) = st.db(|s| s.list_all_sandboxes()).await else {
        return;
    };
    let sem = Arc::new(tokio::sync::Semaphore::new(st.cfg.shutdown_parallelism));
    let mut set = tokio::task::JoinSet::new();
    for sb in rows
        .into_iter()
        .filter(|s| s.status == SandboxStatus::Running)
    {
        let (st, sem) = (st.clone(), sem.clone());
        set.spawn(async move {
            let _permit = sem.acquire().await;
            for attempt in 1..=2 {
                match tokio::time::timeout(STOP_TIMEOUT, st.engine.stop(&sb.id)).await {
                    Ok(Ok(())) => {
                        let _ = st.persist(&sb.id).await;
                        tracing::info!(sandbox = sb.id, "snapshotted for shutdown");
                        return;
                    }
                    Ok(Err(e)) => tracing::warn!(sandbox = sb.id, attempt, error = %e, "shutdown snapshot failed"),
                    Err(_) => tracing::warn!(sandbox = sb.id, attempt, "shutdown snapshot timed out"),
                }
            }
        });
    }
    while set.join_next().await.is_some() {}
}

/// `images/rootfs-<tier>.ext4` → admin image `<tier>`.
async fn register_tier_images(st: &Shared) {
    if st.engine_name == "docker" {
        return;
    }
    let dir = st.cfg.data_dir.join("images");
    let Ok(rd) = std::fs::read_dir(&dir) else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(tier) = name
            .strip_prefix("rootfs-")
            .and_then(|n| n.strip_suffix(".ext4"))
        else {
            continue;
        };
        if tier == "minimal" || crate::validate::name("image", tier).is_err() {
            continue;
        }
        let t = tier.to_string();
        if st.db(move |s| s.image_exact("", &t)).await.is_ok() {
            continue;
        }
        let size_mb = e.metadata().map(|m| m.len() >> 20).unwrap_or(0);
        // Built-in images are judged like every other image.
        let warnings = crate::images::file_warnings(&e.path()).await;
        for w in &warnings {
            tracing::info!(image = tier, "image warning: {w}");
        }
        let img = bhatti_store::NewImage {
            user_id: String::new(),
            name: tier.to_string(),
            source: "built-in".into(),
            file_path: e.path().to_string_lossy().into_owned(),
            size_mb,
            oci_digest: String::new(),
            oci_config: serde_json::Value::Null,
            warnings,
        };
        let _ = st.db(move |s| s.create_image(&img)).await;
    }
}

/// Runs the daemon until SIGTERM or SIGINT.
pub async fn run(cfg: Config) -> Result<(), DaemonError> {
    let d = start(cfg).await?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(DaemonError::Serve)?;
    // Under systemd (`Type=notify`), the unit is started once requests are
    // served, not when the process exists.
    notify(&[sd_notify::NotifyState::Ready]);
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    tracing::info!("shutting down");
    notify(&[sd_notify::NotifyState::Stopping]);
    d.shutdown().await;
    Ok(())
}

/// Tells systemd (when `NOTIFY_SOCKET` is set) where the daemon is; a
/// failure to tell it is logged, never fatal.
fn notify(state: &[sd_notify::NotifyState]) {
    if let Err(e) = sd_notify::notify(false, state) {
        tracing::warn!(error = %e, "sd_notify failed");
    }
}
