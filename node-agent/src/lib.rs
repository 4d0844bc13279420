//! The node agent (`kilowatt-agent`): enforces the operator's per-node plan on the GPUs through one
//! backend (NVML or simulated), keeps budgets safe when it loses contact, and reports what it enforces.
//! Modules say whether they do IO; the protocol state machine is pure.

pub mod agent;
pub mod credentials;
pub mod driver;
pub mod gpu;
pub mod pod_resources;
pub mod protocol;
pub mod telemetry;
pub mod tls;
