//! Directory watches for the host (WATCH_REQ, an addition to v1): inotify in
//! the guest, so a change is reported as it happens, with renames and every
//! write, instead of being guessed from listings compared every so often.
//!
//! The watch lives on one thread with the sandbox user's filesystem
//! credentials ([`crate::fsuser`]), as every file operation does: the kernel
//! checks the user's permission to watch, and `IN_DONT_FOLLOW | IN_ONLYDIR`
//! means a symlink planted where a directory was is never followed to
//! whatever it names. Subdirectories of a recursive watch are found without
//! following symlinks, and each is added the same way.
//!
//! One connection is one watch: WATCH_RESP once it is in place (every later
//! change is reported), then WATCH_EVENT frames until the host closes the
//! connection or sends KILL; an EXIT when the watched directory itself is
//! deleted or moved away.

use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use bhatti_protocol::messages::{ErrorCode, StatusResponse, WatchEvent, WatchOp, WatchRequest};
use bhatti_protocol::{Frame, MsgType};
use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, InotifyEvent, WatchDescriptor};

use crate::agent::Agent;
use crate::fail::Fail;
use crate::files::{check_path, is_temp_name, parse};
use crate::wire::{reader_task, FrameTx, Reader};

/// Watches one agent serves at once. inotify instances count against the
/// agent's real user (root), whose default limit is 128; and each watch
/// holds a control connection.
pub const MAX_WATCHES: usize = 32;
/// Directories one recursive watch follows at most; past it, deeper new
/// directories are not watched (the kernel's own per-user limit is near).
pub const MAX_DIRS: usize = 8192;
/// How deep a recursive watch goes below the watched directory.
pub const MAX_DEPTH: usize = 32;
/// Names a watch remembers (to tell an overwrite from a creation); past it,
/// an overwrite of a name it never saw reads as a creation.
pub const MAX_NAMES: usize = 1 << 20;
/// How often the watch thread looks whether the host is gone.
const POLL_MS: u16 = 250;

static ACTIVE: AtomicUsize = AtomicUsize::new(0);

/// One slot of [`MAX_WATCHES`], released when dropped.
struct Slot;

impl Slot {
    fn take() -> Option<Slot> {
        let taken = ACTIVE.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (n < MAX_WATCHES).then_some(n.saturating_add(1))
        });
        taken.ok().map(|_| Slot)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        ACTIVE.fetch_sub(1, Ordering::AcqRel);
    }
}

/// What the kernel is asked to report for each watched directory.
fn mask() -> AddWatchFlags {
    AddWatchFlags::IN_CREATE
        | AddWatchFlags::IN_MODIFY
        | AddWatchFlags::IN_DELETE
        | AddWatchFlags::IN_MOVED_FROM
        | AddWatchFlags::IN_MOVED_TO
        | AddWatchFlags::IN_ATTRIB
        | AddWatchFlags::IN_DELETE_SELF
        | AddWatchFlags::IN_MOVE_SELF
        | AddWatchFlags::IN_ONLYDIR
        | AddWatchFlags::IN_DONT_FOLLOW
}

pub async fn watch(agent: &Arc<Agent>, req: &Frame, rd: Reader, tx: &FrameTx) {
    let wr: WatchRequest = match parse(req, "watch") {
        Ok(r) => r,
        Err(e) => {
            tx.error(e).await;
            return;
        }
    };
    let Some(slot) = Slot::take() else {
        tx.error(Fail::new(
            ErrorCode::Busy,
            format!("{MAX_WATCHES} watches are open already"),
        ))
        .await;
        return;
    };
    let stop = Arc::new(AtomicBool::new(false));
    let (tx2, stop2) = (tx.clone(), stop.clone());
    let work = agent.fs_user().run(move || {
        let _slot = slot;
        run(&wr, &tx2, &stop2)
    });
    tokio::pin!(work);
    let mut incoming = reader_task(rd);
    // The host ends the watch by closing the connection (or with KILL).
    let res = loop {
        tokio::select! {
            r = &mut work => break r,
            f = incoming.recv() => {
                if f.as_ref().is_none_or(|f| f.is(MsgType::Kill)) {
                    stop.store(true, Ordering::Release);
                    break work.await;
                }
            }
        }
    };
    match res {
        Ok(Ok(End::RootGone)) => {
            tx.exit(0).await;
        }
        Ok(Ok(End::HostGone)) => {}
        Ok(Err(e)) => {
            tx.error(e).await;
        }
        Err(e) => {
            tx.error(Fail::from(e.to_string())).await;
        }
    }
}

