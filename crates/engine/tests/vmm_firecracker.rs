//! The Firecracker VMM driver against a real Firecracker, at the API level:
//! configure + `InstanceStart`, pause, resume, Full and Diff snapshots,
//! restore, kill, and the error paths.
//!
//! Needs a Firecracker binary (`BHATTI_FIRECRACKER_BIN`) and `/dev/kvm`.
//! Without `BHATTI_FIRECRACKER_BIN` (decided at build time, see build.rs)
//! the tests are *ignored* with the reason; a binary or `/dev/kvm` that is
//! missing at run time fails them rather than passing them untested.
//!
//! The guest is not a Linux kernel but a tiny ELF image made here that
//! increments a 64-bit counter at guest-physical [`COUNTER_ADDR`] in a
//! loop: it runs on every KVM, including hosts whose KVM cannot boot
//! ordinary guests (docs/engine.md, "The machines this project is built
//! on"), it never exits by itself (so every state the tests see is the
//! driver's doing), and the counter, read straight out of the memory files,
//! shows which memory a snapshot holds and that a restored VM continues
//! from it. Nothing here needs a network; no NIC is configured.
#![allow(clippy::unwrap_used)]
// a test panics to report its failure
// Test data of known, small sizes: the casts cannot lose anything.
#![allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap,
    clippy::arithmetic_side_effects
)]

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bhatti_engine::vmm::firecracker::{
    apply_diff, rest::ApiClient, rest::ApiRequest, rest::Drive, FirecrackerConfig,
    FirecrackerDriver, FirecrackerVm, DIFF_MEM_FILE, MEM_FILE, STATE_FILE,
};
use bhatti_engine::vmm::{Disk, SnapshotKind, Vm, VmSpec, VmState, VmmDriver, VmmError};

const MEM_MIB: u32 = 128;
/// Guest-physical load address of the test image (above Firecracker's
/// 1 MiB minimum).
const LOAD_ADDR: u64 = 0x100_0000;
/// Where the guest keeps its counter (identity-mapped by Firecracker's
/// boot page tables; the memory file's offset equals the address).
const COUNTER_ADDR: u64 = 0x200_0000;

/// The Firecracker binary, or a panic saying why the test cannot run.
fn fc_binary() -> String {
    let bin = std::env::var("BHATTI_FIRECRACKER_BIN").unwrap_or_else(|_| {
        panic!("BHATTI_FIRECRACKER_BIN is not set: it must name a Firecracker binary")
    });
    assert!(
        Path::new(&bin).is_file(),
        "BHATTI_FIRECRACKER_BIN={bin} is not a file"
    );
    if let Err(e) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        panic!("Firecracker needs /dev/kvm, which cannot be opened: {e}");
    }
    bin
}

fn driver_with(config: FirecrackerConfig) -> FirecrackerDriver {
    FirecrackerDriver::new(FirecrackerConfig {
        binary: fc_binary(),
        ..config
    })
    .expect("Firecracker driver")
}

fn driver() -> FirecrackerDriver {
    driver_with(FirecrackerConfig::default())
}

/// What the guest writes to its serial port (COM1) first.
const GREETING: &str = "fc-guest: up\n";

