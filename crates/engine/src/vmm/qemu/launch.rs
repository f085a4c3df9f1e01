//! The QEMU command line for a [`VmSpec`], and starting the process.
//!
//! # Device model
//!
//! `-M microvm,pic=off,rtc=on,acpi=on`: virtio-mmio devices only, no PCI,
//! no firmware. `pic=off` because the ELF `vmlinux` triple-faults early
//! with the i8259 present (measured). `acpi=on` is forced (rather than
//! QEMU's `auto`) because device discovery, and with it the disk order,
//! depends on it:
//!
//! - with ACPI the guest enumerates the virtio-mmio slots from the DSDT in
//!   slot order, and QEMU assigns slots in the order the devices are
//!   declared, so the first `virtio-blk-device` is `vda`, the next `vdb`, …
//!   (verified on the guest kernel, also with a NIC declared in between);
//! - without ACPI QEMU passes the devices as `virtio_mmio.device=` kernel
//!   arguments in *reverse* slot order (the last declared disk would become
//!   `vda`), and our kernel (`CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES` unset)
//!   does not even look at them: no root disk at all.
//!
//! Every disk also gets `serial=<drive id>` (`root`, `disk1`, `disk2`, …),
//! visible in the guest as `/sys/block/vdX/serial`, so the guest can check.
//!
//! A restore must use exactly the same device model as the boot: this file
//! builds both from the same [`VmSpec`], the restore only adds `-incoming
//! defer` and `-S`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::net::enter_netns_on_spawn;
use crate::vmm::consts::{QEMU_PIDFILE, QMP_SOCKET};
use crate::vmm::spec::path_str;
use crate::vmm::{VmSpec, VmmError};

use super::Accel;

/// How to start one QEMU for a [`VmSpec`].
#[derive(Debug, Clone)]
pub(crate) struct LaunchOptions {
    /// Resolved: never [`Accel::Auto`].
    pub accel: Accel,
    pub cpu_model: String,
    pub seccomp: bool,
    /// Restore: `-incoming defer -S`.
    pub incoming: bool,
    /// Appended as `tsc_early_khz=` unless the command line has it.
    pub tsc_khz: Option<u64>,
    pub extra_args: Vec<String>,
}

/// QEMU option values (`-drive file=…`, `-chardev path=…`) escape a comma
/// by doubling it.
fn opt_escape(s: &str) -> String {
    s.replace(',', ",,")
}

/// The QMP socket of a VM directory, checked against `sun_path`.
pub(crate) fn qmp_socket_path(dir: &Path) -> Result<PathBuf, VmmError> {
    crate::vmm::spec::checked_socket(dir.join(QMP_SOCKET))
}

/// `cmdline` plus `tsc_early_khz=` when it is missing and known. Words after a
/// lone `--` are init's arguments, not the kernel's, so the parameter goes
/// before them.
pub(crate) fn kernel_cmdline(cmdline: &str, tsc_khz: Option<u64>) -> String {
    let words: Vec<&str> = cmdline.split_whitespace().collect();
    let split = words.iter().position(|w| *w == "--").unwrap_or(words.len());
    let has = words[..split]
        .iter()
        .any(|t| t.starts_with("tsc_early_khz="));
    match tsc_khz {
        Some(khz) if !has => {
            let param = format!("tsc_early_khz={khz}");
            match cmdline.find(" -- ") {
                Some(at) if split < words.len() => {
                    format!("{} {param}{}", cmdline[..at].trim_end(), &cmdline[at..])
                }
                _ => {
                    let c = cmdline.trim_end();
                    if c.is_empty() {
                        param
                    } else {
                        format!("{c} {param}")
                    }
                }
            }
        }
        _ => cmdline.to_string(),
    }
}

