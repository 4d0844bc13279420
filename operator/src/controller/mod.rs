//! The operator process: checks the CRDs, starts the watch caches, the leader election and the HTTP
//! endpoints, and runs the reconcile loop — on a change (debounced), a timer or a schedule boundary,
//! the leader runs one pass: translate → solve → publish to etcd → status and events. Does Kubernetes,
//! etcd and network IO; the steps it calls (translate, solve, build, status) are pure.

pub mod caches;
pub mod deadline;
pub mod leader;
pub mod timing;

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kilowatt_crds::{PowerBudget, WorkloadProfile};
use kilowatt_plumbing::errors::error_chain;
use kilowatt_solver::SolveOptions;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::json;
use tokio::sync::{Notify, watch};
use tokio::task::{JoinHandle, JoinSet};

use crate::controller::caches::Caches;
use crate::controller::leader::{Elector, LeaseTiming};
use crate::controller::timing::{LoopTimers, PassOutcome, Timing};
use crate::http::agent_credentials::{CredentialIssuer, ServiceAccountRef};
use crate::http::metrics::Metrics;
use crate::http::web::{self, Feed, PassRecord};
use crate::http::{AppState, Health, WhatIfGate, router, serve_https};
use crate::measure::{PromqlSource, QueriedPod, QueryMeter};
use crate::plan::learning::job_profiles::job_profiles;
use crate::plan::learning::profile_status::profile_status;
use crate::plan::learning::{self, Learning};
use crate::plan::pass::{self, PassError, PassInputs};
use crate::plan::published::{KeyLayout, PublishedPlan};
use crate::plan::reasons;
use crate::plan::status::{EventNote, budget_events, budget_status, kube_time};
use crate::plan::translate::{NodeHold, PodWarning, ProfileSource, Translation};
use crate::signals::Poller;
use crate::signals::vtn::Ven;
use crate::store::etcd::{EtcdCredentials, EtcdPlanStore};
use crate::store::{Loaded, PlanStore, StoreError};
use kilowatt_agent_core::work::WindowTiming;
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
    /// TLS for `https://` etcd endpoints; `None` for plain ones.
    pub etcd_tls: Option<etcd_client::TlsOptions>,
    /// The agents' ServiceAccount: only its tokens earn etcd credentials.
    pub agent_service_account: ServiceAccountRef,
    pub listen: SocketAddr,
    /// The HTTPS listener, serving every endpoint; with it, agents' credentials are issued only there.
    pub https: Option<HttpsListener>,
    /// This replica's name in the Lease and in Events (the pod name in a cluster).
    pub identity: String,
    pub lease_namespace: String,
    pub lease_name: String,
    pub lease_duration: Duration,
    /// Changes arriving within this window are planned together.
    pub debounce: Duration,
    /// How long an agent may take to acknowledge a plan before its node is planned as not lowering.
    pub ack_timeout: Duration,
    /// How long before a schedule window opens its cap is planned.
    pub window_lead: Duration,
    /// A pass runs at least this often, changes or not.
    pub resync: Duration,
    pub solve: SolveOptions,
    /// The most one what-if question may take.
    pub whatif_time_limit: Duration,
    /// Which listeners authorize what-if callers.
    pub whatif_auth: WhatIfAuth,
    /// Where pods' `kilowatt.dev/work-query` counters are read; `None`: those pods are not measured.
    pub prometheus: Option<PrometheusQueries>,
}

/// How the operator reads work counters from Prometheus.
#[derive(Clone)]
pub struct PrometheusQueries {
    pub source: PromqlSource,
    /// How often every queried pod is sampled.
    pub sample_period: Duration,
    /// How the samples are cut into windows. NB: Prometheus holds a counter's value from its last
    /// scrape, so warm-up and window should be several scrape intervals long.
    pub windows: WindowTiming,
}

impl std::fmt::Debug for PrometheusQueries {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PrometheusQueries")
            .field("sample_period", &self.sample_period)
            .field("windows", &self.windows)
            .finish_non_exhaustive()
    }
}

/// The reconcile loop's side of the Prometheus sampler: it says which pods to query and takes the
/// windows.
struct QueriedWork {
    pods: watch::Sender<Vec<(String, QueriedPod)>>,
    meter: Arc<std::sync::Mutex<QueryMeter>>,
}

