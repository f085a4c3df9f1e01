//! The daemon's configuration: one YAML file with the reference's keys
//! plus keys for what the reference hard-coded (thermal timeouts, rate
//! limits, shutdown parallelism, VMM binaries); every key is listed in
//! docs/operations.md, "The daemon's config file".
//!
//! Loading order: `$BHATTI_CONFIG` alone if set; otherwise
//! `/etc/bhatti/config.yaml` if it exists; otherwise the defaults. Unknown
//! keys are rejected so a typo cannot silently fall back to a default.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bhatti_engine::net::{Ipv4Cidr, DEFAULT_EGRESS_BLOCKED};
use serde::Deserialize;

/// The system-wide config file.
pub const SYSTEM_CONFIG: &str = "/etc/bhatti/config.yaml";
/// Where the daemon keeps its state unless told otherwise.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/bhatti";
/// The group whose members may use the API when nothing else is said.
pub const DEFAULT_SOCKET_GROUP: &str = "bhatti";
/// The group socket of the default data directory (the CLI looks there
/// when `<data_dir>/api.sock` cannot be reached).
pub const DEFAULT_GROUP_SOCKET: &str = "/run/bhatti/api.sock";
/// Where the Debian package puts the guest kernel and minimal image (the
/// last place looked, after the data dir and the build cache).
pub const PACKAGED_GUEST: &str = "/usr/lib/bhatti/guest";
/// Where `scripts/guest` leaves the kernel and the minimal image.
pub const GUEST_CACHE: &str = "/var/cache/bhatti/guest";

/// Why the config could not be loaded; the daemon refuses to start.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file exists (or was named) but could not be read.
    #[error("read {path}: {source}")]
    Read {
        /// The file that was read.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid YAML for [`Config`] (bad syntax, a wrong
    /// type, or an unknown key).
    #[error("parse {path}: {message}")]
    Parse {
        /// The file that was parsed.
        path: PathBuf,
        /// The parser's message, with line and column.
        message: String,
    },
    /// The file parsed, but a value is out of range or inconsistent (the
    /// message names the key).
    #[error("invalid config: {0}")]
    Invalid(String),
}

/// hot → warm → cold timing (docs/engine.md, "Thermal states").
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ThermalConfig {
    /// Idle seconds before a hot sandbox is paused (default 30).
    pub warm_timeout_secs: f64,
    /// Seconds warm before a sandbox is snapshotted to disk (default 1800).
    pub cold_timeout_secs: f64,
    /// How often the manager looks (default 10).
    pub tick_secs: f64,
    /// Set false to turn the thermal manager off.
    pub enabled: bool,
}

impl Default for ThermalConfig {
    fn default() -> Self {
        ThermalConfig {
            warm_timeout_secs: 30.0,
            cold_timeout_secs: 1800.0,
            tick_secs: 10.0,
            enabled: true,
        }
    }
}

impl ThermalConfig {
    /// [`ThermalConfig::warm_timeout_secs`] as a duration (negative = 0).
    pub(crate) fn warm(&self) -> Duration {
        Duration::from_secs_f64(self.warm_timeout_secs.max(0.0))
    }
    /// [`ThermalConfig::cold_timeout_secs`] as a duration (negative = 0).
    pub(crate) fn cold(&self) -> Duration {
        Duration::from_secs_f64(self.cold_timeout_secs.max(0.0))
    }
    /// [`ThermalConfig::tick_secs`] as a duration, at least 50 ms.
    pub(crate) fn tick(&self) -> Duration {
        Duration::from_secs_f64(self.tick_secs.max(0.05))
    }
}

/// One token bucket: `burst` tokens, refilled at `per_minute`.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Bucket {
    /// Capacity: requests allowed back to back from a full bucket (a new
    /// user starts full).
    pub burst: f64,
    /// Tokens added per minute, spread evenly (`per_minute / 60` a second),
    /// up to `burst`: the sustained rate.
    pub per_minute: f64,
}

