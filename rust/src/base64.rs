//! Standard base64 with padding (RFC 4648 §4), which kombu's virtual transports use for message bodies.
//! Small enough to own rather than depend on a crate for.

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
const INVALID: u8 = 0xff;
const DECODE: [u8; 256] = {
    let mut table = [INVALID; 256];
    let mut i = 0;
    while i < 64 {
        #[allow(clippy::cast_possible_truncation)] // i < 64
        let value = i as u8;
        table[ALPHABET[i] as usize] = value;
        i += 1;
    }
    table
};

pub fn encoded_len(len: usize) -> usize {
    len.div_ceil(3) * 4
}

pub fn encode_into(out: &mut Vec<u8>, data: &[u8]) {
    out.reserve(encoded_len(data.len()));
    let sextet = |v: u32, shift: u32| ALPHABET[((v >> shift) & 0x3f) as usize];
    let mut chunks = data.chunks_exact(3);
    for c in &mut chunks {
        let v = u32::from(c[0]) << 16 | u32::from(c[1]) << 8 | u32::from(c[2]);
        out.extend_from_slice(&[sextet(v, 18), sextet(v, 12), sextet(v, 6), sextet(v, 0)]);
    }
    match *chunks.remainder() {
        [a] => {
            let v = u32::from(a) << 16;
            out.extend_from_slice(&[sextet(v, 18), sextet(v, 12), b'=', b'=']);
        }
        [a, b] => {
            let v = u32::from(a) << 16 | u32::from(b) << 8;
            out.extend_from_slice(&[sextet(v, 18), sextet(v, 12), sextet(v, 6), b'=']);
        }
        _ => {}
    }
}

#[derive(Debug, PartialEq, Eq)]
pub struct InvalidBase64;

/// Decodes padded base64. ASCII whitespace is skipped (as `base64.b64decode` skips line breaks);
/// anything else outside the alphabet, or bad padding, is an error.
pub fn decode(text: &[u8]) -> Result<Vec<u8>, InvalidBase64> {
    let mut out = Vec::with_capacity(text.len() / 4 * 3);
    let mut quad = [0u8; 4];
    let mut filled = 0;
    let mut padding = 0;
    for &c in text.iter().filter(|c| !c.is_ascii_whitespace()) {
        if c == b'=' {
            // Padding may only fill the last one or two places of the final quad.
            if filled < 2 {
                return Err(InvalidBase64);
            }
            padding += 1;
            quad[filled] = 0;
        } else {
            let v = DECODE[usize::from(c)];
            if v == INVALID || padding > 0 {
                return Err(InvalidBase64);
            }
            quad[filled] = v;
        }
        filled += 1;
        if filled == 4 {
            let v = u32::from(quad[0]) << 18 | u32::from(quad[1]) << 12 | u32::from(quad[2]) << 6 | u32::from(quad[3]);
            out.extend_from_slice(&v.to_be_bytes()[1..4 - padding]);
            filled = 0;
            if padding > 0 {
                padding = 3; // Nothing may follow a padded quad.
            }
        }
    }
    if filled != 0 {
        return Err(InvalidBase64);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(data: &[u8]) -> String {
        let mut out = Vec::new();
        encode_into(&mut out, data);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn rfc4648_vectors() {
        for (plain, coded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(encode(plain.as_bytes()), coded);
            assert_eq!(decode(coded.as_bytes()), Ok(plain.as_bytes().to_vec()));
        }
    }

    #[test]
    fn all_bytes_round_trip() {
        let data: Vec<u8> = (0..=255).cycle().take(1000).collect();
        for n in 0..data.len() {
            assert_eq!(decode(encode(&data[..n]).as_bytes()), Ok(data[..n].to_vec()));
        }
    }

    #[test]
    fn rejects_malformed() {
        for bad in ["Zg", "Zg=", "Z===", "=Zg=", "Zg==Zg==", "Zm9v!", "Zm9vY", "Zg==x"] {
            assert_eq!(decode(bad.as_bytes()), Err(InvalidBase64), "{bad}");
        }
        assert_eq!(decode(b"Zm9v\nYmFy\n"), Ok(b"foobar".to_vec()));
    }
}
