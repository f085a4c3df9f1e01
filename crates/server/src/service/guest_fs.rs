//! The guest filesystem: streamed read and write, stat, recursive listing,
//! make-directory, rename and remove, with paths relative to the sandbox
//! user's home. Stat and listing are the agent's own operations (run with
//! the user's filesystem credentials); the changes are commands run as the
//! user, so they can do exactly what the user could and no more.
//!
//! The read and write here take absolute paths in a sandbox already made
//! hot, so that both the E2B API (which resolves home-relative paths first)
//! and the native API's files ([`crate::service::files`], absolute paths
//! only) move bytes the same way.

use std::collections::HashMap;
use std::sync::Mutex;

use bhatti_agent_client::{FileDownload, ReadOptions};
use bhatti_engine::EngineExt;
use bhatti_protocol::messages::{ExecRequest, FileInfo};
use bhatti_store::Sandbox;
use tokio::io::AsyncRead;

use crate::service::error::{ErrorCode, ServiceError, ServiceResult};
use crate::state::{lock, Shared};

/// Largest file a write accepts (the agent enforces the same).
pub const MAX_FILE: u64 = 100 << 20;
/// The deepest listing one request may ask for.
pub const MAX_DEPTH: u32 = 32;
/// Entries one recursive listing returns at most.
pub const MAX_ENTRIES: usize = 100_000;
/// How the agent's listing marks that it stopped early (docs/protocol.md,
/// "Behaviour worth knowing").
pub(crate) const TRUNCATION_SENTINEL: &str = "... truncated at ";

/// A path in the guest with what the agent reported for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Absolute.
    pub path: String,
    pub info: FileInfo,
}

/// Each sandbox user's home, asked once per sandbox.
#[derive(Default)]
pub struct Homes(Mutex<HashMap<String, String>>);

impl Homes {
    fn cached(&self, id: &str) -> Option<String> {
        lock(&self.0).get(id).cloned()
    }
    fn remember(&self, id: &str, home: &str) {
        lock(&self.0).insert(id.to_string(), home.to_string());
    }
    /// Forgets a destroyed sandbox.
    pub fn forget(&self, id: &str) {
        lock(&self.0).remove(id);
    }
}

/// Runs `argv` as the sandbox user; a non-zero exit is an error carrying
/// its stderr.
async fn run(st: &Shared, sb: &Sandbox, argv: &[&str]) -> ServiceResult<String> {
    let r = st
        .engine
        .exec_request(&sb.id, ExecRequest::new(argv.iter().copied()), None)
        .await?;
    if r.exit_code != 0 {
        let msg = r.stderr_str();
        let msg = msg.trim();
        return Err(ServiceError::bad_request(if msg.is_empty() {
            format!("{} exited with {}", argv[0], r.exit_code)
        } else {
            msg.to_string()
        }));
    }
    Ok(r.stdout_str())
}

/// The sandbox user's home directory.
pub async fn home(st: &Shared, sb: &Sandbox) -> ServiceResult<String> {
    if let Some(h) = st.homes.cached(&sb.id) {
        return Ok(h);
    }
    let out = run(st, sb, &["sh", "-c", "printf %s \"$HOME\""]).await?;
    let h = if out.starts_with('/') {
        out
    } else {
        "/".into()
    };
    st.homes.remember(&sb.id, &h);
    Ok(h)
}

/// An absolute path: as given, or under the user's home (`~` and `~/…`
/// too). Relative paths are E2B's convention; the native API takes
/// absolute ones only.
pub async fn resolve(st: &Shared, sb: &Sandbox, path: &str) -> ServiceResult<String> {
    crate::validate::no_nul("path", path)?;
    if path.starts_with('/') {
        return Ok(normalize(path));
    }
    let rest = path
        .strip_prefix("~/")
        .or_else(|| (path == "~").then_some(""))
        .unwrap_or(path);
    let home = home(st, sb).await?;
    Ok(normalize(&format!("{home}/{rest}")))
}

/// `a//b/./c/` → `a/b/c`; `..` is kept (the guest resolves it, as the
/// user, like any other component).
fn normalize(p: &str) -> String {
    let parts: Vec<&str> = p
        .split('/')
        .filter(|s| !s.is_empty() && *s != ".")
        .collect();
    format!("/{}", parts.join("/"))
}

pub(crate) fn join(dir: &str, name: &str) -> String {
    if dir == "/" {
        format!("/{name}")
    } else {
        format!("{dir}/{name}")
    }
}

pub async fn stat(st: &Shared, sb: &Sandbox, path: &str) -> ServiceResult<Entry> {
    st.ensure_hot(sb).await?;
    let path = resolve(st, sb, path).await?;
    let info = st.engine.file_stat(&sb.id, &path).await?;
    Ok(Entry { path, info })
}

/// Opens `path` (absolute) in a hot sandbox for a streamed read. It returns
/// once the agent has answered, so a refusal (such as "is a directory") is
/// an error here rather than a short body, and the size it announces is
/// known before any byte is sent.
pub async fn open(
    st: &Shared,
    sb: &Sandbox,
    path: &str,
    opts: ReadOptions,
) -> ServiceResult<FileDownload> {
    let agent = st.engine.agent(&sb.id)?;
    Ok(agent.file_open(path, opts).await?)
}

