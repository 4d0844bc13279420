//! The GPU boundary of the node agent: one small synchronous trait, [`GpuBackend`], that returns owned
//! snapshots, and the simulated backend ([`simulated`]); the NVML backend lives in the agent binary
//! (`kilowatt-agent`'s `gpu::nvml`), the only code that talks to NVML. This module does no IO.
//!
//! NB: every backend call may block (NVML talks to the kernel driver), so async callers run them on
//! `spawn_blocking`.

pub mod simulated;

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// What a GPU is and which settings it accepts, read once at start-up.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GpuInfo {
    /// Index as the driver numbers the GPUs on this node (`nvidia-smi -L`).
    pub index: u32,
    pub uuid: String,
    /// Model name as the driver reports it, e.g. `NVIDIA H100 80GB HBM3`.
    pub model: String,
    /// Lowest power limit the GPU accepts.
    pub min_limit_watts: f64,
    /// Highest power limit the GPU accepts.
    pub max_limit_watts: f64,
    /// The limit the GPU boots with.
    pub default_limit_watts: f64,
    /// SM clocks the GPU can be locked to, ascending; empty when clocks cannot be locked or listed.
    #[serde(rename = "supportedSmClocksMHz")]
    pub supported_sm_clocks_mhz: Vec<u32>,
}

/// One reading of a GPU. A reading the GPU does not support is `None`, not an error.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GpuReading {
    /// Current draw.
    pub power_watts: Option<f64>,
    /// Energy counter since the driver (or the simulation) started; only ever increases.
    pub energy_joules: Option<f64>,
    /// The limit the GPU enforces right now.
    pub power_limit_watts: Option<f64>,
    pub sm_clock_mhz: Option<u32>,
    /// Share of the last sample period in which a kernel ran.
    pub utilization_percent: Option<u32>,
    /// Why clocks are held down, as short names such as `sw_power_cap` (the power limit holds the draw).
    pub throttle_reasons: Vec<&'static str>,
    /// Whether the driver keeps the GPU initialised without a client (persistence mode). NB: without
    /// it the driver may unload between clients and the GPU come back at its default limit.
    pub persistence_mode: Option<bool>,
}

/// A GPU operation that failed. `operation` reads as a gerund phrase, e.g. "setting the power limit".
#[derive(Debug, thiserror::Error)]
pub enum GpuError {
    #[error("{message}")]
    DriverMissing { message: String },
    #[error("{operation} of GPU {index} needs root or CAP_SYS_ADMIN; run the agent privileged")]
    NoPermission { operation: &'static str, index: u32 },
    #[error(
        "{operation} is not supported by GPU {index} or its driver; give this GPU's workloads a profile that does not need it"
    )]
    NotSupported { operation: &'static str, index: u32 },
    #[error("there is no GPU {index} on this node; compare the plan with the node's GPU inventory")]
    NoSuchGpu { index: u32 },
    #[error("{operation} of GPU {index} failed: {message}")]
    Failed {
        operation: &'static str,
        index: u32,
        message: String,
    },
    /// The simulated GPUs' settings file (`--simulated-settings-file`) could not be used.
    #[error("{action} the simulated GPU settings file {}: {message}", path.display())]
    SettingsFile {
        action: &'static str,
        path: std::path::PathBuf,
        message: String,
    },
    /// A GPU's limit range no limit fits in (not finite, or not 0 < min <= max).
    #[error(transparent)]
    InvalidBounds(#[from] crate::protocol::InvalidBounds),
}

impl GpuError {
    /// Every value [`GpuError::category`] returns.
    pub const CATEGORIES: [&'static str; 7] = [
        "driver_missing",
        "no_permission",
        "not_supported",
        "no_such_gpu",
        "failed",
        "settings_file",
        "invalid_bounds",
    ];

    /// A fixed label for metrics and events: `driver_missing`, `no_permission`, `not_supported`,
    /// `no_such_gpu`, `failed`, `settings_file` or `invalid_bounds`.
    pub fn category(&self) -> &'static str {
        match self {
            Self::DriverMissing { .. } => "driver_missing",
            Self::NoPermission { .. } => "no_permission",
            Self::NotSupported { .. } => "not_supported",
            Self::NoSuchGpu { .. } => "no_such_gpu",
            Self::Failed { .. } => "failed",
            Self::SettingsFile { .. } => "settings_file",
            Self::InvalidBounds(_) => "invalid_bounds",
        }
    }
}

/// The GPUs of one node, real or simulated. Calls are synchronous and may block.
pub trait GpuBackend: Send {
    /// `"nvml"` or `"simulated"`.
    fn name(&self) -> &'static str;

    /// Every GPU on the node, by index.
    fn inventory(&self) -> Result<Vec<GpuInfo>, GpuError>;

    /// The limit the GPU enforces, read back from the device.
    fn power_limit_watts(&self, index: u32) -> Result<f64, GpuError>;

    /// Sets the power limit. The caller clamps to the device range first (the agent's protocol does);
    /// a value outside it is rejected with [`GpuError::Failed`].
    fn set_power_limit_watts(&mut self, index: u32, watts: f64) -> Result<(), GpuError>;

    /// Locks the SM clock to `mhz` (minimum and maximum both).
    fn lock_sm_clock(&mut self, index: u32, mhz: u32) -> Result<(), GpuError>;

    /// Lets the SM clock float again.
    fn reset_sm_clock(&mut self, index: u32) -> Result<(), GpuError>;

    /// Power, energy, limit, clock, utilisation and throttle reasons right now.
    fn read(&self, index: u32) -> Result<GpuReading, GpuError>;

    /// Simulated GPUs integrate energy and throughput up to `now` (time since the agent started);
    /// real GPUs keep their own time, so NVML ignores it.
    fn advance(&mut self, now: Duration);

    /// How long a new limit takes to read back: a driven agent reads limits back this long after
    /// setting them (the agent process polls instead). Zero unless a simulation says otherwise.
    fn settle_time(&self) -> Duration {
        Duration::ZERO
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h100() -> GpuInfo {
        GpuInfo {
            index: 0,
            uuid: "GPU-0".into(),
            model: "H100-SXM".into(),
            min_limit_watts: 200.0,
            max_limit_watts: 700.0,
            default_limit_watts: 700.0,
            supported_sm_clocks_mhz: vec![990, 1980],
        }
    }

    #[test]
    fn permission_errors_say_how_to_fix_them() {
        let error = GpuError::NoPermission {
            operation: "setting the power limit",
            index: 0,
        };
        assert_eq!(
            error.to_string(),
            "setting the power limit of GPU 0 needs root or CAP_SYS_ADMIN; run the agent privileged"
        );
        assert_eq!(error.category(), "no_permission");
    }

    #[test]
    fn gpu_info_serialises_in_camel_case() {
        let json = serde_json::to_value(h100()).expect("serialises");
        assert_eq!(json["minLimitWatts"], 200.0);
        assert_eq!(json["supportedSmClocksMHz"][1], 1980);
        let back: GpuInfo = serde_json::from_value(json).expect("deserialises");
        assert_eq!(back, h100());
    }
}