/// The full argument list (without the binary).
pub(crate) fn qemu_args(spec: &VmSpec, opts: &LaunchOptions) -> Result<Vec<String>, VmmError> {
    let dir = path_str("VM dir", &spec.dir)?;
    if dir.contains(',') {
        // `-qmp unix:<path>,server=on` cannot carry a comma in the path.
        return Err(VmmError::InvalidSpec(format!(
            "VM dir {dir:?} must not contain a comma"
        )));
    }
    let qmp = qmp_socket_path(&spec.dir)?;
    let mut a: Vec<String> = Vec::with_capacity(64);
    let mut push = |items: &[&str]| a.extend(items.iter().map(|s| s.to_string()));

    push(&["-name", &format!("bhatti-{},debug-threads=on", spec.id)]);
    push(&["-M", "microvm,pic=off,rtc=on,acpi=on"]);
    match opts.accel {
        Accel::Kvm => push(&["-accel", "kvm"]),
        Accel::Tcg | Accel::Auto => push(&["-accel", "tcg"]),
    }
    push(&["-cpu", &opts.cpu_model]);
    push(&["-m", &format!("{}M", spec.mem_mib)]);
    push(&["-smp", &spec.vcpus.to_string()]);
    push(&["-nodefaults", "-no-user-config", "-display", "none"]);
    push(&["-msg", "timestamp=on"]);
    if opts.seccomp {
        // No new processes, no privilege changes, no obsolete syscalls.
        push(&[
            "-sandbox",
            "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny",
        ]);
    }
    // Console: the ISA serial port (ttyS0) into a file, appended (the boot
    // path truncates it first, a restore continues it).
    let console = path_str("console log", &spec.console_log)?;
    push(&[
        "-chardev",
        &format!("file,id=con0,path={},append=on", opt_escape(console)),
        "-serial",
        "chardev:con0",
    ]);
    push(&["-kernel", path_str("kernel", &spec.kernel)?]);
    push(&["-append", &kernel_cmdline(&spec.cmdline, opts.tsc_khz)]);

    // Disks first and in order: vda, vdb, … (see the module docs).
    let disks = std::iter::once((path_str("root disk", &spec.root_disk)?, false)).chain(
        spec.extra_disks
            .iter()
            .map(|d| Ok((path_str("extra disk", &d.path)?, d.read_only)))
            .collect::<Result<Vec<_>, VmmError>>()?,
    );
    for (i, (path, ro)) in disks.enumerate() {
        let id = if i == 0 {
            "root".to_string()
        } else {
            format!("disk{i}")
        };
        let ro = if ro { ",readonly=on" } else { ",discard=unmap" };
        push(&[
            "-drive",
            &format!("id={id},file={},format=raw,if=none{ro}", opt_escape(path)),
            "-device",
            &format!("virtio-blk-device,drive={id},serial={id}"),
        ]);
    }
    if let Some(n) = &spec.net {
        push(&[
            "-netdev",
            &format!("tap,id=net0,ifname={},script=no,downscript=no", n.tap),
            "-device",
            &format!("virtio-net-device,netdev=net0,mac={}", n.mac),
        ]);
    }
    // Entropy, so guests never block in getrandom() early in boot.
    push(&[
        "-object",
        "rng-random,id=rng0,filename=/dev/urandom",
        "-device",
        "virtio-rng-device,rng=rng0",
    ]);

    let qmp = path_str("QMP socket", &qmp)?;
    push(&["-qmp", &format!("unix:{qmp},server=on,wait=off")]);
    let pidfile = spec.dir.join(QEMU_PIDFILE);
    push(&["-pidfile", path_str("pid file", &pidfile)?]);
    // Guest reboot = VM exit: the engine decides what happens next.
    push(&["-no-reboot"]);
    if opts.incoming {
        push(&["-incoming", "defer", "-S"]);
    }
    a.extend(opts.extra_args.iter().cloned());
    Ok(a)
}

/// The command for `binary` with `args`, entering the sandbox's network
/// namespace first when the spec has a NIC.
pub(crate) fn command(binary: &str, args: &[String], spec: &VmSpec) -> Result<Command, VmmError> {
    let mut cmd = Command::new(binary);
    cmd.args(args);
    if let Some(n) = &spec.net {
        enter_netns_on_spawn(&mut cmd, &n.netns_path).map_err(|e| {
            VmmError::InvalidSpec(format!("network namespace {}: {e}", n.netns_path.display()))
        })?;
    }
    Ok(cmd)
}

