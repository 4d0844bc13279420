//! The Kilowatt operator as a library: where a watt is decided. [`plan`] turns the cluster into a
//! power-allocation problem, solves it and derives the rollout and status (pure); [`store`] is where
//! plans live (etcd, or memory for simulate and tests); [`controller`] watches the cluster, elects a
//! leader and runs the loop (Kubernetes and etcd IO); [`http`] serves metrics, what-if, the page and the
//! agents' credentials (network IO); [`signals`] polls carbon forecasts that steer budgets' efficiency
//! policies. The `kilowatt` binary (`operator/cli`) and `kilowatt simulate`
//! (`operator/simulate`) are built on it.

pub mod controller;
pub mod http;
pub mod measure;
pub mod plan;
pub mod signals;
pub mod store;
