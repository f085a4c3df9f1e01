//! File operations run with the sandbox user's credentials: paths the sandbox's
//! code controls cannot steer the agent (root in a guest) anywhere the user
//! could not go. Regression tests for an attacker probe: a symlink planted at
//! the write's temp name, symlinked parent directories, a detached exec's
//! output file with `..` or behind a symlink, reads through symlinks.
//!
//! As root, lohar is started with `LOHAR_FILE_UID=65534` and the protected
//! files belong to root: the real credential switch is under test. As a normal
//! user there is no one to switch to; the protected files are then the test
//! user's own with the permission bits taken away, which the kernel enforces
//! against a non-root owner just the same.
#![allow(clippy::unwrap_used, clippy::arithmetic_side_effects)] // a test panics to report its failure; its sums are on test data

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use bhatti_agent_client::{ClientError, ReadOptions};
use common::{is_root, s, Lohar, Opts};

/// The unprivileged user the agent acts as when the tests run as root.
const NOBODY: u32 = 65534;
const SECRET: &str = "root's secret\n";

/// A sandbox-like layout in the agent's temp dir.
struct World {
    l: Lohar,
    root: bool,
    /// The user's own directory (where guest code plants things).
    home: PathBuf,
    /// A file the user must not write or read.
    secret: PathBuf,
    /// A directory the user must not enter or write.
    vault: PathBuf,
}

fn chmod(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

impl World {
    fn new() -> World {
        let root = is_root();
        let l = Lohar::start_with(Opts {
            file_user: root.then_some((NOBODY, NOBODY)),
            ..Default::default()
        });
        // The user must be able to reach its home inside the temp dir.
        chmod(l.dir.path(), 0o755);
        let home = l.path("home");
        std::fs::create_dir(&home).expect("mkdir home");
        if root {
            std::os::unix::fs::chown(&home, Some(NOBODY), Some(NOBODY)).expect("chown home");
        }
        let secret = l.path("secret.txt");
        std::fs::write(&secret, SECRET).expect("write secret");
        let vault = l.path("vault");
        std::fs::create_dir(&vault).expect("mkdir vault");
        let w = World {
            l,
            root,
            home,
            secret,
            vault,
        };
        w.lock();
        w
    }

    /// Root-only as root; no permission bits at all for a plain owner.
    fn lock(&self) {
        chmod(&self.secret, if self.root { 0o600 } else { 0o000 });
        chmod(&self.vault, if self.root { 0o700 } else { 0o000 });
    }

    /// Lets the test itself look (a plain owner needs the bits back).
    fn unlock(&self) {
        chmod(&self.secret, 0o600);
        chmod(&self.vault, 0o700);
    }

    fn plant(&self, name: &str, target: &Path) -> PathBuf {
        let link = self.home.join(name);
        std::os::unix::fs::symlink(target, &link).expect("symlink");
        if self.root {
            // Planted by the user, as in the probe.
            std::os::unix::fs::lchown(&link, Some(NOBODY), Some(NOBODY)).expect("lchown");
        }
        link
    }

    /// The protected file and directory are exactly as created.
    fn assert_untouched(&self) {
        self.unlock();
        let md = std::fs::metadata(&self.secret).expect("secret");
        assert_eq!(
            std::fs::read_to_string(&self.secret).expect("read secret"),
            SECRET
        );
        assert_eq!(md.uid(), nix::unistd::geteuid().as_raw(), "secret chowned");
        let left: Vec<_> = std::fs::read_dir(&self.vault)
            .expect("read vault")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert!(left.is_empty(), "the vault was written to: {left:?}");
        self.lock();
    }

    /// The uid files the agent creates should have.
    fn user_uid(&self) -> u32 {
        if self.root {
            NOBODY
        } else {
            nix::unistd::geteuid().as_raw()
        }
    }

    fn no_temp_files_left(&self) {
        let temps: Vec<_> = std::fs::read_dir(&self.home)
            .expect("read home")
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains(".bhatti-tmp-"))
            .collect();
        assert!(temps.is_empty(), "temp files left: {temps:?}");
    }
}

fn agent_err<T: std::fmt::Debug>(r: Result<T, ClientError>) -> String {
    match r {
        Err(ClientError::Agent { message: m, .. }) => m,
        other => panic!("expected an agent error, got {other:?}"),
    }
}

