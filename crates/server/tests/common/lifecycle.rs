//! The CRUD lifecycle scenario. (A scenario shared by the Docker and microVM suites.)

use super::*;

/// CRUD lifecycle: auth, create (defaults, idempotency), list (labels),
/// get by name, patch, stop/start, destroy.
pub async fn lifecycle(d: &TestDaemon) {
    let h = d.req("GET", "/health", None, None).await;
    assert_eq!(h.status, 200);
    assert_eq!(h.json()["status"], "ok");
    assert!(h.header("x-bhatti-version").is_some());
    let r = d.req("GET", "/sandboxes", None, None).await;
    assert_eq!(
        (r.status, r.json()["error"].clone()),
        (401, json!("authorization required"))
    );
    let r = d.req("GET", "/sandboxes", Some("bht_nope"), None).await;
    assert_eq!(
        (r.status, r.json()["error"].clone()),
        (401, json!("invalid api key"))
    );
    // `..` cannot reach an authenticated route without a key.
    let r = d.req("GET", "/health/../sandboxes", None, None).await;
    assert_ne!(r.status, 200);

    let key = d.user("alice", Quotas::default());
    let sb = d
        .create(
            &key,
            json!({"name": "web", "labels": {"app": "web", "tier": "a"}, "memory_mb": 256}),
        )
        .await;
    let id = sb["id"].as_str().unwrap().to_string();
    assert_eq!(sb["status"], "running");
    assert_eq!(sb["cpus"], 1);
    assert_eq!(sb["memory_mb"], 256);
    assert!(!sb["ip"].as_str().unwrap().is_empty());

    // Idempotent by name: 200 + header + the same record, nothing new booted.
    let again = d
        .req(
            "POST",
            "/sandboxes",
            Some(&key),
            Some(json!({"name": "web"})),
        )
        .await;
    assert_eq!(again.status, 200, "{}", again.text());
    assert_eq!(again.header("x-bhatti-existing").as_deref(), Some("true"));
    assert_eq!(again.json()["id"], sb["id"]);

    let list = d.req("GET", "/sandboxes", Some(&key), None).await.json();
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["thermal"], "hot");
    let f = d
        .req(
            "GET",
            "/sandboxes?label=app=web&label=tier=a",
            Some(&key),
            None,
        )
        .await
        .json();
    assert_eq!(f.as_array().unwrap().len(), 1);
    let f = d
        .req("GET", "/sandboxes?label=app=db", Some(&key), None)
        .await
        .json();
    assert!(f.as_array().unwrap().is_empty());
    assert_eq!(
        d.code("GET", "/sandboxes?label=bhatti.sh/x=1", Some(&key), None)
            .await,
        400
    );

    let by_name = d.req("GET", "/sandboxes/web", Some(&key), None).await;
    assert_eq!(by_name.json()["id"], sb["id"]);

    let p = d
        .req(
            "PATCH",
            "/sandboxes/web",
            Some(&key),
            Some(json!({"name": "web2", "labels_add": {"x": "1"}, "labels_remove": ["tier"]})),
        )
        .await;
    assert_eq!(p.status, 200, "{}", p.text());
    assert_eq!(p.json()["name"], "web2");
    assert_eq!(p.json()["labels"], json!({"app": "web", "x": "1"}));
    let other = d.create(&key, json!({"name": "other"})).await;
    let dup = d
        .req(
            "PATCH",
            "/sandboxes/other",
            Some(&key),
            Some(json!({"name": "web2"})),
        )
        .await;
    assert_eq!(dup.status, 409, "{}", dup.text());
    // Clients act on the reason, never on the words.
    assert_eq!(dup.json()["reason"], "already_exists", "{}", dup.text());

    // Files survive stop/start.
    assert_eq!(
        d.sh(&key, &id, "echo persisted > /workspace/p.txt").await.0,
        0
    );
    let s = d
        .req("POST", &format!("/sandboxes/{id}/stop"), Some(&key), None)
        .await;
    assert_eq!(s.status, 200, "{}", s.text());
    assert_eq!(s.json()["status"], "stopped");
    assert!(s.json()["stopped_at"].is_string());
    let g = d
        .req("GET", &format!("/sandboxes/{id}"), Some(&key), None)
        .await
        .json();
    assert_eq!(g["status"], "stopped");
    let s = d
        .req("POST", &format!("/sandboxes/{id}/start"), Some(&key), None)
        .await;
    assert_eq!(s.status, 200, "{}", s.text());
    assert_eq!(s.json()["status"], "running");
    assert_eq!(
        d.sh(&key, &id, "cat /workspace/p.txt").await.1,
        "persisted\n"
    );
    // An exec on a stopped sandbox wakes it transparently.
    d.req("POST", &format!("/sandboxes/{id}/stop"), Some(&key), None)
        .await;
    assert_eq!(d.sh(&key, &id, "echo woke").await.1, "woke\n");
    assert_eq!(
        d.req("GET", &format!("/sandboxes/{id}"), Some(&key), None)
            .await
            .json()["status"],
        "running"
    );

    let del = d
        .req("DELETE", &format!("/sandboxes/{id}"), Some(&key), None)
        .await;
    assert_eq!(
        (del.status, del.json()["status"].clone()),
        (200, json!("destroyed"))
    );
    assert_eq!(
        d.code("GET", &format!("/sandboxes/{id}"), Some(&key), None)
            .await,
        404
    );
    let o = other["id"].as_str().unwrap();
    assert_eq!(
        d.code("DELETE", &format!("/sandboxes/{o}"), Some(&key), None)
            .await,
        200
    );
    assert!(d
        .req("GET", "/sandboxes", Some(&key), None)
        .await
        .json()
        .as_array()
        .unwrap()
        .is_empty());
    // Metrics and the OpenAPI document need a key too.
    assert_eq!(d.code("GET", "/metrics", None, None).await, 401);
    // A tenant sees their own sandboxes, not the daemon's traffic; an
    // operator (a user named in `admin_users`) sees everything.
    let m = d.req("GET", "/metrics", Some(&key), None).await.text();
    assert!(m.contains("bhatti_sandboxes{thermal=\"hot\"}"), "{m}");
    assert!(!m.contains("bhatti_api_requests_total"), "{m}");
    let admin = d.user("admin", Quotas::default());
    let m = d.req("GET", "/metrics", Some(&admin), None).await.text();
    assert!(m.contains("bhatti_api_requests_total"), "{m}");
    let o = d.req("GET", "/openapi.json", Some(&key), None).await.json();
    assert!(o["paths"]["/sandboxes"]["post"].is_object());
}
