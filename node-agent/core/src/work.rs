//! Work counters: what a managed pod says of the work it did — a counter on its own metrics endpoint,
//! in the Prometheus text exposition format (parsed by `nom-openmetrics`) — and the measurement
//! windows the agent makes of them: a counter's rate over a stretch in which every GPU of the pod held
//! one power limit and clock, after a warm-up. A window in which the limit or clock changed, the pod
//! was replaced, the counter went back or a scrape failed is discarded, with its reason counted.
//! Pure: text, settings and time in, windows out.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use kilowatt_crds::plan::{WorkCounter, WorkWindow};

use crate::gpu::{GpuError, GpuReading};

/// How long a pod's GPUs hold new settings before its rate counts (caches, batch sizes and clocks
/// settle; Zeus uses a few iterations).
pub const WARM_UP: Duration = Duration::from_secs(10);
/// The length of one measurement window.
pub const WINDOW: Duration = Duration::from_secs(30);
/// Limits of one pod's GPUs closer than this count as one limit.
const SAME_LIMIT_WATTS: f64 = 0.5;

/// What one scrape of a pod's endpoint said.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WorkSample {
    /// The counter, summed over its matching series.
    pub counter: f64,
    /// The waiting gauge, summed, when the pod names one and the endpoint has it.
    pub waiting: Option<f64>,
}

/// Why a scrape gave no sample.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum WorkCounterError {
    #[error("the metrics endpoint's answer is not in the Prometheus text format: {0}")]
    Syntax(String),
    #[error("the metrics endpoint has no series of {metric} with labels {labels:?}")]
    Missing {
        metric: String,
        labels: BTreeMap<String, String>,
    },
    #[error("{metric} is {value}, not a finite number at least 0")]
    BadValue { metric: String, value: f64 },
    #[error("scraping {url}: {message}")]
    Scrape { url: String, message: String },
}

impl WorkCounterError {
    /// Every [`WorkCounterError::category`].
    pub const CATEGORIES: [&'static str; 4] = ["scrape", "syntax", "missing", "bad_value"];

    /// A fixed name for what went wrong: a metric label, and what the agent logs changes of.
    pub fn category(&self) -> &'static str {
        match self {
            WorkCounterError::Scrape { .. } => "scrape",
            WorkCounterError::Syntax(_) => "syntax",
            WorkCounterError::Missing { .. } => "missing",
            WorkCounterError::BadValue { .. } => "bad_value",
        }
    }
}

/// Reads the counter (and waiting gauge) that `counter` names from an endpoint's answer.
pub fn read_sample(text: &str, counter: &WorkCounter) -> Result<WorkSample, WorkCounterError> {
    // NB: the parser wants the last line ended, as every exporter ends it; a missing final newline
    // is not worth refusing a sample over.
    let owned;
    let text = if text.ends_with('\n') || text.is_empty() {
        text
    } else {
        owned = format!("{text}\n");
        &owned
    };
    let (rest, families) = nom_openmetrics::parser::prometheus(text)
        .map_err(|e| WorkCounterError::Syntax(first_line(&e.to_string())))?;
    if !rest.trim().is_empty() {
        return Err(WorkCounterError::Syntax(format!(
            "unparsed input from {:?}",
            first_line(rest)
        )));
    }
    let samples = || families.iter().flat_map(|f| &f.samples);
    let has_labels = |sample: &nom_openmetrics::Sample<'_>| {
        counter.labels.iter().all(|(name, value)| {
            sample
                .labels()
                .iter()
                .any(|l| l.name == name && l.value == *value)
        })
    };
    let matching: Vec<f64> = samples()
        .filter(|s| s.name() == counter.metric && has_labels(s))
        .map(|s| s.number())
        .collect();
    if matching.is_empty() {
        return Err(WorkCounterError::Missing {
            metric: counter.metric.clone(),
            labels: counter.labels.clone(),
        });
    }
    let total: f64 = matching.iter().sum();
    if !total.is_finite() || total < 0.0 {
        return Err(WorkCounterError::BadValue {
            metric: counter.metric.clone(),
            value: total,
        });
    }
    let waiting = counter.waiting_metric.as_ref().and_then(|name| {
        let values: Vec<f64> = samples()
            .filter(|s| s.name() == name && has_labels(s))
            .map(|s| s.number())
            .collect();
        (!values.is_empty()).then(|| values.iter().sum())
    });
    Ok(WorkSample {
        counter: total,
        waiting,
    })
}

