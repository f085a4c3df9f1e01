//! `bhatti`: the daemon (`bhatti serve`) and the CLI in one binary.
//!
//! This file is the command tree (clap derive) and the dispatch; the work
//! is in `cmd/*` (one module per command family, each a thin layer over
//! `bhatti-client`), `output.rs` (tables and `--json`) and `serve.rs`.
//! Exit codes: 0 on success, 1 on any error (printed as `Error: <status>:
//! <message>` plus a recovery hint), except `exec`, which exits with the
//! remote command's code, and 125 for its own failures (as `docker exec`).

#[macro_use]
mod output;
mod cmd;
mod serve;

use std::path::PathBuf;
use std::time::Instant;

use bhatti_client::{ClientError, Overrides, Resource};
use clap::{CommandFactory, Parser, Subcommand};

use cmd::{
    admin, cp, exec, files, image, logs, publish, run, sandbox, secret, setup, shell, snapshot,
    stats, template, user, version, volume, Ctx,
};

#[derive(Debug, Parser)]
#[command(
    name = "bhatti",
    version,
    about = "Self-hosted sandboxes: microVMs or containers for untrusted code",
    propagate_version = true,
    after_help = "Config: flags > BHATTI_URL / BHATTI_TOKEN / BHATTI_CA_FILE > ~/.bhatti/config.yaml (api_url, auth_token, ca_file) > the local daemon socket or http://localhost:8080"
)]
struct Cli {
    /// API URL (http[s]://HOST:PORT or unix:///path/api.sock).
    #[arg(long, global = true, value_name = "URL")]
    url: Option<String>,
    /// PEM CA certificates to verify an https:// daemon with, instead of
    /// the system's trust store.
    #[arg(long, global = true, value_name = "FILE")]
    ca_file: Option<PathBuf>,
    /// API key.
    #[arg(long, global = true, value_name = "KEY")]
    token: Option<String>,
    /// The daemon's data directory (socket, state.db for user commands).
    #[arg(long, global = true, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Machine-readable JSON on stdout.
    #[arg(long, global = true)]
    json: bool,
    /// Print how long the command took to stderr.
    #[arg(long, global = true)]
    timing: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the daemon.
    Serve(serve::ServeArgs),
    /// Save the API URL and key to ~/.bhatti/config.yaml and test them.
    Setup(setup::SetupArgs),
    /// Create a sandbox (or fork one with --from).
    Create(Box<sandbox::CreateArgs>),
    /// List sandboxes.
    #[command(visible_alias = "ls")]
    List(sandbox::ListArgs),
    /// Show a sandbox in detail.
    #[command(visible_alias = "info")]
    Inspect(sandbox::SandboxArg),
    /// Rename a sandbox, change keep-hot or labels.
    Edit(sandbox::EditArgs),
    /// Destroy a sandbox.
    #[command(visible_alias = "rm")]
    Destroy(sandbox::DestroyArgs),
    /// Stop a sandbox (snapshot it to disk).
    Stop(sandbox::SandboxArg),
    /// Start (resume) a stopped sandbox.
    Start(sandbox::StartArgs),
    /// Run a command in a sandbox; exits with its exit code.
    Exec(exec::ExecArgs),
    /// Create a sandbox from an image and run one command in it (--rm
    /// destroys it afterwards).
    Run(Box<run::RunArgs>),
    /// Interactive shell in a sandbox (Ctrl+\ detaches).
    #[command(visible_alias = "sh")]
    Shell(shell::ShellArgs),
    /// List the sessions in a sandbox.
    Ps(sandbox::SandboxArg),
    /// CPU, memory and disk use, read in the guest now.
    Stats(stats::StatsArgs),
    /// The guest's console, or a detached command's output (-f follows it).
    Logs(logs::LogsArgs),
    /// List listening ports and their proxy URLs.
    Ports(sandbox::PortsArgs),
    /// Give a sandbox port a public URL (no key needed to open it).
    Publish(publish::PublishArgs),
    /// Remove a port's public URL.
    Unpublish(publish::UnpublishArgs),
    /// Print a web-shell URL for a sandbox (a browser terminal, no key).
    Share(publish::ShareArgs),
    /// Copy files and directories between here and a sandbox
    /// (SANDBOX:/path on one side).
    Cp(cp::CpArgs),
    /// Read, write and list files in a sandbox.
    #[command(subcommand)]
    File(files::FileCmd),
    /// Manage secrets (injected as environment variables).
    #[command(subcommand)]
    Secret(secret::SecretCmd),
    /// Manage persistent volumes.
    #[command(subcommand)]
    Volume(volume::VolumeCmd),
    /// Manage templates (saved create defaults).
    #[command(subcommand)]
    Template(template::TemplateCmd),
    /// Manage named snapshots.
    #[command(subcommand)]
    Snapshot(snapshot::SnapshotCmd),
    /// Pull, import, save and manage root filesystem images.
    #[command(subcommand)]
    Image(image::ImageCmd),
    /// Background tasks (image pulls).
    #[command(subcommand)]
    Task(image::TaskCmd),
    /// Manage users (on the server: opens state.db directly).
    #[command(subcommand)]
    User(user::UserCmd),
    /// Status, events and metrics (on the server: opens state.db directly).
    #[command(subcommand)]
    Admin(admin::AdminCmd),
    /// Show CLI and server versions.
    Version,
    /// Print a shell completion script.
    Completion {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

impl Command {
    /// The sandbox a command is about, for filling in hints.
    fn sandbox(&self) -> Option<&str> {
        match self {
            Command::Inspect(a) | Command::Stop(a) | Command::Ps(a) => Some(&a.sandbox),
            Command::Edit(a) => Some(&a.sandbox),
            Command::Destroy(a) => Some(&a.sandbox),
            Command::Start(a) => Some(&a.sandbox),
            Command::Exec(a) => Some(&a.sandbox),
            Command::Shell(a) => Some(&a.sandbox),
            Command::Ports(a) => a.sandbox.as_deref(),
            Command::Publish(a) => Some(&a.sandbox),
            Command::Unpublish(a) => Some(&a.sandbox),
            Command::Share(a) => Some(&a.sandbox),
            Command::Logs(a) => Some(&a.sandbox),
            Command::File(f) => Some(f.sandbox()),
            Command::Snapshot(s) => s.sandbox(),
            Command::Create(a) => a.name.as_deref(),
            _ => None,
        }
    }

    /// What a command addresses, so that a 404's hint says where to look.
    fn resource(&self) -> Resource {
        match self {
            Command::File(_) | Command::Cp(_) => Resource::File,
            Command::Secret(_) => Resource::Secret,
            Command::Volume(_) => Resource::Volume,
            Command::Template(_) => Resource::Template,
            Command::Snapshot(_) => Resource::Snapshot,
            Command::Image(_) => Resource::Image,
            Command::Task(_) => Resource::Task,
            _ => Resource::Sandbox,
        }
    }
}

async fn dispatch(ctx: &Ctx, command: Command, data_dir: Option<PathBuf>) -> anyhow::Result<i32> {
    match command {
        Command::Serve(a) => serve::run(a, data_dir).await,
        Command::Setup(a) => setup::run(ctx, a).await,
        Command::Create(a) => sandbox::create(ctx, *a).await,
        Command::List(a) => sandbox::list(ctx, a).await,
        Command::Inspect(a) => sandbox::inspect(ctx, a).await,
        Command::Edit(a) => sandbox::edit(ctx, a).await,
        Command::Destroy(a) => sandbox::destroy(ctx, a).await,
        Command::Stop(a) => sandbox::stop(ctx, a).await,
        Command::Start(a) => sandbox::start(ctx, a).await,
        Command::Exec(a) => exec::run(ctx, a).await,
        Command::Run(a) => run::run(ctx, *a).await,
        Command::Template(c) => template::run(ctx, c).await,
        Command::Shell(a) => shell::run(ctx, a).await,
        Command::Ps(a) => sandbox::ps(ctx, a).await,
        Command::Ports(a) => sandbox::ports(ctx, a).await,
        Command::Publish(a) => publish::publish(ctx, a).await,
        Command::Unpublish(a) => publish::unpublish(ctx, a).await,
        Command::Share(a) => publish::share(ctx, a).await,
        Command::Stats(a) => stats::run(ctx, a).await,
        Command::Logs(a) => logs::run(ctx, a).await,
        Command::Cp(a) => cp::run(ctx, a).await,
        Command::File(c) => files::run(ctx, c).await,
        Command::Secret(c) => secret::run(ctx, c).await,
        Command::Volume(c) => volume::run(ctx, c).await,
        Command::Snapshot(c) => snapshot::run(ctx, c).await,
        Command::Image(c) => image::run(ctx, c).await,
        Command::Task(c) => image::task(ctx, c).await,
        Command::User(c) => user::run(ctx, c),
        Command::Admin(c) => admin::run(ctx, c).await,
        Command::Version => version::run(ctx).await,
        Command::Completion { shell } => {
            let mut cmd = Cli::command();
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut cmd, "bhatti", &mut script);
            output::print_text(&String::from_utf8_lossy(&script));
            Ok(0)
        }
    }
}

/// The error and its causes on one line, skipping causes whose text the
/// message already contains (library errors often embed their source).
fn error_text(e: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in e.chain() {
        let c = cause.to_string();
        if text.contains(&c) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&c);
    }
    text
}

