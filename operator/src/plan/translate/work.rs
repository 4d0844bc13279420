//! Work counters: where a managed pod reports the work it does, from its `kilowatt.dev/work-*`
//! annotations and its IP, as its node's agent is told to scrape it. A malformed annotation leaves
//! the pod planned as usual, without a counter, and becomes a warning. Pure.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Pod;
use kilowatt_crds::plan::WorkCounter;
use kube::ResourceExt;

use super::{
    PodWarning, WORK_METRIC_ANNOTATION, WORK_PATH_ANNOTATION, WORK_PORT_ANNOTATION,
    WORK_WAITING_METRIC_ANNOTATION,
};
use crate::measure::{QueriedPod, WorkQueries};
use crate::plan::reasons;

/// The port scraped when the pod does not name one (vLLM's and SGLang's default serving port).
pub const DEFAULT_WORK_PORT: u16 = 8000;
/// The path scraped when the pod does not name one.
pub const DEFAULT_WORK_PATH: &str = "/metrics";

/// The pod's work counter over its GPUs `gpus` (indices on its node); `Ok(None)` when it names none
/// or has no IP yet.
pub(super) fn work_counter(pod: &Pod, gpus: Vec<u32>) -> Result<Option<WorkCounter>, PodWarning> {
    let annotations = pod.annotations();
    let Some(selector) = annotations.get(WORK_METRIC_ANNOTATION) else {
        return Ok(None);
    };
    let malformed = |annotation: &str, value: &str, expected: &str| PodWarning {
        reason: reasons::MALFORMED_ANNOTATION,
        message: format!(
            "annotation {annotation}={value:?} is not {expected}; the pod's throughput is not \
             measured until it is fixed (its GPUs are planned as usual)"
        ),
    };
    let (metric, labels) = parse_selector(selector).ok_or_else(|| {
        malformed(
            WORK_METRIC_ANNOTATION,
            selector,
            "a metric name, optionally with label matchers: name{label=\"value\",…}",
        )
    })?;
    let port = match annotations.get(WORK_PORT_ANNOTATION) {
        None => DEFAULT_WORK_PORT,
        Some(text) => text
            .trim()
            .parse::<u16>()
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| malformed(WORK_PORT_ANNOTATION, text, "a port number"))?,
    };
    let path = match annotations.get(WORK_PATH_ANNOTATION) {
        None => DEFAULT_WORK_PATH.to_owned(),
        Some(text) if text.starts_with('/') && !text.contains(char::is_whitespace) => text.clone(),
        Some(text) => {
            return Err(malformed(
                WORK_PATH_ANNOTATION,
                text,
                "a URL path starting with /",
            ));
        }
    };
    let waiting_metric = match annotations.get(WORK_WAITING_METRIC_ANNOTATION) {
        None => None,
        Some(text) if is_metric_name(text.trim()) => Some(text.trim().to_owned()),
        Some(text) => {
            return Err(malformed(
                WORK_WAITING_METRIC_ANNOTATION,
                text,
                "a metric name",
            ));
        }
    };
    let Some(ip) = pod.status.as_ref().and_then(|s| s.pod_ip.as_deref()) else {
        return Ok(None);
    };
    let host = if ip.contains(':') {
        format!("[{ip}]")
    } else {
        ip.to_owned()
    };
    Ok(Some(WorkCounter {
        pod: format!("{}/{}", pod.namespace().unwrap_or_default(), pod.name_any()),
        uid: pod.uid(),
        url: format!("http://{host}:{port}{path}"),
        metric,
        labels,
        waiting_metric,
        gpus,
    }))
}

/// The pod's work queries over its GPUs `gpus`, for the operator to evaluate on Prometheus;
/// `Ok(None)` when it names none. A pod that names a work counter too is scraped by its agent
/// instead ([`work_counter`] comes first).
pub(super) fn work_queries(pod: &Pod, gpus: Vec<u32>) -> Result<Option<QueriedPod>, PodWarning> {
    let queries = WorkQueries::of_pod(pod.annotations()).map_err(|error| PodWarning {
        reason: reasons::MALFORMED_ANNOTATION,
        message: format!(
            "{error}; the pod's throughput is not measured until it is fixed (its GPUs are planned \
             as usual)"
        ),
    })?;
    Ok(queries.map(|queries| QueriedPod {
        pod: format!("{}/{}", pod.namespace().unwrap_or_default(), pod.name_any()),
        uid: pod.uid(),
        gpus,
        queries,
    }))
}

