//! Body compression as kombu applies it, flagged by the `compression` header with kombu's mime names.
//!
//! Both codecs call the system libraries CPython's `zlib` and `bz2` modules use, with the same parameters,
//! so compressed bodies are byte-identical to what a Celery producer sends (and the same after a
//! redelivery re-encodes nothing). Decompression follows `zlib.decompress` (data after the end of the
//! stream is ignored) and `bz2.decompress` (concatenated streams are joined, trailing garbage ignored).

use bzip2::{Action, Status as BzStatus};
use flate2::{Compression, FlushCompress, FlushDecompress, Status};

pub const GZIP_MIME: &str = "application/x-gzip";
pub const BZ2_MIME: &str = "application/x-bz2";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Codec {
    /// A zlib stream (despite the name) at level 6, as `zlib.compress(data)`.
    Zlib,
    /// bzip2 at level 9, as `bz2.compress(data)`.
    Bzip2,
}

impl Codec {
    pub fn from_mime(mime: &str) -> Option<Self> {
        match mime {
            GZIP_MIME => Some(Self::Zlib),
            BZ2_MIME => Some(Self::Bzip2),
            _ => None,
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
pub struct CorruptData(pub String);

impl std::fmt::Display for CorruptData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Offsets into inputs below `usize::MAX` bytes, counted by the codecs as u64.
fn offset(total: u64) -> usize {
    usize::try_from(total).expect("the codec consumed no more than the input")
}

pub fn compress(codec: Codec, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() / 2 + 64);
    match codec {
        Codec::Zlib => {
            let mut z = flate2::Compress::new(Compression::new(6), true);
            // One Z_FINISH pass over the whole input, as zlib.compress does; more output space just
            // lets deflate continue, the bytes do not depend on it.
            while z
                .compress_vec(&data[offset(z.total_in())..], &mut out, FlushCompress::Finish)
                .expect("deflate cannot fail on a well-formed stream")
                != Status::StreamEnd
            {
                out.reserve(out.capacity());
            }
        }
        Codec::Bzip2 => {
            let mut bz = bzip2::Compress::new(bzip2::Compression::best(), 0);
            while bz
                .compress_vec(&data[offset(bz.total_in())..], &mut out, Action::Finish)
                .expect("bzip2 cannot fail on a well-formed stream")
                != BzStatus::StreamEnd
            {
                out.reserve(out.capacity());
            }
        }
    }
    out
}

pub fn decompress(codec: Codec, data: &[u8]) -> Result<Vec<u8>, CorruptData> {
    match codec {
        Codec::Zlib => inflate(data),
        Codec::Bzip2 => bunzip(data),
    }
}

fn inflate(data: &[u8]) -> Result<Vec<u8>, CorruptData> {
    let mut z = flate2::Decompress::new(true);
    let mut out = Vec::with_capacity(data.len().saturating_mul(4).max(64));
    loop {
        let status = z
            .decompress_vec(&data[offset(z.total_in())..], &mut out, FlushDecompress::None)
            .map_err(|e| CorruptData(format!("zlib: {}", e.message().unwrap_or("invalid data"))))?;
        if status == Status::StreamEnd {
            return Ok(out);
        }
        // inflate stops when it runs out of output space or of input; only the former can be fixed.
        if out.len() < out.capacity() {
            return Err(CorruptData("zlib: incomplete or truncated stream".to_owned()));
        }
        out.reserve(out.capacity());
    }
}

fn bunzip(mut data: &[u8]) -> Result<Vec<u8>, CorruptData> {
    let mut out = Vec::with_capacity(data.len().saturating_mul(4).max(64));
    let mut streams = 0;
    while !data.is_empty() {
        let mut bz = bzip2::Decompress::new(false);
        loop {
            match bz.decompress_vec(&data[offset(bz.total_in())..], &mut out) {
                Ok(BzStatus::StreamEnd) => break,
                Ok(_) if out.len() == out.capacity() => out.reserve(out.capacity()),
                Ok(_) => {
                    return Err(CorruptData(
                        "bz2: compressed data ended before the end-of-stream marker was reached".to_owned(),
                    ))
                }
                // Like bz2.decompress: garbage after a complete stream is ignored.
                Err(_) if streams > 0 => return Ok(out),
                Err(e) => return Err(CorruptData(format!("bz2: invalid data stream ({e})"))),
            }
        }
        streams += 1;
        data = &data[offset(bz.total_in())..];
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        (0..50_000u32).flat_map(|i| (i % 251).to_le_bytes()).collect()
    }

    #[test]
    fn round_trips() {
        for codec in [Codec::Zlib, Codec::Bzip2] {
            for data in [Vec::new(), b"x".to_vec(), sample()] {
                assert_eq!(decompress(codec, &compress(codec, &data)), Ok(data));
            }
        }
    }

    #[test]
    fn zlib_header_and_trailing_data() {
        let packed = compress(Codec::Zlib, b"hello");
        assert_eq!(packed[..2], [0x78, 0x9c]);
        let mut with_tail = packed.clone();
        with_tail.extend_from_slice(b"garbage");
        assert_eq!(decompress(Codec::Zlib, &with_tail), Ok(b"hello".to_vec()));
        assert!(decompress(Codec::Zlib, &packed[..packed.len() - 2]).is_err());
        assert!(decompress(Codec::Zlib, b"").is_err());
        assert!(decompress(Codec::Zlib, b"not zlib").is_err());
    }

    #[test]
    fn bzip2_streams() {
        let mut two = compress(Codec::Bzip2, b"ab");
        two.extend(compress(Codec::Bzip2, b"cd"));
        assert_eq!(decompress(Codec::Bzip2, &two), Ok(b"abcd".to_vec()));
        two.extend_from_slice(b"garbage");
        assert_eq!(decompress(Codec::Bzip2, &two), Ok(b"abcd".to_vec()));
        assert_eq!(decompress(Codec::Bzip2, b""), Ok(Vec::new()));
        let one = compress(Codec::Bzip2, b"abc");
        assert!(decompress(Codec::Bzip2, &one[..one.len() - 3]).is_err());
        assert!(decompress(Codec::Bzip2, b"garbage").is_err());
    }

    #[test]
    fn mime_names() {
        assert_eq!(Codec::from_mime("application/x-gzip"), Some(Codec::Zlib));
        assert_eq!(Codec::from_mime("application/x-bz2"), Some(Codec::Bzip2));
        assert_eq!(Codec::from_mime("zlib"), None);
    }
}
