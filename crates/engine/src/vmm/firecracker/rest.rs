//! Firecracker's REST API: typed request bodies (exactly the fields of the
//! API schema, `shared/data/firecracker/firecracker-api.yaml`) and a small
//! client that sends them over the API Unix socket with `hyper`.
//!
//! Every body the driver sends is built here; the test-only module
//! `schema.rs` validates each of them against the schema, so
//! a field Firecracker does not know (it rejects unknown fields) or a wrong
//! type is caught without a Firecracker binary.

use std::path::{Path, PathBuf};
use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper::header::{ACCEPT, CONTENT_TYPE, HOST};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::net::UnixStream;

use crate::vmm::VmmError;

/// Largest response body read from the API (responses are tiny).
const MAX_RESPONSE_BYTES: usize = 1 << 20;
/// Longest error description taken from an error response.
const MAX_ERROR_CHARS: usize = 2000;

// ---- request bodies ---------------------------------------------------------

/// `Logger.level`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum LogLevel {
    /// Errors only.
    Error,
    /// Warnings and errors (what the driver asks for by default).
    #[default]
    Warning,
    /// Informational messages and above (Firecracker's own default).
    Info,
    /// Debug messages and above.
    Debug,
    /// Everything.
    Trace,
    /// No log output.
    Off,
}

/// `PUT /logger`. Without `log_path` Firecracker keeps logging to its
/// stderr, which the driver captures.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Logger {
    /// File or named pipe Firecracker writes its human-readable log to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_path: Option<String>,
    /// Least severe level logged; unset: Firecracker's default (`Info`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub level: Option<LogLevel>,
    /// Prefix each line with its level (default off).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub show_level: Option<bool>,
    /// Prefix each line with the source file and line that logged it
    /// (default off).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub show_log_origin: Option<bool>,
}

/// `PUT /metrics`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Metrics {
    /// File or named pipe Firecracker flushes its JSON metrics lines to.
    pub metrics_path: String,
    /// Add the instance id (the jailer's `--id`) to every metrics line.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub emit_id: Option<bool>,
}

/// `PUT /serial`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Serial {
    /// File or named pipe the guest's serial console output is written to
    /// (from offset 0, on every launch).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub serial_out_path: Option<String>,
}

/// `PUT /boot-source`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootSource {
    /// Path of the uncompressed guest kernel (`vmlinux`), as Firecracker
    /// opens it (relative to its working directory here).
    pub kernel_image_path: String,
    /// The kernel command line.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub boot_args: Option<String>,
    /// Path of an initrd to load; unset: none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub initrd_path: Option<String>,
}

/// `TokenBucket`: `size` tokens per `refill_time` ms, plus a one-time burst.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenBucket {
    /// Capacity in tokens (bytes or operations); refilled in full every
    /// `refill_time`.
    pub size: u64,
    /// Extra tokens available once at start, spent before refilling begins.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub one_time_burst: Option<u64>,
    /// Milliseconds to refill an empty bucket to `size`.
    pub refill_time: u64,
}

/// `RateLimiter`: bytes/s (`bandwidth`) and operations/s (`ops`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct RateLimiter {
    /// Bucket of bytes; unset: bandwidth unlimited.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bandwidth: Option<TokenBucket>,
    /// Bucket of I/O operations; unset: operations unlimited.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ops: Option<TokenBucket>,
}

impl RateLimiter {
    /// `None` when neither bucket is set (Firecracker's "no limit").
    pub fn non_empty(self) -> Option<RateLimiter> {
        (self.bandwidth.is_some() || self.ops.is_some()).then_some(self)
    }
}

/// `Drive.cache_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CacheType {
    /// Guest flushes are ignored (Firecracker's default): fast, but data
    /// not yet written back is lost if the host crashes.
    Unsafe,
    /// Guest flushes are passed to the host file (`fsync`).
    Writeback,
}

/// `Drive.io_engine`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum IoEngine {
    /// Blocking I/O on the device's thread (Firecracker's default).
    Sync,
    /// io_uring; needs a host kernel newer than 5.10.51.
    Async,
}

