//! One-shot, streaming and detached exec through the host client against lohar in
//! test mode (the seed's Agent "Exec" and Client tests).
#![allow(clippy::unwrap_used, clippy::arithmetic_side_effects)] // a test panics to report its failure; its sums are on test data

mod common;

use std::time::Duration;

use bhatti_agent_client::{ClientError, ExecRequest, StreamEvent};
use common::{alive, eventually, s, Lohar, Opts};

#[tokio::test]
async fn basic_exec_and_exit_codes() {
    let l = Lohar::start();
    let c = l.client();
    let r = c.exec(["echo", "hello"]).await.unwrap();
    assert_eq!((r.exit_code, r.stdout_str().as_str()), (0, "hello\n"));
    for code in [1, 42, 255] {
        let r = c.exec(["sh", "-c", &format!("exit {code}")]).await.unwrap();
        assert_eq!(r.exit_code, code);
    }
    // Killed by a signal: 128 + signal.
    let r = c.exec(["sh", "-c", "kill -9 $$"]).await.unwrap();
    assert_eq!(r.exit_code, 137);
}

#[tokio::test]
async fn command_not_found_is_a_start_error() {
    let l = Lohar::start();
    let err = l.client().exec(["/definitely/not/here"]).await.unwrap_err();
    match err {
        ClientError::Agent { message: m, .. } => assert!(m.starts_with("start:"), "{m}"),
        e => panic!("unexpected {e:?}"),
    }
}

