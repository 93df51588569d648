//! fastq._core: the compiled core of fastq. See python/fastq/_core.pyi for the Python surface.

use pyo3::prelude::*;

mod base64;
mod clock_py;
mod compression;
mod compression_py;
mod events_py;
mod fetched_py;
mod framing;
mod framing_py;
mod json;
mod key_cache_py;
mod ledger;
mod ledger_py;
mod msgpack;
mod protocol;
mod recursion_py;
mod resp_py;

#[pymodule]
fn _core(py: Python<'_>, m: &PyModule) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add(
        "build_profile",
        if cfg!(debug_assertions) { "debug" } else { "release" },
    )?;
    m.add_function(wrap_pyfunction!(json::encode_py::json_dumps, m)?)?;
    m.add_function(wrap_pyfunction!(json::decode_py::json_loads, m)?)?;
    m.add_function(wrap_pyfunction!(msgpack::pack_py::msgpack_packb, m)?)?;
    m.add_function(wrap_pyfunction!(msgpack::unpack_py::msgpack_unpackb, m)?)?;
    m.add_function(wrap_pyfunction!(compression_py::compress, m)?)?;
    m.add_function(wrap_pyfunction!(compression_py::decompress, m)?)?;
    m.add("CONTENT_TYPE_JSON", protocol::CONTENT_TYPE_JSON)?;
    m.add("CONTENT_TYPE_MSGPACK", protocol::CONTENT_TYPE_MSGPACK)?;
    m.add_function(wrap_pyfunction!(protocol::body_py::encode_task_body, m)?)?;
    m.add_function(wrap_pyfunction!(protocol::body_py::decode_task_body, m)?)?;
    m.add_function(wrap_pyfunction!(protocol::message_py::task_message, m)?)?;
    m.add_function(wrap_pyfunction!(protocol::batch_py::task_envelopes, m)?)?;
    m.add_function(wrap_pyfunction!(protocol::batch_py::uuid4s, m)?)?;
    m.add_function(wrap_pyfunction!(protocol::batch_py::uniform_run, m)?)?;
    m.add_function(wrap_pyfunction!(protocol::batch_py::uniform_envelopes, m)?)?;
    m.add_class::<protocol::message_py::Message>()?;
    m.add_class::<protocol::head_py::TaskHead>()?;
    m.add(
        "TASK_HEAD_FIELDS",
        pyo3::types::PyTuple::new(py, protocol::head_py::HEAD_FIELDS),
    )?;
    m.add_function(wrap_pyfunction!(protocol::head_py::task_head, m)?)?;
    m.add_function(wrap_pyfunction!(fetched_py::fetched_deliveries, m)?)?;
    m.add_function(wrap_pyfunction!(fetched_py::moved_deliveries, m)?)?;
    m.add_function(wrap_pyfunction!(protocol::request_py::task_request, m)?)?;
    m.add_function(wrap_pyfunction!(protocol::request_py::job_request, m)?)?;
    m.add_class::<ledger_py::PyLedger>()?;
    m.add_class::<events_py::PyEventBuffer>()?;
    m.add("FRAME_HEADER_SIZE", framing::HEADER_SIZE)?;
    m.add("MAX_FRAME_PAYLOAD", framing::MAX_PAYLOAD)?;
    m.add_function(wrap_pyfunction!(framing_py::encode_frame, m)?)?;
    m.add_function(wrap_pyfunction!(framing_py::encode_frames, m)?)?;
    m.add_class::<framing_py::PyFrameDecoder>()?;
    m.add_function(wrap_pyfunction!(resp_py::resp_pack, m)?)?;
    m.add_function(wrap_pyfunction!(clock_py::utc_isoformat, m)?)?;
    Ok(())
}
