//! Quotas, rate limits and bad input. (A scenario shared by the Docker and microVM suites.)

use super::*;

/// Quotas, caps and malformed requests: clear 4xx and nothing changes.
pub async fn limits_and_bad_input(d: &TestDaemon) {
    let q = Quotas {
        max_sandboxes: 1,
        max_cpus_per_sandbox: 2,
        max_memory_mb_per_sandbox: 512,
        ..Quotas::default()
    };
    let key = d.user("limited", q);
    for (body, want) in [
        (json!({"cpus": 4}), 403),
        (json!({"memory_mb": 1024}), 403),
        (json!({"cpus": 1.5}), 400),
        (json!({"memory_mb": 64}), 400),
        (json!({"name": "bad name"}), 400),
        (json!({"labels": {"bhatti.sh/x": "y"}}), 400),
        (
            json!({"files": [{"guest_path": "/a", "content": "!!notbase64"}]}),
            400,
        ),
        (json!({"files": [{"content": "aGk="}]}), 400),
        (json!({"image": "nope"}), 404),
        (json!({"egress": "sometimes"}), 400),
        (json!({"cpus": "two"}), 400),
        // A JSON array is not an object with fields in order.
        (json!([null, null]), 400),
        (json!({"memroy_mb": 512}), 400),
        (
            json!({"persistent_volumes": [{"name": "v", "mount": "//etc"}]}),
            400,
        ),
        (json!({"secrets": ["not-an-env-name"]}), 400),
        (json!({"cpus": 1e30}), 400),
        // Out-of-range root disks are refused before anything is built
        // (they were a 16 EiB sparse file, or a 500).
        (json!({"disk_size_mb": 17_592_186_044_416_u64}), 400),
        (json!({"disk_size_mb": 99_999_999_999_u64}), 400),
        // Within range but past the storage quota (volumes + root disks).
        (json!({"disk_size_mb": 30_000}), 429),
        // Environment bounds: one value, names, and the whole.
        (json!({"env": {"BIG": "v".repeat(65 << 10)}}), 400),
        (json!({"env": {"A=B": "x"}}), 400),
        (json!({"secrets": ["NOPE"]}), 404),
    ] {
        let r = d
            .req("POST", "/sandboxes", Some(&key), Some(body.clone()))
            .await;
        assert_eq!(r.status, want, "{body}: {}", r.text());
        assert!(r.json()["error"].as_str().is_some_and(|e| !e.is_empty()));
    }
    let r = d
        .raw(
            "POST",
            "/sandboxes",
            Some(&key),
            &[("content-type", "application/json")],
            b"{not json".to_vec(),
        )
        .await;
    assert_eq!(r.status, 400);
    let huge = format!(
        "{{\"name\":\"x\",\"env\":{{\"A\":\"{}\"}}}}",
        "a".repeat(2 << 20)
    );
    let r = d
        .raw(
            "POST",
            "/sandboxes",
            Some(&key),
            &[("content-type", "application/json")],
            huge.into_bytes(),
        )
        .await;
    assert_eq!(r.status, 413, "{}", r.text());
    assert!(d
        .req("GET", "/sandboxes", Some(&key), None)
        .await
        .json()
        .as_array()
        .unwrap()
        .is_empty());
    assert!(d
        .store()
        .list_all_sandboxes()
        .unwrap()
        .iter()
        .all(|s| s.name != "x"));

    let files =
        json!([{"guest_path": "/workspace/hello.txt", "content": "aGVsbG8=", "mode": "0640"}]);
    let one = d.create(&key, json!({"name": "one", "env": {"GREETING": "hi there"}, "init": "echo init-ran > /tmp/init.txt", "files": files})).await;
    let id = one["id"].as_str().unwrap();
    assert_eq!(
        d.sh(&key, id, "cat /workspace/hello.txt; echo; echo $GREETING")
            .await
            .1,
        "hello\nhi there\n"
    );
    let r = d
        .req(
            "POST",
            "/sandboxes",
            Some(&key),
            Some(json!({"name": "two"})),
        )
        .await;
    assert_eq!(r.status, 429, "{}", r.text());
    assert_eq!(r.json()["reason"], "quota_exceeded", "{}", r.text());
    assert!(r.json()["error"]
        .as_str()
        .unwrap()
        .contains("sandbox limit reached (1/1)"));
    assert_eq!(d.code("GET", "/no/such/route", Some(&key), None).await, 404);
    // Secrets are capped at one environment value (64 KiB): a 900 KB one
    // was accepted and then failed every create after a minute.
    let r = d
        .req(
            "POST",
            "/secrets",
            Some(&key),
            Some(json!({"name": "HUGE", "value": "s".repeat(900_000)})),
        )
        .await;
    // A field over its limit is a 400 like any input rule (413 is for a
    // body over the cap).
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(
        d.code(
            "POST",
            "/secrets",
            Some(&key),
            Some(json!({"name": "OK", "value": "s".repeat(64 << 10)})),
        )
        .await,
        201
    );
    // A detached exec's output_file must be a plain absolute path.
    let r = d
        .req(
            "POST",
            &format!("/sandboxes/{id}/exec"),
            Some(&key),
            Some(json!({"cmd": ["true"], "detach": true, "output_file": "../../etc/x"})),
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.text());
    let p = d
        .req(
            "PATCH",
            &format!("/sandboxes/{id}"),
            Some(&key),
            Some(json!({"name": "-bad"})),
        )
        .await;
    assert_eq!(p.status, 400);
}
