//! The agent process around the protocol state machine: connects to etcd (as the node's own etcd user
//! when the operator issues credentials), registers the node's GPU inventory under an etcd lease and
//! keeps it alive, watches the node's plan key, runs the machine's commands on the GPU backend (reading
//! limits back after every batch), writes acknowledgements, samples telemetry, scrapes the work counters
//! the plan names into the power reports' work windows, and keeps ticking — and so fencing — while etcd
//! is unreachable. Does etcd, GPU and network IO.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use etcd_client::{
    Client, ConnectOptions, EventType, LeaseKeepAliveStream, LeaseKeeper, PutOptions, WatchOptions,
    WatchStream,
};
use kilowatt_crds::plan::{
    Acknowledgement, AgentCredentials, Inventory, KeyLayout, NodePlan, PowerReport,
};
use tokio::sync::mpsc;
use tokio::time::Instant;

use kilowatt_agent_core::backoff::{Backoff, Jitter};
use kilowatt_agent_core::defaults::{self, POD_REFRESH};
use kilowatt_agent_core::driver::{self, PodName, PowerPeriod};
use kilowatt_agent_core::gpu::{GpuBackend, GpuError, GpuInfo};
use kilowatt_agent_core::protocol::{Agent, Command, Event};
use kilowatt_agent_core::telemetry::Telemetry;
use kilowatt_agent_core::work::WindowTiming;

use kilowatt_plumbing::errors::error_chain;

use crate::credentials::{self, CredentialsError, CredentialsSource};
use crate::pod_resources;
use crate::scrape::{self, WorkScrapes};

/// How the agent runs.
#[derive(Debug, Clone)]
pub struct AgentOptions {
    /// This node's name, as in the plan keys.
    pub node: String,
    pub etcd_endpoints: Vec<String>,
    pub etcd_prefix: String,
    /// TLS for `https://` etcd endpoints (the CA of etcd's certificate, and a client identity when etcd
    /// asks for one); `None` for plain endpoints.
    pub etcd_tls: Option<etcd_client::TlsOptions>,
    /// Where to get this node's etcd credentials; `None`: connect without authentication. They are
    /// asked for once and kept across etcd sessions, and asked for again only when etcd refuses them.
    pub credentials: Option<CredentialsSource>,
    /// TTL of the etcd lease the inventory is bound to (the agent's liveness).
    pub lease_ttl: Duration,
    /// Fraction of the TTL without a renewal after which the agent lowers every GPU to its floor.
    pub fence_fraction: f64,
    /// How often limits are read back to catch drift.
    pub drift_check: Duration,
    /// How often telemetry is sampled (and the protocol ticks).
    pub sample_period: Duration,
    /// How often the node's measured GPU power is written to etcd for the operator.
    pub report_period: Duration,
    /// How pods' work-counter windows are cut.
    pub work_windows: WindowTiming,
    /// The kubelet's pod-resources socket, to attribute GPU power and energy to pods; `None`: no
    /// per-pod metrics.
    pub pod_resources_socket: Option<PathBuf>,
    /// The extended resource name GPUs are requested by, e.g. `nvidia.com/gpu`.
    pub gpu_resource_name: String,
}

/// The kernel's boot ID: a random UUID drawn at every boot.
pub const BOOT_ID_FILE: &str = "/proc/sys/kernel/random/boot_id";

/// Why the machine's boot ID could not be read.
#[derive(Debug, thiserror::Error)]
pub enum BootIdError {
    #[error("reading the boot ID file {}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the boot ID file {} is empty", path.display())]
    Empty { path: PathBuf },
}

