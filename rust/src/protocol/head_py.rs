//! `task_head`: the part of a kombu task envelope the worker's parent acts on, read in one pass without
//! building the rest.
//!
//! The parent reads a dozen headers of every message to decide what to do with it (run it, hold it for
//! its ETA, discard it as revoked or expired, dead-letter it) and hands the envelope to a pool child as
//! it was stored; the child decodes it whole. Decoding it whole in the parent as well spent most of the
//! parent's decode on objects nobody there reads (the other headers, the properties, the body), in the one
//! process every task goes through. `task_head` checks the whole document as `Message.from_envelope`
//! does (syntax, the members' types, the body's base64) and builds Python objects only for the headers
//! in `HEAD_FIELDS` and the content type. Anything it does not vouch for gives None, and the caller
//! decodes the envelope the full way, which says what is wrong with it exactly as before.

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyString, PyTuple};

use super::envelope;
use crate::base64;
use crate::json::decode_py::{HeaderPositions, HeaderSpans, PySink};
use crate::json::parse::{self, Input, Sink, Str};

/// The headers `TaskHead.fields` holds, in this order (None where the envelope has none, or null).
pub const HEAD_FIELDS: [&str; 16] = [
    "id",
    "task",
    "eta",
    "expires",
    "retries",
    "timelimit",
    "ignore_result",
    "argsrepr",
    "kwargsrepr",
    "root_id",
    "parent_id",
    "group",
    "shadow",
    "fastq_sent_at",
    // how many times a Redis or SQLite broker handed the message out before (fastq's restore counts them)
    "x-fastq-deliveries",
    "redelivered",
];

/// Deeper documents are left to the full decode (and its recursion limit); task envelopes are 3-4 deep.
const MAX_DEPTH: usize = 32;

#[pyclass(name = "TaskHead", module = "fastq._core")]
pub struct TaskHead {
    /// The `HEAD_FIELDS` headers' values.
    #[pyo3(get)]
    fields: Py<PyTuple>,
    #[pyo3(get)]
    content_type: Py<PyString>,
    /// The envelope, and where the headers `task-received` copies are in it (as `Message` keeps them).
    envelope: Py<PyBytes>,
    positions: Option<HeaderPositions>,
}

impl TaskHead {
    /// The value of `HEAD_FIELDS[index]` (None where the envelope has none).
    pub fn field(&self, py: Python<'_>, index: usize) -> PyResult<PyObject> {
        Ok(self.fields.as_ref(py).get_item(index)?.into())
    }

    pub fn envelope_headers<'py>(&'py self, py: Python<'py>) -> Option<(&'py [u8], &'py HeaderPositions)> {
        Some((self.envelope.as_ref(py).as_bytes(), self.positions.as_ref()?))
    }
}

#[pymethods]
impl TaskHead {
    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        let fields = self.fields.as_ref(py);
        Ok(format!(
            "TaskHead(task={}, id={}, content_type={})",
            fields.get_item(1)?.repr()?,
            fields.get_item(0)?.repr()?,
            self.content_type.as_ref(py).repr()?
        ))
    }
}

/// Where the value being read goes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Slot {
    Header(usize),
    BodyEncoding,
    ContentType,
    ContentEncoding,
    Body,
}

/// The depth-1 member being read.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Top {
    Other,
    Headers,
    Properties,
}

#[allow(clippy::struct_excessive_bools)] // one flag per member whose shape is checked
struct HeadSink<'py, 'a> {
    py: Python<'py>,
    input: &'a [u8],
    /// Builds the wanted values, as the full decode would.
    build: PySink<'py, 'a>,
    spans: HeaderSpans<'a>,
    top: Top,
    /// Depth of the object whose wanted member is being read (0: none): values are built only then.
    building: usize,
    /// Where that member goes once read.
    slot: Option<Slot>,
    /// A member of the document, the headers or the properties has a key with an escape in it.
    escaped_key: bool,
    document_is_object: bool,
    headers_is_object: bool,
    properties_is_object: bool,
    headers: [Option<&'py PyAny>; HEAD_FIELDS.len()],
    body_encoding: Option<&'py PyAny>,
    content_type: Option<&'py PyAny>,
    content_encoding: Option<&'py PyAny>,
    body: Option<Body>,
}

/// The body member, when it is a string: whether it is text a Python str can be encoded from (no lone
/// surrogates), and whether it is valid base64.
#[derive(Clone, Copy)]
struct Body {
    text: bool,
    base64: bool,
}

/// Not a sink error to report: the document is left to the full decode.
struct Unvouched;

impl From<PyErr> for Unvouched {
    fn from(_: PyErr) -> Self {
        Unvouched
    }
}

impl<'py> Sink for HeadSink<'py, '_> {
    type Value = Option<&'py PyAny>;
    type Key = Option<&'py PyString>;
    type Array = Option<Vec<&'py PyAny>>;
    type Object = Option<&'py PyDict>;
    type Error = Unvouched;

