//! `kilowatt solve`: reads a problem file, solves it, and writes the plan as JSON to stdout. Does file
//! IO and reads the clock (for `solveSeconds`); the solving itself is the pure solver crate.

use std::io::Read;
use std::path::Path;
use std::time::{Duration, Instant};

use kilowatt_solver::plan::{BudgetAllocation, Efficiency, GpuSetting, Shortfall, WorkloadSetting};
use kilowatt_solver::{Method, Plan, Problem, SolveError, SolveOptions, Status, solve};
use serde::Serialize;

/// Process exit codes of `kilowatt solve`, part of its contract with scripts.
pub mod exit {
    pub const OK: u8 = 0;
    /// Unreadable or malformed problem file.
    pub const INVALID: u8 = 1;
    /// Some budget cannot hold its floors; stdout still carries the safe plan.
    pub const INFEASIBLE: u8 = 2;
    /// The solver could not produce a plan (e.g. HiGHS failed under `--method milp`).
    pub const SOLVER_FAILED: u8 = 3;
}

/// Why a problem file could not be turned into a [`Problem`].
#[derive(Debug, thiserror::Error)]
pub enum ReadProblemError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Syntax { path: String, message: String },
}

/// Parses a problem from JSON (when the text starts with `{`) or YAML. JSON errors name the field path.
pub fn parse_problem(text: &str) -> Result<Problem, String> {
    if text.trim_start().starts_with('{') {
        let mut deserializer = serde_json::Deserializer::from_str(text);
        serde_path_to_error::deserialize(&mut deserializer).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            if path == "." {
                inner.to_string()
            } else {
                format!("{path}: {inner}")
            }
        })
    } else {
        serde_saphyr::from_str(text).map_err(|e| e.to_string())
    }
}

/// Reads and parses a problem file; `-` reads standard input.
pub fn read_problem(path: &Path) -> Result<Problem, ReadProblemError> {
    let shown = path.display().to_string();
    let text = if shown == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .map_err(|source| ReadProblemError::Io {
                path: shown.clone(),
                source,
            })?;
        text
    } else {
        std::fs::read_to_string(path).map_err(|source| ReadProblemError::Io {
            path: shown.clone(),
            source,
        })?
    };
    parse_problem(&text).map_err(|message| ReadProblemError::Syntax {
        path: shown,
        message,
    })
}

/// The JSON written to stdout: the plan plus how long solving took.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SolveOutput<'a> {
    pub status: Status,
    pub method: Method,
    pub objective: f64,
    pub upper_bound: f64,
    pub solve_seconds: f64,
    pub gpus: &'a [GpuSetting],
    pub workloads: &'a [WorkloadSetting],
    pub budgets: &'a [BudgetAllocation],
    #[serde(skip_serializing_if = "<[Shortfall]>::is_empty")]
    pub shortfalls: &'a [Shortfall],
    /// Only when some budget sets `maxSlowdown`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub efficiency: Option<&'a Efficiency>,
}

impl<'a> SolveOutput<'a> {
    pub fn new(plan: &'a Plan, elapsed: Duration) -> Self {
        SolveOutput {
            status: plan.status,
            method: plan.method,
            objective: plan.objective,
            upper_bound: plan.upper_bound,
            solve_seconds: elapsed.as_secs_f64(),
            gpus: &plan.gpus,
            workloads: &plan.workloads,
            budgets: &plan.budgets,
            shortfalls: &plan.shortfalls,
            efficiency: plan.efficiency.as_ref(),
        }
    }
}

/// Solves and times one problem.
pub fn solve_timed(
    problem: &Problem,
    options: &SolveOptions,
) -> (Result<Plan, SolveError>, Duration) {
    let started = Instant::now();
    let result = solve(problem, options);
    (result, started.elapsed())
}

