//! When the reconcile loop runs its next pass: at once when it starts or leads anew, a debounce after a
//! change, just after a schedule boundary, on a retry (raises held back for acknowledgements, pods
//! waiting for their GPU report, a failed pass with exponential backoff), and at least every resync
//! period. One pure state machine that the controller and `kilowatt simulate` both drive, so the
//! simulator's operator cannot drift from the deployed one. No IO; time is passed in, as the time since
//! the loop started.

use std::time::Duration;

/// `kilowatt operator --debounce-ms`'s default.
pub const DEFAULT_DEBOUNCE: Duration = Duration::from_millis(500);

/// `kilowatt operator --resync-seconds`' default.
pub const DEFAULT_RESYNC: Duration = Duration::from_secs(60);
/// How long an agent may take to acknowledge a plan before its node is planned as not lowering:
/// agents apply and acknowledge a plan in well under a second (the cluster tests see 0.1-0.6 s from
/// a cut to enforcement); a node held by mistake only lowers the others until its ack arrives.
pub const DEFAULT_ACK_TIMEOUT: Duration = Duration::from_secs(1);

/// How long after a schedule boundary the pass runs, so that the window has opened (or closed) by the
/// time the pass reads the clock.
pub const TRANSITION_LAG: Duration = Duration::from_millis(50);

/// The first retry after a failed pass; each further failure doubles it, up to [`MAX_BACKOFF`].
pub const FIRST_BACKOFF: Duration = Duration::from_millis(500);

/// The longest wait between retries of a failing pass.
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// A rollout whose raises wait for acknowledgements is looked at again after the debounce, and never
/// sooner than this: acknowledgements take a round trip through etcd.
pub const MIN_ROLLOUT_RETRY: Duration = Duration::from_millis(200);

/// The loop's settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Timing {
    /// Changes are planned together once this has passed since the first of them.
    pub debounce: Duration,
    /// The loop passes at least this often, changed or not.
    pub resync: Duration,
    /// Pods placed before their node's agent reported their GPUs are looked at again this often.
    pub awaiting_report_recheck: Duration,
    /// While an exploration sweep is in progress, the loop passes this often to step it on as its
    /// windows arrive.
    pub sweep_recheck: Duration,
}

/// What a finished pass tells the loop about the next one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PassOutcome {
    /// Some raise waits for acknowledgements.
    pub raises_held_back: bool,
    /// Some pod waits for its node's agent to report which GPUs it holds.
    pub awaiting_gpu_report: bool,
    /// The next schedule boundary of any budget, as time since the loop started.
    pub next_transition: Option<Duration>,
    /// Some exploration sweep is in progress.
    pub sweeping: bool,
}

/// The loop's timers.
#[derive(Debug, Clone, PartialEq)]
pub struct LoopTimers {
    timing: Timing,
    last_pass: Option<Duration>,
    first_change: Option<Duration>,
    next_transition: Option<Duration>,
    retry_at: Option<Duration>,
    backoff: Duration,
}

impl LoopTimers {
    pub fn new(timing: Timing) -> Self {
        Self {
            timing,
            last_pass: None,
            first_change: None,
            next_transition: None,
            retry_at: None,
            backoff: FIRST_BACKOFF,
        }
    }

    /// A watched object changed at `now`; changes until the pass starts are planned together.
    pub fn changed(&mut self, now: Duration) {
        self.first_change.get_or_insert(now);
    }

    /// When the next pass is due: at once before the first, else the earliest of its reasons.
    pub fn next_pass(&self) -> Duration {
        let Some(last_pass) = self.last_pass else {
            return Duration::ZERO;
        };
        [
            self.first_change.map(|at| at + self.timing.debounce),
            self.next_transition.map(|at| at + TRANSITION_LAG),
            self.retry_at,
        ]
        .into_iter()
        .flatten()
        .fold(last_pass + self.timing.resync, Duration::min)
    }

    /// Whether a pass is due at `now`.
    pub fn due(&self, now: Duration) -> bool {
        now >= self.next_pass()
    }

    /// A pass starts at `now`: every change so far is in it, and no retry is pending any more.
    pub fn pass_started(&mut self, now: Duration) {
        self.last_pass = Some(now);
        self.first_change = None;
        self.retry_at = None;
    }

    /// The pass that started last finished at `now`.
    pub fn pass_finished(&mut self, now: Duration, outcome: PassOutcome) {
        self.backoff = FIRST_BACKOFF;
        self.next_transition = outcome.next_transition;
        let rollout = outcome
            .raises_held_back
            .then_some(self.timing.debounce.max(MIN_ROLLOUT_RETRY));
        let reports = outcome
            .awaiting_gpu_report
            .then_some(self.timing.awaiting_report_recheck);
        let sweep = outcome.sweeping.then_some(self.timing.sweep_recheck);
        self.retry_at = rollout
            .into_iter()
            .chain(reports)
            .chain(sweep)
            .min()
            .map(|in_| now + in_);
    }

