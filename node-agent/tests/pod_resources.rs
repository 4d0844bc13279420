//! The pod-resources client against a fake kubelet: a tonic `PodResourcesLister` server on a unix
//! socket in a temporary directory. Does IO (unix sockets, a temporary directory).

mod common;

use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use common::{Served, TempDir};
use kilowatt_node_agent::pod_resources::proto::pod_resources_lister_server::{
    PodResourcesLister, PodResourcesListerServer,
};
use kilowatt_node_agent::pod_resources::proto::{
    AllocatableResourcesRequest, AllocatableResourcesResponse, ContainerDevices,
    ContainerResources, GetPodResourcesRequest, GetPodResourcesResponse, ListPodResourcesRequest,
    ListPodResourcesResponse, PodResources,
};
use kilowatt_node_agent::pod_resources::{GpuAssignment, PodResourcesError, list_gpu_assignments};
use tokio::net::UnixListener;
use tonic::{Request, Response, Status};

const GPU: &str = "nvidia.com/gpu";
/// Bounds every await in these tests, and the client's own connect-and-call.
const LIMIT: Duration = Duration::from_secs(10);

/// A kubelet that answers `List` with a fixed response, or refuses with `UNAVAILABLE` when it has
/// none.
struct FakeKubelet {
    list: Option<ListPodResourcesResponse>,
}

#[tonic::async_trait]
impl PodResourcesLister for FakeKubelet {
    async fn list(
        &self,
        _: Request<ListPodResourcesRequest>,
    ) -> Result<Response<ListPodResourcesResponse>, Status> {
        match &self.list {
            Some(list) => Ok(Response::new(list.clone())),
            None => Err(Status::unavailable("kubelet is restarting")),
        }
    }

    async fn get_allocatable_resources(
        &self,
        _: Request<AllocatableResourcesRequest>,
    ) -> Result<Response<AllocatableResourcesResponse>, Status> {
        Err(Status::unimplemented("not used by kilowatt-agent"))
    }

    async fn get(
        &self,
        _: Request<GetPodResourcesRequest>,
    ) -> Result<Response<GetPodResourcesResponse>, Status> {
        Err(Status::unimplemented("not used by kilowatt-agent"))
    }
}

/// The fake kubelet's pod-resources API on `socket`.
fn serve(socket: &Path, kubelet: FakeKubelet) -> anyhow::Result<Served> {
    Served::start(
        socket,
        tonic::service::Routes::new(PodResourcesListerServer::new(kubelet)),
    )
}

fn devices(resource_name: &str, ids: &[&str]) -> ContainerDevices {
    ContainerDevices {
        resource_name: resource_name.to_string(),
        device_ids: ids.iter().map(|id| id.to_string()).collect(),
        topology: None,
    }
}

fn container(name: &str, devices: Vec<ContainerDevices>) -> ContainerResources {
    ContainerResources {
        name: name.to_string(),
        devices,
        cpu_ids: vec![2, 3],
        ..Default::default()
    }
}

fn pod(namespace: &str, name: &str, containers: Vec<ContainerResources>) -> PodResources {
    PodResources {
        name: name.to_string(),
        namespace: namespace.to_string(),
        containers,
    }
}

fn assignment(device_id: &str, namespace: &str, pod: &str, container: &str) -> GpuAssignment {
    GpuAssignment {
        device_id: device_id.to_string(),
        namespace: namespace.to_string(),
        pod: pod.to_string(),
        container: container.to_string(),
    }
}

/// Three pods: one with two GPUs and a NIC in one container, one with a GPU in one of two
/// containers, one with no devices at all.
fn node_with_three_pods() -> ListPodResourcesResponse {
    ListPodResourcesResponse {
        pod_resources: vec![
            pod(
                "ml",
                "train-0",
                vec![container(
                    "worker",
                    vec![
                        devices(GPU, &["GPU-bbbb", "GPU-aaaa"]),
                        devices("example.com/nic", &["nic-0"]),
                    ],
                )],
            ),
            pod(
                "inference",
                "serve-1",
                vec![
                    container("model", vec![devices(GPU, &["GPU-cccc"])]),
                    container("sidecar", vec![]),
                ],
            ),
            pod("web", "frontend", vec![container("nginx", vec![])]),
        ],
    }
}

