//! Sandbox lifecycle commands: `create` (and fork with `--from`), `list`,
//! `inspect`, `edit`, `destroy`, `stop`, `start`, plus `ps` and `ports`.
//!
//! They map one-to-one onto `/sandboxes` routes; what lives here is the
//! flag syntax (`-e KEY=VALUE`, `-v name:mount[:ro]`, `--file
//! local:guest`, `--label k=v`), parsed by small tested functions, and the
//! text layout (tables and `--json` through [`crate::output`]).

use std::collections::BTreeMap;

use anyhow::{bail, Context as _};
use base64::Engine as _;
use bhatti_api as api;
use clap::{Args, ValueEnum};

use super::{aborted, Ctx};
use crate::output::{labels_text, mb, or_dash, print_json, yes_no, Fields, Table};

#[derive(Debug, Args)]
pub struct SandboxArg {
    /// Sandbox name or ID.
    pub sandbox: String,
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// Name (default: generated).
    #[arg(long)]
    pub name: Option<String>,
    /// Image (default: the server's base image).
    #[arg(long)]
    pub image: Option<String>,
    /// vCPUs (default 1; whole numbers).
    #[arg(long)]
    pub cpus: Option<f64>,
    /// Memory in MB (0 = server default, 1024).
    #[arg(long, default_value_t = 0)]
    pub memory: u64,
    /// Root disk size in MB.
    #[arg(long)]
    pub disk_size: Option<u64>,
    /// Set a variable (repeatable; the value is kept whole, commas and `=`
    /// included; a bare KEY takes this shell's value).
    #[arg(short = 'e', long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Script run once at first boot.
    #[arg(long, value_name = "SCRIPT")]
    pub init: Option<String>,
    /// Never pause or snapshot this sandbox when idle.
    #[arg(long)]
    pub keep_hot: bool,
    /// Lifetime in seconds; when it ends the sandbox is destroyed (or, with
    /// --on-expiry pause, stopped to disk).
    #[arg(long, value_name = "SECS")]
    pub timeout: Option<u64>,
    /// What the end of --timeout does: kill or pause.
    #[arg(long, value_name = "ACTION", requires = "timeout", value_parser = ["kill", "pause"])]
    pub on_expiry: Option<String>,
    /// Ask for huge pages (accepted for compatibility).
    #[arg(long)]
    pub hugepages: bool,
    /// Create from a template (ID or name).
    #[arg(long, value_name = "ID")]
    pub template: Option<String>,
    /// Attach a persistent volume: name:/mount[:ro] (repeatable).
    #[arg(short = 'v', long, value_name = "NAME:MOUNT[:ro]")]
    pub volume: Vec<String>,
    /// Inject a secret as an environment variable (repeatable).
    #[arg(long, value_name = "NAME")]
    pub secret: Vec<String>,
    /// Copy a local file into the guest: local:/guest/path (repeatable).
    #[arg(long, value_name = "LOCAL:GUEST")]
    pub file: Vec<String>,
    /// Label k=v (repeatable).
    #[arg(long, value_name = "K=V")]
    pub label: Vec<String>,
    /// Fork: copy this running sandbox (memory, processes, disks).
    #[arg(long, value_name = "SANDBOX")]
    pub from: Option<String>,
    /// Outbound network: `public` (default; no link-local or private
    /// addresses), `deny` (only your own sandboxes) or allowed CIDRs
    /// `CIDR,CIDR`. A fork keeps its source's unless given.
    #[arg(long, value_name = "public|deny|CIDR,...")]
    pub egress: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ListFormat {
    Wide,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Output format: `wide` adds CPUS, MEMORY, DISK, IMAGE, LABELS.
    #[arg(short = 'o', long = "output", value_enum)]
    pub output: Option<ListFormat>,
    /// Only sandboxes with this label k=v (repeatable, ANDed).
    #[arg(long, value_name = "K=V")]
    pub label: Vec<String>,
}

#[derive(Debug, Args)]
pub struct EditArgs {
    /// Sandbox name or ID.
    pub sandbox: String,
    /// New name (the hostname inside the sandbox does not change).
    #[arg(long)]
    pub name: Option<String>,
    /// Never pause this sandbox when idle (also wakes it).
    #[arg(long, conflicts_with = "allow_cold")]
    pub keep_hot: bool,
    /// Let the thermal manager pause and snapshot it again.
    #[arg(long)]
    pub allow_cold: bool,
    /// Add or change a label k=v (repeatable).
    #[arg(long, value_name = "K=V")]
    pub label: Vec<String>,
    /// Remove a label by key (repeatable).
    #[arg(long, value_name = "K")]
    pub label_delete: Vec<String>,
    /// Change the outbound network policy, at once: `public`, `deny` or
    /// allowed CIDRs `CIDR,CIDR`.
    #[arg(long, value_name = "public|deny|CIDR,...")]
    pub egress: Option<String>,
}

#[derive(Debug, Args)]
pub struct DestroyArgs {
    /// Sandbox name or ID.
    pub sandbox: String,
    /// Do not ask for confirmation.
    #[arg(short, long)]
    pub yes: bool,
}

#[derive(Debug, Args)]
pub struct StartArgs {
    /// Sandbox name or ID.
    pub sandbox: String,
    /// Retry even after a failed restore (clears the circuit breaker).
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Args)]
pub struct PortsArgs {
    /// Sandbox name or ID (default: all your running sandboxes).
    pub sandbox: Option<String>,
}

