//! Subjects, stream and bucket names, built in one place so both sides always agree.
//!
//! | subject | what travels |
//! |---|---|
//! | `<prefix>.command.<service>.<instance>` | commands, in the commands stream (the last per agent kept) |
//! | `<prefix>.delivery.<service>.<instance>` | each stored command, republished by the stream to its agent |
//! | `<prefix>.evt.<run>.<service>.<instance>` | results, in the events stream (the audit log) |
//! | `<prefix>.live.<run>.<service>.<instance>` | progress, core NATS only: never stored |
//! | `<prefix>.presence` | presence requests; every agent answers |
//! | `<prefix>.agent.<service>.<instance>.status` | one agent's `status` endpoint in the NATS service API |
//! | `$KV.<prefix>_agents.<service>.<instance>` | the agent registry: one small entry per agent |
//! | `$O.<prefix>_files.>` | the plan-files object store: template files, each under its digest |
//!
//! `docs/wire-protocol.md` is the full contract, and `schemas/asyncapi.json` lists these
//! subjects as channels (a test keeps the two in step).

use crate::{InstanceId, RunId, ServiceName};

/// The default subject prefix.
pub const DEFAULT_PREFIX: &str = "flotilla";

/// The queue group every agent subscribes to its command subject in: the subject is the agent's
/// own, so the group is per agent identity, and of two live incarnations of one agent (a pod
/// rescheduled while the old one still runs) only one receives each command.
pub const COMMAND_QUEUE: &str = "agent";

/// Subject and resource names under one prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subjects {
    prefix: String,
}

impl Default for Subjects {
    fn default() -> Self {
        Self {
            prefix: DEFAULT_PREFIX.to_owned(),
        }
    }
}

impl Subjects {
    /// Subjects under `prefix`, which must be a valid service-style name without `_`: the
    /// stream and bucket names turn `-` into `_` (stream names are upper-cased, and `-` is
    /// spelt `_` there by convention), so `a_b` and `a-b` would share them.
    pub fn new(prefix: &str) -> Result<Self, crate::IdError> {
        ServiceName::parse(prefix)?;
        if prefix.contains('_') {
            return Err(crate::IdError::PrefixUnderscore {
                name: prefix.to_owned(),
                twin: prefix.replace('_', "-"),
            });
        }
        Ok(Self {
            prefix: prefix.to_owned(),
        })
    }

    /// The prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Where commands for one agent are published (`flotilla.command.v2`), into the commands
    /// stream ([`Subjects::commands_stream`]), which keeps the last one; the agent catches up on
    /// it with a direct get after every (re)connect. Not under `<prefix>.cmd.`: the v1 work queue
    /// ([`Subjects::legacy_commands_stream`]) may still hold that, and two streams cannot share
    /// subjects.
    pub fn command(&self, service: &ServiceName, instance: &InstanceId) -> String {
        format!("{}.command.{service}.{instance}", self.prefix)
    }

    /// Where the commands stream republishes each command it stored for one agent, and where the
    /// agent receives them live (core NATS, in [`COMMAND_QUEUE`]). Live delivery from the stream,
    /// not from the publish itself: a command the stream refused (full, a duplicate
    /// `Nats-Msg-Id`) reaches no agent, so "not delivered" means nothing was done.
    pub fn command_delivery(&self, service: &ServiceName, instance: &InstanceId) -> String {
        format!("{}.delivery.{service}.{instance}", self.prefix)
    }

    /// Every delivery subject (the commands stream's republish destination).
    pub fn all_command_deliveries(&self) -> String {
        format!("{}.delivery.>", self.prefix)
    }

    /// Every command subject (the commands stream's filter).
    pub fn all_commands(&self) -> String {
        format!("{}.command.>", self.prefix)
    }

    /// The JetStream API subject of a direct get of the last command stored for one agent:
    /// the only JetStream request an agent makes for its commands, and one the server's
    /// permissions can grant per agent (the batch forms carry the subject in the body).
    pub fn last_command_get(&self, service: &ServiceName, instance: &InstanceId) -> String {
        format!(
            "$JS.API.DIRECT.GET.{}.{}",
            self.commands_stream(),
            self.command(service, instance)
        )
    }

