//! Where the API is and which key to use: [`Endpoint`] and
//! [`ClientConfig`], resolved the way docs/operations.md ("Where the CLI
//! finds the daemon") documents it.
//!
//! Per field, the first of these that is set wins:
//!
//! 1. the explicit value (a `--url` / `--token` flag);
//! 2. the environment: `BHATTI_URL`, `BHATTI_TOKEN`, `BHATTI_CA_FILE` (over the file, the
//!    usual order: a variable set for one command beats what is saved; the
//!    reference had it the other way round);
//! 3. the config file: `$BHATTI_CONFIG` alone if that is set, otherwise the
//!    invoking user's `~/.bhatti/config.yaml` (under `sudo`, `SUDO_USER`'s
//!    home, so `sudo bhatti …` uses the caller's key), keys `api_url`,
//!    `auth_token` and `ca_file`;
//! 4. the default: the daemon's Unix socket `<data_dir>/api.sock` when it
//!    exists (and can be seen: the data dir is root's), else for the
//!    default data dir the group socket `/run/bhatti/api.sock`, otherwise
//!    `http://localhost:8080`. The data dir is
//!    `--data-dir`, else `BHATTI_DATA_DIR`, else the `data_dir` key of the
//!    daemon's config (`$BHATTI_CONFIG` or `/etc/bhatti/config.yaml`, when
//!    readable), else `/var/lib/bhatti`.
//!
//! The resolution is a pure function of [`Overrides`] and an
//! [`Environment`] snapshot so that the precedence is unit-tested without
//! touching the process environment.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::ConfigError;

/// The daemon's default data directory.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/bhatti";
/// The URL used when nothing says otherwise and no socket is found.
pub const DEFAULT_URL: &str = "http://localhost:8080";
/// The API socket members of the `bhatti` group may use (the default
/// data directory's daemon serves it when that group exists).
pub const GROUP_SOCKET: &str = "/run/bhatti/api.sock";
/// The socket's file name inside the data directory.
pub const SOCKET_NAME: &str = "api.sock";
/// The daemon's config file when `$BHATTI_CONFIG` is not set.
pub const SYSTEM_CONFIG: &str = "/etc/bhatti/config.yaml";

/// Where the API listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// HTTP over TCP, plain or TLS: a normalized base URL such as
    /// `http://127.0.0.1:8080` or `https://bhatti.example.com:443` (an
    /// optional path prefix is kept, for a daemon behind a reverse proxy at
    /// `https://host/bhatti`).
    Tcp(String),
    /// The daemon's Unix socket (`<data_dir>/api.sock`).
    Unix(PathBuf),
}

impl Endpoint {
    /// Parses a URL: `http[s]://host[:port][/prefix]`, `host:port` (HTTP
    /// is implied), `unix:///path/api.sock`, or an absolute socket path.
    pub fn parse(url: &str) -> Result<Endpoint, ConfigError> {
        let bad = |reason: &str| ConfigError::Url {
            url: url.to_string(),
            reason: reason.to_string(),
        };
        let s = url.trim();
        if s.is_empty() {
            return Err(bad("empty"));
        }
        if let Some(path) = s.strip_prefix("unix://") {
            if !path.starts_with('/') {
                return Err(bad(
                    "a unix:// URL needs an absolute path (unix:///path/api.sock)",
                ));
            }
            return Ok(Endpoint::Unix(PathBuf::from(path)));
        }
        if s.starts_with('/') {
            return Ok(Endpoint::Unix(PathBuf::from(s)));
        }
        let (tls, rest) = match s.split_once("://") {
            Some(("http", rest)) => (false, rest),
            Some(("https", rest)) => (true, rest),
            Some((scheme, _)) => return Err(bad(&format!("unsupported scheme {scheme:?}"))),
            None => (false, s),
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        if path.contains('?') || path.contains('#') {
            return Err(bad("no query or fragment allowed"));
        }
        let target = TcpTarget::parse_authority(authority, tls).map_err(|r| bad(&r))?;
        let prefix = path.trim_end_matches('/');
        Ok(Endpoint::Tcp(format!(
            "{}://{}{}",
            target.scheme(),
            target.authority(),
            prefix
        )))
    }

    /// The endpoint as a URL string (`http://…` or `unix://…`).
    pub fn url(&self) -> String {
        self.to_string()
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Tcp(u) => f.write_str(u),
            Endpoint::Unix(p) => write!(f, "unix://{}", p.display()),
        }
    }
}

