//! UTC calendar arithmetic for records and reports: Unix seconds to and from
//! `YYYY-MM-DDTHH:MM:SSZ` (proleptic Gregorian), without a time-zone database.

/// Days since 1970-01-01 to (year, month, day): the era-based method (400-year eras of 146 097
/// days).
fn civil(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(month <= 2), month, day)
}

/// (year, month, day) to days since 1970-01-01, the inverse of [`civil`].
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `YYYY-MM-DDTHH:MM:SSZ` for Unix seconds.
pub fn rfc3339(secs: u64) -> String {
    let (year, month, day) = civil((secs / 86_400) as i64);
    let rem = secs % 86_400;
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// `YYYY-MM-DD`, the UTC day of Unix seconds.
pub fn day(secs: u64) -> String {
    rfc3339(secs)[..10].to_string()
}

/// Unix seconds of `YYYY-MM-DDTHH:MM:SSZ` or of a day `YYYY-MM-DD` (its start); None for
/// anything else, or a time before 1970.
pub fn parse_rfc3339(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let t = s.get(r)?;
        t.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| t.parse().ok())?
    };
    let (date, time) = match b.len() {
        10 => (s, None),
        20 if b[10] == b'T' && b[19] == b'Z' && b[13] == b':' && b[16] == b':' => {
            (&s[..10], Some((num(11..13)?, num(14..16)?, num(17..19)?)))
        }
        _ => return None,
    };
    if date.as_bytes().get(4) != Some(&b'-') || date.as_bytes().get(7) != Some(&b'-') {
        return None;
    }
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let days = days_from_civil(year, month, day);
    // Reject what does not round-trip (month 13, February 30th).
    if !(1..=12).contains(&month) || civil(days) != (year, month, day) {
        return None;
    }
    let (h, m, sec) = time.unwrap_or((0, 0, 0));
    if h > 23 || m > 59 || sec > 59 {
        return None;
    }
    u64::try_from(days * 86_400 + h * 3600 + m * 60 + sec).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_round_trip_and_nonsense_is_refused() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_796_083_200), "2026-12-01T00:00:00Z");
        assert_eq!(day(1_796_083_200 + 86_399), "2026-12-01");
        for t in [0, 951_782_400, 1_796_083_200, 1_796_170_123, 4_102_444_800] {
            assert_eq!(parse_rfc3339(&rfc3339(t)), Some(t));
        }
        assert_eq!(parse_rfc3339("2026-12-01"), Some(1_796_083_200));
        for bad in [
            "2026-13-01",
            "2026-02-30",
            "2026-12-01T24:00:00Z",
            "2026-12-01 00:00:00",
            "1969-12-31",
            "+026-12-01",
            "",
            "yesterday",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
    }
}
