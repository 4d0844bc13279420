//! Command-line definitions of `kilowatt` (clap); no IO.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use kilowatt_solver::{MethodChoice, MilpLimits, SolveOptions};

use kilowatt_operator::controller::timing;
use kilowatt_operator::http::agent_credentials::ServiceAccountRef;
use kilowatt_plumbing::tls::EtcdTlsFiles;
use kilowatt_simulate::run::{SimulateRequest, Speed};
use kilowatt_simulate::simulation::Settings;

/// Kilowatt keeps a datacenter's GPUs inside its power budget while getting the most work out of
/// every watt.
#[derive(Debug, Parser)]
#[command(name = "kilowatt", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Allocate GPU power limits (and locked clocks) for a problem file and print the plan as JSON.
    ///
    /// Exit codes: 0 plan found; 1 unreadable or malformed problem (stderr names the field) or bad
    /// command line;
    /// 2 infeasible: some budget cannot hold its floors (stderr names each with its shortfall, stdout
    /// carries the safe plan with every GPU at minWatts); 3 the solver failed.
    Solve(SolveArgs),
    /// Benchmarks.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Run the operator: watch PowerBudgets, WorkloadProfiles, Nodes and GPU pods, solve, publish the
    /// plan to etcd, and keep status, events and metrics current. Replicas elect one leader through a
    /// Lease; the others stand by. Connects to Kubernetes through $KUBECONFIG, ~/.kube/config or the
    /// in-cluster service account. Logs go to stderr; RUST_LOG sets the level (default info).
    Operator(Box<OperatorArgs>),
    /// Ask a running operator what throughput a budget would lose (or gain) at another cap, without
    /// changing anything. Exit codes: 0 answered; 1 bad question (unknown budget, bad cap); 3 the
    /// operator could not be reached or failed.
    Whatif(WhatifArgs),
    /// Print the CustomResourceDefinitions (PowerBudget, WorkloadProfile) as YAML, or write them to a
    /// directory (`crds/` in the repository holds the committed copies).
    Crdgen(CrdgenArgs),
    /// See Kilowatt work with no cluster and no GPU: run the operator's planning pass and one node agent
    /// per node (simulated GPUs) in this process on simulated time, over a scenario (budget tree, nodes,
    /// workloads, a cap timeline), side by side with uniform capping and with no capping. Serves a
    /// live page and /metrics on 127.0.0.1 while it runs; prints a summary (or JSON) at the end.
    /// Scenario format: docs/simulate.md. Exit codes: 0 the run kept every cap; 1 a bad scenario or
    /// command line, or the run failed; 2 Kilowatt's limits exceeded a cap (a bug: please report it).
    Simulate(SimulateArgs),
    /// Turn on authentication of one etcd and report whether it is on: the sidecar of the Helm chart's
    /// internal etcd. Connects to --etcd-endpoint; if user root with the password in
    /// --etcd-password-file authenticates, authentication is on and there is nothing to do. If etcd
    /// answers that authentication is not enabled, it adds user root with that password (or sets the
    /// password of an existing root), grants it the root role and enables authentication. Then it
    /// checks again every --check-seconds and serves GET /readyz on --listen: 200 while the last check
    /// (within the last two periods) confirmed that authentication is on and root's password works,
    /// 503 with a JSON {"error": ...} otherwise. Runs until SIGTERM. Logs go to stderr; RUST_LOG sets
    /// the level (default info). Exit codes: 0 stopped by a signal; 1 bad command line, unreadable
    /// password or TLS file, or the listen address could not be bound.
    EtcdAuth(EtcdAuthArgs),
}

