//! Simulated GPUs whose settings (power limit, locked clock) live in a file rather than in the agent's
//! memory, as a real GPU's live in the device: they outlive the agent process, a restarted agent finds
//! them as they were left, another program can change them (drift) and a test's sampler in another
//! process can read what every GPU enforces. Does file IO.
//!
//! Every write replaces the file atomically (write a sibling, then rename) and bumps `sequence`, so a
//! reader sees whole states and can tell whether anything changed between two reads.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use kilowatt_agent_core::driver;
use kilowatt_agent_core::gpu::simulated::SimulatedGpus;
use kilowatt_agent_core::gpu::{GpuBackend, GpuError, GpuInfo, GpuReading};

/// One GPU's settings as stored.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StoredGpu {
    pub index: u32,
    pub power_limit_watts: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sm_clock_mhz: Option<u32>,
}

/// The file's content.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StoredSettings {
    /// Bumped by every write.
    pub sequence: u64,
    pub gpus: Vec<StoredGpu>,
}

impl StoredSettings {
    /// Reads a settings file.
    pub fn read(path: &Path) -> Result<Self, GpuError> {
        let bytes = std::fs::read(path).map_err(|error| file_error(path, "reading", &error))?;
        serde_json::from_slice(&bytes).map_err(|error| file_error(path, "parsing", &error))
    }

    /// Replaces a settings file atomically.
    pub fn write(&self, path: &Path) -> Result<(), GpuError> {
        let partial = partial_path(path);
        let encoded =
            serde_json::to_vec(self).map_err(|error| file_error(path, "encoding", &error))?;
        std::fs::write(&partial, encoded)
            .and_then(|()| std::fs::rename(&partial, path))
            .map_err(|error| file_error(path, "writing", &error))
    }

    /// The sum of the power limits.
    pub fn total_limit_watts(&self) -> f64 {
        self.gpus.iter().map(|g| g.power_limit_watts).sum()
    }
}

fn partial_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".partial-{}", std::process::id()));
    path.with_file_name(name)
}

fn file_error(path: &Path, action: &'static str, error: &dyn std::fmt::Display) -> GpuError {
    GpuError::SettingsFile {
        action,
        path: path.to_path_buf(),
        message: error.to_string(),
    }
}

/// [`SimulatedGpus`] with their settings kept in a file.
#[derive(Debug)]
pub struct FileBackedGpus {
    gpus: SimulatedGpus,
    path: PathBuf,
    sequence: u64,
}

impl FileBackedGpus {
    /// Takes the settings from `path` when it exists (the GPUs were left that way), else writes the
    /// simulated GPUs' current settings there. Fails, before touching the file, on a GPU whose limit
    /// range no limit fits in.
    pub fn open(mut gpus: SimulatedGpus, path: PathBuf) -> Result<Self, GpuError> {
        driver::bounds(&gpus.inventory()?)?;
        let sequence = if path.exists() {
            let stored = StoredSettings::read(&path)?;
            apply(&mut gpus, &stored)?;
            stored.sequence
        } else {
            0
        };
        let mut backend = Self {
            gpus,
            path,
            sequence,
        };
        if sequence == 0 {
            backend.commit()?;
        }
        Ok(backend)
    }

    fn store(&self) -> Result<(), GpuError> {
        let gpus = self
            .gpus
            .inventory()?
            .iter()
            .map(|info| {
                Ok(StoredGpu {
                    index: info.index,
                    power_limit_watts: self.gpus.power_limit_watts(info.index)?,
                    sm_clock_mhz: self.gpus.locked_sm_clock_mhz(info.index)?,
                })
            })
            .collect::<Result<Vec<_>, GpuError>>()?;
        StoredSettings {
            sequence: self.sequence + 1,
            gpus,
        }
        .write(&self.path)
    }

    /// Stores the settings after a change, bumping the sequence.
    fn commit(&mut self) -> Result<(), GpuError> {
        self.store()?;
        self.sequence += 1;
        Ok(())
    }

    /// Picks up changes another program made to the file.
    fn refresh(&mut self) -> Result<(), GpuError> {
        let stored = StoredSettings::read(&self.path)?;
        if stored.sequence != self.sequence {
            apply(&mut self.gpus, &stored)?;
            self.sequence = stored.sequence;
        }
        Ok(())
    }
}

/// Puts stored settings on the simulated GPUs as they are, without range checks (whatever set them
/// was the hardware's business).
fn apply(gpus: &mut SimulatedGpus, stored: &StoredSettings) -> Result<(), GpuError> {
    for gpu in &stored.gpus {
        gpus.force_limit(gpu.index, gpu.power_limit_watts)?;
        match gpu.sm_clock_mhz {
            Some(mhz) => gpus.lock_sm_clock(gpu.index, mhz)?,
            None => gpus.reset_sm_clock(gpu.index)?,
        }
    }
    Ok(())
}