#[tokio::test]
async fn each_gpu_is_mapped_to_the_container_holding_it_and_other_devices_are_ignored()
-> anyhow::Result<()> {
    let dir = TempDir::new("maps-gpus")?;
    let socket = dir.join("kubelet.sock");
    let served = serve(
        &socket,
        FakeKubelet {
            list: Some(node_with_three_pods()),
        },
    )?;

    let listed = list_gpu_assignments(&socket, GPU, LIMIT).await;
    served.stop().await?;

    assert_eq!(
        listed?,
        [
            assignment("GPU-aaaa", "ml", "train-0", "worker"),
            assignment("GPU-bbbb", "ml", "train-0", "worker"),
            assignment("GPU-cccc", "inference", "serve-1", "model"),
        ]
    );
    Ok(())
}

#[tokio::test]
async fn a_node_without_pods_has_no_assignments() -> anyhow::Result<()> {
    let dir = TempDir::new("no-pods")?;
    let socket = dir.join("kubelet.sock");
    let served = serve(
        &socket,
        FakeKubelet {
            list: Some(ListPodResourcesResponse::default()),
        },
    )?;

    let listed = list_gpu_assignments(&socket, GPU, LIMIT).await;
    served.stop().await?;

    assert_eq!(listed?, []);
    Ok(())
}

#[tokio::test]
async fn a_missing_socket_is_a_connect_error_naming_the_path_and_the_mount() -> anyhow::Result<()> {
    let dir = TempDir::new("missing-socket")?;
    let socket = dir.join("kubelet.sock");

    let Err(err) = list_gpu_assignments(&socket, GPU, LIMIT).await else {
        anyhow::bail!("listing through a missing socket succeeded");
    };

    assert!(
        matches!(&err, PodResourcesError::Connect { socket: s, .. } if *s == socket),
        "{err:?}"
    );
    assert_eq!(err.category(), "connect");
    let message = err.to_string();
    assert!(message.contains(&socket.display().to_string()), "{message}");
    assert!(
        message.contains("/var/lib/kubelet/pod-resources"),
        "{message}"
    );
    Ok(())
}

#[tokio::test]
async fn a_kubelet_refusing_the_call_is_a_call_error_with_its_status() -> anyhow::Result<()> {
    let dir = TempDir::new("refused")?;
    let socket = dir.join("kubelet.sock");
    let served = serve(&socket, FakeKubelet { list: None })?;

    let listed = list_gpu_assignments(&socket, GPU, LIMIT).await;
    served.stop().await?;

    let Err(err) = listed else {
        anyhow::bail!("a refused List call succeeded");
    };
    assert_eq!(err.category(), "call");
    let PodResourcesError::Call { source } = &err else {
        anyhow::bail!("expected a call error, got {err:?}");
    };
    assert_eq!(source.code(), tonic::Code::Unavailable);
    assert_eq!(source.message(), "kubelet is restarting");
    Ok(())
}

#[tokio::test]
async fn a_kubelet_that_never_answers_times_out_instead_of_hanging() -> anyhow::Result<()> {
    let dir = TempDir::new("silent")?;
    let socket = dir.join("kubelet.sock");
    // Bound but never accepted: the connection lands in the backlog and nothing ever replies.
    let _listener = UnixListener::bind(&socket)?;
    let timeout = Duration::from_millis(200);

    let listed = tokio::time::timeout(LIMIT, list_gpu_assignments(&socket, GPU, timeout))
        .await
        .context("the client's own timeout did not fire")?;

    let Err(err) = listed else {
        anyhow::bail!("a silent kubelet answered");
    };
    assert_eq!(err.category(), "timeout");
    assert!(
        matches!(&err, PodResourcesError::Timeout { timeout: t, .. } if *t == timeout),
        "{err:?}"
    );
    Ok(())
}
