//! Input rules (docs/server.md, "Input rules"): names, labels, mount paths,
//! guest paths.

use std::collections::BTreeMap;

use crate::error::{ServiceError, ServiceResult};

pub const RESERVED_LABEL_PREFIX: &str = "bhatti.sh/";
pub const MAX_LABELS: usize = 16;
/// Largest root disk a sandbox may ask for (1 TiB): anything above is a typo
/// or an attack, and a sparse file of that size would still be created.
pub const MAX_DISK_MB: u64 = 1 << 20;
/// Environment bounds: they travel in the config drive and in every exec
/// frame (1 MiB cap), so a few large values must not make a create fail
/// late, after the VM was built.
pub const MAX_ENV_VARS: usize = 256;
pub const MAX_ENV_KEY: usize = 256;
pub const MAX_ENV_VALUE: usize = 64 << 10;
pub const MAX_ENV_TOTAL: usize = 256 << 10;
/// A secret is one environment value.
pub const MAX_SECRET: usize = MAX_ENV_VALUE;
/// vCPUs a sandbox may ask for at most (before per-user quotas).
pub const MAX_CPUS: f64 = 256.0;

const FORBIDDEN_MOUNTS: &[&str] = &[
    "/",
    "/proc",
    "/sys",
    "/dev",
    "/dev/pts",
    "/run",
    "/tmp",
    "/etc",
    "/bin",
    "/sbin",
    "/lib",
    "/lib64",
    "/usr",
    "/usr/local/bin",
    "/boot",
    "/root",
];

/// `^[a-zA-Z0-9][a-zA-Z0-9._-]{0,62}$` — sandboxes, volumes, images, snapshots.
pub fn name(kind: &str, n: &str) -> ServiceResult<()> {
    let b = n.as_bytes();
    let ok = !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || b"._-".contains(c));
    if ok {
        Ok(())
    } else {
        Err(ServiceError::bad_request(format!(
            "invalid {kind} name {n:?}: 1-63 characters of [a-zA-Z0-9._-], starting with a letter or digit"
        )))
    }
}

fn segment_ok(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.first().is_some_and(u8::is_ascii_alphanumeric)
        && b.last().is_some_and(u8::is_ascii_alphanumeric)
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || b"._-".contains(c))
}

pub fn label_key(k: &str) -> ServiceResult<()> {
    if k.starts_with(RESERVED_LABEL_PREFIX) {
        return Err(ServiceError::bad_request(format!(
            "label key {k:?}: the prefix {RESERVED_LABEL_PREFIX} is reserved"
        )));
    }
    let ok = match k.split_once('/') {
        Some((prefix, key)) => {
            !prefix.is_empty()
                && prefix.len() <= 253
                && prefix.split('.').all(segment_ok)
                && segment_ok(key)
        }
        None => segment_ok(k),
    };
    if ok {
        Ok(())
    } else {
        Err(ServiceError::bad_request(format!(
            "invalid label key {k:?}"
        )))
    }
}

/// Free-form metadata: bounded, not shaped.
pub fn metadata(m: &BTreeMap<String, String>) -> ServiceResult<()> {
    if m.len() > 64 {
        return Err(ServiceError::bad_request("metadata: at most 64 keys"));
    }
    for (k, v) in m {
        // Characters, as the schema's maxLength counts them.
        if k.is_empty() || k.chars().count() > 256 || v.chars().count() > 1024 {
            return Err(ServiceError::bad_request(format!(
                "metadata {k:?}: keys are 1 to 256 characters and values at most 1024"
            )));
        }
    }
    Ok(())
}

pub fn labels(l: &BTreeMap<String, String>) -> ServiceResult<()> {
    if l.len() > MAX_LABELS {
        return Err(ServiceError::bad_request(format!(
            "at most {MAX_LABELS} labels"
        )));
    }
    for (k, v) in l {
        label_key(k)?;
        if v.len() > 256
            || !v
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || b"._-".contains(&c))
        {
            return Err(ServiceError::bad_request(format!(
                "invalid label value {v:?} for {k:?}: up to 256 characters of [a-zA-Z0-9._-]"
            )));
        }
    }
    Ok(())
}

