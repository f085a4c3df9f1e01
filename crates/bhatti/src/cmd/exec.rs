//! `bhatti exec <sandbox> [--] cmd…`: run a command and exit with its exit
//! code.
//!
//! Three modes, as in the reference: streamed NDJSON (output appears as it
//! is produced) when stdout is a terminal or `BHATTI_FORCE_STREAM=1`;
//! buffered (one request, output printed at the end) otherwise and under
//! `--json`; and `--detach` (start in the background, print the PID and
//! the output file).

use std::io::{IsTerminal, Write};

use anyhow::bail;
use bhatti_api as api;
use clap::Args;

use super::Ctx;
use crate::output::print_json;

#[derive(Debug, Args)]
pub struct ExecArgs {
    /// Sandbox name or ID.
    pub sandbox: String,
    /// Timeout in seconds (server default 300).
    #[arg(long, value_name = "SECONDS")]
    pub timeout: Option<i64>,
    /// Start in the background; print the PID and output file.
    #[arg(long)]
    pub detach: bool,
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

/// Whether to stream: a terminal on stdout or `BHATTI_FORCE_STREAM=1`, and
/// neither `--json` nor `--detach`.
pub fn should_stream(stdout_tty: bool, force: Option<&str>, json: bool, detach: bool) -> bool {
    !json && !detach && (stdout_tty || matches!(force, Some("1" | "true")))
}

pub async fn run(ctx: &Ctx, a: ExecArgs) -> anyhow::Result<i32> {
    let req = api::ExecRequest {
        cmd: command_argv(a.cmd),
        timeout_sec: a.timeout,
        detach: a.detach,
        output_file: None,
    };
    let client = ctx.client()?;

    if a.detach {
        let d = client.exec_detached(&a.sandbox, &req).await?;
        if ctx.json {
            print_json(&d)?;
        } else {
            outln!("pid {}", d.pid);
            outln!("output: {}", d.output_file);
        }
        return Ok(0);
    }

    let force = std::env::var("BHATTI_FORCE_STREAM").ok();
    if !should_stream(
        std::io::stdout().is_terminal(),
        force.as_deref(),
        ctx.json,
        false,
    ) {
        let r = client.exec(&a.sandbox, &req).await?;
        if ctx.json {
            print_json(&r)?;
        } else {
            let mut out = std::io::stdout().lock();
            let _ = out.write_all(r.stdout.as_bytes());
            let _ = out.flush();
            let mut err = std::io::stderr().lock();
            let _ = err.write_all(r.stderr.as_bytes());
            let _ = err.flush();
        }
        return Ok(exit_status(r.exit_code));
    }

    let mut stream = client.exec_stream(&a.sandbox, &req).await?;
    while let Some(ev) = stream.next().await {
        match ev? {
            api::ExecEvent::Stdout { data } => {
                let mut out = std::io::stdout().lock();
                let _ = out.write_all(data.as_bytes());
                let _ = out.flush();
            }
            api::ExecEvent::Stderr { data } => {
                let mut err = std::io::stderr().lock();
                let _ = err.write_all(data.as_bytes());
                let _ = err.flush();
            }
            api::ExecEvent::Exit { exit_code } => return Ok(exit_status(exit_code)),
            api::ExecEvent::Error { data } => bail!("{data}"),
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
        assert!(should_stream(true, None, false, false));
        assert!(should_stream(false, Some("1"), false, false));
        assert!(!should_stream(false, None, false, false));
        assert!(!should_stream(true, None, true, false));
        assert!(!should_stream(true, Some("1"), false, true));
    }
}
