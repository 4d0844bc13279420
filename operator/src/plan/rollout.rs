//! The two-phase rollout rule: which node plans may be written now so that every budget stays under its
//! cap whatever each agent has applied so far. Lowering is always allowed; a raise is written only when
//! every budget above the node can hold it with every other node counted at the most it may enforce —
//! while its lease lives or its machine is up, the largest of its acknowledged limits (from its
//! current boot; before any, its maximum), what is written for it, and anything written since the
//! acknowledgement (a raise it may have applied before it was lowered again); a dead agent fences
//! nothing: its GPUs keep their limits. Once the lease is gone and the machine is not known to be up
//! (the agent fenced itself to its floors before the lease expired, or the machine is down), its plan
//! is lowered to its floors, and it counts at its GPUs' maximum: a machine that reboots comes back
//! with its GPUs at the driver default before its agent can lower them. Pure.

use std::collections::BTreeMap;

use kilowatt_crds::plan::{Acknowledgement, EarlierLimits, Inventory, NodePlan, PowerReport};

/// The most earlier writes a node plan carries; older ones are merged (their per-GPU maximum, at the
/// later revision), which can only count more, never less.
const MAX_UNACKNOWLEDGED: usize = 16;

/// What Kubernetes says about a node's machine.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Machine {
    /// The Node exists and its Ready condition is not Unknown (a kubelet that reports Ready=False,
    /// say for an unhealthy runtime or CNI, runs on a machine that is up).
    pub up: bool,
    /// `status.nodeInfo.bootID`, when reported.
    pub boot_id: Option<String>,
}

/// What etcd and Kubernetes say about one node's agent.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AgentView {
    /// The node plan in etcd now.
    pub written: Option<NodePlan>,
    /// The agent's last acknowledgement (kept after its lease expires).
    pub ack: Option<Acknowledgement>,
    /// The agent's inventory (lease-bound); `None`: no live agent.
    pub inventory: Option<Inventory>,
    /// Whether the node's machine is known to be up (its Node exists and its Ready condition is not
    /// Unknown): then its GPUs may still enforce what was last acknowledged even when its agent is
    /// gone.
    pub machine_up: bool,
    /// The machine's current boot ID (the Node's `status.nodeInfo.bootID`), when Kubernetes reports
    /// one: an acknowledgement from another boot does not count (a reboot resets limits to the
    /// driver's default, about the maximum).
    pub boot_id: Option<String>,
    /// Each GPU's largest limit, by index, as the plan's translation knows it (validated inventory,
    /// else the GPU model table): what a GPU counts at when nothing proves it lower.
    pub gpu_max_watts: Vec<f64>,
    /// The GPU power the agent last measured (lease-bound); not used by the rollout rule.
    pub power: Option<PowerReport>,
}

impl AgentView {
    /// The acknowledgement, if it is from the machine's current boot (or Kubernetes reports no boot
    /// ID to tell).
    pub fn current_ack(&self) -> Option<&Acknowledgement> {
        self.ack.as_ref().filter(|ack| match &self.boot_id {
            Some(boot) => ack.boot_id.as_ref() == Some(boot),
            None => true,
        })
    }

    /// No agent has run here that the store knows of (no inventory, no acknowledgement): its GPUs sit
    /// at whatever they had before Kilowatt, the driver's default (about the maximum) on a fresh
    /// machine.
    fn never_registered(&self) -> bool {
        self.inventory.is_none() && self.ack.is_none()
    }

    /// Whether the GPUs may still enforce what they were told: the agent lives or the machine is up.
    fn may_enforce(&self) -> bool {
        self.inventory.is_some() || self.machine_up
    }

