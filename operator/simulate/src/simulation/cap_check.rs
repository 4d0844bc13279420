//! The independent cap check: at every tick, every budget's enforced limits plus overheads, read from
//! the simulated GPUs and summed from the scenario alone, against its cap. No IO.

use super::*;
use crate::faults::Fault;
/// How long a lowered `capWatts` (an edit, unannounced) takes to come into force in the cap check:
/// the debounce-free path of an edit plus a rollout, which the cluster tests measure at 0.1–0.6 s.
/// Until then the previous cap is checked. A schedule window gets no grace: it is known ahead, and
/// the operator plans it before it opens.
pub const CUT_GRACE_SECONDS: f64 = 2.0;

/// The most over-cap ticks a run's report lists (the count covers them all).
const MAX_OVER_CAP_TICKS: usize = 1000;

/// A budget's cap as the check applies it.
#[derive(Debug, Clone, Copy)]
pub(super) struct CheckedCap {
    pub(super) effective: f64,
    /// The spec cap (with edits) in force: a cut of it is an edit and gets the grace.
    pub(super) spec: f64,
    /// A higher cap still in force until `until` after a cut.
    pub(super) held: Option<(f64, f64)>,
}

/// The effective cap of every budget at `t`, by position in the scenario, from the scenario alone: the
/// spec cap (with edits) lowered by open windows.
pub(super) fn effective_caps(prepared: &Prepared, t: f64) -> Vec<f64> {
    let spec = prepared.spec_caps(t);
    prepared
        .scenario
        .budgets
        .iter()
        .map(|b| {
            b.windows
                .iter()
                .filter(|w| w.start_seconds <= t && t < w.end_seconds)
                .fold(spec[&b.name], |cap, w| cap.min(w.cap_watts))
        })
        .collect()
}

/// Per budget, by position in the scenario: enforced limits plus overheads, and what the GPUs draw plus
/// overheads. `chains` holds each node's budgets as positions.
pub(super) fn budget_watts(
    prepared: &Prepared,
    chains: &[Vec<usize>],
    nodes: &[NodeState],
) -> Vec<(f64, f64)> {
    let mut watts = vec![(0.0, 0.0); prepared.scenario.budgets.len()];
    for ((node, chain), state) in prepared.nodes.iter().zip(chains).zip(nodes) {
        if !state.powered {
            // A machine that is down draws nothing and enforces nothing.
            continue;
        }
        let backend = state.agent.backend();
        let mut limits = node.overhead_watts;
        let mut draw = node.overhead_watts;
        for gpu in 0..node.gpus {
            // NB: an unreadable limit counts as the GPU's maximum.
            limits += backend
                .power_limit_watts(gpu)
                .unwrap_or(node.model.max_watts);
            draw += backend.draw_watts(gpu).unwrap_or(node.model.max_watts);
        }
        for &budget in chain {
            watts[budget].0 += limits;
            watts[budget].1 += draw;
        }
    }
    watts
}

impl Simulation {
    /// The cap check and throughput accounting of run `index` at `t`.
    /// The independent cap check at `t`: the limits the simulated GPUs enforce plus overheads against
    /// every budget's cap, a cut counted from [`CUT_GRACE_SECONDS`] after it.
    pub(super) fn check_caps(&mut self, index: usize, t: f64) {
        if t < self.check_from_seconds - 1e-9 {
            // The install transient: until the first plan can have taken effect, the GPUs sit at
            // their driver default, as they did before Kilowatt.
            return;
        }
        let watts = budget_watts(&self.prepared, &self.chains, &self.runs[index].nodes);
        let run = &mut self.runs[index];
        let mut cut = false;
        let spec_changed = run
            .caps
            .iter()
            .zip(&self.caps_now)
            .any(|(entry, cap)| *cap != entry.effective);
        let spec_now = spec_changed.then(|| self.prepared.spec_caps(t));
        for ((entry, &cap), budget) in run
            .caps
            .iter_mut()
            .zip(&self.caps_now)
            .zip(&self.prepared.scenario.budgets)
        {
            let spec = spec_now
                .as_ref()
                .and_then(|caps| caps.get(&budget.name))
                .copied()
                .unwrap_or(entry.spec);
            let edited_down = spec < entry.spec;
            entry.spec = spec;
            if cap < entry.effective && !edited_down {
                // A window opened: known ahead, no grace.
                cut = true;
            } else if cap < entry.effective {
                let held_cap = entry
                    .held
                    .filter(|(_, until)| t < *until)
                    .map_or(entry.effective, |(held, _)| held.max(entry.effective));
                entry.held = Some((held_cap, t + CUT_GRACE_SECONDS));
                cut = true;
            }
            entry.effective = cap;
        }
        if cut && run.cut_pending_since.is_none() {
            run.cut_pending_since = Some(t);
        }
        let mut over = 0.0_f64;
        let mut fits_new_caps = true;
        for ((checked, &(limits, _)), budget) in run
            .caps
            .iter()
            .zip(&watts)
            .zip(&self.prepared.scenario.budgets)
        {
            let in_force = match checked.held {
                Some((held, until)) if t < until => held.max(checked.effective),
                _ => checked.effective,
            };
            let budget_over = limits - in_force;
            if budget_over > 1e-6 && run.summary.over_cap_ticks.len() < MAX_OVER_CAP_TICKS {
                run.summary.over_cap_ticks.push(OverCapTick {
                    at_seconds: (t * 1000.0).round() / 1000.0,
                    budget: budget.name.clone(),
                    over_watts: budget_over,
                    active_faults: self
                        .prepared
                        .scenario
                        .faults
                        .iter()
                        .filter(|f| f.active(t))
                        .map(Fault::label)
                        .collect(),
                });
            }
            over = over.max(budget_over);
            fits_new_caps &= limits <= checked.effective + 1e-6;
        }
        run.summary.cap_checks += 1;
        if over > 1e-6 {
            run.summary.cap_violations += 1;
            run.summary.worst_over_cap_watts = run.summary.worst_over_cap_watts.max(over);
        }
        if let Some(since) = run.cut_pending_since
            && fits_new_caps
        {
            run.summary.worst_cut_enforced_seconds =
                run.summary.worst_cut_enforced_seconds.max(t - since);
            run.cut_pending_since = None;
        }
    }
}
