//! Python objects to JSON bytes, byte for byte as `json.dumps(obj, default=default).encode()`.
//!
//! The type dispatch, the order of checks and the error messages follow CPython's C encoder
//! (`Modules/_json.c`, 3.11), because kombu encodes through it and peers compare bytes (signatures,
//! deduplication keys) as well as values.

use pyo3::exceptions::{PyTypeError, PyUnicodeEncodeError, PyValueError};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::type_object::PyTypeInfo;
use pyo3::types::{PyBool, PyBytes, PyDict, PyFloat, PyList, PyLong, PyString, PyTuple};
use pyo3::AsPyPointer;

use super::string::write_escaped;
use super::{write_float, write_i64, write_u64};
use crate::recursion_py::DepthGuard;

/// Ids of the containers (and `default` inputs) on the path from the root, as the stdlib's
/// `check_circular` markers. Paths are short, so a linear scan beats hashing until they get long.
#[derive(Default)]
struct Markers {
    path: Vec<usize>,
    deep: std::collections::HashSet<usize>,
}

const LINEAR_MARKERS: usize = 32;

impl Markers {
    fn enter(&mut self, obj: &PyAny) -> PyResult<()> {
        let id = obj.as_ptr() as usize;
        let shallow = &self.path[..self.path.len().min(LINEAR_MARKERS)];
        if shallow.contains(&id) || self.deep.contains(&id) {
            return Err(PyValueError::new_err("Circular reference detected"));
        }
        if self.path.len() >= LINEAR_MARKERS {
            self.deep.insert(id);
        }
        self.path.push(id);
        Ok(())
    }

    fn leave(&mut self) {
        if let Some(id) = self.path.pop() {
            if self.path.len() >= LINEAR_MARKERS {
                self.deep.remove(&id);
            }
        }
    }
}

pub struct Encoder<'py> {
    py: Python<'py>,
    default: Option<&'py PyAny>,
    pub out: Vec<u8>,
    markers: Markers,
    /// Items of the dicts being written, outermost first: a dict is snapshotted before any of its values
    /// is encoded (as the stdlib's `items()` call does), since `default` may run arbitrary code.
    pairs: Vec<(&'py PyAny, &'py PyAny)>,
    depth: DepthGuard,
    /// The last float written and its text: a batch of task envelopes repeats one timestamp in every
    /// header, and the shortest round-trip repr costs more than the rest of the header.
    last_float: Option<(u64, usize, [u8; 32])>,
}

impl<'py> Encoder<'py> {
    pub fn new(py: Python<'py>, default: Option<&'py PyAny>) -> Self {
        Self {
            py,
            default,
            out: Vec::with_capacity(256),
            markers: Markers::default(),
            pairs: Vec::new(),
            depth: DepthGuard::new(" while encoding a JSON object"),
            last_float: None,
        }
    }

    fn float(&mut self, v: f64) {
        let bits = v.to_bits();
        if let Some((last, len, text)) = &self.last_float {
            if *last == bits {
                self.out.extend_from_slice(&text[..*len]);
                return;
            }
        }
        let start = self.out.len();
        write_float(&mut self.out, v);
        let written = &self.out[start..];
        let mut text = [0u8; 32];
        if let Some(slot) = text.get_mut(..written.len()) {
            slot.copy_from_slice(written);
            self.last_float = Some((bits, written.len(), text));
        }
    }

