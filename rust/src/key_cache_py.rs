//! Reuse of the str objects made for mapping keys, across every document the process decodes.

use std::cell::UnsafeCell;

use pyo3::prelude::*;
use pyo3::types::PyString;

/// Two ways of `SLOTS / 2` sets: the keys of a task envelope, its body, a result and the task events (some
/// seventy) have no three in one set, while 256 direct-mapped slots had two pairs of an envelope's keys
/// (`headers`/`lang`, `task`/`chord`) evicting each other on every message.
const SLOTS: usize = 1024;
const SLOT_BITS: u32 = SLOTS.trailing_zeros();
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
    let set = slot_index(bytes) & !1;
    // SAFETY: see `Slots`; `py` proves this thread holds the GIL.
    let slots = unsafe { &mut *SLOTS_OF_PROCESS.0.get() }.get_or_insert_with(|| {
        let mut slots = Vec::with_capacity(SLOTS);
        slots.resize_with(SLOTS, || None);
        slots
    });
    for way in [set, set | 1] {
        if let Some(cached) = &slots[way] {
            if cached.text[..cached.len] == *bytes {
                return cached.key.clone_ref(py).into_ref(py);
            }
        }
    }
    // The newest key goes first in its set; the one it displaces moves to the other way, whose key is
    // dropped (the least recently made of the two).
    slots.swap(set, set | 1);
    let slot = &mut slots[set];
    // Interned, so a key is the very str Python code looks it up with (`headers['task']`): dict lookups
    // then match on identity, without comparing the text.
    let made = PyString::intern(py, key);
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

/// The slot a key's text maps to: its first and last eight bytes and its length, mixed by one multiply
/// (FNV-1a over every byte cost more than the lookup it served).
#[allow(clippy::cast_possible_truncation)]
fn slot_index(bytes: &[u8]) -> usize {
    let n = bytes.len();
    let (head, tail) = if n >= 8 {
        let mut head = [0; 8];
        let mut tail = [0; 8];
        head.copy_from_slice(&bytes[..8]);
        tail.copy_from_slice(&bytes[n - 8..]);
        (u64::from_le_bytes(head), u64::from_le_bytes(tail))
    } else {
        let mut head = [0; 8];
        head[..n].copy_from_slice(bytes);
        (u64::from_le_bytes(head), 0)
    };
    let mixed = (head ^ tail.rotate_left(29) ^ n as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    (mixed >> (64 - SLOT_BITS)) as usize // the top SLOT_BITS bits
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_keys_of_the_protocol_fit_two_to_a_set() {
        // the task headers, then the envelope's and its properties', a body's workflow keys, a stored
        // result's and the task events' fields
        let others = [
            "body",
            "content-encoding",
            "content-type",
            "headers",
            "properties",
            "correlation_id",
            "reply_to",
            "delivery_mode",
            "delivery_info",
            "exchange",
            "routing_key",
            "priority",
            "body_encoding",
            "delivery_tag",
            "compression",
            "callbacks",
            "errbacks",
            "chain",
            "chord",
            "task_id",
            "status",
            "result",
            "traceback",
            "children",
            "date_done",
            "name",
            "args",
            "kwargs",
            "exc_type",
            "exc_message",
            "exc_module",
            "hostname",
            "timestamp",
            "type",
            "uuid",
            "runtime",
            "clock",
            "utcoffset",
            "pid",
            "local_received",
            "group_id",
            "subtask_type",
            "immutable",
            "options",
            "chord_size",
        ];
        let keys = crate::protocol::HEADERS
            .iter()
            .chain(crate::protocol::head_py::HEAD_FIELDS.iter())
            .chain(others.iter())
            .collect::<std::collections::HashSet<_>>();
        let mut per_set = std::collections::HashMap::new();
        for key in keys {
            *per_set.entry(slot_index(key.as_bytes()) & !1).or_insert(0) += 1;
        }
        assert!(per_set.values().all(|&n| n <= 2), "{per_set:?}");
    }
}