impl GpuBackend for FileBackedGpus {
    fn name(&self) -> &'static str {
        "simulated"
    }

    fn inventory(&self) -> Result<Vec<GpuInfo>, GpuError> {
        self.gpus.inventory()
    }

    fn power_limit_watts(&self, index: u32) -> Result<f64, GpuError> {
        // NB: read from the file, not memory, so that drift made by another program shows.
        let stored = StoredSettings::read(&self.path)?;
        stored
            .gpus
            .iter()
            .find(|g| g.index == index)
            .map(|g| g.power_limit_watts)
            .ok_or(GpuError::NoSuchGpu { index })
    }

    fn set_power_limit_watts(&mut self, index: u32, watts: f64) -> Result<(), GpuError> {
        self.refresh()?;
        self.gpus.set_power_limit_watts(index, watts)?;
        self.commit()
    }

    fn lock_sm_clock(&mut self, index: u32, mhz: u32) -> Result<(), GpuError> {
        self.refresh()?;
        self.gpus.lock_sm_clock(index, mhz)?;
        self.commit()
    }

    fn reset_sm_clock(&mut self, index: u32) -> Result<(), GpuError> {
        self.refresh()?;
        self.gpus.reset_sm_clock(index)?;
        self.commit()
    }

    fn read(&self, index: u32) -> Result<GpuReading, GpuError> {
        self.gpus.read(index)
    }

    fn advance(&mut self, now: Duration) {
        // NB: settings changed by another program count from the next step on, as with a real GPU.
        if let Err(error) = self.refresh() {
            tracing::warn!(%error, "could not re-read the simulated GPU settings");
        }
        self.gpus.advance(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh settings path for one test.
    fn settings_path(test: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("kilowatt-settings-{}-{test}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temporary directory");
        dir.join("gpus.json")
    }

    fn node() -> SimulatedGpus {
        SimulatedGpus::uniform("n", 2, "H100-SXM", 200.0, 700.0, None)
    }

    #[test]
    fn settings_outlive_the_backend_that_set_them() -> Result<(), GpuError> {
        let path = settings_path("outlive");
        let mut first = FileBackedGpus::open(node(), path.clone())?;
        first.set_power_limit_watts(1, 350.0)?;
        drop(first);

        let second = FileBackedGpus::open(node(), path.clone())?;
        assert_eq!(second.power_limit_watts(0)?, 700.0);
        assert_eq!(second.power_limit_watts(1)?, 350.0);
        assert_eq!(second.read(1)?.power_limit_watts, Some(350.0));
        let stored = StoredSettings::read(&path)?;
        assert_eq!(stored.sequence, 2);
        assert_eq!(stored.total_limit_watts(), 1050.0);
        Ok(())
    }

    #[test]
    fn a_change_made_by_another_program_is_read_back_and_simulated() -> Result<(), GpuError> {
        let path = settings_path("drift");
        let mut backend = FileBackedGpus::open(node(), path.clone())?;
        let mut stored = StoredSettings::read(&path)?;
        stored.sequence += 1;
        stored.gpus[0].power_limit_watts = 250.0;
        stored.write(&path)?;

        assert_eq!(backend.power_limit_watts(0)?, 250.0);
        backend.advance(Duration::from_secs(1));
        assert_eq!(backend.read(0)?.power_limit_watts, Some(250.0));
        // A write after the change keeps it and counts on from its sequence.
        backend.set_power_limit_watts(1, 300.0)?;
        let after = StoredSettings::read(&path)?;
        assert_eq!(after.sequence, stored.sequence + 1);
        assert_eq!(after.total_limit_watts(), 550.0);
        Ok(())
    }

    #[test]
    fn gpus_whose_range_no_limit_fits_in_are_refused_naming_the_gpu_and_its_range() {
        let path = settings_path("inverted_range");
        let inverted = SimulatedGpus::uniform("n", 2, "H100-SXM", 700.0, 200.0, None);
        let error = FileBackedGpus::open(inverted, path.clone()).expect_err("min above max");
        assert_eq!(
            error.to_string(),
            "GPU 0 reports power limits from 700 W to 200 W; the agent needs finite limits with 0 < min <= max"
        );
        assert!(!path.exists(), "nothing written");
        let nan = SimulatedGpus::uniform("n", 1, "H100-SXM", f64::NAN, 700.0, None);
        assert!(FileBackedGpus::open(nan, path).is_err());
    }

    #[test]
    fn a_limit_out_of_range_is_refused_and_not_stored() -> Result<(), GpuError> {
        let path = settings_path("out_of_range");
        let mut backend = FileBackedGpus::open(node(), path.clone())?;
        assert!(backend.set_power_limit_watts(0, 900.0).is_err());
        assert_eq!(StoredSettings::read(&path)?.total_limit_watts(), 1400.0);
        Ok(())
    }
}
