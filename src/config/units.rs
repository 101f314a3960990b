//! Human-readable units for config values: durations (`50ms`), rates (`100/min`) and byte sizes (`1MiB`).
//!
//! Each type parses from a string (and, where a bare number has an obvious meaning, from a
//! YAML integer), prints back in a form the parser accepts, and deserializes with
//! `serde::de::Error::custom` so that the config's YAML reader (`config::yaml`) places the bad
//! value at its line and column.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::de::{self, Deserialize, Deserializer, Visitor};

const NANOS_PER_SEC: u128 = 1_000_000_000;

/// Duration units accepted after a number, in nanoseconds per unit.
const DURATION_UNITS: [(&str, u128); 7] = [
    ("us", 1_000),
    ("ms", 1_000_000),
    ("s", NANOS_PER_SEC),
    ("m", 60 * NANOS_PER_SEC),
    ("min", 60 * NANOS_PER_SEC),
    ("h", 3_600 * NANOS_PER_SEC),
    ("d", 86_400 * NANOS_PER_SEC),
];

/// Units `Display` for durations picks from, largest first (each must be in `DURATION_UNITS`).
const DURATION_DISPLAY_UNITS: [(&str, u128); 6] = [
    ("d", 86_400 * NANOS_PER_SEC),
    ("h", 3_600 * NANOS_PER_SEC),
    ("m", 60 * NANOS_PER_SEC),
    ("s", NANOS_PER_SEC),
    ("ms", 1_000_000),
    ("us", 1_000),
];

/// Byte-size units, matched case-insensitively; binary units are 1024-based.
/// Listed in the order `Display` prefers them.
const BYTE_UNITS: [(&str, u128); 8] = [
    ("TiB", 1 << 40),
    ("GiB", 1 << 30),
    ("MiB", 1 << 20),
    ("KiB", 1 << 10),
    ("TB", 1_000_000_000_000),
    ("GB", 1_000_000_000),
    ("MB", 1_000_000),
    ("KB", 1_000),
];

/// A non-negative decimal number at the front of `s`, split as (integer digits, fraction
/// digits, rest). The integer part is required; a `.` must be followed by digits.
fn split_number(s: &str) -> Option<(&str, &str, &str)> {
    let int_end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    if int_end == 0 {
        return None;
    }
    let (int, rest) = s.split_at(int_end);
    match rest.strip_prefix('.') {
        Some(after_dot) => {
            let frac_end = after_dot
                .find(|c: char| !c.is_ascii_digit())
                .unwrap_or(after_dot.len());
            if frac_end == 0 {
                return None;
            }
            Some((int, &after_dot[..frac_end], &after_dot[frac_end..]))
        }
        None => Some((int, "", rest)),
    }
}

/// `int.frac × per`, exactly, as (whole part, whether there was a remainder).
/// None when it does not fit in a u128.
fn scale(int: &str, frac: &str, per: u128) -> Option<(u128, bool)> {
    let whole = int.parse::<u128>().ok()?.checked_mul(per)?;
    // 20 fraction digits are more than any unit here can resolve (per < 10^20).
    let frac = &frac[..frac.len().min(20)];
    if frac.is_empty() {
        return Some((whole, false));
    }
    let digits = u32::try_from(frac.len()).ok()?;
    let scaled = frac.parse::<u128>().ok()?.checked_mul(per)?;
    let denominator = 10u128.pow(digits);
    let value = whole.checked_add(scaled / denominator)?;
    Some((value, scaled % denominator != 0))
}

/// Why a duration string was rejected.
enum DurationError {
    Malformed,
    TooLarge,
}

/// Parses `NUMBER UNIT` (or a bare whole number of seconds when `bare_seconds`).
fn parse_duration(s: &str, bare_seconds: bool) -> Result<Duration, DurationError> {
    let (int, frac, rest) = split_number(s.trim()).ok_or(DurationError::Malformed)?;
    let unit = rest.trim_start();
    let per = if unit.is_empty() && bare_seconds && frac.is_empty() {
        NANOS_PER_SEC
    } else {
        DURATION_UNITS
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(unit))
            .map(|&(_, per)| per)
            .ok_or(DurationError::Malformed)?
    };
    // Sub-nanosecond remainders are truncated.
    let (nanos, _) = scale(int, frac, per).ok_or(DurationError::TooLarge)?;
    let secs = u64::try_from(nanos / NANOS_PER_SEC).map_err(|_| DurationError::TooLarge)?;
    let subsec = u32::try_from(nanos % NANOS_PER_SEC).map_err(|_| DurationError::TooLarge)?;
    Ok(Duration::new(secs, subsec))
}

