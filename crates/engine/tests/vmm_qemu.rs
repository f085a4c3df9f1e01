//! The QEMU VMM driver against real microVMs (TCG unless the host has
//! usable KVM).
//!
//! Needs root, `qemu-system-x86_64`, the guest kernel
//! (`$BHATTI_GUEST_CACHE/vmlinux`, see `scripts/guest/build-kernel.sh`)
//! and `busybox-static`. Without root or the kernel (decided at build time,
//! see build.rs) the tests are *ignored* with the reason; anything else
//! missing at run time fails the test rather than passing it untested. The guest is a tiny busybox image (built once with
//! `scripts/guest/build-rootfs.sh`, cached) whose init lists its disks,
//! prints `vmm-test: ready`, then `vmm-test: hb <n>` every 100 ms from a
//! shell counter: after a restore the counter must *continue*, which shows
//! that guest memory came back.
//!
//! Tests run one at a time (a TCG guest keeps a core busy), every VM is
//! killed by a guard on every path, and every test has a watchdog that
//! fails it with the console tail instead of hanging. Timings are printed
//! as `vmm-report:` lines (run with `--nocapture` to see them).
//!
//! Network rule: the only NIC is a TAP inside a namespace this test
//! creates; the guest sends nothing anywhere else.
#![allow(clippy::unwrap_used)]
// a test panics to report its failure
// Test data of known, small sizes: the casts cannot lose anything.
#![allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap,
    clippy::arithmetic_side_effects
)]

use std::future::Future;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use bhatti_engine::net::{kernel_ip_arg, EgressPolicy, NetManager, SandboxNet};
use bhatti_engine::vmm::qemu::{QemuConfig, QemuDriver};
use bhatti_engine::vmm::{
    Disk, NetAttach, SnapshotFiles, SnapshotKind, Vm, VmSpec, VmState, VmmDriver, VmmError,
};

// ---------------------------------------------------------------- harness

const INIT: &str = r#"#!/bin/sh
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
for d in /sys/block/vd*; do
  n=${d##*/}
  echo "vmm-test: disk $n serial=$(cat $d/serial) ro=$(cat $d/ro) magic=$(head -c 6 /dev/$n | tr -dc 'A-Za-z0-9-')"
done
if [ -e /sys/class/net/eth0/address ]; then
  echo "vmm-test: mac $(cat /sys/class/net/eth0/address)"
fi
if [ -n "$vmmtest_fill" ]; then
  # Dirty most of guest RAM with non-zero pages (kernel argument
  # vmmtest_fill=<MiB> arrives in init's environment).
  mount -t tmpfs -o size=$((vmmtest_fill + 8))m tmpfs /tmp
  yes 0123456789abcdef | head -c 1048576 >/tmp/chunk
  n=0
  while [ $n -lt $vmmtest_fill ]; do cat /tmp/chunk; n=$((n + 1)); done >/tmp/fill
  rm /tmp/chunk
  echo "vmm-test: filled $vmmtest_fill MiB"
fi
echo "vmm-test: ready"
i=0
while :; do
  i=$((i+1))
  echo "vmm-test: hb $i"
  usleep 100000
done
"#;

const CMDLINE: &str = "console=ttyS0 reboot=k panic=1 root=/dev/vda rw init=/usr/local/bin/lohar";

struct Env {
    driver: QemuDriver,
    kernel: PathBuf,
    image: PathBuf,
}

fn guest_cache() -> PathBuf {
    std::env::var_os("BHATTI_GUEST_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/bhatti/guest"))
}

