//! Applying image layers onto a staging tree, as an overlay filesystem would
//! have stacked them.
//!
//! The daemon does this as root on the host, from bytes a registry or an
//! uploader chose, so every write is checked first:
//! - entry paths must be relative and free of `..` (refused, not skipped:
//!   a layer that tries is not an image we want to half-apply);
//! - device nodes are refused (a sandbox gets its `/dev` from the kernel);
//! - whiteouts and opaque markers remove only real paths inside the tree,
//!   never through a symlink a lower layer planted;
//! - writes go through the tar crate's `unpack_in`, which validates that
//!   each parent directory resolves inside the tree before creating
//!   anything, and replaces files with `O_EXCL` rather than writing through
//!   what is there.
//!
//! Compression is sniffed from the bytes (gzip, zstd, or plain tar), not
//! trusted from the media type, and the decompressed stream is read to its
//! end so a truncated or corrupt layer (gzip's CRC is at the end) fails.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, Read};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use crate::error::{ImageError, Result};

const WHITEOUT: &[u8] = b".wh.";
const OPAQUE: &[u8] = b".wh..wh..opq";

/// Applies one layer blob (gzip, zstd or plain tar) onto `root`.
pub fn apply_layer(root: &Path, blob: &Path, digest: &str) -> Result<()> {
    let short = digest.get(..19).unwrap_or(digest).to_string();
    let lerr = |detail: String| ImageError::Layer {
        layer: short.clone(),
        detail,
    };
    let f = File::open(blob).map_err(|e| lerr(format!("open blob: {e}")))?;
    let mut br = BufReader::with_capacity(256 * 1024, f);
    let head = br.fill_buf().map_err(|e| lerr(format!("read: {e}")))?;
    if head.is_empty() {
        return Err(lerr("empty layer".into()));
    }
    let decoded: Box<dyn Read> = if head.starts_with(&[0x1f, 0x8b]) {
        Box::new(flate2::read::MultiGzDecoder::new(br))
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Box::new(
            zstd::stream::read::Decoder::with_buffer(br).map_err(|e| lerr(format!("zstd: {e}")))?,
        )
    } else {
        Box::new(br)
    };
    let mut ar = tar::Archive::new(decoded);
    // SAFETY: geteuid has no preconditions.
    let is_root = unsafe { libc::geteuid() } == 0;
    ar.set_preserve_permissions(true);
    ar.set_preserve_ownerships(is_root);
    ar.set_unpack_xattrs(true);
    ar.set_preserve_mtime(true);
    ar.set_overwrite(true);

    // Paths this layer wrote: an opaque marker hides the lower layers'
    // entries of its directory, not the ones this layer put there first.
    let mut seen: HashSet<PathBuf> = HashSet::new();
    let entries = ar
        .entries()
        .map_err(|e| lerr(format!("corrupt or truncated: {e}")))?;
    for entry in entries {
        let mut e = entry.map_err(|e| lerr(format!("corrupt or truncated: {e}")))?;
        let raw = e.path_bytes().into_owned();
        let rel = checked_rel(&raw).map_err(&lerr)?;
        let Some(name) = rel.file_name().map(|n| n.as_bytes().to_vec()) else {
            // The layer's root directory itself ("./").
            continue;
        };
        let kind = e.header().entry_type();
        if kind.is_block_special() || kind.is_character_special() {
            return Err(lerr(format!(
                "{}: device nodes are not allowed in images",
                rel.display()
            )));
        }
        let parent = rel.parent().unwrap_or(Path::new(""));
        if name == OPAQUE {
            if let Some(dir) = real_dir(root, parent).map_err(&lerr)? {
                clear_lower(&dir, parent, &seen)
                    .map_err(|e| lerr(format!("{}: {e}", rel.display())))?;
            }
            continue;
        }
        if let Some(hidden) = name.strip_prefix(WHITEOUT) {
            if hidden.is_empty() || hidden == b"." || hidden == b".." {
                return Err(lerr(format!("{}: malformed whiteout", rel.display())));
            }
            if let Some(dir) = real_dir(root, parent).map_err(&lerr)? {
                remove_any(&dir.join(OsStr::from_bytes(hidden)))
                    .map_err(|e| lerr(format!("{}: {e}", rel.display())))?;
            }
            continue;
        }
        // A directory replacing a file (or the reverse) replaces it whole.
        // (A parent that goes through a symlink is left to `unpack_in`,
        // which allows it only when it resolves inside the tree.)
        if let Ok(Some(dir)) = real_dir(root, parent) {
            let dst = dir.join(OsStr::from_bytes(&name));
            if let Ok(m) = fs::symlink_metadata(&dst) {
                if m.is_dir() != kind.is_dir() {
                    remove_any(&dst).map_err(|e| lerr(format!("{}: {e}", rel.display())))?;
                }
            }
        }
        match e.unpack_in(root) {
            Ok(true) => {}
            Ok(false) => {
                return Err(lerr(format!(
                    "{}: path leaves the image root",
                    rel.display()
                )))
            }
            Err(err) if is_bad_stream(&err) => {
                return Err(lerr(format!(
                    "corrupt or truncated at {}: {}",
                    rel.display(),
                    chain(&err)
                )))
            }
            Err(err) => return Err(lerr(format!("{}: {}", rel.display(), chain(&err)))),
        }
        seen.insert(rel);
    }
    // Read the stream to its end: gzip's CRC and length are in the trailer,
    // and bytes after the tar's end-of-archive blocks must still decode.
    let mut rest = ar.into_inner();
    io::copy(&mut rest, &mut io::sink()).map_err(|e| lerr(format!("corrupt or truncated: {e}")))?;
    Ok(())
}

