//! lohar as PID 1 of a real microVM: QEMU `-M microvm` under TCG, the project's
//! guest kernel and the `minimal` rootfs, with a config drive built by
//! `mke2fs -d` (no mounting) and the agent reached over QEMU user networking's
//! `hostfwd` on loopback (`restrict=on`: the guest can reach nothing outside).
//! The user network is numbered like the guest's `ip=` (slirp is the gateway
//! 172.31.255.1): slirp only answers ARP for addresses in its own network.
//!
//! Needs `BHATTI_GUEST_KERNEL` (vmlinux), `BHATTI_GUEST_ROOTFS` (an image from
//! `scripts/guest/build-rootfs.sh --lohar <static lohar>`), `qemu-system-x86_64`
//! and `mke2fs`, and root. Without them (decided at build time, see build.rs)
//! the tests are *ignored* with the reason; if something is still missing at run
//! time they fail rather than pass untested.
//! The test names end in `_vm` so a run can select or exclude them.
//!
//! `BHATTI_GUEST_APPEND` adds kernel command-line words (e.g. `LOHAR_LOG=debug`).
//!
//! The two boots run one after the other (a shared lock): on a 2-core TCG host
//! two emulated guests at once only make both slow.
#![allow(clippy::unwrap_used)]
// a test panics to report its failure
// Test data of known, small sizes: the casts cannot lose anything.
#![allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap,
    clippy::arithmetic_side_effects
)]

use std::net::{IpAddr, Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bhatti_agent_client::{
    AgentClient, ApplyConfig, ClientError, ExecResult, ReadOptions, Transport,
};
use bhatti_protocol::config::{ConfigFile, ConfigNet, GuestConfig};

const READY: &str = "lohar: ready";
const BOOT_WATCHDOG: Duration = Duration::from_secs(60);
const GUEST_IP: &str = "172.31.255.2";
const GATEWAY: &str = "172.31.255.1";

static ONE_VM_AT_A_TIME: Mutex<()> = Mutex::new(());

fn which(cmd: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(cmd))
        .find(|p| p.is_file())
}

/// (kernel, rootfs), or why the test cannot run here.
fn artifacts() -> Result<(PathBuf, PathBuf), String> {
    let file_env = |name: &str| -> Result<PathBuf, String> {
        let v = std::env::var_os(name).ok_or_else(|| format!("{name} is not set"))?;
        let p = PathBuf::from(v);
        if p.is_file() {
            Ok(p)
        } else {
            Err(format!("{name}={} is not a file", p.display()))
        }
    };
    let kernel = file_env("BHATTI_GUEST_KERNEL")?;
    let rootfs = file_env("BHATTI_GUEST_ROOTFS")?;
    for tool in ["qemu-system-x86_64", "mke2fs"] {
        if which(tool).is_none() {
            return Err(format!("{tool} not found in PATH"));
        }
    }
    Ok((kernel, rootfs))
}

/// "2599.998" → 2599998 (the kernel prints kHz as MHz with three decimals).
fn mhz_to_khz(mhz: &str) -> Option<u64> {
    let (int, frac) = mhz.split_once('.').unwrap_or((mhz, ""));
    let frac = format!("{frac:0<3}");
    Some(int.parse::<u64>().ok()? * 1000 + frac.get(..3)?.parse::<u64>().ok()?)
}

/// The host TSC rate for `tsc_early_khz=` (same order as `host_tsc_khz` in
/// scripts/guest/lib.sh): without it a TCG guest on a loaded host can hang in
/// TSC calibration.
fn host_tsc_khz() -> Option<u64> {
    if let Some(v) = std::env::var("BHATTI_TSC_KHZ")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        return Some(v);
    }
    if let Some(v) = std::fs::read_to_string("/sys/devices/system/cpu/cpu0/tsc_freq_khz")
        .ok()
        .and_then(|v| v.trim().parse().ok())
    {
        return Some(v);
    }
    let out = Command::new("dmesg").output().ok()?;
    let log = String::from_utf8_lossy(&out.stdout);
    let find = |marker: &str| {
        // The last such line wins (a later calibration refines an earlier one).
        log.lines()
            .rev()
            .find_map(|l| l.split(marker).nth(1)?.split_whitespace().next())
            .and_then(mhz_to_khz)
    };
    find("Refined TSC clocksource calibration: ").or_else(|| find("tsc: Detected "))
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free loopback port")
}

