//! What a request may carry: the rules the OpenAPI document states (as `pattern`, `maxLength`,
//! `minimum`, `format`, …) and the handlers enforce, kept in agreement both ways — a request
//! the document calls valid is accepted, one it calls invalid is refused (Schemathesis checks
//! both directions against a live server: `scripts/api-conformance`).
//!
//! The document's `pattern`s are string literals in the `#[schema]` attributes (utoipa takes
//! no constants there); the tests below check that the generated document carries exactly the
//! constants of this module, and that each pattern accepts exactly what its check accepts.

use std::fmt;

use serde::de::{self, Deserializer, Visitor};
use time::{Date, Month, PrimitiveDateTime, Time, UtcOffset};

use crate::problem::{ApiError, ProblemKind};

/// A field refused: 422 with the field's name first in the detail.
pub fn invalid(field: &str, error: impl fmt::Display) -> actix_web::Error {
    ApiError::new(ProblemKind::Unprocessable, format!("{field}: {error}")).into()
}

/// Names and reasons: at least one character that is not white space, and no control
/// character anywhere. (Lengths are `maxLength`, in characters, beside it.)
pub const TEXT_PATTERN: &str = r"^[^\x00-\x1f\x7f-\x9f]*[^\x00-\x20\x7f-\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000][^\x00-\x1f\x7f-\x9f]*$";

/// Free text that may be empty or blank, without control characters (transfer metadata).
pub const PLAIN_TEXT_PATTERN: &str = r"^[^\x00-\x1f\x7f-\x9f]*$";

/// An e-mail address as the API takes it for a new user or member: visible ASCII, one `@`
/// with something on each side.
pub const EMAIL_PATTERN: &str = r"^[!-?A-~]+@[!-?A-~]+$";
pub const EMAIL_MAX_CHARS: usize = 254;

/// A ledger asset code: `CR`, or `TOK.<class>.<cycle>`.
pub const ASSET_PATTERN: &str =
    r"^(CR|TOK\.[a-z][a-z0-9]{0,7}\.[A-Za-z0-9]([A-Za-z0-9-]{0,8}[A-Za-z0-9])?)$";

/// An audit action filter.
pub const AUDIT_ACTION_PATTERN: &str = r"^[a-z0-9_.]{1,64}$";

/// A history page cursor: `<microseconds>_<sequence>`, as `next` gives it.
pub const HISTORY_CURSOR_PATTERN: &str = r"^[0-9]{1,18}_[0-9]{1,18}$";

/// An audit page cursor: `<microseconds>_<entry id>`, as `next` gives it.
pub const AUDIT_CURSOR_PATTERN: &str =
    r"^[0-9]{1,18}_[0-9a-f]{8}-[0-9a-f]{4}-[1-8][0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$";

/// An `Idempotency-Key`: 1 to 255 visible ASCII characters.
pub const IDEMPOTENCY_KEY_PATTERN: &str = r"^[!-~]{1,255}$";

/// A model id or alias (`credex_pricing::ModelId`): 1 to 128 ASCII letters, digits and
/// `-._:/@+`, starting and ending with a letter or digit; case-insensitive.
pub const MODEL_ID_PATTERN: &str = r"^[A-Za-z0-9]([A-Za-z0-9._:/@+-]{0,126}[A-Za-z0-9])?$";

/// A provider (`credex_pricing::Provider`): a letter, then up to 39 letters, digits, `_`, `-`.
pub const PROVIDER_PATTERN: &str = r"^[A-Za-z][A-Za-z0-9_-]{0,39}$";

/// A model class (`credex_pricing::ModelClass`): a lowercase letter, then up to 7 lowercase
/// letters or digits.
pub const MODEL_CLASS_PATTERN: &str = r"^[a-z][a-z0-9]{0,7}$";

/// A price in USD per 1M tokens: a decimal string from 0 to 100000 with at most 10 decimal
/// places, no sign, no exponent (`"2.5"`, `"0.075"`).
pub const PRICE_PATTERN: &str = r"^(100000(\.0{1,10})?|[0-9]{1,5}(\.[0-9]{1,10})?)$";

/// A billing cycle, `YYYY-MM`, from 1970-01 to 9998-12 (`crate::cycles::CycleId`).
pub const CYCLE_PATTERN: &str =
    r"^(19[7-9][0-9]|[2-8][0-9]{3}|9[0-8][0-9]{2}|99[0-8][0-9]|999[0-8])-(0[1-9]|1[0-2])$";

/// A market's token asset: `TOK.<class>.<cycle>`.
pub const MARKET_ASSET_PATTERN: &str = r"^TOK\.[a-z][a-z0-9]{0,7}\.(19[7-9][0-9]|[2-8][0-9]{3}|9[0-8][0-9]{2}|99[0-8][0-9]|999[0-8])-(0[1-9]|1[0-2])$";

