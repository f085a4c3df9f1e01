//! Snapshot directories on disk: written into a staging directory, sealed with a
//! manifest (format version, generation, file sizes, checksums of the small
//! files), fsynced, and renamed into place — so a snapshot is either whole or
//! absent. Restore checks the manifest against the files before the VMM ever
//! sees them, so a damaged snapshot is a clear error rather than a VMM crash.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::contract::{EngineError, Result};
use crate::microvm::disk::sync_dir;
use crate::vmm::SnapshotFiles;

/// Version of [`SnapshotManifest`]'s layout.
pub const MANIFEST_VERSION: u32 = 1;
/// The manifest's file name inside a snapshot directory.
const MANIFEST: &str = "manifest.json";
/// Files up to this size get a SHA-256 in the manifest.
const CHECKSUM_MAX: u64 = 1 << 20;

/// `manifest.json` of a sandbox's cold snapshot (`<sandbox>/snapshot/`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct SnapshotManifest {
    /// [`MANIFEST_VERSION`] when written; another version is refused.
    pub format_version: u32,
    /// The sandbox generation the snapshot belongs to.
    pub generation: u64,
    /// When the snapshot was sealed, in seconds since the Unix epoch.
    pub created_at_unix: u64,
    /// The VMM's description (its `dir` is rewritten to wherever the snapshot
    /// directory is when it is loaded).
    pub vmm: SnapshotFiles,
    /// Every file of the directory but the manifest, with its size.
    pub files: BTreeMap<String, u64>,
    /// Hex SHA-256 of every file up to 1 MiB, by name; checked on load.
    pub checksums: BTreeMap<String, String>,
    /// Diff snapshots merged into this one since the last Full one (0 for a
    /// Full snapshot); see `MicroVmConfig::diff_snapshots`.
    #[serde(default)]
    pub diff_chain: u32,
}

pub fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// `.<name>.tmp` beside `final_dir`.
pub fn staging_dir(final_dir: &Path) -> Result<PathBuf> {
    let name = final_dir
        .file_name()
        .ok_or_else(|| EngineError::Invalid(format!("bad snapshot dir {}", final_dir.display())))?;
    Ok(final_dir.with_file_name(format!(".{}.tmp", name.to_string_lossy())))
}

fn sha256_file(path: &Path) -> Result<String> {
    use sha2::{Digest, Sha256};
    let data = std::fs::read(path)?;
    Ok(hex::encode(Sha256::digest(&data)))
}

/// Sizes (and small-file checksums) of every regular file in `dir` except the
/// manifest.
pub fn inventory(dir: &Path) -> Result<(BTreeMap<String, u64>, BTreeMap<String, String>)> {
    let mut files = BTreeMap::new();
    let mut sums = BTreeMap::new();
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let name = e.file_name().to_string_lossy().into_owned();
        let md = e.metadata()?;
        if !md.is_file() || name == MANIFEST {
            continue;
        }
        if md.len() <= CHECKSUM_MAX {
            sums.insert(name.clone(), sha256_file(&e.path())?);
        }
        files.insert(name, md.len());
    }
    Ok((files, sums))
}

/// Writes `manifest.json` (fsynced), fsyncs every file and the directory.
pub fn seal<T: Serialize>(dir: &Path, manifest: &T) -> Result<()> {
    use std::io::Write;
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        if e.metadata()?.is_file() {
            std::fs::File::open(e.path())?.sync_all()?;
        }
    }
    let json = serde_json::to_vec_pretty(manifest)?;
    let mut f = std::fs::File::create(dir.join(MANIFEST))?;
    f.write_all(&json)?;
    f.sync_all()?;
    sync_dir(dir)
}

/// Renames the sealed staging directory over `final_dir` (the previous one, if
/// any, is removed only after the new one is in place).
pub fn commit(staging: &Path, final_dir: &Path) -> Result<()> {
    let parent = final_dir
        .parent()
        .ok_or_else(|| EngineError::Invalid("snapshot dir has no parent".into()))?;
    let old = final_dir.with_file_name(format!(
        ".{}.old",
        final_dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    ));
    let _ = std::fs::remove_dir_all(&old);
    let had_old = final_dir.exists();
    if had_old {
        std::fs::rename(final_dir, &old)?;
    }
    std::fs::rename(staging, final_dir)?;
    sync_dir(parent)?;
    if had_old {
        let _ = std::fs::remove_dir_all(&old);
    }
    Ok(())
}

