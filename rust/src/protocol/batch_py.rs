//! `task_envelopes`: the kombu envelopes of many task messages in one call, written straight from the
//! values, as `task_message` followed by `Message.to_envelope` would write them, but without building the
//! headers and properties dicts in between. Publishing a group of 100,000 tasks pays the call overhead
//! once instead of three times per task.

use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::type_object::PyTypeInfo;
use pyo3::types::{PyBytes, PyDict, PyList, PyLong, PyString, PyTuple};

use super::body_py;
use super::message_py::{header_names, none_or, required, write_envelope, Publication, TaskHeaders};
use super::{
    Serializer, COMPRESSION_HEADER, CONTENT_TYPE_JSON, CONTENT_TYPE_MSGPACK, CORRELATION_ID, HEADERS, REPLY_TO,
    TIMELIMIT,
};
use crate::compression_py::compress_any;
use crate::json::encode_py::{optional, Encoder};

/// Fields of one message tuple, in order (documented in `_core.pyi`, `task_envelopes`).
pub const FIELDS: usize = 35;

/// Longest `argsrepr`/`kwargsrepr` written as `repr()` gives it; longer ones are left to `saferepr`,
/// which abbreviates (must match `fastq.utils.text.saferepr`'s default `maxlen`).
const MAX_REPR: usize = 1024;

/// `repr(obj)` when it works and is short, else `saferepr(obj)`; `given` when it is not None.
fn args_repr<'py>(obj: &'py PyAny, given: &'py PyAny, saferepr: &'py PyAny) -> PyResult<&'py PyAny> {
    let py = obj.py();
    if !given.is_none() {
        return required::<PyString>(given, "argsrepr/kwargsrepr", "a str");
    }
    // The usual no-argument call, without making the same two strs for every message.
    if PyTuple::is_exact_type_of(obj) && obj.len()? == 0 {
        return Ok(intern!(py, "()"));
    }
    if PyDict::is_exact_type_of(obj) && obj.len()? == 0 {
        return Ok(intern!(py, "{}"));
    }
    if let Ok(text) = obj.repr() {
        if text.len()? <= MAX_REPR {
            return Ok(text);
        }
    }
    saferepr.call1((obj,))
}

/// `"name": ` for a header name known to be plain ASCII.
fn write_name(out: &mut Vec<u8>, first: bool, name: &str) {
    if !first {
        out.extend_from_slice(b", ");
    }
    out.push(b'"');
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\": ");
}

