//! `publish`, `unpublish` and `share`: public URLs for a sandbox's ports,
//! and its web shell.

use clap::Args;

use super::Ctx;
use crate::output::print_json;

#[derive(Debug, Args)]
pub struct PublishArgs {
    /// Sandbox name or ID.
    pub sandbox: String,
    /// The guest port to publish (nothing needs to listen on it yet).
    #[arg(short, long, value_parser = clap::value_parser!(u16).range(1..))]
    pub port: u16,
    /// The public name (lower-case letters, digits and '-'); default: the
    /// sandbox's name with a random suffix.
    #[arg(short, long)]
    pub alias: Option<String>,
    /// Also print a web-shell URL (as `bhatti share`).
    #[arg(long)]
    pub shell: bool,
}

#[derive(Debug, Args)]
pub struct ShareArgs {
    /// Sandbox name or ID.
    pub sandbox: String,
    /// Revoke the sandbox's web-shell URL and end its sessions.
    #[arg(long)]
    pub revoke: bool,
}

#[derive(Debug, Args)]
pub struct UnpublishArgs {
    /// Sandbox name or ID.
    pub sandbox: String,
    /// The published port.
    #[arg(short, long, value_parser = clap::value_parser!(u16).range(1..))]
    pub port: u16,
}

pub async fn publish(ctx: &Ctx, a: PublishArgs) -> anyhow::Result<i32> {
    let client = ctx.client()?;
    let rule = client
        .publish(&a.sandbox, a.port, a.alias.as_deref())
        .await?;
    if ctx.json {
        print_json(&rule)?;
        return Ok(0);
    }
    println!(
        "port {} of {} published as {}",
        rule.port, a.sandbox, rule.alias
    );
    if rule.url.starts_with("http") {
        println!("URL: {}", rule.url);
    } else {
        // The daemon has no public listener: the port is still reachable
        // with a key through the authenticated proxy.
        println!(
            "The daemon has no public listener (config: public_proxy_listen, and domain for <alias>.<zone> URLs)."
        );
        println!(
            "With an API key: {}",
            client.url_of(&format!(
                "/sandboxes/{}/proxy/{}/",
                rule.sandbox_id, rule.port
            ))
        );
    }
    if a.shell {
        let t = client.share_shell(&a.sandbox).await?;
        println!("Shell: {}", t.url);
    }
    Ok(0)
}

pub async fn share(ctx: &Ctx, a: ShareArgs) -> anyhow::Result<i32> {
    let client = ctx.client()?;
    if a.revoke {
        client.revoke_shell(&a.sandbox).await?;
        if !ctx.json {
            println!("web shell of {} revoked", a.sandbox);
        }
        return Ok(0);
    }
    let t = client.share_shell(&a.sandbox).await?;
    if ctx.json {
        print_json(&t)?;
    } else {
        println!("Shell: {}", t.url);
        println!(
            "Anyone with this URL has a shell in {} until {} (bhatti share --revoke {}).",
            a.sandbox, t.expires_at, a.sandbox
        );
    }
    Ok(0)
}

pub async fn unpublish(ctx: &Ctx, a: UnpublishArgs) -> anyhow::Result<i32> {
    ctx.client()?.unpublish(&a.sandbox, a.port).await?;
    if !ctx.json {
        println!("port {} of {} unpublished", a.port, a.sandbox);
    }
    Ok(0)
}
