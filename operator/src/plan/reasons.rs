//! The fixed words of PowerBudget conditions and of the Events the operator records: condition types,
//! condition reasons, event reasons, and the reasons of budget issues and pod warnings. Other people's
//! alerts and dashboards match on them, so each is written once, here. Constants only.

/// Condition type: the budget's plan is published and in force.
pub const READY: &str = "Ready";
/// Condition type: the floors and overheads under the budget exceed its cap.
pub const INFEASIBLE: &str = "Infeasible";
/// Condition type: a node of the budget is selected by an unrelated budget.
pub const CONFLICT: &str = "Conflict";
/// Condition type: some input of the budget is invalid and was planned around.
pub const DEGRADED: &str = "Degraded";
/// Condition type: the limits under the budget can be brought under its cap, counting nodes that do
/// not lower at what they hold and every other GPU at its floor.
pub const CAP_ENFORCED: &str = "CapEnforced";

/// Condition type: the budget's carbon forecast (`spec.signals.carbonForecast`) is current and
/// steers its `maxSlowdown`.
pub const SIGNALS_AVAILABLE: &str = "SignalsAvailable";
/// Condition type: the VTN of the budget's OpenADR program (`spec.signals.openadr`) answers.
pub const DEMAND_RESPONSE_CONNECTED: &str = "DemandResponseConnected";

/// `Ready` is true; also the event when a budget becomes ready.
pub const PLANNED: &str = "Planned";
/// `Ready` is false: no plan yet.
pub const NOT_PLANNED: &str = "NotPlanned";
/// `Infeasible` is true.
pub const FLOORS_EXCEED_CAP: &str = "FloorsExceedCap";
/// `Infeasible` is false; also the event of a recovery.
pub const FEASIBLE: &str = "Feasible";
/// `Conflict` is true.
pub const NODE_IN_UNRELATED_BUDGETS: &str = "NodeInUnrelatedBudgets";
/// `Conflict` is false.
pub const NO_CONFLICT: &str = "NoConflict";
/// The event when a conflict is resolved.
pub const CONFLICT_RESOLVED: &str = "ConflictResolved";
/// `Degraded` is false; also the event of a recovery.
pub const INPUTS_VALID: &str = "InputsValid";
/// `CapEnforced` is true; also the event of a recovery.
pub const ABSORBED: &str = "Absorbed";
/// `CapEnforced` is false; also the event when it becomes false.
pub const NODES_NOT_LOWERING: &str = "NodesNotLowering";
/// The event when a budget's effective cap changes (a window opened or closed, an edit).
pub const EFFECTIVE_CAP_CHANGED: &str = "EffectiveCapChanged";

/// Budget issue: the spec's parent does not exist.
pub const PARENT_NOT_FOUND: &str = "ParentNotFound";
/// Budget issue: parents form a cycle.
pub const PARENT_CYCLE: &str = "ParentCycle";
/// Budget issue: the node selector cannot be evaluated.
pub const INVALID_NODE_SELECTOR: &str = "InvalidNodeSelector";
/// Budget issue: a node's GPU capacity is not a count.
pub const INVALID_GPU_CAPACITY: &str = "InvalidGpuCapacity";
/// Budget issue: a node's GPU model is unknown and no agent reported it.
pub const UNKNOWN_GPU_MODEL: &str = "UnknownGpuModel";
/// Budget issue: a node's agent registered an inventory that cannot be true (limits out of range,
/// more GPUs than the Node has); the node is held at its floors from the GPU model table.
pub const INVALID_INVENTORY: &str = "InvalidInventory";
/// Budget issue: a node has more GPUs than its agent reports; the unseen ones count at their maximum.
pub const UNSEEN_GPUS: &str = "UnseenGpus";
/// `SignalsAvailable` is true; also the event when it becomes true.
pub const FORECAST_CURRENT: &str = "ForecastCurrent";
/// `SignalsAvailable` is false: no fetch has finished yet.
pub const FORECAST_PENDING: &str = "ForecastPending";
/// `SignalsAvailable` is false: the last good forecast is older than `staleAfterSeconds` or ended.
pub const FORECAST_STALE: &str = "ForecastStale";
/// `SignalsAvailable` is false: nothing good fetched and the source does not answer.
pub const FORECAST_UNREACHABLE: &str = "ForecastUnreachable";
/// `SignalsAvailable` is false: nothing good fetched and the answers are not forecasts, or the spec
/// is invalid.
pub const FORECAST_INVALID: &str = "ForecastInvalid";
/// `DemandResponseConnected` is true: the VTN answered the last poll; also the event.
pub const VTN_CURRENT: &str = "VtnAnswering";
/// `DemandResponseConnected` is false: no poll has finished yet.
pub const VTN_PENDING: &str = "VtnPending";
/// `DemandResponseConnected` is false: the last poll failed; the events heard before stay in force.
pub const VTN_UNREACHABLE: &str = "VtnUnreachable";
/// `DemandResponseConnected` is false: `signals.openadr` is invalid.
pub const OPENADR_INVALID: &str = "OpenAdrInvalid";
/// The event when the `maxSlowdown` a forecast sets changes.
pub const SIGNAL_SLOWDOWN_CHANGED: &str = "SignalSlowdownChanged";

/// Budget issue: `capWatts` is above what the solver accepts; the solver's maximum is planned.
pub const CAP_OUT_OF_RANGE: &str = "CapOutOfRange";
/// Budget issue: `efficiency.maxSlowdown` is outside [0, 1); the budget is planned without the policy.
pub const INVALID_EFFICIENCY: &str = "InvalidEfficiency";
/// Budget issue: `signals.carbonForecast` or `signals.openadr` is invalid; the budget is planned
/// without it.
pub const INVALID_SIGNALS: &str = "InvalidSignals";
/// Budget issue or pod warning: an annotation does not parse.
pub const MALFORMED_ANNOTATION: &str = "MalformedAnnotation";

/// Pod warning: the named WorkloadProfile does not exist.
pub const PROFILE_NOT_FOUND: &str = "ProfileNotFound";
/// Pod warning: the solver rejected the workload's profile.
pub const INVALID_PROFILE: &str = "InvalidProfile";
/// Pod warning: the pod's node does not lower (its agent is gone, silent or its GPUs refuse limits),
/// so it is planned at what it holds.
pub const NODE_NOT_LOWERING: &str = "NodeNotLowering";
/// Pod warning: the floors of the pod's budget exceed its cap; its subtree is held at its floors.
pub const BUDGET_INFEASIBLE: &str = "BudgetInfeasible";
/// Pod warning: the pod's node registered an invalid inventory.
pub const NODE_INVENTORY_INVALID: &str = "NodeInventoryInvalid";
/// Pod warning: the pod's node is in conflicting budgets.
pub const NODE_IN_CONFLICTING_BUDGETS: &str = "NodeInConflictingBudgets";
/// Pod warning: the pod's settings differ from the first pod of its job.
pub const GANG_MISMATCH: &str = "GangMismatch";
/// Pod warning: the pod asks for more GPUs than its node has left for it.
pub const GPUS_NOT_IN_INVENTORY: &str = "GpusNotInInventory";
/// Pod event: the pod runs on the default profile of its kind and GPU model.
pub const DEFAULT_PROFILE: &str = "DefaultProfile";
/// WorkloadProfile event: the operator made the profile to keep a job's learned curve.
pub const PROFILE_CREATED: &str = "ProfileCreated";
/// Pod warning: the name of the profile that would keep its job's learned curve is taken.
pub const PROFILE_NAME_TAKEN: &str = "ProfileNameTaken";
