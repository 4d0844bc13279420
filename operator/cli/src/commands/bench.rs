//! `kilowatt bench solver`: the solver against uniform and proportional capping and generic HiGHS, and
//! with the efficiency policy against without (`kilowatt_solver_bench::bench` does the work), each size
//! in a process of its own. Runs child
//! processes and writes the chart file.

use std::process::ExitCode;

use anyhow::Context;
use kilowatt_solver_bench::bench::{
    BenchSettings, CurveSource, SizeResult, bench_solver, render_chart, render_table,
};

use crate::args::BenchSolverArgs;

pub fn run(args: &BenchSolverArgs) -> ExitCode {
    let results = if args.gpus.len() > 1 {
        bench_sizes_apart(args)
    } else {
        bench_in_process(args)
    };
    let results = results.and_then(|results| {
        if let Some(path) = &args.plot {
            std::fs::write(path, render_chart(&results))
                .with_context(|| format!("cannot write the chart to {}", path.display()))?;
        }
        Ok(results)
    });
    match results {
        Ok(results) if args.json => match serde_json::to_string_pretty(&results) {
            Ok(json) => {
                println!("{json}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: cannot encode results: {e}");
                ExitCode::FAILURE
            }
        },
        Ok(results) => {
            print!("{}", render_table(&results));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs `kilowatt bench solver` for its sizes in this process.
fn bench_in_process(args: &BenchSolverArgs) -> anyhow::Result<Vec<SizeResult>> {
    let settings = BenchSettings {
        sizes: args.gpus.clone(),
        curves: match &args.measured {
            Some(dir) => CurveSource::Measured(dir.clone()),
            None => CurveSource::Examples(args.profiles.clone()),
        },
        cap_fraction: args.cap_fraction,
        cross_rack_gangs: args.cross_rack_gangs,
        seed: args.seed,
        repeat: args.repeat,
        milp_max_gpus: args.milp_max_gpus,
        milp_time_limit_seconds: args.milp_time_limit,
        lp_max_gpus: args.lp_max_gpus,
        lp_time_limit_seconds: args.lp_time_limit,
        max_slowdown: args.max_slowdown,
    };
    bench_solver(&settings)
}

/// Runs every size of `kilowatt bench solver` in a child process of its own (see
/// [`BenchSolverArgs::one_size`]) and gathers their JSON.
fn bench_sizes_apart(args: &BenchSolverArgs) -> anyhow::Result<Vec<SizeResult>> {
    let program = std::env::current_exe().context("cannot find this program to run each size")?;
    let mut results = Vec::new();
    for &gpus in &args.gpus {
        let output = std::process::Command::new(&program)
            .args(args.one_size(gpus))
            .stderr(std::process::Stdio::inherit())
            .output()
            .with_context(|| format!("cannot run the benchmark for {gpus} GPUs"))?;
        if !output.status.success() {
            anyhow::bail!("the benchmark for {gpus} GPUs failed ({})", output.status);
        }
        let size: Vec<SizeResult> = serde_json::from_slice(&output.stdout)
            .with_context(|| format!("the benchmark for {gpus} GPUs printed no results"))?;
        results.extend(size);
    }
    Ok(results)
}
