//! `systemctl` and `journalctl`: the command lines, and the socket between
//! `systemctl` and the manager in PID 1.
//!
//! `systemctl` is a short-lived client: it parses its arguments and sends
//! one request frame (`SystemctlReq`, JSON) over
//! `/run/bhatti/systemctl.sock`; the manager answers with the text to print
//! and the exit status (`SystemctlResp`). The socket is open to every user
//! (`status` works for anyone), and the manager reads the caller's uid from
//! the socket itself (`SO_PEERCRED`), so only root changes state.
//! Without a manager (an image build's chroot), the verbs that only touch
//! files (`enable`, `mask` …) run in the client, as systemd's do.

use std::fmt::Write as _;
use std::io::{BufRead, Read, Seek, SeekFrom};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use bhatti_protocol::MsgType;
use serde::{Deserialize, Serialize};

use super::install;
use super::manager::{Active, Manager};
use super::unit::{self, SearchPath, UnitError, UnitName};
use super::Paths;

/// One `systemctl` invocation.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    /// The verb (`start`, `status` …).
    pub verb: String,
    /// Unit names as typed.
    pub units: Vec<String>,
    /// `--now` (enable/disable/mask).
    #[serde(default)]
    pub now: bool,
    /// `-p`/`--property`.
    #[serde(default)]
    pub props: Vec<String>,
    /// `--value`.
    #[serde(default)]
    pub value: bool,
    /// `-s`/`--signal`.
    #[serde(default)]
    pub signal: Option<String>,
    /// `-n`/`--lines` for status.
    #[serde(default)]
    pub lines: Option<usize>,
    /// `-q`/`--quiet`.
    #[serde(default)]
    pub quiet: bool,
    /// `--all`.
    #[serde(default)]
    pub all: bool,
    /// `--no-block`: queue the job and answer at once (how a unit's own
    /// commands restart it without waiting on themselves).
    #[serde(default)]
    pub no_block: bool,
}

/// What to print and how to exit.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    /// The exit status.
    pub code: i32,
    /// For stdout.
    pub out: String,
    /// For stderr.
    pub err: String,
}

impl Response {
    fn fail(code: i32, err: impl Into<String>) -> Response {
        Response {
            code,
            out: String::new(),
            err: err.into(),
        }
    }
}

const MUTATING: &[&str] = &[
    "start",
    "stop",
    "restart",
    "try-restart",
    "reload",
    "reload-or-restart",
    "try-reload-or-restart",
    "enable",
    "disable",
    "mask",
    "unmask",
    "kill",
    "reset-failed",
    "daemon-reload",
    "daemon-reexec",
    "preset",
    "reenable",
    "condrestart",
    "force-reload",
];

/// Verbs that only touch files, so they work without a manager.
const OFFLINE: &[&str] = &[
    "enable",
    "disable",
    "mask",
    "unmask",
    "is-enabled",
    "cat",
    "list-unit-files",
    "daemon-reload",
    "daemon-reexec",
    "preset",
    "reenable",
];

/// Parses `systemctl`'s arguments.
pub fn parse_args(args: &[String]) -> Result<Request, String> {
    let mut r = Request::default();
    let mut it = args.iter();
    let positional = |r: &mut Request, a: &str| {
        if r.verb.is_empty() {
            r.verb = a.to_string();
        } else {
            r.units.push(a.to_string());
        }
    };
    while let Some(a) = it.next() {
        match a.as_str() {
            // Everything after `--` is a verb or a unit, never an option
            // (`deb-systemd-invoke` runs `systemctl is-enabled -- UNIT`).
            "--" => {
                for rest in it.by_ref() {
                    positional(&mut r, rest);
                }
            }
            "--now" => r.now = true,
            "--no-block" => r.no_block = true,
            // Options that take a value this manager has no use for.
            "-t" | "--type" | "--state" | "--job-mode" | "-o" | "--output" => {
                it.next().ok_or(format!("{a} needs a value"))?;
            }
            "--value" => r.value = true,
            "-q" | "--quiet" => r.quiet = true,
            "-a" | "--all" => r.all = true,
            "-p" | "--property" => r.props.extend(
                it.next()
                    .ok_or("-p needs a property")?
                    .split(',')
                    .map(str::to_string),
            ),
            "-s" | "--signal" => {
                r.signal = Some(it.next().ok_or("--signal needs a signal")?.clone())
            }
            "-n" | "--lines" => {
                r.lines = Some(
                    it.next()
                        .ok_or("-n needs a number")?
                        .parse()
                        .map_err(|_| "-n needs a number")?,
                )
            }
            // Accepted for compatibility; nothing to do here.
            "--system"
            | "--no-pager"
            | "--full"
            | "-l"
            | "--no-legend"
            | "--no-ask-password"
            | "--no-reload"
            | "--plain"
            | "-f"
            | "--force"
            | "--runtime"
            | "--no-warn"
            | "--wait"
            | "--show-types"
            | "--failed"
            | "--ignore-dependencies" => {}
            a if a.starts_with("--property=") => r
                .props
                .extend(a["--property=".len()..].split(',').map(str::to_string)),
            a if a.starts_with("--signal=") => r.signal = Some(a["--signal=".len()..].to_string()),
            a if a.starts_with("--lines=") => {
                r.lines = Some(
                    a["--lines=".len()..]
                        .parse()
                        .map_err(|_| "--lines needs a number")?,
                )
            }
            a if a.starts_with("--type=")
                || a.starts_with("--state=")
                || a.starts_with("--job-mode=") => {}
            "--user" | "--global" => {
                return Err("only the system manager is supported (no --user)".into())
            }
            a if a.starts_with("--output=") => {}
            a if a.starts_with('-') && a.len() > 1 => return Err(format!("unknown option {a}")),
            a => positional(&mut r, a),
        }
    }
    if r.verb.is_empty() {
        r.verb = "list-units".into();
    }
    Ok(r)
}

