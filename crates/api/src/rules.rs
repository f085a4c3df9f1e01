//! The server's input rules as JSON Schema, for the request types'
//! `#[schemars(schema_with = …)]` attributes: `/openapi.json` says exactly
//! which values the server accepts (the server checks the same rules in
//! `bhatti_server::validate`; the API contract suite holds the two
//! together).
//!
//! Patterns use only what ECMA-262 and Python's `re` share (no lookaround),
//! so every generator and validator reads them alike.

use schemars::{json_schema, Schema, SchemaGenerator};
use serde_json::json;

/// Sandbox, volume, snapshot and template names.
pub const NAME: &str = "^[a-zA-Z0-9][a-zA-Z0-9._-]{0,62}$";
/// A name, or empty for "choose one".
pub const NAME_OR_EMPTY: &str = "^([a-zA-Z0-9][a-zA-Z0-9._-]{0,62})?$";
/// Secret names become environment variable names.
pub const SECRET_NAME: &str = "^[A-Za-z_][A-Za-z0-9_]{0,127}$";
/// A path in the guest: absolute, no `..` segment, no NUL.
pub const GUEST_PATH: &str = r"^(/(\.?|[^/\x00.][^/\x00]*|\.[^/\x00.][^/\x00]*|\.\.[^/\x00]+))+$";
/// A guest path, or empty for "none".
pub const GUEST_PATH_OR_EMPTY: &str =
    r"^((/(\.?|[^/\x00.][^/\x00]*|\.[^/\x00.][^/\x00]*|\.\.[^/\x00]+))+)?$";
/// A volume mount point: absolute, segments neither empty nor `.` nor
/// `..`, no `:` or NUL, at most one trailing `/` …
pub const MOUNT_PATH: &str =
    r"^(/([^/:\x00.][^/:\x00]*|\.[^/:\x00.][^/:\x00]*|\.\.[^/:\x00]+))+/?$";
/// … and not a system directory.
pub const SYSTEM_DIR: &str =
    "^(/proc|/sys|/dev|/dev/pts|/run|/tmp|/etc|/bin|/sbin|/lib|/lib64|/usr|/usr/local/bin|/boot|/root)/?$";
/// Canonical padded standard base64 (RFC 4648, section 4; unused bits zero).
pub const BASE64: &str =
    "^([A-Za-z0-9+/]{4})*([A-Za-z0-9+/][AQgw]==|[A-Za-z0-9+/]{2}[AEIMQUYcgkosw048]=)?$";
/// An OCI image reference, `[registry/]repository[:tag][@sha256:<hex>]`,
/// in the distribution project's grammar: the registry is a host with a
/// dot or a port (or `localhost`), repository path components are lower
/// case; at most [`IMAGE_REF_MAX`] bytes. (A subset of what registries
/// accept: no IPv6 hosts, sha256 digests only.)
pub const IMAGE_REF: &str = concat!(
    r"^((([a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])(\.([a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9]))+(:[0-9]+)?",
    r"|([a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9]):[0-9]+|localhost)/)?",
    r"[a-z0-9]+(([._]|__|-+)[a-z0-9]+)*(/[a-z0-9]+(([._]|__|-+)[a-z0-9]+)*)*",
    r"(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(@sha256:[0-9a-f]{64})?$"
);
/// Longest accepted image reference, in bytes.
pub const IMAGE_REF_MAX: usize = 255;
/// File modes: one to four octal digits.
pub const FILE_MODE: &str = "^[0-7]{1,4}$";
/// An IPv4 network `a.b.c.d/n` (a bare address is `/32`; host bits are
/// cleared).
pub const CIDR: &str = r"^(25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])(\.(25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])){3}(/(3[0-2]|[12]?[0-9]))?$";
/// Label keys: `name` or `dns.prefix/name` (the prefix at most 253
/// characters) …
pub const LABEL_KEY: &str = r"^([a-zA-Z0-9]([a-zA-Z0-9_-]{0,61}[a-zA-Z0-9])?(\.[a-zA-Z0-9]([a-zA-Z0-9_-]{0,61}[a-zA-Z0-9])?)*/)?[a-zA-Z0-9]([a-zA-Z0-9._-]{0,61}[a-zA-Z0-9])?$";
const LABEL_PREFIX_LENGTH: &str = "^([^/]{1,253}/)?[^/]*$";
/// … outside the reserved prefix.
pub const RESERVED_LABEL_PREFIX: &str = r"^bhatti\.sh/";
pub(crate) const LABEL_VALUE: &str = "^[a-zA-Z0-9._-]{0,256}$";
/// A public alias: a DNS label in lower case …
pub const ALIAS: &str = "^[a-z0-9][a-z0-9-]{0,62}$";
/// … that is not one of the names a domain keeps for itself.
pub const RESERVED_ALIAS: &str = "^(www|mail|admin|status|ns1|ns2|api|app|_acme-challenge)$";
/// Text that must not hold NUL (it ends up in a C string).
pub const NO_NUL: &str = r"^[^\x00]*$";

