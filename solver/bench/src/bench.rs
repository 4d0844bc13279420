//! `kilowatt bench solver`: times the solver against uniform and proportional capping, a cold generic
//! HiGHS MILP and a generic HiGHS LP on the same generated fleets, and `auto` with the efficiency
//! policy (`maxSlowdown` on the facility) against `auto` alone, with each method's peak memory, and
//! charts time against size. Reads profile files, the clock and the process's memory counters (Linux
//! `/proc/self`); prints results.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use kilowatt_solver::{MethodChoice, MilpLimits, Plan, SolveOptions, generic_lp_objective};
use serde::{Deserialize, Serialize};

use crate::fleet::{FleetSpec, generate_fleet};
use crate::profiles::{NamedCurve, load_example_profiles, load_measured_curves};
use crate::solve::solve_timed;
use crate::svg::{self, Line, Panel};

/// The facility's `maxSlowdown` in the policy row (`auto+maxSlowdown`).
pub const POLICY_MAX_SLOWDOWN: f64 = 0.02;

/// Where the benchmark's curves come from.
#[derive(Debug, Clone)]
pub enum CurveSource {
    /// A directory of example profiles (`examples/profiles`).
    Examples(PathBuf),
    /// A directory of CSVs in the shared measurement schema.
    Measured(PathBuf),
}

/// One benchmark run's settings.
#[derive(Debug, Clone)]
pub struct BenchSettings {
    pub sizes: Vec<usize>,
    pub curves: CurveSource,
    pub cap_fraction: f64,
    pub cross_rack_gangs: bool,
    pub seed: u64,
    /// Timed runs per method; the median is reported.
    pub repeat: usize,
    /// The generic MILP is skipped above this many GPUs (it does not finish there).
    pub milp_max_gpus: usize,
    pub milp_time_limit_seconds: f64,
    /// The generic LP is skipped above this many GPUs.
    pub lp_max_gpus: usize,
    pub lp_time_limit_seconds: f64,
    /// The facility's `maxSlowdown` for the policy row, timed against plain `auto` on the same fleet.
    pub max_slowdown: f64,
}

/// How one method did on one instance.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MethodResult {
    pub method: String,
    /// `null` when the method produced no plan (with the reason in `error`).
    pub seconds: Option<f64>,
    pub objective: Option<f64>,
    pub upper_bound: Option<f64>,
    pub gap: Option<f64>,
    pub status: Option<String>,
    pub error: Option<String>,
    /// The process's peak resident memory while the method ran (the instance included); `None` where
    /// `/proc/self` cannot tell.
    pub peak_rss_bytes: Option<u64>,
    /// Sum of every GPU's limit in the plan.
    #[serde(default)]
    pub gpu_watts: Option<f64>,
    /// With `maxSlowdown`: watts saved against the max-throughput plan, the proven lower bound on
    /// GPU power and the plan's distance above it, and the max-throughput reference's own gap.
    #[serde(default)]
    pub saved_watts: Option<f64>,
    #[serde(default)]
    pub gpu_watts_lower_bound: Option<f64>,
    #[serde(default)]
    pub power_gap: Option<f64>,
    #[serde(default)]
    pub reference_gap: Option<f64>,
}

/// Results for one fleet size.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SizeResult {
    pub gpus: usize,
    pub workloads: usize,
    pub budgets: usize,
    pub methods: Vec<MethodResult>,
    /// Kilowatt's objective over uniform capping's.
    pub auto_vs_uniform: Option<f64>,
    /// Generic MILP seconds over Kilowatt's seconds, when the MILP ran.
    pub milp_seconds_over_auto: Option<f64>,
    /// Kilowatt's objective over the generic MILP's.
    pub auto_vs_milp_objective: Option<f64>,
    /// Generic LP seconds over Kilowatt's seconds, when the LP ran.
    pub lp_seconds_over_auto: Option<f64>,
    /// Kilowatt's objective over the LP optimum (an upper bound: 1.0 means Kilowatt reached it).
    pub auto_vs_lp_objective: Option<f64>,
    /// Seconds of `auto` with the policy over plain `auto`'s, same fleet, same process.
    #[serde(default)]
    pub policy_seconds_over_auto: Option<f64>,
}

fn load_curves(source: &CurveSource) -> anyhow::Result<Vec<NamedCurve>> {
    Ok(match source {
        CurveSource::Examples(dir) => load_example_profiles(dir)?,
        CurveSource::Measured(dir) => load_measured_curves(dir)?,
    })
}

