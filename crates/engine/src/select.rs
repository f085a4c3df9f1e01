//! Which engine a daemon runs when the config does not say (docs/engine.md,
//! "Engine selection"): Firecracker when its binary exists and KVM can run
//! ordinary guests, else QEMU when installed, else Docker when dockerd
//! answers — always with the reason, so `bhatti serve` can say what it
//! picked and why.

use std::path::Path;

/// The engines bhatti can run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EngineKind {
    /// microVMs on Firecracker (needs KVM that runs ordinary guests).
    Firecracker,
    /// microVMs on QEMU's `microvm` machine (KVM, or TCG without it).
    Qemu,
    /// Containers on dockerd, for hosts without KVM.
    Docker,
}

/// What the host offers, probed once (kept separate so the choice is testable).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostProbe {
    /// A Firecracker binary, if found.
    pub firecracker: Option<String>,
    /// `/dev/kvm` exists.
    pub dev_kvm: bool,
    /// An ordinary-guest KVM module is loaded (`kvm_intel` / `kvm_amd`); a
    /// PVM-only KVM (`kvm_pvm`) cannot run our guests.
    pub kvm_ordinary_guests: bool,
    /// A `qemu-system-x86_64` binary, if found.
    pub qemu: Option<String>,
    /// dockerd's socket exists.
    pub docker: bool,
}

fn find_in_path(name: &str) -> Option<String> {
    if name.contains('/') {
        return Path::new(name).is_file().then(|| name.to_string());
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
            .map(|p| p.to_string_lossy().into_owned())
    })
}

impl HostProbe {
    /// Looks at this host. `firecracker_bin`/`qemu_bin` are the configured
    /// binaries (names are looked up in `PATH`).
    pub fn probe(firecracker_bin: &str, qemu_bin: &str) -> HostProbe {
        HostProbe {
            firecracker: find_in_path(firecracker_bin),
            dev_kvm: Path::new("/dev/kvm").exists(),
            kvm_ordinary_guests: ["/sys/module/kvm_intel", "/sys/module/kvm_amd"]
                .iter()
                .any(|p| Path::new(p).exists()),
            qemu: find_in_path(qemu_bin),
            docker: Path::new("/var/run/docker.sock").exists()
                || std::env::var_os("DOCKER_HOST").is_some(),
        }
    }
}

/// The default engine for a host, with the reason (or why none is usable).
pub fn choose(p: &HostProbe) -> Result<(EngineKind, String), String> {
    let kvm = p.dev_kvm && p.kvm_ordinary_guests;
    match (&p.firecracker, kvm, &p.qemu, p.docker) {
        (Some(fc), true, _, _) => Ok((
            EngineKind::Firecracker,
            format!("{fc} found and KVM runs ordinary guests"),
        )),
        (fc, _, Some(q), _) => {
            let why_not_fc = match (fc, p.dev_kvm, p.kvm_ordinary_guests) {
                (None, _, _) => "no Firecracker binary".to_string(),
                (Some(_), false, _) => "no /dev/kvm".to_string(),
                (Some(_), true, false) => {
                    "KVM cannot run ordinary guests here (no kvm_intel/kvm_amd)".to_string()
                }
                (Some(_), true, true) => unreachable!("handled above"),
            };
            let accel = if kvm {
                "KVM"
            } else {
                "TCG (software emulation)"
            };
            Ok((
                EngineKind::Qemu,
                format!("{why_not_fc}; using {q} with {accel}"),
            ))
        }
        (_, _, None, true) => Ok((
            EngineKind::Docker,
            "no Firecracker with usable KVM and no QEMU; dockerd is reachable".into(),
        )),
        _ => Err(
            "no usable engine: install Firecracker (with KVM), QEMU (qemu-system-x86), or Docker"
                .into(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probe() -> HostProbe {
        HostProbe {
            firecracker: Some("/usr/local/bin/firecracker".into()),
            dev_kvm: true,
            kvm_ordinary_guests: true,
            qemu: Some("/usr/bin/qemu-system-x86_64".into()),
            docker: true,
        }
    }

    #[test]
    fn firecracker_when_kvm_runs_guests() {
        assert_eq!(choose(&probe()).unwrap().0, EngineKind::Firecracker);
    }

    #[test]
    fn qemu_on_pvm_only_kvm_or_without_firecracker() {
        let mut p = probe();
        p.kvm_ordinary_guests = false;
        let (k, why) = choose(&p).unwrap();
        assert_eq!(k, EngineKind::Qemu);
        assert!(
            why.contains("cannot run ordinary guests") && why.contains("TCG"),
            "{why}"
        );
        let mut p = probe();
        p.firecracker = None;
        let (k, why) = choose(&p).unwrap();
        assert_eq!(k, EngineKind::Qemu);
        assert!(
            why.contains("no Firecracker") && why.contains("KVM"),
            "{why}"
        );
    }

    #[test]
    fn docker_last_and_a_clear_error_when_nothing_works() {
        let p = HostProbe {
            docker: true,
            ..Default::default()
        };
        assert_eq!(choose(&p).unwrap().0, EngineKind::Docker);
        assert!(choose(&HostProbe::default())
            .unwrap_err()
            .contains("no usable engine"));
    }

    #[test]
    fn probing_this_host_does_not_fail() {
        let p = HostProbe::probe("firecracker", "qemu-system-x86_64");
        // Whatever the host has, the answer is an engine or a clear error.
        match choose(&p) {
            Ok((_, why)) => assert!(!why.is_empty()),
            Err(e) => assert!(e.contains("no usable engine")),
        }
    }
}
