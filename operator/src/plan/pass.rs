//! One planning pass over a [`PlanStore`]: read what the store says about every node's agent,
//! translate the cluster, solve, build the plan, take the next rollout step and publish it when it
//! changes anything. The operator runs it against etcd with its watch caches, `kilowatt simulate` against
//! memory with its scenario; status and events are the caller's. IO only through the store it is given.

use std::collections::BTreeMap;

use k8s_openapi::jiff::Timestamp;
use kilowatt_crds::plan::Inventory;
use kilowatt_solver::{Plan, Problem, SolveError, SolveOptions};

use crate::plan::published::{self, NodePlan, PublishedPlan};
use crate::plan::reasons;
use crate::plan::rollout::{self, AgentView, Machine};
use crate::plan::status::measured_per_budget;
use crate::plan::translate::{NodeHold, PodWarning, Translation};
use crate::store::{Loaded, PlanStore, StoreError};

/// How soon a pass looks again while pods wait for their agents' reports of which GPUs they hold
/// (agents ask the kubelet every 10 s).
pub const AWAITING_GPU_REPORT_RECHECK: std::time::Duration = std::time::Duration::from_secs(5);

/// Why a pass failed; the caller retries with backoff.
#[derive(Debug, thiserror::Error)]
pub enum PassError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("solving the plan")]
    Solve(#[from] SolveError),
    #[error("the solver task failed")]
    SolverTask(#[from] tokio::task::JoinError),
    #[error("patching status of {kind} {name}")]
    Status {
        kind: &'static str,
        name: String,
        source: kube::Error,
    },
}

impl PassError {
    /// A fixed label for metrics and logs.
    pub fn category(&self) -> &'static str {
        match self {
            PassError::Store(e) => e.category(),
            PassError::Solve(_) | PassError::SolverTask(_) => "solve",
            PassError::Status { .. } => "kube",
        }
    }
}

/// What the caller brings to a pass.
pub struct PassInputs<'a, T, U, W>
where
    T: Fn(&BTreeMap<String, Inventory>, &BTreeMap<String, NodeHold>) -> Translation,
    U: Fn(&str) -> Machine,
    W: Fn() -> bool,
{
    pub now: Timestamp,
    /// The cluster translated at `now`, given the inventories that live agents reported and the
    /// nodes the pass holds outside the optimisation (called more than once when some do not lower
    /// or a budget is infeasible).
    pub translate: T,
    /// How long an agent may take to acknowledge a plan before its node is planned as not lowering.
    pub ack_timeout: std::time::Duration,
    /// What Kubernetes says about a node's machine.
    pub machine: U,
    /// Whether this process may still write; checked right before publishing (the store's fence
    /// covers the rest of the race).
    pub may_publish: W,
    /// What the store held at this process's last read or write; `None` reads it first.
    pub loaded: Option<Loaded>,
    pub solve: &'a SolveOptions,
}

/// A publish this pass made.
#[derive(Debug, Clone, PartialEq)]
pub struct Published {
    pub revision: u64,
    pub nodes_written: usize,
    /// Whether the targets changed (not only a rollout step towards the same targets).
    pub content_changed: bool,
}

/// What a pass found and did.
#[derive(Debug, Clone)]
pub struct PassOutcome {
    /// The translation, with workloads the solver rejected marked unmanaged.
    pub translation: Translation,
    /// The plan in force after the pass (published now or earlier).
    pub in_force: PublishedPlan,
    /// The store's fence after the pass.
    pub loaded: Loaded,
    /// The plan read from the store because `loaded` was `None`, if it held one.
    pub read_plan: Option<PublishedPlan>,
    /// `None` when nothing needed writing, or when `may_publish` said no.
    pub published: Option<Published>,
    /// Nodes whose raise waits for acknowledgements.
    pub held_back: Vec<String>,
    /// Nodes whose agents may still enforce but have not acknowledged what is written for them:
    /// the caller looks again soon, so that one that does not is held within the ack timeout.
    pub awaiting_acknowledgement: Vec<String>,
    /// Measured watts per budget, from the agents' power reports plus overheads.
    pub measured: BTreeMap<String, f64>,
    /// The most the limits and overheads under each budget may enforce after this pass's writes.
    pub possible: BTreeMap<String, f64>,
    pub solve_seconds: f64,
    /// Wall-clock time of the whole pass: store reads, translation, solve, build, rollout, publish.
    pub pass_seconds: f64,
}

