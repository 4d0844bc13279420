//! A workload's value curve on its feasible power range: the best throughput reachable with a limit at
//! or below `p`, its breakpoints, and its upper concave envelope. Pure arithmetic, no IO.
//!
//! Measured curves are noisy and non-monotone, so the solver never trusts `f(p)` (the interpolated
//! measurement) directly. A power limit is a ceiling, so with a budget of `p` watts a workload can always
//! run at the best limit `q <= p`: its value is `V(p) = max f(q), q in [lo, p]`, which is monotone. Every
//! plan is built from `V`, and each limit is *realised* as the `q` that attains it, so a noisy dip never
//! costs throughput and a noisy peak is never paid for twice.

/// Power in integer milliwatts: budget sums are exact, so a cap is never exceeded by rounding.
pub type Milliwatts = i64;

/// One candidate power level: a measured point or a boundary of the feasible range.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    pub power_mw: Milliwatts,
    /// `V(power_mw)`: the best throughput reachable with a limit at or below this level.
    pub value: f64,
    /// The limit that attains `value` (equal to `power_mw` unless a lower limit does as well).
    pub limit_mw: Milliwatts,
    /// The locked clock of the point that attains `value`, for locked-clock profiles.
    pub clock_mhz: Option<u32>,
    /// Whether `V` equals the measured interpolation, rising linearly, up to the next candidate, so
    /// that every limit in between is itself a valid plan (only for power-limit profiles).
    pub rises_linearly_to_next: bool,
}

/// A segment of the upper concave envelope of `V`, between two candidates.
#[derive(Debug, Clone, PartialEq)]
pub struct EnvelopeSegment {
    pub from: usize,
    pub to: usize,
    pub length_mw: Milliwatts,
    /// Throughput gained over the segment (> 0).
    pub gain: f64,
    /// Whether every level inside the segment is reachable at the envelope's value. Otherwise only
    /// the two ends are, and a plan that stops inside must round to an end.
    pub exact: bool,
}

impl EnvelopeSegment {
    /// Throughput gained per milliwatt of power limit.
    pub fn slope(&self) -> f64 {
        self.gain / self.length_mw as f64
    }
}

/// A measured profile point in solver units.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MeasuredPoint {
    pub power_mw: Milliwatts,
    pub throughput: f64,
    pub clock_mhz: Option<u32>,
}

/// Why a curve has no feasible level.
#[derive(Debug, Clone, PartialEq)]
pub enum CurveError {
    /// The lowest usable point is above the highest limit every GPU of the gang accepts.
    StartsAboveRange {
        lowest_mw: Milliwatts,
        hi_mw: Milliwatts,
    },
    /// No level in range reaches the SLO floor.
    FloorUnreachable { required: f64, best_reachable: f64 },
}

/// The value curve of one workload over the limits all of its GPUs accept.
#[derive(Debug, Clone, PartialEq)]
pub struct Curve {
    /// Measured points, sorted by power (power-limit profiles) or as given (locked-clock profiles).
    points: Vec<MeasuredPoint>,
    locked_clock: bool,
    candidates: Vec<Candidate>,
    envelope: Vec<EnvelopeSegment>,
}

impl Curve {
    /// Builds the curve of a workload whose gang accepts limits in `[lo_mw, hi_mw]` and whose
    /// throughput must stay at or above `floor_throughput`.
    ///
    /// `points` must be non-empty with finite values; power-limit profiles strictly increasing in
    /// power. Locked-clock points below `lo_mw` run at `lo_mw` (the limit may exceed the point's power).
    pub fn new(
        points: Vec<MeasuredPoint>,
        locked_clock: bool,
        lo_mw: Milliwatts,
        hi_mw: Milliwatts,
        floor_throughput: f64,
    ) -> Result<Curve, CurveError> {
        let mut curve = Curve {
            points,
            locked_clock,
            candidates: Vec::new(),
            envelope: Vec::new(),
        };
        let lowest_mw = curve.lowest_point_mw().max(lo_mw);
        if lowest_mw > hi_mw {
            return Err(CurveError::StartsAboveRange {
                lowest_mw: curve.lowest_point_mw(),
                hi_mw,
            });
        }
        let start_mw = curve.lowest_level_reaching(lowest_mw, hi_mw, floor_throughput)?;
        curve.candidates = if locked_clock {
            curve.locked_clock_candidates(start_mw, hi_mw)
        } else {
            curve.power_limit_candidates(start_mw, hi_mw)
        };
        curve.envelope = upper_concave_envelope(&curve.candidates);
        Ok(curve)
    }

