//! `Message` (headers, properties, body, content type and encoding), `task_message` which builds one as
//! Celery's `as_task_v2` + kombu's `Producer.publish` would, and the virtual-transport envelope.

use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::intern;
use pyo3::once_cell::GILOnceCell;
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyBytes, PyDict, PyFloat, PyList, PyLong, PyString};

use super::envelope::{self, DeliveryProperty};
use super::{COMPRESSION_HEADER, CORRELATION_ID, HEADERS, LANG, REPLY_TO, TIMELIMIT};
use crate::base64;
use crate::compression_py::compress_any;
use crate::json::decode_py::{self, HeaderPositions};
use crate::json::encode_py::{optional, Encoder};
use crate::json::string::write_escaped;
use crate::key_cache_py::cached_key;

#[pyclass(
    name = "Message",
    module = "fastq._core",
    text_signature = "(body, content_type, content_encoding, headers, properties)"
)]
pub struct Message {
    #[pyo3(get)]
    headers: Py<PyDict>,
    #[pyo3(get, set)]
    properties: Py<PyDict>,
    #[pyo3(get, set)]
    body: Py<PyBytes>,
    #[pyo3(get, set)]
    content_type: Py<PyString>,
    #[pyo3(get, set)]
    content_encoding: Py<PyString>,
    /// The envelope it was decoded from and where some headers are in its text, which a worker with task
    /// events copies into `task-received` (`events_py::received_fields`, built only when one is sent);
    /// dropped when `headers` is replaced.
    envelope: Option<Box<(Py<PyBytes>, HeaderPositions)>>,
}

impl Message {
    pub fn envelope_headers<'py>(&'py self, py: Python<'py>) -> Option<(&'py [u8], &'py HeaderPositions)> {
        let (text, positions) = self.envelope.as_deref()?;
        Some((text.as_ref(py).as_bytes(), positions))
    }
}

/// The values `to_envelope` gives the delivery properties, as Python objects.
pub(super) struct Publication<'py> {
    pub exchange: &'py PyString,
    pub routing_key: &'py PyString,
    pub priority: &'py PyLong,
    pub delivery_mode: &'py PyLong,
    pub expiration: Option<&'py PyString>,
    pub delivery_tag: &'py PyString,
}

impl<'py> Publication<'py> {
    /// Writes the value of `property`; false when it is left out (an expiration of None).
    fn write(&self, enc: &mut Encoder<'py>, property: DeliveryProperty) -> PyResult<bool> {
        match property {
            DeliveryProperty::DeliveryMode => enc.value(self.delivery_mode, 2)?,
            DeliveryProperty::Expiration => match self.expiration {
                Some(expiration) => enc.string(expiration)?,
                None => return Ok(false),
            },
            DeliveryProperty::DeliveryInfo => {
                enc.out.push(b'{');
                write_escaped(&mut enc.out, envelope::EXCHANGE.as_bytes());
                enc.out.extend_from_slice(b": ");
                enc.string(self.exchange)?;
                enc.out.extend_from_slice(b", ");
                write_escaped(&mut enc.out, envelope::ROUTING_KEY.as_bytes());
                enc.out.extend_from_slice(b": ");
                enc.string(self.routing_key)?;
                enc.out.push(b'}');
            }
            DeliveryProperty::Priority => enc.value(self.priority, 2)?,
            DeliveryProperty::BodyEncoding => write_escaped(&mut enc.out, envelope::BASE64.as_bytes()),
            DeliveryProperty::DeliveryTag => enc.string(self.delivery_tag)?,
        }
        Ok(true)
    }
}

fn write_key(out: &mut Vec<u8>, first: bool, key: &str) {
    if !first {
        out.extend_from_slice(b", ");
    }
    write_escaped(out, key.as_bytes());
    out.extend_from_slice(b": ");
}

/// Writes the envelope of one message: body (base64), content encoding and type, the headers as
/// `headers` writes them, then the message's `properties` followed by the delivery properties.
///
/// Delivery properties already among `properties` are overwritten in place; the rest follow in the order
/// kombu adds them. Shared by `Message.to_envelope` and `task_envelopes`, so both write the same bytes.
/// Bodies at least this long are base64-encoded without the GIL: a worker's `task.multi` event batches
/// (50-100 KiB) are encoded on its event thread, which would otherwise stall the worker's loop meanwhile.
const RELEASE_GIL_FROM: usize = 16 * 1024;

