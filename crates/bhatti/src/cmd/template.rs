//! `bhatti template create|list|inspect|delete`: a create's defaults saved
//! under a name (`bhatti create --template NAME`), per user.

use bhatti_api as api;
use clap::{Args, Subcommand};

use super::{aborted, Ctx};
use crate::output::{print_json, Fields, Table};

#[derive(Debug, Subcommand)]
pub enum TemplateCmd {
    /// Save a template.
    Create(Box<TemplateArgs>),
    /// List templates.
    #[command(visible_alias = "ls")]
    List,
    /// Show a template.
    Inspect { template: String },
    /// Delete a template.
    #[command(visible_alias = "rm")]
    Delete {
        template: String,
        /// Do not ask for confirmation.
        #[arg(short, long)]
        yes: bool,
    },
}

#[derive(Debug, Args)]
pub struct TemplateArgs {
    /// The template's name.
    #[arg(long)]
    pub name: String,
    /// Root filesystem image.
    #[arg(long)]
    pub image: Option<String>,
    /// vCPUs.
    #[arg(long)]
    pub cpus: Option<f64>,
    /// Memory in MB.
    #[arg(long)]
    pub memory: Option<u64>,
    /// Root disk size in MB.
    #[arg(long)]
    pub disk_size: Option<u64>,
    /// A variable (repeatable; commas kept).
    #[arg(short = 'e', long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Secrets injected as variables (repeatable).
    #[arg(long, value_name = "NAME")]
    pub secret: Vec<String>,
    /// Script run once at first boot.
    #[arg(long, value_name = "SCRIPT")]
    pub init: Option<String>,
    /// A label (repeatable).
    #[arg(long, value_name = "K=V")]
    pub label: Vec<String>,
    /// A persistent volume: name:/mount[:ro] (repeatable).
    #[arg(short = 'v', long, value_name = "NAME:MOUNT[:ro]")]
    pub volume: Vec<String>,
}

fn body(a: TemplateArgs) -> anyhow::Result<api::Template> {
    let mut labels = std::collections::BTreeMap::new();
    for l in &a.label {
        let (k, v) = super::sandbox::parse_label(l)?;
        labels.insert(k, v);
    }
    let persistent_volumes = a
        .volume
        .iter()
        .map(|v| super::sandbox::parse_volume(v))
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(api::Template {
        id: String::new(),
        name: a.name,
        image: a.image.unwrap_or_default(),
        cpus: a.cpus,
        memory_mb: a.memory,
        disk_size_mb: a.disk_size.unwrap_or(0),
        env: super::exec::env_flags(&a.env)?,
        secrets: a.secret,
        files: Vec::new(),
        persistent_volumes,
        init: a.init.unwrap_or_default(),
        labels,
        created_at: String::new(),
    })
}

pub async fn run(ctx: &Ctx, c: TemplateCmd) -> anyhow::Result<i32> {
    let client = ctx.client()?;
    match c {
        TemplateCmd::Create(a) => {
            let t = client.create_template(&body(*a)?).await?;
            if ctx.json {
                print_json(&t)?;
            } else {
                outln!("template/{} created ({})", t.name, t.id);
            }
        }
        TemplateCmd::List => {
            let list = client.list_templates().await?;
            if ctx.json {
                print_json(&list)?;
                return Ok(0);
            }
            let mut t = Table::new(&["NAME", "ID", "IMAGE", "CPUS", "MEMORY", "CREATED"]);
            for x in &list {
                t.row([
                    x.name.clone(),
                    x.id.clone(),
                    x.image.clone(),
                    x.cpus.map(|c| c.to_string()).unwrap_or_default(),
                    x.memory_mb.map(|m| format!("{m} MB")).unwrap_or_default(),
                    x.created_at.clone(),
                ]);
            }
            t.print_or("No templates. Save one: bhatti template create --name NAME --image IMAGE");
        }
        TemplateCmd::Inspect { template } => {
            let t = client.get_template(&template).await?;
            if ctx.json {
                print_json(&t)?;
                return Ok(0);
            }
            let mut f = Fields::new();
            f.add("Name", t.name.clone())
                .add("ID", t.id.clone())
                .add("Image", t.image.clone())
                .add("CPUs", t.cpus.map(|c| c.to_string()).unwrap_or_default())
                .add(
                    "Memory",
                    t.memory_mb.map(|m| format!("{m} MB")).unwrap_or_default(),
                )
                .add("Env", t.env.keys().cloned().collect::<Vec<_>>().join(", "))
                .add("Secrets", t.secrets.join(", "))
                .add("Created", t.created_at.clone());
            f.print();
        }
        TemplateCmd::Delete { template, yes } => {
            if !ctx.confirm(yes, &format!("Delete template/{template}?"))? {
                return aborted();
            }
            client.delete_template(&template).await?;
            if !ctx.json {
                outln!("template/{template} deleted");
            }
        }
    }
    Ok(0)
}