/// The boot ID in `path`, trimmed. NB: a small file in procfs: reading it does not block the runtime.
pub fn read_boot_id(path: &std::path::Path) -> Result<String, BootIdError> {
    let text = std::fs::read_to_string(path).map_err(|source| BootIdError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let id = text.trim();
    if id.is_empty() {
        return Err(BootIdError::Empty {
            path: path.to_path_buf(),
        });
    }
    Ok(id.to_owned())
}

/// Why the agent stopped.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("reading the GPU inventory: {0}")]
    Inventory(GpuError),
    #[error("the GPU task failed")]
    GpuTask(#[from] tokio::task::JoinError),
}

/// A live connection to etcd: the client and lease for writes; a task keeps the lease alive and
/// watches the plan, reporting through the runner's channel. Dropping the session stops the task.
struct Session {
    /// Tags the task's events, so that those still queued from a dropped session are told apart.
    id: SessionId,
    client: Client,
    lease: i64,
    task: tokio::task::JoinHandle<()>,
}

/// Numbers the sessions of one agent process, from 1.
type SessionId = u64;

impl Drop for Session {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What the session task reports.
#[derive(Debug)]
enum SessionEvent {
    Renewed,
    Plan(Option<NodePlan>),
    Lost(String),
}

/// A [`SessionEvent`] and the session that sent it.
#[derive(Debug)]
struct Tagged {
    session: SessionId,
    event: SessionEvent,
}

/// The event, if its session is the live one. NB: every session shares the runner's channel, and an
/// aborted task's events stay queued: handled after the new session's fresh read, a dropped session's
/// plan would be older than the one just read, and its `Lost` would end the new session.
fn from_live_session(tagged: Tagged, live: Option<SessionId>) -> Option<SessionEvent> {
    (live == Some(tagged.session)).then_some(tagged.event)
}

/// Keeps the lease alive every `period` and forwards renewals and plan changes until something fails
/// or no renewal came for a whole `ttl` (the lease is gone; a cut link may never make a stream fail).
async fn session_task(
    mut keeper: LeaseKeeper,
    mut keep_alive: LeaseKeepAliveStream,
    mut watch: WatchStream,
    period: Duration,
    ttl: Duration,
    session: SessionId,
    events: mpsc::Sender<Tagged>,
) {
    let send = |event| events.send(Tagged { session, event });
    let mut renew = tokio::time::interval(period);
    let mut lease_gone_at = Instant::now() + ttl;
    let lost = loop {
        tokio::select! {
            () = tokio::time::sleep_until(lease_gone_at) => {
                break format!("no lease renewal for {ttl:?}");
            }
            _ = renew.tick() => {
                if let Err(error) = keeper.keep_alive().await {
                    break format!("lease keep-alive failed: {error}");
                }
            }
            message = keep_alive.message() => match message {
                Ok(Some(response)) if response.ttl() > 0 => {
                    lease_gone_at = Instant::now() + ttl;
                    if send(SessionEvent::Renewed).await.is_err() {
                        return;
                    }
                }
                Ok(Some(_)) => break "the lease expired".to_owned(),
                Ok(None) => break "the keep-alive stream ended".to_owned(),
                Err(error) => break format!("keep-alive stream failed: {error}"),
            },
            message = watch.message() => match message {
                Ok(Some(response)) => {
                    for event in response.events() {
                        let plan = match event.event_type() {
                            EventType::Put => event
                                .kv()
                                .and_then(|kv| serde_json::from_slice::<NodePlan>(kv.value()).ok()),
                            EventType::Delete => None,
                        };
                        if send(SessionEvent::Plan(plan)).await.is_err() {
                            return;
                        }
                    }
                }
                Ok(None) => break "the plan watch ended".to_owned(),
                Err(error) => break format!("the plan watch failed: {error}"),
            },
        }
    };
    let _ = send(SessionEvent::Lost(lost)).await;
}

/// Why a session could not be opened or ended.
#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error("{step}")]
    Etcd {
        step: &'static str,
        source: etcd_client::Error,
    },
    #[error("getting this node's etcd credentials")]
    Credentials(#[from] CredentialsError),
}

/// How much longer than its backoff an agent waits after a refusal (of its token by the operator, of
/// its credentials by etcd): that repeats until someone fixes the token or the configuration, and every
/// try costs the operator a TokenReview.
const REFUSED_RETRY: Duration = Duration::from_secs(10);

impl SessionError {
    /// How long to wait before trying again, given the jittered backoff `backoff`.
    fn retry_after(&self, backoff: Duration) -> Duration {
        if self.is_refusal() {
            REFUSED_RETRY + backoff
        } else {
            backoff
        }
    }

    fn is_refusal(&self) -> bool {
        match self {
            SessionError::Credentials(e) => e.is_refusal(),
            SessionError::Etcd { source, .. } => refused_credentials(source),
        }
    }
}

fn step(step: &'static str) -> impl FnOnce(etcd_client::Error) -> SessionError {
    move |source| SessionError::Etcd { step, source }
}

/// Whether etcd refused the session's credentials themselves (the operator issued this node a new
/// password since, or its role lost a key): only fresh credentials can cure that. An etcd auth token
/// that expired or died with an etcd restart ("invalid auth token") is not such a refusal: the client
/// authenticates again with the same password.
fn refused_credentials(error: &etcd_client::Error) -> bool {
    match error {
        etcd_client::Error::GRpcStatus(status) => {
            status.code() == tonic::Code::PermissionDenied
                || status.message().contains("authentication failed")
        }
        _ => false,
    }
}

/// A seed of this agent's own for the reconnect jitter: std's `RandomState` is seeded randomly per
/// process, so agents started together still draw apart.
fn jitter_seed(node: &str) -> u64 {
    use std::hash::BuildHasher;
    std::collections::hash_map::RandomState::new().hash_one((node, std::process::id()))
}

type SharedBackend = Arc<Mutex<Box<dyn GpuBackend>>>;

/// Runs `f` on the backend on a blocking thread (NVML calls block).
async fn with_backend<T: Send + 'static>(
    backend: &SharedBackend,
    f: impl FnOnce(&mut dyn GpuBackend) -> T + Send + 'static,
) -> Result<T, tokio::task::JoinError> {
    let backend = backend.clone();
    tokio::task::spawn_blocking(move || {
        let mut guard = backend
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(guard.as_mut())
    })
    .await
}

/// Opens an etcd session with the credentials in `kept`, or fresh ones (kept there) when it holds
/// none; a caller drops them when etcd refuses them.
async fn open_session(
    options: &AgentOptions,
    kept: &mut Option<AgentCredentials>,
    keys: &KeyLayout,
    inventory: &Inventory,
    id: SessionId,
    events: mpsc::Sender<Tagged>,
) -> Result<(Session, Option<NodePlan>), SessionError> {
    let mut connect = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(2))
        .with_timeout(Duration::from_secs(2));
    if let Some(tls) = &options.etcd_tls {
        connect = connect.with_tls(tls.clone());
    }
    if let Some(source) = &options.credentials {
        let issued = match kept.take() {
            Some(issued) => issued,
            None => credentials::fetch(source, &options.node, Duration::from_secs(5)).await?,
        };
        connect = connect
            .with_user(issued.user.clone(), issued.password.clone())
            .with_auto_token_refresh(true);
        *kept = Some(issued);
    }
    let mut client = Client::connect(&options.etcd_endpoints, Some(connect))
        .await
        .map_err(step("connecting to etcd"))?;
    let ttl = i64::try_from(options.lease_ttl.as_secs().max(1)).unwrap_or(i64::MAX);
    let lease = client
        .lease_grant(ttl, None)
        .await
        .map_err(step("granting the lease"))?
        .id();
    let encoded = serde_json::to_vec(inventory).unwrap_or_default();
    client
        .put(
            keys.node_inventory(&options.node),
            encoded,
            Some(PutOptions::new().with_lease(lease)),
        )
        .await
        .map_err(step("registering the inventory"))?;
    let (keeper, keep_alive) = client
        .lease_keep_alive(lease)
        .await
        .map_err(step("starting lease keep-alive"))?;
    let plan_key = keys.node_plan(&options.node);
    let current = client
        .get(plan_key.as_str(), None)
        .await
        .map_err(step("reading the plan"))?;
    let revision = current.header().map_or(0, |h| h.revision());
    let plan = current
        .kvs()
        .first()
        .and_then(|kv| serde_json::from_slice::<NodePlan>(kv.value()).ok());
    let watch = client
        .watch(
            plan_key.as_str(),
            Some(WatchOptions::new().with_start_revision(revision + 1)),
        )
        .await
        .map_err(step("watching the plan"))?;
    let task = tokio::spawn(session_task(
        keeper,
        keep_alive,
        watch,
        options.lease_ttl / 3,
        options.lease_ttl,
        id,
        events,
    ));
    Ok((
        Session {
            id,
            client,
            lease,
            task,
        },
        plan,
    ))
}

