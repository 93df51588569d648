//! pyo3 surface of `framing`.

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList};

use crate::framing::{self, Decoder};

fn too_large(e: &framing::FrameTooLarge) -> PyErr {
    PyValueError::new_err(e.to_string())
}

#[pyfunction]
#[pyo3(text_signature = "(job_id, kind, payload)")]
pub fn encode_frame<'py>(py: Python<'py>, job_id: u64, kind: u8, payload: &[u8]) -> PyResult<&'py PyBytes> {
    let mut out = Vec::new();
    framing::encode_into(&mut out, job_id, kind, payload).map_err(|e| too_large(&e))?;
    Ok(PyBytes::new(py, &out))
}

#[pyfunction]
#[pyo3(text_signature = "(frames)")]
pub fn encode_frames<'py>(py: Python<'py>, frames: Vec<(u64, u8, &[u8])>) -> PyResult<&'py PyBytes> {
    let mut out = Vec::new();
    for (job_id, kind, payload) in frames {
        framing::encode_into(&mut out, job_id, kind, payload).map_err(|e| too_large(&e))?;
    }
    Ok(PyBytes::new(py, &out))
}

#[pyclass(name = "FrameDecoder", module = "fastq._core", text_signature = "()")]
#[derive(Default)]
pub struct PyFrameDecoder {
    inner: Decoder,
}

#[pymethods]
impl PyFrameDecoder {
    #[new]
    fn new() -> Self {
        Self { inner: Decoder::new() }
    }

    #[pyo3(text_signature = "($self, data)")]
    fn feed<'py>(&mut self, py: Python<'py>, data: &[u8]) -> PyResult<&'py PyList> {
        let frames = self.inner.feed(data).map_err(|e| too_large(&e))?;
        let list = PyList::empty(py);
        for f in frames {
            list.append((f.job_id, f.kind, PyBytes::new(py, &f.payload)))?;
        }
        Ok(list)
    }

    #[getter]
    fn buffered(&self) -> usize {
        self.inner.buffered()
    }
}