fn build_env() -> Result<Env, String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err("needs root (image build, network namespaces)".into());
    }
    let kernel = std::env::var_os("BHATTI_VMM_TEST_KERNEL")
        .map(PathBuf::from)
        .unwrap_or_else(|| guest_cache().join("vmlinux"));
    if !kernel.is_file() {
        return Err(format!(
            "guest kernel {} missing (scripts/guest/build-kernel.sh)",
            kernel.display()
        ));
    }
    let driver = QemuDriver::new(QemuConfig::default()).map_err(|e| e.to_string())?;
    if !Path::new("/bin/busybox").exists() {
        return Err("busybox-static not installed (apt-get install busybox-static)".into());
    }
    let dir = guest_cache().join("vmm-test");
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let init = dir.join("init.sh");
    if std::fs::read_to_string(&init).ok().as_deref() != Some(INIT) {
        std::fs::write(&init, INIT).expect("write init.sh");
    }
    let _ = Command::new("chmod").arg("0755").arg(&init).status();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/guest/build-rootfs.sh");
    let image = dir.join("rootfs.ext4");
    let out = Command::new("bash")
        .arg(&script)
        .arg("--lohar")
        .arg(&init)
        .arg("--out")
        .arg(&image)
        .args(["--size-mb", "64"])
        .output()
        .expect("run build-rootfs.sh");
    // A broken image build is a failure, not a skip.
    assert!(
        out.status.success(),
        "build-rootfs.sh failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    println!(
        "vmm-report: {} accel={:?} kernel={}",
        driver.version(),
        driver.accel(),
        kernel.display()
    );
    Ok(Env {
        driver,
        kernel,
        image,
    })
}

fn env() -> Result<&'static Env, String> {
    static ENV: OnceLock<Result<Env, String>> = OnceLock::new();
    ENV.get_or_init(build_env).as_ref().map_err(Clone::clone)
}

macro_rules! env_or_skip {
    () => {
        match env() {
            Ok(e) => e,
            Err(reason) => panic!("cannot run: {reason}"),
        }
    };
}

/// One test at a time: a TCG guest keeps a core busy, and the host has two.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A per-test directory with a private copy of the image.
struct Sandbox {
    tmp: tempfile::TempDir,
    spec: VmSpec,
}

fn sandbox(env: &Env, mem_mib: u32) -> Sandbox {
    let tmp = tempfile::Builder::new()
        .prefix("bvt")
        .tempdir_in("/tmp")
        .expect("tempdir");
    let root = tmp.path().join("root.ext4");
    let st = Command::new("cp")
        .arg("--sparse=always")
        .arg(&env.image)
        .arg(&root)
        .status()
        .expect("cp");
    assert!(st.success());
    let spec = VmSpec {
        id: format!("t{}", std::process::id()),
        dir: tmp.path().join("vm"),
        kernel: env.kernel.clone(),
        cmdline: CMDLINE.to_string(),
        root_disk: root,
        extra_disks: vec![],
        vcpus: 1,
        mem_mib,
        net: None,
        console_log: tmp.path().join("console.log"),
    };
    Sandbox { tmp, spec }
}

/// Owns a VM; SIGKILLs it on drop (the driver does too; this makes the
/// test's intent explicit and survives a panicking test body).
struct VmGuard(Option<Box<dyn Vm>>);

impl VmGuard {
    fn vm(&self) -> &dyn Vm {
        self.0.as_deref().expect("vm")
    }
    async fn kill(&mut self) {
        if let Some(vm) = self.0.take() {
            vm.kill().await.expect("kill");
            assert!(vm.pid().is_none());
            assert!(matches!(vm.state().await, Ok(VmState::Exited(_))));
        }
    }
}

impl Drop for VmGuard {
    fn drop(&mut self) {
        if let Some(pid) = self.0.as_ref().and_then(|vm| vm.pid()) {
            // SAFETY: plain kill(2) of our own child.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
        }
    }
}

fn read_console(path: &Path) -> String {
    String::from_utf8_lossy(&std::fs::read(path).unwrap_or_default()).into_owned()
}