/// Per-user rate limits (docs/server.md, "Rate limits").
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimits {
    /// Set false to turn every limit off, the failed-authentication
    /// throttle included (default true).
    pub enabled: bool,
    /// Per user, for `POST /sandboxes` (default 10, then 30 a minute).
    pub create: Bucket,
    /// Per user, for exec, file writes and WebSockets (default 30, then 600
    /// a minute).
    pub exec: Bucket,
    /// Per user, for every other request (default 60, then 1200 a minute).
    pub read: Bucket,
    /// Failed authentications per source address (default 10, then 10 a
    /// minute); past it, 429 without a key lookup.
    pub auth_failures: Bucket,
    /// Public proxy requests per client address (default 500, then 1500 a
    /// minute).
    pub public_per_ip: Bucket,
    /// Public proxy requests per published alias, from everyone (default
    /// 2000, then 5000 a minute).
    pub public_per_alias: Bucket,
    /// Web-shell token attempts per client address (default 10, then 600 a
    /// minute: ten a second).
    pub web_shell_attempts: Bucket,
}

impl Default for RateLimits {
    fn default() -> Self {
        RateLimits {
            enabled: true,
            create: Bucket {
                burst: 10.0,
                per_minute: 30.0,
            },
            exec: Bucket {
                burst: 30.0,
                per_minute: 600.0,
            },
            read: Bucket {
                burst: 60.0,
                per_minute: 1200.0,
            },
            auth_failures: Bucket {
                burst: 10.0,
                per_minute: 10.0,
            },
            public_per_ip: Bucket {
                burst: 500.0,
                per_minute: 1500.0,
            },
            public_per_alias: Bucket {
                burst: 2000.0,
                per_minute: 5000.0,
            },
            web_shell_attempts: Bucket {
                burst: 10.0,
                per_minute: 600.0,
            },
        }
    }
}

/// Domain mode: published ports at `<alias>.<proxy_zone>`, the API at
/// `api_host`, both on the public listener (docs/operations.md, "Public
/// URLs").
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct DomainConfig {
    /// The API's own host name on the public listener (e.g.
    /// `api.example.com`); unset: the API is not served there.
    pub api_host: Option<String>,
    /// The zone whose names are aliases (`*.<proxy_zone>`, e.g.
    /// `sb.example.com`); required.
    pub proxy_zone: String,
    /// A PEM certificate (chain) for the public listener, normally a
    /// wildcard for `*.<proxy_zone>`; with `tls_key`.
    pub tls_cert: Option<PathBuf>,
    /// The PEM private key of `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// Obtain certificates per name (the API host, each published alias)
    /// from an ACME CA instead of a configured one, registering with this
    /// address. Cached under `<data_dir>/certs`.
    pub acme_email: Option<String>,
    /// The ACME directory (default Let's Encrypt's production one).
    pub acme_directory: Option<String>,
    /// A PEM CA certificate to trust for the ACME directory's own HTTPS
    /// (a private or test CA); default the system's roots.
    pub acme_ca_file: Option<PathBuf>,
    /// The plain-HTTP listener of domain mode: ACME HTTP-01 challenges, and
    /// a redirect to HTTPS for everything else. Default `:80` with
    /// `acme_email` (the CA checks port 80), none otherwise.
    pub http_listen: Option<String>,
}

/// Volume backups to an S3-compatible bucket (docs/server.md, "Volume
/// backups"). The reference's `s3_*` names are accepted too.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct BackupConfig {
    /// The S3 endpoint URL (`https://s3.example.com`, `http://127.0.0.1:9000`).
    #[serde(alias = "s3_endpoint")]
    pub endpoint: String,
    /// The bucket backups go to.
    #[serde(alias = "s3_bucket")]
    pub bucket: String,
    /// The region (default `us-east-1`).
    #[serde(alias = "s3_region")]
    pub region: String,
    /// Access key ID.
    #[serde(alias = "s3_access_key")]
    pub access_key: String,
    /// Secret access key.
    #[serde(alias = "s3_secret_key")]
    pub secret_key: String,
    /// Path-style requests (`<endpoint>/<bucket>/<key>`), what most
    /// self-hosted servers want; default virtual-hosted style.
    pub path_style: bool,
    /// Scheduled backups.
    pub schedule: Vec<BackupSchedule>,
    /// Backups a schedule keeps per volume when it names no `retention`
    /// (0: keep all).
    pub retention: u32,
    /// Multipart upload part size in MiB (5–1024, default 16).
    pub part_size_mb: u64,
}

