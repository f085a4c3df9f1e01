//! The config drive (`/dev/vdb`, ext4, read-only) and what the guest does with it.
//!
//! The drive is mounted, `config.json` is read into memory, and the drive is
//! unmounted and its mount point removed straight away, before anything runs
//! as the sandbox user: the guest must not be able to re-read the agent token.
//! Everything else (hostname, DNS, files, volumes, the env file) is applied from
//! the in-memory copy.

use std::path::{Path, PathBuf};

use base64::Engine;
use bhatti_protocol::config::{ConfigFile, ConfigVolume, GuestConfig};
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::unistd::{chown, Gid, Uid};

use super::{io_err, GuestError};

/// The config drive's block device.
pub(crate) const CONFIG_DEVICE: &str = "/dev/vdb";
/// Where the drive is mounted just long enough to read `config.json`.
const CONFIG_MOUNT: &str = "/run/bhatti/config";
/// The config's environment as `KEY=VALUE` lines (0600, root).
pub(crate) const CONFIG_ENV: &str = "/run/bhatti/config-env";
/// The hostname when the config names none.
const DEFAULT_HOSTNAME: &str = "bhatti";
/// The sandbox user's uid/gid.
const USER_ID: u32 = 1000;

/// Reads the config drive. `Ok(None)` when there is no drive at all.
pub fn load() -> Result<Option<GuestConfig>, GuestError> {
    load_from(Path::new(CONFIG_DEVICE), Path::new(CONFIG_MOUNT))
}

fn load_from(device: &Path, mnt: &Path) -> Result<Option<GuestConfig>, GuestError> {
    if !device.exists() {
        return Ok(None);
    }
    std::fs::create_dir_all(mnt).map_err(io_err(format!("mkdir {}", mnt.display())))?;
    mount(
        Some(device),
        mnt,
        Some("ext4"),
        MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None::<&str>,
    )
    .map_err(|source| GuestError::Mount {
        fstype: "ext4".into(),
        target: mnt.display().to_string(),
        source,
    })?;
    let raw = std::fs::read(mnt.join("config.json"));
    // Unmount before even looking at the result: the token must not stay readable.
    unmount_config(mnt)?;
    let raw = raw.map_err(io_err("read config.json"))?;
    Ok(Some(serde_json::from_slice(&raw)?))
}

fn unmount_config(mnt: &Path) -> Result<(), GuestError> {
    if let Err(e) = umount2(mnt, MntFlags::empty()) {
        tracing::warn!(error = %e, "unmount config drive failed; detaching it");
        umount2(mnt, MntFlags::MNT_DETACH).map_err(|source| GuestError::Sys {
            what: format!("unmount {}", mnt.display()),
            source,
        })?;
    }
    std::fs::remove_dir(mnt).map_err(io_err(format!("rmdir {}", mnt.display())))
}

/// Applies the config, logging each failure and carrying on.
pub fn apply(cfg: &GuestConfig) {
    let hostname = if cfg.hostname.is_empty() {
        DEFAULT_HOSTNAME
    } else {
        cfg.hostname.as_str()
    };
    if let Err(e) = apply_hostname(hostname) {
        tracing::error!("hostname: {e}");
    }
    if let Err(e) = write_atomic(Path::new("/etc/resolv.conf"), &resolv_conf(cfg), 0o644) {
        tracing::error!("resolv.conf: {e}");
    }
    for (path, file) in &cfg.files {
        if let Err(e) = write_config_file(Path::new(path), file) {
            tracing::error!("config file {path}: {e}");
        }
    }
    for v in &cfg.volumes {
        if let Err(e) = mount_volume(v) {
            tracing::error!("volume {} on {}: {e}", v.device, v.mount);
        }
    }
    if let Err(e) = write_atomic(Path::new(CONFIG_ENV), &env_file(&cfg.env), 0o600) {
        tracing::error!("{CONFIG_ENV}: {e}");
    }
}

pub(crate) fn apply_hostname(name: &str) -> Result<(), GuestError> {
    nix::unistd::sethostname(name).map_err(|source| GuestError::Sys {
        what: format!("sethostname {name:?}"),
        source,
    })?;
    write_atomic(Path::new("/etc/hostname"), &format!("{name}\n"), 0o644)?;
    let hosts = std::fs::read_to_string("/etc/hosts").unwrap_or_default();
    write_atomic(Path::new("/etc/hosts"), &hosts_with(&hosts, name), 0o644)?;
    write_atomic(Path::new("/etc/mailname"), &format!("{name}\n"), 0o644)
}

