//! Reuse of the str objects made for repeated mapping keys while decoding one document.

use pyo3::prelude::*;
use pyo3::types::PyString;

/// Map keys repeat (a list of records has the same few keys over and over), so, like the stdlib json
/// memo and msgpack's key interning, recently seen keys reuse their str object, which also keeps its hash
/// between dicts. Direct-mapped, so a document whose keys never repeat pays only a hash and a slot check.
pub struct KeyCache<'py> {
    slots: [Option<(u64, &'py PyString)>; KeyCache::SLOTS],
}

impl<'py> KeyCache<'py> {
    const SLOTS: usize = 64;
    /// Longer keys are rarely repeated and cost more to hash than to build.
    const MAX_KEY_LEN: usize = 32;

    pub fn new() -> Self {
        Self {
            slots: [None; Self::SLOTS],
        }
    }

    pub fn get(&mut self, py: Python<'py>, key: &str) -> &'py PyString {
        if key.len() > Self::MAX_KEY_LEN {
            return PyString::new(py, key);
        }
        // FNV-1a; plenty for telling a few dozen short keys apart.
        let hash = key.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
        #[allow(clippy::cast_possible_truncation)] // only the low bits pick the slot
        let slot = &mut self.slots[(hash ^ (hash >> 32)) as usize % Self::SLOTS];
        if let Some((cached_hash, cached)) = *slot {
            if cached_hash == hash && cached.to_str().is_ok_and(|c| c == key) {
                return cached;
            }
        }
        let made = PyString::new(py, key);
        *slot = Some((hash, made));
        made
    }
}
