//! The API contract: schemathesis (`st run --checks all`) against a real
//! daemon on the Docker engine, driven by the document that daemon serves at
//! `/openapi.json`. Every finding fails the test: a 5xx, a status code,
//! content type, header or body the document does not describe, valid data
//! refused, invalid data accepted, a route that ignores its auth, an object
//! one tenant can read of another's …
//!
//! schemathesis comes from PyPI, pinned, in a venv that scripts/test.sh makes
//! (`BHATTI_SCHEMATHESIS` = its `st`); without it, or without dockerd, the
//! test is reported as ignored, never as passed. Traffic goes to the daemon
//! on loopback only (proxy variables are cleared for the child), and the
//! daemon pulls images only from a closed loopback port.
//!
//! Bounded: 25 examples per operation (`BHATTI_CONTRACT_EXAMPLES`) and a
//! fixed seed (`BHATTI_CONTRACT_SEED`, default 1), so a run takes about a
//! minute on two cores even though sandbox creates start containers; raise
//! both locally to look further.
#![allow(clippy::unwrap_used, clippy::arithmetic_side_effects)] // a test panics to report its failure; its sums are on test data

mod common;

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use bhatti_store::Quotas;
use common::{TestDaemon, SERIAL};

/// 5xx answers that are documented refusals rather than failures: 501, the
/// engine lacks the feature (the Docker engine has no checkpoints, forks or
/// egress allow-lists), and 502, the proxy found nothing listening on the
/// guest port or the image registry did not answer. Every other 5xx (500 above all) stays a finding.
const NOT_A_SERVER_ERROR: &str = "[checks.not_a_server_error]\nexpected-statuses = [\"2xx\", \"3xx\", \"4xx\", \"501\", \"502\"]\n";