#[tokio::test]
async fn stderr_env_and_cwd() {
    let l = Lohar::start();
    let c = l.client();
    let r = c
        .exec(["sh", "-c", "echo to-out; echo to-err >&2"])
        .await
        .unwrap();
    assert_eq!(r.stdout_str(), "to-out\n");
    assert_eq!(r.stderr_str(), "to-err\n");

    let mut req = ExecRequest::new(["sh", "-c", "echo $FOO:$TERM:$PATH; pwd"]);
    req.env.insert("FOO".into(), "bar baz".into());
    std::fs::create_dir(l.path("work")).unwrap();
    req.cwd = s(&l.path("work"));
    let r = c.exec_request(req, None).await.unwrap();
    let out = r.stdout_str();
    let mut lines = out.lines();
    assert_eq!(
        lines.next().unwrap(),
        "bar baz:xterm-256color:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    );
    assert_eq!(lines.next().unwrap(), s(&l.path("work")));

    // A request env var overrides the defaults.
    let mut req = ExecRequest::new(["sh", "-c", "echo $TERM"]);
    req.env.insert("TERM".into(), "dumb".into());
    assert_eq!(
        c.exec_request(req, None).await.unwrap().stdout_str(),
        "dumb\n"
    );

    // A missing cwd is a start error, not a hang.
    let mut req = ExecRequest::new(["true"]);
    req.cwd = "/no/such/dir".into();
    assert!(matches!(
        c.exec_request(req, None).await,
        Err(ClientError::Agent { .. })
    ));
}

#[tokio::test]
async fn stdin_is_fed_and_closed() {
    let l = Lohar::start();
    let input: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let r = l
        .client()
        .exec_request(ExecRequest::new(["cat"]), Some(&input))
        .await
        .unwrap();
    assert_eq!(r.exit_code, 0);
    assert_eq!(r.stdout, input);
}

#[tokio::test]
async fn large_output_one_mib() {
    let l = Lohar::start();
    let r = l
        .client()
        .exec([
            "sh",
            "-c",
            "head -c 1048576 /dev/zero; head -c 1000 /dev/zero >&2",
        ])
        .await
        .unwrap();
    assert_eq!(r.stdout.len(), 1 << 20);
    assert_eq!(r.stderr.len(), 1000);
    assert!(!r.truncated);
}

#[tokio::test]
async fn output_is_capped_at_ten_mib_with_a_marker() {
    let l = Lohar::start();
    let r = l
        .client()
        .exec(["sh", "-c", "head -c 11534336 /dev/zero"])
        .await
        .unwrap();
    assert!(r.truncated);
    assert_eq!(r.stdout.len(), 10 * 1024 * 1024);
    assert!(r.stderr_str().ends_with("[output truncated at 10MB]"));
    assert_eq!(r.exit_code, 0);
}

/// Starts `sh` that backgrounds a sleeper, prints its pid, and waits.
const GROUP_SCRIPT: &str = "sleep 300 & echo $!; wait";

async fn first_line_pid(stream: &mut bhatti_agent_client::ExecStream) -> i32 {
    let mut buf = Vec::new();
    loop {
        match stream.next().await.unwrap() {
            Some(StreamEvent::Stdout(d)) => {
                buf.extend(d);
                if let Some(nl) = buf.iter().position(|&b| b == b'\n') {
                    return std::str::from_utf8(&buf[..nl])
                        .unwrap()
                        .trim()
                        .parse()
                        .unwrap();
                }
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[tokio::test]
async fn kill_during_exec_kills_the_whole_process_group() {
    let l = Lohar::start();
    let mut st = l
        .client()
        .exec_stream(ExecRequest::new(["sh", "-c", GROUP_SCRIPT]))
        .await
        .unwrap();
    let pid = first_line_pid(&mut st).await;
    assert!(alive(pid));
    st.kill().await.unwrap();
    let mut code = None;
    while let Some(ev) = st.next().await.unwrap() {
        if let StreamEvent::Exit(c) = ev {
            code = Some(c);
        }
    }
    assert_eq!(code, Some(137));
    assert!(
        eventually(Duration::from_secs(5), || !alive(pid)).await,
        "grandchild {pid} survived KILL"
    );
}

#[tokio::test]
async fn dropped_connection_kills_the_process_group() {
    let l = Lohar::start();
    let mut st = l
        .client()
        .exec_stream(ExecRequest::new(["sh", "-c", GROUP_SCRIPT]))
        .await
        .unwrap();
    let pid = first_line_pid(&mut st).await;
    drop(st);
    assert!(
        eventually(Duration::from_secs(5), || !alive(pid)).await,
        "process group survived the host disconnect"
    );
}

#[tokio::test]
async fn host_side_timeout_kills_the_guest_process() {
    let l = Lohar::start();
    let c = l.client();
    let marker = l.path("started");
    let script = format!("echo $$ > {}; exec sleep 300", s(&marker));
    let res = tokio::time::timeout(
        Duration::from_millis(500),
        c.exec(["sh", "-c", script.as_str()]),
    )
    .await;
    assert!(res.is_err(), "exec should time out");
    let pid: i32 = std::fs::read_to_string(&marker)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(eventually(Duration::from_secs(5), || !alive(pid)).await);
}

#[tokio::test]
async fn streaming_events_arrive_incrementally() {
    let l = Lohar::start();
    let mut st = l
        .client()
        .exec_stream(ExecRequest::new([
            "sh",
            "-c",
            "echo one; sleep 0.3; echo two >&2; exit 5",
        ]))
        .await
        .unwrap();
    let mut evs = Vec::new();
    while let Some(ev) = st.next().await.unwrap() {
        evs.push(ev);
    }
    assert_eq!(
        evs,
        vec![
            StreamEvent::Stdout(b"one\n".to_vec()),
            StreamEvent::Stderr(b"two\n".to_vec()),
            StreamEvent::Exit(5)
        ]
    );
}

#[tokio::test]
async fn detached_exec_returns_at_once_and_survives() {
    let l = Lohar::start();
    let c = l.client();
    let out = l.path("detached.log");
    let info = c
        .exec_detached(
            vec![
                "sh".into(),
                "-c".into(),
                "echo started; sleep 2; echo finished".into(),
            ],
            Some(s(&out)),
        )
        .await
        .unwrap();
    // It returned while the command was still running (it writes "finished"
    // two seconds in).
    assert!(
        !std::fs::read_to_string(&out)
            .unwrap_or_default()
            .contains("finished"),
        "exec_detached waited for the command"
    );
    assert_eq!(info.output_file, s(&out));
    assert!(info.pid > 0);
    assert!(
        eventually(Duration::from_secs(5), || {
            std::fs::read_to_string(&out).unwrap_or_default() == "started\nfinished\n"
        })
        .await
    );
    // Default output file name.
    let info = c.exec_detached(vec!["true".into()], None).await.unwrap();
    assert!(info.output_file.starts_with("/tmp/bhatti-detach-"));
    let _ = std::fs::remove_file(&info.output_file);
}

#[tokio::test]
async fn ten_concurrent_execs() {
    let l = Lohar::start();
    let c = l.client();
    let tasks: Vec<_> = (0..10)
        .map(|i| {
            let c = c.clone();
            tokio::spawn(async move { c.exec(["sh", "-c", &format!("echo {i}")]).await })
        })
        .collect();
    for (i, t) in tasks.into_iter().enumerate() {
        let r = t.await.unwrap().unwrap();
        assert_eq!(r.stdout_str(), format!("{i}\n"));
    }
}

#[tokio::test]
async fn activity_is_updated_by_exec() {
    let l = Lohar::start();
    let c = l.client();
    let a = c.activity().await.unwrap();
    assert_eq!((a.active_sessions, a.attached_sessions), (0, 0));
    assert!(a.last_activity_unix > 0);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    c.exec(["true"]).await.unwrap();
    let b = c.activity().await.unwrap();
    assert!(b.last_activity_unix > a.last_activity_unix);
    // stat / ls / activity queries do not count as activity.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    c.file_stat("/").await.unwrap();
    c.file_ls(&s(l.dir.path())).await.unwrap();
    assert_eq!(
        c.activity().await.unwrap().last_activity_unix,
        b.last_activity_unix
    );
}

#[tokio::test]
async fn wait_ready_succeeds_fails_on_auth_and_times_out() {
    let l = Lohar::start_with(Opts {
        token: Some("t0k3n".into()),
        ..Default::default()
    });
    assert!(l.client().wait_ready(Duration::from_secs(5)).await.unwrap() >= 1);
    let bad = l.client_with_token(Some("nope".into()));
    assert!(matches!(
        bad.wait_ready(Duration::from_secs(5)).await,
        Err(ClientError::Auth)
    ));
    let nowhere = bhatti_agent_client::AgentClient::new(
        bhatti_agent_client::Transport::Unix {
            control: l.path("missing.sock"),
            forward: l.path("missing-fwd.sock"),
        },
        None,
    );
    match nowhere.wait_ready(Duration::from_millis(400)).await {
        Err(ClientError::NotReady { attempts, .. }) => assert!(attempts >= 2),
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test]
async fn hello_from_the_client() {
    let l = Lohar::start();
    let h = l.client().hello().await.unwrap().expect("v2 agent");
    assert_eq!(h.version, bhatti_protocol::PROTOCOL_VERSION);
}

/// Errors are text until the host's HELLO announces `error_codes`; from
/// then on every connection's ERROR carries its code, so the host answers
/// without reading the words (which stay the same).
#[tokio::test]
async fn errors_are_coded_after_hello() {
    use bhatti_agent_client::ReadOptions;
    use bhatti_protocol::messages::ErrorCode;
    let l = Lohar::start();
    let c = l.client();
    let missing = s(&l.path("nope"));
    let code_of = |r: Result<Vec<u8>, ClientError>| match r {
        Err(ClientError::Agent { code, message }) => (code, message),
        other => panic!("unexpected {other:?}"),
    };
    let (code, before) = code_of(c.file_read_to_vec(&missing, ReadOptions::default()).await);
    assert_eq!(code, None, "a v1-speaking host gets words only");
    c.hello().await.unwrap().expect("v2 agent");
    let (code, after) = code_of(c.file_read_to_vec(&missing, ReadOptions::default()).await);
    assert_eq!(code, Some(ErrorCode::NotFound));
    assert_eq!(after, before, "the words do not change");
    let dir = s(&l.path(""));
    let (code, _) = code_of(c.file_read_to_vec(&dir, ReadOptions::default()).await);
    assert_eq!(code, Some(ErrorCode::IsADirectory));
    let (code, _) = code_of(c.file_read_to_vec("relative", ReadOptions::default()).await);
    assert_eq!(code, Some(ErrorCode::InvalidInput));
    // A write to a path that names a directory conflicts with it (the
    // request itself is well-formed).
    match c.file_write_bytes("/", "0644", b"x").await {
        Err(ClientError::Agent { code, .. }) => assert_eq!(code, Some(ErrorCode::IsADirectory)),
        other => panic!("unexpected {other:?}"),
    }
    match c.session_kill("s999").await {
        Err(ClientError::Agent { code, .. }) => assert_eq!(code, Some(ErrorCode::NotFound)),
        other => panic!("unexpected {other:?}"),
    }
    match c.exec(["/no/such/command"]).await {
        Err(ClientError::Agent { code, .. }) => assert_eq!(code, Some(ErrorCode::NotFound)),
        other => panic!("unexpected {other:?}"),
    }
    // A detached one too: a missing program is not the caller's bad input.
    let out = s(&l.path("missing.log"));
    match c
        .exec_detached(vec!["/no/such/command".into()], Some(out))
        .await
    {
        Err(ClientError::Agent { code, .. }) => assert_eq!(code, Some(ErrorCode::NotFound)),
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test]
async fn a_request_can_name_the_user_it_runs_as() {
    use bhatti_protocol::messages::ErrorCode;
    let l = Lohar::start();
    let c = l.client();
    c.hello().await.unwrap();
    let as_user = |user: &str| ExecRequest {
        user: user.into(),
        ..ExecRequest::new(["id", "-u"])
    };
    let me = nix::unistd::geteuid().as_raw();
    // Itself, by uid, always works (nothing to switch).
    let r = c
        .exec_request(as_user(&me.to_string()), None)
        .await
        .unwrap();
    assert_eq!(r.stdout_str().trim(), me.to_string());
    match c.exec_request(as_user("no-such-user-x"), None).await {
        // Well-formed, but not a user of this guest: missing, not malformed.
        Err(ClientError::Agent { code, .. }) => assert_eq!(code, Some(ErrorCode::NoSuchUser)),
        other => panic!("unexpected {other:?}"),
    }
    if common::is_root() {
        let r = c.exec_request(as_user("nobody"), None).await.unwrap();
        assert_eq!(r.stdout_str().trim(), "65534", "runs as nobody");
        let r = c.exec_request(as_user("1234:4321"), None).await.unwrap();
        assert_eq!(r.stdout_str().trim(), "1234");
    } else {
        match c.exec_request(as_user("0"), None).await {
            Err(ClientError::Agent { code, .. }) => {
                assert_eq!(code, Some(ErrorCode::PermissionDenied))
            }
            other => panic!("a non-root agent switched users: {other:?}"),
        }
    }
}

#[tokio::test]
async fn a_reusing_client_keeps_its_connections_between_operations() {
    use bhatti_agent_client::ReadOptions;
    use bhatti_protocol::messages::ErrorCode;
    let mut l = Lohar::start_with(Opts {
        token: Some("reuse-token".into()),
        ..Default::default()
    });
    let c = l.client().reusing();
    assert_eq!(c.idle_connections(), 0);
    for i in 0..10 {
        let r = c.exec(["sh", "-c", &format!("echo {i}")]).await.unwrap();
        assert_eq!(r.stdout_str(), format!("{i}\n"));
    }
    assert_eq!(c.idle_connections(), 1, "ten execs in turn, one connection");

    // Reads, stats and listings go over it too, and its errors are coded.
    let f = l.path("data");
    std::fs::write(&f, b"content").unwrap();
    let got = c
        .file_read_to_vec(&s(&f), ReadOptions::default())
        .await
        .unwrap();
    assert_eq!(got, b"content");
    assert_eq!(c.file_stat(&s(&f)).await.unwrap().size, 7);
    match c.file_stat(&s(&l.path("missing"))).await {
        Err(ClientError::Agent { code, .. }) => assert_eq!(code, Some(ErrorCode::NotFound)),
        other => panic!("unexpected {other:?}"),
    }
    assert!(!c.file_ls(&s(l.dir.path())).await.unwrap().is_empty());
    assert_eq!(c.idle_connections(), 1);
    // Execs with stdin, and uploads, keep connections of their own.
    let r = c
        .exec_request(ExecRequest::new(["cat"]), Some(b"in"))
        .await
        .unwrap();
    assert_eq!(r.stdout_str(), "in");
    c.file_write_bytes(&s(&l.path("up")), "", b"up")
        .await
        .unwrap();
    assert_eq!(c.idle_connections(), 1);

    // Operations at once take a connection each, and all come back.
    let (a, b, d) = tokio::join!(c.exec(["true"]), c.exec(["true"]), c.exec(["true"]));
    assert!(a.is_ok() && b.is_ok() && d.is_ok());
    assert_eq!(c.idle_connections(), 3);

    // An agent restart (a guest reboot) leaves dead connections behind: the
    // next operation finds one closed before any reply and starts over on
    // a new connection.
    l.restart();
    let r = c.exec(["echo", "again"]).await.unwrap();
    assert_eq!(r.stdout_str(), "again\n");
}

#[tokio::test]
async fn a_reused_exec_dropped_halfway_is_killed_and_its_connection_dropped() {
    let l = Lohar::start();
    let c = l.client().reusing();
    c.exec(["true"]).await.unwrap();
    assert_eq!(c.idle_connections(), 1);
    let pidfile = l.path("pid");
    let script = format!("echo $$ > {}; exec sleep 30", s(&pidfile));
    let cut = tokio::time::timeout(Duration::from_millis(500), c.exec(["sh", "-c", &script])).await;
    assert!(cut.is_err(), "the exec was still running");
    assert_eq!(
        c.idle_connections(),
        0,
        "a cut operation's connection is not kept"
    );
    let pid: i32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(
        eventually(Duration::from_secs(10), || !alive(pid)).await,
        "the exec outlived its cancelled operation"
    );
    assert_eq!(c.exec(["true"]).await.unwrap().exit_code, 0);
}

#[tokio::test]
async fn a_replaced_token_is_refused_on_kept_connections() {
    let l = Lohar::start_with(Opts {
        token: Some("first-token".into()),
        ..Default::default()
    });
    let old = l.client().reusing();
    old.exec(["true"]).await.unwrap();
    assert_eq!(old.idle_connections(), 1);
    let cfg = bhatti_agent_client::ApplyConfig {
        token: "second-token".into(),
        ..Default::default()
    };
    let applied = l.client().apply_config(&cfg).await.unwrap();
    assert!(applied.token);
    // The kept connection is closed by the agent; the new one is refused.
    assert!(matches!(old.exec(["true"]).await, Err(ClientError::Auth)));
    let new = l.client_with_token(Some("second-token".into())).reusing();
    assert_eq!(new.exec(["true"]).await.unwrap().exit_code, 0);
}

#[tokio::test]
async fn programs_run_from_the_requests_path_with_their_own_argv0() {
    use std::collections::BTreeMap;
    use std::os::unix::fs::PermissionsExt;
    let l = Lohar::start();
    let c = l.client();
    let bin = l.path("bin");
    std::fs::create_dir_all(&bin).unwrap();
    for (name, body) in [
        ("shown", "#!/bin/sh\necho \"$0 ran\"\n"),
        // No `#!`: execvp's /bin/sh fallback runs it, as ever.
        ("bare", "echo bare ran\n"),
    ] {
        let p = bin.join(name);
        std::fs::write(&p, body).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let env = BTreeMap::from([("PATH".to_string(), format!("{}:/usr/bin:/bin", s(&bin)))]);
    for (name, want) in [
        ("shown", format!("{}/shown ran\n", s(&bin))),
        ("bare", "bare ran\n".into()),
    ] {
        let r = c
            .exec_request(
                ExecRequest {
                    argv: vec![name.into()],
                    env: env.clone(),
                    ..Default::default()
                },
                None,
            )
            .await
            .unwrap();
        assert_eq!((r.exit_code, r.stdout_str()), (0, want), "{name}");
    }
    // argv[0] stays what the caller wrote.
    let r = c.exec(["sh", "-c", "echo $0"]).await.unwrap();
    assert_eq!(r.stdout_str(), "sh\n");
}
