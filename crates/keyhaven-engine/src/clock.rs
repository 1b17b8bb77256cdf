//! Injected time. Nothing in the engine reads the system clock except [`SystemClock`].

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A source of the current time, given to the engine so tests can move it.
pub trait Clock: Send + Sync + std::fmt::Debug + 'static {
    /// The current time.
    fn now(&self) -> SystemTime;

    /// The current time as whole seconds since the Unix epoch.
    fn unix_seconds(&self) -> i64 {
        self.now()
            .duration_since(UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
            .unwrap_or(0)
    }
}

/// The real clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    #[allow(
        clippy::disallowed_methods,
        reason = "the one place that reads the system clock"
    )]
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// A clock that only moves when told to; for tests and simulations.
#[derive(Debug, Clone)]
pub struct ManualClock {
    nanos: Arc<AtomicI64>,
}

impl ManualClock {
    /// A clock standing at `start`.
    pub fn new(start: SystemTime) -> Self {
        let nanos = start
            .duration_since(UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
            .unwrap_or(0);
        ManualClock {
            nanos: Arc::new(AtomicI64::new(nanos)),
        }
    }

    /// Move the clock forward by `by`.
    pub fn advance(&self, by: Duration) {
        let add = i64::try_from(by.as_nanos()).unwrap_or(i64::MAX);
        self.nanos.fetch_add(add, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> SystemTime {
        let nanos = self.nanos.load(Ordering::SeqCst);
        UNIX_EPOCH + Duration::from_nanos(u64::try_from(nanos).unwrap_or(0))
    }
}

/// Format a time as RFC 3339 with nanoseconds, as Vault does (`2026-01-02T03:04:05.123456789Z`).
pub fn rfc3339(t: SystemTime) -> String {
    let mut out = Vec::with_capacity(RFC3339_MAX_LEN);
    write_rfc3339(t, &mut out);
    // Only ASCII digits and `-`, `:`, `.`, `T`, `Z` are written.
    String::from_utf8(out).unwrap_or_default()
}

/// The longest [`rfc3339`] text: `YYYY-MM-DDTHH:MM:SS.nnnnnnnnnZ`.
pub const RFC3339_MAX_LEN: usize = 30;

/// Seconds from the Unix epoch to 10000-01-01T00:00:00Z: RFC 3339 years have four digits,
/// and a later time is written as the epoch.
const YEAR_10000: u64 = 253_402_300_800;

/// Append [`rfc3339`] of `t` to `out`, in UTC, as Go's `RFC3339Nano` writes it: the
/// fraction of a second without trailing zeros, and none for a whole second. A time before
/// the epoch, or after year 9999, is written as the epoch.
///
/// Every KV read writes one or two: by arithmetic on the date, with no formatter and no
/// allocation.
pub fn write_rfc3339(t: SystemTime, out: &mut Vec<u8>) {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    write_unix_time(since.as_secs(), since.subsec_nanos(), out);
}

/// [`write_rfc3339`] of a time given as nanoseconds since the Unix epoch.
pub fn write_rfc3339_unix_nanos(nanos: u64, out: &mut Vec<u8>) {
    #[allow(clippy::cast_possible_truncation, reason = "below 10^9")]
    let subsec = (nanos % 1_000_000_000) as u32;
    write_unix_time(nanos / 1_000_000_000, subsec, out);
}

/// [`write_rfc3339`] of `secs` and `nanos` (below 10^9) after the Unix epoch.
fn write_unix_time(secs: u64, nanos: u32, out: &mut Vec<u8>) {
    let (secs, mut nanos) = if secs < YEAR_10000 {
        (secs, nanos)
    } else {
        (0, 0)
    };
    let (year, month, day) = civil_from_days(secs / 86_400);
    let of_day = secs % 86_400;
    out.reserve(RFC3339_MAX_LEN);
    push_two_digits(out, year / 100);
    push_two_digits(out, year % 100);
    out.push(b'-');
    push_two_digits(out, month);
    out.push(b'-');
    push_two_digits(out, day);
    out.push(b'T');
    push_two_digits(out, of_day / 3_600);
    out.push(b':');
    push_two_digits(out, of_day / 60 % 60);
    out.push(b':');
    push_two_digits(out, of_day % 60);
    if nanos != 0 {
        let mut digits = [0u8; 9];
        let mut rest = nanos;
        for digit in digits.iter_mut().rev() {
            *digit = decimal_digit(u64::from(rest));
            rest /= 10;
        }
        let mut width = digits.len();
        while nanos % 10 == 0 {
            nanos /= 10;
            width -= 1;
        }
        out.push(b'.');
        out.extend_from_slice(digits.get(..width).unwrap_or_default());
    }
    out.push(b'Z');
}

/// The proleptic Gregorian (year, month, day) of `days` after 1970-01-01 (the "civil from
/// days" algorithm: eras of 400 years, years starting on 1 March).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let day_of_era = z % 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1_460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_from_march + 2) / 5 + 1;
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    };
    let year = era * 400 + year_of_era + u64::from(month <= 2);
    (year, month, day)
}

/// Append `value` (below 100) as two decimal digits.
fn push_two_digits(out: &mut Vec<u8>, value: u64) {
    out.extend_from_slice(&[decimal_digit(value / 10), decimal_digit(value)]);
}

/// The ASCII digit of `value`'s last decimal digit.
fn decimal_digit(value: u64) -> u8 {
    #[allow(clippy::cast_possible_truncation, reason = "below 10")]
    let digit = (value % 10) as u8;
    b'0' + digit
}

/// Parse an RFC 3339 time.
pub fn parse_rfc3339(s: &str) -> Option<SystemTime> {
    let odt =
        time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()?;
    let nanos = u64::try_from(odt.unix_timestamp_nanos()).ok()?;
    Some(UNIX_EPOCH + Duration::from_nanos(nanos))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_moves_only_when_advanced() {
        let start = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let c = ManualClock::new(start);
        assert_eq!(c.now(), start);
        c.advance(Duration::from_secs(90));
        assert_eq!(c.unix_seconds(), 1_800_000_090);
    }

    /// What `rfc3339` wrote before it did its own arithmetic: the `time` crate's RFC 3339.
    fn rfc3339_by_time_crate(t: SystemTime) -> String {
        let nanos = t
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        time::OffsetDateTime::from_unix_timestamp_nanos(i128::try_from(nanos).unwrap_or(0))
            .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default()
    }

    #[test]
    fn rfc3339_writes_what_the_time_crate_writes() {
        let day = 86_400;
        let mut secs: Vec<u64> = vec![
            0,
            1,
            day - 1,
            day,
            68_169_600,    // 1972-02-29, a leap day
            951_782_400,   // 2000-02-29: divisible by 400, a leap year
            951_868_800,   // 2000-03-01
            4_107_456_000, // 2100-02-28: divisible by 100, not a leap year
            4_107_542_400, // 2100-03-01
            1_800_000_000,
            YEAR_10000 - 1, // 9999-12-31T23:59:59Z, the last time RFC 3339 can write
            YEAR_10000,     // written as the epoch
            YEAR_10000 + day,
        ];
        // Every day from 1970 to 2200, at a time of day that moves.
        secs.extend((0..84_000u64).map(|d| d * day + (d * 7_919) % day));
        // A spread over the whole range, from a fixed-seed generator.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            secs.push(x % (YEAR_10000 + 10 * day));
        }
        let fractions = [
            0,
            1,
            10,
            100_000_000,
            120_000_000,
            123_456_789,
            999_999_999,
            500_000_000,
            10_000,
        ];
        for (i, s) in secs.iter().enumerate() {
            let t = UNIX_EPOCH + Duration::new(*s, fractions[i % fractions.len()]);
            assert_eq!(rfc3339(t), rfc3339_by_time_crate(t), "{s} s");
        }
        for nanos in [
            0,
            1,
            999_999_999,
            1_000_000_000,
            1_800_000_000_123_456_789,
            u64::MAX,
        ] {
            let mut out = Vec::new();
            write_rfc3339_unix_nanos(nanos, &mut out);
            let t = UNIX_EPOCH + Duration::from_nanos(nanos);
            assert_eq!(out, rfc3339_by_time_crate(t).into_bytes(), "{nanos} ns");
        }
        assert_eq!(
            rfc3339(UNIX_EPOCH - Duration::from_secs(1)),
            "1970-01-01T00:00:00Z",
            "before the epoch"
        );
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::new(YEAR_10000 - 1, 999_999_999)).len(),
            RFC3339_MAX_LEN
        );
    }

    #[test]
    fn rfc3339_round_trips() {
        let t = UNIX_EPOCH + Duration::new(1_800_000_000, 123_456_789);
        let s = rfc3339(t);
        assert_eq!(s, "2027-01-15T08:00:00.123456789Z");
        assert_eq!(parse_rfc3339(&s), Some(t));
    }
}
