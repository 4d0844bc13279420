//! Accounting: the throughput each run delivers, tick by tick, as a weighted share of every workload's
//! best; the GPU energy from the simulated GPUs' counters; and its CO₂, the energy between changes of
//! the carbon intensity times the intensity over it. No IO.

use super::*;
impl Simulation {
    /// Throughput delivered over the last tick, weighted and normalised by each workload's best.
    pub(super) fn account_throughput(&mut self, index: usize) {
        let run = &mut self.runs[index];
        let (mut weighted, mut weight) = (0.0, 0.0);
        for node in &run.nodes {
            let backend = node.agent.backend();
            for (gpu, workload) in node.gpu_workloads.iter().enumerate() {
                let Some(w) = *workload else { continue };
                let best = self.best_throughput[w];
                if best <= 0.0 {
                    continue;
                }
                let throughput = backend.throughput(gpu as u32).unwrap_or(0.0);
                let workload_weight = self.prepared.workloads[w].weight;
                weighted += workload_weight * throughput / best;
                weight += workload_weight;
            }
        }
        run.throughput_weighted += weighted * TICK_SECONDS;
        run.throughput_weight += weight * TICK_SECONDS;
        run.instant_throughput = if weight > 0.0 { weighted / weight } else { 0.0 };
    }
}

/// GPU energy of a run so far, from its simulated GPUs' counters (node overheads not included).
pub(super) fn energy_joules(run: &Run) -> f64 {
    run.nodes
        .iter()
        .map(|node| {
            let backend = node.agent.backend();
            (0..node.agent.gpus().len() as u32)
                .filter_map(|i| backend.read(i).ok().and_then(|r| r.energy_joules))
                .sum::<f64>()
        })
        .sum()
}

/// Joules per kWh.
const JOULES_PER_KWH: f64 = 3.6e6;

impl Simulation {
    /// At a change of the carbon intensity: the energy since the last change, at the intensity that
    /// held at `before` (the tick that crosses the change is counted at the old intensity).
    pub(super) fn account_carbon(&mut self, index: usize, before: f64) {
        let intensity = self.prepared.carbon_intensity_at(before).unwrap_or(0.0);
        let run = &mut self.runs[index];
        let energy = energy_joules(run);
        run.carbon_grams +=
            (energy - run.energy_at_intensity_change_joules) / JOULES_PER_KWH * intensity;
        run.energy_at_intensity_change_joules = energy;
    }

    /// A run's CO₂ so far: what [`Simulation::account_carbon`] counted, plus the energy since the
    /// last change at the intensity in force now; `None` without a carbon intensity.
    pub(super) fn carbon_grams(&self, run: &Run, energy_joules: f64) -> Option<f64> {
        let intensity = self.prepared.carbon_intensity_at(self.now_seconds())?;
        Some(
            run.carbon_grams
                + (energy_joules - run.energy_at_intensity_change_joules) / JOULES_PER_KWH
                    * intensity,
        )
    }
}
