//! The shape of configuration files for the cross-service consistency check: key names and a
//! fingerprint of them, and which keys hold one of the agent's secrets in clear. Values never
//! leave the agent.

use flotilla_schemas::ConfigShape;

use crate::config::SecretSources;
use crate::steps::RootDir;

/// The values of every secret the agent can resolve (`<env_prefix>*` variables and the files of
/// the secrets directory), each also as it is escaped in a written file; those too short to be
/// searched for without matching by chance are left out, as the redactor leaves them.
pub fn known_secret_values(sources: &SecretSources) -> Vec<String> {
    crate::redact::secrets(sources)
        .into_iter()
        .map(|s| s.value)
        .filter(|v| v.len() >= crate::redact::MIN_SECRET_BYTES)
        // A written file holds a secret escaped for its format: look for those forms too.
        .flat_map(|v| crate::template::written_forms(&v))
        .collect()
}

/// Reads `path` (inside the service root) and describes its keys.
pub fn config_shape(root: &RootDir, path: &str, secrets: &[String]) -> ConfigShape {
    let text = match root.exists(path) {
        Ok(true) => root.read_to_string(path).ok(),
        _ => return shape(path, false, "missing", Vec::new(), Vec::new()),
    };
    let Some(text) = text else {
        return shape(path, true, "unreadable", Vec::new(), Vec::new());
    };
    let holds_secret = |value: &str| secrets.iter().any(|s| value.contains(s.as_str()));
    let mut pairs = Vec::new();
    let format = if path.ends_with(".toml") {
        match text.parse::<toml::Table>() {
            Ok(table) => {
                flatten("", &toml::Value::Table(table), &mut pairs);
                "standard"
            }
            Err(_) => "unreadable",
        }
    } else {
        for line in text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
        {
            if let Some((key, value)) = line.split_once('=') {
                pairs.push((key.trim().to_owned(), value.trim().to_owned()));
            }
        }
        "key_value"
    };
    let mut keys: Vec<String> = pairs.iter().map(|(k, _)| k.clone()).collect();
    keys.sort();
    keys.dedup();
    let mut literal: Vec<String> = pairs
        .iter()
        .filter(|(_, v)| holds_secret(v))
        .map(|(k, _)| k.clone())
        .collect();
    literal.sort();
    literal.dedup();
    shape(path, true, format, keys, literal)
}

fn shape(
    path: &str,
    exists: bool,
    format: &str,
    keys: Vec<String>,
    literal_secrets: Vec<String>,
) -> ConfigShape {
    let fingerprint = blake3::hash(keys.join("\n").as_bytes()).to_hex()[..16].to_owned();
    ConfigShape {
        path: path.to_owned(),
        exists,
        format: format.to_owned(),
        keys,
        fingerprint,
        literal_secrets,
    }
}

fn flatten(prefix: &str, value: &toml::Value, out: &mut Vec<(String, String)>) {
    match value {
        toml::Value::Table(table) => {
            for (key, value) in table {
                let name = if prefix.is_empty() {
                    key.clone()
                } else {
                    format!("{prefix}.{key}")
                };
                flatten(&name, value, out);
            }
        }
        other => out.push((
            prefix.to_owned(),
            other
                .as_str()
                .map(str::to_owned)
                .unwrap_or_else(|| other.to_string()),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_name_keys_and_literal_secrets_never_values() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(
            tmp.path().join("legacy.conf"),
            "service=x\napi_key=hunter2-secret\n# c\n",
        )
        .unwrap();
        std::fs::create_dir(tmp.path().join("config")).unwrap();
        std::fs::write(
            tmp.path().join("config/service.toml"),
            "[service]\nname = \"x\"\n[secrets]\napi_key = \"${secret:API_KEY}\"\n",
        )
        .unwrap();
        let root = RootDir::open(tmp.path()).unwrap();
        let secrets = vec!["hunter2-secret".to_owned()];
        let legacy = config_shape(&root, "legacy.conf", &secrets);
        assert_eq!(legacy.keys, ["api_key", "service"]);
        assert_eq!(legacy.literal_secrets, ["api_key"]);
        let standard = config_shape(&root, "config/service.toml", &secrets);
        assert_eq!(
            (standard.format.as_str(), standard.keys.clone()),
            (
                "standard",
                vec!["secrets.api_key".to_owned(), "service.name".to_owned()]
            )
        );
        assert!(standard.literal_secrets.is_empty());
        assert!(!format!("{legacy:?}{standard:?}").contains("hunter2"));
        assert!(!config_shape(&root, "nope.toml", &secrets).exists);
    }

    #[test]
    fn a_secret_is_found_as_a_written_file_escapes_it() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("S"), "hunter\"2\n").unwrap();
        let sources = SecretSources {
            env_prefix: "FLOTILLA_TEST_INSPECT_NO_SUCH_PREFIX_".into(),
            dir: Some(tmp.path().to_owned()),
        };
        let secrets = known_secret_values(&sources);
        std::fs::write(tmp.path().join("app.conf"), "api_key=\"hunter\\\"2\"\n").unwrap();
        let root = RootDir::open(tmp.path()).unwrap();
        assert_eq!(
            config_shape(&root, "app.conf", &secrets).literal_secrets,
            ["api_key"]
        );
    }
}
