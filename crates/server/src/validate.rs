//! Input rules of 04-api.md §5.2: names, labels, mount paths, guest paths.

use std::collections::BTreeMap;

use crate::error::{ApiError, ApiResult};

pub const RESERVED_LABEL_PREFIX: &str = "bhatti.sh/";
pub const MAX_LABELS: usize = 16;

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
pub fn name(kind: &str, n: &str) -> ApiResult<()> {
    let b = n.as_bytes();
    let ok = !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || b"._-".contains(c));
    if ok {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!(
            "invalid {kind} name {n:?}: 1-63 characters of [a-zA-Z0-9._-], starting with a letter or digit"
        )))
    }
}

fn segment_ok(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || b"._-".contains(c))
}

pub fn label_key(k: &str) -> ApiResult<()> {
    if k.starts_with(RESERVED_LABEL_PREFIX) {
        return Err(ApiError::bad_request(format!(
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
        Err(ApiError::bad_request(format!("invalid label key {k:?}")))
    }
}

pub fn labels(l: &BTreeMap<String, String>) -> ApiResult<()> {
    if l.len() > MAX_LABELS {
        return Err(ApiError::bad_request(format!(
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
            return Err(ApiError::bad_request(format!(
                "invalid label value {v:?} for {k:?}: up to 256 characters of [a-zA-Z0-9._-]"
            )));
        }
    }
    Ok(())
}

/// A `key=value` list from query strings (`label=k=v`).
pub fn label_filter(pairs: &[String]) -> ApiResult<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for p in pairs {
        let (k, v) = p.split_once('=').ok_or_else(|| {
            ApiError::bad_request(format!("label filter {p:?}: expected key=value"))
        })?;
        label_key(k)?;
        out.insert(k.to_string(), v.to_string());
    }
    Ok(out)
}

pub fn mount_path(m: &str) -> ApiResult<()> {
    if !m.starts_with('/') || m.split('/').any(|s| s == "..") || m.contains(':') {
        return Err(ApiError::bad_request(format!(
            "mount path {m:?} must be absolute and contain no '..'"
        )));
    }
    let t = m.trim_end_matches('/');
    let t = if t.is_empty() { "/" } else { t };
    if FORBIDDEN_MOUNTS.contains(&t) {
        return Err(ApiError::bad_request(format!(
            "mount path {m:?} is a system directory"
        )));
    }
    Ok(())
}

/// A file path inside the guest: absolute, no `..`, no NUL.
pub fn guest_path(p: &str) -> ApiResult<()> {
    if p.is_empty() {
        return Err(ApiError::bad_request("path required"));
    }
    if !p.starts_with('/') {
        return Err(ApiError::bad_request(format!(
            "path {p:?} must be absolute"
        )));
    }
    if p.split('/').any(|s| s == "..") || p.contains('\0') {
        return Err(ApiError::bad_request(format!(
            "path {p:?} must not contain '..' or NUL"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(name("sandbox", "web-1.a_b").is_ok());
        for bad in ["", "-x", "a b", "a/b", &"x".repeat(64)] {
            assert!(name("sandbox", bad).is_err(), "{bad}");
        }
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
    fn mounts_and_paths() {
        assert!(mount_path("/data").is_ok());
        for bad in ["data", "/", "/etc", "/usr/", "/a/../etc", "/a:b"] {
            assert!(mount_path(bad).is_err(), "{bad}");
        }
        assert!(guest_path("/workspace/a.txt").is_ok());
        for bad in ["", "rel", "/a/../../etc/passwd", "/a\0b"] {
            assert!(guest_path(bad).is_err(), "{bad:?}");
        }
    }
}
