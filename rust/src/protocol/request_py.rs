//! The request a task runs with (the fields Celery's `Context` is built from), made from a task message.
//!
//! Every task a pool child runs starts here, so `job_request` goes from the envelope the broker stored
//! straight to `(args, kwargs, request)`: one pass over the envelope that builds only the headers and the
//! four properties a request takes (`job_envelope_py`), the body decoded from its base64 text in the
//! input and parsed from Rust memory, the request dict built with interned keys. Going through `Message`
//! and the Python helpers cost a no-op task 7.6 µs of the child's ~13 (decode and run) on this project's
//! VM; decoding the whole envelope first, ~4.2; this, ~3.3. Anything it does not take on (a content type
//! outside the two built-in serializers or outside `accept`, a compressed body, an envelope the one-pass
//! reader leaves alone, any error) gives None, and the caller takes the general path, which reports
//! problems in its own words.

use pyo3::prelude::*;
use pyo3::types::{PyBool, PyDict, PyFrozenSet, PyString, PyTuple};
use pyo3::{ffi, intern, AsPyPointer, PyTypeInfo};

use super::body_py::{body_parts, embed_keys};
use super::{envelope, job_envelope_py, Serializer, COMPRESSION_HEADER};
use crate::base64;
use crate::json::decode_py;
use crate::json::encode_py::optional;
use crate::key_cache_py::cached_key;
use crate::msgpack::unpack_py::Unpacker;

/// Members a request dict ends up with: `task_request`'s 21, the 4 embed keys, the envelope its
/// `properties` are read from (`prepare_payload`), and `args`, `kwargs`, `called_directly` and `children`
/// from the trace.
const REQUEST_SIZE: ffi::Py_ssize_t = 30;

/// The request dict of a task message with these headers and properties, delivered from `queue`, run by
/// the worker `hostname`. The body's embed keys are not in it (see `job_request`).
#[pyfunction]
#[pyo3(text_signature = "(headers, properties, queue, redelivered, hostname)")]
pub fn task_request<'py>(
    py: Python<'py>,
    headers: &'py PyDict,
    properties: &'py PyDict,
    queue: &'py PyAny,
    redelivered: bool,
    hostname: &'py PyAny,
) -> PyResult<&'py PyDict> {
    let props = Props {
        correlation_id: get(properties, intern!(py, "correlation_id")),
        reply_to: get(properties, intern!(py, "reply_to")),
        priority: get(properties, intern!(py, "priority")),
        delivery_info: get(properties, intern!(py, "delivery_info")),
        delivery_info_is_new: false,
    };
    request(py, headers, props, queue, redelivered, hostname)
}

/// The properties a request is made with (None: absent).
#[derive(Clone, Copy)]
struct Props<'py> {
    correlation_id: Option<&'py PyAny>,
    reply_to: Option<&'py PyAny>,
    priority: Option<&'py PyAny>,
    delivery_info: Option<&'py PyAny>,
    /// `delivery_info` was made for this request alone (decoded here), so it is completed in place.
    delivery_info_is_new: bool,
}

fn request<'py>(
    py: Python<'py>,
    headers: &'py PyDict,
    props: Props<'py>,
    queue: &'py PyAny,
    redelivered: bool,
    hostname: &'py PyAny,
) -> PyResult<&'py PyDict> {
    // Keys are interned once (with their hashes), and values are read and stored without pyo3's
    // per-object bookkeeping: a dict literal in Python cost 1.3 µs, this 0.95 with the call's own cost.
    let none = py.None();
    let none = none.as_ref(py);
    let zero = 0_i32.to_object(py);
    // Sized for every member up front: the ~30 it ends with (these, the embed keys, and what the trace adds)
    // made a dict grown from empty resize three times.
    // SAFETY: returns a new reference (NULL with an error set), owned by the GIL pool from here.
    let request: &PyDict = unsafe { py.from_owned_ptr_or_err(ffi::_PyDict_NewPresized(REQUEST_SIZE))? };
    macro_rules! copy {
        ($from:ident, $($name:literal),+) => {
            $( let key = intern!(py, $name); put(request, key, get($from, key).unwrap_or(none))?; )+
        };
    }
    // `h.get(name) or 0` in Python: any false value counts as 0
    macro_rules! count {
        ($name:literal) => {{
            let key = intern!(py, $name);
            match get(headers, key) {
                Some(v) if v.is_true()? => put(request, key, v)?,
                _ => put(request, key, zero.as_ref(py))?,
            }
        }};
    }
    copy!(headers, "id", "task");
    count!("retries");
    copy!(
        headers,
        "eta",
        "expires",
        "group",
        "group_index",
        "root_id",
        "parent_id",
        "shadow",
        "origin"
    );
    // As sent, as Celery's request has them: `timelimit` the header's list (not the limits the worker
    // enforces, which may be the task's or the worker's own), `ignore_result` None when the sender left it
    // to the task (Celery's `send_task`), and left out (the Context's default) when the header is absent.
    copy!(headers, "timelimit");
    let ignore_result = intern!(py, "ignore_result");
    if let Some(ignore) = get(headers, ignore_result) {
        put(request, ignore_result, ignore)?;
    }
    copy!(headers, "stamps", "stamped_headers");
    count!("replaced_task_nesting");
    put(request, intern!(py, "headers"), headers)?;
    put(
        request,
        intern!(py, "correlation_id"),
        props.correlation_id.unwrap_or(none),
    )?;
    put(request, intern!(py, "reply_to"), props.reply_to.unwrap_or(none))?;

    let delivery_info = match props.delivery_info {
        Some(d) if d.is_true()? => match d.downcast::<PyDict>() {
            Ok(d) if props.delivery_info_is_new => d,
            Ok(d) => d.copy()?,
            Err(_) => PyDict::type_object(py).call1((d,))?.downcast()?, // what `dict(value)` makes of it
        },
        _ => PyDict::new(py),
    };
    let routing_key = intern!(py, "routing_key");
    if get(delivery_info, routing_key).is_none() {
        put(delivery_info, routing_key, queue)?;
    }
    put(delivery_info, intern!(py, "priority"), props.priority.unwrap_or(none))?;
    put(delivery_info, intern!(py, "redelivered"), PyBool::new(py, redelivered))?;
    put(request, intern!(py, "delivery_info"), delivery_info)?;
    put(request, intern!(py, "hostname"), hostname)?;
    Ok(request)
}

