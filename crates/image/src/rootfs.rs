//! From an image's tree to a bootable sandbox root: lohar in, then ext4 out.
//!
//! Every bhatti guest boots `init=/usr/local/bin/lohar` and runs the
//! caller's code as uid 1000 unless the image says root, so the tree gets
//! lohar (with its `systemctl`/`journalctl` shims), a `lohar` user and group
//! when the image has no uid/gid 1000, its home, `/workspace`, and the mount
//! points the kernel and lohar use. Nothing the image has is rewritten
//! except `/usr/local/bin/{lohar,systemctl,journalctl}`.
//!
//! The tree is packed with `mke2fs -d` (no loop mount, so it works in
//! containers): into a temp file beside the output, fsynced, then renamed,
//! so the output path holds a whole image or nothing.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{symlink, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::error::{io_err, ImageError, Result};
use crate::layers::real_dir;

/// Where lohar goes; the kernel command line's `init=`.
pub const LOHAR_PATH: &str = "usr/local/bin/lohar";
const GUEST_UID: u32 = 1000;
const GUEST_USER: &str = "lohar";
/// Free space beyond the tree, so a fresh sandbox can write before anyone
/// asks for `disk_size_mb`.
const HEADROOM_MB: u64 = 512;

fn tree_err(e: impl std::fmt::Display) -> ImageError {
    ImageError::Tree(e.to_string())
}

/// A real directory at `root/rel`, created (mode `mode`, owned by `owner`)
/// where missing; a symlink on the way is an error.
fn ensure_dir(root: &Path, rel: &str, mode: u32, owner: Option<(u32, u32)>) -> Result<PathBuf> {
    let mut cur = PathBuf::new();
    for part in rel.split('/').filter(|p| !p.is_empty()) {
        cur.push(part);
        let full = root.join(&cur);
        match real_dir(root, &cur).map_err(tree_err)? {
            Some(_) => {}
            None => {
                if fs::symlink_metadata(&full).is_ok() {
                    return Err(tree_err(format!(
                        "/{} exists and is not a directory",
                        cur.display()
                    )));
                }
                fs::create_dir(&full).map_err(io_err(format!("create {}", full.display())))?;
                fs::set_permissions(&full, fs::Permissions::from_mode(mode))
                    .map_err(io_err(format!("chmod {}", full.display())))?;
                // Only the directory asked for gets the owner; parents made
                // on the way stay root's.
                if let Some((u, g)) = owner.filter(|_| cur.as_path() == Path::new(rel)) {
                    chown(&full, u, g)?;
                }
            }
        }
    }
    Ok(root.join(rel))
}

fn chown(p: &Path, uid: u32, gid: u32) -> Result<()> {
    if !is_root() {
        return Ok(());
    }
    std::os::unix::fs::lchown(p, Some(uid), Some(gid))
        .map_err(io_err(format!("chown {}", p.display())))
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Replaces whatever is at `p` (file or symlink; a directory is an error).
fn clear(p: &Path) -> Result<()> {
    match fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => Err(tree_err(format!("{} is a directory", p.display()))),
        Ok(_) => fs::remove_file(p).map_err(io_err(format!("remove {}", p.display()))),
        Err(_) => Ok(()),
    }
}

/// Appends `line` to the account file `etc/<file>` unless some line's third
/// field is `id`; creates the file (with a root line) when the image has none.
fn ensure_account(etc: &Path, file: &str, id: u32, line: &str, root_line: &str) -> Result<()> {
    let p = etc.join(file);
    let existing = match fs::symlink_metadata(&p) {
        Ok(m) if !m.is_file() => {
            return Err(tree_err(format!("/etc/{file} is not a regular file")));
        }
        Ok(_) => fs::read_to_string(&p).map_err(io_err(format!("read {}", p.display())))?,
        Err(_) => String::new(),
    };
    let has = existing
        .lines()
        .any(|l| l.split(':').nth(2).and_then(|f| f.parse::<u32>().ok()) == Some(id));
    if has {
        return Ok(());
    }
    let mut add = String::new();
    if existing.is_empty() {
        add.push_str(root_line);
        add.push('\n');
    } else if !existing.ends_with('\n') {
        add.push('\n');
    }
    add.push_str(line);
    add.push('\n');
    // O_NOFOLLOW: checked above to be a regular file, and it stays one.
    let mut f = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o644)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&p)
        .map_err(io_err(format!("open {}", p.display())))?;
    f.write_all(add.as_bytes())
        .map_err(io_err(format!("write {}", p.display())))
}