/// Why a watch ended.
#[derive(Debug, PartialEq, Eq)]
enum End {
    /// The watched directory was deleted or moved away.
    RootGone,
    /// The host closed the connection (or could no longer be written to).
    HostGone,
}

/// The watched tree: watch descriptors and the directories (relative to
/// the root) they stand for.
struct Tree {
    ino: Inotify,
    root: PathBuf,
    recursive: bool,
    dirs: HashMap<WatchDescriptor, PathBuf>,
    root_wd: WatchDescriptor,
    /// The names under watched directories (relative to the root).
    names: HashSet<PathBuf>,
    /// Rename cookies of this agent's write temp files on their way out.
    landing: HashSet<u32>,
}

impl Tree {
    fn remember(&mut self, rel: &Path) {
        if self.names.len() < MAX_NAMES {
            self.names.insert(rel.to_path_buf());
        }
    }

    /// `rel` and, if it was a directory, everything under it.
    fn forget(&mut self, rel: &Path) {
        if self.names.remove(rel) {
            self.names.retain(|n| !n.starts_with(rel));
        }
    }

    /// Watches `rel` (a directory under the root) and, for a recursive
    /// watch, the directories under it; `found` gets the names found inside
    /// (they appeared before their directory was watched, so they are
    /// reported as created).
    fn add_subtree(&mut self, rel: &Path, depth: usize, found: &mut Vec<PathBuf>) {
        if self.dirs.len() >= MAX_DIRS || depth > MAX_DEPTH {
            return;
        }
        let Ok(wd) = self.ino.add_watch(&self.root.join(rel), mask()) else {
            // Gone again, or not a directory any more: nothing to watch.
            return;
        };
        self.dirs.insert(wd, rel.to_path_buf());
        let Ok(rd) = std::fs::read_dir(self.root.join(rel)) else {
            return;
        };
        for e in rd.flatten() {
            if is_temp_name(&e.file_name()) {
                continue;
            }
            let child = rel.join(e.file_name());
            self.remember(&child);
            found.push(child.clone());
            // `file_type` is the entry's own type: a symlink to a directory
            // is a symlink, and is not followed.
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                self.add_subtree(&child, depth.saturating_add(1), found);
            }
        }
    }
}

/// Sets the watch up, answers WATCH_RESP, then reports changes until the
/// host is gone or the root is. Errors are the setup's only.
fn run(wr: &WatchRequest, tx: &FrameTx, stop: &AtomicBool) -> Result<End, Fail> {
    let root = check_path(&wr.path)?;
    let ino = Inotify::init(InitFlags::IN_CLOEXEC | InitFlags::IN_NONBLOCK)
        .map_err(|e| Fail::io("inotify", &std::io::Error::from(e)))?;
    let root_wd = ino.add_watch(&root, mask()).map_err(|e| {
        let e = std::io::Error::from(e);
        // ENOTDIR also for a symlink (IN_DONT_FOLLOW | IN_ONLYDIR).
        Fail::io(format!("watch {}", wr.path), &e)
    })?;
    let mut tree = Tree {
        ino,
        root,
        recursive: wr.recursive,
        dirs: HashMap::from([(root_wd, PathBuf::new())]),
        root_wd,
        names: HashSet::new(),
        landing: HashSet::new(),
    };
    if let Ok(rd) = std::fs::read_dir(&tree.root) {
        for e in rd.flatten() {
            if is_temp_name(&e.file_name()) {
                continue;
            }
            let rel = PathBuf::from(e.file_name());
            tree.remember(&rel);
            if tree.recursive && e.file_type().is_ok_and(|t| t.is_dir()) {
                // What is there already is not news.
                tree.add_subtree(&rel, 1, &mut Vec::new());
            }
        }
    }
    if !tx.blocking_send(MsgType::WatchResp, &ok_body()) {
        return Ok(End::HostGone);
    }
    loop {
        if stop.load(Ordering::Acquire) {
            return Ok(End::HostGone);
        }
        let ready = {
            let mut fds = [PollFd::new(tree.ino.as_fd(), PollFlags::POLLIN)];
            nix::poll::poll(&mut fds, PollTimeout::from(POLL_MS)).unwrap_or(0)
        };
        if ready == 0 {
            continue;
        }
        let events = match tree.ino.read_events() {
            Ok(ev) => ev,
            Err(nix::errno::Errno::EAGAIN) => continue,
            Err(e) => {
                tracing::warn!(error = %e, "reading inotify events failed; the watch ends");
                return Ok(End::HostGone);
            }
        };
        for ev in events {
            match handle(&mut tree, ev) {
                Step::Send(out) => {
                    for e in out {
                        if !send(tx, &e) {
                            return Ok(End::HostGone);
                        }
                    }
                }
                Step::RootGone => return Ok(End::RootGone),
            }
        }
    }
}

