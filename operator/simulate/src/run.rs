//! The `kilowatt simulate` command around the engine: paces simulated time against the wall clock
//! (`--speed`), serves the live page and `/metrics` on 127.0.0.1 while it runs, shows progress on
//! stderr, and at the end prints a summary (or JSON) and writes the chart. Does network, file and
//! terminal IO and reads the clock; the simulation itself is [`crate::simulation`].

use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use serde::Serialize;

use crate::scenario::{Prepared, Scenario, ScenarioError};
use crate::simulation::{
    CUT_GRACE_SECONDS, RunSummary, SeriesPoint, Settings, SimulateError, Simulation,
};
use kilowatt_operator::http::plan_router;
use kilowatt_operator::http::web::{self, Feed};
use kilowatt_solver_bench::svg::{self, Line, Panel};

/// How fast simulated time runs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Speed {
    /// Simulated seconds per wall-clock second.
    Times(f64),
    /// As fast as the machine goes.
    Max,
}

/// What `kilowatt simulate` was asked to do.
#[derive(Debug, Clone)]
pub struct SimulateRequest {
    /// `None`: the built-in scenario.
    pub scenario: Option<PathBuf>,
    /// Sets `efficiency.maxSlowdown` on every root budget of the scenario.
    pub max_slowdown: Option<f64>,
    /// Overrides the scenario's duration.
    pub duration_seconds: Option<f64>,
    pub speed: Speed,
    /// Port of the page on 127.0.0.1; 0 picks a free one; `None` serves nothing.
    pub port: Option<u16>,
    pub json: bool,
    pub plot: Option<PathBuf>,
    /// Keep serving the page after the end, until interrupted.
    pub hold: bool,
    pub settings: Settings,
}

