//! The synchronous core between the protocol state machine and the GPUs: runs the machine's commands on
//! a backend in order, reads limits back, accounts the node's power over report periods, and — as
//! [`SteppedAgent`] — drives the machine and a backend with time passed in. The agent process wraps this
//! in etcd and kubelet IO; `kilowatt simulate` steps it in-process on simulated time. No IO beyond the
//! backend calls.

use std::collections::BTreeMap;
use std::time::Duration;

use kilowatt_crds::plan::{Acknowledgement, Inventory, InventoryGpu, PowerReport, WorkCounter};

use crate::gpu::{GpuBackend, GpuError, GpuInfo, GpuReading};
use crate::protocol::{Agent, Command, Event, GpuBounds, InvalidBounds};
use crate::work::{WorkCounterError, WorkMeter};

/// A pod, as `namespace/name`.
pub type PodName = String;

/// What running a batch of commands did.
#[derive(Debug, Default)]
pub struct Executed {
    /// Limits that the backend accepted, by GPU index, in order.
    pub set: Vec<(u32, f64)>,
    /// Whether any command touched a GPU (then the limits must be read back).
    pub touched: bool,
    /// Acknowledgements to write, in order, after the GPU commands before them.
    pub acknowledgements: Vec<Acknowledgement>,
    /// Commands the backend refused; the protocol retries at the next read-back.
    pub errors: Vec<GpuError>,
}

/// Runs `commands` on `backend` in order (the machine already put decreases before increases).
pub fn execute(backend: &mut dyn GpuBackend, commands: Vec<Command>) -> Executed {
    let mut executed = Executed::default();
    for command in commands {
        let outcome = match command {
            Command::SetLimit { index, watts } => {
                executed.touched = true;
                let outcome = backend.set_power_limit_watts(index, watts);
                if outcome.is_ok() {
                    executed.set.push((index, watts));
                }
                outcome
            }
            Command::LockClock { index, mhz } => {
                executed.touched = true;
                backend.lock_sm_clock(index, mhz)
            }
            Command::ResetClock { index } => {
                executed.touched = true;
                backend.reset_sm_clock(index)
            }
            Command::Acknowledge(ack) => {
                executed.acknowledgements.push(ack);
                Ok(())
            }
        };
        if let Err(error) = outcome {
            executed.errors.push(error);
        }
    }
    executed
}

/// Every GPU's enforced limit, by index; a limit that cannot be read is NaN (the protocol treats it
/// as high).
pub fn read_limits(backend: &dyn GpuBackend, count: usize) -> Vec<f64> {
    (0..count as u32)
        .map(|i| backend.power_limit_watts(i).unwrap_or(f64::NAN))
        .collect()
}

/// The inventory an agent registers for `gpus` found by `backend`; `pods_by_uuid` is the kubelet's
/// answer to which pods hold each GPU (by UUID), `None` when the agent has not asked or never got one.
pub fn inventory(
    backend: &str,
    gpus: &[GpuInfo],
    pods_by_uuid: Option<&BTreeMap<String, Vec<String>>>,
) -> Inventory {
    Inventory {
        backend: backend.to_owned(),
        gpus: gpus
            .iter()
            .map(|g| InventoryGpu {
                index: g.index,
                uuid: g.uuid.clone(),
                model: g.model.clone(),
                min_limit_watts: g.min_limit_watts,
                max_limit_watts: g.max_limit_watts,
                pods: pods_by_uuid
                    .and_then(|pods| pods.get(&g.uuid))
                    .cloned()
                    .unwrap_or_default(),
            })
            .collect(),
        pods_reported: pods_by_uuid.is_some(),
    }
}

/// Each GPU's limit range, for the protocol machine; fails on the first GPU whose range no limit fits
/// in ([`GpuBounds::check`]).
pub fn bounds(gpus: &[GpuInfo]) -> Result<Vec<GpuBounds>, InvalidBounds> {
    gpus.iter()
        .map(|g| {
            let bounds = GpuBounds {
                min_watts: g.min_limit_watts,
                max_watts: g.max_limit_watts,
            };
            bounds.check(g.index).map(|()| bounds)
        })
        .collect()
}

