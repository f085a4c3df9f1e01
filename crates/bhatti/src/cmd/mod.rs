//! The command implementations, one module per command family, plus what
//! they share: the [`Ctx`] (global flags, the lazily built API client),
//! confirmation prompts for destructive commands, and spinners.
//!
//! Commands return the process exit code (`exec` passes the command's own
//! code through); errors bubble up as `anyhow` errors whose root may be a
//! [`bhatti_client::ClientError`], which `main` prints with its hint.

pub mod admin;
pub mod cp;
pub mod exec;
pub mod files;
pub mod image;
pub mod logs;
pub mod publish;
pub mod run;
pub mod sandbox;
pub mod secret;
pub mod setup;
pub mod shell;
pub mod snapshot;
pub mod stats;
pub mod template;
pub mod user;
pub mod version;
pub mod volume;

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::bail;
use bhatti_client::{Client, ClientConfig, ClientError, Environment, Overrides};
use indicatif::{ProgressBar, ProgressStyle};

/// What every command gets: the global flags and the API client.
pub struct Ctx {
    pub json: bool,
    pub overrides: Overrides,
    client: OnceLock<Client>,
    config: OnceLock<ClientConfig>,
}

impl Ctx {
    pub fn new(json: bool, overrides: Overrides) -> Ctx {
        Ctx {
            json,
            overrides,
            client: OnceLock::new(),
            config: OnceLock::new(),
        }
    }

    /// The resolved client configuration (flags, config file, env).
    pub fn config(&self) -> anyhow::Result<&ClientConfig> {
        if let Some(c) = self.config.get() {
            return Ok(c);
        }
        let c = ClientConfig::resolve(&self.overrides).map_err(ClientError::from)?;
        Ok(self.config.get_or_init(|| c))
    }

    /// The API client, built on first use.
    pub fn client(&self) -> anyhow::Result<&Client> {
        if let Some(c) = self.client.get() {
            return Ok(c);
        }
        let c = Client::new(self.config()?.clone())?;
        Ok(self.client.get_or_init(|| c))
    }

    /// The client if one was built (for after-the-fact checks in `main`).
    pub fn built_client(&self) -> Option<&Client> {
        self.client.get()
    }

    /// The daemon's data directory (for DB-direct commands).
    pub fn data_dir(&self) -> PathBuf {
        Environment::from_process().data_dir(self.overrides.data_dir.as_deref())
    }

    /// Asks `question [y/N]` unless `yes`. Without a terminal on stdin the
    /// answer cannot be asked for, so the command is refused.
    pub fn confirm(&self, yes: bool, question: &str) -> anyhow::Result<bool> {
        if yes {
            return Ok(true);
        }
        if !std::io::stdin().is_terminal() {
            bail!("refusing without confirmation: stdin is not a terminal ({question}); pass -y/--yes");
        }
        eprint!("{question} [y/N] ");
        let _ = std::io::stderr().flush();
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line)?;
        Ok(is_yes(&line))
    }

    /// A spinner on stderr while `msg` is in progress; nothing when stderr
    /// is not a terminal.
    pub fn spinner(&self, msg: impl Into<String>) -> Spinner {
        if !std::io::stderr().is_terminal() {
            return Spinner(None);
        }
        let pb = ProgressBar::new_spinner();
        if let Ok(style) = ProgressStyle::with_template("{spinner} {msg} ({elapsed})") {
            pb.set_style(style);
        }
        pb.set_message(msg.into());
        pb.enable_steady_tick(Duration::from_millis(100));
        Spinner(Some(pb))
    }
}

/// `y` / `yes` (any case) is yes; everything else is no.
pub fn is_yes(answer: &str) -> bool {
    matches!(answer.trim().to_ascii_lowercase().as_str(), "y" | "yes")
}

/// A running spinner; cleared when dropped.
pub struct Spinner(Option<ProgressBar>);

impl Drop for Spinner {
    fn drop(&mut self) {
        if let Some(pb) = self.0.take() {
            pb.finish_and_clear();
        }
    }
}

/// Printed when the user answers no.
pub fn aborted() -> anyhow::Result<i32> {
    eprintln!("Aborted.");
    Ok(1)
}

#[cfg(test)]
mod tests {
    use super::is_yes;

    #[test]
    fn only_yes_is_yes() {
        assert!(is_yes("y\n"));
        assert!(is_yes(" YES "));
        assert!(!is_yes("\n"));
        assert!(!is_yes("n"));
        assert!(!is_yes("yep"));
    }
}
