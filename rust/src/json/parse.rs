//! A JSON parser that accepts exactly what CPython's `json.loads` accepts (NaN, Infinity, big integers,
//! lone surrogate escapes) and reports errors at the same positions with the same wording, so messages
//! stay familiar to anyone who has read a `JSONDecodeError`.
//!
//! It is generic over a [`Sink`] that builds the values, so the grammar can be tested without Python.

use super::string::{is_surrogate, push_code_point, unescaped_len};

/// A decoded string. WTF-8 text may hold lone surrogates (from `\uD800`-style escapes, or from a Python
/// str input that had them).
#[derive(Clone, Copy, Debug)]
pub enum Str<'a> {
    Utf8(&'a str),
    Wtf8(&'a [u8]),
}

impl<'a> Str<'a> {
    pub fn as_bytes(&self) -> &'a [u8] {
        match *self {
            Str::Utf8(s) => s.as_bytes(),
            Str::Wtf8(b) => b,
        }
    }
}

/// A document: UTF-8 text, or WTF-8 (a Python str holding lone surrogates, encoded with `surrogatepass`).
#[derive(Clone, Copy, Debug)]
pub enum Input<'a> {
    Utf8(&'a str),
    Wtf8(&'a [u8]),
}

impl<'a> Input<'a> {
    pub fn as_bytes(&self) -> &'a [u8] {
        match *self {
            Input::Utf8(s) => s.as_bytes(),
            Input::Wtf8(b) => b,
        }
    }
}

/// Builds values as the parser recognises them; containers are built bottom-up.
pub trait Sink {
    type Value;
    type Key;
    type Array;
    type Object;
    type Error;

    fn null(&mut self) -> Result<Self::Value, Self::Error>;
    fn boolean(&mut self, v: bool) -> Result<Self::Value, Self::Error>;
    fn int(&mut self, v: i64) -> Result<Self::Value, Self::Error>;
    /// An integer outside i64, as its decimal text (with an optional leading `-`).
    fn big_int(&mut self, digits: &str) -> Result<Self::Value, Self::Error>;
    fn float(&mut self, v: f64) -> Result<Self::Value, Self::Error>;
    fn string(&mut self, s: Str<'_>) -> Result<Self::Value, Self::Error>;
    fn key(&mut self, s: Str<'_>) -> Result<Self::Key, Self::Error>;
    fn begin_array(&mut self) -> Result<Self::Array, Self::Error>;
    fn push(&mut self, array: &mut Self::Array, v: Self::Value) -> Result<(), Self::Error>;
    fn end_array(&mut self, array: Self::Array) -> Result<Self::Value, Self::Error>;
    fn begin_object(&mut self) -> Result<Self::Object, Self::Error>;
    /// Called in document order; a repeated key replaces the earlier value (the sink decides how).
    fn insert(&mut self, object: &mut Self::Object, key: Self::Key, v: Self::Value) -> Result<(), Self::Error>;
    fn end_object(&mut self, object: Self::Object) -> Result<Self::Value, Self::Error>;
    /// Called before reading the array or object at nesting level `depth` (1 for the outermost), so the
    /// sink can refuse documents nested deeper than it can build.
    fn enter(&mut self, depth: usize, array: bool) -> Result<(), Self::Error>;
    /// Where a member of the object at nesting level `depth` is in the input, for sinks that also want
    /// parts of the text as it is: its key's bytes (quotes included), and where its value starts; then,
    /// once the value is read, `member_end` with where it ends. (Two calls rather than one with every
    /// position: the parser keeps nothing more on its stack across a nested value, where each byte counts
    /// ten thousand times over in the deepest documents.)
    #[inline]
    fn member_start(&mut self, _depth: usize, _key: (usize, usize), _value_start: usize) {}
    #[inline]
    fn member_end(&mut self, _depth: usize, _value_end: usize) {}
}

/// `pos` is a byte offset into the input; messages are CPython's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SyntaxError {
    pub msg: &'static str,
    pub pos: usize,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Error<E> {
    Syntax(SyntaxError),
    Sink(E),
}

impl<E> From<SyntaxError> for Error<E> {
    fn from(e: SyntaxError) -> Self {
        Error::Syntax(e)
    }
}

pub const EXPECTING_VALUE: &str = "Expecting value";

pub fn parse<S: Sink>(input: Input<'_>, sink: &mut S) -> Result<S::Value, Error<S::Error>> {
    let bytes = input.as_bytes();
    if bytes.starts_with("\u{feff}".as_bytes()) {
        return Err(syntax("Unexpected UTF-8 BOM (decode using utf-8-sig)", 0).into());
    }
    let mut p = Parser {
        input: bytes,
        text: match input {
            Input::Utf8(text) => Some(text),
            Input::Wtf8(_) => None,
        },
        pos: 0,
        scratch: Vec::new(),
    };
    p.skip_ws();
    let value = p.value(sink, 0)?;
    p.skip_ws();
    if p.pos != bytes.len() {
        return Err(syntax("Extra data", p.pos).into());
    }
    Ok(value)
}

fn syntax(msg: &'static str, pos: usize) -> SyntaxError {
    SyntaxError { msg, pos }
}

struct Parser<'a> {
    input: &'a [u8],
    /// The input as text when it is UTF-8, so unescaped strings are handed out as `&str` unchecked again.
    text: Option<&'a str>,
    pos: usize,
    /// Holds a string's decoded text when it has escapes (otherwise strings borrow the input).
    scratch: Vec<u8>,
}

impl Parser<'_> {
    fn peek(&self) -> Option<u8> {
        self.input.get(self.pos).copied()
    }

