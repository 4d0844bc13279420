//! The agent's Prometheus metrics — per GPU power, energy, limit, clock, utilization and throttling;
//! the plan revision enforced; drift, clamp and fence counters; GPU and etcd errors by kind — and the
//! HTTP endpoints that serve them (`/metrics`, `/healthz`). Values live in memory; serving is network IO.

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus::core::{AtomicF64, GenericCounterVec};
use prometheus::{
    Encoder, GaugeVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry, TextEncoder,
};

use crate::gpu::{GpuError, GpuInfo, GpuReading};
use crate::protocol::{Agent, Counters, Mode};

/// The previous sample, per GPU, and the protocol counters last exported.
#[derive(Default)]
struct Last {
    energy_joules: Vec<Option<f64>>,
    throttle_reasons: Vec<Vec<&'static str>>,
    counters: Counters,
}

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
    gpu_errors: IntCounterVec,
    etcd_errors: IntCounter,
    plan_revision: IntGauge,
    fenced: IntGauge,
    drifts: IntCounter,
    clamps: IntCounter,
    fences: IntCounter,
    /// What was exported last, to export increments and clear reasons that went away.
    last: Arc<Mutex<Last>>,
}

impl Telemetry {
    /// Creates and registers every metric. Fails only on a programming error (duplicate names).
    pub fn new() -> Result<Telemetry, prometheus::Error> {
        let registry = Registry::new();
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
                "GPU backend calls that failed, by kind (driver_missing, no_permission, not_supported, no_such_gpu, failed)",
            ),
            &["kind"],
        )?;
        let telemetry = Telemetry {
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
            gpu_energy_joules,
            gpu_throttled,
            gpu_errors,
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
            registry,
        };
        for collector in [
            Box::new(telemetry.gpu_energy_joules.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(telemetry.gpu_throttled.clone()),
            Box::new(telemetry.gpu_errors.clone()),
            Box::new(telemetry.etcd_errors.clone()),
            Box::new(telemetry.plan_revision.clone()),
            Box::new(telemetry.fenced.clone()),
            Box::new(telemetry.drifts.clone()),
            Box::new(telemetry.clamps.clone()),
            Box::new(telemetry.fences.clone()),
            Box::new(prometheus::process_collector::ProcessCollector::for_self()),
        ] {
            telemetry.registry.register(collector)?;
        }
        Ok(telemetry)
    }

    pub fn gpu_error(&self, kind: &'static str) {
        self.gpu_errors.with_label_values(&[kind]).inc();
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

    /// Exports one sample of every GPU.
    pub fn observe_gpus(&self, gpus: &[GpuInfo], readings: &[Result<GpuReading, GpuError>]) {
        let mut last = self
            .last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        last.energy_joules.resize(gpus.len(), None);
        last.throttle_reasons.resize(gpus.len(), Vec::new());
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
            // Reasons are the backend's fixed names; one that went away is set to 0, not left at 1.
            let previous = std::mem::take(&mut last.throttle_reasons[position]);
            for reason in previous.iter().chain(&reading.throttle_reasons) {
                let active = reading.throttle_reasons.contains(reason);
                self.gpu_throttled
                    .with_label_values(&[labels[0], labels[1], reason])
                    .set(if active { 1.0 } else { 0.0 });
            }
            last.throttle_reasons[position] = reading.throttle_reasons.clone();
            if let Some(energy) = reading.energy_joules {
                let slot = &mut last.energy_joules[position];
                if let Some(previous) = *slot
                    && energy > previous
                {
                    self.gpu_energy_joules
                        .with_label_values(&labels)
                        .inc_by(energy - previous);
                }
                *slot = Some(energy);
            }
        }
    }

    /// The text exposition format.
    pub fn render(&self) -> Result<String, prometheus::Error> {
        let mut buffer = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut buffer)?;
        Ok(String::from_utf8_lossy(&buffer).into_owned())
    }
}

async fn metrics(State(telemetry): State<Telemetry>) -> Response {
    match telemetry.render() {
        Ok(text) => ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

/// `/metrics` and `/healthz`.
pub fn router(telemetry: Telemetry) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok" }))
        .with_state(telemetry)
}