/// `PUT /drives/{drive_id}` (virtio-block).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Drive {
    /// The drive's id (also in the URL); a second `PUT` with the same id
    /// replaces it.
    pub drive_id: String,
    /// The backing file on the host (baked into snapshots).
    pub path_on_host: String,
    /// The guest boots from this drive (Firecracker adds `root=` to the
    /// kernel command line); at most one.
    pub is_root_device: bool,
    /// The guest sees a read-only device.
    pub is_read_only: bool,
    /// How guest flushes are handled; unset: `Unsafe`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache_type: Option<CacheType>,
    /// How the host file is accessed; unset: `Sync`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub io_engine: Option<IoEngine>,
    /// Limits on the drive's I/O; unset: none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_limiter: Option<RateLimiter>,
}

/// `MachineConfiguration.huge_pages`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum HugePages {
    /// Regular 4 KiB pages (the default).
    #[default]
    None,
    /// Transparent huge pages (`madvise(MADV_HUGEPAGE)`).
    Transparent,
    /// Explicit 2 MiB hugetlbfs pages.
    #[serde(rename = "2M")]
    TwoMiB,
}

/// `PUT /machine-config`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MachineConfig {
    /// vCPUs: 1 or an even number, at most 32.
    pub vcpu_count: u32,
    /// Guest memory in MiB.
    pub mem_size_mib: u32,
    /// Simultaneous multithreading in the guest (x86 only); unset: off.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub smt: Option<bool>,
    /// Track the pages the guest writes, so that Diff snapshots can hold
    /// only those; needed for Diff snapshots.
    pub track_dirty_pages: bool,
    /// Which pages back guest memory; unset: `None` (4 KiB pages).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub huge_pages: Option<HugePages>,
}

/// `PUT /entropy`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entropy {
    /// Limits on how fast the guest draws random bytes; unset: none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_limiter: Option<RateLimiter>,
}

/// `PUT /balloon`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Balloon {
    /// Target balloon size in MiB: memory taken away from the guest.
    pub amount_mib: u32,
    /// Let the guest deflate the balloon when it runs short of memory.
    pub deflate_on_oom: bool,
    /// Seconds between balloon statistics refreshes; unset or 0: no
    /// statistics (they cannot be turned on after boot).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stats_polling_interval_s: Option<u32>,
    /// The guest reports freed pages so the host can reclaim them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub free_page_reporting: Option<bool>,
}

/// `PATCH /balloon`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BalloonUpdate {
    /// New target balloon size in MiB (0 deflates it).
    pub amount_mib: u32,
}

/// `PUT /vsock`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vsock {
    /// The guest's vsock context id; at least 3.
    pub guest_cid: u32,
    /// Host Unix socket Firecracker listens on for host-initiated
    /// connections (`CONNECT <port>`); guest-initiated ones go to
    /// `<uds_path>_<port>`.
    pub uds_path: String,
}

/// `PUT /network-interfaces/{iface_id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkInterface {
    /// The NIC's id (also in the URL; named again by a restore's
    /// [`NetworkOverride`]).
    pub iface_id: String,
    /// The host TAP device Firecracker opens, in its network namespace.
    pub host_dev_name: String,
    /// The guest's MAC address (`xx:xx:xx:xx:xx:xx`); unset: the guest
    /// picks one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub guest_mac: Option<String>,
    /// Limits on traffic to the guest; unset: none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rx_rate_limiter: Option<RateLimiter>,
    /// Limits on traffic from the guest; unset: none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tx_rate_limiter: Option<RateLimiter>,
}

/// `InstanceActionInfo.action_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ActionType {
    /// Boots the configured VM; configuration `PUT`s are refused after it.
    InstanceStart,
    /// Writes the current metrics to the metrics file now.
    FlushMetrics,
    /// Sends Ctrl+Alt+Del through the emulated keyboard (x86 only): asks
    /// the guest to shut down cleanly.
    SendCtrlAltDel,
}

/// `PUT /actions`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Action {
    /// What to do.
    pub action_type: ActionType,
}

/// `Vm.state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum VmRunState {
    /// Stop the vCPUs.
    Paused,
    /// Run the vCPUs again.
    Resumed,
}

/// `PATCH /vm`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmStateUpdate {
    /// The state to move the VM to.
    pub state: VmRunState,
}

