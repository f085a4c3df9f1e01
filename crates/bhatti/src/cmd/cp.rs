//! `bhatti cp SRC DST`: `docker cp`'s habit, with one side in a sandbox as
//! `SANDBOX:/path`. Files and whole directories, both ways; a directory is
//! copied entry by entry through the file API (each file written atomically
//! in the guest, its mode kept), so no tar is needed in the image. When DST
//! is an existing directory, SRC lands inside it under its own name.
//!
//! Symlinks are not followed on either side: a local one is skipped with a
//! warning, and the agent refuses to read through a guest one.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use bhatti_client::{Client, ClientError, ReadOptions};
use clap::Args;
use tokio::io::AsyncWriteExt;

use super::Ctx;

#[derive(Debug, Args)]
pub struct CpArgs {
    /// What to copy: a local path or SANDBOX:/path.
    pub src: String,
    /// Where to: a local path or SANDBOX:/path.
    pub dst: String,
}

/// One side of a copy.
#[derive(Debug, PartialEq, Eq)]
pub enum Place {
    Local(PathBuf),
    Sandbox { sandbox: String, path: String },
}

/// `name:/abs` is a sandbox path; anything else (including `./a:b`) is
/// local, as `docker cp` reads it.
pub fn place(s: &str) -> Place {
    match s.split_once(':') {
        Some((sb, path)) if !sb.is_empty() && !sb.contains('/') && path.starts_with('/') => {
            Place::Sandbox {
                sandbox: sb.to_string(),
                path: path.to_string(),
            }
        }
        _ => Place::Local(PathBuf::from(s)),
    }
}

fn base_name(p: &str) -> &str {
    p.trim_end_matches('/').rsplit('/').next().unwrap_or(p)
}

fn join(dir: &str, name: &str) -> String {
    format!("{}/{name}", dir.trim_end_matches('/'))
}

pub async fn run(ctx: &Ctx, a: CpArgs) -> anyhow::Result<i32> {
    let client = ctx.client()?;
    let n = match (place(&a.src), place(&a.dst)) {
        (Place::Local(src), Place::Sandbox { sandbox, path }) => {
            upload(client, &src, &sandbox, &path).await?
        }
        (Place::Sandbox { sandbox, path }, Place::Local(dst)) => {
            download(client, &sandbox, &path, &dst).await?
        }
        (Place::Local(_), Place::Local(_)) => {
            bail!("one side must be in a sandbox: SANDBOX:/path")
        }
        (Place::Sandbox { .. }, Place::Sandbox { .. }) => {
            bail!("copying between two sandboxes is not supported; copy through a local path")
        }
    };
    if !ctx.json {
        eprintln!("copied {n} file{}", if n == 1 { "" } else { "s" });
    } else {
        crate::output::print_json(&serde_json::json!({"files": n}))?;
    }
    Ok(0)
}

/// Whether `path` in the sandbox is a directory (false when absent).
async fn remote_is_dir(client: &Client, sandbox: &str, path: &str) -> anyhow::Result<bool> {
    match client.stat_file(sandbox, path).await {
        Ok(st) => Ok(st.is_dir),
        Err(e) if e.status() == Some(404) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

async fn upload(client: &Client, src: &Path, sandbox: &str, dst: &str) -> anyhow::Result<u64> {
    let meta = std::fs::symlink_metadata(src).with_context(|| format!("{}", src.display()))?;
    let name = src
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let target = if remote_is_dir(client, sandbox, dst).await? && !name.is_empty() {
        join(dst, &name)
    } else {
        dst.to_string()
    };
    if !meta.is_dir() {
        put(client, src, sandbox, &target).await?;
        return Ok(1);
    }
    let mut dirs = vec![target.clone()];
    let mut files = Vec::new();
    walk(src, &target, &mut dirs, &mut files)?;
    // Directories first (empty ones too), in one command.
    let mut argv = vec!["mkdir".to_string(), "-p".to_string(), "--".to_string()];
    argv.extend(dirs);
    let r = client
        .exec(
            sandbox,
            &bhatti_api::ExecRequest {
                cmd: argv,
                ..Default::default()
            },
        )
        .await?;
    if r.exit_code != 0 {
        bail!("mkdir in {sandbox}: {}", r.stderr.trim());
    }
    for (local, remote) in &files {
        put(client, local, sandbox, remote).await?;
    }
    Ok(files.len() as u64)
}

/// Local directories and files under `dir`, as their sandbox paths.
fn walk(
    dir: &Path,
    remote: &str,
    dirs: &mut Vec<String>,
    files: &mut Vec<(PathBuf, String)>,
) -> anyhow::Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("{}", dir.display()))?
        .collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let name = e.file_name().to_string_lossy().into_owned();
        let r = join(remote, &name);
        let t = e.file_type()?;
        if t.is_symlink() {
            eprintln!("skipping symlink {}", e.path().display());
        } else if t.is_dir() {
            dirs.push(r.clone());
            walk(&e.path(), &r, dirs, files)?;
        } else if t.is_file() {
            files.push((e.path(), r));
        }
    }
    Ok(())
}