/// A minimal x86-64 ELF executable: one PT_LOAD segment at [`LOAD_ADDR`]
/// holding: [`GREETING`] out to COM1, then `mov rax, COUNTER_ADDR; 1: inc
/// qword [rax]; jmp 1b`.
fn counter_elf() -> Vec<u8> {
    // mov dx, 0x3f8; then per byte: mov al, b; out dx, al.
    let mut code = vec![0x66, 0xba, 0xf8, 0x03];
    for b in GREETING.bytes() {
        code.extend_from_slice(&[0xb0, b, 0xee]);
    }
    code.extend_from_slice(&[0x48, 0xb8]);
    code.extend_from_slice(&COUNTER_ADDR.to_le_bytes());
    code.extend_from_slice(&[0x48, 0xff, 0x00, 0xeb, 0xfb]);
    let code = &code[..];
    let code_off: u64 = 0x1000;
    let mut e = Vec::new();
    e.extend_from_slice(&[0x7f, b'E', b'L', b'F', 2, 1, 1, 0]);
    e.extend_from_slice(&[0; 8]);
    e.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    e.extend_from_slice(&0x3eu16.to_le_bytes()); // x86-64
    e.extend_from_slice(&1u32.to_le_bytes());
    e.extend_from_slice(&LOAD_ADDR.to_le_bytes()); // e_entry
    e.extend_from_slice(&64u64.to_le_bytes()); // e_phoff
    e.extend_from_slice(&0u64.to_le_bytes()); // e_shoff
    e.extend_from_slice(&0u32.to_le_bytes()); // e_flags
    e.extend_from_slice(&64u16.to_le_bytes()); // e_ehsize
    e.extend_from_slice(&56u16.to_le_bytes()); // e_phentsize
    e.extend_from_slice(&1u16.to_le_bytes()); // e_phnum
    e.extend_from_slice(&64u16.to_le_bytes()); // e_shentsize
    e.extend_from_slice(&0u16.to_le_bytes()); // e_shnum
    e.extend_from_slice(&0u16.to_le_bytes()); // e_shstrndx
    assert_eq!(e.len(), 64);
    e.extend_from_slice(&1u32.to_le_bytes()); // PT_LOAD
    e.extend_from_slice(&5u32.to_le_bytes()); // R+X
    e.extend_from_slice(&code_off.to_le_bytes());
    e.extend_from_slice(&LOAD_ADDR.to_le_bytes()); // p_vaddr
    e.extend_from_slice(&LOAD_ADDR.to_le_bytes()); // p_paddr
    e.extend_from_slice(&(code.len() as u64).to_le_bytes());
    e.extend_from_slice(&(code.len() as u64).to_le_bytes());
    e.extend_from_slice(&0x1000u64.to_le_bytes());
    e.resize(code_off as usize, 0);
    e.extend_from_slice(code);
    e
}

/// A temp dir with the image and disks; short paths (sockets).
struct Fixture {
    tmp: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Fixture {
        let tmp = tempfile::Builder::new()
            .prefix("fc")
            .tempdir_in("/tmp")
            .unwrap();
        std::fs::write(tmp.path().join("vmlinux"), counter_elf()).unwrap();
        for (name, mib) in [("root.img", 16), ("data.img", 4)] {
            let f = std::fs::File::create(tmp.path().join(name)).unwrap();
            f.set_len(mib << 20).unwrap();
        }
        Fixture { tmp }
    }

    fn path(&self, p: &str) -> PathBuf {
        self.tmp.path().join(p)
    }

    fn spec(&self, vm_dir: &str) -> VmSpec {
        VmSpec {
            id: format!("fc-test-{vm_dir}"),
            dir: self.path(vm_dir),
            kernel: self.path("vmlinux"),
            cmdline: "console=ttyS0 reboot=k panic=1".into(),
            root_disk: self.path("root.img"),
            extra_disks: vec![Disk {
                path: self.path("data.img"),
                read_only: true,
            }],
            vcpus: 1,
            mem_mib: MEM_MIB,
            net: None,
            console_log: self.path(&format!("{vm_dir}.console")),
        }
    }
}

/// The guest's counter in a memory file.
fn counter(mem_file: &Path) -> u64 {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::open(mem_file).unwrap();
    let mut b = [0u8; 8];
    f.read_exact_at(&mut b, COUNTER_ADDR).unwrap();
    u64::from_le_bytes(b)
}

/// Runs `f` with a deadline so a hung API fails the test instead of
/// hanging it.
async fn within<T>(what: &str, secs: u64, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(secs), f)
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish within {secs} s"))
}

async fn boot(d: &FirecrackerDriver, spec: &VmSpec) -> FirecrackerVm {
    let t0 = Instant::now();
    let vm = within("boot", 30, d.boot_vm(spec))
        .await
        .unwrap_or_else(|e| panic!("boot: {e}"));
    println!(
        "vmm-report: firecracker boot (API) {} ms",
        t0.elapsed().as_millis()
    );
    vm
}