// ----- flag parsing --------------------------------------------------------

/// `k=v` (the value may be empty).
pub fn parse_label(spec: &str) -> anyhow::Result<(String, String)> {
    match spec.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.trim().to_string())),
        _ => bail!("label {spec:?}: expected k=v"),
    }
}

fn parse_labels(specs: &[String]) -> anyhow::Result<BTreeMap<String, String>> {
    specs.iter().map(|s| parse_label(s)).collect()
}

/// `name:/mount[:ro|:rw]` → an existing volume to attach (never
/// auto-created from the CLI).
pub fn parse_volume(spec: &str) -> anyhow::Result<api::VolumeMount> {
    let parts: Vec<&str> = spec.split(':').collect();
    let (name, mount, read_only) = match parts.as_slice() {
        [n, m] => (*n, *m, false),
        [n, m, "ro"] => (*n, *m, true),
        [n, m, "rw"] => (*n, *m, false),
        [_, _, other] => bail!("--volume {spec:?}: unknown option {other:?} (use ro or rw)"),
        _ => bail!("--volume {spec:?}: expected name:/mount[:ro]"),
    };
    if name.is_empty() {
        bail!("--volume {spec:?}: empty volume name");
    }
    if !mount.starts_with('/') {
        bail!("--volume {spec:?}: the mount point must be an absolute path");
    }
    Ok(api::VolumeMount {
        name: name.to_string(),
        mount: mount.to_string(),
        size_mb: None,
        auto_create: false,
        read_only,
    })
}

/// `local:/guest/path` → (local, guest). Split at the last `:` so local
/// paths with colons still work.
pub fn parse_file_spec(spec: &str) -> anyhow::Result<(String, String)> {
    match spec.rsplit_once(':') {
        Some((local, guest)) if !local.is_empty() && guest.starts_with('/') => {
            Ok((local.to_string(), guest.to_string()))
        }
        _ => bail!("--file {spec:?}: expected local:/guest/path"),
    }
}

/// Reads a local file for `--file`, keeping its permission bits.
fn read_create_file(spec: &str) -> anyhow::Result<api::CreateFile> {
    use std::os::unix::fs::PermissionsExt;
    let (local, guest) = parse_file_spec(spec)?;
    let data = std::fs::read(&local).with_context(|| format!("read {local}"))?;
    let mode = std::fs::metadata(&local)
        .map(|m| m.permissions().mode() & 0o777)
        .unwrap_or(0o644);
    Ok(api::CreateFile {
        guest_path: guest,
        content: base64::engine::general_purpose::STANDARD.encode(data),
        mode: Some(format!("{mode:04o}")),
    })
}

/// `--egress public|deny|CIDR,CIDR` as the API's egress value (the server
/// checks the CIDRs).
pub fn parse_egress(spec: &str) -> anyhow::Result<api::Egress> {
    let spec = spec.trim();
    if spec == "public" || spec == "deny" {
        return Ok(api::Egress::Mode(spec.into()));
    }
    let cidrs: Vec<String> = spec
        .split(',')
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .map(str::to_string)
        .collect();
    if cidrs.is_empty() {
        bail!("--egress: expected public, deny or a comma-separated list of CIDRs");
    }
    if let Some(bad) = cidrs.iter().find(|c| {
        !c.bytes()
            .all(|b| b.is_ascii_digit() || b == b'.' || b == b'/')
    }) {
        bail!("--egress: {bad:?} is neither public, deny nor a CIDR");
    }
    Ok(api::Egress::Allow(cidrs))
}