fn tail(path: &Path) -> String {
    let s = read_console(path);
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// Runs a test body under a watchdog that fails with the console tail.
async fn watchdog(secs: u64, console: &Path, body: impl Future<Output = ()>) {
    if tokio::time::timeout(Duration::from_secs(secs), body)
        .await
        .is_err()
    {
        panic!(
            "watchdog: test still running after {secs} s; console tail:\n{}",
            tail(console)
        );
    }
}

/// Heartbeat numbers of all complete `vmm-test: hb N` lines.
fn heartbeats(text: &str) -> Vec<u64> {
    text.lines()
        .filter_map(|l| l.trim_end().strip_prefix("vmm-test: hb "))
        .filter_map(|n| n.parse().ok())
        .collect()
}

/// Only lines terminated by a newline count (the last one may be cut).
fn complete(text: &str) -> &str {
    match text.rfind('\n') {
        Some(i) => &text[..=i],
        None => "",
    }
}

fn last_hb(path: &Path) -> Option<u64> {
    heartbeats(complete(&read_console(path))).last().copied()
}

async fn wait_console(
    path: &Path,
    what: &str,
    timeout: Duration,
    pred: impl Fn(&str) -> bool,
) -> Duration {
    let t0 = Instant::now();
    loop {
        if pred(complete(&read_console(path))) {
            return t0.elapsed();
        }
        if t0.elapsed() > timeout {
            panic!(
                "timed out after {timeout:?} waiting for {what}; console tail:\n{}",
                tail(path)
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn wait_ready(path: &Path) -> Duration {
    wait_console(path, "vmm-test: ready", Duration::from_secs(45), |s| {
        s.lines().any(|l| l.trim_end() == "vmm-test: ready")
    })
    .await
}

async fn wait_hb_above(path: &Path, n: u64) -> u64 {
    wait_console(
        path,
        &format!("heartbeat > {n}"),
        Duration::from_secs(30),
        |s| heartbeats(s).last().is_some_and(|&h| h > n),
    )
    .await;
    last_hb(path).unwrap_or(0)
}

fn us(d: Duration) -> u128 {
    d.as_micros()
}

async fn boot(env: &Env, spec: &VmSpec) -> (VmGuard, Duration) {
    let t0 = Instant::now();
    let vm = match env.driver.boot(spec).await {
        Ok(vm) => vm,
        Err(e) => panic!("boot: {e}"),
    };
    let vm = VmGuard(Some(vm));
    wait_ready(&spec.console_log).await;
    (vm, t0.elapsed())
}

async fn restore(env: &Env, spec: &VmSpec, snap: &SnapshotFiles) -> (VmGuard, Duration) {
    let t0 = Instant::now();
    match env.driver.restore(spec, snap).await {
        Ok(vm) => (VmGuard(Some(vm)), t0.elapsed()),
        Err(e) => panic!("restore: {e}"),
    }
}

/// Pauses, snapshots into `dir`, reports; returns the snapshot and the last
/// heartbeat before the pause.
async fn pause_and_snapshot(
    vm: &dyn Vm,
    console: &Path,
    dir: &Path,
    label: &str,
) -> (SnapshotFiles, u64) {
    vm.pause().await.expect("pause");
    let last = last_hb(console).expect("a heartbeat before the snapshot");
    let t0 = Instant::now();
    let snap = vm
        .snapshot(dir, SnapshotKind::Full)
        .await
        .expect("snapshot");
    let took = t0.elapsed();
    let st = std::fs::metadata(snap.state_path()).expect("state file");
    assert_eq!(st.len(), snap.size_bytes);
    println!(
        "vmm-report: {label}: snapshot of {} MiB guest: {} ms, file {} MiB apparent, {:.1} MiB allocated, mapped_ram={}",
        snap.mem_mib,
        took.as_millis(),
        snap.size_bytes >> 20,
        (st.blocks() * 512) as f64 / (1 << 20) as f64,
        snap.mapped_ram
    );
    assert_eq!(vm.state().await.expect("state"), VmState::Paused);
    (snap, last)
}

// ------------------------------------------------------------------ tests

/// (1) Boot to the ready line, state Running, kill.
#[tokio::test]
#[cfg_attr(
    not(bhatti_vm_tests),
    ignore = "needs root and the guest kernel (scripts/guest)"
)]
async fn boot_ready_and_kill() {
    let env = env_or_skip!();
    let _serial = SERIAL.lock().await;
    let sb = sandbox(env, 256);
    let console = sb.spec.console_log.clone();
    watchdog(90, &console, async {
        let (mut vm, ready) = boot(env, &sb.spec).await;
        println!(
            "vmm-report: boot to 'vmm-test: ready' (256 MiB): {} ms",
            ready.as_millis()
        );
        assert!(vm.vm().pid().is_some());
        assert_eq!(vm.vm().state().await.expect("state"), VmState::Running);
        assert!(vm.vm().console_tail(4096).contains("vmm-test: ready"));
        // The command line got the host TSC frequency.
        assert!(read_console(&console).contains("tsc_early_khz="));
        // A second VMM for the same VM directory is refused.
        let e = env
            .driver
            .boot(&sb.spec)
            .await
            .err()
            .expect("second boot refused");
        assert!(e.to_string().contains("already serving"), "{e}");
        let t0 = Instant::now();
        vm.kill().await;
        println!("vmm-report: kill: {} ms", t0.elapsed().as_millis());
    })
    .await;
}

/// (2) Pause stops the heartbeat, resume continues it.
#[tokio::test]
#[cfg_attr(
    not(bhatti_vm_tests),
    ignore = "needs root and the guest kernel (scripts/guest)"
)]
async fn pause_and_resume() {
    let env = env_or_skip!();
    let _serial = SERIAL.lock().await;
    let sb = sandbox(env, 256);
    let console = sb.spec.console_log.clone();
    watchdog(90, &console, async {
        let (mut vm, _) = boot(env, &sb.spec).await;
        wait_hb_above(&console, 3).await;
        let mut pause_us = vec![];
        let mut resume_us = vec![];
        for _ in 0..3 {
            let t0 = Instant::now();
            vm.vm().pause().await.expect("pause");
            pause_us.push(us(t0.elapsed()));
            assert_eq!(vm.vm().state().await.expect("state"), VmState::Paused);
            let frozen = read_console(&console);
            tokio::time::sleep(Duration::from_millis(600)).await;
            assert_eq!(
                read_console(&console),
                frozen,
                "console changed while paused"
            );
            // Pausing twice is fine.
            vm.vm().pause().await.expect("second pause");
            let last = last_hb(&console).expect("hb");
            let t0 = Instant::now();
            vm.vm().resume().await.expect("resume");
            resume_us.push(us(t0.elapsed()));
            assert_eq!(vm.vm().state().await.expect("state"), VmState::Running);
            let next = wait_hb_above(&console, last).await;
            assert!(next > last);
        }
        println!(
            "vmm-report: pause (QMP stop) µs: {pause_us:?}; resume (QMP cont) µs: {resume_us:?}"
        );
        vm.kill().await;
    })
    .await;
}

/// (3) Snapshot while paused, kill, restore: the heartbeat continues from
/// where it stopped (guest memory restored), in the same console log.
#[tokio::test]
#[cfg_attr(
    not(bhatti_vm_tests),
    ignore = "needs root and the guest kernel (scripts/guest)"
)]
async fn snapshot_restore_continues_512m() {
    let env = env_or_skip!();
    let _serial = SERIAL.lock().await;
    let sb = sandbox(env, 512);
    let console = sb.spec.console_log.clone();
    watchdog(120, &console, async {
        let (mut vm, _) = boot(env, &sb.spec).await;
        wait_hb_above(&console, 5).await;
        let snap_dir = sb.tmp.path().join("snap");
        let (snap, last) = pause_and_snapshot(vm.vm(), &console, &snap_dir, "512MiB").await;
        assert_eq!(snap.mem_mib, 512);
        assert!(
            snap.allocated_bytes < snap.size_bytes,
            "state file is sparse"
        );
        vm.kill().await;
        let after_kill = read_console(&console);

        let (mut vm, took) = restore(env, &sb.spec, &snap).await;
        println!(
            "vmm-report: 512MiB: restore to running: {} ms",
            took.as_millis()
        );
        assert_eq!(vm.vm().state().await.expect("state"), VmState::Running);
        let now = wait_hb_above(&console, last + 3).await;
        let text = read_console(&console);
        assert!(
            text.starts_with(&after_kill),
            "restore appends to the console log"
        );
        let hbs = heartbeats(complete(&text));
        let expected: Vec<u64> = (1..=now).collect();
        assert_eq!(
            hbs, expected,
            "heartbeat must continue without restart or gap"
        );
        assert_eq!(
            text.matches("vmm-test: ready").count(),
            1,
            "guest did not reboot"
        );
        vm.kill().await;
    })
    .await;
}

