//! The efficiency policy (`maxSlowdown`): from the max-throughput plan (the reference), the plan with
//! the least GPU power that keeps every policy budget's throughput within its allowed slowdown, and a
//! proven lower bound on that power. Pure, no IO.
//!
//! The rules (README, "Problem format"): a budget's throughput is that of the GPUs under it, each GPU
//! carrying its workload's weight × normalised throughput, so a gang counts in a budget by its share
//! of GPUs there. Every policy budget keeps `(1 − s) × reference` at once; a child's setting, tighter or
//! looser than its parent's, is a constraint of its own. Workloads under no policy budget keep their
//! reference limits, so the watts one subtree gives up are saved, not spent by a neighbour.
//!
//! The greedy lowers limits from the reference, least throughput lost per GPU-watt first: the reverse
//! of the max-throughput greedy's order, so every workload stops at a threshold on that ratio. Lowering
//! only frees watts, so every cap keeps holding. Where curves are concave and every gang sits in one
//! innermost budget, each workload's lost throughput counts in full against every policy budget above
//! it: laminar packing constraints with concave savings, for which this order is exact (the greedy
//! module's polymatroid argument with watts and throughput swapped).
//!
//! The bound is Lagrangian. For multipliers μ ≥ 0 on the policy rows, power − Σ μ (throughput −
//! required) minimised over the greedy module's relaxation (envelopes, gangs split per innermost
//! budget, every cap kept) is again a laminar greedy, and is at most the least power whatever μ is.
//! μ comes from the ratios at which the greedy ran out of allowance, which makes the bound tight where
//! the greedy is exact.

use crate::curve::{EnvelopeSegment, Milliwatts};
use crate::greedy::{envelope_parts, fill_laminar, sort_parts};
use crate::instance::Instance;
use crate::milp::ThroughputRow;
use crate::plan::{BudgetEfficiency, Efficiency, Method, watts};

/// Relative tolerance of the policy rows: a plan keeps `throughput >= required − 1e-9 × reference`,
/// the slack floating-point sums need.
pub(crate) const POLICY_TOLERANCE: f64 = 1e-9;

/// The greedy may overspend an allowance by this share of the budget's reference: half the tolerance,
/// so that a slowdown landing exactly on a measured point is taken, and rounding in the sums (far
/// below it) cannot cross the other half. A budget with `maxSlowdown: 0` gets none: 0 means nothing.
const OVERSPEND: f64 = 0.5 * POLICY_TOLERANCE;

struct PolicyBudget {
    budget: usize,
    max_slowdown: f64,
    /// Throughput of the budget's GPUs in the reference.
    reference: f64,
    /// `(1 − max_slowdown) × reference`.
    required: f64,
}

/// The policy budgets of an instance and its reference plan.
pub(crate) struct Policy {
    /// Ancestors before descendants: the bound's multipliers are set from the outside in.
    budgets: Vec<PolicyBudget>,
    /// Position in `budgets` of every budget of the instance that sets a policy.
    position: Vec<Option<usize>>,
    /// Per workload: (position in `budgets`, share of the workload's GPUs under that budget). Empty
    /// for a workload under no policy budget, which keeps its reference limit.
    shares: Vec<Vec<(usize, f64)>>,
    /// Each workload's realised limit in the reference.
    reference: Vec<Milliwatts>,
}

impl Policy {
    /// The policy of `instance` around the max-throughput plan `reference` (a limit per workload);
    /// `None` when no budget sets `maxSlowdown`.
    pub fn new(instance: &Instance, reference: &[Milliwatts]) -> Option<Policy> {
        let mut order: Vec<usize> = (0..instance.budgets.len())
            .filter(|&b| instance.budgets[b].max_slowdown.is_some())
            .collect();
        if order.is_empty() {
            return None;
        }
        order.sort_by_key(|&b| (instance.budgets[b].chain.len(), b));
        let mut position = vec![None; instance.budgets.len()];
        for (i, &b) in order.iter().enumerate() {
            position[b] = Some(i);
        }
        let shares = instance
            .workloads
            .iter()
            .map(|w| {
                w.load
                    .iter()
                    .filter_map(|&(b, count)| {
                        position[b].map(|i| (i, count as f64 / w.gpu_count() as f64))
                    })
                    .collect()
            })
            .collect();
        let mut policy = Policy {
            budgets: order
                .iter()
                .map(|&b| PolicyBudget {
                    budget: b,
                    max_slowdown: instance.budgets[b].max_slowdown.unwrap_or(0.0),
                    reference: 0.0,
                    required: 0.0,
                })
                .collect(),
            position,
            shares,
            reference: instance
                .workloads
                .iter()
                .zip(reference)
                .map(|(w, &limit)| w.curve.realise(limit).limit_mw)
                .collect(),
        };
        let throughputs = policy.throughputs(instance, &policy.reference);
        for (budget, throughput) in policy.budgets.iter_mut().zip(throughputs) {
            budget.reference = throughput;
            budget.required = (1.0 - budget.max_slowdown) * throughput;
        }
        Some(policy)
    }