    /// Lowest feasible limit (the gang's floor while it runs).
    pub fn lo_mw(&self) -> Milliwatts {
        self.candidates[0].power_mw
    }

    /// Highest feasible limit.
    pub fn hi_mw(&self) -> Milliwatts {
        self.candidates[self.candidates.len() - 1].power_mw
    }

    pub fn candidates(&self) -> &[Candidate] {
        &self.candidates
    }

    pub fn envelope(&self) -> &[EnvelopeSegment] {
        &self.envelope
    }

    /// Best measured throughput over the whole profile (the normalisation of the objective).
    pub fn best_throughput(&self) -> f64 {
        self.points.iter().map(|p| p.throughput).fold(0.0, f64::max)
    }

    /// The limit, clock and throughput a plan gets when it grants this workload up to `budget_mw`
    /// (`lo_mw() <= budget_mw`): the best level at or below it.
    pub fn realise(&self, budget_mw: Milliwatts) -> Realised {
        let budget_mw = budget_mw.min(self.hi_mw());
        let i = self.candidate_at_or_below(budget_mw);
        let c = &self.candidates[i];
        if c.rises_linearly_to_next && budget_mw > c.power_mw {
            let next = &self.candidates[i + 1];
            let t = (budget_mw - c.power_mw) as f64 / (next.power_mw - c.power_mw) as f64;
            let throughput = c.value + t * (next.value - c.value);
            return Realised {
                limit_mw: budget_mw,
                clock_mhz: None,
                throughput,
            };
        }
        Realised {
            limit_mw: c.limit_mw,
            clock_mhz: c.clock_mhz,
            throughput: c.value,
        }
    }

    /// Upper concave envelope of `V` on `[lo_mw(), top_mw]`, for lowering a limit that stands at
    /// `top_mw` (a realised level): the same segments as [`Curve::envelope`] below the candidate at or
    /// under `top_mw`, and a last one up to `top_mw` itself when it lies inside a linear rise.
    pub fn envelope_below(&self, top_mw: Milliwatts) -> Vec<EnvelopeSegment> {
        let top_mw = top_mw.clamp(self.lo_mw(), self.hi_mw());
        let k = self.candidate_at_or_below(top_mw);
        let mut below = self.candidates[..=k].to_vec();
        if top_mw > below[k].power_mw {
            below.push(Candidate {
                power_mw: top_mw,
                value: self.realise(top_mw).throughput,
                limit_mw: top_mw,
                clock_mhz: None,
                rises_linearly_to_next: false,
            });
        } else {
            below[k].rises_linearly_to_next = false;
        }
        upper_concave_envelope(&below)
    }

    /// The lowest level whose best reachable throughput is at least `min_throughput` (`V` is
    /// monotone, so every level above it reaches it too); `hi_mw()` when none does.
    pub fn lowest_level_with(&self, min_throughput: f64) -> Milliwatts {
        let k = self
            .candidates
            .partition_point(|c| c.value < min_throughput);
        if k == self.candidates.len() {
            return self.hi_mw();
        }
        let at = self.candidates[k].power_mw;
        if k == 0 || !self.candidates[k - 1].rises_linearly_to_next {
            return at;
        }
        let from = &self.candidates[k - 1];
        let t = (min_throughput - from.value) / (self.candidates[k].value - from.value);
        let crossing = (from.power_mw + ((at - from.power_mw) as f64 * t).ceil() as Milliwatts)
            .clamp(from.power_mw, at);
        // NB: interpolation may round the crossing's throughput a hair below the target; the
        // candidate itself reaches it exactly.
        if self.realise(crossing).throughput >= min_throughput {
            crossing
        } else {
            at
        }
    }

    /// Throughput when the limit is imposed from outside (baselines that cap without choosing a
    /// clock): the measured interpolation for power-limit profiles, the best point that fits for
    /// locked-clock ones, and zero below the measured range, where nothing says the job can run.
    pub fn throughput_at_imposed_limit(&self, limit_mw: Milliwatts) -> f64 {
        if self.locked_clock {
            return self
                .points
                .iter()
                .filter(|p| p.power_mw <= limit_mw)
                .map(|p| p.throughput)
                .fold(0.0, f64::max);
        }
        if limit_mw < self.points[0].power_mw {
            return 0.0;
        }
        self.interpolate(limit_mw)
    }

