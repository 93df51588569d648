//! Nesting limits that follow the interpreter's recursion limit, as the stdlib codecs' limits do.
//!
//! The limit is only looked up once a document is deeper than any interpreter allows anyway, so shallow
//! documents (nearly all of them) never pay for the call into `sys`.

use pyo3::exceptions::PyRecursionError;
use pyo3::once_cell::GILOnceCell;
use pyo3::prelude::*;

/// Depth every interpreter's recursion limit allows; below it the real limit is not consulted.
const SHALLOW: usize = 64;
/// Recursion in Rust uses the native stack, 100-200 bytes per level; this cap keeps the deepest
/// document well inside the 8 MiB a Python thread gets by default on Linux, whatever `sys` says.
const HARD_CAP: usize = 10_000;

pub struct DepthGuard {
    limit: usize,
    resolved: bool,
    /// Completes "maximum recursion depth exceeded ..." as the stdlib would, e.g. " while encoding a JSON object".
    context: &'static str,
}

impl DepthGuard {
    pub fn new(context: &'static str) -> Self {
        Self {
            limit: SHALLOW,
            resolved: false,
            context,
        }
    }

    /// Fails with `RecursionError` when `depth` (1 for the outermost container) exceeds the limit.
    #[inline]
    pub fn check(&mut self, py: Python<'_>, depth: usize) -> PyResult<()> {
        if depth <= self.limit {
            Ok(())
        } else {
            self.check_deep(py, depth)
        }
    }

    #[cold]
    #[inline(never)]
    fn check_deep(&mut self, py: Python<'_>, depth: usize) -> PyResult<()> {
        if !self.resolved {
            self.limit = recursion_limit(py)?.min(HARD_CAP);
            self.resolved = true;
            return self.check(py, depth);
        }
        Err(PyRecursionError::new_err(format!(
            "maximum recursion depth exceeded{}",
            self.context
        )))
    }
}

fn recursion_limit(py: Python<'_>) -> PyResult<usize> {
    static GETTER: GILOnceCell<PyObject> = GILOnceCell::new();
    let getter = if let Some(getter) = GETTER.get(py) {
        getter
    } else {
        let getter: PyObject = py.import("sys")?.getattr("getrecursionlimit")?.into();
        GETTER.get_or_init(py, || getter)
    };
    getter.call0(py)?.extract(py)
}
