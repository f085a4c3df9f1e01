//! Five-field cron expressions for scheduled backups: `*`, numbers, lists
//! (`1,15`), ranges (`1-5`) and steps (`*/15`, `0-30/10`) in minute, hour,
//! day of month, month and day of week (0 or 7 is Sunday). As in cron, when
//! both day fields are restricted a day matching either one fires.

use std::collections::BTreeSet;

/// A parsed expression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cron {
    minute: BTreeSet<u32>,
    hour: BTreeSet<u32>,
    dom: BTreeSet<u32>,
    month: BTreeSet<u32>,
    dow: BTreeSet<u32>,
    dom_any: bool,
    dow_any: bool,
}

/// A wall-clock minute (UTC) to test an expression against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Minute {
    /// 0–59.
    pub minute: u32,
    /// 0–23.
    pub hour: u32,
    /// 1–31.
    pub day: u32,
    /// 1–12.
    pub month: u32,
    /// 0–6, Sunday 0.
    pub weekday: u32,
}

impl Minute {
    /// The minute of `unix_secs` (UTC).
    pub fn from_unix(unix_secs: u64) -> Minute {
        let days = unix_secs / 86_400;
        let rem = unix_secs % 86_400;
        let (_, month, day) = bhatti_store::time::civil_from_unix_days(days);
        // 1970-01-01 was a Thursday (4).
        let weekday = u32::try_from(days.saturating_add(4) % 7).unwrap_or(0);
        Minute {
            minute: u32::try_from((rem % 3600) / 60).unwrap_or(0),
            hour: u32::try_from(rem / 3600).unwrap_or(0),
            day,
            month,
            weekday,
        }
    }
}

fn field(text: &str, lo: u32, hi: u32, what: &str) -> Result<(BTreeSet<u32>, bool), String> {
    let mut out = BTreeSet::new();
    let any = text == "*";
    for part in text.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((r, s)) => (
                r,
                s.parse::<u32>()
                    .ok()
                    .filter(|s| *s > 0)
                    .ok_or_else(|| format!("{what}: bad step in {part:?}"))?,
            ),
            None => (part, 1),
        };
        let (a, b) = if range == "*" {
            (lo, hi)
        } else if let Some((a, b)) = range.split_once('-') {
            let n = |v: &str| {
                v.parse::<u32>()
                    .map_err(|_| format!("{what}: {part:?} is not a number or range"))
            };
            (n(a)?, n(b)?)
        } else {
            let v = range
                .parse::<u32>()
                .map_err(|_| format!("{what}: {part:?} is not a number or range"))?;
            (v, if part.contains('/') { hi } else { v })
        };
        if a < lo || b > hi || a > b {
            return Err(format!("{what}: {part:?} is outside {lo}-{hi}"));
        }
        let mut v = a;
        while v <= b {
            out.insert(v);
            v = match v.checked_add(step) {
                Some(n) => n,
                None => break,
            };
        }
    }
    Ok((out, any))
}

impl Cron {
    /// Parses `m h dom mon dow`.
    pub fn parse(expr: &str) -> Result<Cron, String> {
        let f: Vec<&str> = expr.split_whitespace().collect();
        let [m, h, dom, mon, dow] = f.as_slice() else {
            return Err(format!(
                "{expr:?}: expected 5 fields (minute hour day month weekday)"
            ));
        };
        let (minute, _) = field(m, 0, 59, "minute")?;
        let (hour, _) = field(h, 0, 23, "hour")?;
        let (dom, dom_any) = field(dom, 1, 31, "day of month")?;
        let (month, _) = field(mon, 1, 12, "month")?;
        let (mut dow, dow_any) = field(dow, 0, 7, "day of week")?;
        if dow.remove(&7) {
            dow.insert(0);
        }
        Ok(Cron {
            minute,
            hour,
            dom,
            month,
            dow,
            dom_any,
            dow_any,
        })
    }

    /// Whether the expression fires in minute `t`.
    pub fn matches(&self, t: Minute) -> bool {
        let day = match (self.dom_any, self.dow_any) {
            (true, true) => true,
            (false, true) => self.dom.contains(&t.day),
            (true, false) => self.dow.contains(&t.weekday),
            (false, false) => self.dom.contains(&t.day) || self.dow.contains(&t.weekday),
        };
        day && self.minute.contains(&t.minute)
            && self.hour.contains(&t.hour)
            && self.month.contains(&t.month)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(minute: u32, hour: u32, day: u32, month: u32, weekday: u32) -> Minute {
        Minute {
            minute,
            hour,
            day,
            month,
            weekday,
        }
    }

    #[test]
    fn fields_lists_ranges_and_steps() {
        let c = Cron::parse("*/15 2-4 * * *").unwrap();
        assert!(c.matches(at(30, 3, 1, 1, 0)));
        assert!(!c.matches(at(31, 3, 1, 1, 0)));
        assert!(!c.matches(at(0, 5, 1, 1, 0)));
        let c = Cron::parse("0 0 1,15 * 7").unwrap();
        assert!(c.matches(at(0, 0, 15, 6, 3)), "day of month");
        assert!(c.matches(at(0, 0, 9, 6, 0)), "or Sunday (7)");
        assert!(!c.matches(at(0, 0, 9, 6, 1)));
        assert!(Cron::parse("* * * *").is_err());
        assert!(Cron::parse("60 * * * *").is_err());
        assert!(Cron::parse("*/0 * * * *").is_err());
        assert!(Cron::parse("a * * * *").is_err());
    }

    #[test]
    fn minutes_from_unix_time() {
        // 2026-12-05T00:30:00Z, a Saturday.
        assert_eq!(Minute::from_unix(1_796_430_600), at(30, 0, 5, 12, 6));
    }
}