/// An error with its causes (the tar crate puts the OS error in `source`).
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// Whether an unpack error came from the layer's bytes (a decoder or the
/// tar stream ending early or making no sense) rather than from the host.
fn is_bad_stream(e: &io::Error) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    let mut kind = e.kind();
    while let Some(c) = cur {
        if let Some(io) = c.downcast_ref::<io::Error>() {
            kind = io.kind();
        }
        cur = c.source();
    }
    matches!(
        kind,
        io::ErrorKind::UnexpectedEof | io::ErrorKind::InvalidData | io::ErrorKind::InvalidInput
    )
}

/// A tar entry's path as a relative path inside the tree, or why not.
fn checked_rel(raw: &[u8]) -> Result<PathBuf, String> {
    let shown = String::from_utf8_lossy(raw);
    if raw.first() == Some(&b'/') {
        return Err(format!("{shown}: absolute paths are not allowed in layers"));
    }
    if raw.contains(&0) {
        return Err(format!("{shown}: NUL in path"));
    }
    let mut out = PathBuf::new();
    for c in Path::new(OsStr::from_bytes(raw)).components() {
        match c {
            Component::Normal(x) => out.push(x),
            Component::CurDir => {}
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => {
                return Err(format!("{shown}: path leaves the image root"))
            }
        }
    }
    Ok(out)
}

/// `root/rel` when every component of `rel` is a real directory (no
/// symlinks); `None` when some component does not exist yet. A symlink on
/// the way is an error: removing through it could reach the host.
pub(crate) fn real_dir(root: &Path, rel: &Path) -> Result<Option<PathBuf>, String> {
    let mut cur = root.to_path_buf();
    for c in rel.components() {
        let Component::Normal(x) = c else {
            return Err(format!("{}: not a plain relative path", rel.display()));
        };
        cur.push(x);
        match fs::symlink_metadata(&cur) {
            Ok(m) if m.file_type().is_symlink() => {
                return Err(format!("{}: goes through a symlink", rel.display()))
            }
            Ok(m) if m.is_dir() => {}
            Ok(_) => return Ok(None),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("{}: {e}", cur.display())),
        }
    }
    Ok(Some(cur))
}