    fn lowest_point_mw(&self) -> Milliwatts {
        self.points.iter().map(|p| p.power_mw).min().unwrap_or(0)
    }

    fn candidate_at_or_below(&self, level_mw: Milliwatts) -> usize {
        self.candidates
            .partition_point(|c| c.power_mw <= level_mw)
            .saturating_sub(1)
    }

    /// Measured interpolation `f` for power-limit profiles (flat above the last point).
    fn interpolate(&self, level_mw: Milliwatts) -> f64 {
        let after = self.points.partition_point(|p| p.power_mw <= level_mw);
        if after == 0 {
            return self.points[0].throughput;
        }
        if after == self.points.len() {
            return self.points[after - 1].throughput;
        }
        let (a, b) = (self.points[after - 1], self.points[after]);
        let t = (level_mw - a.power_mw) as f64 / (b.power_mw - a.power_mw) as f64;
        a.throughput + t * (b.throughput - a.throughput)
    }

    /// `lo_mw`, the measured powers strictly inside the range, and `hi_mw`: where `f` may bend.
    fn levels_between(&self, lo_mw: Milliwatts, hi_mw: Milliwatts) -> Vec<Milliwatts> {
        let mut levels = vec![lo_mw];
        levels.extend(
            self.points
                .iter()
                .map(|p| p.power_mw)
                .filter(|&w| w > lo_mw && w < hi_mw),
        );
        if hi_mw > lo_mw {
            levels.push(hi_mw);
        }
        levels
    }

    /// The lowest level in `[lo_mw, hi_mw]` whose best reachable throughput meets the floor.
    fn lowest_level_reaching(
        &self,
        lo_mw: Milliwatts,
        hi_mw: Milliwatts,
        floor_throughput: f64,
    ) -> Result<Milliwatts, CurveError> {
        if floor_throughput <= 0.0 {
            return Ok(lo_mw);
        }
        let unreachable = |best_reachable| CurveError::FloorUnreachable {
            required: floor_throughput,
            best_reachable,
        };
        if self.locked_clock {
            let reaching = self
                .points
                .iter()
                .filter(|p| p.power_mw <= hi_mw && p.throughput >= floor_throughput)
                .map(|p| p.power_mw.max(lo_mw))
                .min();
            let best = self.throughput_at_imposed_limit(hi_mw);
            return reaching.ok_or_else(|| unreachable(best));
        }
        // f is linear between measured points, so the first crossing is on the first piece that
        // ends at or above the floor.
        let levels = self.levels_between(lo_mw, hi_mw);
        if self.interpolate(lo_mw) >= floor_throughput {
            return Ok(lo_mw);
        }
        for pair in levels.windows(2) {
            let (a, b) = (pair[0], pair[1]);
            let (fa, fb) = (self.interpolate(a), self.interpolate(b));
            if fb >= floor_throughput {
                let t = (floor_throughput - fa) / (fb - fa);
                let crossing = a + ((b - a) as f64 * t).ceil() as Milliwatts;
                return Ok(crossing.clamp(a, b));
            }
        }
        let best = levels
            .iter()
            .map(|&w| self.interpolate(w))
            .fold(0.0, f64::max);
        Err(unreachable(best))
    }