/// A parsed `Endpoint::Tcp` URL: what to dial and what to put in `Host`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TcpTarget {
    pub host: String,
    pub port: u16,
    /// Path prefix without a trailing slash (`""` or `/bhatti`).
    pub prefix: String,
    /// `https://`: the stream is wrapped in TLS after the TCP connect.
    pub tls: bool,
}

impl TcpTarget {
    pub(crate) fn from_url(url: &str) -> Result<TcpTarget, ConfigError> {
        let bad = |reason: String| ConfigError::Url {
            url: url.to_string(),
            reason,
        };
        let (tls, rest) = if let Some(rest) = url.strip_prefix("http://") {
            (false, rest)
        } else if let Some(rest) = url.strip_prefix("https://") {
            (true, rest)
        } else {
            return Err(bad("not an http:// or https:// URL".into()));
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        let mut t = TcpTarget::parse_authority(authority, tls).map_err(bad)?;
        t.prefix = path.trim_end_matches('/').to_string();
        Ok(t)
    }

    fn parse_authority(a: &str, tls: bool) -> Result<TcpTarget, String> {
        if a.is_empty() {
            return Err("no host".into());
        }
        if a.contains('@') {
            return Err("credentials in the URL are not supported; use --token".into());
        }
        let (host, port) = if let Some(rest) = a.strip_prefix('[') {
            // [v6]:port
            let (h, after) = rest
                .split_once(']')
                .ok_or_else(|| "unclosed [ in host".to_string())?;
            let port = match after {
                "" => None,
                p => Some(
                    p.strip_prefix(':')
                        .ok_or_else(|| "junk after ]".to_string())?,
                ),
            };
            (h.to_string(), port)
        } else {
            match a.rsplit_once(':') {
                Some((h, p)) => (h.to_string(), Some(p)),
                None => (a.to_string(), None),
            }
        };
        let host = if host.is_empty() {
            "localhost".to_string()
        } else {
            host
        };
        let port = match port {
            None if tls => 443,
            None => 80,
            Some(p) => p.parse::<u16>().map_err(|_| format!("bad port {p:?}"))?,
        };
        if port == 0 {
            return Err("port 0".into());
        }
        Ok(TcpTarget {
            host,
            port,
            prefix: String::new(),
            tls,
        })
    }

    pub(crate) fn scheme(&self) -> &'static str {
        if self.tls {
            "https"
        } else {
            "http"
        }
    }

    /// `host:port` as it goes into URLs and the `Host` header.
    pub(crate) fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// Values given explicitly (CLI flags); they beat everything else.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// `--url`: the API endpoint (`http(s)://…` or a Unix socket path).
    pub url: Option<String>,
    /// `--token`: the API token.
    pub token: Option<String>,
    /// `--data-dir`: the daemon's data directory.
    pub data_dir: Option<PathBuf>,
    /// `--ca-file`: the PEM certificates an `https://` daemon is verified
    /// against, instead of the system's store.
    pub ca_file: Option<PathBuf>,
}

/// The parts of the process environment that resolution reads.
#[derive(Debug, Clone, Default)]
pub struct Environment {
    /// `BHATTI_URL`.
    pub bhatti_url: Option<String>,
    /// `BHATTI_TOKEN`.
    pub bhatti_token: Option<String>,
    /// `BHATTI_DATA_DIR`.
    pub bhatti_data_dir: Option<PathBuf>,
    /// `BHATTI_CA_FILE`.
    pub bhatti_ca_file: Option<PathBuf>,
    /// `BHATTI_CONFIG`: a config file used alone.
    pub bhatti_config: Option<PathBuf>,
    /// The invoking user's home (see [`invoking_home`]).
    pub home: Option<PathBuf>,
    /// `data_dir` of the daemon's config file (`$BHATTI_CONFIG`, else
    /// `/etc/bhatti/config.yaml`), so the socket and the database are found
    /// where the daemon keeps them.
    pub server_data_dir: Option<PathBuf>,
}