#[derive(Debug, Args)]
pub struct EtcdAuthArgs {
    /// The etcd client URL to check and configure: the etcd of this pod, over the loopback (its
    /// certificate must be valid for that address; the chart's is, for 127.0.0.1 and localhost).
    #[arg(long, default_value = "https://127.0.0.1:2379", value_name = "URL")]
    pub etcd_endpoint: String,
    /// File holding the password of etcd's root user (a mounted Secret; a trailing newline is
    /// ignored).
    #[arg(long, value_name = "FILE")]
    pub etcd_password_file: PathBuf,
    #[command(flatten)]
    pub etcd_tls: EtcdTlsFiles,
    /// Address of GET /readyz (the etcd pod's readiness probe).
    #[arg(long, default_value = "0.0.0.0:8081", value_name = "ADDR:PORT")]
    pub listen: std::net::SocketAddr,
    /// Check again this often once authentication is confirmed (until then, every second).
    #[arg(long, default_value_t = 10, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub check_seconds: u64,
    /// Give up on one check (connecting and every call it makes) after this long.
    #[arg(long, default_value_t = 5, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..=600))]
    pub timeout_seconds: u64,
    /// Log format on stderr.
    #[arg(long, default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,
}

#[derive(Debug, Args)]
pub struct SimulateArgs {
    /// Scenario file (YAML, format in docs/simulate.md); default: the built-in scenario
    /// (examples/scenarios/two-rows.yaml: 2 rows, 4 racks, 32 nodes × 8 GPUs, a demand-response dip to
    /// 60 % of the facility cap).
    #[arg(long, value_name = "FILE")]
    pub scenario: Option<PathBuf>,
    /// Simulated seconds to run; default: the scenario's durationSeconds.
    #[arg(long, value_name = "SECONDS", value_parser = parse_positive_seconds)]
    pub duration: Option<f64>,
    /// Simulated seconds per real second, or `max` to run as fast as the machine goes.
    #[arg(long, default_value = "60", value_name = "X|max", value_parser = parse_speed)]
    pub speed: Speed,
    /// Port of the live page and /metrics on 127.0.0.1 (0: any free port).
    #[arg(long, default_value_t = 8090)]
    pub port: u16,
    /// Serve nothing.
    #[arg(long, conflicts_with_all = ["port", "hold"])]
    pub no_serve: bool,
    /// Keep serving the page after the run ends, until Ctrl-C.
    #[arg(long)]
    pub hold: bool,
    /// Print the report as JSON on stdout instead of a summary (capViolations, energyJoules,
    /// normalizedThroughput, the same for `uniform` and `uncapped`, and every run's figures).
    #[arg(long)]
    pub json: bool,
    /// Write a chart (SVG) of the root budget's cap, allocated, enforced and measured power over time,
    /// and of normalized throughput for Kilowatt, uniform capping and no capping.
    #[arg(long, value_name = "FILE.svg")]
    pub plot: Option<PathBuf>,
    /// Kilowatt's solver method (see `kilowatt solve --help`).
    #[arg(long, default_value = "auto", value_parser = parse_method)]
    pub method: MethodChoice,
    /// The simulated operator solves again at least this often (simulated seconds).
    #[arg(long, default_value_t = timing::DEFAULT_RESYNC.as_secs_f64(), value_name = "SECONDS", value_parser = parse_positive_seconds)]
    pub resync_seconds: f64,
    /// Plan on the profiles the operator is told only: learn no curve from the pods' work counters
    /// and explore nothing (the "before" of learning; the oracle run is unaffected).
    #[arg(long)]
    pub no_learning: bool,
    /// Sets `efficiency.maxSlowdown` to this fraction in [0, 1) on every root budget of the
    /// scenario: Kilowatt may give up that share of the max-throughput plan's throughput for the
    /// least GPU power (uniform and proportional capping ignore it).
    #[arg(long, value_name = "FRACTION", value_parser = parse_slowdown)]
    pub max_slowdown: Option<f64>,
}

impl SimulateArgs {
    pub fn request(&self) -> SimulateRequest {
        SimulateRequest {
            scenario: self.scenario.clone(),
            max_slowdown: self.max_slowdown,
            duration_seconds: self.duration,
            speed: self.speed,
            port: (!self.no_serve).then_some(self.port),
            json: self.json,
            plot: self.plot.clone(),
            hold: self.hold,
            settings: Settings {
                duration_seconds: self.duration.unwrap_or(0.0),
                solve: SolveOptions {
                    method: self.method,
                    ..SolveOptions::default()
                },
                resync_seconds: self.resync_seconds,
                series_every_seconds: 10.0,
                learning: !self.no_learning,
            },
        }
    }
}