#[tokio::test]
#[cfg_attr(
    not(bhatti_firecracker),
    ignore = "needs BHATTI_FIRECRACKER_BIN (a Firecracker binary) and /dev/kvm"
)]
async fn boot_pause_resume_snapshot_kill() {
    let d = driver();
    assert_eq!(d.name(), "firecracker");
    assert!(d.supports_diff_snapshots());
    assert!(d.version().starts_with("Firecracker v"), "{}", d.version());
    let fx = Fixture::new();
    let spec = fx.spec("vm1");
    let vm = boot(&d, &spec).await;
    assert!(vm.pid().is_some());
    assert_eq!(vm.state().await.unwrap(), VmState::Running);
    let info = vm.instance_info().await.unwrap();
    assert_eq!(info.id, "fc-test-vm1");
    // The guest's serial output reaches the console log (PUT /serial, the
    // FIFO and its pump).
    let deadline = Instant::now() + Duration::from_secs(10);
    while !vm.console_tail(1000).contains(GREETING) {
        assert!(
            Instant::now() < deadline,
            "console: {:?}",
            vm.console_tail(1000)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The vsock device's host socket exists.
    let vsock = vm.vsock_uds_path().unwrap();
    assert!(vsock.exists(), "{}", vsock.display());

    // Pause / resume, twice each (idempotent).
    for _ in 0..2 {
        let t0 = Instant::now();
        vm.pause().await.unwrap();
        println!(
            "vmm-report: firecracker pause {} us",
            t0.elapsed().as_micros()
        );
        assert_eq!(vm.state().await.unwrap(), VmState::Paused);
    }
    for _ in 0..2 {
        vm.resume().await.unwrap();
        assert_eq!(vm.state().await.unwrap(), VmState::Running);
    }

    // A snapshot of a running VM is refused.
    let e = vm
        .snapshot(&fx.path("snap-running"), SnapshotKind::Full)
        .await
        .unwrap_err();
    assert!(matches!(e, VmmError::NotPaused { .. }), "{e}");

    // Full snapshot: the state file and a memory file of exactly the RAM.
    vm.pause().await.unwrap();
    let t0 = Instant::now();
    let full = within(
        "full snapshot",
        60,
        vm.snapshot(&fx.path("full"), SnapshotKind::Full),
    )
    .await
    .unwrap();
    println!(
        "vmm-report: firecracker full snapshot {} ms ({} MiB)",
        t0.elapsed().as_millis(),
        MEM_MIB
    );
    assert_eq!(full.kind, SnapshotKind::Full);
    assert_eq!(full.driver, "firecracker");
    let state = std::fs::metadata(full.state_path()).unwrap();
    assert!(state.len() > 0);
    assert_eq!(full.mem_path(), fx.path("full").join(MEM_FILE));
    let mem = std::fs::metadata(full.mem_path()).unwrap();
    assert_eq!(mem.len(), u64::from(MEM_MIB) << 20);
    assert_eq!(full.size_bytes, state.len() + mem.len());
    assert_eq!(full.vcpus, 1);
    assert_eq!(full.extra_disks, 1);
    assert!(!full.has_net);
    // The VM stays paused.
    assert_eq!(vm.state().await.unwrap(), VmState::Paused);

    // Diff snapshot: a sparse memory file of the same size.
    vm.resume().await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    vm.pause().await.unwrap();
    let diff = within(
        "diff snapshot",
        60,
        vm.snapshot(&fx.path("diff"), SnapshotKind::Diff),
    )
    .await
    .unwrap();
    assert_eq!(diff.kind, SnapshotKind::Diff);
    assert_eq!(diff.mem_path(), fx.path("diff").join(DIFF_MEM_FILE));
    let dmem = std::fs::metadata(diff.mem_path()).unwrap();
    assert_eq!(dmem.len(), u64::from(MEM_MIB) << 20);
    // The guest only wrote its counter page since the Full snapshot.
    let (c_full, c_diff) = (counter(&full.mem_path()), counter(&diff.mem_path()));
    assert!(c_full > 0 && c_diff > c_full, "{c_full} {c_diff}");
    assert!(
        dmem.blocks() * 512 < 1 << 20,
        "the diff should be mostly holes ({} of {} bytes allocated)",
        dmem.blocks() * 512,
        dmem.len()
    );
    println!(
        "vmm-report: firecracker diff snapshot allocated {} KiB of {} MiB",
        dmem.blocks() / 2,
        MEM_MIB
    );

    // Balloon: configured at boot; the (absent) guest driver never
    // acknowledges it, but the target is accepted or refused with
    // Firecracker's own message.
    vm.resume().await.unwrap();
    match vm.set_balloon(16).await {
        Ok(()) => println!("vmm-report: set_balloon accepted"),
        Err(VmmError::Command { desc, .. }) => {
            println!("vmm-report: set_balloon refused: {desc}");
            assert!(!desc.is_empty())
        }
        Err(e) => panic!("set_balloon: {e}"),
    }

    // Kill: reaped, state Exited, sockets gone; idempotent.
    let api_sock = vm.api().socket().to_path_buf();
    within("kill", 30, vm.kill()).await.unwrap();
    assert!(vm.pid().is_none());
    assert!(matches!(vm.state().await.unwrap(), VmState::Exited(_)));
    assert!(!api_sock.exists());
    assert!(!vsock.exists());
    vm.kill().await.unwrap();
    let e = vm.pause().await.unwrap_err();
    assert!(
        matches!(e, VmmError::Exited(_) | VmmError::Protocol(_)),
        "{e}"
    );
    // The VMM log says what was run.
    let log = std::fs::read_to_string(spec.dir.join("firecracker.log")).unwrap();
    assert!(log.contains("# bhatti: launch"), "{log}");
}

#[tokio::test]
#[cfg_attr(
    not(bhatti_firecracker),
    ignore = "needs BHATTI_FIRECRACKER_BIN (a Firecracker binary) and /dev/kvm"
)]
async fn restore_full_and_layered_diff() {
    let d = driver();
    let fx = Fixture::new();
    let vm = boot(&d, &fx.spec("src")).await;
    vm.pause().await.unwrap();
    let full = vm
        .snapshot(&fx.path("s0"), SnapshotKind::Full)
        .await
        .unwrap();
    vm.resume().await.unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    vm.pause().await.unwrap();
    let diff = vm
        .snapshot(&fx.path("s1"), SnapshotKind::Diff)
        .await
        .unwrap();
    vm.kill().await.unwrap();
    let (c0, c1) = (counter(&full.mem_path()), counter(&diff.mem_path()));
    assert!(c1 > c0, "{c0} {c1}");

    // Restore the Full snapshot into another directory: running.
    let spec = fx.spec("r1");
    let t0 = Instant::now();
    let r1 = within("restore", 60, d.restore_vm(&spec, &full))
        .await
        .unwrap_or_else(|e| panic!("restore: {e}"));
    println!(
        "vmm-report: firecracker restore {} ms",
        t0.elapsed().as_millis()
    );
    assert_eq!(r1.state().await.unwrap(), VmState::Running);
    // A restored VM keeps tracking dirty pages: a Diff works there too.
    tokio::time::sleep(Duration::from_millis(20)).await;
    r1.pause().await.unwrap();
    let d2 = r1
        .snapshot(&fx.path("s2"), SnapshotKind::Diff)
        .await
        .unwrap();
    assert_eq!(
        std::fs::metadata(d2.mem_path()).unwrap().len(),
        u64::from(MEM_MIB) << 20
    );
    // The restored guest went on counting from the Full snapshot's value.
    let c2 = counter(&d2.mem_path());
    assert!(c2 > c0, "restored from {c0}, now {c2}");
    r1.kill().await.unwrap();

    // A Diff alone is refused with a pointer to apply_diff.
    let e = d.restore_vm(&fx.spec("r2"), &diff).await.unwrap_err();
    assert!(
        matches!(&e, VmmError::InvalidSnapshot(m) if m.contains("apply_diff")),
        "{e}"
    );

    // Layered: a copy of the Full, the Diff applied on top, restored.
    let merged_dir = fx.path("merged");
    std::fs::create_dir(&merged_dir).unwrap();
    for f in [STATE_FILE, MEM_FILE] {
        std::fs::copy(full.dir.join(f), merged_dir.join(f)).unwrap();
    }
    let mut base = full.clone();
    base.dir = merged_dir;
    let merged = apply_diff(&base, &diff).unwrap();
    assert_eq!(merged.kind, SnapshotKind::Full);
    assert_eq!(counter(&merged.mem_path()), c1);
    assert_eq!(
        std::fs::read(merged.state_path()).unwrap(),
        std::fs::read(diff.state_path()).unwrap()
    );
    let r3 = within("restore merged", 60, d.restore_vm(&fx.spec("r3"), &merged))
        .await
        .unwrap_or_else(|e| panic!("restore of the merged snapshot: {e}"));
    assert_eq!(r3.state().await.unwrap(), VmState::Running);
    // It continues from the Diff's memory: full → diff → restore, and the
    // data accumulated.
    tokio::time::sleep(Duration::from_millis(20)).await;
    r3.pause().await.unwrap();
    let s4 = r3
        .snapshot(&fx.path("s4"), SnapshotKind::Full)
        .await
        .unwrap();
    let c4 = counter(&s4.mem_path());
    assert!(c4 > c1, "restored from {c1}, now {c4}");
    println!("vmm-report: counter full={c0} diff={c1} restored-diff={c2} restored-merged={c4}");
    r3.kill().await.unwrap();
}

