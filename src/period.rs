//! Durations in the configuration, of two kinds:
//! - [`Period`]: how long evidence is kept or a removed contact waits
//!   (`[journal] retention`, `[safety] delete_grace`), where a slip is
//!   costly. Days, weeks, calendar months (`mo`) and calendar years (`y`);
//!   a bare `m` is refused, because it reads as minutes or months.
//! - [`parse_duration`]: schedules and timeouts (`30m`, `1h30m`), through
//!   `humantime`; `m` is minutes there.
//!
//! **Calendar rule.** A period in months or years is counted on the
//! calendar, in UTC: N months after (or before) a time is the same day of
//! the month at the same time, N months on (or back). When that month has
//! no such day (a month after 31 January; a year after 29 February), it is
//! the first day of the month after, at midnight: a period is never shorter
//! than its name. Weeks, days, hours and seconds are exact (a day is
//! 86,400 s) and count after the months.
//!
//! No I/O and no clock: the time comes in.

use std::fmt;
use std::time::Duration;

use time::{Date, Month, OffsetDateTime};

/// The longest period accepted: far longer than any retention, short
/// enough that counting it from any time stays inside the calendar.
const MAX_YEARS: u64 = 1000;
const DAY: u64 = 86_400;

/// A calendar period: whole months (a year is 12), then exact seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Period {
    months: u32,
    secs: u64,
}

impl Period {
    pub const ZERO: Period = Period { months: 0, secs: 0 };

    /// An exact period (no months).
    pub fn exact(d: Duration) -> Period {
        Period {
            months: 0,
            secs: d.as_secs(),
        }
    }

    /// `months` calendar months.
    pub fn months(months: u32) -> Period {
        Period { months, secs: 0 }
    }

    /// Parses `7y`, `18mo`, `2w`, `90d`, `1y6mo`, `12h`, `30s`, `10min`;
    /// `0` alone means none. A bare `m` is refused: minutes or months?
    pub fn parse(text: &str) -> Result<Period, String> {
        let t = text.trim();
        if t == "0" {
            return Ok(Period::ZERO);
        }
        if t.is_empty() {
            return Err("is empty; write e.g. 7y, 18mo, 90d".into());
        }
        if t.contains(['.', ',']) {
            return Err(format!(
                "\"{t}\": write whole numbers of units (18mo, not 1.5y)"
            ));
        }
        let mut p = Period::ZERO;
        let mut rest = t;
        while !rest.is_empty() {
            let digits = rest
                .find(|c: char| !c.is_ascii_digit())
                .unwrap_or(rest.len());
            if digits == 0 {
                return Err(format!(
                    "\"{t}\": expected a whole number at \"{rest}\"; write e.g. 7y, 18mo, 90d"
                ));
            }
            let (num, after) = rest.split_at(digits);
            let unit_len = after
                .find(|c: char| !c.is_ascii_alphabetic())
                .unwrap_or(after.len());
            let (unit, after) = after.split_at(unit_len);
            let n: u64 = num.parse().map_err(|_| format!("\"{t}\" is too long"))?;
            p = p.plus(n, unit, t)?;
            rest = after.trim_start();
        }
        if u64::from(p.months) > MAX_YEARS * 12 || p.secs > MAX_YEARS * 366 * DAY {
            return Err(format!("\"{t}\" is too long (at most {MAX_YEARS}y)"));
        }
        Ok(p)
    }

    /// Adds `n` of `unit` (a part of `whole`).
    fn plus(self, n: u64, unit: &str, whole: &str) -> Result<Period, String> {
        let too_long = || format!("\"{whole}\" is too long (at most {MAX_YEARS}y)");
        let months = |k: u64| -> Result<Period, String> {
            let m = n.checked_mul(k).ok_or_else(too_long)?;
            let months = u32::try_from(m)
                .ok()
                .and_then(|m| self.months.checked_add(m))
                .ok_or_else(too_long)?;
            Ok(Period { months, ..self })
        };
        let secs = |k: u64| -> Result<Period, String> {
            let s = n.checked_mul(k).ok_or_else(too_long)?;
            let secs = self.secs.checked_add(s).ok_or_else(too_long)?;
            Ok(Period { secs, ..self })
        };
        match unit {
            "y" => months(12),
            "mo" => months(1),
            "w" => secs(7 * DAY),
            "d" => secs(DAY),
            "h" => secs(3600),
            "min" => secs(60),
            "s" => secs(1),
            "m" | "M" => {
                let part = format!("{n}{unit}");
                let lead = if part == whole {
                    String::new()
                } else {
                    format!("\"{whole}\": ")
                };
                Err(format!(
                    "{lead}\"{part}\" could mean {n} minutes or {n} months; \
                     write \"{n}mo\" for months (or \"{n}min\" for minutes)"
                ))
            }
            "" => Err(format!(
                "\"{whole}\": \"{n}\" has no unit; write e.g. 7y, 18mo, 90d"
            )),
            _ => Err(format!(
                "\"{whole}\": unknown unit \"{unit}\" (y, mo, w, d, h, min, s)"
            )),
        }
    }