    /// Candidates of a power-limit profile: the range ends, measured points inside, and the levels
    /// where a rise after a dip climbs back to the running best.
    fn power_limit_candidates(&self, lo_mw: Milliwatts, hi_mw: Milliwatts) -> Vec<Candidate> {
        let levels = self.levels_between(lo_mw, hi_mw);
        let mut candidates: Vec<Candidate> = Vec::with_capacity(levels.len() + 2);
        let mut best = Candidate {
            power_mw: lo_mw,
            value: self.interpolate(lo_mw),
            limit_mw: lo_mw,
            clock_mhz: None,
            rises_linearly_to_next: false,
        };
        candidates.push(best.clone());
        for pair in levels.windows(2) {
            let (a, b) = (pair[0], pair[1]);
            let (fa, fb) = (self.interpolate(a), self.interpolate(b));
            if fb > best.value && fa < best.value {
                // Climbing back out of a dip: V stays flat until f reaches the old best, then follows f.
                let t = (best.value - fa) / (fb - fa);
                let crossing = (a + ((b - a) as f64 * t).ceil() as Milliwatts).clamp(a, b);
                if crossing > a && crossing < b {
                    candidates.push(Candidate {
                        power_mw: crossing,
                        value: self.interpolate(crossing).max(best.value),
                        limit_mw: crossing,
                        clock_mhz: None,
                        rises_linearly_to_next: false,
                    });
                }
            }
            let from = candidates.len() - 1;
            let start = &candidates[from];
            let rises = fb > start.value && start.limit_mw == start.power_mw;
            candidates[from].rises_linearly_to_next = rises;
            if fb > best.value {
                best = Candidate {
                    power_mw: b,
                    value: fb,
                    limit_mw: b,
                    clock_mhz: None,
                    rises_linearly_to_next: false,
                };
            }
            candidates.push(Candidate {
                power_mw: b,
                ..best.clone()
            });
        }
        candidates
    }

    /// Candidates of a locked-clock profile: each point's power (raised to the gang's floor) with the
    /// best point that fits at or below it.
    fn locked_clock_candidates(&self, lo_mw: Milliwatts, hi_mw: Milliwatts) -> Vec<Candidate> {
        let mut usable: Vec<(Milliwatts, f64, Option<u32>)> = self
            .points
            .iter()
            .filter(|p| p.power_mw <= hi_mw)
            .map(|p| (p.power_mw.max(lo_mw), p.throughput, p.clock_mhz))
            .collect();
        // Stable ties: at equal power the higher throughput, then the lower clock (less heat, same work).
        usable.sort_by(|a, b| a.0.cmp(&b.0).then(b.1.total_cmp(&a.1)).then(a.2.cmp(&b.2)));
        let mut candidates: Vec<Candidate> = Vec::new();
        for (power_mw, throughput, clock_mhz) in usable {
            let improves = candidates.last().is_none_or(|c| throughput > c.value);
            if improves && candidates.last().is_none_or(|c| c.power_mw < power_mw) {
                candidates.push(Candidate {
                    power_mw,
                    value: throughput,
                    limit_mw: power_mw,
                    clock_mhz,
                    rises_linearly_to_next: false,
                });
            }
        }
        candidates
    }
}

/// What a workload actually gets at a granted level.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Realised {
    pub limit_mw: Milliwatts,
    pub clock_mhz: Option<u32>,
    pub throughput: f64,
}

