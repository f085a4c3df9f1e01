//! `bhatti user create|list|delete|rotate-key`: user administration.
//!
//! These are DB-direct, as in the reference: there is no user API (a key
//! cannot mint keys), so they run on the server and open
//! `<data_dir>/state.db` through `bhatti-store`, alongside a running daemon
//! (SQLite WAL + busy timeout make that safe). API keys are printed once;
//! only their SHA-256 is stored.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use bhatti_store::{NewUser, Quotas, Store, StoreError, User};
use clap::Subcommand;

use super::{aborted, Ctx};
use crate::output::{print_json, Fields, Table};

#[derive(Debug, Subcommand)]
pub enum UserCmd {
    /// Create a user and print its API key (shown once).
    Create {
        #[arg(long)]
        name: String,
        /// Sandboxes at once.
        #[arg(long, default_value_t = 5)]
        max_sandboxes: u32,
        /// vCPUs per sandbox.
        #[arg(long, default_value_t = 4)]
        max_cpus: u32,
        /// Memory per sandbox, MB.
        #[arg(long, default_value_t = 4096)]
        max_memory: u32,
    },
    /// List users.
    #[command(visible_alias = "ls")]
    List,
    /// Delete a user (refused while it has sandboxes or secrets).
    #[command(visible_alias = "rm")]
    Delete {
        name: String,
        /// Do not ask for confirmation.
        #[arg(short, long)]
        yes: bool,
    },
    /// Replace a user's API key (the old one stops working at once).
    RotateKey { name: String },
}

fn db_path(data_dir: &Path) -> PathBuf {
    data_dir.join("state.db")
}

/// Opens the store; `create` may create the data dir and database, every
/// other command needs an existing one (so a typo in `--data-dir` does not
/// silently start an empty database).
pub(super) fn open(data_dir: &Path, create: bool) -> anyhow::Result<Store> {
    let db = db_path(data_dir);
    if create {
        if !data_dir.exists() {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(data_dir)
                .with_context(|| format!("create {}", data_dir.display()))?;
        }
    } else if !db.exists() {
        bail!(
            "no database at {} (run this on the server, as root, or pass --data-dir)",
            db.display()
        );
    }
    Store::open(&db).with_context(|| format!("open {}", db.display()))
}

fn by_name(store: &Store, name: &str) -> anyhow::Result<User> {
    match store.user_by_name(name) {
        Ok(u) => Ok(u),
        Err(StoreError::NotFound) => bail!("user {name:?} not found (see: bhatti user list)"),
        Err(e) => Err(e.into()),
    }
}

/// Removes a file or directory a deleted row pointed at, but only inside
/// the data directory (a corrupt row must not make us delete elsewhere).
fn remove_owned(data_dir: &Path, p: &str) -> Option<String> {
    if p.is_empty() {
        return None;
    }
    let path = if Path::new(p).is_absolute() {
        PathBuf::from(p)
    } else {
        data_dir.join(p)
    };
    let (Ok(root), Ok(real)) = (data_dir.canonicalize(), path.canonicalize()) else {
        return None; // already gone
    };
    if !real.starts_with(&root) || real == root {
        return Some(format!(
            "left {} (outside the data directory)",
            real.display()
        ));
    }
    let r = if real.is_dir() {
        std::fs::remove_dir_all(&real)
    } else {
        std::fs::remove_file(&real)
    };
    r.err().map(|e| format!("remove {}: {e}", real.display()))
}

