//! E2B compatibility: E2B's official Python SDK (from PyPI, pinned in
//! scripts/e2b-requirements.txt, in the venv scripts/test.sh makes) drives a
//! real daemon through `/e2b` and `/e2b/envd`, unmodified, with
//! `E2B_API_URL`, `E2B_SANDBOX_URL` and an `e2b_<hex>` key.
//! tests/e2b/sdk_control.py checks the control API: create with template,
//! metadata, env and timeout; get_info; list with metadata and state
//! filters and pages; set_timeout and expiry; pause and connect; kill;
//! another tenant's view; wrong key, unknown template, bad timeout; and the
//! async client. tests/e2b/sdk_envd.py checks envd: commands (output,
//! callbacks, exit codes, env, cwd, background, stdin, list, connect,
//! kill), PTYs (input, resize, reconnect, kill), files (text, bytes,
//! streams, 50 MB each way, list with depth, exists, make_dir, rename,
//! remove, get_info, watch events), a wrong access token, a malformed
//! Connect envelope, pause and resume with files and a process surviving,
//! and the async client.
//!
//! tests/e2b/sdk_js.mjs runs E2B's JavaScript SDK (from npm, pinned in
//! scripts/e2b-js) through the same daemon: create, list, commands, files,
//! watches, lifetimes and errors.
//!
//! Without the SDK the tests are reported as ignored, never as passed.
//! Traffic goes to the daemon on loopback only.
#![allow(clippy::unwrap_used, clippy::arithmetic_side_effects)] // a test panics to report its failure; its sums are on test data

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

/// The command that runs one SDK script: Python scripts with the venv's
/// python; JavaScript ones with node, from a copy beside the SDK's
/// node_modules (ES modules find packages only from where they are).
fn sdk_command(script: &str) -> tokio::process::Command {
    let path = format!("{}/tests/e2b/{script}", env!("CARGO_MANIFEST_DIR"));
    if script.ends_with(".mjs") {
        let dir = std::path::PathBuf::from(option_env!("BHATTI_E2B_JS").unwrap_or("."));
        let copy = dir.join(format!("bhatti-test-{script}"));
        std::fs::copy(&path, &copy).expect("copy the script beside the JS SDK");
        let mut cmd = tokio::process::Command::new("node");
        cmd.arg(copy).current_dir(dir);
        cmd
    } else {
        let python = option_env!("BHATTI_E2B_PYTHON").unwrap_or("python3");
        let mut cmd = tokio::process::Command::new(python);
        cmd.arg(path);
        cmd
    }
}

async fn run_sdk(engine: &str, script: &str) {
    common::daemon_logs_in_test_output();
    let _serial = SERIAL.lock().await;
    let d = TestDaemon::start(engine, |_| {}).await;
    let alice = d.user("alice", Quotas::default());
    let bob = d.user("bob", Quotas::default());
    let mut cmd = sdk_command(script);
    cmd.env("E2B_API_URL", format!("http://{}/e2b", d.addr))
        .env("E2B_SANDBOX_URL", format!("http://{}/e2b/envd", d.addr))
        .env("E2B_API_KEY", e2b_key(&alice))
        .env("E2B_TEST_OTHER_KEY", e2b_key(&bob))
        .env("E2B_TEST_TEMPLATE", "base")
        .env("E2B_TEST_ENGINE", engine)
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
    run_sdk("docker", "sdk_control.py").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(all(bhatti_docker, bhatti_e2b_sdk)),
    ignore = "needs dockerd and BHATTI_E2B_PYTHON=<venv>/bin/python with the e2b SDK (scripts/test.sh makes it)"
)]
async fn e2b_sdk_envd_docker() {
    run_sdk("docker", "sdk_envd.py").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(all(bhatti_vm_tests, bhatti_e2b_sdk)),
    ignore = "needs root, the guest artifacts and BHATTI_E2B_PYTHON=<venv>/bin/python with the e2b SDK (scripts/test.sh makes it)"
)]
async fn e2b_sdk_control_vm() {
    run_sdk("qemu", "sdk_control.py").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(all(bhatti_vm_tests, bhatti_e2b_sdk)),
    ignore = "needs root, the guest artifacts and BHATTI_E2B_PYTHON=<venv>/bin/python with the e2b SDK (scripts/test.sh makes it)"
)]
async fn e2b_sdk_envd_vm() {
    run_sdk("qemu", "sdk_envd.py").await;
}

/// E2B's JavaScript SDK, unmodified, on the same daemon: sandboxes,
/// commands, files and watches, errors (tests/e2b/sdk_js.mjs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(all(bhatti_docker, bhatti_e2b_js)),
    ignore = "needs dockerd, Node.js 20.18+ and BHATTI_E2B_JS=<dir> with the e2b npm package (scripts/test.sh installs it)"
)]
async fn e2b_js_sdk_docker() {
    run_sdk("docker", "sdk_js.mjs").await;
}
