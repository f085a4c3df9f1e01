//! The microVM engine on real VMs, each figure beside a baseline measured in the
//! same run:
//! - create → first exec vs a bare boot of the same kernel and image to a
//!   trivial init (`init=/bin/echo`);
//! - restore → exec vs QEMU's own restore of the same snapshot (to running);
//! - exec round trip vs a HELLO round trip to the same agent (no process spawn);
//! - plus the seed's performance set: 1 KiB write+read cycles, 5 parallel reads,
//!   warm → exec, snapshot time and size, streaming time-to-first-byte,
//!   10 concurrent execs, truncated vs full read of a 10k-line file, and the
//!   daemon's memory per idle sandbox.
//!
//! Run as root: `cargo bench -p bhatti-engine --bench microvm` →
//! bench/results/microvm.{json,md}. Prints why and exits 0 if it cannot run.
#![allow(clippy::unwrap_used, clippy::arithmetic_side_effects)] // a test panics to report its failure; its sums are on test data

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bhatti_agent_client::{ExecRequest, ReadOptions, StreamEvent};
use bhatti_benchkit::Report;
use bhatti_engine::contract::{Engine, EngineExt, PoolSpec, SandboxSpec};
use bhatti_engine::microvm::{MicroVmConfig, MicroVmEngine};
use bhatti_engine::net::NetManager;
use bhatti_engine::vmm::qemu::{QemuConfig, QemuDriver};
use bhatti_engine::vmm::{Disk, SnapshotKind, Vm, VmSpec, VmmDriver};

/// The engine's own timing of each restore inside a create: its "agent
/// ready" event, from the VMM's restore to the readiness probe's exec (the
/// guest's first) and a HELLO. What the template target calls "QEMU's own
/// restore-to-running plus the first exec", measured in the same create.
#[derive(Clone, Default)]
struct RestoreTimings(Arc<std::sync::Mutex<Vec<Duration>>>);

impl RestoreTimings {
    fn take(&self) -> Vec<Duration> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for RestoreTimings {
    fn enabled(
        &self,
        meta: &tracing::Metadata<'_>,
        _: tracing_subscriber::layer::Context<'_, S>,
    ) -> bool {
        meta.target() == "bhatti_engine::microvm::lifecycle"
    }

    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        #[derive(Default)]
        struct Fields {
            ready: bool,
            restore: bool,
            took_us: Option<u64>,
        }
        impl tracing::field::Visit for Fields {
            fn record_debug(&mut self, f: &tracing::field::Field, v: &dyn std::fmt::Debug) {
                if f.name() == "message" {
                    self.ready = format!("{v:?}") == "agent ready";
                }
            }
            fn record_bool(&mut self, f: &tracing::field::Field, v: bool) {
                if f.name() == "restore" {
                    self.restore = v;
                }
            }
            fn record_u64(&mut self, f: &tracing::field::Field, v: u64) {
                if f.name() == "took_us" {
                    self.took_us = Some(v);
                }
            }
        }
        let mut f = Fields::default();
        event.record(&mut f);
        if let (true, true, Some(us)) = (f.ready, f.restore, f.took_us) {
            self.0.lock().unwrap().push(Duration::from_micros(us));
        }
    }
}

fn artifact(env: &str, default: &str) -> PathBuf {
    std::env::var_os(env)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(default))
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

