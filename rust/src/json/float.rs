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
    let mut buf = StackBuf { buf: [0; 32], len: 0 };
    write!(buf, "{v:e}").expect("an f64 in exponent form fits in 32 bytes");
    let mut parts = Scientific::parse(&buf.buf[..buf.len]);
    // When two shortest candidates are equally close, CPython takes the even one and Rust's shortest
    // mode rounds up; Rust's fixed-precision mode does round half to even, so ask it instead.
    if parts.digits.len() >= 16 && may_be_halfway(v) {
        let mut exact = StackBuf { buf: [0; 32], len: 0 };
        write!(exact, "{v:.*e}", parts.digits.len() - 1).expect("17 digits fit in 32 bytes");
        let text = &exact.buf[..exact.len];
        let round_trips = std::str::from_utf8(text).is_ok_and(|t| t.parse::<f64>() == Ok(v));
        if round_trips {
            parts = Scientific::parse(text);
        }
    }
    let digits = parts.digits.as_slice();
    let exp = parts.exponent;

    if parts.negative {
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

/// Rust's `{:e}` output taken apart: sign, significant digits, exponent of the first digit.
struct Scientific {
    negative: bool,
    digits: Digits,
    exponent: i32,
}

struct Digits {
    buf: [u8; 20],
    len: usize,
}

impl Digits {
    fn as_slice(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    fn len(&self) -> usize {
        self.len
    }
}

impl Scientific {
    fn parse(text: &[u8]) -> Self {
        let (negative, text) = match text.split_first() {
            Some((b'-', rest)) => (true, rest),
            _ => (false, text),
        };
        let e_at = text.iter().position(|&b| b == b'e').unwrap_or(text.len());
        let mut digits = Digits { buf: [0; 20], len: 0 };
        for &b in text[..e_at].iter().filter(|b| b.is_ascii_digit()) {
            digits.buf[digits.len] = b;
            digits.len += 1;
        }
        Self {
            negative,
            digits,
            exponent: parse_exponent(text.get(e_at + 1..).unwrap_or_default()),
        }
    }
}

/// Whether `v` can lie exactly halfway between two of the 16- or 17-digit decimals next to it.
///
/// Write `v = m * 2^q` with `m` odd. Halfway means `2v = (2d + 1) * 10^k` for some `d` below 10^17. For
/// `q >= 0` the powers of two force `k = q + 1` and `5^k` must divide `m < 2^53`, so `q <= 21`; for `q < 0`
/// they force `k = 1 + q` (so `k <= 0`) and `2d + 1 = m * 5^(-q-1)`, which must stay below `2 * 10^17`.
/// Outside that (most floats with a long expansion, like 0.1 + 0.2, and every `time.time()`, whose `m` is
/// large) the shortest digits are already CPython's; the exact pass inside it costs twice the rest.
fn may_be_halfway(v: f64) -> bool {
    let bits = v.to_bits();
    let biased = i32::try_from((bits >> 52) & 0x7ff).expect("11 bits");
    let fraction = bits & ((1 << 52) - 1);
    let (m, q) = if biased == 0 {
        (fraction, -1074)
    } else {
        (fraction | 1 << 52, biased - 1075)
    };
    if m == 0 {
        return false;
    }
    let zeros = m.trailing_zeros();
    let (m, q) = (m >> zeros, q + i32::try_from(zeros).expect("below 64"));
    if q >= 0 {
        return q <= 21;
    }
    match u32::try_from(-q - 1) {
        // m < 2^53 and 5^24 < 2^56: the product fits
        Ok(power) if power <= 24 => u128::from(m) * 5_u128.pow(power) < 200_000_000_000_000_000,
        _ => false,
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
            // 2^49 + 1/4 and 2^49 + 3/4: each exactly halfway between two 16-digit candidates.
            (562_949_953_421_312.0 + 0.25, "562949953421312.2"),
            (562_949_953_421_312.0 + 0.75, "562949953421312.8"),
            (2.5, "2.5"),
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