// The limits the schemas below state (bhatti_server::validate has its own
// copies in the types it checks with).
pub(crate) const MAX_LABELS: u32 = 16;
pub(crate) const MAX_CPUS: u32 = 256;
pub(crate) const MIN_MEMORY_MB: u32 = 128;
/// The largest warm pool (`pools`, `PUT /admin/pools`).
pub const MAX_POOL_SIZE: u32 = 32;
pub(crate) const MAX_DISK_MB: u64 = 1 << 20;
pub(crate) const MAX_ENV_VARS: u32 = 256;
pub(crate) const MAX_ENV_KEY: u32 = 256;
pub(crate) const MAX_ENV_VALUE: u32 = 64 << 10;
pub(crate) const MAX_EGRESS_CIDRS: u32 = 256;

fn nullable(mut s: serde_json::Value, null: bool) -> Schema {
    if null {
        s = json!({"anyOf": [s, {"type": "null"}]});
    }
    Schema::try_from(s).expect("a schema object")
}

fn label_key() -> serde_json::Value {
    json!({"allOf": [
        {"type": "string", "pattern": LABEL_KEY},
        {"pattern": LABEL_PREFIX_LENGTH},
        {"not": {"pattern": RESERVED_LABEL_PREFIX}},
    ]})
}

pub(crate) fn name(_: &mut SchemaGenerator) -> Schema {
    json_schema!({"type": "string", "pattern": NAME})
}
pub(crate) fn optional_name(_: &mut SchemaGenerator) -> Schema {
    nullable(json!({"type": "string", "pattern": NAME}), true)
}
pub(crate) fn name_or_empty(_: &mut SchemaGenerator) -> Schema {
    json_schema!({"type": "string", "pattern": NAME_OR_EMPTY})
}
pub(crate) fn optional_name_or_empty(_: &mut SchemaGenerator) -> Schema {
    nullable(json!({"type": "string", "pattern": NAME_OR_EMPTY}), true)
}
/// An OCI image reference ([`IMAGE_REF`]).
pub(crate) fn image_ref(_: &mut SchemaGenerator) -> Schema {
    json_schema!({"type": "string", "pattern": IMAGE_REF, "maxLength": IMAGE_REF_MAX})
}
pub(crate) fn secret_name(_: &mut SchemaGenerator) -> Schema {
    json_schema!({"type": "string", "pattern": SECRET_NAME})
}
pub(crate) fn secret_names(_: &mut SchemaGenerator) -> Schema {
    json_schema!({"type": "array", "items": {"type": "string", "pattern": SECRET_NAME}})
}
/// A secret's value: an environment value.
pub(crate) fn secret_value(_: &mut SchemaGenerator) -> Schema {
    json_schema!({"type": "string", "minLength": 1, "maxLength": MAX_ENV_VALUE, "pattern": NO_NUL})
}
pub(crate) fn guest_path(_: &mut SchemaGenerator) -> Schema {
    json_schema!({"type": "string", "pattern": GUEST_PATH})
}
pub(crate) fn optional_guest_path_or_empty(_: &mut SchemaGenerator) -> Schema {
    nullable(
        json!({"type": "string", "pattern": GUEST_PATH_OR_EMPTY}),
        true,
    )
}
pub(crate) fn mount_path(_: &mut SchemaGenerator) -> Schema {
    json_schema!({"allOf": [
        {"type": "string", "pattern": MOUNT_PATH},
        {"not": {"pattern": SYSTEM_DIR}},
    ]})
}
/// A detached command has no stdin to feed: `detach: true` with a
/// `stdin` string is refused.
pub(crate) fn no_stdin_when_detached(s: &mut Schema) {
    s.ensure_object().insert(
        "not".into(),
        json!({
            "required": ["detach", "stdin"],
            "properties": {"detach": {"const": true}, "stdin": {"type": "string"}},
        }),
    );
}
pub(crate) fn optional_alias(_: &mut SchemaGenerator) -> Schema {
    nullable(
        json!({"allOf": [
            {"type": "string", "pattern": ALIAS},
            {"not": {"pattern": RESERVED_ALIAS}},
        ]}),
        true,
    )
}
pub(crate) fn port(_: &mut SchemaGenerator) -> Schema {
    json_schema!({"type": "integer", "minimum": 1, "maximum": 65535})
}
pub(crate) fn base64(_: &mut SchemaGenerator) -> Schema {
    json_schema!({"type": "string", "pattern": BASE64})
}
pub(crate) fn optional_file_mode(_: &mut SchemaGenerator) -> Schema {
    nullable(json!({"type": "string", "pattern": FILE_MODE}), true)
}
/// Whole vCPUs (docs/server.md, "Input rules").
pub(crate) fn optional_cpus(_: &mut SchemaGenerator) -> Schema {
    nullable(
        json!({"type": "integer", "minimum": 1, "maximum": MAX_CPUS}),
        true,
    )
}
/// A warm pool's size.
pub(crate) fn pool_size(_: &mut SchemaGenerator) -> Schema {
    json_schema!({"type": "integer", "minimum": 0, "maximum": MAX_POOL_SIZE})
}
/// At create: 0 or absent for the daemon's default.
pub(crate) fn optional_memory_mb_or_zero(_: &mut SchemaGenerator) -> Schema {
    json_schema!({"anyOf": [
        {"type": "null"},
        {"const": 0},
        {"type": "integer", "minimum": MIN_MEMORY_MB, "maximum": u32::MAX},
    ]})
}
/// In a template: absent for 2048.
pub(crate) fn optional_memory_mb(_: &mut SchemaGenerator) -> Schema {
    nullable(
        json!({"type": "integer", "minimum": MIN_MEMORY_MB, "maximum": u32::MAX}),
        true,
    )
}
/// 0 (or absent) keeps the image's size.
pub(crate) fn optional_disk_size_mb(_: &mut SchemaGenerator) -> Schema {
    nullable(
        json!({"type": "integer", "minimum": 0, "maximum": MAX_DISK_MB}),
        true,
    )
}
pub(crate) fn disk_size_mb(_: &mut SchemaGenerator) -> Schema {
    json_schema!({"type": "integer", "minimum": 0, "maximum": MAX_DISK_MB})
}
pub(crate) fn volume_size_mb(_: &mut SchemaGenerator) -> Schema {
    json_schema!({"type": "integer", "minimum": 1, "maximum": u64::MAX})
}
pub(crate) fn optional_volume_size_mb(_: &mut SchemaGenerator) -> Schema {
    nullable(
        json!({"type": "integer", "minimum": 0, "maximum": u64::MAX}),
        true,
    )
}
/// Names without `=` or NUL, values without NUL; sizes in bytes (UTF-8),
/// and at most 256 KiB together.
pub(crate) fn env(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "object",
        "maxProperties": MAX_ENV_VARS,
        "propertyNames": {"minLength": 1, "maxLength": MAX_ENV_KEY, "pattern": r"^[^=\x00]*$"},
        "additionalProperties": {"type": "string", "maxLength": MAX_ENV_VALUE, "pattern": NO_NUL},
    })
}
pub(crate) fn labels(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "object",
        "maxProperties": MAX_LABELS,
        "propertyNames": label_key(),
        "additionalProperties": {"type": "string", "pattern": LABEL_VALUE},
    })
}
/// Free-form sandbox metadata (lengths in characters).
pub(crate) fn metadata(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "object",
        "maxProperties": 64,
        "propertyNames": {"type": "string", "minLength": 1, "maxLength": 256},
        "additionalProperties": {"type": "string", "maxLength": 1024},
    })
}
pub(crate) fn label_keys(_: &mut SchemaGenerator) -> Schema {
    json_schema!({"type": "array", "items": label_key()})
}
/// The `label=key=value` filter of `GET /sandboxes`.
pub fn label_filter() -> serde_json::Value {
    let key = LABEL_KEY.trim_end_matches('$');
    json!({"allOf": [
        {"type": "string", "pattern": format!("{key}=")},
        {"pattern": "^([^/=]{1,253}/)?[^/=]*="},
        {"not": {"pattern": RESERVED_LABEL_PREFIX}},
    ]})
}
/// `"public"`, `"deny"`, or the CIDRs to allow.
pub(crate) fn optional_egress(_: &mut SchemaGenerator) -> Schema {
    json_schema!({"anyOf": [
        {"type": "null"},
        {"type": "string", "enum": ["public", "deny"]},
        {"type": "array", "maxItems": MAX_EGRESS_CIDRS, "items": {"type": "string", "pattern": CIDR}},
    ]})
}
/// A command line: a program, then its arguments; no NUL anywhere.
pub(crate) fn argv(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "array",
        "minItems": 1,
        "prefixItems": [{"type": "string", "minLength": 1, "pattern": NO_NUL}],
        "items": {"type": "string", "pattern": NO_NUL},
    })
}

