//! msgpack to Python objects, as `msgpack.unpackb(data, raw=False)` with its defaults: lists for arrays,
//! map keys restricted to str and bytes, no extension types, the whole input consumed.

use pyo3::exceptions::PyValueError;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::type_object::PyTypeInfo;
use pyo3::types::{PyBool, PyBytes, PyDict, PyFloat, PyList, PyString};

use super::read::{ReadError, Reader, Token};
use super::MAX_DEPTH;
use crate::key_cache_py::cached_key;

pub struct Unpacker<'a, 'py> {
    py: Python<'py>,
    reader: Reader<'a>,
}

#[cold]
#[inline(never)]
fn read_error(e: &ReadError) -> PyErr {
    PyValueError::new_err(match e {
        ReadError::Incomplete => "Unpack failed: incomplete input".to_owned(),
        ReadError::UnknownHeader(marker) => format!("Unknown header: 0x{marker:x}"),
        ReadError::Ext(code) => format!("Unpack failed: extension type {code} is not supported"),
    })
}

impl<'a, 'py> Unpacker<'a, 'py> {
    pub fn new(py: Python<'py>, data: &'a [u8]) -> Self {
        Self {
            py,
            reader: Reader::new(data),
        }
    }

    /// Reads one whole value and requires it to be the last thing in the input.
    pub fn unpack_all(mut self) -> PyResult<&'py PyAny> {
        let value = self.value(0)?;
        if self.reader.remaining() > 0 {
            return Err(PyValueError::new_err("unpack(b) received extra data."));
        }
        Ok(value)
    }

    /// Reads the value that sits inside `depth` containers.
    fn value(&mut self, depth: usize) -> PyResult<&'py PyAny> {
        match self.reader.next_token().map_err(|e| read_error(&e))? {
            Token::Array(len) => self.array(len, depth),
            Token::Map(len) => self.map(len, depth),
            token => self.scalar(&token),
        }
    }

    /// A map key: like `value`, but str keys go through the key cache.
    fn key(&mut self, depth: usize) -> PyResult<&'py PyAny> {
        match self.reader.next_token().map_err(|e| read_error(&e))? {
            Token::Str(raw) => match std::str::from_utf8(raw) {
                Ok(text) => Ok(cached_key(self.py, text)),
                Err(_) => self.scalar(&Token::Str(raw)),
            },
            Token::Array(len) => self.array(len, depth),
            Token::Map(len) => self.map(len, depth),
            token => self.scalar(&token),
        }
    }

    #[inline(never)]
    fn scalar(&self, token: &Token<'_>) -> PyResult<&'py PyAny> {
        let py = self.py;
        Ok(match *token {
            Token::Nil => py.None().into_ref(py),
            Token::Bool(v) => PyBool::new(py, v),
            Token::UInt(v) => v.into_py(py).into_ref(py),
            Token::Int(v) => v.into_py(py).into_ref(py),
            Token::Float(v) => PyFloat::new(py, v),
            Token::Str(raw) => match std::str::from_utf8(raw) {
                Ok(text) => PyString::new(py, text),
                // Let Python raise the UnicodeDecodeError msgpack raises.
                Err(_) => PyBytes::new(py, raw).call_method1(intern!(py, "decode"), ("utf-8",))?,
            },
            Token::Bin(raw) => PyBytes::new(py, raw),
            Token::Array(_) | Token::Map(_) => unreachable!("containers are built by the caller"),
        })
    }

    #[inline(never)]
    fn array(&mut self, len: usize, depth: usize) -> PyResult<&'py PyAny> {
        Self::enter(depth)?;
        // Lengths come from the input: never reserve more than the input could hold.
        let mut items = Vec::with_capacity(len.min(self.reader.remaining()));
        for _ in 0..len {
            items.push(self.value(depth + 1)?);
        }
        Ok(PyList::new(self.py, items))
    }

    #[inline(never)]
    fn map(&mut self, len: usize, depth: usize) -> PyResult<&'py PyAny> {
        Self::enter(depth)?;
        let dict = PyDict::new(self.py);
        for _ in 0..len {
            let key = self.key(depth + 1)?;
            let value = self.value(depth + 1)?;
            if !(PyString::is_exact_type_of(key) || PyBytes::is_exact_type_of(key)) {
                let name = key.get_type().getattr(intern!(self.py, "__name__"))?;
                return Err(PyValueError::new_err(format!(
                    "{name} is not allowed for map key when strict_map_key=True"
                )));
            }
            dict.set_item(key, value)?;
        }
        Ok(dict)
    }

    fn enter(depth: usize) -> PyResult<()> {
        if depth >= MAX_DEPTH {
            return Err(PyValueError::new_err(format!(
                "Unpack failed: containers nested deeper than {MAX_DEPTH}"
            )));
        }
        Ok(())
    }
}

/// Deserializes as `msgpack.unpackb(data, raw=False)` does.
#[pyfunction]
#[pyo3(text_signature = "(data)")]
pub fn msgpack_unpackb<'py>(py: Python<'py>, data: &[u8]) -> PyResult<&'py PyAny> {
    Unpacker::new(py, data).unpack_all()
}
