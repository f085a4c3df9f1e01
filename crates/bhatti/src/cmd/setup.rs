//! `bhatti setup [--url URL --token KEY]`: save the API URL and key in
//! `~/.bhatti/config.yaml` (mode 0600; under sudo, the invoking user's
//! file, owned by them) and check them with `GET /sandboxes`.
//!
//! With both flags it never prompts and exits non-zero when the check
//! fails, so installers can use it; otherwise it asks, masking the key.
//! Other keys already in the file are kept.
//!
//! `bhatti setup --system` installs the daemon as a systemd service
//! instead: the shipped unit (`packaging/systemd/bhatti.service`) with
//! `ExecStart` pointing at this binary.

use std::io::{BufRead, IsTerminal, Write};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use bhatti_client::{
    invoking_home, sudo_user, user_config_path, Client, ClientConfig, Endpoint, DEFAULT_URL,
};
use clap::Args;
use nix::sys::termios::{tcgetattr, tcsetattr, LocalFlags, SetArg};

use super::Ctx;
use crate::output::print_json;

/// The flags are the global `--url` and `--token`.
#[derive(Debug, Args)]
pub struct SetupArgs {
    /// Install the daemon as a systemd service (`bhatti.service`) rather
    /// than configure this CLI.
    #[arg(long)]
    pub system: bool,
    /// With --system: install under this root instead of / (packaging).
    #[arg(long, value_name = "DIR", requires = "system", default_value = "/")]
    pub root: PathBuf,
}

/// The shipped unit.
const UNIT: &str = include_str!("../../../../packaging/systemd/bhatti.service");

/// The unit with `ExecStart` naming `exe`.
pub fn unit_for(exe: &Path) -> String {
    UNIT.lines()
        .map(|l| {
            if l.starts_with("ExecStart=") {
                format!("ExecStart={} serve", exe.display())
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

/// Writes `<root>/etc/systemd/system/bhatti.service` and, on a running
/// systemd at `/`, reloads it.
fn install_service(ctx: &Ctx, root: &Path) -> anyhow::Result<i32> {
    let exe = std::env::current_exe()
        .and_then(|p| p.canonicalize())
        .context("find this binary")?;
    let dir = root.join("etc/systemd/system");
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    let path = dir.join("bhatti.service");
    bhatti_durable::write(&path, unit_for(&exe).as_bytes(), 0o644)
        .with_context(|| format!("write {}", path.display()))?;
    let live = root == Path::new("/") && Path::new("/run/systemd/system").is_dir();
    if live {
        // Members of this group use the CLI without root (the daemon's
        // group socket, /run/bhatti/api.sock).
        let has_group = nix::unistd::Group::from_name("bhatti").is_ok_and(|g| g.is_some());
        if !has_group {
            let ok = std::process::Command::new("groupadd")
                .args(["--system", "bhatti"])
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                bail!("`groupadd --system bhatti` failed");
            }
        }
        let ok = std::process::Command::new("systemctl")
            .arg("daemon-reload")
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            bail!(
                "wrote {} but `systemctl daemon-reload` failed",
                path.display()
            );
        }
    }
    if ctx.json {
        print_json(&serde_json::json!({"unit": path, "exec": exe}))?;
    } else {
        outln!("installed {}", path.display());
        outln!("start it now and at boot: systemctl enable --now bhatti");
        outln!("let a user in without root: usermod -aG bhatti USER (then log in again)");
    }
    Ok(0)
}

fn prompt(question: &str) -> anyhow::Result<String> {
    eprint!("{question}");
    let _ = std::io::stderr().flush();
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    Ok(line.trim().to_string())
}

/// Reads a line with echo off.
fn prompt_secret(question: &str) -> anyhow::Result<String> {
    let stdin = std::io::stdin();
    let saved = tcgetattr(&stdin).ok();
    if let Some(t) = &saved {
        let mut quiet = t.clone();
        quiet.local_flags.remove(LocalFlags::ECHO);
        quiet.local_flags.insert(LocalFlags::ECHONL);
        let _ = tcsetattr(&stdin, SetArg::TCSANOW, &quiet);
    }
    let r = prompt(question);
    if let Some(t) = &saved {
        let _ = tcsetattr(&stdin, SetArg::TCSANOW, t);
    }
    r
}

/// The new file contents: the existing YAML mapping (if any) with
/// `api_url` and `auth_token` set, and `ca_file` when one was given.
pub fn merged_config(
    existing: Option<&str>,
    url: &str,
    token: &str,
    ca_file: Option<&Path>,
) -> anyhow::Result<String> {
    use serde_norway::{Mapping, Value};
    let mut map = match existing.map(str::trim).filter(|s| !s.is_empty()) {
        Some(text) => match serde_norway::from_str::<Value>(text)? {
            Value::Mapping(m) => m,
            Value::Null => Mapping::new(),
            _ => bail!("the existing config is not a YAML mapping"),
        },
        None => Mapping::new(),
    };
    map.insert("api_url".into(), url.into());
    map.insert("auth_token".into(), token.into());
    if let Some(ca) = ca_file {
        map.insert("ca_file".into(), ca.to_string_lossy().as_ref().into());
    }
    Ok(serde_norway::to_string(&Value::Mapping(map))?)
}

/// Writes the config atomically with mode 0600 and hands it (and the
/// directory) to the sudo invoker.
fn write_config(path: &Path, url: &str, token: &str, ca_file: Option<&Path>) -> anyhow::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("create {}", dir.display()))?;
    let existing = match std::fs::read_to_string(path) {
        Ok(t) => Some(t),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e).with_context(|| format!("read {}", path.display())),
    };
    let text = merged_config(existing.as_deref(), url, token, ca_file)
        .with_context(|| format!("update {}", path.display()))?;
    bhatti_durable::write(path, text.as_bytes(), 0o600)
        .with_context(|| format!("write {}", path.display()))?;
    if let Some(u) = sudo_user() {
        for p in [dir, path] {
            let _ = nix::unistd::chown(p, Some(u.uid), Some(u.gid));
        }
    }
    Ok(())
}

