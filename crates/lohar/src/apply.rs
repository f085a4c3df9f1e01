//! APPLY_CONFIG: making a booted guest one sandbox after the fact.
//!
//! A pooled VM boots before anyone owns it, and a sandbox restored from a
//! template snapshot wakes with the template's memory: neither has its
//! sandbox's hostname, env, files, token or a private RNG state. The host
//! sends them here, on a connection authenticated with the pool's (or the
//! template's) token. Everything is checked before anything is applied;
//! the new token is set last, and from then on the old one is refused.
//!
//! What belongs to the machine (hostname, root-owned files, the kernel's
//! entropy pool) is only touched in guest mode ([`AgentConfig::system`]);
//! in test mode files are written as the agent's own user and the rest is
//! reported as not applied.
//!
//! [`AgentConfig::system`]: crate::agent::AgentConfig::system

use std::path::Path;
use std::sync::Arc;

use base64::Engine as _;
use bhatti_protocol::messages::{ApplyConfig, ApplyConfigResult, MAX_APPLY_ENTROPY};
use bhatti_protocol::{Frame, MsgType};

use crate::agent::Agent;
use crate::fail::Fail;
use crate::files::{check_path, parse};
use crate::wire::FrameTx;

/// Answers one APPLY_CONFIG_REQ.
pub async fn apply(agent: &Arc<Agent>, req: &Frame, tx: &FrameTx) {
    let cfg: ApplyConfig = match parse(req, "apply config") {
        Ok(c) => c,
        Err(e) => {
            tx.error(e).await;
            return;
        }
    };
    let checked = match check(&cfg) {
        Ok(c) => c,
        Err(e) => {
            tx.error(e).await;
            return;
        }
    };
    let system = agent.config().system;
    let (hostname, entropy, files, now, mac) = (
        cfg.hostname.clone(),
        checked.entropy,
        checked.files,
        cfg.unix_time_ms,
        checked.mac,
    );
    let machine = tokio::task::spawn_blocking(move || {
        let mut r = apply_machine(system, now, &hostname, &entropy, &files)?;
        if let (true, Some(mac)) = (system, mac) {
            // Last: from here the NIC drops frames sent to the old address
            // until the host's neighbour entry follows (it does once this
            // answer says the MAC was taken). Not fatal: the host keeps the
            // old address when `mac` is false.
            match crate::guest::net::set_mac("eth0", mac) {
                Ok(()) => r.mac = true,
                Err(e) => tracing::warn!("{e}"),
            }
        }
        Ok::<_, Fail>(r)
    })
    .await;
    let mut result = match machine {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            tx.error(e).await;
            return;
        }
        Err(e) => {
            tx.error(format!("apply config: {e}")).await;
            return;
        }
    };
    let token = Some(cfg.token.clone()).filter(|t| !t.is_empty());
    result.token = token.is_some();
    result.env = u32::try_from(cfg.env.len()).unwrap_or(u32::MAX);
    agent.apply(&cfg.env, token);
    if system && !cfg.env.is_empty() {
        let env = agent.env();
        let path = Path::new(crate::guest::config::CONFIG_ENV);
        if let Err(e) =
            crate::guest::config::write_atomic(path, &crate::guest::config::env_file(&env), 0o600)
        {
            tracing::warn!("{}: {e}", path.display());
        }
    }
    if !cfg.init.is_empty() {
        agent.start_init(&cfg.init, agent.config().run_as.clone());
        result.init = true;
    }
    agent.touch();
    if system {
        // Beside the boot phases: when this guest became its sandbox.
        let line = match crate::guest::uptime_ms() {
            Some(ms) => format!("config_applied_ms={ms}\n"),
            None => "config_applied_ms=unknown\n".to_string(),
        };
        let timing = Path::new(crate::guest::BOOT_TIMING);
        let appended = std::fs::OpenOptions::new()
            .append(true)
            .open(timing)
            .and_then(|mut f| std::io::Write::write_all(&mut f, line.as_bytes()));
        if let Err(e) = appended {
            tracing::warn!("{}: {e}", timing.display());
        }
    }
    tx.send_json(MsgType::ApplyConfigResp, &result).await;
}