fn parse_speed(s: &str) -> Result<Speed, String> {
    if s == "max" {
        return Ok(Speed::Max);
    }
    let v: f64 = s
        .parse()
        .map_err(|_| format!("{s:?} is neither a number nor `max`"))?;
    if v.is_finite() && v > 0.0 {
        Ok(Speed::Times(v))
    } else {
        Err(format!("{v} must be above zero"))
    }
}

#[derive(Debug, Args)]
pub struct OperatorArgs {
    /// etcd endpoints that hold the plan, comma-separated.
    #[arg(
        long,
        env = "KILOWATT_ETCD_ENDPOINTS",
        value_delimiter = ',',
        default_value = "http://127.0.0.1:2379",
        value_name = "URL[,URL...]"
    )]
    pub etcd_endpoints: Vec<String>,
    /// Key prefix of every plan key in etcd (layout in docs/plan-protocol.md).
    #[arg(long, default_value = "/kilowatt", value_name = "PREFIX")]
    pub etcd_prefix: String,
    /// etcd user to connect as, with the root role: it writes every plan key and manages the agents'
    /// etcd users. Without it the operator connects without authentication and issues no agent
    /// credentials.
    #[arg(
        long,
        env = "KILOWATT_ETCD_USER",
        value_name = "USER",
        requires = "etcd_password_file"
    )]
    pub etcd_user: Option<String>,
    /// File holding --etcd-user's password (a mounted Secret; a trailing newline is ignored).
    #[arg(long, value_name = "FILE", requires = "etcd_user")]
    pub etcd_password_file: Option<PathBuf>,
    #[command(flatten)]
    pub etcd_tls: EtcdTlsFiles,
    /// The agents' ServiceAccount: only its tokens, bound to a pod on a node, earn etcd credentials
    /// for that node's keys (POST /api/v1/agent-credentials).
    #[arg(
        long,
        default_value = "kilowatt-system/kilowatt-agent",
        value_name = "NAMESPACE/NAME"
    )]
    pub agent_service_account: ServiceAccountRef,
    /// Address of the HTTP endpoints (/metrics, /healthz, /readyz, /api/v1/plan, /api/v1/whatif,
    /// /api/v1/agent-credentials, the live page / and /api/v1/overview).
    #[arg(long, default_value = "0.0.0.0:8080", value_name = "ADDR:PORT")]
    pub listen: std::net::SocketAddr,
    /// Also serve every endpoint over HTTPS here, with --tls-cert-file and --tls-key-file. Agents'
    /// credentials are then issued only over HTTPS (the plain listener answers 403).
    #[arg(long, value_name = "ADDR:PORT", requires_all = ["tls_cert_file", "tls_key_file"])]
    pub tls_listen: Option<std::net::SocketAddr>,
    /// The HTTPS listener's certificate chain (PEM), valid for the name agents use
    /// (e.g. kilowatt-operator.kilowatt-system.svc).
    #[arg(long, value_name = "FILE", requires = "tls_listen")]
    pub tls_cert_file: Option<PathBuf>,
    /// The key of --tls-cert-file (PEM).
    #[arg(long, value_name = "FILE", requires = "tls_listen")]
    pub tls_key_file: Option<PathBuf>,
    /// This replica's name in the leader Lease and in Events; defaults to $POD_NAME, else $HOSTNAME.
    #[arg(long, env = "POD_NAME", value_name = "NAME")]
    pub identity: Option<String>,
    /// Namespace of the leader-election Lease, and of the Secrets holding carbon-forecast tokens
    /// (`spec.signals.carbonForecast.tokenSecretRef`).
    #[arg(
        long,
        env = "POD_NAMESPACE",
        default_value = "kilowatt-system",
        value_name = "NAMESPACE"
    )]
    pub lease_namespace: String,
    /// Name of the leader-election Lease.
    #[arg(long, default_value = "kilowatt-operator", value_name = "NAME")]
    pub lease_name: String,
    /// How long a leader's lease lasts without renewal; it renews every 2/15 of this and stops acting
    /// after 10/15 without a renewal.
    #[arg(long, default_value_t = 15, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(3..=3600))]
    pub lease_seconds: u64,
    /// Changes arriving within this window are planned together.
    #[arg(long, default_value_t = timing::DEFAULT_DEBOUNCE.as_millis() as u64, value_name = "MILLISECONDS")]
    pub debounce_ms: u64,
    /// How long an agent may take to acknowledge a plan before its node is planned as not lowering:
    /// counted at what its GPUs may still enforce, with every other node lowered to absorb it.
    #[arg(long, default_value_t = timing::DEFAULT_ACK_TIMEOUT.as_secs(), value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub ack_timeout_seconds: u64,
    /// How long before a schedule window opens its cap is planned, so that it is enforced when the
    /// window opens (PowerBudget status shows the window's cap from then).
    #[arg(long, default_value_t = kilowatt_operator::plan::schedule::DEFAULT_WINDOW_LEAD.as_secs(), value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(0..=3600))]
    pub window_lead_seconds: u64,
    /// Solve again at least this often, even without changes; also how often PowerBudget status picks up
    /// the power the agents measured.
    #[arg(long, default_value_t = timing::DEFAULT_RESYNC.as_secs(), value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..=86400))]
    pub resync_seconds: u64,
    /// Solver method (see `kilowatt solve --help`).
    #[arg(long, default_value = "auto", value_parser = parse_method)]
    pub method: MethodChoice,
    /// Wall-clock limit for one MILP solve.
    #[arg(long, default_value_t = 20.0, value_name = "SECONDS", value_parser = parse_positive_seconds)]
    pub time_limit: f64,
    /// The most one what-if question (POST /api/v1/whatif) may take, reviews included; each of its two
    /// solves gets 2/5 of it. One question is answered at a time; others meanwhile get 429.
    #[arg(long, default_value_t = 10.0, value_name = "SECONDS", value_parser = parse_positive_seconds)]
    pub whatif_time_limit: f64,
    /// Which listeners ask what-if callers for a bearer token (TokenReview) of a user allowed to
    /// `create` `powerbudgets/whatif` (group kilowatt.dev, name: the budget; SubjectAccessReview):
    /// beyond-loopback (those not bound to a loopback address) or always.
    #[arg(long, default_value = "beyond-loopback", value_parser = ["beyond-loopback", "always"])]
    pub whatif_auth: String,
    /// The most a Kubernetes API request may wait for its answer (watches excepted, which stay open);
    /// one that hangs fails and is retried instead of stalling the reconcile loop.
    #[arg(long, default_value_t = 10, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..=300))]
    pub kube_timeout_seconds: u64,
    /// Log format on stderr.
    #[arg(long, default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,
    /// A Prometheus server (http:// or https://) on which the work queries of pods annotated
    /// kilowatt.dev/work-query are evaluated, to learn their curves; without it those pods are
    /// planned on their declared curves.
    #[arg(long, value_name = "URL")]
    pub prometheus_url: Option<String>,
    /// The CA of an https:// --prometheus-url (PEM); default: the system's roots.
    #[arg(long, value_name = "FILE", requires = "prometheus_url")]
    pub prometheus_ca_file: Option<PathBuf>,
    /// How often every queried pod's work query is evaluated.
    #[arg(long, default_value_t = 5, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..=600))]
    pub prometheus_sample_seconds: u64,
    /// How long a pod's GPUs hold new limits before its queried rate is measured; Prometheus lags a
    /// scrape interval behind, so this should be longer than one.
    #[arg(long, default_value_t = 30, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(0..=3600))]
    pub prometheus_warm_up_seconds: u64,
    /// Length of one measurement window of a queried pod: several scrape intervals, since the
    /// counter's value changes only when Prometheus scrapes it.
    #[arg(long, default_value_t = 120, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub prometheus_window_seconds: u64,
}