/// A booted guest; QEMU is killed when this is dropped.
struct Vm {
    child: Child,
    dir: tempfile::TempDir,
    console: PathBuf,
    control: u16,
    forward: u16,
    booted_in: Duration,
}

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Vm {
    /// Boots with `cfg` on the config drive. With `kernel_ip` the kernel
    /// configures eth0 from `ip=`; without it lohar must do it from `cfg.net`.
    fn boot(kernel: &Path, rootfs: &Path, cfg: &GuestConfig, kernel_ip: bool) -> Vm {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("root.ext4");
        let st = Command::new("cp")
            .arg("--sparse=always")
            .arg(rootfs)
            .arg(&root)
            .status()
            .expect("cp");
        assert!(st.success(), "copying the rootfs failed");

        let cfg_dir = dir.path().join("cfg");
        std::fs::create_dir(&cfg_dir).expect("mkdir cfg");
        std::fs::write(
            cfg_dir.join("config.json"),
            serde_json::to_vec(cfg).expect("config json"),
        )
        .expect("write config.json");
        let cfg_img = dir.path().join("cfg.ext4");
        let out = Command::new("mke2fs")
            .args(["-t", "ext4", "-d"])
            .arg(&cfg_dir)
            .args(["-F", "-q"])
            .arg(&cfg_img)
            .arg("4M")
            .output()
            .expect("mke2fs");
        assert!(
            out.status.success(),
            "mke2fs: {}",
            String::from_utf8_lossy(&out.stderr)
        );

        let console = dir.path().join("console.log");
        let (control, forward) = (free_port(), free_port());
        let mut append =
            "console=ttyS0 reboot=k panic=1 root=/dev/vda rw init=/usr/local/bin/lohar".to_string();
        if kernel_ip {
            append.push_str(&format!(
                " ip={GUEST_IP}::{GATEWAY}:255.255.255.252::eth0:off"
            ));
        }
        // Extra kernel arguments for debugging, e.g. `LOHAR_LOG=debug` (the kernel
        // hands unknown `KEY=value` words to init as environment).
        if let Ok(extra) = std::env::var("BHATTI_GUEST_APPEND") {
            append.push(' ');
            append.push_str(&extra);
        }
        match host_tsc_khz() {
            Some(khz) => append.push_str(&format!(" tsc_early_khz={khz}")),
            None => eprintln!("warning: host TSC rate unknown; booting without tsc_early_khz"),
        }
        // The first virtio-blk device becomes vda (root), the second vdb (config).
        let drive = |id: &str, file: &Path, extra: &str| {
            format!("id={id},file={},format=raw,if=none{extra}", file.display())
        };
        let qemu_log = std::fs::File::create(dir.path().join("qemu.log")).expect("qemu.log");
        let qemu_err = qemu_log.try_clone().expect("dup");
        let started = Instant::now();
        let child = Command::new("qemu-system-x86_64")
            .args([
                "-M",
                "microvm,pic=off,rtc=on",
                "-accel",
                "tcg",
                "-cpu",
                "max",
            ])
            .args(["-m", "512", "-smp", "1", "-nodefaults", "-no-user-config"])
            .args(["-nographic", "-no-reboot"])
            .arg("-serial")
            .arg(format!("file:{}", console.display()))
            .arg("-kernel")
            .arg(kernel)
            .args(["-append", &append])
            .args(["-drive", &drive("root", &root, "")])
            .args(["-device", "virtio-blk-device,drive=root"])
            .args(["-drive", &drive("cfg", &cfg_img, ",readonly=on")])
            .args(["-device", "virtio-blk-device,drive=cfg"])
            .arg("-netdev")
            .arg(format!(
                "user,id=n0,restrict=on,net=172.31.255.0/24,host={GATEWAY},\
                 hostfwd=tcp:127.0.0.1:{control}-{GUEST_IP}:1024,\
                 hostfwd=tcp:127.0.0.1:{forward}-{GUEST_IP}:1025"
            ))
            .args(["-device", "virtio-net-device,netdev=n0"])
            .stdin(Stdio::null())
            .stdout(qemu_log)
            .stderr(qemu_err)
            .spawn()
            .expect("spawn qemu-system-x86_64");
        let mut vm = Vm {
            child,
            dir,
            console,
            control,
            forward,
            booted_in: Duration::ZERO,
        };
        if !vm.wait_console(READY, BOOT_WATCHDOG) {
            panic!(
                "no `{READY}` within {BOOT_WATCHDOG:?} (qemu: {:?})\nqemu log:\n{}\nconsole tail:\n{}",
                vm.child.try_wait(),
                std::fs::read_to_string(vm.dir.path().join("qemu.log")).unwrap_or_default(),
                vm.tail(40)
            );
        }
        vm.booted_in = started.elapsed();
        vm
    }

    fn console_text(&self) -> String {
        std::fs::read(&self.console)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    fn tail(&self, n: usize) -> String {
        let text = self.console_text();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Waits until a console line equals `line`; false on timeout or QEMU exit.
    fn wait_console(&mut self, line: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.console_text().lines().any(|l| l.trim_end() == line) {
                return true;
            }
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return self.console_text().lines().any(|l| l.trim_end() == line);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(st)) = self.child.try_wait() {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        None
    }

    fn client(&self, token: Option<&str>) -> AgentClient {
        AgentClient::new(
            Transport::TcpPorts {
                addr: IpAddr::V4(Ipv4Addr::LOCALHOST),
                control: self.control,
                forward: self.forward,
            },
            token.map(String::from),
        )
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

async fn sh(c: &AgentClient, script: &str) -> ExecResult {
    let r = c
        .exec(["sh", "-c", script])
        .await
        .unwrap_or_else(|e| panic!("exec {script:?}: {e}"));
    r
}

async fn sh_ok(c: &AgentClient, script: &str) -> String {
    let r = sh(c, script).await;
    assert_eq!(
        r.exit_code,
        0,
        "{script:?} failed: stdout {:?} stderr {:?}",
        r.stdout_str(),
        r.stderr_str()
    );
    r.stdout_str().trim().to_string()
}

/// Zombies whose parent is PID 1, as `pid comm` lines (empty when none).
const ZOMBIES_OF_INIT: &str =
    "cat /proc/[0-9]*/stat 2>/dev/null | awk '$3 == \"Z\" && $4 == 1 { print $1, $2 }'";

async fn wait_no_init_zombies(c: &AgentClient, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let z = sh_ok(c, ZOMBIES_OF_INIT).await;
        if z.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "zombies reparented to PID 1 were not reaped: {z}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[test]
#[cfg_attr(
    not(bhatti_guest_vm_tests),
    ignore = "needs root, BHATTI_GUEST_KERNEL and BHATTI_GUEST_ROOTFS (scripts/test.sh sets them)"
)]
fn guest_agent_vm() {
    let (kernel, rootfs) = match artifacts() {
        Ok(a) => a,
        Err(why) => panic!("cannot run: {why}"),
    };
    let _one = ONE_VM_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let t0 = Instant::now();
    let token = "0123456789abcdef0123456789abcdef";
    let cfg = GuestConfig {
        sandbox_id: "vmtest-1".into(),
        hostname: "vmtest".into(),
        token: token.into(),
        env: [("FOO".to_string(), "bar".to_string())].into(),
        files: [(
            "/home/lohar/hello.txt".to_string(),
            ConfigFile {
                content: "aGVsbG8gZnJvbSB0aGUgY29uZmlnIGRyaXZlCg==".into(),
                mode: "0640".into(),
            },
        )]
        .into(),
        init: "echo init-ok; sleep 600".into(),
        ..GuestConfig::default()
    };
    let vm = Vm::boot(&kernel, &rootfs, &cfg, true);
    eprintln!(
        "guest printed `{READY}` {:?} after QEMU started",
        vm.booted_in
    );
    let rt = runtime();
    rt.block_on(async {
        let c = vm.client(Some(token));
        let attempts = c
            .wait_ready(Duration::from_secs(30))
            .await
            .unwrap_or_else(|e| panic!("wait_ready: {e}\nconsole:\n{}", vm.tail(30)));
        eprintln!("wait_ready succeeded after {attempts} attempt(s)");
        for bad in [Some("wrong-token"), None] {
            let r = vm.client(bad).wait_ready(Duration::from_secs(5)).await;
            assert!(
                matches!(r, Err(ClientError::Auth)),
                "token {bad:?} must be rejected, got {r:?}"
            );
        }

        // Identity, hostname, config env, DNS.
        assert_eq!(sh_ok(&c, "id -u").await, "1000");
        assert_eq!(sh_ok(&c, "id -g").await, "1000");
        assert_eq!(sh_ok(&c, "hostname").await, "vmtest");
        assert_eq!(sh_ok(&c, "echo $FOO").await, "bar");
        assert_eq!(sh_ok(&c, "echo $HOME").await, "/home/lohar");
        assert_eq!(sh_ok(&c, "pwd").await, "/");
        assert!(sh_ok(&c, "cat /etc/hosts")
            .await
            .lines()
            .any(|l| l.split_whitespace().eq(["127.0.1.1", "vmtest"])));
        assert_eq!(sh_ok(&c, "cat /etc/mailname").await, "vmtest");
        assert_eq!(
            sh_ok(&c, "cat /etc/resolv.conf").await,
            "nameserver 1.1.1.1\nnameserver 8.8.8.8"
        );
        // The env file is root-only: the sandbox user sees it but cannot read it.
        assert_eq!(
            sh_ok(&c, "stat -c '%u %a' /run/bhatti/config-env").await,
            "0 600"
        );

        // The config file: content, mode, owner.
        assert_eq!(
            sh_ok(&c, "cat /home/lohar/hello.txt").await,
            "hello from the config drive"
        );
        assert_eq!(
            sh_ok(&c, "stat -c '%u:%g %a' /home/lohar/hello.txt").await,
            "1000:1000 640"
        );

        // The config drive is gone and its device unreadable for the user.
        let mounts = sh_ok(&c, "cat /proc/mounts").await;
        assert!(
            !mounts.contains("/run/bhatti/config"),
            "config drive still mounted:\n{mounts}"
        );
        assert!(mounts
            .lines()
            .any(|l| l.starts_with("/dev/root / ext4") || l.starts_with("/dev/vda / ext4")));
        for fs in [
            "proc /proc",
            "sysfs /sys",
            "devpts /dev/pts",
            "tmpfs /tmp",
            "tmpfs /run",
        ] {
            assert!(mounts.contains(fs), "{fs} not mounted:\n{mounts}");
        }
        assert!(mounts.contains("cgroup2 /sys/fs/cgroup"), "{mounts}");
        assert_eq!(
            sh(&c, "test -e /run/bhatti/config").await.exit_code,
            1,
            "mount point must be removed"
        );
        assert_ne!(sh(&c, "head -c1 /dev/vdb >/dev/null").await.exit_code, 0);
        assert_eq!(sh_ok(&c, "stat -c %a /tmp").await, "1777");
        assert_eq!(sh_ok(&c, "readlink /dev/ptmx").await, "pts/ptmx");
        let ctl = sh_ok(&c, "cat /sys/fs/cgroup/cgroup.subtree_control").await;
        for ctrl in ["cpu", "memory", "io", "pids"] {
            assert!(
                ctl.split_whitespace().any(|x| x == ctrl),
                "{ctrl} not in {ctl:?}"
            );
        }
        assert_eq!(
            sh_ok(&c, "cat /sys/class/net/lo/operstate").await,
            "unknown"
        );
        assert_eq!(sh(&c, "test -d /run/bhatti/services").await.exit_code, 0);

        // Boot timing was recorded.
        let timing = c
            .file_read_to_vec("/run/bhatti/boot-timing.txt", ReadOptions::default())
            .await
            .expect("boot timing");
        let timing = String::from_utf8_lossy(&timing).into_owned();
        eprintln!("guest boot timing:\n{timing}");
        assert!(timing.contains("ready_ms="), "{timing}");

        // The init session runs, is listed, and its scrollback has its output.
        let sessions = c.session_list().await.expect("session list");
        let init = sessions
            .iter()
            .find(|s| s.session_id == "init")
            .unwrap_or_else(|| panic!("no init session in {sessions:?}"));
        assert!(init.running && init.tty, "{init:?}");
        let (_, mut term) = c.attach("init", false).await.expect("attach init");
        let mut seen = Vec::new();
        let found = tokio::time::timeout(Duration::from_secs(10), async {
            while let Ok(Some(chunk)) = term.read().await {
                seen.extend_from_slice(&chunk);
                if String::from_utf8_lossy(&seen).contains("init-ok") {
                    return true;
                }
            }
            false
        })
        .await;
        assert_eq!(
            found,
            Ok(true),
            "init scrollback: {:?}",
            String::from_utf8_lossy(&seen)
        );
        drop(term);

        // Files over the protocol: ~1 MiB, so the write is spliced from the
        // guest's TCP socket and the read sent with sendfile, as the user.
        let payload = b"written through the agent\n".repeat(40_000);
        c.file_write_bytes("/home/lohar/sub/dir/written.txt", "0600", &payload)
            .await
            .expect("file write");
        let back = c
            .file_read_to_vec("/home/lohar/sub/dir/written.txt", ReadOptions::default())
            .await
            .expect("file read");
        assert_eq!(back, payload);
        assert_eq!(
            sh_ok(&c, "stat -c '%u %a' /home/lohar/sub/dir/written.txt").await,
            "1000 600"
        );

        // sync after exec: 16 MiB written without fsync are on disk (no longer
        // dirty) by the time the exec's EXIT arrives. With 512 MiB of RAM the
        // kernel would otherwise keep them dirty for up to 30 s.
        sh_ok(
            &c,
            "dd if=/dev/zero of=/workspace/big bs=1M count=16 2>/dev/null",
        )
        .await;
        let dirty = sh_ok(&c, "awk '/^Dirty:/ { print $2 }' /proc/meminfo").await;
        let dirty_kb: u64 = dirty.parse().expect("Dirty kB");
        assert!(dirty_kb < 4096, "{dirty_kb} kB still dirty after exec");
        sh_ok(&c, "rm -f /workspace/big").await;

        // Detached exec: returns at once, output lands in the file.
        let info = c
            .exec_detached(
                vec![
                    "sh".into(),
                    "-c".into(),
                    "sleep 0.5; echo detached-ok; id -u".into(),
                ],
                Some("/tmp/detached.log".into()),
            )
            .await
            .expect("detached exec");
        assert!(info.pid > 1, "{info:?}");
        assert_eq!(info.output_file, "/tmp/detached.log");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let out = c
                .file_read_to_vec("/tmp/detached.log", ReadOptions::default())
                .await
                .unwrap_or_default();
            if String::from_utf8_lossy(&out) == "detached-ok\n1000\n" {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "detached output: {:?}",
                String::from_utf8_lossy(&out)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }

        // An orphan: the subshell outlives its parent, is reparented to PID 1,
        // exits a second later, and must not stay a zombie.
        let pid = sh_ok(&c, "(sleep 1; exit 3) >/dev/null 2>&1 & echo $!").await;
        let stat = sh_ok(&c, &format!("cat /proc/{pid}/stat")).await;
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1).map(String::from));
        assert_eq!(ppid.as_deref(), Some("1"), "orphan not reparented: {stat}");
        let deadline = Instant::now() + Duration::from_secs(8);
        while sh(&c, &format!("test -e /proc/{pid}")).await.exit_code == 0 {
            assert!(
                Instant::now() < deadline,
                "orphan {pid} never reaped: {}",
                sh_ok(&c, &format!("cat /proc/{pid}/stat")).await
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }

        // lohar's own child can sit as a zombie with parent PID 1 for a while:
        // a one-shot exec waits for it only after its output pipes close, and
        // here a background grandchild holds them open for 2 s. A reaper that
        // collected every zombie of PID 1 would take its status, and the exec
        // would lose its code.
        let started = Instant::now();
        let r = sh(&c, "(sleep 2) & exit 7").await;
        assert_eq!(r.exit_code, 7, "stderr {:?}", r.stderr_str());
        assert!(started.elapsed() >= Duration::from_secs(2));

        // The reaper never steals lohar's own children: 40 orphans exit over
        // ~1 s while 8 execs, lohar's own children, finish in the same window;
        // every exec must keep its exit code. The execs connect 100 ms apart
        // because QEMU's hostfwd listens with a backlog of 1 and resets bursts
        // of simultaneous connects before they ever reach the guest.
        c.exec_detached(
            vec![
                "sh".into(),
                "-c".into(),
                "i=0; while [ $i -lt 40 ]; do (sleep 1.$((i % 10))) & i=$((i+1)); done".into(),
            ],
            Some("/tmp/storm.log".into()),
        )
        .await
        .expect("orphan storm");
        let execs: Vec<_> = (0..8)
            .map(|i| {
                let c = c.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(100 * i as u64)).await;
                    c.exec(["sh", "-c", &format!("sleep 1; exit {}", 40 + i)])
                        .await
                        .map(|r| (i, r.exit_code))
                })
            })
            .collect();
        for h in execs {
            let (i, code) = h
                .await
                .expect("join")
                .unwrap_or_else(|e| panic!("exec during storm: {e}\nconsole:\n{}", vm.tail(40)));
            assert_eq!(code, 40 + i, "exec {i} lost its exit code");
        }
        wait_no_init_zombies(&c, Duration::from_secs(8)).await;
        assert_eq!(
            sh_ok(&c, "echo still; exit 0").await,
            "still",
            "agent still serving after the storm"
        );

        // Claiming a booted guest (a pooled VM, a template restore): the
        // applied configuration sets the hostname as root, writes the
        // user's files, credits the entropy to the kernel, adds env, and
        // replaces the token.
        use base64::Engine as _;
        let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
        let before = sh_ok(&c, "cat /proc/sys/kernel/random/entropy_avail").await;
        let new_token = "f".repeat(64);
        let r = c
            .apply_config(&ApplyConfig {
                hostname: "claimed".into(),
                env: [("CLAIMED".to_string(), "yes".to_string())].into(),
                files: [(
                    "/home/lohar/claimed/note".to_string(),
                    ConfigFile {
                        content: b64(b"mine\n"),
                        mode: "0600".into(),
                    },
                )]
                .into(),
                token: new_token.clone(),
                entropy: b64(&[0x5a; 64]),
                init: String::new(),
                // The MAC's change is the engine suites' (tests/pools.rs):
                // this guest's user-mode network is not a sandbox's.
                mac: String::new(),
                unix_time_ms: u64::try_from(
                    std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .unwrap()
                        .as_millis(),
                )
                .unwrap(),
            })
            .await
            .unwrap_or_else(|e| panic!("apply_config: {e}\nconsole:\n{}", vm.tail(30)));
        assert!(r.hostname && r.token && r.clock, "{r:?}");
        assert_eq!((r.files, r.env, r.entropy_bytes), (1, 1, 64), "{r:?}");
        assert!(
            matches!(c.exec(["true"]).await, Err(ClientError::Auth)),
            "the boot token is refused after the claim"
        );
        let c = vm.client(Some(&new_token));
        assert_eq!(sh_ok(&c, "hostname; echo $CLAIMED").await, "claimed\nyes");
        assert!(
            sh_ok(&c, "cat /run/bhatti/boot-timing.txt")
                .await
                .contains("config_applied_ms="),
            "the claim is recorded beside the boot phases"
        );
        assert_eq!(
            sh_ok(
                &c,
                "stat -c '%u %a' /home/lohar/claimed/note; cat /home/lohar/claimed/note"
            )
            .await,
            "1000 600\nmine"
        );
        eprintln!(
            "entropy_avail before the claim {before}, after {}",
            sh_ok(&c, "cat /proc/sys/kernel/random/entropy_avail").await
        );
    });
    eprintln!("guest_agent_vm: {:?} in total", t0.elapsed());
    // `vm` drops here: QEMU is killed.
}