/// A span of time written the way people write it in config (`50ms`, `2s`, `1m`, `1.5h`).
///
/// Exists so timeouts and windows never carry an implicit unit: strings need one of
/// `us`, `ms`, `s`, `m`/`min`, `h`, `d`; only a bare integer (YAML number or string) means seconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

impl HumanDuration {
    /// Parses `50ms`, `2s`, `1m`, `1min`, `1h`, `1d`, `500us`, `1.5s` or a bare whole number of seconds.
    pub fn parse(s: &str) -> Result<HumanDuration, String> {
        parse_duration(s, true)
            .map(HumanDuration)
            .map_err(|e| match e {
                DurationError::Malformed => format!(
                    "malformed duration {s:?}: expected a number followed by us, ms, s, m, h or d"
                ),
                DurationError::TooLarge => format!("duration {s:?} is too large"),
            })
    }
}

/// Same as [`HumanDuration::parse`], for `str::parse` and CLI flags.
impl FromStr for HumanDuration {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        HumanDuration::parse(s)
    }
}

/// Lets callers hand the parsed value straight to timer APIs.
impl From<HumanDuration> for Duration {
    fn from(d: HumanDuration) -> Duration {
        d.0
    }
}

/// Prints the largest unit that divides the duration exactly (`90s`, `90m`, `1500ms`), so the
/// output parses back to the same value; sub-microsecond precision prints as decimal `us`.
impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let nanos = self.0.as_nanos();
        if nanos == 0 {
            return f.write_str("0s");
        }
        for (unit, per) in DURATION_DISPLAY_UNITS {
            let (quotient, remainder) = (nanos / per, nanos % per);
            if remainder == 0 {
                return write!(f, "{quotient}{unit}");
            }
        }
        let frac = format!("{:03}", nanos % 1_000);
        write!(f, "{}.{}us", nanos / 1_000, frac.trim_end_matches('0'))
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct DurationVisitor;

        impl Visitor<'_> for DurationVisitor {
            type Value = HumanDuration;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration like 50ms, 2s, 1m, 1h or 1d, or a whole number of seconds")
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                HumanDuration::parse(v).map_err(E::custom)
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                Ok(HumanDuration(Duration::from_secs(v)))
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                u64::try_from(v)
                    .map(|v| HumanDuration(Duration::from_secs(v)))
                    .map_err(|_| {
                        E::custom(format!(
                        "negative duration {v}: expected a duration like 50ms, 2s, 1m, 1h or 1d, \
                         or a whole number of seconds"
                    ))
                    })
            }
        }

        deserializer.deserialize_any(DurationVisitor)
    }
}

/// A request budget: `count` requests per `period` (`100/min`, `10/s`, `100/10s`).
///
/// Exists so limits are written as people say them and checked for sense (count ≥ 1,
/// period > 0) at load time rather than at the first request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rate {
    /// Requests allowed per period; at least 1.
    pub count: u32,
    /// Length of the window the count applies to; greater than zero.
    pub period: Duration,
}

impl Rate {
    /// Parses `COUNT/UNIT` (unit `s`/`sec`/`second`, `m`/`min`/`minute`, `h`/`hour`, `d`/`day`)
    /// or `COUNT/DURATION` (`100/10s`, `100/1m`).
    pub fn parse(s: &str) -> Result<Rate, String> {
        let malformed = || {
            format!(
                "malformed rate {s:?}: expected COUNT/UNIT with UNIT one of s, min, h, d \
                 (or COUNT/DURATION like 100/10s)"
            )
        };
        let (count, per) = s.trim().split_once('/').ok_or_else(malformed)?;
        let (count, per) = (count.trim(), per.trim());
        if count.is_empty() || !count.bytes().all(|b| b.is_ascii_digit()) {
            return Err(malformed());
        }
        let period = match per.to_ascii_lowercase().as_str() {
            "s" | "sec" | "second" => Duration::from_secs(1),
            "m" | "min" | "minute" => Duration::from_secs(60),
            "h" | "hour" => Duration::from_secs(3_600),
            "d" | "day" => Duration::from_secs(86_400),
            _ => parse_duration(per, false).map_err(|e| match e {
                DurationError::Malformed => malformed(),
                DurationError::TooLarge => format!("invalid rate {s:?}: period is too large"),
            })?,
        };
        let count: u32 = count
            .parse()
            .map_err(|_| format!("invalid rate {s:?}: count must be at most {}", u32::MAX))?;
        if count == 0 {
            return Err(format!("invalid rate {s:?}: count must be at least 1"));
        }
        if period.is_zero() {
            return Err(format!(
                "invalid rate {s:?}: period must be greater than zero"
            ));
        }
        Ok(Rate { count, period })
    }
}

