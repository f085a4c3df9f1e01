//! TTY and piped sessions through the client against lohar in test mode (the
//! seed's Agent "TTY Sessions" and "Sessions" tests).
#![allow(clippy::unwrap_used, clippy::arithmetic_side_effects)] // a test panics to report its failure; its sums are on test data

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use bhatti_agent_client::{ClientError, ShellOptions, Terminal};
use common::{alive, eventually, Lohar, Opts};

fn sh() -> ShellOptions {
    ShellOptions {
        argv: vec!["sh".into()],
        ..Default::default()
    }
}

/// Reads until `needle` shows up in the accumulated output (or fails after 10 s).
async fn read_until(t: &mut Terminal, needle: &str) -> String {
    let mut acc = Vec::new();
    let res = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match t.read().await.unwrap() {
                Some(d) => {
                    acc.extend(d);
                    if String::from_utf8_lossy(&acc).contains(needle) {
                        return;
                    }
                }
                None => return,
            }
        }
    })
    .await;
    let text = String::from_utf8_lossy(&acc).into_owned();
    assert!(
        res.is_ok() && text.contains(needle),
        "never saw {needle:?} in {text:?}"
    );
    text
}

async fn read_to_end(t: &mut Terminal) -> Vec<u8> {
    let mut acc = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(d) = t.read().await.unwrap() {
            acc.extend(d);
        }
    })
    .await
    .expect("session ended");
    acc
}

#[tokio::test]
async fn tty_session_io_resize_and_exit() {
    let l = Lohar::start();
    let c = l.client();
    let (info, mut t) = c.shell(sh()).await.unwrap();
    assert!(info.session_id.starts_with('s'));
    assert!(info.tty && info.running && info.attached);
    t.write(b"echo hel''lo\n").await.unwrap();
    read_until(&mut t, "hello").await;
    // It is a real terminal.
    t.write(b"test -t 0 && echo is-a-tty\n").await.unwrap();
    read_until(&mut t, "is-a-tty").await;
    t.resize(40, 123).await.unwrap();
    t.write(b"stty size\n").await.unwrap();
    read_until(&mut t, "40 123").await;
    t.write(b"exit 7\n").await.unwrap();
    read_to_end(&mut t).await;
    assert_eq!(t.exit_code(), Some(7));
    // Exited while attached: removed at once.
    let list = c.session_list().await.unwrap();
    assert!(list.iter().all(|s| s.session_id != info.session_id));
}

#[tokio::test]
async fn initial_window_size_is_applied() {
    let l = Lohar::start();
    let (_, mut t) = l
        .client()
        .shell(ShellOptions {
            argv: vec!["sh".into(), "-c".into(), "stty size".into()],
            rows: 33,
            cols: 99,
            ..Default::default()
        })
        .await
        .unwrap();
    let out = read_to_end(&mut t).await;
    assert!(String::from_utf8_lossy(&out).contains("33 99"));
}

#[tokio::test]
async fn detach_and_reattach_replays_scrollback_then_live() {
    let l = Lohar::start();
    let c = l.client();
    let (info, mut t) = c.shell(sh()).await.unwrap();
    t.write(b"echo mark''er-one\n").await.unwrap();
    read_until(&mut t, "marker-one").await;
    drop(t); // detach: no signal, the shell keeps running
    tokio::time::sleep(Duration::from_millis(100)).await;
    let listed = c.session_list().await.unwrap();
    let me = listed
        .iter()
        .find(|s| s.session_id == info.session_id)
        .unwrap();
    assert!(me.running && !me.attached);

    let (again, mut t) = c.attach(&info.session_id, false).await.unwrap();
    assert!(again.attached && again.running);
    let first = t.read().await.unwrap().unwrap();
    assert!(
        String::from_utf8_lossy(&first).contains("marker-one"),
        "scrollback first"
    );
    t.write(b"echo mark''er-two\n").await.unwrap();
    read_until(&mut t, "marker-two").await;
}

