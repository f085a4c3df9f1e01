//! `lohar` entry point: picks the mode and starts the agent.

use std::path::Path;
use std::process::ExitCode;

use lohar::{Agent, AgentConfig};

fn usage() -> ExitCode {
    eprintln!(
        "lohar {}: the bhatti guest agent\n\n\
         Runs as PID 1 inside a bhatti sandbox. For tests:\n  \
         LOHAR_TEST=1 LOHAR_SOCK=<path> LOHAR_FWD_SOCK=<path> [LOHAR_TOKEN=<token>] \
         [LOHAR_INIT=<script>] [LOHAR_FILE_UID=<uid> [LOHAR_FILE_GID=<gid>]] \
         [LOHAR_TCP=<ip:port>] [LOHAR_SYSTEMD_ROOT=<dir>] lohar\n\n\
         As the entrypoint of a Docker sandbox:\n  \
         lohar container   (see LOHAR_SOCK_DIR, LOHAR_TOKEN_FILE, LOHAR_ENV_FILE)",
        env!("CARGO_PKG_VERSION")
    );
    ExitCode::from(2)
}

/// Logs go to stderr (the serial console in guest mode). `LOHAR_LOG` sets the
/// filter; in a guest it can be given on the kernel command line, which passes
/// unknown `KEY=value` words to init as environment.
fn init_logging(default: &str, ansi: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("LOHAR_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr)
        .init();
}

fn main() -> ExitCode {
    // Busybox-style names first: `systemctl` and `journalctl` are symlinks
    // to lohar, and `lohar spawn` is the service manager's private helper.
    let args: Vec<String> = std::env::args().collect();
    let called = args
        .first()
        .and_then(|a| Path::new(a).file_name())
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    match (called.as_str(), args.get(1).map(String::as_str)) {
        ("systemctl", _) => return lohar::systemd::ipc::systemctl_main(&args[1..]),
        ("journalctl", _) => return lohar::systemd::ipc::journalctl_main(&args[1..]),
        (_, Some("spawn")) => return lohar::systemd::spawn::main(&args[2..]),
        _ => {}
    }
    if std::env::var("LOHAR_TEST").as_deref() == Ok("1") {
        init_logging("warn", true);
        return run(test_mode());
    }
    // Container mode (PID 1 of a Docker sandbox) before the guest's PID 1 path.
    if std::env::args().nth(1).as_deref() == Some("container")
        || std::env::var("LOHAR_CONTAINER").as_deref() == Ok("1")
    {
        init_logging("info", false);
        return lohar::container::run();
    }
    // The init path only as PID 1 (docs/guest.md, "Modes").
    if std::process::id() == 1 {
        init_logging("info", false);
        lohar::guest::run();
    }
    usage()
}

fn run(fut: impl std::future::Future<Output = Result<(), String>>) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("lohar: runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match rt.block_on(fut) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lohar: {e}");
            ExitCode::from(1)
        }
    }
}

fn bind_unix(path: &str) -> Result<tokio::net::UnixListener, String> {
    if Path::new(path).exists() {
        std::fs::remove_file(path).map_err(|e| format!("remove stale {path}: {e}"))?;
    }
    tokio::net::UnixListener::bind(path).map_err(|e| format!("listen on {path}: {e}"))
}

/// `LOHAR_FILE_UID` / `LOHAR_FILE_GID` (default: the uid): the identity file
/// operations act as, so tests running as root exercise the guest's credential
/// switch (without them, and whenever lohar is not root, files are handled as
/// the current user).
fn file_user_from_env() -> Result<Option<(u32, u32)>, String> {
    let num = |var: &str| -> Result<Option<u32>, String> {
        match std::env::var(var) {
            Ok(v) if !v.is_empty() => v
                .parse()
                .map(Some)
                .map_err(|_| format!("{var}={v:?} is not a uid/gid")),
            _ => Ok(None),
        }
    };
    let uid = num("LOHAR_FILE_UID")?;
    let gid = num("LOHAR_FILE_GID")?;
    match (uid, gid) {
        (Some(u), g) => Ok(Some((u, g.unwrap_or(u)))),
        (None, Some(_)) => Err("LOHAR_FILE_GID needs LOHAR_FILE_UID".into()),
        (None, None) => Ok(None),
    }
}

/// Test mode: Unix sockets, children as the current user, no root needed.
async fn test_mode() -> Result<(), String> {
    let sock = std::env::var("LOHAR_SOCK").map_err(|_| "LOHAR_SOCK is required in test mode")?;
    let fwd = std::env::var("LOHAR_FWD_SOCK").ok();
    let cfg = AgentConfig {
        token: std::env::var("LOHAR_TOKEN").ok().filter(|t| !t.is_empty()),
        sync_after_exec: std::env::var("LOHAR_SYNC").as_deref() == Ok("1"),
        init_cwd: std::env::current_dir().map_err(|e| e.to_string())?,
        file_user: file_user_from_env()?,
        ..AgentConfig::default()
    };
    let agent = Agent::new(cfg);
    let ctl = bind_unix(&sock)?;
    if let Some(fwd) = fwd {
        let l = bind_unix(&fwd)?;
        tokio::spawn(agent.clone().run_unix(l, true));
    }
    // An extra control listener on TCP, for tests that need distinct source
    // addresses (the connection budget is per source; Unix peers are one).
    if let Ok(addr) = std::env::var("LOHAR_TCP") {
        let l = tokio::net::TcpListener::bind(&addr)
            .await
            .map_err(|e| format!("listen on {addr}: {e}"))?;
        tokio::spawn(agent.clone().run_tcp(l, false));
    }
    // The systemd substitute, rooted in a directory of the test's
    // (`$LOHAR_SYSTEMD_ROOT`; no cgroups, no /dev/log).
    if std::env::var_os(lohar::systemd::ROOT_ENV).is_some() {
        lohar::systemd::start(lohar::systemd::Paths::from_env()).await;
    }
    if let Ok(init) = std::env::var("LOHAR_INIT") {
        agent.start_init(&init, None);
    }
    eprintln!("lohar: ready");
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| e.to_string())?;
    tokio::select! {
        _ = agent.run_unix(ctl, false) => {}
        _ = term.recv() => {}
    }
    let _ = std::fs::remove_file(&sock);
    Ok(())
}