/// `/etc/hosts` with the `127.0.1.1` line naming `name` (replaced or appended;
/// a missing localhost line is added too).
pub fn hosts_with(hosts: &str, name: &str) -> String {
    let mut out = String::new();
    let mut has_localhost = false;
    for line in hosts.lines() {
        let first = line.split_whitespace().next();
        if first == Some("127.0.1.1") {
            continue;
        }
        if first == Some("127.0.0.1") {
            has_localhost = true;
        }
        out.push_str(line);
        out.push('\n');
    }
    if !has_localhost {
        out.insert_str(0, "127.0.0.1\tlocalhost\n");
    }
    out.push_str(&format!("127.0.1.1\t{name}\n"));
    out
}

/// `/etc/resolv.conf`: the sandbox network's resolver when there is one, else
/// the configured list, else public resolvers.
pub fn resolv_conf(cfg: &GuestConfig) -> String {
    if !cfg.dns_internal.is_empty() {
        return format!(
            "nameserver {}\noptions timeout:2 attempts:1\n",
            cfg.dns_internal
        );
    }
    let servers: Vec<&str> = if cfg.dns.is_empty() {
        vec!["1.1.1.1", "8.8.8.8"]
    } else {
        cfg.dns.iter().map(String::as_str).collect()
    };
    servers
        .iter()
        .map(|s| format!("nameserver {s}\n"))
        .collect()
}

/// `KEY=VALUE` lines for `EnvironmentFile=`. Values that need it are
/// double-quoted with `\\`, `\"`, `\n` escapes (systemd's syntax); keys that
/// cannot be expressed are skipped.
pub fn env_file(env: &std::collections::BTreeMap<String, String>) -> String {
    let mut out = String::new();
    for (k, v) in env {
        let key_ok = !k.is_empty()
            && !k.starts_with(|c: char| c.is_ascii_digit())
            && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !key_ok {
            tracing::warn!(key = %k, "config env: key not representable in {CONFIG_ENV}; skipped");
            continue;
        }
        let plain = v.chars().all(|c| {
            c.is_ascii_graphic() && !matches!(c, '"' | '\'' | '\\' | '$' | '`' | '#' | ';')
        });
        if plain {
            out.push_str(&format!("{k}={v}\n"));
        } else {
            let esc = v
                .replace('\\', "\\\\")
                .replace('"', "\\\"")
                .replace('\n', "\\n");
            out.push_str(&format!("{k}=\"{esc}\"\n"));
        }
    }
    out
}

/// Parses an octal mode string (`"0644"`, `"600"`); empty or invalid gives the
/// default 0644.
pub fn parse_mode(s: &str) -> u32 {
    match u32::from_str_radix(s, 8) {
        Ok(m) if m != 0 && m <= 0o7777 => m,
        _ => 0o644,
    }
}

fn write_config_file(path: &Path, f: &ConfigFile) -> Result<(), GuestError> {
    let data = base64::engine::general_purpose::STANDARD
        .decode(f.content.trim())
        .map_err(|_| GuestError::Invalid {
            what: "base64 content",
            value: path.display().to_string(),
        })?;
    write_user_file(path, &data, parse_mode(&f.mode))
}

/// Writes a file for the sandbox user as root (a config file at boot, or
/// one an applied configuration carries, already decoded).
pub(crate) fn write_user_file(path: &Path, data: &[u8], mode: u32) -> Result<(), GuestError> {
    if !path.is_absolute() {
        return Err(GuestError::Invalid {
            what: "config file path (must be absolute)",
            value: path.display().to_string(),
        });
    }
    // The root filesystem outlives a boot: symlinks the sandbox user planted
    // in an earlier one must not steer root's writes now.
    let path = resolve_root_owned(path)?;
    let path = path.as_path();
    let created = mkdir_p(path.parent().unwrap_or(Path::new("/")))?;
    // Replaced, never written through: an existing name may be a hard link the
    // user made to a system file. Owned by the user via the descriptor.
    write_atomic_owned(path, data, mode, Some(USER_ID))?;
    // The parent goes to the user too (as in the reference), but only where that
    // cannot hand the user a system directory: directories created here, and
    // existing ones under the user's own trees.
    if let Some(parent) = path.parent() {
        if created.iter().any(|d| d == parent) || is_user_tree(parent) {
            chown_user(parent)?;
        }
    }
    for d in &created {
        chown_user(d)?;
    }
    Ok(())
}

fn is_user_tree(p: &Path) -> bool {
    p.starts_with("/home/lohar") || p.starts_with("/workspace")
}

/// `mkdir -p`; returns the directories it created.
fn mkdir_p(dir: &Path) -> Result<Vec<PathBuf>, GuestError> {
    let mut missing = Vec::new();
    let mut cur = Some(dir);
    while let Some(d) = cur {
        if d.exists() {
            break;
        }
        missing.push(d.to_path_buf());
        cur = d.parent();
    }
    std::fs::create_dir_all(dir).map_err(io_err(format!("mkdir -p {}", dir.display())))?;
    Ok(missing)
}