fn first_line(text: &str) -> String {
    text.lines()
        .next()
        .unwrap_or("")
        .chars()
        .take(120)
        .collect()
}

/// What a pod's GPUs held at a scrape, as the agent read them back.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HeldSettings {
    /// Lowest and highest enforced limit among the pod's GPUs.
    pub min_limit_watts: f64,
    pub max_limit_watts: f64,
    pub sm_clock_mhz: Option<u32>,
    pub gpus: u32,
    /// Measured draw of the pod's GPUs together.
    pub gpu_watts: f64,
}

/// What the GPUs `gpus` (indices) held at a sample, from the node's readings; `None` when one of
/// them has no reading of its limit. NB: the clock is not read back (locked-clock curves are planned
/// as declared), so windows are told apart by power limit alone.
pub fn held_by(gpus: &[u32], readings: &[Result<GpuReading, GpuError>]) -> Option<HeldSettings> {
    let mut limits = Vec::with_capacity(gpus.len());
    let mut gpu_watts = 0.0;
    for &index in gpus {
        let reading = readings.get(index as usize)?.as_ref().ok()?;
        limits.push(reading.power_limit_watts?);
        gpu_watts += reading.power_watts.unwrap_or(0.0);
    }
    HeldSettings::of_limits(&limits, gpu_watts)
}

impl HeldSettings {
    /// What GPUs holding `limits` (no clock read back) hold together, drawing `gpu_watts`; `None`
    /// for no GPUs.
    pub fn of_limits(limits: &[f64], gpu_watts: f64) -> Option<HeldSettings> {
        let (min, max) = limits
            .iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), w| {
                (lo.min(*w), hi.max(*w))
            });
        Some(HeldSettings {
            min_limit_watts: min,
            max_limit_watts: max,
            sm_clock_mhz: None,
            gpus: u32::try_from(limits.len()).ok().filter(|n| *n > 0)?,
            gpu_watts,
        })
    }
}

/// Why a window was discarded; the names are the report's keys and the metric's label values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Rejected {
    LimitChanged,
    CounterReset,
    PodRestarted,
    ScrapeFailed,
    MixedLimits,
}

impl Rejected {
    /// Every reason, in the order of [`Rejected`].
    pub const ALL: [Rejected; 5] = [
        Rejected::LimitChanged,
        Rejected::CounterReset,
        Rejected::PodRestarted,
        Rejected::ScrapeFailed,
        Rejected::MixedLimits,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Rejected::LimitChanged => "limitChanged",
            Rejected::CounterReset => "counterReset",
            Rejected::PodRestarted => "podRestarted",
            Rejected::ScrapeFailed => "scrapeFailed",
            Rejected::MixedLimits => "mixedLimits",
        }
    }
}

/// One pod's window in progress.
#[derive(Debug, Clone)]
struct PodWindow {
    uid: Option<String>,
    /// The settings held since `held_since`.
    limit_watts: f64,
    sm_clock_mhz: Option<u32>,
    gpus: u32,
    held_since: Duration,
    /// The window's first sample, once warm.
    start: Option<(Duration, f64)>,
    last: Option<(Duration, f64)>,
    /// Measured joules of the pod's GPUs since `start`.
    joules: f64,
    last_gpu_watts: f64,
    /// Whether every scrape since `start` saw requests waiting (`None`: no waiting gauge).
    saturated: Option<bool>,
}

/// How windows are cut: a warm-up after the settings change, then windows of one length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowTiming {
    pub warm_up: Duration,
    pub window: Duration,
}

impl Default for WindowTiming {
    fn default() -> Self {
        WindowTiming {
            warm_up: WARM_UP,
            window: WINDOW,
        }
    }
}

/// The windows of every pod of a node, between two power reports.
#[derive(Debug, Clone, Default)]
pub struct WorkMeter {
    timing: WindowTiming,
    pods: BTreeMap<String, PodWindow>,
    done: Vec<WorkWindow>,
    rejected: BTreeMap<Rejected, u32>,
}

impl WorkMeter {
    /// A meter cutting windows by `timing` (the default: [`WARM_UP`], then [`WINDOW`]).
    pub fn new(timing: WindowTiming) -> Self {
        WorkMeter {
            timing,
            ..WorkMeter::default()
        }
    }