/// `cpus` as a whole number of vCPUs in 1..=256 (`None` = `default`).
pub fn cpus(c: Option<f64>, default: u32) -> ServiceResult<u32> {
    match c {
        None => Ok(default),
        Some(c) if c.fract() != 0.0 || !(1.0..=MAX_CPUS).contains(&c) => {
            Err(ServiceError::bad_request(format!(
                "cpus must be a whole number of vCPUs from 1 to {MAX_CPUS}, got {c}"
            )))
        }
        // In range and whole, so the conversion is exact.
        Some(c) => {
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            let c = c as u32;
            Ok(c)
        }
    }
}

/// A requested root disk size: 0 (the image's own size) up to [`MAX_DISK_MB`].
pub fn disk_size_mb(mb: u64) -> ServiceResult<()> {
    if mb > MAX_DISK_MB {
        return Err(ServiceError::bad_request(format!(
            "disk_size_mb {mb} is out of range (0 for the image's size, at most {MAX_DISK_MB})"
        )));
    }
    Ok(())
}

/// Environment variables: names without `=` or NUL, values without NUL,
/// and the sizes above.
pub fn env(e: &BTreeMap<String, String>) -> ServiceResult<()> {
    if e.len() > MAX_ENV_VARS {
        return Err(ServiceError::bad_request(format!(
            "at most {MAX_ENV_VARS} environment variables"
        )));
    }
    let mut total = 0usize;
    for (k, v) in e {
        if k.is_empty() || k.len() > MAX_ENV_KEY || k.contains(['=', '\0']) {
            return Err(ServiceError::bad_request(format!(
                "invalid environment variable name {k:?}: 1-{MAX_ENV_KEY} bytes without '=' or NUL"
            )));
        }
        if v.len() > MAX_ENV_VALUE || v.contains('\0') {
            return Err(ServiceError::bad_request(format!(
                "environment variable {k}: the value must be at most {MAX_ENV_VALUE} bytes, without NUL"
            )));
        }
        total = total.saturating_add(k.len()).saturating_add(v.len());
    }
    if total > MAX_ENV_TOTAL {
        return Err(ServiceError::bad_request(format!(
            "environment of {total} bytes is over the {MAX_ENV_TOTAL}-byte limit"
        )));
    }
    Ok(())
}

/// A `key=value` list from query strings (`label=k=v`).
pub fn label_filter(pairs: &[String]) -> ServiceResult<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for p in pairs {
        let (k, v) = p.split_once('=').ok_or_else(|| {
            ServiceError::bad_request(format!("label filter {p:?}: expected key=value"))
        })?;
        label_key(k)?;
        out.insert(k.to_string(), v.to_string());
    }
    Ok(out)
}

/// A volume mount point: absolute, every segment a real name (not empty,
/// `.` or `..`, no `:` or NUL), at most one trailing `/`, and not a system
/// directory. The strict shape is what makes the system-directory check
/// hold: `//etc` or `/./etc` would otherwise name `/etc` past it.
pub fn mount_path(m: &str) -> ServiceResult<()> {
    let t = m.strip_suffix('/').unwrap_or(m);
    let shape = t.strip_prefix('/').is_some_and(|rest| {
        rest.split('/')
            .all(|s| !s.is_empty() && s != "." && s != ".." && !s.contains([':', '\0']))
    });
    if !shape {
        return Err(ServiceError::bad_request(format!(
            "mount path {m:?} must be absolute, with no empty, '.' or '..' segment and no ':' or NUL"
        )));
    }
    if FORBIDDEN_MOUNTS.contains(&t) {
        return Err(ServiceError::bad_request(format!(
            "mount path {m:?} is a system directory"
        )));
    }
    Ok(())
}