#[tokio::test]
async fn a_symlink_planted_at_the_temp_name_does_not_redirect_a_write() {
    let w = World::new();
    let c = w.l.client();
    // The probe's exact plant: the old fixed temp name, pointing at a file the
    // user must not write.
    let planted = w.plant("n.txt.bhatti-tmp", &w.secret);
    let target = w.home.join("n.txt");
    c.file_write_bytes(&s(&target), "0640", b"owner's content\n")
        .await
        .expect("the write goes to a fresh temp file");
    let md = std::fs::symlink_metadata(&target).expect("target");
    assert!(md.is_file(), "target is a regular file");
    assert_eq!(md.uid(), w.user_uid(), "created as the user");
    assert_eq!(md.mode() & 0o7777, 0o640);
    assert_eq!(std::fs::read(&target).expect("read"), b"owner's content\n");
    assert!(std::fs::symlink_metadata(&planted)
        .expect("plant")
        .is_symlink());
    w.assert_untouched();
    w.no_temp_files_left();

    // The target name itself planted as a symlink: the rename replaces the
    // link, never writes through it.
    let n2 = w.plant("n2.txt", &w.secret);
    c.file_write_bytes(&s(&n2), "", b"replaced\n")
        .await
        .expect("write over a symlink");
    assert!(std::fs::symlink_metadata(&n2).expect("n2").is_file());
    assert_eq!(std::fs::read(&n2).expect("read"), b"replaced\n");
    w.assert_untouched();
    w.no_temp_files_left();
}

#[tokio::test]
async fn a_symlinked_parent_directory_does_not_lead_into_a_protected_one() {
    let w = World::new();
    let c = w.l.client();
    let link = w.plant("link", &w.vault);
    for path in [link.join("new.txt"), link.join("sub/dir/new.txt")] {
        let m = agent_err(c.file_write_bytes(&s(&path), "", b"x").await);
        assert!(m.contains("Permission denied"), "{m}");
    }
    w.assert_untouched();
    // Parents the write creates in the user's own tree belong to the user.
    let deep = w.home.join("a/b/c.txt");
    c.file_write_bytes(&s(&deep), "", b"ok")
        .await
        .expect("write");
    for p in [w.home.join("a"), w.home.join("a/b"), deep] {
        assert_eq!(
            std::fs::metadata(&p).expect("meta").uid(),
            w.user_uid(),
            "{}",
            p.display()
        );
    }
}

#[tokio::test]
async fn reads_stats_and_listings_through_symlinks_are_refused() {
    let w = World::new();
    let c = w.l.client();
    let peek = w.plant("peek", &w.secret);
    let m = agent_err(c.file_read_to_vec(&s(&peek), ReadOptions::default()).await);
    assert!(m.contains("Permission denied"), "{m}");
    let m = agent_err(
        c.file_read_to_vec(&s(&w.secret), ReadOptions::default())
            .await,
    );
    assert!(m.contains("Permission denied"), "{m}");
    let door = w.plant("door", &w.vault);
    let m = agent_err(c.file_ls(&s(&door)).await);
    assert!(m.contains("Permission denied"), "{m}");
    w.unlock();
    std::fs::write(w.vault.join("inside"), "x").expect("write inside");
    w.lock();
    let m = agent_err(c.file_stat(&s(&door.join("inside"))).await);
    assert!(m.contains("Permission denied"), "{m}");
    w.unlock();
    std::fs::remove_file(w.vault.join("inside")).expect("clean");
    w.lock();
    // What the user may read still reads.
    let mine = w.home.join("mine.txt");
    c.file_write_bytes(&s(&mine), "", b"mine")
        .await
        .expect("write");
    let via = w.plant("via", &mine);
    assert_eq!(
        c.file_read_to_vec(&s(&via), ReadOptions::default())
            .await
            .expect("read own file through a link"),
        b"mine"
    );
    w.assert_untouched();
}

#[tokio::test]
async fn detached_output_file_with_dotdot_or_relative_is_refused() {
    let w = World::new();
    let c = w.l.client();
    let sneaky = format!("{}/../../etc/x", s(&w.home));
    let m = agent_err(
        c.exec_detached(vec!["true".into()], Some(sneaky))
            .await
            .map(|i| i.pid),
    );
    assert!(m.contains("must not contain '..'"), "{m}");
    let m = agent_err(
        c.exec_detached(vec!["true".into()], Some("../../etc/x".into()))
            .await
            .map(|i| i.pid),
    );
    assert!(m.contains("absolute"), "{m}");
    w.assert_untouched();
}

#[tokio::test]
async fn detached_output_file_behind_a_symlink_is_refused() {
    let w = World::new();
    let c = w.l.client();
    let out = w.plant("out.log", &w.secret);
    let m = agent_err(
        c.exec_detached(vec!["echo".into(), "pwned".into()], Some(s(&out)))
            .await
            .map(|i| i.pid),
    );
    assert!(m.contains("symbolic link"), "{m}");
    let door = w.plant("door", &w.vault);
    let m = agent_err(
        c.exec_detached(
            vec!["echo".into(), "pwned".into()],
            Some(s(&door.join("out.log"))),
        )
        .await
        .map(|i| i.pid),
    );
    assert!(m.contains("Permission denied"), "{m}");
    w.assert_untouched();
    // A plain output file in the user's tree works and belongs to the user.
    let log = w.home.join("ok.log");
    let info = c
        .exec_detached(vec!["echo".into(), "fine".into()], Some(s(&log)))
        .await
        .expect("detached exec");
    assert_eq!(info.output_file, s(&log));
    assert_eq!(std::fs::metadata(&log).expect("log").uid(), w.user_uid());
}