/// Runs `kilowatt solve`, writing the plan to `stdout` and diagnostics to `stderr`; returns the exit code.
pub fn run(
    path: &Path,
    options: &SolveOptions,
    pretty: bool,
    stdout: &mut dyn std::io::Write,
    stderr: &mut dyn std::io::Write,
) -> u8 {
    let problem = match read_problem(path) {
        Ok(problem) => problem,
        Err(e) => {
            let _ = writeln!(stderr, "error: {e}");
            return exit::INVALID;
        }
    };
    let (result, elapsed) = solve_timed(&problem, options);
    let plan = match result {
        Ok(plan) => plan,
        Err(SolveError::Invalid(e)) => {
            let _ = writeln!(stderr, "error: {}: {e}", path.display());
            return exit::INVALID;
        }
        Err(e) => {
            let _ = writeln!(stderr, "error: {e}");
            return exit::SOLVER_FAILED;
        }
    };
    let output = SolveOutput::new(&plan, elapsed);
    let json = if pretty {
        serde_json::to_string_pretty(&output)
    } else {
        serde_json::to_string(&output)
    };
    match json {
        Ok(json) => {
            if writeln!(stdout, "{json}").is_err() {
                return exit::SOLVER_FAILED;
            }
        }
        Err(e) => {
            let _ = writeln!(stderr, "error: cannot encode the plan as JSON: {e}");
            return exit::SOLVER_FAILED;
        }
    }
    if plan.status == Status::Infeasible {
        for s in &plan.shortfalls {
            let _ = writeln!(
                stderr,
                "infeasible: budget {:?} needs {} W (overheads plus every GPU at the lowest limit it can run at) \
                 but its cap is {} W: short by {} W",
                s.budget, s.required_watts, s.cap_watts, s.shortfall_watts
            );
        }
        let _ = writeln!(
            stderr,
            "infeasible: the plan on stdout is the safe plan (every GPU at its minWatts)"
        );
        return exit::INFEASIBLE;
    }
    let _ = writeln!(
        stderr,
        "{:?} plan by {:?}: objective {:.6}, upper bound {:.6} (gap {:.4} %), {:.3} s",
        plan.status,
        plan.method,
        plan.objective,
        plan.upper_bound,
        plan.gap() * 100.0,
        elapsed.as_secs_f64()
    );
    if let Some(e) = &plan.efficiency {
        let _ = writeln!(
            stderr,
            "maxSlowdown: GPU power {:.3} W, {:.3} W saved against the max-throughput plan \
             (objective {:.6}, gap {:.4} %); at least {:.3} W needed (power gap {:.4} %)",
            e.gpu_watts,
            e.saved_watts,
            e.reference_objective,
            e.reference_gap(plan.upper_bound) * 100.0,
            e.gpu_watts_lower_bound,
            e.power_gap() * 100.0
        );
    }
    exit::OK
}

#[cfg(test)]
mod tests {
    use super::parse_problem;

    const CLOCKED: &str = "budgets: [{name: f, capWatts: 1000}]\n\
        nodes: [{name: n, budget: f, gpus: [{id: g, minWatts: 100, maxWatts: 700}]}]\n\
        workloads:\n  - name: w\n    kind: training\n    weight: 1\n    gpus: [g]\n    profile:\n\
        \x20     - {powerWatts: 300, smClockMHz: 855.0, throughput: 1}\n\
        \x20     - {powerWatts: 400, smClockMHz: 1980, throughput: 2}\n";

    #[test]
    fn yaml_and_json_problems_take_integral_float_clocks() {
        let problem = parse_problem(CLOCKED).expect("855.0 is a whole number");
        assert_eq!(problem.workloads[0].profile[0].sm_clock_mhz, Some(855));
        let json = serde_json::to_string(&problem)
            .expect("json")
            .replace("\"smClockMHz\":855", "\"smClockMHz\":855.0");
        assert!(json.contains("855.0"), "{json}");
        let problem = parse_problem(&json).expect("855.0 in JSON");
        assert_eq!(problem.workloads[0].profile[0].sm_clock_mhz, Some(855));
    }

    #[test]
    fn a_max_slowdown_is_read_and_its_plan_reports_both_objectives() {
        let problem = parse_problem(
            &CLOCKED.replace("capWatts: 1000}", "capWatts: 1000, maxSlowdown: 0.25}"),
        )
        .expect("maxSlowdown is a budget field");
        assert_eq!(problem.budgets[0].max_slowdown, Some(0.25));
        let mut stdout = Vec::new();
        let plan = kilowatt_solver::solve(&problem, &Default::default()).expect("solves");
        let output = super::SolveOutput::new(&plan, std::time::Duration::ZERO);
        serde_json::to_writer(&mut stdout, &output).expect("json");
        let json: serde_json::Value = serde_json::from_slice(&stdout).expect("json");
        let efficiency = &json["efficiency"];
        // The 1980 MHz point (400 W, throughput 2) is the optimum; 855 MHz (300 W) keeps half of it,
        // more than a quarter may not go, so the plan stays at 400 W.
        assert_eq!(efficiency["referenceObjective"], 1.0);
        assert_eq!(efficiency["gpuWatts"], 400.0);
        assert_eq!(efficiency["savedWatts"], 0.0);
        assert_eq!(efficiency["budgets"][0]["maxSlowdown"], 0.25);
        assert_eq!(efficiency["budgets"][0]["requiredThroughput"], 0.75);
        let looser =
            parse_problem(&CLOCKED.replace("capWatts: 1000}", "capWatts: 1000, maxSlowdown: 0.5}"))
                .expect("parses");
        let plan = kilowatt_solver::solve(&looser, &Default::default()).expect("solves");
        let efficiency = plan.efficiency.expect("reported");
        assert_eq!(
            (efficiency.gpu_watts, efficiency.saved_watts),
            (300.0, 100.0)
        );
    }

    #[test]
    fn a_fractional_clock_is_refused_naming_the_range() {
        let message = parse_problem(&CLOCKED.replace("855.0", "855.5")).expect_err("855.5");
        assert!(
            message.contains("must be a whole number between 0 and 4294967295 (got 855.5)"),
            "{message}"
        );
    }
}