    fn null(&mut self) -> Result<Self::Value, Unvouched> {
        self.built(Sink::null)
    }
    fn boolean(&mut self, v: bool) -> Result<Self::Value, Unvouched> {
        self.built(|b| b.boolean(v))
    }
    fn int(&mut self, v: i64) -> Result<Self::Value, Unvouched> {
        self.built(|b| b.int(v))
    }
    fn big_int(&mut self, digits: &str) -> Result<Self::Value, Unvouched> {
        self.built(|b| b.big_int(digits))
    }
    fn float(&mut self, v: f64) -> Result<Self::Value, Unvouched> {
        self.built(|b| b.float(v))
    }
    fn string(&mut self, s: Str<'_>) -> Result<Self::Value, Unvouched> {
        if self.building == 1 && self.slot == Some(Slot::Body) {
            // not built: what the full decode needs of it is noted (base64 or not is known only later)
            self.body = Some(match s {
                Str::Utf8(text) => Body {
                    text: true,
                    base64: base64::decode(text.as_bytes()).is_ok(),
                },
                Str::Wtf8(_) => Body {
                    text: false,
                    base64: false,
                },
            });
            return Ok(Some(self.py.None().into_ref(self.py)));
        }
        self.built(|b| b.string(s))
    }
    fn key(&mut self, s: Str<'_>) -> Result<Self::Key, Unvouched> {
        self.built(|b| Ok(b.key(s)?.0))
    }
    fn begin_array(&mut self) -> Result<Self::Array, Unvouched> {
        Ok(if self.building > 0 { Some(Vec::new()) } else { None })
    }
    fn push(&mut self, array: &mut Self::Array, v: Self::Value) -> Result<(), Unvouched> {
        if let (Some(array), Some(v)) = (array, v) {
            array.push(v);
        }
        Ok(())
    }
    fn end_array(&mut self, array: Self::Array) -> Result<Self::Value, Unvouched> {
        Ok(match array {
            Some(array) => Some(self.build.end_array(array)?),
            None => None,
        })
    }
    fn begin_object(&mut self) -> Result<Self::Object, Unvouched> {
        Ok(if self.building > 0 {
            Some(PyDict::new(self.py))
        } else {
            None
        })
    }
    fn insert(&mut self, object: &mut Self::Object, key: Self::Key, v: Self::Value) -> Result<(), Unvouched> {
        match (object, key, v) {
            (Some(dict), Some(key), Some(v)) => dict.set_item(key, v)?,
            (None, _, v) => {
                // a member of an object not built: the headers, the properties or the document
                if let Some(slot) = self.slot.take() {
                    let value = v.ok_or(Unvouched)?;
                    match slot {
                        Slot::Header(i) => self.headers[i] = Some(value),
                        Slot::BodyEncoding => self.body_encoding = Some(value),
                        Slot::ContentType => self.content_type = Some(value),
                        Slot::ContentEncoding => self.content_encoding = Some(value),
                        Slot::Body => {
                            if !value.is_none() {
                                self.body = None; // not a string
                            }
                        }
                    }
                }
            }
            _ => return Err(Unvouched),
        }
        Ok(())
    }
    fn end_object(&mut self, object: Self::Object) -> Result<Self::Value, Unvouched> {
        // (the full decode would offer a `{"__type__", "__value__"}` object to a tag hook; it has none here)
        Ok(object.map(AsRef::as_ref))
    }
    fn enter(&mut self, depth: usize, array: bool) -> Result<(), Unvouched> {
        if depth > MAX_DEPTH {
            return Err(Unvouched);
        }
        if self.building == 0 {
            match (depth, self.top) {
                (1, _) => self.document_is_object = !array,
                (2, Top::Headers) => self.headers_is_object = !array,
                (2, Top::Properties) => self.properties_is_object = !array,
                _ => {}
            }
        }
        Ok(())
    }
    fn member_start(&mut self, depth: usize, key: (usize, usize), value_start: usize) {
        self.spans.member_start(depth, key, value_start);
        if self.building > 0 {
            return; // inside a wanted value
        }
        if depth > 2 || (depth == 2 && self.top == Top::Other) {
            return;
        }
        let key = self.key_text(key);
        if key.contains(&b'\\') {
            // it may spell a name looked for (`"t\\u0061sk"`): too rare to decode here
            self.escaped_key = true;
            return;
        }
        match depth {
            1 => {
                self.top = Top::Other;
                self.slot = match key {
                    k if k == envelope::HEADERS.as_bytes() => {
                        // a repeated member replaces the earlier one whole, as in a dict
                        self.top = Top::Headers;
                        self.headers = [None; HEAD_FIELDS.len()];
                        self.headers_is_object = false;
                        None
                    }
                    k if k == envelope::PROPERTIES.as_bytes() => {
                        self.top = Top::Properties;
                        self.body_encoding = None;
                        self.properties_is_object = false;
                        None
                    }
                    k if k == envelope::CONTENT_TYPE.as_bytes() => Some(Slot::ContentType),
                    k if k == envelope::CONTENT_ENCODING.as_bytes() => Some(Slot::ContentEncoding),
                    k if k == envelope::BODY.as_bytes() => {
                        self.body = None;
                        Some(Slot::Body)
                    }
                    _ => None,
                };
            }
            2 => {
                self.slot = match self.top {
                    Top::Headers => HEAD_FIELDS.iter().position(|f| f.as_bytes() == key).map(Slot::Header),
                    Top::Properties if key == envelope::BODY_ENCODING.as_bytes() => Some(Slot::BodyEncoding),
                    _ => None,
                };
            }
            _ => return,
        }
        if self.slot.is_some() {
            self.building = depth;
        }
    }
    fn member_end(&mut self, depth: usize, value_end: usize) {
        self.spans.member_end(depth, value_end);
        if depth == self.building {
            self.building = 0;
        }
    }
}

