//! The NVML backend: real NVIDIA GPUs through the driver's management library. Does IO (every call goes
//! to the driver and may block). This is the only file in the repository that imports `nvml_wrapper`.

use std::time::Duration;

use nvml_wrapper::Nvml;
use nvml_wrapper::bitmasks::device::ThrottleReasons;
use nvml_wrapper::device::Device;
use nvml_wrapper::enum_wrappers::device::Clock;
use nvml_wrapper::enums::device::GpuLockedClocksSetting;
use nvml_wrapper::error::NvmlError;

use kilowatt_agent_core::gpu::{GpuBackend, GpuError, GpuInfo, GpuReading};

/// Short names for throttle reasons, as they appear in readings and metric labels.
const THROTTLE_REASON_NAMES: [(ThrottleReasons, &str); 9] = [
    (ThrottleReasons::GPU_IDLE, "gpu_idle"),
    (
        ThrottleReasons::APPLICATIONS_CLOCKS_SETTING,
        "applications_clocks",
    ),
    (ThrottleReasons::SW_POWER_CAP, "sw_power_cap"),
    (ThrottleReasons::HW_SLOWDOWN, "hw_slowdown"),
    (ThrottleReasons::SYNC_BOOST, "sync_boost"),
    (ThrottleReasons::SW_THERMAL_SLOWDOWN, "sw_thermal_slowdown"),
    (ThrottleReasons::HW_THERMAL_SLOWDOWN, "hw_thermal_slowdown"),
    (
        ThrottleReasons::HW_POWER_BRAKE_SLOWDOWN,
        "hw_power_brake_slowdown",
    ),
    (ThrottleReasons::DISPLAY_CLOCK_SETTING, "display_clock"),
];

/// The GPUs of this node through NVML. Devices are looked up by index on every call because an NVML
/// device handle borrows the library handle.
pub struct NvmlBackend {
    nvml: Nvml,
}

impl NvmlBackend {
    /// Loads and initialises NVML; fails with [`GpuError::DriverMissing`] when there is no usable driver.
    pub fn new() -> Result<Self, GpuError> {
        Self::open(Nvml::init)
    }

    fn open(init: impl FnOnce() -> Result<Nvml, NvmlError>) -> Result<Self, GpuError> {
        init()
            .map(|nvml| Self { nvml })
            .map_err(|error| driver_missing(&error))
    }

    fn device(&self, index: u32) -> Result<Device<'_>, GpuError> {
        self.nvml
            .device_by_index(index)
            .map_err(|error| match error {
                NvmlError::InvalidArg | NvmlError::NotFound => GpuError::NoSuchGpu { index },
                other => classify("opening the device handle", index, other),
            })
    }
}

