//! The service manager: one actor per unit, owning its processes.
//!
//! Each unit that is started, stopped or asked about gets a task that
//! alone touches its processes. Commands (`start`, `stop` …) reach it over
//! a channel and are done one at a time, so a `stop` can never race the
//! restart of the process it is stopping, and the main process's exit, a
//! pending restart and `sd_notify` messages are all handled in the same
//! `select!`. The status others read is a snapshot the actor publishes.
//!
//! The unit file is read again at every start, so `daemon-reload` has
//! nothing to do.

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{mpsc, oneshot};

use super::unit::{
    self, ExecLine, KillMode, NotifyAccess, RestartPolicy, SearchPath, Service, ServiceType,
    UnitError, UnitName,
};
use super::{log_line, Paths};

/// systemd's active states.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Active {
    /// Not running, and did not fail.
    Inactive,
    /// Starting (pre commands, waiting for READY=1 or the fork).
    Activating,
    /// Running, or a oneshot that remains after exit.
    Active,
    /// Stopping.
    Deactivating,
    /// Failed; `result` and `reason` say why.
    Failed,
}

impl Active {
    /// The word systemctl prints.
    pub fn as_str(self) -> &'static str {
        match self {
            Active::Inactive => "inactive",
            Active::Activating => "activating",
            Active::Active => "active",
            Active::Deactivating => "deactivating",
            Active::Failed => "failed",
        }
    }
}

/// What `status` and `show` print for one unit.
#[derive(Debug, Clone)]
pub struct Status {
    /// The unit's name.
    pub name: String,
    /// `Description=`.
    pub description: String,
    /// The unit file, when it loaded.
    pub fragment: Option<PathBuf>,
    /// Why the unit could not be loaded.
    pub load_error: Option<String>,
    /// The active state.
    pub active: Active,
    /// systemd's sub-state (`running`, `exited`, `dead`, `auto-restart` …).
    pub sub: &'static str,
    /// The main process.
    pub main_pid: Option<u32>,
    /// `success`, `exit-code`, `signal`, `timeout`, `start-limit-hit` …
    pub result: &'static str,
    /// A sentence saying why the unit is failed or what is odd about it.
    pub reason: Option<String>,
    /// Ordering note (a cycle it was caught in).
    pub note: Option<String>,
    /// When the active state last changed.
    pub since: SystemTime,
    /// Automatic restarts so far.
    pub restarts: u32,
    /// `STATUS=` from sd_notify.
    pub status_text: Option<String>,
    /// The main process's last exit: (code, signal).
    pub last_exit: Option<(Option<i32>, Option<i32>)>,
    /// The unit's cgroup, when cgroups are in use.
    pub cgroup: Option<PathBuf>,
}

impl Status {
    /// A unit that has not run (what `status` shows before a start).
    pub fn new(name: &str) -> Status {
        Status {
            name: name.to_string(),
            description: name.to_string(),
            fragment: None,
            load_error: None,
            active: Active::Inactive,
            sub: "dead",
            main_pid: None,
            result: "success",
            reason: None,
            note: None,
            since: SystemTime::now(),
            restarts: 0,
            status_text: None,
            last_exit: None,
            cgroup: None,
        }
    }
}

/// A command for a unit's actor; the answer is `Err(reason)` on failure.
enum Cmd {
    Start(oneshot::Sender<Result<(), String>>),
    Stop(oneshot::Sender<Result<(), String>>),
    Restart(oneshot::Sender<Result<(), String>>),
    Reload(oneshot::Sender<Result<(), String>>),
    Kill(i32, oneshot::Sender<Result<(), String>>),
    ResetFailed,
}

/// An sd_notify message for a unit.
#[derive(Debug, Clone)]
pub struct Notify {
    /// The sender's pid.
    pub pid: u32,
    /// `KEY=VALUE` lines.
    pub fields: Vec<(String, String)>,
}

struct Handle {
    tx: mpsc::UnboundedSender<Cmd>,
    notify: mpsc::Sender<Notify>,
    status: Arc<Mutex<Status>>,
    /// Woken by `stop`: a start still in progress (ExecStartPre=, waiting
    /// for READY=1 with no timeout) gives up, so a stop never waits on a
    /// start that may never end.
    abort_start: Arc<tokio::sync::Notify>,
}

/// sd_notify messages queued per unit; more are dropped (the sender is a
/// guest process, and the queue lives in PID 1).
const NOTIFY_QUEUE: usize = 64;

/// The manager: the units it knows and where everything lives.
pub struct Manager {
    paths: Paths,
    units: Mutex<BTreeMap<String, Arc<Handle>>>,
}

impl std::fmt::Debug for Manager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Manager")
            .field("paths", &self.paths)
            .finish()
    }
}

/// How a process ended: exit code or signal (both unknown for a forked
/// daemon that is not our child).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Exit {
    code: Option<i32>,
    signal: Option<i32>,
}

impl Exit {
    /// Neither code nor signal is known.
    const UNKNOWN: Exit = Exit {
        code: None,
        signal: None,
    };

    fn from_status(s: std::process::ExitStatus) -> Exit {
        use std::os::unix::process::ExitStatusExt;
        Exit {
            code: s.code(),
            signal: s.signal(),
        }
    }

    fn clean(&self, svc: &Service) -> bool {
        match (self.code, self.signal) {
            (Some(c), _) => c == 0 || svc.success_exit.contains(&c),
            (None, Some(s)) => {
                [libc::SIGHUP, libc::SIGINT, libc::SIGTERM, libc::SIGPIPE].contains(&s)
            }
            // A daemon whose end nobody saw (outside PID 1, where no
            // reaper keeps it): systemd's rule for a main pid it cannot
            // wait for is success, so a clean `nginx -s quit` is not a
            // failure and never a restart under Restart=on-failure.
            (None, None) => true,
        }
    }

    fn describe(&self) -> String {
        match (self.code, self.signal) {
            (Some(c), _) => format!("code=exited, status={c}"),
            (None, Some(s)) => format!(
                "code=killed, signal={}",
                nix::sys::signal::Signal::try_from(s)
                    .map(|s| s.as_str().trim_start_matches("SIG").to_string())
                    .unwrap_or_else(|_| s.to_string())
            ),
            (None, None) => "code=exited, status=unknown".into(),
        }
    }
}

/// The running main process: our child, or a forked daemon's pid.
enum MainProc {
    Child(tokio::process::Child),
    Pid(u32),
}

impl MainProc {
    fn pid(&self) -> Option<u32> {
        match self {
            MainProc::Child(c) => c.id(),
            MainProc::Pid(p) => Some(*p),
        }
    }

    async fn wait(&mut self) -> Exit {
        match self {
            MainProc::Child(c) => {
                let pid = c.id();
                let st = c.wait().await;
                crate::guest::reaper::untrack(pid);
                match st {
                    Ok(s) => Exit::from_status(s),
                    Err(_) => Exit::UNKNOWN,
                }
            }
            MainProc::Pid(p) => {
                while pid_alive(*p) {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                // Not our child: PID 1's reaper collects it (on SIGCHLD)
                // and keeps how it ended; give it a moment to.
                for _ in 0..20 {
                    if let Some((code, signal)) = crate::guest::reaper::orphan_exit(*p) {
                        return Exit { code, signal };
                    }
                    if !Path::new(&format!("/proc/{p}")).exists() {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Exit::UNKNOWN
            }
        }
    }
}

/// Alive and not a zombie.
pub(crate) fn pid_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => s
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|st| st != "Z" && st != "X"),
        Err(_) => false,
    }
}