/// An egress value for display: `public`, `deny` or `allow CIDR, CIDR`.
pub fn egress_text(e: &api::Egress) -> String {
    match e {
        api::Egress::Mode(m) => m.clone(),
        api::Egress::Allow(c) if c.is_empty() => "allow (own sandboxes only)".into(),
        api::Egress::Allow(c) => format!("allow {}", c.join(", ")),
    }
}

/// The `POST /sandboxes` body for the create flags.
pub fn build_create(a: &CreateArgs) -> anyhow::Result<api::CreateSandbox> {
    let env = super::exec::env_flags(&a.env)?;
    if let Some(c) = a.cpus {
        if !(c > 0.0 && c.is_finite()) {
            bail!("--cpus must be a positive number");
        }
    }
    Ok(api::CreateSandbox {
        name: a.name.clone(),
        template_id: a.template.clone(),
        image: a.image.clone(),
        cpus: a.cpus,
        memory_mb: (a.memory > 0).then_some(a.memory),
        disk_size_mb: a.disk_size.filter(|d| *d > 0),
        env,
        init: a.init.clone(),
        keep_hot: a.keep_hot,
        hugepages: a.hugepages,
        persistent_volumes: a
            .volume
            .iter()
            .map(|v| parse_volume(v))
            .collect::<anyhow::Result<_>>()?,
        secrets: a.secret.clone(),
        files: a
            .file
            .iter()
            .map(|f| read_create_file(f))
            .collect::<anyhow::Result<_>>()?,
        labels: parse_labels(&a.label)?,
        from: a.from.clone(),
        egress: a.egress.as_deref().map(parse_egress).transpose()?,
        timeout_secs: a.timeout,
        on_expiry: a.on_expiry.clone(),
        metadata: BTreeMap::new(),
    })
}

/// `N vCPU, M MB[, D MB disk]`.
pub fn shape(sb: &api::Sandbox) -> String {
    let mut s = format!("{} vCPU, {} MB", sb.cpus, sb.memory_mb);
    if sb.disk_size_mb > 0 {
        s.push_str(&format!(", {} MB disk", sb.disk_size_mb));
    }
    s
}

fn status_text(sb: &api::Sandbox) -> String {
    match &sb.thermal {
        Some(t) if sb.status == api::SandboxStatus::Running => format!("{} ({t})", sb.status),
        _ => sb.status.to_string(),
    }
}

// ----- commands ------------------------------------------------------------

pub async fn create(ctx: &Ctx, a: CreateArgs) -> anyhow::Result<i32> {
    let req = build_create(&a)?;
    let client = ctx.client()?;
    let spin = ctx.spinner(match &a.from {
        Some(src) => format!("Forking sandbox/{src}"),
        None => "Creating sandbox".to_string(),
    });
    let created = client.create_sandbox(&req).await?;
    drop(spin);
    let sb = &created.sandbox;
    if ctx.json {
        print_json(sb)?;
        return Ok(0);
    }
    if created.existing {
        outln!("sandbox/{} unchanged (already exists)", sb.name);
        return Ok(0);
    }
    match &a.from {
        Some(src) => outln!(
            "sandbox/{} created from sandbox/{src} ({})",
            sb.name,
            shape(sb)
        ),
        None => outln!("sandbox/{} created ({})", sb.name, shape(sb)),
    }
    if !sb.ip.is_empty() {
        outln!("  IP:    {}", sb.ip);
    }
    outln!("  Shell: bhatti shell {}", sb.name);
    Ok(0)
}

