//! One instant query over Prometheus' HTTP API (`GET /api/v1/query`), read into one number.

use std::time::Duration;

use serde::Deserialize;

/// How long one query may take: a Prometheus that does not answer in this is as good as gone.
const QUERY_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a query gave no number. Names the query's outcome, never a credential.
#[derive(Debug, thiserror::Error)]
pub(crate) enum QueryError {
    #[error("Prometheus at {url} is unreachable: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("Prometheus refused the query ({status}): {message}")]
    Refused { status: u16, message: String },
    #[error("Prometheus' answer is not its query API's JSON: {0}")]
    Unreadable(String),
    #[error("no data: the query matched no series")]
    NoData,
    #[error("the query returned {0:?}, not a number")]
    NotANumber(String),
}

/// What one query returned: its value, and how many samples it was taken from.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Reading {
    /// The largest sample's value.
    pub value: f64,
    pub samples: usize,
}

/// `/api/v1/query`'s answer.
#[derive(Debug, Deserialize)]
struct Answer {
    status: String,
    #[serde(default)]
    data: Option<Data>,
    #[serde(default)]
    error: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(tag = "resultType", content = "result", rename_all = "snake_case")]
enum Data {
    Vector(Vec<Sample>),
    Scalar(Point),
    /// A range or a string: not a gate's value.
    Matrix(serde::de::IgnoredAny),
    String(serde::de::IgnoredAny),
}

#[derive(Debug, Deserialize)]
struct Sample {
    value: Point,
}

/// `[unix time, "value"]`: Prometheus writes the value as a string (it may be `NaN`, `+Inf`).
#[derive(Debug, Deserialize)]
struct Point(#[allow(dead_code)] f64, String);

/// A client for the gates' queries.
pub(crate) fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(QUERY_TIMEOUT)
        .build()
        .unwrap_or_default()
}

/// Runs `promql` at Prometheus `base` (`http://host:9090`) now.
pub(crate) async fn query(
    client: &reqwest::Client,
    base: &str,
    promql: &str,
) -> Result<Reading, QueryError> {
    let endpoint = format!("{base}/api/v1/query");
    let url = reqwest::Url::parse_with_params(&endpoint, [("query", promql)]).map_err(|e| {
        QueryError::Unreachable {
            url: base.to_owned(),
            reason: e.to_string(),
        }
    })?;
    let unreachable = |e: reqwest::Error| QueryError::Unreachable {
        url: base.to_owned(),
        reason: flotilla_telemetry::error_chain(&e),
    };
    let response = client.get(url).send().await.map_err(unreachable)?;
    let status = response.status().as_u16();
    let body = response.text().await.map_err(unreachable)?;
    read(status, &body)
}

/// Reads an answer: a vector (the largest of its samples) or a scalar.
fn read(status: u16, body: &str) -> Result<Reading, QueryError> {
    let answer: Answer =
        serde_json::from_str(body).map_err(|e| QueryError::Unreadable(e.to_string()))?;
    if answer.status != "success" {
        return Err(QueryError::Refused {
            status,
            message: answer.error.unwrap_or_default(),
        });
    }
    let points: Vec<Point> = match answer.data {
        Some(Data::Vector(samples)) => samples.into_iter().map(|s| s.value).collect(),
        Some(Data::Scalar(point)) => vec![point],
        Some(Data::Matrix(_) | Data::String(_)) | None => {
            return Err(QueryError::Unreadable(
                "not an instant vector or a scalar".into(),
            ));
        }
    };
    let mut values = Vec::with_capacity(points.len());
    for Point(_, text) in points {
        match text.parse::<f64>() {
            Ok(v) if v.is_finite() => values.push(v),
            _ => return Err(QueryError::NotANumber(text)),
        }
    }
    let samples = values.len();
    let value = values
        .into_iter()
        .reduce(f64::max)
        .ok_or(QueryError::NoData)?;
    Ok(Reading { value, samples })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_vector_gives_its_largest_sample_and_a_scalar_its_value() {
        let vector = r#"{"status":"success","data":{"resultType":"vector","result":[
            {"metric":{"a":"1"},"value":[1.5,"0.25"]},{"metric":{"a":"2"},"value":[1.5,"3"]}]}}"#;
        assert_eq!(
            read(200, vector).unwrap(),
            Reading {
                value: 3.0,
                samples: 2
            }
        );
        let scalar = r#"{"status":"success","data":{"resultType":"scalar","result":[1.5,"7"]}}"#;
        assert_eq!(
            read(200, scalar).unwrap(),
            Reading {
                value: 7.0,
                samples: 1
            }
        );
    }

    #[test]
    fn no_series_an_error_or_nan_give_no_value() {
        let empty = r#"{"status":"success","data":{"resultType":"vector","result":[]}}"#;
        assert!(matches!(read(200, empty), Err(QueryError::NoData)));
        let refused = r#"{"status":"error","errorType":"bad_data","error":"parse error"}"#;
        assert!(matches!(
            read(400, refused),
            Err(QueryError::Refused { status: 400, .. })
        ));
        let nan = r#"{"status":"success","data":{"resultType":"scalar","result":[1.5,"NaN"]}}"#;
        assert!(matches!(read(200, nan), Err(QueryError::NotANumber(_))));
        assert!(matches!(
            read(502, "<html>"),
            Err(QueryError::Unreadable(_))
        ));
    }
}