impl OperatorArgs {
    pub fn solve_options(&self) -> SolveOptions {
        SolveOptions {
            method: self.method,
            milp: MilpLimits {
                time_limit_seconds: self.time_limit,
                ..MilpLimits::default()
            },
            ..SolveOptions::default()
        }
    }
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("change").required(true).multiple(true).args(["cap_watts", "max_slowdown"])))]
pub struct WhatifArgs {
    /// Base URL of the operator's HTTP endpoints.
    #[arg(long, default_value = "http://127.0.0.1:8080", value_name = "URL")]
    pub operator: String,
    /// PowerBudget to change.
    #[arg(long, value_name = "NAME")]
    pub budget: String,
    /// The cap to try, in watts (the budget's safety margin still applies); default: its effective
    /// cap.
    #[arg(long, value_name = "WATTS")]
    pub cap_watts: Option<f64>,
    /// The efficiency policy to try on the budget: its `maxSlowdown`, a fraction in [0, 1) (0: the
    /// max-throughput plan); default: its spec's.
    #[arg(long, value_name = "FRACTION")]
    pub max_slowdown: Option<f64>,
    /// Print the operator's JSON answer instead of a summary.
    #[arg(long)]
    pub json: bool,
    /// File with the bearer token to send: an operator listening beyond localhost answers only users
    /// allowed to `create` `powerbudgets/whatif` (e.g. `kubectl create token NAME > FILE`). Default:
    /// the pod's ServiceAccount token, when there is one.
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// The CA of the operator's certificate, for an https:// --operator URL.
    #[arg(long, value_name = "FILE")]
    pub ca_file: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct CrdgenArgs {
    /// Write `powerbudgets.yaml` and `workloadprofiles.yaml` here instead of printing them.
    #[arg(long, value_name = "DIR")]
    pub out_dir: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct SolveArgs {
    /// Problem file, JSON or YAML (see README.md, "Problem format"); `-` reads standard input.
    #[arg(long, value_name = "FILE")]
    pub problem: PathBuf,
    /// auto: exact or within --target-gap with a proof; greedy, milp: force one path; uniform,
    /// proportional: the baselines (one limit for all; room split by maxWatts).
    #[arg(long, default_value = "auto", value_parser = parse_method)]
    pub method: MethodChoice,
    /// Gap (relative to the proven upper bound) under which auto accepts the greedy plan.
    #[arg(long, default_value_t = 0.005, value_name = "FRACTION", value_parser = parse_fraction)]
    pub target_gap: f64,
    /// Wall-clock limit for the MILP (HiGHS). A backstop: when it, rather than --max-nodes, stops the
    /// search, the plan may differ between runs.
    #[arg(long, default_value_t = 20.0, value_name = "SECONDS", value_parser = parse_positive_seconds)]
    pub time_limit: f64,
    /// Branch-and-bound node limit for the MILP (deterministic).
    #[arg(long, default_value_t = 20_000, value_name = "NODES")]
    pub max_nodes: u32,
    /// Indent the JSON output.
    #[arg(long)]
    pub pretty: bool,
}

impl SolveArgs {
    pub fn options(&self) -> SolveOptions {
        SolveOptions {
            method: self.method,
            target_gap: self.target_gap,
            milp: MilpLimits {
                max_nodes: self.max_nodes,
                time_limit_seconds: self.time_limit,
                ..MilpLimits::default()
            },
            ..SolveOptions::default()
        }
    }
}

fn parse_method(s: &str) -> Result<MethodChoice, String> {
    s.parse()
}

fn parse_fraction(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|e| format!("{e}"))?;
    if (0.0..=1.0).contains(&v) {
        Ok(v)
    } else {
        Err(format!("{v} is not between 0 and 1"))
    }
}

fn parse_slowdown(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|e| format!("{e}"))?;
    if (0.0..1.0).contains(&v) {
        Ok(v)
    } else {
        Err(format!("{v} must be a fraction in [0, 1)"))
    }
}

