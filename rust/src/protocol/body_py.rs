//! The protocol-v2 body `[args, kwargs, {callbacks, errbacks, chain, chord}]` in json or msgpack.

use pyo3::exceptions::PyValueError;
use pyo3::once_cell::GILOnceCell;
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyBytes, PyDict, PyFloat, PyList, PyLong, PyString, PyTuple};

use super::{Serializer, EMBED_KEYS};
use crate::json::encode_py::{optional, Encoder};
use crate::json::{decode_py, string::write_escaped};
use crate::msgpack::pack_py::Packer;
use crate::msgpack::unpack_py::Unpacker;
use crate::msgpack::write as mp;

/// The bytes `kombu.serialization.dumps((args, kwargs, embed), serializer)` produces.
pub fn encode(
    py: Python<'_>,
    serializer: Serializer,
    args: &PyAny,
    kwargs: &PyAny,
    embed: [&PyAny; 4],
    default: Option<&PyAny>,
) -> PyResult<Vec<u8>> {
    // The triple and the embed mapping are containers of their own: their items sit one and two levels deep.
    match serializer {
        Serializer::Json => {
            let mut enc = Encoder::new(py, default);
            enc.out.push(b'[');
            enc.value(args, 1)?;
            enc.out.extend_from_slice(b", ");
            enc.value(kwargs, 1)?;
            enc.out.extend_from_slice(b", {");
            for (i, (key, value)) in EMBED_KEYS.iter().zip(embed).enumerate() {
                if i > 0 {
                    enc.out.extend_from_slice(b", ");
                }
                write_escaped(&mut enc.out, key.as_bytes());
                enc.out.extend_from_slice(b": ");
                enc.value(value, 2)?;
            }
            enc.out.extend_from_slice(b"}]");
            Ok(enc.out)
        }
        Serializer::Msgpack => {
            let mut packer = Packer::new(py);
            packer.out.push(0x93);
            packer.pack(args, 1)?;
            packer.pack(kwargs, 1)?;
            packer.out.push(0x80 | 4);
            for (key, value) in EMBED_KEYS.iter().zip(embed) {
                mp::write_str(&mut packer.out, key.as_bytes()).expect("embed keys are short");
                packer.pack(value, 2)?;
            }
            Ok(packer.out)
        }
    }
}

/// Serializes the protocol-v2 body; returns `(body, content_type, content_encoding)`.
#[pyfunction]
#[pyo3(text_signature = "(args, kwargs, callbacks, errbacks, chain, chord, serializer, default)")]
#[allow(clippy::too_many_arguments)] // the Python signature
pub fn encode_task_body<'py>(
    py: Python<'py>,
    args: &'py PyAny,
    kwargs: &'py PyAny,
    callbacks: &'py PyAny,
    errbacks: &'py PyAny,
    chain: &'py PyAny,
    chord: &'py PyAny,
    serializer: &str,
    default: &'py PyAny,
) -> PyResult<(&'py PyBytes, &'py PyString, &'py PyString)> {
    let serializer = Serializer::from_name(serializer).ok_or_else(|| {
        PyValueError::new_err(format!(
            "unknown serializer {serializer:?} (expected 'json' or 'msgpack')"
        ))
    })?;
    let body = encode(
        py,
        serializer,
        args,
        kwargs,
        [callbacks, errbacks, chain, chord],
        optional(default),
    )?;
    Ok((
        PyBytes::new(py, &body),
        PyString::intern(py, serializer.content_type()),
        PyString::intern(py, serializer.content_encoding()),
    ))
}

/// How a decoded value reads in an error message: JSON's names for JSON's types.
fn kind(value: &PyAny) -> String {
    if value.is_none() {
        "null".to_owned()
    } else if value.downcast::<PyBool>().is_ok() {
        "a boolean".to_owned()
    } else if value.downcast::<PyLong>().is_ok() || value.downcast::<PyFloat>().is_ok() {
        "a number".to_owned()
    } else if value.downcast::<PyString>().is_ok() {
        "a string".to_owned()
    } else if value.downcast::<PyBytes>().is_ok() {
        "binary data".to_owned()
    } else if value.downcast::<PyList>().is_ok() {
        "an array".to_owned()
    } else if value.downcast::<PyDict>().is_ok() {
        "an object".to_owned()
    } else {
        format!("a {}", value.get_type().name().unwrap_or("?"))
    }
}

fn malformed(what: &str, value: &PyAny) -> PyErr {
    PyValueError::new_err(format!("malformed task body: {what}, not {}", kind(value)))
}

/// Deserializes a protocol-v2 body; returns `(args, kwargs, embed)` with all four embed keys present.
#[pyfunction]
#[pyo3(text_signature = "(body, content_type, tag_hook)")]
pub fn decode_task_body<'py>(
    py: Python<'py>,
    body: &'py PyBytes,
    content_type: &str,
    tag_hook: &'py PyAny,
) -> PyResult<&'py PyTuple> {
    let value = match Serializer::from_content_type(content_type) {
        Some(Serializer::Json) => decode_py::loads(py, body, optional(tag_hook))?,
        Some(Serializer::Msgpack) => Unpacker::new(py, body.as_bytes()).unpack_all()?,
        None => {
            return Err(PyValueError::new_err(format!(
                "unsupported content type {content_type:?} (expected {:?} or {:?})",
                super::CONTENT_TYPE_JSON,
                super::CONTENT_TYPE_MSGPACK
            )))
        }
    };
    let (args, kwargs, embed) = body_parts(py, value)?;
    Ok(PyTuple::new(py, [args.as_ref(), kwargs.as_ref(), embed.as_ref()]))
}

/// The body's `[args, kwargs, embed]`, checked, with embed a dict holding all of `EMBED_KEYS`.
pub fn body_parts<'py>(py: Python<'py>, value: &'py PyAny) -> PyResult<(&'py PyList, &'py PyDict, &'py PyDict)> {
    let triple = match value.downcast::<PyList>() {
        Ok(list) if list.len() == 3 => list,
        Ok(list) => {
            return Err(PyValueError::new_err(format!(
                "malformed task body: expected 3 items [args, kwargs, embed], got {}",
                list.len()
            )))
        }
        Err(_) => return Err(malformed("expected an array [args, kwargs, embed]", value)),
    };
    let (args, kwargs, embed) = (triple.get_item(0)?, triple.get_item(1)?, triple.get_item(2)?);
    let args: &PyList = args
        .downcast()
        .map_err(|_| malformed("args (item 0) must be an array", args))?;
    let kwargs: &PyDict = kwargs
        .downcast()
        .map_err(|_| malformed("kwargs (item 1) must be an object", kwargs))?;
    let embed = if embed.is_none() {
        PyDict::new(py)
    } else {
        embed
            .downcast::<PyDict>()
            .map_err(|_| malformed("embed (item 2) must be an object or null", embed))?
    };
    for key in embed_keys(py) {
        let key = key.as_ref(py);
        if !embed.contains(key)? {
            embed.set_item(key, py.None())?;
        }
    }
    Ok((args, kwargs, embed))
}

/// `EMBED_KEYS` as Python strs, made once (with their hashes): every task's body is read with them.
pub fn embed_keys(py: Python<'_>) -> &[Py<PyString>] {
    static KEYS: GILOnceCell<Vec<Py<PyString>>> = GILOnceCell::new();
    KEYS.get_or_init(py, || {
        EMBED_KEYS.iter().map(|k| PyString::intern(py, k).into()).collect()
    })
}
