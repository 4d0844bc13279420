//! One planning pass over a [`PlanStore`]: read what the store says about every node's agent,
//! translate the cluster, solve, build the plan, take the next rollout step and publish it when it
//! changes anything. The operator runs it against etcd with its watch caches, `kilowatt simulate` against
//! memory with its scenario; status and events are the caller's. IO only through the store it is given.

use std::collections::BTreeMap;

use k8s_openapi::jiff::Timestamp;
use kilowatt_crds::plan::Inventory;
use kilowatt_solver::{Plan, Problem, SolveError, SolveOptions};

use crate::plan::published::{self, NodePlan, PublishedPlan};
use crate::plan::rollout::{self, AgentView};
use crate::plan::status::measured_per_budget;
use crate::plan::translate::{PodWarning, Translation};
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
    T: FnOnce(&BTreeMap<String, Inventory>) -> Translation,
    U: Fn(&str) -> bool,
    W: Fn() -> bool,
{
    pub now: Timestamp,
    /// The cluster translated at `now`, given the inventories that live agents reported.
    pub translate: T,
    /// Whether a node's machine is known to be up (its Node is Ready).
    pub machine_up: U,
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
    /// Measured watts per budget, from the agents' power reports plus overheads.
    pub measured: BTreeMap<String, f64>,
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
                    reason: "InvalidProfile",
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

/// Runs one pass against `store`.
pub async fn run<S, T, U, W>(
    store: &S,
    inputs: PassInputs<'_, T, U, W>,
) -> Result<PassOutcome, PassError>
where
    S: PlanStore,
    T: FnOnce(&BTreeMap<String, Inventory>) -> Translation,
    U: Fn(&str) -> bool,
    W: Fn() -> bool,
{
    let now = inputs.now;
    let pass_started = std::time::Instant::now();
    let mut views = store.read_views().await?;
    for (node, view) in &mut views {
        view.machine_up = (inputs.machine_up)(node);
    }
    let mut translation = (inputs.translate)(&inventories(&views));

    let (loaded, read_plan) = match inputs.loaded {
        Some(loaded) => (loaded, None),
        None => {
            let loaded = store.load().await?;
            let read = loaded.plan.clone();
            (loaded, read)
        }
    };

    let problem = translation.problem.clone();
    let options = inputs.solve.clone();
    let started = std::time::Instant::now();
    let (plan, dropped) =
        tokio::task::spawn_blocking(move || solve_dropping_invalid(problem, &options)).await??;
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
    // The rollout step: lower what must go down, raise only where acknowledgements (or expired
    // leases) prove the room (docs/plan-protocol.md).
    let budgets_of = node_budgets(&translation);
    let caps: BTreeMap<String, f64> = candidate
        .budgets
        .iter()
        .map(|b| (b.name.clone(), b.planning_cap_watts))
        .collect();
    let step = rollout::next_step(&candidate.nodes, &views, &budgets_of, &caps);
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
            measured,
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
        measured,
        solve_seconds,
        pass_seconds: pass_started.elapsed().as_secs_f64(),
    })
}