    /// The pass that started last failed at `now`; returns how long until it is retried.
    pub fn pass_failed(&mut self, now: Duration) -> Duration {
        let retry_in = self.backoff;
        self.retry_at = Some(now + retry_in);
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
        retry_in
    }

    /// This replica stopped leading: what it knew of schedules and retries is the next leader's to
    /// find out; only the resync keeps it looking.
    pub fn following(&mut self) {
        self.first_change = None;
        self.next_transition = None;
        self.retry_at = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMING: Timing = Timing {
        debounce: Duration::from_millis(500),
        resync: Duration::from_secs(60),
        awaiting_report_recheck: Duration::from_secs(5),
        sweep_recheck: Duration::from_secs(10),
    };

    fn ms(millis: u64) -> Duration {
        Duration::from_millis(millis)
    }

    fn after_first_pass() -> LoopTimers {
        let mut timers = LoopTimers::new(TIMING);
        assert!(timers.due(Duration::ZERO), "the first pass runs at once");
        timers.pass_started(Duration::ZERO);
        timers.pass_finished(ms(10), PassOutcome::default());
        timers
    }

    #[test]
    fn an_idle_loop_passes_at_the_resync_period() {
        let timers = after_first_pass();
        assert_eq!(timers.next_pass(), Duration::from_secs(60));
        assert!(!timers.due(ms(59_999)));
        assert!(timers.due(ms(60_000)));
    }

    #[test]
    fn changes_are_planned_together_a_debounce_after_the_first() {
        let mut timers = after_first_pass();
        timers.changed(ms(1_000));
        timers.changed(ms(1_400));
        assert_eq!(
            timers.next_pass(),
            ms(1_500),
            "from the first change, not the last"
        );
        timers.pass_started(ms(1_500));
        timers.changed(ms(1_600));
        assert_eq!(
            timers.next_pass(),
            ms(2_100),
            "a change during a pass gets a pass of its own"
        );
    }

    #[test]
    fn a_schedule_boundary_is_acted_on_just_after_it_passes() {
        let mut timers = LoopTimers::new(TIMING);
        timers.pass_started(Duration::ZERO);
        timers.pass_finished(
            ms(10),
            PassOutcome {
                next_transition: Some(Duration::from_secs(40)),
                ..PassOutcome::default()
            },
        );
        assert_eq!(timers.next_pass(), ms(40_050));
    }

    #[test]
    fn held_back_raises_are_retried_after_the_debounce_but_not_sooner_than_200_ms() {
        let mut timers = LoopTimers::new(Timing {
            debounce: ms(50),
            ..TIMING
        });
        timers.pass_started(Duration::ZERO);
        let waiting = PassOutcome {
            raises_held_back: true,
            awaiting_gpu_report: true,
            ..PassOutcome::default()
        };
        timers.pass_finished(ms(100), waiting);
        assert_eq!(timers.next_pass(), ms(300), "the sooner of the two retries");
        let mut timers = after_first_pass();
        timers.pass_started(ms(1_000));
        timers.pass_finished(
            ms(1_000),
            PassOutcome {
                awaiting_gpu_report: true,
                ..PassOutcome::default()
            },
        );
        assert_eq!(timers.next_pass(), ms(6_000));
        timers.pass_started(ms(6_000));
        timers.pass_finished(
            ms(6_000),
            PassOutcome {
                sweeping: true,
                ..PassOutcome::default()
            },
        );
        assert_eq!(
            timers.next_pass(),
            ms(16_000),
            "a sweep in progress is stepped on"
        );
    }

    #[test]
    fn failures_back_off_exponentially_to_30_s_and_a_success_resets_it() {
        let mut timers = after_first_pass();
        let mut now = ms(1_000);
        let mut waits = Vec::new();
        for _ in 0..8 {
            timers.pass_started(now);
            let wait = timers.pass_failed(now);
            assert_eq!(timers.next_pass(), now + wait);
            waits.push(wait.as_millis());
            now += wait;
        }
        assert_eq!(
            waits,
            [500, 1_000, 2_000, 4_000, 8_000, 16_000, 30_000, 30_000]
        );
        timers.pass_started(now);
        timers.pass_finished(now, PassOutcome::default());
        timers.pass_started(now);
        assert_eq!(timers.pass_failed(now), FIRST_BACKOFF);
    }

    #[test]
    fn a_follower_forgets_retries_and_boundaries_and_only_resyncs() {
        let mut timers = LoopTimers::new(TIMING);
        timers.pass_started(Duration::ZERO);
        timers.pass_finished(
            ms(10),
            PassOutcome {
                raises_held_back: true,
                next_transition: Some(ms(2_000)),
                ..PassOutcome::default()
            },
        );
        timers.changed(ms(20));
        timers.following();
        assert_eq!(timers.next_pass(), Duration::from_secs(60));
    }
}