/// The agent's running state.
struct Runner {
    options: AgentOptions,
    keys: KeyLayout,
    backend: SharedBackend,
    gpus: Vec<GpuInfo>,
    agent: Agent,
    telemetry: Telemetry,
    started: Instant,
    power: PowerPeriod,
    /// The backend's name, for the inventory.
    backend_name: &'static str,
    /// Pods holding each GPU, by UUID, as the kubelet last said.
    pods: BTreeMap<String, Vec<PodName>>,
    /// Whether the kubelet ever answered (until then the inventory reports no pods).
    pods_known: bool,
    /// Whether etcd may hold an older answer than `pods` (a registration failed): retried at the next
    /// ask.
    pods_unregistered: bool,
    /// Whether the last ask to the kubelet failed (to log changes, not every failure).
    pods_failing: bool,
    /// The node's etcd credentials, kept across sessions until etcd refuses them.
    credentials: Option<AgentCredentials>,
    /// The work counters of the plan followed, scraped at every sample.
    work: WorkScrapes,
}

impl Runner {
    /// The inventory to register: the GPUs and, once the kubelet answered, which pods hold them.
    fn inventory(&self) -> Inventory {
        driver::inventory(
            self.backend_name,
            &self.gpus,
            self.pods_known.then_some(&self.pods),
        )
    }