    /// The highest limit written for GPU `index` that no current acknowledgement covers (the plan in
    /// etcd included); what [`AgentView::unacknowledged`] lists, without building the list, for it
    /// is asked for every GPU of every node several times a pass.
    fn most_unacknowledged(&self, index: usize) -> Option<f64> {
        let written = self.written.as_ref()?;
        let acknowledged = self.current_ack().map(|ack| ack.revision);
        let covered = |revision: u64| acknowledged.is_some_and(|ack| ack >= revision);
        let earlier = written
            .unacknowledged
            .iter()
            .filter(|earlier| !covered(earlier.revision))
            .filter_map(|earlier| earlier.power_limits_watts.get(index).copied());
        let current = written
            .gpus
            .iter()
            .find(|g| g.index as usize == index && !covered(written.revision))
            .map(|g| g.power_limit_watts);
        earlier.chain(current).reduce(f64::max)
    }

    /// Limits written for the node that no current acknowledgement covers, the plan in etcd included.
    fn unacknowledged(&self) -> Vec<EarlierLimits> {
        let Some(written) = &self.written else {
            return Vec::new();
        };
        let acknowledged = self.current_ack().map(|ack| ack.revision);
        let covered = |revision: u64| acknowledged.is_some_and(|ack| ack >= revision);
        let mut pending: Vec<EarlierLimits> = written
            .unacknowledged
            .iter()
            .filter(|earlier| !covered(earlier.revision))
            .cloned()
            .collect();
        if !covered(written.revision) {
            let mut limits = Vec::new();
            for gpu in &written.gpus {
                let index = gpu.index as usize;
                if limits.len() <= index {
                    limits.resize(index + 1, 0.0);
                }
                limits[index] = gpu.power_limit_watts;
            }
            pending.push(EarlierLimits {
                revision: written.revision,
                power_limits_watts: limits,
            });
        }
        while pending.len() > MAX_UNACKNOWLEDGED {
            let older = pending.remove(0);
            let newer = &mut pending[0];
            if newer.power_limits_watts.len() < older.power_limits_watts.len() {
                newer
                    .power_limits_watts
                    .resize(older.power_limits_watts.len(), 0.0);
            }
            for (watts, old) in newer
                .power_limits_watts
                .iter_mut()
                .zip(older.power_limits_watts)
            {
                *watts = watts.max(old);
            }
        }
        pending
    }
}

/// The most GPU `index` of a node may enforce now, given what is written for it: while its lease
/// lives or its machine is up, the largest of its current-boot acknowledged limit (or, before any,
/// its maximum), every limit written since that acknowledgement, and the written one; otherwise its
/// maximum — the agent fenced itself or the machine is down, and a machine that reboots comes back
/// at the driver default.
fn possible_gpu_watts(
    view: &AgentView,
    written: Option<&NodePlan>,
    index: usize,
    floor: f64,
) -> f64 {
    let planned = written
        .and_then(|p| p.gpus.iter().find(|g| g.index as usize == index))
        .map(|g| g.power_limit_watts);
    let maximum = view.gpu_max_watts.get(index).copied().or_else(|| {
        view.inventory
            .as_ref()
            .and_then(|inventory| inventory.gpus.get(index))
            .map(|g| g.max_limit_watts)
    });
    if !view.may_enforce() {
        // Down (or cut off, its agent fenced): it draws nothing now, but it may come back at any
        // moment from a reboot, with its GPUs at the driver default.
        return [planned, maximum]
            .into_iter()
            .flatten()
            .fold(floor, f64::max);
    }
    let acknowledged = match view.current_ack() {
        Some(ack) => ack.power_limits_watts.get(index).copied().or(maximum),
        None => maximum,
    };
    [planned, acknowledged, view.most_unacknowledged(index)]
        .into_iter()
        .flatten()
        .filter(|w| !w.is_nan())
        .fold(floor, f64::max)
}

/// The most a node may draw with `written` in etcd (GPU limits plus overhead).
pub fn possible_node_watts(view: &AgentView, written: Option<&NodePlan>, target: &NodePlan) -> f64 {
    target.overhead_watts
        + target
            .gpus
            .iter()
            .map(|g| possible_gpu_watts(view, written, g.index as usize, g.floor_watts))
            .sum::<f64>()
}

