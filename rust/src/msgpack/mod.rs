//! msgpack exactly as the `msgpack` package writes it with `use_bin_type=True` and reads it with
//! `raw=False`: the format in `write` and `read` (pure), Python objects in `pack_py` and `unpack_py`.

pub mod pack_py;
pub mod read;
pub mod unpack_py;
pub mod write;

/// msgpack's default nesting limit for both packing and unpacking (containers nested 1024 deep are
/// accepted, 1025 are not).
pub const MAX_DEPTH: usize = 1024;
