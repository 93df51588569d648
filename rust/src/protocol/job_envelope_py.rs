//! The parts of a kombu task envelope a pool child runs a job with, read in one pass.
//!
//! `job_request` needs the envelope's headers whole (the request keeps them), four of its properties, and
//! the body's text; decoding the whole document first built the document and properties dicts, a str for
//! the body (only to base64-decode it again) and the properties nobody reads, in the process that runs
//! every task. This builds Python objects for the headers and those four properties only, and keeps the
//! body, content type and encodings as text. An envelope it does not read exactly as the full decode would
//! (a repeated or escaped key among the ones it looks for, a member of an unexpected type, deep nesting)
//! gives None, and the caller takes the general path, which reports any problem in its own words.

use pyo3::prelude::*;
use pyo3::types::PyString;

use super::envelope;
use crate::json::decode_py::PySink;
use crate::json::parse::{self, Input, Sink, Str};

/// Deeper documents are left to the full decode (and its recursion limit); task envelopes are 3-4 deep.
const MAX_DEPTH: usize = 32;

/// A member whose value is built as a Python object.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Built {
    Headers,
    CorrelationId,
    ReplyTo,
    Priority,
    DeliveryInfo,
}

/// A member whose value is kept as text (a string in the input, or null where that is allowed).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Text {
    Body,
    ContentType,
    ContentEncoding,
    BodyEncoding,
}

/// What `read` found; every field is what the full decode has under the same name.
pub struct JobEnvelope<'py, 'a> {
    pub headers: &'py PyAny,
    pub correlation_id: Option<&'py PyAny>,
    pub reply_to: Option<&'py PyAny>,
    pub priority: Option<&'py PyAny>,
    pub delivery_info: Option<&'py PyAny>,
    pub content_type: &'a str,
    /// The body's text as stored (base64 when `body_encoding` says so).
    pub body: &'a str,
    /// `properties.body_encoding`, None when absent or null.
    pub body_encoding: Option<&'a str>,
}

#[allow(clippy::struct_excessive_bools)] // one flag per member whose shape is checked
struct JobSink<'py, 'a, 'b> {
    input: &'a str,
    build: PySink<'py, 'b>,
    /// The depth-1 member being read is `properties`.
    in_properties: bool,
    /// Depth of the member whose value is being built (0: none).
    building: usize,
    /// Where the member being built goes, once read.
    built: Option<Built>,
    /// The member being read is kept as text; its string comes next.
    text: Option<Text>,
    /// The members looked for that were read (a bit each): a second one is left to the full decode.
    seen: u32,
    /// Not read as the full decode would read it: left to it.
    refused: bool,
    document_is_object: bool,
    properties_is_object: bool,
    headers: Option<&'py PyAny>,
    correlation_id: Option<&'py PyAny>,
    reply_to: Option<&'py PyAny>,
    priority: Option<&'py PyAny>,
    delivery_info: Option<&'py PyAny>,
    body: Option<&'a str>,
    content_type: Option<&'a str>,
    content_encoding: bool,
    body_encoding: Option<&'a str>,
}

/// Not a sink error to report: the document is left to the full decode.
struct Refused;

impl From<PyErr> for Refused {
    fn from(_: PyErr) -> Self {
        Refused
    }
}

impl<'py, 'a, 'b> JobSink<'py, 'a, 'b> {
    fn built<T>(&mut self, make: impl FnOnce(&mut PySink<'py, 'b>) -> PyResult<T>) -> Result<Option<T>, Refused> {
        if self.building > 0 {
            Ok(Some(make(&mut self.build)?))
        } else {
            Ok(None)
        }
    }

    /// Notes that the member `bit` stands for was found; false (and refused) when it was found before.
    ///
    /// (An early return, not `refused |= !first`: rustc 1.95 at opt-level 2 compiled that form, inlined
    /// into `member_start`'s text branch, to a store that left `refused` set on the branch that keeps the
    /// text: every envelope went to the general path. The unit tests catch it: they expect answers.)
    fn first(&mut self, bit: u32) -> bool {
        if self.seen & bit != 0 {
            self.refused = true;
            return false;
        }
        self.seen |= bit;
        true
    }