#[tokio::test]
#[cfg_attr(
    not(bhatti_firecracker),
    ignore = "needs BHATTI_FIRECRACKER_BIN (a Firecracker binary) and /dev/kvm"
)]
async fn error_paths() {
    let bin = fc_binary();
    let d = driver();
    let fx = Fixture::new();

    // A bad drive path, straight on the API of a fresh Firecracker: the
    // error carries Firecracker's fault_message.
    let dir = fx.path("raw");
    std::fs::create_dir(&dir).unwrap();
    let sock = dir.join("api.sock");
    let mut child = std::process::Command::new(&bin)
        .arg("--api-sock")
        .arg(&sock)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !sock.exists() {
        assert!(
            Instant::now() < deadline,
            "Firecracker API socket never appeared"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let api = ApiClient::new(&sock, Duration::from_secs(10));
    let e = api
        .send(&ApiRequest::drive(&Drive {
            drive_id: "root".into(),
            path_on_host: "/nonexistent/root.img".into(),
            is_root_device: true,
            is_read_only: false,
            cache_type: None,
            io_engine: None,
            rate_limiter: None,
        }))
        .await
        .unwrap_err();
    match &e {
        VmmError::Command {
            command,
            class,
            desc,
        } => {
            assert_eq!(command, "PUT /drives/root");
            assert!(class.starts_with("HTTP 4"), "{class}");
            assert!(desc.contains("No such file"), "{desc}");
        }
        other => panic!("expected a Command error, got {other:?}"),
    }
    println!("vmm-report: bad drive path -> {e}");
    // An unknown field is refused by Firecracker too (what the schema
    // tests guard against).
    let e = api
        .send(&ApiRequest::put(
            "/machine-config",
            &serde_json::json!({"vcpu_count": 1, "mem_size_mib": 128, "bogus": 1}),
        ))
        .await
        .unwrap_err();
    assert!(matches!(e, VmmError::Command { .. }), "{e}");
    let _ = child.kill();
    let _ = child.wait();

    // A kernel that is not one: boot fails at InstanceStart with the fault
    // message and Firecracker's log attached, and nothing is left running.
    let mut spec = fx.spec("badkernel");
    let bad = fx.path("garbage");
    std::fs::write(&bad, vec![0x55u8; 8192]).unwrap();
    spec.kernel = bad;
    let e = within("bad boot", 30, d.boot_vm(&spec)).await.unwrap_err();
    match &e {
        VmmError::Boot { reason, .. } => {
            assert!(reason.contains("PUT /actions"), "{reason}");
            assert!(reason.contains("HTTP 400"), "{reason}");
        }
        other => panic!("expected a Boot error, got {other}"),
    }
    println!(
        "vmm-report: bad kernel -> {}",
        e.to_string().lines().next().unwrap_or("")
    );
    assert!(!fx.path("badkernel").join("fc.sock").exists());

    // A memory file of the wrong size is refused before anything starts.
    let vm = boot(&d, &fx.spec("snapsrc")).await;
    vm.pause().await.unwrap();
    let snap = vm
        .snapshot(&fx.path("snap"), SnapshotKind::Full)
        .await
        .unwrap();
    vm.kill().await.unwrap();
    let mut wrong = snap.clone();
    wrong.mem_mib = MEM_MIB * 2;
    let mut s = fx.spec("r-wrong");
    s.mem_mib = MEM_MIB * 2;
    let e = d.restore_vm(&s, &wrong).await.unwrap_err();
    assert!(matches!(e, VmmError::InvalidSnapshot(_)), "{e}");
    // A corrupt state file: a Restore error with Firecracker's message.
    let corrupt_dir = fx.path("corrupt");
    std::fs::create_dir(&corrupt_dir).unwrap();
    std::fs::write(corrupt_dir.join(STATE_FILE), b"not a snapshot").unwrap();
    std::fs::copy(snap.mem_path(), corrupt_dir.join(MEM_FILE)).unwrap();
    let mut corrupt = snap.clone();
    corrupt.dir = corrupt_dir;
    let e = within(
        "corrupt restore",
        60,
        d.restore_vm(&fx.spec("r-corrupt"), &corrupt),
    )
    .await
    .unwrap_err();
    match &e {
        VmmError::Restore { reason, .. } => {
            assert!(reason.contains("PUT /snapshot/load"), "{reason}")
        }
        other => panic!("expected a Restore error, got {other}"),
    }
    println!(
        "vmm-report: corrupt snapshot -> {}",
        e.to_string().lines().next().unwrap_or("")
    );

    // A VM directory too long for the API socket: a clear error.
    let mut s = fx.spec("x");
    s.dir = fx.path(&"d".repeat(100));
    let e = d.boot_vm(&s).await.unwrap_err();
    assert!(matches!(e, VmmError::SocketPathTooLong { .. }), "{e}");

    // Two VMMs for one VM directory are refused.
    let spec = fx.spec("twice");
    let vm = boot(&d, &spec).await;
    let e = d.boot_vm(&spec).await.unwrap_err();
    assert!(e.to_string().contains("already serving"), "{e}");
    vm.kill().await.unwrap();
}

/// Jailer mode end to end. Always ignored unless asked for (`--ignored`):
/// it needs root, a *statically linked* Firecracker in
/// `BHATTI_FIRECRACKER_BIN` (the chroot has no shared libraries), the
/// jailer in `BHATTI_FIRECRACKER_JAILER_BIN` and a cgroup v2 hierarchy.
#[tokio::test]
#[ignore = "jailer mode: needs root, a static Firecracker (BHATTI_FIRECRACKER_BIN), \
            BHATTI_FIRECRACKER_JAILER_BIN and cgroup v2; run with --ignored"]
async fn jailer_boot_snapshot_restore() {
    let jailer = std::env::var("BHATTI_FIRECRACKER_JAILER_BIN")
        .unwrap_or_else(|_| panic!("BHATTI_FIRECRACKER_JAILER_BIN is not set"));
    // Hybrid cgroup hosts (v1 controllers, an empty v2 hierarchy) cannot
    // take the CPU and memory limits: run without them there, and say so.
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap();
    let v2 = mounts
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.get(2) == Some(&"cgroup2")).then(|| f[1].to_string())
        })
        .expect("no cgroup2 hierarchy mounted");
    let controllers =
        std::fs::read_to_string(Path::new(&v2).join("cgroup.controllers")).unwrap_or_default();
    let cgroups = controllers.contains("cpu") && controllers.contains("memory");
    println!("vmm-report: jailer with cgroup limits: {cgroups} (v2 controllers: {controllers:?})");
    let fx = Fixture::new();
    let base = fx.path("jails");
    std::fs::create_dir(&base).unwrap();
    let d = driver_with(FirecrackerConfig {
        jailer: Some(bhatti_engine::vmm::firecracker::JailerConfig {
            binary: jailer,
            uid: 10000,
            gid: 10000,
            chroot_base: base.clone(),
            parent_cgroup: Some("bhatti-test".into()),
            cgroups,
        }),
        ..FirecrackerConfig::default()
    });
    let vm = boot(&d, &fx.spec("j1")).await;
    let root = base.join("firecracker/fc-test-j1/root");
    assert!(root.join("fc.sock").exists());
    assert_eq!(vm.state().await.unwrap(), VmState::Running);
    vm.pause().await.unwrap();
    let full = vm
        .snapshot(&fx.path("js"), SnapshotKind::Full)
        .await
        .unwrap();
    assert_eq!(
        std::fs::metadata(full.mem_path()).unwrap().len(),
        u64::from(MEM_MIB) << 20
    );
    let c0 = counter(&full.mem_path());
    vm.kill().await.unwrap();
    assert!(!root.exists(), "the jail is removed on kill");
    let r = within("jailed restore", 60, d.restore_vm(&fx.spec("j2"), &full))
        .await
        .unwrap_or_else(|e| panic!("jailed restore: {e}"));
    tokio::time::sleep(Duration::from_millis(20)).await;
    r.pause().await.unwrap();
    let s2 = r
        .snapshot(&fx.path("js2"), SnapshotKind::Diff)
        .await
        .unwrap();
    assert!(counter(&s2.mem_path()) > c0);
    r.kill().await.unwrap();
}

