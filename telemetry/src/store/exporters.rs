//! The SDK's exporters into the default store. Export only splits, encodes and queues, so it
//! never blocks on the network and needs no runtime.

use std::future::Future;
use std::sync::Arc;

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::transform::common::tonic::ResourceAttributesWithSchema;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::logs::{LogBatch, LogExporter};
use opentelemetry_sdk::trace::{SpanData, SpanExporter};

use super::MAX_MESSAGE_BYTES;
use super::sink::{Outgoing, Signal, Sink};
use super::split::{self, Export};

/// Span exporter into the default store.
#[derive(Debug)]
pub(crate) struct StoreSpanExporter {
    sink: Arc<Sink>,
    resource: ResourceAttributesWithSchema,
}

/// Log exporter into the default store; see [`StoreSpanExporter`].
#[derive(Debug)]
pub(crate) struct StoreLogExporter {
    sink: Arc<Sink>,
    resource: ResourceAttributesWithSchema,
}

/// Queues an export as messages: one per trace, split further to fit [`MAX_MESSAGE_BYTES`].
fn enqueue_by_trace<E: Export>(sink: &Sink, signal: Signal, resources: Vec<E::Resource>) {
    for (trace_id, request) in split::by_trace::<E>(resources) {
        let mut parts = Vec::new();
        split::encode(request, MAX_MESSAGE_BYTES, &mut parts);
        for payload in parts {
            sink.enqueue(Outgoing {
                signal,
                trace_id: trace_id.clone(),
                payload,
            });
        }
    }
}

// === impl StoreSpanExporter ===

impl StoreSpanExporter {
    pub(crate) fn new(sink: &Arc<Sink>) -> Self {
        Self {
            sink: Arc::clone(sink),
            resource: ResourceAttributesWithSchema::default(),
        }
    }
}

impl SpanExporter for StoreSpanExporter {
    fn export(&self, batch: Vec<SpanData>) -> impl Future<Output = OTelSdkResult> + Send {
        let grouped =
            opentelemetry_proto::transform::trace::tonic::group_spans_by_resource_and_scope(
                batch,
                &self.resource,
            );
        enqueue_by_trace::<ExportTraceServiceRequest>(&self.sink, Signal::Traces, grouped);
        std::future::ready(Ok(()))
    }

    fn set_resource(&mut self, resource: &opentelemetry_sdk::Resource) {
        self.resource = resource.into();
    }
}

// === impl StoreLogExporter ===

impl StoreLogExporter {
    pub(crate) fn new(sink: &Arc<Sink>) -> Self {
        Self {
            sink: Arc::clone(sink),
            resource: ResourceAttributesWithSchema::default(),
        }
    }
}

impl LogExporter for StoreLogExporter {
    fn export(&self, batch: LogBatch<'_>) -> impl Future<Output = OTelSdkResult> + Send {
        let grouped = opentelemetry_proto::transform::logs::tonic::group_logs_by_resource_and_scope(
            &batch,
            &self.resource,
        );
        enqueue_by_trace::<ExportLogsServiceRequest>(&self.sink, Signal::Logs, grouped);
        std::future::ready(Ok(()))
    }

    fn set_resource(&mut self, resource: &opentelemetry_sdk::Resource) {
        self.resource = resource.into();
    }
}
