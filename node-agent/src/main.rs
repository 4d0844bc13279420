//! Entry point of `kilowatt-agent`: parses the command line, picks the GPU backend (announcing loudly
//! when it is simulated), serves telemetry and runs the agent until SIGTERM.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, ValueEnum};
use kilowatt_agent_core::defaults;
use kilowatt_agent_core::gpu::GpuBackend;
use kilowatt_agent_core::gpu::simulated::{Curve, SimulatedGpus, parse_profile};
use kilowatt_agent_core::protocol::GpuBounds;
use kilowatt_agent_core::telemetry::Telemetry;
use kilowatt_node_agent::agent::{self, AgentOptions};
use kilowatt_node_agent::credentials::{CredentialsSource, check_url};
use kilowatt_node_agent::device_plugin::{self, SimulatedDevicePlugin};
use kilowatt_node_agent::gpu::nvml::NvmlBackend;
use kilowatt_node_agent::gpu::settings_file::FileBackedGpus;
use kilowatt_node_agent::http;
use kilowatt_plumbing::{logging, signals, tls};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Backend {
    /// The node's NVIDIA GPUs through NVML (needs the driver and, to set limits, privileges).
    Nvml,
    /// GPUs whose draw, energy and throughput follow a profile curve; for tests and demos.
    Simulated,
}