/// `SnapshotCreateParams.snapshot_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SnapshotType {
    /// All of guest memory.
    Full,
    /// Only the pages dirtied since the previous snapshot (needs
    /// `track_dirty_pages`), in a sparse file of guest-memory size.
    Diff,
}

/// `PUT /snapshot/create`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotCreate {
    /// Full or Diff.
    pub snapshot_type: SnapshotType,
    /// File the VM and device state is written to.
    pub snapshot_path: String,
    /// File guest memory is written to.
    pub mem_file_path: String,
}

/// `MemoryBackend.backend_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum BackendType {
    /// Guest memory is mapped from a snapshot memory file.
    File,
    /// Guest memory page faults are served by another process over
    /// userfaultfd, reached through a Unix socket.
    Uffd,
}

/// `MemoryBackend`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryBackend {
    /// Where guest memory comes from.
    pub backend_type: BackendType,
    /// The memory file (`File`) or the page-fault handler's socket (`Uffd`).
    pub backend_path: String,
}

/// `NetworkOverride`: the TAP a restored NIC uses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkOverride {
    /// The snapshotted NIC to change.
    pub iface_id: String,
    /// The TAP device it uses from now on.
    pub host_dev_name: String,
}

/// `VsockOverride`: the vsock UDS of a restored VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VsockOverride {
    /// The vsock device's host Unix socket from now on.
    pub uds_path: String,
}

/// `PUT /snapshot/load`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotLoad {
    /// The VM and device state file to load.
    pub snapshot_path: String,
    /// Where guest memory comes from.
    pub mem_backend: MemoryBackend,
    /// Keep tracking dirty pages so the restored VM can take Diff snapshots.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub track_dirty_pages: Option<bool>,
    /// Resume the VM once loaded; unset: it stays paused.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resume_vm: Option<bool>,
    /// TAP devices to use instead of those recorded in the snapshot.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub network_overrides: Option<Vec<NetworkOverride>>,
    /// A vsock socket path to use instead of the recorded one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vsock_override: Option<VsockOverride>,
    /// Advance kvmclock by the wall-clock time since the snapshot (x86);
    /// unset or false: the guest clock resumes where it stopped.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub clock_realtime: Option<bool>,
}

// ---- responses --------------------------------------------------------------

/// `GET /` (`InstanceInfo`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceInfo {
    /// The application name (`"Firecracker"`).
    pub app_name: String,
    /// The instance id (`--id`, or the jailer's).
    pub id: String,
    /// `Not started`, `Running` or `Paused`.
    pub state: String,
    /// Firecracker's version, e.g. `"1.12.0"`.
    pub vmm_version: String,
}

/// Firecracker's error body (`Error`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
struct Fault {
    #[serde(default)]
    fault_message: Option<String>,
}

// ---- requests ---------------------------------------------------------------

/// One API call: method, path and JSON body.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiRequest {
    /// `GET`, `PUT` or `PATCH`.
    pub method: Method,
    /// The request path, e.g. `/drives/root`.
    pub path: String,
    /// The JSON body; `None` for a `GET`.
    pub body: Option<Value>,
}

impl ApiRequest {
    fn new<T: Serialize>(method: Method, path: impl Into<String>, body: &T) -> Self {
        // Serializing these plain structs cannot fail (no maps with
        // non-string keys, no custom serializers).
        let body = serde_json::to_value(body).unwrap_or(Value::Null);
        ApiRequest {
            method,
            path: path.into(),
            body: Some(body),
        }
    }

    /// `PUT path` with `body` as JSON.
    pub fn put<T: Serialize>(path: impl Into<String>, body: &T) -> Self {
        Self::new(Method::PUT, path, body)
    }

    /// `PATCH path` with `body` as JSON.
    pub fn patch<T: Serialize>(path: impl Into<String>, body: &T) -> Self {
        Self::new(Method::PATCH, path, body)
    }

    /// `GET path`, without a body.
    pub fn get(path: impl Into<String>) -> Self {
        ApiRequest {
            method: Method::GET,
            path: path.into(),
            body: None,
        }
    }

