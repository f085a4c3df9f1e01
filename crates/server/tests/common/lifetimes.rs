//! Labels, lifetimes and expiry. (A scenario shared by the Docker and microVM suites.)

use super::*;

pub fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Sandbox lifetimes through the native API: `timeout_secs` on create,
/// `POST /sandboxes/{id}/timeout` to move or remove the end, `on_expiry`
/// kill (the sandbox is gone) or pause (stopped, its end cleared), and bad
/// values refused.
pub async fn lifetimes(d: &TestDaemon) {
    let t = d.user("ttl", Quotas::default());
    let sb = d
        .create(
            &t,
            json!({"name": "short", "timeout_secs": 2, "metadata": {"any key": "any value"}}),
        )
        .await;
    let id = sb["id"].as_str().expect("id").to_string();
    assert!(sb["expires_at"].is_string(), "{sb}");
    assert_eq!(sb["on_expiry"], "kill");
    assert_eq!(sb["metadata"]["any key"], "any value");
    let gone = async {
        for _ in 0..60 {
            if d.code("GET", &format!("/sandboxes/{id}"), Some(&t), None)
                .await
                == 404
            {
                return true;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        false
    };
    assert!(gone.await, "a 2 s sandbox outlived 60 s");

    let sb = d.create(&t, json!({"name": "kept"})).await;
    let id = sb["id"].as_str().expect("id").to_string();
    assert!(sb.get("expires_at").is_none(), "no timeout, no end: {sb}");
    let r = d
        .req(
            "POST",
            &format!("/sandboxes/{id}/timeout"),
            Some(&t),
            Some(json!({"timeout_secs": 600})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.json()["expires_at"].is_string());
    let r = d
        .req(
            "POST",
            &format!("/sandboxes/{id}/timeout"),
            Some(&t),
            Some(json!({"timeout_secs": 0})),
        )
        .await;
    assert!(
        r.json().get("expires_at").is_none(),
        "0 removes the end: {}",
        r.text()
    );
    for bad in [
        json!({"timeout_secs": 99_999_999_999u64}),
        json!({"on_expiry": "explode"}),
        json!({"timeout_secs": -1}),
    ] {
        let c = d
            .code(
                "POST",
                &format!("/sandboxes/{id}/timeout"),
                Some(&t),
                Some(bad.clone()),
            )
            .await;
        assert_eq!(c, 400, "{bad}");
    }
    // pause on expiry: stopped, not destroyed, and no end left.
    let r = d
        .req(
            "POST",
            &format!("/sandboxes/{id}/timeout"),
            Some(&t),
            Some(json!({"timeout_secs": 1, "on_expiry": "pause"})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let mut last = Value::Null;
    for _ in 0..60 {
        last = d
            .req("GET", &format!("/sandboxes/{id}"), Some(&t), None)
            .await
            .json();
        if last["status"] == "stopped" && last.get("expires_at").is_none() {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert_eq!(last["status"], "stopped", "{last}");
    assert!(last.get("expires_at").is_none(), "{last}");
    assert_eq!(
        d.code("DELETE", &format!("/sandboxes/{id}"), Some(&t), None)
            .await,
        200
    );
}