pub(super) fn write_envelope<'py>(
    enc: &mut Encoder<'py>,
    body: &[u8],
    content_encoding: &'py PyString,
    content_type: &'py PyString,
    headers: impl FnOnce(&mut Encoder<'py>) -> PyResult<()>,
    properties: &[(&'py PyAny, &'py PyAny)],
    publication: &Publication<'py>,
) -> PyResult<()> {
    enc.out.reserve(base64::encoded_len(body.len()) + 512);
    enc.out.push(b'{');
    write_key(&mut enc.out, true, envelope::BODY);
    enc.out.push(b'"');
    if body.len() >= RELEASE_GIL_FROM {
        let py = enc.py();
        let out = &mut enc.out;
        py.allow_threads(|| base64::encode_into(out, body));
    } else {
        base64::encode_into(&mut enc.out, body);
    }
    enc.out.push(b'"');
    write_key(&mut enc.out, false, envelope::CONTENT_ENCODING);
    enc.string(content_encoding)?;
    write_key(&mut enc.out, false, envelope::CONTENT_TYPE);
    enc.string(content_type)?;
    write_key(&mut enc.out, false, envelope::HEADERS);
    headers(enc)?;
    write_key(&mut enc.out, false, envelope::PROPERTIES);

    let mut written = [false; DeliveryProperty::ALL.len()];
    enc.out.push(b'{');
    let mut first = true;
    for &(key, value) in properties {
        let overridden = key
            .downcast::<PyString>()
            .ok()
            .and_then(|k| k.to_str().ok())
            .and_then(DeliveryProperty::from_name);
        if !first {
            enc.out.extend_from_slice(b", ");
        }
        enc.key(key)?;
        enc.out.extend_from_slice(b": ");
        match overridden {
            Some(p) if p != DeliveryProperty::Expiration || publication.expiration.is_some() => {
                publication.write(enc, p)?;
                written[p as usize] = true;
            }
            _ => enc.value(value, 2)?,
        }
        first = false;
    }
    for p in DeliveryProperty::ALL {
        if written[p as usize] {
            continue;
        }
        let start = enc.out.len();
        write_key(&mut enc.out, first, p.name());
        if publication.write(enc, p)? {
            first = false;
        } else {
            enc.out.truncate(start);
        }
    }
    enc.out.extend_from_slice(b"}}");
    Ok(())
}

/// `obj[key]`, which must be present and of type `T`; `what` names it in the error.
fn field<'py, T: pyo3::PyTypeInfo + pyo3::PyNativeType>(doc: &'py PyDict, key: &str, what: &str) -> PyResult<&'py T> {
    // (the key cache's str, whose hash is known: a new str per lookup had to be hashed each time)
    let value = doc
        .get_item(cached_key(doc.py(), key))
        .ok_or_else(|| PyValueError::new_err(format!("malformed envelope: no {key:?}")))?;
    value
        .downcast::<T>()
        .map_err(|_| PyValueError::new_err(format!("malformed envelope: {key:?} must be {what}")))
}

/// The members of a decoded envelope, checked as kombu's virtual transport would use them.
pub(super) struct EnvelopeParts<'py> {
    pub headers: &'py PyDict,
    pub properties: &'py PyDict,
    pub content_type: &'py PyString,
    pub content_encoding: &'py PyString,
    pub body: EnvelopeBody<'py>,
}

/// A body as the envelope carries it: base64 (decoded here), or text that is the body's UTF-8 itself.
pub(super) enum EnvelopeBody<'py> {
    Decoded(Vec<u8>),
    Text(&'py PyString),
}

