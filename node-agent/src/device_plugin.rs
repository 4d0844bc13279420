//! A kubelet device plugin (API v1beta1) for the simulated GPUs: serves `DevicePlugin` on a unix
//! socket in the kubelet's device-plugin directory, registers it on the kubelet's socket, and serves
//! and registers again whenever the kubelet restarts. With it, the real scheduler places pods that
//! request GPUs on a node without any, the real kubelet allocates them, and its pod-resources API
//! reports which pod holds which simulated GPU. Does socket and file IO.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::UnixListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::{ReceiverStream, UnixListenerStream};
use tonic::{Request, Response, Status};

use kilowatt_agent_core::backoff::{Backoff, Jitter};
use kilowatt_agent_core::gpu::GpuInfo;
use kilowatt_plumbing::errors::error_chain;

use crate::unix_grpc;
use proto::device_plugin_server::{DevicePlugin, DevicePluginServer};
use proto::registration_client::RegistrationClient;
use proto::{
    AllocateRequest, AllocateResponse, ContainerAllocateResponse, Device, DevicePluginOptions,
    Empty, ListAndWatchResponse, PreStartContainerRequest, PreStartContainerResponse,
    PreferredAllocationRequest, PreferredAllocationResponse, RegisterRequest,
};

/// Code generated from `proto/deviceplugin.proto` (package `v1beta1`): client and server of the
/// kubelet's `Registration` and of `DevicePlugin`.
pub mod proto {
    tonic::include_proto!("v1beta1");
}

/// The device plugin API version the agent speaks, as sent in `Register`.
pub const API_VERSION: &str = "v1beta1";
/// Where the kubelet looks for device plugins' sockets and serves its own.
pub const DEFAULT_DIR: &str = "/var/lib/kubelet/device-plugins";
/// The kubelet's registration socket, in the device-plugin directory.
pub const KUBELET_SOCKET: &str = "kubelet.sock";
/// The agent's plugin socket, in the device-plugin directory (the `endpoint` it registers).
pub const PLUGIN_SOCKET: &str = "kilowatt-sim.sock";
/// The health of every simulated GPU: they never fail.
pub const HEALTHY: &str = "Healthy";
/// The variable `Allocate` sets to the allocated ids, comma-separated, as NVIDIA's device plugin
/// does: a container sees which GPUs it got. No device node is handed out, for there is none.
pub const VISIBLE_DEVICES_ENV: &str = "NVIDIA_VISIBLE_DEVICES";
/// How often the plugin checks that its socket is still there: a restarting kubelet deletes every
/// socket in the directory, and a plugin learns of the restart only by that.
pub const SOCKET_CHECK_PERIOD: Duration = Duration::from_secs(1);
/// How long `Register` may take; the kubelet dials the plugin back and asks its options meanwhile.
const REGISTER_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the plugin is not registered with the kubelet. Each is retried with backoff.
#[derive(Debug, thiserror::Error)]
pub enum DevicePluginError {
    #[error(
        "the kubelet's device-plugin directory {} does not exist (in a pod, the agent needs a \
         hostPath mount of /var/lib/kubelet/device-plugins)",
        dir.display()
    )]
    MissingDirectory { dir: PathBuf },
    #[error("listen on the device plugin socket {}", socket.display())]
    Listen {
        socket: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("connect to the kubelet's registration socket {}", socket.display())]
    ConnectKubelet {
        socket: PathBuf,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("register {resource_name} with the kubelet on {}", socket.display())]
    Register {
        socket: PathBuf,
        resource_name: String,
        #[source]
        source: Status,
    },
    #[error(
        "the kubelet on {} did not answer the registration within {timeout:?}",
        socket.display()
    )]
    RegisterTimeout { socket: PathBuf, timeout: Duration },
}

/// The device plugin of one node's simulated GPUs: where it serves, what it advertises.
#[derive(Debug, Clone)]
pub struct SimulatedDevicePlugin {
    dir: PathBuf,
    resource_name: String,
    device_ids: Arc<[String]>,
}

impl SimulatedDevicePlugin {
    /// The plugin for `gpus`, advertised as `resource_name` in the kubelet's device-plugin directory
    /// `dir`. NB: each GPU's device id is its UUID, the key the agent's pod-resources mapping
    /// ([`crate::pod_resources::pods_by_gpu`]) and its inventory match a pod's devices to GPUs by.
    pub fn new(dir: PathBuf, resource_name: String, gpus: &[GpuInfo]) -> Self {
        Self {
            dir,
            resource_name,
            device_ids: gpus.iter().map(|gpu| gpu.uuid.clone()).collect(),
        }
    }

    /// The plugin's socket: [`PLUGIN_SOCKET`] in the device-plugin directory.
    pub fn socket(&self) -> PathBuf {
        self.dir.join(PLUGIN_SOCKET)
    }

