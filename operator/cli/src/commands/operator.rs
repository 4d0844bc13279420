//! `kilowatt operator`: connects to Kubernetes and etcd and runs the controller until SIGTERM. Does
//! file (password, TLS files), Kubernetes, etcd and network IO.

use std::process::ExitCode;

use anyhow::Context;
use kilowatt_operator::controller::deadline::client_with_deadline;
use kilowatt_operator::controller::{
    self, HttpsListener, OperatorOptions, PrometheusQueries, WhatIfAuth,
};
use kilowatt_operator::measure::{PromqlSource, WindowTiming};
use kilowatt_operator::store::etcd::EtcdCredentials;
use kilowatt_plumbing::{logging, signals, tls};

use crate::args::OperatorArgs;

pub fn run(args: OperatorArgs) -> ExitCode {
    super::exit_code(operator(args))
}

fn operator(args: OperatorArgs) -> anyhow::Result<()> {
    logging::init(&args.log_format, "info");
    let identity = args
        .identity
        .clone()
        .or_else(|| std::env::var("HOSTNAME").ok().filter(|h| !h.is_empty()))
        .unwrap_or_else(|| format!("kilowatt-operator-{}", std::process::id()));
    let etcd_credentials = match (&args.etcd_user, &args.etcd_password_file) {
        (Some(user), Some(file)) => Some(EtcdCredentials {
            user: user.clone(),
            password: super::read_etcd_password(file)?,
        }),
        // NB: clap requires both or neither.
        _ => None,
    };
    let etcd_tls = tls::etcd_tls(&args.etcd_endpoints, &args.etcd_tls)?;
    let prometheus = match &args.prometheus_url {
        Some(url) => Some(PrometheusQueries {
            source: PromqlSource::new(url, args.prometheus_ca_file.as_deref())
                .with_context(|| format!("cannot use --prometheus-url {url}"))?,
            sample_period: std::time::Duration::from_secs(args.prometheus_sample_seconds),
            windows: WindowTiming {
                warm_up: std::time::Duration::from_secs(args.prometheus_warm_up_seconds),
                window: std::time::Duration::from_secs(args.prometheus_window_seconds),
            },
        }),
        None => None,
    };
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
        ack_timeout: std::time::Duration::from_secs(args.ack_timeout_seconds),
        window_lead: std::time::Duration::from_secs(args.window_lead_seconds),
        resync: std::time::Duration::from_secs(args.resync_seconds),
        solve: args.solve_options(),
        whatif_time_limit: std::time::Duration::from_secs_f64(args.whatif_time_limit),
        whatif_auth: match args.whatif_auth.as_str() {
            "always" => WhatIfAuth::Always,
            _ => WhatIfAuth::BeyondLoopback,
        },
        prometheus,
    };
    let kube_timeout = std::time::Duration::from_secs(args.kube_timeout_seconds);
    super::runtime()?.block_on(async {
        let config = kube::Config::infer().await.context(
            "cannot configure a Kubernetes client (KUBECONFIG, ~/.kube/config or in-cluster)",
        )?;
        let client = client_with_deadline(config, kube_timeout)
            .context("cannot build the Kubernetes client")?;
        let mut operator = controller::start(client, options).await?;
        tokio::select! {
            _ = signals::termination() => {
                tracing::info!("termination signal: shutting down");
                operator.shutdown().await;
                Ok(())
            }
            _ = operator.stopped() => anyhow::bail!("the reconcile loop stopped unexpectedly"),
        }
    })
}