/// (4) Repeated cycles: snapshot → restore → snapshot → restore …, each
/// restore into a fresh console and from a copy of the disk taken at
/// snapshot time (how fork works). The first snapshot's source is resumed
/// and keeps running before it is killed (the fork source's view).
#[tokio::test]
#[cfg_attr(
    not(bhatti_vm_tests),
    ignore = "needs root and the guest kernel (scripts/guest)"
)]
async fn repeated_snapshot_restore_cycles_256m() {
    let env = env_or_skip!();
    let _serial = SERIAL.lock().await;
    let sb = sandbox(env, 256);
    let console0 = sb.spec.console_log.clone();
    watchdog(150, &console0, async {
        let (mut vm, _) = boot(env, &sb.spec).await;
        let mut spec = sb.spec.clone();
        let mut total_snap = Duration::ZERO;
        let mut total_restore = Duration::ZERO;
        const CYCLES: u64 = 3;
        for cycle in 0..CYCLES {
            wait_hb_above(&spec.console_log, 3).await;
            let dir = sb.tmp.path().join(format!("snap{cycle}"));
            let t0 = Instant::now();
            let (snap, last) = pause_and_snapshot(
                vm.vm(),
                &spec.console_log,
                &dir,
                &format!("256MiB cycle {cycle}"),
            )
            .await;
            total_snap += t0.elapsed();
            let disk = dir.join("root.ext4");
            let st = Command::new("cp")
                .arg("--sparse=always")
                .arg(&spec.root_disk)
                .arg(&disk)
                .status()
                .expect("cp");
            assert!(st.success());
            if cycle == 0 {
                // The source resumes after its snapshot.
                vm.vm().resume().await.expect("resume after snapshot");
                wait_hb_above(&spec.console_log, last + 2).await;
            }
            vm.kill().await;

            spec.root_disk = disk;
            spec.console_log = sb.tmp.path().join(format!("console{}.log", cycle + 1));
            let (restored, took) = restore(env, &spec, &snap).await;
            total_restore += took;
            println!(
                "vmm-report: 256MiB cycle {cycle}: restore to running: {} ms",
                took.as_millis()
            );
            vm = restored;
            wait_hb_above(&spec.console_log, last + 2).await;
            let text = read_console(&spec.console_log);
            let hbs = heartbeats(complete(&text));
            // The first complete line is last+1, or last+2 when the pause
            // cut a line in half (its rest opens the new console).
            assert!(
                hbs.first().is_some_and(|&f| f == last + 1 || f == last + 2),
                "cycle {cycle}: expected heartbeats from {} on, got {:?}",
                last + 1,
                &hbs[..hbs.len().min(5)]
            );
            assert!(
                !text.contains("vmm-test: ready"),
                "cycle {cycle}: guest rebooted"
            );
        }
        println!(
            "vmm-report: 256MiB: {CYCLES} cycles, mean snapshot {} ms, mean restore {} ms",
            (total_snap / CYCLES as u32).as_millis(),
            (total_restore / CYCLES as u32).as_millis()
        );
        vm.kill().await;
    })
    .await;
}

