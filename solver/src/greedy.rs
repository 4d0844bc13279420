//! The fast path: greedy on marginal throughput per GPU-watt over the concave envelopes of the curves,
//! an upper bound from the same greedy on a relaxation, and repair of the levels the envelope cannot
//! reach. Pure, no IO.
//!
//! Why it is exact where it claims to be: with every workload inside one innermost budget, the caps form
//! a laminar family, and maximising a sum of concave curves under laminar caps is a polymatroid
//! problem, for which taking increments in order of value per watt is optimal. The relaxation that
//! gives the upper bound (every curve replaced by its envelope, every gang split per innermost budget)
//! has exactly that shape, so its greedy value bounds the true optimum from above; the gap between it
//! and the plan we actually return is what `upperBound` shows the user.

use crate::curve::Milliwatts;
use crate::instance::Instance;

/// One envelope segment of one workload, ordered by value per GPU-milliwatt.
struct Increment {
    value_per_gpu_mw: f64,
    workload: u32,
    segment: u32,
}

fn increments_by_value(instance: &Instance) -> Vec<Increment> {
    let mut increments: Vec<Increment> = instance
        .workloads
        .iter()
        .enumerate()
        .flat_map(|(w, workload)| {
            let per_gpu = workload.value_per_throughput / workload.gpu_count() as f64;
            workload
                .curve
                .envelope()
                .iter()
                .enumerate()
                .map(move |(s, segment)| Increment {
                    value_per_gpu_mw: per_gpu * segment.slope(),
                    workload: w as u32,
                    segment: s as u32,
                })
        })
        .collect();
    // NB: ties broken by index so the plan never depends on sort stability or input hashing.
    increments.sort_unstable_by(|a, b| {
        b.value_per_gpu_mw
            .total_cmp(&a.value_per_gpu_mw)
            .then(a.workload.cmp(&b.workload))
            .then(a.segment.cmp(&b.segment))
    });
    increments
}

/// Watts left in each budget once every GPU sits at its floor.
pub(crate) fn headroom_at_floors(instance: &Instance) -> Vec<Milliwatts> {
    let usage = instance.budget_usage(|g| instance.floor_mw(g));
    instance
        .budgets
        .iter()
        .zip(usage)
        .map(|(b, used)| b.cap_mw - used)
        .collect()
}

/// Objective of a plan given each workload's limit.
pub(crate) fn objective(instance: &Instance, limits_mw: &[Milliwatts]) -> f64 {
    instance
        .workloads
        .iter()
        .zip(limits_mw)
        .map(|(w, &limit)| w.value_per_throughput * w.curve.realise(limit).throughput)
        .sum()
}

/// One envelope segment of one gang's share of an innermost budget, with all a laminar fill needs.
pub(crate) struct Part {
    /// What one GPU-milliwatt of this part is worth to the fill's objective.
    pub value_per_gpu_mw: f64,
    pub length_mw: f64,
    /// The innermost budget of the share's nodes.
    pub budget: u32,
    pub gpus: u32,
}

/// Every envelope segment of every gang's share of each innermost budget, valued by throughput per
/// GPU-milliwatt, in (workload, group, segment) order; `include` picks the workloads.
pub(crate) fn envelope_parts(instance: &Instance, include: impl Fn(usize) -> bool) -> Vec<Part> {
    let mut parts: Vec<Part> = Vec::new();
    for (w, workload) in instance.workloads.iter().enumerate() {
        if !include(w) {
            continue;
        }
        let per_gpu = workload.value_per_throughput / workload.gpu_count() as f64;
        for &(budget, gpus) in &workload.groups {
            parts.extend(workload.curve.envelope().iter().map(|segment| Part {
                value_per_gpu_mw: per_gpu * segment.slope(),
                length_mw: segment.length_mw as f64,
                budget: budget as u32,
                gpus: gpus as u32,
            }));
        }
    }
    parts
}

/// Sorts parts by value, best first; stable, so ties keep the order they were built in.
pub(crate) fn sort_parts(parts: &mut [Part]) {
    parts.sort_by(|a, b| b.value_per_gpu_mw.total_cmp(&a.value_per_gpu_mw));
}

