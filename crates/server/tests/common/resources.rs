//! Volumes, secrets and templates. (A scenario shared by the Docker and microVM suites.)

use super::*;

/// Secrets, templates and volumes CRUD, with secrets injected at create and
/// encrypted at rest.
pub async fn resources(d: &TestDaemon) {
    let key = d.user("res", Quotas::default());
    // Secrets.
    let s = d
        .req(
            "POST",
            "/secrets",
            Some(&key),
            Some(json!({"name": "API_TOKEN", "value": "s3cr3t-value"})),
        )
        .await;
    assert_eq!(s.status, 201, "{}", s.text());
    let list = d.req("GET", "/secrets", Some(&key), None).await;
    assert_eq!(list.json()[0]["name"], "API_TOKEN");
    assert!(!list.text().contains("s3cr3t"));
    assert_eq!(
        d.code("POST", "/secrets", Some(&key), Some(json!({"name": "X"})))
            .await,
        400
    );
    assert_eq!(
        d.code(
            "POST",
            "/secrets",
            Some(&key),
            Some(json!({"name": "bad name", "value": "v"}))
        )
        .await,
        400
    );
    let db = std::fs::read(d.data().join("state.db")).unwrap();
    let wal = std::fs::read(d.data().join("state.db-wal")).unwrap_or_default();
    for bytes in [db, wal] {
        assert!(
            !bytes.windows(12).any(|w| w == b"s3cr3t-value"),
            "plaintext secret on disk"
        );
    }
    // Templates, with the secret.
    let t = d
        .req(
            "POST",
            "/templates",
            Some(&key),
            Some(json!({"name": "tpl", "cpus": 1, "memory_mb": 256, "env": {"FROM_TPL": "yes"}, "secrets": ["API_TOKEN"]})),
        )
        .await;
    assert_eq!(t.status, 201, "{}", t.text());
    let tid = t.json()["id"].as_str().unwrap().to_string();
    assert_eq!(
        d.req("GET", &format!("/templates/{tid}"), Some(&key), None)
            .await
            .json()["name"],
        "tpl"
    );
    assert_eq!(
        d.req("GET", "/templates", Some(&key), None)
            .await
            .json()
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        d.code(
            "POST",
            "/templates",
            Some(&key),
            Some(json!({"name": "t2", "cpus": 0.5}))
        )
        .await,
        400
    );

    // Volumes.
    let v = d
        .req(
            "POST",
            "/volumes",
            Some(&key),
            Some(json!({"name": "data", "size_mb": 64})),
        )
        .await;
    assert_eq!(v.status, 201, "{}", v.text());
    assert_eq!(v.json()["status"], "ready");
    assert_eq!(
        d.code(
            "POST",
            "/volumes",
            Some(&key),
            Some(json!({"name": "data", "size_mb": 64}))
        )
        .await,
        409
    );
    assert_eq!(
        d.code(
            "POST",
            "/volumes",
            Some(&key),
            Some(json!({"name": "z", "size_mb": 0}))
        )
        .await,
        400
    );
    assert_eq!(
        d.code(
            "POST",
            "/volumes",
            Some(&key),
            Some(json!({"name": "../x", "size_mb": 8}))
        )
        .await,
        400
    );

    let sb = d
        .create(
            &key,
            json!({"name": "with-all", "template_id": tid,
                   "persistent_volumes": [{"name": "data", "mount": "/data"}]}),
        )
        .await;
    let id = sb["id"].as_str().unwrap();
    assert_eq!(sb["template_id"], tid.as_str());
    let (_, env, _) = d.sh(&key, id, "echo $API_TOKEN $FROM_TPL").await;
    assert_eq!(env, "s3cr3t-value yes\n");
    assert_eq!(
        d.sh(&key, id, "echo vol-data > /data/f && sync && cat /data/f")
            .await
            .1,
        "vol-data\n"
    );
    let g = d.req("GET", "/volumes/data", Some(&key), None).await.json();
    assert_eq!(g["attachments"][0]["sandbox_id"], id);
    assert_eq!(g["attachments"][0]["mount"], "/data");
    // RW-exclusive: a second RW attach is refused, and nothing is left behind.
    let before = d
        .req("GET", "/sandboxes", Some(&key), None)
        .await
        .json()
        .as_array()
        .unwrap()
        .len();
    let r = d
        .req("POST", "/sandboxes", Some(&key), Some(json!({"name": "second", "persistent_volumes": [{"name": "data", "mount": "/data"}]})))
        .await;
    assert_eq!(r.status, 409, "{}", r.text());
    assert_eq!(
        d.req("GET", "/sandboxes", Some(&key), None)
            .await
            .json()
            .as_array()
            .unwrap()
            .len(),
        before
    );
    let r = d.req("DELETE", "/volumes/data", Some(&key), None).await;
    assert_eq!(r.status, 409, "{}", r.text());
    assert_eq!(r.json()["reason"], "in_use", "{}", r.text());
    assert_eq!(
        d.code(
            "POST",
            "/volumes/data/resize",
            Some(&key),
            Some(json!({"size_mb": 128}))
        )
        .await,
        409
    );
    let r = d
        .req("POST", "/sandboxes", Some(&key), Some(json!({"name": "bad-mount", "persistent_volumes": [{"name": "data", "mount": "/etc"}]})))
        .await;
    assert_eq!(r.status, 400);
    let r = d
        .req(
            "POST",
            "/sandboxes",
            Some(&key),
            Some(json!({"name": "nov", "persistent_volumes": [{"name": "nope", "mount": "/d"}]})),
        )
        .await;
    assert_eq!(r.status, 404, "{}", r.text());
    let r = d
        .req(
            "POST",
            "/sandboxes",
            Some(&key),
            Some(json!({"name": "nosec", "secrets": ["MISSING"]})),
        )
        .await;
    assert_eq!(r.status, 404, "{}", r.text());

    // Data outlives the sandbox; grow and clone once detached.
    assert_eq!(
        d.code("DELETE", &format!("/sandboxes/{id}"), Some(&key), None)
            .await,
        200
    );
    let r = d
        .req(
            "POST",
            "/volumes/data/resize",
            Some(&key),
            Some(json!({"size_mb": 128})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["size_mb"], 128);
    assert_eq!(
        d.code(
            "POST",
            "/volumes/data/resize",
            Some(&key),
            Some(json!({"size_mb": 100}))
        )
        .await,
        409
    );
    let c = d
        .req(
            "POST",
            "/volumes/data/snapshot",
            Some(&key),
            Some(json!({"name": "data-copy"})),
        )
        .await;
    assert_eq!(c.status, 201, "{}", c.text());
    let sb2 = d
        .create(&key, json!({"name": "reader", "persistent_volumes": [{"name": "data-copy", "mount": "/data", "read_only": true}]}))
        .await;
    let id2 = sb2["id"].as_str().unwrap();
    assert_eq!(d.sh(&key, id2, "cat /data/f").await.1, "vol-data\n");
    let (code, _, _) = d.sh(&key, id2, "echo x > /data/g").await;
    assert_ne!(code, 0, "read-only volume was writable");
    assert_eq!(
        d.code("DELETE", &format!("/sandboxes/{id2}"), Some(&key), None)
            .await,
        200
    );
    assert_eq!(
        d.req("GET", "/volumes", Some(&key), None)
            .await
            .json()
            .as_array()
            .unwrap()
            .len(),
        2
    );
    for v in ["data", "data-copy"] {
        assert_eq!(
            d.code("DELETE", &format!("/volumes/{v}"), Some(&key), None)
                .await,
            200
        );
    }
    assert_eq!(
        d.code("DELETE", "/secrets/API_TOKEN", Some(&key), None)
            .await,
        200
    );
    assert_eq!(
        d.code("DELETE", "/secrets/API_TOKEN", Some(&key), None)
            .await,
        404
    );
    assert_eq!(
        d.code("DELETE", &format!("/templates/{tid}"), Some(&key), None)
            .await,
        200
    );
    assert!(d
        .req("GET", "/secrets", Some(&key), None)
        .await
        .json()
        .as_array()
        .unwrap()
        .is_empty());
}
