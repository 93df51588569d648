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

/// Appends to `enc.out` the envelope of the message `item` describes.
fn envelope<'py>(
    py: Python<'py>,
    enc: &mut Encoder<'py>,
    item: &'py PyTuple,
    default: Option<&'py PyAny>,
    saferepr: &'py PyAny,
) -> PyResult<()> {
    if item.len() != FIELDS {
        return Err(PyValueError::new_err(format!(
            "a message is a tuple of {FIELDS} fields, got {}",
            item.len()
        )));
    }
    let f = |i: usize| item.get_item(i).expect("length checked");
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
        envelope(py, &mut enc, item, default, saferepr)?;
        out.append(PyBytes::new(py, &enc.out))?;
    }
    Ok(out)
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