/// (5) Corrupt, truncated, missing and mismatched snapshots fail with clear
/// errors, quickly, and leave no QEMU behind.
#[tokio::test]
#[cfg_attr(
    not(bhatti_vm_tests),
    ignore = "needs root and the guest kernel (scripts/guest)"
)]
async fn corrupt_snapshot_fails_cleanly() {
    let env = env_or_skip!();
    let _serial = SERIAL.lock().await;
    let sb = sandbox(env, 256);
    let console = sb.spec.console_log.clone();
    watchdog(120, &console, async {
        let (mut vm, _) = boot(env, &sb.spec).await;
        wait_hb_above(&console, 2).await;
        let good_dir = sb.tmp.path().join("good");
        let (good, _) = pause_and_snapshot(vm.vm(), &console, &good_dir, "256MiB").await;
        vm.kill().await;
        let good_bytes = std::fs::read(good.state_path()).expect("read state");

        let bad_dir = sb.tmp.path().join("bad");
        std::fs::create_dir_all(&bad_dir).expect("mkdir");
        let mut bad = good.clone();
        bad.dir = bad_dir.clone();
        let qmp_sock = sb.spec.dir.join("qmp.sock");

        let cases: Vec<(&str, Vec<u8>)> = vec![
            (
                "truncated to half",
                good_bytes[..good_bytes.len() / 2].to_vec(),
            ),
            ("truncated to 4 KiB", good_bytes[..4096].to_vec()),
            ("garbage header", {
                let mut b = good_bytes.clone();
                b[..65536].fill(0xab);
                b
            }),
            ("garbage device state", {
                // The device state follows the RAM pages: wreck the last MiB.
                let mut b = good_bytes.clone();
                let n = b.len();
                b[n.saturating_sub(1 << 20)..].fill(0x5a);
                b
            }),
        ];
        for (what, bytes) in cases {
            std::fs::write(bad.state_path(), &bytes).expect("write bad state");
            let t0 = Instant::now();
            let res = env.driver.restore(&sb.spec, &bad).await;
            let took = t0.elapsed();
            match res {
                Err(e @ VmmError::Restore { .. }) => {
                    let first = e.to_string().lines().next().unwrap_or_default().to_string();
                    println!(
                        "vmm-report: corrupt snapshot ({what}): error after {} ms: {first}",
                        took.as_millis()
                    );
                    let full = e.to_string();
                    // The QEMU stderr tail comes with it.
                    assert!(full.contains("--- VMM stderr (tail) ---"), "{full}");
                    if what == "garbage header" {
                        println!("vmm-report: the whole error:\n{full}");
                    }
                }
                Err(e) => panic!("{what}: expected a restore error, got {e}"),
                Ok(vm) => {
                    // A stream whose damage QEMU cannot detect may load;
                    // the guest is then whatever it is. Only the wrecked
                    // device state must always be caught.
                    let state = vm.state().await;
                    vm.kill().await.expect("kill");
                    panic!("{what}: restore succeeded ({state:?})");
                }
            }
            assert!(
                tokio::net::UnixStream::connect(&qmp_sock).await.is_err(),
                "{what}: a QEMU is still listening"
            );
        }

        let mut missing = good.clone();
        missing.dir = sb.tmp.path().join("nowhere");
        let e = env
            .driver
            .restore(&sb.spec, &missing)
            .await
            .err()
            .expect("missing file");
        assert!(matches!(e, VmmError::InvalidSnapshot(_)), "{e}");
        let mut spec512 = sb.spec.clone();
        spec512.mem_mib = 512;
        let e = env
            .driver
            .restore(&spec512, &good)
            .await
            .err()
            .expect("mem mismatch");
        assert!(
            matches!(e, VmmError::InvalidSnapshot(_)) && e.to_string().contains("256 MiB"),
            "{e}"
        );

        // And the good snapshot still restores.
        let (mut vm, _) = restore(env, &sb.spec, &good).await;
        assert_eq!(vm.vm().state().await.expect("state"), VmState::Running);
        vm.kill().await;
    })
    .await;
}

