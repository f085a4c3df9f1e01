//! `bhatti image pull|import|save|list|inspect|delete|share|unshare` and
//! `bhatti task get`:
//! root filesystem images. A pull runs as a task on the daemon; the CLI
//! follows it with a progress bar per layer, and Ctrl+C leaves it running.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::Context;
use bhatti_api as api;
use clap::Subcommand;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

use super::{aborted, Ctx};
use crate::output::{mb, or_dash, print_json, Fields, Table};

#[derive(Debug, Subcommand)]
pub enum ImageCmd {
    /// Pull an OCI image from a registry (`python:3.12`, `ghcr.io/org/img:tag`).
    Pull {
        /// The image reference.
        reference: String,
        /// The image's name here (default: the repository's last segment).
        #[arg(long)]
        name: Option<String>,
        /// Registry credentials, `user:token`.
        #[arg(long, env = "BHATTI_REGISTRY_AUTH", hide_env_values = true)]
        auth: Option<String>,
    },
    /// Import a `docker save` or OCI-layout tarball, or a local Docker image.
    Import {
        /// A Docker image to export with `docker save` (instead of --tar).
        docker_ref: Option<String>,
        /// The tarball to upload.
        #[arg(long, conflicts_with = "docker_ref")]
        tar: Option<std::path::PathBuf>,
        /// The image's name here.
        #[arg(long)]
        name: String,
    },
    /// Save a sandbox's disk as an image (the sandbox keeps running).
    Save {
        sandbox: String,
        /// The image's name.
        #[arg(long)]
        name: String,
    },
    /// List the images you can use (yours and the admin ones).
    #[command(visible_alias = "ls")]
    List,
    /// Show one image.
    #[command(visible_aliases = ["info", "get"])]
    Inspect { name: String },
    /// Share a user's image with other users, or with everyone (on the
    /// server: opens state.db directly). `--list` shows whom it is shared with.
    Share {
        name: String,
        /// The image's owner (a user name).
        #[arg(long)]
        owner: String,
        /// A user to share with (repeatable); none: every user.
        #[arg(long = "user")]
        users: Vec<String>,
        /// Only list the current shares.
        #[arg(long)]
        list: bool,
    },
    /// Take shares back (on the server: opens state.db directly).
    Unshare {
        name: String,
        /// The image's owner (a user name).
        #[arg(long)]
        owner: String,
        /// A user to unshare from (repeatable); none: every share.
        #[arg(long = "user")]
        users: Vec<String>,
    },
    /// Delete one of your images (sandboxes made from it keep their disks).
    #[command(visible_alias = "rm")]
    Delete {
        name: String,
        /// Do not ask for confirmation.
        #[arg(short, long)]
        yes: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum TaskCmd {
    /// Show a background task (an image pull) and its progress.
    Get { id: String },
}

fn owner(user_id: &str) -> &str {
    if user_id.is_empty() {
        "admin"
    } else {
        "you"
    }
}

/// `share`/`unshare`, DB-direct like `bhatti user`: user names → IDs.
fn shares(
    ctx: &Ctx,
    name: &str,
    owner: &str,
    users: &[String],
    share: Option<bool>,
) -> anyhow::Result<i32> {
    let store = super::user::open(&ctx.data_dir(), false)?;
    let id_of = |n: &str| {
        store
            .user_by_name(n)
            .map(|u| u.id)
            .with_context(|| format!("user {n:?}"))
    };
    let owner_id = id_of(owner)?;
    let ids = users
        .iter()
        .map(|u| id_of(u))
        .collect::<anyhow::Result<Vec<_>>>()?;
    match share {
        Some(true) => {
            store.share_image(&owner_id, name, &ids)?;
        }
        Some(false) => {
            store.unshare_image(&owner_id, name, &ids)?;
        }
        None => {}
    }
    let with = store.image_shares(&owner_id, name)?;
    let names: Vec<String> = with
        .iter()
        .map(|id| {
            if id == "*" {
                "every user".to_string()
            } else {
                store
                    .user(id)
                    .map(|u| u.name)
                    .unwrap_or_else(|_| id.clone())
            }
        })
        .collect();
    if ctx.json {
        print_json(&names)?;
    } else if names.is_empty() {
        outln!("image/{name} of {owner} is not shared");
    } else {
        outln!(
            "image/{name} of {owner} is shared with: {}",
            names.join(", ")
        );
    }
    Ok(0)
}

pub async fn run(ctx: &Ctx, c: ImageCmd) -> anyhow::Result<i32> {
    match c {
        ImageCmd::Share {
            name,
            owner,
            users,
            list,
        } => shares(ctx, &name, &owner, &users, (!list).then_some(true)),
        ImageCmd::Unshare { name, owner, users } => shares(ctx, &name, &owner, &users, Some(false)),
        other => through_api(ctx, other).await,
    }
}

/// Everything but sharing goes through the daemon's API.
async fn through_api(ctx: &Ctx, c: ImageCmd) -> anyhow::Result<i32> {
    let client = ctx.client()?;
    match c {
        ImageCmd::Share { .. } | ImageCmd::Unshare { .. } => {
            anyhow::bail!("image share and unshare run on the server, against its database")
        }
        ImageCmd::Pull {
            reference,
            name,
            auth,
        } => {
            let started = client
                .pull_image(&api::PullImage {
                    reference: reference.clone(),
                    name,
                    auth,
                })
                .await?;
            if started.status == "exists" {
                let image = started.image.clone().unwrap_or_default();
                if ctx.json {
                    print_json(&started)?;
                } else {
                    outln!(
                        "image/{image} is up to date ({})",
                        started.digest.unwrap_or_default()
                    );
                }
                return Ok(0);
            }
            let id = started
                .task_id
                .context("the daemon answered without a task")?;
            return follow(ctx, &id).await;
        }
        ImageCmd::Import {
            docker_ref,
            tar,
            name,
        } => {
            let (path, _tmp) = match (tar, docker_ref) {
                (Some(p), _) => (p, None),
                (None, Some(r)) => {
                    let dir = tempfile::tempdir().context("temp dir for docker save")?;
                    let p = dir.path().join("image.tar");
                    let spin = ctx.spinner(format!("docker save {r}"));
                    let st = tokio::process::Command::new("docker")
                        .arg("save")
                        .arg("-o")
                        .arg(&p)
                        .arg(&r)
                        .status()
                        .await
                        .map_err(|e| match e.kind() {
                            std::io::ErrorKind::NotFound => anyhow::anyhow!(
                                "docker is not installed (or not on PATH); export the image with \
                                 `docker save -o FILE {r}` where Docker is and pass --tar FILE"
                            ),
                            _ => anyhow::Error::new(e).context("run docker save"),
                        })?;
                    drop(spin);
                    anyhow::ensure!(st.success(), "docker save {r} failed ({st})");
                    (p, Some(dir))
                }
                (None, None) => {
                    anyhow::bail!("give a tarball (--tar FILE) or a Docker image reference")
                }
            };
            let spin = ctx.spinner(format!("Importing image/{name}"));
            let r = client.import_image(&name, &path).await?;
            drop(spin);
            if ctx.json {
                print_json(&r)?;
            } else {
                outln!("image/{} imported ({})", r.name, mb(r.size_mb));
                print_warnings(&r.warnings);
            }
        }
        ImageCmd::Save { sandbox, name } => {
            let spin = ctx.spinner(format!("Saving {sandbox} as image/{name}"));
            let img = client.save_image(&sandbox, &name).await?;
            drop(spin);
            if ctx.json {
                print_json(&img)?;
            } else {
                outln!(
                    "image/{} saved from {sandbox} ({})",
                    img.name,
                    mb(img.size_mb)
                );
                print_warnings(&img.warnings);
            }
        }
        ImageCmd::List => {
            let list = client.list_images().await?;
            if ctx.json {
                print_json(&list)?;
                return Ok(0);
            }
            let mut t = Table::new(&["NAME", "OWNER", "SOURCE", "SIZE", "CREATED"]);
            for i in &list {
                t.row([
                    i.name.clone(),
                    owner(&i.user_id).to_string(),
                    i.source.clone(),
                    mb(i.size_mb),
                    i.created_at.clone(),
                ]);
            }
            t.print_or("No images. Pull one: bhatti image pull python:3.12");
        }
        ImageCmd::Inspect { name } => {
            let i = client.get_image(&name).await?;
            if ctx.json {
                print_json(&i)?;
                return Ok(0);
            }
            let mut f = Fields::new();
            f.add("Name", &i.name)
                .add("ID", &i.id)
                .add("Owner", owner(&i.user_id))
                .add("Source", &i.source)
                .add("Size", mb(i.size_mb))
                .add("Digest", or_dash(i.oci_digest.as_deref().unwrap_or("")))
                .add("Created", &i.created_at);
            f.print();
        }
        ImageCmd::Delete { name, yes } => {
            if !ctx.confirm(yes, &format!("Delete image/{name}?"))? {
                return aborted();
            }
            let st = client.delete_image(&name).await?;
            if ctx.json {
                print_json(&st)?;
            } else {
                outln!("image/{name} deleted");
            }
        }
    }
    Ok(0)
}

pub async fn task(ctx: &Ctx, c: TaskCmd) -> anyhow::Result<i32> {
    let TaskCmd::Get { id } = c;
    let t = ctx.client()?.task(&id).await?;
    if ctx.json {
        print_json(&t)?;
        return Ok(0);
    }
    let mut f = Fields::new();
    f.add("ID", &t.id)
        .add("Type", &t.kind)
        .add("Status", &t.status)
        .add("Phase", or_dash(&t.progress.phase))
        .add("Created", &t.created_at)
        .add(
            "Completed",
            or_dash(t.completed_at.as_deref().unwrap_or("")),
        );
    if let Some(e) = &t.error {
        f.add("Error", e);
    }
    f.print();
    Ok(if t.status == "failed" { 1 } else { 0 })
}

/// Follows a pull task to its end: a bar per layer on a terminal, the
/// result or the error after. Ctrl+C stops following, not the pull.
async fn follow(ctx: &Ctx, id: &str) -> anyhow::Result<i32> {
    let client = ctx.client()?;
    let tty = std::io::IsTerminal::is_terminal(&std::io::stderr()) && !ctx.json;
    let multi = MultiProgress::new();
    let style = ProgressStyle::with_template("{prefix:>14} [{bar:30}] {bytes}/{total_bytes} {msg}")
        .map(|s| s.progress_chars("=> "))
        .ok();
    let phase = tty.then(|| multi.add(ProgressBar::new_spinner()));
    let mut bars: HashMap<String, ProgressBar> = HashMap::new();
    // One listener for the whole follow, made before the first request: a
    // fresh `ctrl_c()` per poll would miss a Ctrl+C pressed during the
    // sleep between polls (tokio keeps SIGINT once it has listened, so the
    // key would do nothing).
    let mut interrupt = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .context("listen for Ctrl+C")?;
    let stopped = |multi: &MultiProgress| {
        let _ = multi.clear();
        eprintln!(
            "Stopped following; the pull continues on the daemon. Follow it with: bhatti task get {id}"
        );
        Ok(130)
    };
    let task = loop {
        let t = tokio::select! {
            t = client.task(id) => t?,
            _ = interrupt.recv() => return stopped(&multi),
        };
        if tty {
            if let Some(p) = &phase {
                p.set_message(format!("{} ({})", t.progress.phase, t.status));
                p.tick();
            }
            for l in &t.progress.layers {
                let bar = bars.entry(l.digest.clone()).or_insert_with(|| {
                    let b = multi.add(ProgressBar::new(l.size));
                    if let Some(s) = &style {
                        b.set_style(s.clone());
                    }
                    b.set_prefix(l.digest.get(7..19).unwrap_or(&l.digest).to_string());
                    b
                });
                bar.set_position(l.done.min(l.size));
            }
        }
        if t.status != "running" {
            break t;
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            _ = interrupt.recv() => return stopped(&multi),
        }
    };
    for b in bars.values() {
        b.finish();
    }
    if let Some(p) = &phase {
        p.finish_and_clear();
    }
    if ctx.json {
        print_json(&task)?;
        return Ok(if task.status == "completed" { 0 } else { 1 });
    }
    if task.status == "completed" {
        let img: Option<api::Image> = task
            .result
            .as_deref()
            .and_then(|r| serde_json::from_str(r).ok());
        match img {
            Some(i) => {
                outln!(
                    "image/{} pulled ({}, {})",
                    i.name,
                    mb(i.size_mb),
                    i.oci_digest.clone().unwrap_or_default()
                );
                print_warnings(&i.warnings);
            }
            None => outln!("pulled"),
        }
        Ok(0)
    } else {
        eprintln!("Error: pull failed: {}", task.error.unwrap_or_default());
        Ok(1)
    }
}

/// An image's warnings, one line each on stderr (the result stays the
/// only thing on stdout).
fn print_warnings(warnings: &[String]) {
    for w in warnings {
        eprintln!("warning: {w}");
    }
}
