//! File work on a caller's behalf, done with the sandbox user's filesystem
//! credentials.
//!
//! lohar runs as root, but the paths the host names in file requests (and a
//! detached exec's output file) run through directories the sandbox's code
//! (uid 1000) controls. Checking those paths for symlinks in user space always
//! races with that code, so the kernel does the checking instead: every such
//! operation runs on a fresh thread whose filesystem uid/gid, supplementary
//! groups and effective capabilities are the user's. Path resolution,
//! permission checks and the owner of new files are then exactly what the user
//! would get, and a symlink the user planted leads nowhere the user could not
//! go already.
//!
//! Credentials are per thread in the kernel, but glibc's `setgroups` and
//! `setfsuid` wrappers broadcast the change to every thread of the process
//! (nptl's setxid), which would turn the whole agent into the user. Hence raw
//! syscalls. The thread is never reused: it ends with its operation, so nothing
//! has to be restored and no pooled thread can carry the user's credentials
//! into other work (or root's into the user's).

use std::io;

/// Whose filesystem credentials file operations use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsUser {
    /// The agent's own: it is not root (test mode as a normal user, where
    /// switching is impossible and pointless), or no user is configured (a
    /// sandbox whose code runs as root has no boundary to protect).
    Agent,
    /// Switch a dedicated thread to this uid/gid for each operation.
    Switch { uid: u32, gid: u32 },
}

/// Why an operation could not run as the user. It never falls back to root.
#[derive(Debug, thiserror::Error)]
pub enum FsUserError {
    #[error("cannot act as uid {uid} gid {gid}: {what}: {source}")]
    Switch {
        uid: u32,
        gid: u32,
        what: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("cannot act as uid {uid} gid {gid}: the kernel kept fsuid {fsuid} fsgid {fsgid}")]
    NotSwitched {
        uid: u32,
        gid: u32,
        fsuid: u32,
        fsgid: u32,
    },
    #[error("cannot start a file operation thread: {0}")]
    Thread(#[source] io::Error),
    #[error("file operation thread failed")]
    Panicked,
}

impl FsUser {
    /// The identity for a configured `(uid, gid)`: switching only makes sense
    /// (and is only possible) when the agent is root and the user is not.
    pub fn resolve(configured: Option<(u32, u32)>) -> FsUser {
        match configured {
            Some((uid, gid)) if uid != 0 && nix::unistd::geteuid().is_root() => {
                FsUser::Switch { uid, gid }
            }
            _ => FsUser::Agent,
        }
    }

    /// Runs blocking file work `f` with this identity's credentials.
    pub async fn run<T, F>(self, f: F) -> Result<T, FsUserError>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        match self {
            FsUser::Agent => tokio::task::spawn_blocking(f)
                .await
                .map_err(|_| FsUserError::Panicked),
            FsUser::Switch { uid, gid } => {
                let (tx, rx) = tokio::sync::oneshot::channel();
                std::thread::Builder::new()
                    .name("lohar-fs".into())
                    .spawn(move || {
                        let res = become_user(uid, gid).map(|()| f());
                        let _ = tx.send(res);
                    })
                    .map_err(FsUserError::Thread)?;
                // A dropped sender means the thread panicked in `f`.
                rx.await.map_err(|_| FsUserError::Panicked)?
            }
        }
    }
}

/// `struct __user_cap_header_struct`.
#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

/// `struct __user_cap_data_struct`; version 3 uses two of them (64 bits).
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

fn sys_err(uid: u32, gid: u32, what: &'static str) -> FsUserError {
    FsUserError::Switch {
        uid,
        gid,
        what,
        source: io::Error::last_os_error(),
    }
}