    /// Whether some budget may give anything up; with every `maxSlowdown` at 0 the plan is the reference.
    pub fn allows_slowdown(&self) -> bool {
        self.budgets.iter().any(|b| b.max_slowdown > 0.0)
    }

    /// Whether the workload is under some policy budget (and so may move).
    pub fn governs(&self, workload: usize) -> bool {
        !self.shares[workload].is_empty()
    }

    /// The governed workloads, in input order.
    pub fn governed(&self) -> Vec<usize> {
        (0..self.shares.len())
            .filter(|&w| self.governs(w))
            .collect()
    }

    pub fn reference(&self) -> &[Milliwatts] {
        &self.reference
    }

    /// Throughput of each policy budget's GPUs when each workload stands at `levels`.
    fn throughputs(&self, instance: &Instance, levels: &[Milliwatts]) -> Vec<f64> {
        let mut sums = vec![0.0; self.budgets.len()];
        for ((workload, shares), &level) in instance.workloads.iter().zip(&self.shares).zip(levels)
        {
            if shares.is_empty() {
                continue;
            }
            let value = workload.value_per_throughput * workload.curve.realise(level).throughput;
            for &(i, share) in shares {
                sums[i] += value * share;
            }
        }
        sums
    }

    /// Whether every policy budget keeps its required throughput (within [`POLICY_TOLERANCE`]) and
    /// every ungoverned workload its reference limit.
    pub fn is_kept_by(&self, instance: &Instance, levels: &[Milliwatts]) -> bool {
        let floors_kept = self
            .throughputs(instance, levels)
            .iter()
            .zip(&self.budgets)
            .all(|(&t, b)| t >= b.required - POLICY_TOLERANCE * b.reference);
        let others_kept = (0..self.shares.len()).all(|w| {
            self.governs(w)
                || instance.workloads[w].curve.realise(levels[w]).limit_mw == self.reference[w]
        });
        floors_kept && others_kept
    }

    /// Levels with every governed workload at its floor and the others at the reference.
    fn floor_levels(&self, instance: &Instance) -> Vec<Milliwatts> {
        instance
            .workloads
            .iter()
            .enumerate()
            .map(|(w, workload)| {
                if self.governs(w) {
                    workload.curve.lo_mw()
                } else {
                    self.reference[w]
                }
            })
            .collect()
    }

    /// What each budget has left with the governed workloads at their floors and the others at the
    /// reference: the room the least-power stage plans in.
    pub fn room_mw(&self, instance: &Instance) -> Vec<Milliwatts> {
        let (_, usage) = gpu_usage(instance, &self.floor_levels(instance));
        let overheads = instance.budget_usage(|_| 0);
        instance
            .budgets
            .iter()
            .zip(usage.iter().zip(overheads))
            .map(|(b, (&gpus, overhead))| b.cap_mw - gpus - overhead)
            .collect()
    }

    /// Total GPU power with the governed workloads at their floors: what the least power is above.
    pub fn floor_power_mw(&self, instance: &Instance) -> Milliwatts {
        gpu_usage(instance, &self.floor_levels(instance)).0
    }

    /// The policy rows of the least-power MILP, each divided by its reference so its right-hand side
    /// is about 1. A budget whose reference is 0 has nothing to keep and no row.
    pub fn milp_rows(&self, instance: &Instance) -> Vec<ThroughputRow> {
        let mut rows: Vec<ThroughputRow> = self
            .budgets
            .iter()
            .map(|b| ThroughputRow {
                terms: Vec::new(),
                divisor: b.reference,
                at_least: b.required / b.reference,
            })
            .collect();
        for (w, shares) in self.shares.iter().enumerate() {
            for &(i, share) in shares {
                rows[i]
                    .terms
                    .push((w, instance.workloads[w].value_per_throughput * share));
            }
        }
        rows.retain(|row| row.divisor > 0.0);
        rows
    }
}

