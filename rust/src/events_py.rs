//! A worker's task events, written as JSON the moment they happen.
//!
//! With `-E` a worker sends three events per task (received, started, succeeded), so what the loop pays per
//! event is what task events cost. Building a dict per event and encoding the batch later cost the worker
//! parent about 9 µs of CPU per task, and a second thread taking the GIL for long stretches to encode it:
//! here each event is one call that appends its JSON object to a buffer (the fields every event carries,
//! written once at construction, plus the per-type keys, written once by `define`), and the sender thread
//! takes ready-made `task.multi` bodies out of it.

use std::collections::HashMap;
use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use pyo3::exceptions::{PyIndexError, PyValueError};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyFloat, PyString, PyTuple};
use pyo3::PyCell;

use crate::json::decode_py::{header_text, HeaderPositions};
use crate::json::encode_py::{optional, Encoder};
use crate::json::string::write_escaped;
use crate::json::{write_float, write_i64, write_u64};
use crate::protocol::head_py::TaskHead;
use crate::protocol::message_py::Message;

/// The JSON written around the values of one event type.
struct Schema {
    /// `,"key":` for each field, in the order `push` takes the values.
    keys: Vec<Vec<u8>>,
    /// Per field, the decimals a float value is written with (a time in seconds), instead of its repr:
    /// CPython's repr of a float with 16-17 significant digits (any `time.time()`, most runtimes) needs an
    /// exact-precision pass to break ties as CPython does, which made these two floats a tenth of a task's
    /// event cost.
    decimals: Vec<Option<u32>>,
    /// `,"timestamp":` ... is written between the fields and this: `,"type":"task-received"}`.
    suffix: Vec<u8>,
}

#[derive(Default)]
struct Events {
    /// The events' JSON objects, back to back (no separators); those before `head` were taken.
    bytes: Vec<u8>,
    head: usize,
    /// Where each waiting event ends in `bytes`, oldest first.
    ends: VecDeque<usize>,
}

/// Taken bytes are dropped from the front of the buffer once they are at least this many and half of it.
const COMPACT_AFTER: usize = 1 << 16;

#[pyclass(name = "EventBuffer", module = "fastq._core")]
#[pyo3(text_signature = "(hostname, utcoffset, pid, default)")]
pub struct PyEventBuffer {
    /// `{"hostname":"...","utcoffset":N,"pid":N,"clock":`
    prefix: Vec<u8>,
    schemas: Vec<Schema>,
    default: Option<PyObject>,
    /// Written under the GIL by the loop thread and taken by the sender thread; the lock is never held
    /// across Python code (`default` runs before it is taken), so it is never contended for long.
    events: Mutex<Events>,
    /// The worker's task events (`worker()`): which task names send none, and whom to wake when
    /// `limit` events wait.
    worker: Option<Worker>,
}

struct Worker {
    kinds: [usize; 7],
    clock: PyObject,
    is_muted: PyObject,
    muted: Mutex<HashMap<String, bool>>,
    wakeup: PyObject,
    limit: usize,
}

/// The worker's task events and their fields after `uuid`: Celery's, and for `task-received` two of fastq's,
/// the queue the task waited in and when its client sent it (`fastq_sent_at`; None from Celery clients).
const WORKER_EVENTS: [(&str, &[&str]); 7] = [
    (
        "task-received",
        &[
            "name",
            "args",
            "kwargs",
            "root_id",
            "parent_id",
            "retries",
            "eta",
            "expires",
            "sent_at",
            "queue",
        ],
    ),
    ("task-started", &[]),
    ("task-succeeded", &["result", "runtime"]),
    ("task-failed", &["exception", "traceback"]),
    ("task-retried", &["exception", "traceback"]),
    ("task-rejected", &["requeue"]),
    ("task-revoked", &["terminated", "signum", "expired"]),
];
/// Float fields of the worker's events written as seconds to this many decimals (see `Schema::decimals`):
/// the client's send time to the microsecond, as `timestamp` is, and a runtime to the nanosecond.
const SECONDS_FIELDS: [(&str, u32); 2] = [("sent_at", SENT_AT_DECIMALS), ("runtime", 9)];
const SENT_AT_DECIMALS: u32 = 6;
const RECEIVED: usize = 0;
const STARTED: usize = 1;
const SUCCEEDED: usize = 2;
const FAILED: usize = 3;
const RETRIED: usize = 4;
const REJECTED: usize = 5;
const REVOKED: usize = 6;

