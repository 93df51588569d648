//! Reuse of the str objects made for mapping keys, across every document the process decodes.

use std::cell::UnsafeCell;

use pyo3::prelude::*;
use pyo3::types::PyString;

const SLOTS: usize = 256;
/// Longer keys are rarely repeated and cost more to hash than to build.
const MAX_KEY_LEN: usize = 32;

struct Slot {
    len: usize,
    text: [u8; MAX_KEY_LEN],
    key: Py<PyString>,
}

/// Direct-mapped slots of `(key text, str)`, kept for the life of the process (at most `SLOTS` short strs),
/// so the keys every task envelope repeats (`headers`, `task`, `id`, `root_id`, ...) are made and hashed
/// once instead of once per message: a new str and its `SipHash` for each of some thirty keys were a quarter
/// of decoding an envelope.
struct Slots(UnsafeCell<Option<Vec<Option<Slot>>>>);

// SAFETY: the slots are only reached through `cached_key`, which needs a `Python` token: only the thread
// holding the GIL touches them, and nothing in `cached_key` runs Python code (which could release the GIL or
// re-enter) while they are borrowed (making or dropping a str of ASCII or UTF-8 text runs none).
unsafe impl Sync for Slots {}

static SLOTS_OF_PROCESS: Slots = Slots(UnsafeCell::new(None));

/// The str for a mapping key. Map keys repeat (a list of records has the same few keys over and over, and
/// every message of a protocol has the same keys as the last), so, like the stdlib json memo and msgpack's
/// key interning, recently seen keys reuse their str object, which also keeps its hash. A key that misses
/// costs a hash and a slot check.
pub fn cached_key<'py>(py: Python<'py>, key: &str) -> &'py PyString {
    let bytes = key.as_bytes();
    if bytes.len() > MAX_KEY_LEN {
        return PyString::new(py, key);
    }
    // FNV-1a; plenty for telling a few hundred short keys apart.
    let hash = bytes.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    });
    #[allow(clippy::cast_possible_truncation)] // only the low bits pick the slot
    let index = (hash ^ (hash >> 32)) as usize % SLOTS;
    // SAFETY: see `Slots`; `py` proves this thread holds the GIL.
    let slots = unsafe { &mut *SLOTS_OF_PROCESS.0.get() }.get_or_insert_with(|| {
        let mut slots = Vec::with_capacity(SLOTS);
        slots.resize_with(SLOTS, || None);
        slots
    });
    let slot = &mut slots[index];
    if let Some(cached) = slot {
        if cached.text[..cached.len] == *bytes {
            return cached.key.clone_ref(py).into_ref(py);
        }
    }
    let made = PyString::new(py, key);
    let mut text = [0; MAX_KEY_LEN];
    text[..bytes.len()].copy_from_slice(bytes);
    // the str it replaces is only decref'd: freeing a str runs no Python code
    *slot = Some(Slot {
        len: bytes.len(),
        text,
        key: made.into(),
    });
    made
}