pub async fn run(ctx: &Ctx, a: SetupArgs) -> anyhow::Result<i32> {
    if a.system {
        return install_service(ctx, &a.root);
    }
    let given_url = ctx.overrides.url.clone().filter(|u| !u.is_empty());
    let given_token = ctx.overrides.token.clone().filter(|t| !t.is_empty());
    let (url, token) = match (given_url, given_token) {
        (Some(u), Some(t)) => (u, t),
        (u, t) => {
            if !std::io::stdin().is_terminal() {
                bail!("setup needs a terminal to ask; or pass both --url and --token");
            }
            let url = match u {
                Some(u) => u,
                None => {
                    let default = ClientConfig::resolve(&ctx.overrides)
                        .map(|c| c.endpoint.to_string())
                        .unwrap_or_else(|_| DEFAULT_URL.to_string());
                    let answer = prompt(&format!("API URL [{default}]: "))?;
                    if answer.is_empty() {
                        default
                    } else {
                        answer
                    }
                }
            };
            let token = match t {
                Some(t) => t,
                None => prompt_secret("API key: ")?,
            };
            if token.is_empty() {
                bail!("no API key given");
            }
            (url, token)
        }
    };
    let endpoint = Endpoint::parse(&url).map_err(bhatti_client::ClientError::from)?;
    let home: PathBuf = invoking_home().context("cannot tell your home directory (set HOME)")?;
    let path = user_config_path(&home);
    // Saved absolute, so the file works from any directory.
    let ca_file = match &ctx.overrides.ca_file {
        Some(p) => {
            Some(std::fs::canonicalize(p).with_context(|| format!("CA file {}", p.display()))?)
        }
        None => None,
    };
    write_config(&path, &endpoint.to_string(), &token, ca_file.as_deref())?;
    if !ctx.json {
        outln!("Saved {}", path.display());
    }

    let client = Client::new(ClientConfig {
        ca_file,
        ..ClientConfig::new(endpoint.clone(), Some(token))
    })?;
    let list = client
        .list_sandboxes(&[])
        .await
        .context("testing the key with GET /sandboxes")?;
    let version = client.server_version();
    if ctx.json {
        print_json(&serde_json::json!({
            "config": path,
            "api_url": endpoint.to_string(),
            "ok": true,
            "sandboxes": list.len(),
            "server_version": version,
        }))?;
    } else {
        outln!(
            "Connected to {endpoint} (server {}): {} sandbox(es)",
            version.as_deref().unwrap_or("unknown version"),
            list.len()
        );
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_keeps_other_keys() {
        let out = merged_config(
            Some("listen: \":9000\"\napi_url: http://old:1\n"),
            "http://new:2",
            "bht_k",
            None,
        )
        .unwrap();
        let v: serde_norway::Value = serde_norway::from_str(&out).unwrap();
        assert_eq!(v["listen"].as_str(), Some(":9000"));
        assert_eq!(v["api_url"].as_str(), Some("http://new:2"));
        assert_eq!(v["auth_token"].as_str(), Some("bht_k"));
        let fresh = merged_config(None, "http://a:1", "t", None).unwrap();
        assert!(fresh.contains("api_url"));
        assert!(!fresh.contains("ca_file"));
        let ca = merged_config(None, "https://a", "t", Some(Path::new("/etc/ca.pem"))).unwrap();
        let v: serde_norway::Value = serde_norway::from_str(&ca).unwrap();
        assert_eq!(v["ca_file"].as_str(), Some("/etc/ca.pem"));
        assert!(merged_config(Some("- a\n- b\n"), "u", "t", None).is_err());
        assert!(merged_config(Some("\n"), "u", "t", None).is_ok());
    }

    #[test]
    fn writes_0600() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join(".bhatti/config.yaml");
        write_config(&p, "http://h:1", "tok", None).unwrap();
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        write_config(&p, "http://h:2", "tok2", None).unwrap();
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(text.contains("http://h:2"));
        assert!(!p.with_extension("yaml.tmp").exists());
    }
}