impl<'py> EnvelopeParts<'py> {
    pub fn of(doc: &'py PyAny) -> PyResult<Self> {
        let doc: &PyDict = doc
            .downcast()
            .map_err(|_| PyValueError::new_err("malformed envelope: not a JSON object"))?;
        let body: &PyString = field(doc, envelope::BODY, "a string")?;
        let content_type: &PyString = field(doc, envelope::CONTENT_TYPE, "a string")?;
        let content_encoding: &PyString = field(doc, envelope::CONTENT_ENCODING, "a string")?;
        let headers: &PyDict = field(doc, envelope::HEADERS, "an object")?;
        let properties: &PyDict = field(doc, envelope::PROPERTIES, "an object")?;
        let body_encoding = properties
            .get_item(cached_key(doc.py(), envelope::BODY_ENCODING))
            .filter(|e| !e.is_none());
        let body = match body_encoding {
            Some(e) if e.extract::<&str>().is_ok_and(|e| e == envelope::BASE64) => {
                let text = body
                    .to_str()
                    .map_err(|_| PyValueError::new_err("malformed envelope: bad base64 body"))?;
                EnvelopeBody::Decoded(
                    base64::decode(text.as_bytes())
                        .map_err(|_| PyValueError::new_err("malformed envelope: bad base64 body"))?,
                )
            }
            // kombu decodes only non-UTF-8 encodings; a UTF-8 (or unlabelled) body is the text itself.
            Some(e) if !e.extract::<&str>().is_ok_and(|e| e.eq_ignore_ascii_case("utf-8")) => {
                return Err(PyValueError::new_err(format!(
                    "malformed envelope: unsupported body_encoding {}",
                    e.repr()?
                )))
            }
            _ => EnvelopeBody::Text(body),
        };
        Ok(Self {
            headers,
            properties,
            content_type,
            content_encoding,
            body,
        })
    }
}

#[pymethods]
impl Message {
    #[new]
    fn new(
        body: Py<PyBytes>,
        content_type: Py<PyString>,
        content_encoding: Py<PyString>,
        headers: Py<PyDict>,
        properties: Py<PyDict>,
    ) -> Self {
        Self {
            headers,
            properties,
            body,
            content_type,
            content_encoding,
            envelope: None,
        }
    }

    #[setter]
    fn set_headers(&mut self, headers: Py<PyDict>) {
        self.headers = headers;
        self.envelope = None;
    }

    /// The JSON document kombu's virtual transports store for this message.
    #[pyo3(text_signature = "($self, exchange, routing_key, priority, delivery_mode, expiration, delivery_tag)")]
    #[allow(clippy::too_many_arguments)] // the Python signature
    fn to_envelope<'py>(
        &self,
        py: Python<'py>,
        exchange: &'py PyString,
        routing_key: &'py PyString,
        priority: &'py PyLong,
        delivery_mode: &'py PyLong,
        expiration: &'py PyAny,
        delivery_tag: &'py PyString,
    ) -> PyResult<&'py PyBytes> {
        let publication = Publication {
            exchange,
            routing_key,
            priority,
            delivery_mode,
            expiration: optional(expiration).map(PyAny::downcast).transpose()?,
            delivery_tag,
        };
        let mut enc = Encoder::new(py, None);
        let properties: Vec<(&PyAny, &PyAny)> = self.properties.as_ref(py).iter().collect();
        let headers = self.headers.as_ref(py);
        write_envelope(
            &mut enc,
            self.body.as_ref(py).as_bytes(),
            self.content_encoding.as_ref(py),
            self.content_type.as_ref(py),
            |enc| enc.value(headers, 1),
            &properties,
            &publication,
        )?;
        Ok(PyBytes::new(py, &enc.out))
    }

    /// Parses a kombu virtual-transport envelope.
    #[staticmethod]
    #[pyo3(text_signature = "(data, tag_hook)")]
    fn from_envelope(py: Python<'_>, data: &PyAny, tag_hook: &PyAny) -> PyResult<Self> {
        let (doc, positions) = decode_py::loads_envelope(py, data, optional(tag_hook))?;
        let parts = EnvelopeParts::of(doc)?;
        let body: &PyBytes = match parts.body {
            EnvelopeBody::Decoded(raw) => PyBytes::new(py, &raw),
            EnvelopeBody::Text(text) => text
                .call_method1(intern!(py, "encode"), ("utf-8",))?
                .downcast::<PyBytes>()?,
        };
        Ok(Self {
            headers: parts.headers.into(),
            properties: parts.properties.into(),
            body: body.into(),
            content_type: parts.content_type.into(),
            content_encoding: parts.content_encoding.into(),
            // (bytes only: a str envelope's text would have to be kept encoded)
            envelope: positions
                .zip(data.downcast::<PyBytes>().ok())
                .map(|(positions, text)| Box::new((text.into(), positions))),
        })
    }

    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        let headers = self.headers.as_ref(py);
        let mut parts = Vec::new();
        for key in ["task", "id"] {
            if let Some(v) = headers.get_item(key) {
                parts.push(format!("{key}={}", v.repr()?));
            }
        }
        parts.push(format!("content_type={}", self.content_type.as_ref(py).repr()?));
        parts.push(format!("body=<{} bytes>", self.body.as_ref(py).as_bytes().len()));
        Ok(format!("Message({})", parts.join(", ")))
    }
}

