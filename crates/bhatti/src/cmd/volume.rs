//! `bhatti volume create|list|inspect|delete|resize|clone`: persistent
//! volumes, which outlive sandboxes and are attached at create time with
//! `bhatti create --volume name:/mount[:ro]`.

use clap::Subcommand;

use super::{aborted, Ctx};
use crate::output::{mb, print_json, yes_no, Fields, Table};

#[derive(Debug, Subcommand)]
pub enum VolumeCmd {
    /// Create a volume.
    Create {
        #[arg(long)]
        name: String,
        /// Size in MB.
        #[arg(long)]
        size: u64,
    },
    /// List volumes.
    #[command(visible_alias = "ls")]
    List,
    /// Show a volume and the sandboxes it is attached to.
    #[command(visible_alias = "info")]
    Inspect { name: String },
    /// Delete a volume (it must not be attached).
    #[command(visible_alias = "rm")]
    Delete {
        name: String,
        /// Do not ask for confirmation.
        #[arg(short, long)]
        yes: bool,
    },
    /// Grow a detached volume.
    Resize {
        name: String,
        /// New size in MB (larger than now).
        #[arg(long)]
        size: u64,
    },
    /// Copy a detached volume into a new one.
    Clone {
        source: String,
        /// Name of the copy.
        #[arg(long)]
        name: String,
    },
    /// Back a volume up to the daemon's backup bucket (it may stay attached).
    Backup { name: String },
    /// List a volume's backups, newest first.
    BackupList { name: String },
    /// Replace a detached volume with one of its backups.
    Restore {
        name: String,
        /// The backup to restore (see `backup-list`).
        #[arg(long)]
        backup_id: String,
        /// Do not ask for confirmation.
        #[arg(short, long)]
        yes: bool,
    },
    /// Delete one of a volume's backups.
    BackupDelete {
        name: String,
        backup_id: String,
        /// Do not ask for confirmation.
        #[arg(short, long)]
        yes: bool,
    },
}

pub async fn run(ctx: &Ctx, c: VolumeCmd) -> anyhow::Result<i32> {
    let client = ctx.client()?;
    match c {
        VolumeCmd::Create { name, size } => {
            anyhow::ensure!(size > 0, "--size must be more than 0 MB");
            let spin = ctx.spinner(format!("Creating volume/{name}"));
            let v = client.create_volume(&name, size).await?;
            drop(spin);
            if ctx.json {
                print_json(&v)?;
            } else {
                outln!("volume/{} created ({} MB)", v.name, v.size_mb);
            }
        }
        VolumeCmd::List => {
            let list = client.list_volumes().await?;
            if ctx.json {
                print_json(&list)?;
                return Ok(0);
            }
            let mut t = Table::new(&["NAME", "SIZE", "STATUS", "CREATED"]);
            for v in &list {
                t.row([
                    v.name.clone(),
                    mb(v.size_mb),
                    v.status.clone(),
                    v.created_at.clone(),
                ]);
            }
            t.print_or("No volumes. Create one: bhatti volume create --name NAME --size MB");
        }
        VolumeCmd::Inspect { name } => {
            let v = client.get_volume(&name).await?;
            if ctx.json {
                print_json(&v)?;
                return Ok(0);
            }
            let mut f = Fields::new();
            f.add("Name", &v.name)
                .add("ID", &v.id)
                .add("Size", mb(v.size_mb))
                .add("Status", &v.status)
                .add("Created", &v.created_at);
            let att = v.attachments.unwrap_or_default();
            if att.is_empty() {
                f.add("Attached", "-");
            }
            f.print();
            if !att.is_empty() {
                let mut t = Table::new(&["SANDBOX", "MOUNT", "READ-ONLY"]);
                for a in &att {
                    t.row([
                        a.sandbox_id.clone(),
                        a.mount.clone(),
                        yes_no(a.read_only).to_string(),
                    ]);
                }
                outln!("Attached:");
                t.print();
            }
        }
        VolumeCmd::Delete { name, yes } => {
            if !ctx.confirm(yes, &format!("Delete volume/{name} and all its data?"))? {
                return aborted();
            }
            let st = client.delete_volume(&name).await?;
            if ctx.json {
                print_json(&st)?;
            } else {
                outln!("volume/{name} deleted");
            }
        }
        VolumeCmd::Resize { name, size } => {
            let spin = ctx.spinner(format!("Resizing volume/{name}"));
            let r = client.resize_volume(&name, size).await?;
            drop(spin);
            if ctx.json {
                print_json(&r)?;
            } else {
                outln!("volume/{name} resized ({} MB)", r.size_mb);
            }
        }
        VolumeCmd::Backup { name } => {
            let spin = ctx.spinner(format!("Backing up volume/{name} (copy, compress, upload)"));
            let b = client.backup_volume(&name).await?;
            drop(spin);
            if ctx.json {
                print_json(&b)?;
            } else {
                outln!(
                    "volume/{name} backed up: {} ({}, sha256 {})",
                    b.id,
                    mb(b.size_bytes >> 20),
                    b.sha256.get(..12).unwrap_or(&b.sha256)
                );
            }
        }
        VolumeCmd::BackupList { name } => {
            let list = client.list_backups(&name).await?;
            if ctx.json {
                print_json(&list)?;
                return Ok(0);
            }
            let mut t = Table::new(&["ID", "SIZE", "SHA256", "CREATED"]);
            for b in &list {
                t.row([
                    b.id.clone(),
                    mb(b.size_bytes >> 20),
                    b.sha256.get(..12).unwrap_or(&b.sha256).to_string(),
                    b.created_at.clone(),
                ]);
            }
            t.print_or(&format!(
                "No backups. Make one: bhatti volume backup {name}"
            ));
        }
        VolumeCmd::Restore {
            name,
            backup_id,
            yes,
        } => {
            if !ctx.confirm(
                yes,
                &format!("Replace volume/{name} with backup {backup_id}?"),
            )? {
                return aborted();
            }
            let spin = ctx.spinner(format!(
                "Restoring volume/{name} (download, verify, replace)"
            ));
            let r = client.restore_volume(&name, &backup_id).await?;
            drop(spin);
            if ctx.json {
                print_json(&r)?;
            } else {
                outln!("volume/{name} restored from backup {}", r.backup_id);
            }
        }
        VolumeCmd::BackupDelete {
            name,
            backup_id,
            yes,
        } => {
            if !ctx.confirm(yes, &format!("Delete backup {backup_id} of volume/{name}?"))? {
                return aborted();
            }
            let st = client.delete_backup(&name, &backup_id).await?;
            if ctx.json {
                print_json(&st)?;
            } else {
                outln!("backup {backup_id} of volume/{name} deleted");
            }
        }
        VolumeCmd::Clone { source, name } => {
            let spin = ctx.spinner(format!("Cloning volume/{source}"));
            let v = client.clone_volume(&source, &name).await?;
            drop(spin);
            if ctx.json {
                print_json(&v)?;
            } else {
                outln!(
                    "volume/{} created from volume/{source} ({} MB)",
                    v.name,
                    v.size_mb
                );
            }
        }
    }
    Ok(0)
}