    pub fn is_zero(&self) -> bool {
        self.months == 0 && self.secs == 0
    }

    /// Shorter than a year: under 12 months and under 365 days, a month
    /// counted as its shortest (28 days). `52w` is; `1y`, `12mo` and `365d`
    /// are not.
    pub fn under_a_year(&self) -> bool {
        self.months < 12 && u64::from(self.months) * 28 * DAY + self.secs < 365 * DAY
    }

    /// The time this period after `t` (the calendar rule in the module's
    /// documentation).
    pub fn after(&self, t: OffsetDateTime) -> OffsetDateTime {
        shift_months(t, i64::from(self.months))
            .and_then(|t| t.checked_add(self.exact_part()))
            .unwrap_or(far(1))
    }

    /// The time this period before `t`: a record from before it is older
    /// than the period (the smallest time whose [`Period::after`] is after `t`).
    pub fn before(&self, t: OffsetDateTime) -> OffsetDateTime {
        t.checked_sub(self.exact_part())
            .and_then(|t| shift_months(t, -i64::from(self.months)))
            .unwrap_or(far(-1))
    }

    fn exact_part(&self) -> time::Duration {
        time::Duration::seconds(i64::try_from(self.secs).unwrap_or(i64::MAX))
    }
}

/// The calendar's far end (`1`) or far beginning (`-1`): never reached by
/// a parsed period from a time in this era.
fn far(sign: i32) -> OffsetDateTime {
    let year = if sign > 0 { 9999 } else { -9999 };
    Date::from_calendar_date(year, Month::January, 1)
        .map(|d| d.midnight().assume_utc())
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

/// `t` moved by `months` calendar months: the same day and time, or, when
/// that month has no such day, the first of the month after at midnight.
fn shift_months(t: OffsetDateTime, months: i64) -> Option<OffsetDateTime> {
    let index = i64::from(t.year()) * 12 + i64::from(u8::from(t.month())) - 1 + months;
    let year = i32::try_from(index.div_euclid(12)).ok()?;
    let month = Month::try_from(u8::try_from(index.rem_euclid(12) + 1).ok()?).ok()?;
    let last = month.length(year);
    if t.day() <= last {
        return Some(t.replace_date(Date::from_calendar_date(year, month, t.day()).ok()?));
    }
    let first_after = Date::from_calendar_date(year, month, last)
        .ok()?
        .next_day()?;
    Some(first_after.midnight().assume_offset(t.offset()))
}

impl fmt::Display for Period {
    /// The shortest text that parses back to the same period.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_zero() {
            return f.write_str("0");
        }
        let (y, mo) = (self.months / 12, self.months % 12);
        let mut s = self.secs;
        let mut parts = Vec::new();
        for (n, unit) in [(u64::from(y), "y"), (u64::from(mo), "mo")] {
            if n > 0 {
                parts.push(format!("{n}{unit}"));
            }
        }
        for (size, unit) in [(DAY, "d"), (3600, "h"), (60, "min"), (1, "s")] {
            if s >= size {
                parts.push(format!("{}{unit}", s / size));
                s %= size;
            }
        }
        f.write_str(&parts.concat())
    }
}