/// Secret names become environment variable names.
pub fn secret_name(n: &str) -> ServiceResult<()> {
    let b = n.as_bytes();
    let ok = !b.is_empty()
        && b.len() <= 128
        && (b[0].is_ascii_alphabetic() || b[0] == b'_')
        && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'_');
    if ok {
        Ok(())
    } else {
        Err(ServiceError::bad_request(format!(
            "invalid secret name {n:?}: it becomes an environment variable, so [A-Za-z_][A-Za-z0-9_]*"
        )))
    }
}

/// Each mount path once (a trailing `/` aside). Two volumes at one place
/// conflict with each other: 409, as the same volume twice is.
pub fn distinct_mounts<'a>(mounts: impl IntoIterator<Item = &'a str>) -> ServiceResult<()> {
    let mut seen = std::collections::BTreeSet::new();
    for m in mounts {
        let t = m.strip_suffix('/').unwrap_or(m);
        if !seen.insert(t) {
            return Err(ServiceError::conflict(format!(
                "two volumes would mount at {t:?}"
            )));
        }
    }
    Ok(())
}

/// A file mode: one to four octal digits (`644`, `0755`).
pub fn file_mode(m: &str) -> ServiceResult<()> {
    if (1..=4).contains(&m.len()) && m.bytes().all(|c| (b'0'..=b'7').contains(&c)) {
        Ok(())
    } else {
        Err(ServiceError::bad_request(format!(
            "mode {m:?}: expected 1-4 octal digits"
        )))
    }
}

/// Text that becomes a C string in the guest (argv, environment): no NUL.
pub fn no_nul(what: &str, s: &str) -> ServiceResult<()> {
    if s.contains('\0') {
        return Err(ServiceError::bad_request(format!(
            "{what} must not contain NUL"
        )));
    }
    Ok(())
}

/// An egress CIDR, `a.b.c.d` or `a.b.c.d/n` (decimal, no leading zeros,
/// n ≤ 32); host bits are cleared (`10.1.2.3/8` is `10.0.0.0/8`).
pub fn cidr(c: &str) -> ServiceResult<bhatti_engine::net::Ipv4Cidr> {
    let bad = || ServiceError::bad_request(format!("egress: {c:?} is not an IPv4 CIDR"));
    let (addr, prefix) = match c.split_once('/') {
        Some((a, p)) => {
            let canonical = !p.is_empty()
                && p.len() <= 2
                && p.bytes().all(|b| b.is_ascii_digit())
                && (p == "0" || !p.starts_with('0'));
            let n: u8 = p
                .parse()
                .ok()
                .filter(|n| canonical && *n <= 32)
                .ok_or_else(bad)?;
            (a, n)
        }
        None => (c, 32),
    };
    let addr: std::net::Ipv4Addr = addr.parse().map_err(|_| bad())?;
    // prefix <= 32 (checked above); /0 shifts by 32, which is no mask.
    let mask = u32::MAX
        .checked_shl(32u32.saturating_sub(u32::from(prefix)))
        .unwrap_or(0);
    bhatti_engine::net::Ipv4Cidr::new((u32::from(addr) & mask).into(), prefix).map_err(|_| bad())
}

/// An exec's `user`: a name or uid, optionally `:group`
/// ([`bhatti_api::rules::EXEC_USER_PATTERN`]); the guest decides whether it
/// exists.
pub fn exec_user(u: &str) -> ServiceResult<()> {
    let part = |s: &str| {
        let mut c = s.chars();
        c.next()
            .is_some_and(|f| f.is_ascii_alphanumeric() || f == '_')
            && c.all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
    };
    let ok = u.len() <= 64
        && match u.split_once(':') {
            Some((a, b)) => part(a) && part(b),
            None => part(u),
        };
    if ok {
        Ok(())
    } else {
        Err(ServiceError::bad_request(format!(
            "user {u:?}: expected a name or uid, optionally :group"
        )))
    }
}

/// A file path inside the guest: absolute, no `..`, no NUL.
pub fn guest_path(p: &str) -> ServiceResult<()> {
    if p.is_empty() {
        return Err(ServiceError::bad_request("path required"));
    }
    if !p.starts_with('/') {
        return Err(ServiceError::bad_request(format!(
            "path {p:?} must be absolute"
        )));
    }
    if p.split('/').any(|s| s == "..") || p.contains('\0') {
        return Err(ServiceError::bad_request(format!(
            "path {p:?} must not contain '..' or NUL"
        )));
    }
    Ok(())
}