/// Appends a launch header (time and command line) to the VMM log, so the
/// log says what was run; failures to write it are not fatal.
pub(crate) fn log_header(log: &Path, binary: &str, args: &[String]) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let quoted: Vec<String> = args
        .iter()
        .map(|a| {
            if a.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_=,./:".contains(&b))
            {
                a.clone()
            } else {
                format!("'{}'", a.replace('\'', r"'\''"))
            }
        })
        .collect();
    let line = format!(
        "# bhatti: launch at unix {now}: {binary} {}\n",
        quoted.join(" ")
    );
    let _ = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .and_then(|mut f| f.write_all(line.as_bytes()));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vmm::{Disk, NetAttach};

    fn spec() -> VmSpec {
        VmSpec {
            id: "0123456789abcdef".into(),
            dir: "/run/bhatti/vm/x".into(),
            kernel: "/k/vmlinux".into(),
            cmdline: "console=ttyS0 root=/dev/vda".into(),
            root_disk: "/d/root,1.ext4".into(),
            extra_disks: vec![
                Disk {
                    path: "/d/config.ext4".into(),
                    read_only: true,
                },
                Disk {
                    path: "/d/vol.ext4".into(),
                    read_only: false,
                },
            ],
            vcpus: 2,
            mem_mib: 512,
            net: Some(NetAttach {
                netns_path: "/var/run/netns/bhatti-0123456789abcdef".into(),
                tap: "tap0".into(),
                mac: "02:aa:bb:cc:dd:ee".into(),
            }),
            console_log: "/run/bhatti/vm/x/console.log".into(),
        }
    }

    fn opts(incoming: bool) -> LaunchOptions {
        LaunchOptions {
            accel: Accel::Tcg,
            cpu_model: "max".into(),
            seccomp: true,
            incoming,
            tsc_khz: Some(2_599_998),
            extra_args: vec![],
        }
    }

    fn after<'a>(args: &'a [String], flag: &str) -> Vec<&'a str> {
        args.windows(2)
            .filter(|w| w[0] == flag)
            .map(|w| w[1].as_str())
            .collect()
    }

    #[test]
    fn args() {
        let a = qemu_args(&spec(), &opts(false)).unwrap();
        assert_eq!(after(&a, "-M"), ["microvm,pic=off,rtc=on,acpi=on"]);
        assert_eq!(after(&a, "-accel"), ["tcg"]);
        assert_eq!(after(&a, "-m"), ["512M"]);
        assert_eq!(after(&a, "-smp"), ["2"]);
        assert_eq!(
            after(&a, "-append"),
            ["console=ttyS0 root=/dev/vda tsc_early_khz=2599998"]
        );
        assert_eq!(
            after(&a, "-drive"),
            [
                "id=root,file=/d/root,,1.ext4,format=raw,if=none,discard=unmap",
                "id=disk1,file=/d/config.ext4,format=raw,if=none,readonly=on",
                "id=disk2,file=/d/vol.ext4,format=raw,if=none,discard=unmap",
            ]
        );
        let dev = after(&a, "-device");
        assert_eq!(dev[0], "virtio-blk-device,drive=root,serial=root");
        assert_eq!(dev[1], "virtio-blk-device,drive=disk1,serial=disk1");
        assert_eq!(
            dev[3],
            "virtio-net-device,netdev=net0,mac=02:aa:bb:cc:dd:ee"
        );
        assert_eq!(
            after(&a, "-netdev"),
            ["tap,id=net0,ifname=tap0,script=no,downscript=no"]
        );
        assert_eq!(
            after(&a, "-qmp"),
            ["unix:/run/bhatti/vm/x/qmp.sock,server=on,wait=off"]
        );
        assert!(!a.iter().any(|x| x == "-incoming" || x == "-daemonize"));
        let r = qemu_args(&spec(), &opts(true)).unwrap();
        assert_eq!(after(&r, "-incoming"), ["defer"]);
        assert!(r.iter().any(|x| x == "-S"));
        // Same device model on restore.
        assert_eq!(&r[..a.len()], &a[..]);
    }

    #[test]
    fn cmdline_tsc() {
        assert_eq!(kernel_cmdline("a b", Some(5)), "a b tsc_early_khz=5");
        assert_eq!(
            kernel_cmdline("a init=/bin/echo -- x y", Some(5)),
            "a init=/bin/echo tsc_early_khz=5 -- x y"
        );
        assert_eq!(
            kernel_cmdline("a -- tsc_early_khz=1", Some(5)),
            "a tsc_early_khz=5 -- tsc_early_khz=1"
        );
        assert_eq!(
            kernel_cmdline("a tsc_early_khz=7 b", Some(5)),
            "a tsc_early_khz=7 b"
        );
        assert_eq!(kernel_cmdline("a", None), "a");
        assert_eq!(kernel_cmdline("", Some(5)), "tsc_early_khz=5");
    }

    #[test]
    fn socket_path_limit() {
        let ok = PathBuf::from(format!("/{}", "d".repeat(97)));
        assert_eq!(qmp_socket_path(&ok).unwrap().as_os_str().len(), 107);
        let long = PathBuf::from(format!("/{}", "d".repeat(98)));
        let e = qmp_socket_path(&long).unwrap_err();
        assert!(
            matches!(e, VmmError::SocketPathTooLong { len: 108, .. }),
            "{e}"
        );
        assert!(e.to_string().contains("shorter"));
        let mut s = spec();
        s.dir = long;
        assert!(matches!(
            qemu_args(&s, &opts(false)),
            Err(VmmError::SocketPathTooLong { .. })
        ));
        s.dir = "/a,b".into();
        assert!(matches!(
            qemu_args(&s, &opts(false)),
            Err(VmmError::InvalidSpec(_))
        ));
    }
}