/// A fraction from 0 (included) to 1 (excluded) with at most 9 decimal places: a decay
/// curve's floor, a fee rate (`"0"`, `"0.03"`).
pub const FRACTION_PATTERN: &str = r"^0(\.[0-9]{1,9})?$";

/// A buyback rate: more than 0, at most 1, at most 9 decimal places, written without trailing
/// zeros after the point (`"0.9"`, `"1"`).
pub const BUYBACK_RATE_PATTERN: &str = r"^(0\.[0-9]{0,8}[1-9]|1(\.0{1,9})?)$";

/// Whether `raw` matches [`CYCLE_PATTERN`].
pub fn is_cycle(raw: &str) -> bool {
    crate::cycles::CycleId::parse(raw).is_ok()
}

/// Whether `raw` matches [`MARKET_ASSET_PATTERN`].
pub fn is_market_asset(raw: &str) -> bool {
    let mut parts = raw.splitn(3, '.');
    matches!(
        (parts.next(), parts.next(), parts.next()),
        (Some("TOK"), Some(class), Some(cycle)) if is_model_class(class) && is_cycle(cycle)
    )
}

/// Whether `raw` matches [`FRACTION_PATTERN`].
pub fn is_fraction(raw: &str) -> bool {
    match raw.strip_prefix('0') {
        Some("") => true,
        Some(rest) => rest.strip_prefix('.').is_some_and(|digits| {
            (1..=9).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit())
        }),
        None => false,
    }
}

/// Whether `raw` matches [`BUYBACK_RATE_PATTERN`].
pub fn is_buyback_rate(raw: &str) -> bool {
    if let Some(rest) = raw.strip_prefix('1') {
        return rest.is_empty()
            || rest.strip_prefix('.').is_some_and(|zeros| {
                (1..=9).contains(&zeros.len()) && zeros.bytes().all(|b| b == b'0')
            });
    }
    raw.strip_prefix("0.").is_some_and(|digits| {
        (1..=9).contains(&digits.len())
            && digits.bytes().all(|b| b.is_ascii_digit())
            && !digits.ends_with('0')
    })
}

/// A decimal the patterns above admitted.
pub fn decimal(
    field: &str,
    raw: &str,
    admitted: bool,
) -> Result<rust_decimal::Decimal, actix_web::Error> {
    let value = admitted
        .then(|| raw.parse::<rust_decimal::Decimal>().ok())
        .flatten();
    value.ok_or_else(|| invalid(field, format!("{raw:?} is not in the documented form")))
}

/// Checks [`TEXT_PATTERN`] and a length in characters; answers the text as given (the domain
/// types trim it).
pub fn text<'a>(field: &str, raw: &'a str, max_chars: usize) -> Result<&'a str, actix_web::Error> {
    if raw.chars().count() > max_chars {
        return Err(invalid(field, format!("at most {max_chars} characters")));
    }
    if raw.chars().any(char::is_control) {
        return Err(invalid(field, "no control characters"));
    }
    if raw.trim().is_empty() {
        return Err(invalid(field, "must not be empty or blank"));
    }
    Ok(raw)
}

/// Whether `raw` matches [`PLAIN_TEXT_PATTERN`] and has at most `max_chars` characters.
pub fn is_plain_text(raw: &str, max_chars: usize) -> bool {
    raw.chars().count() <= max_chars && !raw.chars().any(char::is_control)
}

/// Whether `raw` matches [`EMAIL_PATTERN`] and has at most [`EMAIL_MAX_CHARS`] characters.
pub fn is_email(raw: &str) -> bool {
    let visible =
        |part: &str| !part.is_empty() && part.bytes().all(|b| b.is_ascii_graphic() && b != b'@');
    raw.len() <= EMAIL_MAX_CHARS
        && raw
            .split_once('@')
            .is_some_and(|(local, domain)| visible(local) && visible(domain))
}

/// An e-mail address for a new user or member.
pub fn email(field: &str, raw: &str) -> Result<credex_store::Email, actix_web::Error> {
    if !is_email(raw) {
        return Err(invalid(
            field,
            "an e-mail address of visible ASCII characters, one @, at most 254 characters",
        ));
    }
    credex_store::Email::parse(raw).map_err(|error| invalid(field, error))
}

/// A UUID in the one form JSON Schema's `uuid` format names: 36 characters, hyphenated.
pub fn uuid(raw: &str) -> Option<uuid::Uuid> {
    let bytes = raw.as_bytes();
    let shaped = bytes.len() == 36
        && bytes.iter().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => *b == b'-',
            _ => b.is_ascii_hexdigit(),
        });
    shaped.then(|| uuid::Uuid::parse_str(raw).ok()).flatten()
}