/// Enforces Kilowatt's per-node plan on this node's GPUs: lowers before it raises, acknowledges only
/// what it read back, and lowers every GPU to its floor by itself when it loses contact with etcd.
#[derive(Debug, Parser)]
#[command(name = "kilowatt-agent", version, about, long_about = None)]
struct Args {
    /// This node's name, as the operator's plan keys use it.
    #[arg(long, env = "NODE_NAME", value_name = "NODE")]
    node: String,
    /// Where limits are enforced.
    #[arg(long, value_enum, default_value = "nvml")]
    gpu_backend: Backend,
    /// Simulated backend: number of GPUs.
    #[arg(long, default_value_t = 8, value_name = "COUNT")]
    simulated_gpus: u32,
    /// Simulated backend: GPU model name and limit range.
    #[arg(long, default_value = "H100-SXM", value_name = "MODEL")]
    simulated_model: String,
    #[arg(long, default_value_t = 200.0, value_name = "WATTS")]
    simulated_min_watts: f64,
    #[arg(long, default_value_t = 700.0, value_name = "WATTS")]
    simulated_max_watts: f64,
    /// Simulated backend: the workload every GPU runs (a profile YAML as in examples/profiles/);
    /// without it the GPUs idle.
    #[arg(long, value_name = "FILE")]
    simulated_profile: Option<PathBuf>,
    /// Simulated backend: keep the GPUs' limits and clocks in this file instead of in memory, so they
    /// outlive the agent like a real GPU's settings (a restarted agent finds them) and other programs
    /// can read or change them; the fault tests use it.
    #[arg(long, value_name = "FILE")]
    simulated_settings_file: Option<PathBuf>,
    /// etcd endpoints that hold the plan, comma-separated.
    #[arg(
        long,
        env = "KILOWATT_ETCD_ENDPOINTS",
        value_delimiter = ',',
        default_value = "http://127.0.0.1:2379",
        value_name = "URL[,URL...]"
    )]
    etcd_endpoints: Vec<String>,
    #[command(flatten)]
    etcd_tls: tls::EtcdTlsFiles,
    /// Key prefix of the plan keys (the operator's --etcd-prefix).
    #[arg(long, default_value = "/kilowatt", value_name = "PREFIX")]
    etcd_prefix: String,
    /// The operator's agent-credentials endpoint (https://HOST:PORT/api/v1/agent-credentials, the
    /// operator's --tls-listen; http:// only without TLS). With it, the agent sends its ServiceAccount
    /// token there before every etcd connection and connects as the etcd user it gets back, which may
    /// write only the keys of the node its pod runs on; without it, the agent connects to etcd without
    /// authentication.
    #[arg(long, env = "KILOWATT_CREDENTIALS_URL", value_name = "URL")]
    credentials_url: Option<String>,
    /// The CA that signed the operator's certificate (PEM); required for an https:// --credentials-url.
    #[arg(long, value_name = "FILE", requires = "credentials_url")]
    credentials_ca_file: Option<PathBuf>,
    /// The projected ServiceAccount token (audience `kilowatt`) sent to --credentials-url; read again
    /// for every request, as the kubelet rotates it.
    #[arg(
        long,
        default_value = "/var/run/secrets/kilowatt/token",
        value_name = "PATH"
    )]
    service_account_token_file: PathBuf,
    /// TTL of the etcd lease that carries this node's inventory and acknowledgements.
    #[arg(long, default_value_t = defaults::LEASE_TTL.as_secs(), value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(2..=300))]
    lease_ttl_seconds: u64,
    /// Fraction of the TTL without a lease renewal after which every GPU is lowered to its floor.
    #[arg(long, default_value_t = defaults::FENCE_FRACTION, value_name = "FRACTION", value_parser = parse_fraction)]
    fence_fraction: f64,
    /// How often limits are read back to catch changes made by others.
    #[arg(long, default_value_t = defaults::DRIFT_CHECK.as_secs(), value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..=3600))]
    drift_check_seconds: u64,
    /// Telemetry sampling period.
    #[arg(long, default_value_t = defaults::SAMPLE_PERIOD.as_millis() as u64, value_name = "MILLISECONDS", value_parser = clap::value_parser!(u64).range(50..=60000))]
    sample_ms: u64,
    /// How often the node's measured GPU power is written to etcd (the operator's PowerBudget
    /// status shows it); one etcd write per node per period.
    #[arg(long, default_value_t = defaults::REPORT_PERIOD.as_secs(), value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..=3600))]
    report_seconds: u64,
    /// How long a pod's GPUs hold new limits before its work counter's rate is measured (caches,
    /// batch sizes and clocks settle first).
    #[arg(long, default_value_t = kilowatt_agent_core::work::WARM_UP.as_secs(), value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(0..=3600))]
    work_warm_up_seconds: u64,
    /// Length of one work-counter measurement window: its rate at one held limit is a point of the
    /// workload's curve. Longer windows average more noise away; a shorter one gives points sooner.
    #[arg(long, default_value_t = kilowatt_agent_core::work::WINDOW.as_secs(), value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..=3600))]
    work_window_seconds: u64,
    /// The kubelet's pod-resources socket; with it, GPU power and energy are also exported per pod.
    #[arg(long, value_name = "PATH")]
    pod_resources_socket: Option<PathBuf>,
    /// The extended resource GPUs are requested by (pod-resources entries of other resources are
    /// ignored); with --device-plugin, the resource the simulated GPUs are advertised as.
    #[arg(long, default_value = "nvidia.com/gpu", value_name = "NAME")]
    gpu_resource_name: String,
    /// Simulated backend only: also be the node's kubelet device plugin for the simulated GPUs. The
    /// agent serves kilowatt-sim.sock in --device-plugin-dir, registers it on the kubelet's
    /// kubelet.sock there and advertises every simulated GPU, healthy, as --gpu-resource-name, by its
    /// UUID; so the scheduler places pods that request GPUs on this node, the kubelet allocates them
    /// (a container gets NVIDIA_VISIBLE_DEVICES=<UUIDs>, no device node), and --pod-resources-socket
    /// then says which pod holds which simulated GPU. It registers again when the kubelet restarts,
    /// retries with backoff while the directory or the kubelet is missing, and removes its socket on
    /// exit. The agent does not label its Node: give the node the nvidia.com/gpu.product label of
    /// the simulated model (e.g. NVIDIA-H100-80GB-HBM3), which the operator picks default profiles
    /// by. A node with real GPUs has NVIDIA's device plugin instead: with --gpu-backend nvml this
    /// flag is refused.
    #[arg(long)]
    device_plugin: bool,
    /// The kubelet's device-plugin directory (in a pod, a hostPath mount of it).
    #[arg(
        long,
        default_value = device_plugin::DEFAULT_DIR,
        value_name = "DIR",
        requires = "device_plugin"
    )]
    device_plugin_dir: PathBuf,
    /// The machine's boot ID (a random UUID the kernel draws at every boot), sent with every
    /// acknowledgement so the operator can tell limits this boot enforces from those a rebooted
    /// machine's GPUs no longer hold. If it cannot be read, the agent says so and acknowledges without
    /// one; tests point it at a file of their own.
    #[arg(long, default_value = agent::BOOT_ID_FILE, value_name = "PATH")]
    boot_id_file: PathBuf,
    /// Address of /metrics and /healthz.
    #[arg(long, default_value = "0.0.0.0:9400", value_name = "ADDR:PORT")]
    listen: SocketAddr,
    /// Log format on stderr (RUST_LOG sets the level; default info).
    #[arg(long, default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
}

fn parse_fraction(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|e| format!("{e}"))?;
    if v > 0.0 && v <= 1.0 {
        Ok(v)
    } else {
        Err(format!("{v} is not in (0, 1]"))
    }
}

