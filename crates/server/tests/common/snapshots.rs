//! Snapshots and restores. (A scenario shared by the Docker and microVM suites.)

use super::*;

/// Named snapshots and forks (engines with memory snapshots).
pub async fn snapshots(d: &TestDaemon) {
    let key = d.user(
        "snap",
        Quotas {
            max_snapshots: 1,
            ..Quotas::default()
        },
    );
    let sb = d.create(&key, json!({"name": "src"})).await;
    let id = sb["id"].as_str().unwrap();
    assert_eq!(
        d.sh(&key, id, "echo from-src > /workspace/s.txt").await.0,
        0
    );
    let c = d
        .req(
            "POST",
            &format!("/sandboxes/{id}/checkpoint"),
            Some(&key),
            Some(json!({"name": "cp1"})),
        )
        .await;
    assert_eq!(c.status, 201, "{}", c.text());
    assert_eq!(c.json()["source_sandbox"], id);
    assert!(c.json()["size_mb"].as_u64().is_some());
    // A second cp1 and a cp2 are over the user's snapshot limit (403); an
    // empty name is refused first (400).
    let cp = format!("/sandboxes/{id}/checkpoint");
    for (name, want) in [("cp1", 403), ("cp2", 403), ("", 400)] {
        let got = d
            .code("POST", &cp, Some(&key), Some(json!({"name": name})))
            .await;
        assert_eq!(got, want, "checkpoint {name:?}");
    }
    // The source keeps running.
    assert_eq!(
        d.sh(
            &key,
            id,
            "echo after > /workspace/s.txt; cat /workspace/s.txt"
        )
        .await
        .1,
        "after\n"
    );
    assert_eq!(
        d.req("GET", "/snapshots", Some(&key), None).await.json()[0]["name"],
        "cp1"
    );
    assert_eq!(d.code("GET", "/snapshots/cp1", Some(&key), None).await, 200);
    let r = d
        .req(
            "POST",
            "/snapshots/cp1/resume",
            Some(&key),
            Some(json!({"name": "restored"})),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let rid = r.json()["id"].as_str().unwrap().to_string();
    assert_eq!(
        d.sh(&key, &rid, "cat /workspace/s.txt").await.1,
        "from-src\n"
    );
    assert_eq!(
        d.code("DELETE", "/snapshots/cp1", Some(&key), None).await,
        200
    );
    assert_eq!(d.code("GET", "/snapshots/cp1", Some(&key), None).await, 404);
    // Fork while the source runs.
    let f = d
        .req(
            "POST",
            "/sandboxes",
            Some(&key),
            Some(json!({"name": "forked", "from": "src"})),
        )
        .await;
    assert_eq!(f.status, 201, "{}", f.text());
    let fid = f.json()["id"].as_str().unwrap().to_string();
    assert_eq!(d.sh(&key, &fid, "cat /workspace/s.txt").await.1, "after\n");
    assert_eq!(
        d.sh(&key, &fid, "echo fork-only > /workspace/s.txt")
            .await
            .0,
        0
    );
    assert_eq!(d.sh(&key, id, "cat /workspace/s.txt").await.1, "after\n");
    for x in [id, rid.as_str(), fid.as_str()] {
        assert_eq!(
            d.code("DELETE", &format!("/sandboxes/{x}"), Some(&key), None)
                .await,
            200
        );
    }
}