/// Samples every queried pod each `sample_period` into the meter, logging pods whose query starts
/// to fail (or fails differently) and those that read again. Runs until aborted.
async fn sample_work_queries(
    queries: PrometheusQueries,
    store: EtcdPlanStore,
    pods: watch::Receiver<Vec<(String, QueriedPod)>>,
    meter: Arc<std::sync::Mutex<QueryMeter>>,
) {
    let started = tokio::time::Instant::now();
    let mut tick = tokio::time::interval(queries.sample_period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing: BTreeMap<String, &'static str> = BTreeMap::new();
    loop {
        tick.tick().await;
        let pods = pods.borrow().clone();
        if pods.is_empty() {
            continue;
        }
        let views = match store.read_views().await {
            Ok(views) => views,
            Err(error) => {
                tracing::warn!(error = %error_chain(&error), "cannot read the agents' acknowledgements for the work queries; skipping this sample");
                continue;
            }
        };
        let samples: BTreeMap<String, _> = queries
            .source
            .samples(
                &pods
                    .iter()
                    .map(|(_, p)| (p.pod.as_str(), &p.queries))
                    .collect::<Vec<_>>(),
            )
            .await
            .into_iter()
            .collect();
        for (pod, sample) in &samples {
            match sample {
                Ok(_) => {
                    if failing.remove(pod).is_some() {
                        tracing::info!(%pod, "the pod's work query reads again");
                    }
                }
                Err(error) => {
                    if failing.insert(pod.clone(), error.category()) != Some(error.category()) {
                        tracing::warn!(%pod, error = %error_chain(error), "the pod's work query fails; its windows are discarded until it reads again");
                    }
                }
            }
        }
        failing.retain(|pod, _| samples.contains_key(pod));
        meter
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .observe(&pods, &views, &samples, started.elapsed());
    }
}

/// Which listeners ask what-if callers for a token and their access.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WhatIfAuth {
    /// Those bound to an address beyond loopback: on 127.0.0.1 only processes of this machine (or
    /// pod) can ask.
    BeyondLoopback,
    /// Every listener.
    Always,
}

impl WhatIfAuth {
    /// Whether a listener bound to `address` authorizes what-if callers.
    pub fn required_at(self, address: SocketAddr) -> bool {
        match self {
            WhatIfAuth::BeyondLoopback => !address.ip().is_loopback(),
            WhatIfAuth::Always => true,
        }
    }
}

/// Where and with what the operator serves HTTPS.
#[derive(Debug, Clone)]
pub struct HttpsListener {
    pub listen: SocketAddr,
    pub config: Arc<rustls::ServerConfig>,
}