impl GpuBackend for NvmlBackend {
    fn name(&self) -> &'static str {
        "nvml"
    }

    fn inventory(&self) -> Result<Vec<GpuInfo>, GpuError> {
        let count = self
            .nvml
            .device_count()
            .map_err(|error| GpuError::DriverMissing {
                message: format!(
                    "NVML could not count the GPUs ({error}): check that nvidia-smi works on this node"
                ),
            })?;
        (0..count)
            .map(|index| {
                let device = self.device(index)?;
                let uuid = device
                    .uuid()
                    .map_err(|e| classify("reading the UUID", index, e))?;
                let model = device
                    .name()
                    .map_err(|e| classify("reading the model name", index, e))?;
                let range = device
                    .power_management_limit_constraints()
                    .map_err(|e| classify("reading the power limit range", index, e))?;
                let default_milliwatts = device
                    .power_management_limit_default()
                    .map_err(|e| classify("reading the default power limit", index, e))?;
                // NB: said once here, and exported per sample (`kilowatt_gpu_persistence_mode`).
                if let Ok(false) = device.is_in_persistent_mode() {
                    tracing::warn!(
                        gpu = index,
                        "persistence mode is off: the driver may unload between clients and reset this GPU's power limit to its default; enable it (nvidia-smi -pm 1 or nvidia-persistenced)"
                    );
                }
                Ok(GpuInfo {
                    index,
                    uuid,
                    model,
                    min_limit_watts: watts(range.min_limit),
                    max_limit_watts: watts(range.max_limit),
                    default_limit_watts: watts(default_milliwatts),
                    supported_sm_clocks_mhz: supported_sm_clocks(&device, index)?,
                })
            })
            .collect()
    }

    fn power_limit_watts(&self, index: u32) -> Result<f64, GpuError> {
        let device = self.device(index)?;
        // The enforced limit is the lowest of every limit in force (ours, in-band tools, out-of-band
        // management); older GPUs only report the one set through NVML.
        let milliwatts = match device.enforced_power_limit() {
            Err(NvmlError::NotSupported) => device.power_management_limit(),
            other => other,
        }
        .map_err(|e| classify("reading the power limit", index, e))?;
        Ok(watts(milliwatts))
    }

    fn set_power_limit_watts(&mut self, index: u32, watts: f64) -> Result<(), GpuError> {
        const OPERATION: &str = "setting the power limit";
        if !watts.is_finite() || watts <= 0.0 {
            return Err(GpuError::Failed {
                operation: OPERATION,
                index,
                message: format!("{watts} W is not a power limit; clamp the plan's limit first"),
            });
        }
        let mut device = self.device(index)?;
        // Float-to-int `as` saturates; the value is finite and positive here.
        let milliwatts = (watts * 1000.0).round() as u32;
        device
            .set_power_management_limit(milliwatts)
            .map_err(|error| match error {
                NvmlError::InvalidArg => GpuError::Failed {
                    operation: OPERATION,
                    index,
                    message: format!(
                        "NVML rejected {watts} W as outside the GPU's range; the limit must be clamped to the range the inventory reports"
                    ),
                },
                other => classify(OPERATION, index, other),
            })
    }

    fn lock_sm_clock(&mut self, index: u32, mhz: u32) -> Result<(), GpuError> {
        let mut device = self.device(index)?;
        device
            .set_gpu_locked_clocks(GpuLockedClocksSetting::Numeric {
                min_clock_mhz: mhz,
                max_clock_mhz: mhz,
            })
            .map_err(|error| match error {
                NvmlError::InvalidArg => GpuError::Failed {
                    operation: "locking the SM clock",
                    index,
                    message: format!(
                        "NVML rejected {mhz} MHz; lock to one of the GPU's supported SM clocks"
                    ),
                },
                other => classify("locking the SM clock", index, other),
            })
    }

    fn reset_sm_clock(&mut self, index: u32) -> Result<(), GpuError> {
        let mut device = self.device(index)?;
        device
            .reset_gpu_locked_clocks()
            .map_err(|e| classify("resetting the SM clock", index, e))
    }

    fn read(&self, index: u32) -> Result<GpuReading, GpuError> {
        let device = self.device(index)?;
        let power_milliwatts = optional(device.power_usage(), "reading the power draw", index)?;
        let energy_millijoules = optional(
            device.total_energy_consumption(),
            "reading the energy counter",
            index,
        )?;
        let limit_milliwatts = optional(
            match device.enforced_power_limit() {
                Err(NvmlError::NotSupported) => device.power_management_limit(),
                other => other,
            },
            "reading the power limit",
            index,
        )?;
        let sm_clock_mhz = optional(device.clock_info(Clock::SM), "reading the SM clock", index)?;
        let utilization = optional(device.utilization_rates(), "reading the utilisation", index)?;
        let reasons = optional(
            device.current_throttle_reasons(),
            "reading the throttle reasons",
            index,
        )?;
        let persistence_mode = optional(
            device.is_in_persistent_mode(),
            "reading the persistence mode",
            index,
        )?;
        Ok(GpuReading {
            power_watts: power_milliwatts.map(watts),
            // Precision: f64 holds integers exactly up to 2^53 mJ, about 285 years at 1 kW.
            energy_joules: energy_millijoules.map(|mj| mj as f64 / 1000.0),
            power_limit_watts: limit_milliwatts.map(watts),
            sm_clock_mhz,
            utilization_percent: utilization.map(|u| u.gpu),
            throttle_reasons: reasons.map(throttle_reason_names).unwrap_or_default(),
            persistence_mode,
        })
    }

    fn advance(&mut self, _now: Duration) {}
}

fn watts(milliwatts: u32) -> f64 {
    f64::from(milliwatts) / 1000.0
}

/// SM clocks at the highest memory clock, ascending; empty when the GPU cannot list them.
fn supported_sm_clocks(device: &Device<'_>, index: u32) -> Result<Vec<u32>, GpuError> {
    const OPERATION: &str = "listing the supported clocks";
    let Some(memory_clocks) = optional(device.supported_memory_clocks(), OPERATION, index)? else {
        return Ok(Vec::new());
    };
    let Some(&memory_mhz) = memory_clocks.iter().max() else {
        return Ok(Vec::new());
    };
    let mut clocks = optional(
        device.supported_graphics_clocks(memory_mhz),
        OPERATION,
        index,
    )?
    .unwrap_or_default();
    clocks.sort_unstable();
    clocks.dedup();
    Ok(clocks)
}

fn throttle_reason_names(reasons: ThrottleReasons) -> Vec<&'static str> {
    THROTTLE_REASON_NAMES
        .iter()
        .filter(|(flag, _)| reasons.contains(*flag))
        .map(|&(_, name)| name)
        .collect()
}

/// A reading the GPU or driver does not offer becomes `None`; any other failure is an error.
fn optional<T>(
    result: Result<T, NvmlError>,
    operation: &'static str,
    index: u32,
) -> Result<Option<T>, GpuError> {
    match result {
        Ok(value) => Ok(Some(value)),
        Err(
            NvmlError::NotSupported
            | NvmlError::NoData
            | NvmlError::FailedToLoadSymbol(_)
            | NvmlError::FunctionNotFound,
        ) => Ok(None),
        Err(other) => Err(classify(operation, index, other)),
    }
}

