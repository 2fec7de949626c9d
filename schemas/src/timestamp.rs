//! RFC 3339 timestamps as written by the Kubernetes API server (`metav1.MicroTime`).

/// Microseconds since the Unix epoch of an RFC 3339 timestamp such as
/// `2018-10-26T13:25:18.279128Z` or `2018-10-26T15:25:18+02:00`.
/// Digits past microseconds are truncated; `None` when the text is not such a timestamp (see
/// [`parse_timestamp`] for the other unambiguous forms).
pub fn parse_rfc3339_micros(s: &str) -> Option<i64> {
    parse_timestamp(s).filter(|t| t.rfc3339).map(|t| t.micros)
}

/// A timestamp read by [`parse_timestamp`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timestamp {
    /// Microseconds since the Unix epoch (UTC).
    pub micros: i64,
    /// The text was RFC 3339 (`T` between date and time, and a zone); otherwise it was one of
    /// the other accepted forms and callers keep the original text.
    pub rfc3339: bool,
}

/// Reads the unambiguous timestamp forms audit events arrive in: RFC 3339
/// (`2022-11-29T22:34:06.892Z`, `...+01:00`), with any number of fractional digits (0 to 9
/// in practice; digits past microseconds are truncated), a space instead of `T`
/// (`2022-11-29 22:34:06.892`, as CloudWatch Logs Insights and SIEM exports write), no zone
/// (taken as UTC), or an offset without its colon (`+0100`). `None` for anything else.
pub fn parse_timestamp(s: &str) -> Option<Timestamp> {
    let b = s.as_bytes();
    if b.len() < 19 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    let year = digits(&b[0..4])?;
    let month = digits(&b[5..7])?;
    let day = digits(&b[8..10])?;
    let hour = digits(&b[11..13])?;
    let minute = digits(&b[14..16])?;
    let second = digits(&b[17..19])?;
    if !(1..=12).contains(&month) || day == 0 || day > days_in_month(year, month) {
        return None;
    }
    // Leap seconds (60) are accepted as Kubernetes' Go time never emits them but RFC 3339 allows them.
    if hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let mut i = 19;
    let mut micros: i64 = 0;
    if b.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            if i - start < 6 {
                micros = micros * 10 + i64::from(b[i] - b'0');
            }
            i += 1;
        }
        let n = i - start;
        if n == 0 {
            return None;
        }
        for _ in n..6 {
            micros *= 10;
        }
    }
    let (offset_seconds, zoned, colon) = match b.get(i) {
        None => (0, false, true),
        Some(b'Z' | b'z') if i + 1 == b.len() => (0, true, true),
        Some(sign @ (b'+' | b'-')) => {
            let (oh, om, colon) = match &b[i + 1..] {
                [h1, h2, b':', m1, m2] => (digits(&[*h1, *h2])?, digits(&[*m1, *m2])?, true),
                [h1, h2, m1, m2] => (digits(&[*h1, *h2])?, digits(&[*m1, *m2])?, false),
                _ => return None,
            };
            if oh > 23 || om > 59 {
                return None;
            }
            let off = oh * 3600 + om * 60;
            (if *sign == b'-' { -off } else { off }, true, colon)
        }
        _ => return None,
    };
    let days = days_from_civil(year, month, day);
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second - offset_seconds;
    Some(Timestamp {
        micros: secs * 1_000_000 + micros,
        rfc3339: zoned && colon && matches!(b[10], b'T' | b't'),
    })
}

fn digits(b: &[u8]) -> Option<i64> {
    let mut v: i64 = 0;
    for &c in b {
        if !c.is_ascii_digit() {
            return None;
        }
        v = v * 10 + i64::from(c - b'0');
    }
    Some(v)
}

fn is_leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        2 if is_leap(y) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
pub fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The civil date `(year, month, day)` of a count of days since 1970-01-01.
pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Formats microseconds since the epoch as `YYYY-MM-DDTHH:MM:SS.ffffffZ`.
pub fn format_rfc3339_micros(micros: i64) -> String {
    let secs = micros.div_euclid(1_000_000);
    let frac = micros.rem_euclid(1_000_000);
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{frac:06}Z",
        sod / 3600,
        (sod / 60) % 60,
        sod % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_kubernetes_micro_time() {
        // 2018-10-26T13:25:18Z is 1540560318 s after the epoch.
        assert_eq!(
            parse_rfc3339_micros("2018-10-26T13:25:18.279128Z"),
            Some(1_540_560_318_279_128)
        );
        assert_eq!(
            parse_rfc3339_micros("2018-10-26T13:25:18Z"),
            Some(1_540_560_318_000_000)
        );
        assert_eq!(
            parse_rfc3339_micros("2018-10-26T13:25:18.2Z"),
            Some(1_540_560_318_200_000)
        );
        assert_eq!(
            parse_rfc3339_micros("2018-10-26T13:25:18.123456789Z"),
            Some(1_540_560_318_123_456)
        );
        assert_eq!(
            parse_rfc3339_micros("2018-10-26T15:25:18+02:00"),
            Some(1_540_560_318_000_000)
        );
        assert_eq!(
            parse_rfc3339_micros("1969-12-31T23:59:59.5Z"),
            Some(-500_000)
        );
    }

    #[test]
    fn rejects_what_is_not_a_timestamp() {
        for bad in [
            "",
            "yesterday",
            "2018-13-01T00:00:00Z",
            "2018-02-30T00:00:00Z",
            "2018-10-26T13:25:18.Z",
            "2018-10-26T13:25:18+02",
            "2018-10-26T13:25:18+2:00",
            "2018-10-26T24:00:00Z",
            "2018-10-26T13:25:18Zjunk",
            "2018-10-26T13:25",
            "26/10/2018 13:25:18",
        ] {
            assert_eq!(parse_timestamp(bad), None, "{bad}");
        }
    }

    #[test]
    fn every_unambiguous_form_is_read_and_only_rfc3339_is_called_so() {
        let t = 1_669_761_246_892_000; // 2022-11-29T22:34:06.892Z
        for (text, micros, rfc3339) in [
            ("2022-11-29T22:34:06.892Z", t, true),
            ("2022-11-29T22:34:06Z", t - 892_000, true),
            ("2022-11-29T22:34:06.8Z", t - 92_000, true),
            ("2022-11-29T22:34:06.892000000Z", t, true),
            ("2022-11-29T22:34:06.892123456Z", t + 123, true),
            ("2022-11-29T23:34:06.892+01:00", t, true),
            ("2022-11-29T21:34:06.892-01:00", t, true),
            ("2022-11-29 22:34:06.892", t, false),
            ("2022-11-29 22:34:06", t - 892_000, false),
            ("2022-11-29T22:34:06.892", t, false),
            ("2022-11-29 22:34:06.892Z", t, false),
            ("2022-11-29T23:34:06.892+0100", t, false),
        ] {
            assert_eq!(
                parse_timestamp(text),
                Some(Timestamp { micros, rfc3339 }),
                "{text}"
            );
        }
    }

    #[test]
    fn civil_round_trip() {
        for days in [-800_000_i64, -1, 0, 1, 59, 10_957, 17_830, 2_932_896] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, i64::from(m), i64::from(d)), days);
        }
        assert_eq!(
            format_rfc3339_micros(1_540_560_318_279_128),
            "2018-10-26T13:25:18.279128Z"
        );
    }
}