    /// Keeps the string just read as the text of member `which`, when it is a slice of the input (a string
    /// with escapes in these members is left to the full decode).
    fn keep(&mut self, which: Text, s: Str<'_>) {
        let text = match s {
            Str::Utf8(text) => self.slice_of_input(text),
            Str::Wtf8(_) => None,
        };
        let Some(text) = text else {
            self.refused = true;
            return;
        };
        match which {
            Text::Body => self.body = Some(text),
            Text::ContentType => self.content_type = Some(text),
            Text::ContentEncoding => self.content_encoding = true,
            Text::BodyEncoding => self.body_encoding = Some(text),
        }
    }

    /// `text` as a slice of the input with the input's lifetime, when it is one.
    fn slice_of_input(&self, text: &str) -> Option<&'a str> {
        let start = (text.as_ptr() as usize).checked_sub(self.input.as_ptr() as usize)?;
        self.input.get(start..start + text.len())
    }
}

impl<'py> Sink for JobSink<'py, '_, '_> {
    type Value = Option<&'py PyAny>;
    type Key = Option<(&'py PyString, u8)>;
    type Array = Option<Vec<&'py PyAny>>;
    type Object = Option<(usize, u8)>;
    type Error = Refused;

    fn null(&mut self) -> Result<Self::Value, Refused> {
        self.built(Sink::null)
    }
    fn boolean(&mut self, v: bool) -> Result<Self::Value, Refused> {
        self.built(|b| b.boolean(v))
    }
    fn int(&mut self, v: i64) -> Result<Self::Value, Refused> {
        self.built(|b| b.int(v))
    }
    fn big_int(&mut self, digits: &str) -> Result<Self::Value, Refused> {
        if self.building == 0 {
            // the full decode makes an int of it wherever it is, which may fail (`sys.set_int_max_str_digits`)
            return Err(Refused);
        }
        self.built(|b| b.big_int(digits))
    }
    fn float(&mut self, v: f64) -> Result<Self::Value, Refused> {
        self.built(|b| b.float(v))
    }
    fn string(&mut self, s: Str<'_>) -> Result<Self::Value, Refused> {
        if let Some(which) = self.text.take() {
            self.keep(which, s);
            return Ok(None);
        }
        self.built(|b| b.string(s))
    }
    fn key(&mut self, s: Str<'_>) -> Result<Self::Key, Refused> {
        self.built(|b| b.key(s))
    }
    fn begin_array(&mut self) -> Result<Self::Array, Refused> {
        self.built(Sink::begin_array)
    }
    fn push(&mut self, array: &mut Self::Array, v: Self::Value) -> Result<(), Refused> {
        if let (Some(array), Some(v)) = (array, v) {
            self.build.push(array, v)?;
        }
        Ok(())
    }
    fn end_array(&mut self, array: Self::Array) -> Result<Self::Value, Refused> {
        Ok(match array {
            Some(array) => Some(self.build.end_array(array)?),
            None => None,
        })
    }
    fn begin_object(&mut self) -> Result<Self::Object, Refused> {
        self.built(Sink::begin_object)
    }
    fn insert(&mut self, object: &mut Self::Object, key: Self::Key, v: Self::Value) -> Result<(), Refused> {
        match (object, key, v) {
            (Some(object), Some(key), Some(v)) => self.build.insert(object, key, v)?,
            // a member of an object not built (the document, the properties, or one skipped): the member
            // built last, if any, is this one (nothing else is built while it is read)
            (None, _, v) => {
                if let Some(which) = self.built.take() {
                    let value = v.ok_or(Refused)?;
                    match which {
                        Built::Headers => self.headers = Some(value),
                        Built::CorrelationId => self.correlation_id = Some(value),
                        Built::ReplyTo => self.reply_to = Some(value),
                        Built::Priority => self.priority = Some(value),
                        Built::DeliveryInfo => self.delivery_info = Some(value),
                    }
                }
            }
            _ => return Err(Refused),
        }
        Ok(())
    }
    fn end_object(&mut self, object: Self::Object) -> Result<Self::Value, Refused> {
        Ok(match object {
            Some(object) => Some(self.build.end_object(object)?),
            None => None,
        })
    }
    fn enter(&mut self, depth: usize, array: bool) -> Result<(), Refused> {
        if depth > MAX_DEPTH {
            return Err(Refused);
        }
        if self.building > 0 {
            return Ok(self.build.enter(depth, array)?);
        }
        match depth {
            1 => self.document_is_object = !array,
            2 if self.in_properties => self.properties_is_object = !array,
            _ => {}
        }
        Ok(())
    }
    fn member_start(&mut self, depth: usize, key: (usize, usize), value_start: usize) {
        if self.building > 0 || depth > 2 || (depth == 2 && !self.in_properties) {
            return;
        }
        let bytes = self.input.as_bytes();
        let key = bytes.get(key.0 + 1..key.1.saturating_sub(1)).unwrap_or_default();
        if key.contains(&b'\\') {
            // it may spell a name looked for (`"b\\u006fdy"`): too rare to decode here
            self.refused = true;
            return;
        }
        let starts = |c: u8| bytes.get(value_start) == Some(&c);
        let (built, text) = if depth == 1 {
            self.in_properties = false;
            match key {
                k if k == envelope::HEADERS.as_bytes() => (Some((Built::Headers, 1 << 0)), None),
                k if k == envelope::PROPERTIES.as_bytes() => {
                    self.in_properties = self.first(1 << 1);
                    (None, None)
                }
                k if k == envelope::BODY.as_bytes() => (None, Some((Text::Body, 1 << 2))),
                k if k == envelope::CONTENT_TYPE.as_bytes() => (None, Some((Text::ContentType, 1 << 3))),
                k if k == envelope::CONTENT_ENCODING.as_bytes() => (None, Some((Text::ContentEncoding, 1 << 4))),
                _ => (None, None),
            }
        } else {
            match key {
                b"correlation_id" => (Some((Built::CorrelationId, 1 << 5)), None),
                b"reply_to" => (Some((Built::ReplyTo, 1 << 6)), None),
                b"priority" => (Some((Built::Priority, 1 << 7)), None),
                b"delivery_info" => (Some((Built::DeliveryInfo, 1 << 8)), None),
                k if k == envelope::BODY_ENCODING.as_bytes() => {
                    if starts(b'n') {
                        // null: as if absent, unless it was there before
                        self.first(1 << 9);
                        self.body_encoding = None;
                        (None, None)
                    } else {
                        (None, Some((Text::BodyEncoding, 1 << 9)))
                    }
                }
                _ => (None, None),
            }
        };
        if let Some((which, bit)) = built {
            self.first(bit);
            self.built = Some(which);
            self.building = depth;
        } else if let Some((which, bit)) = text {
            // kept as text only when it is a string; anything else is the full decode's to report
            if self.first(bit) && starts(b'"') {
                self.text = Some(which);
            } else {
                self.refused = true;
            }
        }
    }
    fn member_end(&mut self, depth: usize, _value_end: usize) {
        if depth == self.building {
            self.building = 0;
        }
    }
}

/// The parts of the envelope `input` that `job_request` needs, or None when the full decode must read it.
pub fn read<'py, 'a>(py: Python<'py>, input: Input<'a>) -> Option<JobEnvelope<'py, 'a>> {
    let Input::Utf8(text) = input else {
        return None;
    };
    let mut sink = JobSink {
        input: text,
        build: PySink::plain(py),
        in_properties: false,
        building: 0,
        built: None,
        text: None,
        seen: 0,
        refused: false,
        document_is_object: false,
        properties_is_object: false,
        headers: None,
        correlation_id: None,
        reply_to: None,
        priority: None,
        delivery_info: None,
        body: None,
        content_type: None,
        content_encoding: false,
        body_encoding: None,
    };
    parse::parse(input, &mut sink).ok()?;
    if sink.refused || !sink.document_is_object || !sink.properties_is_object || !sink.content_encoding {
        return None;
    }
    let headers = sink.headers?;
    if !headers.is_instance_of::<pyo3::types::PyDict>().ok()? {
        return None;
    }
    Some(JobEnvelope {
        headers,
        correlation_id: sink.correlation_id,
        reply_to: sink.reply_to,
        priority: sink.priority,
        delivery_info: sink.delivery_info,
        content_type: sink.content_type?,
        body: sink.body?,
        body_encoding: sink.body_encoding,
    })
}