impl Manager {
    /// A manager over `paths`; nothing starts until asked.
    pub fn new(paths: Paths) -> Arc<Manager> {
        if let Some(cg) = &paths.cgroup_root {
            if std::fs::create_dir_all(cg).is_ok() {
                // Let units carry their own limits (best effort: a controller
                // the kernel lacks is refused, the others still apply).
                for c in ["+cpu", "+memory", "+io", "+pids"] {
                    let _ = std::fs::write(cg.join("cgroup.subtree_control"), c);
                }
            }
        }
        for d in [&paths.run_dir, &paths.log_dir] {
            let _ = std::fs::create_dir_all(d);
        }
        Arc::new(Manager {
            paths,
            units: Mutex::new(BTreeMap::new()),
        })
    }

    /// Where things live.
    pub fn paths(&self) -> &Paths {
        &self.paths
    }

    /// The unit search path.
    pub fn search(&self) -> &SearchPath {
        &self.paths.search
    }

    /// The name an actor is kept under: aliases resolve to their unit.
    pub fn canonical(&self, name: &str) -> Result<String, UnitError> {
        let n = UnitName::parse(name)?;
        if n.instance.is_some() || n.suffix != "service" {
            return Ok(n.full);
        }
        match unit::load(self.search(), &n.full) {
            Ok(l) => Ok(l
                .fragment
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
                .filter(|f| f.ends_with(".service") && !f.contains("@."))
                .unwrap_or(n.full)),
            Err(_) => Ok(n.full),
        }
    }

