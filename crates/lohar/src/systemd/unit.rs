//! Unit files: finding them, parsing them, and turning them into a typed
//! service definition.
//!
//! Debian's packages ship units written for systemd, so the loader follows
//! systemd's rules where packages depend on them: the search path (first
//! directory wins), drop-ins from `<unit>.d/*.conf` in every directory
//! (sorted by file name, later overriding earlier), aliases (a symlink to
//! another unit file), template instances (`foo@bar.service` from
//! `foo@.service`, with `%i`), masking (a symlink to `/dev/null`), and an
//! empty assignment resetting a list (`ExecStart=` in a drop-in).
//!
//! Everything here is pure: a bad unit is a [`UnitError`] with the file and
//! line, which `systemctl status` shows as the unit's reason.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Targets that are always considered reached: nothing waits on them.
pub const ALWAYS_ACTIVE_TARGETS: &[&str] = &[
    "sysinit.target",
    "multi-user.target",
    "default.target",
    "graphical.target",
    "network.target",
    "network-online.target",
    "network-pre.target",
    "nss-lookup.target",
    "remote-fs.target",
    "local-fs.target",
    "time-set.target",
    "time-sync.target",
    "sockets.target",
    "timers.target",
    "paths.target",
    "basic.target",
];

/// Why a unit could not be loaded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnitError {
    /// No file for the unit on the search path.
    #[error("unit {0} not found")]
    NotFound(String),
    /// The unit is a symlink to `/dev/null`.
    #[error("unit {0} is masked")]
    Masked(String),
    /// The name is not a unit name we can manage.
    #[error("invalid unit name {0:?}")]
    BadName(String),
    /// A line that is not `KEY=VALUE`, a section header or a comment.
    #[error("{file}:{line}: {what}")]
    Syntax {
        /// The file (unit or drop-in).
        file: String,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        what: String,
    },
    /// A setting the service cannot run with.
    #[error("{0}")]
    BadSetting(String),
    /// Reading the file failed.
    #[error("read {file}: {error}")]
    Io {
        /// The file.
        file: String,
        /// The OS error, as text (the error is cloned into statuses).
        error: String,
    },
}

/// `[Section]` → key → values in order (repeated keys accumulate; an empty
/// assignment clears what came before).
pub type Sections = BTreeMap<String, BTreeMap<String, Vec<String>>>;

/// Parses one unit file's text into `into`, so drop-ins layer on top.
pub fn parse_into(into: &mut Sections, text: &str, file: &str) -> Result<(), UnitError> {
    let mut section: Option<String> = None;
    let mut lines = text.lines().enumerate();
    while let Some((idx, raw)) = lines.next() {
        let lineno = idx.saturating_add(1);
        let mut line = raw.trim().to_string();
        // Continuation lines: a trailing backslash joins the next line.
        while line.ends_with('\\') {
            line.pop();
            match lines.next() {
                Some((_, next)) => {
                    let next = next.trim();
                    if next.starts_with('#') || next.starts_with(';') {
                        continue;
                    }
                    // The backslash becomes one space.
                    let kept = line.trim_end().len();
                    line.truncate(kept);
                    line.push(' ');
                    line.push_str(next);
                }
                None => break,
            }
        }
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(rest) = line.strip_prefix('[') {
            let Some(name) = rest.strip_suffix(']') else {
                return Err(UnitError::Syntax {
                    file: file.into(),
                    line: lineno,
                    what: format!("unterminated section header {line:?}"),
                });
            };
            section = Some(name.trim().to_string());
            continue;
        }
        let Some((k, v)) = line.split_once('=') else {
            return Err(UnitError::Syntax {
                file: file.into(),
                line: lineno,
                what: format!("expected KEY=VALUE, got {line:?}"),
            });
        };
        let Some(sec) = &section else {
            return Err(UnitError::Syntax {
                file: file.into(),
                line: lineno,
                what: "assignment outside of a section".into(),
            });
        };
        let key = k.trim();
        if key.is_empty() || key.contains(char::is_whitespace) {
            return Err(UnitError::Syntax {
                file: file.into(),
                line: lineno,
                what: format!("invalid key {key:?}"),
            });
        }
        let v = v.trim();
        let vals = into
            .entry(sec.clone())
            .or_default()
            .entry(key.to_string())
            .or_default();
        if v.is_empty() {
            vals.clear();
        } else {
            vals.push(v.to_string());
        }
    }
    Ok(())
}

/// Where unit files are looked for, first match wins.
#[derive(Debug, Clone)]
pub struct SearchPath {
    /// Directories in priority order (`/etc/systemd/system` first).
    pub dirs: Vec<PathBuf>,
    /// The directory `enable`, `mask` and aliases write to.
    pub config_dir: PathBuf,
}

impl SearchPath {
    /// The standard path under `root` (`/` in a guest, a temporary directory
    /// in tests).
    pub fn under(root: &Path) -> SearchPath {
        let dirs = [
            "etc/systemd/system",
            "run/systemd/system",
            "usr/local/lib/systemd/system",
            "usr/lib/systemd/system",
            "lib/systemd/system",
        ]
        .iter()
        .map(|d| root.join(d))
        .collect();
        SearchPath {
            dirs,
            config_dir: root.join("etc/systemd/system"),
        }
    }

    /// The first file named `name` on the path (symlinks not followed).
    pub fn find(&self, name: &str) -> Option<PathBuf> {
        self.dirs
            .iter()
            .map(|d| d.join(name))
            .find(|p| p.symlink_metadata().is_ok())
    }
}