/// One scheduled backup.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct BackupSchedule {
    /// The volume's name (every user's volume of that name, as the
    /// reference does, unless `user` narrows it).
    pub volume: String,
    /// Five cron fields: minute hour day-of-month month day-of-week.
    pub cron: String,
    /// Newest backups kept per volume (default: the section's `retention`).
    pub retention: Option<u32>,
    /// Only this user's volume (a user name).
    pub user: Option<String>,
}

impl BackupConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(format!("backup: {m}")));
        if self.bucket.is_empty() {
            return bad("bucket is required".into());
        }
        if !(self.endpoint.starts_with("http://") || self.endpoint.starts_with("https://")) {
            return bad(format!(
                "endpoint {:?} must be an http:// or https:// URL",
                self.endpoint
            ));
        }
        if !(self.part_size_mb == 0 || (5..=1024).contains(&self.part_size_mb)) {
            return bad(format!(
                "part_size_mb must be between 5 and 1024, got {}",
                self.part_size_mb
            ));
        }
        for s in &self.schedule {
            if s.volume.is_empty() {
                return bad("every schedule needs a volume".into());
            }
            if let Err(e) = crate::backup::cron::Cron::parse(&s.cron) {
                return bad(format!("schedule for {:?}: {e}", s.volume));
            }
        }
        Ok(())
    }
}