#[test]
#[cfg_attr(
    not(bhatti_guest_vm_tests),
    ignore = "needs root, BHATTI_GUEST_KERNEL and BHATTI_GUEST_ROOTFS (scripts/test.sh sets them)"
)]
fn guest_root_poweroff_vm() {
    let (kernel, rootfs) = match artifacts() {
        Ok(a) => a,
        Err(why) => panic!("cannot run: {why}"),
    };
    let _one = ONE_VM_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let t0 = Instant::now();
    let token = "fedcba9876543210fedcba9876543210";
    let cfg = GuestConfig {
        token: token.into(),
        user: "root".into(),
        env: [("ROOTVAR".to_string(), "two words".to_string())].into(),
        dns: vec!["9.9.9.9".into()],
        // No `ip=` on this boot's command line: lohar configures eth0 itself.
        net: Some(ConfigNet {
            address: format!("{GUEST_IP}/30"),
            gateway: GATEWAY.into(),
        }),
        ..GuestConfig::default()
    };
    let mut vm = Vm::boot(&kernel, &rootfs, &cfg, false);
    let rt = runtime();
    rt.block_on(async {
        let c = vm.client(Some(token));
        c.wait_ready(Duration::from_secs(30))
            .await
            .unwrap_or_else(|e| panic!("wait_ready: {e}\nconsole:\n{}", vm.tail(30)));
        // Reaching the agent at all proved the address; the default route too.
        assert!(
            !sh_ok(&c, "cat /proc/cmdline").await.contains("ip="),
            "this boot must not use the kernel's IP autoconfiguration"
        );
        let routes = sh_ok(&c, "cat /proc/net/route").await;
        assert!(
            routes.lines().any(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                f.len() > 7 && f[0] == "eth0" && f[1] == "00000000" && f[2] == "01FF1FAC"
            }),
            "no default route via {GATEWAY}:\n{routes}"
        );
        assert_eq!(sh_ok(&c, "id -u").await, "0");
        assert_eq!(sh_ok(&c, "echo $HOME").await, "/root");
        assert_eq!(sh_ok(&c, "hostname").await, "bhatti");
        assert_eq!(
            sh_ok(&c, "cat /etc/resolv.conf").await,
            "nameserver 9.9.9.9"
        );
        assert_eq!(
            sh_ok(&c, "cat /run/bhatti/config-env").await,
            "ROOTVAR=\"two words\""
        );
        // No init in the config: no init session.
        assert!(c.session_list().await.expect("list").is_empty());
        // SIGTERM to PID 1 = sync + power off. The exec itself may or may not
        // get its EXIT out before the VM is gone.
        let _ = tokio::time::timeout(Duration::from_secs(5), c.exec(["kill", "-TERM", "1"])).await;
    });
    let st = vm.wait_exit(Duration::from_secs(30));
    assert!(
        st.is_some(),
        "QEMU did not exit after SIGTERM to PID 1; console:\n{}",
        vm.tail(20)
    );
    let console = vm.console_text();
    assert!(
        console.contains("lohar: powering off (SIGTERM)"),
        "console:\n{}",
        vm.tail(20)
    );
    assert!(
        !console.contains("Kernel panic"),
        "console:\n{}",
        vm.tail(20)
    );
    eprintln!("guest_root_poweroff_vm: {:?} in total", t0.elapsed());
}

