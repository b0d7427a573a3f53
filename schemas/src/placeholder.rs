//! Placeholders in plan text: `${var:NAME}` and `${secret:NAME}`, resolved by the agent (secret
//! values never travel over the bus); `$${` writes a literal `${`, for files in which the service
//! itself resolves placeholders. A filter after `|` (`${secret:NAME|json}`) names how the agent
//! escapes the value. The syntax is defined once, here, so that `flotilla plan check` and the
//! agent read a text the same way.

/// One piece of a text with placeholders.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Piece<'a> {
    /// Text written as it is.
    Text(&'a str),
    /// `$${`: a literal `${`.
    Literal,
    /// `${var:NAME}`, with its filter if any.
    Var(&'a str, Option<Filter>),
    /// `${secret:NAME}`, with its filter if any.
    Secret(&'a str, Option<Filter>),
}

/// How the agent writes a value: `|raw` as it is, or escaped for the usual string of a format
/// (the agent's `template` module says where each applies).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filter {
    Raw,
    Toml,
    Json,
    Yaml,
    Env,
}

/// Why a text's placeholders cannot be read. Names the placeholder, never a value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlaceholderError {
    #[error(
        "unknown placeholder ${{{0}}}: use ${{secret:NAME}}, ${{var:NAME}} or $${{ for a literal"
    )]
    Unknown(String),
    #[error("unterminated placeholder starting at byte {0}")]
    Unterminated(usize),
    #[error("unknown filter in ${{{0}}}: use |toml, |json, |yaml, |env or |raw")]
    UnknownFilter(String),
}

/// Splits `content` into text and placeholders.
pub fn parse(content: &str) -> Result<Vec<Piece<'_>>, PlaceholderError> {
    let mut pieces = Vec::new();
    let mut rest = content;
    let mut offset = 0;
    while let Some(at) = rest.find('$') {
        let tail = &rest[at..];
        if let Some(after) = tail.strip_prefix("$${") {
            pieces.push(Piece::Text(&rest[..at]));
            pieces.push(Piece::Literal);
            offset += at + 3;
            rest = after;
        } else if let Some(after) = tail.strip_prefix("${") {
            pieces.push(Piece::Text(&rest[..at]));
            let end = after
                .find('}')
                .ok_or(PlaceholderError::Unterminated(offset + at))?;
            let source = &after[..end];
            let (placeholder, filter) = match source.split_once('|') {
                None => (source, None),
                Some((placeholder, name)) => match Filter::parse(name) {
                    Some(filter) => (placeholder, Some(filter)),
                    None => return Err(PlaceholderError::UnknownFilter(source.to_owned())),
                },
            };
            pieces.push(match placeholder.split_once(':') {
                Some(("var", name)) => Piece::Var(name, filter),
                Some(("secret", name)) => Piece::Secret(name, filter),
                _ => return Err(PlaceholderError::Unknown(placeholder.to_owned())),
            });
            offset += at + 2 + end + 1;
            rest = &after[end + 1..];
        } else {
            pieces.push(Piece::Text(&rest[..=at]));
            offset += at + 1;
            rest = &tail[1..];
        }
    }
    pieces.push(Piece::Text(rest));
    pieces.retain(|p| *p != Piece::Text(""));
    Ok(pieces)
}

/// The first secret a text names, if it names one (`None` too when it does not parse): for the
/// fields that may not hold a secret, where its value would end up in failure reasons, logs or
/// process listings (check URLs, addresses, log paths and patterns, command arguments).
pub fn first_secret(text: &str) -> Option<&str> {
    parse(text).ok()?.into_iter().find_map(|piece| match piece {
        Piece::Secret(name, _) => Some(name),
        _ => None,
    })
}

/// Why a field may not hold a secret, after "`${secret:NAME}` is not allowed in FIELD".
pub const SECRET_NOT_ALLOWED_WHY: &str = "its value would show in failure reasons, logs and \
     process listings; write secrets into the files the service reads (write_file content) or \
     an HTTP body";

// === impl Filter ===

impl Filter {
    /// The filter `|name` names.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "raw" => Some(Self::Raw),
            "toml" => Some(Self::Toml),
            "json" => Some(Self::Json),
            "yaml" => Some(Self::Yaml),
            "env" => Some(Self::Env),
            _ => None,
        }
    }

    /// How it is written after `|`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Raw => "raw",
            Self::Toml => "toml",
            Self::Json => "json",
            Self::Yaml => "yaml",
            Self::Env => "env",
        }
    }
}

/// Whether `name` can name a secret: letters, digits, `_` and `-` (it becomes a file name and
/// an environment variable's suffix at the agent).
pub fn valid_secret_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_text_placeholders_and_escapes() {
        assert_eq!(
            parse("a ${var:port} $${secret:K} $5 ${secret:API_KEY|json}").unwrap(),
            vec![
                Piece::Text("a "),
                Piece::Var("port", None),
                Piece::Text(" "),
                Piece::Literal,
                Piece::Text("secret:K} $"),
                Piece::Text("5 "),
                Piece::Secret("API_KEY", Some(Filter::Json)),
            ]
        );
    }

    #[test]
    fn names_what_is_malformed() {
        assert_eq!(
            parse("x ${var:port"),
            Err(PlaceholderError::Unterminated(2))
        );
        assert_eq!(
            parse("${env:HOME}"),
            Err(PlaceholderError::Unknown("env:HOME".into()))
        );
        assert_eq!(
            parse("${secret:K|base64}"),
            Err(PlaceholderError::UnknownFilter("secret:K|base64".into()))
        );
        assert!(!valid_secret_name("../../etc/passwd"));
        assert_eq!(
            first_secret("a ${var:x} ${secret:K} ${secret:L}"),
            Some("K")
        );
        assert_eq!(first_secret("$${secret:K}"), None);
        assert!(valid_secret_name("API_KEY-2"));
    }
}