    /// Takes one sample of `pod`'s counter at `now` (`None`: reading it failed), with what its GPUs
    /// held then; `uid` tells a replaced pod of the same name.
    pub fn observe(
        &mut self,
        pod: &str,
        uid: Option<&str>,
        now: Duration,
        held: HeldSettings,
        sample: Option<WorkSample>,
    ) {
        let mixed = held.max_limit_watts - held.min_limit_watts > SAME_LIMIT_WATTS;
        let limit = held.max_limit_watts;
        let fresh = || PodWindow {
            uid: uid.map(str::to_owned),
            limit_watts: limit,
            sm_clock_mhz: held.sm_clock_mhz,
            gpus: held.gpus,
            held_since: now,
            start: None,
            last: None,
            joules: 0.0,
            last_gpu_watts: held.gpu_watts,
            saturated: None,
        };
        let window = self.pods.entry(pod.to_owned()).or_insert_with(fresh);
        let mut discard = None;
        if window.uid.as_deref() != uid {
            discard = Some(Rejected::PodRestarted);
        } else if mixed {
            discard = Some(Rejected::MixedLimits);
        } else if (window.limit_watts - limit).abs() > SAME_LIMIT_WATTS
            || window.sm_clock_mhz != held.sm_clock_mhz
            || window.gpus != held.gpus
        {
            discard = Some(Rejected::LimitChanged);
        }
        if let Some(reason) = discard {
            if window.start.is_some() {
                *self.rejected.entry(reason).or_default() += 1;
            }
            *window = fresh();
            return;
        }
        let sample = match sample {
            Some(sample) => sample,
            None => {
                if window.start.take().is_some() {
                    *self.rejected.entry(Rejected::ScrapeFailed).or_default() += 1;
                }
                window.last = None;
                return;
            }
        };
        if window.last.is_some_and(|(_, c)| sample.counter < c) && window.start.take().is_some() {
            *self.rejected.entry(Rejected::CounterReset).or_default() += 1;
        }
        if let (Some((at, _)), Some(_)) = (window.last, window.start) {
            let step = now.saturating_sub(at).as_secs_f64();
            window.joules += 0.5 * (window.last_gpu_watts + held.gpu_watts) * step;
            let waiting_now = sample.waiting.map(|w| w > 0.0);
            window.saturated = match (window.saturated, waiting_now) {
                (Some(all), Some(now)) => Some(all && now),
                (_, now) => now.filter(|_| window.saturated.is_some()),
            };
        }
        window.last = Some((now, sample.counter));
        window.last_gpu_watts = held.gpu_watts;
        if now.saturating_sub(window.held_since) < self.timing.warm_up {
            return;
        }
        let Some((started, first)) = window.start else {
            window.start = Some((now, sample.counter));
            window.joules = 0.0;
            window.saturated = sample.waiting.map(|w| w > 0.0);
            return;
        };
        let seconds = now.saturating_sub(started).as_secs_f64();
        if now.saturating_sub(started) < self.timing.window || seconds <= 0.0 || window.gpus == 0 {
            return;
        }
        let gpus = f64::from(window.gpus);
        self.done.push(WorkWindow {
            pod: pod.to_owned(),
            power_limit_watts: window.limit_watts,
            sm_clock_mhz: window.sm_clock_mhz,
            gpus: window.gpus,
            gpu_watts: window.joules / seconds / gpus,
            rate_per_gpu: (sample.counter - first) / seconds / gpus,
            seconds,
            saturated: window.saturated,
        });
        window.start = Some((now, sample.counter));
        window.joules = 0.0;
        window.saturated = sample.waiting.map(|w| w > 0.0);
    }

    /// Takes one scrape of each counter, with the node's GPU readings of the same sample; forgets
    /// pods whose counter is gone. A counter whose GPUs could not all be read is skipped (its
    /// window goes on at the next sample).
    pub fn observe_scrapes(
        &mut self,
        scrapes: &[(&WorkCounter, Result<String, WorkCounterError>)],
        readings: &[Result<GpuReading, GpuError>],
        now: Duration,
    ) {
        let pods: BTreeSet<&str> = scrapes.iter().map(|(c, _)| c.pod.as_str()).collect();
        self.retain(&pods);
        for (counter, answer) in scrapes {
            let Some(held) = held_by(&counter.gpus, readings) else {
                continue;
            };
            let sample = answer
                .as_ref()
                .ok()
                .and_then(|text| read_sample(text, counter).ok());
            self.observe(&counter.pod, counter.uid.as_deref(), now, held, sample);
        }
    }