/// A network namespace of this test's own with TAPs in it (no addresses,
/// no traffic); deleted on drop.
struct TestNetns {
    name: String,
}

impl TestNetns {
    fn new(taps: &[&str]) -> TestNetns {
        let name = format!("bhatti-fct-{}", std::process::id());
        let ip = |args: &[&str]| {
            let out = std::process::Command::new("ip")
                .args(args)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "ip {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &name])
            .output();
        ip(&["netns", "add", &name]);
        let ns = TestNetns { name };
        for tap in taps {
            ip(&["-n", &ns.name, "tuntap", "add", "dev", tap, "mode", "tap"]);
            ip(&["-n", &ns.name, "link", "set", tap, "up"]);
        }
        ns
    }

    fn path(&self) -> PathBuf {
        PathBuf::from("/var/run/netns").join(&self.name)
    }
}

impl Drop for TestNetns {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// The NIC: Firecracker runs inside the sandbox's namespace and opens its
/// TAP; a restore moves the NIC to another TAP through
/// `network_overrides`.
#[tokio::test]
#[cfg_attr(
    not(all(bhatti_firecracker, bhatti_root)),
    ignore = "needs root, BHATTI_FIRECRACKER_BIN (a Firecracker binary) and /dev/kvm"
)]
async fn nic_in_network_namespace() {
    let d = driver();
    let fx = Fixture::new();
    let ns = TestNetns::new(&["tap0", "tap1"]);
    let mut spec = fx.spec("n1");
    spec.net = Some(bhatti_engine::vmm::NetAttach {
        netns_path: ns.path(),
        tap: "tap0".into(),
        mac: "02:fc:00:00:00:01".into(),
    });
    let vm = boot(&d, &spec).await;
    let config = vm
        .api()
        .send(&ApiRequest::get("/vm/config"))
        .await
        .unwrap()
        .unwrap();
    let nic = &config["network-interfaces"][0];
    assert_eq!(nic["host_dev_name"], "tap0", "{config}");
    assert_eq!(nic["guest_mac"], "02:fc:00:00:00:01", "{config}");
    // Firecracker runs in the namespace, not the host's.
    let pid = vm.pid().unwrap();
    let ns_of = |p: &str| std::fs::read_link(p).unwrap();
    assert_ne!(
        ns_of(&format!("/proc/{pid}/ns/net")),
        ns_of("/proc/self/ns/net")
    );
    vm.pause().await.unwrap();
    let snap = vm
        .snapshot(&fx.path("ns-snap"), SnapshotKind::Full)
        .await
        .unwrap();
    assert!(snap.has_net);
    vm.kill().await.unwrap();

    let mut spec2 = fx.spec("n2");
    spec2.net = Some(bhatti_engine::vmm::NetAttach {
        tap: "tap1".into(),
        ..spec.net.clone().unwrap()
    });
    let r = within("restore with NIC", 60, d.restore_vm(&spec2, &snap))
        .await
        .unwrap_or_else(|e| panic!("restore: {e}"));
    assert_eq!(r.state().await.unwrap(), VmState::Running);
    let config = r
        .api()
        .send(&ApiRequest::get("/vm/config"))
        .await
        .unwrap()
        .unwrap();
    println!(
        "vmm-report: restored NIC config {}",
        config["network-interfaces"]
    );
    assert_eq!(
        config["network-interfaces"][0]["host_dev_name"], "tap1",
        "{config}"
    );
    r.kill().await.unwrap();
    // Without the NIC the snapshot is refused up front.
    let e = d.restore_vm(&fx.spec("n3"), &snap).await.unwrap_err();
    assert!(matches!(e, VmmError::InvalidSnapshot(_)), "{e}");
}

