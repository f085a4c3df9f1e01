//! Directory watches (WATCH_REQ) against lohar in test mode: inotify events
//! as the host sees them, recursion into new directories, symlinks not
//! followed, the end of a watch, and old hosts untouched.
#![allow(clippy::unwrap_used, clippy::arithmetic_side_effects)] // a test panics to report its failure; its sums are on test data

mod common;

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use bhatti_agent_client::{ClientError, Watch, WatchEvent, WatchOp};
use bhatti_protocol::messages::ErrorCode;
use common::{s, Lohar};

/// Events until `want` has been seen (each at least once), or a panic
/// after 10 s. Returns everything read.
async fn until(w: &mut Watch, want: &[(&str, WatchOp)]) -> Vec<WatchEvent> {
    let mut got = Vec::new();
    let want: BTreeSet<(String, WatchOp)> = want.iter().map(|(n, o)| (n.to_string(), *o)).collect();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let seen: BTreeSet<(String, WatchOp)> = got
            .iter()
            .map(|e: &WatchEvent| (e.name.clone(), e.op))
            .collect();
        if want.is_subset(&seen) {
            return got;
        }
        match tokio::time::timeout_at(deadline, w.next()).await {
            Ok(Ok(Some(e))) => got.push(e),
            other => panic!("waiting for {want:?}, got {got:?} then {other:?}"),
        }
    }
}

#[tokio::test]
async fn changes_are_reported_as_they_happen() {
    let l = Lohar::start();
    let c = l.client();
    assert!(
        c.can_watch().await.unwrap(),
        "the agent announces files.watch"
    );
    let root = l.path("w");
    std::fs::create_dir(&root).unwrap();
    std::fs::write(root.join("old"), "x").unwrap();
    let mut w = c.watch(&s(&root), false).await.unwrap();

    std::fs::write(root.join("a"), "1").unwrap();
    until(&mut w, &[("a", WatchOp::Create), ("a", WatchOp::Write)]).await;
    std::fs::set_permissions(root.join("a"), std::fs::Permissions::from_mode(0o600)).unwrap();
    until(&mut w, &[("a", WatchOp::Chmod)]).await;
    std::fs::rename(root.join("a"), root.join("b")).unwrap();
    until(&mut w, &[("a", WatchOp::Rename), ("b", WatchOp::Create)]).await;
    std::fs::remove_file(root.join("b")).unwrap();
    until(&mut w, &[("b", WatchOp::Remove)]).await;

    // The agent's own atomic writes (temp file, rename) read as what they
    // are to the caller: a new file is created and written, an existing
    // one written; the temp file is never mentioned.
    let f = s(&root.join("via-agent"));
    c.file_write_bytes(&f, "0644", b"one").await.unwrap();
    let got = until(
        &mut w,
        &[
            ("via-agent", WatchOp::Create),
            ("via-agent", WatchOp::Write),
        ],
    )
    .await;
    c.file_write_bytes(&f, "0644", b"two").await.unwrap();
    c.file_write_bytes(&s(&root.join("after-agent")), "0644", b"x")
        .await
        .unwrap();
    let again = until(&mut w, &[("after-agent", WatchOp::Create)]).await;
    let all: Vec<&WatchEvent> = got.iter().chain(again.iter()).collect();
    assert!(
        all.iter().all(|e| !e.name.contains("bhatti-tmp")),
        "{all:?}"
    );
    let second: Vec<WatchOp> = again
        .iter()
        .filter(|e| e.name == "via-agent")
        .map(|e| e.op)
        .collect();
    assert_eq!(
        second,
        [WatchOp::Write],
        "an overwrite is a write: {again:?}"
    );

    // Not recursive: a change inside a subdirectory is not this watch's.
    std::fs::create_dir(root.join("sub")).unwrap();
    until(&mut w, &[("sub", WatchOp::Create)]).await;
    std::fs::write(root.join("sub/inner"), "x").unwrap();
    std::fs::write(root.join("marker"), "x").unwrap();
    let got = until(&mut w, &[("marker", WatchOp::Create)]).await;
    assert!(got.iter().all(|e| !e.name.contains("inner")), "{got:?}");

    // The watched directory going away ends the watch.
    std::fs::remove_dir_all(&root).unwrap();
    let end = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match w.next().await {
                Ok(Some(_)) => continue,
                other => return other,
            }
        }
    })
    .await
    .expect("the watch ends");
    assert!(matches!(end, Ok(None)), "{end:?}");
}

#[tokio::test]
async fn recursive_watches_follow_new_directories_but_not_symlinks() {
    let l = Lohar::start();
    let c = l.client();
    let root = l.path("r");
    let outside = l.path("outside");
    std::fs::create_dir_all(root.join("deep/er")).unwrap();
    std::fs::create_dir(&outside).unwrap();
    std::os::unix::fs::symlink(&outside, root.join("link")).unwrap();
    let mut w = c.watch(&s(&root), true).await.unwrap();

    std::fs::write(root.join("deep/er/f"), "1").unwrap();
    until(&mut w, &[("deep/er/f", WatchOp::Create)]).await;
    // A directory made after the watch began is watched too.
    std::fs::create_dir(root.join("new")).unwrap();
    until(&mut w, &[("new", WatchOp::Create)]).await;
    std::fs::write(root.join("new/g"), "1").unwrap();
    until(&mut w, &[("new/g", WatchOp::Create)]).await;
    // A symlinked directory is a name in the tree, not a tree to watch.
    std::fs::write(outside.join("secret"), "1").unwrap();
    std::fs::write(root.join("after"), "1").unwrap();
    let got = until(&mut w, &[("after", WatchOp::Create)]).await;
    assert!(got.iter().all(|e| !e.name.contains("secret")), "{got:?}");

    // Watching the symlink itself is refused: it is not a directory.
    let code = match c.watch(&s(&root.join("link")), false).await {
        Err(ClientError::Agent { code, .. }) => code,
        other => panic!("a symlink was watched: {:?}", other.map(|_| ())),
    };
    c.hello().await.unwrap();
    assert!(
        code.is_none() || code == Some(ErrorCode::NotADirectory),
        "{code:?}"
    );
    match c.watch(&s(&root.join("link")), false).await {
        Err(ClientError::Agent { code, .. }) => assert_eq!(code, Some(ErrorCode::NotADirectory)),
        other => panic!("a symlink was watched: {:?}", other.map(|_| ())),
    }
    match c.watch(&s(&l.path("missing")), false).await {
        Err(ClientError::Agent { code, .. }) => assert_eq!(code, Some(ErrorCode::NotFound)),
        other => panic!("a missing directory was watched: {:?}", other.map(|_| ())),
    }
    match c.watch("relative", false).await {
        Err(ClientError::Agent { code, .. }) => assert_eq!(code, Some(ErrorCode::InvalidInput)),
        other => panic!("a relative path was watched: {:?}", other.map(|_| ())),
    }
}

#[tokio::test]
async fn a_closed_watch_frees_its_place() {
    let l = Lohar::start();
    let c = l.client();
    let root = l.path("many");
    std::fs::create_dir(&root).unwrap();
    // More watches one after another than may be open at once: each one
    // dropped gives its place back.
    for i in 0..80 {
        let w = c.watch(&s(&root), false).await;
        assert!(w.is_ok(), "watch {i}: {:?}", w.err());
        drop(w);
        // The agent notices a closed watch within its poll interval.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut w = c.watch(&s(&root), false).await.unwrap();
    std::fs::write(root.join("x"), "1").unwrap();
    until(&mut w, &[("x", WatchOp::Create)]).await;
}
