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

// The casts below are guarded by the range checks right before them.
#[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
pub fn write_uint(out: &mut Vec<u8>, v: u64) {
    if v < 0x80 {
        out.push(v as u8);
    } else if v <= u64::from(u8::MAX) {
        out.extend_from_slice(&[0xcc, v as u8]);
    } else if v <= u64::from(u16::MAX) {
        out.push(0xcd);
        out.extend_from_slice(&(v as u16).to_be_bytes());
    } else if v <= u64::from(u32::MAX) {
        out.push(0xce);
        out.extend_from_slice(&(v as u32).to_be_bytes());
    } else {
        out.push(0xcf);
        out.extend_from_slice(&v.to_be_bytes());
    }
}

/// Non-negative values take the unsigned forms, as msgpack-python writes them.
#[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
pub fn write_int(out: &mut Vec<u8>, v: i64) {
    if v >= 0 {
        write_uint(out, v.unsigned_abs());
    } else if v >= -32 {
        out.push(v as u8);
    } else if v >= i64::from(i8::MIN) {
        out.extend_from_slice(&[0xd0, v as u8]);
    } else if v >= i64::from(i16::MIN) {
        out.push(0xd1);
        out.extend_from_slice(&(v as i16).to_be_bytes());
    } else if v >= i64::from(i32::MIN) {
        out.push(0xd2);
        out.extend_from_slice(&(v as i32).to_be_bytes());
    } else {
        out.push(0xd3);
        out.extend_from_slice(&v.to_be_bytes());
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
#[allow(clippy::cast_possible_truncation)]
fn write_header(out: &mut Vec<u8>, family: &Family, len: usize) -> Result<(), TooLarge> {
    match family.fixed {
        Some((marker, limit)) if len < limit => out.push(marker | len as u8),
        _ => match family.len8 {
            Some(marker) if len <= usize::from(u8::MAX) => out.extend_from_slice(&[marker, len as u8]),
            _ if len <= usize::from(u16::MAX) => {
                out.push(family.len16);
                out.extend_from_slice(&(len as u16).to_be_bytes());
            }
            _ => {
                let len = u32::try_from(len).map_err(|_| TooLarge)?;
                out.push(family.len32);
                out.extend_from_slice(&len.to_be_bytes());
            }
        },
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