/// Sum of every GPU's realised limit, and the same per budget (GPUs only, no overheads).
fn gpu_usage(instance: &Instance, levels: &[Milliwatts]) -> (Milliwatts, Vec<Milliwatts>) {
    let realised: Vec<Milliwatts> = instance
        .workloads
        .iter()
        .zip(levels)
        .map(|(w, &level)| w.curve.realise(level).limit_mw)
        .collect();
    let limit = |g: usize| {
        let gpu = &instance.gpus[g];
        gpu.workload.map_or(gpu.min_mw, |w| realised[w])
    };
    let total = (0..instance.gpus.len()).map(limit).sum();
    let overheads = instance.budget_usage(|_| 0);
    let per_budget = instance
        .budget_usage(limit)
        .into_iter()
        .zip(overheads)
        .map(|(used, overhead)| used - overhead)
        .collect();
    (total, per_budget)
}

/// The greedy's plan and the multipliers its stopping ratios give the bound.
pub(crate) struct Lowered {
    /// Each workload's realised limit.
    pub levels: Vec<Milliwatts>,
    pub multipliers: Vec<f64>,
}

/// One envelope segment below a governed workload's reference level.
struct Decrement {
    /// Objective lost per GPU-milliwatt given up.
    loss_per_gpu_mw: f64,
    workload: u32,
    /// Index into the workload's segments, top first.
    segment: u32,
}

/// Most objective workload `w` may lose, per unit of its own throughput-weight `scale`, before some
/// policy budget above it runs out of allowance (overspending included), and which budget that is.
fn most_loss(policy: &Policy, w: usize, allowance: &[f64], scale: f64) -> (f64, usize) {
    policy.shares[w]
        .iter()
        .map(|&(i, share)| {
            let budget = &policy.budgets[i];
            let overspend = if budget.max_slowdown > 0.0 {
                OVERSPEND * budget.reference
            } else {
                0.0
            };
            let spendable = allowance[i] + overspend;
            (spendable.max(0.0) / (scale * share), i)
        })
        .fold((f64::INFINITY, 0), |a, b| if b.0 < a.0 { b } else { a })
}

/// Moves workload `w` to level `to`, charging what it loses to every policy budget above it.
fn lower_to(
    instance: &Instance,
    policy: &Policy,
    w: usize,
    to: Milliwatts,
    levels: &mut [Milliwatts],
    allowance: &mut [f64],
) {
    let workload = &instance.workloads[w];
    let lost = workload.value_per_throughput
        * (workload.curve.realise(levels[w]).throughput - workload.curve.realise(to).throughput);
    for &(i, share) in &policy.shares[w] {
        allowance[i] -= lost * share;
    }
    levels[w] = to;
}

