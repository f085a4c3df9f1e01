//! E2B compatibility: E2B's official Python SDK (from PyPI, pinned in
//! scripts/e2b-requirements.txt, in the venv scripts/test.sh makes) drives a
//! real daemon through `/e2b`, unmodified, with `E2B_API_URL` and an
//! `e2b_<hex>` key. The script (tests/e2b/sdk_control.py) checks the control
//! API: create with template, metadata, env and timeout; get_info; list
//! with metadata and state filters and pages; set_timeout and expiry;
//! pause and connect; kill; another tenant's view; wrong key, unknown
//! template, bad timeout; and the async client.
//!
//! Without the SDK the tests are reported as ignored, never as passed.
//! Traffic goes to the daemon on loopback only.

mod common;

use std::process::Stdio;
use std::time::Duration;

use bhatti_store::Quotas;
use common::{TestDaemon, SERIAL};

/// A hung SDK is a failure, not a stuck CI job.
const RUN_TIMEOUT: Duration = Duration::from_secs(15 * 60);

fn e2b_key(bht: &str) -> String {
    format!("e2b_{}", bht.strip_prefix("bht_").expect("a bht_ key"))
}

async fn run_sdk(engine: &str) {
    common::daemon_logs_in_test_output();
    let python = option_env!("BHATTI_E2B_PYTHON").unwrap_or("python3");
    let _serial = SERIAL.lock().await;
    let d = TestDaemon::start(engine, |_| {}).await;
    let alice = d.user("alice", Quotas::default());
    let bob = d.user("bob", Quotas::default());
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/e2b/sdk_control.py");
    let mut cmd = tokio::process::Command::new(python);
    cmd.arg(script)
        .env("E2B_API_URL", format!("http://{}/e2b", d.addr))
        .env("E2B_API_KEY", e2b_key(&alice))
        .env("E2B_TEST_OTHER_KEY", e2b_key(&bob))
        .env("E2B_TEST_TEMPLATE", "base")
        .env_remove("E2B_DOMAIN")
        .env_remove("E2B_ACCESS_TOKEN")
        .env("NO_PROXY", "*")
        .env("no_proxy", "*")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let out = tokio::time::timeout(RUN_TIMEOUT, cmd.output())
        .await
        .expect("the SDK script hung")
        .expect("run the SDK script");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}\n{stderr}");
    assert!(
        out.status.success() && stdout.lines().last() == Some("ok"),
        "the E2B SDK script failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    // The script removed what it made, through the SDK.
    let left = d.req("GET", "/sandboxes", Some(&alice), None).await;
    assert_eq!(left.json(), serde_json::json!([]), "sandboxes left behind");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(all(bhatti_docker, bhatti_e2b_sdk)),
    ignore = "needs dockerd and BHATTI_E2B_PYTHON=<venv>/bin/python with the e2b SDK (scripts/test.sh makes it)"
)]
async fn e2b_sdk_control_docker() {
    run_sdk("docker").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(all(bhatti_vm_tests, bhatti_e2b_sdk)),
    ignore = "needs root, the guest artifacts and BHATTI_E2B_PYTHON=<venv>/bin/python with the e2b SDK (scripts/test.sh makes it)"
)]
async fn e2b_sdk_control_vm() {
    run_sdk("qemu").await;
}
