//! The Redis fetch script's reply as the deliveries the worker's parent holds.
//!
//! A fetch brings a window of messages (32 for a prefork worker of concurrency 2 with Celery's multiplier
//! 16) to the fetcher thread, the one thread every task goes through, and the reply's next stop was a
//! Python loop over it: per message a tag decoded, the envelope's head read, the delivery counts worked
//! out and a `Delivery` made, ~1.2 µs of interpreter time around the head's 1.6 µs on this project's
//! VM. Here the loop is compiled and calls into Python only to make each `Delivery` (a Python class every
//! broker shares) and for the rare message the head does not vouch for, which `decoded` decodes whole.

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList, PyLong, PyString, PyTuple};

use crate::protocol::head_py::head_of;

/// Where the delivery counts are in `HEAD_FIELDS`.
const DELIVERIES: usize = 14;
const REDELIVERED: usize = 15;

/// The deliveries (and their tags) in `reply`, the fetch script's flat array of (1-based queue key index,
/// tag, envelope) triples: `queues` names the queue of each key, `now` is when they were received.
/// `delivery` is the `Delivery` class; `decoded(tag, queue, envelope)` makes the delivery of an envelope
/// without a head; `counts(earlier, redelivered)` is `(redelivered, deliveries)` for an envelope handed
/// out before (one never handed out before has `(False, 1)`).
#[pyfunction]
#[pyo3(text_signature = "(reply, queues, now, delivery, decoded, counts)")]
pub fn fetched_deliveries<'py>(
    py: Python<'py>,
    reply: &'py PyList,
    queues: &'py PyList,
    now: f64,
    delivery: &'py PyAny,
    decoded: &'py PyAny,
    counts: &'py PyAny,
) -> PyResult<(&'py PyList, &'py PyList)> {
    let out = PyList::empty(py);
    let tags = PyList::empty(py);
    if !reply.len().is_multiple_of(3) {
        return Err(PyValueError::new_err(format!(
            "a fetch reply holds (key, tag, envelope) triples, not {} items",
            reply.len()
        )));
    }
    let made = Made::new(py, now, delivery, decoded, counts);
    for at in (0..reply.len()).step_by(3) {
        let queue = queue_of(queues, reply.get_item(at)?)?;
        let tag = text(py, reply.get_item(at + 1)?)?;
        let raw = reply.get_item(at + 2)?;
        let envelope: &PyBytes = match raw.downcast::<PyBytes>() {
            Ok(bytes) => bytes,
            Err(_) => py.get_type::<PyBytes>().call1((raw,))?.downcast()?,
        };
        out.append(made.delivery(tag, queue, envelope)?)?;
        tags.append(tag)?;
    }
    Ok((out, tags))
}

/// The deliveries (and their tags) among the replies of a batch of `LMOVE`s into a hold
/// (`fastq.brokers.redis.holding`): each bytes reply is an envelope taken from `queue`, whose tag is read
/// from it as the fetch script reads it (the key `"delivery_tag": "` found once, a plain string), or by
/// `tag_of(envelope)` for anything else; other replies (nil: the queue ran out, errors) are skipped.
#[pyfunction]
#[pyo3(text_signature = "(replies, queue, now, delivery, decoded, counts, tag_of)")]
#[allow(clippy::too_many_arguments)]
pub fn moved_deliveries<'py>(
    py: Python<'py>,
    replies: &'py PyList,
    queue: &'py PyAny,
    now: f64,
    delivery: &'py PyAny,
    decoded: &'py PyAny,
    counts: &'py PyAny,
    tag_of: &'py PyAny,
) -> PyResult<(&'py PyList, &'py PyList)> {
    let out = PyList::empty(py);
    let tags = PyList::empty(py);
    let made = Made::new(py, now, delivery, decoded, counts);
    for raw in replies {
        let Ok(envelope) = raw.downcast::<PyBytes>() else {
            continue;
        };
        let tag = match plain_tag(envelope.as_bytes()) {
            Some(tag) => PyString::new(py, tag),
            None => tag_of.call1((envelope,))?.downcast::<PyString>()?,
        };
        out.append(made.delivery(tag, queue, envelope)?)?;
        tags.append(tag)?;
    }
    Ok((out, tags))
}

/// The key kombu, Celery and fastq write the tag under (in the envelope's properties, near its end).
const TAG_KEY: &[u8] = b"\"delivery_tag\": \"";

/// The delivery tag when the envelope has the key exactly once and its value is a plain string (no escape).
fn plain_tag(envelope: &[u8]) -> Option<&str> {
    let at = find_last(envelope, TAG_KEY)?;
    if find_last(&envelope[..at + TAG_KEY.len() - 1], TAG_KEY).is_some() {
        return None; // twice: the full decode decides
    }
    let start = at + TAG_KEY.len();
    let len = envelope[start..].iter().position(|&b| b == b'"')?;
    let tag = &envelope[start..start + len];
    if tag.is_empty() || tag.contains(&b'\\') {
        return None;
    }
    std::str::from_utf8(tag).ok()
}

