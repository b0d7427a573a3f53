//! Every test runs for both signals, through [`Fixture`].

use super::*;

/// Builds requests of one signal for the tests.
trait Fixture: Export + std::fmt::Debug + PartialEq {
    /// A record of trace `[trace; 16]` (all zero: outside any trace), told apart by `id`,
    /// carrying `size` bytes of text.
    fn record(trace: u8, id: u8, size: usize) -> Self::Record;
    /// The `id` given to [`record`](Self::record).
    fn id(record: &Self::Record) -> u8;
    /// A resource told apart by its schema URL, holding scopes told apart by theirs.
    fn resource(schema: &str, scopes: Vec<(&str, Vec<Self::Record>)>) -> Self::Resource;
    fn request(resources: Vec<Self::Resource>) -> Self;
}

impl Fixture for ExportTraceServiceRequest {
    fn record(trace: u8, id: u8, size: usize) -> Span {
        Span {
            trace_id: vec![trace; 16],
            span_id: vec![id; 8],
            name: "x".repeat(size),
            ..Default::default()
        }
    }
    fn id(span: &Span) -> u8 {
        span.span_id[0]
    }
    fn resource(schema: &str, scopes: Vec<(&str, Vec<Span>)>) -> ResourceSpans {
        ResourceSpans {
            schema_url: schema.to_owned(),
            scope_spans: scopes
                .into_iter()
                .map(|(schema, spans)| ScopeSpans {
                    schema_url: schema.to_owned(),
                    spans,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }
    fn request(resource_spans: Vec<ResourceSpans>) -> Self {
        Self { resource_spans }
    }
}

impl Fixture for ExportLogsServiceRequest {
    fn record(trace: u8, id: u8, size: usize) -> LogRecord {
        LogRecord {
            trace_id: vec![trace; 16],
            span_id: vec![id; 8],
            severity_text: "x".repeat(size),
            ..Default::default()
        }
    }
    fn id(record: &LogRecord) -> u8 {
        record.span_id[0]
    }
    fn resource(schema: &str, scopes: Vec<(&str, Vec<LogRecord>)>) -> ResourceLogs {
        ResourceLogs {
            schema_url: schema.to_owned(),
            scope_logs: scopes
                .into_iter()
                .map(|(schema, log_records)| ScopeLogs {
                    schema_url: schema.to_owned(),
                    log_records,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }
    fn request(resource_logs: Vec<ResourceLogs>) -> Self {
        Self { resource_logs }
    }
}

const TRACE_1: &str = "01010101010101010101010101010101";
const TRACE_2: &str = "02020202020202020202020202020202";

fn ids<E: Fixture>(request: &E) -> Vec<u8> {
    request
        .resources()
        .iter()
        .flat_map(|r| r.children())
        .flat_map(|s| s.children())
        .map(E::id)
        .collect()
}

/// Encodes `request` with a limit of `max` bytes and decodes the parts again.
fn parts<E: Fixture>(request: E, max: usize) -> Vec<(usize, E)> {
    let mut out = Vec::new();
    encode(request, max, &mut out);
    out.into_iter()
        .map(|p| (p.len(), E::decode(p).expect("a part decodes")))
        .collect()
}

fn records_of_two_traces_become_one_request_per_trace<E: Fixture>() {
    let records = vec![
        E::record(1, 1, 1),
        E::record(2, 2, 1),
        E::record(1, 3, 1),
        E::record(0, 4, 1),
    ];
    let by = by_trace::<E>(vec![E::resource("r", vec![("s", records)])]);
    assert_eq!(
        by.keys().collect::<Vec<_>>(),
        [NO_TRACE, TRACE_1, TRACE_2],
        "records outside any trace go under the all-zero ID"
    );
    assert_eq!(
        by[TRACE_1],
        E::request(vec![E::resource(
            "r",
            vec![("s", vec![E::record(1, 1, 1), E::record(1, 3, 1)])]
        )])
    );
    assert_eq!(ids(&by[TRACE_2]), [2]);
    assert_eq!(ids(&by[NO_TRACE]), [4]);
}

fn records_keep_their_resource_and_scope_when_split_per_trace<E: Fixture>() {
    let all = vec![
        E::resource(
            "r1",
            vec![
                ("s1", vec![E::record(1, 1, 1)]),
                ("s2", vec![E::record(1, 2, 1), E::record(2, 3, 1)]),
            ],
        ),
        E::resource("r2", vec![("s1", vec![E::record(1, 4, 1)])]),
        // The same resource and scope again in the batch: merged with the first.
        E::resource("r1", vec![("s1", vec![E::record(1, 5, 1)])]),
    ];
    let by = by_trace::<E>(all);
    assert_eq!(
        by[TRACE_1],
        E::request(vec![
            E::resource(
                "r1",
                vec![
                    ("s1", vec![E::record(1, 1, 1), E::record(1, 5, 1)]),
                    ("s2", vec![E::record(1, 2, 1)]),
                ],
            ),
            E::resource("r2", vec![("s1", vec![E::record(1, 4, 1)])]),
        ])
    );
    assert_eq!(
        by[TRACE_2],
        E::request(vec![E::resource(
            "r1",
            vec![("s2", vec![E::record(2, 3, 1)])]
        )])
    );
}

fn a_request_over_the_limit_is_halved_until_each_part_fits<E: Fixture>() {
    let records = (0..8).map(|i| E::record(1, i, 1000)).collect();
    let parts = parts(
        E::request(vec![E::resource("r", vec![("s", records)])]),
        2500,
    );
    assert_eq!(parts.len(), 4, "two records of ~1 kB per 2.5 kB part");
    for (len, _) in &parts {
        assert!(*len <= 2500, "a part of {len} bytes");
    }
    let all: Vec<u8> = parts.iter().flat_map(|(_, p)| ids(p)).collect();
    assert_eq!(
        all,
        (0..8).collect::<Vec<_>>(),
        "every record once, in order"
    );
}

fn halving_keeps_each_record_under_its_resource_and_scope<E: Fixture>() {
    let request = E::request(vec![
        E::resource(
            "r1",
            vec![
                ("s1", vec![E::record(1, 1, 1000)]),
                ("s2", vec![E::record(1, 2, 1000)]),
            ],
        ),
        E::resource(
            "r2",
            vec![("s1", vec![E::record(1, 3, 1000), E::record(1, 4, 1000)])],
        ),
    ]);
    let parts: Vec<E> = parts(request, 2500).into_iter().map(|(_, p)| p).collect();
    assert_eq!(
        parts,
        [
            E::request(vec![E::resource(
                "r1",
                vec![
                    ("s1", vec![E::record(1, 1, 1000)]),
                    ("s2", vec![E::record(1, 2, 1000)]),
                ],
            )]),
            E::request(vec![E::resource(
                "r2",
                vec![("s1", vec![E::record(1, 3, 1000), E::record(1, 4, 1000)])],
            )]),
        ]
    );
}

fn a_request_within_the_limit_or_of_one_record_is_sent_whole<E: Fixture>() {
    let small = E::request(vec![E::resource(
        "r",
        vec![("s", (0..3).map(|i| E::record(1, i, 10)).collect())],
    )]);
    let parts_of_small = parts(small, 2500);
    assert_eq!(parts_of_small.len(), 1);
    assert_eq!(ids(&parts_of_small[0].1), [0, 1, 2]);

    let huge = E::request(vec![E::resource(
        "r",
        vec![("s", vec![E::record(1, 9, 5000)])],
    )]);
    let parts_of_huge = parts(huge, 2500);
    assert_eq!(parts_of_huge.len(), 1, "one record cannot be split");
    assert!(parts_of_huge[0].0 > 2500);
}

/// Runs each check above as a test for traces and one for logs.
macro_rules! for_both_signals {
    ($($check:ident),* $(,)?) => {
        mod traces {
            use super::*;
            $(#[test] fn $check() { super::$check::<ExportTraceServiceRequest>() })*
        }
        mod logs {
            use super::*;
            $(#[test] fn $check() { super::$check::<ExportLogsServiceRequest>() })*
        }
    };
}

for_both_signals!(
    records_of_two_traces_become_one_request_per_trace,
    records_keep_their_resource_and_scope_when_split_per_trace,
    a_request_over_the_limit_is_halved_until_each_part_fits,
    halving_keeps_each_record_under_its_resource_and_scope,
    a_request_within_the_limit_or_of_one_record_is_sent_whole,
);

#[test]
fn a_trace_id_is_lower_case_hex_and_all_zero_is_no_trace() {
    assert_eq!(hex(&[0xab; 16]), "abababababababababababababababab");
    assert_eq!(hex(&[0; 16]), NO_TRACE);
    assert_eq!(hex(&[]), NO_TRACE);
}
