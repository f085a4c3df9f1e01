//! `bhatti run [--rm] IMAGE -- CMD…`: `docker run`'s habit, a sandbox made
//! for one command. It is created from IMAGE, the command runs as `exec`
//! runs it (output streamed, its exit code returned), and with `--rm` the
//! sandbox is destroyed afterwards, whatever the command's outcome.

use bhatti_api as api;
use clap::Args;

use super::exec::{command_argv, env_flags, read_stdin, run_request};
use super::Ctx;

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Destroy the sandbox when the command ends.
    #[arg(long)]
    pub rm: bool,
    /// Name the sandbox (default: a generated name).
    #[arg(long)]
    pub name: Option<String>,
    /// Set a variable for the sandbox (repeatable; commas kept).
    #[arg(short = 'e', long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Working directory of the command.
    #[arg(short = 'w', long = "workdir", value_name = "DIR")]
    pub workdir: Option<String>,
    /// Run the command as this guest user.
    #[arg(short = 'u', long = "user", value_name = "USER")]
    pub user: Option<String>,
    /// Send this process's stdin to the command.
    #[arg(short = 'i', long = "interactive")]
    pub interactive: bool,
    /// Memory in MB (default: the server's).
    #[arg(long)]
    pub memory: Option<u64>,
    /// Command timeout in seconds (server default 300).
    #[arg(long, value_name = "SECONDS")]
    pub timeout: Option<i64>,
    /// The image to create the sandbox from (`bhatti image list`).
    pub image: String,
    /// The command and its arguments.
    #[arg(
        required = true,
        num_args = 1..,
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "CMD"
    )]
    pub cmd: Vec<String>,
}

pub async fn run(ctx: &Ctx, a: RunArgs) -> anyhow::Result<i32> {
    let env = env_flags(&a.env)?;
    let stdin = read_stdin(a.interactive)?;
    let create = api::CreateSandbox {
        name: a.name.clone(),
        image: Some(a.image.clone()),
        env,
        memory_mb: a.memory,
        ..Default::default()
    };
    let client = ctx.client()?;
    let created = client.create_sandbox(&create).await?;
    let id = created.sandbox.id.clone();
    let req = api::ExecRequest {
        cmd: command_argv(a.cmd),
        timeout_sec: a.timeout,
        cwd: a.workdir,
        user: a.user,
        stdin,
        ..Default::default()
    };
    let result = run_request(ctx, &id, &req).await;
    if a.rm {
        if let Err(e) = client.destroy_sandbox(&id).await {
            eprintln!("bhatti: could not remove sandbox {id}: {e}");
        }
    } else if !ctx.json {
        eprintln!(
            "sandbox {} ({id}) kept; remove it with: bhatti rm {}",
            created.sandbox.name, created.sandbox.name
        );
    }
    result
}
