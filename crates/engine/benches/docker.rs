//! The Docker engine against a real dockerd, each figure beside Docker's own
//! equivalent measured in the same run on the same image:
//! - create → first exec vs `docker run` of `true` (create + start + wait for
//!   exit, through the API);
//! - exec round trip through lohar vs `docker exec` of `true` (exec create +
//!   start + drain + inspect for the exit code, through the API);
//! - plus pause → wake → exec, stop → start → exec, and destroy.
//!
//! Run as root with dockerd up and the image built
//! (`scripts/start-dockerd.sh`, `scripts/docker-image.sh`):
//! `cargo bench -p bhatti-engine --bench docker` → bench/results/docker.{json,md}.
//! Prints why and exits 0 if it cannot run. `BHATTI_BENCH_N` sets the number of
//! create samples (default 10); exec samples are 10× that.
#![allow(clippy::unwrap_used, clippy::arithmetic_side_effects)] // a test panics to report its failure; its sums are on test data

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bhatti_benchkit::Report;
use bhatti_engine::contract::{Engine, EngineExt, SandboxSpec};
use bhatti_engine::docker::{DockerConfig, DockerEngine, DEFAULT_IMAGE};
use bollard::exec::{CreateExecOptions, StartExecResults};
use bollard::models::{ContainerCreateBody, HostConfig};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, RemoveContainerOptionsBuilder, WaitContainerOptionsBuilder,
};
use bollard::Docker;
use futures_util::StreamExt;

/// `docker run --rm <image> true`, minus the removal: create, start, wait.
async fn docker_run_true(docker: &Docker, image: &str, name: &str) -> Duration {
    let t = Instant::now();
    let body = ContainerCreateBody {
        image: Some(image.into()),
        entrypoint: Some(vec!["/bin/true".into()]),
        labels: Some(HashMap::from([("bhatti.bench".into(), "true".into())])),
        host_config: Some(HostConfig {
            nano_cpus: Some(1_000_000_000),
            memory: Some(256 * 1024 * 1024),
            ..Default::default()
        }),
        ..Default::default()
    };
    let opts = CreateContainerOptionsBuilder::default().name(name).build();
    docker
        .create_container(Some(opts), body)
        .await
        .expect("create");
    docker.start_container(name, None).await.expect("start");
    let wait = WaitContainerOptionsBuilder::default()
        .condition("not-running")
        .build();
    let mut s = docker.wait_container(name, Some(wait));
    let r = s.next().await.expect("wait result").expect("wait");
    assert_eq!(r.status_code, 0);
    let took = t.elapsed();
    let rm = RemoveContainerOptionsBuilder::default().force(true).build();
    docker.remove_container(name, Some(rm)).await.expect("rm");
    took
}

/// `docker exec <container> true`, exit code included.
async fn docker_exec_true(docker: &Docker, container: &str) -> Duration {
    let t = Instant::now();
    let ex = docker
        .create_exec(
            container,
            CreateExecOptions {
                cmd: Some(vec!["true"]),
                attach_stdout: Some(true),
                attach_stderr: Some(true),
                ..Default::default()
            },
        )
        .await
        .expect("exec create");
    if let StartExecResults::Attached { mut output, .. } =
        docker.start_exec(&ex.id, None).await.expect("exec start")
    {
        while let Some(x) = output.next().await {
            x.expect("exec output");
        }
    }
    let code = docker
        .inspect_exec(&ex.id)
        .await
        .expect("exec inspect")
        .exit_code;
    assert_eq!(code, Some(0));
    t.elapsed()
}