    /// `PUT /logger`.
    pub fn logger(body: &Logger) -> Self {
        Self::put("/logger", body)
    }
    /// `PUT /metrics`.
    pub fn metrics(body: &Metrics) -> Self {
        Self::put("/metrics", body)
    }
    /// `PUT /serial`.
    pub fn serial(body: &Serial) -> Self {
        Self::put("/serial", body)
    }
    /// `PUT /boot-source`.
    pub fn boot_source(body: &BootSource) -> Self {
        Self::put("/boot-source", body)
    }
    /// `PUT /drives/{drive_id}`.
    pub fn drive(body: &Drive) -> Self {
        Self::put(format!("/drives/{}", body.drive_id), body)
    }
    /// `PUT /machine-config`.
    pub fn machine_config(body: &MachineConfig) -> Self {
        Self::put("/machine-config", body)
    }
    /// `PUT /entropy`.
    pub fn entropy(body: &Entropy) -> Self {
        Self::put("/entropy", body)
    }
    /// `PUT /balloon`.
    pub fn balloon(body: &Balloon) -> Self {
        Self::put("/balloon", body)
    }
    /// `PATCH /balloon`.
    pub fn balloon_update(amount_mib: u32) -> Self {
        Self::patch("/balloon", &BalloonUpdate { amount_mib })
    }
    /// `PUT /vsock`.
    pub fn vsock(body: &Vsock) -> Self {
        Self::put("/vsock", body)
    }
    /// `PUT /network-interfaces/{iface_id}`.
    pub fn network_interface(body: &NetworkInterface) -> Self {
        Self::put(format!("/network-interfaces/{}", body.iface_id), body)
    }
    /// `PUT /actions`.
    pub fn action(action_type: ActionType) -> Self {
        Self::put("/actions", &Action { action_type })
    }
    /// `PATCH /vm`.
    pub fn vm_state(state: VmRunState) -> Self {
        Self::patch("/vm", &VmStateUpdate { state })
    }
    /// `PUT /snapshot/create`.
    pub fn snapshot_create(body: &SnapshotCreate) -> Self {
        Self::put("/snapshot/create", body)
    }
    /// `PUT /snapshot/load`.
    pub fn snapshot_load(body: &SnapshotLoad) -> Self {
        Self::put("/snapshot/load", body)
    }
    /// `GET /`.
    pub fn instance_info() -> Self {
        Self::get("/")
    }

    /// `"PUT /drives/root"`, for errors and logs.
    pub fn describe(&self) -> String {
        format!("{} {}", self.method, self.path)
    }
}

/// Turns an error response into a [`VmmError::Command`] carrying
/// Firecracker's `fault_message` (or the raw body when it is not the
/// documented JSON or the message is empty), at most 2000
/// characters.
pub fn error_from_response(command: &str, status: StatusCode, body: &[u8]) -> VmmError {
    let fault = serde_json::from_slice::<Fault>(body)
        .ok()
        .and_then(|f| f.fault_message);
    let raw = String::from_utf8_lossy(body);
    // An empty fault message says nothing (found by fuzzing: it made an
    // error with an empty description): fall back to the raw body then.
    let text = match fault.as_deref().map(str::trim) {
        Some(m) if !m.is_empty() => m,
        _ => raw.trim(),
    };
    let desc = if text.is_empty() {
        "no error message".to_string()
    } else {
        // Bounded either way: the body may be up to MAX_RESPONSE_BYTES.
        text.chars().take(MAX_ERROR_CHARS).collect()
    };
    VmmError::Command {
        command: command.to_string(),
        class: format!("HTTP {status}"),
        desc,
    }
}

/// Turns a response read off the API socket (its status and body) into
/// what [`ApiClient::send`] returns: `Some(json)` for a 2xx answer with a
/// JSON body, `None` for an empty one, [`VmmError::Command`] with the fault
/// message for an error status, [`VmmError::Protocol`] for a 2xx answer
/// whose body is not JSON. `what` names the request in errors.
///
/// Pure, so the fuzz target `fuzz/fuzz_targets/firecracker.rs` runs exactly
/// what the client runs.
pub fn parse_response(
    what: &str,
    status: StatusCode,
    body: &[u8],
) -> Result<Option<Value>, VmmError> {
    if !status.is_success() {
        return Err(error_from_response(what, status, body));
    }
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    serde_json::from_slice(body)
        .map(Some)
        .map_err(|e| VmmError::Protocol(format!("{what}: response is not JSON ({e})")))
}

