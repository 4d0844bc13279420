//! The agent's side of the plan protocol as a pure state machine: events in (a plan arrived, the etcd
//! lease was renewed, limits were read back, a tick, shutdown), GPU commands and acknowledgements out.
//! Time is an argument (time since the agent started), so every safety rule is testable without etcd,
//! GPUs or sleeping. No IO.
//!
//! The rules, each of which keeps the budgets under their caps:
//! - decreases are applied before increases, within every batch of commands;
//! - a plan is acknowledged only after its limits were read back from the GPUs, with the values read,
//!   and sent again until etcd stored it;
//! - a plan older than the one followed is ignored;
//! - without a lease renewal for `fence_after`, every GPU is lowered to its floor, by the agent alone;
//! - on shutdown no limit is raised: every GPU goes to the lower of its limit and its floor;
//! - a limit changed behind the agent's back (drift) is counted, and set again when above the plan.

use std::time::Duration;

use kilowatt_crds::plan::{Acknowledgement, NodePlan};

/// A GPU's limit range as its driver reports it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GpuBounds {
    pub min_watts: f64,
    pub max_watts: f64,
}

/// A GPU whose limit range no limit can be clamped into.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error(
    "GPU {index} reports power limits from {min_watts} W to {max_watts} W; the agent needs finite limits with 0 < min <= max"
)]
pub struct InvalidBounds {
    pub index: u32,
    pub min_watts: f64,
    pub max_watts: f64,
}

impl GpuBounds {
    /// Whether the range of GPU `index` is usable: finite, with 0 < min <= max.
    pub fn check(&self, index: u32) -> Result<(), InvalidBounds> {
        let GpuBounds {
            min_watts,
            max_watts,
        } = *self;
        if min_watts.is_finite()
            && max_watts.is_finite()
            && 0.0 < min_watts
            && min_watts <= max_watts
        {
            Ok(())
        } else {
            Err(InvalidBounds {
                index,
                min_watts,
                max_watts,
            })
        }
    }
}

/// Something the IO layer must do, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    SetLimit {
        index: u32,
        watts: f64,
    },
    LockClock {
        index: u32,
        mhz: u32,
    },
    ResetClock {
        index: u32,
    },
    /// Write the acknowledgement key.
    Acknowledge(Acknowledgement),
}

/// What happened.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// The node's plan key changed (`None`: deleted, the node is in no budget any more).
    PlanChanged(Option<NodePlan>),
    /// The etcd lease was renewed.
    LeaseRenewed,
    /// A new etcd session registered under a fresh lease and read the plan key: contact is back (as
    /// with [`Event::LeaseRenewed`]), the plan read is taken whatever its revision (it is etcd's
    /// current one, not a queued event), and its acknowledgement is sent again, since nothing says
    /// the last one reached etcd.
    Registered(Option<NodePlan>),
    /// This acknowledgement is stored in etcd. Until one arrives for the plan followed and the limits
    /// read back, the agent sends it again at every tick and read-back.
    Acknowledged(Acknowledgement),
    /// Limits read back from every GPU, by index (after applying commands, or periodically).
    ReadBack(Vec<f64>),
    /// Time passed.
    Tick,
    /// SIGTERM.
    Shutdown,
}

/// Whether the agent follows its plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Following,
    /// Lost contact: GPUs held at their floors until the lease is renewed.
    Fenced,
    ShuttingDown,
}

/// Counters for telemetry.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Limits found changed by something else.
    pub drifts: u64,
    /// Targets moved into the device's range.
    pub clamps: u64,
    /// Times the agent fenced itself.
    pub fences: u64,
}

/// Differences below this are the driver's rounding, not drift.
const TOLERANCE_WATTS: f64 = 0.5;

/// A limit as read back from a GPU; one that could not be read (NaN) or is not a limit (infinite,
/// negative) is taken as high, so the GPU is set again.
fn read_limit(watts: f64) -> f64 {
    if watts.is_finite() && watts >= 0.0 {
        watts
    } else {
        f64::INFINITY
    }
}

/// The agent's protocol state.
#[derive(Debug, Clone)]
pub struct Agent {
    gpus: Vec<GpuBounds>,
    /// What the agent believes each GPU enforces (last read back or set).
    enforced: Vec<f64>,
    clocks: Vec<Option<u32>>,
    plan: Option<NodePlan>,
    last_contact: Duration,
    fence_after: Duration,
    mode: Mode,
    /// The acknowledgement etcd last stored ([`Event::Acknowledged`]).
    acknowledged: Option<Acknowledgement>,
    /// Set after commands are emitted; an acknowledgement waits for the read-back that follows.
    awaiting_read_back: bool,
    /// The machine's boot ID, sent with every acknowledgement.
    boot_id: Option<String>,
    pub counters: Counters,
}

