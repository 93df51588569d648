//! The msgpack encodings, each in the smallest form msgpack-python picks (its `pack_template.h`).

/// Lengths must fit the 32-bit length fields.
#[derive(Debug, PartialEq, Eq)]
pub struct TooLarge;

pub fn write_nil(out: &mut Vec<u8>) {
    out.push(0xc0);
}

pub fn write_bool(out: &mut Vec<u8>, v: bool) {
    out.push(if v { 0xc3 } else { 0xc2 });
}

pub fn write_uint(out: &mut Vec<u8>, v: u64) {
    match (u8::try_from(v), u16::try_from(v), u32::try_from(v)) {
        (Ok(b), _, _) if b < 0x80 => out.push(b),
        (Ok(b), _, _) => out.extend_from_slice(&[0xcc, b]),
        (_, Ok(h), _) => {
            out.push(0xcd);
            out.extend_from_slice(&h.to_be_bytes());
        }
        (_, _, Ok(w)) => {
            out.push(0xce);
            out.extend_from_slice(&w.to_be_bytes());
        }
        _ => {
            out.push(0xcf);
            out.extend_from_slice(&v.to_be_bytes());
        }
    }
}

/// Non-negative values take the unsigned forms, as msgpack-python writes them.
pub fn write_int(out: &mut Vec<u8>, v: i64) {
    if let Ok(u) = u64::try_from(v) {
        return write_uint(out, u);
    }
    match (i8::try_from(v), i16::try_from(v), i32::try_from(v)) {
        (Ok(b), _, _) if b >= -32 => out.extend_from_slice(&b.to_be_bytes()),
        (Ok(b), _, _) => {
            out.push(0xd0);
            out.extend_from_slice(&b.to_be_bytes());
        }
        (_, Ok(h), _) => {
            out.push(0xd1);
            out.extend_from_slice(&h.to_be_bytes());
        }
        (_, _, Ok(w)) => {
            out.push(0xd2);
            out.extend_from_slice(&w.to_be_bytes());
        }
        _ => {
            out.push(0xd3);
            out.extend_from_slice(&v.to_be_bytes());
        }
    }
}

/// Always float 64 (msgpack-python only writes float 32 with `use_single_float`).
pub fn write_f64(out: &mut Vec<u8>, v: f64) {
    out.push(0xcb);
    out.extend_from_slice(&v.to_be_bytes());
}

/// A header with a 5-bit (or 4-bit) fixed form, then 8-, 16- and 32-bit length forms; `None` marks a
/// form the type does not have.
struct Family {
    fixed: Option<(u8, usize)>,
    len8: Option<u8>,
    len16: u8,
    len32: u8,
}

const STR: Family = Family {
    fixed: Some((0xa0, 32)),
    len8: Some(0xd9),
    len16: 0xda,
    len32: 0xdb,
};
const BIN: Family = Family {
    fixed: None,
    len8: Some(0xc4),
    len16: 0xc5,
    len32: 0xc6,
};
const ARRAY: Family = Family {
    fixed: Some((0x90, 16)),
    len8: None,
    len16: 0xdc,
    len32: 0xdd,
};
const MAP: Family = Family {
    fixed: Some((0x80, 16)),
    len8: None,
    len16: 0xde,
    len32: 0xdf,
};

#[inline]
fn write_header(out: &mut Vec<u8>, family: &Family, len: usize) -> Result<(), TooLarge> {
    if let Some((marker, limit)) = family.fixed {
        if len < limit {
            out.push(marker | u8::try_from(len).expect("fixed forms hold lengths below 32"));
            return Ok(());
        }
    }
    match (family.len8, u8::try_from(len), u16::try_from(len)) {
        (Some(marker), Ok(n), _) => out.extend_from_slice(&[marker, n]),
        (_, _, Ok(n)) => {
            out.push(family.len16);
            out.extend_from_slice(&n.to_be_bytes());
        }
        _ => {
            let n = u32::try_from(len).map_err(|_| TooLarge)?;
            out.push(family.len32);
            out.extend_from_slice(&n.to_be_bytes());
        }
    }
    Ok(())
}

pub fn write_str(out: &mut Vec<u8>, s: &[u8]) -> Result<(), TooLarge> {
    write_header(out, &STR, s.len())?;
    out.extend_from_slice(s);
    Ok(())
}

pub fn write_bin(out: &mut Vec<u8>, b: &[u8]) -> Result<(), TooLarge> {
    write_header(out, &BIN, b.len())?;
    out.extend_from_slice(b);
    Ok(())
}

pub fn write_array_header(out: &mut Vec<u8>, len: usize) -> Result<(), TooLarge> {
    write_header(out, &ARRAY, len)
}

pub fn write_map_header(out: &mut Vec<u8>, len: usize) -> Result<(), TooLarge> {
    write_header(out, &MAP, len)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn int(v: i64) -> Vec<u8> {
        let mut out = Vec::new();
        write_int(&mut out, v);
        out
    }

    fn uint(v: u64) -> Vec<u8> {
        let mut out = Vec::new();
        write_uint(&mut out, v);
        out
    }

    #[test]
    fn integers_take_the_smallest_form() {
        assert_eq!(int(0), [0x00]);
        assert_eq!(int(127), [0x7f]);
        assert_eq!(int(128), [0xcc, 0x80]);
        assert_eq!(int(255), [0xcc, 0xff]);
        assert_eq!(int(256), [0xcd, 0x01, 0x00]);
        assert_eq!(int(65_536), [0xce, 0, 1, 0, 0]);
        assert_eq!(int(1 << 32), [0xcf, 0, 0, 0, 1, 0, 0, 0, 0]);
        assert_eq!(int(-1), [0xff]);
        assert_eq!(int(-32), [0xe0]);
        assert_eq!(int(-33), [0xd0, 0xdf]);
        assert_eq!(int(-128), [0xd0, 0x80]);
        assert_eq!(int(-129), [0xd1, 0xff, 0x7f]);
        assert_eq!(int(-32_769), [0xd2, 0xff, 0xff, 0x7f, 0xff]);
        assert_eq!(int(i64::MIN), [0xd3, 0x80, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(uint(u64::MAX), [0xcf, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]);
    }

    #[test]
    fn headers() {
        let mut out = Vec::new();
        write_str(&mut out, &[b'a'; 31]).unwrap();
        assert_eq!(out[0], 0xbf);
        out.clear();
        write_str(&mut out, &[b'a'; 32]).unwrap();
        assert_eq!(out[..2], [0xd9, 32]);
        out.clear();
        write_bin(&mut out, b"").unwrap();
        assert_eq!(out, [0xc4, 0]);
        out.clear();
        write_array_header(&mut out, 15).unwrap();
        write_array_header(&mut out, 16).unwrap();
        write_map_header(&mut out, 65_536).unwrap();
        assert_eq!(out, [0x9f, 0xdc, 0, 16, 0xdf, 0, 1, 0, 0]);
    }

    #[test]
    fn floats_are_always_64_bit() {
        let mut out = Vec::new();
        write_f64(&mut out, 1.5);
        assert_eq!(out, [0xcb, 0x3f, 0xf8, 0, 0, 0, 0, 0, 0]);
    }
}
