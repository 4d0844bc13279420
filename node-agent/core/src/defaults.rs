//! The agent's timing defaults, in one place: the `kilowatt-agent` command line offers them and
//! `kilowatt simulate` runs its agents with them, so the simulator's agents are the deployed ones. No IO.

use std::time::Duration;

/// TTL of the etcd lease that carries a node's inventory and acknowledgements (its liveness).
pub const LEASE_TTL: Duration = Duration::from_secs(10);

/// Fraction of the lease TTL without a renewal after which the agent lowers every GPU to its floor.
pub const FENCE_FRACTION: f64 = 0.5;

/// How often limits are read back to catch changes made by others.
pub const DRIFT_CHECK: Duration = Duration::from_secs(10);

/// How often telemetry is sampled and the protocol ticks.
pub const SAMPLE_PERIOD: Duration = Duration::from_secs(1);

/// How often the node's measured GPU power is written to etcd for the operator.
pub const REPORT_PERIOD: Duration = Duration::from_secs(10);

/// How often the kubelet is asked which pods hold the GPUs: pods come and go in seconds at the
/// fastest, and each ask is one local gRPC call.
pub const POD_REFRESH: Duration = Duration::from_secs(10);

/// How long without a lease renewal the agent waits before it fences: `fence_fraction` of the TTL, the
/// fraction held within 0.05..=1 so that a fence always comes before the lease expires.
pub fn fence_after(lease_ttl: Duration, fence_fraction: f64) -> Duration {
    lease_ttl.mul_f64(fence_fraction.clamp(0.05, 1.0))
}
