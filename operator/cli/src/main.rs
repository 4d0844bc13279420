//! Entry point of the `kilowatt` binary: parses the command line and hands it to its command's module;
//! exit codes are documented in `kilowatt solve --help`.

mod args;
mod commands;

use std::process::ExitCode;

use clap::Parser;
use kilowatt_solver_bench::solve;

use args::{BenchCommand, Cli, Command};

// NB: a 100,000-GPU solve makes and frees hundreds of thousands of small vectors; glibc's allocator
// spent about a third of the solve time on them (perf, see BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
        Command::Solve(args) => commands::solve::run(&args),
        Command::Operator(args) => commands::operator::run(*args),
        Command::Whatif(args) => commands::whatif::run(&args),
        Command::Simulate(args) => commands::simulate::run(&args),
        Command::Crdgen(args) => commands::crdgen::run(&args),
        Command::EtcdAuth(args) => commands::etcd_auth::run(&args),
        Command::Bench(BenchCommand::Solver(args)) => commands::bench::run(&args),
    }
}
