//! JSON bytes or str to Python objects, as `kombu.utils.json.loads` (`json.loads` with an object hook),
//! except that the hook only sees kombu's type tags: objects whose keys are exactly `__type__` and
//! `__value__`. Every other object is built without calling into Python code.

use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyBytes, PyDict, PyFloat, PyList, PyLong, PyString};
use pyo3::{ffi, intern, AsPyPointer};

use super::encode_py::optional;
use super::parse::{self, describe_position, Input, Sink, Str, SyntaxError};
use crate::key_cache_py::cached_key;
use crate::recursion_py::DepthGuard;

const TYPE_KEY: u8 = 1;
const VALUE_KEY: u8 = 2;

pub(crate) struct PySink<'py, 'a> {
    py: Python<'py>,
    tag_hook: Option<&'py PyAny>,
    array_depth: DepthGuard,
    object_depth: DepthGuard,
    /// Kept for `loads_envelope` only.
    spans: Option<&'a mut HeaderSpans<'py>>,
    /// The members of the objects being read, innermost last: a dict is made once its size is known, so
    /// it never grows (an envelope's headers, grown from empty, resized three times).
    members: Vec<(&'py PyString, &'py PyAny)>,
}

/// Where some of a kombu envelope's headers are in its text (`headers` is a member of the outermost
/// object), in the order of `HEADER_SPANS`: the worker writes them into its `task-received` event as they
/// are, instead of encoding the values it decoded from them again.
pub type HeaderPositions = [Option<(usize, usize)>; HEADER_SPANS.len()];

/// Finds the `HeaderPositions` of an envelope while it is parsed.
pub(crate) struct HeaderSpans<'a> {
    input: &'a [u8],
    /// The depth-1 member being read is `headers`.
    in_headers: bool,
    /// The depth-2 member being read is `HEADER_SPANS[field]`, its value starting at `field_start`.
    field: Option<usize>,
    field_start: usize,
    /// The members of the depth-2 object being read.
    reading: HeaderPositions,
    /// The members of `headers`, once it was read.
    headers: Option<HeaderPositions>,
}

/// The JSON text of header `HEADER_SPANS[index]` in the envelope `input`, if its `headers` had it.
pub fn header_text<'a>(input: &'a [u8], positions: &HeaderPositions, index: usize) -> Option<&'a [u8]> {
    let (start, end) = positions.get(index).copied().flatten()?;
    input.get(start..end)
}

/// The headers `HeaderSpans` finds, in this order.
pub const HEADER_SPANS: [&str; 9] = [
    "task",
    "argsrepr",
    "kwargsrepr",
    "root_id",
    "parent_id",
    "retries",
    "eta",
    "expires",
    "fastq_sent_at",
];

impl<'a> HeaderSpans<'a> {
    pub(crate) fn new(input: &'a [u8]) -> Self {
        Self {
            input,
            in_headers: false,
            field: None,
            field_start: 0,
            reading: HeaderPositions::default(),
            headers: None,
        }
    }

    /// The positions of the `headers` member's fields, once the document was read.
    pub(crate) fn finish(self) -> Option<HeaderPositions> {
        self.headers
    }

    /// The text of the input between `start` and `end`, less the quotes around it.
    fn unquoted(&self, (start, end): (usize, usize)) -> &[u8] {
        self.input.get(start + 1..end.saturating_sub(1)).unwrap_or_default()
    }

    // Not inlined: in the parser's recursion this would add its locals to every level's frame.
    #[inline(never)]
    pub(crate) fn member_start(&mut self, depth: usize, key: (usize, usize), value_start: usize) {
        match depth {
            1 => self.in_headers = self.unquoted(key) == b"headers",
            2 => {
                let key = self.unquoted(key);
                self.field = HEADER_SPANS.iter().position(|h| h.as_bytes() == key);
                self.field_start = value_start;
            }
            _ => {}
        }
    }

    #[inline(never)]
    pub(crate) fn member_end(&mut self, depth: usize, value_end: usize) {
        match depth {
            1 => {
                let read = std::mem::take(&mut self.reading);
                if self.in_headers {
                    self.headers = Some(read);
                }
            }
            2 => {
                if let Some(i) = self.field.take() {
                    self.reading[i] = Some((self.field_start, value_end));
                }
            }
            _ => {}
        }
    }
}