/// The daemon's settings.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// `firecracker`, `qemu` or `docker`; unset = chosen from the host.
    pub engine: Option<String>,
    /// TCP address of the API. `:8080` means every interface; the default
    /// is loopback only (the Unix socket and an SSH tunnel cover remote
    /// admin until an operator opts in).
    pub listen: String,
    /// Where the daemon keeps its store (`state.db`), keys, images,
    /// snapshots, volumes and every sandbox's disks; created mode 0700, one
    /// daemon per directory (default [`DEFAULT_DATA_DIR`]).
    pub data_dir: PathBuf,
    /// The group (name or numeric ID) whose members may use the API
    /// through [`Config::group_socket`]. Unset: `bhatti` when that group
    /// exists. `""` turns the group socket off.
    pub socket_group: Option<String>,
    /// A second API socket, mode 0660 and owned by `socket_group`, outside
    /// the data directory (which stays 0700: it holds the store, keys and
    /// every sandbox's disks). Unset: `/run/bhatti/api.sock` for the
    /// default data directory, none for any other.
    pub group_socket: Option<PathBuf>,
    /// CLI key (the daemon's URL), accepted so one file serves both, and
    /// ignored by the daemon.
    pub api_url: Option<String>,
    /// CLI key (the API key to send), accepted and ignored by the daemon.
    pub auth_token: Option<String>,
    /// CLI key (a CA certificate for `https` URLs), accepted and ignored
    /// by the daemon.
    pub ca_file: Option<String>,
    /// When idle sandboxes are paused and snapshotted to disk.
    pub thermal: ThermalConfig,
    /// Per-user request rate limits and the failed-authentication throttle.
    pub rate_limits: RateLimits,
    /// Guest kernel (ELF vmlinux) for the microVM engines.
    #[serde(alias = "firecracker_kernel")]
    pub kernel: Option<PathBuf>,
    /// Default root filesystem image (`minimal`).
    #[serde(alias = "firecracker_rootfs")]
    pub rootfs: Option<PathBuf>,
    /// The Firecracker binary, looked up in `PATH` without a `/` (default
    /// `firecracker`); also probed when `engine` is unset.
    pub firecracker_bin: String,
    /// Firecracker: run each VMM under this jailer binary, chrooted in
    /// `<data_dir>/jails` (default none: no jailer).
    pub firecracker_jailer: Option<String>,
    /// Firecracker: stop woken sandboxes with a Diff snapshot merged onto
    /// their cold snapshot (off by default; see docs/decisions.md).
    pub diff_snapshots: bool,
    /// User ID the jailer runs Firecracker as (default 10000); used only
    /// with `firecracker_jailer`.
    pub jail_uid: Option<u32>,
    /// Group ID the jailer runs Firecracker as (default 10000); used only
    /// with `firecracker_jailer`.
    pub jail_gid: Option<u32>,
    /// The QEMU binary, looked up in `PATH` without a `/` (default
    /// `qemu-system-x86_64`); also probed when `engine` is unset.
    pub qemu_bin: String,
    /// Docker engine: the image of a sandbox created without one (default
    /// `bhatti/minimal:latest`).
    pub docker_image: Option<String>,
    /// A static lohar binary: injected into Docker containers whose image
    /// lacks one, and into every pulled or imported image. Unset:
    /// `$BHATTI_LOHAR_STATIC`, else the one in the default root filesystem.
    pub lohar: Option<PathBuf>,
    /// Sandboxes snapshotted at once during graceful shutdown (default 10).
    pub shutdown_parallelism: usize,
    /// Snapshot every running sandbox to disk at a graceful shutdown
    /// (default false: VMMs keep running and the next daemon adopts them,
    /// so an upgrade costs no downtime). Set it on hosts about to reboot,
    /// or with a VMM that cannot be adopted (Firecracker), where it is
    /// always done.
    pub snapshot_on_shutdown: bool,
    /// Seconds to drain HTTP connections at shutdown (default 30).
    pub drain_secs: u64,
    /// Seconds a client has to send a request's headers (default 10).
    pub header_timeout_secs: f64,
    /// Seconds an API connection may sit without traffic, with no answer
    /// owed, before it is closed (default 120).
    pub idle_timeout_secs: f64,
    /// Minimum CLI version announced in `X-Bhatti-Min-CLI` (empty = none).
    pub min_cli: String,
    /// Boot timeout for a sandbox in seconds (default: the engine's).
    pub boot_timeout_secs: Option<u64>,
    /// Default memory for a sandbox created without `memory_mb`.
    pub default_memory_mb: u32,
    /// Networks a sandbox with egress `public` may not reach (its owner's
    /// own sandboxes excepted; an explicit allow-list is not affected).
    /// Default: link-local (cloud metadata) and the private ranges
    /// (10/8, 100.64/10, 172.16/12, 192.168/16); `[]` turns it off.
    pub egress_blocked_cidrs: Vec<Ipv4Cidr>,
    /// The microVM engine's sandbox address pool (one /24 per owner).
    /// Unset: the pool this data directory used before, else the first one
    /// no other daemon on the host has claimed (`10.200.0.0/13`, then /16s
    /// from `10.208.0.0`). Remembered in `<data_dir>/net-pool`.
    pub sandbox_pool: Option<Ipv4Cidr>,
    /// Users who see the whole daemon in `/metrics` (others see only their
    /// own sandboxes). Default: `admin`, the user the quickstart creates.
    pub admin_users: Vec<String>,
    /// Registries (`host[:port]`) pulled from over plain HTTP; loopback
    /// ones always are, every other registry needs HTTPS.
    pub insecure_registries: Vec<String>,
    /// When not empty, the only registries (`host[:port]` as references
    /// name them, e.g. `docker.io`, `ghcr.io`) images may be pulled from.
    pub allowed_registries: Vec<String>,
    /// Seconds a registry may take to accept a connection or send the next
    /// bytes before the pull fails (default 60).
    pub registry_timeout_secs: u64,
    /// The image of a sandbox created without one. Unset: `base` when that
    /// image is installed (`<data_dir>/images/rootfs-base.ext4`, what the
    /// quickstart does), else `minimal`.
    pub default_image: Option<String>,
    /// Address of the public listener (e.g. `:8443`): published ports at
    /// `/<alias>/…` with no key, and, with `domain`, at `<alias>.<zone>`.
    /// Unset: none, or with `domain` `:443` (`:80` without TLS).
    pub public_proxy_listen: Option<String>,
    /// Domain mode for the public listener.
    pub domain: Option<DomainConfig>,
    /// Volume backups; unset, every backup route answers 501.
    pub backup: Option<BackupConfig>,
    /// Per-user DNS for microVM sandboxes: each resolves its owner's
    /// other sandboxes by name (default true).
    pub per_user_dns: bool,
    /// MicroVM creates restore a template snapshot of their image and shape
    /// instead of booting (built in the background after the first boot;
    /// default true). See docs/engine.md, "Template snapshots".
    pub template_snapshots: bool,
    /// Resolvers the per-user DNS forwards other names to (`ip` or
    /// `ip:port`). Default: the host's, from /etc/resolv.conf.
    pub dns_upstreams: Vec<String>,
    /// Warm pools (microVM engines, with `template_snapshots`): sandboxes
    /// kept restored and paused for creates to take. Unset: one pool of
    /// [`DEFAULT_POOL_SIZE`] for the default image at 1 vCPU and
    /// `default_memory_mb`; `[]`: none. See docs/engine.md, "Warm pools".
    pub pools: Option<Vec<bhatti_api::PoolConfig>>,
}

