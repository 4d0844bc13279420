//! The agent's Prometheus metrics — per GPU power, energy, limit, clock, utilization and throttling;
//! per pod power and energy (a GPU's share split evenly among the pods holding it); the plan revision
//! enforced; drift, clamp and fence counters; GPU, etcd and kubelet errors by kind; work-counter
//! scrapes and windows by outcome. Values live in memory; the agent process serves them
//! (`kilowatt-agent`'s `http` module), simulate merges them.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use prometheus::core::{AtomicF64, GenericCounterVec};
use prometheus::{
    Encoder, GaugeVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry, TextEncoder,
};

use crate::driver::PodName;
use crate::gpu::{GpuError, GpuInfo, GpuReading};
use crate::protocol::{Agent, Counters, Mode};
use crate::work::{Rejected, WorkCounterError};
use kilowatt_crds::plan::WorkWindow;

/// The previous sample, per GPU, and the protocol counters last exported.
#[derive(Default)]
struct Last {
    energy_joules: Vec<Option<f64>>,
    throttle_reasons: Vec<Vec<&'static str>>,
    counters: Counters,
    /// Pods with exported series, to remove those of pods that left.
    pods: BTreeSet<PodName>,
}

/// The kinds of error asking the kubelet's pod-resources API can end in (the agent's
/// `PodResourcesError::category`), each a label value of `kilowatt_agent_pod_resources_errors_total`.
pub const POD_RESOURCES_ERROR_KINDS: [&str; 3] = ["connect", "call", "timeout"];

/// Every metric the agent exports.
#[derive(Clone)]
pub struct Telemetry {
    registry: Registry,
    gpu_power_watts: GaugeVec,
    gpu_energy_joules: GenericCounterVec<AtomicF64>,
    gpu_power_limit_watts: GaugeVec,
    gpu_sm_clock_mhz: GaugeVec,
    gpu_utilization_ratio: GaugeVec,
    gpu_throttled: GaugeVec,
    gpu_persistence_mode: GaugeVec,
    gpu_errors: IntCounterVec,
    pod_power_watts: GaugeVec,
    pod_energy_joules: GenericCounterVec<AtomicF64>,
    pod_resources_errors: IntCounterVec,
    etcd_errors: IntCounter,
    plan_revision: IntGauge,
    fenced: IntGauge,
    drifts: IntCounter,
    clamps: IntCounter,
    fences: IntCounter,
    work_scrapes: IntCounterVec,
    work_windows: IntCounterVec,
    /// What was exported last, to export increments and clear reasons that went away.
    last: Arc<Mutex<Last>>,
    /// When the agent's main loop last went round (the process passes its clock in), for `/healthz`.
    heartbeat: Arc<Mutex<Option<std::time::Instant>>>,
}

impl Telemetry {
    /// Creates and registers every metric, with the process's CPU and memory. Fails only on a
    /// programming error (duplicate names).
    pub fn new() -> Result<Telemetry, prometheus::Error> {
        let telemetry = Telemetry::with_registry(Registry::new())?;
        telemetry.registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;
        Ok(telemetry)
    }

    /// Every metric labelled `node` and no process metrics: one of many agents in one process
    /// (`kilowatt simulate`), merged with the others' through [`Telemetry::gather`].
    pub fn for_node(node: &str) -> Result<Telemetry, prometheus::Error> {
        let labels = std::collections::HashMap::from([("node".to_owned(), node.to_owned())]);
        Telemetry::with_registry(Registry::new_custom(None, Some(labels))?)
    }

