//! The node agent in-process over shared simulated GPUs, with test options. etcd IO.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use kilowatt_agent_core::gpu::simulated::{SimulatedGpus, parse_profile};
use kilowatt_agent_core::gpu::{GpuBackend, GpuError, GpuInfo, GpuReading};
use kilowatt_agent_core::telemetry::Telemetry;
use kilowatt_node_agent::agent::{self, AgentOptions};

/// Options of an in-process test agent: no credentials, no pod-resources socket, fence at half the
/// `lease_ttl`, drift checks every second, samples every 100 ms, power reports every second.
pub fn agent_options(
    node: &str,
    etcd_endpoint: &str,
    prefix: &str,
    lease_ttl: Duration,
) -> AgentOptions {
    AgentOptions {
        node: node.into(),
        etcd_endpoints: vec![etcd_endpoint.to_owned()],
        etcd_prefix: prefix.into(),
        etcd_tls: None,
        credentials: None,
        lease_ttl,
        fence_fraction: 0.5,
        drift_check: Duration::from_secs(1),
        sample_period: Duration::from_millis(100),
        report_period: Duration::from_secs(1),
        work_windows: kilowatt_agent_core::work::WindowTiming::default(),
        pod_resources_socket: None,
        gpu_resource_name: "nvidia.com/gpu".into(),
    }
}
/// Simulated GPUs the test can inspect and disturb while the agent drives them.
#[derive(Clone)]
pub struct SharedGpus(pub Arc<Mutex<SimulatedGpus>>);
impl SharedGpus {
    /// The limit every GPU enforces now.
    pub fn limits(&self) -> Vec<f64> {
        let gpus = self.0.lock().expect("gpus");
        let count = gpus.inventory().expect("inventory").len() as u32;
        (0..count)
            .map(|i| gpus.power_limit_watts(i).expect("limit"))
            .collect()
    }
}
impl GpuBackend for SharedGpus {
    fn name(&self) -> &'static str {
        "simulated"
    }
    fn inventory(&self) -> Result<Vec<GpuInfo>, GpuError> {
        self.0.lock().expect("gpus").inventory()
    }
    fn power_limit_watts(&self, index: u32) -> Result<f64, GpuError> {
        self.0.lock().expect("gpus").power_limit_watts(index)
    }
    fn set_power_limit_watts(&mut self, index: u32, watts: f64) -> Result<(), GpuError> {
        self.0
            .lock()
            .expect("gpus")
            .set_power_limit_watts(index, watts)
    }
    fn lock_sm_clock(&mut self, index: u32, mhz: u32) -> Result<(), GpuError> {
        self.0.lock().expect("gpus").lock_sm_clock(index, mhz)
    }
    fn reset_sm_clock(&mut self, index: u32) -> Result<(), GpuError> {
        self.0.lock().expect("gpus").reset_sm_clock(index)
    }
    fn read(&self, index: u32) -> Result<GpuReading, GpuError> {
        self.0.lock().expect("gpus").read(index)
    }
    fn advance(&mut self, now: Duration) {
        self.0.lock().expect("gpus").advance(now);
    }
}

/// An agent running in this process over `gpus` simulated H100-SXM GPUs (200–700 W, the example
/// pre-training curve), with a 4 s lease.
pub struct InProcessAgent {
    pub gpus: SharedGpus,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl InProcessAgent {
    pub fn start(etcd_endpoint: &str, prefix: &str, node: &str, gpus: u32) -> InProcessAgent {
        let curve = parse_profile(
            kilowatt_crds::profile_file::example_profile("llm-pretrain-h100").expect("example"),
        )
        .expect("profile");
        let shared = SharedGpus(Arc::new(Mutex::new(SimulatedGpus::uniform(
            node,
            gpus,
            "H100-SXM",
            200.0,
            700.0,
            Some(curve),
        ))));
        let options = agent_options(node, etcd_endpoint, prefix, Duration::from_secs(4));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let backend = Box::new(shared.clone());
        let task = tokio::spawn(async move {
            let telemetry = Telemetry::new().expect("telemetry");
            agent::run(backend, options, telemetry, async {
                let _ = stopped.await;
            })
            .await
            .expect("agent runs");
        });
        InProcessAgent {
            gpus: shared,
            stop,
            task,
        }
    }

    /// Stops the agent as SIGTERM would (its GPUs go to their floors) and waits for it.
    pub async fn stop(self) -> SharedGpus {
        let _ = self.stop.send(());
        crate::within("agent stops", self.task)
            .await
            .expect("agent task");
        self.gpus
    }
}
