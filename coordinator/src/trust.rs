//! Which agent keys the coordinator trusts for results, the way agents trust the coordinator's
//! key for commands. Every agent signs what it publishes with a key of its own and announces its
//! public half in presence. The keys a run trusts for each agent are fixed when the run is
//! created, in its record (so `resume`, `rollback` and `status` check against the same keys):
//!
//! - with `--trusted-agent-keys` (`service/instance=<public key>`, repeatable; two entries for
//!   one agent during a rotation), those pins, and an agent that announces another key, or has
//!   no pin, fails the pre-flight;
//! - without, the key each agent announces when the run starts (trust on first sight, per run):
//!   nothing to manage, and it already defeats anyone who cannot answer presence in an agent's
//!   place. On a server where anyone may publish anything, pin the keys.
//!
//! An agent that announces no key (older than signed results) is accepted unverified when
//! nothing is pinned, with a note in the run record, and refused by the pre-flight when keys are
//! pinned.

use std::collections::HashMap;

use flotilla_bus::signing::{self, SigningError, TrustedKey};
use flotilla_schemas::{InstanceId, Presence, ServiceName};

use crate::store::RunRecord;

/// The operator's pins: for each `service/instance`, the public keys trusted for its results.
#[derive(Debug, Clone, Default)]
pub struct AgentPins {
    pins: HashMap<String, Vec<String>>,
}

/// The keys a run trusts for each of its agents' events.
#[derive(Clone, Default)]
pub struct ResultTrust {
    keys: HashMap<(ServiceName, InstanceId), Vec<TrustedKey>>,
}

// === impl AgentPins ===

impl AgentPins {
    /// Parses `service/instance=<base64 public key>` entries.
    pub fn parse(entries: &[String]) -> Result<Self, String> {
        let mut pins: HashMap<String, Vec<String>> = HashMap::new();
        for entry in entries.iter().map(|e| e.trim()).filter(|e| !e.is_empty()) {
            let (agent, key) = entry.split_once('=').ok_or_else(|| {
                format!("trusted agent key {entry:?} is not `service/instance=<public key>`")
            })?;
            TrustedKey::parse(key).map_err(|e| format!("trusted agent key of {agent}: {e}"))?;
            pins.entry(agent.trim().to_owned())
                .or_default()
                .push(key.trim().to_owned());
        }
        Ok(Self { pins })
    }

    /// The keys to trust for `agent`'s results, or why it cannot take part in a run.
    pub fn keys_for(&self, agent: &Presence) -> Result<Vec<String>, String> {
        let name = format!("{}/{}", agent.service, agent.instance);
        let announced = agent.result_key.as_deref();
        if self.pins.is_empty() {
            return Ok(announced.map(str::to_owned).into_iter().collect());
        }
        let Some(announced) = announced else {
            return Err(format!(
                "{name}: agent {} does not sign its results (older than signed results): upgrade it, or it cannot be trusted with pinned keys",
                agent.version
            ));
        };
        let id = key_id(announced);
        let Some(pinned) = self.pins.get(&name) else {
            return Err(format!(
                "{name}: no pinned result key; it announces key {id}: add `{name}={announced}` to --trusted-agent-keys if it is its own"
            ));
        };
        if !pinned.iter().any(|k| k == announced) {
            return Err(format!(
                "{name}: announces result key {id}, which is not pinned for it (pinned: {})",
                pinned
                    .iter()
                    .map(|k| key_id(k))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        Ok(pinned.clone())
    }
}

/// The short ID of a base64 public key, or `?` for one that does not parse.
pub fn key_id(key: &str) -> String {
    TrustedKey::parse(key).map_or_else(|_| "?".to_owned(), |k| k.id().to_owned())
}

// === impl ResultTrust ===

impl ResultTrust {
    /// The keys recorded in `record` for each of its targets.
    pub fn of(record: &RunRecord) -> Self {
        Self::new(
            record
                .targets
                .iter()
                .map(|t| (&t.service, &t.instance, &t.agent_keys[..])),
        )
    }

    /// The keys of each `(service, instance, keys)`.
    pub fn new<'a>(
        agents: impl Iterator<Item = (&'a ServiceName, &'a InstanceId, &'a [String])>,
    ) -> Self {
        let keys = agents
            .map(|(service, instance, keys)| {
                let keys = keys
                    .iter()
                    .filter_map(|k| TrustedKey::parse(k).ok())
                    .collect();
                ((service.clone(), instance.clone()), keys)
            })
            .collect();
        Self { keys }
    }

    /// Checks that an event naming `service/instance` comes from an agent of the run, signed by
    /// that agent's key; an agent of the run with no recorded key (older than signed results)
    /// is not checked.
    pub fn check(
        &self,
        service: &ServiceName,
        instance: &InstanceId,
        payload: &[u8],
        signature: Option<&str>,
    ) -> Result<(), String> {
        let Some(keys) = self.keys.get(&(service.clone(), instance.clone())) else {
            return Err("it names an agent that is not in this run".to_owned());
        };
        if keys.is_empty() {
            return Ok(());
        }
        signing::verify(keys, payload, signature)
            .map(|_| ())
            .map_err(|e| match e {
                SigningError::Unsigned => "not signed by its agent's key".to_owned(),
                SigningError::UnknownKey(id) => {
                    format!("signed by key {id}, which is not its agent's")
                }
                SigningError::Forged(id) => {
                    format!("its signature by key {id} does not match: forged or altered")
                }
                other => other.to_string(),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_bus::signing::SigningKey;

    fn presence(key: Option<&SigningKey>) -> Presence {
        flotilla_schemas::decode(
            serde_json::json!({
                "schema": "flotilla.presence.v1", "service": "inference", "instance": "a",
                "version": "0.1.0", "accepts": [], "host": "h", "state": "idle",
                "result_key": key.map(|k| k.public_key_text()),
                "started_at": "2026-01-01T00:00:00Z",
            })
            .to_string()
            .as_bytes(),
        )
        .unwrap()
    }

    #[test]
    fn without_pins_the_announced_key_is_trusted_and_an_old_agent_is_not_checked() {
        let key = SigningKey::generate().unwrap();
        let pins = AgentPins::default();
        assert_eq!(
            pins.keys_for(&presence(Some(&key))).unwrap(),
            [key.public_key_text()]
        );
        assert!(pins.keys_for(&presence(None)).unwrap().is_empty());
    }

    #[test]
    fn pins_refuse_an_unpinned_an_unknown_and_an_unsigning_agent_and_allow_rotation() {
        let (old, new, stranger) = (
            SigningKey::generate().unwrap(),
            SigningKey::generate().unwrap(),
            SigningKey::generate().unwrap(),
        );
        let pins = AgentPins::parse(&[
            format!("inference/a={}", old.public_key_text()),
            format!("inference/a={}", new.public_key_text()),
        ])
        .unwrap();
        for key in [&old, &new] {
            assert_eq!(pins.keys_for(&presence(Some(key))).unwrap().len(), 2);
        }
        let refused = pins.keys_for(&presence(Some(&stranger))).unwrap_err();
        assert!(refused.contains("not pinned"), "{refused}");
        let old_agent = pins.keys_for(&presence(None)).unwrap_err();
        assert!(old_agent.contains("does not sign"), "{old_agent}");
        let other = AgentPins::parse(&[format!("web/b={}", old.public_key_text())]).unwrap();
        assert!(other.keys_for(&presence(Some(&old))).is_err());
        assert!(AgentPins::parse(&["inference/a".to_owned()]).is_err());
    }
}
