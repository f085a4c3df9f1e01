//! Tolerant reading of integers and JSON.
//!
//! Numbers that pass through JSON (or through a dynamically typed layer such
//! as the reference implementation's `float64` decoding) can come back as
//! floats: `1.0` vCPUs, `2048.0` MiB, generation `3.0`. SQLite itself is
//! dynamically typed too, so an "INTEGER" column can hold a REAL if something
//! wrote one. The reference's recovery test ("type coercion: float64 from JSON
//! vs int from SQLite") exists because of exactly this.
//!
//! The rule here: a whole number is accepted whatever its representation
//! (`2048`, `2048.0`, `"2048"`); anything else that was supposed to be an
//! integer (`1.5`, `"abc"`, NULL, out of range) is a clear
//! [`StoreError::Invalid`] naming the column — never silently truncated or
//! rounded.

use rusqlite::types::ValueRef;
use rusqlite::Row;
use serde::de::DeserializeOwned;
use serde_json::{Number, Value};

use crate::error::{Result, StoreError};

/// `2^63` as an `f64`; floats in `[-2^63, 2^63)` convert to `i64` exactly
/// when they have no fraction.
const TWO_POW_63: f64 = 9_223_372_036_854_775_808.0;
/// `2^64` as an `f64`.
const TWO_POW_64: f64 = 18_446_744_073_709_551_616.0;

/// Reads a SQLite value as a whole number. `what` names the value in errors.
pub fn int_from_sql(v: ValueRef<'_>, what: &str) -> Result<i64> {
    match v {
        ValueRef::Integer(i) => Ok(i),
        ValueRef::Real(f) => whole_f64(f, what),
        ValueRef::Text(t) => {
            let s = std::str::from_utf8(t)
                .map_err(|_| StoreError::Invalid(format!("{what}: not valid UTF-8")))?
                .trim();
            if let Ok(i) = s.parse::<i64>() {
                return Ok(i);
            }
            match s.parse::<f64>() {
                Ok(f) => whole_f64(f, what),
                Err(_) => Err(StoreError::Invalid(format!(
                    "{what}: {s:?} is not a number"
                ))),
            }
        }
        ValueRef::Null => Err(StoreError::Invalid(format!("{what}: is NULL"))),
        ValueRef::Blob(_) => Err(StoreError::Invalid(format!(
            "{what}: is a BLOB, not a number"
        ))),
    }
}

fn whole_f64(f: f64, what: &str) -> Result<i64> {
    if f.is_finite() && f.fract() == 0.0 && (-TWO_POW_63..TWO_POW_63).contains(&f) {
        // Exact: the value is whole and in range.
        #[allow(clippy::cast_possible_truncation)]
        Ok(f as i64)
    } else {
        Err(StoreError::Invalid(format!(
            "{what}: {f} is not a whole number"
        )))
    }
}

/// Reads a JSON value as a whole number (`2048`, `2048.0`, or a string of
/// either). `what` names the value in errors.
pub fn int_from_json(v: &Value, what: &str) -> Result<i64> {
    match v {
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                Ok(i)
            } else if n.as_u64().is_some() {
                Err(StoreError::Invalid(format!("{what}: {n} is out of range")))
            } else {
                whole_f64(n.as_f64().unwrap_or(f64::NAN), what)
            }
        }
        Value::String(s) => int_from_sql(ValueRef::Text(s.as_bytes()), what),
        other => Err(StoreError::Invalid(format!(
            "{what}: expected a number, found {other}"
        ))),
    }
}

/// Converts a whole number into a narrower integer type, or `Invalid`.
pub fn narrow<T: TryFrom<i64>>(i: i64, what: &str) -> Result<T> {
    T::try_from(i).map_err(|_| {
        StoreError::Invalid(format!(
            "{what}: {i} is out of range for {}",
            std::any::type_name::<T>()
        ))
    })
}

/// Reads column `col` of `row` tolerantly as an integer of type `T`.
pub fn get_int<T: TryFrom<i64>>(row: &Row<'_>, col: &str) -> Result<T> {
    let v = row.get_ref(col)?;
    narrow(int_from_sql(v, col)?, col)
}

/// Reads column `col` as a boolean stored as an integer (0 / non-zero).
pub fn get_bool(row: &Row<'_>, col: &str) -> Result<bool> {
    Ok(get_int::<i64>(row, col)? != 0)
}

/// Rewrites every float in `v` that holds a whole number (`2048.0`) as an
/// integer (`2048`), recursively. Non-whole floats (`1.5`) are left alone, so
/// deserializing them into an integer field still fails loudly.
pub fn normalize_numbers(v: Value) -> Value {
    match v {
        Value::Number(n) if n.is_f64() => Value::Number(whole_number(&n).unwrap_or(n)),
        Value::Array(a) => Value::Array(a.into_iter().map(normalize_numbers).collect()),
        Value::Object(o) => Value::Object(
            o.into_iter()
                .map(|(k, v)| (k, normalize_numbers(v)))
                .collect(),
        ),
        other => other,
    }
}

