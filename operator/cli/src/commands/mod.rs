//! One module per `kilowatt` command: each takes its parsed arguments and returns the exit code.

pub mod bench;
pub mod crdgen;
pub mod etcd_auth;
pub mod operator;
pub mod simulate;
pub mod solve;
pub mod whatif;

use std::process::ExitCode;

use anyhow::Context;

/// A multi-threaded async runtime for the commands that do network IO.
fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// The etcd password in `file`, without the trailing newline editors and `kubectl create secret
/// --from-file` leave.
fn read_etcd_password(file: &std::path::Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("cannot read the etcd password from {}", file.display()))?;
    let password = text.trim_end_matches(['\n', '\r']);
    anyhow::ensure!(
        !password.is_empty(),
        "the etcd password file {} is empty",
        file.display()
    );
    Ok(password.to_owned())
}

/// 0 for success; otherwise the error and its causes on stderr, and 1.
fn exit_code(outcome: anyhow::Result<()>) -> ExitCode {
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
