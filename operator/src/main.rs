//! Entry point of the `kilowatt` binary: parses the command line and dispatches; exit codes are
//! documented in `kilowatt solve --help`.

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use kilowatt_operator::bench::{BenchSettings, CurveSource, bench_solver, render_table};
use kilowatt_operator::cli::{BenchCommand, Cli, Command};
use kilowatt_operator::solve;

// NB: a 100,000-GPU solve makes and frees hundreds of thousands of small vectors; glibc's allocator
// spent about a third of the solve time on them (perf, see BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Prints the CRD manifests, or writes each to its file under `out_dir`.
fn crdgen(out_dir: Option<&std::path::Path>) -> anyhow::Result<()> {
    let manifests = kilowatt_crds::crd_manifests()?;
    match out_dir {
        Some(dir) => {
            for (file, yaml) in manifests {
                let path = dir.join(file);
                std::fs::write(&path, yaml)
                    .with_context(|| format!("cannot write {}", path.display()))?;
            }
        }
        None => {
            let documents: Vec<String> = manifests.into_iter().map(|(_, yaml)| yaml).collect();
            print!("{}", documents.join("---\n"));
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    // NB: clap exits 2 on usage errors, but 2 means "infeasible" for `kilowatt solve`; a bad command
    // line is bad input, exit 1.
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() {
                solve::exit::INVALID
            } else {
                solve::exit::OK
            });
        }
    };
    match cli.command {
        Command::Solve(args) => {
            let code = solve::run(
                &args.problem,
                &args.options(),
                args.pretty,
                &mut std::io::stdout(),
                &mut std::io::stderr(),
            );
            ExitCode::from(code)
        }
        Command::Crdgen(args) => match crdgen(args.out_dir.as_deref()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Bench(BenchCommand::Solver(args)) => {
            let settings = BenchSettings {
                sizes: args.gpus,
                curves: match args.measured {
                    Some(dir) => CurveSource::Measured(dir),
                    None => CurveSource::Examples(args.profiles),
                },
                cap_fraction: args.cap_fraction,
                cross_rack_gangs: args.cross_rack_gangs,
                seed: args.seed,
                repeat: args.repeat,
                milp_max_gpus: args.milp_max_gpus,
                milp_time_limit_seconds: args.milp_time_limit,
                lp_max_gpus: args.lp_max_gpus,
                lp_time_limit_seconds: args.lp_time_limit,
            };
            match bench_solver(&settings) {
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
    }
}
