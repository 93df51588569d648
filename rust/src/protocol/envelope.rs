//! The JSON document kombu's virtual transports (Redis, SQLite, memory) store per message:
//! `{"body": <base64>, "content-encoding", "content-type", "headers", "properties"}`, where properties
//! are the message's own followed by what `Producer.publish` and `Channel.basic_publish` add.

/// The envelope's keys before the properties, in the order kombu's `prepare_message` builds them.
pub const BODY: &str = "body";
pub const CONTENT_ENCODING: &str = "content-encoding";
pub const CONTENT_TYPE: &str = "content-type";
pub const HEADERS: &str = "headers";
pub const PROPERTIES: &str = "properties";

/// `properties.body_encoding` of every envelope kombu writes with its default transport options.
pub const BODY_ENCODING: &str = "body_encoding";
pub const BASE64: &str = "base64";

/// The properties publishing adds, in the order it adds them: `Producer.publish` sets `delivery_mode` and
/// (when given) `expiration`, `prepare_message` adds `delivery_info` and `priority`, `basic_publish` adds
/// `body_encoding` and `delivery_tag` and fills `delivery_info`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeliveryProperty {
    DeliveryMode,
    Expiration,
    DeliveryInfo,
    Priority,
    BodyEncoding,
    DeliveryTag,
}

impl DeliveryProperty {
    pub const ALL: [Self; 6] = [
        Self::DeliveryMode,
        Self::Expiration,
        Self::DeliveryInfo,
        Self::Priority,
        Self::BodyEncoding,
        Self::DeliveryTag,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::DeliveryMode => "delivery_mode",
            Self::Expiration => "expiration",
            Self::DeliveryInfo => "delivery_info",
            Self::Priority => "priority",
            Self::BodyEncoding => BODY_ENCODING,
            Self::DeliveryTag => "delivery_tag",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.name() == name)
    }
}

/// `delivery_info`'s keys, in kombu's order.
pub const EXCHANGE: &str = "exchange";
pub const ROUTING_KEY: &str = "routing_key";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for p in DeliveryProperty::ALL {
            assert_eq!(DeliveryProperty::from_name(p.name()), Some(p));
        }
        assert_eq!(DeliveryProperty::from_name("correlation_id"), None);
    }
}
