//! `kilowatt whatif`: asks a running operator what a budget would lose or gain at another cap. Does
//! network IO.

use std::process::ExitCode;

use kilowatt_operator::http::whatif::{self, WhatIfRequest};
use kilowatt_operator::http::whatif_client::{self, AskError};
use kilowatt_plumbing::errors::error_chain;
use kilowatt_solver_bench::solve;

use crate::args::WhatifArgs;

pub fn run(args: &WhatifArgs) -> ExitCode {
    ExitCode::from(answer(args))
}

/// `kilowatt whatif`'s exit code when the operator could not be reached or failed.
const WHATIF_UNANSWERED: u8 = 3;

fn answer(args: &WhatifArgs) -> u8 {
    let request = WhatIfRequest {
        budget: args.budget.clone(),
        cap_watts: args.cap_watts,
    };
    let answer = match super::runtime() {
        Ok(runtime) => runtime.block_on(whatif_client::ask(&args.operator, &request)),
        Err(e) => {
            eprintln!("error: {e:#}");
            return WHATIF_UNANSWERED;
        }
    };
    match answer {
        Ok(answer) if args.json => match serde_json::to_string_pretty(&answer) {
            Ok(json) => {
                println!("{json}");
                solve::exit::OK
            }
            Err(e) => {
                eprintln!("error: {e}");
                WHATIF_UNANSWERED
            }
        },
        Ok(answer) => {
            print!("{}", whatif::render(&answer));
            solve::exit::OK
        }
        Err(e @ (AskError::Rejected { .. } | AskError::Url { .. })) => {
            eprintln!("error: {e}");
            solve::exit::INVALID
        }
        Err(e) => {
            eprintln!("error: {}", error_chain(&e));
            WHATIF_UNANSWERED
        }
    }
}
