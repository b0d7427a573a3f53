//! Encoding and decoding with size and version checks, so bad input is refused with a reason
//! before any field is trusted.

use serde::Deserialize;

use crate::WireMessage;

/// The largest message accepted (1 MiB, the NATS server's default payload limit).
pub const MAX_MESSAGE_BYTES: usize = 1024 * 1024;

/// Why a message was refused.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("message of {size} bytes is larger than the {MAX_MESSAGE_BYTES}-byte limit")]
    TooLarge { size: usize },
    #[error("message is not a JSON object with a \"schema\" field")]
    NoSchema(#[source] serde_json::Error),
    #[error("unsupported schema {found:?}: this build speaks {expected:?}")]
    UnsupportedSchema {
        found: String,
        expected: &'static str,
    },
    #[error("malformed {schema} message")]
    Malformed {
        schema: &'static str,
        #[source]
        source: serde_json::Error,
    },
}

#[derive(Deserialize)]
struct SchemaProbe {
    schema: String,
}

/// Decodes a message of type `T`, checking size, then the schema version, then the fields.
pub fn decode<T: WireMessage>(bytes: &[u8]) -> Result<T, DecodeError> {
    if bytes.len() > MAX_MESSAGE_BYTES {
        return Err(DecodeError::TooLarge { size: bytes.len() });
    }
    let probe: SchemaProbe = serde_json::from_slice(bytes).map_err(DecodeError::NoSchema)?;
    if probe.schema != T::SCHEMA {
        return Err(DecodeError::UnsupportedSchema {
            found: probe.schema,
            expected: T::SCHEMA,
        });
    }
    serde_json::from_slice(bytes).map_err(|source| DecodeError::Malformed {
        schema: T::SCHEMA,
        source,
    })
}

/// Encodes a message as compact JSON.
pub fn encode<T: WireMessage>(message: &T) -> Vec<u8> {
    // Our message types hold only strings, numbers and maps with string keys: serializing them
    // cannot fail.
    serde_json::to_vec(message).expect("wire messages always serialize")
}

/// Reads just the `schema` field, to route a message that may be of several types.
pub fn schema_of(bytes: &[u8]) -> Result<String, DecodeError> {
    if bytes.len() > MAX_MESSAGE_BYTES {
        return Err(DecodeError::TooLarge { size: bytes.len() });
    }
    serde_json::from_slice::<SchemaProbe>(bytes)
        .map(|p| p.schema)
        .map_err(DecodeError::NoSchema)
}
