//! The `kilowatt` command and the operator behind it: watching the cluster, translating it into a
//! power-allocation problem, solving, publishing plans to etcd, status and events, HTTP endpoints and
//! the live page, node agents' etcd credentials; the solver CLI (`solve`, `bench`); and `simulate`,
//! which runs the operator's pass and the node agents' protocol in one process on simulated time.
//! Modules say whether they do IO; the solver they call is pure.

pub mod agent_credentials;
pub mod bench;
pub mod caches;
pub mod cli;
pub mod controller;
pub mod generate;
pub mod gpu_models;
pub mod http;
pub mod leader;
pub mod memory_store;
pub mod metrics;
pub mod pass;
pub mod plan_store;
pub mod profiles;
pub mod published;
pub mod rollout;
pub mod scenario;
pub mod schedule;
pub mod simulate;
pub mod simulate_run;
pub mod solve;
pub mod status;
pub mod svg;
pub mod translate;
pub mod web;
pub mod whatif;
pub mod whatif_client;
