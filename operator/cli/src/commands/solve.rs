//! `kilowatt solve`: one problem file in, one plan out (`kilowatt_solver_bench::solve` does the work).

use std::process::ExitCode;

use kilowatt_solver_bench::solve;

use crate::args::SolveArgs;

pub fn run(args: &SolveArgs) -> ExitCode {
    ExitCode::from(solve::run(
        &args.problem,
        &args.options(),
        args.pretty,
        &mut std::io::stdout(),
        &mut std::io::stderr(),
    ))
}