async fn put(client: &Client, local: &Path, sandbox: &str, remote: &str) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let data = tokio::fs::read(local)
        .await
        .with_context(|| format!("{}", local.display()))?;
    let mode = std::fs::metadata(local)?.permissions().mode() & 0o7777;
    client
        .write_file(sandbox, remote, data.into(), Some(&format!("{mode:04o}")))
        .await
        .with_context(|| format!("{sandbox}:{remote}"))?;
    Ok(())
}

async fn download(client: &Client, sandbox: &str, src: &str, dst: &Path) -> anyhow::Result<u64> {
    let st = client.stat_file(sandbox, src).await?;
    let target = if dst.is_dir() {
        dst.join(base_name(src))
    } else {
        dst.to_path_buf()
    };
    if !st.is_dir {
        get(client, sandbox, src, &target, &st.mode).await?;
        return Ok(1);
    }
    let mut n: u64 = 0;
    let mut stack = vec![(src.to_string(), target)];
    while let Some((remote, local)) = stack.pop() {
        std::fs::create_dir_all(&local).with_context(|| format!("{}", local.display()))?;
        for e in client.list_files(sandbox, &remote).await? {
            let r = join(&remote, &e.name);
            let l = local.join(&e.name);
            if e.is_dir {
                stack.push((r, l));
            } else {
                match get(client, sandbox, &r, &l, &e.mode).await {
                    Ok(()) => n = n.saturating_add(1),
                    // A guest symlink, a socket, a file gone meanwhile: said,
                    // and the rest is still copied.
                    Err(err) if is_refusal(&err) => eprintln!("skipping {sandbox}:{r}: {err:#}"),
                    Err(err) => return Err(err),
                }
            }
        }
    }
    Ok(n)
}

/// The guest refused this one entry (not a network or server failure).
fn is_refusal(e: &anyhow::Error) -> bool {
    e.downcast_ref::<ClientError>()
        .and_then(ClientError::status)
        .is_some_and(|s| (400..500).contains(&s))
}

async fn get(
    client: &Client,
    sandbox: &str,
    remote: &str,
    local: &Path,
    mode: &str,
) -> anyhow::Result<()> {
    let mut dl = client
        .read_file(sandbox, remote, ReadOptions::default())
        .await?;
    let mut f = tokio::fs::File::create(local)
        .await
        .with_context(|| format!("{}", local.display()))?;
    while let Some(chunk) = dl.chunk().await {
        f.write_all(&chunk?).await?;
    }
    f.flush().await?;
    if let Ok(m) = u32::from_str_radix(mode.trim_start_matches("0o"), 8) {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(local, std::fs::Permissions::from_mode(m & 0o7777));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn places() {
        assert_eq!(
            place("web:/tmp/x"),
            Place::Sandbox {
                sandbox: "web".into(),
                path: "/tmp/x".into()
            }
        );
        assert_eq!(place("./a:b"), Place::Local("./a:b".into()));
        assert_eq!(place("a:rel"), Place::Local("a:rel".into()));
        assert_eq!(place("/abs/path"), Place::Local("/abs/path".into()));
        assert_eq!(base_name("/a/b/"), "b");
        assert_eq!(join("/a/", "b"), "/a/b");
    }
}