impl<'py, 'a> HeadSink<'py, 'a> {
    /// What `make` builds when a wanted value is being read; nothing otherwise.
    fn built<T>(&mut self, make: impl FnOnce(&mut PySink<'py, 'a>) -> PyResult<T>) -> Result<Option<T>, Unvouched> {
        if self.building > 0 {
            Ok(Some(make(&mut self.build)?))
        } else {
            Ok(None)
        }
    }

    /// A member's key as it is in the input, less its quotes.
    fn key_text(&self, (start, end): (usize, usize)) -> &'a [u8] {
        self.input.get(start + 1..end.saturating_sub(1)).unwrap_or_default()
    }
}

/// The head of the kombu envelope `data` (bytes), or None when it is not one this reads (see the module).
#[pyfunction]
#[pyo3(text_signature = "(data)")]
pub fn task_head(py: Python<'_>, data: &PyAny) -> PyResult<Option<TaskHead>> {
    let Ok(bytes) = data.downcast::<PyBytes>() else {
        return Ok(None);
    };
    head_of(py, bytes)
}

/// `task_head` of an envelope known to be bytes.
pub fn head_of(py: Python<'_>, bytes: &PyBytes) -> PyResult<Option<TaskHead>> {
    let Ok(text) = std::str::from_utf8(bytes.as_bytes()) else {
        return Ok(None);
    };
    let input = text.as_bytes();
    let mut sink = HeadSink {
        py,
        input,
        build: PySink::plain(py),
        spans: HeaderSpans::new(input),
        top: Top::Other,
        building: 0,
        slot: None,
        escaped_key: false,
        document_is_object: false,
        headers_is_object: false,
        properties_is_object: false,
        headers: [None; HEAD_FIELDS.len()],
        body_encoding: None,
        content_type: None,
        content_encoding: None,
        body: None,
    };
    if parse::parse(Input::Utf8(text), &mut sink).is_err() {
        return Ok(None);
    }
    if sink.escaped_key || !(sink.document_is_object && sink.headers_is_object && sink.properties_is_object) {
        return Ok(None);
    }
    let (Some(content_type), Some(content_encoding), Some(body)) =
        (sink.content_type, sink.content_encoding, sink.body)
    else {
        return Ok(None);
    };
    let Ok(content_type) = content_type.downcast::<PyString>() else {
        return Ok(None);
    };
    if !content_encoding.is_instance_of::<PyString>()? {
        return Ok(None);
    }
    // the body as `from_envelope` would take it: base64, or UTF-8 text (kombu decodes no other encoding)
    let body_ok = match sink.body_encoding.filter(|e| !e.is_none()) {
        None => body.text,
        Some(e) => match e.extract::<&str>() {
            Ok(envelope::BASE64) => body.base64,
            Ok(e) if e.eq_ignore_ascii_case("utf-8") => body.text,
            _ => false,
        },
    };
    if !body_ok {
        return Ok(None);
    }
    let none = py.None();
    let fields = PyTuple::new(
        py,
        sink.headers
            .iter()
            .map(|v| v.map_or_else(|| none.clone_ref(py), Into::into)),
    );
    Ok(Some(TaskHead {
        fields: fields.into(),
        content_type: content_type.into(),
        envelope: bytes.into(),
        positions: sink.spans.finish(),
    }))
}
