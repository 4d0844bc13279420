//! The baselines people run today, for comparison: one uniform power limit, or each budget's room
//! split in proportion to each GPU's maxWatts. Pure, no IO.

use crate::curve::Milliwatts;
use crate::instance::Instance;

/// Range a GPU's limit may take: its own, or its gang's common range, so a gang stays on one limit.
fn range_mw(instance: &Instance, gpu: usize) -> (Milliwatts, Milliwatts) {
    let entry = &instance.gpus[gpu];
    entry.workload.map_or((entry.min_mw, entry.max_mw), |w| {
        instance.workloads[w].gpu_range_mw
    })
}

/// Largest `t` in `[0, hi]` for which `fits(t)` holds, given `fits` is monotone and `fits(0)` holds.
fn largest_fitting(hi: i64, fits: impl Fn(i64) -> bool) -> i64 {
    let (mut lo, mut hi) = (0, hi);
    if fits(hi) {
        return hi;
    }
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if fits(mid) {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    lo
}

fn fits_every_budget(instance: &Instance, usage: &[Milliwatts]) -> bool {
    instance
        .budgets
        .iter()
        .zip(usage)
        .all(|(b, &used)| used <= b.cap_mw)
}

/// Per-GPU limits of uniform capping: the largest single limit (clamped to each GPU's range) that
/// fits every budget.
pub(crate) fn uniform_gpu_limits(instance: &Instance) -> Vec<Milliwatts> {
    let clamp = |limit: Milliwatts, g: usize| {
        let (lo, hi) = range_mw(instance, g);
        limit.clamp(lo, hi)
    };
    let highest = instance.gpus.iter().map(|g| g.max_mw).max().unwrap_or(0);
    let limit = largest_fitting(highest, |limit| {
        fits_every_budget(instance, &instance.budget_usage(|g| clamp(limit, g)))
    });
    (0..instance.gpus.len()).map(|g| clamp(limit, g)).collect()
}

/// Per-GPU limits of proportional capping: in each budget the largest fraction of maxWatts that fits,
/// and each GPU at the smallest fraction along its chain of budgets.
pub(crate) fn proportional_gpu_limits(instance: &Instance) -> Vec<Milliwatts> {
    const SCALE: i64 = 1_000_000;
    let scaled = |parts_per_million: i64, g: usize| {
        let (lo, hi) = range_mw(instance, g);
        ((instance.gpus[g].max_mw as i128 * parts_per_million as i128 / SCALE as i128)
            as Milliwatts)
            .clamp(lo, hi)
    };
    let chain_of = |g: usize| &instance.budgets[instance.nodes[instance.gpus[g].node].budget].chain;
    let mut gpus_under: Vec<Vec<usize>> = vec![Vec::new(); instance.budgets.len()];
    for g in 0..instance.gpus.len() {
        for &b in chain_of(g) {
            gpus_under[b].push(g);
        }
    }
    let mut overhead_mw: Vec<Milliwatts> = vec![0; instance.budgets.len()];
    for node in &instance.nodes {
        for &b in &instance.budgets[node.budget].chain {
            overhead_mw[b] += node.overhead_mw;
        }
    }
    let fraction: Vec<i64> = (0..instance.budgets.len())
        .map(|b| {
            largest_fitting(SCALE, |ppm| {
                let gpus: Milliwatts = gpus_under[b].iter().map(|&g| scaled(ppm, g)).sum();
                overhead_mw[b] + gpus <= instance.budgets[b].cap_mw
            })
        })
        .collect();
    (0..instance.gpus.len())
        .map(|g| {
            let ppm = chain_of(g)
                .iter()
                .map(|&b| fraction[b])
                .min()
                .unwrap_or(SCALE);
            scaled(ppm, g)
        })
        .collect()
}

/// A gang runs at the pace of its slowest GPU, so each workload gets the lowest limit of its GPUs.
pub(crate) fn gang_limits(instance: &Instance, gpu_limits: &[Milliwatts]) -> Vec<Milliwatts> {
    instance
        .workloads
        .iter()
        .map(|w| {
            w.gpus
                .iter()
                .map(|&g| gpu_limits[g])
                .min()
                .unwrap_or(w.gpu_range_mw.0)
        })
        .collect()
}