impl Worker {
    /// Whether tasks of this name send no events (their `send_events` is False), asked once per name.
    fn skips(&self, py: Python<'_>, name: &PyAny) -> PyResult<bool> {
        let name: &PyString = name.downcast()?;
        let text = name.to_str()?;
        if let Some(muted) = self.muted.lock().unwrap_or_else(PoisonError::into_inner).get(text) {
            return Ok(*muted);
        }
        let muted = self.is_muted.as_ref(py).call1((name,))?.is_true()?;
        self.muted
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(text.to_owned(), muted);
        Ok(muted)
    }
}

/// Appends `time` as unix seconds with microseconds (`1796419702.360271`): what `time.time()` says to the
/// precision events are read at, without the cost of the shortest-repr float formatting.
fn write_timestamp(out: &mut Vec<u8>, since: Duration) {
    write_u64(out, since.as_secs());
    out.push(b'.');
    out.extend_from_slice(&fraction_digits(u64::from(since.subsec_micros()), 6)[..6]);
}

/// Appends the non-negative `seconds` to `decimals` places without trailing zeros (`0.000012`, `17.5`);
/// false, writing nothing, where that would not be exact (negative, not finite, or too large).
fn write_seconds(out: &mut Vec<u8>, seconds: f64, decimals: u32) -> bool {
    let scale = 10_u64.pow(decimals);
    #[allow(clippy::cast_precision_loss)]
    let scaled = seconds * scale as f64;
    // below 2**53 every integer is exact, so rounding to a whole number of units loses nothing more
    if !(0.0..9.0e15).contains(&scaled) {
        return false;
    }
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let units = scaled.round() as u64;
    write_u64(out, units / scale);
    out.push(b'.');
    let width = decimals as usize;
    let digits = fraction_digits(units % scale, width);
    let used = digits[..width]
        .iter()
        .rposition(|d| *d != b'0')
        .map_or(1, |last| last + 1);
    out.extend_from_slice(&digits[..used]);
    true
}

/// `fraction` (below `10^width`) as the `width` digits after a decimal point, zero-padded on the left.
fn fraction_digits(fraction: u64, width: usize) -> [u8; 19] {
    let mut digits = [b'0'; 19];
    let mut rest = fraction;
    for digit in digits[..width].iter_mut().rev() {
        *digit = b'0' + u8::try_from(rest % 10).unwrap_or(0);
        rest /= 10;
    }
    digits
}

/// The JSON of `task-received`'s fields from `name` to `sent_at`, each after a comma, from the text of
/// the envelope's headers (`input`, where `positions` says) as it is: what `task_received` would write
/// from the values decoded from them.
/// None where that does not hold, or could not be told without decoding (a header `parse_task_headers`
/// turns into another value: `argsrepr` missing, `retries` neither a count nor null), so the event is
/// written from the decoded values.
fn received_fields(input: &[u8], positions: &HeaderPositions) -> Option<Vec<u8>> {
    fn string(text: Option<&[u8]>) -> Option<&[u8]> {
        text.filter(|t| t.len() > 2 && t[0] == b'"')
    }
    let [task, argsrepr, kwargsrepr, root_id, parent_id, retries, eta, expires, sent_at] =
        std::array::from_fn(|i| header_text(input, positions, i));
    let retries = match retries {
        None | Some(b"null" | b"false") => b"0".as_slice(),
        Some(digits) if !digits.is_empty() && digits.iter().all(u8::is_ascii_digit) => digits,
        Some(_) => return None,
    };
    let mut out = Vec::with_capacity(256);
    for (key, text) in [
        (",\"name\":", string(task)?),
        (",\"args\":", string(argsrepr)?),
        (",\"kwargs\":", string(kwargsrepr)?),
        (",\"root_id\":", root_id.unwrap_or(b"null")),
        (",\"parent_id\":", parent_id.unwrap_or(b"null")),
        (",\"retries\":", retries),
        (",\"eta\":", eta.unwrap_or(b"null")),
        (",\"expires\":", expires.unwrap_or(b"null")),
    ] {
        out.extend_from_slice(key.as_bytes());
        out.extend_from_slice(text);
    }
    out.extend_from_slice(b",\"sent_at\":");
    let sent_at = sent_at.unwrap_or(b"null");
    // to the microsecond, as `task_received` writes a float it decoded (see `SECONDS_FIELDS`)
    let seconds = std::str::from_utf8(sent_at).ok().and_then(|t| t.parse::<f64>().ok());
    if !seconds.is_some_and(|s| sent_at[0] != b'"' && write_seconds(&mut out, s, SENT_AT_DECIMALS)) {
        out.extend_from_slice(sent_at);
    }
    Some(out)
}