/// Decodes the JSON answer [`parse_response`] returned into `T` (e.g.
/// [`InstanceInfo`]); an empty body or another shape is a
/// [`VmmError::Protocol`] naming `what`.
pub fn decode_response<T: for<'de> Deserialize<'de>>(
    what: &str,
    body: Option<Value>,
) -> Result<T, VmmError> {
    let v = body.ok_or_else(|| VmmError::Protocol(format!("{what}: empty response body")))?;
    serde_json::from_value(v)
        .map_err(|e| VmmError::Protocol(format!("{what}: unexpected response: {e}")))
}

/// One HTTP/1.1 request/response exchange on an already connected stream:
/// what [`ApiClient`] does after connecting to the API socket.
///
/// Public (hidden) only so the fuzz target can run it over an in-memory
/// stream carrying arbitrary response bytes.
#[doc(hidden)]
pub async fn exchange_on<S>(stream: S, req: &ApiRequest) -> Result<Option<Value>, VmmError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let what = req.describe();
    let proto = |m: String| VmmError::Protocol(format!("{what}: {m}"));
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| proto(format!("HTTP handshake: {e}")))?;
    // Drives the connection; ends when the exchange is done or fails.
    let conn = tokio::spawn(conn);
    let body = match &req.body {
        Some(v) => Bytes::from(
            serde_json::to_vec(v).map_err(|e| proto(format!("encoding the body: {e}")))?,
        ),
        None => Bytes::new(),
    };
    let mut builder = Request::builder()
        .method(req.method.clone())
        .uri(req.path.as_str())
        .header(HOST, "localhost")
        .header(ACCEPT, "application/json");
    if req.body.is_some() {
        builder = builder.header(CONTENT_TYPE, "application/json");
    }
    let request = builder
        .body(Full::new(body))
        .map_err(|e| proto(format!("building the request: {e}")))?;
    let result = async {
        let resp = sender
            .send_request(request)
            .await
            .map_err(|e| proto(format!("{e}")))?;
        let status = resp.status();
        let bytes = Limited::new(resp.into_body(), MAX_RESPONSE_BYTES)
            .collect()
            .await
            .map_err(|e| proto(format!("reading the response: {e}")))?
            .to_bytes();
        Ok::<_, VmmError>((status, bytes))
    }
    .await;
    conn.abort();
    let (status, bytes) = result?;
    parse_response(&what, status, &bytes)
}

// ---- client -----------------------------------------------------------------

/// A client for one Firecracker API socket. Each request uses its own
/// connection (a Unix-socket connect costs microseconds, and a dead
/// keep-alive connection can then never poison later calls).
#[derive(Debug, Clone)]
pub struct ApiClient {
    socket: PathBuf,
    timeout: Duration,
}

impl ApiClient {
    /// A client for the API socket at `socket`, giving up on a request
    /// after `timeout`.
    pub fn new(socket: impl Into<PathBuf>, timeout: Duration) -> Self {
        ApiClient {
            socket: socket.into(),
            timeout,
        }
    }

    /// The same client with another timeout.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The API socket's path.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Sends `req`; `Ok(Some(json))` for a 2xx answer with a JSON body,
    /// `Ok(None)` for an empty one (204), [`VmmError::Command`] with the
    /// fault message for an error status, [`VmmError::Protocol`] when the
    /// socket or the HTTP exchange fails, [`VmmError::Timeout`] after the
    /// client's timeout.
    pub async fn send(&self, req: &ApiRequest) -> Result<Option<Value>, VmmError> {
        let what = req.describe();
        match tokio::time::timeout(self.timeout, self.exchange(req)).await {
            Ok(r) => r,
            Err(_) => Err(VmmError::Timeout {
                what: format!("Firecracker API {what}"),
                timeout: self.timeout,
            }),
        }
    }

    /// Sends `req` and decodes a JSON answer into `T`.
    pub async fn send_json<T: for<'de> Deserialize<'de>>(
        &self,
        req: &ApiRequest,
    ) -> Result<T, VmmError> {
        decode_response(&req.describe(), self.send(req).await?)
    }

    async fn exchange(&self, req: &ApiRequest) -> Result<Option<Value>, VmmError> {
        let stream = UnixStream::connect(&self.socket).await.map_err(|e| {
            VmmError::Protocol(format!(
                "{}: connect {}: {e}",
                req.describe(),
                self.socket.display()
            ))
        })?;
        exchange_on(stream, req).await
    }
}

