//! `bhatti exec <sandbox> [--] cmd…`: run a command and exit with its exit
//! code, the way `docker exec` does.
//!
//! Output is streamed as it is produced (also when piped: a pipeline
//! reading it sees lines as they come); `--json` gives one buffered
//! result; `--detach` starts it in the background and prints the PID and
//! the output file. `-e`, `-w` and `-u` set the environment, working
//! directory and user of this command; `-i` sends this process's stdin.
//!
//! Exit codes, as Docker's: the command's own; 126 when it cannot be run
//! (not executable), 127 when there is no such program; 125 for bhatti's
//! own failures (no such sandbox, daemon unreachable, bad flags).

use std::collections::BTreeMap;
use std::io::Read;

use anyhow::{bail, Context};
use bhatti_api as api;
use bhatti_api::ErrorCode;
use bhatti_client::ClientError;
use clap::Args;

use super::Ctx;
use crate::output::{eprint_bytes, print_bytes, print_json};

#[derive(Debug, Args)]
pub struct ExecArgs {
    /// Sandbox name or ID.
    pub sandbox: String,
    /// Start in the background; print the PID and output file (read it
    /// with `bhatti logs SANDBOX FILE`).
    #[arg(short, long)]
    pub detach: bool,
    #[command(flatten)]
    pub flags: CommandFlags,
    /// The command and its arguments. A single argument containing shell
    /// syntax or spaces runs through `sh -c`.
    #[arg(
        required = true,
        num_args = 1..,
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "CMD"
    )]
    pub cmd: Vec<String>,
}

/// How a command runs, for `exec` and `run` alike.
#[derive(Debug, Args)]
pub struct CommandFlags {
    /// Set a variable for this command (repeatable; the value may hold
    /// commas and `=`).
    #[arg(short = 'e', long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Working directory inside the sandbox.
    #[arg(short = 'w', long = "workdir", value_name = "DIR")]
    pub workdir: Option<String>,
    /// Run as this guest user (name, uid, or uid:gid).
    #[arg(short = 'u', long = "user", value_name = "USER")]
    pub user: Option<String>,
    /// Send this process's stdin to the command (read to its end first).
    #[arg(short = 'i', long = "interactive")]
    pub interactive: bool,
    /// Timeout in seconds (server default 300).
    #[arg(long, value_name = "SECONDS")]
    pub timeout: Option<i64>,
}

impl CommandFlags {
    /// The exec request for `cmd` with these flags (reads stdin for `-i`).
    pub fn request(self, cmd: Vec<String>) -> anyhow::Result<api::ExecRequest> {
        Ok(api::ExecRequest {
            cmd: command_argv(cmd),
            timeout_sec: self.timeout,
            detach: false,
            output_file: None,
            env: env_flags(&self.env)?,
            cwd: self.workdir,
            user: self.user,
            stdin: read_stdin(self.interactive)?,
        })
    }
}

/// The argv to send: a lone argument that needs a shell (`"ls | wc -l"`)
/// becomes `sh -c <arg>`; anything else is passed as given.
pub fn command_argv(cmd: Vec<String>) -> Vec<String> {
    const SHELLY: &[char] = &[
        ' ', '\t', '\n', '|', '&', ';', '<', '>', '(', ')', '$', '`', '*', '?', '"', '\'', '~',
    ];
    match cmd.as_slice() {
        [one] if one.contains(SHELLY) => vec!["sh".into(), "-c".into(), one.clone()],
        _ => cmd,
    }
}

/// A remote exit code as a process exit status: 0–255 pass through;
/// anything else (e.g. -1 for killed or timed out) becomes 255, so a
/// failure can never look like success.
pub fn exit_status(code: i32) -> i32 {
    if (0..=255).contains(&code) {
        code
    } else {
        255
    }
}

/// Exit status for bhatti's own failures (Docker's 125).
pub const OWN_FAILURE: i32 = 125;
/// The program exists but cannot be run (Docker's and the shell's 126).
pub const CANNOT_RUN: i32 = 126;
/// No such program (Docker's and the shell's 127).
pub const NOT_FOUND: i32 = 127;

/// `-e KEY=VALUE` flags as a map: split at the first `=` only, never at
/// commas; a bare `KEY` takes this process's value, as Docker does.
pub fn env_flags(flags: &[String]) -> anyhow::Result<BTreeMap<String, String>> {
    let mut env = BTreeMap::new();
    for f in flags {
        let (k, v) = match f.split_once('=') {
            Some((k, v)) => (k.to_string(), v.to_string()),
            None => (f.clone(), std::env::var(f).unwrap_or_default()),
        };
        if k.is_empty() {
            bail!("-e {f:?}: expected KEY=VALUE");
        }
        env.insert(k, v);
    }
    Ok(env)
}

/// This process's stdin, read to its end (`-i`).
pub fn read_stdin(interactive: bool) -> anyhow::Result<Option<String>> {
    if !interactive {
        return Ok(None);
    }
    let mut buf = Vec::new();
    std::io::stdin()
        .read_to_end(&mut buf)
        .context("read stdin")?;
    Ok(Some(
        String::from_utf8(buf).context("stdin must be UTF-8 text")?,
    ))
}