/// A hung run is a failure, not a stuck CI job.
const RUN_TIMEOUT: Duration = Duration::from_secs(30 * 60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(all(bhatti_docker, bhatti_schemathesis)),
    ignore = "needs dockerd (scripts/start-dockerd.sh), root, and BHATTI_SCHEMATHESIS=<venv>/bin/st (scripts/test.sh makes it)"
)]
async fn schemathesis_finds_nothing() {
    let st_bin = option_env!("BHATTI_SCHEMATHESIS").unwrap_or("st");
    assert!(
        Path::new(st_bin).is_file(),
        "schemathesis {st_bin} was there at build time and is gone"
    );
    // The daemon's warnings and errors (a 500's cause under its request ID)
    // go into the test's output, shown when it fails.
    // RUST_LOG=info adds the request log.
    common::daemon_logs_in_test_output();
    let _serial = SERIAL.lock().await;
    // Pulls only from a closed loopback port: whatever reference
    // schemathesis makes up is refused (403) or fails to connect (502),
    // never sent to a registry on the internet.
    let d = TestDaemon::start("docker", |c| {
        c.allowed_registries = vec!["127.0.0.1:1".into()];
        c.registry_timeout_secs = 5;
    })
    .await;
    // Two tenants: schemathesis works as `alice` and replays her reads as
    // `bob` (object_level_authorization). The default quotas (per-sandbox
    // limits above what a small CI host has), but few sandboxes at once, so
    // the run meets the quota (403/429 are part of the contract) and the
    // host does not drown in containers.
    let quotas = Quotas {
        max_sandboxes: 3,
        ..Quotas::default()
    };
    let alice = d.user("alice", quotas);
    let bob = d.user("bob", quotas);

    let work = tempfile::Builder::new()
        .prefix("bhatti-contract-")
        .tempdir_in("/var/tmp")
        .expect("tempdir");
    let doc = d.req("GET", "/openapi.json", Some(&alice), None).await;
    assert_eq!(doc.status, 200, "{}", doc.text());
    let spec = work.path().join("openapi.json");
    std::fs::write(&spec, &doc.body).expect("write openapi.json");
    let auth = serde_json::json!({
        "auth": [
            {"name": "alice", "fixedHeaders": [{"name": "Authorization", "value": format!("Bearer {alice}")}]},
            {"name": "bob", "fixedHeaders": [{"name": "Authorization", "value": format!("Bearer {bob}")}]},
        ]
    });
    let auth_file = work.path().join("auth.json");
    std::fs::write(&auth_file, auth.to_string()).expect("write auth.json");
    let config = work.path().join("schemathesis.toml");
    std::fs::write(
        &config,
        format!(
            "[auth.wfc]\npath = {:?}\nuser = \"alice\"\npeers = [\"alice\", \"bob\"]\n\n{NOT_A_SERVER_ERROR}",
            auth_file.display()
        ),
    )
    .expect("write schemathesis.toml");

    let examples = std::env::var("BHATTI_CONTRACT_EXAMPLES").unwrap_or_else(|_| "25".into());
    let seed = std::env::var("BHATTI_CONTRACT_SEED").unwrap_or_else(|_| "1".into());
    let mut cmd = tokio::process::Command::new(st_bin);
    cmd.arg("--config-file")
        .arg(&config)
        .arg("--no-color")
        .arg("run")
        .arg(&spec)
        .args(["--url", &format!("http://{}", d.addr)])
        .args(["--checks", "all"])
        // The two WebSocket routes stay in the document but out of this
        // run: a 101 hands the connection to the WebSocket protocol, which
        // an HTTP fuzzer cannot speak (it counts 101 as neither success nor
        // refusal and then reuses the upgraded connection for its next
        // request). websocket_shell_and_piped_sessions covers them.
        //
        // The image import is out too: its body is an archive, valid to the
        // schema whatever its bytes, so every made-up body is a "valid"
        // request refused with 400. tests/images.rs covers it with real
        // archives and each kind of bad one.
        .args(["--exclude-path-regex", "/ws$|^/images/import$"])
        .args(["--max-examples", &examples])
        .args(["--seed", &seed])
        // Creates start containers and exec waits on them: generous.
        .args(["--request-timeout", "120"])
        .args(["--workers", "2"])
        .args(["--generation-database", "none"])
        .args(["--report", "junit"])
        .arg("--report-dir")
        .arg(work.path().join("report"))
        .current_dir(work.path())
        .env("NO_PROXY", "*")
        .env("no_proxy", "*")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    for v in [
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "http_proxy",
        "https_proxy",
        "all_proxy",
    ] {
        cmd.env_remove(v);
    }
    let t0 = Instant::now();
    let out = tokio::time::timeout(RUN_TIMEOUT, cmd.output())
        .await
        .unwrap_or_else(|_| panic!("schemathesis ran over {RUN_TIMEOUT:?}"))
        .expect("run schemathesis");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}\n{stderr}");
    println!("schemathesis took {:.0?}", t0.elapsed());
    assert!(
        out.status.success(),
        "schemathesis reported findings (exit {:?}); the output is above",
        out.status.code()
    );
    // The daemon is still whole after the run.
    assert_eq!(d.code("GET", "/health", None, None).await, 200);

    // And the router serves every documented operation: a path the router
    // does not know is the fallback's 404, which a fuzzer would take for a
    // missing object.
    let doc: serde_json::Value = serde_json::from_slice(&doc.body).expect("openapi.json");
    for (path, ops) in doc["paths"].as_object().expect("paths") {
        let concrete = path
            .replace("{id}", "no-such-sandbox")
            .replace("{port}", "8080")
            .replace(['{', '}'], "");
        for method in ops.as_object().expect("operations").keys() {
            let m = method.to_uppercase();
            let r = d.req(&m, &concrete, Some(&alice), None).await;
            assert!(
                r.status != 405 && !r.text().contains("no such route"),
                "{m} {path} is documented but not routed: {} {}",
                r.status,
                r.text()
            );
        }
    }
}
