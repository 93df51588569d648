//! Length-prefixed frames for the prefork pool's pipes.
//!
//! A frame is `u32 LE payload length | u64 LE job id | u8 kind | payload`. The job id lets a child hold
//! several jobs in flight and answer them in any order; the kind says what the payload is (job, result,
//! ready, ...; the kinds are defined in python/fastq/worker/ipc.py, which must match nothing here: framing
//! does not interpret them).

pub const HEADER_SIZE: usize = 4 + 8 + 1;
/// Larger announced lengths mean the stream is corrupt (or not a fastq pipe at all).
pub const MAX_PAYLOAD: usize = 1 << 30;

#[derive(Debug, PartialEq, Eq)]
pub struct Frame {
    pub job_id: u64,
    pub kind: u8,
    pub payload: Vec<u8>,
}

#[derive(Debug, PartialEq, Eq)]
pub struct FrameTooLarge(pub usize);

impl std::fmt::Display for FrameTooLarge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "frame payload of {} bytes exceeds the {} byte limit",
            self.0, MAX_PAYLOAD
        )
    }
}

/// Appends one frame to `out`.
pub fn encode_into(out: &mut Vec<u8>, job_id: u64, kind: u8, payload: &[u8]) -> Result<(), FrameTooLarge> {
    if payload.len() > MAX_PAYLOAD {
        return Err(FrameTooLarge(payload.len()));
    }
    out.reserve(HEADER_SIZE + payload.len());
    // MAX_PAYLOAD < u32::MAX, so the cast cannot truncate.
    #[allow(clippy::cast_possible_truncation)]
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&job_id.to_le_bytes());
    out.push(kind);
    out.extend_from_slice(payload);
    Ok(())
}

/// Incremental decoder: keeps the bytes of an incomplete frame until the rest arrives.
#[derive(Default)]
pub struct Decoder {
    buf: Vec<u8>,
    /// Start of the first byte not yet consumed; compacted lazily so a burst of small frames is O(n).
    pos: usize,
}

impl Decoder {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn buffered(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// Appends `data` and returns every frame it completes, in order.
    pub fn feed(&mut self, data: &[u8]) -> Result<Vec<Frame>, FrameTooLarge> {
        if self.pos > 0 && self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
        }
        self.buf.extend_from_slice(data);
        let mut frames = Vec::new();
        loop {
            let avail = &self.buf[self.pos..];
            if avail.len() < HEADER_SIZE {
                break;
            }
            let len = u32::from_le_bytes(avail[0..4].try_into().expect("4 bytes")) as usize;
            if len > MAX_PAYLOAD {
                return Err(FrameTooLarge(len));
            }
            if avail.len() < HEADER_SIZE + len {
                break;
            }
            let job_id = u64::from_le_bytes(avail[4..12].try_into().expect("8 bytes"));
            let kind = avail[12];
            let payload = avail[HEADER_SIZE..HEADER_SIZE + len].to_vec();
            self.pos += HEADER_SIZE + len;
            frames.push(Frame { job_id, kind, payload });
        }
        if self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
        } else if self.pos > 64 * 1024 && self.pos * 2 > self.buf.len() {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        Ok(frames)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(job_id: u64, kind: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        encode_into(&mut out, job_id, kind, payload).unwrap();
        out
    }

    #[test]
    fn roundtrip_in_one_piece() {
        let mut bytes = frame(1, 2, b"hello");
        bytes.extend(frame(u64::MAX, 255, b""));
        let frames = Decoder::new().feed(&bytes).unwrap();
        assert_eq!(
            frames,
            vec![
                Frame {
                    job_id: 1,
                    kind: 2,
                    payload: b"hello".to_vec()
                },
                Frame {
                    job_id: u64::MAX,
                    kind: 255,
                    payload: vec![]
                },
            ]
        );
    }

    #[test]
    fn byte_by_byte() {
        let bytes = frame(7, 1, b"payload");
        let mut dec = Decoder::new();
        let mut got = Vec::new();
        for b in &bytes {
            got.extend(dec.feed(std::slice::from_ref(b)).unwrap());
        }
        assert_eq!(
            got,
            vec![Frame {
                job_id: 7,
                kind: 1,
                payload: b"payload".to_vec()
            }]
        );
        assert_eq!(dec.buffered(), 0);
    }

    #[test]
    fn keeps_partial_frame() {
        let bytes = frame(3, 4, b"abcdef");
        let mut dec = Decoder::new();
        assert!(dec.feed(&bytes[..10]).unwrap().is_empty());
        assert_eq!(dec.buffered(), 10);
        assert_eq!(dec.feed(&bytes[10..]).unwrap().len(), 1);
    }

    #[test]
    fn rejects_oversized_header() {
        let mut bytes = vec![0xff, 0xff, 0xff, 0xff];
        bytes.extend([0u8; 9]);
        assert_eq!(Decoder::new().feed(&bytes), Err(FrameTooLarge(u32::MAX as usize)));
    }

    #[test]
    fn many_small_frames_compact() {
        let mut dec = Decoder::new();
        let one = frame(9, 0, &[1u8; 100]);
        for _ in 0..5000 {
            let mut chunk = one.clone();
            chunk.extend_from_slice(&one[..50]);
            let n = dec.feed(&chunk).unwrap().len();
            assert!(n >= 1);
            let rest = dec.feed(&one[50..]).unwrap();
            assert_eq!(rest.len(), 1);
        }
        assert_eq!(dec.buffered(), 0);
    }
}
