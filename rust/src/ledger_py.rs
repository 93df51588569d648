//! pyo3 surface of `ledger`: tags are Python ints or strs and come back as the type they went in as.

use pyo3::exceptions::{PyKeyError, PyTypeError};
use pyo3::prelude::*;
use pyo3::types::{PyLong, PyString};

use crate::ledger::{Ledger, LedgerError, Tag};

/// The tag `obj` names, or None when it cannot be a tag (a float, None, an int beyond 128 bits, ...).
fn tag_of(obj: &PyAny) -> Option<Tag> {
    if let Ok(s) = obj.downcast::<PyString>() {
        return s.to_str().ok().map(|s| Tag::Str(s.to_owned()));
    }
    if obj.downcast::<PyLong>().is_ok() {
        return obj.extract::<i128>().ok().map(Tag::Int);
    }
    None
}

fn require_tag(obj: &PyAny) -> PyResult<Tag> {
    tag_of(obj).ok_or_else(|| {
        PyTypeError::new_err(format!(
            "delivery tags are int (up to 128 bits) or str, not {}",
            obj.repr().map_or_else(|_| "?".to_owned(), ToString::to_string)
        ))
    })
}

fn to_py(py: Python<'_>, tag: &Tag) -> PyObject {
    match tag {
        Tag::Int(v) => v.into_py(py),
        Tag::Str(s) => s.into_py(py),
    }
}

#[pyclass(name = "Ledger", module = "fastq._core", text_signature = "(window)")]
pub struct PyLedger {
    inner: Ledger,
}

#[pymethods]
impl PyLedger {
    #[new]
    fn new(window: usize) -> Self {
        Self {
            inner: Ledger::new(window),
        }
    }

    #[getter]
    fn window(&self) -> usize {
        self.inner.window()
    }

    #[setter]
    fn set_window(&mut self, value: usize) {
        self.inner.set_window(value);
    }

    #[pyo3(text_signature = "($self)")]
    fn free(&self) -> usize {
        self.inner.free()
    }

    #[pyo3(text_signature = "($self, tag)")]
    fn add(&mut self, tag: &PyAny) -> PyResult<()> {
        match self.inner.add(require_tag(tag)?) {
            Err(LedgerError::AlreadyHeld) => Err(PyKeyError::new_err(tag.to_object(tag.py()))),
            _ => Ok(()),
        }
    }

    #[pyo3(text_signature = "($self, tag)")]
    fn start(&mut self, tag: &PyAny) -> PyResult<()> {
        self.inner
            .start(&require_tag(tag)?)
            .map_err(|_| PyKeyError::new_err(tag.to_object(tag.py())))
    }

    #[pyo3(text_signature = "($self, tag)")]
    fn settle(&mut self, tag: &PyAny) -> PyResult<bool> {
        Ok(self.inner.settle(&require_tag(tag)?))
    }

    #[pyo3(text_signature = "($self, tag)")]
    fn is_active(&self, tag: &PyAny) -> bool {
        tag_of(tag).is_some_and(|t| self.inner.is_active(&t))
    }

    #[pyo3(text_signature = "($self)")]
    fn reserved(&self, py: Python<'_>) -> Vec<PyObject> {
        self.inner.reserved().map(|t| to_py(py, t)).collect()
    }

    #[pyo3(text_signature = "($self)")]
    fn active(&self, py: Python<'_>) -> Vec<PyObject> {
        self.inner.active().map(|t| to_py(py, t)).collect()
    }

    #[pyo3(text_signature = "($self)")]
    fn held(&self, py: Python<'_>) -> Vec<PyObject> {
        self.inner.held().map(|t| to_py(py, t)).collect()
    }

    fn __len__(&self) -> usize {
        self.inner.len()
    }

    fn __contains__(&self, tag: &PyAny) -> bool {
        tag_of(tag).is_some_and(|t| self.inner.contains(&t))
    }

    fn __repr__(&self) -> String {
        format!(
            "<Ledger window={} held={} active={}>",
            self.inner.window(),
            self.inner.len(),
            self.inner.active().count()
        )
    }
}
