//! `tmpfiles.d` at boot: the directories and files packages expect in
//! `/run` and `/var` (`/run/sshd`, `/run/redis` …), which systemd-tmpfiles
//! would make.
//!
//! Supported types: `d`/`D` (directory), `f`/`F` (file, `F` truncates),
//! `L`/`L+` (symlink, `+` replaces), `R` (remove recursively). Others are
//! skipped. A file in `/etc` overrides one of the same name in `/run`, and
//! both override `/usr/lib` and `/lib`.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

const DIRS: &[&str] = &[
    "etc/tmpfiles.d",
    "run/tmpfiles.d",
    "usr/lib/tmpfiles.d",
    "lib/tmpfiles.d",
];

/// One line of a tmpfiles.d file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// `d`, `f`, `L+` …
    pub kind: String,
    /// The path (absolute).
    pub path: String,
    /// Octal mode, if given.
    pub mode: Option<u32>,
    /// Owner, if given.
    pub user: Option<String>,
    /// Group, if given.
    pub group: Option<String>,
    /// The argument (file content, link target).
    pub arg: Option<String>,
}

/// Parses a tmpfiles.d file; malformed lines are skipped.
pub fn parse(text: &str) -> Vec<Entry> {
    let dash = |s: Option<&str>| s.filter(|v| *v != "-").map(str::to_string);
    text.lines()
        .filter_map(|l| {
            let l = l.trim();
            if l.is_empty() || l.starts_with('#') {
                return None;
            }
            let f: Vec<&str> = l
                .splitn(7, char::is_whitespace)
                .filter(|s| !s.is_empty())
                .collect();
            let (kind, path) = (f.first()?, f.get(1)?);
            if !path.starts_with('/') {
                return None;
            }
            Some(Entry {
                kind: kind.trim_end_matches('!').to_string(),
                path: path.to_string(),
                mode: dash(f.get(2).copied())
                    .and_then(|m| u32::from_str_radix(m.trim_start_matches('~'), 8).ok()),
                user: dash(f.get(3).copied()),
                group: dash(f.get(4).copied()),
                arg: dash(f.get(6).copied()),
            })
        })
        .collect()
}

/// The config files in effect, by name, in name order.
fn files(root: &Path) -> Vec<PathBuf> {
    let mut chosen: BTreeMap<String, PathBuf> = BTreeMap::new();
    for d in DIRS.iter().rev() {
        let Ok(rd) = std::fs::read_dir(root.join(d)) else {
            continue;
        };
        for e in rd.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if n.ends_with(".conf") {
                chosen.insert(n, e.path());
            }
        }
    }
    chosen.into_values().collect()
}

fn owner(e: &Entry) -> (Option<nix::unistd::Uid>, Option<nix::unistd::Gid>) {
    let uid = e.user.as_deref().and_then(|u| match u.parse::<u32>() {
        Ok(n) => Some(nix::unistd::Uid::from_raw(n)),
        Err(_) => nix::unistd::User::from_name(u)
            .ok()
            .flatten()
            .map(|u| u.uid),
    });
    let gid = e.group.as_deref().and_then(|g| match g.parse::<u32>() {
        Ok(n) => Some(nix::unistd::Gid::from_raw(n)),
        Err(_) => nix::unistd::Group::from_name(g)
            .ok()
            .flatten()
            .map(|g| g.gid),
    });
    (uid, gid)
}

/// Applies one entry under `root`.
pub fn apply(root: &Path, e: &Entry) -> std::io::Result<()> {
    let p = root.join(e.path.trim_start_matches('/'));
    let set_meta = |p: &Path, default_mode: u32| -> std::io::Result<()> {
        std::fs::set_permissions(
            p,
            std::fs::Permissions::from_mode(e.mode.unwrap_or(default_mode)),
        )?;
        let (u, g) = owner(e);
        if u.is_some() || g.is_some() {
            nix::unistd::chown(p, u, g).map_err(std::io::Error::from)?;
        }
        Ok(())
    };
    match e.kind.as_str() {
        "d" | "D" => {
            std::fs::create_dir_all(&p)?;
            set_meta(&p, 0o755)
        }
        "f" | "F" => {
            if e.kind == "F" || !p.exists() {
                if let Some(d) = p.parent() {
                    std::fs::create_dir_all(d)?;
                }
                std::fs::write(&p, e.arg.as_deref().unwrap_or("").replace("\\n", "\n"))?;
                set_meta(&p, 0o644)?;
            }
            Ok(())
        }
        "L" | "L+" => {
            let Some(target) = &e.arg else { return Ok(()) };
            if e.kind == "L+" && p.symlink_metadata().is_ok() {
                if p.is_dir() && !p.symlink_metadata()?.file_type().is_symlink() {
                    std::fs::remove_dir_all(&p)?;
                } else {
                    std::fs::remove_file(&p)?;
                }
            }
            if p.symlink_metadata().is_err() {
                if let Some(d) = p.parent() {
                    std::fs::create_dir_all(d)?;
                }
                std::os::unix::fs::symlink(target, &p)?;
            }
            Ok(())
        }
        "R" => {
            if p.is_dir() {
                std::fs::remove_dir_all(&p)
            } else if p.exists() {
                std::fs::remove_file(&p)
            } else {
                Ok(())
            }
        }
        _ => Ok(()),
    }
}

/// Applies every tmpfiles.d file under `root`; errors are logged, never
/// fatal.
pub fn apply_all(root: &Path) {
    for f in files(root) {
        let Ok(text) = std::fs::read_to_string(&f) else {
            continue;
        };
        for e in parse(&text) {
            if let Err(err) = apply(root, &e) {
                tracing::warn!(file = %f.display(), path = %e.path, "tmpfiles {}: {err}", e.kind);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_applies_types() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("usr/lib/tmpfiles.d")).unwrap();
        std::fs::create_dir_all(root.join("etc/tmpfiles.d")).unwrap();
        std::fs::write(
            root.join("usr/lib/tmpfiles.d/x.conf"),
            "d /run/x 0750 - - -\nf /run/x/f 0600 - - - hello\nL+ /run/link - - - - /run/x\nR /gone\n",
        )
        .unwrap();
        std::fs::write(root.join("usr/lib/tmpfiles.d/y.conf"), "d /run/from-lib\n").unwrap();
        std::fs::write(root.join("etc/tmpfiles.d/y.conf"), "d /run/from-etc\n").unwrap();
        std::fs::create_dir_all(root.join("gone/sub")).unwrap();
        apply_all(root);
        let m = std::fs::metadata(root.join("run/x")).unwrap();
        assert_eq!(m.permissions().mode() & 0o777, 0o750);
        assert_eq!(
            std::fs::read_to_string(root.join("run/x/f")).unwrap(),
            "hello"
        );
        assert_eq!(
            std::fs::read_link(root.join("run/link")).unwrap(),
            Path::new("/run/x")
        );
        assert!(!root.join("gone").exists());
        assert!(root.join("run/from-etc").is_dir());
        assert!(
            !root.join("run/from-lib").exists(),
            "/etc overrides /usr/lib"
        );
    }
}
