//! The simulated GPUs' device plugin against a fake kubelet: a tonic `Registration` server on
//! `kubelet.sock` in a temporary directory, which dials the plugin back while it answers `Register`
//! as the kubelet does, and a `DevicePlugin` client on the plugin's socket playing the kubelet's
//! device manager. Also the `kilowatt-agent` process with `--device-plugin`. Does IO (unix sockets,
//! a temporary directory, child processes).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use common::{Served, TempDir};
use kilowatt_agent_core::driver;
use kilowatt_agent_core::gpu::GpuBackend;
use kilowatt_agent_core::gpu::GpuInfo;
use kilowatt_agent_core::gpu::simulated::SimulatedGpus;
use kilowatt_node_agent::device_plugin::proto::device_plugin_client::DevicePluginClient;
use kilowatt_node_agent::device_plugin::proto::registration_server::{
    Registration, RegistrationServer,
};
use kilowatt_node_agent::device_plugin::proto::{
    AllocateRequest, ContainerAllocateRequest, DevicePluginOptions, Empty, ListAndWatchResponse,
    RegisterRequest,
};
use kilowatt_node_agent::device_plugin::{
    API_VERSION, DevicePluginError, HEALTHY, KUBELET_SOCKET, PLUGIN_SOCKET, SOCKET_CHECK_PERIOD,
    SimulatedDevicePlugin, VISIBLE_DEVICES_ENV,
};
use kilowatt_node_agent::pod_resources::{GpuAssignment, pods_by_gpu};
use kilowatt_node_agent::unix_grpc;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tonic::transport::Channel;
use tonic::{Request, Response, Status, Streaming};

const GPU: &str = "nvidia.com/gpu";
/// Bounds every await in these tests.
const LIMIT: Duration = Duration::from_secs(10);

/// What the fake kubelet was asked, and the options the plugin answered when it was dialled back.
#[derive(Debug)]
struct Registered {
    request: RegisterRequest,
    options: DevicePluginOptions,
}

/// A kubelet's `Registration`: like the kubelet's device manager, it dials the endpoint back and asks
/// its options before it answers (so a plugin that registers before it serves is refused), then
/// reports the registration; or refuses every registration with `refusal`.
struct FakeKubelet {
    dir: PathBuf,
    registered: mpsc::UnboundedSender<Registered>,
    refusal: Option<Status>,
}

#[tonic::async_trait]
impl Registration for FakeKubelet {
    async fn register(&self, request: Request<RegisterRequest>) -> Result<Response<Empty>, Status> {
        if let Some(refusal) = &self.refusal {
            return Err(refusal.clone());
        }
        let request = request.into_inner();
        let socket = self.dir.join(&request.endpoint);
        let options = tokio::time::timeout(LIMIT, async {
            let channel = unix_grpc::connect(&socket)
                .await
                .map_err(|e| Status::unavailable(format!("dial {}: {e}", socket.display())))?;
            DevicePluginClient::new(channel)
                .get_device_plugin_options(Empty {})
                .await
        })
        .await
        .map_err(|_| Status::deadline_exceeded("the plugin did not answer"))??
        .into_inner();
        // The test may have stopped listening; the registration is answered all the same.
        let _ = self.registered.send(Registered { request, options });
        Ok(Response::new(Empty {}))
    }
}

/// A fake kubelet serving `kubelet.sock` in a directory until stopped, and what it was asked.
struct Kubelet {
    served: Served,
    registered: mpsc::UnboundedReceiver<Registered>,
}

impl Kubelet {
    fn start(dir: &Path, refusal: Option<Status>) -> anyhow::Result<Self> {
        let (registered_tx, registered) = mpsc::unbounded_channel();
        let kubelet = FakeKubelet {
            dir: dir.to_path_buf(),
            registered: registered_tx,
            refusal,
        };
        let served = Served::start(
            &dir.join(KUBELET_SOCKET),
            tonic::service::Routes::new(RegistrationServer::new(kubelet)),
        )?;
        Ok(Self { served, registered })
    }

    async fn next_registration(&mut self) -> anyhow::Result<Registered> {
        tokio::time::timeout(LIMIT, self.registered.recv())
            .await
            .context("the plugin did not register")?
            .context("the fake kubelet stopped")
    }