/// The agent's error text, or a panic naming what was expected.
fn agent_refusal<T: std::fmt::Debug>(what: &str, r: Result<T, ClientError>) -> String {
    match r {
        Err(ClientError::Agent { message: m, .. }) => m,
        other => panic!("{what}: expected the agent to refuse, got {other:?}"),
    }
}

/// The attacker probe against a real guest: code running as uid 1000 plants
/// symlinks where the agent (root, PID 1) will write, read or open an output
/// file for the host. The agent acts with uid 1000's credentials, so nothing
/// the user could not touch is touched. Also the boot-time hardening sysctls.
#[test]
#[cfg_attr(
    not(bhatti_guest_vm_tests),
    ignore = "needs root, BHATTI_GUEST_KERNEL and BHATTI_GUEST_ROOTFS (scripts/test.sh sets them)"
)]
fn guest_file_creds_and_hardening_vm() {
    let (kernel, rootfs) = match artifacts() {
        Ok(a) => a,
        Err(why) => panic!("cannot run: {why}"),
    };
    let _one = ONE_VM_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let t0 = Instant::now();
    let token = "00112233445566778899aabbccddeeff";
    let cfg = GuestConfig {
        token: token.into(),
        ..GuestConfig::default()
    };
    let vm = Vm::boot(&kernel, &rootfs, &cfg, true);
    let rt = runtime();
    rt.block_on(async {
        let c = vm.client(Some(token));
        c.wait_ready(Duration::from_secs(30))
            .await
            .unwrap_or_else(|e| panic!("wait_ready: {e}\nconsole:\n{}", vm.tail(30)));
        assert_eq!(sh_ok(&c, "id -u").await, "1000");

        // Hardening, in place before any user code ran.
        for (sysctl, want) in [
            ("kernel/dmesg_restrict", "1"),
            ("kernel/kptr_restrict", "2"),
            ("user/max_user_namespaces", "0"),
            ("fs/protected_symlinks", "1"),
            ("fs/protected_hardlinks", "1"),
            ("fs/protected_fifos", "1"),
            ("fs/protected_regular", "2"),
        ] {
            assert_eq!(
                sh_ok(&c, &format!("cat /proc/sys/{sysctl}")).await,
                want,
                "{sysctl}"
            );
        }
        assert_ne!(
            sh(&c, "dmesg >/dev/null 2>&1").await.exit_code,
            0,
            "the kernel log is root's"
        );
        let userns = sh_ok(
            &c,
            "if command -v unshare >/dev/null; then \
               unshare -U true 2>/dev/null && echo allowed || echo refused; \
             else echo absent; fi",
        )
        .await;
        assert_ne!(userns, "allowed", "user namespaces must be off");

        // What the probe aims at, before.
        let targets = "stat -c '%n %u:%g %a %s %Y' /dev/vdb /etc/shadow /etc/hostname /etc";
        let before = sh_ok(&c, targets).await;
        // The probe: guest code plants symlinks in its own home.
        sh_ok(
            &c,
            "cd /home/lohar && ln -s /dev/vdb n.txt.bhatti-tmp && \
             ln -s /etc/shadow s.txt.bhatti-tmp && ln -s /etc/hostname h.txt && \
             ln -s /etc etc-link && ln -s /dev/vdb out.log",
        )
        .await;

        // The owner's ordinary writes land in fresh files owned by the user.
        for (path, content) in [
            ("/home/lohar/n.txt", "n\n"),
            ("/home/lohar/s.txt", "s\n"),
            ("/home/lohar/h.txt", "h\n"),
        ] {
            c.file_write_bytes(path, "0644", content.as_bytes())
                .await
                .unwrap_or_else(|e| panic!("write {path}: {e}"));
            assert_eq!(
                sh_ok(&c, &format!("stat -c '%F %u:%g' {path}; cat {path}")).await,
                format!("regular file 1000:1000\n{}", content.trim_end())
            );
        }
        // Through a symlinked parent, or straight at a root file: refused.
        for path in ["/home/lohar/etc-link/evil", "/etc/shadow", "/etc/hostname"] {
            let m = agent_refusal(path, c.file_write_bytes(path, "", b"pwned\n").await);
            assert!(m.contains("Permission denied"), "{path}: {m}");
        }
        // Reads through the plants, and of the config drive: refused.
        for path in ["/home/lohar/s.txt.bhatti-tmp", "/etc/shadow", "/dev/vdb"] {
            let m = agent_refusal(path, c.file_read_to_vec(path, ReadOptions::default()).await);
            assert!(
                m.contains("Permission denied") || m.contains("not a regular file"),
                "{path}: {m}"
            );
        }
        // A detached exec's output file behind a symlink, or climbing out: refused.
        for out in ["/home/lohar/out.log", "/home/lohar/../../etc/x"] {
            let m = agent_refusal(
                out,
                c.exec_detached(vec!["true".into()], Some(out.into()))
                    .await
                    .map(|i| i.pid),
            );
            assert!(
                m.contains("symbolic link") || m.contains("'..'"),
                "{out}: {m}"
            );
        }
        // Nothing the probe aimed at changed: content size, mode, owner, mtime.
        assert_eq!(sh_ok(&c, targets).await, before);
        assert_eq!(sh(&c, "test -e /etc/evil").await.exit_code, 1);

        // Pseudo files report the length they send.
        let mut out = Vec::new();
        let (head, n) = c
            .file_read("/proc/self/status", ReadOptions::default(), &mut out)
            .await
            .expect("read /proc/self/status");
        assert!(!out.is_empty());
        assert_eq!((head.size, n), (out.len() as i64, out.len() as u64));
        let m = agent_refusal(
            "/proc/kcore",
            c.file_read_to_vec("/proc/kcore", ReadOptions::default())
                .await,
        );
        assert!(m.contains("Permission denied"), "{m}");
    });
    eprintln!(
        "guest_file_creds_and_hardening_vm: {:?} in total",
        t0.elapsed()
    );
}

