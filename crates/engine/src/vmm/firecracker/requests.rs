//! The API calls that configure, start, snapshot and restore a VM, built
//! as pure data so that the schema tests check every body the driver can
//! send.

use super::*;

/// The relative name of drive `i` (0 = root).
pub(super) fn drive_link(i: usize) -> String {
    if i == 0 {
        "fc.root".to_string()
    } else {
        format!("fc.disk{i}")
    }
}

/// The drive id of drive `i` (0 = root).
fn drive_id(i: usize) -> String {
    if i == 0 {
        "root".to_string()
    } else {
        format!("disk{i}")
    }
}

/// The API calls that configure and start a VM, in order. Pure: the
/// schema tests build every body through this.
pub fn boot_requests(spec: &VmSpec, config: &FirecrackerConfig) -> Vec<ApiRequest> {
    let mut r = prelude_requests(config);
    r.push(ApiRequest::boot_source(&BootSource {
        kernel_image_path: KERNEL_LINK.to_string(),
        boot_args: Some(spec.cmdline.clone()),
        initrd_path: None,
    }));
    r.push(ApiRequest::machine_config(&MachineConfig {
        vcpu_count: spec.vcpus,
        mem_size_mib: spec.mem_mib,
        smt: None,
        track_dirty_pages: true,
        huge_pages: Some(HugePages::None),
    }));
    let disk_limit = config.rate_limits.disk();
    let read_only = std::iter::once(false).chain(spec.extra_disks.iter().map(|d| d.read_only));
    for (i, ro) in read_only.enumerate() {
        r.push(ApiRequest::drive(&Drive {
            drive_id: drive_id(i),
            path_on_host: drive_link(i),
            is_root_device: i == 0,
            is_read_only: ro,
            cache_type: None,
            io_engine: None,
            rate_limiter: disk_limit,
        }));
    }
    if let Some(n) = &spec.net {
        let limit = config.rate_limits.net();
        r.push(ApiRequest::network_interface(&NetworkInterface {
            iface_id: IFACE_ID.to_string(),
            host_dev_name: n.tap.clone(),
            guest_mac: Some(n.mac.clone()),
            rx_rate_limiter: limit,
            tx_rate_limiter: limit,
        }));
    }
    if config.vsock {
        r.push(ApiRequest::vsock(&Vsock {
            guest_cid: config.vsock_cid,
            uds_path: VSOCK_SOCKET.to_string(),
        }));
    }
    if config.entropy {
        r.push(ApiRequest::entropy(&Entropy { rate_limiter: None }));
    }
    if config.balloon {
        r.push(ApiRequest::balloon(&Balloon {
            amount_mib: 0,
            deflate_on_oom: true,
            stats_polling_interval_s: (config.balloon_stats_interval_s > 0)
                .then_some(config.balloon_stats_interval_s),
            free_page_reporting: None,
        }));
    }
    r.push(ApiRequest::action(ActionType::InstanceStart));
    r
}

/// Logger, metrics and serial: the calls before boot and before a
/// snapshot load.
fn prelude_requests(config: &FirecrackerConfig) -> Vec<ApiRequest> {
    vec![
        ApiRequest::logger(&Logger {
            log_path: None,
            level: Some(config.log_level),
            show_level: Some(true),
            show_log_origin: Some(false),
        }),
        ApiRequest::metrics(&Metrics {
            metrics_path: METRICS_FILE.to_string(),
            emit_id: None,
        }),
        ApiRequest::serial(&Serial {
            serial_out_path: Some(CONSOLE_FIFO.to_string()),
        }),
    ]
}

/// The API calls that restore a VM from `state`/`mem` (paths as
/// Firecracker sees them) and resume it.
pub fn restore_requests(
    spec: &VmSpec,
    config: &FirecrackerConfig,
    state: &str,
    mem: &str,
) -> Vec<ApiRequest> {
    let mut r = prelude_requests(config);
    r.push(ApiRequest::snapshot_load(&SnapshotLoad {
        snapshot_path: state.to_string(),
        mem_backend: MemoryBackend {
            backend_type: BackendType::File,
            backend_path: mem.to_string(),
        },
        track_dirty_pages: Some(true),
        resume_vm: Some(true),
        network_overrides: spec.net.as_ref().map(|n| {
            vec![NetworkOverride {
                iface_id: IFACE_ID.to_string(),
                host_dev_name: n.tap.clone(),
            }]
        }),
        vsock_override: config.vsock.then(|| VsockOverride {
            uds_path: VSOCK_SOCKET.to_string(),
        }),
        clock_realtime: None,
    }));
    r
}

/// `PUT /snapshot/create` for `kind` into `state`/`mem`.
pub fn snapshot_request(kind: SnapshotKind, state: &str, mem: &str) -> ApiRequest {
    ApiRequest::snapshot_create(&SnapshotCreate {
        snapshot_type: match kind {
            SnapshotKind::Full => SnapshotType::Full,
            SnapshotKind::Diff => SnapshotType::Diff,
        },
        snapshot_path: state.to_string(),
        mem_file_path: mem.to_string(),
    })
}