/// Parses a duration for schedules and timeouts: a number and a unit, or
/// several (`30s`, `15m`, `1h30m`, `7d`, `2w`); `m` is minutes; `0` alone
/// means none. Through `humantime` (its `M` is a month of 30.44 days and
/// its `y` a year of 365.25 days).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    if t != "0" && !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("\"{t}\" has no unit; write e.g. 30m, 12h, 7d"));
    }
    humantime::parse_duration(t)
        .map_err(|e| format!("\"{t}\": {e}; write e.g. 30s, 15m, 1h30m, 7d"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    fn p(text: &str) -> Period {
        Period::parse(text).unwrap()
    }

    #[test]
    fn units() {
        assert_eq!(p("0"), Period::ZERO);
        assert_eq!(p("7y"), Period::months(84));
        assert_eq!(p("18mo"), Period::months(18));
        assert_eq!(p("1y6mo"), Period::months(18));
        assert_eq!(p("1y 6mo"), Period::months(18));
        assert_eq!(p("2w"), Period::exact(Duration::from_secs(14 * DAY)));
        assert_eq!(p("90d"), Period::exact(Duration::from_secs(90 * DAY)));
        assert_eq!(p("12h"), Period::exact(Duration::from_secs(12 * 3600)));
        assert_eq!(p("10min"), Period::exact(Duration::from_secs(600)));
        assert_eq!(p("1s"), Period::exact(Duration::from_secs(1)));
        assert_eq!(p(" 7d "), p("7d"));
        assert_eq!(p("1y2mo3d4h5min6s").to_string(), "1y2mo3d4h5min6s");
        assert_eq!(p("24mo").to_string(), "2y");
        assert_eq!(p("14d").to_string(), "14d");
    }

    #[test]
    fn a_bare_m_names_both_readings() {
        for text in ["6m", "1y6m", "6M"] {
            let e = Period::parse(text).unwrap_err();
            assert!(e.contains("minutes") && e.contains("months"), "{e}");
            assert!(e.contains("6mo"), "{e}");
        }
    }

    #[test]
    fn refusals_say_why() {
        let cases = [
            ("", "empty"),
            ("7", "no unit"),
            ("7x", "unknown unit \"x\""),
            ("d", "whole number"),
            ("1.5y", "whole numbers"),
            ("-1y", "whole number"),
            ("7days", "unknown unit"),
            ("99999999999999999999y", "too long"),
            ("1001y", "too long"),
            ("5000000000y", "too long"),
        ];
        for (text, want) in cases {
            let e = Period::parse(text).unwrap_err();
            assert!(e.contains(want), "{text}: {e}");
        }
    }

    #[test]
    fn under_a_year() {
        for short in ["1s", "7d", "52w", "11mo", "364d", "11mo30d"] {
            assert!(p(short).under_a_year(), "{short}");
        }
        for long in ["1y", "12mo", "365d", "7y", "8760h", "11mo57d"] {
            assert!(!p(long).under_a_year(), "{long}");
        }
    }

    #[test]
    fn calendar_months() {
        let month = p("1mo");
        // The same day a month on.
        assert_eq!(
            month.after(datetime!(2025-01-15 10:30 UTC)),
            datetime!(2025-02-15 10:30 UTC)
        );
        // A month after 31 January: February has no 31st, so 1 March.
        assert_eq!(
            month.after(datetime!(2025-01-31 10:30 UTC)),
            datetime!(2025-03-01 0:00 UTC)
        );
        assert_eq!(
            month.after(datetime!(2024-01-31 10:30 UTC)),
            datetime!(2024-03-01 0:00 UTC)
        );
        assert_eq!(
            month.after(datetime!(2024-01-29 10:30 UTC)),
            datetime!(2024-02-29 10:30 UTC)
        );
        // Back: a month before 31 March is 1 March (everything in February
        // is more than a month old).
        assert_eq!(
            month.before(datetime!(2025-03-31 10:30 UTC)),
            datetime!(2025-03-01 0:00 UTC)
        );
        assert_eq!(
            month.before(datetime!(2025-03-28 10:30 UTC)),
            datetime!(2025-02-28 10:30 UTC)
        );
        // Across a year's end.
        assert_eq!(
            p("2mo").after(datetime!(2025-12-10 0:00 UTC)),
            datetime!(2026-02-10 0:00 UTC)
        );
        assert_eq!(
            p("13mo").before(datetime!(2026-01-10 0:00 UTC)),
            datetime!(2024-12-10 0:00 UTC)
        );
    }

    #[test]
    fn calendar_years() {
        let year = p("1y");
        assert_eq!(
            year.after(datetime!(2025-06-01 12:00 UTC)),
            datetime!(2026-06-01 12:00 UTC)
        );
        // A year after 29 February: 1 March.
        assert_eq!(
            year.after(datetime!(2024-02-29 12:00 UTC)),
            datetime!(2025-03-01 0:00 UTC)
        );
        assert_eq!(
            p("4y").after(datetime!(2024-02-29 12:00 UTC)),
            datetime!(2028-02-29 12:00 UTC)
        );
        // A leap year is 366 days, a calendar year all the same.
        assert_eq!(
            p("7y").before(datetime!(2026-03-01 0:00 UTC)),
            datetime!(2019-03-01 0:00 UTC)
        );
        // Months, then the exact part.
        assert_eq!(
            p("1y1d").after(datetime!(2025-02-28 12:00 UTC)),
            datetime!(2026-03-01 12:00 UTC)
        );
        // The extremes stay inside the calendar.
        let t = datetime!(2025-06-01 12:00 UTC);
        assert!(p("1000y").before(t).year() == 1025);
        assert!(p("1000y").after(t).year() == 3025);
    }

    /// `before` is the inverse of `after`: a record older than
    /// `before(now)` has had its period by `now`, and one at or after it
    /// has not.
    #[test]
    fn before_inverts_after() {
        let start = datetime!(2023-12-25 13:00 UTC);
        for text in ["1mo", "1y", "3mo2d", "7d", "1y1mo"] {
            let period = p(text);
            for h in (0..24 * 500).step_by(7) {
                let now = start + time::Duration::hours(h);
                let cut = period.before(now);
                assert!(period.after(cut) >= now, "{text} {now}: {cut}");
                let just_before = cut - time::Duration::SECOND;
                assert!(period.after(just_before) <= now, "{text} {now}: {cut}");
            }
        }
    }

    #[test]
    fn minute_scale_durations() {
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("30m"), Ok(Duration::from_secs(1800)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("1h 30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("2m30s"), Ok(Duration::from_secs(150)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(7 * DAY)));
        assert_eq!(parse_duration("2w"), Ok(Duration::from_secs(14 * DAY)));
        assert_eq!(parse_duration("45s"), Ok(Duration::from_secs(45)));
        let e = parse_duration("7").unwrap_err();
        assert!(e.contains("\"7\" has no unit"), "{e}");
        let e = parse_duration("7x").unwrap_err();
        assert!(e.contains("unknown time unit"), "{e}");
        assert!(parse_duration("d").is_err());
    }
}