/// The first phase for one node: `target` lowered to what is written wherever the target is higher;
/// every GPU at its floor for a node new to the plan or whose agent's lease is gone (it has fenced
/// itself to its floors, and must find floors when it returns before its watts are counted as free).
fn lowered(view: &AgentView, target: &NodePlan) -> NodePlan {
    let mut plan = target.clone();
    match (&view.written, &view.inventory) {
        (Some(written), Some(_)) => {
            for gpu in &mut plan.gpus {
                if let Some(old) = written.gpus.iter().find(|g| g.index == gpu.index) {
                    gpu.power_limit_watts = gpu.power_limit_watts.min(old.power_limit_watts);
                }
            }
        }
        _ => {
            for gpu in &mut plan.gpus {
                gpu.power_limit_watts = gpu.floor_watts;
            }
        }
    }
    plan
}

/// Why a node is planned at what it may still enforce rather than at what it is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotLowering {
    /// No agent has registered from it while its machine is up: its GPUs keep the limits they had
    /// before Kilowatt, the driver's default on a fresh machine.
    NeverRegistered,
    /// Its agent is gone (no lease) while its machine is up: nothing lowers its GPUs.
    AgentGone,
    /// Its agent lives but has not acknowledged the plan written for it within the timeout.
    NotAcknowledged,
    /// Its agent acknowledged limits above the ones written: a GPU refuses them.
    AboveWritten,
    /// Its machine is down (Node Unknown) and its agent gone: it may come back from a reboot with
    /// its GPUs at the driver default.
    MachineDown,
}

impl NotLowering {
    pub fn describe(self) -> &'static str {
        match self {
            NotLowering::NeverRegistered => {
                "no agent has registered from it, so its GPUs keep their default limits"
            }
            NotLowering::AgentGone => "its agent is gone while its machine is up",
            NotLowering::NotAcknowledged => "its agent has not acknowledged its plan in time",
            NotLowering::AboveWritten => "its GPUs enforce more than the limits written for them",
            NotLowering::MachineDown => {
                "its machine is down and may come back with its GPUs at their default limit"
            }
        }
    }
}

/// A node that does not lower, with what each of its GPUs may enforce.
#[derive(Debug, Clone, PartialEq)]
pub struct NotLoweringNode {
    pub why: NotLowering,
    pub gpu_watts: Vec<f64>,
}

/// Acknowledged limits this far above the written ones mean the GPU did not take them (a driver
/// rounds by less).
const REFUSED_BY_WATTS: f64 = 1.0;

/// The nodes that do not lower now, at `now`: the pass plans them at what they may enforce (their
/// GPUs count at [`possible_gpu_watts`] and every other node is lowered to absorb it). Only nodes
/// whose GPUs may still enforce anything (agent alive or machine up) and that the translation knows
/// (`gpu_max_watts` set) are considered; an agent gets `ack_timeout` from a plan's `writtenAt` to
/// acknowledge it.
pub fn not_lowering(
    views: &BTreeMap<String, AgentView>,
    now: k8s_openapi::jiff::Timestamp,
    ack_timeout: std::time::Duration,
) -> BTreeMap<String, NotLoweringNode> {
    let mut found = BTreeMap::new();
    for (node, view) in views {
        if view.gpu_max_watts.is_empty() {
            continue;
        }
        let written = view.written.as_ref();
        let ack = view.current_ack();
        let covered = match (written, ack) {
            (Some(written), Some(ack)) => ack.revision >= written.revision,
            (None, _) => true,
            (Some(_), None) => false,
        };
        let overdue = written
            .and_then(|w| w.written_at.as_deref())
            .and_then(|at| at.parse::<k8s_openapi::jiff::Timestamp>().ok())
            .is_some_and(|at| {
                now.duration_since(at)
                    .try_into()
                    .is_ok_and(|waited: std::time::Duration| waited >= ack_timeout)
            });
        let refused = match (written, ack) {
            (Some(written), Some(ack)) if covered => written.gpus.iter().any(|g| {
                ack.power_limits_watts
                    .get(g.index as usize)
                    .is_some_and(|&enforced| enforced > g.power_limit_watts + REFUSED_BY_WATTS)
            }),
            _ => false,
        };
        let why = if !view.may_enforce() {
            NotLowering::MachineDown
        } else if view.never_registered() {
            NotLowering::NeverRegistered
        } else if view.inventory.is_none() {
            NotLowering::AgentGone
        } else if !covered && overdue {
            NotLowering::NotAcknowledged
        } else if refused {
            NotLowering::AboveWritten
        } else {
            continue;
        };
        let gpu_watts = (0..view.gpu_max_watts.len())
            .map(|index| possible_gpu_watts(view, written, index, 0.0))
            .collect();
        found.insert(node.clone(), NotLoweringNode { why, gpu_watts });
    }
    found
}