async fn wait_console(vm: &dyn Vm, needle: &str, limit: Duration) -> bool {
    let t = Instant::now();
    while t.elapsed() < limit {
        if vm.console_tail(64 * 1024).contains(needle) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    false
}

/// The same kernel and root image booted to a trivial init that prints a line.
async fn bare_boot(
    driver: &QemuDriver,
    kernel: &std::path::Path,
    rootfs: &std::path::Path,
    dir: &std::path::Path,
) -> Duration {
    let disk = dir.join("bare.ext4");
    let st = std::process::Command::new("cp")
        .args(["--reflink=auto", "--sparse=always"])
        .arg(rootfs)
        .arg(&disk)
        .status()
        .expect("cp");
    assert!(st.success());
    let spec = VmSpec {
        id: "benchbare".into(),
        dir: dir.to_path_buf(),
        kernel: kernel.to_path_buf(),
        cmdline: "console=ttyS0 reboot=k panic=1 root=/dev/vda rw quiet loglevel=1 init=/bin/echo -- bare-ready".into(),
        root_disk: disk,
        extra_disks: Vec::<Disk>::new(),
        vcpus: 1,
        mem_mib: 512,
        net: None,
        console_log: dir.join("bare-console.log"),
    };
    let t = Instant::now();
    let vm = driver.boot(&spec).await.expect("bare boot");
    let ok = wait_console(vm.as_ref(), "bare-ready", Duration::from_secs(60)).await;
    let took = t.elapsed();
    let _ = vm.kill().await;
    assert!(
        ok,
        "bare boot never printed its line: {}",
        vm.console_tail(2000)
    );
    took
}

#[tokio::main]
async fn main() {
    if unsafe { libc_geteuid() } != 0 {
        println!("microvm bench: needs root; not run");
        return;
    }
    let kernel = artifact("BHATTI_GUEST_KERNEL", "/var/cache/bhatti/guest/vmlinux");
    let rootfs = artifact(
        "BHATTI_GUEST_ROOTFS",
        "/var/cache/bhatti/guest/rootfs-minimal.ext4",
    );
    if !kernel.is_file() || !rootfs.is_file() {
        println!("microvm bench: guest artifacts missing (scripts/guest); not run");
        return;
    }
    let restores = RestoreTimings::default();
    {
        use tracing_subscriber::layer::SubscriberExt;
        let _ = tracing::subscriber::set_global_default(
            tracing_subscriber::registry().with(restores.clone()),
        );
    }
    let n_life: usize = std::env::var("BHATTI_BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let tmp = tempfile::Builder::new()
        .prefix("bhatti-bench-")
        .tempdir_in("/var/tmp")
        .expect("tempdir");
    let qemu = QemuDriver::new(QemuConfig::default()).expect("qemu");
    let driver: Arc<dyn VmmDriver> = Arc::new(qemu.clone());
    // A scratch pool: never the host daemon's.
    let net = Arc::new(NetManager::scratch(tmp.path().join("net")).expect("net"));
    let engine = MicroVmEngine::new(
        MicroVmConfig::new(tmp.path().join("data"), kernel.clone(), rootfs.clone()),
        driver.clone(),
        net.clone(),
    )
    .expect("engine");
    let mut report = Report::new("microvm");
    let spec = |name: &str| spec_of(name);

    // Lifecycle: bare boot vs create → first exec, and destroy.
    let mut bare = Vec::new();
    let mut create = Vec::new();
    let mut destroy = Vec::new();
    for i in 0..n_life {
        let d = tmp.path().join(format!("bare{i}"));
        std::fs::create_dir_all(&d).unwrap();
        bare.push(bare_boot(&qemu, &kernel, &rootfs, &d).await);
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
    }
    report.latency(
        "create → first exec",
        &create,
        Some((
            "bare boot of the same kernel+image to init=/bin/echo",
            &bare,
        )),
        "target ≤ 1.25× baseline",
    );
    report.latency("destroy", &destroy, None, "");

    // The project's kernel (scripts/guest/kernel.fragment) beside another
    // one, e.g. the kernel built from a previous config, booted alternately
    // in the same run so that host load hits both alike.
    if let Some(other) = std::env::var_os("BHATTI_BENCH_BASELINE_KERNEL")
        .map(PathBuf::from)
        .filter(|p| p.is_file())
    {
        let other_engine = MicroVmEngine::new(
            MicroVmConfig::new(tmp.path().join("data-k"), other.clone(), rootfs.clone()),
            driver.clone(),
            net.clone(),
        )
        .expect("engine (baseline kernel)");
        let (mut ours_bare, mut other_bare) = (Vec::new(), Vec::new());
        let (mut ours_first, mut other_first) = (Vec::new(), Vec::new());
        for i in 0..n_life {
            for (k, samples) in [(&kernel, &mut ours_bare), (&other, &mut other_bare)] {
                let d = tmp.path().join(format!("kbare{i}-{}", samples.len()));
                std::fs::create_dir_all(&d).unwrap();
                samples.push(bare_boot(&qemu, k, &rootfs, &d).await);
                let _ = std::fs::remove_dir_all(&d);
            }
            for (e, samples, tag) in [
                (&engine, &mut ours_first, "ko"),
                (&other_engine, &mut other_first, "kb"),
            ] {
                let t = Instant::now();
                let info = e.create(spec(&format!("{tag}{i}"))).await.expect("create");
                let r = e.exec(&info.id, vec!["true".into()]).await.expect("exec");
                assert_eq!(r.exit_code, 0);
                samples.push(t.elapsed());
                e.destroy(&info.id).await.expect("destroy");
            }
        }
        let other_name = format!("kernel {}", other.display());
        report.latency(
            "kernel: bare boot to init=/bin/echo",
            &ours_bare,
            Some((&other_name, &other_bare)),
            "project kernel (defconfig + kernel.fragment)",
        );
        report.latency(
            "kernel: create → first exec",
            &ours_first,
            Some((&other_name, &other_first)),
            "project kernel (defconfig + kernel.fragment)",
        );
        let mib = |p: &std::path::Path| {
            std::fs::metadata(p).map(|m| m.len()).unwrap_or(0) as f64 / (1024.0 * 1024.0)
        };
        report.throughput(
            "kernel: vmlinux size",
            "MiB",
            mib(&kernel),
            Some((&other_name, mib(&other))),
            "project kernel (defconfig + kernel.fragment)",
        );
    }

    // One long-lived sandbox for the rest.
    let info = engine.create(spec("bench")).await.expect("create");
    let id = info.id.clone();
    let agent = engine.agent(&id).unwrap();
    for _ in 0..5 {
        engine.exec(&id, vec!["true".into()]).await.unwrap();
    }
    let mut exec = Vec::new();
    let mut hello = Vec::new();
    for _ in 0..100 {
        let t = Instant::now();
        engine.exec(&id, vec!["true".into()]).await.unwrap();
        exec.push(t.elapsed());
        let t = Instant::now();
        agent.hello().await.unwrap();
        hello.push(t.elapsed());
    }
    report.latency(
        "exec `true` round trip (TCP into the sandbox netns)",
        &exec,
        Some(("HELLO round trip to the same agent (no spawn)", &hello)),
        "",
    );

    let kib = vec![b'k'; 1024];
    let mut cycles = Vec::new();
    for i in 0..50 {
        let p = format!("/workspace/f{}.bin", i % 5);
        let t = Instant::now();
        let mut src = &kib[..];
        engine
            .file_write(&id, &p, "0644", 1024, &mut src)
            .await
            .unwrap();
        let mut out = Vec::new();
        engine
            .file_read(&id, &p, ReadOptions::default(), &mut out)
            .await
            .unwrap();
        cycles.push(t.elapsed());
    }
    report.latency("1 KiB write + read cycle", &cycles, None, "");

    let mut par = Vec::new();
    for _ in 0..20 {
        let t = Instant::now();
        let tasks: Vec<_> = (0..5)
            .map(|i| {
                let a = agent.clone();
                tokio::spawn(async move {
                    a.file_read_to_vec(&format!("/workspace/f{i}.bin"), ReadOptions::default())
                        .await
                })
            })
            .collect();
        for t in tasks {
            assert_eq!(t.await.unwrap().unwrap().len(), 1024);
        }
        par.push(t.elapsed());
    }
    report.latency("5 parallel 1 KiB reads (batch)", &par, None, "");

    let mut ttfb = Vec::new();
    let mut total = Vec::new();
    for _ in 0..20 {
        let t = Instant::now();
        let mut s = engine
            .exec_stream(
                &id,
                ExecRequest::new(["sh", "-c", "echo first; sleep 0.05; echo second"]),
            )
            .await
            .unwrap();
        let mut first = None;
        while let Some(ev) = s.next().await.unwrap() {
            if first.is_none() && matches!(ev, StreamEvent::Stdout(_)) {
                first = Some(t.elapsed());
            }
        }
        ttfb.push(first.unwrap());
        total.push(t.elapsed());
    }
    report.latency("streaming exec: time to first byte", &ttfb, None, "");
    report.latency(
        "streaming exec: total (includes a 50 ms sleep)",
        &total,
        None,
        "",
    );

    let mut conc = Vec::new();
    for _ in 0..10 {
        let t = Instant::now();
        let tasks: Vec<_> = (0..10)
            .map(|_| {
                let a = agent.clone();
                tokio::spawn(async move { a.exec(["true"]).await })
            })
            .collect();
        for t in tasks {
            assert_eq!(t.await.unwrap().unwrap().exit_code, 0);
        }
        conc.push(t.elapsed());
    }
    report.latency(
        "10 concurrent execs (batch)",
        &conc,
        Some(("one exec", &exec)),
        "",
    );

    engine
        .exec(&id, vec!["sh".into(), "-c".into(), "i=1; while [ $i -le 10000 ]; do echo line $i; i=$((i+1)); done > /workspace/lines.txt".into()])
        .await
        .unwrap();
    let mut full = Vec::new();
    let mut trunc = Vec::new();
    for _ in 0..20 {
        let t = Instant::now();
        agent
            .file_read_to_vec("/workspace/lines.txt", ReadOptions::default())
            .await
            .unwrap();
        full.push(t.elapsed());
        let t = Instant::now();
        let v = agent
            .file_read_to_vec(
                "/workspace/lines.txt",
                ReadOptions {
                    offset: 5000,
                    limit: 20,
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        trunc.push(t.elapsed());
        assert_eq!(v.iter().filter(|&&b| b == b'\n').count(), 20);
    }
    report.latency(
        "read 10k-line file: 20 lines from line 5000",
        &trunc,
        Some(("full read", &full)),
        "",
    );

    // Thermal: pause, warm → exec.
    let mut pause = Vec::new();
    let mut warm = Vec::new();
    for _ in 0..10 {
        let t = Instant::now();
        engine.pause(&id).await.unwrap();
        pause.push(t.elapsed());
        let t = Instant::now();
        engine.ensure_hot(&id).await.unwrap();
        engine.exec(&id, vec!["true".into()]).await.unwrap();
        warm.push(t.elapsed());
    }
    report.latency("pause (hot → warm)", &pause, None, "");
    report.latency(
        "warm → exec",
        &warm,
        Some(("exec on a hot sandbox", &exec)),
        "target < 20 ms",
    );

    // Cold: stop (snapshot) and restore → exec, beside QEMU's own restore.
    let mut stop = Vec::new();
    let mut restore = Vec::new();
    let mut sizes = Vec::new();
    for _ in 0..3 {
        let t = Instant::now();
        engine.stop(&id).await.unwrap();
        stop.push(t.elapsed());
        let snap = tmp.path().join("data/sandboxes").join(&id).join("snapshot");
        let alloc: u64 = std::fs::read_dir(&snap)
            .unwrap()
            .flatten()
            .map(|e| {
                use std::os::unix::fs::MetadataExt;
                e.metadata().map(|m| m.blocks() * 512).unwrap_or(0)
            })
            .sum();
        sizes.push(alloc);
        let t = Instant::now();
        engine.ensure_hot(&id).await.unwrap();
        engine.exec(&id, vec!["true".into()]).await.unwrap();
        restore.push(t.elapsed());
    }
    // QEMU's own restore of a snapshot of the same kind of guest: boot a VM via
    // the driver, snapshot it, restore it, time to "running".
    let mut raw_restore = Vec::new();
    {
        let d = tmp.path().join("raw");
        std::fs::create_dir_all(&d).unwrap();
        let disk = d.join("root.ext4");
        std::fs::copy(&rootfs, &disk).unwrap();
        let spec = VmSpec {
            id: "benchraw".into(),
            dir: d.clone(),
            kernel: kernel.clone(),
            cmdline: "console=ttyS0 reboot=k panic=1 root=/dev/vda rw quiet loglevel=1 init=/bin/sh -- -c \"echo raw-ready; while :; do sleep 1; done\"".into(),
            root_disk: disk,
            extra_disks: Vec::new(),
            vcpus: 1,
            mem_mib: 512,
            net: None,
            console_log: d.join("console.log"),
        };
        let vm = driver.boot(&spec).await.unwrap();
        wait_console(vm.as_ref(), "raw-ready", Duration::from_secs(60)).await;
        vm.pause().await.unwrap();
        let files = vm
            .snapshot(&d.join("snap"), SnapshotKind::Full)
            .await
            .unwrap();
        vm.kill().await.unwrap();
        for _ in 0..3 {
            let t = Instant::now();
            let vm = driver.restore(&spec, &files).await.unwrap();
            raw_restore.push(t.elapsed());
            vm.kill().await.unwrap();
        }
    }
    report.latency(
        "stop (sync, pause, full snapshot, kill)",
        &stop,
        None,
        "512 MiB guest",
    );
    report.latency(
        "restore → exec (cold wake)",
        &restore,
        Some((
            "QEMU restore of a same-size snapshot to running",
            &raw_restore,
        )),
        "target ≤ 1.5× baseline",
    );
    // Template snapshots: create → first exec that restores the image's
    // template, beside a cold boot's create → first exec and QEMU's own
    // restore, alternating in the same run.
    {
        let tengine = Arc::new(
            MicroVmEngine::new(
                MicroVmConfig::new(tmp.path().join("data-t"), kernel.clone(), rootfs.clone()),
                driver.clone(),
                net.clone(),
            )
            .expect("engine (templates)"),
        );
        tengine.enable_templates();
        let built = Instant::now();
        let first = tengine.create(spec("t-first")).await.expect("create");
        let tdir = tmp.path().join("data-t/templates");
        let has_template = || {
            std::fs::read_dir(&tdir).is_ok_and(|rd| {
                rd.flatten()
                    .any(|e| e.path().join("manifest.json").is_file())
            })
        };
        while !has_template() {
            assert!(
                built.elapsed() < Duration::from_secs(300),
                "no template was built"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let build = built.elapsed();
        tengine.destroy(&first.id).await.expect("destroy");
        let (mut hit, mut cold) = (Vec::new(), Vec::new());
        // Inside each template create: the restore and the guest's first
        // exec (the engine's timing); after it, the user's first exec.
        let (mut inside, mut first_exec) = (Vec::new(), Vec::new());
        for i in 0..n_life {
            for (e, samples, tag) in [(&*tengine, &mut hit, "th"), (&engine, &mut cold, "tc")] {
                restores.take();
                let t = Instant::now();
                let info = e.create(spec(&format!("{tag}{i}"))).await.expect("create");
                let created = Instant::now();
                let r = e.exec(&info.id, vec!["true".into()]).await.expect("exec");
                assert_eq!(r.exit_code, 0);
                samples.push(t.elapsed());
                if tag == "th" {
                    first_exec.push(created.elapsed());
                    let timed = restores.take();
                    assert_eq!(timed.len(), 1, "one restore in a template create");
                    inside.extend(timed);
                }
                e.destroy(&info.id).await.expect("destroy");
            }
        }
        report.latency(
            "template snapshot: create → first exec",
            &hit,
            Some(("create → first exec booting (same run)", &cold)),
            "restore, claim (token, env, entropy, clock), exec",
        );
        report.latency(
            "template snapshot: create → first exec, beside QEMU's restore",
            &hit,
            Some((
                "QEMU restore of a same-size snapshot to running",
                &raw_restore,
            )),
            "",
        );
        report.latency(
            "template snapshot: create → first exec, beside the restore and first exec inside it",
            &hit,
            Some((
                "QEMU restore to running + the guest's first exec (the readiness probe) and a HELLO, timed by the engine inside the same create",
                &inside,
            )),
            "target ≤ 1.5× baseline",
        );
        report.latency(
            "template snapshot: the user's first exec alone (after create returned)",
            &first_exec,
            None,
            "",
        );
        report.latency(
            "template snapshot: first create → template ready (boot, settle, checkpoint)",
            &[build],
            None,
            "once per image and shape, in the background",
        );

        // Warm pools on the same engine and template: a hit's create →
        // first exec (the pool's refill waits while creates come), the
        // refill of one sandbox and the rate of filling a pool, the memory
        // a pooled VM costs, and a burst of 20 creates against a pool of 5
        // beside a burst of 20 cold boots.
        let pool = |size: u32| {
            vec![PoolSpec {
                name: "minimal".into(),
                image: None,
                cpus: 1,
                memory_mb: 512,
                size,
            }]
        };
        async fn wait_ready(e: &MicroVmEngine, n: u32) -> Duration {
            let t = Instant::now();
            while e.pools().first().map_or(0, |p| p.ready) != n {
                assert!(
                    t.elapsed() < Duration::from_secs(300),
                    "the pool did not reach {n}"
                );
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            t.elapsed()
        }
        async fn take(e: &MicroVmEngine, spec: SandboxSpec) -> (Duration, String, bool) {
            let t = Instant::now();
            let id = e.reserve_pooled(&spec);
            let hit = id.is_some();
            let info = e.create(SandboxSpec { id, ..spec }).await.expect("create");
            let r = e.exec(&info.id, vec!["true".into()]).await.expect("exec");
            assert_eq!(r.exit_code, 0);
            (t.elapsed(), info.id, hit)
        }
        let mut refills = Vec::new();
        for _ in 0..n_life {
            tengine.set_pools(pool(0));
            wait_ready(&tengine, 0).await;
            tengine.set_pools(pool(1));
            refills.push(wait_ready(&tengine, 1).await);
        }
        let mut hits = Vec::new();
        for i in 0..n_life {
            wait_ready(&tengine, 1).await;
            let (took, id, hit) = take(&tengine, spec(&format!("ph{i}"))).await;
            assert!(hit, "a full pool is a hit");
            hits.push(took);
            tengine.destroy(&id).await.expect("destroy");
        }
        report.latency(
            "warm pool hit: create → first exec",
            &hits,
            Some((
                "template snapshot restore: create → first exec (same run)",
                &hit,
            )),
            "target p50 < 50 ms (join the network, resume, claim, exec)",
        );
        report.latency(
            "warm pool hit: create → first exec, beside a cold boot",
            &hits,
            Some(("create → first exec booting (same run)", &cold)),
            "",
        );
        report.latency(
            "warm pool refill of one sandbox (restore, warm up, pause)",
            &refills,
            None,
            "one at a time, in the background",
        );
        tengine.set_pools(pool(0));
        wait_ready(&tengine, 0).await;
        tengine.set_pools(pool(5));
        let fill = wait_ready(&tengine, 5).await;
        report.throughput(
            "warm pool refill rate (an empty pool of 5 filling)",
            "sandboxes/s",
            5.0 / fill.as_secs_f64(),
            None,
            "",
        );
        let st = tengine.pools();
        let per_vm = st[0].rss_bytes as f64 / f64::from(st[0].ready.max(1)) / (1024.0 * 1024.0);
        report.throughput(
            "host memory per pooled VM (VMM resident set)",
            "MiB",
            per_vm,
            None,
            "512 MiB guest restored from the template, paused",
        );
        let burst = |e: Arc<MicroVmEngine>, tag: &'static str| async move {
            let t0 = Instant::now();
            let tasks: Vec<_> = (0..20)
                .map(|i| {
                    let e = e.clone();
                    tokio::spawn(async move { take(&e, spec_of(&format!("{tag}{i}"))).await })
                })
                .collect();
            let mut out = Vec::new();
            for t in tasks {
                out.push(t.await.expect("task"));
            }
            (t0.elapsed(), out)
        };
        let (burst_all, burst_pool) = burst(tengine.clone(), "pb").await;
        let burst_hits = burst_pool.iter().filter(|x| x.2).count();
        for (_, id, _) in &burst_pool {
            tengine.destroy(id).await.expect("destroy");
        }
        tengine.set_pools(pool(0));
        let plain = Arc::new(
            MicroVmEngine::new(
                MicroVmConfig::new(tmp.path().join("data-b"), kernel.clone(), rootfs.clone()),
                driver.clone(),
                net.clone(),
            )
            .expect("engine (boots)"),
        );
        let (cold_all, burst_cold) = burst(plain.clone(), "cb").await;
        for (_, id, _) in &burst_cold {
            plain.destroy(id).await.expect("destroy");
        }
        let lat = |v: &[(Duration, String, bool)]| v.iter().map(|x| x.0).collect::<Vec<_>>();
        report.latency(
            &format!("burst of 20 creates → first exec against a pool of 5 ({burst_hits} hits; all done in {} ms)", burst_all.as_millis()),
            &lat(&burst_pool),
            Some((
                &format!("burst of 20 cold boots (all done in {} ms)", cold_all.as_millis()),
                &lat(&burst_cold),
            )),
            "target: never slower than cold boots",
        );
        tengine.shutdown(false).await;
    }

    let avg = sizes.iter().sum::<u64>() as f64 / sizes.len().max(1) as f64 / (1024.0 * 1024.0);
    report.throughput(
        "cold snapshot size on disk (allocated)",
        "MiB",
        avg,
        None,
        "512 MiB guest, mapped-ram, sparse",
    );

    // Memory of this process (the engine) per idle sandbox.
    let before = rss_kib();
    let mut extra = Vec::new();
    for i in 0..3 {
        extra.push(engine.create(spec(&format!("idle{i}"))).await.unwrap().id);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = rss_kib();
    report.throughput(
        "engine RSS growth per idle sandbox",
        "KiB",
        after.saturating_sub(before) as f64 / 3.0,
        None,
        "target < 1024 KiB (the VMM's own memory is separate)",
    );
    for x in extra {
        engine.destroy(&x).await.unwrap();
    }
    engine.destroy(&id).await.unwrap();
    report.write().expect("report");
}

/// The shape every measured sandbox has.
fn spec_of(name: &str) -> SandboxSpec {
    SandboxSpec {
        name: name.into(),
        owner_index: 250,
        cpus: 1,
        memory_mb: 512,
        ..Default::default()
    }
}

extern "C" {
    #[link_name = "geteuid"]
    fn libc_geteuid() -> u32;
}