    fn with_registry(registry: Registry) -> Result<Telemetry, prometheus::Error> {
        let per_gpu = |name: &str, help: &str| -> Result<GaugeVec, prometheus::Error> {
            let gauge = GaugeVec::new(Opts::new(name, help), &["gpu", "uuid"])?;
            registry.register(Box::new(gauge.clone()))?;
            Ok(gauge)
        };
        let gpu_energy_joules = GenericCounterVec::new(
            Opts::new(
                "kilowatt_gpu_energy_joules_total",
                "Energy used by a GPU since the agent started (from the driver's counter)",
            ),
            &["gpu", "uuid"],
        )?;
        let gpu_throttled = GaugeVec::new(
            Opts::new(
                "kilowatt_gpu_throttled",
                "Whether a GPU's clocks are held back for a reason (1) or not (0)",
            ),
            &["gpu", "uuid", "reason"],
        )?;
        let gpu_errors = IntCounterVec::new(
            Opts::new(
                "kilowatt_gpu_errors_total",
                "GPU backend calls that failed, by kind (driver_missing, no_permission, not_supported, no_such_gpu, failed, settings_file, invalid_bounds)",
            ),
            &["kind"],
        )?;
        let pod_power_watts = GaugeVec::new(
            Opts::new(
                "kilowatt_pod_power_watts",
                "Power drawn by the GPUs a pod holds (a shared GPU's draw split evenly among its pods)",
            ),
            &["namespace", "pod"],
        )?;
        let pod_energy_joules = GenericCounterVec::new(
            Opts::new(
                "kilowatt_pod_energy_joules_total",
                "Energy used by the GPUs a pod holds while the agent watched (shared GPUs split evenly)",
            ),
            &["namespace", "pod"],
        )?;
        let pod_resources_errors = IntCounterVec::new(
            Opts::new(
                "kilowatt_agent_pod_resources_errors_total",
                "Failed asks to the kubelet's pod-resources API, by kind (connect, call, timeout)",
            ),
            &["kind"],
        )?;
        let work_scrapes = IntCounterVec::new(
            Opts::new(
                "kilowatt_agent_work_scrapes_total",
                "Scrapes of pods' work counters, by outcome: ok, or scrape (no answer), syntax (not the text format), missing (no such series), bad_value (not a finite number at least 0)",
            ),
            &["outcome"],
        )?;
        let work_windows = IntCounterVec::new(
            Opts::new(
                "kilowatt_agent_work_windows_total",
                "Work-counter windows the agent cut, by outcome: reported (sent to the operator), or why it discarded one (limitChanged, counterReset, podRestarted, scrapeFailed, mixedLimits)",
            ),
            &["outcome"],
        )?;
        let telemetry = Telemetry {
            work_scrapes,
            work_windows,
            gpu_power_watts: per_gpu("kilowatt_gpu_power_watts", "Power a GPU draws")?,
            gpu_power_limit_watts: per_gpu(
                "kilowatt_gpu_power_limit_watts",
                "Power limit a GPU enforces",
            )?,
            gpu_sm_clock_mhz: per_gpu("kilowatt_gpu_sm_clock_mhz", "SM clock of a GPU")?,
            gpu_utilization_ratio: per_gpu(
                "kilowatt_gpu_utilization_ratio",
                "GPU utilization (0..1)",
            )?,
            gpu_persistence_mode: per_gpu(
                "kilowatt_gpu_persistence_mode",
                "Whether a GPU's driver is in persistence mode (1) or not (0; the driver may then unload between clients and reset the limit to its default)",
            )?,
            gpu_energy_joules,
            gpu_throttled,
            gpu_errors,
            pod_power_watts,
            pod_energy_joules,
            pod_resources_errors,
            etcd_errors: IntCounter::new(
                "kilowatt_agent_etcd_errors_total",
                "etcd sessions that failed to open or were lost",
            )?,
            plan_revision: IntGauge::new(
                "kilowatt_agent_plan_revision",
                "Plan revision last acknowledged as enforced",
            )?,
            fenced: IntGauge::new(
                "kilowatt_agent_fenced",
                "Whether the agent holds its GPUs at their floors for lack of contact (1) or not (0)",
            )?,
            drifts: IntCounter::new(
                "kilowatt_agent_drift_total",
                "Limits found changed by something other than the agent",
            )?,
            clamps: IntCounter::new(
                "kilowatt_agent_clamps_total",
                "Plan targets moved into a GPU's accepted range",
            )?,
            fences: IntCounter::new(
                "kilowatt_agent_fences_total",
                "Times the agent lowered its GPUs to their floors for lack of contact",
            )?,
            last: Arc::new(Mutex::new(Last::default())),
            heartbeat: Arc::default(),
            registry,
        };
        for collector in [
            Box::new(telemetry.gpu_energy_joules.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(telemetry.gpu_throttled.clone()),
            Box::new(telemetry.gpu_errors.clone()),
            Box::new(telemetry.pod_power_watts.clone()),
            Box::new(telemetry.pod_energy_joules.clone()),
            Box::new(telemetry.pod_resources_errors.clone()),
            Box::new(telemetry.etcd_errors.clone()),
            Box::new(telemetry.plan_revision.clone()),
            Box::new(telemetry.fenced.clone()),
            Box::new(telemetry.drifts.clone()),
            Box::new(telemetry.clamps.clone()),
            Box::new(telemetry.fences.clone()),
            Box::new(telemetry.work_scrapes.clone()),
            Box::new(telemetry.work_windows.clone()),
        ] {
            telemetry.registry.register(collector)?;
        }
        // Every known label value starts at 0, so that a series exists (and rate() works) before the
        // first error, and dashboards find the metric on a healthy agent.
        for kind in crate::gpu::GpuError::CATEGORIES {
            telemetry.gpu_errors.with_label_values(&[kind]);
        }
        for kind in POD_RESOURCES_ERROR_KINDS {
            telemetry.pod_resources_errors.with_label_values(&[kind]);
        }
        for outcome in std::iter::once("ok").chain(WorkCounterError::CATEGORIES) {
            telemetry.work_scrapes.with_label_values(&[outcome]);
        }
        for outcome in std::iter::once("reported").chain(Rejected::ALL.map(Rejected::name)) {
            telemetry.work_windows.with_label_values(&[outcome]);
        }
        Ok(telemetry)
    }

    pub fn gpu_error(&self, kind: &'static str) {
        self.gpu_errors.with_label_values(&[kind]).inc();
    }

    pub fn pod_resources_error(&self, kind: &'static str) {
        self.pod_resources_errors.with_label_values(&[kind]).inc();
    }

    pub fn etcd_error(&self) {
        self.etcd_errors.inc();
    }

    pub fn revision(&self, revision: u64) {
        self.plan_revision
            .set(i64::try_from(revision).unwrap_or(i64::MAX));
    }

    /// Exports the protocol's mode and the increments of its counters.
    pub fn observe_agent(&self, agent: &Agent) {
        self.fenced.set(i64::from(agent.mode() == Mode::Fenced));
        let mut last = self
            .last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = agent.counters;
        self.drifts
            .inc_by(now.drifts.saturating_sub(last.counters.drifts));
        self.clamps
            .inc_by(now.clamps.saturating_sub(last.counters.clamps));
        self.fences
            .inc_by(now.fences.saturating_sub(last.counters.fences));
        last.counters = now;
    }

    /// The main loop went round at `at`.
    pub fn heartbeat(&self, at: std::time::Instant) {
        *self
            .heartbeat
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(at);
    }

    /// When the main loop last went round; `None` before it first did.
    pub fn last_heartbeat(&self) -> Option<std::time::Instant> {
        *self
            .heartbeat
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Exports one sample of every GPU, and of every pod holding GPUs (`pods`: holders by GPU UUID).
    pub fn observe_gpus(
        &self,
        gpus: &[GpuInfo],
        readings: &[Result<GpuReading, GpuError>],
        pods: &BTreeMap<String, Vec<PodName>>,
    ) {
        let mut last = self
            .last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        last.energy_joules.resize(gpus.len(), None);
        last.throttle_reasons.resize(gpus.len(), Vec::new());
        let mut pod_power: BTreeMap<&str, f64> = BTreeMap::new();
        let mut pod_energy: BTreeMap<&str, f64> = BTreeMap::new();
        for (position, (gpu, reading)) in gpus.iter().zip(readings).enumerate() {
            let index = gpu.index.to_string();
            let labels = [index.as_str(), gpu.uuid.as_str()];
            let reading = match reading {
                Ok(reading) => reading,
                Err(error) => {
                    self.gpu_error(error.category());
                    continue;
                }
            };
            let set = |gauge: &GaugeVec, value: Option<f64>| {
                if let Some(value) = value {
                    gauge.with_label_values(&labels).set(value);
                }
            };
            set(&self.gpu_power_watts, reading.power_watts);
            set(&self.gpu_power_limit_watts, reading.power_limit_watts);
            set(&self.gpu_sm_clock_mhz, reading.sm_clock_mhz.map(f64::from));
            set(
                &self.gpu_utilization_ratio,
                reading.utilization_percent.map(|u| f64::from(u) / 100.0),
            );
            set(
                &self.gpu_persistence_mode,
                reading
                    .persistence_mode
                    .map(|on| if on { 1.0 } else { 0.0 }),
            );
            // Reasons are the backend's fixed names; one that went away is set to 0, not left at 1.
            let previous = std::mem::take(&mut last.throttle_reasons[position]);
            for reason in previous.iter().chain(&reading.throttle_reasons) {
                let active = reading.throttle_reasons.contains(reason);
                self.gpu_throttled
                    .with_label_values(&[labels[0], labels[1], reason])
                    .set(if active { 1.0 } else { 0.0 });
            }
            last.throttle_reasons[position] = reading.throttle_reasons.clone();
            let mut used_joules = 0.0;
            if let Some(energy) = reading.energy_joules {
                let slot = &mut last.energy_joules[position];
                if let Some(previous) = *slot
                    && energy > previous
                {
                    used_joules = energy - previous;
                    self.gpu_energy_joules
                        .with_label_values(&labels)
                        .inc_by(used_joules);
                }
                *slot = Some(energy);
            }
            let holders = pods.get(&gpu.uuid).map_or(&[][..], Vec::as_slice);
            let share = 1.0 / holders.len().max(1) as f64;
            for pod in holders {
                *pod_power.entry(pod).or_default() += reading.power_watts.unwrap_or(0.0) * share;
                *pod_energy.entry(pod).or_default() += used_joules * share;
            }
        }
        for (pod, watts) in &pod_power {
            let labels = pod_labels(pod);
            self.pod_power_watts.with_label_values(&labels).set(*watts);
            self.pod_energy_joules
                .with_label_values(&labels)
                .inc_by(pod_energy.get(pod).copied().unwrap_or(0.0));
        }
        let present: BTreeSet<PodName> = pod_power.keys().map(|p| (*p).to_owned()).collect();
        for gone in last.pods.difference(&present) {
            let labels = pod_labels(gone);
            let _ = self.pod_power_watts.remove_label_values(&labels);
            let _ = self.pod_energy_joules.remove_label_values(&labels);
        }
        last.pods = present;
    }

    /// Counts a round of work-counter scrapes by outcome (`ok`, or a [`WorkCounterError::category`]).
    pub fn observe_work_scrapes(&self, outcomes: &[&str]) {
        for outcome in outcomes {
            self.work_scrapes.with_label_values(&[outcome]).inc();
        }
    }

    /// Counts the windows of one power report: those it carries, and those discarded by reason.
    pub fn observe_work_windows(&self, reported: &[WorkWindow], rejected: &BTreeMap<String, u32>) {
        self.work_windows
            .with_label_values(&["reported"])
            .inc_by(reported.len() as u64);
        for (reason, count) in rejected {
            self.work_windows
                .with_label_values(&[reason])
                .inc_by(u64::from(*count));
        }
    }

    /// Every metric family, for merging with other agents' (`kilowatt simulate`).
    pub fn gather(&self) -> Vec<prometheus::proto::MetricFamily> {
        self.registry.gather()
    }

    /// The text exposition format.
    pub fn render(&self) -> Result<String, prometheus::Error> {
        let mut buffer = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut buffer)?;
        Ok(String::from_utf8_lossy(&buffer).into_owned())
    }
}

/// `namespace/name` as metric labels.
fn pod_labels(pod: &str) -> [&str; 2] {
    pod.split_once('/')
        .map_or(["", pod], |(ns, name)| [ns, name])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gpu(index: u32, uuid: &str) -> GpuInfo {
        GpuInfo {
            index,
            uuid: uuid.to_owned(),
            model: "H100-SXM".to_owned(),
            min_limit_watts: 200.0,
            max_limit_watts: 700.0,
            default_limit_watts: 700.0,
            supported_sm_clocks_mhz: Vec::new(),
        }
    }

    fn reading(power_watts: f64, energy_joules: f64) -> Result<GpuReading, GpuError> {
        Ok(GpuReading {
            power_watts: Some(power_watts),
            energy_joules: Some(energy_joules),
            power_limit_watts: Some(700.0),
            sm_clock_mhz: Some(1980),
            utilization_percent: Some(100),
            throttle_reasons: Vec::new(),
            persistence_mode: Some(true),
        })
    }

    /// The value of the sample whose line starts with `series`.
    fn sample(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
    }

    #[test]
    fn pods_get_their_gpus_power_and_energy_and_a_shared_gpu_is_split() -> anyhow::Result<()> {
        let telemetry = Telemetry::new()?;
        let gpus = [gpu(0, "GPU-a"), gpu(1, "GPU-b")];
        let pods = BTreeMap::from([
            (
                "GPU-a".to_owned(),
                vec!["ml/serve".to_owned(), "ml/batch".to_owned()],
            ),
            ("GPU-b".to_owned(), vec!["ml/serve".to_owned()]),
        ]);
        telemetry.observe_gpus(&gpus, &[reading(300.0, 1000.0), reading(500.0, 0.0)], &pods);
        telemetry.observe_gpus(
            &gpus,
            &[reading(300.0, 1600.0), reading(500.0, 1000.0)],
            &pods,
        );
        let text = telemetry.render()?;
        let serve = r#"{namespace="ml",pod="serve"}"#;
        let batch = r#"{namespace="ml",pod="batch"}"#;
        assert_eq!(
            sample(&text, &format!("kilowatt_pod_power_watts{serve}")),
            Some(650.0)
        );
        assert_eq!(
            sample(&text, &format!("kilowatt_pod_power_watts{batch}")),
            Some(150.0)
        );
        assert_eq!(
            sample(&text, &format!("kilowatt_pod_energy_joules_total{serve}")),
            Some(1300.0)
        );
        assert_eq!(
            sample(&text, &format!("kilowatt_pod_energy_joules_total{batch}")),
            Some(300.0)
        );
        assert_eq!(
            sample(
                &text,
                r#"kilowatt_gpu_persistence_mode{gpu="0",uuid="GPU-a"}"#
            ),
            Some(1.0)
        );

        // batch leaves: its series go, serve now has GPU-a to itself.
        let pods = BTreeMap::from([
            ("GPU-a".to_owned(), vec!["ml/serve".to_owned()]),
            ("GPU-b".to_owned(), vec!["ml/serve".to_owned()]),
        ]);
        telemetry.observe_gpus(
            &gpus,
            &[reading(300.0, 1700.0), reading(500.0, 1100.0)],
            &pods,
        );
        let text = telemetry.render()?;
        assert_eq!(
            sample(&text, &format!("kilowatt_pod_power_watts{serve}")),
            Some(800.0)
        );
        assert!(!text.contains(r#"pod="batch""#), "{text}");
        Ok(())
    }
}