    pub fn py(&self) -> Python<'py> {
        self.py
    }

    /// Appends `obj`, which sits inside `depth` containers.
    ///
    /// This is the recursion's hot path, so it only dispatches: scalars and each kind of container are
    /// written by separate, non-inlined functions, which keeps the stack used per nesting level small.
    pub fn value(&mut self, obj: &'py PyAny, depth: usize) -> PyResult<()> {
        if self.scalar(obj)? {
            Ok(())
        } else if let Ok(list) = obj.downcast::<PyList>() {
            self.depth.check(self.py, depth + 1)?;
            if PyList::is_exact_type_of(list) {
                self.list(list, depth)
            } else {
                self.iterated(obj, depth)
            }
        } else if let Ok(tuple) = obj.downcast::<PyTuple>() {
            self.depth.check(self.py, depth + 1)?;
            if PyTuple::is_exact_type_of(tuple) {
                self.sequence(obj, tuple.as_slice(), depth)
            } else {
                self.iterated(obj, depth)
            }
        } else if let Ok(dict) = obj.downcast::<PyDict>() {
            self.depth.check(self.py, depth + 1)?;
            self.dict(dict, depth)
        } else if let Ok(f) = obj.downcast::<PyFloat>() {
            self.float(f.value());
            Ok(())
        } else {
            self.fallback(obj, depth)
        }
    }

    /// Writes `obj` if it is None, a bool, str, int or exact float.
    ///
    /// CPython tests float before the containers; the builtin types involved are disjoint (no class can
    /// derive from two of them), so testing the cheap cases first gives the same result. Float subclass
    /// checks walk the MRO, so they come after the containers.
    #[inline(never)]
    fn scalar(&mut self, obj: &'py PyAny) -> PyResult<bool> {
        if obj.is_none() {
            self.out.extend_from_slice(b"null");
        } else if let Ok(b) = obj.downcast::<PyBool>() {
            self.out.extend_from_slice(if b.is_true() { b"true" } else { b"false" });
        } else if let Ok(s) = obj.downcast::<PyString>() {
            self.string(s)?;
        } else if let Ok(i) = obj.downcast::<PyLong>() {
            self.int(i)?;
        } else if PyFloat::is_exact_type_of(obj) {
            self.float(obj.downcast::<PyFloat>()?.value());
        } else {
            return Ok(false);
        }
        Ok(true)
    }

    /// A list or tuple subclass, read through its own iterator as `PySequence_Fast` does.
    #[inline(never)]
    fn iterated(&mut self, obj: &'py PyAny, depth: usize) -> PyResult<()> {
        let items = obj.iter()?.collect::<PyResult<Vec<_>>>()?;
        self.sequence(obj, &items, depth)
    }

    pub fn string(&mut self, s: &PyString) -> PyResult<()> {
        match s.to_str() {
            Ok(text) => write_escaped(&mut self.out, text.as_bytes()),
            Err(err) if err.is_instance_of::<PyUnicodeEncodeError>(self.py) => {
                // Lone surrogates: UTF-8 refuses them, `surrogatepass` spells them as WTF-8.
                let wtf8 = s.call_method1(intern!(self.py, "encode"), ("utf-8", "surrogatepass"))?;
                write_escaped(&mut self.out, wtf8.downcast::<PyBytes>()?.as_bytes());
            }
            Err(err) => return Err(err),
        }
        Ok(())
    }

    /// `int.__repr__`, also for subclasses (an IntEnum member is written as its value).
    fn int(&mut self, i: &PyLong) -> PyResult<()> {
        if let Ok(v) = i.extract::<i64>() {
            write_i64(&mut self.out, v);
        } else if let Ok(v) = i.extract::<u64>() {
            write_u64(&mut self.out, v);
        } else {
            let text = self.py.get_type::<PyLong>().call_method1("__repr__", (i,))?;
            self.out
                .extend_from_slice(text.downcast::<PyString>()?.to_str()?.as_bytes());
        }
        Ok(())
    }

    #[inline(never)]
    fn list(&mut self, list: &'py PyList, depth: usize) -> PyResult<()> {
        if list.is_empty() {
            self.out.extend_from_slice(b"[]");
            return Ok(());
        }
        self.markers.enter(list)?;
        self.out.push(b'[');
        // The length is re-read every step: `default` may resize the list, as the stdlib tolerates.
        let mut i = 0;
        while i < list.len() {
            if i > 0 {
                self.out.extend_from_slice(b", ");
            }
            self.value(list.get_item(i)?, depth + 1)?;
            i += 1;
        }
        self.out.push(b']');
        self.markers.leave();
        Ok(())
    }

    #[inline(never)]
    fn sequence(&mut self, container: &PyAny, items: &[&'py PyAny], depth: usize) -> PyResult<()> {
        if items.is_empty() {
            self.out.extend_from_slice(b"[]");
            return Ok(());
        }
        self.markers.enter(container)?;
        self.out.push(b'[');
        for (i, item) in items.iter().enumerate() {
            if i > 0 {
                self.out.extend_from_slice(b", ");
            }
            self.value(item, depth + 1)?;
        }
        self.out.push(b']');
        self.markers.leave();
        Ok(())
    }

    #[inline(never)]
    fn dict(&mut self, dict: &'py PyDict, depth: usize) -> PyResult<()> {
        // The stdlib checks the real storage size first, even for subclasses that override items().
        if dict.is_empty() {
            self.out.extend_from_slice(b"{}");
            return Ok(());
        }
        self.markers.enter(dict)?;
        let start = self.pairs.len();
        self.snapshot(dict)?;
        let end = self.pairs.len();
        self.out.push(b'{');
        for i in start..end {
            let (key, value) = self.pairs[i];
            if i > start {
                self.out.extend_from_slice(b", ");
            }
            self.key(key)?;
            self.out.extend_from_slice(b": ");
            self.value(value, depth + 1)?;
        }
        self.out.push(b'}');
        self.pairs.truncate(start);
        self.markers.leave();
        Ok(())
    }

    /// Pushes the items of `dict` onto `pairs`: its storage for a dict, `items()` for a subclass.
    #[inline(never)]
    fn snapshot(&mut self, dict: &'py PyDict) -> PyResult<()> {
        if PyDict::is_exact_type_of(dict) {
            self.pairs.extend(dict.iter());
            return Ok(());
        }
        for item in dict.call_method0(intern!(self.py, "items"))?.iter()? {
            match item?.downcast::<PyTuple>() {
                Ok(pair) if pair.len() == 2 => self.pairs.push((pair.get_item(0)?, pair.get_item(1)?)),
                _ => return Err(PyValueError::new_err("items must return 2-tuples")),
            }
        }
        Ok(())
    }

    /// Appends a dict key as the stdlib converts it (str, then float, bool, None and int spelled as text).
    #[inline(never)]
    pub fn key(&mut self, key: &'py PyAny) -> PyResult<()> {
        if let Ok(s) = key.downcast::<PyString>() {
            return self.string(s);
        }
        self.out.push(b'"');
        if let Ok(f) = key.downcast::<PyFloat>() {
            write_float(&mut self.out, f.value());
        } else if let Ok(b) = key.downcast::<PyBool>() {
            self.out.extend_from_slice(if b.is_true() { b"true" } else { b"false" });
        } else if key.is_none() {
            self.out.extend_from_slice(b"null");
        } else if let Ok(i) = key.downcast::<PyLong>() {
            self.int(i)?;
        } else {
            return Err(PyTypeError::new_err(format!(
                "keys must be str, int, float, bool or None, not {}",
                type_name(key)?
            )));
        }
        self.out.push(b'"');
        Ok(())
    }

    /// Anything else goes through `default`, whose result is encoded in its place.
    #[inline(never)]
    fn fallback(&mut self, obj: &'py PyAny, depth: usize) -> PyResult<()> {
        let Some(default) = self.default else {
            return Err(PyTypeError::new_err(format!(
                "Object of type {} is not JSON serializable",
                class_name(obj)?
            )));
        };
        self.markers.enter(obj)?;
        let replacement = default.call1((obj,))?;
        self.depth.check(self.py, depth + 1)?;
        self.value(replacement, depth + 1)?;
        self.markers.leave();
        Ok(())
    }
}