impl Environment {
    /// Reads the real environment. Empty variables count as unset.
    pub fn from_process() -> Environment {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let bhatti_config = var("BHATTI_CONFIG").map(PathBuf::from);
        let home = invoking_home();
        let server_file = bhatti_config
            .clone()
            .unwrap_or_else(|| PathBuf::from(SYSTEM_CONFIG));
        // Best effort: the system file is often readable by root only.
        let server_data_dir = read_file_keys(&server_file)
            .ok()
            .and_then(|k| nonempty(k.data_dir))
            .map(|d| expand_home(&d, home.as_deref()));
        Environment {
            bhatti_url: var("BHATTI_URL"),
            bhatti_token: var("BHATTI_TOKEN"),
            bhatti_data_dir: var("BHATTI_DATA_DIR").map(PathBuf::from),
            bhatti_ca_file: var("BHATTI_CA_FILE").map(PathBuf::from),
            bhatti_config,
            home,
            server_data_dir,
        }
    }

    /// The daemon's data directory: `flag`, else `BHATTI_DATA_DIR`, else the
    /// daemon config's `data_dir`, else [`DEFAULT_DATA_DIR`].
    pub fn data_dir(&self, flag: Option<&Path>) -> PathBuf {
        flag.map(Path::to_path_buf)
            .or_else(|| self.bhatti_data_dir.clone())
            .or_else(|| self.server_data_dir.clone())
            .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR))
    }

    /// The config file the CLI reads: `$BHATTI_CONFIG`, else
    /// `~/.bhatti/config.yaml` of the invoking user.
    pub fn config_file(&self) -> Option<PathBuf> {
        self.bhatti_config
            .clone()
            .or_else(|| self.home.as_ref().map(|h| user_config_path(h)))
    }
}

/// `~/x` → `<home>/x`.
fn expand_home(p: &str, home: Option<&Path>) -> PathBuf {
    match (p.strip_prefix("~/"), home) {
        (Some(rest), Some(h)) => h.join(rest),
        _ => PathBuf::from(p),
    }
}

/// `<home>/.bhatti/config.yaml`.
pub fn user_config_path(home: &Path) -> PathBuf {
    home.join(".bhatti").join("config.yaml")
}

/// Which rule chose the endpoint (shown by `bhatti version`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UrlSource {
    /// The `--url` flag.
    Flag,
    /// `api_url` of this config file.
    File(PathBuf),
    /// `BHATTI_URL`.
    Env,
    /// `<data_dir>/api.sock` exists.
    Socket,
    /// Nothing set and no socket found: [`DEFAULT_URL`].
    Default,
}

impl fmt::Display for UrlSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UrlSource::Flag => f.write_str("--url"),
            UrlSource::File(p) => write!(f, "{}", p.display()),
            UrlSource::Env => f.write_str("BHATTI_URL"),
            UrlSource::Socket => f.write_str("local daemon socket"),
            UrlSource::Default => f.write_str("default"),
        }
    }
}

/// A resolved client configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientConfig {
    /// Where the API is reached.
    pub endpoint: Endpoint,
    /// Sent as `Authorization: Bearer <token>`; none = no header.
    pub token: Option<String>,
    /// The daemon's data directory (for the socket and DB-direct commands).
    pub data_dir: PathBuf,
    /// Which rule chose `endpoint`.
    pub url_source: UrlSource,
    /// PEM CA certificates for an `https://` endpoint; none = the system's
    /// trust store.
    pub ca_file: Option<PathBuf>,
}

/// The two keys the CLI reads from a config file; the daemon's keys in the
/// same file are ignored here.
#[derive(Debug, Default, Deserialize)]
struct FileKeys {
    #[serde(default)]
    api_url: Option<String>,
    #[serde(default)]
    auth_token: Option<String>,
    #[serde(default)]
    data_dir: Option<String>,
    #[serde(default)]
    ca_file: Option<String>,
}

/// Reads `api_url` / `auth_token` from a YAML file; a missing file is empty.
fn read_file_keys(path: &Path) -> Result<FileKeys, ConfigError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(FileKeys::default()),
        Err(source) => {
            return Err(ConfigError::Read {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    if text.trim().is_empty() {
        return Ok(FileKeys::default());
    }
    serde_norway::from_str::<Option<FileKeys>>(&text)
        .map(Option::unwrap_or_default)
        .map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })
}