/// `user` of an exec: a name or uid, optionally `:group`.
pub(crate) fn optional_exec_user(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": ["string", "null"],
        "pattern": EXEC_USER_PATTERN,
        "maxLength": 64
    })
}

/// What an exec's `user` may look like (empty: the sandbox's user).
pub const EXEC_USER_PATTERN: &str =
    "^([A-Za-z0-9_][A-Za-z0-9._-]*(:[A-Za-z0-9_][A-Za-z0-9._-]*)?)?$";

pub(crate) fn optional_i64(_: &mut SchemaGenerator) -> Schema {
    nullable(
        json!({"type": "integer", "minimum": i64::MIN, "maximum": i64::MAX}),
        true,
    )
}
/// Set by the server; ignored in requests.
pub(crate) fn read_only_string(_: &mut SchemaGenerator) -> Schema {
    json_schema!({"type": "string", "readOnly": true})
}

/// Integers as JSON Schema counts them: `2.0` is the integer 2, so a
/// request field typed `integer` takes it (serde alone would refuse it).
/// Written with a fraction or exponent, only up to 2^53 in magnitude: past
/// that, the parser has already rounded the number, so what was sent is
/// unknown (`-9223372036854775809` must not become `i64::MIN`).
pub(crate) mod int {
    use serde::de::{Deserializer, Error, Visitor};
    use std::fmt;

