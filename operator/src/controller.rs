//! The operator process: checks the CRDs, starts the watch caches, the leader election and the HTTP
//! endpoints, and runs the reconcile loop — on a change (debounced), a timer or a schedule boundary,
//! the leader runs one pass: translate → solve → publish to etcd → status and events. Does Kubernetes,
//! etcd and network IO; the steps it calls (translate, solve, build, status) are pure.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kilowatt_crds::{PowerBudget, WorkloadProfile};
use kilowatt_solver::{Plan, Problem, SolveError, SolveOptions};
use kube::api::{ListParams, Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::json;
use tokio::sync::{Notify, watch};
use tokio::task::{JoinHandle, JoinSet};

use crate::agent_credentials::{CredentialIssuer, ServiceAccountRef};
use crate::caches::{self, Caches};
use crate::http::{AppState, Health, router};
use crate::leader::{Elector, LeaseTiming};
use crate::metrics::Metrics;
use crate::plan_store::{EtcdCredentials, Loaded, PlanStore, StoreError};
use crate::published::{self, KeyLayout, NodePlan, PublishedPlan};
use crate::rollout::{self, AgentView};
use crate::status::{EventNote, budget_events, budget_status, measured_per_budget};
use crate::translate::{PodWarning, ProfileSource, Translation};
use kilowatt_crds::plan::Inventory;

/// Field manager of the operator's status writes.
const MANAGER: &str = "kilowatt-operator";

/// How the operator runs.
#[derive(Debug, Clone)]
pub struct OperatorOptions {
    pub etcd_endpoints: Vec<String>,
    pub etcd_prefix: String,
    /// The etcd user (with the root role) to connect as; `None`: etcd without authentication, and no
    /// agent credentials are issued.
    pub etcd_credentials: Option<EtcdCredentials>,
    /// The agents' ServiceAccount: only its tokens earn etcd credentials.
    pub agent_service_account: ServiceAccountRef,
    pub listen: SocketAddr,
    /// This replica's name in the Lease and in Events (the pod name in a cluster).
    pub identity: String,
    pub lease_namespace: String,
    pub lease_name: String,
    pub lease_duration: Duration,
    /// Changes arriving within this window are planned together.
    pub debounce: Duration,
    /// A pass runs at least this often, changes or not.
    pub resync: Duration,
    pub solve: SolveOptions,
}

/// Why the operator could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(
        "the CustomResourceDefinition {crd} is not installed in this cluster; install the CRDs with \
         `kubectl apply -f crds/` (or `kilowatt crdgen | kubectl apply -f -`) and start again"
    )]
    CrdsMissing { crd: &'static str },
    #[error("checking that the CRD {crd} is installed: {source}")]
    CrdCheck {
        crd: &'static str,
        source: kube::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("listening on {address}: {source}")]
    Listen {
        address: SocketAddr,
        source: std::io::Error,
    },
    #[error("registering metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}

/// Why one pass failed; the loop retries with backoff.
#[derive(Debug, thiserror::Error)]
enum PassError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("solving the plan: {0}")]
    Solve(#[from] SolveError),
    #[error("the solver task failed: {0}")]
    SolverTask(#[from] tokio::task::JoinError),
    #[error("patching status of {kind} {name}: {source}")]
    Status {
        kind: &'static str,
        name: String,
        source: kube::Error,
    },
}

impl PassError {
    fn category(&self) -> &'static str {
        match self {
            PassError::Store(e) => e.category(),
            PassError::Solve(_) | PassError::SolverTask(_) => "solve",
            PassError::Status { .. } => "kube",
        }
    }
}

async fn check_crd<K>(client: &Client, crd: &'static str) -> Result<(), StartError>
where
    K: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let api: Api<K> = Api::all(client.clone());
    match api.list_metadata(&ListParams::default().limit(1)).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 404 => Err(StartError::CrdsMissing { crd }),
        Err(source) => Err(StartError::CrdCheck { crd, source }),
    }
}

