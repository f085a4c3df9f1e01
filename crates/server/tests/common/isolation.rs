//! Users never see or touch each other's objects. (A scenario shared by the Docker and microVM suites.)

use super::*;

/// Two users: neither sees the other's sandboxes, secrets, volumes,
/// templates or snapshots on any route family (404, never 403).
pub async fn isolation(d: &TestDaemon) {
    let a = d.user("ua", Quotas::default());
    let b = d.user("ub", Quotas::default());
    let sb = d.create(&a, json!({"name": "mine"})).await;
    let id = sb["id"].as_str().unwrap().to_string();
    d.req(
        "POST",
        "/secrets",
        Some(&a),
        Some(json!({"name": "S", "value": "v"})),
    )
    .await;
    d.req(
        "POST",
        "/volumes",
        Some(&a),
        Some(json!({"name": "va", "size_mb": 16})),
    )
    .await;
    let t = d
        .req("POST", "/templates", Some(&a), Some(json!({"name": "ta"})))
        .await
        .json();
    for target in [id.as_str(), "mine"] {
        for (m, p, body) in [
            ("GET", format!("/sandboxes/{target}"), None),
            (
                "PATCH",
                format!("/sandboxes/{target}"),
                Some(json!({"keep_hot": false})),
            ),
            (
                "POST",
                format!("/sandboxes/{target}/exec"),
                Some(json!({"cmd": ["true"]})),
            ),
            ("POST", format!("/sandboxes/{target}/stop"), None),
            ("POST", format!("/sandboxes/{target}/start"), None),
            ("GET", format!("/sandboxes/{target}/sessions"), None),
            (
                "GET",
                format!("/sandboxes/{target}/files?path=/workspace"),
                None,
            ),
            ("GET", format!("/sandboxes/{target}/ports"), None),
            ("GET", format!("/sandboxes/{target}/proxy/80/"), None),
            (
                "POST",
                format!("/sandboxes/{target}/checkpoint"),
                Some(json!({"name": "c"})),
            ),
            ("DELETE", format!("/sandboxes/{target}"), None),
        ] {
            let r = d.req(m, &p, Some(&b), body).await;
            assert_eq!(r.status, 404, "{m} {p} as another user: {}", r.text());
        }
        match d.ws(&format!("/sandboxes/{target}/ws"), Some(&b)).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status(), 404),
            other => panic!(
                "another user's shell must be 404, got {:?}",
                other.map(|_| ())
            ),
        }
    }
    for p in [
        "/sandboxes",
        "/secrets",
        "/volumes",
        "/templates",
        "/snapshots",
        "/ports",
    ] {
        let r = d.req("GET", p, Some(&b), None).await;
        assert_eq!(r.status, 200);
        assert!(
            r.json().as_array().unwrap().is_empty(),
            "{p} leaks: {}",
            r.text()
        );
    }
    assert_eq!(d.code("GET", "/volumes/va", Some(&b), None).await, 404);
    assert_eq!(d.code("DELETE", "/volumes/va", Some(&b), None).await, 404);
    assert_eq!(d.code("DELETE", "/secrets/S", Some(&b), None).await, 404);
    let tid = t["id"].as_str().unwrap();
    assert_eq!(
        d.code("GET", &format!("/templates/{tid}"), Some(&b), None)
            .await,
        404
    );
    let r = d
        .req(
            "POST",
            "/sandboxes",
            Some(&b),
            Some(json!({"name": "x", "template_id": tid})),
        )
        .await;
    assert_eq!(r.status, 404);
    let r = d
        .req(
            "POST",
            "/sandboxes",
            Some(&b),
            Some(json!({"name": "x", "secrets": ["S"]})),
        )
        .await;
    assert_eq!(r.status, 404);
    let r = d
        .req(
            "POST",
            "/sandboxes",
            Some(&b),
            Some(json!({"name": "x", "persistent_volumes": [{"name": "va", "mount": "/d"}]})),
        )
        .await;
    assert_eq!(r.status, 404);
    // Same name is fine for another user: names are per user.
    let mine_b = d.create(&b, json!({"name": "mine"})).await;
    assert_ne!(mine_b["id"], sb["id"]);
    // A's sandbox is untouched by all of this.
    assert_eq!(d.sh(&a, &id, "echo alive").await.1, "alive\n");
}