/// The header names as interned Python strs, made once: most messages are built from them.
pub(super) fn header_names(py: Python<'_>) -> &[Py<PyString>] {
    static NAMES: GILOnceCell<Vec<Py<PyString>>> = GILOnceCell::new();
    NAMES.get_or_init(py, || HEADERS.iter().map(|h| PyString::intern(py, h).into()).collect())
}

/// `obj` if it is None or a `T`, for parameters typed `T | None`.
pub(super) fn none_or<'py, T: pyo3::PyTypeInfo + pyo3::PyNativeType>(
    obj: &'py PyAny,
    name: &str,
    what: &str,
) -> PyResult<&'py PyAny> {
    if obj.is_none() || obj.downcast::<T>().is_ok() {
        Ok(obj)
    } else {
        Err(PyTypeError::new_err(format!(
            "{name} must be {what} or None, not {}",
            obj.get_type().name()?
        )))
    }
}

/// Time limits are kept as given: Celery writes `30` for an int and `30.0` for a float.
pub(super) fn time_limit_or_none<'py>(obj: &'py PyAny, name: &str) -> PyResult<&'py PyAny> {
    if obj.downcast::<PyLong>().is_ok() && obj.downcast::<PyBool>().is_err() {
        Ok(obj)
    } else {
        none_or::<PyFloat>(obj, name, "a number")
    }
}

/// The values of the protocol-v2 headers of one message, before they are checked.
pub(super) struct TaskHeaders<'py> {
    pub task_id: &'py PyAny,
    pub name: &'py PyAny,
    pub shadow: &'py PyAny,
    pub eta: &'py PyAny,
    pub expires: &'py PyAny,
    pub group_id: &'py PyAny,
    pub group_index: &'py PyAny,
    pub retries: &'py PyAny,
    pub time_limit: &'py PyAny,
    pub soft_time_limit: &'py PyAny,
    pub root_id: &'py PyAny,
    pub parent_id: &'py PyAny,
    pub argsrepr: &'py PyAny,
    pub kwargsrepr: &'py PyAny,
    pub origin: &'py PyAny,
    pub ignore_result: &'py PyAny,
    pub replaced_task_nesting: &'py PyAny,
    pub stamped_headers: &'py PyAny,
    pub stamps: &'py PyAny,
}

/// `obj` if it is a `T`; a TypeError naming the parameter otherwise.
pub(super) fn required<'py, T: pyo3::PyTypeInfo + pyo3::PyNativeType>(
    obj: &'py PyAny,
    name: &str,
    what: &str,
) -> PyResult<&'py PyAny> {
    if obj.downcast::<T>().is_ok() {
        Ok(obj)
    } else {
        Err(PyTypeError::new_err(format!(
            "{name} must be {what}, not {}",
            obj.get_type().name()?
        )))
    }
}

impl<'py> TaskHeaders<'py> {
    /// The header values in `HEADERS` order, type-checked; `timelimit` is left as None (see `values`), the
    /// two limits are returned beside them.
    pub fn checked(&self, py: Python<'py>) -> PyResult<([&'py PyAny; HEADERS.len()], [&'py PyAny; 2])> {
        let limits = [
            time_limit_or_none(self.time_limit, "time_limit")?,
            time_limit_or_none(self.soft_time_limit, "soft_time_limit")?,
        ];
        let values = [
            intern!(py, LANG),
            required::<PyString>(self.name, "name", "a str")?,
            required::<PyString>(self.task_id, "task_id", "a str")?,
            none_or::<PyString>(self.shadow, "shadow", "a str")?,
            none_or::<PyString>(self.eta, "eta", "a str")?,
            none_or::<PyString>(self.expires, "expires", "a str")?,
            none_or::<PyString>(self.group_id, "group_id", "a str")?,
            none_or::<PyLong>(self.group_index, "group_index", "an int")?,
            required::<PyLong>(self.retries, "retries", "an int")?,
            py.None().into_ref(py),
            required::<PyString>(self.root_id, "root_id", "a str")?,
            none_or::<PyString>(self.parent_id, "parent_id", "a str")?,
            required::<PyString>(self.argsrepr, "argsrepr", "a str")?,
            required::<PyString>(self.kwargsrepr, "kwargsrepr", "a str")?,
            required::<PyString>(self.origin, "origin", "a str")?,
            none_or::<PyBool>(self.ignore_result, "ignore_result", "a bool")?, // (None: send_task's default)
            required::<PyLong>(self.replaced_task_nesting, "replaced_task_nesting", "an int")?,
            none_or::<PyList>(self.stamped_headers, "stamped_headers", "a list")?,
            required::<PyDict>(self.stamps, "stamps", "a dict")?,
        ];
        Ok((values, limits))
    }