    /// Asks the kubelet which pods hold the GPUs; on failure keeps the last answer. A changed answer is
    /// registered again, so that the operator plans each pod's limit on the GPUs it really holds.
    async fn refresh_pods(&mut self, socket: &std::path::Path, session: &mut Option<Session>) {
        let asked = pod_resources::list_gpu_assignments(
            socket,
            &self.options.gpu_resource_name,
            Duration::from_secs(2),
        )
        .await;
        match asked {
            Ok(assignments) => {
                if self.pods_failing {
                    tracing::info!("the kubelet's pod-resources API answers again");
                }
                self.pods_failing = false;
                let pods = pod_resources::pods_by_gpu(&assignments);
                if !self.pods_known || pods != self.pods || self.pods_unregistered {
                    self.pods = pods;
                    self.pods_known = true;
                    self.register_inventory(session).await;
                }
            }
            Err(error) => {
                self.telemetry.pod_resources_error(error.category());
                if !self.pods_failing {
                    tracing::warn!(error = %error_chain(&error), "cannot tell which pods hold the GPUs; per-pod metrics keep the last answer");
                }
                self.pods_failing = true;
            }
        }
    }

    fn now(&self) -> Duration {
        self.started.elapsed()
    }

    /// Feeds `event` to the machine and runs what it asks for; after GPU changes, reads the limits back
    /// and runs the answer to that once (a GPU that refuses is retried at the next drift check).
    async fn feed(
        &mut self,
        event: Event,
        session: &mut Option<Session>,
    ) -> Result<(), AgentError> {
        let arrived = match &event {
            Event::PlanChanged(plan) | Event::Registered(plan) => {
                Some(plan.as_ref().map(|p| (p.revision, p.work_counters.clone())))
            }
            _ => None,
        };
        let commands = self.agent.handle(event, self.now());
        // The counters of the plan the machine now follows; a stale plan it ignored names none.
        if let Some(arrived) = arrived
            && self.agent.revision() == arrived.as_ref().map(|(revision, _)| *revision)
        {
            self.work
                .follow(arrived.map(|(_, counters)| counters).unwrap_or_default());
        }
        if let Some(set) = self.run(commands, session).await? {
            let limits = self.read_back_settled(&set).await?;
            let follow_up = self.agent.handle(Event::ReadBack(limits), self.now());
            self.run(follow_up, session).await?;
        }
        self.telemetry.observe_agent(&self.agent);
        Ok(())
    }