    /// Where one agent publishes the results of one run (stored: the audit log). Agents older
    /// than live progress also published their progress here.
    pub fn event(&self, run: &RunId, service: &ServiceName, instance: &InstanceId) -> String {
        format!("{}.evt.{run}.{service}.{instance}", self.prefix)
    }

    /// Every event of one run.
    pub fn run_events(&self, run: &RunId) -> String {
        format!("{}.evt.{run}.>", self.prefix)
    }

    /// Every event (the events stream's filter).
    pub fn all_events(&self) -> String {
        format!("{}.evt.>", self.prefix)
    }

    /// Where one agent publishes the progress of one run: core NATS, outside the events
    /// stream's subjects, so progress costs the broker no storage and no fsync.
    pub fn progress(&self, run: &RunId, service: &ServiceName, instance: &InstanceId) -> String {
        format!("{}.live.{run}.{service}.{instance}", self.prefix)
    }

    /// Every progress message of one run.
    pub fn run_progress(&self, run: &RunId) -> String {
        format!("{}.live.{run}.>", self.prefix)
    }

    /// Every progress message of every run (what `watch` hears while it waits for a run).
    pub fn all_progress(&self) -> String {
        format!("{}.live.>", self.prefix)
    }

    /// Where presence requests are published.
    pub fn presence(&self) -> String {
        format!("{}.presence", self.prefix)
    }

    /// The NATS service API group of one agent: its `status` endpoint answers on
    /// `<group>.status` with the agent's presence.
    pub fn agent_service_group(&self, service: &ServiceName, instance: &InstanceId) -> String {
        format!("{}.agent.{service}.{instance}", self.prefix)
    }

    /// The JetStream stream that holds commands: limits retention, the last command of each
    /// agent's subject (`flotilla_bus::commands_stream_config`).
    pub fn commands_stream(&self) -> String {
        format!(
            "{}_COMMANDS_V2",
            self.prefix.to_ascii_uppercase().replace('-', "_")
        )
    }

    /// The work-queue commands stream of `flotilla.command.v1` (subjects `<prefix>.cmd.>`, one
    /// durable consumer per agent). Nothing of this version uses it; `flotilla setup` reports
    /// it as obsolete when it finds it.
    pub fn legacy_commands_stream(&self) -> String {
        format!(
            "{}_COMMANDS",
            self.prefix.to_ascii_uppercase().replace('-', "_")
        )
    }

    /// The JetStream stream that holds progress and results: the run's audit log.
    pub fn events_stream(&self) -> String {
        format!(
            "{}_EVENTS",
            self.prefix.to_ascii_uppercase().replace('-', "_")
        )
    }

    /// The durable consumer through which a `flotilla.command.v1` agent read its commands on
    /// the legacy work queue (this version's agents have none):
    /// `agent_<service>_<instance>`, each `_` inside a name doubled. Names may hold `_`, so
    /// without the doubling `a_b`/`c` and `a`/`b_c` would share one consumer (and one agent
    /// would take the other's commands); with it, the single `_` between the names is the only
    /// odd run of `_` (a name starts with a letter or digit), so the name is unambiguous. Names
    /// without `_` keep the consumer they always had.
    pub fn agent_consumer(&self, service: &ServiceName, instance: &InstanceId) -> String {
        format!(
            "agent_{}_{}",
            service.as_str().replace('_', "__"),
            instance.as_str().replace('_', "__")
        )
    }

    /// The object store bucket that holds the files shipped with plans, each under its digest.
    /// Its stream is `OBJ_<bucket>`, its subjects `$O.<bucket>.>`.
    pub fn files_bucket(&self) -> String {
        format!("{}_files", self.prefix.replace('-', "_"))
    }

    /// The key-value bucket of the agent registry: one entry per agent, which it writes at
    /// start and refreshes rarely (`docs/wire-protocol.md`, "The agent registry").
    pub fn agents_bucket(&self) -> String {
        format!("{}_agents", self.prefix.replace('-', "_"))
    }

    /// One agent's key in the registry bucket: `<service>.<instance>` (names hold no `.`).
    pub fn agent_key(&self, service: &ServiceName, instance: &InstanceId) -> String {
        format!("{service}.{instance}")
    }

