//! The WebSocket shell scenario. (A scenario shared by the Docker and microVM suites.)

use super::*;

/// WebSocket shell: rejected without a key, session message, I/O, resize,
/// detach and reattach with scrollback; piped sessions.
pub async fn shell_ws(d: &TestDaemon) {
    let key = d.user("shell", Quotas::default());
    let sb = d.create(&key, json!({"name": "sh"})).await;
    let id = sb["id"].as_str().unwrap();
    let path = format!("/sandboxes/{id}/ws");
    match d.ws(&path, None).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status(), 401),
        other => panic!(
            "unauthenticated upgrade must fail with 401, got {:?}",
            other.map(|_| ())
        ),
    }
    match d.ws(&path, Some("bht_wrong")).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status(), 401),
        other => panic!("wrong key must fail with 401, got {:?}", other.map(|_| ())),
    }
    let mut ws = d
        .ws(&format!("{path}?new=true"), Some(&key))
        .await
        .expect("ws");
    let sid = ws_session(&mut ws).await;
    ws.send(Message::Text(
        r#"{"type":"resize","rows":40,"cols":123}"#.into(),
    ))
    .await
    .unwrap();
    ws.send(Message::Binary(
        b"stty size; echo mark-$((6*7))\n".to_vec().into(),
    ))
    .await
    .unwrap();
    let seen = ws_until(&mut ws, "mark-42").await;
    assert!(seen.contains("40 123"), "resize not applied: {seen:?}");
    ws.send(Message::Binary(
        b"echo before-detach-$((1+1))\n".to_vec().into(),
    ))
    .await
    .unwrap();
    ws_until(&mut ws, "before-detach-2").await;
    drop(ws);
    // Listed as detached.
    let mut detached = false;
    for _ in 0..40 {
        let s = d
            .req(
                "GET",
                &format!("/sandboxes/{id}/sessions"),
                Some(&key),
                None,
            )
            .await
            .json();
        if s.as_array()
            .unwrap()
            .iter()
            .any(|x| x["session_id"] == sid.as_str() && x["attached"] == false)
        {
            detached = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(detached, "session {sid} did not detach");
    // Auto-reattach to the newest detached session, with its scrollback.
    let mut ws = d.ws(&path, Some(&key)).await.expect("ws");
    assert_eq!(ws_session(&mut ws).await, sid);
    ws_until(&mut ws, "before-detach-2").await;
    ws.send(Message::Binary(b"exit\n".to_vec().into()))
        .await
        .unwrap();
    // The shell ends: a normal close.
    loop {
        match tokio::time::timeout(Duration::from_secs(30), ws.next())
            .await
            .expect("close in time")
        {
            Some(Ok(Message::Close(Some(f)))) => {
                assert_eq!(u16::from(f.code), 1000);
                break;
            }
            Some(Ok(_)) => {}
            other => panic!("expected a close frame, got {other:?}"),
        }
    }

    // Piped session over /exec/ws.
    let mut ws = d
        .ws(&format!("/sandboxes/{id}/exec/ws"), Some(&key))
        .await
        .expect("ws");
    ws.send(Message::Text(
        json!({"cmd": ["sh", "-c", "read x; echo got-$x; exit 5"]})
            .to_string()
            .into(),
    ))
    .await
    .unwrap();
    ws_session(&mut ws).await;
    ws.send(Message::Text("hello\n".into())).await.unwrap();
    let seen = ws_until(&mut ws, "\"exit\"").await;
    assert!(seen.contains("got-hello"), "{seen}");
    assert!(seen.contains(r#"{"type":"exit","exit_code":5}"#), "{seen}");
}