/// A started operator.
pub struct RunningOperator {
    /// Where the HTTP endpoints listen.
    pub address: SocketAddr,
    shutdown: watch::Sender<bool>,
    reconcile_loop: JoinHandle<()>,
    elector: JoinHandle<()>,
    /// Watches and the HTTP server: stopped by aborting.
    background: JoinSet<()>,
}

impl RunningOperator {
    /// Stops gracefully: the loop finishes its pass and the lease is released, so another replica
    /// takes over without waiting for it to expire.
    pub async fn shutdown(mut self) {
        self.shutdown.send_replace(true);
        let graceful = async {
            let _ = (&mut self.reconcile_loop).await;
            let _ = (&mut self.elector).await;
        };
        if tokio::time::timeout(Duration::from_secs(10), graceful)
            .await
            .is_err()
        {
            tracing::warn!("shutdown took over 10 s; stopping anyway");
        }
        self.abort();
    }

    /// Stops at once, as a crash would: nothing is released, the lease expires on its own.
    pub fn abort(mut self) {
        self.reconcile_loop.abort();
        self.elector.abort();
        self.background.abort_all();
    }

    /// Resolves if the reconcile loop ends on its own (its caches lost their watches for good).
    pub async fn stopped(&mut self) {
        let _ = (&mut self.reconcile_loop).await;
    }
}

/// Starts the operator: checks the CRDs, connects to etcd, binds the HTTP port, starts watches,
/// election and the loop.
pub async fn start(
    client: Client,
    options: OperatorOptions,
) -> Result<RunningOperator, StartError> {
    check_crd::<PowerBudget>(&client, "powerbudgets.kilowatt.dev").await?;
    check_crd::<WorkloadProfile>(&client, "workloadprofiles.kilowatt.dev").await?;
    let keys = KeyLayout::new(&options.etcd_prefix);
    let store = PlanStore::connect_as(
        &options.etcd_endpoints,
        keys.clone(),
        Duration::from_secs(5),
        options.etcd_credentials.as_ref(),
    )
    .await?;
    // Without an etcd user the operator cannot manage users (and etcd has no auth to enforce them).
    let credentials = options.etcd_credentials.as_ref().map(|_| {
        CredentialIssuer::new(
            client.clone(),
            store.etcd_client(),
            keys,
            options.agent_service_account.clone(),
        )
    });
    let metrics = Metrics::new()?;
    let health = Arc::new(Health::default());
    health.beat();
    let listener = tokio::net::TcpListener::bind(options.listen)
        .await
        .map_err(|source| StartError::Listen {
            address: options.listen,
            source,
        })?;
    let address = listener.local_addr().map_err(|source| StartError::Listen {
        address: options.listen,
        source,
    })?;

    let mut tasks = JoinSet::new();
    let changed = Arc::new(Notify::new());
    let caches = caches::start(&client, &mut tasks, changed.clone(), &metrics);
    let app = router(AppState {
        metrics: metrics.clone(),
        store: store.clone(),
        caches: caches.clone(),
        health: health.clone(),
        solve_options: options.solve.clone(),
        resync: options.resync,
        credentials,
    });
    tasks.spawn(async move {
        if let Err(error) = axum::serve(listener, app).await {
            tracing::error!(%error, "HTTP server stopped");
        }
    });

    let (shutdown, shutdown_rx) = watch::channel(false);
    let (leader_tx, leader_rx) = watch::channel(false);
    let elector = Elector::new(
        client.clone(),
        &options.lease_namespace,
        &options.lease_name,
        &options.identity,
        LeaseTiming::from_duration(options.lease_duration),
    );
    let elector = tokio::spawn(elector.run(leader_tx, shutdown_rx.clone()));

    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: MANAGER.to_owned(),
            instance: Some(options.identity.clone()),
        },
    );
    let reconciler = Reconciler {
        client,
        caches,
        store,
        metrics,
        health,
        recorder,
        options,
        loaded: None,
        solve_time: None,
        announced: HashSet::new(),
        next_transition: None,
        held_back: 0,
    };
    let reconcile_loop = tokio::spawn(reconciler.run(changed, leader_rx, shutdown_rx));
    tracing::info!(%address, "operator started");
    Ok(RunningOperator {
        address,
        shutdown,
        reconcile_loop,
        elector,
        background: tasks,
    })
}

