//! Calendar dates and instants for the catalog's `effective_from`.
//!
//! `YYYY-MM-DD` is midnight UTC of that day; `YYYY-MM-DDTHH:MM:SS[.ffffff]Z` is an instant to the
//! microsecond (a [`Timestamp`]'s resolution). Only UTC (`Z`) is accepted, never an offset, so one
//! instant has one spelling: [`format_instant`] writes the date alone at midnight, otherwise the
//! full form with the fraction only when it is not zero, and [`parse_instant`] reads back exactly
//! what [`format_instant`] wrote. Years 1970 to 9999.
//!
//! Pure integer arithmetic (Howard Hinnant's `days_from_civil`), no clock and no time zone data.

use credex_ledger::Timestamp;

const MICROS_PER_DAY: i64 = 86_400_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DateError {
    #[error("a date is written YYYY-MM-DD, such as 2026-11-01")]
    Shape,
    #[error("the year must be between 1970 and 9999")]
    Year,
    #[error("the month must be between 01 and 12")]
    Month,
    #[error("that day does not exist in that month")]
    Day,
}

/// Midnight UTC of a `YYYY-MM-DD` date, from 1970-01-01 to 9999-12-31.
pub fn parse_date(text: &str) -> Result<Timestamp, DateError> {
    let bytes = text.as_bytes();
    let shape_ok = bytes.len() == 10
        && bytes[4] == b'-'
        && bytes[7] == b'-'
        && bytes
            .iter()
            .enumerate()
            .all(|(i, b)| i == 4 || i == 7 || b.is_ascii_digit());
    if !shape_ok {
        return Err(DateError::Shape);
    }
    let number = |range: std::ops::Range<usize>| -> i64 {
        text[range]
            .bytes()
            .fold(0, |n, b| n * 10 + i64::from(b - b'0'))
    };
    let (year, month, day) = (number(0..4), number(5..7), number(8..10));
    if year < 1970 {
        return Err(DateError::Year);
    }
    if !(1..=12).contains(&month) {
        return Err(DateError::Month);
    }
    if day < 1 || day > days_in_month(year, month) {
        return Err(DateError::Day);
    }
    Ok(Timestamp::from_micros(
        days_from_civil(year, month, day) * MICROS_PER_DAY,
    ))
}

/// The UTC calendar date of an instant, as `YYYY-MM-DD`.
pub fn format_date(at: Timestamp) -> String {
    let days = at.as_micros().div_euclid(MICROS_PER_DAY);
    let (year, month, day) = civil_from_days(days);
    format!("{year:04}-{month:02}-{day:02}")
}

