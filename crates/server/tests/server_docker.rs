//! The server suite on a real daemon with the Docker engine (real dockerd,
//! real sockets, real SQLite). Reported as ignored when dockerd is not
//! available at build time (see build.rs), never as passed.

mod common;

use common::{TestDaemon, SERIAL};

macro_rules! docker_test {
    ($name:ident, $scenario:path) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        #[cfg_attr(
            not(bhatti_docker),
            ignore = "needs dockerd (scripts/start-dockerd.sh) and root"
        )]
        async fn $name() {
            let _serial = SERIAL.lock().await;
            let d = TestDaemon::start("docker", |_| {}).await;
            $scenario(&d).await;
        }
    };
}

docker_test!(crud_lifecycle, common::lifecycle);
docker_test!(exec_buffered_streaming_detached_timeout, common::exec);
docker_test!(files_read_write_ls_stat_and_errors, common::files);
docker_test!(websocket_shell_and_piped_sessions, common::shell_ws);
docker_test!(proxy_routing, common::proxy);
docker_test!(secrets_templates_volumes_crud, common::resources);
docker_test!(tenant_isolation, common::isolation);
docker_test!(quotas_and_bad_input, common::limits_and_bad_input);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(bhatti_docker),
    ignore = "needs dockerd (scripts/start-dockerd.sh) and root"
)]
async fn rate_limits_answer_429() {
    let _serial = SERIAL.lock().await;
    let d = TestDaemon::start("docker", |c| {
        c.rate_limits.enabled = true;
        c.rate_limits.read.burst = 5.0;
        c.rate_limits.read.per_minute = 1.0;
    })
    .await;
    let a = d.user("rl-a", Default::default());
    let b = d.user("rl-b", Default::default());
    let mut codes = Vec::new();
    for _ in 0..8 {
        codes.push(d.code("GET", "/sandboxes", Some(&a), None).await);
    }
    assert_eq!(&codes[..5], &[200; 5], "{codes:?}");
    assert!(codes[5..].iter().all(|c| *c == 429), "{codes:?}");
    let r = d.req("GET", "/sandboxes", Some(&a), None).await;
    assert_eq!(r.json()["error"], "rate limit exceeded");
    // Per user: another key is unaffected; /health is never limited.
    assert_eq!(d.code("GET", "/sandboxes", Some(&b), None).await, 200);
    assert_eq!(d.code("GET", "/health", None, None).await, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(bhatti_docker),
    ignore = "needs dockerd (scripts/start-dockerd.sh) and root"
)]
async fn restart_recovers_containers_and_keeps_the_store() {
    let _serial = SERIAL.lock().await;
    let mut d = TestDaemon::start("docker", |_| {}).await;
    let key = d.user("rec", Default::default());
    let sb = d.create(&key, serde_json::json!({"name": "keep"})).await;
    let id = sb["id"].as_str().unwrap().to_string();
    assert_eq!(d.sh(&key, &id, "echo kept > /workspace/k").await.0, 0);
    d.restart().await;
    let g = d
        .req("GET", &format!("/sandboxes/{id}"), Some(&key), None)
        .await;
    assert_eq!(g.status, 200);
    assert_eq!(d.sh(&key, &id, "cat /workspace/k").await.1, "kept\n");
}