/// Removes a file, symlink or whole directory (never following a symlink:
/// `remove_dir_all` does not). Missing is fine.
fn remove_any(p: &Path) -> io::Result<()> {
    match fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(p),
        Ok(_) => fs::remove_file(p),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Opaque directory: everything in it that this layer did not write goes.
fn clear_lower(dir: &Path, rel: &Path, seen: &HashSet<PathBuf>) -> io::Result<()> {
    for e in fs::read_dir(dir)? {
        let e = e?;
        if !seen.contains(&rel.join(e.file_name())) {
            remove_any(&e.path())?;
        }
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::arithmetic_side_effects)] // test data
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    /// A raw tar entry, written by hand so tests can say what a hostile
    /// layer would (paths the tar crate's builder refuses to write).
    fn entry(path: &str, kind: u8, data: &[u8], link: &str, mode: u32) -> Vec<u8> {
        let mut h = tar::Header::new_old();
        {
            let b = h.as_old_mut();
            b.name[..path.len()].copy_from_slice(path.as_bytes());
            b.linkname[..link.len()].copy_from_slice(link.as_bytes());
        }
        h.set_mode(mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_size(data.len() as u64);
        h.set_entry_type(tar::EntryType::new(kind));
        h.set_mtime(1);
        h.set_cksum();
        let mut out = h.as_bytes().to_vec();
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(512) * 512, 0);
        out
    }

    fn tarball(entries: &[Vec<u8>]) -> Vec<u8> {
        let mut t: Vec<u8> = entries.concat();
        t.extend_from_slice(&[0u8; 1024]);
        t
    }

    fn gz(b: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(b).unwrap();
        e.finish().unwrap()
    }

    fn apply(root: &Path, bytes: &[u8]) -> Result<()> {
        let blob = root
            .parent()
            .unwrap()
            .join(format!("blob-{}", rand::random::<u32>()));
        fs::write(&blob, bytes).unwrap();
        apply_layer(root, &blob, "sha256:test")
    }

    fn tree() -> (tempfile::TempDir, PathBuf) {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("root");
        fs::create_dir(&root).unwrap();
        (d, root)
    }

    #[test]
    fn layers_stack_with_whiteouts_opaque_dirs_links_and_modes() {
        let (_d, root) = tree();
        let l1 = tarball(&[
            entry("etc/", b'5', b"", "", 0o755),
            entry("etc/keep", b'0', b"k", "", 0o644),
            entry("etc/gone", b'0', b"g", "", 0o644),
            entry("opq/", b'5', b"", "", 0o755),
            entry("opq/old", b'0', b"o", "", 0o644),
            entry("bin/", b'5', b"", "", 0o755),
            entry("bin/tool", b'0', b"#!", "", 0o4755),
            entry("bin/hard", b'1', b"", "bin/tool", 0o4755),
            entry("bin/soft", b'2', b"", "tool", 0o777),
            entry("was-dir/", b'5', b"", "", 0o755),
            entry("was-dir/x", b'0', b"x", "", 0o644),
        ]);
        apply(&root, &gz(&l1)).unwrap();
        let l2 = zstd::encode_all(
            &tarball(&[
                entry("etc/.wh.gone", b'0', b"", "", 0o644),
                entry("opq/new", b'0', b"n", "", 0o644),
                entry("opq/.wh..wh..opq", b'0', b"", "", 0o644),
                entry("was-dir", b'0', b"now a file", "", 0o600),
            ])[..],
            1,
        )
        .unwrap();
        apply(&root, &l2).unwrap();

        assert_eq!(fs::read(root.join("etc/keep")).unwrap(), b"k");
        assert!(!root.join("etc/gone").exists(), "whiteout removes");
        assert!(
            root.join("opq/new").exists(),
            "same-layer entry survives its opaque marker"
        );
        assert!(
            !root.join("opq/old").exists(),
            "opaque hides the lower layer"
        );
        assert!(
            !root.join("opq/.wh..wh..opq").exists(),
            "markers are not written"
        );
        let tool = fs::metadata(root.join("bin/tool")).unwrap();
        assert_eq!(tool.permissions().mode() & 0o7777, 0o4755, "setuid kept");
        assert_eq!(
            tool.ino(),
            fs::metadata(root.join("bin/hard")).unwrap().ino(),
            "hard link"
        );
        assert_eq!(
            fs::read_link(root.join("bin/soft")).unwrap(),
            Path::new("tool")
        );
        assert_eq!(fs::read(root.join("was-dir")).unwrap(), b"now a file");
    }

    #[test]
    fn hostile_entries_are_refused_and_nothing_lands_outside() {
        let (d, root) = tree();
        let outside = d.path().join("outside");
        fs::create_dir(&outside).unwrap();
        fs::write(outside.join("victim"), b"v").unwrap();
        // A lower layer plants a symlink to the host directory.
        apply(
            &root,
            &tarball(&[entry("link", b'2', b"", outside.to_str().unwrap(), 0o777)]),
        )
        .unwrap();

        let cases: Vec<(&str, Vec<u8>)> = vec![
            (
                "dotdot",
                tarball(&[entry("a/../../escape", b'0', b"x", "", 0o644)]),
            ),
            ("absolute", tarball(&[entry("/abs", b'0', b"x", "", 0o644)])),
            (
                "char device",
                tarball(&[entry("dev/null", b'3', b"", "", 0o666)]),
            ),
            (
                "block device",
                tarball(&[entry("dev/sda", b'4', b"", "", 0o660)]),
            ),
            (
                "write through symlink",
                tarball(&[entry("link/new", b'0', b"x", "", 0o644)]),
            ),
            (
                "whiteout through symlink",
                tarball(&[entry("link/.wh.victim", b'0', b"", "", 0o644)]),
            ),
            (
                "opaque through symlink",
                tarball(&[entry("link/.wh..wh..opq", b'0', b"", "", 0o644)]),
            ),
            (
                "hard link outside",
                tarball(&[entry("h", b'1', b"", "link/victim", 0o644)]),
            ),
        ];
        for (what, bytes) in cases {
            let e = apply(&root, &bytes).expect_err(what);
            assert!(matches!(e, ImageError::Layer { .. }), "{what}: {e}");
        }
        assert_eq!(
            fs::read(outside.join("victim")).unwrap(),
            b"v",
            "host file untouched"
        );
        assert_eq!(
            fs::read_dir(&outside).unwrap().count(),
            1,
            "nothing created outside"
        );
        assert!(!d.path().join("escape").exists());
    }

    #[test]
    fn corrupt_truncated_and_empty_layers_fail() {
        let (_d, root) = tree();
        let good = gz(&tarball(&[entry("f", b'0', &[7u8; 100_000], "", 0o644)]));
        let truncated = &good[..good.len() / 2];
        let mut corrupt = good.clone();
        let n = corrupt.len();
        corrupt[n - 6] ^= 0xff; // inside the CRC/length trailer
        for (what, bytes) in [
            ("truncated", truncated.to_vec()),
            ("corrupt", corrupt),
            ("empty", vec![]),
        ] {
            let e = apply(&root, &bytes).expect_err(what);
            assert!(matches!(e, ImageError::Layer { .. }), "{what}: {e}");
        }
        apply(&root, &good).unwrap();
    }
}
