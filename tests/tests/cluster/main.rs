//! Cluster tests: Kilowatt's CRDs and operator on a real kube-apiserver + etcd, and the node agent on a
//! real etcd, all started by the harness
//! (see tests/README.md). One test binary, so the workspace links one more executable, not several.

mod agent;
mod auth;
mod cli;
mod crds;
mod dashboards;
mod demand_response;
mod faults;
mod helm;
mod image;
mod learning;
mod openadr;
mod operator;
mod promql;
mod rollout;
mod scale;
mod signals;
mod store;
mod web;
