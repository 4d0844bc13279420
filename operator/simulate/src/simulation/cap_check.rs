//! The independent cap check: at every tick, every budget's enforced limits plus overheads, read from
//! the simulated GPUs and summed from the scenario alone, against its cap. No IO.

use super::*;
/// How long a lowered cap takes to come into force in the cap check: the debounce-free path of a
/// schedule boundary or an edit plus a rollout, which the cluster tests measure at 0.1–0.6 s. Until
/// then the previous cap is checked.
pub const CUT_GRACE_SECONDS: f64 = 2.0;

/// A budget's cap as the check applies it.
#[derive(Debug, Clone, Copy)]
pub(super) struct CheckedCap {
    pub(super) effective: f64,
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
        let watts = budget_watts(&self.prepared, &self.chains, &self.runs[index].nodes);
        let run = &mut self.runs[index];
        let mut cut = false;
        for (entry, &cap) in run.caps.iter_mut().zip(&self.caps_now) {
            if cap < entry.effective {
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
        for (checked, &(limits, _)) in run.caps.iter().zip(&watts) {
            let in_force = match checked.held {
                Some((held, until)) if t < until => held.max(checked.effective),
                _ => checked.effective,
            };
            over = over.max(limits - in_force);
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