pub fn run(ctx: &Ctx, c: UserCmd) -> anyhow::Result<i32> {
    let data_dir = ctx.data_dir();
    match c {
        UserCmd::Create {
            name,
            max_sandboxes,
            max_cpus,
            max_memory,
        } => {
            let store = open(&data_dir, true)?;
            let quotas = Quotas {
                max_sandboxes,
                max_cpus_per_sandbox: max_cpus,
                max_memory_mb_per_sandbox: max_memory,
                ..Quotas::default()
            };
            let (user, key) = store.create_user(&NewUser {
                name: name.clone(),
                quotas,
            })?;
            if ctx.json {
                let mut v = serde_json::to_value(&user)?;
                if let Some(o) = v.as_object_mut() {
                    o.insert("e2b_api_key".into(), e2b_key(&key).into());
                    o.insert("api_key".into(), key.into());
                }
                print_json(&v)?;
                return Ok(0);
            }
            outln!("user/{} created", user.name);
            let mut f = Fields::new();
            f.add("  ID", &user.id)
                .add("  Subnet", user.subnet_index.to_string())
                .add("  API key", &key)
                .add("  E2B key", e2b_key(&key));
            f.print();
            outln!("The API key is shown only once; store it now.");
            outln!("Use it with: bhatti setup --url http://<host>:8080 --token {key}");
        }
        UserCmd::List => {
            let store = open(&data_dir, false)?;
            let users = store.list_users()?;
            if ctx.json {
                print_json(&users)?;
                return Ok(0);
            }
            let mut t = Table::new(&[
                "NAME",
                "ID",
                "SANDBOXES",
                "MAX SANDBOXES",
                "MAX CPUS",
                "MAX MEMORY",
                "SUBNET",
                "CREATED",
            ]);
            for u in &users {
                let n = store
                    .count_active_sandboxes(&u.id)
                    .map(|n| n.to_string())
                    .unwrap_or_else(|_| "?".into());
                t.row([
                    u.name.clone(),
                    u.id.clone(),
                    n,
                    u.quotas.max_sandboxes.to_string(),
                    u.quotas.max_cpus_per_sandbox.to_string(),
                    format!("{} MB", u.quotas.max_memory_mb_per_sandbox),
                    u.subnet_index.to_string(),
                    u.created_at.clone(),
                ]);
            }
            t.print_or("No users. Create one: bhatti user create --name NAME");
        }
        UserCmd::Delete { name, yes } => {
            let store = open(&data_dir, false)?;
            let user = by_name(&store, &name)?;
            if !ctx.confirm(yes, &format!("Delete user/{name} ({})?", user.id))? {
                return aborted();
            }
            let removal = match store.delete_user(&user.id) {
                Ok(r) => r,
                Err(StoreError::Conflict(why)) => {
                    bail!("{why}; destroy them first (as that user: bhatti ls, bhatti secret list)")
                }
                Err(e) => return Err(e.into()),
            };
            for p in removal
                .volume_files
                .iter()
                .chain(&removal.snapshot_dirs)
                .chain(&removal.image_files)
            {
                if let Some(w) = remove_owned(&data_dir, p) {
                    eprintln!("Warning: {w}");
                }
            }
            if ctx.json {
                print_json(
                    &serde_json::json!({"status": "deleted", "id": user.id, "name": user.name}),
                )?;
            } else {
                outln!("user/{name} deleted");
            }
        }
        UserCmd::RotateKey { name } => {
            let store = open(&data_dir, false)?;
            let user = by_name(&store, &name)?;
            let key = store.rotate_api_key(&user.id)?;
            if ctx.json {
                print_json(
                    &serde_json::json!({"id": user.id, "name": user.name, "api_key": key, "e2b_api_key": e2b_key(&key)}),
                )?;
                return Ok(0);
            }
            outln!("user/{name} key rotated; the old key no longer works");
            outln!("  API key: {key}");
            outln!("  E2B key: {}", e2b_key(&key));
            outln!("The API key is shown only once; store it now.");
        }
    }
    Ok(0)
}

/// The same key in the form E2B's SDKs accept (`e2b_<hex>`; they refuse
/// any other prefix before sending a request).
fn e2b_key(key: &str) -> String {
    format!("e2b_{}", key.strip_prefix("bht_").unwrap_or(key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removes_only_inside_the_data_dir() {
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let inner = root.path().join("volumes/u/v.ext4");
        std::fs::create_dir_all(inner.parent().unwrap()).unwrap();
        std::fs::write(&inner, b"x").unwrap();
        let snap = root.path().join("snapshots/u/s");
        std::fs::create_dir_all(&snap).unwrap();
        std::fs::write(snap.join("mem.snap"), b"x").unwrap();
        let out = outside.path().join("keep");
        std::fs::write(&out, b"x").unwrap();

        assert_eq!(remove_owned(root.path(), inner.to_str().unwrap()), None);
        assert!(!inner.exists());
        assert_eq!(remove_owned(root.path(), "snapshots/u/s"), None);
        assert!(!snap.exists());
        assert!(remove_owned(root.path(), out.to_str().unwrap()).is_some());
        assert!(out.exists());
        assert_eq!(remove_owned(root.path(), "/gone/already"), None);
        assert_eq!(remove_owned(root.path(), ""), None);
        assert!(remove_owned(root.path(), root.path().to_str().unwrap()).is_some());
        assert!(root.path().exists());
    }
}
