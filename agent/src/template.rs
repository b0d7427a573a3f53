//! Placeholders in written content: `${secret:NAME}` and `${var:NAME}`, resolved by the agent so
//! that secret values never travel over the bus. `$${` writes a literal `${`, for files in which
//! the service itself resolves placeholders at run time.

use std::collections::BTreeMap;

use crate::config::SecretSources;

/// Why content could not be rendered. Names the placeholder, never a value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error("secret {0:?} is not available from the agent's secret sources")]
    UnknownSecret(String),
    #[error("variable {0:?} is not defined in the agent's [vars]")]
    UnknownVar(String),
    #[error(
        "unknown placeholder ${{{0}}}: use ${{secret:NAME}}, ${{var:NAME}} or $${{ for a literal"
    )]
    UnknownPlaceholder(String),
    #[error("unterminated placeholder starting at byte {0}")]
    Unterminated(usize),
}

/// What a secret's value is shown as in a dry run.
pub const MASK: &str = "********";

/// Resolves placeholders: `vars` answers `${var:…}`, `secrets` answers `${secret:…}`.
pub struct Renderer<'a> {
    pub vars: &'a BTreeMap<String, String>,
    pub secrets: &'a SecretSources,
    /// Write [`MASK`] for each secret, once it is known to resolve: what a dry run shows.
    pub mask_secrets: bool,
}

impl Renderer<'_> {
    /// Renders `content`, or says which placeholder cannot be resolved.
    pub fn render(&self, content: &str) -> Result<String, TemplateError> {
        let mut out = String::with_capacity(content.len());
        let mut rest = content;
        let mut offset = 0;
        while let Some(at) = rest.find('$') {
            out.push_str(&rest[..at]);
            let tail = &rest[at..];
            if let Some(after) = tail.strip_prefix("$${") {
                out.push_str("${");
                offset += at + 3;
                rest = after;
            } else if let Some(after) = tail.strip_prefix("${") {
                let end = after
                    .find('}')
                    .ok_or(TemplateError::Unterminated(offset + at))?;
                out.push_str(&self.resolve(&after[..end])?);
                offset += at + 2 + end + 1;
                rest = &after[end + 1..];
            } else {
                out.push('$');
                offset += at + 1;
                rest = &tail[1..];
            }
        }
        out.push_str(rest);
        Ok(out)
    }

    fn resolve(&self, placeholder: &str) -> Result<String, TemplateError> {
        match placeholder.split_once(':') {
            Some(("var", name)) => self
                .vars
                .get(name)
                .cloned()
                .ok_or_else(|| TemplateError::UnknownVar(name.to_owned())),
            Some(("secret", name)) => self.secret(name).map(|value| {
                if self.mask_secrets {
                    MASK.into()
                } else {
                    value
                }
            }),
            _ => Err(TemplateError::UnknownPlaceholder(placeholder.to_owned())),
        }
    }

    fn secret(&self, name: &str) -> Result<String, TemplateError> {
        let valid = !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if !valid {
            return Err(TemplateError::UnknownSecret(name.to_owned()));
        }
        if let Ok(value) = std::env::var(format!("{}{name}", self.secrets.env_prefix)) {
            return Ok(value);
        }
        if let Some(dir) = &self.secrets.dir
            && let Ok(value) = std::fs::read_to_string(dir.join(name))
        {
            return Ok(value.trim_end_matches(['\n', '\r']).to_owned());
        }
        Err(TemplateError::UnknownSecret(name.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sources(dir: &std::path::Path) -> SecretSources {
        SecretSources {
            env_prefix: "FLOTILLA_TEST_TEMPLATE_NO_SUCH_PREFIX_".into(),
            dir: Some(dir.to_owned()),
        }
    }

    #[test]
    fn resolves_vars_secrets_and_escapes() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("API_KEY"), "s3cr3t\n").unwrap();
        let vars = BTreeMap::from([("port".to_owned(), "18081".to_owned())]);
        let secrets = sources(tmp.path());
        let r = Renderer {
            vars: &vars,
            secrets: &secrets,
            mask_secrets: false,
        };
        let out = r
            .render("port = ${var:port}\nkey = ${secret:API_KEY}\nlit = \"$${secret:API_KEY}\" $5")
            .unwrap();
        assert_eq!(
            out,
            "port = 18081\nkey = s3cr3t\nlit = \"${secret:API_KEY}\" $5"
        );
        let masked = Renderer {
            mask_secrets: true,
            ..r
        };
        assert_eq!(
            masked.render("key = ${secret:API_KEY}").unwrap(),
            "key = ********"
        );
        assert_eq!(
            masked.render("${secret:NOPE}"),
            Err(TemplateError::UnknownSecret("NOPE".into()))
        );
    }

    #[test]
    fn names_what_is_missing_without_values() {
        let tmp = tempfile::tempdir().unwrap();
        let vars = BTreeMap::new();
        let secrets = sources(tmp.path());
        let r = Renderer {
            vars: &vars,
            secrets: &secrets,
            mask_secrets: false,
        };
        assert_eq!(
            r.render("${secret:NOPE}"),
            Err(TemplateError::UnknownSecret("NOPE".into()))
        );
        assert_eq!(
            r.render("${var:port}"),
            Err(TemplateError::UnknownVar("port".into()))
        );
        assert_eq!(
            r.render("${env:HOME}"),
            Err(TemplateError::UnknownPlaceholder("env:HOME".into()))
        );
        assert_eq!(
            r.render("x ${var:port"),
            Err(TemplateError::Unterminated(2))
        );
        assert_eq!(
            r.render("${secret:../../etc/passwd}"),
            Err(TemplateError::UnknownSecret("../../etc/passwd".into()))
        );
    }
}
