//! NVML smoke test on a real GPU: inventory, a reading, a power-limit round trip and a clock lock,
//! each restored afterwards. Does IO (talks to the NVIDIA driver). Run it on a GPU machine with
//!
//! ```text
//! cargo test -p kilowatt-node-agent --test gpu_smoke -- --ignored --nocapture
//! ```
//!
//! Without root or CAP_SYS_ADMIN the set calls fail with `NoPermission`; the test prints the error
//! and passes, so its output records what the machine allowed.

use kilowatt_agent_core::gpu::{GpuBackend, GpuError};
use kilowatt_node_agent::gpu::nvml::NvmlBackend;

#[test]
#[ignore = "needs an NVIDIA GPU and driver; run on a GPU machine"]
fn nvml_reads_sets_and_restores_gpu_0() -> anyhow::Result<()> {
    let mut gpus = NvmlBackend::new()?;
    let inventory = gpus.inventory()?;
    println!("inventory: {inventory:#?}");
    let Some(gpu) = inventory.first() else {
        anyhow::bail!("NVML loaded but lists no GPUs");
    };
    let before = gpus.read(gpu.index)?;
    println!("reading: {before:?}");
    anyhow::ensure!(
        before.energy_joules.is_some(),
        "GPU {} has no energy counter; Kilowatt's energy accounting needs one (Volta or newer)",
        gpu.index
    );

    let original_watts = gpus.power_limit_watts(gpu.index)?;
    let target_watts = ((gpu.min_limit_watts + gpu.max_limit_watts) / 2.0).round();
    println!("power limit: {original_watts} W, setting {target_watts} W");
    match gpus.set_power_limit_watts(gpu.index, target_watts) {
        Ok(()) => {
            // The GPU applies an accepted limit a little later; measure how much later.
            let set_at = std::time::Instant::now();
            let mut read_back = gpus.power_limit_watts(gpu.index);
            while set_at.elapsed() < std::time::Duration::from_secs(2)
                && read_back
                    .as_ref()
                    .is_ok_and(|w| (w - target_watts).abs() >= 0.5)
            {
                std::thread::sleep(std::time::Duration::from_millis(5));
                read_back = gpus.power_limit_watts(gpu.index);
            }
            println!(
                "enforced limit read back {:?} after the set call returned",
                set_at.elapsed()
            );
            // Restore before checking, so a failed check leaves the GPU as it was.
            gpus.set_power_limit_watts(gpu.index, original_watts)?;
            println!("power limit restore to {original_watts} W accepted");
            let read_back = read_back?;
            println!("power limit read back while set: {read_back} W");
            // NB: the enforced limit can sit below ours when another limit (e.g. out-of-band) is lower.
            anyhow::ensure!(
                read_back <= target_watts + 1.0,
                "GPU {} enforces {read_back} W after we set {target_watts} W",
                gpu.index
            );
        }
        Err(error @ GpuError::NoPermission { .. }) => println!("power limit not set: {error}"),
        Err(error) => return Err(error.into()),
    }

    // A clock in the middle of the supported range, where locking is most likely to be accepted.
    let Some(&clock_mhz) = gpu
        .supported_sm_clocks_mhz
        .get(gpu.supported_sm_clocks_mhz.len() / 2)
    else {
        println!(
            "GPU {} lists no supported SM clocks; skipping the clock lock",
            gpu.index
        );
        return Ok(());
    };
    println!("locking the SM clock at {clock_mhz} MHz");
    match gpus.lock_sm_clock(gpu.index, clock_mhz) {
        Ok(()) => {
            let locked = gpus.read(gpu.index);
            gpus.reset_sm_clock(gpu.index)?;
            println!("reading while locked: {:?}", locked?);
            println!("SM clock reset; reading: {:?}", gpus.read(gpu.index)?);
        }
        Err(error @ (GpuError::NoPermission { .. } | GpuError::NotSupported { .. })) => {
            println!("SM clock not locked: {error}");
        }
        Err(error) => return Err(error.into()),
    }
    Ok(())
}