/// The first instant [`parse_instant`] accepts: 1970-01-01T00:00:00Z.
pub const FIRST_INSTANT: Timestamp = Timestamp::EPOCH;
/// The last instant [`parse_instant`] accepts: 9999-12-31T23:59:59.999999Z.
pub const LAST_INSTANT: Timestamp = Timestamp::from_micros(253_402_300_799_999_999);

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum InstantError {
    #[error(transparent)]
    Date(#[from] DateError),
    #[error("an instant is written YYYY-MM-DD or YYYY-MM-DDTHH:MM:SS[.ffffff]Z (UTC)")]
    Shape,
    #[error("the time of day must be between 00:00:00 and 23:59:59")]
    TimeOfDay,
}

/// An instant written `YYYY-MM-DD` (midnight UTC) or `YYYY-MM-DDTHH:MM:SS[.f…]Z` with 1 to 6
/// fraction digits.
pub fn parse_instant(text: &str) -> Result<Timestamp, InstantError> {
    let Some((date, time)) = text.split_once('T') else {
        return Ok(parse_date(text)?);
    };
    let midnight = parse_date(date)?;
    let time = time.strip_suffix('Z').ok_or(InstantError::Shape)?;
    let (clock, fraction) = match time.split_once('.') {
        Some((clock, fraction)) => (clock, Some(fraction)),
        None => (time, None),
    };
    let bytes = clock.as_bytes();
    let shape_ok = bytes.len() == 8
        && bytes[2] == b':'
        && bytes[5] == b':'
        && bytes
            .iter()
            .enumerate()
            .all(|(i, b)| i == 2 || i == 5 || b.is_ascii_digit());
    if !shape_ok {
        return Err(InstantError::Shape);
    }
    let (hour, minute, second) = (
        digits(&clock[0..2]),
        digits(&clock[3..5]),
        digits(&clock[6..8]),
    );
    if hour > 23 || minute > 59 || second > 59 {
        return Err(InstantError::TimeOfDay);
    }
    let micros = match fraction {
        None => 0,
        Some(f) if (1..=6).contains(&f.len()) && f.bytes().all(|b| b.is_ascii_digit()) => {
            let padded = format!("{f:0<6}");
            digits(&padded)
        }
        Some(_) => return Err(InstantError::Shape),
    };
    let of_day = ((hour * 60 + minute) * 60 + second) * 1_000_000 + micros;
    Ok(midnight.plus_micros(of_day))
}

/// The canonical spelling of an instant: the date alone at midnight UTC, else the full UTC form
/// with a 6-digit fraction when the instant is not on a whole second.
pub fn format_instant(at: Timestamp) -> String {
    let date = format_date(at);
    let of_day = at.as_micros().rem_euclid(MICROS_PER_DAY);
    if of_day == 0 {
        return date;
    }
    let (seconds, micros) = (of_day / 1_000_000, of_day % 1_000_000);
    let (hour, minute, second) = (seconds / 3600, seconds / 60 % 60, seconds % 60);
    if micros == 0 {
        format!("{date}T{hour:02}:{minute:02}:{second:02}Z")
    } else {
        format!("{date}T{hour:02}:{minute:02}:{second:02}.{micros:06}Z")
    }
}

/// The value of a run of ASCII digits the caller has already checked (at most 6 of them).
fn digits(text: &str) -> i64 {
    text.bytes().fold(0, |n, b| n * 10 + i64::from(b - b'0'))
}

fn is_leap(year: i64) -> bool {
    (year % 4 == 0 && year % 100 != 0) || year % 400 == 0
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date.
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        let cases: &[(&str, Result<i64, DateError>)] = &[
            ("1970-01-01", Ok(0)),
            ("2026-11-01", Ok(1_793_491_200)),
            ("2024-02-29", Ok(1_709_164_800)),
            ("2000-03-01", Ok(951_868_800)),
            ("2023-02-29", Err(DateError::Day)),
            ("2026-04-31", Err(DateError::Day)),
            ("2026-13-01", Err(DateError::Month)),
            ("2026-00-10", Err(DateError::Month)),
            ("1969-12-31", Err(DateError::Year)),
            ("2026-1-01", Err(DateError::Shape)),
            ("2026/11/01", Err(DateError::Shape)),
            ("2026-11-01T00:00:00Z", Err(DateError::Shape)),
        ];
        for (text, expected) in cases {
            let got = parse_date(text).map(|t| t.as_micros() / 1_000_000);
            assert_eq!(&got, expected, "{text}");
            if let Ok(t) = parse_date(text) {
                assert_eq!(format_date(t), *text);
                assert_eq!(format_date(t.plus_micros(MICROS_PER_DAY - 1)), *text);
            }
        }
    }

    #[test]
    fn instants() {
        let day = parse_date("2026-11-01").unwrap().as_micros();
        let cases: &[(&str, Result<i64, InstantError>, &str)] = &[
            ("2026-11-01", Ok(day), "2026-11-01"),
            ("2026-11-01T00:00:00Z", Ok(day), "2026-11-01"),
            (
                "2026-11-01T13:05:09Z",
                Ok(day + 47_109_000_000),
                "2026-11-01T13:05:09Z",
            ),
            (
                "2026-11-01T13:05:09.5Z",
                Ok(day + 47_109_500_000),
                "2026-11-01T13:05:09.500000Z",
            ),
            (
                "2026-11-01T23:59:59.999999Z",
                Ok(day + MICROS_PER_DAY - 1),
                "2026-11-01T23:59:59.999999Z",
            ),
            ("2026-11-01T24:00:00Z", Err(InstantError::TimeOfDay), ""),
            ("2026-11-01T12:60:00Z", Err(InstantError::TimeOfDay), ""),
            ("2026-11-01T12:00:00", Err(InstantError::Shape), ""),
            ("2026-11-01T12:00:00+01:00", Err(InstantError::Shape), ""),
            ("2026-11-01T12:00Z", Err(InstantError::Shape), ""),
            ("2026-11-01T12:00:00.Z", Err(InstantError::Shape), ""),
            ("2026-11-01T12:00:00.1234567Z", Err(InstantError::Shape), ""),
            (
                "2026-02-30T12:00:00Z",
                Err(InstantError::Date(DateError::Day)),
                "",
            ),
        ];
        for (text, expected, canonical) in cases {
            let got = parse_instant(text);
            assert_eq!(got.map(Timestamp::as_micros), *expected, "{text}");
            if let Ok(at) = got {
                assert_eq!(format_instant(at), *canonical, "{text}");
                assert_eq!(parse_instant(canonical), Ok(at), "{text}");
            }
        }
        assert_eq!(
            parse_instant("9999-12-31T23:59:59.999999Z"),
            Ok(LAST_INSTANT)
        );
        assert_eq!(format_instant(FIRST_INSTANT), "1970-01-01");
    }

    #[test]
    fn every_day_round_trips() {
        let mut at = parse_date("1999-12-25").unwrap();
        for _ in 0..3000 {
            let text = format_date(at);
            assert_eq!(parse_date(&text), Ok(at));
            at = at.plus_micros(MICROS_PER_DAY);
        }
    }
}