    /// Forgets pods that no longer have a work counter on the node.
    pub fn retain(&mut self, pods: &BTreeSet<&str>) {
        self.pods.retain(|pod, _| pods.contains(pod.as_str()));
    }

    /// The windows completed and discarded since the last call, for the next power report.
    pub fn take(&mut self) -> (Vec<WorkWindow>, BTreeMap<String, u32>) {
        let rejected = std::mem::take(&mut self.rejected)
            .into_iter()
            .map(|(reason, count)| (reason.name().to_owned(), count))
            .collect();
        (std::mem::take(&mut self.done), rejected)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counter(waiting: Option<&str>) -> WorkCounter {
        WorkCounter {
            pod: "ml/chat-0".into(),
            uid: Some("u1".into()),
            url: "http://10.0.0.7:8000/metrics".into(),
            metric: "vllm:generation_tokens_total".into(),
            labels: BTreeMap::from([("model_name".into(), "llama".into())]),
            waiting_metric: waiting.map(str::to_owned),
            gpus: vec![0, 1],
        }
    }

    const VLLM: &str = "# HELP vllm:generation_tokens_total Number of generation tokens processed.
# TYPE vllm:generation_tokens_total counter
vllm:generation_tokens_total{engine=\"0\",model_name=\"llama\"} 1000.0
vllm:generation_tokens_total{engine=\"1\",model_name=\"llama\"} 500.0
vllm:generation_tokens_total{engine=\"0\",model_name=\"other\"} 7.0
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine=\"0\",model_name=\"llama\"} 2
# TYPE vllm:e2e_request_latency_seconds histogram
vllm:e2e_request_latency_seconds_bucket{le=\"+Inf\",model_name=\"llama\"} 3
vllm:e2e_request_latency_seconds_count{model_name=\"llama\"} 3";

    #[test]
    fn a_counter_is_summed_over_the_series_with_its_labels() {
        let sample = read_sample(VLLM, &counter(Some("vllm:num_requests_waiting"))).expect("reads");
        assert_eq!(sample.counter, 1500.0);
        assert_eq!(sample.waiting, Some(2.0));
        let mut unlabelled = counter(None);
        unlabelled.labels.clear();
        assert_eq!(
            read_sample(VLLM, &unlabelled).expect("reads").counter,
            1507.0
        );
    }

    #[test]
    fn a_missing_metric_or_broken_text_is_an_error_not_a_zero() {
        let mut other = counter(None);
        other.metric = "sglang:generation_tokens_total".into();
        assert!(matches!(
            read_sample(VLLM, &other),
            Err(WorkCounterError::Missing { .. })
        ));
        assert!(matches!(
            read_sample(
                "vllm:generation_tokens_total{model_name=\"llama\" 12\n",
                &counter(None)
            ),
            Err(WorkCounterError::Syntax(_))
        ));
        assert!(matches!(
            read_sample(
                "vllm:generation_tokens_total{model_name=\"llama\"} -3\n",
                &counter(None)
            ),
            Err(WorkCounterError::BadValue { .. })
        ));
    }

    fn held(limit: f64) -> HeldSettings {
        HeldSettings {
            min_limit_watts: limit,
            max_limit_watts: limit,
            sm_clock_mhz: None,
            gpus: 2,
            gpu_watts: 2.0 * (limit - 20.0),
        }
    }

    fn sample(counter: f64, waiting: Option<f64>) -> Result<WorkSample, WorkCounterError> {
        Ok(WorkSample { counter, waiting })
    }

    /// One scrape of `spec`'s pod, as `observe_scrapes` takes it.
    fn observe(
        meter: &mut WorkMeter,
        spec: &WorkCounter,
        now: Duration,
        held: HeldSettings,
        sample: Result<WorkSample, WorkCounterError>,
    ) {
        meter.observe(&spec.pod, spec.uid.as_deref(), now, held, sample.ok());
    }

    /// Scrapes once a second from `from` to `to` seconds at `rate` per GPU (2 GPUs), the counter going
    /// on from `base`; returns its last value.
    fn scrape(
        meter: &mut WorkMeter,
        spec: &WorkCounter,
        (from, to): (u64, u64),
        limit: f64,
        rate: f64,
        base: f64,
    ) -> f64 {
        let mut value = base;
        for s in from..=to {
            value = base + 2.0 * rate * (s + 1 - from) as f64;
            let waiting = spec.waiting_metric.as_ref().map(|_| 1.0);
            observe(
                meter,
                spec,
                Duration::from_secs(s),
                held(limit),
                sample(value, waiting),
            );
        }
        value
    }

    #[test]
    fn a_window_after_the_warm_up_measures_the_rate_per_gpu_and_the_draw() {
        let spec = counter(Some("waiting"));
        let mut meter = WorkMeter::default();
        scrape(&mut meter, &spec, (0, 100), 400.0, 50.0, 0.0);
        let (windows, rejected) = meter.take();
        // Warm until 10 s, then windows 10-40, 40-70, 70-100.
        assert_eq!(windows.len(), 3, "{windows:?}");
        assert!(rejected.is_empty());
        for w in &windows {
            assert!((w.rate_per_gpu - 50.0).abs() < 1e-9, "{w:?}");
            assert!((w.gpu_watts - 380.0).abs() < 1e-9, "{w:?}");
            assert_eq!(w.power_limit_watts, 400.0);
            assert_eq!(w.saturated, Some(true));
            assert_eq!(w.seconds, 30.0);
        }
    }

    #[test]
    fn a_limit_change_or_a_reset_mid_window_discards_it_and_warms_up_again() {
        let spec = counter(None);
        let mut meter = WorkMeter::default();
        let end = scrape(&mut meter, &spec, (0, 25), 400.0, 50.0, 0.0);
        // Limit lowered at 26 s: the open window (10-25 s) is discarded.
        scrape(&mut meter, &spec, (26, 60), 350.0, 40.0, end);
        // The counter goes back (a container restart) at 61 s: the window 36-60 is open.
        let end = scrape(&mut meter, &spec, (61, 70), 350.0, 40.0, 0.0);
        let (windows, rejected) = meter.take();
        assert_eq!(
            rejected,
            BTreeMap::from([("counterReset".into(), 1), ("limitChanged".into(), 1)])
        );
        // After the reset the window starts again at 61 s, and is not done at 70 s.
        assert_eq!(windows.len(), 0, "{windows:?}");
        let mut replaced = spec.clone();
        replaced.uid = Some("u2".into());
        scrape(&mut meter, &spec, (71, 110), 350.0, 40.0, end);
        observe(
            &mut meter,
            &replaced,
            Duration::from_secs(111),
            held(350.0),
            sample(0.0, None),
        );
        let (windows, rejected) = meter.take();
        assert_eq!(windows.len(), 1);
        assert!((windows[0].rate_per_gpu - 40.0).abs() < 1e-9);
        assert_eq!(windows[0].saturated, None);
        assert_eq!(rejected, BTreeMap::from([("podRestarted".into(), 1)]));
    }

    #[test]
    fn a_window_without_requests_waiting_throughout_is_not_saturated() {
        let spec = counter(Some("waiting"));
        let mut meter = WorkMeter::default();
        for s in 0..=40u64 {
            let waiting = if s == 30 { 0.0 } else { 3.0 };
            observe(
                &mut meter,
                &spec,
                Duration::from_secs(s),
                held(300.0),
                sample(s as f64 * 10.0, Some(waiting)),
            );
        }
        let (windows, _) = meter.take();
        assert_eq!(windows.len(), 1);
        assert_eq!(windows[0].saturated, Some(false));
    }

    #[test]
    fn a_failed_scrape_discards_the_open_window_and_mixed_limits_never_open_one() {
        let spec = counter(None);
        let mut meter = WorkMeter::default();
        scrape(&mut meter, &spec, (0, 20), 300.0, 10.0, 0.0);
        observe(
            &mut meter,
            &spec,
            Duration::from_secs(21),
            held(300.0),
            Err(WorkCounterError::Scrape {
                url: spec.url.clone(),
                message: "connection refused".into(),
            }),
        );
        let mut mixed = held(300.0);
        mixed.min_limit_watts = 250.0;
        for s in 22..100 {
            observe(
                &mut meter,
                &spec,
                Duration::from_secs(s),
                mixed,
                sample(s as f64, None),
            );
        }
        let (windows, rejected) = meter.take();
        assert!(windows.is_empty());
        assert_eq!(rejected, BTreeMap::from([("scrapeFailed".into(), 1)]));
    }
}
