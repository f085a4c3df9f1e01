//! `bhatti file read|write|ls|stat <sandbox> <path>`: files in a sandbox
//! over `/sandboxes/:id/files`.
//!
//! `read` streams the file to stdout as it arrives; `write` reads all of
//! stdin first because the API needs the `Content-Length` up front.

use std::io::{Read, Write};

use base64::Engine as _;
use bhatti_client::ReadOptions;
use bytes::Bytes;
use clap::{Args, Subcommand};

use super::Ctx;
use crate::output::{print_json, Table};

#[derive(Debug, Args)]
pub struct PathArgs {
    /// Sandbox name or ID.
    pub sandbox: String,
    /// Absolute path in the sandbox.
    pub path: String,
}

#[derive(Debug, Subcommand)]
pub enum FileCmd {
    /// Print a file to stdout.
    Read {
        #[command(flatten)]
        at: PathArgs,
        /// Start at this byte offset.
        #[arg(long, default_value_t = 0)]
        offset: u64,
        /// Read at most this many bytes.
        #[arg(long, default_value_t = 0)]
        limit: u64,
        /// Cap the response size (server-side truncation).
        #[arg(long, default_value_t = 0)]
        max_bytes: u64,
    },
    /// Write stdin to a file.
    Write {
        #[command(flatten)]
        at: PathArgs,
        /// Octal permission bits (default 0644).
        #[arg(long)]
        mode: Option<String>,
    },
    /// List a directory.
    Ls {
        #[command(flatten)]
        at: PathArgs,
    },
    /// Show a file's size, mode and type.
    Stat {
        #[command(flatten)]
        at: PathArgs,
    },
}

impl FileCmd {
    pub fn sandbox(&self) -> &str {
        match self {
            FileCmd::Read { at, .. }
            | FileCmd::Write { at, .. }
            | FileCmd::Ls { at }
            | FileCmd::Stat { at } => &at.sandbox,
        }
    }
}

/// One `ls` line: `d|-`, mode, size (right-aligned), name.
pub fn ls_line(f: &bhatti_api::FileInfo, size_width: usize) -> String {
    format!(
        "{} {} {:>w$} {}",
        if f.is_dir { 'd' } else { '-' },
        f.mode,
        f.size,
        f.name,
        w = size_width
    )
}

pub async fn run(ctx: &Ctx, c: FileCmd) -> anyhow::Result<i32> {
    let client = ctx.client()?;
    match c {
        FileCmd::Read {
            at,
            offset,
            limit,
            max_bytes,
        } => {
            let opts = ReadOptions {
                offset,
                limit,
                max_bytes,
            };
            let mut dl = client.read_file(&at.sandbox, &at.path, opts).await?;
            if ctx.json {
                let size = dl.size;
                let data = dl.bytes().await?;
                print_json(&serde_json::json!({
                    "path": at.path,
                    "size": size,
                    "content_base64": base64::engine::general_purpose::STANDARD.encode(&data),
                }))?;
                return Ok(0);
            }
            let mut out = std::io::stdout().lock();
            while let Some(chunk) = dl.chunk().await {
                let chunk = chunk?;
                if let Err(e) = out.write_all(&chunk) {
                    if e.kind() == std::io::ErrorKind::BrokenPipe {
                        return Ok(0);
                    }
                    return Err(e.into());
                }
            }
            let _ = out.flush();
            Ok(0)
        }
        FileCmd::Write { at, mode } => {
            let mut data = Vec::new();
            std::io::stdin().lock().read_to_end(&mut data)?;
            let n = data.len();
            let st = client
                .write_file(&at.sandbox, &at.path, Bytes::from(data), mode.as_deref())
                .await?;
            if ctx.json {
                print_json(&serde_json::json!({"status": st.status, "path": at.path, "bytes": n}))?;
            } else {
                eprintln!("wrote {n} bytes to {}:{}", at.sandbox, at.path);
            }
            Ok(0)
        }
        FileCmd::Ls { at } => {
            let list = client.list_files(&at.sandbox, &at.path).await?;
            if ctx.json {
                print_json(&list)?;
                return Ok(0);
            }
            let w = list
                .iter()
                .map(|f| f.size.to_string().len())
                .max()
                .unwrap_or(1);
            let mut text = String::new();
            for f in &list {
                text.push_str(&ls_line(f, w));
                text.push('\n');
            }
            crate::output::print_text(&text);
            Ok(0)
        }
        FileCmd::Stat { at } => {
            let st = client.stat_file(&at.sandbox, &at.path).await?;
            if ctx.json {
                print_json(&st)?;
                return Ok(0);
            }
            let mut t = Table::new(&["PATH", "TYPE", "MODE", "SIZE"]);
            t.row([
                at.path.clone(),
                if st.is_dir { "dir" } else { "file" }.to_string(),
                st.mode.clone(),
                st.size.to_string(),
            ]);
            t.print();
            Ok(0)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ls_lines() {
        let f = bhatti_api::FileInfo {
            name: "etc".into(),
            size: 4096,
            mode: "0755".into(),
            is_dir: true,
            mtime: 0,
        };
        assert_eq!(ls_line(&f, 6), "d 0755   4096 etc");
        let g = bhatti_api::FileInfo {
            name: "a.txt".into(),
            size: 3,
            mode: "0644".into(),
            is_dir: false,
            mtime: 0,
        };
        assert_eq!(ls_line(&g, 4), "- 0644    3 a.txt");
    }
}