/// An image reference as the document describes it
/// ([`bhatti_api::rules::IMAGE_REF`]);
/// the registry client parses it again, and accepts at least this.
pub fn image_ref(r: &str) -> ServiceResult<()> {
    static RE: std::sync::OnceLock<Option<regex::Regex>> = std::sync::OnceLock::new();
    let re = RE.get_or_init(|| regex::Regex::new(bhatti_api::rules::IMAGE_REF).ok());
    let ok =
        r.len() <= bhatti_api::rules::IMAGE_REF_MAX && re.as_ref().is_some_and(|re| re.is_match(r));
    if ok {
        Ok(())
    } else {
        Err(ServiceError::bad_request(format!(
            "invalid image reference {r:?}: want [registry/]repository[:tag][@sha256:<hex>], lower-case repository"
        )))
    }
}

/// Names a domain keeps for itself (mail, DNS, the API): never an alias.
pub const RESERVED_ALIASES: [&str; 9] = [
    "www",
    "mail",
    "admin",
    "status",
    "ns1",
    "ns2",
    "api",
    "app",
    "_acme-challenge",
];

/// A public alias: a lower-case DNS label of 1–63 characters
/// (`api::rules::ALIAS`), not reserved.
pub fn alias(a: &str) -> ServiceResult<()> {
    let b = a.as_bytes();
    let ok = !b.is_empty()
        && b.len() <= 63
        && matches!(b[0], b'a'..=b'z' | b'0'..=b'9')
        && b.iter()
            .all(|c| matches!(c, b'a'..=b'z' | b'0'..=b'9' | b'-'));
    if !ok {
        return Err(ServiceError::bad_request(format!(
            "invalid alias {a:?}: 1-63 characters of [a-z0-9-], starting with a letter or digit"
        )));
    }
    if RESERVED_ALIASES.contains(&a) {
        return Err(ServiceError::bad_request(format!(
            "alias {a:?} is reserved"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aliases() {
        for ok in ["a", "my-app", "0x", &"a".repeat(63)] {
            assert!(alias(ok).is_ok(), "{ok}");
        }
        for bad in ["", "-a", "A", "a_b", "a.b", "www", "api", &"a".repeat(64)] {
            assert!(alias(bad).is_err(), "{bad}");
        }
        let re = regex::Regex::new(bhatti_api::rules::ALIAS).unwrap();
        let reserved = regex::Regex::new(bhatti_api::rules::RESERVED_ALIAS).unwrap();
        for r in RESERVED_ALIASES {
            assert!(reserved.is_match(r), "{r} is reserved in the schema too");
        }
        for a in ["a", "my-app", "-a", "A", "a.b", "www"] {
            assert_eq!(
                alias(a).is_ok(),
                re.is_match(a) && !reserved.is_match(a),
                "{a}: the server and the schema agree"
            );
        }
    }

    #[test]
    fn names() {
        assert!(name("sandbox", "web-1.a_b").is_ok());
        for bad in ["", "-x", "a b", "a/b", &"x".repeat(64)] {
            assert!(name("sandbox", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn image_refs_follow_the_documented_grammar() {
        for ok in [
            "python:3.12",
            "127.0.0.1:5000/team/py:t",
            "localhost/x",
            "ghcr.io/o/i:v1",
        ] {
            assert!(image_ref(ok).is_ok(), "{ok}");
            assert!(
                bhatti_image::Registry::normalize(ok).is_ok(),
                "the client accepts {ok}"
            );
        }
        for bad in ["gmVyhF", "Not A Reference", "x:", "a..b", "x@sha256:abc"] {
            assert!(image_ref(bad).is_err(), "{bad}");
        }
        assert!(image_ref(&"a".repeat(256)).is_err());
    }

    #[test]
    fn label_rules() {
        let ok = BTreeMap::from([
            ("app".to_string(), "web".to_string()),
            ("example.com/team".to_string(), "".to_string()),
        ]);
        assert!(labels(&ok).is_ok());
        assert!(label_key("bhatti.sh/x").is_err());
        assert!(label_key("-a").is_err());
        assert!(label_key("a/").is_err());
        let bad_v = BTreeMap::from([("a".to_string(), "x y".to_string())]);
        assert!(labels(&bad_v).is_err());
        let many: BTreeMap<_, _> = (0..17).map(|i| (format!("k{i}"), String::new())).collect();
        assert!(labels(&many).is_err());
        assert_eq!(
            label_filter(&["a=b".into()])
                .unwrap()
                .get("a")
                .map(String::as_str),
            Some("b")
        );
        assert!(label_filter(&["ab".into()]).is_err());
    }

    #[test]
    fn sizes_env_and_cpus() {
        assert!(disk_size_mb(0).is_ok());
        assert!(disk_size_mb(MAX_DISK_MB).is_ok());
        for bad in [
            MAX_DISK_MB + 1,
            99_999_999_999,
            17_592_186_044_416,
            u64::MAX,
        ] {
            assert!(disk_size_mb(bad).is_err(), "{bad}");
        }
        let ok = BTreeMap::from([("A".to_string(), "x".repeat(MAX_ENV_VALUE))]);
        assert!(env(&ok).is_ok());
        for (k, v) in [
            ("A", "x".repeat(MAX_ENV_VALUE + 1)),
            ("", "x".into()),
            ("A=B", "x".into()),
            ("A", "a\0b".into()),
        ] {
            assert!(env(&BTreeMap::from([(k.to_string(), v)])).is_err(), "{k}");
        }
        let total: BTreeMap<_, _> = (0..5)
            .map(|i| (format!("K{i}"), "x".repeat(MAX_ENV_VALUE)))
            .collect();
        assert!(env(&total).is_err());
        let many: BTreeMap<_, _> = (0..=MAX_ENV_VARS)
            .map(|i| (format!("K{i}"), String::new()))
            .collect();
        assert!(env(&many).is_err());
        assert_eq!(cpus(None, 1).unwrap(), 1);
        assert_eq!(cpus(Some(2.0), 1).unwrap(), 2);
        for bad in [1.5, 0.0, -1.0, 257.0, 1e30, f64::NAN, f64::INFINITY] {
            assert!(cpus(Some(bad), 1).is_err(), "{bad}");
        }
    }

    #[test]
    fn mounts_and_paths() {
        assert!(mount_path("/data").is_ok());
        assert!(mount_path("/data/x/").is_ok());
        assert!(mount_path("/.cache").is_ok());
        for bad in [
            "data",
            "/",
            "//",
            "/etc",
            "/usr/",
            "/a/../etc",
            "/a:b",
            "//etc",
            "/./etc",
            "/etc//",
            "/a//b",
            "/a\0b",
        ] {
            assert!(mount_path(bad).is_err(), "{bad}");
        }
        for ok in ["644", "0755", "7", "0000"] {
            assert!(file_mode(ok).is_ok(), "{ok}");
        }
        for bad in ["", "8", "+644", "07777", "rwx", "0o644"] {
            assert!(file_mode(bad).is_err(), "{bad}");
        }
        assert_eq!(cidr("10.1.2.3/8").unwrap().to_string(), "10.0.0.0/8");
        assert_eq!(cidr("10.1.2.3").unwrap().to_string(), "10.1.2.3/32");
        assert_eq!(cidr("0.0.0.0/0").unwrap().to_string(), "0.0.0.0/0");
        for bad in [
            "10.0.0.0/33",
            "10.0.0.0/08",
            "10.0.0.0/+8",
            "10.0.0/8",
            "010.0.0.0/8",
            "10.0.0.0/",
            "x",
        ] {
            assert!(cidr(bad).is_err(), "{bad}");
        }
        assert!(guest_path("/workspace/a.txt").is_ok());
        for bad in ["", "rel", "/a/../../etc/passwd", "/a\0b"] {
            assert!(guest_path(bad).is_err(), "{bad:?}");
        }
    }
}
