//! End-to-end tests of the built `kilowatt` binary: `solve` on real files, `whatif` without an
//! operator, `simulate` and `bench solver` at smoke sizes, `--help`. Nothing but the binary is needed;
//! the operator process on a real control plane is tested in the tests crate (`cluster::cli`).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::Value;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn kilowatt(args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_kilowatt"))
        .args(args)
        .current_dir(repo())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kilowatt runs");
    let mut pipe = child.stdin.take().expect("stdin");
    pipe.write_all(stdin.unwrap_or("").as_bytes())
        .expect("write stdin");
    drop(pipe);
    child.wait_with_output().expect("kilowatt exits")
}

/// `examples/problem.yaml` as a JSON value, to feed modified copies through stdin.
fn example_problem() -> Value {
    let text = std::fs::read_to_string(repo().join("examples/problem.yaml")).expect("example");
    serde_saphyr::from_str(&text).expect("yaml")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn plan(output: &Output) -> Value {
    serde_json::from_slice(&output.stdout).expect("stdout is one JSON plan")
}

#[test]
fn the_example_problem_solves_with_every_method() {
    let mut objectives = Vec::new();
    for method in ["auto", "greedy", "milp", "uniform", "proportional"] {
        let output = kilowatt(
            &[
                "solve",
                "--problem",
                "examples/problem.yaml",
                "--method",
                method,
            ],
            None,
        );
        assert_eq!(
            output.status.code(),
            Some(0),
            "{method}: {}",
            stderr(&output)
        );
        let plan = plan(&output);
        for key in [
            "status",
            "method",
            "objective",
            "upperBound",
            "solveSeconds",
            "gpus",
            "workloads",
            "budgets",
        ] {
            assert!(plan.get(key).is_some(), "{method}: output lacks {key}");
        }
        for budget in plan["budgets"].as_array().expect("budgets") {
            let (cap, allocated) = (
                budget["capWatts"].as_f64(),
                budget["allocatedWatts"].as_f64(),
            );
            assert!(allocated <= cap, "{method}: {budget} over cap");
        }
        assert_eq!(plan["gpus"].as_array().map(Vec::len), Some(16));
        objectives.push((
            method,
            plan["objective"].as_f64().expect("objective"),
            plan["upperBound"].as_f64(),
        ));
    }
    let auto = objectives[0].1;
    assert!(
        objectives.iter().all(|&(_, o, _)| o <= auto + 1e-9),
        "auto is the best of all: {objectives:?}"
    );
    assert!(
        objectives[3].1 < auto * 0.9,
        "uniform capping is well below auto here: {objectives:?}"
    );
}

#[test]
fn locked_clock_workloads_get_a_clock_and_the_same_limit_on_every_gpu() {
    let output = kilowatt(&["solve", "--problem", "examples/problem.yaml"], None);
    let plan = plan(&output);
    let finetune = plan["workloads"]
        .as_array()
        .expect("workloads")
        .iter()
        .find(|w| w["name"] == "finetune");
    let finetune = finetune.expect("finetune in plan");
    let clock = finetune["smClockMHz"].as_u64().expect("a locked clock");
    for gpu in plan["gpus"].as_array().expect("gpus").iter().filter(|g| {
        g["id"]
            .as_str()
            .is_some_and(|id| id == "h100-3/2" || id == "h100-3/3")
    }) {
        assert_eq!(gpu["smClockMHz"].as_u64(), Some(clock));
        assert_eq!(gpu["powerLimitWatts"], finetune["powerLimitWatts"]);
    }
}

#[test]
fn json_input_from_stdin_works_and_errors_name_the_field() {
    let problem = example_problem();
    let good = serde_json::to_string(&problem).expect("json");
    let output = kilowatt(&["solve", "--problem", "-"], Some(&good));
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));

    let mut bad = problem.clone();
    bad["workloads"][3]["profile"][0]["powerWatts"] = Value::from(-5.0);
    let output = kilowatt(&["solve", "--problem", "-"], Some(&bad.to_string()));
    assert_eq!(output.status.code(), Some(1));
    assert!(output.stdout.is_empty());
    assert!(
        stderr(&output)
            .contains("workloads[3].profile[0].powerWatts: must be between 0.001 and 10000000"),
        "{}",
        stderr(&output)
    );

    let mut wrong_type = problem.clone();
    wrong_type["nodes"][1]["gpus"][2]["maxWatts"] = Value::from("lots");
    let output = kilowatt(&["solve", "--problem", "-"], Some(&wrong_type.to_string()));
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("nodes[1].gpus[2].maxWatts"),
        "{}",
        stderr(&output)
    );

    let mut unknown = problem;
    unknown["budgets"][0]["capWats"] = Value::from(1.0);
    let output = kilowatt(&["solve", "--problem", "-"], Some(&unknown.to_string()));
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("unknown field `capWats`"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn numbers_past_their_range_are_refused_naming_the_bound_and_a_plan_is_never_null() {
    for (throughput, got) in [(1e-310, "(got 1e-310)"), (1e308, "(got 1e308)")] {
        let mut problem = example_problem();
        problem["workloads"][0]["profile"][1]["throughput"] = Value::from(throughput);
        let output = kilowatt(&["solve", "--problem", "-"], Some(&problem.to_string()));
        assert_eq!(output.status.code(), Some(1), "{got}: {}", stderr(&output));
        assert!(output.stdout.is_empty());
        let message = stderr(&output);
        assert!(
            message.contains(
                "workloads[0].profile[1].throughput: must be 0 or between 1e-9 and 1e15 "
            ) && message.contains(got)
                && message.len() < 200,
            "{message}"
        );
    }
    // The ends of the ranges are valid and plan to finite numbers.
    let mut problem = example_problem();
    for workload in problem["workloads"].as_array_mut().expect("workloads") {
        workload["weight"] = Value::from(1e-9);
        for point in workload["profile"].as_array_mut().expect("profile") {
            let throughput = point["throughput"].as_f64().expect("throughput");
            point["throughput"] = Value::from(throughput * 1e-9);
        }
    }
    let output = kilowatt(&["solve", "--problem", "-"], Some(&problem.to_string()));
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let plan = plan(&output);
    for key in ["objective", "upperBound"] {
        assert!(
            plan[key].as_f64().is_some_and(|x| x.is_finite() && x > 0.0),
            "{key}: {plan}"
        );
    }
}

#[test]
fn integral_floats_are_integers_in_problems_and_scenarios() {
    let mut problem = example_problem();
    problem["workloads"][2]["profile"][0]["smClockMHz"] = Value::from(990.0);
    let json = problem.to_string();
    assert!(json.contains(r#""smClockMHz":990.0"#), "{json}");
    let output = kilowatt(&["solve", "--problem", "-"], Some(&json));
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    problem["workloads"][2]["profile"][0]["smClockMHz"] = Value::from(990.5);
    let output = kilowatt(&["solve", "--problem", "-"], Some(&problem.to_string()));
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains(
            "workloads[2].profile[0].smClockMHz: must be a whole number between 0 and 4294967295 (got 990.5)"
        ),
        "{}",
        stderr(&output)
    );

    let dir = std::env::temp_dir().join(format!("kilowatt-cli-integral-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("directory");
    let scenario = |count: &str| {
        let path = dir.join(format!("count-{count}.yaml"));
        std::fs::write(
            &path,
            format!(
                "name: floats\nstart: \"2026-12-01T00:00:00Z\"\ndurationSeconds: 60\n\
                 budgets: [{{name: f, capWatts: 5000, nodeLabels: {{rack: r}}}}]\n\
                 nodeGroups: [{{prefix: n, count: {count}, labels: {{rack: x}}, gpus: 8.0, gpuProduct: NVIDIA-H100-80GB-HBM3}}]\n\
                 workloads: [{{name: w, kind: training, pods: 1.0, gpusPerPod: 8.0}}]\n"
            ),
        )
        .expect("scenario");
        kilowatt(
            &[
                "simulate",
                "--no-serve",
                "--scenario",
                path.to_str().expect("path"),
            ],
            None,
        )
    };
    // Parsed: the scenario is refused for what it means, not for how its numbers are written.
    let output = scenario("1.0");
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("node n0 is in no budget"),
        "{}",
        stderr(&output)
    );
    let output = scenario("1.5");
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("must be a whole number between 0 and 4294967295 (got 1.5)"),
        "{}",
        stderr(&output)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn garbage_and_missing_files_fail_with_one_clear_line() {
    let output = kilowatt(&["solve", "--problem", "-"], Some("{ this is not json"));
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(stderr(&output).lines().count(), 1, "{}", stderr(&output));
    let output = kilowatt(&["solve", "--problem", "no/such/file.yaml"], None);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).starts_with("error: cannot read no/such/file.yaml"),
        "{}",
        stderr(&output)
    );
    let output = kilowatt(
        &[
            "solve",
            "--problem",
            "examples/problem.yaml",
            "--method",
            "fastest",
        ],
        None,
    );
    assert_eq!(
        output.status.code(),
        Some(1),
        "a bad command line is bad input"
    );
    assert!(
        stderr(&output).contains("unknown method \"fastest\""),
        "{}",
        stderr(&output)
    );
}

#[test]
fn an_infeasible_cap_exits_2_with_shortfalls_and_the_safe_plan() {
    let mut problem = example_problem();
    problem["budgets"][5]["capWatts"] = Value::from(1000.0);
    problem["budgets"][0]["capWatts"] = Value::from(4000.0);
    let output = kilowatt(&["solve", "--problem", "-"], Some(&problem.to_string()));
    assert_eq!(output.status.code(), Some(2));
    let err = stderr(&output);
    assert!(
        err.contains("budget \"rack-b1\" needs 1200 W") && err.contains("short by 200 W"),
        "{err}"
    );
    assert!(err.contains("budget \"facility\""), "{err}");
    let plan = plan(&output);
    assert_eq!(plan["status"], "infeasible");
    let minimums = [("h100", 200.0), ("a100", 100.0)];
    for gpu in plan["gpus"].as_array().expect("gpus") {
        let id = gpu["id"].as_str().expect("id");
        let min = minimums
            .iter()
            .find(|(p, _)| id.starts_with(p))
            .expect("known model")
            .1;
        assert_eq!(
            gpu["powerLimitWatts"].as_f64(),
            Some(min),
            "{id} at its minimum"
        );
    }
    assert_eq!(plan["shortfalls"].as_array().map(Vec::len), Some(2));
}

#[test]
fn etcd_auth_help_describes_every_flag_and_an_unreadable_password_exits_1() {
    let output = kilowatt(&["etcd-auth", "--help"], None);
    let help = String::from_utf8_lossy(&output.stdout);
    for needle in [
        "--etcd-endpoint",
        "--etcd-password-file",
        "--etcd-ca-file",
        "--listen",
        "--check-seconds",
        "--timeout-seconds",
        "--log-format",
        "/readyz",
        "Exit codes",
    ] {
        assert!(help.contains(needle), "help lacks {needle}:\n{help}");
    }
    let output = kilowatt(
        &[
            "etcd-auth",
            "--etcd-endpoint",
            "http://127.0.0.1:1",
            "--etcd-password-file",
            "/nonexistent/password",
            "--listen",
            "127.0.0.1:0",
        ],
        None,
    );
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("/nonexistent/password"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn help_describes_every_flag_and_exit_code() {
    let output = kilowatt(&["solve", "--help"], None);
    let help = String::from_utf8_lossy(&output.stdout);
    for needle in [
        "--problem",
        "--method",
        "--target-gap",
        "--time-limit",
        "--max-nodes",
        "--pretty",
        "Exit codes",
    ] {
        assert!(help.contains(needle), "help lacks {needle}:\n{help}");
    }
}

#[test]
fn whatif_without_a_reachable_operator_exits_3_naming_the_address() {
    let output = kilowatt(
        &[
            "whatif",
            "--operator",
            "http://127.0.0.1:9",
            "--budget",
            "rack",
            "--cap-watts",
            "5000",
        ],
        None,
    );
    assert_eq!(output.status.code(), Some(3));
    let message = stderr(&output);
    assert!(
        message.contains("cannot reach the operator at http://127.0.0.1:9"),
        "{message}"
    );
    let output = kilowatt(
        &[
            "whatif",
            "--operator",
            "https://x",
            "--budget",
            "rack",
            "--cap-watts",
            "5000",
        ],
        None,
    );
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
}

#[test]
fn simulate_reports_json_with_every_cap_kept_and_writes_the_chart() {
    let dir = std::env::temp_dir().join(format!("kilowatt-cli-simulate-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("directory");
    let chart = dir.join("run.svg");
    // Ten simulated minutes of the built-in scenario: the CI size of the quality benchmark.
    let output = kilowatt(
        &[
            "simulate",
            "--speed",
            "max",
            "--no-serve",
            "--duration",
            "600",
            "--json",
            "--plot",
            chart.to_str().expect("path"),
        ],
        None,
    );
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let report: Value = serde_json::from_slice(&output.stdout).expect("stdout is one JSON report");
    assert_eq!(report["capViolations"], 0, "{report}");
    assert_eq!(report["gpus"], 256);
    assert_eq!(report["simulatedSeconds"], 600.0);
    for run in ["uniform", "proportional", "uncapped"] {
        for field in ["capViolations", "energyJoules", "normalizedThroughput"] {
            assert!(report[run][field].is_number(), "{run}.{field}: {report}");
        }
    }
    assert!(
        report["normalizedThroughput"].as_f64()
            > report["uniform"]["normalizedThroughput"].as_f64()
    );
    assert!(report["energyJoules"].as_f64() < report["uncapped"]["energyJoules"].as_f64());
    assert!(
        report["uncapped"]["capViolations"].as_u64() > Some(0),
        "no capping breaks the caps"
    );
    assert_eq!(report["runs"][0]["capChecks"], 6000);
    // The built-in scenario's first hour is at 250 gCO2/kWh.
    for run in report["runs"].as_array().expect("runs") {
        let energy = run["energyJoules"].as_f64().expect("energy");
        let carbon = run["carbonGrams"].as_f64().expect("carbon");
        let expected = energy / 3.6e6 * 250.0;
        assert!((carbon - expected).abs() <= 1e-9 * expected, "{run}");
    }
    let svg = std::fs::read_to_string(&chart).expect("chart written");
    assert!(
        svg.starts_with("<svg") && svg.contains("Power of budget facility"),
        "{svg}"
    );
    let progress = stderr(&output);
    assert!(progress.contains("(100 %)"), "{progress}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn simulate_names_what_is_wrong_with_a_scenario_and_exits_1() {
    let dir = std::env::temp_dir().join(format!("kilowatt-cli-scenario-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("directory");
    let bad = dir.join("bad.yaml");
    std::fs::write(
        &bad,
        "name: bad\nstart: \"2026-12-01T00:00:00Z\"\ndurationSeconds: 60\n\
         budgets: [{name: f, capWatts: 5000, nodeLabels: {rack: r}}]\n\
         nodeGroups: [{prefix: n, count: 1, labels: {rack: x}, gpus: 8, gpuProduct: NVIDIA-H100-80GB-HBM3}]\n\
         workloads: []\n",
    )
    .expect("scenario");
    let output = kilowatt(
        &[
            "simulate",
            "--no-serve",
            "--scenario",
            bad.to_str().expect("path"),
        ],
        None,
    );
    assert_eq!(output.status.code(), Some(1));
    let message = stderr(&output);
    assert!(message.contains("node n0 is in no budget"), "{message}");
    assert!(message.contains("bad.yaml"), "{message}");
    let missing = kilowatt(&["simulate", "--scenario", "/nonexistent/s.yaml"], None);
    assert_eq!(missing.status.code(), Some(1));
    assert!(stderr(&missing).contains("cannot read the scenario /nonexistent/s.yaml"));
    let speed = kilowatt(&["simulate", "--speed", "0"], None);
    assert_eq!(speed.status.code(), Some(1));
    assert!(stderr(&speed).contains("must be above zero"));
    let slowdown = kilowatt(&["simulate", "--no-serve", "--max-slowdown", "1"], None);
    assert_eq!(slowdown.status.code(), Some(1));
    assert!(stderr(&slowdown).contains("must be a fraction in [0, 1)"));
    let help = kilowatt(&["simulate", "--help"], None);
    let help = String::from_utf8_lossy(&help.stdout);
    for needle in [
        "--scenario",
        "--duration",
        "--speed",
        "--port",
        "--json",
        "--plot",
        "--hold",
        "--max-slowdown",
        "Exit codes",
    ] {
        assert!(help.contains(needle), "help lacks {needle}:\n{help}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bench_solver_at_smoke_size_reports_every_method_with_memory_and_draws_the_chart() {
    let dir = std::env::temp_dir().join(format!("kilowatt-cli-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("directory");
    let chart = dir.join("scaling.svg");
    // The CI size of the solver-scaling benchmark (BENCHMARKS.md runs 1k to 1M GPUs).
    let output = kilowatt(
        &[
            "bench",
            "solver",
            "--gpus",
            "500,1000",
            "--repeat",
            "1",
            "--milp-max-gpus",
            "500",
            "--milp-time-limit",
            "2",
            "--lp-max-gpus",
            "1000",
            "--json",
            "--plot",
            chart.to_str().expect("path"),
        ],
        None,
    );
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let results: Value = serde_json::from_slice(&output.stdout).expect("JSON results");
    let sizes = results.as_array().expect("one entry per size");
    assert_eq!(sizes.len(), 2);
    let methods = |size: &Value| -> Vec<String> {
        size["methods"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|m| m["method"].as_str().map(str::to_owned))
            .collect()
    };
    assert_eq!(
        methods(&sizes[0]),
        [
            "auto",
            "auto+maxSlowdown",
            "uniform",
            "proportional",
            "generic-milp",
            "generic-lp"
        ]
    );
    assert_eq!(
        methods(&sizes[1]),
        [
            "auto",
            "auto+maxSlowdown",
            "uniform",
            "proportional",
            "generic-lp"
        ]
    );
    for size in sizes {
        assert!(size["autoVsUniform"].as_f64() > Some(1.0), "{size}");
        for method in size["methods"].as_array().into_iter().flatten() {
            assert!(method["seconds"].as_f64() > Some(0.0), "{method}");
            assert!(
                method["peakRssBytes"].as_u64() > Some(1 << 20),
                "peak RSS of a whole process: {method}"
            );
        }
    }
    let svg = std::fs::read_to_string(&chart).expect("chart written");
    assert!(svg.contains("Solve time against fleet size"), "{svg}");
    assert!(svg.contains("Peak resident memory"), "{svg}");
    let _ = std::fs::remove_dir_all(&dir);
}