    fn handle(self: &Arc<Self>, name: &str) -> Arc<Handle> {
        let mut units = bhatti_sync::lock(&self.units);
        if let Some(h) = units.get(name) {
            return h.clone();
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let (ntx, nrx) = mpsc::channel(NOTIFY_QUEUE);
        let status = Arc::new(Mutex::new(Status::new(name)));
        let abort_start = Arc::new(tokio::sync::Notify::new());
        let h = Arc::new(Handle {
            tx,
            notify: ntx,
            status: status.clone(),
            abort_start: abort_start.clone(),
        });
        units.insert(name.to_string(), h.clone());
        let actor = Actor {
            mgr: self.clone(),
            name: name.to_string(),
            status,
            rx,
            notify: nrx,
            abort_start,
            svc: None,
            main: None,
            restart_at: None,
            starts: VecDeque::new(),
            backoff: None,
            stopping: false,
            session: None,
        };
        tokio::spawn(actor.run());
        h
    }

    async fn send(
        self: &Arc<Self>,
        name: &str,
        mk: impl FnOnce(oneshot::Sender<Result<(), String>>) -> Cmd,
    ) -> Result<(), String> {
        let h = self.handle(name);
        let (tx, rx) = oneshot::channel();
        h.tx.send(mk(tx))
            .map_err(|_| "the unit's task ended".to_string())?;
        rx.await.map_err(|_| "the unit's task ended".to_string())?
    }

    /// Starts a unit (a target: its wants; an always-active target: nothing).
    pub async fn start(self: &Arc<Self>, name: &str) -> Result<(), String> {
        let n = UnitName::parse(name).map_err(|e| e.to_string())?;
        match n.suffix.as_str() {
            "service" => {}
            "target" => return self.start_target(&n.full).await,
            other => {
                return Err(format!(
                    "unit type {other} is not supported by lohar (only services and targets)"
                ))
            }
        }
        let canon = self.canonical(&n.full).map_err(|e| e.to_string())?;
        let mut seen = std::collections::BTreeSet::new();
        self.start_deps(&canon, &mut seen).await?;
        self.send(&canon, Cmd::Start).await
    }

    /// Starts the services a unit `Requires=` (a failure fails the unit) and
    /// `Wants=` (a failure is logged), depth first; `seen` breaks cycles.
    /// Other unit types (sockets, targets) are not started: sockets are
    /// not supported, and targets are reached.
    async fn start_deps(
        self: &Arc<Self>,
        name: &str,
        seen: &mut std::collections::BTreeSet<String>,
    ) -> Result<(), String> {
        if !seen.insert(name.to_string()) {
            return Ok(());
        }
        let Ok(svc) =
            unit::load(self.search(), name).and_then(|l| Service::from_loaded(&l, "/root"))
        else {
            // The unit's own start reports why it cannot load.
            return Ok(());
        };
        for (dep, required) in svc
            .requires
            .iter()
            .map(|d| (d, true))
            .chain(svc.wants.iter().map(|d| (d, false)))
        {
            if !dep.ends_with(".service") || seen.contains(dep) {
                continue;
            }
            let Ok(canon) = self.canonical(dep) else {
                continue;
            };
            let r = match Box::pin(self.start_deps(&canon, seen)).await {
                Ok(()) => self.send(&canon, Cmd::Start).await,
                Err(e) => Err(e),
            };
            match r {
                Err(e) if required => {
                    return Err(format!("dependency {canon} failed to start: {e}"));
                }
                Err(e) => self.log(name, &format!("Wanted unit {canon} failed to start: {e}")),
                Ok(()) => {}
            }
        }
        Ok(())
    }

    async fn start_target(self: &Arc<Self>, name: &str) -> Result<(), String> {
        if unit::ALWAYS_ACTIVE_TARGETS.contains(&name) {
            return Ok(());
        }
        let mut errors = Vec::new();
        for kind in ["wants", "requires"] {
            let Ok(rd) = std::fs::read_dir(self.search().config_dir.join(format!("{name}.{kind}")))
            else {
                continue;
            };
            for e in rd.flatten() {
                let u = e.file_name().to_string_lossy().into_owned();
                if u.ends_with(".service") {
                    if let Err(err) = Box::pin(self.start(&u)).await {
                        errors.push(format!("{u}: {err}"));
                    }
                }
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors.join("; "))
        }
    }

    /// Stops a unit.
    pub async fn stop(self: &Arc<Self>, name: &str) -> Result<(), String> {
        let canon = self.canonical(name).map_err(|e| e.to_string())?;
        if canon.ends_with(".target") {
            return Ok(());
        }
        self.abort_start(&canon);
        self.send(&canon, Cmd::Stop).await
    }

    /// Cuts short a start in progress (see [`Handle::abort_start`]).
    fn abort_start(&self, canon: &str) {
        if let Some(h) = bhatti_sync::lock(&self.units).get(canon) {
            if bhatti_sync::lock(&h.status).active == Active::Activating {
                h.abort_start.notify_waiters();
            }
        }
    }

    /// Restarts a unit (starts it if stopped).
    pub async fn restart(self: &Arc<Self>, name: &str) -> Result<(), String> {
        let canon = self.canonical(name).map_err(|e| e.to_string())?;
        if canon.ends_with(".target") {
            return self.start(&canon).await;
        }
        // Not cut short: a restart queued during a start (a unit
        // restarting itself from ExecStartPost=) runs after it.
        self.send(&canon, Cmd::Restart).await
    }

    /// Runs `ExecReload=`.
    pub async fn reload(self: &Arc<Self>, name: &str) -> Result<(), String> {
        let canon = self.canonical(name).map_err(|e| e.to_string())?;
        self.send(&canon, Cmd::Reload).await
    }

    /// Signals every process of a unit.
    pub async fn kill(self: &Arc<Self>, name: &str, sig: i32) -> Result<(), String> {
        let canon = self.canonical(name).map_err(|e| e.to_string())?;
        self.send(&canon, |tx| Cmd::Kill(sig, tx)).await
    }

    /// Clears a failed state (and the start limit).
    pub fn reset_failed(self: &Arc<Self>, name: &str) {
        if let Ok(canon) = self.canonical(name) {
            let _ = self.handle(&canon).tx.send(Cmd::ResetFailed);
        }
    }

    /// A unit's status, loading its file for units never started.
    pub fn status(self: &Arc<Self>, name: &str) -> Result<Status, UnitError> {
        let canon = self.canonical(name)?;
        let known = bhatti_sync::lock(&self.units).get(&canon).cloned();
        let mut st = match known {
            Some(h) => bhatti_sync::lock(&h.status).clone(),
            None => Status::new(&canon),
        };
        if st.fragment.is_none() && st.load_error.is_none() {
            match unit::load(self.search(), &canon).and_then(|l| Service::from_loaded(&l, "/root"))
            {
                Ok(s) => {
                    st.description = s.description;
                    st.fragment = Some(s.fragment);
                }
                Err(
                    e @ (UnitError::NotFound(_) | UnitError::Masked(_) | UnitError::BadName(_)),
                ) => return Err(e),
                Err(e) => st.load_error = Some(e.to_string()),
            }
        }
        Ok(st)
    }

    /// Every unit the manager has a task for.
    pub fn known(&self) -> Vec<Status> {
        let units: Vec<Arc<Handle>> = bhatti_sync::lock(&self.units).values().cloned().collect();
        units
            .iter()
            .map(|h| bhatti_sync::lock(&h.status).clone())
            .collect()
    }

    /// Hands an sd_notify message to the unit it belongs to.
    pub fn notify(&self, unit: &str, msg: Notify) {
        if let Some(h) = bhatti_sync::lock(&self.units).get(unit) {
            if h.notify.try_send(msg).is_err() {
                tracing::debug!(unit, "sd_notify queue full: message dropped");
            }
        }
    }

    /// The unit a process belongs to: its cgroup, else a unit whose main
    /// process leads the process's session or group.
    pub fn unit_of_pid(&self, pid: u32) -> Option<String> {
        if let Ok(cg) = std::fs::read_to_string(format!("/proc/{pid}/cgroup")) {
            for line in cg.lines() {
                // `/system.slice/<unit>`, or deeper in a unit that made
                // its own sub-cgroups (Delegate=yes: dockerd, containers).
                if let Some(path) = line.strip_prefix("0::") {
                    if let Some((_, under)) = path.split_once("/system.slice/") {
                        let u = under.split('/').next().unwrap_or(under);
                        if u.ends_with(".service") {
                            return Some(u.to_string());
                        }
                    }
                }
            }
        }
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let rest = stat.rsplit_once(')')?.1;
        let f: Vec<&str> = rest.split_whitespace().collect();
        let pgrp: u32 = f.get(2)?.parse().ok()?;
        let sid: u32 = f.get(3)?.parse().ok()?;
        let units: Vec<(String, Arc<Handle>)> = bhatti_sync::lock(&self.units)
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        units.into_iter().find_map(|(name, h)| {
            let main = bhatti_sync::lock(&h.status).main_pid?;
            (main == pid || main == sid || main == pgrp).then_some(name)
        })
    }

    /// Marks a unit that could not be loaded at boot, so its status says why.
    pub fn record_load_error(self: &Arc<Self>, name: &str, e: &UnitError) {
        let h = self.handle(name);
        let mut st = bhatti_sync::lock(&h.status);
        st.load_error = Some(e.to_string());
        st.active = Active::Failed;
        st.sub = "failed";
        st.result = "resources";
        st.reason = Some(format!("the unit file could not be loaded: {e}"));
        st.since = SystemTime::now();
    }

    /// Attaches an ordering note (a cycle) to a unit's status.
    pub fn record_note(self: &Arc<Self>, name: &str, note: String) {
        let h = self.handle(name);
        bhatti_sync::lock(&h.status).note = Some(note);
    }

    /// Appends a manager line to a unit's log (what `journalctl -u` shows
    /// beside the service's own output).
    pub fn log(&self, unit: &str, msg: &str) {
        let stem = UnitName::parse(unit)
            .map(|n| n.log_stem().to_string())
            .unwrap_or_else(|_| unit.to_string());
        log_line(
            &self.paths.log_dir.join(format!("{stem}.log")),
            "lohar[1]",
            msg,
        );
    }
}

const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// A run shorter than this counts as a quick failure for the backoff.
const QUICK_FAILURE: Duration = Duration::from_secs(10);
const STOP_POLL: Duration = Duration::from_millis(50);
/// After a main process exits, how long the rest of its unit has between
/// the kill signal and SIGKILL (at most; TimeoutStopSec= if shorter). Short,
/// because the unit's task answers no command meanwhile.
const EXIT_GRACE: Duration = Duration::from_secs(3);

struct Actor {
    mgr: Arc<Manager>,
    name: String,
    status: Arc<Mutex<Status>>,
    rx: mpsc::UnboundedReceiver<Cmd>,
    notify: mpsc::Receiver<Notify>,
    abort_start: Arc<tokio::sync::Notify>,
    svc: Option<Service>,
    main: Option<(MainProc, Instant)>,
    restart_at: Option<Instant>,
    starts: VecDeque<Instant>,
    backoff: Option<Duration>,
    stopping: bool,
    /// The session the main process was started in (the helper's pid): a
    /// forked daemon keeps it, so without cgroups it finds the unit's
    /// processes.
    session: Option<u32>,
}

enum Event {
    Cmd(Cmd),
    Exit(Exit),
    Restart,
    Notify(Notify),
    Closed,
}

impl Actor {
    fn set(&self, f: impl FnOnce(&mut Status)) {
        let mut st = bhatti_sync::lock(&self.status);
        let before = st.active;
        f(&mut st);
        if st.active != before {
            st.since = SystemTime::now();
        }
    }

    fn log(&self, msg: &str) {
        self.mgr.log(&self.name, msg);
    }

    fn cgroup(&self) -> Option<PathBuf> {
        self.mgr
            .paths
            .cgroup_root
            .as_ref()
            .map(|r| r.join(&self.name))
    }