    /// The header values in `HEADERS` order, type-checked, with `timelimit` as `[hard, soft]`.
    pub fn values(&self, py: Python<'py>) -> PyResult<[&'py PyAny; HEADERS.len()]> {
        let (mut values, limits) = self.checked(py)?;
        values[TIMELIMIT] = PyList::new(py, limits);
        Ok(values)
    }
}

/// Builds a protocol-v2 task message with the headers in the order and shape `as_task_v2` emits.
#[pyfunction]
#[pyo3(
    text_signature = "(task_id, name, shadow, eta, expires, group_id, group_index, retries, time_limit, \
                          soft_time_limit, root_id, parent_id, argsrepr, kwargsrepr, origin, ignore_result, \
                          replaced_task_nesting, stamped_headers, stamps, extra_headers, reply_to, body, \
                          content_type, content_encoding, compression)"
)]
#[allow(clippy::too_many_arguments)] // the Python signature
pub fn task_message<'py>(
    py: Python<'py>,
    task_id: &'py PyString,
    name: &'py PyString,
    shadow: &'py PyAny,
    eta: &'py PyAny,
    expires: &'py PyAny,
    group_id: &'py PyAny,
    group_index: &'py PyAny,
    retries: &'py PyLong,
    time_limit: &'py PyAny,
    soft_time_limit: &'py PyAny,
    root_id: &'py PyString,
    parent_id: &'py PyAny,
    argsrepr: &'py PyString,
    kwargsrepr: &'py PyString,
    origin: &'py PyString,
    ignore_result: &'py PyAny,
    replaced_task_nesting: &'py PyLong,
    stamped_headers: &'py PyAny,
    stamps: &'py PyDict,
    extra_headers: &'py PyAny,
    reply_to: &'py PyString,
    body: &'py PyBytes,
    content_type: &'py PyString,
    content_encoding: &'py PyString,
    compression: &'py PyAny,
) -> PyResult<Message> {
    let values = TaskHeaders {
        task_id,
        name,
        shadow,
        eta,
        expires,
        group_id,
        group_index,
        retries,
        time_limit,
        soft_time_limit,
        root_id,
        parent_id,
        argsrepr,
        kwargsrepr,
        origin,
        ignore_result,
        replaced_task_nesting,
        stamped_headers,
        stamps,
    }
    .values(py)?;
    let headers = PyDict::new(py);
    for (key, value) in header_names(py).iter().zip(values) {
        headers.set_item(key, value)?;
    }
    if let Some(extra) = optional(extra_headers) {
        // dict.update, as Celery merges `apply_async(headers=...)`: known names keep their place.
        headers.call_method1(intern!(py, "update"), (extra,))?;
    }
    let body = match optional(compression) {
        Some(mime) => {
            let mime: &PyString = mime.downcast()?;
            let packed = compress_any(py, mime.to_str()?, body.as_bytes())?;
            headers.set_item(intern!(py, COMPRESSION_HEADER), mime)?;
            PyBytes::new(py, &packed)
        }
        None => body,
    };
    let properties = PyDict::new(py);
    properties.set_item(intern!(py, CORRELATION_ID), task_id)?;
    properties.set_item(intern!(py, REPLY_TO), reply_to)?;
    Ok(Message {
        headers: headers.into(),
        properties: properties.into(),
        body: body.into(),
        content_type: content_type.into(),
        content_encoding: content_encoding.into(),
        envelope: None,
    })
}
