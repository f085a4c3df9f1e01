//! `enable`, `disable`, `mask`, `unmask`, `is-enabled`: the symlinks under
//! `/etc/systemd/system` that say what starts at boot.
//!
//! These are plain filesystem operations, as with systemd, so they work
//! without the manager too (inside an image build's chroot, say), and the
//! manager and the offline `systemctl` share them.

use std::path::{Path, PathBuf};

use super::unit::{self, SearchPath, UnitError, UnitName};

/// What `is-enabled` answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnableState {
    /// A `*.wants`/`*.requires` link names it.
    Enabled,
    /// Nothing links it, but it could be enabled.
    Disabled,
    /// It has no `[Install]` section: started only as a dependency.
    Static,
    /// A symlink to `/dev/null`.
    Masked,
    /// A name that is an alias of another unit.
    Alias,
}

impl EnableState {
    /// The word systemctl prints.
    pub fn as_str(self) -> &'static str {
        match self {
            EnableState::Enabled => "enabled",
            EnableState::Disabled => "disabled",
            EnableState::Static => "static",
            EnableState::Masked => "masked",
            EnableState::Alias => "alias",
        }
    }

    /// `is-enabled`'s exit status: 0 for the states that start (or can be
    /// started) as configured.
    pub fn exit_code(self) -> i32 {
        match self {
            EnableState::Enabled | EnableState::Static | EnableState::Alias => 0,
            EnableState::Disabled | EnableState::Masked => 1,
        }
    }
}

fn io(what: &Path) -> impl FnOnce(std::io::Error) -> UnitError + '_ {
    move |e| UnitError::Io {
        file: what.display().to_string(),
        error: e.to_string(),
    }
}

/// The links pointing at `name` in `<config_dir>/*.wants` and `*.requires`.
fn links(path: &SearchPath, name: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(&path.config_dir) else {
        return out;
    };
    for e in rd.flatten() {
        let d = e.file_name().to_string_lossy().into_owned();
        if d.ends_with(".wants") || d.ends_with(".requires") {
            let l = e.path().join(name);
            if l.symlink_metadata().is_ok() {
                out.push(l);
            }
        }
    }
    out
}

/// The enablement state of `name`.
pub fn state(path: &SearchPath, name: &str) -> Result<EnableState, UnitError> {
    let n = UnitName::parse(name)?;
    if unit::is_masked(path, &n.full) {
        return Ok(EnableState::Masked);
    }
    let l = unit::load(path, &n.full)?;
    if !links(path, &n.full).is_empty() {
        return Ok(EnableState::Enabled);
    }
    let file_name = l
        .fragment
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default();
    if n.instance.is_none() && file_name != n.full {
        return Ok(EnableState::Alias);
    }
    Ok(if l.installable() {
        EnableState::Disabled
    } else {
        EnableState::Static
    })
}

/// Creates the `[Install]` links; returns one line per link made
/// (systemctl's `Created symlink …`).
pub fn enable(path: &SearchPath, name: &str) -> Result<Vec<String>, UnitError> {
    enable_with(path, name, &mut std::collections::BTreeSet::new())
}

/// `enable`, remembering the units already enabled in this call: `Also=`
/// chains may loop (a ↔ b), and this runs in PID 1.
fn enable_with(
    path: &SearchPath,
    name: &str,
    seen: &mut std::collections::BTreeSet<String>,
) -> Result<Vec<String>, UnitError> {
    let n = UnitName::parse(name)?;
    if !seen.insert(n.full.clone()) {
        return Ok(Vec::new());
    }
    if unit::is_masked(path, &n.full) {
        return Err(UnitError::Masked(n.full));
    }
    let l = unit::load(path, &n.full)?;
    let mut made = Vec::new();
    let target = l.fragment.clone();
    let expand = |w: &str| unit::expand_specifiers(w, &n, "/root");
    let mut links = Vec::new();
    for (key, kind) in [("WantedBy", "wants"), ("RequiredBy", "requires")] {
        for of in l.words("Install", key) {
            // Only a unit name: never a path out of the config directory.
            if UnitName::parse(&expand(&of)).is_err() {
                continue;
            }
            links.push(
                path.config_dir
                    .join(format!("{}.{kind}", expand(&of)))
                    .join(&n.full),
            );
        }
    }
    for alias in l.words("Install", "Alias") {
        let alias = expand(&alias);
        if UnitName::parse(&alias).is_ok() {
            links.push(path.config_dir.join(alias));
        }
    }
    for link in links {
        if std::fs::read_link(&link).is_ok_and(|t| t == target) {
            continue;
        }
        if let Some(dir) = link.parent() {
            std::fs::create_dir_all(dir).map_err(io(dir))?;
        }
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&target, &link).map_err(io(&link))?;
        made.push(format!(
            "Created symlink {} → {}.",
            link.display(),
            target.display()
        ));
    }
    for also in l.words("Install", "Also") {
        made.extend(enable_with(path, &also, seen)?);
    }
    Ok(made)
}

/// Removes every link to `name` (wants, requires, aliases).
pub fn disable(path: &SearchPath, name: &str) -> Result<Vec<String>, UnitError> {
    let n = UnitName::parse(name)?;
    let mut removed = Vec::new();
    for l in links(path, &n.full) {
        std::fs::remove_file(&l).map_err(io(&l))?;
        removed.push(format!("Removed {}.", l.display()));
    }
    if let Ok(loaded) = unit::load(path, &n.full) {
        for alias in loaded.words("Install", "Alias") {
            let link = path.config_dir.join(&alias);
            if std::fs::read_link(&link).is_ok_and(|t| t == loaded.fragment) {
                std::fs::remove_file(&link).map_err(io(&link))?;
                removed.push(format!("Removed {}.", link.display()));
            }
        }
    }
    Ok(removed)
}