    /// Serves the plugin on [`SimulatedDevicePlugin::socket`] (replacing a socket a previous run left
    /// there), then registers it with the kubelet: one attempt. On failure nothing is left serving.
    pub async fn start(&self) -> Result<Serving, DevicePluginError> {
        if !self.dir.is_dir() {
            return Err(DevicePluginError::MissingDirectory {
                dir: self.dir.clone(),
            });
        }
        let serving = self.serve()?;
        self.register().await?;
        Ok(serving)
    }

    fn serve(&self) -> Result<Serving, DevicePluginError> {
        let socket = self.socket();
        let listen_error = |source| DevicePluginError::Listen {
            socket: socket.clone(),
            source,
        };
        // NB: a socket file outlives its process; a previous agent's would make bind fail.
        remove_socket(&socket).map_err(listen_error)?;
        let listener = UnixListener::bind(&socket).map_err(listen_error)?;
        let (stop, stopped) = watch::channel(());
        let service = Devices {
            ids: self.device_ids.clone(),
            stopped: stopped.clone(),
        };
        let mut server_stopped = stopped;
        let server = tonic::transport::Server::builder()
            .add_service(DevicePluginServer::new(service))
            .serve_with_incoming_shutdown(UnixListenerStream::new(listener), async move {
                // Ends when the sender is dropped: `changed` then fails.
                while server_stopped.changed().await.is_ok() {}
            });
        Ok(Serving {
            socket,
            _stop: stop,
            server: tokio::spawn(server),
        })
    }

    async fn register(&self) -> Result<(), DevicePluginError> {
        let socket = self.dir.join(KUBELET_SOCKET);
        let call = async {
            let channel = unix_grpc::connect(&socket).await.map_err(|source| {
                DevicePluginError::ConnectKubelet {
                    socket: socket.clone(),
                    source,
                }
            })?;
            RegistrationClient::new(channel)
                .register(RegisterRequest {
                    version: API_VERSION.to_owned(),
                    endpoint: PLUGIN_SOCKET.to_owned(),
                    resource_name: self.resource_name.clone(),
                    options: Some(plugin_options()),
                })
                .await
                .map_err(|source| DevicePluginError::Register {
                    socket: socket.clone(),
                    resource_name: self.resource_name.clone(),
                    source,
                })
        };
        match tokio::time::timeout(REGISTER_TIMEOUT, call).await {
            Ok(registered) => registered.map(drop),
            Err(_) => Err(DevicePluginError::RegisterTimeout {
                socket,
                timeout: REGISTER_TIMEOUT,
            }),
        }
    }

    /// Keeps the plugin registered until `shutdown` resolves, then removes its socket: serves and
    /// registers, retrying with backoff (0.5 s up to 30 s, jittered) while the directory is missing
    /// or the kubelet does not answer or refuses; then checks every [`SOCKET_CHECK_PERIOD`] that the
    /// socket is still there, and starts over at once when a restarting kubelet deleted it.
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()>) {
        let mut shutdown = std::pin::pin!(shutdown);
        let mut backoff = Backoff::default();
        let mut jitter = Jitter::new(jitter_seed(&self.socket()));
        loop {
            let started = tokio::select! {
                _ = &mut shutdown => return,
                started = self.start() => started,
            };
            match started {
                Ok(mut serving) => {
                    backoff.succeeded();
                    tracing::info!(
                        socket = %serving.socket.display(),
                        resource = %self.resource_name,
                        devices = self.device_ids.len(),
                        "registered the simulated GPUs with the kubelet"
                    );
                    let lost = tokio::select! {
                        _ = &mut shutdown => return,
                        lost = serving.until_lost() => lost,
                    };
                    tracing::warn!(
                        reason = lost,
                        "serving and registering the device plugin again"
                    );
                    // NB: dropped before the next bind, as it removes the socket path.
                    drop(serving);
                }
                Err(error) => {
                    let retry = backoff.failed(jitter.draw());
                    tracing::warn!(error = %error_chain(&error), ?retry, "the kubelet does not know the simulated GPUs; retrying");
                    tokio::select! {
                        _ = &mut shutdown => return,
                        _ = tokio::time::sleep(retry) => {}
                    }
                }
            }
        }
    }
}

/// A plugin being served; dropping it stops the server, ends every `ListAndWatch` stream and
/// removes the socket.
#[derive(Debug)]
pub struct Serving {
    socket: PathBuf,
    /// Dropping it stops the server and the streams.
    _stop: watch::Sender<()>,
    server: JoinHandle<Result<(), tonic::transport::Error>>,
}