#[tokio::test]
async fn scrollback_wraps_and_replays_in_order() {
    let l = Lohar::start();
    let c = l.client();
    // ~130 KB of numbered lines, twice the 64 KiB ring.
    let (info, t) = c
        .shell(ShellOptions {
            argv: vec![
                "sh".into(),
                "-c".into(),
                "i=0; while [ $i -lt 20000 ]; do echo L$i; i=$((i+1)); done; echo DONE; sleep 60"
                    .into(),
            ],
            ..Default::default()
        })
        .await
        .unwrap();
    drop(t);
    // Wait for the writer to finish (DONE lands in the ring).
    let mut history = Vec::new();
    for _ in 0..200 {
        let (_, mut t) = c.attach(&info.session_id, false).await.unwrap();
        history = t.read().await.unwrap().unwrap_or_default();
        if String::from_utf8_lossy(&history).contains("DONE") {
            break;
        }
        drop(t);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(history.len() <= 64 * 1024 && history.len() > 60 * 1024);
    let text = String::from_utf8_lossy(&history).replace('\r', "");
    let nums: Vec<u32> = text
        .lines()
        .skip(1) // the oldest line may be cut
        .filter_map(|l| l.strip_prefix('L').and_then(|n| n.parse().ok()))
        .collect();
    assert_eq!(*nums.last().unwrap(), 19999);
    assert!(
        nums.windows(2).all(|w| w[1] == w[0] + 1),
        "replay out of order"
    );
    c.session_kill(&info.session_id).await.unwrap();
}

#[tokio::test]
async fn attach_during_live_output_never_interleaves() {
    let l = Lohar::start();
    let c = l.client();
    let (info, t) = c
        .shell(ShellOptions {
            argv: vec![
                "sh".into(),
                "-c".into(),
                "i=0; while [ $i -lt 200000 ]; do echo $i; i=$((i+1)); done; sleep 60".into(),
            ],
            ..Default::default()
        })
        .await
        .unwrap();
    drop(t);
    tokio::time::sleep(Duration::from_millis(150)).await;
    // Attach mid-stream; scrollback + live output must be one gap-free sequence.
    let (_, mut t) = c.attach(&info.session_id, false).await.unwrap();
    let mut acc = Vec::new();
    while acc.len() < 300_000 {
        match tokio::time::timeout(Duration::from_secs(10), t.read()).await {
            Ok(Ok(Some(d))) => acc.extend(d),
            _ => break,
        }
    }
    let text = String::from_utf8_lossy(&acc).replace('\r', "");
    let mut lines: Vec<&str> = text.lines().collect();
    lines.pop(); // the newest line may be incomplete
    let nums: Vec<u64> = lines.iter().skip(1).map(|l| l.parse().unwrap()).collect();
    assert!(nums.len() > 1000);
    for w in nums.windows(2) {
        assert_eq!(
            w[1],
            w[0] + 1,
            "gap or duplicate between {} and {}",
            w[0],
            w[1]
        );
    }
    c.session_kill(&info.session_id).await.unwrap();
}

#[tokio::test]
async fn if_detached_refuses_and_forced_attach_steals() {
    let l = Lohar::start();
    let c = l.client();
    let (info, mut first) = c.shell(sh()).await.unwrap();
    match c.attach(&info.session_id, true).await {
        Err(ClientError::Agent { message: m, .. }) => assert_eq!(m, "session is attached"),
        other => panic!("unexpected {:?}", other.map(|x| x.0)),
    }
    let (_, mut second) = c.attach(&info.session_id, false).await.unwrap();
    // The first client is told with EXIT(0) and let go.
    read_to_end(&mut first).await;
    assert_eq!(first.exit_code(), Some(0));
    second.write(b"echo still-he''re\n").await.unwrap();
    read_until(&mut second, "still-here").await;
    assert!(matches!(
        c.attach("s9999", false).await.map(|x| x.0),
        Err(ClientError::Agent { message: m, .. }) if m == "session not found"
    ));
}

#[tokio::test]
async fn exited_unattached_session_keeps_scrollback_then_exit() {
    let l = Lohar::start();
    let c = l.client();
    let (info, t) = c
        .shell(ShellOptions {
            argv: vec![
                "sh".into(),
                "-c".into(),
                "sleep 0.3; echo bye; exit 3".into(),
            ],
            ..Default::default()
        })
        .await
        .unwrap();
    drop(t);
    tokio::time::sleep(Duration::from_millis(800)).await;
    let me = c
        .session_list()
        .await
        .unwrap()
        .into_iter()
        .find(|s| s.session_id == info.session_id)
        .expect("kept during the grace period");
    assert_eq!((me.running, me.exit_code), (false, Some(3)));
    let (_, mut t) = c.attach(&info.session_id, false).await.unwrap();
    let out = read_to_end(&mut t).await;
    assert!(String::from_utf8_lossy(&out).contains("bye"));
    assert_eq!(t.exit_code(), Some(3));
    // Fetching it after exit removes it.
    assert!(c
        .session_list()
        .await
        .unwrap()
        .iter()
        .all(|s| s.session_id != info.session_id));
}

async fn session_state(
    c: &bhatti_agent_client::AgentClient,
    id: &str,
) -> Option<(bool, Option<i32>)> {
    c.session_list()
        .await
        .unwrap()
        .into_iter()
        .find(|s| s.session_id == id)
        .map(|s| (s.running, s.exit_code))
}

/// Waits until the session is no longer running; returns its exit code if it is
/// still listed.
async fn wait_ended(c: &bhatti_agent_client::AgentClient, id: &str) -> Option<i32> {
    for _ in 0..250 {
        match session_state(c, id).await {
            Some((true, _)) => tokio::time::sleep(Duration::from_millis(20)).await,
            Some((false, code)) => return code,
            None => return None,
        }
    }
    panic!("session {id} still running");
}

fn sleeper() -> ShellOptions {
    ShellOptions {
        argv: vec!["sleep".into(), "60".into()],
        ..Default::default()
    }
}

#[tokio::test]
async fn session_list_and_kill() {
    let l = Lohar::start();
    let c = l.client();
    let (a, ta) = c.shell(sh()).await.unwrap();
    let (b, _tb) = c.shell(sh()).await.unwrap();
    drop(ta);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let list = c.session_list().await.unwrap();
    assert_eq!(list.len(), 2);
    let la = list.iter().find(|s| s.session_id == a.session_id).unwrap();
    let lb = list.iter().find(|s| s.session_id == b.session_id).unwrap();
    assert!(!la.attached && lb.attached && la.tty && la.argv == "sh" && la.running);
    assert!(la.exit_code.is_none());
    let act = c.activity().await.unwrap();
    assert_eq!((act.active_sessions, act.attached_sessions), (2, 1));

    // EXEC_KILL: SIGKILL to the group (even an interactive shell), acknowledged.
    c.session_kill(&a.session_id).await.unwrap();
    assert_eq!(wait_ended(&c, &a.session_id).await, Some(137));
    assert!(matches!(
        c.session_kill("s404").await,
        Err(ClientError::Agent { message: m, .. }) if m == "session not found"
    ));
}

#[tokio::test]
async fn kill_frame_sends_sigterm_and_detaches() {
    let l = Lohar::start();
    let c = l.client();
    let (info, mut t) = c.shell(sleeper()).await.unwrap();
    t.kill().await.unwrap();
    // SIGTERM ends `sleep`: 128 + 15.
    assert_eq!(wait_ended(&c, &info.session_id).await, Some(143));
}
#[tokio::test]
async fn idle_timer_kills_a_detached_session() {
    let l = Lohar::start();
    let c = l.client();
    let (info, mut t) = c
        .shell(ShellOptions {
            argv: vec!["sh".into()],
            max_idle_sec: 1,
            ..Default::default()
        })
        .await
        .unwrap();
    t.write(b"echo PID:$$:\n").await.unwrap();
    let mut out = String::new();
    let pid: i32 = loop {
        out.push_str(&read_until(&mut t, ":").await);
        let found = out.split("PID:").skip(1).find_map(|rest| {
            let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
            digits.parse().ok()
        });
        if let Some(p) = found {
            break p;
        }
    };
    // While attached, the timer does not run.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(alive(pid));
    drop(t);
    assert!(
        eventually(Duration::from_secs(5), || !alive(pid)).await,
        "idle session not killed"
    );
    let me = c
        .session_list()
        .await
        .unwrap()
        .into_iter()
        .find(|s| s.session_id == info.session_id);
    // The session stays listed with the kill as its end, so a client that
    // comes back learns what happened to it.
    let me = me.expect("an idle-killed session is still listed");
    assert_eq!(me.exit_code, Some(137), "{me:?}");
}

#[tokio::test]
async fn reattach_cancels_the_idle_timer() {
    let l = Lohar::start();
    let c = l.client();
    let (info, t) = c
        .shell(ShellOptions {
            argv: vec!["sh".into()],
            max_idle_sec: 1,
            ..Default::default()
        })
        .await
        .unwrap();
    drop(t);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_, mut t) = c.attach(&info.session_id, false).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    t.write(b"echo alive-after-idle\n").await.unwrap();
    read_until(&mut t, "alive-after-idle").await;
}