fn json_string(text: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len() + 2);
    write_escaped(&mut out, text.as_bytes());
    out
}

impl PyEventBuffer {
    fn events(&self) -> MutexGuard<'_, Events> {
        self.events.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Declares an event type, its fields and the decimals of those written as seconds; returns its kind.
    fn add_schema<'a>(
        &mut self,
        r#type: &str,
        fields: impl Iterator<Item = &'a str>,
        decimals: Vec<Option<u32>>,
    ) -> usize {
        let keys = fields
            .map(|name| {
                let mut key = b",".to_vec();
                key.extend_from_slice(&json_string(name));
                key.push(b':');
                key
            })
            .collect();
        let mut suffix = b",\"type\":".to_vec();
        suffix.extend_from_slice(&json_string(r#type));
        suffix.push(b'}');
        self.schemas.push(Schema { keys, decimals, suffix });
        self.schemas.len() - 1
    }

    fn worker_append(
        &self,
        py: Python<'_>,
        worker: &Worker,
        kind: usize,
        uuid: &PyString,
        values: &[&PyAny],
    ) -> PyResult<()> {
        self.worker_append_after(py, worker, kind, uuid, None, values)
    }

    fn worker_append_after(
        &self,
        py: Python<'_>,
        worker: &Worker,
        kind: usize,
        uuid: &PyString,
        written: Option<&[u8]>,
        values: &[&PyAny],
    ) -> PyResult<()> {
        let clock: i64 = worker.clock.as_ref(py).call0()?.extract()?;
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        if self.append(py, kind, clock, now, uuid, written, values)? == worker.limit {
            worker.wakeup.as_ref(py).call0()?;
        }
        Ok(())
    }

    /// Appends one event of `kind`; the JSON of its first fields (keys and values, each after a comma) may
    /// be `written` already, and `values` are those of the fields after them (of all of them otherwise).
    #[allow(clippy::too_many_arguments)]
    fn append(
        &self,
        py: Python<'_>,
        kind: usize,
        clock: i64,
        time: Duration,
        uuid: &PyString,
        written: Option<&[u8]>,
        values: &[&PyAny],
    ) -> PyResult<usize> {
        let schema = self
            .schemas
            .get(kind)
            .ok_or_else(|| PyIndexError::new_err(format!("no event kind {kind}")))?;
        if values.len() > schema.keys.len() || (written.is_none() && values.len() != schema.keys.len()) {
            return Err(PyValueError::new_err(format!(
                "event kind {kind} has {} fields, got {} values",
                schema.keys.len(),
                values.len()
            )));
        }
        let first = schema.keys.len() - values.len();
        let mut encoder = Encoder::new(py, self.default.as_ref().map(|d| d.as_ref(py)));
        let out = &mut encoder.out;
        out.extend_from_slice(&self.prefix);
        write_i64(out, clock);
        out.extend_from_slice(b",\"uuid\":");
        encoder.string(uuid)?;
        if let Some(written) = written {
            encoder.out.extend_from_slice(written);
        }
        for ((key, value), decimals) in schema.keys[first..].iter().zip(values).zip(&schema.decimals[first..]) {
            encoder.out.extend_from_slice(key);
            let written = match (decimals, value.downcast::<PyFloat>()) {
                (Some(decimals), Ok(seconds)) => write_seconds(&mut encoder.out, seconds.value(), *decimals),
                _ => false,
            };
            if !written {
                encoder.value(value, 1)?;
            }
        }
        let out = &mut encoder.out;
        out.extend_from_slice(b",\"timestamp\":");
        write_timestamp(out, time);
        out.extend_from_slice(&schema.suffix);
        let mut events = self.events();
        events.bytes.extend_from_slice(out);
        let end = events.bytes.len();
        events.ends.push_back(end);
        Ok(events.ends.len())
    }
}

#[pymethods]
impl PyEventBuffer {
    #[new]
    fn new(hostname: &str, utcoffset: f64, pid: i64, default: &PyAny) -> Self {
        let mut prefix = b"{\"hostname\":".to_vec();
        prefix.extend_from_slice(&json_string(hostname));
        prefix.extend_from_slice(b",\"utcoffset\":");
        write_float(&mut prefix, utcoffset);
        prefix.extend_from_slice(b",\"pid\":");
        write_i64(&mut prefix, pid);
        prefix.extend_from_slice(b",\"clock\":");
        Self {
            prefix,
            schemas: Vec::new(),
            default: optional(default).map(Into::into),
            events: Mutex::new(Events::default()),
            worker: None,
        }
    }

    /// Makes this the buffer of a worker's task events: `task_received`, `task_started` and
    /// `task_finished` then write them from the worker's own objects, skip tasks for which
    /// `is_muted(name)` is true (asked once per name), take each event's Lamport time from `clock()`, and
    /// call `wakeup()` when `limit` events wait.
    #[pyo3(text_signature = "($self, is_muted, wakeup, clock, limit)")]
    fn worker(&mut self, is_muted: PyObject, wakeup: PyObject, clock: PyObject, limit: usize) {
        // called again each time task events are enabled: the event types are defined once
        let kinds = match &self.worker {
            Some(worker) => worker.kinds,
            None => WORKER_EVENTS.map(|(name, fields)| {
                let decimals = fields
                    .iter()
                    .map(|field| SECONDS_FIELDS.iter().find(|(name, _)| name == field).map(|(_, d)| *d))
                    .collect();
                self.add_schema(name, fields.iter().copied(), decimals)
            }),
        };
        self.worker = Some(Worker {
            kinds,
            clock,
            is_muted,
            muted: Mutex::new(HashMap::new()),
            wakeup,
            limit,
        });
    }

    /// `task-received` of a worker's `Job` (its `request`, the `request.headers`, `delivery.queue`).
    ///
    /// A message decoded from a kombu envelope carries the JSON of the event's header fields as the
    /// envelope had it (see `received_fields`): those are copied, and only the queue is encoded here.
    #[pyo3(text_signature = "($self, job)")]
    fn task_received(&self, py: Python<'_>, job: &PyAny) -> PyResult<()> {
        let Some(worker) = &self.worker else { return Ok(()) };
        let request = job.getattr(intern!(py, "request"))?;
        let name = request.getattr(intern!(py, "task"))?;
        if worker.skips(py, name)? {
            return Ok(());
        }
        let uuid = request.getattr(intern!(py, "id"))?.downcast()?;
        let delivery = job.getattr(intern!(py, "delivery"))?;
        let queue = delivery.getattr(intern!(py, "queue"))?;
        // the envelope's text, from the head the parent read (most deliveries) or a decoded message
        let head = delivery.getattr(intern!(py, "head")).ok();
        let fields = if let Some(head) = head.and_then(|h| h.downcast::<PyCell<TaskHead>>().ok()) {
            head.try_borrow().ok().and_then(|head| {
                let (input, positions) = head.envelope_headers(py)?;
                received_fields(input, positions)
            })
        } else {
            let message = delivery.getattr(intern!(py, "message")).ok();
            message
                .and_then(|m| m.downcast::<PyCell<Message>>().ok())
                .and_then(|message| {
                    let message = message.try_borrow().ok()?;
                    let (input, positions) = message.envelope_headers(py)?;
                    received_fields(input, positions)
                })
        };
        if let Some(fields) = fields {
            return self.worker_append_after(py, worker, worker.kinds[RECEIVED], uuid, Some(&fields), &[queue]);
        }
        let headers: &PyDict = request.getattr(intern!(py, "headers"))?.downcast()?;
        let header = |key: &PyString| headers.get_item(key).unwrap_or_else(|| py.None().into_ref(py));
        let values = [
            name,
            request.getattr(intern!(py, "argsrepr"))?,
            request.getattr(intern!(py, "kwargsrepr"))?,
            request.getattr(intern!(py, "root_id"))?,
            request.getattr(intern!(py, "parent_id"))?,
            request.getattr(intern!(py, "retries"))?,
            header(intern!(py, "eta")),
            header(intern!(py, "expires")),
            header(intern!(py, "fastq_sent_at")),
            queue,
        ];
        self.worker_append(py, worker, worker.kinds[RECEIVED], uuid, &values)
    }

    /// `task-started` of a worker's `Job`.
    #[pyo3(text_signature = "($self, job)")]
    fn task_started(&self, py: Python<'_>, job: &PyAny) -> PyResult<()> {
        let Some(worker) = &self.worker else { return Ok(()) };
        let request = job.getattr(intern!(py, "request"))?;
        if worker.skips(py, request.getattr(intern!(py, "task"))?)? {
            return Ok(());
        }
        let uuid = request.getattr(intern!(py, "id"))?.downcast()?;
        self.worker_append(py, worker, worker.kinds[STARTED], uuid, &[])
    }

    /// `task-succeeded`, `-failed`, `-retried` or `-rejected` of a worker's `Job` from its `Outcome`
    /// (nothing for other states).
    #[pyo3(text_signature = "($self, job, outcome)")]
    fn task_finished(&self, py: Python<'_>, job: &PyAny, outcome: &PyAny) -> PyResult<()> {
        let Some(worker) = &self.worker else { return Ok(()) };
        let request = job.getattr(intern!(py, "request"))?;
        if worker.skips(py, request.getattr(intern!(py, "task"))?)? {
            return Ok(());
        }
        let state = outcome.getattr(intern!(py, "state"))?;
        let state = state.downcast::<PyString>()?.to_str()?;
        let uuid = request.getattr(intern!(py, "id"))?.downcast()?;
        let field = |name: &PyString| outcome.getattr(name);
        let (kind, values) = match state {
            "SUCCESS" => (
                SUCCEEDED,
                [field(intern!(py, "retval_repr"))?, field(intern!(py, "runtime"))?],
            ),
            "FAILURE" => (
                FAILED,
                [field(intern!(py, "exc_repr"))?, field(intern!(py, "traceback"))?],
            ),
            "RETRY" => (
                RETRIED,
                [field(intern!(py, "exc_repr"))?, field(intern!(py, "traceback"))?],
            ),
            "REJECTED" => {
                let requeue = [field(intern!(py, "requeue"))?];
                return self.worker_append(py, worker, worker.kinds[REJECTED], uuid, &requeue);
            }
            _ => return Ok(()),
        };
        self.worker_append(py, worker, worker.kinds[kind], uuid, &values)
    }

    /// `task-failed` of a task that failed outside its executor (its process died, or its hard time limit
    /// killed it): the worker's `TaskRequest` and the exception's repr; no traceback.
    #[pyo3(text_signature = "($self, request, exception)")]
    fn task_lost(&self, py: Python<'_>, request: &PyAny, exception: &PyAny) -> PyResult<()> {
        let Some(worker) = &self.worker else { return Ok(()) };
        if worker.skips(py, request.getattr(intern!(py, "task"))?)? {
            return Ok(());
        }
        let uuid = request.getattr(intern!(py, "id"))?.downcast()?;
        self.worker_append(
            py,
            worker,
            worker.kinds[FAILED],
            uuid,
            &[exception, py.None().into_ref(py)],
        )
    }

    /// `task-revoked` of the worker's `TaskRequest`.
    #[pyo3(text_signature = "($self, request, terminated, signum, expired)")]
    fn task_revoked(
        &self,
        py: Python<'_>,
        request: &PyAny,
        terminated: &PyAny,
        signum: &PyAny,
        expired: &PyAny,
    ) -> PyResult<()> {
        let Some(worker) = &self.worker else { return Ok(()) };
        if worker.skips(py, request.getattr(intern!(py, "task"))?)? {
            return Ok(());
        }
        let uuid = request.getattr(intern!(py, "id"))?.downcast()?;
        self.worker_append(py, worker, worker.kinds[REVOKED], uuid, &[terminated, signum, expired])
    }

    /// Declares an event type and the names of its fields; returns the kind to `push` it with.
    #[pyo3(text_signature = "($self, type, fields)")]
    #[allow(clippy::needless_pass_by_value)] // extracted from a Python sequence
    fn define(&mut self, r#type: &str, fields: Vec<String>) -> usize {
        let decimals = vec![None; fields.len()];
        self.add_schema(r#type, fields.iter().map(String::as_str), decimals)
    }

    /// Appends one event of `kind`: `clock`, `uuid`, then one value per field of its `define`, stamped with
    /// the current time; returns how many events wait.
    #[pyo3(text_signature = "($self, kind, clock, uuid, *values)")]
    #[args(values = "*")]
    fn push(&self, py: Python<'_>, kind: usize, clock: i64, uuid: &PyString, values: &PyTuple) -> PyResult<usize> {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        self.append(py, kind, clock, now, uuid, None, values.as_slice())
    }

    /// The oldest `limit` events (or fewer) as one JSON array, removed from the buffer; None when empty.
    #[pyo3(text_signature = "($self, limit)")]
    fn take<'py>(&self, py: Python<'py>, limit: usize) -> Option<&'py PyBytes> {
        let mut events = self.events();
        let count = events.ends.len().min(limit);
        if count == 0 {
            return None;
        }
        let Events { bytes, head, ends } = &mut *events;
        let cut = ends[count - 1];
        let mut body = Vec::with_capacity(cut - *head + count + 1);
        body.push(b'[');
        for (i, end) in ends.drain(..count).enumerate() {
            if i > 0 {
                body.push(b',');
            }
            body.extend_from_slice(&bytes[*head..end]);
            *head = end;
        }
        body.push(b']');
        if ends.is_empty() {
            bytes.clear();
            *head = 0;
        } else if *head >= COMPACT_AFTER && *head * 2 >= bytes.len() {
            bytes.drain(..*head);
            for end in ends.iter_mut() {
                *end -= *head;
            }
            *head = 0;
        }
        Some(PyBytes::new(py, &body))
    }

    /// Drops every waiting event; returns how many there were.
    #[pyo3(text_signature = "($self)")]
    fn clear(&self) -> usize {
        let mut events = self.events();
        let count = events.ends.len();
        *events = Events::default();
        count
    }

    fn __len__(&self) -> usize {
        self.events().ends.len()
    }
}

#[cfg(test)]
mod tests {
    use super::write_seconds;

    fn seconds(v: f64, decimals: u32) -> Option<String> {
        let mut out = Vec::new();
        write_seconds(&mut out, v, decimals).then(|| String::from_utf8(out).unwrap())
    }

    #[test]
    fn seconds_to_fixed_places() {
        assert_eq!(
            seconds(1_796_419_702.360_271_2, 6).as_deref(),
            Some("1796419702.360271")
        );
        assert_eq!(seconds(0.000_012_345_6, 9).as_deref(), Some("0.000012346"));
        assert_eq!(seconds(17.5, 9).as_deref(), Some("17.5"));
        assert_eq!(seconds(3.0, 6).as_deref(), Some("3.0"));
        assert_eq!(seconds(0.0, 9).as_deref(), Some("0.0"));
        assert_eq!(seconds(0.999_999_999_7, 9).as_deref(), Some("1.0"));
    }

    #[test]
    fn seconds_not_exact_are_left_to_the_repr() {
        assert_eq!(seconds(-1.0, 6), None);
        assert_eq!(seconds(f64::NAN, 6), None);
        assert_eq!(seconds(f64::INFINITY, 6), None);
        assert_eq!(seconds(1.0e10, 9), None);
    }
}