    async fn run(mut self) {
        loop {
            let ev = {
                let main = self.main.as_mut();
                let restart_at = self.restart_at;
                tokio::select! {
                    c = self.rx.recv() => c.map_or(Event::Closed, Event::Cmd),
                    n = self.notify.recv() => n.map_or(Event::Closed, Event::Notify),
                    e = async { match main { Some((m, _)) => m.wait().await, None => std::future::pending().await } } => Event::Exit(e),
                    _ = async { match restart_at { Some(t) => tokio::time::sleep_until(t.into()).await, None => std::future::pending().await } } => Event::Restart,
                }
            };
            match ev {
                Event::Closed => return,
                Event::Notify(n) => {
                    self.on_notify(&n);
                }
                Event::Cmd(c) => self.on_cmd(c).await,
                Event::Exit(e) => self.on_exit(e).await,
                Event::Restart => {
                    self.restart_at = None;
                    self.set(|s| s.restarts = s.restarts.saturating_add(1));
                    let n = bhatti_sync::lock(&self.status).restarts;
                    self.log(&format!(
                        "Scheduled restart job, restart counter is at {n}."
                    ));
                    let _ = self.start(true).await;
                }
            }
        }
    }

    /// Whether a message from `pid` counts, by `NotifyAccess=` (main by
    /// default): a stale READY=1 from a previous instance, or one from a
    /// helper process, is not the main process speaking.
    fn notify_allowed(&self, pid: u32) -> bool {
        match self.svc.as_ref().map(|s| s.notify_access) {
            Some(NotifyAccess::None) => false,
            Some(NotifyAccess::All) => true,
            Some(NotifyAccess::Main) | None => {
                bhatti_sync::lock(&self.status).main_pid == Some(pid)
            }
        }
    }

    /// Applies one accepted sd_notify message; says whether it was READY=1.
    fn on_notify(&mut self, n: &Notify) -> bool {
        if !self.notify_allowed(n.pid) {
            tracing::debug!(unit = %self.name, pid = n.pid, "sd_notify refused by NotifyAccess=");
            return false;
        }
        let mut ready = false;
        for (k, v) in &n.fields {
            match k.as_str() {
                "READY" => ready |= v == "1",
                "STATUS" => {
                    let v = v.clone();
                    self.set(|s| s.status_text = Some(v));
                }
                "MAINPID" => match v.parse::<u32>() {
                    // Only a process of this unit: MAINPID=1 would have a
                    // later stop signal PID 1 (lohar) itself.
                    Ok(p)
                        if p > 1
                            && self.mgr.unit_of_pid(p).as_deref() == Some(self.name.as_str()) =>
                    {
                        if let Some((m, _)) = &mut self.main {
                            if matches!(m, MainProc::Pid(_)) {
                                *m = MainProc::Pid(p);
                            }
                        }
                        self.set(|s| s.main_pid = Some(p));
                    }
                    _ => {
                        tracing::warn!(unit = %self.name, "MAINPID={v} refused: not a process of the unit")
                    }
                },
                _ => {}
            }
        }
        ready
    }

    async fn on_cmd(&mut self, c: Cmd) {
        match c {
            Cmd::Start(tx) => {
                let active = matches!(
                    bhatti_sync::lock(&self.status).active,
                    Active::Active | Active::Activating
                );
                let r = if active && self.restart_at.is_none() {
                    Ok(())
                } else {
                    // A manual start is a fresh start: no backoff, no limit
                    // carried over from a crash loop.
                    self.restart_at = None;
                    self.starts.clear();
                    self.backoff = None;
                    self.start(false).await
                };
                let _ = tx.send(r);
            }
            Cmd::Stop(tx) => {
                self.stop().await;
                let _ = tx.send(Ok(()));
            }
            Cmd::Restart(tx) => {
                self.stop().await;
                self.starts.clear();
                self.backoff = None;
                let _ = tx.send(self.start(false).await);
            }
            Cmd::Reload(tx) => {
                let _ = tx.send(self.reload().await);
            }
            Cmd::Kill(sig, tx) => {
                self.signal_all(sig);
                let _ = tx.send(Ok(()));
            }
            Cmd::ResetFailed => {
                self.starts.clear();
                self.backoff = None;
                self.set(|s| {
                    if s.active == Active::Failed {
                        s.active = Active::Inactive;
                        s.sub = "dead";
                    }
                    s.result = "success";
                    s.reason = None;
                });
            }
        }
    }

    fn fail(&mut self, result: &'static str, reason: String) {
        self.log(&format!("Failed with result '{result}': {reason}"));
        let _ = std::fs::write(
            self.mgr.paths.run_dir.join(format!("{}.failed", self.name)),
            format!("{result}: {reason}\n"),
        );
        self.set(|s| {
            s.active = Active::Failed;
            s.sub = "failed";
            s.result = result;
            s.reason = Some(reason);
            s.main_pid = None;
        });
    }

    /// Loads the unit and starts it; `auto` is a restart after an exit.
    async fn start(&mut self, auto: bool) -> Result<(), String> {
        let home = "/root";
        let svc = match unit::load(self.mgr.search(), &self.name)
            .and_then(|l| Service::from_loaded(&l, home))
        {
            Ok(s) => s,
            Err(e) => {
                let msg = e.to_string();
                self.set(|s| s.load_error = Some(msg.clone()));
                self.fail(
                    "resources",
                    format!("the unit file could not be loaded: {msg}"),
                );
                return Err(msg);
            }
        };
        self.set(|s| {
            s.load_error = None;
            s.fragment = Some(svc.fragment.clone());
            s.description = svc.description.clone();
            s.cgroup = None;
        });
        // The start limit: too many starts in the interval and the unit is
        // failed until someone starts it by hand (never a tight loop).
        let now = Instant::now();
        if !svc.start_limit_interval.is_zero() && svc.start_limit_burst > 0 {
            while self
                .starts
                .front()
                .is_some_and(|t| now.duration_since(*t) > svc.start_limit_interval)
            {
                self.starts.pop_front();
            }
            if auto
                && self.starts.len() >= usize::try_from(svc.start_limit_burst).unwrap_or(usize::MAX)
            {
                let reason = format!(
                    "Start request repeated too quickly: {} starts within {:?} (StartLimitBurst={}, StartLimitIntervalSec={:?}); `systemctl start` or `reset-failed` clears it",
                    self.starts.len(),
                    svc.start_limit_interval,
                    svc.start_limit_burst,
                    svc.start_limit_interval
                );
                self.svc = Some(svc);
                self.fail("start-limit-hit", reason.clone());
                return Err(reason);
            }
        }
        self.starts.push_back(now);
        self.stopping = false;
        self.set(|s| {
            s.active = Active::Activating;
            s.sub = "start";
            s.reason = None;
            s.result = "success";
            s.status_text = None;
        });
        let _ = std::fs::write(
            self.mgr
                .paths
                .run_dir
                .join(format!("{}.activating", self.name)),
            "",
        );
        // NotifyAccess= and the rest apply while starting, not just after.
        self.svc = Some(svc.clone());
        let abort = self.abort_start.clone();
        let r = tokio::select! {
            r = self.start_inner(&svc) => r,
            () = abort.notified() => Err(("canceled", "a stop arrived while the unit was starting".to_string())),
        };
        let _ = std::fs::remove_file(
            self.mgr
                .paths
                .run_dir
                .join(format!("{}.activating", self.name)),
        );
        self.svc = Some(svc);
        match r {
            Ok(()) => {
                let _ = std::fs::remove_file(
                    self.mgr.paths.run_dir.join(format!("{}.failed", self.name)),
                );
                Ok(())
            }
            Err(("canceled", reason)) => {
                // Not a failure: the stop queued behind this start finishes
                // the job (ExecStopPost=, the cgroup).
                self.kill_leftovers(libc::SIGKILL).await;
                self.main = None;
                self.log(&format!("Start of {} canceled: {reason}.", self.name));
                self.set(|s| {
                    s.active = Active::Inactive;
                    s.sub = "dead";
                    s.main_pid = None;
                });
                Err(format!("canceled: {reason}"))
            }
            Err((result, reason)) => {
                self.kill_leftovers(libc::SIGKILL).await;
                self.main = None;
                self.fail(result, reason.clone());
                self.schedule_restart_after_failure(result);
                Err(reason)
            }
        }
    }