fn chown_user(p: &Path) -> Result<(), GuestError> {
    chown(
        p,
        Some(Uid::from_raw(USER_ID)),
        Some(Gid::from_raw(USER_ID)),
    )
    .map_err(|source| GuestError::Sys {
        what: format!("chown {}", p.display()),
        source,
    })
}

fn mount_volume(v: &ConfigVolume) -> Result<(), GuestError> {
    if !v.mount.starts_with('/') {
        return Err(GuestError::Invalid {
            what: "volume mount point (must be absolute)",
            value: v.mount.clone(),
        });
    }
    // As for config files: no user-planted symlink may move the mount point.
    let target = resolve_root_owned(Path::new(&v.mount))?;
    let target = target.to_string_lossy().into_owned();
    std::fs::create_dir_all(&target).map_err(io_err(format!("mkdir {target}")))?;
    let mut flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    if v.read_only {
        flags |= MsFlags::MS_RDONLY;
    }
    let fs = if v.fs.is_empty() { "ext4" } else { &v.fs };
    mount(
        Some(v.device.as_str()),
        target.as_str(),
        Some(fs),
        flags,
        None::<&str>,
    )
    .map_err(|source| GuestError::Mount {
        fstype: fs.to_string(),
        target: target.clone(),
        source,
    })?;
    if !v.read_only {
        chown_user(Path::new(&target))?;
    }
    Ok(())
}

/// Most symlinks followed while resolving one path (the kernel's limit).
const MAX_SYMLINK_HOPS: usize = 40;

/// `path` with every symlink resolved, refusing any symlink root does not own
/// (components that do not exist yet are kept as they are, to be created).
///
/// Runs at boot, before anything else in the guest runs, so what is resolved
/// here is what the following writes and mounts act on; only the sandbox user's
/// leftovers from an earlier boot (the root filesystem persists) can be in the
/// way, and those are refused.
fn resolve_root_owned(path: &Path) -> Result<PathBuf, GuestError> {
    use std::collections::VecDeque;
    use std::os::unix::fs::MetadataExt;
    use std::path::Component;
    fn normal(p: &Path) -> impl Iterator<Item = std::ffi::OsString> + '_ {
        p.components().filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_owned()),
            Component::ParentDir => Some("..".into()),
            _ => None,
        })
    }
    let mut todo: VecDeque<std::ffi::OsString> = normal(path).collect();
    let mut out = PathBuf::from("/");
    let mut hops: usize = 0;
    while let Some(c) = todo.pop_front() {
        if c == ".." {
            out.pop();
            continue;
        }
        let next = out.join(&c);
        let md = match std::fs::symlink_metadata(&next) {
            Ok(md) => md,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                out = next;
                continue;
            }
            Err(e) => return Err(io_err(format!("lstat {}", next.display()))(e)),
        };
        if !md.file_type().is_symlink() {
            out = next;
            continue;
        }
        if md.uid() != 0 {
            return Err(GuestError::Invalid {
                what: "path through a symlink root does not own",
                value: format!("{} (at {})", path.display(), next.display()),
            });
        }
        hops = hops.saturating_add(1);
        if hops > MAX_SYMLINK_HOPS {
            return Err(GuestError::Invalid {
                what: "path with too many symlinks",
                value: path.display().to_string(),
            });
        }
        let target =
            std::fs::read_link(&next).map_err(io_err(format!("readlink {}", next.display())))?;
        if target.is_absolute() {
            out = PathBuf::from("/");
        }
        for t in normal(&target).collect::<Vec<_>>().into_iter().rev() {
            todo.push_front(t);
        }
    }
    Ok(out)
}

/// Writes `content` to `path` via a temp file + rename, with `mode`, owned by
/// root. A symlink at `path` (e.g. resolv.conf → a resolver stub) is replaced.
pub fn write_atomic(path: &Path, content: &str, mode: u32) -> Result<(), GuestError> {
    write_atomic_owned(path, content.as_bytes(), mode, None)
}

