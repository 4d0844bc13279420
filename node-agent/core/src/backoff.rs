//! When an agent tries to reach etcd again after a failure: exponential backoff with full jitter, so
//! that a thousand agents that lost etcd at the same instant (an etcd restart) spread their reconnects
//! and credential requests instead of arriving together every second. Pure: the random draws are
//! passed in.

use std::time::Duration;

/// The first retry waits up to this long.
pub const FIRST_RETRY: Duration = Duration::from_millis(500);
/// No retry waits longer than this.
pub const MAX_RETRY: Duration = Duration::from_secs(30);

/// The retry schedule of one agent: each failure doubles the ceiling (from [`FIRST_RETRY`] up to
/// [`MAX_RETRY`]) and the wait is drawn uniformly below it ("full jitter"); a success starts over.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Backoff {
    failures: u32,
}

impl Backoff {
    /// The ceiling of the next wait: [`FIRST_RETRY`] × 2^failures, at most [`MAX_RETRY`].
    pub fn ceiling(&self) -> Duration {
        let doublings = self.failures.min(16);
        FIRST_RETRY.saturating_mul(1u32 << doublings).min(MAX_RETRY)
    }

    /// Counts a failure and returns how long to wait before the next try; `draw` is a uniformly random
    /// `u64` (the fraction `draw / 2^64` of the ceiling is waited).
    pub fn failed(&mut self, draw: u64) -> Duration {
        let ceiling = self.ceiling();
        self.failures = self.failures.saturating_add(1);
        let fraction = (draw >> 11) as f64 / (1u64 << 53) as f64;
        ceiling.mul_f64(fraction)
    }

    /// Counts a success: the next failure waits at most [`FIRST_RETRY`] again.
    pub fn succeeded(&mut self) {
        self.failures = 0;
    }
}

/// A small pseudo-random source (SplitMix64) for the jitter: not for secrets, only to decorrelate
/// agents, which it does as long as each agent starts from its own seed.
#[derive(Debug, Clone)]
pub struct Jitter {
    state: u64,
}

impl Jitter {
    pub fn new(seed: u64) -> Jitter {
        Jitter { state: seed }
    }

    pub fn draw(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ceiling_doubles_from_half_a_second_to_thirty_and_a_success_starts_over() {
        let mut backoff = Backoff::default();
        let mut ceilings = Vec::new();
        for _ in 0..9 {
            ceilings.push(backoff.ceiling().as_millis());
            backoff.failed(u64::MAX);
        }
        assert_eq!(
            ceilings,
            [500, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000]
        );
        backoff.succeeded();
        assert_eq!(backoff.ceiling(), FIRST_RETRY);
    }

    #[test]
    fn a_wait_is_the_drawn_fraction_of_its_ceiling_and_never_above_it() {
        let mut backoff = Backoff::default();
        assert_eq!(backoff.failed(0), Duration::ZERO);
        let half = backoff.failed(1u64 << 63);
        assert_eq!(half, Duration::from_millis(500));
        for _ in 0..40 {
            assert!(backoff.failed(u64::MAX) <= MAX_RETRY);
        }
        assert!(backoff.failed(u64::MAX) > MAX_RETRY.mul_f64(0.999));
    }

    #[test]
    fn a_thousand_agents_failing_together_spread_their_first_retries() {
        // Each agent seeds its own source; the first retries of 1,000 agents land in ten 50 ms slots
        // of the first 500 ms, each slot with about a tenth of them.
        let mut slots = [0u32; 10];
        for agent in 0..1000u64 {
            let mut jitter = Jitter::new(agent.wrapping_mul(0x2545_f491_4f6c_dd1d));
            let wait = Backoff::default().failed(jitter.draw());
            slots[(wait.as_millis() / 50) as usize] += 1;
        }
        assert!(
            slots.iter().all(|&n| (60..=140).contains(&n)),
            "retries per 50 ms slot: {slots:?}"
        );
    }
}
