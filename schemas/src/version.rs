//! Schema tags: the `schema` field every message starts with.

/// A message type that names its schema version in its `schema` field.
pub trait SchemaTag {
    /// The exact value of the `schema` field, e.g. `flotilla.command.v1`.
    const SCHEMA: &'static str;
}

/// Defines a zero-sized type that serializes as one fixed schema string and refuses any other,
/// so a message of the wrong version can never deserialize into the wrong type.
macro_rules! schema_tag {
    ($name:ident, $value:literal) => {
        #[doc = concat!("The schema tag `", $value, "`.")]
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
        pub struct $name;

        impl $name {
            /// The tag's value on the wire.
            pub const VALUE: &'static str = $value;
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str($value)
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let found = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
                if found == $value {
                    Ok($name)
                } else {
                    Err(serde::de::Error::custom(format_args!(
                        "expected schema {:?}, found {:?}",
                        $value, found
                    )))
                }
            }
        }

        impl schemars::JsonSchema for $name {
            fn schema_name() -> std::borrow::Cow<'static, str> {
                stringify!($name).into()
            }

            fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
                schemars::json_schema!({ "type": "string", "const": $value })
            }
        }
    };
}
pub(crate) use schema_tag;