/// Writes the headers as `task_message` makes them: the protocol's, then `dict.update(extra)` (known names
/// keep their place), then `compression` set (in place if `extra` had it, else last).
fn write_headers<'py>(
    enc: &mut Encoder<'py>,
    values: &[&'py PyAny; HEADERS.len()],
    limits: [&'py PyAny; 2],
    extra: Option<&'py PyDict>,
    compression: Option<&'py PyString>,
) -> PyResult<()> {
    let py = limits[0].py();
    // Extra headers rarely replace the protocol's (fastq's own is `fastq_sent_at`): one pass over them
    // says whether any does, instead of a lookup per protocol header for every message.
    let replacing = extra.filter(|extra| {
        extra.keys().iter().any(|key| {
            key.downcast::<PyString>()
                .ok()
                .and_then(|k| k.to_str().ok())
                .is_none_or(|name| HEADERS.contains(&name))
        })
    });
    enc.out.push(b'{');
    for (i, (name, value)) in HEADERS.iter().zip(values).enumerate() {
        write_name(&mut enc.out, i == 0, name);
        let replaced = match replacing {
            Some(extra) => extra.get_item(header_names(py)[i].as_ref(py)),
            None => None,
        };
        match replaced {
            Some(value) => enc.value(value, 2)?,
            None if i == TIMELIMIT => {
                enc.out.push(b'[');
                enc.value(limits[0], 3)?;
                enc.out.extend_from_slice(b", ");
                enc.value(limits[1], 3)?;
                enc.out.push(b']');
            }
            None => enc.value(value, 2)?,
        }
    }
    let mut compression_written = false;
    for (key, value) in extra.into_iter().flatten() {
        let name = key.downcast::<PyString>().ok().and_then(|k| k.to_str().ok());
        if name.is_some_and(|name| HEADERS.contains(&name)) {
            continue;
        }
        enc.out.extend_from_slice(b", ");
        enc.key(key)?;
        enc.out.extend_from_slice(b": ");
        match compression {
            Some(mime) if name == Some(COMPRESSION_HEADER) => {
                enc.string(mime)?;
                compression_written = true;
            }
            _ => enc.value(value, 2)?,
        }
    }
    if let (Some(mime), false) = (compression, compression_written) {
        write_name(&mut enc.out, false, COMPRESSION_HEADER);
        enc.string(mime)?;
    }
    enc.out.push(b'}');
    Ok(())
}

/// The fields of a message tuple (of `FIELDS` items).
fn fields_of(item: &PyTuple) -> PyResult<[&PyAny; FIELDS]> {
    if item.len() != FIELDS {
        return Err(PyValueError::new_err(format!(
            "a message is a tuple of {FIELDS} fields, got {}",
            item.len()
        )));
    }
    Ok(std::array::from_fn(|i| item.get_item(i).expect("length checked")))
}

/// Appends to `enc.out` the envelope of the message whose fields are `fields`.
fn envelope<'py>(
    py: Python<'py>,
    enc: &mut Encoder<'py>,
    fields: &[&'py PyAny; FIELDS],
    default: Option<&'py PyAny>,
    saferepr: &'py PyAny,
) -> PyResult<()> {
    let f = |i: usize| fields[i];
    let (args, kwargs) = (f(21), f(22));
    if args.downcast::<PyList>().is_err() && args.downcast::<PyTuple>().is_err() {
        return Err(PyTypeError::new_err("task args must be a list or tuple"));
    }
    if kwargs.downcast::<PyDict>().is_err() {
        return Err(PyTypeError::new_err("task keyword arguments must be a dict"));
    }
    let (values, limits) = TaskHeaders {
        task_id: f(0),
        name: f(1),
        shadow: f(2),
        eta: f(3),
        expires: f(4),
        group_id: f(5),
        group_index: f(6),
        retries: f(7),
        time_limit: f(8),
        soft_time_limit: f(9),
        root_id: f(10),
        parent_id: f(11),
        argsrepr: args_repr(args, f(12), saferepr)?,
        kwargsrepr: args_repr(kwargs, f(13), saferepr)?,
        origin: f(14),
        ignore_result: f(15),
        replaced_task_nesting: f(16),
        stamped_headers: f(17),
        stamps: f(18),
    }
    .checked(py)?;
    let extra: Option<&PyDict> = match optional(f(19)) {
        None => None,
        Some(extra) => Some(if let Ok(dict) = extra.downcast::<PyDict>() {
            dict
        } else {
            // Any other mapping is read as dict.update reads it (keys() and [key]).
            let dict = PyDict::new(py);
            dict.call_method1(intern!(py, "update"), (extra,))?;
            dict
        }),
    };
    let serializer = match f(27).downcast::<PyString>()?.to_str()? {
        "json" => Serializer::Json,
        "msgpack" => Serializer::Msgpack,
        other => {
            return Err(PyValueError::new_err(format!(
                "unknown serializer {other:?} (expected 'json' or 'msgpack')"
            )))
        }
    };
    let compression: Option<&PyString> = optional(f(28)).map(PyAny::downcast).transpose()?;
    let mut body = body_py::encode(py, serializer, args, kwargs, [f(23), f(24), f(25), f(26)], default)?;
    if let Some(mime) = compression {
        body = compress_any(py, mime.to_str()?, &body)?;
    }
    let reply_to = required::<PyString>(f(20), "reply_to", "a str")?;
    let properties: [(&PyAny, &PyAny); 2] = [
        (intern!(py, CORRELATION_ID), values[2]),
        (intern!(py, REPLY_TO), reply_to),
    ];
    let publication = Publication {
        exchange: f(29).downcast()?,
        routing_key: f(30).downcast()?,
        priority: f(31).downcast::<PyLong>()?,
        delivery_mode: f(32).downcast::<PyLong>()?,
        expiration: none_or::<PyString>(f(33), "expiration", "a str")
            .map(optional)?
            .map(PyAny::downcast)
            .transpose()?,
        delivery_tag: f(34).downcast()?,
    };
    let (content_type, content_encoding) = match serializer {
        Serializer::Json => (intern!(py, CONTENT_TYPE_JSON), intern!(py, "utf-8")),
        Serializer::Msgpack => (intern!(py, CONTENT_TYPE_MSGPACK), intern!(py, "binary")),
    };
    write_envelope(
        enc,
        &body,
        content_encoding,
        content_type,
        |enc| write_headers(enc, &values, limits, extra, compression),
        &properties,
        &publication,
    )
}

/// The kombu envelope of each message described by a tuple of `messages`.
#[pyfunction]
#[pyo3(text_signature = "(messages, default, saferepr)")]
pub fn task_envelopes<'py>(
    py: Python<'py>,
    messages: &'py PyList,
    default: &'py PyAny,
    saferepr: &'py PyAny,
) -> PyResult<&'py PyList> {
    let default = optional(default);
    let out = PyList::empty(py);
    // One buffer for all: each envelope is copied out into its bytes object, then the buffer is reused.
    let mut enc = Encoder::new(py, None);
    for item in messages {
        let item: &PyTuple = item
            .downcast()
            .map_err(|_| PyTypeError::new_err("each message must be a tuple"))?;
        enc.out.clear();
        envelope(py, &mut enc, &fields_of(item)?, default, saferepr)?;
        out.append(PyBytes::new(py, &enc.out))?;
    }
    Ok(out)
}

