//! Simulated GPUs: each follows a workload's throughput curve (measured, or one of `examples/profiles`)
//! and honours the power limit and locked SM clock set on it, so the agent runs end to end without
//! GPUs. No IO.
//!
//! The model, per GPU:
//! - idle (no workload): draws its idle power, held down by the limit;
//! - power-limit curve: draws the limit or the curve's saturation power, whichever is lower, and
//!   delivers the best throughput measured at or below the limit, so dips in a curve are never paid for;
//! - locked-clock curve (points carry `smClockMHz`): draws the locked clock's power (the top clock's
//!   when none is locked); a limit below that holds the draw and scales throughput down in proportion.
//!
//! Between points the curve is linear; below its first point throughput falls in proportion to power
//! (or clock), above its last it stays flat. Settings take effect from the previous [`GpuBackend::advance`].

use std::time::Duration;

use kilowatt_crds::WorkloadProfileSpec;
use kilowatt_crds::profile_file::{self, ProfileFileError};

use super::{GpuBackend, GpuError, GpuInfo, GpuReading};

/// Idle draw of a GPU built by [`SimulatedGpus::uniform`], as a share of its maximum limit (an idle
/// H100-SXM draws about 70 W of its 700 W).
const IDLE_SHARE_OF_MAX_LIMIT: f64 = 0.1;

/// One measured point of a curve.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CurvePoint {
    pub power_watts: f64,
    pub throughput: f64,
    /// Set on every point of a locked-clock curve, on none of a power-limit curve.
    pub sm_clock_mhz: Option<u32>,
}

/// A workload's throughput against power limit (or locked SM clock), sorted by power.
#[derive(Debug, Clone, PartialEq)]
pub struct Curve {
    points: Vec<CurvePoint>,
}

/// Why a profile is not a usable curve.
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    #[error(transparent)]
    Parse(#[from] ProfileFileError),
    #[error("the profile has no points; measure the workload at one power limit or more")]
    NoPoints,
    #[error("point {index} has {field} {value}; it must be {expected}")]
    BadPoint {
        index: usize,
        field: &'static str,
        value: f64,
        expected: &'static str,
    },
    #[error("some points have smClockMHz and some do not; give every point a clock or none")]
    MixedClocks,
}

impl Curve {
    /// Validates the points (at least one; finite power above zero and throughput of zero or more;
    /// clocks on every point or none) and sorts them by power.
    pub fn new(mut points: Vec<CurvePoint>) -> Result<Self, ProfileError> {
        if points.is_empty() {
            return Err(ProfileError::NoPoints);
        }
        for (index, point) in points.iter().enumerate() {
            let bad = |field, value, expected| ProfileError::BadPoint {
                index,
                field,
                value,
                expected,
            };
            if !(point.power_watts.is_finite() && point.power_watts > 0.0) {
                return Err(bad(
                    "powerWatts",
                    point.power_watts,
                    "a finite number above zero",
                ));
            }
            if !(point.throughput.is_finite() && point.throughput >= 0.0) {
                return Err(bad(
                    "throughput",
                    point.throughput,
                    "a finite number, zero or more",
                ));
            }
            if point.sm_clock_mhz == Some(0) {
                return Err(bad("smClockMHz", 0.0, "above zero"));
            }
        }
        let clocked = points.iter().filter(|p| p.sm_clock_mhz.is_some()).count();
        if clocked != 0 && clocked != points.len() {
            return Err(ProfileError::MixedClocks);
        }
        points.sort_by(|a, b| a.power_watts.total_cmp(&b.power_watts));
        Ok(Self { points })
    }

    /// The curve of a `WorkloadProfile` spec.
    pub fn from_spec(spec: &WorkloadProfileSpec) -> Result<Self, ProfileError> {
        Self::new(
            spec.points
                .iter()
                .map(|p| CurvePoint {
                    power_watts: p.power_watts,
                    throughput: p.throughput,
                    sm_clock_mhz: p.sm_clock_mhz,
                })
                .collect(),
        )
    }

    /// Whether the points carry SM clocks (the plan locks a clock) rather than power limits alone.
    pub fn is_locked_clock(&self) -> bool {
        self.points.iter().any(|p| p.sm_clock_mhz.is_some())
    }