/// A unit name split into its parts: `foo@bar.service` → prefix `foo`,
/// instance `bar`, suffix `service`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitName {
    /// The full name, suffix included.
    pub full: String,
    /// Before the `@` (or the whole stem).
    pub prefix: String,
    /// After the `@`, if this is a template instance.
    pub instance: Option<String>,
    /// `service`, `target`, `socket` …
    pub suffix: String,
}

impl UnitName {
    /// Parses a name as given on a command line: `nginx` means
    /// `nginx.service`.
    pub fn parse(name: &str) -> Result<UnitName, UnitError> {
        let bad = || UnitError::BadName(name.to_string());
        if name.is_empty()
            || name.len() > 255
            || name.contains('/')
            || name.starts_with('.')
            || name.chars().any(|c| c.is_control() || c.is_whitespace())
        {
            return Err(bad());
        }
        let full = if known_suffix(name).is_some() {
            name.to_string()
        } else {
            format!("{name}.service")
        };
        let suffix = known_suffix(&full).ok_or_else(bad)?.to_string();
        let stem = &full[..full.len().saturating_sub(suffix.len().saturating_add(1))];
        let (prefix, instance) = match stem.split_once('@') {
            Some((p, i)) => (p.to_string(), Some(i.to_string())),
            None => (stem.to_string(), None),
        };
        if prefix.is_empty() {
            return Err(bad());
        }
        Ok(UnitName {
            full,
            prefix,
            instance,
            suffix,
        })
    }

    /// The template's file name (`foo@.service`) for an instance.
    pub fn template(&self) -> Option<String> {
        self.instance
            .as_ref()
            .map(|_| format!("{}@.{}", self.prefix, self.suffix))
    }

    /// The short name logs and `journalctl -u` use: `nginx` for
    /// `nginx.service`, the full name otherwise.
    pub fn log_stem(&self) -> &str {
        self.full.strip_suffix(".service").unwrap_or(&self.full)
    }
}

fn known_suffix(name: &str) -> Option<&'static str> {
    [
        "service", "target", "socket", "timer", "path", "mount", "slice", "scope", "device", "swap",
    ]
    .into_iter()
    .find(|s| {
        name.len() > s.len().saturating_add(1)
            && name.ends_with(s)
            && name
                .as_bytes()
                .get(name.len().saturating_sub(s.len().saturating_add(1)))
                == Some(&b'.')
    })
}

/// A unit file as found: where, under which names, and its merged sections.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The name asked for (after alias resolution it may differ from the
    /// file's).
    pub name: UnitName,
    /// The unit file that was read.
    pub fragment: PathBuf,
    /// Drop-ins applied, in order.
    pub dropins: Vec<PathBuf>,
    /// The merged sections, specifiers not yet expanded.
    pub sections: Sections,
}

impl Loaded {
    /// All values of `key` in `[section]`.
    pub fn all(&self, section: &str, key: &str) -> &[String] {
        self.sections
            .get(section)
            .and_then(|s| s.get(key))
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }

    /// The last value of `key` in `[section]`.
    pub fn last(&self, section: &str, key: &str) -> Option<&str> {
        self.all(section, key).last().map(String::as_str)
    }

    /// Space-separated list values across every assignment.
    pub fn words(&self, section: &str, key: &str) -> Vec<String> {
        self.all(section, key)
            .iter()
            .flat_map(|v| v.split_whitespace().map(str::to_string))
            .collect()
    }

    /// Whether the unit has an `[Install]` section with anything to enable.
    pub fn installable(&self) -> bool {
        ["WantedBy", "RequiredBy", "Alias", "Also"]
            .iter()
            .any(|k| !self.all("Install", k).is_empty())
    }
}

/// Finds and parses `name` (aliases, templates, drop-ins).
pub fn load(path: &SearchPath, name: &str) -> Result<Loaded, UnitError> {
    let name = UnitName::parse(name)?;
    let (fragment, file_name) = resolve(path, &name)?;
    let mut sections = Sections::new();
    let text = std::fs::read_to_string(&fragment).map_err(|e| UnitError::Io {
        file: fragment.display().to_string(),
        error: e.to_string(),
    })?;
    parse_into(&mut sections, &text, &fragment.display().to_string())?;
    // Drop-ins for the name asked for, the file's own name and the template,
    // each dir's `<name>.d/*.conf`; a file name seen in a higher-priority
    // directory hides the same name below it.
    let mut names = vec![name.full.clone()];
    if file_name != name.full {
        names.push(file_name.clone());
    }
    if let Some(t) = name.template() {
        if !names.contains(&t) {
            names.push(t);
        }
    }
    let mut chosen: BTreeMap<String, PathBuf> = BTreeMap::new();
    for n in names.iter().rev() {
        for dir in path.dirs.iter().rev() {
            let d = dir.join(format!("{n}.d"));
            let Ok(rd) = std::fs::read_dir(&d) else {
                continue;
            };
            for e in rd.flatten() {
                let f = e.file_name().to_string_lossy().into_owned();
                if f.ends_with(".conf") {
                    chosen.insert(f, e.path());
                }
            }
        }
    }
    let dropins: Vec<PathBuf> = chosen.into_values().collect();
    for d in &dropins {
        let text = std::fs::read_to_string(d).map_err(|e| UnitError::Io {
            file: d.display().to_string(),
            error: e.to_string(),
        })?;
        parse_into(&mut sections, &text, &d.display().to_string())?;
    }
    Ok(Loaded {
        name,
        fragment,
        dropins,
        sections,
    })
}

/// The file that defines `name`: itself, its alias target, or its template.
fn resolve(path: &SearchPath, name: &UnitName) -> Result<(PathBuf, String), UnitError> {
    let mut candidates = vec![name.full.clone()];
    if let Some(t) = name.template() {
        candidates.push(t);
    }
    for c in candidates {
        let Some(p) = path.find(&c) else { continue };
        return follow(path, &name.full, p);
    }
    Err(UnitError::NotFound(name.full.clone()))
}