/// The node's GPU energy over the current report period: from the GPUs' energy counters when every
/// GPU has one, else the sampled power integrated over the samples.
#[derive(Debug, Default)]
pub struct PowerPeriod {
    started: Option<Duration>,
    last_sample: Option<Duration>,
    counter_at_start: Option<f64>,
    counter_now: Option<f64>,
    integrated_joules: f64,
}

impl PowerPeriod {
    /// Takes one sample at `now`; returns the report when `period` has passed since the first.
    pub fn observe(
        &mut self,
        now: Duration,
        readings: &[Result<GpuReading, GpuError>],
        period: Duration,
    ) -> Option<PowerReport> {
        let ok: Vec<&GpuReading> = readings.iter().filter_map(|r| r.as_ref().ok()).collect();
        let counter = (ok.len() == readings.len())
            .then(|| ok.iter().map(|r| r.energy_joules).sum::<Option<f64>>())
            .flatten();
        let power: f64 = ok.iter().filter_map(|r| r.power_watts).sum();
        let Some(started) = self.started else {
            *self = PowerPeriod {
                started: Some(now),
                last_sample: Some(now),
                counter_at_start: counter,
                counter_now: counter,
                integrated_joules: 0.0,
            };
            return None;
        };
        let step = now.saturating_sub(self.last_sample.unwrap_or(now));
        self.integrated_joules += power * step.as_secs_f64();
        self.last_sample = Some(now);
        self.counter_now = counter.filter(|_| self.counter_at_start.is_some());
        let elapsed = now.saturating_sub(started);
        if elapsed < period || elapsed.is_zero() {
            return None;
        }
        let joules = match (self.counter_at_start, self.counter_now) {
            (Some(start), Some(end)) if end >= start => end - start,
            _ => self.integrated_joules,
        };
        let seconds = elapsed.as_secs_f64();
        *self = PowerPeriod {
            started: Some(now),
            last_sample: Some(now),
            counter_at_start: counter,
            counter_now: counter,
            integrated_joules: 0.0,
        };
        Some(PowerReport {
            gpu_watts: joules / seconds,
            gpu_energy_joules: joules,
            period_seconds: seconds,
            work_windows: Vec::new(),
            work_windows_rejected: Default::default(),
        })
    }
}

/// An agent whose events arrive as calls, with time passed in: the protocol machine over a backend that
/// applies settings at once (a simulated one), so a single read-back follows every batch. What it
/// acknowledges is returned to the caller, who plays a plan store that stores every acknowledgement.
pub struct SteppedAgent<B: GpuBackend> {
    agent: Agent,
    backend: B,
    gpus: Vec<GpuInfo>,
    power: PowerPeriod,
    work: WorkMeter,
    /// Commands the backend refused since the agent started.
    pub gpu_errors: u64,
    /// When to read limits back, for a backend that takes time to apply them.
    read_back_at: Option<Duration>,
}

impl<B: GpuBackend> SteppedAgent<B> {
    /// Starts at `now`, adopting the limits the GPUs enforce, as the agent process does.
    pub fn start(backend: B, fence_after: Duration, now: Duration) -> Result<Self, GpuError> {
        let gpus = backend.inventory()?;
        let enforced = read_limits(&backend, gpus.len());
        Ok(SteppedAgent {
            agent: Agent::new(bounds(&gpus)?, enforced, fence_after, now)?,
            backend,
            gpus,
            power: PowerPeriod::default(),
            work: WorkMeter::default(),
            gpu_errors: 0,
            read_back_at: None,
        })
    }

    /// Sends `boot_id` with every acknowledgement (see [`Agent::with_boot_id`]).
    pub fn with_boot_id(mut self, boot_id: Option<String>) -> Self {
        self.agent = self.agent.with_boot_id(boot_id);
        self
    }