    fn schedule_restart_after_failure(&mut self, result: &'static str) {
        let Some(svc) = &self.svc else { return };
        let restart = match svc.restart {
            RestartPolicy::Always | RestartPolicy::OnFailure => true,
            RestartPolicy::OnAbnormal | RestartPolicy::OnAbort => {
                result == "timeout" || result == "signal"
            }
            RestartPolicy::No | RestartPolicy::OnSuccess => false,
        };
        if restart && result != "start-limit-hit" && result != "resources" {
            self.schedule_restart();
        }
    }

    fn schedule_restart(&mut self) {
        let Some(svc) = &self.svc else { return };
        let base = svc.restart_sec.max(Duration::from_millis(100));
        let delay = match self.backoff {
            Some(prev) => prev.saturating_mul(2).min(MAX_BACKOFF.max(base)),
            None => base,
        };
        self.backoff = Some(delay);
        self.restart_at = Some(
            Instant::now()
                .checked_add(delay)
                .unwrap_or_else(Instant::now),
        );
        self.set(|s| {
            s.active = Active::Activating;
            s.sub = "auto-restart";
        });
    }

    async fn start_inner(&mut self, svc: &Service) -> Result<(), (&'static str, String)> {
        for (kind, neg, path) in &svc.conditions {
            if condition(kind, path) == *neg {
                let msg = format!("{kind}={}{path} was not met", if *neg { "!" } else { "" });
                self.log(&format!(
                    "Condition check resulted in {} being skipped: {msg}.",
                    self.name
                ));
                self.set(|s| {
                    s.active = Active::Inactive;
                    s.sub = "dead";
                    s.reason = Some(format!("start condition failed: {msg}"));
                });
                return Ok(());
            }
        }
        let ids = match &svc.user {
            Some(u) => match super::spawn::lookup_user(u) {
                Ok(user) => Some(user),
                Err(e) => return Err(("resources", format!("User={u}: {e}"))),
            },
            None => None,
        };
        for (base, names) in &svc.directories {
            for n in names {
                let d = self.mgr.paths.dir(base).join(n);
                if let Err(e) = std::fs::create_dir_all(&d) {
                    return Err(("resources", format!("create {}: {e}", d.display())));
                }
                if *base == "/run" {
                    use std::os::unix::fs::PermissionsExt;
                    let _ = std::fs::set_permissions(
                        &d,
                        std::fs::Permissions::from_mode(svc.runtime_directory_mode),
                    );
                }
                if let Some(u) = &ids {
                    let _ = nix::unistd::chown(&d, Some(u.uid), Some(u.gid));
                }
            }
        }
        if let Some(cg) = self.cgroup() {
            let _ = std::fs::create_dir_all(&cg);
            for (file, v) in &svc.cgroup_limits {
                if let Err(e) = std::fs::write(cg.join(file), v) {
                    tracing::warn!(unit = %self.name, "cgroup {file}={v}: {e}");
                }
            }
            self.set(|s| s.cgroup = Some(cg.clone()));
        }
        let env = self
            .environment(svc, ids.as_ref())
            .map_err(|e| ("resources", e))?;
        for line in &svc.start_pre {
            self.run_control(svc, line, &env, "ExecStartPre").await?;
        }
        let timeout = svc.timeout_start;
        let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
        match svc.kind {
            ServiceType::Oneshot => {
                for line in &svc.start {
                    self.run_control(svc, line, &env, "ExecStart").await?;
                }
                for line in &svc.start_post {
                    self.run_control(svc, line, &env, "ExecStartPost").await?;
                }
                let remain = svc.remain_after_exit;
                self.set(|s| {
                    s.active = if remain {
                        Active::Active
                    } else {
                        Active::Inactive
                    };
                    s.sub = if remain { "exited" } else { "dead" };
                    s.main_pid = None;
                });
                self.log(&format!("Finished {} - {}.", self.name, svc.description));
                return Ok(());
            }
            ServiceType::Simple | ServiceType::Exec => {
                let child = self
                    .spawn(svc, &svc.start[0], &env, true)
                    .map_err(|e| ("resources", e))?;
                let pid = child.id();
                self.session = pid;
                self.main = Some((MainProc::Child(child), Instant::now()));
                self.set(|s| s.main_pid = pid);
            }
            ServiceType::Notify => {
                let mut env = env.clone();
                env.insert(
                    "NOTIFY_SOCKET".into(),
                    self.mgr.paths.notify_socket.display().to_string(),
                );
                let mut child = self
                    .spawn(svc, &svc.start[0], &env, true)
                    .map_err(|e| ("resources", e))?;
                let pid = child.id();
                self.session = pid;
                self.set(|s| s.main_pid = pid);
                // Wait for READY=1, the process's exit, or the timeout.
                loop {
                    let sleep = async {
                        match deadline {
                            Some(d) => tokio::time::sleep_until(d.into()).await,
                            None => std::future::pending().await,
                        }
                    };
                    tokio::select! {
                        n = self.notify.recv() => {
                            let Some(n) = n else { break };
                            if self.on_notify(&n) {
                                break;
                            }
                        }
                        st = child.wait() => {
                            crate::guest::reaper::untrack(pid);
                            let e = st.map(Exit::from_status).unwrap_or(Exit { code: None, signal: None });
                            self.set(|s| s.last_exit = Some((e.code, e.signal)));
                            return Err((if e.signal.is_some() { "signal" } else { "exit-code" }, format!("the main process exited before it reported READY=1 ({})", e.describe())));
                        }
                        _ = sleep => {
                            let _ = child.start_kill();
                            return Err(("timeout", format!("no READY=1 within TimeoutStartSec={:?}", timeout.unwrap_or_default())));
                        }
                    }
                }
                self.main = Some((MainProc::Child(child), Instant::now()));
            }
            ServiceType::Forking => {
                let mut child = self
                    .spawn(svc, &svc.start[0], &env, true)
                    .map_err(|e| ("resources", e))?;
                let pid = child.id();
                self.session = pid;
                let Some(e) = wait_bounded(&mut child, deadline).await else {
                    return Err((
                        "timeout",
                        format!(
                            "the start process did not exit within TimeoutStartSec={:?}",
                            timeout.unwrap_or_default()
                        ),
                    ));
                };
                if !e.clean(svc) {
                    self.set(|s| s.last_exit = Some((e.code, e.signal)));
                    return Err((
                        "exit-code",
                        format!("the start process failed ({})", e.describe()),
                    ));
                }
                let main = self.find_forked_main(svc, deadline).await;
                match main {
                    Some(p) => {
                        self.main = Some((MainProc::Pid(p), Instant::now()));
                        self.set(|s| s.main_pid = Some(p));
                    }
                    None => {
                        return Err(("protocol", match &svc.pid_file {
                            Some(f) => format!("PIDFile={} did not name a running process", f.display()),
                            None => "the daemon forked, but no process was left to watch (set PIDFile=)".into(),
                        }));
                    }
                }
            }
        }
        for line in &svc.start_post {
            self.run_control(svc, line, &env, "ExecStartPost").await?;
        }
        let pid = bhatti_sync::lock(&self.status).main_pid;
        if let Some(p) = pid {
            let _ = std::fs::write(
                self.mgr.paths.run_dir.join(format!("{}.pid", self.name)),
                format!("{p}\n"),
            );
        }
        self.set(|s| {
            s.active = Active::Active;
            s.sub = "running";
        });
        self.log(&format!("Started {} - {}.", self.name, svc.description));
        Ok(())
    }