/// The default pool's size: small, each costs the host its guest's
/// resident memory.
pub const DEFAULT_POOL_SIZE: u32 = 2;
/// The largest pool `pools` or `PUT /admin/pools` may ask for.
pub use bhatti_api::rules::MAX_POOL_SIZE;

/// `pools` (or a `PUT /admin/pools`) checked.
pub fn check_pools(pools: &[bhatti_api::PoolConfig]) -> Result<(), String> {
    for p in pools {
        if p.size > MAX_POOL_SIZE {
            return Err(format!(
                "a pool holds at most {MAX_POOL_SIZE} sandboxes, not {}",
                p.size
            ));
        }
        if p.cpus
            .is_some_and(|c| c == 0 || f64::from(c) > crate::validate::MAX_CPUS)
        {
            return Err(format!(
                "a pool's cpus must be from 1 to {}",
                crate::validate::MAX_CPUS
            ));
        }
        if p.memory_mb.is_some_and(|m| m < 128) {
            return Err("a pool's memory_mb must be at least 128".into());
        }
    }
    Ok(())
}

impl Default for Config {
    fn default() -> Self {
        Config {
            engine: None,
            listen: "127.0.0.1:8080".into(),
            data_dir: PathBuf::from(DEFAULT_DATA_DIR),
            socket_group: None,
            group_socket: None,
            api_url: None,
            auth_token: None,
            ca_file: None,
            thermal: ThermalConfig::default(),
            rate_limits: RateLimits::default(),
            kernel: None,
            rootfs: None,
            firecracker_bin: "firecracker".into(),
            firecracker_jailer: None,
            diff_snapshots: false,
            jail_uid: None,
            jail_gid: None,
            qemu_bin: "qemu-system-x86_64".into(),
            docker_image: None,
            lohar: None,
            shutdown_parallelism: 10,
            snapshot_on_shutdown: false,
            drain_secs: 30,
            header_timeout_secs: 10.0,
            idle_timeout_secs: 120.0,
            min_cli: String::new(),
            boot_timeout_secs: None,
            default_memory_mb: 1024,
            egress_blocked_cidrs: DEFAULT_EGRESS_BLOCKED.to_vec(),
            sandbox_pool: None,
            admin_users: vec!["admin".into()],
            insecure_registries: Vec::new(),
            allowed_registries: Vec::new(),
            registry_timeout_secs: 60,
            default_image: None,
            public_proxy_listen: None,
            domain: None,
            backup: None,
            per_user_dns: true,
            template_snapshots: true,
            dns_upstreams: Vec::new(),
            pools: None,
        }
    }
}

