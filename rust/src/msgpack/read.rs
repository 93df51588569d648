//! Splits msgpack bytes into tokens (scalars and container headers); building values is the caller's.

#[derive(Debug, PartialEq)]
pub enum Token<'a> {
    Nil,
    Bool(bool),
    UInt(u64),
    Int(i64),
    Float(f64),
    /// Not yet checked to be UTF-8 (the caller decides how to report that).
    Str(&'a [u8]),
    Bin(&'a [u8]),
    Array(usize),
    Map(usize),
}

#[derive(Debug, PartialEq, Eq)]
pub enum ReadError {
    Incomplete,
    UnknownHeader(u8),
    /// Extension types (msgpack's ExtType, `Timestamp`) carry nothing the task protocol uses.
    Ext(i8),
}

pub struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Self { data, pos: 0 }
    }

    pub fn remaining(&self) -> usize {
        self.data.len() - self.pos
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], ReadError> {
        let end = self.pos.checked_add(n).ok_or(ReadError::Incomplete)?;
        let bytes = self.data.get(self.pos..end).ok_or(ReadError::Incomplete)?;
        self.pos = end;
        Ok(bytes)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], ReadError> {
        Ok(self.take(N)?.try_into().expect("take returns N bytes"))
    }

    fn len8(&mut self) -> Result<usize, ReadError> {
        Ok(usize::from(self.array::<1>()?[0]))
    }

    fn len16(&mut self) -> Result<usize, ReadError> {
        Ok(usize::from(u16::from_be_bytes(self.array()?)))
    }

    fn len32(&mut self) -> Result<usize, ReadError> {
        usize::try_from(u32::from_be_bytes(self.array()?)).map_err(|_| ReadError::Incomplete)
    }

    /// Skips an extension's payload (so truncation is reported as such) and refuses it.
    fn ext(&mut self, len: usize) -> Result<Token<'a>, ReadError> {
        let code = i8::from_be_bytes(self.array()?);
        self.take(len)?;
        Err(ReadError::Ext(code))
    }

    pub fn next_token(&mut self) -> Result<Token<'a>, ReadError> {
        let marker = self.array::<1>()?[0];
        let token = match marker {
            0x00..=0x7f => Token::UInt(u64::from(marker)),
            0x80..=0x8f => Token::Map(usize::from(marker & 0x0f)),
            0x90..=0x9f => Token::Array(usize::from(marker & 0x0f)),
            0xa0..=0xbf => Token::Str(self.take(usize::from(marker & 0x1f))?),
            0xc0 => Token::Nil,
            0xc2 => Token::Bool(false),
            0xc3 => Token::Bool(true),
            0xc4 => Token::Bin(self.take_len(Self::len8)?),
            0xc5 => Token::Bin(self.take_len(Self::len16)?),
            0xc6 => Token::Bin(self.take_len(Self::len32)?),
            0xc7 => return self.len8().and_then(|n| self.ext(n)),
            0xc8 => return self.len16().and_then(|n| self.ext(n)),
            0xc9 => return self.len32().and_then(|n| self.ext(n)),
            0xca => Token::Float(f64::from(f32::from_be_bytes(self.array()?))),
            0xcb => Token::Float(f64::from_be_bytes(self.array()?)),
            0xcc => Token::UInt(u64::from(self.array::<1>()?[0])),
            0xcd => Token::UInt(u64::from(u16::from_be_bytes(self.array()?))),
            0xce => Token::UInt(u64::from(u32::from_be_bytes(self.array()?))),
            0xcf => Token::UInt(u64::from_be_bytes(self.array()?)),
            0xd0 => Token::Int(i64::from(i8::from_be_bytes(self.array()?))),
            0xd1 => Token::Int(i64::from(i16::from_be_bytes(self.array()?))),
            0xd2 => Token::Int(i64::from(i32::from_be_bytes(self.array()?))),
            0xd3 => Token::Int(i64::from_be_bytes(self.array()?)),
            0xd4..=0xd8 => return self.ext(1 << (marker - 0xd4)),
            0xd9 => Token::Str(self.take_len(Self::len8)?),
            0xda => Token::Str(self.take_len(Self::len16)?),
            0xdb => Token::Str(self.take_len(Self::len32)?),
            0xdc => Token::Array(self.len16()?),
            0xdd => Token::Array(self.len32()?),
            0xde => Token::Map(self.len16()?),
            0xdf => Token::Map(self.len32()?),
            0xe0..=0xff => Token::Int(i64::from(i8::from_be_bytes([marker]))),
            0xc1 => return Err(ReadError::UnknownHeader(marker)),
        };
        Ok(token)
    }

    fn take_len(&mut self, len: fn(&mut Self) -> Result<usize, ReadError>) -> Result<&'a [u8], ReadError> {
        let n = len(self)?;
        self.take(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens(data: &[u8]) -> Result<Vec<Token<'_>>, ReadError> {
        let mut reader = Reader::new(data);
        let mut out = Vec::new();
        while reader.remaining() > 0 {
            out.push(reader.next_token()?);
        }
        Ok(out)
    }

    #[test]
    fn scalars() {
        assert_eq!(
            tokens(&[0x00, 0x7f, 0xff, 0xe0, 0xc0, 0xc2, 0xc3, 0xcc, 0xff, 0xd0, 0x80]),
            Ok(vec![
                Token::UInt(0),
                Token::UInt(127),
                Token::Int(-1),
                Token::Int(-32),
                Token::Nil,
                Token::Bool(false),
                Token::Bool(true),
                Token::UInt(255),
                Token::Int(-128),
            ])
        );
        assert_eq!(tokens(&[0xca, 0x3f, 0x80, 0, 0]), Ok(vec![Token::Float(1.0)]));
        assert_eq!(
            tokens(&[0xcf, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]),
            Ok(vec![Token::UInt(u64::MAX)])
        );
    }

    #[test]
    fn strings_and_containers() {
        assert_eq!(
            tokens(&[0xa1, b'a', 0xd9, 1, b'b', 0xc4, 2, 1, 2, 0x92, 0xdc, 0, 3, 0x81, 0xdf, 0, 0, 0, 1]),
            Ok(vec![
                Token::Str(b"a"),
                Token::Str(b"b"),
                Token::Bin(&[1, 2]),
                Token::Array(2),
                Token::Array(3),
                Token::Map(1),
                Token::Map(1),
            ])
        );
    }

    #[test]
    fn errors() {
        assert_eq!(tokens(&[0xc1]), Err(ReadError::UnknownHeader(0xc1)));
        assert_eq!(tokens(&[0xd4, 1, 2]), Err(ReadError::Ext(1)));
        assert_eq!(tokens(&[0xd5, 1, 2]), Err(ReadError::Incomplete));
        assert_eq!(tokens(&[0xc7, 2, 0xff, 1, 2]), Err(ReadError::Ext(-1)));
        assert_eq!(tokens(&[0xa2, b'a']), Err(ReadError::Incomplete));
        assert_eq!(tokens(&[0xdb, 0xff, 0xff, 0xff, 0xff]), Err(ReadError::Incomplete));
        assert_eq!(tokens(&[0xcd, 1]), Err(ReadError::Incomplete));
    }
}