/// Follows alias symlinks (at most a few hops) to the real unit file.
fn follow(path: &SearchPath, asked: &str, mut p: PathBuf) -> Result<(PathBuf, String), UnitError> {
    for _ in 0..8 {
        let meta = p.symlink_metadata().map_err(|e| UnitError::Io {
            file: p.display().to_string(),
            error: e.to_string(),
        })?;
        if !meta.file_type().is_symlink() {
            // systemd treats an empty unit file as masked too.
            if meta.len() == 0 {
                return Err(UnitError::Masked(asked.to_string()));
            }
            let name = p
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            return Ok((p, name));
        }
        let target = std::fs::read_link(&p).map_err(|e| UnitError::Io {
            file: p.display().to_string(),
            error: e.to_string(),
        })?;
        if target == Path::new("/dev/null") {
            return Err(UnitError::Masked(asked.to_string()));
        }
        p = if target.is_absolute() {
            // An absolute link made inside a test root points into it
            // already; one made by a package (`/lib/systemd/system/x`) is
            // relative to the guest's root, which is `/` there.
            if target.exists() {
                target
            } else {
                match target
                    .file_name()
                    .and_then(|n| path.find(&n.to_string_lossy()))
                {
                    Some(found) if found != p => found,
                    _ => return Err(UnitError::NotFound(asked.to_string())),
                }
            }
        } else {
            p.parent().map(|d| d.join(&target)).unwrap_or(target)
        };
    }
    Err(UnitError::BadSetting(format!(
        "{asked}: too many levels of alias symlinks"
    )))
}

/// Whether `name` is masked (a `/dev/null` symlink in a unit directory).
pub fn is_masked(path: &SearchPath, name: &str) -> bool {
    path.dirs
        .iter()
        .any(|d| std::fs::read_link(d.join(name)).is_ok_and(|t| t == Path::new("/dev/null")))
}

/// Expands systemd specifiers (`%i`, `%n`, `%p` …) in one value.
pub fn expand_specifiers(v: &str, name: &UnitName, home: &str) -> String {
    if !v.contains('%') {
        return v.to_string();
    }
    let mut out = String::with_capacity(v.len());
    let mut chars = v.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let inst = name.instance.clone().unwrap_or_default();
        match chars.next() {
            Some('i') => out.push_str(&inst),
            Some('I') => out.push_str(&unescape(&inst)),
            Some('n') => out.push_str(&name.full),
            Some('N') => out.push_str(
                name.full
                    .strip_suffix(&format!(".{}", name.suffix))
                    .unwrap_or(&name.full),
            ),
            Some('p') => out.push_str(&name.prefix),
            Some('P') => out.push_str(&unescape(&name.prefix)),
            Some('t') => out.push_str("/run"),
            Some('S') => out.push_str("/var/lib"),
            Some('C') => out.push_str("/var/cache"),
            Some('L') => out.push_str("/var/log"),
            Some('E') => out.push_str("/etc"),
            Some('T') => out.push_str("/tmp"),
            Some('V') => out.push_str("/var/tmp"),
            Some('h') => out.push_str(home),
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

/// systemd's name unescaping: `-` is `/`, `\xNN` a byte.
fn unescape(s: &str) -> String {
    let mut out = Vec::with_capacity(s.len());
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'-' => {
                out.push(b'/');
                i = i.saturating_add(1);
            }
            b'\\' if b.get(i.saturating_add(1)) == Some(&b'x') => {
                let hex = s.get(i.saturating_add(2)..i.saturating_add(4));
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(byte) => {
                        out.push(byte);
                        i = i.saturating_add(4);
                    }
                    None => {
                        out.push(b'\\');
                        i = i.saturating_add(1);
                    }
                }
            }
            c => {
                out.push(c);
                i = i.saturating_add(1);
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `Type=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServiceType {
    /// Running once the process is spawned.
    Simple,
    /// Like simple (the exec itself cannot be observed through the helper).
    Exec,
    /// The started process forks a daemon and exits.
    Forking,
    /// Runs to completion; active (with `RemainAfterExit=yes`) or done.
    Oneshot,
    /// Ready when the process sends `READY=1` to `$NOTIFY_SOCKET`.
    Notify,
}

/// `Restart=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestartPolicy {
    /// Never.
    No,
    /// Whatever the exit.
    Always,
    /// After a clean exit.
    OnSuccess,
    /// After an unclean exit code, a signal or a timeout.
    OnFailure,
    /// After a signal or a timeout.
    OnAbnormal,
    /// After an uncaught signal.
    OnAbort,
}

/// `KillMode=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KillMode {
    /// Every process of the unit.
    ControlGroup,
    /// The main process only.
    Process,
    /// SIGTERM to the main process, SIGKILL to all.
    Mixed,
    /// Nothing is killed.
    None,
}

/// One `Exec*=` line: its flags and its unexpanded words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecLine {
    /// `-`: a failure is ignored.
    pub ignore_failure: bool,
    /// `+`/`!`/`!!`: run with full privileges (as root, not `User=`).
    pub privileged: bool,
    /// `:`: no environment variable expansion.
    pub no_env_expand: bool,
    /// `@`: the second word is argv[0].
    pub argv0: Option<String>,
    /// The program and its arguments, quotes removed.
    pub argv: Vec<String>,
}

/// Splits an `Exec*=` value: prefixes, then words with quoting and
/// backslash escapes as systemd reads them.
pub fn parse_exec(v: &str) -> Result<ExecLine, String> {
    let mut rest = v.trim_start();
    let mut line = ExecLine {
        ignore_failure: false,
        privileged: false,
        no_env_expand: false,
        argv0: None,
        argv: Vec::new(),
    };
    let mut at = false;
    loop {
        match rest.chars().next() {
            Some('-') => line.ignore_failure = true,
            Some('+') | Some('!') => line.privileged = true,
            Some(':') => line.no_env_expand = true,
            Some('@') => at = true,
            Some('|') => {}
            _ => break,
        }
        rest = &rest[1..];
    }
    let mut words = split_words(rest)?;
    if at {
        if words.len() < 2 {
            return Err(format!("{v:?}: '@' needs a program and its argv[0]"));
        }
        let argv0 = words.remove(1);
        line.argv0 = Some(argv0);
    }
    if words.is_empty() {
        return Err(format!("{v:?}: no program given"));
    }
    line.argv = words;
    Ok(line)
}

/// Shell-like word splitting with `"…"`, `'…'` and backslash escapes.
pub fn split_words(s: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            '"' | '\'' => {
                in_word = true;
                let q = c;
                loop {
                    match chars.next() {
                        Some(x) if x == q => break,
                        Some('\\') if q == '"' => match chars.next() {
                            Some(e) => cur.push(unescape_char(e)),
                            None => return Err(format!("{s:?}: dangling backslash")),
                        },
                        Some(x) => cur.push(x),
                        None => return Err(format!("{s:?}: unterminated quote")),
                    }
                }
            }
            '\\' => {
                in_word = true;
                match chars.next() {
                    Some(e) => cur.push(unescape_char(e)),
                    None => return Err(format!("{s:?}: dangling backslash")),
                }
            }
            ';' if !in_word && chars.peek().is_none_or(|n| n.is_whitespace()) => {
                return Err(format!(
                    "{s:?}: several commands on one Exec line are not supported"
                ));
            }
            c => {
                in_word = true;
                cur.push(c);
            }
        }
    }
    if in_word {
        words.push(cur);
    }
    Ok(words)
}