/// The nodes that, once `step` is written, have a plan their agent has not acknowledged while their
/// GPUs may still enforce something else (agent alive or machine up).
pub fn awaiting_acknowledgement(views: &BTreeMap<String, AgentView>, step: &Step) -> Vec<String> {
    views
        .iter()
        .filter(|(node, view)| {
            let written = step.writes.get(*node).or(view.written.as_ref());
            let acknowledged = view.current_ack().map(|ack| ack.revision);
            view.may_enforce()
                && written.is_some_and(|w| {
                    step.writes.contains_key(*node) || acknowledged < Some(w.revision)
                })
        })
        .map(|(node, _)| node.clone())
        .collect()
}

/// What to write now.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Step {
    /// Node plans to write, with their limits (revisions are set by the caller).
    pub writes: BTreeMap<String, NodePlan>,
    /// Nodes whose raise is held back until acknowledgements (or lease expiries) make room.
    pub held_back: Vec<String>,
}

fn same_targets(a: &NodePlan, b: &NodePlan) -> bool {
    a.budget == b.budget
        && a.overhead_watts == b.overhead_watts
        && a.gpus.len() == b.gpus.len()
        && a.gpus.iter().zip(&b.gpus).all(|(x, y)| {
            x.index == y.index
                && x.power_limit_watts == y.power_limit_watts
                && x.sm_clock_mhz == y.sm_clock_mhz
                && x.floor_watts == y.floor_watts
                && x.pod == y.pod
        })
}