/// Adds what a bhatti guest needs to an image's tree (see the module doc).
pub fn prepare_tree(root: &Path, lohar: &Path) -> Result<()> {
    fs::set_permissions(root, fs::Permissions::from_mode(0o755)).map_err(io_err("chmod /"))?;
    chown(root, 0, 0)?;
    for (d, mode) in [
        ("proc", 0o555),
        ("sys", 0o555),
        ("dev", 0o755),
        ("run", 0o755),
        ("tmp", 0o1777),
        ("root", 0o700),
    ] {
        ensure_dir(root, d, mode, None)?;
    }
    if is_root() {
        // init's stdio before devtmpfs is mounted over /dev.
        for (name, major, minor, mode) in [("console", 5, 1, 0o600), ("null", 1, 3, 0o666)] {
            let p = root.join("dev").join(name);
            if fs::symlink_metadata(&p).is_err() {
                let c =
                    std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).map_err(tree_err)?;
                // SAFETY: c is a valid NUL-terminated path; mknod does not retain it.
                let rc = unsafe {
                    libc::mknod(
                        c.as_ptr(),
                        libc::S_IFCHR | mode,
                        libc::makedev(major, minor),
                    )
                };
                if rc != 0 {
                    return Err(io_err(format!("mknod {}", p.display()))(
                        io::Error::last_os_error(),
                    ));
                }
            }
        }
    }

    let bin = ensure_dir(root, "usr/local/bin", 0o755, None)?;
    let dst = root.join(LOHAR_PATH);
    clear(&dst)?;
    let mut src = File::open(lohar).map_err(io_err(format!("open lohar {}", lohar.display())))?;
    let mut out = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o755)
        .open(&dst)
        .map_err(io_err(format!("create {}", dst.display())))?;
    io::copy(&mut src, &mut out).map_err(io_err(format!("copy lohar to {}", dst.display())))?;
    fs::set_permissions(&dst, fs::Permissions::from_mode(0o755)).map_err(io_err("chmod lohar"))?;
    chown(&dst, 0, 0)?;
    // lohar answers to these names as the systemd shims.
    for shim in ["systemctl", "journalctl"] {
        let p = bin.join(shim);
        clear(&p)?;
        symlink("lohar", &p).map_err(io_err(format!("symlink {}", p.display())))?;
    }

    let etc = ensure_dir(root, "etc", 0o755, None)?;
    let shell = if root.join("bin/bash").exists() || root.join("usr/bin/bash").exists() {
        "/bin/bash"
    } else {
        "/bin/sh"
    };
    ensure_account(
        &etc,
        "passwd",
        GUEST_UID,
        &format!(
            "{GUEST_USER}:x:{GUEST_UID}:{GUEST_UID}:bhatti sandbox user:/home/{GUEST_USER}:{shell}"
        ),
        "root:x:0:0:root:/root:/bin/sh",
    )?;
    ensure_account(
        &etc,
        "group",
        GUEST_UID,
        &format!("{GUEST_USER}:x:{GUEST_UID}:"),
        "root:x:0:",
    )?;
    let guest = Some((GUEST_UID, GUEST_UID));
    ensure_dir(root, "home", 0o755, None)?;
    ensure_dir(root, &format!("home/{GUEST_USER}"), 0o755, guest)?;
    ensure_dir(root, "workspace", 0o755, guest)?;
    Ok(())
}

