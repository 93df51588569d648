//! Redis commands in RESP, for the client's pipelines (`fastq.brokers.redis.connection.pack`).
//!
//! A batch publish is one LPUSH of up to a thousand ~1 KB envelopes per command; framing each value in
//! Python (a format and a join per value) cost more than the rest of sending it. Here each buffer is sized
//! once and filled with copies, and values too large to be worth copying are handed back as they are, to
//! be written between the buffers.

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList, PyString};

use crate::json::write_u64;

/// RESP for `commands`, in buffers of about `buffer_size` bytes; a value of at least `pass_through`
/// bytes is its own item of the list (the bytes object given, not a copy).
#[pyfunction]
#[pyo3(text_signature = "(commands, buffer_size, pass_through)")]
pub fn resp_pack<'py>(
    py: Python<'py>,
    commands: &'py PyAny,
    buffer_size: usize,
    pass_through: usize,
) -> PyResult<&'py PyList> {
    let out = PyList::empty(py);
    let mut buf: Vec<u8> = Vec::with_capacity(buffer_size.min(1 << 20) + 1024);
    for command in commands.iter()? {
        let command = command?;
        push_header(&mut buf, b'*', command.len()?);
        for value in command.iter()? {
            let value = value?;
            if let Ok(bytes) = value.downcast::<PyBytes>() {
                let data = bytes.as_bytes();
                if data.len() >= pass_through {
                    push_header(&mut buf, b'$', data.len());
                    out.append(PyBytes::new(py, &buf))?;
                    out.append(bytes)?;
                    buf.clear();
                    buf.extend_from_slice(b"\r\n");
                    continue;
                }
                push_bulk(&mut buf, data);
            } else if let Ok(text) = value.downcast::<PyString>() {
                push_bulk(&mut buf, text.to_str()?.as_bytes());
            } else {
                // What Python's `str(value).encode()` gives: ints and floats as Redis reads numbers.
                push_bulk(&mut buf, value.str()?.to_str()?.as_bytes());
            }
            if buf.len() >= buffer_size {
                out.append(PyBytes::new(py, &buf))?;
                buf.clear();
            }
        }
    }
    if !buf.is_empty() {
        out.append(PyBytes::new(py, &buf))?;
    }
    Ok(out)
}

fn push_header(buf: &mut Vec<u8>, kind: u8, n: usize) {
    buf.push(kind);
    write_u64(buf, n as u64);
    buf.extend_from_slice(b"\r\n");
}

fn push_bulk(buf: &mut Vec<u8>, data: &[u8]) {
    push_header(buf, b'$', data.len());
    buf.extend_from_slice(data);
    buf.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bulk_strings() {
        let mut buf = Vec::new();
        push_bulk(&mut buf, b"");
        push_bulk(&mut buf, b"LPUSH");
        assert_eq!(buf, b"$0\r\n\r\n$5\r\nLPUSH\r\n");
    }
}