/// (6) Boot inside a sandbox network namespace: QEMU opens the namespace's
/// `tap0` (carrier up), the guest NIC has the given MAC.
#[tokio::test]
#[cfg_attr(
    not(bhatti_vm_tests),
    ignore = "needs root and the guest kernel (scripts/guest)"
)]
async fn boot_in_network_namespace() {
    let env = env_or_skip!();
    let _serial = SERIAL.lock().await;
    let mut sb = sandbox(env, 256);
    let console = sb.spec.console_log.clone();
    let ledger = tempfile::tempdir().expect("tempdir");
    let mgr = NetManager::scratch(ledger.path().to_path_buf()).expect("net manager");
    let fw_existed = Command::new("iptables")
        .args(["-S", &mgr.host_chain_names()[0]])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    let ip_forward = std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").ok();
    let id = format!("{:016x}", (std::process::id() as u64) << 32 | 0xbeef);
    let mac = "02:b7:7e:57:00:01";
    let net = mgr
        .setup_sandbox(&id, 250, mac, &EgressPolicy::default(), None)
        .expect("setup_sandbox");

    struct NetGuard<'a> {
        mgr: &'a NetManager,
        net: SandboxNet,
        fw_existed: bool,
        ip_forward: Option<String>,
    }
    impl Drop for NetGuard<'_> {
        fn drop(&mut self) {
            if let Err(e) = self.mgr.teardown_sandbox(&self.net) {
                eprintln!("teardown: {e}");
            }
            if !self.fw_existed {
                let _ = self.mgr.remove_host_firewall();
            }
            if let Some(v) = &self.ip_forward {
                let _ = std::fs::write("/proc/sys/net/ipv4/ip_forward", v);
            }
        }
    }
    let guard = NetGuard {
        mgr: &mgr,
        net: net.clone(),
        fw_existed,
        ip_forward,
    };

    sb.spec.net = Some(NetAttach {
        netns_path: net.netns_path(),
        tap: net.tap.clone(),
        mac: net.guest_mac.clone(),
    });
    sb.spec.cmdline = format!("{CMDLINE} ip={}", kernel_ip_arg());
    watchdog(90, &console, async {
        let (mut vm, ready) = boot(env, &sb.spec).await;
        println!(
            "vmm-report: boot in netns to ready: {} ms",
            ready.as_millis()
        );
        assert!(read_console(&console).contains(&format!("vmm-test: mac {mac}")));
        let out = Command::new("ip")
            .args(["-n", &net.netns, "link", "show", "dev", &net.tap])
            .output()
            .expect("ip link");
        let link = String::from_utf8_lossy(&out.stdout).into_owned();
        println!("vmm-report: {}", link.lines().next().unwrap_or_default());
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            link.contains("LOWER_UP") && !link.contains("NO-CARRIER"),
            "tap0 has no carrier: {link}"
        );
        // QEMU's view: the tap backend of net0.
        let vm_state = vm.vm().state().await.expect("state");
        assert_eq!(vm_state, VmState::Running);
        vm.kill().await;
        // With QEMU gone the TAP loses its carrier.
        let out = Command::new("ip")
            .args(["-n", &net.netns, "link", "show", "dev", &net.tap])
            .output()
            .expect("ip link");
        assert!(String::from_utf8_lossy(&out.stdout).contains("NO-CARRIER"));
    })
    .await;
    drop(guard);
}