    /// Reads every limit back, polling briefly until the GPUs enforce the limits just `set`: a real
    /// GPU applies a new limit some milliseconds after NVML accepted it (measured on an H200, see
    /// BENCHMARKS.md), and acknowledging only after a drift check would hold rollouts for seconds.
    async fn read_back_settled(&self, set: &[(u32, f64)]) -> Result<Vec<f64>, AgentError> {
        const POLLS: u32 = 20;
        const POLL_EVERY: Duration = Duration::from_millis(50);
        let count = self.gpus.len();
        let mut limits = Vec::new();
        for poll in 0..POLLS {
            if poll > 0 {
                tokio::time::sleep(POLL_EVERY).await;
            }
            limits = with_backend(&self.backend, move |b| driver::read_limits(b, count)).await?;
            let settled = set.iter().all(|&(index, watts)| {
                limits
                    .get(index as usize)
                    .is_some_and(|enforced| (enforced - watts).abs() < 0.5)
            });
            if settled {
                break;
            }
        }
        Ok(limits)
    }

    /// Runs commands in order on one blocking thread, then writes the acknowledgements among them;
    /// returns the limits set when any command touched a GPU.
    async fn run(
        &mut self,
        commands: Vec<Command>,
        session: &mut Option<Session>,
    ) -> Result<Option<Vec<(u32, f64)>>, AgentError> {
        if commands.is_empty() {
            return Ok(None);
        }
        let executed = with_backend(&self.backend, move |b| driver::execute(b, commands)).await?;
        for error in &executed.errors {
            self.telemetry.gpu_error(error.category());
            tracing::warn!(%error, "GPU command failed");
        }
        for ack in &executed.acknowledgements {
            self.acknowledge(ack, session).await;
        }
        Ok(executed.touched.then_some(executed.set))
    }

    /// Puts `value` at `key` under the session's lease and says whether it was stored (not without a
    /// session). A failure is counted and logged with `failed`, and costs only this write unless etcd
    /// refused the agent's credentials: then the session is dropped, so the next one gets fresh ones.
    async fn put_under_lease(
        &mut self,
        key: String,
        value: Vec<u8>,
        failed: &'static str,
        session: &mut Option<Session>,
    ) -> bool {
        let Some(live) = session.as_mut() else {
            return false;
        };
        let put = live
            .client
            .put(key, value, Some(PutOptions::new().with_lease(live.lease)))
            .await;
        let Err(error) = put else {
            return true;
        };
        self.telemetry.etcd_error();
        if refused_credentials(&error) {
            tracing::warn!(error = %error_chain(&error), "etcd refused this agent's credentials; dropping the etcd session to get fresh ones");
            *session = None;
            self.credentials = None;
        } else {
            tracing::warn!(error = %error_chain(&error), "{failed}");
        }
        false
    }

    /// Writes the inventory again under the session's lease; a failed write is retried at the next
    /// ask to the kubelet (a new session registers it anyway).
    async fn register_inventory(&mut self, session: &mut Option<Session>) {
        let key = self.keys.node_inventory(&self.options.node);
        let encoded = serde_json::to_vec(&self.inventory()).unwrap_or_default();
        let failed = "could not register which pods hold the GPUs; trying again at the next ask";
        self.pods_unregistered = !self.put_under_lease(key, encoded, failed, session).await;
    }

    /// Writes the node's measured power under the lease.
    async fn report_power(&mut self, report: &PowerReport, session: &mut Option<Session>) {
        let key = self.keys.node_power(&self.options.node);
        let encoded = serde_json::to_vec(report).unwrap_or_default();
        self.put_under_lease(key, encoded, "could not report the node's power", session)
            .await;
    }

