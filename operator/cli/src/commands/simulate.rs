//! `kilowatt simulate`: the operator's pass and the agents' protocol on simulated time
//! (`kilowatt_simulate` does the work); serves its page and writes its report and chart.

use std::process::ExitCode;

use kilowatt_plumbing::{logging, signals};

use crate::args::SimulateArgs;

/// `kilowatt simulate`'s exit code when Kilowatt's enforced limits exceeded a cap.
const SIMULATE_OVER_CAP: u8 = 2;

pub fn run(args: &SimulateArgs) -> ExitCode {
    // NB: the simulation's own progress goes to stderr; only its warnings join it.
    logging::init("text", "warn");
    let outcome = super::runtime().and_then(|runtime| {
        runtime.block_on(async {
            let mut stdout = std::io::stdout();
            let mut stderr = std::io::stderr();
            kilowatt_simulate::run::run(
                args.request(),
                &mut stdout,
                &mut stderr,
                signals::termination(),
            )
            .await
            .map_err(anyhow::Error::from)
        })
    });
    match outcome {
        Ok(report) if report.cap_violations > 0 => ExitCode::from(SIMULATE_OVER_CAP),
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