/// [`write_atomic`] with the file owned by `owner` (uid = gid), set on the
/// descriptor before the rename, never by path. Not fsynced: lohar writes
/// these files afresh on every boot (and a snapshot keeps the page cache),
/// so a sync would only cost boot time.
fn write_atomic_owned(
    path: &Path,
    content: &[u8],
    mode: u32,
    owner: Option<u32>,
) -> Result<(), GuestError> {
    let opts = bhatti_durable::Options {
        mode,
        owner: owner.map(|id| (id, id)),
        durable: false,
    };
    bhatti_durable::write_with(path, content, opts).map_err(|e| GuestError::Io {
        what: format!("write {}", path.display()),
        source: e,
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn hosts_line_replaced_or_added() {
        let h = "127.0.0.1\tlocalhost\n127.0.1.1\tbhatti\n::1\t\tlocalhost\n";
        assert_eq!(
            hosts_with(h, "vmtest"),
            "127.0.0.1\tlocalhost\n::1\t\tlocalhost\n127.0.1.1\tvmtest\n"
        );
        assert_eq!(hosts_with("", "x"), "127.0.0.1\tlocalhost\n127.0.1.1\tx\n");
    }

    #[test]
    fn resolv_conf_precedence() {
        let mut c = GuestConfig::default();
        assert_eq!(resolv_conf(&c), "nameserver 1.1.1.1\nnameserver 8.8.8.8\n");
        c.dns = vec!["9.9.9.9".into()];
        assert_eq!(resolv_conf(&c), "nameserver 9.9.9.9\n");
        c.dns_internal = "10.0.0.1".into();
        assert_eq!(
            resolv_conf(&c),
            "nameserver 10.0.0.1\noptions timeout:2 attempts:1\n"
        );
    }

    #[test]
    fn env_file_quotes_and_skips() {
        let env: BTreeMap<String, String> = [
            ("FOO", "bar"),
            ("SPACE", "a b"),
            ("Q", "say \"hi\"\nbye"),
            ("BAD-KEY", "x"),
            ("1X", "y"),
            ("EMPTY", ""),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(
            env_file(&env),
            "EMPTY=\nFOO=bar\nQ=\"say \\\"hi\\\"\\nbye\"\nSPACE=\"a b\"\n"
        );
    }

    #[test]
    fn modes() {
        assert_eq!(parse_mode(""), 0o644);
        assert_eq!(parse_mode("0600"), 0o600);
        assert_eq!(parse_mode("755"), 0o755);
        assert_eq!(parse_mode("0"), 0o644);
        assert_eq!(parse_mode("9"), 0o644);
        assert_eq!(parse_mode("-1"), 0o644);
    }

    #[test]
    fn atomic_write_replaces_symlink() {
        let d = tempfile::tempdir().expect("tempdir");
        let target = d.path().join("elsewhere");
        std::fs::write(&target, "old").expect("write");
        let link = d.path().join("resolv.conf");
        std::os::unix::fs::symlink(&target, &link).expect("symlink");
        write_atomic(&link, "nameserver 1.1.1.1\n", 0o600).expect("write_atomic");
        assert!(!link.symlink_metadata().expect("meta").is_symlink());
        assert_eq!(
            std::fs::read_to_string(&link).expect("read"),
            "nameserver 1.1.1.1\n"
        );
        assert_eq!(std::fs::read_to_string(&target).expect("read"), "old");
        let mode = std::fs::metadata(&link).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn resolution_follows_root_symlinks_and_refuses_others() {
        use std::os::unix::fs::symlink;
        let d = tempfile::tempdir().expect("tempdir");
        let real = d.path().join("real");
        std::fs::create_dir(&real).expect("mkdir");
        symlink(&real, d.path().join("link")).expect("symlink");
        symlink("../real/x", real.join("rel")).expect("symlink");
        let root = nix::unistd::geteuid().is_root();
        let got = resolve_root_owned(&d.path().join("link/new/file"));
        if root {
            // Root's own symlinks are followed (relative ones too); missing
            // components are kept.
            assert_eq!(got.expect("resolve"), real.join("new/file"));
            assert_eq!(
                resolve_root_owned(&real.join("rel")).expect("resolve"),
                real.join("x")
            );
            // The user's are refused.
            let user = d.path().join("planted");
            symlink("/etc", &user).expect("symlink");
            std::os::unix::fs::lchown(&user, Some(USER_ID), Some(USER_ID)).expect("lchown");
            let e = resolve_root_owned(&user.join("passwd")).expect_err("user symlink");
            assert!(e.to_string().contains("root does not own"), "{e}");
        } else {
            // Not root: every symlink here is someone else's than root's.
            assert!(got.is_err());
        }
        assert_eq!(
            resolve_root_owned(&d.path().join("a/../real")).expect("resolve"),
            real
        );
    }

    #[test]
    fn owned_atomic_write_replaces_a_hard_link() {
        let d = tempfile::tempdir().expect("tempdir");
        let system = d.path().join("system");
        std::fs::write(&system, "system").expect("write");
        let link = d.path().join("hard");
        std::fs::hard_link(&system, &link).expect("hard link");
        let me = nix::unistd::geteuid().as_raw();
        write_atomic_owned(&link, b"new", 0o640, Some(me)).expect("write");
        assert_eq!(std::fs::read_to_string(&system).expect("read"), "system");
        assert_eq!(std::fs::read_to_string(&link).expect("read"), "new");
    }

    #[test]
    fn missing_drive_is_no_config() {
        let d = tempfile::tempdir().expect("tempdir");
        let r = load_from(&d.path().join("no-such-dev"), &d.path().join("mnt"));
        assert!(matches!(r, Ok(None)));
    }
}