/// Solves, taking out any workload whose profile the solver rejects (the rest of the fleet is still
/// planned; that workload's GPUs sit at their minimum). Returns the plan and what was taken out.
fn solve_dropping_invalid(
    mut problem: Problem,
    options: &SolveOptions,
) -> Result<(Plan, Vec<(String, String)>), SolveError> {
    let mut dropped = Vec::new();
    loop {
        match kilowatt_solver::solve(&problem, options) {
            Err(SolveError::Invalid(invalid)) => {
                let index = invalid
                    .path
                    .strip_prefix("workloads[")
                    .and_then(|rest| rest.split(']').next())
                    .and_then(|i| i.parse::<usize>().ok())
                    .filter(|i| *i < problem.workloads.len());
                let Some(index) = index else {
                    return Err(SolveError::Invalid(invalid));
                };
                let workload = problem.workloads.remove(index);
                dropped.push((workload.name, invalid.to_string()));
            }
            other => return other.map(|plan| (plan, dropped)),
        }
    }
}

/// Pods of workloads the solver rejected become unmanaged, with a warning naming the reason.
fn mark_dropped(translation: &mut Translation, dropped: &[(String, String)]) {
    for (workload, message) in dropped {
        translation
            .problem
            .workloads
            .retain(|w| w.name != *workload);
        translation.workload_pods.remove(workload);
        for pod in &mut translation.pods {
            if pod.workload.as_deref() == Some(workload.as_str()) {
                pod.workload = None;
                pod.warnings.push(PodWarning {
                    reason: reasons::INVALID_PROFILE,
                    message: format!(
                        "the profile of workload {workload} cannot be planned ({message}); the pod's \
                         GPUs are held at their minimum power limit until the profile is fixed"
                    ),
                });
            }
        }
    }
}

/// The GPU inventories live agents reported, by node.
pub fn inventories(views: &BTreeMap<String, AgentView>) -> BTreeMap<String, Inventory> {
    views
        .iter()
        .filter_map(|(node, view)| Some((node.clone(), view.inventory.clone()?)))
        .collect()
}

/// Each planned node's budgets: its chain, or the union of the chains of every budget selecting it when
/// it is in conflict (it counts in each).
pub fn node_budgets(translation: &Translation) -> BTreeMap<String, Vec<String>> {
    translation
        .nodes
        .iter()
        .map(|(name, facts)| {
            let homes: &[String] = if facts.pinned {
                &facts.selected_by
            } else {
                std::slice::from_ref(&facts.budget)
            };
            let mut budgets: Vec<String> = homes
                .iter()
                .flat_map(|home| translation.chains.get(home).into_iter().flatten().cloned())
                .collect();
            budgets.sort();
            budgets.dedup();
            (name.clone(), budgets)
        })
        .collect()
}

/// The most the limits and overheads under each budget may enforce once `step` is written: every
/// planned node at what it may enforce with its plan after the step, plus GPUs no agent sees.
fn possible_per_budget(
    translation: &Translation,
    candidate: &PublishedPlan,
    views: &BTreeMap<String, AgentView>,
    step: &rollout::Step,
    budgets_of: &BTreeMap<String, Vec<String>>,
) -> BTreeMap<String, f64> {
    let empty = AgentView::default();
    let mut possible: BTreeMap<String, f64> = translation
        .budgets
        .keys()
        .map(|b| (b.clone(), 0.0))
        .collect();
    for (node, target) in &candidate.nodes {
        let view = views.get(node).unwrap_or(&empty);
        let after = step.writes.get(node).or(view.written.as_ref());
        let unseen = translation.nodes.get(node).map_or(0.0, |n| n.unseen_watts);
        let watts = rollout::possible_node_watts(view, after, target) + unseen;
        for budget in budgets_of.get(node).into_iter().flatten() {
            *possible.entry(budget.clone()).or_default() += watts;
        }
    }
    possible
}