fn parse_positive_seconds(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|e| format!("{e}"))?;
    if v.is_finite() && v > 0.0 {
        Ok(v)
    } else {
        Err(format!("{v} must be a positive number of seconds"))
    }
}

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Time the solver on generated fleets (facility → rows → racks, 8-GPU nodes) against uniform and
    /// proportional capping, a cold generic HiGHS MILP and a generic HiGHS LP on the same instance,
    /// with each method's peak resident memory (Linux).
    Solver(BenchSolverArgs),
}

#[derive(Debug, Clone, Args)]
pub struct BenchSolverArgs {
    /// Fleet sizes in GPUs, comma-separated; with several, each runs in a process of its own.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "1000,10000,100000",
        value_name = "N[,N...]"
    )]
    pub gpus: Vec<usize>,
    /// Directory of example profiles (YAML) to build workloads from.
    #[arg(
        long,
        default_value = "examples/profiles",
        value_name = "DIR",
        conflicts_with = "measured"
    )]
    pub profiles: PathBuf,
    /// Directory of CSVs in the shared measurement schema to build workloads from instead.
    #[arg(long, value_name = "DIR")]
    pub measured: Option<PathBuf>,
    /// Facility cap between the floors (0) and the ceilings (1); rows and racks get slightly more.
    #[arg(long, default_value_t = 0.6, value_parser = parse_fraction)]
    pub cap_fraction: f64,
    /// Let multi-node training gangs span racks and rows.
    #[arg(long)]
    pub cross_rack_gangs: bool,
    /// The facility's `maxSlowdown` in the `auto+maxSlowdown` row, a fraction in [0, 1).
    #[arg(long, default_value_t = kilowatt_solver_bench::bench::POLICY_MAX_SLOWDOWN, value_parser = parse_slowdown, value_name = "FRACTION")]
    pub max_slowdown: f64,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Timed runs per method (the median is reported).
    #[arg(long, default_value_t = 3)]
    pub repeat: usize,
    /// Skip the generic MILP above this many GPUs.
    #[arg(long, default_value_t = 10_000)]
    pub milp_max_gpus: usize,
    /// Time limit of the generic MILP.
    #[arg(long, default_value_t = 60.0, value_parser = parse_positive_seconds, value_name = "SECONDS")]
    pub milp_time_limit: f64,
    /// Skip the generic LP (HiGHS interior point on the envelope relaxation) above this many GPUs.
    #[arg(long, default_value_t = 100_000)]
    pub lp_max_gpus: usize,
    /// Time limit of the generic LP.
    #[arg(long, default_value_t = 120.0, value_parser = parse_positive_seconds, value_name = "SECONDS")]
    pub lp_time_limit: f64,
    /// Print JSON instead of a Markdown table.
    #[arg(long)]
    pub json: bool,
    /// Also write a log-log chart (SVG) of solve time and peak memory against fleet size.
    #[arg(long, value_name = "FILE.svg")]
    pub plot: Option<PathBuf>,
}

