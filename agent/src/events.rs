//! Publishing results to the events stream and progress live. Results are the audit log:
//! stored (and fsynced) in the events stream, each acknowledged. Progress is for people
//! watching: a core NATS message on `<prefix>.live.…`, outside the stream's subjects, so the
//! broker stores nothing for it; the result carries every phase's start and duration for
//! reports. Every message is signed with the agent's own key (its `Flotilla-Signature`
//! header), and every result carries the digest of the command it answers, as received: the
//! coordinator files only what this agent signed, in answer to what the coordinator sent.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream;
use flotilla_bus::signing::{SIGNATURE_HEADER, SigningKey};
use flotilla_schemas::subjects::Subjects;
use flotilla_schemas::{
    Command, CommandId, HEADER_RUN_ID, InstanceId, Phase, PhaseStatus, Progress, RunId, RunResult,
    ServiceName, WireMessage,
};
use time::OffsetDateTime;

use crate::redact::Redactor;

/// Why an event did not reach the stream.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("cannot publish to {subject}")]
    Publish {
        subject: String,
        #[source]
        source: jetstream::context::PublishError,
    },
}

/// Where this agent's events go.
#[derive(Clone)]
pub struct Events {
    js: jetstream::Context,
    subjects: Subjects,
    service: ServiceName,
    instance: InstanceId,
    signer: Arc<SigningKey>,
    /// The digest of each command this incarnation accepted, as received.
    received: Arc<Mutex<HashMap<CommandId, String>>>,
    /// Every event is scrubbed of secret values on its way out.
    redactor: Redactor,
}

impl Events {
    pub fn new(
        js: jetstream::Context,
        subjects: Subjects,
        service: ServiceName,
        instance: InstanceId,
        signer: Arc<SigningKey>,
    ) -> Self {
        Self {
            js,
            subjects,
            service,
            instance,
            signer,
            received: Arc::default(),
            redactor: Redactor::default(),
        }
    }

    /// Scrubs every event of the secret values `redactor` knows.
    pub fn redacting(self, redactor: Redactor) -> Self {
        Self { redactor, ..self }
    }

    /// Remembers the digest of an authentic command as received, for its result.
    pub fn received(&self, command_id: CommandId, digest: String) {
        self.received
            .lock()
            .expect("digest lock is never poisoned")
            .insert(command_id, digest);
    }

    /// Publishes a progress event, live only. Progress is advisory: a failure is logged, not
    /// fatal, and nobody listening costs nothing.
    pub async fn progress(
        &self,
        command: &Command,
        phase: Phase,
        status: PhaseStatus,
        duration: Option<Duration>,
        detail: Option<String>,
    ) {
        let event = Progress {
            schema: Default::default(),
            run_id: command.run_id,
            command_id: command.command_id,
            service: self.service.clone(),
            instance: self.instance.clone(),
            at: OffsetDateTime::now_utc(),
            phase,
            status,
            duration_ms: duration.map(|d| d.as_millis() as u64),
            detail,
        };
        // A core NATS message: no stream stores it, nothing waits for an acknowledgement. One
        // connection keeps the order, so progress still precedes the result.
        let subject = self
            .subjects
            .progress(&command.run_id, &self.service, &self.instance);
        // Signed as sent: after the secrets are scrubbed.
        let payload = self.redactor.encode(&event);
        let headers = self.headers(command.run_id, &payload);
        if let Err(e) = self
            .js
            .client()
            .publish_with_headers(subject, headers, payload.into())
            .await
        {
            tracing::warn!(error = %e, phase = phase.as_str(), "progress event not published");
        }
    }

    /// Publishes a result and waits for the stream to store it. A result that names no digest
    /// gets the one of its command as this incarnation accepted it; a refusal of a message
    /// that was not accepted already names the digest of what was refused, which never becomes
    /// the genuine command's.
    pub async fn result(&self, result: &RunResult) -> Result<(), PublishError> {
        let digest = self
            .received
            .lock()
            .expect("digest lock is never poisoned")
            .get(&result.command_id)
            .cloned();
        match digest {
            Some(digest) if result.command_digest.is_none() => {
                let result = RunResult {
                    command_digest: Some(digest),
                    ..result.clone()
                };
                self.publish(result.run_id, &result).await
            }
            _ => self.publish(result.run_id, result).await,
        }
    }

    /// The headers of every event: the run, the trace context, and this agent's signature.
    fn headers(&self, run_id: RunId, payload: &[u8]) -> async_nats::HeaderMap {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(HEADER_RUN_ID, run_id.to_string().as_str());
        headers.insert(SIGNATURE_HEADER, self.signer.sign(payload).as_str());
        flotilla_telemetry::inject(&mut headers);
        headers
    }

    async fn publish<T: WireMessage>(
        &self,
        run_id: RunId,
        message: &T,
    ) -> Result<(), PublishError> {
        let subject = self.subjects.event(&run_id, &self.service, &self.instance);
        let payload = self.redactor.encode(message);
        let headers = self.headers(run_id, &payload);
        let publish = async {
            self.js
                .publish_with_headers(subject.clone(), headers, payload.into())
                .await?
                .await
        };
        publish
            .await
            .map(|_| ())
            .map_err(|source| PublishError::Publish { subject, source })
    }
}