/// Turns decoded text into a Python str; WTF-8 goes through `surrogatepass` to keep lone surrogates.
fn py_str<'py>(py: Python<'py>, s: Str<'_>) -> PyResult<&'py PyString> {
    match s {
        Str::Utf8(text) => Ok(PyString::new(py, text)),
        Str::Wtf8(bytes) => {
            // (Not PyString::from_object: pyo3 0.17 passes its encoding names to C without a NUL terminator.)
            let text = PyBytes::new(py, bytes).call_method1(intern!(py, "decode"), ("utf-8", "surrogatepass"))?;
            Ok(text.downcast::<PyString>()?)
        }
    }
}

impl<'py> Sink for PySink<'py, '_> {
    type Value = &'py PyAny;
    /// The key and whether it is one of kombu's tag keys.
    type Key = (&'py PyString, u8);
    type Array = Vec<&'py PyAny>;
    /// Where the object's members start in `members`, and which tag keys it has.
    type Object = (usize, u8);
    type Error = PyErr;

    fn null(&mut self) -> PyResult<&'py PyAny> {
        Ok(self.py.None().into_ref(self.py))
    }
    fn boolean(&mut self, v: bool) -> PyResult<&'py PyAny> {
        Ok(PyBool::new(self.py, v))
    }
    fn int(&mut self, v: i64) -> PyResult<&'py PyAny> {
        Ok(v.into_py(self.py).into_ref(self.py))
    }
    fn big_int(&mut self, digits: &str) -> PyResult<&'py PyAny> {
        // int(str) also enforces sys.get_int_max_str_digits(), exactly as json.loads does.
        self.py.get_type::<PyLong>().call1((digits,))
    }
    fn float(&mut self, v: f64) -> PyResult<&'py PyAny> {
        Ok(PyFloat::new(self.py, v))
    }
    fn string(&mut self, s: Str<'_>) -> PyResult<&'py PyAny> {
        Ok(py_str(self.py, s)?)
    }
    #[inline(never)]
    fn key(&mut self, s: Str<'_>) -> PyResult<(&'py PyString, u8)> {
        let tag = match s.as_bytes() {
            b"__type__" => TYPE_KEY,
            b"__value__" => VALUE_KEY,
            _ => 0,
        };
        let key = match s {
            Str::Utf8(text) => cached_key(self.py, text),
            Str::Wtf8(_) => py_str(self.py, s)?,
        };
        Ok((key, tag))
    }
    fn begin_array(&mut self) -> PyResult<Vec<&'py PyAny>> {
        Ok(Vec::new())
    }
    fn push(&mut self, array: &mut Vec<&'py PyAny>, v: &'py PyAny) -> PyResult<()> {
        array.push(v);
        Ok(())
    }
    fn end_array(&mut self, array: Vec<&'py PyAny>) -> PyResult<&'py PyAny> {
        Ok(PyList::new(self.py, array))
    }
    fn begin_object(&mut self) -> PyResult<(usize, u8)> {
        Ok((self.members.len(), 0))
    }
    fn insert(&mut self, object: &mut (usize, u8), key: (&'py PyString, u8), v: &'py PyAny) -> PyResult<()> {
        object.1 |= key.1;
        self.members.push((key.0, v));
        Ok(())
    }
    #[inline(never)]
    fn end_object(&mut self, (start, tags): (usize, u8)) -> PyResult<&'py PyAny> {
        let py = self.py;
        let members = &self.members[start..];
        #[allow(clippy::cast_possible_wrap)] // a slice's length fits an isize
        // SAFETY: a new reference (NULL with an error set), owned by the GIL pool from here.
        let dict: &PyDict =
            unsafe { py.from_owned_ptr_or_err(ffi::_PyDict_NewPresized(members.len() as ffi::Py_ssize_t))? };
        for &(key, value) in members {
            // SAFETY: all three are live objects; the dict takes its own references. (A later duplicate
            // key replaces the value in the first one's place, as json.loads does.)
            if unsafe { ffi::PyDict_SetItem(dict.as_ptr(), key.as_ptr(), value.as_ptr()) } != 0 {
                return Err(PyErr::fetch(py));
            }
        }
        self.members.truncate(start);
        match self.tag_hook {
            // Two keys including both tag keys means exactly those two.
            Some(hook) if tags == TYPE_KEY | VALUE_KEY && dict.len() == 2 => hook.call1((dict,)),
            _ => Ok(dict),
        }
    }
    #[inline]
    fn member_start(&mut self, depth: usize, key: (usize, usize), value_start: usize) {
        if let Some(spans) = &mut self.spans {
            spans.member_start(depth, key, value_start);
        }
    }
    #[inline]
    fn member_end(&mut self, depth: usize, value_end: usize) {
        if let Some(spans) = &mut self.spans {
            spans.member_end(depth, value_end);
        }
    }
    #[inline(never)]
    fn enter(&mut self, depth: usize, array: bool) -> PyResult<()> {
        let guard = if array {
            &mut self.array_depth
        } else {
            &mut self.object_depth
        };
        guard.check(self.py, depth)
    }
}