fn nonempty(v: Option<String>) -> Option<String> {
    v.map(|s| s.trim().to_string()).filter(|s| !s.is_empty())
}

impl ClientConfig {
    /// A config for an explicit endpoint and token (library use).
    pub fn new(endpoint: Endpoint, token: Option<String>) -> ClientConfig {
        ClientConfig {
            endpoint,
            token,
            data_dir: PathBuf::from(DEFAULT_DATA_DIR),
            url_source: UrlSource::Flag,
            ca_file: None,
        }
    }

    /// Resolves against the real environment and files.
    pub fn resolve(o: &Overrides) -> Result<ClientConfig, ConfigError> {
        ClientConfig::resolve_with(o, &Environment::from_process())
    }

    /// Resolves against an explicit environment snapshot.
    pub fn resolve_with(o: &Overrides, env: &Environment) -> Result<ClientConfig, ConfigError> {
        let data_dir = env.data_dir(o.data_dir.as_deref());

        let (file, file_path) = match env.config_file() {
            Some(p) => (read_file_keys(&p)?, Some(p)),
            None => (FileKeys::default(), None),
        };

        let token = nonempty(o.token.clone())
            .or_else(|| nonempty(env.bhatti_token.clone()))
            .or_else(|| nonempty(file.auth_token));

        let ca_file = o
            .ca_file
            .clone()
            .or_else(|| env.bhatti_ca_file.clone())
            .or_else(|| {
                nonempty(file.ca_file.clone()).map(|p| expand_home(&p, env.home.as_deref()))
            });

        let (url, source) = if let Some(u) = nonempty(o.url.clone()) {
            (Some(u), UrlSource::Flag)
        } else if let Some(u) = nonempty(env.bhatti_url.clone()) {
            (Some(u), UrlSource::Env)
        } else if let Some(u) = nonempty(file.api_url) {
            let p = file_path.unwrap_or_default();
            (Some(u), UrlSource::File(p))
        } else {
            (None, UrlSource::Default)
        };

        let (endpoint, url_source) = match url {
            Some(u) => (Endpoint::parse(&u)?, source),
            None => {
                let sock = data_dir.join(SOCKET_NAME);
                let group = Path::new(GROUP_SOCKET);
                if sock.exists() {
                    (Endpoint::Unix(sock), UrlSource::Socket)
                } else if data_dir == Path::new(DEFAULT_DATA_DIR) && group.exists() {
                    // The data dir is root's alone; a member of the
                    // daemon's group gets in through this one.
                    (Endpoint::Unix(group.to_path_buf()), UrlSource::Socket)
                } else {
                    (Endpoint::Tcp(DEFAULT_URL.to_string()), UrlSource::Default)
                }
            }
        };
        Ok(ClientConfig {
            endpoint,
            token,
            data_dir,
            url_source,
            ca_file,
        })
    }
}

/// The home directory of the user who invoked the program: under `sudo`
/// (effective root with `SUDO_USER` set) that user's home from the password
/// database, otherwise `$HOME`, otherwise the current user's entry.
pub fn invoking_home() -> Option<PathBuf> {
    if let Some(u) = sudo_user() {
        if let Some(dir) = Some(u.dir).filter(|d| !d.as_os_str().is_empty()) {
            return Some(dir);
        }
    }
    if let Some(h) = std::env::var_os("HOME").filter(|h| !h.is_empty()) {
        return Some(PathBuf::from(h));
    }
    nix::unistd::User::from_uid(nix::unistd::getuid())
        .ok()
        .flatten()
        .map(|u| u.dir)
}