/// Why the operator could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(
        "the CustomResourceDefinition {crd} is not installed in this cluster; install the CRDs with \
         `kubectl apply -f crds/` (or `kilowatt crdgen | kubectl apply -f -`) and start again"
    )]
    CrdsMissing { crd: &'static str },
    #[error("checking that the CRD {crd} is installed")]
    CrdCheck {
        crd: &'static str,
        source: kube::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("listening on {address}")]
    Listen {
        address: SocketAddr,
        source: std::io::Error,
    },
    #[error("registering metrics")]
    Metrics(#[from] prometheus::Error),
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
    /// Where the HTTPS endpoints listen, when configured.
    pub https_address: Option<SocketAddr>,
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

/// How long the operator waits for etcd at start before giving up: on a fresh install etcd's pod
/// becomes ready about as late as the operator's, and a replica that exits at once only restarts in
/// the kubelet's back-off. Kept under the liveness probe's 30 s.
const ETCD_START_PATIENCE: Duration = Duration::from_secs(20);

/// Connects to the plan etcd, trying again with a doubling pause (0.5 s up to 4 s) while it cannot
/// be reached, for up to [`ETCD_START_PATIENCE`].
async fn connect_store(
    options: &OperatorOptions,
    keys: &KeyLayout,
) -> Result<EtcdPlanStore, StoreError> {
    let started = tokio::time::Instant::now();
    let mut pause = Duration::from_millis(500);
    loop {
        let attempt = EtcdPlanStore::connect_as(
            &options.etcd_endpoints,
            keys.clone(),
            Duration::from_secs(5),
            options.etcd_credentials.as_ref(),
            options.etcd_tls.as_ref(),
        )
        .await;
        match attempt {
            Err(error @ StoreError::Connect { .. })
                if started.elapsed() + pause < ETCD_START_PATIENCE =>
            {
                tracing::warn!(error = %error, retry_in = ?pause, "etcd not reachable yet");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(4));
            }
            other => return other,
        }
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
    let store = connect_store(&options, &keys).await?;
    // Without an etcd user the operator cannot manage users (and etcd has no auth to enforce them).
    let metrics = Metrics::new()?;
    let credentials = options.etcd_credentials.as_ref().map(|_| {
        CredentialIssuer::new(
            client.clone(),
            store.etcd_client(),
            keys,
            options.agent_service_account.clone(),
            metrics.agent_credential_auth_writes.clone(),
        )
    });
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
    let https_listener = match &options.https {
        Some(https) => {
            let bound = tokio::net::TcpListener::bind(https.listen)
                .await
                .map_err(|source| StartError::Listen {
                    address: https.listen,
                    source,
                })?;
            let at = bound.local_addr().map_err(|source| StartError::Listen {
                address: https.listen,
                source,
            })?;
            Some((bound, at, https.config.clone()))
        }
        None => None,
    };
    let https_address = https_listener.as_ref().map(|(_, at, _)| *at);

    let mut tasks = JoinSet::new();
    let changed = Arc::new(Notify::new());
    let caches = caches::start(
        &client,
        &mut tasks,
        changed.clone(),
        &metrics,
        options.window_lead,
    );
    let queried = options.prometheus.clone().map(|queries| {
        let (pods, pods_rx) = watch::channel(Vec::new());
        let meter = Arc::new(std::sync::Mutex::new(QueryMeter::new(queries.windows)));
        tracing::info!(sample_period = ?queries.sample_period, windows = ?queries.windows, "reading work queries from Prometheus");
        tasks.spawn(sample_work_queries(
            queries,
            store.clone(),
            pods_rx,
            meter.clone(),
        ));
        QueriedWork { pods, meter }
    });
    let feed = Feed::new("operator");
    let state = AppState {
        feed: feed.clone(),
        metrics: metrics.clone(),
        store: store.clone(),
        caches: caches.clone(),
        health: health.clone(),
        solve_options: options.solve.clone(),
        resync: options.resync,
        credentials,
        credentials_only_at: None,
        whatif: WhatIfGate::new(client.clone(), options.whatif_time_limit),
        whatif_authorized: true,
    };
    if let Some((bound, at, config)) = https_listener {
        let whatif_authorized = options.whatif_auth.required_at(at);
        let app = router(AppState {
            whatif_authorized,
            ..state.clone()
        });
        tasks.spawn(serve_https(bound, config, app));
        tracing::info!(address = %at, whatif_authorized, "serving HTTPS");
    }
    let whatif_authorized = options.whatif_auth.required_at(address);
    tracing::info!(%address, whatif_authorized, "serving HTTP");
    let app = router(AppState {
        credentials_only_at: https_address,
        whatif_authorized,
        ..state
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
    tasks.spawn(
        Poller {
            client: client.clone(),
            namespace: options.lease_namespace.clone(),
            budgets: caches.budgets.clone(),
            board: caches.forecasts.clone(),
            changed: changed.clone(),
            fetches: metrics.signal_fetches.clone(),
        }
        .run(leader_rx.clone()),
    );
    tasks.spawn(
        Ven {
            client: client.clone(),
            namespace: options.lease_namespace.clone(),
            budgets: caches.budgets.clone(),
            board: caches.programs.clone(),
            changed: changed.clone(),
            requests: metrics.openadr_requests.clone(),
        }
        .run(leader_rx.clone()),
    );

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
        feed,
        health,
        recorder,
        options,
        loaded: None,
        solve_time: None,
        announced: HashSet::new(),
        awaiting_gpu_report: 0,
        learning: Learning::default(),
        queried,
    };
    let reconcile_loop = tokio::spawn(reconciler.run(changed, leader_rx, shutdown_rx));
    tracing::info!(%address, "operator started");
    Ok(RunningOperator {
        address,
        https_address,
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
    store: EtcdPlanStore,
    metrics: Metrics,
    /// What the live page shows.
    feed: Arc<Feed>,
    health: Arc<Health>,
    recorder: Recorder,
    options: OperatorOptions,
    /// What etcd held at the last read or write; `None` until read after becoming leader.
    loaded: Option<Loaded>,
    solve_time: Option<Time>,
    /// (pod uid, reason, message) already announced as an Event, so each is sent once.
    announced: HashSet<(String, String, String)>,
    /// Pods placed before their agents reported their GPUs, as last logged.
    awaiting_gpu_report: usize,
    /// Curves learned from the agents' work windows, and exploration sweeps; reset on losing the
    /// lease (a new leader goes on from what profiles' statuses kept).
    learning: Learning,
    /// With `--prometheus-url`: the sampler of pods' work queries.
    queried: Option<QueriedWork>,
}

/// What a successful pass tells the loop's timers.
struct PassFindings {
    raises_held_back: bool,
    awaiting_gpu_report: bool,
    next_transition: Option<Timestamp>,
    sweeping: bool,
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
        let started = tokio::time::Instant::now();
        let mut timers = LoopTimers::new(Timing {
            debounce: self.options.debounce,
            resync: self.options.resync,
            awaiting_report_recheck: pass::AWAITING_GPU_REPORT_RECHECK,
            sweep_recheck: learning::EXPLORE_CHECK,
        });
        let mut first = true;
        loop {
            if !first {
                let wait = timers.next_pass().saturating_sub(started.elapsed());
                tokio::select! {
                    _ = changed.notified() => {
                        timers.changed(started.elapsed());
                        continue;
                    }
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
                self.learning = Learning::default();
                if let Some(queried) = &self.queried {
                    queried.pods.send_replace(Vec::new());
                }
                timers.following();
                continue;
            }
            self.metrics.reconciles.inc();
            timers.pass_started(started.elapsed());
            match self.pass(&leader).await {
                Ok(findings) => {
                    // The pass read and (maybe) wrote etcd: it is reachable again.
                    self.health.etcd_ok.store(true, Ordering::Relaxed);
                    let now = started.elapsed();
                    timers.pass_finished(
                        now,
                        PassOutcome {
                            raises_held_back: findings.raises_held_back,
                            awaiting_gpu_report: findings.awaiting_gpu_report,
                            next_transition: findings.next_transition.map(|at| now + until(at)),
                            sweeping: findings.sweeping,
                        },
                    );
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
                    let retry_in = timers.pass_failed(started.elapsed());
                    tracing::warn!(error = %error_chain(&error), category, ?retry_in, "reconcile pass failed");
                }
            }
        }
    }

    /// One pass, as leader: the planning pass against etcd, then metrics, the page, status and events.
    async fn pass(&mut self, leader: &watch::Receiver<bool>) -> Result<PassFindings, PassError> {
        let now = Timestamp::now();
        let caches = self.caches.clone();
        let exploring = self.learn_before_pass(now).await?;
        let learner = &self.learning.learner;
        let outcome = pass::run(
            &self.store,
            PassInputs {
                now,
                translate: |inventories: &BTreeMap<String, Inventory>,
                            holds: &BTreeMap<String, NodeHold>| {
                    let mut translation = caches.translate(now, inventories, holds);
                    learning::plan_on_learned(&mut translation, learner, &exploring);
                    translation
                },
                ack_timeout: self.options.ack_timeout,
                machine: |node: &str| self.caches.machine(node),
                may_publish: || *leader.borrow(),
                loaded: self.loaded.take(),
                solve: &self.options.solve,
            },
        )
        .await?;
        self.metrics
            .solve_duration_seconds
            .observe(outcome.solve_seconds);
        self.loaded = Some(outcome.loaded.clone());
        self.learning.after_pass(
            &outcome.translation,
            &outcome.in_force,
            &self.caches.pods.state(),
        );
        self.learning.forget_gone(&outcome.translation);
        if let Some(queried) = &self.queried {
            queried.pods.send_replace(
                outcome
                    .translation
                    .nodes
                    .iter()
                    .flat_map(|(node, facts)| {
                        facts.work_queries.iter().map(|p| (node.clone(), p.clone()))
                    })
                    .collect(),
            );
        }
        self.metrics.observe_learning(&self.learning, &exploring);
        let findings = PassFindings {
            raises_held_back: !outcome.held_back.is_empty()
                || !outcome.awaiting_acknowledgement.is_empty(),
            awaiting_gpu_report: !outcome.translation.awaiting_gpu_report.is_empty(),
            next_transition: outcome.translation.next_transition,
            sweeping: self.learning.sweeping(),
        };
        let awaiting = &outcome.translation.awaiting_gpu_report;
        if !awaiting.is_empty() && awaiting.len() != self.awaiting_gpu_report {
            tracing::info!(pods = ?awaiting, "pods placed on free GPU slots until their nodes' agents report which GPUs they hold");
        }
        self.awaiting_gpu_report = awaiting.len();
        if let Some(plan) = &outcome.read_plan {
            tracing::info!(revision = plan.revision, "read the plan in force from etcd");
            self.solve_time = plan.solved_at.parse().ok().map(kube_time);
        }
        // NB: checked again after the publish: a replica that lost the Lease meanwhile writes no status.
        if !*leader.borrow() {
            return Ok(findings);
        }
        let in_force = &outcome.in_force;
        if let Some(published) = &outcome.published {
            if published.content_changed {
                self.solve_time = Some(kube_time(now));
            }
            self.metrics.plan_publishes.inc();
            tracing::info!(
                revision = published.revision,
                status = %in_force.status,
                method = %in_force.method,
                objective = in_force.objective,
                gap = in_force.gap,
                nodes_written = published.nodes_written,
                held_back = outcome.held_back.len(),
                "published plan"
            );
            if !outcome.held_back.is_empty() {
                tracing::info!(nodes = ?outcome.held_back, "raises held back until acknowledgements make room");
            }
        }
        let spec_caps = outcome.translation.spec_caps();
        self.metrics.observe_plan(
            in_force,
            &spec_caps,
            &outcome.measured,
            &outcome.possible,
            &outcome.translation.cap_enforced(),
        );
        self.metrics
            .observe_signals(&outcome.translation.budgets, now);
        self.feed.record(PassRecord {
            plan: in_force,
            spec_caps: &spec_caps,
            measured: &outcome.measured,
            solve_seconds: outcome.solve_seconds,
            now,
        });
        self.feed.set_curves(web::curve_views(
            &outcome.translation,
            Some(&self.learning.learner),
        ));

        self.write_budget_statuses(
            &outcome.translation,
            in_force,
            &outcome.measured,
            &outcome.possible,
        )
        .await?;
        self.write_profile_statuses(&outcome.translation).await?;
        self.create_job_profiles(&outcome.translation).await;
        self.announce_pods(&outcome.translation).await;
        Ok(findings)
    }

    /// Before a pass: restores curves that profiles' statuses kept and this process does not know,
    /// takes the windows of the agents' reports and advances the exploration sweeps. Returns each
    /// exploring workload's cap.
    async fn learn_before_pass(
        &mut self,
        now: Timestamp,
    ) -> Result<BTreeMap<String, f64>, PassError> {
        for profile in self.caches.profiles.state() {
            for measured in profile.status.iter().flat_map(|s| &s.measured) {
                self.learning.learner.restore(measured);
            }
        }
        let views = self.store.read_views().await?;
        let reports = views
            .iter()
            .filter_map(|(node, view)| Some((node.as_str(), view.power.as_ref()?)));
        if let Some(queried) = &self.queried {
            let (windows, rejected) = queried
                .meter
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .take();
            let recorded = self.learning.record_queried(&windows, &rejected, now);
            self.metrics.observe_windows(&recorded, 0);
        }
        let steps_before = self.learning.explorer.steps_total;
        let (recorded, exploring) = self.learning.before_pass(reports, now);
        self.metrics
            .observe_windows(&recorded, self.learning.explorer.steps_total - steps_before);
        for (workload, cap) in &exploring {
            tracing::debug!(
                workload,
                cap_watts = cap,
                "exploring the curve under a lowered cap"
            );
        }
        Ok(exploring)
    }

    async fn write_budget_statuses(
        &mut self,
        translation: &Translation,
        plan: &PublishedPlan,
        measured: &BTreeMap<String, f64>,
        possible: &BTreeMap<String, f64>,
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
                possible.get(&name).copied(),
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
        let now = kube_time(Timestamp::now());
        for profile in self.caches.profiles.state() {
            let next = profile_status(&profile, translation, &self.learning, &now);
            if profile.status.as_ref() == Some(&next) {
                continue;
            }
            let namespace = profile.namespace().unwrap_or_default();
            let api: Api<WorkloadProfile> = Api::namespaced(self.client.clone(), &namespace);
            apply_status(&api, "WorkloadProfile", &profile.name_any(), json!(next)).await?;
        }
        Ok(())
    }

    /// Creates a WorkloadProfile for each job on a default curve whose work counter reported, so that
    /// its learned curve outlives this leader (see [`job_profiles`]). A failed create is logged,
    /// counted and tried again next pass; it never fails the pass, whose plan is already published.
    async fn create_job_profiles(&mut self, translation: &Translation) {
        let found = job_profiles(
            translation,
            &self.learning,
            &self.caches.pods.state(),
            &self.caches.profiles.state(),
        );
        let params = PostParams {
            field_manager: Some(MANAGER.to_owned()),
            ..PostParams::default()
        };
        for profile in found.create {
            let namespace = profile.namespace().unwrap_or_default();
            let job = profile.spec.job.clone().unwrap_or_default();
            let api: Api<WorkloadProfile> = Api::namespaced(self.client.clone(), &namespace);
            match api.create(&params, &profile).await {
                Ok(created) => {
                    self.metrics.job_profiles_created.inc();
                    let name = created.name_any();
                    tracing::info!(
                        namespace,
                        name,
                        job,
                        "created a WorkloadProfile to keep the job's learned curve"
                    );
                    let note = EventNote {
                        warning: false,
                        reason: reasons::PROFILE_CREATED.to_owned(),
                        note: format!(
                            "made for job {job}, which ran on the built-in default curve: its \
                             status keeps the curve the job's work counter measures, and its pods \
                             are planned on it; it is deleted with the job"
                        ),
                    };
                    self.record(&note, &created.object_ref(&())).await;
                }
                // NB: made by an earlier pass that the watch has not delivered yet.
                Err(kube::Error::Api(response)) if response.code == 409 => {}
                Err(error) => {
                    self.metrics
                        .reconcile_errors
                        .with_label_values(&["kube"])
                        .inc();
                    tracing::warn!(namespace, job, error = %error_chain(&error), "could not create a WorkloadProfile for a learned job");
                }
            }
        }
        for (workload, name) in found.name_taken {
            let note = EventNote {
                warning: true,
                reason: reasons::PROFILE_NAME_TAKEN.to_owned(),
                note: format!(
                    "the WorkloadProfile {name} that would keep job {workload}'s learned curve \
                     exists and is not made for the job (spec.job); the curve is kept in memory \
                     only, and a new leader learns it again. Rename that profile, or set its \
                     spec.job, or name a profile in kilowatt.dev/profile"
                ),
            };
            let pods: Vec<(String, String, String)> = translation
                .pods
                .iter()
                .filter(|p| p.workload.as_deref() == Some(workload.as_str()))
                .filter_map(|p| Some((p.uid.clone()?, p.namespace.clone(), p.name.clone())))
                .collect();
            for (uid, namespace, name) in pods {
                self.announce(uid, namespace, name, note.clone()).await;
            }
        }
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
                    reason: reasons::DEFAULT_PROFILE.to_owned(),
                    note: format!(
                        "no WorkloadProfile is named by kilowatt.dev/profile, selects this pod or is \
                         made for its job; it is planned with the built-in {name} curve \
                         (illustrative, not a measurement). Once its work counter reports, the \
                         operator makes a profile for its job that keeps the learned curve"
                    ),
                });
            }
            for note in notes {
                self.announce(uid.clone(), pod.namespace.clone(), pod.name.clone(), note)
                    .await;
            }
        }
    }

    /// Records `note` on the pod, unless this operator run already did.
    async fn announce(&mut self, uid: String, namespace: String, name: String, note: EventNote) {
        if !self
            .announced
            .insert((uid.clone(), note.reason.clone(), note.note.clone()))
        {
            return;
        }
        let reference = ObjectReference {
            api_version: Some("v1".to_owned()),
            kind: Some("Pod".to_owned()),
            name: Some(name),
            namespace: Some(namespace),
            uid: Some(uid),
            ..ObjectReference::default()
        };
        self.record(&note, &reference).await;
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
