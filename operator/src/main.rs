//! Entry point of the `kilowatt` binary: parses the command line and dispatches; exit codes are
//! documented in `kilowatt solve --help`.

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use kilowatt_node_agent::tls;
use kilowatt_operator::bench::{
    BenchSettings, CurveSource, SizeResult, bench_solver, render_chart, render_table,
};
use kilowatt_operator::cli::{
    BenchCommand, BenchSolverArgs, Cli, Command, OperatorArgs, SimulateArgs, WhatifArgs,
};
use kilowatt_operator::controller::{self, HttpsListener, OperatorOptions};
use kilowatt_operator::plan_store::EtcdCredentials;
use kilowatt_operator::solve;
use kilowatt_operator::whatif::{self, WhatIfRequest};
use kilowatt_operator::whatif_client::{self, AskError};

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

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// Logs to stderr at RUST_LOG's level, else `default_level`.
fn init_logging(format: &str, default_level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// Waits for SIGTERM (how Kubernetes stops a pod) or Ctrl-C.
async fn termination() {
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(_) => {
                    let _ = tokio::signal::ctrl_c().await;
                    return;
                }
            };
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}

/// The password in `file`, without the trailing newline editors and `kubectl create secret
/// --from-file` leave.
fn read_password(file: &std::path::Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("cannot read the etcd password from {}", file.display()))?;
    let password = text.trim_end_matches(['\n', '\r']);
    if password.is_empty() {
        anyhow::bail!("the etcd password file {} is empty", file.display());
    }
    Ok(password.to_owned())
}

fn run_operator(args: OperatorArgs) -> anyhow::Result<()> {
    init_logging(&args.log_format, "info");
    let identity = args
        .identity
        .clone()
        .or_else(|| std::env::var("HOSTNAME").ok().filter(|h| !h.is_empty()))
        .unwrap_or_else(|| format!("kilowatt-operator-{}", std::process::id()));
    let etcd_credentials = match (&args.etcd_user, &args.etcd_password_file) {
        (Some(user), Some(file)) => Some(EtcdCredentials {
            user: user.clone(),
            password: read_password(file)?,
        }),
        // NB: clap requires both or neither.
        _ => None,
    };
    let etcd_tls = tls::etcd_tls(&args.etcd_endpoints, &args.etcd_tls)?;
    let https = match (&args.tls_listen, &args.tls_cert_file, &args.tls_key_file) {
        (Some(listen), Some(cert), Some(key)) => Some(HttpsListener {
            listen: *listen,
            config: std::sync::Arc::new(tls::server_config(cert, key)?),
        }),
        // NB: clap requires all three or none.
        _ => None,
    };
    let options = OperatorOptions {
        etcd_endpoints: args.etcd_endpoints.clone(),
        etcd_prefix: args.etcd_prefix.clone(),
        etcd_credentials,
        etcd_tls,
        agent_service_account: args.agent_service_account.clone(),
        listen: args.listen,
        https,
        identity,
        lease_namespace: args.lease_namespace.clone(),
        lease_name: args.lease_name.clone(),
        lease_duration: std::time::Duration::from_secs(args.lease_seconds),
        debounce: std::time::Duration::from_millis(args.debounce_ms),
        resync: std::time::Duration::from_secs(args.resync_seconds),
        solve: args.solve_options(),
    };
    runtime()?.block_on(async {
        let client = kube::Client::try_default().await.context(
            "cannot configure a Kubernetes client (KUBECONFIG, ~/.kube/config or in-cluster)",
        )?;
        let mut operator = controller::start(client, options).await?;
        tokio::select! {
            _ = termination() => {
                tracing::info!("termination signal: shutting down");
                operator.shutdown().await;
                Ok(())
            }
            _ = operator.stopped() => anyhow::bail!("the reconcile loop stopped unexpectedly"),
        }
    })
}

/// `kilowatt whatif`'s exit code when the operator could not be reached or failed.
const WHATIF_UNANSWERED: u8 = 3;

fn run_whatif(args: &WhatifArgs) -> u8 {
    let request = WhatIfRequest {
        budget: args.budget.clone(),
        cap_watts: args.cap_watts,
    };
    let answer = match runtime() {
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
            eprintln!("error: {e}");
            WHATIF_UNANSWERED
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

/// `kilowatt simulate`'s exit code when Kilowatt's enforced limits exceeded a cap.
const SIMULATE_OVER_CAP: u8 = 2;

fn run_simulate(args: &SimulateArgs) -> ExitCode {
    // NB: the simulation's own progress goes to stderr; only its warnings join it.
    init_logging("text", "warn");
    let outcome = runtime().and_then(|runtime| {
        runtime.block_on(async {
            let mut stdout = std::io::stdout();
            let mut stderr = std::io::stderr();
            kilowatt_operator::simulate_run::run(
                args.request(),
                &mut stdout,
                &mut stderr,
                termination(),
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
        Command::Operator(args) => match run_operator(*args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Whatif(args) => ExitCode::from(run_whatif(&args)),
        Command::Simulate(args) => run_simulate(&args),
        Command::Crdgen(args) => match crdgen(args.out_dir.as_deref()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Bench(BenchCommand::Solver(args)) => {
            let results = if args.gpus.len() > 1 {
                bench_sizes_apart(&args)
            } else {
                bench_in_process(&args)
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
    }
}
