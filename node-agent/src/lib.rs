//! The node agent process (`kilowatt-agent`): the IO around the pure core in `kilowatt_agent_core` —
//! the etcd session that receives plans and writes acknowledgements ([`agent`]), the node's etcd
//! credentials ([`credentials`]), the kubelet's pod-resources API ([`pod_resources`]), the device
//! plugin that shows simulated GPUs to the kubelet ([`device_plugin`]), both over the kubelet's unix
//! sockets ([`unix_grpc`]), the NVML and file-backed GPU backends ([`gpu`]), the pods' work counters
//! it scrapes ([`scrape`]) and the HTTP endpoints of its metrics ([`http`]).

pub mod agent;
pub mod credentials;
pub mod device_plugin;
pub mod gpu;
pub mod http;
pub mod pod_resources;
pub mod scrape;
pub mod unix_grpc;