/// Runs one pass against `store`.
pub async fn run<S, T, U, W>(
    store: &S,
    inputs: PassInputs<'_, T, U, W>,
) -> Result<PassOutcome, PassError>
where
    S: PlanStore,
    T: Fn(&BTreeMap<String, Inventory>, &BTreeMap<String, NodeHold>) -> Translation,
    U: Fn(&str) -> Machine,
    W: Fn() -> bool,
{
    let now = inputs.now;
    let pass_started = std::time::Instant::now();
    // NB: the plan and its fence are read before the views, so every view is at least as new as
    // the plan the fence vouches for. A replica that reads afresh takes over first: a publish still
    // in flight from a replica that led before fails at its next transaction.
    let (loaded, read_plan) = match inputs.loaded {
        Some(loaded) => (loaded, None),
        None => {
            let epoch = store.take_over().await?;
            let loaded = Loaded {
                epoch,
                ..store.load().await?
            };
            let read = loaded.plan.clone();
            (loaded, read)
        }
    };
    let mut views = store.read_views().await?;
    for (node, view) in &mut views {
        let machine = (inputs.machine)(node);
        view.machine_up = machine.up;
        view.boot_id = machine.boot_id;
    }
    let inventories = inventories(&views);
    let mut translation = (inputs.translate)(&inventories, &BTreeMap::new());
    // A GPU node no agent ever registered from has no keys yet; its view is what Kubernetes says of
    // its machine, so that it counts at its GPUs' maximum (the driver default) until an agent starts.
    for (node, facts) in &translation.nodes {
        let view = views.entry(node.clone()).or_insert_with(|| {
            let machine = (inputs.machine)(node);
            AgentView {
                machine_up: machine.up,
                boot_id: machine.boot_id,
                ..AgentView::default()
            }
        });
        view.gpu_max_watts = facts.slots.iter().map(|s| s.max_watts).collect();
    }
    let mut holds: BTreeMap<String, NodeHold> =
        rollout::not_lowering(&views, now, inputs.ack_timeout)
            .into_iter()
            .map(|(node, found)| {
                let message = format!("node {node} does not lower: {}", found.why.describe());
                let hold = NodeHold {
                    reason: reasons::NODE_NOT_LOWERING,
                    message,
                    gpu_watts: Some(found.gpu_watts),
                };
                (node, hold)
            })
            .collect();

    // Solve; a budget whose floors exceed its cap has its subtree held at its floors and the rest of
    // the fleet is solved again (each round holds at least one more node, so this ends).
    let mut infeasible: Vec<String> = Vec::new();
    let started = std::time::Instant::now();
    let (plan, dropped) = loop {
        if !holds.is_empty() {
            translation = (inputs.translate)(&inventories, &holds);
        }
        let problem = translation.problem.clone();
        let options = inputs.solve.clone();
        let (plan, dropped) =
            tokio::task::spawn_blocking(move || solve_dropping_invalid(problem, &options))
                .await??;
        // A budget whose held nodes alone exceed its cap leaves the solver nothing to fall short
        // on; its floors exceed its cap all the same.
        let short: Vec<String> = plan
            .shortfalls
            .iter()
            .map(|s| s.budget.clone())
            .chain(
                translation
                    .budgets
                    .iter()
                    .filter(|(_, f)| f.floor_watts > f.planning_cap_watts + 1e-6)
                    .map(|(name, _)| name.clone()),
            )
            .collect();
        let budgets_of = node_budgets(&translation);
        let mut more = false;
        for (node, budgets) in &budgets_of {
            if holds.contains_key(node) {
                continue;
            }
            if let Some(budget) = budgets.iter().find(|b| short.contains(b)) {
                holds.insert(
                    node.clone(),
                    NodeHold {
                        reason: reasons::BUDGET_INFEASIBLE,
                        message: format!(
                            "the floors under budget {budget} exceed its cap; node {node} is held \
                             at its floors"
                        ),
                        gpu_watts: None,
                    },
                );
                more = true;
            }
        }
        infeasible.extend(short);
        if !more {
            break (plan, dropped);
        }
    };
    infeasible.sort();
    infeasible.dedup();
    let solve_seconds = started.elapsed().as_secs_f64();
    mark_dropped(&mut translation, &dropped);

    let revision = u64::try_from(loaded.version).unwrap_or(0) + 1;
    let candidate = published::build(
        &translation,
        &plan,
        revision,
        now.to_string(),
        loaded.plan.as_ref(),
    );
    let candidate = PublishedPlan {
        infeasible_budgets: infeasible,
        ..candidate
    };
    // The rollout step: lower what must go down, raise only where acknowledgements (or expired
    // leases) prove the room (docs/plan-protocol.md).
    let budgets_of = node_budgets(&translation);
    let caps: BTreeMap<String, f64> = candidate
        .budgets
        .iter()
        .map(|b| (b.name.clone(), b.planning_cap_watts))
        .collect();
    let mut step = rollout::next_step(&candidate.nodes, &views, &budgets_of, &caps);
    let written_at = now.to_string();
    for plan in step.writes.values_mut() {
        plan.written_at = Some(written_at.clone());
    }
    let possible = possible_per_budget(&translation, &candidate, &views, &step, &budgets_of);
    let awaiting_acknowledgement = rollout::awaiting_acknowledgement(&views, &step);
    let measured = measured_per_budget(&views, &budgets_of, |node| {
        translation
            .nodes
            .get(node)
            .map_or(0.0, |n| n.overhead_watts)
    });
    let written: BTreeMap<String, NodePlan> = views
        .into_iter()
        .filter_map(|(node, view)| view.written.map(|plan| (node, plan)))
        .collect();
    let stale_nodes = written.keys().any(|n| !candidate.nodes.contains_key(n));
    let unchanged = loaded
        .plan
        .as_ref()
        .is_some_and(|current| current.same_content(&candidate));
    let nothing_to_write = unchanged && step.writes.is_empty() && !stale_nodes;
    if nothing_to_write || !(inputs.may_publish)() {
        let in_force = loaded.plan.clone().unwrap_or(candidate);
        return Ok(PassOutcome {
            translation,
            in_force,
            loaded,
            read_plan,
            published: None,
            held_back: step.held_back,
            awaiting_acknowledgement,
            measured,
            possible,
            solve_seconds,
            pass_seconds: pass_started.elapsed().as_secs_f64(),
        });
    }
    let desired = if unchanged {
        PublishedPlan {
            revision,
            ..loaded.plan.clone().unwrap_or_else(|| candidate.clone())
        }
    } else {
        candidate
    };
    let writes: BTreeMap<String, NodePlan> = step
        .writes
        .into_iter()
        .map(|(node, plan)| (node, NodePlan { revision, ..plan }))
        .collect();
    let after = store.publish(&desired, &writes, &written, &loaded).await?;
    Ok(PassOutcome {
        translation,
        in_force: desired,
        loaded: after,
        read_plan,
        published: Some(Published {
            revision,
            nodes_written: writes.len(),
            content_changed: !unchanged,
        }),
        held_back: step.held_back,
        awaiting_acknowledgement,
        measured,
        possible,
        solve_seconds,
        pass_seconds: pass_started.elapsed().as_secs_f64(),
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use k8s_openapi::api::core::v1::{Node, Pod};
    use kilowatt_crds::PowerBudget;
    use kilowatt_crds::plan::Acknowledgement;
    use serde_json::json;

    use super::*;
    use crate::plan::published::KeyLayout;
    use crate::plan::rollout::tests::inventory;
    use crate::plan::translate::tests::{at, budget, node, pod};
    use crate::plan::translate::{Cluster, WEIGHT_ANNOTATION, WORKLOAD_ANNOTATION, translate};
    use crate::store::memory::MemoryPlanStore;

    const NODES: [&str; 2] = ["n1", "n2"];

    /// Two 8-GPU H100 nodes with a training pod each, under one rack budget, whose agents have
    /// registered (200–700 W a GPU) but acknowledged nothing yet.
    struct Fleet {
        store: MemoryPlanStore,
        nodes: Vec<Arc<Node>>,
        pods: Vec<Arc<Pod>>,
        loaded: Option<Loaded>,
        now: Timestamp,
    }

    /// A training pod holding all 8 GPUs of `node`, with a weight in the objective.
    fn training_pod(node: &str, weight: f64) -> Arc<Pod> {
        let annotations =
            json!({WORKLOAD_ANNOTATION: "training", WEIGHT_ANNOTATION: weight.to_string()});
        pod(&format!("train-{node}"), node, 8, annotations)
    }

    impl Fleet {
        fn new() -> Fleet {
            let store = MemoryPlanStore::new(KeyLayout::new("/kilowatt"));
            for name in NODES {
                store.register(name, &inventory(8));
            }
            Fleet {
                store,
                nodes: NODES
                    .iter()
                    .map(|n| node(n, json!({"kubernetes.io/hostname": n}), "8"))
                    .collect(),
                pods: NODES.iter().map(|n| training_pod(n, 1.0)).collect(),
                loaded: None,
                now: at("2026-12-01T12:00:00Z"),
            }
        }

        /// One pass with the rack capped at `cap_watts`, keeping the store's fence for the next.
        async fn pass(&mut self, cap_watts: f64) -> PassOutcome {
            self.try_pass(cap_watts).await.expect("the pass runs")
        }

        async fn try_pass(&mut self, cap_watts: f64) -> Result<PassOutcome, PassError> {
            let budgets: Vec<Arc<PowerBudget>> = vec![budget(
                "rack",
                json!({"capWatts": cap_watts, "nodeSelector": {}}),
            )];
            self.try_pass_under(&budgets).await
        }

        /// One pass under `budgets` at `self.now`, keeping the store's fence for the next.
        async fn pass_under(&mut self, budgets: &[Arc<PowerBudget>]) -> PassOutcome {
            self.try_pass_under(budgets).await.expect("the pass runs")
        }

        async fn try_pass_under(
            &mut self,
            budgets: &[Arc<PowerBudget>],
        ) -> Result<PassOutcome, PassError> {
            let now = self.now;
            let outcome = run(
                &self.store,
                PassInputs {
                    now,
                    translate: |inventories: &BTreeMap<String, Inventory>,
                                holds: &BTreeMap<String, NodeHold>| {
                        translate(
                            Cluster {
                                budgets,
                                profiles: &[],
                                nodes: &self.nodes,
                                pods: &self.pods,
                                inventories,
                                holds,
                                window_lead: std::time::Duration::ZERO,
                            },
                            now,
                        )
                    },
                    machine: |_: &str| Machine {
                        up: true,
                        boot_id: None,
                    },
                    ack_timeout: std::time::Duration::from_secs(10),
                    may_publish: || true,
                    loaded: self.loaded.take(),
                    solve: &SolveOptions::default(),
                },
            )
            .await?;
            self.loaded = Some(outcome.loaded.clone());
            Ok(outcome)
        }

        /// The limits written for each node now.
        fn written(&self) -> Vec<Vec<f64>> {
            NODES
                .iter()
                .map(|n| {
                    let (_, plan) = self.store.node_plan(n);
                    plan.map(|p| p.gpus.iter().map(|g| g.power_limit_watts).collect())
                        .unwrap_or_default()
                })
                .collect()
        }

        /// Every agent acknowledges the limits written for it.
        fn acknowledge_all(&self) {
            for name in NODES {
                self.acknowledge(name);
            }
        }

        /// `node`'s agent acknowledges the limits written for it.
        fn acknowledge(&self, node: &str) {
            let (_, plan) = self.store.node_plan(node);
            let plan = plan.expect("a written plan");
            self.store.acknowledge(
                node,
                &Acknowledgement {
                    revision: plan.revision,
                    power_limits_watts: plan.gpus.iter().map(|g| g.power_limit_watts).collect(),
                    boot_id: None,
                },
            );
        }
    }

    fn total(written: &[Vec<f64>]) -> f64 {
        written.iter().flatten().sum()
    }

    #[tokio::test]
    async fn new_nodes_start_at_their_floors_and_rise_once_acknowledged() {
        let mut fleet = Fleet::new();
        let first = fleet.pass(8_000.0).await;
        assert_eq!(first.published.map(|p| p.nodes_written), Some(2));
        assert_eq!(first.held_back, NODES.map(String::from).to_vec());
        let floors = fleet.written();
        assert!(
            floors.iter().flatten().all(|&watts| watts == 200.0),
            "{floors:?}"
        );

        fleet.acknowledge_all();
        let raised = fleet.pass(8_000.0).await;
        assert!(raised.held_back.is_empty(), "{:?}", raised.held_back);
        let written = fleet.written();
        assert!(total(&written) > total(&floors));
        assert!(total(&written) <= 8_000.0 + 1e-6, "{}", total(&written));

        fleet.acknowledge_all();
        let again = fleet.pass(8_000.0).await;
        assert_eq!(again.published, None, "nothing changed, nothing is written");
        assert_eq!(fleet.written(), written);
    }

    /// A fleet whose agents have acknowledged the plan for an 8000 W cap.
    async fn settled_fleet() -> Fleet {
        let mut fleet = Fleet::new();
        fleet.pass(8_000.0).await;
        fleet.acknowledge_all();
        fleet.pass(8_000.0).await;
        fleet.acknowledge_all();
        fleet
    }

    #[tokio::test]
    async fn a_cap_cut_is_written_to_every_node_in_one_pass() {
        let mut fleet = settled_fleet().await;
        let before = fleet.written();
        let cut = fleet.pass(5_000.0).await;
        assert_eq!(cut.published.map(|p| p.nodes_written), Some(2));
        assert!(cut.held_back.is_empty(), "{:?}", cut.held_back);
        let lowered = fleet.written();
        assert!(total(&lowered) < total(&before));
        assert!(total(&lowered) <= 5_000.0 + 1e-6, "{}", total(&lowered));
    }

    #[tokio::test]
    async fn power_moves_between_nodes_only_after_the_giving_node_acknowledges() {
        let mut fleet = settled_fleet().await;
        let before = fleet.written();
        fleet.pods[0] = training_pod("n1", 5.0);
        let shift = fleet.pass(8_000.0).await;
        assert_eq!(shift.held_back, ["n1".to_owned()], "n1's raise waits");
        let during = fleet.written();
        assert_eq!(during[0], before[0], "n1 keeps its limits for now");
        assert!(
            total(&during[1..]) < total(&before[1..]),
            "n2 is lowered at once"
        );

        fleet.acknowledge_all();
        let raised = fleet.pass(8_000.0).await;
        assert!(raised.held_back.is_empty(), "{:?}", raised.held_back);
        let after = fleet.written();
        assert!(total(&after[..1]) > total(&before[..1]), "n1 has risen");
        assert!(total(&after) <= 8_000.0 + 1e-6, "{}", total(&after));
    }

    #[tokio::test]
    async fn a_replica_that_lost_the_fence_publishes_nothing() {
        let mut fleet = Fleet::new();
        fleet.pass(8_000.0).await;
        let stale = fleet.loaded.clone();
        fleet.pass(5_000.0).await;
        fleet.loaded = stale;
        let error = fleet
            .try_pass(9_000.0)
            .await
            .expect_err("the fence has moved on");
        assert!(
            matches!(error, PassError::Store(StoreError::Fenced)),
            "{error}"
        );
    }

    #[tokio::test]
    async fn a_replica_taken_over_publishes_nothing_even_before_the_new_leader_does() {
        let mut fleet = settled_fleet().await;
        let before = fleet.written();
        // Another replica takes over (and has not published yet): this one's next publish, which
        // would raise every node, must not land a single transaction.
        fleet.store.take_over().await.expect("takes over");
        let error = fleet
            .try_pass(9_000.0)
            .await
            .expect_err("the epoch has moved on");
        assert!(
            matches!(error, PassError::Store(StoreError::Fenced)),
            "{error}"
        );
        assert_eq!(fleet.written(), before);
        // Reading afresh (as after any fenced publish) takes over again, and publishes.
        fleet.loaded = None;
        let outcome = fleet.pass(9_000.0).await;
        assert!(outcome.published.is_some());
    }

    /// The limits and overheads every node may enforce now, from the rack's possible watts.
    fn possible(outcome: &PassOutcome) -> f64 {
        outcome.possible["rack"]
    }

    #[tokio::test]
    async fn a_node_whose_agent_died_is_planned_at_what_it_holds_and_the_others_absorb_a_cut() {
        let mut fleet = settled_fleet().await;
        let n1_held: f64 = fleet.written()[0].iter().sum();
        fleet.store.expire_lease("n1");
        let cut = fleet.pass(6_000.0).await;
        let n2: f64 = fleet.written()[1].iter().sum();
        assert!(n1_held + n2 <= 6_000.0 + 1e-6, "{n1_held} + {n2}");
        let rack = &cut.translation.budgets["rack"];
        assert_eq!(rack.held.len(), 1, "{:?}", rack.held);
        assert!(rack.held[0].contains("n1"), "{:?}", rack.held);
        assert!(cut.translation.cap_enforced()["rack"]);
        // Once n2 has acknowledged its cut, what may be enforced fits the new cap.
        fleet.acknowledge("n2");
        let after = fleet.pass(6_000.0).await;
        assert!(
            possible(&after) <= 6_000.0 + 1e-6,
            "{} W may be enforced under a 6000 W cap",
            possible(&after)
        );

        // A cut the other node cannot absorb even at its floors: CapEnforced is false.
        let deeper = fleet.pass(n1_held + 1_000.0).await;
        assert!(!deeper.translation.cap_enforced()["rack"]);
        assert!(deeper.translation.budgets["rack"].floor_watts > n1_held + 1_000.0);
    }

    #[tokio::test]
    async fn a_ready_node_no_agent_registered_from_counts_at_its_gpus_maximum() {
        let mut fleet = Fleet::new();
        // n2 is an H100 node (200–700 W a GPU) whose agent has not started: no keys at all.
        fleet.store = MemoryPlanStore::new(KeyLayout::new("/kilowatt"));
        fleet.store.register("n1", &inventory(8));
        fleet.nodes[1] = node(
            "n2",
            json!({"kubernetes.io/hostname": "n2", "nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}),
            "8",
        );
        let n2_default = 8.0 * 700.0;
        fleet.pass(8_000.0).await;
        fleet.acknowledge("n1");
        let outcome = fleet.pass(8_000.0).await;
        let rack = &outcome.translation.budgets["rack"];
        assert_eq!(rack.held.len(), 1, "{:?}", rack.held);
        assert!(rack.held[0].contains("n2"), "{:?}", rack.held);
        assert!(outcome.translation.cap_enforced()["rack"]);
        let n1: f64 = fleet.written()[0].iter().sum();
        assert!(
            n1 + n2_default <= 8_000.0 + 1e-6,
            "n1 {n1} W + n2 {n2_default} W"
        );
        assert!(possible(&outcome) >= n2_default, "{}", possible(&outcome));
        assert!(
            possible(&outcome) <= 8_000.0 + 1e-6,
            "{}",
            possible(&outcome)
        );

        // Its agent starts: n2 is planned anew but counts at its maximum until it acknowledges.
        fleet.store.register("n2", &inventory(8));
        fleet.pass(8_000.0).await;
        let pending = fleet.pass(8_000.0).await;
        assert!(
            possible(&pending) <= 8_000.0 + 1e-6,
            "{}",
            possible(&pending)
        );
        fleet.acknowledge_all();
        let released = fleet.pass(8_000.0).await;
        assert!(released.translation.budgets["rack"].held.is_empty());
        fleet.acknowledge_all();
        fleet.pass(8_000.0).await;
        let n1_after: f64 = fleet.written()[0].iter().sum();
        assert!(
            n1_after > n1,
            "n1 rises once n2 is known: {n1} -> {n1_after} W"
        );
    }

    #[tokio::test]
    async fn an_agent_that_does_not_acknowledge_in_time_is_planned_at_what_it_may_enforce() {
        let mut fleet = settled_fleet().await;
        let before = fleet.written();
        // The cut goes out; n1 acknowledges it, n2 never does.
        fleet.pass(6_000.0).await;
        fleet.acknowledge("n1");
        let within = fleet.pass(6_000.0).await;
        assert!(within.translation.budgets["rack"].held.is_empty());
        fleet.now = at("2026-12-01T12:00:11Z");
        let late = fleet.pass(6_000.0).await;
        let rack = &late.translation.budgets["rack"];
        assert_eq!(rack.held.len(), 1, "{:?}", rack.held);
        assert!(rack.held[0].contains("n2"), "{:?}", rack.held);
        let n2_may: f64 = before[1].iter().sum();
        let n1: f64 = fleet.written()[0].iter().sum();
        assert!(
            n1 + n2_may <= 6_000.0 + 1e-6,
            "n1 {n1} W, n2 may {n2_may} W"
        );
        fleet.acknowledge("n1");
        let absorbed = fleet.pass(6_000.0).await;
        assert!(
            possible(&absorbed) <= 6_000.0 + 1e-6,
            "{}",
            possible(&absorbed)
        );
    }

    #[tokio::test]
    async fn an_infeasible_budget_holds_only_its_subtree_at_its_floors() {
        let mut fleet = Fleet::new();
        let budgets = |rack_a_cap: f64| -> Vec<Arc<PowerBudget>> {
            vec![
                budget("row", json!({"capWatts": 20_000.0})),
                budget(
                    "rack-a",
                    json!({"capWatts": rack_a_cap, "parent": "row",
                           "nodeSelector": {"matchLabels": {"kubernetes.io/hostname": "n1"}}}),
                ),
                budget(
                    "rack-b",
                    json!({"capWatts": 8_000.0, "parent": "row",
                           "nodeSelector": {"matchLabels": {"kubernetes.io/hostname": "n2"}}}),
                ),
            ]
        };
        fleet.pass_under(&budgets(8_000.0)).await;
        fleet.acknowledge_all();
        fleet.pass_under(&budgets(8_000.0)).await;
        fleet.acknowledge_all();
        let n2_before: f64 = fleet.written()[1].iter().sum();
        let outcome = fleet.pass_under(&budgets(1_000.0)).await;
        assert_eq!(outcome.in_force.infeasible_budgets, ["rack-a"]);
        let written = fleet.written();
        assert!(written[0].iter().all(|&w| w == 200.0), "{:?}", written[0]);
        let n2: f64 = written[1].iter().sum();
        assert!(n2 > 8.0 * 200.0, "rack-b is still planned: {n2} W");
        assert_eq!(n2, n2_before, "rack-b keeps its plan");
    }
}