/// Whether `raw` matches [`ASSET_PATTERN`] (`AssetCode::parse` accepts the same).
pub fn is_asset(raw: &str) -> bool {
    credex_ledger::AssetCode::parse(raw).is_ok()
}

/// Whether `raw` matches [`AUDIT_ACTION_PATTERN`].
pub fn is_audit_action(raw: &str) -> bool {
    credex_store::AuditAction::parse(raw).is_ok()
}

/// Whether `raw` matches [`MODEL_ID_PATTERN`] (`ModelId::parse` accepts the same).
pub fn is_model_id(raw: &str) -> bool {
    credex_pricing::ModelId::parse(raw).is_ok()
}

/// Whether `raw` matches [`PROVIDER_PATTERN`] (`Provider::parse` accepts the same).
pub fn is_provider(raw: &str) -> bool {
    credex_pricing::Provider::parse(raw).is_ok()
}

/// Whether `raw` matches [`MODEL_CLASS_PATTERN`] (`ModelClass::parse` accepts the same).
pub fn is_model_class(raw: &str) -> bool {
    credex_pricing::ModelClass::parse(raw).is_ok()
}

/// Whether `raw` matches [`PRICE_PATTERN`].
pub fn is_price(raw: &str) -> bool {
    let (whole, fraction) = match raw.split_once('.') {
        Some((whole, fraction)) => (whole, Some(fraction)),
        None => (raw, None),
    };
    let digits = |part: &str| part.bytes().all(|b| b.is_ascii_digit());
    let fraction_ok = fraction.is_none_or(|f| (1..=10).contains(&f.len()) && digits(f));
    let whole_ok = ((1..=5).contains(&whole.len()) && digits(whole))
        || (whole == "100000" && fraction.is_none_or(|f| f.bytes().all(|b| b == b'0')));
    whole_ok && fraction_ok
}

/// A price in USD per 1M tokens ([`PRICE_PATTERN`]), or 422 naming the field.
pub fn price(field: &str, raw: &str) -> Result<rust_decimal::Decimal, actix_web::Error> {
    let refused = || {
        invalid(
            field,
            "a decimal string from 0 to 100000 with at most 10 decimal places, such as \"2.5\"",
        )
    };
    if !is_price(raw) {
        return Err(refused());
    }
    raw.parse().map_err(|_| refused())
}

/// When a price takes effect: an RFC 3339 date-time (JSON Schema's `date-time`) or a date
/// (`date`, midnight UTC), between 1970-01-01 and 9999-12-31. Whether it is in the past is
/// the caller's question.
pub fn effective_from(
    field: &str,
    raw: &str,
) -> Result<credex_ledger::Timestamp, actix_web::Error> {
    use credex_pricing::date::{parse_date, DateError, FIRST_INSTANT, LAST_INSTANT};
    let at = match date_time(raw) {
        Some(micros) => credex_ledger::Timestamp::from_micros(micros),
        None => match parse_date(raw) {
            Ok(at) => at,
            // A date before 1970 is a date all the same, and long past.
            Err(DateError::Year) if is_full_date(raw) => FIRST_INSTANT.plus_micros(-1),
            Err(_) => return Err(invalid(
                field,
                "an RFC 3339 date-time such as 2026-12-01T00:00:00Z, or a date such as 2026-12-01",
            )),
        },
    };
    if at > LAST_INSTANT {
        return Err(invalid(field, "at most 9999-12-31T23:59:59.999999Z"));
    }
    Ok(at)
}

/// Whether `raw` is a `YYYY-MM-DD` date of the proleptic Gregorian calendar (any year).
fn is_full_date(raw: &str) -> bool {
    let b = raw.as_bytes();
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return false;
    }
    let number = |range: std::ops::Range<usize>| {
        raw.get(range)
            .filter(|part| part.bytes().all(|c| c.is_ascii_digit()))
            .and_then(|part| part.parse::<i32>().ok())
    };
    let (Some(year), Some(month), Some(day)) = (number(0..4), number(5..7), number(8..10)) else {
        return false;
    };
    let Some(month) = u8::try_from(month)
        .ok()
        .and_then(|month| Month::try_from(month).ok())
    else {
        return false;
    };
    u8::try_from(day)
        .ok()
        .is_some_and(|day| Date::from_calendar_date(year, month, day).is_ok())
}

/// 1 to 18 ASCII digits, as a number (never overflows).
fn digits(raw: &str) -> Option<i64> {
    ((1..=18).contains(&raw.len()) && raw.bytes().all(|b| b.is_ascii_digit()))
        .then(|| raw.parse().ok())
        .flatten()
}