    /// The agent process starting again at `now` on the same GPUs (after a crash, or at boot): a
    /// fresh protocol machine that adopts the limits the GPUs enforce and knows no plan yet.
    pub fn restart(
        &mut self,
        fence_after: Duration,
        now: Duration,
        boot_id: Option<String>,
    ) -> Result<(), GpuError> {
        let enforced = read_limits(&self.backend, self.gpus.len());
        self.agent =
            Agent::new(bounds(&self.gpus)?, enforced, fence_after, now)?.with_boot_id(boot_id);
        self.power = PowerPeriod::default();
        self.work = WorkMeter::default();
        self.read_back_at = None;
        Ok(())
    }

    /// Advances a backend that applies limits late, and reads limits back once they have had the
    /// time to settle; returns the acknowledgements to write.
    pub fn poll(&mut self, now: Duration) -> Vec<Acknowledgement> {
        if self.read_back_at.is_none() && self.backend.settle_time().is_zero() {
            return Vec::new();
        }
        self.backend.advance(now);
        match self.read_back_at {
            Some(at) if at <= now => {
                self.read_back_at = None;
                self.check_limits(now)
            }
            _ => Vec::new(),
        }
    }

    /// The periodic drift check: reads every limit back and runs the answer; returns the
    /// acknowledgements to write.
    pub fn check_limits(&mut self, now: Duration) -> Vec<Acknowledgement> {
        let limits = read_limits(&self.backend, self.gpus.len());
        let commands = self.agent.handle(Event::ReadBack(limits), now);
        self.run_and_read_back(commands, now)
    }

    /// The inventory to register; `pods_by_uuid` as for [`inventory`].
    pub fn inventory(&self, pods_by_uuid: Option<&BTreeMap<String, Vec<String>>>) -> Inventory {
        inventory(self.backend.name(), &self.gpus, pods_by_uuid)
    }

    pub fn gpus(&self) -> &[GpuInfo] {
        &self.gpus
    }

    pub fn protocol(&self) -> &Agent {
        &self.agent
    }

    pub fn backend(&self) -> &B {
        &self.backend
    }

    pub fn backend_mut(&mut self) -> &mut B {
        &mut self.backend
    }

    /// Feeds `event` at `now`, runs the commands, reads the limits back after GPU changes and runs the
    /// answer to that; returns the acknowledgements to write, in order.
    pub fn handle(&mut self, event: Event, now: Duration) -> Vec<Acknowledgement> {
        let commands = self.agent.handle(event, now);
        self.run_and_read_back(commands, now)
    }

    fn run_and_read_back(&mut self, commands: Vec<Command>, now: Duration) -> Vec<Acknowledgement> {
        let executed = execute(&mut self.backend, commands);
        self.gpu_errors += executed.errors.len() as u64;
        let mut acknowledgements = executed.acknowledgements;
        let settle = self.backend.settle_time();
        if executed.touched && !settle.is_zero() {
            self.read_back_at = Some(now + settle);
        } else if executed.touched {
            let limits = read_limits(&self.backend, self.gpus.len());
            let follow_up = execute(
                &mut self.backend,
                self.agent.handle(Event::ReadBack(limits), now),
            );
            self.gpu_errors += follow_up.errors.len() as u64;
            acknowledgements.extend(follow_up.acknowledgements);
        }
        for ack in &acknowledgements {
            // The caller stores what it is handed, so each is confirmed at once; this answer sets
            // nothing.
            self.agent.handle(Event::Acknowledged(ack.clone()), now);
        }
        acknowledgements
    }