/// `systemctl …` as typed.
pub fn systemctl_main(args: &[String]) -> ExitCode {
    // Scripts read the version's second word as a number; 252 is
    // bookworm's systemd, whose units and verbs this follows.
    if args.iter().any(|a| a == "--version") {
        println!("systemd 252 (lohar {})", env!("CARGO_PKG_VERSION"));
        return ExitCode::SUCCESS;
    }
    let req = match parse_args(args) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("systemctl: {e}");
            return ExitCode::from(1);
        }
    };
    let paths = Paths::from_env();
    // `cat` reads unit files as the caller, in the caller's process: the
    // manager (root, PID 1) never reads a file on someone's behalf.
    if req.verb == "cat" {
        let resp = offline(&paths.search, &req);
        print!("{}", resp.out);
        eprint!("{}", resp.err);
        return ExitCode::from(u8::try_from(resp.code).unwrap_or(1));
    }
    let resp = match call(&paths.ctl_socket, &req) {
        Ok(r) => r,
        Err(e) => {
            if OFFLINE.contains(&req.verb.as_str()) {
                offline(&paths.search, &req)
            } else if req.verb == "is-system-running" {
                Response {
                    code: 1,
                    out: "offline\n".into(),
                    err: String::new(),
                }
            } else {
                Response::fail(1, format!(
                    "System has not been booted with lohar's service manager (PID 1): cannot reach {}: {e}\n",
                    paths.ctl_socket.display()
                ))
            }
        }
    };
    print!("{}", resp.out);
    eprint!("{}", resp.err);
    ExitCode::from(u8::try_from(resp.code).unwrap_or(1))
}

fn call(sock: &Path, req: &Request) -> std::io::Result<Response> {
    let mut s = std::os::unix::net::UnixStream::connect(sock)?;
    let body = serde_json::to_vec(req).map_err(std::io::Error::other)?;
    bhatti_protocol::frame::write_frame(&mut s, MsgType::SystemctlReq.into(), &body)
        .map_err(std::io::Error::other)?;
    match bhatti_protocol::frame::read_frame(&mut s).map_err(std::io::Error::other)? {
        Some(f) if f.is(MsgType::SystemctlResp) => f.parse_json().map_err(std::io::Error::other),
        _ => Err(std::io::Error::other("no answer from the service manager")),
    }
}

/// `systemctl` connections served at once; more are closed at accept.
const MAX_CLIENTS: usize = 32;
/// How long a connection may take to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Lines `status -n` prints at most (the tail is read from the end).
const MAX_STATUS_LINES: usize = 1000;

/// Binds the socket and answers requests until the process ends.
pub async fn serve(mgr: Arc<Manager>) -> std::io::Result<()> {
    let path = mgr.paths().ctl_socket.clone();
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d)?;
    }
    let _ = std::fs::remove_file(&path);
    let l = tokio::net::UnixListener::bind(&path)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666))?;
    // Any guest user can connect: a bound on connections at once, on how
    // long a request may take to arrive, and the protocol's frame cap
    // (1 MiB) keep PID 1's memory and tasks out of their hands.
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CLIENTS));
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                drop(s);
                continue;
            };
            let m = mgr.clone();
            tokio::spawn(async move {
                let _slot = slot;
                let uid = s.peer_cred().map(|c| c.uid()).ok();
                let read = tokio::time::timeout(
                    REQUEST_TIMEOUT,
                    bhatti_protocol::r#async::read_frame(&mut s),
                );
                let Ok(Ok(Some(f))) = read.await else {
                    return;
                };
                let resp = match f.parse_json::<Request>() {
                    Ok(req) if f.is(MsgType::SystemctlReq) => {
                        if MUTATING.contains(&req.verb.as_str())
                            && uid != Some(0)
                            && uid != Some(nix::unistd::getuid().as_raw())
                        {
                            Response::fail(4, format!("Failed to {} {}: Access denied (run it as root: sudo systemctl {} …)\n", req.verb, req.units.join(" "), req.verb))
                        } else {
                            handle(&m, req).await
                        }
                    }
                    _ => Response::fail(1, "bad request\n"),
                };
                let _ = bhatti_protocol::r#async::send_json(&mut s, MsgType::SystemctlResp, &resp)
                    .await;
            });
        }
    });
    Ok(())
}