/// Why the command failed.
#[derive(Debug, thiserror::Error)]
pub enum SimulateRunError {
    #[error(transparent)]
    Scenario(#[from] ScenarioError),
    #[error(transparent)]
    Start(#[from] SimulateError),
    #[error(
        "cannot serve the page on {address}: {source} (another kilowatt simulate may hold the port; \
         --port 0 picks a free one)"
    )]
    Listen {
        address: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot write the chart to {}", path.display())]
    Plot {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot encode the report")]
    Encode(#[from] serde_json::Error),
    #[error("cannot write the report")]
    Output(#[from] std::io::Error),
}

/// One run's headline figures.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Headline {
    pub cap_violations: u64,
    pub energy_joules: f64,
    /// CO₂ of the GPU energy, with the scenario's `carbonIntensity`.
    pub carbon_grams: Option<f64>,
    pub normalized_throughput: f64,
}

impl From<&RunSummary> for Headline {
    fn from(run: &RunSummary) -> Headline {
        Headline {
            cap_violations: run.cap_violations,
            energy_joules: run.energy_joules,
            carbon_grams: run.carbon_grams,
            normalized_throughput: run.normalized_throughput,
        }
    }
}

/// What `--json` prints: Kilowatt's figures at the top, uniform capping's and no capping's beside them.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    pub scenario: String,
    pub simulated_seconds: f64,
    pub wall_seconds: f64,
    pub nodes: usize,
    pub gpus: u32,
    /// Ticks (every 0.1 simulated s) at which some budget's enforced limits plus overheads exceeded
    /// its cap; a cut cap is checked from `cutGraceSeconds` after it fell.
    pub cap_violations: u64,
    pub energy_joules: f64,
    /// CO₂ of Kilowatt's GPU energy, with the scenario's `carbonIntensity`.
    pub carbon_grams: Option<f64>,
    pub normalized_throughput: f64,
    pub uniform: Headline,
    pub proportional: Headline,
    pub uncapped: Headline,
    /// Kilowatt told the true profiles from the start (the same as Kilowatt where the scenario gives
    /// no `trueProfile`).
    pub oracle: Headline,
    pub throughput_vs_oracle: f64,
    pub throughput_vs_uniform: f64,
    pub energy_vs_uniform: f64,
    pub throughput_vs_proportional: f64,
    pub energy_vs_proportional: f64,
    pub throughput_vs_uncapped: f64,
    pub energy_vs_uncapped: f64,
    pub cut_grace_seconds: f64,
    /// Every figure of every run.
    pub runs: Vec<RunSummary>,
}

fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 { a / b } else { 0.0 }
}

/// The report of a finished (or stopped) simulation.
pub fn report(simulation: &Simulation, wall_seconds: f64) -> Report {
    let runs = simulation.summaries();
    let prepared = simulation.prepared();
    let (kilowatt, uniform, proportional, uncapped, oracle) =
        (&runs[0], &runs[1], &runs[2], &runs[3], &runs[4]);
    Report {
        scenario: prepared.scenario.name.clone(),
        simulated_seconds: simulation.now_seconds(),
        wall_seconds,
        nodes: prepared.nodes.len(),
        gpus: prepared.gpu_count(),
        cap_violations: kilowatt.cap_violations,
        energy_joules: kilowatt.energy_joules,
        carbon_grams: kilowatt.carbon_grams,
        normalized_throughput: kilowatt.normalized_throughput,
        uniform: uniform.into(),
        proportional: proportional.into(),
        uncapped: uncapped.into(),
        oracle: oracle.into(),
        throughput_vs_oracle: ratio(kilowatt.normalized_throughput, oracle.normalized_throughput),
        throughput_vs_uniform: ratio(
            kilowatt.normalized_throughput,
            uniform.normalized_throughput,
        ),
        energy_vs_uniform: ratio(kilowatt.energy_joules, uniform.energy_joules),
        throughput_vs_proportional: ratio(
            kilowatt.normalized_throughput,
            proportional.normalized_throughput,
        ),
        energy_vs_proportional: ratio(kilowatt.energy_joules, proportional.energy_joules),
        throughput_vs_uncapped: ratio(
            kilowatt.normalized_throughput,
            uncapped.normalized_throughput,
        ),
        energy_vs_uncapped: ratio(kilowatt.energy_joules, uncapped.energy_joules),
        cut_grace_seconds: CUT_GRACE_SECONDS,
        runs,
    }
}

fn clock(seconds: f64) -> String {
    let total = seconds.round() as u64;
    format!("{}:{:02}:{:02}", total / 3600, total / 60 % 60, total % 60)
}

/// The summary printed at the end.
pub fn render_summary(report: &Report) -> String {
    let mut text = format!(
        "kilowatt simulate: scenario {}, {} nodes, {} GPUs, {} simulated in {:.1} s\n\n",
        report.scenario,
        report.nodes,
        report.gpus,
        clock(report.simulated_seconds),
        report.wall_seconds
    );
    text.push_str(&format!(
        "{:<12} {:>12} {:>14} {:>14} {:>18} {:>10} {:>10}\n",
        "run", "throughput", "GPU energy", "carbon", "ticks over cap", "revisions", "worst cut"
    ));
    for run in &report.runs {
        let cut = if run.name == "uncapped" {
            "–".to_owned()
        } else {
            format!("{:.1} s", run.worst_cut_enforced_seconds)
        };
        let carbon = run
            .carbon_grams
            .map_or_else(|| "–".to_owned(), |g| format!("{:.1} kg", g / 1000.0));
        text.push_str(&format!(
            "{:<12} {:>12.4} {:>10.1} kWh {:>14} {:>8} of {:<7} {:>10} {:>10}\n",
            run.name,
            run.normalized_throughput,
            run.energy_joules / 3.6e6,
            carbon,
            run.cap_violations,
            run.cap_checks,
            run.plan_revisions,
            cut
        ));
    }
    if let Some(kilowatt) = report.runs.first() {
        text.push_str(&format!(
            "\nKilowatt's planning pass (translate, solve, build, rollout step, publish): median {:.1} ms \
             over {} passes, of which the solve {:.1} ms.",
            kilowatt.median_pass_seconds * 1000.0,
            kilowatt.passes,
            kilowatt.median_solve_seconds * 1000.0
        ));
        text.push_str(&format!(
            "\nGPUs at a limit planned for another pod than the one holding them: {:.0} GPU-seconds.",
            kilowatt.misplanned_gpu_seconds
        ));
    }
    text.push_str(&format!(
        "\nKilowatt vs uniform capping: {:.3}× the normalized throughput for {:.3}× the GPU energy.\n\
         Kilowatt vs proportional capping: {:.3}× the throughput for {:.3}× the energy.\n\
         Kilowatt vs no capping: {:.3}× the throughput for {:.3}× the energy; no capping exceeded a cap \
         at {} of {} ticks.\n",
        report.throughput_vs_uniform,
        report.energy_vs_uniform,
        report.throughput_vs_proportional,
        report.energy_vs_proportional,
        report.throughput_vs_uncapped,
        report.energy_vs_uncapped,
        report.uncapped.cap_violations,
        report.runs.last().map_or(0, |r| r.cap_checks),
    ));
    if report.cap_violations == 0 {
        text.push_str(
            "Kilowatt kept every budget's enforced limits plus overheads within its cap at every tick.\n",
        );
    } else {
        text.push_str(&format!(
            "WARNING: Kilowatt's enforced limits exceeded a cap at {} ticks.\n",
            report.cap_violations
        ));
    }
    text
}

/// The chart: the root budget's cap, allocation, limits and draw, then throughput, over time.
pub fn chart(series: &[SeriesPoint], budget: &str) -> String {
    let minutes = |p: &SeriesPoint| p.seconds / 60.0;
    let kw = |f: fn(&SeriesPoint) -> f64| -> Vec<(f64, f64)> {
        series.iter().map(|p| (minutes(p), f(p) / 1000.0)).collect()
    };
    let fraction = |f: fn(&SeriesPoint) -> f64| -> Vec<(f64, f64)> {
        series.iter().map(|p| (minutes(p), f(p))).collect()
    };
    let line = |name: &str, color: &'static str, dashed: bool, points| Line {
        name: name.to_owned(),
        color,
        dashed,
        points,
    };
    svg::render(&[
        Panel {
            title: format!("Power of budget {budget}"),
            x_label: "simulated minutes".into(),
            y_label: "kW".into(),
            log: false,
            y_from_zero: true,
            lines: vec![
                line("cap", "#101828", true, kw(|p| p.cap_watts)),
                line(
                    "allocated",
                    "#2e90fa",
                    false,
                    kw(|p| p.kilowatt_allocated_watts),
                ),
                line("limits", "#7a5af8", true, kw(|p| p.kilowatt_limits_watts)),
                line(
                    "measured",
                    "#12b76a",
                    false,
                    kw(|p| p.kilowatt_measured_watts),
                ),
                line(
                    "uniform, measured",
                    "#f79009",
                    false,
                    kw(|p| p.uniform_measured_watts),
                ),
                line(
                    "proportional, measured",
                    "#667085",
                    false,
                    kw(|p| p.proportional_measured_watts),
                ),
                line(
                    "uncapped, measured",
                    "#d92d20",
                    false,
                    kw(|p| p.uncapped_measured_watts),
                ),
            ],
        },
        Panel {
            title: "Normalized throughput".into(),
            x_label: "simulated minutes".into(),
            y_label: "fraction of best".into(),
            log: false,
            y_from_zero: false,
            lines: vec![
                line(
                    "kilowatt",
                    "#2e90fa",
                    false,
                    fraction(|p| p.kilowatt_throughput),
                ),
                line(
                    "uniform",
                    "#f79009",
                    false,
                    fraction(|p| p.uniform_throughput),
                ),
                line(
                    "proportional",
                    "#667085",
                    false,
                    fraction(|p| p.proportional_throughput),
                ),
                line(
                    "uncapped",
                    "#d92d20",
                    true,
                    fraction(|p| p.uncapped_throughput),
                ),
            ],
        },
    ])
}

