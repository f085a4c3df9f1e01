//! `bhatti secret set|list|delete`: per-user secrets, stored encrypted by
//! the daemon and injected into sandboxes created with `--secret NAME`.
//! Values are never shown again after `set`.

use std::io::{IsTerminal, Read};

use anyhow::bail;
use clap::Subcommand;

use super::{aborted, Ctx};
use crate::output::{print_json, Table};

#[derive(Debug, Subcommand)]
pub enum SecretCmd {
    /// Create or replace a secret (value from stdin when omitted).
    Set { name: String, value: Option<String> },
    /// List secret names.
    #[command(visible_alias = "ls")]
    List,
    /// Delete a secret.
    #[command(visible_alias = "rm")]
    Delete {
        name: String,
        /// Do not ask for confirmation.
        #[arg(short, long)]
        yes: bool,
    },
}

/// A value piped on stdin loses one trailing newline (`echo x | …`).
pub fn stdin_value(mut s: String) -> String {
    if s.ends_with('\n') {
        s.pop();
        if s.ends_with('\r') {
            s.pop();
        }
    }
    s
}

pub async fn run(ctx: &Ctx, c: SecretCmd) -> anyhow::Result<i32> {
    let client = ctx.client()?;
    match c {
        SecretCmd::Set { name, value } => {
            let value = match value {
                Some(v) => v,
                None => {
                    if std::io::stdin().is_terminal() {
                        eprintln!("Reading the value from stdin (end with Ctrl+D)…");
                    }
                    let mut s = String::new();
                    std::io::stdin().lock().read_to_string(&mut s)?;
                    stdin_value(s)
                }
            };
            if value.is_empty() {
                bail!("the secret value is empty");
            }
            let s = client.set_secret(&name, &value).await?;
            if ctx.json {
                print_json(&s)?;
            } else {
                outln!("secret/{} set", s.name);
            }
        }
        SecretCmd::List => {
            let list = client.list_secrets().await?;
            if ctx.json {
                print_json(&list)?;
                return Ok(0);
            }
            let mut t = Table::new(&["NAME", "CREATED", "UPDATED"]);
            for s in &list {
                t.row([s.name.clone(), s.created_at.clone(), s.updated_at.clone()]);
            }
            t.print_or("No secrets. Add one: bhatti secret set NAME VALUE");
        }
        SecretCmd::Delete { name, yes } => {
            if !ctx.confirm(yes, &format!("Delete secret/{name}?"))? {
                return aborted();
            }
            let st = client.delete_secret(&name).await?;
            if ctx.json {
                print_json(&st)?;
            } else {
                outln!("secret/{name} deleted");
            }
        }
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::stdin_value;

    #[test]
    fn one_trailing_newline_is_dropped() {
        assert_eq!(stdin_value("abc\n".into()), "abc");
        assert_eq!(stdin_value("abc\r\n".into()), "abc");
        assert_eq!(stdin_value("abc\n\n".into()), "abc\n");
        assert_eq!(stdin_value("abc".into()), "abc");
    }
}