/// Gives the calling thread (only) the user's filesystem identity: groups
/// `[gid]`, fsgid, fsuid, and no effective capabilities.
///
/// Changing fsuid from 0 already drops the filesystem capabilities (DAC
/// override, fowner, …); clearing the whole effective set as well takes away
/// the rest that could matter for a path walk, e.g. CAP_SYS_PTRACE, which
/// would otherwise still open other root processes' `/proc/<pid>` files.
fn become_user(uid: u32, gid: u32) -> Result<(), FsUserError> {
    let groups: [libc::gid_t; 1] = [gid];
    // SAFETY: setgroups reads `groups` (valid for one gid_t) and changes only
    // this thread's credentials (the raw syscall, not glibc's broadcast).
    if unsafe { libc::syscall(libc::SYS_setgroups, 1 as libc::c_long, groups.as_ptr()) } != 0 {
        return Err(sys_err(uid, gid, "setgroups"));
    }
    // SAFETY: setfsgid/setfsuid take an id by value and change only this
    // thread's credentials. They report the previous id, never an error, so
    // the result is checked below.
    unsafe {
        libc::syscall(libc::SYS_setfsgid, libc::c_long::from(gid));
        libc::syscall(libc::SYS_setfsuid, libc::c_long::from(uid));
    }
    // An invalid id (-1) changes nothing and returns the current one.
    let invalid = libc::c_long::from(u32::MAX);
    // SAFETY: as above; -1 is rejected by the kernel without effect.
    // setfsuid returns the previous id as an int: a u32 ID's bits.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let (fsuid, fsgid) = unsafe {
        (
            libc::syscall(libc::SYS_setfsuid, invalid) as u32,
            libc::syscall(libc::SYS_setfsgid, invalid) as u32,
        )
    };
    if (fsuid, fsgid) != (uid, gid) {
        return Err(FsUserError::NotSwitched {
            uid,
            gid,
            fsuid,
            fsgid,
        });
    }
    let mut header = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0, // this thread
    };
    let mut data = [CapData::default(); 2];
    // SAFETY: capget writes two CapData (version 3) and reads the header.
    if unsafe {
        libc::syscall(
            libc::SYS_capget,
            &mut header as *mut CapHeader,
            data.as_mut_ptr(),
        )
    } != 0
    {
        return Err(sys_err(uid, gid, "capget"));
    }
    for d in &mut data {
        d.effective = 0;
    }
    // SAFETY: capset reads the header and two CapData; pid 0 is this thread
    // only. Dropping effective capabilities is always permitted.
    if unsafe {
        libc::syscall(
            libc::SYS_capset,
            &mut header as *mut CapHeader,
            data.as_ptr(),
        )
    } != 0
    {
        return Err(sys_err(uid, gid, "capset"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_user_or_root_user_means_the_agents_own_credentials() {
        assert_eq!(FsUser::resolve(None), FsUser::Agent);
        assert_eq!(FsUser::resolve(Some((0, 0))), FsUser::Agent);
        let want = if nix::unistd::geteuid().is_root() {
            FsUser::Switch {
                uid: 65534,
                gid: 65534,
            }
        } else {
            FsUser::Agent
        };
        assert_eq!(FsUser::resolve(Some((65534, 65534))), want);
    }

    #[tokio::test]
    async fn switched_thread_has_the_users_fs_ids_and_the_agent_keeps_its_own() {
        let FsUser::Switch { uid, gid } = FsUser::resolve(Some((65534, 65534))) else {
            // Not root: there is nothing to switch; the agent path runs `f` as is.
            let me = nix::unistd::geteuid().as_raw();
            let got = FsUser::Agent.run(nix::unistd::geteuid).await.expect("run");
            assert_eq!(got.as_raw(), me);
            return;
        };
        let status = FsUser::Switch { uid, gid }
            .run(|| std::fs::read_to_string("/proc/thread-self/status"))
            .await
            .expect("run")
            .expect("read status");
        let field = |name: &str| -> Vec<String> {
            status
                .lines()
                .find(|l| l.starts_with(name))
                .map(|l| l.split_whitespace().skip(1).map(String::from).collect())
                .unwrap_or_default()
        };
        // Real, effective, saved, filesystem.
        assert_eq!(field("Uid:"), ["0", "0", "0", "65534"]);
        assert_eq!(field("Gid:"), ["0", "0", "0", "65534"]);
        assert_eq!(field("Groups:"), ["65534"]);
        assert_eq!(field("CapEff:"), ["0000000000000000"]);
        // The calling process is untouched.
        let mine = std::fs::read_to_string("/proc/thread-self/status").expect("status");
        assert!(mine
            .lines()
            .any(|l| l.split_whitespace().eq(["Uid:", "0", "0", "0", "0"])));
        // The kernel refuses what the user may not do: a root-only file in a
        // directory anyone may enter.
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod dir");
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "root only").expect("write");
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600))
            .expect("chmod secret");
        let e = FsUser::Switch { uid, gid }
            .run(move || std::fs::read(secret))
            .await
            .expect("run")
            .expect_err("reading root's environ as nobody");
        assert_eq!(e.kind(), io::ErrorKind::PermissionDenied, "{e}");
    }
}