/// The text of `data` (bytes must be UTF-8, as kombu decodes them before parsing).
pub(crate) fn input_text(data: &PyAny) -> PyResult<Input<'_>> {
    if let Ok(bytes) = data.downcast::<PyBytes>() {
        if let Ok(text) = std::str::from_utf8(bytes.as_bytes()) {
            return Ok(Input::Utf8(text));
        }
        // Let Python raise its UnicodeDecodeError, as kombu's loads does.
        bytes.call_method1(intern!(data.py(), "decode"), ("utf-8",))?;
        return Err(PyValueError::new_err("invalid UTF-8"));
    }
    if let Ok(s) = data.downcast::<PyString>() {
        if let Ok(text) = s.to_str() {
            return Ok(Input::Utf8(text));
        }
        let wtf8 = s.call_method1(intern!(data.py(), "encode"), ("utf-8", "surrogatepass"))?;
        return Ok(Input::Wtf8(wtf8.downcast::<PyBytes>()?.as_bytes()));
    }
    Err(PyTypeError::new_err(format!(
        "the JSON object must be str or bytes, not {}",
        data.get_type().name()?
    )))
}

pub fn loads<'py>(py: Python<'py>, data: &'py PyAny, tag_hook: Option<&'py PyAny>) -> PyResult<&'py PyAny> {
    let input = input_text(data)?;
    parse_with(py, input, tag_hook, None)
}

/// `loads` of UTF-8 text that is not a Python object (a body decoded from its envelope's base64).
pub fn loads_text<'py>(py: Python<'py>, text: &str, tag_hook: Option<&'py PyAny>) -> PyResult<&'py PyAny> {
    parse_with(py, Input::Utf8(text), tag_hook, None)
}

/// `loads` of a kombu envelope, and where some of its headers are in its text (see `HeaderPositions`).
pub fn loads_envelope<'py>(
    py: Python<'py>,
    data: &'py PyAny,
    tag_hook: Option<&'py PyAny>,
) -> PyResult<(&'py PyAny, Option<HeaderPositions>)> {
    let input = input_text(data)?;
    let mut spans = HeaderSpans::new(input.as_bytes());
    let doc = parse_with(py, input, tag_hook, Some(&mut spans))?;
    Ok((doc, spans.headers))
}

impl<'py> PySink<'py, '_> {
    /// A sink that builds every value as `json.loads` would, with no tag hook.
    pub(crate) fn plain(py: Python<'py>) -> Self {
        Self {
            py,
            tag_hook: None,
            array_depth: DepthGuard::new(" while decoding a JSON array from a unicode string"),
            object_depth: DepthGuard::new(" while decoding a JSON object from a unicode string"),
            spans: None,
            members: Vec::with_capacity(32),
        }
    }
}

fn parse_with<'py>(
    py: Python<'py>,
    input: Input<'_>,
    tag_hook: Option<&'py PyAny>,
    spans: Option<&mut HeaderSpans<'py>>,
) -> PyResult<&'py PyAny> {
    let mut sink = PySink {
        py,
        tag_hook,
        array_depth: DepthGuard::new(" while decoding a JSON array from a unicode string"),
        object_depth: DepthGuard::new(" while decoding a JSON object from a unicode string"),
        spans,
        members: Vec::with_capacity(32),
    };
    parse::parse(input, &mut sink).map_err(|e| match e {
        parse::Error::Syntax(SyntaxError { msg, pos }) => {
            let (line, column, char_pos) = describe_position(input.as_bytes(), pos);
            PyValueError::new_err(format!("{msg}: line {line} column {column} (char {char_pos})"))
        }
        parse::Error::Sink(e) => e,
    })
}

/// Parses JSON as `json.loads(data, object_hook=...)`, calling `tag_hook` only for kombu's type tags.
#[pyfunction]
#[pyo3(text_signature = "(data, tag_hook)")]
pub fn json_loads<'py>(py: Python<'py>, data: &'py PyAny, tag_hook: &'py PyAny) -> PyResult<&'py PyAny> {
    loads(py, data, optional(tag_hook))
}