    /// The clocks of a locked-clock curve, ascending; empty for a power-limit curve.
    fn clocks_mhz(&self) -> Vec<u32> {
        let mut clocks: Vec<u32> = self.points.iter().filter_map(|p| p.sm_clock_mhz).collect();
        clocks.sort_unstable();
        clocks.dedup();
        clocks
    }

    /// Draw and throughput of a power-limit curve under `limit_watts`, and whether the limit holds
    /// the draw below what the workload would take.
    /// What a GPU running this workload delivers under a power limit, with its clock unlocked: the
    /// truth a learned curve is compared with.
    pub fn throughput_under_limit(&self, limit_watts: f64) -> f64 {
        self.under_power_limit(limit_watts).throughput
    }

    fn under_power_limit(&self, limit_watts: f64) -> Operating {
        let max_throughput = self.points.iter().map(|p| p.throughput).fold(0.0, f64::max);
        // Past the lowest power that reaches the best throughput, more power buys nothing.
        let saturation_watts = self
            .points
            .iter()
            .find(|p| p.throughput >= max_throughput)
            .map_or(limit_watts, |p| p.power_watts);
        let draw_watts = limit_watts.min(saturation_watts);
        let by_power: Vec<(f64, f64)> = self
            .points
            .iter()
            .map(|p| (p.power_watts, p.throughput))
            .collect();
        let best_measured = self
            .points
            .iter()
            .filter(|p| p.power_watts <= draw_watts)
            .map(|p| p.throughput)
            .fold(0.0, f64::max);
        Operating {
            draw_watts,
            throughput: interpolate(&by_power, draw_watts).max(best_measured),
            held_by_limit: limit_watts < saturation_watts,
        }
    }

    /// Draw and throughput of a locked-clock curve at `locked_mhz` (the top clock when `None`) under
    /// `limit_watts`.
    fn at_clock(&self, locked_mhz: Option<u32>, limit_watts: f64) -> Operating {
        let mut by_clock: Vec<(f64, CurvePoint)> = self
            .points
            .iter()
            .filter_map(|p| p.sm_clock_mhz.map(|mhz| (f64::from(mhz), *p)))
            .collect();
        by_clock.sort_by(|a, b| a.0.total_cmp(&b.0));
        let top_mhz = by_clock.last().map_or(0.0, |(mhz, _)| *mhz);
        let mhz = locked_mhz.map_or(top_mhz, f64::from);
        let power: Vec<(f64, f64)> = by_clock
            .iter()
            .map(|(mhz, p)| (*mhz, p.power_watts))
            .collect();
        let throughput: Vec<(f64, f64)> = by_clock
            .iter()
            .map(|(mhz, p)| (*mhz, p.throughput))
            .collect();
        let demand_watts = interpolate(&power, mhz);
        let full_throughput = interpolate(&throughput, mhz);
        if limit_watts < demand_watts {
            Operating {
                draw_watts: limit_watts,
                throughput: full_throughput * limit_watts / demand_watts,
                held_by_limit: true,
            }
        } else {
            Operating {
                draw_watts: demand_watts,
                throughput: full_throughput,
                held_by_limit: false,
            }
        }
    }
}

/// Parses a profile file (as in `crds/profiles`) into a curve.
pub fn parse_profile(yaml: &str) -> Result<Curve, ProfileError> {
    Curve::from_spec(&profile_file::parse(yaml)?.spec)
}

/// Piecewise-linear `y(x)` through `points` sorted by `x`: in proportion to `x` below the first point,
/// flat above the last.
fn interpolate(points: &[(f64, f64)], x: f64) -> f64 {
    let Some(&(first_x, first_y)) = points.first() else {
        return 0.0;
    };
    if x <= first_x {
        return first_y * (x / first_x).max(0.0);
    }
    for (&(xa, ya), &(xb, yb)) in points.iter().zip(points.iter().skip(1)) {
        if x <= xb {
            // NB: two points may share an x (two clocks measured at one power); take the better.
            return if xb > xa {
                ya + (yb - ya) * (x - xa) / (xb - xa)
            } else {
                ya.max(yb)
            };
        }
    }
    points.last().map_or(0.0, |&(_, y)| y)
}

