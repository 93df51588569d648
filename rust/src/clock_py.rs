//! `datetime.now(timezone.utc).isoformat()` without the datetime module.
//!
//! A result's `date_done` is written once per task, in the pool child, on the path from a task's start to
//! its stored result. Measured in a child that sat idle between tasks (its caches cold, as on a worker
//! serving one request at a time), the datetime call took ~12 µs of that path; this takes a fraction.

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use std::time::{SystemTime, UNIX_EPOCH};

/// Microseconds since the epoch of 0001-01-01T00:00:00 and 9999-12-31T23:59:59.999999 UTC: `datetime`'s range.
const MIN_MICROS: i64 = -62_135_596_800_000_000;
const MAX_MICROS: i64 = 253_402_300_799_999_999;

/// (year, month, day) of a day counted from 1970-01-01, proleptic Gregorian (Howard Hinnant's
/// `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// The instant `micros` after the epoch as `datetime.isoformat()` writes an aware UTC datetime (the
/// fraction left out when it is zero, as Python does).
pub fn isoformat(micros: i64) -> String {
    let secs = micros.div_euclid(1_000_000);
    let fraction = micros.rem_euclid(1_000_000);
    let (year, month, day) = civil_from_days(secs.div_euclid(86_400));
    let second_of_day = secs.rem_euclid(86_400);
    let (hour, minute, second) = (second_of_day / 3600, second_of_day / 60 % 60, second_of_day % 60);
    if fraction == 0 {
        format!("{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}+00:00")
    } else {
        format!("{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}.{fraction:06}+00:00")
    }
}

/// `micros` after the epoch (None: now, from the system clock, truncated to the microsecond as
/// `datetime.now` does) in ISO 8601, as `datetime.isoformat()` writes the same aware UTC datetime.
#[pyfunction]
#[pyo3(text_signature = "(micros)")]
pub fn utc_isoformat(micros: Option<i64>) -> PyResult<String> {
    let micros = if let Some(value) = micros {
        value
    } else {
        let since = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_err(|_| PyValueError::new_err("the system clock is before 1970"))?;
        i64::try_from(since.as_micros()).map_err(|_| PyValueError::new_err("the system clock is out of range"))?
    };
    if !(MIN_MICROS..=MAX_MICROS).contains(&micros) {
        return Err(PyValueError::new_err("year is out of range (1-9999)"));
    }
    Ok(isoformat(micros))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_instants() {
        assert_eq!(isoformat(0), "1970-01-01T00:00:00+00:00");
        assert_eq!(isoformat(1), "1970-01-01T00:00:00.000001+00:00");
        assert_eq!(isoformat(-1), "1969-12-31T23:59:59.999999+00:00");
        assert_eq!(isoformat(951_782_400_000_000), "2000-02-29T00:00:00+00:00");
        assert_eq!(isoformat(MIN_MICROS), "0001-01-01T00:00:00+00:00");
        assert_eq!(isoformat(MAX_MICROS), "9999-12-31T23:59:59.999999+00:00");
    }
}