/// Resident memory of this process: the peak since the last [`reset_peak_rss`] (`VmHWM`), or now
/// (`VmRSS`).
fn rss_bytes(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Resets the peak resident memory to what is resident now (Linux: `5` into `/proc/self/clear_refs`).
/// NB: freed memory the allocator keeps counts as resident, so a method that runs after a hungrier one
/// shows that one's footprint at least; the table runs the cheap methods first.
fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// Runs `measure` and returns its result with the process's peak resident memory during it.
fn with_peak_rss<T>(measure: impl FnOnce() -> T) -> (T, Option<u64>) {
    let reset = reset_peak_rss();
    let result = measure();
    (result, rss_bytes("VmHWM:").filter(|_| reset))
}

fn median(mut values: Vec<Duration>) -> Duration {
    values.sort();
    values[values.len() / 2]
}

fn run_method(
    problem: &kilowatt_solver::Problem,
    label: &str,
    options: &SolveOptions,
    repeat: usize,
) -> (MethodResult, Option<Plan>) {
    let ((result, times), peak_rss_bytes) = with_peak_rss(|| {
        let (mut result, first) = solve_timed(problem, options);
        let mut times = vec![first];
        for _ in 1..repeat {
            let (again, elapsed) = solve_timed(problem, options);
            times.push(elapsed);
            result = again;
        }
        (result, times)
    });
    let mut row = MethodResult {
        method: label.to_owned(),
        seconds: Some(median(times).as_secs_f64()),
        objective: None,
        upper_bound: None,
        gap: None,
        status: None,
        error: None,
        peak_rss_bytes,
        gpu_watts: None,
        saved_watts: None,
        gpu_watts_lower_bound: None,
        power_gap: None,
        reference_gap: None,
    };
    match result {
        Ok(plan) => {
            row.objective = Some(plan.objective);
            row.upper_bound = Some(plan.upper_bound);
            row.gap = Some(plan.gap());
            row.status = Some(format!("{:?}", plan.status).to_lowercase());
            row.gpu_watts = Some(plan.gpus.iter().map(|g| g.power_limit_watts).sum());
            if let Some(e) = &plan.efficiency {
                row.saved_watts = Some(e.saved_watts);
                row.gpu_watts_lower_bound = Some(e.gpu_watts_lower_bound);
                row.power_gap = Some(e.power_gap());
                row.reference_gap = Some(e.reference_gap(plan.upper_bound));
            }
            (row, Some(plan))
        }
        Err(e) => {
            row.error = Some(e.to_string());
            (row, None)
        }
    }
}

/// Runs the solver benchmark for every size.
pub fn bench_solver(settings: &BenchSettings) -> anyhow::Result<Vec<SizeResult>> {
    let curves = load_curves(&settings.curves)?;
    let mut results = Vec::with_capacity(settings.sizes.len());
    for &gpus in &settings.sizes {
        let spec = FleetSpec {
            gpus,
            cap_fraction: settings.cap_fraction,
            cross_rack_gangs: settings.cross_rack_gangs,
            seed: settings.seed,
            ..FleetSpec::default()
        };
        let problem = generate_fleet(&curves, &spec)?;
        let with = |method| SolveOptions {
            method,
            ..SolveOptions::default()
        };
        // The baselines first: with the least memory, so that the allocator's retained pages from a
        // hungrier method do not count in theirs.
        let (uniform, uniform_plan) = run_method(
            &problem,
            "uniform",
            &with(MethodChoice::Uniform),
            settings.repeat,
        );
        let (proportional, _) = run_method(
            &problem,
            "proportional",
            &with(MethodChoice::Proportional),
            settings.repeat,
        );
        let (auto, auto_plan) =
            run_method(&problem, "auto", &with(MethodChoice::Auto), settings.repeat);
        // The same fleet with the facility's policy on, timed right after plain auto.
        let mut with_policy = problem.clone();
        for budget in with_policy
            .budgets
            .iter_mut()
            .filter(|b| b.parent.is_none())
        {
            budget.max_slowdown = Some(settings.max_slowdown);
        }
        let (policy, _) = run_method(
            &with_policy,
            "auto+maxSlowdown",
            &with(MethodChoice::Auto),
            settings.repeat,
        );
        drop(with_policy);
        let policy_seconds_over_auto = policy.seconds.zip(auto.seconds).map(|(p, a)| p / a);
        let mut methods = vec![auto, policy, uniform, proportional];
        let generic = if gpus <= settings.milp_max_gpus {
            let options = SolveOptions {
                method: MethodChoice::Milp,
                milp: MilpLimits {
                    time_limit_seconds: settings.milp_time_limit_seconds,
                    max_nodes: u32::MAX / 2,
                    ..MilpLimits::default()
                },
                milp_warm_start: false,
                ..SolveOptions::default()
            };
            let (result, plan) = run_method(&problem, "generic-milp", &options, 1);
            methods.push(result.clone());
            plan.map(|p| (p, result))
        } else {
            None
        };
        let lp = if gpus <= settings.lp_max_gpus {
            let ((result, seconds), peak_rss_bytes) = with_peak_rss(|| {
                let started = Instant::now();
                let result = generic_lp_objective(&problem, settings.lp_time_limit_seconds);
                (result, started.elapsed().as_secs_f64())
            });
            let row = MethodResult {
                method: "generic-lp".into(),
                seconds: Some(seconds),
                objective: result.as_ref().ok().copied().flatten(),
                upper_bound: None,
                gap: None,
                status: result.as_ref().ok().map(|_| "relaxation-optimum".into()),
                error: result.err().map(|e| e.to_string()),
                peak_rss_bytes,
                gpu_watts: None,
                saved_watts: None,
                gpu_watts_lower_bound: None,
                power_gap: None,
                reference_gap: None,
            };
            methods.push(row.clone());
            Some(row)
        } else {
            None
        };
        let auto_seconds = methods[0].seconds;
        let auto_objective = auto_plan.as_ref().map(|p| p.objective);
        results.push(SizeResult {
            gpus: problem.nodes.iter().map(|n| n.gpus.len()).sum(),
            workloads: problem.workloads.len(),
            budgets: problem.budgets.len(),
            auto_vs_uniform: auto_plan
                .as_ref()
                .zip(uniform_plan.as_ref())
                .map(|(a, u)| a.objective / u.objective),
            milp_seconds_over_auto: generic
                .as_ref()
                .and_then(|(_, r)| r.seconds.zip(auto_seconds).map(|(m, a)| m / a)),
            auto_vs_milp_objective: generic
                .as_ref()
                .zip(auto_plan.as_ref())
                .map(|((m, _), a)| a.objective / m.objective),
            lp_seconds_over_auto: lp
                .as_ref()
                .and_then(|r| r.seconds.zip(auto_seconds).map(|(l, a)| l / a)),
            auto_vs_lp_objective: lp
                .as_ref()
                .and_then(|r| r.objective.zip(auto_objective).map(|(l, a)| a / l)),
            policy_seconds_over_auto,
            methods,
        });
    }
    Ok(results)
}

/// Renders results as a Markdown table, one row per size and method.
pub fn render_table(results: &[SizeResult]) -> String {
    let mut out = String::from(
        "| GPUs | workloads | method | seconds | peak RSS MiB | objective | gap to bound | vs uniform | GPU kW | saved kW | power gap |\n|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for size in results {
        let uniform = size
            .methods
            .iter()
            .find(|m| m.method == "uniform")
            .and_then(|m| m.objective);
        for m in &size.methods {
            let number = |v: Option<f64>, digits: usize| {
                v.map_or("—".to_string(), |v| format!("{v:.digits$}"))
            };
            out.push_str(&format!(
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
                size.gpus,
                size.workloads,
                m.method,
                number(m.seconds, 4),
                number(m.peak_rss_bytes.map(|b| b as f64 / 1048576.0), 0),
                m.objective.map_or_else(
                    || m.error.clone().unwrap_or_default(),
                    |o| format!("{o:.1}")
                ),
                m.gap.map_or_else(
                    || m.status.clone().unwrap_or("—".into()),
                    |g| format!("{:.3} %", g * 100.0)
                ),
                number(m.objective.zip(uniform).map(|(o, u)| o / u), 4),
                number(m.gpu_watts.map(|w| w / 1000.0), 1),
                number(m.saved_watts.map(|w| w / 1000.0), 1),
                m.power_gap
                    .map_or("—".to_string(), |g| format!("{:.3} %", g * 100.0)),
            ));
        }
    }
    out
}

/// The chart of `--plot`: seconds and peak memory against GPUs, both axes logarithmic, one line per
/// method.
pub fn render_chart(results: &[SizeResult]) -> String {
    const COLORS: [(&str, &str); 6] = [
        ("auto", "#2e90fa"),
        ("auto+maxSlowdown", "#12b76a"),
        ("uniform", "#f79009"),
        ("proportional", "#667085"),
        ("generic-lp", "#7a5af8"),
        ("generic-milp", "#d92d20"),
    ];
    let lines = |value: fn(&MethodResult) -> Option<f64>| -> Vec<Line> {
        COLORS
            .iter()
            .map(|(method, color)| Line {
                name: (*method).to_owned(),
                color,
                dashed: method.starts_with("generic"),
                points: results
                    .iter()
                    .filter_map(|size| {
                        let row = size.methods.iter().find(|m| m.method == *method)?;
                        Some((size.gpus as f64, value(row)?))
                    })
                    .collect(),
            })
            .filter(|line| !line.points.is_empty())
            .collect()
    };
    svg::render(&[
        Panel {
            title: "Solve time against fleet size".into(),
            x_label: "GPUs".into(),
            y_label: "seconds (median)".into(),
            log: true,
            y_from_zero: false,
            lines: lines(|m| m.seconds.filter(|_| m.error.is_none())),
        },
        Panel {
            title: "Peak resident memory of the process".into(),
            x_label: "GPUs".into(),
            y_label: "MiB".into(),
            log: true,
            y_from_zero: false,
            lines: lines(|m| m.peak_rss_bytes.map(|b| b as f64 / 1048576.0)),
        },
    ])
}
