//! Cluster tests: Kilowatt's CRDs and operator on a real kube-apiserver + etcd started by the harness
//! (see tests/README.md). One test binary, so the workspace links one more executable, not several.

mod crds;
mod operator;