fn classify(operation: &'static str, index: u32, error: NvmlError) -> GpuError {
    match error {
        NvmlError::NoPermission => GpuError::NoPermission { operation, index },
        // A symbol missing from the loaded library means a driver too old for the call.
        NvmlError::NotSupported
        | NvmlError::FailedToLoadSymbol(_)
        | NvmlError::FunctionNotFound => GpuError::NotSupported { operation, index },
        NvmlError::GpuLost => GpuError::Failed {
            operation,
            index,
            message: "the GPU fell off the bus; drain the node and check its hardware".into(),
        },
        other => GpuError::Failed {
            operation,
            index,
            message: format!("NVML: {other}"),
        },
    }
}

fn driver_missing(error: &NvmlError) -> GpuError {
    let (detail, hint) = match error {
        NvmlError::LibloadingError(inner) => (
            inner.to_string(),
            "no NVIDIA driver on this machine; use --gpu-backend simulated to run without GPUs",
        ),
        NvmlError::LibraryNotFound => (
            error.to_string(),
            "no NVIDIA driver on this machine; use --gpu-backend simulated to run without GPUs",
        ),
        NvmlError::DriverNotLoaded => (
            error.to_string(),
            "load the NVIDIA kernel driver (nvidia-smi should work), or use --gpu-backend simulated",
        ),
        NvmlError::LibRmVersionMismatch => (
            error.to_string(),
            "the NVML library and the kernel driver differ in version; reload the driver or reboot the node",
        ),
        NvmlError::NoPermission => (
            error.to_string(),
            "give the agent access to /dev/nvidia* (run it privileged)",
        ),
        other => (
            other.to_string(),
            "check that nvidia-smi works on this node, or use --gpu-backend simulated",
        ),
    };
    GpuError::DriverMissing {
        message: format!("NVML is not available ({detail}): {hint}"),
    }
}

#[cfg(test)]
mod tests {
    use std::ffi::OsStr;

    use super::*;

    #[test]
    fn a_missing_library_is_reported_as_a_missing_driver_naming_nvml() {
        let error = match NvmlBackend::open(|| {
            Nvml::builder()
                .lib_path(OsStr::new("/nonexistent/libnvidia-ml.so.1"))
                .init()
        }) {
            Ok(_) => panic!("NVML cannot load from a path that does not exist"),
            Err(error) => error,
        };
        assert_eq!(error.category(), "driver_missing");
        let message = error.to_string();
        assert!(message.starts_with("NVML is not available ("), "{message}");
        assert!(
            message.contains("/nonexistent/libnvidia-ml.so.1"),
            "{message}"
        );
        assert!(message.contains("--gpu-backend simulated"), "{message}");
    }

    #[test]
    fn without_a_driver_the_backend_reports_driver_missing() {
        match NvmlBackend::new() {
            // A machine with a driver has nothing to check here; tests/gpu_smoke.rs covers it.
            Ok(backend) => assert_eq!(backend.name(), "nvml"),
            Err(error) => {
                assert!(matches!(error, GpuError::DriverMissing { .. }), "{error:?}");
                assert!(error.to_string().contains("NVML"), "{error}");
            }
        }
    }

    #[test]
    fn nvml_errors_map_to_the_fixed_kinds() {
        let op = "setting the power limit";
        assert_eq!(
            classify(op, 1, NvmlError::NoPermission).category(),
            "no_permission"
        );
        assert_eq!(
            classify(op, 1, NvmlError::NotSupported).category(),
            "not_supported"
        );
        assert_eq!(
            classify(op, 1, NvmlError::FunctionNotFound).category(),
            "not_supported"
        );
        let failed = classify(op, 1, NvmlError::Unknown);
        assert_eq!(failed.category(), "failed");
        assert_eq!(
            failed.to_string(),
            "setting the power limit of GPU 1 failed: NVML: an internal driver error occurred"
        );
    }

    #[test]
    fn unsupported_readings_are_none_and_other_failures_are_errors() {
        let none = optional::<u32>(Err(NvmlError::NotSupported), "reading", 0);
        assert!(matches!(none, Ok(None)));
        let lost = optional::<u32>(Err(NvmlError::GpuLost), "reading", 0);
        assert!(matches!(lost, Err(GpuError::Failed { .. })));
    }

    #[test]
    fn throttle_reasons_become_short_names() {
        let reasons = ThrottleReasons::SW_POWER_CAP | ThrottleReasons::HW_THERMAL_SLOWDOWN;
        assert_eq!(
            throttle_reason_names(reasons),
            vec!["sw_power_cap", "hw_thermal_slowdown"]
        );
        assert!(throttle_reason_names(ThrottleReasons::NONE).is_empty());
    }
}