/// Writes `size` bytes from `src` to `path` (absolute) in a hot sandbox,
/// atomically in the guest (a temp file renamed over the target once every
/// byte arrived, which is why the size comes first).
pub async fn write<R: AsyncRead + Unpin + Send>(
    st: &Shared,
    sb: &Sandbox,
    path: &str,
    mode: &str,
    size: u64,
    src: &mut R,
) -> ServiceResult<()> {
    st.engine.file_write(&sb.id, path, mode, size, src).await?;
    // A long upload is activity: the idle clock starts after it.
    st.touch(&sb.id);
    Ok(())
}

/// Whether anything is at `path` (a stat refused for another reason, such
/// as permissions, is that error).
async fn exists(st: &Shared, sb: &Sandbox, path: &str) -> ServiceResult<bool> {
    match st.engine.file_stat(&sb.id, path).await {
        Ok(_) => Ok(true),
        Err(e) => {
            let e = ServiceError::from(e);
            if e.code == ErrorCode::NotFound {
                Ok(false)
            } else {
                Err(e)
            }
        }
    }
}

/// The entries under `root` (absolute), `depth` levels down (1 = the
/// directory's own entries), breadth-first, each level sorted by name, with
/// their names relative to `root`; at most `limit`. Never wakes the
/// sandbox; a subdirectory that vanishes meanwhile is skipped.
pub(crate) async fn walk(
    st: &Shared,
    sandbox_id: &str,
    root: &str,
    depth: u32,
    limit: usize,
) -> ServiceResult<Vec<(String, Entry)>> {
    let mut out = Vec::new();
    let mut level = vec![(root.to_string(), String::new())];
    for _ in 0..depth.max(1) {
        let mut next = Vec::new();
        for (dir, rel) in level {
            let entries = match st.engine.file_ls(sandbox_id, &dir).await {
                Ok(e) => e,
                Err(_) if !rel.is_empty() => continue,
                Err(e) => return Err(e.into()),
            };
            for info in entries {
                if info.name.starts_with(TRUNCATION_SENTINEL) {
                    continue;
                }
                let path = join(&dir, &info.name);
                let name = if rel.is_empty() {
                    info.name.clone()
                } else {
                    format!("{rel}/{}", info.name)
                };
                if info.is_dir {
                    next.push((path.clone(), name.clone()));
                }
                out.push((name, Entry { path, info }));
                if out.len() >= limit {
                    return Ok(out);
                }
            }
        }
        level = next;
    }
    Ok(out)
}

/// The entries under `path`, `depth` levels down (see [`walk`]).
pub async fn list(st: &Shared, sb: &Sandbox, path: &str, depth: u32) -> ServiceResult<Vec<Entry>> {
    if depth > MAX_DEPTH {
        return Err(ServiceError::bad_request(format!(
            "depth must be at most {MAX_DEPTH}"
        )));
    }
    st.ensure_hot(sb).await?;
    let root = resolve(st, sb, path).await?;
    let entries = walk(st, &sb.id, &root, depth, MAX_ENTRIES).await?;
    Ok(entries.into_iter().map(|(_, e)| e).collect())
}

/// Creates `path` and its missing parents; `None` when something is
/// already there (not an error: callers ask "make sure it exists").
pub async fn make_dir(st: &Shared, sb: &Sandbox, path: &str) -> ServiceResult<Option<Entry>> {
    st.ensure_hot(sb).await?;
    let path = resolve(st, sb, path).await?;
    if exists(st, sb, &path).await? {
        return Ok(None);
    }
    run(st, sb, &["mkdir", "-p", "--", &path]).await?;
    stat(st, sb, &path).await.map(Some)
}

/// Moves `from` to `to` (a rename; `to`'s parent must exist).
pub async fn rename(st: &Shared, sb: &Sandbox, from: &str, to: &str) -> ServiceResult<Entry> {
    st.ensure_hot(sb).await?;
    let from = resolve(st, sb, from).await?;
    let to = resolve(st, sb, to).await?;
    if !exists(st, sb, &from).await? {
        return Err(ServiceError::not_found(format!("{from} does not exist")));
    }
    run(st, sb, &["mv", "-f", "--", &from, &to]).await?;
    stat(st, sb, &to).await
}

/// Removes a file, or a directory with everything in it.
pub async fn remove(st: &Shared, sb: &Sandbox, path: &str) -> ServiceResult<()> {
    st.ensure_hot(sb).await?;
    let path = resolve(st, sb, path).await?;
    if path == "/" {
        return Err(ServiceError::bad_request("refusing to remove /"));
    }
    if !exists(st, sb, &path).await? {
        return Err(ServiceError::not_found(format!("{path} does not exist")));
    }
    run(st, sb, &["rm", "-rf", "--", &path]).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_normalize_and_join() {
        assert_eq!(normalize("/a//b/./c/"), "/a/b/c");
        assert_eq!(normalize("/"), "/");
        assert_eq!(normalize("/a/../b"), "/a/../b");
        assert_eq!(join("/", "x"), "/x");
        assert_eq!(join("/a", "x"), "/a/x");
    }
}
