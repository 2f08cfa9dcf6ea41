//! Timestamps as the proto3 JSON mapping writes `google.protobuf.Timestamp`:
//! RFC 3339 in UTC, `2026-11-30T16:00:00.123Z`, with no fraction when the
//! milliseconds are 0 (as Go's protojson prints a whole second). Apiary keeps
//! times in Unix milliseconds, so a fraction finer than that is dropped on input.

const MS_PER_DAY: u64 = 86_400_000;
/// The last millisecond of the year 9999, the largest time RFC 3339 writes.
const MAX_UNIX_MS: u64 = 253_402_300_799_999;

/// `unix_ms` as RFC 3339 in UTC.
pub(crate) fn format_unix_ms(unix_ms: u64) -> String {
    let unix_ms = unix_ms.min(MAX_UNIX_MS);
    let (year, month, day) = civil_from_days((unix_ms / MS_PER_DAY) as i64);
    let ms_of_day = unix_ms % MS_PER_DAY;
    let (hour, minute, second, ms) =
        (ms_of_day / 3_600_000, ms_of_day / 60_000 % 60, ms_of_day / 1000 % 60, ms_of_day % 1000);
    let fraction = if ms == 0 { String::new() } else { format!(".{ms:03}") };
    format!("{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}{fraction}Z")
}

/// Reads RFC 3339 (`Z` or a `+hh:mm` offset, any fraction) into Unix
/// milliseconds; the error says what is wrong, for a message that names the field.
pub(crate) fn parse_rfc3339(text: &str) -> Result<u64, String> {
    let malformed = || format!("{text:?} is not a time in RFC 3339 (as in \"2026-11-30T16:00:00Z\")");
    let bytes = text.as_bytes();
    if bytes.len() < 20 || !matches!(bytes[10], b'T' | b't') {
        return Err(malformed());
    }
    let number = |range: std::ops::Range<usize>| -> Result<i64, String> {
        let part = text.get(range).ok_or_else(malformed)?;
        if !part.bytes().all(|byte| byte.is_ascii_digit()) {
            return Err(malformed());
        }
        part.parse::<i64>().map_err(|_| malformed())
    };
    let separators_fit = bytes[4] == b'-' && bytes[7] == b'-' && bytes[13] == b':' && bytes[16] == b':';
    if !separators_fit {
        return Err(malformed());
    }
    let (year, month, day) = (number(0..4)?, number(5..7)?, number(8..10)?);
    let (hour, minute, second) = (number(11..13)?, number(14..16)?, number(17..19)?);
    let in_range = (1..=12).contains(&month)
        && (1..=days_in_month(year, month)).contains(&day)
        && hour < 24
        && minute < 60
        && second < 60;
    if !in_range {
        return Err(malformed());
    }
    let (ms, rest) = fraction_ms(&text[19..]).ok_or_else(malformed)?;
    let offset_minutes = offset_minutes(rest).ok_or_else(malformed)?;
    let seconds = days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second - offset_minutes * 60;
    if seconds < 0 {
        return Err(format!("{text:?} is before 1970, the earliest time Apiary keeps"));
    }
    Ok(seconds as u64 * 1000 + ms)
}

/// The milliseconds of an optional `.fraction`, and what follows it.
fn fraction_ms(text: &str) -> Option<(u64, &str)> {
    let Some(digits_and_rest) = text.strip_prefix('.') else { return Some((0, text)) };
    let digits = digits_and_rest.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 || digits > 9 {
        return None;
    }
    let first_three: String = digits_and_rest[..digits].chars().chain("000".chars()).take(3).collect();
    Some((first_three.parse().ok()?, &digits_and_rest[digits..]))
}

/// `Z`, or `+hh:mm` / `-hh:mm`, as minutes east of UTC.
fn offset_minutes(text: &str) -> Option<i64> {
    if text == "Z" || text == "z" {
        return Some(0);
    }
    let bytes = text.as_bytes();
    if bytes.len() != 6 || bytes[3] != b':' || !matches!(bytes[0], b'+' | b'-') {
        return None;
    }
    let hours: i64 = text[1..3].parse().ok()?;
    let minutes: i64 = text[4..6].parse().ok()?;
    if hours > 23 || minutes > 59 || !text[1..3].bytes().chain(text[4..6].bytes()).all(|b| b.is_ascii_digit()) {
        return None;
    }
    let sign = if bytes[0] == b'-' { -1 } else { 1 };
    Some(sign * (hours * 60 + minutes))
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a date in the proleptic Gregorian calendar
/// (Howard Hinnant's `days_from_civil`).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let day_of_year = (153 * (month + if month > 2 { -3 } else { 9 }) + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// The date of a day counted from 1970-01-01 (Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let days = days + 719_468;
    let era = days.div_euclid(146_097);
    let day_of_era = days - era * 146_097;
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 { month_index + 3 } else { month_index - 9 };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_print_as_protojson_prints_them() {
        assert_eq!(format_unix_ms(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_unix_ms(1_796_054_400_123), "2026-11-30T16:00:00.123Z");
        assert_eq!(format_unix_ms(951_782_400_000), "2000-02-29T00:00:00Z");
        assert_eq!(format_unix_ms(1_796_054_400_007), "2026-11-30T16:00:00.007Z");
    }

    #[test]
    fn every_printed_time_reads_back() {
        for unix_ms in [0, 1, 999, 86_399_999, 951_782_400_000, 1_796_054_400_123, MAX_UNIX_MS] {
            assert_eq!(parse_rfc3339(&format_unix_ms(unix_ms)), Ok(unix_ms), "{unix_ms}");
        }
    }

    #[test]
    fn offsets_and_long_fractions_are_read() {
        assert_eq!(parse_rfc3339("2026-11-30T17:00:00+01:00"), Ok(1_796_054_400_000));
        assert_eq!(parse_rfc3339("2026-11-30T15:30:00.5-00:30"), Ok(1_796_054_400_500));
        assert_eq!(parse_rfc3339("2026-11-30T16:00:00.123456789Z"), Ok(1_796_054_400_123));
    }

    #[test]
    fn malformed_times_are_refused() {
        for bad in [
            "",
            "2026-11-30",
            "2026-11-30 16:00:00Z",
            "2026-13-01T00:00:00Z",
            "2026-02-30T00:00:00Z",
            "2026-11-30T24:00:00Z",
            "2026-11-30T16:00:00",
            "2026-11-30T16:00:00.Z",
            "2026-11-30T16:00:00+1:00",
            "+026-11-30T16:00:00Z",
        ] {
            assert!(parse_rfc3339(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            parse_rfc3339("1969-12-31T23:59:59Z"),
            Err("\"1969-12-31T23:59:59Z\" is before 1970, the earliest time Apiary keeps".to_string())
        );
    }
}