/// `[a-zA-Z_:][a-zA-Z0-9_:]*`, as the exposition format names metrics.
fn is_metric_name(text: &str) -> bool {
    let mut chars = text.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// `name` or `name{label="value",…}` (equality matchers only).
fn parse_selector(text: &str) -> Option<(String, BTreeMap<String, String>)> {
    let text = text.trim();
    let (name, rest) = match text.find('{') {
        None => (text, ""),
        Some(at) => (&text[..at], &text[at..]),
    };
    if !is_metric_name(name) {
        return None;
    }
    let mut labels = BTreeMap::new();
    if !rest.is_empty() {
        let inner = rest.strip_prefix('{')?.strip_suffix('}')?;
        for matcher in inner.split(',').map(str::trim).filter(|m| !m.is_empty()) {
            let (label, value) = matcher.split_once('=')?;
            let label = label.trim();
            let value = value.trim().strip_prefix('"')?.strip_suffix('"')?;
            let label_ok = label
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !label_ok || value.contains('"') {
                return None;
            }
            labels.insert(label.to_owned(), value.to_owned());
        }
    }
    Some((name.to_owned(), labels))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(annotations: &[(&str, &str)], ip: Option<&str>) -> Pod {
        let annotations: BTreeMap<String, String> = annotations
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "chat-0", "namespace": "ml", "uid": "u-1", "annotations": annotations},
            "status": {"podIP": ip},
        }))
        .expect("a pod")
    }

    #[test]
    fn a_pod_names_its_counter_with_labels_port_path_and_waiting_gauge() {
        let counter = work_counter(
            &pod(
                &[
                    (
                        WORK_METRIC_ANNOTATION,
                        r#"vllm:generation_tokens_total{model_name="llama-3", engine = "0"}"#,
                    ),
                    (WORK_PORT_ANNOTATION, "9400"),
                    (WORK_PATH_ANNOTATION, "/stats/metrics"),
                    (WORK_WAITING_METRIC_ANNOTATION, "vllm:num_requests_waiting"),
                ],
                Some("10.1.2.3"),
            ),
            vec![2, 3],
        )
        .expect("valid")
        .expect("a counter");
        assert_eq!(counter.url, "http://10.1.2.3:9400/stats/metrics");
        assert_eq!(counter.metric, "vllm:generation_tokens_total");
        assert_eq!(
            counter.labels,
            BTreeMap::from([
                ("engine".to_owned(), "0".to_owned()),
                ("model_name".to_owned(), "llama-3".to_owned())
            ])
        );
        assert_eq!(
            counter.waiting_metric.as_deref(),
            Some("vllm:num_requests_waiting")
        );
        assert_eq!(
            (counter.pod.as_str(), counter.uid.as_deref()),
            ("ml/chat-0", Some("u-1"))
        );
        assert_eq!(counter.gpus, [2, 3]);

        let defaults = work_counter(
            &pod(
                &[(WORK_METRIC_ANNOTATION, "nv_inference_count")],
                Some("fd00::7"),
            ),
            vec![0],
        )
        .expect("valid")
        .expect("a counter");
        assert_eq!(defaults.url, "http://[fd00::7]:8000/metrics");
    }

    #[test]
    fn no_annotation_or_no_ip_is_no_counter_and_a_bad_one_is_a_warning() {
        assert_eq!(work_counter(&pod(&[], Some("10.0.0.1")), vec![0]), Ok(None));
        assert_eq!(
            work_counter(&pod(&[(WORK_METRIC_ANNOTATION, "x_total")], None), vec![0]),
            Ok(None)
        );
        for (annotation, value) in [
            (WORK_METRIC_ANNOTATION, "tokens total"),
            (WORK_METRIC_ANNOTATION, r#"x_total{model=llama}"#),
            (WORK_METRIC_ANNOTATION, r#"x_total{model="a""#),
            (WORK_PORT_ANNOTATION, "http"),
            (WORK_PATH_ANNOTATION, "metrics"),
            (WORK_WAITING_METRIC_ANNOTATION, "queue depth"),
        ] {
            let mut annotations = vec![(WORK_METRIC_ANNOTATION, "x_total")];
            annotations.retain(|(a, _)| *a != annotation);
            annotations.push((annotation, value));
            let warning =
                work_counter(&pod(&annotations, Some("10.0.0.1")), vec![0]).expect_err(value);
            assert_eq!(warning.reason, reasons::MALFORMED_ANNOTATION);
            assert!(warning.message.contains(annotation), "{}", warning.message);
        }
    }
}
