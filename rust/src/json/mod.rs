//! JSON exactly as kombu puts it on the wire: CPython's `json` module (its C accelerator) with kombu's
//! hooks. The pure parts live here; `encode_py` and `decode_py` connect them to Python objects.

pub mod decode_py;
pub mod encode_py;
pub mod float;
pub mod parse;
pub mod string;
#[cfg(test)]
mod value;

pub fn write_u64(out: &mut Vec<u8>, mut v: u64) {
    let mut buf = [0u8; 20];
    let mut at = buf.len();
    loop {
        at -= 1;
        // `v % 10` is a single digit, so the cast cannot truncate.
        #[allow(clippy::cast_possible_truncation)]
        let digit = (v % 10) as u8;
        buf[at] = b'0' + digit;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    out.extend_from_slice(&buf[at..]);
}

pub fn write_i64(out: &mut Vec<u8>, v: i64) {
    if v < 0 {
        out.push(b'-');
    }
    write_u64(out, v.unsigned_abs());
}

/// The JSON text CPython writes for a float (`allow_nan=True` spellings for the non-finite ones).
pub fn write_float(out: &mut Vec<u8>, v: f64) {
    if v.is_nan() {
        out.extend_from_slice(b"NaN");
    } else if v.is_infinite() {
        out.extend_from_slice(if v > 0.0 { b"Infinity" } else { b"-Infinity" });
    } else {
        float::write_repr(out, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers() {
        for (v, want) in [
            (0, "0"),
            (-1, "-1"),
            (i64::MIN, "-9223372036854775808"),
            (i64::MAX, "9223372036854775807"),
        ] {
            let mut out = Vec::new();
            write_i64(&mut out, v);
            assert_eq!(out, want.as_bytes());
        }
        let mut out = Vec::new();
        write_u64(&mut out, u64::MAX);
        assert_eq!(out, b"18446744073709551615");
    }

    #[test]
    fn non_finite_floats() {
        for (v, want) in [
            (f64::NAN, "NaN"),
            (f64::INFINITY, "Infinity"),
            (f64::NEG_INFINITY, "-Infinity"),
        ] {
            let mut out = Vec::new();
            write_float(&mut out, v);
            assert_eq!(out, want.as_bytes());
        }
    }
}
