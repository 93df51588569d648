//! Python objects to msgpack, byte for byte as `msgpack.packb(obj, use_bin_type=True)`: the same type
//! checks in the same order (msgpack's `Packer._pack`), the same limits and messages.

use pyo3::exceptions::{PyOverflowError, PyTypeError, PyValueError};
use pyo3::intern;
use pyo3::once_cell::GILOnceCell;
use pyo3::prelude::*;
use pyo3::type_object::PyTypeInfo;
use pyo3::types::{PyBool, PyByteArray, PyBytes, PyDict, PyFloat, PyList, PyLong, PyString, PyTuple, PyType};

use super::write::{self, TooLarge};
use super::MAX_DEPTH;

pub struct Packer<'py> {
    py: Python<'py>,
    pub out: Vec<u8>,
    /// Items of the dicts being written, outermost first: snapshotting a dict before packing its items
    /// keeps iteration sound even if a subclass's `items()` mutates an enclosing dict.
    pairs: Vec<(&'py PyAny, &'py PyAny)>,
}

fn too_large(what: &str) -> impl FnOnce(TooLarge) -> PyErr + '_ {
    move |_| PyValueError::new_err(format!("{what} is too large"))
}

impl<'py> Packer<'py> {
    pub fn new(py: Python<'py>) -> Self {
        Self {
            py,
            out: Vec::with_capacity(256),
            pairs: Vec::new(),
        }
    }

    /// Appends `obj`, which sits inside `depth` containers.
    ///
    /// Only dispatches, so that the stack used per nesting level stays small. msgpack's `Packer._pack`
    /// tests float and bytearray before str and the containers; the builtin types involved are disjoint
    /// (no class can derive from two of them), so testing the cheap flag-based cases first gives the same
    /// result while sparing every str and container two MRO walks.
    pub fn pack(&mut self, obj: &'py PyAny, depth: usize) -> PyResult<()> {
        if depth > MAX_DEPTH {
            return Err(PyValueError::new_err("recursion limit exceeded."));
        }
        if self.scalar(obj)? {
            Ok(())
        } else if let Ok(dict) = obj.downcast::<PyDict>() {
            self.dict(dict, depth)
        } else if let Ok(list) = obj.downcast::<PyList>() {
            write::write_array_header(&mut self.out, list.len()).map_err(too_large("list"))?;
            self.items(obj, PyList::is_exact_type_of(obj), depth)
        } else if let Ok(tuple) = obj.downcast::<PyTuple>() {
            write::write_array_header(&mut self.out, tuple.len()).map_err(too_large("list"))?;
            self.items(obj, PyTuple::is_exact_type_of(obj), depth)
        } else {
            self.other(obj)
        }
    }

    /// Writes `obj` if it is None, a bool, int, exact float, bytes or str.
    #[inline(never)]
    fn scalar(&mut self, obj: &'py PyAny) -> PyResult<bool> {
        let out = &mut self.out;
        if obj.is_none() {
            write::write_nil(out);
        } else if let Ok(b) = obj.downcast::<PyBool>() {
            write::write_bool(out, b.is_true());
        } else if let Ok(i) = obj.downcast::<PyLong>() {
            if let Ok(v) = i.extract::<i64>() {
                write::write_int(out, v);
            } else if let Ok(v) = i.extract::<u64>() {
                write::write_uint(out, v);
            } else {
                return Err(PyOverflowError::new_err("Integer value out of range"));
            }
        } else if let Ok(s) = obj.downcast::<PyString>() {
            // to_str raises the UnicodeEncodeError msgpack raises for lone surrogates.
            write::write_str(out, s.to_str()?.as_bytes()).map_err(too_large("unicode string"))?;
        } else if PyFloat::is_exact_type_of(obj) {
            write::write_f64(out, obj.downcast::<PyFloat>()?.value());
        } else if let Ok(b) = obj.downcast::<PyBytes>() {
            write::write_bin(out, b.as_bytes()).map_err(too_large("bytes object"))?;
        } else {
            return Ok(false);
        }
        Ok(true)
    }