    /// A forked daemon's pid: the PIDFile, else the one process left in
    /// the unit's cgroup.
    async fn find_forked_main(&self, svc: &Service, deadline: Option<Instant>) -> Option<u32> {
        let give_up = Instant::now().checked_add(Duration::from_secs(5));
        loop {
            if let Some(f) = &svc.pid_file {
                if let Some(p) = read_pid_file(f) {
                    // A pid the daemon wrote, but it must be one of the
                    // unit's processes: a stop signals it.
                    let ours = match self.cgroup() {
                        Some(cg) => cgroup_procs(&cg).contains(&p),
                        None => true,
                    };
                    if ours && pid_alive(p) {
                        return Some(p);
                    }
                }
            } else if let Some(cg) = self.cgroup() {
                let procs = cgroup_procs(&cg);
                if let Some(p) = procs.into_iter().min() {
                    return Some(p);
                }
            } else {
                return None;
            }
            let now = Instant::now();
            if deadline.is_some_and(|d| now >= d) || give_up.is_some_and(|g| now >= g) {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn environment(
        &self,
        svc: &Service,
        user: Option<&nix::unistd::User>,
    ) -> Result<BTreeMap<String, String>, String> {
        let mut env = BTreeMap::new();
        env.insert(
            "PATH".to_string(),
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_string(),
        );
        env.insert("LANG".to_string(), "C.UTF-8".to_string());
        env.insert("INVOCATION_ID".to_string(), invocation_id());
        match user {
            Some(u) => {
                env.insert("USER".into(), u.name.clone());
                env.insert("LOGNAME".into(), u.name.clone());
                env.insert("HOME".into(), u.dir.display().to_string());
                env.insert("SHELL".into(), u.shell.display().to_string());
            }
            None => {
                env.insert("HOME".into(), "/root".into());
            }
        }
        for (k, v) in &svc.environment {
            env.insert(k.clone(), v.clone());
        }
        for (f, optional) in &svc.environment_files {
            match std::fs::read_to_string(f) {
                Ok(text) => {
                    for (k, v) in parse_env_file(&text) {
                        env.insert(k, v);
                    }
                }
                Err(_) if *optional => {}
                Err(e) => return Err(format!("EnvironmentFile={}: {e}", f.display())),
            }
        }
        Ok(env)
    }

    fn spawn(
        &self,
        svc: &Service,
        line: &ExecLine,
        env: &BTreeMap<String, String>,
        main: bool,
    ) -> Result<tokio::process::Child, String> {
        use std::os::unix::process::CommandExt;
        let argv = if line.no_env_expand {
            line.argv.clone()
        } else {
            expand_env(&line.argv, env)
        };
        if argv.is_empty() {
            return Err("the command line expanded to nothing".into());
        }
        let paths = &self.mgr.paths;
        let stem = UnitName::parse(&self.name)
            .map(|n| n.log_stem().to_string())
            .unwrap_or_else(|_| self.name.clone());
        let log = paths.log_dir.join(format!("{stem}.log"));
        let out = super::open_log(&log).map_err(|e| format!("open {}: {e}", log.display()))?;
        let err = out.try_clone().map_err(|e| format!("dup log: {e}"))?;
        let mut cmd = std::process::Command::new(&paths.helper);
        cmd.arg0("lohar").arg("spawn");
        if let Some(cg) = self.cgroup() {
            cmd.arg("--cgroup").arg(cg);
        }
        if !line.privileged {
            if let Some(u) = &svc.user {
                cmd.arg("--user").arg(u);
            }
            if let Some(g) = &svc.group {
                cmd.arg("--group").arg(g);
            }
        }
        if let Some(a0) = &line.argv0 {
            cmd.arg("--argv0").arg(a0);
        }
        for (res, lim) in &svc.rlimits {
            cmd.arg("--rlimit").arg(format!("{res}={lim}"));
        }
        if let Some(m) = svc.umask {
            cmd.arg("--umask").arg(format!("{m:o}"));
        }
        cmd.arg("--").args(&argv);
        cmd.env_clear().envs(env);
        if main {
            if let Some(p) = bhatti_sync::lock(&self.status).main_pid {
                cmd.env("MAINPID", p.to_string());
            }
        }
        let wd = match &svc.working_directory {
            Some((d, optional)) => {
                let d = if d == "~" {
                    env.get("HOME").cloned().unwrap_or_else(|| "/".into())
                } else {
                    d.clone()
                };
                if Path::new(&d).is_dir() {
                    PathBuf::from(d)
                } else if *optional {
                    PathBuf::from("/")
                } else {
                    return Err(format!("WorkingDirectory={d} does not exist"));
                }
            }
            None => PathBuf::from("/"),
        };
        cmd.current_dir(wd)
            .stdin(std::process::Stdio::null())
            .stdout(out)
            .stderr(err);
        let mut cmd = tokio::process::Command::from(cmd);
        cmd.kill_on_drop(false);
        crate::guest::reaper::spawn_tracked(|| cmd.spawn())
            .map_err(|e| format!("spawn {}: {e}", argv[0]))
    }

    /// Runs a control command (ExecStartPre, ExecStop …) to completion.
    async fn run_control(
        &mut self,
        svc: &Service,
        line: &ExecLine,
        env: &BTreeMap<String, String>,
        what: &str,
    ) -> Result<(), (&'static str, String)> {
        let mut child = self
            .spawn(svc, line, env, true)
            .map_err(|e| ("resources", format!("{what}: {e}")))?;
        // Stop commands run under the stop timeout, the rest under start's.
        let limit = if what.starts_with("ExecStop") {
            svc.timeout_stop
        } else {
            svc.timeout_start
        };
        let deadline = limit.and_then(|t| Instant::now().checked_add(t));
        let Some(e) = wait_bounded(&mut child, deadline).await else {
            return Err((
                "timeout",
                format!(
                    "{what} did not finish within {:?}",
                    limit.unwrap_or_default()
                ),
            ));
        };
        if e.clean(svc) || line.ignore_failure {
            return Ok(());
        }
        self.set(|s| s.last_exit = Some((e.code, e.signal)));
        Err((
            if e.signal.is_some() {
                "signal"
            } else {
                "exit-code"
            },
            format!("{what}={} failed ({})", line.argv.join(" "), e.describe()),
        ))
    }

    async fn reload(&mut self) -> Result<(), String> {
        let Some(svc) = self.svc.clone() else {
            return Err(format!("{} is not active, cannot reload", self.name));
        };
        if bhatti_sync::lock(&self.status).active != Active::Active {
            return Err(format!("{} is not active, cannot reload", self.name));
        }
        if svc.reload.is_empty() {
            return Err(format!(
                "{} does not support reload (no ExecReload=)",
                self.name
            ));
        }
        let env = self.environment(&svc, None)?;
        for line in &svc.reload {
            self.run_control(&svc, line, &env, "ExecReload")
                .await
                .map_err(|(_, e)| e)?;
        }
        self.log(&format!("Reloaded {} - {}.", self.name, svc.description));
        Ok(())
    }

    /// Every process of the unit: its cgroup, else the main process's
    /// session.
    fn pids(&self) -> Vec<u32> {
        if let Some(cg) = self.cgroup() {
            if cg.is_dir() {
                return cgroup_procs(&cg);
            }
        }
        let mut pids: Vec<u32> = self.session.map(session_members).unwrap_or_default();
        if let Some(p) = self.main.as_ref().and_then(|(m, _)| m.pid()) {
            if !pids.contains(&p) {
                pids.push(p);
            }
        }
        pids
    }

    fn signal_all(&self, sig: i32) {
        let Ok(sig) = nix::sys::signal::Signal::try_from(sig) else {
            return;
        };
        for p in self.pids() {
            if let Ok(p) = i32::try_from(p) {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(p), sig);
            }
        }
    }

    async fn kill_leftovers(&self, sig: i32) {
        if let Some(cg) = self.cgroup() {
            if sig == libc::SIGKILL && std::fs::write(cg.join("cgroup.kill"), "1").is_ok() {
                return;
            }
        }
        self.signal_all(sig);
    }

    /// Stops the unit: ExecStop, the kill signal, SIGKILL after the
    /// timeout, ExecStopPost.
    async fn stop(&mut self) {
        let restart_pending = self.restart_at.take().is_some();
        let Some(svc) = self.svc.clone() else {
            self.set(|s| {
                if s.active != Active::Failed {
                    s.active = Active::Inactive;
                    s.sub = "dead";
                }
            });
            return;
        };
        let state = bhatti_sync::lock(&self.status).active;
        if self.main.is_none()
            && (restart_pending || matches!(state, Active::Inactive | Active::Failed))
        {
            // Nothing runs. A pending automatic restart is cancelled; its
            // exit already ran ExecStopPost=, which must not run twice.
            if restart_pending && state != Active::Failed {
                self.set(|s| {
                    s.active = Active::Inactive;
                    s.sub = "dead";
                });
            }
            return;
        }
        self.stopping = true;
        self.set(|s| {
            s.active = Active::Deactivating;
            s.sub = "stop";
        });
        let env = self.environment(&svc, None).unwrap_or_default();
        if bhatti_sync::lock(&self.status).main_pid.is_some() || svc.kind == ServiceType::Oneshot {
            for line in &svc.stop {
                let _ = self.run_control(&svc, line, &env, "ExecStop").await;
            }
        }
        let main_pid = self.main.as_ref().and_then(|(m, _)| m.pid());
        match svc.kill_mode {
            KillMode::None => {}
            KillMode::Process | KillMode::Mixed => {
                if let (Some(p), Ok(sig)) = (
                    main_pid.and_then(|p| i32::try_from(p).ok()),
                    nix::sys::signal::Signal::try_from(svc.kill_signal),
                ) {
                    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(p), sig);
                }
            }
            KillMode::ControlGroup => self.signal_all(svc.kill_signal),
        }
        let deadline = svc.timeout_stop.and_then(|t| Instant::now().checked_add(t));
        if let Some((m, _)) = self.main.as_mut() {
            let waited = match deadline {
                Some(d) => tokio::time::timeout_at(d.into(), m.wait()).await.ok(),
                None => Some(m.wait().await),
            };
            if waited.is_none() {
                self.log(&format!(
                    "{}: State 'stop-sigterm' timed out. Killing.",
                    self.name
                ));
                if let Some(p) = main_pid.and_then(|p| i32::try_from(p).ok()) {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(p),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
                self.kill_leftovers(libc::SIGKILL).await;
                if let Some((m, _)) = self.main.as_mut() {
                    let _ = tokio::time::timeout(Duration::from_secs(5), m.wait()).await;
                }
            }
        }
        self.main = None;
        if svc.kill_mode != KillMode::Process && svc.kill_mode != KillMode::None {
            // What is left of the unit goes too, and the cgroup with it.
            self.kill_leftovers(libc::SIGKILL).await;
            if let Some(cg) = self.cgroup() {
                for _ in 0..100 {
                    if cgroup_procs(&cg).is_empty() {
                        break;
                    }
                    tokio::time::sleep(STOP_POLL).await;
                }
                let _ = std::fs::remove_dir(&cg);
            }
        }
        for line in &svc.stop_post {
            let _ = self.run_control(&svc, line, &env, "ExecStopPost").await;
        }
        self.cleanup_dirs(&svc);
        let _ = std::fs::remove_file(self.mgr.paths.run_dir.join(format!("{}.pid", self.name)));
        self.set(|s| {
            s.active = Active::Inactive;
            s.sub = "dead";
            s.main_pid = None;
            s.result = "success";
            s.reason = None;
        });
        self.stopping = false;
        self.log(&format!("Stopped {} - {}.", self.name, svc.description));
    }

    fn cleanup_dirs(&self, svc: &Service) {
        if svc.runtime_directory_preserve {
            return;
        }
        for (base, names) in &svc.directories {
            if *base == "/run" {
                for n in names {
                    let _ = std::fs::remove_dir_all(self.mgr.paths.dir(base).join(n));
                }
            }
        }
    }

    /// The main process ended on its own.
    async fn on_exit(&mut self, e: Exit) {
        let Some((_, started)) = self.main.take() else {
            return;
        };
        let Some(svc) = self.svc.clone() else { return };
        let ran = started.elapsed();
        self.set(|s| {
            s.last_exit = Some((e.code, e.signal));
            s.main_pid = None;
        });
        self.log(&format!(
            "{}: Main process exited, {}",
            self.name,
            e.describe()
        ));
        let clean = e.clean(&svc);
        // What is left of the unit goes with its main process.
        if svc.kill_mode == KillMode::ControlGroup || svc.kill_mode == KillMode::Mixed {
            // The kill signal first, and a moment to act on it (a worker
            // flushing its state), then SIGKILL for what is left.
            self.signal_all(svc.kill_signal);
            let grace = svc.timeout_stop.unwrap_or(EXIT_GRACE).min(EXIT_GRACE);
            let until = Instant::now()
                .checked_add(grace)
                .unwrap_or_else(Instant::now);
            while !self.pids().is_empty() && Instant::now() < until {
                tokio::time::sleep(STOP_POLL).await;
            }
            self.kill_leftovers(libc::SIGKILL).await;
        }
        let env = self.environment(&svc, None).unwrap_or_default();
        for line in &svc.stop_post {
            let _ = self.run_control(&svc, line, &env, "ExecStopPost").await;
        }
        let result: &'static str = if clean {
            "success"
        } else if e.signal.is_some() {
            "signal"
        } else {
            "exit-code"
        };
        let restart = match svc.restart {
            RestartPolicy::No => false,
            RestartPolicy::Always => true,
            RestartPolicy::OnSuccess => clean,
            RestartPolicy::OnFailure => !clean,
            RestartPolicy::OnAbnormal => e.signal.is_some() && !clean,
            RestartPolicy::OnAbort => e.signal.is_some() && !clean,
        };
        if clean {
            self.set(|s| {
                s.active = Active::Inactive;
                s.sub = "dead";
                s.result = "success";
            });
            let _ = std::fs::remove_file(self.mgr.paths.run_dir.join(format!("{}.pid", self.name)));
        } else {
            self.fail(
                result,
                format!("the main process exited ({})", e.describe()),
            );
        }
        self.cleanup_dirs(&svc);
        if restart {
            if ran >= QUICK_FAILURE {
                self.backoff = None;
            }
            self.schedule_restart();
        }
    }
}

/// Waits for a start or control process until `deadline`, then kills it;
/// `None` when it ran out of time.
async fn wait_bounded(
    child: &mut tokio::process::Child,
    deadline: Option<Instant>,
) -> Option<Exit> {
    let pid = child.id();
    let waited = match deadline {
        Some(d) => tokio::time::timeout_at(d.into(), child.wait()).await,
        None => Ok(child.wait().await),
    };
    crate::guest::reaper::untrack(pid);
    match waited {
        Ok(st) => Some(st.map(Exit::from_status).unwrap_or(Exit::UNKNOWN)),
        Err(_) => {
            let _ = child.start_kill();
            None
        }
    }
}

fn condition(kind: &str, path: &str) -> bool {
    let p = Path::new(path);
    match kind {
        "ConditionPathExists" | "AssertPathExists" => p.exists(),
        "ConditionPathIsDirectory" => p.is_dir(),
        "ConditionDirectoryNotEmpty" => std::fs::read_dir(p).is_ok_and(|mut d| d.next().is_some()),
        "ConditionFileNotEmpty" => std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.len() > 0),
        "ConditionFileIsExecutable" => {
            use std::os::unix::fs::PermissionsExt;
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        }
        _ => true,
    }
}

/// Reads a `PIDFile=` as PID 1 should read a file a service controls:
/// no symlink followed, no FIFO blocked on, a regular file of a few bytes,
/// and never pid 0 or 1.
fn read_pid_file(path: &Path) -> Option<u32> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .ok()?;
    if !f.metadata().ok()?.is_file() {
        return None;
    }
    let mut buf = Vec::with_capacity(32);
    f.take(32).read_to_end(&mut buf).ok()?;
    let p: u32 = std::str::from_utf8(&buf).ok()?.trim().parse().ok()?;
    (p > 1).then_some(p)
}