/// A history cursor ([`HISTORY_CURSOR_PATTERN`]): microseconds and a sequence number.
pub fn history_cursor(raw: &str) -> Option<(i64, i64)> {
    let (at, seq) = raw.split_once('_')?;
    Some((digits(at)?, digits(seq)?))
}

/// An audit cursor ([`AUDIT_CURSOR_PATTERN`]): microseconds and an entry id (an RFC 9562 UUID
/// of version 1 to 8 in lowercase).
pub fn audit_cursor(raw: &str) -> Option<(i64, uuid::Uuid)> {
    let (at, id) = raw.split_once('_')?;
    let at = digits(at)?;
    let lowercase = id.bytes().all(|b| !b.is_ascii_uppercase());
    let id = uuid(id).filter(|_| lowercase)?;
    let versioned =
        (1..=8).contains(&id.get_version_num()) && id.get_variant() == uuid::Variant::RFC4122;
    versioned.then_some((at, id))
}

/// A page cursor of the form `<microseconds>_<uuid>` (1 to 18 digits, optionally negative; a
/// lowercase UUID), as the pages of usage events, reservations and deliveries hand it out.
pub fn instant_cursor(raw: &str) -> Option<(credex_ledger::Timestamp, uuid::Uuid)> {
    let (micros, id) = raw.split_once('_')?;
    let digits = micros.strip_prefix('-').unwrap_or(micros);
    let shaped = (1..=18).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit());
    let micros: i64 = shaped.then(|| micros.parse().ok()).flatten()?;
    let id = uuid(id).filter(|_| id.bytes().all(|b| !b.is_ascii_uppercase()))?;
    Some((credex_ledger::Timestamp::from_micros(micros), id))
}

/// An optional UUID field: absent, or a UUID (422 naming `field` otherwise).
pub fn optional_uuid(
    field: &str,
    raw: Option<&str>,
) -> Result<Option<uuid::Uuid>, actix_web::Error> {
    raw.map(|text| uuid(text).ok_or_else(|| invalid(field, "not a UUID")))
        .transpose()
}

/// An optional text field: absent, or 1 to `max` characters (422 naming `field` otherwise).
pub fn optional_text(
    field: &str,
    raw: Option<String>,
    max: usize,
) -> Result<Option<String>, actix_web::Error> {
    match raw {
        Some(text) if text.is_empty() || text.chars().count() > max => {
            Err(invalid(field, format!("1 to {max} characters")))
        }
        other => Ok(other),
    }
}

/// An RFC 3339 `date-time` as JSON Schema's format takes it (`T`/`t`, `Z`/`z`, any number of
/// fractional digits, a leap second only at 23:59:60 UTC), in microseconds since the epoch;
/// fractions below a microsecond are dropped, a leap second counts as its last microsecond.
pub fn date_time(raw: &str) -> Option<i64> {
    let b = raw.as_bytes();
    let number = |range: std::ops::Range<usize>| -> Option<i32> {
        let part = b.get(range)?;
        part.iter()
            .all(u8::is_ascii_digit)
            .then(|| std::str::from_utf8(part).ok()?.parse().ok())
            .flatten()
    };
    let at = |i: usize, c: u8| b.get(i) == Some(&c);
    if !(at(4, b'-') && at(7, b'-') && (at(10, b'T') || at(10, b't'))) {
        return None;
    }
    if !(at(13, b':') && at(16, b':')) {
        return None;
    }
    let (year, month, day) = (number(0..4)?, number(5..7)?, number(8..10)?);
    let (hour, minute, second) = (number(11..13)?, number(14..16)?, number(17..19)?);
    let mut rest = b.get(19..)?;
    let mut micros = 0_u32;
    if let Some((b'.', fraction)) = rest.split_first() {
        let count = fraction.iter().take_while(|c| c.is_ascii_digit()).count();
        if count == 0 {
            return None;
        }
        for (i, digit) in fraction[..count].iter().enumerate() {
            if i < 6 {
                micros = micros * 10 + u32::from(digit - b'0');
            }
        }
        for _ in count..6 {
            micros *= 10;
        }
        rest = &fraction[count..];
    }
    let offset_minutes = match rest {
        [b'Z' | b'z'] => 0,
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
            let two = |a: &u8, b: &u8| {
                (a.is_ascii_digit() && b.is_ascii_digit())
                    .then(|| i32::from(a - b'0') * 10 + i32::from(b - b'0'))
            };
            let (h, m) = (two(h1, h2)?, two(m1, m2)?);
            if h > 23 || m > 59 {
                return None;
            }
            if *sign == b'+' {
                h * 60 + m
            } else {
                -(h * 60 + m)
            }
        }
        _ => return None,
    };
    if hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let leap = second == 60;
    if leap && (hour * 60 + minute - offset_minutes).rem_euclid(1_440) != 23 * 60 + 59 {
        return None;
    }
    let month = Month::try_from(u8::try_from(month).ok()?).ok()?;
    let date = Date::from_calendar_date(year, month, u8::try_from(day).ok()?).ok()?;
    let (second, micros) = if leap {
        (59, 999_999)
    } else {
        (second, micros)
    };
    let time = Time::from_hms_micro(
        u8::try_from(hour).ok()?,
        u8::try_from(minute).ok()?,
        u8::try_from(second).ok()?,
        micros,
    )
    .ok()?;
    let offset = UtcOffset::from_whole_seconds(offset_minutes * 60).ok()?;
    let instant = PrimitiveDateTime::new(date, time).assume_offset(offset);
    i64::try_from(instant.unix_timestamp_nanos() / 1_000).ok()
}