    /// Writes an acknowledgement and tells the protocol once etcd stored it; without a session, or
    /// when the write fails, the protocol sends it again.
    async fn acknowledge(&mut self, ack: &Acknowledgement, session: &mut Option<Session>) {
        let Some(live) = session.as_mut() else {
            return;
        };
        let encoded = serde_json::to_vec(ack).unwrap_or_default();
        // NB: not bound to the lease: after this agent dies the acknowledgement is still what its GPUs
        // may enforce, and the operator keeps counting it while the node's machine is up.
        let put = live
            .client
            .put(self.keys.node_ack(&self.options.node), encoded, None)
            .await;
        match put {
            Ok(_) => {
                self.telemetry.revision(ack.revision);
                tracing::info!(revision = ack.revision, limits = ?ack.power_limits_watts, "acknowledged plan");
                // Its answer sets nothing: only a stored acknowledgement stops the protocol sending
                // it again at every tick.
                self.agent
                    .handle(Event::Acknowledged(ack.clone()), self.now());
            }
            Err(error) => {
                self.telemetry.etcd_error();
                tracing::warn!(%error, "could not write the acknowledgement; dropping the etcd session (the next one writes it again)");
                *session = None;
            }
        }
    }
}

/// Runs the agent until `shutdown` resolves, with the machine's boot ID from [`BOOT_ID_FILE`]; then
/// lowers every GPU to its floor (never raising) and returns.
pub async fn run(
    backend: Box<dyn GpuBackend>,
    options: AgentOptions,
    telemetry: Telemetry,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), AgentError> {
    let boot_id_file = std::path::Path::new(BOOT_ID_FILE);
    run_with_boot_id_file(backend, options, boot_id_file, telemetry, shutdown).await
}