/// What a GPU draws and delivers under its current settings.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Operating {
    draw_watts: f64,
    throughput: f64,
    held_by_limit: bool,
}

/// One simulated GPU: what it is, what runs on it, and what it draws when nothing does.
#[derive(Debug, Clone, PartialEq)]
pub struct SimulatedGpu {
    pub info: GpuInfo,
    /// The curve of the workload running on it; `None` when idle.
    pub workload: Option<Curve>,
    pub idle_watts: f64,
}

/// A simulated GPU with its settings and counters.
#[derive(Debug, Clone)]
struct State {
    gpu: SimulatedGpu,
    limit_watts: f64,
    /// A limit set but not yet in force, and when it takes effect (a GPU that applies late).
    pending: Option<(f64, Duration)>,
    /// Ignores new limits (a GPU that refuses them).
    stuck: bool,
    locked_mhz: Option<u32>,
    energy_joules: f64,
    work_done: f64,
    /// What the settings give, computed again whenever one changes ([`State::settle`]): reading a
    /// GPU is then a copy, not a walk over its curve.
    operating: Operating,
}

impl State {
    fn new(gpu: SimulatedGpu) -> State {
        let mut state = State {
            limit_watts: gpu.info.default_limit_watts,
            pending: None,
            stuck: false,
            locked_mhz: None,
            energy_joules: 0.0,
            work_done: 0.0,
            operating: Operating {
                draw_watts: 0.0,
                throughput: 0.0,
                held_by_limit: false,
            },
            gpu,
        };
        state.settle();
        state
    }

    /// Recomputes the operating point after a setting or the workload changed.
    fn settle(&mut self) {
        self.operating = self.compute_operating();
    }

    fn operating(&self) -> Operating {
        self.operating
    }

    fn compute_operating(&self) -> Operating {
        match &self.gpu.workload {
            None => Operating {
                draw_watts: self.gpu.idle_watts.min(self.limit_watts),
                throughput: 0.0,
                held_by_limit: self.limit_watts < self.gpu.idle_watts,
            },
            Some(curve) if curve.is_locked_clock() => {
                curve.at_clock(self.locked_mhz, self.limit_watts)
            }
            // NB: a power-limit curve says nothing about clocks, so a locked clock only shows in readings.
            Some(curve) => curve.under_power_limit(self.limit_watts),
        }
    }
}

/// The simulated GPUs of one node. Each starts at its default limit with its clock unlocked.
#[derive(Debug, Clone)]
pub struct SimulatedGpus {
    gpus: Vec<State>,
    now: Duration,
    /// How long a new limit takes to come into force.
    apply_delay: Duration,
}

impl SimulatedGpus {
    pub fn new(gpus: Vec<SimulatedGpu>) -> Self {
        let gpus = gpus.into_iter().map(State::new).collect();
        Self {
            gpus,
            now: Duration::ZERO,
            apply_delay: Duration::ZERO,
        }
    }

    /// `count` identical GPUs of `model` on `node`, UUIDs `SIM-<node>-<index>`, default limit at the
    /// maximum, every one running `workload` (or idle). A locked-clock curve's clocks are the GPUs'
    /// supported clocks; with a power-limit curve or none, clocks cannot be locked.
    pub fn uniform(
        node: &str,
        count: u32,
        model: &str,
        min_limit_watts: f64,
        max_limit_watts: f64,
        workload: Option<Curve>,
    ) -> Self {
        let supported_sm_clocks_mhz = workload.as_ref().map(Curve::clocks_mhz).unwrap_or_default();
        Self::new(
            (0..count)
                .map(|index| SimulatedGpu {
                    info: GpuInfo {
                        index,
                        uuid: format!("SIM-{node}-{index}"),
                        model: model.to_owned(),
                        min_limit_watts,
                        max_limit_watts,
                        default_limit_watts: max_limit_watts,
                        supported_sm_clocks_mhz: supported_sm_clocks_mhz.clone(),
                    },
                    workload: workload.clone(),
                    idle_watts: IDLE_SHARE_OF_MAX_LIMIT * max_limit_watts,
                })
                .collect(),
        )
    }