/// An instant from a query parameter, or 422 naming it.
pub fn instant(field: &str, raw: &str) -> Result<credex_ledger::Timestamp, actix_web::Error> {
    date_time(raw)
        .map(credex_ledger::Timestamp::from_micros)
        .ok_or_else(|| invalid(field, "an RFC 3339 date-time, such as 2026-11-26T14:35:05Z"))
}

/// Objects in a JSON body. serde also builds a struct from an array of its fields in order
/// (`[null, null]`), which JSON Schema calls no object at all; a field with
/// `#[serde(default, deserialize_with = "object::optional")]` takes only an object (or `null`).
pub mod object {
    use serde::de::{DeserializeOwned, Deserializer, Error};
    use serde::Deserialize;

    pub fn required<'de, D, T>(deserializer: D) -> Result<T, D::Error>
    where
        D: Deserializer<'de>,
        T: DeserializeOwned,
    {
        optional(deserializer)?.ok_or_else(|| D::Error::custom("expected an object"))
    }

    pub fn optional<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
    where
        D: Deserializer<'de>,
        T: DeserializeOwned,
    {
        match Option::<serde_json::Value>::deserialize(deserializer)? {
            None | Some(serde_json::Value::Null) => Ok(None),
            Some(value @ serde_json::Value::Object(_)) => serde_json::from_value(value)
                .map(Some)
                .map_err(D::Error::custom),
            Some(_) => Err(D::Error::custom("expected an object")),
        }
    }
}

/// JSON Schema's `integer` is a number whose value is whole: `3`, `3.0` and `3e0` are all the
/// integer 3. These deserialize such numbers (and, in query strings, such text) into unsigned
/// integers; fractions, negatives and values out of range are refused.
pub mod integer {
    use super::*;

    /// Whole numbers; with `text`, also their spelling in a query string.
    #[derive(Clone, Copy)]
    struct Whole {
        text: bool,
    }

