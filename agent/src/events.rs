//! Publishing progress and results to the events stream.

use std::time::Duration;

use async_nats::jetstream;
use flotilla_schemas::subjects::Subjects;
use flotilla_schemas::{
    Command, HEADER_RUN_ID, InstanceId, Phase, PhaseStatus, Progress, RunId, RunResult,
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
    /// Every event is scrubbed of secret values on its way out.
    redactor: Redactor,
}

impl Events {
    pub fn new(
        js: jetstream::Context,
        subjects: Subjects,
        service: ServiceName,
        instance: InstanceId,
    ) -> Self {
        Self {
            js,
            subjects,
            service,
            instance,
            redactor: Redactor::default(),
        }
    }

    /// Scrubs every event of the secret values `redactor` knows.
    pub fn redacting(self, redactor: Redactor) -> Self {
        Self { redactor, ..self }
    }

    /// Publishes a progress event. Progress is advisory: a failure is logged, not fatal.
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
        // Progress is sent without waiting for the stream's acknowledgement: the phase goes on
        // at once (ten acknowledged round trips per migration were most of its overhead). One
        // connection keeps the order, so progress still precedes the result, whose
        // acknowledgement is awaited.
        let subject = self
            .subjects
            .event(&command.run_id, &self.service, &self.instance);
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(HEADER_RUN_ID, command.run_id.to_string().as_str());
        flotilla_telemetry::inject(&mut headers);
        if let Err(e) = self
            .js
            .publish_with_headers(subject, headers, self.redactor.encode(&event).into())
            .await
        {
            tracing::warn!(error = %e, phase = phase.as_str(), "progress event not published");
        }
    }

    /// Publishes a result and waits for the stream to store it.
    pub async fn result(&self, result: &RunResult) -> Result<(), PublishError> {
        self.publish(result.run_id, result).await
    }

    async fn publish<T: WireMessage>(
        &self,
        run_id: RunId,
        message: &T,
    ) -> Result<(), PublishError> {
        let subject = self.subjects.event(&run_id, &self.service, &self.instance);
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(HEADER_RUN_ID, run_id.to_string().as_str());
        flotilla_telemetry::inject(&mut headers);
        let publish = async {
            self.js
                .publish_with_headers(
                    subject.clone(),
                    headers,
                    self.redactor.encode(message).into(),
                )
                .await?
                .await
        };
        publish
            .await
            .map(|_| ())
            .map_err(|source| PublishError::Publish { subject, source })
    }
}