/// The `sudo` invoker's account, when running as root under sudo.
pub fn sudo_user() -> Option<nix::unistd::User> {
    if !nix::unistd::geteuid().is_root() {
        return None;
    }
    let name = std::env::var("SUDO_USER")
        .ok()
        .filter(|n| !n.is_empty() && n != "root")?;
    nix::unistd::User::from_name(&name).ok().flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_with_home(home: &Path) -> Environment {
        Environment {
            home: Some(home.to_path_buf()),
            bhatti_data_dir: Some(home.join("nodata")),
            ..Default::default()
        }
    }

    fn write_cfg(home: &Path, text: &str) {
        let p = user_config_path(home);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    #[test]
    fn parses_endpoints() {
        let t = |s: &str| Endpoint::parse(s).unwrap().to_string();
        assert_eq!(t("http://127.0.0.1:8080"), "http://127.0.0.1:8080");
        assert_eq!(t("http://127.0.0.1:8080/"), "http://127.0.0.1:8080");
        assert_eq!(t("localhost:9000"), "http://localhost:9000");
        assert_eq!(t(":8080"), "http://localhost:8080");
        assert_eq!(t("http://example.com"), "http://example.com:80");
        assert_eq!(t("http://h:1/bhatti/"), "http://h:1/bhatti");
        assert_eq!(t("http://[::1]:8080"), "http://[::1]:8080");
        assert_eq!(
            Endpoint::parse("unix:///var/lib/bhatti/api.sock").unwrap(),
            Endpoint::Unix("/var/lib/bhatti/api.sock".into())
        );
        assert_eq!(
            Endpoint::parse("/tmp/x.sock").unwrap(),
            Endpoint::Unix("/tmp/x.sock".into())
        );
        assert_eq!(t("https://x"), "https://x:443");
        assert_eq!(t("https://x:8443/b/"), "https://x:8443/b");
        assert!(Endpoint::parse("ftp://x").is_err());
        assert!(Endpoint::parse("http://h:notaport").is_err());
        assert!(Endpoint::parse("unix://relative").is_err());
        assert!(Endpoint::parse("").is_err());

        let tt = TcpTarget::from_url("http://[::1]:8080/p").unwrap();
        assert_eq!(tt.host, "::1");
        assert_eq!(tt.port, 8080);
        assert_eq!(tt.prefix, "/p");
        assert_eq!(tt.authority(), "[::1]:8080");
        assert!(!tt.tls);
        let ts = TcpTarget::from_url("https://h.example").unwrap();
        assert!(ts.tls);
        assert_eq!(ts.port, 443);
    }

    #[test]
    fn flag_beats_env_beats_file_beats_default() {
        let home = tempfile::tempdir().unwrap();
        let mut env = env_with_home(home.path());

        // file only
        write_cfg(
            home.path(),
            "api_url: http://file:2\nauth_token: filetok\nlisten: \":8080\"\n",
        );
        let c = ClientConfig::resolve_with(&Overrides::default(), &env).unwrap();
        assert_eq!(c.endpoint, Endpoint::Tcp("http://file:2".into()));
        assert_eq!(c.token.as_deref(), Some("filetok"));
        assert!(matches!(c.url_source, UrlSource::File(_)));

        // env beats the file
        env.bhatti_url = Some("http://env:1".into());
        env.bhatti_token = Some("envtok".into());
        let c = ClientConfig::resolve_with(&Overrides::default(), &env).unwrap();
        assert_eq!(c.endpoint, Endpoint::Tcp("http://env:1".into()));
        assert_eq!(c.token.as_deref(), Some("envtok"));
        assert_eq!(c.url_source, UrlSource::Env);

        // flags beat the file
        let o = Overrides {
            url: Some("http://flag:3".into()),
            token: Some("flagtok".into()),
            data_dir: None,
            ca_file: None,
        };
        let c = ClientConfig::resolve_with(&o, &env).unwrap();
        assert_eq!(c.endpoint, Endpoint::Tcp("http://flag:3".into()));
        assert_eq!(c.token.as_deref(), Some("flagtok"));
        assert_eq!(c.url_source, UrlSource::Flag);

        // fields resolve independently: the env has only a URL
        env.bhatti_token = None;
        let c = ClientConfig::resolve_with(&Overrides::default(), &env).unwrap();
        assert_eq!(c.endpoint, Endpoint::Tcp("http://env:1".into()));
        assert_eq!(c.token.as_deref(), Some("filetok"));
    }

    #[test]
    fn ca_file_flag_beats_env_beats_file() {
        let home = tempfile::tempdir().unwrap();
        let mut env = env_with_home(home.path());
        write_cfg(home.path(), "api_url: https://h\nca_file: ~/ca.pem\n");
        let c = ClientConfig::resolve_with(&Overrides::default(), &env).unwrap();
        assert_eq!(c.ca_file, Some(home.path().join("ca.pem")));
        assert_eq!(c.endpoint, Endpoint::Tcp("https://h:443".into()));
        env.bhatti_ca_file = Some("/env/ca.pem".into());
        let c = ClientConfig::resolve_with(&Overrides::default(), &env).unwrap();
        assert_eq!(c.ca_file, Some(PathBuf::from("/env/ca.pem")));
        let o = Overrides {
            ca_file: Some("/flag/ca.pem".into()),
            ..Default::default()
        };
        let c = ClientConfig::resolve_with(&o, &env).unwrap();
        assert_eq!(c.ca_file, Some(PathBuf::from("/flag/ca.pem")));
    }

    #[test]
    fn default_is_socket_when_present_else_localhost() {
        let home = tempfile::tempdir().unwrap();
        let env = env_with_home(home.path());
        let c = ClientConfig::resolve_with(&Overrides::default(), &env).unwrap();
        assert_eq!(c.endpoint, Endpoint::Tcp(DEFAULT_URL.into()));
        assert_eq!(c.url_source, UrlSource::Default);
        assert_eq!(c.token, None);

        let data = tempfile::tempdir().unwrap();
        std::fs::write(data.path().join(SOCKET_NAME), b"").unwrap();
        let o = Overrides {
            data_dir: Some(data.path().to_path_buf()),
            ..Default::default()
        };
        let c = ClientConfig::resolve_with(&o, &env).unwrap();
        assert_eq!(c.endpoint, Endpoint::Unix(data.path().join(SOCKET_NAME)));
        assert_eq!(c.url_source, UrlSource::Socket);
        assert_eq!(c.data_dir, data.path());

        // BHATTI_DATA_DIR is the fallback for --data-dir
        let mut env2 = env.clone();
        env2.bhatti_data_dir = Some(data.path().to_path_buf());
        let c = ClientConfig::resolve_with(&Overrides::default(), &env2).unwrap();
        assert_eq!(c.url_source, UrlSource::Socket);

        // any URL anywhere disables the socket default
        env2.bhatti_url = Some("http://x:5".into());
        let c = ClientConfig::resolve_with(&Overrides::default(), &env2).unwrap();
        assert_eq!(c.endpoint, Endpoint::Tcp("http://x:5".into()));
    }

    #[test]
    fn data_dir_precedence() {
        let mut env = Environment {
            server_data_dir: Some("/srv/bhatti".into()),
            ..Default::default()
        };
        assert_eq!(env.data_dir(None), PathBuf::from("/srv/bhatti"));
        env.bhatti_data_dir = Some("/env".into());
        assert_eq!(env.data_dir(None), PathBuf::from("/env"));
        assert_eq!(
            env.data_dir(Some(Path::new("/flag"))),
            PathBuf::from("/flag")
        );
        assert_eq!(
            Environment::default().data_dir(None),
            PathBuf::from(DEFAULT_DATA_DIR)
        );
        assert_eq!(
            expand_home("~/.bhatti", Some(Path::new("/home/a"))),
            PathBuf::from("/home/a/.bhatti")
        );
    }

    #[test]
    fn bhatti_config_is_used_alone_and_bad_files_are_errors() {
        let home = tempfile::tempdir().unwrap();
        write_cfg(home.path(), "api_url: http://home:1\n");
        let other = home.path().join("other.yaml");
        std::fs::write(&other, "auth_token: t\n").unwrap();
        let mut env = env_with_home(home.path());
        env.bhatti_config = Some(other.clone());
        let c = ClientConfig::resolve_with(&Overrides::default(), &env).unwrap();
        assert_eq!(c.endpoint, Endpoint::Tcp(DEFAULT_URL.into()));
        assert_eq!(c.token.as_deref(), Some("t"));

        std::fs::write(&other, "api_url: [unclosed\n").unwrap();
        let e = ClientConfig::resolve_with(&Overrides::default(), &env).unwrap_err();
        assert!(matches!(e, ConfigError::Parse { .. }), "{e}");

        // empty values count as unset; an empty file is fine
        std::fs::write(&other, "").unwrap();
        assert!(ClientConfig::resolve_with(&Overrides::default(), &env).is_ok());
        std::fs::write(&other, "api_url: \"\"\n").unwrap();
        let c = ClientConfig::resolve_with(&Overrides::default(), &env).unwrap();
        assert_eq!(c.url_source, UrlSource::Default);
    }
}
