//! Calendar arithmetic on Unix milliseconds, in UTC.
//!
//! Day and month quotas are calendar windows: a month quota resets at 00:00 UTC on the
//! first of the month, whatever the month's length. The conversions use Howard
//! Hinnant's `days_from_civil` algorithm so the core needs no date library.

pub const MS_PER_SECOND: i64 = 1_000;
pub const MS_PER_MINUTE: i64 = 60 * MS_PER_SECOND;
pub const MS_PER_HOUR: i64 = 60 * MS_PER_MINUTE;
pub const MS_PER_DAY: i64 = 24 * MS_PER_HOUR;

/// Days since 1970-01-01 of the civil date `y-m-d` (proleptic Gregorian).
pub fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The civil date `(year, month, day)` of a count of days since 1970-01-01.
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Start of the UTC day containing `ms`.
pub fn day_start(ms: i64) -> i64 {
    ms.div_euclid(MS_PER_DAY) * MS_PER_DAY
}

/// Start of the UTC calendar month containing `ms`.
pub fn month_start(ms: i64) -> i64 {
    let (y, m, _) = civil_from_days(ms.div_euclid(MS_PER_DAY));
    days_from_civil(y, m, 1) * MS_PER_DAY
}

/// Start of the UTC calendar month after the one containing `ms`.
pub fn next_month_start(ms: i64) -> i64 {
    let (y, m, _) = civil_from_days(ms.div_euclid(MS_PER_DAY));
    let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
    days_from_civil(ny, nm, 1) * MS_PER_DAY
}

/// Formats `ms` as an RFC 3339 UTC timestamp with millisecond precision.
pub fn to_rfc3339(ms: i64) -> String {
    let mut out = String::with_capacity(24);
    write_rfc3339(&mut out, ms);
    out
}

/// [`to_rfc3339`] into `out`, allocating nothing (the access log writes one a request).
pub fn write_rfc3339(out: &mut String, ms: i64) {
    let days = ms.div_euclid(MS_PER_DAY);
    let rem = ms.rem_euclid(MS_PER_DAY);
    let (y, mo, d) = civil_from_days(days);
    let h = rem / MS_PER_HOUR;
    let mi = (rem % MS_PER_HOUR) / MS_PER_MINUTE;
    let s = (rem % MS_PER_MINUTE) / MS_PER_SECOND;
    let milli = rem % MS_PER_SECOND;
    let _ = std::fmt::Write::write_fmt(out, format_args!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{milli:03}Z"));
}

/// Parses an RFC 3339 timestamp (`2026-11-23T04:30:00Z`, optional fraction and
/// offset) or a plain integer of Unix seconds into Unix milliseconds.
pub fn parse_timestamp(text: &str) -> Option<i64> {
    let text = text.trim();
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        return text.parse::<i64>().ok()?.checked_mul(MS_PER_SECOND);
    }
    let b = text.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    let num = |range: std::ops::Range<usize>| -> Option<i64> {
        let part = text.get(range)?;
        if !part.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        part.parse().ok()
    };
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if b[13] != b':' || b[16] != b':' || !(1..=12).contains(&month) || !(1..=31).contains(&day) {
        return None;
    }
    if hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let mut rest = &text[19..];
    let mut millis = 0;
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        let padded = format!("{:0<3}", &frac[..digits.min(3)]);
        millis = padded.parse::<i64>().ok()?;
        rest = &frac[digits..];
    }
    let offset_ms = match rest {
        "Z" | "z" => 0,
        _ => {
            let rb = rest.as_bytes();
            if rb.len() != 6 || rb[3] != b':' || !matches!(rb[0], b'+' | b'-') {
                return None;
            }
            let oh: i64 = rest.get(1..3)?.parse().ok()?;
            let om: i64 = rest.get(4..6)?.parse().ok()?;
            let sign = if rb[0] == b'-' { -1 } else { 1 };
            sign * (oh * MS_PER_HOUR + om * MS_PER_MINUTE)
        }
    };
    let days = days_from_civil(year, month as u32, day as u32);
    Some(days * MS_PER_DAY + hour * MS_PER_HOUR + minute * MS_PER_MINUTE + second * MS_PER_SECOND + millis - offset_ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_round_trip_over_four_centuries() {
        for days in (-146_097..146_097).step_by(13) {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
    }

    #[test]
    fn month_boundaries() {
        // 2024-02-29T12:00:00Z (leap year)
        let t = parse_timestamp("2024-02-29T12:00:00Z").unwrap();
        assert_eq!(to_rfc3339(month_start(t)), "2024-02-01T00:00:00.000Z");
        assert_eq!(to_rfc3339(next_month_start(t)), "2024-03-01T00:00:00.000Z");
        let dec = parse_timestamp("2026-12-31T23:59:59.999Z").unwrap();
        assert_eq!(to_rfc3339(next_month_start(dec)), "2027-01-01T00:00:00.000Z");
        assert_eq!(to_rfc3339(day_start(dec)), "2026-12-31T00:00:00.000Z");
    }

    #[test]
    fn parses_offsets_fractions_and_seconds() {
        assert_eq!(parse_timestamp("1700000000"), Some(1_700_000_000_000));
        assert_eq!(parse_timestamp("2026-11-23T06:30:00.5+02:00"), parse_timestamp("2026-11-23T04:30:00.500Z"));
        assert_eq!(parse_timestamp("2026-13-01T00:00:00Z"), None);
        assert_eq!(parse_timestamp("yesterday"), None);
        assert_eq!(parse_timestamp(""), None);
    }
}
