//! The `kilowatt` command and the operator behind it: watching the cluster, translating it into a
//! power-allocation problem, solving, publishing plans to etcd, status and events, HTTP endpoints,
//! node agents' etcd credentials; and the solver CLI (`solve`, `bench`). Modules say whether they do
//! IO; the solver they call is pure.

pub mod agent_credentials;
pub mod bench;
pub mod caches;
pub mod cli;
pub mod controller;
pub mod generate;
pub mod gpu_models;
pub mod http;
pub mod leader;
pub mod metrics;
pub mod plan_store;
pub mod profiles;
pub mod published;
pub mod rollout;
pub mod schedule;
pub mod solve;
pub mod status;
pub mod translate;
pub mod whatif;
pub mod whatif_client;