fn not_found(verb: &str, u: &str) -> String {
    let full = UnitName::parse(u)
        .map(|n| n.full)
        .unwrap_or_else(|_| u.to_string());
    format!("Failed to {verb} {full}: Unit {full} not found.\n")
}

/// The verbs that only need the unit files.
fn offline(search: &SearchPath, req: &Request) -> Response {
    let mut r = Response::default();
    for u in &req.units {
        let res = match req.verb.as_str() {
            "enable" | "reenable" | "preset" => {
                if req.verb == "reenable" {
                    let _ = install::disable(search, u);
                }
                install::enable(search, u)
            }
            "disable" => install::disable(search, u),
            "mask" => install::mask(search, u),
            "unmask" => install::unmask(search, u),
            "is-enabled" => match install::state(search, u) {
                Ok(s) => {
                    if !req.quiet {
                        r.out.push_str(s.as_str());
                        r.out.push('\n');
                    }
                    if s.exit_code() != 0 && r.code == 0 {
                        r.code = 1;
                    }
                    continue;
                }
                Err(UnitError::Masked(_)) => {
                    if !req.quiet {
                        r.out.push_str("masked\n");
                    }
                    r.code = 1;
                    continue;
                }
                Err(e) => Err(e),
            },
            "cat" => match unit::load(search, u) {
                Ok(l) => {
                    for f in std::iter::once(&l.fragment).chain(&l.dropins) {
                        let _ = writeln!(r.out, "# {}", f.display());
                        r.out
                            .push_str(&std::fs::read_to_string(f).unwrap_or_default());
                        r.out.push('\n');
                    }
                    continue;
                }
                Err(e) => Err(e),
            },
            _ => continue,
        };
        match res {
            Ok(lines) => {
                for l in lines {
                    r.err.push_str(&l);
                    r.err.push('\n');
                }
            }
            Err(UnitError::NotFound(_)) => {
                r.err.push_str(&not_found(&req.verb, u));
                r.code = if req.verb == "is-enabled" { 4 } else { 1 };
            }
            Err(e) => {
                let _ = writeln!(r.err, "Failed to {} {u}: {e}", req.verb);
                r.code = 1;
            }
        }
    }
    if req.verb == "list-unit-files" {
        let _ = writeln!(r.out, "{:<40} STATE", "UNIT FILE");
        let files = install::unit_files(search);
        for (n, s) in &files {
            let _ = writeln!(r.out, "{n:<40} {s}");
        }
        let _ = writeln!(r.out, "\n{} unit files listed.", files.len());
    }
    if req.units.is_empty()
        && ["enable", "disable", "mask", "unmask", "is-enabled", "cat"].contains(&req.verb.as_str())
    {
        return Response::fail(
            1,
            format!(
                "Too few arguments: systemctl {} needs a unit name\n",
                req.verb
            ),
        );
    }
    r
}