fn unescape_char(c: char) -> char {
    match c {
        'n' => '\n',
        't' => '\t',
        'r' => '\r',
        other => other,
    }
}

/// systemd's time spans: `90`, `5s`, `100ms`, `1min 30s`, `infinity`.
pub fn parse_timespan(v: &str) -> Option<Option<Duration>> {
    let v = v.trim();
    if v == "infinity" {
        return Some(None);
    }
    let mut total = Duration::ZERO;
    let mut any = false;
    for part in v.split_whitespace() {
        let split = part
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(part.len());
        let (num, unit) = part.split_at(split);
        let n: f64 = num.parse().ok()?;
        let secs = match unit {
            "" | "s" | "sec" | "second" | "seconds" => n,
            "ms" | "msec" => n / 1000.0,
            "us" | "usec" => n / 1_000_000.0,
            "m" | "min" | "minute" | "minutes" => n * 60.0,
            "h" | "hr" | "hour" | "hours" => n * 3600.0,
            "d" | "day" | "days" => n * 86400.0,
            _ => return None,
        };
        total = total.checked_add(Duration::try_from_secs_f64(secs).ok()?)?;
        any = true;
    }
    any.then_some(Some(total))
}

fn parse_bool(v: &str) -> Option<bool> {
    match v.to_ascii_lowercase().as_str() {
        "1" | "yes" | "true" | "on" => Some(true),
        "0" | "no" | "false" | "off" => Some(false),
        _ => None,
    }
}

/// `NotifyAccess=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotifyAccess {
    /// Every message is ignored.
    None,
    /// Only the main process's messages count.
    Main,
    /// Any process of the unit's (its cgroup, or its session without
    /// cgroups).
    All,
}

