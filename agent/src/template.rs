//! Placeholders in written content: `${secret:NAME}` and `${var:NAME}`, resolved by the agent so
//! that secret values never travel over the bus. `$${` writes a literal `${`, for files in which
//! the service itself resolves placeholders at run time.

use std::collections::BTreeMap;

use flotilla_schemas::placeholder::{self, Piece, PlaceholderError};

use crate::config::SecretSources;
use crate::run_vars::RunVars;

/// Why content could not be rendered. Names the placeholder, never a value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error("secret {0:?} is not available from the agent's secret sources")]
    UnknownSecret(String),
    #[error("variable {0:?} is not defined in the agent's [vars]")]
    UnknownVar(String),
    #[error("{0:?} is not known: the command carries no trace context (telemetry is off)")]
    NoTraceContext(String),
    #[error(transparent)]
    Syntax(#[from] PlaceholderError),
}

/// What a secret's value is shown as in a dry run.
pub const MASK: &str = "********";

/// Resolves placeholders: `vars` answers `${var:…}`, `secrets` answers `${secret:…}`.
pub struct Renderer<'a> {
    pub vars: &'a BTreeMap<String, String>,
    pub secrets: &'a SecretSources,
    /// Answers `${run:…}` and `${service:…}`.
    pub run: &'a RunVars,
    /// Write [`MASK`] for each secret, once it is known to resolve: what a dry run shows.
    pub mask_secrets: bool,
}

impl Renderer<'_> {
    /// Renders `content`, or says which placeholder cannot be resolved.
    pub fn render(&self, content: &str) -> Result<String, TemplateError> {
        let mut out = String::with_capacity(content.len());
        for piece in placeholder::parse(content)? {
            match piece {
                Piece::Text(text) => out.push_str(text),
                Piece::Literal => out.push_str("${"),
                Piece::Var(name) => out.push_str(
                    self.vars
                        .get(name)
                        .ok_or_else(|| TemplateError::UnknownVar(name.to_owned()))?,
                ),
                Piece::Secret(name) => {
                    let value = self.secret(name)?;
                    out.push_str(if self.mask_secrets { MASK } else { &value });
                }
                Piece::Run(var) => out.push_str(
                    &self
                        .run
                        .get(var)
                        .ok_or_else(|| TemplateError::NoTraceContext(format!("{var:?}")))?,
                ),
            }
        }
        Ok(out)
    }

    fn secret(&self, name: &str) -> Result<String, TemplateError> {
        if !placeholder::valid_secret_name(name) {
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
        let run = RunVars::example();
        let r = Renderer {
            vars: &vars,
            secrets: &secrets,
            run: &run,
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
    fn resolves_the_run_variables() {
        let tmp = tempfile::tempdir().unwrap();
        let vars = BTreeMap::new();
        let secrets = sources(tmp.path());
        let run = RunVars::example();
        let r = Renderer {
            vars: &vars,
            secrets: &secrets,
            run: &run,
            mask_secrets: true,
        };
        assert_eq!(
            r.render("id=${run:id} trace=${run:trace_id} ${service:name}/${service:instance}")
                .unwrap(),
            format!(
                "id={} trace=0af7651916cd43dd8448eb211c80319c ingest/a",
                run.run_id
            )
        );
        assert_eq!(
            r.render("${run:traceparent}").unwrap(),
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        );
        let untraced = RunVars {
            traceparent: None,
            ..RunVars::example()
        };
        let r = Renderer {
            run: &untraced,
            ..r
        };
        assert!(matches!(
            r.render("${run:trace_id}"),
            Err(TemplateError::NoTraceContext(_))
        ));
    }

    #[test]
    fn names_what_is_missing_without_values() {
        let tmp = tempfile::tempdir().unwrap();
        let vars = BTreeMap::new();
        let secrets = sources(tmp.path());
        let run = RunVars::example();
        let r = Renderer {
            vars: &vars,
            secrets: &secrets,
            run: &run,
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
            Err(TemplateError::Syntax(PlaceholderError::Unknown(
                "env:HOME".into()
            )))
        );
        assert_eq!(
            r.render("x ${var:port"),
            Err(TemplateError::Syntax(PlaceholderError::Unterminated(2)))
        );
        assert_eq!(
            r.render("${secret:../../etc/passwd}"),
            Err(TemplateError::UnknownSecret("../../etc/passwd".into()))
        );
    }
}