    async fn stop(self) -> anyhow::Result<()> {
        self.served.stop().await
    }
}

/// The plugin's `run` in a task, until stopped.
struct Running {
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl Running {
    fn start(plugin: SimulatedDevicePlugin) -> Self {
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(plugin.run(async {
            let _ = stopped.await;
        }));
        Self { stop, task }
    }

    async fn stop(self) -> anyhow::Result<()> {
        let _ = self.stop.send(());
        tokio::time::timeout(LIMIT, self.task)
            .await
            .context("the plugin did not stop")??;
        Ok(())
    }
}

/// Four simulated GPUs of node `kind-worker`, as the agent's simulated backend makes them.
fn simulated_gpus() -> anyhow::Result<Vec<GpuInfo>> {
    Ok(SimulatedGpus::uniform("kind-worker", 4, "H100-SXM", 200.0, 700.0, None).inventory()?)
}

/// Connects to the plugin's socket as the kubelet's device manager does.
async fn device_manager(socket: &Path) -> anyhow::Result<DevicePluginClient<Channel>> {
    let channel = tokio::time::timeout(LIMIT, unix_grpc::connect(socket))
        .await
        .context("connecting to the plugin hung")?
        .with_context(|| format!("connect to {}", socket.display()))?;
    Ok(DevicePluginClient::new(channel))
}

/// Opens `ListAndWatch` and reads its first list.
async fn list_and_watch(
    client: &mut DevicePluginClient<Channel>,
) -> anyhow::Result<(ListAndWatchResponse, Streaming<ListAndWatchResponse>)> {
    let mut stream = tokio::time::timeout(LIMIT, client.list_and_watch(Empty {}))
        .await
        .context("ListAndWatch hung")??
        .into_inner();
    let first = tokio::time::timeout(LIMIT, stream.message())
        .await
        .context("no first device list")??
        .context("the stream ended before the first device list")?;
    Ok((first, stream))
}

/// Waits for a `ListAndWatch` stream to end (cleanly or not, as a closed connection does).
async fn ended(stream: &mut Streaming<ListAndWatchResponse>) -> anyhow::Result<()> {
    let end = tokio::time::timeout(LIMIT, stream.message())
        .await
        .context("the stream stayed open")?;
    anyhow::ensure!(
        !matches!(end, Ok(Some(_))),
        "a second device list came: {end:?}"
    );
    Ok(())
}

fn ids(list: &ListAndWatchResponse) -> Vec<&str> {
    list.devices.iter().map(|d| d.id.as_str()).collect()
}

#[tokio::test]
async fn the_plugin_registers_then_advertises_every_gpu_healthy_and_allocates_them_by_uuid()
-> anyhow::Result<()> {
    let dir = TempDir::new("dp-advertises")?;
    let mut kubelet = Kubelet::start(&dir, None)?;
    let gpus = simulated_gpus()?;
    let started = Instant::now();
    let plugin = Running::start(SimulatedDevicePlugin::new(
        dir.to_path_buf(),
        GPU.to_owned(),
        &gpus,
    ));

    let registered = kubelet.next_registration().await?;
    println!("registered {:?} after starting", started.elapsed());
    assert_eq!(registered.request.version, API_VERSION);
    assert_eq!(registered.request.version, "v1beta1");
    assert_eq!(registered.request.endpoint, "kilowatt-sim.sock");
    assert_eq!(registered.request.resource_name, GPU);
    let no_extras = DevicePluginOptions {
        pre_start_required: false,
        get_preferred_allocation_available: false,
    };
    assert_eq!(registered.request.options, Some(no_extras));
    assert_eq!(registered.options, no_extras);

    let mut client = device_manager(&dir.join(PLUGIN_SOCKET)).await?;
    let options = client.get_device_plugin_options(Empty {}).await?;
    assert_eq!(options.into_inner(), no_extras);
    let (first, mut stream) = list_and_watch(&mut client).await?;
    assert_eq!(
        ids(&first),
        [
            "SIM-kind-worker-0",
            "SIM-kind-worker-1",
            "SIM-kind-worker-2",
            "SIM-kind-worker-3"
        ]
    );
    assert!(
        first
            .devices
            .iter()
            .all(|d| d.health == HEALTHY && d.health == "Healthy")
    );
    // The stream stays open with nothing more to say: the kubelet would take its end for the plugin
    // gone.
    let quiet = tokio::time::timeout(Duration::from_millis(300), stream.message()).await;
    assert!(
        quiet.is_err(),
        "the stream did not stay open and quiet: {quiet:?}"
    );

    let allocated = client
        .allocate(AllocateRequest {
            container_requests: vec![
                ContainerAllocateRequest {
                    devices_ids: vec!["SIM-kind-worker-1".into(), "SIM-kind-worker-2".into()],
                },
                ContainerAllocateRequest {
                    devices_ids: vec!["SIM-kind-worker-3".into()],
                },
            ],
        })
        .await?
        .into_inner();
    let envs: Vec<_> = allocated
        .container_responses
        .iter()
        .map(|c| c.envs.clone().into_iter().collect::<Vec<_>>())
        .collect();
    assert_eq!(
        envs,
        [
            vec![(
                VISIBLE_DEVICES_ENV.to_owned(),
                "SIM-kind-worker-1,SIM-kind-worker-2".to_owned()
            )],
            vec![(
                VISIBLE_DEVICES_ENV.to_owned(),
                "SIM-kind-worker-3".to_owned()
            )],
        ]
    );
    assert_eq!(VISIBLE_DEVICES_ENV, "NVIDIA_VISIBLE_DEVICES");
    assert!(
        allocated
            .container_responses
            .iter()
            .all(|c| c.devices.is_empty() && c.mounts.is_empty()),
        "a simulated GPU has no device node to hand out: {allocated:?}"
    );

    // What the kubelet's pod-resources API then reports lands on the GPUs the agent registers: the
    // advertised ids are the ids its mapping matches.
    let holder = |device: &str, pod: &str| GpuAssignment {
        device_id: device.to_owned(),
        namespace: "ml".to_owned(),
        pod: pod.to_owned(),
        container: "main".to_owned(),
    };
    let pods = pods_by_gpu(&[
        holder("SIM-kind-worker-1", "train-0"),
        holder("SIM-kind-worker-2", "train-0"),
        holder("SIM-kind-worker-3", "serve-0"),
    ]);
    let inventory = driver::inventory("simulated", &gpus, Some(&pods));
    let held: Vec<(u32, Vec<String>)> = inventory
        .gpus
        .iter()
        .map(|g| (g.index, g.pods.clone()))
        .collect();
    assert_eq!(
        held,
        [
            (0, vec![]),
            (1, vec!["ml/train-0".to_owned()]),
            (2, vec!["ml/train-0".to_owned()]),
            (3, vec!["ml/serve-0".to_owned()]),
        ]
    );

    plugin.stop().await?;
    assert!(
        !dir.join(PLUGIN_SOCKET).exists(),
        "the socket outlived the plugin"
    );
    ended(&mut stream).await?;
    kubelet.stop().await?;
    Ok(())
}

#[tokio::test]
async fn after_a_kubelet_restart_deletes_the_sockets_the_plugin_serves_and_registers_again()
-> anyhow::Result<()> {
    let dir = TempDir::new("dp-restart")?;
    let mut kubelet = Kubelet::start(&dir, None)?;
    let gpus = simulated_gpus()?;
    let plugin = Running::start(SimulatedDevicePlugin::new(
        dir.to_path_buf(),
        GPU.to_owned(),
        &gpus,
    ));
    let first = kubelet.next_registration().await?;
    let mut client = device_manager(&dir.join(PLUGIN_SOCKET)).await?;
    let (_, mut old_stream) = list_and_watch(&mut client).await?;
    // NB: the fake kubelet reports a registration before its answer reaches the plugin; waiting
    // lets the plugin settle into watching its socket, so that the deletion is found by that watch.
    tokio::time::sleep(Duration::from_millis(300)).await;

    // A kubelet restart: the old kubelet goes, the new one deletes every socket in the directory
    // and serves kubelet.sock afresh.
    kubelet.stop().await?;
    std::fs::remove_file(dir.join(KUBELET_SOCKET))?;
    std::fs::remove_file(dir.join(PLUGIN_SOCKET))?;
    let restarted = Instant::now();
    let mut kubelet = Kubelet::start(&dir, None)?;

    let again = kubelet.next_registration().await?;
    let took = restarted.elapsed();
    println!("registered again {took:?} after the kubelet deleted the socket");
    assert_eq!(again.request, first.request);
    // One socket check, one registration: well within two check periods.
    assert!(took < 2 * SOCKET_CHECK_PERIOD, "{took:?}");
    ended(&mut old_stream).await?;
    let mut client = device_manager(&dir.join(PLUGIN_SOCKET)).await?;
    let (list, _stream) = list_and_watch(&mut client).await?;
    assert_eq!(ids(&list).len(), 4, "{list:?}");

    plugin.stop().await?;
    kubelet.stop().await?;
    Ok(())
}

#[tokio::test]
async fn until_a_kubelet_listens_the_plugin_retries_instead_of_giving_up() -> anyhow::Result<()> {
    let dir = TempDir::new("dp-retries")?;
    let plugin = Running::start(SimulatedDevicePlugin::new(
        dir.to_path_buf(),
        GPU.to_owned(),
        &simulated_gpus()?,
    ));
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(!plugin.task.is_finished(), "the plugin gave up");

    let listening = Instant::now();
    let mut kubelet = Kubelet::start(&dir, None)?;
    let registered = kubelet.next_registration().await?;
    println!(
        "registered {:?} after the kubelet came up",
        listening.elapsed()
    );
    assert_eq!(registered.request.resource_name, GPU);

    plugin.stop().await?;
    kubelet.stop().await?;
    Ok(())
}

#[tokio::test]
async fn a_missing_directory_is_an_error_naming_it_and_the_mount() -> anyhow::Result<()> {
    let dir = TempDir::new("dp-missing-dir")?;
    let missing = dir.join("device-plugins");
    let plugin = SimulatedDevicePlugin::new(missing.clone(), GPU.to_owned(), &simulated_gpus()?);

    let Err(err) = plugin.start().await else {
        anyhow::bail!("serving in a missing directory succeeded");
    };

    assert!(
        matches!(&err, DevicePluginError::MissingDirectory { dir } if *dir == missing),
        "{err:?}"
    );
    let message = err.to_string();
    assert!(
        message.contains(&missing.display().to_string()),
        "{message}"
    );
    assert!(
        message.contains("/var/lib/kubelet/device-plugins"),
        "{message}"
    );
    Ok(())
}

#[tokio::test]
async fn a_refused_registration_is_an_error_with_the_kubelets_answer_and_leaves_no_socket()
-> anyhow::Result<()> {
    let dir = TempDir::new("dp-refused")?;
    let refusal =
        Status::invalid_argument("requested device plugin version v1beta1 is not supported");
    let kubelet = Kubelet::start(&dir, Some(refusal))?;
    let plugin = SimulatedDevicePlugin::new(dir.to_path_buf(), GPU.to_owned(), &simulated_gpus()?);

    let started = plugin.start().await;
    kubelet.stop().await?;

    let Err(err) = started else {
        anyhow::bail!("a refused registration succeeded");
    };
    let DevicePluginError::Register {
        socket,
        resource_name,
        source,
    } = &err
    else {
        anyhow::bail!("expected a registration error, got {err:?}");
    };
    assert_eq!(*socket, dir.join(KUBELET_SOCKET));
    assert_eq!(resource_name, GPU);
    assert_eq!(source.code(), tonic::Code::InvalidArgument);
    assert!(source.message().contains("not supported"), "{source:?}");
    assert!(
        err.to_string().contains(&socket.display().to_string()),
        "{err}"
    );
    assert!(
        !dir.join(PLUGIN_SOCKET).exists(),
        "a refused plugin left its socket"
    );
    Ok(())
}

#[tokio::test]
async fn allocating_a_device_the_node_does_not_have_is_refused() -> anyhow::Result<()> {
    let dir = TempDir::new("dp-unknown-device")?;
    let mut kubelet = Kubelet::start(&dir, None)?;
    let plugin = SimulatedDevicePlugin::new(dir.to_path_buf(), GPU.to_owned(), &simulated_gpus()?);
    let serving = plugin.start().await?;
    kubelet.next_registration().await?;

    let mut client = device_manager(&plugin.socket()).await?;
    let refused = client
        .allocate(AllocateRequest {
            container_requests: vec![ContainerAllocateRequest {
                devices_ids: vec!["SIM-kind-worker-0".into(), "GPU-elsewhere".into()],
            }],
        })
        .await;

    let Err(status) = refused else {
        anyhow::bail!("an unknown device was allocated: {refused:?}");
    };
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(status.message().contains("GPU-elsewhere"), "{status:?}");
    drop(serving);
    assert!(!plugin.socket().exists(), "the socket outlived its server");
    kubelet.stop().await?;
    Ok(())
}

/// Runs `kilowatt-agent` with `args` to its end and returns its exit status and stderr.
fn agent_refuses(args: &[&str]) -> anyhow::Result<String> {
    let output = Command::new(env!("CARGO_BIN_EXE_kilowatt-agent"))
        .args(args)
        .output()
        .context("run kilowatt-agent")?;
    anyhow::ensure!(!output.status.success(), "kilowatt-agent accepted {args:?}");
    Ok(String::from_utf8_lossy(&output.stderr).into_owned())
}

#[test]
fn the_agent_refuses_the_device_plugin_without_the_simulated_backend() -> anyhow::Result<()> {
    let stderr = agent_refuses(&["--node", "n", "--device-plugin"])?;
    assert!(
        stderr.contains("--device-plugin") && stderr.contains("needs --gpu-backend simulated"),
        "{stderr}"
    );
    let stderr = agent_refuses(&[
        "--node",
        "n",
        "--gpu-backend",
        "simulated",
        "--device-plugin-dir",
        "/tmp",
    ])?;
    assert!(stderr.contains("--device-plugin"), "{stderr}");
    Ok(())
}

#[tokio::test]
async fn the_agent_process_advertises_its_simulated_gpus_and_withdraws_on_sigterm()
-> anyhow::Result<()> {
    let dir = TempDir::new("dp-process")?;
    let mut kubelet = Kubelet::start(&dir, None)?;
    let boot_id = dir.join("boot_id");
    std::fs::write(&boot_id, "boot-1\n")?;
    let dir_arg = dir.display().to_string();
    let boot_arg = boot_id.display().to_string();
    // No etcd: the agent keeps retrying it, which leaves the device plugin to be looked at alone.
    let mut agent = Command::new(env!("CARGO_BIN_EXE_kilowatt-agent"))
        .args([
            "--node",
            "kind-worker",
            "--gpu-backend",
            "simulated",
            "--simulated-gpus",
            "3",
            "--device-plugin",
            "--device-plugin-dir",
            &dir_arg,
            "--etcd-endpoints",
            "http://127.0.0.1:9",
            "--listen",
            "127.0.0.1:0",
            "--boot-id-file",
            &boot_arg,
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("start kilowatt-agent")?;
    let pid = agent.id().to_string();
    let checked = async {
        let registered = kubelet.next_registration().await?;
        assert_eq!(registered.request.resource_name, GPU);
        let mut client = device_manager(&dir.join(PLUGIN_SOCKET)).await?;
        let (list, _stream) = list_and_watch(&mut client).await?;
        assert_eq!(
            ids(&list),
            [
                "SIM-kind-worker-0",
                "SIM-kind-worker-1",
                "SIM-kind-worker-2"
            ]
        );
        anyhow::Ok(())
    }
    .await;
    let signalled = Command::new("kill").args(["-TERM", &pid]).status();
    let exited =
        tokio::time::timeout(LIMIT, tokio::task::spawn_blocking(move || agent.wait())).await;
    checked?;
    anyhow::ensure!(signalled?.success(), "kill -TERM {pid} failed");
    let status = exited.context("the agent did not stop on SIGTERM")???;
    assert!(status.success(), "{status}");
    assert!(
        !dir.join(PLUGIN_SOCKET).exists(),
        "the socket outlived the agent"
    );
    kubelet.stop().await?;
    Ok(())
}