/// Answers one request in the manager.
pub async fn handle(m: &Arc<Manager>, req: Request) -> Response {
    let verb = req.verb.as_str();
    let units = &req.units;
    let needs_units = !matches!(
        verb,
        "list-units"
            | "list-unit-files"
            | "daemon-reload"
            | "daemon-reexec"
            | "is-system-running"
            | "reset-failed"
            | "show-environment"
            | "list-jobs"
    );
    if needs_units && units.is_empty() {
        return Response::fail(
            1,
            format!("Too few arguments: systemctl {verb} needs a unit name\n"),
        );
    }
    let mut r = Response::default();
    match verb {
        "start"
        | "stop"
        | "restart"
        | "try-restart"
        | "condrestart"
        | "reload"
        | "force-reload"
        | "reload-or-restart"
        | "try-reload-or-restart" => {
            for u in units {
                match m.status(u) {
                    Err(UnitError::NotFound(_)) if verb != "stop" => {
                        r.err.push_str(&not_found(verb, u));
                        r.code = 5;
                        continue;
                    }
                    Err(UnitError::Masked(n)) if verb != "stop" => {
                        let _ = writeln!(r.err, "Failed to {verb} {n}: Unit {n} is masked.");
                        r.code = 1;
                        continue;
                    }
                    _ => {}
                }
                if req.no_block {
                    // Checked now, done later: the answer cannot wait on a
                    // job that may be waiting on the caller (a unit
                    // restarting itself from its own ExecStartPost=).
                    let (m, u, verb) = (m.clone(), u.clone(), verb.to_string());
                    tokio::spawn(async move {
                        if let Err(e) = job(&m, &verb, &u).await {
                            tracing::warn!(unit = %u, "systemctl --no-block {verb}: {e}");
                        }
                    });
                    continue;
                }
                if let Err(e) = job(m, verb, u).await {
                    let full = UnitName::parse(u)
                        .map(|n| n.full)
                        .unwrap_or_else(|_| u.clone());
                    let _ = writeln!(
                        r.err,
                        "Job for {full} failed: {e}\nSee \"systemctl status {full}\" and \"journalctl -u {full}\" for details."
                    );
                    r.code = 1;
                }
            }
        }
        "enable" | "disable" | "mask" | "unmask" | "reenable" | "preset" => {
            r = offline(m.search(), &req);
            if req.now && r.code == 0 {
                for u in units {
                    let res = if verb == "enable" || verb == "reenable" {
                        m.start(u).await
                    } else {
                        m.stop(u).await
                    };
                    if let Err(e) = res {
                        let _ = writeln!(
                            r.err,
                            "Failed to {} {u}: {e}",
                            if verb == "enable" { "start" } else { "stop" }
                        );
                        r.code = 1;
                    }
                }
            }
        }
        "is-enabled" | "list-unit-files" => r = offline(m.search(), &req),
        "cat" => {
            return Response::fail(
                1,
                "systemctl cat reads the files itself; update systemctl\n",
            )
        }
        "daemon-reload" | "daemon-reexec" => {}
        "is-system-running" => {
            let degraded = m.known().iter().any(|s| s.active == Active::Failed);
            r.out = if degraded { "degraded\n" } else { "running\n" }.into();
            r.code = i32::from(degraded);
        }
        "is-active" | "is-failed" => {
            let mut any = false;
            for u in units {
                // Targets have no processes: the boot reached them all
                // (`invoke-rc.d` asks whether multi-user.target is active).
                let target = UnitName::parse(u).is_ok_and(|n| n.full.ends_with(".target"));
                let word = match m.status(u) {
                    _ if target => "active",
                    Ok(s) => s.active.as_str(),
                    Err(_) => "inactive",
                };
                any |= if verb == "is-active" {
                    word == "active" || word == "reloading"
                } else {
                    word == "failed"
                };
                if !req.quiet {
                    r.out.push_str(word);
                    r.out.push('\n');
                }
            }
            r.code = if any {
                0
            } else if verb == "is-active" {
                3
            } else {
                1
            };
        }
        "status" => {
            for u in units {
                match m.status(u) {
                    Ok(s) => {
                        let lines = req.lines.unwrap_or(10).min(MAX_STATUS_LINES);
                        let code = status_text(m, &s, lines, &mut r.out);
                        if r.code == 0 {
                            r.code = code;
                        }
                    }
                    Err(UnitError::Masked(n)) => {
                        let _ = writeln!(r.out, "○ {n}\n     Loaded: masked (Reason: Unit {n} is masked.)\n     Active: inactive (dead)");
                        r.code = 3;
                    }
                    Err(e) => {
                        let _ = writeln!(
                            r.err,
                            "Unit {}: {e}",
                            UnitName::parse(u)
                                .map(|n| n.full)
                                .unwrap_or_else(|_| u.clone())
                        );
                        r.code = 4;
                    }
                }
            }
        }
        "show" => {
            for u in units {
                match m.status(u) {
                    Ok(s) => show(m, &s, &req, &mut r.out),
                    // As systemd: a unit that is not there is shown too,
                    // by its load state (`invoke-rc.d` asks for it).
                    Err(e @ (UnitError::NotFound(_) | UnitError::Masked(_))) => {
                        let mut st = super::manager::Status::new(
                            &UnitName::parse(u)
                                .map(|n| n.full)
                                .unwrap_or_else(|_| u.clone()),
                        );
                        st.load_error = Some(e.to_string());
                        let load = if matches!(e, UnitError::Masked(_)) {
                            "masked"
                        } else {
                            "not-found"
                        };
                        write_props(&props(m, &st, load), &req, &mut r.out);
                    }
                    Err(e) => {
                        let _ = writeln!(r.err, "{e}");
                        r.code = 1;
                    }
                }
            }
        }
        "kill" => {
            let sig = match req.signal.as_deref().map(unit::signal_number) {
                None => libc::SIGTERM,
                Some(Some(s)) => s,
                Some(None) => return Response::fail(1, "unknown signal\n"),
            };
            for u in units {
                if let Err(e) = m.kill(u, sig).await {
                    let _ = writeln!(r.err, "Failed to kill {u}: {e}");
                    r.code = 1;
                }
            }
        }
        "reset-failed" => {
            let names: Vec<String> = if units.is_empty() {
                m.known().into_iter().map(|s| s.name).collect()
            } else {
                units.clone()
            };
            for u in names {
                m.reset_failed(&u);
            }
        }
        "list-units" | "list-jobs" | "show-environment" => {
            if verb == "list-units" {
                let _ = writeln!(
                    r.out,
                    "{:<40} {:<8} {:<10} {:<12} DESCRIPTION",
                    "UNIT", "LOAD", "ACTIVE", "SUB"
                );
                let mut all = m.known();
                all.sort_by(|a, b| a.name.cmp(&b.name));
                let mut n: usize = 0;
                for s in all
                    .iter()
                    .filter(|s| req.all || s.active != Active::Inactive)
                {
                    let load = if s.load_error.is_some() {
                        "error"
                    } else {
                        "loaded"
                    };
                    let _ = writeln!(
                        r.out,
                        "{:<40} {:<8} {:<10} {:<12} {}",
                        s.name,
                        load,
                        s.active.as_str(),
                        s.sub,
                        s.description
                    );
                    n = n.saturating_add(1);
                }
                let _ = writeln!(r.out, "\n{n} loaded units listed.");
            }
        }
        other => return Response::fail(1, format!("Unknown command verb '{other}'.\n")),
    }
    r
}

