//! The systemd substitute end to end in lohar's test mode: a real lohar
//! manages real processes from unit files in a temporary root, driven by
//! the real `systemctl` and `journalctl` command lines (symlinks to lohar,
//! as in a guest). No root, cgroups or VM needed: without cgroups a unit's
//! processes are its session.
#![allow(clippy::unwrap_used, clippy::arithmetic_side_effects)]
// a test panics to report its failure

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{eventually, Lohar, Opts};

struct Sys {
    root: tempfile::TempDir,
    bin: PathBuf,
    lohar: Option<Lohar>,
}

impl Sys {
    /// A root with `units` (name, text) in `lib/systemd/system`, the names
    /// in `enabled` linked into `multi-user.target.wants`, then lohar.
    fn boot(units: &[(&str, &str)], enabled: &[&str]) -> Sys {
        Sys::boot_with(units, enabled, &[])
    }

    /// Like [`Sys::boot`], with extra files (relative path, content).
    fn boot_with(units: &[(&str, &str)], enabled: &[&str], files: &[(&str, &str)]) -> Sys {
        let root = tempfile::tempdir().unwrap();
        for (rel, text) in files {
            let p = root.path().join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        }
        let lib = root.path().join("lib/systemd/system");
        std::fs::create_dir_all(&lib).unwrap();
        let wants = root
            .path()
            .join("etc/systemd/system/multi-user.target.wants");
        std::fs::create_dir_all(&wants).unwrap();
        for (n, text) in units {
            let text = text.replace("@ROOT@", &root.path().display().to_string());
            std::fs::write(lib.join(n), text).unwrap();
        }
        for n in enabled {
            std::os::unix::fs::symlink(lib.join(n), wants.join(n)).unwrap();
        }
        let bin = root.path().join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        for name in ["systemctl", "journalctl"] {
            std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_lohar"), bin.join(name)).unwrap();
        }
        let lohar = Lohar::start_with(Opts {
            systemd_root: Some(root.path().to_path_buf()),
            ..Opts::default()
        });
        let mut sys = Sys {
            root,
            bin,
            lohar: Some(lohar),
        };
        // The socket comes up before the agent says ready.
        let sock = sys.path("run/bhatti/systemctl.sock");
        for _ in 0..500 {
            if sock.exists() {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(sock.exists(), "systemctl socket");
        sys.lohar.as_mut().unwrap();
        sys
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.root.path().join(rel)
    }

    fn run(&self, tool: &str, args: &[&str]) -> (i32, String, String) {
        let out = Command::new(self.bin.join(tool))
            .args(args)
            .env("LOHAR_SYSTEMD_ROOT", self.root.path())
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn ctl(&self, args: &[&str]) -> (i32, String, String) {
        self.run("systemctl", args)
    }

    fn show(&self, unit: &str, prop: &str) -> String {
        self.ctl(&["show", "-p", prop, "--value", unit])
            .1
            .trim()
            .to_string()
    }

    async fn wait_state(&self, unit: &str, want: &str, within: Duration) -> bool {
        eventually(within, || self.show(unit, "ActiveState") == want).await
    }
}

impl Drop for Sys {
    fn drop(&mut self) {
        // lohar first, then whatever its services left (each service runs
        // in its own session, so kill sessions of processes started from
        // this root).
        drop(self.lohar.take());
        kill_sessions_mentioning(self.root.path());
    }
}

fn kill_sessions_mentioning(root: &Path) {
    let needle = root.display().to_string();
    let mut sids = Vec::new();
    let mut all = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some(sid) = stat
            .rsplit_once(')')
            .and_then(|(_, r)| r.split_whitespace().nth(3))
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmd).contains(&needle) {
            sids.push(sid);
        }
        all.push((pid, sid));
    }
    for (pid, sid) in all {
        if sids.contains(&sid) && sid > 1 {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

const LONG: Duration = Duration::from_secs(20);

/// Enabled units start at boot in After= order, with the unit's
/// environment, directory and pre/post commands; stop, start, restart on
/// failure, status and journalctl work as people type them.
#[tokio::test]
async fn services_start_at_boot_in_order_and_are_managed() {
    let units = [
        (
            "db.service",
            "[Unit]\nDescription=The database\n[Service]\nType=oneshot\nRemainAfterExit=yes\n\
             ExecStart=/bin/sh -c 'sleep 0.3; touch @ROOT@/db-ready'\n[Install]\nWantedBy=multi-user.target\n",
        ),
        (
            "web.service",
            "[Unit]\nDescription=The web server\nAfter=db.service network.target\n\
             [Service]\nEnvironment=GREETING=hello \"SPACED=a b\"\nEnvironmentFile=@ROOT@/etc/default/web\n\
             EnvironmentFile=-@ROOT@/etc/default/missing\nWorkingDirectory=@ROOT@/srv\n\
             ExecStartPre=/bin/sh -c 'echo pre > @ROOT@/pre'\n\
             ExecStart=/bin/sh -c 'test -f @ROOT@/db-ready && echo ordered > @ROOT@/web-saw; echo \"web up $GREETING $SPACED $FROMFILE $(pwd)\"; sleep 1000' @ROOT@\n\
             ExecStartPost=/bin/sh -c 'echo post > @ROOT@/post'\nRestart=on-failure\nRestartSec=200ms\n\
             [Install]\nWantedBy=multi-user.target\n",
        ),
    ];
    let sys = Sys::boot_with(
        &units,
        &["db.service", "web.service"],
        &[
            ("etc/default/web", "FROMFILE=\"from file\"\n"),
            ("srv/.keep", ""),
        ],
    );
    assert!(
        sys.wait_state("web", "active", LONG).await,
        "{:?}",
        sys.ctl(&["status", "web"])
    );
    assert_eq!(
        std::fs::read_to_string(sys.path("web-saw")).unwrap().trim(),
        "ordered",
        "web started after db"
    );
    assert_eq!(
        std::fs::read_to_string(sys.path("pre")).unwrap().trim(),
        "pre"
    );
    assert!(eventually(LONG, || sys.path("post").exists()).await);
    assert_eq!(sys.ctl(&["is-active", "db"]).0, 0);
    assert_eq!(
        sys.ctl(&["is-enabled", "web"]),
        (0, "enabled\n".into(), String::new())
    );

    let (code, out, _) = sys.ctl(&["status", "web.service"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("● web.service - The web server"), "{out}");
    assert!(out.contains("Active: active (running)"), "{out}");
    assert!(out.contains("Main PID: "), "{out}");
    assert!(
        eventually(LONG, || sys
            .run("journalctl", &["-u", "web", "--no-pager"])
            .1
            .contains(&format!(
                "web up hello a b from file {}",
                sys.path("srv").display()
            )))
        .await,
        "{:?}",
        sys.run("journalctl", &["-u", "web"])
    );
    let (_, log, _) = sys.run("journalctl", &["-u", "web.service", "-n", "50"]);
    assert!(
        log.contains("Started web.service - The web server."),
        "{log}"
    );

    // A crash under Restart=on-failure: back with a new main process.
    let pid: i32 = sys.show("web", "MainPID").parse().unwrap();
    assert!(pid > 0);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    assert!(
        eventually(LONG, || {
            let now: i32 = sys.show("web", "MainPID").parse().unwrap_or(0);
            now > 0 && now != pid && sys.show("web", "ActiveState") == "active"
        })
        .await,
        "{:?}",
        sys.ctl(&["status", "web"])
    );
    assert_eq!(sys.show("web", "NRestarts"), "1");
    let (_, log, _) = sys.run("journalctl", &["-u", "web"]);
    assert!(
        log.contains("Main process exited, code=killed, signal=KILL"),
        "{log}"
    );
    assert!(log.contains("restart counter is at 1"), "{log}");

    // stop really stops (the whole session), and start brings it back.
    let pid: i32 = sys.show("web", "MainPID").parse().unwrap();
    let (code, _, err) = sys.ctl(&["stop", "web"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        sys.ctl(&["is-active", "web"]),
        (3, "inactive\n".into(), String::new())
    );
    assert!(
        eventually(LONG, || !common::alive(pid)).await,
        "main process gone"
    );
    assert_eq!(sys.ctl(&["start", "web"]).0, 0);
    assert_eq!(sys.ctl(&["is-active", "web"]).1, "active\n");
    let (code, _, _) = sys.ctl(&["restart", "web"]);
    assert_eq!(code, 0);
    assert!(sys.wait_state("web", "active", LONG).await);

    // Unknown units and verbs get systemctl's words and codes.
    let (code, _, err) = sys.ctl(&["start", "nope"]);
    assert_eq!(code, 5);
    assert!(err.contains("Unit nope.service not found."), "{err}");
    let (code, _, err) = sys.ctl(&["frobnicate", "web"]);
    assert_eq!(code, 1);
    assert!(err.contains("Unknown command verb"), "{err}");
    let (code, _, err) = sys.ctl(&["reload", "web"]);
    assert_eq!(code, 1);
    assert!(err.contains("does not support reload"), "{err}");
    sys.ctl(&["stop", "web", "db"]);
}

/// Bad units each say why in `systemctl status`, and the good one still
/// starts: a syntax error, no ExecStart, an ordering cycle, and a unit
/// that exits at once under Restart=always (stopped by the start limit
/// with backoff, never a tight loop).
#[tokio::test]
async fn bad_units_say_why_and_the_rest_still_start() {
    let units = [
        ("good.service", "[Service]\nExecStart=/bin/sh -c 'sleep 1000' @ROOT@\n"),
        ("syntax.service", "[Service]\nExecStart=/bin/true\nthis is not a setting\n"),
        ("noexec.service", "[Unit]\nDescription=No command\n[Service]\nUser=root\n"),
        ("cyc-a.service", "[Unit]\nAfter=cyc-b.service\n[Service]\nExecStart=/bin/sh -c 'sleep 1000' @ROOT@\n"),
        ("cyc-b.service", "[Unit]\nAfter=cyc-a.service\n[Service]\nExecStart=/bin/sh -c 'sleep 1000' @ROOT@\n"),
        ("crashy.service", "[Service]\nExecStart=/bin/sh -c 'echo crash >> @ROOT@/crashes; exit 3'\nRestart=always\nRestartSec=100ms\n"),
    ];
    let names: Vec<&str> = units.iter().map(|(n, _)| *n).collect();
    let sys = Sys::boot(&units, &names);
    assert!(
        sys.wait_state("good", "active", LONG).await,
        "{:?}",
        sys.ctl(&["status", "good"])
    );

    let (code, out, _) = sys.ctl(&["status", "syntax"]);
    assert_eq!(code, 3, "{out}");
    assert!(
        out.contains("syntax.service:3: expected KEY=VALUE, got \"this is not a setting\""),
        "{out}"
    );
    let (_, out, _) = sys.ctl(&["status", "noexec"]);
    assert!(out.contains("no ExecStart= setting"), "{out}");
    assert_eq!(sys.ctl(&["is-failed", "noexec"]).0, 0);

    // The cycle: both named in the warning, both started best-effort.
    for u in ["cyc-a", "cyc-b"] {
        assert!(sys.wait_state(u, "active", LONG).await);
        let (_, out, _) = sys.ctl(&["status", u]);
        assert!(out.contains("ordering cycle"), "{out}");
        assert!(
            out.contains("cyc-a.service") && out.contains("cyc-b.service"),
            "{out}"
        );
    }

    // The crash loop ends in start-limit-hit after a bounded number of
    // starts.
    assert!(
        sys.wait_state("crashy", "failed", LONG).await,
        "{:?}",
        sys.ctl(&["status", "crashy"])
    );
    assert!(eventually(LONG, || sys.show("crashy", "Result") == "start-limit-hit").await);
    let (_, out, _) = sys.ctl(&["status", "crashy"]);
    assert!(out.contains("Start request repeated too quickly"), "{out}");
    let crashes = std::fs::read_to_string(sys.path("crashes"))
        .unwrap()
        .lines()
        .count();
    assert_eq!(crashes, 5, "StartLimitBurst=5 starts, then no more");
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        std::fs::read_to_string(sys.path("crashes"))
            .unwrap()
            .lines()
            .count(),
        5,
        "no tight loop after the limit"
    );
    assert_eq!(sys.ctl(&["is-system-running"]).1, "degraded\n");
    sys.ctl(&["stop", "good", "cyc-a", "cyc-b"]);
}

/// Type=notify waits for READY=1 (attributed by the sender's session),
/// Type=forking follows the PIDFile, oneshots run to completion, and
/// templates, aliases, enable/disable/mask work through the CLI.
#[tokio::test]
async fn service_types_templates_and_install_verbs() {
    let python = ["/usr/bin/python3", "/usr/local/bin/python3"]
        .into_iter()
        .find(|p| Path::new(p).exists());
    let notify = match python {
        Some(py) => format!(
            "[Service]\nType=notify\nExecStart={py} -c \"import os,socket,time; time.sleep(0.5); s=socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); s.connect(os.environ['NOTIFY_SOCKET']); s.send(b'STATUS=warming up\\\\nREADY=1'); time.sleep(1000)\" @ROOT@\n"
        ),
        None => "[Service]\nType=simple\nExecStart=/bin/sh -c 'sleep 1000' @ROOT@\n".into(),
    };
    let units = [
        ("n.service", notify.as_str()),
        ("f.service", "[Service]\nType=forking\nPIDFile=@ROOT@/f.pid\nExecStart=/bin/sh -c 'sleep 1000 & echo $! > @ROOT@/f.pid' @ROOT@\n"),
        ("o.service", "[Service]\nType=oneshot\nExecStart=/bin/sh -c 'echo one >> @ROOT@/o'\nExecStart=/bin/sh -c 'echo two >> @ROOT@/o'\n"),
        ("t@.service", "[Service]\nType=oneshot\nRemainAfterExit=yes\nExecStart=/bin/sh -c 'echo %i > @ROOT@/t-%i'\n"),
        ("i.service", "[Service]\nExecStart=/bin/sh -c 'sleep 1000' @ROOT@\n[Install]\nWantedBy=multi-user.target\nAlias=alias-i.service\n"),
        ("needs.service", "[Unit]\nRequires=dep.service\nWants=absent.service\nAfter=dep.service\n[Service]\nType=oneshot\nRemainAfterExit=yes\nExecStart=/bin/true\n"),
        ("dep.service", "[Service]\nType=oneshot\nRemainAfterExit=yes\nExecStart=/bin/true\n"),
        ("broken-dep.service", "[Unit]\nRequires=noexec.service\n[Service]\nType=oneshot\nExecStart=/bin/true\n"),
        ("noexec.service", "[Service]\nUser=root\n"),
        ("lim.service", "[Service]\nType=oneshot\nLimitNOFILE=123:456\nUMask=027\nExecStart=/bin/sh -c 'echo $(ulimit -n) $(ulimit -Hn) $(umask) > @ROOT@/lim'\n"),
    ];
    let sys = Sys::boot(&units, &[]);

    if python.is_some() {
        let (code, _, err) = sys.ctl(&["start", "n"]);
        assert_eq!(code, 0, "{err}");
        assert_eq!(
            sys.show("n", "ActiveState"),
            "active",
            "active only after READY=1"
        );
        assert_eq!(sys.show("n", "StatusText"), "warming up");
    }

    let (code, _, err) = sys.ctl(&["start", "f"]);
    assert_eq!(code, 0, "{err}");
    let pid: u32 = std::fs::read_to_string(sys.path("f.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(sys.show("f", "MainPID"), pid.to_string());
    sys.ctl(&["stop", "f"]);
    assert!(
        eventually(LONG, || !common::alive(i32::try_from(pid).unwrap())).await,
        "forked daemon stopped"
    );

    assert_eq!(sys.ctl(&["start", "o"]).0, 0);
    assert_eq!(
        std::fs::read_to_string(sys.path("o")).unwrap(),
        "one\ntwo\n"
    );
    assert_eq!(sys.show("o", "ActiveState"), "inactive");

    assert_eq!(sys.ctl(&["start", "t@x1"]).0, 0);
    assert_eq!(
        std::fs::read_to_string(sys.path("t-x1")).unwrap().trim(),
        "x1"
    );
    assert_eq!(sys.show("t@x1.service", "ActiveState"), "active");

    // enable links it and its alias; the alias names the same unit.
    let (code, _, err) = sys.ctl(&["enable", "--now", "i"]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("Created symlink"), "{err}");
    assert!(sys
        .path("etc/systemd/system/multi-user.target.wants/i.service")
        .exists());
    assert_eq!(sys.ctl(&["is-active", "alias-i"]).1, "active\n");
    assert_eq!(sys.ctl(&["is-enabled", "alias-i"]).1, "alias\n");
    let (code, _, _) = sys.ctl(&["disable", "--now", "i"]);
    assert_eq!(code, 0);
    assert_eq!(
        sys.ctl(&["is-enabled", "i"]),
        (1, "disabled\n".into(), String::new())
    );
    assert_eq!(sys.ctl(&["is-active", "i"]).0, 3);
    assert_eq!(sys.ctl(&["mask", "i"]).0, 0);
    let (code, _, err) = sys.ctl(&["start", "i"]);
    assert_eq!(code, 1);
    assert!(err.contains("is masked"), "{err}");
    assert_eq!(sys.ctl(&["unmask", "i"]).0, 0);
    assert_eq!(sys.ctl(&["start", "i"]).0, 0);
    // Limit*= and UMask= reach the process.
    assert_eq!(sys.ctl(&["start", "lim"]).0, 0);
    assert_eq!(
        std::fs::read_to_string(sys.path("lim")).unwrap().trim(),
        "123 456 0027"
    );
    // Requires= and Wants= start first; a failed requirement fails the unit.
    assert_eq!(sys.ctl(&["start", "needs"]).0, 0);
    assert_eq!(sys.show("dep", "ActiveState"), "active");
    let (code, _, err) = sys.ctl(&["start", "broken-dep"]);
    assert_eq!(code, 1);
    assert!(err.contains("dependency noexec.service failed"), "{err}");
    let (_, listing, _) = sys.ctl(&["list-units"]);
    assert!(
        listing.contains("i.service") && listing.contains("running"),
        "{listing}"
    );
    sys.ctl(&["stop", "i", "n", "t@x1"]);
}

/// Runs `systemctl` and gives it `within` to answer: a hang is a failure
/// the test reports, not a test that never ends.
fn ctl_within(sys: &Sys, args: &[&str], within: Duration) -> Option<i32> {
    let mut child = Command::new(sys.bin.join("systemctl"))
        .args(args)
        .env("LOHAR_SYSTEMD_ROOT", sys.root.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let until = std::time::Instant::now() + within;
    while std::time::Instant::now() < until {
        if let Some(st) = child.try_wait().unwrap() {
            return Some(st.code().unwrap_or(-1));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

#[tokio::test]
async fn what_services_and_package_scripts_send_is_checked() {
    let Some(py) = ["/usr/bin/python3", "/usr/local/bin/python3"]
        .into_iter()
        .find(|p| Path::new(p).exists())
    else {
        panic!("python3 is part of the test host (scripts/setup-host.sh)");
    };
    // The main process's child says READY=1 first (NotifyAccess=main
    // refuses it); a second later the main process says READY=1 and names
    // PID 1 as its main pid (refused: a stop would signal lohar).
    let forger = "import os, socket, time\n\
def send(m):\n    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)\n    s.connect(os.environ['NOTIFY_SOCKET'])\n    s.send(m)\n\
if os.fork() == 0:\n    send(b'READY=1\\nSTATUS=from-child')\n    os._exit(0)\n\
time.sleep(1)\n\
send(b'MAINPID=1\\nSTATUS=main-ready\\nREADY=1')\n\
time.sleep(1000)\n";
    let forger_unit = format!("[Service]\nType=notify\nExecStart={py} @ROOT@/forger.py\n");
    let units = [
        ("forger.service", forger_unit.as_str()),
        // Never READY, and no start timeout (docker's TimeoutStartSec=0).
        ("hang.service", "[Service]\nType=notify\nTimeoutStartSec=0\nExecStart=/bin/sh -c 'sleep 1000' @ROOT@\n"),
        // Restarts itself once from its own ExecStartPost=: only with
        // --no-block can that not wait on itself.
        ("selfr.service", "[Service]\nType=oneshot\nRemainAfterExit=yes\nEnvironment=LOHAR_SYSTEMD_ROOT=@ROOT@\nExecStart=/bin/sh -c 'echo run >> @ROOT@/runs'\nExecStartPost=/bin/sh -c 'test -e @ROOT@/once || { touch @ROOT@/once; @ROOT@/bin/systemctl --no-block restart selfr; }'\n"),
        ("rel.service", "[Service]\nExecStart=/bin/sh -c 'sleep 1000' @ROOT@\nExecReload=/bin/true\n"),
        ("masked.service", "[Service]\nExecStart=/bin/true\n"),
        ("crashy.service", "[Service]\nExecStart=/bin/sh -c 'exit 3' @ROOT@\nRestart=always\nRestartSec=30\nExecStopPost=/bin/sh -c 'echo post >> @ROOT@/posts'\n"),
    ];
    let sys = Sys::boot_with(&units, &[], &[("forger.py", forger)]);

    assert_eq!(ctl_within(&sys, &["start", "forger"], LONG), Some(0));
    assert_eq!(
        sys.show("forger", "StatusText"),
        "main-ready",
        "start waited for the main process's READY=1, not its child's"
    );
    let main = sys.show("forger", "MainPID");
    assert!(main != "1" && main != "0", "MAINPID=1 refused: {main}");

    // A start that would never finish does not hold up its stop.
    assert_eq!(
        ctl_within(&sys, &["--no-block", "start", "hang"], LONG),
        Some(0)
    );
    assert!(sys.wait_state("hang", "activating", LONG).await);
    assert_eq!(
        ctl_within(&sys, &["stop", "hang"], LONG),
        Some(0),
        "stop answered during the start"
    );
    assert_eq!(sys.show("hang", "ActiveState"), "inactive");

    assert_eq!(
        ctl_within(&sys, &["start", "selfr"], LONG),
        Some(0),
        "no deadlock on itself"
    );
    assert!(
        eventually(LONG, || std::fs::read_to_string(sys.path("runs"))
            .is_ok_and(|r| r == "run\nrun\n"))
        .await,
        "the queued restart ran once"
    );

    // A stop while an automatic restart is pending cancels it; the exit
    // already ran ExecStopPost= once, and the stop does not again.
    assert_eq!(sys.ctl(&["start", "crashy"]).0, 0);
    assert!(
        eventually(LONG, || sys.show("crashy", "SubState") == "auto-restart").await,
        "crashed and waiting to restart"
    );
    assert_eq!(ctl_within(&sys, &["stop", "crashy"], LONG), Some(0));
    assert_eq!(sys.show("crashy", "ActiveState"), "inactive");
    assert_eq!(
        std::fs::read_to_string(sys.path("posts")).unwrap(),
        "post\n"
    );

    // What invoke-rc.d and deb-systemd-invoke ask.
    assert_eq!(
        sys.ctl(&["show", "-p", "LoadState,CanReload", "rel"]).1,
        "LoadState=loaded\nCanReload=yes\n"
    );
    assert_eq!(
        sys.ctl(&["show", "-p", "LoadState", "--", "nope.service"]),
        (0, "LoadState=not-found\n".into(), String::new())
    );
    assert_eq!(sys.ctl(&["mask", "masked"]).0, 0);
    assert_eq!(
        sys.ctl(&["show", "-p", "LoadState,CanReload", "masked"]).1,
        "LoadState=masked\nCanReload=no\n"
    );
    assert_eq!(sys.ctl(&["is-enabled", "--", "rel.service"]).1, "static\n");
    assert_eq!(sys.ctl(&["--quiet", "is-active", "multi-user.target"]).0, 0);
    // force-reload of a stopped unit does nothing (try-reload-or-restart).
    assert_eq!(sys.ctl(&["force-reload", "rel"]).0, 0);
    assert_eq!(sys.show("rel", "ActiveState"), "inactive");
    // cat runs in the client, as the caller.
    let (code, out, _) = sys.ctl(&["cat", "rel"]);
    assert_eq!(code, 0);
    assert!(out.contains("ExecReload=/bin/true"), "{out}");
    sys.ctl(&["stop", "forger", "selfr"]);
}