fn find_last(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    if haystack.len() < needle.len() {
        return None;
    }
    (0..=haystack.len() - needle.len())
        .rev()
        .find(|&i| haystack[i] == needle[0] && &haystack[i..i + needle.len()] == needle)
}

/// What turns an envelope into a `Delivery` (one per call of the functions above).
struct Made<'py> {
    py: Python<'py>,
    none: PyObject,
    received: PyObject,
    not_before: PyObject,
    once: PyObject,
    delivery: &'py PyAny,
    decoded: &'py PyAny,
    counts: &'py PyAny,
}

impl<'py> Made<'py> {
    fn new(py: Python<'py>, now: f64, delivery: &'py PyAny, decoded: &'py PyAny, counts: &'py PyAny) -> Self {
        Made {
            py,
            none: py.None(),
            received: now.to_object(py),
            not_before: false.to_object(py),
            once: 1_i32.to_object(py),
            delivery,
            decoded,
            counts,
        }
    }

    fn delivery(&self, tag: &'py PyString, queue: &'py PyAny, envelope: &'py PyBytes) -> PyResult<&'py PyAny> {
        let py = self.py;
        match head_of(py, envelope)? {
            None => self.decoded.call1((tag, queue, envelope)),
            Some(head) => {
                let earlier = head.field(py, DELIVERIES)?;
                let again = head.field(py, REDELIVERED)?;
                let (redelivered, deliveries): (&PyAny, &PyAny) = if earlier.is_none(py) && again.is_none(py) {
                    (self.not_before.as_ref(py), self.once.as_ref(py))
                } else {
                    self.counts.call1((earlier, again))?.extract()?
                };
                let head = Py::new(py, head)?;
                self.delivery.call1(PyTuple::new(
                    py,
                    [
                        tag.as_ref(),
                        queue,
                        self.none.as_ref(py),
                        envelope.as_ref(),
                        redelivered,
                        deliveries,
                        self.none.as_ref(py),
                        self.received.as_ref(py),
                        head.as_ref(py).as_ref(),
                    ],
                ))
            }
        }
    }
}

/// The queue named for the 1-based key index `index`.
fn queue_of<'py>(queues: &'py PyList, index: &'py PyAny) -> PyResult<&'py PyAny> {
    let i: isize = match index.downcast::<PyLong>() {
        Ok(i) => i.extract()?,
        Err(_) => index.py().get_type::<PyLong>().call1((index,))?.extract()?, // what `int(index)` makes of it
    };
    match usize::try_from(i - 1) {
        Ok(at) if at < queues.len() => queues.get_item(at),
        _ => Err(PyValueError::new_err(format!(
            "the fetch reply names queue key {i} of {}",
            queues.len()
        ))),
    }
}

/// A tag as text: bytes decoded as UTF-8 (raising as `bytes.decode` does), anything else as `str()` makes it.
fn text<'py>(py: Python<'py>, value: &'py PyAny) -> PyResult<&'py PyString> {
    if let Ok(bytes) = value.downcast::<PyBytes>() {
        return match std::str::from_utf8(bytes.as_bytes()) {
            Ok(text) => Ok(PyString::new(py, text)),
            Err(_) => Ok(bytes.call_method0(pyo3::intern!(py, "decode"))?.downcast()?),
        };
    }
    value.str()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::head_py::HEAD_FIELDS;

    #[test]
    fn a_plain_tag_is_read_once_and_only_then() {
        assert_eq!(plain_tag(br#"{"properties": {"delivery_tag": "abc"}}"#), Some("abc"));
        assert_eq!(
            plain_tag(br#"{"a": "\"delivery_tag\": \"x\"", "delivery_tag": "t"}"#),
            Some("t")
        );
        assert_eq!(plain_tag(br#"{"delivery_tag": "a", "delivery_tag": "b"}"#), None);
        assert_eq!(plain_tag(br#"{"delivery_tag": "a\"b"}"#), None);
        assert_eq!(plain_tag(br#"{"delivery_tag": ""}"#), None);
        assert_eq!(plain_tag(br#"{"delivery_tag":"abc"}"#), None);
        assert_eq!(plain_tag(br#"{"delivery_tag": "abc"#), None);
        assert_eq!(plain_tag(b"\"delivery_tag\": \"\xff\""), None);
    }

    #[test]
    fn the_counts_are_where_the_head_keeps_them() {
        assert_eq!(HEAD_FIELDS[DELIVERIES], "x-fastq-deliveries");
        assert_eq!(HEAD_FIELDS[REDELIVERED], "redelivered");
    }
}