    /// Float subclasses, `bytearray` and `memoryview`, or the TypeError for anything msgpack cannot serialize.
    #[inline(never)]
    fn other(&mut self, obj: &'py PyAny) -> PyResult<()> {
        if let Ok(f) = obj.downcast::<PyFloat>() {
            write::write_f64(&mut self.out, f.value());
            Ok(())
        } else if let Ok(b) = obj.downcast::<PyByteArray>() {
            write::write_bin(&mut self.out, &b.to_vec()).map_err(too_large("bytearray object"))
        } else if obj.is_instance(memoryview_type(self.py)?)? {
            let data = obj.call_method0(intern!(self.py, "tobytes"))?;
            write::write_bin(&mut self.out, data.downcast::<PyBytes>()?.as_bytes()).map_err(too_large("memoryview"))
        } else {
            let name = obj.get_type().getattr(intern!(self.py, "__name__"))?;
            Err(PyTypeError::new_err(format!(
                "can not serialize {} object",
                name.repr()?
            )))
        }
    }

    /// The items of a list or tuple whose header is written. Exact types are read from their storage;
    /// subclasses through their iterator, as msgpack's `for v in o` does.
    #[inline(never)]
    fn items(&mut self, seq: &'py PyAny, exact: bool, depth: usize) -> PyResult<()> {
        if exact {
            if let Ok(tuple) = seq.downcast::<PyTuple>() {
                for item in tuple.as_slice() {
                    self.pack(item, depth + 1)?;
                }
                return Ok(());
            }
            let list: &PyList = seq.downcast()?;
            // The header holds the length already; should a nested subclass's `__iter__` shrink this list
            // meanwhile, `get_item` fails cleanly.
            for i in 0..list.len() {
                self.pack(list.get_item(i)?, depth + 1)?;
            }
            return Ok(());
        }
        for item in seq.iter()? {
            self.pack(item?, depth + 1)?;
        }
        Ok(())
    }

    #[inline(never)]
    fn dict(&mut self, dict: &'py PyDict, depth: usize) -> PyResult<()> {
        let start = self.pairs.len();
        if PyDict::is_exact_type_of(dict) {
            write::write_map_header(&mut self.out, dict.len()).map_err(too_large("dict"))?;
            self.pairs.extend(dict.iter());
        } else {
            // msgpack sizes the header with len() and writes whatever items() yields.
            write::write_map_header(&mut self.out, dict.as_ref().len()?).map_err(too_large("dict"))?;
            for item in dict.call_method0(intern!(self.py, "items"))?.iter()? {
                let (k, v): (&PyAny, &PyAny) = item?.extract()?;
                self.pairs.push((k, v));
            }
        }
        for i in start..self.pairs.len() {
            let (k, v) = self.pairs[i];
            self.pack(k, depth + 1)?;
            self.pack(v, depth + 1)?;
        }
        self.pairs.truncate(start);
        Ok(())
    }
}

fn memoryview_type(py: Python<'_>) -> PyResult<&PyType> {
    static MEMORYVIEW: GILOnceCell<Py<PyType>> = GILOnceCell::new();
    if let Some(t) = MEMORYVIEW.get(py) {
        return Ok(t.as_ref(py));
    }
    let t: Py<PyType> = py
        .import("builtins")?
        .getattr("memoryview")?
        .downcast::<PyType>()?
        .into();
    Ok(MEMORYVIEW.get_or_init(py, || t).as_ref(py))
}

/// Serializes `obj` as `msgpack.packb(obj, use_bin_type=True)` does.
#[pyfunction]
#[pyo3(text_signature = "(obj)")]
pub fn msgpack_packb<'py>(py: Python<'py>, obj: &'py PyAny) -> PyResult<&'py PyBytes> {
    let mut packer = Packer::new(py);
    packer.pack(obj, 0)?;
    Ok(PyBytes::new(py, &packer.out))
}
