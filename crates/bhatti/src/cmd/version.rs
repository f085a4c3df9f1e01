//! `bhatti version`: this CLI's version, which API it talks to (and why:
//! flag, config file, env, socket or default), and the server's version
//! from `GET /health` / the `X-Bhatti-Version` header.
//!
//! The reference also looked up the latest GitHub release; this build does
//! not phone home (the machines it targets often have no internet).

use super::Ctx;
use crate::output::{print_json, Fields};

pub const CLI_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Whether version `a` is older than `b` (dotted numbers; a leading `v`
/// and any `-suffix` are ignored; unparsable parts count as 0).
pub fn older(a: &str, b: &str) -> bool {
    fn parts(v: &str) -> Vec<u64> {
        let v = v.trim().trim_start_matches('v');
        let v = v.split(['-', '+']).next().unwrap_or("");
        v.split('.').map(|p| p.parse().unwrap_or(0)).collect()
    }
    let (mut x, mut y) = (parts(a), parts(b));
    let n = x.len().max(y.len());
    x.resize(n, 0);
    y.resize(n, 0);
    x < y
}

pub async fn run(ctx: &Ctx) -> anyhow::Result<i32> {
    let cfg = ctx.config();
    let (api_url, source) = match &cfg {
        Ok(c) => (Some(c.endpoint.to_string()), Some(c.url_source.to_string())),
        Err(_) => (None, None),
    };
    let mut server: Result<(String, String), String> = Err("not configured".into());
    if cfg.is_ok() {
        let client = ctx.client()?;
        server = match client.health().await {
            Ok(h) => {
                let v = if h.version.is_empty() {
                    client.server_version().unwrap_or_default()
                } else {
                    h.version
                };
                Ok((v, h.engine.to_string()))
            }
            Err(e) => Err(e.to_string()),
        };
    }
    if ctx.json {
        let (sv, engine, err) = match &server {
            Ok((v, e)) => (Some(v.clone()), Some(e.clone()), None),
            Err(e) => (None, None, Some(e.clone())),
        };
        print_json(&serde_json::json!({
            "cli": CLI_VERSION,
            "api_url": api_url,
            "api_url_source": source,
            "server": sv,
            "engine": engine,
            "server_error": err,
        }))?;
        return Ok(0);
    }
    let mut f = Fields::new();
    f.add("CLI", CLI_VERSION);
    match (&api_url, &source) {
        (Some(u), Some(s)) => f.add("API URL", format!("{u} ({s})")),
        _ => f.add("API URL", "-"),
    };
    match &server {
        Ok((v, e)) if !e.is_empty() => f.add("Server", format!("{v} (engine {e})")),
        Ok((v, _)) => f.add("Server", v.clone()),
        Err(e) => f.add("Server", format!("unreachable: {e}")),
    };
    f.print();
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::older;

    #[test]
    fn version_order() {
        assert!(older("0.1.0", "0.2.0"));
        assert!(older("0.9.9", "1.0"));
        assert!(older("v1.2", "1.2.1"));
        assert!(!older("1.2.0", "1.2"));
        assert!(!older("1.10.0", "1.9.0"));
        assert!(!older("1.0.0-rc1", "1.0.0"));
        assert!(!older("0.1.0", ""));
    }
}