impl Agent {
    /// An agent that adopts the limits it finds enforced (a restart does not touch the GPUs until it
    /// knows the plan). `fence_after` is how long it may go without a lease renewal. Fails when a
    /// GPU's range is unusable ([`GpuBounds::check`]); a limit missing from `enforced` or not a
    /// limit is taken as high, as in a read-back.
    pub fn new(
        gpus: Vec<GpuBounds>,
        enforced: Vec<f64>,
        fence_after: Duration,
        now: Duration,
    ) -> Result<Agent, InvalidBounds> {
        for (bounds, index) in gpus.iter().zip(0u32..) {
            bounds.check(index)?;
        }
        let enforced = (0..gpus.len())
            .map(|i| enforced.get(i).copied().map_or(f64::INFINITY, read_limit))
            .collect();
        let clocks = vec![None; gpus.len()];
        Ok(Agent {
            gpus,
            enforced,
            clocks,
            plan: None,
            last_contact: now,
            fence_after,
            mode: Mode::Following,
            acknowledged: None,
            awaiting_read_back: false,
            boot_id: None,
            counters: Counters::default(),
        })
    }

    /// Sends `boot_id` (the kernel's, drawn at every boot) with every acknowledgement, so the operator
    /// can tell limits this boot enforces from those a rebooted machine no longer holds.
    pub fn with_boot_id(mut self, boot_id: Option<String>) -> Agent {
        self.boot_id = boot_id;
        self
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    pub fn enforced(&self) -> &[f64] {
        &self.enforced
    }

    /// The revision of the plan being followed.
    pub fn revision(&self) -> Option<u64> {
        self.plan.as_ref().map(|p| p.revision)
    }

    /// The floor of GPU `index`: the plan's moved into the device's range, else (none, or not a
    /// number) the device minimum.
    fn floor(&self, index: usize) -> f64 {
        let bounds = self.gpus[index];
        self.plan
            .as_ref()
            .and_then(|p| p.gpus.iter().find(|g| g.index as usize == index))
            .map(|g| g.floor_watts)
            .filter(|watts| watts.is_finite())
            .map_or(bounds.min_watts, |watts| {
                watts.clamp(bounds.min_watts, bounds.max_watts)
            })
    }

    /// Target limit and clock of each GPU under the current plan, clamped to the device, and how many
    /// targets needed clamping; GPUs the plan does not mention sit at their floor.
    fn targets(&self) -> (Vec<(f64, Option<u32>)>, u64) {
        let mut targets: Vec<(f64, Option<u32>)> = (0..self.gpus.len())
            .map(|i| (self.floor(i), None))
            .collect();
        let Some(plan) = &self.plan else {
            return (targets, 0);
        };
        let mut clamps = 0;
        for gpu in &plan.gpus {
            let Some(bounds) = self.gpus.get(gpu.index as usize) else {
                continue;
            };
            // NB: `clamp` cannot panic here: `new` checked that 0 < min <= max, all finite. A target
            // that is not a number (NaN, infinite) is a broken plan: the GPU sits at its floor.
            let clamped = if gpu.power_limit_watts.is_finite() {
                gpu.power_limit_watts
                    .clamp(bounds.min_watts, bounds.max_watts)
            } else {
                self.floor(gpu.index as usize)
            };
            if !gpu.power_limit_watts.is_finite()
                || (clamped - gpu.power_limit_watts).abs() > TOLERANCE_WATTS
            {
                clamps += 1;
            }
            targets[gpu.index as usize] = (clamped, gpu.sm_clock_mhz);
        }
        (targets, clamps)
    }

    /// The plan's targets after a read-back: a GPU at or below its target (within the driver's rounding
    /// above it) is taken as it is. NB: setting it again cannot help when something the agent does not
    /// control holds it lower (an out-of-band BMC cap) or the GPU rounds to a coarser step; it would be
    /// set forever and never acknowledged. Lower is always within the budget, so only a GPU above its
    /// target is set again.
    fn read_back_targets(&self) -> Vec<(f64, Option<u32>)> {
        let (targets, _) = self.targets();
        targets
            .into_iter()
            .zip(&self.enforced)
            .map(|((watts, clock), &read)| {
                if read <= watts + TOLERANCE_WATTS {
                    (read, clock)
                } else {
                    (watts, clock)
                }
            })
            .collect()
    }

    /// Commands that move every GPU to `targets`: all decreases, then clocks, then all increases.
    fn converge(&mut self, targets: &[(f64, Option<u32>)]) -> Vec<Command> {
        let mut decreases = Vec::new();
        let mut increases = Vec::new();
        let mut clocks = Vec::new();
        for (index, &(watts, clock)) in targets.iter().enumerate() {
            let gpu = index as u32;
            let current = self.enforced[index];
            // NB: every decrease is applied, however small (a floor is a floor); only increases
            // within the driver's rounding are skipped, which leaves the GPU lower, never higher.
            if watts < current {
                decreases.push(Command::SetLimit { index: gpu, watts });
                self.enforced[index] = watts;
            } else if watts > current + TOLERANCE_WATTS {
                increases.push(Command::SetLimit { index: gpu, watts });
                self.enforced[index] = watts;
            }
            if clock != self.clocks[index] {
                clocks.push(match clock {
                    Some(mhz) => Command::LockClock { index: gpu, mhz },
                    None => Command::ResetClock { index: gpu },
                });
                self.clocks[index] = clock;
            }
        }
        let commands: Vec<Command> = decreases
            .into_iter()
            .chain(clocks)
            .chain(increases)
            .collect();
        if !commands.is_empty() {
            self.awaiting_read_back = true;
        }
        commands
    }

    /// Lowers every GPU above its floor to the floor; never raises.
    fn lower_to_floors(&mut self) -> Vec<Command> {
        let floors: Vec<(f64, Option<u32>)> = (0..self.gpus.len())
            .map(|i| (self.floor(i).min(self.enforced[i]), self.clocks[i]))
            .collect();
        self.converge(&floors)
    }

    /// The acknowledgement of the plan followed, until etcd stored it. NB: not marked sent here: a
    /// write that fails (etcd away, the session lost) must be tried again, or the operator would
    /// count the node's older limits for good.
    fn acknowledgement(&self) -> Option<Command> {
        if self.mode != Mode::Following || self.awaiting_read_back {
            return None;
        }
        let plan = self.plan.as_ref()?;
        // NB: the limits count too: a GPU may settle after its acknowledgement (a late limit, a BMC
        // cap lifted), and the operator must learn what it enforces now.
        let stored = self.acknowledged.as_ref().is_some_and(|ack| {
            ack.revision == plan.revision
                && ack.power_limits_watts.len() == self.enforced.len()
                && ack
                    .power_limits_watts
                    .iter()
                    .zip(&self.enforced)
                    .all(|(acked, enforced)| (acked - enforced).abs() <= TOLERANCE_WATTS)
        });
        if stored {
            return None;
        }
        Some(Command::Acknowledge(Acknowledgement {
            revision: plan.revision,
            power_limits_watts: self.enforced.clone(),
            boot_id: self.boot_id.clone(),
        }))
    }

    /// Moves every GPU to the plan's targets (counting clamps), and acknowledges when nothing moved.
    fn apply_plan(&mut self) -> Vec<Command> {
        let (targets, clamps) = self.targets();
        self.counters.clamps += clamps;
        let mut commands = self.converge(&targets);
        commands.extend(self.acknowledgement());
        commands
    }

    /// Handles one event at `now` (time since start) and returns the commands to run, in order.
    pub fn handle(&mut self, event: Event, now: Duration) -> Vec<Command> {
        match event {
            Event::Shutdown => {
                self.mode = Mode::ShuttingDown;
                self.lower_to_floors()
            }
            Event::PlanChanged(_) | Event::Registered(_) | Event::LeaseRenewed | Event::Tick
                if self.mode == Mode::ShuttingDown =>
            {
                Vec::new()
            }
            Event::PlanChanged(plan) => {
                // NB: the IO layer may deliver a plan read earlier after a newer one (a dropped
                // session's queued watch events); the operator's revisions only increase, so an older
                // one is stale and ignored. A deletion carries no revision and always applies.
                if let (Some(arrived), Some(followed)) = (&plan, self.revision())
                    && arrived.revision < followed
                {
                    return Vec::new();
                }
                self.plan = plan;
                if self.mode == Mode::Fenced {
                    // Fenced: only ever lower; the plan is applied once contact is back.
                    return self.lower_to_floors();
                }
                self.apply_plan()
            }
            Event::Registered(plan) => {
                self.last_contact = now;
                self.mode = Mode::Following;
                self.acknowledged = None;
                self.plan = plan;
                self.apply_plan()
            }
            Event::Acknowledged(ack) => {
                self.acknowledged = Some(ack);
                Vec::new()
            }
            Event::LeaseRenewed => {
                self.last_contact = now;
                if self.mode != Mode::Fenced {
                    return Vec::new();
                }
                self.mode = Mode::Following;
                self.acknowledged = None;
                let (targets, _) = self.targets();
                let mut commands = self.converge(&targets);
                commands.extend(self.acknowledgement());
                commands
            }
            Event::Tick => {
                if self.mode == Mode::Following
                    && now.saturating_sub(self.last_contact) > self.fence_after
                {
                    self.mode = Mode::Fenced;
                    self.counters.fences += 1;
                    return self.lower_to_floors();
                }
                self.acknowledgement().into_iter().collect()
            }
            Event::ReadBack(limits) => {
                let expected = std::mem::take(&mut self.awaiting_read_back);
                if limits.len() != self.enforced.len() {
                    return Vec::new();
                }
                let limits: Vec<f64> = limits.into_iter().map(read_limit).collect();
                let drifted = limits
                    .iter()
                    .zip(&self.enforced)
                    .any(|(read, believed)| (read - believed).abs() > TOLERANCE_WATTS);
                if drifted && !expected {
                    self.counters.drifts += 1;
                }
                self.enforced = limits;
                // The GPUs were just told and read back above their targets: they refuse the limit
                // (or take time to apply it). Say what they enforce now, so the operator counts it
                // and lowers other nodes, then try again.
                // NB: a limit that could not be read counts as high but is never acknowledged.
                let refused = expected
                    && self.plan.is_some()
                    && self.enforced.iter().all(|w| w.is_finite())
                    && self
                        .read_back_targets()
                        .iter()
                        .zip(&self.enforced)
                        .any(|((target, _), read)| *read > target + TOLERANCE_WATTS);
                let refusal = if refused {
                    self.acknowledgement()
                } else {
                    None
                };
                let mut commands = match self.mode {
                    // Before any plan, a (re)started agent keeps what it adopted.
                    Mode::Following if self.plan.is_none() => Vec::new(),
                    Mode::Following => {
                        let targets = self.read_back_targets();
                        self.converge(&targets)
                    }
                    Mode::Fenced | Mode::ShuttingDown => self.lower_to_floors(),
                };
                if commands.is_empty() {
                    commands.extend(self.acknowledgement());
                } else if let Some(ack) = refusal {
                    commands.insert(0, ack);
                }
                commands
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const BOUNDS: GpuBounds = GpuBounds {
        min_watts: 200.0,
        max_watts: 700.0,
    };
    const FENCE: Duration = Duration::from_secs(5);

    fn plan(revision: u64, limits: &[f64]) -> NodePlan {
        NodePlan::with_limits("n", revision, limits, 200.0)
    }

    /// GPUs that do what they are told (clamped to their range), as the IO layer drives them.
    fn run(device: &mut [f64], commands: &[Command]) {
        for command in commands {
            if let Command::SetLimit { index, watts } = command {
                device[*index as usize] = watts.clamp(BOUNDS.min_watts, BOUNDS.max_watts);
            }
        }
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    fn acknowledgement(revision: u64, limits: &[f64]) -> Acknowledgement {
        Acknowledgement {
            revision,
            power_limits_watts: limits.to_vec(),
            boot_id: None,
        }
    }

    fn ack(revision: u64, limits: &[f64]) -> Command {
        Command::Acknowledge(acknowledgement(revision, limits))
    }

    /// What the IO layer reports once etcd stored an acknowledgement.
    fn stored(revision: u64, limits: &[f64]) -> Event {
        Event::Acknowledged(acknowledgement(revision, limits))
    }

    #[test]
    fn decreases_are_applied_before_any_increase_and_acknowledged_after_read_back() {
        let mut device = vec![400.0, 400.0, 400.0];
        let mut agent =
            Agent::new(vec![BOUNDS; 3], device.clone(), FENCE, secs(0)).expect("usable bounds");
        let commands = agent.handle(
            Event::PlanChanged(Some(plan(7, &[600.0, 250.0, 300.0]))),
            secs(1),
        );
        assert_eq!(
            commands,
            [
                Command::SetLimit {
                    index: 1,
                    watts: 250.0
                },
                Command::SetLimit {
                    index: 2,
                    watts: 300.0
                },
                Command::SetLimit {
                    index: 0,
                    watts: 600.0
                },
            ]
        );
        run(&mut device, &commands);
        let acks = agent.handle(Event::ReadBack(device.clone()), secs(1));
        assert_eq!(
            acks,
            [Command::Acknowledge(Acknowledgement {
                revision: 7,
                power_limits_watts: vec![600.0, 250.0, 300.0],
                boot_id: None,
            })]
        );
        agent.handle(stored(7, &[600.0, 250.0, 300.0]), secs(1));
        assert!(
            agent
                .handle(Event::ReadBack(device.clone()), secs(2))
                .is_empty(),
            "acknowledged once"
        );
    }

    #[test]
    fn a_gpu_that_refuses_a_lower_limit_is_acknowledged_at_what_it_enforces_and_set_again() {
        let mut agent =
            Agent::new(vec![BOUNDS; 2], vec![600.0, 600.0], FENCE, secs(0)).expect("usable bounds");
        let commands = agent.handle(Event::PlanChanged(Some(plan(4, &[300.0, 300.0]))), secs(0));
        assert_eq!(
            commands,
            [
                Command::SetLimit {
                    index: 0,
                    watts: 300.0
                },
                Command::SetLimit {
                    index: 1,
                    watts: 300.0
                }
            ]
        );
        // GPU 1 is stuck at 600 W.
        let answer = agent.handle(Event::ReadBack(vec![300.0, 600.0]), secs(0));
        assert_eq!(
            answer,
            [
                ack(4, &[300.0, 600.0]),
                Command::SetLimit {
                    index: 1,
                    watts: 300.0
                }
            ],
            "the operator learns what GPU 1 enforces; the agent tries again"
        );
        agent.handle(stored(4, &[300.0, 600.0]), secs(0));
        // Once it takes the limit, the acknowledgement follows what it enforces.
        assert_eq!(
            agent.handle(Event::ReadBack(vec![300.0, 300.0]), secs(1)),
            [ack(4, &[300.0, 300.0])]
        );
    }

    #[test]
    fn silence_beyond_the_fence_lowers_every_gpu_to_its_floor_until_contact_returns() {
        let mut device = vec![400.0, 400.0];
        let mut agent =
            Agent::new(vec![BOUNDS; 2], device.clone(), FENCE, secs(0)).expect("usable bounds");
        run(
            &mut device,
            &agent.handle(Event::PlanChanged(Some(plan(1, &[650.0, 500.0]))), secs(0)),
        );
        assert!(
            agent.handle(Event::Tick, secs(5)).is_empty(),
            "at the fence, not beyond it"
        );
        let fenced = agent.handle(Event::Tick, secs(6));
        run(&mut device, &fenced);
        assert_eq!(device, [200.0, 200.0]);
        assert_eq!(agent.mode(), Mode::Fenced);
        assert_eq!(agent.counters.fences, 1);
        run(
            &mut device,
            &agent.handle(Event::PlanChanged(Some(plan(2, &[700.0, 700.0]))), secs(7)),
        );
        assert_eq!(device, [200.0, 200.0], "a fenced agent raises nothing");
        run(&mut device, &agent.handle(Event::LeaseRenewed, secs(8)));
        assert_eq!(device, [700.0, 700.0]);
        assert_eq!(agent.mode(), Mode::Following);
    }

    #[test]
    fn shutdown_never_raises_and_leaves_the_floor() {
        let mut device = vec![450.0, 150.0];
        let mut agent =
            Agent::new(vec![BOUNDS; 2], device.clone(), FENCE, secs(0)).expect("usable bounds");
        let commands = agent.handle(Event::Shutdown, secs(1));
        run(&mut device, &commands);
        assert_eq!(
            commands,
            [Command::SetLimit {
                index: 0,
                watts: 200.0
            }]
        );
        assert!(
            agent
                .handle(Event::PlanChanged(Some(plan(3, &[700.0, 700.0]))), secs(2))
                .is_empty()
        );
        assert!(agent.handle(Event::LeaseRenewed, secs(2)).is_empty());
    }

    #[test]
    fn drift_is_counted_and_the_plan_reapplied() {
        let mut device = vec![400.0];
        let mut agent =
            Agent::new(vec![BOUNDS], device.clone(), FENCE, secs(0)).expect("usable bounds");
        run(
            &mut device,
            &agent.handle(Event::PlanChanged(Some(plan(1, &[300.0]))), secs(0)),
        );
        agent.handle(Event::ReadBack(device.clone()), secs(0));
        device[0] = 700.0;
        let commands = agent.handle(Event::ReadBack(device.clone()), secs(1));
        assert_eq!(
            commands,
            [Command::SetLimit {
                index: 0,
                watts: 300.0
            }]
        );
        assert_eq!(agent.counters.drifts, 1);
    }

    #[test]
    fn a_gpu_held_below_its_target_is_not_set_again_and_is_acknowledged_as_read_back() {
        let mut agent =
            Agent::new(vec![BOUNDS; 2], vec![400.0, 400.0], FENCE, secs(0)).expect("usable bounds");
        let commands = agent.handle(Event::PlanChanged(Some(plan(4, &[600.0, 333.3]))), secs(0));
        assert_eq!(commands.len(), 2, "{commands:?}");
        // GPU 0 is capped at 450 W out of band; GPU 1 rounds its limit 0.4 W up.
        let read = [450.0, 333.7];
        assert_eq!(
            agent.handle(Event::ReadBack(read.to_vec()), secs(0)),
            [ack(4, &read)]
        );
        agent.handle(stored(4, &read), secs(0));
        assert!(
            agent
                .handle(Event::ReadBack(read.to_vec()), secs(10))
                .is_empty(),
            "not set again at the drift check"
        );
        assert_eq!(agent.counters.drifts, 0);
        // The cap lifts and GPU 0 settles at its target: the operator is told.
        assert_eq!(
            agent.handle(Event::ReadBack(vec![600.0, 333.7]), secs(15)),
            [ack(4, &[600.0, 333.7])]
        );
        agent.handle(stored(4, &[600.0, 333.7]), secs(15));
        // Above its target (beyond the rounding) a GPU is still set again.
        assert_eq!(
            agent.handle(Event::ReadBack(vec![600.0, 334.0]), secs(20)),
            [Command::SetLimit {
                index: 1,
                watts: 333.3
            }]
        );
    }

    #[test]
    fn targets_outside_the_device_range_are_clamped_and_counted() {
        let mut agent =
            Agent::new(vec![BOUNDS; 2], vec![400.0, 400.0], FENCE, secs(0)).expect("usable bounds");
        let commands = agent.handle(Event::PlanChanged(Some(plan(1, &[900.0, 100.0]))), secs(0));
        assert_eq!(
            commands,
            [
                Command::SetLimit {
                    index: 1,
                    watts: 200.0
                },
                Command::SetLimit {
                    index: 0,
                    watts: 700.0
                },
            ]
        );
        assert_eq!(agent.counters.clamps, 2);
    }

    #[test]
    fn a_restarted_agent_adopts_what_is_enforced_until_a_plan_arrives() {
        let mut agent =
            Agent::new(vec![BOUNDS; 2], vec![333.0, 444.0], FENCE, secs(0)).expect("usable bounds");
        assert!(
            agent
                .handle(Event::ReadBack(vec![333.0, 444.0]), secs(0))
                .is_empty()
        );
        assert_eq!(agent.enforced(), [333.0, 444.0]);
        let gpus_missing_from_the_plan =
            agent.handle(Event::PlanChanged(Some(plan(4, &[500.0]))), secs(1));
        assert_eq!(
            gpus_missing_from_the_plan,
            [
                Command::SetLimit {
                    index: 1,
                    watts: 200.0
                },
                Command::SetLimit {
                    index: 0,
                    watts: 500.0
                },
            ]
        );
    }

    #[test]
    fn a_plan_older_than_the_one_followed_is_ignored_and_not_acknowledged() {
        let mut device = vec![400.0, 400.0];
        let mut agent =
            Agent::new(vec![BOUNDS; 2], device.clone(), FENCE, secs(0)).expect("usable bounds");
        run(
            &mut device,
            &agent.handle(Event::PlanChanged(Some(plan(9, &[300.0, 350.0]))), secs(1)),
        );
        let acks = agent.handle(Event::ReadBack(device.clone()), secs(1));
        assert!(matches!(acks[..], [Command::Acknowledge(ref a)] if a.revision == 9));
        agent.handle(stored(9, &[300.0, 350.0]), secs(1));
        let stale = agent.handle(Event::PlanChanged(Some(plan(8, &[700.0, 700.0]))), secs(2));
        assert!(stale.is_empty(), "{stale:?}");
        assert_eq!(agent.revision(), Some(9));
        assert_eq!(agent.enforced(), [300.0, 350.0]);
        assert!(
            agent
                .handle(Event::ReadBack(device.clone()), secs(3))
                .is_empty(),
            "nothing set and nothing acknowledged for the stale plan"
        );
        // A deletion has no revision: it always applies, and every GPU goes to its floor.
        let deleted = agent.handle(Event::PlanChanged(None), secs(4));
        run(&mut device, &deleted);
        assert_eq!(device, [200.0, 200.0]);
    }

    #[test]
    fn an_acknowledgement_is_sent_again_until_etcd_stored_it() {
        let mut device = vec![400.0];
        let mut agent =
            Agent::new(vec![BOUNDS], device.clone(), FENCE, secs(0)).expect("usable bounds");
        run(
            &mut device,
            &agent.handle(Event::PlanChanged(Some(plan(3, &[300.0]))), secs(0)),
        );
        let sent = agent.handle(Event::ReadBack(device.clone()), secs(0));
        assert_eq!(sent, [ack(3, &[300.0])]);
        // Its write failed: nothing said it was stored.
        assert_eq!(agent.handle(Event::Tick, secs(1)), [ack(3, &[300.0])]);
        assert_eq!(
            agent.handle(Event::ReadBack(device.clone()), secs(1)),
            [ack(3, &[300.0])]
        );
        assert!(agent.handle(stored(3, &[300.0]), secs(1)).is_empty());
        assert!(agent.handle(Event::Tick, secs(2)).is_empty());
        assert!(
            agent
                .handle(Event::ReadBack(device.clone()), secs(2))
                .is_empty()
        );
    }

    #[test]
    fn every_new_session_sends_the_acknowledgement_of_the_plan_followed_again() {
        let mut device = vec![400.0, 400.0];
        let mut agent =
            Agent::new(vec![BOUNDS; 2], device.clone(), FENCE, secs(0)).expect("usable bounds");
        run(
            &mut device,
            &agent.handle(Event::Registered(Some(plan(5, &[300.0, 350.0]))), secs(0)),
        );
        assert_eq!(
            agent.handle(Event::ReadBack(device.clone()), secs(0)),
            [ack(5, &[300.0, 350.0])]
        );
        agent.handle(stored(5, &[300.0, 350.0]), secs(0));
        assert!(agent.handle(Event::LeaseRenewed, secs(1)).is_empty());
        // The session was lost and a new one read the same plan: nothing to set, the ack again.
        assert_eq!(
            agent.handle(Event::Registered(Some(plan(5, &[300.0, 350.0]))), secs(2)),
            [ack(5, &[300.0, 350.0])]
        );
        // What a new session reads is etcd's current plan, even at a lower revision (a restored etcd).
        let restored = agent.handle(Event::Registered(Some(plan(2, &[250.0, 350.0]))), secs(3));
        assert_eq!(
            restored,
            [Command::SetLimit {
                index: 0,
                watts: 250.0
            }]
        );
    }

    #[test]
    fn every_acknowledgement_carries_the_boot_id() {
        let mut agent = Agent::new(vec![BOUNDS], vec![300.0], FENCE, secs(0))
            .expect("usable bounds")
            .with_boot_id(Some("5e1f3c1a-0d7b-4c55-9a0e-3f1b2c4d5e6f".into()));
        let commands = agent.handle(Event::PlanChanged(Some(plan(1, &[300.0]))), secs(0));
        let [Command::Acknowledge(ack)] = &commands[..] else {
            panic!("expected one acknowledgement, got {commands:?}");
        };
        assert_eq!(
            ack.boot_id.as_deref(),
            Some("5e1f3c1a-0d7b-4c55-9a0e-3f1b2c4d5e6f")
        );
    }

    #[test]
    fn a_gpu_whose_range_no_limit_fits_in_is_refused_naming_it_and_its_values() {
        let inverted = GpuBounds {
            min_watts: 700.0,
            max_watts: 200.0,
        };
        let error = Agent::new(vec![BOUNDS, inverted], vec![400.0; 2], FENCE, secs(0))
            .expect_err("min above max");
        assert_eq!(
            error.to_string(),
            "GPU 1 reports power limits from 700 W to 200 W; the agent needs finite limits with 0 < min <= max"
        );
        for (min_watts, max_watts) in [(f64::NAN, 700.0), (200.0, f64::INFINITY), (0.0, 700.0)] {
            let bounds = GpuBounds {
                min_watts,
                max_watts,
            };
            assert!(
                Agent::new(vec![bounds], vec![400.0], FENCE, secs(0)).is_err(),
                "{bounds:?}"
            );
        }
    }

    #[test]
    fn a_target_or_floor_that_is_not_a_number_means_the_floor() {
        let mut agent =
            Agent::new(vec![BOUNDS; 3], vec![400.0; 3], FENCE, secs(0)).expect("usable bounds");
        let mut broken = plan(2, &[f64::NAN, f64::INFINITY, 500.0]);
        broken.gpus[1].floor_watts = 250.0;
        broken.gpus[2].floor_watts = f64::NAN;
        let commands = agent.handle(Event::PlanChanged(Some(broken)), secs(0));
        assert_eq!(
            commands,
            [
                Command::SetLimit {
                    index: 0,
                    watts: 200.0
                },
                Command::SetLimit {
                    index: 1,
                    watts: 250.0
                },
                Command::SetLimit {
                    index: 2,
                    watts: 500.0
                },
            ]
        );
        assert_eq!(agent.counters.clamps, 2);
        // A floor above the range is the device's maximum, and a limit missing at start is taken as
        // high.
        let mut agent = Agent::new(vec![BOUNDS; 2], vec![400.0], FENCE, secs(0)).expect("bounds");
        let mut high_floor = plan(3, &[f64::NAN]);
        high_floor.gpus[0].floor_watts = 900.0;
        assert_eq!(
            agent.handle(Event::PlanChanged(Some(high_floor)), secs(1)),
            [
                Command::SetLimit {
                    index: 1,
                    watts: 200.0
                },
                Command::SetLimit {
                    index: 0,
                    watts: 700.0
                },
            ]
        );
    }

    /// Any event the IO layer may feed, with values of any kind (NaN, infinite, negative, huge).
    #[derive(Debug, Clone)]
    enum Input {
        Plan(u64, Vec<(u32, f64, f64, Option<u32>)>),
        Deleted,
        Registered(u64, Vec<(u32, f64, f64, Option<u32>)>),
        Stored(u64, Vec<f64>),
        ReadBack(Vec<f64>),
        Renew,
        Wait(u64),
        Shutdown,
    }

    fn watts() -> impl Strategy<Value = f64> {
        prop_oneof![
            3 => 100.0..800.0f64,
            1 => any::<f64>(),
            1 => Just(f64::NAN),
            1 => Just(f64::INFINITY),
            1 => Just(f64::NEG_INFINITY),
            1 => Just(0.0),
        ]
    }

    fn targets() -> impl Strategy<Value = Vec<(u32, f64, f64, Option<u32>)>> {
        prop::collection::vec(
            (0u32..6, watts(), watts(), prop::option::of(any::<u32>())),
            0..6,
        )
    }

    fn input() -> impl Strategy<Value = Input> {
        prop_oneof![
            (0u64..20, targets()).prop_map(|(r, t)| Input::Plan(r, t)),
            Just(Input::Deleted),
            (0u64..20, targets()).prop_map(|(r, t)| Input::Registered(r, t)),
            (0u64..20, prop::collection::vec(watts(), 0..6)).prop_map(|(r, l)| Input::Stored(r, l)),
            prop::collection::vec(watts(), 0..6).prop_map(Input::ReadBack),
            Just(Input::Renew),
            (0u64..10_000).prop_map(Input::Wait),
            Just(Input::Shutdown),
        ]
    }

    fn any_plan(revision: u64, targets: &[(u32, f64, f64, Option<u32>)]) -> NodePlan {
        let mut plan = plan(revision, &vec![0.0; targets.len()]);
        for (gpu, &(index, limit, floor, clock)) in plan.gpus.iter_mut().zip(targets) {
            gpu.index = index;
            gpu.power_limit_watts = limit;
            gpu.floor_watts = floor;
            gpu.sm_clock_mhz = clock;
        }
        plan
    }

    #[derive(Debug, Clone)]
    enum Step {
        Plan(Vec<f64>),
        Renew,
        Wait(u64),
        ReadBack,
        Drift(usize, f64),
        /// etcd stores the last acknowledgement sent.
        Stored,
        /// A new session reads the last plan again.
        Reregister,
        Shutdown,
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            3 => prop::collection::vec(100.0..800.0f64, 0..5).prop_map(Step::Plan),
            3 => Just(Step::Renew),
            3 => (0u64..4000).prop_map(Step::Wait),
            3 => Just(Step::ReadBack),
            1 => (0usize..4, 100.0..800.0f64).prop_map(|(i, w)| Step::Drift(i, w)),
            2 => Just(Step::Stored),
            1 => Just(Step::Reregister),
            1 => Just(Step::Shutdown),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1024))]

        /// Whatever the bounds, the limits found, the plans and the read-backs: no panic, an agent only
        /// for usable ranges, and every limit it sets is a number within its GPU's range.
        #[test]
        fn no_input_panics_or_sets_a_limit_outside_the_range(
            bounds in prop::collection::vec((watts(), watts()), 0..5),
            enforced in prop::collection::vec(watts(), 0..6),
            inputs in prop::collection::vec(input(), 0..40),
        ) {
            let bounds: Vec<GpuBounds> = bounds
                .into_iter()
                .map(|(min_watts, max_watts)| GpuBounds { min_watts, max_watts })
                .collect();
            let usable = bounds.iter().zip(0u32..).all(|(b, i)| b.check(i).is_ok());
            let Ok(mut agent) = Agent::new(bounds.clone(), enforced, FENCE, Duration::ZERO) else {
                prop_assert!(!usable, "refused usable bounds {bounds:?}");
                return Ok(());
            };
            prop_assert!(usable, "took unusable bounds {bounds:?}");
            let mut now = Duration::ZERO;
            for input in inputs {
                let event = match input {
                    Input::Plan(revision, targets) => Event::PlanChanged(Some(any_plan(revision, &targets))),
                    Input::Deleted => Event::PlanChanged(None),
                    Input::Registered(revision, targets) => Event::Registered(Some(any_plan(revision, &targets))),
                    Input::Stored(revision, limits) => Event::Acknowledged(acknowledgement(revision, &limits)),
                    Input::ReadBack(limits) => Event::ReadBack(limits),
                    Input::Renew => Event::LeaseRenewed,
                    Input::Wait(ms) => { now += Duration::from_millis(ms); Event::Tick }
                    Input::Shutdown => Event::Shutdown,
                };
                for command in agent.handle(event, now) {
                    match command {
                        Command::SetLimit { index, watts } => {
                            let range = bounds[index as usize];
                            prop_assert!(
                                (range.min_watts..=range.max_watts).contains(&watts),
                                "GPU {index} set to {watts} W outside {range:?}"
                            );
                        }
                        Command::Acknowledge(ack) => {
                            prop_assert!(ack.power_limits_watts.iter().all(|w| w.is_finite()), "{ack:?}");
                        }
                        Command::LockClock { .. } | Command::ResetClock { .. } => {}
                    }
                }
            }
        }

        /// Under any order of plans, renewals, silences, read-backs, drift and shutdown: the node's total
        /// limit never passes the larger of its total before and after a batch (decreases first); a
        /// fenced or stopping agent holds every GPU at or below its floor and raises nothing; an
        /// acknowledgement reports exactly what the GPUs enforce.
        #[test]
        fn no_batch_overshoots_and_silence_or_shutdown_holds_the_floor(steps in prop::collection::vec(step(), 1..60)) {
            let mut device = vec![400.0; 4];
            let mut agent = Agent::new(vec![BOUNDS; 4], device.clone(), Duration::from_millis(2500), Duration::ZERO).expect("usable bounds");
            let mut now = Duration::ZERO;
            let mut revision = 0;
            let mut last_plan = None;
            let mut last_sent = None;
            for step in steps {
                let event = match step {
                    Step::Plan(limits) => {
                        revision += 1;
                        last_plan = Some(plan(revision, &limits));
                        Event::PlanChanged(last_plan.clone())
                    }
                    Step::Stored => match last_sent.clone() {
                        Some(ack) => Event::Acknowledged(ack),
                        None => Event::Tick,
                    },
                    Step::Reregister => Event::Registered(last_plan.clone()),
                    Step::Renew => Event::LeaseRenewed,
                    Step::Wait(ms) => { now += Duration::from_millis(ms); Event::Tick }
                    Step::ReadBack => Event::ReadBack(device.clone()),
                    Step::Drift(i, watts) => { device[i] = watts.clamp(200.0, 700.0); Event::ReadBack(device.clone()) }
                    Step::Shutdown => Event::Shutdown,
                };
                let stopping = agent.mode() == Mode::ShuttingDown || matches!(event, Event::Shutdown);
                let before: Vec<f64> = device.clone();
                let commands = agent.handle(event, now);
                let mut total_peak = before.iter().sum::<f64>();
                for command in &commands {
                    match command {
                        Command::SetLimit { index, watts } => {
                            let i = *index as usize;
                            if stopping || agent.mode() == Mode::Fenced {
                                prop_assert!(*watts <= device[i] + 1e-9, "raised GPU {i} while fenced or stopping");
                            }
                            device[i] = watts.clamp(200.0, 700.0);
                            total_peak = total_peak.max(device.iter().sum());
                        }
                        Command::Acknowledge(ack) => {
                            prop_assert_eq!(&ack.power_limits_watts, &device);
                            last_sent = Some(ack.clone());
                        }
                        Command::LockClock { .. } | Command::ResetClock { .. } => {}
                    }
                }
                let bound = before.iter().sum::<f64>().max(device.iter().sum());
                prop_assert!(total_peak <= bound + 1e-6, "a batch peaked at {total_peak} W above {bound} W");
                if matches!(agent.mode(), Mode::Fenced | Mode::ShuttingDown) {
                    prop_assert!(device.iter().all(|w| *w <= 200.0 + 1e-9), "{device:?} above the floor");
                }
            }
        }
    }
}