/// Prints an error the way the CLI promises: `Error: <status>: <message>`
/// and, when one applies, a hint on the next line (JSON with `--json`).
fn report(e: &anyhow::Error, json: bool, sandbox: Option<&str>, resource: Resource) {
    let client_err = e.chain().find_map(|c| c.downcast_ref::<ClientError>());
    let hint = client_err.and_then(|c| c.hint_for(sandbox, resource));
    if json {
        let api = client_err.and_then(ClientError::api);
        let v = serde_json::json!({
            "error": api.map(|a| a.message.clone()).unwrap_or_else(|| error_text(e)),
            "status": api.map(|a| a.status),
            "code": api.and_then(|a| a.code),
            "reason": api.and_then(|a| a.reason),
            "request_id": api.and_then(|a| a.request_id.clone()),
            "hint": hint,
        });
        eprintln!("{v}");
        return;
    }
    eprintln!("Error: {}", error_text(e));
    if let Some(h) = hint {
        eprintln!("Hint: {h}");
    }
}

/// Warns when the server says this CLI is too old (`X-Bhatti-Min-CLI`).
fn warn_min_cli(ctx: &Ctx) {
    let Some(min) = ctx.built_client().and_then(|c| c.min_cli()) else {
        return;
    };
    if version::older(env!("CARGO_PKG_VERSION"), &min) {
        eprintln!(
            "Warning: this CLI ({}) is older than the server's minimum ({min}); please update",
            env!("CARGO_PKG_VERSION")
        );
    }
}

fn main() {
    let cli = Cli::parse();
    let started = Instant::now();
    let json = cli.json;
    let timing = cli.timing;
    let ctx = Ctx::new(
        json,
        Overrides {
            url: cli.url,
            token: cli.token,
            data_dir: cli.data_dir.clone(),
            ca_file: cli.ca_file,
        },
    );
    let sandbox = cli.command.sandbox().map(str::to_string);
    let resource = cli.command.resource();
    let own_failure = match cli.command {
        Command::Exec(_) | Command::Run(_) => exec::OWN_FAILURE,
        _ => 1,
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("Error: start the async runtime: {e}");
            std::process::exit(1);
        }
    };
    let result = runtime.block_on(dispatch(&ctx, cli.command, cli.data_dir));
    let code = match result {
        Ok(code) => code,
        Err(e) => {
            report(&e, json, sandbox.as_deref(), resource);
            own_failure
        }
    };
    warn_min_cli(&ctx);
    if timing {
        eprintln!("total: {:.1} ms", started.elapsed().as_secs_f64() * 1000.0);
    }
    // Exit without waiting for blocking threads (a stdin reader may still
    // be parked in read(2)).
    std::process::exit(code);
}