pub async fn list(ctx: &Ctx, a: ListArgs) -> anyhow::Result<i32> {
    let labels: Vec<(String, String)> = a
        .label
        .iter()
        .map(|l| parse_label(l))
        .collect::<anyhow::Result<_>>()?;
    let list = ctx.client()?.list_sandboxes(&labels).await?;
    if ctx.json {
        print_json(&list)?;
        return Ok(0);
    }
    let wide = a.output == Some(ListFormat::Wide);
    let mut headers = vec!["NAME", "STATUS", "THERMAL", "IP", "URL"];
    if wide {
        headers.extend(["CPUS", "MEMORY", "DISK", "IMAGE", "LABELS"]);
    }
    let mut t = Table::new(&headers);
    for sb in &list {
        let mut row = vec![
            sb.name.clone(),
            sb.status.to_string(),
            sb.thermal.map_or_else(|| "-".into(), |t| t.to_string()),
            or_dash(&sb.ip),
            urls_text(&sb.urls),
        ];
        if wide {
            row.extend([
                sb.cpus.to_string(),
                mb(u64::from(sb.memory_mb)),
                mb(sb.disk_size_mb),
                or_dash(&sb.image),
                labels_text(&sb.labels),
            ]);
        }
        t.row(row);
    }
    t.print_or("No sandboxes. Create one: bhatti create --name NAME");
    Ok(0)
}

/// The first public URL, and how many more there are.
fn urls_text(urls: &[String]) -> String {
    match urls {
        [] => "-".into(),
        [one] => one.clone(),
        [first, rest @ ..] => format!("{first} (+{})", rest.len()),
    }
}

/// `df -m /` output → (used MB, total MB).
pub fn parse_df(out: &str) -> Option<(u64, u64)> {
    let line = out.lines().nth(1)?;
    let cols: Vec<&str> = line.split_whitespace().collect();
    // Filesystem 1M-blocks Used Available Use% Mounted-on
    let total = cols.get(1)?.parse().ok()?;
    let used = cols.get(2)?.parse().ok()?;
    Some((used, total))
}

pub async fn inspect(ctx: &Ctx, a: SandboxArg) -> anyhow::Result<i32> {
    let client = ctx.client()?;
    let sb = client.get_sandbox(&a.sandbox).await?;
    if ctx.json {
        print_json(&sb)?;
        return Ok(0);
    }
    // Disk use needs the guest (and wakes it), so only for running ones;
    // failures just leave the line out.
    let disk = if sb.status == "running" {
        let req = api::ExecRequest {
            cmd: vec!["df".into(), "-m".into(), "/".into()],
            timeout_sec: Some(10),
            ..Default::default()
        };
        match client.exec(&sb.id, &req).await {
            Ok(r) if r.exit_code == 0 => parse_df(&r.stdout),
            _ => None,
        }
    } else {
        None
    };
    let mut f = Fields::new();
    f.add("Name", &sb.name)
        .add("ID", &sb.id)
        .add("Status", status_text(&sb));
    if !sb.status_reason.is_empty() {
        f.add("Reason", &sb.status_reason);
    }
    f.add("IP", or_dash(&sb.ip))
        .add("Engine", sb.engine.as_str())
        .add("Image", or_dash(&sb.image))
        .add("CPUs", sb.cpus.to_string())
        .add("Memory", format!("{} MB", sb.memory_mb));
    match disk {
        Some((used, total)) => {
            // Sizes come from the guest's df: a nonsense one must not panic.
            let pct = used.saturating_mul(100).checked_div(total).unwrap_or(0);
            f.add("Disk", format!("{used} MB used of {total} MB ({pct}%)"));
        }
        None => {
            f.add("Disk", mb(sb.disk_size_mb));
        }
    }
    f.add("Keep hot", yes_no(sb.keep_hot));
    if let Some(e) = &sb.egress {
        f.add("Egress", egress_text(e));
    }
    f.add("Labels", labels_text(&sb.labels));
    if !sb.template_id.is_empty() {
        f.add("Template", &sb.template_id);
    }
    f.add("Created", &sb.created_at);
    if let Some(s) = &sb.stopped_at {
        f.add("Stopped", s);
    }
    f.print();
    Ok(0)
}

pub async fn edit(ctx: &Ctx, a: EditArgs) -> anyhow::Result<i32> {
    let keep_hot = if a.keep_hot {
        Some(true)
    } else if a.allow_cold {
        Some(false)
    } else {
        None
    };
    let patch = api::PatchSandbox {
        keep_hot,
        name: a.name.clone(),
        labels_add: parse_labels(&a.label)?,
        labels_remove: a.label_delete.clone(),
        egress: a.egress.as_deref().map(parse_egress).transpose()?,
    };
    if patch == api::PatchSandbox::default() {
        bail!(
            "nothing to change: give --name, --keep-hot, --allow-cold, --label, --label-delete or --egress"
        );
    }
    let sb = ctx.client()?.patch_sandbox(&a.sandbox, &patch).await?;
    if ctx.json {
        print_json(&sb)?;
        return Ok(0);
    }
    outln!("sandbox/{} edited", sb.name);
    if let (Some(_), Some(e)) = (&a.egress, &sb.egress) {
        outln!("  Egress: {}", egress_text(e));
    }
    if a.name.is_some() {
        outln!("  Note: the hostname inside the sandbox is unchanged");
    }
    Ok(0)
}