/// The greedy least-power plan: lowers governed workloads from the reference along the envelopes of
/// their curves below it, least loss per GPU-watt first, while every policy budget above has
/// allowance; a segment that cannot be left part-way (a chord over a dip, a locked clock) is taken
/// whole or not at all, and the workloads stopped at one get a second chance to go as low as their
/// allowance lets them on the real curve.
pub(crate) fn lower_greedily(instance: &Instance, policy: &Policy) -> Lowered {
    let count = instance.workloads.len();
    // Positions on each curve; realised (a flat stretch cut to its lowest limit) at the end.
    let mut levels = policy.reference.clone();
    let mut allowance: Vec<f64> = policy
        .budgets
        .iter()
        .map(|b| b.reference - b.required)
        .collect();
    // Top first: an envelope's slope falls as power rises, so its top segment loses least per watt.
    let segments: Vec<Vec<EnvelopeSegment>> = (0..count)
        .map(|w| {
            if policy.governs(w) {
                let mut below = instance.workloads[w].curve.envelope_below(levels[w]);
                below.reverse();
                below
            } else {
                Vec::new()
            }
        })
        .collect();
    let mut order: Vec<Decrement> = segments
        .iter()
        .enumerate()
        .flat_map(|(w, below)| {
            let workload = &instance.workloads[w];
            let per_gpu = workload.value_per_throughput / workload.gpu_count() as f64;
            below.iter().enumerate().map(move |(s, segment)| Decrement {
                loss_per_gpu_mw: per_gpu * segment.slope(),
                workload: w as u32,
                segment: s as u32,
            })
        })
        .collect();
    // NB: ties broken by index so the plan never depends on sort stability.
    order.sort_unstable_by(|a, b| {
        a.loss_per_gpu_mw
            .total_cmp(&b.loss_per_gpu_mw)
            .then(a.workload.cmp(&b.workload))
            .then(a.segment.cmp(&b.segment))
    });
    let mut stopped = vec![false; count];
    let mut stuck: Vec<(f64, usize)> = Vec::new();
    // Per policy budget, the ratio at which it ran out (exact segments) or first blocked a chord.
    let mut ran_out_at: Vec<Option<f64>> = vec![None; policy.budgets.len()];
    let mut blocked_at: Vec<Option<f64>> = vec![None; policy.budgets.len()];
    for decrement in order {
        let w = decrement.workload as usize;
        if stopped[w] {
            continue;
        }
        let segment = &segments[w][decrement.segment as usize];
        let loss_per_mw = instance.workloads[w].value_per_throughput * segment.slope();
        let (most, binding) = most_loss(policy, w, &allowance, loss_per_mw);
        let most = most.floor().min(i64::MAX as f64) as Milliwatts;
        let take = if segment.exact {
            most.min(segment.length_mw)
        } else if most >= segment.length_mw {
            segment.length_mw
        } else {
            0
        };
        if take > 0 {
            let to = levels[w] - take;
            lower_to(instance, policy, w, to, &mut levels, &mut allowance);
        }
        if take < segment.length_mw {
            stopped[w] = true;
            if segment.exact {
                ran_out_at[binding].get_or_insert(decrement.loss_per_gpu_mw);
            } else {
                blocked_at[binding].get_or_insert(decrement.loss_per_gpu_mw);
                stuck.push((decrement.loss_per_gpu_mw, w));
            }
        }
    }
    // Second chance, cheapest first: what is left of each allowance, spent on the real curve.
    stuck.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    for (_, w) in stuck {
        let workload = &instance.workloads[w];
        let (allowed, _) = most_loss(policy, w, &allowance, workload.value_per_throughput);
        if allowed <= 0.0 {
            continue;
        }
        let now = workload.curve.realise(levels[w]).throughput;
        let to = workload.curve.lowest_level_with(now - allowed);
        if to < levels[w] {
            lower_to(instance, policy, w, to, &mut levels, &mut allowance);
        }
    }
    let mut multipliers = vec![0.0; policy.budgets.len()];
    for i in 0..policy.budgets.len() {
        let Some(ratio) = ran_out_at[i].or(blocked_at[i]) else {
            continue;
        };
        let above: f64 = instance.budgets[policy.budgets[i].budget].chain[1..]
            .iter()
            .filter_map(|&b| policy.position[b])
            .map(|j| multipliers[j])
            .sum();
        // A workload stops where loss per GPU-mW meets 1 / (the multipliers above it).
        multipliers[i] = (1.0 / ratio - above).max(0.0);
    }
    let levels = instance
        .workloads
        .iter()
        .zip(levels)
        .map(|(w, level)| w.curve.realise(level).limit_mw)
        .collect();
    Lowered {
        levels,
        multipliers,
    }
}