/// The systemd substitute in a real guest, with real cgroups: a unit
/// enabled for boot starts at boot; a started unit's processes (a
/// background child included) are all in its cgroup with its limits, and
/// `stop` empties and removes that cgroup.
#[test]
#[cfg_attr(
    not(bhatti_guest_vm_tests),
    ignore = "needs root, BHATTI_GUEST_KERNEL and BHATTI_GUEST_ROOTFS (scripts/test.sh sets them)"
)]
fn services_with_cgroups_vm() {
    let (kernel, rootfs) = match artifacts() {
        Ok(a) => a,
        Err(why) => panic!("cannot run: {why}"),
    };
    let _one = ONE_VM_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let token = "00112233445566778899aabbccddeeff";
    let b64 = |s: &str| base64::Engine::encode(&base64::engine::general_purpose::STANDARD, s);
    let boot_unit = "[Unit]\nDescription=Boot unit\n[Service]\nExecStart=/bin/sh -c 'echo booted > /run/boot-unit; exec sleep 1000'\n";
    let crashy =
        "[Service]\nExecStart=/bin/sh -c 'echo x >> /run/crashes; exit 3'\nRestart=always\n";
    let noexec = "[Unit]\nDescription=No command\n[Service]\nUser=root\n";
    let cyc_a = "[Unit]\nAfter=cyc-b.service\n[Service]\nExecStart=/bin/sleep 1000\n";
    let cyc_b = "[Unit]\nAfter=cyc-a.service\n[Service]\nExecStart=/bin/sleep 1000\n";
    let file = |content: &str| ConfigFile {
        content: b64(content),
        mode: "0644".into(),
    };
    let cfg = GuestConfig {
        token: token.into(),
        user: "root".into(),
        files: [
            ("/etc/systemd/system/boot.service".to_string(), file(boot_unit)),
            (
                "/etc/systemd/system/multi-user.target.wants/boot.service".to_string(),
                file(boot_unit),
            ),
            (
                "/etc/systemd/system/syntax.service".to_string(),
                file("[Service]\nExecStart=/bin/true\nnot a setting\n"),
            ),
            (
                "/etc/systemd/system/multi-user.target.wants/syntax.service".to_string(),
                file("[Service]\nExecStart=/bin/true\nnot a setting\n"),
            ),
            (
                "/etc/systemd/system/crashy.service".to_string(),
                file(crashy),
            ),
            (
                "/etc/systemd/system/multi-user.target.wants/crashy.service".to_string(),
                file(crashy),
            ),
            (
                "/etc/systemd/system/noexec.service".to_string(),
                file(noexec),
            ),
            (
                "/etc/systemd/system/multi-user.target.wants/noexec.service".to_string(),
                file(noexec),
            ),
            (
                "/etc/systemd/system/cyc-a.service".to_string(),
                file(cyc_a),
            ),
            (
                "/etc/systemd/system/multi-user.target.wants/cyc-a.service".to_string(),
                file(cyc_a),
            ),
            (
                "/etc/systemd/system/cyc-b.service".to_string(),
                file(cyc_b),
            ),
            (
                "/etc/systemd/system/multi-user.target.wants/cyc-b.service".to_string(),
                file(cyc_b),
            ),
            (
                "/etc/systemd/system/sl.service".to_string(),
                file("[Service]\nType=oneshot\nExecStart=/bin/sh -c 'logger -t anytag from-the-unit'\n"),
            ),
            (
                "/etc/bhatti/init.sh".to_string(),
                file("echo PROFILE_VAR=from-profile >> /run/bhatti/env\n"),
            ),
            (
                "/etc/systemd/system/tree.service".to_string(),
                file("[Service]\nExecStart=/bin/sh -c 'sleep 1001 & sleep 1002 & wait'\nMemoryMax=32M\nTasksMax=50\n"),
            ),
        ]
        .into(),
        ..GuestConfig::default()
    };
    let vm = Vm::boot(&kernel, &rootfs, &cfg, true);
    let rt = runtime();
    rt.block_on(async {
        let c = vm.client(Some(token));
        c.wait_ready(Duration::from_secs(30))
            .await
            .unwrap_or_else(|e| panic!("wait_ready: {e}\nconsole:\n{}", vm.tail(30)));
        let deadline = Instant::now() + Duration::from_secs(20);
        while sh(&c, "test -f /run/boot-unit").await.exit_code != 0 {
            assert!(
                Instant::now() < deadline,
                "boot unit never ran: {}",
                sh(&c, "systemctl status boot; cat /run/bhatti/boot-timing.txt")
                    .await
                    .stdout_str()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert_eq!(sh_ok(&c, "systemctl is-active boot").await, "active");
        // Bad units say why, and did not keep `boot` down.
        let deadline = Instant::now() + Duration::from_secs(20);
        while sh(&c, "systemctl is-failed crashy").await.exit_code != 0 {
            assert!(Instant::now() < deadline, "crash loop never stopped: {}", sh(&c, "systemctl status crashy").await.stdout_str());
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let st = sh(&c, "systemctl status crashy").await.stdout_str();
        assert!(st.contains("start-limit-hit") && st.contains("Start request repeated too quickly"), "{st}");
        assert_eq!(sh_ok(&c, "wc -l < /run/crashes").await, "5");
        let st = sh(&c, "systemctl status syntax").await.stdout_str();
        assert!(st.contains("syntax.service:3: expected KEY=VALUE"), "{st}");
        let st = sh(&c, "systemctl status noexec").await.stdout_str();
        assert!(st.contains("no ExecStart= setting"), "{st}");
        for u in ["cyc-a", "cyc-b"] {
            let st = sh(&c, &format!("systemctl status {u}")).await.stdout_str();
            assert!(st.contains("Active: active (running)"), "{st}");
            assert!(st.contains("ordering cycle") && st.contains("cyc-a.service → cyc-b.service"), "{st}");
        }
        let timing = sh_ok(&c, "cat /run/bhatti/boot-timing.txt").await;
        assert!(timing.contains("units_started_ms="), "{timing}");
        // The boot profile ran, and what it put in /run/bhatti/env reaches
        // every exec.
        assert_eq!(sh_ok(&c, "echo $PROFILE_VAR").await, "from-profile");
        // syslog: from a unit into its log, from elsewhere into syslog.log (never a unit's log by its tag).
        sh_ok(&c, "systemctl start sl && logger -t freestanding hello-syslog && logger -t sl forged-into-sl").await;
        let deadline = Instant::now() + Duration::from_secs(10);
        while sh(&c, "grep -q from-the-unit /var/log/bhatti/sl.log && grep -q 'freestanding.*hello-syslog' /var/log/bhatti/syslog.log && grep -q forged-into-sl /var/log/bhatti/syslog.log && ! grep -q forged-into-sl /var/log/bhatti/sl.log").await.exit_code != 0 {
            assert!(Instant::now() < deadline, "syslog lines not routed: {}", sh(&c, "ls /var/log/bhatti; cat /var/log/bhatti/*.log").await.stdout_str());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }

        sh_ok(&c, "systemctl start tree").await;
        let cg = "/sys/fs/cgroup/system.slice/tree.service";
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let n = sh_ok(&c, &format!("wc -l < {cg}/cgroup.procs")).await;
            if n == "3" {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "expected sh and two sleeps in {cg}, have {n}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(
            sh_ok(&c, &format!("cat {cg}/memory.max")).await,
            (32u64 << 20).to_string()
        );
        assert_eq!(sh_ok(&c, &format!("cat {cg}/pids.max")).await, "50");
        let status = sh_ok(&c, "systemctl status tree").await;
        assert!(
            status.contains("CGroup: /system.slice/tree.service"),
            "{status}"
        );
        assert!(status.contains("sleep 1002"), "{status}");
        sh_ok(&c, "systemctl stop tree").await;
        assert_eq!(
            sh(&c, &format!("test -d {cg}")).await.exit_code,
            1,
            "cgroup removed"
        );
        let left = sh_ok(
            &c,
            "cat /proc/[0-9]*/cmdline 2>/dev/null | tr '\\0' ' ' | grep -c 'sleep 100[12]' || true",
        )
        .await;
        assert_eq!(left, "0", "every process of the unit is gone");
    });
}