/// Bytes the tree takes and the inodes it needs (symlinks not followed).
fn tree_usage(root: &Path) -> Result<(u64, u64)> {
    let (mut bytes, mut inodes) = (0u64, 0u64);
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).map_err(io_err(format!("read {}", d.display())))? {
            let e = e.map_err(io_err(format!("read {}", d.display())))?;
            let m = fs::symlink_metadata(e.path())
                .map_err(io_err(format!("stat {}", e.path().display())))?;
            inodes = inodes.saturating_add(1);
            // Allocated blocks (sparse files stay sparse), at least one 4 KiB
            // block each, as ext4 will store them.
            bytes = bytes.saturating_add((m.blocks().saturating_mul(512)).max(4096));
            if m.is_dir() {
                stack.push(e.path());
            }
        }
    }
    Ok((bytes, inodes))
}

/// Packs `root` into an ext4 image at `out`; returns its size in MiB.
pub fn pack_ext4(root: &Path, out: &Path) -> Result<u64> {
    let (bytes, inodes) = tree_usage(root)?;
    // ext4's metadata (inode tables, journal) on top of the data, plus room
    // to work in.
    let size_mb = ((bytes.saturating_mul(5) / 4) >> 20)
        .saturating_add(HEADROOM_MB)
        .max(HEADROOM_MB * 2);
    let inodes = inodes.saturating_mul(2).max(65_536);
    let tmp = out.with_file_name(format!(
        ".{}.tmp-{:08x}",
        out.file_name().and_then(|n| n.to_str()).unwrap_or("image"),
        rand::random::<u32>()
    ));
    let res = (|| {
        let o = Command::new("mke2fs")
            .args([
                "-t",
                "ext4",
                "-F",
                "-q",
                "-L",
                "bhatti-root",
                "-E",
                "root_owner=0:0",
            ])
            .arg("-N")
            .arg(inodes.to_string())
            .arg("-d")
            .arg(root)
            .arg(&tmp)
            .arg(format!("{size_mb}M"))
            .output()
            .map_err(|e| ImageError::Mkfs(format!("run mke2fs (e2fsprogs): {e}")))?;
        if !o.status.success() {
            return Err(ImageError::Mkfs(
                String::from_utf8_lossy(&o.stderr).trim().to_string(),
            ));
        }
        File::open(&tmp)
            .and_then(|f| f.sync_all())
            .map_err(io_err(format!("fsync {}", tmp.display())))?;
        fs::rename(&tmp, out).map_err(io_err(format!("rename to {}", out.display())))?;
        if let Some(dir) = out.parent().and_then(|d| File::open(d).ok()) {
            let _ = dir.sync_all();
        }
        Ok(size_mb)
    })();
    if res.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    res
}

/// Layers → a tree a sandbox can boot: each layer re-verified against its
/// digest and applied in order onto a fresh `staging` directory, then
/// lohar and the rest added ([`prepare_tree`]). On error `staging` is
/// removed; on success it is the caller's (to pack, import, remove).
pub fn build_tree(
    layers: &[crate::Layer],
    cache: &crate::BlobCache,
    staging: &Path,
    lohar: &Path,
    progress: Option<&crate::Progress>,
) -> Result<()> {
    let _ = fs::remove_dir_all(staging);
    fs::create_dir_all(staging).map_err(io_err(format!("create {}", staging.display())))?;
    let res = (|| {
        if let Some(p) = progress {
            p.phase("unpacking");
        }
        for l in layers {
            cache.verify(&l.digest)?;
            crate::layers::apply_layer(staging, &l.path, &l.digest)?;
        }
        prepare_tree(staging, lohar)
    })();
    if res.is_err() {
        remove_staging(staging);
    }
    res
}