/// Reads a profile file for the simulated GPUs.
fn load_profile(path: &Path) -> anyhow::Result<Curve> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading profile {}", path.display()))?;
    parse_profile(&text).with_context(|| format!("profile {} is not usable", path.display()))
}

fn backend(args: &Args) -> anyhow::Result<Box<dyn GpuBackend>> {
    match args.gpu_backend {
        Backend::Nvml => Ok(Box::new(NvmlBackend::new()?)),
        Backend::Simulated => {
            anyhow::ensure!(
                GpuBounds {
                    min_watts: args.simulated_min_watts,
                    max_watts: args.simulated_max_watts,
                }
                .check(0)
                .is_ok(),
                "--simulated-min-watts {} and --simulated-max-watts {} are no limit range: they must be finite, with 0 < min <= max",
                args.simulated_min_watts,
                args.simulated_max_watts
            );
            let workload = args
                .simulated_profile
                .as_deref()
                .map(load_profile)
                .transpose()?;
            tracing::warn!(
                gpus = args.simulated_gpus,
                model = %args.simulated_model,
                "SIMULATED GPUs: no real GPU is controlled by this agent"
            );
            let gpus = SimulatedGpus::uniform(
                &args.node,
                args.simulated_gpus,
                &args.simulated_model,
                args.simulated_min_watts,
                args.simulated_max_watts,
                workload,
            );
            Ok(match &args.simulated_settings_file {
                Some(path) => Box::new(FileBackedGpus::open(gpus, path.clone())?),
                None => Box::new(gpus),
            })
        }
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    logging::init(&args.log_format, "info");
    if let Some(url) = &args.credentials_url {
        check_url(url, args.credentials_ca_file.is_some())?;
    }
    anyhow::ensure!(
        !args.device_plugin || args.gpu_backend == Backend::Simulated,
        "--device-plugin advertises simulated GPUs to the kubelet and needs --gpu-backend simulated; \
         a node with real GPUs has NVIDIA's device plugin for that"
    );
    let etcd_tls = tls::etcd_tls(&args.etcd_endpoints, &args.etcd_tls)?;
    let backend = backend(&args)?;
    let device_plugin = if args.device_plugin {
        let gpus = backend
            .inventory()
            .context("reading the simulated GPUs to advertise")?;
        Some(SimulatedDevicePlugin::new(
            args.device_plugin_dir.clone(),
            args.gpu_resource_name.clone(),
            &gpus,
        ))
    } else {
        None
    };
    let options = AgentOptions {
        node: args.node.clone(),
        etcd_endpoints: args.etcd_endpoints.clone(),
        etcd_prefix: args.etcd_prefix.clone(),
        etcd_tls,
        credentials: args.credentials_url.clone().map(|url| CredentialsSource {
            url,
            token_file: args.service_account_token_file.clone(),
            ca_file: args.credentials_ca_file.clone(),
        }),
        lease_ttl: Duration::from_secs(args.lease_ttl_seconds),
        fence_fraction: args.fence_fraction,
        drift_check: Duration::from_secs(args.drift_check_seconds),
        sample_period: Duration::from_millis(args.sample_ms),
        report_period: Duration::from_secs(args.report_seconds),
        work_windows: kilowatt_agent_core::work::WindowTiming {
            warm_up: Duration::from_secs(args.work_warm_up_seconds),
            window: Duration::from_secs(args.work_window_seconds),
        },
        pod_resources_socket: args.pod_resources_socket.clone(),
        gpu_resource_name: args.gpu_resource_name.clone(),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let telemetry = Telemetry::new()?;
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("cannot listen on {}", args.listen))?;
        let app = http::router(telemetry.clone(), http::wedged_after(options.sample_period));
        tokio::spawn(async move {
            if let Err(error) = axum::serve(listener, app).await {
                tracing::error!(%error, "telemetry server stopped");
            }
        });
        // The plugin lives as long as the agent: it withdraws once the agent has stopped, for
        // whatever reason.
        // SIGTERM's handler goes in before the plugin can announce the node to the kubelet: from then
        // on a deleted pod must take the shutdown path (every GPU to its floor at most).
        let terminated = signals::termination();
        let (agent_stopped, plugin_shutdown) = tokio::sync::oneshot::channel::<()>();
        let plugin = device_plugin.map(|plugin| {
            tokio::spawn(plugin.run(async {
                let _ = plugin_shutdown.await;
            }))
        });
        let agent = agent::run_with_boot_id_file(
            backend,
            options,
            &args.boot_id_file,
            telemetry,
            terminated,
        )
        .await;
        drop(agent_stopped);
        if let Some(plugin) = plugin {
            plugin.await.context("the device plugin task failed")?;
        }
        agent?;
        Ok(())
    })
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