/// The optional parts as Firecracker takes them: rate limiters on, balloon
/// statistics on; then balloon, vsock and entropy off.
#[tokio::test]
#[cfg_attr(
    not(bhatti_firecracker),
    ignore = "needs BHATTI_FIRECRACKER_BIN (a Firecracker binary) and /dev/kvm"
)]
async fn options_and_rate_limits() {
    use bhatti_engine::vmm::firecracker::RateLimits;
    let fx = Fixture::new();
    let d = driver_with(FirecrackerConfig {
        rate_limits: RateLimits {
            net_bandwidth_bytes: Some(12_500_000),
            net_burst_bytes: Some(10_000_000),
            disk_bandwidth_bytes: Some(100_000_000),
            disk_iops: Some(10_000),
        },
        balloon_stats_interval_s: 5,
        ..FirecrackerConfig::default()
    });
    let vm = boot(&d, &fx.spec("o1")).await;
    let config = vm
        .api()
        .send(&ApiRequest::get("/vm/config"))
        .await
        .unwrap()
        .unwrap();
    let drives = config["drives"].as_array().unwrap();
    assert_eq!(drives.len(), 2, "{config}");
    for d in drives {
        assert_eq!(
            d["rate_limiter"]["bandwidth"]["size"], 100_000_000,
            "{config}"
        );
        assert_eq!(d["rate_limiter"]["ops"]["size"], 10_000, "{config}");
    }
    assert_eq!(config["balloon"]["stats_polling_interval_s"], 5, "{config}");
    assert_eq!(
        config["machine-config"]["track_dirty_pages"], true,
        "{config}"
    );
    assert!(config["vsock"].is_object(), "{config}");
    assert!(config["entropy"].is_object(), "{config}");
    vm.kill().await.unwrap();

    let d = driver_with(FirecrackerConfig {
        balloon: false,
        vsock: false,
        entropy: false,
        ..FirecrackerConfig::default()
    });
    let vm = boot(&d, &fx.spec("o2")).await;
    let config = vm
        .api()
        .send(&ApiRequest::get("/vm/config"))
        .await
        .unwrap()
        .unwrap();
    assert!(config["balloon"].is_null(), "{config}");
    assert!(config["vsock"].is_null(), "{config}");
    assert!(vm.vsock_uds_path().is_none());
    let e = vm.set_balloon(1).await.unwrap_err();
    assert!(matches!(e, VmmError::Unsupported { .. }), "{e}");
    vm.kill().await.unwrap();
}
