//! Presence: answers to discovery's requests and the NATS service API, from a snapshot of
//! the agent's status.

use std::sync::{Arc, Mutex};

use flotilla_bus::signing;
use flotilla_schemas::subjects::Subjects;
use flotilla_schemas::{AgentState, CommandSchema, Presence, encode};
use futures::StreamExt;
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

use super::{SessionError, Status};
use crate::lifecycle::Lifecycle;

/// Starts answering presence and the NATS service API.
pub(super) fn answer(
    client: &async_nats::Client,
    subjects: &Subjects,
    lifecycle: &Lifecycle,
    signer: &signing::SigningKey,
    status: &Arc<Mutex<Status>>,
    shutdown: &CancellationToken,
) -> (
    tokio::task::JoinHandle<Result<(), SessionError>>,
    tokio::task::JoinHandle<()>,
) {
    let presence = tokio::spawn(answer_presence(
        client.clone(),
        subjects.clone(),
        presence_template(lifecycle, signer),
        status.clone(),
        shutdown.clone(),
    ));
    let micro = tokio::spawn(serve_micro(
        client.clone(),
        subjects.clone(),
        presence_template(lifecycle, signer),
        status.clone(),
        shutdown.clone(),
    ));
    (presence, micro)
}

fn presence_template(lifecycle: &Lifecycle, signer: &signing::SigningKey) -> Presence {
    let presence = Presence {
        schema: Default::default(),
        service: lifecycle.config.service.name.clone(),
        instance: lifecycle.config.agent.instance.clone(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        accepts: vec![CommandSchema::VALUE.to_owned()],
        host: hostname::get()
            .map(|h| h.to_string_lossy().into_owned())
            .unwrap_or_default(),
        state: AgentState::Idle,
        current_run: None,
        service_pid: None,
        // A job has no endpoint: nothing for the cross-service checks to reach.
        endpoint: Some(lifecycle.config.service.health_url.clone()).filter(|url| !url.is_empty()),
        result_key: Some(signer.public_key_text()),
        labels: lifecycle.config.agent.labels.clone(),
        started_at: OffsetDateTime::now_utc(),
    };
    // The state, run and pid filled in later are the agent's own: never a secret.
    lifecycle.redactor.scrubbed(&presence).unwrap_or(presence)
}

/// The NATS service API (`$SRV.PING|INFO|STATS`), so that `nats micro ls` lists the agents with
/// their service and instance, and `nats micro stats` counts the status requests; the endpoint
/// `<prefix>.agent.<service>.<instance>.status` answers with the agent's presence.
async fn serve_micro(
    client: async_nats::Client,
    subjects: Subjects,
    template: Presence,
    status: Arc<Mutex<Status>>,
    shutdown: CancellationToken,
) {
    use async_nats::service::ServiceExt;
    let metadata = std::collections::HashMap::from([
        ("service".to_owned(), template.service.to_string()),
        ("instance".to_owned(), template.instance.to_string()),
        ("host".to_owned(), template.host.clone()),
        ("accepts".to_owned(), template.accepts.join(",")),
        (
            "result_key".to_owned(),
            template.result_key.clone().unwrap_or_default(),
        ),
    ]);
    let service = client
        .service_builder()
        .description(format!(
            "Flotilla agent of {}/{}",
            template.service, template.instance
        ))
        .metadata(metadata)
        .start(MICRO_SERVICE_NAME, env!("CARGO_PKG_VERSION"))
        .await;
    let service = match service {
        Ok(service) => service,
        Err(e) => {
            tracing::warn!(error = %e, "not registered with the NATS service API");
            return;
        }
    };
    let group = service.group(subjects.agent_service_group(&template.service, &template.instance));
    let mut endpoint = match group.endpoint("status").await {
        Ok(endpoint) => endpoint,
        Err(e) => {
            tracing::warn!(error = %e, "no status endpoint on the NATS service API");
            return;
        }
    };
    loop {
        let request = tokio::select! {
            _ = shutdown.cancelled() => return,
            next = endpoint.next() => match next { Some(r) => r, None => return },
        };
        let presence = current(&template, &status);
        if let Err(e) = request.respond(Ok(encode(&presence).into())).await {
            tracing::warn!(error = %e, "status answer not sent");
        }
    }
}

/// `template` (what never changes) with the agent's status now.
fn current(template: &Presence, status: &Mutex<Status>) -> Presence {
    let snapshot = status
        .lock()
        .expect("status lock is never poisoned")
        .clone();
    Presence {
        state: snapshot.state,
        current_run: snapshot.current_run,
        service_pid: snapshot.service_pid,
        ..template.clone()
    }
}

/// The agents' name in the NATS service API.
pub const MICRO_SERVICE_NAME: &str = "flotilla-agent";

async fn answer_presence(
    client: async_nats::Client,
    subjects: Subjects,
    template: Presence,
    status: Arc<Mutex<Status>>,
    shutdown: CancellationToken,
) -> Result<(), SessionError> {
    let subject = subjects.presence();
    let mut requests = client
        .subscribe(subject.clone())
        .await
        .map_err(|source| SessionError::Subscribe { subject, source })?;
    loop {
        let request = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            next = requests.next() => match next { Some(r) => r, None => return Ok(()) },
        };
        let Some(reply) = request.reply else { continue };
        let presence = current(&template, &status);
        if let Err(e) = client.publish(reply, encode(&presence).into()).await {
            tracing::warn!(error = %e, "presence answer not sent");
        }
    }
}