    struct Whole<T>(std::marker::PhantomData<T>);

    impl<'de, T: TryFrom<i128>> Visitor<'de> for Whole<T> {
        type Value = T;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("an integer in range")
        }
        fn visit_u64<E: Error>(self, v: u64) -> Result<T, E> {
            T::try_from(i128::from(v)).map_err(|_| E::custom(format!("{v} is out of range")))
        }
        fn visit_i64<E: Error>(self, v: i64) -> Result<T, E> {
            T::try_from(i128::from(v)).map_err(|_| E::custom(format!("{v} is out of range")))
        }
        fn visit_f64<E: Error>(self, v: f64) -> Result<T, E> {
            const EXACT: f64 = 9_007_199_254_740_992.0; // 2^53
            if v.fract() != 0.0 || !v.is_finite() || v.abs() > EXACT {
                return Err(E::custom(format!("{v} is not an integer in range")));
            }
            // Whole and within ±2^53 (checked above), so the cast is exact.
            #[allow(clippy::cast_possible_truncation)]
            let v_int = v as i128;
            T::try_from(v_int).map_err(|_| E::custom(format!("{v} is out of range")))
        }
    }

    struct Maybe<T>(std::marker::PhantomData<T>);

    impl<'de, T: TryFrom<i128>> Visitor<'de> for Maybe<T> {
        type Value = Option<T>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("an integer in range, or null")
        }
        fn visit_none<E: Error>(self) -> Result<Option<T>, E> {
            Ok(None)
        }
        fn visit_unit<E: Error>(self) -> Result<Option<T>, E> {
            Ok(None)
        }
        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Option<T>, D::Error> {
            d.deserialize_any(Whole(std::marker::PhantomData)).map(Some)
        }
    }

    pub fn whole<'de, D: Deserializer<'de>, T: TryFrom<i128>>(d: D) -> Result<T, D::Error> {
        d.deserialize_any(Whole(std::marker::PhantomData))
    }

    pub fn optional<'de, D: Deserializer<'de>, T: TryFrom<i128>>(
        d: D,
    ) -> Result<Option<T>, D::Error> {
        d.deserialize_option(Maybe(std::marker::PhantomData))
    }
}

#[cfg(test)]
mod tests {
    use crate::{CreateSandbox, CreateVolume, ExecRequest};

    #[test]
    fn integral_floats_are_integers() {
        let v: CreateVolume = serde_json::from_str(r#"{"name": "a", "size_mb": 337.0}"#).unwrap();
        assert_eq!(v.size_mb, 337);
        for bad in [
            "337.5",
            "-1",
            "-1.0",
            "1e40",
            "18446744073709551616",
            "\"1\"",
            "1e17",
        ] {
            let body = format!(r#"{{"name": "a", "size_mb": {bad}}}"#);
            assert!(
                serde_json::from_str::<CreateVolume>(&body).is_err(),
                "{bad}"
            );
        }
        let c: CreateSandbox =
            serde_json::from_str(r#"{"memory_mb": 512.0, "disk_size_mb": null}"#).unwrap();
        assert_eq!((c.memory_mb, c.disk_size_mb), (Some(512), None));
        let e: ExecRequest =
            serde_json::from_str(r#"{"cmd": ["x"], "timeout_sec": -5.0}"#).unwrap();
        assert_eq!(e.timeout_sec, Some(-5));
        let e = serde_json::from_str::<ExecRequest>(
            r#"{"cmd": ["x"], "timeout_sec": -9223372036854775809}"#,
        );
        assert!(e.is_err(), "rounded to i64::MIN");
        let e: ExecRequest = serde_json::from_str(r#"{"cmd": ["x"]}"#).unwrap();
        assert_eq!(e.timeout_sec, None);
    }

    #[test]
    fn unknown_fields_are_refused() {
        assert!(serde_json::from_str::<CreateSandbox>(r#"{"memroy_mb": 512}"#).is_err());
    }
}
