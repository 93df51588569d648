//! A plain Rust value sink, so the parser's grammar and error positions are testable without Python.

use super::parse::{self, describe_position, Error, Sink, Str, SyntaxError};
use super::string::decode_code_point;

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i64),
    BigInt(String),
    Float(f64),
    /// Code points, so lone surrogates are representable.
    Str(Vec<u32>),
    Array(Vec<Value>),
    /// Insertion-ordered; a repeated key keeps its first position and takes the last value.
    Object(Vec<(Vec<u32>, Value)>),
}

fn code_points(s: Str<'_>) -> Vec<u32> {
    let mut out = Vec::new();
    let mut rest = s.as_bytes();
    while !rest.is_empty() {
        let (cp, len) = decode_code_point(rest);
        out.push(cp);
        rest = &rest[len..];
    }
    out
}

pub fn str_value(s: &str) -> Value {
    Value::Str(s.chars().map(u32::from).collect())
}

struct ValueSink;

#[derive(Debug, PartialEq, Eq)]
pub struct TooDeep;

const MAX_DEPTH: usize = 100;

impl Sink for ValueSink {
    type Value = Value;
    type Key = Vec<u32>;
    type Array = Vec<Value>;
    type Object = Vec<(Vec<u32>, Value)>;
    type Error = TooDeep;

    fn null(&mut self) -> Result<Value, TooDeep> {
        Ok(Value::Null)
    }
    fn boolean(&mut self, v: bool) -> Result<Value, TooDeep> {
        Ok(Value::Bool(v))
    }
    fn int(&mut self, v: i64) -> Result<Value, TooDeep> {
        Ok(Value::Int(v))
    }
    fn big_int(&mut self, digits: &str) -> Result<Value, TooDeep> {
        Ok(Value::BigInt(digits.to_owned()))
    }
    fn float(&mut self, v: f64) -> Result<Value, TooDeep> {
        Ok(Value::Float(v))
    }
    fn string(&mut self, s: Str<'_>) -> Result<Value, TooDeep> {
        Ok(Value::Str(code_points(s)))
    }
    fn key(&mut self, s: Str<'_>) -> Result<Vec<u32>, TooDeep> {
        Ok(code_points(s))
    }
    fn begin_array(&mut self) -> Result<Vec<Value>, TooDeep> {
        Ok(Vec::new())
    }
    fn push(&mut self, array: &mut Vec<Value>, v: Value) -> Result<(), TooDeep> {
        array.push(v);
        Ok(())
    }
    fn end_array(&mut self, array: Vec<Value>) -> Result<Value, TooDeep> {
        Ok(Value::Array(array))
    }
    fn begin_object(&mut self) -> Result<Self::Object, TooDeep> {
        Ok(Vec::new())
    }
    fn insert(&mut self, object: &mut Self::Object, key: Vec<u32>, v: Value) -> Result<(), TooDeep> {
        match object.iter_mut().find(|(k, _)| *k == key) {
            Some(slot) => slot.1 = v,
            None => object.push((key, v)),
        }
        Ok(())
    }
    fn end_object(&mut self, object: Self::Object) -> Result<Value, TooDeep> {
        Ok(Value::Object(object))
    }
    fn enter(&mut self, depth: usize, _array: bool) -> Result<(), TooDeep> {
        if depth > MAX_DEPTH {
            Err(TooDeep)
        } else {
            Ok(())
        }
    }
}

pub fn parse(input: &str) -> Result<Value, Error<TooDeep>> {
    parse::parse(parse::Input::Utf8(input), &mut ValueSink)
}

/// The `JSONDecodeError` message CPython would give.
fn error(input: &str) -> String {
    match parse(input) {
        Err(Error::Syntax(SyntaxError { msg, pos })) => {
            let (line, col, ch) = describe_position(input.as_bytes(), pos);
            format!("{msg}: line {line} column {col} (char {ch})")
        }
        other => panic!("{input:?} gave {other:?}"),
    }
}

mod tests {
    use super::*;
    use Value::*;

    #[test]
    fn scalars() {
        assert_eq!(parse(" null "), Ok(Null));
        assert_eq!(parse("true"), Ok(Bool(true)));
        assert_eq!(parse("-0"), Ok(Int(0)));
        assert_eq!(parse("-9223372036854775808"), Ok(Int(i64::MIN)));
        assert_eq!(parse("9223372036854775808"), Ok(BigInt("9223372036854775808".into())));
        assert_eq!(
            parse("-0.0").map(|v| matches!(v, Float(f) if f == 0.0 && f.is_sign_negative())),
            Ok(true)
        );
        assert_eq!(parse("1E+2"), Ok(Float(100.0)));
        assert_eq!(parse("1e400"), Ok(Float(f64::INFINITY)));
        assert_eq!(parse("-Infinity"), Ok(Float(f64::NEG_INFINITY)));
        assert!(matches!(parse("NaN"), Ok(Float(f)) if f.is_nan()));
        assert_eq!(parse("0.1"), Ok(Float(0.1)));
    }