/// Removes a staging tree (a failure is logged: it is only disk space).
pub fn remove_staging(staging: &Path) {
    if let Err(e) = fs::remove_dir_all(staging) {
        if e.kind() != io::ErrorKind::NotFound {
            tracing::warn!(dir = %staging.display(), error = %e, "could not remove an image staging tree");
        }
    }
}

/// The whole conversion to an ext4 file: [`build_tree`], then
/// [`pack_ext4`] to `out`; `staging` is removed whatever happened, and on
/// error `out` is untouched. Returns the image's size in MiB.
pub fn build(
    layers: &[crate::Layer],
    cache: &crate::BlobCache,
    staging: &Path,
    lohar: &Path,
    out: &Path,
    progress: Option<&crate::Progress>,
) -> Result<u64> {
    build_tree(layers, cache, staging, lohar, progress)?;
    if let Some(p) = progress {
        p.phase("building");
    }
    let res = pack_ext4(staging, out);
    remove_staging(staging);
    res
}

/// MiB a tree takes on disk (allocated blocks, symlinks not followed).
pub fn tree_size_mb(root: &Path) -> Result<u64> {
    Ok(tree_usage(root)?.0.div_ceil(1 << 20))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lohar_user_and_dirs_are_added_without_touching_the_images_accounts() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("root");
        fs::create_dir_all(root.join("etc")).unwrap();
        fs::write(
            root.join("etc/passwd"),
            "root:x:0:0::/root:/bin/sh\nnode:x:1000:1000::/home/node:/bin/sh",
        )
        .unwrap();
        let lohar = d.path().join("lohar");
        fs::write(&lohar, b"\x7fELF").unwrap();
        prepare_tree(&root, &lohar).unwrap();
        let passwd = fs::read_to_string(root.join("etc/passwd")).unwrap();
        assert!(passwd.contains("node:x:1000"), "{passwd}");
        assert!(
            !passwd.contains("lohar:x"),
            "uid 1000 already exists: {passwd}"
        );
        let group = fs::read_to_string(root.join("etc/group")).unwrap();
        assert!(group.starts_with("root:x:0:\nlohar:x:1000:"), "{group}");
        assert_eq!(fs::read(root.join(LOHAR_PATH)).unwrap(), b"\x7fELF");
        assert_eq!(
            fs::read_link(root.join("usr/local/bin/systemctl")).unwrap(),
            Path::new("lohar")
        );
        for dir in ["workspace", "home/lohar", "proc", "tmp"] {
            assert!(root.join(dir).is_dir(), "{dir}");
        }
        // Twice is the same as once.
        prepare_tree(&root, &lohar).unwrap();
        assert_eq!(fs::read_to_string(root.join("etc/group")).unwrap(), group);
    }

    #[test]
    fn a_symlinked_usr_local_bin_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("root");
        let outside = d.path().join("outside");
        fs::create_dir_all(root.join("usr/local")).unwrap();
        fs::create_dir_all(&outside).unwrap();
        symlink(&outside, root.join("usr/local/bin")).unwrap();
        let lohar = d.path().join("lohar");
        fs::write(&lohar, b"x").unwrap();
        let e = prepare_tree(&root, &lohar).unwrap_err();
        assert!(matches!(e, ImageError::Tree(_)), "{e}");
        assert_eq!(fs::read_dir(&outside).unwrap().count(), 0);
    }

    #[test]
    fn passwd_as_a_symlink_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("root");
        fs::create_dir_all(root.join("etc")).unwrap();
        let victim = d.path().join("victim");
        fs::write(&victim, "v\n").unwrap();
        symlink(&victim, root.join("etc/passwd")).unwrap();
        let lohar = d.path().join("lohar");
        fs::write(&lohar, b"x").unwrap();
        assert!(matches!(
            prepare_tree(&root, &lohar),
            Err(ImageError::Tree(_))
        ));
        assert_eq!(fs::read_to_string(&victim).unwrap(), "v\n");
    }
}