impl Serving {
    /// Resolves when the socket is gone (a kubelet restart) or the server stopped, saying which.
    async fn until_lost(&mut self) -> &'static str {
        let mut check = tokio::time::interval(SOCKET_CHECK_PERIOD);
        loop {
            tokio::select! {
                _ = check.tick() => {
                    // NB: one stat of a local path: too short to need a blocking thread.
                    if std::fs::symlink_metadata(&self.socket)
                        .is_err_and(|e| e.kind() == std::io::ErrorKind::NotFound)
                    {
                        return "the plugin socket was deleted: the kubelet restarted";
                    }
                }
                ended = &mut self.server => {
                    match ended {
                        Ok(Ok(())) => {}
                        Ok(Err(error)) => tracing::warn!(error = %error_chain(&error), "the plugin server failed"),
                        Err(error) => tracing::warn!(%error, "the plugin server task failed"),
                    }
                    return "the plugin server stopped";
                }
            }
        }
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        if let Err(error) = remove_socket(&self.socket) {
            tracing::warn!(socket = %self.socket.display(), %error, "cannot remove the device plugin socket");
        }
    }
}

/// Removes `socket` if it exists.
fn remove_socket(socket: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(socket) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        removed => removed,
    }
}

/// The options registered and answered: the kubelet need not call `PreStartContainer`, and picks
/// devices itself (simulated GPUs have no topology to prefer).
fn plugin_options() -> DevicePluginOptions {
    DevicePluginOptions {
        pre_start_required: false,
        get_preferred_allocation_available: false,
    }
}

/// A seed of its own for each agent process, so that plugins a kubelet restart sent retrying
/// together spread out.
fn jitter_seed(socket: &Path) -> u64 {
    use std::hash::BuildHasher;
    std::collections::hash_map::RandomState::new().hash_one((socket, std::process::id()))
}

/// The `DevicePlugin` service: the simulated GPUs, every one healthy, by id.
struct Devices {
    ids: Arc<[String]>,
    /// Changes (fails) when the plugin stops: open `ListAndWatch` streams end then, so that the
    /// server's graceful shutdown does not wait for them forever.
    stopped: watch::Receiver<()>,
}

#[tonic::async_trait]
impl DevicePlugin for Devices {
    async fn get_device_plugin_options(
        &self,
        _: Request<Empty>,
    ) -> Result<Response<DevicePluginOptions>, Status> {
        Ok(Response::new(plugin_options()))
    }

    type ListAndWatchStream = ReceiverStream<Result<ListAndWatchResponse, Status>>;

    async fn list_and_watch(
        &self,
        _: Request<Empty>,
    ) -> Result<Response<Self::ListAndWatchStream>, Status> {
        let devices = self
            .ids
            .iter()
            .map(|id| Device {
                id: id.clone(),
                health: HEALTHY.to_owned(),
                topology: None,
            })
            .collect();
        let (updates, stream) = mpsc::channel(1);
        let mut stopped = self.stopped.clone();
        tokio::spawn(async move {
            if updates
                .send(Ok(ListAndWatchResponse { devices }))
                .await
                .is_err()
            {
                return;
            }
            // NB: the kubelet reads the end of the stream as the plugin gone, so it stays open with
            // nothing more to say (simulated GPUs never change) until the kubelet hangs up or the
            // plugin stops.
            tokio::select! {
                _ = updates.closed() => {}
                _ = async { while stopped.changed().await.is_ok() {} } => {}
            }
        });
        Ok(Response::new(ReceiverStream::new(stream)))
    }

    async fn get_preferred_allocation(
        &self,
        _: Request<PreferredAllocationRequest>,
    ) -> Result<Response<PreferredAllocationResponse>, Status> {
        Err(Status::unimplemented(
            "simulated GPUs have no topology to prefer; the plugin's options say so",
        ))
    }

    async fn allocate(
        &self,
        request: Request<AllocateRequest>,
    ) -> Result<Response<AllocateResponse>, Status> {
        let container_responses = request
            .into_inner()
            .container_requests
            .into_iter()
            .map(|container| {
                if let Some(unknown) = container
                    .devices_ids
                    .iter()
                    .find(|id| !self.ids.contains(id))
                {
                    return Err(Status::invalid_argument(format!(
                        "no simulated GPU {unknown} on this node; it has {}",
                        self.ids.join(", ")
                    )));
                }
                Ok(ContainerAllocateResponse {
                    envs: HashMap::from([(
                        VISIBLE_DEVICES_ENV.to_owned(),
                        container.devices_ids.join(","),
                    )]),
                    ..Default::default()
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(Response::new(AllocateResponse {
            container_responses,
        }))
    }

    async fn pre_start_container(
        &self,
        _: Request<PreStartContainerRequest>,
    ) -> Result<Response<PreStartContainerResponse>, Status> {
        // Nothing to prepare on a simulated GPU; the options tell the kubelet not to ask.
        Ok(Response::new(PreStartContainerResponse {}))
    }
}