/// Checks every file the manifest lists (presence, size, checksum) and returns
/// the manifest with the VMM description pointed at `dir`.
pub fn load_checked<T: for<'de> Deserialize<'de>>(
    dir: &Path,
    files_of: impl Fn(&T) -> (&BTreeMap<String, u64>, &BTreeMap<String, String>),
) -> Result<T> {
    let m: T = read_manifest(dir)?;
    let (files, sums) = files_of(&m);
    for (name, size) in files {
        let p = dir.join(name);
        let md = std::fs::metadata(&p)
            .map_err(|e| EngineError::Invalid(format!("snapshot file {}: {e}", p.display())))?;
        if md.len() != *size {
            return Err(EngineError::Invalid(format!(
                "snapshot file {} is {} bytes, manifest says {size}",
                p.display(),
                md.len()
            )));
        }
    }
    for (name, want) in sums {
        let got = sha256_file(&dir.join(name))?;
        if &got != want {
            return Err(EngineError::Invalid(format!(
                "snapshot file {name}: checksum mismatch"
            )));
        }
    }
    Ok(m)
}

/// Reads a cold snapshot's manifest without checking its files (they were
/// checked when the running VM was restored from them).
pub fn peek_snapshot(dir: &Path) -> Result<SnapshotManifest> {
    let mut m: SnapshotManifest = read_manifest(dir)?;
    m.vmm.dir = dir.to_path_buf();
    Ok(m)
}

/// `dir`'s manifest, parsed; nothing else is looked at.
fn read_manifest<T: for<'de> Deserialize<'de>>(dir: &Path) -> Result<T> {
    let raw = std::fs::read(dir.join(MANIFEST)).map_err(|e| {
        EngineError::Invalid(format!("snapshot {}: no manifest: {e}", dir.display()))
    })?;
    serde_json::from_slice(&raw)
        .map_err(|e| EngineError::Invalid(format!("snapshot {}: bad manifest: {e}", dir.display())))
}

/// Loads a sandbox's cold snapshot, checked.
pub fn load_snapshot(dir: &Path) -> Result<SnapshotManifest> {
    let mut m: SnapshotManifest =
        load_checked(dir, |m: &SnapshotManifest| (&m.files, &m.checksums))?;
    if m.format_version != MANIFEST_VERSION {
        return Err(EngineError::Invalid(format!(
            "snapshot {}: manifest format {} is not supported (want {MANIFEST_VERSION})",
            dir.display(),
            m.format_version
        )));
    }
    m.vmm.dir = dir.to_path_buf();
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize, Deserialize)]
    struct M {
        files: BTreeMap<String, u64>,
        checksums: BTreeMap<String, String>,
    }

    #[test]
    fn seal_commit_load_and_detect_damage() {
        let base = tempfile::tempdir().unwrap();
        let fin = base.path().join("snap");
        let stage = staging_dir(&fin).unwrap();
        std::fs::create_dir(&stage).unwrap();
        std::fs::write(stage.join("a.bin"), b"hello").unwrap();
        let (files, checksums) = inventory(&stage).unwrap();
        seal(&stage, &M { files, checksums }).unwrap();
        commit(&stage, &fin).unwrap();
        assert!(!stage.exists());
        let m: M = load_checked(&fin, |m: &M| (&m.files, &m.checksums)).unwrap();
        assert_eq!(m.files["a.bin"], 5);

        // A second commit replaces the first.
        std::fs::create_dir(&stage).unwrap();
        std::fs::write(stage.join("b.bin"), b"x").unwrap();
        let (files, checksums) = inventory(&stage).unwrap();
        seal(&stage, &M { files, checksums }).unwrap();
        commit(&stage, &fin).unwrap();
        assert!(fin.join("b.bin").exists() && !fin.join("a.bin").exists());

        // Same size, different content: caught by the checksum.
        std::fs::write(fin.join("b.bin"), b"y").unwrap();
        let err = load_checked(&fin, |m: &M| (&m.files, &m.checksums))
            .err()
            .unwrap();
        assert!(err.to_string().contains("checksum"));
        // Truncated: caught by the size.
        std::fs::write(fin.join("b.bin"), b"").unwrap();
        assert!(load_checked(&fin, |m: &M| (&m.files, &m.checksums)).is_err());
        // No manifest at all.
        std::fs::remove_file(fin.join(MANIFEST)).unwrap();
        assert!(load_checked(&fin, |m: &M| (&m.files, &m.checksums))
            .err()
            .unwrap()
            .to_string()
            .contains("no manifest"));
    }
}