/// `dict.get(key)` for a str key, borrowed from the dict (which nothing here removes items from).
fn get<'py>(dict: &'py PyDict, key: &PyString) -> Option<&'py PyAny> {
    // SAFETY: both are live objects; the result is a borrowed reference (or NULL: absent), valid while the
    // dict holds it, which is while `dict` is borrowed here. A str key's lookup cannot raise.
    unsafe {
        let item = ffi::PyDict_GetItem(dict.as_ptr(), key.as_ptr());
        dict.py().from_borrowed_ptr_or_opt(item)
    }
}

/// `dict[key] = value`; the dict takes its own references.
fn put(dict: &PyDict, key: &PyString, value: &PyAny) -> PyResult<()> {
    // SAFETY: all three are live objects for the duration of the call.
    if unsafe { ffi::PyDict_SetItem(dict.as_ptr(), key.as_ptr(), value.as_ptr()) } == 0 {
        Ok(())
    } else {
        Err(PyErr::fetch(dict.py()))
    }
}

/// `(args, kwargs, request)` of the task envelope `data`, the request holding the body's embed keys; None
/// when the general path must decode it.
#[pyfunction]
#[pyo3(text_signature = "(data, queue, redelivered, hostname, accept, tag_hook)")]
pub fn job_request<'py>(
    py: Python<'py>,
    data: &'py PyAny,
    queue: &'py PyAny,
    redelivered: bool,
    hostname: &'py PyAny,
    accept: &'py PyFrozenSet,
    tag_hook: &'py PyAny,
) -> PyResult<Option<&'py PyTuple>> {
    let Ok(input) = decode_py::input_text(data) else {
        return Ok(None);
    };
    let Some(parts) = job_envelope_py::read(py, input) else {
        return Ok(None);
    };
    let Some(serializer) = Serializer::from_content_type(parts.content_type) else {
        return Ok(None);
    };
    if !accept.contains(cached_key(py, parts.content_type))? {
        return Ok(None);
    }
    let headers: &PyDict = parts.headers.downcast()?;
    if let Some(compression) = get(headers, intern!(py, COMPRESSION_HEADER)) {
        if compression.is_true()? {
            return Ok(None);
        }
    }
    let decoded;
    let body = match parts.body_encoding {
        Some(envelope::BASE64) => match base64::decode(parts.body.as_bytes()) {
            Ok(raw) => {
                decoded = raw;
                decoded.as_slice()
            }
            Err(_) => return Ok(None),
        },
        Some(e) if !e.eq_ignore_ascii_case("utf-8") => return Ok(None),
        _ => parts.body.as_bytes(),
    };
    let value = match serializer {
        Serializer::Json => match std::str::from_utf8(body) {
            Ok(text) => decode_py::loads_text(py, text, optional(tag_hook)),
            Err(_) => return Ok(None),
        },
        Serializer::Msgpack => Unpacker::new(py, body).unpack_all(),
    };
    let Ok((args, kwargs, embed)) = value.and_then(|value| body_parts(py, value)) else {
        return Ok(None);
    };
    let props = Props {
        correlation_id: parts.correlation_id,
        reply_to: parts.reply_to,
        priority: parts.priority,
        delivery_info: parts.delivery_info,
        delivery_info_is_new: true,
    };
    let request = request(py, headers, props, queue, redelivered, hostname)?;
    for key in embed_keys(py) {
        let key = key.as_ref(py);
        put(request, key, get(embed, key).unwrap_or_else(|| py.None().into_ref(py)))?;
    }
    Ok(Some(PyTuple::new(
        py,
        [args.as_ref(), kwargs.as_ref(), request.as_ref()],
    )))
}