impl Config {
    /// Loads the config: `explicit` (e.g. `--config`) or `$BHATTI_CONFIG`
    /// alone if given, else [`SYSTEM_CONFIG`] if it exists, else defaults.
    pub fn load(explicit: Option<&Path>) -> Result<Config, ConfigError> {
        let env = std::env::var_os("BHATTI_CONFIG").map(PathBuf::from);
        let path = match explicit.map(Path::to_path_buf).or(env) {
            Some(p) => Some(p),
            None => Some(PathBuf::from(SYSTEM_CONFIG)).filter(|p| p.exists()),
        };
        let cfg = match path {
            Some(p) => {
                let text = std::fs::read_to_string(&p).map_err(|source| ConfigError::Read {
                    path: p.clone(),
                    source,
                })?;
                Config::parse(&text).map_err(|message| ConfigError::Parse { path: p, message })?
            }
            None => Config::default(),
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Parses YAML text (an empty document is the defaults).
    pub fn parse(text: &str) -> Result<Config, String> {
        if text.trim().is_empty() {
            return Ok(Config::default());
        }
        serde_norway::from_str(text).map_err(|e| e.to_string())
    }

    /// Checks what parsing cannot: a known engine, a `listen` that parses,
    /// an existing socket group, nonzero shutdown parallelism, connection
    /// timeouts within 0.1–86400 s, and at least 128 MiB default memory.
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        if let Some(e) = &self.engine {
            if !["firecracker", "qemu", "docker"].contains(&e.as_str()) {
                return Err(ConfigError::Invalid(format!(
                    "engine {e:?}: expected firecracker, qemu or docker"
                )));
            }
        }
        self.listen_addr()?;
        self.group_socket()?;
        if self.shutdown_parallelism == 0 {
            return Err(ConfigError::Invalid(
                "shutdown_parallelism must be at least 1".into(),
            ));
        }
        for (what, v) in [
            ("header_timeout_secs", self.header_timeout_secs),
            ("idle_timeout_secs", self.idle_timeout_secs),
        ] {
            if !(0.1..=86_400.0).contains(&v) {
                return Err(ConfigError::Invalid(format!(
                    "{what} must be between 0.1 and 86400 seconds, got {v}"
                )));
            }
        }
        self.public_addr()?;
        if let Some(b) = &self.backup {
            b.validate()?;
        }
        if let Some(p) = &self.pools {
            check_pools(p).map_err(|e| ConfigError::Invalid(format!("pools: {e}")))?;
        }
        for u in &self.dns_upstreams {
            if crate::dns::upstream(u).is_none() {
                return Err(ConfigError::Invalid(format!(
                    "dns_upstreams: {u:?} is not an IP address or ip:port"
                )));
            }
        }
        if let Some(d) = &self.domain {
            d.validate()?;
        }
        if self.default_memory_mb < 128 {
            return Err(ConfigError::Invalid(
                "default_memory_mb must be at least 128".into(),
            ));
        }
        Ok(())
    }

    /// `listen` as a socket address (`:8080` = all interfaces).
    pub fn listen_addr(&self) -> Result<std::net::SocketAddr, ConfigError> {
        socket_addr("listen", &self.listen)
    }

    /// `public_proxy_listen` as a socket address; unset with `domain`,
    /// `:443` (`:80` without TLS), as the reference's domain mode.
    pub fn public_addr(&self) -> Result<Option<std::net::SocketAddr>, ConfigError> {
        let default = self
            .domain
            .as_ref()
            .map(|d| if d.tls() { ":443" } else { ":80" });
        self.public_proxy_listen
            .as_deref()
            .or(default)
            .map(|l| socket_addr("public_proxy_listen", l))
            .transpose()
    }

    /// The API listeners' connection timeouts.
    pub fn connection_timeouts(&self) -> crate::listener::Timeouts {
        crate::listener::Timeouts {
            header: Duration::from_secs_f64(self.header_timeout_secs),
            idle: Duration::from_secs_f64(self.idle_timeout_secs),
        }
    }

    /// `<data_dir>/api.sock`.
    pub fn api_socket(&self) -> PathBuf {
        self.data_dir.join("api.sock")
    }

    /// Where the group socket goes and for which group ID, if anywhere:
    /// see [`Config::socket_group`] and [`Config::group_socket`].
    pub fn group_socket(&self) -> Result<Option<(PathBuf, u32)>, ConfigError> {
        let gid = match self.socket_group.as_deref().map(str::trim) {
            Some("") => return Ok(None),
            Some(g) => match g.parse::<u32>() {
                Ok(id) => id,
                Err(_) => match nix::unistd::Group::from_name(g) {
                    Ok(Some(grp)) => grp.gid.as_raw(),
                    _ => {
                        return Err(ConfigError::Invalid(format!(
                            "socket_group {g:?}: no such group (groupadd --system {g})"
                        )))
                    }
                },
            },
            None => match nix::unistd::Group::from_name(DEFAULT_SOCKET_GROUP) {
                Ok(Some(grp)) => grp.gid.as_raw(),
                _ => return Ok(None),
            },
        };
        let path = match &self.group_socket {
            Some(p) => p.clone(),
            None if self.data_dir == Path::new(DEFAULT_DATA_DIR) => {
                PathBuf::from(DEFAULT_GROUP_SOCKET)
            }
            None => return Ok(None),
        };
        Ok(Some((path, gid)))
    }

    /// The guest kernel: config, `$BHATTI_GUEST_KERNEL`, the data dir's
    /// `images/vmlinux`, then the guest-artifact cache, then the package's.
    pub fn kernel_path(&self) -> PathBuf {
        self.kernel
            .clone()
            .or_else(|| std::env::var_os("BHATTI_GUEST_KERNEL").map(PathBuf::from))
            .unwrap_or_else(|| self.guest_artifact("vmlinux"))
    }

    /// The default image, found the same way as the kernel.
    pub fn rootfs_path(&self) -> PathBuf {
        self.rootfs
            .clone()
            .or_else(|| std::env::var_os("BHATTI_GUEST_ROOTFS").map(PathBuf::from))
            .unwrap_or_else(|| self.guest_artifact("rootfs-minimal.ext4"))
    }

    /// The first of `images/<name>`, the build cache's and the package's
    /// that exists; when none does, the build cache's (the path a "not
    /// found" should name on a source install).
    fn guest_artifact(&self, name: &str) -> PathBuf {
        let cache = Path::new(GUEST_CACHE).join(name);
        [
            self.data_dir.join("images").join(name),
            cache.clone(),
            Path::new(PACKAGED_GUEST).join(name),
        ]
        .into_iter()
        .find(|p| p.exists())
        .unwrap_or(cache)
    }
}

/// `host:port`, or `:port` for every interface.
fn socket_addr(key: &str, value: &str) -> Result<std::net::SocketAddr, ConfigError> {
    let l = value.trim();
    let full = if l.starts_with(':') {
        format!("0.0.0.0{l}")
    } else {
        l.to_string()
    };
    full.parse()
        .map_err(|_| ConfigError::Invalid(format!("{key} {l:?} is not host:port")))
}

/// A host name in lower case: dot-separated DNS labels.
fn host_name(key: &str, v: &str) -> Result<(), ConfigError> {
    let ok = !v.is_empty()
        && v.len() <= 253
        && v.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes()
                    .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'-'))
        });
    if ok {
        Ok(())
    } else {
        Err(ConfigError::Invalid(format!(
            "{key} {v:?} is not a lower-case host name"
        )))
    }
}

