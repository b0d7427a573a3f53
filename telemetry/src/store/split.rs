//! Splitting an export into messages: one request per trace, then halved until each part fits
//! the message limit. Traces and logs share one implementation over the three levels every OTLP
//! export has (resource → scope → record), described by [`Level`] and [`Export`].

use std::collections::BTreeMap;

use bytes::Bytes;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};

use super::NO_TRACE;

/// One level of an OTLP export: a group of children under fields of its own (a resource and
/// its schema URL, or a scope and its schema URL).
pub(crate) trait Level {
    /// What the group holds.
    type Child;
    /// The children.
    fn children(&self) -> &[Self::Child];
    /// The children, to add to or take.
    fn children_mut(&mut self) -> &mut Vec<Self::Child>;
    /// The group's own fields, with no children.
    fn header(&self) -> Self;
    /// Whether `other` has the same own fields (its children may differ).
    fn same_header(&self, other: &Self) -> bool;
}

/// One signal's export request: resources of scopes of records.
pub(crate) trait Export: prost::Message + Default {
    /// `ResourceSpans` or `ResourceLogs`.
    type Resource: Level<Child = Self::Scope>;
    /// `ScopeSpans` or `ScopeLogs`.
    type Scope: Level<Child = Self::Record>;
    /// A span or a log record.
    type Record;
    /// The request's resources.
    fn resources(&self) -> &[Self::Resource];
    /// The request's resources, to add to or take.
    fn resources_mut(&mut self) -> &mut Vec<Self::Resource>;
    /// The trace a record belongs to (all zero outside any trace).
    fn trace_id(record: &Self::Record) -> &[u8];
}

/// A trace ID as the subject token: lower-case hex, [`NO_TRACE`] when all zero.
pub(crate) fn hex(id: &[u8]) -> String {
    if id.iter().all(|b| *b == 0) {
        return NO_TRACE.to_owned();
    }
    id.iter().map(|b| format!("{b:02x}")).collect()
}

/// Splits resources by trace, one request per trace (keyed by [`hex`] trace ID), keeping each
/// record under its resource and scope.
pub(crate) fn by_trace<E: Export>(all: Vec<E::Resource>) -> BTreeMap<String, E> {
    let mut out: BTreeMap<String, E> = BTreeMap::new();
    for mut resource in all {
        for mut scope in std::mem::take(resource.children_mut()) {
            for record in std::mem::take(scope.children_mut()) {
                let request = out.entry(hex(E::trace_id(&record))).or_default();
                let resource_out = entry_like(request.resources_mut(), &resource);
                let scope_out = entry_like(resource_out.children_mut(), &scope);
                scope_out.children_mut().push(record);
            }
        }
    }
    out
}

/// Encodes `request`, halving it until each part fits in `max` bytes (a single record that does
/// not fit is sent alone and the server may refuse it).
pub(crate) fn encode<E: Export>(request: E, max: usize, out: &mut Vec<Bytes>) {
    let count = record_count(&request);
    if request.encoded_len() <= max || count <= 1 {
        out.push(request.encode_to_vec().into());
        return;
    }
    let (left, right) = halve(request, count / 2);
    encode(left, max, out);
    encode(right, max, out);
}

fn record_count<E: Export>(request: &E) -> usize {
    request
        .resources()
        .iter()
        .flat_map(|r| r.children())
        .map(|s| s.children().len())
        .sum()
}

/// The first `keep` records in one request, the rest in another; empty groups are left out.
fn halve<E: Export>(mut request: E, keep: usize) -> (E, E) {
    let (mut left, mut right) = (E::default(), E::default());
    let mut seen = 0;
    for mut resource in std::mem::take(request.resources_mut()) {
        let (mut l, mut r) = (resource.header(), resource.header());
        for mut scope in std::mem::take(resource.children_mut()) {
            let (mut ls, mut rs) = (scope.header(), scope.header());
            for record in std::mem::take(scope.children_mut()) {
                let side = if seen < keep { &mut ls } else { &mut rs };
                side.children_mut().push(record);
                seen += 1;
            }
            push_unless_empty(l.children_mut(), ls);
            push_unless_empty(r.children_mut(), rs);
        }
        push_unless_empty(left.resources_mut(), l);
        push_unless_empty(right.resources_mut(), r);
    }
    (left, right)
}

/// The group in `list` with `like`'s own fields, added empty when there is none.
fn entry_like<'a, L: Level>(list: &'a mut Vec<L>, like: &L) -> &'a mut L {
    let index = match list.iter().position(|l| l.same_header(like)) {
        Some(i) => i,
        None => {
            list.push(like.header());
            list.len() - 1
        }
    };
    &mut list[index]
}

fn push_unless_empty<L: Level>(list: &mut Vec<L>, group: L) {
    if !group.children().is_empty() {
        list.push(group);
    }
}

/// Implements [`Level`] for a generated OTLP group type: its own fields are `$own` and its
/// children `$children`.
macro_rules! level {
    ($ty:ty, $child:ty, $children:ident, $own:ident) => {
        impl Level for $ty {
            type Child = $child;
            fn children(&self) -> &[$child] {
                &self.$children
            }
            fn children_mut(&mut self) -> &mut Vec<$child> {
                &mut self.$children
            }
            fn header(&self) -> Self {
                Self {
                    $own: self.$own.clone(),
                    $children: Vec::new(),
                    schema_url: self.schema_url.clone(),
                }
            }
            fn same_header(&self, other: &Self) -> bool {
                self.$own == other.$own && self.schema_url == other.schema_url
            }
        }
    };
}

level!(ResourceSpans, ScopeSpans, scope_spans, resource);
level!(ScopeSpans, Span, spans, scope);
level!(ResourceLogs, ScopeLogs, scope_logs, resource);
level!(ScopeLogs, LogRecord, log_records, scope);

impl Export for ExportTraceServiceRequest {
    type Resource = ResourceSpans;
    type Scope = ScopeSpans;
    type Record = Span;
    fn resources(&self) -> &[ResourceSpans] {
        &self.resource_spans
    }
    fn resources_mut(&mut self) -> &mut Vec<ResourceSpans> {
        &mut self.resource_spans
    }
    fn trace_id(span: &Span) -> &[u8] {
        &span.trace_id
    }
}

impl Export for ExportLogsServiceRequest {
    type Resource = ResourceLogs;
    type Scope = ScopeLogs;
    type Record = LogRecord;
    fn resources(&self) -> &[ResourceLogs] {
        &self.resource_logs
    }
    fn resources_mut(&mut self) -> &mut Vec<ResourceLogs> {
        &mut self.resource_logs
    }
    fn trace_id(record: &LogRecord) -> &[u8] {
        &record.trace_id
    }
}

#[cfg(test)]
mod tests;