pub async fn destroy(ctx: &Ctx, a: DestroyArgs) -> anyhow::Result<i32> {
    if !ctx.confirm(a.yes, &format!("Destroy sandbox/{}?", a.sandbox))? {
        return aborted();
    }
    let st = ctx.client()?.destroy_sandbox(&a.sandbox).await?;
    if ctx.json {
        print_json(&st)?;
    } else {
        outln!("sandbox/{} destroyed", a.sandbox);
    }
    Ok(0)
}

pub async fn stop(ctx: &Ctx, a: SandboxArg) -> anyhow::Result<i32> {
    let spin = ctx.spinner(format!("Stopping sandbox/{}", a.sandbox));
    let sb = ctx.client()?.stop_sandbox(&a.sandbox).await?;
    drop(spin);
    if ctx.json {
        print_json(&sb)?;
    } else {
        outln!("sandbox/{} stopped", sb.name);
    }
    Ok(0)
}

pub async fn start(ctx: &Ctx, a: StartArgs) -> anyhow::Result<i32> {
    let spin = ctx.spinner(format!("Starting sandbox/{}", a.sandbox));
    let sb = ctx.client()?.start_sandbox(&a.sandbox, a.force).await?;
    drop(spin);
    if ctx.json {
        print_json(&sb)?;
    } else {
        outln!("sandbox/{} started ({})", sb.name, status_text(&sb));
    }
    Ok(0)
}

pub async fn ps(ctx: &Ctx, a: SandboxArg) -> anyhow::Result<i32> {
    let sessions = ctx.client()?.sessions(&a.sandbox).await?;
    if ctx.json {
        print_json(&sessions)?;
        return Ok(0);
    }
    let mut t = Table::new(&["ID", "COMMAND", "RUNNING", "ATTACHED"]);
    for s in &sessions {
        t.row([
            s.session_id.clone(),
            or_dash(&s.argv),
            yes_no(s.running).to_string(),
            yes_no(s.attached).to_string(),
        ]);
    }
    t.print_or("No sessions.");
    Ok(0)
}