/// Greedy fill of sorted `parts` under `room` (watts left per budget, in continuous milliwatts),
/// adding each part's value to `start`. Exact for the split relaxation: its caps form a laminar
/// family and every part sits in one innermost budget (see the module comment).
pub(crate) fn fill_laminar(
    instance: &Instance,
    parts: impl IntoIterator<Item = impl std::borrow::Borrow<Part>>,
    mut room: Vec<f64>,
    start: f64,
) -> f64 {
    let mut total = start;
    for part in parts {
        let part = part.borrow();
        let count = part.gpus as f64;
        let chain = &instance.budgets[part.budget as usize].chain;
        let fits = chain
            .iter()
            .map(|&b| room[b] / count)
            .fold(f64::INFINITY, f64::min)
            .max(0.0);
        let take = fits.min(part.length_mw);
        if take <= 0.0 {
            continue;
        }
        for &b in chain {
            room[b] -= take * count;
        }
        total += part.value_per_gpu_mw * count * take;
    }
    total
}

/// Upper bound on the optimum: greedy on the envelopes with every gang split per innermost budget,
/// in continuous watts. `headroom` must be non-negative.
pub(crate) fn upper_bound(instance: &Instance, headroom: &[Milliwatts]) -> f64 {
    let mut parts = envelope_parts(instance, |_| true);
    sort_parts(&mut parts);
    let start: f64 = instance
        .workloads
        .iter()
        .map(|w| w.value_per_throughput * w.curve.candidates()[0].value)
        .sum();
    fill_laminar(
        instance,
        parts,
        headroom.iter().map(|&h| h as f64).collect(),
        start,
    )
}

/// Most a workload can rise from its current limit within `room` (watts left per budget).
fn rise_room(instance: &Instance, workload: usize, room: &[Milliwatts]) -> Milliwatts {
    instance.workloads[workload]
        .load
        .iter()
        .map(|&(b, count)| room[b].max(0) / count)
        .min()
        .unwrap_or(0)
}

fn charge(instance: &Instance, workload: usize, room: &mut [Milliwatts], delta_mw: Milliwatts) {
    for &(b, count) in &instance.workloads[workload].load {
        room[b] -= delta_mw * count;
    }
}

/// The greedy plan: each workload's limit. Fills envelope segments in order of value per GPU-watt,
/// realises every level on the true curve (rounding a level stuck inside a chord down to what the
/// curve gives), then lets each workload rise into what is left, best marginal value first.
pub(crate) fn greedy_limits(instance: &Instance, headroom: &[Milliwatts]) -> Vec<Milliwatts> {
    let workloads = &instance.workloads;
    let mut room = headroom.to_vec();
    let mut level: Vec<Milliwatts> = workloads.iter().map(|w| w.curve.lo_mw()).collect();
    let mut stuck = vec![false; workloads.len()];
    let mut next_value = vec![0.0_f64; workloads.len()];
    for increment in increments_by_value(instance) {
        let w = increment.workload as usize;
        if stuck[w] {
            continue;
        }
        let segment = &workloads[w].curve.envelope()[increment.segment as usize];
        let take = rise_room(instance, w, &room).min(segment.length_mw);
        charge(instance, w, &mut room, take);
        level[w] += take;
        if take < segment.length_mw {
            stuck[w] = true;
            next_value[w] = increment.value_per_gpu_mw;
        }
    }
    // Second chance for the workloads the first pass left short, most valuable first: with the watts
    // that rounding to the real curve frees, each rises as far as the room allows.
    let mut order: Vec<usize> = (0..workloads.len()).filter(|&w| stuck[w]).collect();
    order.sort_by(|&a, &b| next_value[b].total_cmp(&next_value[a]).then(a.cmp(&b)));
    rise_into_room(instance, headroom, &mut level, order);
    level
}

/// Realises every workload's level on its curve, then lets the workloads in `order` rise, one after
/// the other, as far as the watts left under `headroom` allow, each keeping the best level under that.
/// Used after the greedy and after the MILP, whose levels are rounded down to whole milliwatts.
pub(crate) fn rise_into_room(
    instance: &Instance,
    headroom: &[Milliwatts],
    levels: &mut [Milliwatts],
    order: impl IntoIterator<Item = usize>,
) {
    let mut room = headroom.to_vec();
    for (w, workload) in instance.workloads.iter().enumerate() {
        levels[w] = workload.curve.realise(levels[w]).limit_mw;
        charge(instance, w, &mut room, levels[w] - workload.curve.lo_mw());
    }
    for w in order {
        let curve = &instance.workloads[w].curve;
        let reachable = curve.realise(levels[w] + rise_room(instance, w, &room));
        if reachable.throughput > curve.realise(levels[w]).throughput {
            charge(instance, w, &mut room, reachable.limit_mw - levels[w]);
            levels[w] = reachable.limit_mw;
        }
    }
}
