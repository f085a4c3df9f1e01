//! Timestamps as stored: ISO-8601 / RFC 3339 UTC with milliseconds,
//! `2025-01-31T23:59:59.123Z`.
//!
//! The fixed width means text order is time order, so `ts >= ?` comparisons
//! and `ORDER BY ts` work directly in SQL. Implemented here (proleptic
//! Gregorian civil-date arithmetic) to avoid a date-time dependency for two
//! functions.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The current time in storage format.
pub fn now() -> String {
    format_ts(SystemTime::now())
}

/// Formats a time in storage format. Times before 1970 are clamped to the
/// epoch (nothing stored predates it).
pub fn format_ts(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
    let secs = d.as_secs();
    let ms = d.subsec_millis();
    let days = i64::try_from(secs / 86_400).unwrap_or(i64::MAX);
    let rem = secs % 86_400;
    let (y, m, dd) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{dd:02}T{:02}:{:02}:{:02}.{ms:03}Z",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60
    )
}

/// Parses a storage-format timestamp (also accepting no fraction or a
/// fraction of any length). `None` if it is not one.
pub fn parse_ts(s: &str) -> Option<SystemTime> {
    let s = s.strip_suffix('Z')?;
    let (date, time) = s.split_once('T')?;
    let mut dp = date.splitn(3, '-');
    let y: i64 = dp.next()?.parse().ok()?;
    let m: u32 = dp.next()?.parse().ok()?;
    let d: u32 = dp.next()?.parse().ok()?;
    let (hms, frac) = match time.split_once('.') {
        Some((a, b)) => (a, Some(b)),
        None => (time, None),
    };
    let mut tp = hms.splitn(3, ':');
    let hh: u64 = tp.next()?.parse().ok()?;
    let mm: u64 = tp.next()?.parse().ok()?;
    let ss: u64 = tp.next()?.parse().ok()?;
    // RFC 3339 years have four digits; a larger one would overflow the
    // day arithmetic below.
    if !(0..=9999).contains(&y)
        || !(1..=12).contains(&m)
        || !(1..=31).contains(&d)
        || hh > 23
        || mm > 59
        || ss > 60
    {
        return None;
    }
    let nanos = match frac {
        None => 0,
        Some(f) if !f.is_empty() && f.len() <= 9 && f.bytes().all(|b| b.is_ascii_digit()) => {
            let padded = format!("{f:0<9}");
            padded.parse::<u32>().ok()?
        }
        Some(_) => return None,
    };
    let days = days_from_civil(y, m, d);
    if days < 0 {
        return None;
    }
    let time_of_day = hh
        .checked_mul(3600)?
        .checked_add(mm.checked_mul(60)?)?
        .checked_add(ss)?;
    let secs = u64::try_from(days)
        .ok()?
        .checked_mul(86_400)?
        .checked_add(time_of_day)?;
    // `nanos` < 10^9 (at most nine digits), so `Duration::new` cannot carry.
    UNIX_EPOCH.checked_add(Duration::new(secs, nanos))
}

/// Days since 1970-01-01 → (year, month 1–12, day 1–31), for callers
/// that work in whole days (cron schedules).
pub fn civil_from_unix_days(days: u64) -> (i64, u32, u32) {
    // u64 seconds / 86400 always fits an i64.
    civil_from_days(i64::try_from(days).unwrap_or(0))
}

/// Days since 1970-01-01 → (year, month, day).
// Cannot overflow: the only caller passes `u64 seconds / 86_400`
// (≤ 2.2 × 10^14), so every intermediate stays far below `i64::MAX`.
#[allow(clippy::arithmetic_side_effects)]
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    // Day 1–31 and month 1–12 by construction of the algorithm.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let (d, m) = (
        (doy - (153 * mp + 2) / 5 + 1) as u32,
        if mp < 10 { mp + 3 } else { mp - 9 } as u32,
    );
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// (year, month, day) → days since 1970-01-01.
// Cannot overflow: the only caller has bounded `y` to 0..=9999, `m` to
// 1..=12 and `d` to 1..=31, so every intermediate is below 4 × 10^6.
#[allow(clippy::arithmetic_side_effects)]
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absurd_years_are_refused_not_overflowed() {
        assert_eq!(parse_ts("99999999999999999-01-01T00:00:00Z"), None);
        assert_eq!(parse_ts("10000-01-01T00:00:00Z"), None);
        assert!(parse_ts("9999-12-31T23:59:59Z").is_some());
    }

    #[test]
    fn known_values() {
        assert_eq!(format_ts(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = UNIX_EPOCH + Duration::from_millis(1_709_251_199_999);
        assert_eq!(format_ts(t), "2024-02-29T23:59:59.999Z");
        let t = UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(format_ts(t), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn round_trip() {
        for ms in [
            0u64,
            1,
            86_399_999,
            951_782_400_123,
            4_102_444_800_000,
            1_735_689_599_500,
        ] {
            let t = UNIX_EPOCH + Duration::from_millis(ms);
            assert_eq!(parse_ts(&format_ts(t)), Some(t), "{ms}");
        }
        assert_eq!(
            parse_ts("2024-01-02T03:04:05Z"),
            Some(UNIX_EPOCH + Duration::from_secs(1_704_164_645))
        );
        for bad in [
            "",
            "2024-01-02",
            "2024-13-01T00:00:00Z",
            "2024-01-02T03:04:05",
            "x-y-zT",
        ] {
            assert_eq!(parse_ts(bad), None, "{bad}");
        }
    }

    #[test]
    fn text_order_is_time_order() {
        let a = format_ts(UNIX_EPOCH + Duration::from_millis(999));
        let b = format_ts(UNIX_EPOCH + Duration::from_millis(1_000));
        let c = format_ts(UNIX_EPOCH + Duration::from_secs(100_000_000));
        assert!(a < b && b < c);
    }
}
