//! JSON string literals as CPython's `json` writes them with `ensure_ascii=True`, plus the WTF-8 helpers
//! that let lone surrogates (legal in a Python str, not in UTF-8) pass through the encoder and decoder.
//!
//! WTF-8 here means UTF-8 extended to encode U+D800..U+DFFF as ordinary three-byte sequences, which is
//! exactly what Python's `surrogatepass` error handler reads and writes.

/// Bytes written unescaped: printable ASCII except `"` and `\` (so DEL, 0x7f, is escaped too, as CPython does).
const PLAIN: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0x20;
    while b < 0x7f {
        table[b] = b != b'"' as usize && b != b'\\' as usize;
        b += 1;
    }
    table
};

const HEX: &[u8; 16] = b"0123456789abcdef";

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGH_BITS: u64 = 0x8080_8080_8080_8080;

/// Sets the high bit of each byte of `x` below `n` (n <= 0x80). Bytes above a match may be flagged
/// spuriously by the borrow, but the lowest flagged byte is always a real match, which is all we use.
fn bytes_below(x: u64, n: u8) -> u64 {
    x.wrapping_sub(ONES * u64::from(n)) & !x & HIGH_BITS
}

fn bytes_equal(x: u64, b: u8) -> u64 {
    bytes_below(x ^ (ONES * u64::from(b)), 1)
}

/// Length of the prefix of `s` free of bytes flagged by `special`, eight bytes at a time (then `slow` for
/// the tail), so long plain runs cost a few instructions per word instead of per byte.
fn prefix_len(s: &[u8], special: impl Fn(u64) -> u64, slow: impl Fn(u8) -> bool) -> usize {
    let mut chunks = s.chunks_exact(8);
    let mut done = 0;
    for chunk in &mut chunks {
        let flags = special(u64::from_le_bytes(chunk.try_into().expect("8 bytes")));
        if flags != 0 {
            return done + (flags.trailing_zeros() / 8) as usize;
        }
        done += 8;
    }
    done + chunks
        .remainder()
        .iter()
        .position(|&b| slow(b))
        .unwrap_or(chunks.remainder().len())
}

/// Length of the prefix of a JSON string's content that needs no decoding: up to the first `"`, `\` or
/// control character.
pub fn unescaped_len(s: &[u8]) -> usize {
    prefix_len(
        s,
        |x| bytes_below(x, 0x20) | bytes_equal(x, b'"') | bytes_equal(x, b'\\'),
        |b| b < 0x20 || b == b'"' || b == b'\\',
    )
}

/// Length of the prefix of `s` that `write_escaped` copies as is.
fn plain_len(s: &[u8]) -> usize {
    prefix_len(
        s,
        |x| {
            bytes_below(x, 0x20) | bytes_equal(x, b'"') | bytes_equal(x, b'\\') | bytes_equal(x, 0x7f) | (x & HIGH_BITS)
        },
        |b| !PLAIN[usize::from(b)],
    )
}

/// Appends `s` (UTF-8, or WTF-8 for a str with lone surrogates) as a quoted, ASCII-only JSON string.
pub fn write_escaped(out: &mut Vec<u8>, s: &[u8]) {
    let plain = plain_len(s);
    out.reserve(s.len() + 2);
    out.push(b'"');
    if plain == s.len() {
        out.extend_from_slice(s);
        out.push(b'"');
        return;
    }
    let mut run_start = 0;
    let mut i = plain;
    while i < s.len() {
        i += plain_len(&s[i..]);
        let Some(&b) = s.get(i) else { break };
        out.extend_from_slice(&s[run_start..i]);
        if b < 0x80 {
            write_ascii_escape(out, b);
            i += 1;
        } else {
            let (cp, len) = decode_code_point(&s[i..]);
            if cp >= 0x1_0000 {
                let v = cp - 0x1_0000;
                write_u_escape(out, 0xd800 | (v >> 10));
                write_u_escape(out, 0xdc00 | (v & 0x3ff));
            } else {
                write_u_escape(out, cp);
            }
            i += len;
        }
        run_start = i;
    }
    out.extend_from_slice(&s[run_start..]);
    out.push(b'"');
}

fn write_ascii_escape(out: &mut Vec<u8>, b: u8) {
    let short = match b {
        b'"' => b'"',
        b'\\' => b'\\',
        b'\n' => b'n',
        b'\r' => b'r',
        b'\t' => b't',
        0x08 => b'b',
        0x0c => b'f',
        _ => return write_u_escape(out, u32::from(b)),
    };
    out.extend_from_slice(&[b'\\', short]);
}

fn write_u_escape(out: &mut Vec<u8>, unit: u32) {
    let nibble = |shift: u32| HEX[((unit >> shift) & 0xf) as usize];
    out.extend_from_slice(&[b'\\', b'u', nibble(12), nibble(8), nibble(4), nibble(0)]);
}