#[tokio::test]
async fn init_session_runs_is_listed_and_attachable() {
    let l = Lohar::start_with(Opts {
        init: Some("echo init-ran; sleep 60".into()),
        ..Default::default()
    });
    let c = l.client();
    let mut found = None;
    for _ in 0..100 {
        found = c
            .session_list()
            .await
            .unwrap()
            .into_iter()
            .find(|s| s.session_id == "init");
        if found.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let init = found.expect("init listed");
    assert!(init.tty && init.running && init.argv.starts_with("sh -c"));
    let (_, mut t) = c.attach("init", false).await.unwrap();
    read_until(&mut t, "init-ran").await;
}

#[tokio::test]
async fn finished_init_is_removed_at_once() {
    let l = Lohar::start_with(Opts {
        init: Some("exit 0".into()),
        ..Default::default()
    });
    let c = l.client();
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(c.session_list().await.unwrap().is_empty());
}

#[tokio::test]
async fn session_limit_is_enforced() {
    let l = Lohar::start();
    let c = l.client();
    let mut held = Vec::new();
    for _ in 0..bhatti_protocol::MAX_SESSIONS {
        held.push(
            c.shell(ShellOptions {
                argv: vec!["sleep".into(), "60".into()],
                ..Default::default()
            })
            .await
            .unwrap(),
        );
    }
    // All of them attached: nothing may be reaped, so the new one is refused.
    match c.shell(sh()).await.map(|x| x.0) {
        Err(ClientError::Agent { message: m, .. }) => assert!(
            m.starts_with("session limit exceeded") && m.contains("none of them detached"),
            "{m}"
        ),
        other => panic!("unexpected {other:?}"),
    }
    for (info, _) in &held {
        c.session_kill(&info.session_id).await.unwrap();
    }
}

/// Reads `PID:<n>` printed by a session's shell.
async fn shell_pid(t: &mut Terminal) -> i32 {
    let mut out = String::new();
    loop {
        out.push_str(&read_until(t, ":").await);
        let found = out.split("PID:").skip(1).find_map(|rest| {
            let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
            digits.parse().ok()
        });
        if let Some(p) = found {
            return p;
        }
    }
}

#[tokio::test]
async fn session_limit_reaps_the_longest_detached_session() {
    let l = Lohar::start();
    let c = l.client();
    let mut ids = Vec::new();
    let mut first_pid = 0;
    for i in 0..bhatti_protocol::MAX_SESSIONS {
        // Abandoned shells: opened, then the client goes away (detach).
        let (info, mut t) = c
            .shell(ShellOptions {
                argv: vec![
                    "sh".into(),
                    "-c".into(),
                    "echo PID:$$:; exec sleep 600".into(),
                ],
                ..Default::default()
            })
            .await
            .unwrap();
        if i == 0 {
            first_pid = shell_pid(&mut t).await;
        }
        drop(t);
        ids.push(info.session_id);
    }
    // Every one of them is detached once its client is gone.
    let mut all_detached = false;
    for _ in 0..100 {
        let list = c.session_list().await.unwrap();
        if list.len() == bhatti_protocol::MAX_SESSIONS && list.iter().all(|s| !s.attached) {
            all_detached = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(all_detached, "sessions did not detach");
    // The limit is reached, yet a new shell starts: the oldest detached session
    // made room.
    let (info, mut t) = c.shell(sh()).await.expect("new session at the limit");
    t.write(b"echo room-made\n").await.unwrap();
    read_until(&mut t, "room-made").await;
    assert!(
        eventually(Duration::from_secs(5), || !alive(first_pid)).await,
        "the reaped session's process still runs"
    );
    let list = c.session_list().await.unwrap();
    let listed: Vec<&str> = list.iter().map(|s| s.session_id.as_str()).collect();
    assert!(!listed.contains(&ids[0].as_str()), "{listed:?}");
    assert!(listed.contains(&ids[1].as_str()), "{listed:?}");
    assert!(listed.contains(&info.session_id.as_str()), "{listed:?}");
    assert_eq!(list.len(), bhatti_protocol::MAX_SESSIONS);
    for id in listed {
        let _ = c.session_kill(id).await;
    }
}

#[tokio::test]
async fn piped_session_merges_stderr_and_survives_detach() {
    let l = Lohar::start();
    let c = l.client();
    let (info, mut t) = c
        .piped_session(
            vec![
                "sh".into(),
                "-c".into(),
                "while read x; do echo got:$x; echo err:$x >&2; done".into(),
            ],
            BTreeMap::new(),
            0,
        )
        .await
        .unwrap();
    assert!(!info.tty);
    t.write(b"one\n").await.unwrap();
    read_until(&mut t, "err:one").await;
    // Resize is ignored on pipes.
    t.resize(10, 10).await.unwrap();
    drop(t);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (_, mut t) = c.attach(&info.session_id, false).await.unwrap();
    let hist = t.read().await.unwrap().unwrap();
    let hist = String::from_utf8_lossy(&hist);
    assert!(hist.contains("got:one") && hist.contains("err:one"));
    t.write(b"two\n").await.unwrap();
    read_until(&mut t, "got:two").await;
    // Closing stdin ends the loop.
    t.writer.close_stdin().await.unwrap();
    read_to_end(&mut t).await;
    assert_eq!(t.exit_code(), Some(0));
}

#[tokio::test]
async fn many_sessions_in_parallel() {
    let l = Lohar::start();
    let c = l.client();
    let tasks: Vec<_> = (0..5)
        .map(|i| {
            let c = c.clone();
            tokio::spawn(async move {
                let (_, mut t) = c.shell(sh()).await.unwrap();
                let needle = format!("sess-{i}-ok");
                t.write(format!("echo sess-{i}-''ok\n").as_bytes())
                    .await
                    .unwrap();
                read_until(&mut t, &needle).await;
                t.write(b"exit\n").await.unwrap();
                read_to_end(&mut t).await;
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
}
