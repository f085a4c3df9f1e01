//! Per-sandbox disk files: copy-on-write clones of base images, growing a root
//! disk, and the config drive (built without mounting anything).

use std::path::Path;

use bhatti_protocol::config::GuestConfig;
use tokio::process::Command;

use crate::contract::{EngineError, Result};

/// Smallest config drive; ext4 needs some room for its metadata.
const CONFIG_DRIVE_MIN: u64 = 4 * 1024 * 1024;

async fn run(cmd: &mut Command, what: &str) -> Result<std::process::Output> {
    let out = cmd.output().await.map_err(|source| EngineError::Host {
        what: what.to_string(),
        source,
    })?;
    Ok(out)
}

fn failed(what: &str, out: &std::process::Output) -> EngineError {
    EngineError::HostCommand {
        what: what.to_string(),
        status: out.status,
        stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
    }
}

/// `cp --reflink=auto --sparse=always`: instant on btrfs/xfs, a sparse copy
/// elsewhere.
pub async fn cow_copy(src: &Path, dst: &Path) -> Result<()> {
    let out = run(
        Command::new("cp")
            .arg("--reflink=auto")
            .arg("--sparse=always")
            .arg(src)
            .arg(dst),
        "cp",
    )
    .await?;
    if !out.status.success() {
        return Err(failed(&format!("copy {}", src.display()), &out));
    }
    Ok(())
}

/// Grows an ext4 image to `size_mb` (never shrinks).
pub async fn grow(img: &Path, size_mb: u64) -> Result<()> {
    let want = size_mb
        .checked_mul(1024 * 1024)
        .ok_or_else(|| EngineError::Invalid(format!("disk size {size_mb} MiB is too large")))?;
    let have = tokio::fs::metadata(img).await?.len();
    if want <= have {
        return Ok(());
    }
    // e2fsck exits 1 when it fixed something; only ≥ 4 is a real failure.
    let out = run(
        Command::new("e2fsck").arg("-f").arg("-y").arg(img),
        "e2fsck",
    )
    .await?;
    if out.status.code().unwrap_or(8) >= 4 {
        return Err(failed("e2fsck", &out));
    }
    let f = std::fs::OpenOptions::new().write(true).open(img)?;
    f.set_len(want)?;
    drop(f);
    let out = run(Command::new("resize2fs").arg(img), "resize2fs").await?;
    if !out.status.success() {
        return Err(failed("resize2fs", &out));
    }
    Ok(())
}

/// Writes `config.json` into a fresh ext4 image with `mke2fs -d`. The staging
/// directory holds the agent token, so it is removed at once.
pub async fn build_config_drive(cfg: &GuestConfig, out: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let json = serde_json::to_vec_pretty(cfg)?;
    let parent = out
        .parent()
        .ok_or_else(|| EngineError::Invalid("config drive path has no parent".into()))?;
    let staging = parent.join(".config-drive");
    let _ = tokio::fs::remove_dir_all(&staging).await;
    tokio::fs::create_dir(&staging).await?;
    tokio::fs::set_permissions(&staging, std::fs::Permissions::from_mode(0o700)).await?;
    let res = async {
        tokio::fs::write(staging.join("config.json"), &json).await?;
        // Twice the JSON plus 1 MiB for ext4's own metadata.
        let size = CONFIG_DRIVE_MIN.max(
            (json.len() as u64)
                .saturating_mul(2)
                .saturating_add(1024 * 1024),
        );
        let out_run = run(
            Command::new("mke2fs")
                .args(["-t", "ext4", "-q", "-F", "-L", "bhatti-cfg", "-d"])
                .arg(&staging)
                .arg(out)
                .arg(format!("{}k", size / 1024)),
            "mke2fs",
        )
        .await?;
        if !out_run.status.success() {
            return Err(failed("mke2fs (config drive)", &out_run));
        }
        tokio::fs::set_permissions(out, std::fs::Permissions::from_mode(0o600)).await?;
        Ok(())
    }
    .await;
    let _ = tokio::fs::remove_dir_all(&staging).await;
    res
}

/// The `config.json` a config drive holds, read with `debugfs` (nothing is
/// mounted): a fork's drive is its source's, rewritten with the fork's own
/// token.
pub async fn read_config_drive(drive: &Path) -> Result<GuestConfig> {
    let out = run(
        Command::new("debugfs")
            .arg("-R")
            .arg("cat /config.json")
            .arg(drive),
        "debugfs",
    )
    .await?;
    if !out.status.success() {
        return Err(failed("debugfs (config drive)", &out));
    }
    serde_json::from_slice(&out.stdout).map_err(|e| {
        EngineError::Invalid(format!(
            "the config drive {} holds no readable config.json: {e}",
            drive.display()
        ))
    })
}

/// fsyncs a directory so a rename inside it is durable.
pub fn sync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir)?.sync_all()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a config drive is built from is what reading it back gives (a
    /// fork's drive is rewritten that way), and a drive without a config
    /// is a clear error. Needs e2fsprogs (mke2fs, debugfs), no root.
    #[tokio::test]
    async fn a_config_drive_reads_back_as_written() {
        let dir = tempfile::tempdir().unwrap();
        let drive = dir.path().join("config.ext4");
        let cfg = GuestConfig {
            hostname: "fork-source".into(),
            token: "0123456789abcdef0123456789abcdef".into(),
            ..GuestConfig::default()
        };
        build_config_drive(&cfg, &drive).await.unwrap();
        let back = read_config_drive(&drive).await.unwrap();
        assert_eq!(back, cfg);
        let not_a_drive = dir.path().join("empty.ext4");
        std::fs::write(&not_a_drive, b"").unwrap();
        assert!(read_config_drive(&not_a_drive).await.is_err());
    }
}