/// The reconcile loop's state.
struct Reconciler {
    client: Client,
    caches: Caches,
    store: PlanStore,
    metrics: Metrics,
    health: Arc<Health>,
    recorder: Recorder,
    options: OperatorOptions,
    /// What etcd held at the last read or write; `None` until read after becoming leader.
    loaded: Option<Loaded>,
    solve_time: Option<Time>,
    /// (pod uid, reason, message) already announced as an Event, so each is sent once.
    announced: HashSet<(String, String, String)>,
    next_transition: Option<Timestamp>,
    /// Nodes whose raise waits for acknowledgements; the loop checks again soon while any do.
    held_back: usize,
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

fn until(deadline: Timestamp) -> Duration {
    let seconds = (deadline.as_millisecond() - Timestamp::now().as_millisecond()).max(0);
    Duration::from_millis(u64::try_from(seconds).unwrap_or(0))
}

impl Reconciler {
    async fn run(
        mut self,
        changed: Arc<Notify>,
        mut leader: watch::Receiver<bool>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        tokio::select! {
            ready = self.caches.wait_until_ready() => if ready.is_err() { return },
            _ = shutdown.changed() => return,
        }
        self.health.caches_synced.store(true, Ordering::Relaxed);
        self.health.etcd_ok.store(true, Ordering::Relaxed);
        let mut backoff = Duration::from_millis(500);
        let mut retry_in: Option<Duration> = None;
        let mut first = true;
        loop {
            let transition = self
                .next_transition
                .map(|t| until(t) + Duration::from_millis(50));
            let wait = [Some(self.options.resync), transition, retry_in]
                .into_iter()
                .flatten()
                .min()
                .unwrap_or(self.options.resync);
            if !first {
                tokio::select! {
                    _ = changed.notified() => tokio::time::sleep(self.options.debounce).await,
                    _ = tokio::time::sleep(wait) => {}
                    result = leader.changed() => if result.is_err() { break },
                    _ = shutdown.changed() => break,
                }
            }
            first = false;
            self.health.beat();
            let is_leader = *leader.borrow_and_update();
            self.metrics.leader.set(i64::from(is_leader));
            if !is_leader {
                // A replica that becomes leader reads etcd again before it publishes anything.
                self.loaded = None;
                self.next_transition = None;
                retry_in = None;
                continue;
            }
            self.metrics.reconciles.inc();
            match self.pass(&leader).await {
                Ok(()) => {
                    // The pass read and (maybe) wrote etcd: it is reachable again.
                    self.health.etcd_ok.store(true, Ordering::Relaxed);
                    backoff = Duration::from_millis(500);
                    // A rollout waiting for acknowledgements is looked at again shortly.
                    retry_in = (self.held_back > 0)
                        .then_some(self.options.debounce.max(Duration::from_millis(200)));
                }
                Err(error) => {
                    let category = error.category();
                    self.metrics
                        .reconcile_errors
                        .with_label_values(&[category])
                        .inc();
                    if matches!(error, PassError::Store(ref e) if e.category() == "etcd") {
                        self.health.etcd_ok.store(false, Ordering::Relaxed);
                    }
                    if matches!(error, PassError::Store(StoreError::Fenced)) {
                        self.loaded = None;
                    }
                    tracing::warn!(%error, category, retry_in = ?backoff, "reconcile pass failed");
                    retry_in = Some(backoff);
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                }
            }
        }
    }