    impl Visitor<'_> for Whole {
        type Value = u64;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a non-negative integer")
        }

        fn visit_u64<E: de::Error>(self, value: u64) -> Result<u64, E> {
            Ok(value)
        }

        fn visit_i64<E: de::Error>(self, value: i64) -> Result<u64, E> {
            u64::try_from(value).map_err(|_| E::invalid_value(de::Unexpected::Signed(value), &self))
        }

        fn visit_f64<E: de::Error>(self, value: f64) -> Result<u64, E> {
            let unexpected = || E::invalid_value(de::Unexpected::Float(value), &self);
            if !value.is_finite() || value.fract() != 0.0 || value.is_sign_negative() {
                return Err(unexpected());
            }
            // A whole, finite, non-negative float prints as its digits.
            format!("{value:.0}").parse().map_err(|_| unexpected())
        }

        fn visit_str<E: de::Error>(self, text: &str) -> Result<u64, E> {
            if !self.text {
                return Err(E::invalid_type(de::Unexpected::Str(text), &self));
            }
            if let Ok(value) = text.parse::<u64>() {
                if text.bytes().all(|b| b.is_ascii_digit()) {
                    return Ok(value);
                }
            }
            match text.parse::<f64>() {
                Ok(value)
                    if text
                        .bytes()
                        .all(|b| b.is_ascii_digit() || b".eE+-".contains(&b)) =>
                {
                    self.visit_f64(value)
                }
                _ => Err(E::invalid_value(de::Unexpected::Str(text), &self)),
            }
        }
    }

    fn whole<'de, D: Deserializer<'de>>(deserializer: D, text: bool) -> Result<u64, D::Error> {
        deserializer.deserialize_any(Whole { text })
    }

    fn narrow<'de, D: Deserializer<'de>, T: TryFrom<u64>>(value: u64) -> Result<T, D::Error> {
        T::try_from(value).map_err(|_| {
            de::Error::invalid_value(de::Unexpected::Unsigned(value), &"a smaller integer")
        })
    }

    /// A required integer field: `#[serde(deserialize_with = "integer::required")]`.
    pub fn required<'de, D, T>(deserializer: D) -> Result<T, D::Error>
    where
        D: Deserializer<'de>,
        T: TryFrom<u64>,
    {
        narrow::<D, T>(whole(deserializer, false)?)
    }

    /// An optional integer field (absent or `null`): with `#[serde(default, deserialize_with =
    /// "integer::optional")]`.
    pub fn optional<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
    where
        D: Deserializer<'de>,
        T: TryFrom<u64>,
    {
        maybe(deserializer, false)
    }

    /// A required integer query parameter: `3`, or a whole number spelled as a float (`3.0`).
    pub fn required_in_query<'de, D, T>(deserializer: D) -> Result<T, D::Error>
    where
        D: Deserializer<'de>,
        T: TryFrom<u64>,
    {
        narrow::<D, T>(whole(deserializer, true)?)
    }

    /// An optional integer query parameter: `3`, or a whole number spelled as a float (`3.0`).
    pub fn optional_in_query<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
    where
        D: Deserializer<'de>,
        T: TryFrom<u64>,
    {
        maybe(deserializer, true)
    }

    fn maybe<'de, D, T>(deserializer: D, text: bool) -> Result<Option<T>, D::Error>
    where
        D: Deserializer<'de>,
        T: TryFrom<u64>,
    {
        struct Maybe(bool);
        impl<'de> Visitor<'de> for Maybe {
            type Value = Option<u64>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a non-negative integer or null")
            }
            fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(None)
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(None)
            }
            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
                whole(d, self.0).map(Some)
            }
        }
        deserializer
            .deserialize_option(Maybe(text))?
            .map(narrow::<D, T>)
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde::Deserialize;

    use super::*;

    fn matches(pattern: &str, text: &str) -> bool {
        regex_lite::Regex::new(pattern)
            .expect("a valid pattern")
            .is_match(text)
    }

    /// Characters that sit on the edges of the rules: controls, white space, ASCII, and more.
    fn tricky() -> impl Strategy<Value = String> {
        let chars = prop::sample::select(vec![
            'a',
            'Z',
            '0',
            '9',
            '-',
            '_',
            '.',
            '@',
            '!',
            '~',
            ' ',
            '\t',
            '\n',
            '\r',
            '\u{0}',
            '\u{1f}',
            '\u{7f}',
            '\u{85}',
            '\u{9f}',
            '\u{a0}',
            '\u{a1}',
            '\u{1680}',
            '\u{2000}',
            '\u{200a}',
            '\u{200b}',
            '\u{2028}',
            '\u{202f}',
            '\u{3000}',
            '\u{feff}',
            'é',
            '日',
            '\u{1f600}',
            'T',
            'C',
            'R',
            'O',
            'K',
            'f',
        ]);
        prop::collection::vec(chars, 0..12).prop_map(|chars| chars.into_iter().collect())
    }

    proptest! {
        #[test]
        fn text_pattern_and_check_agree(raw in tricky()) {
            let checked = text("f", &raw, 100).is_ok();
            prop_assert_eq!(matches(TEXT_PATTERN, &raw), checked, "{:?}", raw);
        }

        #[test]
        fn plain_text_pattern_and_check_agree(raw in tricky()) {
            prop_assert_eq!(matches(PLAIN_TEXT_PATTERN, &raw), is_plain_text(&raw, 100), "{:?}", raw);
        }

        #[test]
        fn email_pattern_and_check_agree(raw in tricky()) {
            prop_assert_eq!(matches(EMAIL_PATTERN, &raw), is_email(&raw), "{:?}", raw);
            if is_email(&raw) {
                prop_assert!(email("e", &raw).is_ok(), "{:?}", raw);
            }
        }

        #[test]
        fn asset_pattern_and_parser_agree(raw in "(CR|TOK\\.[a-z0-9A-]{0,10}\\.[a-zA-Z0-9.-]{0,12}|[A-Z.]{0,5})") {
            prop_assert_eq!(matches(ASSET_PATTERN, &raw), is_asset(&raw), "{:?}", raw);
        }

        #[test]
        fn audit_action_pattern_and_parser_agree(raw in "[a-z0-9_.A-Z -]{0,70}") {
            prop_assert_eq!(matches(AUDIT_ACTION_PATTERN, &raw), is_audit_action(&raw), "{:?}", raw);
        }

        #[test]
        fn cursor_patterns_and_parsers_agree(at in "[0-9+-]{0,20}", seq in "[0-9a-f+-]{0,20}", id in any::<u128>(), upper in any::<bool>()) {
            let history = format!("{at}_{seq}");
            prop_assert_eq!(matches(HISTORY_CURSOR_PATTERN, &history), history_cursor(&history).is_some(), "{:?}", history);
            let mut uuid = uuid::Uuid::from_u128(id).to_string();
            if upper {
                uuid = uuid.to_uppercase();
            }
            let audit = format!("{at}_{uuid}");
            prop_assert_eq!(matches(AUDIT_CURSOR_PATTERN, &audit), audit_cursor(&audit).is_some(), "{:?}", audit);
        }
    }

    proptest! {
        #[test]
        fn catalog_name_patterns_and_parsers_agree(raw in "[A-Za-z0-9._:/@+ -]{0,7}") {
            prop_assert_eq!(matches(MODEL_ID_PATTERN, &raw), is_model_id(&raw), "{:?}", raw);
            prop_assert_eq!(matches(PROVIDER_PATTERN, &raw), is_provider(&raw), "{:?}", raw);
            prop_assert_eq!(matches(MODEL_CLASS_PATTERN, &raw), is_model_class(&raw), "{:?}", raw);
        }

        #[test]
        fn market_patterns_and_checks_agree(raw in "(TOK\\.)?[a-z0-9A]{0,9}\\.?[0-9]{0,5}-?[0-9]{0,3}", fraction in "[01]?(\\.[0-9]{0,11})?|[0-9.e-]{0,5}") {
            prop_assert_eq!(matches(MARKET_ASSET_PATTERN, &raw), is_market_asset(&raw), "{:?}", raw);
            let cycle = raw.rsplit('.').next().unwrap_or_default();
            prop_assert_eq!(matches(CYCLE_PATTERN, cycle), is_cycle(cycle), "{:?}", cycle);
            prop_assert_eq!(matches(FRACTION_PATTERN, &fraction), is_fraction(&fraction), "{:?}", fraction);
            prop_assert_eq!(matches(BUYBACK_RATE_PATTERN, &fraction), is_buyback_rate(&fraction), "{:?}", fraction);
        }

        #[test]
        fn price_pattern_and_check_agree(raw in "[0-9]{0,7}(\\.[0-9]{0,12})?|100000(\\.0{0,11}1?)?|[0-9.e+ -]{0,6}") {
            prop_assert_eq!(matches(PRICE_PATTERN, &raw), is_price(&raw), "{:?}", raw);
            if is_price(&raw) {
                prop_assert!(price("p", &raw).is_ok(), "{:?}", raw);
            }
        }
    }

    #[test]
    fn catalog_names_at_their_length_limits() {
        let id = |n: usize| "a".repeat(n);
        assert!(matches(MODEL_ID_PATTERN, &id(128)) && is_model_id(&id(128)));
        assert!(!matches(MODEL_ID_PATTERN, &id(129)) && !is_model_id(&id(129)));
        assert!(matches(PROVIDER_PATTERN, &id(40)) && is_provider(&id(40)));
        assert!(!matches(PROVIDER_PATTERN, &id(41)) && !is_provider(&id(41)));
        assert!(matches(MODEL_CLASS_PATTERN, &id(8)) && is_model_class(&id(8)));
        assert!(!matches(MODEL_CLASS_PATTERN, &id(9)) && !is_model_class(&id(9)));
        for (raw, ok) in [
            ("100000", true),
            ("100000.0000000000", true),
            ("100000.00000000000", false),
            ("100000.0000000001", false),
            ("99999.9999999999", true),
            ("0.0000000001", true),
            ("0.00000000001", false),
            ("007", true),
            ("1.", false),
            (".5", false),
            ("-1", false),
            ("1e3", false),
        ] {
            assert_eq!(is_price(raw), ok, "{raw}");
            assert_eq!(matches(PRICE_PATTERN, raw), ok, "{raw}");
        }
    }

    #[test]
    fn effective_from_takes_instants_and_dates() {
        let at = |raw: &str| effective_from("f", raw).ok().map(|t| t.as_micros());
        assert_eq!(at("2026-11-26"), Some(1_795_651_200_000_000));
        assert_eq!(at("2026-11-26T00:00:00Z"), Some(1_795_651_200_000_000));
        assert_eq!(at("2026-11-26T01:00:00+01:00"), Some(1_795_651_200_000_000));
        assert_eq!(at("1969-12-31"), Some(-1));
        assert_eq!(at("0001-01-01"), Some(-1));
        assert!(at("9999-12-31").is_some());
        assert_eq!(at("9999-12-31T23:00:00-05:00"), None);
        for refused in [
            "2026-02-30",
            "2026-11-26T25:00:00Z",
            "26-11-2026",
            "",
            "now",
        ] {
            assert_eq!(at(refused), None, "{refused}");
        }
    }

    #[test]
    fn cursors_we_hand_out_parse() {
        assert_eq!(
            history_cursor("1795651200000000_17"),
            Some((1_795_651_200_000_000, 17))
        );
        let id = uuid::Uuid::now_v7();
        assert_eq!(audit_cursor(&format!("5_{id}")), Some((5, id)));
        assert_eq!(audit_cursor(&format!("5_{}", uuid::Uuid::nil())), None);
        assert_eq!(audit_cursor(&format!("5_{}", uuid::Uuid::max())), None);
        assert!(matches(IDEMPOTENCY_KEY_PATTERN, "top-up-2026-11-26"));
        assert!(!matches(IDEMPOTENCY_KEY_PATTERN, "a key"));
    }

    #[test]
    fn uuids_are_hyphenated_only() {
        let id = "0192d1a4-8c3e-7b61-9a0f-2f4b5c6d7e8f";
        assert!(uuid(id).is_some());
        assert!(uuid(&id.to_uppercase()).is_some());
        assert!(uuid("0192d1a48c3e7b619a0f2f4b5c6d7e8f").is_none());
        assert!(uuid(&format!("urn:uuid:{id}")).is_none());
        assert!(uuid(&format!("{{{id}}}")).is_none());
    }

    #[test]
    fn date_times_as_json_schema_takes_them() {
        let at = |raw: &str| date_time(raw);
        assert_eq!(at("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(at("1970-01-01t00:00:01.5z"), Some(1_500_000));
        assert_eq!(at("1970-01-01T01:00:00+01:00"), Some(0));
        assert_eq!(at("1969-12-31T23:00:00-01:00"), Some(0));
        assert_eq!(
            at("2026-11-26T00:00:00.123456789123Z"),
            Some(1_795_651_200_123_456)
        );
        assert_eq!(at("2026-11-26T23:59:60Z"), Some(1_795_737_599_999_999));
        assert!(at("2026-11-26T00:59:60+01:00").is_some());
        assert!(at("0000-01-01T00:00:00+23:59").is_some());
        assert!(at("9999-12-31T23:59:60Z").is_some());
        assert!(at("2024-02-29T00:00:00Z").is_some());
        for refused in [
            "2026-11-26T12:00:60Z",
            "2026-11-26T23:59:60+01:00",
            "2026-11-26T24:00:00Z",
            "2026-11-26T00:00:00+24:00",
            "2026-11-26T00:00:00+23:60",
            "2023-02-29T00:00:00Z",
            "1900-02-29T00:00:00Z",
            "2026-11-26T00:00:00.Z",
            "2026-11-26T00:00:00Z ",
            "2026-11-26 00:00:00Z",
            "2026-11-26T00:00Z",
            "+2026-11-26T00:00:00Z",
            "2026-11-26T00:00:00+0100",
            "0000-00-01T00:00:00Z",
            "2026-11-26T00:00:61Z",
            "yesterday",
            "",
        ] {
            assert_eq!(at(refused), None, "{refused}");
        }
    }

    #[derive(Debug, Deserialize)]
    struct Numbers {
        #[serde(deserialize_with = "integer::required")]
        small: u8,
        #[serde(default, deserialize_with = "integer::optional")]
        big: Option<u64>,
    }

    #[test]
    fn whole_numbers_in_any_spelling() {
        let parse = |json: &str| serde_json::from_str::<Numbers>(json).map(|n| (n.small, n.big));
        assert_eq!(parse(r#"{"small": 3}"#).ok(), Some((3, None)));
        assert_eq!(
            parse(r#"{"small": 3.0, "big": null}"#).ok(),
            Some((3, None))
        );
        assert_eq!(
            parse(r#"{"small": 3e0, "big": 1e16}"#).ok(),
            Some((3, Some(10_000_000_000_000_000)))
        );
        assert_eq!(
            parse(r#"{"small": 0, "big": 18446744073709551615}"#).ok(),
            Some((0, Some(u64::MAX)))
        );
        // Parsed exactly (serde_json's `float_roundtrip`): a whole number written with a
        // fraction of zeros stays whole however large, up to 2^53.
        assert_eq!(
            parse(r#"{"small": 1, "big": 2251799813685247.0}"#).ok(),
            Some((1, Some(2_251_799_813_685_247)))
        );
        for refused in [
            r#"{"small": 3.5}"#,
            r#"{"small": -1}"#,
            r#"{"small": 256}"#,
            r#"{"small": "3"}"#,
            r#"{"small": 1, "big": 1e20}"#,
            r#"{"small": 1, "big": -0.0}"#,
            r#"{"small": null}"#,
        ] {
            assert!(parse(refused).is_err(), "{refused}");
        }
    }
}
