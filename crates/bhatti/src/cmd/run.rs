//! `bhatti run [--rm] IMAGE -- CMD…`: `docker run`'s habit, a sandbox made
//! for one command. It is created from IMAGE, the command runs as `exec`
//! runs it (output streamed, its exit code returned), and with `--rm` the
//! sandbox is destroyed afterwards, whatever the command's outcome.

use bhatti_api as api;
use clap::Args;

use super::exec::{run_request, CommandFlags};
use super::Ctx;

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Destroy the sandbox when the command ends.
    #[arg(long)]
    pub rm: bool,
    /// Name the sandbox (default: a generated name).
    #[arg(long)]
    pub name: Option<String>,
    #[command(flatten)]
    pub flags: CommandFlags,
    /// Memory in MB (default: the server's).
    #[arg(long)]
    pub memory: Option<u64>,
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
    // Read (and check) everything before a sandbox exists.
    let req = a.flags.request(a.cmd)?;
    let create = api::CreateSandbox {
        name: a.name.clone(),
        image: Some(a.image.clone()),
        memory_mb: a.memory,
        ..Default::default()
    };
    let client = ctx.client()?;
    let created = client.create_sandbox(&create).await?;
    let id = created.sandbox.id.clone();
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