/// The pids in a cgroup.
pub(crate) fn cgroup_procs(cg: &Path) -> Vec<u32> {
    std::fs::read_to_string(cg.join("cgroup.procs"))
        .map(|s| s.lines().filter_map(|l| l.trim().parse().ok()).collect())
        .unwrap_or_default()
}

/// Processes whose session is led by `leader` (the unit's processes when
/// there are no cgroups: the helper starts each in its own session).
fn session_members(leader: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in rd.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let sid = rest
            .split_whitespace()
            .nth(3)
            .and_then(|s| s.parse::<u32>().ok());
        if sid == Some(leader) {
            out.push(pid);
        }
    }
    out
}

/// `KEY=VALUE` lines; comments, blank lines and quotes as systemd reads them.
pub fn parse_env_file(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|l| {
            let l = l.trim();
            if l.is_empty() || l.starts_with('#') || l.starts_with(';') {
                return None;
            }
            let l = l.strip_prefix("export ").unwrap_or(l);
            let (k, v) = l.split_once('=')?;
            let k = k.trim();
            if k.is_empty() || !k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return None;
            }
            let v = v.trim();
            let v = v
                .strip_prefix('"')
                .and_then(|x| x.strip_suffix('"'))
                .or_else(|| v.strip_prefix('\'').and_then(|x| x.strip_suffix('\'')))
                .unwrap_or(v);
            Some((k.to_string(), v.to_string()))
        })
        .collect()
}