/// One start/stop/restart/reload job on one unit, as systemctl(1) defines
/// the verbs (the `try-` forms only act on an active unit).
async fn job(m: &Arc<Manager>, verb: &str, u: &str) -> Result<(), String> {
    let active = m.status(u).is_ok_and(|s| s.active == Active::Active);
    match (verb, active) {
        ("start", _) => m.start(u).await,
        ("stop", _) => m.stop(u).await,
        ("restart", _) => m.restart(u).await,
        ("try-restart" | "condrestart", true) => m.restart(u).await,
        // force-reload is try-reload-or-restart (systemctl(1)).
        ("reload-or-restart" | "try-reload-or-restart" | "force-reload", true) => {
            match m.reload(u).await {
                Ok(()) => Ok(()),
                Err(_) => m.restart(u).await,
            }
        }
        ("reload", _) => m.reload(u).await,
        ("reload-or-restart", false) => m.restart(u).await,
        _ => Ok(()),
    }
}

/// Prints `status` for one unit; returns systemctl's exit code for it.
fn status_text(m: &Manager, s: &super::manager::Status, lines: usize, out: &mut String) -> i32 {
    let dot = match s.active {
        Active::Active => "●",
        Active::Failed => "×",
        _ => "○",
    };
    let _ = writeln!(out, "{dot} {} - {}", s.name, s.description);
    let enabled = install::state(m.search(), &s.name)
        .map(|e| e.as_str())
        .unwrap_or("bad");
    match (&s.load_error, &s.fragment) {
        (Some(e), _) => {
            let _ = writeln!(out, "     Loaded: error (Reason: {e})");
        }
        (None, Some(f)) => {
            let _ = writeln!(out, "     Loaded: loaded ({}; {enabled})", f.display());
        }
        (None, None) => {
            let _ = writeln!(out, "     Loaded: not-found");
        }
    }
    let ago = s.since.elapsed().map(|d| d.as_secs()).unwrap_or(0);
    let result = if s.active == Active::Failed {
        format!(" (Result: {})", s.result)
    } else {
        format!(" ({})", s.sub)
    };
    let _ = writeln!(
        out,
        "     Active: {}{result} since {}; {ago}s ago",
        s.active.as_str(),
        super::timestamp(s.since)
    );
    if let Some(r) = &s.reason {
        let _ = writeln!(out, "     Reason: {r}");
    }
    if let Some(n) = &s.note {
        let _ = writeln!(out, "    Warning: {n}");
    }
    if let Some(t) = &s.status_text {
        let _ = writeln!(out, "     Status: \"{t}\"");
    }
    if let Some(p) = s.main_pid {
        let comm = std::fs::read_to_string(format!("/proc/{p}/comm")).unwrap_or_default();
        let _ = writeln!(out, "   Main PID: {p} ({})", comm.trim());
    }
    if let Some(cg) = &s.cgroup {
        let procs = super::manager::cgroup_procs(cg);
        if !procs.is_empty() {
            let _ = writeln!(out, "      Tasks: {}", procs.len());
            let _ = writeln!(out, "     CGroup: /system.slice/{}", s.name);
            for p in procs {
                let cmd = std::fs::read(format!("/proc/{p}/cmdline")).unwrap_or_default();
                let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
                let _ = writeln!(out, "             └─{p} {}", cmd.trim());
            }
        }
    }
    if lines > 0 {
        let stem = UnitName::parse(&s.name)
            .map(|n| n.log_stem().to_string())
            .unwrap_or_default();
        let tail = tail_lines(&m.paths().log_dir.join(format!("{stem}.log")), lines, true);
        if !tail.is_empty() {
            out.push('\n');
            for l in tail {
                out.push_str(&l);
                out.push('\n');
            }
        }
    }
    match s.active {
        Active::Active => 0,
        _ => 3,
    }
}

fn show(m: &Manager, s: &super::manager::Status, req: &Request, out: &mut String) {
    let load = if s.load_error.is_some() {
        "error"
    } else {
        "loaded"
    };
    write_props(&props(m, s, load), req, out);
}