/// Decodes the (WTF-8) sequence at the start of `s`, which must be non-empty; returns the code point and
/// its length. Input comes from Python's own encoder, so malformed bytes are not expected; they decode as
/// U+FFFD one byte at a time rather than panicking.
pub fn decode_code_point(s: &[u8]) -> (u32, usize) {
    let lead = s[0];
    let (len, init) = match lead {
        0x00..=0x7f => return (u32::from(lead), 1),
        0xc0..=0xdf => (2, u32::from(lead & 0x1f)),
        0xe0..=0xef => (3, u32::from(lead & 0x0f)),
        0xf0..=0xf7 => (4, u32::from(lead & 0x07)),
        _ => return (0xfffd, 1),
    };
    match s.get(1..len) {
        Some(tail) if tail.iter().all(|&b| b & 0xc0 == 0x80) => {
            (tail.iter().fold(init, |cp, &b| (cp << 6) | u32::from(b & 0x3f)), len)
        }
        _ => (0xfffd, 1),
    }
}

/// Appends any code point below 0x110000, surrogates included (as WTF-8).
pub fn push_code_point(out: &mut Vec<u8>, cp: u32) {
    // Each `as u8` keeps the low bits on purpose: the masks and shifts select the payload of one byte.
    #[allow(clippy::cast_possible_truncation)]
    match cp {
        0..=0x7f => out.push(cp as u8),
        0x80..=0x7ff => out.extend_from_slice(&[0xc0 | (cp >> 6) as u8, 0x80 | (cp & 0x3f) as u8]),
        0x800..=0xffff => out.extend_from_slice(&[
            0xe0 | (cp >> 12) as u8,
            0x80 | ((cp >> 6) & 0x3f) as u8,
            0x80 | (cp & 0x3f) as u8,
        ]),
        _ => out.extend_from_slice(&[
            0xf0 | (cp >> 18) as u8,
            0x80 | ((cp >> 12) & 0x3f) as u8,
            0x80 | ((cp >> 6) & 0x3f) as u8,
            0x80 | (cp & 0x3f) as u8,
        ]),
    }
}

pub fn is_surrogate(cp: u32) -> bool {
    (0xd800..=0xdfff).contains(&cp)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn escaped(s: &[u8]) -> String {
        let mut out = Vec::new();
        write_escaped(&mut out, s);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn ascii_escapes() {
        assert_eq!(escaped(b"plain text"), r#""plain text""#);
        assert_eq!(escaped(b"\"\\\n\r\t\x08\x0c"), r#""\"\\\n\r\t\b\f""#);
        assert_eq!(escaped(b"\x00\x1f\x7f/"), r#""\u0000\u001f\u007f/""#);
    }

    #[test]
    fn non_ascii_escapes() {
        assert_eq!(escaped("é€".as_bytes()), r#""\u00e9\u20ac""#);
        assert_eq!(escaped("😀".as_bytes()), r#""\ud83d\ude00""#);
        assert_eq!(escaped("\u{2028}".as_bytes()), r#""\u2028""#);
    }

    #[test]
    fn lone_surrogates_pass_through() {
        let mut wtf8 = Vec::new();
        push_code_point(&mut wtf8, 0xd800);
        push_code_point(&mut wtf8, u32::from('x'));
        push_code_point(&mut wtf8, 0xdfff);
        assert_eq!(escaped(&wtf8), r#""\ud800x\udfff""#);
    }

    #[test]
    fn code_points_round_trip() {
        for cp in (0..0x11_0000).step_by(7) {
            let mut buf = Vec::new();
            push_code_point(&mut buf, cp);
            assert_eq!(decode_code_point(&buf), (cp, buf.len()));
            if let Some(c) = char::from_u32(cp) {
                assert_eq!(buf, c.to_string().as_bytes());
            }
        }
    }

    #[test]
    fn prefix_scans_agree_with_bytewise_scans() {
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let len = (x % 24) as usize;
            let special = [b'"', b'\\', 0x00, 0x1f, 0x7f, 0x80, 0xff, 0x20, b'a'];
            let bytes: Vec<u8> = (0..len)
                .map(|i| {
                    let r = x.rotate_left(u32::try_from(i).unwrap() * 7);
                    if r.is_multiple_of(5) {
                        special[(r >> 8) as usize % special.len()]
                    } else {
                        b'a' + u8::try_from((r >> 16) % 26).unwrap()
                    }
                })
                .collect();
            let slow = bytes.iter().position(|&b| b < 0x20 || b == b'"' || b == b'\\');
            assert_eq!(unescaped_len(&bytes), slow.unwrap_or(len), "{bytes:?}");
            let slow = bytes.iter().position(|&b| !PLAIN[usize::from(b)]);
            assert_eq!(plain_len(&bytes), slow.unwrap_or(len), "{bytes:?}");
        }
    }

    #[test]
    fn malformed_input_does_not_panic() {
        assert_eq!(decode_code_point(&[0xe2, 0x82]), (0xfffd, 1));
        assert_eq!(decode_code_point(&[0xff]), (0xfffd, 1));
        assert_eq!(escaped(&[b'a', 0xe2]), r#""a\ufffd""#);
    }
}