fn whole_number(n: &Number) -> Option<Number> {
    let f = n.as_f64()?;
    if !f.is_finite() || f.fract() != 0.0 {
        return None;
    }
    if (-TWO_POW_63..TWO_POW_63).contains(&f) {
        #[allow(clippy::cast_possible_truncation)]
        Some(Number::from(f as i64))
    } else if (0.0..TWO_POW_64).contains(&f) {
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        Some(Number::from(f as u64))
    } else {
        None
    }
}

/// Parses JSON text into `T`, accepting whole-number floats where `T` wants
/// integers. Any failure (bad JSON, `1.5` for an integer field, a missing
/// field) is `Invalid` and names `what`.
pub fn from_json<T: DeserializeOwned>(text: &str, what: &str) -> Result<T> {
    let v: Value = serde_json::from_str(text)
        .map_err(|e| StoreError::Invalid(format!("{what}: malformed JSON: {e}")))?;
    from_json_value(v, what)
}

/// Like [`from_json`] for an already parsed value.
pub fn from_json_value<T: DeserializeOwned>(v: Value, what: &str) -> Result<T> {
    serde_json::from_value(normalize_numbers(v))
        .map_err(|e| StoreError::Invalid(format!("{what}: {e}")))
}

/// Serializes `v` for a JSON column.
pub(crate) fn to_json<T: serde::Serialize + ?Sized>(v: &T, what: &str) -> Result<String> {
    serde_json::to_string(v).map_err(|e| StoreError::Invalid(format!("{what}: {e}")))
}

/// Reads a JSON TEXT column tolerantly into `T`.
pub(crate) fn get_json<T: DeserializeOwned>(row: &Row<'_>, col: &str) -> Result<T> {
    let text: String = row.get(col)?;
    from_json(&text, col)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn sql_ints() {
        assert_eq!(int_from_sql(ValueRef::Integer(7), "x").unwrap(), 7);
        assert_eq!(int_from_sql(ValueRef::Real(1.0), "x").unwrap(), 1);
        assert_eq!(int_from_sql(ValueRef::Real(-3.0), "x").unwrap(), -3);
        assert_eq!(int_from_sql(ValueRef::Text(b"2048.0"), "x").unwrap(), 2048);
        assert_eq!(int_from_sql(ValueRef::Text(b" 12 "), "x").unwrap(), 12);
        for bad in [
            ValueRef::Real(1.5),
            ValueRef::Real(f64::NAN),
            ValueRef::Real(f64::INFINITY),
            ValueRef::Real(1e300),
            ValueRef::Text(b"abc"),
            ValueRef::Null,
            ValueRef::Blob(b"\x01"),
        ] {
            let e = int_from_sql(bad, "cpus").unwrap_err();
            assert!(
                matches!(&e, StoreError::Invalid(m) if m.starts_with("cpus")),
                "{e}"
            );
        }
    }

    #[test]
    fn json_ints() {
        assert_eq!(int_from_json(&json!(2048.0), "m").unwrap(), 2048);
        assert_eq!(int_from_json(&json!(5), "m").unwrap(), 5);
        assert_eq!(int_from_json(&json!("3"), "m").unwrap(), 3);
        assert!(int_from_json(&json!(1.5), "m").is_err());
        assert!(int_from_json(&json!(u64::MAX), "m").is_err());
        assert!(int_from_json(&json!(null), "m").is_err());
    }

    #[test]
    fn narrowing() {
        assert_eq!(narrow::<u32>(5, "x").unwrap(), 5);
        assert!(narrow::<u32>(-1, "x").is_err());
        assert!(narrow::<u16>(70_000, "x").is_err());
    }

    #[test]
    fn normalize_keeps_fractions() {
        let v = normalize_numbers(json!({"a": 1.0, "b": [2048.0, 1.5], "c": {"d": 3}}));
        assert_eq!(v, json!({"a": 1, "b": [2048, 1.5], "c": {"d": 3}}));
        assert!(v["a"].is_i64());
        assert!(v["b"][1].is_f64());
    }

    #[test]
    fn typed_json() {
        #[derive(serde::Deserialize, Debug)]
        struct S {
            cpus: u32,
            mem: u64,
            f: f64,
        }
        let s: S = from_json(r#"{"cpus":1.0,"mem":2048.0,"f":2.0}"#, "s").unwrap();
        assert_eq!((s.cpus, s.mem, s.f), (1, 2048, 2.0));
        let e = from_json::<S>(r#"{"cpus":1.5,"mem":1,"f":0}"#, "vm_state").unwrap_err();
        assert!(
            matches!(&e, StoreError::Invalid(m) if m.contains("vm_state")),
            "{e}"
        );
        assert!(from_json::<S>("{", "s").is_err());
    }
}