#[cfg(test)]
#[allow(clippy::arithmetic_side_effects)] // test data
mod tests {
    use super::*;

    #[test]
    fn fault_message_becomes_the_error() {
        let e = error_from_response(
            "PUT /drives/root",
            StatusCode::BAD_REQUEST,
            br#"{"fault_message":"Unable to create the block device: No such file or directory (os error 2)"}"#,
        );
        match &e {
            VmmError::Command {
                command,
                class,
                desc,
            } => {
                assert_eq!(command, "PUT /drives/root");
                assert_eq!(class, "HTTP 400 Bad Request");
                assert!(desc.starts_with("Unable to create the block device"));
            }
            other => panic!("{other:?}"),
        }
        assert!(e.to_string().contains("No such file or directory"));
        // Not the documented JSON: the raw body; nothing: a placeholder.
        let e = error_from_response("GET /", StatusCode::INTERNAL_SERVER_ERROR, b"oops\n");
        assert!(e.to_string().ends_with(": oops"), "{e}");
        let e = error_from_response("GET /", StatusCode::BAD_REQUEST, b"{}");
        assert!(e.to_string().contains("{}"), "{e}");
        let e = error_from_response("GET /", StatusCode::BAD_REQUEST, b"");
        assert!(e.to_string().contains("no error message"), "{e}");
    }