/// Links `name` to `/dev/null` in the config directory.
pub fn mask(path: &SearchPath, name: &str) -> Result<Vec<String>, UnitError> {
    let n = UnitName::parse(name)?;
    let link = path.config_dir.join(&n.full);
    if std::fs::read_link(&link).is_ok_and(|t| t == Path::new("/dev/null")) {
        return Ok(Vec::new());
    }
    if link
        .symlink_metadata()
        .is_ok_and(|m| !m.file_type().is_symlink())
    {
        return Err(UnitError::BadSetting(format!(
            "{} is a unit file of its own, not a link: refusing to mask over it",
            link.display()
        )));
    }
    std::fs::create_dir_all(&path.config_dir).map_err(io(&path.config_dir))?;
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink("/dev/null", &link).map_err(io(&link))?;
    Ok(vec![format!(
        "Created symlink {} → /dev/null.",
        link.display()
    )])
}

/// Removes a `/dev/null` link made by [`mask`].
pub fn unmask(path: &SearchPath, name: &str) -> Result<Vec<String>, UnitError> {
    let n = UnitName::parse(name)?;
    let link = path.config_dir.join(&n.full);
    if std::fs::read_link(&link).is_ok_and(|t| t == Path::new("/dev/null")) {
        std::fs::remove_file(&link).map_err(io(&link))?;
        return Ok(vec![format!("Removed {}.", link.display())]);
    }
    Ok(Vec::new())
}

/// The services enabled for boot: links in `multi-user.target.wants` and
/// `default.target.wants` (Debian's packages use the first).
pub fn enabled_at_boot(path: &SearchPath) -> Vec<String> {
    let mut out = Vec::new();
    for t in [
        "multi-user.target",
        "default.target",
        "sysinit.target",
        "basic.target",
    ] {
        for kind in ["wants", "requires"] {
            let Ok(rd) = std::fs::read_dir(path.config_dir.join(format!("{t}.{kind}"))) else {
                continue;
            };
            for e in rd.flatten() {
                let n = e.file_name().to_string_lossy().into_owned();
                if n.ends_with(".service") && !out.contains(&n) {
                    out.push(n);
                }
            }
        }
    }
    out.sort();
    out
}

/// Every unit file on the search path: (name, state), for `list-unit-files`.
pub fn unit_files(path: &SearchPath) -> Vec<(String, String)> {
    let mut names = std::collections::BTreeSet::new();
    for d in &path.dirs {
        let Ok(rd) = std::fs::read_dir(d) else {
            continue;
        };
        for e in rd.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if n.ends_with(".service") || n.ends_with(".target") {
                names.insert(n);
            }
        }
    }
    names
        .into_iter()
        .map(|n| {
            let s = if n.contains("@.") {
                "static".to_string()
            } else {
                match state(path, &n) {
                    Ok(s) => s.as_str().to_string(),
                    Err(UnitError::Masked(_)) => "masked".into(),
                    Err(_) => "bad".into(),
                }
            };
            (n, s)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enable_disable_mask_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let p = SearchPath::under(dir.path());
        let lib = dir.path().join("lib/systemd/system");
        std::fs::create_dir_all(&lib).unwrap();
        std::fs::write(
            lib.join("web.service"),
            "[Service]\nExecStart=/bin/web\n[Install]\nWantedBy=multi-user.target\nAlias=www.service\n",
        )
        .unwrap();
        std::fs::write(lib.join("dep.service"), "[Service]\nExecStart=/bin/dep\n").unwrap();
        assert_eq!(state(&p, "web").unwrap(), EnableState::Disabled);
        assert_eq!(state(&p, "dep").unwrap(), EnableState::Static);
        let made = enable(&p, "web").unwrap();
        assert_eq!(made.len(), 2, "{made:?}");
        assert_eq!(state(&p, "web").unwrap(), EnableState::Enabled);
        assert_eq!(state(&p, "www").unwrap(), EnableState::Alias);
        assert_eq!(enabled_at_boot(&p), ["web.service"]);
        assert!(enable(&p, "web").unwrap().is_empty(), "idempotent");
        assert_eq!(disable(&p, "web").unwrap().len(), 2);
        assert_eq!(state(&p, "web").unwrap(), EnableState::Disabled);
        assert!(enabled_at_boot(&p).is_empty());
        mask(&p, "web").unwrap();
        assert_eq!(state(&p, "web").unwrap(), EnableState::Masked);
        assert!(matches!(enable(&p, "web"), Err(UnitError::Masked(_))));
        unmask(&p, "web").unwrap();
        assert_eq!(state(&p, "web").unwrap(), EnableState::Disabled);
    }

    #[test]
    fn also_loops_end_and_wanted_by_stays_in_the_config_dir() {
        let dir = tempfile::tempdir().unwrap();
        let p = SearchPath::under(dir.path());
        let lib = dir.path().join("lib/systemd/system");
        std::fs::create_dir_all(&lib).unwrap();
        // a ↔ b through Also=: once each, not a stack overflow in PID 1.
        std::fs::write(
            lib.join("a.service"),
            "[Service]\nExecStart=/bin/a\n[Install]\nWantedBy=multi-user.target\nAlso=b.service\n",
        )
        .unwrap();
        std::fs::write(
            lib.join("b.service"),
            "[Service]\nExecStart=/bin/b\n[Install]\nWantedBy=multi-user.target ../../../escape.target\nAlso=a.service\n",
        )
        .unwrap();
        let made = enable(&p, "a").unwrap();
        assert_eq!(made.len(), 2, "{made:?}");
        assert_eq!(enabled_at_boot(&p), ["a.service", "b.service"]);
        assert!(!dir.path().join("escape.target.wants").exists());
    }
}