/// Upper concave envelope of the candidates (non-decreasing in value), as rising segments only.
fn upper_concave_envelope(candidates: &[Candidate]) -> Vec<EnvelopeSegment> {
    let mut hull: Vec<usize> = Vec::with_capacity(candidates.len());
    for i in 0..candidates.len() {
        while hull.len() >= 2 {
            let (a, b) = (
                &candidates[hull[hull.len() - 2]],
                &candidates[hull[hull.len() - 1]],
            );
            let c = &candidates[i];
            // b lies on or below the chord a→c: drop it. Cross-multiplied to stay exact in mW.
            let lhs = (b.value - a.value) * (c.power_mw - a.power_mw) as f64;
            let rhs = (c.value - a.value) * (b.power_mw - a.power_mw) as f64;
            if lhs <= rhs {
                hull.pop();
            } else {
                break;
            }
        }
        hull.push(i);
    }
    hull.windows(2)
        .filter_map(|pair| {
            let (from, to) = (pair[0], pair[1]);
            let gain = candidates[to].value - candidates[from].value;
            let length_mw = candidates[to].power_mw - candidates[from].power_mw;
            if gain <= 0.0 || length_mw <= 0 {
                return None;
            }
            let slope = gain / length_mw as f64;
            let exact = (from..to).all(|k| {
                let c = &candidates[k];
                let on_line = candidates[from].value
                    + slope * (c.power_mw - candidates[from].power_mw) as f64;
                c.rises_linearly_to_next
                    // Relative to the segment's top (> 0), so that the unit of throughput
                    // does not matter.
                    && (c.value - on_line).abs() <= 1e-9 * candidates[to].value
            });
            Some(EnvelopeSegment {
                from,
                to,
                length_mw,
                gain,
                exact,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pl(points: &[(i64, f64)]) -> Vec<MeasuredPoint> {
        points
            .iter()
            .map(|&(w, t)| MeasuredPoint {
                power_mw: w * 1000,
                throughput: t,
                clock_mhz: None,
            })
            .collect()
    }

    /// A power-limit curve over `[lo_w, hi_w]` with no SLO floor.
    fn curve(points: &[(i64, f64)], lo_w: i64, hi_w: i64) -> Curve {
        Curve::new(pl(points), false, lo_w * 1000, hi_w * 1000, 0.0).expect("valid curve")
    }

    #[test]
    fn a_dip_is_skipped_by_realising_the_lower_limit() {
        let curve = curve(&[(100, 10.0), (150, 8.0), (200, 12.0)], 100, 200);
        let at_150 = curve.realise(150_000);
        assert_eq!(
            at_150.limit_mw, 100_000,
            "the dip at 150 W is worse than 100 W"
        );
        assert_eq!(at_150.throughput, 10.0);
        // f climbs back to 10 at 175 W; above that the limit follows the budget.
        let at_190 = curve.realise(190_000);
        assert_eq!(at_190.limit_mw, 190_000);
        assert!((at_190.throughput - 11.2).abs() < 1e-9);
    }

    #[test]
    fn envelope_of_a_convex_curve_is_one_inexact_chord() {
        let curve = curve(&[(100, 1.0), (200, 2.0), (300, 10.0)], 100, 300);
        assert_eq!(curve.envelope().len(), 1);
        assert!(!curve.envelope()[0].exact);
        // The chord from (100 W, 1) to (300 W, 10) passes 5.5 at 200 W, where the curve gives only 2.
        let chord = &curve.envelope()[0];
        assert_eq!((chord.length_mw, chord.gain), (200_000, 9.0));
        assert_eq!(curve.realise(200_000).throughput, 2.0);
    }

    #[test]
    fn envelope_of_a_concave_curve_is_exact() {
        let curve = curve(&[(100, 5.0), (200, 9.0), (300, 10.0)], 100, 300);
        assert_eq!(curve.envelope().len(), 2);
        assert!(curve.envelope().iter().all(|s| s.exact));
    }

    #[test]
    fn slo_floor_raises_the_lowest_level_to_the_crossing() {
        let curve = Curve::new(pl(&[(100, 5.0), (200, 10.0)]), false, 100_000, 200_000, 8.0)
            .expect("valid curve");
        assert_eq!(curve.lo_mw(), 160_000);
        assert!(curve.realise(curve.lo_mw()).throughput >= 8.0);
    }

    #[test]
    fn unreachable_slo_floor_is_reported_with_the_best_reachable() {
        let err = Curve::new(pl(&[(100, 5.0), (300, 10.0)]), false, 100_000, 200_000, 9.0)
            .expect_err("floor above reach");
        assert_eq!(
            err,
            CurveError::FloorUnreachable {
                required: 9.0,
                best_reachable: 7.5
            }
        );
    }

    #[test]
    fn locked_clock_curve_keeps_only_points_that_improve() {
        let points = vec![
            MeasuredPoint {
                power_mw: 150_000,
                throughput: 5.0,
                clock_mhz: Some(900),
            },
            MeasuredPoint {
                power_mw: 180_000,
                throughput: 4.0,
                clock_mhz: Some(1000),
            },
            MeasuredPoint {
                power_mw: 250_000,
                throughput: 8.0,
                clock_mhz: Some(1400),
            },
        ];
        let curve = Curve::new(points, true, 100_000, 300_000, 0.0).expect("valid curve");
        let powers: Vec<_> = curve.candidates().iter().map(|c| c.power_mw).collect();
        assert_eq!(powers, vec![150_000, 250_000]);
        let r = curve.realise(200_000);
        assert_eq!((r.limit_mw, r.clock_mhz), (150_000, Some(900)));
        assert!(!curve.envelope()[0].exact);
    }

    #[test]
    fn profile_starting_above_the_range_is_rejected() {
        let err =
            Curve::new(pl(&[(350, 5.0)]), false, 100_000, 300_000, 0.0).expect_err("above range");
        assert_eq!(
            err,
            CurveError::StartsAboveRange {
                lowest_mw: 350_000,
                hi_mw: 300_000
            }
        );
    }
}