/// Same as [`Rate::parse`], for `str::parse` and CLI flags.
impl FromStr for Rate {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Rate::parse(s)
    }
}

/// Prints `100/s`, `100/min`, `100/h`, `100/d` for whole units, else `100/10s` style.
impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let unit = match self.period.as_nanos() {
            n if n == NANOS_PER_SEC => "s",
            n if n == 60 * NANOS_PER_SEC => "min",
            n if n == 3_600 * NANOS_PER_SEC => "h",
            n if n == 86_400 * NANOS_PER_SEC => "d",
            _ => return write!(f, "{}/{}", self.count, HumanDuration(self.period)),
        };
        write!(f, "{}/{unit}", self.count)
    }
}

impl<'de> Deserialize<'de> for Rate {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct RateVisitor;

        impl Visitor<'_> for RateVisitor {
            type Value = Rate;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a rate like 100/min, 10/s or 100/10s")
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Rate::parse(v).map_err(E::custom)
            }
        }

        deserializer.deserialize_any(RateVisitor)
    }
}

/// A number of bytes written with a unit (`512KiB`, `10MB`, `2GiB`, or bare `100`).
///
/// Exists so body and buffer limits are not guessed at: KiB/MiB/GiB/TiB are 1024-based,
/// KB/MB/GB/TB 1000-based, units are case-insensitive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ByteSize(pub u64);

impl ByteSize {
    /// Parses `NUMBER[UNIT]` with UNIT one of B, KB, MB, GB, TB, KiB, MiB, GiB, TiB (any case).
    pub fn parse(s: &str) -> Result<ByteSize, String> {
        let malformed = || {
            format!(
                "malformed byte size {s:?}: expected a number followed by B, KB, MB, GB, TB, \
                 KiB, MiB, GiB or TiB"
            )
        };
        let (int, frac, rest) = split_number(s.trim()).ok_or_else(malformed)?;
        let unit = rest.trim_start();
        let per = if unit.is_empty() || unit.eq_ignore_ascii_case("b") {
            1
        } else {
            BYTE_UNITS
                .iter()
                .find(|(name, _)| name.eq_ignore_ascii_case(unit))
                .map(|&(_, per)| per)
                .ok_or_else(malformed)?
        };
        let too_large = || format!("byte size {s:?} is too large");
        let (bytes, remainder) = scale(int, frac, per).ok_or_else(too_large)?;
        if remainder {
            return Err(format!(
                "invalid byte size {s:?}: not a whole number of bytes"
            ));
        }
        u64::try_from(bytes).map(ByteSize).map_err(|_| too_large())
    }
}

/// Same as [`ByteSize::parse`], for `str::parse` and CLI flags.
impl FromStr for ByteSize {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ByteSize::parse(s)
    }
}

