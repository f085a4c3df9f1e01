//! A small typed runner for `ip` and `iptables`: builds the argument list,
//! optionally enters a network namespace in the child, feeds stdin, and turns
//! a failure into a [`NetError`] that carries the command line and stderr.

use std::fmt;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

use tracing::debug;

use super::netns::enter_netns_on_spawn_path;
use super::NetError;

/// The programs we run. Resolved through `PATH`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Program {
    Ip,
    Iptables,
    IptablesRestore,
    /// The legacy (x_tables) backend, for sandbox namespaces only
    /// (`firewall::Backend`).
    IptablesLegacy,
    IptablesLegacyRestore,
}

impl Program {
    fn name(self) -> &'static str {
        match self {
            Program::Ip => "ip",
            Program::Iptables => "iptables",
            Program::IptablesRestore => "iptables-restore",
            Program::IptablesLegacy => "iptables-legacy",
            Program::IptablesLegacyRestore => "iptables-legacy-restore",
        }
    }
}

/// One command invocation.
#[derive(Debug, Clone)]
pub(crate) struct Cmd {
    program: Program,
    args: Vec<String>,
    stdin: Option<String>,
    netns: Option<PathBuf>,
}

impl Cmd {
    pub(crate) fn new(program: Program) -> Self {
        let mut cmd = Cmd {
            program,
            args: Vec::new(),
            stdin: None,
            netns: None,
        };
        // Wait for the xtables lock instead of failing when another process
        // (or another of our threads) is changing rules at the same moment.
        if program != Program::Ip {
            cmd.args.push("-w".to_string());
        }
        cmd
    }

    pub(crate) fn ip() -> Self {
        Cmd::new(Program::Ip)
    }

    pub(crate) fn iptables() -> Self {
        Cmd::new(Program::Iptables)
    }

    pub(crate) fn arg(mut self, a: impl Into<String>) -> Self {
        self.args.push(a.into());
        self
    }

    pub(crate) fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    pub(crate) fn stdin(mut self, input: impl Into<String>) -> Self {
        self.stdin = Some(input.into());
        self
    }

    /// Run the command inside the namespace whose file is `path`.
    pub(crate) fn in_netns(mut self, path: PathBuf) -> Self {
        self.netns = Some(path);
        self
    }

    fn output(&self) -> Result<Output, NetError> {
        debug!(cmd = %self, "net command");
        let spawn_err = |source| NetError::Spawn {
            cmd: self.to_string(),
            source,
        };
        let mut command = Command::new(self.program.name());
        command
            .args(&self.args)
            .stdin(if self.stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .env("LC_ALL", "C");
        if let Some(path) = &self.netns {
            enter_netns_on_spawn_path(&mut command, path)?;
        }
        let mut child = command.spawn().map_err(spawn_err)?;
        if let Some(input) = &self.stdin {
            if let Some(mut pipe) = child.stdin.take() {
                // Inputs are a few KiB at most, well under a pipe buffer, so
                // writing before reading the output cannot deadlock. A write
                // error (child exited early) shows up in its exit status.
                let _ = pipe.write_all(input.as_bytes());
            }
        }
        child.wait_with_output().map_err(spawn_err)
    }

    /// Runs the command; a non-zero exit is an error. Returns stdout.
    pub(crate) fn run(&self) -> Result<String, NetError> {
        let out = self.output()?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(NetError::Command {
                cmd: self.to_string(),
                status: out.status.to_string(),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            })
        }
    }

    /// Like [`Cmd::run`] but a non-zero exit is `Ok(None)` (e.g. listing a
    /// chain that may not exist).
    pub(crate) fn run_if_ok(&self) -> Result<Option<String>, NetError> {
        let out = self.output()?;
        Ok(out
            .status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned()))
    }

    /// Runs a check command (`iptables -C`, `ip link show`): `Ok(true)` on
    /// exit 0, `Ok(false)` on any other exit. Only failing to run is an error.
    pub(crate) fn succeeds(&self) -> Result<bool, NetError> {
        Ok(self.output()?.status.success())
    }
}

impl fmt::Display for Cmd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(ns) = &self.netns {
            write!(f, "[netns {}] ", ns.display())?;
        }
        f.write_str(self.program.name())?;
        for a in &self.args {
            write!(f, " {a}")?;
        }
        if self.stdin.is_some() {
            f.write_str(" <stdin>")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_and_errors() {
        let c = Cmd::iptables().args(["-S", "FOO"]);
        assert_eq!(c.to_string(), "iptables -w -S FOO");
        // `ip` with a bogus object fails with stderr captured (no root needed).
        match Cmd::ip().arg("nosuchobject").run() {
            Err(NetError::Command { cmd, stderr, .. }) => {
                assert_eq!(cmd, "ip nosuchobject");
                assert!(!stderr.is_empty());
            }
            // No iproute2 on this machine: that is a spawn error, also fine.
            Err(NetError::Spawn { .. }) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
}