    /// One pass, as leader.
    async fn pass(&mut self, leader: &watch::Receiver<bool>) -> Result<(), PassError> {
        let now = Timestamp::now();
        // What etcd says about every node's agent: plans written, acknowledgements, inventories.
        let mut views = self.store.read_views().await?;
        for (node, view) in &mut views {
            view.machine_up = self.caches.machine_up(node);
        }
        let inventories = inventories(&views);
        let mut translation = self.caches.translate(now, &inventories);
        self.next_transition = translation.next_transition;

        let loaded = match self.loaded.clone() {
            Some(loaded) => loaded,
            None => {
                let loaded = self.store.load().await?;
                if let Some(plan) = &loaded.plan {
                    tracing::info!(revision = plan.revision, "read the plan in force from etcd");
                    self.solve_time = plan.solved_at.parse().ok().map(kube_time);
                }
                self.loaded = Some(loaded.clone());
                loaded
            }
        };

        let problem = translation.problem.clone();
        let options = self.options.solve.clone();
        let started = std::time::Instant::now();
        let (plan, dropped) =
            tokio::task::spawn_blocking(move || solve_dropping_invalid(problem, &options))
                .await??;
        self.metrics
            .solve_duration_seconds
            .observe(started.elapsed().as_secs_f64());
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
        self.held_back = step.held_back.len();
        let unchanged = loaded
            .plan
            .as_ref()
            .is_some_and(|current| current.same_content(&candidate));
        let in_force = if unchanged && step.writes.is_empty() && !stale_nodes {
            loaded.plan.clone().unwrap_or(candidate)
        } else {
            // NB: checked right before writing; the etcd fence covers the rest of the race.
            if !*leader.borrow() {
                return Ok(());
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
            let loaded = self
                .store
                .publish(&desired, &writes, &written, &loaded)
                .await?;
            self.loaded = Some(loaded);
            if !unchanged {
                self.solve_time = Some(kube_time(now));
            }
            self.metrics.plan_publishes.inc();
            tracing::info!(
                revision,
                status = %desired.status,
                method = %desired.method,
                objective = desired.objective,
                gap = desired.gap,
                nodes_written = writes.len(),
                held_back = step.held_back.len(),
                "published plan"
            );
            if !step.held_back.is_empty() {
                tracing::info!(nodes = ?step.held_back, "raises held back until acknowledgements make room");
            }
            desired
        };
        let spec_caps: Vec<(String, f64)> = translation
            .budgets
            .iter()
            .map(|(name, facts)| (name.clone(), facts.spec_cap_watts))
            .collect();
        self.metrics.observe_plan(&in_force, &spec_caps, &measured);

        self.write_budget_statuses(&translation, &in_force, &measured)
            .await?;
        self.write_profile_statuses(&translation).await?;
        self.announce_pods(&translation).await;
        Ok(())
    }

    async fn write_budget_statuses(
        &mut self,
        translation: &Translation,
        plan: &PublishedPlan,
        measured: &BTreeMap<String, f64>,
    ) -> Result<(), PassError> {
        let api: Api<PowerBudget> = Api::all(self.client.clone());
        let now = kube_time(Timestamp::now());
        for budget in self.caches.budgets.state() {
            let name = budget.name_any();
            let Some(facts) = translation.budgets.get(&name) else {
                continue;
            };
            let previous = budget.status.as_ref();
            let next = budget_status(
                &name,
                facts,
                Some(plan),
                self.solve_time.as_ref(),
                measured.get(&name).copied(),
                previous,
                &now,
            );
            if previous == Some(&next) {
                continue;
            }
            apply_status(&api, "PowerBudget", &name, json!(next)).await?;
            let reference = budget.object_ref(&());
            for note in budget_events(previous, &next, &facts.effective.open_windows) {
                self.record(&note, &reference).await;
            }
        }
        Ok(())
    }

    async fn write_profile_statuses(&mut self, translation: &Translation) -> Result<(), PassError> {
        for profile in self.caches.profiles.state() {
            let namespace = profile.namespace().unwrap_or_default();
            let name = profile.name_any();
            let pods = translation
                .profile_pods
                .get(&(namespace.clone(), name.clone()))
                .copied()
                .unwrap_or(0);
            if profile.status.as_ref().and_then(|s| s.pods) == Some(pods) {
                continue;
            }
            let api: Api<WorkloadProfile> = Api::namespaced(self.client.clone(), &namespace);
            apply_status(&api, "WorkloadProfile", &name, json!({ "pods": pods })).await?;
        }
        Ok(())
    }

    /// Warning events for pods with problems and a Normal event for pods on a default profile, each
    /// once per operator run.
    async fn announce_pods(&mut self, translation: &Translation) {
        let present: HashSet<&str> = translation
            .pods
            .iter()
            .filter_map(|p| p.uid.as_deref())
            .collect();
        self.announced
            .retain(|(uid, _, _)| present.contains(uid.as_str()));
        for pod in &translation.pods {
            let Some(uid) = pod.uid.clone() else { continue };
            let mut notes: Vec<EventNote> = pod
                .warnings
                .iter()
                .map(|PodWarning { reason, message }| EventNote {
                    warning: true,
                    reason: (*reason).to_owned(),
                    note: message.clone(),
                })
                .collect();
            if let (Some(ProfileSource::Default(name)), Some(_)) = (&pod.profile, &pod.workload) {
                notes.push(EventNote {
                    warning: false,
                    reason: "DefaultProfile".to_owned(),
                    note: format!(
                        "no WorkloadProfile is named by kilowatt.dev/profile or selects this pod; it is \
                         planned with the built-in {name} curve (illustrative, not a measurement)"
                    ),
                });
            }
            let reference = ObjectReference {
                api_version: Some("v1".to_owned()),
                kind: Some("Pod".to_owned()),
                name: Some(pod.name.clone()),
                namespace: Some(pod.namespace.clone()),
                uid: Some(uid.clone()),
                ..ObjectReference::default()
            };
            for note in notes {
                if self
                    .announced
                    .insert((uid.clone(), note.reason.clone(), note.note.clone()))
                {
                    self.record(&note, &reference).await;
                }
            }
        }
    }

    async fn record(&self, note: &EventNote, reference: &ObjectReference) {
        let event = Event {
            type_: if note.warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: note.reason.clone(),
            note: Some(note.note.chars().take(1000).collect()),
            action: "Plan".to_owned(),
            secondary: None,
        };
        if let Err(error) = self.recorder.publish(&event, reference).await {
            self.metrics
                .reconcile_errors
                .with_label_values(&["event"])
                .inc();
            tracing::warn!(%error, reason = %note.reason, "could not record an event");
        }
    }
}

/// Writes `status` of one of our custom resources with server-side apply, as the operator's field
/// manager, so fields it stops setting disappear.
async fn apply_status<K>(
    api: &Api<K>,
    kind: &'static str,
    name: &str,
    status: serde_json::Value,
) -> Result<(), PassError>
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let patch = json!({"apiVersion": "kilowatt.dev/v1alpha1", "kind": kind, "status": status});
    api.patch_status(
        name,
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(patch),
    )
    .await
    .map(|_| ())
    .map_err(|source| PassError::Status {
        kind,
        name: name.to_owned(),
        source,
    })
}

/// The GPU inventories live agents reported, by node.
pub fn inventories(views: &BTreeMap<String, AgentView>) -> BTreeMap<String, Inventory> {
    views
        .iter()
        .filter_map(|(node, view)| Some((node.clone(), view.inventory.clone()?)))
        .collect()
}

/// `t` as Kubernetes stores a `metav1.Time`: whole seconds. A status holding sub-second times would
/// never equal the one read back, and every pass would patch it again.
fn kube_time(t: Timestamp) -> Time {
    Time(Timestamp::from_second(t.as_second()).unwrap_or(t))
}

/// Each planned node's budgets: its chain, or the union of the chains of every budget selecting it when
/// it is in conflict (it counts in each).
fn node_budgets(translation: &Translation) -> BTreeMap<String, Vec<String>> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_times_round_trip_through_the_api_server_unchanged() {
        let now: Timestamp = "2026-11-28T23:10:15.489793Z".parse().expect("time");
        let written = kube_time(now);
        let stored: Time = serde_json::from_value(serde_json::to_value(&written).expect("encode"))
            .expect("decode");
        assert_eq!(stored, written);
        assert_eq!(written.0.to_string(), "2026-11-28T23:10:15Z");
    }
}
