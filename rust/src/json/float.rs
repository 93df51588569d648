//! `float.__repr__` of CPython, which is what `json.dumps` writes for finite floats.
//!
//! Both CPython (David Gay's dtoa, mode 0) and Rust's `{:e}` produce the shortest digit string that reads
//! back to the same double, so only the layout differs: CPython switches to exponent notation when the
//! decimal exponent is below -4 or at least 16, pads the exponent to two digits with an explicit sign, and
//! appends `.0` to integral values written in fixed notation (`format_float_short` in Python/pystrtod.c).

use std::fmt::Write as _;

/// Longest `{:e}` output for an f64 is `-1.7976931348623157e-308` (24 bytes).
struct StackBuf {
    buf: [u8; 32],
    len: usize,
}

impl std::fmt::Write for StackBuf {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let end = self.len + s.len();
        self.buf
            .get_mut(self.len..end)
            .ok_or(std::fmt::Error)?
            .copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

/// Appends `repr(v)` for a finite `v` (callers decide how NaN and infinities are spelled).
pub fn write_repr(out: &mut Vec<u8>, v: f64) {
    debug_assert!(v.is_finite());
    let mut sci = StackBuf { buf: [0; 32], len: 0 };
    write!(sci, "{v:e}").expect("an f64 in exponent form fits in 32 bytes");
    let sci = &sci.buf[..sci.len];

    let (negative, sci) = match sci.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, sci),
    };
    let e_at = sci.iter().position(|&b| b == b'e').unwrap_or(sci.len());
    let (mantissa, exponent) = (&sci[..e_at], sci.get(e_at + 1..).unwrap_or_default());
    let mut digits = [0u8; 20];
    let mut n = 0;
    for &b in mantissa.iter().filter(|b| b.is_ascii_digit()) {
        digits[n] = b;
        n += 1;
    }
    let digits = &digits[..n];
    let exp = parse_exponent(exponent);

    if negative {
        out.push(b'-');
    }
    if (-4..16).contains(&exp) {
        write_fixed(out, digits, exp + 1);
    } else {
        out.push(digits[0]);
        if digits.len() > 1 {
            out.push(b'.');
            out.extend_from_slice(&digits[1..]);
        }
        out.extend_from_slice(if exp < 0 { b"e-" } else { b"e+" });
        let abs = exp.unsigned_abs();
        if abs < 10 {
            out.push(b'0');
        }
        crate::json::write_u64(out, u64::from(abs));
    }
}

/// `digits` scaled so that the decimal point sits after `point` of them (`point` may be <= 0).
fn write_fixed(out: &mut Vec<u8>, digits: &[u8], point: i32) {
    let n = i32::try_from(digits.len()).expect("at most 17 digits");
    if point <= 0 {
        out.extend_from_slice(b"0.");
        out.resize(out.len() + point.unsigned_abs() as usize, b'0');
        out.extend_from_slice(digits);
    } else if point < n {
        let (int, frac) = digits.split_at(point.unsigned_abs() as usize);
        out.extend_from_slice(int);
        out.push(b'.');
        out.extend_from_slice(frac);
    } else {
        out.extend_from_slice(digits);
        out.resize(out.len() + (point - n).unsigned_abs() as usize, b'0');
        out.extend_from_slice(b".0");
    }
}

fn parse_exponent(text: &[u8]) -> i32 {
    let (negative, digits) = match text.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, text),
    };
    let magnitude = digits.iter().fold(0i32, |acc, &d| acc * 10 + i32::from(d - b'0'));
    if negative {
        -magnitude
    } else {
        magnitude
    }
}

#[cfg(test)]
mod tests {
    use super::write_repr;

    fn repr(v: f64) -> String {
        let mut out = Vec::new();
        write_repr(&mut out, v);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn matches_cpython_layout() {
        let cases: &[(f64, &str)] = &[
            (0.0, "0.0"),
            (-0.0, "-0.0"),
            (1.0, "1.0"),
            (0.1, "0.1"),
            (-2.5, "-2.5"),
            (1e16, "1e+16"),
            (1e15, "1000000000000000.0"),
            (1e-5, "1e-05"),
            (0.0001, "0.0001"),
            (0.000_123_45, "0.00012345"),
            (1.234_567_890_123_456_8e17, "1.2345678901234568e+17"),
            (123_456_789.125, "123456789.125"),
            (5e-324, "5e-324"),
            (1.797_693_134_862_315_7e308, "1.7976931348623157e+308"),
            (2.225_073_858_507_201_4e-308, "2.2250738585072014e-308"),
            (9_007_199_254_740_993.0, "9007199254740992.0"),
            (1.5e300, "1.5e+300"),
            (-1e-100, "-1e-100"),
        ];
        for &(v, want) in cases {
            assert_eq!(repr(v), want, "{v:e}");
        }
    }

    #[test]
    fn round_trips() {
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for _ in 0..100_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let v = f64::from_bits(x);
            if v.is_finite() {
                assert_eq!(repr(v).parse::<f64>().unwrap().to_bits(), v.to_bits());
            }
        }
    }
}