    /// Sets the limit without the range check, as another tool (or a reboot) would: for tests of
    /// drift detection.
    pub fn force_limit(&mut self, index: u32, watts: f64) -> Result<(), GpuError> {
        let state = self.gpu_mut(index)?;
        state.limit_watts = watts;
        state.settle();
        Ok(())
    }

    /// From now on, a new limit comes into force `delay` after it is set (at the
    /// [`GpuBackend::advance`] that reaches that instant).
    pub fn set_apply_delay(&mut self, delay: Duration) {
        self.apply_delay = delay;
    }

    /// While `stuck`, the GPU accepts new limits without error and keeps the one it has.
    pub fn set_stuck(&mut self, index: u32, stuck: bool) -> Result<(), GpuError> {
        self.gpu_mut(index)?.stuck = stuck;
        Ok(())
    }

    /// What a reboot or driver reload does: every GPU back at its default limit, clocks unlocked,
    /// nothing pending.
    pub fn reset_to_defaults(&mut self) {
        for state in &mut self.gpus {
            state.limit_watts = state.gpu.info.default_limit_watts;
            state.locked_mhz = None;
            state.pending = None;
            state.settle();
        }
    }

    /// Starts (`Some`) or stops (`None`) a workload on a GPU.
    pub fn set_workload(&mut self, index: u32, workload: Option<Curve>) -> Result<(), GpuError> {
        let state = self.gpu_mut(index)?;
        state.gpu.workload = workload;
        state.settle();
        Ok(())
    }

    /// What the GPU draws now.
    pub fn draw_watts(&self, index: u32) -> Result<f64, GpuError> {
        Ok(self.gpu(index)?.operating().draw_watts)
    }

    /// The SM clock locked on a GPU, if any.
    pub fn locked_sm_clock_mhz(&self, index: u32) -> Result<Option<u32>, GpuError> {
        Ok(self.gpu(index)?.locked_mhz)
    }

    /// Throughput now, in the curve's unit per second.
    pub fn throughput(&self, index: u32) -> Result<f64, GpuError> {
        Ok(self.gpu(index)?.operating().throughput)
    }

    /// Throughput integrated up to the last [`GpuBackend::advance`], in the curve's unit.
    pub fn work_done(&self, index: u32) -> Result<f64, GpuError> {
        Ok(self.gpu(index)?.work_done)
    }

    fn gpu(&self, index: u32) -> Result<&State, GpuError> {
        self.gpus
            .iter()
            .find(|state| state.gpu.info.index == index)
            .ok_or(GpuError::NoSuchGpu { index })
    }

    fn gpu_mut(&mut self, index: u32) -> Result<&mut State, GpuError> {
        self.gpus
            .iter_mut()
            .find(|state| state.gpu.info.index == index)
            .ok_or(GpuError::NoSuchGpu { index })
    }
}