impl DomainConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        host_name("domain.proxy_zone", &self.proxy_zone)?;
        if let Some(h) = &self.api_host {
            host_name("domain.api_host", h)?;
        }
        match (&self.tls_cert, &self.tls_key) {
            (Some(_), None) | (None, Some(_)) => {
                return Err(ConfigError::Invalid(
                    "domain.tls_cert and domain.tls_key go together".into(),
                ))
            }
            (Some(_), Some(_)) if self.acme_email.is_some() => {
                return Err(ConfigError::Invalid(
                    "domain: either tls_cert/tls_key or acme_email, not both".into(),
                ))
            }
            _ => {}
        }
        if let Some(e) = &self.acme_email {
            if !e.contains('@') || e.contains(char::is_whitespace) {
                return Err(ConfigError::Invalid(format!(
                    "domain.acme_email {e:?} is not an email address"
                )));
            }
        }
        if let Some(l) = &self.http_listen {
            socket_addr("domain.http_listen", l)?;
        }
        Ok(())
    }

    /// The public listener speaks TLS.
    pub fn tls(&self) -> bool {
        self.tls_cert.is_some() || self.acme_email.is_some()
    }

    /// `scheme://host[:port]` of `host` on a public listener at `port`
    /// (the port left out when it is the scheme's own).
    pub fn origin(&self, host: &str, port: u16) -> String {
        let (scheme, default_port) = if self.tls() {
            ("https", 443)
        } else {
            ("http", 80)
        };
        if port == default_port {
            format!("{scheme}://{host}")
        } else {
            format!("{scheme}://{host}:{port}")
        }
    }

    /// The label of `host` in the proxy zone (`a` of `a.<zone>`), when
    /// `host` is exactly one level below the zone.
    pub fn zone_label<'h>(&self, host: &'h str) -> Option<&'h str> {
        host.strip_suffix(self.proxy_zone.as_str())?
            .strip_suffix('.')
            .filter(|l| !l.is_empty() && !l.contains('.'))
    }

    /// Where the plain-HTTP listener goes, if anywhere (see
    /// [`DomainConfig::http_listen`]).
    pub fn http_addr(&self) -> Result<Option<std::net::SocketAddr>, ConfigError> {
        match (&self.http_listen, &self.acme_email) {
            (Some(l), _) => socket_addr("domain.http_listen", l).map(Some),
            (None, Some(_)) => socket_addr("domain.http_listen", ":80").map(Some),
            (None, None) => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_reference_keys() {
        let c = Config::parse("").unwrap();
        assert_eq!(c, Config::default());
        let c = Config::parse(
            "engine: qemu\nlisten: \":9090\"\ndata_dir: /tmp/x\nfirecracker_kernel: /k\n\
             api_url: http://h\nca_file: /etc/ca.pem\nthermal:\n  warm_timeout_secs: 2\n  tick_secs: 0.5\n\
             rate_limits:\n  exec: {burst: 5, per_minute: 60}\n",
        )
        .unwrap();
        assert_eq!(c.engine.as_deref(), Some("qemu"));
        assert_eq!(c.listen_addr().unwrap().port(), 9090);
        assert!(c.listen_addr().unwrap().ip().is_unspecified());
        assert_eq!(c.kernel.as_deref(), Some(Path::new("/k")));
        assert_eq!(c.thermal.warm(), Duration::from_secs(2));
        assert_eq!(c.thermal.cold(), Duration::from_secs(1800));
        assert_eq!(c.rate_limits.exec.burst, 5.0);
        assert_eq!(c.rate_limits.read.burst, 60.0);
    }

    #[test]
    fn typos_and_bad_values_are_errors() {
        assert!(Config::parse("engnie: qemu").is_err());
        let c = Config::parse("engine: vmware").unwrap();
        assert!(c.validate().is_err());
        let c = Config::parse("listen: nowhere").unwrap();
        assert!(c.validate().is_err());
        let c = Config::parse("default_memory_mb: 64").unwrap();
        assert!(c.validate().is_err());
        // A socket group that does not exist is named, not ignored.
        let c = Config::parse("socket_group: no-such-group-here").unwrap();
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("no-such-group-here"), "{e}");
        // Off, and a numeric group for the default data dir.
        let c = Config::parse("socket_group: \"\"").unwrap();
        assert_eq!(c.group_socket().unwrap(), None);
        let c = Config::parse("socket_group: \"4242\"").unwrap();
        assert_eq!(
            c.group_socket().unwrap(),
            Some((PathBuf::from(DEFAULT_GROUP_SOCKET), 4242))
        );
        let c = Config::parse("socket_group: \"4242\"\ndata_dir: /srv/b").unwrap();
        assert_eq!(c.group_socket().unwrap(), None, "only the default data dir");
        assert!(Config::parse("egress_blocked_cidrs: [10.0.0.1/8]").is_err());
        assert!(Config::parse("egress_blocked_cidrs: [nope]").is_err());
    }

    #[test]
    fn a_v1_domain_config_starts() {
        let c = Config::parse(
            "domain:\n  api_host: api.example.com\n  proxy_zone: sb.example.com\n  \
             acme_email: ops@example.com\ndns_upstreams: [1.1.1.1, 8.8.8.8]\n",
        )
        .unwrap();
        c.validate().unwrap();
        assert_eq!(c.public_addr().unwrap().unwrap().port(), 443);
        let d = c.domain.as_ref().unwrap();
        assert_eq!(d.http_addr().unwrap().unwrap().port(), 80);
        let c = Config::parse("domain:\n  proxy_zone: sb.example.com\n  tls_cert: /c\n").unwrap();
        assert!(c.validate().is_err(), "a certificate without its key");
        let c = Config::parse("domain:\n  proxy_zone: Not A Host\n").unwrap();
        assert!(c.validate().is_err());
        let c = Config::parse("dns_upstreams: [nowhere]").unwrap();
        assert!(c.validate().is_err());
    }

    #[test]
    fn egress_blocked_cidrs() {
        let d = Config::default().egress_blocked_cidrs;
        for c in [
            "169.254.0.0/16",
            "10.0.0.0/8",
            "172.16.0.0/12",
            "192.168.0.0/16",
            "100.64.0.0/10",
        ] {
            assert!(d.contains(&c.parse().unwrap()), "{c}");
        }
        let c = Config::parse("egress_blocked_cidrs: []").unwrap();
        assert!(c.egress_blocked_cidrs.is_empty());
        let c = Config::parse("egress_blocked_cidrs: [169.254.169.254/32]").unwrap();
        assert_eq!(
            c.egress_blocked_cidrs,
            vec!["169.254.169.254/32".parse().unwrap()]
        );
    }
}