/// Positions in a call of `send_batch` (`BatchCall`): (name, task type, args, kwargs, keywords, options).
const CALL_NAME: usize = 0;
const CALL_TYPE: usize = 1;
const CALL_ARGS: usize = 2;
const CALL_KWARGS: usize = 3;
const CALL_KEYWORDS: usize = 4;
const CALL_OPTIONS: usize = 5;

fn call_at(calls: &PyList, i: usize) -> PyResult<&PyTuple> {
    let call: &PyTuple = calls
        .get_item(i)?
        .downcast()
        .map_err(|_| PyTypeError::new_err("each call must be a tuple"))?;
    if call.len() != 6 {
        return Err(PyValueError::new_err(format!(
            "a call is a tuple of 6 items, got {}",
            call.len()
        )));
    }
    Ok(call)
}

/// How many of `calls`, from `start`, are alike: the same task name, task type and options (the same
/// objects: they share one send plan) as the first, and keywords (a dict) that are all in `plain`.
#[pyfunction]
#[pyo3(text_signature = "(calls, start, plain)")]
pub fn uniform_run(calls: &PyList, start: usize, plain: &PyAny) -> PyResult<usize> {
    if start >= calls.len() {
        return Ok(0);
    }
    let first = call_at(calls, start)?;
    let (name, task_type, options) = (
        first.get_item(CALL_NAME)?,
        first.get_item(CALL_TYPE)?,
        first.get_item(CALL_OPTIONS)?,
    );
    let mut count = 0;
    for i in start..calls.len() {
        let call = call_at(calls, i)?;
        let same = |at: usize, value: &PyAny| call.get_item(at).is_ok_and(|item| item.is(value));
        if !(same(CALL_TYPE, task_type) && same(CALL_OPTIONS, options)) {
            break;
        }
        let this_name = call.get_item(CALL_NAME)?;
        if !(this_name.is(name) || this_name.eq(name)?) {
            break;
        }
        let Ok(keywords) = call.get_item(CALL_KEYWORDS)?.downcast::<PyDict>() else {
            break;
        };
        let mut plain_only = true;
        for key in keywords.keys() {
            if !plain.contains(key)? {
                plain_only = false;
                break;
            }
        }
        if !plain_only {
            break;
        }
        count += 1;
    }
    Ok(count)
}

/// `value` unless it is None or false (Python's `value or other`).
fn or<'py>(value: Option<&'py PyAny>, other: &'py PyAny) -> PyResult<&'py PyAny> {
    match value {
        Some(value) if value.is_true()? => Ok(value),
        _ => Ok(other),
    }
}

