//! The exec scenario: one-shot, streaming, env, cwd, errors. (A scenario shared by the Docker and microVM suites.)

use super::*;

/// Exec: buffered, exit codes, stderr, NDJSON streaming, detached, timeout
/// that kills the guest process, errors.
pub async fn exec(d: &TestDaemon) {
    let key = d.user("exec", Quotas::default());
    let sb = d.create(&key, json!({"name": "x"})).await;
    let id = sb["id"].as_str().unwrap();
    let (code, out, err) = d.sh(&key, id, "echo out; echo err >&2; exit 3").await;
    assert_eq!((code, out.as_str(), err.as_str()), (3, "out\n", "err\n"));
    assert_eq!(d.sh(&key, id, "id -u").await.1, "1000\n");

    let r = d
        .raw(
            "POST",
            &format!("/sandboxes/{id}/exec"),
            Some(&key),
            &[("accept", "application/x-ndjson"), ("content-type", "application/json")],
            json!({"cmd": ["sh", "-c", "for i in 1 2 3; do echo line$i; done; echo e >&2; exit 7"]})
                .to_string()
                .into_bytes(),
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("content-type").as_deref(),
        Some("application/x-ndjson")
    );
    let events: Vec<Value> = r
        .text()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|_| panic!("bad line {l:?}")))
        .collect();
    let stdout: String = events
        .iter()
        .filter(|e| e["type"] == "stdout")
        .map(|e| e["data"].as_str().unwrap())
        .collect();
    assert_eq!(stdout, "line1\nline2\nline3\n");
    assert!(events
        .iter()
        .any(|e| e["type"] == "stderr" && e["data"] == "e\n"));
    assert_eq!(
        events.last().unwrap(),
        &json!({"type": "exit", "exit_code": 7})
    );

    let det = d
        .req(
            "POST",
            &format!("/sandboxes/{id}/exec"),
            Some(&key),
            Some(json!({"cmd": ["sh", "-c", "sleep 1; echo later > /workspace/det.txt"], "detach": true})),
        )
        .await;
    assert_eq!(det.status, 200, "{}", det.text());
    assert_eq!(det.json()["detached"], true);
    assert!(det.json()["pid"].as_i64().unwrap() > 0);
    let mut ok = false;
    for _ in 0..60 {
        if d.sh(&key, id, "cat /workspace/det.txt 2>/dev/null || true")
            .await
            .1
            == "later\n"
        {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(ok, "detached command never wrote its file");

    // Timeout: the request ends and the guest process group is killed.
    let t = d
        .req(
            "POST",
            &format!("/sandboxes/{id}/exec"),
            Some(&key),
            Some(json!({"cmd": ["sh", "-c", "sleep 300 & sleep 301; wait"], "timeout_sec": 2})),
        )
        .await;
    assert_eq!(t.status, 504, "{}", t.text());
    let mut gone = false;
    for _ in 0..40 {
        let ps = d.sh(&key, id, "ps -o args 2>/dev/null || ps").await.1;
        if !ps.contains("sleep 30") {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(gone, "timed-out command still running");

    for (body, want) in [
        (json!({}), 400),
        (json!({"cmd": []}), 400),
        (json!({"cmd": "ls"}), 400),
        (json!({"cmd": [""]}), 400),
        (json!({"cmd": ["ls"], "tiemout_sec": 5}), 400),
        (json!(["ls"]), 400),
        // Well-formed, refused by the guest: the reason's status.
        (json!({"cmd": ["/no/such/binary"]}), 404),
        (json!({"cmd": ["/etc"]}), 403),
    ] {
        let r = d
            .req(
                "POST",
                &format!("/sandboxes/{id}/exec"),
                Some(&key),
                Some(body.clone()),
            )
            .await;
        assert_eq!(r.status, want, "{body}: {}", r.text());
        assert!(r.json()["error"].is_string());
    }
    let r = d
        .raw(
            "POST",
            &format!("/sandboxes/{id}/exec"),
            Some(&key),
            &[("content-type", "application/json")],
            b"{nope".to_vec(),
        )
        .await;
    assert_eq!(r.status, 400);

    let s = d
        .req(
            "GET",
            &format!("/sandboxes/{id}/sessions"),
            Some(&key),
            None,
        )
        .await;
    assert_eq!(s.status, 200);
    assert!(s.json().is_array());
}
