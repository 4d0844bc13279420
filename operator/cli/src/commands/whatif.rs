//! `kilowatt whatif`: asks a running operator what a budget would lose or gain at another cap or
//! efficiency policy. Does file (the token) and network IO.

use std::process::ExitCode;

use kilowatt_operator::http::whatif::{self, WhatIfRequest};
use kilowatt_operator::http::whatif_client::{self, AskError, Credentials};
use kilowatt_plumbing::errors::error_chain;
use kilowatt_solver_bench::solve;

use crate::args::WhatifArgs;

pub fn run(args: &WhatifArgs) -> ExitCode {
    ExitCode::from(answer(args))
}

/// `kilowatt whatif`'s exit code when the operator could not be reached, was busy or failed.
const WHATIF_UNANSWERED: u8 = 3;

/// Where a pod's ServiceAccount token is mounted: the default token inside a cluster.
const POD_TOKEN: &str = "/var/run/secrets/kubernetes.io/serviceaccount/token";

/// The token to send: `--token-file`'s, else the pod's, else none.
fn token(args: &WhatifArgs) -> Result<Option<String>, String> {
    let (file, given) = match &args.token_file {
        Some(file) => (file.clone(), true),
        None => (std::path::PathBuf::from(POD_TOKEN), false),
    };
    match std::fs::read_to_string(&file) {
        Ok(text) if !text.trim().is_empty() => Ok(Some(text.trim().to_owned())),
        Ok(_) if given => Err(format!("the token file {} is empty", file.display())),
        Err(e) if given => Err(format!(
            "cannot read the token file {}: {e}",
            file.display()
        )),
        _ => Ok(None),
    }
}

fn answer(args: &WhatifArgs) -> u8 {
    let request = WhatIfRequest {
        budget: args.budget.clone(),
        cap_watts: args.cap_watts,
        max_slowdown: args.max_slowdown,
    };
    let token = match token(args) {
        Ok(token) => token,
        Err(message) => {
            eprintln!("error: {message}");
            return solve::exit::INVALID;
        }
    };
    let credentials = Credentials {
        token: token.as_deref(),
        ca_file: args.ca_file.as_deref(),
    };
    let answer = match super::runtime() {
        Ok(runtime) => runtime.block_on(whatif_client::ask(&args.operator, &request, &credentials)),
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
        Err(e @ (AskError::Rejected { .. } | AskError::Url { .. } | AskError::Tls(_))) => {
            eprintln!("error: {e}");
            solve::exit::INVALID
        }
        Err(e) => {
            eprintln!("error: {}", error_chain(&e));
            WHATIF_UNANSWERED
        }
    }
}