#[tokio::main]
async fn main() {
    if unsafe { libc::geteuid() } != 0 {
        println!("docker bench: needs root; not run");
        return;
    }
    let image = std::env::var("BHATTI_DOCKER_IMAGE").unwrap_or_else(|_| DEFAULT_IMAGE.into());
    let n: usize = std::env::var("BHATTI_BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let tmp = tempfile::Builder::new()
        .prefix("bhatti-bench-docker-")
        .tempdir_in("/var/tmp")
        .expect("tempdir");
    let mut cfg = DockerConfig::new(tmp.path().join("data"));
    cfg.image = image.clone();
    cfg.prefix = format!("bhbench-{}", std::process::id());
    let engine = match DockerEngine::new(cfg).await {
        Ok(e) => e,
        Err(e) => {
            println!("docker bench: {e}; not run");
            return;
        }
    };
    if engine.docker().inspect_image(&image).await.is_err() {
        println!("docker bench: image {image} missing (scripts/docker-image.sh); not run");
        return;
    }
    let docker = engine.docker().clone();
    let mut report = Report::new("docker");
    let spec = |name: &str| SandboxSpec {
        name: name.into(),
        owner_index: 1,
        cpus: 1,
        memory_mb: 256,
        ..Default::default()
    };

    // Warm-up (first container start pays for image layer set-up).
    let w = engine.create(spec("warmup")).await.expect("create");
    engine.destroy(&w.id).await.expect("destroy");
    docker_run_true(
        &docker,
        &image,
        &format!("bhbench-run-{}", std::process::id()),
    )
    .await;

    let mut create = Vec::new();
    let mut run = Vec::new();
    let mut destroy = Vec::new();
    for i in 0..n {
        let t = Instant::now();
        let info = engine.create(spec(&format!("b{i}"))).await.expect("create");
        let r = engine
            .exec(&info.id, vec!["true".into()])
            .await
            .expect("exec");
        assert_eq!(r.exit_code, 0);
        create.push(t.elapsed());
        let t = Instant::now();
        engine.destroy(&info.id).await.expect("destroy");
        destroy.push(t.elapsed());
        run.push(
            docker_run_true(
                &docker,
                &image,
                &format!("bhbench-run-{}-{i}", std::process::id()),
            )
            .await,
        );
    }
    report.latency(
        "create → first exec",
        &create,
        Some(("docker run true (create+start+wait)", &run)),
        "sandbox: network, container, agent ready, exec `true`; baseline: same image, /bin/true as entrypoint",
    );
    report.latency("destroy", &destroy, None, "container, directory, network");

    let info = engine.create(spec("exec")).await.expect("create");
    let id = info.id.clone();
    let container = engine.container_name(&id);
    let mut ours = Vec::new();
    let mut theirs = Vec::new();
    for _ in 0..n * 10 {
        let t = Instant::now();
        let r = engine.exec(&id, vec!["true".into()]).await.expect("exec");
        assert_eq!(r.exit_code, 0);
        ours.push(t.elapsed());
        theirs.push(docker_exec_true(&docker, &container).await);
    }
    report.latency(
        "exec `true` round trip (lohar)",
        &ours,
        Some(("docker exec true", &theirs)),
        "lohar: Unix socket, AUTH, exec, sync, exit; docker: exec create+start+inspect",
    );

    let mut warm = Vec::new();
    let mut cold = Vec::new();
    for _ in 0..n {
        engine.pause(&id).await.expect("pause");
        let t = Instant::now();
        engine.ensure_hot(&id).await.expect("wake");
        engine.exec(&id, vec!["true".into()]).await.expect("exec");
        warm.push(t.elapsed());
        engine.stop(&id).await.expect("stop");
        let t = Instant::now();
        engine.ensure_hot(&id).await.expect("start");
        engine.exec(&id, vec!["true".into()]).await.expect("exec");
        cold.push(t.elapsed());
    }
    report.latency("warm (paused) → exec", &warm, None, "docker unpause");
    report.latency(
        "cold (stopped) → exec",
        &cold,
        None,
        "docker start + agent ready; processes do not survive",
    );
    engine.destroy(&id).await.expect("destroy");
    let _ = engine.cleanup_orphans(&[]).await;
    match report.write() {
        Ok(p) => println!("wrote {}", p.display()),
        Err(e) => println!("docker bench: writing the report: {e}"),
    }
}