/// The request's parts, decoded and checked.
struct Checked {
    entropy: Vec<u8>,
    files: Vec<(String, bhatti_protocol::config::ConfigFile, Vec<u8>)>,
    mac: Option<[u8; 6]>,
}

fn check(cfg: &ApplyConfig) -> Result<Checked, Fail> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let entropy = b64
        .decode(cfg.entropy.trim())
        .map_err(|_| Fail::invalid("entropy is not base64"))?;
    if entropy.len() > MAX_APPLY_ENTROPY {
        return Err(Fail::invalid(format!(
            "entropy: {} bytes, at most {MAX_APPLY_ENTROPY}",
            entropy.len()
        )));
    }
    if cfg.hostname.len() > 64
        || !cfg
            .hostname
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
    {
        return Err(Fail::invalid(format!(
            "hostname {:?}: at most 64 letters, digits, '-' and '.'",
            cfg.hostname
        )));
    }
    let mac = if cfg.mac.is_empty() {
        None
    } else {
        Some(
            crate::guest::net::parse_mac(&cfg.mac)
                .ok_or_else(|| Fail::invalid(format!("mac {:?}: six octets, unicast", cfg.mac)))?,
        )
    };
    if cfg.token.len() > 256 {
        return Err(Fail::invalid("token longer than 256 bytes"));
    }
    for k in cfg.env.keys() {
        if k.is_empty() || k.contains('=') || k.contains('\0') {
            return Err(Fail::invalid(format!("env name {k:?}")));
        }
    }
    let mut files = Vec::with_capacity(cfg.files.len());
    for (path, f) in &cfg.files {
        check_path(path)?;
        let data = b64
            .decode(f.content.trim())
            .map_err(|_| Fail::invalid(format!("file {path}: content is not base64")))?;
        files.push((path.clone(), f.clone(), data));
    }
    Ok(Checked {
        entropy,
        files,
        mac,
    })
}

/// Hostname, files and entropy: the parts that touch the machine.
fn apply_machine(
    system: bool,
    unix_time_ms: u64,
    hostname: &str,
    entropy: &[u8],
    files: &[(String, bhatti_protocol::config::ConfigFile, Vec<u8>)],
) -> Result<ApplyConfigResult, Fail> {
    let mut r = ApplyConfigResult::default();
    if system && unix_time_ms > 0 {
        // First: what follows (file times, logs) is stamped with it.
        let ts =
            nix::sys::time::TimeSpec::from_duration(std::time::Duration::from_millis(unix_time_ms));
        nix::time::clock_settime(nix::time::ClockId::CLOCK_REALTIME, ts)
            .map_err(|e| Fail::from(format!("set the clock: {e}")))?;
        r.clock = true;
    }
    if system {
        if !entropy.is_empty() {
            let n = crate::guest::entropy::add(entropy).map_err(|e| Fail::from(e.to_string()))?;
            r.entropy_bytes = u32::try_from(n).unwrap_or(u32::MAX);
        }
        if !hostname.is_empty() {
            crate::guest::config::apply_hostname(hostname)
                .map_err(|e| Fail::from(e.to_string()))?;
            r.hostname = true;
        }
    }
    for (path, f, data) in files {
        if system {
            // As at boot: through root-owned symlinks only, replaced (never
            // written through), owned by the sandbox user.
            crate::guest::config::write_user_file(
                Path::new(path),
                data,
                crate::guest::config::parse_mode(&f.mode),
            )
            .map_err(|e| Fail::from(format!("file {path}: {e}")))?;
        } else {
            if let Some(dir) = Path::new(path).parent() {
                std::fs::create_dir_all(dir)
                    .map_err(|e| Fail::from(format!("mkdir -p {}: {e}", dir.display())))?;
            }
            let opts = bhatti_durable::Options {
                mode: crate::guest::config::parse_mode(&f.mode),
                owner: None,
                durable: false,
            };
            bhatti_durable::write_with(Path::new(path), data, opts)
                .map_err(|e| Fail::from(format!("file {path}: {e}")))?;
        }
        r.files = r.files.saturating_add(1);
    }
    Ok(r)
}