/// `show`'s properties for one unit, in systemd's names.
fn props(m: &Manager, s: &super::manager::Status, load: &str) -> Vec<(&'static str, String)> {
    let enabled = match load {
        "masked" => "masked",
        "not-found" => "",
        _ => install::state(m.search(), &s.name)
            .map(|e| e.as_str())
            .unwrap_or("bad"),
    };
    // Package scripts pick reload or restart by it.
    let can_reload = load == "loaded"
        && unit::load(m.search(), &s.name)
            .and_then(|l| super::unit::Service::from_loaded(&l, "/root"))
            .is_ok_and(|svc| !svc.reload.is_empty());
    vec![
        ("Id", s.name.clone()),
        ("Description", s.description.clone()),
        ("LoadState", load.into()),
        ("ActiveState", s.active.as_str().into()),
        ("SubState", s.sub.into()),
        ("Result", s.result.into()),
        ("MainPID", s.main_pid.unwrap_or(0).to_string()),
        ("NRestarts", s.restarts.to_string()),
        ("UnitFileState", enabled.into()),
        ("CanReload", if can_reload { "yes" } else { "no" }.into()),
        (
            "CanStart",
            if load == "loaded" { "yes" } else { "no" }.into(),
        ),
        (
            "CanStop",
            if load == "loaded" { "yes" } else { "no" }.into(),
        ),
        (
            "FragmentPath",
            s.fragment
                .as_ref()
                .map(|f| f.display().to_string())
                .unwrap_or_default(),
        ),
        (
            "ExecMainStatus",
            s.last_exit.and_then(|(c, _)| c).unwrap_or(0).to_string(),
        ),
        ("StatusText", s.status_text.clone().unwrap_or_default()),
    ]
}

fn write_props(props: &[(&str, String)], req: &Request, out: &mut String) {
    for (k, v) in props {
        if !req.props.is_empty() && !req.props.iter().any(|p| p == k) {
            continue;
        }
        if req.value {
            let _ = writeln!(out, "{v}");
        } else {
            let _ = writeln!(out, "{k}={v}");
        }
    }
}

/// How much of a log's end `tail_lines` reads: the last lines of a
/// 16 MiB log without reading all of it.
const TAIL_WINDOW: u64 = 1024 * 1024;

/// The last `n` lines of a file (from its last [`TAIL_WINDOW`] bytes when
/// `bounded`, else the whole file, as `journalctl` without `-n` prints it).
pub fn tail_lines(path: &Path, n: usize, bounded: bool) -> Vec<String> {
    let Ok(mut f) = std::fs::File::open(path) else {
        return Vec::new();
    };
    if n == 0 {
        return Vec::new();
    }
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let from = if bounded {
        len.saturating_sub(TAIL_WINDOW)
    } else {
        0
    };
    if f.seek(SeekFrom::Start(from)).is_err() {
        return Vec::new();
    }
    let mut lines = std::io::BufReader::new(f).split(b'\n');
    if from > 0 {
        // The window starts mid-line: that partial line is not shown.
        lines.next();
    }
    let mut ring = std::collections::VecDeque::with_capacity(n.min(10_000));
    for l in lines.map_while(Result::ok) {
        if ring.len() == n {
            ring.pop_front();
        }
        ring.push_back(String::from_utf8_lossy(&l).into_owned());
    }
    ring.into()
}

/// What a `journalctl` command line asks for.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct JournalArgs {
    /// `-u`: units whose logs to print (every log when empty).
    pub units: Vec<String>,
    /// `-t`: syslog identifiers whose lines to print.
    pub identifiers: Vec<String>,
    /// `-n`: the last N lines of each log (`-e`: 1000).
    pub lines: Option<usize>,
    /// `-f`.
    pub follow: bool,
}