/// Prints the largest unit that divides the size exactly (`1MiB`, `10MB`), else bytes (`100B`).
impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = u128::from(self.0);
        if n != 0 {
            for (unit, per) in BYTE_UNITS {
                let (quotient, remainder) = (n / per, n % per);
                if remainder == 0 {
                    return write!(f, "{quotient}{unit}");
                }
            }
        }
        write!(f, "{n}B")
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ByteSizeVisitor;

        impl Visitor<'_> for ByteSizeVisitor {
            type Value = ByteSize;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a byte size like 512KiB, 1MiB or 10MB, or a whole number of bytes")
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                ByteSize::parse(v).map_err(E::custom)
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                Ok(ByteSize(v))
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                u64::try_from(v).map(ByteSize).map_err(|_| {
                    E::custom(format!(
                        "negative byte size {v}: expected a byte size like 512KiB, 1MiB or 10MB, \
                         or a whole number of bytes"
                    ))
                })
            }
        }

        deserializer.deserialize_any(ByteSizeVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::yaml::de::from_str;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn duration_accepted_forms() {
        let cases = [
            ("50ms", Duration::from_millis(50)),
            ("2s", secs(2)),
            ("1m", secs(60)),
            ("1min", secs(60)),
            ("90s", secs(90)),
            ("1h", secs(3_600)),
            ("24h", secs(86_400)),
            ("1d", secs(86_400)),
            ("500us", Duration::from_micros(500)),
            ("1.5s", Duration::from_millis(1_500)),
            ("0.25m", secs(15)),
            ("1.5us", Duration::from_nanos(1_500)),
            ("0s", Duration::ZERO),
            ("0", Duration::ZERO),
            ("30", secs(30)),
            (" 5 s ", secs(5)),
            ("2S", secs(2)),
            ("10MS", Duration::from_millis(10)),
        ];
        for (text, expected) in cases {
            assert_eq!(
                HumanDuration::parse(text),
                Ok(HumanDuration(expected)),
                "{text}"
            );
            assert_eq!(text.parse::<HumanDuration>(), Ok(HumanDuration(expected)));
        }
    }

    #[test]
    fn duration_errors() {
        for text in [
            "5 parsecs",
            "",
            "s",
            "-1s",
            "+1s",
            "1.s",
            ".5s",
            "1.5",
            "1e3s",
            "1 2s",
            "1sec",
        ] {
            assert_eq!(
                HumanDuration::parse(text),
                Err(format!(
                    "malformed duration {text:?}: expected a number followed by us, ms, s, m, h or d"
                )),
                "{text}"
            );
        }
        assert_eq!(
            HumanDuration::parse("5 parsecs").unwrap_err(),
            r#"malformed duration "5 parsecs": expected a number followed by us, ms, s, m, h or d"#
        );
        assert_eq!(
            HumanDuration::parse("999999999999999999999999d").unwrap_err(),
            r#"duration "999999999999999999999999d" is too large"#
        );
    }

    #[test]
    fn duration_display_round_trips() {
        let cases = [
            (Duration::ZERO, "0s"),
            (Duration::from_millis(50), "50ms"),
            (secs(2), "2s"),
            (secs(60), "1m"),
            (secs(90), "90s"),
            (secs(5_400), "90m"),
            (secs(3_600), "1h"),
            (secs(86_400), "1d"),
            (secs(172_800 + 3_600), "49h"),
            (Duration::from_millis(1_500), "1500ms"),
            (Duration::from_micros(500), "500us"),
            (Duration::from_nanos(1_500), "1.5us"),
            (Duration::from_nanos(7), "0.007us"),
        ];
        for (duration, text) in cases {
            assert_eq!(HumanDuration(duration).to_string(), text);
            assert_eq!(HumanDuration::parse(text), Ok(HumanDuration(duration)));
        }
    }

    fn rate(count: u32, period: u64) -> Rate {
        Rate {
            count,
            period: secs(period),
        }
    }

    #[test]
    fn rate_accepted_forms() {
        let cases = [
            ("100/min", rate(100, 60)),
            ("10/s", rate(10, 1)),
            ("5000/h", rate(5_000, 3_600)),
            ("1000/d", rate(1_000, 86_400)),
            ("100/10s", rate(100, 10)),
            ("100/1m", rate(100, 60)),
            ("100/m", rate(100, 60)),
            ("5/sec", rate(5, 1)),
            ("5/second", rate(5, 1)),
            ("60/minute", rate(60, 60)),
            ("3/hour", rate(3, 3_600)),
            ("1/day", rate(1, 86_400)),
            (
                "2/1.5s",
                Rate {
                    count: 2,
                    period: Duration::from_millis(1_500),
                },
            ),
            (
                "7/250ms",
                Rate {
                    count: 7,
                    period: Duration::from_millis(250),
                },
            ),
            (" 100 / MIN ", rate(100, 60)),
            ("4294967295/s", rate(u32::MAX, 1)),
        ];
        for (text, expected) in cases {
            assert_eq!(Rate::parse(text), Ok(expected), "{text}");
            assert_eq!(text.parse::<Rate>(), Ok(expected));
        }
    }

    #[test]
    fn rate_errors() {
        for text in [
            "100/mni",
            "100",
            "/min",
            "100/",
            "abc/min",
            "-1/min",
            "1.5/min",
            "100/10",
            "100/10 parsecs",
            "100/min/s",
            "100/ms",
        ] {
            assert_eq!(
                Rate::parse(text),
                Err(format!(
                    "malformed rate {text:?}: expected COUNT/UNIT with UNIT one of s, min, h, d \
                     (or COUNT/DURATION like 100/10s)"
                )),
                "{text}"
            );
        }
        assert_eq!(
            Rate::parse("100/mni").unwrap_err(),
            r#"malformed rate "100/mni": expected COUNT/UNIT with UNIT one of s, min, h, d (or COUNT/DURATION like 100/10s)"#
        );
        assert_eq!(
            Rate::parse("0/min").unwrap_err(),
            r#"invalid rate "0/min": count must be at least 1"#
        );
        assert_eq!(
            Rate::parse("10/0s").unwrap_err(),
            r#"invalid rate "10/0s": period must be greater than zero"#
        );
        assert_eq!(
            Rate::parse("4294967296/s").unwrap_err(),
            r#"invalid rate "4294967296/s": count must be at most 4294967295"#
        );
        assert_eq!(
            Rate::parse("1/99999999999999999999999d").unwrap_err(),
            r#"invalid rate "1/99999999999999999999999d": period is too large"#
        );
    }

    #[test]
    fn rate_display_round_trips() {
        let cases = [
            (rate(100, 60), "100/min"),
            (rate(10, 1), "10/s"),
            (rate(5_000, 3_600), "5000/h"),
            (rate(1_000, 86_400), "1000/d"),
            (rate(100, 10), "100/10s"),
            (rate(100, 120), "100/2m"),
            (rate(3, 7_200), "3/2h"),
            (
                Rate {
                    count: 7,
                    period: Duration::from_millis(250),
                },
                "7/250ms",
            ),
        ];
        for (value, text) in cases {
            assert_eq!(value.to_string(), text);
            assert_eq!(Rate::parse(text), Ok(value));
        }
        assert_eq!(Rate::parse("100/1m").unwrap().to_string(), "100/min");
        assert_eq!(Rate::parse("5/second").unwrap().to_string(), "5/s");
    }

    #[test]
    fn byte_size_accepted_forms() {
        let cases = [
            ("1MiB", 1 << 20),
            ("512KiB", 512 << 10),
            ("64kb", 64_000),
            ("10MB", 10_000_000),
            ("2GiB", 2 << 30),
            ("1TiB", 1 << 40),
            ("3tb", 3_000_000_000_000),
            ("1gb", 1_000_000_000),
            ("100", 100),
            ("100B", 100),
            ("100b", 100),
            ("0", 0),
            ("1 mib", 1 << 20),
            ("0.5KiB", 512),
            ("1.5GB", 1_500_000_000),
            ("18446744073709551615", u64::MAX),
        ];
        for (text, expected) in cases {
            assert_eq!(ByteSize::parse(text), Ok(ByteSize(expected)), "{text}");
            assert_eq!(text.parse::<ByteSize>(), Ok(ByteSize(expected)));
        }
    }

    #[test]
    fn byte_size_errors() {
        for text in ["10 MBs", "", "MiB", "-1KiB", "1K", "1M", "1 bytes", "1.KiB"] {
            assert_eq!(
                ByteSize::parse(text),
                Err(format!(
                    "malformed byte size {text:?}: expected a number followed by B, KB, MB, GB, \
                     TB, KiB, MiB, GiB or TiB"
                )),
                "{text}"
            );
        }
        assert_eq!(
            ByteSize::parse("10 MBs").unwrap_err(),
            r#"malformed byte size "10 MBs": expected a number followed by B, KB, MB, GB, TB, KiB, MiB, GiB or TiB"#
        );
        assert_eq!(
            ByteSize::parse("18446744073709551616").unwrap_err(),
            r#"byte size "18446744073709551616" is too large"#
        );
        assert_eq!(
            ByteSize::parse("20000000TiB").unwrap_err(),
            r#"byte size "20000000TiB" is too large"#
        );
        assert_eq!(
            ByteSize::parse("1.5B").unwrap_err(),
            r#"invalid byte size "1.5B": not a whole number of bytes"#
        );
    }

    #[test]
    fn byte_size_display_round_trips() {
        let cases = [
            (0, "0B"),
            (100, "100B"),
            (1_000, "1KB"),
            (1_024, "1KiB"),
            (1 << 20, "1MiB"),
            (10_000_000, "10MB"),
            (2 << 30, "2GiB"),
            (1_500_000_000, "1500MB"),
            (1 << 40, "1TiB"),
            (u64::MAX, "18446744073709551615B"),
        ];
        for (value, text) in cases {
            assert_eq!(ByteSize(value).to_string(), text);
            assert_eq!(ByteSize::parse(text), Ok(ByteSize(value)));
        }
    }

    #[derive(serde::Deserialize, Debug)]
    struct Limits {
        limit: Rate,
        #[serde(default)]
        window: Option<HumanDuration>,
        #[serde(default)]
        body: Option<ByteSize>,
    }

    /// The error the config's YAML reader gives, with its 1-based (line, column).
    fn yaml_error(src: &str) -> (String, (usize, usize)) {
        let errors = from_str::<Limits>(src).unwrap_err();
        assert_eq!(errors.len(), 1, "{errors:?}");
        let error = &errors[0];
        (error.message.clone(), (error.at.line, error.at.column))
    }

    #[test]
    fn deserializes_strings_and_integers_from_yaml() {
        let limits: Limits = from_str("limit: 100/min\nwindow: 1.5s\nbody: 1MiB\n").unwrap();
        assert_eq!(limits.limit, rate(100, 60));
        assert_eq!(
            limits.window,
            Some(HumanDuration(Duration::from_millis(1_500)))
        );
        assert_eq!(limits.body, Some(ByteSize(1 << 20)));

        let limits: Limits = from_str("limit: \"10/s\"\nwindow: 30\nbody: 100\n").unwrap();
        assert_eq!(limits.limit, rate(10, 1));
        assert_eq!(limits.window, Some(HumanDuration(secs(30))));
        assert_eq!(limits.body, Some(ByteSize(100)));

        let limits: Limits = from_str("{limit: 1/day, window: '0'}").unwrap();
        assert_eq!(limits.limit, rate(1, 86_400));
        assert_eq!(limits.window, Some(HumanDuration(Duration::ZERO)));
    }

    #[test]
    fn yaml_errors_carry_line_and_column() {
        let (message, location) = yaml_error("limit: 100/mni\n");
        assert_eq!(location, (1, 8));
        assert_eq!(
            message,
            "limit: malformed rate \"100/mni\": expected COUNT/UNIT with UNIT one of s, min, h, d \
             (or COUNT/DURATION like 100/10s)"
        );

        let (message, location) = yaml_error("limit: 1/s\nwindow: 5 parsecs\n");
        assert_eq!(location, (2, 9));
        assert!(
            message.contains(r#"malformed duration "5 parsecs""#),
            "{message}"
        );

        let (message, location) = yaml_error("limit: 1/s\nwindow: -5\n");
        assert_eq!(location, (2, 9));
        assert!(message.contains("negative duration -5"), "{message}");

        let (message, location) = yaml_error("limit: 1/s\nwindow: 1.5\n");
        assert_eq!(location, (2, 9));
        assert!(
            message.contains("expected a duration like 50ms"),
            "{message}"
        );

        let (message, location) = yaml_error("limit: 1/s\nbody: 10 MBs\n");
        assert_eq!(location, (2, 7));
        assert!(
            message.contains(r#"malformed byte size "10 MBs""#),
            "{message}"
        );

        let (message, location) = yaml_error("limit: 1/s\nbody: -1\n");
        assert_eq!(location, (2, 7));
        assert!(message.contains("negative byte size -1"), "{message}");

        let (message, location) = yaml_error("limit: 100\n");
        assert_eq!(location, (1, 8));
        assert!(
            message.contains("expected a rate like 100/min"),
            "{message}"
        );

        let (message, location) = yaml_error("window: 1s\nlimit: 0/min\n");
        assert_eq!(location, (2, 8));
        assert!(message.contains("count must be at least 1"), "{message}");
    }
}