/// `$VAR` as a whole word splits into words; `${VAR}` is substituted in
/// place.
pub fn expand_env(argv: &[String], env: &BTreeMap<String, String>) -> Vec<String> {
    let mut out = Vec::with_capacity(argv.len());
    for (i, w) in argv.iter().enumerate() {
        if i > 0 {
            if let Some(name) = w.strip_prefix('$') {
                if !name.starts_with('{')
                    && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                    && !name.is_empty()
                {
                    if let Some(v) = env.get(name) {
                        out.extend(v.split_whitespace().map(str::to_string));
                    }
                    continue;
                }
            }
        }
        let mut s = String::with_capacity(w.len());
        let mut rest = w.as_str();
        while let Some(pos) = rest.find("${") {
            s.push_str(&rest[..pos]);
            let after = &rest[pos.saturating_add(2)..];
            match after.find('}') {
                Some(end) => {
                    if let Some(v) = env.get(&after[..end]) {
                        s.push_str(v);
                    }
                    rest = &after[end.saturating_add(1)..];
                }
                None => {
                    s.push_str(&rest[pos..]);
                    rest = "";
                }
            }
        }
        s.push_str(rest);
        out.push(s);
    }
    out
}

fn invocation_id() -> String {
    let mut b = [0u8; 16];
    if getrandom(&mut b).is_err() {
        return "0".repeat(32);
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn getrandom(buf: &mut [u8]) -> std::io::Result<()> {
    use std::io::Read;
    std::fs::File::open("/dev/urandom")?.read_exact(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_files_and_expansion() {
        let env: BTreeMap<String, String> =
            parse_env_file("# c\nA=1\nB=\"x y\"\nexport C='z'\nbad line\n")
                .into_iter()
                .collect();
        assert_eq!(env["A"], "1");
        assert_eq!(env["B"], "x y");
        assert_eq!(env["C"], "z");
        let argv: Vec<String> = ["/bin/d", "$B", "--a=${A}", "$MISSING", "${B}"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(
            expand_env(&argv, &env),
            ["/bin/d", "x", "y", "--a=1", "x y"]
        );
    }
}
