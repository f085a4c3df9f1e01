//! `bhatti snapshot create|list|resume|delete`: named checkpoints of a
//! sandbox (memory, processes and disks), resumable into new sandboxes
//! while the source keeps running.

use clap::Subcommand;

use super::{aborted, Ctx};
use crate::output::{mb, print_json, Table};

#[derive(Debug, Subcommand)]
pub enum SnapshotCmd {
    /// Checkpoint a sandbox under a name.
    Create {
        /// Sandbox name or ID.
        sandbox: String,
        /// Snapshot name.
        #[arg(long)]
        name: String,
    },
    /// List snapshots.
    #[command(visible_alias = "ls")]
    List,
    /// Start a new sandbox from a snapshot.
    Resume {
        snapshot: String,
        /// Name of the new sandbox (default: <snapshot>-<random>).
        #[arg(long)]
        name: Option<String>,
    },
    /// Delete a snapshot.
    #[command(visible_alias = "rm")]
    Delete {
        snapshot: String,
        /// Do not ask for confirmation.
        #[arg(short, long)]
        yes: bool,
    },
}

impl SnapshotCmd {
    pub fn sandbox(&self) -> Option<&str> {
        match self {
            SnapshotCmd::Create { sandbox, .. } => Some(sandbox),
            _ => None,
        }
    }
}

pub async fn run(ctx: &Ctx, c: SnapshotCmd) -> anyhow::Result<i32> {
    let client = ctx.client()?;
    match c {
        SnapshotCmd::Create { sandbox, name } => {
            let spin = ctx.spinner(format!("Snapshotting sandbox/{sandbox}"));
            let s = client.checkpoint(&sandbox, &name).await?;
            drop(spin);
            if ctx.json {
                print_json(&s)?;
            } else {
                outln!(
                    "snapshot/{} created from sandbox/{sandbox} ({})",
                    s.name,
                    mb(s.size_mb)
                );
            }
        }
        SnapshotCmd::List => {
            let list = client.list_snapshots().await?;
            if ctx.json {
                print_json(&list)?;
                return Ok(0);
            }
            let mut t = Table::new(&["NAME", "SOURCE", "SIZE", "CREATED"]);
            for s in &list {
                t.row([
                    s.name.clone(),
                    s.source_sandbox.clone(),
                    mb(s.size_mb),
                    s.created_at.clone(),
                ]);
            }
            t.print_or("No snapshots. Take one: bhatti snapshot create SANDBOX --name NAME");
        }
        SnapshotCmd::Resume { snapshot, name } => {
            let spin = ctx.spinner(format!("Resuming snapshot/{snapshot}"));
            let sb = client.resume_snapshot(&snapshot, name.as_deref()).await?;
            drop(spin);
            if ctx.json {
                print_json(&sb)?;
            } else {
                outln!(
                    "sandbox/{} created from snapshot/{snapshot} ({})",
                    sb.name,
                    super::sandbox::shape(&sb)
                );
                if !sb.ip.is_empty() {
                    outln!("  IP:    {}", sb.ip);
                }
                outln!("  Shell: bhatti shell {}", sb.name);
            }
        }
        SnapshotCmd::Delete { snapshot, yes } => {
            if !ctx.confirm(yes, &format!("Delete snapshot/{snapshot}?"))? {
                return aborted();
            }
            let st = client.delete_snapshot(&snapshot).await?;
            if ctx.json {
                print_json(&st)?;
            } else {
                outln!("snapshot/{snapshot} deleted");
            }
        }
    }
    Ok(0)
}