    #[test]
    fn strings() {
        assert_eq!(parse(r#""a\"\\\/\b\f\n\r\t""#), Ok(str_value("a\"\\/\u{8}\u{c}\n\r\t")));
        assert_eq!(parse(r#""\u00e9é""#), Ok(str_value("éé")));
        assert_eq!(parse(r#""\ud834\udd1e""#), Ok(str_value("\u{1d11e}")));
        assert_eq!(parse(r#""\ud834 \udd1e""#), Ok(Str(vec![0xd834, 0x20, 0xdd1e])));
        assert_eq!(parse(r#""\ud834\u0041""#), Ok(Str(vec![0xd834, 0x41])));
        assert_eq!(parse(r#""\ud834\ud834\udd1e""#), Ok(Str(vec![0xd834, 0x1d11e])));
    }

    #[test]
    fn containers() {
        assert_eq!(parse("[]"), Ok(Array(vec![])));
        assert_eq!(parse("[1, [2]]"), Ok(Array(vec![Int(1), Array(vec![Int(2)])])));
        assert_eq!(
            parse(r#"{"a": 1, "b": 2, "a": 3}"#),
            Ok(Object(vec![
                (vec![u32::from('a')], Int(3)),
                (vec![u32::from('b')], Int(2))
            ]))
        );
    }

    #[test]
    fn depth_limit() {
        assert!(parse(&"[".repeat(MAX_DEPTH)).is_err_and(|e| e != Error::Sink(TooDeep)));
        assert_eq!(parse(&"[".repeat(MAX_DEPTH + 1)), Err(Error::Sink(TooDeep)));
        assert_eq!(parse(&"{\"a\":".repeat(MAX_DEPTH + 1)), Err(Error::Sink(TooDeep)));
    }

    #[test]
    fn errors_read_like_cpython() {
        let cases = [
            ("", "Expecting value: line 1 column 1 (char 0)"),
            ("  ", "Expecting value: line 1 column 3 (char 2)"),
            ("[1,]", "Expecting value: line 1 column 4 (char 3)"),
            (
                r#"{"a":1,}"#,
                "Expecting property name enclosed in double quotes: line 1 column 8 (char 7)",
            ),
            ("[01]", "Expecting ',' delimiter: line 1 column 3 (char 2)"),
            ("01", "Extra data: line 1 column 2 (char 1)"),
            ("1.", "Extra data: line 1 column 2 (char 1)"),
            ("1e", "Extra data: line 1 column 2 (char 1)"),
            ("1e+", "Extra data: line 1 column 2 (char 1)"),
            ("-", "Expecting value: line 1 column 1 (char 0)"),
            ("\"abc", "Unterminated string starting at: line 1 column 1 (char 0)"),
            (r#""a\x""#, "Invalid \\escape: line 1 column 3 (char 2)"),
            (r#""\u12""#, "Invalid \\uXXXX escape: line 1 column 3 (char 2)"),
            (r#""\u123"#, "Invalid \\uXXXX escape: line 1 column 3 (char 2)"),
            (r#""\ud834\u12""#, "Invalid \\uXXXX escape: line 1 column 9 (char 8)"),
            (r#""\ud834\uXYZW""#, "Invalid \\uXXXX escape: line 1 column 9 (char 8)"),
            (r#"{"a" 1}"#, "Expecting ':' delimiter: line 1 column 6 (char 5)"),
            (
                "{1:1}",
                "Expecting property name enclosed in double quotes: line 1 column 2 (char 1)",
            ),
            ("[1 2]", "Expecting ',' delimiter: line 1 column 4 (char 3)"),
            ("nul", "Expecting value: line 1 column 1 (char 0)"),
            ("NaN1", "Extra data: line 1 column 4 (char 3)"),
            ("\"\x01\"", "Invalid control character at: line 1 column 2 (char 1)"),
            (
                "\u{feff}1",
                "Unexpected UTF-8 BOM (decode using utf-8-sig): line 1 column 1 (char 0)",
            ),
            ("\"\\", "Unterminated string starting at: line 1 column 1 (char 0)"),
            ("[", "Expecting value: line 1 column 2 (char 1)"),
            (
                "{",
                "Expecting property name enclosed in double quotes: line 1 column 2 (char 1)",
            ),
            (
                "[\n  1,\n  \"éé\" x]",
                "Expecting ',' delimiter: line 3 column 8 (char 14)",
            ),
        ];
        for (input, want) in cases {
            assert_eq!(error(input), want, "{input:?}");
        }
    }
}