    /// Advances the GPUs to `now`, reads every GPU, takes the pods' work counters as scraped now
    /// (`scrapes`: each counter with its endpoint's answer), and returns the readings and the node's
    /// power report, with the work windows completed since the last, once `report_period` has passed.
    pub fn sample(
        &mut self,
        now: Duration,
        report_period: Duration,
        scrapes: &[(&WorkCounter, Result<String, WorkCounterError>)],
    ) -> (Vec<Result<GpuReading, GpuError>>, Option<PowerReport>) {
        self.backend.advance(now);
        let readings: Vec<_> = (0..self.gpus.len() as u32)
            .map(|i| self.backend.read(i))
            .collect();
        self.work.observe_scrapes(scrapes, &readings, now);
        let mut report = self.power.observe(now, &readings, report_period);
        if let Some(report) = &mut report {
            (report.work_windows, report.work_windows_rejected) = self.work.take();
        }
        (readings, report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::simulated::SimulatedGpus;
    use kilowatt_crds::plan::NodePlan;

    fn reading(power_watts: f64, energy_joules: Option<f64>) -> Result<GpuReading, GpuError> {
        Ok(GpuReading {
            power_watts: Some(power_watts),
            energy_joules,
            power_limit_watts: Some(700.0),
            sm_clock_mhz: None,
            utilization_percent: None,
            throttle_reasons: Vec::new(),
            persistence_mode: None,
        })
    }

    #[test]
    fn a_power_report_uses_the_energy_counters_over_the_period() {
        let mut period = PowerPeriod::default();
        let every = Duration::from_secs(10);
        let at = Duration::from_secs;
        assert!(
            period
                .observe(
                    at(0),
                    &[reading(300.0, Some(1000.0)), reading(100.0, Some(0.0))],
                    every
                )
                .is_none()
        );
        assert!(
            period
                .observe(
                    at(5),
                    &[reading(999.0, Some(2500.0)), reading(999.0, Some(500.0))],
                    every
                )
                .is_none()
        );
        let report = period
            .observe(
                at(10),
                &[reading(0.0, Some(4000.0)), reading(0.0, Some(1000.0))],
                every,
            )
            .expect("a report after 10 s");
        // 3000 J + 1000 J over 10 s, whatever the instantaneous samples said.
        assert_eq!(report.gpu_energy_joules, 4000.0);
        assert_eq!(report.gpu_watts, 400.0);
        assert_eq!(report.period_seconds, 10.0);
    }

    #[test]
    fn without_an_energy_counter_a_power_report_integrates_the_samples() {
        let mut period = PowerPeriod::default();
        let every = Duration::from_secs(2);
        let at = Duration::from_secs;
        let failed = Err(GpuError::NoSuchGpu { index: 1 });
        assert!(
            period
                .observe(at(0), &[reading(200.0, None)], every)
                .is_none()
        );
        assert!(
            period
                .observe(at(1), &[reading(200.0, Some(5.0)), failed], every)
                .is_none()
        );
        let report = period
            .observe(at(2), &[reading(400.0, None)], every)
            .expect("a report after 2 s");
        assert_eq!(report.gpu_energy_joules, 600.0);
        assert_eq!(report.gpu_watts, 300.0);
    }

    #[test]
    fn a_stepped_agent_enforces_a_plan_and_acknowledges_what_it_read_back() {
        let gpus = SimulatedGpus::uniform("n1", 2, "H100-SXM", 200.0, 700.0, None);
        let second = Duration::from_secs(1);
        let mut agent = SteppedAgent::start(gpus, 5 * second, Duration::ZERO).expect("start");
        assert!(agent.handle(Event::LeaseRenewed, Duration::ZERO).is_empty());
        let plan = NodePlan::with_limits("n1", 4, &[300.0, 450.0], 200.0);
        let acks = agent.handle(Event::PlanChanged(Some(plan)), second);
        assert_eq!(acks.len(), 1);
        assert_eq!(acks[0].revision, 4);
        assert_eq!(acks[0].power_limits_watts, vec![300.0, 450.0]);
        assert_eq!(read_limits(agent.backend(), 2), vec![300.0, 450.0]);
        // Without renewals past the fence time it lowers every GPU to its floor.
        agent.handle(Event::Tick, 7 * second);
        assert_eq!(read_limits(agent.backend(), 2), vec![200.0, 200.0]);
    }

    #[test]
    fn a_refused_limit_is_counted_and_not_acknowledged_as_set() {
        let gpus = SimulatedGpus::uniform("n1", 1, "H100-SXM", 200.0, 700.0, None);
        let mut backend: Box<dyn GpuBackend> = Box::new(gpus);
        let executed = execute(
            backend.as_mut(),
            vec![
                Command::SetLimit {
                    index: 0,
                    watts: 900.0,
                },
                Command::SetLimit {
                    index: 3,
                    watts: 300.0,
                },
            ],
        );
        assert!(executed.touched);
        assert!(executed.set.is_empty());
        assert_eq!(executed.errors.len(), 2);
    }
}
