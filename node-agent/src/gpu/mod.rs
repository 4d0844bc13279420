//! The agent's GPU backends that do IO: NVML ([`nvml`], the only code that talks to NVML) and the
//! file-backed simulated GPUs of the fault suite ([`settings_file`]). The trait and the in-memory
//! simulated GPUs are in `kilowatt_agent_core::gpu`.

pub mod nvml;
pub mod settings_file;