/// The next step towards `targets`. `budgets_of` gives each node's budgets (its chain, or the union of
/// chains for a node selected by unrelated budgets) and `caps` each budget's planning cap.
pub fn next_step(
    targets: &BTreeMap<String, NodePlan>,
    views: &BTreeMap<String, AgentView>,
    budgets_of: &BTreeMap<String, Vec<String>>,
    caps: &BTreeMap<String, f64>,
) -> Step {
    let empty = AgentView::default();
    let view = |node: &str| views.get(node).unwrap_or(&empty);
    let mut step = Step::default();

    // Phase one: every node goes to min(written, target). Only lowers, so always safe.
    let mut after: BTreeMap<&str, NodePlan> = BTreeMap::new();
    for (node, target) in targets {
        let written = view(node).written.as_ref();
        let first = lowered(view(node), target);
        if written.is_none_or(|w| !same_targets(w, &first)) {
            step.writes.insert(node.clone(), first.clone());
        }
        after.insert(node, first);
    }

    // What every budget may carry once phase one is written.
    let mut used: BTreeMap<&str, f64> = BTreeMap::new();
    for (node, target) in targets {
        let watts = possible_node_watts(view(node), after.get(node.as_str()), target);
        for budget in budgets_of.get(node).into_iter().flatten() {
            *used.entry(budget).or_default() += watts;
        }
    }

    // Phase two: raise each node whose budgets all have room for it, in name order.
    for (node, target) in targets {
        let Some(first) = after.get(node.as_str()) else {
            continue;
        };
        if same_targets(first, target) {
            continue;
        }
        let before = possible_node_watts(view(node), Some(first), target);
        let raised = possible_node_watts(view(node), Some(target), target);
        let extra = raised - before;
        let budgets = budgets_of.get(node).map_or(&[][..], Vec::as_slice);
        let fits = budgets.iter().all(|b| {
            let cap = caps.get(b).copied().unwrap_or(f64::INFINITY);
            used.get(b.as_str()).copied().unwrap_or(0.0) + extra <= cap + 1e-6
        });
        if fits {
            for b in budgets {
                *used.entry(b).or_default() += extra;
            }
            step.writes.insert(node.clone(), target.clone());
        } else {
            step.held_back.push(node.clone());
        }
    }
    // A node whose raise lands back on what is written needs no write.
    step.writes.retain(|node, plan| {
        view(node)
            .written
            .as_ref()
            .is_none_or(|w| !same_targets(w, plan))
    });
    // Every write carries what was written before it and not acknowledged, so that the count above
    // survives the next write (and a restart of this operator, which reads it back).
    for (node, plan) in &mut step.writes {
        plan.unacknowledged = view(node).unacknowledged();
    }
    step
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    fn plan(limits: &[f64]) -> NodePlan {
        NodePlan {
            overhead_watts: 100.0,
            ..NodePlan::with_limits("n", 0, limits, 200.0)
        }
    }

    pub(crate) fn inventory(gpus: usize) -> Inventory {
        Inventory {
            backend: "simulated".into(),
            gpus: (0..gpus as u32)
                .map(|index| kilowatt_crds::plan::InventoryGpu {
                    index,
                    uuid: format!("SIM-{index}"),
                    model: "H100-SXM".into(),
                    min_limit_watts: 200.0,
                    max_limit_watts: 700.0,
                    pods: Vec::new(),
                })
                .collect(),
            pods_reported: false,
        }
    }

    fn live(written: &[f64], acked: Option<&[f64]>) -> AgentView {
        AgentView {
            written: Some(plan(written)),
            ack: acked.map(|a| Acknowledgement {
                revision: 1,
                power_limits_watts: a.to_vec(),
                boot_id: None,
            }),
            inventory: Some(inventory(written.len())),
            machine_up: false,
            boot_id: None,
            gpu_max_watts: Vec::new(),
            power: None,
        }
    }

    fn rack(nodes: &[&str]) -> BTreeMap<String, Vec<String>> {
        nodes
            .iter()
            .map(|n| (n.to_string(), vec!["rack".to_string()]))
            .collect()
    }

    #[test]
    fn a_raise_waits_until_the_decrease_it_depends_on_is_acknowledged() {
        // 2 × (100 W overhead + 2 GPUs); the cap fits a: 600+600, b: 200+200 only after b lowers.
        let caps = BTreeMap::from([("rack".to_string(), 100.0 * 2.0 + 1200.0 + 400.0)]);
        let targets = BTreeMap::from([
            ("a".to_string(), plan(&[600.0, 600.0])),
            ("b".to_string(), plan(&[200.0, 200.0])),
        ]);
        let views = BTreeMap::from([
            (
                "a".to_string(),
                live(&[200.0, 200.0], Some(&[200.0, 200.0])),
            ),
            (
                "b".to_string(),
                live(&[600.0, 600.0], Some(&[600.0, 600.0])),
            ),
        ]);
        let first = next_step(&targets, &views, &rack(&["a", "b"]), &caps);
        assert_eq!(
            first.writes.keys().collect::<Vec<_>>(),
            ["b"],
            "only the decrease goes out"
        );
        assert_eq!(first.held_back, ["a"]);

        let acked = BTreeMap::from([
            (
                "a".to_string(),
                live(&[200.0, 200.0], Some(&[200.0, 200.0])),
            ),
            (
                "b".to_string(),
                live(&[200.0, 200.0], Some(&[200.0, 200.0])),
            ),
        ]);
        let second = next_step(&targets, &acked, &rack(&["a", "b"]), &caps);
        assert_eq!(second.writes.keys().collect::<Vec<_>>(), ["a"]);
        assert!(second.held_back.is_empty());
    }

    #[test]
    fn a_silent_node_counts_at_its_last_ack_and_once_its_machine_is_down_at_what_may_come_back() {
        let caps = BTreeMap::from([("rack".to_string(), 1800.0)]);
        let targets = BTreeMap::from([
            ("a".to_string(), plan(&[600.0, 600.0])),
            ("b".to_string(), plan(&[200.0, 200.0])),
        ]);
        // b was told to lower but never acknowledged: it may still run at 600 W per GPU.
        let silent = BTreeMap::from([
            (
                "a".to_string(),
                live(&[200.0, 200.0], Some(&[200.0, 200.0])),
            ),
            (
                "b".to_string(),
                live(&[200.0, 200.0], Some(&[600.0, 600.0])),
            ),
        ]);
        assert_eq!(
            next_step(&targets, &silent, &rack(&["a", "b"]), &caps).held_back,
            ["a"]
        );
        // Its inventory and ack are gone, as if no agent had ever run there: it counts at what is
        // written (what no Kilowatt agent ever touched is outside what the operator can know).
        let expired = BTreeMap::from([
            (
                "a".to_string(),
                live(&[200.0, 200.0], Some(&[200.0, 200.0])),
            ),
            (
                "b".to_string(),
                AgentView {
                    written: Some(plan(&[200.0, 200.0])),
                    ..AgentView::default()
                },
            ),
        ]);
        let step = next_step(&targets, &expired, &rack(&["a", "b"]), &caps);
        assert!(step.held_back.is_empty());
        assert!(step.writes.contains_key("a"));
        // Knowing them (as every pass does), it counts at them: it may come back from a reboot at the
        // driver default.
        let mut down = expired.clone();
        let b = down.get_mut("b").expect("b");
        b.gpu_max_watts = vec![700.0, 700.0];
        // The acknowledgement outlives the lease: an agent did run there.
        b.ack = Some(Acknowledgement {
            revision: 1,
            power_limits_watts: vec![200.0, 200.0],
            boot_id: None,
        });
        let step = next_step(&targets, &down, &rack(&["a", "b"]), &caps);
        assert_eq!(step.held_back, ["a"]);
    }

    #[test]
    fn a_node_whose_agent_died_counts_at_its_last_ack_while_its_machine_is_up() {
        let caps = BTreeMap::from([("rack".to_string(), 1800.0)]);
        let targets = BTreeMap::from([
            ("a".to_string(), plan(&[600.0, 600.0])),
            ("b".to_string(), plan(&[200.0, 200.0])),
        ]);
        // b's agent was killed at 600 W per GPU: its lease and inventory are gone, its GPUs are not.
        let dead_agent = |machine_up| {
            BTreeMap::from([
                (
                    "a".to_string(),
                    live(&[200.0, 200.0], Some(&[200.0, 200.0])),
                ),
                (
                    "b".to_string(),
                    AgentView {
                        written: Some(plan(&[200.0, 200.0])),
                        inventory: None,
                        machine_up,
                        ..live(&[200.0, 200.0], Some(&[600.0, 600.0]))
                    },
                ),
            ])
        };
        let step = next_step(&targets, &dead_agent(true), &rack(&["a", "b"]), &caps);
        assert_eq!(step.held_back, ["a"]);
        assert!(step.writes.is_empty());
        // Once the machine is not known to be up (down, or partitioned and so fenced), b counts at
        // what is written for it when its GPUs' maxima are unknown (a pass knows them: see above).
        let step = next_step(&targets, &dead_agent(false), &rack(&["a", "b"]), &caps);
        assert!(step.held_back.is_empty());
        assert!(step.writes.contains_key("a"));
    }

    #[test]
    fn an_unacknowledged_raise_still_counts_after_the_node_is_lowered() {
        // a was raised to 600 W a GPU at revision 2 and may have applied it (no ack yet, its agent is
        // stopped); the new targets lower it to 300 W and would hand the difference to b.
        let caps = BTreeMap::from([("rack".to_string(), 2.0 * 100.0 + 600.0 + 1200.0)]);
        let targets = BTreeMap::from([
            ("a".to_string(), plan(&[300.0, 300.0])),
            ("b".to_string(), plan(&[600.0, 600.0])),
        ]);
        let raised = NodePlan {
            revision: 2,
            ..plan(&[600.0, 600.0])
        };
        let views = BTreeMap::from([
            (
                "a".to_string(),
                AgentView {
                    written: Some(raised),
                    ..live(&[200.0, 200.0], Some(&[200.0, 200.0]))
                },
            ),
            (
                "b".to_string(),
                live(&[200.0, 200.0], Some(&[200.0, 200.0])),
            ),
        ]);
        let step = next_step(&targets, &views, &rack(&["a", "b"]), &caps);
        assert_eq!(step.held_back, ["b"], "a may still enforce 600 W a GPU");
        let lowered = &step.writes["a"];
        assert_eq!(
            lowered.unacknowledged,
            [EarlierLimits {
                revision: 2,
                power_limits_watts: vec![600.0, 600.0]
            }],
            "the lowered plan remembers the raise it replaces"
        );
        // The next pass reads the lowered plan back (at revision 3): the raise still counts.
        let mut after = views.clone();
        after.get_mut("a").expect("a").written = Some(NodePlan {
            revision: 3,
            ..lowered.clone()
        });
        let step = next_step(&targets, &after, &rack(&["a", "b"]), &caps);
        assert_eq!(step.held_back, ["b"]);
        // Once a acknowledges revision 3, only what it enforces counts.
        after.get_mut("a").expect("a").ack = Some(Acknowledgement {
            revision: 3,
            power_limits_watts: vec![300.0, 300.0],
            boot_id: None,
        });
        let step = next_step(&targets, &after, &rack(&["a", "b"]), &caps);
        assert!(step.held_back.is_empty());
        assert!(step.writes.contains_key("b"));
    }

    #[test]
    fn an_acknowledgement_from_an_earlier_boot_does_not_count() {
        // b rebooted: its GPUs came back at the driver default; its acknowledgement is from before.
        let caps = BTreeMap::from([("rack".to_string(), 2.0 * 100.0 + 1200.0 + 400.0)]);
        let targets = BTreeMap::from([
            ("a".to_string(), plan(&[600.0, 600.0])),
            ("b".to_string(), plan(&[200.0, 200.0])),
        ]);
        let acked_in = |boot: &str| Acknowledgement {
            revision: 1,
            power_limits_watts: vec![200.0, 200.0],
            boot_id: Some(boot.to_string()),
        };
        let views = |b_boot: &str| {
            BTreeMap::from([
                (
                    "a".to_string(),
                    live(&[200.0, 200.0], Some(&[200.0, 200.0])),
                ),
                (
                    "b".to_string(),
                    AgentView {
                        ack: Some(acked_in("boot-1")),
                        inventory: None,
                        machine_up: true,
                        boot_id: Some(b_boot.to_string()),
                        gpu_max_watts: vec![700.0, 700.0],
                        ..live(&[200.0, 200.0], None)
                    },
                ),
            ])
        };
        let same_boot = next_step(&targets, &views("boot-1"), &rack(&["a", "b"]), &caps);
        assert!(same_boot.held_back.is_empty());
        let rebooted = next_step(&targets, &views("boot-2"), &rack(&["a", "b"]), &caps);
        assert_eq!(rebooted.held_back, ["a"], "b counts at 700 W a GPU");
    }

    #[test]
    fn nodes_already_at_their_targets_are_not_rewritten() {
        let caps = BTreeMap::from([("rack".to_string(), 10_000.0)]);
        let targets = BTreeMap::from([
            ("live".to_string(), plan(&[500.0])),
            ("gone".to_string(), plan(&[600.0])),
        ]);
        let views = BTreeMap::from([
            ("live".to_string(), live(&[500.0], Some(&[500.0]))),
            (
                "gone".to_string(),
                AgentView {
                    written: Some(plan(&[600.0])),
                    ..AgentView::default()
                },
            ),
        ]);
        assert_eq!(
            next_step(&targets, &views, &rack(&["live", "gone"]), &caps),
            Step::default()
        );
    }

    #[test]
    fn a_new_node_starts_at_its_floors() {
        let caps = BTreeMap::from([("rack".to_string(), 10_000.0)]);
        let targets = BTreeMap::from([("n".to_string(), plan(&[500.0]))]);
        let views = BTreeMap::from([(
            "n".to_string(),
            AgentView {
                inventory: Some(inventory(1)),
                ..AgentView::default()
            },
        )]);
        let step = next_step(&targets, &views, &rack(&["n"]), &caps);
        assert_eq!(
            step.writes["n"].gpus[0].power_limit_watts, 500.0,
            "room enough: raised at once"
        );
        let tight = BTreeMap::from([("rack".to_string(), 100.0 + 650.0)]);
        let step = next_step(&targets, &views, &rack(&["n"]), &tight);
        assert_eq!(
            step.writes["n"].gpus[0].power_limit_watts, 200.0,
            "unacknowledged: counted at its max"
        );
        assert_eq!(step.held_back, ["n"]);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        /// Whatever agents have acknowledged (or whether their leases live and machines are up), after
        /// any step the most every node may enforce — max(acknowledged, written, written since the
        /// acknowledgement) while alive or up, written otherwise — fits the cap, provided it did
        /// before and the targets do.
        #[test]
        fn every_step_keeps_the_possible_draw_under_the_cap(
            nodes in prop::collection::vec(
                (prop::collection::vec(200.0..700.0f64, 2), prop::collection::vec(200.0..700.0f64, 2),
                 prop::option::of(prop::collection::vec(200.0..700.0f64, 2)), any::<bool>(), any::<bool>(),
                 prop::option::of(prop::collection::vec(200.0..700.0f64, 2)), 1..4u64),
                1..6),
            slack in 0.0..500.0f64,
        ) {
            let mut targets = BTreeMap::new();
            let mut views = BTreeMap::new();
            for (i, (written, target, acked, alive, machine_up, earlier, acked_revision)) in nodes.iter().enumerate() {
                let name = format!("n{i}");
                targets.insert(name.clone(), plan(target));
                let mut view = live(written, acked.as_deref());
                view.machine_up = *machine_up;
                if !alive {
                    view.inventory = None;
                }
                // Written at revision 3, over an earlier unacknowledged write at revision 2; the ack
                // covers revision 1, 2 or 3.
                if let Some(written) = &mut view.written {
                    written.revision = 3;
                    written.unacknowledged = earlier.iter().map(|limits| EarlierLimits {
                        revision: 2,
                        power_limits_watts: limits.clone(),
                    }).collect();
                }
                if let Some(ack) = &mut view.ack {
                    ack.revision = *acked_revision;
                }
                views.insert(name, view);
            }
            let budgets = rack(&targets.keys().map(String::as_str).collect::<Vec<_>>());
            let possible = |views: &BTreeMap<String, AgentView>| -> f64 {
                targets.iter().map(|(n, t)| possible_node_watts(&views[n], views[n].written.as_ref(), t)).sum()
            };
            let target_total: f64 = targets.values().map(|t| t.overhead_watts + t.gpus.iter().map(|g| g.power_limit_watts).sum::<f64>()).sum();
            let cap = possible(&views).max(target_total) + slack;
            let caps = BTreeMap::from([("rack".to_string(), cap)]);
            let step = next_step(&targets, &views, &budgets, &caps);
            let mut after = views.clone();
            for (node, plan) in &step.writes {
                after.get_mut(node).expect("node").written = Some(plan.clone());
            }
            prop_assert!(possible(&after) <= cap + 1e-6, "{} W over a {cap} W cap", possible(&after));
        }
    }
}
