//! The simulated pods' work counters: each pod's work — its GPUs' throughput integrated by the
//! simulated GPUs — with the scenario's measurement noise, rendered in the Prometheus text format,
//! so the agent reads it through the same parser and windows as a real pod's endpoint. No IO.

use std::collections::BTreeMap;

use kilowatt_agent_core::defaults;
use kilowatt_agent_core::gpu::simulated::SimulatedGpus;
use kilowatt_agent_core::work::{WINDOW, WorkCounterError};
use kilowatt_crds::plan::WorkCounter;

use crate::scenario::{SIMULATED_WAITING_METRIC, SIMULATED_WORK_METRIC};

/// How a pod's counter is read: its workload's measurement noise, and whether it serves (and so
/// exports a waiting gauge).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct PodWork {
    pub noise: f64,
    pub serves: bool,
}

/// One pod's counter.
#[derive(Debug, Clone)]
struct PodCounter {
    value: f64,
    /// Each of its GPUs' work at the last sample.
    last_work: BTreeMap<u32, f64>,
    random: SplitMix,
}

/// The counters of one node's pods.
#[derive(Debug, Clone, Default)]
pub(super) struct PodCounters {
    pods: BTreeMap<String, PodCounter>,
}

impl PodCounters {
    /// Advances every counter of `counters` by what the GPUs its pod holds (`holders`, by index) did
    /// since the last sample, and returns each pod's endpoint as scraped now.
    pub(super) fn scrape(
        &mut self,
        counters: &[WorkCounter],
        holders: &[Option<String>],
        gpus: &SimulatedGpus,
        work_of: impl Fn(&str) -> Option<PodWork>,
    ) -> Vec<Result<String, WorkCounterError>> {
        self.pods
            .retain(|pod, _| counters.iter().any(|c| &c.pod == pod));
        // The noise of one sample: a window averages WINDOW / SAMPLE_PERIOD independent samples, so
        // each gets √n times the window's relative deviation.
        let samples_per_window = WINDOW.as_secs_f64() / defaults::SAMPLE_PERIOD.as_secs_f64();
        counters
            .iter()
            .map(|counter| {
                let Some(work) = work_of(&counter.pod) else {
                    return Err(WorkCounterError::Scrape {
                        url: counter.url.clone(),
                        message: "no such simulated pod".to_owned(),
                    });
                };
                let state = self
                    .pods
                    .entry(counter.pod.clone())
                    .or_insert_with(|| PodCounter {
                        value: 0.0,
                        last_work: BTreeMap::new(),
                        random: SplitMix::seeded(&counter.pod),
                    });
                let mut done = 0.0;
                for (index, holder) in holders.iter().enumerate() {
                    if holder.as_deref() != Some(counter.pod.as_str()) {
                        continue;
                    }
                    let index = index as u32;
                    let now = gpus.work_done(index).unwrap_or(0.0);
                    if let Some(before) = state.last_work.insert(index, now) {
                        done += (now - before).max(0.0);
                    }
                }
                let deviation = work.noise * samples_per_window.sqrt();
                let factor = (1.0 + deviation * state.random.normal()).max(0.0);
                state.value += done * factor;
                let mut text = format!(
                    "# HELP {SIMULATED_WORK_METRIC} Work the simulated pod did, in its curve's unit.\n\
                     # TYPE {SIMULATED_WORK_METRIC} counter\n\
                     {SIMULATED_WORK_METRIC}{{pod=\"{}\"}} {}\n",
                    counter.pod, state.value
                );
                if work.serves {
                    text.push_str(&format!(
                        "# TYPE {SIMULATED_WAITING_METRIC} gauge\n{SIMULATED_WAITING_METRIC} 1\n"
                    ));
                }
                Ok(text)
            })
            .collect()
    }
}

/// A small deterministic generator (splitmix64), seeded by the pod's name, so a scenario's noise is
/// the same at every run.
#[derive(Debug, Clone)]
struct SplitMix(u64);

impl SplitMix {
    fn seeded(name: &str) -> SplitMix {
        // FNV-1a of the name.
        let seed = name.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
            (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
        });
        SplitMix(seed)
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform on (0, 1].
    fn unit(&mut self) -> f64 {
        ((self.next_u64() >> 11) as f64 + 1.0) / (1u64 << 53) as f64
    }

    /// Standard normal (Box–Muller).
    fn normal(&mut self) -> f64 {
        let (u, v) = (self.unit(), self.unit());
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_generator_is_deterministic_and_its_normals_have_unit_spread() {
        let mut a = SplitMix::seeded("ml/chat-0");
        let mut b = SplitMix::seeded("ml/chat-0");
        let draws: Vec<f64> = (0..20_000).map(|_| a.normal()).collect();
        assert!(draws.iter().all(|x| *x == b.normal()));
        let mean = draws.iter().sum::<f64>() / draws.len() as f64;
        let variance = draws.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / draws.len() as f64;
        assert!(mean.abs() < 0.03, "{mean}");
        assert!((variance.sqrt() - 1.0).abs() < 0.03, "{variance}");
    }
}