/// Shared by the HTTP handlers: the latest metrics text.
type MetricsText = Arc<Mutex<String>>;

async fn metrics(State(text): State<MetricsText>) -> impl IntoResponse {
    let body = text
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body)
}

/// Loads the scenario the request names (or the built-in one) and checks it.
pub fn prepare(request: &SimulateRequest) -> Result<Prepared, ScenarioError> {
    let (mut scenario, origin) = match &request.scenario {
        Some(path) => (Scenario::load(path)?, path.display().to_string()),
        None => (Scenario::builtin()?, "built-in".to_owned()),
    };
    if let Some(max_slowdown) = request.max_slowdown {
        scenario.set_root_max_slowdown(max_slowdown);
    }
    scenario.prepare(&origin)
}

/// Runs `kilowatt simulate`: the report goes to `out`, progress and the page's address to `progress`.
pub async fn run(
    request: SimulateRequest,
    out: &mut (dyn Write + Send),
    progress: &mut (dyn Write + Send),
    interrupted: impl std::future::Future<Output = ()>,
) -> Result<Report, SimulateRunError> {
    let prepared = prepare(&request)?;
    let mut settings = request.settings.clone();
    settings.duration_seconds = request
        .duration_seconds
        .unwrap_or(prepared.scenario.duration_seconds);
    let feed = Feed::new("simulate");
    let mut simulation = Simulation::new(prepared, settings.clone(), feed.clone())?;
    let metrics_text: MetricsText = Arc::new(Mutex::new(String::new()));
    let mut server = None;
    if let Some(port) = request.port {
        let address = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let listener = tokio::net::TcpListener::bind(address)
            .await
            .map_err(|source| SimulateRunError::Listen { address, source })?;
        let bound = listener
            .local_addr()
            .map_err(|source| SimulateRunError::Listen { address, source })?;
        let app = web::router(feed.clone())
            .merge(plan_router(simulation.kilowatt_store()))
            .merge(
                Router::new()
                    .route("/metrics", get(metrics))
                    .with_state(metrics_text.clone()),
            );
        server = Some(tokio::spawn(async move {
            if let Err(error) = axum::serve(listener, app).await {
                tracing::error!(%error, "the page's HTTP server stopped");
            }
        }));
        writeln!(
            progress,
            "simulate: live page at http://{bound}/ (metrics at /metrics)"
        )?;
    }
    let scenario = &simulation.prepared().scenario;
    writeln!(
        progress,
        "simulate: scenario {} ({}), {} simulated at {}",
        scenario.name,
        simulation.prepared().origin,
        clock(settings.duration_seconds),
        match request.speed {
            Speed::Times(x) => format!("{x}× real time"),
            Speed::Max => "full speed".to_owned(),
        }
    )?;
    let started = Instant::now();
    let mut next_progress = 0.1;
    let mut interrupted = std::pin::pin!(interrupted);
    let mut stopped = false;
    let mut series_seen = 0;
    while !simulation.finished() {
        simulation.step().await;
        let t = simulation.now_seconds();
        if t / settings.duration_seconds >= next_progress - 1e-9 {
            next_progress += 0.1;
            let runs = simulation.summaries();
            writeln!(
                progress,
                "simulate: {} of {} ({:.0} %) · throughput so far: kilowatt {:.3}, uniform {:.3}, proportional {:.3} · ticks over cap: {}",
                clock(t),
                clock(settings.duration_seconds),
                100.0 * t / settings.duration_seconds,
                runs[0].normalized_throughput,
                runs[1].normalized_throughput,
                runs[2].normalized_throughput,
                runs[0].cap_violations
            )?;
        }
        if simulation.series().len() != series_seen {
            series_seen = simulation.series().len();
            match simulation.render_metrics() {
                Ok(text) => {
                    *metrics_text
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner) = text
                }
                Err(error) => tracing::warn!(%error, "cannot render the simulation's metrics"),
            }
        }
        let pause = match request.speed {
            Speed::Times(speed) => {
                Duration::from_secs_f64(t / speed).saturating_sub(started.elapsed())
            }
            // NB: let the page's requests through now and then.
            Speed::Max => Duration::ZERO,
        };
        tokio::select! {
            () = tokio::time::sleep(pause), if pause > Duration::from_millis(2) => {}
            () = tokio::task::yield_now(), if pause <= Duration::from_millis(2) => {}
            () = &mut interrupted => {
                writeln!(progress, "simulate: interrupted at {}; reporting what ran", clock(t))?;
                stopped = true;
                break;
            }
        }
    }
    let report = report(&simulation, started.elapsed().as_secs_f64());
    if let Some(path) = &request.plot {
        let text = chart(
            simulation.series(),
            simulation.series_budget().unwrap_or("the root budget"),
        );
        std::fs::write(path, text).map_err(|source| SimulateRunError::Plot {
            path: path.clone(),
            source,
        })?;
        writeln!(progress, "simulate: chart written to {}", path.display())?;
    }
    if request.json {
        writeln!(out, "{}", serde_json::to_string_pretty(&report)?)?;
    } else {
        write!(out, "{}", render_summary(&report))?;
    }
    out.flush()?;
    if let Some(server) = server {
        if request.hold && !stopped {
            writeln!(
                progress,
                "simulate: finished; the page stays up until Ctrl-C"
            )?;
            interrupted.await;
        }
        server.abort();
    }
    Ok(report)
}