/// Parses `journalctl`'s arguments, short options clustered as people type
/// them (`-xeu nginx`, `-fu redis`, `-n50`). Options about output format,
/// boots and time ranges are accepted and change nothing: there is one
/// boot and one format, and every line is printed.
pub fn parse_journal_args(args: &[String]) -> Result<JournalArgs, String> {
    let mut j = JournalArgs::default();
    let number = |v: &str| {
        v.parse::<usize>()
            .map_err(|_| format!("-n needs a number, not {v:?}"))
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if let Some(long) = a.strip_prefix("--") {
            let (name, inline) = match long.split_once('=') {
                Some((n, v)) => (n, Some(v.to_string())),
                None => (long, None),
            };
            let mut value = || -> Result<String, String> {
                match &inline {
                    Some(v) => Ok(v.clone()),
                    None => it.next().cloned().ok_or(format!("--{name} needs a value")),
                }
            };
            match name {
                "unit" => j.units.push(value()?),
                "identifier" => j.identifiers.push(value()?),
                "lines" => j.lines = Some(number(&value()?)?),
                "follow" => j.follow = true,
                "pager-end" => j.lines = j.lines.or(Some(1000)),
                "output" | "since" | "until" | "boot" | "priority" => {
                    // `--boot` alone is common; a value is optional there.
                    if inline.is_none() && name != "boot" {
                        value()?;
                    }
                }
                "no-pager" | "quiet" | "catalog" | "no-hostname" | "all" | "full" | "system"
                | "merge" | "reverse" | "utc" | "no-tail" => {}
                other => {
                    return Err(format!(
                        "unsupported option --{other} (lohar supports -u, -t, -n, -f, -e)"
                    ))
                }
            }
            continue;
        }
        let Some(cluster) = a.strip_prefix('-').filter(|c| !c.is_empty()) else {
            return Err(format!(
                "unexpected argument {a:?} (matches are not supported; use -u UNIT)"
            ));
        };
        for (i, c) in cluster.char_indices() {
            let rest = &cluster[i.saturating_add(c.len_utf8())..];
            // An option with a value takes the cluster's rest, else the
            // next argument.
            let mut value = |rest: &str| -> Result<String, String> {
                if rest.is_empty() {
                    it.next().cloned().ok_or(format!("-{c} needs a value"))
                } else {
                    Ok(rest.to_string())
                }
            };
            match c {
                'u' => {
                    j.units.push(value(rest)?);
                    break;
                }
                't' => {
                    j.identifiers.push(value(rest)?);
                    break;
                }
                'n' => {
                    j.lines = Some(number(&value(rest)?)?);
                    break;
                }
                'o' | 'S' | 'U' | 'p' => {
                    value(rest)?;
                    break;
                }
                'f' => j.follow = true,
                'e' => j.lines = j.lines.or(Some(1000)),
                'x' | 'b' | 'q' | 'a' | 'l' | 'r' => {}
                other => {
                    return Err(format!(
                        "unsupported option -{other} (lohar supports -u, -t, -n, -f, -e)"
                    ))
                }
            }
        }
    }
    Ok(j)
}

