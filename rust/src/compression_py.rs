//! pyo3 surface of `compression`.

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::compression::{self, Codec};

pub fn codec(mime: &str) -> PyResult<Codec> {
    Codec::from_mime(mime).ok_or_else(|| {
        PyValueError::new_err(format!(
            "unknown compression {mime:?} (expected {:?} or {:?})",
            compression::GZIP_MIME,
            compression::BZ2_MIME
        ))
    })
}

/// `data` compressed with the codec named by `mime`: kombu's zlib and bzip2 here, any other (lzma, and what
/// `fastq.serialization.register_compression` added) by its Python encoder.
pub fn compress_any(py: Python<'_>, mime: &str, data: &[u8]) -> PyResult<Vec<u8>> {
    if let Some(codec) = Codec::from_mime(mime) {
        return Ok(maybe_without_gil(py, data, || compression::compress(codec, data)));
    }
    let encoded = py
        .import(pyo3::intern!(py, "fastq.serialization"))?
        .getattr(pyo3::intern!(py, "python_compress"))?
        .call1((PyBytes::new(py, data), mime))?;
    Ok(encoded.downcast::<PyBytes>()?.as_bytes().to_vec())
}

/// Runs `f` without the GIL when `data` is big enough for other threads to make use of the time;
/// for the usual few-hundred-byte bodies, releasing and re-taking the GIL would cost more than it frees.
fn maybe_without_gil<T: Send>(py: Python<'_>, data: &[u8], f: impl FnOnce() -> T + Send) -> T {
    if data.len() >= 64 * 1024 {
        py.allow_threads(f)
    } else {
        f()
    }
}

/// Compresses `data` as kombu's codec named by `mime` does.
#[pyfunction]
#[pyo3(text_signature = "(data, mime)")]
pub fn compress<'py>(py: Python<'py>, data: &[u8], mime: &str) -> PyResult<&'py PyBytes> {
    let codec = codec(mime)?;
    let out = maybe_without_gil(py, data, || compression::compress(codec, data));
    Ok(PyBytes::new(py, &out))
}

/// Inverse of `compress`.
#[pyfunction]
#[pyo3(text_signature = "(data, mime)")]
pub fn decompress<'py>(py: Python<'py>, data: &[u8], mime: &str) -> PyResult<&'py PyBytes> {
    let codec = codec(mime)?;
    let out = maybe_without_gil(py, data, || compression::decompress(codec, data))
        .map_err(|e| PyValueError::new_err(e.to_string()))?;
    Ok(PyBytes::new(py, &out))
}