    fn skip_ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.pos += 1;
        }
    }

    fn rest_starts_with(&self, word: &[u8]) -> bool {
        self.input[self.pos..].starts_with(word)
    }

    fn value<S: Sink>(&mut self, sink: &mut S, depth: usize) -> Result<S::Value, Error<S::Error>> {
        let v = match self.peek() {
            None => return Err(syntax(EXPECTING_VALUE, self.pos).into()),
            Some(b'"') => {
                let s = self.string()?;
                sink.string(s)
            }
            Some(b'{') => return self.object(sink, depth + 1),
            Some(b'[') => return self.array(sink, depth + 1),
            Some(b'n') if self.rest_starts_with(b"null") => {
                self.pos += 4;
                sink.null()
            }
            Some(b't') if self.rest_starts_with(b"true") => {
                self.pos += 4;
                sink.boolean(true)
            }
            Some(b'f') if self.rest_starts_with(b"false") => {
                self.pos += 5;
                sink.boolean(false)
            }
            Some(b'N') if self.rest_starts_with(b"NaN") => {
                self.pos += 3;
                sink.float(f64::NAN)
            }
            Some(b'I') if self.rest_starts_with(b"Infinity") => {
                self.pos += 8;
                sink.float(f64::INFINITY)
            }
            Some(b'-') if self.rest_starts_with(b"-Infinity") => {
                self.pos += 9;
                sink.float(f64::NEG_INFINITY)
            }
            Some(_) => return self.number(sink),
        };
        v.map_err(Error::Sink)
    }

    #[inline(never)]
    fn array<S: Sink>(&mut self, sink: &mut S, depth: usize) -> Result<S::Value, Error<S::Error>> {
        sink.enter(depth, true).map_err(Error::Sink)?;
        self.pos += 1;
        self.skip_ws();
        let mut array = sink.begin_array().map_err(Error::Sink)?;
        if self.peek() != Some(b']') {
            loop {
                let v = self.value(sink, depth)?;
                sink.push(&mut array, v).map_err(Error::Sink)?;
                self.skip_ws();
                match self.peek() {
                    Some(b']') => break,
                    Some(b',') => {
                        self.pos += 1;
                        self.skip_ws();
                    }
                    _ => return Err(syntax("Expecting ',' delimiter", self.pos).into()),
                }
            }
        }
        self.pos += 1;
        sink.end_array(array).map_err(Error::Sink)
    }

    #[inline(never)]
    fn object<S: Sink>(&mut self, sink: &mut S, depth: usize) -> Result<S::Value, Error<S::Error>> {
        sink.enter(depth, false).map_err(Error::Sink)?;
        self.pos += 1;
        self.skip_ws();
        let mut object = sink.begin_object().map_err(Error::Sink)?;
        if self.peek() != Some(b'}') {
            loop {
                if self.peek() != Some(b'"') {
                    return Err(syntax("Expecting property name enclosed in double quotes", self.pos).into());
                }
                let key_start = self.pos;
                let key = {
                    let s = self.string()?;
                    sink.key(s).map_err(Error::Sink)?
                };
                let key_end = self.pos;
                self.skip_ws();
                if self.peek() != Some(b':') {
                    return Err(syntax("Expecting ':' delimiter", self.pos).into());
                }
                self.pos += 1;
                self.skip_ws();
                sink.member_start(depth, (key_start, key_end), self.pos);
                let v = self.value(sink, depth)?;
                sink.member_end(depth, self.pos);
                sink.insert(&mut object, key, v).map_err(Error::Sink)?;
                self.skip_ws();
                match self.peek() {
                    Some(b'}') => break,
                    Some(b',') => {
                        self.pos += 1;
                        self.skip_ws();
                    }
                    _ => return Err(syntax("Expecting ',' delimiter", self.pos).into()),
                }
            }
        }
        self.pos += 1;
        sink.end_object(object).map_err(Error::Sink)
    }

    /// `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][-+]?[0-9]+)?`; a dangling `.` or exponent is left for the caller
    /// to reject as extra data, as CPython's scanner does.
    #[inline(never)]
    fn number<S: Sink>(&mut self, sink: &mut S) -> Result<S::Value, Error<S::Error>> {
        let start = self.pos;
        let digit_at = |p: &Self, i: usize| p.input.get(i).is_some_and(u8::is_ascii_digit);
        if self.peek() == Some(b'-') {
            self.pos += 1;
        }
        match self.peek() {
            Some(b'0') => self.pos += 1,
            Some(b'1'..=b'9') => self.skip_digits(),
            _ => return Err(syntax(EXPECTING_VALUE, start).into()),
        }
        let mut is_float = false;
        if self.peek() == Some(b'.') && digit_at(self, self.pos + 1) {
            self.pos += 1;
            self.skip_digits();
            is_float = true;
        }
        if let Some(b'e' | b'E') = self.peek() {
            let mut end = self.pos + 1;
            if let Some(b'-' | b'+') = self.input.get(end) {
                end += 1;
            }
            if digit_at(self, end) {
                self.pos = end;
                self.skip_digits();
                is_float = true;
            }
        }
        let text = std::str::from_utf8(&self.input[start..self.pos]).expect("the scanned number is ASCII");
        if is_float {
            let v = text.parse::<f64>().expect("the scanned text is a valid float literal");
            return sink.float(v).map_err(Error::Sink);
        }
        match text.parse::<i64>() {
            Ok(v) => sink.int(v),
            Err(_) => sink.big_int(text),
        }
        .map_err(Error::Sink)
    }

    fn skip_digits(&mut self) {
        while self.peek().is_some_and(|b| b.is_ascii_digit()) {
            self.pos += 1;
        }
    }

    /// Reads the string starting at the opening quote under `self.pos`.
    ///
    /// Inlined for the usual string (no escape: a slice of the input), the rest out of line: returned from
    /// a call, the string's 32-byte `Result` went through memory and was read back wider than it was
    /// written, a store-forwarding stall after every key and string value (a tenth of `task_head`).
    #[inline(always)] // (`#[inline]` left it a call in `object`: task_head 1.53 against 1.46 µs)
    #[allow(clippy::inline_always)]
    fn string(&mut self) -> Result<Str<'_>, SyntaxError> {
        let start = self.pos + 1;
        let i = start + unescaped_len(&self.input[start..]);
        if self.input.get(i) == Some(&b'"') {
            self.pos = i + 1;
            // Both ends are next to an ASCII quote, so they are character boundaries.
            return Ok(match self.text {
                Some(text) => Str::Utf8(&text[start..i]),
                None => Str::Wtf8(&self.input[start..i]),
            });
        }
        self.string_rest(i)
    }

    /// `string` from `i`, where the plain prefix of the string starting at `self.pos` ended short of its
    /// closing quote.
    #[inline(never)]
    fn string_rest(&mut self, mut i: usize) -> Result<Str<'_>, SyntaxError> {
        let begin = self.pos;
        let start = begin + 1;
        // Fast path: no escapes, the text is a slice of the input.
        loop {
            match self.input.get(i) {
                None => return Err(syntax("Unterminated string starting at", begin)),
                Some(b'"') => {
                    self.pos = i + 1;
                    // Both ends are next to an ASCII quote, so they are character boundaries.
                    return Ok(match self.text {
                        Some(text) => Str::Utf8(&text[start..i]),
                        None => Str::Wtf8(&self.input[start..i]),
                    });
                }
                Some(b'\\') => break,
                Some(&b) if b < 0x20 => return Err(syntax("Invalid control character at", i)),
                Some(_) => i += 1,
            }
        }
        self.scratch.clear();
        self.scratch.extend_from_slice(&self.input[start..i]);
        let mut surrogates = self.text.is_none();
        loop {
            // `i` is at a backslash.
            let Some(&c) = self.input.get(i + 1) else {
                return Err(syntax("Unterminated string starting at", begin));
            };
            if c == b'u' {
                let cp = self.unicode_escape(i + 1)?;
                i = cp.1;
                surrogates |= is_surrogate(cp.0);
                push_code_point(&mut self.scratch, cp.0);
            } else {
                let unescaped = match c {
                    b'"' | b'\\' | b'/' => c,
                    b'b' => 0x08,
                    b'f' => 0x0c,
                    b'n' => b'\n',
                    b'r' => b'\r',
                    b't' => b'\t',
                    _ => return Err(syntax("Invalid \\escape", i)),
                };
                self.scratch.push(unescaped);
                i += 2;
            }
            let run_start = i;
            i += unescaped_len(&self.input[i..]);
            loop {
                match self.input.get(i) {
                    None => return Err(syntax("Unterminated string starting at", begin)),
                    Some(b'"' | b'\\') => break,
                    Some(&b) if b < 0x20 => return Err(syntax("Invalid control character at", i)),
                    Some(_) => i += 1,
                }
            }
            self.scratch.extend_from_slice(&self.input[run_start..i]);
            if self.input[i] == b'"' {
                self.pos = i + 1;
                return Ok(match std::str::from_utf8(&self.scratch) {
                    Ok(text) if !surrogates => Str::Utf8(text),
                    _ => Str::Wtf8(&self.scratch),
                });
            }
        }
    }

    /// Decodes `\uXXXX` (with `u_at` on the `u`), joining a following low-surrogate escape into one code
    /// point; returns the code point and the index just after what was consumed. Like CPython, a `\u`
    /// escape needs at least one more character after its four digits, and a pair is only joined when one
    /// more character follows the second escape too.
    fn unicode_escape(&self, u_at: usize) -> Result<(u32, usize), SyntaxError> {
        let end = u_at + 5;
        if end >= self.input.len() {
            return Err(syntax("Invalid \\uXXXX escape", u_at));
        }
        let cp = hex4(&self.input[u_at + 1..end]).ok_or(syntax("Invalid \\uXXXX escape", u_at))?;
        if (0xd800..0xdc00).contains(&cp) && end + 6 < self.input.len() && self.input[end..].starts_with(b"\\u") {
            let low = hex4(&self.input[end + 2..end + 6]).ok_or(syntax("Invalid \\uXXXX escape", end + 1))?;
            if (0xdc00..0xe000).contains(&low) {
                return Ok((0x1_0000 + ((cp - 0xd800) << 10) + (low - 0xdc00), end + 6));
            }
        }
        Ok((cp, end))
    }
}

fn hex4(digits: &[u8]) -> Option<u32> {
    digits
        .iter()
        .try_fold(0u32, |acc, &d| Some((acc << 4) | char::from(d).to_digit(16)?))
}

/// `json.JSONDecodeError`'s position text for a byte offset: 1-based line and column, 0-based character
/// index, all counted in code points as Python counts them.
pub fn describe_position(input: &[u8], pos: usize) -> (usize, usize, usize) {
    let before = &input[..pos.min(input.len())];
    let chars = |bytes: &[u8]| bytes.iter().filter(|&&b| b & 0xc0 != 0x80).count();
    let char_pos = chars(before);
    match before.iter().rposition(|&b| b == b'\n') {
        Some(nl) => {
            #[allow(clippy::naive_bytecount)] // error messages only; not worth a dependency
            let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
            (line, char_pos - chars(&before[..nl]), char_pos)
        }
        None => (1, char_pos + 1, char_pos),
    }
}
