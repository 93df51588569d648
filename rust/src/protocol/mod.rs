//! Celery's task message protocol v2: the one place its header names, their order and the body layout
//! are written down (see `celery/app/amqp.py`, `AMQP.as_task_v2`, in Celery 5.7).

pub mod batch_py;
pub mod body_py;
pub mod envelope;
pub mod head_py;
pub mod job_envelope_py;
pub mod message_py;
pub mod request_py;

pub const CONTENT_TYPE_JSON: &str = "application/json";
pub const CONTENT_TYPE_MSGPACK: &str = "application/x-msgpack";

/// The serializers the core implements, with the content type and encoding kombu labels them with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Serializer {
    Json,
    Msgpack,
}

impl Serializer {
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "json" => Some(Self::Json),
            "msgpack" => Some(Self::Msgpack),
            _ => None,
        }
    }

    pub fn from_content_type(content_type: &str) -> Option<Self> {
        match content_type {
            CONTENT_TYPE_JSON => Some(Self::Json),
            CONTENT_TYPE_MSGPACK => Some(Self::Msgpack),
            _ => None,
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Self::Json => CONTENT_TYPE_JSON,
            Self::Msgpack => CONTENT_TYPE_MSGPACK,
        }
    }

    pub fn content_encoding(self) -> &'static str {
        match self {
            Self::Json => "utf-8",
            Self::Msgpack => "binary",
        }
    }
}

/// Headers in the order `as_task_v2` builds them; user headers follow, then `compression`.
pub const HEADERS: [&str; 19] = [
    "lang",
    "task",
    "id",
    "shadow",
    "eta",
    "expires",
    "group",
    "group_index",
    "retries",
    "timelimit",
    "root_id",
    "parent_id",
    "argsrepr",
    "kwargsrepr",
    "origin",
    "ignore_result",
    "replaced_task_nesting",
    "stamped_headers",
    "stamps",
];

/// Position of `timelimit` in `HEADERS`: its value is the pair `[time_limit, soft_time_limit]`.
pub const TIMELIMIT: usize = 9;

/// Value of the `lang` header for Python producers (Celery's own workers do not check it).
pub const LANG: &str = "py";

/// Added by kombu after the other headers when the body is compressed; its value is the codec's mime name.
pub const COMPRESSION_HEADER: &str = "compression";

/// Properties a task message carries before a transport adds its delivery properties.
pub const CORRELATION_ID: &str = "correlation_id";
pub const REPLY_TO: &str = "reply_to";

/// The body is `[args, kwargs, embed]`; embed maps these keys, in this order, to signatures or null.
pub const EMBED_KEYS: [&str; 4] = ["callbacks", "errbacks", "chain", "chord"];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serializers() {
        for s in [Serializer::Json, Serializer::Msgpack] {
            assert_eq!(Serializer::from_content_type(s.content_type()), Some(s));
        }
        assert_eq!(Serializer::from_name("msgpack"), Some(Serializer::Msgpack));
        assert_eq!(Serializer::from_name("pickle"), None);
        assert_eq!(Serializer::Json.content_encoding(), "utf-8");
    }

    #[test]
    fn header_names_are_unique() {
        let mut names = HEADERS.to_vec();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), HEADERS.len());
        assert_eq!(HEADERS[0], "lang");
        assert_eq!(HEADERS[TIMELIMIT], "timelimit");
    }
}