/// The envelopes (and task ids) of the calls `start..stop` of a uniform run (see `uniform_run`): the
/// message fields are `template`'s, with what differs per call taken from the call (see `_core.pyi`).
#[pyfunction]
#[pyo3(text_signature = "(template, calls, start, stop, ids, default, saferepr)")]
#[allow(clippy::too_many_arguments)]
pub fn uniform_envelopes<'py>(
    py: Python<'py>,
    template: &'py PyTuple,
    calls: &'py PyList,
    start: usize,
    stop: usize,
    ids: &'py PyList,
    default: &'py PyAny,
    saferepr: &'py PyAny,
) -> PyResult<(&'py PyList, &'py PyList)> {
    if stop > calls.len() || start > stop || ids.len() < 2 * stop {
        return Err(PyValueError::new_err(format!(
            "calls {start}..{stop} of {} with {} ids",
            calls.len(),
            ids.len()
        )));
    }
    let default = optional(default);
    let mut fields = fields_of(template)?;
    let reply_to = fields[20];
    let (envelopes, task_ids) = (PyList::empty(py), PyList::empty(py));
    let mut enc = Encoder::new(py, None);
    for i in start..stop {
        let call = call_at(calls, i)?;
        let keywords: &PyDict = call
            .get_item(CALL_KEYWORDS)?
            .downcast()
            .map_err(|_| PyTypeError::new_err("a call's keywords must be a dict"))?;
        let task_id = or(keywords.get_item(intern!(py, "task_id")), ids.get_item(2 * i)?)?;
        fields[0] = task_id;
        fields[5] = keywords
            .get_item(intern!(py, "group_id"))
            .unwrap_or_else(|| py.None().into_ref(py));
        fields[6] = keywords
            .get_item(intern!(py, "group_index"))
            .unwrap_or_else(|| py.None().into_ref(py));
        fields[10] = or(keywords.get_item(intern!(py, "root_id")), task_id)?;
        fields[20] = or(keywords.get_item(intern!(py, "reply_to")), reply_to)?;
        fields[21] = call.get_item(CALL_ARGS)?;
        fields[22] = call.get_item(CALL_KWARGS)?;
        fields[34] = ids.get_item(2 * i + 1)?;
        enc.out.clear();
        envelope(py, &mut enc, &fields, default, saferepr)?;
        envelopes.append(PyBytes::new(py, &enc.out))?;
        task_ids.append(task_id)?;
    }
    Ok((envelopes, task_ids))
}

/// `str(uuid.UUID(bytes=b, version=4))` for each 16 bytes `b` of `random`: ids from one read of the
/// OS's random source, formatted here because `uuid.uuid4()` costs microseconds apiece.
#[pyfunction]
#[pyo3(text_signature = "(random)")]
pub fn uuid4s<'py>(py: Python<'py>, random: &[u8]) -> PyResult<&'py PyList> {
    if !random.len().is_multiple_of(16) {
        return Err(PyValueError::new_err(format!(
            "random must be a multiple of 16 bytes long, got {}",
            random.len()
        )));
    }
    let out = PyList::empty(py);
    for chunk in random.chunks_exact(16) {
        let mut bytes: [u8; 16] = chunk.try_into().expect("chunks of 16");
        out.append(PyString::new(py, &uuid4_string(&mut bytes)))?;
    }
    Ok(out)
}

/// Sets the version (4) and variant (RFC 4122) bits of `bytes` and formats it 8-4-4-4-12.
fn uuid4_string(bytes: &mut [u8; 16]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let mut text = String::with_capacity(36);
    for (i, b) in bytes.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            text.push('-');
        }
        text.push(char::from(HEX[usize::from(b >> 4)]));
        text.push(char::from(HEX[usize::from(b & 0x0f)]));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::uuid4_string;

    #[test]
    fn uuid4_layout() {
        let mut bytes = [0xff_u8; 16];
        assert_eq!(uuid4_string(&mut bytes), "ffffffff-ffff-4fff-bfff-ffffffffffff");
        let mut bytes = [0_u8; 16];
        assert_eq!(uuid4_string(&mut bytes), "00000000-0000-4000-8000-000000000000");
    }
}