/// Disk order: vda = root, then the extra disks in order (read-only flag
/// and serials as given).
#[tokio::test]
#[cfg_attr(
    not(bhatti_vm_tests),
    ignore = "needs root and the guest kernel (scripts/guest)"
)]
async fn disk_order() {
    let env = env_or_skip!();
    let _serial = SERIAL.lock().await;
    let mut sb = sandbox(env, 256);
    let console = sb.spec.console_log.clone();
    for i in 1..=3 {
        let p = sb.tmp.path().join(format!("disk{i}.img"));
        let mut b = format!("DISK-{i}").into_bytes();
        b.resize(1 << 20, 0);
        std::fs::write(&p, b).expect("disk");
        sb.spec.extra_disks.push(Disk {
            path: p,
            read_only: i == 2,
        });
    }
    watchdog(90, &console, async {
        let (mut vm, _) = boot(env, &sb.spec).await;
        let text = read_console(&console);
        for (dev, serial, ro, magic) in [
            ("vda", "root", 0, ""),
            ("vdb", "disk1", 0, "DISK-1"),
            ("vdc", "disk2", 1, "DISK-2"),
            ("vdd", "disk3", 0, "DISK-3"),
        ] {
            let line = format!("vmm-test: disk {dev} serial={serial} ro={ro} magic={magic}");
            assert!(
                text.lines().any(|l| l.trim_end() == line),
                "missing {line:?} in console:\n{}",
                tail(&console)
            );
        }
        vm.kill().await;
    })
    .await;
}

