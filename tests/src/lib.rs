//! Test harness: a real Kubernetes control plane on 127.0.0.1 — upstream kube-apiserver built from the
//! pinned Go module in `tests/apiserver/`, backed by a real etcd — with a kubeconfig for it, and what the
//! cluster and fault tests share: cluster objects and the operator, in-process agents, the fault
//! suite's fleet of agent processes, network namespaces, a freezable TCP proxy and the cap sampler.
//! Does process, file and network IO; everything it starts is stopped when dropped.

pub mod agents;
pub mod apiserver;
pub mod cluster;
pub mod etcd;
pub mod fleet;
pub mod netns;
pub mod pki;
pub mod processes;
pub mod prometheus;
pub mod proxy;
pub mod sampler;
pub mod vtn;
pub mod waits;

pub use agents::*;
pub use apiserver::*;
pub use cluster::*;
pub use etcd::*;
pub use fleet::*;
pub use netns::*;
pub use pki::*;
pub use processes::*;
pub use proxy::*;
pub use sampler::*;
pub use waits::*;
