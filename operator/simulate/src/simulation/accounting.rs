//! Accounting: the throughput each run delivers, tick by tick, as a weighted share of every workload's
//! best. Energy is read from the simulated GPUs' counters in the report. No IO.

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