/// `journalctl [-u UNIT]… [-t ID]… [-n N] [-f]`, reading the per-unit logs.
pub fn journalctl_main(args: &[String]) -> ExitCode {
    let JournalArgs {
        units,
        identifiers,
        lines,
        follow,
    } = match parse_journal_args(args) {
        Ok(j) => j,
        Err(e) => {
            eprintln!("journalctl: {e}");
            return ExitCode::from(1);
        }
    };
    // A line is `<time> <who>: <message>`, `who` being `tag[pid]` or the
    // unit's name.
    let wanted = |l: &str| {
        identifiers.is_empty()
            || l.split_once(' ').is_some_and(|(_, rest)| {
                identifiers.iter().any(|id| {
                    rest.strip_prefix(id.as_str())
                        .is_some_and(|r| r.starts_with('[') || r.starts_with(':'))
                })
            })
    };
    let paths = Paths::from_env();
    let files: Vec<std::path::PathBuf> = if units.is_empty() {
        let mut v: Vec<_> = std::fs::read_dir(&paths.log_dir)
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.path())
                    .filter(|p| p.extension().is_some_and(|x| x == "log"))
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    } else {
        units
            .iter()
            .map(|u| {
                let stem = UnitName::parse(u)
                    .map(|n| n.log_stem().to_string())
                    .unwrap_or_else(|_| u.clone());
                paths.log_dir.join(format!("{stem}.log"))
            })
            .collect()
    };
    if files.iter().all(|f| !f.exists()) && !follow {
        println!("-- No entries --");
        return ExitCode::SUCCESS;
    }
    for f in &files {
        let all = tail_lines(f, usize::MAX, lines.is_some());
        let kept: Vec<&String> = all.iter().filter(|l| wanted(l)).collect();
        let skip = kept.len().saturating_sub(lines.unwrap_or(usize::MAX));
        for l in kept.into_iter().skip(skip) {
            println!("{l}");
        }
    }
    if follow {
        let mut offsets: Vec<u64> = files
            .iter()
            .map(|f| std::fs::metadata(f).map(|m| m.len()).unwrap_or(0))
            .collect();
        loop {
            std::thread::sleep(Duration::from_millis(200));
            for (f, off) in files.iter().zip(offsets.iter_mut()) {
                let Ok(mut file) = std::fs::File::open(f) else {
                    continue;
                };
                let len = file.metadata().map(|m| m.len()).unwrap_or(0);
                if len < *off {
                    *off = 0;
                }
                if len == *off || file.seek(SeekFrom::Start(*off)).is_err() {
                    continue;
                }
                let mut buf = Vec::new();
                if file.read_to_end(&mut buf).is_ok() {
                    *off = off.saturating_add(u64::try_from(buf.len()).unwrap_or(0));
                    for l in String::from_utf8_lossy(&buf).lines().filter(|l| wanted(l)) {
                        println!("{l}");
                    }
                    use std::io::Write;
                    let _ = std::io::stdout().flush();
                }
            }
        }
    }
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn parses_systemctl_lines_as_packages_write_them() {
        let r = parse_args(&s(&["--system", "--no-block", "start", "nginx.service"])).unwrap();
        assert_eq!(r.verb, "start");
        assert_eq!(r.units, ["nginx.service"]);
        let r = parse_args(&s(&["show", "-p", "ActiveState,SubState", "--value", "x"])).unwrap();
        assert_eq!(r.props, ["ActiveState", "SubState"]);
        assert!(r.value);
        let r = parse_args(&s(&["enable", "--now", "redis"])).unwrap();
        assert!(r.now);
        assert_eq!(parse_args(&[]).unwrap().verb, "list-units");
        assert!(parse_args(&s(&["--user", "start", "x"])).is_err());
        assert!(parse_args(&s(&["--bogus"])).is_err());
    }

    #[test]
    fn parses_what_debian_scripts_and_people_type() {
        // deb-systemd-invoke: options, then `--`, then the unit.
        let r = parse_args(&s(&["--quiet", "is-enabled", "--", "nginx.service"])).unwrap();
        assert_eq!(
            (r.verb.as_str(), r.units.as_slice(), r.quiet),
            ("is-enabled", &s(&["nginx.service"])[..], true)
        );
        let r = parse_args(&s(&["--", "start", "-weird.service"])).unwrap();
        assert_eq!(
            (r.verb.as_str(), r.units.as_slice()),
            ("start", &s(&["-weird.service"])[..])
        );
        let r = parse_args(&s(&[
            "-t",
            "service",
            "--no-block",
            "--wait",
            "restart",
            "a",
        ]))
        .unwrap();
        assert_eq!((r.verb.as_str(), r.no_block), ("restart", true));
        assert!(
            parse_args(&s(&["list-units", "-t"])).is_err(),
            "-t needs a value"
        );

        let j = parse_journal_args(&s(&["-xeu", "nginx"])).unwrap();
        assert_eq!(
            (j.units.as_slice(), j.lines),
            (&s(&["nginx"])[..], Some(1000))
        );
        let j = parse_journal_args(&s(&[
            "-fu", "redis", "-n50", "-o", "cat", "--since", "today", "-t", "cron",
        ]))
        .unwrap();
        assert_eq!(
            j,
            JournalArgs {
                units: s(&["redis"]),
                identifiers: s(&["cron"]),
                lines: Some(50),
                follow: true
            }
        );
        let j = parse_journal_args(&s(&["--unit=a", "--lines", "3", "-b", "--no-pager"])).unwrap();
        assert_eq!((j.units.as_slice(), j.lines), (&s(&["a"])[..], Some(3)));
        assert!(parse_journal_args(&s(&["-n", "x"])).is_err());
        assert!(parse_journal_args(&s(&["-Z"])).is_err());
        assert!(parse_journal_args(&s(&["_PID=1"])).is_err());
    }

    #[test]
    fn tail_reads_the_end_of_a_big_log() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("big.log");
        let mut text = String::new();
        for i in 0..100_000 {
            text.push_str(&format!("line {i} ................................\n"));
        }
        std::fs::write(&f, &text).unwrap();
        assert!(std::fs::metadata(&f).unwrap().len() > TAIL_WINDOW);
        assert_eq!(
            tail_lines(&f, 2, true),
            [
                "line 99998 ................................",
                "line 99999 ................................"
            ]
        );
        let all = tail_lines(&f, usize::MAX, true);
        assert!(
            all.len() < 100_000 && all.first().unwrap().starts_with("line "),
            "a whole line first"
        );
        assert_eq!(tail_lines(&f, usize::MAX, false).len(), 100_000);
        assert!(tail_lines(&f, 0, true).is_empty());
    }

    #[test]
    fn offline_verbs_touch_only_files() {
        let dir = tempfile::tempdir().unwrap();
        let p = SearchPath::under(dir.path());
        let lib = dir.path().join("lib/systemd/system");
        std::fs::create_dir_all(&lib).unwrap();
        std::fs::write(
            lib.join("a.service"),
            "[Service]\nExecStart=/bin/a\n[Install]\nWantedBy=multi-user.target\n",
        )
        .unwrap();
        let req = |verb: &str| Request {
            verb: verb.into(),
            units: vec!["a".into()],
            ..Request::default()
        };
        assert_eq!(offline(&p, &req("is-enabled")).out, "disabled\n");
        assert_eq!(offline(&p, &req("enable")).code, 0);
        let r = offline(&p, &req("is-enabled"));
        assert_eq!((r.code, r.out.as_str()), (0, "enabled\n"));
        let r = offline(
            &p,
            &Request {
                verb: "enable".into(),
                units: vec!["nope".into()],
                ..Request::default()
            },
        );
        assert_eq!(r.code, 1);
        assert!(r.err.contains("Unit nope.service not found"), "{}", r.err);
    }
}