pub async fn run(ctx: &Ctx, a: ExecArgs) -> anyhow::Result<i32> {
    let req = api::ExecRequest {
        detach: a.detach,
        ..a.flags.request(a.cmd)?
    };
    run_request(ctx, &a.sandbox, &req).await
}

/// Runs `req` in `sandbox` as `exec` does: output to this process's,
/// the command's exit code back (126/127 when it cannot run).
pub async fn run_request(ctx: &Ctx, sandbox: &str, req: &api::ExecRequest) -> anyhow::Result<i32> {
    let client = ctx.client()?;
    match exec(ctx, client, sandbox, req).await {
        Ok(code) => Ok(code),
        Err(e) => cannot_start(client, sandbox, e).await,
    }
}

/// A command the sandbox refused to start: 127 or 126 as a shell would
/// say, when the sandbox is there (a 404 may be the sandbox's own);
/// anything else is bhatti's failure.
async fn cannot_start(
    client: &bhatti_client::Client,
    sandbox: &str,
    e: anyhow::Error,
) -> anyhow::Result<i32> {
    let api = e.downcast_ref::<ClientError>().and_then(ClientError::api);
    // A user the guest lacks is bhatti's refusal (125), not a missing
    // program.
    if api.and_then(|a| a.reason) == Some(bhatti_api::ErrorReason::NoSuchUser) {
        return Err(e);
    }
    let status = match api.and_then(|a| a.code) {
        Some(ErrorCode::NotFound) if client.get_sandbox(sandbox).await.is_ok() => NOT_FOUND,
        Some(ErrorCode::Forbidden) => CANNOT_RUN,
        _ => return Err(e),
    };
    eprintln!("bhatti: {e:#}");
    Ok(status)
}

async fn exec(
    ctx: &Ctx,
    client: &bhatti_client::Client,
    sandbox: &str,
    req: &api::ExecRequest,
) -> anyhow::Result<i32> {
    if req.detach {
        let d = client.exec_detached(sandbox, req).await?;
        if ctx.json {
            print_json(&d)?;
        } else {
            outln!("pid {}", d.pid);
            outln!("output: {}", d.output_file);
            outln!("follow it: bhatti logs -f {sandbox} {}", d.output_file);
        }
        return Ok(0);
    }

    if ctx.json {
        let r = client.exec(sandbox, req).await?;
        print_json(&r)?;
        return Ok(exit_status(r.exit_code));
    }

    let mut stream = client.exec_stream(sandbox, req).await?;
    while let Some(ev) = stream.next().await {
        match ev? {
            api::ExecEvent::Stdout { data } => print_bytes(data.as_bytes()),
            api::ExecEvent::Stderr { data } => eprint_bytes(data.as_bytes()),
            api::ExecEvent::Exit { exit_code } => return Ok(exit_status(exit_code)),
            // The sandbox is there (the stream began): a program that
            // cannot be found or run is the shell's 127 or 126.
            api::ExecEvent::Error { data, code, reason } => {
                if reason == Some(bhatti_api::ErrorReason::NoSuchUser) {
                    bail!("{data}");
                }
                let status = match code {
                    Some(ErrorCode::NotFound) => NOT_FOUND,
                    Some(ErrorCode::Forbidden) => CANNOT_RUN,
                    _ => bail!("{data}"),
                };
                eprintln!("bhatti: {data}");
                return Ok(status);
            }
        }
    }
    bail!("the output stream ended without an exit status (connection lost?)")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &[&str]) -> Vec<String> {
        s.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn argv_rules() {
        assert_eq!(command_argv(v(&["ls", "-la"])), v(&["ls", "-la"]));
        assert_eq!(command_argv(v(&["uname"])), v(&["uname"]));
        assert_eq!(
            command_argv(v(&["ls | wc -l"])),
            v(&["sh", "-c", "ls | wc -l"])
        );
        assert_eq!(
            command_argv(v(&["echo $HOME"])),
            v(&["sh", "-c", "echo $HOME"])
        );
        // Several arguments are never re-interpreted.
        assert_eq!(command_argv(v(&["echo", "a b"])), v(&["echo", "a b"]));
    }

    #[test]
    fn exit_codes_and_modes() {
        assert_eq!(exit_status(0), 0);
        assert_eq!(exit_status(42), 42);
        assert_eq!(exit_status(-1), 255);
        assert_eq!(exit_status(256), 255);
    }

    #[test]
    fn env_flags_split_at_the_first_equals_only() {
        let e = env_flags(&v(&["A=1,2,3", "B=x=y", "C="])).unwrap_or_default();
        assert_eq!(e.get("A").map(String::as_str), Some("1,2,3"));
        assert_eq!(e.get("B").map(String::as_str), Some("x=y"));
        assert_eq!(e.get("C").map(String::as_str), Some(""));
        assert!(env_flags(&v(&["=x"])).is_err());
    }
}