/// A lower bound on the total GPU power (mW) of any plan that keeps the policy, for multipliers
/// `multipliers` ≥ 0 (one per policy budget); see the module comment.
pub(crate) fn power_lower_bound_mw(
    instance: &Instance,
    policy: &Policy,
    multipliers: &[f64],
) -> f64 {
    let floors = policy.floor_levels(instance);
    let at_floors = policy.throughputs(instance, &floors);
    let priced: f64 = policy
        .budgets
        .iter()
        .zip(&at_floors)
        .zip(multipliers)
        .map(|((b, &t), &mu)| mu * (b.required - t))
        .sum();
    let mut parts = envelope_parts(instance, |w| policy.governs(w));
    for part in &mut parts {
        let mu: f64 = instance.budgets[part.budget as usize]
            .chain
            .iter()
            .filter_map(|&b| policy.position[b])
            .map(|i| multipliers[i])
            .sum();
        // What a GPU-milliwatt is worth in the Lagrangian: priced throughput minus the watt itself.
        part.value_per_gpu_mw = mu * part.value_per_gpu_mw - 1.0;
    }
    parts.retain(|part| part.value_per_gpu_mw > 0.0);
    sort_parts(&mut parts);
    let room = policy
        .room_mw(instance)
        .into_iter()
        .map(|r| r.max(0) as f64)
        .collect();
    let gain = fill_laminar(instance, parts, room, 0.0);
    let floor_power = policy.floor_power_mw(instance) as f64;
    // The floors alone are a bound too (μ = 0); floating-point cancellation must not go below them.
    (floor_power + priced - gain).max(floor_power)
}

/// For each policy budget, a proven bound on its throughput in any plan that fits every cap: the
/// relaxation's greedy on that budget's GPUs alone, and never above the whole plan's `upper_bound`.
fn throughput_bounds(
    instance: &Instance,
    policy: &Policy,
    headroom: &[Milliwatts],
    upper_bound: f64,
) -> Vec<f64> {
    let mut parts = envelope_parts(instance, |_| true);
    sort_parts(&mut parts);
    let mut under: Vec<Vec<usize>> = vec![Vec::new(); policy.budgets.len()];
    for (p, part) in parts.iter().enumerate() {
        for &b in &instance.budgets[part.budget as usize].chain {
            if let Some(i) = policy.position[b] {
                under[i].push(p);
            }
        }
    }
    let floors: Vec<Milliwatts> = instance.workloads.iter().map(|w| w.curve.lo_mw()).collect();
    let at_floors = policy.throughputs(instance, &floors);
    let room: Vec<f64> = headroom.iter().map(|&h| h.max(0) as f64).collect();
    under
        .iter()
        .zip(at_floors)
        .map(|(chosen, start)| {
            fill_laminar(
                instance,
                chosen.iter().map(|&p| &parts[p]),
                room.clone(),
                start,
            )
            .min(upper_bound)
        })
        .collect()
}

/// What the plan's `efficiency` reports: `levels` against the reference, per policy budget in input
/// order. `lower_bound_mw` is the proven bound on total GPU power.
pub(crate) struct Report<'a> {
    pub reference_method: Method,
    pub reference_objective: f64,
    pub upper_bound: f64,
    pub headroom: &'a [Milliwatts],
    pub lower_bound_mw: f64,
}

pub(crate) fn report(
    instance: &Instance,
    policy: &Policy,
    levels: &[Milliwatts],
    facts: Report,
) -> Efficiency {
    let (total, per_budget) = gpu_usage(instance, levels);
    let (reference_total, reference_per_budget) = gpu_usage(instance, &policy.reference);
    let throughputs = policy.throughputs(instance, levels);
    let bounds = throughput_bounds(instance, policy, facts.headroom, facts.upper_bound);
    let mut budgets: Vec<(usize, BudgetEfficiency)> = policy
        .budgets
        .iter()
        .zip(throughputs.into_iter().zip(bounds))
        .map(|(b, (throughput, bound))| {
            let (now, before) = (per_budget[b.budget], reference_per_budget[b.budget]);
            (
                b.budget,
                BudgetEfficiency {
                    name: instance.budgets[b.budget].name.to_owned(),
                    max_slowdown: b.max_slowdown,
                    throughput,
                    reference_throughput: b.reference,
                    reference_upper_bound: bound.max(b.reference),
                    required_throughput: b.required,
                    gpu_watts: watts(now),
                    reference_gpu_watts: watts(before),
                    saved_watts: watts(before - now),
                },
            )
        })
        .collect();
    budgets.sort_by_key(|(b, _)| *b);
    Efficiency {
        reference_method: facts.reference_method,
        reference_objective: facts.reference_objective,
        gpu_watts: watts(total),
        reference_gpu_watts: watts(reference_total),
        // No plan is below itself: rounding in the bound's sums must not claim otherwise.
        gpu_watts_lower_bound: (facts.lower_bound_mw / 1000.0).min(watts(total)),
        saved_watts: watts(reference_total - total),
        budgets: budgets.into_iter().map(|(_, b)| b).collect(),
    }
}