impl BenchSolverArgs {
    /// The command line (after the program name) that runs this benchmark for `gpus` alone and prints
    /// JSON: with several sizes, each runs in a process of its own, so that memory one size's run
    /// leaves with the allocator does not count in the next one's peak.
    pub fn one_size(&self, gpus: usize) -> Vec<String> {
        let mut args: Vec<String> = [
            "bench",
            "solver",
            "--json",
            "--gpus",
            &gpus.to_string(),
            "--cap-fraction",
            &self.cap_fraction.to_string(),
            "--seed",
            &self.seed.to_string(),
            "--repeat",
            &self.repeat.to_string(),
            "--milp-max-gpus",
            &self.milp_max_gpus.to_string(),
            "--milp-time-limit",
            &self.milp_time_limit.to_string(),
            "--lp-max-gpus",
            &self.lp_max_gpus.to_string(),
            "--lp-time-limit",
            &self.lp_time_limit.to_string(),
            "--max-slowdown",
            &self.max_slowdown.to_string(),
        ]
        .map(str::to_owned)
        .into();
        match &self.measured {
            Some(dir) => args.extend(["--measured".to_owned(), dir.display().to_string()]),
            None => args.extend(["--profiles".to_owned(), self.profiles.display().to_string()]),
        }
        if self.cross_rack_gangs {
            args.push("--cross-rack-gangs".to_owned());
        }
        args
    }
}
