//! The node agent's pure core, shared by the `kilowatt-agent` process and `kilowatt simulate`: the plan
//! protocol state machine ([`protocol`], time passed in), the driver that runs its commands on a GPU
//! backend ([`driver`]), the GPU trait and simulated GPUs ([`gpu`]), the agent's metrics
//! ([`telemetry`]), its timing defaults ([`defaults`]) and its reconnect backoff ([`backoff`]). No async runtime, etcd, NVML or gRPC; the
//! only IO is what a GPU backend does.

pub mod backoff;
pub mod defaults;
pub mod driver;
pub mod gpu;
pub mod protocol;
pub mod telemetry;
pub mod work;