impl GpuBackend for SimulatedGpus {
    fn name(&self) -> &'static str {
        "simulated"
    }

    fn inventory(&self) -> Result<Vec<GpuInfo>, GpuError> {
        Ok(self
            .gpus
            .iter()
            .map(|state| state.gpu.info.clone())
            .collect())
    }

    fn power_limit_watts(&self, index: u32) -> Result<f64, GpuError> {
        Ok(self.gpu(index)?.limit_watts)
    }

    fn set_power_limit_watts(&mut self, index: u32, watts: f64) -> Result<(), GpuError> {
        let (apply_delay, now) = (self.apply_delay, self.now);
        let state = self.gpu_mut(index)?;
        let (min, max) = (
            state.gpu.info.min_limit_watts,
            state.gpu.info.max_limit_watts,
        );
        if !(min..=max).contains(&watts) {
            return Err(GpuError::Failed {
                operation: "setting the power limit",
                index,
                message: format!(
                    "{watts} W is outside the {min}-{max} W range the GPU accepts; the limit must be clamped to it first"
                ),
            });
        }
        if state.stuck {
            return Ok(());
        }
        if apply_delay.is_zero() {
            state.limit_watts = watts;
            state.pending = None;
            state.settle();
        } else if state.pending.is_none_or(|(pending, _)| pending != watts) {
            // NB: setting the pending limit again does not restart its delay.
            state.pending = Some((watts, now + apply_delay));
        }
        Ok(())
    }

    fn lock_sm_clock(&mut self, index: u32, mhz: u32) -> Result<(), GpuError> {
        const OPERATION: &str = "locking the SM clock";
        let state = self.gpu_mut(index)?;
        let clocks = &state.gpu.info.supported_sm_clocks_mhz;
        let (Some(lowest), Some(highest)) = (clocks.first(), clocks.last()) else {
            return Err(GpuError::NotSupported {
                operation: OPERATION,
                index,
            });
        };
        if !clocks.contains(&mhz) {
            return Err(GpuError::Failed {
                operation: OPERATION,
                index,
                message: format!(
                    "{mhz} MHz is not a supported SM clock; pick one of the inventory's clocks ({lowest}-{highest} MHz)"
                ),
            });
        }
        state.locked_mhz = Some(mhz);
        state.settle();
        Ok(())
    }

    fn reset_sm_clock(&mut self, index: u32) -> Result<(), GpuError> {
        let state = self.gpu_mut(index)?;
        state.locked_mhz = None;
        state.settle();
        Ok(())
    }

    fn read(&self, index: u32) -> Result<GpuReading, GpuError> {
        let state = self.gpu(index)?;
        let operating = state.operating();
        let busy = state.gpu.workload.is_some();
        let top_curve_clock = state
            .gpu
            .workload
            .as_ref()
            .and_then(|curve| curve.points.iter().filter_map(|p| p.sm_clock_mhz).max());
        Ok(GpuReading {
            persistence_mode: None,
            power_watts: Some(operating.draw_watts),
            energy_joules: Some(state.energy_joules),
            power_limit_watts: Some(state.limit_watts),
            sm_clock_mhz: state.locked_mhz.or(top_curve_clock),
            utilization_percent: Some(if busy { 100 } else { 0 }),
            throttle_reasons: if operating.held_by_limit {
                vec!["sw_power_cap"]
            } else {
                Vec::new()
            },
        })
    }

    fn advance(&mut self, now: Duration) {
        // NB: time never runs backwards here; an earlier `now` integrates nothing.
        let from = self.now;
        for state in &mut self.gpus {
            let mut at = from;
            if let Some((watts, due)) = state.pending
                && due <= now
            {
                // Integrate up to the instant the pending limit takes effect, then apply it.
                let before = due.saturating_sub(at).as_secs_f64();
                let operating = state.operating();
                state.energy_joules += operating.draw_watts * before;
                state.work_done += operating.throughput * before;
                at = at.max(due);
                state.limit_watts = watts;
                state.pending = None;
                state.settle();
            }
            let elapsed_seconds = now.saturating_sub(at).as_secs_f64();
            let operating = state.operating();
            state.energy_joules += operating.draw_watts * elapsed_seconds;
            state.work_done += operating.throughput * elapsed_seconds;
        }
        self.now = self.now.max(now);
    }

    fn settle_time(&self) -> Duration {
        self.apply_delay
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_late_gpu_applies_its_limit_after_the_delay_and_a_stuck_one_never() {
        let mut gpus = SimulatedGpus::uniform("n", 2, "H100", 200.0, 700.0, None);
        gpus.set_apply_delay(Duration::from_millis(107));
        gpus.set_power_limit_watts(0, 300.0).expect("in range");
        gpus.advance(Duration::from_millis(100));
        assert_eq!(gpus.power_limit_watts(0).expect("gpu 0"), 700.0, "not yet");
        gpus.set_power_limit_watts(0, 300.0).expect("in range");
        gpus.advance(Duration::from_millis(200));
        assert_eq!(gpus.power_limit_watts(0).expect("gpu 0"), 300.0);
        gpus.set_stuck(1, true).expect("gpu 1");
        gpus.set_power_limit_watts(1, 300.0).expect("accepted");
        gpus.advance(Duration::from_secs(5));
        assert_eq!(gpus.power_limit_watts(1).expect("gpu 1"), 700.0);
        gpus.reset_to_defaults();
        assert_eq!(gpus.power_limit_watts(0).expect("gpu 0"), 700.0);
    }

    fn example(name: &str) -> &'static str {
        profile_file::example_profile(name).expect("an example profile of that name")
    }

    fn h100s(profile: Option<&str>) -> SimulatedGpus {
        let curve = profile.map(|yaml| parse_profile(yaml).expect("example profile parses"));
        SimulatedGpus::uniform("node-a", 2, "H100-SXM", 200.0, 700.0, curve)
    }

    fn assert_close(actual: f64, expected: f64) {
        assert!(
            (actual - expected).abs() < 1e-9 * expected.abs().max(1.0),
            "{actual} != {expected}"
        );
    }

    fn draw(gpus: &SimulatedGpus, index: u32) -> f64 {
        gpus.read(index)
            .expect("reading")
            .power_watts
            .expect("simulated GPUs report power")
    }

    #[test]
    fn energy_counter_increases_by_power_times_elapsed() {
        let mut gpus = h100s(None);
        gpus.advance(Duration::from_secs(10));
        let energy = |gpus: &SimulatedGpus| gpus.read(0).expect("reading").energy_joules;
        assert_eq!(energy(&gpus), Some(700.0), "70 W idle for 10 s");

        gpus.set_workload(
            0,
            Some(parse_profile(example("llm-pretrain-h100")).expect("parses")),
        )
        .expect("GPU 0 exists");
        gpus.advance(Duration::from_millis(12_500));
        assert_eq!(
            energy(&gpus),
            Some(700.0 + 700.0 * 2.5),
            "700 W busy for 2.5 s"
        );
    }

    #[test]
    fn time_running_backwards_integrates_nothing() {
        let mut gpus = h100s(None);
        gpus.advance(Duration::from_secs(10));
        gpus.advance(Duration::from_secs(5));
        gpus.advance(Duration::from_secs(11));
        assert_eq!(gpus.read(0).expect("reading").energy_joules, Some(770.0));
    }

    #[test]
    fn work_done_integrates_throughput() {
        let mut gpus = h100s(Some(example("llm-pretrain-h100")));
        gpus.advance(Duration::from_secs(2));
        gpus.set_power_limit_watts(0, 400.0).expect("in range");
        gpus.advance(Duration::from_secs(3));
        assert_close(gpus.work_done(0).expect("GPU 0"), 2.0 * 12000.0 + 9480.0);
        assert_close(gpus.work_done(1).expect("GPU 1"), 3.0 * 12000.0);
    }

    #[test]
    fn lowering_the_limit_lowers_draw_and_throughput_on_a_compute_bound_curve() {
        let mut gpus = h100s(Some(example("llm-pretrain-h100")));
        assert_eq!(draw(&gpus, 0), 700.0);
        assert_eq!(gpus.throughput(0).expect("GPU 0"), 12000.0);
        assert!(gpus.read(0).expect("reading").throttle_reasons.is_empty());

        gpus.set_power_limit_watts(0, 400.0).expect("in range");
        let reading = gpus.read(0).expect("reading");
        assert_eq!(reading.power_watts, Some(400.0));
        assert_eq!(reading.power_limit_watts, Some(400.0));
        assert_eq!(reading.throttle_reasons, vec!["sw_power_cap"]);
        assert_eq!(reading.utilization_percent, Some(100));
        assert_eq!(gpus.throughput(0).expect("GPU 0"), 9480.0);
    }

    #[test]
    fn throughput_between_points_is_interpolated() {
        let mut gpus = h100s(Some(example("llm-pretrain-h100")));
        gpus.set_power_limit_watts(0, 425.0).expect("in range");
        assert_close(gpus.throughput(0).expect("GPU 0"), (9480.0 + 10320.0) / 2.0);
    }

    #[test]
    fn below_the_first_point_throughput_falls_in_proportion_to_power() {
        let curve = Curve::new(vec![
            point(300.0, 600.0),
            point(400.0, 700.0),
            point(500.0, 750.0),
        ])
        .expect("valid curve");
        let mut gpus = SimulatedGpus::uniform("n", 1, "H100-SXM", 200.0, 700.0, Some(curve));
        gpus.set_power_limit_watts(0, 200.0).expect("in range");
        assert_close(gpus.throughput(0).expect("GPU 0"), 400.0);
    }

    #[test]
    fn a_memory_bound_curve_barely_slows() {
        let mut gpus = h100s(Some(example("llm-serve-h100")));
        let full = gpus.throughput(0).expect("GPU 0");
        gpus.set_power_limit_watts(0, 400.0).expect("in range");
        let capped = gpus.throughput(0).expect("GPU 0");
        assert_eq!(draw(&gpus, 0), 400.0);
        assert!(capped >= 0.95 * full, "{capped} vs {full}");
        assert!(capped < full);
    }

    #[test]
    fn dips_in_a_curve_are_not_paid_for() {
        let mut gpus = h100s(Some(example("llm-serve-h100")));
        // The serving curve measures 3360 at 400 W and 3340 at 450 W.
        for limit in [400.0, 425.0, 450.0] {
            gpus.set_power_limit_watts(0, limit).expect("in range");
            assert_eq!(gpus.throughput(0).expect("GPU 0"), 3360.0, "at {limit} W");
        }
        gpus.set_power_limit_watts(0, 475.0).expect("in range");
        assert_close(gpus.throughput(0).expect("GPU 0"), (3340.0 + 3448.0) / 2.0);
    }

    #[test]
    fn a_saturated_workload_draws_only_what_it_needs() {
        let curve = Curve::new(vec![
            point(200.0, 10.0),
            point(300.0, 20.0),
            point(400.0, 20.0),
        ])
        .expect("valid curve");
        let mut gpus = SimulatedGpus::uniform("n", 1, "H100-SXM", 200.0, 700.0, Some(curve));
        let reading = gpus.read(0).expect("reading");
        assert_eq!(reading.power_watts, Some(300.0));
        assert!(reading.throttle_reasons.is_empty());
        gpus.set_power_limit_watts(0, 250.0).expect("in range");
        assert_eq!(draw(&gpus, 0), 250.0);
        assert_close(gpus.throughput(0).expect("GPU 0"), 15.0);
    }

    #[test]
    fn locked_clock_sets_draw() {
        let mut gpus = h100s(Some(example("llm-finetune-h100-clocks")));
        assert_eq!(
            gpus.inventory().expect("inventory")[0].supported_sm_clocks_mhz,
            vec![990, 1200, 1410, 1620, 1830, 1980]
        );
        assert_eq!(draw(&gpus, 0), 700.0, "unlocked runs at the top clock");
        assert_eq!(gpus.throughput(0).expect("GPU 0"), 100.0);

        gpus.lock_sm_clock(0, 1410).expect("supported clock");
        let reading = gpus.read(0).expect("reading");
        assert_eq!(reading.power_watts, Some(500.0));
        assert_eq!(reading.sm_clock_mhz, Some(1410));
        assert!(reading.throttle_reasons.is_empty());
        assert_eq!(gpus.throughput(0).expect("GPU 0"), 86.0);

        gpus.reset_sm_clock(0).expect("reset");
        assert_eq!(draw(&gpus, 0), 700.0);
    }

    #[test]
    fn a_limit_below_the_locked_clocks_power_holds_draw_and_scales_throughput() {
        let mut gpus = h100s(Some(example("llm-finetune-h100-clocks")));
        gpus.lock_sm_clock(0, 1410).expect("supported clock");
        gpus.set_power_limit_watts(0, 450.0).expect("in range");
        let reading = gpus.read(0).expect("reading");
        assert_eq!(reading.power_watts, Some(450.0));
        assert_eq!(reading.throttle_reasons, vec!["sw_power_cap"]);
        assert_close(gpus.throughput(0).expect("GPU 0"), 86.0 * 450.0 / 500.0);
    }

    #[test]
    fn clocks_the_gpu_does_not_support_are_rejected() {
        let mut clocked = h100s(Some(example("llm-finetune-h100-clocks")));
        let error = clocked
            .lock_sm_clock(0, 1500)
            .expect_err("not a supported clock");
        assert_eq!(error.category(), "failed");
        assert!(error.to_string().contains("990-1980 MHz"), "{error}");

        let mut unclocked = h100s(Some(example("llm-pretrain-h100")));
        let error = unclocked
            .lock_sm_clock(0, 1410)
            .expect_err("no clocks to lock");
        assert_eq!(error.category(), "not_supported");
    }

    #[test]
    fn out_of_range_limits_are_rejected() {
        let mut gpus = h100s(Some(example("llm-pretrain-h100")));
        for watts in [199.0, 701.0, f64::NAN, -1.0] {
            let error = gpus
                .set_power_limit_watts(0, watts)
                .expect_err("outside 200-700 W");
            assert_eq!(error.category(), "failed", "{watts} W");
        }
        assert_eq!(gpus.power_limit_watts(0).expect("GPU 0"), 700.0);
        gpus.set_power_limit_watts(0, 200.0)
            .expect("the minimum is in range");
    }

    #[test]
    fn a_forced_limit_is_what_the_gpu_reports() {
        let mut gpus = h100s(Some(example("llm-pretrain-h100")));
        gpus.force_limit(1, 300.0).expect("GPU 1 exists");
        assert_eq!(gpus.power_limit_watts(1).expect("GPU 1"), 300.0);
        assert_eq!(draw(&gpus, 1), 300.0);
        assert_eq!(gpus.power_limit_watts(0).expect("GPU 0"), 700.0);
    }

    #[test]
    fn an_idle_gpu_draws_its_idle_power_held_by_the_limit() {
        let mut gpus = SimulatedGpus::new(vec![SimulatedGpu {
            info: GpuInfo {
                index: 3,
                uuid: "SIM-n-3".into(),
                model: "A100".into(),
                min_limit_watts: 50.0,
                max_limit_watts: 400.0,
                default_limit_watts: 400.0,
                supported_sm_clocks_mhz: Vec::new(),
            },
            workload: None,
            idle_watts: 60.0,
        }]);
        let reading = gpus.read(3).expect("GPU 3");
        assert_eq!(reading.power_watts, Some(60.0));
        assert_eq!(reading.utilization_percent, Some(0));
        gpus.set_power_limit_watts(3, 50.0).expect("in range");
        assert_eq!(draw(&gpus, 3), 50.0);
        assert_eq!(gpus.throughput(3).expect("GPU 3"), 0.0);
    }

    #[test]
    fn unknown_gpus_are_reported_as_such() {
        let gpus = h100s(None);
        assert_eq!(
            gpus.read(2).expect_err("two GPUs").category(),
            "no_such_gpu"
        );
    }

    #[test]
    fn uniform_gpus_are_named_after_their_node() {
        let gpus = h100s(None);
        let inventory = gpus.inventory().expect("inventory");
        assert_eq!(inventory.len(), 2);
        assert_eq!(inventory[1].uuid, "SIM-node-a-1");
        assert_eq!(inventory[1].default_limit_watts, 700.0);
        assert_eq!(gpus.name(), "simulated");
    }

    #[test]
    fn every_example_profile_is_a_curve() {
        for (name, text) in profile_file::EXAMPLE_PROFILES {
            let curve = parse_profile(text).unwrap_or_else(|e| panic!("{name}: {e:?}"));
            assert!(!curve.points.is_empty());
        }
    }

    #[test]
    fn profiles_with_mixed_clocks_or_no_points_are_rejected() {
        let head = "name: a\nkind: training\ngpuModel: H100-SXM\nthroughputUnit: x\n";
        let mixed = format!(
            "{head}points:\n  - {{powerWatts: 300, smClockMHz: 990, throughput: 1}}\n  - {{powerWatts: 400, throughput: 2}}\n"
        );
        assert!(matches!(
            parse_profile(&mixed),
            Err(ProfileError::MixedClocks)
        ));
        let empty = format!("{head}points: []\n");
        assert!(matches!(parse_profile(&empty), Err(ProfileError::NoPoints)));
        let not_a_profile = "gpuModel: H100-SXM\n";
        assert!(matches!(
            parse_profile(not_a_profile),
            Err(ProfileError::Parse(_))
        ));
    }

    fn point(power_watts: f64, throughput: f64) -> CurvePoint {
        CurvePoint {
            power_watts,
            throughput,
            sm_clock_mhz: None,
        }
    }
}