    /// Found by the fuzz target: an empty fault message (or one in a JSON
    /// array, which serde also reads as the struct) gave an error with an
    /// empty description.
    #[test]
    fn empty_or_long_fault_message() {
        let desc = |body: &[u8]| match error_from_response("GET /", StatusCode::BAD_REQUEST, body) {
            VmmError::Command { desc, .. } => desc,
            other => panic!("{other:?}"),
        };
        assert_eq!(desc(br#"{"fault_message":""}"#), r#"{"fault_message":""}"#);
        assert_eq!(
            desc(br#"{"fault_message":" \n"}"#),
            r#"{"fault_message":" \n"}"#
        );
        assert_eq!(desc(br#"[""]"#), r#"[""]"#);
        assert_eq!(desc(br#"{"fault_message":" bad \n"}"#), "bad");
        let long = format!(r#"{{"fault_message":"{}"}}"#, "x".repeat(5000));
        assert_eq!(desc(long.as_bytes()), "x".repeat(MAX_ERROR_CHARS));
    }

    #[test]
    fn responses_parse_and_decode() {
        let info =
            br#"{"app_name":"Firecracker","id":"x","state":"Paused","vmm_version":"1.12.0"}"#;
        let v = parse_response("GET /", StatusCode::OK, info).unwrap();
        let i: InstanceInfo = decode_response("GET /", v).unwrap();
        assert_eq!(i.state, "Paused");
        assert_eq!(
            parse_response("PUT /vm", StatusCode::NO_CONTENT, b"").unwrap(),
            None
        );
        assert_eq!(
            parse_response("PUT /vm", StatusCode::OK, b" \r\n").unwrap(),
            None
        );
        let e = parse_response("GET /", StatusCode::OK, b"<html>").unwrap_err();
        assert!(
            matches!(&e, VmmError::Protocol(m) if m.starts_with("GET /: response is not JSON")),
            "{e}"
        );
        let e = decode_response::<InstanceInfo>("GET /", None).unwrap_err();
        assert!(e.to_string().contains("empty response body"), "{e}");
        let e = decode_response::<InstanceInfo>("GET /", Some(serde_json::json!({"id": 1})))
            .unwrap_err();
        assert!(e.to_string().contains("unexpected response"), "{e}");
        let e = parse_response(
            "PUT /actions",
            StatusCode::BAD_REQUEST,
            br#"{"fault_message":"nope"}"#,
        )
        .unwrap_err();
        assert!(
            matches!(&e, VmmError::Command { desc, .. } if desc == "nope"),
            "{e:?}"
        );
    }

    #[test]
    fn paths_and_bodies() {
        let r = ApiRequest::drive(&Drive {
            drive_id: "disk1".into(),
            path_on_host: "fc.disk1".into(),
            is_root_device: false,
            is_read_only: true,
            cache_type: None,
            io_engine: None,
            rate_limiter: None,
        });
        assert_eq!(r.describe(), "PUT /drives/disk1");
        assert_eq!(
            r.body.unwrap(),
            serde_json::json!({"drive_id": "disk1", "path_on_host": "fc.disk1",
                "is_root_device": false, "is_read_only": true})
        );
        let r = ApiRequest::vm_state(VmRunState::Paused);
        assert_eq!(r.describe(), "PATCH /vm");
        assert_eq!(r.body.unwrap(), serde_json::json!({"state": "Paused"}));
        let m = MachineConfig {
            vcpu_count: 1,
            mem_size_mib: 128,
            smt: None,
            track_dirty_pages: true,
            huge_pages: Some(HugePages::TwoMiB),
        };
        assert_eq!(
            serde_json::to_value(&m).unwrap()["huge_pages"],
            serde_json::json!("2M")
        );
        assert_eq!(ApiRequest::instance_info().body, None);
    }

    /// A fake Firecracker API (one canned answer per connection) to check
    /// the client's HTTP handling without a Firecracker binary.
    async fn serve_once(sock: &Path, answer: &'static str) -> tokio::task::JoinHandle<String> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let l = tokio::net::UnixListener::bind(sock).unwrap();
        tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut buf = vec![0u8; 4096];
            let mut got = Vec::new();
            // Read the head and a body of Content-Length bytes.
            loop {
                let n = s.read(&mut buf).await.unwrap();
                got.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&got).to_string();
                if let Some(end) = text.find("\r\n\r\n") {
                    let len = text
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().parse::<usize>().unwrap())
                        })
                        .unwrap_or(0);
                    if got.len() >= end + 4 + len || n == 0 {
                        break;
                    }
                }
                if n == 0 {
                    break;
                }
            }
            s.write_all(answer.as_bytes()).await.unwrap();
            s.shutdown().await.unwrap();
            String::from_utf8_lossy(&got).to_string()
        })
    }

    #[tokio::test]
    async fn client_round_trips() {
        let tmp = tempfile::tempdir().unwrap();
        let sock = tmp.path().join("api.sock");
        let c = ApiClient::new(&sock, Duration::from_secs(5));

        let srv = serve_once(&sock, "HTTP/1.1 204 No Content\r\n\r\n").await;
        let r = c
            .send(&ApiRequest::vm_state(VmRunState::Paused))
            .await
            .unwrap();
        assert_eq!(r, None);
        let req = srv.await.unwrap();
        assert!(req.starts_with("PATCH /vm HTTP/1.1\r\n"), "{req}");
        assert!(req
            .to_ascii_lowercase()
            .contains("content-type: application/json"));
        assert!(req.ends_with(r#"{"state":"Paused"}"#), "{req}");

        std::fs::remove_file(&sock).unwrap();
        let body =
            r#"{"app_name":"Firecracker","id":"x","state":"Running","vmm_version":"1.17.0"}"#;
        let answer: &'static str = Box::leak(
            format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .into_boxed_str(),
        );
        let srv = serve_once(&sock, answer).await;
        let info: InstanceInfo = c.send_json(&ApiRequest::instance_info()).await.unwrap();
        assert_eq!(info.state, "Running");
        assert!(srv.await.unwrap().starts_with("GET / HTTP/1.1\r\n"));

        std::fs::remove_file(&sock).unwrap();
        let srv = serve_once(
            &sock,
            "HTTP/1.1 400 Bad Request\r\nContent-Length: 34\r\n\r\n{\"fault_message\":\"bad drive path\"}",
        )
        .await;
        let e = c
            .send(&ApiRequest::action(ActionType::InstanceStart))
            .await
            .unwrap_err();
        assert!(
            matches!(&e, VmmError::Command { desc, .. } if desc == "bad drive path"),
            "{e:?}"
        );
        srv.await.unwrap();

        // Nobody listening: a protocol error naming the socket.
        std::fs::remove_file(&sock).unwrap();
        let e = c.send(&ApiRequest::instance_info()).await.unwrap_err();
        assert!(matches!(e, VmmError::Protocol(_)), "{e:?}");
        assert!(e.to_string().contains("api.sock"), "{e}");
    }
}