/// [`run`], with the boot ID read from `boot_id_file` (the `--boot-id-file` flag). An unreadable boot
/// ID is logged and the acknowledgements go without one.
pub async fn run_with_boot_id_file(
    backend: Box<dyn GpuBackend>,
    options: AgentOptions,
    boot_id_file: &std::path::Path,
    telemetry: Telemetry,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), AgentError> {
    let boot_id = match read_boot_id(boot_id_file) {
        Ok(id) => Some(id),
        Err(error) => {
            tracing::warn!(error = %error_chain(&error), "no boot ID: acknowledgements go without one, and the operator cannot tell them from a previous boot's");
            None
        }
    };
    let backend: SharedBackend = Arc::new(Mutex::new(backend));
    let (gpus, enforced, name) = with_backend(&backend, |b| {
        let gpus = b.inventory()?;
        let enforced = driver::read_limits(b, gpus.len());
        Ok::<_, GpuError>((gpus, enforced, b.name()))
    })
    .await?
    .map_err(AgentError::Inventory)?;
    tracing::info!(backend = name, gpus = gpus.len(), limits = ?enforced, "adopted the limits in force");
    let bounds = driver::bounds(&gpus).map_err(|e| AgentError::Inventory(e.into()))?;
    let fence_after = defaults::fence_after(options.lease_ttl, options.fence_fraction);
    let agent = Agent::new(bounds, enforced, fence_after, Duration::ZERO)
        .map_err(|e| AgentError::Inventory(e.into()))?
        .with_boot_id(boot_id);
    let started = Instant::now();
    let mut runner = Runner {
        keys: KeyLayout::new(&options.etcd_prefix),
        // At most one sample period, so that rounds do not fall behind the samples.
        work: WorkScrapes::new(
            scrape::SCRAPE_TIMEOUT.min(options.sample_period),
            options.work_windows,
        ),
        agent,
        options,
        backend,
        gpus,
        telemetry,
        started,
        power: PowerPeriod::default(),
        backend_name: name,
        pods: BTreeMap::new(),
        pods_known: false,
        pods_unregistered: false,
        pods_failing: false,
        credentials: None,
    };

    let (events_tx, mut events) = mpsc::channel(64);
    let mut session: Option<Session> = None;
    let mut sessions_opened: SessionId = 0;
    let mut next_connect = Instant::now();
    let mut backoff = Backoff::default();
    let mut jitter = Jitter::new(jitter_seed(&runner.options.node));
    let mut sample = tokio::time::interval(runner.options.sample_period);
    let mut drift = tokio::time::interval(runner.options.drift_check);
    let mut pod_refresh = tokio::time::interval(POD_REFRESH);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        // NB: once a round: `/healthz` fails when this stops (the loop is wedged and fences nothing).
        runner.telemetry.heartbeat(std::time::Instant::now());
        if session.is_none() && Instant::now() >= next_connect {
            sessions_opened += 1;
            let inventory = runner.inventory();
            match open_session(
                &runner.options,
                &mut runner.credentials,
                &runner.keys,
                &inventory,
                sessions_opened,
                events_tx.clone(),
            )
            .await
            {
                Ok((live, plan)) => {
                    tracing::info!(lease = live.lease, "registered with etcd");
                    backoff.succeeded();
                    session = Some(live);
                    runner.pods_unregistered = false;
                    runner.feed(Event::Registered(plan), &mut session).await?;
                }
                Err(error) => {
                    runner.telemetry.etcd_error();
                    if error.is_refusal() {
                        runner.credentials = None;
                    }
                    let retry = error.retry_after(backoff.failed(jitter.draw()));
                    tracing::warn!(error = %error_chain(&error), ?retry, "no etcd session; retrying (the GPUs fence to their floors if this lasts)");
                    next_connect = Instant::now() + retry;
                }
            }
        }
        tokio::select! {
            _ = &mut shutdown => {
                tracing::info!("termination signal: every GPU goes to the lower of its limit and its floor; no limit is raised");
                runner.feed(Event::Shutdown, &mut session).await?;
                if let Some(mut live) = session.take() {
                    let _ = live.client.lease_revoke(live.lease).await;
                }
                return Ok(());
            }
            _ = sample.tick() => {
                let now = runner.now();
                let count = runner.gpus.len();
                let readings = with_backend(&runner.backend, move |b| {
                    b.advance(now);
                    (0..count as u32).map(|i| b.read(i)).collect::<Vec<_>>()
                }).await?;
                runner.telemetry.observe_gpus(&runner.gpus, &readings, &runner.pods);
                let period = runner.options.report_period;
                let mut report = runner.power.observe(now, &readings, period);
                if let Some(report) = &mut report {
                    (report.work_windows, report.work_windows_rejected) = runner.work.take();
                    runner.telemetry.observe_work_windows(&report.work_windows, &report.work_windows_rejected);
                }
                // NB: in the background, so that a pod's slow endpoint never holds the loop (and
                // its fencing); the round comes back below with these readings.
                runner.work.start(now, readings);
                if let Some(report) = report {
                    runner.report_power(&report, &mut session).await;
                }
                runner.feed(Event::Tick, &mut session).await?;
            }
            Some(round) = runner.work.finished() => {
                let outcomes = runner.work.observe(round);
                runner.telemetry.observe_work_scrapes(&outcomes);
            }
            _ = pod_refresh.tick(), if runner.options.pod_resources_socket.is_some() => {
                if let Some(socket) = runner.options.pod_resources_socket.clone() {
                    runner.refresh_pods(&socket, &mut session).await;
                }
            }
            _ = drift.tick() => {
                let count = runner.gpus.len();
                let limits = with_backend(&runner.backend, move |b| driver::read_limits(b, count)).await?;
                runner.feed(Event::ReadBack(limits), &mut session).await?;
            }
            Some(tagged) = events.recv() => match from_live_session(tagged, session.as_ref().map(|s| s.id)) {
                None => {}
                Some(SessionEvent::Renewed) => runner.feed(Event::LeaseRenewed, &mut session).await?,
                Some(SessionEvent::Plan(plan)) => runner.feed(Event::PlanChanged(plan), &mut session).await?,
                Some(SessionEvent::Lost(reason)) => {
                    tracing::warn!(%reason, "lost the etcd session; re-registering");
                    runner.telemetry.etcd_error();
                    session = None;
                    next_connect = Instant::now() + backoff.failed(jitter.draw());
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn etcd_status(code: tonic::Code, message: &str) -> etcd_client::Error {
        etcd_client::Error::GRpcStatus(tonic::Status::new(code, message))
    }

    #[test]
    fn the_boot_id_is_read_trimmed_and_a_missing_or_empty_file_is_an_error() {
        let dir = std::env::temp_dir().join(format!("kilowatt-boot-id-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temporary directory");
        let file = dir.join("boot_id");
        std::fs::write(&file, "5e1f3c1a-0d7b-4c55-9a0e-3f1b2c4d5e6f\n").expect("boot ID file");
        assert_eq!(
            read_boot_id(&file).expect("readable"),
            "5e1f3c1a-0d7b-4c55-9a0e-3f1b2c4d5e6f"
        );
        std::fs::write(&file, " \n").expect("boot ID file");
        assert!(matches!(
            read_boot_id(&file),
            Err(BootIdError::Empty { .. })
        ));
        let missing = read_boot_id(&dir.join("absent")).expect_err("no file");
        assert!(missing.to_string().contains("absent"), "{missing}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn events_of_a_dropped_session_are_dropped() {
        let tagged = |session, event| Tagged { session, event };
        let stale = from_live_session(tagged(1, SessionEvent::Plan(None)), Some(2));
        assert!(stale.is_none(), "{stale:?}");
        let lost = from_live_session(tagged(1, SessionEvent::Lost("gone".into())), None);
        assert!(lost.is_none(), "{lost:?}");
        let live = from_live_session(tagged(2, SessionEvent::Renewed), Some(2));
        assert!(matches!(live, Some(SessionEvent::Renewed)), "{live:?}");
    }

    #[test]
    fn etcd_refusing_the_credentials_is_told_from_etcd_being_away_or_a_stale_token() {
        let backoff = Duration::from_millis(300);
        for refusal in [
            etcd_status(
                tonic::Code::PermissionDenied,
                "etcdserver: permission denied",
            ),
            etcd_status(
                tonic::Code::InvalidArgument,
                "etcdserver: authentication failed, invalid user ID or password",
            ),
        ] {
            assert!(refused_credentials(&refusal), "{refusal}");
            let error = SessionError::Etcd {
                step: "registering the inventory",
                source: refusal,
            };
            assert!(error.is_refusal());
            assert_eq!(error.retry_after(backoff), REFUSED_RETRY + backoff);
        }
        // The password is still right: the client authenticates again, the credentials are kept.
        for kept in [
            etcd_status(tonic::Code::Unavailable, "connection refused"),
            etcd_status(
                tonic::Code::Unauthenticated,
                "etcdserver: invalid auth token",
            ),
        ] {
            assert!(!refused_credentials(&kept), "{kept}");
            let error = SessionError::Etcd {
                step: "connecting to etcd",
                source: kept,
            };
            assert_eq!(error.retry_after(backoff), backoff);
        }
    }

    #[test]
    fn a_refused_token_is_asked_again_later_than_an_unreachable_operator() {
        let backoff = Duration::from_millis(700);
        let refused = SessionError::Credentials(CredentialsError::Refused {
            status: 403,
            message: "the token belongs to someone else".into(),
        });
        assert_eq!(refused.retry_after(backoff), REFUSED_RETRY + backoff);
        let unreachable = SessionError::Credentials(CredentialsError::Unreachable {
            url: "http://operator/api/v1/agent-credentials".into(),
            message: "connection refused".into(),
        });
        assert_eq!(unreachable.retry_after(backoff), backoff);
    }

    #[test]
    fn agents_draw_their_jitter_from_seeds_of_their_own() {
        assert_ne!(jitter_seed("n1"), jitter_seed("n1"));
    }
}