pub async fn ports(ctx: &Ctx, a: PortsArgs) -> anyhow::Result<i32> {
    let client = ctx.client()?;
    let ports = match &a.sandbox {
        Some(sb) => client.ports(sb).await?,
        None => client.all_ports().await?,
    };
    if ctx.json {
        print_json(&ports)?;
        return Ok(0);
    }
    let mut headers = vec!["PORT", "URL"];
    if a.sandbox.is_none() {
        headers.insert(0, "SANDBOX");
    }
    let mut t = Table::new(&headers);
    for p in &ports {
        let mut row = vec![p.container_port.to_string(), client.url_of(&p.proxy_url)];
        if a.sandbox.is_none() {
            row.insert(0, p.sandbox_id.clone().unwrap_or_default());
        }
        t.row(row);
    }
    t.print_or("No listening ports.");
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volumes() {
        let v = parse_volume("data:/data").unwrap();
        assert_eq!(v.name, "data");
        assert_eq!(v.mount, "/data");
        assert!(!v.read_only);
        assert!(!v.auto_create);
        assert_eq!(v.size_mb, None);
        assert!(parse_volume("cache:/mnt/cache:ro").unwrap().read_only);
        assert!(!parse_volume("cache:/mnt/cache:rw").unwrap().read_only);
        assert!(parse_volume("data").is_err());
        assert!(parse_volume("data:relative").is_err());
        assert!(parse_volume(":/x").is_err());
        assert!(parse_volume("a:/x:rx").is_err());
        assert!(parse_volume("a:/x:ro:extra").is_err());
    }

    #[test]
    fn labels_and_files() {
        assert_eq!(parse_label("a=b").unwrap(), ("a".into(), "b".into()));
        assert_eq!(
            parse_label("team/x=").unwrap(),
            ("team/x".into(), "".into())
        );
        assert!(parse_label("novalue").is_err());
        assert!(parse_label("=v").is_err());
        assert_eq!(
            parse_file_spec("./a:b.txt:/etc/x").unwrap(),
            ("./a:b.txt".into(), "/etc/x".into())
        );
        assert!(parse_file_spec("a.txt").is_err());
        assert!(parse_file_spec("a.txt:rel").is_err());
        assert!(parse_file_spec(":/x").is_err());
    }

    fn args() -> CreateArgs {
        CreateArgs {
            name: Some("web".into()),
            image: None,
            cpus: Some(2.0),
            memory: 0,
            disk_size: Some(0),
            env: vec!["A=1".into(), "B=2,3".into()],
            init: None,
            keep_hot: true,
            timeout: Some(60),
            on_expiry: None,
            hugepages: false,
            template: None,
            volume: vec!["data:/data:ro".into()],
            secret: vec!["TOKEN".into()],
            file: vec![],
            label: vec!["team=infra".into()],
            from: None,
            egress: None,
        }
    }

    #[test]
    fn create_body() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("run.sh");
        std::fs::write(&f, b"#!/bin/sh\necho hi\n").unwrap();
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let mut a = args();
        a.file = vec![format!("{}:/usr/local/bin/run.sh", f.display())];
        let b = build_create(&a).unwrap();
        assert_eq!(b.name.as_deref(), Some("web"));
        assert_eq!(b.memory_mb, None, "0 = server default");
        assert_eq!(b.disk_size_mb, None);
        assert_eq!(b.cpus, Some(2.0));
        assert_eq!(b.env.len(), 2);
        assert_eq!(b.env["B"], "2,3", "a value keeps its commas");
        assert_eq!(b.persistent_volumes.len(), 1);
        assert!(b.persistent_volumes[0].read_only);
        assert_eq!(b.secrets, vec!["TOKEN".to_string()]);
        assert_eq!(b.labels["team"], "infra");
        assert_eq!(b.files.len(), 1);
        assert_eq!(b.files[0].guest_path, "/usr/local/bin/run.sh");
        assert_eq!(b.files[0].mode.as_deref(), Some("0755"));
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(&b.files[0].content)
            .unwrap();
        assert_eq!(decoded, b"#!/bin/sh\necho hi\n");

        assert_eq!(b.egress, None, "no --egress: the server decides");
        let mut deny = args();
        deny.egress = Some("deny".into());
        assert_eq!(
            build_create(&deny).unwrap().egress,
            Some(api::Egress::Mode("deny".into()))
        );

        let mut bad = args();
        bad.cpus = Some(0.0);
        assert!(build_create(&bad).is_err());
        let mut missing = args();
        missing.file = vec!["/definitely/not/here:/x".into()];
        assert!(build_create(&missing).is_err());
    }

    #[test]
    fn df_and_shape() {
        let out = "Filesystem     1M-blocks  Used Available Use% Mounted on\n/dev/vda            4032   812      3010  22% /\n";
        assert_eq!(parse_df(out), Some((812, 4032)));
        assert_eq!(parse_df("garbage"), None);
        let sb: api::Sandbox = serde_json::from_value(serde_json::json!({
            "id": "abc", "name": "web", "status": "running", "ip": "10.0.0.2",
            "engine": "qemu", "cpus": 2, "memory_mb": 1024, "image": "minimal",
            "created_at": "2024-01-01T00:00:00Z", "disk_size_mb": 4096, "thermal": "warm"
        }))
        .unwrap();
        assert_eq!(shape(&sb), "2 vCPU, 1024 MB, 4096 MB disk");
        assert_eq!(status_text(&sb), "running (warm)");
    }

    #[test]
    fn egress_flag() {
        assert_eq!(
            parse_egress("public").unwrap(),
            api::Egress::Mode("public".into())
        );
        assert_eq!(
            parse_egress(" deny ").unwrap(),
            api::Egress::Mode("deny".into())
        );
        assert_eq!(
            parse_egress("10.1.2.0/24, 198.51.100.7").unwrap(),
            api::Egress::Allow(vec!["10.1.2.0/24".into(), "198.51.100.7".into()])
        );
        for bad in ["", ",", "allow", "public,10.0.0.0/8", "10.0.0.0/8;rm"] {
            assert!(parse_egress(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            egress_text(&api::Egress::Allow(vec!["10.1.2.0/24".into()])),
            "allow 10.1.2.0/24"
        );
        assert_eq!(egress_text(&api::Egress::Mode("deny".into())), "deny");
    }
}
