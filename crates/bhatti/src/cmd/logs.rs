//! `bhatti logs SANDBOX [OUTPUT_FILE]`: what a sandbox printed where no one
//! was watching. Without a file, the guest's console (boot log, kernel
//! messages, the agent's log; a container's output on Docker: `docker
//! logs`). With the output file `exec -d` printed, that detached command's
//! output, and `-f` follows it as it grows (`tail -f`).

use std::time::Duration;

use bhatti_client::ReadOptions;
use clap::Args;

use super::Ctx;
use crate::output::{print_bytes, print_json};

/// How often `-f` looks for new output.
const FOLLOW_EVERY: Duration = Duration::from_millis(500);

#[derive(Debug, Args)]
pub struct LogsArgs {
    /// Sandbox name or ID.
    pub sandbox: String,
    /// A detached command's output file (as `exec -d` printed it); none:
    /// the guest's console.
    pub output_file: Option<String>,
    /// Keep printing what is appended to the output file.
    #[arg(short, long, requires = "output_file")]
    pub follow: bool,
    /// Only the newest BYTES of the console.
    #[arg(long, value_name = "BYTES", conflicts_with = "output_file")]
    pub tail: Option<u64>,
}

pub async fn run(ctx: &Ctx, a: LogsArgs) -> anyhow::Result<i32> {
    let client = ctx.client()?;
    let Some(file) = a.output_file else {
        let text = client.console(&a.sandbox, a.tail).await?;
        if ctx.json {
            print_json(&serde_json::json!({"sandbox": a.sandbox, "console": text}))?;
        } else {
            print_bytes(text.as_bytes());
        }
        return Ok(0);
    };
    if !a.follow {
        let mut dl = client
            .read_file(&a.sandbox, &file, ReadOptions::default())
            .await?;
        while let Some(chunk) = dl.chunk().await {
            print_bytes(&chunk?);
        }
        return Ok(0);
    }
    // Following. File reads with an offset count lines, not bytes (the
    // API's line mode, which also ends a last partial line with a newline
    // of its own), so this keeps both counts: it asks from the first line
    // not yet printed for at most the bytes the file had grown by, and
    // prints only whole lines; a partial line waits for its newline.
    let (mut lines_done, mut bytes_done) = (0u64, 0u64);
    loop {
        let size = client.stat_file(&a.sandbox, &file).await?.size;
        if size < bytes_done {
            // Truncated or replaced: start over, as tail -F does.
            (lines_done, bytes_done) = (0, 0);
        }
        if let Some(grown) = size.checked_sub(bytes_done).filter(|g| *g > 0) {
            let opts = ReadOptions {
                offset: lines_done.saturating_add(1),
                max_bytes: grown,
                ..ReadOptions::default()
            };
            let mut got = Vec::new();
            let mut dl = client.read_file(&a.sandbox, &file, opts).await?;
            while let Some(chunk) = dl.chunk().await {
                got.extend_from_slice(&chunk?);
            }
            got.truncate(usize::try_from(grown).unwrap_or(usize::MAX));
            if let Some(end) = got.iter().rposition(|&b| b == b'\n') {
                let whole = &got[..=end];
                print_bytes(whole);
                bytes_done = bytes_done.saturating_add(whole.len() as u64);
                let n = whole.iter().filter(|&&b| b == b'\n').count() as u64;
                lines_done = lines_done.saturating_add(n);
            }
        }
        tokio::time::sleep(FOLLOW_EVERY).await;
    }
}