/// Snapshot and restore of a guest whose RAM is mostly dirty (384 of 512
/// MiB filled with non-zero pages): the worst case for time and size.
#[tokio::test]
#[cfg_attr(
    not(bhatti_vm_tests),
    ignore = "needs root and the guest kernel (scripts/guest)"
)]
async fn snapshot_restore_filled_memory_512m() {
    let env = env_or_skip!();
    let _serial = SERIAL.lock().await;
    let mut sb = sandbox(env, 512);
    sb.spec.cmdline = format!("{CMDLINE} vmmtest_fill=384");
    let console = sb.spec.console_log.clone();
    watchdog(150, &console, async {
        let (mut vm, ready) = boot(env, &sb.spec).await;
        assert!(read_console(&console).contains("vmm-test: filled 384 MiB"));
        println!(
            "vmm-report: 512MiB filled: boot + fill to ready {} ms",
            ready.as_millis()
        );
        wait_hb_above(&console, 2).await;
        let dir = sb.tmp.path().join("snap");
        let (snap, last) = pause_and_snapshot(vm.vm(), &console, &dir, "512MiB filled").await;
        assert!(
            snap.allocated_bytes > 384 << 20,
            "the filled pages are in the file"
        );
        vm.kill().await;
        let (mut vm, took) = restore(env, &sb.spec, &snap).await;
        println!(
            "vmm-report: 512MiB filled: restore to running: {} ms",
            took.as_millis()
        );
        let now = wait_hb_above(&console, last + 3).await;
        let hbs = heartbeats(complete(&read_console(&console)));
        assert_eq!(hbs, (1..=now).collect::<Vec<u64>>());
        vm.kill().await;
    })
    .await;
}

/// A QEMU that exits during start-up fails `boot` at once, with its stderr.
#[tokio::test]
#[cfg_attr(
    not(bhatti_vm_tests),
    ignore = "needs root and the guest kernel (scripts/guest)"
)]
async fn boot_fails_fast_when_qemu_exits() {
    let env = env_or_skip!();
    let _serial = SERIAL.lock().await;
    let mut sb = sandbox(env, 256);
    let bogus = sb.tmp.path().join("not-a-kernel");
    std::fs::write(&bogus, vec![0x42u8; 4096]).expect("write");
    sb.spec.kernel = bogus;
    let console = sb.spec.console_log.clone();
    watchdog(30, &console, async {
        let t0 = Instant::now();
        let e = env
            .driver
            .boot(&sb.spec)
            .await
            .err()
            .expect("boot must fail");
        let took = t0.elapsed();
        println!(
            "vmm-report: boot of a non-kernel failed after {} ms: {}",
            took.as_millis(),
            e.to_string().replace('\n', " | ")
        );
        assert!(matches!(e, VmmError::Boot { .. }), "{e}");
        assert!(e.to_string().contains("exited during start-up"), "{e}");
        assert!(e.to_string().contains("--- VMM stderr (tail) ---"), "{e}");
        assert!(took < Duration::from_secs(10));
    })
    .await;
}

/// `mapped_ram: false` (the fallback for QEMU < 9): a plain migration
/// stream, not sparse but compact, restores the same way.
#[tokio::test]
#[cfg_attr(
    not(bhatti_vm_tests),
    ignore = "needs root and the guest kernel (scripts/guest)"
)]
async fn snapshot_restore_without_mapped_ram() {
    let env = env_or_skip!();
    let _serial = SERIAL.lock().await;
    let driver = QemuDriver::new(QemuConfig {
        mapped_ram: false,
        ..QemuConfig::default()
    })
    .expect("driver");
    let sb = sandbox(env, 256);
    let console = sb.spec.console_log.clone();
    watchdog(90, &console, async {
        let vm = driver.boot(&sb.spec).await.expect("boot");
        let mut vm = VmGuard(Some(vm));
        wait_ready(&console).await;
        wait_hb_above(&console, 3).await;
        let dir = sb.tmp.path().join("snap");
        let (snap, last) =
            pause_and_snapshot(vm.vm(), &console, &dir, "256MiB no mapped-ram").await;
        assert!(!snap.mapped_ram);
        assert!(
            snap.size_bytes < 256 << 20,
            "a plain stream skips zero pages"
        );
        vm.kill().await;
        let t0 = Instant::now();
        let mut vm = VmGuard(Some(
            driver.restore(&sb.spec, &snap).await.expect("restore"),
        ));
        println!(
            "vmm-report: 256MiB no mapped-ram: restore to running: {} ms",
            t0.elapsed().as_millis()
        );
        let now = wait_hb_above(&console, last + 3).await;
        let hbs = heartbeats(complete(&read_console(&console)));
        assert_eq!(hbs, (1..=now).collect::<Vec<u64>>());
        vm.kill().await;
    })
    .await;
}
