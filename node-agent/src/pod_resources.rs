//! Asks the kubelet which pod holds each GPU, through its pod-resources gRPC API; does IO over the
//! kubelet's unix socket.

use std::path::{Path, PathBuf};
use std::time::Duration;

use proto::pod_resources_lister_client::PodResourcesListerClient;
use proto::{ListPodResourcesRequest, ListPodResourcesResponse};

use kilowatt_agent_core::driver::PodName;
use kilowatt_agent_core::telemetry;

use crate::unix_grpc;

/// Code generated from `proto/podresources.proto` (package `v1`): client and server of the
/// kubelet's `PodResourcesLister`.
pub mod proto {
    tonic::include_proto!("v1");
}

/// One device of the asked-for resource and the container the kubelet assigned it to.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GpuAssignment {
    /// The id the device plugin reported, e.g. a GPU UUID for the NVIDIA device plugin (with a
    /// `::N` replica suffix when the plugin time-slices a GPU).
    pub device_id: String,
    /// Namespace of the pod holding the device.
    pub namespace: String,
    /// Name of the pod holding the device.
    pub pod: String,
    /// Name of the container, within that pod, the device was assigned to.
    pub container: String,
}

/// Why the kubelet could not be asked.
#[derive(Debug, thiserror::Error)]
pub enum PodResourcesError {
    #[error(
        "connect to the kubelet pod-resources socket {} \
         (the agent needs a hostPath mount of /var/lib/kubelet/pod-resources)",
        socket.display()
    )]
    Connect {
        socket: PathBuf,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("list pod resources from the kubelet")]
    Call {
        #[source]
        source: tonic::Status,
    },
    #[error(
        "kubelet pod-resources socket {} did not answer within {timeout:?}",
        socket.display()
    )]
    Timeout { socket: PathBuf, timeout: Duration },
}

impl PodResourcesError {
    /// Every value [`PodResourcesError::category`] returns.
    pub const CATEGORIES: [&'static str; 3] = telemetry::POD_RESOURCES_ERROR_KINDS;

    /// A fixed label for metrics and events: `connect`, `call` or `timeout`.
    pub fn category(&self) -> &'static str {
        match self {
            Self::Connect { .. } => "connect",
            Self::Call { .. } => "call",
            Self::Timeout { .. } => "timeout",
        }
    }
}

/// Lists which container holds each device of `resource_name` (e.g. `"nvidia.com/gpu"`), sorted by
/// device id, by calling `List` on the kubelet socket at `socket`. `timeout` bounds connect and
/// call together. Devices no running container holds are not listed.
pub async fn list_gpu_assignments(
    socket: &Path,
    resource_name: &str,
    timeout: Duration,
) -> Result<Vec<GpuAssignment>, PodResourcesError> {
    let response = tokio::time::timeout(timeout, list(socket))
        .await
        .map_err(|_| PodResourcesError::Timeout {
            socket: socket.to_path_buf(),
            timeout,
        })??;
    Ok(gpu_assignments(response, resource_name))
}

async fn list(socket: &Path) -> Result<ListPodResourcesResponse, PodResourcesError> {
    let channel =
        unix_grpc::connect(socket)
            .await
            .map_err(|source| PodResourcesError::Connect {
                socket: socket.to_path_buf(),
                source,
            })?;
    let response = PodResourcesListerClient::new(channel)
        .list(ListPodResourcesRequest {})
        .await
        .map_err(|source| PodResourcesError::Call { source })?;
    Ok(response.into_inner())
}

fn gpu_assignments(response: ListPodResourcesResponse, resource_name: &str) -> Vec<GpuAssignment> {
    let mut assignments = Vec::new();
    for pod in response.pod_resources {
        for container in pod.containers {
            let devices = container
                .devices
                .into_iter()
                .filter(|devices| devices.resource_name == resource_name);
            for device_id in devices.flat_map(|devices| devices.device_ids) {
                assignments.push(GpuAssignment {
                    device_id,
                    namespace: pod.namespace.clone(),
                    pod: pod.name.clone(),
                    container: container.name.clone(),
                });
            }
        }
    }
    assignments.sort();
    assignments
}

/// Which pods hold each GPU, by GPU UUID: device ids with a time-slicing replica suffix (`::N`) count
/// for the GPU itself, and a pod appears once per GPU however many replicas it holds.
pub fn pods_by_gpu(
    assignments: &[GpuAssignment],
) -> std::collections::BTreeMap<String, Vec<PodName>> {
    let mut pods: std::collections::BTreeMap<String, Vec<PodName>> = Default::default();
    for assignment in assignments {
        let uuid = assignment
            .device_id
            .split_once("::")
            .map_or(assignment.device_id.as_str(), |(uuid, _)| uuid);
        let holders = pods.entry(uuid.to_owned()).or_default();
        let pod = format!("{}/{}", assignment.namespace, assignment.pod);
        if !holders.contains(&pod) {
            holders.push(pod);
        }
    }
    pods
}

#[cfg(test)]
mod tests {
    use super::proto::{ContainerDevices, ContainerResources, PodResources};
    use super::*;

    fn devices(resource_name: &str, ids: &[&str]) -> ContainerDevices {
        ContainerDevices {
            resource_name: resource_name.to_string(),
            device_ids: ids.iter().map(|id| id.to_string()).collect(),
            topology: None,
        }
    }

    #[test]
    fn only_devices_of_the_asked_resource_are_kept_sorted_by_device_id() {
        let response = ListPodResourcesResponse {
            pod_resources: vec![PodResources {
                name: "train".to_string(),
                namespace: "ml".to_string(),
                containers: vec![ContainerResources {
                    name: "worker".to_string(),
                    devices: vec![
                        devices("nvidia.com/gpu", &["GPU-b", "GPU-a"]),
                        devices("example.com/nic", &["nic-0"]),
                    ],
                    ..Default::default()
                }],
            }],
        };
        let ids: Vec<_> = gpu_assignments(response, "nvidia.com/gpu")
            .into_iter()
            .map(|a| a.device_id)
            .collect();
        assert_eq!(ids, ["GPU-a", "GPU-b"]);
    }

    #[test]
    fn time_sliced_replicas_count_for_their_gpu_and_each_pod_once() {
        let assignment = |device: &str, pod: &str| GpuAssignment {
            device_id: device.to_string(),
            namespace: "ml".to_string(),
            pod: pod.to_string(),
            container: "main".to_string(),
        };
        let pods = pods_by_gpu(&[
            assignment("GPU-a::0", "serve"),
            assignment("GPU-a::1", "serve"),
            assignment("GPU-a::2", "batch"),
            assignment("GPU-b", "train"),
        ]);
        assert_eq!(pods["GPU-a"], ["ml/serve", "ml/batch"]);
        assert_eq!(pods["GPU-b"], ["ml/train"]);
        assert_eq!(pods.len(), 2);
    }
}