fn type_name(obj: &PyAny) -> PyResult<String> {
    Ok(obj
        .get_type()
        .getattr(intern!(obj.py(), "__name__"))?
        .str()?
        .to_str()?
        .to_owned())
}

/// `o.__class__.__name__`, which is what `JSONEncoder.default` puts in its message.
fn class_name(obj: &PyAny) -> PyResult<String> {
    let py = obj.py();
    let class = obj.getattr(intern!(py, "__class__"))?;
    Ok(class.getattr(intern!(py, "__name__"))?.str()?.to_str()?.to_owned())
}

/// Serializes `obj` to the bytes `json.dumps(obj, default=default).encode()` gives.
#[pyfunction]
#[pyo3(text_signature = "(obj, default)")]
pub fn json_dumps<'py>(py: Python<'py>, obj: &'py PyAny, default: &'py PyAny) -> PyResult<&'py PyBytes> {
    let mut encoder = Encoder::new(py, optional(default));
    encoder.value(obj, 0)?;
    Ok(PyBytes::new(py, &encoder.out))
}

/// Python's `None` as Rust's `None`; pyo3 0.17 would make an `Option` parameter optional, and the
/// contract wants every parameter passed.
pub fn optional(obj: &PyAny) -> Option<&PyAny> {
    if obj.is_none() {
        None
    } else {
        Some(obj)
    }
}