enum Step {
    Send(Vec<WatchEvent>),
    RootGone,
}

/// One inotify event as what the host is told.
fn handle(tree: &mut Tree, ev: InotifyEvent) -> Step {
    let m = ev.mask;
    if m.contains(AddWatchFlags::IN_Q_OVERFLOW) {
        return Step::Send(vec![WatchEvent {
            name: String::new(),
            op: WatchOp::Overflow,
        }]);
    }
    if m.contains(AddWatchFlags::IN_IGNORED) {
        tree.dirs.remove(&ev.wd);
        return if ev.wd == tree.root_wd {
            Step::RootGone
        } else {
            Step::Send(Vec::new())
        };
    }
    if ev.wd == tree.root_wd
        && m.intersects(AddWatchFlags::IN_DELETE_SELF | AddWatchFlags::IN_MOVE_SELF)
    {
        return Step::RootGone;
    }
    // A subdirectory's own removal is its parent's IN_DELETE.
    let (Some(dir), Some(name)) = (tree.dirs.get(&ev.wd), ev.name.as_deref()) else {
        return Step::Send(Vec::new());
    };
    let rel = dir.join(name);
    if is_temp_name(name) {
        // The agent's own write in progress: only its landing is news.
        if m.contains(AddWatchFlags::IN_MOVED_FROM) {
            if tree.landing.len() >= 1024 {
                tree.landing.clear();
            }
            tree.landing.insert(ev.cookie);
        }
        return Step::Send(Vec::new());
    }
    if m.contains(AddWatchFlags::IN_MOVED_TO) && tree.landing.remove(&ev.cookie) {
        // An atomic write landing on its name: new content for a name
        // that was there, a creation with content otherwise.
        let out = if tree.names.contains(&rel) {
            vec![event(&rel, WatchOp::Write)]
        } else {
            tree.remember(&rel);
            vec![event(&rel, WatchOp::Create), event(&rel, WatchOp::Write)]
        };
        return Step::Send(out);
    }
    let op = if m.intersects(AddWatchFlags::IN_CREATE | AddWatchFlags::IN_MOVED_TO) {
        tree.remember(&rel);
        WatchOp::Create
    } else if m.contains(AddWatchFlags::IN_MODIFY) {
        WatchOp::Write
    } else if m.contains(AddWatchFlags::IN_DELETE) {
        tree.forget(&rel);
        WatchOp::Remove
    } else if m.contains(AddWatchFlags::IN_MOVED_FROM) {
        tree.forget(&rel);
        WatchOp::Rename
    } else if m.contains(AddWatchFlags::IN_ATTRIB) {
        WatchOp::Chmod
    } else {
        return Step::Send(Vec::new());
    };
    let mut out = vec![event(&rel, op)];
    if tree.recursive && op == WatchOp::Create && m.contains(AddWatchFlags::IN_ISDIR) {
        let depth = rel.components().count();
        let mut found = Vec::new();
        tree.add_subtree(&rel, depth, &mut found);
        out.extend(found.iter().map(|p| event(p, WatchOp::Create)));
    }
    Step::Send(out)
}

fn event(rel: &Path, op: WatchOp) -> WatchEvent {
    WatchEvent {
        name: lossy(rel.as_os_str()),
        op,
    }
}

fn lossy(s: &OsStr) -> String {
    s.to_string_lossy().into_owned()
}

fn ok_body() -> Vec<u8> {
    serde_json::to_vec(&StatusResponse::ok()).unwrap_or_default()
}

fn send(tx: &FrameTx, e: &WatchEvent) -> bool {
    match serde_json::to_vec(e) {
        Ok(p) => tx.blocking_send(MsgType::WatchEvent, &p),
        Err(_) => true,
    }
}