/// A service unit, typed, specifiers expanded.
#[derive(Debug, Clone)]
pub struct Service {
    /// The unit's name.
    pub name: UnitName,
    /// `Description=`.
    pub description: String,
    /// The unit file.
    pub fragment: PathBuf,
    /// `Type=`.
    pub kind: ServiceType,
    /// `ExecStartPre=`.
    pub start_pre: Vec<ExecLine>,
    /// `ExecStart=` (several only for oneshot).
    pub start: Vec<ExecLine>,
    /// `ExecStartPost=`.
    pub start_post: Vec<ExecLine>,
    /// `ExecStop=`.
    pub stop: Vec<ExecLine>,
    /// `ExecStopPost=`.
    pub stop_post: Vec<ExecLine>,
    /// `ExecReload=`.
    pub reload: Vec<ExecLine>,
    /// `Restart=`.
    pub restart: RestartPolicy,
    /// `RestartSec=` (default 100 ms; doubled on each quick failure).
    pub restart_sec: Duration,
    /// `StartLimitIntervalSec=` (default 10 s).
    pub start_limit_interval: Duration,
    /// `StartLimitBurst=` (default 5).
    pub start_limit_burst: u32,
    /// `RemainAfterExit=`.
    pub remain_after_exit: bool,
    /// `User=`.
    pub user: Option<String>,
    /// `Group=`.
    pub group: Option<String>,
    /// `Environment=` assignments, in order.
    pub environment: Vec<(String, String)>,
    /// `EnvironmentFile=` (`-` prefix: optional).
    pub environment_files: Vec<(PathBuf, bool)>,
    /// `WorkingDirectory=` (`-` prefix: optional).
    pub working_directory: Option<(String, bool)>,
    /// `PIDFile=`.
    pub pid_file: Option<PathBuf>,
    /// `NotifyAccess=`: whose sd_notify messages count.
    pub notify_access: NotifyAccess,
    /// `KillMode=`.
    pub kill_mode: KillMode,
    /// `KillSignal=` as a number.
    pub kill_signal: i32,
    /// `TimeoutStartSec=` (`None`: no limit).
    pub timeout_start: Option<Duration>,
    /// `TimeoutStopSec=` (`None`: no limit).
    pub timeout_stop: Option<Duration>,
    /// `SuccessExitStatus=` codes besides 0.
    pub success_exit: Vec<i32>,
    /// `RuntimeDirectory=` and friends: (base, relative names).
    pub directories: Vec<(&'static str, Vec<String>)>,
    /// `RuntimeDirectoryMode=` (octal).
    pub runtime_directory_mode: u32,
    /// `RuntimeDirectoryPreserve=yes`.
    pub runtime_directory_preserve: bool,
    /// `Condition*=`: (kind, negated, path).
    pub conditions: Vec<(String, bool, String)>,
    /// `After=`.
    pub after: Vec<String>,
    /// `Before=`.
    pub before: Vec<String>,
    /// `Requires=` and `BindsTo=`.
    pub requires: Vec<String>,
    /// `Wants=`.
    pub wants: Vec<String>,
    /// cgroup v2 files to write: (file, value).
    pub cgroup_limits: Vec<(&'static str, String)>,
    /// `Limit*=` as `lohar spawn --rlimit` values: (`NOFILE`, `soft:hard`),
    /// each side a number or `infinity`.
    pub rlimits: Vec<(&'static str, String)>,
    /// `UMask=` (octal).
    pub umask: Option<u32>,
}

const DEFAULT_RESTART_SEC: Duration = Duration::from_millis(100);
const DEFAULT_START_LIMIT_INTERVAL: Duration = Duration::from_secs(10);
const DEFAULT_START_LIMIT_BURST: u32 = 5;
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(90);

impl Service {
    /// Types a loaded unit; `home` expands `%h`.
    pub fn from_loaded(l: &Loaded, home: &str) -> Result<Service, UnitError> {
        let name = &l.name;
        let x = |v: &str| expand_specifiers(v, name, home);
        let bad = |what: String| UnitError::BadSetting(format!("{}: {what}", name.full));
        let get = |sec: &str, key: &str| l.last(sec, key).map(x);
        let exec = |key: &str| -> Result<Vec<ExecLine>, UnitError> {
            l.all("Service", key)
                .iter()
                .map(|v| parse_exec(&x(v)).map_err(|e| bad(format!("{key}={e}"))))
                .collect()
        };
        let kind = match get("Service", "Type").as_deref() {
            None | Some("simple") => ServiceType::Simple,
            Some("exec") => ServiceType::Exec,
            Some("forking") => ServiceType::Forking,
            Some("oneshot") => ServiceType::Oneshot,
            Some("notify") | Some("notify-reload") => ServiceType::Notify,
            // `idle` and `dbus` start like simple here (there is no bus).
            Some("idle") | Some("dbus") => ServiceType::Simple,
            Some(other) => return Err(bad(format!("unknown Type={other}"))),
        };
        let start = exec("ExecStart")?;
        if start.is_empty() && kind != ServiceType::Oneshot {
            return Err(bad(
                "Service has no ExecStart= setting, which is only allowed for Type=oneshot services"
                    .into(),
            ));
        }
        if start.len() > 1 && kind != ServiceType::Oneshot {
            return Err(bad(
                "Service has more than one ExecStart= setting, which is only allowed for Type=oneshot services"
                    .into(),
            ));
        }
        let restart = match get("Service", "Restart").as_deref() {
            None | Some("no") => RestartPolicy::No,
            Some("always") => RestartPolicy::Always,
            Some("on-success") => RestartPolicy::OnSuccess,
            Some("on-failure") | Some("on-watchdog") => RestartPolicy::OnFailure,
            Some("on-abnormal") => RestartPolicy::OnAbnormal,
            Some("on-abort") => RestartPolicy::OnAbort,
            Some(other) => return Err(bad(format!("unknown Restart={other}"))),
        };
        let span = |sec: &str,
                    key: &str,
                    default: Option<Duration>|
         -> Result<Option<Duration>, UnitError> {
            match get(sec, key) {
                None => Ok(default),
                Some(v) => parse_timespan(&v).ok_or_else(|| bad(format!("invalid {key}={v}"))),
            }
        };
        let restart_sec = span("Service", "RestartSec", Some(DEFAULT_RESTART_SEC))?
            .unwrap_or(DEFAULT_RESTART_SEC);
        // A timeout of 0 means none, as in systemd.
        let no_zero = |t: Option<Duration>| t.filter(|d| !d.is_zero());
        let timeout_all = no_zero(span("Service", "TimeoutSec", Some(DEFAULT_TIMEOUT))?);
        // A oneshot's start has no timeout unless one is set (systemd's
        // rule: a long migration in ExecStart= is not a hang).
        let start_default =
            if kind == ServiceType::Oneshot && get("Service", "TimeoutSec").is_none() {
                None
            } else {
                timeout_all
            };
        let timeout_start = no_zero(span("Service", "TimeoutStartSec", start_default)?);
        let timeout_stop = no_zero(span("Service", "TimeoutStopSec", timeout_all)?);
        let interval_key = if l.last("Unit", "StartLimitIntervalSec").is_some() {
            ("Unit", "StartLimitIntervalSec")
        } else {
            ("Service", "StartLimitInterval")
        };
        let start_limit_interval = span(
            interval_key.0,
            interval_key.1,
            Some(DEFAULT_START_LIMIT_INTERVAL),
        )?
        .unwrap_or(Duration::ZERO);
        let burst = get("Unit", "StartLimitBurst").or_else(|| get("Service", "StartLimitBurst"));
        let start_limit_burst = match burst {
            None => DEFAULT_START_LIMIT_BURST,
            Some(v) => v
                .parse()
                .map_err(|_| bad(format!("invalid StartLimitBurst={v}")))?,
        };
        let remain_after_exit = get("Service", "RemainAfterExit")
            .map(|v| parse_bool(&v).ok_or_else(|| bad(format!("invalid RemainAfterExit={v}"))))
            .transpose()?
            .unwrap_or(false);
        let mut environment = Vec::new();
        for v in l.all("Service", "Environment") {
            for w in split_words(&x(v)).map_err(|e| bad(format!("Environment={e}")))? {
                match w.split_once('=') {
                    Some((k, val)) if !k.is_empty() => {
                        environment.push((k.to_string(), val.to_string()))
                    }
                    _ => return Err(bad(format!("invalid Environment= assignment {w:?}"))),
                }
            }
        }
        let environment_files = l
            .all("Service", "EnvironmentFile")
            .iter()
            .map(|v| {
                let v = x(v);
                match v.strip_prefix('-') {
                    Some(p) => (PathBuf::from(p), true),
                    None => (PathBuf::from(v), false),
                }
            })
            .collect();
        let working_directory =
            get("Service", "WorkingDirectory").map(|v| match v.strip_prefix('-') {
                Some(p) => (p.to_string(), true),
                None => (v, false),
            });
        let kill_mode = match get("Service", "KillMode").as_deref() {
            None | Some("control-group") => KillMode::ControlGroup,
            Some("process") => KillMode::Process,
            Some("mixed") => KillMode::Mixed,
            Some("none") => KillMode::None,
            Some(other) => return Err(bad(format!("unknown KillMode={other}"))),
        };
        let notify_access = match get("Service", "NotifyAccess").as_deref() {
            // systemd's default for Type=notify: the main process only.
            None | Some("main") => NotifyAccess::Main,
            Some("none") => NotifyAccess::None,
            // `exec` also admits control processes; within the unit's
            // cgroup that is everyone who may speak for it.
            Some("exec" | "all") => NotifyAccess::All,
            Some(other) => return Err(bad(format!("unknown NotifyAccess={other}"))),
        };
        let kill_signal = match get("Service", "KillSignal") {
            None => libc::SIGTERM,
            Some(v) => signal_number(&v).ok_or_else(|| bad(format!("unknown KillSignal={v}")))?,
        };
        let mut success_exit = Vec::new();
        for w in l.words("Service", "SuccessExitStatus") {
            if let Ok(n) = w.parse() {
                success_exit.push(n);
            }
        }
        let mut directories = Vec::new();
        for (key, base) in [
            ("RuntimeDirectory", "/run"),
            ("StateDirectory", "/var/lib"),
            ("CacheDirectory", "/var/cache"),
            ("LogsDirectory", "/var/log"),
            ("ConfigurationDirectory", "/etc"),
        ] {
            let names: Vec<String> = l.words("Service", key).iter().map(|w| x(w)).collect();
            if names
                .iter()
                .any(|n| n.starts_with('/') || n.split('/').any(|c| c == ".."))
            {
                return Err(bad(format!("{key}= must name relative paths")));
            }
            if !names.is_empty() {
                directories.push((base, names));
            }
        }
        let runtime_directory_mode = match get("Service", "RuntimeDirectoryMode") {
            None => 0o755,
            Some(v) => u32::from_str_radix(&v, 8)
                .map_err(|_| bad(format!("invalid RuntimeDirectoryMode={v}")))?,
        };
        let runtime_directory_preserve = get("Service", "RuntimeDirectoryPreserve")
            .is_some_and(|v| parse_bool(&v) == Some(true) || v == "restart");
        let mut conditions = Vec::new();
        for kind in [
            "ConditionPathExists",
            "ConditionPathIsDirectory",
            "ConditionDirectoryNotEmpty",
            "ConditionFileNotEmpty",
            "ConditionFileIsExecutable",
            "AssertPathExists",
        ] {
            for v in l.all("Unit", kind) {
                let v = x(v);
                let v = v.trim_start_matches('|');
                let (neg, p) = match v.strip_prefix('!') {
                    Some(p) => (true, p.to_string()),
                    None => (false, v.to_string()),
                };
                conditions.push((kind.to_string(), neg, p));
            }
        }
        let mut cgroup_limits = Vec::new();
        for (key, file) in [
            ("MemoryMax", "memory.max"),
            ("MemoryHigh", "memory.high"),
            ("MemoryLow", "memory.low"),
            ("MemoryMin", "memory.min"),
            ("TasksMax", "pids.max"),
            ("CPUWeight", "cpu.weight"),
            ("IOWeight", "io.weight"),
        ] {
            if let Some(v) = get("Service", key) {
                cgroup_limits.push((file, cgroup_value(&v)));
            }
        }
        if let Some(v) = get("Service", "CPUQuota") {
            let pct: u64 = v
                .trim_end_matches('%')
                .parse()
                .map_err(|_| bad(format!("invalid CPUQuota={v}")))?;
            cgroup_limits.push(("cpu.max", format!("{} 100000", pct.saturating_mul(1000))));
        }
        let mut rlimits = Vec::new();
        for (key, res) in [
            ("LimitNOFILE", "NOFILE"),
            ("LimitNPROC", "NPROC"),
            ("LimitCORE", "CORE"),
            ("LimitMEMLOCK", "MEMLOCK"),
            ("LimitSTACK", "STACK"),
        ] {
            if let Some(v) = get("Service", key) {
                let (soft, hard) = v.split_once(':').unwrap_or((&v, &v));
                for side in [soft, hard] {
                    if side != "infinity" && cgroup_value(side).parse::<u64>().is_err() {
                        return Err(bad(format!("invalid {key}={v}")));
                    }
                }
                rlimits.push((res, format!("{}:{}", rlimit_side(soft), rlimit_side(hard))));
            }
        }
        let umask = match get("Service", "UMask") {
            None => None,
            Some(v) => Some(
                u32::from_str_radix(&v, 8)
                    .ok()
                    .filter(|m| *m <= 0o777)
                    .ok_or_else(|| bad(format!("invalid UMask={v}")))?,
            ),
        };
        let words = |k: &str| -> Vec<String> {
            l.words("Unit", k)
                .iter()
                .map(|w| {
                    let w = x(w);
                    UnitName::parse(&w).map(|n| n.full).unwrap_or(w)
                })
                .collect()
        };
        let mut requires = words("Requires");
        requires.extend(words("BindsTo"));
        Ok(Service {
            name: name.clone(),
            description: get("Unit", "Description").unwrap_or_else(|| name.full.clone()),
            fragment: l.fragment.clone(),
            kind,
            start_pre: exec("ExecStartPre")?,
            start,
            start_post: exec("ExecStartPost")?,
            stop: exec("ExecStop")?,
            stop_post: exec("ExecStopPost")?,
            reload: exec("ExecReload")?,
            restart,
            restart_sec,
            start_limit_interval,
            start_limit_burst,
            remain_after_exit,
            user: get("Service", "User").filter(|u| !u.is_empty()),
            group: get("Service", "Group").filter(|g| !g.is_empty()),
            environment,
            environment_files,
            working_directory,
            pid_file: get("Service", "PIDFile").map(PathBuf::from),
            notify_access,
            kill_mode,
            kill_signal,
            timeout_start,
            timeout_stop,
            success_exit,
            directories,
            runtime_directory_mode,
            runtime_directory_preserve,
            conditions,
            after: words("After"),
            before: words("Before"),
            requires,
            wants: words("Wants"),
            cgroup_limits,
            rlimits,
            umask,
        })
    }
}

/// `infinity` → `max`; sizes with K/M/G/T suffixes → bytes; the rest as is.
fn cgroup_value(v: &str) -> String {
    if v == "infinity" {
        return "max".into();
    }
    let (num, mult) = match v.chars().last() {
        Some('K') => (&v[..v.len().saturating_sub(1)], 1u64 << 10),
        Some('M') => (&v[..v.len().saturating_sub(1)], 1 << 20),
        Some('G') => (&v[..v.len().saturating_sub(1)], 1 << 30),
        Some('T') => (&v[..v.len().saturating_sub(1)], 1 << 40),
        _ => (v, 1),
    };
    match num.parse::<u64>() {
        Ok(n) => n.saturating_mul(mult).to_string(),
        Err(_) => v.to_string(),
    }
}

/// One side of a `Limit*=` value: `infinity` or bytes/count.
fn rlimit_side(v: &str) -> String {
    if v == "infinity" {
        v.to_string()
    } else {
        cgroup_value(v)
    }
}

/// `SIGTERM`, `TERM` or `15` → 15.
pub fn signal_number(v: &str) -> Option<i32> {
    if let Ok(n) = v.parse::<i32>() {
        return (1..=64).contains(&n).then_some(n);
    }
    let name = v.strip_prefix("SIG").unwrap_or(v);
    let sig: nix::sys::signal::Signal = format!("SIG{name}").parse().ok()?;
    Some(sig as i32)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(root: &Path, rel: &str, text: &str) {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    #[test]
    fn parses_sections_continuations_and_resets() {
        let mut s = Sections::new();
        parse_into(
            &mut s,
            "# c\n[Unit]\nDescription=A \\\n  b\n; x\n[Service]\nExecStart=/bin/a\nExecStart=\nExecStart=/bin/b\n",
            "t",
        )
        .unwrap();
        assert_eq!(s["Unit"]["Description"], vec!["A b"]);
        assert_eq!(s["Service"]["ExecStart"], vec!["/bin/b"]);
    }

    #[test]
    fn syntax_errors_name_the_line() {
        let mut s = Sections::new();
        let e = parse_into(
            &mut s,
            "[Service]\nExecStart=/x\ngarbage line\n",
            "u.service",
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "u.service:3: expected KEY=VALUE, got \"garbage line\""
        );
        let e = parse_into(&mut s, "Foo=1\n", "v").unwrap_err();
        assert!(e.to_string().contains("outside of a section"), "{e}");
        let e = parse_into(&mut s, "[Unit\n", "v").unwrap_err();
        assert!(e.to_string().contains("unterminated section"), "{e}");
    }

    #[test]
    fn names_default_to_service_and_split_templates() {
        let n = UnitName::parse("nginx").unwrap();
        assert_eq!(n.full, "nginx.service");
        assert_eq!(n.log_stem(), "nginx");
        let n = UnitName::parse("getty@tty1.service").unwrap();
        assert_eq!(n.prefix, "getty");
        assert_eq!(n.instance.as_deref(), Some("tty1"));
        assert_eq!(n.template().as_deref(), Some("getty@.service"));
        assert_eq!(UnitName::parse("x.target").unwrap().suffix, "target");
        for bad in ["", "../x", "a b", ".service", "@x.service"] {
            assert!(UnitName::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn search_path_dropins_aliases_templates_and_masks() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let p = SearchPath::under(root);
        write(
            root,
            "lib/systemd/system/a.service",
            "[Service]\nExecStart=/bin/lib\nUser=x\n",
        );
        write(
            root,
            "etc/systemd/system/a.service",
            "[Service]\nExecStart=/bin/etc\n",
        );
        write(
            root,
            "lib/systemd/system/a.service.d/10-x.conf",
            "[Service]\nUser=lib\n",
        );
        write(
            root,
            "etc/systemd/system/a.service.d/10-x.conf",
            "[Service]\nUser=etc\n",
        );
        write(
            root,
            "lib/systemd/system/a.service.d/20-y.conf",
            "[Service]\nExecStart=\nExecStart=/bin/dropin\n",
        );
        let l = load(&p, "a").unwrap();
        assert!(l.fragment.starts_with(root.join("etc")));
        assert_eq!(l.last("Service", "User"), Some("etc"));
        assert_eq!(l.all("Service", "ExecStart"), ["/bin/dropin"]);

        write(
            root,
            "lib/systemd/system/t@.service",
            "[Service]\nExecStart=/bin/echo %i %n %p\n",
        );
        let s = Service::from_loaded(&load(&p, "t@one").unwrap(), "/root").unwrap();
        assert_eq!(s.start[0].argv, ["/bin/echo", "one", "t@one.service", "t"]);

        std::os::unix::fs::symlink("a.service", root.join("lib/systemd/system/b.service")).unwrap();
        let l = load(&p, "b.service").unwrap();
        assert_eq!(l.name.full, "b.service");
        assert!(l.fragment.ends_with("a.service"));

        std::os::unix::fs::symlink("/dev/null", root.join("etc/systemd/system/m.service")).unwrap();
        write(
            root,
            "lib/systemd/system/m.service",
            "[Service]\nExecStart=/bin/m\n",
        );
        assert_eq!(
            load(&p, "m").unwrap_err(),
            UnitError::Masked("m.service".into())
        );
        assert!(is_masked(&p, "m.service"));
        assert_eq!(
            load(&p, "zz").unwrap_err(),
            UnitError::NotFound("zz.service".into())
        );
    }

    #[test]
    fn exec_lines_prefixes_and_quoting() {
        let e = parse_exec("-/bin/sh -c 'echo \"hi there\"' x\\ y").unwrap();
        assert!(e.ignore_failure);
        assert_eq!(e.argv, ["/bin/sh", "-c", "echo \"hi there\"", "x y"]);
        let e = parse_exec("+@/bin/busybox sh -c true").unwrap();
        assert!(e.privileged);
        assert_eq!(e.argv0.as_deref(), Some("sh"));
        assert_eq!(e.argv, ["/bin/busybox", "-c", "true"]);
        assert!(parse_exec("'unterminated").is_err());
        assert!(parse_exec("-").is_err());
    }

    #[test]
    fn services_are_typed_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let p = SearchPath::under(root);
        write(
            root,
            "lib/systemd/system/s.service",
            "[Unit]\nDescription=S\nAfter=network.target x\nStartLimitBurst=3\n\
             [Service]\nType=notify\nExecStart=/bin/s\nRestart=on-failure\nRestartSec=2s\n\
             Environment=\"A=1 2\" B=3\nEnvironmentFile=-/etc/default/s\nRuntimeDirectory=s\n\
             MemoryMax=64M\nTimeoutStopSec=infinity\n",
        );
        let s = Service::from_loaded(&load(&p, "s").unwrap(), "/").unwrap();
        assert_eq!(s.kind, ServiceType::Notify);
        assert_eq!(s.restart, RestartPolicy::OnFailure);
        assert_eq!(s.restart_sec, Duration::from_secs(2));
        assert_eq!(s.start_limit_burst, 3);
        assert_eq!(s.after, ["network.target", "x.service"]);
        assert_eq!(
            s.environment,
            [("A".into(), "1 2".into()), ("B".into(), "3".into())]
        );
        assert_eq!(
            s.environment_files,
            [(PathBuf::from("/etc/default/s"), true)]
        );
        assert_eq!(s.cgroup_limits, [("memory.max", (64u64 << 20).to_string())]);
        assert_eq!(s.timeout_stop, None);

        write(root, "lib/systemd/system/n.service", "[Service]\nUser=x\n");
        let e = Service::from_loaded(&load(&p, "n").unwrap(), "/").unwrap_err();
        assert!(e.to_string().contains("no ExecStart="), "{e}");
        write(
            root,
            "lib/systemd/system/o.service",
            "[Service]\nType=oneshot\n",
        );
        assert!(Service::from_loaded(&load(&p, "o").unwrap(), "/").is_ok());
        write(
            root,
            "lib/systemd/system/r.service",
            "[Service]\nExecStart=/x\nRestart=sometimes\n",
        );
        let e = Service::from_loaded(&load(&p, "r").unwrap(), "/").unwrap_err();
        assert!(e.to_string().contains("unknown Restart=sometimes"), "{e}");
    }

    #[test]
    fn timespans_and_signals() {
        assert_eq!(parse_timespan("90"), Some(Some(Duration::from_secs(90))));
        assert_eq!(
            parse_timespan("1min 30s"),
            Some(Some(Duration::from_secs(90)))
        );
        assert_eq!(
            parse_timespan("250ms"),
            Some(Some(Duration::from_millis(250)))
        );
        assert_eq!(parse_timespan("infinity"), Some(None));
        assert_eq!(parse_timespan("soon"), None);
        assert_eq!(signal_number("SIGQUIT"), Some(libc::SIGQUIT));
        assert_eq!(signal_number("INT"), Some(libc::SIGINT));
        assert_eq!(signal_number("9"), Some(9));
        assert_eq!(signal_number("SIGNOPE"), None);
    }

    #[test]
    fn specifiers_expand() {
        let n = UnitName::parse("web@a-b.service").unwrap();
        assert_eq!(
            expand_specifiers("%i %I %N %t/%p 100%%", &n, "/h"),
            "a-b a/b web@a-b /run/web 100%"
        );
    }
}