    /// The key-value bucket that holds run records.
    pub fn runs_bucket(&self) -> String {
        format!("{}_runs", self.prefix.replace('-', "_"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_are_built_from_validated_tokens() {
        let s = Subjects::default();
        let svc = ServiceName::parse("inference").unwrap();
        let inst = InstanceId::parse("a1").unwrap();
        assert_eq!(s.command(&svc, &inst), "flotilla.command.inference.a1");
        assert_eq!(
            s.command_delivery(&svc, &inst),
            "flotilla.delivery.inference.a1"
        );
        assert_eq!(s.commands_stream(), "FLOTILLA_COMMANDS_V2");
        assert_eq!(s.legacy_commands_stream(), "FLOTILLA_COMMANDS");
        assert_eq!(
            s.last_command_get(&svc, &inst),
            "$JS.API.DIRECT.GET.FLOTILLA_COMMANDS_V2.flotilla.command.inference.a1"
        );
        assert_eq!(s.agent_consumer(&svc, &inst), "agent_inference_a1");
        assert!(Subjects::new("bad.prefix").is_err());
    }

    #[test]
    fn progress_is_outside_the_events_stream() {
        let s = Subjects::default();
        let (svc, inst) = (
            ServiceName::parse("inference").unwrap(),
            InstanceId::parse("a").unwrap(),
        );
        let run = RunId::new();
        let stored = s.all_events();
        let stored = stored.trim_end_matches('>');
        assert!(s.event(&run, &svc, &inst).starts_with(stored));
        assert!(!s.progress(&run, &svc, &inst).starts_with(stored));
        assert!(
            s.progress(&run, &svc, &inst)
                .starts_with(s.run_progress(&run).trim_end_matches('>'))
        );
    }

    fn names(s: &Subjects) -> Vec<String> {
        vec![
            s.commands_stream(),
            s.legacy_commands_stream(),
            s.events_stream(),
            s.files_bucket(),
            s.runs_bucket(),
            s.agents_bucket(),
            s.all_commands(),
            s.all_command_deliveries(),
            s.all_events(),
            s.presence(),
        ]
    }

    #[test]
    fn agents_whose_names_join_alike_get_distinct_consumers() {
        let s = Subjects::default();
        let consumer = |svc: &str, inst: &str| {
            s.agent_consumer(
                &ServiceName::parse(svc).unwrap(),
                &InstanceId::parse(inst).unwrap(),
            )
        };
        let agents = [
            ("a_b", "c"),
            ("a", "b_c"),
            ("a_", "b"),
            ("a", "b"),
            ("a__b", "c"),
            ("a__", "b"),
            ("a_", "b_c"),
            ("a-b", "c"),
            ("a", "b-c"),
            ("a_b_", "c"),
            ("a", "b__c"),
        ];
        let mut seen = std::collections::HashMap::new();
        for (svc, inst) in agents {
            let name = consumer(svc, inst);
            if let Some(other) = seen.insert(name.clone(), (svc, inst)) {
                assert_eq!(other, (svc, inst), "{name} is shared");
            }
        }
        assert_eq!(consumer("a_b", "c"), "agent_a__b_c");
        assert_eq!(consumer("a", "b_c"), "agent_a_b__c");
        // Names without '_' keep the consumer of earlier versions.
        assert_eq!(consumer("inference", "a1"), "agent_inference_a1");
    }

    #[test]
    fn prefixes_that_would_share_streams_or_buckets_are_refused() {
        let refused = Subjects::new("fleet_a").unwrap_err();
        assert!(
            refused
                .to_string()
                .contains("share the streams and run store of prefix \"fleet-a\""),
            "{refused}"
        );
        // A prefix that begins another one shares nothing with it: every name differs.
        for (p, q) in [
            ("flotilla", "flotilla-2"),
            ("a", "a-b"),
            ("flotilla", "flotilla-events"),
            ("flotilla", "flotilla-runs"),
            ("x", "x-commands"),
        ] {
            let (p, q) = (Subjects::new(p).unwrap(), Subjects::new(q).unwrap());
            for name in names(&p) {
                assert!(!names(&q).contains(&name), "{name} is shared");
            }
            // No subject of one matches the other's filters (subjects match whole tokens).
            assert!(
                !p.command(&"svc".parse().unwrap(), &"a".parse().unwrap())
                    .starts_with(&format!("{}.", q.prefix()))
            );
        }
    }
}
