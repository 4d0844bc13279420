//! Where a managed pod's work counter comes from when the operator reads it, not the pod's node
//! agent: a PromQL expression named by the pod's annotations, evaluated against a Prometheus server
//! (`--prometheus-url`), for stacks that already ship their metrics there. This module reads the
//! annotations (pure); [`promql`] evaluates them (network IO); [`meter`] cuts the samples into
//! windows (pure). The samples are the agent core's
//! [`WorkSample`](kilowatt_agent_core::work::WorkSample), so the same windowing
//! ([`WorkMeter`](kilowatt_agent_core::work::WorkMeter)) turns them into curve points.

pub mod meter;
pub mod promql;

use std::collections::BTreeMap;

pub use kilowatt_agent_core::work::WindowTiming;
pub use meter::{QueriedPod, QueryMeter};
pub use promql::{PromqlError, PromqlSource};

/// A PromQL expression whose instant value is the pod's work counter, e.g.
/// `sum(vllm:generation_tokens_total{pod="chat-0"})`. NB: a counter, not a `rate()`: windows are
/// cut by the power limit the pod's GPUs held, which Prometheus does not know.
pub const WORK_QUERY_ANNOTATION: &str = "kilowatt.dev/work-query";
/// Optional: a PromQL expression whose instant value above zero means requests were waiting, e.g.
/// `sum(vllm:num_requests_waiting{pod="chat-0"})`; a window counts as a point of the curve only while
/// it stays above zero. A query with no series reads as "no gauge", as a missing metric does on a
/// pod's own endpoint.
pub const WORK_WAITING_QUERY_ANNOTATION: &str = "kilowatt.dev/work-waiting-query";

/// The queries a pod's annotations name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkQueries {
    pub counter: String,
    pub waiting: Option<String>,
}

/// Why a pod's query annotations cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueryAnnotationError {
    #[error("annotation {0} is empty")]
    Empty(&'static str),
    #[error("annotation {WORK_WAITING_QUERY_ANNOTATION} needs {WORK_QUERY_ANNOTATION} beside it")]
    WaitingWithoutCounter,
}

impl WorkQueries {
    /// The queries of a pod with these annotations; `None` when it names no work query. The
    /// expressions are not parsed here: Prometheus is their parser, and its message is reported when
    /// one is evaluated ([`PromqlError::Query`]).
    pub fn of_pod(
        annotations: &BTreeMap<String, String>,
    ) -> Result<Option<WorkQueries>, QueryAnnotationError> {
        let read = |name: &'static str| match annotations.get(name).map(|v| v.trim()) {
            None => Ok(None),
            Some("") => Err(QueryAnnotationError::Empty(name)),
            Some(query) => Ok(Some(query.to_owned())),
        };
        match (
            read(WORK_QUERY_ANNOTATION)?,
            read(WORK_WAITING_QUERY_ANNOTATION)?,
        ) {
            (Some(counter), waiting) => Ok(Some(WorkQueries { counter, waiting })),
            (None, None) => Ok(None),
            (None, Some(_)) => Err(QueryAnnotationError::WaitingWithoutCounter),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn annotations(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn a_pod_names_a_counter_query_and_optionally_a_waiting_query() {
        let counter = "sum(vllm:generation_tokens_total{pod=\"chat-0\"})";
        assert_eq!(
            WorkQueries::of_pod(&annotations(&[(WORK_QUERY_ANNOTATION, counter)])),
            Ok(Some(WorkQueries {
                counter: counter.to_owned(),
                waiting: None
            }))
        );
        let both = WorkQueries::of_pod(&annotations(&[
            (WORK_QUERY_ANNOTATION, counter),
            (
                WORK_WAITING_QUERY_ANNOTATION,
                " sum(vllm:num_requests_waiting) ",
            ),
        ]));
        assert_eq!(
            both.map(|q| q.and_then(|q| q.waiting)),
            Ok(Some("sum(vllm:num_requests_waiting)".to_owned()))
        );
        assert_eq!(
            WorkQueries::of_pod(&annotations(&[("kilowatt.dev/workload", "inference")])),
            Ok(None)
        );
    }

    #[test]
    fn an_empty_query_or_a_waiting_query_alone_is_refused() {
        assert_eq!(
            WorkQueries::of_pod(&annotations(&[(WORK_QUERY_ANNOTATION, "  ")])),
            Err(QueryAnnotationError::Empty(WORK_QUERY_ANNOTATION))
        );
        assert_eq!(
            WorkQueries::of_pod(&annotations(&[(WORK_WAITING_QUERY_ANNOTATION, "up")])),
            Err(QueryAnnotationError::WaitingWithoutCounter)
        );
    }
}
